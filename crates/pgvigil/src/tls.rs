//! Transport security (the `[tls]` table): TLS for the peer gRPC port (optionally mutual) and for
//! the HTTP API, with rustls and its `ring` provider.
//!
//! [`Tls::load`] reads and checks the PEM files (at start-up, and again on SIGHUP), so that a
//! missing file, a key others can read, a key that does not go with its certificate or a
//! certificate the CA did not sign is a [`ConfigError`] naming the key (exit 64, or a refused
//! reload), not a handshake failure later. The rest builds the configurations each side needs:
//! rustls' for the peer server and the API (served through `tls_live::TlsListener`, which takes
//! each new connection's configuration from a `watch`), tonic's for the peer clients, and rustls'
//! for the command line ([`client_config`]). [`changed_files`] says which files a reload changed.

use crate::config::{ConfigError, TlsConfig};
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};
use vigil_raft::PeerClients;

/// How long a client may take over its TLS handshake, on either port.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

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
    /// `api_cert_file` / `api_key_file`; None: the API serves `member`.
    api_identity: Option<Pem>,
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
            (None, None) => None,
            (Some(cert), Some(key)) => Some(load_pair(("tls.api_cert_file", cert), ("tls.api_key_file", key))?),
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
        tls.peer_server_config().map_err(|e| bad("tls.cert_file", e))?;
        Ok(tls)
    }

    /// The files' contents by their keys (`tls.api_*` only when they are set).
    fn files(&self) -> Vec<(&'static str, &[u8])> {
        let mut files = vec![
            ("tls.ca_file", &self.ca[..]),
            ("tls.cert_file", &self.member.cert),
            ("tls.key_file", &self.member.key),
        ];
        if let Some(api) = &self.api_identity {
            files.extend([("tls.api_cert_file", &api.cert[..]), ("tls.api_key_file", &api.key[..])]);
        }
        files
    }

    /// The peer gRPC server's TLS (HTTP/2): this member's certificate; with `peer_mtls`, a client
    /// must present a certificate that chains to the CA or the handshake fails.
    pub fn peer_server_config(&self) -> Result<Arc<rustls::ServerConfig>, String> {
        self.server_config(&self.member, self.peer_mtls, b"h2")
    }

    /// Channels to the other members: they must present a certificate that chains to the CA and
    /// names the host dialled; this member presents its own when asked (mutual TLS).
    pub fn peer_clients(&self) -> PeerClients {
        PeerClients::with_tls(self.peer_client_config())
    }

    /// What [`Tls::peer_clients`] dial with (also for new material on a reload).
    pub fn peer_client_config(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca))
            .identity(Identity::from_pem(&self.member.cert, &self.member.key))
    }

    /// The HTTP API's server configuration (HTTP/1.1).
    pub fn api_server_config(&self) -> Result<Arc<rustls::ServerConfig>, String> {
        self.server_config(self.api_identity.as_ref().unwrap_or(&self.member), self.api_verify_client, b"http/1.1")
    }

    /// A server presenting `identity`, speaking `alpn`; `verify_clients`: a client must present
    /// a certificate that chains to the CA.
    fn server_config(
        &self,
        identity: &Pem,
        verify_clients: bool,
        alpn: &[u8],
    ) -> Result<Arc<rustls::ServerConfig>, String> {
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let builder = if verify_clients {
            let ca =
                CertificateDer::pem_slice_iter(&self.ca).collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string())?;
            let verifier = WebPkiClientVerifier::builder_with_provider(roots(&ca)?, provider())
                .build()
                .map_err(|e| e.to_string())?;
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let chain =
            CertificateDer::pem_slice_iter(&identity.cert).collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string())?;
        let key = PrivateKeyDer::from_pem_slice(&identity.key).map_err(|e| e.to_string())?;
        let mut config = builder.with_single_cert(chain, key).map_err(|e| format!("the key does not fit: {e}"))?;
        config.alpn_protocols = vec![alpn.to_vec()];
        Ok(Arc::new(config))
    }

    /// A client configuration for this member's own API (the CLI with `--config`): trusts the
    /// CA and presents the member's certificate when the API asks for one.
    pub fn api_client_config(&self) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        client_config(&self.ca, Some((&self.member.cert, &self.member.key)))
    }
}

/// The keys of the `[tls]` files whose contents differ between `old` and `new` (a file added or
/// removed counts), in a fixed order. Paths are compared elsewhere (`reload::changed_keys`): a
/// renewed certificate usually keeps its path.
pub fn changed_files(old: &Tls, new: &Tls) -> Vec<&'static str> {
    let (old, new) = (old.files(), new.files());
    let keys = ["tls.ca_file", "tls.cert_file", "tls.key_file", "tls.api_cert_file", "tls.api_key_file"];
    let get =
        |files: &[(&'static str, &[u8])], key: &str| files.iter().find(|(k, _)| *k == key).map(|(_, b)| b.to_vec());
    keys.into_iter().filter(|k| get(&old, k) != get(&new, k)).collect()
}

/// A private key file must not be open to group or others (PostgreSQL's rule for its own key).
pub(crate) fn check_key_mode(key: &str, path: &Path) -> Result<(), ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|e| bad(key, format!("cannot read {}: {e}", path.display())))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(bad(
            key,
            format!("{} has mode {:04o}: group or others may read it; chmod 600 it", path.display(), mode & 0o7777),
        ));
    }
    Ok(())
}

/// Read a certificate file and its key file, and check that they go together.
fn load_pair(cert: (&str, &Path), key: (&str, &Path)) -> Result<Pem, ConfigError> {
    check_key_mode(key.0, key.1)?;
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

#[cfg(test)]
impl Tls {
    /// Material of the given bytes (unchecked), for tests of what changed.
    pub(crate) fn fake(ca: &str, cert: &str, key: &str, api: Option<(&str, &str)>) -> Tls {
        let pem = |cert: &str, key: &str| Pem { cert: cert.into(), key: key.into() };
        Tls {
            ca: ca.into(),
            member: pem(cert, key),
            api_identity: api.map(|(c, k)| pem(c, k)),
            peer_mtls: true,
            api: true,
            api_verify_client: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_files_compare_contents_and_name_the_keys() {
        let running = Tls::fake("ca", "cert", "key", None);
        assert!(changed_files(&running, &running.clone()).is_empty());
        assert_eq!(changed_files(&running, &Tls::fake("ca", "cert2", "key2", None)), ["tls.cert_file", "tls.key_file"]);
        assert_eq!(changed_files(&running, &Tls::fake("ca2", "cert", "key", None)), ["tls.ca_file"]);
        // A separate API certificate added (the member's own files unchanged): only its keys.
        let api = Tls::fake("ca", "cert", "key", Some(("api", "api-key")));
        assert_eq!(changed_files(&running, &api), ["tls.api_cert_file", "tls.api_key_file"]);
        assert_eq!(
            changed_files(&api, &Tls::fake("ca", "cert", "key", Some(("api2", "api-key")))),
            ["tls.api_cert_file"]
        );
    }

    #[test]
    fn a_key_open_to_group_or_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("key.pem");
        std::fs::write(&key, "x").expect("write");
        for (mode, ok) in [(0o600, true), (0o400, true), (0o640, false), (0o644, false), (0o604, false)] {
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).expect("chmod");
            let checked = check_key_mode("tls.key_file", &key);
            assert_eq!(checked.is_ok(), ok, "mode {mode:o}: {checked:?}");
            if let Err(e) = checked {
                assert_eq!(e.key, "tls.key_file");
                assert!(e.message.contains(&format!("{mode:04o}")), "{}", e.message);
            }
        }
    }

    #[test]
    fn hosts_of_addresses() {
        assert_eq!(host_of("127.0.0.1:7000"), "127.0.0.1");
        assert_eq!(host_of("db1.example:7000"), "db1.example");
        assert_eq!(host_of("[::1]:7000"), "::1");
    }
}
