//! The routing proxy (`[proxy]`): a read-write port that reaches the primary while this member
//! knows it holds its lease, and a read-only port that reaches the standbys within the lag bounds.
//!
//! Bytes are passed through untouched (TLS, SCRAM and channel binding work end to end; the proxy
//! holds no credentials). From the networks of `proxy_protocol_from` a PROXY protocol header is
//! read first (`vigil_core::proxy_header`), and its client address is the session's. Only the
//! first 8 bytes of PostgreSQL's are looked at, to tell a
//! CancelRequest, which goes to every backend of the port (the proxy cannot know which one holds
//! the key). On the read-write port the client's first message is kept until the server's first
//! byte, to be sent again to the next primary if the first one closes (or, while the primary is
//! changing, errs) before answering. The decisions are `vigil_core::proxy`'s pure functions; this is the IO around them:
//! a router task turns the coordinator's answers (`proxy_feed`) and the committed state into
//! [`Routes`], and one task per session reads them.

use crate::config::{NoStandbyConfig, ProxyConfig};
use crate::daemon::Shared;
pub use crate::proxy_book::Port;
use crate::proxy_book::{Book, Queued, Slot};
use anyhow::Context;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use vigil_core::pgwire::{self, First};
use vigil_core::proxy::{
    self as rules, Committed, Fence, HoldReason, LsnHistory, NoStandby, ProxySummary, Refused, RoPool, RoRoute,
    RoRules, RwRoute,
};
use vigil_core::proxy_header::{self, BadHeader, Cidr, Parsed};
use vigil_core::repeats::{Repeats, LOG_EVERY};

/// How long a new client may take to send its first 8 bytes.
const FIRST_BYTES_DEADLINE: Duration = Duration::from_secs(10);
/// A held session whose backend refused the connection tries again after this (or on news).
const RETRY_CONNECT: Duration = Duration::from_millis(100);

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
    /// Sessions by port and backend (the limit's slots), queued, refused.
    book: Arc<Book>,
    /// `proxy_protocol_from`: connections from these networks start with a PROXY protocol header.
    trusted: Vec<Cidr>,
    /// Connections refused for their PROXY protocol header, by reason: logged thinned.
    header_refusals: Mutex<Repeats<&'static str>>,
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
            book: Book::new(cfg.max_sessions()),
            trusted: cfg.proxy_protocol_from(),
            header_refusals: Mutex::new(Repeats::new(LOG_EVERY)),
        });
        tracing::info!(
            rw = %format!("{}:{}", cfg.listen_address, cfg.rw_port),
            ro = %format!("{}:{}", cfg.listen_address, cfg.ro_port),
            proxy_protocol_from = ?cfg.proxy_protocol_from,
            "routing proxy listening"
        );
        let _ = shared.proxy_status.set(StatusHandle { inner: inner.clone() });
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
    let mut tick = vigil_raft::beat::interval(shared.settings.timings.loop_interval);
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
        inner.routes.send_replace(routes);
    }
}

/// `GET /proxy`, read live: the routes as the router last worked them out, the sessions as they are.
pub struct StatusHandle {
    inner: Arc<Inner>,
}

impl StatusHandle {
    pub fn json(&self) -> serde_json::Value {
        let routes = self.inner.routes.borrow().clone();
        status(&self.inner, &routes, Instant::now())
    }

    /// The few numbers this member's reports carry (`pgvigil list` on any member shows them).
    pub fn summary(&self) -> ProxySummary {
        let routes = self.inner.routes.borrow().clone();
        let (rw_forward, rw_hold) = match rules::rw_route(&routes.committed, &routes.fence, Instant::now()) {
            RwRoute::Forward { member, .. } => (Some(member), None),
            RwRoute::Hold(reason) => (None, Some(reason.as_str().to_string())),
        };
        let book = self.inner.book.summary();
        ProxySummary {
            rw_port: self.inner.cfg.rw_port,
            ro_port: self.inner.cfg.ro_port,
            rw_forward,
            rw_hold,
            ro_pool: routes.pool.members().iter().cloned().collect(),
            sessions_rw: book.0,
            sessions_ro: book.1,
            queued: book.2,
            refused: book.3,
        }
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
    let mut status = serde_json::json!({
        "epoch": routes.committed.epoch,
        "primary": routes.committed.primary,
        "rw": rw,
        "lease_left_ms": lease_ms,
        "ro_pool": routes.pool.members(),
        "ro_out": out,
        "rw_port": inner.cfg.rw_port,
        "ro_port": inner.cfg.ro_port,
    });
    if let (Some(status), serde_json::Value::Object(book)) = (status.as_object_mut(), inner.book.status()) {
        status.extend(book);
    }
    status
}

async fn accept(inner: Arc<Inner>, listener: TcpListener, port: Port, shutdown: CancellationToken) {
    let mut failures: Repeats<String> = Repeats::new(LOG_EVERY);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((client, peer)) => {
                tokio::spawn(session(inner.clone(), client, peer, port, shutdown.clone()));
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

/// Refuse a session as a server would: counted, then answered with an ErrorResponse once the
/// client's startup packet is in. `hello` is what was read of the client's first packet (its 8
/// bytes, or the whole startup packet). An SSLRequest or GSSENCRequest is answered `N` (go on
/// in plain text: the proxy holds no certificate) and the next packet read. A client that
/// insists on TLS (`sslmode=require`) gives up at the `N` with its own message.
async fn refuse_client(
    inner: &Inner,
    client: &mut TcpStream,
    from: SocketAddr,
    port: Port,
    mut hello: Vec<u8>,
    why: Refused,
) {
    inner.book.refused(port, why.reason());
    tracing::debug!(port = port.name(), client = %from, reason = why.reason(), "proxy: refused a session: {}", why.message());
    let answer = async {
        // GSSENCRequest, then SSLRequest, then the startup packet, at most.
        for _ in 0..3 {
            let Some(first) = hello.get(..8).and_then(|f| <[u8; 8]>::try_from(f).ok()) else { break };
            match pgwire::classify(&first) {
                First::SslRequest | First::GssEncRequest => {
                    client.write_all(b"N").await?;
                    let mut next = [0u8; 8];
                    client.read_exact(&mut next).await?;
                    hello = next.to_vec();
                }
                First::Startup { len } => {
                    if hello.len() < len {
                        let mut rest = vec![0u8; len - hello.len()];
                        client.read_exact(&mut rest).await?;
                    }
                    client.write_all(&pgwire::fatal(why.sqlstate(), &why.message())).await?;
                    client.flush().await?;
                    break;
                }
                First::Cancel | First::Bad => break,
            }
        }
        Ok::<(), std::io::Error>(())
    };
    let _ = tokio::time::timeout(FIRST_BYTES_DEADLINE, answer).await;
}

async fn session(inner: Arc<Inner>, mut client: TcpStream, peer: SocketAddr, port: Port, shutdown: CancellationToken) {
    let dead = inner.cfg.dead_peer_timeout();
    tune(&client, dead);
    // The client's address: the peer's, or the one its PROXY protocol header carries.
    let from = if inner.trusted.iter().any(|c| c.contains(peer.ip())) {
        match proxy_header(&inner, &mut client, peer, port).await {
            Some(from) => from,
            None => return,
        }
    } else {
        peer
    };
    let mut first = [0u8; 8];
    match tokio::time::timeout(FIRST_BYTES_DEADLINE, client.read_exact(&mut first)).await {
        Ok(Ok(_)) => {}
        _ => return,
    }
    if rules::is_cancel_request(&first) {
        tracing::debug!(port = port.name(), client = %from, "proxy: a cancel request");
        let mut rest = [0u8; 8];
        if let Ok(Ok(_)) = tokio::time::timeout(FIRST_BYTES_DEADLINE, client.read_exact(&mut rest)).await {
            let mut packet = first.to_vec();
            packet.extend_from_slice(&rest);
            forward_cancel(&inner, port, packet).await;
        }
        return;
    }
    if pgwire::classify(&first) == First::Bad {
        // Not PostgreSQL's protocol (PostgreSQL would close it at once): no backend is tied up
        // for it. This is also where a PROXY header from an untrusted address ends.
        inner.book.refused(port, "not_postgresql");
        tracing::debug!(port = port.name(), client = %from, "proxy: closed a connection that does not speak PostgreSQL");
        return;
    }
    let (backend, epoch, mut server, slot) = match port {
        Port::Rw => {
            let Some(hello) = first_message(&mut client, first).await else { return };
            let (backend, epoch, server, answer, slot) = match hold_for_primary(&inner, &hello, &shutdown).await {
                Ok(found) => found,
                Err(Some(why)) => return refuse_client(&inner, &mut client, from, port, hello, why).await,
                Err(None) => return,
            };
            if client.write_all(&[answer]).await.is_err() {
                return;
            }
            (backend, epoch, server, slot)
        }
        Port::Ro => {
            let (backend, epoch, mut server, slot) = match pick_standby(&inner, &shutdown).await {
                Ok(found) => found,
                Err(Some(why)) => return refuse_client(&inner, &mut client, from, port, first.to_vec(), why).await,
                Err(None) => return,
            };
            if server.write_all(&first).await.is_err() {
                return;
            }
            (backend, epoch, server, slot)
        }
    };
    slot.established();
    tracing::debug!(port = port.name(), client = %from, %backend, "proxy: session opened");
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

/// The PROXY protocol header of a connection from a trusted network, read exactly (the
/// PostgreSQL bytes after it stay in the socket) within [`FIRST_BYTES_DEADLINE`]: the client's
/// address it carries (the peer's own for a LOCAL or UNKNOWN header). None: refused, counted
/// under its reason, logged (thinned); a client that sent PostgreSQL's bytes instead reads why.
async fn proxy_header(inner: &Inner, client: &mut TcpStream, peer: SocketAddr, port: Port) -> Option<SocketAddr> {
    let mut buf = Vec::with_capacity(64);
    let read = async {
        loop {
            match proxy_header::parse(&buf) {
                Parsed::Need(n) => {
                    let at = buf.len();
                    buf.resize(at + n, 0);
                    client.read_exact(&mut buf[at..]).await?;
                }
                Parsed::Done { header, .. } => return Ok::<_, std::io::Error>(Ok(header)),
                Parsed::Bad(bad) => return Ok(Err(bad)),
            }
        }
    };
    let (reason, message, bad) = match tokio::time::timeout(FIRST_BYTES_DEADLINE, read).await {
        Ok(Ok(Ok(header))) => return Some(header.source.unwrap_or(peer)),
        Ok(Ok(Err(bad))) => (bad.reason(), bad.message(), Some(bad)),
        Ok(Err(e)) => ("proxy_header_incomplete", format!("the connection ended within the PROXY header ({e})"), None),
        Err(_) => {
            ("proxy_header_incomplete", format!("no complete PROXY header within {FIRST_BYTES_DEADLINE:?}"), None)
        }
    };
    let logged = inner.header_refusals.lock().unwrap_or_else(|p| p.into_inner()).occurred(Instant::now(), reason);
    if let Some(o) = logged {
        tracing::warn!(
            port = port.name(),
            %peer,
            reason,
            suppressed = o.field(),
            "proxy: refused a connection from a network of proxy.proxy_protocol_from: {message}"
        );
    }
    let first: Option<[u8; 8]> = buf.get(..8).and_then(|f| f.try_into().ok());
    match (bad, first) {
        // PostgreSQL's first bytes instead of a header: the client reads why.
        (Some(bad @ BadHeader::Missing), Some(first)) if pgwire::classify(&first) != First::Bad => {
            refuse_client(inner, client, peer, port, buf, Refused::ProxyHeader(bad)).await
        }
        _ => inner.book.refused(port, reason),
    }
    None
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
/// to `hold_timeout`, and then for a slot below `max_sessions_per_backend` up to `queue_timeout`;
/// the client's first message `hello` is sent there and the server's first byte returned with
/// it. Err(Some): refused, and why; Err(None): shutting down.
async fn hold_for_primary(
    inner: &Arc<Inner>,
    hello: &[u8],
    shutdown: &CancellationToken,
) -> Result<(String, u64, TcpStream, u8, Slot), Option<Refused>> {
    let hold = inner.cfg.hold_timeout();
    let deadline = tokio::time::Instant::now() + hold;
    let mut rx = inner.routes.subscribe();
    // The last member a connection was tried to (a refusal after that is its fault).
    let mut tried: Option<String> = None;
    let mut counted = false;
    // Waiting for a slot: since when, until when.
    let mut queue: Option<(tokio::time::Instant, Queued)> = None;
    loop {
        let mut freed = inner.book.freed();
        let routes = rx.borrow_and_update().clone();
        // Why it is held now, if it is.
        let held: Option<HoldReason>;
        let wait = match rules::rw_route(&routes.committed, &routes.fence, Instant::now()) {
            RwRoute::Forward { member, epoch } => {
                held = None;
                tried = Some(member.clone());
                let ticket = queue.as_ref().map(|(_, q)| q.ticket());
                match inner.book.try_reserve(Port::Rw, &member, ticket) {
                    None => {
                        match &mut queue {
                            Some((_, q)) => q.wait_for(&member),
                            None => queue = Some((tokio::time::Instant::now(), inner.book.queue(Port::Rw, &member))),
                        }
                        Wait::Slot
                    }
                    Some(slot) => {
                        let addr = routes.addrs.get(&member).cloned().unwrap_or_default();
                        let route = RwRoute::Forward { member: member.clone(), epoch };
                        let still = |rx: &watch::Receiver<Routes>| {
                            let r = rx.borrow();
                            rules::rw_route(&r.committed, &r.fence, Instant::now()) == route
                        };
                        match connect(&addr, &inner.cfg).await {
                            // Connecting took time: the bound must still hold now.
                            Ok(mut server) if still(&rx) => {
                                match first_answer(&mut server, hello, &inner.cfg).await {
                                    // 'E': an error as the first answer. Passed on, unless the
                                    // primary is changing (it was shutting down): then the next
                                    // one is tried.
                                    Some(b'E') => {
                                        let _ = tokio::time::timeout(ERROR_SETTLE, rx.changed()).await;
                                        if still(&rx) {
                                            return Ok((member, epoch, server, b'E', slot));
                                        }
                                        Wait::Retry
                                    }
                                    Some(answer) => return Ok((member, epoch, server, answer, slot)),
                                    // Closed before answering (a postmaster going away): again.
                                    None => Wait::Retry,
                                }
                            }
                            Ok(_) => Wait::News,
                            // Refused while it restarts or promotes: not an error for the client yet.
                            Err(e) => {
                                tracing::debug!(%member, "proxy: {e:#}");
                                Wait::Retry
                            }
                        }
                    }
                }
            }
            RwRoute::Hold(reason) => {
                if !counted {
                    counted = true;
                    metrics::counter!("pgvigil_proxy_held_total", "reason" => reason.as_str()).increment(1);
                }
                held = Some(reason);
                Wait::News
            }
        };
        // Waiting for a slot ends at the queue's deadline, anything else at the hold's.
        let (until, refusal) = match (&wait, &queue) {
            (Wait::Slot, Some((since, _))) => {
                let max = inner.book.max().unwrap_or(0);
                let member = tried.clone().unwrap_or_default();
                (*since + inner.cfg.queue_timeout(), Refused::Full { member, max, waited: since.elapsed() })
            }
            _ => (
                deadline,
                match (held, tried.clone()) {
                    (Some(reason), _) => Refused::Held { reason, hold },
                    (None, Some(member)) => Refused::Unreachable { member },
                    (None, None) => Refused::Held { reason: HoldReason::NoPrimary, hold },
                },
            ),
        };
        let retry = tokio::time::Instant::now() + RETRY_CONNECT;
        tokio::select! {
            _ = shutdown.cancelled() => return Err(None),
            _ = tokio::time::sleep_until(until) => {
                let refusal = match refusal {
                    Refused::Full { member, max, .. } => {
                        let waited = queue.as_ref().map(|(since, _)| since.elapsed()).unwrap_or_default();
                        Refused::Full { member, max, waited }
                    }
                    other => other,
                };
                return Err(Some(refusal));
            }
            r = rx.changed(), if wait != Wait::Retry => if r.is_err() { return Err(None) },
            _ = tokio::time::sleep_until(retry), if wait == Wait::Retry => {}
            _ = freed.changed(), if wait == Wait::Slot => {}
        }
    }
}

/// What a session waiting for its backend waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wait {
    /// News from the router (a new route, a new lease).
    News,
    /// A moment, then it tries the same backend again (it refused, or closed before answering).
    Retry,
    /// A slot given back (or news).
    Slot,
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

/// A new read-only session: the pool member with the fewest sessions among those below the limit
/// (waiting up to `queue_timeout` for a slot when all are at it), else what `no_standby` says.
/// Err(Some): refused, and why; Err(None): shutting down.
async fn pick_standby(
    inner: &Arc<Inner>,
    shutdown: &CancellationToken,
) -> Result<(String, u64, TcpStream, Slot), Option<Refused>> {
    let mut rx = inner.routes.subscribe();
    let mut queue: Option<(tokio::time::Instant, Queued)> = None;
    loop {
        let mut freed = inner.book.freed();
        let routes = rx.borrow_and_update().clone();
        let rw = rules::rw_route(&routes.committed, &routes.fence, Instant::now());
        let ticket = queue.as_ref().map(|(_, q)| q.ticket());
        let closed = inner.book.closed(ticket);
        match rules::ro_route(&routes.pool, &inner.book.open_of(Port::Ro), &inner.rules, &rw, &closed) {
            RoRoute::Forward(member) => {
                // Another session took the last slot in between: choose again.
                let Some(slot) = inner.book.try_reserve(Port::Ro, &member, ticket) else { continue };
                let addr = routes.addrs.get(&member).cloned().unwrap_or_default();
                return match connect(&addr, &inner.cfg).await {
                    Ok(server) => Ok((member, routes.committed.epoch, server, slot)),
                    Err(e) => {
                        tracing::debug!(%member, "proxy: {e:#}");
                        Err(Some(Refused::Unreachable { member }))
                    }
                };
            }
            RoRoute::Refuse => return Err(Some(Refused::NoStandby)),
            RoRoute::Queue(member) => {
                let since = match &mut queue {
                    Some((since, q)) => {
                        q.wait_for(&member);
                        *since
                    }
                    None => {
                        let since = tokio::time::Instant::now();
                        queue = Some((since, inner.book.queue(Port::Ro, &member)));
                        since
                    }
                };
                tokio::select! {
                    _ = shutdown.cancelled() => return Err(None),
                    _ = tokio::time::sleep_until(since + inner.cfg.queue_timeout()) => {
                        let max = inner.book.max().unwrap_or(0);
                        return Err(Some(Refused::Full { member, max, waited: since.elapsed() }));
                    }
                    r = rx.changed() => if r.is_err() { return Err(None) },
                    _ = freed.changed() => {}
                }
            }
        }
    }
}

/// A CancelRequest goes to every backend of the port: those it has sessions on, and those new
/// sessions would go to. PostgreSQL acts only where the key matches and answers nothing.
async fn forward_cancel(inner: &Arc<Inner>, port: Port, packet: Vec<u8>) {
    metrics::counter!("pgvigil_proxy_cancel_requests_total", "port" => port.name()).increment(1);
    let routes = inner.routes.borrow().clone();
    let mut backends: BTreeSet<String> = inner.book.open_of(port).into_keys().collect();
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
