//! The HTTP API (axum) of one member: health checks for load balancers ([`crate::health`]),
//! the cluster view, history, effective config, Prometheus metrics, pause/resume and the
//! operators' role changes; over https when `tls.api` is on.
//!
//! Handlers are thin: they gather what this member knows ([`Snapshot`]) and hand it to pure
//! functions. Mutating requests (pause, resume, switchover, failover, failback, reinit) need
//! `Authorization: Bearer <api.token>` (401 otherwise, and nothing changes); they are carried out
//! by the coordinator ([`crate::admin`], [`crate::requests`]).

use crate::admin::{self, Action, Answer, ApiError};
use crate::daemon::Shared;
use crate::health::{self, Check, Local};
use crate::list::{self, ClusterView, View};
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::{Json, Router};
use serde_json::json;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use vigil_core::{ClusterState, PgStatus};

type Shr = Arc<Shared>;

pub async fn serve(shared: Shr, listener: tokio::net::TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
    let upkeep = tokio::spawn({
        let shared = shared.clone();
        let stop = shutdown.clone();
        async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(5)) => shared.telemetry.upkeep(),
                }
            }
        }
    });
    // The certificate of each new connection is the one in effect then (a reload may renew it).
    let tls = shared.tls.as_ref().and_then(|live| live.api());
    let app = router(shared);
    match tls {
        Some(configs) => {
            let listener = crate::tls_live::TlsListener::new(listener, configs, "HTTP API")?;
            axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await?
        }
        None => axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await?,
    }
    let _ = upkeep.await;
    Ok(())
}

pub fn router(shared: Shr) -> Router {
    let check = |c: Check| -> MethodRouter<Shr> {
        let h = move |s: State<Shr>, q: Result<Query<Vec<(String, String)>>, QueryRejection>| health_check(s, c, q);
        get(h).options(h)
    };
    Router::new()
        .route("/", check(Check::Primary))
        .route("/primary", check(Check::Primary))
        .route("/read-write", check(Check::Primary))
        .route("/replica", check(Check::Replica))
        .route("/read-only", check(Check::ReadOnly))
        .route("/sync", check(Check::Sync))
        .route("/synchronous", check(Check::Sync))
        .route("/async", check(Check::Async))
        .route("/asynchronous", check(Check::Async))
        .route("/health", check(Check::Health))
        .route("/liveness", check(Check::Liveness))
        .route("/readiness", check(Check::Readiness))
        .route("/cluster", get(cluster))
        .route("/cluster/{member}", get(cluster_member))
        .route("/history", get(history))
        .route("/config", get(config))
        .route("/proxy", get(proxy))
        .route("/metrics", get(metrics))
        .route("/pause", post(|s, h, b| mutate(s, h, b, Action::Pause)))
        .route("/resume", post(|s, h, b| mutate(s, h, b, Action::Resume)))
        .route(
            "/switchover",
            post(|s, h, b| mutate(s, h, b, Action::Switchover))
                .delete(|s, h, b| mutate(s, h, b, Action::CancelSwitchover)),
        )
        .route("/failover", post(|s, h, b| mutate(s, h, b, Action::Failover)))
        .route("/failback", post(|s, h, b| mutate(s, h, b, Action::Failback)))
        .route("/reinit", post(|s, h, b| mutate(s, h, b, Action::Reinit)))
        .route("/backup", post(|s, h, b| mutate(s, h, b, Action::Backup)))
        .route("/backup/verify", post(|s, h, b| mutate(s, h, b, Action::BackupVerify)))
        .route("/backups", get(backups))
        .fallback(|| async { reply(Answer::from(ApiError::NotFound("no such endpoint".into()))) })
        .with_state(shared)
}

fn reply(a: Answer) -> Response {
    let status = StatusCode::from_u16(a.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(a.body)).into_response()
}

/// What this member knows now, for the health checks and the metrics.
pub struct Snapshot {
    pub state: ClusterState,
    pub pg: PgStatus,
    pub lease_valid: bool,
    pub primary_lsn: Option<u64>,
    /// This member's tags: as the rules and `?tag_` read them, and as configured (typed, shown
    /// as Patroni shows them: `"nofailover": true`).
    pub tags: vigil_core::Tags,
    pub tag_table: crate::config::TagTable,
    pub loops_alive: bool,
    /// A Raft leader (the coordinator) is known to this member.
    pub hears_coordinator: bool,
}

impl Snapshot {
    pub fn take(shared: &Shared) -> Snapshot {
        let now = Instant::now();
        let state = shared.committed();
        let t = &shared.settings.timings;
        let tag_table = shared.runtime.borrow().tags.clone();
        Snapshot {
            lease_valid: shared.lease_valid(state.epoch, now),
            pg: shared.pg_status.borrow().clone(),
            primary_lsn: Some(shared.primary_lsn.load(Ordering::Relaxed)).filter(|l| *l > 0),
            tags: tag_table.tags(),
            tag_table,
            // Both loops go round every loop interval; a report or a proposal may take a lease.
            loops_alive: shared.alive.alive(now, t.lease_timeout * 3),
            hears_coordinator: shared.raft.status().borrow().leader_id != 0,
            state,
        }
    }

    pub fn local<'a>(&'a self, shared: &'a Shared) -> Local<'a> {
        Local {
            me: shared.name(),
            kind: shared.settings.raw.kind,
            state: &self.state,
            pg: &self.pg,
            lease_valid: self.lease_valid,
            primary_lsn: self.primary_lsn,
            tags: &self.tags,
            loops_alive: self.loops_alive,
            hears_coordinator: self.hears_coordinator,
            max_lag_default: shared.settings.timings.maximum_lag_on_failover,
        }
    }
}

async fn health_check(
    State(shared): State<Shr>,
    check: Check,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    let pairs = match query {
        Ok(Query(q)) => q,
        Err(e) => return reply(Answer::from(ApiError::BadRequest(format!("malformed query: {e}")))),
    };
    let filters = match health::parse_filters(&pairs) {
        Ok(f) => f,
        Err(e) => return reply(Answer::from(ApiError::BadRequest(e))),
    };
    let snap = Snapshot::take(&shared);
    let local = snap.local(&shared);
    let verdict = local.check(check, &filters);
    let remaining = shared.lease_remaining(snap.state.epoch, Instant::now());
    let body = json!({
        "status": if verdict.ok { "ok" } else { "unavailable" },
        "message": verdict.reason,
        "member": shared.name(),
        // The Raft leader this member hears, by name (null: none known).
        "coordinator": shared.leader().map(|(name, _)| name.as_str()),
        "role": local.role(),
        "state": local.pg_state(),
        "epoch": snap.state.epoch,
        "timeline": snap.pg.running.then_some(snap.pg.timeline),
        "lag_bytes": local.lag().filter(|_| local.role() == "replica"),
        "paused": snap.state.paused,
        "fenced": local.fenced(),
        "lease_remaining_ms": remaining.as_millis() as u64,
        "tags": &snap.tag_table,
    });
    let status = if verdict.ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body)).into_response()
}

/// The cluster as the coordinator sees it (with every member's latest report); when the
/// coordinator cannot be asked, the committed state as this member has it, without reports.
pub async fn view(shared: &Shared) -> View {
    let status = shared.raft.status().borrow().clone();
    if !status.is_leader {
        if let Some((_, addr)) = shared.leader() {
            match list::fetch_with(&shared.clients, addr).await {
                Ok(v) => return v,
                Err(e) => tracing::debug!("cannot ask the coordinator at {addr}: {e:#}"),
            }
        }
    }
    let reports = shared.coordinator.reports().await;
    View {
        state: shared.committed(),
        reports,
        coordinator: shared.leader().map(|(n, _)| n.clone()).unwrap_or_default(),
        term: status.term,
    }
}

async fn cluster(State(shared): State<Shr>) -> Response {
    let status = shared.proxy_status.get().map(|s| s.json());
    let name = &shared.settings.raw.name;
    Json(ClusterView::from_view(&view(&shared).await).with_proxy(name, status)).into_response()
}

async fn cluster_member(State(shared): State<Shr>, Path(member): Path<String>) -> Response {
    let v = ClusterView::from_view(&view(&shared).await);
    match v.member(&member) {
        Some(m) => Json(m).into_response(),
        None => reply(Answer::from(ApiError::NotFound(format!("no member {member:?} in the cluster")))),
    }
}

async fn history(State(shared): State<Shr>) -> Response {
    Json(shared.committed().history).into_response()
}

async fn config(State(shared): State<Shr>) -> Response {
    let mut settings = shared.settings.clone();
    shared.runtime.borrow().overlay(&mut settings);
    Json(settings.redacted_json()).into_response()
}

async fn backups(State(shared): State<Shr>) -> Response {
    reply(crate::backup::api::list(&shared).await)
}

async fn proxy(State(shared): State<Shr>) -> Response {
    match shared.proxy_status.get() {
        Some(status) => Json(status.json()).into_response(),
        None => reply(Answer::from(ApiError::NotFound("this member runs no routing proxy (no [proxy] table)".into()))),
    }
}

async fn metrics(State(shared): State<Shr>) -> Response {
    let text = shared.telemetry.render(&shared);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn mutate(State(shared): State<Shr>, headers: HeaderMap, body: Bytes, action: Action) -> Response {
    let token = shared.runtime.borrow().api_token.clone();
    if let Err(why) = authorize(token.as_ref().map(|t| t.0.as_str()), &headers) {
        tracing::warn!("refused {} request: {why}", action.name());
        return reply(Answer::from(ApiError::Unauthorized(why)));
    }
    reply(admin::run(&shared, action, &body).await)
}

/// `Authorization: Bearer <token>` must match the configured token.
pub fn authorize(expected: Option<&str>, headers: &HeaderMap) -> Result<(), String> {
    let Some(expected) = expected else {
        return Err("this member has no api.token configured: mutating requests are refused".into());
    };
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err("missing Authorization: Bearer <token>".into());
    };
    let given = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).map(str::trim);
    match given {
        Some(t) if constant_time_eq(t.as_bytes(), expected.as_bytes()) => Ok(()),
        _ => Err("wrong token".into()),
    }
}

/// Compares without an early exit, so the time taken says nothing about the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i % b.len().max(1)).copied().unwrap_or(0));
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with_auth(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).expect("header"));
        h
    }

    #[test]
    fn bearer_tokens() {
        assert!(authorize(Some("t0k"), &with_auth("Bearer t0k")).is_ok());
        assert!(authorize(Some("t0k"), &with_auth("Bearer t0")).is_err());
        assert!(authorize(Some("t0k"), &with_auth("Bearer t0kk")).is_err());
        assert!(authorize(Some("t0k"), &with_auth("Basic t0k")).is_err());
        assert!(authorize(Some("t0k"), &HeaderMap::new()).is_err_and(|e| e.contains("missing")));
        assert!(authorize(None, &with_auth("Bearer anything")).is_err_and(|e| e.contains("no api.token")));
        assert!(constant_time_eq(b"", b"") && !constant_time_eq(b"a", b""));
    }
}
