use super::*;

const MS: Duration = Duration::from_millis(1);

fn committed(epoch: u64, primary: Option<&str>) -> Committed {
    Committed { epoch, primary: primary.map(str::to_string), switching_over: false }
}

#[test]
fn the_fence_counts_from_the_send_time_and_ends_with_the_lease() {
    let sent = Instant::now();
    let f = Fence::from_answer(sent, 3, 1500 * MS, true);
    let c = committed(3, Some("a"));
    assert_eq!(rw_route(&c, &f, sent + 1499 * MS), RwRoute::Forward { member: "a".into(), epoch: 3 });
    assert_eq!(rw_route(&c, &f, sent + 1500 * MS), RwRoute::Hold(HoldReason::NoLease));
    // No lease left: no bound at all.
    assert_eq!(Fence::from_answer(sent, 3, Duration::ZERO, true).until, None);
}

#[test]
fn a_fence_for_another_epoch_forwards_nothing() {
    let now = Instant::now();
    let f = Fence::from_answer(now, 3, 2000 * MS, true);
    // The committed state moved on (a failover): the old primary's lease says nothing of the new one.
    assert_eq!(rw_route(&committed(4, Some("b")), &f, now), RwRoute::Hold(HoldReason::NoLease));
    // Committed state lagging behind the answers: nothing either.
    let f5 = Fence::from_answer(now, 5, 2000 * MS, true);
    assert_eq!(rw_route(&committed(4, Some("b")), &f5, now), RwRoute::Hold(HoldReason::NoLease));
}

#[test]
fn a_primary_not_writable_yet_holds() {
    let now = Instant::now();
    let f = Fence::from_answer(now, 1, 2000 * MS, false);
    assert_eq!(rw_route(&committed(1, Some("a")), &f, now), RwRoute::Hold(HoldReason::NotWritable));
    // The next answer says it is.
    let mut f2 = f;
    f2.merge(Fence::from_answer(now + MS, 1, Duration::ZERO, true));
    assert!(matches!(rw_route(&committed(1, Some("a")), &f2, now + MS), RwRoute::Forward { .. }));
    // A late answer to an older report does not take it back.
    f2.merge(Fence::from_answer(now, 1, 2000 * MS, false));
    assert!(f2.writable);
}

#[test]
fn no_primary_or_a_started_switchover_holds() {
    let now = Instant::now();
    let f = Fence::from_answer(now, 1, 2000 * MS, true);
    assert_eq!(rw_route(&committed(1, None), &f, now), RwRoute::Hold(HoldReason::NoPrimary));
    let mut c = committed(1, Some("a"));
    c.switching_over = true;
    assert_eq!(rw_route(&c, &f, now), RwRoute::Hold(HoldReason::Switchover));
}

#[test]
fn answers_out_of_order_keep_the_later_bound_and_newer_epochs_replace() {
    let t0 = Instant::now();
    let mut f = Fence::default();
    f.merge(Fence::from_answer(t0 + 500 * MS, 2, 1000 * MS, true));
    // A slow answer to an earlier report arrives after: it does not shorten the bound.
    f.merge(Fence::from_answer(t0, 2, 1000 * MS, true));
    assert_eq!(f.until, Some(t0 + 1500 * MS));
    // An answer with no lease left does not shorten it either: what was said still holds.
    f.merge(Fence::from_answer(t0 + 600 * MS, 2, Duration::ZERO, true));
    assert_eq!(f.until, Some(t0 + 1500 * MS));
    // An older epoch is ignored; a newer one replaces, even with no lease yet.
    f.merge(Fence::from_answer(t0 + 700 * MS, 1, 2000 * MS, true));
    assert_eq!((f.epoch, f.until), (2, Some(t0 + 1500 * MS)));
    f.merge(Fence::from_answer(t0 + 800 * MS, 3, Duration::ZERO, true));
    assert_eq!((f.epoch, f.until), (3, None));
}

fn rules() -> RoRules {
    RoRules {
        max_lag_bytes: 1000,
        max_lag_time: Duration::from_secs(10),
        no_standby: NoStandby::Primary,
        stale_after: Duration::from_secs(3),
    }
}

fn standby(name: &str, replay: u64) -> StandbyView {
    StandbyView {
        member: name.into(),
        running: true,
        in_recovery: true,
        streaming: true,
        replay_lsn: replay,
        replay_paused: false,
        noloadbalance: false,
    }
}

#[test]
fn the_pool_takes_streaming_standbys_within_the_bounds() {
    let t0 = Instant::now();
    let mut h = LsnHistory::default();
    h.push(t0, 10_000);
    let mut paused = standby("p", 10_000);
    paused.replay_paused = true;
    let mut tagged = standby("t", 10_000);
    tagged.noloadbalance = true;
    let mut detached = standby("d", 10_000);
    detached.streaming = false;
    let views = [standby("a", 10_000), standby("b", 8_000), paused, tagged, detached];
    let mut pool = RoPool::default();
    pool.update(&rules(), t0, Some(t0), &h, &views);
    assert_eq!(pool.members().iter().collect::<Vec<_>>(), ["a"]);
    assert_eq!(pool.out().get("b"), Some(&Out::BehindBytes));
    assert_eq!(pool.out().get("p"), Some(&Out::ReplayPaused));
    assert_eq!(pool.out().get("t"), Some(&Out::NoLoadBalance));
    assert_eq!(pool.out().get("d"), Some(&Out::NotStreaming));
}

#[test]
fn a_standby_leaves_at_the_bound_and_returns_at_half_of_it() {
    let t0 = Instant::now();
    let mut h = LsnHistory::default();
    h.push(t0, 10_000);
    let mut pool = RoPool::default();
    // A newcomer 600 bytes behind is within the bound but not within half of it: not yet.
    pool.update(&rules(), t0, Some(t0), &h, &[standby("a", 9_400)]);
    assert!(pool.members().is_empty());
    pool.update(&rules(), t0, Some(t0), &h, &[standby("a", 9_600)]);
    assert!(pool.members().contains("a"));
    // In the pool, 900 behind stays; 1001 leaves.
    pool.update(&rules(), t0, Some(t0), &h, &[standby("a", 9_100)]);
    assert!(pool.members().contains("a"));
    pool.update(&rules(), t0, Some(t0), &h, &[standby("a", 8_999)]);
    assert_eq!(pool.out().get("a"), Some(&Out::BehindBytes));
    // Back at 700 behind: still out (hysteresis); at 400: in.
    pool.update(&rules(), t0, Some(t0), &h, &[standby("a", 9_300)]);
    assert!(pool.members().is_empty());
    pool.update(&rules(), t0, Some(t0), &h, &[standby("a", 9_600)]);
    assert!(pool.members().contains("a"));
}

#[test]
fn lag_in_time_is_how_long_the_primary_has_been_past_the_replayed_position() {
    let t0 = Instant::now();
    let mut h = LsnHistory::default();
    h.push(t0, 100);
    h.push(t0 + Duration::from_secs(1), 200);
    h.push(t0 + Duration::from_secs(2), 300);
    h.push(t0 + Duration::from_secs(3), 300); // no move: the first time counts
    let now = t0 + Duration::from_secs(20);
    assert_eq!(h.lag_time(300, now), Duration::ZERO);
    assert_eq!(h.lag_time(250, now), Duration::from_secs(18));
    assert_eq!(h.lag_time(150, now), Duration::from_secs(19));
    assert_eq!(h.lag_time(0, now), Duration::from_secs(20));
    // Within 10 bytes-wise, but stuck for 18 s behind a primary that moved on: out.
    let mut pool = RoPool::default();
    let rules = RoRules { max_lag_bytes: 1 << 20, ..rules() };
    pool.update(&rules, now, Some(now), &h, &[standby("a", 250)]);
    assert_eq!(pool.out().get("a"), Some(&Out::BehindTime));
    // A new timeline (lower position) starts the history again.
    h.push(now, 50);
    assert_eq!(h.latest(), 50);
    assert_eq!(h.lag_time(50, now + MS), Duration::ZERO);
}

#[test]
fn a_stale_view_empties_the_pool() {
    let t0 = Instant::now();
    let mut h = LsnHistory::default();
    h.push(t0, 100);
    let mut pool = RoPool::default();
    pool.update(&rules(), t0 + Duration::from_secs(3), Some(t0), &h, &[standby("a", 100)]);
    assert!(pool.members().contains("a"));
    pool.update(&rules(), t0 + Duration::from_secs(4), Some(t0), &h, &[standby("a", 100)]);
    assert_eq!(pool.out().get("a"), Some(&Out::Stale));
    pool.update(&rules(), t0, None, &h, &[standby("a", 100)]);
    assert!(pool.members().is_empty());
}

#[test]
fn least_sessions_first_then_the_fallback() {
    let t0 = Instant::now();
    let mut h = LsnHistory::default();
    h.push(t0, 100);
    let mut pool = RoPool::default();
    pool.update(&rules(), t0, Some(t0), &h, &[standby("a", 100), standby("b", 100)]);
    let sessions: BTreeMap<String, usize> = [("a".to_string(), 3), ("b".to_string(), 1)].into();
    let rw = RwRoute::Forward { member: "p".into(), epoch: 1 };
    let none = BTreeSet::new();
    assert_eq!(ro_route(&pool, &sessions, &rules(), &rw, &none), RoRoute::Forward("b".into()));
    assert_eq!(ro_route(&pool, &BTreeMap::new(), &rules(), &rw, &none), RoRoute::Forward("a".into()));
    let empty = RoPool::default();
    assert_eq!(ro_route(&empty, &sessions, &rules(), &rw, &none), RoRoute::Forward("p".into()));
    // The primary only while read-write could go there.
    assert_eq!(ro_route(&empty, &sessions, &rules(), &RwRoute::Hold(HoldReason::NoLease), &none), RoRoute::Refuse);
    let refuse = RoRules { no_standby: NoStandby::Refuse, ..rules() };
    assert_eq!(ro_route(&empty, &sessions, &refuse, &rw, &none), RoRoute::Refuse);
}

#[test]
fn full_backends_are_skipped_and_a_session_queues_when_all_are_full() {
    let t0 = Instant::now();
    let mut h = LsnHistory::default();
    h.push(t0, 100);
    let mut pool = RoPool::default();
    pool.update(&rules(), t0, Some(t0), &h, &[standby("a", 100), standby("b", 100)]);
    let ro: BTreeMap<String, usize> = [("a".to_string(), 1), ("b".to_string(), 2)].into();
    let rw = RwRoute::Forward { member: "p".into(), epoch: 1 };
    // Open sessions of both ports count toward the limit.
    let open: BTreeMap<String, usize> = [("a".to_string(), 2), ("b".to_string(), 2), ("p".to_string(), 1)].into();
    assert_eq!(full_backends(&open, None), BTreeSet::new());
    let full = full_backends(&open, Some(2));
    assert_eq!(full, ["a".to_string(), "b".to_string()].into());
    // Both standbys full: wait for the least loaded of them, never spill to the primary.
    assert_eq!(ro_route(&pool, &ro, &rules(), &rw, &full), RoRoute::Queue("a".into()));
    let only_a: BTreeSet<String> = ["a".to_string()].into();
    assert_eq!(ro_route(&pool, &ro, &rules(), &rw, &only_a), RoRoute::Forward("b".into()));
    // The primary as the fallback queues when it is full.
    let empty = RoPool::default();
    let p_full: BTreeSet<String> = ["p".to_string()].into();
    assert_eq!(ro_route(&empty, &ro, &rules(), &rw, &p_full), RoRoute::Queue("p".into()));
}

#[test]
fn queued_sessions_get_slots_in_arrival_order() {
    let open: BTreeMap<String, usize> = [("p".to_string(), 1), ("s".to_string(), 0)].into();
    let max = Some(2);
    let set = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<BTreeSet<String>>();
    // Tickets 3 and 5 wait for p (a slot is free: one was just given back).
    let waiting: BTreeMap<String, BTreeSet<u64>> = [("p".to_string(), [3, 5].into())].into();
    // The first in line may take it; the second and a newcomer may not.
    assert_eq!(closed_backends(&open, max, &waiting, Some(3)), set(&[]));
    assert_eq!(closed_backends(&open, max, &waiting, Some(5)), set(&["p"]));
    assert_eq!(closed_backends(&open, max, &waiting, None), set(&["p"]));
    // A backend nobody waits for stays open to everyone below its limit.
    let full: BTreeMap<String, usize> = [("p".to_string(), 2), ("s".to_string(), 0)].into();
    assert_eq!(closed_backends(&full, max, &waiting, Some(3)), set(&["p"]));
    // An earlier session waiting for s (ticket 4, a read-only one) comes before ticket 5 there.
    let waiting: BTreeMap<String, BTreeSet<u64>> =
        [("p".to_string(), [3].into()), ("s".to_string(), [4, 5].into())].into();
    assert_eq!(closed_backends(&open, max, &waiting, Some(5)), set(&["p", "s"]));
    assert_eq!(closed_backends(&open, max, &waiting, Some(4)), set(&["p"]));
    // No limit and nobody queued: nothing is closed.
    assert_eq!(closed_backends(&open, None, &BTreeMap::new(), None), set(&[]));
}

#[test]
fn refusals_carry_a_sqlstate_and_a_reason() {
    let held = Refused::Held { reason: HoldReason::NoLease, hold: Duration::from_secs(1) };
    assert_eq!((held.reason(), held.sqlstate()), ("no_lease", "57P03"));
    assert!(held.message().contains("hold_timeout"), "{}", held.message());
    assert_eq!((Refused::NoStandby.reason(), Refused::NoStandby.sqlstate()), ("no_standby", "57P03"));
    let full = Refused::Full { member: "a".into(), max: 2, waited: Duration::from_millis(500) };
    assert_eq!((full.reason(), full.sqlstate()), ("backend_full", "53300"));
    assert!(full.message().contains("max_sessions_per_backend"), "{}", full.message());
    let header = Refused::ProxyHeader(crate::proxy_header::BadHeader::Missing);
    assert_eq!((header.reason(), header.sqlstate()), ("proxy_header_missing", "08P01"));
    assert!(header.message().contains("proxy_protocol_from"), "{}", header.message());
}

#[test]
fn cancel_requests_are_told_from_other_first_packets() {
    let cancel = [0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e];
    assert!(is_cancel_request(&cancel));
    let ssl = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    assert!(!is_cancel_request(&ssl));
    let gss = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30];
    assert!(!is_cancel_request(&gss));
    // A startup packet: any length, protocol 3.0.
    let startup = [0, 0, 0, 84, 0, 3, 0, 0];
    assert!(!is_cancel_request(&startup));
}
