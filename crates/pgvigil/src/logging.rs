//! tracing setup: text or JSON lines on stderr, each carrying this member's name and the epoch of
//! the committed state it acts on.
//!
//! Both come from process-wide values (one daemon per process): the name is set once, the epoch
//! follows the committed state ([`follow_epoch`]). A formatter wraps tracing-subscriber's own and
//! adds them to every line, also to lines from tasks that no span reaches (tonic, raft-rs).
//!
//! The daemon's filter and formatter sit behind `tracing_subscriber::reload` handles, so a
//! configuration reload (SIGHUP) changes `log.level` and `log.format` in place ([`reconfigure`]).

use crate::config::{LogConfig, LogFormat};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::{Layered, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

static MEMBER: OnceLock<String> = OnceLock::new();
static EPOCH: AtomicU64 = AtomicU64::new(0);
/// The daemon's filter and formatter, replaceable on a configuration reload.
static RELOAD: OnceLock<Reload> = OnceLock::new();

type Base = Layered<reload::Layer<EnvFilter, Registry>, Registry>;
type Output = Box<dyn Layer<Base> + Send + Sync>;

struct Reload {
    filter: reload::Handle<EnvFilter, Registry>,
    output: reload::Handle<Output, Base>,
    /// RUST_LOG was set at start: it wins over `log.level`, also after a reload.
    env_filter: bool,
}

/// Set up logging for the command line (no member, no epoch on the lines).
pub fn init(cfg: &LogConfig) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(cfg).0)
        .with_writer(std::io::stderr)
        .with_ansi(stderr_is_terminal());
    let _ = match cfg.format {
        LogFormat::Json => builder.json().with_current_span(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Set up logging for the daemon of `member`; [`reconfigure`] changes its level and format later.
pub fn init_member(cfg: &LogConfig, member: &str) {
    let _ = MEMBER.set(member.to_string());
    let (filter, env_filter) = filter(cfg);
    let (filter, filter_handle) = reload::Layer::new(filter);
    let (output, output_handle) = reload::Layer::new(output(cfg.format));
    if tracing_subscriber::registry().with(filter).with(output).try_init().is_ok() {
        let _ = RELOAD.set(Reload { filter: filter_handle, output: output_handle, env_filter });
    }
}

/// RUST_LOG wins over the config, for debugging a running setup; true when it is used.
fn filter(cfg: &LogConfig) -> (EnvFilter, bool) {
    match EnvFilter::try_from_default_env() {
        Ok(f) => (f, true),
        Err(_) => (EnvFilter::try_new(&cfg.level).unwrap_or_else(|_| EnvFilter::new("info")), false),
    }
}

fn stderr_is_terminal() -> bool {
    use std::io::IsTerminal as _;
    std::io::stderr().is_terminal()
}

/// The daemon's lines, tagged with member and epoch, in `format`.
fn output(format: LogFormat) -> Output {
    // Colours only for a person at a terminal: a log file or journald gets plain text.
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(stderr_is_terminal());
    match format {
        LogFormat::Json => {
            let inner = tracing_subscriber::fmt::format().json().with_current_span(true);
            Box::new(layer.json().event_format(Tagged { inner, json: true }))
        }
        LogFormat::Text => {
            let inner = tracing_subscriber::fmt::format();
            Box::new(layer.event_format(Tagged { inner, json: false }))
        }
    }
}

/// Change the daemon's log level and format (a configuration reload). `log.level` was checked when
/// the file was loaded; RUST_LOG, when set at start, still wins over it.
pub fn reconfigure(cfg: &LogConfig) -> Result<(), String> {
    let r = RELOAD.get().ok_or("logging was not set up by init_member")?;
    if !r.env_filter {
        let filter = EnvFilter::try_new(&cfg.level).map_err(|e| format!("log.level: {e}"))?;
        r.filter.reload(filter).map_err(|e| format!("log.level: {e}"))?;
    }
    r.output.reload(output(cfg.format)).map_err(|e| format!("log.format: {e}"))
}

/// Keep the epoch on the log lines equal to the committed state's.
pub async fn follow_epoch(
    mut state: tokio::sync::watch::Receiver<crate::replicated::Replicated>,
    stop: CancellationToken,
) {
    loop {
        let epoch = state.borrow_and_update().state.epoch;
        EPOCH.store(epoch, Ordering::Relaxed);
        tokio::select! {
            _ = stop.cancelled() => return,
            r = state.changed() => if r.is_err() { return },
        }
    }
}

/// Adds `member` and `epoch` to every line of `inner`: as top-level keys of a JSON line, or as
/// ` member=.. epoch=..` at the end of a text line (after the event's own fields).
struct Tagged<F> {
    inner: F,
    json: bool,
}

impl<S, N, F> FormatEvent<S, N> for Tagged<F>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let mut line = String::new();
        self.inner.format_event(ctx, Writer::new(&mut line), event)?;
        let member = MEMBER.get().map(String::as_str).unwrap_or("");
        let epoch = EPOCH.load(Ordering::Relaxed);
        writer.write_str(&tag_line(&line, member, epoch, self.json))
    }
}

/// The line with member and epoch added (pure, for tests).
fn tag_line(line: &str, member: &str, epoch: u64, json: bool) -> String {
    if json {
        if let Some(rest) = line.strip_prefix('{') {
            let name = serde_json::to_string(member).unwrap_or_else(|_| "\"\"".into());
            return format!("{{\"member\":{name},\"epoch\":{epoch},{rest}");
        }
        return line.to_string();
    }
    let body = line.strip_suffix('\n').unwrap_or(line);
    let mut out = String::with_capacity(line.len() + member.len() + 24);
    out.push_str(body);
    let _ = writeln!(out, " member={member} epoch={epoch}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_carry_member_and_epoch() {
        let json = tag_line("{\"timestamp\":\"t\",\"level\":\"INFO\"}\n", "pg\"1", 7, true);
        let v: serde_json::Value = serde_json::from_str(json.trim()).expect("still JSON");
        assert_eq!(
            (v["member"].as_str(), v["epoch"].as_u64(), v["level"].as_str()),
            (Some("pg\"1"), Some(7), Some("INFO"))
        );
        assert_eq!(
            tag_line("2024 INFO x: hello k=v\n", "pg1", 3, false),
            "2024 INFO x: hello k=v member=pg1 epoch=3\n"
        );
    }
}
