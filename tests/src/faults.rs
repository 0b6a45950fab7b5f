//! The faults, each with an inject and a heal, and the seeded random schedule of them.
//!
//! | kind | inject | heal |
//! |---|---|---|
//! | `kill-postgres` | `kill -9` the target's postmaster (pid from `postmaster.pid`) | none: its daemon restarts it |
//! | `kill-daemon` | `kill -9` the target's daemon (its keeper kills PostgreSQL when the lease runs out) | start the daemon again |
//! | `freeze` | SIGSTOP every process of the target host | SIGCONT them |
//! | `isolate` | the target's switch port down | up |
//! | `cut-primary-coordinator` | nftables drop between the primary and the coordinator (both hosts) | delete the rules |
//! | `isolate-coordinator` | the coordinator's (Raft leader's) switch port down | up |
//! | `flap` | the target's port down and up every `flap_period` until healed | up |
//!
//! Targets are roles (the primary, the coordinator, the k-th other standby), resolved against the
//! cluster when the fault is injected, so a schedule replays the same way on any run.

use crate::nscluster::NsCluster;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultKind {
    KillPostgres,
    KillDaemon,
    Freeze,
    Isolate,
    CutPrimaryCoordinator,
    IsolateCoordinator,
    Flap,
}

impl FaultKind {
    pub const ALL: [FaultKind; 7] = [
        FaultKind::KillPostgres,
        FaultKind::KillDaemon,
        FaultKind::Freeze,
        FaultKind::Isolate,
        FaultKind::CutPrimaryCoordinator,
        FaultKind::IsolateCoordinator,
        FaultKind::Flap,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KillPostgres => "kill-postgres",
            FaultKind::KillDaemon => "kill-daemon",
            FaultKind::Freeze => "freeze",
            FaultKind::Isolate => "isolate",
            FaultKind::CutPrimaryCoordinator => "cut-primary-coordinator",
            FaultKind::IsolateCoordinator => "isolate-coordinator",
            FaultKind::Flap => "flap",
        }
    }

    pub fn parse(s: &str) -> anyhow::Result<FaultKind> {
        FaultKind::ALL.into_iter().find(|k| k.name() == s).ok_or_else(|| {
            let names: Vec<&str> = FaultKind::ALL.iter().map(|k| k.name()).collect();
            anyhow::anyhow!("unknown fault {s:?}; one of {}", names.join(", "))
        })
    }

    /// Whether the kind takes a target role (the others name their hosts by role themselves).
    fn targeted(self) -> bool {
        !matches!(self, FaultKind::CutPrimaryCoordinator | FaultKind::IsolateCoordinator)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Primary,
    Coordinator,
    /// The k-th (modulo their number) member that is neither the primary nor the coordinator.
    Standby(usize),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Primary => write!(f, "primary"),
            Target::Coordinator => write!(f, "coordinator"),
            Target::Standby(k) => write!(f, "standby#{k}"),
        }
    }
}

/// Who is who when a fault is injected (the primary from the checker's probes, the coordinator
/// from the daemons: it is only used to aim).
#[derive(Clone, Debug)]
pub struct Roles {
    pub primary: String,
    pub coordinator: String,
    pub members: Vec<String>,
}

impl Roles {
    pub fn resolve(&self, t: Target) -> String {
        match t {
            Target::Primary => self.primary.clone(),
            Target::Coordinator => self.coordinator.clone(),
            Target::Standby(k) => {
                let others: Vec<&String> =
                    self.members.iter().filter(|m| **m != self.primary && **m != self.coordinator).collect();
                if others.is_empty() {
                    self.coordinator.clone()
                } else {
                    others[k % others.len()].clone()
                }
            }
        }
    }
}

/// A fault aimed at hosts.
#[derive(Clone, Debug)]
pub struct Fault {
    pub kind: FaultKind,
    pub host: String,
    /// The other end of a cut path.
    pub peer: Option<String>,
    pub flap_period: Duration,
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.peer {
            Some(p) => write!(f, "{} {}<->{}", self.kind.name(), self.host, p),
            None if self.kind == FaultKind::Flap => {
                write!(f, "flap {} every {:.1}s", self.host, self.flap_period.as_secs_f64())
            }
            None => write!(f, "{} {}", self.kind.name(), self.host),
        }
    }
}

impl Fault {
    pub fn aim(kind: FaultKind, target: Target, roles: &Roles, flap_period: Duration) -> Fault {
        let (host, peer) = match kind {
            FaultKind::CutPrimaryCoordinator => (roles.primary.clone(), Some(roles.coordinator.clone())),
            FaultKind::IsolateCoordinator => (roles.coordinator.clone(), None),
            _ => (roles.resolve(target), None),
        };
        Fault { kind, host, peer, flap_period }
    }

    /// Inject the fault; the returned value heals it.
    pub fn inject(&self, c: &Arc<NsCluster>) -> anyhow::Result<Injected> {
        let h = self.host.as_str();
        match self.kind {
            FaultKind::KillPostgres => {
                let pid = c.postmaster_pid(h).ok_or_else(|| anyhow::anyhow!("{h}: no postmaster.pid"))?;
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL)?;
            }
            FaultKind::KillDaemon => c.kill_daemon(h),
            FaultKind::Freeze => {
                c.net.signal_all(h, nix::sys::signal::Signal::SIGSTOP)?;
            }
            FaultKind::Isolate | FaultKind::IsolateCoordinator => c.net.set_link(h, false)?,
            FaultKind::CutPrimaryCoordinator => {
                let peer = self.peer.as_deref().unwrap_or(h);
                anyhow::ensure!(peer != h, "the primary {h} is the coordinator: no path to cut");
                c.net.cut(h, peer)?;
            }
            FaultKind::Flap => {
                let stop = Arc::new(AtomicBool::new(false));
                let (c2, host, period, stop2) = (c.clone(), h.to_string(), self.flap_period, stop.clone());
                let task = tokio::spawn(async move {
                    c2.net.set_link(&host, false)?;
                    let mut up = true;
                    while !stop2.load(Ordering::Relaxed) {
                        tokio::time::sleep(period).await;
                        if stop2.load(Ordering::Relaxed) {
                            break;
                        }
                        c2.net.set_link(&host, up)?;
                        up = !up;
                    }
                    anyhow::Ok(())
                });
                return Ok(Injected { fault: self.clone(), flap: Some((stop, task)) });
            }
        }
        Ok(Injected { fault: self.clone(), flap: None })
    }
}

/// A fault in place.
pub struct Injected {
    pub fault: Fault,
    flap: Option<(Arc<AtomicBool>, tokio::task::JoinHandle<anyhow::Result<()>>)>,
}

impl Injected {
    pub async fn heal(self, c: &Arc<NsCluster>) -> anyhow::Result<()> {
        let h = self.fault.host.as_str();
        match self.fault.kind {
            FaultKind::KillPostgres => {}
            FaultKind::KillDaemon => c.start(h)?,
            FaultKind::Freeze => {
                c.net.signal_all(h, nix::sys::signal::Signal::SIGCONT)?;
            }
            FaultKind::Isolate | FaultKind::IsolateCoordinator => c.net.set_link(h, true)?,
            FaultKind::CutPrimaryCoordinator => c.net.uncut(h, self.fault.peer.as_deref().unwrap_or(h))?,
            FaultKind::Flap => {
                if let Some((stop, task)) = self.flap {
                    stop.store(true, Ordering::Relaxed);
                    task.await??;
                }
                c.net.set_link(h, true)?;
            }
        }
        Ok(())
    }
}

/// splitmix64: small, fixed forever (a replayed seed gives the same numbers on any build).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Uniform in `[lo, hi]`, in 100 ms steps.
    pub fn duration(&mut self, lo: Duration, hi: Duration) -> Duration {
        let steps = (hi.saturating_sub(lo).as_millis() / 100) as u64;
        lo + Duration::from_millis(100 * self.below(steps + 1))
    }
}

/// One step of a random schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub kind: FaultKind,
    pub target: Target,
    /// How long the fault stays before it is healed.
    pub hold: Duration,
    pub flap_period: Duration,
    /// Quiet time after the cluster has converged, before the next step.
    pub pause: Duration,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.kind.name())?;
        if self.kind.targeted() {
            write!(f, " {}", self.target)?;
        }
        if self.kind == FaultKind::Flap {
            write!(f, " every {:.1}s", self.flap_period.as_secs_f64())?;
        }
        write!(f, ", hold {:.1}s, pause {:.1}s", self.hold.as_secs_f64(), self.pause.as_secs_f64())
    }
}

/// The endless schedule of a seed: the same seed gives the same steps.
pub struct Schedule {
    rng: Rng,
}

impl Schedule {
    pub fn new(seed: u64) -> Schedule {
        Schedule { rng: Rng::new(seed) }
    }
}

impl Iterator for Schedule {
    type Item = Step;

    fn next(&mut self) -> Option<Step> {
        let r = &mut self.rng;
        let kind = FaultKind::ALL[r.below(FaultKind::ALL.len() as u64) as usize];
        // Mostly the primary (that is where failover happens), sometimes the others.
        let target = match r.below(10) {
            0..=4 => Target::Primary,
            5..=6 => Target::Coordinator,
            _ => Target::Standby(r.below(8) as usize),
        };
        let hold = match kind {
            // Longer than lease + margin half of the time, shorter the other half.
            FaultKind::Freeze => r.duration(Duration::from_millis(500), Duration::from_secs(6)),
            FaultKind::Flap => r.duration(Duration::from_secs(6), Duration::from_secs(20)),
            _ => r.duration(Duration::from_secs(1), Duration::from_secs(10)),
        };
        let flap_period = r.duration(Duration::from_secs(1), Duration::from_secs(4));
        let pause = r.duration(Duration::ZERO, Duration::from_secs(5));
        Some(Step { kind, target, hold, flap_period, pause })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_always_gives_the_same_schedule() {
        let a: Vec<Step> = Schedule::new(42).take(50).collect();
        let b: Vec<Step> = Schedule::new(42).take(50).collect();
        let c: Vec<Step> = Schedule::new(43).take(50).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        // Every kind shows up in a short schedule.
        for k in FaultKind::ALL {
            assert!(a.iter().any(|s| s.kind == k), "{k:?} missing");
        }
    }

    #[test]
    fn the_generator_is_pinned() {
        // splitmix64's published first output for seed 0: replay must not depend on a crate version.
        assert_eq!(Rng::new(0).next_u64(), 0xe220_a839_7b1d_cdaf);
    }

    #[test]
    fn kinds_parse_back() {
        for k in FaultKind::ALL {
            assert_eq!(FaultKind::parse(k.name()).ok(), Some(k));
        }
        assert!(FaultKind::parse("nope").is_err());
    }

    #[test]
    fn roles_resolve_standbys_among_the_others() {
        let roles = Roles {
            primary: "pg1".into(),
            coordinator: "pg2".into(),
            members: vec!["pg1".into(), "pg2".into(), "pg3".into()],
        };
        assert_eq!(roles.resolve(Target::Standby(5)), "pg3");
        let f = Fault::aim(FaultKind::CutPrimaryCoordinator, Target::Standby(0), &roles, Duration::from_secs(2));
        assert_eq!((f.host.as_str(), f.peer.as_deref()), ("pg1", Some("pg2")));
    }
}
