//! The daemon's configuration: TOML plus `PGVIGIL_` environment overrides, checked at start.
//!
//! Every problem is reported as one [`ConfigError`] naming the key; `main` prints it and exits 64.

use serde::{Deserialize, Deserializer, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use vigil_core::{MemberKind, SyncMode, Timings};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "config key `{}`: {}", self.key, self.message)
    }
}

impl std::error::Error for ConfigError {}

fn bad(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError { key: key.into(), message: message.into() }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This member's name; must appear in `members`.
    pub name: String,
    #[serde(default)]
    pub kind: MemberKind,
    /// Raft log, local memory, PostgreSQL log and socket live here.
    pub state_dir: PathBuf,
    /// Where the peer gRPC server listens, e.g. "0.0.0.0:7000".
    pub listen: String,
    /// Every member of the cluster, this one included, with its peer gRPC address (host:port).
    pub members: Vec<MemberEntry>,
    #[serde(default)]
    pub postgres: Option<PostgresConfig>,
    #[serde(default)]
    pub tags: TagTable,
    #[serde(default)]
    pub timing: TimingConfig,
    #[serde(default)]
    pub replication: ReplicationConfig,
    #[serde(default)]
    pub log: LogConfig,
    /// The HTTP API (health checks, cluster view, pause/resume, metrics). None: no HTTP API.
    #[serde(default)]
    pub api: Option<ApiConfig>,
    /// Transport security for the peer port and the HTTP API. None: plain text.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Commands run on events (role change, failover, switchover, fence).
    #[serde(default)]
    pub hooks: HooksConfig,
    /// What stopping the daemon (SIGTERM, SIGINT) does to this member's PostgreSQL.
    #[serde(default)]
    pub stop: StopConfig,
    /// How members prove to each other that they belong to the cluster.
    #[serde(default)]
    pub peer_auth: PeerAuthConfig,
    /// pgBackRest archiving and backups. None: no archiving, no backups.
    #[serde(default)]
    pub backup: Option<BackupConfig>,
    /// The routing proxy (read-write and read-only ports). None: no proxy.
    #[serde(default)]
    pub proxy: Option<ProxyConfig>,
}

/// The `[stop]` table.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StopConfig {
    #[serde(default)]
    pub mode: StopModeConfig,
}

/// What a stop of the daemon does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StopModeConfig {
    /// The primary hands over first (a planned switchover to a healthy standby, bounded by
    /// `timing.switchover_timeout`), then PostgreSQL is stopped cleanly. Standbys stop cleanly.
    #[default]
    Switchover,
    /// PostgreSQL is stopped cleanly at once (a primary's stop then costs a failover).
    StopPostgres,
    /// PostgreSQL keeps running under its keeper, for a quick restart of the daemon (an upgrade):
    /// a standby runs on, a primary runs until its lease runs out unless the daemon is back first.
    LeavePostgres,
}

/// The `[hooks]` table: commands run in the background when something happens to this member.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct HooksConfig {
    /// This member's PostgreSQL became primary or replica.
    #[serde(default)]
    pub on_role_change: Option<HookCommand>,
    /// This member became the primary through a failover (automatic or forced).
    #[serde(default)]
    pub on_failover: Option<HookCommand>,
    /// This member became the primary through a planned switchover.
    #[serde(default)]
    pub on_switchover: Option<HookCommand>,
    /// This member's PostgreSQL was fenced (immediate shutdown).
    #[serde(default)]
    pub on_fence: Option<HookCommand>,
    /// A backup this member ran ended (`PGVIGIL_REASON` says how).
    #[serde(default)]
    pub on_backup: Option<HookCommand>,
    /// How long a hook may run before it is killed.
    #[serde(default, deserialize_with = "duration_opt")]
    pub timeout: Option<Duration>,
}

/// A hook: a command line for `/bin/sh -c`, or a program and its arguments.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum HookCommand {
    Shell(String),
    Argv(Vec<String>),
}

/// The `[tls]` table. Files are PEM; they are read at start-up and again on SIGHUP.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The CA certificate(s) every member's certificate chains to.
    pub ca_file: PathBuf,
    /// This member's certificate (chain); it must name the host of its address in `members`.
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// Mutual TLS on the peer port: require a client certificate that chains to `ca_file`.
    #[serde(default = "yes")]
    pub peer_mtls: bool,
    /// Serve the HTTP API over https.
    #[serde(default = "yes")]
    pub api: bool,
    /// The HTTP API's certificate and key, if not `cert_file` / `key_file`.
    #[serde(default)]
    pub api_cert_file: Option<PathBuf>,
    #[serde(default)]
    pub api_key_file: Option<PathBuf>,
    /// The HTTP API requires a client certificate that chains to `ca_file`.
    #[serde(default)]
    pub api_verify_client: bool,
}

fn yes() -> bool {
    true
}

/// The `[api]` table.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// `ip:port` of the HTTP API.
    pub listen: String,
    /// The bearer token mutating requests must carry (or `token_file`). None: no request may mutate.
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

impl std::fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiConfig")
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| REDACTED))
            .field("token_file", &self.token_file)
            .finish()
    }
}

/// What secrets look like in `/config` and in debug output.
pub const REDACTED: &str = "<redacted>";

/// A secret string: its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(REDACTED)
    }
}

/// Synchronous replication. The coordinator's values are the cluster's: it commits them.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicationConfig {
    #[serde(default)]
    pub synchronous_mode: SyncMode,
    /// How many standbys must confirm each commit (`ANY n (...)`).
    #[serde(default = "default_sync_count")]
    pub synchronous_node_count: u32,
    /// The member a failback switches over to (else the primary before the last change).
    #[serde(default)]
    pub preferred_primary: Option<String>,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig {
            synchronous_mode: SyncMode::Off,
            synchronous_node_count: default_sync_count(),
            preferred_primary: None,
        }
    }
}

fn default_sync_count() -> u32 {
    1
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MemberEntry {
    pub name: String,
    pub address: String,
}

#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    #[serde(default = "default_bin_dir")]
    pub bin_dir: PathBuf,
    pub data_dir: PathBuf,
    /// The address PostgreSQL listens on and the others reach it at.
    pub listen_address: String,
    #[serde(default = "default_port")]
    pub port: u16,
    /// Default: `<state_dir>/run`.
    #[serde(default)]
    pub socket_dir: Option<PathBuf>,
    /// The system user PostgreSQL runs as when the daemon runs as root. Default: "postgres".
    #[serde(default)]
    pub run_as: Option<String>,
    #[serde(default = "default_superuser")]
    pub superuser: String,
    #[serde(default)]
    pub superuser_password: Option<String>,
    #[serde(default)]
    pub superuser_password_file: Option<PathBuf>,
    #[serde(default = "default_replication_user")]
    pub replication_user: String,
    #[serde(default)]
    pub replication_password: Option<String>,
    #[serde(default)]
    pub replication_password_file: Option<PathBuf>,
    /// Default: `<state_dir>/postgresql.log`.
    #[serde(default)]
    pub log_file: Option<PathBuf>,
    #[serde(default)]
    pub hba_extra: Vec<String>,
    /// Addresses or CIDRs, besides the members' own, that may connect as the replication user
    /// (a backup host, a cascading replica outside the cluster).
    #[serde(default)]
    pub replication_networks: Vec<String>,
    #[serde(default)]
    pub parameters: BTreeMap<String, String>,
    /// How many data directories moved aside (before a re-clone) are kept; older ones are removed.
    #[serde(default = "default_keep_moved")]
    pub keep_moved_data_dirs: u32,
}

impl PostgresConfig {
    /// The system user PostgreSQL runs as when the daemon runs as root.
    pub fn run_as_user(&self) -> &str {
        self.run_as.as_deref().unwrap_or("postgres")
    }
}

impl std::fmt::Debug for PostgresConfig {
    /// As JSON, with the passwords redacted.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        for key in ["replication_password", "superuser_password"] {
            if let Some(field) = v.get_mut(key).filter(|f| !f.is_null()) {
                *field = REDACTED.into();
            }
        }
        write!(f, "PostgresConfig {v}")
    }
}

fn default_keep_moved() -> u32 {
    2
}

fn default_bin_dir() -> PathBuf {
    PathBuf::from("/usr/lib/postgresql/15/bin")
}
fn default_port() -> u16 {
    5432
}
fn default_superuser() -> String {
    "postgres".into()
}
fn default_replication_user() -> String {
    "replicator".into()
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default = "default_log_format")]
    pub format: LogFormat,
    #[serde(default = "default_log_level")]
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { format: default_log_format(), level: default_log_level() }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

fn default_log_format() -> LogFormat {
    LogFormat::Text
}
fn default_log_level() -> String {
    "info".into()
}

fn duration_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s)
        .map(Some)
        .map_err(|e| serde::de::Error::custom(format!("bad duration {s:?} ({e}); write e.g. \"250ms\" or \"2s\"")))
}

/// The checked configuration the daemon runs with. `Debug` shows no secret.
#[derive(Clone)]
pub struct Settings {
    pub raw: Config,
    pub timings: Timings,
    /// This member's peer address (from `members`).
    pub advertise: String,
    /// Replication password, superuser password, read from files where configured.
    pub replication_password: String,
    pub superuser_password: Option<String>,
    /// The API's bearer token, read from `api.token_file` where configured.
    pub api_token: Option<Secret>,
    /// The `[tls]` table with its files read and checked. None: plain text.
    pub tls: Option<crate::tls::Tls>,
    /// The cluster's secret from `peer_auth.secret_file`. None: the peer port relies on mutual
    /// TLS, or (explicitly) on nothing.
    pub peer_key: Option<Arc<vigil_raft::auth::ClusterKey>>,
    /// The file these settings were read from ([`load`]), read again on SIGHUP.
    pub path: Option<PathBuf>,
    /// The `[backup]` table, checked. None: no archiving, no backups.
    pub backup: Option<BackupSettings>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("raw", &self.raw)
            .field("timings", &self.timings)
            .field("advertise", &self.advertise)
            .field("replication_password", &REDACTED)
            .field("superuser_password", &self.superuser_password.as_ref().map(|_| REDACTED))
            .field("api_token", &self.api_token)
            .field("tls", &self.tls)
            .field("peer_key", &self.peer_key)
            .field("path", &self.path)
            .field("backup", &self.backup)
            .finish()
    }
}

impl Settings {
    /// Clients of the peer port: TLS by the `[tls]` table, each request signed with the cluster's
    /// secret when there is one.
    pub fn peer_clients(&self) -> vigil_raft::PeerClients {
        let clients = self.tls.as_ref().map_or_else(vigil_raft::PeerClients::new, |tls| tls.peer_clients());
        match &self.peer_key {
            Some(key) => clients.with_key(key.clone()),
            None => clients,
        }
    }

    pub fn socket_dir(&self) -> PathBuf {
        let pg = self.raw.postgres.as_ref();
        pg.and_then(|p| p.socket_dir.clone()).unwrap_or_else(|| self.raw.state_dir.join("run"))
    }

    pub fn pg_log_file(&self) -> PathBuf {
        let pg = self.raw.postgres.as_ref();
        pg.and_then(|p| p.log_file.clone()).unwrap_or_else(|| self.raw.state_dir.join("postgresql.log"))
    }

    /// The effective configuration as JSON for `GET /config`: defaults filled in for the timings,
    /// every secret replaced by [`REDACTED`] (paths of secret files are kept).
    pub fn redacted_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(&self.raw).unwrap_or_default();
        for (table, key) in [("postgres", "replication_password"), ("postgres", "superuser_password"), ("api", "token")]
        {
            if let Some(field) = v.get_mut(table).and_then(|t| t.get_mut(key)) {
                if !field.is_null() {
                    *field = REDACTED.into();
                }
            }
        }
        let t = &self.timings;
        let d = |d: std::time::Duration| humantime::format_duration(d).to_string();
        v["timing"] = serde_json::json!({
            "loop_interval": d(t.loop_interval),
            "lease_timeout": d(t.lease_timeout),
            "lease_margin": d(t.lease_margin),
            "pg_restart_timeout": d(t.pg_restart_timeout),
            "pg_unresponsive_timeout": d(t.pg_unresponsive_timeout),
            "report_timeout": d(t.report_timeout),
            "bootstrap_wait": d(t.bootstrap_wait),
            "raft_tick": d(t.raft_tick),
            "election_ticks": t.election_ticks,
            "heartbeat_ticks": t.heartbeat_ticks,
            "maximum_lag_on_failover": t.maximum_lag_on_failover,
            "switchover_timeout": d(t.switchover_timeout),
        });
        v
    }
}

/// Load `path`, apply `PGVIGIL_*` overrides (nested keys with `__`, e.g. `PGVIGIL_POSTGRES__PORT`),
/// check everything, and check PostgreSQL's programs in `postgres.bin_dir` ([`check_install`]).
pub fn load(path: &Path) -> Result<Settings, ConfigError> {
    let settings = load_file(path)?;
    check_install(&settings)?;
    Ok(settings)
}

/// Check the PostgreSQL installation of a loaded config (`postgres.bin_dir`): see [`crate::install`].
pub fn check_install(settings: &Settings) -> Result<(), ConfigError> {
    crate::install::check(settings)
}

/// [`load`] without looking at the PostgreSQL installation: for the command line's verbs, which
/// only read a member's endpoint, token and TLS from its file (possibly on another machine).
pub fn load_file(path: &Path) -> Result<Settings, ConfigError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| bad("--config", format!("cannot read {}: {e}", path.display())))?;
    let raw = parse(&text, env_overrides())?;
    let mut settings = check(raw)?;
    settings.path = Some(path.to_path_buf());
    Ok(settings)
}

fn read_secret(key: &str, inline: &Option<String>, file: &Option<PathBuf>) -> Result<Option<String>, ConfigError> {
    match (inline, file) {
        (Some(_), Some(_)) => Err(bad(key, "set either the value or the _file, not both")),
        (Some(v), None) => Ok(Some(v.clone())),
        (None, Some(f)) => std::fs::read_to_string(f)
            .map(|s| Some(s.trim_end_matches(['\n', '\r']).to_string()))
            .map_err(|e| bad(format!("{key}_file"), format!("cannot read {}: {e}", f.display()))),
        (None, None) => Ok(None),
    }
}

/// A path must be absolute: the daemon runs from `/` under systemd, PostgreSQL's programs from
/// `/` too, so a relative path would depend on where the daemon happened to be started.
fn absolute(key: &str, path: &Path) -> Result<(), ConfigError> {
    if path.is_absolute() {
        Ok(())
    } else {
        Err(bad(key, format!("{:?} must be an absolute path", path.display().to_string())))
    }
}

/// A hook's program, if it is a path (has a `/`), must be absolute; a bare name is looked up in
/// `PATH`. For a command line, its first word is the program.
fn hook_program(key: &str, hook: &HookCommand) -> Result<(), ConfigError> {
    let program = match hook {
        HookCommand::Shell(s) => s.split_whitespace().next().unwrap_or_default(),
        HookCommand::Argv(a) => a.first().map(String::as_str).unwrap_or_default(),
    };
    if program.contains('/') {
        absolute(key, Path::new(program))?;
    }
    Ok(())
}

/// `log.level` must be a filter that logs something: comma-separated directives, each a level
/// (`info`) or `target=level` (`pgvigil=debug`), targets made of letters, digits, `_`, `-` and
/// `::`. tracing itself takes any word for a target (`verbose!!` would enable only that target,
/// so nothing would be logged); a span filter (`[...]`) is left to tracing.
fn check_log_level(level: &str) -> Result<(), ConfigError> {
    const LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "off"];
    let is_level = |s: &str| LEVELS.contains(&s.trim().to_ascii_lowercase().as_str());
    let is_target =
        |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | ':' | '.'));
    if level.trim().is_empty() {
        return Err(bad("log.level", "is empty; write e.g. \"info\" or \"pgvigil=debug,info\""));
    }
    for directive in level.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let ok = match directive.rsplit_once('=') {
            _ if directive.contains('[') => true,
            Some((target, lvl)) => is_target(target.trim()) && is_level(lvl),
            None => is_level(directive),
        };
        if !ok {
            return Err(bad(
                "log.level",
                format!(
                    "{directive:?} is not a level (trace, debug, info, warn, error, off) nor target=level; \
                     write e.g. \"info\" or \"pgvigil=debug,info\""
                ),
            ));
        }
    }
    tracing_subscriber::EnvFilter::try_new(level).map(|_| ()).map_err(|e| bad("log.level", e.to_string()))
}

pub fn check(raw: Config) -> Result<Settings, ConfigError> {
    if raw.name.is_empty() {
        return Err(bad("name", "must not be empty"));
    }
    absolute("state_dir", &raw.state_dir)?;
    let mut seen = BTreeSet::new();
    let mut ids = BTreeMap::new();
    let mut addresses: BTreeMap<String, &str> = BTreeMap::new();
    for (i, m) in raw.members.iter().enumerate() {
        if !seen.insert(m.name.as_str()) {
            return Err(bad(format!("members[{i}].name"), format!("member {:?} is listed twice", m.name)));
        }
        if let Some(other) = addresses.insert(m.address.trim().to_ascii_lowercase(), m.name.as_str()) {
            return Err(bad(
                format!("members[{i}].address"),
                format!("{:?} is also the address of member {other:?}", m.address),
            ));
        }
        if let Some(other) = ids.insert(vigil_core::node_id(&m.name), m.name.as_str()) {
            return Err(bad(format!("members[{i}].name"), format!("{:?} hashes to the same id as {other:?}", m.name)));
        }
        if !m.address.contains(':') {
            return Err(bad(format!("members[{i}].address"), format!("{:?} is not host:port", m.address)));
        }
    }
    let Some(me) = raw.members.iter().find(|m| m.name == raw.name) else {
        return Err(bad("name", format!("member {:?} is not listed in `members`", raw.name)));
    };
    let advertise = me.address.clone();
    if raw.listen.parse::<std::net::SocketAddr>().is_err() {
        return Err(bad("listen", format!("{:?} is not an ip:port address", raw.listen)));
    }
    let timings = raw.timing.resolve()?;
    raw.tags.check()?;
    if raw.replication.synchronous_node_count == 0 {
        return Err(bad("replication.synchronous_node_count", "must be at least 1"));
    }
    if let Some(p) = raw.replication.preferred_primary.as_ref().filter(|p| !seen.contains(p.as_str())) {
        return Err(bad("replication.preferred_primary", format!("{p:?} is not listed in `members`")));
    }
    let h = &raw.hooks;
    for (key, hook) in [
        ("hooks.on_role_change", &h.on_role_change),
        ("hooks.on_failover", &h.on_failover),
        ("hooks.on_switchover", &h.on_switchover),
        ("hooks.on_fence", &h.on_fence),
        ("hooks.on_backup", &h.on_backup),
    ] {
        let empty = match hook {
            Some(HookCommand::Shell(s)) => s.trim().is_empty(),
            Some(HookCommand::Argv(a)) => a.first().is_none_or(|p| p.trim().is_empty()),
            None => false,
        };
        if empty {
            return Err(bad(key, "the command is empty"));
        }
        if let Some(hook) = hook {
            hook_program(key, hook)?;
        }
    }
    if h.timeout.is_some_and(|t| t.is_zero() || t > vigil_core::MAX_TIMING) {
        return Err(bad("hooks.timeout", format!("must be more than 0 and at most {:?}", vigil_core::MAX_TIMING)));
    }
    check_log_level(&raw.log.level)?;
    if let Some(proxy) = &raw.proxy {
        proxy::check(proxy)?;
    }
    let api_token = match &raw.api {
        None => None,
        Some(api) => {
            if api.listen.parse::<std::net::SocketAddr>().is_err() {
                return Err(bad("api.listen", format!("{:?} is not an ip:port address", api.listen)));
            }
            if let Some(f) = &api.token_file {
                absolute("api.token_file", f)?;
            }
            let token = read_secret("api.token", &api.token, &api.token_file)?;
            let key = if api.token.is_some() { "api.token" } else { "api.token_file" };
            if token.as_deref().is_some_and(|t| t.trim().is_empty()) {
                return Err(bad(key, "the token is empty"));
            }
            // A request carries it in a header, where the API reads visible ASCII and trims it.
            if token.as_deref().is_some_and(|t| t != t.trim() || !t.bytes().all(|b| b == b' ' || b.is_ascii_graphic()))
            {
                return Err(bad(
                    key,
                    "the token must be printable ASCII without spaces at either end (it travels in an HTTP header)",
                ));
            }
            token.map(Secret)
        }
    };
    let tls = match &raw.tls {
        Some(cfg) => {
            absolute("tls.ca_file", &cfg.ca_file)?;
            absolute("tls.cert_file", &cfg.cert_file)?;
            absolute("tls.key_file", &cfg.key_file)?;
            if let Some(f) = &cfg.api_cert_file {
                absolute("tls.api_cert_file", f)?;
            }
            if let Some(f) = &cfg.api_key_file {
                absolute("tls.api_key_file", f)?;
            }
            Some(crate::tls::Tls::load(cfg, &advertise)?)
        }
        None => None,
    };
    let peer_key = peer_key(&raw.peer_auth, tls.as_ref())?;
    let (replication_password, superuser_password) = match (&raw.kind, &raw.postgres) {
        (MemberKind::Postgres, None) => return Err(bad("postgres", "a postgres member needs a [postgres] section")),
        (MemberKind::Postgres, Some(pg)) => {
            if pg.port == 0 {
                return Err(bad("postgres.port", "must not be 0"));
            }
            if pg.keep_moved_data_dirs == 0 {
                return Err(bad("postgres.keep_moved_data_dirs", "must be at least 1: a re-clone keeps the old data"));
            }
            absolute("postgres.data_dir", &pg.data_dir)?;
            absolute("postgres.bin_dir", &pg.bin_dir)?;
            for (key, path) in [
                ("postgres.socket_dir", &pg.socket_dir),
                ("postgres.log_file", &pg.log_file),
                ("postgres.superuser_password_file", &pg.superuser_password_file),
                ("postgres.replication_password_file", &pg.replication_password_file),
            ] {
                if let Some(p) = path {
                    absolute(key, p)?;
                }
            }
            let repl =
                read_secret("postgres.replication_password", &pg.replication_password, &pg.replication_password_file)?
                    .ok_or_else(|| {
                        bad("postgres.replication_password", "missing (or set replication_password_file)")
                    })?;
            let su = read_secret("postgres.superuser_password", &pg.superuser_password, &pg.superuser_password_file)?;
            (repl, su)
        }
        (MemberKind::Witness, Some(_)) => {
            return Err(bad(
                "postgres",
                "a witness runs no PostgreSQL: remove the [postgres] table (or set kind = \"postgres\")",
            ))
        }
        (MemberKind::Witness, None) => (String::new(), None),
    };
    let mut backup = raw.backup.as_ref().map(backup::check).transpose()?;
    if let (Some(b), MemberKind::Postgres) = (backup.as_mut(), raw.kind) {
        let names: Vec<String> = raw.members.iter().map(|m| m.name.clone()).collect();
        b.server = backup::tls_server(&b.raw, raw.tls.as_ref(), &advertise, &names)?;
    }
    Ok(Settings {
        backup,
        raw,
        timings,
        advertise,
        replication_password,
        superuser_password,
        api_token,
        tls,
        peer_key,
        path: None,
    })
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;

#[path = "config_parse.rs"]
mod parse;
use parse::env_overrides;
pub use parse::{parse, CLI_VARIABLES, ENV_BOOL_KEYS, ENV_INTEGER_KEYS};

#[path = "config_backup.rs"]
mod backup;
pub use backup::{
    BackupConfig, BackupSettings, ScheduleConfig, TlsServer, DEFAULT_ARCHIVE_TIMEOUT, DEFAULT_BACKUP_TIMEOUT,
    DEFAULT_VERIFY_TIMEOUT,
};

#[path = "config_tags.rs"]
mod tags;
pub use tags::{TagTable, TagValue};

#[path = "config_proxy.rs"]
mod proxy;
pub use proxy::{NoStandbyConfig, ProxyConfig};

#[path = "config_timing.rs"]
mod timing;
pub use timing::TimingConfig;

#[path = "config_peer_auth.rs"]
mod peer_auth;
use peer_auth::peer_key;
pub use peer_auth::PeerAuthConfig;
