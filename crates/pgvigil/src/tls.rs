//! Transport security (the `[tls]` table): TLS for the peer gRPC port (optionally mutual) and for
//! the HTTP API, with rustls and its `ring` provider.
//!
//! [`Tls::load`] reads and checks the PEM files once, at start-up, so that a missing file, a key
//! that does not go with its certificate or a certificate the CA did not sign is a
//! [`ConfigError`] naming the key (exit 64), not a handshake failure later. The rest builds the
//! configurations each side needs: tonic's for the peer server and clients, rustls' for the API
//! ([`TlsListener`]) and for the command line ([`client_config`]).

use crate::config::{ConfigError, TlsConfig};
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};
use vigil_raft::PeerClients;

/// How long a client may take over its TLS handshake, on either port.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Make `ring` the process' rustls provider (tonic's server builds its configuration with the
/// process default). Idempotent.
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn bad(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError { key: key.to_string(), message: message.into() }
}

/// A certificate chain and its private key, as PEM.
#[derive(Clone)]
struct Pem {
    cert: Vec<u8>,
    key: Vec<u8>,
}

/// The checked `[tls]` table with the files' contents. `Debug` never shows the keys.
#[derive(Clone)]
pub struct Tls {
    ca: Vec<u8>,
    member: Pem,
    api_identity: Pem,
    /// The peer port requires a client certificate that chains to the CA.
    pub peer_mtls: bool,
    /// The HTTP API serves https.
    pub api: bool,
    /// The HTTP API requires a client certificate that chains to the CA.
    pub api_verify_client: bool,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("peer_mtls", &self.peer_mtls)
            .field("api", &self.api)
            .field("api_verify_client", &self.api_verify_client)
            .finish_non_exhaustive()
    }
}

fn read(key: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| bad(key, format!("cannot read {}: {e}", path.display())))
}

fn certs(key: &str, path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(key, format!("{}: not PEM certificates: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(bad(key, format!("{}: no PEM certificate in it", path.display())));
    }
    Ok(certs)
}

fn private_key(key: &str, path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, ConfigError> {
    PrivateKeyDer::from_pem_slice(pem)
        .map_err(|e| bad(key, format!("{}: no PEM private key (PKCS#8, PKCS#1 or SEC1) in it: {e}", path.display())))
}

fn roots(certs: &[CertificateDer<'static>]) -> Result<Arc<RootCertStore>, String> {
    let mut roots = RootCertStore::empty();
    for c in certs {
        roots.add(c.clone()).map_err(|e| format!("not a usable CA certificate: {e}"))?;
    }
    Ok(Arc::new(roots))
}

/// The host part of `host:port` (brackets of an IPv6 address removed).
pub fn host_of(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

impl Tls {
    /// Read and check the files of the `[tls]` table. `member_address` is this member's peer
    /// address from `members` (`host:port`): its certificate must name that host, since the other
    /// members connect by it.
    pub fn load(cfg: &TlsConfig, member_address: &str) -> Result<Tls, ConfigError> {
        let ca = read("tls.ca_file", &cfg.ca_file)?;
        let ca_certs = certs("tls.ca_file", &cfg.ca_file, &ca)?;
        let roots = roots(&ca_certs).map_err(|e| bad("tls.ca_file", format!("{}: {e}", cfg.ca_file.display())))?;
        let member = load_pair(("tls.cert_file", &cfg.cert_file), ("tls.key_file", &cfg.key_file))?;

        // The other members check this certificate against the CA and the host they dial.
        let chain = certs("tls.cert_file", &cfg.cert_file, &member.cert)?;
        let (end_entity, intermediates) = chain.split_first().ok_or_else(|| bad("tls.cert_file", "empty"))?;
        let host = host_of(member_address);
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| bad("tls.cert_file", format!("this member's address host {host:?} is not a name: {e}")))?;
        let server_verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|e| bad("tls.ca_file", e.to_string()))?;
        server_verifier.verify_server_cert(end_entity, intermediates, &name, &[], UnixTime::now()).map_err(|e| {
            bad(
                "tls.cert_file",
                format!(
                    "{} is not a valid server certificate for {host} under tls.ca_file: {e}",
                    cfg.cert_file.display()
                ),
            )
        })?;
        if cfg.peer_mtls {
            let client_verifier = WebPkiClientVerifier::builder_with_provider(roots, provider())
                .build()
                .map_err(|e| bad("tls.ca_file", e.to_string()))?;
            client_verifier.verify_client_cert(end_entity, intermediates, UnixTime::now()).map_err(|e| {
                bad(
                    "tls.cert_file",
                    format!(
                        "{} is not a valid client certificate under tls.ca_file (peer_mtls needs the clientAuth usage): {e}",
                        cfg.cert_file.display()
                    ),
                )
            })?;
        }
        let api_identity = match (&cfg.api_cert_file, &cfg.api_key_file) {
            (None, None) => member.clone(),
            (Some(cert), Some(key)) => load_pair(("tls.api_cert_file", cert), ("tls.api_key_file", key))?,
            (Some(_), None) => return Err(bad("tls.api_key_file", "missing: tls.api_cert_file needs it")),
            (None, Some(_)) => return Err(bad("tls.api_cert_file", "missing: tls.api_key_file needs it")),
        };
        let tls = Tls {
            ca,
            member,
            api_identity,
            peer_mtls: cfg.peer_mtls,
            api: cfg.api,
            api_verify_client: cfg.api_verify_client,
        };
        if tls.api {
            tls.api_server_config().map_err(|e| bad("tls.api_cert_file", e))?;
        }
        Ok(tls)
    }

    /// The peer gRPC server's TLS: this member's certificate; with `peer_mtls`, a client must
    /// present a certificate that chains to the CA or the handshake fails.
    pub fn peer_server(&self) -> ServerTlsConfig {
        let config = ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.member.cert, &self.member.key))
            .timeout(HANDSHAKE_TIMEOUT);
        if self.peer_mtls {
            config.client_ca_root(Certificate::from_pem(&self.ca))
        } else {
            config
        }
    }

    /// Channels to the other members: they must present a certificate that chains to the CA and
    /// names the host dialled; this member presents its own when asked (mutual TLS).
    pub fn peer_clients(&self) -> PeerClients {
        PeerClients::with_tls(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&self.ca))
                .identity(Identity::from_pem(&self.member.cert, &self.member.key)),
        )
    }

    /// The HTTP API's server configuration (HTTP/1.1).
    pub fn api_server_config(&self) -> Result<Arc<rustls::ServerConfig>, String> {
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let builder = if self.api_verify_client {
            let ca =
                CertificateDer::pem_slice_iter(&self.ca).collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string())?;
            let verifier = WebPkiClientVerifier::builder_with_provider(roots(&ca)?, provider())
                .build()
                .map_err(|e| e.to_string())?;
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let chain = CertificateDer::pem_slice_iter(&self.api_identity.cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        let key = PrivateKeyDer::from_pem_slice(&self.api_identity.key).map_err(|e| e.to_string())?;
        let mut config = builder.with_single_cert(chain, key).map_err(|e| format!("the key does not fit: {e}"))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// A client configuration for this member's own API (the CLI with `--config`): trusts the
    /// CA and presents the member's certificate when the API asks for one.
    pub fn api_client_config(&self) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        client_config(&self.ca, Some((&self.member.cert, &self.member.key)))
    }
}

/// Read a certificate file and its key file, and check that they go together.
fn load_pair(cert: (&str, &Path), key: (&str, &Path)) -> Result<Pem, ConfigError> {
    let pem = Pem { cert: read(cert.0, cert.1)?, key: read(key.0, key.1)? };
    let chain = certs(cert.0, cert.1, &pem.cert)?;
    let private = private_key(key.0, key.1, &pem.key)?;
    rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(key.0, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| bad(key.0, format!("{} does not go with {}: {e}", key.1.display(), cert.1.display())))?;
    Ok(pem)
}

/// A client configuration for a member's HTTP API over https: trust the CA certificates in
/// `ca_pem`; present `identity` (certificate chain and key, PEM) when the server asks for one.
pub fn client_config(ca_pem: &[u8], identity: Option<(&[u8], &[u8])>) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let ca = CertificateDer::pem_slice_iter(ca_pem).collect::<Result<Vec<_>, _>>()?;
    anyhow::ensure!(!ca.is_empty(), "no PEM certificate in the CA file");
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(&ca).map_err(anyhow::Error::msg)?);
    let mut config = match identity {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert).collect::<Result<Vec<_>, _>>()?;
            builder.with_client_auth_cert(chain, PrivateKeyDer::from_pem_slice(key)?)?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A listener for `axum::serve` that hands over TLS connections. TCP connections are accepted
/// by a task of its own and each handshake runs in a task of its own (bounded by a timeout), so a
/// slow or hostile client never holds up the others. Dropping the listener stops it all.
pub struct TlsListener {
    ready: mpsc::Receiver<(tokio_rustls::server::TlsStream<tokio::net::TcpStream>, SocketAddr)>,
    local: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    pub fn new(listener: tokio::net::TcpListener, config: Arc<rustls::ServerConfig>) -> std::io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let task = tokio::spawn(accept_loop(listener, acceptor, tx));
        Ok(TlsListener { ready, local, task })
    }
}

async fn accept_loop(
    mut listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    ready: mpsc::Sender<(tokio_rustls::server::TlsStream<tokio::net::TcpStream>, SocketAddr)>,
) {
    let mut handshakes = JoinSet::new();
    loop {
        tokio::select! {
            // axum's accept for a TcpListener retries (and logs) accept errors itself.
            (tcp, peer) = axum::serve::Listener::accept(&mut listener) => {
                let (acceptor, ready) = (acceptor.clone(), ready.clone());
                handshakes.spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = ready.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, "HTTP API: TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(%peer, "HTTP API: TLS handshake timed out"),
                    }
                });
            }
            Some(_) = handshakes.join_next(), if !handshakes.is_empty() => {}
            _ = ready.closed() => return,
        }
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_of_addresses() {
        assert_eq!(host_of("127.0.0.1:7000"), "127.0.0.1");
        assert_eq!(host_of("db1.example:7000"), "db1.example");
        assert_eq!(host_of("[::1]:7000"), "::1");
    }
}
