//! One server: initdb, start, observe, roles, stop, fencing, leftovers, moving a data dir aside.

mod common;

use std::time::{Duration, Instant};

use common::{exec, TestDir, REPLICATION_PASSWORD, SUPERUSER_PASSWORD};
use vigil_pg::{DataDirState, PgError, StopMode};

async fn show(pg: &vigil_pg::Postgres, name: &str) -> String {
    pg.connect().await.expect("connect").query_one(&format!("SHOW {name}"), &[]).await.expect("SHOW").get(0)
}

/// Log in over TCP with a password (scram), as a client on another host would.
async fn tcp_login(pg: &vigil_pg::Postgres, user: &str, password: &str) -> Result<(), tokio_postgres::Error> {
    let mut config = tokio_postgres::Config::new();
    config
        .host(&pg.settings().listen_address)
        .port(pg.settings().port)
        .user(user)
        .password(password)
        .dbname("postgres");
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    client.simple_query("SELECT 1").await.map(drop)
}

#[tokio::test]
async fn initdb_start_observe_roles_stop() {
    let dir = TestDir::new();
    let mut pg = dir.postgres("solo");
    assert_eq!(pg.data_dir_state(), DataDirState::Empty);

    let t = Instant::now();
    pg.initdb().await.expect("initdb");
    eprintln!("TIMING initdb: {:?}", t.elapsed());
    assert_eq!(pg.data_dir_state(), DataDirState::Primary);
    let again = pg.initdb().await.expect_err("initdb on a non-empty dir");
    assert!(matches!(again.downcast_ref::<PgError>(), Some(PgError::DataDirNotEmpty(_))), "{again:#}");

    assert_eq!(pg.observe().await, vigil_pg::Observation::default(), "not started yet");
    let t = Instant::now();
    pg.start().await.expect("start");
    eprintln!("TIMING start (after initdb): {:?}", t.elapsed());
    assert!(pg.is_running_child());
    // start on a running child only waits for it.
    pg.start().await.expect("start again");

    let obs = pg.observe().await;
    assert!(obs.running, "{obs:?}");
    assert!(!obs.in_recovery, "{obs:?}");
    assert_eq!(obs.timeline, 1, "{obs:?}");
    assert!(obs.current_lsn > 0, "{obs:?}");
    assert_eq!(obs.received_lsn, obs.current_lsn);
    assert_eq!(obs.replay_lsn, obs.current_lsn);
    assert!(!obs.streaming);
    assert_eq!(obs.upstream, None);

    // One connection for every check, not a fork and an authentication per check: the same
    // backend answers ten more observations.
    let (socket_dir, port) = (pg.settings().socket_dir.clone(), pg.settings().port);
    let observers = || async {
        let (client, connection) = tokio_postgres::Config::new()
            .host_path(&socket_dir)
            .port(port)
            .user("postgres")
            .dbname("postgres")
            .application_name("observer-check")
            .connect(tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(connection);
        let rows = client
            .query("SELECT pid FROM pg_stat_activity WHERE application_name = 'pgvigil'", &[])
            .await
            .expect("pg_stat_activity");
        rows.iter().map(|r| r.get::<_, i32>(0)).collect::<Vec<i32>>()
    };
    let before = observers().await;
    assert_eq!(before.len(), 1, "{before:?}");
    for _ in 0..10 {
        assert!(pg.observe().await.running);
    }
    assert_eq!(observers().await, before, "the same connection");

    // Our configuration is in effect.
    assert_eq!(show(&pg, "data_checksums").await, "on");
    assert_eq!(show(&pg, "wal_log_hints").await, "on");
    assert_eq!(show(&pg, "wal_level").await, "replica");
    assert_eq!(show(&pg, "hot_standby_feedback").await, "on");
    assert_eq!(show(&pg, "wal_keep_size").await, "512MB");
    assert_eq!(show(&pg, "cluster_name").await, "solo");
    assert_eq!(show(&pg, "shared_buffers").await, "16MB", "settings.parameters applied");

    // Roles: idempotent, and both passwords work over TCP with scram.
    pg.setup_roles().await.expect("setup_roles");
    pg.setup_roles().await.expect("setup_roles again");
    let client = pg.connect().await.expect("connect");
    let row = client
        .query_one("SELECT rolcanlogin, rolreplication FROM pg_roles WHERE rolname = 'replicator'", &[])
        .await
        .expect("role row");
    assert!(row.get::<_, bool>(0) && row.get::<_, bool>(1));
    let secret: String = client
        .query_one("SELECT rolpassword FROM pg_authid WHERE rolname = 'replicator'", &[])
        .await
        .expect("password row")
        .get(0);
    assert!(secret.starts_with("SCRAM-SHA-256$"), "stored as a scram verifier");
    tcp_login(&pg, "replicator", REPLICATION_PASSWORD).await.expect("replicator logs in over TCP");
    tcp_login(&pg, "postgres", SUPERUSER_PASSWORD).await.expect("superuser logs in over TCP");
    assert!(tcp_login(&pg, "replicator", "wrong").await.is_err());
    // The passwords never reach the server log.
    let log = std::fs::read_to_string(&pg.settings().log_file).expect("read log");
    assert!(!log.contains("pl \\pw") && !log.contains("pa'ss"), "password in log:\n{log}");

    let t = Instant::now();
    pg.stop(StopMode::Fast).await.expect("stop fast");
    eprintln!("TIMING stop fast: {:?}", t.elapsed());
    assert!(!pg.is_running_child());
    assert!(!pg.observe().await.running);
    pg.stop(StopMode::Fast).await.expect("stop when stopped is a no-op");

    // Restart, then an immediate stop.
    let t = Instant::now();
    pg.start().await.expect("restart");
    eprintln!("TIMING start (restart): {:?}", t.elapsed());
    assert!(pg.observe().await.running);
    pg.stop(StopMode::Immediate).await.expect("stop immediate");
    assert!(!pg.observe().await.running);
    assert_eq!(pg.data_dir_state(), DataDirState::Primary);
}

#[tokio::test]
async fn fence_now_stops_a_running_primary() {
    let dir = TestDir::new();
    let mut pg = common::primary(&dir, "fenced").await;
    exec(&pg, "CREATE TABLE t (x int)").await;
    let fencer = pg.fencer();
    assert!(fencer.pid().is_some());

    let t = Instant::now();
    // From another task, as the lease watchdog would.
    let fenced = tokio::spawn(async move { fencer.fence_now() }).await.expect("join");
    assert!(fenced, "a signal was sent");
    wait_for!("postgres to stop accepting connections", Duration::from_secs(5), {
        (!pg.observe().await.running).then_some(())
    });
    eprintln!("TIMING fence_now -> refuses connections: {:?}", t.elapsed());
    wait_for!("the postmaster to exit", Duration::from_secs(5), (!pg.is_running_child()).then_some(()));
    assert!(!pg.fencer().fence_now(), "nothing left to fence");
    assert_eq!(pg.fencer().pid(), None);

    // Crash recovery on the next start: the table is still there.
    pg.start().await.expect("start after fence");
    exec(&pg, "INSERT INTO t VALUES (1)").await;
}

#[tokio::test]
async fn fence_during_start_wins() {
    let dir = TestDir::new();
    let mut pg = dir.postgres("racing");
    pg.initdb().await.expect("initdb");
    let fencer = pg.fencer();
    // Fence only while start runs and the new pid is not yet published (the postmaster is being
    // forked on the spawner thread): fence_now finds nothing to signal, yet the start must not end
    // with a running server.
    let done = std::sync::atomic::AtomicBool::new(false);
    let (started, fences) = tokio::join!(
        async {
            let r = pg.start().await;
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            r
        },
        async {
            let mut fences = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) && fencer.pid().is_none() {
                assert!(!fencer.fence_now(), "no pid yet, nothing signalled");
                fences += 1;
                tokio::task::yield_now().await;
            }
            fences
        }
    );
    assert!(fences > 0, "fenced during the start");
    let err = started.expect_err("start while being fenced");
    assert!(matches!(err.downcast_ref::<PgError>(), Some(PgError::StartFailed { .. })), "{err:#}");
    assert!(!pg.is_running_child());
    assert!(!pg.observe().await.running);
}

#[tokio::test]
async fn start_stops_a_leftover_postmaster() {
    let dir = TestDir::new();
    // A postmaster from an "earlier run": started by another handle that we leave alone.
    let earlier = common::primary(&dir, "leftover").await;
    let earlier_pid = earlier.fencer().pid().expect("running");

    let mut pg = dir.postgres("leftover");
    // Same settings (same port): only possible if the earlier postmaster was stopped first.
    let mut settings = pg.settings().clone();
    settings.port = earlier.settings().port;
    pg = vigil_pg::Postgres::new(settings);
    pg.start().await.expect("start over a leftover postmaster");
    let pid = pg.fencer().pid().expect("running");
    assert_ne!(pid, earlier_pid);
    assert!(pg.observe().await.running);
    let log = std::fs::read_to_string(&pg.settings().log_file).expect("log");
    assert!(log.contains("received fast shutdown request"), "leftover got SIGINT first:\n{log}");
    drop(earlier); // reaps the old child; must not touch the new postmaster
    assert!(pg.observe().await.running);
    assert!(pg.is_running_child());
}

#[tokio::test]
async fn move_aside_renames_and_keeps_contents() {
    let dir = TestDir::new();
    let mut pg = common::primary(&dir, "aside").await;
    exec(&pg, "CREATE TABLE kept (x int)").await;

    let refused = pg.move_aside().expect_err("refuses while running");
    assert!(matches!(refused.downcast_ref::<PgError>(), Some(PgError::Running(_))), "{refused:#}");
    pg.stop(StopMode::Fast).await.expect("stop");

    let data_dir = pg.settings().data_dir.clone();
    let moved = pg.move_aside().expect("move_aside");
    assert!(!data_dir.exists());
    assert_eq!(pg.data_dir_state(), DataDirState::Empty);
    let name = moved.file_name().expect("name").to_string_lossy().into_owned();
    let stamp = name.strip_prefix("data.old-").expect("named <data_dir>.old-<stamp>");
    assert_eq!(stamp.len(), "YYYYmmddTHHMMSS".len(), "{name}");
    assert_eq!(stamp.as_bytes()[8], b'T', "{name}");
    assert_eq!(moved.parent(), data_dir.parent());
    assert!(moved.join("PG_VERSION").exists());
    assert!(moved.join("global/pg_control").exists());

    // A second move in the same second gets a distinct name.
    pg.initdb().await.expect("initdb again");
    let moved2 = pg.move_aside().expect("move_aside again");
    assert_ne!(moved, moved2);
    assert!(moved.exists() && moved2.exists());
}

#[tokio::test]
async fn the_control_file_tells_a_clean_shutdown_and_where_it_stopped() {
    let dir = TestDir::new();
    let mut pg = dir.postgres("control");
    pg.initdb().await.expect("initdb");
    pg.start().await.expect("start");
    let running = pg.control_data().await.expect("pg_controldata");
    assert_eq!(running.state, "in production");
    assert!(!running.shut_down_cleanly());
    pg.connect()
        .await
        .expect("connect")
        .batch_execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
        .await
        .expect("write");
    pg.checkpoint(Duration::from_secs(10)).await.expect("checkpoint");
    let written = pg.observe().await.current_lsn;
    pg.stop(StopMode::Fast).await.expect("fast stop");
    let stopped = pg.control_data().await.expect("pg_controldata");
    assert!(stopped.shut_down_cleanly(), "{stopped:?}");
    assert_eq!(stopped.timeline, 1);
    assert!(
        stopped.checkpoint_lsn >= written,
        "the shutdown checkpoint comes last: {stopped:?}, wrote up to {written}"
    );
    // An immediate stop leaves it "in production" (crash recovery at the next start).
    pg.start().await.expect("start again");
    pg.stop(StopMode::Immediate).await.expect("immediate stop");
    assert!(!pg.control_data().await.expect("pg_controldata").shut_down_cleanly());
}

/// A replication connection from `127.0.0.1`, as the replication user: the psql output.
async fn replication_connection(pg: &vigil_pg::Postgres) -> std::process::Output {
    let s = pg.settings();
    tokio::process::Command::new(s.bin_dir.join("psql"))
        .arg(format!("host=127.0.0.1 port={} user={} dbname=postgres replication=true", s.port, s.replication_user))
        .args(["-X", "-w", "-At", "-c", "IDENTIFY_SYSTEM"])
        .env("PGPASSWORD", REPLICATION_PASSWORD)
        .output()
        .await
        .expect("run psql")
}

#[tokio::test]
async fn replication_is_refused_from_an_address_that_is_not_a_source() {
    let dir = TestDir::new();
    let mut settings = dir.settings("hba");
    settings.replication_sources = vec!["10.9.8.7".into()];
    let mut pg = vigil_pg::Postgres::new(settings.clone());
    pg.initdb().await.expect("initdb");
    pg.start().await.expect("start");
    pg.setup_roles().await.expect("roles");
    let refused = replication_connection(&pg).await;
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && err.contains("no pg_hba.conf entry for replication connection"), "{err}");
    // pg_hba.conf is written again at each start: listed now, accepted.
    pg.stop(StopMode::Fast).await.expect("stop");
    drop(pg);
    settings.replication_sources = vec!["127.0.0.1".into()];
    let mut pg = vigil_pg::Postgres::new(settings);
    pg.start().await.expect("restart");
    let ok = replication_connection(&pg).await;
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
}
