#!/usr/bin/env bash
# Runs every test: the pure core's unit tests, the scenarios on real PostgreSQL 15 + pgvigil, and
# the container tier (image, compose, .deb, Kubernetes example).
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
# The container tier (scripts/docker-tier.sh): Docker, the image, compose, the .deb, Kubernetes.
# CI always runs it; elsewhere PGVIGIL_DOCKER_TIER=0 skips it.
if [ "${CI:-}" = "true" ] || [ "${PGVIGIL_DOCKER_TIER:-1}" != "0" ]; then
  echo
  echo "== container tier (scripts/docker-tier.sh) =="
  bash scripts/docker-tier.sh 2>&1 | tee -a "$log" || status=$?
else
  echo "container tier skipped (PGVIGIL_DOCKER_TIER=0)"
fi
if [ "$status" -ne 0 ]; then
  echo
  echo "== failed tests =="
  grep -E '^test .* FAILED$|^error: test failed|^docker-tier: .*exit [1-9]' "$log" || true
fi
exit "$status"
