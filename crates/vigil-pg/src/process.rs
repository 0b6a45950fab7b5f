//! The postmaster as our direct child: start, stop, fence, and leftovers from an earlier run.
//!
//! Why a child and not `pg_ctl`: `pg_ctl` daemonizes, and then nothing ties the server's life to ours.
//! Our child gets `PR_SET_PDEATHSIG = SIGQUIT` (immediate shutdown) so that if the daemon dies, even by
//! `kill -9`, its postmaster stops instead of staying a writable primary nobody fences.
//!
//! Two kernel rules shape the code:
//! - The parent-death signal is cleared when the child's credentials change, so it must be set after
//!   `setuid`. std's `Command` applies `setgroups`/`setgid`/`setuid` before it runs `pre_exec` closures
//!   (library/std/src/sys/process/unix/unix.rs, `do_exec`; tokio's `Command` wraps std's), so `prctl`
//!   in `pre_exec` comes after the uid change.
//! - The "parent" is the *thread* that forked, not the process: a postmaster forked from a tokio
//!   blocking-pool thread would be killed when that idle thread exits. So every postmaster is forked
//!   from one dedicated thread that lives as long as the process.

use std::io;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, ExitStatus, Stdio};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::datadir::{chown, create_dir_owned};
use crate::error::PgError;
use crate::postgres::Postgres;
use crate::tool::{file_tail, scrub};

/// How long `start` waits for the server to accept connections, and `stop` for it to exit.
const START_DEADLINE: Duration = Duration::from_secs(60);
const STOP_DEADLINE: Duration = Duration::from_secs(60);
/// A leftover postmaster gets this long after SIGINT (fast) before SIGQUIT (immediate).
const LEFTOVER_FAST_DEADLINE: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(20);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopMode {
    /// SIGINT: roll back sessions, checkpoint, exit. A standby gets all WAL sent before it exits.
    Fast,
    /// SIGQUIT: exit now; crash recovery at the next start.
    Immediate,
}

/// Kills the postmaster from any task, with atomics and one `kill(2)`: no lock, no await, so it works
/// while another task is inside `start` or `clone_from`.
#[derive(Clone, Debug, Default)]
pub struct Fencer {
    /// Pid of our running postmaster, 0 when there is none. Cleared before the child is reaped (see
    /// `poll_child`), so the pid cannot have been reused by another process while it is stored here.
    pid: Arc<AtomicI32>,
    /// Counts `fence_now` calls. `start` compares it before and after it publishes a new pid, so a
    /// fence that lands while the postmaster is being forked (pid not yet visible) still kills it.
    requests: Arc<AtomicU64>,
}

impl Fencer {
    /// SIGQUIT (immediate shutdown) to our postmaster if one runs; true if a signal was sent. A
    /// `start` in progress at the same time also ends with its postmaster shut down (and an error).
    pub fn fence_now(&self) -> bool {
        // Count first, then read the pid; `start` publishes the pid, then re-reads the count. With
        // SeqCst one of the two sides sees the other.
        self.requests.fetch_add(1, Ordering::SeqCst);
        let pid = self.pid.load(Ordering::SeqCst);
        if pid <= 0 {
            return false;
        }
        let sent = kill(Pid::from_raw(pid), Signal::SIGQUIT).is_ok();
        if sent {
            tracing::warn!(pid, "fenced: sent SIGQUIT to the postmaster");
        }
        sent
    }

    /// The pid of our postmaster while it runs (or has exited and not yet been reaped).
    pub fn pid(&self) -> Option<u32> {
        u32::try_from(self.pid.load(Ordering::SeqCst)).ok().filter(|p| *p > 0)
    }

    fn set(&self, pid: u32) {
        self.pid.store(i32::try_from(pid).unwrap_or(0), Ordering::SeqCst);
    }

    fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    pub(crate) fn clear(&self) {
        self.pid.store(0, Ordering::SeqCst);
    }
}

pub(crate) enum ChildState {
    None,
    Running,
    Exited(ExitStatus),
}

/// Non-blocking: has `child` exited? If so, clear the fencer *then* reap, so the fencer never holds a
/// pid the kernel may hand out again.
pub(crate) fn poll_child(child: &mut Child, fencer: &Fencer) -> io::Result<Option<ExitStatus>> {
    let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    match waitid(Id::Pid(pid), flags) {
        Ok(WaitStatus::StillAlive) => Ok(None),
        Ok(_) | Err(nix::errno::Errno::ECHILD) => {
            fencer.clear();
            child.wait().map(Some)
        }
        Err(e) => Err(e.into()),
    }
}

impl Postgres {
    pub(crate) fn child_state(&mut self) -> ChildState {
        let Some(child) = self.child.as_mut() else {
            return ChildState::None;
        };
        match poll_child(child, &self.fencer) {
            Ok(None) => ChildState::Running,
            Ok(Some(status)) => {
                self.child = None;
                ChildState::Exited(status)
            }
            Err(e) => {
                // Cannot happen for our own child; treat it as gone rather than wedging the caller.
                tracing::error!(error = %e, "waitid on the postmaster failed");
                self.fencer.clear();
                self.child = None;
                ChildState::Exited(ExitStatus::default())
            }
        }
    }

    /// Start the postmaster as our child and wait until it accepts connections. A postmaster left
    /// running on this data directory by an earlier run is stopped first. If ours already runs, this
    /// only waits for it to accept connections. Errors: [`PgError::StartFailed`] (with the end of the
    /// log) if it exits first; [`PgError::StartTimeout`] after 60s, leaving it running (a standby may
    /// still be replaying) for the caller to wait more or stop.
    pub async fn start(&mut self) -> anyhow::Result<()> {
        let started = Instant::now();
        let fences_before = self.fencer.requests();
        if !matches!(self.child_state(), ChildState::Running) {
            let data_dir = self.settings().data_dir.clone();
            if let Some(pid) = live_postmaster(&data_dir) {
                tracing::warn!(pid = pid.as_raw(), data_dir = %data_dir.display(), "a postmaster from an earlier run is alive: stopping it");
                stop_foreign(pid).await?;
            }
            self.spawn_postmaster().await?;
            if self.fencer.requests() != fences_before {
                tracing::warn!("fenced while starting: immediate shutdown of the new postmaster");
                if let Some(pid) = self.fencer.pid() {
                    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGQUIT);
                }
            }
        }
        self.wait_accepting().await?;
        tracing::info!(
            member = %self.settings().member,
            pid = self.fencer.pid(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "postgres accepts connections"
        );
        Ok(())
    }

    async fn spawn_postmaster(&mut self) -> anyhow::Result<()> {
        let s = self.settings().clone();
        anyhow::ensure!(
            s.data_dir.join("PG_VERSION").exists(),
            "no cluster in {} (PG_VERSION missing)",
            s.data_dir.display()
        );
        // 0700: the superuser is trusted over this socket, so only its owner may reach it. An
        // existing directory is left as it is (it may be shared, like /var/run/postgresql).
        match std::fs::metadata(&s.socket_dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                create_dir_owned(&s.socket_dir, 0o700, s.run_as)?;
            }
            Err(e) => return Err(e).with_context(|| format!("stat socket directory {}", s.socket_dir.display())),
            Ok(meta) if meta.permissions().mode() & 0o007 != 0 => tracing::warn!(
                dir = %s.socket_dir.display(),
                "every local user can reach the socket, and the superuser is trusted over it"
            ),
            Ok(_) => {}
        }
        if let Some(parent) = s.log_file.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("create directory {}", parent.display()))?;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&s.log_file)
            .with_context(|| format!("open log file {}", s.log_file.display()))?;
        chown(&s.log_file, s.run_as)?;
        let log_err = log.try_clone().context("duplicate log file handle")?;

        let mut cmd = std::process::Command::new(s.bin_dir.join("postgres"));
        scrub(&mut cmd, &s);
        cmd.arg("-D")
            .arg(&s.data_dir)
            .arg("-c")
            .arg(format!("port={}", s.port))
            .arg("-c")
            .arg(format!("listen_addresses={}", s.listen_address))
            .arg("-c")
            .arg(format!("unix_socket_directories={}", s.socket_dir.display()))
            .arg("-c")
            .arg(format!("cluster_name={}", s.member))
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            // Own process group: a Ctrl-C meant for the daemon must not also reach the postmaster.
            .process_group(0);
        set_parent_death_signal(&mut cmd, Signal::SIGQUIT);

        let child = spawn_on_spawner_thread(cmd)
            .await
            .with_context(|| format!("spawn {}", s.bin_dir.join("postgres").display()))?;
        tracing::info!(member = %s.member, pid = child.id(), port = s.port, "postmaster spawned");
        self.fencer.set(child.id());
        self.child = Some(child);
        Ok(())
    }

    async fn wait_accepting(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            match self.child_state() {
                ChildState::Exited(status) => {
                    return Err(PgError::StartFailed {
                        status: status.to_string(),
                        log_tail: file_tail(&self.settings().log_file, 30),
                    }
                    .into())
                }
                // Someone else's postmaster answering on our socket would be a bug; we always have
                // a child here, so None only happens if it vanished between calls.
                ChildState::None => anyhow::bail!("postmaster child vanished during start-up"),
                ChildState::Running => {}
            }
            if let Ok(client) = self.connect().await {
                if client.simple_query("SELECT 1").await.is_ok() {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(PgError::StartTimeout {
                    secs: START_DEADLINE.as_secs(),
                    log_tail: file_tail(&self.settings().log_file, 30),
                }
                .into());
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Stop the server: our child, or else a postmaster left on this data directory by an earlier run.
    /// Sends SIGINT (fast) or SIGQUIT (immediate), waits up to 60s, then SIGKILL. Ok if nothing runs.
    pub async fn stop(&mut self, mode: StopMode) -> anyhow::Result<()> {
        let signal = match mode {
            StopMode::Fast => Signal::SIGINT,
            StopMode::Immediate => Signal::SIGQUIT,
        };
        let started = Instant::now();
        if let ChildState::Running = self.child_state() {
            let pid = self.fencer.pid();
            if let Some(pid) = pid {
                let _ = kill(Pid::from_raw(pid as i32), signal);
            }
            let deadline = Instant::now() + STOP_DEADLINE;
            loop {
                match self.child_state() {
                    ChildState::Running if Instant::now() >= deadline => {
                        tracing::error!(?pid, "postmaster did not exit within 60s: SIGKILL");
                        if let Some(child) = self.child.as_mut() {
                            let _ = child.kill();
                        }
                    }
                    ChildState::Running => {}
                    ChildState::Exited(status) => {
                        tracing::info!(
                            member = %self.settings().member,
                            %status,
                            elapsed_ms = started.elapsed().as_millis() as u64,
                            "postmaster stopped"
                        );
                        return Ok(());
                    }
                    ChildState::None => return Ok(()),
                }
                tokio::time::sleep(POLL).await;
            }
        }
        if let Some(pid) = live_postmaster(&self.settings().data_dir) {
            let _ = kill(pid, signal);
            if !wait_gone(pid, STOP_DEADLINE).await {
                let _ = kill(pid, Signal::SIGKILL);
                wait_gone(pid, Duration::from_secs(10)).await;
            }
        }
        Ok(())
    }
}

/// Arrange for the child to get `signal` when the thread that forks it dies (for the postmaster: our
/// spawner thread, which lives as long as the process).
pub(crate) fn set_parent_death_signal(cmd: &mut std::process::Command, signal: Signal) {
    let parent = nix::unistd::getpid();
    #[allow(unsafe_code)]
    // SAFETY: the closure runs in the forked child before exec and only makes two syscalls (prctl,
    // getppid); it allocates nothing and takes no locks, so it is async-signal-safe. It runs after
    // std's setuid (see the module comment), which would otherwise clear the parent-death signal.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(signal).map_err(|e| io::Error::from_raw_os_error(e as i32))?;
            // The parent may have died between fork and prctl; then no signal would ever come.
            if nix::unistd::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// Fork `cmd` from the process-lifetime spawner thread (see the module comment).
async fn spawn_on_spawner_thread(mut cmd: std::process::Command) -> anyhow::Result<Child> {
    static SPAWNER: OnceLock<Result<mpsc::Sender<Job>, String>> = OnceLock::new();
    let sender = SPAWNER
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Job>();
            std::thread::Builder::new()
                .name("pgvigil-postmaster-spawner".into())
                .spawn(move || {
                    // The sender sits in a static and is never dropped, so this loop (and the thread,
                    // the postmasters' "parent") lasts until the process exits.
                    while let Ok(job) = rx.recv() {
                        job();
                    }
                })
                .map(|_| tx)
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| anyhow::anyhow!("start the postmaster spawner thread: {e}"))?;
    let (reply_tx, reply_rx) = tokio::sync::oneshot::channel();
    sender
        .send(Box::new(move || {
            let _ = reply_tx.send(cmd.spawn());
        }))
        .map_err(|_| anyhow::anyhow!("the postmaster spawner thread is gone"))?;
    let child = reply_rx.await.context("the postmaster spawner thread dropped the request")??;
    Ok(child)
}

/// The pid in `data_dir/postmaster.pid` if that process is alive and is a postmaster on this data
/// directory (its working directory is the data directory; the pid file may be stale and the pid
/// reused by something else).
pub fn live_postmaster(data_dir: &Path) -> Option<Pid> {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    if pid <= 0 {
        return None;
    }
    let pid = Pid::from_raw(pid);
    if !pid_alive(pid) {
        return None;
    }
    let proc_dir = format!("/proc/{pid}");
    let ours = match (std::fs::read_link(format!("{proc_dir}/cwd")), std::fs::canonicalize(data_dir)) {
        (Ok(cwd), Ok(dir)) => cwd == dir,
        // Without access to its cwd, fall back to the program name.
        _ => std::fs::read_to_string(format!("{proc_dir}/comm"))
            .map(|c| matches!(c.trim(), "postgres" | "postmaster"))
            .unwrap_or(false),
    };
    ours.then_some(pid)
}

/// Alive and not a zombie (a zombie has exited; it only waits for its parent to reap it).
fn pid_alive(pid: Pid) -> bool {
    match kill(pid, None) {
        Ok(()) | Err(nix::errno::Errno::EPERM) => {}
        Err(_) => return false,
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Format: "pid (comm) S ...": the state follows the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

async fn wait_gone(pid: Pid, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while pid_alive(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
    true
}

/// Stop a postmaster that is not our child: SIGINT, wait, then SIGQUIT, wait, then give up.
async fn stop_foreign(pid: Pid) -> anyhow::Result<()> {
    let _ = kill(pid, Signal::SIGINT);
    if wait_gone(pid, LEFTOVER_FAST_DEADLINE).await {
        return Ok(());
    }
    tracing::warn!(pid = pid.as_raw(), "leftover postmaster ignored fast shutdown: SIGQUIT");
    let _ = kill(pid, Signal::SIGQUIT);
    if wait_gone(pid, Duration::from_secs(10)).await {
        return Ok(());
    }
    anyhow::bail!("leftover postmaster {pid} did not exit after SIGINT and SIGQUIT")
}
