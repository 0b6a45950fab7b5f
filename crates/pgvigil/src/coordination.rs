//! The coordinator's IO shell. One task owns the pure [`Coordinator`] and steps it with everything
//! that happens here: Raft's leadership, reports, quorum confirmations, ticks, operators' requests
//! ([`Coordinator::step`]). The peer service, the reporter, the API and the request handler talk to
//! it through a [`CoordinatorHandle`]; the IO an output asks for (a quorum round, proposals, a
//! leadership transfer) runs outside the task, so a slow Raft never holds up a report's answer.

use crate::daemon::Shared;
use crate::replicated::Replicated;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use vigil_core::repeats::{Repeats, LOG_EVERY};
use vigil_core::{Command, Coordinator, HealthReport, Input, Note, Output};
use vigil_raft::proto::ReportAck;

pub(crate) fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

enum Msg {
    Step(Input, oneshot::Sender<Output>),
    Reports(oneshot::Sender<BTreeMap<String, HealthReport>>),
    /// Where a backup requested now runs ([`vigil_core::Coordinator::backup_placement`]).
    BackupPlacement(oneshot::Sender<Option<vigil_core::backup::Placement>>),
    /// Decide at once (a request was committed).
    Wake,
}

/// How the rest of the daemon reaches the coordinator task. Cheap to clone.
#[derive(Clone)]
pub struct CoordinatorHandle {
    tx: mpsc::Sender<Msg>,
}

/// The coordinator task's end of the channel, until [`run`] takes it.
pub struct CoordinatorTask {
    coordinator: Coordinator,
    rx: mpsc::Receiver<Msg>,
}

/// A handle and the task it talks to; the task runs once [`run`] is spawned with it.
pub fn channel(coordinator: Coordinator) -> (CoordinatorHandle, CoordinatorTask) {
    // Reports from every member and the API's requests; a full queue makes senders wait.
    let (tx, rx) = mpsc::channel(256);
    (CoordinatorHandle { tx }, CoordinatorTask { coordinator, rx })
}

impl CoordinatorHandle {
    /// Step `input`; None once the task has stopped (the daemon is shutting down).
    pub async fn step(&self, input: Input) -> Option<Output> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(Msg::Step(input, reply)).await.ok()?;
        answer.await.ok()
    }

    /// Every member's latest report as this coordinator has it (empty: not the coordinator).
    pub async fn reports(&self) -> BTreeMap<String, HealthReport> {
        let (reply, answer) = oneshot::channel();
        if self.tx.send(Msg::Reports(reply)).await.is_err() {
            return BTreeMap::new();
        }
        answer.await.unwrap_or_default()
    }

    /// Where a backup requested now runs (None: not the coordinator, or no primary).
    pub async fn backup_placement(&self) -> Option<vigil_core::backup::Placement> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(Msg::BackupPlacement(reply)).await.ok()?;
        answer.await.ok().flatten()
    }

    /// Decide now instead of at the next tick.
    pub fn wake(&self) {
        // A full queue will wake the task anyway.
        let _ = self.tx.try_send(Msg::Wake);
    }
}

pub async fn handle_report(shared: &Shared, report: HealthReport) -> ReportAck {
    let status = shared.raft.status().borrow().clone();
    let mut ack = ReportAck {
        is_coordinator: false,
        coordinator: shared.peers.get(&status.leader_id).map(|(n, _)| n.clone()).unwrap_or_default(),
        lease_granted: false,
        epoch: 0,
        term: status.term,
        primary_lsn: 0,
        ..Default::default()
    };
    if !status.is_leader {
        return ack;
    }
    let member = report.member.clone();
    // None: the task found this member no longer leads.
    let Some(answer) = shared.coordinator.step(Input::Report(Box::new(report))).await.and_then(|o| o.answer) else {
        return ack;
    };
    if let Some(pending) = answer.pending {
        // Grant only what a quorum still backs: a deposed leader that has not noticed yet must
        // not extend the primary's lease. The coordinator judges it again on the state applied
        // after the round.
        let timeout = shared.settings.timings.lease_timeout / 2;
        match shared.raft.confirm_leadership(timeout).await {
            Ok(()) => {
                let out = shared.coordinator.step(Input::LeaseConfirmed(pending)).await;
                ack.lease_granted = out.and_then(|o| o.granted) == Some(true);
            }
            Err(e) => tracing::debug!(%member, "lease not renewed: leadership not confirmed: {e}"),
        }
    }
    ack.is_coordinator = true;
    ack.coordinator = shared.name().to_string();
    ack.epoch = answer.epoch;
    ack.primary_lsn = answer.primary_lsn;
    // What the members' routing proxies need: the primary's lease as granted, the standbys.
    ack.proxy_json = crate::convert::encode_proxy(&answer.proxy).unwrap_or_else(|e| {
        // Not for this type; the proxies then hold and refuse writes, the safe side.
        tracing::debug!("the proxies' part of an answer cannot be encoded: {e}");
        String::new()
    });
    ack
}

/// Commands to propose in order, then a leadership transfer, done by the proposer task.
struct Batch {
    commands: Vec<Command>,
    transfer_to: Option<String>,
}

/// The coordinator task: steps the coordinator with every message, and decides every loop
/// interval or when the committed state changes, while no batch of proposals is in flight
/// (the next decision must see the last one's outcome).
pub async fn run(shared: Arc<Shared>, task: CoordinatorTask, shutdown: CancellationToken) -> anyhow::Result<()> {
    let CoordinatorTask { mut coordinator, mut rx } = task;
    let interval = shared.settings.timings.loop_interval;
    let mut state_rx = shared.raft.state();
    let (batch_tx, batch_rx) = mpsc::channel::<Batch>(1);
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    tokio::spawn(proposer(shared.clone(), batch_rx, done_tx, shutdown.clone()));
    let mut in_flight = false;
    let mut due = false;
    let mut tick = vigil_raft::beat::interval(interval);
    loop {
        // The primary's lease running out is decided on at once, not at the next loop. Armed only
        // within the last loop before it: at rest each renewal keeps it seconds away, and a timer
        // per round of this loop is not free.
        let now = Instant::now();
        let lease_deadline = coordinator
            .lease_deadline(now, &state_rx.borrow().state)
            .filter(|at| at.saturating_duration_since(now) < interval);
        let lease_out = async {
            match lease_deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = lease_out => due = true,
            _ = shutdown.cancelled() => return Ok(()),
            msg = rx.recv() => match msg {
                None => return Ok(()),
                Some(Msg::Step(input, reply)) => {
                    let out = step(&shared, &mut coordinator, &state_rx, input);
                    due |= out.decide_soon;
                    let _ = reply.send(out);
                }
                Some(Msg::Reports(reply)) => {
                    let reports = coordinator.reports().iter().map(|(k, v)| (k.clone(), v.report.clone())).collect();
                    let _ = reply.send(reports);
                }
                Some(Msg::BackupPlacement(reply)) => {
                    let state = shared.committed();
                    let placed = coordinator.is_leader().then(|| coordinator.backup_placement(Instant::now(), &state)).flatten();
                    let _ = reply.send(placed);
                }
                Some(Msg::Wake) => due = true,
            },
            _ = tick.tick() => {
                shared.alive.mark_coordinator();
                due = true;
            }
            r = state_rx.changed() => if r.is_err() { return Ok(()) } else { due = true },
            _ = done_rx.recv(), if in_flight => in_flight = false,
        }
        if due && !in_flight {
            due = false;
            let keep_leadership = shared.telemetry.measuring(Instant::now());
            let out = step(&shared, &mut coordinator, &state_rx, Input::Tick { wall_ms: wall_ms(), keep_leadership });
            for note in &out.notes {
                match note {
                    Note::FailoverBlocked(why) => {
                        tracing::warn!("the primary's lease has expired but no failover is possible: {why}")
                    }
                }
            }
            measure(&shared, &coordinator, &state_rx.borrow().state, &out.proposals);
            if !out.proposals.is_empty() || out.transfer_to.is_some() {
                let batch = Batch { commands: out.proposals, transfer_to: out.transfer_to };
                in_flight = batch_tx.send(batch).await.is_ok();
            }
        }
    }
}

/// One step at one `now`: Raft's leadership as it is now first, then `input`, both judged against
/// the committed state as applied now.
fn step(shared: &Shared, c: &mut Coordinator, state_rx: &watch::Receiver<Replicated>, input: Input) -> Output {
    let now = Instant::now();
    let status = shared.raft.status().borrow().clone();
    let applied = state_rx.borrow();
    let state = &applied.state;
    c.step(now, state, Input::Leadership(status.is_leader.then_some(status.term)));
    if let Input::Report(r) = &input {
        if c.is_leader() {
            shared.telemetry.on_report(state, r);
        }
    }
    c.step(now, state, input)
}

/// A change of primary about to be proposed is measured from when the old primary was last healthy.
fn measure(shared: &Shared, c: &Coordinator, state: &vigil_core::ClusterState, proposals: &[Command]) {
    for cmd in proposals {
        let (from_epoch, planned) = match cmd {
            Command::Failover { from_epoch, .. } => (*from_epoch, false),
            Command::CompleteSwitchover { .. } => (state.epoch, state.switchover.as_ref().is_some_and(|s| !s.forced)),
            _ => continue,
        };
        let last = state.primary.as_ref().and_then(|p| c.reports().get(p));
        shared.telemetry.change_proposed(Instant::now(), last, from_epoch, planned);
    }
}

/// Proposes each batch's commands in order (each waits for its commit, up to a lease timeout),
/// then hands the leadership on if asked, then tells the coordinator task it is done.
async fn proposer(
    shared: Arc<Shared>,
    mut batches: mpsc::Receiver<Batch>,
    done: mpsc::Sender<()>,
    shutdown: CancellationToken,
) {
    // Proposals that fail the same way tick after tick (no quorum for a moment): thinned.
    let mut failed: Repeats<String> = Repeats::new(LOG_EVERY);
    loop {
        let batch = tokio::select! {
            _ = shutdown.cancelled() => return,
            b = batches.recv() => match b { Some(b) => b, None => return },
        };
        for (what, e) in failed.expired(Instant::now()) {
            tracing::info!(failures = e.total, suppressed = e.suppressed, "no more failed proposals: {what}");
        }
        for cmd in batch.commands {
            propose(&shared, cmd, &mut failed).await;
        }
        // Not on the primary's host: its death should not also cost an election.
        if let Some(target) = batch.transfer_to {
            tracing::info!(%target, "handing the coordinator role off the primary's host");
            shared.raft.transfer_leader(vigil_core::node_id(&target));
        }
        if done.send(()).await.is_err() {
            return;
        }
    }
}

async fn propose(shared: &Shared, cmd: Command, failed: &mut Repeats<String>) {
    let important = !matches!(cmd, Command::UpsertMember { .. });
    if important {
        tracing::warn!(command = ?cmd, "proposing");
    }
    let timeout = shared.settings.timings.lease_timeout;
    match shared.propose(&cmd, timeout).await {
        Ok(index) => {
            let state = shared.committed();
            tracing::info!(index, epoch = state.epoch, primary = ?state.primary, "committed {}", describe(&cmd));
        }
        Err(e) => {
            let what = format!("proposal {} not committed: {e}", describe(&cmd));
            match failed.occurred(Instant::now(), what.clone()) {
                Some(o) => tracing::warn!(suppressed = o.field(), "{what}"),
                None => tracing::debug!("{what}"),
            }
        }
    }
}

fn describe(cmd: &Command) -> String {
    match cmd {
        Command::UpsertMember { name, .. } => format!("member record of {name}"),
        Command::Bootstrap { member, .. } => format!("bootstrap by {member}"),
        Command::AgreeTimings { timings } => format!(
            "the cluster's lease timings: lease_timeout {} ms, lease_margin {} ms",
            timings.lease_timeout_ms, timings.lease_margin_ms
        ),
        Command::AbandonBootstrap { member, reason, .. } => format!("giving back the bootstrap by {member} ({reason})"),
        Command::Failover { to, from_epoch, .. } => format!("failover from epoch {from_epoch} to {to}"),
        Command::Sync { sync, reason, .. } => format!(
            "synchronous state ({reason}): mode {:?}, standbys {:?}, holders {:?}",
            sync.mode, sync.standbys, sync.holders
        ),
        Command::RecordRejoin { member, record } => format!("{:?} of {member}", record.method),
        Command::SetPaused { paused: true, .. } => "pause".into(),
        Command::SetPaused { paused: false, .. } => "resume".into(),
        Command::BeginSwitchover { id, to, forced: true, .. } => format!("forced failover {id} to {to}"),
        Command::BeginSwitchover { id, to, .. } => format!("switchover {id} to {to}"),
        Command::StartSwitchover { id, .. } => format!("start of switchover {id}"),
        Command::CancelSwitchover { id, reason, .. } => format!("cancellation of switchover {id} ({reason})"),
        Command::CompleteSwitchover { id, .. } => format!("completion of switchover {id}"),
        Command::RequestReinit { id, member, .. } => format!("reinit {id} of {member}"),
        Command::Backup { backup } => crate::backup::describe(backup),
    }
}
