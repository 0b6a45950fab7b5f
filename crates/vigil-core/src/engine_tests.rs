use super::*;
use crate::coordinator::tests::{primary_r, standby_r};
use crate::timing::Timings;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn report(name: &str, in_recovery: bool) -> HealthReport {
    if in_recovery {
        standby_r(name, 100)
    } else {
        primary_r(name, 100)
    }
}

/// A coordinator on member `me`, leader since t0, over a bootstrapped cluster a (primary), b, c.
fn cluster(me: &str) -> (Coordinator, ClusterState, Instant) {
    let t0 = Instant::now();
    let mut c = Coordinator::new(["a", "b", "c"].map(String::from), Timings::default()).named(me);
    let mut s = ClusterState::default();
    c.step(t0, &s, Input::Leadership(Some(1)));
    for r in [report("a", false), report("b", true), report("c", true)] {
        c.step(t0, &s, Input::Report(Box::new(r)));
    }
    for _ in 0..2 {
        for cmd in c.step(t0, &s, Input::Tick { wall_ms: 0, keep_leadership: true }).proposals {
            s.apply(&cmd).expect("apply");
        }
    }
    assert_eq!(s.primary.as_deref(), Some("a"));
    (c, s, t0)
}

/// Everyone reports at `t`; a grant is confirmed as the shell would.
fn hear(c: &mut Coordinator, s: &ClusterState, t: Instant, reports: &[HealthReport]) {
    for r in reports {
        if let Some(pending) = c.step(t, s, Input::Report(Box::new(r.clone()))).answer.and_then(|a| a.pending) {
            c.step(t, s, Input::LeaseConfirmed(pending));
        }
    }
}

#[test]
fn only_a_leader_answers_reports() {
    let (mut c, s, t0) = cluster("b");
    c.step(t0, &s, Input::Leadership(None));
    assert_eq!(c.step(t0, &s, Input::Report(Box::new(report("a", false)))), Output::default());
}

#[test]
fn a_grant_waits_for_the_quorum_round_and_is_judged_on_the_state_after_it() {
    let (mut c, s, t0) = cluster("b");
    let t = t0 + ms(100);
    let answer = c.step(t, &s, Input::Report(Box::new(report("a", false)))).answer.expect("an answer");
    let pending = answer.pending.expect("the primary would get the lease");
    assert_eq!(pending, PendingGrant { member: "a".into(), epoch: s.epoch, arrived: t });
    assert_eq!(answer.primary_lsn, 100, "the primary's position as reported here");
    assert!(c.step(t, &s, Input::Report(Box::new(report("b", true)))).answer.expect("answer").pending.is_none());
    // The round ended after a failover from a was committed (a previous leader's entry): no grant.
    let mut after = s.clone();
    after
        .apply(&Command::Failover { from_epoch: s.epoch, to: "b".into(), reason: "test".into(), at_unix_ms: 0 })
        .expect("failover");
    assert_eq!(c.step(t + ms(50), &after, Input::LeaseConfirmed(pending.clone())).granted, Some(false));
    assert_eq!(c.step(t + ms(50), &s, Input::LeaseConfirmed(pending)).granted, Some(true));
}

#[test]
fn the_role_is_handed_off_the_primarys_host_at_most_every_twenty_loops() {
    let (mut c, s, t0) = cluster("a");
    let loop_ = Timings::default().loop_interval;
    let tick = |keep| Input::Tick { wall_ms: 0, keep_leadership: keep };
    let all = [report("a", false), report("b", true), report("c", true)];
    let mut t = t0 + ms(10);
    hear(&mut c, &s, t, &all);
    assert_eq!(c.step(t, &s, tick(true)).transfer_to, None, "kept while a change is measured");
    assert_eq!(c.step(t, &s, tick(false)).transfer_to.as_deref(), Some("b"));
    t += loop_;
    hear(&mut c, &s, t, &all);
    assert_eq!(c.step(t, &s, tick(false)).transfer_to, None, "refused transfers do not churn");
    for _ in 0..20 {
        t += loop_;
        hear(&mut c, &s, t, &all);
    }
    assert_eq!(c.step(t, &s, tick(false)).transfer_to.as_deref(), Some("b"));
    let (mut other, s, t0) = cluster("b");
    assert_eq!(other.step(t0, &s, tick(false)).transfer_to, None, "not on the primary's host: stay");
}

#[test]
fn a_new_coordinator_has_requests_wait_until_it_heard_the_members() {
    let (mut c, s, t0) = cluster("b");
    let req = || Input::Request {
        request: Request::Switchover { candidate: Some("c".into()), primary: None, not_before_unix_ms: 0 },
        wall_ms: 0,
    };
    let loop_ = Timings::default().loop_interval;
    let out = c.step(t0 + loop_, &s, req());
    assert_eq!(out.wait(), Some(loop_), "two loop intervals after the election");
    let out = c.step(t0 + loop_ * 2, &s, req());
    assert!(matches!(out.decision, Some(Ok(Decision::Propose(Command::BeginSwitchover { .. })))), "{out:?}");
}

#[test]
fn a_blocked_failover_is_noted_once() {
    let t0 = Instant::now();
    let mut c = Coordinator::new(["a", "b"].map(String::from), Timings::default());
    let mut s = ClusterState::default();
    c.step(t0, &s, Input::Leadership(Some(1)));
    c.step(t0, &s, Input::Report(Box::new(report("a", false))));
    c.step(t0, &s, Input::Report(Box::new(report("b", true))));
    for _ in 0..2 {
        for cmd in c.step(t0, &s, Input::Tick { wall_ms: 0, keep_leadership: true }).proposals {
            s.apply(&cmd).expect("apply");
        }
    }
    // Synchronous, with only the primary holding every acknowledged commit: no failover.
    let mut sync = s.sync.clone();
    sync.mode = crate::sync::SyncMode::Strict;
    sync.holders = ["a".to_string()].into();
    s.apply(&Command::Sync { epoch: s.epoch, sync, reason: "test".into(), at_unix_ms: 0 }).expect("sync");
    let late = t0 + Timings::default().promotion_wait() + ms(1);
    c.step(late, &s, Input::Report(Box::new(report("b", true))));
    let tick = Input::Tick { wall_ms: 0, keep_leadership: true };
    let notes = c.step(late, &s, tick.clone()).notes;
    assert!(matches!(&notes[..], [Note::FailoverBlocked(why)] if why.contains("only the primary a")), "{notes:?}");
    assert!(c.step(late + ms(1), &s, tick).notes.is_empty(), "said once");
}

#[test]
fn a_tick_of_the_leader_decides_scheduled_backups_too() {
    use crate::backup::{BackupType, Cron, Policy, StanzaReady};
    let hourly = Cron::parse("0 * * * *").expect("cron");
    let policy = Policy { schedule: [(BackupType::Full, hourly)].into(), timeout_ms: 3_600_000, ..Default::default() };
    let (c, mut s, t0) = cluster("b");
    let mut c = c.with_backups(policy);
    s.backup.stanza_ready = Some(StanzaReady { member: "a".into(), epoch: s.epoch, at_unix_ms: 0 });
    let tick = |wall_ms| Input::Tick { wall_ms, keep_leadership: true };
    let backups =
        |out: Output| out.proposals.into_iter().filter(|p| matches!(p, Command::Backup { .. })).collect::<Vec<_>>();
    let due = 3_600_000;
    let started = backups(c.step(t0, &s, tick(due)));
    assert!(
        matches!(&started[..], [Command::Backup { backup: crate::backup::BackupCommand::Start { member, .. } }] if member == "a"),
        "{started:?}"
    );
    c.step(t0, &s, Input::Leadership(None));
    assert!(backups(c.step(t0, &s, tick(due))).is_empty(), "only the leader decides");
    // The same state, due the same: a coordinator without a policy starts nothing.
    let (mut plain, _, _) = cluster("b");
    assert!(backups(plain.step(t0, &s, tick(due))).is_empty(), "no policy, no backups");
}

#[test]
fn a_standby_backup_moves_only_after_its_standby_was_silent_for_report_plus_lease_timeout() {
    use crate::backup::{BackupCommand, BackupSource, Policy, RunOn, StanzaReady};
    let t = Timings::default();
    let policy = Policy { timeout_ms: 3_600_000, run_on: RunOn::Standby, ..Default::default() };
    let (c, mut s, t0) = cluster("c");
    let mut c = c.with_backups(policy);
    s.backup.stanza_ready = Some(StanzaReady { member: "a".into(), epoch: s.epoch, at_unix_ms: 0 });
    let serving = |mut r: HealthReport| {
        r.backup_source = Some(BackupSource { host: r.member.clone(), port: 1, ..Default::default() });
        r
    };
    let all = |lsn_b: u64| [serving(primary_r("a", 100)), serving(standby_r("b", lsn_b)), serving(standby_r("c", 90))];
    hear(&mut c, &s, t0, &all(100));
    // A manual request is placed as the schedule would: b replayed the most.
    let placed = c.backup_placement(t0, &s).expect("a placement");
    assert_eq!((placed.member.as_str(), placed.note), ("b", None));
    let start = BackupCommand::Start {
        id: 1,
        kind: crate::backup::BackupType::Full,
        member: "b".into(),
        epoch: s.epoch,
        reason: "manual".into(),
        serves: vec![],
        at_unix_ms: 0,
        source: placed.source.map(Box::new),
        note: None,
    };
    s.apply(&Command::Backup { backup: start }).expect("start");
    let tick = |wall_ms| Input::Tick { wall_ms, keep_leadership: true };
    let backups =
        |out: Output| out.proposals.into_iter().filter(|p| matches!(p, Command::Backup { .. })).collect::<Vec<_>>();
    // b stops reporting; a and c go on. Silent for report_timeout + lease_timeout: not yet.
    let silence = t.report_timeout + t.lease_timeout;
    let mut now = t0;
    while now < t0 + silence {
        now += t.loop_interval;
        hear(&mut c, &s, now, &[serving(primary_r("a", 100)), serving(standby_r("c", 100))]);
        assert!(backups(c.step(now, &s, tick(1))).is_empty(), "moved after only {:?}", now - t0);
    }
    now += t.loop_interval;
    hear(&mut c, &s, now, &[serving(primary_r("a", 100)), serving(standby_r("c", 100))]);
    let moved = backups(c.step(now, &s, tick(1)));
    assert!(
        matches!(&moved[..], [Command::Backup { backup: BackupCommand::Retry { member, from_member: Some(f), .. } }]
            if member == "c" && f == "b"),
        "{moved:?}"
    );
}
