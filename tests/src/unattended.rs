//! The daemon's own failures as scenarios that return their figures: a stalled daemon, a hung
//! PostgreSQL, a stop, restarts. Each checks its invariants itself (an error names the violation)
//! so the tests (`tests/unattended.rs`, one run with bounds) and the benchmark (`bench unattended`,
//! many runs, figures) share them.

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use vigil_core::EventKind;

use crate::{healthy, missing_writes, new_primary_writable, settled, Ack, TestCluster, Writer};

fn signal(pid: i32, sig: Signal) {
    let _ = kill(Pid::from_raw(pid), sig);
}

fn alive(pid: i32) -> bool {
    vigil_pg::proctree::alive(pid)
}

/// CPU time (user + system) of a process, in clock ticks (100 a second).
pub fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    field(11) + field(12)
}

/// A settled cluster of three, its primary, the primary's daemon pid and postmaster pid.
pub async fn three_members() -> anyhow::Result<(TestCluster, String, i32, i32)> {
    let t = TestCluster::start(3, 0).await?;
    let primary = t.primary().await?;
    let daemon = t.cluster.daemon_pid(&primary).ok_or_else(|| anyhow::anyhow!("no daemon pid"))? as i32;
    let pm = t.postmaster_pid(&primary).ok_or_else(|| anyhow::anyhow!("no postmaster"))?;
    Ok((t, primary, daemon, pm))
}

pub async fn rejoined_as_standby(t: &TestCluster, member: &str) -> anyhow::Result<()> {
    t.wait_for("the old primary rejoined as a standby", Duration::from_secs(60), |v| {
        healthy(v) && v.reports.get(member).is_some_and(|r| r.pg.running && r.pg.in_recovery)
    })
    .await
    .map(drop)
}

/// No write acknowledged by `old` after the first one acknowledged by any other member: two
/// writable primaries never overlapped.
pub fn check_no_overlap(acks: &[Ack], old: &str) -> anyhow::Result<()> {
    let first_new =
        acks.iter().find(|a| a.member != old).ok_or_else(|| anyhow::anyhow!("no write on a new primary"))?;
    let late = acks.iter().filter(|a| a.member == old && a.id > first_new.id).count();
    anyhow::ensure!(late == 0, "{old} acknowledged {late} writes after {} took its first", first_new.member);
    Ok(())
}

/// The time from `since` to the first write acknowledged by a member other than `old`.
pub fn first_write_elsewhere(acks: &[Ack], old: &str, since: Instant) -> anyhow::Result<Duration> {
    acks.iter()
        .find(|a| a.member != old && a.at > since)
        .map(|a| a.at - since)
        .ok_or_else(|| anyhow::anyhow!("no write on another member after {since:?}"))
}

/// The longest time between two acknowledged writes, among those after `since`.
pub fn longest_gap(acks: &[Ack], since: Instant) -> Duration {
    acks.windows(2).filter(|w| w[1].at > since).map(|w| w[1].at - w[0].at).max().unwrap_or_default()
}

async fn missing_on(t: &TestCluster, member: &str, acks: &[Ack]) -> anyhow::Result<usize> {
    let pairs: Vec<(i64, String)> = acks.iter().map(|a| (a.id, a.member.clone())).collect();
    Ok(missing_writes(t, member, &pairs).await?.len())
}

/// Writes for a moment before a fault, so there is something to lose.
async fn warm_up() {
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// What a fault that ends in a failover cost.
#[derive(Debug)]
pub struct FailoverRun {
    /// From the fault to the first write acknowledged by another member.
    pub first_write: Duration,
    pub acked: usize,
    /// Acknowledged writes the new primary does not have.
    pub missing: usize,
    /// Log written by the old primary's daemon during the fault, in bytes.
    pub log_bytes: u64,
    /// CPU used by the old primary's daemon during the fault, in ticks (100 a second).
    pub cpu_ticks: u64,
}

/// The primary's daemon stopped (SIGSTOP) for `hold`, under a writer: its keeper kills PostgreSQL
/// before a standby is promoted; after SIGCONT the member rejoins as a standby by itself.
pub async fn stalled_daemon(hold: Duration) -> anyhow::Result<FailoverRun> {
    let (t, primary, daemon, pm) = three_members().await?;
    freeze_and_fail_over(&t, &primary, daemon, pm, false, hold).await
}

/// [`stalled_daemon`] on a primary whose file says `lease_timeout = "8s"` while the cluster agreed
/// on 2 s (pg2 and pg3 make the cluster; pg1 joins later and is switched to): its keeper must kill
/// PostgreSQL by the cluster's lease, before the coordinator promotes after 2.5 s, not after 8 s.
/// Also returns pg1's log.
pub async fn stalled_daemon_whose_file_has_a_longer_lease(hold: Duration) -> anyhow::Result<(FailoverRun, String)> {
    let mut t = TestCluster::prepare(3, 0, |_| {})?;
    let path = t.spec().config_path("pg1");
    let text = std::fs::read_to_string(&path)?.replace("[timing]\n", "[timing]\nlease_timeout = \"8s\"\n");
    std::fs::write(&path, text)?;
    t.cluster.start("pg2")?;
    t.cluster.start("pg3")?;
    t.wait_for("a cluster of pg2 and pg3", Duration::from_secs(60), healthy).await?;
    t.cluster.start("pg1")?;
    t.wait_for("pg1 streaming", Duration::from_secs(60), |v| {
        healthy(v)
            && v.state.members.contains_key("pg1")
            && v.reports.get("pg1").is_some_and(|r| r.pg.running && r.pg.in_recovery && r.pg.streaming)
    })
    .await?;
    let reply = t.post("pg2", "/switchover", r#"{"candidate": "pg1"}"#).await?;
    anyhow::ensure!(reply.status == 200, "switchover to pg1 refused: {reply:?}");
    t.wait_for("pg1 primary, settled", Duration::from_secs(60), |v| {
        settled(v) && v.state.primary.as_deref() == Some("pg1")
    })
    .await?;
    let daemon = t.cluster.daemon_pid("pg1").ok_or_else(|| anyhow::anyhow!("no daemon pid"))? as i32;
    let pm = t.postmaster_pid("pg1").ok_or_else(|| anyhow::anyhow!("no postmaster"))?;
    let run = freeze_and_fail_over(&t, "pg1", daemon, pm, false, hold).await?;
    let log = std::fs::read_to_string(t.spec().state_dir("pg1").join("pgvigil.log"))?;
    Ok((run, log))
}

/// The primary's postmaster and every backend stopped (SIGSTOP) for `hold`, its daemon alive: a
/// server stuck on a dead disk. A standby is promoted; the old daemon stays quiet; after the thaw
/// the member rejoins as a standby.
pub async fn frozen_postgres(hold: Duration) -> anyhow::Result<FailoverRun> {
    let (t, primary, daemon, pm) = three_members().await?;
    freeze_and_fail_over(&t, &primary, daemon, pm, true, hold).await
}

async fn freeze_and_fail_over(
    t: &TestCluster,
    primary: &str,
    daemon: i32,
    pm: i32,
    freeze_postgres: bool,
    hold: Duration,
) -> anyhow::Result<FailoverRun> {
    let log_path = t.spec().state_dir(primary).join("pgvigil.log");
    let writer = Writer::start(t).await?;
    warm_up().await;
    let (log_before, cpu_before) = (std::fs::metadata(&log_path)?.len(), cpu_ticks(daemon));
    // The tree as it is now: the writer's backends included, or they would go on committing.
    let frozen: Vec<i32> = if freeze_postgres {
        vigil_pg::proctree::descendants(pm).into_iter().chain([pm]).collect()
    } else {
        vec![daemon]
    };
    let since = Instant::now();
    for p in &frozen {
        signal(*p, Signal::SIGSTOP);
    }
    let failed_over = async {
        t.wait_for("a failover", Duration::from_secs(40), |v| new_primary_writable(v, primary)).await?;
        // Whoever enforced it, the old server is gone once another member is primary.
        anyhow::ensure!(!alive(pm), "the old primary's PostgreSQL still runs after the failover");
        anyhow::Ok(())
    }
    .await;
    while since.elapsed() < hold {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (log_bytes, cpu_ticks) =
        (std::fs::metadata(&log_path)?.len().saturating_sub(log_before), cpu_ticks(daemon).saturating_sub(cpu_before));
    for p in &frozen {
        signal(*p, Signal::SIGCONT);
    }
    failed_over?;
    rejoined_as_standby(t, primary).await?;
    let acks = writer.stop_timed().await?;
    check_no_overlap(&acks, primary)?;
    let new = t.primary().await?;
    Ok(FailoverRun {
        first_write: first_write_elsewhere(&acks, primary, since)?,
        acked: acks.len(),
        missing: missing_on(t, &new, &acks).await?,
        log_bytes,
        cpu_ticks,
    })
}

/// What SIGTERM on the primary's daemon cost.
#[derive(Debug)]
pub struct StopRun {
    /// The longest time without an acknowledged write after the signal.
    pub gap: Duration,
    pub acked: usize,
    pub missing: usize,
}

/// SIGTERM on the primary's daemon (`stop.mode = switchover`) under a writer: a planned
/// switchover, not a failover, and the member's PostgreSQL is stopped.
pub async fn sigterm_primary() -> anyhow::Result<StopRun> {
    let mut t = TestCluster::prepare(3, 0, |spec| spec.stop_mode = "switchover".into())?;
    t.cluster.start_all()?;
    t.wait_for("a settled cluster", Duration::from_secs(60), settled).await?;
    let primary = t.primary().await?;
    let writer = Writer::start(&t).await?;
    warm_up().await;
    let stopped = Instant::now();
    t.cluster.signal(&primary, Signal::SIGTERM)?;
    let v = t.wait_for("a new primary", Duration::from_secs(30), |v| new_primary_writable(v, &primary)).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while t.cluster.is_running(&primary) {
        anyhow::ensure!(Instant::now() < deadline, "the daemon did not exit after its switchover");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let new = v.state.primary.clone().unwrap_or_default();
    let after = Instant::now() + Duration::from_millis(500);
    wait_until(Duration::from_secs(10), || Instant::now() >= after).await;
    let acks = writer.stop_timed().await?;
    let last = v.state.history.iter().rev().find(|e| matches!(e.kind, EventKind::Failover | EventKind::Switchover));
    anyhow::ensure!(last.map(|e| e.kind) == Some(EventKind::Switchover), "a failover, not a switchover: {last:?}");
    anyhow::ensure!(t.postmaster_pid(&primary).is_none(), "the stopped member's PostgreSQL still runs");
    let log = std::fs::read_to_string(t.spec().state_dir(&primary).join("pgvigil.log"))?;
    check_order(&log, &["shutting down", "switchover: stopped", "switched over before stopping", " stopped member="])?;
    Ok(StopRun { gap: longest_gap(&acks, stopped), acked: acks.len(), missing: missing_on(&t, &new, &acks).await? })
}

/// Each of `steps` appears in `log`, in this order (the first line with each after the previous).
pub fn check_order(log: &str, steps: &[&str]) -> anyhow::Result<()> {
    let mut from = 0;
    for step in steps {
        let at = log[from..]
            .find(step)
            .ok_or_else(|| anyhow::anyhow!("{step:?} missing or out of order in:\n{}", &log[from..]))?;
        from += at + step.len();
    }
    Ok(())
}

async fn wait_until(within: Duration, ready: impl Fn() -> bool) {
    let end = Instant::now() + within;
    while !ready() && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What restarting a member's daemon (kill -9, start again) cost its PostgreSQL.
#[derive(Debug)]
pub struct RestartRun {
    /// The same postmaster before and after.
    pub same_postmaster: bool,
    /// How long the member's PostgreSQL refused a query (`SELECT 1` every 20 ms) across the
    /// restart: its downtime.
    pub refused: Duration,
    /// A standby: how long its WAL receiver was seen not streaming across the restart.
    pub not_streaming: Duration,
    /// From the kill to the daemon reporting again.
    pub back_after: Duration,
}

/// `kill -9` of `role`'s daemon ("primary" or "standby") and an immediate restart: the keeper
/// holds PostgreSQL meanwhile and the new daemon adopts it; no failover.
pub async fn restart_daemon(role: &str) -> anyhow::Result<RestartRun> {
    let (mut t, primary, _, _) = three_members().await?;
    let epoch = t.view().await?.state.epoch;
    let member = if role == "primary" { primary.clone() } else { t.other_pg_members(&primary).remove(0) };
    let pm = t.postmaster_pid(&member).ok_or_else(|| anyhow::anyhow!("no postmaster"))?;
    let client = t.client(&member).await?;
    let killed = Instant::now();
    t.cluster.kill_daemon(&member);
    t.cluster.start(&member)?;
    let (mut refused, mut not_streaming) = (Duration::ZERO, Duration::ZERO);
    let mut back_after = None;
    // On a standby the probe also reads its WAL receiver's state.
    let probe = if member == primary {
        "SELECT 'streaming'"
    } else {
        "SELECT coalesce((SELECT status FROM pg_stat_wal_receiver), 'none')"
    };
    // Probe PostgreSQL until the new daemon reports, and a second more.
    while back_after.is_none_or(|b: Duration| killed.elapsed() < b + Duration::from_secs(1)) {
        anyhow::ensure!(killed.elapsed() < Duration::from_secs(60), "the restarted daemon never reported");
        let tick = Instant::now();
        match tokio::time::timeout(Duration::from_millis(500), client.query_one(probe, &[])).await {
            Ok(Ok(row)) if row.try_get::<_, String>(0).is_ok_and(|s| s == "streaming") => {}
            Ok(Ok(_)) => not_streaming += tick.elapsed(),
            _ => refused += tick.elapsed(),
        }
        // The new daemon's own health check answers once it has observed its server.
        if back_after.is_none() && t.get(&member, "/health").await.is_ok_and(|r| r.status == 200) {
            back_after = Some(killed.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    t.assert_no_failover(&primary, epoch, Duration::from_secs(3)).await?;
    let log = std::fs::read_to_string(t.spec().state_dir(&member).join("pgvigil.log"))?;
    anyhow::ensure!(log.contains("adopted the running PostgreSQL"), "the restarted daemon did not adopt its server");
    Ok(RestartRun {
        same_postmaster: t.postmaster_pid(&member) == Some(pm),
        refused,
        not_streaming,
        back_after: back_after.unwrap_or_default(),
    })
}
