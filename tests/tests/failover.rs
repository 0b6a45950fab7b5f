//! Failover scenarios on real clusters: three PostgreSQL 15 members (or two and a witness), each
//! with its pgvigil daemon, killed with SIGKILL the way a host dies.

use std::time::{Duration, Instant};
use vigil_core::EventKind;
use vigil_tests::{healthy, TestCluster, View};

const CONVERGE: Duration = Duration::from_secs(60);

fn streaming_from_new_primary(v: &View, old: &str) -> bool {
    v.state.epoch >= 2 && v.state.primary.as_deref().is_some_and(|p| p != old) && {
        let p = v.state.primary.clone().unwrap_or_default();
        let timeline = v.reports.get(&p).map(|r| r.pg.timeline).unwrap_or(0);
        v.state.members.iter().filter(|(n, m)| *n != old && **n != p && m.kind == vigil_core::MemberKind::Postgres).all(
            |(n, _)| {
                v.reports
                    .get(n)
                    .is_some_and(|r| r.pg.in_recovery && r.pg.streaming && r.pg.timeline == timeline && timeline >= 2)
            },
        ) && v.reports.get(&p).is_some_and(|r| r.pg.running && !r.pg.in_recovery)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_three_members_and_replicate_rows() -> anyhow::Result<()> {
    let t = TestCluster::start(3, 0).await?;
    let v = t.view().await?;
    let primary = v.state.primary.clone().expect("healthy means a primary");
    assert_eq!(v.state.epoch, 1);
    assert_eq!(v.state.history.iter().filter(|e| e.kind == EventKind::Bootstrap).count(), 1);
    t.execute(&primary, "CREATE TABLE items (id int primary key); INSERT INTO items SELECT generate_series(1, 100)")
        .await?;
    for standby in t.other_pg_members(&primary) {
        t.wait_rows(&standby, "items", 100, Duration::from_secs(10)).await?;
        let writable = t.execute(&standby, "INSERT INTO items VALUES (1000)").await;
        assert!(writable.is_err(), "{standby} must be read-only");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_primary_host_promotes_a_standby_and_the_other_follows() -> anyhow::Result<()> {
    let mut t = TestCluster::start(3, 0).await?;
    let old = t.primary().await?;
    t.execute(&old, "CREATE TABLE items (id int primary key); INSERT INTO items SELECT generate_series(1, 500)")
        .await?;
    for s in t.other_pg_members(&old) {
        t.wait_rows(&s, "items", 500, Duration::from_secs(10)).await?;
    }
    t.kill_host(&old);
    let v = t
        .wait_for("a new primary followed by the other standby", CONVERGE, |v| streaming_from_new_primary(v, &old))
        .await?;
    let new = v.state.primary.clone().expect("checked");
    assert_eq!(v.state.epoch, 2);
    assert!(v.state.history.iter().any(|e| e.kind == EventKind::Failover && e.member == new));
    assert_eq!(t.count(&new, "items").await?, 500, "every replicated row is on the new primary");
    t.execute(&new, "INSERT INTO items VALUES (501)").await?;
    let follower = t.other_pg_members(&old).into_iter().find(|m| *m != new).expect("three members");
    t.wait_rows(&follower, "items", 501, Duration::from_secs(10)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_standby_host_changes_nothing() -> anyhow::Result<()> {
    let mut t = TestCluster::start(3, 0).await?;
    let v = t.view().await?;
    let primary = v.state.primary.clone().expect("primary");
    let standby = t.other_pg_members(&primary).remove(0);
    t.kill_host(&standby);
    // Longer than lease + margin + report timeout: any wrong failover would have happened.
    t.assert_no_failover(&primary, v.state.epoch, Duration::from_secs(6)).await?;
    t.execute(&primary, "CREATE TABLE still_writable (id int)").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_coordinator_elects_another_without_failover() -> anyhow::Result<()> {
    let mut t = TestCluster::start(3, 0).await?;
    // The coordinator moves off the primary's host by itself.
    let v = t
        .wait_for("a coordinator that is not the primary", CONVERGE, |v| {
            !v.coordinator.is_empty() && v.state.primary.as_deref() != Some(v.coordinator.as_str())
        })
        .await?;
    let (primary, coordinator, term) = (v.state.primary.clone().expect("primary"), v.coordinator.clone(), v.term);
    t.kill_host(&coordinator);
    let v = t
        .wait_for("a new coordinator", CONVERGE, |v| {
            !v.coordinator.is_empty() && v.coordinator != coordinator && v.term > term
        })
        .await?;
    assert_eq!(v.state.primary.as_deref(), Some(primary.as_str()));
    t.assert_no_failover(&primary, 1, Duration::from_secs(4)).await?;
    t.execute(&primary, "CREATE TABLE still_writable (id int)").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_postgres_members_and_a_witness_survive_the_primary_host() -> anyhow::Result<()> {
    let mut t = TestCluster::start(2, 1).await?;
    // A voting witness is healthy and ready for generic monitoring (it runs no PostgreSQL).
    for path in ["/health", "/readiness", "/liveness"] {
        t.wait_http("witness1", path, 200, Duration::from_secs(10)).await?;
    }
    t.wait_http("witness1", "/primary", 503, Duration::from_secs(10)).await?;
    let old = t.primary().await?;
    t.execute(&old, "CREATE TABLE items (id int); INSERT INTO items SELECT generate_series(1, 10)").await?;
    let standby = t.other_pg_members(&old).remove(0);
    t.wait_rows(&standby, "items", 10, Duration::from_secs(10)).await?;
    t.kill_host(&old);
    let v = t
        .wait_for("the standby promoted", CONVERGE, |v| {
            v.state.primary.as_deref() == Some(standby.as_str())
                && v.reports.get(&standby).is_some_and(|r| r.pg.running && !r.pg.in_recovery)
        })
        .await?;
    assert_eq!(v.state.epoch, 2);
    t.execute(&standby, "INSERT INTO items VALUES (11)").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_old_primary_rewinds_and_rejoins_and_restarted_daemons_recover_their_state() -> anyhow::Result<()> {
    let mut t = TestCluster::start(3, 0).await?;
    let old = t.primary().await?;
    t.kill_host(&old);
    let v = t.wait_for("failover", CONVERGE, |v| streaming_from_new_primary(v, &old)).await?;
    let new = v.state.primary.clone().expect("primary");
    t.execute(&new, "CREATE TABLE after_failover (id int); INSERT INTO after_failover VALUES (1)").await?;

    // The old primary comes back: it never runs as a primary; it rewinds and streams from the new one.
    t.cluster.start(&old)?;
    let v = t
        .wait_for("the old primary rewound and streaming", CONVERGE, |v| {
            healthy(v)
                && v.state.primary.as_deref() == Some(new.as_str())
                && v.state.history.iter().any(|e| e.kind == EventKind::Rewind && e.member == old)
        })
        .await?;
    let rewind = v.state.history.iter().find(|e| e.kind == EventKind::Rewind).expect("rewind event");
    assert!(rewind.detail.starts_with("done in"), "{rewind:?}");
    assert_eq!(v.state.epoch, 2, "a rejoin is not a failover");
    t.wait_rows(&old, "after_failover", 1, Duration::from_secs(10)).await?;
    assert!(t.execute(&old, "INSERT INTO after_failover VALUES (2)").await.is_err(), "{old} is read-only");
    let history_len = v.state.history.len();

    // Every daemon killed at once, then restarted: the state comes back from disk, not a new bootstrap.
    let names: Vec<String> = t.spec().members.iter().map(|m| m.name.clone()).collect();
    for n in &names {
        t.kill_host(n);
    }
    for n in &names {
        t.cluster.start(n)?;
    }
    let v = t
        .wait_for("the cluster back with its state", CONVERGE, |v| {
            v.state.primary.as_deref() == Some(new.as_str())
                && v.reports.get(&new).is_some_and(|r| r.pg.running && !r.pg.in_recovery)
        })
        .await?;
    assert_eq!(v.state.epoch, 2, "the epoch survived the restart");
    assert!(v.state.history.len() >= history_len, "the history survived the restart");
    assert_eq!(v.state.history.iter().filter(|e| e.kind == EventKind::Bootstrap).count(), 1);
    t.execute(&new, "CREATE TABLE after_restart (id int)").await?;
    t.wait_for("everyone streaming again", CONVERGE, |v| healthy(v) && v.state.epoch == 2).await?;
    assert!(t.execute(&old, "INSERT INTO after_failover VALUES (3)").await.is_err(), "{old} is still read-only");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_crash_on_the_primary_is_restarted_in_place() -> anyhow::Result<()> {
    let t = TestCluster::start(3, 0).await?;
    let primary = t.primary().await?;
    let before = t.postmaster_pid(&primary);
    assert!(before.is_some());
    t.kill_postgres(&primary);
    // The agent notices and starts a new postmaster on the same member.
    let deadline = Instant::now() + CONVERGE;
    while t.postmaster_pid(&primary).is_none_or(|p| Some(p) == before) {
        anyhow::ensure!(Instant::now() < deadline, "no new postmaster on {primary}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // postmaster.pid appears before the server accepts connections (crash recovery runs first).
    while !t.accepts_connections(&primary).await {
        anyhow::ensure!(Instant::now() < deadline, "the new postmaster on {primary} never accepted connections");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    t.wait_for("PostgreSQL back on the same primary", CONVERGE, |v| {
        v.state.primary.as_deref() == Some(primary.as_str()) && v.state.epoch == 1 && healthy(v)
    })
    .await?;
    t.execute(&primary, "CREATE TABLE after_crash (id int)").await?;
    Ok(())
}
