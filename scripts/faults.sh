#!/usr/bin/env bash
# The fault-injection suite's long runs (root; installs PostgreSQL 15, iproute2 and nftables when
# missing). Builds release binaries, then runs `faults` with the given arguments, e.g.
#   bash scripts/faults.sh random --seed 7 --duration 30m --mode strict
#   bash scripts/faults.sh all --runs 5 --mode on
#   bash scripts/faults.sh run --fault freeze --runs 5 --mode off
# The quick subset runs with every other test (scripts/test.sh, tests/tests/faults.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/ensure-deps.sh
cargo build --workspace --release --locked
exec "${CARGO_TARGET_DIR:-target}/release/faults" "$@"
