//! The cluster's credential on the peer port: every request carries a MAC made with a secret
//! every member shares ([`ClusterKey`]), and a server wrapped in [`Authenticated`] refuses any
//! request without a valid one before the service sees it.
//!
//! The header is `v1:<unix ms>:<nonce>:<HMAC-SHA256 hex>` over the request's path, the time and
//! the nonce. So a credential seen on the wire is good for that one call only: another path, a
//! time more than [`WINDOW_MS`] away from the receiver's clock, or a nonce it has already seen
//! is refused. The secret itself never travels. What this does not do is hide or protect the
//! body against a man in the middle: that is TLS's job (`[tls]`), and both can be on.
//!
//! Several secrets may be given: the first signs, all verify. That is how a secret is rotated
//! without a window where members refuse each other.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use tonic::codegen::http;
use tonic::codegen::Service;
use tonic::server::NamedService;
use vigil_core::repeats::{Repeats, LOG_EVERY};

/// The metadata key the credential travels in.
pub const HEADER: &str = "x-pgvigil-peer-auth";
/// How far the sender's clock may be from the receiver's. Members' clocks are expected to be
/// NTP-synchronised; a refusal names the difference it saw.
pub const WINDOW_MS: u64 = 120_000;
/// Below this many bytes a secret is refused (`pgvigil gen-secret` writes 32 random bytes as hex).
pub const MIN_SECRET_BYTES: usize = 32;

/// The shared secret(s), ready to sign and verify. `Debug` never shows them.
pub struct ClusterKey {
    /// Non-empty; the first signs.
    keys: Vec<hmac::Key>,
    rng: SystemRandom,
}

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterKey").field("secrets", &self.keys.len()).finish()
    }
}

/// Why a request was refused (the reason goes back to the caller and into the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Missing,
    Malformed,
    WrongSecret,
    /// The sender's clock minus the receiver's, in ms.
    Clock(i64),
    Replayed,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Missing => write!(f, "no cluster credential: the peer port needs the cluster secret"),
            Refusal::Malformed => write!(f, "malformed cluster credential"),
            Refusal::WrongSecret => write!(f, "cluster credential made with another secret"),
            Refusal::Clock(d) => write!(
                f,
                "cluster credential dated {:.1} s from this member's clock (at most {} s allowed): check NTP",
                *d as f64 / 1000.0,
                WINDOW_MS / 1000
            ),
            Refusal::Replayed => write!(f, "cluster credential already used (a replay)"),
        }
    }
}

fn message(path: &str, ms: u64, nonce: &str) -> String {
    format!("pgvigil-peer-v1\n{path}\n{ms}\n{nonce}")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// Wall-clock milliseconds since the epoch (0 before it).
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl ClusterKey {
    /// Secrets as given (the first signs). Each must be at least [`MIN_SECRET_BYTES`] long.
    pub fn new(secrets: &[Vec<u8>]) -> Result<ClusterKey, String> {
        if secrets.is_empty() {
            return Err("no secret".into());
        }
        if let Some(short) = secrets.iter().find(|s| s.len() < MIN_SECRET_BYTES) {
            return Err(format!("a secret of {} bytes; at least {MIN_SECRET_BYTES} are needed", short.len()));
        }
        let keys = secrets.iter().map(|s| hmac::Key::new(hmac::HMAC_SHA256, s)).collect();
        Ok(ClusterKey { keys, rng: SystemRandom::new() })
    }

    /// The secrets of a secret file's text: one per non-empty line, surrounding blanks ignored.
    pub fn parse_file(text: &str) -> Result<ClusterKey, String> {
        let secrets: Vec<Vec<u8>> =
            text.lines().map(str::trim).filter(|l| !l.is_empty()).map(|l| l.as_bytes().to_vec()).collect();
        ClusterKey::new(&secrets)
    }

    /// A new random secret, as a secret file's line.
    pub fn generate() -> Result<String, String> {
        let mut bytes = [0u8; 32];
        SystemRandom::new().fill(&mut bytes).map_err(|_| "no randomness from the system".to_string())?;
        Ok(hex(&bytes))
    }

    /// The credential for one request to `path` at `now_ms` with `nonce` (hex).
    pub fn sign_with(&self, path: &str, now_ms: u64, nonce: &str) -> String {
        let tag = hmac::sign(&self.keys[0], message(path, now_ms, nonce).as_bytes());
        format!("v1:{now_ms}:{nonce}:{}", hex(tag.as_ref()))
    }

    /// The credential for one request to `path`, now, with a fresh random nonce.
    pub fn sign(&self, path: &str) -> String {
        let mut nonce = [0u8; 16];
        // Without randomness (never seen on Linux) the time still makes the MAC unique enough
        // for the receiver; a zero nonce only risks a refusal as a replay.
        let _ = self.rng.fill(&mut nonce);
        self.sign_with(path, now_ms(), &hex(&nonce))
    }

    /// Check `credential` for a request to `path` received at `now_ms`; a good one is recorded
    /// in `seen` so that it is not accepted twice.
    pub fn verify(&self, credential: Option<&str>, path: &str, now_ms: u64, seen: &mut Seen) -> Result<(), Refusal> {
        let credential = credential.ok_or(Refusal::Missing)?;
        let mut parts = credential.split(':');
        let (Some("v1"), Some(ms), Some(nonce), Some(tag), None) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Refusal::Malformed);
        };
        let ms: u64 = ms.parse().map_err(|_| Refusal::Malformed)?;
        if nonce.len() != 32 || unhex(nonce).is_none() {
            return Err(Refusal::Malformed);
        }
        let tag = unhex(tag).ok_or(Refusal::Malformed)?;
        let msg = message(path, ms, nonce);
        if !self.keys.iter().any(|k| hmac::verify(k, msg.as_bytes(), &tag).is_ok()) {
            return Err(Refusal::WrongSecret);
        }
        // Only a credential with a valid MAC gets this far, so nobody without the secret can
        // fill `seen`.
        let skew = i128::from(ms) - i128::from(now_ms);
        if skew.unsigned_abs() > u128::from(WINDOW_MS) {
            return Err(Refusal::Clock(i64::try_from(skew).unwrap_or(i64::MAX)));
        }
        seen.forget_before(now_ms.saturating_sub(WINDOW_MS));
        if !seen.0.insert((ms, nonce.to_string())) {
            return Err(Refusal::Replayed);
        }
        Ok(())
    }
}

/// The credentials accepted within the window, by time: older ones are refused by their time
/// anyway, so the set holds at most the last two windows' worth of requests.
#[derive(Default, Debug)]
pub struct Seen(BTreeSet<(u64, String)>);

impl Seen {
    fn forget_before(&mut self, ms: u64) {
        while self.0.first().is_some_and(|(t, _)| *t < ms) {
            self.0.pop_first();
        }
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A client-side service that adds the credential to every request (none: passes them as they
/// are, for plain peers).
#[derive(Clone, Debug)]
pub struct Signed<S> {
    inner: S,
    key: Option<Arc<ClusterKey>>,
}

impl<S> Signed<S> {
    pub fn new(inner: S, key: Option<Arc<ClusterKey>>) -> Self {
        Signed { inner, key }
    }
}

impl<S, B> Service<http::Request<B>> for Signed<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        if let Some(key) = &self.key {
            let credential = key.sign(req.uri().path());
            if let Ok(value) = http::HeaderValue::from_str(&credential) {
                req.headers_mut().insert(HEADER, value);
            }
        }
        self.inner.call(req)
    }
}

/// What the server side needs: the key, the credentials already seen, and how often refusals
/// were logged.
#[derive(Debug)]
pub struct Guard {
    key: Arc<ClusterKey>,
    seen: Mutex<Seen>,
    /// Refusals by kind: a stranger retrying must not flood the log.
    logged: Mutex<Repeats<&'static str>>,
}

impl Refusal {
    fn kind(&self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::Malformed => "malformed",
            Refusal::WrongSecret => "wrong secret",
            Refusal::Clock(_) => "clock",
            Refusal::Replayed => "replayed",
        }
    }
}

impl Guard {
    pub fn new(key: Arc<ClusterKey>) -> Arc<Guard> {
        Arc::new(Guard { key, seen: Mutex::default(), logged: Mutex::new(Repeats::new(LOG_EVERY)) })
    }

    fn check(&self, credential: Option<&str>, path: &str, now_ms: u64) -> Result<(), Refusal> {
        let result = {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            self.key.verify(credential, path, now_ms, &mut seen)
        };
        if let Err(why) = &result {
            let mut logged = self.logged.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(o) = logged.occurred(std::time::Instant::now(), why.kind()) {
                tracing::warn!(path, suppressed = o.field(), "peer request refused: {why}");
            }
        }
        result
    }
}

/// A server-side service that refuses (gRPC `UNAUTHENTICATED`) every request without a valid
/// credential; with no guard (plain peers, explicitly configured) it lets everything through.
#[derive(Clone, Debug)]
pub struct Authenticated<S> {
    inner: S,
    guard: Option<Arc<Guard>>,
}

impl<S> Authenticated<S> {
    pub fn new(inner: S, guard: Option<Arc<Guard>>) -> Self {
        Authenticated { inner, guard }
    }
}

impl<S: NamedService> NamedService for Authenticated<S> {
    const NAME: &'static str = S::NAME;
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> Service<http::Request<B>> for Authenticated<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if let Some(guard) = &self.guard {
            let credential = req.headers().get(HEADER).and_then(|v| v.to_str().ok());
            if let Err(why) = guard.check(credential, req.uri().path(), now_ms()) {
                let refused = tonic::Status::unauthenticated(why.to_string()).into_http();
                return Box::pin(std::future::ready(Ok(refused)));
            }
        }
        Box::pin(self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONCE: &str = "00112233445566778899aabbccddeeff";

    fn key(secret: &str) -> ClusterKey {
        ClusterKey::parse_file(secret).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_credential_is_good_once_for_its_path_and_time() {
        let k = key("0123456789abcdef0123456789abcdef");
        let mut seen = Seen::default();
        let c = k.sign_with("/vigil.Peer/Raft", 1_000_000, NONCE);
        assert_eq!(k.verify(Some(&c), "/vigil.Peer/Raft", 1_000_500, &mut seen), Ok(()));
        assert_eq!(k.verify(Some(&c), "/vigil.Peer/Raft", 1_000_600, &mut seen), Err(Refusal::Replayed));
        let c2 = k.sign_with("/vigil.Peer/Raft", 1_000_000, "ffffffffffffffffffffffffffffffff");
        assert_eq!(k.verify(Some(&c2), "/vigil.Peer/Admin", 1_000_000, &mut seen), Err(Refusal::WrongSecret));
        assert_eq!(k.verify(None, "/vigil.Peer/Raft", 1_000_000, &mut seen), Err(Refusal::Missing));
    }

    #[test]
    fn clocks_further_apart_than_the_window_are_named() {
        let k = key("0123456789abcdef0123456789abcdef");
        let c = k.sign_with("/p", 1_000_000, NONCE);
        let late = 1_000_000 + WINDOW_MS + 1;
        assert_eq!(k.verify(Some(&c), "/p", late, &mut Seen::default()), Err(Refusal::Clock(-(WINDOW_MS as i64) - 1)));
        let refusal = Refusal::Clock(-125_000).to_string();
        assert!(refusal.contains("-125.0 s") && refusal.contains("NTP"), "{refusal}");
    }

    #[test]
    fn another_secret_or_a_garbled_credential_is_refused() {
        let k = key("0123456789abcdef0123456789abcdef");
        let other = key("fedcba9876543210fedcba9876543210");
        let c = other.sign_with("/p", 5, NONCE);
        let mut seen = Seen::default();
        assert_eq!(k.verify(Some(&c), "/p", 5, &mut seen), Err(Refusal::WrongSecret));
        for bad in ["", "v1", "v2:5:00:00", "v1:x:00:00", "v1:5:zz:00", "v1:5:00112233:00", &format!("{c}:extra")] {
            assert_eq!(k.verify(Some(bad), "/p", 5, &mut seen), Err(Refusal::Malformed), "{bad:?}");
        }
        assert!(seen.is_empty(), "nothing unauthenticated is remembered");
    }

    #[test]
    fn during_a_rotation_the_first_secret_signs_and_every_one_verifies() {
        let (old, new) = ("0123456789abcdef0123456789abcdef", "fedcba9876543210fedcba9876543210");
        let both = key(&format!("{new}\n{old}\n"));
        let mut seen = Seen::default();
        assert_eq!(both.verify(Some(&key(old).sign_with("/p", 9, NONCE)), "/p", 9, &mut seen), Ok(()));
        assert_eq!(key(new).verify(Some(&both.sign("/p")), "/p", now_ms(), &mut seen), Ok(()));
    }

    #[test]
    fn short_or_missing_secrets_are_refused() {
        assert!(ClusterKey::parse_file("\n  \n").is_err());
        assert!(ClusterKey::parse_file("short").is_err());
        let generated = ClusterKey::generate().unwrap_or_default();
        assert_eq!(generated.len(), 64);
        assert!(ClusterKey::parse_file(&generated).is_ok());
    }

    #[test]
    fn seen_credentials_are_forgotten_once_their_time_is_out_of_the_window() {
        let k = key("0123456789abcdef0123456789abcdef");
        let mut seen = Seen::default();
        for i in 0..100u64 {
            let c = k.sign_with("/p", i * 10_000, &format!("{i:032x}"));
            assert_eq!(k.verify(Some(&c), "/p", i * 10_000, &mut seen), Ok(()));
        }
        // 100 requests over 990 s; only those of the last two minutes are kept.
        assert!(seen.len() <= (WINDOW_MS / 10_000 + 1) as usize, "{}", seen.len());
    }
}
