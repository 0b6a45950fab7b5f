//! Prometheus metrics (`GET /metrics`) through the `metrics` facade.
//!
//! Gauges that mirror state (role, epoch, lease, ...) are set from the current state at each
//! scrape; the health-check histogram is recorded by the agent as it observes PostgreSQL; the
//! duration of a failover (or of a planned switchover) is measured by the coordinator, from when
//! the old primary was last seen taking writes until the new primary first reports that it does.

use crate::daemon::Shared;
use crate::http_api::Snapshot;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use vigil_core::coordinator::Received;
use vigil_core::{ClusterState, EventKind, HealthReport};

const ROLES: [&str; 4] = ["primary", "replica", "witness", "uninitialized"];

/// Histogram buckets (seconds) for the PostgreSQL health check.
const BUCKETS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

/// A change of primary being measured: the epoch it replaces, when the old primary was last
/// healthy, when it was proposed, and the gauge that gets its duration.
#[derive(Clone, Copy)]
struct Measuring {
    from_epoch: u64,
    since: Instant,
    proposed: Instant,
    gauge: &'static str,
}

/// How long after its proposal a change may hold the coordinator role for its measurement.
const MEASURE_AT_MOST: Duration = Duration::from_secs(10);

pub struct Telemetry {
    handle: Option<PrometheusHandle>,
    /// A change of primary in progress: the epoch it replaces, when the old primary was last
    /// healthy, and the gauge that gets its duration.
    failover: Mutex<Option<Measuring>>,
    /// When a report last arrived while the cluster was paused: no failover may start before the
    /// resume, so a change is measured from no earlier than that (not from a primary lost long ago).
    last_paused: Mutex<Option<Instant>>,
}

/// Record how long one observation of the local PostgreSQL took.
pub fn health_check_took(d: Duration) {
    metrics::histogram!("pgvigil_health_check_duration_seconds").record(d.as_secs_f64());
}

impl Telemetry {
    /// Install the process's recorder (once per process; a second daemon in the same process
    /// gets no metrics and a warning).
    pub fn install() -> Telemetry {
        let handle = match PrometheusBuilder::new().set_buckets(&BUCKETS).and_then(|b| b.install_recorder()) {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::warn!("no metrics: {e}");
                None
            }
        };
        describe();
        Telemetry { handle, failover: Mutex::new(None), last_paused: Mutex::new(None) }
    }

    /// Drain histogram samples; call now and then.
    pub fn upkeep(&self) {
        if let Some(h) = &self.handle {
            h.run_upkeep();
        }
    }

    /// The coordinator proposes replacing the primary of `from_epoch`: by a failover (automatic
    /// or forced), or by a planned switchover (`planned`), measured apart.
    /// `last`: the old primary's latest report to this coordinator.
    pub fn change_proposed(&self, now: Instant, last: Option<&Received>, from_epoch: u64, planned: bool) {
        let since = match last {
            Some(r) if r.report.pg.running => r.at,
            Some(r) => r.at.checked_sub(r.report.pg.down_for).unwrap_or(r.at),
            None => now,
        };
        let paused = *self.last_paused.lock().unwrap_or_else(|p| p.into_inner());
        let since = paused.map_or(since, |p| since.max(p));
        let mut f = self.failover.lock().unwrap_or_else(|p| p.into_inner());
        if !matches!(*f, Some(m) if m.from_epoch == from_epoch) {
            let gauge = if planned {
                "pgvigil_last_switchover_duration_seconds"
            } else {
                "pgvigil_last_failover_duration_seconds"
            };
            *f = Some(Measuring { from_epoch, since, proposed: now, gauge });
        }
    }

    /// A change proposed here in the last few seconds is still waiting for the new primary's
    /// first writable report.
    pub fn measuring(&self, now: Instant) -> bool {
        let f = self.failover.lock().unwrap_or_else(|p| p.into_inner());
        f.is_some_and(|m| now.saturating_duration_since(m.proposed) < MEASURE_AT_MOST)
    }

    /// A report reached the coordinator: the first writable report of the new primary ends the
    /// change being measured.
    pub fn on_report(&self, state: &ClusterState, r: &HealthReport) {
        if state.paused {
            *self.last_paused.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        }
        let mut f = self.failover.lock().unwrap_or_else(|p| p.into_inner());
        let Some(Measuring { from_epoch, since, gauge, .. }) = *f else { return };
        if state.epoch > from_epoch.saturating_add(1) {
            // Another change happened since (made by another coordinator): this one's end was
            // not seen here, and any interval measured now would be stale.
            *f = None;
        } else if state.epoch > from_epoch && state.is_primary(&r.member) && r.pg.running && !r.pg.in_recovery {
            metrics::gauge!(gauge).set(since.elapsed().as_secs_f64());
            *f = None;
        }
    }

    /// The Prometheus text, with the state gauges brought up to date.
    pub fn render(&self, shared: &Shared) -> String {
        let Some(handle) = &self.handle else { return String::new() };
        let snap = Snapshot::take(shared);
        let local = snap.local(shared);
        let role = local.role();
        for r in ROLES {
            metrics::gauge!("pgvigil_role", "role" => r).set(if r == role { 1.0 } else { 0.0 });
        }
        let s = &snap.state;
        metrics::gauge!("pgvigil_epoch").set(s.epoch as f64);
        metrics::gauge!("pgvigil_timeline").set(if snap.pg.running { f64::from(snap.pg.timeline) } else { 0.0 });
        metrics::gauge!("pgvigil_postgres_running").set(bool_f(snap.pg.running));
        let raft = shared.raft.status().borrow().clone();
        metrics::gauge!("pgvigil_raft_term").set(raft.term as f64);
        metrics::gauge!("pgvigil_raft_is_leader").set(bool_f(raft.is_leader));
        metrics::gauge!("pgvigil_raft_leader_known").set(bool_f(raft.leader_id != 0));
        for (id, (name, _)) in &shared.peers {
            let leads = *id == raft.leader_id;
            metrics::gauge!("pgvigil_coordinator", "member" => name.clone()).set(bool_f(leads));
        }
        let lag = if role == "replica" { local.lag().unwrap_or(0) } else { 0 };
        metrics::gauge!("pgvigil_replication_lag_bytes", "member" => shared.name().to_string()).set(lag as f64);
        let remaining = shared.lease_remaining(s.epoch, Instant::now());
        metrics::gauge!("pgvigil_lease_remaining_seconds").set(remaining.as_secs_f64());
        metrics::gauge!("pgvigil_fenced").set(bool_f(local.fenced()));
        metrics::gauge!("pgvigil_paused").set(bool_f(s.paused));
        let (failovers, switchovers) = event_counts(s);
        metrics::counter!("pgvigil_failovers_total").absolute(failovers);
        metrics::counter!("pgvigil_switchovers_total").absolute(switchovers);
        handle.render()
    }
}

fn bool_f(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

/// Failovers and switchovers in the committed history (its last `HISTORY_LIMIT` events).
fn event_counts(s: &ClusterState) -> (u64, u64) {
    let count = |k: EventKind| s.history.iter().filter(|e| e.kind == k).count() as u64;
    (count(EventKind::Failover), count(EventKind::Switchover))
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!("pgvigil_role", "1 for this member's role (label role), 0 for the others");
    describe_gauge!("pgvigil_epoch", "The committed epoch (bumped at each change of primary)");
    describe_gauge!("pgvigil_timeline", "PostgreSQL's timeline (0 when it is not running)");
    describe_gauge!("pgvigil_postgres_running", "1 when PostgreSQL accepts connections");
    describe_gauge!("pgvigil_raft_term", "The Raft term");
    describe_gauge!("pgvigil_raft_is_leader", "1 when this member is the Raft leader (the coordinator)");
    describe_gauge!("pgvigil_raft_leader_known", "1 when this member knows a Raft leader");
    describe_gauge!(
        "pgvigil_coordinator",
        "1 for the member (label member) this one knows as the coordinator (the Raft leader), 0 for the others"
    );
    describe_gauge!(
        "pgvigil_replication_lag_bytes",
        Unit::Bytes,
        "How far this standby is behind the primary's last known WAL position"
    );
    describe_histogram!("pgvigil_health_check_duration_seconds", Unit::Seconds, "Time to observe the local PostgreSQL");
    describe_counter!("pgvigil_failovers_total", "Failovers in the committed history");
    describe_counter!("pgvigil_switchovers_total", "Switchovers in the committed history");
    describe_gauge!(
        "pgvigil_last_failover_duration_seconds",
        Unit::Seconds,
        "Measured by the coordinator: from the failed primary's last healthy report to the new primary's first writable one"
    );
    describe_gauge!(
        "pgvigil_last_switchover_duration_seconds",
        Unit::Seconds,
        "Measured by the coordinator: from the old primary's clean stop to the new primary's first writable report"
    );
    describe_gauge!("pgvigil_lease_remaining_seconds", Unit::Seconds, "Time left on this member's primary lease");
    describe_gauge!(
        "pgvigil_fenced",
        "1 when this member is kept from writing (no lease as primary, or needs a rejoin)"
    );
    describe_gauge!("pgvigil_paused", "1 when automatic failover is paused");
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_core::{Command, Member, MemberKind};

    #[test]
    fn failovers_are_counted_from_the_history() {
        let mut s = ClusterState::default();
        for n in ["a", "b"] {
            let m = Member { kind: MemberKind::Postgres, ..Default::default() };
            s.apply(&Command::UpsertMember { name: n.into(), member: m, at_unix_ms: 0 }).ok();
        }
        s.apply(&Command::Bootstrap { member: "a".into(), at_unix_ms: 0 }).ok();
        assert_eq!(event_counts(&s), (0, 0));
        s.apply(&Command::Failover { from_epoch: 1, to: "b".into(), reason: String::new(), at_unix_ms: 0 }).ok();
        s.apply(&Command::Failover { from_epoch: 2, to: "a".into(), reason: String::new(), at_unix_ms: 0 }).ok();
        assert_eq!(event_counts(&s), (2, 0));
    }
}
