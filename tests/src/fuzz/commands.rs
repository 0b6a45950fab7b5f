//! Committed commands and snapshots, as the Raft state machine (`Replicated`) gets them: the
//! encoding of any command (valid, out of range, for the wrong epoch or request), with its JSON
//! or its bytes changed, or arbitrary bytes; snapshots of several cluster states, changed alike.
//!
//! Properties: never a panic; a command that does not decode, or is refused, leaves the state as
//! it was; applying is deterministic; a state survives its snapshot; a restored snapshot takes
//! the commands decided for it.

use super::mutate;
use super::Outcome;
use pgvigil::fuzzing::Replicated;
use proptest::collection::{btree_set, vec};
use proptest::prelude::*;
use vigil_core::report::{RejoinMethod, RejoinRecord};
use vigil_core::sync::SyncState;
use vigil_core::{ClusterState, Command, Member, MemberKind, SyncMode, Tags};
use vigil_raft::StateMachine;

const NOW_MS: u64 = 1_796_083_200_000;

fn pg(port: u16) -> Member {
    Member { kind: MemberKind::Postgres, pg_host: "127.0.0.1".into(), pg_port: port, ..Member::default() }
}

fn applied(mut s: ClusterState, cmds: Vec<Command>) -> ClusterState {
    for c in cmds {
        let _ = s.apply(&c);
    }
    s
}

/// The cluster states the targets start from: members only (a, b, c; w a witness; x tagged
/// nofailover); a bootstrapped one (a primary, synchronous); one with a scheduled switchover to
/// b; one paused after a failover to b.
pub fn states() -> Vec<ClusterState> {
    let upsert = |name: &str, member: Member| Command::UpsertMember { name: name.into(), member, at_unix_ms: NOW_MS };
    let members = applied(
        ClusterState::default(),
        vec![
            upsert("a", pg(5432)),
            upsert("b", pg(5433)),
            upsert("c", pg(5434)),
            upsert("w", Member { kind: MemberKind::Witness, ..Member::default() }),
            upsert("x", Member { tags: Tags::new().with("nofailover", true), ..pg(5435) }),
        ],
    );
    let sync =
        SyncState { mode: SyncMode::On, count: 1, holders: ["a".to_string()].into(), standbys: Default::default() };
    let bootstrapped = applied(
        members.clone(),
        vec![
            Command::Bootstrap { member: "a".into(), at_unix_ms: NOW_MS },
            Command::Sync { epoch: 1, sync, reason: "on".into(), at_unix_ms: NOW_MS },
        ],
    );
    let scheduled = applied(
        bootstrapped.clone(),
        vec![Command::BeginSwitchover {
            id: 1,
            from_epoch: 1,
            to: "b".into(),
            forced: false,
            not_before_unix_ms: NOW_MS + 3_600_000,
            reason: "requested by the operator".into(),
            at_unix_ms: NOW_MS,
        }],
    );
    let paused = applied(
        bootstrapped.clone(),
        vec![
            Command::Failover { from_epoch: 1, to: "b".into(), reason: "a died".into(), at_unix_ms: NOW_MS },
            Command::SetPaused { paused: true, reason: "upgrade".into(), at_unix_ms: NOW_MS },
        ],
    );
    vec![members, bootstrapped, scheduled, paused]
}

/// Small numbers hit the current epoch and the next request id; the others are out of range.
fn number() -> impl Strategy<Value = u64> {
    prop_oneof![4 => 0..4u64, 1 => any::<u64>(), 1 => Just(u64::MAX)]
}

fn ms() -> impl Strategy<Value = u64> {
    prop_oneof![3 => Just(NOW_MS), 1 => any::<u64>()]
}

fn member() -> impl Strategy<Value = Member> {
    let kind = prop::sample::select(vec![MemberKind::Postgres, MemberKind::Witness]);
    (kind, mutate::odd_text(), any::<u16>(), any::<bool>(), any::<i32>(), mutate::odd_text()).prop_map(
        |(kind, pg_host, pg_port, nofailover, priority, zone)| Member {
            kind,
            pg_host,
            pg_port,
            tags: Tags::new().with("nofailover", nofailover).with("priority", priority).with("zone", zone),
        },
    )
}

fn sync_state() -> impl Strategy<Value = SyncState> {
    let mode = prop::sample::select(vec![SyncMode::Off, SyncMode::On, SyncMode::Strict]);
    (mode, any::<u32>(), btree_set(mutate::name(), 0..3), btree_set(mutate::name(), 0..3))
        .prop_map(|(mode, count, holders, standbys)| SyncState { mode, count, holders, standbys })
}

/// A rewind/re-clone record (also a report's `last_rejoin`).
pub fn rejoin() -> impl Strategy<Value = RejoinRecord> {
    let method = prop::sample::select(vec![RejoinMethod::Rewind, RejoinMethod::Reclone]);
    (ms(), method, any::<bool>(), any::<u64>(), mutate::odd_text(), prop::option::of(number())).prop_map(
        |(started_unix_ms, method, ok, took_ms, detail, reinit)| RejoinRecord {
            started_unix_ms,
            method,
            ok,
            took_ms,
            detail,
            reinit,
        },
    )
}

pub fn command() -> impl Strategy<Value = Command> {
    let name = mutate::name;
    let reason = mutate::odd_text;
    prop_oneof![
        (name(), member(), ms()).prop_map(|(name, member, at_unix_ms)| Command::UpsertMember {
            name,
            member,
            at_unix_ms
        }),
        (name(), ms()).prop_map(|(member, at_unix_ms)| Command::Bootstrap { member, at_unix_ms }),
        (name(), number(), reason(), ms()).prop_map(|(member, epoch, reason, at_unix_ms)| Command::AbandonBootstrap {
            member,
            epoch,
            reason,
            at_unix_ms
        }),
        (number(), name(), reason(), ms()).prop_map(|(from_epoch, to, reason, at_unix_ms)| Command::Failover {
            from_epoch,
            to,
            reason,
            at_unix_ms
        }),
        (number(), sync_state(), reason(), ms()).prop_map(|(epoch, sync, reason, at_unix_ms)| Command::Sync {
            epoch,
            sync,
            reason,
            at_unix_ms
        }),
        (name(), rejoin()).prop_map(|(member, record)| Command::RecordRejoin { member, record }),
        (any::<bool>(), reason(), ms()).prop_map(|(paused, reason, at_unix_ms)| Command::SetPaused {
            paused,
            reason,
            at_unix_ms
        }),
        ((number(), number(), name(), any::<bool>()), (prop_oneof![Just(0), ms()], reason(), ms())).prop_map(
            |((id, from_epoch, to, forced), (not_before_unix_ms, reason, at_unix_ms))| Command::BeginSwitchover {
                id,
                from_epoch,
                to,
                forced,
                not_before_unix_ms,
                reason,
                at_unix_ms,
            }
        ),
        (number(), ms()).prop_map(|(id, at_unix_ms)| Command::StartSwitchover { id, at_unix_ms }),
        (number(), reason(), ms()).prop_map(|(id, reason, at_unix_ms)| Command::CancelSwitchover {
            id,
            reason,
            at_unix_ms
        }),
        (number(), prop::option::of(any::<u64>()), reason(), ms())
            .prop_map(|(id, lsn, reason, at_unix_ms)| Command::CompleteSwitchover { id, lsn, reason, at_unix_ms }),
        (number(), name(), ms()).prop_map(|(id, member, at_unix_ms)| Command::RequestReinit { id, member, at_unix_ms }),
    ]
}

const COMMAND_KEYS: &[&str] = &[
    "op",
    "name",
    "member",
    "at_unix_ms",
    "epoch",
    "from_epoch",
    "to",
    "reason",
    "sync",
    "record",
    "paused",
    "id",
    "forced",
    "not_before_unix_ms",
    "lsn",
    "kind",
    "pg_port",
    "mode",
    "holders",
    "standbys",
    "started_unix_ms",
];

/// A command's bytes: its encoding, with its JSON or bytes changed or not, or arbitrary bytes.
fn command_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => command().prop_map(|c| c.encode().expect("a command encodes")),
        2 => (command(), vec(mutate::json_edit(COMMAND_KEYS), 1..3)).prop_map(|(c, e)| {
            let mut v = serde_json::to_value(&c).unwrap_or_default();
            mutate::apply_json(&mut v, &e);
            v.to_string().into_bytes()
        }),
        2 => (command(), mutate::edits()).prop_map(|(c, e)| mutate::apply(c.encode().expect("a command encodes"), &e)),
        1 => vec(any::<u8>(), 0..64),
    ]
}

#[derive(Clone, Debug)]
pub struct CommandInput {
    /// Which of [`states`] (modulo their number) the commands are applied to.
    pub state: usize,
    pub commands: Vec<Vec<u8>>,
}

pub fn input() -> impl Strategy<Value = CommandInput> {
    (any::<usize>(), vec(command_bytes(), 1..6)).prop_map(|(state, commands)| CommandInput { state, commands })
}

pub fn check(input: &CommandInput) -> Outcome {
    let states = states();
    let mut member = Replicated { state: states[input.state % states.len()].clone() };
    let mut outcome = Outcome::Rejected;
    for (index, bytes) in (1..).zip(&input.commands) {
        let before = member.state.clone();
        let mut other = before.clone();
        let result = other.apply_bytes(bytes);
        member.apply(index, bytes);
        assert_eq!(member.state, other, "two members applied the same command differently");
        match result {
            Ok(()) => outcome = Outcome::Accepted,
            Err(e) => assert_eq!(member.state, before, "refused ({e}), yet the state changed"),
        }
    }
    let restored = Replicated::restore(&member.snapshot().expect("a state serialises")).map(|r| r.state);
    assert_eq!(restored.as_ref().ok(), Some(&member.state), "the state changed through its snapshot: {restored:?}");
    outcome
}

const STATE_KEYS: &[&str] = &[
    "epoch",
    "primary",
    "bootstrapped_by",
    "bootstrap_epoch",
    "members",
    "history",
    "sync",
    "rejoins_recorded",
    "paused",
    "switchover",
    "last_switchover",
    "requests",
    "reinit",
    "previous_primary",
    "kind",
    "pg_host",
    "pg_port",
    "nofailover",
    "priority",
    "mode",
    "count",
    "holders",
    "standbys",
    "id",
    "from_epoch",
    "to",
    "started",
    "not_before_unix_ms",
];

#[derive(Clone, Debug)]
pub struct SnapshotInput {
    pub bytes: Vec<u8>,
}

pub fn snapshot_input() -> impl Strategy<Value = SnapshotInput> {
    let base = any::<usize>().prop_map(|i| {
        let states = states();
        Replicated { state: states[i % states.len()].clone() }.snapshot().expect("a state serialises")
    });
    // The counters at the ends of their range (what no cluster reaches, and a bad snapshot has).
    let counter = prop::sample::select(vec!["epoch", "bootstrap_epoch", "requests"]);
    let edge = prop::sample::select(vec![0, 1, u64::MAX - 1, u64::MAX]);
    let bytes = prop_oneof![
        2 => (base.clone(), counter, edge).prop_map(|(b, counter, n)| {
            let mut v: serde_json::Value = serde_json::from_slice(&b).unwrap_or_default();
            v[counter] = n.into();
            v.to_string().into_bytes()
        }),
        4 => (base.clone(), vec(mutate::json_edit(STATE_KEYS), 1..4)).prop_map(|(b, e)| {
            let mut v: serde_json::Value = serde_json::from_slice(&b).unwrap_or_default();
            mutate::apply_json(&mut v, &e);
            v.to_string().into_bytes()
        }),
        2 => (base, mutate::edits()).prop_map(|(b, e)| mutate::apply(b, &e)),
        1 => vec(any::<u8>(), 0..64),
    ];
    bytes.prop_map(|bytes| SnapshotInput { bytes })
}

/// Commands decided for `s` (its epoch, its next request id), for every member it knows.
fn decided_for(s: &ClusterState) -> Vec<Command> {
    let reason = || "fuzz".to_string();
    let next = s.requests.wrapping_add(1);
    let mut cmds = Vec::new();
    for name in s.members.keys().chain(s.primary.iter()).cloned() {
        let sync =
            SyncState { mode: SyncMode::On, count: 1, holders: [name.clone()].into(), standbys: Default::default() };
        cmds.extend([
            Command::Bootstrap { member: name.clone(), at_unix_ms: NOW_MS },
            Command::AbandonBootstrap { member: name.clone(), epoch: s.epoch, reason: reason(), at_unix_ms: NOW_MS },
            Command::Failover { from_epoch: s.epoch, to: name.clone(), reason: reason(), at_unix_ms: NOW_MS },
            Command::Sync { epoch: s.epoch, sync, reason: reason(), at_unix_ms: NOW_MS },
            Command::BeginSwitchover {
                id: next,
                from_epoch: s.epoch,
                to: name.clone(),
                forced: true,
                not_before_unix_ms: 0,
                reason: reason(),
                at_unix_ms: NOW_MS,
            },
            Command::RequestReinit { id: next, member: name, at_unix_ms: NOW_MS },
        ]);
    }
    if let Some(sw) = &s.switchover {
        cmds.push(Command::StartSwitchover { id: sw.id, at_unix_ms: NOW_MS });
        cmds.push(Command::CompleteSwitchover { id: sw.id, lsn: Some(1), reason: reason(), at_unix_ms: NOW_MS });
        cmds.push(Command::CancelSwitchover { id: sw.id, reason: reason(), at_unix_ms: NOW_MS });
    }
    cmds
}

pub fn check_snapshot(input: &SnapshotInput) -> Outcome {
    let Ok(restored) = Replicated::restore(&input.bytes) else { return Outcome::Rejected };
    for cmd in decided_for(&restored.state) {
        let mut member = restored.clone();
        let before = member.state.clone();
        if let Err(e) = member.state.apply(&cmd) {
            assert_eq!(member.state, before, "refused ({e}), yet the state changed");
        }
    }
    let again = Replicated::restore(&restored.snapshot().expect("a state serialises")).map(|r| r.state);
    assert_eq!(again.as_ref().ok(), Some(&restored.state), "the state changed through its snapshot: {again:?}");
    Outcome::Accepted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_starting_states_are_what_they_say() {
        let s = states();
        assert_eq!(s[0].members.len(), 5);
        assert_eq!((s[1].epoch, s[1].primary.as_deref()), (1, Some("a")));
        assert_eq!(s[2].switchover.as_ref().map(|s| s.to.as_str()), Some("b"));
        assert!(s[3].paused && s[3].primary.as_deref() == Some("b"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        #[test]
        fn refused_commands_change_nothing(input in input()) {
            check(&input);
        }

        #[test]
        fn snapshots_never_panic(input in snapshot_input()) {
            check_snapshot(&input);
        }
    }
}
