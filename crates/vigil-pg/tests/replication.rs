//! Two and three servers: cloning a standby, streaming, promotion, following a new primary.

mod common;

use std::time::{Duration, Instant};

use common::{exec, has_rows, upstream, TestDir, SOON};
use vigil_pg::{DataDirState, Observation, PgError, Postgres, StopMode};

/// Wait until `pg` streams from `from` and return that observation.
async fn wait_streaming_from(pg: &mut Postgres, from: &Postgres) -> Observation {
    let want = Some((from.settings().listen_address.clone(), from.settings().port));
    wait_for!(format!("{} to stream from {}", pg.settings().member, from.settings().member), SOON, {
        let obs = pg.observe().await;
        (obs.running && obs.in_recovery && obs.streaming && obs.upstream == want).then_some(obs)
    })
}

/// Wait until every standby has replayed everything `primary` has written so far.
async fn wait_caught_up(primary: &mut Postgres, standbys: &mut [&mut Postgres]) -> u64 {
    let target = primary.observe().await.current_lsn;
    assert!(target > 0);
    for s in standbys.iter_mut() {
        wait_for!(format!("{} to replay up to {target:X}", s.settings().member), SOON, {
            (s.observe().await.replay_lsn >= target).then_some(())
        });
    }
    target
}

#[tokio::test]
async fn standby_clones_streams_and_sees_rows() {
    let dir = TestDir::new();
    let a = common::primary(&dir, "a").await;
    let slot = common::slot("b");
    a.ensure_slots(std::slice::from_ref(&slot)).await.expect("ensure_slots");
    a.ensure_slots(std::slice::from_ref(&slot)).await.expect("ensure_slots is idempotent");
    a.drop_slot("pgvigil_nonexistent").await.expect("dropping a missing slot is a no-op");
    exec(&a, "CREATE TABLE t (id int primary key, v text); INSERT INTO t VALUES (1, 'before clone')").await;

    let mut b = dir.postgres("b");
    let t = Instant::now();
    b.clone_from(&upstream(&a), &slot).await.expect("clone_from");
    eprintln!("TIMING clone_from (pg_basebackup + config): {:?}", t.elapsed());
    assert_eq!(b.data_dir_state(), DataDirState::Standby);
    assert!(!common::sibling_clone_dir(&b).exists(), "temp clone dir renamed away");
    let auto = std::fs::read_to_string(b.settings().data_dir.join("postgresql.auto.conf")).expect("auto.conf");
    assert!(auto.contains(&format!("port={}", a.settings().port)), "{auto}");
    assert!(auto.contains("application_name=b "), "{auto}");
    assert!(auto.contains(&format!("primary_slot_name = '{slot}'")), "{auto}");
    let again = b.clone_from(&upstream(&a), &slot).await.expect_err("clone into a non-empty dir");
    assert!(matches!(again.downcast_ref::<PgError>(), Some(PgError::DataDirNotEmpty(_))), "{again:#}");

    let t = Instant::now();
    b.start().await.expect("start standby");
    eprintln!("TIMING start standby: {:?}", t.elapsed());
    let obs = wait_streaming_from(&mut b, &a).await;
    eprintln!("TIMING clone start -> streaming: {:?}", t.elapsed());
    assert_eq!(obs.timeline, 1, "{obs:?}");
    assert_eq!(obs.current_lsn, 0);
    assert!(obs.received_lsn > 0 && obs.replay_lsn > 0, "{obs:?}");
    assert!(has_rows(&b, "SELECT 1 FROM t WHERE id = 1").await.is_some(), "cloned data");
    assert!(
        has_rows(&a, &format!("SELECT 1 FROM pg_replication_slots WHERE slot_name = '{slot}' AND active"))
            .await
            .is_some(),
        "b streams through its slot"
    );
    assert!(
        has_rows(&a, "SELECT 1 FROM pg_stat_replication WHERE application_name = 'b' AND state = 'streaming'")
            .await
            .is_some(),
        "application_name is the member name"
    );

    exec(&a, "INSERT INTO t VALUES (2, 'streamed')").await;
    let t = Instant::now();
    wait_for!("row 2 on the standby", SOON, has_rows(&b, "SELECT 1 FROM t WHERE id = 2").await);
    eprintln!("TIMING row visible on standby: {:?}", t.elapsed());

    // A slot in use cannot be dropped; stop the standby and it can.
    assert!(a.drop_slot(&slot).await.is_err(), "active slot");
    b.stop(StopMode::Fast).await.expect("stop standby");
    wait_for!("slot to become inactive", SOON, {
        has_rows(&a, &format!("SELECT 1 FROM pg_replication_slots WHERE slot_name = '{slot}' AND NOT active")).await
    });
    a.drop_slot(&slot).await.expect("drop inactive slot");
    assert!(has_rows(&a, &format!("SELECT 1 FROM pg_replication_slots WHERE slot_name = '{slot}'")).await.is_none());
}

#[tokio::test]
async fn promote_a_standby() {
    let dir = TestDir::new();
    let mut a = common::primary(&dir, "a").await;
    exec(&a, "CREATE TABLE t (id int)").await;
    let mut b = common::standby(&dir, "b", &a).await;
    wait_streaming_from(&mut b, &a).await;
    wait_caught_up(&mut a, &mut [&mut b]).await;
    assert_eq!(b.data_dir_state(), DataDirState::Standby);

    let t = Instant::now();
    b.promote(Duration::from_secs(30)).await.expect("promote");
    eprintln!("TIMING promote (pg_promote + write check): {:?}", t.elapsed());
    let obs = b.observe().await;
    assert!(obs.running && !obs.in_recovery, "{obs:?}");
    assert_eq!(obs.timeline, 2, "{obs:?}");
    assert!(obs.current_lsn > 0 && obs.upstream.is_none(), "{obs:?}");
    assert_eq!(b.data_dir_state(), DataDirState::Primary, "standby.signal removed by promotion");
    exec(&b, "INSERT INTO t VALUES (1)").await;

    b.promote(Duration::from_secs(5)).await.expect("promote on a primary is a no-op");
    let err = b.follow(&upstream(&a), "x").await.expect_err("follow on a primary");
    assert!(matches!(err.downcast_ref::<PgError>(), Some(PgError::NotStandby)), "{err:#}");
}

#[tokio::test]
async fn standby_follows_a_new_primary() {
    let dir = TestDir::new();
    let mut a = common::primary(&dir, "a").await;
    exec(&a, "CREATE TABLE t (id int, v text)").await;
    let mut b = common::standby(&dir, "b", &a).await;
    let mut c = common::standby(&dir, "c", &a).await;
    wait_streaming_from(&mut b, &a).await;
    wait_streaming_from(&mut c, &a).await;
    exec(&a, "INSERT INTO t VALUES (1, 'on a')").await;
    wait_caught_up(&mut a, &mut [&mut b, &mut c]).await;

    // The old primary goes away first: a fast shutdown sends its last WAL (the shutdown checkpoint)
    // to both standbys, so c is never ahead of b's switch point. (A live a would keep writing WAL
    // that only c receives, and then c could not follow b without a rewind.)
    a.stop(StopMode::Fast).await.expect("stop a");
    b.promote(Duration::from_secs(30)).await.expect("promote b");
    assert_eq!(b.observe().await.timeline, 2);
    let c_slot = common::slot("c");
    b.ensure_slots(std::slice::from_ref(&c_slot)).await.expect("c's slot on b");

    let t = Instant::now();
    c.follow(&upstream(&b), &c_slot).await.expect("follow b");
    let obs = wait_for!("c to stream from b on timeline 2", SOON, {
        let obs = c.observe().await;
        let from_b = obs.upstream == Some(("127.0.0.1".to_string(), b.settings().port));
        (obs.streaming && from_b && obs.timeline == 2).then_some(obs)
    });
    eprintln!("TIMING follow -> streaming from the new primary: {:?}", t.elapsed());
    assert!(obs.in_recovery && obs.running, "{obs:?}");
    // ALTER SYSTEM on a hot standby wrote postgresql.auto.conf.
    let auto = std::fs::read_to_string(c.settings().data_dir.join("postgresql.auto.conf")).expect("auto.conf");
    assert!(auto.contains(&format!("port={}", b.settings().port)), "{auto}");
    assert!(!auto.contains(&format!("port={}", a.settings().port)), "{auto}");
    // The password lives in the password file, never in primary_conninfo (the server logs that
    // setting when it changes).
    let password = &c.settings().replication_password;
    assert!(!auto.contains(password.as_str()), "{auto}");
    let log = std::fs::read_to_string(&c.settings().log_file).expect("c's log");
    assert!(log.contains("primary_conninfo") && !log.contains(password.as_str()), "password in the log:\n{log}");

    exec(&b, "INSERT INTO t VALUES (2, 'on b after promotion')").await;
    wait_for!("b's row on c", SOON, has_rows(&c, "SELECT 1 FROM t WHERE id = 2").await);
    assert!(
        has_rows(&b, &format!("SELECT 1 FROM pg_replication_slots WHERE slot_name = '{c_slot}' AND active"))
            .await
            .is_some(),
        "c streams through its slot on b"
    );
}

#[tokio::test]
async fn old_primary_becomes_standby_of_promoted_one() {
    let dir = TestDir::new();
    let mut a = common::primary(&dir, "a").await;
    exec(&a, "CREATE TABLE t (id int)").await;
    let mut b = common::standby(&dir, "b", &a).await;
    wait_streaming_from(&mut b, &a).await;
    let err = b.configure_standby(&upstream(&a), &common::slot("b")).expect_err("refused while running");
    assert!(matches!(err.downcast_ref::<PgError>(), Some(PgError::Running(_))), "{err:#}");

    // A clean switchover: the old primary stops fast (its last WAL reaches b), b is promoted, and the
    // old primary, whose WAL ends exactly where b's new timeline begins, follows b without a rewind.
    a.stop(StopMode::Fast).await.expect("stop a");
    b.promote(Duration::from_secs(30)).await.expect("promote b");
    b.ensure_slots(&[common::slot("a")]).await.expect("slot for a on b");
    a.configure_standby(&upstream(&b), &common::slot("a")).expect("configure a as standby of b");
    assert_eq!(a.data_dir_state(), DataDirState::Standby);
    a.start().await.expect("start a as standby");
    let obs = wait_for!("a to stream from b on timeline 2", SOON, {
        let obs = a.observe().await;
        let from_b = obs.upstream.as_ref().map(|u| u.1) == Some(b.settings().port);
        (obs.streaming && obs.timeline == 2 && from_b).then_some(obs)
    });
    assert!(obs.in_recovery);
    exec(&b, "INSERT INTO t VALUES (1)").await;
    wait_for!("b's row on a", SOON, has_rows(&a, "SELECT 1 FROM t WHERE id = 1").await);
}
