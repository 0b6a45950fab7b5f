//! Timing settings and the rules that keep them consistent.

use std::time::{Duration, Instant};

/// The first point of the grid `base + k * period` (k >= 1) after `now`.
///
/// Every periodic loop of a daemon wakes on such a grid from one process-wide base, so loops whose
/// periods are multiples of each other (the Raft tick, the check, the report, the coordinator's
/// round) wake the process once together instead of once each: at rest the daemon's cost is its
/// wake-ups, not its work.
pub fn next_beat(base: Instant, now: Instant, period: Duration) -> Instant {
    if period.is_zero() {
        return now;
    }
    let since = now.saturating_duration_since(base);
    let k = since.as_nanos() / period.as_nanos() + 1;
    // k * period fits: `since` is at most centuries and periods are at least a nanosecond.
    base + period * u32::try_from(k).unwrap_or(u32::MAX)
}

/// How many periodic ticks of `tick` fell due between `last` (the grid point of the last one
/// counted) and `now`, at most `cap`, and the grid point to count the next ones from.
///
/// A Raft follower that hears its leader counts its ticks in batches, waking with the check and
/// report loop instead of every tick; `last` moves to the moment its leader was last heard (its
/// election timer restarted then), so the timer only runs late, never early. The cap
/// keeps what a stalled process does as it was (missed ticks are lost, not replayed at once, so a
/// daemon that was stopped for seconds does not start an election the moment it runs again).
pub fn ticks_due(last: Instant, now: Instant, tick: Duration, cap: u32) -> (u32, Instant) {
    if tick.is_zero() || now <= last {
        return (0, last);
    }
    let due = now.duration_since(last).as_nanos() / tick.as_nanos();
    let n = u32::try_from(due).unwrap_or(u32::MAX);
    // Ticks past the cap are lost: the count goes on from the latest grid point either way, as
    // a skipped interval does.
    (n.min(cap), last + tick * n)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timings {
    /// How often an agent observes PostgreSQL and reports, and the coordinator decides.
    pub loop_interval: Duration,
    /// How long a primary may keep writing after the coordinator last acked it (from the send time).
    pub lease_timeout: Duration,
    /// Extra wait on top of the lease before promoting, for clock-rate drift and fencing time.
    pub lease_margin: Duration,
    /// How long the primary's PostgreSQL may stay down (its daemon alive) before a failover.
    pub pg_restart_timeout: Duration,
    /// How long the primary's PostgreSQL may run without answering (postmaster alive, queries time
    /// out: a hung server) before a failover.
    pub pg_unresponsive_timeout: Duration,
    /// How long a report counts as current for candidate choice.
    pub report_timeout: Duration,
    /// How long a new coordinator waits for every member's first report before bootstrapping anyway.
    pub bootstrap_wait: Duration,
    pub raft_tick: Duration,
    pub election_ticks: u32,
    pub heartbeat_ticks: u32,
    /// A standby further behind the primary's last known position than this is not promoted.
    pub maximum_lag_on_failover: u64,
    /// How long a started switchover may take (the old primary's clean stop and the candidate's
    /// catch-up) before it is cancelled and the old primary starts again.
    pub switchover_timeout: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            // Checks and reports twice a second: a dead primary's failover waits for its lease,
            // not for a check, and at rest a daemon's cost is its wake-ups (BENCHMARKS.md,
            // "Idle daemon"; 250 ms and a heartbeat every tick cost twice as much).
            loop_interval: Duration::from_millis(500),
            lease_timeout: Duration::from_secs(2),
            lease_margin: Duration::from_millis(500),
            pg_restart_timeout: Duration::from_secs(20),
            pg_unresponsive_timeout: Duration::from_secs(3),
            report_timeout: Duration::from_secs(2),
            bootstrap_wait: Duration::from_secs(10),
            // Heartbeats every 200 ms (a leader wakes once per heartbeat), elections after
            // 0.5-1 s: 2.5 heartbeats at least.
            raft_tick: Duration::from_millis(100),
            election_ticks: 5,
            heartbeat_ticks: 2,
            maximum_lag_on_failover: 1 << 20,
            switchover_timeout: Duration::from_secs(15),
        }
    }
}

/// A timing setting that is inconsistent, named by its config key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimingError {
    pub key: &'static str,
    /// The other keys the broken rule relates `key` to (the config names the ones a user set).
    pub with: &'static [&'static str],
    pub message: String,
}

impl std::fmt::Display for TimingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "timing.{}: {}", self.key, self.message)
    }
}

/// The longest a timing may be: a day is far beyond any useful setting, and keeps every sum and
/// multiple of them (the rules in [`Timings::validate`], deadlines from now) in range.
pub const MAX_TIMING: Duration = Duration::from_secs(24 * 60 * 60);

/// The timings the lease arithmetic rests on. They are the cluster's, not each member's: the
/// primary's lease runs for the `lease_timeout` the coordinator waits out, so both must be the
/// same numbers. The first coordinator commits its own ([`crate::Command::AgreeTimings`]); from then
/// on every member acts on the committed ones, whatever its file says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LeaseTimings {
    pub lease_timeout_ms: u64,
    pub lease_margin_ms: u64,
}

impl LeaseTimings {
    /// The config keys whose values in `mine` differ from these, with both values.
    pub fn differences(&self, mine: &Timings) -> Vec<String> {
        let own = mine.lease();
        let d = |ms: u64| format!("{:?}", Duration::from_millis(ms));
        let mut out = Vec::new();
        if own.lease_timeout_ms != self.lease_timeout_ms {
            out.push(format!(
                "timing.lease_timeout (this file {}, the cluster's {})",
                d(own.lease_timeout_ms),
                d(self.lease_timeout_ms)
            ));
        }
        if own.lease_margin_ms != self.lease_margin_ms {
            out.push(format!(
                "timing.lease_margin (this file {}, the cluster's {})",
                d(own.lease_margin_ms),
                d(self.lease_margin_ms)
            ));
        }
        out
    }
}

impl Timings {
    /// This member's lease timings, as its file has them.
    pub fn lease(&self) -> LeaseTimings {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        LeaseTimings { lease_timeout_ms: ms(self.lease_timeout), lease_margin_ms: ms(self.lease_margin) }
    }

    /// These timings with the cluster's lease timings in place of the file's, once agreed.
    pub fn agreed(&self, cluster: Option<LeaseTimings>) -> Timings {
        let mut t = self.clone();
        if let Some(c) = cluster {
            t.lease_timeout = Duration::from_millis(c.lease_timeout_ms);
            t.lease_margin = Duration::from_millis(c.lease_margin_ms);
        }
        t
    }

    fn durations(&self) -> [(&'static str, Duration); 9] {
        [
            ("loop_interval", self.loop_interval),
            ("lease_timeout", self.lease_timeout),
            ("lease_margin", self.lease_margin),
            ("pg_restart_timeout", self.pg_restart_timeout),
            ("pg_unresponsive_timeout", self.pg_unresponsive_timeout),
            ("report_timeout", self.report_timeout),
            ("bootstrap_wait", self.bootstrap_wait),
            ("raft_tick", self.raft_tick),
            ("switchover_timeout", self.switchover_timeout),
        ]
    }

    /// The time after which a new coordinator or one that stopped renewing may promote.
    pub fn promotion_wait(&self) -> Duration {
        self.lease_timeout + self.lease_margin
    }

    pub fn election_timeout(&self) -> Duration {
        self.raft_tick * self.election_ticks
    }

    /// How often a Raft follower that hears its leader wakes to count its ticks
    /// ([`ticks_due`]): with the check and report loop, when its slowest election, one loop
    /// late, still ends before the primary's lease (the rule `validate` holds for every tick);
    /// else `None`, every tick.
    pub fn follower_wake(&self) -> Option<Duration> {
        (self.loop_interval > self.raft_tick && self.election_timeout() * 2 + self.loop_interval < self.lease_timeout)
            .then_some(self.loop_interval)
    }

    pub fn validate(&self) -> Result<(), TimingError> {
        let err = |key, message: String| Err(TimingError { key, with: &[], message });
        let rel = |key, with, message: String| Err(TimingError { key, with, message });
        // First: the rules below multiply and add these, and so does the daemon (deadlines).
        for (key, d) in self.durations() {
            if d > MAX_TIMING {
                return err(key, format!("{d:?} is more than {MAX_TIMING:?}"));
            }
        }
        if self.loop_interval < Duration::from_millis(10) {
            return err("loop_interval", "must be at least 10ms".into());
        }
        if self.lease_timeout < self.loop_interval * 3 {
            return rel(
                "lease_timeout",
                &["loop_interval"],
                format!(
                    "{:?} must be at least 3 x loop_interval ({:?}) so one lost report does not fence the primary",
                    self.lease_timeout, self.loop_interval
                ),
            );
        }
        if self.lease_margin < Duration::from_millis(100) {
            return err("lease_margin", "must be at least 100ms (time to fence plus clock drift)".into());
        }
        if self.raft_tick < Duration::from_millis(10) {
            return err("raft_tick", "must be at least 10ms".into());
        }
        if self.heartbeat_ticks == 0 || self.heartbeat_ticks >= self.election_ticks {
            return rel(
                "heartbeat_ticks",
                &["election_ticks"],
                "must be at least 1 and less than election_ticks".into(),
            );
        }
        // raft-rs randomises the election timeout in [1x, 2x): the slowest election must still
        // end before the primary's lease, or a coordinator change fences a healthy primary.
        if self.election_timeout() * 2 >= self.lease_timeout {
            return rel(
                "election_ticks",
                &["raft_tick", "lease_timeout"],
                format!(
                    "2 x raft_tick x election_ticks ({:?}) must be shorter than lease_timeout ({:?}), or a coordinator change fences a healthy primary",
                    self.election_timeout() * 2,
                    self.lease_timeout
                ),
            );
        }
        if self.report_timeout < self.loop_interval * 2 {
            return rel("report_timeout", &["loop_interval"], "must be at least 2 x loop_interval".into());
        }
        if self.pg_restart_timeout < self.loop_interval * 2 {
            return rel("pg_restart_timeout", &["loop_interval"], "must be at least 2 x loop_interval".into());
        }
        if self.pg_unresponsive_timeout < self.loop_interval * 2
            || self.pg_unresponsive_timeout > self.pg_restart_timeout
        {
            return rel(
                "pg_unresponsive_timeout",
                &["loop_interval", "pg_restart_timeout"],
                format!(
                    "{:?} must be at least 2 x loop_interval and at most pg_restart_timeout ({:?})",
                    self.pg_unresponsive_timeout, self.pg_restart_timeout
                ),
            );
        }
        // A forced failover waits out the lease within it; a stopped old primary must not be taken
        // for a dead one (a failover) before the switchover has ended.
        if self.switchover_timeout <= self.promotion_wait() + self.loop_interval * 2 {
            return rel(
                "switchover_timeout",
                &["lease_timeout", "lease_margin", "loop_interval"],
                format!(
                    "{:?} must be longer than lease_timeout + lease_margin + 2 x loop_interval ({:?})",
                    self.switchover_timeout,
                    self.promotion_wait() + self.loop_interval * 2
                ),
            );
        }
        if self.switchover_timeout >= self.pg_restart_timeout {
            return rel(
                "switchover_timeout",
                &["pg_restart_timeout"],
                format!(
                    "{:?} must be shorter than pg_restart_timeout ({:?}): the stopped old primary keeps its lease meanwhile",
                    self.switchover_timeout, self.pg_restart_timeout
                ),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn followers_batch_ticks_only_when_a_late_election_still_fits_the_lease() {
        let d = Timings::default();
        // Defaults: elections in [0.5, 1) s, one 500 ms loop late, still inside the 2 s lease.
        assert_eq!(d.follower_wake(), Some(d.loop_interval));
        let slow = Timings {
            loop_interval: Duration::from_millis(500),
            raft_tick: Duration::from_millis(200),
            election_ticks: 4,
            ..d.clone()
        };
        // 1.6 s + 0.5 s is past the lease: every tick.
        assert_eq!(slow.follower_wake(), None);
        let fast_loop = Timings { loop_interval: Duration::from_millis(50), ..d };
        assert_eq!(fast_loop.follower_wake(), None);
    }

    #[test]
    fn ticks_are_counted_in_batches_and_a_stall_loses_them() {
        let t0 = Instant::now();
        let tick = Duration::from_millis(100);
        let ms = Duration::from_millis;
        // A follower woken on a 250 ms loop: 2, then 3 ticks, the rate kept on average.
        assert_eq!(ticks_due(t0, t0 + ms(250), tick, 3), (2, t0 + ms(200)));
        assert_eq!(ticks_due(t0 + ms(200), t0 + ms(500), tick, 3), (3, t0 + ms(500)));
        // Early or on time: nothing or one.
        assert_eq!(ticks_due(t0, t0 + ms(99), tick, 3), (0, t0));
        assert_eq!(ticks_due(t0, t0, tick, 3), (0, t0));
        assert_eq!(ticks_due(t0 + ms(5), t0, tick, 3), (0, t0 + ms(5)));
        assert_eq!(ticks_due(t0, t0 + ms(100), tick, 1), (1, t0 + ms(100)));
        // Stalled for 2 s: at most the cap, and the count goes on from the last grid point.
        assert_eq!(ticks_due(t0, t0 + ms(2050), tick, 1), (1, t0 + ms(2000)));
        assert_eq!(ticks_due(t0, t0 + ms(2050), tick, 3), (3, t0 + ms(2000)));
        assert_eq!(ticks_due(t0, t0 + ms(2050), Duration::ZERO, 3), (0, t0));
    }

    #[test]
    fn beats_fall_on_the_grid_and_after_now() {
        let base = Instant::now();
        let p = Duration::from_millis(250);
        assert_eq!(next_beat(base, base, p), base + p);
        assert_eq!(next_beat(base, base + Duration::from_millis(1), p), base + p);
        assert_eq!(next_beat(base, base + p, p), base + p * 2);
        assert_eq!(next_beat(base, base + Duration::from_millis(1499), p), base + p * 6);
        // A now before the base (a clock read early) still yields the first beat.
        assert_eq!(next_beat(base + p, base, p), base + p * 2);
        // Loops of 100 ms and 250 ms meet every 500 ms.
        let t = base + Duration::from_millis(420);
        assert_eq!(next_beat(base, t, Duration::from_millis(100)), base + Duration::from_millis(500));
        assert_eq!(next_beat(base, t, p), base + Duration::from_millis(500));
        assert_eq!(next_beat(base, t, Duration::ZERO), t);
    }

    #[test]
    fn defaults_are_consistent() {
        assert_eq!(Timings::default().validate(), Ok(()));
        assert_eq!(Timings::default().promotion_wait(), Duration::from_millis(2500));
    }

    #[test]
    fn inconsistent_timings_name_their_key() {
        type Change = Box<dyn Fn(&mut Timings)>;
        let cases: Vec<(&str, Change)> = vec![
            ("lease_timeout", Box::new(|t| t.lease_timeout = Duration::from_millis(500))),
            ("lease_margin", Box::new(|t| t.lease_margin = Duration::from_millis(10))),
            ("election_ticks", Box::new(|t| t.election_ticks = 20)),
            ("heartbeat_ticks", Box::new(|t| t.heartbeat_ticks = 10)),
            ("loop_interval", Box::new(|t| t.loop_interval = Duration::from_millis(1))),
            ("report_timeout", Box::new(|t| t.report_timeout = Duration::from_millis(100))),
            ("pg_restart_timeout", Box::new(|t| t.pg_restart_timeout = Duration::ZERO)),
            ("pg_unresponsive_timeout", Box::new(|t| t.pg_unresponsive_timeout = Duration::from_secs(21))),
            ("switchover_timeout", Box::new(|t| t.switchover_timeout = Duration::from_secs(2))),
            ("switchover_timeout", Box::new(|t| t.switchover_timeout = Duration::from_secs(30))),
        ];
        for (key, change) in cases {
            let mut t = Timings::default();
            change(&mut t);
            assert_eq!(t.validate().map_err(|e| e.key), Err(key), "case {key}");
        }
    }

    #[test]
    fn huge_timings_are_refused_not_overflowed() {
        // Found by the fuzz targets: `loop_interval = "500000000000years"` overflowed
        // `3 x loop_interval` (a panic, where the daemon should exit 64 naming the key).
        type Set = fn(&mut Timings, Duration);
        let cases: [(&str, Set); 9] = [
            ("loop_interval", |t, d| t.loop_interval = d),
            ("lease_timeout", |t, d| t.lease_timeout = d),
            ("lease_margin", |t, d| t.lease_margin = d),
            ("pg_restart_timeout", |t, d| t.pg_restart_timeout = d),
            ("pg_unresponsive_timeout", |t, d| t.pg_unresponsive_timeout = d),
            ("report_timeout", |t, d| t.report_timeout = d),
            ("bootstrap_wait", |t, d| t.bootstrap_wait = d),
            ("raft_tick", |t, d| t.raft_tick = d),
            ("switchover_timeout", |t, d| t.switchover_timeout = d),
        ];
        for (key, set) in cases {
            for d in [Duration::from_secs(u64::MAX), MAX_TIMING + Duration::from_nanos(1)] {
                let mut t = Timings::default();
                set(&mut t, d);
                assert_eq!(t.validate().map_err(|e| e.key), Err(key), "case {key} = {d:?}");
            }
        }
        let t = Timings { election_ticks: u32::MAX, raft_tick: MAX_TIMING, ..Timings::default() };
        assert_eq!(t.validate().map_err(|e| e.key), Err("election_ticks"));
    }
}
