//! The coordinator: the Raft leader's decisions.
//!
//! It keeps the latest report of every member (with the local monotonic time it arrived), decides
//! whether the primary's lease is renewed, and turns `(cluster state, reports, now)` into commands:
//! record members, bootstrap, fail over, drive an operator's switchover ([`crate::switchover`]).
//!
//! Safety rule: the primary of epoch E may write until `sent + lease_timeout`, where `sent` is when
//! it sent a report that this coordinator acked with a grant (after a quorum confirmed its
//! leadership). The coordinator promotes another member only once `lease_timeout + lease_margin`
//! has passed since the last grant it made for E, since it became leader, and since it first saw
//! epoch E, whichever is latest. A grant recorded later than it was made only makes the wait longer.

use crate::candidate::{self, Seen};
use crate::planted::{self, Bug};
use crate::report::{DataDir, HealthReport, MemberKind};
use crate::state::{ClusterState, Command, Member};
use crate::sync::{self, Applied, SyncMode, Wanted};
use crate::timing::Timings;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct Received {
    pub report: HealthReport,
    pub at: Instant,
}

/// The answer to one report: whether the coordinator wants to grant the primary lease for `epoch`.
/// The shell grants only after `confirm_leadership` succeeds, then calls [`Coordinator::granted`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseAnswer {
    pub grant: bool,
    pub epoch: u64,
}

#[derive(Clone, Debug)]
struct Grant {
    member: String,
    epoch: u64,
    at: Instant,
}

#[derive(Debug)]
pub struct Coordinator {
    pub(crate) timings: Timings,
    /// The configured member names; reports from anyone else are ignored.
    expected: BTreeSet<String>,
    leader_since: Option<Instant>,
    /// The Raft term of this leadership.
    term: u64,
    /// The epoch this coordinator last saw and when it first saw it.
    epoch_seen: Option<(u64, Instant)>,
    pub(crate) reports: BTreeMap<String, Received>,
    last_grant: Option<Grant>,
    /// The configured synchronous mode, which this coordinator brings the committed state to.
    wanted_sync: Wanted,
    /// Since when the primary runs with the committed synchronous standbys named.
    sync_applied: Option<Applied>,
    /// The configured failback target.
    pub(crate) preferred_primary: Option<String>,
    /// The started switchover this coordinator is driving, and when it first saw it started.
    pub(crate) switchover_seen: Option<(u64, Instant)>,
    /// The epoch whose primary lost its lease for a hung server, and when: killed by its keeper,
    /// it would restart in place and win the lease back before a standby could be promoted, so
    /// it gets none for `pg_restart_timeout` (a failover goes first, when one is possible).
    hung: Option<(u64, Instant)>,
    /// The epoch this coordinator decided to fail over from, and when it last did. No lease is
    /// granted for that epoch meanwhile: a grant after the decision, while the failover is being
    /// committed, would let the old primary write on after the new one is promoted.
    failing_over: Option<(u64, Instant)>,
    /// Per member, the highest WAL position (and its timeline) a writable report of it showed:
    /// a writable report behind it was sent earlier and arrived late (see [`Self::on_report`]).
    written: BTreeMap<String, (u32, u64)>,
    /// This member's name (where the coordinator runs).
    me: String,
    /// Why no failover is possible, as last said (said again only when it changes).
    pub(crate) last_blocked: Option<String>,
    /// When the coordinator role was last handed off the primary's host (kept across terms).
    pub(crate) last_transfer: Option<Instant>,
    /// The cluster's backup schedule (None: this coordinator decides no backups).
    pub(crate) backups: Option<crate::backup::Policy>,
}

impl Coordinator {
    pub fn new(expected: impl IntoIterator<Item = String>, timings: Timings) -> Self {
        Coordinator {
            timings,
            expected: expected.into_iter().collect(),
            leader_since: None,
            term: 0,
            epoch_seen: None,
            reports: BTreeMap::new(),
            last_grant: None,
            wanted_sync: Wanted { mode: SyncMode::Off, count: 1 },
            sync_applied: None,
            preferred_primary: None,
            switchover_seen: None,
            hung: None,
            failing_over: None,
            written: BTreeMap::new(),
            me: String::new(),
            last_blocked: None,
            last_transfer: None,
            backups: None,
        }
    }

    /// Decide backups by this policy, beside the other commands of each tick.
    pub fn with_backups(mut self, policy: crate::backup::Policy) -> Self {
        self.backups = Some(policy);
        self
    }

    /// The name of the member this coordinator runs on (it hands its role off the primary's host).
    pub fn named(mut self, me: &str) -> Self {
        self.me = me.to_string();
        self
    }

    /// The synchronous mode and standby count from this member's configuration.
    pub fn with_sync(mut self, mode: SyncMode, count: u32) -> Self {
        self.wanted_sync = Wanted { mode, count: count.max(1) };
        self
    }

    pub fn is_leader(&self) -> bool {
        self.leader_since.is_some()
    }

    /// How long this member has been the coordinator (None: it is not).
    pub fn leader_for(&self, now: Instant) -> Option<std::time::Duration> {
        self.leader_since.map(|t| now.saturating_duration_since(t))
    }

    /// Tell the coordinator whether this member is the Raft leader now (`Some(term)`) or not. A
    /// new leadership (or a new term, even if the change between two calls was missed) starts the
    /// full promotion wait; losing it forgets everything, since another coordinator may act meanwhile.
    pub(crate) fn set_leader(&mut self, now: Instant, leader_term: Option<u64>) {
        match leader_term {
            Some(term) if self.leader_since.is_some() && self.term == term => {}
            Some(term) => {
                self.forget();
                self.leader_since = Some(now);
                self.term = term;
            }
            None => self.forget(),
        }
    }

    fn forget(&mut self) {
        self.leader_since = None;
        self.epoch_seen = None;
        self.last_grant = None;
        self.sync_applied = None;
        self.switchover_seen = None;
        self.failing_over = None;
        self.written.clear();
        self.reports.clear();
        self.last_blocked = None;
    }

    pub fn reports(&self) -> &BTreeMap<String, Received> {
        &self.reports
    }

    /// Record a report and say whether its sender would get the primary lease.
    pub(crate) fn on_report(&mut self, now: Instant, report: HealthReport, state: &ClusterState) -> LeaseAnswer {
        let epoch = state.epoch;
        if !self.is_leader() || !self.expected.contains(&report.member) {
            return LeaseAnswer { grant: false, epoch };
        }
        // While paused no failover follows a long PostgreSQL outage, so the lease is not withheld
        // for one: a primary the operator restarts by hand is not fenced on the spot. A forced
        // failover withholds it: the candidate is promoted once it has run out.
        let forced_out = state.switchover.as_ref().is_some_and(|s| s.forced && s.started);
        // Withholding the lease of a primary whose server is down or hung too long is how a
        // failover gets its turn. Where there is none to be had it would only keep the cluster
        // down for good (found by vigil-sim), so a primary no standby can replace now keeps its
        // lease and restarts in place: in a synchronous mode, no other holder of every
        // acknowledged commit can be promoted; asynchronous, no standby is current, eligible and
        // close enough. A standby that qualifies later ends it: the next grant is withheld.
        let irreplaceable =
            state.is_primary(&report.member) && self.failover_candidate(now, state, &report.member).is_none();
        // No grant before the lease timings are the cluster's: the primary's lease must run for
        // exactly what any coordinator will wait out.
        let grant = state.lease_timings.is_some()
            && state.is_primary(&report.member)
            && report.kind == MemberKind::Postgres
            && !report.pg.needs_rejoin
            && !forced_out
            && (state.paused || irreplaceable || report.pg.down_for < self.down_limit(&report.pg));
        if state.is_primary(&report.member) && report.pg.unresponsive && !grant && !state.paused {
            self.hung.get_or_insert((epoch, now));
        }
        let hung_recently = self
            .hung
            .is_some_and(|(e, at)| e == epoch && now.saturating_duration_since(at) < self.timings.pg_restart_timeout);
        // A failover decided from this epoch may commit any moment: its primary gets no lease,
        // for as long as the decision could still be committed (a proposal that lingers longer
        // outlives this leadership: check-quorum ends it within 2 election timeouts).
        let failing_over = self
            .failing_over
            .is_some_and(|(e, at)| e == epoch && now.saturating_duration_since(at) < self.promotion_wait(state));
        let grant = grant && (state.paused || irreplaceable || !hung_recently) && !failing_over;
        // A writable server's WAL position only grows on its timeline: a report behind one
        // already seen was sent before it and arrived late. It must not stand for the member's
        // present: its synchronous standby names and position predate changes committed since,
        // and the synchronous plan would shrink the holders on them (found by vigil-sim).
        let pg = &report.pg;
        if pg.running && !pg.in_recovery {
            let seen = self.written.get(&report.member).copied();
            if seen.is_some_and(|(tli, lsn)| tli == pg.timeline && pg.current_lsn < lsn) {
                return LeaseAnswer { grant, epoch };
            }
            if seen.is_none_or(|(tli, lsn)| tli != pg.timeline || pg.current_lsn > lsn) {
                self.written.insert(report.member.clone(), (pg.timeline, pg.current_lsn));
            }
        }
        self.reports.insert(report.member.clone(), Received { report, at: now });
        LeaseAnswer { grant, epoch }
    }

    /// How long the primary's PostgreSQL may be down before its lease is withheld: a hung server
    /// (postmaster alive, not answering) is not one that is restarting.
    fn down_limit(&self, pg: &crate::report::PgStatus) -> std::time::Duration {
        if pg.unresponsive {
            self.timings.pg_unresponsive_timeout
        } else {
            self.timings.pg_restart_timeout
        }
    }

    /// Record a grant that was sent, after the quorum confirmed this coordinator's leadership.
    /// `now` may be when the report arrived (any time after it was sent will do); confirmations
    /// can end out of order, so an earlier grant never replaces a later one.
    pub(crate) fn granted(&mut self, now: Instant, member: &str, epoch: u64) {
        if !self.is_leader() {
            return;
        }
        let later = self.last_grant.as_ref().is_none_or(|g| g.member != member || g.epoch != epoch || g.at < now);
        if later {
            self.last_grant = Some(Grant { member: member.to_string(), epoch, at: now });
        }
    }

    /// Record the grant of [`Self::on_report`]'s answer once the quorum round confirmed this
    /// leadership, if the committed state read *after* that round (`state`: applied up to the
    /// read index) still makes `member` the primary of `epoch`; false: no grant. A new leader may
    /// judge a report on a state that lacks the previous leader's last entries (a failover away
    /// from `member`), and only the confirmation tells it what was committed before its term.
    pub(crate) fn confirm_grant(&mut self, now: Instant, member: &str, epoch: u64, state: &ClusterState) -> bool {
        if state.epoch != epoch || !state.is_primary(member) {
            return false;
        }
        self.granted(now, member, epoch);
        self.is_leader()
    }

    /// The time from which the promotion wait for the current primary runs.
    fn wait_start(&self, state: &ClusterState) -> Option<Instant> {
        let mut start = self.leader_since?;
        if let Some((_, seen)) = self.epoch_seen.filter(|(e, _)| *e == state.epoch) {
            start = start.max(seen);
        }
        if let Some(g) = &self.last_grant {
            if g.epoch == state.epoch && state.is_primary(&g.member) {
                start = start.max(g.at);
            }
        }
        Some(start)
    }

    /// The wait before another member may be promoted: the cluster's lease timings once agreed
    /// (else this member's own, as before they were).
    fn promotion_wait(&self, state: &ClusterState) -> std::time::Duration {
        self.timings.agreed(state.lease_timings).promotion_wait()
    }

    /// How long until the current primary's lease has certainly expired (zero when it has).
    pub(crate) fn lease_expires_in(&self, now: Instant, state: &ClusterState) -> Option<std::time::Duration> {
        let start = self.wait_start(state)?;
        Some((start + self.promotion_wait(state)).saturating_duration_since(now))
    }

    /// When the primary's lease has certainly run out, while this coordinator leads and it has
    /// not yet: its task wakes then to decide, instead of at its next loop (which would hold a
    /// failover up by up to a loop interval). At rest each renewal moves it on before it falls
    /// due, so it costs no wake-up.
    pub fn lease_deadline(&self, now: Instant, state: &ClusterState) -> Option<Instant> {
        state.primary.as_ref()?;
        self.lease_expires_in(now, state).filter(|left| !left.is_zero()).map(|left| now + left)
    }

    /// How long from `now` the lease this coordinator last granted (confirmed) to the primary of
    /// the committed epoch still runs: grant + `lease_timeout` - now, zero without one. Only a
    /// confirmed grant counts (not the election or the first sight of the epoch): a quorum
    /// answered after it, so any later coordinator was elected after it and waits from then.
    /// For the routing proxies' lease fence (`crate::proxy`).
    pub fn primary_lease_left(&self, now: Instant, state: &ClusterState) -> std::time::Duration {
        let lease = self.timings.agreed(state.lease_timings).lease_timeout;
        match &self.last_grant {
            Some(g) if self.is_leader() && g.epoch == state.epoch && state.is_primary(&g.member) => {
                (g.at + lease).saturating_duration_since(now)
            }
            _ => std::time::Duration::ZERO,
        }
    }

    pub(crate) fn is_current(&self, now: Instant, r: &Received) -> bool {
        now.saturating_duration_since(r.at) <= self.timings.report_timeout
    }

    /// The commands to propose now, in order. `wall_ms` only stamps event records.
    pub(crate) fn decide(&mut self, now: Instant, state: &ClusterState, wall_ms: u64) -> Vec<Command> {
        let Some(leader_since) = self.leader_since else {
            return Vec::new();
        };
        // The epoch known at the first look was committed before this term: any lease for it was
        // granted before the election, so the wait from `leader_since` covers it.
        match self.epoch_seen {
            None => self.epoch_seen = Some((state.epoch, leader_since)),
            Some((e, _)) if e != state.epoch => self.epoch_seen = Some((state.epoch, now)),
            Some(_) => {}
        }
        let mut out = Vec::new();
        if state.lease_timings.is_none() {
            out.push(Command::AgreeTimings { timings: self.timings.lease() });
        }
        out.extend(self.member_updates(state, wall_ms));
        out.extend(self.rejoin_records(state));
        if let Some(cmd) = self.abandon_bootstrap(now, state, wall_ms) {
            out.push(cmd);
            return out;
        }
        match &state.primary {
            None => {
                if let Some(member) = self.bootstrap_choice(now, leader_since, state) {
                    out.push(Command::Bootstrap { member, at_unix_ms: wall_ms });
                }
            }
            // Paused (maintenance): no automatic failover and no synchronous changes (the primary's
            // agent leaves PostgreSQL as it is); member records and bootstrap go on.
            Some(_) if state.paused => {}
            Some(primary) => {
                // An operator's switchover first; while a forced one runs, the operator has chosen
                // the candidate, so no automatic failover picks another.
                let forced = state.switchover.as_ref().is_some_and(|s| s.forced && s.started);
                if let Some(cmd) = self.switchover_step(now, state, wall_ms) {
                    out.push(cmd);
                } else if forced {
                } else if let Some(cmd) = self.failover_choice(now, state, primary, wall_ms) {
                    self.failing_over = Some((state.epoch, now));
                    out.push(cmd);
                } else {
                    out.extend(self.sync_change(now, state, primary, wall_ms));
                }
            }
        }
        out
    }

    /// Rewinds and re-clones the agents report that the history does not have yet.
    fn rejoin_records(&self, state: &ClusterState) -> Vec<Command> {
        self.reports
            .values()
            .filter_map(|r| {
                let record = r.report.pg.last_rejoin.as_ref()?;
                let known = state.rejoins_recorded.get(&r.report.member).copied();
                (known < Some(record.started_unix_ms))
                    .then(|| Command::RecordRejoin { member: r.report.member.clone(), record: record.clone() })
            })
            .collect()
    }

    /// The next step of the synchronous set, planned from the primary's current report.
    fn sync_change(&mut self, now: Instant, state: &ClusterState, primary: &str, wall_ms: u64) -> Option<Command> {
        let p = self.reports.get(primary).filter(|r| self.is_current(now, r))?;
        let others: Vec<&HealthReport> = self
            .reports
            .values()
            .filter(|r| r.report.member != primary && self.is_current(now, r))
            .map(|r| &r.report)
            .collect();
        let change = sync::plan(state, &p.report, &others, self.wanted_sync, &mut self.sync_applied)?;
        Some(Command::Sync { epoch: state.epoch, sync: change.sync, reason: change.reason, at_unix_ms: wall_ms })
    }

    /// Why no failover is possible now in a synchronous mode, if it is not (for the logs).
    pub(crate) fn sync_failover_blocked(&self, now: Instant, state: &ClusterState) -> Option<String> {
        let sync = &state.sync;
        if !sync.mode.is_sync() {
            return None;
        }
        let primary = state.primary.as_deref()?;
        if sync.holders.contains(primary) {
            return Some(format!(
                "synchronous mode: only the primary {primary} is known to hold every acknowledged commit"
            ));
        }
        for h in &sync.holders {
            let Some(r) = self.reports.get(h) else {
                return Some(format!("synchronous mode: no report from {h}, which may hold acknowledged commits"));
            };
            let seen = Seen { report: &r.report, current: self.is_current(now, r) };
            if let Some(why) = candidate::exclusion(state, &seen, None, u64::MAX) {
                return Some(format!("synchronous mode: holder {h} cannot be compared ({why:?})"));
            }
        }
        None
    }

    /// Where to hand Raft leadership when this coordinator (`me`) sits on the primary's host: a
    /// member with a current report, a witness first, then a running standby. So the death of the
    /// primary's host costs one lease wait, not an election plus a lease wait.
    pub(crate) fn leadership_target(&self, now: Instant, state: &ClusterState) -> Option<String> {
        let me = self.me.as_str();
        if !self.is_leader() || !state.is_primary(me) {
            return None;
        }
        let mut ok: Vec<&HealthReport> = self
            .reports
            .values()
            .filter(|r| r.report.member != me && self.is_current(now, r))
            .map(|r| &r.report)
            .filter(|r| r.kind == MemberKind::Witness || (r.pg.running && r.pg.in_recovery))
            .collect();
        ok.sort_by_key(|r| (r.kind != MemberKind::Witness, r.member.clone()));
        ok.first().map(|r| r.member.clone())
    }

    fn member_updates(&self, state: &ClusterState, wall_ms: u64) -> Vec<Command> {
        self.reports
            .values()
            .filter_map(|r| {
                let r = &r.report;
                let member =
                    Member { kind: r.kind, pg_host: r.pg_host.clone(), pg_port: r.pg_port, tags: r.tags.clone() };
                (state.members.get(&r.member) != Some(&member)).then(|| Command::UpsertMember {
                    name: r.member.clone(),
                    member,
                    at_unix_ms: wall_ms,
                })
            })
            .collect()
    }

    /// Give the bootstrap back when its primary reports that initdb failed in this epoch, its data
    /// directory is still empty and nothing runs there, and no member reports a writable server:
    /// no cluster was ever created, so choosing again loses nothing.
    fn abandon_bootstrap(&self, now: Instant, state: &ClusterState, wall_ms: u64) -> Option<Command> {
        let member = state.primary.as_deref()?;
        if state.bootstrapped_by.as_deref() != Some(member) || state.epoch != state.bootstrap_epoch {
            return None;
        }
        let r = self.reports.get(member).filter(|r| self.is_current(now, r))?;
        let failed = r.report.pg.bootstrap_failed.as_ref().filter(|f| f.epoch == state.epoch)?;
        if r.report.pg.data_dir != DataDir::Empty || r.report.pg.running || r.report.pg.unresponsive {
            return None;
        }
        if self.reports.values().any(|r| r.report.pg.running && !r.report.pg.in_recovery) {
            return None;
        }
        Some(Command::AbandonBootstrap {
            member: member.to_string(),
            epoch: state.epoch,
            reason: format!("initdb failed on {member}: {}", failed.error),
            at_unix_ms: wall_ms,
        })
    }

    /// Who creates the cluster: a member with an existing primary data directory (adopted as it
    /// is) before one with an empty one, one whose initdb did not fail before one whose did; then
    /// priority, then name. A member with a foreign data directory is never chosen. Waits for
    /// every configured member's first report, or `bootstrap_wait`, so an existing data directory
    /// is not missed; after a bootstrap was given back, also for the lease its primary may have
    /// held (as before a failover), although it never ran a server.
    fn bootstrap_choice(&self, now: Instant, leader_since: Instant, state: &ClusterState) -> Option<String> {
        let all_reported = self.expected.iter().all(|n| self.reports.contains_key(n));
        if !all_reported && now.saturating_duration_since(leader_since) < self.timings.bootstrap_wait {
            return None;
        }
        if state.epoch > 0 {
            let granted = self.last_grant.as_ref().filter(|g| g.epoch == state.epoch).map(|g| g.at);
            let start = granted.map_or(leader_since, |g| g.max(leader_since));
            if now.saturating_duration_since(start) < self.promotion_wait(state) {
                return None;
            }
        }
        let mut ok: Vec<&HealthReport> = self
            .reports
            .values()
            .filter(|r| self.is_current(now, r))
            .map(|r| &r.report)
            .filter(|r| r.kind == MemberKind::Postgres && !r.tags.nofailover())
            .filter(|r| matches!(r.pg.data_dir, DataDir::Primary | DataDir::Empty))
            .collect();
        // An existing primary data directory first, then one whose initdb did not fail; WAL does
        // not count (no server runs yet).
        candidate::rank(&mut ok, |r| {
            let has_data = r.pg.data_dir == DataDir::Primary;
            (u8::from(has_data) * 2 + u8::from(r.pg.bootstrap_failed.is_none()), 0)
        });
        // Bootstrap is proposed after the member's own UpsertMember, in the same batch.
        ok.first().map(|r| r.member.clone()).filter(|_| state.primary.is_none())
    }

    /// The standby a failover from `primary` would promote now, if any (the lease aside).
    fn failover_candidate(&self, now: Instant, state: &ClusterState, primary: &str) -> Option<&HealthReport> {
        let seen: Vec<Seen> =
            self.reports.values().map(|r| Seen { report: &r.report, current: self.is_current(now, r) }).collect();
        if state.sync.mode.is_sync() && planted::on(Bug::PromoteNonHolder) {
            candidate::choose(state, &seen, None, u64::MAX)
        } else if state.sync.mode.is_sync() {
            // Only from the holders of every acknowledged commit, all of them heard, most WAL first.
            if self.sync_failover_blocked(now, state).is_some() {
                return None;
            }
            let holders: Vec<Seen> =
                seen.into_iter().filter(|s| state.sync.holders.contains(&s.report.member)).collect();
            candidate::choose(state, &holders, None, u64::MAX)
        } else {
            let last = self.reports.get(primary);
            let primary_lsn = last.map(|r| r.report.wal_position()).filter(|l| *l > 0);
            candidate::choose(state, &seen, primary_lsn, self.timings.maximum_lag_on_failover)
        }
    }

    fn failover_choice(&self, now: Instant, state: &ClusterState, primary: &str, wall_ms: u64) -> Option<Command> {
        let lease_left = self.lease_expires_in(now, state)?;
        if !lease_left.is_zero() && !planted::on(Bug::PromoteWithoutLeaseWait) {
            return None;
        }
        let chosen = self.failover_candidate(now, state, primary)?;
        let last = self.reports.get(primary);
        let why = match last {
            None => "no report from it since this coordinator took over".to_string(),
            Some(r) if !self.is_current(now, r) => {
                format!("no report for {} ms", now.saturating_duration_since(r.at).as_millis())
            }
            Some(r) if r.report.pg.unresponsive => {
                format!("its PostgreSQL has not answered for {} ms", r.report.pg.down_for.as_millis())
            }
            Some(r) => format!("its PostgreSQL has been down for {} ms", r.report.pg.down_for.as_millis()),
        };
        Some(Command::Failover {
            from_epoch: state.epoch,
            to: chosen.member.clone(),
            reason: format!(
                "primary {primary} lost its lease ({why}); promoting {} at WAL {}",
                chosen.member,
                chosen.wal_position()
            ),
            at_unix_ms: wall_ms,
        })
    }
}

#[cfg(test)]
#[path = "coordinator_tests.rs"]
pub(crate) mod tests;
