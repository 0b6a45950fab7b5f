//! The keeper: a small process that is the postmaster's parent and enforces the primary's lease when
//! the daemon cannot (stalled, stopped with SIGSTOP, killed, restarting).
//!
//! The daemon starts one keeper per postmaster run (`pgvigil keeper ...`); the keeper forks the
//! postmaster, tells the daemon its pid on stdout, and then serves a unix socket (mode 0600, in the
//! daemon's state directory) with three one-line requests:
//!
//! - `lease <epoch>:<deadline>`: the server may be writable until `deadline`, nanoseconds of
//!   `CLOCK_MONOTONIC` (the same clock as the daemon's `Instant`), for `epoch`;
//! - `lease none`: the server must not be writable (a standby);
//! - `status`: `pm=<postmaster pid> keeper=<own pid> lease=<epoch>:<deadline>|none`.
//!
//! What it enforces, with nothing but its own clock: when the deadline passes, SIGKILL to the
//! postmaster and every process below it (also a stopped one); with no lease, the same as soon as
//! the data directory has neither `standby.signal` nor `recovery.signal` (the server was promoted
//! without a lease). It is a child subreaper, so backends orphaned by the postmaster's death stay
//! below it and are killed too. It exits once the postmaster is gone, and it does not die with the
//! daemon: a restarted daemon finds it by its socket and adopts the running server.
//!
//! It is plain threads and blocking calls on purpose: no runtime whose stall could delay the kill.

use std::ffi::OsString;
use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::proctree::kill_tree;

/// How often the keeper looks at its children and the data directory when no deadline is closer.
const TICK: Duration = Duration::from_millis(50);

/// Nanoseconds of `CLOCK_MONOTONIC`, the clock behind `std::time::Instant` on Linux.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    #[allow(unsafe_code)]
    // SAFETY: clock_gettime writes one timespec into memory we own; CLOCK_MONOTONIC always exists.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
    }
    (ts.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec as u64)
}

/// `t` as nanoseconds of `CLOCK_MONOTONIC`, never later than the true value (the clock is read before
/// `Instant::now()`, so the conversion errs towards an earlier deadline).
pub fn instant_to_ns(t: std::time::Instant) -> u64 {
    let ns = monotonic_ns();
    let now = std::time::Instant::now();
    match t.checked_duration_since(now) {
        Some(ahead) => ns.saturating_add(ahead.as_nanos() as u64),
        None => ns.saturating_sub(now.duration_since(t).as_nanos() as u64),
    }
}

/// The inverse of [`instant_to_ns`] (rounded towards the earlier instant).
pub fn ns_to_instant(ns: u64) -> std::time::Instant {
    let now = std::time::Instant::now();
    let now_ns = monotonic_ns();
    if ns >= now_ns {
        now + Duration::from_nanos(ns - now_ns)
    } else {
        now.checked_sub(Duration::from_nanos(now_ns - ns)).unwrap_or(now)
    }
}

/// A lease as the keeper holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeeperLease {
    pub epoch: u64,
    /// `CLOCK_MONOTONIC` nanoseconds.
    pub deadline_ns: u64,
}

impl KeeperLease {
    /// A deadline that never comes: the keeper kills nothing (for tools and tests, never the daemon).
    pub const UNENFORCED: KeeperLease = KeeperLease { epoch: 0, deadline_ns: u64::MAX };
}

/// What `status` answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeeperStatus {
    pub postmaster: i32,
    pub keeper: i32,
    pub lease: Option<KeeperLease>,
}

pub fn format_lease(lease: Option<KeeperLease>) -> String {
    lease.map_or_else(|| "none".to_string(), |l| format!("{}:{}", l.epoch, l.deadline_ns))
}

pub fn parse_lease(s: &str) -> Option<Option<KeeperLease>> {
    if s == "none" {
        return Some(None);
    }
    let (e, d) = s.split_once(':')?;
    Some(Some(KeeperLease { epoch: e.parse().ok()?, deadline_ns: d.parse().ok()? }))
}

pub fn parse_status(line: &str) -> Option<KeeperStatus> {
    let mut st = KeeperStatus { postmaster: 0, keeper: 0, lease: None };
    for field in line.split_whitespace() {
        let (k, v) = field.split_once('=')?;
        match k {
            "pm" => st.postmaster = v.parse().ok()?,
            "keeper" => st.keeper = v.parse().ok()?,
            "lease" => st.lease = parse_lease(v)?,
            _ => {}
        }
    }
    (st.postmaster > 0).then_some(st)
}

/// The keeper's command line: `--data-dir D --socket S [--uid U --gid G] [--lease E:NS] -- program args...`.
#[derive(Debug, Default)]
pub struct KeeperArgs {
    pub data_dir: PathBuf,
    pub socket: PathBuf,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub lease: Option<KeeperLease>,
    pub command: Vec<OsString>,
}

impl KeeperArgs {
    pub fn to_args(&self) -> Vec<OsString> {
        let mut out: Vec<OsString> =
            vec!["--data-dir".into(), self.data_dir.clone().into(), "--socket".into(), self.socket.clone().into()];
        if let (Some(u), Some(g)) = (self.uid, self.gid) {
            out.extend(["--uid".into(), u.to_string().into(), "--gid".into(), g.to_string().into()]);
        }
        out.extend(["--lease".into(), format_lease(self.lease).into()]);
        out.push("--".into());
        out.extend(self.command.iter().cloned());
        out
    }

    pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<KeeperArgs, String> {
        let mut a = KeeperArgs::default();
        let mut it = args.into_iter();
        while let Some(flag) = it.next() {
            if flag == "--" {
                a.command = it.collect();
                break;
            }
            let value = it.next().ok_or_else(|| format!("{flag:?} needs a value"))?;
            let text = value.to_string_lossy().into_owned();
            match flag.to_str() {
                Some("--data-dir") => a.data_dir = value.into(),
                Some("--socket") => a.socket = value.into(),
                Some("--uid") => a.uid = Some(text.parse().map_err(|_| format!("bad --uid {text:?}"))?),
                Some("--gid") => a.gid = Some(text.parse().map_err(|_| format!("bad --gid {text:?}"))?),
                Some("--lease") => a.lease = parse_lease(&text).ok_or_else(|| format!("bad --lease {text:?}"))?,
                _ => return Err(format!("unknown argument {flag:?}")),
            }
        }
        if a.data_dir.as_os_str().is_empty() || a.socket.as_os_str().is_empty() || a.command.is_empty() {
            return Err("needs --data-dir, --socket and a command after --".into());
        }
        Ok(a)
    }
}

struct Shared {
    lease: Option<KeeperLease>,
}

fn log(msg: &str) {
    // stderr is the server's log file: the operator finds the keeper's word next to PostgreSQL's.
    eprintln!("pgvigil keeper[{}]: {msg}", std::process::id());
}

/// The keeper's `main`: returns the process exit code.
pub fn main(args: KeeperArgs) -> i32 {
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        log(&format!("cannot become a child subreaper: {e}"));
    }
    let listener = match bind(&args.socket) {
        Ok(l) => l,
        Err(e) => {
            println!("error {e}");
            return 1;
        }
    };
    let mut cmd = std::process::Command::new(&args.command[0]);
    cmd.args(&args.command[1..]).current_dir("/");
    if let (Some(u), Some(g)) = (args.uid, args.gid) {
        cmd.uid(u).gid(g);
    }
    // The postmaster writes where we write: the server's log file.
    match std::os::fd::AsFd::as_fd(&std::io::stderr()).try_clone_to_owned() {
        Ok(fd) => {
            cmd.stdout(fd);
        }
        Err(e) => log(&format!("cannot share the log with the postmaster: {e}")),
    }
    // If the keeper itself is killed, nothing enforces the lease any more: the postmaster shuts down.
    crate::process::set_parent_death_signal(&mut cmd, Signal::SIGQUIT);
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_file(&args.socket);
            println!("error spawn {}: {e}", args.command[0].to_string_lossy());
            return 1;
        }
    };
    let pm = child.id() as i32;
    std::mem::forget(child); // reaped below with waitpid(-1)
    println!("started {pm}");
    let _ = std::io::stdout().flush();
    // Nobody reads stdout any more; a write to a closed pipe must not kill us.
    redirect_stdout_to_null();
    log(&format!("postmaster {pm} started, lease {}", format_lease(args.lease)));

    let shared = Arc::new((Mutex::new(Shared { lease: args.lease }), Condvar::new()));
    {
        let shared = shared.clone();
        let _ = std::thread::Builder::new().name("keeper-socket".into()).spawn(move || serve(listener, pm, shared));
    }
    supervise(pm, &args.data_dir, &args.socket, &shared)
}

fn redirect_stdout_to_null() {
    use std::os::fd::AsRawFd as _;
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        #[allow(unsafe_code)]
        // SAFETY: dup2 onto fd 1 replaces our stdout; both descriptors are valid and owned here.
        unsafe {
            libc::dup2(null.as_raw_fd(), 1);
        }
    }
}

/// Bind the socket, 0600. A socket file left by a dead keeper is replaced; one a live keeper
/// answers on is an error (two keepers for one data directory would be a bug).
fn bind(path: &Path) -> std::io::Result<UnixListener> {
    // The keeper of a server that just exited may still be cleaning up: give it a moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while path.exists() {
        if UnixStream::connect(path).is_err() {
            std::fs::remove_file(path)?;
            break;
        }
        if std::time::Instant::now() >= deadline {
            return Err(std::io::Error::other(format!("a keeper already answers on {}", path.display())));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

fn serve(listener: UnixListener, pm: i32, shared: Arc<(Mutex<Shared>, Condvar)>) {
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        // One short request per connection; a client that sends nothing is dropped quickly.
        let _ = conn.set_read_timeout(Some(Duration::from_millis(500)));
        let _ = conn.set_write_timeout(Some(Duration::from_millis(500)));
        let mut line = String::new();
        if BufReader::new(&conn).read_line(&mut line).is_err() {
            continue;
        }
        let answer = answer(line.trim(), pm, &shared);
        let _ = (&conn).write_all(answer.as_bytes());
    }
}

fn answer(request: &str, pm: i32, shared: &(Mutex<Shared>, Condvar)) -> String {
    let (lock, cvar) = shared;
    let mut words = request.split_whitespace();
    match (words.next(), words.next(), words.next()) {
        (Some("status"), None, None) => {
            let s = lock.lock().unwrap_or_else(|p| p.into_inner());
            format!("pm={pm} keeper={} lease={}\n", std::process::id(), format_lease(s.lease))
        }
        (Some("lease"), Some(v), None) => match parse_lease(v) {
            Some(l) => set_lease(lock, cvar, l),
            None => "error bad lease\n".into(),
        },
        _ => "error unknown request\n".into(),
    }
}

fn set_lease(lock: &Mutex<Shared>, cvar: &Condvar, lease: Option<KeeperLease>) -> String {
    let mut s = lock.lock().unwrap_or_else(|p| p.into_inner());
    if s.lease.map(|l| l.epoch) != lease.map(|l| l.epoch) {
        log(&format!("lease now {}", format_lease(lease)));
    }
    s.lease = lease;
    cvar.notify_all();
    "ok\n".into()
}

/// Reap children; kill the tree when the lease runs out (or the server is writable without one);
/// return once the postmaster has exited.
fn supervise(pm: i32, data_dir: &Path, socket: &Path, shared: &(Mutex<Shared>, Condvar)) -> i32 {
    let me = std::process::id() as i32;
    let (lock, cvar) = shared;
    let mut killed = false;
    loop {
        // Reap whatever has exited: the postmaster, or orphans re-parented to us.
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(status) => {
                    if status.pid() == Some(Pid::from_raw(pm)) {
                        log(&format!("postmaster exited: {status:?}"));
                        // First, so the next keeper for this data directory can start at once.
                        let _ = std::fs::remove_file(socket);
                        // Backends left behind (killed or not) must not outlive it.
                        kill_tree(&[], Some(me), Duration::from_secs(5));
                        while let Ok(s) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                            if s == WaitStatus::StillAlive {
                                break;
                            }
                        }
                        return 0;
                    }
                }
            }
        }
        let guard = lock.lock().unwrap_or_else(|p| p.into_inner());
        let now = monotonic_ns();
        let reason = match guard.lease {
            Some(l) if now >= l.deadline_ns => {
                Some(format!("the lease for epoch {} ran out {} ms ago", l.epoch, (now - l.deadline_ns) / 1_000_000))
            }
            None if !data_dir.join("standby.signal").exists() && !data_dir.join("recovery.signal").exists() => {
                Some("no lease, and the server is not a standby (no standby.signal)".to_string())
            }
            _ => None,
        };
        if let Some(reason) = reason {
            drop(guard);
            if !killed {
                log(&format!("{reason}: killing the postmaster and its processes"));
                let n = kill_tree(&[pm], Some(me), Duration::from_secs(2));
                log(&format!("killed the postmaster and its processes ({n} signalled)"));
                killed = true;
            } else {
                kill_tree(&[pm], Some(me), Duration::from_millis(100));
            }
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        let wait = guard
            .lease
            .map_or(TICK, |l| Duration::from_nanos(l.deadline_ns.saturating_sub(now)).min(TICK))
            .max(Duration::from_micros(100));
        let _ = cvar.wait_timeout(guard, wait);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_round_trip() {
        let a = KeeperArgs {
            data_dir: "/d".into(),
            socket: "/s".into(),
            uid: Some(1),
            gid: Some(2),
            lease: Some(KeeperLease { epoch: 3, deadline_ns: 44 }),
            command: vec!["/bin/postgres".into(), "-D".into(), "/d".into()],
        };
        let b = KeeperArgs::parse(a.to_args()).expect("parse");
        assert_eq!(b.to_args(), a.to_args());
        assert!(KeeperArgs::parse(vec!["--data-dir".into()]).is_err());
        assert!(KeeperArgs::parse(vec!["--bogus".into(), "x".into()]).is_err());
    }

    #[test]
    fn status_lines_parse() {
        let st = parse_status("pm=12 keeper=13 lease=4:99").expect("parse");
        assert_eq!(
            st,
            KeeperStatus { postmaster: 12, keeper: 13, lease: Some(KeeperLease { epoch: 4, deadline_ns: 99 }) }
        );
        assert_eq!(parse_status("pm=12 keeper=13 lease=none").map(|s| s.lease), Some(None));
        assert!(parse_status("error x").is_none());
    }

    #[test]
    fn monotonic_conversion_errs_early() {
        let t = std::time::Instant::now() + Duration::from_secs(2);
        let ns = instant_to_ns(t);
        let back = ns_to_instant(ns);
        assert!(back <= t + Duration::from_micros(50), "{:?}", back.checked_duration_since(t));
        assert!(t.duration_since(back) < Duration::from_millis(5));
    }
}
