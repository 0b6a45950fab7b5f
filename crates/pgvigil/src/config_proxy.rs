//! The `[proxy]` table: the routing proxy's ports, how long a new read-write session may be
//! held, the read-only pool's lag bounds, the sockets' timeouts and who may send a PROXY protocol
//! header (`crate::proxy`).

use super::{bad, duration_opt, ConfigError};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use vigil_core::proxy_header::Cidr;

/// The `[proxy]` table: a read-write and a read-only port routed by what this member knows.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// The IP address both ports listen on.
    pub listen_address: String,
    /// Reaches the primary, while it holds its lease.
    pub rw_port: u16,
    /// Reaches the standbys within the lag bounds.
    pub ro_port: u16,
    /// How long a new read-write session waits for a primary that may write.
    #[serde(default, deserialize_with = "duration_opt")]
    pub hold_timeout: Option<Duration>,
    /// Read-only: a standby further behind the primary (bytes of WAL replayed) leaves the pool.
    #[serde(default = "default_max_lag_bytes")]
    pub max_lag_bytes: u64,
    /// Read-only: a standby whose replay position the primary passed longer ago leaves the pool.
    #[serde(default, deserialize_with = "duration_opt")]
    pub max_lag_time: Option<Duration>,
    /// Read-only sessions when no standby qualifies: to the primary, or refused.
    #[serde(default)]
    pub no_standby: NoStandbyConfig,
    /// Both legs of every session: TCP_USER_TIMEOUT and keepalives that give up after this.
    #[serde(default, deserialize_with = "duration_opt")]
    pub dead_peer_timeout: Option<Duration>,
    /// How long connecting to a backend may take.
    #[serde(default, deserialize_with = "duration_opt")]
    pub connect_timeout: Option<Duration>,
    /// At most this many sessions through this proxy to one backend (both ports); 0: no limit.
    #[serde(default)]
    pub max_sessions_per_backend: u32,
    /// How long a new session waits in the queue for a backend below the limit.
    #[serde(default, deserialize_with = "duration_opt")]
    pub queue_timeout: Option<Duration>,
    /// Networks (CIDR) whose connections must start with a PROXY protocol header (v1 or v2),
    /// whose client address then stands for the connection's; empty: no PROXY protocol.
    #[serde(default)]
    pub proxy_protocol_from: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NoStandbyConfig {
    #[default]
    Primary,
    Refuse,
}

/// PostgreSQL's own ceiling on `max_connections` (`MAX_BACKENDS`, 2^18 - 1).
const MAX_SESSIONS_PER_BACKEND: u32 = 262_143;

fn default_max_lag_bytes() -> u64 {
    16 << 20
}

impl ProxyConfig {
    pub fn hold_timeout(&self) -> Duration {
        self.hold_timeout.unwrap_or(Duration::from_secs(30))
    }
    pub fn max_lag_time(&self) -> Duration {
        self.max_lag_time.unwrap_or(Duration::from_secs(10))
    }
    pub fn dead_peer_timeout(&self) -> Duration {
        self.dead_peer_timeout.unwrap_or(Duration::from_secs(10))
    }
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout.unwrap_or(Duration::from_secs(2))
    }
    pub fn queue_timeout(&self) -> Duration {
        self.queue_timeout.unwrap_or(Duration::from_secs(5))
    }
    /// The networks trusted to send a PROXY protocol header (checked by [`check`]).
    pub fn proxy_protocol_from(&self) -> Vec<Cidr> {
        self.proxy_protocol_from.iter().filter_map(|c| c.parse().ok()).collect()
    }
    /// The limit of sessions per backend, if there is one.
    pub fn max_sessions(&self) -> Option<usize> {
        (self.max_sessions_per_backend > 0).then_some(self.max_sessions_per_backend as usize)
    }
}

/// The `[proxy]` table's values, each refused naming its key.
pub(super) fn check(p: &ProxyConfig) -> Result<(), ConfigError> {
    if p.listen_address.parse::<std::net::IpAddr>().is_err() {
        return Err(bad("proxy.listen_address", format!("{:?} is not an IP address", p.listen_address)));
    }
    if p.rw_port == 0 {
        return Err(bad("proxy.rw_port", "must not be 0"));
    }
    if p.ro_port == 0 {
        return Err(bad("proxy.ro_port", "must not be 0"));
    }
    if p.rw_port == p.ro_port {
        return Err(bad("proxy.ro_port", format!("{} is also proxy.rw_port", p.ro_port)));
    }
    for (key, d) in [
        ("proxy.hold_timeout", p.hold_timeout),
        ("proxy.max_lag_time", p.max_lag_time),
        ("proxy.dead_peer_timeout", p.dead_peer_timeout),
        ("proxy.connect_timeout", p.connect_timeout),
        ("proxy.queue_timeout", p.queue_timeout),
    ] {
        if d.is_some_and(|d| d.is_zero() || d > vigil_core::MAX_TIMING) {
            return Err(bad(key, format!("must be more than 0 and at most {:?}", vigil_core::MAX_TIMING)));
        }
    }
    if p.max_sessions_per_backend > MAX_SESSIONS_PER_BACKEND {
        return Err(bad(
            "proxy.max_sessions_per_backend",
            format!("{} is more than {MAX_SESSIONS_PER_BACKEND} (0: no limit)", p.max_sessions_per_backend),
        ));
    }
    for c in &p.proxy_protocol_from {
        if let Err(e) = c.parse::<Cidr>() {
            return Err(bad("proxy.proxy_protocol_from", format!("{e}; write networks such as \"10.0.0.0/8\"")));
        }
    }
    if p.dead_peer_timeout.is_some_and(|d| d < Duration::from_secs(1)) {
        return Err(bad("proxy.dead_peer_timeout", "must be at least 1s (keepalives are counted in seconds)"));
    }
    Ok(())
}
