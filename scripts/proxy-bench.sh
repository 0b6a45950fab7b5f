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
#   scripts/proxy-bench.sh handover
#
# `handover`: three members; two writers, each a new connection per write (psql, one row, every
# ~50 ms), one through the read-write proxies (libpq multi-host over every member's port, as the
# README advises) and one through HAProxy; a planned switchover, then a failover (kill -9 of the
# primary's daemon and postmaster). Prints, per writer and event, the new-connection errors, the
# largest gap between acknowledged writes and the acknowledged rows missing on the final primary.
#
# Env: PGVIGIL_BIN (default target/release/pgvigil, built if missing), SCALE (pgbench -s, 10),
# CLIENTS (16), THREADS (2), HAPROXY (haproxy), ROUNDS (1: runs of each target, interleaved, the
# median reported), PIN=1 (PostgreSQL and pgbench on CPU 0, the
# daemons and HAProxy on CPU 1: the proxies' own cost without their competing for pgbench's and
# the backends' core; needs 2 CPUs). Needs root (the demo runs PostgreSQL as
# `postgres`), PostgreSQL 15, pgbench and haproxy (apt-get install postgresql haproxy).
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=bench
if [[ "${1:-}" == handover ]]; then
    MODE=handover
    shift
fi
SECONDS_PER_RUN=${1:-20}
SCALE=${SCALE:-10}
CLIENTS=${CLIENTS:-16}
THREADS=${THREADS:-2}
HAPROXY=${HAPROXY:-haproxy}
ROUNDS=${ROUNDS:-1}
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
# The demo's members run PostgreSQL as `postgres`, which must reach their directories under it.
chmod 0711 "$work"
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

# Two members (a primary and a standby, each with its daemon and its proxy); three to fail over.
members_n=$([[ $MODE == handover ]] && echo 3 || echo 2)
"$BIN" demo --members "$members_n" --dir "$work/demo" --run-for 2h >"$work/demo.log" 2>&1 &
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
PIN=${PIN:-0}
run_pgbench=("$PGBENCH")
if [[ $PIN == 1 ]]; then
    # Every thread of every daemon and of HAProxy on CPU 1; each postmaster (its backends inherit
    # it) and pgbench on CPU 0.
    for pid in $(pgrep -f "run --config $work/demo/") "$haproxy_pid"; do taskset -a -p -c 1 "$pid" >/dev/null; done
    for pidfile in "$work"/demo/*/pgdata/postmaster.pid; do taskset -a -p -c 0 "$(head -1 "$pidfile")" >/dev/null; done
    run_pgbench=(taskset -c 0 "$PGBENCH")
fi
for _ in $(seq 1 100); do
    "$PSQL" -X -At -p "$ha_port" -c "SELECT 1" >/dev/null 2>&1 && break
    sleep 0.2
done
"$PSQL" -X -At -p "$ha_port" -c "SELECT 1" >/dev/null || { cat "$work/haproxy.log" >&2; exit 1; }

# The member whose /primary answers 200 now ("" if none).
current_primary() {
    local line api
    for line in "${members[@]}"; do
        api=$(sed -E 's/.*api (http:[^ ]*).*/\1/' <<<"$line")
        if [[ "$(curl -s -m 1 -o /dev/null -w '%{http_code}' "$api/primary")" == 200 ]]; then
            awk '{print $1}' <<<"$line"
            return
        fi
    done
}

# Wait (at most 60 s) until a member other than $1 is the writable primary.
wait_new_primary() {
    local p
    for _ in $(seq 1 600); do
        p=$(current_primary)
        [[ -n "$p" && "$p" != "$1" ]] && return 0
        sleep 0.1
    done
    echo "no new primary 60 s after the event" >&2
    return 1
}

# One writer: a new connection per row; "start_ms end_ms ok id" or "start_ms end_ms err message".
writer() {
    local via=$1 conninfo=$2 out=$3 t0 id
    while [[ -e "$work/writing" ]]; do
        t0=$(date +%s%3N)
        if id=$("$PSQL" -X -At "$conninfo connect_timeout=3" -c "INSERT INTO handover(via) VALUES ('$via') RETURNING id" 2>"$out.err"); then
            echo "$t0 $(date +%s%3N) ok $id" >>"$out"
        else
            echo "$t0 $(date +%s%3N) err $(head -c 160 "$out.err" | tr '\n' ' ')" >>"$out"
        fi
        sleep 0.05
    done
}

# Errors from $2 ms to $3 ms in writer log $1, and the largest gap between acknowledged writes
# (by acknowledgement time) that ends in that window.
window() {
    awk -v a="$2" -v b="$3" '{
        inside = $2 >= a && $2 < b
        if ($3 == "ok") { if (last && inside && $2 - last > gap) gap = $2 - last; last = $2 } else if (inside) errs++
    } END { printf "%d errors, largest gap %.2f s", errs, gap / 1000 }' "$1"
}

if [[ $MODE == handover ]]; then
    "$PSQL" -X -q -p "$primary_pg" -c "CREATE TABLE handover (id bigserial PRIMARY KEY, via text NOT NULL)"
    touch "$work/writing"
    writer proxy "host=127.0.0.1,127.0.0.1,127.0.0.1 port=$rw_ports" "$work/proxy.log" &
    w1=$!
    writer haproxy "host=127.0.0.1 port=$ha_port" "$work/haproxy.log" &
    w2=$!
    sleep 5
    first=$(current_primary)
    t_switch=$(date +%s%3N)
    "$BIN" switchover --config "$work/demo/$first/pgvigil.toml" --force >"$work/switchover.out" 2>&1 \
        || { cat "$work/switchover.out" >&2; exit 1; }
    wait_new_primary "$first"
    # HAProxy (inter 3s, rise 2) needs up to ~9 s to send writes to the new primary.
    sleep 15
    second=$(current_primary)
    t_fail=$(date +%s%3N)
    kill -KILL "$(pgrep -f "run --config $work/demo/$second/pgvigil.toml" | head -1)" \
        "$(head -1 "$work/demo/$second/pgdata/postmaster.pid")"
    wait_new_primary "$second"
    sleep 20
    rm -f "$work/writing"
    wait "$w1" "$w2"
    t_end=$(date +%s%3N)
    final=$(current_primary)
    final_pg=""
    for line in "${members[@]}"; do
        [[ "$(awk '{print $1}' <<<"$line")" == "$final" ]] && final_pg=$(sed -E 's/.*port=([0-9]+) user.*/\1/' <<<"$line")
    done
    echo "switchover $first -> $second, then kill -9 of $second -> $final ($(nproc) cores, $($BIN --version 2>/dev/null || echo "$BIN"), $("$HAPROXY" -v | head -1 | awk '{print $1, $3}'))"
    echo "| writer | switchover | failover | acknowledged rows missing on $final |"
    echo "|---|---|---|---|"
    for via in proxy haproxy; do
        acked=$(awk '$3 == "ok" {print $4}' "$work/$via.log" | sort)
        present=$("$PSQL" -X -At -p "$final_pg" -c "SELECT id FROM handover WHERE via = '$via' ORDER BY id" | sort)
        missing=$(comm -23 <(echo "$acked") <(echo "$present") | grep -c . || true)
        echo "| $via | $(window "$work/$via.log" "$t_switch" "$t_fail") | $(window "$work/$via.log" "$t_fail" "$t_end") | $missing of $(echo "$acked" | grep -c .) |"
    done
    for via in proxy haproxy; do
        echo "$via errors:"
        awk '$3 == "err" {$1 = $2 = $3 = ""; print}' "$work/$via.log" | sed -E 's/[0-9]{3,}/N/g' | sort | uniq -c | sort -rn | head -5
    done
    exit 0
fi

"$PGBENCH" -i -q -s "$SCALE" -p "$primary_pg" >/dev/null 2>&1

# p99 of the third column of pgbench's per-transaction logs, in ms.
p99() {
    cat "$@" | awk '{print $3}' | sort -n | awk '{a[NR]=$1} END {if (NR==0) {print "-"; exit} i=int(NR*0.99); if (i<1) i=1; printf "%.2f", a[i]/1000}'
}

# CPU time (user + system, in clock ticks) of process $1 and its threads so far.
cpu_ticks() {
    awk '{print $14 + $15}' "/proc/$1/stat"
}
# The median of the numbers on standard input.
median() {
    sort -n | awk '{a[NR]=$1} END {if (NR==0) {print "-"; exit} print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'
}
primary_name=$(for line in "${members[@]}"; do
    if [[ "$(sed -E 's/.*port=([0-9]+) user.*/\1/' <<<"$line")" == "$primary_pg" ]]; then awk '{print $1}' <<<"$line"; fi
done)
daemon_pid=$(pgrep -f "run --config $work/demo/$primary_name/pgvigil.toml" | head -1)
clk_tck=$(getconf CLK_TCK)

echo "pgbench -c $CLIENTS -j $THREADS -T $SECONDS_PER_RUN, scale $SCALE, $(nproc) cores, PIN=$PIN, ROUNDS=$ROUNDS; $("$BIN" --version 2>/dev/null || echo "$BIN"), $("$HAPROXY" -v | head -1 | awk '{print $1, $3}')"
echo "TPS: the median of $ROUNDS rounds (each round runs direct, proxy, haproxy one after another); p99 over every round's transactions;"
echo "CPU/tx: the routing process's CPU time (user + system, whole process: pgvigil's daemon or HAProxy) over its transactions, median of the rounds."
echo "| workload | connections | target | TPS | p99 latency (ms) | vs direct | CPU/tx (us) |"
echo "|---|---|---|---|---|---|---|"
for workload in select-only simple-update; do
    flag=$([[ $workload == select-only ]] && echo -S || echo -N)
    for conn in persistent new; do
        cflag=$([[ $conn == new ]] && echo -C || echo "")
        for target in direct proxy haproxy; do
            rm -rf "$work/log-$target" "$work/tps-$target" "$work/cpu-$target"
            mkdir -p "$work/log-$target"
        done
        for round in $(seq 1 "$ROUNDS"); do
            for target in direct proxy haproxy; do
                case $target in
                    direct) port=$primary_pg pid="" ;;
                    proxy) port=$primary_proxy pid=$daemon_pid ;;
                    haproxy) port=$ha_port pid=$haproxy_pid ;;
                esac
                [[ -n "$pid" ]] && c0=$(cpu_ticks "$pid")
                # shellcheck disable=SC2086
                out=$("${run_pgbench[@]}" -n $flag $cflag -c "$CLIENTS" -j "$THREADS" -T "$SECONDS_PER_RUN" -p "$port" \
                    -l --log-prefix="$work/log-$target/r$round" 2>&1) || { echo "$out" >&2; exit 1; }
                tps=$(grep -m1 -E '^tps = ' <<<"$out" | awk '{print $3}')
                echo "$tps" >>"$work/tps-$target"
                if [[ -n "$pid" ]]; then
                    c1=$(cpu_ticks "$pid")
                    tx=$(grep -m1 -E 'number of transactions actually processed' <<<"$out" | awk '{print $NF}')
                    awk -v c=$((c1 - c0)) -v t="$tx" -v hz="$clk_tck" 'BEGIN {printf "%.1f\n", 1e6 * c / hz / t}' >>"$work/cpu-$target"
                fi
            done
        done
        direct_tps=$(median <"$work/tps-direct")
        for target in direct proxy haproxy; do
            tps=$(median <"$work/tps-$target")
            ratio=$(awk -v a="$tps" -v b="$direct_tps" 'BEGIN {printf "%.0f %%", 100*a/b}')
            cpu=$([[ $target == direct ]] && echo "-" || median <"$work/cpu-$target")
            echo "| $workload | $conn | $target | $(printf '%.0f' "$tps") | $(p99 "$work/log-$target"/r*) | $ratio | $cpu |"
        done
    done
done
