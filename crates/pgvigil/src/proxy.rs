//! The routing proxy (`[proxy]`): a read-write port that reaches the primary while this member
//! knows it holds its lease, and a read-only port that reaches the standbys within the lag bounds.
//!
//! Bytes are passed through untouched (TLS, SCRAM and channel binding work end to end; the proxy
//! holds no credentials). Only the first 8 bytes of a connection are looked at, to tell a
//! CancelRequest, which goes to every backend of the port (the proxy cannot know which one holds
//! the key). On the read-write port the client's first message is kept until the server's first
//! byte, to be sent again to the next primary if the first one closes (or, while the primary is
//! changing, errs) before answering. The decisions are `vigil_core::proxy`'s pure functions; this is the IO around them:
//! a router task turns the coordinator's answers (`proxy_feed`) and the committed state into
//! [`Routes`], and one task per session reads them.

use crate::config::{NoStandbyConfig, ProxyConfig};
use crate::daemon::Shared;
use anyhow::Context;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use vigil_core::proxy::{
    self as rules, Committed, Fence, HoldReason, LsnHistory, NoStandby, RoPool, RoRoute, RoRules, RwRoute,
};
use vigil_core::repeats::{Repeats, LOG_EVERY};

/// How long a new client may take to send its first 8 bytes.
const FIRST_BYTES_DEADLINE: Duration = Duration::from_secs(10);
/// A held session whose backend refused the connection tries again after this (or on news).
const RETRY_CONNECT: Duration = Duration::from_millis(100);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Port {
    Rw,
    Ro,
}

impl Port {
    fn name(self) -> &'static str {
        match self {
            Port::Rw => "rw",
            Port::Ro => "ro",
        }
    }
}

/// What sessions route by, as the router last worked it out.
#[derive(Clone, Debug, Default)]
pub struct Routes {
    pub committed: Committed,
    pub fence: Fence,
    pub pool: RoPool,
    /// Every PostgreSQL member's `host:port`, from the committed state.
    pub addrs: BTreeMap<String, String>,
}

pub struct Proxy {
    cfg: ProxyConfig,
    rw: TcpListener,
    ro: TcpListener,
}

struct Inner {
    cfg: ProxyConfig,
    rules: RoRules,
    routes: watch::Sender<Routes>,
    /// Open sessions by port and backend.
    sessions: Mutex<BTreeMap<(Port, String), usize>>,
}

impl Proxy {
    /// Both ports, bound; a port in use names its key.
    pub async fn bind(cfg: &ProxyConfig) -> anyhow::Result<Proxy> {
        let at = |port| format!("{}:{port}", cfg.listen_address);
        let rw = TcpListener::bind(at(cfg.rw_port))
            .await
            .with_context(|| format!("listen on {} (config key `proxy.rw_port`)", at(cfg.rw_port)))?;
        let ro = TcpListener::bind(at(cfg.ro_port))
            .await
            .with_context(|| format!("listen on {} (config key `proxy.ro_port`)", at(cfg.ro_port)))?;
        Ok(Proxy { cfg: cfg.clone(), rw, ro })
    }

    pub async fn run(self, shared: Arc<Shared>, shutdown: CancellationToken) {
        let cfg = self.cfg;
        let rules = RoRules {
            max_lag_bytes: cfg.max_lag_bytes,
            max_lag_time: cfg.max_lag_time(),
            no_standby: match cfg.no_standby {
                NoStandbyConfig::Primary => NoStandby::Primary,
                NoStandbyConfig::Refuse => NoStandby::Refuse,
            },
            // The answers come every loop interval; a few missed ones mean this member is cut off.
            stale_after: shared.settings.timings.report_timeout,
        };
        let inner = Arc::new(Inner {
            cfg: cfg.clone(),
            rules,
            routes: watch::Sender::new(Routes::default()),
            sessions: Mutex::new(BTreeMap::new()),
        });
        tracing::info!(
            rw = %format!("{}:{}", cfg.listen_address, cfg.rw_port),
            ro = %format!("{}:{}", cfg.listen_address, cfg.ro_port),
            "routing proxy listening"
        );
        let router = tokio::spawn(route(shared.clone(), inner.clone(), shutdown.clone()));
        let rw = tokio::spawn(accept(inner.clone(), self.rw, Port::Rw, shutdown.clone()));
        let ro = tokio::spawn(accept(inner, self.ro, Port::Ro, shutdown.clone()));
        let _ = tokio::join!(router, rw, ro);
    }
}

/// Turns the coordinator's answers and the committed state into [`Routes`], on every answer,
/// every commit, and every loop interval (a silent coordinator makes the read-only view stale).
async fn route(shared: Arc<Shared>, inner: Arc<Inner>, shutdown: CancellationToken) {
    let mut feed_rx = shared.proxy_feed.subscribe();
    let mut state_rx = shared.raft.state();
    let mut tick = tokio::time::interval(shared.settings.timings.loop_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut fence = Fence::default();
    let mut history = LsnHistory::default();
    let mut pool = RoPool::default();
    let mut last_heard = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = feed_rx.changed() => if r.is_err() { return },
            r = state_rx.changed() => if r.is_err() { return },
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        let feed = feed_rx.borrow_and_update().clone();
        if let Some(f) = feed.as_ref().filter(|f| Some(f.heard_at) != last_heard) {
            last_heard = Some(f.heard_at);
            fence.merge(Fence::from_answer(f.sent_at, f.epoch, f.lease_left, f.primary_writable));
            history.push(f.heard_at, f.primary_lsn);
        }
        let state = state_rx.borrow_and_update().state.clone();
        let standbys = feed.as_ref().map(|f| f.standbys.as_slice()).unwrap_or_default();
        pool.update(&inner.rules, now, last_heard, &history, standbys);
        let addrs = state
            .members
            .iter()
            .filter(|(_, m)| m.kind == vigil_core::MemberKind::Postgres && m.pg_port != 0)
            .map(|(name, m)| (name.clone(), format!("{}:{}", m.pg_host, m.pg_port)))
            .collect();
        let committed = Committed {
            epoch: state.epoch,
            primary: state.primary.clone(),
            switching_over: state.switchover.as_ref().is_some_and(|s| s.started),
        };
        let routes = Routes { committed, fence, pool: pool.clone(), addrs };
        shared.proxy_status.send_replace(Some(status(&inner, &routes, now)));
        inner.routes.send_replace(routes);
    }
}

/// `GET /proxy`: where new sessions go now, the read-only pool, open sessions.
fn status(inner: &Inner, routes: &Routes, now: Instant) -> serde_json::Value {
    let rw = match rules::rw_route(&routes.committed, &routes.fence, now) {
        RwRoute::Forward { member, .. } => serde_json::json!({ "forward": member }),
        RwRoute::Hold(reason) => serde_json::json!({ "hold": reason.as_str() }),
    };
    let lease_ms = routes
        .fence
        .until
        .filter(|_| routes.fence.epoch == routes.committed.epoch)
        .map_or(0, |u| u.saturating_duration_since(now).as_millis() as u64);
    let out: BTreeMap<&String, String> =
        routes.pool.out().iter().map(|(m, why)| (m, format!("{why:?}").to_lowercase())).collect();
    let sessions = inner.sessions.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let sessions: Vec<serde_json::Value> = sessions
        .iter()
        .map(|((port, backend), n)| serde_json::json!({ "port": port.name(), "backend": backend, "sessions": n }))
        .collect();
    serde_json::json!({
        "epoch": routes.committed.epoch,
        "primary": routes.committed.primary,
        "rw": rw,
        "lease_left_ms": lease_ms,
        "ro_pool": routes.pool.members(),
        "ro_out": out,
        "sessions": sessions,
        "rw_port": inner.cfg.rw_port,
        "ro_port": inner.cfg.ro_port,
    })
}

async fn accept(inner: Arc<Inner>, listener: TcpListener, port: Port, shutdown: CancellationToken) {
    let mut failures: Repeats<String> = Repeats::new(LOG_EVERY);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((client, _)) => {
                tokio::spawn(session(inner.clone(), client, port, shutdown.clone()));
            }
            Err(e) => {
                // Out of file descriptors, for instance: say so (thinned) and breathe.
                let what = format!("proxy {} port: accept failed: {e}", port.name());
                if let Some(o) = failures.occurred(Instant::now(), what.clone()) {
                    tracing::warn!(suppressed = o.field(), "{what}");
                }
                tokio::time::sleep(RETRY_CONNECT).await;
            }
        }
    }
}

/// Keepalives and TCP_USER_TIMEOUT so that a session to a vanished host dies within
/// `dead_peer_timeout`, on both legs; no Nagle (PostgreSQL's messages are small).
fn tune(s: &TcpStream, dead: Duration) {
    let sock = socket2::SockRef::from(s);
    let interval = (dead / 10).max(Duration::from_secs(1));
    let idle = dead.saturating_sub(interval * 5).max(Duration::from_secs(1));
    let keepalive = socket2::TcpKeepalive::new().with_time(idle).with_interval(interval).with_retries(5);
    let _ = sock.set_tcp_keepalive(&keepalive);
    let _ = sock.set_tcp_user_timeout(Some(dead));
    let _ = s.set_nodelay(true);
}

async fn connect(addr: &str, cfg: &ProxyConfig) -> anyhow::Result<TcpStream> {
    let s = tokio::time::timeout(cfg.connect_timeout(), TcpStream::connect(addr))
        .await
        .map_err(|_| anyhow::anyhow!("connect to {addr}: no answer within {:?}", cfg.connect_timeout()))?
        .with_context(|| format!("connect to {addr}"))?;
    tune(&s, cfg.dead_peer_timeout());
    Ok(s)
}

/// Counts a session while it lives.
struct Counted {
    inner: Arc<Inner>,
    key: (Port, String),
}

impl Counted {
    fn new(inner: &Arc<Inner>, port: Port, backend: &str) -> Counted {
        let key = (port, backend.to_string());
        *inner.sessions.lock().unwrap_or_else(|p| p.into_inner()).entry(key.clone()).or_default() += 1;
        let labels = [("port", port.name().to_string()), ("backend", backend.to_string())];
        metrics::counter!("pgvigil_proxy_sessions_total", &labels).increment(1);
        metrics::gauge!("pgvigil_proxy_sessions", &labels).increment(1.0);
        Counted { inner: inner.clone(), key }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let mut sessions = self.inner.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = sessions.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                sessions.remove(&self.key);
            }
        }
        let labels = [("port", self.key.0.name().to_string()), ("backend", self.key.1.clone())];
        metrics::gauge!("pgvigil_proxy_sessions", &labels).decrement(1.0);
    }
}

impl Inner {
    fn sessions_of(&self, port: Port) -> BTreeMap<String, usize> {
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.iter().filter(|((p, _), _)| *p == port).map(|((_, b), n)| (b.clone(), *n)).collect()
    }

    fn refuse(&self, port: Port, reason: &str) {
        metrics::counter!("pgvigil_proxy_refused_total", "port" => port.name(), "reason" => reason.to_string())
            .increment(1);
    }
}

async fn session(inner: Arc<Inner>, mut client: TcpStream, port: Port, shutdown: CancellationToken) {
    let dead = inner.cfg.dead_peer_timeout();
    tune(&client, dead);
    let mut first = [0u8; 8];
    match tokio::time::timeout(FIRST_BYTES_DEADLINE, client.read_exact(&mut first)).await {
        Ok(Ok(_)) => {}
        _ => return,
    }
    if rules::is_cancel_request(&first) {
        let mut rest = [0u8; 8];
        if let Ok(Ok(_)) = tokio::time::timeout(FIRST_BYTES_DEADLINE, client.read_exact(&mut rest)).await {
            let mut packet = first.to_vec();
            packet.extend_from_slice(&rest);
            forward_cancel(&inner, port, packet).await;
        }
        return;
    }
    let (backend, epoch, mut server) = match port {
        Port::Rw => {
            let Some(hello) = first_message(&mut client, first).await else { return };
            let Some((backend, epoch, server, answer)) = hold_for_primary(&inner, &hello, &shutdown).await else {
                return;
            };
            if client.write_all(&[answer]).await.is_err() {
                return;
            }
            (backend, epoch, server)
        }
        Port::Ro => {
            let Some((backend, epoch, mut server)) = pick_standby(&inner).await else { return };
            if server.write_all(&first).await.is_err() {
                return;
            }
            (backend, epoch, server)
        }
    };
    let _counted = Counted::new(&inner, port, &backend);
    let mut routes = inner.routes.subscribe();
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = shutdown.cancelled() => {}
        // A new epoch: the old primary's sessions end at once (it may not write any more, and
        // its clients should reconnect to the new one).
        r = routes.wait_for(|r| r.committed.epoch != epoch), if port == Port::Rw => {
            if r.is_ok() {
                metrics::counter!("pgvigil_proxy_closed_on_epoch_change_total").increment(1);
            }
        }
    }
}

/// The client's whole first message, which it sends before the server says anything: 8 bytes for
/// an SSLRequest or GSSENCRequest, the whole startup packet otherwise (user and database names,
/// never a password). Kept unparsed, to be sent again to the next primary when the first one
/// closes before it answered (a postmaster that is shutting down for a switchover).
async fn first_message(client: &mut TcpStream, first: [u8; 8]) -> Option<Vec<u8>> {
    let len = u32::from_be_bytes([first[0], first[1], first[2], first[3]]) as usize;
    let code = u32::from_be_bytes([first[4], first[5], first[6], first[7]]);
    let mut hello = first.to_vec();
    // 80877103: SSLRequest, 80877104: GSSENCRequest, both 8 bytes. PostgreSQL refuses startup
    // packets over 10000 bytes.
    if len > 8 && len <= 10_000 && code != 80_877_103 && code != 80_877_104 {
        let mut rest = vec![0u8; len - 8];
        match tokio::time::timeout(FIRST_BYTES_DEADLINE, client.read_exact(&mut rest)).await {
            Ok(Ok(_)) => hello.extend_from_slice(&rest),
            _ => return None,
        }
    }
    Some(hello)
}

/// How long an error as a primary's first answer waits for news that the primary is changing
/// (a switchover committed on this member a moment after the old primary began to shut down):
/// then the session goes to the next primary instead. About two Raft heartbeats.
const ERROR_SETTLE: Duration = Duration::from_millis(300);

/// A new read-write session: to the primary as soon as it may write (the lease fence), waiting up
/// to `hold_timeout`; the client's first message `hello` is sent there and the server's first
/// byte returned with it. None: refused (the client's connection is closed).
async fn hold_for_primary(
    inner: &Arc<Inner>,
    hello: &[u8],
    shutdown: &CancellationToken,
) -> Option<(String, u64, TcpStream, u8)> {
    let deadline = tokio::time::Instant::now() + inner.cfg.hold_timeout();
    let mut rx = inner.routes.subscribe();
    let mut held: Option<HoldReason> = None;
    loop {
        let routes = rx.borrow_and_update().clone();
        let wait_a_bit = match rules::rw_route(&routes.committed, &routes.fence, Instant::now()) {
            RwRoute::Forward { member, epoch } => {
                let addr = routes.addrs.get(&member).cloned().unwrap_or_default();
                let route = RwRoute::Forward { member: member.clone(), epoch };
                let still = |rx: &watch::Receiver<Routes>| {
                    let r = rx.borrow();
                    rules::rw_route(&r.committed, &r.fence, Instant::now()) == route
                };
                match connect(&addr, &inner.cfg).await {
                    // Connecting took time: the bound must still hold now.
                    Ok(mut server) if still(&rx) => match first_answer(&mut server, hello, &inner.cfg).await {
                        // 'E': an error as the first answer. Passed on, unless the primary is
                        // changing (it was shutting down): then the next one is tried.
                        Some(b'E') => {
                            let _ = tokio::time::timeout(ERROR_SETTLE, rx.changed()).await;
                            if still(&rx) {
                                return Some((member, epoch, server, b'E'));
                            }
                            true
                        }
                        Some(answer) => return Some((member, epoch, server, answer)),
                        // Closed before answering (a postmaster going away): try again.
                        None => true,
                    },
                    Ok(_) => false,
                    // Refused while it restarts or promotes: not an error for the client yet.
                    Err(e) => {
                        tracing::debug!(%member, "proxy: {e:#}");
                        true
                    }
                }
            }
            RwRoute::Hold(reason) => {
                if held.is_none() {
                    metrics::counter!("pgvigil_proxy_held_total", "reason" => reason.as_str()).increment(1);
                }
                held = Some(reason);
                false
            }
        };
        let retry = tokio::time::Instant::now() + RETRY_CONNECT;
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep_until(deadline) => {
                inner.refuse(Port::Rw, held.map_or("backend_unreachable", |h| h.as_str()));
                return None;
            }
            r = rx.changed(), if !wait_a_bit => if r.is_err() { return None },
            _ = tokio::time::sleep_until(retry), if wait_a_bit => {}
        }
    }
}

/// Send the client's first message and read the server's first byte (bounded); None: the server
/// closed or said nothing.
async fn first_answer(server: &mut TcpStream, hello: &[u8], cfg: &ProxyConfig) -> Option<u8> {
    let exchange = async {
        server.write_all(hello).await?;
        let mut b = [0u8; 1];
        server.read_exact(&mut b).await?;
        Ok::<u8, std::io::Error>(b[0])
    };
    tokio::time::timeout(cfg.connect_timeout(), exchange).await.ok()?.ok()
}

/// A new read-only session: the pool member with the fewest sessions, else what `no_standby` says.
async fn pick_standby(inner: &Arc<Inner>) -> Option<(String, u64, TcpStream)> {
    let routes = inner.routes.borrow().clone();
    let rw = rules::rw_route(&routes.committed, &routes.fence, Instant::now());
    let route = rules::ro_route(&routes.pool, &inner.sessions_of(Port::Ro), &inner.rules, &rw);
    let RoRoute::Forward(member) = route else {
        inner.refuse(Port::Ro, "no_standby");
        return None;
    };
    let addr = routes.addrs.get(&member).cloned().unwrap_or_default();
    match connect(&addr, &inner.cfg).await {
        Ok(server) => Some((member, routes.committed.epoch, server)),
        Err(e) => {
            tracing::debug!(%member, "proxy: {e:#}");
            inner.refuse(Port::Ro, "backend_unreachable");
            None
        }
    }
}

/// A CancelRequest goes to every backend of the port: those it has sessions on, and those new
/// sessions would go to. PostgreSQL acts only where the key matches and answers nothing.
async fn forward_cancel(inner: &Arc<Inner>, port: Port, packet: Vec<u8>) {
    metrics::counter!("pgvigil_proxy_cancel_requests_total", "port" => port.name()).increment(1);
    let routes = inner.routes.borrow().clone();
    let mut backends: BTreeSet<String> = inner.sessions_of(port).into_keys().collect();
    match port {
        Port::Rw => backends.extend(routes.committed.primary.clone()),
        Port::Ro => backends.extend(routes.pool.members().iter().cloned()),
    }
    let mut sends = tokio::task::JoinSet::new();
    let addrs: Vec<String> = backends.iter().filter_map(|b| routes.addrs.get(b).cloned()).collect();
    for addr in addrs {
        let (packet, cfg) = (packet.clone(), inner.cfg.clone());
        sends.spawn(async move {
            if let Ok(mut s) = connect(&addr, &cfg).await {
                let _ = tokio::time::timeout(cfg.connect_timeout(), s.write_all(&packet)).await;
            }
        });
    }
    while sends.join_next().await.is_some() {}
}
