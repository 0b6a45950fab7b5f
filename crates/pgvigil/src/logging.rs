//! tracing setup: text or JSON lines on stderr, each carrying this member's name and the epoch of
//! the committed state it acts on.
//!
//! Both come from process-wide values (one daemon per process): the name is set once, the epoch
//! follows the committed state ([`follow_epoch`]). A formatter wraps tracing-subscriber's own and
//! adds them to every line, also to lines from tasks that no span reaches (tonic, raft-rs).

use crate::config::{LogConfig, LogFormat};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

static MEMBER: OnceLock<String> = OnceLock::new();
static EPOCH: AtomicU64 = AtomicU64::new(0);

/// Set up logging for the command line (no member, no epoch on the lines).
pub fn init(cfg: &LogConfig) {
    init_inner(cfg, None);
}

/// Set up logging for the daemon of `member`.
pub fn init_member(cfg: &LogConfig, member: &str) {
    init_inner(cfg, Some(member));
}

fn init_inner(cfg: &LogConfig, member: Option<&str>) {
    // RUST_LOG wins over the config, for debugging a running setup.
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let Some(member) = member else {
        let _ = match cfg.format {
            LogFormat::Json => builder.json().with_current_span(true).try_init(),
            LogFormat::Text => builder.try_init(),
        };
        return;
    };
    let _ = MEMBER.set(member.to_string());
    let _ = match cfg.format {
        LogFormat::Json => {
            let inner = tracing_subscriber::fmt::format().json().with_current_span(true);
            builder.json().event_format(Tagged { inner, json: true }).try_init()
        }
        LogFormat::Text => {
            let inner = tracing_subscriber::fmt::format();
            builder.event_format(Tagged { inner, json: false }).try_init()
        }
    };
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
