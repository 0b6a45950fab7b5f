use super::*;

/// Unix ms of a UTC date and time.
fn at(y: i64, mo: u32, d: u32, h: u64, mi: u64, s: u64) -> u64 {
    (days_from_civil(y, mo, d) as u64 * 86_400 + h * 3600 + mi * 60 + s) * 1000
}

fn cron(s: &str) -> Cron {
    Cron::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

#[test]
fn calendar_arithmetic_round_trips() {
    assert_eq!(days_from_civil(1970, 1, 1), 0);
    assert_eq!(civil_from_days(0), (1970, 1, 1));
    assert_eq!(days_from_civil(2000, 3, 1), 11_017);
    for days in [-1000, 0, 59, 60, 11_016, 11_017, 20_000, 20_513, 30_000] {
        let (y, m, d) = civil_from_days(days);
        assert_eq!(days_from_civil(y, m, d), days);
    }
    // 2026-11-30 is a Monday.
    assert_eq!(Civil::of(at(2026, 11, 30, 0, 0, 0) / 1000).weekday, 1);
}

#[test]
fn next_slots_follow_the_fields() {
    let t = at(2026, 11, 30, 19, 55, 10);
    assert_eq!(cron("0 1 * * *").next_after(t), Some(at(2026, 12, 1, 1, 0, 0)));
    assert_eq!(cron("*/15 * * * *").next_after(t), Some(at(2026, 11, 30, 20, 0, 0)));
    assert_eq!(cron("*/20 * * * * *").next_after(t), Some(at(2026, 11, 30, 19, 55, 20)));
    assert_eq!(cron("@daily").next_after(t), Some(at(2026, 12, 1, 0, 0, 0)));
    // Sunday 2026-12-06.
    assert_eq!(cron("30 2 * * 0").next_after(t), Some(at(2026, 12, 6, 2, 30, 0)));
    assert_eq!(cron("30 2 * * 7").next_after(t), Some(at(2026, 12, 6, 2, 30, 0)));
    // Mon-Sat; today is Monday: the next 01:00 is tomorrow (Tuesday).
    assert_eq!(cron("0 1 * * 1-6").next_after(t), Some(at(2026, 12, 1, 1, 0, 0)));
    // Both days restricted: either one (the 1st, or a Friday).
    assert_eq!(cron("0 0 1 * 5").next_after(t), Some(at(2026, 12, 1, 0, 0, 0)));
    assert_eq!(cron("0 0 1 * 5").next_after(at(2026, 12, 1, 0, 0, 0)), Some(at(2026, 12, 4, 0, 0, 0)));
    // Across a year, and to a leap day.
    assert_eq!(cron("0 0 1 1 *").next_after(t), Some(at(2027, 1, 1, 0, 0, 0)));
    assert_eq!(cron("0 0 29 2 *").next_after(t), Some(at(2028, 2, 29, 0, 0, 0)));
    // Strictly after: a slot exactly at t is not "after" it.
    assert_eq!(cron("0 1 * * *").next_after(at(2026, 12, 1, 1, 0, 0)), Some(at(2026, 12, 2, 1, 0, 0)));
    assert_eq!(cron("5-10/5 0 * * *").next_after(t), Some(at(2026, 12, 1, 0, 5, 0)));
}

#[test]
fn bad_expressions_say_why() {
    for (text, why) in [
        ("* * * *", "4 fields"),
        ("61 * * * *", "minutes"),
        ("* 24 * * *", "hours"),
        ("*/0 * * * *", "step of 0"),
        ("x * * * *", "bad number"),
        ("0 0 30 2 *", "never matches"),
        ("0 0 * 13 *", "month"),
    ] {
        let e = Cron::parse(text).expect_err(text);
        assert!(e.contains(why), "{text}: {e}");
    }
}

fn ready_state() -> BackupState {
    BackupState {
        stanza_ready: Some(StanzaReady { member: "a".into(), epoch: 1, at_unix_ms: at(2026, 11, 30, 0, 0, 0) }),
        ..Default::default()
    }
}

fn policy() -> Policy {
    let mut schedule = BTreeMap::new();
    schedule.insert(BackupType::Full, cron("0 1 * * 0"));
    schedule.insert(BackupType::Diff, cron("0 1 * * 1-6"));
    schedule.insert(BackupType::Incr, cron("0 */6 * * *"));
    Policy { schedule, timeout_ms: 3_600_000, ..Default::default() }
}

fn view(b: &BackupState, epoch: u64, primary: &'static str) -> View<'static> {
    // The tests keep their states alive for the call; leak a clone for the 'static view.
    View { epoch, primary: Some(primary), switchover: false, backup: Box::leak(Box::new(b.clone())), standbys: vec![] }
}

#[test]
fn the_widest_due_type_runs_once_per_slot() {
    let mut b = ready_state();
    let p = policy();
    // 2026-11-30 (Monday) 00:30: nothing is due yet since the stanza was created at 00:00.
    assert!(decide(&view(&b, 1, "a"), &p, at(2026, 11, 30, 0, 30, 0)).is_empty());
    // 01:00 Monday: the diff's slot and no incr (its 00:00 slot was before the stanza).
    let now = at(2026, 11, 30, 1, 0, 0);
    let cmds = decide(&view(&b, 1, "a"), &p, now);
    let expected = BackupCommand::Start {
        id: 1,
        kind: BackupType::Diff,
        member: "a".into(),
        epoch: 1,
        reason: "scheduled".into(),
        serves: vec![BackupType::Diff],
        at_unix_ms: now,
    };
    assert_eq!(cmds, vec![expected]);
    b.apply(&cmds[0], 1, Some("a")).expect("start");
    // Running: nothing else starts.
    assert!(decide(&view(&b, 1, "a"), &p, at(2026, 11, 30, 1, 30, 0)).is_empty());
    let done = BackupCommand::Finish {
        id: 1,
        member: "a".into(),
        epoch: 1,
        outcome: BackupOutcome { label: Some("L1".into()), ..Default::default() },
        at_unix_ms: now + 60_000,
    };
    b.apply(&done, 1, Some("a")).expect("finish");
    assert!(b.done[0].ok() && b.running.is_none());
    // Served: the same slot does not start another.
    assert!(decide(&view(&b, 1, "a"), &p, now + 120_000).is_empty());
    // 06:00: the incr.
    let cmds = decide(&view(&b, 1, "a"), &p, at(2026, 11, 30, 6, 0, 5));
    assert!(matches!(&cmds[..], [BackupCommand::Start { id: 2, kind: BackupType::Incr, .. }]), "{cmds:?}");
    // A day later with both diff (01:00) and incr (00:00) slots passed: one diff serves both.
    let cmds = decide(&view(&b, 1, "a"), &p, at(2026, 12, 1, 2, 0, 0));
    assert!(
        matches!(&cmds[..], [BackupCommand::Start { kind: BackupType::Diff, serves, .. }] if serves.len() == 2),
        "{cmds:?}"
    );
}

#[test]
fn nothing_starts_without_a_stanza_a_primary_or_during_a_switchover() {
    let p = policy();
    let now = at(2026, 12, 6, 1, 0, 0);
    let b = BackupState::default();
    assert!(decide(&view(&b, 1, "a"), &p, now).is_empty(), "no stanza");
    let b = ready_state();
    let mut v = view(&b, 1, "a");
    v.switchover = true;
    assert!(decide(&v, &p, now).is_empty(), "switchover");
    v.switchover = false;
    v.primary = None;
    assert!(decide(&v, &p, now).is_empty(), "no primary");
    let mut b = ready_state();
    let start = BackupCommand::Start {
        id: 1,
        kind: BackupType::Full,
        member: "a".into(),
        epoch: 1,
        reason: "manual".into(),
        serves: vec![],
        at_unix_ms: now,
    };
    assert_eq!(b.clone().apply(&start, 1, Some("b")), Err(BackupRejected::NotPrimary { member: "a".into(), epoch: 1 }));
    assert_eq!(BackupState::default().apply(&start, 1, Some("a")), Err(BackupRejected::NoStanza));
    b.apply(&start, 1, Some("a")).expect("start");
    assert_eq!(b.clone().apply(&start, 1, Some("a")), Err(BackupRejected::Running(1)), "twice: refused");
}

#[test]
fn a_backup_interrupted_by_a_failover_moves_to_the_new_primary_and_counts_once() {
    let p = policy();
    let mut b = ready_state();
    let t0 = at(2026, 12, 6, 1, 0, 0);
    let start = decide(&view(&b, 1, "a"), &p, t0);
    b.apply(&start[0], 1, Some("a")).expect("start");
    // Failover: epoch 2, primary b.
    let cmds = decide(&view(&b, 2, "b"), &p, t0 + 5_000);
    let retry = BackupCommand::Retry { id: 1, from_epoch: 1, member: "b".into(), epoch: 2, at_unix_ms: t0 + 5_000 };
    assert_eq!(cmds, vec![retry.clone()]);
    assert!(b.apply(&retry, 2, Some("b")).expect("retry").is_some());
    assert_eq!(
        b.clone().apply(&retry, 2, Some("b")).map(|_| ()),
        Err(BackupRejected::NotAssigned { id: 1, member: "b".into(), epoch: 1 })
    );
    // The deposed member's late report is refused; the new primary's counts, once.
    let late = BackupCommand::Finish {
        id: 1,
        member: "a".into(),
        epoch: 1,
        outcome: BackupOutcome { error: Some("server stopped".into()), ..Default::default() },
        at_unix_ms: t0 + 6_000,
    };
    assert!(matches!(b.apply(&late, 2, Some("b")), Err(BackupRejected::NotAssigned { .. })));
    let done = BackupCommand::Finish {
        id: 1,
        member: "b".into(),
        epoch: 2,
        outcome: BackupOutcome { label: Some("L".into()), ..Default::default() },
        at_unix_ms: t0 + 60_000,
    };
    b.apply(&done, 2, Some("b")).expect("finish");
    assert!(b.apply(&done, 2, Some("b")).is_err(), "a second report is refused");
    assert_eq!(b.done.len(), 1);
    assert_eq!((b.done[0].member.as_str(), b.done[0].attempts, b.done[0].duration_ms), ("b", 2, 55_000));
}

#[test]
fn a_backup_that_never_reports_is_recorded_as_failed() {
    let p = policy();
    let mut b = ready_state();
    let t0 = at(2026, 12, 6, 1, 0, 0);
    let start = decide(&view(&b, 1, "a"), &p, t0);
    b.apply(&start[0], 1, Some("a")).expect("start");
    assert!(decide(&view(&b, 1, "a"), &p, t0 + p.timeout_ms).is_empty());
    let cmds = decide(&view(&b, 1, "a"), &p, t0 + p.timeout_ms + 1);
    assert!(matches!(&cmds[..], [BackupCommand::Finish { outcome, .. }] if outcome.error.is_some()), "{cmds:?}");
    b.apply(&cmds[0], 1, Some("a")).expect("finish");
    assert!(!b.done[0].ok());
}

#[test]
fn old_states_and_commands_round_trip() {
    let b: BackupState = serde_json::from_str("{}").expect("empty");
    assert_eq!(b, BackupState::default());
    let cmd = BackupCommand::Start {
        id: 1,
        kind: BackupType::Incr,
        member: "a".into(),
        epoch: 3,
        reason: "manual".into(),
        serves: vec![],
        at_unix_ms: 9,
    };
    let text = serde_json::to_string(&cmd).expect("encode");
    assert_eq!(serde_json::from_str::<BackupCommand>(&text).expect("decode"), cmd);
    let mut s = ready_state();
    s.served_unix_ms.insert(BackupType::Full, 5);
    let text = serde_json::to_string(&s).expect("encode");
    assert_eq!(serde_json::from_str::<BackupState>(&text).expect("decode"), s);
}

#[test]
fn a_standby_is_created_from_the_newest_recent_successful_backup() {
    let mut b = ready_state();
    assert!(clone_source(&b, 10_000, 5_000).is_err_and(|e| e.contains("no backup")));
    let rec = |id: u64, label: &str, finished: u64, error: Option<&str>| BackupRecord {
        id,
        kind: BackupType::Full,
        member: "a".into(),
        epoch: 1,
        reason: "scheduled".into(),
        attempts: 1,
        requested_unix_ms: 0,
        finished_unix_ms: finished,
        duration_ms: 1,
        outcome: BackupOutcome { label: Some(label.into()), error: error.map(str::to_string), ..Default::default() },
    };
    b.done.push(rec(1, "F1", 1_000, None));
    b.done.push(rec(2, "F2", 8_000, Some("disk full")));
    assert_eq!(clone_source(&b, 5_000, 5_000), Ok("F1".into()));
    assert!(clone_source(&b, 6_001, 5_000).is_err_and(|e| e.contains("5 s old")), "too old");
    b.done.push(rec(3, "F3", 9_000, None));
    assert_eq!(clone_source(&b, 10_000, 5_000), Ok("F3".into()));
}
