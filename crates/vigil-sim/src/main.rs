//! `sim`: run many seeds of the cluster simulation, or replay one with its trace.
//!
//! ```text
//! sim [--seeds N] [--from S] [--secs D]    run seeds S.. (N of them, or for D seconds); print seeds/s
//! sim --seed S [--trace]                   run one seed; with --trace, print what happened
//! sim --plant NAME [--seeds N]             plant a bug (lease-wait, non-holder, unconfirmed-grant;
//!                                          the first two need --features planted-bugs) and count
//!                                          the seeds until it is caught
//! ```

use std::process::ExitCode;
use std::time::Instant;
use vigil_sim::{run, Config, Planted};

struct Args {
    seeds: Option<u64>,
    from: u64,
    secs: Option<f64>,
    one: Option<u64>,
    trace: bool,
    plant: Option<Planted>,
}

fn parse() -> Result<Args, String> {
    let mut a = Args { seeds: None, from: 0, secs: None, one: None, trace: false, plant: None };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let num = |v: String| v.parse::<u64>().map_err(|e| format!("{v}: {e}"));
        match flag.as_str() {
            "--seeds" => a.seeds = Some(num(value()?)?),
            "--from" => a.from = num(value()?)?,
            "--seed" => a.one = Some(num(value()?)?),
            "--secs" => a.secs = Some(value()?.parse::<f64>().map_err(|e| e.to_string())?),
            "--trace" => a.trace = true,
            "--plant" => {
                let v = value()?;
                a.plant = Some(Planted::parse(&v).ok_or_else(|| format!("unknown bug {v}"))?);
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(a)
}

fn config(seed: u64, plant: Option<Planted>) -> Config {
    let mut cfg = Config::for_seed(seed);
    cfg.planted.extend(plant);
    cfg
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}\nusage: sim [--seeds N | --secs D] [--from S] [--plant BUG] | --seed S [--trace]");
            return ExitCode::from(64);
        }
    };
    if let Some(seed) = args.one {
        let out = run(seed, config(seed, args.plant), args.trace);
        for line in &out.trace {
            println!("{line}");
        }
        return match out.failure {
            Some(f) => {
                println!("seed {seed}: {f}");
                ExitCode::FAILURE
            }
            None => {
                println!("seed {seed}: ok ({} commits acknowledged, epoch {})", out.acked, out.epochs);
                ExitCode::SUCCESS
            }
        };
    }
    let started = Instant::now();
    let limit = args.seeds.unwrap_or(if args.secs.is_some() { u64::MAX } else { 1000 });
    let mut done = 0u64;
    let mut failed = Vec::new();
    let mut seed = args.from;
    while done < limit && args.secs.is_none_or(|s| started.elapsed().as_secs_f64() < s) {
        let out = run(seed, config(seed, args.plant), false);
        done += 1;
        if let Some(f) = out.failure {
            println!("seed {seed}: {f}");
            println!("  replay: cargo run -p vigil-sim --release -- --seed {seed} --trace");
            failed.push(seed);
            if args.plant.is_some() {
                break;
            }
        }
        seed += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{done} seeds ({}..{}) in {secs:.2} s: {:.0} seeds/s, {} failed",
        args.from,
        args.from + done,
        done as f64 / secs,
        failed.len()
    );
    if let Some(p) = args.plant {
        match failed.first() {
            Some(_) => println!("planted bug {} caught after {done} seed(s)", p.name()),
            None => println!("planted bug {} NOT caught in {done} seeds", p.name()),
        }
        return if failed.is_empty() { ExitCode::FAILURE } else { ExitCode::SUCCESS };
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
