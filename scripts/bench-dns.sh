#!/usr/bin/env bash
# DNS benchmark: dnsperf against `hastack dhcp-dns` and dnsmasq side by side, in one run, on the
# same hosts file (1000 names) and the same upstream (a third server on loopback, authoritative for
# up.test). Each server is pinned to core 0 with taskset, dnsperf to core 1. Cases: local A, local
# PTR, TCP (local A), cached forwards, NXDOMAIN. For every run: queries/s, average and p99 latency
# (p99 from a separate dnsperf -v run, one line per query), lost queries, and queries per server CPU-second
# (utime+stime, children included, from /proc/PID/stat). Prints medians of RUNS runs and the
# ratios to dnsmasq as a Markdown table.
#
# Optional servers in the same run (same pinning, same CPU counting, order rotated per run):
#   --floor             scripts/floor/dns-null.c (built with gcc -O2 into the run's temp dir): the
#                       cheapest UDP responder (recvmmsg/sendmmsg, fixed answer, no lookup) — how
#                       far any user-space server gets on this kernel. UDP cases only.
#   HASTACK_BEFORE=bin  a second hastack binary (e.g. the previous session's) as "before".
#
# Loopback only (127.53.0.1-5). Bounded: RUNS × cases × servers × SECS seconds (default ~3 min).
# Every process it starts is stopped by PID on exit.
#
# Usage: scripts/bench-dns.sh [--runs N] [--secs S] [--cases "a ptr tcp fwd nx"] [--tcp-clients N] [--floor]
#        HASTACK=target/release/hastack (default) picks the binary; UDP_COALESCE="0s" (or another
#        duration) sets hastack's [dns] udp_coalesce (default: the daemon's default).
set -euo pipefail

RUNS=3
SECS=5
CASES="a ptr tcp fwd nx"
TCP_CLIENTS=20
UDP_CLIENTS=4
OUTSTANDING=200
PORT=${PORT:-53053}
HASTACK=${HASTACK:-target/release/hastack}
HASTACK_BEFORE=${HASTACK_BEFORE:-}
FLOOR=0
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) RUNS=$2; shift 2 ;;
        --secs) SECS=$2; shift 2 ;;
        --cases) CASES=$2; shift 2 ;;
        --tcp-clients) TCP_CLIENTS=$2; shift 2 ;;
        --floor) FLOOR=1; shift ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
TOOLS=(dnsperf dnsmasq taskset "$HASTACK")
[ -n "$HASTACK_BEFORE" ] && TOOLS+=("$HASTACK_BEFORE")
[ $FLOOR = 1 ] && TOOLS+=(gcc)
for t in "${TOOLS[@]}"; do
    command -v "$t" >/dev/null || { echo "bench-dns: $t not found (apt install dnsperf dnsmasq; cargo build --release -p hastack)" >&2; exit 1; }
done
[ "$(nproc)" -ge 2 ] || { echo "bench-dns: needs 2 cores (server on one, dnsperf on the other)" >&2; exit 1; }

HS=127.53.0.1   # hastack
DM=127.53.0.2   # dnsmasq under test
UP=127.53.0.3   # upstream (dnsmasq, authoritative for up.test)
FL=127.53.0.4   # floor (dns-null), with --floor
HB=127.53.0.5   # hastack "before", with HASTACK_BEFORE
W=$(mktemp -d /tmp/bench-dns.XXXXXX)
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$W"
}
trap cleanup EXIT INT TERM

# --- data: 1000 local names, 1000 upstream names, query files --------------------------------------
for i in $(seq 0 999); do
    echo "198.18.$((i / 250)).$((i % 250 + 1)) host-$i.bench.test"
done > "$W/hosts"
for i in $(seq 0 999); do
    echo "198.19.$((i / 250)).$((i % 250 + 1)) fwd-$i.up.test"
done > "$W/up-hosts"
for i in $(seq 0 999); do echo "host-$i.bench.test A"; done > "$W/q-a"
for i in $(seq 0 999); do echo "$((i % 250 + 1)).$((i / 250)).18.198.in-addr.arpa PTR"; done > "$W/q-ptr"
cp "$W/q-a" "$W/q-tcp"
for i in $(seq 0 999); do echo "fwd-$i.up.test A"; done > "$W/q-fwd"
for i in $(seq 0 999); do echo "nx-$i.bench.test A"; done > "$W/q-nx"

# --- servers --------------------------------------------------------------------------------------
dnsmasq -k -C /dev/null --pid-file= --user=root --port="$PORT" --listen-address=$UP --bind-interfaces \
    --no-hosts --addn-hosts="$W/up-hosts" --no-resolv --local=/up.test/ --local-ttl=3600 --cache-size=0 \
    --log-facility=/dev/null &
PIDS+=($!)
# dnsmasq under test: same hosts, same TTL, same cache size as hastack's default; its other settings
# are its defaults (dns-forward-max 150, TCP children 20).
taskset -c 0 dnsmasq -k -C /dev/null --pid-file= --user=root --port="$PORT" --listen-address=$DM --bind-interfaces \
    --no-hosts --addn-hosts="$W/hosts" --no-resolv --server=$UP#$PORT --local=/bench.test/ --domain=bench.test \
    --local-ttl=10 --neg-ttl=10 --cache-size=10000 --log-facility=/dev/null &
DM_PID=$!
PIDS+=($DM_PID)
cat > "$W/hastack.toml" <<EOF
[logging]
level = "info"

[dns]
listen = ["$HS:$PORT"]
domain = "bench.test"
local_ttl = "10s"
neg_ttl = "10s"
read_etc_hosts = false
hosts_files = ["$W/hosts"]
reverse_networks = ["198.18.0.0/16"]
servers = ["$UP:$PORT"]
cache_size = 10000
rebind_protection = false
${UDP_COALESCE:+udp_coalesce = \"$UDP_COALESCE\"}
EOF
taskset -c 0 "$HASTACK" dhcp-dns --config "$W/hastack.toml" > "$W/hastack.log" 2>&1 &
HS_PID=$!
PIDS+=($HS_PID)
# Servers under test: key, address, pid, name (dnsmasq is the reference of every ratio).
KEYS=(hs dm)
declare -A ADDR=([hs]=$HS [dm]=$DM) PID=([hs]=$HS_PID [dm]=$DM_PID) NAME=([hs]=hastack [dm]=dnsmasq)
if [ -n "$HASTACK_BEFORE" ]; then
    sed "s/$HS:$PORT/$HB:$PORT/" "$W/hastack.toml" > "$W/before.toml"
    taskset -c 0 "$HASTACK_BEFORE" dhcp-dns --config "$W/before.toml" > "$W/before.log" 2>&1 &
    PID[hb]=$!; PIDS+=($!); ADDR[hb]=$HB; NAME[hb]="hastack before"; KEYS+=(hb)
fi
if [ $FLOOR = 1 ]; then
    gcc -O2 -o "$W/dns-null" "$(dirname "$0")/floor/dns-null.c"
    taskset -c 0 "$W/dns-null" $FL "$PORT" 2> "$W/floor.log" &
    PID[fl]=$!; PIDS+=($!); ADDR[fl]=$FL; NAME[fl]="floor (dns-null)"; KEYS+=(fl)
fi

ready() { # server
    local i
    for i in $(seq 1 50); do
        dig +short +time=1 +tries=1 -p "$PORT" "@$1" host-1.bench.test 2>/dev/null | grep -q 198.18 && return 0
        sleep 0.1
    done
    echo "bench-dns: server $1 did not answer" >&2
    cat "$W/hastack.log" >&2
    exit 1
}
for k in "${KEYS[@]}"; do ready "${ADDR[$k]}"; done
for p in "${PIDS[@]}"; do
    kill -0 "$p" 2>/dev/null || { echo "bench-dns: a server exited at start (port $PORT in use?)" >&2; exit 1; }
done
dig +short -p "$PORT" @$UP fwd-1.up.test | grep -q 198.19 || { echo "bench-dns: upstream not answering" >&2; exit 1; }

# CPU ticks (utime+stime+cutime+cstime) of a process.
ticks() { awk '{ print $14 + $15 + $16 + $17 }' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)

# One dnsperf run: prints "qps avg_ms lost cpu_s q_per_cpu_s".
run_one() { # server pid case
    local srv=$1 pid=$2 c=$3 mode=udp clients=$UDP_CLIENTS
    if [ "$c" = tcp ]; then mode=tcp; clients=$TCP_CLIENTS; fi
    local t0 t1
    t0=$(ticks "$pid")
    taskset -c 1 dnsperf -m $mode -s "$srv" -p "$PORT" -d "$W/q-$c" -c "$clients" -q $OUTSTANDING -l "$SECS" -t 2 \
        > "$W/out" 2> "$W/err" || true
    t1=$(ticks "$pid")
    awk -v dt=$((t1 - t0)) -v hz="$HZ" '
        /Queries per second/ { qps = $4 }
        /Average Latency/ { avg = $4 }
        /Queries lost/ { lost = $3 }
        /Queries completed/ { done = $3 }
        END { cpu = dt / hz; printf "%.0f %.3f %d %.2f %.0f\n", qps, avg * 1000, lost, cpu, (cpu > 0 ? done / cpu : 0) }' "$W/out"
}

# p99 latency from one dnsperf -v run (a line per query; the printing slows dnsperf, so this run
# is kept apart from the throughput runs): prints milliseconds.
p99_run() { # server case
    local mode=udp clients=$UDP_CLIENTS
    if [ "$2" = tcp ]; then mode=tcp; clients=$TCP_CLIENTS; fi
    taskset -c 1 dnsperf -m $mode -s "$1" -p "$PORT" -d "$W/q-$2" -c "$clients" -q $OUTSTANDING -l "$SECS" -t 2 -v 2>/dev/null \
        | awk '/^> /{ print $NF }' | sort -g > "$W/lat" || true
    local n; n=$(wc -l < "$W/lat")
    if [ "$n" -gt 0 ]; then sed -n "$(( (n * 99 + 99) / 100 ))p" "$W/lat" | awk '{ printf "%.3f\n", $1 * 1000 }'; else echo 0; fi
}

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print 0; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# Warm both caches with the forwarded names (one pass each, unmeasured).
for k in "${KEYS[@]}"; do
    s=${ADDR[$k]}
    taskset -c 1 dnsperf -s $s -p "$PORT" -d "$W/q-fwd" -n 1 -q 50 -t 2 > /dev/null 2>&1 || true
done

declare -A R P99
label() { case $1 in a) echo "local A" ;; ptr) echo "local PTR" ;; tcp) echo "TCP local A (${TCP_CLIENTS} conns)" ;; fwd) echo "cached forward" ;; nx) echo "NXDOMAIN" ;; esac; }
# Servers measured in case $1 (the floor answers UDP only).
keys_for() { local k; for k in "${KEYS[@]}"; do [ "$k" = fl ] && [ "$1" = tcp ] && continue; echo "$k"; done; }
for c in $CASES; do
    mapfile -t ks < <(keys_for "$c")
    for r in $(seq 1 "$RUNS"); do
        # Rotate which server goes first so drift hits all alike.
        order=()
        for i in "${!ks[@]}"; do order+=("${ks[$(( (i + r - 1) % ${#ks[@]} ))]}"); done
        for who in "${order[@]}"; do
            res=$(run_one "${ADDR[$who]}" "${PID[$who]}" "$c")
            R[$c,$who,$r]=$res
            echo "# $c run $r $who: qps avg_ms lost cpu_s q/cpu_s = $res" >&2
        done
    done
    line="# $c p99 ms:"
    for who in "${ks[@]}"; do
        P99[$c,$who]=$(p99_run "${ADDR[$who]}" "$c")
        line+=" ${NAME[$who]} ${P99[$c,$who]}"
    done
    echo "$line" >&2
done

# hastack's UDP loop logs its recvmmsg batch-size histogram when it stops (every UDP case of the run).
kill "$HS_PID" 2>/dev/null || true
wait "$HS_PID" 2>/dev/null || true
grep -h "dns udp loop stopped" "$W/hastack.log" | sed 's/^/# hastack /' >&2 || true
if [ $FLOOR = 1 ]; then
    kill "${PID[fl]}" 2>/dev/null || true
    wait "${PID[fl]}" 2>/dev/null || true
    sed 's/^/# /' "$W/floor.log" >&2 || true
fi

# --- table ----------------------------------------------------------------------------------------
col() { # case who field
    local r
    for r in $(seq 1 "$RUNS"); do echo "${R[$1,$2,$r]}" | awk -v f="$3" '{ print $f }'; done | median
}
echo "| case | server | queries/s | avg latency ms | p99 latency ms | lost (sum of runs) | queries per CPU-s |"
echo "|---|---|---|---|---|---|---|"
SUMMARY=()
HDR="| case |"
SEP="|---|"
for who in "${KEYS[@]}"; do
    [ "$who" = dm ] && continue
    HDR+=" queries/s ${NAME[$who]}/dnsmasq | queries per CPU-s ${NAME[$who]}/dnsmasq |"
    SEP+="---|---|"
done
[ $FLOOR = 1 ] && { HDR+=" queries per CPU-s hastack/floor |"; SEP+="---|"; }
for c in $CASES; do
    mapfile -t ks < <(keys_for "$c")
    for who in "${ks[@]}"; do
        lost=0
        for r in $(seq 1 "$RUNS"); do lost=$((lost + $(echo "${R[$c,$who,$r]}" | awk '{ print $3 }'))); done
        printf "| %s | %s | %.0f | %.3f | %.3f | %d | %.0f |\n" "$(label "$c")" "${NAME[$who]}" \
            "$(col "$c" "$who" 1)" "$(col "$c" "$who" 2)" "${P99[$c,$who]}" "$lost" "$(col "$c" "$who" 5)"
    done
    row="| $(label "$c") |"
    dq=$(col "$c" dm 1); dc=$(col "$c" dm 5)
    for who in "${KEYS[@]}"; do
        [ "$who" = dm ] && continue
        if [ "$who" = fl ] && [ "$c" = tcp ]; then row+=" — | — |"; continue; fi
        row+=$(awk -v hq="$(col "$c" "$who" 1)" -v dq="$dq" -v hc="$(col "$c" "$who" 5)" -v dc="$dc" \
            'BEGIN { printf " %.2f× | %.2f× |", (dq > 0 ? hq / dq : 0), (dc > 0 ? hc / dc : 0) }')
    done
    if [ $FLOOR = 1 ]; then
        if [ "$c" = tcp ]; then row+=" — |"; else
            row+=$(awk -v h="$(col "$c" hs 5)" -v f="$(col "$c" fl 5)" 'BEGIN { printf " %.2f× |", (f > 0 ? h / f : 0) }')
        fi
    fi
    SUMMARY+=("$row")
done
echo
echo "$HDR"
echo "$SEP"
printf "%s\n" "${SUMMARY[@]}"
echo
echo "medians of $RUNS runs × ${SECS}s; dnsperf -c $UDP_CLIENTS (UDP) / -c $TCP_CLIENTS (TCP), -q $OUTSTANDING; $(date -u +%Y-%m-%d)"
