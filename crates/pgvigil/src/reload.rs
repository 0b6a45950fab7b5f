//! Reloading the configuration on SIGHUP.
//!
//! The file given to `run --config` is read again with [`config::load`] (the same `PGVIGIL_*`
//! overrides, the same checks, the `[tls]` files read and checked again). What may change while
//! the daemon runs ([`Runtime`]: log level and format, tags, hooks, the API token; the `[tls]`
//! files, which `tls_live::LiveTls` puts in use for new connections) is applied and logged with
//! the keys that changed (a file counts as changed when its contents do); any other
//! difference is logged once per reload as "needs a restart: <keys>" and not applied. A file that
//! does not load is refused (the error names the key) and the running configuration stays. The
//! daemon never exits on SIGHUP.
//!
//! Which keys changed and which of them need a restart are pure functions ([`changed_keys`],
//! [`split`]); the task around them only reads the file, logs and publishes.

use crate::config::{self, ApiConfig, HooksConfig, LogConfig, Secret, Settings, TagTable, TlsConfig};
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
    pub tags: TagTable,
    pub hooks: HooksConfig,
    /// `api.token` and `api.token_file` as written (for `GET /config`); None: no `[api]` table.
    pub api: Option<ApiConfig>,
    /// The bearer token mutating API requests must carry (read from `token_file` if set).
    pub api_token: Option<Secret>,
    /// The `[tls]` table whose files are in use (for `GET /config`: the paths may change).
    pub tls: Option<TlsConfig>,
}

impl Runtime {
    pub fn of(s: &Settings) -> Runtime {
        Runtime {
            log: s.raw.log.clone(),
            tags: s.raw.tags.clone(),
            hooks: s.raw.hooks.clone(),
            api: s.raw.api.clone(),
            api_token: s.api_token.clone(),
            tls: s.raw.tls.clone(),
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
        // The files only: the flags need a restart.
        if let (Some(running), Some(new)) = (s.raw.tls.as_mut(), self.tls.as_ref()) {
            running.ca_file = new.ca_file.clone();
            running.cert_file = new.cert_file.clone();
            running.key_file = new.key_file.clone();
            running.api_cert_file = new.api_cert_file.clone();
            running.api_key_file = new.api_key_file.clone();
        }
    }
}

/// Keys that take effect without a restart: a changed key equal to one of these, or below it
/// (`hooks.on_fence` is below `hooks`), is applied; [`TLS_FILES`] too, under a condition.
pub const RELOADABLE: &[&str] = &["log.level", "log.format", "tags", "hooks", "api.token", "api.token_file"];

/// The `[tls]` files (their paths or their contents): applied for new connections, unless one of
/// [`TLS_FILES_NEED`] changed too. The running flags and this member's address are those the
/// new files were not checked against, so then every changed `[tls]` key needs a restart.
pub const TLS_FILES: &[&str] =
    &["tls.ca_file", "tls.cert_file", "tls.key_file", "tls.api_cert_file", "tls.api_key_file"];

/// See [`TLS_FILES`]: `tls` itself changes when the table is added or removed (TLS on or off).
pub const TLS_FILES_NEED: &[&str] = &["tls", "tls.peer_mtls", "tls.api", "tls.api_verify_client", "members", "name"];

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
    if let (Some(a), Some(b)) = (&old.tls, &new.tls) {
        keys.extend(crate::tls::changed_files(a, b).into_iter().map(String::from));
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
    let tls_files_apply = !keys.iter().any(|k| TLS_FILES_NEED.contains(&k.as_str()));
    keys.iter().cloned().partition(|k| {
        RELOADABLE.iter().any(|r| k == r || k.strip_prefix(r).is_some_and(|rest| rest.starts_with('.')))
            || (tls_files_apply && TLS_FILES.contains(&k.as_str()))
    })
}

/// The SIGHUP handler, installed by `main` before anything else runs (the default action of
/// SIGHUP ends the process); [`run`] takes it. A signal that arrives in between is kept.
static HANGUP: OnceLock<Mutex<Option<Signal>>> = OnceLock::new();

/// Ignore SIGHUP: the first thing `main` does for `run`, so that a reload signal that arrives
/// before [`install`] (while the config is read, the runtime built) does not end the daemon.
/// [`install`] replaces it; an ignored SIGHUP must not outlive that (it is inherited across exec).
pub fn ignore_until_installed() {
    // SAFETY: SIG_IGN runs no handler code, and main calls this before it starts any thread.
    #[allow(unsafe_code)]
    let set =
        unsafe { nix::sys::signal::signal(nix::sys::signal::Signal::SIGHUP, nix::sys::signal::SigHandler::SigIgn) };
    if let Err(e) = set {
        eprintln!("pgvigil: cannot ignore SIGHUP until its handler is installed: {e}");
    }
}

/// Install the SIGHUP handler now (it replaces the ignored disposition of
/// [`ignore_until_installed`]). Needs a tokio runtime (call it inside `block_on`), and must run
/// before any child process is started: it checks that SIGHUP is not left ignored, since PostgreSQL,
/// the keeper and hooks would inherit that, and restores the default action if it is.
pub fn install() -> std::io::Result<()> {
    let installed = signal(SignalKind::hangup()).map(|s| {
        let _ = HANGUP.set(Mutex::new(Some(s)));
    });
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if installed.is_err() || sighup_in_mask(&status, "SigIgn") == Some(true) {
        // SAFETY: SIG_DFL runs no handler code.
        #[allow(unsafe_code)]
        let reset =
            unsafe { nix::sys::signal::signal(nix::sys::signal::Signal::SIGHUP, nix::sys::signal::SigHandler::SigDfl) };
        if let Err(e) = reset {
            tracing::error!("SIGHUP stays ignored, and so it will be in PostgreSQL and hooks: {e}");
        }
    }
    installed
}

/// Whether SIGHUP (signal 1, the lowest bit) is set in the mask `field` (`SigIgn`, `SigCgt`,
/// ...) of a `/proc/<pid>/status` text; None if the field is not there.
pub fn sighup_in_mask(status: &str, field: &str) -> Option<bool> {
    let mask = status.lines().find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?.trim();
    let last = u8::from_str_radix(mask.get(mask.len().checked_sub(1)?..)?, 16).ok()?;
    Some(last & 1 == 1)
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
    let (mut now, restart) = split(&keys);
    let is_tls_file = |k: &String| TLS_FILES.contains(&k.as_str());
    let tls_applied = now.iter().any(is_tls_file) && {
        let replaced = match (&shared.tls, &new.tls) {
            (Some(live), Some(tls)) => live.replace(tls),
            _ => Err("TLS is off in the running daemon".to_string()),
        };
        if let Err(e) = &replaced {
            let files: Vec<&String> = now.iter().filter(|k| is_tls_file(k)).collect();
            tracing::error!("the new TLS files were not applied, the running ones stay ({files:?}): {e}");
            now.retain(|k| !is_tls_file(k));
        }
        replaced.is_ok()
    };
    if tls_applied {
        current.tls = new.tls.clone();
    }
    if !now.is_empty() {
        let mut runtime = Runtime::of(new);
        if !tls_applied {
            runtime.tls = current.raw.tls.clone();
        }
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
             [peer_auth]\ninsecure_unauthenticated = true\n\
             [postgres]\ndata_dir = \"/tmp/x/pgdata\"\nlisten_address = \"127.0.0.1\"\n\
             replication_password = \"r\"\n{toml_extra}"
        );
        let raw: Config = crate::config::parse(&text, Vec::new()).expect("parses");
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
        new.raw.tags.set("nofailover", true);
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
        let keys = ["hooks".to_string(), "hooks.timeout".into(), "hooksx".into(), "log".into(), "tagsx".into()];
        let (now, restart) = split(&keys);
        assert_eq!(now, ["hooks", "hooks.timeout"]);
        assert_eq!(restart, ["hooksx", "log", "tagsx"]);
    }

    #[test]
    fn renewed_tls_files_are_named_by_contents_or_path_and_applied() {
        let mut old = settings("");
        old.tls = Some(crate::tls::Tls::fake("ca", "cert", "key", None));
        let mut same_paths = old.clone();
        same_paths.tls = Some(crate::tls::Tls::fake("ca", "cert-renewed", "key-renewed", None));
        let keys = changed_keys(&old, &same_paths);
        assert_eq!(keys, ["tls.cert_file", "tls.key_file"], "same paths, new contents");
        assert_eq!(split(&keys), (keys.clone(), vec![]));
        assert!(changed_keys(&old, &old.clone()).is_empty(), "same contents: no change");
        // Another path with the same contents is a change too (it names what the daemon reads).
        let tls = |path: &str| -> Option<TlsConfig> {
            Some(TlsConfig {
                ca_file: "/tls/ca.pem".into(),
                cert_file: path.into(),
                key_file: "/tls/key.pem".into(),
                peer_mtls: true,
                api: true,
                api_cert_file: None,
                api_key_file: None,
                api_verify_client: false,
            })
        };
        old.raw.tls = tls("/tls/cert.pem");
        let mut moved = old.clone();
        moved.raw.tls = tls("/tls/cert-2027.pem");
        assert_eq!(changed_keys(&old, &moved), ["tls.cert_file"]);
        // The overlay carries the new paths (for GET /config), never the flags.
        let mut running = old.clone();
        let mut flags = moved.clone();
        if let Some(t) = flags.raw.tls.as_mut() {
            t.peer_mtls = false;
        }
        Runtime::of(&flags).overlay(&mut running);
        assert_eq!(changed_keys(&running, &flags), ["tls.peer_mtls"]);
    }

    #[test]
    fn tls_files_need_a_restart_with_tls_switched_or_its_flags_or_the_address_changed() {
        let keys = |ks: &[&str]| ks.iter().map(|k| k.to_string()).collect::<Vec<_>>();
        let (now, restart) = split(&keys(&["log.level", "tls.ca_file", "tls.cert_file", "tls.key_file"]));
        assert_eq!((now.len(), restart.len()), (4, 0));
        for blocker in ["tls", "tls.peer_mtls", "tls.api", "tls.api_verify_client", "members"] {
            let (now, restart) = split(&keys(&["log.level", "tls.cert_file", "tls.key_file", blocker]));
            assert_eq!(now, ["log.level"], "with {blocker}");
            assert_eq!(restart.len(), 3, "with {blocker}: {restart:?}");
        }
        // Adding the table (TLS on) shows as `tls` and its keys: all of it needs a restart.
        let mut on = settings("");
        on.raw.tls = Some(TlsConfig {
            ca_file: "/ca".into(),
            cert_file: "/c".into(),
            key_file: "/k".into(),
            peer_mtls: true,
            api: true,
            api_cert_file: None,
            api_key_file: None,
            api_verify_client: false,
        });
        let (now, restart) = split(&changed_keys(&settings(""), &on));
        assert!(now.is_empty(), "{now:?}");
        assert!(restart.contains(&"tls".to_string()) && restart.contains(&"tls.cert_file".to_string()), "{restart:?}");
    }

    #[test]
    fn sighup_bit_of_proc_status_masks() {
        let status =
            "Name:\tpgvigil\nSigBlk:\t0000000000000000\nSigIgn:\t0000000000001001\nSigCgt:\t0000000180004a02\n";
        assert_eq!(sighup_in_mask(status, "SigIgn"), Some(true));
        assert_eq!(sighup_in_mask(status, "SigCgt"), Some(false));
        assert_eq!(sighup_in_mask(status, "SigBlk"), Some(false));
        assert_eq!(sighup_in_mask(status, "SigPnd"), None);
    }

    #[test]
    fn overlay_keeps_what_needs_a_restart() {
        let old = settings("[api]\nlisten = \"127.0.0.1:8000\"\ntoken = \"one\"\n[tags]\npriority = 1\n");
        let new = settings("[api]\nlisten = \"127.0.0.1:8001\"\ntoken = \"two\"\n[tags]\npriority = 5\n");
        let mut running = old.clone();
        Runtime::of(&new).overlay(&mut running);
        assert_eq!(changed_keys(&running, &new), ["api.listen"]);
        assert_eq!(running.raw.tags.tags().priority(), 5);
        assert_eq!(running.api_token, Some(Secret("two".into())));
    }
}
