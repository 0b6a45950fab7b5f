//! The keeper: the postmaster's parent, which enforces the lease on its own clock. The server
//! outlives the daemon that started it (and is adopted by the next one), and dies at the lease's
//! deadline even when every process of it is stopped.
//!
//! The "daemon" of the adoption test is this same test binary, re-run with `HELPER_ENV` set so that
//! only `helper_daemon` runs in it: it starts a postmaster, prints its pid, and waits to be killed.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{pid_alive, settings_in, TestDir};
use tokio::io::AsyncBufReadExt as _;
use vigil_pg::{PgError, Postgres};

const HELPER_ENV: &str = "VIGIL_PG_TEST_KEEPER_HELPER";

/// Not a test on its own: does nothing unless run by `server_outlives_a_killed_daemon_and_is_adopted`.
#[test]
fn helper_daemon() {
    let Ok(spec) = std::env::var(HELPER_ENV) else {
        return;
    };
    let (base, port) = spec.split_once('|').expect("<base>|<port>");
    let settings = settings_in(std::path::Path::new(base), "orphan", port.parse().expect("port"));
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async move {
        let mut pg = Postgres::new(settings);
        pg.leave_running_on_drop();
        pg.start().await.expect("helper: start");
        println!("\nPOSTMASTER_PID={}", pg.fencer().pid().expect("running"));
        std::future::pending::<()>().await;
    });
}

fn ppid(pid: i32) -> i32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status.lines().find_map(|l| l.strip_prefix("PPid:")).and_then(|p| p.trim().parse().ok()).expect("PPid")
}

#[tokio::test]
async fn server_outlives_a_killed_daemon_and_is_adopted() {
    let dir = TestDir::new();
    let mut pg = dir.postgres("orphan");
    pg.initdb().await.expect("initdb");

    let exe = std::env::current_exe().expect("current exe");
    let mut daemon = tokio::process::Command::new(exe)
        .args(["helper_daemon", "--exact", "--nocapture", "--test-threads=1"])
        .env(HELPER_ENV, format!("{}|{}", dir.path().display(), pg.settings().port))
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn helper daemon");
    let stdout = daemon.stdout.take().expect("stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let pid: i32 = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.expect("read helper stdout") {
            if let Some((_, pid)) = line.split_once("POSTMASTER_PID=") {
                return pid.trim().parse().expect("pid");
            }
        }
        panic!("helper daemon exited without starting postgres");
    })
    .await
    .expect("helper daemon started postgres within 60s");
    let daemon_pid = daemon.id().expect("helper pid") as i32;
    let keeper = ppid(pid);
    assert_ne!(keeper, daemon_pid, "the postmaster's parent is its keeper, not the daemon");
    assert_eq!(ppid(keeper), daemon_pid, "the daemon started the keeper");

    daemon.start_kill().expect("SIGKILL the daemon");
    daemon.wait().await.expect("reap daemon");
    // The server must not follow the daemon: watch for a second (a parent-death signal would
    // arrive within milliseconds).
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        assert!(pid_alive(pid), "the postmaster died with the daemon");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A new daemon adopts it: same postmaster, and it can stop it.
    let status = pg.adopt().await.expect("adopt the running server");
    assert_eq!(status.postmaster, pid);
    assert_eq!(status.keeper, keeper);
    assert_eq!(pg.fencer().pid(), Some(pid as u32));
    assert!(pg.observe().await.running);
    pg.stop(vigil_pg::StopMode::Fast).await.expect("stop");
    wait_for!("the keeper to exit", Duration::from_secs(10), (!pid_alive(keeper)).then_some(()));
    assert!(!pg.settings().keeper.socket.exists(), "the keeper removed its socket");
}

#[tokio::test]
async fn keeper_kills_a_frozen_server_at_the_deadline() {
    let dir = TestDir::new();
    let mut pg = common::primary(&dir, "frozen").await;
    let pm = pg.fencer().pid().expect("running") as i32;
    let keeper = ppid(pm);
    // Freeze the postmaster and every backend, as a hung server or a stuck disk would.
    let tree: Vec<i32> = vigil_pg::proctree::descendants(pm).into_iter().chain([pm]).collect();
    for p in &tree {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*p), nix::sys::signal::Signal::SIGSTOP);
    }
    let deadline = Instant::now() + Duration::from_millis(1500);
    pg.fencer().set_lease(Some((7, deadline))).await.expect("the keeper takes the lease");
    while Instant::now() + Duration::from_millis(100) < deadline {
        assert!(pid_alive(pm), "killed before the deadline");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_for!("the frozen postmaster to die", Duration::from_secs(5), (!pid_alive(pm)).then_some(()));
    let late = Instant::now().saturating_duration_since(deadline);
    eprintln!("TIMING lease deadline -> frozen postmaster gone: {late:?}");
    assert!(late < Duration::from_millis(500), "killed {late:?} after the deadline");
    for p in &tree {
        wait_for!("every process of the server to die", Duration::from_secs(5), (!pid_alive(*p)).then_some(()));
    }
    wait_for!("the keeper to exit", Duration::from_secs(5), (!pid_alive(keeper)).then_some(()));
    wait_for!("the keeper's reason in the log", Duration::from_secs(5), {
        let log = std::fs::read_to_string(&pg.settings().log_file).expect("log");
        log.contains("the lease for epoch 7 ran out").then_some(())
    });
    assert!(!pg.observe().await.running);
    // Crash recovery on the next start (with a lease that does not run out).
    pg.fencer().set_lease(Some((8, Instant::now() + Duration::from_secs(3600)))).await.expect("lease");
    pg.start().await.expect("start after the kill");
}

#[tokio::test]
async fn a_writable_server_without_a_lease_is_killed() {
    let dir = TestDir::new();
    let mut pg = dir.postgres("nolease");
    pg.initdb().await.expect("initdb");
    pg.fencer().set_lease(None).await.expect("no lease");
    let err = pg.start().await.expect_err("a primary without a lease must not run");
    assert!(matches!(err.downcast_ref::<PgError>(), Some(PgError::StartFailed { .. })), "{err:#}");
    wait_for!("the keeper's reason in the log", Duration::from_secs(5), {
        let log = std::fs::read_to_string(&pg.settings().log_file).expect("log");
        log.contains("no lease, and the server is not a standby").then_some(())
    });
}

#[tokio::test]
async fn the_server_dies_with_its_keeper() {
    let dir = TestDir::new();
    let pg = common::primary(&dir, "keeperless").await;
    let pm = pg.fencer().pid().expect("running") as i32;
    let keeper = ppid(pm);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(keeper), nix::sys::signal::Signal::SIGKILL).expect("kill keeper");
    wait_for!("the postmaster to follow its keeper", Duration::from_secs(10), (!pid_alive(pm)).then_some(()));
    let log = std::fs::read_to_string(&pg.settings().log_file).expect("log");
    assert!(log.contains("received immediate shutdown request"), "SIGQUIT by the parent-death signal:\n{log}");
}
