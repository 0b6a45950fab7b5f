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
    /// `[tags]`.
    pub tags: crate::config::TagTable,
    /// The routing proxy's read-write and read-only ports (None: no `[proxy]` table).
    pub proxy_ports: Option<(u16, u16)>,
    /// The port of its pgBackRest TLS server (`backup.server_port`), written when the `[backup]`
    /// lines say `run_on = "standby"` (members of a local cluster share one address).
    pub backup_server_port: u16,
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
    /// `key = value` lines for a `[backup]` table, every member's (none: no table).
    pub backup: Vec<String>,
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
                // Written out, so a test can edit them in the file as an operator would.
                tags: crate::config::TagTable::default().with("nofailover", false).with("priority", 0),
                proxy_ports: None,
                backup_server_port: free_port()?,
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
            backup: Vec::new(),
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
    /// Member `m`'s configuration file, serialised from a TOML document (never written by hand,
    /// so a path or a password with quotes in it stays what it is). The extra `[timing]`,
    /// `[replication]` and `[hooks]` lines must each be valid TOML.
    pub fn config_text(&self, m: &MemberSpec) -> anyhow::Result<String> {
        use toml::{Table, Value};
        let path = |p: PathBuf| Value::from(p.display().to_string());
        let table =
            |pairs: Vec<(&str, Value)>| -> Table { pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect() };
        let lines = |section: &str, lines: &[String]| -> anyhow::Result<Table> {
            toml::from_str(&lines.join("\n"))
                .with_context(|| format!("the extra [{section}] lines of the cluster spec"))
        };
        let members = self
            .members
            .iter()
            .map(|o| {
                Value::Table(table(vec![
                    ("name", o.name.as_str().into()),
                    ("address", format!("{}:{}", o.host, o.peer_port).into()),
                ]))
            })
            .collect::<Vec<_>>();
        let mut doc = table(vec![
            ("name", m.name.as_str().into()),
            ("kind", crate::convert::kind_name(m.kind).into()),
            ("state_dir", path(self.state_dir(&m.name))),
            ("listen", format!("{}:{}", m.host, m.peer_port).into()),
            ("members", Value::Array(members)),
        ]);
        let mut sections: Vec<(&str, Table)> = Vec::new();
        if m.kind == MemberKind::Postgres {
            sections.push((
                "postgres",
                table(vec![
                    ("bin_dir", path(self.pg_bin_dir.clone())),
                    ("data_dir", path(self.data_dir(&m.name))),
                    ("listen_address", m.host.as_str().into()),
                    ("port", i64::from(m.pg_port).into()),
                    ("replication_password", "replication-secret".into()),
                    ("superuser_password", self.superuser_password.as_str().into()),
                    ("hba_extra", self.hba_extra.iter().map(|l| Value::from(l.as_str())).collect::<Vec<_>>().into()),
                    ("parameters", Value::Table(lines("postgres.parameters", &self.pg_parameters)?)),
                ]),
            ));
        }
        sections.push(("tags", Table::try_from(&m.tags).context("tags")?));
        if let Some((rw, ro)) = m.proxy_ports {
            let mut proxy = lines("proxy", &self.proxy)?;
            proxy.insert("listen_address".into(), m.host.as_str().into());
            proxy.insert("rw_port".into(), i64::from(rw).into());
            proxy.insert("ro_port".into(), i64::from(ro).into());
            sections.push(("proxy", proxy));
        }
        sections.push(("timing", lines("timing", &self.timing)?));
        sections.push(("replication", lines("replication", &self.replication)?));
        if !self.hooks.is_empty() {
            sections.push(("hooks", lines("hooks", &self.hooks)?));
        }
        if !self.backup.is_empty() {
            let mut backup = lines("backup", &self.backup)?;
            let on_standby = backup.get("run_on").and_then(Value::as_str) == Some("standby");
            if on_standby && !backup.contains_key("server_port") {
                backup.insert("server_port".into(), i64::from(m.backup_server_port).into());
            }
            sections.push(("backup", backup));
        }
        sections.push(("stop", table(vec![("mode", self.stop_mode.as_str().into())])));
        sections.push(("log", table(vec![("level", self.log_level.as_str().into())])));
        sections.push((
            "api",
            table(vec![
                ("listen", format!("127.0.0.1:{}", m.api_port).into()),
                ("token", self.api_token.as_str().into()),
            ]),
        ));
        match &self.peer_auth {
            PeerAuthSpec::Secret(_) => {
                sections.push(("peer_auth", table(vec![("secret_file", path(self.secret_file()))])));
            }
            PeerAuthSpec::Nothing => {}
            PeerAuthSpec::Insecure => {
                sections.push(("peer_auth", table(vec![("insecure_unauthenticated", true.into())])));
            }
        }
        if let Some(tls) = &self.tls {
            sections.push((
                "tls",
                table(vec![
                    ("ca_file", path(self.ca_file())),
                    ("cert_file", path(self.cert_file(&m.name))),
                    ("key_file", path(self.key_file(&m.name))),
                    ("peer_mtls", tls.peer_mtls.into()),
                    ("api", tls.api.into()),
                    ("api_verify_client", tls.api_verify_client.into()),
                ]),
            ));
        }
        for (name, t) in sections {
            doc.insert(name.to_string(), Value::Table(t));
        }
        Ok(toml::to_string(&doc)?)
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
            write_private(&spec.config_path(&m.name), &spec.config_text(m)?)?;
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
