#!/usr/bin/env bash
# The backup figures of issue 12 (BENCHMARKS.md "Backups through pgvigil against pgBackRest by
# hand"): on a pgbench database of about 1 GB (scale 70), one run each, a fresh cluster of two
# PostgreSQL members and a witness with a posix repository, all on this machine:
#   - full and incremental backup through `pgvigil backup` against `pgbackrest backup` by hand;
#   - a standby re-created from the repository (POST /reinit, clone_from_repo) against
#     pg_basebackup by hand;
#   - `pgvigil restore` of the stanza into a new cluster's data directory;
#   - kill -9 of the primary's host under pgbench -N: time until the new primary archives again,
#     and the archive's gap afterwards (with `pgbackrest verify` and `pgbackrest info`).
#
#   scripts/backup-bench.sh [SCALE, default 70]
#
# Release builds of pgvigil and of the bench binary (target/release, or $CARGO_TARGET_DIR/release). Needs root (PostgreSQL
# runs as `postgres`), PostgreSQL 15 with pgbench, pgBackRest (apt-get install postgresql
# pgbackrest). Takes about 10-20 minutes and a few GB under /tmp, removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

SCALE=${1:-70}
TARGET=${CARGO_TARGET_DIR:-target}
cargo build --release --locked -p pgvigil
cargo build --release --locked -p vigil-tests --bin bench
echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(git rev-parse --short HEAD), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
PGVIGIL_BIN=$(realpath "$TARGET/release/pgvigil") "$TARGET/release/bench" backup "$SCALE"
echo "load at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
