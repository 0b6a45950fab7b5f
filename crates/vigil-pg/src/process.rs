//! The postmaster under a keeper: start, stop, fence, adopt after a daemon restart, and leftovers.
//!
//! The postmaster is the child of a [`crate::keeper`] process, not of the daemon: the keeper holds
//! the primary's lease deadline and kills the server when it passes, whatever the daemon is doing
//! (running, stalled, restarting). The daemon talks to the keeper over a unix socket and can also
//! kill the server itself ([`Fencer::fence_now`]): SIGKILL to the postmaster and every process
//! below it, which also works on a stopped (SIGSTOPped) server.
//!
//! The keeper is started in its own session and without a parent-death signal, so it outlives the
//! daemon; a daemon that starts again finds it by its socket ([`Postgres::adopt`]).

use std::ffi::OsString;
use std::io;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};

use crate::datadir::{chown, create_dir_owned};
use crate::error::PgError;
use crate::keeper::{format_lease, parse_status, KeeperArgs, KeeperLease, KeeperStatus};
use crate::postgres::Postgres;
use crate::proctree::{alive, kill_tree};
use crate::tool::{file_tail, scrub_env};

/// How long `start` waits for a server it just started to accept connections, and `stop` for it to exit.
const START_DEADLINE: Duration = Duration::from_secs(60);
const STOP_DEADLINE: Duration = Duration::from_secs(60);
/// A leftover postmaster gets this long after SIGINT (fast) before SIGQUIT (immediate).
const LEFTOVER_FAST_DEADLINE: Duration = Duration::from_secs(30);
/// Each request to the keeper: it answers from memory in microseconds.
const KEEPER_REQUEST_TIMEOUT: Duration = Duration::from_millis(500);
/// The keeper says it started the postmaster within this (fork + exec).
const KEEPER_START_TIMEOUT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(20);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopMode {
    /// SIGINT: roll back sessions, checkpoint, exit. A standby gets all WAL sent before it exits.
    Fast,
    /// SIGQUIT: exit now; crash recovery at the next start.
    Immediate,
}

/// How the keeper is started: `program args... <keeper arguments>` (for the daemon, `pgvigil keeper`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeeperCommand {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// The keeper's socket (in a directory only the daemon's user can read).
    pub socket: PathBuf,
}

/// Kills the server from any task, with atomics and signals: no await, so it works while another
/// task is inside `start` or `clone_from`. Also carries the lease to the keeper.
#[derive(Clone, Debug)]
pub struct Fencer {
    inner: Arc<FencerInner>,
}

#[derive(Debug)]
struct FencerInner {
    /// Pid of the running postmaster, 0 when there is none.
    pm: AtomicI32,
    /// Pid of its keeper (a subreaper: orphaned backends end up below it), 0 when none.
    keeper: AtomicI32,
    /// Counts `fence_now` calls. `start` compares it before and after it publishes a new pid, so a
    /// fence that lands while the postmaster is being started (pid not yet visible) still kills it.
    requests: AtomicU64,
    /// The lease the keeper enforces (given to a keeper at start, and pushed on each change).
    lease: Mutex<Option<KeeperLease>>,
    socket: PathBuf,
    /// The last error talking to the keeper, logged once per change.
    last_error: Mutex<Option<String>>,
}

impl Fencer {
    fn new(socket: PathBuf) -> Self {
        Fencer {
            inner: Arc::new(FencerInner {
                pm: AtomicI32::new(0),
                keeper: AtomicI32::new(0),
                requests: AtomicU64::new(0),
                // Until the owner says otherwise, the keeper enforces nothing (tools and tests);
                // the daemon sets the lease (or none) before it starts or adopts a server.
                lease: Mutex::new(Some(KeeperLease::UNENFORCED)),
                socket,
                last_error: Mutex::new(None),
            }),
        }
    }

    /// SIGKILL to the postmaster and every process below it (and below its keeper), if one runs;
    /// true if a signal was sent. A `start` in progress at the same time also ends with its
    /// postmaster killed (and an error).
    pub fn fence_now(&self) -> bool {
        // Count first, then read the pid; `start` publishes the pid, then re-reads the count. With
        // SeqCst one of the two sides sees the other.
        self.inner.requests.fetch_add(1, Ordering::SeqCst);
        let pm = self.inner.pm.load(Ordering::SeqCst);
        if pm <= 0 || !alive(pm) {
            return false;
        }
        let keeper = self.inner.keeper.load(Ordering::SeqCst);
        let n = kill_tree(&[pm], (keeper > 0).then_some(keeper), Duration::from_secs(1));
        if n > 0 {
            tracing::warn!(pid = pm, signalled = n, "fenced: SIGKILL to the postmaster and its processes");
        }
        n > 0
    }

    /// The pid of our postmaster while it runs.
    pub fn pid(&self) -> Option<u32> {
        let pm = self.inner.pm.load(Ordering::SeqCst);
        (pm > 0 && alive(pm)).then_some(pm as u32)
    }

    /// The pid of the postmaster's keeper while one is known.
    pub fn keeper_pid(&self) -> Option<u32> {
        let k = self.inner.keeper.load(Ordering::SeqCst);
        (k > 0 && alive(k)).then_some(k as u32)
    }

    /// The lease the keeper enforces from now on (`None`: not writable, a standby). Stored for the
    /// next start and sent to a running keeper; an error means the keeper did not confirm (it keeps
    /// the lease it had, which it enforces itself).
    pub async fn set_lease(&self, lease: Option<(u64, Instant)>) -> anyhow::Result<()> {
        let lease = lease.map(|(epoch, until)| KeeperLease { epoch, deadline_ns: crate::keeper::instant_to_ns(until) });
        *self.inner.lease.lock().unwrap_or_else(|p| p.into_inner()) = lease;
        if self.pid().is_none() {
            return Ok(());
        }
        let result = keeper_request(&self.inner.socket, &format!("lease {}", format_lease(lease))).await;
        let result = match result {
            Ok(answer) if answer.trim() == "ok" => Ok(()),
            Ok(answer) => Err(anyhow::anyhow!("the keeper answered {answer:?}")),
            Err(e) => Err(e),
        };
        let text = result.as_ref().err().map(|e| format!("{e:#}"));
        let mut last = self.inner.last_error.lock().unwrap_or_else(|p| p.into_inner());
        if *last != text {
            match &text {
                Some(t) => tracing::warn!("lease to the keeper: {t}"),
                None if last.is_some() => tracing::info!("the keeper takes lease renewals again"),
                None => {}
            }
            *last = text;
        }
        result
    }

    fn lease(&self) -> Option<KeeperLease> {
        *self.inner.lease.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, pm: i32, keeper: i32) {
        self.inner.keeper.store(keeper, Ordering::SeqCst);
        self.inner.pm.store(pm, Ordering::SeqCst);
    }

    fn requests(&self) -> u64 {
        self.inner.requests.load(Ordering::SeqCst)
    }

    pub(crate) fn clear(&self) {
        self.inner.pm.store(0, Ordering::SeqCst);
    }
}

/// One request to the keeper on `socket`, its one-line answer, within a deadline.
async fn keeper_request(socket: &Path, line: &str) -> anyhow::Result<String> {
    let exchange = async {
        let mut stream = tokio::net::UnixStream::connect(socket).await?;
        stream.write_all(format!("{line}\n").as_bytes()).await?;
        let mut answer = String::new();
        tokio::io::BufReader::new(stream).read_line(&mut answer).await?;
        anyhow::Ok(answer)
    };
    tokio::time::timeout(KEEPER_REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {KEEPER_REQUEST_TIMEOUT:?}"))?
        .with_context(|| format!("keeper at {}", socket.display()))
}

pub(crate) enum ChildState {
    None,
    Running,
    Exited,
}

impl Postgres {
    pub(crate) fn new_fencer(settings: &crate::settings::PgSettings) -> Fencer {
        Fencer::new(settings.keeper.socket.clone())
    }

    pub(crate) fn child_state(&mut self) -> ChildState {
        // Reap a keeper we started once it is gone (it exits after the postmaster).
        if let Some(k) = self.keeper_child.as_mut() {
            if !matches!(k.try_wait(), Ok(None)) {
                self.keeper_child = None;
            }
        }
        let pm = self.fencer.inner.pm.load(Ordering::SeqCst);
        if pm <= 0 {
            return ChildState::None;
        }
        if alive(pm) {
            return ChildState::Running;
        }
        self.fencer.clear();
        ChildState::Exited
    }

    /// A postmaster left running under a keeper by an earlier run of the daemon: take it over
    /// (same server, no restart). Returns what its keeper says, lease included, or `None` if there
    /// is no keeper or it does not answer for a live postmaster on this data directory.
    pub async fn adopt(&mut self) -> Option<KeeperStatus> {
        let socket = self.settings().keeper.socket.clone();
        if !socket.exists() {
            return None;
        }
        let answer = match keeper_request(&socket, "status").await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!("a keeper socket exists but its keeper does not answer: {e:#}");
                return None;
            }
        };
        let status = parse_status(answer.trim())?;
        let live = live_postmaster(&self.settings().data_dir).map(|p| p.as_raw());
        if live != Some(status.postmaster) {
            tracing::warn!(
                keeper = status.keeper,
                pm = status.postmaster,
                ?live,
                "the keeper's postmaster does not run on this data directory: not adopted"
            );
            return None;
        }
        self.fencer.set(status.postmaster, status.keeper);
        *self.fencer.inner.lease.lock().unwrap_or_else(|p| p.into_inner()) = status.lease;
        tracing::info!(
            member = %self.settings().member,
            pid = status.postmaster,
            keeper = status.keeper,
            lease = %format_lease(status.lease),
            "adopted the running PostgreSQL"
        );
        Some(status)
    }

    /// Start the postmaster under a new keeper and wait until it accepts connections. A postmaster
    /// left running on this data directory by an earlier run (and not adopted) is stopped first. If
    /// ours already runs, this only waits for it to accept connections. Errors:
    /// [`PgError::StartFailed`] (with the end of the log) if it exits first;
    /// [`PgError::StartTimeout`] after 60s, leaving it running (a standby may still be replaying)
    /// for the caller to wait more or stop.
    pub async fn start(&mut self) -> anyhow::Result<()> {
        let started = Instant::now();
        let fences_before = self.fencer.requests();
        if !matches!(self.child_state(), ChildState::Running) {
            let data_dir = self.settings().data_dir.clone();
            if let Some(pid) = live_postmaster(&data_dir) {
                tracing::warn!(pid = pid.as_raw(), data_dir = %data_dir.display(), "a postmaster from an earlier run is alive: stopping it");
                stop_foreign(pid).await?;
            }
            // The keeper of our previous run exits right after its postmaster; it is ours, so a
            // keeper that lingers past that is killed (its server is gone).
            if let Some(k) = self.fencer.keeper_pid() {
                if !wait_gone(Pid::from_raw(k as i32), Duration::from_secs(5)).await {
                    tracing::warn!(keeper = k, "the previous keeper did not exit: SIGKILL");
                    let _ = kill(Pid::from_raw(k as i32), Signal::SIGKILL);
                }
            }
            self.spawn_postmaster().await?;
            if self.fencer.requests() != fences_before {
                tracing::warn!("fenced while starting: killing the new postmaster");
                self.fencer.fence_now();
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
        // 0600 (then PostgreSQL's user's): the log can hold queries and their data.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&s.log_file)
            .with_context(|| format!("open log file {}", s.log_file.display()))?;
        chown(&s.log_file, s.run_as)?;
        // pg_hba.conf is the daemon's: written again at each start, so a change of the members or
        // of `replication_networks` reaches every server (clones copy the primary's).
        crate::datadir::write_file_atomic(
            &s.data_dir.join("pg_hba.conf"),
            crate::conf::pg_hba(&s).as_bytes(),
            0o600,
            s.run_as,
        )?;

        let postgres: Vec<OsString> = vec![
            s.bin_dir.join("postgres").into(),
            "-D".into(),
            s.data_dir.clone().into(),
            "-c".into(),
            format!("port={}", s.port).into(),
            "-c".into(),
            format!("listen_addresses={}", s.listen_address).into(),
            "-c".into(),
            format!("unix_socket_directories={}", s.socket_dir.display()).into(),
            "-c".into(),
            format!("cluster_name={}", s.member).into(),
        ];
        let mut postgres = postgres;
        for (name, value) in &s.start_parameters {
            crate::conf::check_guc_name(name)?;
            postgres.push("-c".into());
            postgres.push(format!("{name}={value}").into());
        }
        let args = KeeperArgs {
            data_dir: s.data_dir.clone(),
            socket: s.keeper.socket.clone(),
            uid: s.run_as.map(|r| r.uid),
            gid: s.run_as.map(|r| r.gid),
            lease: self.fencer.lease(),
            command: postgres,
        };
        let mut cmd = tokio::process::Command::new(&s.keeper.program);
        scrub_env(cmd.as_std_mut());
        cmd.args(&s.keeper.args)
            .args(args.to_args())
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(false);
        #[allow(unsafe_code)]
        // SAFETY: setsid is async-signal-safe and touches only the forked child. Its own session
        // keeps a terminal's Ctrl-C (meant for the daemon) away from the keeper and the server.
        unsafe {
            cmd.as_std_mut().pre_exec(|| nix::unistd::setsid().map(drop).map_err(std::io::Error::from));
        }
        let mut child = cmd.spawn().with_context(|| format!("spawn the keeper {}", s.keeper.program.display()))?;
        let keeper = child.id().unwrap_or(0) as i32;
        let stdout = child.stdout.take().context("keeper stdout")?;
        let mut line = String::new();
        let read =
            tokio::time::timeout(KEEPER_START_TIMEOUT, tokio::io::BufReader::new(stdout).read_line(&mut line)).await;
        self.keeper_child = Some(child);
        let pm = match read {
            Ok(Ok(_)) => match line.trim().strip_prefix("started ").and_then(|p| p.parse::<i32>().ok()) {
                Some(pm) => pm,
                None => anyhow::bail!("the keeper did not start the postmaster: {:?}", line.trim()),
            },
            Ok(Err(e)) => return Err(e).context("read the keeper's answer"),
            Err(_) => anyhow::bail!("the keeper said nothing within {KEEPER_START_TIMEOUT:?}"),
        };
        tracing::info!(member = %s.member, pid = pm, keeper, port = s.port, lease = %format_lease(args.lease), "postmaster spawned");
        self.fencer.set(pm, keeper);
        Ok(())
    }

    async fn wait_accepting(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            match self.child_state() {
                ChildState::Exited => {
                    return Err(PgError::StartFailed {
                        status: "exited".into(),
                        log_tail: file_tail(&self.settings().log_file, 30),
                    }
                    .into())
                }
                ChildState::None => anyhow::bail!("postmaster vanished during start-up"),
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

    /// Stop the server: ours (adopted or started), or else a postmaster left on this data directory
    /// by an earlier run. Sends SIGINT (fast) or SIGQUIT (immediate), waits up to 60s, then SIGKILL
    /// to every process of the server. Ok if nothing runs.
    pub async fn stop(&mut self, mode: StopMode) -> anyhow::Result<()> {
        let signal = match mode {
            StopMode::Fast => Signal::SIGINT,
            StopMode::Immediate => Signal::SIGQUIT,
        };
        let started = Instant::now();
        if let (ChildState::Running, Some(pid)) = (self.child_state(), self.fencer.pid()) {
            let _ = kill(Pid::from_raw(pid as i32), signal);
            let deadline = Instant::now() + STOP_DEADLINE;
            loop {
                match self.child_state() {
                    ChildState::Running if Instant::now() >= deadline => {
                        tracing::error!(pid, "postmaster did not exit within {STOP_DEADLINE:?}: SIGKILL");
                        self.fencer.fence_now();
                    }
                    ChildState::Running => {}
                    ChildState::Exited | ChildState::None => {
                        tracing::info!(
                            member = %self.settings().member,
                            elapsed_ms = started.elapsed().as_millis() as u64,
                            "postmaster stopped"
                        );
                        return Ok(());
                    }
                }
                tokio::time::sleep(POLL).await;
            }
        }
        if let Some(pid) = live_postmaster(&self.settings().data_dir) {
            let _ = kill(pid, signal);
            if !wait_gone(pid, STOP_DEADLINE).await {
                kill_tree(&[pid.as_raw()], None, Duration::from_secs(2));
                wait_gone(pid, Duration::from_secs(10)).await;
            }
        }
        Ok(())
    }
}

/// Arrange for the child to get `signal` when the thread that forks it dies (for the postmaster: the
/// keeper's main thread, which lives as long as the keeper). The parent-death signal is cleared
/// when the child's credentials change, so it is set in `pre_exec`, which std runs after `setuid`.
pub fn set_parent_death_signal(cmd: &mut std::process::Command, signal: Signal) {
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

fn pid_alive(pid: Pid) -> bool {
    crate::proctree::alive(pid.as_raw())
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
