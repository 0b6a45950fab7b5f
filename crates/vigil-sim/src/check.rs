//! The invariants, checked after every tick, and the convergence check at the end of a run.
//!
//! - **One writer**: never two servers that take writes at the same instant. The lease rule
//!   (`lease_timeout + lease_margin` before a promotion, keepers that kill at the lease's end)
//!   means this holds at every tick, with clocks drifting within the configured bound.
//! - **No acknowledged commit lost** in `synchronous_mode = on | strict`: whenever a server starts
//!   taking writes (a promotion, a restart in place), it holds every commit acknowledged since the
//!   synchronous mode was committed.
//! - **Convergence**: at the end of the run, which ends with a quiet period after the last heal,
//!   one primary takes writes and every other PostgreSQL member streams from it.

use crate::world::World;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub at_ms: u64,
    pub invariant: &'static str,
    pub detail: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at {} ms: {}", self.invariant, self.at_ms, self.detail)
    }
}

pub const TWO_WRITERS: &str = "two writable primaries";
pub const LOST_COMMIT: &str = "acknowledged commit lost";
pub const NO_CONVERGENCE: &str = "no convergence after the faults healed";

pub fn after_tick(w: &mut World) {
    if w.failure.is_some() {
        return;
    }
    let writable: Vec<usize> = (0..w.members.len()).filter(|i| w.members[*i].pg.accepts_writes()).collect();
    if writable.len() > 1 {
        let names: Vec<&str> = writable.iter().map(|i| w.members[*i].name.as_str()).collect();
        fail(w, TWO_WRITERS, format!("{} take writes at once", names.join(" and ")));
        return;
    }
    for &i in &writable {
        if w.writable_before[i] {
            continue;
        }
        let pg = &w.members[i].pg;
        let missing: Vec<&crate::world::Ack> =
            w.acks.iter().filter(|a| a.protected && !pg.holds(a.lsn, a.chain)).collect();
        if let Some(first) = missing.first() {
            let detail = format!(
                "{} takes writes without {} acknowledged commit(s); the first: id {} at LSN {}, acknowledged by {} at {} ms",
                w.members[i].name,
                missing.len(),
                first.id,
                first.lsn,
                w.members[first.by].name,
                first.at
            );
            fail(w, LOST_COMMIT, detail);
            return;
        }
    }
    for i in 0..w.members.len() {
        w.writable_before[i] = writable.contains(&i);
    }
}

pub fn at_end(w: &mut World) {
    if w.failure.is_some() {
        return;
    }
    if let Err(why) = w.converged() {
        let quiet = w.now - w.last_heal;
        fail(w, NO_CONVERGENCE, format!("{quiet} ms after the last heal: {why}"));
    }
}

fn fail(w: &mut World, invariant: &'static str, detail: String) {
    w.trace.note(w.now, || format!("VIOLATION {invariant}: {detail}"));
    w.failure = Some(Failure { at_ms: w.now, invariant, detail });
}
