//! Backups that follow the primary, on real clusters with real pgBackRest (Debian's 2.45): WAL
//! archived only by the primary that holds its lease, scheduled and manual backups recorded in
//! the replicated history, the next ones taken by the new primary after a kill -9 failover, a
//! backup interrupted by a failover retried there exactly once, and a deposed primary that
//! outlives its daemon refused by the archive.

use anyhow::Context;
use std::time::{Duration, Instant};
use vigil_core::EventKind;
use vigil_tests::backup::{
    archiver, backups, in_archive, records, repo, switch_wal, wait_backup, wait_until, wait_verification, with_backup,
    CONVERGE,
};
use vigil_tests::{healthy, new_primary_writable, pgvigil_bin, settled, ClusterSpec, TestCluster, TlsSpec, View};

fn log_of(t: &TestCluster, member: &str) -> String {
    std::fs::read_to_string(t.spec().state_dir(member).join("postgresql.log")).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_is_archived_and_backups_follow_the_primary_through_a_kill_9_failover() -> anyhow::Result<()> {
    // Scheduled incrementals every 20 s (the first, with no full yet, is taken as a full).
    let mut t = TestCluster::prepare(3, 0, |s| with_backup(s, &["schedule.incr = \"*/20 * * * * *\""]))?;
    t.cluster.start_all()?;
    t.wait_for("a settled cluster with its stanza", CONVERGE, |v| settled(v) && v.state.backup.stanza_ready.is_some())
        .await?;
    let old = t.primary().await?;
    let repo = repo(t.spec());

    // WAL is archived by the primary.
    t.execute(&old, "CREATE TABLE items (id int primary key); INSERT INTO items SELECT generate_series(1, 1000)")
        .await?;
    let segment = switch_wal(&t, &old).await?;
    wait_until("the primary's segment in the archive", CONVERGE, || {
        let (repo, segment) = (repo.clone(), segment.clone());
        async move { Ok(in_archive(&repo, &segment)) }
    })
    .await?;

    // A scheduled backup runs on the primary and is recorded.
    let scheduled = wait_backup(&t, &old, "a scheduled backup", |r| r["reason"] == "scheduled").await?;
    assert_eq!(scheduled["member"], old.as_str(), "{scheduled}");
    assert!(scheduled["outcome"]["error"].is_null(), "{scheduled}");
    assert!(scheduled["outcome"]["label"].is_string(), "{scheduled}");

    // A manual full through the command line (retried while a scheduled one runs: 409).
    let config = t.spec().config_path(&old).display().to_string();
    let deadline = Instant::now() + CONVERGE;
    let out = loop {
        let out = t.cli(&["backup", "--type", "full", "--config", &config], "").await?;
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        if out.status.success() || !stderr.contains("is running") || Instant::now() >= deadline {
            break out;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "pgvigil backup: {stdout} {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(&format!("done on {old}")), "{stdout}");
    let b = backups(&t, &old).await?;
    let manual = records(&b).into_iter().find(|r| r["reason"] == "manual").context("the manual backup")?;
    assert_eq!((manual["kind"].as_str(), manual["outcome"]["taken"].as_str()), (Some("full"), Some("full")));
    let label = manual["outcome"]["label"].as_str().context("label")?.to_string();
    let listed: Vec<&str> = b["repository"][0]["backup"]
        .as_array()
        .context("pgbackrest info in GET /backups")?
        .iter()
        .filter_map(|x| x["label"].as_str())
        .collect();
    assert!(listed.contains(&label.as_str()), "{label} in {listed:?}");
    let metrics = t.get(&old, "/metrics").await?.text;
    let line = metrics
        .lines()
        .find(|l| l.starts_with("pgvigil_backup_last_success_timestamp_seconds{type=\"full\"}"))
        .context("the last full backup's metric")?;
    let at: f64 = line.rsplit(' ').next().unwrap_or_default().parse()?;
    assert!(at > 0.0, "{line}");
    let out = t.cli(&["backups", "--config", &config], "").await?;
    assert!(String::from_utf8_lossy(&out.stdout).contains(&label), "pgvigil backups lists {label}");

    // kill -9 of the primary's host.
    t.execute(&old, "INSERT INTO items SELECT generate_series(1001, 2000)").await?;
    for s in t.other_pg_members(&old) {
        t.wait_rows(&s, "items", 2000, Duration::from_secs(20)).await?;
    }
    let killed_at = vigil_tests_wall_ms();
    t.kill_host(&old);
    let v = t.wait_for("a new writable primary", CONVERGE, |v| new_primary_writable(v, &old)).await?;
    let new = v.state.primary.clone().context("a primary")?;

    // The new primary archives on its timeline, with its own epoch's permit.
    t.execute(&new, "INSERT INTO items SELECT generate_series(2001, 3000)").await?;
    let segment = switch_wal(&t, &new).await?;
    assert!(!segment.starts_with("00000001"), "a new timeline: {segment}");
    wait_until("the new primary's segment in the archive", CONVERGE, || {
        let (repo, segment) = (repo.clone(), segment.clone());
        async move { Ok(in_archive(&repo, &segment)) }
    })
    .await?;
    let (_, _, failed, _) = archiver(&t, &new).await?;
    assert_eq!(failed, 0, "no failed push on the new primary (no 'different checksum')");
    let new_log = log_of(&t, &new);
    let epoch = v.state.epoch;
    assert!(new_log.contains(&format!("pushed (epoch {epoch})")), "the new primary pushes in epoch {epoch}");
    assert!(!new_log.contains("different checksum"), "no conflicting push");

    // The next scheduled backup runs on the new primary.
    let next = wait_backup(&t, &new, "a scheduled backup on the new primary", |r| {
        r["member"] == new.as_str() && r["reason"] == "scheduled" && r["requested_unix_ms"].as_u64() > Some(killed_at)
    })
    .await?;
    assert!(next["outcome"]["error"].is_null(), "{next}");
    // The old primary pushed only in its own epoch, and never after it was killed.
    let old_log = log_of(&t, &old);
    assert!(old_log.contains("pushed (epoch 1)"));
    assert!(!old_log.lines().any(|l| l.contains("pushed (epoch") && !l.contains("pushed (epoch 1)")), "{old_log}");
    let history = t.view().await?.state.history;
    assert!(history.iter().any(|e| e.kind == EventKind::Backup && e.member == new));
    Ok(())
}

/// The segment after `name` (16 MB segments: 256 per "log" number).
fn next_segment(name: &str) -> anyhow::Result<String> {
    anyhow::ensure!(name.len() == 24, "not a segment name: {name}");
    let (tli, log, seg) = (&name[..8], u32::from_str_radix(&name[8..16], 16)?, u32::from_str_radix(&name[16..], 16)?);
    let (log, seg) = if seg == 0xFF { (log + 1, 0) } else { (log, seg + 1) };
    Ok(format!("{tli}{log:08X}{seg:08X}"))
}

/// The archive falls behind on the primary (its pushes fail), the primary's host is killed: the
/// new primary pushes the segments it had received, so the archive has no hole on the old
/// timeline, and nothing conflicts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_the_dead_primary_never_archived_are_archived_by_the_new_one() -> anyhow::Result<()> {
    let mut t = TestCluster::prepare(3, 0, |s| with_backup(s, &[]))?;
    t.cluster.start_all()?;
    t.wait_for("a settled cluster with its stanza", CONVERGE, |v| settled(v) && v.state.backup.stanza_ready.is_some())
        .await?;
    let old = t.primary().await?;
    let repo = repo(t.spec());
    t.execute(&old, "CREATE TABLE items (id int primary key)").await?;
    let first = switch_wal(&t, &old).await?;
    wait_until("the first segment in the archive", CONVERGE, || {
        let (repo, first) = (repo.clone(), first.clone());
        async move { Ok(in_archive(&repo, &first)) }
    })
    .await?;

    // The repository's archive goes away for a while: every push of the primary fails.
    let archive = repo.join("archive").join("main");
    let hidden = repo.join("archive").join("main.hidden");
    std::fs::rename(&archive, &hidden)?;
    let mut behind = Vec::new();
    for i in 0..3 {
        t.execute(&old, &format!("INSERT INTO items SELECT generate_series({i} * 1000 + 1, {i} * 1000 + 1000)"))
            .await?;
        behind.push(switch_wal(&t, &old).await?);
    }
    t.execute(&old, "INSERT INTO items SELECT generate_series(3001, 3500)").await?;
    for s in t.other_pg_members(&old) {
        t.wait_rows(&s, "items", 3500, Duration::from_secs(30)).await?;
    }
    wait_until("a failed push on the primary", CONVERGE, || {
        let (t, old) = (&t, old.clone());
        async move { Ok(archiver(t, &old).await?.2 > 0) }
    })
    .await?;
    std::fs::rename(&hidden, &archive).ok();
    let missing: Vec<&String> = behind.iter().filter(|s| !in_archive(&repo, s)).collect();
    anyhow::ensure!(!missing.is_empty(), "the archive did not fall behind: {behind:?} all there");
    // The old primary must not push them itself: its host dies now, the archive back in place.
    std::fs::rename(&archive, &hidden)?;
    let killed = Instant::now();
    t.kill_host(&old);
    std::fs::rename(&hidden, &archive)?;
    let v = t.wait_for("a new writable primary", CONVERGE, |v| new_primary_writable(v, &old)).await?;
    let writable = killed.elapsed();
    let new = v.state.primary.clone().context("a primary")?;

    // Every segment of the old timeline from the first archived one to the last the old
    // primary closed is in the archive: no hole.
    let mut wanted = vec![first.clone()];
    while wanted.last() != behind.last() {
        let next = next_segment(wanted.last().context("a segment")?)?;
        wanted.push(next);
    }
    wait_until("the old timeline's segments in the archive", CONVERGE, || {
        let (repo, wanted) = (repo.clone(), wanted.clone());
        async move { Ok(wanted.iter().all(|s| in_archive(&repo, s))) }
    })
    .await
    .with_context(|| {
        let gone: Vec<&String> = wanted.iter().filter(|s| !in_archive(&repo, s)).collect();
        format!("missing from the archive: {gone:?}")
    })?;
    println!(
        "archive after a kill -9 failover with {} segments not archived by the old primary: no hole; \
         the new primary writable {:.2} s after the kill, the old timeline complete in the archive {:.2} s after it",
        missing.len(),
        writable.as_secs_f64(),
        killed.elapsed().as_secs_f64()
    );
    let (_, _, failed, last_failed) = archiver(&t, &new).await?;
    assert_eq!(failed, 0, "no failed push on the new primary: {last_failed}");
    let new_log = log_of(&t, &new);
    assert!(!new_log.contains("different checksum"), "no conflicting push");
    assert!(
        std::fs::read_to_string(t.spec().state_dir(&new).join("pgvigil.log"))?.contains("marked received WAL ready"),
        "the new primary's agent marked them"
    );
    Ok(())
}

fn vigil_tests_wall_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The pids of pgBackRest processes that run `what` with `member`'s configuration.
fn pgbackrest_pids(t: &TestCluster, member: &str, what: &str) -> Vec<i32> {
    let config = t.spec().state_dir(member).join("pgbackrest").join("pgbackrest.conf").display().to_string();
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        if args.first().is_some_and(|a| a.ends_with("pgbackrest"))
            && args.iter().any(|a| a.contains(&config))
            && args.iter().any(|a| a == what)
        {
            pids.push(pid);
        }
    }
    pids
}

/// Wait (at most `within`) until `member`'s pgBackRest `command` runs (`running`) or has ended.
async fn wait_pgbackrest(
    t: &TestCluster,
    member: &str,
    command: &str,
    running: bool,
    what: &str,
    within: Duration,
) -> anyhow::Result<()> {
    wait_until(what, within, || {
        let runs = !pgbackrest_pids(t, member, command).is_empty();
        async move { Ok(runs == running) }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_interrupted_by_a_failover_is_retried_on_the_new_primary_exactly_once() -> anyhow::Result<()> {
    // Slow enough to be caught running: maximal compression of some tens of MB.
    let mut t = TestCluster::prepare(3, 0, |s| {
        with_backup(s, &["options = { compress-level = \"9\" }"]);
        let log = s.dir.join("hooks.log").display().to_string();
        s.hooks = vec![format!("on_backup = {:?}", format!("echo \"$PGVIGIL_MEMBER $PGVIGIL_REASON\" >> {log}"))];
    })?;
    t.cluster.start_all()?;
    t.wait_for("a settled cluster with its stanza", CONVERGE, |v| settled(v) && v.state.backup.stanza_ready.is_some())
        .await?;
    let old = t.primary().await?;
    t.execute(
        &old,
        "CREATE TABLE filler AS SELECT g AS id, repeat(md5(g::text), 4) AS pad FROM generate_series(1, 200000) g",
    )
    .await?;
    for s in t.other_pg_members(&old) {
        t.wait_rows(&s, "filler", 200_000, Duration::from_secs(60)).await?;
    }
    let other = t.other_pg_members(&old).into_iter().next().context("a standby")?;
    let r = t.post(&other, "/backup", r#"{"type": "full", "reason": "before the upgrade"}"#).await?;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.json["member"], old.as_str());
    let id = r.json["id"].as_u64().context("id")?;
    // Killed while pgBackRest is copying.
    wait_pgbackrest(&t, &old, "backup", true, "pgbackrest backup running on the primary", Duration::from_secs(20))
        .await?;
    t.kill_host(&old);
    // The daemon's death kills its pgBackRest (parent-death signal).
    wait_pgbackrest(&t, &old, "backup", false, "the old primary's pgbackrest gone", Duration::from_secs(10)).await?;
    let v = t.wait_for("a new writable primary", CONVERGE, |v| new_primary_writable(v, &old)).await?;
    let new = v.state.primary.clone().context("a primary")?;
    let done = wait_backup(&t, &new, "the retried backup", |r| r["id"].as_u64() == Some(id)).await?;
    assert_eq!(done["member"], new.as_str(), "{done}");
    assert_eq!(done["attempts"], 2, "{done}");
    assert!(done["outcome"]["error"].is_null(), "{done}");
    assert_eq!(done["reason"], "manual: before the upgrade");
    let b = backups(&t, &new).await?;
    assert_eq!(records(&b).len(), 1, "recorded once: {b}");
    assert!(b["running"].is_null(), "nothing runs any more: {b}");
    let in_repo = b["repository"][0]["backup"].as_array().map(Vec::len);
    assert_eq!(in_repo, Some(1), "one backup in the repository: {}", b["repository"]);
    let history = t.view().await?.state.history;
    let retried: Vec<_> =
        history.iter().filter(|e| e.kind == EventKind::Backup && e.detail.contains("retried on")).collect();
    assert_eq!(retried.len(), 1, "{retried:?}");
    assert_eq!(retried[0].member, new);
    // The on_backup hook ran where the backup ended.
    let hooks_log = t.spec().dir.join("hooks.log");
    let expected = format!("{new} backup {id} done: ");
    wait_until("the on_backup hook", Duration::from_secs(20), || {
        let text = std::fs::read_to_string(&hooks_log).unwrap_or_default();
        let found = text.contains(&expected);
        async move { Ok(found) }
    })
    .await?;
    let text = std::fs::read_to_string(&hooks_log)?;
    assert!(!text.contains(&format!("{old} backup {id} done")), "the interrupted attempt never reported done: {text}");
    Ok(())
}

/// The parent of a process (its keeper, for a postmaster).
fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid ...: comm may hold spaces, so split after its closing parenthesis.
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_primary_that_outlives_its_daemon_cannot_archive() -> anyhow::Result<()> {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let mut t = TestCluster::prepare(3, 0, |s| with_backup(s, &[]))?;
    t.cluster.start_all()?;
    t.wait_for("a settled cluster with its stanza", CONVERGE, |v| settled(v) && v.state.backup.stanza_ready.is_some())
        .await?;
    let old = t.primary().await?;
    let postmaster = t.postmaster_pid(&old).context("the primary's postmaster")?;
    let keeper = parent_of(postmaster).context("its keeper")?;
    // The one case where PostgreSQL outlives its lease: its keeper stopped, its daemon killed.
    kill(Pid::from_raw(keeper), Signal::SIGSTOP)?;
    t.cluster.kill_daemon(&old);
    let outcome = async {
        let v = t.wait_for("a new writable primary", CONVERGE, |v| new_primary_writable(v, &old)).await?;
        anyhow::ensure!(t.postmaster_pid(&old) == Some(postmaster), "the deposed server still runs");
        // It still takes writes (nothing fences it), but its WAL must not reach the archive.
        t.execute(&old, "CREATE TABLE late (id int); INSERT INTO late VALUES (1)").await?;
        let segment = switch_wal(&t, &old).await?;
        wait_until("a refused push on the deposed primary", CONVERGE, || {
            let (t, segment, old) = (&t, segment.clone(), old.clone());
            async move {
                let (_, _, failed, last_failed) = archiver(t, &old).await?;
                Ok(failed > 0 && last_failed == segment)
            }
        })
        .await?;
        anyhow::ensure!(!in_archive(&repo(t.spec()), &segment), "{segment} of the deposed primary is not archived");
        let log = log_of(&t, &old);
        anyhow::ensure!(log.contains(&format!("pgvigil archive-push {segment}: refused")), "the refusal is in its log");
        // The new primary archives as usual.
        let new = v.state.primary.clone().context("a primary")?;
        t.execute(&new, "CREATE TABLE fresh (id int); INSERT INTO fresh VALUES (1)").await?;
        let segment = switch_wal(&t, &new).await?;
        let repo = repo(t.spec());
        wait_until("the new primary's segment in the archive", CONVERGE, || {
            let (repo, segment) = (repo.clone(), segment.clone());
            async move { Ok(in_archive(&repo, &segment)) }
        })
        .await
    }
    .await;
    // Our processes, stopped or not: SIGKILL works on a stopped one.
    let _ = kill(Pid::from_raw(postmaster), Signal::SIGKILL);
    let _ = kill(Pid::from_raw(keeper), Signal::SIGKILL);
    outcome
}

/// Crash recovery of `data_dir` in single-user mode, as PostgreSQL's user: what pg_rewind does
/// first with a crashed target. Its checkpoint may recycle the WAL before it.
fn crash_recover_single_user(data_dir: &std::path::Path) -> anyhow::Result<()> {
    let out = std::process::Command::new("runuser")
        .args(["-u", "postgres", "--", "/usr/lib/postgresql/15/bin/postgres", "--single", "-F", "-D"])
        .arg(data_dir)
        .arg("template1")
        .stdin(std::process::Stdio::null())
        .output()?;
    anyhow::ensure!(out.status.success(), "postgres --single: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// An old primary whose pg_wal lost a segment the rewind needs (recycled after its crash
/// recovery, here removed on purpose) is still rewound, not re-cloned: pg_rewind runs with
/// `--restore-target-wal` and fetches the segment from the archive through the member's
/// restore_command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_primary_missing_wal_is_rewound_with_wal_from_the_archive() -> anyhow::Result<()> {
    let mut t = TestCluster::prepare(2, 1, |s| with_backup(s, &[]))?;
    t.cluster.start_all()?;
    t.wait_for("a settled cluster with its stanza", CONVERGE, |v| settled(v) && v.state.backup.stanza_ready.is_some())
        .await?;
    let old = t.primary().await?;
    let repo = repo(t.spec());
    t.execute(&old, "CREATE TABLE items (id int primary key); CHECKPOINT").await?;
    // Two closed segments after the checkpoint, both archived; the rewind reads from the
    // checkpoint on.
    let mut closed = Vec::new();
    for i in 0..2 {
        t.execute(&old, &format!("INSERT INTO items SELECT generate_series({i} * 1000 + 1, {i} * 1000 + 1000)"))
            .await?;
        closed.push(switch_wal(&t, &old).await?);
    }
    t.execute(&old, "INSERT INTO items SELECT generate_series(2001, 2500)").await?;
    let needed = closed[1].clone();
    wait_until("the closed segments in the archive", CONVERGE, || {
        let (repo, closed) = (repo.clone(), closed.clone());
        async move { Ok(closed.iter().all(|s| in_archive(&repo, s))) }
    })
    .await?;
    let c = t.client(&old).await?;
    let checkpoint: String =
        c.query_one("SELECT pg_walfile_name(checkpoint_lsn) FROM pg_control_checkpoint()", &[]).await?.get(0);
    anyhow::ensure!(checkpoint < needed, "no checkpoint after {checkpoint}: {needed} is read by the rewind");
    for s in t.other_pg_members(&old) {
        t.wait_rows(&s, "items", 2500, Duration::from_secs(30)).await?;
    }
    t.kill_host(&old);
    let v = t.wait_for("a new writable primary", CONVERGE, |v| new_primary_writable(v, &old)).await?;
    let new = v.state.primary.clone().context("a primary")?;
    t.execute(&new, "CREATE TABLE after (id int); INSERT INTO after VALUES (1)").await?;

    // The old primary comes back from its crash without the segment.
    let data = t.spec().data_dir(&old);
    crash_recover_single_user(&data)?;
    let segment = data.join("pg_wal").join(&needed);
    if segment.exists() {
        std::fs::remove_file(&segment)?;
    }
    t.cluster.start(&old)?;
    let v = t
        .wait_for("the old primary rewound and streaming", CONVERGE, |v: &View| {
            healthy(v)
                && v.state
                    .history
                    .iter()
                    .any(|e| (e.kind == EventKind::Rewind || e.kind == EventKind::Reclone) && e.member == old)
        })
        .await?;
    let rejoin = v
        .state
        .history
        .iter()
        .find(|e| (e.kind == EventKind::Rewind || e.kind == EventKind::Reclone) && e.member == old);
    let rejoin = rejoin.context("the rejoin event")?;
    assert_eq!(rejoin.kind, EventKind::Rewind, "rewound, not re-cloned: {rejoin:?}");
    assert!(rejoin.detail.contains("--restore-target-wal"), "{rejoin:?}");
    // pg_rewind read the old timeline from a checkpoint before the removed segment (pgBackRest's
    // archive-get writes no log of its own: without the archive, pg_rewind fails on the missing
    // file and the member is re-cloned instead).
    let log = std::fs::read_to_string(t.spec().state_dir(&old).join("pgvigil.log"))?;
    let line = log.lines().find(|l| l.contains("rewound:")).context("the rewind's log line")?;
    assert!(line.contains("restore_target_wal=true") && line.contains("last common checkpoint"), "{line}");
    t.wait_rows(&old, "after", 1, Duration::from_secs(30)).await?;
    t.wait_rows(&old, "items", 2500, Duration::from_secs(30)).await?;
    Ok(())
}

#[test]
fn a_bad_backup_table_exits_64_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = ClusterSpec::local(dir.path(), &pgvigil_bin(), 2, 0).expect("spec");
    spec.write_secret().expect("secret file");
    with_backup(&mut spec, &[]);
    let good = spec.config_text(&spec.members[0]).expect("config text");
    let cases = [
        ("unknown key", good.replace("stanza = ", "stanzza = \"x\"\nstanza = "), "backup.stanzza"),
        (
            "bad schedule",
            good.replace("[backup]\n", "[backup]\nschedule.full = \"61 * * * *\"\n"),
            "backup.schedule.full",
        ),
        // A standby's pgBackRest reaches the primary through its TLS server: [tls] is needed.
        ("standby without [tls]", good.replace("[backup]\n", "[backup]\nrun_on = \"standby\"\n"), "backup.run_on"),
        ("run_on unknown", good.replace("[backup]\n", "[backup]\nrun_on = \"replica\"\n"), "backup.run_on"),
        (
            "a TLS server option pgvigil owns",
            good.replace("[backup]\n", "[backup]\noptions = { tls-server-port = \"9\" }\n"),
            "backup.options.tls-server-port",
        ),
        (
            "backup-standby set by hand",
            good.replace("[backup]\n", "[backup]\noptions = { backup-standby = \"y\" }\n"),
            "backup.options.backup-standby",
        ),
        ("no repository", good.replace("repo_path = ", "# repo_path = "), "backup.repo_path"),
        (
            "an option pgvigil owns",
            good.replace("[backup]\n", "[backup]\noptions = { pg1-path = \"/tmp\" }\n"),
            "backup.options.pg1-path",
        ),
        ("a bad stanza", good.replace("stanza = \"main\"", "stanza = \"a b\""), "backup.stanza"),
        (
            "no pgbackrest there",
            good.replace("[backup]\n", "[backup]\npgbackrest = \"/nonexistent/pgbackrest\"\n"),
            "backup.pgbackrest",
        ),
    ];
    for (what, text, key) in cases {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, &text).expect("write");
        // check-config: it exits whatever it finds, so a case that turns out valid fails, not hangs.
        let out = std::process::Command::new(pgvigil_bin()).arg("check-config").arg(&path).output().expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{what}: {stderr}");
        assert!(stderr.contains(key), "{what}: stderr should name {key}: {stderr}");
    }
}

/// `POST /backup` (a full) on `member`: the id and the member it was placed on.
async fn request_full(t: &TestCluster, member: &str) -> anyhow::Result<(u64, String)> {
    let r = t.http(member, "POST", "/backup", Some(&t.token()), Some(r#"{"type": "full"}"#)).await?;
    anyhow::ensure!(r.status == 202, "POST /backup: {} {}", r.status, r.text);
    Ok((r.json["id"].as_u64().context("id")?, r.json["member"].as_str().context("member")?.to_string()))
}

fn labels_in_repository(b: &serde_json::Value) -> Vec<String> {
    b["repository"][0]["backup"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x["label"].as_str())
        .map(String::from)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_run_on_standby_backups_run_on_a_standby_and_go_on_when_it_dies() -> anyhow::Result<()> {
    // Every member runs pgBackRest's TLS server with its [tls] certificate (which names
    // "localhost": pgBackRest 2.45 checks DNS names only).
    let mut t = TestCluster::prepare_tls(3, 0, TlsSpec::default(), |s| {
        with_backup(s, &["run_on = \"standby\"", "server_host = \"localhost\""])
    })?;
    t.cluster.start_all()?;
    t.wait_for("a settled cluster with its stanza", CONVERGE, |v| {
        settled(v)
            && v.state.backup.stanza_ready.is_some()
            && v.reports.values().filter(|r| r.backup_source.is_some()).count() == 3
    })
    .await?;
    let primary = t.primary().await?;
    t.execute(&primary, "CREATE TABLE items (id int primary key); INSERT INTO items SELECT generate_series(1, 1000)")
        .await?;
    let standbys = t.other_pg_members(&primary);
    for s in &standbys {
        t.wait_rows(s, "items", 1000, Duration::from_secs(20)).await?;
    }

    // A manual full runs on a standby, from the primary through its TLS server.
    let (id, placed) = request_full(&t, &primary).await?;
    assert!(standbys.contains(&placed), "placed on {placed}, not a standby of {standbys:?}");
    let first = wait_backup(&t, &primary, "the backup on a standby", |r| r["id"] == id).await?;
    assert_eq!(first["member"], placed.as_str(), "{first}");
    assert!(first["outcome"]["error"].is_null(), "{first}");
    let label = first["outcome"]["label"].as_str().context("label")?.to_string();
    // pgBackRest on the standby took it with backup-standby, the primary as pg1 over TLS.
    let log = std::fs::read_to_string(t.spec().state_dir(&placed).join("pgbackrest/log/main-backup.log"))?;
    assert!(log.contains("--backup-standby") && log.contains("--pg1-host-type=tls"), "{log}");
    assert!(log.contains("backup start archive"), "{log}");
    assert!(labels_in_repository(&backups(&t, &primary).await?).contains(&label), "pgbackrest info lists {label}");
    let history = t.view().await?.state.history;
    assert!(
        history
            .iter()
            .any(|e| e.kind == EventKind::Backup && e.detail.contains(&format!("started on standby {placed}"))),
        "{history:?}"
    );
    // It restores and recovers (the verification, on a standby's host) and pgbackrest verify passes.
    let v = t.http(&primary, "POST", "/backup/verify", Some(&t.token()), Some("")).await?;
    assert_eq!(v.status, 202, "{}", v.text);
    let vid = v.json["id"].as_u64().context("verification id")?;
    let verified = wait_verification(&t, &primary, "the verification", |r| r["id"] == vid).await?;
    assert!(verified["outcome"]["error"].is_null(), "{verified}");

    for m in [&primary, &standbys[0], &standbys[1]] {
        assert!(!pgbackrest_pids(&t, m, "server").is_empty(), "{m} runs pgBackRest's TLS server");
    }

    // A standby's host dies while it takes a backup (daemon and PostgreSQL, kill -9; it may be
    // the coordinator's host too). The backup moves to the other standby once, after the dead
    // one was silent for report_timeout + lease_timeout, and succeeds there. About 100 MB more,
    // so that the backup is still running when the host dies.
    t.execute(&primary, "INSERT INTO items SELECT g FROM generate_series(1001, 2000) g").await?;
    t.execute(
        &primary,
        "CREATE TABLE bulk AS SELECT g, md5(g::text) || md5((g + 1)::text) AS pad FROM generate_series(1, 1200000) g",
    )
    .await?;
    for s in &standbys {
        t.wait_rows(s, "bulk", 1_200_000, Duration::from_secs(60)).await?;
    }
    let (id2, doomed) = request_full(&t, &primary).await?;
    assert!(standbys.contains(&doomed), "placed on {doomed}");
    let other = standbys.iter().find(|s| **s != doomed).context("another standby")?.clone();
    let what = "pgBackRest's backup running on the standby";
    wait_pgbackrest(&t, &doomed, "backup", true, what, Duration::from_secs(30)).await?;
    t.kill_host(&doomed);
    // Its TLS server dies with its daemon (parent-death signal).
    wait_pgbackrest(&t, &doomed, "server", false, "the killed member's TLS server gone", Duration::from_secs(10))
        .await?;
    let second = wait_backup(&t, &primary, "the backup moved off the dead standby", |r| r["id"] == id2).await?;
    assert_eq!((second["member"].as_str(), second["attempts"].as_u64()), (Some(other.as_str()), Some(2)), "{second}");
    assert!(second["outcome"]["error"].is_null(), "{second}");
    let history = t.view().await?.state.history;
    assert!(
        history.iter().any(|e| e.detail.contains(&format!("backup {id2} (full) interrupted on {doomed} (epoch"))
            && e.detail.contains(&format!("retried on standby {other}"))),
        "{history:?}"
    );
    let label2 = second["outcome"]["label"].as_str().context("label")?.to_string();
    let listed = labels_in_repository(&backups(&t, &primary).await?);
    assert!(listed.contains(&label) && listed.contains(&label2), "{listed:?}");

    // A daemon's shutdown stops its TLS server.
    t.cluster.stop_all(Duration::from_secs(60));
    for m in [&primary, &other] {
        assert!(pgbackrest_pids(&t, m, "server").is_empty(), "{m}'s TLS server outlived its daemon's shutdown");
    }
    Ok(())
}
