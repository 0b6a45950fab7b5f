//! The checker's verdicts on what the writer saw. Pure functions over [`Ack`]s: no daemon state.
//!
//! # One writable primary
//!
//! Each acknowledged commit happened at some instant inside its `[sent, acked]` interval. A host's
//! acks are grouped into *periods*: a period ends when the next ack of that host was sent more
//! than `gap` after the previous one was acknowledged. The *core* of a period is
//! `(first ack's acked, last ack's sent)`: the host certainly committed something at or before its
//! start and at or after its end.
//!
//! **Violation:** a commit acknowledged by host A whose whole interval lies strictly inside the core
//! of a period of another host B. Then B committed before it and after it, with no pause longer
//! than `gap` between B's commits: A and B took writes in alternation, i.e. two hosts were writable
//! at the same time. A correct handover never does this, because the new primary starts only
//! `lease_timeout + lease_margin` (2.5 s by default) after the old one's last lease renewal, and
//! `gap` (1 s) is shorter than that, so each handover ends the old host's period.
//!
//! Tolerance, precisely: the check never reports an overlap that could be explained by
//! measurement (intervals that intersect are never ordered). In exchange, two hosts writable at
//! the same time for less than about one write interval plus one commit round trip (≈ 50–100 ms
//! here) may go unseen. [`handovers`] reports the smallest gap between one host's last ack and
//! the next host's first ack, which shows how much room the lease left in practice.
//!
//! # No acknowledged commit lost
//!
//! [`lost`]: every acknowledged id must be on the final primary.

use crate::writer::Ack;
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

/// The default end-of-period gap: must stay below `lease_timeout + lease_margin`.
pub const PERIOD_GAP: Duration = Duration::from_secs(1);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Period {
    pub host: String,
    pub first_sent: Duration,
    pub first_acked: Duration,
    pub last_sent: Duration,
    pub last_acked: Duration,
    pub commits: usize,
}

/// An acked commit of `ack.host` inside a period of `other`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Overlap {
    pub ack: Ack,
    pub other: Period,
}

impl std::fmt::Display for Overlap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}{} acknowledged id {} (sent {:.3}s, acked {:.3}s) while {} was committing ({} commits, {:.3}s..{:.3}s)",
            self.ack.host,
            if self.ack.local { " (written from its own namespace)" } else { "" },
            self.ack.id,
            self.ack.sent.as_secs_f64(),
            self.ack.acked.as_secs_f64(),
            self.other.host,
            self.other.commits,
            self.other.first_sent.as_secs_f64(),
            self.other.last_acked.as_secs_f64(),
        )
    }
}

/// A change of the writing host in acked order: `gap_ms` = `to`'s first ack sent minus `from`'s
/// last ack acknowledged (negative: the two intervals intersect).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handover {
    pub from: String,
    pub to: String,
    pub at: Duration,
    pub gap_ms: i64,
}

/// Every host's periods, ordered by start.
pub fn periods(acks: &[Ack], gap: Duration) -> Vec<Period> {
    let mut by_host: BTreeMap<&str, Vec<&Ack>> = BTreeMap::new();
    for a in acks {
        by_host.entry(a.host.as_str()).or_default().push(a);
    }
    let mut out = Vec::new();
    for (host, mut list) in by_host {
        list.sort_by_key(|a| (a.sent, a.acked));
        let mut cur: Option<Period> = None;
        for a in list {
            match &mut cur {
                Some(p) if a.sent <= p.last_acked + gap => {
                    p.last_sent = p.last_sent.max(a.sent);
                    p.last_acked = p.last_acked.max(a.acked);
                    p.first_acked = p.first_acked.min(a.acked);
                    p.commits += 1;
                }
                _ => {
                    out.extend(cur.take());
                    cur = Some(Period {
                        host: host.to_string(),
                        first_sent: a.sent,
                        first_acked: a.acked,
                        last_sent: a.sent,
                        last_acked: a.acked,
                        commits: 1,
                    });
                }
            }
        }
        out.extend(cur);
    }
    out.sort_by_key(|p| (p.first_sent, p.host.clone()));
    out
}

/// The proven overlaps (see the module comment).
pub fn overlaps(acks: &[Ack], gap: Duration) -> Vec<Overlap> {
    let periods = periods(acks, gap);
    let mut out = Vec::new();
    for p in periods.iter().filter(|p| p.first_acked < p.last_sent) {
        for a in acks.iter().filter(|a| a.host != p.host) {
            if p.first_acked < a.sent && a.acked < p.last_sent {
                out.push(Overlap { ack: a.clone(), other: p.clone() });
            }
        }
    }
    out.sort_by_key(|o| o.ack.sent);
    out
}

/// Every change of the writing host, in acked order.
pub fn handovers(acks: &[Ack]) -> Vec<Handover> {
    let mut sorted: Vec<&Ack> = acks.iter().collect();
    sorted.sort_by_key(|a| a.acked);
    sorted
        .windows(2)
        .filter(|w| w[0].host != w[1].host)
        .map(|w| Handover {
            from: w[0].host.clone(),
            to: w[1].host.clone(),
            at: w[1].sent,
            gap_ms: w[1].sent.as_millis() as i64 - w[0].acked.as_millis() as i64,
        })
        .collect()
}

/// The longest stretch without an acknowledged commit (any host) from `from` until the last ack;
/// `None` when nothing was acknowledged after `from`.
pub fn longest_gap(acks: &[Ack], from: Duration) -> Option<Duration> {
    let mut times: Vec<Duration> = acks.iter().map(|a| a.acked).filter(|t| *t > from).collect();
    times.sort();
    let mut prev = from;
    let mut longest = None;
    for t in times {
        longest = Some(longest.unwrap_or(Duration::ZERO).max(t - prev));
        prev = t;
    }
    longest
}

/// Acked commits missing from `present` (the ids on the final primary).
pub fn lost(acks: &[Ack], present: &HashSet<i64>) -> Vec<Ack> {
    acks.iter().filter(|a| !present.contains(&a.id)).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(host: &str, id: i64, sent_ms: u64, acked_ms: u64) -> Ack {
        Ack {
            host: host.into(),
            id,
            sent: Duration::from_millis(sent_ms),
            acked: Duration::from_millis(acked_ms),
            local: false,
        }
    }

    /// A host writing every 50 ms from `from` to `to` (ms), 5 ms per commit.
    fn stream(host: &str, first_id: i64, from: u64, to: u64) -> Vec<Ack> {
        (from..to).step_by(50).enumerate().map(|(i, t)| ack(host, first_id + i as i64, t, t + 5)).collect()
    }

    #[test]
    fn a_clean_failover_has_two_periods_and_no_overlap() {
        let mut acks = stream("a", 0, 0, 2000);
        acks.extend(stream("b", 1000, 4600, 6000));
        let ps = periods(&acks, PERIOD_GAP);
        assert_eq!(ps.len(), 2);
        assert_eq!((ps[0].host.as_str(), ps[0].commits), ("a", 40));
        assert!(overlaps(&acks, PERIOD_GAP).is_empty());
        let h = handovers(&acks);
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].gap_ms, 4600 - 1955);
    }

    #[test]
    fn one_stray_commit_of_the_old_primary_inside_the_new_period_is_caught() {
        // The frozen old primary wakes up at 5 s and acknowledges one write.
        let mut acks = stream("a", 0, 0, 2000);
        acks.extend(stream("b", 1000, 4600, 6000));
        acks.push(ack("a", 5000, 5010, 5030));
        let o = overlaps(&acks, PERIOD_GAP);
        assert_eq!(o.len(), 1);
        assert_eq!((o[0].ack.id, o[0].other.host.as_str()), (5000, "b"));
    }

    #[test]
    fn two_hosts_writing_at_once_are_caught_both_ways() {
        let mut acks = stream("a", 0, 0, 3000);
        acks.extend(stream("b", 1000, 2000, 4000));
        let o = overlaps(&acks, PERIOD_GAP);
        assert!(o.iter().any(|o| o.ack.host == "a"));
        assert!(o.iter().any(|o| o.ack.host == "b"));
    }

    #[test]
    fn intersecting_intervals_at_a_handover_are_not_a_proof() {
        // b's first commit was sent before a's last was acknowledged: order unknown, no verdict,
        // but the handover gap is negative and shown.
        let acks = vec![ack("a", 1, 0, 5), ack("a", 2, 50, 400), ack("b", 3, 300, 310), ack("b", 4, 350, 360)];
        assert!(overlaps(&acks, PERIOD_GAP).is_empty());
        assert!(handovers(&acks).iter().any(|h| h.gap_ms < 0));
    }

    #[test]
    fn a_failback_after_a_pause_is_not_an_overlap() {
        let mut acks = stream("a", 0, 0, 1000);
        acks.extend(stream("b", 1000, 3600, 5000));
        acks.extend(stream("a", 2000, 7600, 9000));
        assert_eq!(periods(&acks, PERIOD_GAP).len(), 3);
        assert!(overlaps(&acks, PERIOD_GAP).is_empty());
    }

    #[test]
    fn a_pause_shorter_than_the_gap_keeps_the_period_open() {
        // b stops for 0.8 s and resumes; a commits in the pause: still two writable hosts.
        let mut acks = stream("b", 0, 0, 1000);
        acks.extend(stream("b", 100, 1800, 3000));
        acks.push(ack("a", 500, 1300, 1310));
        assert_eq!(overlaps(&acks, PERIOD_GAP).len(), 1);
    }

    #[test]
    fn the_longest_gap_after_a_fault() {
        let mut acks = stream("a", 0, 0, 2000);
        acks.extend(stream("b", 1000, 4600, 6000));
        assert_eq!(longest_gap(&acks, Duration::from_millis(1000)), Some(Duration::from_millis(4605 - 1955)));
        assert_eq!(longest_gap(&acks, Duration::from_secs(10)), None);
    }

    #[test]
    fn lost_lists_the_missing_ids() {
        let acks = vec![ack("a", 1, 0, 1), ack("a", 2, 1, 2), ack("b", 3, 5, 6)];
        let present: HashSet<i64> = [1, 3].into_iter().collect();
        assert_eq!(lost(&acks, &present), vec![ack("a", 2, 1, 2)]);
    }
}
