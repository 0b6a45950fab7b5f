use super::*;
use crate::state::{Member, Switchover, SwitchoverOutcome};

fn cluster() -> ClusterState {
    let mut s = ClusterState::default();
    for n in ["a", "b"] {
        let m = Member { kind: MemberKind::Postgres, pg_host: "h".into(), pg_port: 5000, ..Default::default() };
        s.apply(&Command::UpsertMember { name: n.into(), member: m, at_unix_ms: 0 }).expect("member");
    }
    s.apply(&Command::Bootstrap { member: "a".into(), at_unix_ms: 0 }).expect("bootstrap");
    s
}

fn begin(id: u64, not_before_unix_ms: u64) -> Command {
    Command::BeginSwitchover {
        id,
        from_epoch: 1,
        to: "b".into(),
        forced: false,
        not_before_unix_ms,
        reason: "test".into(),
        at_unix_ms: 0,
    }
}

fn pending(id: u64, not_before_unix_ms: u64) -> Switchover {
    Switchover {
        id,
        from_epoch: 1,
        from: "a".into(),
        to: "b".into(),
        forced: false,
        not_before_unix_ms,
        started: false,
        requested_unix_ms: 0,
        reason: "test".into(),
    }
}

fn ended(id: u64, completed: bool) -> SwitchoverOutcome {
    SwitchoverOutcome {
        id,
        from: "a".into(),
        from_epoch: 1,
        to: "b".into(),
        forced: false,
        completed,
        epoch: if completed { 2 } else { 1 },
        lsn: None,
        detail: "cancelled: b is not streaming".into(),
    }
}

#[test]
fn a_switchover_is_under_way_scheduled_done_refused_or_overtaken() {
    let mut s = cluster();
    assert!(matches!(outcome(&begin(1, 0), &s), Some(Outcome::Refused { .. })), "never committed");
    s.requests = 1;
    s.switchover = Some(pending(1, 0));
    assert_eq!(outcome(&begin(1, 0), &s), None, "under way");
    s.switchover = Some(pending(1, 4_102_444_800_000));
    assert!(matches!(outcome(&begin(1, 4_102_444_800_000), &s),
        Some(Outcome::Scheduled { id: 1, message }) if message.contains("2100-01-01T00:00:00Z")));
    s.switchover = None;
    s.last_switchover = Some(ended(1, true));
    assert_eq!(
        outcome(&begin(1, 0), &s),
        Some(Outcome::Done { message: "switched over from a to b".into(), id: Some(1) })
    );
    s.last_switchover = Some(ended(1, false));
    assert_eq!(
        outcome(&begin(1, 0), &s),
        Some(Outcome::Refused { message: "cancelled: b is not streaming".into(), id: Some(1) })
    );
    s.last_switchover = Some(ended(2, true));
    assert!(
        matches!(outcome(&begin(1, 0), &s), Some(Outcome::Refused { id: None, message }) if message.contains("another request")),
        "replaced by another request at once"
    );
}

#[test]
fn a_cancellation_that_came_too_late_is_refused() {
    let mut s = cluster();
    let cancel = Command::CancelSwitchover { id: 1, reason: "operator".into(), at_unix_ms: 0 };
    s.switchover = Some(pending(1, 0));
    assert_eq!(outcome(&cancel, &s), None);
    s.switchover = None;
    s.last_switchover = Some(ended(1, true));
    assert!(matches!(outcome(&cancel, &s), Some(Outcome::Refused { message, .. }) if message.contains("completed")));
    s.last_switchover = Some(ended(1, false));
    assert!(matches!(outcome(&cancel, &s), Some(Outcome::Done { .. })));
}

#[test]
fn a_reinit_ends_when_its_reclone_is_recorded_and_a_failed_one_says_so() {
    let mut s = cluster();
    let reinit = Command::RequestReinit { id: 1, member: "b".into(), at_unix_ms: 0 };
    s.apply(&reinit).expect("reinit");
    assert_eq!(outcome(&reinit, &s), None, "pending");
    s.reinit.clear();
    assert!(
        matches!(outcome(&reinit, &s), Some(Outcome::Done { message, .. }) if message.starts_with("b re-initialised"))
    );
    s.history.push(crate::state::Event {
        at_unix_ms: 0,
        epoch: 1,
        kind: EventKind::Reclone,
        member: "b".into(),
        detail: "failed: pg_basebackup exited 1".into(),
    });
    assert!(matches!(outcome(&reinit, &s), Some(Outcome::Failed(m)) if m.contains("pg_basebackup")));
}
