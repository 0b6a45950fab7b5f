//! Harness for the scenario tests: real PostgreSQL 15 servers and real `pgvigil` daemons, each
//! member a process tree of its own on loopback ports, under a temporary directory.
//!
//! # Layout
//! - [`TestCluster`]: start a cluster, wait for conditions with deadlines, kill parts of it,
//!   run SQL against a member; everything is stopped and removed on drop, also on failure.
//! - [`pgvigil_bin`]: where the daemon binary is (built by `cargo build --workspace`).
//!
//! The fault-injection suite (hosts as network namespaces, needs root):
//! - [`netns`]: the private network (one namespace per host, a client, a switch) and its faults
//!   on links and paths.
//! - [`nscluster`]: a cluster whose members run in those namespaces.
//! - [`faults`]: the fault kinds (inject and heal) and the seeded random schedule.
//! - The independent checker: [`writer`] (writes to every host, records acknowledgements),
//!   [`probe`] (asks each PostgreSQL who it is and what it streams from), [`verdict`] (one
//!   writable primary, nothing acknowledged lost).
//! - [`scenario`]: a run from start to verdicts, and its figures.

pub mod faults;
pub mod netns;
pub mod nscluster;
pub mod probe;
pub mod scenario;
pub mod verdict;
pub mod writer;

use anyhow::Context;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio_postgres::NoTls;

pub use pgvigil::launch::{healthy, ClusterSpec, LocalCluster, MemberSpec};
pub use pgvigil::list::View;

/// The `pgvigil` binary: `$PGVIGIL_BIN`, else beside the running executable, else the workspace's
/// target dir (debug, then release).
pub fn pgvigil_bin() -> PathBuf {
    if let Ok(p) = std::env::var("PGVIGIL_BIN") {
        return PathBuf::from(p);
    }
    // Beside this executable: target/<profile>/ for binaries, target/<profile>/deps/ for tests.
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(2) {
            let p = dir.join("pgvigil");
            if p.is_file() {
                return p;
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap_or(Path::new(".")).to_path_buf();
    let target = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| root.join("target"));
    for profile in ["debug", "release"] {
        let p = target.join(profile).join("pgvigil");
        if p.exists() {
            return p;
        }
    }
    panic!("no pgvigil binary under {}: run `cargo build --workspace` first", target.display());
}

pub struct TestCluster {
    pub cluster: LocalCluster,
    // Dropped after `cluster` (fields drop in order): processes stop before the files go.
    _dir: tempfile::TempDir,
}

impl TestCluster {
    /// Prepare `n` PostgreSQL members and `witnesses` witnesses; `tweak` may change the spec.
    pub fn prepare(n: usize, witnesses: usize, tweak: impl FnOnce(&mut ClusterSpec)) -> anyhow::Result<TestCluster> {
        let dir = tempfile::Builder::new().prefix("pgvigil-test-").tempdir()?;
        let mut spec = ClusterSpec::local(dir.path(), &pgvigil_bin(), n, witnesses)?;
        tweak(&mut spec);
        Ok(TestCluster { cluster: LocalCluster::prepare(spec)?, _dir: dir })
    }

    /// Start every member and wait until the cluster is healthy.
    pub async fn start(n: usize, witnesses: usize) -> anyhow::Result<TestCluster> {
        let mut t = Self::prepare(n, witnesses, |_| {})?;
        t.cluster.start_all()?;
        t.wait_for("a healthy cluster", Duration::from_secs(60), healthy).await?;
        Ok(t)
    }

    pub fn spec(&self) -> &ClusterSpec {
        &self.cluster.spec
    }

    pub async fn view(&self) -> anyhow::Result<View> {
        self.cluster.view().await
    }

    pub async fn wait_for(&self, what: &str, timeout: Duration, ready: impl Fn(&View) -> bool) -> anyhow::Result<View> {
        self.cluster.wait_for(what, timeout, ready).await
    }

    pub async fn primary(&self) -> anyhow::Result<String> {
        self.view().await?.state.primary.context("no primary")
    }

    /// Members other than `name` that run PostgreSQL.
    pub fn other_pg_members(&self, name: &str) -> Vec<String> {
        self.spec()
            .members
            .iter()
            .filter(|m| m.name != name && m.kind == vigil_core::MemberKind::Postgres)
            .map(|m| m.name.clone())
            .collect()
    }

    /// A superuser connection over TCP to `member`'s PostgreSQL.
    pub async fn client(&self, member: &str) -> anyhow::Result<tokio_postgres::Client> {
        let m = self.spec().member(member).context("no such member")?;
        let conn = format!(
            "host=127.0.0.1 port={} user=postgres password={} dbname=postgres connect_timeout=2",
            m.pg_port,
            self.spec().superuser_password
        );
        let (client, connection) =
            tokio_postgres::connect(&conn, NoTls).await.with_context(|| format!("connect to {member}"))?;
        tokio::spawn(connection);
        Ok(client)
    }

    pub async fn execute(&self, member: &str, sql: &str) -> anyhow::Result<()> {
        self.client(member).await?.batch_execute(sql).await.with_context(|| format!("{sql} on {member}"))
    }

    pub async fn count(&self, member: &str, table: &str) -> anyhow::Result<i64> {
        let row = self.client(member).await?.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await?;
        Ok(row.get(0))
    }

    /// Wait until `table` on `member` has at least `n` rows.
    pub async fn wait_rows(&self, member: &str, table: &str, n: i64, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.count(member, table).await;
            if matches!(got, Ok(c) if c >= n) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                anyhow::bail!("{member}: {table} has {got:?} rows, wanted {n}, after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The pid of `member`'s postmaster, from its postmaster.pid, if that process lives.
    pub fn postmaster_pid(&self, member: &str) -> Option<i32> {
        let text = std::fs::read_to_string(self.spec().data_dir(member).join("postmaster.pid")).ok()?;
        let pid: i32 = text.lines().next()?.trim().parse().ok()?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).ok().map(|_| pid)
    }

    pub fn kill_postgres(&self, member: &str) {
        if let Some(pid) = self.postmaster_pid(member) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }

    /// `kill -9` the member's daemon and its PostgreSQL: the host is gone.
    pub fn kill_host(&mut self, member: &str) {
        let pg = self.postmaster_pid(member);
        self.cluster.kill_daemon(member);
        if let Some(pid) = pg {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }

    /// Whether `member`'s PostgreSQL accepts a connection now.
    pub async fn accepts_connections(&self, member: &str) -> bool {
        self.client(member).await.is_ok()
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        self.cluster.stop_all(Duration::from_secs(10));
        // A postmaster whose daemon was killed dies with it (PDEATHSIG); make sure anyway.
        let names: Vec<String> = self.spec().members.iter().map(|m| m.name.clone()).collect();
        for n in names {
            self.kill_postgres(&n);
        }
    }
}
