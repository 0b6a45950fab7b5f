//! raft-rs logs through `slog`; this drain forwards its records to `tracing` (target `raft`),
//! so the daemon has one log stream with one filter. raft-rs writes node ids everywhere (`cast
//! vote for 8626127325075187499`, `to=[...]`, `raft_id=...`): the drain writes their names.

use std::borrow::Cow;

use std::fmt::{self, Write as _};

use slog::{Level, OwnedKVList, Record, KV};

use crate::PeerNames;

/// A `slog::Drain` that re-emits every record as a `tracing` event, node ids named.
pub(crate) struct TracingDrain {
    names: PeerNames,
}

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<(), slog::Never> {
        // Rendered lazily: only formatted if the subscriber wants the event.
        let line = Line { record, values, names: &self.names };
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
    names: &'a PeerNames,
}

impl fmt::Display for Line<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = KvText(String::new());
        // Serialization into a String cannot fail except through our own emit, which does not.
        let _ = self.record.kv().serialize(self.record, &mut out);
        let _ = self.values.serialize(self.record, &mut out);
        let text = format!("{}{}", self.record.msg(), out.0);
        f.write_str(&named(&text, self.names))
    }
}

/// `text` with every number that is a named node's id replaced by the name. Ids are 64-bit
/// hashes in pgvigil, so no term, index or count is mistaken for one.
fn named<'a>(text: &'a str, names: &PeerNames) -> Cow<'a, str> {
    let mut out = String::new();
    let mut copied = 0;
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if !bytes[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        let name = text[start..i].parse::<u64>().ok().and_then(|id| names.get(id));
        if let Some(name) = name {
            out.push_str(&text[copied..start]);
            out.push_str(name);
            copied = i;
        }
    }
    if copied == 0 {
        return Cow::Borrowed(text);
    }
    out.push_str(&text[copied..]);
    Cow::Owned(out)
}

struct KvText(String);

impl slog::Serializer for KvText {
    fn emit_arguments(&mut self, key: slog::Key, val: &fmt::Arguments<'_>) -> slog::Result {
        let _ = write!(self.0, " {key}={val}");
        Ok(())
    }
}

/// The root logger handed to the `RawNode` (raft-rs adds `raft_id` itself).
pub(crate) fn logger(names: PeerNames) -> slog::Logger {
    slog::Logger::root(TracingDrain { names }, slog::o!())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn node_ids_become_names_and_other_numbers_stay() {
        let names = PeerNames::new(BTreeMap::from([
            (8626129524098443921, "pg1".to_string()),
            (8626128424586815710, "pg2".to_string()),
        ]));
        let line = "cast vote for 8626129524098443921 [logterm: 0, index: 12] at term 3 \
                    to=[8626129524098443921, 8626128424586815710, 55] raft_id=8626128424586815710";
        assert_eq!(
            named(line, &names),
            "cast vote for pg1 [logterm: 0, index: 12] at term 3 to=[pg1, pg2, 55] raft_id=pg2"
        );
        assert!(matches!(named("became leader at term 2", &names), Cow::Borrowed(_)));
        assert_eq!(named("99999999999999999999999 8626129524098443921", &names), "99999999999999999999999 pg1");
    }
}
