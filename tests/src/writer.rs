//! The checker's writer: every `interval` it tries one INSERT with a fresh id on *every* host,
//! whatever the daemons say, and records the ones PostgreSQL acknowledged.
//!
//! Two vantage points per host: a task on the client runtime (the client namespace, across the
//! switch), and a thread inside the host's own namespace writing to its own address. The second
//! one still reaches a host that is cut off from the network, so an isolated old primary that
//! kept taking writes would be seen, as a client on its side of the partition would see it.
//!
//! Each writer has a cached connection (connect and statement each bounded by `timeout`: a commit
//! may block in synchronous mode). A timed-out attempt is not acknowledged (it may still commit
//! later: that is allowed). Ids come from one counter, so no id is ever sent to two hosts. Times
//! are offsets from the writer's `t0` (one monotonic clock for every vantage point).

use crate::nscluster::Endpoints;
use anyhow::Context;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_postgres::error::SqlState;

pub const TABLE: &str = "vigil_check";

/// One acknowledged commit: `host` returned success for `INSERT id` sent at `sent`, answered at
/// `acked` (so the commit happened somewhere in `[sent, acked]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ack {
    pub host: String,
    pub id: i64,
    pub sent: Duration,
    pub acked: Duration,
    /// Written from inside the host's namespace (else from the client namespace).
    pub local: bool,
}

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    next_id: AtomicI64,
    attempts: AtomicU64,
    timeouts: AtomicU64,
    acks: Mutex<Vec<Ack>>,
}

pub struct Writer {
    pub t0: Instant,
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// Create the checker's table on `ip` (the first primary).
pub async fn create_table(ep: &Endpoints, ip: &str) -> anyhow::Result<()> {
    let c = ep.connect(ip, Duration::from_secs(2)).await?;
    c.batch_execute(&format!("CREATE TABLE IF NOT EXISTS {TABLE} (id bigint PRIMARY KEY, host text NOT NULL)")).await?;
    Ok(())
}

impl Writer {
    /// Start writing: tasks on the current runtime (call it on the client runtime) and one thread
    /// in each host's namespace; `local` holds (host name, namespace name).
    pub fn start(
        ep: &Endpoints,
        local: &[(String, String)],
        t0: Instant,
        interval: Duration,
        timeout: Duration,
    ) -> anyhow::Result<Writer> {
        let shared = Arc::new(Shared { next_id: AtomicI64::new(1), ..Shared::default() });
        let job = |name: &str, ip: &str, local: bool| Job {
            ep: ep.clone(),
            name: name.to_string(),
            ip: ip.to_string(),
            shared: shared.clone(),
            t0,
            interval,
            timeout,
            local,
        };
        let tasks = ep.hosts.iter().map(|(name, ip)| tokio::spawn(job(name, ip, false).run())).collect();
        let mut threads = Vec::new();
        for (name, ns) in local {
            let ip = ep.ip(name).with_context(|| format!("no host {name}"))?;
            let j = job(name, ip, true);
            let path = format!("/run/netns/{ns}");
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            let t = std::thread::Builder::new().name(format!("writer-{name}")).spawn(move || {
                let setup = || -> anyhow::Result<tokio::runtime::Runtime> {
                    let f = std::fs::File::open(&path).with_context(|| format!("open {path}"))?;
                    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
                    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
                };
                match setup() {
                    Ok(rt) => {
                        let _ = ready_tx.send(Ok(()));
                        rt.block_on(j.run());
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })?;
            threads.push(t);
            ready_rx.recv().context("writer thread")??;
        }
        Ok(Writer { t0, shared, tasks, threads })
    }

    /// Now, as an offset from `t0`.
    pub fn now(&self) -> Duration {
        self.t0.elapsed()
    }

    pub fn acks(&self) -> Vec<Ack> {
        self.shared.acks.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// (attempts, attempts that timed out)
    pub fn attempts(&self) -> (u64, u64) {
        (self.shared.attempts.load(Ordering::Relaxed), self.shared.timeouts.load(Ordering::Relaxed))
    }

    /// Wait until `host` has `n` acknowledged commits sent after `since`.
    pub async fn wait_acks(&self, host: &str, since: Duration, n: usize, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.acks().iter().filter(|a| a.host == host && a.sent >= since).count();
            if got >= n {
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < deadline, "{host} acknowledged {got} of {n} writes within {timeout:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stop and wait for the tasks (each finishes its attempt in flight, bounded by its timeout).
    pub async fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        let threads: Vec<_> = self.threads.drain(..).collect();
        let _ = tokio::task::spawn_blocking(move || threads.into_iter().for_each(|t| drop(t.join()))).await;
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}

/// One writer: one host from one vantage point.
struct Job {
    ep: Endpoints,
    name: String,
    ip: String,
    shared: Arc<Shared>,
    t0: Instant,
    interval: Duration,
    timeout: Duration,
    local: bool,
}

impl Job {
    async fn run(self) {
        let shared = &self.shared;
        let mut client: Option<tokio_postgres::Client> = None;
        let mut next = Instant::now();
        let sql = format!("INSERT INTO {TABLE} (id, host) VALUES ($1, $2)");
        while !shared.stop.load(Ordering::Relaxed) {
            next += self.interval;
            if client.as_ref().is_none_or(|c| c.is_closed()) {
                client = self.ep.connect(&self.ip, self.timeout).await.ok();
            }
            if let Some(c) = &client {
                let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
                shared.attempts.fetch_add(1, Ordering::Relaxed);
                let sent = self.t0.elapsed();
                match tokio::time::timeout(self.timeout, c.execute(&sql, &[&id, &self.name])).await {
                    Ok(Ok(_)) => {
                        let acked = self.t0.elapsed();
                        let ack = Ack { host: self.name.clone(), id, sent, acked, local: self.local };
                        shared.acks.lock().unwrap_or_else(|p| p.into_inner()).push(ack);
                    }
                    // A standby says no at once: keep the connection.
                    Ok(Err(e)) if e.code() == Some(&SqlState::READ_ONLY_SQL_TRANSACTION) => {}
                    Ok(Err(_)) => client = None,
                    Err(_) => {
                        shared.timeouts.fetch_add(1, Ordering::Relaxed);
                        client = None;
                    }
                }
            }
            let now = Instant::now();
            if next < now {
                next = now;
            }
            tokio::time::sleep_until(next.into()).await;
        }
    }
}
