//! Reloading the configuration on SIGHUP.
//!
//! The file given to `run --config` is read again with [`config::load`] (the same `PGVIGIL_*`
//! overrides, the same checks). What may change while the daemon runs ([`Runtime`]: log level and
//! format, tags, hooks, the API token) is applied and logged with the keys that changed; any other
//! difference is logged once per reload as "needs a restart: <keys>" and not applied. A file that
//! does not load is refused (the error names the key) and the running configuration stays. The
//! daemon never exits on SIGHUP.
//!
//! Which keys changed and which of them need a restart are pure functions ([`changed_keys`],
//! [`split`]); the task around them only reads the file, logs and publishes.

use crate::config::{self, ApiConfig, HooksConfig, LogConfig, Secret, Settings, Tags};
use crate::daemon::Shared;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, OnceLock};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio_util::sync::CancellationToken;

/// The part of the configuration that may change while the daemon runs. `Shared::runtime`
/// holds the current one; readers borrow it where they use it.
#[derive(Clone, Debug)]
pub struct Runtime {
    pub log: LogConfig,
    pub tags: Tags,
    pub hooks: HooksConfig,
    /// `api.token` and `api.token_file` as written (for `GET /config`); None: no `[api]` table.
    pub api: Option<ApiConfig>,
    /// The bearer token mutating API requests must carry (read from `token_file` if set).
    pub api_token: Option<Secret>,
}

impl Runtime {
    pub fn of(s: &Settings) -> Runtime {
        Runtime {
            log: s.raw.log.clone(),
            tags: s.raw.tags.clone(),
            hooks: s.raw.hooks.clone(),
            api: s.raw.api.clone(),
            api_token: s.api_token.clone(),
        }
    }

    /// `s` with this runtime part in place of its own (`api.listen` stays, it needs a restart).
    pub fn overlay(&self, s: &mut Settings) {
        s.raw.log = self.log.clone();
        s.raw.tags = self.tags.clone();
        s.raw.hooks = self.hooks.clone();
        if let (Some(running), Some(new)) = (s.raw.api.as_mut(), self.api.as_ref()) {
            running.token = new.token.clone();
            running.token_file = new.token_file.clone();
        }
        s.api_token = self.api_token.clone();
    }
}

/// Keys that take effect without a restart: a changed key equal to one of these, or below it
/// (`hooks.on_fence` is below `hooks`), is applied.
pub const RELOADABLE: &[&str] =
    &["log.level", "log.format", "tags.nofailover", "tags.priority", "hooks", "api.token", "api.token_file"];

/// The dotted keys whose values differ between `old` and `new`: tables are compared one level
/// deep (`timing.lease_timeout`, `postgres.parameters`), and secrets read from files by what they
/// hold (`api.token`, `postgres.replication_password`, `postgres.superuser_password`).
pub fn changed_keys(old: &Settings, new: &Settings) -> Vec<String> {
    let flat = |s: &Settings| flatten(&serde_json::to_value(&s.raw).unwrap_or_default());
    let (a, b) = (flat(old), flat(new));
    let mut keys: BTreeSet<String> = a.keys().chain(b.keys()).filter(|k| a.get(*k) != b.get(*k)).cloned().collect();
    if old.api_token != new.api_token {
        keys.insert("api.token".into());
    }
    if old.replication_password != new.replication_password {
        keys.insert("postgres.replication_password".into());
    }
    if old.superuser_password != new.superuser_password {
        keys.insert("postgres.superuser_password".into());
    }
    keys.into_iter().collect()
}

/// Top-level keys and the keys of top-level tables, with their values.
fn flatten(v: &serde_json::Value) -> std::collections::BTreeMap<String, serde_json::Value> {
    let mut out = std::collections::BTreeMap::new();
    let Some(top) = v.as_object() else { return out };
    for (k, v) in top {
        match v.as_object() {
            Some(table) if k != "members" => {
                for (field, value) in table {
                    out.insert(format!("{k}.{field}"), value.clone());
                }
            }
            _ => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    out
}

/// `keys` split into (applied at once, needs a restart).
pub fn split(keys: &[String]) -> (Vec<String>, Vec<String>) {
    keys.iter()
        .cloned()
        .partition(|k| RELOADABLE.iter().any(|r| k == r || k.strip_prefix(r).is_some_and(|rest| rest.starts_with('.'))))
}

/// The SIGHUP handler, installed by `main` before anything else runs (the default action of
/// SIGHUP ends the process); [`run`] takes it. A signal that arrives in between is kept.
static HANGUP: OnceLock<Mutex<Option<Signal>>> = OnceLock::new();

/// Install the SIGHUP handler now. Needs a tokio runtime (call it inside `block_on`).
pub fn install() -> std::io::Result<()> {
    let s = signal(SignalKind::hangup())?;
    let _ = HANGUP.set(Mutex::new(Some(s)));
    Ok(())
}

fn take_handler() -> std::io::Result<Signal> {
    let installed = HANGUP.get().and_then(|m| m.lock().unwrap_or_else(|p| p.into_inner()).take());
    match installed {
        Some(s) => Ok(s),
        None => signal(SignalKind::hangup()),
    }
}

/// Reload the configuration on every SIGHUP until `stop`.
pub async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    let mut hangup = match take_handler() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot handle SIGHUP (configuration reload): {e}");
            return;
        }
    };
    let Some(path) = shared.settings.path.clone() else {
        tracing::warn!("the configuration did not come from a file: SIGHUP reloads nothing");
        return;
    };
    // What runs now: the start-up settings with every applied reload on top.
    let mut current = shared.settings.clone();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            got = hangup.recv() => if got.is_none() { return },
        }
        tracing::info!(file = %path.display(), "SIGHUP: reloading the configuration");
        let loaded = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || config::load(&path)).await
        };
        let new = match loaded {
            Ok(Ok(new)) => new,
            Ok(Err(e)) => {
                tracing::error!("configuration reload refused, the running configuration stays: {e}");
                continue;
            }
            Err(e) => {
                tracing::error!("configuration reload failed, the running configuration stays: {e}");
                continue;
            }
        };
        apply(&shared, &mut current, &new);
    }
}

/// Apply what may change of `new` and log what changed; `current` becomes what runs.
fn apply(shared: &Shared, current: &mut Settings, new: &Settings) {
    let keys = changed_keys(current, new);
    let (now, restart) = split(&keys);
    if !now.is_empty() {
        let runtime = Runtime::of(new);
        if now.iter().any(|k| k.starts_with("log.")) {
            if let Err(e) = crate::logging::reconfigure(&runtime.log) {
                tracing::error!("the new log settings were not applied: {e}");
            }
        }
        shared.hooks.set(&runtime.hooks);
        runtime.overlay(current);
        shared.runtime.send_replace(runtime);
        tracing::info!(keys = %now.join(", "), "configuration reloaded: applied {}", now.join(", "));
        tracing::debug!(runtime = ?shared.runtime.borrow(), "the runtime configuration now");
    }
    if !restart.is_empty() {
        tracing::warn!(keys = %restart.join(", "), "needs a restart: {}", restart.join(", "));
    }
    if keys.is_empty() {
        tracing::info!("configuration reloaded: no change");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{check, Config};

    fn settings(toml_extra: &str) -> Settings {
        let text = format!(
            "name = \"a\"\nstate_dir = \"/tmp/x\"\nlisten = \"127.0.0.1:7000\"\n\
             members = [{{ name = \"a\", address = \"127.0.0.1:7000\" }}]\n\
             [postgres]\ndata_dir = \"/tmp/x/pgdata\"\nlisten_address = \"127.0.0.1\"\n\
             replication_password = \"r\"\n{toml_extra}"
        );
        let raw: Config = ::config::Config::builder()
            .add_source(::config::File::from_str(&text, ::config::FileFormat::Toml))
            .build()
            .and_then(|c| c.try_deserialize())
            .expect("parses");
        check(raw).expect("valid")
    }

    #[test]
    fn no_change_no_keys() {
        let s = settings("[log]\nlevel = \"info\"\n");
        assert!(changed_keys(&s, &s.clone()).is_empty());
    }

    #[test]
    fn changed_keys_are_named_and_split() {
        let old = settings("parameters = { work_mem = \"4MB\" }\n[tags]\npriority = 1\n");
        let mut new = settings("parameters = { work_mem = \"8MB\" }\n");
        new.raw.tags.nofailover = true;
        new.raw.log.level = "debug".into();
        new.raw.hooks.on_fence = Some(crate::config::HookCommand::Shell("true".into()));
        new.raw.timing.lease_timeout = Some(std::time::Duration::from_secs(3));
        let keys = changed_keys(&old, &new);
        assert_eq!(
            keys,
            [
                "hooks.on_fence",
                "log.level",
                "postgres.parameters",
                "tags.nofailover",
                "tags.priority",
                "timing.lease_timeout"
            ]
        );
        let (now, restart) = split(&keys);
        assert_eq!(now, ["hooks.on_fence", "log.level", "tags.nofailover", "tags.priority"]);
        assert_eq!(restart, ["postgres.parameters", "timing.lease_timeout"]);
    }

    #[test]
    fn secrets_compare_by_value_and_api_listen_needs_a_restart() {
        let old = settings("[api]\nlisten = \"127.0.0.1:8000\"\ntoken = \"one\"\n");
        let new = settings("[api]\nlisten = \"127.0.0.1:8001\"\ntoken = \"two\"\n");
        let keys = changed_keys(&old, &new);
        assert_eq!(keys, ["api.listen", "api.token"]);
        assert_eq!(split(&keys), (vec!["api.token".to_string()], vec!["api.listen".to_string()]));
        let mut pw = old.clone();
        pw.replication_password = "other".into();
        assert_eq!(changed_keys(&old, &pw), ["postgres.replication_password"]);
        // Adding the [api] table at all needs a restart (nothing listens yet).
        let none = settings("");
        let (now, restart) = split(&changed_keys(&none, &old));
        assert!(restart.contains(&"api".to_string()) && restart.contains(&"api.listen".to_string()), "{restart:?}");
        assert!(now.contains(&"api.token".to_string()), "{now:?}");
    }

    #[test]
    fn a_key_below_a_reloadable_one_reloads_but_a_lookalike_does_not() {
        let keys = ["hooks".to_string(), "hooks.timeout".into(), "hooksx".into(), "log".into(), "tags".into()];
        let (now, restart) = split(&keys);
        assert_eq!(now, ["hooks", "hooks.timeout"]);
        assert_eq!(restart, ["hooksx", "log", "tags"]);
    }

    #[test]
    fn overlay_keeps_what_needs_a_restart() {
        let old = settings("[api]\nlisten = \"127.0.0.1:8000\"\ntoken = \"one\"\n[tags]\npriority = 1\n");
        let new = settings("[api]\nlisten = \"127.0.0.1:8001\"\ntoken = \"two\"\n[tags]\npriority = 5\n");
        let mut running = old.clone();
        Runtime::of(&new).overlay(&mut running);
        assert_eq!(changed_keys(&running, &new), ["api.listen"]);
        assert_eq!(running.raw.tags.priority, 5);
        assert_eq!(running.api_token, Some(Secret("two".into())));
    }
}
