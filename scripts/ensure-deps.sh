# Sourced by test.sh and demo.sh: make sure PostgreSQL 15, pgBackRest, cargo, haproxy, wrk, ip and nft are there.
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is missing: install Rust (https://rustup.rs), then run this again" >&2
  exit 69
fi

# apt_install WHAT PACKAGE...: install Debian packages as root, or say how and stop (exit 69).
apt_install() {
  local what="$1"
  shift
  if [ "$(id -u)" -ne 0 ]; then
    echo "$what is missing: run as root, or apt-get install -y $*" >&2
    exit 69
  fi
  echo "Installing $what (apt-get install $*) ..." >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "$@" >/dev/null
}

if [ ! -x /usr/lib/postgresql/15/bin/postgres ]; then
  apt_install "PostgreSQL 15" postgresql
fi
if ! id postgres >/dev/null 2>&1; then
  echo "the postgres system user is missing (it comes with the postgresql package)" >&2
  exit 69
fi
# HAProxy: the scenario that routes writes through `option httpchk GET /primary` runs it.
if ! command -v haproxy >/dev/null 2>&1 && [ ! -x /usr/sbin/haproxy ]; then
  apt_install HAProxy haproxy
fi
# pgBackRest (Debian 12: 2.45): archiving and backups ([backup]; tests/tests/backup.rs, the demo).
if ! command -v pgbackrest >/dev/null 2>&1; then
  apt_install pgBackRest pgbackrest
fi
# wrk: the health-endpoint latency benchmark (bench/health.sh) drives the HTTP API with it.
if ! command -v wrk >/dev/null 2>&1; then
  apt_install wrk wrk
fi
# The fault-injection suite (tests/tests/faults.rs, the `faults` runner) builds hosts as network
# namespaces: it needs `ip` (iproute2) and `nft` (nftables).
if ! command -v ip >/dev/null 2>&1 || ! command -v nft >/dev/null 2>&1; then
  apt_install "iproute2/nftables" iproute2 nftables
fi
# The unit-file checks (tests/tests/systemd.rs: systemd-analyze verify / security) need
# systemd-analyze, from the systemd package (absent from minimal Debian images).
if ! command -v systemd-analyze >/dev/null 2>&1; then
  apt_install systemd-analyze systemd
fi
