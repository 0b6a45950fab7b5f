//! Operators' role changes on real three-member clusters: a planned switchover under a running
//! writer (nothing acknowledged lost, the old primary follows without a rewind), a scheduled and a
//! cancelled one, a forced failover to a chosen standby, failback, reinit, and the event hooks.

use std::time::{Duration, Instant};
use vigil_core::EventKind;
use vigil_tests::{healthy, missing_writes, ClusterSpec, TestCluster, View, Writer};

const CONVERGE: Duration = Duration::from_secs(60);

/// Every hook appends `<event> <member> <role> <epoch>` to `<dir>/hooks.log`.
fn with_hooks(spec: &mut ClusterSpec) {
    let log = spec.dir.join("hooks.log");
    let line =
        format!("echo \"$PGVIGIL_EVENT $PGVIGIL_MEMBER $PGVIGIL_ROLE $PGVIGIL_EPOCH\" >> {}; true", log.display());
    for hook in ["on_role_change", "on_failover", "on_switchover", "on_fence"] {
        spec.hooks.push(format!("{hook} = '{line}'"));
    }
}

fn hook_lines(t: &TestCluster) -> Vec<String> {
    std::fs::read_to_string(t.spec().dir.join("hooks.log")).unwrap_or_default().lines().map(str::to_string).collect()
}

async fn wait_hook(t: &TestCluster, line: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !hook_lines(t).iter().any(|l| l == line) {
        anyhow::ensure!(Instant::now() < deadline, "no hook line {line:?} in {:?}", hook_lines(t));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// `primary` is the writable primary of `epoch` and every other PostgreSQL member streams from it.
fn settled(v: &View, primary: &str, epoch: u64) -> bool {
    healthy(v) && v.state.primary.as_deref() == Some(primary) && v.state.epoch == epoch && v.state.switchover.is_none()
}

/// Rows `member` acknowledged in `acked_writes`, as `on` sees them.
async fn rows_via(t: &TestCluster, on: &str, member: &str) -> anyhow::Result<i64> {
    let q = format!("SELECT count(*) FROM acked_writes WHERE member = '{member}'");
    Ok(t.client(on).await?.query_one(&q, &[]).await?.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_under_a_writer_loses_nothing_and_the_old_primary_follows_without_rewind() -> anyhow::Result<()> {
    let mut t = TestCluster::prepare(3, 0, with_hooks)?;
    t.cluster.start_all()?;
    let v = t.wait_for("a healthy cluster", CONVERGE, healthy).await?;
    let old = v.state.primary.clone().expect("primary");
    let candidate = t.other_pg_members(&old).remove(0);
    let via = t.other_pg_members(&old).remove(1);
    let writer = Writer::start(&t).await?;
    t.wait_rows(&old, "acked_writes", 30, Duration::from_secs(10)).await?;

    let started = Instant::now();
    let r = t.post(&via, "/switchover", &format!(r#"{{"candidate": "{candidate}"}}"#)).await?;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.message(), format!("switched over from {old} to {candidate}"));
    assert_eq!((r.json["primary"].as_str(), r.json["epoch"].as_u64()), (Some(candidate.as_str()), Some(2)), "{r:?}");
    eprintln!("switchover answered after {:?}", started.elapsed());

    let v = t.wait_for("the old primary streaming from the new one", CONVERGE, |v| settled(v, &candidate, 2)).await?;
    // Writes through the new primary, then stop the writer.
    let deadline = Instant::now() + Duration::from_secs(20);
    while rows_via(&t, &candidate, &candidate).await? < 20 {
        anyhow::ensure!(Instant::now() < deadline, "no writes through the new primary");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let acked = writer.stop().await?;
    let missing = missing_writes(&t, &candidate, &acked).await?;
    assert!(missing.is_empty(), "{} acknowledged writes lost: {missing:?}", missing.len());
    let on_new = acked.iter().filter(|(_, m)| *m == candidate).count() as i64;
    t.wait_rows(&old, "acked_writes", acked.len() as i64, Duration::from_secs(10)).await?;
    assert!(missing_writes(&t, &old, &acked).await?.is_empty(), "the old primary has every write too");
    assert!(on_new > 0);

    // The history: the request, then the switchover; the old primary was not rewound or re-cloned.
    let kinds: Vec<EventKind> = v.state.history.iter().map(|e| e.kind).collect();
    let n = kinds.len();
    assert_eq!(&kinds[n - 2..], [EventKind::Requested, EventKind::Switchover], "{:?}", v.state.history);
    assert!(!v.state.history.iter().any(|e| matches!(e.kind, EventKind::Rewind | EventKind::Reclone)));
    let log = std::fs::read_to_string(t.spec().state_dir(&old).join("pgvigil.log"))?;
    assert!(log.contains("without a rewind"), "{log}");
    assert!(!log.contains("rejoining: rewinding"), "{log}");
    assert!(t.execute(&old, "INSERT INTO acked_writes VALUES (-1, 'x')").await.is_err(), "{old} is read-only");

    // Hooks: the new primary's switchover and role change, the old primary's role change.
    wait_hook(&t, &format!("switchover {candidate} primary 2")).await?;
    wait_hook(&t, &format!("role_change {candidate} primary 2")).await?;
    wait_hook(&t, &format!("role_change {old} replica 2")).await?;
    assert!(
        !hook_lines(&t).iter().any(|l| l.starts_with("fence") || l.starts_with("failover")),
        "{:?}",
        hook_lines(&t)
    );
    let m = t.get(&candidate, "/metrics").await?.text;
    assert!(m.contains("pgvigil_switchovers_total 1"), "{m}");
    // The duration goes to the switchover gauge, never to the failover one (it is set by the
    // coordinator that proposed the change, if it still coordinates when the new primary reports).
    for member in t.spec().members.iter().map(|m| m.name.clone()) {
        let m = t.get(&member, "/metrics").await?.text;
        assert!(!m.contains("\npgvigil_last_failover_duration_seconds "), "{member}: {m}");
        if let Some(line) = m.lines().find(|l| l.starts_with("pgvigil_last_switchover_duration_seconds ")) {
            let d: f64 = line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(-1.0);
            assert!(d > 0.0 && d < 60.0, "{member}: {line}");
        }
    }
    Ok(())
}

fn at_in(d: Duration) -> String {
    let t = std::time::SystemTime::now() + d;
    humantime::format_rfc3339_millis(t).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_and_cancelled_switchovers_and_failback_to_the_preferred_primary() -> anyhow::Result<()> {
    let mut t = TestCluster::prepare(3, 0, |s| s.replication.push("preferred_primary = \"pg1\"".into()))?;
    t.cluster.start_all()?;
    t.wait_for("pg1 primary", CONVERGE, |v| settled(v, "pg1", 1)).await?;

    // Scheduled: accepted at once (202), pending until its time, then carried out.
    let r = t
        .post("pg3", "/switchover", &format!(r#"{{"candidate": "pg2", "at": "{}"}}"#, at_in(Duration::from_secs(3))))
        .await?;
    assert_eq!(r.status, 202, "{r:?}");
    assert!(r.message().contains("scheduled at"), "{r:?}");
    let c = t.get("pg2", "/cluster").await?.json;
    assert!(c["switchover"].as_str().is_some_and(|s| s.contains("from pg1 to pg2")), "{c}");
    assert_eq!(t.primary().await?, "pg1", "not before its time");
    let r = t.post("pg3", "/switchover", r#"{"candidate": "pg3"}"#).await?;
    assert_eq!(r.status, 409, "one switchover at a time: {r:?}");
    t.wait_for("pg2 primary after the scheduled switchover", CONVERGE, |v| settled(v, "pg2", 2)).await?;

    // Another, an hour from now, cancelled: nothing happens.
    let r = t
        .post("pg1", "/switchover", &format!(r#"{{"candidate": "pg3", "at": "{}"}}"#, at_in(Duration::from_secs(3600))))
        .await?;
    assert_eq!(r.status, 202, "{r:?}");
    let token = t.token();
    let r = t.http("pg3", "DELETE", "/switchover", Some(&token), None).await?;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.message().contains("cancelled by the operator"), "{r:?}");
    let r = t.http("pg3", "DELETE", "/switchover", Some(&token), None).await?;
    assert_eq!(r.status, 404, "nothing left to cancel: {r:?}");

    // Failback: to preferred_primary.
    let r = t.post("pg3", "/failback", "").await?;
    assert_eq!((r.status, r.message()), (200, "switched over from pg2 to pg1".to_string()), "{r:?}");
    let v = t.wait_for("pg1 primary again", CONVERGE, |v| settled(v, "pg1", 3)).await?;
    let r = t.post("pg2", "/failback", "{}").await?;
    assert_eq!((r.status, r.message()), (200, "pg1 is already the primary".to_string()), "{r:?}");
    let kinds: Vec<EventKind> = v.state.history.iter().map(|e| e.kind).collect();
    assert_eq!(kinds.iter().filter(|k| **k == EventKind::Switchover).count(), 2, "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| **k == EventKind::Cancelled).count(), 1, "{kinds:?}");
    assert!(!kinds.iter().any(|k| matches!(k, EventKind::Rewind | EventKind::Reclone | EventKind::Failover)));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_failover_to_a_chosen_standby_then_failback_returns_the_original_primary() -> anyhow::Result<()> {
    let mut t = TestCluster::prepare(3, 0, with_hooks)?;
    t.cluster.start_all()?;
    // As in steady state, the coordinator is off the primary's host: the request is taken at once.
    let v = t.wait_for("a coordinator off the primary", CONVERGE, vigil_tests::settled).await?;
    let old = v.state.primary.clone().expect("primary");
    t.execute(&old, "CREATE TABLE items (id int); INSERT INTO items SELECT generate_series(1, 100)").await?;
    // Automatic failover would pick the first standby by name; the operator wants the last one.
    let mut standbys = t.other_pg_members(&old);
    standbys.sort();
    let chosen = standbys.pop().expect("two standbys");
    for s in t.other_pg_members(&old) {
        t.wait_rows(&s, "items", 100, Duration::from_secs(10)).await?;
    }
    t.kill_host(&old);
    let r = t.post(&chosen, "/failover", &format!(r#"{{"candidate": "{chosen}"}}"#)).await?;
    assert_eq!((r.status, r.message()), (200, format!("failed over from {old} to {chosen}")), "{r:?}");
    let v = t
        .wait_for("the chosen standby primary", CONVERGE, |v| {
            v.state.primary.as_deref() == Some(chosen.as_str())
                && v.reports.get(&chosen).is_some_and(|r| r.pg.running && !r.pg.in_recovery)
        })
        .await?;
    assert_eq!(v.state.epoch, 2);
    let event = v.state.history.iter().rev().find(|e| e.kind == EventKind::Failover).expect("failover event");
    assert!(event.detail.contains("requested by the operator"), "{event:?}");
    wait_hook(&t, &format!("failover {chosen} primary 2")).await?;
    assert_eq!(t.count(&chosen, "items").await?, 100);

    // The original primary comes back (rewound), then failback returns it.
    t.cluster.start(&old)?;
    t.wait_for("everyone streaming from the chosen standby", CONVERGE, |v| settled(v, &chosen, 2)).await?;
    let r = t.post(&chosen, "/failback", "").await?;
    assert_eq!((r.status, r.message()), (200, format!("switched over from {chosen} to {old}")), "{r:?}");
    let v = t.wait_for("the original primary back", CONVERGE, |v| settled(v, &old, 3)).await?;
    let last = v.state.history.iter().rev().find(|e| e.kind == EventKind::Switchover).expect("event");
    assert!(last.detail.contains("failback to the primary before the last change"), "{last:?}");
    t.execute(&old, "INSERT INTO items VALUES (101)").await?;
    for s in t.other_pg_members(&old) {
        t.wait_rows(&s, "items", 101, Duration::from_secs(10)).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reinit_reclones_a_standby_with_its_old_data_moved_aside() -> anyhow::Result<()> {
    let t = TestCluster::start(3, 0).await?;
    let primary = t.primary().await?;
    let standby = t.other_pg_members(&primary).remove(0);
    t.execute(&primary, "CREATE TABLE items (id int); INSERT INTO items SELECT generate_series(1, 10)").await?;
    t.wait_rows(&standby, "items", 10, Duration::from_secs(10)).await?;
    let pid_before = t.postmaster_pid(&standby);

    let r = t.post(&primary, "/reinit", &format!(r#"{{"member": "{standby}"}}"#)).await?;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.message().contains("re-initialised") && r.message().contains("moved to"), "{r:?}");
    let v = t.wait_for("the standby streaming again", CONVERGE, |v| settled(v, &primary, 1)).await?;
    let event = v.state.history.iter().rev().find(|e| e.kind == EventKind::Reclone).expect("reclone event");
    assert_eq!(event.member, standby);
    assert!(event.detail.starts_with("done in") && event.detail.contains("reinit 1 requested"), "{event:?}");
    assert!(v.state.reinit.is_empty());
    assert_ne!(t.postmaster_pid(&standby), pid_before, "a new server on the new data directory");
    let data = t.spec().data_dir(&standby);
    let prefix = format!("{}.old-", data.file_name().unwrap_or_default().to_string_lossy());
    let moved: Vec<_> = std::fs::read_dir(data.parent().expect("parent"))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .collect();
    assert_eq!(moved.len(), 1, "the old data directory is kept");
    t.execute(&primary, "INSERT INTO items VALUES (11)").await?;
    t.wait_rows(&standby, "items", 11, Duration::from_secs(10)).await?;

    // The primary cannot be re-initialised.
    let r = t.post(&standby, "/reinit", &format!(r#"{{"member": "{primary}"}}"#)).await?;
    assert_eq!(r.status, 409, "{r:?}");
    assert!(r.message().contains("only a standby"), "{r:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_that_loses_its_lease_runs_the_fence_hook() -> anyhow::Result<()> {
    use nix::sys::signal::Signal;
    let mut t = TestCluster::prepare(3, 0, with_hooks)?;
    t.cluster.start_all()?;
    let v = t.wait_for("a healthy cluster", CONVERGE, healthy).await?;
    let primary = v.state.primary.clone().expect("primary");
    let others = t.other_pg_members(&primary);
    for o in &others {
        t.cluster.signal(o, Signal::SIGSTOP)?;
    }
    let fenced = wait_hook(&t, &format!("fence {primary} fenced 1")).await;
    for o in &others {
        t.cluster.signal(o, Signal::SIGCONT)?;
    }
    fenced?;
    Ok(())
}
