use super::*;
use crate::engine::Input;
use crate::report::PgStatus;
use crate::sync::SyncMode;
use std::collections::BTreeSet;
use std::time::Duration;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn report(name: &str, data_dir: DataDir, running: bool, in_recovery: bool, lsn: u64) -> HealthReport {
    HealthReport {
        member: name.into(),
        kind: MemberKind::Postgres,
        pg_host: "127.0.0.1".into(),
        pg_port: 5000,
        tags: crate::Tags::new(),
        pg: PgStatus {
            running,
            in_recovery,
            timeline: 1,
            current_lsn: if in_recovery { 0 } else { lsn },
            received_lsn: lsn,
            replay_lsn: lsn,
            data_dir,
            streaming: in_recovery,
            ..Default::default()
        },
        epoch_seen: 1,
        proxy: None,
        backup_source: None,
    }
}

pub(crate) fn primary_r(name: &str, lsn: u64) -> HealthReport {
    report(name, DataDir::Primary, true, false, lsn)
}

pub(crate) fn standby_r(name: &str, lsn: u64) -> HealthReport {
    report(name, DataDir::Standby, true, true, lsn)
}

/// A coordinator (leader since t0) over a bootstrapped cluster a (primary), b, c.
fn running_cluster() -> (Coordinator, ClusterState, Instant) {
    let t0 = Instant::now();
    let mut c = Coordinator::new(["a", "b", "c"].map(String::from), Timings::default());
    c.set_leader(t0, Some(1));
    let mut s = ClusterState::default();
    for r in [primary_r("a", 100), standby_r("b", 100), standby_r("c", 100)] {
        c.on_report(t0, r, &s);
    }
    for cmd in c.decide(t0, &s, 0) {
        s.apply(&cmd).expect("apply");
    }
    assert_eq!(s.primary.as_deref(), Some("a"), "a has data, so it bootstraps");
    // The next loop sees the new epoch, as the shell's loop would right after the commit.
    assert!(c.decide(t0, &s, 0).is_empty());
    (c, s, t0)
}

/// Everyone reports at `t`; the primary's grant is recorded as the shell would.
fn round(c: &mut Coordinator, s: &ClusterState, t: Instant, reports: &[HealthReport]) {
    for r in reports {
        let answer = c.step(t, s, Input::Report(Box::new(r.clone()))).answer;
        if let Some(pending) = answer.and_then(|a| a.pending) {
            c.step(t, s, Input::LeaseConfirmed(pending));
        }
    }
}

fn failover_target(cmds: &[Command]) -> Option<String> {
    cmds.iter().find_map(|c| match c {
        Command::Failover { to, .. } => Some(to.clone()),
        _ => None,
    })
}

#[test]
fn only_the_leader_answers_and_decides() {
    let t0 = Instant::now();
    let mut c = Coordinator::new(["a".to_string()], Timings::default());
    let s = ClusterState::default();
    assert!(!c.on_report(t0, primary_r("a", 1), &s).grant);
    assert!(c.decide(t0 + ms(60_000), &s, 0).is_empty());
}

#[test]
fn grants_go_to_the_healthy_primary_only() {
    let (mut c, s, t0) = running_cluster();
    let t = t0 + ms(100);
    assert_eq!(c.on_report(t, primary_r("a", 1), &s), LeaseAnswer { grant: true, epoch: 1 });
    assert!(!c.on_report(t, standby_r("b", 1), &s).grant);
    let mut down = primary_r("a", 1);
    down.pg.running = false;
    down.pg.down_for = ms(19_999);
    assert!(c.on_report(t, down.clone(), &s).grant, "a restart within pg_restart_timeout keeps the lease");
    down.pg.down_for = ms(20_000);
    assert!(!c.on_report(t, down, &s).grant);
    // A hung server (postmaster alive, not answering) is not restarting: a shorter limit.
    let mut hung = primary_r("a", 1);
    hung.pg.running = false;
    hung.pg.unresponsive = true;
    hung.pg.down_for = ms(2_999);
    assert!(c.on_report(t, hung.clone(), &s).grant, "within pg_unresponsive_timeout");
    hung.pg.down_for = ms(3_000);
    assert!(!c.on_report(t, hung, &s).grant, "not answering for pg_unresponsive_timeout");
    // Killed by its keeper, it would restart in place: no lease for pg_restart_timeout, so a
    // standby is promoted first.
    let mut restarting = primary_r("a", 1);
    restarting.pg.running = false;
    restarting.pg.down_for = ms(3_500);
    assert!(!c.on_report(t + ms(500), restarting.clone(), &s).grant, "no lease right after hanging");
    assert!(c.on_report(t + ms(20_000), primary_r("a", 1), &s).grant, "back after pg_restart_timeout");
    let mut rejoin = primary_r("a", 1);
    rejoin.pg.needs_rejoin = true;
    assert!(!c.on_report(t, rejoin, &s).grant);
    assert!(!c.on_report(t, primary_r("stranger", 1), &s).grant);
    assert!(!c.reports().contains_key("stranger"), "reports from unconfigured members are ignored");
}

#[test]
fn dead_primary_is_replaced_exactly_after_lease_plus_margin() {
    let (mut c, s, t0) = running_cluster();
    // Healthy rounds; the last grant to a happens at t_last.
    let mut t = t0;
    for _ in 0..12 {
        t += ms(250);
        round(&mut c, &s, t, &[primary_r("a", 500), standby_r("b", 500), standby_r("c", 400)]);
        assert!(failover_target(&c.decide(t, &s, 0)).is_none());
    }
    let t_last = t;
    // a dies; b and c keep reporting.
    while t < t_last + ms(2400) {
        t += ms(100);
        round(&mut c, &s, t, &[standby_r("b", 500), standby_r("c", 400)]);
        assert!(failover_target(&c.decide(t, &s, 0)).is_none(), "too early at {:?}", t - t_last);
    }
    round(&mut c, &s, t_last + ms(2499), &[standby_r("b", 500), standby_r("c", 400)]);
    assert!(failover_target(&c.decide(t_last + ms(2499), &s, 0)).is_none());
    let cmds = c.decide(t_last + ms(2500), &s, 0);
    assert_eq!(failover_target(&cmds).as_deref(), Some("b"), "b has the most WAL");
}

#[test]
fn no_lease_for_the_old_primary_once_its_failover_is_decided() {
    // Found by the simulation (vigil-sim): a partition healed the moment the coordinator proposed
    // the failover; the old primary's next report reached it before the failover was committed,
    // was granted a fresh lease for the old epoch, and its server took writes again while the new
    // primary was promoted.
    let (mut c, s, t0) = running_cluster();
    round(&mut c, &s, t0, &[primary_r("a", 500), standby_r("b", 500), standby_r("c", 400)]);
    let t = t0 + ms(2500);
    round(&mut c, &s, t, &[standby_r("b", 500), standby_r("c", 400)]);
    assert_eq!(failover_target(&c.decide(t, &s, 0)).as_deref(), Some("b"));
    // The failover is not committed yet: the state still names a at the old epoch.
    let back = report("a", DataDir::Primary, false, false, 500);
    assert!(!c.on_report(t + ms(10), back.clone(), &s).grant, "a lease for the epoch being replaced");
    assert!(!c.on_report(t + ms(2499), back.clone(), &s).grant);
    // A failover that was never committed (and no longer decided) does not fence a for good.
    assert!(c.on_report(t + ms(2500), back, &s).grant);
}

#[test]
fn a_grant_judged_on_a_state_that_moved_on_is_not_made() {
    // Found by the simulation (vigil-sim): a leader elected right after its predecessor committed
    // a failover took the old primary's report before applying that entry, and granted it a lease
    // for the replaced epoch. The state read after the quorum round has the failover.
    let (mut c, s, t0) = running_cluster();
    let answer = c.on_report(t0, primary_r("a", 500), &s);
    assert!(answer.grant);
    let mut after = s.clone();
    let failover = Command::Failover { from_epoch: s.epoch, to: "b".into(), reason: String::new(), at_unix_ms: 0 };
    after.apply(&failover).expect("failover");
    assert!(!c.confirm_grant(t0, "a", answer.epoch, &after), "a is not the primary of that epoch any more");
    assert!(c.lease_expires_in(t0, &s).is_some());
    assert!(c.confirm_grant(t0, "a", answer.epoch, &s), "nothing committed meanwhile: granted");
}

#[test]
fn the_only_holder_keeps_its_lease_however_long_its_server_is_down() {
    // Found by the simulation (vigil-sim seed 625): in `on`, the primary alone held the
    // acknowledged commits (just after a failover); its server hung, was killed by its keeper and,
    // down longer than pg_restart_timeout, never got a lease to start again: no failover was
    // possible either, so the cluster stayed down.
    let (mut c, mut s, t0) = running_cluster();
    let sync = crate::sync::SyncState {
        mode: SyncMode::On,
        count: 1,
        holders: BTreeSet::from(["a".to_string()]),
        standbys: BTreeSet::new(),
    };
    s.apply(&Command::Sync { epoch: s.epoch, sync, reason: String::new(), at_unix_ms: 0 }).expect("sync");
    let mut down = report("a", DataDir::Primary, false, false, 500);
    down.pg.down_for = Duration::from_secs(60);
    assert!(c.on_report(t0, down.clone(), &s).grant, "nobody else can take over");
    down.pg.unresponsive = true;
    assert!(c.on_report(t0 + ms(10), down.clone(), &s).grant, "hung, and still irreplaceable");
    // Once a standby holds the commits, the rule is the usual one again.
    let mut replaceable = s.clone();
    replaceable.sync.holders = BTreeSet::from(["b".to_string()]);
    replaceable.sync.standbys = replaceable.sync.holders.clone();
    assert!(!c.on_report(t0 + ms(20), down, &replaceable).grant);
}

#[test]
fn a_new_coordinator_waits_a_full_lease_from_its_election() {
    let (_, s, t0) = running_cluster();
    let mut c = Coordinator::new(["a", "b", "c"].map(String::from), Timings::default());
    let elected = t0 + ms(5000);
    c.set_leader(elected, Some(2));
    round(&mut c, &s, elected + ms(2000), &[standby_r("b", 500), standby_r("c", 400)]);
    assert!(failover_target(&c.decide(elected + ms(2499), &s, 0)).is_none());
    assert_eq!(failover_target(&c.decide(elected + ms(2500), &s, 0)).as_deref(), Some("b"));
}

#[test]
fn primary_with_postgres_down_too_long_loses_its_lease_then_its_role() {
    let (mut c, s, t0) = running_cluster();
    let mut t = t0 + ms(3000);
    round(&mut c, &s, t, &[primary_r("a", 500), standby_r("b", 500), standby_r("c", 500)]);
    let mut down = primary_r("a", 0);
    down.pg.running = false;
    down.pg.down_for = ms(20_000);
    let stopped_granting = t;
    while t < stopped_granting + ms(2500) {
        t += ms(250);
        round(&mut c, &s, t, &[down.clone(), standby_r("b", 500), standby_r("c", 500)]);
        if t < stopped_granting + ms(2500) {
            assert!(failover_target(&c.decide(t, &s, 0)).is_none());
        }
    }
    let cmds = c.decide(t, &s, 0);
    assert_eq!(failover_target(&cmds).as_deref(), Some("b"), "equal WAL and priority: by name");
    let reason = cmds.iter().find_map(|c| match c {
        Command::Failover { reason, .. } => Some(reason.clone()),
        _ => None,
    });
    assert!(reason.unwrap_or_default().contains("down for 20000 ms"));
}

#[test]
fn the_new_primary_gets_a_full_lease_before_anyone_may_replace_it() {
    let (mut c, mut s, t0) = running_cluster();
    let t = t0 + ms(10_000);
    round(&mut c, &s, t, &[standby_r("b", 500), standby_r("c", 500)]);
    let cmds = c.decide(t, &s, 0);
    for cmd in &cmds {
        s.apply(cmd).expect("apply");
    }
    assert_eq!((s.primary.as_deref(), s.epoch), (Some("b"), 2));
    // b has not reported as primary yet; c is a fine candidate, but b's epoch just began.
    round(&mut c, &s, t + ms(300), &[standby_r("c", 500)]);
    assert!(failover_target(&c.decide(t + ms(300), &s, 0)).is_none());
    assert!(failover_target(&c.decide(t + ms(2499), &s, 0)).is_none());
}

#[test]
fn a_new_term_restarts_the_wait_even_if_the_loss_was_missed() {
    let (mut c, s, t0) = running_cluster();
    round(&mut c, &s, t0 + ms(100), &[primary_r("a", 1)]);
    c.set_leader(t0 + ms(200), Some(1));
    assert_eq!(c.lease_expires_in(t0 + ms(200), &s), Some(ms(2400)), "same term: the grant at 100ms counts");
    c.set_leader(t0 + ms(3000), Some(5));
    assert_eq!(c.lease_expires_in(t0 + ms(3000), &s), Some(ms(2500)), "new term: a full wait from now");
    assert!(c.reports().is_empty());
}

#[test]
fn the_coordinator_wakes_when_the_lease_has_run_out() {
    let (mut c, s, t0) = running_cluster();
    round(&mut c, &s, t0 + ms(100), &[primary_r("a", 1)]);
    let due = t0 + ms(100) + c.timings.promotion_wait();
    assert_eq!(c.lease_deadline(t0 + ms(200), &s), Some(due), "the grant at 100ms + lease + margin");
    // Not before: no failover is decided until then; at it, one is.
    round(&mut c, &s, due - ms(1), &[standby_r("b", 1), standby_r("c", 1)]);
    assert!(failover_target(&c.decide(due - ms(1), &s, 0)).is_none());
    assert!(failover_target(&c.decide(due, &s, 0)).is_some());
    assert_eq!(c.lease_deadline(due, &s), None, "run out: nothing left to wake for");
    let mut none = s.clone();
    none.primary = None;
    assert_eq!(c.lease_deadline(t0 + ms(200), &none), None, "no primary, no lease");
}

#[test]
fn no_candidate_no_failover() {
    let (mut c, s, t0) = running_cluster();
    let mut nofo = standby_r("b", 500);
    nofo.tags.insert(crate::tags::NOFAILOVER, "true");
    let mut down = standby_r("c", 500);
    down.pg.running = false;
    let t = t0 + ms(10_000);
    round(&mut c, &s, t, &[nofo, down]);
    assert!(failover_target(&c.decide(t, &s, 0)).is_none());
}

#[test]
fn lagging_standby_is_not_promoted() {
    let (mut c, s, t0) = running_cluster();
    let t = t0 + ms(1000);
    round(&mut c, &s, t, &[primary_r("a", 10 << 20), standby_r("b", 1 << 20), standby_r("c", 1 << 20)]);
    assert!(failover_target(&c.decide(t + ms(5000), &s, 0)).is_none());
}

#[test]
fn losing_leadership_stops_everything() {
    let (mut c, s, t0) = running_cluster();
    c.set_leader(t0 + ms(1), None);
    assert!(c.decide(t0 + ms(60_000), &s, 0).is_empty());
    assert!(c.reports().is_empty());
}

#[test]
fn bootstrap_waits_for_everyone_or_the_bootstrap_wait() {
    let t0 = Instant::now();
    let mut c = Coordinator::new(["a", "b", "c"].map(String::from), Timings::default());
    c.set_leader(t0, Some(1));
    let s = ClusterState::default();
    c.on_report(t0, report("b", DataDir::Empty, false, false, 0), &s);
    c.on_report(t0, report("a", DataDir::Empty, false, false, 0), &s);
    let first = c.decide(t0 + ms(1000), &s, 0);
    assert_eq!(first.first(), Some(&Command::AgreeTimings { timings: Timings::default().lease() }));
    assert!(first[1..].iter().all(|c| matches!(c, Command::UpsertMember { .. })));
    assert_eq!(first.len(), 3);
    // c never reports; after bootstrap_wait the lowest name among empty members wins.
    for r in [report("b", DataDir::Empty, false, false, 0), report("a", DataDir::Empty, false, false, 0)] {
        c.on_report(t0 + ms(9_900), r, &s);
    }
    let cmds = c.decide(t0 + ms(10_000), &s, 0);
    assert_eq!(cmds.last(), Some(&Command::Bootstrap { member: "a".into(), at_unix_ms: 0 }));
    let mut applied = s.clone();
    for cmd in &cmds {
        applied.apply(cmd).expect("members first, then bootstrap");
    }
    assert_eq!(applied.primary.as_deref(), Some("a"));
}

#[test]
fn bootstrap_prefers_existing_data_and_skips_witnesses() {
    let t0 = Instant::now();
    let mut c = Coordinator::new(["a", "c", "w"].map(String::from), Timings::default());
    c.set_leader(t0, Some(1));
    let s = ClusterState::default();
    let mut w = report("w", DataDir::Unknown, false, false, 0);
    w.kind = MemberKind::Witness;
    c.on_report(t0, w, &s);
    c.on_report(t0, report("a", DataDir::Empty, false, false, 0), &s);
    c.on_report(t0, report("c", DataDir::Primary, false, false, 0), &s);
    let cmds = c.decide(t0, &s, 0);
    assert_eq!(cmds.last(), Some(&Command::Bootstrap { member: "c".into(), at_unix_ms: 0 }));
}

#[test]
fn member_records_are_proposed_only_when_they_change() {
    let (mut c, mut s, t0) = running_cluster();
    let t = t0 + ms(100);
    round(&mut c, &s, t, &[primary_r("a", 1), standby_r("b", 1), standby_r("c", 1)]);
    assert!(c.decide(t, &s, 0).is_empty());
    let mut moved = standby_r("c", 1);
    moved.pg_port = 6000;
    round(&mut c, &s, t, &[moved]);
    let cmds = c.decide(t, &s, 0);
    assert_eq!(cmds.len(), 1);
    s.apply(&cmds[0]).expect("apply");
    assert_eq!(s.members.get("c").map(|m| m.pg_port), Some(6000));
}

#[test]
fn leadership_moves_off_the_primary_to_a_current_standby() {
    let (mut c, s, t0) = running_cluster();
    let t = t0 + ms(100);
    round(&mut c, &s, t, &[primary_r("a", 1), standby_r("b", 1), standby_r("c", 1)]);
    assert_eq!(c.leadership_target(t, &s), None, "not on the primary: stay");
    let mut c = c.named("a");
    assert_eq!(c.leadership_target(t, &s).as_deref(), Some("b"));
    let mut down = standby_r("b", 1);
    down.pg.running = false;
    round(&mut c, &s, t, &[down]);
    assert_eq!(c.leadership_target(t, &s).as_deref(), Some("c"), "only to a running standby");
    assert_eq!(c.leadership_target(t + ms(5000), &s), None, "not to members with stale reports");
}

#[test]
fn paused_no_failover_however_long_the_primary_is_gone_and_resume_lets_it_happen() {
    let (mut c, mut s, t0) = running_cluster();
    s.apply(&Command::SetPaused { paused: true, reason: String::new(), at_unix_ms: 0 }).expect("pause");
    let mut t = t0 + ms(250);
    round(&mut c, &s, t, &[primary_r("a", 500), standby_r("b", 500), standby_r("c", 400)]);
    // a dies: long past lease + margin, nothing but reports.
    while t < t0 + ms(30_000) {
        t += ms(250);
        round(&mut c, &s, t, &[standby_r("b", 500), standby_r("c", 400)]);
        assert!(failover_target(&c.decide(t, &s, 0)).is_none(), "paused at {:?}", t - t0);
    }
    s.apply(&Command::SetPaused { paused: false, reason: String::new(), at_unix_ms: 0 }).expect("resume");
    assert_eq!(failover_target(&c.decide(t, &s, 0)).as_deref(), Some("b"));
}

#[test]
fn paused_the_primary_keeps_its_lease_while_postgres_is_down_and_member_records_go_on() {
    let (mut c, mut s, t0) = running_cluster();
    s.apply(&Command::SetPaused { paused: true, reason: String::new(), at_unix_ms: 0 }).expect("pause");
    let mut down = primary_r("a", 0);
    down.pg.running = false;
    down.pg.down_for = ms(60_000);
    assert!(c.on_report(t0 + ms(100), down.clone(), &s).grant, "paused: no failover follows, so no fencing");
    let mut moved = standby_r("b", 500);
    moved.pg_port = 6000;
    c.on_report(t0 + ms(100), moved, &s);
    let cmds = c.decide(t0 + ms(100), &s, 0);
    assert!(matches!(&cmds[..], [Command::UpsertMember { name, .. }] if name == "b"), "{cmds:?}");
    s.apply(&Command::SetPaused { paused: false, reason: String::new(), at_unix_ms: 0 }).expect("resume");
    assert!(!c.on_report(t0 + ms(200), down, &s).grant, "unpaused: down too long, lease withheld");
}

fn failed_r(name: &str, epoch: u64) -> HealthReport {
    let mut r = report(name, DataDir::Empty, false, false, 0);
    r.pg.bootstrap_failed = Some(crate::report::BootstrapFailure { epoch, error: "initdb: exit 1".into() });
    r
}

/// a, b, c empty; a has the highest priority and is chosen at t0; `after` reports arrive at t0 + 1 s.
fn bootstrapped_on_a(after: &[HealthReport]) -> (Coordinator, ClusterState, Instant, Vec<Command>) {
    let t0 = Instant::now();
    let mut c = Coordinator::new(["a", "b", "c"].map(String::from), Timings::default());
    c.set_leader(t0, Some(1));
    let mut s = ClusterState::default();
    let mut a = report("a", DataDir::Empty, false, false, 0);
    a.tags.insert(crate::tags::PRIORITY, "10");
    for r in [a, report("b", DataDir::Empty, false, false, 0), report("c", DataDir::Empty, false, false, 0)] {
        c.on_report(t0, r, &s);
    }
    for cmd in c.decide(t0, &s, 0) {
        s.apply(&cmd).expect("apply");
    }
    assert_eq!((s.primary.as_deref(), s.epoch), (Some("a"), 1));
    let t = t0 + ms(1000);
    round(&mut c, &s, t, after);
    let cmds = c.decide(t, &s, 0);
    (c, s, t, cmds)
}

fn abandoned(cmds: &[Command]) -> bool {
    cmds.iter().any(|c| matches!(c, Command::AbandonBootstrap { member, epoch: 1, .. } if member == "a"))
}

#[test]
fn a_failed_bootstrap_is_given_back_only_when_nothing_was_created() {
    let empty = |n: &str| report(n, DataDir::Empty, false, false, 0);
    let mut a_failed = failed_r("a", 1);
    a_failed.tags.insert(crate::tags::PRIORITY, "10");
    let with_data = {
        let mut r = a_failed.clone();
        r.pg.data_dir = DataDir::Primary;
        r
    };
    let running = {
        let mut r = a_failed.clone();
        r.pg.running = true;
        r
    };
    let old_epoch = {
        let mut r = a_failed.clone();
        r.pg.bootstrap_failed = Some(crate::report::BootstrapFailure { epoch: 0, error: String::new() });
        r
    };
    let cases: Vec<(&str, Vec<HealthReport>, bool)> = vec![
        ("initdb failed, still empty", vec![a_failed.clone(), empty("b"), empty("c")], true),
        ("no failure reported", vec![empty("a"), empty("b"), empty("c")], false),
        ("a failure of another epoch", vec![old_epoch, empty("b"), empty("c")], false),
        ("its data directory is no longer empty", vec![with_data, empty("b"), empty("c")], false),
        ("its server runs", vec![running, empty("b"), empty("c")], false),
        ("someone runs a primary", vec![a_failed.clone(), primary_r("b", 1), empty("c")], false),
    ];
    for (name, reports, want) in cases {
        let (_, _, _, cmds) = bootstrapped_on_a(&reports);
        assert_eq!(abandoned(&cmds), want, "{name}: {cmds:?}");
    }
}

#[test]
fn a_given_back_bootstrap_is_decided_again_after_the_lease_wait() {
    let mut a_failed = failed_r("a", 1);
    a_failed.tags.insert(crate::tags::PRIORITY, "10");
    let reports = [a_failed.clone(), report("b", DataDir::Empty, false, false, 0), failed_r("c", 1)];
    let (mut c, mut s, t, cmds) = bootstrapped_on_a(&reports);
    for cmd in &cmds {
        s.apply(cmd).expect("apply");
    }
    assert_eq!((s.primary.as_deref(), s.bootstrapped_by.as_deref(), s.epoch), (None, None, 1));
    assert_eq!(s.history.last().map(|e| e.kind), Some(crate::state::EventKind::BootstrapFailed));
    // a held a lease for epoch 1 (granted at t): no new bootstrap before it has certainly run out.
    let wait = c.timings.promotion_wait();
    round(&mut c, &s, t + wait - ms(1), &reports);
    assert!(!c.decide(t + wait - ms(1), &s, 0).iter().any(|c| matches!(c, Command::Bootstrap { .. })));
    round(&mut c, &s, t + wait, &reports);
    // a's and c's initdb failed: b goes first, though a has the higher priority.
    let cmds = c.decide(t + wait, &s, 0);
    assert_eq!(cmds.last(), Some(&Command::Bootstrap { member: "b".into(), at_unix_ms: 0 }));
    s.apply(&cmds[cmds.len() - 1]).expect("bootstrap again");
    assert_eq!((s.primary.as_deref(), s.epoch, s.bootstrap_epoch), (Some("b"), 2, 2));
}

#[test]
fn a_foreign_data_directory_is_never_chosen() {
    let t0 = Instant::now();
    let mut c = Coordinator::new(["a", "b"].map(String::from), Timings::default());
    c.set_leader(t0, Some(1));
    let s = ClusterState::default();
    let mut a = report("a", DataDir::Foreign, false, false, 0);
    a.tags.insert(crate::tags::PRIORITY, "10");
    c.on_report(t0, a, &s);
    c.on_report(t0, report("b", DataDir::Empty, false, false, 0), &s);
    assert_eq!(c.decide(t0, &s, 0).last(), Some(&Command::Bootstrap { member: "b".into(), at_unix_ms: 0 }));
    let mut c = Coordinator::new(["a"].map(String::from), Timings::default());
    c.set_leader(t0, Some(1));
    c.on_report(t0, report("a", DataDir::Foreign, false, false, 0), &s);
    assert!(!c.decide(t0 + ms(60_000), &s, 0).iter().any(|c| matches!(c, Command::Bootstrap { .. })));
}

/// The lease timings are the cluster's: the first coordinator commits its own before anything
/// else, grants no lease until they are committed, and a later coordinator whose file says
/// otherwise waits out the committed lease, not its own shorter one.
#[test]
fn lease_timings_are_agreed_once_and_every_coordinator_waits_out_the_agreed_ones() {
    let (mut c, mut s, t0) = running_cluster();
    assert_eq!(s.lease_timings, Some(Timings::default().lease()), "agreed with the bootstrap");
    // A cluster made before timings were agreed: no grant until they are.
    s.lease_timings = None;
    assert!(!c.on_report(t0, primary_r("a", 100), &s).grant, "nothing agreed yet");
    let cmds = c.decide(t0, &s, 0);
    assert_eq!(cmds, vec![Command::AgreeTimings { timings: Timings::default().lease() }]);
    for cmd in &cmds {
        s.apply(cmd).expect("apply");
    }
    assert!(c.on_report(t0, primary_r("a", 100), &s).grant);
    assert!(c.decide(t0, &s, 0).is_empty(), "agreed once");

    // Another coordinator, configured with a shorter lease: the agreed 2 s + 500 ms count.
    let short = Timings {
        lease_timeout: ms(1000),
        lease_margin: ms(200),
        raft_tick: ms(20),
        election_ticks: 10,
        ..Timings::default()
    };
    let mut other = Coordinator::new(["a", "b", "c"].map(String::from), short.clone());
    let t1 = t0 + ms(5000);
    other.set_leader(t1, Some(2));
    other.decide(t1, &s, 0);
    assert_eq!(other.lease_expires_in(t1, &s), Some(ms(2500)));
    // Its own values would be refused by the state: they are agreed already.
    let mut again = s.clone();
    let refused = again.apply(&Command::AgreeTimings { timings: short.lease() });
    assert_eq!(refused, Err(crate::Rejected::TimingsAgreed(Timings::default().lease())));
    assert_eq!(again.apply(&Command::AgreeTimings { timings: Timings::default().lease() }), Ok(()), "a repeat");
    let differ = Timings::default().lease().differences(&short);
    assert_eq!(differ.len(), 2, "{differ:?}");
    assert!(differ[0].starts_with("timing.lease_timeout (this file 1s, the cluster's 2s)"), "{differ:?}");
}

#[test]
fn a_grant_confirmed_late_never_shortens_the_promotion_wait() {
    let (mut c, s, t0) = running_cluster();
    let epoch = s.epoch;
    // Two renewals whose confirmations end out of order: the later report's first.
    c.granted(t0 + ms(500), "a", epoch);
    c.granted(t0 + ms(250), "a", epoch);
    let wait = Timings::default().promotion_wait();
    assert_eq!(c.lease_expires_in(t0 + ms(500), &s), Some(wait), "the wait runs from the later grant");
}

#[test]
fn an_asynchronous_primary_no_standby_can_replace_keeps_its_lease() {
    let (mut c, s, t0) = running_cluster();
    let t = t0 + ms(100);
    let mut down = primary_r("a", 1000);
    down.pg.running = false;
    down.pg.down_for = ms(60_000);
    // b and c are current and close enough: the lease is withheld so a failover goes first.
    round(&mut c, &s, t, &[standby_r("b", 1000), standby_r("c", 1000)]);
    assert!(!c.on_report(t, down.clone(), &s).grant);
    // Both standbys fall silent (or too far behind): no failover is possible, so the primary
    // keeps its lease and restarts in place instead of keeping the cluster down for good.
    let later = t + ms(5_000);
    assert!(c.on_report(later, down.clone(), &s).grant, "nobody can take over");
    // A standby that qualifies again ends it.
    round(&mut c, &s, later, &[standby_r("b", 1000)]);
    assert!(!c.on_report(later + ms(10), down, &s).grant, "b can take over");
}
