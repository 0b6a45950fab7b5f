//! The cluster state that Raft replicates, and the commands that change it.
//!
//! `apply` is the Raft state machine: deterministic, and every command carries the precondition it
//! was decided under (e.g. the epoch it fails over from), so a stale proposal is rejected instead of
//! acting twice.

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
    pub nofailover: bool,
    pub priority: i32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Bootstrap,
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
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// Record a member's address, kind and tags (from its reports).
    UpsertMember { name: String, member: Member, at_unix_ms: u64 },
    /// Make `member` the first primary of a cluster that has none.
    Bootstrap { member: String, at_unix_ms: u64 },
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
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejected {
    AlreadyBootstrapped,
    StaleEpoch {
        expected: u64,
        current: u64,
    },
    NotAPostgresMember(String),
    AlreadyPrimary(String),
    /// A synchronous state that breaks `standbys ⊆ holders` or names the primary as a standby.
    BadSyncState(String),
    Undecodable(String),
}

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejected::AlreadyBootstrapped => write!(f, "cluster is already bootstrapped"),
            Rejected::StaleEpoch { expected, current } => {
                write!(f, "decided for epoch {expected}, but the epoch is {current}")
            }
            Rejected::NotAPostgresMember(m) => write!(f, "{m} is not a known PostgreSQL member"),
            Rejected::AlreadyPrimary(m) => write!(f, "{m} is already the primary"),
            Rejected::BadSyncState(why) => write!(f, "bad synchronous state: {why}"),
            Rejected::Undecodable(e) => write!(f, "undecodable command: {e}"),
        }
    }
}

impl Command {
    pub fn encode(&self) -> Vec<u8> {
        // Serializing these plain structs cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
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
                let detail = format!(
                    "{:?} at {}:{}, nofailover={}, priority={}",
                    member.kind, member.pg_host, member.pg_port, member.nofailover, member.priority
                );
                self.record(*at_unix_ms, kind, name, detail);
                Ok(())
            }
            Command::Bootstrap { member, at_unix_ms } => {
                if self.primary.is_some() || self.bootstrapped_by.is_some() {
                    return Err(Rejected::AlreadyBootstrapped);
                }
                self.require_postgres(member)?;
                self.epoch += 1;
                self.primary = Some(member.clone());
                self.bootstrapped_by = Some(member.clone());
                self.reset_sync(member);
                self.record(*at_unix_ms, EventKind::Bootstrap, member, "first primary".into());
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
                self.epoch += 1;
                self.primary = Some(to.clone());
                self.reset_sync(to);
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
        }
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
        assert_eq!(Command::decode(&cmd.encode()), Ok(cmd));
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
        assert_eq!(Command::decode(&pause.encode()), Ok(pause));
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
    fn history_is_bounded() {
        let mut s = with_members();
        for i in 0..(HISTORY_LIMIT as u16 + 50) {
            s.apply(&Command::UpsertMember { name: "a".into(), member: pg(100 + i), at_unix_ms: 0 }).ok();
        }
        assert_eq!(s.history.len(), HISTORY_LIMIT);
    }
}
