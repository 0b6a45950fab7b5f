//! Which standby to promote: healthy, allowed, caught up, then the most WAL, then priority.

use crate::report::{DataDir, HealthReport, MemberKind};
use crate::state::ClusterState;

/// Why a member is not a candidate; shown in logs and in the failover reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Excluded {
    IsPrimary,
    NotPostgres,
    NoFailoverTag,
    NoCurrentReport,
    NotARunningStandby,
    NeedsRejoin,
    Lagging { behind: u64 },
}

/// A member's report and whether it is current (fresh enough to trust).
pub struct Seen<'a> {
    pub report: &'a HealthReport,
    pub current: bool,
}

/// Why each member was or was not chosen.
pub fn exclusion(state: &ClusterState, seen: &Seen<'_>, primary_lsn: Option<u64>, max_lag: u64) -> Option<Excluded> {
    let r = seen.report;
    let member = state.members.get(&r.member);
    if state.is_primary(&r.member) {
        return Some(Excluded::IsPrimary);
    }
    if r.kind != MemberKind::Postgres || member.is_some_and(|m| m.kind != MemberKind::Postgres) {
        return Some(Excluded::NotPostgres);
    }
    if r.tags.nofailover() || member.is_some_and(|m| m.tags.nofailover()) {
        return Some(Excluded::NoFailoverTag);
    }
    if !seen.current || member.is_none() {
        return Some(Excluded::NoCurrentReport);
    }
    if r.pg.needs_rejoin {
        return Some(Excluded::NeedsRejoin);
    }
    if !(r.pg.running && r.pg.in_recovery && r.pg.data_dir == DataDir::Standby) {
        return Some(Excluded::NotARunningStandby);
    }
    if let Some(p) = primary_lsn {
        let behind = p.saturating_sub(r.wal_position());
        if behind > max_lag {
            return Some(Excluded::Lagging { behind });
        }
    }
    None
}

/// Orders members best first, the one way every choice of a member ranks them (failover,
/// switchover, the synchronous set, bootstrap): by what the caller's `key` puts first (larger
/// wins: having data, say), then by WAL (more wins; each caller says which position counts),
/// then by configured priority (higher wins), then by name (for a deterministic answer).
pub fn rank(reports: &mut [&HealthReport], key: impl Fn(&HealthReport) -> (u8, u64)) {
    reports.sort_by(|a, b| {
        let ((first_a, wal_a), (first_b, wal_b)) = (key(a), key(b));
        first_b
            .cmp(&first_a)
            .then(wal_b.cmp(&wal_a))
            .then(b.tags.priority().cmp(&a.tags.priority()))
            .then(a.member.cmp(&b.member))
    });
}

/// The best candidate among `seen` ([`rank`]ed by received WAL).
///
/// `primary_lsn` is the last WAL position the failed primary reported, when known.
pub fn choose<'a>(
    state: &ClusterState,
    seen: &[Seen<'a>],
    primary_lsn: Option<u64>,
    max_lag: u64,
) -> Option<&'a HealthReport> {
    let mut ok: Vec<&HealthReport> =
        seen.iter().filter(|s| exclusion(state, s, primary_lsn, max_lag).is_none()).map(|s| s.report).collect();
    rank(&mut ok, |r| (0, r.wal_position()));
    ok.first().copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::PgStatus;
    use crate::state::{Command, Member};

    fn standby(name: &str, lsn: u64, priority: i32) -> HealthReport {
        HealthReport {
            member: name.into(),
            kind: MemberKind::Postgres,
            pg_host: "h".into(),
            pg_port: 1,
            tags: crate::Tags::new().with(crate::tags::PRIORITY, priority),
            pg: PgStatus {
                running: true,
                in_recovery: true,
                timeline: 1,
                received_lsn: lsn,
                replay_lsn: lsn,
                data_dir: DataDir::Standby,
                streaming: true,
                ..Default::default()
            },
            epoch_seen: 1,
            proxy: None,
            backup_source: None,
        }
    }

    fn state(names: &[&str]) -> ClusterState {
        let mut s = ClusterState::default();
        for n in names {
            let m = Member { kind: MemberKind::Postgres, ..Default::default() };
            s.apply(&Command::UpsertMember { name: n.to_string(), member: m, at_unix_ms: 0 }).ok();
        }
        s.apply(&Command::Bootstrap { member: "p".into(), at_unix_ms: 0 }).ok();
        s
    }

    fn pick(reports: &[(HealthReport, bool)], primary_lsn: Option<u64>) -> Option<String> {
        let s = state(&["p", "a", "b", "c"]);
        let seen: Vec<Seen> = reports.iter().map(|(r, c)| Seen { report: r, current: *c }).collect();
        choose(&s, &seen, primary_lsn, 1000).map(|r| r.member.clone())
    }

    #[test]
    fn table_of_candidate_choices() {
        let mut nofo = standby("a", 900, 0);
        nofo.tags.insert(crate::tags::NOFAILOVER, "true");
        let mut down = standby("a", 900, 0);
        down.pg.running = false;
        let mut rejoin = standby("a", 900, 0);
        rejoin.pg.needs_rejoin = true;
        let mut primaryish = standby("a", 900, 0);
        primaryish.pg.in_recovery = false;
        let primary = standby("p", 5000, 0);

        type Case<'a> = (&'a str, Vec<(HealthReport, bool)>, Option<u64>, Option<&'a str>);
        let cases: Vec<Case> = vec![
            ("highest lsn wins", vec![(standby("a", 10, 0), true), (standby("b", 20, 0), true)], None, Some("b")),
            (
                "priority breaks lsn ties",
                vec![(standby("a", 20, 1), true), (standby("b", 20, 5), true)],
                None,
                Some("b"),
            ),
            ("name breaks full ties", vec![(standby("b", 20, 1), true), (standby("a", 20, 1), true)], None, Some("a")),
            ("lsn beats priority", vec![(standby("a", 21, 0), true), (standby("b", 20, 9), true)], None, Some("a")),
            ("nofailover never", vec![(nofo, true), (standby("b", 1, 0), true)], None, Some("b")),
            ("stale report never", vec![(standby("a", 50, 0), false), (standby("b", 1, 0), true)], None, Some("b")),
            ("down standby never", vec![(down, true)], None, None),
            ("needs rejoin never", vec![(rejoin, true)], None, None),
            ("not in recovery never", vec![(primaryish, true)], None, None),
            ("the primary never", vec![(primary, true)], None, None),
            ("lag within bound", vec![(standby("a", 9000, 0), true)], Some(10_000), Some("a")),
            ("lag over bound", vec![(standby("a", 8000, 0), true)], Some(10_000), None),
            ("unknown member never", vec![(standby("zz", 50, 0), true)], None, None),
            ("nobody", vec![], None, None),
        ];
        for (name, reports, plsn, want) in cases {
            assert_eq!(pick(&reports, plsn).as_deref(), want, "case: {name}");
        }
    }

    #[test]
    fn exclusion_says_why() {
        let s = state(&["p", "a"]);
        let r = standby("a", 1, 0);
        let seen = Seen { report: &r, current: true };
        assert_eq!(exclusion(&s, &seen, Some(5000), 1000), Some(Excluded::Lagging { behind: 4999 }));
    }

    #[test]
    fn rank_puts_the_callers_key_then_wal_then_priority_then_name_first() {
        let (low_wal_first, high_wal) = (standby("z", 10, 0), standby("y", 99, 0));
        let (prio, same_wal_a, same_wal_b) = (standby("x", 50, 5), standby("b", 50, 0), standby("a", 50, 0));
        let mut all = vec![&high_wal, &same_wal_b, &prio, &low_wal_first, &same_wal_a];
        rank(&mut all, |r| (u8::from(r.member == "z"), r.wal_position()));
        let order: Vec<&str> = all.iter().map(|r| r.member.as_str()).collect();
        assert_eq!(order, ["z", "y", "x", "a", "b"]);
    }
}
