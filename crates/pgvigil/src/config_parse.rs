//! Reading a config text: strict TOML (a string is never a boolean or a number), then the
//! `PGVIGIL_*` environment overrides, each parsed as the type of its key.

use super::{bad, Config, ConfigError};
use serde_path_to_error::Segment;

/// Parse a TOML text strictly (a string is never taken for a boolean or a number), then apply
/// environment overrides (`PGVIGIL_A__B=value`), which are strings by nature and are parsed as the
/// type of their key ([`ENV_BOOL_KEYS`], [`ENV_INTEGER_KEYS`], everything else a string).
pub fn parse(text: &str, env: Vec<(String, String)>) -> Result<Config, ConfigError> {
    let mut table: toml::Table = toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| text[..s.start.min(text.len())].lines().count().max(1));
        let at = line.map(|l| format!(" (line {l})")).unwrap_or_default();
        bad("(file)", format!("not valid TOML{at}: {}", e.message().split_whitespace().collect::<Vec<_>>().join(" ")))
    })?;
    for (var, value) in env {
        apply_env(&mut table, &var, &value)?;
    }
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        // One line: toml's own text adds the key's location on lines of their own.
        let message = e.inner().message().split_whitespace().collect::<Vec<_>>().join(" ");
        let mut key = String::new();
        for segment in e.path() {
            match segment {
                Segment::Seq { index } => key.push_str(&format!("[{index}]")),
                Segment::Map { key: name } | Segment::Enum { variant: name } => push_name(&mut key, name),
                Segment::Unknown => push_name(&mut key, "?"),
            }
        }
        // A missing field is reported at its table, an unknown one at itself: name the field once.
        let field = ["missing field `", "unknown field `"]
            .iter()
            .find_map(|p| message.strip_prefix(p))
            .and_then(|r| r.split('`').next());
        let at_field = matches!(e.path().iter().next_back(), Some(Segment::Map { key }) if Some(key.as_str()) == field);
        if let Some(f) = field.filter(|_| !at_field) {
            push_name(&mut key, f);
        }
        if key.is_empty() {
            key = "(file)".into();
        }
        bad(key, message)
    })
}

/// Appends a key's name to a dotted key as TOML writes it: bare when it can be, else quoted
/// (`timing."lease timeout"`, `"."`, `""`).
fn push_name(key: &mut String, name: &str) {
    if !key.is_empty() {
        key.push('.');
    }
    let bare = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'-';
    if name == "?" || (!name.is_empty() && name.bytes().all(bare)) {
        key.push_str(name);
    } else {
        key.push_str(&format!("{name:?}"));
    }
}

/// Keys whose environment override is a boolean (`true`/`false`, also `yes`/`no`, `on`/`off`, `1`/`0`).
/// The tags the rules read are typed too (`vigil_core::tags::KNOWN`); other tags are strings.
pub const ENV_BOOL_KEYS: &[&str] = &[
    "tls.peer_mtls",
    "tls.api",
    "tls.api_verify_client",
    "peer_auth.insecure_unauthenticated",
    "backup.clone_from_repo",
];
/// Keys whose environment override is an integer.
pub const ENV_INTEGER_KEYS: &[&str] = &[
    "postgres.port",
    "postgres.keep_moved_data_dirs",
    "timing.election_ticks",
    "timing.heartbeat_ticks",
    "timing.maximum_lag_on_failover",
    "replication.synchronous_node_count",
    "backup.retention_full",
    "backup.retention_diff",
    "backup.server_port",
    "proxy.rw_port",
    "proxy.ro_port",
    "proxy.max_lag_bytes",
    "proxy.max_sessions_per_backend",
];

/// Set the key of `PGVIGIL_A__B` (`a.b`) in `table` to `value`, parsed as that key's type.
fn apply_env(table: &mut toml::Table, var: &str, value: &str) -> Result<(), ConfigError> {
    let name = var.strip_prefix("PGVIGIL_").unwrap_or(var).to_lowercase();
    let parts: Vec<&str> = name.split("__").collect();
    let key = parts.join(".");
    if parts.iter().any(|p| p.is_empty()) {
        // No key to name (`PGVIGIL_`, `PGVIGIL_A____B`): the variable is what is wrong.
        return Err(bad(var, format!("{var:?} does not name a key (nested keys are joined by __)")));
    }
    use vigil_core::tags::{Kind, KNOWN};
    let tag = key.strip_prefix("tags.").and_then(|t| KNOWN.iter().find(|(k, _)| *k == t)).map(|(_, kind)| *kind);
    let typed = if ENV_BOOL_KEYS.contains(&key.as_str()) || tag == Some(Kind::Bool) {
        match value.trim().to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "1" => toml::Value::Boolean(true),
            "false" | "no" | "off" | "0" => toml::Value::Boolean(false),
            _ => return Err(bad(key, format!("{var}={value:?} is not a boolean (true or false)"))),
        }
    } else if ENV_INTEGER_KEYS.contains(&key.as_str()) || tag == Some(Kind::Integer) {
        match value.trim().parse::<i64>() {
            Ok(n) => toml::Value::Integer(n),
            Err(_) => return Err(bad(key, format!("{var}={value:?} is not an integer"))),
        }
    } else {
        toml::Value::String(value.to_string())
    };
    let (last, parents) = parts.split_last().ok_or_else(|| bad(key.clone(), "empty key"))?;
    let mut here = table;
    for (i, p) in parents.iter().enumerate() {
        let entry = here.entry(p.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        here = match entry {
            toml::Value::Table(t) => t,
            _ => return Err(bad(parts[..=i].join("."), format!("{var} sets a key inside it, but it is not a table"))),
        };
    }
    here.insert(last.to_string(), typed);
    Ok(())
}

/// Environment variables the command line reads for itself; they are not config keys.
pub const CLI_VARIABLES: &[&str] = &[
    "PGVIGIL_PEER",
    "PGVIGIL_BIN",
    "PGVIGIL_ENDPOINT",
    "PGVIGIL_TOKEN",
    "PGVIGIL_CACERT",
    "PGVIGIL_CERT",
    "PGVIGIL_KEY",
];

/// The `PGVIGIL_*` variables that override config keys, sorted (the result does not depend on the
/// order of the environment).
pub(super) fn env_overrides() -> Vec<(String, String)> {
    let mut vars: Vec<(String, String)> =
        std::env::vars().filter(|(k, _)| k.starts_with("PGVIGIL_") && !CLI_VARIABLES.contains(&k.as_str())).collect();
    vars.sort();
    vars
}
