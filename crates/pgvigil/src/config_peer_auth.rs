//! The `[peer_auth]` table and the peer port's credential it yields (see `vigil_raft::auth`).

use super::{absolute, bad, ConfigError};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;

/// The `[peer_auth]` table. The peer port takes Raft messages, reports and admin requests: with
/// neither a secret nor mutual TLS, anyone who reaches it controls the cluster.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PeerAuthConfig {
    /// The cluster's shared secret, the same file on every member (`pgvigil gen-secret FILE`).
    /// One secret per line: the first signs, every one is accepted (for a rotation).
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// Accept peer requests from anyone: only for a network that nothing else can reach.
    #[serde(default)]
    pub insecure_unauthenticated: bool,
}

/// The peer port's credential: the secret file, read and checked; or mutual TLS; or, when the
/// operator wrote so, nothing.
pub(super) fn peer_key(
    cfg: &PeerAuthConfig,
    tls: Option<&crate::tls::Tls>,
) -> Result<Option<Arc<vigil_raft::auth::ClusterKey>>, ConfigError> {
    const KEY: &str = "peer_auth.secret_file";
    match (&cfg.secret_file, cfg.insecure_unauthenticated) {
        (Some(_), true) => Err(bad(
            "peer_auth.insecure_unauthenticated",
            "is true but peer_auth.secret_file is set too: remove one of them",
        )),
        (Some(path), false) => {
            absolute(KEY, path)?;
            crate::tls::check_key_mode(KEY, path)?;
            let text =
                std::fs::read_to_string(path).map_err(|e| bad(KEY, format!("cannot read {}: {e}", path.display())))?;
            let key = vigil_raft::auth::ClusterKey::parse_file(&text)
                .map_err(|e| bad(KEY, format!("{}: {e}; make one with `pgvigil gen-secret FILE`", path.display())))?;
            Ok(Some(Arc::new(key)))
        }
        (None, true) => Ok(None),
        (None, false) if tls.is_some_and(|t| t.peer_mtls) => Ok(None),
        (None, false) => Err(bad(
            KEY,
            "missing: members must prove to each other that they belong to the cluster. Run \
             `pgvigil gen-secret /etc/pgvigil/cluster.secret`, copy the file to every member (mode 0600) and \
             set peer_auth.secret_file; or use [tls] with peer_mtls = true. (peer_auth.insecure_unauthenticated \
             = true lets anyone who reaches the peer port control the cluster.)",
        )),
    }
}
