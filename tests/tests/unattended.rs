//! The daemon's own failures: stalled, killed, restarted, stopped; and a hung PostgreSQL. Real
//! PostgreSQL 15 and real daemons on loopback; the scenarios (`vigil_tests::unattended`) check the
//! invariants from the writer's acknowledgements and the processes themselves, and return figures
//! that are bounded here (`bench unattended` runs them many times).

use std::time::{Duration, Instant};

use vigil_tests::unattended::{self, check_no_overlap, first_write_elsewhere, rejoined_as_standby, three_members};
use vigil_tests::{new_primary_writable, Writer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_a_standby_daemon_leaves_postgres_running() -> anyhow::Result<()> {
    let r = unattended::restart_daemon("standby").await?;
    eprintln!("FIGURE standby daemon restart: {r:?}");
    assert!(r.same_postmaster, "the standby's PostgreSQL was restarted");
    assert_eq!(r.refused, Duration::ZERO, "the standby's PostgreSQL refused queries");
    assert_eq!(r.not_streaming, Duration::ZERO, "the standby stopped streaming");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_the_primary_daemon_within_its_lease_leaves_postgres_running() -> anyhow::Result<()> {
    let r = unattended::restart_daemon("primary").await?;
    eprintln!("FIGURE primary daemon restart: {r:?}");
    assert!(r.same_postmaster, "the primary's PostgreSQL was restarted");
    assert_eq!(r.refused, Duration::ZERO, "the primary's PostgreSQL refused queries");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_daemon_gone_past_its_lease_is_fenced_by_its_keeper_then_rejoins() -> anyhow::Result<()> {
    let (mut t, primary, _, pm) = three_members().await?;
    let writer = Writer::start(&t).await?;
    let killed_at = Instant::now();
    t.cluster.kill_daemon(&primary);
    t.wait_for("a failover", Duration::from_secs(30), |v| new_primary_writable(v, &primary)).await?;
    assert!(!vigil_pg::proctree::alive(pm), "the keeper killed the primary's PostgreSQL when its lease ran out");
    let acks = writer.stop_timed().await?;
    check_no_overlap(&acks, &primary)?;
    eprintln!("FIGURE daemon gone -> first write elsewhere: {:?}", first_write_elsewhere(&acks, &primary, killed_at)?);
    t.cluster.start(&primary)?;
    rejoined_as_standby(&t, &primary).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_primary_daemon_is_fenced_by_its_keeper() -> anyhow::Result<()> {
    let r = unattended::stalled_daemon(Duration::from_secs(12)).await?;
    eprintln!("FIGURE daemon stalled 12 s: {r:?}");
    // A promotion comes after lease_timeout + lease_margin (2.5 s) plus detection and promotion.
    assert!(r.first_write < Duration::from_secs(10), "{r:?}");
    Ok(())
}

/// The lease timings are the cluster's: a primary whose file says 8 s says so in its log, and when
/// its daemon stalls its keeper still kills PostgreSQL by the agreed 2 s, before the promotion (the
/// scenario checks that the old server is gone when another member is primary, and that no write
/// was acknowledged by both).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_file_differs_from_the_agreed_lease_says_so_and_is_fenced_by_the_agreed_one(
) -> anyhow::Result<()> {
    let (r, log) = unattended::stalled_daemon_whose_file_has_a_longer_lease(Duration::from_secs(10)).await?;
    eprintln!("FIGURE daemon with an 8 s lease in its file stalled: {r:?}");
    let said = log.lines().filter(|l| l.contains("differs from the cluster's lease timings")).collect::<Vec<_>>();
    assert_eq!(said.len(), 1, "said once: {said:?}");
    assert!(said[0].contains("timing.lease_timeout (this file 8s, the cluster's 2s)"), "{said:?}");
    assert!(r.first_write < Duration::from_secs(8), "promoted by the agreed lease: {r:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_postgres_is_failed_over_and_its_daemon_stays_quiet() -> anyhow::Result<()> {
    let r = unattended::frozen_postgres(Duration::from_secs(30)).await?;
    eprintln!("FIGURE PostgreSQL frozen 30 s: {r:?}");
    assert!(r.first_write < Duration::from_secs(15), "failover of a hung server: {r:?}");
    assert!(r.log_bytes < 256 * 1024, "the old primary's daemon logged {} bytes", r.log_bytes);
    // 30 s are 3000 ticks of one busy core; a quiet daemon uses a few percent (debug build).
    assert!(r.cpu_ticks < 600, "the old primary's daemon used {} ticks of CPU in 30 s", r.cpu_ticks);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_primary_daemon_switches_over() -> anyhow::Result<()> {
    let r = unattended::sigterm_primary().await?;
    eprintln!("FIGURE SIGTERM on the primary: {r:?}");
    assert_eq!(r.missing, 0, "acknowledged writes lost: {r:?}");
    assert!(r.gap < Duration::from_millis(1500), "write gap {:?}", r.gap);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_coordinator_hands_its_role_over_in_order() -> anyhow::Result<()> {
    let (mut t, primary, _, _) = three_members().await?;
    let coordinator = t.view().await?.coordinator;
    assert_ne!(coordinator, primary, "the coordinator sits off the primary's host");
    let stopped = Instant::now();
    t.cluster.signal(&coordinator, nix::sys::signal::Signal::SIGTERM)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while t.cluster.is_running(&coordinator) {
        anyhow::ensure!(Instant::now() < deadline, "the daemon did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let exited = stopped.elapsed();
    // Agent first (its PostgreSQL stops), then the Raft hand-off, then the servers.
    let log = std::fs::read_to_string(t.spec().state_dir(&coordinator).join("pgvigil.log"))?;
    unattended::check_order(
        &log,
        &["shutting down", "postmaster stopped", "handed the coordinator role over", " stopped member="],
    )?;
    let v = t.wait_for("another coordinator", Duration::from_secs(10), |v| v.coordinator != coordinator).await?;
    eprintln!("FIGURE coordinator stop: exited after {exited:?}, coordinator now {}", v.coordinator);
    assert_eq!(v.state.primary.as_deref(), Some(primary.as_str()), "no failover");
    Ok(())
}
