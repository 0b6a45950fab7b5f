//! What the routing proxy learns from the coordinator: the coordinator's side (what its answer to
//! every report carries) and the member's side (the answer, dated by when the report was sent,
//! published in `Shared::proxy_feed` for the proxy).

use crate::daemon::Shared;
use std::time::{Duration, Instant};
use vigil_core::proxy::StandbyView;
use vigil_core::ClusterState;
use vigil_raft::proto;

/// One answer of the coordinator, as the proxy needs it.
#[derive(Clone, Debug)]
pub struct Feed {
    /// When this member sent the report the answer is about (the lease bound counts from it).
    pub sent_at: Instant,
    /// When the answer came.
    pub heard_at: Instant,
    pub epoch: u64,
    pub lease_left: Duration,
    pub primary_writable: bool,
    pub primary_lsn: u64,
    pub standbys: Vec<StandbyView>,
}

/// The coordinator's part of an answer to a report judged on `state`: how long the lease of the
/// primary of `state.epoch` still runs as granted, whether that primary last reported itself
/// writable, and every other member whose report is current.
pub(crate) fn answer(shared: &Shared, state: &ClusterState) -> (u64, bool, Vec<proto::StandbyView>) {
    let now = Instant::now();
    let coordinator = shared.coordinator();
    let left = coordinator.primary_lease_left(now, state);
    let report_timeout = shared.settings.timings.report_timeout;
    let mut writable = false;
    let mut standbys = Vec::new();
    for (name, r) in coordinator.reports() {
        if now.saturating_duration_since(r.at) > report_timeout {
            continue;
        }
        let pg = &r.report.pg;
        if state.is_primary(name) {
            writable = pg.running && !pg.in_recovery;
            continue;
        }
        if r.report.kind != vigil_core::MemberKind::Postgres {
            continue;
        }
        standbys.push(proto::StandbyView {
            member: name.clone(),
            running: pg.running,
            in_recovery: pg.in_recovery,
            streaming: pg.streaming,
            replay_lsn: pg.replay_lsn,
            replay_paused: pg.replay_paused,
            noloadbalance: r.report.noloadbalance,
        });
    }
    (u64::try_from(left.as_millis()).unwrap_or(u64::MAX), writable, standbys)
}

/// The member's side: publish an answer from the coordinator for the proxy (only when a
/// `[proxy]` runs: nobody else reads it).
pub(crate) fn publish(shared: &Shared, sent_at: Instant, ack: &proto::ReportAck) {
    if !ack.is_coordinator || shared.settings.raw.proxy.is_none() {
        return;
    }
    let feed = Feed {
        sent_at,
        heard_at: Instant::now(),
        epoch: ack.epoch,
        lease_left: Duration::from_millis(ack.primary_lease_ms),
        primary_writable: ack.primary_writable,
        primary_lsn: ack.primary_lsn,
        standbys: ack
            .standbys
            .iter()
            .map(|s| StandbyView {
                member: s.member.clone(),
                running: s.running,
                in_recovery: s.in_recovery,
                streaming: s.streaming,
                replay_lsn: s.replay_lsn,
                replay_paused: s.replay_paused,
                noloadbalance: s.noloadbalance,
            })
            .collect(),
    };
    shared.proxy_feed.send_replace(Some(feed));
}
