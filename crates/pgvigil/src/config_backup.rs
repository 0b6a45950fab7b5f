//! The `[backup]` table: pgBackRest's stanza and repository, the schedule, retention, where
//! backups run. pgvigil writes each member's `pgbackrest.conf` from it (`backup/pgbackrest.rs`).

use super::{absolute, bad, duration_opt, ConfigError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
use vigil_core::backup::{BackupType, Cron, Policy};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackupConfig {
    /// pgBackRest's stanza: the name of this cluster in the repository.
    pub stanza: String,
    /// A posix repository (`repo1-path`) every member reaches at the same path (a shared mount).
    #[serde(default)]
    pub repo_path: Option<PathBuf>,
    /// Other pgBackRest options, written as they are into `[global]` of every member's
    /// `pgbackrest.conf` (an S3/Azure/GCS/SFTP repository: `repo1-type`, `repo1-s3-bucket`, ...;
    /// `compress-type`, `process-max`).
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// Full backups kept (`repo1-retention-full`).
    #[serde(default = "default_retention_full")]
    pub retention_full: u32,
    /// Differential backups kept (`repo1-retention-diff`); default: pgBackRest's.
    #[serde(default)]
    pub retention_diff: Option<u32>,
    #[serde(default)]
    pub schedule: ScheduleConfig,
    /// Where backups run: `primary`, or `standby` (the best streaming standby, reading from the
    /// primary through pgBackRest's TLS server, which every PostgreSQL member then runs).
    #[serde(default = "default_run_on")]
    pub run_on: String,
    /// `run_on = "standby"`: the port of this member's pgBackRest TLS server.
    #[serde(default = "default_server_port")]
    pub server_port: u16,
    /// `run_on = "standby"`: the DNS name other members' pgBackRest dial this member's TLS server
    /// by; its certificate must carry it (pgBackRest 2.45 checks DNS names only, not IP
    /// addresses). Default: the host of this member's address in `members`, if it is a name.
    #[serde(default)]
    pub server_host: Option<String>,
    /// `run_on = "standby"`: the certificate CNs allowed to use this member's TLS server
    /// (`tls-server-auth`). Default: every member's name.
    #[serde(default)]
    pub server_clients: Option<Vec<String>>,
    /// The pgBackRest program.
    #[serde(default = "default_pgbackrest")]
    pub pgbackrest: PathBuf,
    /// How long one backup may run before it is killed and recorded as failed.
    #[serde(default, deserialize_with = "duration_opt")]
    pub timeout: Option<Duration>,
    /// Create and re-initialise standbys from the repository (`pgbackrest restore --type=standby`,
    /// then streaming) instead of `pg_basebackup`, which stays the fallback.
    #[serde(default)]
    pub clone_from_repo: bool,
    /// The newest successful backup must have ended within this for a standby to be created from
    /// it (an older one means replaying much WAL: `pg_basebackup` instead).
    #[serde(default, deserialize_with = "duration_opt")]
    pub clone_max_age: Option<Duration>,
    /// How long one verification (restore, recovery, checks, `pgbackrest verify`) may run.
    #[serde(default, deserialize_with = "duration_opt")]
    pub verify_timeout: Option<Duration>,
    /// How long one `archive-push` / `archive-get` may take before it is killed (PostgreSQL retries).
    #[serde(default, deserialize_with = "duration_opt")]
    pub archive_timeout: Option<Duration>,
}

/// Cron-like expressions (UTC) per backup type; a type without one is never scheduled.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    #[serde(default)]
    pub full: Option<String>,
    #[serde(default)]
    pub diff: Option<String>,
    #[serde(default)]
    pub incr: Option<String>,
    /// The proof of restorability: restore the latest backup on a standby's host, recover it,
    /// query it, `pgbackrest verify` the repository (see ARCHITECTURE.md).
    #[serde(default)]
    pub verify: Option<String>,
}

fn default_retention_full() -> u32 {
    2
}
fn default_run_on() -> String {
    "primary".into()
}
fn default_server_port() -> u16 {
    8432
}
fn default_pgbackrest() -> PathBuf {
    PathBuf::from("/usr/bin/pgbackrest")
}

pub const DEFAULT_BACKUP_TIMEOUT: Duration = Duration::from_secs(4 * 3600);
pub const DEFAULT_ARCHIVE_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_VERIFY_TIMEOUT: Duration = Duration::from_secs(2 * 3600);

/// Options pgvigil writes itself (from other keys, or per member): setting them would point a
/// member at another cluster's data, or break the fencing of archiving.
const OWN_OPTIONS: &[&str] = &[
    "stanza",
    "config",
    "lock-path",
    "log-path",
    "spool-path",
    "repo1-path",
    "repo1-retention-full",
    "repo1-retention-diff",
    "backup-standby",
];

/// The checked `[backup]` table.
#[derive(Debug, Clone)]
pub struct BackupSettings {
    pub raw: BackupConfig,
    pub policy: Policy,
    pub timeout: Duration,
    pub archive_timeout: Duration,
    pub verify_timeout: Duration,
    pub clone_max_age: Duration,
    /// This member's pgBackRest TLS server (`run_on = "standby"` on a PostgreSQL member).
    pub server: Option<TlsServer>,
}

/// The pgBackRest TLS server a PostgreSQL member runs with `run_on = "standby"`, and the files
/// its pgBackRest uses as a client of the others' (the member's `[tls]` files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsServer {
    /// The address it listens on (`tls-server-address`): the host of this member's address.
    pub listen: String,
    /// The name others dial (`pgN-host`).
    pub host: String,
    pub port: u16,
    /// Client CNs allowed (`tls-server-auth=CN=stanza`).
    pub clients: Vec<String>,
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// With `run_on = "standby"`, a PostgreSQL member's TLS server, from its `[tls]` files and its
/// address: refused (naming `backup.run_on`) without `[tls]`, and (naming `backup.server_host`)
/// when the name to dial is an IP address, which pgBackRest 2.45 cannot check a certificate for.
pub fn tls_server(
    b: &BackupConfig,
    tls: Option<&super::TlsConfig>,
    advertise: &str,
    members: &[String],
) -> Result<Option<TlsServer>, ConfigError> {
    if b.run_on != "standby" {
        return Ok(None);
    }
    let Some(tls) = tls else {
        return Err(bad(
            "backup.run_on",
            "\"standby\" needs a [tls] table: every PostgreSQL member runs pgBackRest's TLS server with              its [tls] certificate (ca_file, cert_file, key_file), and the standby's pgBackRest reaches the              primary through it",
        ));
    };
    if b.server_port == 0 {
        return Err(bad("backup.server_port", "must not be 0"));
    }
    let listen = crate::tls::host_of(advertise).to_string();
    let host = b.server_host.clone().unwrap_or_else(|| listen.clone());
    if host.is_empty()
        || host.parse::<std::net::IpAddr>().is_ok()
        || !host.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
    {
        return Err(bad(
            "backup.server_host",
            format!(
                "{host:?}: pgBackRest 2.45 checks a certificate's DNS names only, not its IP addresses: set                  server_host to a DNS name that this member's certificate carries and that resolves to {listen}"
            ),
        ));
    }
    let clients = b.server_clients.clone().unwrap_or_else(|| members.to_vec());
    if clients.is_empty() || clients.iter().any(|c| c.is_empty() || c.contains(['=', '\n', '\r', ','])) {
        return Err(bad(
            "backup.server_clients",
            "a non-empty list of certificate common names (no =, comma or newline)",
        ));
    }
    Ok(Some(TlsServer {
        listen,
        host,
        port: b.server_port,
        clients,
        ca_file: tls.ca_file.clone(),
        cert_file: tls.cert_file.clone(),
        key_file: tls.key_file.clone(),
    }))
}

pub fn check(cfg: &BackupConfig) -> Result<BackupSettings, ConfigError> {
    let stanza_ok = !cfg.stanza.is_empty()
        && cfg.stanza.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && cfg.stanza.len() <= 64;
    if !stanza_ok {
        return Err(bad("backup.stanza", format!("{:?}: use letters, digits, - and _ (at most 64)", cfg.stanza)));
    }
    if let Some(p) = &cfg.repo_path {
        absolute("backup.repo_path", p)?;
    }
    absolute("backup.pgbackrest", &cfg.pgbackrest)?;
    for (name, value) in &cfg.options {
        let key = format!("backup.options.{name}");
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') {
            return Err(bad(key, "not a pgBackRest option name (lower-case letters, digits and -)"));
        }
        if value.contains(['\n', '\r']) {
            return Err(bad(key, "the value must be one line"));
        }
        if OWN_OPTIONS.contains(&name.as_str())
            || name.starts_with("pg1-")
            || name.starts_with("pg2-")
            || name.starts_with("tls-server-")
        {
            return Err(bad(key, "pgvigil sets this option itself (see the other [backup] keys)"));
        }
        // An asynchronous archive-push forks a process that outlives the archive_command, and
        // with it the lease check that allowed it.
        if name == "archive-async" {
            return Err(bad(key, "asynchronous archiving is not supported: a push must end with the archive_command"));
        }
    }
    if cfg.repo_path.is_none() && !cfg.options.contains_key("repo1-type") {
        return Err(bad(
            "backup.repo_path",
            "missing: set repo_path (a posix repository every member mounts at the same path) or \
             options.repo1-type (with its repo1-* options)",
        ));
    }
    if cfg.retention_full == 0 {
        return Err(bad("backup.retention_full", "must be at least 1"));
    }
    if cfg.retention_diff == Some(0) {
        return Err(bad("backup.retention_diff", "must be at least 1"));
    }
    let run_on = match cfg.run_on.as_str() {
        "primary" => vigil_core::backup::RunOn::Primary,
        "standby" => vigil_core::backup::RunOn::Standby,
        other => return Err(bad("backup.run_on", format!("{other:?}: write \"primary\" or \"standby\""))),
    };
    let mut schedule = BTreeMap::new();
    for (t, text) in [
        (BackupType::Full, &cfg.schedule.full),
        (BackupType::Diff, &cfg.schedule.diff),
        (BackupType::Incr, &cfg.schedule.incr),
    ] {
        if let Some(text) = text {
            let cron = Cron::parse(text).map_err(|e| bad(format!("backup.schedule.{}", t.name()), e))?;
            schedule.insert(t, cron);
        }
    }
    let verify = match &cfg.schedule.verify {
        Some(text) => Some(Cron::parse(text).map_err(|e| bad("backup.schedule.verify", e))?),
        None => None,
    };
    let verify_timeout = cfg.verify_timeout.unwrap_or(DEFAULT_VERIFY_TIMEOUT);
    if verify_timeout.is_zero() || verify_timeout > Duration::from_secs(7 * 86_400) {
        return Err(bad("backup.verify_timeout", "must be more than 0 and at most 7 days"));
    }
    let clone_max_age = cfg.clone_max_age.unwrap_or(Duration::from_secs(86_400));
    if clone_max_age.is_zero() {
        return Err(bad("backup.clone_max_age", "must be more than 0"));
    }
    let timeout = cfg.timeout.unwrap_or(DEFAULT_BACKUP_TIMEOUT);
    if timeout.is_zero() || timeout > Duration::from_secs(7 * 86_400) {
        return Err(bad("backup.timeout", "must be more than 0 and at most 7 days"));
    }
    let archive_timeout = cfg.archive_timeout.unwrap_or(DEFAULT_ARCHIVE_TIMEOUT);
    if archive_timeout.is_zero() || archive_timeout > vigil_core::MAX_TIMING {
        return Err(bad("backup.archive_timeout", "must be more than 0 and at most 24 hours"));
    }
    // The coordinator gives up a few minutes after the member's own kill, so that the member's
    // report of the failure (with pgBackRest's error) is the one recorded.
    let policy = Policy {
        schedule,
        timeout_ms: (timeout + Duration::from_secs(300)).as_millis() as u64,
        verify: vigil_core::verify::VerifyPolicy {
            schedule: verify,
            timeout_ms: (verify_timeout + Duration::from_secs(300)).as_millis() as u64,
        },
        run_on,
    };
    Ok(BackupSettings {
        raw: cfg.clone(),
        policy,
        timeout,
        archive_timeout,
        verify_timeout,
        clone_max_age,
        server: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(extra: &str) -> BackupConfig {
        toml::from_str(&format!("stanza = \"main\"\nrepo_path = \"/r\"\nrun_on = \"standby\"\n{extra}")).expect("toml")
    }

    fn tls() -> super::super::TlsConfig {
        toml::from_str("ca_file = \"/t/ca.pem\"\ncert_file = \"/t/a.pem\"\nkey_file = \"/t/a-key.pem\"").expect("toml")
    }

    #[test]
    fn the_tls_server_comes_from_tls_and_the_address_and_refuses_what_pgbackrest_cannot_check() {
        let names = ["a".to_string(), "b".to_string()];
        let e = tls_server(&table(""), None, "db-a.example:7000", &names).expect_err("no [tls]");
        assert_eq!(e.key, "backup.run_on");
        assert!(e.message.contains("[tls]"), "{}", e.message);
        let srv = tls_server(&table(""), Some(&tls()), "db-a.example:7000", &names).expect("ok").expect("a server");
        assert_eq!((srv.listen.as_str(), srv.host.as_str(), srv.port), ("db-a.example", "db-a.example", 8432));
        assert_eq!(srv.clients, names);
        assert_eq!(srv.key_file, PathBuf::from("/t/a-key.pem"));
        // An IP address cannot be checked by pgBackRest 2.45: a name is needed.
        let e = tls_server(&table(""), Some(&tls()), "10.0.0.5:7000", &names).expect_err("an IP");
        assert_eq!(e.key, "backup.server_host");
        let srv = tls_server(
            &table("server_host = \"db-a\"\nserver_port = 9000\nserver_clients = [\"x\"]"),
            Some(&tls()),
            "10.0.0.5:7000",
            &names,
        )
        .expect("ok")
        .expect("a server");
        assert_eq!(
            (srv.listen.as_str(), srv.host.as_str(), srv.port, srv.clients.len()),
            ("10.0.0.5", "db-a", 9000, 1)
        );
        let e = tls_server(&table("server_port = 0"), Some(&tls()), "db-a:1", &names).expect_err("port 0");
        assert_eq!(e.key, "backup.server_port");
        let e = tls_server(&table("server_clients = [\"a=b\"]"), Some(&tls()), "db-a:1", &names).expect_err("bad CN");
        assert_eq!(e.key, "backup.server_clients");
        // run_on = "primary": no server, whatever [tls] says.
        let mut primary = table("");
        primary.run_on = "primary".into();
        assert_eq!(tls_server(&primary, None, "10.0.0.5:1", &names).expect("ok"), None);
    }
}
