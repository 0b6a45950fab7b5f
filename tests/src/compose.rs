//! The container tier's harness: a compose project (docker/compose.yaml or its witness variant)
//! started from the pgvigil image, driven with `docker` and `docker-compose` commands, observed
//! through `docker exec` (the members' own CLI and `psql`), and removed on drop, volumes
//! included, also when a test fails (the members' logs are printed first).
//!
//! The engine, the base image and the pgvigil image come from `scripts/docker-tier.sh`; the tests
//! that use this module are `#[ignore]`d in the plain `cargo test` and run by that script.

use anyhow::{bail, Context};
use pgvigil::list::ClusterView;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The repository's root (the compose files' paths are relative to it).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap_or(Path::new(".")).to_path_buf()
}

/// The image the compose files run (`PGVIGIL_IMAGE`, as in the files; default `pgvigil:latest`).
pub fn image() -> String {
    std::env::var("PGVIGIL_IMAGE").unwrap_or_else(|_| "pgvigil:latest".into())
}

/// Run a command; its output, or an error with its stderr.
pub fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out: Output = cmd.stdin(Stdio::null()).output().with_context(|| format!("run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} exited with {}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn docker(args: &[&str]) -> anyhow::Result<String> {
    run(Command::new("docker").args(args))
}

/// Wait until `check` gives `Some`, trying every 300 ms, at most `timeout`; the error names `what`
/// and the last failure seen.
pub fn wait_until<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match check() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => "not yet".to_string(),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= deadline {
            bail!("{what}: not within {timeout:?} (last: {last})");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// A compose project of its own (unique name, its own ports on 127.0.0.1, its own volumes).
pub struct Compose {
    pub project: String,
    file: PathBuf,
    command: Vec<String>,
    env: Vec<(String, String)>,
    /// Services that hold PostgreSQL (the witness does not).
    pub databases: Vec<String>,
    /// Every member service.
    pub members: Vec<String>,
    /// Set when any observation saw a `nofailover` member as the primary.
    pub nofailover_promoted: Option<String>,
}

/// The compose command of this machine: `docker compose` when the v2 plugin is there, else
/// `docker-compose` (v1, which Debian 12 ships).
pub fn compose_command() -> Vec<String> {
    let v2 = Command::new("docker")
        .args(["compose", "version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if v2 {
        vec!["docker".into(), "compose".into()]
    } else {
        vec!["docker-compose".into()]
    }
}

/// A free TCP port on 127.0.0.1 (taken by binding port 0, then released).
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Compose {
    /// The classic topology (docker/compose.yaml: db1, db2, db3 tagged nofailover).
    pub fn classic(tag: &str) -> anyhow::Result<Compose> {
        Compose::new(tag, "docker/compose.yaml", &["db1", "db2", "db3"], &["db1", "db2", "db3"])
    }

    /// Two database hosts and a witness (docker/compose.witness.yaml).
    pub fn witness(tag: &str) -> anyhow::Result<Compose> {
        Compose::new(tag, "docker/compose.witness.yaml", &["db1", "db2"], &["db1", "db2", "witness"])
    }

    fn new(tag: &str, file: &str, databases: &[&str], members: &[&str]) -> anyhow::Result<Compose> {
        let project = format!("pgvigil-{tag}-{}", std::process::id());
        // A subnet of its own (the compose files fix one, for the gateway's name).
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = (std::process::id() + NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)) % 200 + 20;
        let mut env = vec![
            ("PGVIGIL_PUBLISH".to_string(), "127.0.0.1".to_string()),
            ("PGVIGIL_IMAGE".into(), image()),
            ("PGVIGIL_SUBNET".into(), format!("172.29.{n}.0/24")),
            ("PGVIGIL_GATEWAY".into(), format!("172.29.{n}.1")),
        ];
        for m in members {
            let upper = m.to_uppercase();
            env.push((format!("PGVIGIL_{upper}_API_PORT"), free_port()?.to_string()));
            env.push((format!("PGVIGIL_{upper}_PG_PORT"), free_port()?.to_string()));
        }
        Ok(Compose {
            project,
            file: repo_root().join(file),
            command: compose_command(),
            env,
            databases: databases.iter().map(|s| s.to_string()).collect(),
            members: members.iter().map(|s| s.to_string()).collect(),
            nofailover_promoted: None,
        })
    }

    /// `docker-compose -p PROJECT -f FILE ARGS...`, with the ports and image in the environment.
    pub fn compose(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = Command::new(&self.command[0]);
        cmd.args(&self.command[1..]).arg("-p").arg(&self.project).arg("-f").arg(&self.file).args(args);
        cmd.current_dir(repo_root());
        // The repository's .env names docker/compose.yaml: -f wins, but keep the variables ours.
        cmd.env_remove("COMPOSE_FILE").env_remove("COMPOSE_PROJECT_NAME");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        run(&mut cmd)
    }

    /// A published host port of a service (`PGVIGIL_<SERVICE>_<PG|API>_PORT`).
    pub fn port(&self, service: &str, which: &str) -> anyhow::Result<u16> {
        let key = format!("PGVIGIL_{}_{which}_PORT", service.to_uppercase());
        let v = self.env.iter().find(|(k, _)| *k == key).with_context(|| format!("no {key}"))?;
        Ok(v.1.parse()?)
    }

    /// Start everything, detached, from the prebuilt image.
    pub fn up(&self) -> anyhow::Result<()> {
        self.compose(&["up", "-d", "--no-build"]).map(drop)
    }

    /// `down` keeping the volumes (the cluster's state and data).
    pub fn down_keep_volumes(&self) -> anyhow::Result<()> {
        self.compose(&["down", "--timeout", "90"]).map(drop)
    }

    /// The container of a service.
    pub fn container(&self, service: &str) -> anyhow::Result<String> {
        let id = self.compose(&["ps", "-q", service])?.trim().to_string();
        if id.is_empty() {
            bail!("no container for {service}");
        }
        Ok(id)
    }

    /// The compose network the members share.
    pub fn network(&self) -> String {
        format!("{}_pgvigil", self.project)
    }

    pub fn kill(&self, service: &str) -> anyhow::Result<()> {
        docker(&["kill", &self.container(service)?]).map(drop)
    }

    pub fn start(&self, service: &str) -> anyhow::Result<()> {
        docker(&["start", &self.container(service)?]).map(drop)
    }

    /// `docker stop` with the grace period of the compose file (90 s); how long it took.
    pub fn stop(&self, service: &str) -> anyhow::Result<Duration> {
        let t = Instant::now();
        docker(&["stop", "-t", "90", &self.container(service)?])?;
        Ok(t.elapsed())
    }

    pub fn disconnect(&self, service: &str) -> anyhow::Result<()> {
        docker(&["network", "disconnect", &self.network(), &self.container(service)?]).map(drop)
    }

    /// Back on the network, under its service name (the members' addresses use it).
    pub fn connect(&self, service: &str) -> anyhow::Result<()> {
        docker(&["network", "connect", "--alias", service, &self.network(), &self.container(service)?]).map(drop)
    }

    /// `docker exec` in a service's container (as postgres, the image's user).
    pub fn exec(&self, service: &str, args: &[&str]) -> anyhow::Result<String> {
        let id = self.container(service)?;
        let mut all = vec!["exec", id.as_str()];
        all.extend_from_slice(args);
        docker(&all)
    }

    /// One SQL statement through the member's own socket (`psql -At`), its output trimmed.
    pub fn sql(&self, service: &str, sql: &str) -> anyhow::Result<String> {
        Ok(self.exec(service, &["psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql])?.trim().to_string())
    }

    /// One SQL statement from the host through the service's published port, as `postgres` with
    /// the superuser password (a client's way in), and how long it took.
    pub fn host_sql(&self, service: &str, sql: &str) -> anyhow::Result<(String, Duration)> {
        let password = self.exec(service, &["cat", "/etc/pgvigil/secrets/superuser.password"])?;
        let port = self.port(service, "PG")?.to_string();
        let t = Instant::now();
        let out = run(Command::new("psql")
            .args(["-X", "-At", "-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-d", "postgres", "-c", sql])
            .env("PGPASSWORD", password.trim())
            .env("PGCONNECT_TIMEOUT", "30"))?;
        Ok((out.trim().to_string(), t.elapsed()))
    }

    /// The cluster as a member sees it (`pgvigil list -o json` in its container).
    pub fn cluster(&mut self, service: &str) -> anyhow::Result<ClusterView> {
        let out = self.exec(service, &["pgvigil", "list", "--config", "/etc/pgvigil/pgvigil.toml", "-o", "json"])?;
        let view: ClusterView =
            serde_json::from_str(&out).with_context(|| format!("pgvigil list on {service}: {out}"))?;
        if let Some(p) = view.primary.as_deref() {
            if view.members.iter().any(|m| m.name == p && m.tags.nofailover()) {
                self.nofailover_promoted = Some(p.to_string());
            }
        }
        Ok(view)
    }

    /// The cluster's history (`pgvigil history -o json`) as a member sees it.
    pub fn history(&self, service: &str) -> anyhow::Result<Vec<vigil_core::Event>> {
        let out = self.exec(service, &["pgvigil", "history", "--config", "/etc/pgvigil/pgvigil.toml", "-o", "json"])?;
        serde_json::from_str(&out).with_context(|| format!("pgvigil history on {service}: {out}"))
    }

    /// Wait until `asked` sees a primary other than `not` and every other database member named
    /// in `streaming` streaming from it; the primary's name.
    pub fn wait_healthy(
        &mut self,
        asked: &str,
        not: Option<&str>,
        streaming: &[&str],
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let what = format!("{asked}: a primary (not {not:?}) with {streaming:?} streaming");
        wait_until(&what, timeout, || {
            let view = self.cluster(asked)?;
            let Some(primary) = view.primary.clone() else { return Ok(None) };
            if Some(primary.as_str()) == not {
                return Ok(None);
            }
            let primary_ok = view.members.iter().any(|m| m.name == primary && m.state == "running");
            let all_streaming = streaming
                .iter()
                .filter(|s| **s != primary)
                .all(|s| view.members.iter().any(|m| m.name == *s && m.role == "replica" && m.state == "streaming"));
            Ok((primary_ok && all_streaming).then_some(primary))
        })
    }

    /// The primary's own view of its standbys: how many stream from it (`pg_stat_replication`).
    pub fn streaming_count(&self, primary: &str) -> anyhow::Result<i64> {
        Ok(self.sql(primary, "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")?.parse()?)
    }

    /// Wait until `service`'s PostgreSQL holds `n` rows in `table`.
    pub fn wait_rows(&self, service: &str, table: &str, n: i64, timeout: Duration) -> anyhow::Result<()> {
        wait_until(&format!("{n} rows of {table} on {service}"), timeout, || {
            let got: i64 = self.sql(service, &format!("SELECT count(*) FROM {table}"))?.parse()?;
            Ok((got == n).then_some(()))
        })
    }

    /// Whether `service`'s PostgreSQL takes a write now (false: stopped, in recovery, fenced, or
    /// the container gone).
    pub fn writable(&self, service: &str) -> bool {
        self.sql(service, "SELECT NOT pg_is_in_recovery()").is_ok_and(|o| o == "t")
    }

    /// Docker's view of the image's HEALTHCHECK (`pgvigil health`): "starting", "healthy", "unhealthy".
    pub fn health(&self, service: &str) -> anyhow::Result<String> {
        Ok(docker(&["inspect", "-f", "{{.State.Health.Status}}", &self.container(service)?])?.trim().to_string())
    }

    /// The members' logs (the last lines), for a failure.
    pub fn logs(&self) -> String {
        self.compose(&["logs", "--no-color", "--tail", "80"]).unwrap_or_else(|e| format!("(no logs: {e:#})"))
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("== logs of compose project {} ==\n{}", self.project, self.logs());
        }
        if let Err(e) = self.compose(&["down", "-v", "--remove-orphans", "--timeout", "5"]) {
            eprintln!("compose down of {}: {e:#}", self.project);
        }
    }
}
