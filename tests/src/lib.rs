//! Harness for the scenario tests: real PostgreSQL 15 servers and real `pgvigil` daemons, each
//! member a process tree of its own on loopback ports, under a temporary directory.
//!
//! # Layout
//! - [`TestCluster`]: start a cluster, wait for conditions with deadlines, kill parts of it,
//!   run SQL against a member; everything is stopped and removed on drop, also on failure.
//! - [`pgvigil_bin`]: where the daemon binary is (built by `cargo build --workspace`).
//! - HTTP helpers on [`TestCluster`]: ask a member's API, wait for an answer, run the CLI.
//! - [`backup`]: `[backup]` with a repository in the test's directory, its archive, recorded backups;
//!   [`backup_bench`] the backup figures on about 1 GB (`bench backup`).
//! - [`certs`]: a CA and certificates made at test time, for clusters with TLS
//!   ([`TestCluster::prepare_tls`]).
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
//!
//! [`compose`]: the container tier's compose projects (docker/compose.yaml), driven with `docker`;
//!   [`compose_bench`] its figures (`bench docker`).
//!
//! [`fuzz`]: the daemon's parsers of untrusted input (config, API bodies, peer messages, committed
//! commands) fed random and mutated inputs; property tests here, a bounded run in `bench fuzz`.

pub mod backup;
pub mod backup_bench;
pub mod backup_standby_bench;
pub mod certs;
pub mod compose;
pub mod compose_bench;
pub mod faults;
pub mod fuzz;
pub mod netns;
pub mod nscluster;
pub mod probe;
pub mod scenario;
pub mod unattended;
pub mod verdict;
pub mod writer;

use anyhow::Context;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio_postgres::NoTls;

pub use pgvigil::client::Reply;
pub use pgvigil::launch::{healthy, settled, ClusterSpec, LocalCluster, MemberSpec, TlsSpec};
pub use pgvigil::list::{ClusterView, View};

/// PostgreSQL 15's programs, as Debian installs them.
pub const PG_BIN_DIR: &str = "/usr/lib/postgresql/15/bin";

/// A `bin_dir` under `dir` whose `initdb` is `script` (a shell script; `exec {PG_BIN_DIR}/initdb`
/// to run the real one) and whose every other program is PostgreSQL's own, for tests that need
/// an initdb that fails or is slow. Directory and script are 0755: PostgreSQL's user runs them.
pub fn bin_dir_with_initdb(dir: &Path, script: &str) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let bin = dir.join("pgbin");
    std::fs::create_dir_all(&bin)?;
    for e in std::fs::read_dir(PG_BIN_DIR)? {
        let e = e?;
        if e.file_name() != "initdb" {
            std::os::unix::fs::symlink(e.path(), bin.join(e.file_name()))?;
        }
    }
    std::fs::write(bin.join("initdb"), script)?;
    std::fs::set_permissions(bin.join("initdb"), std::fs::Permissions::from_mode(0o755))?;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755))?;
    Ok(bin)
}

/// The value of metric `name` with exactly the labels `labels` (in any order) in a Prometheus
/// text answer; None when there is no such sample.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut want: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    want.sort();
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (key, value) = l.rsplit_once(' ')?;
        let (n, rest) = key.split_once('{').unwrap_or((key, "}"));
        let mut got: Vec<String> =
            rest.strip_suffix('}')?.split(',').filter(|p| !p.is_empty()).map(str::to_string).collect();
        got.sort();
        (n == name && got == want).then(|| value.parse().ok()).flatten()
    })
}

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

/// A primary other than `old` is committed and its PostgreSQL reports taking writes.
pub fn new_primary_writable(v: &View, old: &str) -> bool {
    let primary = v.state.primary.as_deref().filter(|p| *p != old);
    primary.and_then(|p| v.reports.get(p)).is_some_and(|r| r.pg.running && !r.pg.in_recovery)
}

pub struct TestCluster {
    pub cluster: LocalCluster,
    /// The cluster's CA when it runs with TLS ([`Self::prepare_tls`]), to issue more certificates.
    pub ca: Option<certs::Ca>,
    // Dropped after `cluster` (fields drop in order): processes stop before the files go.
    _dir: tempfile::TempDir,
}

impl TestCluster {
    /// Prepare `n` PostgreSQL members and `witnesses` witnesses; `tweak` may change the spec.
    pub fn prepare(n: usize, witnesses: usize, tweak: impl FnOnce(&mut ClusterSpec)) -> anyhow::Result<TestCluster> {
        let dir = tempfile::Builder::new().prefix("pgvigil-test-").tempdir()?;
        let mut spec = ClusterSpec::local(dir.path(), &pgvigil_bin(), n, witnesses)?;
        tweak(&mut spec);
        Ok(TestCluster { cluster: LocalCluster::prepare(spec)?, ca: None, _dir: dir })
    }

    /// [`Self::prepare`] with TLS: a fresh CA and certificates for every member (and for the
    /// harness' own clients) under the cluster's directory.
    pub fn prepare_tls(
        n: usize,
        witnesses: usize,
        tls: TlsSpec,
        tweak: impl FnOnce(&mut ClusterSpec),
    ) -> anyhow::Result<TestCluster> {
        let mut t = Self::prepare(n, witnesses, |spec| {
            // Mutual TLS authenticates the members by itself: these clusters run without a
            // cluster secret, so that this way is tested too.
            if tls.peer_mtls {
                spec.peer_auth = pgvigil::launch::PeerAuthSpec::Nothing;
            }
            spec.tls = Some(tls);
            tweak(spec);
        })?;
        t.ca = Some(certs::write_cluster(t.spec())?);
        Ok(t)
    }

    /// Start every member and wait until the cluster is [`settled`]: healthy, and the coordinator
    /// already handed off the primary's host (so a test does not race that leader change, after
    /// which the new coordinator has no reports for a moment).
    pub async fn start(n: usize, witnesses: usize) -> anyhow::Result<TestCluster> {
        let mut t = Self::prepare(n, witnesses, |_| {})?;
        t.cluster.start_all()?;
        t.wait_for("a settled cluster", Duration::from_secs(60), settled).await?;
        Ok(t)
    }

    /// [`Self::start`] with TLS ([`Self::prepare_tls`]).
    pub async fn start_tls(n: usize, witnesses: usize, tls: TlsSpec) -> anyhow::Result<TestCluster> {
        let mut t = Self::prepare_tls(n, witnesses, tls, |_| {})?;
        t.cluster.start_all()?;
        t.wait_for("a settled cluster", Duration::from_secs(60), settled).await?;
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

    /// Within `window`, every view taken shows `primary` at `epoch` (views that fail, e.g. while a
    /// coordinator is being elected, are skipped; at least one must succeed).
    pub async fn assert_no_failover(&self, primary: &str, epoch: u64, window: Duration) -> anyhow::Result<()> {
        let end = Instant::now() + window;
        let mut seen = 0;
        while Instant::now() < end {
            if let Ok(v) = self.view().await {
                anyhow::ensure!(
                    v.state.primary.as_deref() == Some(primary) && v.state.epoch == epoch,
                    "unexpected change: primary {:?} epoch {}",
                    v.state.primary,
                    v.state.epoch
                );
                seen += 1;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        anyhow::ensure!(seen > 0, "no view of the cluster within {window:?}");
        Ok(())
    }

    /// HAProxy (Debian's package) in front of every member's PostgreSQL, sending connections to
    /// the member whose API answers 200 to `GET /primary`, the way Patroni users configure it.
    /// `check_options` is appended to every server line (e.g. `check-ssl verify required ...`).
    pub fn haproxy_primary(&self, check_options: &str) -> anyhow::Result<HaProxy> {
        let port = pgvigil::launch::free_port()?;
        let mut cfg = format!(
            "global\n    maxconn 100\n\ndefaults\n    mode tcp\n    timeout connect 2s\n    timeout client 60s\n    \
             timeout server 60s\n    timeout check 1s\n\nlisten postgres_primary\n    bind 127.0.0.1:{port}\n    \
             option httpchk GET /primary\n    http-check expect status 200\n    \
             default-server inter 300ms fall 2 rise 1 on-marked-down shutdown-sessions\n"
        );
        for m in &self.spec().members {
            cfg.push_str(&format!(
                "    server {} 127.0.0.1:{} check port {} {check_options}\n",
                m.name, m.pg_port, m.api_port
            ));
        }
        let path = self.spec().dir.join("haproxy.cfg");
        std::fs::write(&path, cfg)?;
        let bin = ["/usr/sbin/haproxy", "haproxy"].into_iter().find(|b| Path::new(b).exists()).unwrap_or("haproxy");
        let log = std::fs::File::create(self.spec().dir.join("haproxy.log"))?;
        let child = std::process::Command::new(bin)
            .arg("-f")
            .arg(&path)
            .arg("-db")
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| anyhow::anyhow!("run {bin} (install it: apt-get install haproxy): {e}"))?;
        Ok(HaProxy { child, port, password: self.spec().superuser_password.clone() })
    }

    /// `kill -9` the member's daemon and its PostgreSQL: the host is gone.
    pub fn kill_host(&mut self, member: &str) {
        let pg = self.postmaster_pid(member);
        self.cluster.kill_daemon(member);
        if let Some(pid) = pg {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }

    /// The HTTP API endpoint of `member` (`https://...` when it serves TLS).
    pub fn api(&self, member: &str) -> String {
        self.spec().api_address(member).unwrap_or_default()
    }

    /// The token every member's API takes.
    pub fn token(&self) -> String {
        self.spec().api_token.clone()
    }

    /// One HTTP request to `member`'s API.
    pub async fn http(
        &self,
        member: &str,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> anyhow::Result<Reply> {
        self.spec().api_client(member)?.request(method, path, token, body, Duration::from_secs(10)).await
    }

    /// `POST path` with the cluster's token and a JSON body, waiting up to two minutes (a
    /// switchover or a reinit answers once it is done).
    pub async fn post(&self, member: &str, path: &str, body: &str) -> anyhow::Result<Reply> {
        let token = self.token();
        pgvigil::client::request(&self.api(member), "POST", path, Some(&token), Some(body), Duration::from_secs(120))
            .await
    }

    pub async fn get(&self, member: &str, path: &str) -> anyhow::Result<Reply> {
        self.http(member, "GET", path, None, None).await
    }

    /// Wait until `GET path` on `member` answers `status`.
    pub async fn wait_http(&self, member: &str, path: &str, status: u16, timeout: Duration) -> anyhow::Result<Reply> {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.get(member, path).await;
            if matches!(&r, Ok(r) if r.status == status) {
                return r;
            }
            if Instant::now() >= deadline {
                anyhow::bail!("{member} {path}: wanted {status} within {timeout:?}, last answer {r:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Run the `pgvigil` command line with `stdin` as its input; environment variables of the
    /// CLI are cleared so only the arguments count.
    pub async fn cli(&self, args: &[&str], stdin: &str) -> anyhow::Result<std::process::Output> {
        use tokio::io::AsyncWriteExt;
        let mut child = tokio::process::Command::new(pgvigil_bin())
            .args(args)
            .env_remove("PGVIGIL_ENDPOINT")
            .env_remove("PGVIGIL_TOKEN")
            .env_remove("PGVIGIL_CACERT")
            .env_remove("PGVIGIL_CERT")
            .env_remove("PGVIGIL_KEY")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("run pgvigil")?;
        if let Some(mut input) = child.stdin.take() {
            input.write_all(stdin.as_bytes()).await?;
        }
        let out = tokio::time::timeout(Duration::from_secs(150), child.wait_with_output())
            .await
            .context("the CLI did not finish within 150 s")??;
        Ok(out)
    }

    /// Whether `member`'s PostgreSQL accepts a connection now.
    pub async fn accepts_connections(&self, member: &str) -> bool {
        self.client(member).await.is_ok()
    }
}

/// A client that inserts increasing ids into `acked_writes` on every PostgreSQL member in turn, as
/// fast as it gets answers (each attempt bounded by a second), and remembers which commits were
/// acknowledged. Standbys refuse; a fenced or blocked primary times out: neither is acknowledged.
pub struct Writer {
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<Vec<Ack>>,
}

/// One acknowledged write: its id (increasing with time), the member that acknowledged it, when.
#[derive(Clone, Debug)]
pub struct Ack {
    pub id: i64,
    pub member: String,
    pub at: Instant,
}

impl Writer {
    /// Create the table on the current primary and start writing.
    pub async fn start(t: &TestCluster) -> anyhow::Result<Writer> {
        let primary = t.primary().await?;
        t.execute(&primary, "CREATE TABLE IF NOT EXISTS acked_writes (id bigint primary key, member text)").await?;
        let targets: Vec<(String, String)> = t
            .spec()
            .members
            .iter()
            .filter(|m| m.kind == vigil_core::MemberKind::Postgres)
            .map(|m| {
                let conn = format!(
                    "host=127.0.0.1 port={} user=postgres password={} dbname=postgres connect_timeout=1",
                    m.pg_port,
                    t.spec().superuser_password
                );
                (m.name.clone(), conn)
            })
            .collect();
        let stop = tokio_util::sync::CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut clients: std::collections::HashMap<String, tokio_postgres::Client> = Default::default();
            let mut id: i64 = 0;
            while !token.is_cancelled() {
                for (name, conn) in &targets {
                    id += 1;
                    if clients.get(name).is_none_or(|c| c.is_closed()) {
                        let connected =
                            tokio::time::timeout(Duration::from_secs(1), tokio_postgres::connect(conn, NoTls));
                        match connected.await {
                            Ok(Ok((c, connection))) => {
                                tokio::spawn(connection);
                                clients.insert(name.clone(), c);
                            }
                            _ => continue,
                        }
                    }
                    let Some(c) = clients.get(name) else { continue };
                    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&id, name];
                    let insert = c.execute("INSERT INTO acked_writes VALUES ($1, $2)", &params);
                    match tokio::time::timeout(Duration::from_secs(1), insert).await {
                        Ok(Ok(_)) => acked.push(Ack { id, member: name.clone(), at: Instant::now() }),
                        Ok(Err(_)) => {}
                        // An answer may still come: this commit is not acknowledged to us.
                        Err(_) => {
                            clients.remove(name);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            acked
        });
        Ok(Writer { stop, task })
    }

    /// Stop and return the acknowledged ids with the member that acknowledged each.
    pub async fn stop(self) -> anyhow::Result<Vec<(i64, String)>> {
        Ok(self.stop_timed().await?.into_iter().map(|a| (a.id, a.member)).collect())
    }

    /// [`Self::stop`], with when each write was acknowledged.
    pub async fn stop_timed(self) -> anyhow::Result<Vec<Ack>> {
        self.stop.cancel();
        Ok(self.task.await?)
    }
}

/// The acknowledged ids missing from `member`'s `acked_writes`.
pub async fn missing_writes(t: &TestCluster, member: &str, acked: &[(i64, String)]) -> anyhow::Result<Vec<i64>> {
    let rows = t.client(member).await?.query("SELECT id FROM acked_writes", &[]).await?;
    let have: std::collections::HashSet<i64> = rows.iter().map(|r| r.get(0)).collect();
    Ok(acked.iter().map(|(id, _)| *id).filter(|id| !have.contains(id)).collect())
}

/// Wait until the log at `path`, from byte `from` on, satisfies `ready`; the text read so far.
pub async fn wait_log(
    path: &std::path::Path,
    from: usize,
    timeout: Duration,
    ready: impl Fn(&str) -> bool,
) -> anyhow::Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let bytes = std::fs::read(path)?;
        let text = String::from_utf8_lossy(bytes.get(from..).unwrap_or_default()).into_owned();
        if ready(&text) {
            return Ok(text);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{}: not seen within {timeout:?}; log since:\n{text}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The length of the log at `path` now (0 if there is none yet): where to read new lines from.
pub fn log_len(path: &std::path::Path) -> usize {
    std::fs::metadata(path).map(|m| m.len() as usize).unwrap_or(0)
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        self.cluster.stop_all(Duration::from_secs(10));
        // A postmaster outlives a killed daemon (its keeper holds it): stop what is left.
        let names: Vec<String> = self.spec().members.iter().map(|m| m.name.clone()).collect();
        for n in names {
            self.kill_postgres(&n);
        }
    }
}

/// HAProxy as a child process ([`TestCluster::haproxy_primary`]), listening on `port`; killed on drop.
pub struct HaProxy {
    child: std::process::Child,
    pub port: u16,
    /// The cluster's superuser password, to connect through it.
    password: String,
}

impl HaProxy {
    /// Wait until a connection through HAProxy lands on the PostgreSQL listening on `want` and,
    /// if given, runs `sql` there first (a write shows the route leads to a writable primary).
    pub async fn wait_routed_to(&self, want: u16, sql: Option<&str>, timeout: Duration) -> anyhow::Result<()> {
        let conn = format!(
            "host=127.0.0.1 port={} user=postgres password={} dbname=postgres connect_timeout=2",
            self.port, self.password
        );
        let deadline = Instant::now() + timeout;
        loop {
            let got = async {
                let (client, connection) = tokio_postgres::connect(&conn, NoTls).await?;
                tokio::spawn(connection);
                if let Some(sql) = sql {
                    client.batch_execute(sql).await?;
                }
                anyhow::Ok(client.query_one("SELECT inet_server_port()", &[]).await?.get::<_, i32>(0))
            }
            .await;
            if matches!(got, Ok(p) if p == i32::from(want)) {
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < deadline, "through haproxy: {got:?}, wanted port {want}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
