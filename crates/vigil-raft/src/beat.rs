//! The process's wake-up grid: every periodic loop of the daemon ticks on
//! [`vigil_core::timing::next_beat`] from one base, so loops whose periods divide each other wake
//! the process once together (at rest a daemon's cost is its wake-ups, not its work).

use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tokio::time::{Interval, MissedTickBehavior};

static BASE: OnceLock<Instant> = OnceLock::new();

fn base() -> Instant {
    *BASE.get_or_init(Instant::now)
}

/// The next beat of `period` after now.
pub fn next(period: Duration) -> Instant {
    vigil_core::timing::next_beat(base(), Instant::now(), period)
}

/// An interval ticking on the grid; its first tick is the next beat, not at once. A late tick
/// skips to the following beat, which keeps the loop on the grid.
pub fn interval(period: Duration) -> Interval {
    let mut tick = tokio::time::interval_at(next(period).into(), period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    tick
}
