//! The config loader (`config::parse`, then `config::check` as at start-up, without the look at
//! the PostgreSQL installation): arbitrary text, a valid file with its text damaged, the same
//! file with values of the wrong type or out of range, unknown and duplicate keys, duplicate
//! members, durations up to the largest humantime reads, odd API tokens, and `PGVIGIL_*`
//! overrides. Properties: never a panic; every error names a key, or says the file is not TOML;
//! an API token the loader takes is one a request can present.

use super::mutate;
use super::Outcome;
use axum::http::{header::AUTHORIZATION, HeaderMap, HeaderValue};
use pgvigil::config;
use pgvigil::http_api::authorize;
use proptest::collection::vec;
use proptest::prelude::*;
use serde_json::Value;

/// A config the loader accepts (no file is read: the secrets are inline, no `[tls]`).
pub const VALID: &str = r#"
name = "a"
state_dir = "/var/lib/pgvigil"
listen = "127.0.0.1:7001"
members = [
  { name = "a", address = "127.0.0.1:7001" },
  { name = "b", address = "127.0.0.1:7002" },
  { name = "w", address = "127.0.0.1:7003" },
]

[peer_auth]
insecure_unauthenticated = true

[postgres]
data_dir = "/var/lib/pgvigil/data"
listen_address = "127.0.0.1"
port = 5432
replication_password = "secret"
hba_extra = ["host all all 10.0.0.0/8 scram-sha-256"]
parameters = { max_connections = "100" }

[tags]
priority = 1

[timing]
loop_interval = "250ms"
lease_timeout = "2s"
switchover_timeout = "15s"

[replication]
synchronous_mode = "on"
preferred_primary = "a"

[log]
level = "pgvigil=debug,info"

[api]
listen = "127.0.0.1:8001"
token = "t0ken"

[hooks]
on_failover = ["/usr/local/bin/notify", "failover"]
timeout = "10s"

[stop]
mode = "switchover"
"#;

/// Every key name of the file (a table's or a value's), for edits that add keys.
const KEYS: &[&str] = &[
    "name",
    "kind",
    "state_dir",
    "listen",
    "members",
    "address",
    "postgres",
    "bin_dir",
    "data_dir",
    "listen_address",
    "port",
    "socket_dir",
    "run_as",
    "superuser",
    "superuser_password",
    "replication_user",
    "replication_password",
    "log_file",
    "hba_extra",
    "replication_networks",
    "parameters",
    "keep_moved_data_dirs",
    "tags",
    "nofailover",
    "priority",
    "timing",
    "loop_interval",
    "lease_timeout",
    "lease_margin",
    "pg_restart_timeout",
    "pg_unresponsive_timeout",
    "report_timeout",
    "bootstrap_wait",
    "raft_tick",
    "election_ticks",
    "heartbeat_ticks",
    "maximum_lag_on_failover",
    "switchover_timeout",
    "replication",
    "synchronous_mode",
    "synchronous_node_count",
    "preferred_primary",
    "log",
    "format",
    "level",
    "api",
    "token",
    "tls",
    "peer_mtls",
    "api_verify_client",
    "hooks",
    "on_role_change",
    "on_failover",
    "on_switchover",
    "on_fence",
    "timeout",
    "stop",
    "mode",
];

/// Keys the environment overrides, as `PGVIGIL_` variables name them.
const ENV_KEYS: &[&str] = &[
    "NAME",
    "KIND",
    "LISTEN",
    "STATE_DIR",
    "MEMBERS",
    "POSTGRES__PORT",
    "POSTGRES__DATA_DIR",
    "POSTGRES__KEEP_MOVED_DATA_DIRS",
    "TAGS__PRIORITY",
    "TAGS__NOFAILOVER",
    "TIMING__LOOP_INTERVAL",
    "TIMING__LEASE_TIMEOUT",
    "TIMING__ELECTION_TICKS",
    "TIMING__HEARTBEAT_TICKS",
    "TIMING__MAXIMUM_LAG_ON_FAILOVER",
    "REPLICATION__SYNCHRONOUS_NODE_COUNT",
    "LOG__LEVEL",
    "API__TOKEN",
    "API__LISTEN",
    "TLS__PEER_MTLS",
    "HOOKS__TIMEOUT",
    "STOP__MODE",
    "POSTGRES",
    "TIMING__",
    "__",
    "NAME__X",
    "POSTGRES__PORT__X",
];

#[derive(Clone, Debug)]
pub struct ConfigInput {
    pub text: String,
    pub env: Vec<(String, String)>,
}

pub fn input() -> impl Strategy<Value = ConfigInput> {
    let text = prop_oneof![
        1 => any::<String>(),
        1 => vec(prop::sample::select(b"[]{}=\"'.,#\n abc019-_:".to_vec()), 0..200)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        3 => mutate::edits().prop_map(|e| mutate::apply_text(VALID, &e)),
        6 => vec(mutate::json_edit(KEYS), 1..5).prop_map(|e| edited(|v| mutate::apply_json(v, &e))),
        2 => (prop::sample::select(DURATION_KEYS), duration()).prop_map(|((table, key), d)| edited(|v| v[table][key] = d.into())),
        1 => mutate::odd_text().prop_map(|t| edited(|v| v["api"]["token"] = t.into())),
    ];
    // The daemon passes the variables that start with `PGVIGIL_` (less the command line's own).
    let var = prop_oneof![4 => prop::sample::select(ENV_KEYS).prop_map(String::from), 1 => mutate::odd_text()]
        .prop_map(|k| format!("PGVIGIL_{k}"));
    let value = prop_oneof![mutate::odd_text(), mutate::odd_integer().prop_map(|n| n.to_string())];
    let env = prop_oneof![3 => Just(Vec::new()), 1 => vec((var, value), 1..3)];
    (text, env).prop_map(|(text, env)| ConfigInput { text, env })
}

/// Every duration key, by table.
const DURATION_KEYS: &[(&str, &str)] = &[
    ("timing", "loop_interval"),
    ("timing", "lease_timeout"),
    ("timing", "lease_margin"),
    ("timing", "pg_restart_timeout"),
    ("timing", "pg_unresponsive_timeout"),
    ("timing", "report_timeout"),
    ("timing", "bootstrap_wait"),
    ("timing", "raft_tick"),
    ("timing", "switchover_timeout"),
    ("hooks", "timeout"),
];

/// Durations as humantime reads them, up to its largest and beyond.
fn duration() -> impl Strategy<Value = String> {
    let unit = prop::sample::select(vec!["ns", "us", "ms", "s", "m", "h", "d", "w", "months", "y", "years", ""]);
    prop_oneof![
        (any::<u64>(), unit.clone()).prop_map(|(n, u)| format!("{n}{u}")),
        (0..100_000u64, unit).prop_map(|(n, u)| format!("{n}{u}")),
        prop::sample::select(vec![
            "0s",
            "1ns",
            "18446744073709551615s",
            "500000000000years",
            "584542046090years 7months"
        ])
        .prop_map(String::from),
    ]
}

/// [`VALID`] with its values edited as JSON, written back as TOML.
fn edited(edit: impl FnOnce(&mut Value)) -> String {
    let table: toml::Table = toml::from_str(VALID).unwrap_or_default();
    let mut v = serde_json::to_value(&table).unwrap_or_default();
    edit(&mut v);
    match to_toml(v) {
        Some(toml::Value::Table(t)) => toml::to_string(&t).unwrap_or_default(),
        _ => String::new(),
    }
}

/// TOML has no null (the key is left out) and no integer above i64 (it becomes a float).
fn to_toml(v: Value) -> Option<toml::Value> {
    Some(match v {
        Value::Null => return None,
        Value::Bool(b) => toml::Value::Boolean(b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => toml::Value::Integer(i),
            None => toml::Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => toml::Value::String(s),
        Value::Array(a) => toml::Value::Array(a.into_iter().filter_map(to_toml).collect()),
        Value::Object(o) => toml::Value::Table(o.into_iter().filter_map(|(k, v)| Some((k, to_toml(v)?))).collect()),
    })
}

pub fn check(input: &ConfigInput) -> Outcome {
    match config::parse(&input.text, input.env.clone()).and_then(config::check) {
        Ok(settings) => {
            // A token the loader takes must be one a request can carry.
            if let Some(token) = settings.api_token.as_ref().map(|t| t.0.as_str()) {
                let header = HeaderValue::from_str(&format!("Bearer {token}"));
                let headers = header.map(|h| HeaderMap::from_iter([(AUTHORIZATION, h)])).unwrap_or_default();
                assert!(
                    authorize(Some(token), &headers).is_ok(),
                    "api.token {token:?} taken, and no request can match it"
                );
            }
            Outcome::Accepted
        }
        Err(e) => {
            // A key may be blank (`PGVIGIL_ =1` sets the key " "), never empty.
            assert!(!e.key.is_empty() && !e.message.trim().is_empty(), "an error without key or message: {e:?}");
            assert!(e.key != "(file)" || e.message.starts_with("not valid TOML"), "an error that names no key: {e}");
            Outcome::Rejected
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_valid_config_is_valid_also_after_a_round_trip() {
        let valid = ConfigInput { text: VALID.into(), env: Vec::new() };
        assert_eq!(check(&valid), Outcome::Accepted);
        assert_eq!(check(&ConfigInput { text: edited(|_| {}), env: Vec::new() }), Outcome::Accepted);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        #[test]
        fn config_never_panics_and_errors_name_a_key(input in input()) {
            check(&input);
        }
    }
}
