//! Outbound raft messages: one task per peer draining a bounded queue into the `raft` RPC, and
//! [`PeerClients`], the cache of lazily connected channels it (and the daemon) uses, plain or TLS.
//!
//! The node task only ever `try_send`s into a peer's queue: a slow or dead peer costs dropped
//! messages (raft retransmits), never a stalled node.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use raft::SnapshotStatus;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tracing::Instrument;
use vigil_core::repeats::{Repeats, LOG_EVERY};

use crate::auth::{ClusterKey, Signed};
use crate::handle::Request;
use crate::proto::peer_client::PeerClient;
use crate::proto::RaftMessage;
use crate::PeerNames;

const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// HTTP/2 PINGs on every connection, idle or not: one unanswered for [`KEEPALIVE_TIMEOUT`] closes
/// the connection, and the next request dials afresh (each dial bounded by the connect timeout).
/// Without them a request that timed out leaves the TCP connection in place, and after a long
/// partition TCP's retransmission backoff (tens of seconds) decides when the peer is heard again.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(1);
/// Snapshots travel in one message; allow them to be large.
const MAX_MESSAGE_BYTES: usize = 64 << 20;
/// Per-peer queue. Raft sends little; a full queue means the peer is not keeping up.
const PEER_QUEUE: usize = 256;

/// Lazily connected, cached tonic channels to peers by address, plain (`http`) or over TLS
/// (`https`, see [`PeerClients::with_tls`]). Channels reconnect on their own after failures;
/// clones share the cache and the TLS configuration ([`PeerClients::set_tls`] changes both for
/// every clone). `client` must be called inside a tokio runtime.
#[derive(Clone, Default)]
pub struct PeerClients {
    inner: Arc<Mutex<Inner>>,
    /// Fixed at construction: plain text never turns into TLS or back.
    tls: bool,
    /// Signs every request with the cluster's credential (see [`crate::auth`]).
    key: Option<Arc<ClusterKey>>,
}

/// What a [`PeerClient`] of these clients runs on: a channel whose requests carry the cluster's
/// credential when there is one.
pub type PeerChannel = Signed<Channel>;

#[derive(Default)]
struct Inner {
    channels: HashMap<String, Channel>,
    tls: Option<ClientTlsConfig>,
}

impl PeerClients {
    /// Plain-text channels (`http://`).
    pub fn new() -> Self {
        Self::default()
    }

    /// Channels over TLS (`https://`): `tls` names the CA that peers' certificates must chain to
    /// and, for mutual TLS, this member's identity. The server name checked is the host of the
    /// address (an IP address or a DNS name), unless `tls` sets one. The TLS handshake must end
    /// within the connect timeout.
    pub fn with_tls(tls: ClientTlsConfig) -> Self {
        let inner = Inner { channels: HashMap::new(), tls: Some(tls.timeout(CONNECT_TIMEOUT)) };
        PeerClients { inner: Arc::new(Mutex::new(inner)), tls: true, key: None }
    }

    /// These clients, signing every request with `key` (the cluster's secret).
    pub fn with_key(mut self, key: Arc<ClusterKey>) -> Self {
        self.key = Some(key);
        self
    }

    /// New TLS material (a renewed identity or CA) for every clone: cached channels are dropped,
    /// so the next request dials again with it; requests in flight finish on their old channel.
    /// Refused (false) on plain-text clients.
    pub fn set_tls(&self, tls: ClientTlsConfig) -> bool {
        if !self.tls {
            return false;
        }
        let mut inner = self.lock();
        inner.tls = Some(tls.timeout(CONNECT_TIMEOUT));
        inner.channels.clear();
        true
    }

    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// A poisoned lock only means another thread panicked while inserting: the map is fine.
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The URL of the peer at `addr`: a bare `host:port` (how members are configured) gets the
    /// scheme of these clients; a URL must use it.
    pub fn url(&self, addr: &str) -> anyhow::Result<String> {
        let scheme = if self.is_tls() { "https" } else { "http" };
        match addr.split_once("://") {
            None => Ok(format!("{scheme}://{addr}")),
            Some((s, _)) if s == scheme => Ok(addr.to_string()),
            Some(_) => anyhow::bail!("peer address {addr:?}: these clients speak {scheme}"),
        }
    }

    /// A client for the peer at `addr` (`host:port` or a URL, see [`PeerClients::url`]).
    /// Connect timeout 500 ms, request timeout 1 s. Fails only if `addr` is not a valid URI
    /// (or its scheme is not these clients').
    pub fn client(&self, addr: &str) -> anyhow::Result<PeerClient<PeerChannel>> {
        let mut inner = self.lock();
        let channel = match inner.channels.get(addr) {
            Some(ch) => ch.clone(),
            None => {
                let ch = self.channel(addr, REQUEST_TIMEOUT, inner.tls.as_ref())?;
                inner.channels.insert(addr.to_string(), ch.clone());
                ch
            }
        };
        Ok(self.wrap(channel))
    }

    /// A client on a channel of its own (not cached) whose requests may take up to `timeout`: for
    /// a forwarded operator's request that answers once a switchover is done.
    pub fn long_client(&self, addr: &str, timeout: Duration) -> anyhow::Result<PeerClient<PeerChannel>> {
        let tls = self.lock().tls.clone();
        Ok(self.wrap(self.channel(addr, timeout, tls.as_ref())?))
    }

    fn wrap(&self, channel: Channel) -> PeerClient<PeerChannel> {
        PeerClient::new(Signed::new(channel, self.key.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    fn channel(&self, addr: &str, timeout: Duration, tls: Option<&ClientTlsConfig>) -> anyhow::Result<Channel> {
        Ok(self.endpoint(addr, tls)?.timeout(timeout).connect_lazy())
    }

    fn endpoint(&self, addr: &str, tls: Option<&ClientTlsConfig>) -> anyhow::Result<Endpoint> {
        let mut endpoint = Endpoint::from_shared(self.url(addr)?)
            .with_context(|| format!("invalid peer address {addr:?}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        if let Some(tls) = tls {
            endpoint = endpoint.tls_config(tls.clone()).with_context(|| format!("TLS for peer {addr:?}"))?;
        }
        Ok(endpoint)
    }

    /// A client on a connection of its own, connected now (within the connect timeout, TLS
    /// handshake included) and without a request timeout: for a long-lived stream, whose dead
    /// connection the keepalives find.
    pub async fn stream_client(&self, addr: &str) -> anyhow::Result<PeerClient<PeerChannel>> {
        let tls = self.lock().tls.clone();
        let channel =
            self.endpoint(addr, tls.as_ref())?.connect().await.with_context(|| format!("connect to {addr}"))?;
        Ok(self.wrap(channel))
    }
}

/// The node task's side of the outbound transport.
pub(crate) struct Transport {
    queues: HashMap<u64, mpsc::Sender<Message>>,
    tasks: JoinSet<()>,
    stop: CancellationToken,
    names: PeerNames,
    /// Messages raft-rs addressed to a node that is not a peer, by that node.
    unknown: Repeats<u64>,
}

impl Transport {
    /// Spawns one sender task per peer other than `self_id`, in the current span. Failures are
    /// reported back into the node's request queue.
    pub(crate) fn start(
        self_id: u64,
        peers: &BTreeMap<u64, String>,
        names: &PeerNames,
        clients: PeerClients,
        feedback: mpsc::Sender<Request>,
        stop: CancellationToken,
    ) -> Self {
        let mut queues = HashMap::new();
        let mut tasks = JoinSet::new();
        for (&id, addr) in peers.iter().filter(|(&id, _)| id != self_id) {
            let (tx, rx) = mpsc::channel(PEER_QUEUE);
            queues.insert(id, tx);
            let peer = PeerSender {
                id,
                name: names.of(id).to_string(),
                sender: names.of(self_id).to_string(),
                addr: addr.clone(),
                clients: clients.clone(),
                feedback: feedback.clone(),
                failures: Repeats::new(LOG_EVERY),
                stream: None,
            };
            tasks.spawn(peer.run(rx, stop.clone()).in_current_span());
        }
        Transport { queues, tasks, stop, names: names.clone(), unknown: Repeats::new(LOG_EVERY) }
    }

    /// Queues messages for their peers. Returns the peers whose snapshot message could not be
    /// queued: raft-rs must hear that, or it waits for that snapshot forever.
    pub(crate) fn send(&mut self, msgs: Vec<Message>) -> Vec<u64> {
        let mut failed_snapshots = Vec::new();
        for msg in msgs {
            let (to, is_snapshot) = (msg.to, msg.get_msg_type() == MessageType::MsgSnapshot);
            let Some(queue) = self.queues.get(&to) else {
                if let Some(o) = self.unknown.occurred(Instant::now(), to) {
                    let to = self.names.of(to);
                    tracing::warn!(%to, suppressed = o.field(), "raft message for an unknown peer dropped");
                }
                continue;
            };
            if queue.try_send(msg).is_err() {
                tracing::debug!(to, "peer queue full, raft message dropped");
                if is_snapshot {
                    failed_snapshots.push(to);
                }
            }
        }
        failed_snapshots
    }

    /// Says once that messages for an unknown node stopped; call now and then (every tick).
    pub(crate) fn expire(&mut self, now: Instant) {
        for (to, e) in self.unknown.expired(now) {
            let (suppressed, total) = (e.suppressed, e.total);
            tracing::info!(to = %self.names.of(to), suppressed, total, "no more raft messages for the unknown peer");
        }
    }

    /// Stops the sender tasks and waits for them.
    pub(crate) async fn shutdown(mut self) {
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

struct PeerSender {
    id: u64,
    /// The peer's name, and this node's (sent along, for the peer's logs).
    name: String,
    sender: String,
    addr: String,
    clients: PeerClients,
    feedback: mpsc::Sender<Request>,
    /// Failed sends by cause (the gRPC status code; -1: no answer at all): logged when the peer
    /// becomes unreachable or fails another way, then at most once a minute per cause while it
    /// stays so, and once when it answers again.
    failures: Repeats<i32>,
    /// The open `RaftStream` call, if any.
    stream: Option<OpenStream>,
}

/// A `RaftStream` call in progress: messages go into `tx`; `call` ends when the stream does (an
/// error: the peer or the connection failed).
struct OpenStream {
    tx: mpsc::Sender<RaftMessage>,
    call: tokio::task::JoinHandle<Result<(), tonic::Status>>,
}

/// Messages waiting for the stream's flow control; a full one means the peer does not keep up.
const STREAM_QUEUE: usize = 64;

impl PeerSender {
    async fn run(mut self, mut rx: mpsc::Receiver<Message>, stop: CancellationToken) {
        loop {
            let msg = tokio::select! {
                _ = stop.cancelled() => return,
                msg = rx.recv() => match msg {
                    Some(msg) => msg,
                    None => return,
                },
            };
            let is_snapshot = msg.get_msg_type() == MessageType::MsgSnapshot;
            // A snapshot goes as a call of its own: raft-rs must hear whether it arrived. The
            // rest goes on the stream; only opening it (or its failure) says the peer is there.
            let result = if is_snapshot {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    result = self.deliver(&msg) => result.map(|()| true),
                }
            } else {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    result = self.stream(&msg) => result,
                }
            };
            let failed = result.is_err();
            match result {
                Ok(false) => {}
                Ok(true) => self.report(Ok(()), is_snapshot),
                Err(e) => self.report(Err(e), is_snapshot),
            }
            if failed {
                self.drop_backlog(&mut rx);
            }
        }
        if let Some(open) = self.stream.take() {
            open.call.abort();
        }
    }

    /// Put `msg` on the stream, opening it first when there is none. Ok(true): the stream was
    /// (re)opened, so the peer answered. An error ends the stream: the message is lost (raft-rs
    /// resends) and the next one opens a new stream.
    async fn stream(&mut self, msg: &Message) -> anyhow::Result<bool> {
        if let Some(open) = self.stream.take_if(|o| o.call.is_finished()) {
            return Err(match open.call.await {
                Ok(Ok(())) => anyhow::anyhow!("the peer ended the raft stream"),
                Ok(Err(status)) => anyhow::Error::new(status).context("raft stream"),
                Err(e) => anyhow::anyhow!("raft stream task: {e}"),
            });
        }
        let opened = if self.stream.is_none() {
            let mut client = self.clients.stream_client(&self.addr).await.context("raft stream")?;
            let (tx, rx) = mpsc::channel(STREAM_QUEUE);
            let call = tokio::spawn(async move {
                client.raft_stream(tokio_stream::wrappers::ReceiverStream::new(rx)).await.map(drop)
            });
            self.stream = Some(OpenStream { tx, call });
            true
        } else {
            false
        };
        let message = msg.write_to_bytes().context("encode raft message")?;
        let sent = match &self.stream {
            Some(open) => open.tx.try_send(RaftMessage { message, sender: self.sender.clone() }).is_ok(),
            None => false,
        };
        if !sent {
            if let Some(open) = self.stream.take() {
                open.call.abort();
            }
            anyhow::bail!("raft stream full (the peer does not keep up) or closed");
        }
        Ok(opened)
    }

    /// After a failed send, what waits in the queue is stale: raft-rs was told the peer is
    /// unreachable and sends afresh what still matters. Delivered after a long partition, the
    /// backlog (a full queue of old heartbeats and appends, one RPC each) would only delay the
    /// fresh messages behind it by seconds. A dropped snapshot is reported as failed.
    fn drop_backlog(&self, rx: &mut mpsc::Receiver<Message>) -> usize {
        let mut dropped = 0;
        while let Ok(msg) = rx.try_recv() {
            dropped += 1;
            if msg.get_msg_type() == MessageType::MsgSnapshot {
                let status = SnapshotStatus::Failure;
                let _ = self.feedback.try_send(Request::SnapshotSent { to: self.id, status });
            }
        }
        if dropped > 0 {
            tracing::debug!(peer = %self.name, dropped, "stale raft messages dropped after a failed send");
        }
        dropped
    }

    async fn deliver(&self, msg: &Message) -> anyhow::Result<()> {
        let message = msg.write_to_bytes().context("encode raft message")?;
        let mut client = self.clients.client(&self.addr)?;
        client.raft(RaftMessage { message, sender: self.sender.clone() }).await.context("raft rpc")?;
        Ok(())
    }

    fn report(&mut self, result: anyhow::Result<()>, is_snapshot: bool) {
        let to = self.id;
        // try_send: the node may be busy, and raft-rs recovers from a missed report.
        match result {
            Ok(()) => {
                let ended = self.failures.resolved_all();
                if !ended.is_empty() {
                    let failed_sends: u64 = ended.iter().map(|(_, e)| e.total).sum();
                    tracing::info!(peer = %self.name, addr = %self.addr, failed_sends, "raft peer reachable again");
                }
                if is_snapshot {
                    let status = SnapshotStatus::Finish;
                    let _ = self.feedback.try_send(Request::SnapshotSent { to, status });
                }
            }
            Err(e) => {
                let code = e.chain().find_map(|c| c.downcast_ref::<tonic::Status>()).map(|s| s.code());
                match self.failures.occurred(Instant::now(), code.map_or(-1, |c| c as i32)) {
                    Some(o) => {
                        use tonic::Code::{Cancelled, DeadlineExceeded, Unavailable};
                        let unreachable = matches!(code, None | Some(Unavailable | DeadlineExceeded | Cancelled));
                        let what = if unreachable { "raft peer unreachable" } else { "raft peer refuses our messages" };
                        let error = format!("{e:#}");
                        let suppressed = o.field();
                        tracing::warn!(peer = %self.name, addr = %self.addr, %error, suppressed, "{what}");
                    }
                    None => tracing::debug!(peer = %self.name, error = %format!("{e:#}"), "raft send failed"),
                }
                let _ = self.feedback.try_send(Request::Unreachable(to));
                if is_snapshot {
                    let status = SnapshotStatus::Failure;
                    let _ = self.feedback.try_send(Request::SnapshotSent { to, status });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A send that fails empties the queue: the next message after a heal goes out at once
    /// instead of behind a full queue of stale ones, and raft-rs hears of a dropped snapshot.
    #[tokio::test]
    async fn a_failed_send_drops_the_backlog_and_reports_dropped_snapshots() {
        let (feedback, mut heard) = mpsc::channel(16);
        let peer = PeerSender {
            id: 2,
            name: "b".into(),
            sender: "a".into(),
            addr: "127.0.0.1:1".into(),
            clients: PeerClients::new(),
            feedback,
            failures: Repeats::new(LOG_EVERY),
            stream: None,
        };
        let (tx, mut rx) = mpsc::channel(PEER_QUEUE);
        for t in [MessageType::MsgHeartbeat, MessageType::MsgSnapshot, MessageType::MsgAppend] {
            let mut m = Message::default();
            m.set_msg_type(t);
            tx.try_send(m).expect("queued");
        }
        assert_eq!(peer.drop_backlog(&mut rx), 3);
        assert!(rx.try_recv().is_err(), "empty");
        assert!(matches!(heard.try_recv(), Ok(Request::SnapshotSent { to: 2, status: SnapshotStatus::Failure })));
    }

    #[test]
    fn peer_urls_follow_the_clients_scheme() {
        let plain = PeerClients::new();
        assert_eq!(plain.url("10.0.0.1:7000").ok().as_deref(), Some("http://10.0.0.1:7000"));
        assert_eq!(plain.url("http://db1:7000").ok().as_deref(), Some("http://db1:7000"));
        assert!(plain.url("https://db1:7000").is_err());
        let tls = PeerClients::with_tls(ClientTlsConfig::new());
        assert_eq!(tls.url("db1:7000").ok().as_deref(), Some("https://db1:7000"));
        assert!(tls.url("http://db1:7000").is_err(), "never plain text when TLS is on");
    }

    #[tokio::test]
    async fn new_tls_material_drops_cached_channels_for_every_clone() {
        let tls = PeerClients::with_tls(ClientTlsConfig::new());
        let clone = tls.clone();
        tls.client("127.0.0.1:7000").expect("a lazy channel");
        clone.client("127.0.0.1:7001").expect("a lazy channel");
        assert_eq!(tls.lock().channels.len(), 2, "clones share the cache");
        assert!(clone.set_tls(ClientTlsConfig::new()));
        assert!(tls.lock().channels.is_empty(), "the next request dials again");
        assert!(!PeerClients::new().set_tls(ClientTlsConfig::new()), "plain text stays plain");
        assert!(!PeerClients::new().is_tls() && tls.is_tls());
    }
}
