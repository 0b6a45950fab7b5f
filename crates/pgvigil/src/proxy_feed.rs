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

/// The member's side: publish an answer from the coordinator for the proxy (only when a
/// `[proxy]` runs: nobody else reads it). An answer without the proxies' part publishes nothing:
/// the proxy's lease bound then runs out from the last one, the safe side.
pub(crate) fn publish(shared: &Shared, sent_at: Instant, ack: &proto::ReportAck) {
    if !ack.is_coordinator || shared.settings.raw.proxy.is_none() {
        return;
    }
    let answer = match crate::convert::decode_proxy(&ack.proxy_json) {
        Ok(Some(a)) => a,
        Ok(None) => return,
        Err(e) => {
            tracing::debug!("the coordinator's answer for the proxy is not usable: {e}");
            return;
        }
    };
    let feed = Feed {
        sent_at,
        heard_at: Instant::now(),
        epoch: ack.epoch,
        lease_left: answer.lease_left,
        primary_writable: answer.primary_writable,
        primary_lsn: ack.primary_lsn,
        standbys: answer.standbys,
    };
    shared.proxy_feed.send_replace(Some(feed));
}
