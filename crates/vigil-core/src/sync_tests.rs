use super::*;
use crate::coordinator::Coordinator;
use crate::engine::Input;
use crate::report::{DataDir, PgStatus, ReplicaStatus};
use crate::state::{Command, EventKind, Member};
use crate::timing::Timings;
use std::time::{Duration, Instant};

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[test]
fn setting_and_parsing_agree() {
    let mut s = SyncState { mode: SyncMode::On, count: 1, holders: set(&["a"]), standbys: BTreeSet::new() };
    assert_eq!(setting(&s), "", "on with nobody named: asynchronous");
    s.mode = SyncMode::Strict;
    assert_eq!(setting(&s), "ANY 1 (\"pgvigil:no-standby\")", "strict with nobody named: commits wait");
    assert_eq!(parse_setting(&setting(&s)), Some(BTreeSet::new()));
    s.standbys = set(&["b", "Odd \"name\""]);
    s.holders = s.standbys.clone();
    s.count = 5;
    assert_eq!(setting(&s), "ANY 2 (\"Odd \"\"name\"\"\", \"b\")", "count capped at the names");
    assert_eq!(parse_setting(&setting(&s)), Some(s.standbys.clone()));
    s.mode = SyncMode::Off;
    assert_eq!(setting(&s), "");
    assert_eq!(parse_setting("FIRST 1 (x, Y)"), Some(set(&["x", "y"])));
    assert_eq!(parse_setting("x,y"), Some(set(&["x", "y"])));
    assert_eq!(parse_setting("2 (x, \"y\")"), Some(set(&["x", "y"])));
    assert_eq!(parse_setting("ANY (x)"), None);
    assert_eq!(parse_setting("ANY 1 (\"x)"), None);
    assert_eq!(parse_setting("ANY 1 (x,,y)"), None);
}

/// A pure model of a three-member cluster: the coordinator's decisions are applied, and the
/// primary's PostgreSQL follows the committed `synchronous_standby_names` one loop later.
struct World {
    c: Coordinator,
    s: ClusterState,
    t: Instant,
    /// What the primary's PostgreSQL names now.
    named: BTreeSet<String>,
    primary_lsn: u64,
    /// Flush position and liveness of each standby.
    standbys: Vec<(String, u64, bool)>,
    /// Whether the primary's host lives (reports, and its standbys stream from it).
    primary_alive: bool,
    /// Members tagged `nosync`.
    nosync: BTreeSet<String>,
}

impl World {
    fn new(mode: SyncMode) -> World {
        let t = Instant::now();
        let mut c = Coordinator::new(["a", "b", "c"].map(String::from), Timings::default()).with_sync(mode, 1);
        c.set_leader(t, Some(1));
        let mut s = ClusterState::default();
        for n in ["a", "b", "c"] {
            let m = Member { kind: MemberKind::Postgres, ..Default::default() };
            s.apply(&Command::UpsertMember { name: n.into(), member: m, at_unix_ms: 0 }).expect("member");
        }
        s.apply(&Command::Bootstrap { member: "a".into(), at_unix_ms: 0 }).expect("bootstrap");
        // The standbys are a little behind: what they flushed is not yet all that was written.
        let standbys = vec![("b".into(), 90, true), ("c".into(), 90, true)];
        World {
            c,
            s,
            t,
            named: BTreeSet::new(),
            primary_lsn: 100,
            standbys,
            primary_alive: true,
            nosync: BTreeSet::new(),
        }
    }

    fn report(&self, name: &str) -> HealthReport {
        let primary = self.s.is_primary(name);
        let (lsn, alive) = if primary {
            (self.primary_lsn, true)
        } else {
            self.standbys.iter().find(|(n, ..)| n == name).map_or((0, false), |(_, l, a)| (*l, *a))
        };
        HealthReport {
            member: name.into(),
            kind: MemberKind::Postgres,
            pg_host: String::new(),
            pg_port: 0,
            tags: crate::Tags::new().with(crate::tags::NOSYNC, self.nosync.contains(name)),
            pg: PgStatus {
                running: alive,
                in_recovery: !primary,
                timeline: 1,
                current_lsn: if primary { lsn } else { 0 },
                received_lsn: lsn,
                replay_lsn: lsn,
                data_dir: if primary { DataDir::Primary } else { DataDir::Standby },
                streaming: !primary && alive && self.primary_alive,
                replicas: if primary {
                    self.standbys
                        .iter()
                        .filter(|(_, _, a)| *a)
                        .map(|(n, l, _)| ReplicaStatus { member: n.clone(), flush_lsn: *l, streaming: true })
                        .collect()
                } else {
                    Vec::new()
                },
                sync_names: primary.then(|| self.named.clone()),
                ..Default::default()
            },
            epoch_seen: self.s.epoch,
            proxy: None,
            backup_source: None,
        }
    }

    /// One loop: live members report, the coordinator decides, decisions are applied, then the
    /// primary's PostgreSQL takes the committed setting. Returns the sync commands committed.
    fn step(&mut self) -> Vec<SyncState> {
        self.t += Duration::from_millis(250);
        let mut names: Vec<String> = self.primary_alive.then(|| "a".to_string()).into_iter().collect();
        names.extend(self.standbys.iter().filter(|(_, _, a)| *a).map(|(n, ..)| n.clone()));
        for n in names {
            let r = self.report(&n);
            let answer = self.c.step(self.t, &self.s, Input::Report(Box::new(r))).answer;
            if let Some(pending) = answer.and_then(|a| a.pending) {
                self.c.step(self.t, &self.s, Input::LeaseConfirmed(pending));
            }
        }
        let mut out = Vec::new();
        for cmd in self.c.decide(self.t, &self.s, 0) {
            if let Command::Sync { sync, .. } = &cmd {
                out.push(sync.clone());
            }
            self.s.apply(&cmd).expect("apply");
            assert!(self.s.sync.standbys.is_subset(&self.s.sync.holders));
        }
        // PostgreSQL never names anyone the committed state does not hold.
        self.named = parse_setting(&setting(&self.s.sync)).expect("parse");
        assert!(self.named.is_subset(&self.s.sync.holders), "{:?} named, holders {:?}", self.named, self.s.sync);
        // Nobody named: commits are acknowledged on the primary alone, which must be a holder.
        let primary = self.s.primary.clone().unwrap_or_default();
        if self.s.sync.mode.is_sync() && self.named.is_empty() {
            assert!(self.s.sync.holders.contains(&primary), "acknowledged locally, holders {:?}", self.s.sync);
        }
        out
    }

    fn settle(&mut self) {
        for _ in 0..20 {
            self.step();
        }
    }

    fn kill(&mut self, name: &str) {
        self.standbys.iter_mut().filter(|(n, ..)| n == name).for_each(|s| s.2 = false);
    }

    fn advance(&mut self, by: u64) {
        self.primary_lsn += by;
        for s in self.standbys.iter_mut().filter(|s| s.2) {
            s.1 = self.primary_lsn;
        }
    }
}

#[test]
fn a_standby_becomes_synchronous_and_then_the_only_holder() {
    let mut w = World::new(SyncMode::Strict);
    let first = w.step();
    assert_eq!(first[0].holders, set(&["a"]), "strict starts with the primary holding everything");
    let second = w.step();
    assert_eq!((second[0].holders.clone(), second[0].standbys.clone()), (set(&["a", "b"]), set(&["b"])));
    // b has not confirmed anything written after it was named: a stays a holder.
    w.settle();
    assert_eq!(w.s.sync.holders, set(&["a", "b"]));
    w.advance(50);
    w.settle();
    assert_eq!((w.s.sync.holders.clone(), w.s.sync.standbys.clone()), (set(&["b"]), set(&["b"])));
}

#[test]
fn a_nosync_standby_is_never_named() {
    let mut w = World::new(SyncMode::On);
    w.nosync.insert("b".into());
    w.settle();
    w.advance(10);
    w.settle();
    assert_eq!((w.s.sync.holders.clone(), w.s.sync.standbys.clone()), (set(&["c"]), set(&["c"])));
    // With c gone too, `on` degrades rather than name b: the primary holds every commit again.
    w.kill("c");
    w.t += Duration::from_secs(3);
    for _ in 0..20 {
        w.step();
        assert!(!w.named.contains("b"), "b is tagged nosync: {:?}", w.s.sync);
    }
    assert!(w.s.sync.holders.contains("a") && w.s.sync.standbys.is_empty(), "{:?}", w.s.sync);
}

#[test]
fn a_dead_synchronous_standby_is_replaced_without_a_gap() {
    let mut w = World::new(SyncMode::Strict);
    w.settle();
    w.advance(10);
    w.settle();
    assert_eq!(w.s.sync.holders, set(&["b"]));
    w.primary_lsn += 10;
    w.kill("b");
    w.t += Duration::from_secs(3);
    let mut seen = Vec::new();
    for _ in 0..20 {
        seen.extend(w.step());
    }
    // c is added (named and holder) before b stops being named; b stays a holder until c has
    // flushed past the primary's position at the moment b stopped being named.
    assert_eq!(seen[0].standbys, set(&["b", "c"]));
    assert_eq!(seen[1].standbys, set(&["c"]));
    assert_eq!(w.s.sync.holders, set(&["b", "c"]));
    w.advance(10);
    w.settle();
    assert_eq!((w.s.sync.holders.clone(), w.s.sync.standbys.clone()), (set(&["c"]), set(&["c"])));
}

#[test]
fn a_degrade_makes_the_primary_a_holder_in_the_same_commit() {
    // The hole of issue 10, found again by the simulation (vigil-sim seed 553): the degrade was
    // committed with holders {b}; the primary then acknowledged commits alone, and a failover to
    // b before the next change (holders {a}) was committed would have lost them.
    let mut w = World::new(SyncMode::On);
    w.standbys.truncate(1);
    w.settle();
    w.advance(10);
    w.settle();
    assert_eq!((w.s.sync.standbys.clone(), w.s.sync.holders.clone()), (set(&["b"]), set(&["b"])));
    // The primary restarted in place: its first report lists no standby streaming yet.
    w.standbys[0].2 = false;
    let degrade = w.step();
    assert_eq!(degrade.len(), 1);
    assert_eq!((degrade[0].standbys.clone(), degrade[0].holders.clone()), (set(&[]), set(&["a", "b"])));
    assert!(w.c.sync_failover_blocked(w.t, &w.s).is_some(), "only a holds the commits acknowledged now");
}

#[test]
fn a_late_report_of_the_primary_does_not_stand_for_its_present() {
    // Found by the simulation (vigil-sim seed 553): after a degrade, a report of the primary sent
    // before it (naming b, b streaming) arrived late; the coordinator named b again and, on the
    // same old report, dropped the primary from the holders, although it had acknowledged
    // commits alone since the degrade.
    let mut w = World::new(SyncMode::On);
    w.standbys.truncate(1);
    w.settle();
    w.advance(10);
    w.settle();
    let old = w.report("a");
    w.standbys[0].2 = false;
    w.step();
    assert_eq!((w.s.sync.standbys.clone(), w.s.sync.holders.clone()), (set(&[]), set(&["a", "b"])));
    w.primary_lsn += 30; // acknowledged by a alone
    w.step();
    assert_eq!(w.s.sync.holders, set(&["a"]));
    w.c.on_report(w.t, old, &w.s);
    for _ in 0..3 {
        w.t += Duration::from_millis(10);
        for cmd in w.c.decide(w.t, &w.s, 0) {
            w.s.apply(&cmd).expect("apply");
        }
        assert!(w.s.sync.holders.contains("a"), "holders {:?}", w.s.sync.holders);
    }
}

#[test]
fn on_degrades_to_async_and_strict_keeps_waiting() {
    for mode in [SyncMode::On, SyncMode::Strict] {
        let mut w = World::new(mode);
        w.standbys.truncate(1);
        w.settle();
        w.advance(10);
        w.settle();
        assert_eq!(w.s.sync.standbys, set(&["b"]));
        w.kill("b");
        w.t += Duration::from_secs(3);
        w.settle();
        match mode {
            SyncMode::On => {
                assert_eq!((w.s.sync.standbys.clone(), w.s.sync.holders.clone()), (set(&[]), set(&["a"])));
                let degraded =
                    w.s.history
                        .iter()
                        .any(|e| e.kind == EventKind::Synchronous && e.detail.contains("degraded to asynchronous"));
                assert!(degraded, "{:?}", w.s.history);
            }
            _ => assert_eq!((w.s.sync.standbys.clone(), w.s.sync.holders.clone()), (set(&["b"]), set(&["b"]))),
        }
    }
}

#[test]
fn failover_in_sync_mode_promotes_only_a_holder_and_only_when_all_are_heard() {
    let mut w = World::new(SyncMode::On);
    w.settle();
    w.advance(10);
    w.settle();
    assert_eq!(w.s.sync.holders, set(&["b"]));
    // c has more WAL than b (e.g. it was ahead when a died), but only b holds every acked commit.
    w.standbys[1].1 += 1000;
    let dead_at = w.t;
    let mut t = dead_at;
    let mut promoted = None;
    while promoted.is_none() && t < dead_at + Duration::from_secs(10) {
        t += Duration::from_millis(250);
        for n in ["b", "c"] {
            let r = w.report(n);
            w.c.on_report(t, r, &w.s);
        }
        promoted = w.c.decide(t, &w.s, 0).into_iter().find_map(|c| match c {
            Command::Failover { to, .. } => Some(to),
            _ => None,
        });
    }
    assert_eq!(promoted.as_deref(), Some("b"));

    // With the primary itself a holder, nobody may be promoted.
    let mut w = World::new(SyncMode::Strict);
    w.step();
    assert_eq!(w.s.sync.holders, set(&["a"]));
    let t = w.t + Duration::from_secs(10);
    for n in ["b", "c"] {
        let r = w.report(n);
        w.c.on_report(t, r, &w.s);
    }
    assert!(w.c.decide(t, &w.s, 0).iter().all(|c| !matches!(c, Command::Failover { .. })));
    assert!(w.c.sync_failover_blocked(t, &w.s).is_some_and(|why| why.contains("only the primary")));
}

#[test]
fn failover_resets_the_holders_to_the_new_primary_and_sync_commands_are_checked() {
    let mut w = World::new(SyncMode::Strict);
    w.settle();
    w.advance(10);
    w.settle();
    let mut s = w.s.clone();
    let bad = SyncState { standbys: set(&["c"]), ..s.sync.clone() };
    let cmd = Command::Sync { epoch: s.epoch, sync: bad, reason: String::new(), at_unix_ms: 0 };
    assert!(matches!(s.apply(&cmd), Err(crate::state::Rejected::BadSyncState(_))));
    let stale = Command::Sync { epoch: 0, sync: s.sync.clone(), reason: String::new(), at_unix_ms: 0 };
    assert!(matches!(s.apply(&stale), Err(crate::state::Rejected::StaleEpoch { .. })));
    s.apply(&Command::Failover { from_epoch: s.epoch, to: "b".into(), reason: String::new(), at_unix_ms: 0 })
        .expect("failover");
    assert_eq!((s.sync.holders.clone(), s.sync.standbys.clone()), (set(&["b"]), set(&[])));
    assert_eq!(s.sync.mode, SyncMode::Strict);
}

#[test]
fn turning_sync_off_stops_naming_before_forgetting_the_holders() {
    let mut w = World::new(SyncMode::On);
    w.settle();
    w.advance(10);
    w.settle();
    w.c = std::mem::replace(&mut w.c, Coordinator::new(Vec::<String>::new(), Timings::default()))
        .with_sync(SyncMode::Off, 1);
    let first = w.step();
    assert_eq!((first[0].mode, first[0].standbys.clone()), (SyncMode::On, set(&[])));
    assert!(first[0].holders.contains("a"), "the primary acknowledges alone from now on");
    w.settle();
    assert_eq!(w.s.sync, SyncState::default());
}

#[test]
fn a_dead_primary_does_not_degrade_the_synchronous_set() {
    for mode in [SyncMode::On, SyncMode::Strict] {
        let mut w = World::new(mode);
        w.settle();
        w.advance(10);
        w.settle();
        let before = w.s.sync.clone();
        assert_eq!(before.standbys, set(&["b"]));
        // The primary's host dies: its last report stays current for report_timeout while its
        // standbys report that they no longer stream.
        w.primary_alive = false;
        let mut seen = Vec::new();
        for _ in 0..6 {
            seen.extend(w.step());
        }
        assert!(seen.is_empty(), "{mode:?}: {seen:?}");
        assert_eq!(w.s.sync, before);
    }
}

#[test]
fn a_standby_the_primary_no_longer_sees_is_dropped() {
    let mut w = World::new(SyncMode::On);
    w.settle();
    w.advance(10);
    w.settle();
    assert_eq!(w.s.sync.standbys, set(&["b"]));
    // b's PostgreSQL is gone from the primary's view while b's daemon still reports recently.
    w.kill("b");
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.extend(w.step());
    }
    assert_eq!(seen.first().map(|s| s.standbys.clone()), Some(set(&["b", "c"])), "{seen:?}");
    assert_eq!(w.s.sync.standbys, set(&["c"]));
}
