use super::*;
use crate::state::{Command, Member};
use AgentAction::*;

fn cluster(primary: &str, epoch: u64) -> ClusterState {
    let mut s = ClusterState::default();
    for (i, n) in ["a", "b", "c"].iter().enumerate() {
        let m =
            Member { kind: MemberKind::Postgres, pg_host: "h".into(), pg_port: 5000 + i as u16, ..Default::default() };
        s.apply(&Command::UpsertMember { name: n.to_string(), member: m, at_unix_ms: 0 }).ok();
    }
    let w = Member { kind: MemberKind::Witness, ..Default::default() };
    s.apply(&Command::UpsertMember { name: "w".into(), member: w, at_unix_ms: 0 }).ok();
    s.apply(&Command::Bootstrap { member: "a".into(), at_unix_ms: 0 }).ok();
    while s.epoch < epoch {
        let to = if s.primary.as_deref() == Some(primary) { "c" } else { primary };
        s.apply(&Command::Failover { from_epoch: s.epoch, to: to.into(), reason: String::new(), at_unix_ms: 0 }).ok();
    }
    assert_eq!((s.primary.as_deref(), s.epoch), (Some(primary), epoch));
    s
}

fn pg(data_dir: DataDir, running: bool, in_recovery: bool) -> PgStatus {
    PgStatus { data_dir, running, in_recovery, ..Default::default() }
}

fn run(me: &str, s: &ClusterState, pg: PgStatus, lease: bool, local: LocalMemory) -> Vec<AgentAction> {
    reconcile(&AgentInput {
        me,
        kind: MemberKind::Postgres,
        state: s,
        pg: &pg,
        lease_valid: lease,
        local: &local,
        diverged: None,
    })
}

fn up(port: u16) -> Upstream {
    Upstream { host: "h".into(), port }
}

fn mem(primary_epoch: Option<u64>, upstream: Option<Upstream>) -> LocalMemory {
    LocalMemory { primary_epoch, upstream, ..Default::default() }
}

#[test]
fn bootstrap_primary_inits_only_with_the_lease() {
    let s = cluster("a", 1);
    assert!(matches!(run("a", &s, pg(DataDir::Empty, false, false), false, mem(None, None))[..], [Wait(_)]));
    assert_eq!(run("a", &s, pg(DataDir::Empty, false, false), true, mem(None, None)), vec![InitDb, MarkPrimary(1)]);
    assert_eq!(run("a", &s, pg(DataDir::Primary, false, false), true, mem(Some(1), None)), vec![Start]);
    let slots = vec!["pgvigil_b".to_string(), "pgvigil_c".to_string()];
    assert_eq!(
        run("a", &s, pg(DataDir::Primary, true, false), true, mem(Some(1), None)),
        vec![PrimaryHousekeeping { slots, sync: String::new() }]
    );
}

#[test]
fn an_adopted_data_directory_becomes_primary_at_bootstrap() {
    let s = cluster("a", 1);
    assert_eq!(run("a", &s, pg(DataDir::Primary, false, false), true, mem(None, None)), vec![MarkPrimary(1), Start]);
}

#[test]
fn primary_without_lease_is_fenced() {
    let s = cluster("a", 1);
    assert!(matches!(run("a", &s, pg(DataDir::Primary, true, false), false, mem(Some(1), None))[..], [Fence(_)]));
}

#[test]
fn promoted_standby_marks_then_promotes() {
    let s = cluster("b", 2);
    let local = mem(None, Some(up(5000)));
    assert_eq!(
        run("b", &s, pg(DataDir::Standby, true, true), true, local.clone()),
        vec![MarkPrimary(2), Promote { sync: String::new() }]
    );
    assert_eq!(run("b", &s, pg(DataDir::Standby, false, false), true, local), vec![MarkPrimary(2), Start]);
    assert!(matches!(run("b", &s, pg(DataDir::Standby, true, true), false, mem(None, None))[..], [Wait(_)]));
}

#[test]
fn standbys_clone_start_and_follow() {
    let s = cluster("a", 1);
    let slot = "pgvigil_b".to_string();
    assert_eq!(
        run("b", &s, pg(DataDir::Empty, false, false), false, mem(None, None)),
        vec![Clone { from: up(5000), slot: slot.clone() }]
    );
    assert_eq!(
        run("b", &s, pg(DataDir::Standby, false, true), false, mem(None, None)),
        vec![ConfigureStandby { from: up(5000), slot: slot.clone() }, Start]
    );
    assert!(run("b", &s, pg(DataDir::Standby, true, true), false, mem(None, Some(up(5000)))).is_empty());
    // The primary moved to c: b re-points without a restart.
    let s2 = cluster("c", 2);
    assert_eq!(
        run("b", &s2, pg(DataDir::Standby, true, true), false, mem(None, Some(up(5000)))),
        vec![Follow { from: up(5002), slot }]
    );
}

fn rejoins_from(acts: &[AgentAction], port: u16) -> bool {
    acts.iter().any(|a| matches!(a, Rejoin { from, slot, .. } if *from == up(port) && slot == "pgvigil_a"))
}

#[test]
fn old_primary_never_runs_as_primary_again_and_rejoins() {
    let s = cluster("b", 2);
    // Its PostgreSQL still runs writable: fence first, then rejoin (rewind or re-clone) from b.
    let acts = run("a", &s, pg(DataDir::Primary, true, false), true, mem(Some(1), None));
    assert!(matches!(acts[..], [Fence(_), Rejoin { .. }]) && rejoins_from(&acts, 5001), "{acts:?}");
    // Down, primary data directory: rejoin, never a plain start.
    let acts = run("a", &s, pg(DataDir::Primary, false, false), false, mem(Some(1), None));
    assert!(matches!(acts[..], [Rejoin { .. }]) && rejoins_from(&acts, 5001), "{acts:?}");
    // Even without local memory (state dir lost), a primary data dir is not started as a standby.
    let acts = run("a", &s, pg(DataDir::Primary, false, false), false, mem(None, None));
    assert!(matches!(acts[..], [Rejoin { .. }]), "{acts:?}");
    // With no address for the primary it cannot rejoin: it stays down and says so.
    let mut unknown = s.clone();
    unknown.members.remove("b");
    let acts = run("a", &unknown, pg(DataDir::Primary, false, false), false, mem(Some(1), None));
    assert!(matches!(acts[..], [NeedsRejoin(_)]), "{acts:?}");
}

#[test]
fn a_diverged_standby_is_fenced_and_rejoined() {
    let s = cluster("b", 2);
    let p = pg(DataDir::Standby, true, true);
    let local = mem(None, Some(up(5001)));
    let input = AgentInput {
        me: "a",
        kind: MemberKind::Postgres,
        state: &s,
        pg: &p,
        lease_valid: false,
        local: &local,
        diverged: Some("timeline 1 ends before 0/5000000"),
    };
    let acts = reconcile(&input);
    assert!(matches!(acts[..], [Fence(_), Rejoin { .. }]) && rejoins_from(&acts, 5001), "{acts:?}");
    let p = pg(DataDir::Standby, false, true);
    let acts = reconcile(&AgentInput { pg: &p, ..input });
    assert!(matches!(acts[..], [Rejoin { .. }]), "{acts:?}");
}

#[test]
fn the_primary_runs_with_the_committed_synchronous_standbys() {
    use crate::sync::{SyncMode, SyncState};
    let mut s = cluster("a", 1);
    s.sync = SyncState {
        mode: SyncMode::Strict,
        count: 1,
        holders: ["b".to_string()].into(),
        standbys: ["b".to_string()].into(),
    };
    let acts = run("a", &s, pg(DataDir::Primary, true, false), true, mem(Some(1), None));
    assert!(matches!(&acts[..], [PrimaryHousekeeping { sync, .. }] if sync == "ANY 1 (\"b\")"), "{acts:?}");
}

#[test]
fn primary_again_at_a_later_epoch_with_a_stale_primary_data_dir_needs_rejoin() {
    let s = cluster("a", 3);
    let acts = run("a", &s, pg(DataDir::Primary, false, false), true, mem(Some(1), None));
    assert!(matches!(acts[..], [NeedsRejoin(_)]), "{acts:?}");
    let acts = run("a", &s, pg(DataDir::Empty, false, false), true, mem(Some(1), None));
    assert!(matches!(acts[..], [NeedsRejoin(_)]), "an empty data dir is never re-initialised: {acts:?}");
}

#[test]
fn nothing_before_bootstrap_and_nothing_for_witnesses() {
    let s = ClusterState::default();
    assert!(matches!(run("a", &s, pg(DataDir::Empty, false, false), false, mem(None, None))[..], [Wait(_)]));
    let s = cluster("a", 1);
    let p = pg(DataDir::Unknown, false, false);
    let local = LocalMemory::default();
    let input = AgentInput {
        me: "w",
        kind: MemberKind::Witness,
        state: &s,
        pg: &p,
        lease_valid: false,
        local: &local,
        diverged: None,
    };
    assert!(reconcile(&input).is_empty());
}

#[test]
fn divergence_from_the_primary_timeline_history() {
    let history = [(1, 0x5000000), (2, 0x7000000)];
    assert_eq!(divergence(3, 0x9000000, 3, &history), None, "same timeline");
    assert_eq!(divergence(1, 0x5000000, 3, &history), None, "exactly at the fork: can follow");
    assert_eq!(divergence(2, 0x6000000, 3, &history), None, "behind on an ancestor: can follow");
    assert!(divergence(1, 0x5000001, 3, &history).is_some_and(|d| d.contains("0/5000000")));
    assert!(divergence(4, 1, 3, &history).is_some());
    assert!(divergence(5, 1, 6, &history).is_some_and(|d| d.contains("not in the primary's history")));
    assert_eq!(divergence(0, 1, 3, &history), None, "unknown: no verdict");
}

#[test]
fn paused_leaves_postgres_alone_but_still_fences() {
    let mut s = cluster("a", 1);
    s.apply(&Command::SetPaused { paused: true, reason: String::new(), at_unix_ms: 0 }).expect("pause");
    let paused = |acts: Vec<AgentAction>| matches!(acts[..], [Wait(ref w)] if w.starts_with("paused"));
    // The primary's PostgreSQL is down: not restarted.
    assert!(paused(run("a", &s, pg(DataDir::Primary, false, false), true, mem(Some(1), None))));
    // A standby that is down, or points elsewhere, or has an empty data directory: left alone.
    assert!(paused(run("b", &s, pg(DataDir::Standby, false, true), false, mem(None, Some(up(5000))))));
    assert!(paused(run("b", &s, pg(DataDir::Standby, true, true), false, mem(None, Some(up(9))))));
    assert!(paused(run("b", &s, pg(DataDir::Empty, false, false), false, mem(None, None))));
    // Safety first: a primary without its lease, and a writable non-primary, are fenced.
    assert!(matches!(run("a", &s, pg(DataDir::Primary, true, false), false, mem(Some(1), None))[..], [Fence(_)]));
    let acts = run("b", &s, pg(DataDir::Standby, true, false), false, mem(None, None));
    assert!(matches!(acts[..], [Fence(_), NeedsRejoin(_)]), "{acts:?}");
    let acts = run("b", &s, pg(DataDir::Primary, false, false), false, mem(None, None));
    assert!(matches!(acts[..], [NeedsRejoin(_)]), "{acts:?}");
    // Resumed: back to normal.
    s.apply(&Command::SetPaused { paused: false, reason: String::new(), at_unix_ms: 0 }).expect("resume");
    assert_eq!(run("a", &s, pg(DataDir::Primary, false, false), true, mem(Some(1), None)), vec![Start]);
}

fn foreign() -> PgStatus {
    PgStatus { data_dir_problem: Some("found: notes.txt".into()), ..pg(DataDir::Foreign, false, false) }
}

fn failed(epoch: u64) -> PgStatus {
    let failure = crate::report::BootstrapFailure { epoch, error: "initdb: exit 1".into() };
    PgStatus { bootstrap_failed: Some(failure), ..pg(DataDir::Empty, false, false) }
}

/// `a` bootstrapped at epoch 1, gave it back, and `who` bootstraps again at epoch 2.
fn rebootstrapped(who: &str) -> ClusterState {
    let mut s = cluster("a", 1);
    let give_back = Command::AbandonBootstrap { member: "a".into(), epoch: 1, reason: String::new(), at_unix_ms: 0 };
    s.apply(&give_back).expect("abandon");
    s.apply(&Command::Bootstrap { member: who.into(), at_unix_ms: 0 }).expect("bootstrap again");
    assert_eq!((s.epoch, s.bootstrap_epoch), (2, 2));
    s
}

#[test]
fn bootstrap_rules() {
    type Check = fn(&[AgentAction]) -> bool;
    let cases: Vec<(&str, &str, ClusterState, PgStatus, LocalMemory, Check)> = vec![
        // A foreign data directory is never initialised over, cloned into or started.
        (
            "foreign, bootstrap primary",
            "a",
            cluster("a", 1),
            foreign(),
            mem(None, None),
            |a| matches!(a, [NeedsRejoin(w)] if w.contains("cannot use the data directory: found: notes.txt")),
        ),
        ("foreign, standby", "b", cluster("a", 1), foreign(), mem(None, None), |a| matches!(a, [NeedsRejoin(_)])),
        ("foreign, no primary yet", "b", ClusterState::default(), foreign(), mem(None, None), |a| {
            matches!(a, [NeedsRejoin(_)])
        }),
        // A failed initdb is not tried again in the same epoch: the coordinator chooses again.
        (
            "initdb failed in this epoch",
            "a",
            cluster("a", 1),
            failed(1),
            mem(None, None),
            |a| matches!(a, [Wait(w)] if w.contains("initdb failed (initdb: exit 1)")),
        ),
        // Chosen again after giving the bootstrap back: a failure of an older epoch is no reason.
        ("chosen again", "a", rebootstrapped("a"), failed(1), mem(None, None), |a| a == [InitDb, MarkPrimary(2)]),
        ("another member chosen", "b", rebootstrapped("b"), pg(DataDir::Empty, false, false), mem(None, None), |a| {
            a == [InitDb, MarkPrimary(2)]
        }),
        (
            "an adopted directory at a later bootstrap",
            "b",
            rebootstrapped("b"),
            pg(DataDir::Primary, false, false),
            mem(None, None),
            |a| a == [MarkPrimary(2), Start],
        ),
        // After the bootstrap gave way to a failover, an empty directory is never initialised.
        (
            "bootstrapper of an old epoch",
            "a",
            {
                let mut s = cluster("a", 3);
                s.bootstrap_epoch = 1;
                s
            },
            pg(DataDir::Empty, false, false),
            mem(None, None),
            |a| matches!(a, [NeedsRejoin(_)]),
        ),
        // It was a primary (initdb done, epoch marked) and its data went: never initialised again.
        (
            "marked, then emptied",
            "a",
            cluster("a", 1),
            pg(DataDir::Empty, false, false),
            mem(Some(1), None),
            |a| matches!(a, [NeedsRejoin(w)] if w.contains("data directory is empty")),
        ),
    ];
    for (name, me, s, p, local, check) in cases {
        let got = run(me, &s, p, true, local);
        assert!(check(&got), "{name}: {got:?}");
    }
}

#[test]
fn a_foreign_data_directory_is_left_alone_without_a_primary_too() {
    let mut s = cluster("a", 1);
    s.apply(&Command::AbandonBootstrap { member: "a".into(), epoch: 1, reason: String::new(), at_unix_ms: 0 })
        .expect("abandon");
    assert!(matches!(run("a", &s, failed(1), false, mem(None, None))[..], [Wait(_)]), "no primary: waits");
    assert!(matches!(run("b", &s, foreign(), false, mem(None, None))[..], [NeedsRejoin(_)]));
}
