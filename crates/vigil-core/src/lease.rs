//! The primary agent's lease: valid until `sent + lease_timeout` of the latest granted report.
//!
//! Measured from when the report was *sent* (not when the ack came back), on the agent's own
//! monotonic clock, so a slow ack never stretches the lease past what the coordinator assumes.

use std::time::{Duration, Instant};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lease {
    epoch: u64,
    expires_at: Option<Instant>,
}

impl Lease {
    /// Take an ack for a report sent at `sent_at`. A refusal does not shorten a lease already
    /// held: the coordinator waits out what it granted. Grants for an older epoch are ignored.
    pub fn on_ack(&mut self, sent_at: Instant, granted: bool, epoch: u64, lease_timeout: Duration) {
        if granted {
            self.extend(epoch, sent_at + lease_timeout);
        }
    }

    /// Take over a lease held before a restart of the daemon (the keeper kept its deadline): the
    /// same grant, so the coordinator's wait already covers it.
    pub fn restore(&mut self, epoch: u64, expires_at: Instant) {
        self.extend(epoch, expires_at);
    }

    fn extend(&mut self, epoch: u64, until: Instant) {
        if epoch > self.epoch {
            self.epoch = epoch;
            self.expires_at = Some(until);
        } else if epoch == self.epoch {
            self.expires_at = Some(self.expires_at.map_or(until, |e| e.max(until)));
        }
    }

    /// Whether the lease lets this member act as primary of `epoch` at `now`.
    pub fn valid(&self, epoch: u64, now: Instant) -> bool {
        self.epoch == epoch && self.expires_at.is_some_and(|e| now < e)
    }

    /// When the lease for `epoch` runs out, if one is held.
    pub fn expires_at(&self, epoch: u64) -> Option<Instant> {
        self.expires_at.filter(|_| self.epoch == epoch)
    }

    pub fn remaining(&self, epoch: u64, now: Instant) -> Duration {
        self.expires_at(epoch).map_or(Duration::ZERO, |e| e.saturating_duration_since(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Duration = Duration::from_secs(2);

    #[test]
    fn lease_runs_from_the_send_time() {
        let t0 = Instant::now();
        let mut l = Lease::default();
        l.on_ack(t0, true, 1, L);
        assert!(l.valid(1, t0 + Duration::from_millis(1999)));
        assert!(!l.valid(1, t0 + L));
        assert_eq!(l.remaining(1, t0 + Duration::from_millis(500)), Duration::from_millis(1500));
    }

    #[test]
    fn refusals_and_late_acks_never_extend_or_shorten_wrongly() {
        let t0 = Instant::now();
        let mut l = Lease::default();
        l.on_ack(t0 + Duration::from_secs(1), true, 1, L);
        // An ack for an older report arriving late does not move the expiry back.
        l.on_ack(t0, true, 1, L);
        assert_eq!(l.expires_at(1), Some(t0 + Duration::from_secs(3)));
        // A refusal keeps what was granted.
        l.on_ack(t0 + Duration::from_secs(2), false, 1, L);
        assert!(l.valid(1, t0 + Duration::from_millis(2900)));
        assert!(!l.valid(1, t0 + Duration::from_secs(3)));
    }

    #[test]
    fn epochs_do_not_mix() {
        let t0 = Instant::now();
        let mut l = Lease::default();
        l.on_ack(t0, true, 2, L);
        assert!(!l.valid(1, t0));
        assert!(l.valid(2, t0));
        l.on_ack(t0 + L, true, 1, L);
        assert_eq!(l.expires_at(1), None);
        assert!(!l.valid(2, t0 + L));
    }
}
