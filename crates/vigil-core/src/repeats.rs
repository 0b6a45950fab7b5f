//! Thinning a warning that repeats (every tick, every message): the first occurrence of a cause
//! is logged, then at most one line per `every` with the count of the occurrences not logged
//! since, and one line when the cause ends (told by the caller, or not seen for `every`).
//!
//! Pure: the caller passes the time in and logs what the answers say, so one limiter serves every
//! repeated warning of the daemon and its rules are tested here without a clock.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How often a repeated warning of one cause may be logged, by default.
pub const LOG_EVERY: Duration = Duration::from_secs(60);

/// Repeated occurrences of causes `K` (a peer, an error kind, ...), and when each was last logged.
#[derive(Clone, Debug)]
pub struct Repeats<K> {
    every: Duration,
    causes: BTreeMap<K, Cause>,
}

#[derive(Clone, Debug)]
struct Cause {
    /// The last line about it said it happens (not yet that it ended).
    told: bool,
    /// When its last "it happens" line was logged: the next one waits `every` from then.
    last_line: Option<Instant>,
    last_seen: Instant,
    /// Occurrences since its last line.
    unlogged: u64,
    /// Occurrences since it was first seen (or ended last).
    total: u64,
}

/// Log this occurrence; `suppressed` occurrences of the same cause were not logged since the
/// previous line about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Occurrence {
    pub suppressed: u64,
}

impl Occurrence {
    /// `suppressed` as a log field: absent when none were.
    pub fn field(&self) -> Option<u64> {
        (self.suppressed > 0).then_some(self.suppressed)
    }
}

/// The cause ended: log that once. `suppressed` occurrences were not logged since the previous
/// line about it; `total` occurred in all since it began.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ended {
    pub suppressed: u64,
    pub total: u64,
}

impl<K: Ord + Clone> Repeats<K> {
    /// At most one line per cause per `every` (for logs: [`LOG_EVERY`]); a cause not seen for
    /// `every` has ended.
    pub fn new(every: Duration) -> Self {
        Repeats { every, causes: BTreeMap::new() }
    }

    /// `key` happened at `now`: `Some` when this occurrence is to be logged (the first one, or
    /// the first one `every` after the previous line).
    pub fn occurred(&mut self, now: Instant, key: K) -> Option<Occurrence> {
        let every = self.every;
        let cause = self.causes.entry(key).or_insert(Cause {
            told: false,
            last_line: None,
            last_seen: now,
            unlogged: 0,
            total: 0,
        });
        cause.last_seen = now;
        cause.total += 1;
        let due = cause.last_line.is_none_or(|t| now.saturating_duration_since(t) >= every);
        if !due {
            cause.unlogged += 1;
            return None;
        }
        let suppressed = std::mem::take(&mut cause.unlogged);
        cause.told = true;
        cause.last_line = Some(now);
        Some(Occurrence { suppressed })
    }

    /// The caller saw `key` end (the peer answered, the step worked): `Some` when the last line
    /// about it said it happens. Its rate window stays: a cause that comes straight back is not
    /// logged again before `every` has passed since its last line (a flapping cause costs at most
    /// two lines per `every`).
    pub fn resolved(&mut self, key: &K) -> Option<Ended> {
        let cause = self.causes.get_mut(key)?;
        if !cause.told {
            return None;
        }
        cause.told = false;
        let ended = Ended { suppressed: std::mem::take(&mut cause.unlogged), total: cause.total };
        cause.total = 0;
        Some(ended)
    }

    /// [`Self::resolved`] for every cause (the caller's work succeeded again): those whose last
    /// line said they happen.
    pub fn resolved_all(&mut self) -> Vec<(K, Ended)> {
        let keys: Vec<K> = self.causes.iter().filter(|(_, c)| c.told).map(|(k, _)| k.clone()).collect();
        keys.into_iter().filter_map(|k| self.resolved(&k).map(|e| (k, e))).collect()
    }

    /// Every cause told, or with occurrences not yet logged, and not seen for `every` before
    /// `now`: ended, to be logged once. Causes not seen for `every` are forgotten.
    pub fn expired(&mut self, now: Instant) -> Vec<(K, Ended)> {
        let every = self.every;
        let mut out = Vec::new();
        self.causes.retain(|key, c| {
            if now.saturating_duration_since(c.last_seen) < every {
                return true;
            }
            if c.told || c.unlogged > 0 {
                out.push((key.clone(), Ended { suppressed: c.unlogged, total: c.total }));
            }
            false
        });
        out
    }

    /// Whether `key` is happening as far as the log says (its last line said so).
    pub fn is_told(&self, key: &K) -> bool {
        self.causes.get(key).is_some_and(|c| c.told)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVERY: Duration = Duration::from_secs(60);

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn a_cause_every_half_second_is_logged_once_a_minute_with_the_count() {
        let t0 = Instant::now();
        let mut r = Repeats::new(EVERY);
        let logged: Vec<(u64, Occurrence)> =
            (0..300u64).filter_map(|i| r.occurred(at(t0, i * 500), "peer").map(|o| (i * 500, o))).collect();
        // 150 s of one every 0.5 s: at 0, 60 and 120 s, each after the 119 not logged since.
        assert_eq!(
            logged,
            vec![
                (0, Occurrence { suppressed: 0 }),
                (60_000, Occurrence { suppressed: 119 }),
                (120_000, Occurrence { suppressed: 119 })
            ]
        );
    }

    #[test]
    fn causes_are_limited_apart() {
        let t0 = Instant::now();
        let mut r = Repeats::new(EVERY);
        assert!(r.occurred(t0, 1).is_some());
        assert!(r.occurred(t0, 2).is_some());
        assert!(r.occurred(at(t0, 10), 1).is_none());
        assert!(r.occurred(at(t0, 10), 3).is_some());
    }

    #[test]
    fn an_end_is_told_once_and_only_after_the_cause_was() {
        let t0 = Instant::now();
        let mut r = Repeats::new(EVERY);
        assert_eq!(r.resolved(&"peer"), None, "never happened: nothing to say");
        r.occurred(t0, "peer");
        r.occurred(at(t0, 500), "peer");
        r.occurred(at(t0, 1000), "peer");
        assert!(r.is_told(&"peer"));
        assert_eq!(r.resolved(&"peer"), Some(Ended { suppressed: 2, total: 3 }));
        assert_eq!(r.resolved(&"peer"), None, "once");
        assert!(!r.is_told(&"peer"));
    }

    #[test]
    fn everything_resolves_at_once() {
        let t0 = Instant::now();
        let mut r = Repeats::new(EVERY);
        r.occurred(t0, "a");
        r.occurred(t0, "b");
        r.occurred(at(t0, 10), "b");
        assert!(r.resolved(&"a").is_some());
        assert_eq!(r.resolved_all(), vec![("b", Ended { suppressed: 1, total: 2 })]);
        assert!(r.resolved_all().is_empty());
    }

    #[test]
    fn a_flapping_cause_costs_at_most_two_lines_a_minute() {
        let t0 = Instant::now();
        let mut r = Repeats::new(EVERY);
        let mut lines = 0;
        // Fails and recovers every second for two minutes.
        for s in 0..120u64 {
            lines += usize::from(r.occurred(at(t0, s * 1000), "peer").is_some());
            lines += usize::from(r.resolved(&"peer").is_some());
        }
        assert_eq!(lines, 4, "at 0 and at 60 s: that it happens, and that it ended");
        // The second line counts the occurrences in between.
        let mut r = Repeats::new(EVERY);
        r.occurred(t0, "peer");
        r.resolved(&"peer");
        assert!(r.occurred(at(t0, 1000), "peer").is_none());
        assert_eq!(r.resolved(&"peer"), None, "the log already says it ended");
        assert_eq!(r.occurred(at(t0, 61_000), "peer"), Some(Occurrence { suppressed: 1 }));
    }

    #[test]
    fn a_cause_not_seen_for_the_interval_has_ended() {
        let t0 = Instant::now();
        let mut r = Repeats::new(EVERY);
        for i in 0..10u64 {
            r.occurred(at(t0, i * 500), 7u64);
        }
        assert!(r.expired(at(t0, 30_000)).is_empty(), "seen 25.5 s ago");
        assert_eq!(r.expired(at(t0, 64_500)), vec![(7, Ended { suppressed: 9, total: 10 })]);
        assert!(r.expired(at(t0, 200_000)).is_empty(), "told once, then forgotten");
        assert_eq!(r.occurred(at(t0, 200_000), 7), Some(Occurrence { suppressed: 0 }), "new again");
    }

    #[test]
    fn a_resolved_cause_expires_silently() {
        let t0 = Instant::now();
        let mut r = Repeats::new(EVERY);
        r.occurred(t0, "x");
        assert!(r.resolved(&"x").is_some());
        assert!(r.expired(at(t0, 120_000)).is_empty());
        assert!(r.causes.is_empty());
    }
}
