#!/usr/bin/env bash
# The figures of the core failover issue, on real clusters with release builds:
#   failover time (kill -9 of the primary's daemon + PostgreSQL -> first committed write on the new
#   primary) over RUNS runs, with the count of acknowledged writes missing afterwards; the planned
#   switchover's write-unavailability window over RUNS runs (and acknowledged writes missing); then
#   the daemon's own failures (stalled daemon, frozen PostgreSQL, SIGTERM, restarts) over RUNS runs;
#   the idle daemons' and keepers' RSS and CPU over SECONDS; then the fuzz targets (config loader,
#   API bodies and token, peer messages, committed commands and snapshots) for FUZZ_SECONDS in all,
#   which fails if any input made one panic.
# Usage: bash bench/run.sh [RUNS=5] [SECONDS=60] [FUZZ_SECONDS=60]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/ensure-deps.sh
cargo build --release --locked -p pgvigil -p vigil-tests --bins
target="${CARGO_TARGET_DIR:-$PWD/target}"
export PGVIGIL_BIN="$target/release/pgvigil"
"$target/release/bench" failover "${1:-5}"
"$target/release/bench" switchover "${1:-5}"
"$target/release/bench" unattended "${1:-5}"
"$target/release/bench" idle "${2:-60}"
"$target/release/bench" fuzz "${3:-60}"
