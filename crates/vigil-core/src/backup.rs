//! Backups as cluster decisions: the schedule (cron-like expressions, [`Cron`]), the replicated
//! record of backups ([`BackupState`]: the one running, the finished ones), the commands that
//! change it, and [`decide`]: which backup is due at wall time T and which member runs it.
//!
//! Only the coordinator decides; the member named runs pgBackRest and reports the outcome, which is
//! committed with the epoch and member it was assigned to. A backup whose member was deposed is
//! handed to the new primary (`RetryBackup`), so it is neither lost nor counted twice: the old
//! member's late report names an assignment that no longer exists and is refused.
//!
//! Wall time (Unix milliseconds, UTC) is passed in: schedules are about the calendar, not about
//! the monotonic clock of one process.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How many finished backups the state keeps (older ones are dropped; pgBackRest's own `info`
/// lists what the repository holds).
pub const BACKUP_HISTORY_LIMIT: usize = 100;

/// pgBackRest's backup types, ordered by how much they cover (a full covers a diff, a diff an incr).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupType {
    Incr,
    Diff,
    Full,
}

impl BackupType {
    pub const ALL: [BackupType; 3] = [BackupType::Full, BackupType::Diff, BackupType::Incr];

    pub fn name(self) -> &'static str {
        match self {
            BackupType::Full => "full",
            BackupType::Diff => "diff",
            BackupType::Incr => "incr",
        }
    }

    pub fn parse(s: &str) -> Option<BackupType> {
        Self::ALL.into_iter().find(|t| t.name() == s)
    }
}

/// The backup being taken: who runs it, for which epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupRun {
    pub id: u64,
    pub kind: BackupType,
    /// The member that runs it: the primary of `epoch`.
    pub member: String,
    pub epoch: u64,
    /// `scheduled` or `manual` (with the requester's reason, if any).
    pub reason: String,
    pub requested_unix_ms: u64,
    /// When it was given to `member` (the request, or the retry after a change of primary).
    pub assigned_unix_ms: u64,
    /// 1, plus one per change of primary while it ran.
    pub attempts: u32,
    /// Run on a standby (`run_on = "standby"`): the primary of `epoch` as that standby's
    /// pgBackRest reaches it (`pg1` over TLS). None: `member` is the primary and backs itself up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<BackupSource>,
}

/// What the member that ran a backup reports (from pgBackRest's `info`, or its error).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupOutcome {
    /// pgBackRest's label (`20261130-201500F`); None when it failed.
    #[serde(default)]
    pub label: Option<String>,
    /// The type pgBackRest took (a diff or incr without a full becomes a full).
    #[serde(default)]
    pub taken: Option<BackupType>,
    #[serde(default)]
    pub started_unix_ms: u64,
    #[serde(default)]
    pub stopped_unix_ms: u64,
    /// The database's size as backed up, and what the backup added to the repository.
    #[serde(default)]
    pub size_bytes: u64,
    #[serde(default)]
    pub repo_size_bytes: u64,
    /// The WAL range the backup needs to be consistent.
    #[serde(default)]
    pub wal_start: Option<String>,
    #[serde(default)]
    pub wal_stop: Option<String>,
    /// Why it failed; None: it succeeded.
    #[serde(default)]
    pub error: Option<String>,
}

/// A finished backup, as committed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupRecord {
    pub id: u64,
    pub kind: BackupType,
    pub member: String,
    pub epoch: u64,
    pub reason: String,
    pub attempts: u32,
    pub requested_unix_ms: u64,
    pub finished_unix_ms: u64,
    pub duration_ms: u64,
    pub outcome: BackupOutcome,
}

impl BackupRecord {
    pub fn ok(&self) -> bool {
        self.outcome.error.is_none()
    }
}

/// The backup part of the replicated state. Every field defaults, so older snapshots load.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupState {
    /// When the stanza was first created and checked (by which member, in which epoch); no
    /// backup is started before.
    #[serde(default)]
    pub stanza_ready: Option<StanzaReady>,
    /// The id of the latest backup started; each takes the next one.
    #[serde(default)]
    pub last_id: u64,
    #[serde(default)]
    pub running: Option<BackupRun>,
    /// Finished backups, oldest first (at most [`BACKUP_HISTORY_LIMIT`]).
    #[serde(default)]
    pub done: Vec<BackupRecord>,
    /// Per type, the wall time up to which its schedule has been served: a slot at or before it
    /// never starts a backup again.
    #[serde(default)]
    pub served_unix_ms: BTreeMap<BackupType, u64>,
    /// The scheduled verifications of the repository (see [`crate::verify`]).
    #[serde(default)]
    pub verify: crate::verify::VerifyState,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StanzaReady {
    pub member: String,
    pub epoch: u64,
    pub at_unix_ms: u64,
}

/// Why a backup command is refused (see [`crate::Rejected::Backup`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackupRejected {
    /// The stanza is not created yet.
    NoStanza,
    /// Another backup is running.
    Running(u64),
    /// Not the next id (another start was applied first).
    StaleId { id: u64, latest: u64 },
    /// The member is not the primary of that epoch (any more).
    NotPrimary { member: String, epoch: u64 },
    /// No such backup runs, or it runs elsewhere now.
    NotAssigned { id: u64, member: String, epoch: u64 },
    /// A verification command was refused.
    Verify(crate::verify::VerifyRejected),
}

impl std::fmt::Display for BackupRejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackupRejected::NoStanza => write!(f, "the backup stanza is not created yet"),
            BackupRejected::Running(id) => write!(f, "backup {id} is running"),
            BackupRejected::StaleId { id, latest } => write!(f, "backup {id} is not the next one (latest {latest})"),
            BackupRejected::NotPrimary { member, epoch } => write!(f, "{member} is not the primary of epoch {epoch}"),
            BackupRejected::NotAssigned { id, member, epoch } => {
                write!(f, "backup {id} is not running on {member} in epoch {epoch}")
            }
            BackupRejected::Verify(v) => write!(f, "{v}"),
        }
    }
}

/// The cluster's backup commands (carried by `Command::Backup`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "backup_op", rename_all = "snake_case")]
pub enum BackupCommand {
    /// The primary of `epoch` created and checked the stanza.
    StanzaReady { member: String, epoch: u64, at_unix_ms: u64 },
    /// Start backup `id` of `kind` on `member`, the primary of `epoch`. `serves`: the scheduled
    /// types whose slots up to `at_unix_ms` this backup serves (empty for a manual one).
    Start {
        id: u64,
        kind: BackupType,
        member: String,
        epoch: u64,
        reason: String,
        #[serde(default)]
        serves: Vec<BackupType>,
        at_unix_ms: u64,
        /// On a standby: the primary of `epoch` as `member` reaches it (see [`BackupRun::source`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        source: Option<Box<BackupSource>>,
        /// Why a backup meant for a standby runs on the primary (recorded in its history line).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
    },
    /// Backup `id`, assigned in `from_epoch` (to `from_member`), moves to `member` in `epoch`:
    /// its member was deposed (a new primary), or the standby that ran it is gone.
    Retry {
        id: u64,
        from_epoch: u64,
        member: String,
        epoch: u64,
        at_unix_ms: u64,
        /// The member it moves away from (None in records older than standby backups).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from_member: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        source: Option<Box<BackupSource>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
    },
    /// Backup `id` ended on `member` in `epoch`, as `outcome` says.
    Finish { id: u64, member: String, epoch: u64, outcome: BackupOutcome, at_unix_ms: u64 },
    /// Verification `id` of the latest backup starts on `member`, a standby in `epoch`.
    VerifyStart { id: u64, member: String, epoch: u64, reason: String, at_unix_ms: u64 },
    /// Verification `id` ended on `member`, as `outcome` says.
    VerifyFinish { id: u64, member: String, outcome: crate::verify::VerifyOutcome, at_unix_ms: u64 },
}

impl BackupCommand {
    /// The wall time the command carries (for its history line).
    pub fn at_unix_ms(&self) -> u64 {
        match self {
            BackupCommand::StanzaReady { at_unix_ms, .. }
            | BackupCommand::Start { at_unix_ms, .. }
            | BackupCommand::Retry { at_unix_ms, .. }
            | BackupCommand::Finish { at_unix_ms, .. }
            | BackupCommand::VerifyStart { at_unix_ms, .. }
            | BackupCommand::VerifyFinish { at_unix_ms, .. } => *at_unix_ms,
        }
    }
}

/// What a command did, for the history line (None: nothing to record).
pub type Applied = Option<(String, String)>;

impl BackupState {
    /// Apply `cmd` given the cluster's epoch and primary. Ok(Some((member, detail))) is recorded
    /// as an event by the caller.
    pub fn apply(&mut self, cmd: &BackupCommand, epoch: u64, primary: Option<&str>) -> Result<Applied, BackupRejected> {
        let is_primary = |member: &str, e: u64| e == epoch && primary == Some(member);
        // Where a backup may be placed: on the primary of `e` itself, or (with a source) on
        // another member while `e` is the current epoch and has a primary.
        let placed = |member: &str, e: u64, source: &Option<Box<BackupSource>>| match source {
            None => is_primary(member, e),
            Some(_) => e == epoch && primary.is_some_and(|p| p != member),
        };
        let fell_back =
            |note: &Option<String>| note.as_ref().map_or(String::new(), |n| format!(" (not on a standby: {n})"));
        match cmd {
            BackupCommand::StanzaReady { member, epoch: e, at_unix_ms } => {
                if self.stanza_ready.is_some() {
                    return Ok(None);
                }
                if !is_primary(member, *e) {
                    return Err(BackupRejected::NotPrimary { member: member.clone(), epoch: *e });
                }
                self.stanza_ready = Some(StanzaReady { member: member.clone(), epoch: *e, at_unix_ms: *at_unix_ms });
                Ok(Some((member.clone(), "backup stanza created and checked".into())))
            }
            BackupCommand::Start { id, kind, member, epoch: e, reason, serves, at_unix_ms, source, note } => {
                if self.stanza_ready.is_none() {
                    return Err(BackupRejected::NoStanza);
                }
                if let Some(r) = &self.running {
                    return Err(BackupRejected::Running(r.id));
                }
                if self.last_id.checked_add(1) != Some(*id) {
                    return Err(BackupRejected::StaleId { id: *id, latest: self.last_id });
                }
                if !placed(member, *e, source) {
                    return Err(BackupRejected::NotPrimary { member: member.clone(), epoch: *e });
                }
                self.last_id = *id;
                for t in serves {
                    let served = self.served_unix_ms.entry(*t).or_default();
                    *served = (*served).max(*at_unix_ms);
                }
                self.running = Some(BackupRun {
                    id: *id,
                    kind: *kind,
                    member: member.clone(),
                    epoch: *e,
                    reason: reason.clone(),
                    requested_unix_ms: *at_unix_ms,
                    assigned_unix_ms: *at_unix_ms,
                    attempts: 1,
                    source: source.as_deref().cloned(),
                });
                let on = if source.is_some() { "standby " } else { "" };
                let detail =
                    format!("backup {id} ({}, {reason}) started on {on}{member}{}", kind.name(), fell_back(note));
                Ok(Some((member.clone(), detail)))
            }
            BackupCommand::Retry { id, from_epoch, member, epoch: e, at_unix_ms, from_member, source, note } => {
                let run = self.running.as_mut().filter(|r| {
                    r.id == *id && r.epoch == *from_epoch && from_member.as_ref().is_none_or(|f| *f == r.member)
                });
                let Some(run) = run else {
                    return Err(BackupRejected::NotAssigned { id: *id, member: member.clone(), epoch: *from_epoch });
                };
                // A new epoch (its primary was deposed), or in the same epoch away from a standby
                // that is gone.
                let moves = *e > *from_epoch || (*e == *from_epoch && run.source.is_some() && *member != run.member);
                if !placed(member, *e, source) || !moves {
                    return Err(BackupRejected::NotPrimary { member: member.clone(), epoch: *e });
                }
                let on = if source.is_some() { "standby " } else { "" };
                let detail = format!(
                    "backup {id} ({}) interrupted on {} (epoch {from_epoch}): retried on {on}{member}{}",
                    run.kind.name(),
                    run.member,
                    fell_back(note)
                );
                run.member = member.clone();
                run.source = source.as_deref().cloned();
                run.epoch = *e;
                run.assigned_unix_ms = *at_unix_ms;
                run.attempts = run.attempts.saturating_add(1);
                Ok(Some((member.clone(), detail)))
            }
            BackupCommand::Finish { id, member, epoch: e, outcome, at_unix_ms } => {
                let assigned =
                    self.running.as_ref().is_some_and(|r| r.id == *id && r.member == *member && r.epoch == *e);
                if !assigned {
                    return Err(BackupRejected::NotAssigned { id: *id, member: member.clone(), epoch: *e });
                }
                let Some(run) = self.running.take() else { return Ok(None) };
                let record = BackupRecord {
                    id: run.id,
                    kind: run.kind,
                    member: run.member,
                    epoch: run.epoch,
                    reason: run.reason,
                    attempts: run.attempts,
                    requested_unix_ms: run.requested_unix_ms,
                    finished_unix_ms: *at_unix_ms,
                    duration_ms: at_unix_ms.saturating_sub(run.assigned_unix_ms),
                    outcome: outcome.clone(),
                };
                let detail = match (&outcome.error, &outcome.label) {
                    (Some(e), _) => format!("backup {id} ({}) failed on {member}: {e}", record.kind.name()),
                    (None, label) => format!(
                        "backup {id} ({}) done on {member}: {} {} bytes in {} ms",
                        record.kind.name(),
                        label.as_deref().unwrap_or("?"),
                        outcome.size_bytes,
                        outcome.stopped_unix_ms.saturating_sub(outcome.started_unix_ms)
                    ),
                };
                self.done.push(record);
                if self.done.len() > BACKUP_HISTORY_LIMIT {
                    let excess = self.done.len() - BACKUP_HISTORY_LIMIT;
                    self.done.drain(..excess);
                }
                Ok(Some((member.clone(), detail)))
            }
            BackupCommand::VerifyStart { id, member, epoch: e, reason, at_unix_ms } => {
                crate::verify::start(self, (*id, member, *e, reason, *at_unix_ms), epoch, primary)
                    .map(Some)
                    .map_err(BackupRejected::Verify)
            }
            BackupCommand::VerifyFinish { id, member, outcome, at_unix_ms } => {
                crate::verify::finish(self, *id, member, outcome, *at_unix_ms).map(Some).map_err(BackupRejected::Verify)
            }
        }
    }
}

/// The backup a new standby may be created from at `now_ms`: the newest that succeeded (by its
/// end), if it ended within `max_age_ms`; else why not (the member clones with `pg_basebackup`).
pub fn clone_source(b: &BackupState, now_ms: u64, max_age_ms: u64) -> Result<String, String> {
    let newest = b.done.iter().filter(|d| d.ok() && d.outcome.label.is_some()).max_by_key(|d| d.finished_unix_ms);
    let Some(d) = newest else { return Err("no backup has succeeded yet".into()) };
    let age = now_ms.saturating_sub(d.finished_unix_ms);
    if age > max_age_ms {
        return Err(format!("the newest backup is {} s old (more than {} s)", age / 1000, max_age_ms / 1000));
    }
    d.outcome.label.clone().ok_or_else(|| "no label".into())
}

/// The coordinator's backup policy (from its `[backup]` table).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    pub schedule: BTreeMap<BackupType, Cron>,
    /// A backup that has not reported after this long is recorded as failed.
    pub timeout_ms: u64,
    /// The scheduled verification of the repository.
    pub verify: crate::verify::VerifyPolicy,
    /// Where backups run.
    pub run_on: RunOn,
}

/// The cluster's view the decision needs.
pub struct View<'a> {
    pub epoch: u64,
    pub primary: Option<&'a str>,
    /// A switchover is under way: no new backup starts (the primary is about to stop).
    pub switchover: bool,
    pub backup: &'a BackupState,
    /// The members whose latest report shows a running standby (where a verification may run).
    pub standbys: Vec<&'a str>,
    /// Where a backup may run with [`RunOn::Standby`], best first ([`backup_standbys`]).
    pub backup_standbys: Vec<&'a str>,
    /// The primary's pgBackRest TLS server, from its latest report.
    pub source: Option<&'a BackupSource>,
    /// Members not heard from for longer than a standby's backup outlives its last
    /// acknowledged report (`report_timeout` + `lease_timeout`): a backup on one moves.
    pub gone: Vec<&'a str>,
}

/// The backup commands due at wall time `now_ms`: move a backup whose member was deposed to the
/// new primary, give up on one that overran `timeout_ms`, or start the scheduled backup that is
/// due (the widest type among those due; it serves the narrower ones' slots too).
pub fn decide(view: &View, policy: &Policy, now_ms: u64) -> Vec<BackupCommand> {
    let mut out = decide_backups(view, policy, now_ms);
    if view.primary.is_some() {
        let busy = view.switchover || out.iter().any(|c| matches!(c, BackupCommand::Start { .. }));
        out.extend(crate::verify::decide(view.backup, &policy.verify, view.epoch, &view.standbys, busy, now_ms));
    }
    out
}

fn decide_backups(view: &View, policy: &Policy, now_ms: u64) -> Vec<BackupCommand> {
    let Some(primary) = view.primary else { return vec![] };
    let b = view.backup;
    if let Some(r) = &b.running {
        let standby_gone = r.source.is_some() && view.gone.contains(&r.member.as_str());
        if r.epoch != view.epoch || standby_gone {
            let avoid = standby_gone.then_some(r.member.as_str());
            let p = place(policy.run_on, primary, &view.backup_standbys, view.source, avoid);
            return vec![BackupCommand::Retry {
                id: r.id,
                from_epoch: r.epoch,
                member: p.member,
                epoch: view.epoch,
                at_unix_ms: now_ms,
                from_member: Some(r.member.clone()),
                source: p.source.map(Box::new),
                note: p.note,
            }];
        }
        if now_ms.saturating_sub(r.assigned_unix_ms) > policy.timeout_ms {
            let outcome = BackupOutcome {
                error: Some(format!("no outcome reported within {} s", policy.timeout_ms / 1000)),
                ..Default::default()
            };
            return vec![BackupCommand::Finish {
                id: r.id,
                member: r.member.clone(),
                epoch: r.epoch,
                outcome,
                at_unix_ms: now_ms,
            }];
        }
        return vec![];
    }
    let Some(ready) = &b.stanza_ready else { return vec![] };
    if view.switchover {
        return vec![];
    }
    let due: Vec<BackupType> = policy
        .schedule
        .iter()
        .filter(|(t, cron)| {
            let served = b.served_unix_ms.get(t).copied().unwrap_or(0).max(ready.at_unix_ms);
            cron.next_after(served).is_some_and(|slot| slot <= now_ms)
        })
        .map(|(t, _)| *t)
        .collect();
    let Some(kind) = due.iter().max().copied() else { return vec![] };
    let p = place(policy.run_on, primary, &view.backup_standbys, view.source, None);
    vec![BackupCommand::Start {
        id: b.last_id + 1,
        kind,
        member: p.member,
        epoch: view.epoch,
        reason: "scheduled".into(),
        serves: due,
        at_unix_ms: now_ms,
        source: p.source.map(Box::new),
        note: p.note,
    }]
}

/// A cron-like schedule in UTC: `min hour day-of-month month day-of-week` (5 fields) or with
/// seconds first (6 fields); each field `*`, a number, a range `a-b`, a list `a,b`, a step `*/n`
/// or `a-b/n`. Day of week 0-7 (0 and 7 are Sunday). When both days are restricted, either
/// matches (as cron does). Also `@hourly`, `@daily`, `@weekly`, `@monthly`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cron {
    text: String,
    sec: u64,
    min: u64,
    hour: u64,
    dom: u64,
    mon: u64,
    dow: u64,
    dom_any: bool,
    dow_any: bool,
}

impl std::fmt::Display for Cron {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

fn field(text: &str, what: &str, lo: u32, hi: u32) -> Result<(u64, bool), String> {
    let mut bits = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s.parse().map_err(|_| format!("{what}: bad step {s:?}"))?;
                if step == 0 {
                    return Err(format!("{what}: a step of 0"));
                }
                (r, step)
            }
            None => (part, 1),
        };
        let (a, b) = if range == "*" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            let a: u32 = a.parse().map_err(|_| format!("{what}: bad number {a:?}"))?;
            let b: u32 = b.parse().map_err(|_| format!("{what}: bad number {b:?}"))?;
            (a, b)
        } else {
            let a: u32 = range.parse().map_err(|_| format!("{what}: bad number {range:?}"))?;
            // `5/10` means from 5 to the end, every 10.
            (a, if step > 1 { hi } else { a })
        };
        if a < lo || b > hi || a > b {
            return Err(format!("{what}: {range:?} is outside {lo}-{hi}"));
        }
        let mut v = a;
        while v <= b {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok((bits, text == "*"))
}

impl Cron {
    pub fn parse(text: &str) -> Result<Cron, String> {
        let t = text.trim();
        let expanded = match t {
            "@hourly" => "0 * * * *",
            "@daily" | "@midnight" => "0 0 * * *",
            "@weekly" => "0 0 * * 0",
            "@monthly" => "0 0 1 * *",
            other => other,
        };
        let words: Vec<&str> = expanded.split_whitespace().collect();
        let words: Vec<&str> = match words.len() {
            5 => std::iter::once("0").chain(words).collect(),
            6 => words,
            n => return Err(format!("{n} fields; write 5 (min hour day month weekday) or 6 (seconds first)")),
        };
        let (sec, _) = field(words[0], "seconds", 0, 59)?;
        let (min, _) = field(words[1], "minutes", 0, 59)?;
        let (hour, _) = field(words[2], "hours", 0, 23)?;
        let (dom, dom_any) = field(words[3], "day of month", 1, 31)?;
        let (mon, _) = field(words[4], "month", 1, 12)?;
        let (mut dow, dow_any) = field(words[5], "day of week", 0, 7)?;
        if dow & (1 << 7) != 0 {
            dow |= 1;
        }
        let cron = Cron { text: t.to_string(), sec, min, hour, dom, mon, dow, dom_any, dow_any };
        // One that never fires (`0 0 30 2 *`) is a mistake, not a schedule.
        if cron.next_after(0).is_none() {
            return Err("never matches a date".into());
        }
        Ok(cron)
    }

    fn day_matches(&self, d: &Civil) -> bool {
        let dom = self.dom & (1 << d.day) != 0;
        let dow = self.dow & (1 << d.weekday) != 0;
        match (self.dom_any, self.dow_any) {
            (true, true) => true,
            (false, true) => dom,
            (true, false) => dow,
            (false, false) => dom || dow,
        }
    }

    /// The first slot strictly after `after_ms` (Unix ms), within about five years.
    pub fn next_after(&self, after_ms: u64) -> Option<u64> {
        let mut t = after_ms / 1000 + 1;
        let horizon = t + 5 * 366 * 86_400;
        while t < horizon {
            let c = Civil::of(t);
            let day_start = t - t % 86_400;
            if self.mon & (1 << c.month) == 0 {
                t = Civil::first_of_next_month(c.year, c.month);
            } else if !self.day_matches(&c) {
                t = day_start + 86_400;
            } else if self.hour & (1 << c.hour) == 0 {
                t = t - t % 3600 + 3600;
            } else if self.min & (1 << c.minute) == 0 {
                t = t - t % 60 + 60;
            } else if self.sec & (1 << c.second) == 0 {
                t += 1;
            } else {
                return Some(t * 1000);
            }
        }
        None
    }
}

/// A UTC date and time of day.
struct Civil {
    year: i64,
    month: u32,
    day: u32,
    weekday: u32,
    hour: u32,
    minute: u32,
    second: u32,
}

impl Civil {
    fn of(unix_s: u64) -> Civil {
        let days = (unix_s / 86_400) as i64;
        let rem = unix_s % 86_400;
        let (year, month, day) = civil_from_days(days);
        Civil {
            year,
            month,
            day,
            // 1970-01-01 was a Thursday (4).
            weekday: ((days + 4).rem_euclid(7)) as u32,
            hour: (rem / 3600) as u32,
            minute: (rem % 3600 / 60) as u32,
            second: (rem % 60) as u32,
        }
    }

    fn first_of_next_month(year: i64, month: u32) -> u64 {
        let (y, m) = if month == 12 { (year + 1, 1) } else { (year, month + 1) };
        (days_from_civil(y, m, 1).max(0) as u64) * 86_400
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[path = "backup_place.rs"]
mod place_;
pub use place_::{backup_standbys, place, BackupSource, Placement, RunOn};

#[cfg(test)]
#[path = "backup_tests.rs"]
mod tests;
