//! pgBackRest on this member: its configuration file (written by pgvigil, never by hand), and
//! running its commands as PostgreSQL's user with a deadline.

use crate::config::{BackupSettings, Settings};
use anyhow::Context;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use vigil_core::backup::{BackupOutcome, BackupSource, BackupType};
use vigil_pg::{PgSettings, RunAs};

/// Where this member's pgBackRest files live: `<state_dir>/pgbackrest`.
pub fn dir(settings: &Settings) -> PathBuf {
    settings.raw.state_dir.join("pgbackrest")
}

pub fn config_path(settings: &Settings) -> PathBuf {
    dir(settings).join("pgbackrest.conf")
}

/// The socket the archive command asks for its permit (see `archive.rs`).
pub fn permit_socket(settings: &Settings) -> PathBuf {
    dir(settings).join("archive.sock")
}

/// The text of this member's `pgbackrest.conf`.
pub fn config_text(b: &BackupSettings, pg: &PgSettings, dir: &std::path::Path) -> String {
    let mut global = Vec::new();
    if let Some(p) = &b.raw.repo_path {
        global.push(format!("repo1-path={}", p.display()));
    }
    global.push(format!("repo1-retention-full={}", b.raw.retention_full));
    if let Some(n) = b.raw.retention_diff {
        global.push(format!("repo1-retention-diff={n}"));
    }
    for (sub, key) in [("log", "log-path"), ("lock", "lock-path"), ("spool", "spool-path")] {
        global.push(format!("{key}={}", dir.join(sub).display()));
    }
    // Defaults an operator may override in `options`: a backup starts with an immediate
    // checkpoint (an operator asked for it now, or its slot came), and the file log says enough
    // to explain a failure.
    for (key, value) in [("start-fast", "y"), ("log-level-file", "info"), ("log-level-console", "warn")] {
        if !b.raw.options.contains_key(key) {
            global.push(format!("{key}={value}"));
        }
    }
    for (k, v) in &b.raw.options {
        global.push(format!("{k}={v}"));
    }
    // `run_on = "standby"`: this member's TLS server (`pgbackrest server`, run by the daemon),
    // with copies of the member's `[tls]` files that PostgreSQL's user can read.
    if let Some(srv) = &b.server {
        let files = tls_files(dir);
        global.push(format!("tls-server-address={}", srv.listen));
        global.push(format!("tls-server-port={}", srv.port));
        global.push(format!("tls-server-ca-file={}", files.ca.display()));
        global.push(format!("tls-server-cert-file={}", files.cert.display()));
        global.push(format!("tls-server-key-file={}", files.key.display()));
        for cn in &srv.clients {
            global.push(format!("tls-server-auth={cn}={}", b.raw.stanza));
        }
    }
    let stanza = [
        format!("pg1-path={}", pg.data_dir.display()),
        format!("pg1-port={}", pg.port),
        format!("pg1-socket-path={}", pg.socket_dir.display()),
        format!("pg1-user={}", pg.superuser),
    ];
    format!(
        "# Written by pgvigil from the [backup] table of its config; do not edit (it is rewritten at start).\n\
         [global]\n{}\n\n[{}]\n{}\n",
        global.join("\n"),
        b.raw.stanza,
        stanza.join("\n")
    )
}

/// The copies of the member's `[tls]` files pgBackRest reads as PostgreSQL's user.
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub fn tls_files(dir: &std::path::Path) -> TlsFiles {
    let tls = dir.join("tls");
    TlsFiles { ca: tls.join("ca.pem"), cert: tls.join("cert.pem"), key: tls.join("key.pem") }
}

/// Copy the member's `[tls]` files for pgBackRest (0600, PostgreSQL's user's): done before each
/// start of the TLS server and each backup on a standby, so renewed certificates are used.
pub fn copy_tls_files(
    srv: &crate::config::TlsServer,
    dir: &std::path::Path,
    run_as: Option<RunAs>,
) -> anyhow::Result<()> {
    let files = tls_files(dir);
    vigil_pg::datadir::create_dir_owned(&dir.join("tls"), 0o700, run_as)?;
    for (from, to, key) in [
        (&srv.ca_file, &files.ca, "tls.ca_file"),
        (&srv.cert_file, &files.cert, "tls.cert_file"),
        (&srv.key_file, &files.key, "tls.key_file"),
    ] {
        let bytes = std::fs::read(from).with_context(|| format!("config key `{key}`: read {}", from.display()))?;
        vigil_pg::datadir::write_file_atomic(to, &bytes, 0o600, run_as)?;
    }
    Ok(())
}

/// The options of a backup taken on this standby (`backup-standby=y`): the primary as `pg1`,
/// reached through its TLS server with this member's certificate, and this standby as `pg2`.
pub fn standby_args(source: &BackupSource, local: &PgSettings, dir: &std::path::Path) -> Vec<String> {
    let files = tls_files(dir);
    vec![
        "--backup-standby".into(),
        format!("--pg1-host={}", source.host),
        "--pg1-host-type=tls".into(),
        format!("--pg1-host-port={}", source.port),
        format!("--pg1-host-ca-file={}", files.ca.display()),
        format!("--pg1-host-cert-file={}", files.cert.display()),
        format!("--pg1-host-key-file={}", files.key.display()),
        format!("--pg1-path={}", source.data_dir),
        format!("--pg1-port={}", source.pg_port),
        format!("--pg1-socket-path={}", source.socket_dir),
        format!("--pg1-user={}", source.user),
        format!("--pg2-path={}", local.data_dir.display()),
        format!("--pg2-port={}", local.port),
        format!("--pg2-socket-path={}", local.socket_dir.display()),
        format!("--pg2-user={}", local.superuser),
    ]
}

/// What this member reports for others to reach it (`run_on = "standby"`).
pub fn source_of(srv: &crate::config::TlsServer, pg: &PgSettings) -> BackupSource {
    BackupSource {
        host: srv.host.clone(),
        port: srv.port,
        data_dir: pg.data_dir.display().to_string(),
        pg_port: pg.port,
        socket_dir: pg.socket_dir.display().to_string(),
        user: pg.superuser.clone(),
    }
}

/// Write the configuration and the directories pgBackRest uses, owned by PostgreSQL's user (the
/// archive command runs as that user). The file may hold repository credentials: 0600.
pub fn prepare(settings: &Settings, b: &BackupSettings, pg: &PgSettings) -> anyhow::Result<()> {
    let dir = dir(settings);
    vigil_pg::datadir::create_dir_owned(&dir, 0o700, pg.run_as)?;
    for sub in ["log", "lock", "spool"] {
        vigil_pg::datadir::create_dir_owned(&dir.join(sub), 0o700, pg.run_as)?;
    }
    if let Some(repo) = &b.raw.repo_path {
        // A posix repository: created on first use, PostgreSQL's user's. One that exists is left
        // as it is (shared by the members).
        if !repo.exists() {
            vigil_pg::datadir::create_dir_owned(repo, 0o750, pg.run_as)
                .with_context(|| format!("config key `backup.repo_path`: create {}", repo.display()))?;
        }
    }
    if let Some(srv) = &b.server {
        copy_tls_files(srv, &dir, pg.run_as)?;
    }
    let text = config_text(b, pg, &dir);
    vigil_pg::datadir::write_file_atomic(&config_path(settings), text.as_bytes(), 0o600, pg.run_as)
}

/// One pgBackRest command of this member.
pub struct PgBackRest {
    pub program: PathBuf,
    pub config: PathBuf,
    pub stanza: String,
    pub run_as: Option<RunAs>,
    /// This member's PostgreSQL (for a `CHECKPOINT` before a backup).
    pub pg: PgSettings,
}

impl PgBackRest {
    pub fn of(settings: &Settings, b: &BackupSettings, pg: &PgSettings) -> PgBackRest {
        PgBackRest {
            program: b.raw.pgbackrest.clone(),
            config: config_path(settings),
            stanza: b.raw.stanza.clone(),
            run_as: pg.run_as,
            pg: pg.clone(),
        }
    }

    /// Run `pgbackrest <args>` to completion within `deadline` (then its whole process group is
    /// killed: `process-max` starts helpers); its standard output, or an error with the end of
    /// what it printed.
    pub async fn run(&self, args: &[&str], deadline: Duration) -> anyhow::Result<String> {
        let what = format!("pgbackrest {}", args.first().copied().unwrap_or_default());
        let out = self.run_output(args, deadline).await?;
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        anyhow::bail!("{what} failed ({}): {}", out.status, vigil_pg::tool::tail(output_text(&out).trim(), 5))
    }

    /// Run `pgbackrest <args>` as [`Self::run`] does, and return how it exited and what it
    /// printed, for a caller that judges the exit status itself. An error only when it could not
    /// run or did not finish within `deadline` (then killed).
    pub async fn run_output(&self, args: &[&str], deadline: Duration) -> anyhow::Result<std::process::Output> {
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.arg(format!("--config={}", self.config.display())).arg(format!("--stanza={}", self.stanza)).args(args);
        vigil_pg::tool::scrub_env(cmd.as_std_mut());
        cmd.current_dir("/").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        if let Some(r) = self.run_as {
            cmd.uid(r.uid).gid(r.gid);
        }
        // Its own group (killed whole at the deadline), and killed with the daemon: a backup
        // left running by a dead daemon would race the one the next primary takes.
        cmd.process_group(0).kill_on_drop(true);
        vigil_pg::process::set_parent_death_signal(cmd.as_std_mut(), nix::sys::signal::Signal::SIGKILL);
        let what = format!("pgbackrest {}", args.first().copied().unwrap_or_default());
        let child = cmd.spawn().with_context(|| format!("run {} (backup.pgbackrest)", self.program.display()))?;
        let pgid = child.id();
        match tokio::time::timeout(deadline, child.wait_with_output()).await {
            Ok(out) => out.with_context(|| format!("wait for {what}")),
            Err(_) => {
                if let Some(pid) = pgid {
                    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::SIGKILL);
                }
                anyhow::bail!("{what} did not finish within {deadline:?}: killed")
            }
        }
    }

    /// `pgbackrest info --output=json`, parsed.
    pub async fn info(&self) -> anyhow::Result<serde_json::Value> {
        let text = self.run(&["info", "--output=json"], Duration::from_secs(30)).await?;
        serde_json::from_str(&text).context("pgbackrest info: not JSON")
    }
}

/// What a finished command printed: its standard output, then its standard error.
pub fn output_text(out: &std::process::Output) -> String {
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    text
}

/// The newest backup of `info` (pgBackRest's JSON, one stanza) as an outcome.
pub fn latest_backup(info: &serde_json::Value) -> Option<BackupOutcome> {
    let b = info.get(0)?.get("backup")?.as_array()?.last()?;
    let ms = |v: Option<&serde_json::Value>| v.and_then(serde_json::Value::as_u64).unwrap_or(0) * 1000;
    Some(BackupOutcome {
        label: b.get("label").and_then(|v| v.as_str()).map(str::to_string),
        taken: b.get("type").and_then(|v| v.as_str()).and_then(BackupType::parse),
        started_unix_ms: ms(b.pointer("/timestamp/start")),
        stopped_unix_ms: ms(b.pointer("/timestamp/stop")),
        size_bytes: b.pointer("/info/size").and_then(|v| v.as_u64()).unwrap_or(0),
        repo_size_bytes: b.pointer("/info/repository/delta").and_then(|v| v.as_u64()).unwrap_or(0),
        wal_start: b.pointer("/archive/start").and_then(|v| v.as_str()).map(str::to_string),
        wal_stop: b.pointer("/archive/stop").and_then(|v| v.as_str()).map(str::to_string),
        error: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_backup_is_read_from_info() {
        let info = serde_json::json!([{
            "name": "main",
            "backup": [
                {"label": "20261130-200000F", "type": "full", "timestamp": {"start": 1, "stop": 2}},
                {"label": "20261130-200100F_20261130-200200I", "type": "incr",
                 "timestamp": {"start": 1764532920, "stop": 1764532925},
                 "info": {"size": 23000000, "repository": {"delta": 1200, "size": 3000}},
                 "archive": {"start": "000000020000000000000005", "stop": "000000020000000000000005"}}
            ]
        }]);
        let o = latest_backup(&info).expect("a backup");
        assert_eq!(o.label.as_deref(), Some("20261130-200100F_20261130-200200I"));
        assert_eq!(o.taken, Some(BackupType::Incr));
        assert_eq!((o.started_unix_ms, o.stopped_unix_ms), (1_764_532_920_000, 1_764_532_925_000));
        assert_eq!((o.size_bytes, o.repo_size_bytes), (23_000_000, 1200));
        assert_eq!(o.wal_stop.as_deref(), Some("000000020000000000000005"));
        assert!(latest_backup(&serde_json::json!([{"name": "main", "backup": []}])).is_none());
    }
}
