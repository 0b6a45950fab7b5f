//! The daemon's own failures: stalled, killed, restarted, stopped; and a hung PostgreSQL. Real
//! PostgreSQL 15 and real daemons on loopback; the invariants are checked from the writer's
//! acknowledgements and the processes themselves, not from what the daemons say.

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use vigil_core::EventKind;
use vigil_tests::{healthy, new_primary_writable, Ack, TestCluster, Writer};

fn signal(pid: i32, sig: Signal) {
    let _ = kill(Pid::from_raw(pid), sig);
}

fn alive(pid: i32) -> bool {
    vigil_pg::proctree::alive(pid)
}

/// No write acknowledged by `old` after the first one acknowledged by any other member: two
/// writable primaries never overlapped.
fn assert_no_overlap(acks: &[Ack], old: &str) {
    let Some(first_new) = acks.iter().find(|a| a.member != old) else { panic!("no write on a new primary") };
    let late: Vec<&Ack> = acks.iter().filter(|a| a.member == old && a.id > first_new.id).collect();
    assert!(
        late.is_empty(),
        "{old} acknowledged {} writes after {} took its first: {late:?}",
        late.len(),
        first_new.member
    );
}

/// The time from `since` to the first write acknowledged by a member other than `old`.
fn first_write_elsewhere(acks: &[Ack], old: &str, since: Instant) -> Duration {
    acks.iter().find(|a| a.member != old && a.at > since).expect("a write on the new primary").at - since
}

/// A settled cluster of three, its primary, the primary's daemon pid and postmaster pid.
async fn three_members() -> anyhow::Result<(TestCluster, String, i32, i32)> {
    let t = TestCluster::start(3, 0).await?;
    let primary = t.primary().await?;
    let daemon = t.cluster.daemon_pid(&primary).expect("daemon") as i32;
    let pm = t.postmaster_pid(&primary).expect("postmaster");
    Ok((t, primary, daemon, pm))
}

async fn rejoined_as_standby(t: &TestCluster, member: &str) -> anyhow::Result<()> {
    t.wait_for("the old primary rejoined as a standby", Duration::from_secs(60), |v| {
        healthy(v) && v.reports.get(member).is_some_and(|r| r.pg.running && r.pg.in_recovery)
    })
    .await
    .map(drop)
}

/// CPU time (user + system) of a process, in clock ticks.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    f.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_a_daemon_leaves_postgres_running() -> anyhow::Result<()> {
    let mut t = TestCluster::start(3, 0).await?;
    let v = t.view().await?;
    let primary = v.state.primary.clone().expect("primary");
    let epoch = v.state.epoch;
    let standby = t.other_pg_members(&primary)[0].clone();

    // A standby's daemon: kill -9 and start again.
    let pm = t.postmaster_pid(&standby).expect("standby postmaster");
    t.cluster.kill_daemon(&standby);
    assert!(alive(pm), "the standby's PostgreSQL outlives its daemon");
    t.cluster.start(&standby)?;
    t.wait_for("the standby back", Duration::from_secs(30), |v| {
        v.reports.get(&standby).is_some_and(|r| r.pg.running && r.pg.streaming)
    })
    .await?;
    assert_eq!(t.postmaster_pid(&standby), Some(pm), "same postmaster: adopted, not restarted");

    // The primary's daemon, restarted within its lease: same postmaster, no failover.
    let pm = t.postmaster_pid(&primary).expect("primary postmaster");
    t.execute(&primary, "CREATE TABLE restarts (x int)").await?;
    t.cluster.kill_daemon(&primary);
    t.cluster.start(&primary)?;
    t.execute(&primary, "INSERT INTO restarts VALUES (1)").await?;
    t.assert_no_failover(&primary, epoch, Duration::from_secs(4)).await?;
    assert_eq!(t.postmaster_pid(&primary), Some(pm), "same postmaster on the primary");
    let log = std::fs::read_to_string(t.spec().state_dir(&primary).join("pgvigil.log"))?;
    assert!(log.contains("adopted the running PostgreSQL"), "{log}");
    t.execute(&primary, "INSERT INTO restarts VALUES (2)").await?;

    // Beyond the lease: the keeper kills it before anyone is promoted, then a failover.
    let writer = Writer::start(&t).await?;
    let killed_at = Instant::now();
    t.cluster.kill_daemon(&primary);
    t.wait_for("a failover", Duration::from_secs(30), |v| new_primary_writable(v, &primary)).await?;
    assert!(!alive(pm), "the keeper killed the primary's PostgreSQL when its lease ran out");
    let acks = writer.stop_timed().await?;
    assert_no_overlap(&acks, &primary);
    eprintln!("FIGURE daemon gone -> first write elsewhere: {:?}", first_write_elsewhere(&acks, &primary, killed_at));
    t.cluster.start(&primary)?;
    t.wait_for("the old primary rejoined", Duration::from_secs(60), |v| {
        healthy(v) && v.state.primary.as_deref() != Some(primary.as_str())
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_primary_daemon_is_fenced_by_its_keeper() -> anyhow::Result<()> {
    let (t, primary, daemon, pm) = three_members().await?;
    let writer = Writer::start(&t).await?;
    tokio::time::sleep(Duration::from_millis(500)).await; // some writes before the fault

    let stalled = Instant::now();
    signal(daemon, Signal::SIGSTOP);
    let result = async {
        let v = t.wait_for("a failover", Duration::from_secs(30), |v| new_primary_writable(v, &primary)).await?;
        // The keeper acted on its own clock while the daemon could not.
        assert!(!alive(pm), "the stalled daemon's PostgreSQL is dead once another member is primary");
        while stalled.elapsed() < Duration::from_secs(12) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::Ok(v)
    }
    .await;
    signal(daemon, Signal::SIGCONT);
    let v = result?;
    let new = v.state.primary.clone().expect("new primary");
    rejoined_as_standby(&t, &primary).await?;
    let acks = writer.stop_timed().await?;
    assert_no_overlap(&acks, &primary);
    let lost =
        vigil_tests::missing_writes(&t, &new, &acks.iter().map(|a| (a.id, a.member.clone())).collect::<Vec<_>>())
            .await?;
    eprintln!(
        "FIGURE daemon stalled: first write elsewhere after {:?}; acknowledged writes missing: {} of {}",
        first_write_elsewhere(&acks, &primary, stalled),
        lost.len(),
        acks.len()
    );
    let log = std::fs::read_to_string(t.spec().state_dir(&primary).join("postgresql.log"))?;
    assert!(log.contains("ran out") && log.contains("killed the postmaster"), "the keeper says what it did");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_postgres_is_failed_over_and_its_daemon_stays_quiet() -> anyhow::Result<()> {
    let (t, primary, daemon, pm) = three_members().await?;
    let log_path = t.spec().state_dir(&primary).join("pgvigil.log");
    let writer = Writer::start(&t).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The postmaster and every backend stopped: a server stuck on a dead disk.
    let tree: Vec<i32> = vigil_pg::proctree::descendants(pm).into_iter().chain([pm]).collect();
    let (log_before, cpu_before) = (std::fs::metadata(&log_path)?.len(), cpu_ticks(daemon));
    let frozen = Instant::now();
    for p in &tree {
        signal(*p, Signal::SIGSTOP);
    }
    let result = t.wait_for("a failover", Duration::from_secs(40), |v| new_primary_writable(v, &primary)).await;
    let promoted_after = frozen.elapsed();
    while frozen.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (log_grew, cpu) = (std::fs::metadata(&log_path)?.len() - log_before, cpu_ticks(daemon) - cpu_before);
    for p in &tree {
        signal(*p, Signal::SIGCONT);
    }
    result?;
    eprintln!("FIGURE frozen PostgreSQL: failover committed after {promoted_after:?}; old daemon: log +{log_grew} bytes, {cpu} CPU ticks in 30 s");
    assert!(promoted_after < Duration::from_secs(15), "failover of a hung server took {promoted_after:?}");
    assert!(
        log_grew < 256 * 1024,
        "the old primary's daemon wrote {log_grew} bytes of log while its server was frozen"
    );
    // 30 s at 100 ticks/s is 3000 ticks for one busy core; a quiet daemon uses a few percent.
    assert!(cpu < 600, "the old primary's daemon used {cpu} ticks of CPU in 30 s");
    assert!(!alive(pm), "the frozen server was killed");
    rejoined_as_standby(&t, &primary).await?;
    let acks = writer.stop_timed().await?;
    assert_no_overlap(&acks, &primary);
    eprintln!(
        "FIGURE frozen PostgreSQL: first write elsewhere after {:?}",
        first_write_elsewhere(&acks, &primary, frozen)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_primary_daemon_switches_over() -> anyhow::Result<()> {
    let mut t = TestCluster::prepare(3, 0, |spec| spec.stop_mode = "switchover".into())?;
    t.cluster.start_all()?;
    t.wait_for("a settled cluster", Duration::from_secs(60), pgvigil::launch::settled).await?;
    let primary = t.primary().await?;
    let writer = Writer::start(&t).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let stopped = Instant::now();
    t.cluster.signal(&primary, Signal::SIGTERM)?;
    let v = t.wait_for("a new primary", Duration::from_secs(30), |v| new_primary_writable(v, &primary)).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while t.cluster.is_running(&primary) {
        anyhow::ensure!(Instant::now() < deadline, "the daemon did not exit after its switchover");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let acks = writer.stop_timed().await?;
    let last = v.state.history.iter().rev().find(|e| matches!(e.kind, EventKind::Failover | EventKind::Switchover));
    assert_eq!(last.map(|e| e.kind), Some(EventKind::Switchover), "a switchover, not a failover: {last:?}");
    let new = v.state.primary.clone().expect("new primary");
    let lost =
        vigil_tests::missing_writes(&t, &new, &acks.iter().map(|a| (a.id, a.member.clone())).collect::<Vec<_>>())
            .await?;
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    let gap = acks.windows(2).filter(|w| w[1].at > stopped).map(|w| w[1].at - w[0].at).max().unwrap_or_default();
    eprintln!("FIGURE SIGTERM on the primary: longest write gap {gap:?}, {} writes, 0 lost", acks.len());
    assert!(gap < Duration::from_millis(1500), "write gap {gap:?}");
    assert!(t.postmaster_pid(&primary).is_none(), "the stopped member's PostgreSQL is stopped");
    Ok(())
}
