//! The coordinator's one entry point: [`Coordinator::step`].
//!
//! The shell owns one `Coordinator` in one task and feeds it everything that happens, one
//! [`Input`] at a time, with one `now` per step and the committed state as applied at that moment.
//! The [`Output`] says what to do: commands to propose, the answer to a report, the quorum round a
//! lease grant waits for, where to hand the leadership, an operator's decision, lines to log. The
//! order of calls that used to live in the shell (leadership, then report, then grant) lives here,
//! so the daemon, the simulation and the tests drive the same thing.
//!
//! A lease grant takes two steps because a quorum round lies between them: [`Input::Report`]
//! answers with a [`PendingGrant`] when the sender would get the lease; the shell confirms its
//! leadership with a quorum (IO), then steps [`Input::LeaseConfirmed`] with it, which records the
//! grant only if the state applied after the round still makes the sender the primary.

use crate::coordinator::Coordinator;
use crate::report::HealthReport;
use crate::request::{Decision, Refusal, Request};
use crate::state::{ClusterState, Command};
use std::time::{Duration, Instant};

/// Something the coordinator must know about.
#[derive(Clone, Debug)]
pub enum Input {
    /// Raft's leadership now: `Some(term)` while this member leads. Step it before any other
    /// input whenever it may have changed (the shell does before every step).
    Leadership(Option<u64>),
    /// A member's health report arrived.
    Report(Box<HealthReport>),
    /// The quorum round for a [`PendingGrant`] confirmed this leadership; the state given with
    /// this step must be the one applied after the round.
    LeaseConfirmed(PendingGrant),
    /// Time to decide: a tick, a committed change, a report that may finish a switchover.
    /// `keep_leadership`: do not hand the coordinator role off now (the shell is measuring a
    /// change of primary, which the new primary's first report to this coordinator ends).
    Tick { wall_ms: u64, keep_leadership: bool },
    /// An operator's request, after the shell confirmed this leadership with a quorum.
    Request { request: Request, wall_ms: u64 },
}

/// A grant the coordinator would make once a quorum confirms its leadership.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingGrant {
    pub member: String,
    pub epoch: u64,
    /// When the report arrived: the grant is dated then (after it was sent, all the promotion
    /// wait needs; the round's latency does not lengthen the wait).
    pub arrived: Instant,
}

/// The answer to a report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportAnswer {
    /// The committed epoch the answer speaks of.
    pub epoch: u64,
    /// The sender gets the lease for `epoch` once a quorum confirms this leadership.
    pub pending: Option<PendingGrant>,
    /// The primary's WAL position as last reported here (0: not known).
    pub primary_lsn: u64,
    /// For the members' routing proxies: the primary's lease as granted, the standbys.
    pub proxy: crate::proxy::ProxyAnswer,
}

/// Something worth a log line, said once when it changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Note {
    /// The primary's lease has expired but no failover is possible, and why.
    FailoverBlocked(String),
}

/// What to do after a step. Empty fields: nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Output {
    /// Commands to propose, in this order.
    pub proposals: Vec<Command>,
    /// For [`Input::Report`] from a leader: the answer to send back.
    pub answer: Option<ReportAnswer>,
    /// For [`Input::LeaseConfirmed`]: whether the lease is granted.
    pub granted: Option<bool>,
    /// Decide again soon (a report that may let a switchover complete).
    pub decide_soon: bool,
    /// Hand the Raft leadership to this member.
    pub transfer_to: Option<String>,
    /// For [`Input::Request`] to a leader: the decision, or how long to wait before asking again.
    pub decision: Option<Result<Decision, Refusal>>,
    pub notes: Vec<Note>,
}

/// A new coordinator answers requests only after this many loop intervals: until then it may not
/// have every member's report to check them against.
const SETTLE_LOOPS: u32 = 2;

/// How often the coordinator role may be handed off the primary's host, in loop intervals: a
/// refused transfer must not churn.
const TRANSFER_EVERY_LOOPS: u32 = 20;

impl Coordinator {
    /// Take one input at `now`, judged against `state` (the committed state as applied now).
    pub fn step(&mut self, now: Instant, state: &ClusterState, input: Input) -> Output {
        let mut out = Output::default();
        match input {
            Input::Leadership(term) => self.set_leader(now, term),
            Input::Report(report) => {
                if !self.is_leader() {
                    return out;
                }
                let member = report.member.clone();
                let answer = self.on_report(now, *report, state);
                out.decide_soon = state.switchover.as_ref().is_some_and(|s| s.started);
                let primary_lsn = state
                    .primary
                    .as_ref()
                    .and_then(|p| self.reports.get(p))
                    .map(|r| r.report.wal_position())
                    .unwrap_or(0);
                out.answer = Some(ReportAnswer {
                    epoch: answer.epoch,
                    pending: answer.grant.then_some(PendingGrant { member, epoch: answer.epoch, arrived: now }),
                    primary_lsn,
                    proxy: crate::proxy::answer(self, now, state),
                });
            }
            Input::LeaseConfirmed(g) => {
                out.granted = Some(self.confirm_grant(g.arrived, &g.member, g.epoch, state));
            }
            Input::Tick { wall_ms, keep_leadership } => {
                out.proposals = self.decide(now, state, wall_ms);
                // Backups are decided from the same state, after the coordinator's own commands.
                if let Some(policy) = self.backups.as_ref().filter(|_| self.is_leader()) {
                    let seen = self.backup_seen(now, state);
                    let view = crate::backup::View {
                        epoch: state.epoch,
                        primary: state.primary.as_deref(),
                        switchover: state.switchover.is_some(),
                        backup: &state.backup,
                        standbys: self.running_standbys(now, state),
                        backup_standbys: seen.backup_standbys,
                        source: seen.source,
                        gone: seen.gone,
                    };
                    let backups = crate::backup::decide(&view, policy, wall_ms);
                    out.proposals.extend(backups.into_iter().map(|backup| Command::Backup { backup }));
                }
                let blocked = self
                    .lease_expires_in(now, state)
                    .filter(|left| left.is_zero())
                    .and_then(|_| self.sync_failover_blocked(now, state));
                if blocked != self.last_blocked {
                    out.notes.extend(blocked.clone().map(Note::FailoverBlocked));
                    self.last_blocked = blocked;
                }
                let every = self.timings.loop_interval * TRANSFER_EVERY_LOOPS;
                let due = self.last_transfer.is_none_or(|t| now.saturating_duration_since(t) > every);
                // Not in a step that changes the primary: the target was chosen on the state
                // before the change, and the change is measured here.
                let changes_primary = out
                    .proposals
                    .iter()
                    .any(|c| matches!(c, Command::Failover { .. } | Command::CompleteSwitchover { .. }));
                if !keep_leadership && due && !changes_primary {
                    out.transfer_to = self.leadership_target(now, state);
                    if out.transfer_to.is_some() {
                        self.last_transfer = Some(now);
                    }
                }
            }
            // Not the leader: no decision (the shell answers that the coordinator moved).
            Input::Request { .. } if !self.is_leader() => {}
            Input::Request { request, wall_ms } => {
                let settle = self.timings.loop_interval * SETTLE_LOOPS;
                let young = self.leader_for(now).and_then(|age| settle.checked_sub(age)).filter(|d| !d.is_zero());
                out.decision = Some(match young {
                    Some(left) => Ok(Decision::Wait(left)),
                    None => self.request(now, state, &request, wall_ms),
                });
            }
        }
        out
    }
}

impl Output {
    /// How long to wait before asking again, when the decision says so.
    pub fn wait(&self) -> Option<Duration> {
        match self.decision {
            Some(Ok(Decision::Wait(d))) => Some(d),
            _ => None,
        }
    }
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
