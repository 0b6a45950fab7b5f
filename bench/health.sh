#!/usr/bin/env bash
# The health-endpoint latency figures: wrk against /primary (on the primary) and /replica (on a
# standby) of a real three-member cluster, at about 200 requests/s (bench/health-rate.lua), then
# flat out; once over plain http, once with TLS (mutual between members, https on the API).
# Usage: bash bench/health.sh [SECONDS=30]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/ensure-deps.sh
cargo build --release --locked -p pgvigil -p vigil-tests --bins
target="${CARGO_TARGET_DIR:-$PWD/target}/release"
export PGVIGIL_BIN="$target/pgvigil"
"$target/bench" health plain "${1:-30}"
"$target/bench" health tls "${1:-30}"
