//! The postmaster's life is tied to the daemon's: if the daemon dies, even by SIGKILL, the kernel
//! sends the postmaster SIGQUIT (PR_SET_PDEATHSIG) and it shuts down immediately. And it is tied to
//! the process, not to the thread that happened to call `start`.
//!
//! The daemon is played by this same test binary, re-run with `HELPER_ENV` set so that only
//! `helper_daemon` runs in it: it starts a postmaster, prints its pid, and waits to be killed.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{pid_alive, settings_in, TestDir};
use tokio::io::AsyncBufReadExt as _;
use vigil_pg::Postgres;

const HELPER_ENV: &str = "VIGIL_PG_TEST_PDEATHSIG_HELPER";

/// Not a test on its own: does nothing unless run by `postmaster_dies_with_the_daemon`.
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
        pg.start().await.expect("helper: start");
        println!("\nPOSTMASTER_PID={}", pg.fencer().pid().expect("running"));
        std::future::pending::<()>().await;
    });
}

#[tokio::test]
async fn postmaster_dies_with_the_daemon() {
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
            // libtest may print "test helper_daemon ... " on the same line.
            if let Some((_, pid)) = line.split_once("POSTMASTER_PID=") {
                return pid.trim().parse().expect("pid");
            }
        }
        panic!("helper daemon exited without starting postgres");
    })
    .await
    .expect("helper daemon started postgres within 60s");

    let daemon_pid = daemon.id().expect("helper pid") as i32;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("postmaster status");
    let ppid: i32 =
        status.lines().find_map(|l| l.strip_prefix("PPid:")).and_then(|p| p.trim().parse().ok()).expect("PPid");
    assert_eq!(ppid, daemon_pid, "postmaster is the daemon's direct child");
    assert!(pg.observe().await.running, "postmaster accepts connections");

    let t = Instant::now();
    daemon.start_kill().expect("SIGKILL the daemon"); // tokio's kill is SIGKILL
    daemon.wait().await.expect("reap daemon");
    wait_for!("the orphaned postmaster to exit", Duration::from_secs(10), (!pid_alive(pid)).then_some(()));
    eprintln!("TIMING daemon SIGKILL -> postmaster gone: {:?}", t.elapsed());
    assert!(!pg.observe().await.running);
    let log = std::fs::read_to_string(&pg.settings().log_file).expect("log");
    assert!(log.contains("received immediate shutdown request"), "SIGQUIT, not something else:\n{log}");
}

#[tokio::test]
async fn postmaster_outlives_the_thread_that_started_it() {
    let dir = TestDir::new();
    let mut pg = dir.postgres("threaded");
    pg.initdb().await.expect("initdb");
    // start() on a short-lived thread with its own runtime, as a spawn_blocking task might.
    let mut pg = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(pg.start()).expect("start");
        pg
    })
    .join()
    .expect("join");
    let pid = pg.fencer().pid().expect("running") as i32;
    // That thread is gone. Had it forked the postmaster, the kernel would now send the parent-death
    // signal (it follows the forking *thread*). Proving something does not happen takes a window:
    // the signal would arrive within milliseconds, so watch for one second.
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        assert!(pid_alive(pid), "postmaster died after the starting thread exited");
        assert!(pg.observe().await.running);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(pg.is_running_child());
}
