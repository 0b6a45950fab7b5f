#!/usr/bin/env bash
# Runs every test: the pure core's unit tests and the scenarios on real PostgreSQL 15 + pgvigil.
# Installs PostgreSQL 15 when it is missing (Debian; run as root). Needs a Rust toolchain (cargo).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/ensure-deps.sh
cargo build --workspace --locked
# --no-fail-fast: every test binary runs even after one fails; the failures are listed at the end.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --locked --no-fail-fast -- --test-threads="${PGVIGIL_TEST_THREADS:-2}" 2>&1 | tee "$log" || status=$?
if [ "$status" -ne 0 ]; then
  echo
  echo "== failed tests =="
  grep -E '^test .* FAILED$|^error: test failed' "$log" || true
fi
exit "$status"
