//! What an agent reports to the coordinator every loop.

use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum MemberKind {
    #[default]
    Postgres,
    /// Votes in Raft, runs no PostgreSQL.
    Witness,
}

/// What the data directory holds, read from the files (so it is known while PostgreSQL is down).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DataDir {
    #[default]
    Unknown,
    Empty,
    /// A data directory without `standby.signal`: it was (or is) a primary.
    Primary,
    Standby,
    /// Neither empty nor a PostgreSQL data directory (`PG_VERSION` and `global/pg_control`), or
    /// a mount point holding only `lost+found`: never initialised over, cloned into, adopted or
    /// started; what was found is in [`PgStatus::data_dir_problem`].
    Foreign,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PgStatus {
    /// PostgreSQL accepts connections.
    pub running: bool,
    pub in_recovery: bool,
    pub timeline: u32,
    pub current_lsn: u64,
    pub received_lsn: u64,
    pub replay_lsn: u64,
    pub data_dir: DataDir,
    /// The data directory may hold writes the committed primary never had: it must not run
    /// until it has been rewound or re-cloned.
    pub needs_rejoin: bool,
    pub streaming: bool,
    /// How long PostgreSQL has been continuously not running, as the agent measured it.
    #[serde(with = "duration_ms")]
    pub down_for: Duration,
    /// Not answering although its postmaster runs (hung: a stuck disk, a stopped process). Such a
    /// primary loses its lease after `pg_unresponsive_timeout`, not `pg_restart_timeout`: it is
    /// not starting up.
    #[serde(default)]
    pub unresponsive: bool,
    /// Primary: the members streaming from it (`pg_stat_replication`, by application name).
    #[serde(default)]
    pub replicas: Vec<ReplicaStatus>,
    /// Primary: the members its `synchronous_standby_names` names now (None: not known).
    #[serde(default)]
    pub sync_names: Option<std::collections::BTreeSet<String>>,
    /// The latest rewind or re-clone this agent did, so the coordinator records it in the history.
    #[serde(default)]
    pub last_rejoin: Option<RejoinRecord>,
    /// The old primary of a switchover: PostgreSQL is cleanly shut down for it (see
    /// [`crate::switchover`]). Reported only while PostgreSQL is down and the position is known.
    #[serde(default)]
    pub switchover_stop: Option<SwitchoverStop>,
    /// [`DataDir::Foreign`]: what was found there, for the operator.
    #[serde(default)]
    pub data_dir_problem: Option<String>,
    /// The bootstrap primary's initdb failed: the coordinator gives the bootstrap back
    /// ([`crate::state::Command::AbandonBootstrap`]) and chooses again.
    #[serde(default)]
    pub bootstrap_failed: Option<BootstrapFailure>,
    /// Standby: its replay is paused (`pg_is_wal_replay_paused()`): no read-only sessions.
    #[serde(default)]
    pub replay_paused: bool,
}

/// "I was chosen to create the cluster at `epoch` and initdb failed": no server ever ran on the
/// (still empty) data directory. The agent does not try again in that epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootstrapFailure {
    pub epoch: u64,
    pub error: String,
}

/// An old primary's statement: "my PostgreSQL is cleanly shut down (pg_controldata says so) at
/// checkpoint `lsn` on `timeline`, for switchover `id` of epoch `epoch`, and I will not start it
/// as primary of that epoch again unless the switchover is cancelled". Kept in the agent's local
/// memory from before the shutdown (`lsn` 0 until known) until the member follows the new primary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchoverStop {
    pub epoch: u64,
    pub id: u64,
    /// Where the shutdown checkpoint record starts; 0 while not known.
    pub lsn: u64,
    pub timeline: u32,
}

/// One standby as the primary sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ReplicaStatus {
    pub member: String,
    /// WAL the standby has written to disk (what counts for a synchronous commit).
    pub flush_lsn: u64,
    pub streaming: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RejoinMethod {
    Rewind,
    Reclone,
}

/// A rewind or re-clone of this member's data directory, done or failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejoinRecord {
    /// When it started (wall clock, for people; also what makes the record unique).
    pub started_unix_ms: u64,
    pub method: RejoinMethod,
    pub ok: bool,
    pub took_ms: u64,
    /// Why it was needed, and what happened (the error, or where the old data went).
    pub detail: String,
    /// The operator's reinit request this re-clone carried out, if it was one.
    #[serde(default)]
    pub reinit: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthReport {
    pub member: String,
    pub kind: MemberKind,
    pub pg_host: String,
    pub pg_port: u16,
    /// The member's `[tags]`, as configured now.
    #[serde(default)]
    pub tags: crate::Tags,
    pub pg: PgStatus,
    /// The epoch of the committed state the agent acts on.
    pub epoch_seen: u64,
    /// The member's routing proxy summed up, for `pgvigil list` (None: it runs none). Carried
    /// to `GET /cluster`, never judged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<crate::proxy::ProxySummary>,
    /// This member's pgBackRest TLS server, when it serves one (`[backup] run_on = "standby"`):
    /// how a standby's pgBackRest reaches this member's PostgreSQL when it is the primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_source: Option<crate::backup::BackupSource>,
}

impl HealthReport {
    /// The most WAL this member is known to have: what a standby received, or what a primary wrote.
    pub fn wal_position(&self) -> u64 {
        self.pg.received_lsn.max(self.pg.replay_lsn).max(self.pg.current_lsn)
    }
}

pub(crate) mod duration_ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}
