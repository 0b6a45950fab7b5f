//! raft-rs logs through `slog`; this drain forwards its records to `tracing` (target `raft`),
//! so the daemon has one log stream with one filter.

use std::fmt::{self, Write as _};

use slog::{Level, OwnedKVList, Record, KV};

/// A `slog::Drain` that re-emits every record as a `tracing` event.
pub(crate) struct TracingDrain;

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<(), slog::Never> {
        // Rendered lazily: only formatted if the subscriber wants the event.
        let line = Line { record, values };
        match record.level() {
            Level::Critical | Level::Error => tracing::error!(target: "raft", "{line}"),
            Level::Warning => tracing::warn!(target: "raft", "{line}"),
            Level::Info => tracing::info!(target: "raft", "{line}"),
            Level::Debug => tracing::debug!(target: "raft", "{line}"),
            Level::Trace => tracing::trace!(target: "raft", "{line}"),
        }
        Ok(())
    }
}

/// The message followed by ` key=value` for the record's and the logger's pairs.
struct Line<'a> {
    record: &'a Record<'a>,
    values: &'a OwnedKVList,
}

impl fmt::Display for Line<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = KvText(String::new());
        // Serialization into a String cannot fail except through our own emit, which does not.
        let _ = self.record.kv().serialize(self.record, &mut out);
        let _ = self.values.serialize(self.record, &mut out);
        write!(f, "{}{}", self.record.msg(), out.0)
    }
}

struct KvText(String);

impl slog::Serializer for KvText {
    fn emit_arguments(&mut self, key: slog::Key, val: &fmt::Arguments<'_>) -> slog::Result {
        let _ = write!(self.0, " {key}={val}");
        Ok(())
    }
}

/// The root logger handed to the `RawNode` (raft-rs adds `raft_id` itself).
pub(crate) fn logger() -> slog::Logger {
    slog::Logger::root(TracingDrain, slog::o!())
}
