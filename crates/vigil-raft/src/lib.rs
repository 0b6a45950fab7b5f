//! pgvigil's Raft group: a raft-rs node with durable storage, talking to its peers over tonic.
//!
//! # Layout
//!
//! - `lib.rs`: the public types: [`StateMachine`], [`RaftConfig`], [`RaftStatus`],
//!   [`RaftError`], [`PeerNames`] (how logs name nodes), and the generated gRPC code in [`proto`].
//! - `node.rs`: [`start`] and the one task that owns the `RawNode` and runs the ready loop
//!   (tick, step, propose, read index, apply, persist, snapshot).
//! - `handle.rs`: [`RaftHandle`], the cheap cloneable front of that task (mpsc requests with
//!   oneshot replies, `watch` channels for status and the applied state machine).
//! - `storage.rs` (+ `record.rs` for the on-disk framing): the durable `raft::Storage`.
//! - `transport.rs`: [`PeerClients`] (cached lazy channels, plain or TLS) and one outbound task
//!   per peer.
//! - `auth.rs`: the cluster's credential on the peer port: [`auth::Signed`] adds it to each
//!   request, [`auth::Authenticated`] wraps a server and refuses requests without it.
//! - `slog_bridge.rs`: forwards raft-rs' slog records to `tracing`, node ids replaced by names.
//!
//! Node ids are numbers to raft-rs; every line this crate logs names nodes by [`PeerNames`]
//! instead (the embedder gives the names at start), and repeated warnings are thinned with
//! [`vigil_core::Repeats`].
//!
//! The gRPC server is not here: the daemon implements the whole `Peer` service and its `raft`
//! RPC calls [`RaftHandle::step`].

pub mod auth;
pub mod beat;
mod handle;
mod node;
mod record;
mod slog_bridge;
mod storage;
mod transport;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use handle::RaftHandle;
pub use node::start;
pub use transport::{PeerChannel, PeerClients, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT};

/// Generated from `proto/vigil.proto`: `peer_client::PeerClient`,
/// `peer_server::{Peer, PeerServer}` and the messages. A server carrying raft messages should
/// raise `max_decoding_message_size` (tonic's default is 4 MiB): a snapshot travels in one.
#[allow(clippy::all, clippy::unwrap_used)]
pub mod proto {
    tonic::include_proto!("vigil");
}

/// The replicated state machine. Commands and snapshots are opaque bytes to this crate.
pub trait StateMachine: Clone + Send + Sync + 'static {
    /// Apply one committed command. Must be deterministic. A command it cannot decode is
    /// ignored (it logs).
    fn apply(&mut self, index: u64, command: &[u8]);
    /// The whole state, for log compaction and for followers that fell behind it. An error stops
    /// the node: an empty snapshot must never stand for the state.
    fn snapshot(&self) -> anyhow::Result<Vec<u8>>;
    /// The inverse of `snapshot`. An error stops the node (its durable state is unusable).
    fn restore(data: &[u8]) -> anyhow::Result<Self>;
}

pub struct RaftConfig {
    /// This node, non-zero.
    pub id: u64,
    /// Every voter including self: id -> gRPC address, `host:port` (the scheme follows
    /// `clients`) or a URL such as `http://127.0.0.1:7001`.
    pub peers: BTreeMap<u64, String>,
    /// How logs name the nodes (`id -> name`); an id without a name is shown as `raft id N`.
    pub names: PeerNames,
    /// The outbound channels raft messages travel on: [`PeerClients::new`] for plain text,
    /// [`PeerClients::with_tls`] for TLS. Give the node its own (it keeps one channel per peer).
    pub clients: PeerClients,
    /// Durable state directory, created if missing.
    pub dir: PathBuf,
    /// e.g. 100ms.
    pub tick: Duration,
    /// e.g. 10.
    pub election_ticks: usize,
    /// e.g. 2.
    pub heartbeat_ticks: usize,
    /// A follower that hears its leader wakes every `follower_wake` (on the process's grid, with
    /// the daemon's other loops) and counts the ticks that fell due, instead of waking every
    /// tick: at rest most of a follower's wake-ups were its ticks. Its elections then start up to
    /// one `follower_wake` late, never early. `None`: every tick, in every role.
    pub follower_wake: Option<Duration>,
    /// Take a snapshot and compact the log after this many applied entries since the last one
    /// (e.g. 1000). 0 disables compaction.
    pub snapshot_threshold: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct RaftStatus {
    pub id: u64,
    /// 0 = unknown.
    pub leader_id: u64,
    pub term: u64,
    pub is_leader: bool,
    pub commit: u64,
    pub applied: u64,
}

/// Names for node ids, for what operators read: a log line says `pg2`, not `8626128424586815710`.
/// Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct PeerNames(Arc<BTreeMap<u64, String>>);

impl PeerNames {
    pub fn new(names: BTreeMap<u64, String>) -> Self {
        PeerNames(Arc::new(names))
    }

    /// The name of `id`, if it has one.
    pub fn get(&self, id: u64) -> Option<&str> {
        self.0.get(&id).map(String::as_str)
    }

    /// `id` for a log line: its name, `none` for 0 (raft-rs' "no node"), else `raft id N`.
    pub fn of(&self, id: u64) -> NodeName<'_> {
        NodeName { names: self, id }
    }

    /// Every name, in id order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.values().map(String::as_str)
    }
}

/// A node as a log line shows it ([`PeerNames::of`]).
#[derive(Clone, Copy)]
pub struct NodeName<'a> {
    names: &'a PeerNames,
    id: u64,
}

impl fmt::Display for NodeName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.names.get(self.id) {
            Some(name) => f.write_str(name),
            None if self.id == 0 => f.write_str("none"),
            None => write!(f, "raft id {}", self.id),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RaftError {
    /// `leader_id` 0: no leader known.
    #[error("not the leader")]
    NotLeader { leader_id: u64 },
    /// A message from a node that is not a peer, or addressed to another node than this one:
    /// refused before raft-rs sees it (a daemon configured with another member list).
    #[error("raft message from raft id {from} to raft id {to}: not a message for this node from one of its peers")]
    NotAPeer { from: u64, to: u64 },
    #[error("timed out")]
    Timeout,
    #[error("raft node stopped")]
    Stopped,
    #[error("proposal dropped")]
    Dropped,
    /// The command could not be encoded into an entry; nothing was proposed.
    #[error("command not encodable: {0}")]
    Unencodable(String),
}
