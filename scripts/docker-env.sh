# Sourced by docker-tier.sh and docker-figures.sh: a Docker engine and the base image, made here
# (this kind of machine runs no engine by default and reaches no container registry).
#
# docker_env_up   install docker.io, docker-compose and debootstrap when missing; start dockerd
#                 when none runs (it is stopped again by docker_env_down); make debian:bookworm-slim
#                 with debootstrap from the mirror this machine's apt sources name.
# docker_env_down stop the dockerd that docker_env_up started, and put back the root namespace's
#                 FORWARD policy and the sysctls it found, and remove the docker0 bridge if it
#                 was not there (the network-namespace fault suite must see the machine as it was).
#
# The dockerd started here runs with --iptables=false --ip-forward=false: it touches neither the
# root namespace's iptables (dockerd's own sets FORWARD to DROP) nor net.ipv4.ip_forward. Nothing
# here needs them: containers talk over their own bridge, published ports go through
# docker-proxy, and image builds that fetch packages use `docker build --network host`.

DOCKER_ENV_STARTED_PID=""
DOCKER_ENV_SAVED=""

docker_env_install() {
  local missing=()
  command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
  command -v docker-compose >/dev/null 2>&1 || docker compose version >/dev/null 2>&1 || missing+=(docker-compose)
  command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
  command -v iptables >/dev/null 2>&1 || missing+=(iptables)
  if [ "${#missing[@]}" -gt 0 ]; then
    apt_install "Docker and debootstrap" "${missing[@]}"
  fi
}

# The compose command of this machine: `docker compose` (v2 plugin) when there, else
# `docker-compose` (v1, the Python tool Debian 12 ships). Echoes it.
docker_env_compose() {
  if docker compose version >/dev/null 2>&1; then
    echo "docker compose"
  else
    echo "docker-compose"
  fi
}

docker_env_save() {
  DOCKER_ENV_SAVED=$(mktemp)
  {
    echo "forward_policy=$(iptables -S FORWARD 2>/dev/null | awk '/^-P FORWARD/ {print $3}')"
    for k in net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables; do
      v=$(sysctl -n "$k" 2>/dev/null || true)
      echo "sysctl $k=$v"
    done
    if ip link show docker0 >/dev/null 2>&1; then echo "docker0=present"; fi
  } >"$DOCKER_ENV_SAVED"
}

docker_env_restore() {
  [ -n "$DOCKER_ENV_SAVED" ] && [ -f "$DOCKER_ENV_SAVED" ] || return 0
  local policy
  policy=$(sed -n 's/^forward_policy=//p' "$DOCKER_ENV_SAVED")
  if [ -n "$policy" ] && [ "$(iptables -S FORWARD 2>/dev/null | awk '/^-P FORWARD/ {print $3}')" != "$policy" ]; then
    echo "docker-env: putting back the FORWARD policy $policy" >&2
    iptables -P FORWARD "$policy"
  fi
  sed -n 's/^sysctl //p' "$DOCKER_ENV_SAVED" | while IFS='=' read -r k v; do
    if [ -n "$v" ] && [ "$(sysctl -n "$k" 2>/dev/null)" != "$v" ]; then
      echo "docker-env: putting back $k=$v" >&2
      sysctl -q -w "$k=$v" || true
    fi
  done
  # dockerd leaves its default bridge (docker0, 172.17.0.1/16) behind: remove it when it was not there.
  if ! grep -q '^docker0=present' "$DOCKER_ENV_SAVED" && ip link show docker0 >/dev/null 2>&1; then
    ip link delete docker0 || true
  fi
  rm -f "$DOCKER_ENV_SAVED"
  DOCKER_ENV_SAVED=""
}

docker_env_start() {
  if docker info >/dev/null 2>&1; then
    return 0
  fi
  if pgrep -x dockerd >/dev/null 2>&1; then
    echo "docker-env: a dockerd runs but does not answer (docker info)" >&2
    return 1
  fi
  docker_env_save
  local log=/tmp/pgvigil-dockerd.log
  echo "docker-env: starting dockerd (log: $log)" >&2
  dockerd --iptables=false --ip-forward=false >"$log" 2>&1 &
  DOCKER_ENV_STARTED_PID=$!
  local deadline=$((SECONDS + 60))
  until docker info >/dev/null 2>&1; do
    if ! kill -0 "$DOCKER_ENV_STARTED_PID" 2>/dev/null; then
      echo "docker-env: dockerd exited; its log:" >&2
      tail -20 "$log" >&2
      return 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "docker-env: dockerd did not answer within 60 s" >&2
      return 1
    fi
    sleep 0.5
  done
}

# debian:bookworm-slim, made with debootstrap when the engine does not have it.
docker_env_base_image() {
  if docker image inspect debian:bookworm-slim >/dev/null 2>&1; then
    return 0
  fi
  local mirror
  mirror=$(docker_env_mirror) || return 1
  local root
  root=$(mktemp -d /tmp/pgvigil-rootfs.XXXXXX)
  echo "docker-env: debootstrap --variant=minbase bookworm from the apt sources' mirror ..." >&2
  if ! debootstrap --variant=minbase bookworm "$root" "$mirror" >/tmp/pgvigil-debootstrap.log 2>&1; then
    tail -20 /tmp/pgvigil-debootstrap.log >&2
    rm -rf "$root"
    return 1
  fi
  # Like the official slim image: no apt caches and no documentation kept.
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar --numeric-owner -C "$root" -c . | docker import - debian:bookworm-slim >/dev/null
  rm -rf "$root"
}

# The Debian mirror this machine's own apt sources use (never written into the repository).
docker_env_mirror() {
  local m
  m=$(grep -rhoE '(URIs:|^deb) +[^ ]*https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null |
    grep -oE 'https?://[^ ]+' | grep -v security | head -1)
  if [ -z "$m" ]; then
    echo "docker-env: no Debian mirror found in /etc/apt/sources.list*" >&2
    return 1
  fi
  echo "$m"
}

docker_env_up() {
  docker_env_install
  docker_env_start
  docker_env_base_image
}

docker_env_down() {
  if [ -n "$DOCKER_ENV_STARTED_PID" ]; then
    echo "docker-env: stopping the dockerd started here (pid $DOCKER_ENV_STARTED_PID)" >&2
    kill -TERM "$DOCKER_ENV_STARTED_PID" 2>/dev/null || true
    local deadline=$((SECONDS + 60))
    while kill -0 "$DOCKER_ENV_STARTED_PID" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do
      sleep 0.5
    done
    DOCKER_ENV_STARTED_PID=""
  fi
  docker_env_restore
}
