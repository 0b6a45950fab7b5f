//! Synchronous replication settings shared by the coordinator and the agents.

use serde::{Deserialize, Serialize};

/// How the cluster uses synchronous replication.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// Asynchronous replication; failover bounded by `maximum_lag_on_failover`.
    #[default]
    Off,
    /// Synchronous while a standby is healthy; degrades to asynchronous (recorded) when none is.
    On,
    /// Synchronous always: with no healthy standby the primary keeps commits waiting.
    Strict,
}

impl SyncMode {
    pub fn is_sync(self) -> bool {
        self != SyncMode::Off
    }
}
