//! Peer messages: health reports (JSON of the core's report, `convert::decode_report`, then the
//! coordinator's steps for the report and a tick, whose commands are applied), and raft-rs messages and conf changes
//! (rust-protobuf, as `RaftHandle::step` and the apply loop decode them), from arbitrary bytes and
//! from valid encodings with bytes changed.
//!
//! Properties: never a panic; a malformed report is refused with a reason; an accepted report
//! encodes and decodes to itself; a decoded raft message encodes again, and that decodes.

use super::commands;
use super::mutate;
use super::Outcome;
use pgvigil::convert::{decode_report, encode_report};
use pgvigil::fuzzing::Replicated;
use proptest::collection::vec;
use proptest::prelude::*;
use prost::Message as _;
use protobuf::{Message as _, ProtobufEnum};
use raft::eraftpb::{ConfChange, ConfChangeV2, Entry, EntryType, Message, MessageType, Snapshot};
use std::time::{Duration, Instant};
use vigil_core::report::{BootstrapFailure, ReplicaStatus, SwitchoverStop};
use vigil_core::{Coordinator, DataDir, HealthReport, Input, MemberKind, PgStatus, Tags, Timings};
use vigil_raft::proto;
use vigil_raft::StateMachine;

fn pg_status() -> impl Strategy<Value = PgStatus> {
    let flags = vec(any::<bool>(), 9);
    let lsns = (any::<u32>(), any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>());
    let replica = (mutate::name(), any::<u64>(), any::<bool>())
        .prop_map(|(member, flush_lsn, streaming)| ReplicaStatus { member, flush_lsn, streaming });
    let rejoin = commands::rejoin();
    let stop = (any::<u64>(), any::<u64>(), any::<u64>(), any::<u32>())
        .prop_map(|(epoch, id, lsn, timeline)| SwitchoverStop { epoch, id, lsn, timeline });
    let failure = (any::<u64>(), mutate::odd_text()).prop_map(|(epoch, error)| BootstrapFailure { epoch, error });
    let data_dir = prop::sample::select(vec![
        DataDir::Unknown,
        DataDir::Empty,
        DataDir::Primary,
        DataDir::Standby,
        DataDir::Foreign,
    ]);
    let parts = (
        vec(replica, 0..3),
        vec(mutate::name(), 0..3),
        prop::option::of(rejoin),
        prop::option::of(stop),
        prop::option::of(failure),
        data_dir,
        prop::option::of(mutate::odd_text()),
    );
    (flags, lsns, parts).prop_map(|(f, l, p)| PgStatus {
        running: f[0],
        in_recovery: f[1],
        needs_rejoin: f[2],
        streaming: f[3],
        unresponsive: f[4],
        timeline: l.0,
        current_lsn: l.1,
        received_lsn: l.2,
        replay_lsn: l.3,
        down_for: Duration::from_millis(if f[6] { l.4 } else { 0 }),
        replicas: p.0,
        sync_names: f[5].then(|| p.1.into_iter().collect()),
        last_rejoin: p.2,
        switchover_stop: p.3,
        bootstrap_failed: p.4,
        data_dir: p.5,
        data_dir_problem: p.6,
        replay_paused: f[7],
    })
}

fn tags() -> impl Strategy<Value = Tags> {
    let key = prop_oneof![3 => prop::sample::select(vec!["nofailover", "priority", "noloadbalance", "nosync", "zone"]).prop_map(String::from), 1 => mutate::odd_text()];
    let value = prop_oneof![
        prop::sample::select(vec!["true", "false", "0", "-1", "2147483648"]).prop_map(String::from),
        mutate::odd_text(),
    ];
    prop::collection::btree_map(key, value, 0..4).prop_map(|m| m.into_iter().collect())
}

fn report() -> impl Strategy<Value = HealthReport> {
    let kind = prop::sample::select(vec![MemberKind::Postgres, MemberKind::Witness]);
    let head = (mutate::name(), kind, mutate::odd_text(), any::<u16>(), any::<u64>());
    (head, tags(), pg_status()).prop_map(|((member, kind, pg_host, pg_port, epoch_seen), tags, pg)| HealthReport {
        member,
        kind,
        pg_host,
        pg_port,
        tags,
        pg,
        proxy: None,
        backup_source: None,
        epoch_seen,
    })
}

const REPORT_KEYS: &[&str] =
    &["member", "kind", "pg_host", "pg_port", "tags", "pg", "epoch_seen", "running", "down_for"];

/// The `report_json` of a `Report` call: arbitrary bytes, a report's JSON with bytes changed, or
/// with its values, keys and nesting changed.
pub fn report_input() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => vec(any::<u8>(), 0..128),
        2 => (report(), mutate::edits()).prop_map(|(r, e)| {
            mutate::apply(encode_report(&r).expect("a report encodes").into_bytes(), &e)
        }),
        2 => (report(), vec(mutate::json_edit(REPORT_KEYS), 1..4)).prop_map(|(r, e)| {
            let mut v = serde_json::to_value(&r).expect("a report encodes");
            mutate::apply_json(&mut v, &e);
            v.to_string().into_bytes()
        }),
    ]
}

pub fn check_report(bytes: &Vec<u8>) -> Outcome {
    // prost refuses a string field that is not UTF-8.
    let Ok(json) = std::str::from_utf8(bytes.as_slice()) else { return Outcome::Rejected };
    let report = match decode_report(json) {
        Ok(r) => r,
        Err(why) => {
            assert!(!why.trim().is_empty(), "a report refused without a reason");
            return Outcome::Rejected;
        }
    };
    let again = encode_report(&report).expect("an accepted report encodes");
    assert_eq!(decode_report(&again).as_ref(), Ok(&report), "a report changed on its way back");
    // As the coordinator takes it: recorded, then decisions, whose commands every member applies.
    for state in commands::states() {
        let now = Instant::now();
        let mut c = Coordinator::new(["a", "b", "c", "w"].map(String::from), Timings::default());
        c.step(now, &state, Input::Leadership(Some(2)));
        c.step(now, &state, Input::Report(Box::new(report.clone())));
        let later = now + Duration::from_secs(30);
        c.step(later, &state, Input::Report(Box::new(report.clone())));
        let mut member = Replicated { state: state.clone() };
        let tick = Input::Tick { wall_ms: 1_796_083_200_000, keep_leadership: false };
        for cmd in c.step(later, &state, tick).proposals {
            member.apply(1, &cmd.encode().expect("a command encodes"));
        }
    }
    Outcome::Accepted
}

fn entry() -> impl Strategy<Value = Entry> {
    let kind = prop::sample::select(EntryType::values().to_vec());
    (kind, any::<u64>(), any::<u64>(), vec(any::<u8>(), 0..32), vec(any::<u8>(), 0..8)).prop_map(
        |(kind, term, index, data, context)| {
            let mut e = Entry::default();
            e.set_entry_type(kind);
            e.term = term;
            e.index = index;
            e.data = data.into();
            e.context = context.into();
            e
        },
    )
}

fn raft_message() -> impl Strategy<Value = Message> {
    let kind = prop::sample::select(MessageType::values().to_vec());
    let numbers = vec(prop_oneof![0..8u64, any::<u64>()], 9);
    let snapshot = prop::option::of((vec(any::<u8>(), 0..64), any::<u64>(), any::<u64>(), vec(any::<u64>(), 0..4)))
        .prop_map(|s| {
            s.map(|(data, index, term, voters)| {
                let mut snap = Snapshot { data: data.into(), ..Snapshot::default() };
                let meta = snap.mut_metadata();
                meta.index = index;
                meta.term = term;
                meta.mut_conf_state().voters = voters;
                snap
            })
        });
    (kind, numbers, any::<bool>(), vec(entry(), 0..3), snapshot, vec(any::<u8>(), 0..8), any::<i64>()).prop_map(
        |(kind, n, reject, entries, snapshot, context, priority)| {
            let mut m = Message::default();
            m.set_msg_type(kind);
            (m.to, m.from, m.term, m.log_term, m.index, m.commit, m.commit_term) =
                (n[0], n[1], n[2], n[3], n[4], n[5], n[6]);
            (m.request_snapshot, m.reject_hint, m.reject, m.priority) = (n[7], n[8], reject, priority);
            m.set_entries(entries.into());
            if let Some(s) = snapshot {
                m.set_snapshot(s);
            }
            m.context = context.into();
            m
        },
    )
}

/// The bytes of a `Raft` call's message: arbitrary, or a raft message's encoding with bytes
/// changed, bare or inside the gRPC `RaftMessage`.
pub fn raft_input() -> impl Strategy<Value = Vec<u8>> {
    let encoded = || {
        (raft_message(), mutate::edits()).prop_map(|(m, e)| mutate::apply(m.write_to_bytes().unwrap_or_default(), &e))
    };
    prop_oneof![
        1 => vec(any::<u8>(), 0..128),
        4 => encoded(),
        1 => encoded().prop_map(|message| proto::RaftMessage { message, sender: String::new() }.encode_to_vec()),
    ]
}

pub fn check_raft(bytes: &Vec<u8>) -> Outcome {
    // Committed conf change entries are decoded by the apply loop.
    let _ = ConfChange::parse_from_bytes(bytes);
    let _ = ConfChangeV2::parse_from_bytes(bytes);
    let inner = proto::RaftMessage::decode(bytes.as_slice()).map(|m| m.message).ok();
    let mut outcome = Outcome::Rejected;
    for b in std::iter::once(bytes).chain(inner.as_ref()) {
        // What `RaftHandle::step` does with the bytes of a `Raft` call.
        if let Ok(m) = Message::parse_from_bytes(b) {
            // raft-rs persists the entries and may send them on. Not compared: rust-protobuf keeps
            // unknown fields in a hash map (their order changes) and tells an empty one from none.
            let again = m.write_to_bytes().map(|b| Message::parse_from_bytes(&b));
            assert!(matches!(again, Ok(Ok(_))), "a decoded raft message does not encode and decode again: {again:?}");
            outcome = Outcome::Accepted;
        }
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        #[test]
        fn reports_never_panic_and_refusals_say_why(bytes in report_input()) {
            check_report(&bytes);
        }

        #[test]
        fn raft_messages_never_panic(bytes in raft_input()) {
            check_raft(&bytes);
        }
    }
}
