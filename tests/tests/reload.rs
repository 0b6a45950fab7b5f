//! SIGHUP reloads a running daemon's configuration: what may change at runtime takes effect
//! (tags reach the cluster view, the log level changes), the rest is named as needing a restart,
//! a broken file is refused, and neither the daemon nor its PostgreSQL restarts.

use nix::sys::signal::Signal;
use std::time::{Duration, Instant};
use vigil_tests::{log_len, wait_log, ClusterView, TestCluster};

/// `member` in `GET /cluster` asked through `via`.
async fn member_tags(t: &TestCluster, via: &str, member: &str) -> anyhow::Result<(bool, i32)> {
    let r = t.get(via, "/cluster").await?;
    anyhow::ensure!(r.status == 200, "GET /cluster on {via}: {r:?}");
    let view: ClusterView = serde_json::from_value(r.json)?;
    let m = view.members.iter().find(|m| m.name == member).ok_or_else(|| anyhow::anyhow!("no {member}"))?;
    Ok((m.tags.nofailover(), m.tags.priority()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_tags_and_log_level_and_refuses_a_broken_file() -> anyhow::Result<()> {
    let mut t = TestCluster::start(2, 1).await?;
    let primary = t.primary().await?;
    let member = t.other_pg_members(&primary).remove(0);
    let daemon = t.cluster.daemon_pid(&member).expect("running");
    let postmaster = t.postmaster_pid(&member).expect("PostgreSQL runs");
    let log = t.spec().state_dir(&member).join("pgvigil.log");
    let config = t.spec().config_path(&member);
    let original = std::fs::read_to_string(&config)?;
    assert!(original.contains("\nnofailover = false\n") && original.contains("\npriority = 0\n"), "{original}");
    assert_eq!(member_tags(&t, &primary, &member).await?, (false, 0));

    // Tags and log level reload; the synchronous node count needs a restart.
    let changed = original
        .replace("\nnofailover = false\n", "\nnofailover = true\n")
        .replace("\npriority = 0\n", "\npriority = 7\nzone = \"b\"\n")
        .replace("level = \"info\"", "level = \"debug\"")
        .replace("[replication]\n", "[replication]\nsynchronous_node_count = 2\n");
    std::fs::write(&config, &changed)?;
    let from = log_len(&log);
    t.cluster.signal(&member, Signal::SIGHUP)?;
    let text = wait_log(&log, from, Duration::from_secs(20), |l| {
        l.contains("configuration reloaded") && l.contains("needs a restart") && l.contains("DEBUG")
    })
    .await?;
    let applied = text.lines().find(|l| l.contains("configuration reloaded")).unwrap_or_default();
    for key in ["log.level", "tags.nofailover", "tags.priority", "tags.zone"] {
        assert!(applied.contains(key), "the applied keys name {key}: {applied}");
    }
    let restart = text.lines().find(|l| l.contains("needs a restart")).unwrap_or_default();
    assert!(restart.contains("replication.synchronous_node_count"), "{restart}");
    assert!(!restart.contains("tags."), "tags need no restart: {restart}");
    // The new tags reach the coordinator with the next report and show in the cluster view.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = member_tags(&t, &primary, &member).await;
        if matches!(got, Ok((true, 7))) {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "tags not in GET /cluster: {got:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A tag of the operator's own travels the same way, and the health checks match it.
    let view: ClusterView = serde_json::from_value(t.get(&primary, "/cluster").await?.json)?;
    let tags = view.members.iter().find(|m| m.name == member).map(|m| m.tags.clone()).unwrap_or_default();
    assert_eq!(tags.get("zone"), Some("b"), "{tags:?}");
    assert_eq!(t.get(&member, "/replica?tag_zone=b").await?.status, 200);
    assert_eq!(t.get(&member, "/replica?tag_zone=c").await?.status, 503);
    let shown = t.get(&member, "/config").await?;
    assert_eq!(shown.json["tags"]["priority"], 7, "{:?}", shown.json);
    assert_eq!(shown.json["log"]["level"], "debug", "{:?}", shown.json);
    assert_eq!(shown.json["replication"]["synchronous_node_count"], 1, "not applied: {:?}", shown.json);

    // A broken file is refused, the key named; the daemon goes on with what it had.
    std::fs::write(&config, changed.replace("[timing]\n", "[timing]\nlease_timeout = \"soon\"\n"))?;
    let from = log_len(&log);
    t.cluster.signal(&member, Signal::SIGHUP)?;
    let text = wait_log(&log, from, Duration::from_secs(20), |l| l.contains("refused")).await?;
    let refused = text.lines().find(|l| l.contains("refused")).unwrap_or_default();
    assert!(refused.contains("timing.lease_timeout"), "the error names the key: {refused}");
    t.wait_http(&member, "/liveness", 200, Duration::from_secs(10)).await?;
    assert_eq!(member_tags(&t, &primary, &member).await?, (true, 7), "the running config stays");

    // Neither the daemon nor its PostgreSQL restarted.
    assert!(t.cluster.is_running(&member), "the daemon lives on");
    assert_eq!(t.cluster.daemon_pid(&member), Some(daemon));
    assert_eq!(t.postmaster_pid(&member), Some(postmaster), "PostgreSQL was not restarted");
    Ok(())
}

/// SIGHUP of `pid` per `/proc/<pid>/status`: (its command name, ignored, caught).
fn sighup_disposition(pid: i32) -> Option<(String, bool, bool)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let name = status.lines().find_map(|l| l.strip_prefix("Name:"))?.trim().to_string();
    let ignored = pgvigil::reload::sighup_in_mask(&status, "SigIgn")?;
    let caught = pgvigil::reload::sighup_in_mask(&status, "SigCgt")?;
    Some((name, ignored, caught))
}

/// A reload signal in the first milliseconds of a daemon (before its handler is installed) does
/// not end it; and the SIGHUP it ignores meanwhile is not inherited by its keeper (which must die
/// of nothing unexpected) nor by PostgreSQL (which installs its own handler).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_at_start_is_survived_and_children_do_not_inherit_it_ignored() -> anyhow::Result<()> {
    let mut t = TestCluster::prepare(2, 1, |_| {})?;
    let names: Vec<String> = t.spec().members.iter().map(|m| m.name.clone()).collect();
    let member = names[0].clone();
    for n in &names[1..] {
        t.cluster.start(n)?;
    }
    let log = t.spec().state_dir(&member).join("pgvigil.log");
    // Start it, and wait (busy: it is a matter of milliseconds) until the new process runs
    // pgvigil's main and has SIGHUP ignored (the start-up window) or handled; before exec it is
    // the harness' fork. Seeing it ignored proves the window is covered; a poll that missed it (a
    // busy machine) starts the daemon again, a few times.
    let mut attempts = 0;
    let (pid, deadline) = loop {
        attempts += 1;
        t.cluster.start(&member)?;
        let pid = t.cluster.daemon_pid(&member).expect("started") as i32;
        let deadline = Instant::now() + Duration::from_secs(10);
        let ignored = loop {
            match sighup_disposition(pid) {
                Some((name, ignored, caught)) if name == "pgvigil" && (ignored || caught) => break ignored,
                _ => anyhow::ensure!(Instant::now() < deadline, "pgvigil never handled SIGHUP"),
            }
            tokio::task::yield_now().await;
        };
        if ignored {
            break (pid, deadline);
        }
        anyhow::ensure!(attempts < 5, "SIGHUP was never seen ignored at start-up ({attempts} starts)");
        t.cluster.kill_daemon(&member);
    };
    // SIGHUP every 2 ms until the daemon says it started: before, during and after the handler
    // is installed.
    let mut sent = 0;
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("pgvigil started") {
        anyhow::ensure!(t.cluster.is_running(&member), "the daemon died of an early SIGHUP (after {sent})");
        anyhow::ensure!(Instant::now() < deadline, "the daemon did not start");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGHUP)?;
        sent += 1;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    eprintln!("{sent} SIGHUPs during start-up (start {attempts})");
    t.wait_for("a healthy cluster", Duration::from_secs(60), vigil_tests::healthy).await?;
    assert!(t.cluster.is_running(&member), "the daemon lives on");
    let (_, ignored, caught) = sighup_disposition(pid).expect("running");
    assert!(!ignored && caught, "the daemon handles SIGHUP once started");

    // The keeper (the postmaster's parent) and PostgreSQL never had SIGHUP ignored.
    let postmaster = t.postmaster_pid(&member).expect("PostgreSQL runs");
    let status = std::fs::read_to_string(format!("/proc/{postmaster}/status"))?;
    let keeper: i32 = status.lines().find_map(|l| l.strip_prefix("PPid:")).unwrap_or_default().trim().parse()?;
    let (name, ignored, _) = sighup_disposition(keeper).expect("the keeper runs");
    assert!(name == "pgvigil" && !ignored, "the keeper ({keeper}, {name}) must not ignore SIGHUP");
    let (_, ignored, caught) = sighup_disposition(postmaster).expect("PostgreSQL runs");
    assert!(!ignored && caught, "PostgreSQL handles SIGHUP itself");
    Ok(())
}
