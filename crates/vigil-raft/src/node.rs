//! The node task: the only owner of the `RawNode`. It ticks on an interval, takes requests from
//! handles and the transport through one mpsc, and after each wake-up drains raft-rs' `Ready`s
//! in the order raft-rs' `five_mem_node` example prescribes.

use std::collections::{BTreeMap, BTreeSet};
use std::mem;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context};
use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeV2, Entry, EntryType, Message, Snapshot};
use raft::{RawNode, ReadOnlyOption, ReadState, StateRole};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::handle::{RaftHandle, Request};
use crate::storage::DiskStorage;
use crate::transport::Transport;
use crate::{slog_bridge, PeerNames, RaftConfig, RaftError, RaftStatus, StateMachine};

/// Requests waiting for the node task. Handles wait (`send().await`) when it is full.
const REQUEST_QUEUE: usize = 1024;
/// Requests taken per wake-up before handling `Ready`, so a burst shares one fsync.
const REQUESTS_PER_ROUND: usize = 256;
const MAX_SIZE_PER_MSG: u64 = 1 << 20;
const MAX_INFLIGHT_MSGS: usize = 256;

/// Loads durable state from `cfg.dir` (or starts fresh with every peer as a voter), then spawns
/// the node task and the outbound transport. Everything stops when `shutdown` is cancelled; the
/// returned `JoinHandle` ends once the node and its transport tasks have. The node task also
/// ends on its own if its storage fails (it logs why); `status()` then shows no leader.
pub async fn start<S: StateMachine>(
    cfg: RaftConfig,
    initial: S,
    shutdown: CancellationToken,
) -> anyhow::Result<(RaftHandle<S>, JoinHandle<()>)> {
    validate(&cfg)?;
    let voters: Vec<u64> = cfg.peers.keys().copied().collect();
    let dir = cfg.dir.clone();
    let names = cfg.names.clone();
    // Reading files and fsyncing a fresh directory: keep it off the runtime's threads.
    let (storage, sm) = tokio::task::spawn_blocking(move || load(&dir, voters, initial, &names))
        .await
        .context("raft storage loader panicked")??;

    // Entries after the snapshot are re-delivered as committed and re-applied.
    let applied = storage.snapshot_index();
    let raft_cfg = raft::Config {
        id: cfg.id,
        election_tick: cfg.election_ticks,
        heartbeat_tick: cfg.heartbeat_ticks,
        applied,
        max_size_per_msg: MAX_SIZE_PER_MSG,
        max_inflight_msgs: MAX_INFLIGHT_MSGS,
        check_quorum: true,
        pre_vote: true,
        read_only_option: ReadOnlyOption::Safe,
        ..Default::default()
    };
    raft_cfg.validate().context("invalid raft configuration")?;
    let raw = RawNode::new(&raft_cfg, storage, &slog_bridge::logger(cfg.names.clone())).context("create raft node")?;

    let (tx, rx) = mpsc::channel(REQUEST_QUEUE);
    let (status_tx, status) = watch::channel(RaftStatus {
        id: cfg.id,
        term: raw.raft.term,
        commit: raw.raft.raft_log.committed,
        applied,
        ..Default::default()
    });
    let (state_tx, state) = watch::channel(sm.clone());
    let span = tracing::info_span!("raft", member = %cfg.names.of(cfg.id));
    let transport = span.in_scope(|| {
        Transport::start(cfg.id, &cfg.peers, &cfg.names, cfg.clients.clone(), tx.clone(), shutdown.child_token())
    });
    let node = Node {
        id: cfg.id,
        raw,
        sm,
        applied,
        snapshot_threshold: cfg.snapshot_threshold,
        transport,
        proposals: BTreeMap::new(),
        reads: BTreeMap::new(),
        seq: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64),
        status_tx,
        state_tx,
        state_dirty: false,
        replies: Vec::new(),
    };
    let join = tokio::spawn(node.run(rx, cfg.tick, shutdown).instrument(span));
    let peers = Arc::new(cfg.peers.keys().copied().collect());
    Ok((RaftHandle { id: cfg.id, peers, names: cfg.names, tx, status, state }, join))
}

fn validate(cfg: &RaftConfig) -> anyhow::Result<()> {
    ensure!(cfg.id != 0, "raft id must be non-zero");
    ensure!(cfg.peers.contains_key(&cfg.id), "raft peers must include this node ({})", cfg.id);
    ensure!(!cfg.peers.contains_key(&0), "raft peer ids must be non-zero");
    ensure!(!cfg.tick.is_zero(), "raft tick must be positive");
    Ok(())
}

/// Opens the storage and the state machine that goes with it.
fn load<S: StateMachine>(
    dir: &Path,
    voters: Vec<u64>,
    initial: S,
    names: &PeerNames,
) -> anyhow::Result<(DiskStorage, S)> {
    let mut storage = DiskStorage::open(dir).with_context(|| format!("open raft state in {}", dir.display()))?;
    if !storage.is_initialized() {
        storage.initialize(voters, initial.snapshot())?;
        return Ok((storage, initial));
    }
    // Membership is static in this version: a changed peer list would silently break quorums.
    let stored: BTreeSet<u64> = storage.conf_state().voters.iter().copied().collect();
    let configured: BTreeSet<u64> = voters.into_iter().collect();
    if stored != configured {
        let show = |ids: &BTreeSet<u64>| ids.iter().map(|id| names.of(*id).to_string()).collect::<Vec<_>>().join(", ");
        bail!(
            "configured raft peers [{}] differ from the voters [{}] stored in {}",
            show(&configured),
            show(&stored),
            dir.display()
        );
    }
    let sm = S::restore(storage.snapshot_ref().get_data()).context("restore state machine from the stored snapshot")?;
    Ok((storage, sm))
}

struct PendingProposal {
    /// The context we gave the entry; another entry at its index means it was overwritten.
    ctx: Vec<u8>,
    term: u64,
    reply: oneshot::Sender<Result<u64, RaftError>>,
}

struct PendingRead {
    term: u64,
    /// Handed to raft-rs yet. A leader that has not committed in its term would drop it.
    issued: bool,
    reply: oneshot::Sender<Result<(), RaftError>>,
}

/// An answer held back until the state it reports on has been published.
enum Reply {
    Propose(oneshot::Sender<Result<u64, RaftError>>, Result<u64, RaftError>),
    Read(oneshot::Sender<Result<(), RaftError>>, Result<(), RaftError>),
}

struct Node<S> {
    id: u64,
    raw: RawNode<DiskStorage>,
    sm: S,
    applied: u64,
    snapshot_threshold: u64,
    transport: Transport,
    /// By expected log index.
    proposals: BTreeMap<u64, PendingProposal>,
    /// By sequence number (its read-index context).
    reads: BTreeMap<u64, PendingRead>,
    /// Source of request contexts; seeded from the clock so a restarted node does not reuse
    /// contexts still in the log.
    seq: u64,
    status_tx: watch::Sender<RaftStatus>,
    state_tx: watch::Sender<S>,
    state_dirty: bool,
    replies: Vec<Reply>,
}

impl<S: StateMachine> Node<S> {
    async fn run(mut self, mut rx: mpsc::Receiver<Request>, tick: Duration, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = ticker.tick() => {
                    self.raw.tick();
                    self.forget_abandoned();
                    self.transport.expire(std::time::Instant::now());
                }
                req = rx.recv() => {
                    // Unreachable while we hold a sender (the transport's), but be total.
                    let Some(req) = req else { break };
                    self.handle(req);
                    for _ in 1..REQUESTS_PER_ROUND {
                        match rx.try_recv() {
                            Ok(req) => self.handle(req),
                            Err(_) => break,
                        }
                    }
                }
            }
            if let Err(e) = self.on_ready() {
                tracing::error!(error = %format!("{e:#}"), "raft node stopped: storage or state failure");
                break;
            }
        }
        // Nobody may go on believing this node leads.
        let id = self.id;
        let term = self.raw.raft.term;
        self.status_tx.send_modify(|s| *s = RaftStatus { id, term, leader_id: 0, is_leader: false, ..s.clone() });
        // Pending requests see their reply sender dropped: `Stopped`.
        self.transport.shutdown().await;
    }

    fn handle(&mut self, req: Request) {
        match req {
            Request::Propose { command, reply } => self.propose(command, reply),
            Request::ReadIndex { reply } => self.read_index(reply),
            Request::Step(msg) => self.step(*msg),
            Request::TransferLeader(to) => self.raw.transfer_leader(to),
            Request::Unreachable(to) => self.raw.report_unreachable(to),
            Request::SnapshotSent { to, status } => self.raw.report_snapshot(to, status),
        }
    }

    /// `msg` comes from a peer and is for this node (`RaftHandle::step` refuses others).
    fn step(&mut self, msg: Message) {
        if let Err(e) = self.raw.step(msg) {
            // Stale or foreign messages (e.g. from a removed peer): raft-rs copes by ignoring.
            tracing::debug!(error = %e, "raft message not stepped");
        }
    }

    fn not_leader(&self) -> Option<RaftError> {
        (self.raw.raft.state != StateRole::Leader).then(|| RaftError::NotLeader { leader_id: self.raw.raft.leader_id })
    }

    /// A context unique across nodes and restarts: our id and a sequence number.
    fn next_ctx(&mut self) -> (u64, Vec<u8>) {
        self.seq = self.seq.wrapping_add(1);
        (self.seq, self.ctx(self.seq))
    }

    fn ctx(&self, seq: u64) -> Vec<u8> {
        let mut ctx = self.id.to_le_bytes().to_vec();
        ctx.extend_from_slice(&seq.to_le_bytes());
        ctx
    }

    /// The sequence number in one of our contexts.
    fn our_seq(&self, ctx: &[u8]) -> Option<u64> {
        let (id, seq) = ctx.split_at_checked(8)?;
        (id == self.id.to_le_bytes()).then_some(())?;
        Some(u64::from_le_bytes(seq.try_into().ok()?))
    }

    fn propose(&mut self, command: Vec<u8>, reply: oneshot::Sender<Result<u64, RaftError>>) {
        if let Some(e) = self.not_leader() {
            let _ = reply.send(Err(e));
            return;
        }
        let (_, ctx) = self.next_ctx();
        let index = self.raw.raft.raft_log.last_index() + 1;
        if let Err(e) = self.raw.propose(ctx.clone(), command) {
            // E.g. a leader transfer in progress.
            tracing::debug!(error = %e, "proposal dropped by raft");
            let _ = reply.send(Err(RaftError::Dropped));
            return;
        }
        let term = self.raw.raft.term;
        self.proposals.insert(index, PendingProposal { ctx, term, reply });
    }

    fn read_index(&mut self, reply: oneshot::Sender<Result<(), RaftError>>) {
        if let Some(e) = self.not_leader() {
            let _ = reply.send(Err(e));
            return;
        }
        let (seq, ctx) = self.next_ctx();
        let issued = self.raw.raft.commit_to_current_term();
        if issued {
            self.raw.read_index(ctx);
        }
        let term = self.raw.raft.term;
        self.reads.insert(seq, PendingRead { term, issued, reply });
    }

    /// Issues the reads held back until this leader committed an entry in its term (its no-op
    /// usually commits within a heartbeat), instead of letting raft-rs drop them.
    fn issue_held_reads(&mut self) {
        let raft = &self.raw.raft;
        if raft.state != StateRole::Leader || !raft.commit_to_current_term() {
            return;
        }
        let term = raft.term;
        let held: Vec<u64> = self
            .reads
            .iter_mut()
            .filter(|(_, r)| !r.issued && r.term == term)
            .map(|(&seq, r)| {
                r.issued = true;
                seq
            })
            .collect();
        for seq in held {
            let ctx = self.ctx(seq);
            self.raw.read_index(ctx);
        }
    }

    /// Drops requests whose caller gave up (timed out).
    fn forget_abandoned(&mut self) {
        self.proposals.retain(|_, p| !p.reply.is_closed());
        self.reads.retain(|_, r| !r.reply.is_closed());
    }

    /// Drains raft-rs' `Ready`s: send → snapshot → apply → persist → send persisted → advance
    /// → light ready → advance_apply. Every error is a storage or state-machine failure that
    /// leaves the node unable to keep raft's promises, so it stops the node.
    fn on_ready(&mut self) -> anyhow::Result<()> {
        self.issue_held_reads();
        while self.raw.has_ready() {
            let mut ready = self.raw.ready();
            // A leader sends before persisting (raft thesis 10.2.1); raft-rs only puts
            // messages here when that is safe.
            self.send(ready.take_messages());
            if !ready.snapshot().is_empty() {
                self.install_snapshot(ready.snapshot().clone())?;
            }
            self.apply(ready.take_committed_entries())?;
            self.raw.mut_store().append(ready.entries())?;
            if let Some(hs) = ready.hs() {
                self.raw.mut_store().set_hard_state(hs.clone())?;
            }
            self.send(ready.take_persisted_messages());
            self.confirm_reads(ready.take_read_states());

            let mut light = self.raw.advance(ready);
            if let Some(commit) = light.commit_index() {
                self.raw.mut_store().set_commit(commit)?;
            }
            self.send(light.take_messages());
            self.apply(light.take_committed_entries())?;
            self.raw.advance_apply();
            self.maybe_compact()?;
            // The commit just applied may be this leader's first in its term.
            self.issue_held_reads();
        }
        self.fail_if_leadership_lost();
        self.publish();
        Ok(())
    }

    fn send(&mut self, msgs: Vec<Message>) {
        if msgs.is_empty() {
            return;
        }
        for to in self.transport.send(msgs) {
            self.raw.report_snapshot(to, raft::SnapshotStatus::Failure);
        }
    }

    fn install_snapshot(&mut self, snap: Snapshot) -> anyhow::Result<()> {
        let index = snap.get_metadata().index;
        // Restore first: a snapshot we cannot load must not become our durable state.
        let sm = S::restore(snap.get_data()).context("restore state machine from received snapshot")?;
        self.raw.mut_store().apply_snapshot(snap).context("persist received snapshot")?;
        self.sm = sm;
        self.applied = index;
        self.state_dirty = true;
        // Proposals it covers may or may not be in it: their fate is unknown.
        let rest = self.proposals.split_off(&(index + 1));
        for (_, p) in mem::replace(&mut self.proposals, rest) {
            self.replies.push(Reply::Propose(p.reply, Err(RaftError::Dropped)));
        }
        tracing::info!(index, "installed snapshot from the leader");
        Ok(())
    }

    fn apply(&mut self, entries: Vec<Entry>) -> anyhow::Result<()> {
        for e in entries {
            match e.get_entry_type() {
                // Empty normal entries are the no-ops new leaders append.
                EntryType::EntryNormal if e.data.is_empty() => {}
                EntryType::EntryNormal => {
                    self.sm.apply(e.index, &e.data);
                    self.state_dirty = true;
                }
                // Membership is static, but raft-rs must see any conf change it committed.
                EntryType::EntryConfChange => {
                    let cc = ConfChange::parse_from_bytes(&e.data)
                        .with_context(|| format!("decode conf change at {}", e.index))?;
                    let cs = self.raw.apply_conf_change(&cc).context("apply conf change")?;
                    self.raw.mut_store().set_conf_state(cs);
                }
                EntryType::EntryConfChangeV2 => {
                    let cc = ConfChangeV2::parse_from_bytes(&e.data)
                        .with_context(|| format!("decode conf change at {}", e.index))?;
                    let cs = self.raw.apply_conf_change(&cc).context("apply conf change")?;
                    self.raw.mut_store().set_conf_state(cs);
                }
            }
            self.applied = e.index;
            if let Some(p) = self.proposals.remove(&e.index) {
                let result = if e.context == p.ctx { Ok(e.index) } else { Err(RaftError::Dropped) };
                self.replies.push(Reply::Propose(p.reply, result));
            }
        }
        Ok(())
    }

    fn confirm_reads(&mut self, states: Vec<ReadState>) {
        for rs in states {
            let Some(seq) = self.our_seq(&rs.request_ctx) else {
                continue;
            };
            // Reads are confirmed in order: this one covers every earlier one.
            let rest = self.reads.split_off(&(seq + 1));
            for (_, r) in mem::replace(&mut self.reads, rest) {
                self.replies.push(Reply::Read(r.reply, Ok(())));
            }
        }
    }

    fn maybe_compact(&mut self) -> anyhow::Result<()> {
        let snap_index = self.raw.store().snapshot_index();
        if self.snapshot_threshold == 0 || self.applied - snap_index < self.snapshot_threshold {
            return Ok(());
        }
        let data = self.sm.snapshot();
        self.raw.mut_store().compact(self.applied, data).context("take snapshot")?;
        tracing::debug!(index = self.applied, "took a snapshot and compacted the raft log");
        Ok(())
    }

    /// A leader that lost its term answers nothing more for it: pending proposals may or may
    /// not commit (`Dropped`), pending reads were forgotten by raft-rs (`NotLeader`).
    fn fail_if_leadership_lost(&mut self) {
        let term = self.raw.raft.term;
        let leading = self.raw.raft.state == StateRole::Leader;
        let lost = |t: u64| !leading || t != term;
        if self.proposals.values().any(|p| lost(p.term)) {
            for (index, p) in mem::take(&mut self.proposals) {
                if lost(p.term) {
                    self.replies.push(Reply::Propose(p.reply, Err(RaftError::Dropped)));
                } else {
                    self.proposals.insert(index, p);
                }
            }
        }
        if self.reads.values().any(|r| lost(r.term)) {
            let leader_id = self.raw.raft.leader_id;
            for (seq, r) in mem::take(&mut self.reads) {
                if lost(r.term) {
                    let err = RaftError::NotLeader { leader_id };
                    self.replies.push(Reply::Read(r.reply, Err(err)));
                } else {
                    self.reads.insert(seq, r);
                }
            }
        }
    }

    /// Status and state first, then the answers, so a caller that got `Ok` sees its effect.
    fn publish(&mut self) {
        let raft = &self.raw.raft;
        let status = RaftStatus {
            id: self.id,
            leader_id: raft.leader_id,
            term: raft.term,
            is_leader: raft.state == StateRole::Leader,
            commit: raft.raft_log.committed,
            applied: self.applied,
        };
        self.status_tx.send_if_modified(|cur| {
            let changed = *cur != status;
            if changed {
                *cur = status;
            }
            changed
        });
        if mem::take(&mut self.state_dirty) {
            self.state_tx.send_replace(self.sm.clone());
        }
        for reply in self.replies.drain(..) {
            // A caller that timed out has dropped its receiver: nothing to do.
            match reply {
                Reply::Propose(tx, result) => {
                    let _ = tx.send(result);
                }
                Reply::Read(tx, result) => {
                    let _ = tx.send(result);
                }
            }
        }
    }
}
