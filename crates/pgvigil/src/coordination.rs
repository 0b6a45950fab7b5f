//! The coordinator's IO shell: feeds Raft leadership and reports into the pure [`Coordinator`],
//! confirms leadership before a lease grant, and proposes its decisions.

use crate::daemon::Shared;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;
use vigil_core::repeats::{Repeats, LOG_EVERY};
use vigil_core::{Command, HealthReport};
use vigil_raft::proto::ReportAck;
use vigil_raft::RaftStatus;

pub(crate) fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Bring the coordinator's idea of leadership up to date with Raft's; returns the status used.
fn sync_leadership(shared: &Shared) -> RaftStatus {
    let status = shared.raft.status().borrow().clone();
    let term = status.is_leader.then_some(status.term);
    shared.coordinator().set_leader(Instant::now(), term);
    status
}

pub async fn handle_report(shared: &Shared, report: HealthReport) -> ReportAck {
    let status = sync_leadership(shared);
    if !status.is_leader {
        let coordinator = shared.peers.get(&status.leader_id).map(|(n, _)| n.clone()).unwrap_or_default();
        return ReportAck {
            is_coordinator: false,
            coordinator,
            lease_granted: false,
            epoch: 0,
            term: status.term,
            primary_lsn: 0,
            ..Default::default()
        };
    }
    let state = shared.committed();
    let member = report.member.clone();
    shared.telemetry.on_report(&state, &report);
    let arrived = Instant::now();
    let answer = shared.coordinator().on_report(arrived, report, &state);
    // During a switchover every report may be the one that lets it complete.
    if state.switchover.as_ref().is_some_and(|s| s.started) {
        shared.wake_coordinator.notify_one();
    }
    let mut granted = false;
    if answer.grant {
        // Grant only what a quorum still backs: a deposed leader that has not noticed yet must
        // not extend the primary's lease.
        let timeout = shared.settings.timings.lease_timeout / 2;
        match shared.raft.confirm_leadership(timeout).await {
            // Judged again on the state applied after the quorum round: a new leader may have
            // answered from a state without its predecessor's last entries (a failover).
            // The grant is dated when the report arrived, not when the round ended: still after
            // the report was sent (all the promotion wait needs), and the wait does not grow by
            // the round's latency (up to a heartbeat interval).
            Ok(()) => {
                let after = shared.committed();
                granted = shared.coordinator().confirm_grant(arrived, &member, answer.epoch, &after);
            }
            Err(e) => tracing::debug!(%member, "lease not renewed: leadership not confirmed: {e}"),
        }
    }
    let primary_lsn = state
        .primary
        .as_ref()
        .and_then(|p| shared.coordinator().reports().get(p).map(|r| r.report.wal_position()))
        .unwrap_or(0);
    // What the members' routing proxies need: the primary's lease as granted, the standbys.
    let (primary_lease_ms, primary_writable, standbys) = crate::proxy_feed::answer(shared, &state);
    ReportAck {
        primary_lease_ms,
        primary_writable,
        standbys,
        is_coordinator: true,
        coordinator: shared.name().to_string(),
        lease_granted: granted,
        epoch: answer.epoch,
        term: status.term,
        primary_lsn,
    }
}

/// Every loop interval, or when the committed state changes: decide, and propose the decisions.
pub async fn run(shared: Arc<Shared>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let interval = shared.settings.timings.loop_interval;
    let mut state_rx = shared.raft.state();
    let mut last_transfer: Option<Instant> = None;
    let mut last_blocked: Option<String> = None;
    // Proposals that fail the same way tick after tick (no quorum for a moment): thinned.
    let mut failed: Repeats<String> = Repeats::new(LOG_EVERY);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {}
            _ = shared.wake_coordinator.notified() => {}
            r = state_rx.changed() => if r.is_err() { return Ok(()) },
        }
        shared.alive.mark_coordinator();
        for (what, e) in failed.expired(Instant::now()) {
            tracing::info!(failures = e.total, suppressed = e.suppressed, "no more failed proposals: {what}");
        }
        if !sync_leadership(&shared).is_leader {
            continue;
        }
        let state = shared.committed();
        let commands = shared.coordinator().decide(Instant::now(), &state, wall_ms());
        let blocked = {
            let c = shared.coordinator();
            c.lease_expires_in(Instant::now(), &state)
                .filter(|left| left.is_zero())
                .and_then(|_| c.sync_failover_blocked(Instant::now(), &state))
        };
        if blocked != last_blocked {
            if let Some(why) = &blocked {
                tracing::warn!("the primary's lease has expired but no failover is possible: {why}");
            }
            last_blocked = blocked;
        }
        for cmd in commands {
            propose(&shared, cmd, &mut failed).await;
        }
        // Not on the primary's host: its death should not also cost an election. At most one
        // attempt per few seconds, so a refused transfer does not churn.
        let target = shared.coordinator().leadership_target(Instant::now(), &state, shared.name());
        // Not while this coordinator measures a change of primary (about a second after the
        // commit): the new primary's first writable report ends the measurement, here.
        if let Some(target) = target.filter(|_| !shared.telemetry.measuring(Instant::now())) {
            if last_transfer.is_none_or(|t| t.elapsed() > interval * 20) {
                tracing::info!(%target, "handing the coordinator role off the primary's host");
                shared.raft.transfer_leader(vigil_core::node_id(&target));
                last_transfer = Some(Instant::now());
            }
        }
    }
}

async fn propose(shared: &Shared, cmd: Command, failed: &mut Repeats<String>) {
    let important = !matches!(cmd, Command::UpsertMember { .. });
    if important {
        tracing::warn!(command = ?cmd, "proposing");
    }
    let timeout = shared.settings.timings.lease_timeout;
    if let Command::Failover { from_epoch, .. } = &cmd {
        shared.telemetry.change_proposed(Instant::now(), shared, *from_epoch, false);
    }
    if let Command::CompleteSwitchover { .. } = &cmd {
        let state = shared.committed();
        let planned = state.switchover.as_ref().is_some_and(|s| !s.forced);
        shared.telemetry.change_proposed(Instant::now(), shared, state.epoch, planned);
    }
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
    }
}
