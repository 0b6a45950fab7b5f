//! A deterministic simulation of a whole pgvigil cluster: every member runs the real core (the
//! coordinator with the shell's calling order, the agent reconciler, the lease), over a model of
//! PostgreSQL, Raft and the network, in virtual time, under a fault schedule drawn from a seed.
//! The same seed replays the same run exactly; a failing one prints a readable trace.
//!
//! # Layout
//! - [`world`]: the members (PostgreSQL model, keeper, daemon) and one tick of the whole cluster.
//! - [`pg`]: the PostgreSQL model (WAL as a hash chain, timelines, streaming, synchronous commit).
//! - [`raft`]: the Raft model (elections, check-quorum, a deposed leader that does not know yet).
//! - [`net`]: partitions, one-way cuts.
//! - [`faults`]: fault kinds, the seeded schedule, message loss and delay.
//! - [`check`]: the invariants (one writer, no acknowledged commit lost, convergence).
//! - [`trace`]: the readable record of a run.
//! - [`rng`]: the seeded generator (SplitMix64); nothing else is random, and no wall clock is read
//!   except once for the origin of virtual time.

pub mod check;
pub mod faults;
pub mod net;
pub mod pg;
pub mod raft;
pub mod rng;
pub mod trace;
pub mod world;

pub use check::Failure;
use vigil_core::SyncMode;
use world::World;

/// A planted bug (the teeth test): each breaks one safety rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Planted {
    /// The coordinator fails over without waiting out the lease (a switch in the core).
    PromoteWithoutLeaseWait,
    /// The coordinator promotes a standby that is not a holder of every acknowledged commit (core).
    PromoteNonHolder,
    /// The shell grants the lease without confirming its leadership with a quorum (in the sim's
    /// shell, which is where the real daemon makes that call).
    GrantWithoutConfirm,
}

impl Planted {
    pub const ALL: [Planted; 3] =
        [Planted::PromoteWithoutLeaseWait, Planted::PromoteNonHolder, Planted::GrantWithoutConfirm];

    pub fn name(self) -> &'static str {
        match self {
            Planted::PromoteWithoutLeaseWait => "lease-wait",
            Planted::PromoteNonHolder => "non-holder",
            Planted::GrantWithoutConfirm => "unconfirmed-grant",
        }
    }

    pub fn parse(s: &str) -> Option<Planted> {
        Planted::ALL.into_iter().find(|p| p.name() == s)
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    /// PostgreSQL members.
    pub postgres: usize,
    /// A witness member besides them.
    pub witness: bool,
    pub sync: SyncMode,
    pub duration_ms: u64,
    /// The quiet end of the run: no fault, then the cluster must have converged.
    pub settle_ms: u64,
    pub faults_from_ms: u64,
    pub faults: bool,
    /// Each clock runs up to this far from true time (parts per million).
    pub max_drift_ppm: i64,
    pub planted: Vec<Planted>,
    /// A fixed fault schedule instead of a drawn one (targeted scenarios).
    pub script: Option<Vec<faults::Planned>>,
}

impl Config {
    /// The mix the seeded runs use: the topology and synchronous mode follow from the seed.
    pub fn for_seed(seed: u64) -> Config {
        let sync = [SyncMode::Off, SyncMode::On, SyncMode::Strict][(seed % 3) as usize];
        let (postgres, witness) = match (seed / 3) % 4 {
            0 => (2, true),
            3 => (5, false),
            _ => (3, false),
        };
        Config {
            postgres,
            witness,
            sync,
            duration_ms: 60_000,
            settle_ms: 25_000,
            faults_from_ms: 8_000,
            faults: true,
            // 1%: far beyond real clock-rate errors (tens of ppm), within what the 500 ms margin
            // covers over a 2.5 s wait.
            max_drift_ppm: 10_000,
            planted: Vec::new(),
            script: None,
        }
    }
}

/// The scenario of issue 10's synchronous hole: `synchronous_mode = on`, two PostgreSQL members
/// and a witness; at 12 s the primary's postmaster is killed (its daemon restarts it in place),
/// and `freeze_after_ms` later the primary's whole host stops for 8 s (lost inside the window).
pub fn sync_hole(freeze_after_ms: u64) -> Config {
    let at = 12_000;
    let fault = |at_ms, kind, lasts_ms| faults::Planned {
        at_ms,
        kind,
        target: faults::Target::Primary,
        other: 0,
        lasts_ms,
        flap_period_ms: 1000,
    };
    Config {
        postgres: 2,
        witness: true,
        sync: SyncMode::On,
        duration_ms: 50_000,
        settle_ms: 25_000,
        script: Some(vec![
            fault(at, faults::Kind::KillPostgres, 10),
            fault(at + freeze_after_ms, faults::Kind::Freeze, 8_000),
        ]),
        ..Config::for_seed(0)
    }
}

/// What one run came to.
#[derive(Debug)]
pub struct Outcome {
    pub seed: u64,
    pub failure: Option<Failure>,
    pub acked: usize,
    pub epochs: u64,
    pub trace: Vec<String>,
}

/// Run one seed to its end (or its first violation).
pub fn run(seed: u64, cfg: Config, trace: bool) -> Outcome {
    let _planted = PlantedGuard::set(&cfg.planted);
    let mut w = World::new(cfg, seed, trace);
    let end = w.cfg.duration_ms;
    while w.now < end && w.failure.is_none() {
        w.tick();
    }
    check::at_end(&mut w);
    Outcome {
        seed,
        failure: w.failure.clone(),
        acked: w.acks.len(),
        epochs: w.committed.epoch,
        trace: w.trace.lines().to_vec(),
    }
}

/// Turns the core's planted-bug switches on for this thread while a run lasts.
struct PlantedGuard(Vec<vigil_core::planted::Bug>);

impl PlantedGuard {
    fn set(planted: &[Planted]) -> Self {
        use vigil_core::planted::{set, Bug};
        let bugs: Vec<Bug> = planted
            .iter()
            .filter_map(|p| match p {
                Planted::PromoteWithoutLeaseWait => Some(Bug::PromoteWithoutLeaseWait),
                Planted::PromoteNonHolder => Some(Bug::PromoteNonHolder),
                // Planted in the simulation's own shell.
                Planted::GrantWithoutConfirm => None,
            })
            .collect();
        for b in &bugs {
            assert!(
                set(*b, true),
                "planting {b:?} needs vigil-core's `planted-bugs` feature (--features planted-bugs)"
            );
        }
        PlantedGuard(bugs)
    }
}

impl Drop for PlantedGuard {
    fn drop(&mut self) {
        for b in &self.0 {
            vigil_core::planted::set(*b, false);
        }
    }
}
