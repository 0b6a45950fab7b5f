//! `[timing]`: every key optional, the defaults from [`Timings::default`], and which keys a
//! broken timing rule names.

use super::{bad, duration_opt, ConfigError};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use vigil_core::Timings;

/// Every timing key; absent ones take [`Timings::default`].
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TimingConfig {
    #[serde(default, deserialize_with = "duration_opt")]
    pub loop_interval: Option<Duration>,
    #[serde(default, deserialize_with = "duration_opt")]
    pub lease_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration_opt")]
    pub lease_margin: Option<Duration>,
    #[serde(default, deserialize_with = "duration_opt")]
    pub pg_restart_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration_opt")]
    pub pg_unresponsive_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration_opt")]
    pub report_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration_opt")]
    pub bootstrap_wait: Option<Duration>,
    #[serde(default, deserialize_with = "duration_opt")]
    pub raft_tick: Option<Duration>,
    #[serde(default)]
    pub election_ticks: Option<u32>,
    #[serde(default)]
    pub heartbeat_ticks: Option<u32>,
    #[serde(default)]
    pub maximum_lag_on_failover: Option<u64>,
    #[serde(default, deserialize_with = "duration_opt")]
    pub switchover_timeout: Option<Duration>,
}

/// The config key of a broken timing rule: the keys of the rule the user set (in the file or the
/// environment), the first named and the others after "with"; if none of them was set, the rule's
/// own key.
fn timing_key(t: &TimingConfig, e: &vigil_core::TimingError) -> String {
    let set: Vec<&str> = std::iter::once(e.key).chain(e.with.iter().copied()).filter(|k| t.is_set(k)).collect();
    match set.split_first() {
        None => format!("timing.{}", e.key),
        Some((first, [])) => format!("timing.{first}"),
        Some((first, rest)) => {
            let others: Vec<String> = rest.iter().map(|k| format!("timing.{k}")).collect();
            format!("timing.{first} (with {})", others.join(", "))
        }
    }
}

impl TimingConfig {
    /// The timings in effect: each key given, or its default; a broken rule names the keys the
    /// user set.
    pub(super) fn resolve(&self) -> Result<Timings, ConfigError> {
        let (t, d) = (self, Timings::default());
        let timings = Timings {
            loop_interval: t.loop_interval.unwrap_or(d.loop_interval),
            lease_timeout: t.lease_timeout.unwrap_or(d.lease_timeout),
            lease_margin: t.lease_margin.unwrap_or(d.lease_margin),
            pg_restart_timeout: t.pg_restart_timeout.unwrap_or(d.pg_restart_timeout),
            pg_unresponsive_timeout: t.pg_unresponsive_timeout.unwrap_or(d.pg_unresponsive_timeout),
            report_timeout: t.report_timeout.unwrap_or(d.report_timeout),
            bootstrap_wait: t.bootstrap_wait.unwrap_or(d.bootstrap_wait),
            raft_tick: t.raft_tick.unwrap_or(d.raft_tick),
            election_ticks: t.election_ticks.unwrap_or(d.election_ticks),
            heartbeat_ticks: t.heartbeat_ticks.unwrap_or(d.heartbeat_ticks),
            maximum_lag_on_failover: t.maximum_lag_on_failover.unwrap_or(d.maximum_lag_on_failover),
            switchover_timeout: t.switchover_timeout.unwrap_or(d.switchover_timeout),
        };
        timings.validate().map_err(|e| bad(timing_key(self, &e), e.message))?;
        Ok(timings)
    }

    /// Whether the key (e.g. `lease_timeout`) was given, in the file or the environment.
    fn is_set(&self, key: &str) -> bool {
        match key {
            "loop_interval" => self.loop_interval.is_some(),
            "lease_timeout" => self.lease_timeout.is_some(),
            "lease_margin" => self.lease_margin.is_some(),
            "pg_restart_timeout" => self.pg_restart_timeout.is_some(),
            "pg_unresponsive_timeout" => self.pg_unresponsive_timeout.is_some(),
            "report_timeout" => self.report_timeout.is_some(),
            "bootstrap_wait" => self.bootstrap_wait.is_some(),
            "raft_tick" => self.raft_tick.is_some(),
            "election_ticks" => self.election_ticks.is_some(),
            "heartbeat_ticks" => self.heartbeat_ticks.is_some(),
            "maximum_lag_on_failover" => self.maximum_lag_on_failover.is_some(),
            "switchover_timeout" => self.switchover_timeout.is_some(),
            _ => false,
        }
    }
}
