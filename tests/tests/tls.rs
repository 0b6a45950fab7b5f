//! Secured transport on real clusters: TLS on the peer port (mutual by default) and https on the
//! HTTP API. The cluster bootstraps and fails over with TLS on; strangers (no certificate, a
//! certificate from another CA, plain text) are refused on both ports; the CLI works over https;
//! HAProxy checks `/primary` over https; no secret shows in a log or in `/config`. Certificates
//! are made per cluster (rcgen).

use nix::sys::signal::Signal;
use std::process::Command;
use std::time::Duration;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};
use vigil_raft::{proto, PeerClients};
use vigil_tests::certs::{self, Ca};
use vigil_tests::{log_len, new_primary_writable, pgvigil_bin, wait_log, ClusterSpec, TestCluster, TlsSpec};

const CONVERGE: Duration = Duration::from_secs(60);
const SUPERUSER_PASSWORD: &str = "su-pw-5f1c2b";
const API_TOKEN: &str = "api-token-9d3e7a";
/// What `launch` writes as every member's replication password.
const REPLICATION_PASSWORD: &str = "replication-secret";

/// `GetState` on a peer port through `clients`, with a deadline.
async fn get_state(clients: &PeerClients, addr: &str) -> anyhow::Result<proto::StateReply> {
    let mut client = clients.client(addr)?;
    let r = tokio::time::timeout(Duration::from_secs(5), client.get_state(proto::StateRequest {})).await??;
    Ok(r.into_inner())
}

/// A bare TLS handshake with the peer port (ALPN h2, as gRPC clients do), then one read. With
/// TLS 1.3 the client's side of the handshake ends before the server has checked the client's
/// certificate: a refusal arrives as an alert on that read. `Ok` means no alert within a second.
async fn peer_handshake(addr: &str, ca: &[u8], identity: Option<&certs::Leaf>) -> Result<(), String> {
    use tokio::io::AsyncReadExt;
    let config = rustls_client(ca, identity, b"h2")?;
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").map_err(|e| e.to_string())?;
    let mut tls =
        tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.map_err(|e| format!("handshake: {e}"))?;
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(1), tls.read(&mut buf)).await {
        Ok(Err(e)) => Err(format!("after the handshake: {e}")),
        Ok(Ok(0)) => Err("closed after the handshake".into()),
        _ => Ok(()),
    }
}

/// A rustls client trusting `ca` (PEM), presenting `identity` if given, offering `alpn`.
fn rustls_client(
    ca: &[u8],
    identity: Option<&certs::Leaf>,
    alpn: &[u8],
) -> Result<std::sync::Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca) {
        roots.add(c.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let mut config = match identity {
        Some(leaf) => {
            let chain = CertificateDer::pem_slice_iter(leaf.cert.as_bytes()).collect::<Result<Vec<_>, _>>();
            let key = PrivateKeyDer::from_pem_slice(leaf.key.as_bytes()).map_err(|e| e.to_string())?;
            builder.with_client_auth_cert(chain.map_err(|e| e.to_string())?, key).map_err(|e| e.to_string())?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(std::sync::Arc::new(config))
}

/// The certificate (DER of the leaf) a server at `addr` presents on a new connection, checked
/// against the CA for 127.0.0.1.
async fn served_cert(addr: &str, ca: &[u8], identity: Option<&certs::Leaf>, alpn: &[u8]) -> anyhow::Result<Vec<u8>> {
    let config = rustls_client(ca, identity, alpn).map_err(anyhow::Error::msg)?;
    let addr = addr.trim_start_matches("https://");
    let tcp = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr)).await??;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?;
    let tls = tokio::time::timeout(Duration::from_secs(5), tokio_rustls::TlsConnector::from(config).connect(name, tcp))
        .await??;
    let chain = tls.get_ref().1.peer_certificates().ok_or_else(|| anyhow::anyhow!("{addr}: no certificate"))?;
    Ok(chain.first().ok_or_else(|| anyhow::anyhow!("{addr}: empty chain"))?.to_vec())
}

/// The DER of the first certificate in a PEM text.
fn der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .and_then(Result::ok)
        .map(|c| c.to_vec())
        .unwrap_or_default()
}

fn read(path: impl AsRef<std::path::Path>) -> Vec<u8> {
    std::fs::read(path.as_ref()).unwrap_or_else(|e| panic!("read {}: {e}", path.as_ref().display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_cluster_fails_over_refuses_strangers_and_hides_secrets() -> anyhow::Result<()> {
    let mut t = TestCluster::prepare_tls(3, 0, TlsSpec::default(), |spec| {
        spec.superuser_password = SUPERUSER_PASSWORD.into();
        spec.api_token = API_TOKEN.into();
        // Debug logs of our own crates: the secrets must not show there either.
        spec.log_level = "pgvigil=debug,vigil_raft=debug,vigil_pg=debug,info".into();
    })?;
    t.cluster.start_all()?;
    t.wait_for("a healthy cluster over TLS", CONVERGE, vigil_tests::healthy).await?;
    let spec = t.spec().clone();
    let primary = t.primary().await?;
    let standby = t.other_pg_members(&primary).remove(0);
    let peer = spec.peer_address(&standby).expect("member");
    let ca_pem = read(spec.ca_file());

    // The peer port: the harness' certificate (from the cluster's CA) is let in ...
    let ours = spec.peer_clients()?;
    let reply = get_state(&ours, &peer).await?;
    assert_eq!(reply.member, standby);
    // ... a client without a certificate is refused,
    let no_cert = PeerClients::with_tls(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca_pem)));
    let refused = get_state(&no_cert, &peer).await;
    assert!(refused.is_err(), "no client certificate: {refused:?}");
    // ... so is one with a certificate from another CA (for the right address),
    let stranger = Ca::new("another CA")?.issue("intruder", &["127.0.0.1"])?;
    let other_ca = PeerClients::with_tls(
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&ca_pem))
            .identity(Identity::from_pem(&stranger.cert, &stranger.key)),
    );
    let refused = get_state(&other_ca, &peer).await;
    assert!(refused.is_err(), "a certificate from another CA: {refused:?}");
    // (the handshake itself fails: the server answers with an alert)
    let (cert, key) = spec.client_cert_files();
    let harness = certs::Leaf { cert: String::from_utf8(read(cert))?, key: String::from_utf8(read(key))? };
    peer_handshake(&peer, &ca_pem, Some(&harness)).await.map_err(anyhow::Error::msg)?;
    let alert = peer_handshake(&peer, &ca_pem, None).await;
    assert!(alert.as_ref().is_err_and(|e| e.contains("CertificateRequired")), "{alert:?}");
    let alert = peer_handshake(&peer, &ca_pem, Some(&stranger)).await;
    assert!(alert.as_ref().is_err_and(|e| e.contains("alert")), "{alert:?}");
    // ... and plain text,
    let refused = get_state(&PeerClients::new(), &peer).await;
    assert!(refused.is_err(), "plain text on the peer port: {refused:?}");
    // ... and a member that does not trust the server's CA does not talk to it.
    let other = Ca::new("yet another CA")?;
    let distrust = PeerClients::with_tls(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(other.pem())));
    assert!(get_state(&distrust, &peer).await.is_err(), "a server certificate from an untrusted CA");

    // The HTTP API over https: trusting the CA is enough (no client certificates asked) ...
    let api = spec.api_address(&standby).expect("member");
    assert!(api.starts_with("https://"), "{api}");
    let with_ca = pgvigil::client::Api::new(&api, Some(pgvigil::tls::client_config(&ca_pem, None)?))?;
    let r = with_ca.get("/replica").await?;
    assert_eq!(r.status, 200, "{r:?}");
    t.wait_http(&primary, "/primary", 200, CONVERGE).await?;
    // ... plain http is refused, and so is a client that does not trust the CA.
    let plain = format!("127.0.0.1:{}", spec.member(&standby).expect("member").api_port);
    let r = pgvigil::client::get(&plain, "/health").await;
    assert!(r.is_err(), "plain http to the https API: {r:?}");
    let untrusting = pgvigil::client::Api::new(&api, Some(pgvigil::tls::client_config(other.pem().as_bytes(), None)?))?;
    let r = untrusting.get("/health").await;
    assert!(r.as_ref().is_err_and(|e| format!("{e:#}").contains("TLS handshake")), "{r:?}");

    // The CLI over https: --cacert, or everything from a member's config file.
    let ca_file = spec.ca_file().display().to_string();
    let config = spec.config_path(&standby).display().to_string();
    let err = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).to_string();
    let out = t.cli(&["list", "--endpoint", &api, "--cacert", &ca_file], "").await?;
    assert!(out.status.success(), "{}", err(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Primary"));
    let out = t.cli(&["list", "--endpoint", &api], "").await?;
    assert!(!out.status.success() && err(&out).contains("--cacert"), "https without a CA: {}", err(&out));
    let out = t.cli(&["pause", "--config", &config, "--force"], "").await?;
    assert!(out.status.success(), "{}", err(&out));
    let out = t.cli(&["resume", "--config", &config, "-o", "json"], "").await?;
    assert!(out.status.success(), "{}", err(&out));
    // The answer to resume means committed; the standby asked may apply it a moment later.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let out = t.cli(&["history", "--config", &config], "").await?;
        if String::from_utf8_lossy(&out.stdout).contains("resumed") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no resume in the history: {}", err(&out));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let out = t.cli(&["list", "--endpoint", &api, "--cacert", "/nonexistent/ca.pem"], "").await?;
    assert_eq!(out.status.code(), Some(64), "{}", err(&out));

    // HAProxy checks /primary over https (check-ssl, verifying the certificate).
    let pg_port = |m: &str| spec.member(m).map_or(0, |m| m.pg_port);
    let ca = spec.ca_file().display().to_string();
    let haproxy = t.haproxy_primary(&format!("check-ssl verify required ca-file {ca}"))?;
    haproxy.wait_routed_to(pg_port(&primary), None, CONVERGE).await?;

    // Failover with TLS on: the primary's host dies, a standby is promoted, the other follows,
    // and HAProxy sends connections to it.
    t.kill_host(&primary);
    let v = t
        .wait_for("a new primary over TLS", CONVERGE, |v| v.state.epoch >= 2 && new_primary_writable(v, &primary))
        .await?;
    let new = v.state.primary.clone().expect("checked");
    t.execute(&new, "CREATE TABLE after_failover (id int)").await?;
    t.wait_http(&new, "/primary", 200, CONVERGE).await?;
    haproxy.wait_routed_to(pg_port(&new), None, CONVERGE).await?;

    // No secret in /config ...
    let r = t.get(&new, "/config").await?;
    assert_eq!(r.status, 200);
    assert_eq!(r.json["postgres"]["replication_password"], "<redacted>");
    assert_eq!(r.json["postgres"]["superuser_password"], "<redacted>");
    assert_eq!(r.json["api"]["token"], "<redacted>");
    assert_eq!(r.json["tls"]["peer_mtls"], true, "{}", r.text);
    // ... nor in any log of the daemons (nor PostgreSQL's), at debug level, through a failover.
    for m in &spec.members {
        for file in ["pgvigil.log", "postgresql.log"] {
            let path = spec.state_dir(&m.name).join(file);
            let log = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(!log.is_empty() || file == "postgresql.log", "{} is empty", path.display());
            for secret in [SUPERUSER_PASSWORD, REPLICATION_PASSWORD, API_TOKEN, "PRIVATE KEY"] {
                let shown: Vec<&str> = log.lines().filter(|l| l.contains(secret)).collect();
                assert!(shown.is_empty(), "{} shows {secret:?}: {shown:#?}", path.display());
            }
        }
        let log = std::fs::read_to_string(spec.state_dir(&m.name).join("pgvigil.log"))?;
        assert!(log.contains("pgvigil started (TLS, mutual on the peer port)"), "{}", m.name);
    }
    assert!(!r.text.contains(SUPERUSER_PASSWORD) && !r.text.contains(API_TOKEN) && !r.text.contains("PRIVATE"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_only_tls_on_the_peer_port_and_client_certificates_on_the_api() -> anyhow::Result<()> {
    let tls = TlsSpec { peer_mtls: false, api: true, api_verify_client: true };
    let t = TestCluster::start_tls(3, 0, tls).await?;
    let spec = t.spec().clone();
    let member = spec.members[0].name.clone();
    let ca_pem = read(spec.ca_file());
    // Without peer_mtls the peer port asks for no client certificate, but it is still TLS.
    let peer = spec.peer_address(&member).expect("member");
    // Then the cluster secret authenticates members: without it the call is refused, with it answered.
    let no_cert = PeerClients::with_tls(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca_pem)));
    let refused = get_state(&no_cert, &peer).await.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(refused.contains("no cluster credential"), "{refused}");
    let pgvigil::launch::PeerAuthSpec::Secret(secret) = &spec.peer_auth else { panic!("a cluster secret") };
    let key = vigil_raft::auth::ClusterKey::parse_file(secret).map_err(anyhow::Error::msg)?;
    let with_secret = no_cert.clone().with_key(std::sync::Arc::new(key));
    assert_eq!(get_state(&with_secret, &peer).await?.member, member);
    assert!(get_state(&PeerClients::new(), &peer).await.is_err(), "plain text");
    // The API verifies clients: the harness' certificate is let in, no certificate is not.
    let api = spec.api_address(&member).expect("member");
    assert_eq!(t.get(&member, "/health").await?.status, 200);
    let anonymous = pgvigil::client::Api::new(&api, Some(pgvigil::tls::client_config(&ca_pem, None)?))?;
    let r = anonymous.get("/health").await;
    assert!(r.is_err(), "no client certificate: {r:?}");
    let stranger = Ca::new("another CA")?.issue("intruder", &["127.0.0.1"])?;
    let config = pgvigil::tls::client_config(&ca_pem, Some((stranger.cert.as_bytes(), stranger.key.as_bytes())))?;
    let r = pgvigil::client::Api::new(&api, Some(config))?.get("/health").await;
    assert!(r.is_err(), "a client certificate from another CA: {r:?}");
    // The CLI presents a certificate with --cert/--key, or the member's own with --config.
    let (cert, key) = spec.client_cert_files();
    let (cert, key, ca) = (cert.display().to_string(), key.display().to_string(), spec.ca_file().display().to_string());
    let out = t.cli(&["list", "--endpoint", &api, "--cacert", &ca, "--cert", &cert, "--key", &key], "").await?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = t.cli(&["list", "--endpoint", &api, "--cacert", &ca], "").await?;
    assert!(!out.status.success(), "no client certificate");
    let config = spec.config_path(&member).display().to_string();
    let out = t.cli(&["list", "--config", &config], "").await?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

fn read_text(path: &str) -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(path)?)
}

/// `pgvigil run` on a file whose `[tls]` table is bad: exit 64, one line naming the key.
#[test]
fn bad_tls_files_exit_64_naming_the_key() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut spec = ClusterSpec::local(dir.path(), &pgvigil_bin(), 2, 0)?;
    spec.tls = Some(TlsSpec::default());
    std::fs::create_dir_all(dir.path().join("pg1"))?;
    let ca = vigil_tests::certs::write_cluster(&spec)?;
    // The cluster secret, for the case without mutual TLS at the end.
    spec.write_secret()?;
    let good = spec.config_text(&spec.members[0])?;
    let path = dir.path().join("pg1").join("pgvigil.toml");
    std::fs::write(&path, &good)?;
    pgvigil::config::load(&path).map_err(|e| anyhow::anyhow!("the good file: {e}"))?;

    let file = |name: &str, text: &str| -> anyhow::Result<String> {
        let p = dir.path().join(name);
        std::fs::write(&p, text)?;
        // Key files are 0600: a key others may read is refused before anything else.
        if name.ends_with("-key.pem") {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))?;
        }
        Ok(p.display().to_string())
    };
    let other_ca = Ca::new("another CA")?.issue("pg1", &["127.0.0.1"])?;
    let wrong_host = ca.issue("pg1", &["10.9.9.9", "elsewhere.example"])?;
    // A certificate without the clientAuth usage cannot be a client under peer_mtls.
    let server_only = {
        let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])?;
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = rcgen::KeyPair::generate()?;
        (ca.sign(&params, &key)?, key.serialize_pem())
    };
    let cert_path = spec.cert_file("pg1").display().to_string();
    let key_path = spec.key_file("pg1").display().to_string();
    let ca_path = spec.ca_file().display().to_string();
    let pg2_key = spec.key_file("pg2").display().to_string();
    let cases: Vec<(&str, String, &str)> = vec![
        ("missing CA file", good.replace(&ca_path, "/nonexistent/ca.pem"), "tls.ca_file"),
        ("CA file not PEM", good.replace(&ca_path, &file("junk.pem", "not a certificate")?), "tls.ca_file"),
        ("missing key file", good.replace(&key_path, "/nonexistent/key.pem"), "tls.key_file"),
        ("key readable by others", good.replace(&key_path, &file("open.pem", &read_text(&key_path)?)?), "tls.key_file"),
        ("key of another member", good.replace(&key_path, &pg2_key), "tls.key_file"),
        ("key file without a key", good.replace(&key_path, &cert_path), "tls.key_file"),
        ("cert file not PEM", good.replace(&cert_path, &file("junk2.pem", "-----BEGIN")?), "tls.cert_file"),
        (
            "cert from another CA",
            good.replace(&cert_path, &file("o.pem", &other_ca.cert)?)
                .replace(&key_path, &file("o-key.pem", &other_ca.key)?),
            "tls.cert_file",
        ),
        (
            "cert for another host",
            good.replace(&cert_path, &file("w.pem", &wrong_host.cert)?)
                .replace(&key_path, &file("w-key.pem", &wrong_host.key)?),
            "tls.cert_file",
        ),
        (
            "server-only cert with peer_mtls",
            good.replace(&cert_path, &file("s.pem", &server_only.0)?)
                .replace(&key_path, &file("s-key.pem", &server_only.1)?),
            "tls.cert_file",
        ),
        ("unknown key", good.replace("peer_mtls =", "colour = 1\npeer_mtls ="), "tls.colour"),
        (
            "API cert without its key",
            good.replace("peer_mtls =", &format!("api_cert_file = {cert_path:?}\npeer_mtls =")),
            "tls.api_key_file",
        ),
    ];
    for (what, text, key) in cases {
        std::fs::write(&path, &text)?;
        let out = Command::new(pgvigil_bin()).arg("run").arg("--config").arg(&path).output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{what}: {stderr}");
        assert!(stderr.contains(&format!("`{key}`")), "{what}: should name {key}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{what}: one line: {stderr}");
    }
    // The same certificate without the clientAuth usage is fine when peers need no client
    // certificates.
    let text = good
        .replace(&cert_path, &file("s.pem", &server_only.0)?)
        .replace(&key_path, &file("s-key.pem", &server_only.1)?)
        .replace("peer_mtls = true", "peer_mtls = false");
    std::fs::write(&path, text)?;
    pgvigil::config::load(&path).map_err(|e| anyhow::anyhow!("server-only certificate without mTLS: {e}"))?;
    Ok(())
}

/// Certificate renewal without a restart: new certificate and key written over one member's files
/// (same CA, new key and serial), SIGHUP: new connections to its API and its peer port get the new
/// certificate, the cluster goes on (and fails over, and a restarted member dials it afresh), the
/// daemon and its PostgreSQL keep their pids. A key others may read, or a certificate from another
/// CA, is refused with the key named and the running certificate stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_renews_certificates_for_new_connections_and_refuses_bad_ones() -> anyhow::Result<()> {
    let mut t = TestCluster::start_tls(3, 0, TlsSpec::default()).await?;
    let spec = t.spec().clone();
    let ca_pem = read(spec.ca_file());
    let (cert, key) = spec.client_cert_files();
    let harness = certs::Leaf { cert: String::from_utf8(read(cert))?, key: String::from_utf8(read(key))? };
    // The coordinator (off the primary's host once settled): every report comes to it.
    let v = t.view().await?;
    let (member, primary) = (v.coordinator.clone(), v.state.primary.clone().expect("settled"));
    let daemon = t.cluster.daemon_pid(&member).expect("running");
    let postmaster = t.postmaster_pid(&member).expect("PostgreSQL runs");
    let api = spec.api_address(&member).expect("member");
    let peer = spec.peer_address(&member).expect("member");
    let log = spec.state_dir(&member).join("pgvigil.log");
    let (cert_file, key_file) = (spec.cert_file(&member), spec.key_file(&member));
    let served = |alpn: &'static [u8]| {
        let (addr, ca, id) = (if alpn == b"h2" { peer.clone() } else { api.clone() }, ca_pem.clone(), &harness);
        async move { served_cert(&addr, &ca, Some(id), alpn).await }
    };
    let old = der(&String::from_utf8(read(&cert_file))?);
    assert_eq!(served(b"http/1.1").await?, old, "the API serves the start-up certificate");
    assert_eq!(served(b"h2").await?, old, "so does the peer port");

    // Renewed: same CA, new key, new serial, same paths.
    let ca = t.ca.as_ref().expect("a TLS cluster has its CA");
    let renewed = ca.issue(&member, &["127.0.0.1", "localhost"])?;
    renewed.write(&cert_file, &key_file)?;
    let new = der(&renewed.cert);
    assert_ne!(new, old);
    let from = log_len(&log);
    t.cluster.signal(&member, Signal::SIGHUP)?;
    let text = wait_log(&log, from, Duration::from_secs(20), |l| l.contains("configuration reloaded")).await?;
    let applied = text.lines().find(|l| l.contains("configuration reloaded")).unwrap_or_default();
    assert!(applied.contains("applied tls.cert_file, tls.key_file"), "{applied}");
    assert!(!text.contains("needs a restart") && !text.contains("refused"), "{text}");
    // New connections get the new certificate on both ports (wait on it, with a deadline).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (a, p) = (served(b"http/1.1").await?, served(b"h2").await?);
        if a == new && p == new {
            break;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "still the old certificate (api {}, peer {})",
            a == old,
            p == old
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A fresh gRPC client is let in; every member answers /cluster (the renewed member's own
    // channels were dropped and dialled again with its new client certificate).
    assert_eq!(get_state(&spec.peer_clients()?, &peer).await?.member, member);
    t.wait_for("a healthy cluster after the renewal", CONVERGE, vigil_tests::healthy).await?;
    for m in &spec.members {
        let r = t.wait_http(&m.name, "/cluster", 200, Duration::from_secs(20)).await?;
        assert!(r.text.contains(&member), "{}: {}", m.name, r.text);
    }

    // Refused: a key others may read, then a certificate from another CA. The key is named, the
    // renewed certificate stays in use.
    let bad = ca.issue(&member, &["127.0.0.1", "localhost"])?;
    let stranger = Ca::new("another CA")?.issue(&member, &["127.0.0.1", "localhost"])?;
    for (what, leaf, open_key, named) in
        [("key mode 0644", &bad, true, "tls.key_file"), ("another CA", &stranger, false, "tls.cert_file")]
    {
        leaf.write(&cert_file, &key_file)?;
        if open_key {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644))?;
        }
        let from = log_len(&log);
        t.cluster.signal(&member, Signal::SIGHUP)?;
        let text = wait_log(&log, from, Duration::from_secs(20), |l| l.contains("refused")).await?;
        let refused = text.lines().find(|l| l.contains("refused")).unwrap_or_default();
        assert!(refused.contains(&format!("`{named}`")), "{what}: the key is named: {refused}");
        assert!(!text.contains("configuration reloaded"), "{what}: {text}");
        assert_eq!(served(b"http/1.1").await?, new, "{what}: the API keeps the renewed certificate");
        assert_eq!(served(b"h2").await?, new, "{what}: so does the peer port");
    }
    // The good files back: nothing changed from what runs.
    renewed.write(&cert_file, &key_file)?;
    let from = log_len(&log);
    t.cluster.signal(&member, Signal::SIGHUP)?;
    wait_log(&log, from, Duration::from_secs(20), |l| l.contains("configuration reloaded: no change")).await?;

    // A failover with the renewed member in it, and the old primary's daemon back: it dials the
    // renewed member afresh (its new server certificate) and rejoins.
    t.kill_host(&primary);
    t.wait_for("a new primary after the renewal", CONVERGE, |v| {
        v.state.epoch >= 2 && new_primary_writable(v, &primary)
    })
    .await?;
    t.cluster.start(&primary)?;
    t.wait_for("the old primary back, healthy", CONVERGE, |v| {
        vigil_tests::healthy(v) && v.reports.get(&primary).is_some_and(|r| r.pg.running)
    })
    .await?;

    assert!(t.cluster.is_running(&member), "the daemon lives on");
    assert_eq!(t.cluster.daemon_pid(&member), Some(daemon));
    assert_eq!(t.postmaster_pid(&member), Some(postmaster), "PostgreSQL was not restarted");
    Ok(())
}
