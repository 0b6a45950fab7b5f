//! Backups over HTTP and between members. `POST /backup {"type": "full|diff|incr"}` (an
//! operator's request, with the token) and a member's report of its stanza or of a backup's end
//! (`backup_report`, only over the authenticated peer port or from this daemon itself) are
//! carried out by the coordinator, which proposes the command and answers once it is committed.
//! `GET /backups` answers from this member: the replicated record and `pgbackrest info`.

use crate::admin::{Answer, ApiError};
use crate::coordination::wall_ms;
use crate::daemon::Shared;
use serde::{Deserialize, Serialize};
use serde_json::json;
use vigil_core::backup::{BackupCommand, BackupType};
use vigil_core::Command;

/// The body of `POST /backup`.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BackupBody {
    /// `full`, `diff` or `incr`; default `full`.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// Recorded with the backup.
    #[serde(default)]
    pub reason: Option<String>,
}

/// A member's report (the body of the internal `backup_report` action).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    pub command: BackupCommand,
}

pub enum Body {
    Request {
        kind: BackupType,
        reason: String,
    },
    Report(BackupCommand),
    /// `POST /backup/verify`: verify the latest backup now, on a running standby.
    Verify,
}

pub fn parse(action: &str, body: &[u8]) -> Result<Body, String> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) { b"{}" } else { body };
    if action == "backup_report" {
        let r: Report = serde_json::from_slice(body).map_err(|e| format!("malformed report: {e}"))?;
        return match r.command {
            c @ (BackupCommand::StanzaReady { .. }
            | BackupCommand::Finish { .. }
            | BackupCommand::VerifyFinish { .. }) => Ok(Body::Report(c)),
            _ => Err("a member reports only its stanza, a backup's end or a verification's end".into()),
        };
    }
    if action == "backup_verify" {
        let _: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body)
            .ok()
            .filter(|m: &serde_json::Map<String, serde_json::Value>| m.is_empty())
            .ok_or("malformed body: POST /backup/verify takes no fields")?;
        return Ok(Body::Verify);
    }
    let b: BackupBody = serde_json::from_slice(body).map_err(|e| format!("malformed body: {e}"))?;
    let kind = match b.kind.as_deref() {
        None => BackupType::Full,
        Some(t) => {
            BackupType::parse(t).ok_or_else(|| format!("malformed body: type {t:?} is not full, diff or incr"))?
        }
    };
    let reason = match b.reason {
        Some(r) if !r.trim().is_empty() => format!("manual: {}", r.trim()),
        _ => "manual".into(),
    };
    Ok(Body::Request { kind, reason })
}

/// On the coordinator.
pub async fn execute(shared: &Shared, body: Body) -> Answer {
    match body {
        Body::Request { kind, reason } => request(shared, kind, reason).await,
        Body::Report(cmd) => report(shared, cmd).await,
        Body::Verify => verify_request(shared).await,
    }
}

/// Start a verification of the latest backup on a running standby (chosen as the schedule does).
async fn verify_request(shared: &Shared) -> Answer {
    let state = shared.committed();
    let Some(primary) = state.primary.clone() else {
        return ApiError::Conflict("the cluster has no primary".into()).into();
    };
    let v = &state.backup.verify;
    if let Some(r) = &v.running {
        return ApiError::Conflict(format!("verification {} is running on {}", r.id, r.member)).into();
    }
    if !state.backup.done.iter().any(|d| d.ok()) {
        return ApiError::Conflict("no backup to verify yet".into()).into();
    }
    let reports = shared.coordinator.reports().await;
    let standbys: Vec<&str> = reports
        .iter()
        .filter(|(name, r)| **name != primary && r.pg.running && r.pg.in_recovery)
        .map(|(name, _)| name.as_str())
        .collect();
    let last = v.done.last().map(|d| d.member.as_str());
    let Some(member) = vigil_core::verify::choose(&standbys, last).map(str::to_string) else {
        return ApiError::Conflict("no running standby to verify on".into()).into();
    };
    let id = v.last_id + 1;
    let cmd = Command::Backup {
        backup: BackupCommand::VerifyStart {
            id,
            member: member.clone(),
            epoch: state.epoch,
            reason: "manual".into(),
            at_unix_ms: wall_ms(),
        },
    };
    tracing::warn!(command = ?cmd, "operator request: verify the latest backup");
    if let Err(e) = shared.propose(&cmd, shared.settings.timings.lease_timeout).await {
        return ApiError::not_committed(&e).into();
    }
    let after = shared.committed();
    let started = after.backup.verify.running.as_ref().is_some_and(|r| r.id == id)
        || after.backup.verify.done.iter().any(|d| d.id == id);
    if !started {
        return ApiError::Conflict("not started: the cluster changed meanwhile; try again".into()).into();
    }
    Answer::ok(202, format!("verification {id} started on {member}")).with("id", id).with("member", member)
}

async fn request(shared: &Shared, kind: BackupType, reason: String) -> Answer {
    let state = shared.committed();
    if state.primary.is_none() {
        return ApiError::Conflict("the cluster has no primary".into()).into();
    }
    if state.backup.stanza_ready.is_none() {
        return ApiError::Conflict("the backup stanza is not created yet (is [backup] configured?)".into()).into();
    }
    if let Some(r) = &state.backup.running {
        return ApiError::Conflict(format!("backup {} ({}) is running on {}", r.id, r.kind.name(), r.member)).into();
    }
    if state.switchover.is_some() {
        return ApiError::Conflict("a switchover is pending; back up once it has ended".into()).into();
    }
    let id = state.backup.last_id + 1;
    // Placed as the schedule places one (`run_on`): the coordinator's choice from its reports.
    let Some(placed) = shared.coordinator.backup_placement().await else {
        return ApiError::Conflict("not the coordinator any more; try again".into()).into();
    };
    if let Some(note) = &placed.note {
        tracing::warn!("backup {id} runs on the primary, not on a standby: {note}");
    }
    let member = placed.member.clone();
    let cmd = Command::Backup {
        backup: BackupCommand::Start {
            id,
            kind,
            member: placed.member,
            epoch: state.epoch,
            reason,
            serves: vec![],
            at_unix_ms: wall_ms(),
            source: placed.source.map(Box::new),
            note: placed.note,
        },
    };
    tracing::warn!(command = ?cmd, "operator request: backup");
    if let Err(e) = shared.propose(&cmd, shared.settings.timings.lease_timeout).await {
        return ApiError::not_committed(&e).into();
    }
    let after = shared.committed();
    let started =
        after.backup.running.as_ref().is_some_and(|r| r.id == id) || after.backup.done.iter().any(|d| d.id == id);
    if !started {
        return ApiError::Conflict("not started: the cluster changed meanwhile; try again".into()).into();
    }
    Answer::ok(202, format!("backup {id} ({}) started on {member}", kind.name()))
        .with("id", id)
        .with("member", member)
        .with("type", kind.name())
}

async fn report(shared: &Shared, cmd: BackupCommand) -> Answer {
    let command = Command::Backup { backup: cmd.clone() };
    if let Err(e) = shared.propose(&command, shared.settings.timings.lease_timeout).await {
        return ApiError::not_committed(&e).into();
    }
    let after = shared.committed();
    let recorded = match &cmd {
        BackupCommand::StanzaReady { .. } => after.backup.stanza_ready.is_some(),
        BackupCommand::Finish { id, member, .. } => {
            after.backup.done.iter().any(|d| d.id == *id && d.member == *member)
        }
        BackupCommand::VerifyFinish { id, member, .. } => {
            after.backup.verify.done.iter().any(|d| d.id == *id && d.member == *member)
        }
        _ => false,
    };
    if recorded {
        Answer::ok(200, "recorded")
    } else {
        ApiError::Conflict("not recorded: no longer assigned to this member".into()).into()
    }
}

/// `GET /backups`: the replicated record, and what the repository holds (`pgbackrest info`, run
/// on this member; null with the error where it cannot run, e.g. on a witness).
pub async fn list(shared: &Shared) -> Answer {
    let state = shared.committed();
    let b = &state.backup;
    let mut repository = serde_json::Value::Null;
    let mut repository_error = serde_json::Value::Null;
    match (&shared.settings.backup, shared.settings.raw.kind) {
        (Some(cfg), vigil_core::MemberKind::Postgres) => match crate::agent::pg_settings(shared) {
            Ok(pg) => match super::pgbackrest::PgBackRest::of(&shared.settings, cfg, &pg).info().await {
                Ok(info) => repository = info,
                Err(e) => repository_error = format!("{e:#}").into(),
            },
            Err(e) => repository_error = format!("{e:#}").into(),
        },
        _ => repository_error = "this member has no [backup] table or runs no PostgreSQL".into(),
    }
    Answer::ok(200, format!("{} backups recorded", b.done.len()))
        .with("stanza_ready", json!(b.stanza_ready))
        .with("running", json!(b.running))
        .with("backups", json!(b.done))
        .with("verifying", json!(b.verify.running))
        .with("verifications", json!(b.verify.done))
        .with("repository", repository)
        .with("repository_error", repository_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_bodies() {
        assert!(matches!(parse("backup", b""), Ok(Body::Request { kind: BackupType::Full, .. })));
        assert!(matches!(parse("backup", br#"{"type":"incr"}"#), Ok(Body::Request { kind: BackupType::Incr, .. })));
        assert!(parse("backup", br#"{"type":"weekly"}"#).is_err_and(|e| e.contains("weekly")));
        assert!(parse("backup", br#"{"typo":"full"}"#).is_err_and(|e| e.contains("typo")));
        let start = BackupCommand::Start {
            id: 1,
            kind: BackupType::Full,
            member: "a".into(),
            epoch: 1,
            reason: String::new(),
            serves: vec![],
            at_unix_ms: 0,
            source: None,
            note: None,
        };
        let forged = serde_json::to_vec(&Report { command: start }).expect("encode");
        assert!(parse("backup_report", &forged).is_err(), "a member cannot start a backup by report");
    }
}
