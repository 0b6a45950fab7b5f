//! What the routing proxy learns from the coordinator: the coordinator's side (what its answer to
//! every report carries) and the member's side (the answer, dated by when the report was sent,
//! published in `Shared::proxy_feed` for the proxy).

use crate::daemon::Shared;
use std::time::{Duration, Instant};
use vigil_core::proxy::StandbyView;
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

/// The coordinator's part for the proxies, put into its answer to a report (once, at the wire).
pub(crate) fn fill(ack: &mut proto::ReportAck, a: &vigil_core::proxy::ProxyAnswer) {
    ack.primary_lease_ms = u64::try_from(a.lease_left.as_millis()).unwrap_or(u64::MAX);
    ack.primary_writable = a.primary_writable;
    ack.standbys = a
        .standbys
        .iter()
        .map(|s| proto::StandbyView {
            member: s.member.clone(),
            running: s.running,
            in_recovery: s.in_recovery,
            streaming: s.streaming,
            replay_lsn: s.replay_lsn,
            replay_paused: s.replay_paused,
            noloadbalance: s.noloadbalance,
        })
        .collect();
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
