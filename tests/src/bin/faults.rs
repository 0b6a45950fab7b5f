//! The fault-injection suite's runner (root; `ip` and `nft`; `cargo build --workspace` first).
//!
//! ```text
//! faults run --fault kill-daemon --runs 5 --mode on     # N runs of one fault, each on a fresh cluster
//! faults all --runs 5 --mode on                         # every fault kind, then a table of figures
//! faults random --seed 7 --duration 30m --mode strict   # a seeded schedule on one cluster
//! faults schedule --seed 7 --steps 20                   # print a seed's schedule
//! faults clean                                          # remove namespaces left by killed runs
//! ```
//!
//! Exits 1 when any verdict fails (the violations and the saved logs' path are printed).

use clap::{Parser, Subcommand};
use std::time::Duration;
use vigil_tests::faults::FaultKind;
use vigil_tests::nscluster::Mode;
use vigil_tests::scenario::{self, RunReport, Settings};

#[derive(Parser)]
#[command(about = "pgvigil fault-injection suite on network namespaces, with an independent checker")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone)]
struct Common {
    /// synchronous_mode of the cluster: off, on, strict.
    #[arg(long, default_value = "on")]
    mode: String,
    /// PostgreSQL members (hosts).
    #[arg(long, default_value_t = 3)]
    members: usize,
    /// How long each fault stays (default: per fault kind).
    #[arg(long, value_parser = humantime::parse_duration)]
    hold: Option<Duration>,
    /// Link flap period.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "3s")]
    flap_period: Duration,
    /// Heal → converged must take at most this.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    converge_bound: Duration,
    /// Where logs of failed runs are copied.
    #[arg(long)]
    logs: Option<std::path::PathBuf>,
    /// Copy the logs of every run, not only of failed ones.
    #[arg(long)]
    save_logs: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs of one fault kind, each on a fresh cluster.
    Run {
        #[arg(long)]
        fault: String,
        #[arg(long, default_value_t = 5)]
        runs: usize,
        #[command(flatten)]
        common: Common,
    },
    /// Every fault kind, `runs` times each, then the figures.
    All {
        #[arg(long, default_value_t = 5)]
        runs: usize,
        #[command(flatten)]
        common: Common,
    },
    /// A seeded random schedule of faults on one cluster.
    Random {
        /// Default: from the clock (printed; pass it back to replay).
        #[arg(long)]
        seed: Option<u64>,
        #[arg(long, value_parser = humantime::parse_duration, default_value = "30m")]
        duration: Duration,
        /// Stop after this many steps (to replay a failing prefix exactly).
        #[arg(long)]
        steps: Option<usize>,
        #[command(flatten)]
        common: Common,
    },
    /// Print the first steps of a seed's schedule without running anything.
    Schedule {
        #[arg(long)]
        seed: u64,
        #[arg(long, default_value_t = 20)]
        steps: usize,
    },
    /// Remove namespaces and data directories of runs whose process is gone.
    Clean,
}

fn settings(c: &Common) -> anyhow::Result<Settings> {
    let mut s = Settings {
        mode: Mode::parse(&c.mode)?,
        members: c.members,
        hold: c.hold,
        flap_period: c.flap_period,
        converge_bound: c.converge_bound,
        save_logs: c.save_logs,
        ..Settings::default()
    };
    if let Some(l) = &c.logs {
        s.logs = l.clone();
    }
    Ok(s)
}

fn runs_of(kind: FaultKind, runs: usize, s: &Settings) -> anyhow::Result<Vec<RunReport>> {
    let mut out = Vec::new();
    for i in 1..=runs {
        let c = scenario::prepare(s)?;
        let s2 = s.clone();
        let r = c.run(move |c| scenario::run_fault(c, kind, s2))?;
        println!("run {i}/{runs} {} [{}]", r.details(), if r.ok() { "ok" } else { "FAIL" });
        out.push(r);
    }
    Ok(out)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let failed = match cli.cmd {
        Cmd::Schedule { seed, steps } => {
            for (i, step) in vigil_tests::faults::Schedule::new(seed).take(steps).enumerate() {
                println!("step {i}: {step}");
            }
            false
        }
        Cmd::Clean => {
            for ns in vigil_tests::netns::clean_stale() {
                println!("removed {ns}");
            }
            false
        }
        Cmd::Run { fault, runs, common } => {
            let s = settings(&common)?;
            let reports = runs_of(FaultKind::parse(&fault)?, runs, &s)?;
            println!("\n{}\n{}", scenario::FIGURES_HEADER, scenario::figures_row(&reports));
            reports.iter().any(|r| !r.ok())
        }
        Cmd::All { runs, common } => {
            let s = settings(&common)?;
            let mut rows = Vec::new();
            let mut failed = false;
            for kind in FaultKind::ALL {
                let reports = runs_of(kind, runs, &s)?;
                failed |= reports.iter().any(|r| !r.ok());
                rows.push(scenario::figures_row(&reports));
            }
            println!("\n{}\n{}", scenario::FIGURES_HEADER, rows.join("\n"));
            failed
        }
        Cmd::Random { seed, duration, steps, common } => {
            let s = settings(&common)?;
            let seed = seed.unwrap_or_else(|| {
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(1)
            });
            println!(
                "seed {seed} (replay: faults random --seed {seed} --duration {} --mode {})",
                humantime::format_duration(duration),
                s.mode.name()
            );
            let c = scenario::prepare(&s)?;
            let r = c.run(move |c| scenario::run_random(c, seed, duration, steps, s))?;
            println!(
                "seed {}: {} steps, {} acknowledged writes, {} lost, {}",
                r.seed,
                r.steps,
                r.acked,
                r.lost,
                if r.violations.is_empty() { "no violation".to_string() } else { "VIOLATIONS:".to_string() }
            );
            for v in &r.violations {
                println!("  {v}");
            }
            !r.violations.is_empty()
        }
    };
    if failed {
        std::process::exit(1);
    }
    Ok(())
}
