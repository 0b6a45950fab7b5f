//! Start a cluster of members on this machine, each a `pgvigil run` process with its own state
//! dir and ports: the demo's cluster and the tests' clusters.

use anyhow::Context;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use vigil_core::MemberKind;

use crate::client::Api;
use crate::list::{self, View};
use vigil_raft::PeerClients;

#[derive(Clone, Debug)]
pub struct MemberSpec {
    pub name: String,
    pub kind: MemberKind,
    /// The address the member listens on (peer gRPC and PostgreSQL); `127.0.0.1` for local clusters.
    pub host: String,
    /// Words put before `pgvigil run ...` when the member is started (e.g. `ip netns exec NS`).
    pub launcher: Vec<String>,
    pub peer_port: u16,
    pub pg_port: u16,
    /// The HTTP API's port.
    pub api_port: u16,
    pub nofailover: bool,
    pub priority: i32,
    /// `tags.noloadbalance`.
    pub noloadbalance: bool,
    /// The routing proxy's read-write and read-only ports (None: no `[proxy]` table).
    pub proxy_ports: Option<(u16, u16)>,
}

#[derive(Clone, Debug)]
pub struct ClusterSpec {
    /// Everything lives below this directory (one subdirectory per member).
    pub dir: PathBuf,
    /// The `pgvigil` executable.
    pub bin: PathBuf,
    pub pg_bin_dir: PathBuf,
    pub members: Vec<MemberSpec>,
    /// Extra `key = value` lines for the `[timing]` table.
    pub timing: Vec<String>,
    /// Extra `key = value` lines for the `[replication]` table.
    pub replication: Vec<String>,
    /// `key = value` lines for a `[hooks]` table (none: no table).
    pub hooks: Vec<String>,
    /// Extra `key = value` lines for the `[proxy]` table of members with `proxy_ports`.
    pub proxy: Vec<String>,
    /// `postgres.parameters` of every member, as `key = "value"` items.
    pub pg_parameters: Vec<String>,
    /// Every member's `stop.mode`. Local clusters (demo, tests) stop every member at once, where
    /// a switchover first would only wait for standbys that are stopping too: `stop-postgres`.
    pub stop_mode: String,
    pub superuser_password: String,
    /// `postgres.hba_extra` of every member.
    pub hba_extra: Vec<String>,
    pub log_level: String,
    /// Every member's `api.token`.
    pub api_token: String,
    /// TLS on the peer port and the API; the files (see [`ClusterSpec::ca_file`]) are written
    /// by whoever prepares the cluster, before it starts. None: plain text.
    pub tls: Option<TlsSpec>,
    /// How members authenticate each other on the peer port (`[peer_auth]`).
    pub peer_auth: PeerAuthSpec,
}

/// The `[peer_auth]` table of every member of a launched cluster.
#[derive(Clone)]
pub enum PeerAuthSpec {
    /// A cluster secret in [`ClusterSpec::secret_file`] (mode 0600).
    Secret(String),
    /// No table: mutual TLS (`tls.peer_mtls`) authenticates members, or the config is refused.
    Nothing,
    /// `insecure_unauthenticated = true`.
    Insecure,
}

impl std::fmt::Debug for PeerAuthSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PeerAuthSpec::Secret(_) => "Secret(<redacted>)",
            PeerAuthSpec::Nothing => "Nothing",
            PeerAuthSpec::Insecure => "Insecure",
        })
    }
}

/// The `[tls]` table of every member of a launched cluster.
#[derive(Clone, Debug)]
pub struct TlsSpec {
    pub peer_mtls: bool,
    /// The HTTP API serves https.
    pub api: bool,
    pub api_verify_client: bool,
}

impl Default for TlsSpec {
    /// Mutual TLS on the peer port, https on the API without client certificates.
    fn default() -> Self {
        TlsSpec { peer_mtls: true, api: true, api_verify_client: false }
    }
}

/// A free TCP port on 127.0.0.1, for tests and the demo: bound and released, so not guaranteed to
/// stay free, hence chosen to make a clash unlikely. It is picked at random below the kernel's
/// ephemeral range (`bind(:0)` and outgoing connections take ports from that range, so a port
/// from it can be handed out twice or taken by a client socket before the server binds it), and
/// never returned twice by this process.
pub fn free_port() -> anyhow::Result<u16> {
    use std::hash::{BuildHasher, Hasher};
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let (low, high) = port_range();
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    let random = std::collections::hash_map::RandomState::new();
    for attempt in 0u64..1000 {
        let mut h = random.build_hasher();
        h.write_u64(attempt);
        let port = low + (h.finish() % u64::from(high - low)) as u16;
        if !given.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return Ok(port);
        }
    }
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
    let port = l.local_addr()?.port();
    given.insert(port);
    Ok(port)
}

/// Where [`free_port`] picks from: 10000 up to the start of the kernel's ephemeral range.
fn port_range() -> (u16, u16) {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    (10_000, ephemeral_low.max(20_000))
}

impl ClusterSpec {
    /// `n` PostgreSQL members named pg1.. and `witnesses` witnesses named witness1.., on free ports.
    pub fn local(dir: &Path, bin: &Path, n: usize, witnesses: usize) -> anyhow::Result<ClusterSpec> {
        let mut members = Vec::new();
        for i in 1..=n + witnesses {
            let (name, kind) = if i <= n {
                (format!("pg{i}"), MemberKind::Postgres)
            } else {
                (format!("witness{}", i - n), MemberKind::Witness)
            };
            members.push(MemberSpec {
                name,
                kind,
                host: "127.0.0.1".into(),
                launcher: Vec::new(),
                peer_port: free_port()?,
                pg_port: free_port()?,
                api_port: free_port()?,
                nofailover: false,
                priority: 0,
                noloadbalance: false,
                proxy_ports: None,
            });
        }
        Ok(ClusterSpec {
            dir: dir.to_path_buf(),
            bin: bin.to_path_buf(),
            pg_bin_dir: PathBuf::from("/usr/lib/postgresql/15/bin"),
            members,
            timing: Vec::new(),
            replication: Vec::new(),
            hooks: Vec::new(),
            proxy: Vec::new(),
            pg_parameters: Vec::new(),
            stop_mode: "stop-postgres".into(),
            superuser_password: "pgvigil".into(),
            hba_extra: vec!["host all all 127.0.0.1/32 scram-sha-256".into()],
            log_level: "info".into(),
            api_token: "pgvigil-local-token".into(),
            tls: None,
            peer_auth: PeerAuthSpec::Secret(
                vigil_raft::auth::ClusterKey::generate().map_err(|e| anyhow::anyhow!("cluster secret: {e}"))?,
            ),
        })
    }

    pub fn member(&self, name: &str) -> Option<&MemberSpec> {
        self.members.iter().find(|m| m.name == name)
    }

    pub fn state_dir(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn data_dir(&self, name: &str) -> PathBuf {
        self.dir.join(name).join("pgdata")
    }

    pub fn config_path(&self, name: &str) -> PathBuf {
        self.dir.join(name).join("pgvigil.toml")
    }

    /// The API token in a file (mode 0600), for `pgvigil <verb> --token-file`.
    pub fn token_file(&self) -> PathBuf {
        self.dir.join("api-token")
    }

    /// The cluster secret (mode 0600) of [`PeerAuthSpec::Secret`].
    pub fn secret_file(&self) -> PathBuf {
        self.dir.join("cluster.secret")
    }

    /// Write [`Self::secret_file`] (mode 0600), if the cluster has a secret.
    pub fn write_secret(&self) -> anyhow::Result<()> {
        if let PeerAuthSpec::Secret(secret) = &self.peer_auth {
            write_private(&self.secret_file(), &format!("{secret}\n"))?;
        }
        Ok(())
    }

    /// A password file (mode 0600) for the superuser on every member, for `PGPASSFILE=... psql`.
    pub fn pgpass_file(&self) -> PathBuf {
        self.dir.join("pgpass")
    }

    pub fn peer_address(&self, name: &str) -> Option<String> {
        self.member(name).map(|m| format!("{}:{}", m.host, m.peer_port))
    }

    /// The HTTP API endpoint of a member: `host:port`, or `https://host:port` when it serves TLS.
    pub fn api_address(&self, name: &str) -> Option<String> {
        let scheme = if self.tls.as_ref().is_some_and(|t| t.api) { "https://" } else { "" };
        self.member(name).map(|m| format!("{scheme}127.0.0.1:{}", m.api_port))
    }

    /// The CA certificate every member trusts (PEM), when `tls` is set.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("tls").join("ca.pem")
    }

    /// A member's certificate (PEM; it must name 127.0.0.1 and allow server and client auth).
    pub fn cert_file(&self, name: &str) -> PathBuf {
        self.dir.join("tls").join(format!("{name}.pem"))
    }

    pub fn key_file(&self, name: &str) -> PathBuf {
        self.dir.join("tls").join(format!("{name}-key.pem"))
    }

    /// The certificate the launcher's own clients present (mutual TLS), and its key.
    pub fn client_cert_files(&self) -> (PathBuf, PathBuf) {
        (self.cert_file("client"), self.key_file("client"))
    }

    /// Clients of the members' peer ports: plain, or TLS with the CA and the launcher's client
    /// certificate.
    pub fn peer_clients(&self) -> anyhow::Result<PeerClients> {
        let clients = if self.tls.is_none() {
            PeerClients::new()
        } else {
            let read = |p: PathBuf| std::fs::read(&p).with_context(|| format!("read {}", p.display()));
            let (cert, key) = self.client_cert_files();
            let tls = tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(read(self.ca_file())?))
                .identity(tonic::transport::Identity::from_pem(read(cert)?, read(key)?));
            PeerClients::with_tls(tls)
        };
        Ok(match &self.peer_auth {
            PeerAuthSpec::Secret(secret) => {
                let key = vigil_raft::auth::ClusterKey::parse_file(secret).map_err(anyhow::Error::msg)?;
                clients.with_key(std::sync::Arc::new(key))
            }
            PeerAuthSpec::Nothing | PeerAuthSpec::Insecure => clients,
        })
    }

    /// A client of a member's HTTP API: plain, or https trusting the CA and presenting the
    /// launcher's client certificate.
    pub fn api_client(&self, name: &str) -> anyhow::Result<Api> {
        let endpoint = self.api_address(name).with_context(|| format!("no member {name}"))?;
        if !self.tls.as_ref().is_some_and(|t| t.api) {
            return Api::plain(&endpoint);
        }
        let read = |p: PathBuf| std::fs::read(&p).with_context(|| format!("read {}", p.display()));
        let (cert, key) = self.client_cert_files();
        let config = crate::tls::client_config(&read(self.ca_file())?, Some((&read(cert)?, &read(key)?)))?;
        Api::new(&endpoint, Some(config))
    }

    /// The TOML configuration of one member.
    pub fn config_text(&self, m: &MemberSpec) -> String {
        let members: Vec<String> = self
            .members
            .iter()
            .map(|o| format!("  {{ name = \"{}\", address = \"{}:{}\" }},", o.name, o.host, o.peer_port))
            .collect();
        let mut t = format!(
            "name = \"{name}\"\nkind = \"{kind}\"\nstate_dir = {state:?}\nlisten = \"{host}:{port}\"\nmembers = [\n{members}\n]\n\n",
            name = m.name,
            kind = crate::convert::kind_name(m.kind),
            state = self.state_dir(&m.name).display().to_string(),
            host = m.host,
            port = m.peer_port,
            members = members.join("\n"),
        );
        if m.kind == MemberKind::Postgres {
            t.push_str(&format!(
                "[postgres]\nbin_dir = {bin:?}\ndata_dir = {data:?}\nlisten_address = {host:?}\nport = {port}\n\
                 replication_password = \"replication-secret\"\nsuperuser_password = {su:?}\n\
                 hba_extra = {hba:?}\nparameters = {{ {params} }}\n\n",
                bin = self.pg_bin_dir.display().to_string(),
                data = self.data_dir(&m.name).display().to_string(),
                host = m.host,
                port = m.pg_port,
                hba = self.hba_extra,
                su = self.superuser_password,
                params = self.pg_parameters.join(", "),
            ));
        }
        t.push_str(&format!(
            "[tags]\nnofailover = {}\npriority = {}\nnoloadbalance = {}\n\n",
            m.nofailover, m.priority, m.noloadbalance
        ));
        if let Some((rw, ro)) = m.proxy_ports {
            t.push_str(&format!("[proxy]\nlisten_address = {:?}\nrw_port = {rw}\nro_port = {ro}\n", m.host));
            for line in &self.proxy {
                t.push_str(line);
                t.push('\n');
            }
            t.push('\n');
        }
        t.push_str("[timing]\n");
        for line in &self.timing {
            t.push_str(line);
            t.push('\n');
        }
        t.push_str("\n[replication]\n");
        for line in &self.replication {
            t.push_str(line);
            t.push('\n');
        }
        if !self.hooks.is_empty() {
            t.push_str("\n[hooks]\n");
            for line in &self.hooks {
                t.push_str(line);
                t.push('\n');
            }
        }
        t.push_str(&format!("\n[stop]\nmode = {:?}\n", self.stop_mode));
        t.push_str(&format!("\n[log]\nlevel = {:?}\n", self.log_level));
        t.push_str(&format!("\n[api]\nlisten = \"127.0.0.1:{}\"\ntoken = {:?}\n", m.api_port, self.api_token));
        match &self.peer_auth {
            PeerAuthSpec::Secret(_) => {
                t.push_str(&format!("\n[peer_auth]\nsecret_file = {:?}\n", self.secret_file().display().to_string()))
            }
            PeerAuthSpec::Nothing => {}
            PeerAuthSpec::Insecure => t.push_str("\n[peer_auth]\ninsecure_unauthenticated = true\n"),
        }
        if let Some(tls) = &self.tls {
            t.push_str(&format!(
                "\n[tls]\nca_file = {ca:?}\ncert_file = {cert:?}\nkey_file = {key:?}\npeer_mtls = {mtls}\napi = {api}\n\
                 api_verify_client = {verify}\n",
                ca = self.ca_file().display().to_string(),
                cert = self.cert_file(&m.name).display().to_string(),
                key = self.key_file(&m.name).display().to_string(),
                mtls = tls.peer_mtls,
                api = tls.api,
                verify = tls.api_verify_client,
            ));
        }
        t
    }
}

/// The running member processes of a [`ClusterSpec`].
pub struct LocalCluster {
    pub spec: ClusterSpec,
    children: BTreeMap<String, Child>,
    /// Extra environment variables of a member's daemon ([`Self::set_env`]).
    env: BTreeMap<String, Vec<(String, String)>>,
}

impl LocalCluster {
    /// Write every member's config, the token file and the password file (mode 0600: they hold
    /// the passwords and the token). The directories are 0711: PostgreSQL's user (when the
    /// daemons run as root) must traverse them to its data and socket directories, but needs
    /// not list them.
    pub fn prepare(spec: ClusterSpec) -> anyhow::Result<LocalCluster> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(&spec.dir).with_context(|| format!("create {}", spec.dir.display()))?;
        std::fs::set_permissions(&spec.dir, std::fs::Permissions::from_mode(0o711))?;
        write_private(&spec.token_file(), &format!("{}\n", spec.api_token))?;
        spec.write_secret()?;
        let pgpass =
            format!("127.0.0.1:*:*:postgres:{}\n", spec.superuser_password.replace('\\', "\\\\").replace(':', "\\:"));
        write_private(&spec.pgpass_file(), &pgpass)?;
        for m in &spec.members {
            let dir = spec.state_dir(&m.name);
            std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))?;
            write_private(&spec.config_path(&m.name), &spec.config_text(m))?;
        }
        Ok(LocalCluster { spec, children: BTreeMap::new(), env: BTreeMap::new() })
    }

    /// Give `member`'s daemon `key=value` in its environment, from its next start on (e.g.
    /// `NOTIFY_SOCKET`, to act as its service manager).
    pub fn set_env(&mut self, member: &str, key: &str, value: &str) {
        self.env.entry(member.to_string()).or_default().push((key.to_string(), value.to_string()));
    }

    /// Start (or restart) one member's daemon; its output goes to `<state_dir>/pgvigil.log`.
    pub fn start(&mut self, name: &str) -> anyhow::Result<()> {
        let log_path = self.spec.state_dir(name).join("pgvigil.log");
        // 0600: the log names members, addresses and paths; nobody else needs to read it.
        let log = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(&log_path)?
        };
        let launcher = self.spec.member(name).map(|m| m.launcher.clone()).unwrap_or_default();
        let mut cmd = match launcher.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(&self.spec.bin);
                c
            }
            None => Command::new(&self.spec.bin),
        };
        let child = cmd
            .arg("run")
            .arg("--config")
            .arg(self.spec.config_path(name))
            .envs(self.env.get(name).into_iter().flatten().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn {}", self.spec.bin.display()))?;
        self.children.insert(name.to_string(), child);
        Ok(())
    }

    pub fn start_all(&mut self) -> anyhow::Result<()> {
        let names: Vec<String> = self.spec.members.iter().map(|m| m.name.clone()).collect();
        names.iter().try_for_each(|n| self.start(n))
    }

    pub fn is_running(&mut self, name: &str) -> bool {
        self.children.get_mut(name).is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn daemon_pid(&self, name: &str) -> Option<u32> {
        self.children.get(name).map(|c| c.id())
    }

    /// SIGKILL the daemon of `name` and reap it.
    pub fn kill_daemon(&mut self, name: &str) {
        if let Some(mut c) = self.children.remove(name) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Send `signal` to the daemon (SIGTERM: orderly stop).
    pub fn signal(&self, name: &str, signal: nix::sys::signal::Signal) -> anyhow::Result<()> {
        let pid = self.daemon_pid(name).context("no such running member")?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal)?;
        Ok(())
    }

    /// Stop every daemon and leave nothing it started: SIGTERM (each stops its PostgreSQL), and
    /// after `grace` SIGKILL to a daemon still running and to everything below it (its keeper,
    /// PostgreSQL, a tool it runs). Then a PostgreSQL still running on a member's data directory
    /// (its daemon killed earlier, or `stop.mode = leave-postgres`) is killed too; its keeper
    /// exits with it.
    pub fn stop_all(&mut self, grace: Duration) {
        for c in self.children.values() {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::Signal::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        for c in self.children.values_mut() {
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if matches!(c.try_wait(), Ok(None)) {
                vigil_pg::proctree::kill_tree(&[c.id() as i32], None, Duration::from_secs(2));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        self.children.clear();
        for m in self.spec.members.iter().filter(|m| m.kind == MemberKind::Postgres) {
            if let Some(pm) = vigil_pg::process::live_postmaster(&self.spec.data_dir(&m.name)) {
                vigil_pg::proctree::kill_tree(&[pm.as_raw()], None, Duration::from_secs(2));
            }
        }
    }

    /// The cluster as the coordinator sees it, asked through any member that answers.
    pub async fn view(&self) -> anyhow::Result<View> {
        let mut last = anyhow::anyhow!("no member is running");
        let clients = self.spec.peer_clients()?;
        for name in self.children.keys() {
            if let Some(addr) = self.spec.peer_address(name) {
                match list::fetch_with(&clients, &addr).await {
                    Ok(v) => return Ok(v),
                    Err(e) => last = e,
                }
            }
        }
        Err(last)
    }

    /// Poll [`Self::view`] until `ready` holds, or fail with the last view after `timeout`.
    pub async fn wait_for(&self, what: &str, timeout: Duration, ready: impl Fn(&View) -> bool) -> anyhow::Result<View> {
        let deadline = Instant::now() + timeout;
        loop {
            let view = self.view().await;
            if let Ok(v) = &view {
                if ready(v) {
                    return view;
                }
            }
            if Instant::now() >= deadline {
                let shown = match &view {
                    Ok(v) => list::table(v),
                    Err(e) => format!("{e:#}"),
                };
                anyhow::bail!("timed out after {timeout:?} waiting for {what}; last view:\n{shown}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop_all(Duration::from_secs(10));
    }
}

/// Write `text` to `path` with mode 0600 (also when the file exists with a wider mode).
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(text.as_bytes()).with_context(|| format!("write {}", path.display()))
}

/// A cluster where a primary is committed and every PostgreSQL member is running: the primary
/// writable, the others streaming.
pub fn healthy(v: &View) -> bool {
    let Some(p) = &v.state.primary else { return false };
    let pg_members: Vec<&String> =
        v.state.members.iter().filter(|(_, m)| m.kind == MemberKind::Postgres).map(|(n, _)| n).collect();
    !pg_members.is_empty()
        && pg_members.iter().all(|n| {
            v.reports.get(*n).is_some_and(|r| {
                r.pg.running && if *n == p { !r.pg.in_recovery } else { r.pg.in_recovery && r.pg.streaming }
            })
        })
}

/// [`healthy`], and the coordinator has moved off the primary's host (it hands itself off as
/// soon as a standby runs): the steady state, after which no leader change is expected.
pub fn settled(v: &View) -> bool {
    healthy(v) && !v.coordinator.is_empty() && v.state.primary.as_deref() != Some(v.coordinator.as_str())
}

#[cfg(test)]
mod tests {
    #[test]
    fn free_ports_are_distinct_and_below_the_ephemeral_range() {
        let ports: Vec<u16> = (0..300).map(|_| super::free_port().expect("a free port")).collect();
        let distinct: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len(), "a port handed out twice");
        let (low, high) = super::port_range();
        assert!(ports.iter().all(|p| (low..high).contains(p)), "{ports:?}");
    }
}
