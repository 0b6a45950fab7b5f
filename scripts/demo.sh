#!/usr/bin/env bash
# Starts a local demo cluster: three PostgreSQL 15 members, each with its pgvigil daemon, until Ctrl-C.
# Installs PostgreSQL 15 when it is missing (Debian; run as root). Extra arguments go to `pgvigil demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/ensure-deps.sh
cargo build --release --locked -p pgvigil
exec target/release/pgvigil demo "$@"
