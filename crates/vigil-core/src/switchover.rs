//! The running switchover: the coordinator drives a pending one to its end
//! ([`Coordinator::switchover_step`]), with the checks an operator's request shares
//! ([`crate::request`] turns requests into commands; the replicated records are in [`crate::state`]).
//!
//! # A planned switchover, step by step
//! 1. `BeginSwitchover` commits the request as `ClusterState::switchover` (a scheduled one waits
//!    for its time on the coordinator's wall clock, then `StartSwitchover`).
//! 2. The old primary's agent, seeing it started, first writes a [`SwitchoverStop`] for it into its
//!    local memory, runs a `CHECKPOINT` (so the shutdown checkpoint is short), then shuts
//!    PostgreSQL down (fast). PostgreSQL's WAL senders send every record up to the shutdown
//!    checkpoint to the connected standbys and wait for them to confirm it before exiting. The
//!    agent reads the checkpoint's position with `pg_controldata` (state "shut down") and reports it.
//! 3. The coordinator commits `CompleteSwitchover` (epoch + 1, the candidate is primary) once the
//!    candidate reports it has replayed past that checkpoint: it then has every WAL record the old
//!    primary ever wrote, so nothing acknowledged can be lost, in any synchronous mode.
//! 4. The old primary's data directory ends exactly where the new primary's timeline forks off
//!    (the new timeline starts at the end of that checkpoint record), so its agent makes it a
//!    standby of the new primary (`standby.signal` + `primary_conninfo`) without `pg_rewind`.
//!
//! If the old primary does not report a clean stop, or the candidate does not catch up, within
//! `switchover_timeout` from the start, the coordinator commits `CancelSwitchover` and the old
//! primary starts again as primary. Completion and cancellation both require the switchover to be
//! pending, so the Raft log applies at most one of them.
//!
//! # Why no lease wait
//! The coordinator promotes without waiting for the old primary's lease to run out because the old
//! primary said, *after* the switchover was committed, that its PostgreSQL is cleanly shut down for
//! it, and its agent keeps it down for that epoch (local memory, written before the shutdown) until
//! its committed state shows the switchover cancelled. A cancelled switchover can no longer
//! complete, and a completed one moved the epoch on, so the old primary never gets a lease again for
//! the epoch it stopped. A forced failover has no such statement to rely on: the coordinator stops
//! granting the old primary's lease and promotes only after the usual `lease_timeout + lease_margin`.

use crate::candidate::{self, Excluded, Seen};
use crate::coordinator::{Coordinator, Received};
use crate::report::{HealthReport, MemberKind, SwitchoverStop};
use crate::state::{ClusterState, Command};
use std::time::Instant;

/// Whether `me`, the old primary of the switchover that made the current epoch, stopped cleanly
/// at the position it recorded in `stop`: then its data directory can follow the new primary as it
/// is (no rewind).
pub fn clean_switchover_source(state: &ClusterState, me: &str, stop: &SwitchoverStop) -> bool {
    state.last_switchover.as_ref().is_some_and(|o| {
        o.completed
            && o.from == me
            && o.id == stop.id
            && o.from_epoch == stop.epoch
            && o.epoch == state.epoch
            && stop.lsn != 0
            && o.lsn == Some(stop.lsn)
            && state.primary.as_deref() == Some(o.to.as_str())
    })
}

fn why(e: &Excluded, member: &str) -> String {
    match e {
        Excluded::IsPrimary => format!("{member} is the primary"),
        Excluded::NotPostgres => format!("{member} is a witness: it runs no PostgreSQL"),
        Excluded::NoFailoverTag => format!("{member} is tagged nofailover"),
        Excluded::NoCurrentReport => format!("no current report from {member}"),
        Excluded::NotARunningStandby => format!("{member} is not a running standby"),
        Excluded::NeedsRejoin => format!("{member} needs a rejoin"),
        Excluded::Lagging { behind } => {
            format!("{member} is {behind} bytes behind the primary (more than maximum_lag_on_failover)")
        }
    }
}

impl Coordinator {
    /// The configured preferred primary (the failback target); the coordinator's config wins.
    pub fn with_preferred_primary(mut self, member: Option<String>) -> Self {
        self.preferred_primary = member;
        self
    }

    pub(crate) fn seen<'a>(&self, now: Instant, r: &'a Received) -> Seen<'a> {
        Seen { report: &r.report, current: self.is_current(now, r) }
    }

    pub(crate) fn current_report(&self, now: Instant, member: &str) -> Option<&HealthReport> {
        self.reports.get(member).filter(|r| self.is_current(now, r)).map(|r| &r.report)
    }

    /// Why `to` cannot take over from `from` in a planned switchover now, if it cannot.
    pub(crate) fn planned_problem(&self, now: Instant, state: &ClusterState, from: &str, to: &str) -> Option<String> {
        let p = match self.current_report(now, from) {
            Some(p) if p.pg.running && !p.pg.in_recovery && p.epoch_seen == state.epoch => p,
            _ => return Some(format!("the primary {from} is not running as primary (if it is gone: POST /failover)")),
        };
        let Some(r) = self.reports.get(to) else { return Some(format!("no report from {to}")) };
        let limit = self.timings.maximum_lag_on_failover;
        if let Some(e) = candidate::exclusion(state, &self.seen(now, r), Some(p.wal_position()), limit) {
            return Some(why(&e, to));
        }
        // Its own word is enough (the primary's list of WAL senders may lag a report behind, and a
        // standby that just followed a timeline switch may still show the old timeline): one that
        // cannot follow the primary's last WAL never catches up, and the switchover is cancelled
        // with nothing lost. Completion checks the timeline.
        (!r.report.pg.streaming).then(|| format!("{to} is not streaming from {from}"))
    }

    /// Why `to` cannot be promoted by a forced failover now, if it cannot: a running standby
    /// (however far behind), and in a synchronous mode the holder with the most WAL.
    pub(crate) fn forced_problem(&self, now: Instant, state: &ClusterState, to: &str) -> Option<String> {
        let Some(r) = self.reports.get(to) else { return Some(format!("no report from {to}")) };
        if let Some(e) = candidate::exclusion(state, &self.seen(now, r), None, u64::MAX) {
            return Some(why(&e, to));
        }
        if !state.sync.mode.is_sync() {
            return None;
        }
        if let Some(blocked) = self.sync_failover_blocked(now, state) {
            return Some(blocked);
        }
        let holders: Vec<&str> = state.sync.holders.iter().map(String::as_str).collect();
        if !holders.contains(&to) {
            return Some(format!(
                "synchronous mode: {to} may lack acknowledged commits; only {} hold(s) them all",
                holders.join(", ")
            ));
        }
        let mine = r.report.wal_position();
        let ahead = holders.iter().find(|h| self.reports.get(**h).is_some_and(|x| x.report.wal_position() > mine));
        ahead.map(|h| format!("synchronous mode: {h} has more WAL than {to}"))
    }

    /// The next step of the pending switchover, if one is due: start a scheduled one, complete it,
    /// or cancel it. `wall_ms` decides only when a scheduled one starts.
    pub(crate) fn switchover_step(&mut self, now: Instant, state: &ClusterState, wall_ms: u64) -> Option<Command> {
        let s = state.switchover.as_ref().filter(|s| s.from_epoch == state.epoch)?;
        if !s.started {
            if wall_ms < s.not_before_unix_ms {
                return None;
            }
            let problem = if s.forced {
                self.forced_problem(now, state, &s.to)
            } else {
                self.planned_problem(now, state, &s.from, &s.to)
            };
            return Some(match problem {
                None => Command::StartSwitchover { id: s.id, at_unix_ms: wall_ms },
                Some(why) => Command::CancelSwitchover {
                    id: s.id,
                    reason: format!("at its scheduled time: {why}"),
                    at_unix_ms: wall_ms,
                },
            });
        }
        let since = match self.switchover_seen {
            Some((id, t)) if id == s.id => t,
            _ => {
                self.switchover_seen = Some((s.id, now));
                now
            }
        };
        let stop = self
            .reports
            .get(&s.from)
            .and_then(|r| r.report.pg.switchover_stop.as_ref().filter(|_| !r.report.pg.running))
            .filter(|st| st.id == s.id && st.epoch == s.from_epoch && st.lsn != 0);
        let target = self
            .current_report(now, &s.to)
            .filter(|r| r.pg.running && r.pg.in_recovery && !r.pg.needs_rejoin && r.kind == MemberKind::Postgres);
        if let (Some(stop), Some(t)) = (stop, target) {
            if t.pg.replay_lsn > stop.lsn && t.pg.timeline == stop.timeline {
                let reason = format!(
                    "switchover {} from {}: it stopped cleanly at {}; {} replayed up to {} ({})",
                    s.id,
                    s.from,
                    crate::format_lsn(stop.lsn),
                    s.to,
                    crate::format_lsn(t.pg.replay_lsn),
                    s.reason
                );
                return Some(Command::CompleteSwitchover {
                    id: s.id,
                    lsn: Some(stop.lsn),
                    reason,
                    at_unix_ms: wall_ms,
                });
            }
        }
        let lease_gone = self.lease_expires_in(now, state).is_some_and(|d| d.is_zero());
        if s.forced && lease_gone && self.forced_problem(now, state, &s.to).is_none() {
            let wal = self.reports.get(&s.to).map_or(0, |r| r.report.wal_position());
            let reason = format!(
                "failover {} ({}): {}'s lease ran out; promoting {} at WAL {}",
                s.id,
                s.reason,
                s.from,
                s.to,
                crate::format_lsn(wal)
            );
            return Some(Command::CompleteSwitchover { id: s.id, lsn: None, reason, at_unix_ms: wall_ms });
        }
        let timeout = self.timings.switchover_timeout;
        if now.saturating_duration_since(since) < timeout {
            return None;
        }
        let reason = match (stop, target) {
            (None, _) => format!("{} did not report a clean shutdown within {timeout:?}", s.from),
            (Some(stop), t) => format!(
                "{} did not replay {}'s WAL up to {} within {timeout:?} (it has {})",
                s.to,
                s.from,
                crate::format_lsn(stop.lsn),
                crate::format_lsn(t.map_or(0, |t| t.pg.replay_lsn))
            ),
        };
        let reason = match (s.forced, self.forced_problem(now, state, &s.to)) {
            (true, Some(p)) => format!("{p} (within {timeout:?})"),
            _ => reason,
        };
        Some(Command::CancelSwitchover { id: s.id, reason, at_unix_ms: wall_ms })
    }
}

#[cfg(test)]
#[path = "switchover_tests.rs"]
mod tests;
