//! A pgvigil cluster whose members are hosts of a [`Net`]: each member's daemon (and so its
//! PostgreSQL) runs inside its own namespace, on fixed ports (PostgreSQL 5432, peer gRPC 7000) at
//! the host's address.
//!
//! Everything network-related (views, SQL) must run on the client runtime
//! ([`Net::client_runtime`]); [`NsCluster::run`] does that for a whole scenario.

use crate::netns::Net;
use anyhow::Context;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio_postgres::NoTls;

pub use pgvigil::launch::{ClusterSpec, LocalCluster};
pub use pgvigil::list::View;

pub const PG_PORT: u16 = 5432;
pub const PEER_PORT: u16 = 7000;

/// `synchronous_mode` of the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Off,
    On,
    Strict,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::On => "on",
            Mode::Strict => "strict",
        }
    }

    pub fn parse(s: &str) -> anyhow::Result<Mode> {
        match s {
            "off" => Ok(Mode::Off),
            "on" => Ok(Mode::On),
            "strict" => Ok(Mode::Strict),
            _ => anyhow::bail!("mode must be off, on or strict, not {s:?}"),
        }
    }

    /// Whether acknowledged commits must survive every fault.
    pub fn synchronous(self) -> bool {
        self != Mode::Off
    }
}

/// What the SQL side needs to reach the members: plain data, cheap to hand to tasks.
#[derive(Clone, Debug)]
pub struct Endpoints {
    /// (member name, its address), in member order.
    pub hosts: Vec<(String, String)>,
    pub password: String,
}

impl Endpoints {
    pub fn ip(&self, name: &str) -> Option<&str> {
        self.hosts.iter().find(|(n, _)| n == name).map(|(_, ip)| ip.as_str())
    }

    pub fn name_of(&self, ip: &str) -> Option<&str> {
        self.hosts.iter().find(|(_, i)| i == ip).map(|(n, _)| n.as_str())
    }

    pub fn names(&self) -> Vec<String> {
        self.hosts.iter().map(|(n, _)| n.clone()).collect()
    }

    /// A superuser connection to `ip`'s PostgreSQL; gives up after `timeout`.
    pub async fn connect(&self, ip: &str, timeout: Duration) -> anyhow::Result<tokio_postgres::Client> {
        let secs = timeout.as_secs().max(1);
        let conn = format!(
            "host={ip} port={PG_PORT} user=postgres password={} dbname=postgres connect_timeout={secs} \
             application_name=vigil-checker",
            self.password
        );
        let (client, connection) = tokio::time::timeout(timeout, tokio_postgres::connect(&conn, NoTls))
            .await
            .with_context(|| format!("connect to {ip}: timed out"))?
            .with_context(|| format!("connect to {ip}"))?;
        tokio::spawn(connection);
        Ok(client)
    }
}

pub struct NsCluster {
    /// Dropped first: the daemons stop before the network and the files go.
    cluster: Mutex<LocalCluster>,
    pub net: Net,
    pub endpoints: Endpoints,
    _dir: tempfile::TempDir,
}

impl NsCluster {
    /// `n` PostgreSQL members `pg1..pgN`, one per namespace, in synchronous mode `mode`.
    pub fn prepare(n: usize, mode: Mode) -> anyhow::Result<NsCluster> {
        NsCluster::prepare_with(n, mode, |_| {})
    }

    /// [`NsCluster::prepare`], with `customize` applied to the spec last (a `[proxy]` table, say).
    pub fn prepare_with(n: usize, mode: Mode, customize: impl FnOnce(&mut ClusterSpec)) -> anyhow::Result<NsCluster> {
        let names: Vec<String> = (1..=n).map(|i| format!("pg{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let net = Net::new(&refs)?;
        let dir = tempfile::Builder::new().prefix(&format!("pgvigil-faults-{}-", std::process::id())).tempdir()?;
        let mut spec = ClusterSpec::local(dir.path(), &crate::pgvigil_bin(), n, 0)?;
        for m in &mut spec.members {
            m.host = net.host(&m.name)?.ip.clone();
            m.launcher = net.launcher(&m.name)?;
            m.pg_port = PG_PORT;
            m.peer_port = PEER_PORT;
        }
        // The checker connects a lot (probes every 250 ms, writers reconnecting): trust on the
        // private subnet spares the client-side SCRAM key derivation, which in a debug build
        // costs enough CPU on 2 cores to make probes time out. Passwords play no part in failover.
        spec.hba_extra = vec![format!("host all postgres {}.0/24 trust", net.subnet)];
        spec.replication = vec![format!("synchronous_mode = {:?}", mode.name())];
        customize(&mut spec);
        let endpoints = Endpoints {
            hosts: spec.members.iter().map(|m| (m.name.clone(), m.host.clone())).collect(),
            password: spec.superuser_password.clone(),
        };
        let cluster = LocalCluster::prepare(spec)?;
        Ok(NsCluster { cluster: Mutex::new(cluster), net, endpoints, _dir: dir })
    }

    /// Run `scenario` on a runtime in the client namespace and clean everything up afterwards,
    /// also when it fails or panics (the panic is passed on after the clean-up).
    pub fn run<T, F, Fut>(self, scenario: F) -> anyhow::Result<T>
    where
        F: FnOnce(Arc<NsCluster>) -> Fut,
        Fut: Future<Output = anyhow::Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        let rt = self.net.client_runtime()?;
        let me = Arc::new(self);
        let fut = scenario(me.clone());
        let result = rt.block_on(rt.spawn(fut));
        rt.shutdown_timeout(Duration::from_secs(5));
        drop(me);
        match result {
            Ok(r) => r,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(anyhow::anyhow!("scenario task: {e}")),
        }
    }

    pub fn cluster(&self) -> MutexGuard<'_, LocalCluster> {
        self.cluster.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn names(&self) -> Vec<String> {
        self.endpoints.names()
    }

    pub fn start_all(&self) -> anyhow::Result<()> {
        self.cluster().start_all()
    }

    pub fn start(&self, name: &str) -> anyhow::Result<()> {
        self.cluster().start(name)
    }

    /// `kill -9` the daemon (its keeper kills PostgreSQL when the lease runs out).
    pub fn kill_daemon(&self, name: &str) {
        self.cluster().kill_daemon(name);
    }

    pub fn is_running(&self, name: &str) -> bool {
        self.cluster().is_running(name)
    }

    /// The postmaster's pid: the first line of `<data_dir>/postmaster.pid`.
    pub fn postmaster_pid(&self, name: &str) -> Option<i32> {
        let path = self.cluster().spec.data_dir(name).join("postmaster.pid");
        std::fs::read_to_string(path).ok()?.lines().next()?.trim().parse().ok()
    }

    /// The client of `name`'s HTTP API (at 127.0.0.1 in its namespace: call it from there).
    pub fn api_client(&self, name: &str) -> anyhow::Result<pgvigil::client::Api> {
        self.cluster().spec.api_client(name)
    }

    pub fn state_dir(&self, name: &str) -> std::path::PathBuf {
        self.cluster().spec.state_dir(name)
    }

    /// The cluster as the coordinator sees it (asked through each member in turn). For targeting
    /// faults and for showing the history; never for verdicts.
    pub async fn view(&self) -> anyhow::Result<View> {
        let mut last = anyhow::anyhow!("no member answered");
        let clients = self.cluster().spec.peer_clients()?;
        for (name, ip) in &self.endpoints.hosts {
            let addr = format!("{ip}:{PEER_PORT}");
            match tokio::time::timeout(Duration::from_secs(2), pgvigil::list::fetch_with(&clients, &addr)).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => last = e.context(format!("ask {name}")),
                Err(_) => last = anyhow::anyhow!("{name} did not answer within 2 s"),
            }
        }
        Err(last)
    }

    /// Copy every member's `pgvigil.log` and `postgresql.log` (and the tables the checker saw) to
    /// `dest`, so a failed run can be read after its files are gone.
    pub fn save_logs(&self, dest: &std::path::Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dest)?;
        for name in self.names() {
            let dir = self.state_dir(&name);
            for f in ["pgvigil.log", "postgresql.log"] {
                let src = dir.join(f);
                if src.exists() {
                    std::fs::copy(&src, dest.join(format!("{name}-{f}")))
                        .with_context(|| format!("copy {}", src.display()))?;
                }
            }
        }
        Ok(())
    }
}

impl Drop for NsCluster {
    fn drop(&mut self) {
        // A frozen host would not stop on SIGTERM: thaw everything first.
        for name in self.names() {
            let _ = self.net.signal_all(&name, nix::sys::signal::Signal::SIGCONT);
        }
        self.cluster().stop_all(Duration::from_secs(5));
        // Then the fields in order: `net` (kills whatever is left, deletes the namespaces), then
        // the directory.
    }
}
