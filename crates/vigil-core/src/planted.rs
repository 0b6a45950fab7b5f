//! Planted bugs for the simulation's teeth test (`crates/vigil-sim`): each switch turns one safety
//! rule of the coordinator off, so the simulation can show it catches the breach.
//!
//! Compiled only with the `planted-bugs` feature (enabled by vigil-sim's tests and its `sim`
//! command on request). The switches are per thread and off by default, so even a build with the
//! feature behaves as the normal one until a simulation run turns one on for its own thread.
//! Without the feature, [`on`] is a constant `false` and the checks compile away.

/// A safety rule that a planted bug breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Bug {
    /// Fail over without waiting out the old primary's lease (`lease_timeout + lease_margin`).
    PromoteWithoutLeaseWait,
    /// In a synchronous mode, fail over to any standby, not only a holder of every acknowledged
    /// commit (and without hearing from every holder).
    PromoteNonHolder,
}

#[cfg(feature = "planted-bugs")]
mod switches {
    use super::Bug;
    use std::cell::Cell;

    thread_local! {
        static ON: Cell<[bool; 2]> = const { Cell::new([false; 2]) };
    }

    fn index(bug: Bug) -> usize {
        match bug {
            Bug::PromoteWithoutLeaseWait => 0,
            Bug::PromoteNonHolder => 1,
        }
    }

    pub fn on(bug: Bug) -> bool {
        ON.with(|s| s.get()[index(bug)])
    }

    pub fn set(bug: Bug, on: bool) {
        ON.with(|s| {
            let mut v = s.get();
            v[index(bug)] = on;
            s.set(v);
        });
    }
}

/// Whether `bug` is planted on this thread.
#[cfg(feature = "planted-bugs")]
pub fn on(bug: Bug) -> bool {
    switches::on(bug)
}

/// Plant (or remove) `bug` on this thread; true when done.
#[cfg(feature = "planted-bugs")]
pub fn set(bug: Bug, on: bool) -> bool {
    switches::set(bug, on);
    true
}

/// Plant `bug`: impossible (false) in a build without the `planted-bugs` feature.
#[cfg(not(feature = "planted-bugs"))]
pub fn set(_bug: Bug, _on: bool) -> bool {
    false
}

/// Whether `bug` is planted: never, in a build without the `planted-bugs` feature.
#[cfg(not(feature = "planted-bugs"))]
pub const fn on(_bug: Bug) -> bool {
    false
}
