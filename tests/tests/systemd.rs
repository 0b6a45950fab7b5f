//! pgvigil under systemd: the notification protocol as a service manager sees it (a datagram
//! socket with SO_PASSCRED standing in for systemd), and the unit file checked by
//! `systemd-analyze`.

use nix::sys::signal::Signal;
use nix::sys::socket::{recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, UnixAddr, UnixCredentials};
use std::io::{IoSliceMut, Read as _, Write as _};
use std::os::fd::AsRawFd as _;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vigil_tests::{settled, TestCluster};

/// One datagram: when it arrived, the sender's pid (SCM_CREDENTIALS), its lines.
#[derive(Clone, Debug)]
struct Datagram {
    at: Instant,
    pid: i32,
    lines: Vec<String>,
    /// For READY=1: what the member's API answered at that moment.
    api: Option<Result<String, String>>,
}

impl Datagram {
    fn has(&self, line: &str) -> bool {
        self.lines.iter().any(|l| l == line)
    }

    fn status(&self) -> Option<&str> {
        self.lines.iter().find_map(|l| l.strip_prefix("STATUS="))
    }
}

/// A service manager's notification socket on an abstract address, read by a thread.
struct Manager {
    name: String,
    got: Arc<Mutex<Vec<Datagram>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Manager {
    /// Bind `@<name>`; on READY=1, ask `api` (host:port, plain HTTP) at once.
    fn start(api: String) -> anyhow::Result<Manager> {
        use std::os::linux::net::SocketAddrExt as _;
        let name = format!("pgvigil-test-notify-{}-{}", std::process::id(), pgvigil::launch::free_port()?);
        let socket = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes())?)?;
        setsockopt(&socket, sockopt::PassCred, &true)?;
        socket.set_read_timeout(Some(Duration::from_millis(100)))?;
        let (got, stop) = (Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicBool::new(false)));
        let (g, s) = (got.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let mut buf = [0u8; 4096];
                let mut cmsg = nix::cmsg_space!(UnixCredentials);
                let mut iov = [IoSliceMut::new(&mut buf)];
                let Ok(msg) = recvmsg::<UnixAddr>(socket.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::empty())
                else {
                    continue;
                };
                let mut pid = -1;
                if let Ok(cmsgs) = msg.cmsgs() {
                    for c in cmsgs {
                        if let ControlMessageOwned::ScmCredentials(cred) = c {
                            pid = cred.pid();
                        }
                    }
                }
                let len = msg.bytes;
                let text = String::from_utf8_lossy(&buf[..len]).into_owned();
                let lines: Vec<String> = text.lines().map(str::to_string).collect();
                let api = lines.iter().any(|l| l == "READY=1").then(|| ask(&api));
                g.lock().expect("lock").push(Datagram { at: Instant::now(), pid, lines, api });
            }
        });
        Ok(Manager { name, got, stop, thread: Some(thread) })
    }

    fn socket(&self) -> String {
        format!("@{}", self.name)
    }

    fn all(&self) -> Vec<Datagram> {
        self.got.lock().expect("lock").clone()
    }

    async fn wait(&self, what: &str, timeout: Duration, found: impl Fn(&Datagram) -> bool) -> anyhow::Result<Datagram> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(d) = self.all().into_iter().find(|d| found(d)) {
                return Ok(d);
            }
            anyhow::ensure!(Instant::now() < deadline, "no {what} within {timeout:?}; got {:#?}", self.all());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `GET /liveness` over plain HTTP: the status line, or why there was none.
fn ask(api: &str) -> Result<String, String> {
    let addr: std::net::SocketAddr = api.parse().map_err(|e| format!("{api}: {e}"))?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    s.write_all(b"GET /liveness HTTP/1.0\r\nHost: x\r\n\r\n").map_err(|e| e.to_string())?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).map_err(|e| e.to_string())?;
    answer.lines().next().filter(|l| l.starts_with("HTTP/")).map(str::to_string).ok_or(answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_speaks_sd_notify_and_nothing_else_does() -> anyhow::Result<()> {
    let watched = "pg2";
    let watchdog = Duration::from_secs(2);
    let mut t = TestCluster::prepare(2, 1, |_| {})?;
    let api = t.spec().member(watched).map(|m| format!("127.0.0.1:{}", m.api_port)).expect("member");
    let manager = Manager::start(api)?;
    t.cluster.set_env(watched, "NOTIFY_SOCKET", &manager.socket());
    t.cluster.set_env(watched, "WATCHDOG_USEC", &watchdog.as_micros().to_string());
    t.cluster.start_all()?;
    let daemon = t.cluster.daemon_pid(watched).expect("started") as i32;

    // READY=1 from the daemon, and its API answered right then.
    let ready = manager.wait("READY=1", Duration::from_secs(60), |d| d.has("READY=1")).await?;
    assert_eq!(ready.pid, daemon, "{ready:?}");
    let answer = ready.api.clone().expect("asked");
    assert!(answer.as_ref().is_ok_and(|l| l.starts_with("HTTP/1.")), "the API answers at READY: {answer:?}");
    t.wait_for("a settled cluster", Duration::from_secs(60), settled).await?;

    // Make another member the primary, then kill its host: the watched member's STATUS changes.
    if t.primary().await? == watched {
        let r = t.post(watched, "/switchover", r#"{"candidate": "pg1"}"#).await?;
        assert_eq!(r.status, 200, "{r:?}");
        t.wait_for("pg1 primary", Duration::from_secs(60), |v| v.state.primary.as_deref() == Some("pg1") && settled(v))
            .await?;
    }
    let old = t.primary().await?;
    manager
        .wait("a replica's STATUS", Duration::from_secs(20), |d| d.status().is_some_and(|s| s.starts_with("replica")))
        .await?;
    let epoch = t.view().await?.state.epoch;
    t.kill_host(&old);
    // First committed (perhaps "no lease" while it is promoted), then holding the lease, writable.
    let want = format!("primary, epoch {}, lease held, PostgreSQL writable", epoch + 1);
    manager.wait(&want, Duration::from_secs(60), |d| d.status() == Some(want.as_str())).await?;

    // SIGTERM: STOPPING=1, and the daemon exits.
    t.cluster.signal(watched, Signal::SIGTERM)?;
    let stopping = manager.wait("STOPPING=1", Duration::from_secs(30), |d| d.has("STOPPING=1")).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while t.cluster.is_running(watched) {
        anyhow::ensure!(Instant::now() < deadline, "the daemon did not exit");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all = manager.all();
    drop(manager);
    let statuses: Vec<&str> = all.iter().filter_map(Datagram::status).collect();
    eprintln!("{} datagrams; STATUS sequence: {statuses:#?}", all.len());

    // The watchdog was pinged at least every half WATCHDOG_USEC while it ran.
    let pings: Vec<Instant> = all.iter().filter(|d| d.has("WATCHDOG=1") && d.at <= stopping.at).map(|d| d.at).collect();
    assert!(pings.len() > 5, "{all:#?}");
    assert!(pings[0] - ready.at <= watchdog / 2, "first ping {:?} after READY", pings[0] - ready.at);
    let gaps: Vec<Duration> = pings.windows(2).map(|w| w[1] - w[0]).collect();
    let longest = gaps.iter().max().copied().unwrap_or_default();
    assert!(longest <= watchdog / 2, "a watchdog gap of {longest:?}");
    // Only the daemon spoke: PostgreSQL (built with systemd support) never saw NOTIFY_SOCKET.
    let strangers: Vec<&Datagram> = all.iter().filter(|d| d.pid != daemon).collect();
    assert!(strangers.is_empty(), "datagrams from other processes: {strangers:#?}");
    assert_eq!(all.iter().filter(|d| d.has("READY=1")).count(), 1);
    Ok(())
}

/// `systemd/pgvigil.service` with ExecStart pointing at the built binary, in a fresh directory
/// (so `verify` checks a program that exists); None, with the reason printed, without
/// systemd-analyze.
fn unit_copy() -> Option<(tempfile::TempDir, std::path::PathBuf)> {
    if std::process::Command::new("systemd-analyze").arg("--version").output().is_err() {
        eprintln!("skipped: systemd-analyze is not installed (apt-get install systemd)");
        return None;
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root");
    let text = std::fs::read_to_string(root.join("systemd/pgvigil.service")).expect("read the unit");
    let bin = vigil_tests::pgvigil_bin();
    assert!(text.contains("ExecStart=/usr/bin/pgvigil run --config /etc/pgvigil/pgvigil.toml\n"), "{text}");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("pgvigil.service");
    std::fs::write(&path, text.replace("ExecStart=/usr/bin/pgvigil ", &format!("ExecStart={} ", bin.display())))
        .expect("write the unit");
    Some((dir, path))
}

#[test]
fn the_unit_file_verifies_without_a_warning() {
    let Some((_dir, unit)) = unit_copy() else { return };
    let out = std::process::Command::new("systemd-analyze").arg("verify").arg(&unit).output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "systemd-analyze verify: {:?}\n{stderr}", out.status);
    let text = std::fs::read_to_string(&unit).expect("read");
    for line in ["Type=notify", "KillMode=process", "NotifyAccess=main", "ExecReload=/bin/kill -HUP $MAINPID"] {
        assert!(text.lines().any(|l| l == line), "the unit has {line}");
    }
}

#[test]
fn the_unit_file_exposure_is_at_most_2() {
    let Some((_dir, unit)) = unit_copy() else { return };
    let out = std::process::Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit)
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().find(|l| l.contains("Overall exposure level")).unwrap_or_default();
    let level: f64 = line
        .split(':')
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in {stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    assert!(level <= 2.0, "exposure {level} > 2.0:\n{stdout}");
}
