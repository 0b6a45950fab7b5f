//! Fuzz targets: the daemon's parsers of untrusted input fed random and mutated inputs.
//!
//! Each target is a generator (a proptest [`Strategy`]) and a check that runs the input through
//! the same functions the daemon runs it through and asserts the target's properties (never a
//! panic; an error names what is wrong; a refused input changes nothing). The same pairs run in
//! two ways:
//! - as property tests (`cargo test -p vigil-tests --lib fuzz`), a few hundred cases each;
//! - for a bounded time by `bench fuzz SECONDS` ([`run`]), which counts inputs tried, accepted and
//!   rejected, and catches panics (a broken property is an assertion, so it counts as a panic).
//!
//! # Layout
//! - [`mutate`]: byte, text and JSON mutations of valid encodings.
//! - [`config`]: the config loader (`config::parse` + `config::check`).
//! - [`api`]: the HTTP API's request bodies, `at` times and query strings (then, when accepted,
//!   through the coordinator's decision into the state machine), and the bearer token check.
//! - [`peer`]: peer messages: health reports (prost + `convert::from_proto`) and raft-rs messages
//!   and conf changes (rust-protobuf), from raw and mutated bytes.
//! - [`commands`]: committed commands (`Replicated::apply`) and snapshots (`Replicated::restore`).

pub mod api;
pub mod commands;
pub mod config;
pub mod mutate;
pub mod peer;

use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use std::fmt::Debug;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What a target made of one input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Parsed (and, for commands, applied).
    Accepted,
    /// Refused with an error, as it should be.
    Rejected,
}

/// One target's counts over a run.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    pub name: &'static str,
    pub tried: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub panics: u64,
    /// The first panic's message and the input that caused it (to replay it).
    pub first_panic: Option<String>,
}

type Target = Box<dyn FnOnce(&mut TestRunner, Instant) -> Tally>;

/// Runs every target in turn, `total` shared evenly between them, with inputs from `seed`.
pub fn run(total: Duration, seed: u64) -> Vec<Tally> {
    let targets: Vec<Target> = vec![
        Box::new(|r, until| drive(r, "config", until, config::input(), config::check)),
        Box::new(|r, until| drive(r, "api_bodies", until, api::body_input(), api::check_body)),
        Box::new(|r, until| drive(r, "api_auth", until, api::auth_input(), api::check_auth)),
        Box::new(|r, until| drive(r, "peer_reports", until, peer::report_input(), peer::check_report)),
        Box::new(|r, until| drive(r, "raft_messages", until, peer::raft_input(), peer::check_raft)),
        Box::new(|r, until| drive(r, "commands", until, commands::input(), commands::check)),
        Box::new(|r, until| drive(r, "snapshots", until, commands::snapshot_input(), commands::check_snapshot)),
    ];
    let per_target = total / targets.len() as u32;
    let mut runner = runner(seed);
    targets.into_iter().map(|t| t(&mut runner, Instant::now() + per_target)).collect()
}

/// A runner whose inputs follow from `seed` alone.
fn runner(seed: u64) -> TestRunner {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    TestRunner::new_with_rng(Config::default(), TestRng::from_seed(RngAlgorithm::ChaCha, &key))
}

/// The message of the latest panic, with its location (the hook runs before the unwinding).
static LAST_PANIC: Mutex<Option<String>> = Mutex::new(None);

/// Feeds `check` inputs from `strategy` until `until`, catching panics.
fn drive<T: Debug>(
    runner: &mut TestRunner,
    name: &'static str,
    until: Instant,
    strategy: impl Strategy<Value = T>,
    check: fn(&T) -> Outcome,
) -> Tally {
    let mut tally = Tally { name, ..Tally::default() };
    let previous = panic::take_hook();
    panic::set_hook(Box::new(|info| {
        *LAST_PANIC.lock().unwrap_or_else(|p| p.into_inner()) = Some(info.to_string());
    }));
    while Instant::now() < until {
        let input = match strategy.new_tree(runner) {
            Ok(tree) => tree.current(),
            Err(_) => continue,
        };
        tally.tried += 1;
        match panic::catch_unwind(AssertUnwindSafe(|| check(&input))) {
            Ok(Outcome::Accepted) => tally.accepted += 1,
            Ok(Outcome::Rejected) => tally.rejected += 1,
            Err(_) => {
                tally.panics += 1;
                if tally.first_panic.is_none() {
                    let message = LAST_PANIC.lock().unwrap_or_else(|p| p.into_inner()).take().unwrap_or_default();
                    let mut input = format!("{input:?}");
                    if input.len() > 4000 {
                        let cut = (0..=4000).rev().find(|i| input.is_char_boundary(*i)).unwrap_or(0);
                        input.truncate(cut);
                        input.push_str("...");
                    }
                    tally.first_panic = Some(format!("{message}\ninput: {input}"));
                }
            }
        }
    }
    panic::set_hook(previous);
    tally
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bounded_run_counts_every_input_and_catches_panics() {
        let mut r = runner(7);
        let until = Instant::now() + Duration::from_millis(50);
        let t = drive(&mut r, "odd", until, 0u32..100, |n| match n % 3 {
            0 => panic!("multiple of three: {n}"),
            1 => Outcome::Accepted,
            _ => Outcome::Rejected,
        });
        assert!(t.tried > 0);
        assert_eq!(t.tried, t.accepted + t.rejected + t.panics);
        assert!(t.panics > 0);
        assert!(t.first_panic.is_some_and(|p| p.contains("multiple of three") && p.contains("input: ")));
    }
}
