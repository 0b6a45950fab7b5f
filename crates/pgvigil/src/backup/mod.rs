//! Backups that follow the primary: the IO shell around [`vigil_core::backup`].
//!
//! # Layout
//! - [`pgbackrest`]: this member's `pgbackrest.conf` and running pgBackRest with a deadline.
//! - [`archive`]: the archive command's permit (only the primary holding its lease pushes WAL).
//! - [`runner`]: the member's task: creates and checks the stanza as primary, runs the backups
//!   the cluster assigned to it, reports their outcome.
//! - [`api`]: `POST /backup`, `GET /backups`, and the members' reports, carried out by the
//!   coordinator.
//! - [`cli`]: `pgvigil backup`, `pgvigil backups`.
//! - [`health`]: the archive's health as gauges (age of the last archived segment, `.ready`
//!   files, the archiver's failures) and the repository's size.
//! - [`clone`]: a standby created from the repository (the agent falls back to `pg_basebackup`).
//! - [`recovery`]: restoring a backup into a directory and recovering it once (archiving off).
//! - [`verifier`]: the member's part of the scheduled verification (restore on this host into a
//!   scratch directory, recover, query, `pgbackrest verify`, remove the scratch copy, report).
//! - [`server`]: `run_on = "standby"`: this member's pgBackRest TLS server, supervised (the
//!   standby that backs up reaches the primary through it).
//! - [`restore`]: `pgvigil restore`, a new cluster from another's stanza, to a point in time.

pub mod api;
pub mod archive;
pub mod cli;
pub mod clone;
pub mod health;
pub mod pgbackrest;
pub mod recovery;
pub mod restore;
mod runner;
pub mod server;
pub mod verifier;

use crate::config::Settings;
use crate::daemon::Shared;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use vigil_core::backup::{BackupCommand, Policy};
use vigil_core::ClusterState;

pub use archive::postgres_parameters as archive_parameters;

/// The coordinator's backup commands for this tick (see [`vigil_core::backup::decide`]). A
/// coordinator without `[backup]` schedules nothing, but still moves a backup whose member was
/// deposed and gives up on one that never reported.
/// The coordinator's backup policy: the configured schedule, or none (a backup that was running
/// when `[backup]` was removed still times out).
pub fn policy(settings: &crate::config::Settings) -> Policy {
    match &settings.backup {
        Some(b) => b.policy.clone(),
        None => Policy {
            schedule: Default::default(),
            timeout_ms: crate::config::DEFAULT_BACKUP_TIMEOUT.as_millis() as u64 + 300_000,
            verify: vigil_core::verify::VerifyPolicy {
                schedule: None,
                timeout_ms: crate::config::DEFAULT_VERIFY_TIMEOUT.as_millis() as u64 + 300_000,
            },
            run_on: Default::default(),
        },
    }
}

pub fn describe(cmd: &BackupCommand) -> String {
    match cmd {
        BackupCommand::StanzaReady { member, epoch, .. } => {
            format!("backup stanza ready (by {member} in epoch {epoch})")
        }
        BackupCommand::Start { id, kind, member, reason, .. } => {
            format!("backup {id} ({}, {reason}) on {member}", kind.name())
        }
        BackupCommand::Retry { id, member, epoch, .. } => format!("retry of backup {id} on {member} (epoch {epoch})"),
        BackupCommand::Finish { id, member, outcome, .. } => match &outcome.error {
            None => format!("backup {id} done on {member}"),
            Some(e) => format!("backup {id} failed on {member}: {e}"),
        },
        BackupCommand::VerifyStart { id, member, reason, .. } => format!("verification {id} ({reason}) on {member}"),
        BackupCommand::VerifyFinish { id, member, outcome, .. } => match &outcome.error {
            None => format!("verification {id} passed on {member}"),
            Some(e) => format!("verification {id} failed on {member}: {e}"),
        },
    }
}

/// The backup gauges, from the replicated record (the same on every member), set at each scrape:
/// per type the last success (time, size, duration), the last failure, whether one runs.
pub fn set_metrics(state: &ClusterState) {
    use vigil_core::backup::BackupType;
    let b = &state.backup;
    for t in BackupType::ALL {
        let last_ok = b.done.iter().rev().find(|d| d.ok() && d.outcome.taken.unwrap_or(d.kind) == t);
        let (at, size, took) = last_ok.map_or((0.0, 0.0, 0.0), |d| {
            let took = d.outcome.stopped_unix_ms.saturating_sub(d.outcome.started_unix_ms);
            (d.finished_unix_ms as f64 / 1000.0, d.outcome.size_bytes as f64, took as f64 / 1000.0)
        });
        metrics::gauge!("pgvigil_backup_last_success_timestamp_seconds", "type" => t.name()).set(at);
        metrics::gauge!("pgvigil_backup_last_size_bytes", "type" => t.name()).set(size);
        metrics::gauge!("pgvigil_backup_last_duration_seconds", "type" => t.name()).set(took);
    }
    let failed = b.done.iter().rev().find(|d| !d.ok()).map_or(0.0, |d| d.finished_unix_ms as f64 / 1000.0);
    metrics::gauge!("pgvigil_backup_last_failure_timestamp_seconds").set(failed);
    metrics::gauge!("pgvigil_backup_running").set(if b.running.is_some() { 1.0 } else { 0.0 });
    // The last verification: when it ended, whether it passed, how long it took.
    let last = b.verify.done.last();
    metrics::gauge!("pgvigil_backup_verify_last_timestamp_seconds")
        .set(last.map_or(0.0, |d| d.finished_unix_ms as f64 / 1000.0));
    metrics::gauge!("pgvigil_backup_verify_last_success").set(if last.is_some_and(|d| d.ok()) { 1.0 } else { 0.0 });
    metrics::gauge!("pgvigil_backup_verify_last_duration_seconds")
        .set(last.map_or(0.0, |d| d.duration_ms as f64 / 1000.0));
    let ok_at = b.verify.done.iter().rev().find(|d| d.ok()).map_or(0.0, |d| d.finished_unix_ms as f64 / 1000.0);
    metrics::gauge!("pgvigil_backup_verify_last_success_timestamp_seconds").set(ok_at);
}

/// The settings PostgreSQL gets on its command line when `[backup]` is on (none otherwise).
pub fn postgres_parameters(settings: &Settings) -> anyhow::Result<Vec<(String, String)>> {
    let Some(b) = &settings.backup else { return Ok(vec![]) };
    let exe = std::env::current_exe()
        .map_err(|e| anyhow::anyhow!("locate the pgvigil binary (for the archive command): {e}"))?;
    Ok(archive_parameters(&exe, &pgbackrest::permit_socket(settings), b, &pgbackrest::config_path(settings)))
}

/// Before PostgreSQL starts: write this member's pgBackRest files, then serve archive permits and
/// run the backup runner until `shutdown`. Nothing without `[backup]` or on a witness.
pub fn start(shared: &Arc<Shared>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let Some(b) = shared.settings.backup.clone() else { return Ok(()) };
    if shared.settings.raw.kind != vigil_core::MemberKind::Postgres {
        return Ok(());
    }
    let pg = crate::agent::pg_settings(shared)?;
    pgbackrest::prepare(&shared.settings, &b, &pg)?;
    let socket = pgbackrest::permit_socket(&shared.settings);
    // Permits are answered until the process exits, not only until the agent is told to stop:
    // PostgreSQL's archiver pushes its last segments while the agent stops it (a primary still
    // holds its lease then), and a refused push would leave them unarchived.
    tokio::spawn(archive::serve(shared.clone(), socket, pg.run_as, CancellationToken::new()));
    let pgb = pgbackrest::PgBackRest::of(&shared.settings, &b, &pg);
    let verify_pgb = pgbackrest::PgBackRest::of(&shared.settings, &b, &pg);
    let health_pgb = std::sync::Arc::new(pgbackrest::PgBackRest::of(&shared.settings, &b, &pg));
    tokio::spawn(health::run(health_pgb, b.raw.repo_path.clone(), shutdown.clone()));
    tokio::spawn(verifier::run(shared.clone(), verify_pgb, b.verify_timeout, shutdown.clone()));
    if b.server.is_some() {
        let server_pgb = pgbackrest::PgBackRest::of(&shared.settings, &b, &pg);
        tokio::spawn(server::run(shared.clone(), server_pgb, shutdown.clone()));
    }
    tokio::spawn(runner::run(shared.clone(), pgb, b, shutdown));
    Ok(())
}
