#!/usr/bin/env bash
# The container figures for BENCHMARKS.md (a benchmark, not a test):
#   bash scripts/docker-figures.sh [RUNS]      # RUNS (default 5) docker kill and docker stop each
# Prepares the engine and images as scripts/docker-tier.sh does, prints the image's size, then
# `bench docker RUNS`: compose up to a healthy cluster, write gap and acknowledged writes lost.
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-5}"
source scripts/ensure-deps.sh
source scripts/docker-env.sh
trap docker_env_down EXIT
docker_env_up
target="${CARGO_TARGET_DIR:-target}"
cargo build --release --locked --workspace --bins
if [ "$(realpath "$target/release/pgvigil")" != "$(realpath -m target/release/pgvigil)" ]; then
  install -D -m 0755 "$target/release/pgvigil" target/release/pgvigil
fi
docker build -q --network host -f docker/Dockerfile -t pgvigil:latest . >/dev/null
docker image prune -f >/dev/null
echo "image pgvigil:latest: $(docker image inspect -f '{{.Size}}' pgvigil:latest | awk '{printf "%.0f MB", $1/1e6}') (base debian:bookworm-slim from debootstrap: $(docker image inspect -f '{{.Size}}' debian:bookworm-slim | awk '{printf "%.0f MB", $1/1e6}'); binary $(du -m target/release/pgvigil | cut -f1) MB)"
PGVIGIL_IMAGE=pgvigil:latest "$target/release/bench" docker "$runs"
