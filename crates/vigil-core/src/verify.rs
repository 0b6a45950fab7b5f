//! Proof of restorability: the scheduled verification of the repository, as cluster decisions.
//!
//! A verification restores the latest backup into a scratch directory on a standby's host,
//! recovers it to consistency with archiving off, checks that it answers queries, runs
//! `pgbackrest verify`, removes the scratch copy, and reports. The coordinator decides when one
//! is due and which standby runs it ([`decide`]); start and outcome are committed in the
//! replicated [`VerifyState`] (inside [`crate::backup::BackupState`]) and its history, like
//! backups. Wall time is passed in.

use crate::backup::{BackupCommand, BackupState, Cron};
use serde::{Deserialize, Serialize};

/// How many finished verifications the state keeps.
pub const VERIFY_HISTORY_LIMIT: usize = 50;

/// The verification that runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyRun {
    pub id: u64,
    /// The standby that restores the backup on its host.
    pub member: String,
    /// The cluster's epoch when it was assigned.
    pub epoch: u64,
    /// `scheduled` or `manual`.
    pub reason: String,
    pub assigned_unix_ms: u64,
}

/// What the member reports.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyOutcome {
    /// The backup restored (pgBackRest's label).
    #[serde(default)]
    pub label: Option<String>,
    /// `pgbackrest restore` into the scratch directory.
    #[serde(default)]
    pub restore_ms: u64,
    /// From the server's start to the end of recovery.
    #[serde(default)]
    pub recovery_ms: u64,
    /// `pgbackrest verify` of the repository.
    #[serde(default)]
    pub verify_ms: u64,
    /// Why it failed; None: the backup restored, recovered and answered, and the repository
    /// verified.
    #[serde(default)]
    pub error: Option<String>,
}

/// A finished verification, as committed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyRecord {
    pub id: u64,
    pub member: String,
    pub epoch: u64,
    pub reason: String,
    pub requested_unix_ms: u64,
    pub finished_unix_ms: u64,
    pub duration_ms: u64,
    pub outcome: VerifyOutcome,
}

impl VerifyRecord {
    pub fn ok(&self) -> bool {
        self.outcome.error.is_none()
    }
}

/// The verdict on `pgbackrest verify --output=text --verbose` (2.45 prints its report only with
/// `--verbose` when nothing is wrong) of the repository, from what pgBackRest
/// itself decided, never from words in its log: its exit status (anything but 0, or a signal,
/// fails), then the `status:` of each stanza in its report (2.45 exits 0 when it found damaged
/// files and reports `status: error`; a report without a status fails too). What it printed is
/// only the reason given: its `ERROR` lines, or else the report (at most five lines).
pub fn repository_verdict(code: Option<i32>, output: &str) -> Result<(), String> {
    let lines: Vec<&str> = output.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let last = |ls: &[&str]| ls[ls.len().saturating_sub(5)..].join("\n");
    if code != Some(0) {
        let errors: Vec<&str> = lines.iter().copied().filter(|l| l.contains("ERROR:")).collect();
        let shown = if errors.is_empty() { last(&lines) } else { last(&errors) };
        let status = code.map_or("killed by a signal".to_string(), |c| format!("exit code {c}"));
        return Err(if shown.is_empty() {
            format!("pgbackrest verify: {status}")
        } else {
            format!("pgbackrest verify: {status}: {shown}")
        });
    }
    let statuses: Vec<&str> = lines.iter().filter_map(|l| l.strip_prefix("status:")).map(str::trim).collect();
    if statuses.is_empty() {
        return Err(format!("pgbackrest verify: no status in its report: {}", last(&lines)));
    }
    if let Some(bad) = statuses.iter().find(|s| **s != "ok") {
        return Err(format!("pgbackrest verify: status {bad}: {}", last(&lines)));
    }
    Ok(())
}

/// The verification part of the replicated backup state. Every field defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyState {
    #[serde(default)]
    pub last_id: u64,
    #[serde(default)]
    pub running: Option<VerifyRun>,
    /// Oldest first, at most [`VERIFY_HISTORY_LIMIT`].
    #[serde(default)]
    pub done: Vec<VerifyRecord>,
    /// The wall time up to which the schedule has been served.
    #[serde(default)]
    pub served_unix_ms: u64,
}

/// Why a verification command is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VerifyRejected {
    NoBackup,
    Running(u64),
    StaleId {
        id: u64,
        latest: u64,
    },
    /// Not a standby of the current epoch.
    NotStandby {
        member: String,
        epoch: u64,
    },
    NotAssigned {
        id: u64,
        member: String,
    },
}

impl std::fmt::Display for VerifyRejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VerifyRejected::NoBackup => write!(f, "no backup to verify yet"),
            VerifyRejected::Running(id) => write!(f, "verification {id} is running"),
            VerifyRejected::StaleId { id, latest } => {
                write!(f, "verification {id} is not the next one (latest {latest})")
            }
            VerifyRejected::NotStandby { member, epoch } => {
                write!(f, "{member} is not a standby in epoch {epoch}")
            }
            VerifyRejected::NotAssigned { id, member } => write!(f, "verification {id} is not running on {member}"),
        }
    }
}

/// Apply a verification start: the next id, on a member other than the primary of this epoch,
/// once a backup succeeded, one at a time.
pub fn start(
    b: &mut BackupState,
    (id, member, e, reason, at): (u64, &str, u64, &str, u64),
    epoch: u64,
    primary: Option<&str>,
) -> Result<(String, String), VerifyRejected> {
    if !b.done.iter().any(|d| d.ok()) {
        return Err(VerifyRejected::NoBackup);
    }
    let v = &mut b.verify;
    if let Some(r) = &v.running {
        return Err(VerifyRejected::Running(r.id));
    }
    if v.last_id.checked_add(1) != Some(id) {
        return Err(VerifyRejected::StaleId { id, latest: v.last_id });
    }
    if e != epoch || primary == Some(member) {
        return Err(VerifyRejected::NotStandby { member: member.to_string(), epoch: e });
    }
    v.last_id = id;
    v.served_unix_ms = v.served_unix_ms.max(at);
    v.running =
        Some(VerifyRun { id, member: member.to_string(), epoch: e, reason: reason.to_string(), assigned_unix_ms: at });
    Ok((member.to_string(), format!("verification {id} ({reason}) of the latest backup started on {member}")))
}

/// Apply a verification's outcome, reported by the member it runs on.
pub fn finish(
    b: &mut BackupState,
    id: u64,
    member: &str,
    outcome: &VerifyOutcome,
    at: u64,
) -> Result<(String, String), VerifyRejected> {
    let v = &mut b.verify;
    if !v.running.as_ref().is_some_and(|r| r.id == id && r.member == member) {
        return Err(VerifyRejected::NotAssigned { id, member: member.to_string() });
    }
    let Some(run) = v.running.take() else { return Err(VerifyRejected::NotAssigned { id, member: member.into() }) };
    let duration_ms = at.saturating_sub(run.assigned_unix_ms);
    let label = outcome.label.as_deref().unwrap_or("?");
    let detail = match &outcome.error {
        None => format!("verification {id} passed on {member}: {label} restored and verified in {duration_ms} ms"),
        Some(e) => format!("verification {id} failed on {member} ({label}): {e}"),
    };
    v.done.push(VerifyRecord {
        id,
        member: run.member,
        epoch: run.epoch,
        reason: run.reason,
        requested_unix_ms: run.assigned_unix_ms,
        finished_unix_ms: at,
        duration_ms,
        outcome: outcome.clone(),
    });
    if v.done.len() > VERIFY_HISTORY_LIMIT {
        let excess = v.done.len() - VERIFY_HISTORY_LIMIT;
        v.done.drain(..excess);
    }
    Ok((member.to_string(), detail))
}

/// The verification policy (from `[backup]`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyPolicy {
    /// When verifications are due; None: only on request.
    pub schedule: Option<Cron>,
    /// A verification that has not reported after this long is recorded as failed.
    pub timeout_ms: u64,
}

/// The standby that verifies next: after the one that verified last (in name order, wrapping),
/// so the work and the proof spread over the hosts. None without a standby.
pub fn choose<'a>(standbys: &[&'a str], last: Option<&str>) -> Option<&'a str> {
    let mut s: Vec<&'a str> = standbys.to_vec();
    s.sort_unstable();
    s.dedup();
    match last {
        Some(l) => s.iter().find(|m| **m > l).or(s.first()).copied(),
        None => s.first().copied(),
    }
}

impl crate::Coordinator {
    /// The PostgreSQL members other than the primary whose fresh report (within
    /// `report_timeout`) shows a running standby: where a verification may run.
    pub(crate) fn running_standbys<'a>(&'a self, now: std::time::Instant, state: &crate::ClusterState) -> Vec<&'a str> {
        self.reports
            .iter()
            .filter(|(name, r)| {
                state.primary.as_deref() != Some(name.as_str())
                    && state.members.get(*name).is_some_and(|m| m.kind == crate::MemberKind::Postgres)
                    && now.saturating_duration_since(r.at) <= self.timings.report_timeout
                    && r.report.pg.running
                    && r.report.pg.in_recovery
            })
            .map(|(name, _)| name.as_str())
            .collect()
    }
}

/// The verification command due at `now_ms`: give up on one that overran its timeout, or start
/// the scheduled one on a standby (not while a backup runs or a switchover is under way, and
/// only once a backup succeeded).
pub fn decide(
    b: &BackupState,
    policy: &VerifyPolicy,
    epoch: u64,
    standbys: &[&str],
    busy: bool,
    now_ms: u64,
) -> Option<BackupCommand> {
    if let Some(r) = &b.verify.running {
        if now_ms.saturating_sub(r.assigned_unix_ms) > policy.timeout_ms {
            let outcome = VerifyOutcome {
                error: Some(format!("no outcome reported within {} s", policy.timeout_ms / 1000)),
                ..Default::default()
            };
            return Some(BackupCommand::VerifyFinish {
                id: r.id,
                member: r.member.clone(),
                outcome,
                at_unix_ms: now_ms,
            });
        }
        return None;
    }
    let cron = policy.schedule.as_ref()?;
    let first_ok = b.done.iter().find(|d| d.ok())?;
    if busy || b.running.is_some() {
        return None;
    }
    let served = b.verify.served_unix_ms.max(first_ok.finished_unix_ms);
    if cron.next_after(served).is_none_or(|slot| slot > now_ms) {
        return None;
    }
    let last = b.verify.done.last().map(|d| d.member.as_str());
    let member = choose(standbys, last)?;
    Some(BackupCommand::VerifyStart {
        id: b.verify.last_id + 1,
        member: member.to_string(),
        epoch,
        reason: "scheduled".into(),
        at_unix_ms: now_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::{BackupOutcome, BackupRecord, BackupRejected, BackupType, StanzaReady};

    const H: u64 = 3_600_000;

    fn with_backup() -> BackupState {
        let mut b = BackupState {
            stanza_ready: Some(StanzaReady { member: "a".into(), epoch: 1, at_unix_ms: 0 }),
            ..Default::default()
        };
        b.done.push(BackupRecord {
            id: 1,
            kind: BackupType::Full,
            member: "a".into(),
            epoch: 1,
            reason: "scheduled".into(),
            attempts: 1,
            requested_unix_ms: H / 2,
            finished_unix_ms: H / 2 + 1000,
            duration_ms: 1000,
            outcome: BackupOutcome { label: Some("F".into()), ..Default::default() },
        });
        b
    }

    #[test]
    fn the_repository_is_judged_by_pgbackrests_own_verdict_not_the_words() {
        // A pass: exit 0 and every stanza's status ok, whatever else it says (a warning about
        // WAL that expire removed names it "missing").
        let ok = "P00   WARN: unable to open missing file '.../000000010000000000000004-abc.gz'\n\
                  stanza: main\nstatus: ok\n  archiveId: 15-1, total WAL checked: 2, total valid WAL: 2\n\
                  \x20   missing: 0, checksum invalid: 0, size invalid: 0, other: 0\n\
                  \x20 backup: 20261201-025711F, status: valid, total files checked: 964, total valid files: 964\n";
        assert_eq!(repository_verdict(Some(0), ok), Ok(()));
        // pgBackRest 2.45 exits 0 with a damaged file: its report's status decides.
        let damaged =
            "stanza: main\nstatus: error\n  archiveId: 15-1, total WAL checked: 3, total valid WAL: 2\n    other: 1\n";
        assert_eq!(
            repository_verdict(Some(0), damaged),
            Err("pgbackrest verify: status error: stanza: main\nstatus: error\n\
                 archiveId: 15-1, total WAL checked: 3, total valid WAL: 2\nother: 1"
                .into())
        );
        assert_eq!(
            repository_verdict(Some(0), "verify done\n"),
            Err("pgbackrest verify: no status in its report: verify done".into())
        );
        // A non-zero exit fails even with an ok report; the reason is its ERROR lines.
        let failed = "stanza: main\nstatus: ok\n\
                      P00  ERROR: [028]: 1 fatal errors encountered, see log for details\n";
        assert_eq!(
            repository_verdict(Some(28), failed),
            Err("pgbackrest verify: exit code 28: P00  ERROR: [028]: 1 fatal errors encountered, see log for details"
                .into())
        );
        assert_eq!(repository_verdict(Some(1), "all fine\n"), Err("pgbackrest verify: exit code 1: all fine".into()));
        assert_eq!(repository_verdict(None, ""), Err("pgbackrest verify: killed by a signal".into()));
        let long: String = (1..=9).map(|i| format!("line {i}\n")).collect();
        assert_eq!(
            repository_verdict(Some(2), &long),
            Err("pgbackrest verify: exit code 2: line 5\nline 6\nline 7\nline 8\nline 9".into())
        );
    }

    fn hourly() -> VerifyPolicy {
        VerifyPolicy { schedule: Some(Cron::parse("0 * * * *").expect("cron")), timeout_ms: H }
    }

    fn apply(b: &mut BackupState, cmd: &BackupCommand) -> Result<(), BackupRejected> {
        b.apply(cmd, 1, Some("a")).map(drop)
    }

    #[test]
    fn a_due_verification_runs_on_a_standby_once_per_slot() {
        let mut b = with_backup();
        let p = hourly();
        assert_eq!(decide(&b, &p, 1, &["c", "b"], false, H - 1), None, "the first slot after the backup is at 1 h");
        let cmd = decide(&b, &p, 1, &["c", "b"], false, H + 5).expect("due");
        assert_eq!(
            cmd,
            BackupCommand::VerifyStart {
                id: 1,
                member: "b".into(),
                epoch: 1,
                reason: "scheduled".into(),
                at_unix_ms: H + 5
            }
        );
        apply(&mut b, &cmd).expect("applies");
        assert_eq!(decide(&b, &p, 1, &["b", "c"], false, H + 10), None, "one at a time");
        let outcome = VerifyOutcome { label: Some("F".into()), ..Default::default() };
        let done = BackupCommand::VerifyFinish { id: 1, member: "b".into(), outcome, at_unix_ms: H + 60_000 };
        apply(&mut b, &done).expect("finishes");
        assert_eq!(b.verify.done[0].duration_ms, 59_995);
        assert!(b.verify.done[0].ok());
        assert_eq!(decide(&b, &p, 1, &["b", "c"], false, H + 70_000), None, "the slot is served");
        // The next slot goes to the next standby.
        let next = decide(&b, &p, 1, &["b", "c"], false, 2 * H).expect("due");
        assert!(matches!(next, BackupCommand::VerifyStart { id: 2, ref member, .. } if member == "c"), "{next:?}");
    }

    #[test]
    fn nothing_is_verified_without_a_backup_a_standby_or_while_busy() {
        let p = hourly();
        let mut none = with_backup();
        none.done.clear();
        assert_eq!(decide(&none, &p, 1, &["b"], false, 5 * H), None, "no backup yet");
        let b = with_backup();
        assert_eq!(decide(&b, &p, 1, &[], false, 5 * H), None, "no standby");
        assert_eq!(decide(&b, &p, 1, &["b"], true, 5 * H), None, "a backup starts or a switchover runs");
        assert_eq!(decide(&b, &VerifyPolicy { schedule: None, timeout_ms: H }, 1, &["b"], false, 5 * H), None);
    }

    #[test]
    fn a_silent_verification_fails_after_its_timeout() {
        let mut b = with_backup();
        let p = hourly();
        let start = decide(&b, &p, 1, &["b"], false, H).expect("due");
        apply(&mut b, &start).expect("applies");
        assert_eq!(decide(&b, &p, 1, &["b"], false, 2 * H), None);
        let cmd = decide(&b, &p, 1, &["b"], false, 2 * H + 1).expect("timed out");
        apply(&mut b, &cmd).expect("applies");
        let rec = &b.verify.done[0];
        assert!(rec.outcome.error.as_deref().is_some_and(|e| e.contains("no outcome")), "{rec:?}");
    }

    #[test]
    fn starts_and_reports_are_checked() {
        let mut b = with_backup();
        let on_primary =
            BackupCommand::VerifyStart { id: 1, member: "a".into(), epoch: 1, reason: "manual".into(), at_unix_ms: 1 };
        assert!(matches!(apply(&mut b, &on_primary), Err(BackupRejected::Verify(VerifyRejected::NotStandby { .. }))));
        let stale =
            BackupCommand::VerifyStart { id: 1, member: "b".into(), epoch: 0, reason: "m".into(), at_unix_ms: 1 };
        assert!(apply(&mut b, &stale).is_err(), "an older epoch's decision");
        let ok = BackupCommand::VerifyStart { id: 1, member: "b".into(), epoch: 1, reason: "m".into(), at_unix_ms: 1 };
        apply(&mut b, &ok).expect("applies");
        assert!(matches!(apply(&mut b, &ok), Err(BackupRejected::Verify(VerifyRejected::Running(1)))));
        let outcome = VerifyOutcome { error: Some("damaged".into()), ..Default::default() };
        let forged = BackupCommand::VerifyFinish { id: 1, member: "c".into(), outcome: outcome.clone(), at_unix_ms: 2 };
        assert!(apply(&mut b, &forged).is_err(), "only the assigned member reports");
        let real = BackupCommand::VerifyFinish { id: 1, member: "b".into(), outcome, at_unix_ms: 2 };
        apply(&mut b, &real).expect("applies");
        assert!(!b.verify.done[0].ok());
        let mut empty = with_backup();
        empty.done.clear();
        assert!(matches!(apply(&mut empty, &ok), Err(BackupRejected::Verify(VerifyRejected::NoBackup))));
    }

    #[test]
    fn the_next_standby_wraps_around() {
        assert_eq!(choose(&["c", "b"], None), Some("b"));
        assert_eq!(choose(&["c", "b"], Some("b")), Some("c"));
        assert_eq!(choose(&["c", "b"], Some("c")), Some("b"));
        assert_eq!(choose(&[], Some("c")), None);
    }
}
