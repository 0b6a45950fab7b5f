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
use raft::eraftpb::{ConfChange, ConfChangeV2, Entry, EntryType, Message, MessageType, Snapshot};
use raft::{RawNode, ReadOnlyOption, StateRole};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
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
        round: 0,
        rounds: BTreeMap::new(),
        seq: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64),
        status_tx,
        state_tx,
        state_dirty: false,
        replies: Vec::new(),
    };
    let wakes = Wakes { tick: cfg.tick, heartbeat_ticks: cfg.heartbeat_ticks, follower: cfg.follower_wake };
    let join = tokio::spawn(node.run(rx, wakes, shutdown).instrument(span));
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
        storage.initialize(voters, initial.snapshot().context("snapshot of the initial state")?)?;
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
    /// The last heartbeat round sent before the request came: a later one must confirm it.
    after: u64,
    reply: oneshot::Sender<Result<(), RaftError>>,
}

/// Heartbeat rounds kept waiting for acknowledgements; older ones are forgotten (a round that
/// never got a quorum is superseded by every later one).
const ROUNDS_KEPT: usize = 32;
/// Marks the context of a heartbeat this node tagged with its round number.
const ROUND_TAG: u8 = b'h';

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
    /// Leadership confirmations waiting for a heartbeat round, by arrival.
    reads: BTreeMap<u64, PendingRead>,
    /// Number of the last heartbeat round this leader tagged (see `tag_heartbeats`).
    round: u64,
    /// Recent rounds: the term they were sent in and who acknowledged them (this node included).
    rounds: BTreeMap<u64, (u64, BTreeSet<u64>)>,
    /// Source of request contexts; seeded from the clock so a restarted node does not reuse
    /// contexts still in the log.
    seq: u64,
    status_tx: watch::Sender<RaftStatus>,
    state_tx: watch::Sender<S>,
    state_dirty: bool,
    replies: Vec<Reply>,
}

/// Runs `f`, which waits for the disk (an fsync), without holding up the runtime's other tasks:
/// on a multi-threaded runtime the worker hands them to another thread meanwhile (a slow disk must
/// not delay the answer to a report or the API). Only where there is something to write: at rest
/// heartbeats write nothing, and the hand-over costs thread wake-ups.
fn off_runtime<R>(f: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// When the node task wakes for its ticks (see `Node::batch`).
struct Wakes {
    tick: Duration,
    heartbeat_ticks: usize,
    follower: Option<Duration>,
}

impl<S: StateMachine> Node<S> {
    async fn run(mut self, mut rx: mpsc::Receiver<Request>, wakes: Wakes, shutdown: CancellationToken) {
        let tick = wakes.tick;
        // The grid point of the last tick counted, and the next wake-up.
        let mut last_tick = std::time::Instant::now();
        let wake = tokio::time::sleep_until(crate::beat::next(tick).into());
        tokio::pin!(wake);
        // The batch the wake-up was set for (`batch`).
        let mut mode: Option<(Duration, bool)> = None;
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = &mut wake => {
                    let now = std::time::Instant::now();
                    let (n, counted) = match mode {
                        // A batching follower counts the ticks that fell due since the last one
                        // counted or since its leader was last heard (below), at most one wake's
                        // worth: its election timer never runs ahead of the time that passed. A
                        // leader counts those since its last wake, one heartbeat's worth.
                        Some((w, _)) => {
                            let cap = w.as_nanos().div_ceil(tick.as_nanos().max(1)).max(1) as u32;
                            vigil_core::timing::ticks_due(last_tick, now, tick, cap)
                        }
                        // Candidates tick once per wake, as before (a late wake loses ticks).
                        None => (1, now),
                    };
                    last_tick = counted;
                    for _ in 0..n {
                        self.raw.tick();
                    }
                    wake.as_mut().reset(crate::beat::next(mode.map_or(tick, |(w, _)| w)).into());
                    self.forget_abandoned();
                    self.transport.expire(now);
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
                    if mode.is_some_and(|(_, follower)| follower) && self.hears_a_leader() && self.raw.raft.election_elapsed == 0 {
                        // Its leader was heard and its election timer restarted: ticks that fell
                        // due before that must not count against the new wait.
                        last_tick = std::time::Instant::now();
                    }
                }
            }
            if let Err(e) = self.on_ready() {
                tracing::error!(error = %format!("{e:#}"), "raft node stopped: storage or state failure");
                break;
            }
            // A new role (elected, deposed, a leader heard or lost): its ticks are counted from
            // now, the next wake-up is the new role's (a campaign ticks every tick at once, not
            // at the end of a batch).
            let now_mode = self.batch(&wakes);
            if now_mode != mode {
                mode = now_mode;
                last_tick = std::time::Instant::now();
                wake.as_mut().reset(crate::beat::next(mode.map_or(tick, |(w, _)| w)).into());
            }
        }
        // Nobody may go on believing this node leads.
        let id = self.id;
        let term = self.raw.raft.term;
        self.status_tx.send_modify(|s| *s = RaftStatus { id, term, leader_id: 0, is_leader: false, ..s.clone() });
        // Pending requests see their reply sender dropped: `Stopped`.
        self.transport.shutdown().await;
    }

    /// How long this node sleeps between tick batches in its role, and whether it is a
    /// follower's batch: a follower that hears its leader wakes with the check and report loop;
    /// a leader once per heartbeat (its other ticks only count towards its quorum check, which
    /// looks at elapsed ticks, not at when they were counted). `None`: every tick (a candidate,
    /// or a follower without a leader).
    fn batch(&self, wakes: &Wakes) -> Option<(Duration, bool)> {
        if self.raw.raft.state == StateRole::Leader {
            let ticks = u32::try_from(wakes.heartbeat_ticks.max(1)).unwrap_or(1);
            return (ticks > 1).then(|| (wakes.tick * ticks, false));
        }
        wakes.follower.filter(|_| self.hears_a_leader()).map(|w| (w, true))
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
        self.count_ack(&msg);
        if let Err(e) = self.raw.step(msg) {
            // Stale or foreign messages (e.g. from a removed peer): raft-rs copes by ignoring.
            tracing::debug!(error = %e, "raft message not stepped");
        }
    }

    /// A follower that knows its leader: its only use of ticks is the election timer.
    fn hears_a_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Follower && self.raw.raft.leader_id != 0
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

    /// A leadership confirmation (see `RaftHandle::confirm_leadership`). Instead of a ReadIndex
    /// round of its own, it waits for the next periodic heartbeat round: `send` tags each
    /// heartbeat with a round number, followers echo it, and `count_ack` confirms every request
    /// that came before a round once a quorum acknowledged that round in this term. Same
    /// guarantee as raft-rs' `ReadOnlyOption::Safe` (it too is a tagged heartbeat broadcast),
    /// without the extra messages; it costs up to one heartbeat interval of latency.
    fn read_index(&mut self, reply: oneshot::Sender<Result<(), RaftError>>) {
        if let Some(e) = self.not_leader() {
            let _ = reply.send(Err(e));
            return;
        }
        let (seq, _) = self.next_ctx();
        let term = self.raw.raft.term;
        self.reads.insert(seq, PendingRead { term, after: self.round, reply });
        // A single voter is a quorum by itself: there is no heartbeat to wait for.
        if self.has_quorum(&BTreeSet::from([self.id])) && self.raw.raft.commit_to_current_term() {
            self.confirm_reads(u64::MAX);
        }
    }

    /// Tags the heartbeats of one broadcast with a new round number, once this leader has
    /// committed an entry in its term: only then does its state reflect every earlier commit,
    /// which the callers of `confirm_leadership` rely on (raft-rs holds ReadIndex back likewise).
    fn tag_heartbeats(&mut self, msgs: &mut [Message]) {
        let raft = &self.raw.raft;
        if raft.state != StateRole::Leader || !raft.commit_to_current_term() {
            return;
        }
        let mut beats = msgs
            .iter_mut()
            .filter(|m| m.get_msg_type() == MessageType::MsgHeartbeat && m.context.is_empty())
            .peekable();
        if beats.peek().is_none() {
            return;
        }
        self.round += 1;
        let mut ctx = vec![ROUND_TAG];
        ctx.extend_from_slice(&self.id.to_le_bytes());
        ctx.extend_from_slice(&self.round.to_le_bytes());
        for m in beats {
            m.context = ctx.clone().into();
        }
        self.rounds.insert(self.round, (raft.term, BTreeSet::from([self.id])));
        while self.rounds.len() > ROUNDS_KEPT {
            self.rounds.pop_first();
        }
    }

    /// Counts a heartbeat response to one of our tagged rounds. Only an answer in the round's
    /// term counts: a follower that answers in term T has granted no vote in a later term yet.
    fn count_ack(&mut self, msg: &Message) {
        let raft = &self.raw.raft;
        if msg.get_msg_type() != MessageType::MsgHeartbeatResponse || raft.state != StateRole::Leader {
            return;
        }
        let term = raft.term;
        let Some(round) = self.our_round(&msg.context) else { return };
        let Some((sent_in, acks)) = self.rounds.get_mut(&round) else { return };
        if *sent_in != msg.term || *sent_in != term {
            return;
        }
        acks.insert(msg.from);
        let acks = acks.clone();
        if self.has_quorum(&acks) {
            self.rounds = self.rounds.split_off(&(round + 1));
            self.confirm_reads(round);
        }
    }

    fn has_quorum(&self, ids: &BTreeSet<u64>) -> bool {
        // raft-rs' set type has a hasher of its own: let inference pick it.
        let mut set = std::collections::HashSet::default();
        set.extend(ids.iter().copied());
        self.raw.raft.prs().has_quorum(&set)
    }

    /// The round number in a heartbeat context this node tagged.
    fn our_round(&self, ctx: &[u8]) -> Option<u64> {
        let (tag, rest) = ctx.split_first()?;
        let (id, round) = rest.split_at_checked(8)?;
        (*tag == ROUND_TAG && id == self.id.to_le_bytes()).then_some(())?;
        Some(u64::from_le_bytes(round.try_into().ok()?))
    }

    /// Confirms the reads of this term that came before `round` was sent.
    fn confirm_reads(&mut self, round: u64) {
        let term = self.raw.raft.term;
        let done: Vec<u64> =
            self.reads.iter().filter(|(_, r)| r.term == term && r.after < round).map(|(&seq, _)| seq).collect();
        for seq in done {
            if let Some(r) = self.reads.remove(&seq) {
                self.replies.push(Reply::Read(r.reply, Ok(())));
            }
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
        while self.raw.has_ready() {
            let mut ready = self.raw.ready();
            // A leader sends before persisting (raft thesis 10.2.1); raft-rs only puts
            // messages here when that is safe.
            self.send(ready.take_messages());
            if !ready.snapshot().is_empty() {
                let snap = ready.snapshot().clone();
                off_runtime(|| self.install_snapshot(snap))?;
            }
            self.apply(ready.take_committed_entries())?;
            if !ready.entries().is_empty() || ready.hs().is_some() {
                let store = self.raw.mut_store();
                off_runtime(|| -> anyhow::Result<()> {
                    store.append(ready.entries())?;
                    if let Some(hs) = ready.hs() {
                        store.set_hard_state(hs.clone())?;
                    }
                    Ok(())
                })?;
            }
            self.send(ready.take_persisted_messages());

            let mut light = self.raw.advance(ready);
            if let Some(commit) = light.commit_index() {
                let store = self.raw.mut_store();
                off_runtime(|| store.set_commit(commit))?;
            }
            self.send(light.take_messages());
            self.apply(light.take_committed_entries())?;
            self.raw.advance_apply();
            self.maybe_compact()?;
        }
        self.fail_if_leadership_lost();
        self.publish();
        Ok(())
    }

    fn send(&mut self, mut msgs: Vec<Message>) {
        if msgs.is_empty() {
            return;
        }
        self.tag_heartbeats(&mut msgs);
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

    fn maybe_compact(&mut self) -> anyhow::Result<()> {
        let snap_index = self.raw.store().snapshot_index();
        if self.snapshot_threshold == 0 || self.applied - snap_index < self.snapshot_threshold {
            return Ok(());
        }
        let data = self.sm.snapshot().context("snapshot of the state for compaction")?;
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
