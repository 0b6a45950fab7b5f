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
    /// Where backups run: `primary` (pgBackRest 2.45's `backup-standby` still needs the primary
    /// reachable through a pgBackRest server or SSH, which pgvigil does not set up yet).
    #[serde(default = "default_run_on")]
    pub run_on: String,
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
        if OWN_OPTIONS.contains(&name.as_str()) || name.starts_with("pg1-") || name.starts_with("pg2-") {
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
    match cfg.run_on.as_str() {
        "primary" => {}
        "standby" => {
            return Err(bad(
                "backup.run_on",
                "\"standby\" is not supported yet: pgBackRest 2.45 backs up from a standby only with \
                 backup-standby=y and the primary reachable (pg2-host over SSH or TLS); use \"primary\"",
            ))
        }
        other => return Err(bad("backup.run_on", format!("{other:?}: write \"primary\""))),
    }
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
    };
    Ok(BackupSettings { raw: cfg.clone(), policy, timeout, archive_timeout, verify_timeout, clone_max_age })
}
