use super::*;
use crate::agent::{reconcile, AgentAction, AgentInput, LocalMemory, Upstream};
use crate::engine::Input;
use crate::format_unix_ms;
use crate::report::{DataDir, PgStatus, ReplicaStatus};
use crate::request::{Decision, Refusal, Request};
use crate::state::{EventKind, Member, Rejected};
use crate::sync::{SyncMode, SyncState};
use crate::timing::Timings;
use std::time::Duration;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn primary_r(name: &str, lsn: u64, replicas: &[&str]) -> HealthReport {
    HealthReport {
        member: name.into(),
        kind: MemberKind::Postgres,
        pg_host: "h".into(),
        pg_port: match name {
            "b" => 5001,
            "c" => 5002,
            _ => 5000,
        },
        tags: crate::Tags::new(),
        pg: PgStatus {
            running: true,
            timeline: 1,
            current_lsn: lsn,
            received_lsn: lsn,
            replay_lsn: lsn,
            data_dir: DataDir::Primary,
            replicas: replicas
                .iter()
                .map(|r| ReplicaStatus { member: r.to_string(), flush_lsn: lsn, streaming: true })
                .collect(),
            ..Default::default()
        },
        epoch_seen: 1,
        proxy: None,
        backup_source: None,
    }
}

fn standby_r(name: &str, lsn: u64) -> HealthReport {
    let mut r = primary_r(name, lsn, &[]);
    r.pg.in_recovery = true;
    r.pg.streaming = true;
    r.pg.current_lsn = 0;
    r.pg.data_dir = DataDir::Standby;
    r
}

/// Members a (primary), b, c (standbys), w (witness), and a coordinator that has heard everyone.
fn cluster() -> (Coordinator, ClusterState, Instant) {
    let t0 = Instant::now();
    let mut s = ClusterState::default();
    for (i, n) in ["a", "b", "c"].iter().enumerate() {
        let m =
            Member { kind: MemberKind::Postgres, pg_host: "h".into(), pg_port: 5000 + i as u16, ..Default::default() };
        s.apply(&Command::UpsertMember { name: n.to_string(), member: m, at_unix_ms: 0 }).expect("member");
    }
    let w = Member { kind: MemberKind::Witness, ..Default::default() };
    s.apply(&Command::UpsertMember { name: "w".into(), member: w, at_unix_ms: 0 }).expect("witness");
    s.apply(&Command::AgreeTimings { timings: Timings::default().lease() }).expect("timings");
    s.apply(&Command::Bootstrap { member: "a".into(), at_unix_ms: 0 }).expect("bootstrap");
    let mut c = Coordinator::new(["a", "b", "c", "w"].map(String::from), Timings::default());
    c.set_leader(t0, Some(1));
    c.decide(t0, &s, 0);
    hear(&mut c, &s, t0, &[primary_r("a", 1000, &["b", "c"]), standby_r("b", 1000), standby_r("c", 900)]);
    (c, s, t0)
}

fn hear(c: &mut Coordinator, s: &ClusterState, t: Instant, reports: &[HealthReport]) {
    for r in reports {
        let answer = c.step(t, s, Input::Report(Box::new(r.clone()))).answer;
        if let Some(pending) = answer.and_then(|a| a.pending) {
            c.step(t, s, Input::LeaseConfirmed(pending));
        }
    }
}

fn propose(c: &Coordinator, s: &ClusterState, t: Instant, req: Request) -> Result<Command, Refusal> {
    match c.request(t, s, &req, 1_000)? {
        Decision::Propose(cmd) => Ok(cmd),
        Decision::Nothing(why) => Err(Refusal::Conflict(format!("nothing: {why}"))),
        Decision::Wait(d) => Err(Refusal::Conflict(format!("wait {d:?}"))),
    }
}

fn switchover_to(to: &str) -> Request {
    Request::Switchover { candidate: Some(to.into()), primary: None, not_before_unix_ms: 0 }
}

fn agent(me: &str, s: &ClusterState, pg: PgStatus, local: &LocalMemory) -> Vec<AgentAction> {
    reconcile(&AgentInput {
        me,
        kind: MemberKind::Postgres,
        state: s,
        pg: &pg,
        lease_valid: s.is_primary(me),
        local,
        diverged: None,
    })
}

fn pg(data_dir: DataDir, running: bool, in_recovery: bool) -> PgStatus {
    PgStatus { data_dir, running, in_recovery, ..Default::default() }
}

fn refused(r: Result<Command, Refusal>) -> String {
    match r {
        Err(Refusal::Conflict(m)) => format!("409 {m}"),
        Err(Refusal::NotFound(m)) => format!("404 {m}"),
        Ok(cmd) => format!("accepted {cmd:?}"),
    }
}

#[test]
fn requests_are_checked_against_the_state_and_the_reports() {
    let (mut c, mut s, t0) = cluster();
    let t = t0 + ms(100);
    assert!(refused(propose(&c, &s, t, switchover_to("zz"))).starts_with("404"));
    assert!(refused(propose(&c, &s, t, Request::Reinit { member: "zz".into() })).starts_with("404"));
    assert!(refused(propose(&c, &s, t, Request::Failover { candidate: "zz".into() })).starts_with("404"));
    assert!(refused(propose(&c, &s, t, switchover_to("w"))).contains("witness"));
    assert!(refused(propose(&c, &s, t, switchover_to("a"))).contains("already the primary"));
    assert!(refused(propose(&c, &s, t, Request::Reinit { member: "a".into() })).contains("is the primary"));
    assert!(refused(propose(&c, &s, t, Request::CancelSwitchover)).starts_with("404"));
    let wrong = Request::Switchover { candidate: Some("b".into()), primary: Some("c".into()), not_before_unix_ms: 0 };
    assert!(refused(propose(&c, &s, t, wrong)).contains("the primary is a, not c"));
    // c is not streaming from a: a planned switchover to it is refused, a forced failover is not.
    let mut lost = standby_r("c", 900);
    lost.pg.streaming = false;
    hear(&mut c, &s, t, &[lost, primary_r("a", 1000, &["b"])]);
    assert!(refused(propose(&c, &s, t, switchover_to("c"))).contains("not streaming"));
    assert!(propose(&c, &s, t, Request::Failover { candidate: "c".into() }).is_ok());
    // No candidate: the best standby.
    let cmd = propose(&c, &s, t, Request::Switchover { candidate: None, primary: None, not_before_unix_ms: 0 });
    assert!(matches!(&cmd, Ok(Command::BeginSwitchover { to, forced: false, id: 1, .. }) if to == "b"), "{cmd:?}");
    // The primary down: no planned switchover.
    let mut down = primary_r("a", 1000, &[]);
    down.pg.running = false;
    hear(&mut c, &s, t, &[down]);
    assert!(refused(propose(&c, &s, t, switchover_to("b"))).contains("POST /failover"));
    // Paused: nothing.
    s.apply(&Command::SetPaused { paused: true, reason: String::new(), at_unix_ms: 0 }).expect("pause");
    assert!(refused(propose(&c, &s, t, Request::Failover { candidate: "b".into() })).contains("paused"));
}

#[test]
fn a_planned_switchover_completes_on_a_clean_stop_and_a_caught_up_candidate() {
    let (mut c, mut s, t0) = cluster();
    let t = t0 + ms(100);
    let begin = propose(&c, &s, t, switchover_to("b")).expect("accepted");
    s.apply(&begin).expect("begin");
    let id = s.switchover.as_ref().map(|x| x.id).expect("pending");
    assert_eq!(s.history.last().map(|e| e.kind), Some(EventKind::Requested));
    let pause = Command::SetPaused { paused: true, reason: String::new(), at_unix_ms: 0 };
    assert_eq!(s.apply(&pause), Err(Rejected::SwitchoverPending(id)), "no pause in the middle of a switchover");

    // The old primary's agent stops for it; b's agent does nothing special.
    let local_a = LocalMemory { primary_epoch: Some(1), ..Default::default() };
    assert_eq!(
        agent("a", &s, pg(DataDir::Primary, true, false), &local_a),
        vec![AgentAction::StopForSwitchover { epoch: 1, id }]
    );
    assert!(agent(
        "b",
        &s,
        pg(DataDir::Standby, true, true),
        &LocalMemory { upstream: Some(Upstream { host: "h".into(), port: 5000 }), ..Default::default() }
    )
    .is_empty());
    // Still running (not stopped yet): no completion, and the lease is still granted.
    assert!(c.decide(t, &s, 1_000).is_empty());
    assert!(c.on_report(t, primary_r("a", 1000, &["b"]), &s).grant, "planned: the lease stays");

    // Stopped cleanly at 1100; b has replayed only up to 1100: not past the checkpoint record.
    let stop = SwitchoverStop { epoch: 1, id, lsn: 1100, timeline: 1 };
    let mut stopped = primary_r("a", 0, &[]);
    stopped.pg.running = false;
    stopped.pg.switchover_stop = Some(stop.clone());
    let t = t + ms(300);
    hear(&mut c, &s, t, &[stopped, standby_r("b", 1100)]);
    assert!(c.decide(t, &s, 1_000).is_empty(), "b must replay past the shutdown checkpoint");
    // A stopped member keeps waiting for the switchover, never starts as primary.
    let local_a = LocalMemory { primary_epoch: Some(1), switchover_stop: Some(stop.clone()), ..Default::default() };
    assert!(matches!(&agent("a", &s, pg(DataDir::Primary, false, false), &local_a)[..], [AgentAction::Wait(_)]));

    hear(&mut c, &s, t + ms(50), &[standby_r("b", 1180)]);
    let cmds = c.decide(t + ms(50), &s, 1_000);
    assert!(matches!(&cmds[..], [Command::CompleteSwitchover { lsn: Some(1100), .. }]), "{cmds:?}");
    s.apply(&cmds[0]).expect("complete");
    assert_eq!((s.epoch, s.primary.as_deref(), s.previous_primary.as_deref()), (2, Some("b"), Some("a")));
    assert!(s.switchover.is_none());
    assert_eq!(s.history.last().map(|e| e.kind), Some(EventKind::Switchover));
    // The old primary follows as it is: standby configuration and a start, no rewind.
    let acts = agent("a", &s, pg(DataDir::Primary, false, false), &local_a);
    assert_eq!(
        acts,
        vec![
            AgentAction::ConfigureStandby { from: Upstream { host: "h".into(), port: 5001 }, slot: "pgvigil_a".into() },
            AgentAction::Start
        ]
    );
    // Without the clean-stop record (or with another position) it is rewound as usual.
    let other = LocalMemory { switchover_stop: Some(SwitchoverStop { lsn: 1099, ..stop }), ..local_a.clone() };
    assert!(matches!(&agent("a", &s, pg(DataDir::Primary, false, false), &other)[..], [AgentAction::Rejoin { .. }]));
    let plain = LocalMemory { primary_epoch: Some(1), ..Default::default() };
    assert!(matches!(&agent("a", &s, pg(DataDir::Primary, false, false), &plain)[..], [AgentAction::Rejoin { .. }]));
}

#[test]
fn a_switchover_that_does_not_finish_in_time_is_cancelled_and_the_old_primary_carries_on() {
    let (mut c, mut s, t0) = cluster();
    let begin = propose(&c, &s, t0, switchover_to("b")).expect("accepted");
    s.apply(&begin).expect("begin");
    assert!(c.decide(t0, &s, 0).is_empty());
    let stop = SwitchoverStop { epoch: 1, id: 1, lsn: 1100, timeline: 1 };
    let mut stopped = primary_r("a", 0, &[]);
    stopped.pg.running = false;
    stopped.pg.switchover_stop = Some(stop.clone());
    // b never gets past 1000 (it lost the connection before the shutdown).
    let mut t = t0;
    while t + ms(250) < t0 + ms(15_000) {
        t += ms(250);
        hear(&mut c, &s, t, &[stopped.clone(), standby_r("b", 1000)]);
        assert!(c.decide(t, &s, 0).is_empty(), "at {:?}", t - t0);
    }
    let cmds = c.decide(t0 + ms(15_000), &s, 0);
    let [Command::CancelSwitchover { reason, .. }] = &cmds[..] else { panic!("{cmds:?}") };
    assert!(reason.contains("did not replay") && reason.contains("0/44C"), "{reason}");
    s.apply(&cmds[0]).expect("cancel");
    assert_eq!((s.epoch, s.primary.as_deref()), (1, Some("a")));
    assert_eq!(s.last_switchover.as_ref().map(|o| o.completed), Some(false));
    // A completion decided earlier cannot apply any more.
    let late = Command::CompleteSwitchover { id: 1, lsn: Some(1100), reason: String::new(), at_unix_ms: 0 };
    assert_eq!(s.apply(&late), Err(Rejected::NoSuchSwitchover(1)));
    // The old primary forgets its record and starts again.
    let local_a = LocalMemory { primary_epoch: Some(1), switchover_stop: Some(stop), ..Default::default() };
    assert_eq!(
        agent("a", &s, pg(DataDir::Primary, false, false), &local_a),
        vec![AgentAction::ForgetSwitchover, AgentAction::Start]
    );
}

#[test]
fn a_stopped_old_primary_whose_state_lags_stays_down() {
    // Its local record names switchover 3, which its committed state does not show yet (e.g.
    // right after a restart): it must not start as primary.
    let (_, s, _) = cluster();
    let local = LocalMemory {
        primary_epoch: Some(1),
        switchover_stop: Some(SwitchoverStop { epoch: 1, id: 3, lsn: 1100, timeline: 1 }),
        ..Default::default()
    };
    assert!(
        matches!(&agent("a", &s, pg(DataDir::Primary, false, false), &local)[..], [AgentAction::Wait(w)] if w.contains("does not show"))
    );
}

#[test]
fn a_forced_failover_withholds_the_lease_and_promotes_only_after_it_ran_out() {
    let (mut c, mut s, t0) = cluster();
    let t = t0 + ms(1000);
    hear(&mut c, &s, t, &[primary_r("a", 1000, &["b", "c"]), standby_r("b", 1000), standby_r("c", 900)]);
    let cmd = propose(&c, &s, t, Request::Failover { candidate: "c".into() }).expect("accepted");
    s.apply(&cmd).expect("begin");
    assert!(!c.on_report(t + ms(10), primary_r("a", 1000, &["b", "c"]), &s).grant, "lease withheld");
    let mut at = t;
    while at < t + ms(2400) {
        at += ms(200);
        hear(&mut c, &s, at, &[standby_r("b", 1000), standby_r("c", 900)]);
        assert!(c.decide(at, &s, 0).is_empty(), "too early at {:?}", at - t);
    }
    // b has more WAL, but the operator chose c.
    let cmds = c.decide(t + ms(2500), &s, 0);
    assert!(matches!(&cmds[..], [Command::CompleteSwitchover { lsn: None, .. }]), "{cmds:?}");
    s.apply(&cmds[0]).expect("complete");
    assert_eq!((s.epoch, s.primary.as_deref()), (2, Some("c")));
    assert_eq!(s.history.last().map(|e| e.kind), Some(EventKind::Failover));
}

#[test]
fn in_synchronous_mode_a_forced_failover_needs_the_holder_with_the_most_wal() {
    let (mut c, mut s, t0) = cluster();
    s.sync = SyncState {
        mode: SyncMode::Strict,
        count: 1,
        holders: ["b".to_string()].into(),
        standbys: ["b".to_string()].into(),
    };
    let t = t0 + ms(100);
    assert!(refused(propose(&c, &s, t, Request::Failover { candidate: "c".into() })).contains("only b"));
    assert!(propose(&c, &s, t, Request::Failover { candidate: "b".into() }).is_ok());
    // A planned switchover to c is fine: c must replay everything the old primary wrote anyway.
    assert!(propose(&c, &s, t, switchover_to("c")).is_ok());
    s.sync.holders = ["b".to_string(), "c".to_string()].into();
    hear(&mut c, &s, t, &[standby_r("c", 1200)]);
    assert!(refused(propose(&c, &s, t, Request::Failover { candidate: "b".into() })).contains("c has more WAL"));
}

#[test]
fn a_scheduled_switchover_starts_when_due_and_is_checked_again_then() {
    let (mut c, mut s, t0) = cluster();
    let later = Request::Switchover { candidate: Some("b".into()), primary: None, not_before_unix_ms: 50_000 };
    let past = Request::Switchover { candidate: Some("b".into()), primary: None, not_before_unix_ms: 500 };
    assert!(refused(propose(&c, &s, t0, past)).contains("passed"));
    s.apply(&propose(&c, &s, t0, later).expect("accepted")).expect("begin");
    assert!(s.switchover.as_ref().is_some_and(|x| !x.started));
    let local_a = LocalMemory { primary_epoch: Some(1), ..Default::default() };
    let acts = agent("a", &s, pg(DataDir::Primary, true, false), &local_a);
    assert!(matches!(&acts[..], [AgentAction::PrimaryHousekeeping { .. }]), "not yet: {acts:?}");
    assert!(c.decide(t0 + ms(100), &s, 49_999).is_empty());
    let cmds = c.decide(t0 + ms(100), &s, 50_000);
    assert_eq!(cmds, vec![Command::StartSwitchover { id: 1, at_unix_ms: 50_000 }]);
    // Had b stopped streaming by then, it would be cancelled instead.
    let mut lost = standby_r("b", 1000);
    lost.pg.streaming = false;
    hear(&mut c, &s, t0 + ms(100), &[lost]);
    let cmds = c.decide(t0 + ms(100), &s, 50_000);
    assert!(
        matches!(&cmds[..], [Command::CancelSwitchover { reason, .. }] if reason.contains("scheduled")),
        "{cmds:?}"
    );
    // Cancelled by the operator instead.
    let cancel = propose(&c, &s, t0, Request::CancelSwitchover).expect("cancel");
    s.apply(&cancel).expect("cancel");
    assert!(s.switchover.is_none());
}

#[test]
fn failback_goes_to_the_preferred_primary_or_the_previous_one() {
    let (c, mut s, t0) = cluster();
    assert!(refused(propose(&c, &s, t0, Request::Failback { not_before_unix_ms: 0 })).contains("no preferred"));
    s.apply(&Command::Failover { from_epoch: 1, to: "b".into(), reason: String::new(), at_unix_ms: 0 }).expect("fo");
    let mut c = c;
    let t = t0 + ms(100);
    let mut b = primary_r("b", 2000, &["a", "c"]);
    b.epoch_seen = 2;
    hear(&mut c, &s, t, &[b, standby_r("a", 2000), standby_r("c", 2000)]);
    let cmd = propose(&c, &s, t, Request::Failback { not_before_unix_ms: 0 });
    assert!(matches!(&cmd, Ok(Command::BeginSwitchover { to, forced: false, .. }) if to == "a"), "{cmd:?}");
    let c = c.with_preferred_primary(Some("c".into()));
    let cmd = propose(&c, &s, t, Request::Failback { not_before_unix_ms: 0 });
    assert!(matches!(&cmd, Ok(Command::BeginSwitchover { to, .. }) if to == "c"), "{cmd:?}");
    let c = c.with_preferred_primary(Some("b".into()));
    assert_eq!(
        c.request(t, &s, &Request::Failback { not_before_unix_ms: 0 }, 0),
        Ok(Decision::Nothing("b is already the primary".into()))
    );
}

#[test]
fn requests_take_consecutive_ids_and_a_failover_replaces_a_pending_switchover() {
    let (c, mut s, t0) = cluster();
    let first = propose(&c, &s, t0, switchover_to("b")).expect("accepted");
    let second = propose(&c, &s, t0, Request::Reinit { member: "c".into() }).expect("accepted");
    s.apply(&first).expect("first");
    assert_eq!(s.apply(&second), Err(Rejected::StaleRequest { id: 1, latest: 1 }), "decided before the first");
    s.apply(&Command::Failover { from_epoch: 1, to: "c".into(), reason: String::new(), at_unix_ms: 0 }).expect("fo");
    assert!(s.switchover.is_none());
    assert!(s.last_switchover.as_ref().is_some_and(|o| !o.completed && o.detail.contains("replaced")));
    // An old snapshot decodes without the new fields.
    let old: ClusterState =
        serde_json::from_str(r#"{"epoch":1,"primary":"a","members":{},"history":[]}"#).expect("old");
    assert!(old.switchover.is_none() && old.reinit.is_empty() && old.requests == 0);
}

#[test]
fn reinit_is_acted_on_once_and_cleared_by_its_record() {
    let (c, mut s, t0) = cluster();
    let cmd = propose(&c, &s, t0, Request::Reinit { member: "c".into() }).expect("accepted");
    s.apply(&cmd).expect("reinit");
    assert_eq!(s.reinit.get("c"), Some(&1));
    assert_eq!(
        c.request(t0, &s, &Request::Reinit { member: "c".into() }, 0),
        Ok(Decision::Nothing("a re-initialisation of c is already pending".into()))
    );
    let up = Upstream { host: "h".into(), port: 5000 };
    let local = LocalMemory { upstream: Some(up.clone()), ..Default::default() };
    assert_eq!(
        agent("c", &s, pg(DataDir::Standby, true, true), &local),
        vec![AgentAction::Reinit { from: up.clone(), slot: "pgvigil_c".into(), id: 1 }]
    );
    let done = LocalMemory { reinit_done: Some(1), ..local };
    assert!(agent("c", &s, pg(DataDir::Standby, true, true), &done).is_empty(), "once");
    let record = crate::report::RejoinRecord {
        started_unix_ms: 5,
        method: crate::report::RejoinMethod::Reclone,
        ok: true,
        took_ms: 1,
        detail: "requested".into(),
        reinit: Some(1),
    };
    s.apply(&Command::RecordRejoin { member: "c".into(), record }).expect("record");
    assert!(s.reinit.is_empty());
    assert_eq!(s.history.last().map(|e| e.kind), Some(EventKind::Reclone));
}

#[test]
fn unix_times_read_as_utc() {
    assert_eq!(format_unix_ms(0), "1970-01-01T00:00:00Z");
    assert_eq!(format_unix_ms(1_700_000_000_123), "2023-11-14T22:13:20Z");
}

#[test]
fn times_after_the_year_9999_are_written_without_a_panic() {
    // Found by the fuzz targets: `POST /switchover {"at": "9999-12-31T22:13:13-23:01"}` was taken,
    // and every member panicked applying the committed command (its history line writes the time).
    let last = 253_402_300_799_000;
    assert_eq!(format_unix_ms(last), "9999-12-31T23:59:59Z");
    assert_eq!(format_unix_ms(last + 1000), "253402300800000 ms after 1970-01-01T00:00:00Z");
    assert!(format_unix_ms(u64::MAX).starts_with("18446744073709551615 ms"));
    let (_, mut s, _) = cluster();
    let scheduled = Command::BeginSwitchover {
        id: 1,
        from_epoch: 1,
        to: "b".into(),
        forced: false,
        not_before_unix_ms: u64::MAX,
        reason: "far".into(),
        at_unix_ms: 0,
    };
    s.apply(&scheduled).expect("applies");
    assert!(s.history.last().is_some_and(|e| e.detail.contains("18446744073709551615 ms")));
}
