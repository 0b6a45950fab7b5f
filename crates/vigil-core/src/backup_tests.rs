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
    View {
        epoch,
        primary: Some(primary),
        switchover: false,
        backup: Box::leak(Box::new(b.clone())),
        standbys: vec![],
        backup_standbys: vec![],
        source: None,
        gone: vec![],
    }
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
        source: None,
        note: None,
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
        source: None,
        note: None,
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
    let retry = BackupCommand::Retry {
        id: 1,
        from_epoch: 1,
        member: "b".into(),
        epoch: 2,
        at_unix_ms: t0 + 5_000,
        from_member: Some("a".into()),
        source: None,
        note: None,
    };
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
        source: None,
        note: None,
    };
    // A command written before standby backups (no source, note or from_member) still reads.
    let old = r#"{"backup_op":"retry","id":1,"from_epoch":1,"member":"b","epoch":2,"at_unix_ms":3}"#;
    assert!(matches!(serde_json::from_str::<BackupCommand>(old), Ok(BackupCommand::Retry { from_member: None, .. })));
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

fn source(host: &str) -> BackupSource {
    BackupSource {
        host: host.into(),
        port: 8432,
        data_dir: format!("/srv/{host}"),
        pg_port: 5432,
        socket_dir: "/run/postgresql".into(),
        user: "postgres".into(),
    }
}

fn standby_policy() -> Policy {
    Policy { run_on: RunOn::Standby, ..policy() }
}

#[test]
fn backup_standbys_are_fresh_streaming_serving_standbys_least_lagging_first_nofailover_included() {
    use crate::coordinator::tests::{primary_r, standby_r};
    use crate::state::{Command, Member};
    let mut s = crate::ClusterState::default();
    for n in ["a", "b", "c", "d", "e", "f", "g", "h"] {
        let m = Member { kind: crate::MemberKind::Postgres, ..Default::default() };
        s.apply(&Command::UpsertMember { name: n.into(), member: m, at_unix_ms: 0 }).expect("member");
    }
    s.apply(&Command::Bootstrap { member: "a".into(), at_unix_ms: 0 }).expect("bootstrap");
    let serving = |mut r: crate::HealthReport| {
        r.backup_source = Some(source(&r.member));
        r
    };
    let a = serving(primary_r("a", 1000));
    let b = serving(standby_r("b", 900)); // lags 100
    let mut c = serving(standby_r("c", 990)); // lags 10, tagged nofailover: still a backup standby
    c.tags = crate::Tags::new().with(crate::tags::NOFAILOVER, true);
    let d = serving(standby_r("d", 995)); // the least lag, but its report is stale
    let e = standby_r("e", 999); // serves no pgBackRest TLS server
    let mut f = serving(standby_r("f", 999)); // not streaming (replaying the archive)
    f.pg.streaming = false;
    let g = serving(standby_r("g", 10)); // lags far: still one, ranked last
    let mut h = serving(standby_r("h", 999)); // replay paused: never reaches the backup's start
    h.pg.replay_paused = true;
    let seen = [(&a, true), (&b, true), (&c, true), (&d, false), (&e, true), (&f, true), (&g, true), (&h, true)];
    assert_eq!(backup_standbys(&s, seen), vec!["c", "b", "g"]);
    // Equal lag: priority, then name.
    let mut b2 = b.clone();
    b2.pg.replay_lsn = 990;
    b2.tags = crate::Tags::new().with(crate::tags::PRIORITY, 5);
    assert_eq!(backup_standbys(&s, [(&b2, true), (&c, true)]), vec!["b", "c"]);
}

#[test]
fn with_run_on_standby_a_backup_runs_on_the_best_standby_or_says_why_not() {
    let p = standby_policy();
    let now = at(2026, 11, 30, 1, 0, 0);
    let b = ready_state();
    let src = source("a.example");
    let mut v = view(&b, 1, "a");
    v.backup_standbys = vec!["c", "b"];
    v.source = Some(Box::leak(Box::new(src.clone())));
    let cmds = decide(&v, &p, now);
    assert!(
        matches!(&cmds[..], [BackupCommand::Start { member, source: Some(s), note: None, .. }] if member == "c" && **s == src),
        "{cmds:?}"
    );
    // Applied on every member: a standby may run it in the current epoch only.
    let mut applied = b.clone();
    let (_, line) = applied.apply(&cmds[0], 1, Some("a")).expect("start").expect("a history line");
    assert!(line.contains("started on standby c"), "{line}");
    assert_eq!(applied.running.as_ref().map(|r| r.source.is_some()), Some(true));
    assert!(matches!(b.clone().apply(&cmds[0], 2, Some("a")), Err(BackupRejected::NotPrimary { .. })), "old epoch");
    assert!(matches!(b.clone().apply(&cmds[0], 1, Some("c")), Err(BackupRejected::NotPrimary { .. })), "c is primary");
    // No standby qualifies: on the primary, and the history says why (once, in its line).
    v.backup_standbys = vec![];
    let cmds = decide(&v, &p, now);
    let [BackupCommand::Start { member, source: None, note: Some(note), .. }] = &cmds[..] else { panic!("{cmds:?}") };
    assert_eq!(member, "a");
    assert!(note.contains("no streaming standby"), "{note}");
    let (_, line) = b.clone().apply(&cmds[0], 1, Some("a")).expect("start").expect("line");
    assert!(line.contains("started on a (not on a standby: no streaming standby"), "{line}");
    // The primary's TLS server unknown: on the primary too.
    v.backup_standbys = vec!["b"];
    v.source = None;
    let cmds = decide(&v, &p, now);
    assert!(matches!(&cmds[..], [BackupCommand::Start { member, note: Some(_), .. }] if member == "a"), "{cmds:?}");
    // run_on = "primary" never looks at standbys.
    v.source = Some(Box::leak(Box::new(src)));
    let cmds = decide(&v, &policy(), now);
    assert!(matches!(&cmds[..], [BackupCommand::Start { member, note: None, source: None, .. }] if member == "a"));
}

#[test]
fn a_backup_on_a_standby_that_is_gone_moves_once_to_the_next_and_a_failover_places_it_again() {
    let p = standby_policy();
    let t0 = at(2026, 11, 30, 1, 0, 0);
    let mut b = ready_state();
    let src: &'static BackupSource = Box::leak(Box::new(source("a")));
    let mut v = view(&b, 1, "a");
    v.backup_standbys = vec!["b", "c"];
    v.source = Some(src);
    let start = decide(&v, &p, t0);
    b.apply(&start[0], 1, Some("a")).expect("start on b");
    // Still reporting: nothing moves.
    let mut v = view(&b, 1, "a");
    (v.backup_standbys, v.source) = (vec!["b", "c"], Some(src));
    assert!(decide(&v, &p, t0 + 1_000).is_empty());
    // b is gone (no report for report_timeout + lease_timeout): the backup moves to c.
    v.gone = vec!["b"];
    v.backup_standbys = vec!["c"];
    let cmds = decide(&v, &p, t0 + 9_000);
    let [BackupCommand::Retry { member, from_member: Some(from), epoch: 1, source: Some(_), .. }] = &cmds[..] else {
        panic!("{cmds:?}")
    };
    assert_eq!((member.as_str(), from.as_str()), ("c", "b"));
    let (_, line) = b.apply(&cmds[0], 1, Some("a")).expect("retry").expect("line");
    assert!(line.contains("interrupted on b (epoch 1): retried on standby c"), "{line}");
    assert!(b.clone().apply(&cmds[0], 1, Some("a")).is_err(), "the same retry twice: refused");
    let r = b.running.clone().expect("running");
    assert_eq!((r.member.as_str(), r.attempts), ("c", 2));
    // b's late report is refused; the primary failing over (epoch 2, primary c) places it again:
    // c is the primary now, so it runs on the remaining standby b' if any, here on the primary.
    let late = BackupCommand::Finish {
        id: 1,
        member: "b".into(),
        epoch: 1,
        outcome: BackupOutcome { error: Some("killed".into()), ..Default::default() },
        at_unix_ms: t0 + 10_000,
    };
    assert!(matches!(b.clone().apply(&late, 1, Some("a")), Err(BackupRejected::NotAssigned { .. })));
    let mut v = view(&b, 2, "c");
    v.backup_standbys = vec![];
    let cmds = decide(&v, &p, t0 + 20_000);
    assert!(
        matches!(&cmds[..], [BackupCommand::Retry { member, epoch: 2, source: None, note: Some(_), .. }] if member == "c"),
        "{cmds:?}"
    );
    b.apply(&cmds[0], 2, Some("c")).expect("retry on the new primary");
    assert_eq!(b.running.as_ref().map(|r| (r.member.as_str(), r.attempts)), Some(("c", 3)));
    // A Retry in the same epoch to another member is refused for a backup on the primary.
    let same_epoch = BackupCommand::Retry {
        id: 1,
        from_epoch: 2,
        member: "b".into(),
        epoch: 2,
        at_unix_ms: t0 + 21_000,
        from_member: Some("c".into()),
        source: Some(Box::new(src.clone())),
        note: None,
    };
    assert!(b.apply(&same_epoch, 2, Some("c")).is_err());
}
