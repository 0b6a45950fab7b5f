#!/usr/bin/env bash
# The container tier (part of scripts/test.sh, so of CI): the image, the compose topologies, the
# Debian package and the Kubernetes example, tested for real in Docker.
#   bash scripts/docker-tier.sh            # everything: engine, images, package, tests
# It installs Docker (docker.io, docker-compose) and debootstrap when missing, starts dockerd when
# none runs (and stops it at the end), makes the base image debian:bookworm-slim with debootstrap
# (no registry is reachable here), builds the release binary, the image pgvigil:latest and the
# .deb, installs kubernetes-validate (PyPI) in a venv, then runs tests/tests/docker.rs.
# Root only (dockerd, debootstrap). See README.md ("Containers").
set -euo pipefail
cd "$(dirname "$0")/.."
tier_start=$SECONDS
source scripts/ensure-deps.sh
source scripts/docker-env.sh
trap docker_env_down EXIT
docker_env_up

target="${CARGO_TARGET_DIR:-target}"
echo "== docker tier: release binary ==" >&2
cargo build --release --locked -p pgvigil
bin="$target/release/pgvigil"
# The image's build context is the repository root and takes target/release/pgvigil.
if [ "$(realpath "$bin")" != "$(realpath -m target/release/pgvigil)" ]; then
  install -D -m 0755 "$bin" target/release/pgvigil
fi

echo "== docker tier: image pgvigil:latest ==" >&2
t=$SECONDS
docker build -q --network host -f docker/Dockerfile -t pgvigil:latest . >/dev/null
echo "docker-tier: image built in $((SECONDS - t)) s, $(docker image inspect -f '{{.Size}}' pgvigil:latest | awk '{printf "%.0f MB", $1/1e6}')" >&2
# Old untagged builds of the image take disk: remove them.
docker image prune -f >/dev/null

echo "== docker tier: Debian package ==" >&2
deb=$(realpath "$(bash packaging/build-deb.sh target/release/pgvigil target/debian)")
echo "docker-tier: $deb" >&2

echo "== docker tier: kubernetes-validate ==" >&2
venv="${PGVIGIL_VENV:-/var/cache/pgvigil/k8s-venv}"
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    rm -rf "$venv"
    apt_install "python3-venv" python3-venv
    python3 -m venv "$venv"
  fi
  "$venv/bin/pip" install -q --disable-pip-version-check 'kubernetes-validate==1.37.0'
fi

echo "== docker tier: tests ==" >&2
status=0
PGVIGIL_DEB="$deb" PGVIGIL_KUBERNETES_VALIDATE="$venv/bin/kubernetes-validate" PGVIGIL_IMAGE=pgvigil:latest \
  cargo test --locked --workspace --test docker -- --ignored --test-threads=1 || status=$?
echo "docker-tier: $((SECONDS - tier_start)) s in all (exit $status)" >&2
exit "$status"
