//! The cloneable front of the node task: requests go in through an mpsc (answers come back on
//! oneshots), state comes out through `watch` channels.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use protobuf::Message as _;
use raft::eraftpb::Message;
use raft::SnapshotStatus;
use tokio::sync::{mpsc, oneshot, watch};

use crate::{PeerNames, RaftError, RaftStatus, StateMachine};

/// What the node task is asked to do.
pub(crate) enum Request {
    Propose {
        command: Vec<u8>,
        reply: oneshot::Sender<Result<u64, RaftError>>,
    },
    ReadIndex {
        reply: oneshot::Sender<Result<(), RaftError>>,
    },
    Step(Box<Message>),
    TransferLeader(u64),
    /// From the transport: a send to this peer failed.
    Unreachable(u64),
    /// From the transport: how sending a snapshot to a peer went.
    SnapshotSent {
        to: u64,
        status: SnapshotStatus,
    },
}

/// A handle on a running raft node. Cheap to clone.
pub struct RaftHandle<S> {
    /// This node's id and its peers' (self included): what `step` accepts.
    pub(crate) id: u64,
    pub(crate) peers: Arc<BTreeSet<u64>>,
    pub(crate) names: PeerNames,
    pub(crate) tx: mpsc::Sender<Request>,
    pub(crate) status: watch::Receiver<RaftStatus>,
    pub(crate) state: watch::Receiver<S>,
}

// By hand: a derive would require `S: Clone` for no reason.
impl<S> Clone for RaftHandle<S> {
    fn clone(&self) -> Self {
        RaftHandle {
            id: self.id,
            peers: self.peers.clone(),
            names: self.names.clone(),
            tx: self.tx.clone(),
            status: self.status.clone(),
            state: self.state.clone(),
        }
    }
}

impl<S: StateMachine> RaftHandle<S> {
    /// Proposes a command on the leader. Resolves with its log index once it is committed and
    /// applied to the local state machine (and `state()` shows it). `NotLeader` at once on a
    /// follower; `Dropped` if raft-rs refused it or leadership was lost before it applied
    /// (its fate is then unknown); `Timeout` after `timeout`.
    pub async fn propose(&self, command: Vec<u8>, timeout: Duration) -> Result<u64, RaftError> {
        let (reply, rx) = oneshot::channel();
        self.call(Request::Propose { command, reply }, rx, timeout).await
    }

    /// `Ok(())` once a quorum has confirmed that this node is still the leader, for a request
    /// issued now: a heartbeat round sent after the call, acknowledged by a quorum in this term
    /// (the guarantee of a ReadIndex with `ReadOnlyOption::Safe`, riding on the periodic
    /// heartbeats instead of a broadcast of its own, so it may take up to one heartbeat interval
    /// longer). `NotLeader` on a follower or if leadership is lost meanwhile. Rounds count only
    /// once this leader has committed an entry in its term (normally one heartbeat after its
    /// election), so calls end in `Timeout` only if that takes too long.
    pub async fn confirm_leadership(&self, timeout: Duration) -> Result<(), RaftError> {
        let (reply, rx) = oneshot::channel();
        self.call(Request::ReadIndex { reply }, rx, timeout).await
    }

    /// Feeds a raft message received from a peer (an `eraftpb::Message` encoded with
    /// `protobuf::Message::write_to_bytes`). Waits while the node's queue is full, which pushes
    /// back on the sending peer. `Dropped` if the bytes are not a raft message; `NotAPeer`,
    /// logging nothing (the caller knows who sent it), if it comes from a node that is not a peer
    /// or is addressed to another: raft-rs never sees it, so it neither answers nor logs it.
    pub async fn step(&self, message: &[u8]) -> Result<(), RaftError> {
        let msg = Message::parse_from_bytes(message).map_err(|e| {
            tracing::debug!(error = %e, "undecodable raft message from a peer");
            RaftError::Dropped
        })?;
        if msg.to != self.id || msg.from == self.id || !self.peers.contains(&msg.from) {
            return Err(RaftError::NotAPeer { from: msg.from, to: msg.to });
        }
        self.tx.send(Request::Step(Box::new(msg))).await.map_err(|_| RaftError::Stopped)
    }

    pub fn status(&self) -> watch::Receiver<RaftStatus> {
        self.status.clone()
    }

    /// The applied state machine, republished after every ready round that applied something
    /// or restored a snapshot.
    pub fn state(&self) -> watch::Receiver<S> {
        self.state.clone()
    }

    /// This node's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Asks raft-rs to transfer leadership to `to` (best effort, fire and forget).
    pub fn transfer_leader(&self, to: u64) {
        if self.tx.try_send(Request::TransferLeader(to)).is_err() {
            tracing::debug!(to = %self.names.of(to), "leader transfer not queued (node busy or stopped)");
        }
    }

    async fn call<T>(
        &self,
        request: Request,
        rx: oneshot::Receiver<Result<T, RaftError>>,
        timeout: Duration,
    ) -> Result<T, RaftError> {
        let round_trip = async {
            self.tx.send(request).await.map_err(|_| RaftError::Stopped)?;
            // The node dropping the reply sender means it stopped.
            rx.await.map_err(|_| RaftError::Stopped)?
        };
        tokio::time::timeout(timeout, round_trip).await.map_err(|_| RaftError::Timeout)?
    }
}
