//! Signals operators can trust, on real daemons: a daemon that is not in the members' lists costs
//! each member one warning (not one every election timeout) and the cluster stays healthy; logs
//! and the API name members, never by their 20-digit Raft ids; Ctrl-C while `pgvigil demo` is
//! still starting stops it and everything it started.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use vigil_tests::{pgvigil_bin, settled, TestCluster};

const CONVERGE: Duration = Duration::from_secs(60);
use vigil_tests::PG_BIN_DIR as REAL_BIN;
const STRAY: &str = "stray";

fn log_of(t: &TestCluster, member: &str) -> PathBuf {
    t.spec().state_dir(member).join("pgvigil.log")
}

fn read(path: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}

/// A run of at least 15 digits: a Raft node id (a 64-bit hash) where a name should be.
fn has_long_number(line: &str) -> bool {
    let mut run = 0;
    for c in line.chars() {
        run = if c.is_ascii_digit() { run + 1 } else { 0 };
        if run >= 15 {
            return true;
        }
    }
    false
}

/// Lines about Raft peers and leaders: where an id used to appear.
fn about_peers(line: &str) -> bool {
    ["raft", "leader", "peer", "coordinator", "vote"].iter().any(|w| line.contains(w))
}

/// WARN lines about the stray daemon, however worded.
fn warnings_about_stray(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains(" WARN "))
        .filter(|l| ["stray", "refused", "unknown peer", "another node", "not a member"].iter().any(|w| l.contains(w)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_outside_the_member_lists_costs_each_member_one_warning() -> anyhow::Result<()> {
    // pg1..pg3 list one another; the stray witness lists them and itself, at their addresses.
    let mut t = TestCluster::prepare(3, 1, |spec| spec.members[3].name = STRAY.into())?;
    let mut members = t.spec().clone();
    members.members.retain(|m| m.name != STRAY);
    for m in &members.members {
        std::fs::write(members.config_path(&m.name), members.config_text(m)?)?;
    }
    let names: Vec<String> = members.members.iter().map(|m| m.name.clone()).collect();
    t.cluster.start_all()?;
    let v = t.wait_for("a settled cluster beside the stray daemon", CONVERGE, settled).await?;
    let primary = v.state.primary.clone().unwrap_or_default();
    assert!(!v.state.members.contains_key(STRAY), "the stray daemon never joins: {:?}", v.state.members);

    // Each member has refused the stray daemon's messages, naming it.
    for m in &names {
        vigil_tests::wait_log(&log_of(&t, m), 0, Duration::from_secs(30), |log| {
            log.lines().any(|l| l.contains(" WARN ") && l.contains("raft messages refused") && l.contains(STRAY))
        })
        .await?;
    }
    // Ten more seconds of its election attempts (one every 0.5-1 s): the cluster does not notice.
    let stray_log = log_of(&t, STRAY);
    let attempts = |text: &str| text.matches("became pre-candidate").count();
    let before = attempts(&read(&stray_log));
    t.assert_no_failover(&primary, v.state.epoch, Duration::from_secs(10)).await?;
    let tried = attempts(&read(&stray_log)) - before;
    assert!(tried >= 5, "the stray daemon kept trying: {tried} elections in 10 s");
    let v = t.wait_for("still healthy", Duration::from_secs(10), settled).await?;
    assert_eq!(v.state.primary.as_deref(), Some(primary.as_str()));

    for m in &names {
        let log = read(&log_of(&t, m));
        let warnings = warnings_about_stray(&log);
        eprintln!("{m}: {}", warnings.join("\n"));
        assert!(
            !warnings.is_empty() && warnings.len() <= 2,
            "{m}: {} warnings about the stray daemon:\n{}",
            warnings.len(),
            warnings.join("\n")
        );
        let with_ids: Vec<&str> = log.lines().filter(|l| about_peers(l) && has_long_number(l)).collect();
        assert!(with_ids.is_empty(), "{m}: raft ids instead of names:\n{}", with_ids.join("\n"));
        assert!(log.contains(&format!("raft{{member={m}}}")), "{m}: raft lines carry names");
    }
    // The stray daemon's operator is told why by each member it tries (a line per cause: it may
    // also have found one not listening yet).
    let stray = read(&stray_log);
    let told: Vec<&str> =
        stray.lines().filter(|l| l.contains(" WARN ") && l.contains("vigil_raft::transport")).collect();
    eprintln!("{STRAY}: {}", told.join("\n"));
    assert!(told.len() <= names.len() * 2, "{}", told.join("\n"));
    for m in &names {
        let why = format!("is not in the members list of {m}");
        assert!(told.iter().any(|l| l.contains(&format!("peer={m} ")) && l.contains(&why)), "{}", told.join("\n"));
    }

    // The API and the metrics name the coordinator.
    let coordinator = v.coordinator.clone();
    assert!(names.contains(&coordinator), "coordinator {coordinator:?}");
    for m in &names {
        let health = t.get(m, "/health").await?;
        assert_eq!(health.json["coordinator"].as_str(), Some(coordinator.as_str()), "{m}: {}", health.text);
        let metrics = t.get(m, "/metrics").await?.text;
        let line = format!("pgvigil_coordinator{{member=\"{coordinator}\"}} 1");
        assert!(metrics.lines().any(|l| l == line), "{m}: no {line:?} in\n{metrics}");
        let labels: Vec<&str> = metrics.lines().filter(|l| l.starts_with("pgvigil_coordinator{")).collect();
        assert_eq!(labels.len(), names.len(), "{labels:?}");
    }
    Ok(())
}

/// PostgreSQL's programs, with an initdb that notes that it runs (a file in `marks`, which
/// PostgreSQL's user may write) and takes two seconds more.
fn bin_dir_with_slow_initdb(dir: &Path, marks: &Path) -> anyhow::Result<PathBuf> {
    let script = format!("#!/bin/sh\n: > {}/initdb.$$\nsleep 2\nexec {REAL_BIN}/initdb \"$@\"\n", marks.display());
    vigil_tests::bin_dir_with_initdb(dir, &script)
}

/// Live processes that run a program with `dir` in its command line or work below `dir`.
fn processes_under(dir: &Path) -> Vec<(i32, String)> {
    let needle = dir.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| vigil_pg::proctree::alive(*pid))
        .filter_map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok();
            (cmdline.contains(&needle) || cwd.is_some_and(|c| c.starts_with(dir))).then_some((pid, cmdline))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_while_the_demo_starts_stops_everything_it_started() -> anyhow::Result<()> {
    let scratch = tempfile::Builder::new().prefix("pgvigil-demo-test-").tempdir()?;
    std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o711))?;
    let marks = scratch.path().join("marks");
    std::fs::create_dir(&marks)?;
    std::fs::set_permissions(&marks, std::fs::Permissions::from_mode(0o777))?;
    let bin = bin_dir_with_slow_initdb(scratch.path(), &marks)?;
    let dir = scratch.path().join("demo");
    let (out, err) = (scratch.path().join("demo.out"), scratch.path().join("demo.err"));
    let mut demo = std::process::Command::new(pgvigil_bin())
        .arg("demo")
        .args(["--members", "2", "--dir"])
        .arg(&dir)
        .arg("--pg-bin-dir")
        .arg(&bin)
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&out)?)
        .stderr(std::fs::File::create(&err)?)
        .spawn()?;
    let pid = demo.id() as i32;
    let _reaper = reap_on_drop(pid);

    // Its daemons run and one of them runs initdb: the cluster is far from ready.
    let deadline = Instant::now() + CONVERGE;
    while std::fs::read_dir(&marks)?.next().is_none() {
        anyhow::ensure!(demo.try_wait()?.is_none(), "the demo exited: {}{}", read(&out), read(&err));
        anyhow::ensure!(Instant::now() < deadline, "no initdb within {CONVERGE:?}: {}{}", read(&out), read(&err));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = vigil_pg::proctree::descendants(pid);
    let daemons = started
        .iter()
        .filter(|p| std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| c.windows(5).any(|w| w == b"\0run\0")))
        .count();
    assert!(daemons >= 1, "the demo's daemons run: {started:?}");

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGINT)?;
    let interrupted = Instant::now();
    let status = loop {
        if let Some(s) = demo.try_wait()? {
            break s;
        }
        anyhow::ensure!(
            interrupted.elapsed() < Duration::from_secs(30),
            "the demo still runs 30 s after SIGINT: {}{}",
            read(&out),
            read(&err)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let took = interrupted.elapsed();
    eprintln!("FIGURE demo stopped {took:?} after SIGINT during initdb");
    let printed = read(&out);
    assert!(status.success(), "{status:?}: {printed}{}", read(&err));
    assert!(printed.contains("Interrupted while starting"), "{printed}");
    assert!(!printed.contains("Ctrl-C stops the demo"), "interrupted before the ready hints: {printed}");

    // Nothing it started is left: not the processes seen before the signal, nor anything working
    // in its directory (a keeper, a postmaster, a tool).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let alive: Vec<i32> = started.iter().copied().filter(|p| vigil_pg::proctree::alive(*p)).collect();
        let left = processes_under(scratch.path());
        if alive.is_empty() && left.is_empty() {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "left behind: {alive:?} {left:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Kills the demo's process tree if the test fails before it exits.
fn reap_on_drop(pid: i32) -> impl Drop {
    struct Reap(i32);
    impl Drop for Reap {
        fn drop(&mut self) {
            if vigil_pg::proctree::alive(self.0) {
                vigil_pg::proctree::kill_tree(&[self.0], None, Duration::from_secs(2));
            }
        }
    }
    Reap(pid)
}
