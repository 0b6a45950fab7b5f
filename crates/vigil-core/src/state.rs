//! The cluster state that Raft replicates, and the commands that change it.
//!
//! `apply` is the Raft state machine: deterministic, and every command carries the precondition it
//! was decided under (e.g. the epoch it fails over from), so a stale proposal is rejected instead of
//! acting twice.

use crate::backup::{BackupCommand, BackupRejected, BackupState};
use crate::format_unix_ms;
use crate::report::{MemberKind, RejoinMethod, RejoinRecord};
use crate::sync::SyncState;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// How many events the history keeps; older ones are dropped so snapshots stay small.
pub const HISTORY_LIMIT: usize = 500;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Member {
    pub kind: MemberKind,
    pub pg_host: String,
    pub pg_port: u16,
    /// Its tags as its latest report gave them.
    #[serde(default)]
    pub tags: crate::Tags,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Bootstrap,
    /// The bootstrap primary's initdb failed; the coordinator chooses again.
    BootstrapFailed,
    Failover,
    MemberJoined,
    MemberChanged,
    /// The synchronous set or mode changed (degrading to asynchronous included).
    Synchronous,
    /// A member's data directory was rewound (`pg_rewind`) to follow the primary.
    Rewind,
    /// A member's data directory was moved aside and cloned again.
    Reclone,
    /// Maintenance mode on: no automatic failover, agents leave PostgreSQL as it is.
    Paused,
    Resumed,
    /// A planned switchover: the old primary stopped cleanly and the candidate had all its WAL.
    Switchover,
    /// An operator's request was taken (switchover, failover, failback, reinit).
    Requested,
    /// A switchover ended without a new primary (cancelled, timed out, or replaced by a failover).
    Cancelled,
    /// A backup started, moved to a new primary, or ended; the stanza was created.
    Backup,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The epoch after the event.
    pub epoch: u64,
    /// Wall-clock time the coordinator decided it, for people; never used in decisions.
    pub at_unix_ms: u64,
    pub kind: EventKind,
    pub member: String,
    pub detail: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ClusterState {
    /// Bumped each time the primary changes; a primary acts only for its own epoch.
    pub epoch: u64,
    pub primary: Option<String>,
    /// The member that created the cluster (initdb), once decided.
    pub bootstrapped_by: Option<String>,
    /// The epoch the (latest) bootstrap made: only its primary, in that epoch, may initialise an
    /// empty data directory. Later than 1 after a bootstrap was given back.
    #[serde(default = "first_epoch")]
    pub bootstrap_epoch: u64,
    pub members: BTreeMap<String, Member>,
    pub history: Vec<Event>,
    #[serde(default)]
    pub sync: SyncState,
    /// Per member, the start time of the last rejoin recorded (so a re-sent record is not recorded twice).
    #[serde(default)]
    pub rejoins_recorded: BTreeMap<String, u64>,
    /// Maintenance mode: the coordinator proposes no failover and agents leave PostgreSQL as it
    /// is (a primary that loses its lease is still fenced).
    #[serde(default)]
    pub paused: bool,
    /// The switchover in progress or scheduled, if any (see [`crate::switchover`]).
    #[serde(default)]
    pub switchover: Option<Switchover>,
    /// How the last switchover ended (completed or not).
    #[serde(default)]
    pub last_switchover: Option<SwitchoverOutcome>,
    /// The id of the latest operator request (switchover or reinit); each takes the next one.
    #[serde(default)]
    pub requests: u64,
    /// Standbys an operator asked to re-initialise (re-clone), with the request's id, until done.
    #[serde(default)]
    pub reinit: BTreeMap<String, u64>,
    /// The primary before the last change of primary (the target of a failback).
    #[serde(default)]
    pub previous_primary: Option<String>,
    /// The lease timings every member acts on, committed once by the first coordinator (None in
    /// a cluster made before they were agreed: its coordinator commits them then).
    #[serde(default)]
    pub lease_timings: Option<crate::LeaseTimings>,
    /// Backups: the stanza, the one running, the finished ones (see [`crate::backup`]).
    #[serde(default)]
    pub backup: BackupState,
}

fn first_epoch() -> u64 {
    1
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// Record a member's address, kind and tags (from its reports).
    UpsertMember { name: String, member: Member, at_unix_ms: u64 },
    /// Make `member` the first primary of a cluster that has none.
    Bootstrap { member: String, at_unix_ms: u64 },
    /// Give back the bootstrap of `epoch` whose primary `member` could not initialise its data
    /// directory (no server ever ran on it), so the coordinator chooses again.
    AbandonBootstrap { member: String, epoch: u64, reason: String, at_unix_ms: u64 },
    /// Replace the primary of `from_epoch` by `to`.
    Failover { from_epoch: u64, to: String, reason: String, at_unix_ms: u64 },
    /// Replace the synchronous state of `epoch`.
    Sync { epoch: u64, sync: SyncState, reason: String, at_unix_ms: u64 },
    /// Record a member's rewind or re-clone in the history.
    RecordRejoin { member: String, record: RejoinRecord },
    /// Turn maintenance mode on or off (an operator's request); `reason` goes into the history.
    SetPaused {
        paused: bool,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        reason: String,
        at_unix_ms: u64,
    },
    /// Ask the primary of `from_epoch` to hand over to `to` (an operator's switchover, failover or
    /// failback). `id` must be the next request id: of two concurrent requests only one applies.
    BeginSwitchover {
        id: u64,
        from_epoch: u64,
        to: String,
        forced: bool,
        not_before_unix_ms: u64,
        reason: String,
        at_unix_ms: u64,
    },
    /// A scheduled switchover is due: the old primary stops now.
    StartSwitchover { id: u64, at_unix_ms: u64 },
    /// End switchover `id` without a new primary; the old primary carries on.
    CancelSwitchover { id: u64, reason: String, at_unix_ms: u64 },
    /// Make the candidate of switchover `id` the primary. `lsn`: where the old primary stopped
    /// cleanly (None for a forced failover after the lease ran out).
    CompleteSwitchover { id: u64, lsn: Option<u64>, reason: String, at_unix_ms: u64 },
    /// Ask `member` (a standby) to move its data directory aside and clone again, once.
    RequestReinit { id: u64, member: String, at_unix_ms: u64 },
    /// Fix the cluster's lease timings (once: the same values again are a no-op, others refused).
    AgreeTimings { timings: crate::LeaseTimings },
    /// A backup decision or outcome (see [`crate::backup`]).
    Backup { backup: BackupCommand },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejected {
    AlreadyBootstrapped,
    /// An abandoned bootstrap that is not the one in progress.
    NotBootstrapping(String),
    StaleEpoch {
        expected: u64,
        current: u64,
    },
    NotAPostgresMember(String),
    AlreadyPrimary(String),
    /// A synchronous state that breaks `standbys ⊆ holders` or names the primary as a standby.
    BadSyncState(String),
    Undecodable(String),
    NoPrimary,
    Paused,
    /// A request id that is not the next one (another request was applied first).
    StaleRequest {
        id: u64,
        latest: u64,
    },
    SwitchoverPending(u64),
    NoSuchSwitchover(u64),
    NoFailoverTag(String),
    /// The primary cannot be re-initialised (nor can a witness).
    NotAStandby(String),
    /// The lease timings were agreed already, on other values.
    TimingsAgreed(crate::LeaseTimings),
    /// The epoch is `u64::MAX`: no change of primary can make a new one.
    NoEpochLeft,
    Backup(BackupRejected),
}

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejected::AlreadyBootstrapped => write!(f, "cluster is already bootstrapped"),
            Rejected::NotBootstrapping(m) => write!(f, "{m} is not bootstrapping the cluster"),
            Rejected::StaleEpoch { expected, current } => {
                write!(f, "decided for epoch {expected}, but the epoch is {current}")
            }
            Rejected::NotAPostgresMember(m) => write!(f, "{m} is not a known PostgreSQL member"),
            Rejected::AlreadyPrimary(m) => write!(f, "{m} is already the primary"),
            Rejected::BadSyncState(why) => write!(f, "bad synchronous state: {why}"),
            Rejected::Undecodable(e) => write!(f, "undecodable command: {e}"),
            Rejected::NoPrimary => write!(f, "the cluster has no primary"),
            Rejected::Paused => write!(f, "the cluster is paused"),
            Rejected::StaleRequest { id, latest } => {
                write!(f, "request {id} is not the next one (the latest is {latest})")
            }
            Rejected::SwitchoverPending(id) => write!(f, "switchover {id} is pending"),
            Rejected::NoSuchSwitchover(id) => write!(f, "switchover {id} is not pending"),
            Rejected::NoFailoverTag(m) => write!(f, "{m} is tagged nofailover"),
            Rejected::NotAStandby(m) => write!(f, "{m} is not a standby"),
            Rejected::TimingsAgreed(t) => write!(f, "the cluster's lease timings are agreed already: {t:?}"),
            Rejected::NoEpochLeft => write!(f, "no epoch is left after {}", u64::MAX),
            Rejected::Backup(r) => write!(f, "{r}"),
        }
    }
}

impl Command {
    /// The bytes of a Raft entry. Plain structs serialise without failing, but if one ever did,
    /// the caller must not propose an empty entry in its place: an error.
    pub fn encode(&self) -> serde_json::Result<Vec<u8>> {
        serde_json::to_vec(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Command, Rejected> {
        serde_json::from_slice(bytes).map_err(|e| Rejected::Undecodable(e.to_string()))
    }
}

impl ClusterState {
    pub fn apply(&mut self, cmd: &Command) -> Result<(), Rejected> {
        match cmd {
            Command::UpsertMember { name, member, at_unix_ms } => {
                let kind = match self.members.insert(name.clone(), member.clone()) {
                    None => EventKind::MemberJoined,
                    Some(old) if old == *member => return Ok(()),
                    Some(_) => EventKind::MemberChanged,
                };
                let detail =
                    format!("{:?} at {}:{}, {}", member.kind, member.pg_host, member.pg_port, member.tags.describe());
                self.record(*at_unix_ms, kind, name, detail);
                Ok(())
            }
            Command::Backup { backup } => {
                let applied =
                    self.backup.apply(backup, self.epoch, self.primary.as_deref()).map_err(Rejected::Backup)?;
                if let Some((member, detail)) = applied {
                    let at = match backup {
                        BackupCommand::StanzaReady { at_unix_ms, .. }
                        | BackupCommand::Start { at_unix_ms, .. }
                        | BackupCommand::Retry { at_unix_ms, .. }
                        | BackupCommand::Finish { at_unix_ms, .. } => *at_unix_ms,
                    };
                    self.record(at, EventKind::Backup, &member, detail);
                }
                Ok(())
            }
            Command::AgreeTimings { timings } => match self.lease_timings {
                None => {
                    self.lease_timings = Some(*timings);
                    Ok(())
                }
                Some(agreed) if agreed == *timings => Ok(()),
                Some(agreed) => Err(Rejected::TimingsAgreed(agreed)),
            },
            Command::Bootstrap { member, at_unix_ms } => {
                if self.primary.is_some() || self.bootstrapped_by.is_some() {
                    return Err(Rejected::AlreadyBootstrapped);
                }
                self.require_postgres(member)?;
                self.epoch = self.next_epoch()?;
                self.primary = Some(member.clone());
                self.bootstrapped_by = Some(member.clone());
                self.bootstrap_epoch = self.epoch;
                self.reset_sync(member);
                self.record(*at_unix_ms, EventKind::Bootstrap, member, "first primary".into());
                Ok(())
            }
            Command::AbandonBootstrap { member, epoch, reason, at_unix_ms } => {
                if *epoch != self.epoch {
                    return Err(Rejected::StaleEpoch { expected: *epoch, current: self.epoch });
                }
                let mine = Some(member.as_str());
                if self.primary.as_deref() != mine
                    || self.bootstrapped_by.as_deref() != mine
                    || self.bootstrap_epoch != *epoch
                {
                    return Err(Rejected::NotBootstrapping(member.clone()));
                }
                // The epoch stays: the next bootstrap makes a new one, so nothing granted for
                // this one ever counts again.
                self.primary = None;
                self.bootstrapped_by = None;
                self.sync.holders.clear();
                self.sync.standbys.clear();
                if let Some(s) = self.switchover.take() {
                    let detail = format!("switchover {} to {} ended: the bootstrap was given back", s.id, s.to);
                    self.last_switchover = Some(SwitchoverOutcome::ended(&s, None, detail.clone()));
                    self.record(*at_unix_ms, EventKind::Cancelled, &s.to, detail);
                }
                self.record(*at_unix_ms, EventKind::BootstrapFailed, member, reason.clone());
                Ok(())
            }
            Command::Failover { from_epoch, to, reason, at_unix_ms } => {
                if *from_epoch != self.epoch {
                    return Err(Rejected::StaleEpoch { expected: *from_epoch, current: self.epoch });
                }
                self.require_postgres(to)?;
                if self.primary.as_deref() == Some(to.as_str()) {
                    return Err(Rejected::AlreadyPrimary(to.clone()));
                }
                let epoch = self.next_epoch()?;
                if let Some(s) = self.switchover.take() {
                    let detail = format!("switchover {} to {} replaced by a failover to {to}", s.id, s.to);
                    self.last_switchover = Some(SwitchoverOutcome::ended(&s, None, detail.clone()));
                    self.record(*at_unix_ms, EventKind::Cancelled, &s.to, detail);
                }
                self.change_primary(to, epoch);
                self.record(*at_unix_ms, EventKind::Failover, to, reason.clone());
                Ok(())
            }
            Command::Sync { epoch, sync, reason, at_unix_ms } => {
                if *epoch != self.epoch {
                    return Err(Rejected::StaleEpoch { expected: *epoch, current: self.epoch });
                }
                self.check_sync(sync)?;
                if self.sync == *sync {
                    return Ok(());
                }
                self.sync = sync.clone();
                let primary = self.primary.clone().unwrap_or_default();
                self.record(*at_unix_ms, EventKind::Synchronous, &primary, reason.clone());
                Ok(())
            }
            Command::RecordRejoin { member, record } => {
                if self.rejoins_recorded.get(member) >= Some(&record.started_unix_ms) {
                    return Ok(());
                }
                self.rejoins_recorded.insert(member.clone(), record.started_unix_ms);
                if record.reinit.is_some() && self.reinit.get(member) == record.reinit.as_ref() {
                    self.reinit.remove(member);
                }
                let kind = match record.method {
                    RejoinMethod::Rewind => EventKind::Rewind,
                    RejoinMethod::Reclone => EventKind::Reclone,
                };
                let outcome = if record.ok { "done" } else { "failed" };
                let detail = format!("{outcome} in {} ms: {}", record.took_ms, record.detail);
                self.record(record.started_unix_ms, kind, member, detail);
                Ok(())
            }
            Command::SetPaused { paused, reason, at_unix_ms } => {
                // Idempotent: asking twice records one event.
                if self.paused == *paused {
                    return Ok(());
                }
                // A paused agent leaves PostgreSQL as it is: a started switchover would hang.
                if let Some(s) = self.switchover.as_ref().filter(|s| *paused && s.started) {
                    return Err(Rejected::SwitchoverPending(s.id));
                }
                self.paused = *paused;
                let (kind, what) = if *paused {
                    (EventKind::Paused, "automatic failover off")
                } else {
                    (EventKind::Resumed, "automatic failover on")
                };
                let detail = if reason.is_empty() { what.to_string() } else { format!("{what}: {reason}") };
                self.record(*at_unix_ms, kind, "", detail);
                Ok(())
            }
            Command::BeginSwitchover { id, from_epoch, to, forced, not_before_unix_ms, reason, at_unix_ms } => {
                if *from_epoch != self.epoch {
                    return Err(Rejected::StaleEpoch { expected: *from_epoch, current: self.epoch });
                }
                self.next_request(*id)?;
                let Some(from) = self.primary.clone() else { return Err(Rejected::NoPrimary) };
                if self.paused {
                    return Err(Rejected::Paused);
                }
                if let Some(s) = &self.switchover {
                    return Err(Rejected::SwitchoverPending(s.id));
                }
                self.require_postgres(to)?;
                if from == *to {
                    return Err(Rejected::AlreadyPrimary(to.clone()));
                }
                if self.members.get(to).is_some_and(|m| m.tags.nofailover()) {
                    return Err(Rejected::NoFailoverTag(to.clone()));
                }
                self.requests = *id;
                let s = Switchover {
                    id: *id,
                    from_epoch: *from_epoch,
                    from,
                    to: to.clone(),
                    forced: *forced,
                    not_before_unix_ms: *not_before_unix_ms,
                    started: *not_before_unix_ms == 0,
                    requested_unix_ms: *at_unix_ms,
                    reason: reason.clone(),
                };
                let detail = s.describe();
                self.switchover = Some(s);
                self.record(*at_unix_ms, EventKind::Requested, to, detail);
                Ok(())
            }
            Command::StartSwitchover { id, at_unix_ms: _ } => match &mut self.switchover {
                Some(s) if s.id == *id => {
                    s.started = true;
                    Ok(())
                }
                _ => Err(Rejected::NoSuchSwitchover(*id)),
            },
            Command::CancelSwitchover { id, reason, at_unix_ms } => {
                let s = self.take_switchover(*id)?;
                let detail = format!("switchover {id} from {} to {} cancelled: {reason}", s.from, s.to);
                self.last_switchover = Some(SwitchoverOutcome::ended(&s, None, detail.clone()));
                self.record(*at_unix_ms, EventKind::Cancelled, &s.to, detail);
                Ok(())
            }
            Command::CompleteSwitchover { id, lsn, reason, at_unix_ms } => {
                match &self.switchover {
                    Some(s) if s.id == *id && s.started && s.from_epoch == self.epoch => {}
                    _ => return Err(Rejected::NoSuchSwitchover(*id)),
                }
                let epoch = self.next_epoch()?;
                let s = self.take_switchover(*id)?;
                self.change_primary(&s.to, epoch);
                self.last_switchover = Some(SwitchoverOutcome::ended(&s, Some((self.epoch, *lsn)), reason.clone()));
                let kind = if s.forced { EventKind::Failover } else { EventKind::Switchover };
                self.record(*at_unix_ms, kind, &s.to, reason.clone());
                Ok(())
            }
            Command::RequestReinit { id, member, at_unix_ms } => {
                self.next_request(*id)?;
                self.require_postgres(member)?;
                if self.is_primary(member) {
                    return Err(Rejected::NotAStandby(member.clone()));
                }
                self.requests = *id;
                self.reinit.insert(member.clone(), *id);
                self.record(*at_unix_ms, EventKind::Requested, member, format!("reinit {id}: re-clone {member}"));
                Ok(())
            }
        }
    }

    fn next_request(&self, id: u64) -> Result<(), Rejected> {
        if self.requests.checked_add(1) != Some(id) {
            return Err(Rejected::StaleRequest { id, latest: self.requests });
        }
        Ok(())
    }

    fn take_switchover(&mut self, id: u64) -> Result<Switchover, Rejected> {
        match self.switchover.take() {
            Some(s) if s.id == id => Ok(s),
            other => {
                self.switchover = other;
                Err(Rejected::NoSuchSwitchover(id))
            }
        }
    }

    /// The epoch after this one. None is left after `u64::MAX` (only a damaged snapshot gets
    /// there): refused, not wrapped round to an epoch that was used already.
    fn next_epoch(&self) -> Result<u64, Rejected> {
        self.epoch.checked_add(1).ok_or(Rejected::NoEpochLeft)
    }

    /// A new primary at the next epoch (`epoch`, from [`Self::next_epoch`]): it holds every
    /// acknowledged commit, and a pending re-initialisation of it is void.
    fn change_primary(&mut self, to: &str, epoch: u64) {
        self.epoch = epoch;
        self.previous_primary = self.primary.replace(to.to_string());
        self.reset_sync(to);
        self.reinit.remove(to);
    }

    /// Apply an encoded command; a rejected command changes nothing.
    pub fn apply_bytes(&mut self, bytes: &[u8]) -> Result<(), Rejected> {
        let cmd = Command::decode(bytes)?;
        self.apply(&cmd)
    }

    pub fn is_primary(&self, member: &str) -> bool {
        self.primary.as_deref() == Some(member)
    }

    /// A new primary holds every acknowledged commit and names no standby yet.
    fn reset_sync(&mut self, primary: &str) {
        if self.sync.mode.is_sync() {
            self.sync.holders = BTreeSet::from([primary.to_string()]);
            self.sync.standbys.clear();
        }
    }

    fn check_sync(&self, sync: &SyncState) -> Result<(), Rejected> {
        if !sync.standbys.is_subset(&sync.holders) {
            return Err(Rejected::BadSyncState("a named standby is not a holder".into()));
        }
        if let Some(p) = self.primary.as_deref().filter(|p| sync.standbys.contains(*p)) {
            return Err(Rejected::BadSyncState(format!("the primary {p} cannot be its own standby")));
        }
        for m in &sync.holders {
            self.require_postgres(m)?;
        }
        Ok(())
    }

    fn require_postgres(&self, member: &str) -> Result<(), Rejected> {
        match self.members.get(member) {
            Some(m) if m.kind == MemberKind::Postgres => Ok(()),
            _ => Err(Rejected::NotAPostgresMember(member.to_string())),
        }
    }

    fn record(&mut self, at_unix_ms: u64, kind: EventKind, member: &str, detail: String) {
        self.history.push(Event { epoch: self.epoch, at_unix_ms, kind, member: member.to_string(), detail });
        if self.history.len() > HISTORY_LIMIT {
            let excess = self.history.len() - HISTORY_LIMIT;
            self.history.drain(..excess);
        }
    }
}

/// A switchover an operator asked for, from its request until it completes or is cancelled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Switchover {
    /// The request's id (unique in the cluster).
    pub id: u64,
    /// The epoch of the primary it replaces.
    pub from_epoch: u64,
    pub from: String,
    pub to: String,
    /// A forced failover (`POST /failover`): the old primary's lease is withheld and the candidate
    /// promoted once it has run out, whether or not the candidate has all its WAL.
    pub forced: bool,
    /// Not before this time (the coordinator's wall clock, Unix ms); 0: at once.
    pub not_before_unix_ms: u64,
    /// The old primary has been told to stop.
    pub started: bool,
    pub requested_unix_ms: u64,
    /// Why, for the history ("requested by the operator", "failback ...").
    pub reason: String,
}

impl Switchover {
    pub fn describe(&self) -> String {
        let what = if self.forced { "failover" } else { "switchover" };
        let when = match self.not_before_unix_ms {
            0 => "at once".to_string(),
            t => format!("scheduled at {}", format_unix_ms(t)),
        };
        format!("{what} {} from {} to {} ({}), {when}", self.id, self.from, self.to, self.reason)
    }
}

/// How the last switchover ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchoverOutcome {
    pub id: u64,
    pub from: String,
    pub from_epoch: u64,
    pub to: String,
    pub forced: bool,
    /// The candidate became the primary (at `epoch`).
    pub completed: bool,
    /// The epoch it created; `from_epoch` when it did not complete.
    pub epoch: u64,
    /// Where the old primary stopped cleanly, when it did.
    pub lsn: Option<u64>,
    pub detail: String,
}

impl SwitchoverOutcome {
    /// `done`: the new epoch and the clean stop position, when it completed.
    pub(crate) fn ended(s: &Switchover, done: Option<(u64, Option<u64>)>, detail: String) -> Self {
        SwitchoverOutcome {
            id: s.id,
            from: s.from.clone(),
            from_epoch: s.from_epoch,
            to: s.to.clone(),
            forced: s.forced,
            completed: done.is_some(),
            epoch: done.map_or(s.from_epoch, |(e, _)| e),
            lsn: done.and_then(|(_, l)| l),
            detail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pg(port: u16) -> Member {
        Member { kind: MemberKind::Postgres, pg_host: "127.0.0.1".into(), pg_port: port, ..Default::default() }
    }

    fn with_members() -> ClusterState {
        let mut s = ClusterState::default();
        for (n, p) in [("a", 1), ("b", 2)] {
            s.apply(&Command::UpsertMember { name: n.into(), member: pg(p), at_unix_ms: 0 }).ok();
        }
        let w = Member { kind: MemberKind::Witness, ..Default::default() };
        s.apply(&Command::UpsertMember { name: "w".into(), member: w, at_unix_ms: 0 }).ok();
        s
    }

    #[test]
    fn a_bootstrap_is_given_back_only_by_its_primary_in_its_epoch() {
        let give_back = |member: &str, epoch: u64| Command::AbandonBootstrap {
            member: member.into(),
            epoch,
            reason: "initdb failed".into(),
            at_unix_ms: 3,
        };
        let mut s = with_members();
        assert_eq!(s.apply(&give_back("a", 0)), Err(Rejected::NotBootstrapping("a".into())), "nothing to give back");
        s.apply(&Command::Bootstrap { member: "a".into(), at_unix_ms: 1 }).expect("bootstrap");
        assert_eq!(s.apply(&give_back("b", 1)), Err(Rejected::NotBootstrapping("b".into())));
        assert_eq!(s.apply(&give_back("a", 2)), Err(Rejected::StaleEpoch { expected: 2, current: 1 }));
        let mut later = s.clone();
        let failover = Command::Failover { from_epoch: 1, to: "b".into(), reason: String::new(), at_unix_ms: 2 };
        later.apply(&failover).expect("failover");
        assert!(later.apply(&give_back("b", 2)).is_err(), "a failover's primary is not a bootstrap");
        s.apply(&give_back("a", 1)).expect("give back");
        assert_eq!((s.epoch, s.primary.as_deref(), s.bootstrapped_by.as_deref()), (1, None, None));
        assert_eq!(s.apply(&give_back("a", 1)), Err(Rejected::NotBootstrapping("a".into())), "once");
        s.apply(&Command::Bootstrap { member: "b".into(), at_unix_ms: 4 }).expect("bootstrap again");
        assert_eq!((s.epoch, s.primary.as_deref(), s.bootstrap_epoch), (2, Some("b"), 2));
        // A state from before the field: its bootstrap made epoch 1.
        let old: ClusterState =
            serde_json::from_str(r#"{"epoch":1,"primary":"a","bootstrapped_by":"a","members":{},"history":[]}"#)
                .expect("old state");
        assert_eq!(old.bootstrap_epoch, 1);
    }

    #[test]
    fn bootstrap_once_and_only_a_postgres_member() {
        let mut s = with_members();
        assert_eq!(
            s.apply(&Command::Bootstrap { member: "w".into(), at_unix_ms: 1 }),
            Err(Rejected::NotAPostgresMember("w".into()))
        );
        s.apply(&Command::Bootstrap { member: "a".into(), at_unix_ms: 1 }).expect("bootstrap");
        assert_eq!((s.epoch, s.primary.as_deref()), (1, Some("a")));
        assert_eq!(
            s.apply(&Command::Bootstrap { member: "b".into(), at_unix_ms: 2 }),
            Err(Rejected::AlreadyBootstrapped)
        );
    }

    #[test]
    fn failover_is_conditional_on_the_epoch() {
        let mut s = with_members();
        s.apply(&Command::Bootstrap { member: "a".into(), at_unix_ms: 1 }).expect("bootstrap");
        let fo = Command::Failover { from_epoch: 1, to: "b".into(), reason: "x".into(), at_unix_ms: 2 };
        s.apply(&fo).expect("failover");
        assert_eq!((s.epoch, s.primary.as_deref()), (2, Some("b")));
        // The same decision replayed (a duplicate proposal) is stale now.
        assert_eq!(s.apply(&fo), Err(Rejected::StaleEpoch { expected: 1, current: 2 }));
        assert_eq!(s.history.last().map(|e| e.kind), Some(EventKind::Failover));
    }

    #[test]
    fn upsert_records_only_real_changes_and_roundtrips() {
        let mut s = with_members();
        let n = s.history.len();
        s.apply(&Command::UpsertMember { name: "a".into(), member: pg(1), at_unix_ms: 5 }).ok();
        assert_eq!(s.history.len(), n);
        s.apply(&Command::UpsertMember { name: "a".into(), member: pg(9), at_unix_ms: 5 }).ok();
        assert_eq!(s.history.last().map(|e| e.kind), Some(EventKind::MemberChanged));
        let cmd = Command::Bootstrap { member: "a".into(), at_unix_ms: 1 };
        assert_eq!(Command::decode(&cmd.encode().expect("encode")), Ok(cmd));
        assert!(matches!(s.apply_bytes(b"nonsense"), Err(Rejected::Undecodable(_))));
    }

    #[test]
    fn pause_and_resume_are_recorded_once_and_old_states_decode_unpaused() {
        let mut s = with_members();
        let pause = Command::SetPaused { paused: true, reason: "upgrade".into(), at_unix_ms: 3 };
        s.apply(&pause).expect("pause");
        assert!(s.paused);
        let n = s.history.len();
        s.apply(&pause).expect("pausing twice is fine");
        assert_eq!(s.history.len(), n, "no second event");
        assert_eq!(
            s.history.last().map(|e| (e.kind, e.detail.as_str())),
            Some((EventKind::Paused, "automatic failover off: upgrade"))
        );
        assert_eq!(Command::decode(&pause.encode().expect("encode")), Ok(pause));
        s.apply(&Command::SetPaused { paused: false, reason: String::new(), at_unix_ms: 4 }).expect("resume");
        assert!(!s.paused);
        assert_eq!(s.history.last().map(|e| e.kind), Some(EventKind::Resumed));
        // A state (snapshot) written before these fields existed.
        let old: ClusterState =
            serde_json::from_str(r#"{"epoch":1,"primary":"a","bootstrapped_by":"a","members":{},"history":[]}"#)
                .expect("old snapshot");
        assert!(!old.paused && old.sync.standbys.is_empty());
    }

    #[test]
    fn counters_at_the_end_of_their_range_refuse_instead_of_overflowing() {
        // Found by the fuzz targets: a snapshot at epoch or request id u64::MAX made the next
        // failover or request overflow (a panic in a debug build, a reused epoch in release).
        let mut s = with_members();
        s.apply(&Command::Bootstrap { member: "a".into(), at_unix_ms: 1 }).expect("bootstrap");
        s.epoch = u64::MAX;
        s.requests = u64::MAX;
        let before = s.clone();
        let failover = Command::Failover { from_epoch: u64::MAX, to: "b".into(), reason: String::new(), at_unix_ms: 2 };
        assert_eq!(s.apply(&failover), Err(Rejected::NoEpochLeft));
        let reinit = Command::RequestReinit { id: 0, member: "b".into(), at_unix_ms: 2 };
        assert_eq!(s.apply(&reinit), Err(Rejected::StaleRequest { id: 0, latest: u64::MAX }));
        assert_eq!(s, before, "refused: nothing changed");
        let mut fresh = with_members();
        fresh.epoch = u64::MAX;
        assert_eq!(fresh.apply(&Command::Bootstrap { member: "a".into(), at_unix_ms: 1 }), Err(Rejected::NoEpochLeft));
    }

    #[test]
    fn history_is_bounded() {
        let mut s = with_members();
        for i in 0..(HISTORY_LIMIT as u16 + 50) {
            s.apply(&Command::UpsertMember { name: "a".into(), member: pg(100 + i), at_unix_ms: 0 }).ok();
        }
        assert_eq!(s.history.len(), HISTORY_LIMIT);
    }
}
