//! The fault kinds, their seeded schedule, and the background weather (message loss and delay,
//! clock-rate drift) of one run.
//!
//! The kinds are the fault suite's (`tests/src/faults.rs`: kill-postgres, kill-daemon, freeze,
//! isolate, cut-primary-coordinator, isolate-coordinator, flap) plus what only a simulation can
//! do cheaply: a daemon stopped alone (SIGSTOP of pgvigil, its keeper and PostgreSQL running on),
//! PostgreSQL stopped alone (hung), a one-way cut, and a postmaster killed and restarted in place.
//! Targets are roles resolved when the fault is injected, as in the suite.

use crate::rng::Rng;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// SIGKILL the postmaster; its daemon restarts it.
    KillPostgres,
    /// SIGKILL the daemon (PostgreSQL stays under its keeper); started again at the heal.
    KillDaemon,
    /// SIGSTOP every process of the host (daemon, keeper, PostgreSQL).
    Freeze,
    /// SIGSTOP the daemon only.
    StallDaemon,
    /// SIGSTOP PostgreSQL only: it runs and answers nothing.
    FreezePostgres,
    /// The daemon's Raft task stalls (a blocked fsync on its thread): no heartbeats, no votes,
    /// no check-quorum, while the rest of the daemon (reports, the coordinator) runs on.
    StallRaft,
    /// The host's switch port down.
    Isolate,
    /// Both directions between the primary's and the coordinator's hosts.
    CutPrimaryCoordinator,
    IsolateCoordinator,
    /// Traffic from the target to another host is dropped; the other way works.
    OneWay,
    /// The port goes down and up every `period` until healed.
    Flap,
}

pub const ALL: [Kind; 11] = [
    Kind::KillPostgres,
    Kind::KillDaemon,
    Kind::Freeze,
    Kind::StallDaemon,
    Kind::FreezePostgres,
    Kind::StallRaft,
    Kind::Isolate,
    Kind::CutPrimaryCoordinator,
    Kind::IsolateCoordinator,
    Kind::OneWay,
    Kind::Flap,
];

/// Whom a fault hits, resolved when it is injected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Primary,
    Coordinator,
    /// The k-th member (modulo the member count).
    Member(usize),
}

#[derive(Clone, Copy, Debug)]
pub struct Planned {
    pub at_ms: u64,
    pub kind: Kind,
    pub target: Target,
    pub other: usize,
    pub lasts_ms: u64,
    pub flap_period_ms: u64,
}

/// The background of a run: how lossy and slow messages are, how far clocks drift.
#[derive(Clone, Copy, Debug)]
pub struct Weather {
    pub loss_per_mille: u64,
    pub max_delay_ms: u64,
    /// Per mille of messages that take 200-800 ms.
    pub slow_per_mille: u64,
}

impl Weather {
    /// No loss, short delays: for scripted scenarios.
    pub fn calm() -> Self {
        Weather { loss_per_mille: 0, max_delay_ms: 5, slow_per_mille: 0 }
    }

    pub fn draw(rng: &mut Rng) -> Self {
        Weather {
            loss_per_mille: *rng.pick(&[0, 0, 5, 20, 50]).unwrap_or(&0),
            max_delay_ms: rng.range(2, 60),
            slow_per_mille: *rng.pick(&[0, 0, 5, 20]).unwrap_or(&0),
        }
    }
}

/// A schedule of faults from `start_ms` to `end_ms` (each one healed by then): one at a time
/// mostly, sometimes two overlapping.
pub fn schedule(rng: &mut Rng, start_ms: u64, end_ms: u64) -> Vec<Planned> {
    let mut out = Vec::new();
    let mut t = start_ms + rng.range(0, 3000);
    while t < end_ms {
        let kind = *rng.pick(&ALL).unwrap_or(&Kind::Isolate);
        let target = match rng.range(0, 9) {
            0..=4 => Target::Primary,
            5..=6 => Target::Coordinator,
            k => Target::Member(k as usize),
        };
        let lasts_ms = match rng.range(0, 9) {
            // Short ones: a postmaster back within half a second, a blip of the network.
            0..=2 => rng.range(100, 800),
            3..=7 => rng.range(800, 5000),
            _ => rng.range(5000, 12000),
        };
        let lasts_ms = lasts_ms.min(end_ms.saturating_sub(t));
        out.push(Planned {
            at_ms: t,
            kind,
            target,
            other: rng.range(0, 7) as usize,
            lasts_ms,
            flap_period_ms: rng.range(200, 1500),
        });
        // Mostly after this one healed; sometimes while it lasts.
        t += if rng.chance(200) { rng.range(50, lasts_ms.max(51)) } else { lasts_ms + rng.range(300, 6000) };
    }
    out
}
