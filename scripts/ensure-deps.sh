# Sourced by test.sh and demo.sh: make sure PostgreSQL 15, cargo, ip and nft are there.
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is missing: install Rust (https://rustup.rs), then run this again" >&2
  exit 69
fi
if [ ! -x /usr/lib/postgresql/15/bin/postgres ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "PostgreSQL 15 is missing: run as root, or apt-get install -y postgresql" >&2
    exit 69
  fi
  echo "Installing PostgreSQL 15 (apt-get install postgresql) ..." >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq postgresql >/dev/null
fi
if ! id postgres >/dev/null 2>&1; then
  echo "the postgres system user is missing (it comes with the postgresql package)" >&2
  exit 69
fi
# HAProxy: the scenario that routes writes through `option httpchk GET /primary` runs it.
if ! command -v haproxy >/dev/null 2>&1 && [ ! -x /usr/sbin/haproxy ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "HAProxy is missing: run as root, or apt-get install -y haproxy" >&2
    exit 69
  fi
  echo "Installing HAProxy (apt-get install haproxy) ..." >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq haproxy >/dev/null
fi
# wrk: the health-endpoint latency benchmark (bench/health.sh) drives the HTTP API with it.
if ! command -v wrk >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "wrk is missing: run as root, or apt-get install -y wrk" >&2
    exit 69
  fi
  echo "Installing wrk (apt-get install wrk) ..." >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq wrk >/dev/null
fi

# The fault-injection suite (tests/tests/faults.rs, the `faults` runner) builds hosts as network
# namespaces: it needs `ip` (iproute2) and `nft` (nftables).
if ! command -v ip >/dev/null 2>&1 || ! command -v nft >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "iproute2/nftables are missing: run as root, or apt-get install -y iproute2 nftables" >&2
    exit 69
  fi
  echo "Installing iproute2 and nftables ..." >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq iproute2 nftables >/dev/null
fi
