//! TLS material that a reload (SIGHUP) may replace while the daemon runs.
//!
//! Both ports accept through [`TlsListener`], our own rustls acceptor, which takes the server
//! configuration of each new connection from a `watch`: tonic's `ServerTlsConfig` is fixed when
//! the server is built, so the peer port is served with `serve_with_incoming` on the TLS streams
//! of a [`TlsListener`] (the same code as the HTTP API's), not through tonic's own acceptor.
//! Swapping whole `rustls::ServerConfig`s (certificate, key and client verifier with its CA
//! together) keeps the checks exactly those of start-up, with no resolver or verifier of our own.
//! [`LiveTls`] holds the senders and the outbound peer clients; [`LiveTls::replace`] builds every
//! new configuration first and swaps only if all of them build. Connections already open keep
//! their session.

use crate::tls::{Tls, HANDSHAKE_TIMEOUT};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_rustls::server::TlsStream;
use vigil_raft::PeerClients;

/// The TLS configurations in use, for new connections, and the clients that dial peers.
pub struct LiveTls {
    peer: watch::Sender<Arc<rustls::ServerConfig>>,
    /// None: the API serves plain http (`tls.api = false`).
    api: Option<watch::Sender<Arc<rustls::ServerConfig>>>,
    /// Every cache of outbound channels (the Raft transport's and the daemon's own).
    clients: Vec<PeerClients>,
}

impl LiveTls {
    pub fn new(tls: &Tls, clients: Vec<PeerClients>) -> Result<LiveTls, String> {
        let peer = watch::Sender::new(tls.peer_server_config()?);
        let api = if tls.api { Some(watch::Sender::new(tls.api_server_config()?)) } else { None };
        Ok(LiveTls { peer, api, clients })
    }

    /// The peer port's configuration, for [`TlsListener::new`].
    pub fn peer(&self) -> watch::Receiver<Arc<rustls::ServerConfig>> {
        self.peer.subscribe()
    }

    /// The API's configuration when it serves https.
    pub fn api(&self) -> Option<watch::Receiver<Arc<rustls::ServerConfig>>> {
        self.api.as_ref().map(watch::Sender::subscribe)
    }

    /// Use `tls`'s files from now on: new connections on both ports present its certificates and
    /// check clients against its CA; peer channels are dialled again with its identity. Nothing
    /// changes when a configuration does not build. The flags (`peer_mtls`, `api`, ...) are
    /// those of start-up: a reload that changes them needs a restart and never gets here.
    pub fn replace(&self, tls: &Tls) -> Result<(), String> {
        let peer = tls.peer_server_config().map_err(|e| format!("the peer port's TLS: {e}"))?;
        let api = match &self.api {
            Some(_) => Some(tls.api_server_config().map_err(|e| format!("the API's TLS: {e}"))?),
            None => None,
        };
        self.peer.send_replace(peer);
        if let (Some(sender), Some(config)) = (&self.api, api) {
            sender.send_replace(config);
        }
        for clients in &self.clients {
            clients.set_tls(tls.peer_client_config());
        }
        Ok(())
    }
}

/// A listener that hands over TLS connections: to `axum::serve` (it is an
/// `axum::serve::Listener`) or to tonic (`into_incoming`). TCP connections are accepted by a task
/// of its own and each handshake runs in a task of its own (bounded by a timeout), so a slow or
/// hostile client never holds up the others. Each handshake uses the configuration the `watch`
/// holds when the connection arrives. Dropping the listener stops it all.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    _accepting: AbortOnDrop,
}

/// Aborts the accept task when the listener (or its stream) goes.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl TlsListener {
    pub fn new(
        listener: tokio::net::TcpListener,
        configs: watch::Receiver<Arc<rustls::ServerConfig>>,
        port: &'static str,
    ) -> std::io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        let task = tokio::spawn(accept_loop(listener, configs, tx, port));
        Ok(TlsListener { ready, local, _accepting: AbortOnDrop(task) })
    }

    /// The connections as a stream for tonic's `serve_with_incoming`.
    pub fn into_incoming(self) -> impl tokio_stream::Stream<Item = std::io::Result<TlsStream<TcpStream>>> {
        use tokio_stream::StreamExt;
        let TlsListener { ready, _accepting, .. } = self;
        tokio_stream::wrappers::ReceiverStream::new(ready).map(move |(tls, _)| {
            // The accept task lives as long as the stream does.
            let _ = &_accepting;
            Ok(tls)
        })
    }
}

async fn accept_loop(
    mut listener: tokio::net::TcpListener,
    configs: watch::Receiver<Arc<rustls::ServerConfig>>,
    ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
    port: &'static str,
) {
    let mut handshakes = JoinSet::new();
    loop {
        tokio::select! {
            // axum's accept for a TcpListener retries (and logs) accept errors itself.
            (tcp, peer) = axum::serve::Listener::accept(&mut listener) => {
                let acceptor = tokio_rustls::TlsAcceptor::from(configs.borrow().clone());
                let ready = ready.clone();
                handshakes.spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = ready.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, "{port}: TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(%peer, "{port}: TLS handshake timed out"),
                    }
                });
            }
            Some(_) = handshakes.join_next(), if !handshakes.is_empty() => {}
            _ = ready.closed() => return,
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept task ended (it only does when this listener goes): nothing comes.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
