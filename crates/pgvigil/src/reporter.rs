//! The agent's reporter task: a health report every loop (at once when the committed state
//! changes), the primary's lease from the answers, the lease handed to the keeper, and the fence
//! the moment the lease runs out, however busy the reconciler is.

use crate::daemon::Shared;
use crate::hooks::{Details, Event};
use crate::{convert, coordination};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use vigil_core::{HealthReport, Lease, PgStatus};
use vigil_pg::Fencer;
use vigil_raft::proto;

/// What the reporter needs from the reconciler, and the lease they share.
pub(crate) struct Link {
    pub(crate) status: watch::Receiver<PgStatus>,
    pub(crate) lease: Arc<Mutex<Lease>>,
    /// The epoch for which this member has acted as primary (0: none); the reporter fences when
    /// the lease for it is gone.
    pub(crate) acting_epoch: Arc<AtomicU64>,
    pub(crate) fencer: Option<Fencer>,
    /// The reconciler asks for a report now.
    pub(crate) report_now: Arc<Notify>,
    /// The reporter asks the reconciler to look again now (a lease was granted).
    pub(crate) reconcile_now: Arc<Notify>,
}

/// Report every loop (at once on a state change or when the reconciler asks), keep the lease,
/// fence when it runs out.
pub(crate) async fn reporter(shared: Arc<Shared>, link: Link, shutdown: CancellationToken) {
    let base = shared.settings.timings.loop_interval;
    let mut state_rx = shared.raft.state();
    let mut next = Instant::now();
    // The lease the keeper was last given, and the epoch whose lapse was already fenced (once:
    // a stopped server does not go away faster for being signalled again).
    let mut pushed: Option<Option<(u64, Instant)>> = None;
    let mut fenced_epoch = 0;
    // The agreed lease timings this member last compared its file with.
    let mut compared = None;
    loop {
        shared.alive.mark_reporter();
        let acting = link.acting_epoch.load(Ordering::SeqCst);
        let lease_end = link.lease.lock().unwrap_or_else(|p| p.into_inner()).expires_at(acting);
        let wake = lease_end.filter(|_| acting != 0 && fenced_epoch != acting).map_or(next, |e| e.min(next));
        // A new committed state is reported at once: a new primary is waiting for its lease.
        let force = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep_until(wake.into()) => false,
            _ = link.report_now.notified() => true,
            r = state_rx.changed() => if r.is_err() { return } else { true },
        };
        if force || Instant::now() >= next {
            // While a switchover runs, the coordinator waits for the old primary's and the
            // candidate's next reports: report more often.
            let switching = state_rx.borrow().state.switchover.as_ref().is_some_and(|s| s.started);
            next = vigil_raft::beat::next(if switching { base / 5 } else { base });
            let committed = shared.committed();
            let epoch = committed.epoch;
            if committed.lease_timings != compared {
                compared = committed.lease_timings;
                say_if_the_file_differs(&shared, compared);
            }
            let held = shared.lease_valid(epoch, Instant::now());
            // The cluster's lease, which every coordinator waits out; not this file's.
            let lease_timeout = shared.settings.timings.agreed(committed.lease_timings).lease_timeout;
            send_report(&shared, &link, epoch, lease_timeout).await;
            if !held && shared.lease_valid(epoch, Instant::now()) {
                link.reconcile_now.notify_one();
            }
        }
        let acting = link.acting_epoch.load(Ordering::SeqCst);
        let (lease_ok, lease_end) = {
            let l = link.lease.lock().unwrap_or_else(|p| p.into_inner());
            (l.valid(acting, Instant::now()), l.expires_at(acting))
        };
        if let Some(fencer) = &link.fencer {
            // The keeper enforces the same deadline on its own, should this daemon stall.
            let wanted = if acting != 0 { lease_end.map(|t| (acting, t)) } else { None };
            if pushed != Some(wanted) && fencer.set_lease(wanted).await.is_ok() {
                pushed = Some(wanted);
            }
        }
        if lease_ok {
            fenced_epoch = 0;
        }
        if acting != 0 && !lease_ok && fenced_epoch != acting {
            fenced_epoch = acting;
        } else {
            continue;
        }
        if link.fencer.as_ref().is_some_and(|f| f.fence_now()) {
            tracing::warn!(epoch = acting, "lease expired: PostgreSQL fenced (immediate shutdown)");
            shared.hooks.fire(
                Event::Fence,
                Details {
                    role: "fenced".into(),
                    epoch: acting,
                    reason: "the primary lease expired".into(),
                    ..Default::default()
                },
            );
        }
    }
}

async fn send_report(shared: &Shared, link: &Link, epoch: u64, lease_timeout: std::time::Duration) {
    let s = &shared.settings;
    let pg = link.status.borrow().clone();
    let tags = shared.runtime.borrow().tags.tags();
    let (pg_host, pg_port) = s.raw.postgres.as_ref().map_or((String::new(), 0), |p| (p.listen_address.clone(), p.port));
    // The proxy's summary rides along for `pgvigil list` on any member (bounded: no member is
    // asked for it while `list` waits).
    let proxy = shared.proxy_status.get().map(|p| p.summary());
    let backup_source = crate::backup::server::source(shared);
    let report = HealthReport {
        member: s.raw.name.clone(),
        kind: s.raw.kind,
        pg_host,
        pg_port,
        tags,
        pg,
        epoch_seen: epoch,
        proxy,
        backup_source,
    };
    let sent_at = Instant::now();
    let status = shared.raft.status().borrow().clone();
    let ack = if status.is_leader {
        Some(coordination::handle_report(shared, report).await)
    } else if let Some((_, addr)) = shared.leader() {
        let request = match convert::encode_report(&report) {
            Ok(report_json) => proto::ReportRequest { report_json },
            Err(e) => {
                // Not for these types (no map has non-string keys). Were it to happen, no report
                // goes out and the lease runs out: the safe side. Said once.
                static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
                if !SAID.swap(true, Ordering::Relaxed) {
                    tracing::error!("a health report cannot be encoded, none is sent: {e}");
                }
                return;
            }
        };
        match shared.clients.client(addr) {
            Ok(mut client) => match tokio::time::timeout(s.timings.loop_interval * 2, client.report(request)).await {
                Ok(Ok(resp)) => Some(resp.into_inner()),
                Ok(Err(e)) => {
                    tracing::debug!("report to the coordinator failed: {e}");
                    None
                }
                Err(_) => None,
            },
            Err(e) => {
                tracing::debug!("no client for the coordinator at {addr}: {e:#}");
                None
            }
        }
    } else {
        None
    };
    if let Some(ack) = ack {
        *shared.report_acked.lock().unwrap_or_else(|p| p.into_inner()) = Some(sent_at);
        crate::proxy_feed::publish(shared, sent_at, &ack);
        shared.primary_lsn.store(ack.primary_lsn, Ordering::Relaxed);
        let mut lease = link.lease.lock().unwrap_or_else(|p| p.into_inner());
        lease.on_ack(sent_at, ack.lease_granted, ack.epoch, lease_timeout);
    }
}

/// Once per agreed value: a file whose lease timings are not the cluster's says so (they are not
/// acted on).
fn say_if_the_file_differs(shared: &Shared, agreed: Option<vigil_core::LeaseTimings>) {
    let differ = agreed.map(|a| a.differences(&shared.settings.timings)).unwrap_or_default();
    if !differ.is_empty() {
        tracing::warn!(
            "this member's file differs from the cluster's lease timings, agreed when the cluster was made; \
             the cluster's are used: {}",
            differ.join("; ")
        );
    }
}
