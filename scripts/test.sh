#!/usr/bin/env bash
# Runs every test: the pure core's unit tests and the scenarios on real PostgreSQL 15 + pgvigil.
# Installs PostgreSQL 15 when it is missing (Debian; run as root). Needs a Rust toolchain (cargo).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/ensure-deps.sh
cargo build --workspace --locked
cargo test --workspace --locked -- --test-threads="${PGVIGIL_TEST_THREADS:-2}"
