#!/usr/bin/env bash
# The routing proxy's figures (issue 13, BENCHMARKS.md "Routing proxy"): pgbench select-only
# (-S) and simple-update (-N), 16 clients, with and without a new connection per transaction
# (-C), against the primary directly, through pgvigil's read-write proxy port and through HAProxy
# 2.6 with the Patroni-style health check (GET /primary), in one run on one machine.
#
# TPS is pgbench's; p99 is computed from pgbench's per-transaction log (-l: every transaction's
# latency in microseconds, the third column), not estimated from a histogram.
#
#   scripts/proxy-bench.sh [seconds per run, default 20]
#
# Env: PGVIGIL_BIN (default target/release/pgvigil, built if missing), SCALE (pgbench -s, 10),
# CLIENTS (16), THREADS (2), HAPROXY (haproxy). Needs root (the demo runs PostgreSQL as
# `postgres`), PostgreSQL 15, pgbench and haproxy (apt-get install postgresql haproxy).
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_RUN=${1:-20}
SCALE=${SCALE:-10}
CLIENTS=${CLIENTS:-16}
THREADS=${THREADS:-2}
HAPROXY=${HAPROXY:-haproxy}
BIN=${PGVIGIL_BIN:-target/release/pgvigil}
PGBENCH=/usr/lib/postgresql/15/bin/pgbench
PSQL=/usr/lib/postgresql/15/bin/psql

for tool in "$PGBENCH" "$PSQL" "$HAPROXY" curl; do
    command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 1; }
done
if [[ ! -x "$BIN" ]]; then
    cargo build --release --locked -p pgvigil
fi

work=$(mktemp -d /tmp/pgvigil-proxy-bench-XXXXXX)
demo_pid=""
haproxy_pid=""
cleanup() {
    [[ -n "$haproxy_pid" ]] && kill "$haproxy_pid" 2>/dev/null || true
    if [[ -n "$demo_pid" ]]; then
        kill -INT "$demo_pid" 2>/dev/null || true
        # The demo stops its daemons (and their PostgreSQL) itself; bounded.
        for _ in $(seq 1 300); do kill -0 "$demo_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$demo_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# Two members: a primary and a standby, each with its daemon and its proxy.
"$BIN" demo --members 2 --run-for 2h >"$work/demo.log" 2>&1 &
demo_pid=$!
for _ in $(seq 1 1200); do
    grep -q "read-write  PGPASSFILE" "$work/demo.log" && break
    kill -0 "$demo_pid" 2>/dev/null || { cat "$work/demo.log" >&2; exit 1; }
    sleep 0.1
done
grep -q "read-write  PGPASSFILE" "$work/demo.log" || { echo "the demo did not come up" >&2; cat "$work/demo.log" >&2; exit 1; }

export PGPASSFILE
PGPASSFILE=$(grep -m1 -o 'PGPASSFILE=[^ ]*' "$work/demo.log" | cut -d= -f2)
export PGUSER=postgres PGDATABASE=postgres PGHOST=127.0.0.1
rw_ports=$(grep -m1 "read-write  PGPASSFILE" "$work/demo.log" | sed -E 's/.* port=([0-9,]+).*/\1/')
# Member lines: "  pg1       api http://127.0.0.1:PORT  PGPASSFILE=... psql "host=127.0.0.1 port=PGPORT user=postgres""
mapfile -t members < <(grep -E '^  pg[0-9]+ +api ' "$work/demo.log")
primary_pg="" primary_api="" primary_proxy="" i=0
IFS=, read -r -a proxies <<<"$rw_ports"
for line in "${members[@]}"; do
    api=$(sed -E 's/.*api (http:[^ ]*).*/\1/' <<<"$line")
    pg=$(sed -E 's/.*port=([0-9]+) user.*/\1/' <<<"$line")
    if [[ "$(curl -s -o /dev/null -w '%{http_code}' "$api/primary")" == 200 ]]; then
        primary_pg=$pg primary_api=$api primary_proxy=${proxies[$i]}
    fi
    i=$((i + 1))
done
[[ -n "$primary_pg" ]] || { echo "no member answers 200 on /primary" >&2; exit 1; }
api_port=${primary_api##*:}

# HAProxy as Patroni's documentation sets it up, checking pgvigil's /primary.
ha_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$work/haproxy.cfg" <<EOF
global
    maxconn 1000
defaults
    mode tcp
    log global
    retries 2
    timeout client 30m
    timeout connect 4s
    timeout server 30m
    timeout check 5s
listen primary
    bind 127.0.0.1:$ha_port
    option httpchk GET /primary
    http-check expect status 200
    default-server inter 3s fall 3 rise 2 on-marked-down shutdown-sessions
EOF
for line in "${members[@]}"; do
    name=$(awk '{print $1}' <<<"$line")
    api=$(sed -E 's/.*api (http:[^ ]*).*/\1/' <<<"$line")
    pg=$(sed -E 's/.*port=([0-9]+) user.*/\1/' <<<"$line")
    echo "    server $name 127.0.0.1:$pg maxconn 100 check port ${api##*:}" >>"$work/haproxy.cfg"
done
"$HAPROXY" -f "$work/haproxy.cfg" -db >"$work/haproxy.log" 2>&1 &
haproxy_pid=$!
for _ in $(seq 1 100); do
    "$PSQL" -X -At -p "$ha_port" -c "SELECT 1" >/dev/null 2>&1 && break
    sleep 0.2
done
"$PSQL" -X -At -p "$ha_port" -c "SELECT 1" >/dev/null || { cat "$work/haproxy.log" >&2; exit 1; }

"$PGBENCH" -i -q -s "$SCALE" -p "$primary_pg" >/dev/null 2>&1

# p99 of the third column of pgbench's per-transaction logs, in ms.
p99() {
    cat "$@" | awk '{print $3}' | sort -n | awk '{a[NR]=$1} END {if (NR==0) {print "-"; exit} i=int(NR*0.99); if (i<1) i=1; printf "%.2f", a[i]/1000}'
}

echo "pgbench -c $CLIENTS -j $THREADS -T $SECONDS_PER_RUN, scale $SCALE, $(nproc) cores; $("$BIN" --version 2>/dev/null || echo "$BIN"), $("$HAPROXY" -v | head -1 | awk '{print $1, $3}')"
echo "| workload | connections | target | TPS | p99 latency (ms) | vs direct |"
echo "|---|---|---|---|---|---|"
for workload in select-only simple-update; do
    flag=$([[ $workload == select-only ]] && echo -S || echo -N)
    for conn in persistent new; do
        cflag=$([[ $conn == new ]] && echo -C || echo "")
        direct_tps=""
        for target in direct proxy haproxy; do
            case $target in
                direct) port=$primary_pg ;;
                proxy) port=$primary_proxy ;;
                haproxy) port=$ha_port ;;
            esac
            logdir="$work/log-$workload-$conn-$target"
            mkdir -p "$logdir"
            # shellcheck disable=SC2086
            out=$("$PGBENCH" -n $flag $cflag -c "$CLIENTS" -j "$THREADS" -T "$SECONDS_PER_RUN" -p "$port" \
                -l --log-prefix="$logdir/tx" 2>&1) || { echo "$out" >&2; exit 1; }
            tps=$(grep -m1 -E '^tps = ' <<<"$out" | awk '{print $3}')
            tps=$(printf '%.0f' "$tps")
            [[ $target == direct ]] && direct_tps=$tps
            ratio=$(awk -v a="$tps" -v b="$direct_tps" 'BEGIN {printf "%.0f %%", 100*a/b}')
            echo "| $workload | $conn | $target | $tps | $(p99 "$logdir"/tx*) | $ratio |"
            rm -rf "$logdir"
        done
    done
done
