#!/usr/bin/env bash
# DHCP benchmark: perfdhcp (Debian kea-admin) against `hastack dhcp-dns` and dnsmasq side by side,
# in one run, on the same pools, with leases on disk (hastack fsyncs every lease before its ACK,
# group-committed; dnsmasq writes its lease file as it always does). Each server is pinned to core
# 0, perfdhcp to core 1. Reports DORA/s, DORA per server CPU-second (utime+stime, children included)
# and first-lease latency of a real client (busybox udhcpc and ISC dhclient in a namespace: from
# process start to bound, each attempt with a fresh MAC so a new address is handed out).
#
# Topology (namespaces created here, removed on exit; addresses in 198.18.0.0/15 only):
#   perf ns  198.18.0.2/16 --veth-- 198.18.0.1/16  srv ns  198.19.0.1/24 --veth-- client ns (no address)
# perfdhcp talks to the server as a relay agent (giaddr 198.18.0.2, pool 198.18.1.0-198.18.255.254);
# real clients broadcast on the other link (pool 198.19.0.10-250).
# Each run starts each server afresh with an empty lease file (every perfdhcp client is new).
# dnsmasq: --no-ping (its best throughput; with its default ping check a new address waits ~3 s,
# measured separately as "dnsmasq (ping)" for first-lease latency only) and --dhcp-lease-max 100000.
#
# Bounded: RUNS × 2 servers × (SECS of perfdhcp + ATTEMPTS client leases). Root needed.
# Usage: scripts/bench-dhcp.sh [--runs N] [--secs S] [--rate R] [--attempts N] [--replicated]
set -euo pipefail

RUNS=3
SECS=5
RATE=20000
STEADY_RATE=1000
ATTEMPTS=5
CLIENTS=60000
HASTACK=${HASTACK:-target/release/hastack}
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) RUNS=$2; shift 2 ;;
        --secs) SECS=$2; shift 2 ;;
        --rate) RATE=$2; shift 2 ;;
        --steady-rate) STEADY_RATE=$2; shift 2 ;;
        --attempts) ATTEMPTS=$2; shift 2 ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "bench-dhcp: needs root (network namespaces)" >&2; exit 1; }
for t in perfdhcp dnsmasq taskset busybox dhclient ip "$HASTACK"; do
    command -v "$t" >/dev/null || { echo "bench-dhcp: $t not found (apt install kea-admin dnsmasq busybox isc-dhcp-client; cargo build --release -p hastack)" >&2; exit 1; }
done
HASTACK=$(readlink -f "$HASTACK")

P=bd$$
NS_SRV=$P-srv NS_PERF=$P-perf NS_CL=$P-cl
# Lease files on the real disk (not tmpfs): fsync must cost what it costs.
W=$(mktemp -d /var/tmp/bench-dhcp.XXXXXX)
SRV_PID=
cleanup() {
    stop_server
    # Safety net: any client this run started still alive names our unique work dir.
    local p
    for p in $(pgrep -f "$W" || true); do kill "$p" 2>/dev/null || true; done
    ip netns del $NS_SRV 2>/dev/null || true
    ip netns del $NS_PERF 2>/dev/null || true
    ip netns del $NS_CL 2>/dev/null || true
    rm -rf "$W"
}
stop_server() {
    if [ -n "$SRV_PID" ]; then
        kill "$SRV_PID" 2>/dev/null || true
        wait "$SRV_PID" 2>/dev/null || true
        SRV_PID=
    fi
}
trap cleanup EXIT INT TERM

ip netns add $NS_SRV
ip netns add $NS_PERF
ip netns add $NS_CL
ip link add sp netns $NS_SRV type veth peer name ps netns $NS_PERF
ip link add sc netns $NS_SRV type veth peer name cs netns $NS_CL
ip -n $NS_SRV addr add 198.18.0.1/16 dev sp
ip -n $NS_SRV addr add 198.19.0.1/24 dev sc
ip -n $NS_PERF addr add 198.18.0.2/16 dev ps
for ns in $NS_SRV $NS_PERF $NS_CL; do ip -n $ns link set lo up; done
ip -n $NS_SRV link set sp up
ip -n $NS_SRV link set sc up
ip -n $NS_PERF link set ps up
ip -n $NS_CL link set cs up

cat > "$W/hastack.toml" <<EOF
[logging]
level = "warn"

[dhcp]
interfaces = ["sp", "sc"]
lease_file = "$W/hs.leases"

[[dhcp.subnet]]
subnet = "198.18.0.0/16"
pool = ["198.18.1.0-198.18.255.254"]
lease_time = "1h"

[[dhcp.subnet]]
subnet = "198.19.0.0/24"
pool = ["198.19.0.10-198.19.0.250"]
lease_time = "1h"
routers = ["198.19.0.1"]
EOF

start_server() { # hs | dm | dmping
    rm -f "$W"/hs.leases* "$W"/dm.leases
    touch "$W/dm.leases"
    case $1 in
        hs) ip netns exec $NS_SRV taskset -c 0 "$HASTACK" dhcp-dns --config "$W/hastack.toml" > "$W/server.log" 2>&1 & ;;
        dm|dmping)
            local ping=--no-ping
            [ "$1" = dmping ] && ping=
            ip netns exec $NS_SRV taskset -c 0 dnsmasq -k -C /dev/null --pid-file= --user=root --port=0 \
                --interface=sp --interface=sc --dhcp-leasefile="$W/dm.leases" --dhcp-authoritative $ping \
                --dhcp-range=198.18.1.0,198.18.255.254,255.255.0.0,1h \
                --dhcp-range=198.19.0.10,198.19.0.250,255.255.255.0,1h --dhcp-lease-max=100000 \
                --log-facility=/dev/null > "$W/server.log" 2>&1 & ;;
    esac
    SRV_PID=$!
    # Ready when port 67 is bound in the server namespace.
    local i
    for i in $(seq 1 50); do
        ip netns exec $NS_SRV ss -lun 2>/dev/null | grep -q ':67 ' && return 0
        sleep 0.1
    done
    echo "bench-dhcp: $1 did not bind port 67" >&2
    cat "$W/server.log" >&2
    exit 1
}

ticks() { awk '{ print $14 + $15 + $16 + $17 }' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)

# perfdhcp for SECS at RATE with CLIENTS new clients from MAC base MACBASE:
# prints "dora_per_s discovers_sent unanswered_pct cpu_s dora_per_cpu_s".
perf_run() { # rate clients macbase
    local t0 t1
    t0=$(ticks "$SRV_PID")
    ip netns exec $NS_PERF taskset -c 1 perfdhcp -4 -l 198.18.0.2 -r "$1" -R "$2" -b "mac=$3" -p "$SECS" 198.18.0.1 \
        > "$W/perf.out" 2>&1 || true
    # Let the server finish what is queued before reading its CPU time.
    sleep 0.5
    t1=$(ticks "$SRV_PID")
    # perfdhcp prints sent/received for DISCOVER-OFFER, then for REQUEST-ACK.
    awk -v dt=$((t1 - t0)) -v hz="$HZ" -v secs="$SECS" '
        /sent packets:/ { sent[++s] = $3 }
        /received packets:/ { recv[++r] = $3 }
        END {
            acks = recv[2] + 0; cpu = dt / hz
            lost = (sent[1] > 0) ? 100 * (sent[1] - acks) / sent[1] : 0
            printf "%.0f %d %.1f %.2f %.0f\n", acks / secs, sent[1], lost, cpu, (cpu > 0 ? acks / cpu : 0)
        }' "$W/perf.out"
}

N_MAC=0
new_mac() {
    N_MAC=$((N_MAC + 1))
    printf "02:42:%02x:%02x:%02x:%02x" $((RANDOM % 256)) $((N_MAC / 65536 % 256)) $((N_MAC / 256 % 256)) $((N_MAC % 256))
}
now_ns() { date +%s%N; }

# One real-client lease: prints "total_ms wire_ms" (process start to bound; first DISCOVER sent
# to ACK received, from strace timestamps of udhcpc; "-" for dhclient), or "fail".
first_lease() { # udhcpc | dhclient
    ip -n $NS_CL link set cs down
    ip -n $NS_CL link set cs address "$(new_mac)"
    ip -n $NS_CL link set cs up
    local t0 t1 ok=0
    t0=$(now_ns)
    case $1 in
        udhcpc)
            ip netns exec $NS_CL strace -f -ttt -T -e trace=sendto,poll -o "$W/strace" \
                busybox udhcpc -i cs -f -q -n -s /bin/true -t 3 -T 1 -A 1 > /dev/null 2>&1 && ok=1 ;;
        dhclient)
            # -1: one attempt, exit when bound (it backgrounds after binding; the pid file stops it).
            rm -f "$W/dhcl.leases"
            ip netns exec $NS_CL timeout 10 dhclient -1 -sf /bin/true -lf "$W/dhcl.leases" -pf "$W/dhcl.pid" cs \
                > /dev/null 2>&1 && ok=1
            # The daemonised child writes its pid file just after the parent exits: wait for it.
            local i
            for i in $(seq 1 40); do [ -s "$W/dhcl.pid" ] && break; sleep 0.05; done
            [ -s "$W/dhcl.pid" ] && kill "$(cat "$W/dhcl.pid")" 2>/dev/null || true
            rm -f "$W/dhcl.pid" ;;
    esac
    t1=$(now_ns)
    if [ $ok != 1 ]; then echo fail; return; fi
    local wire=-
    if [ "$1" = udhcpc ]; then
        # Entry time of the first sendto (DISCOVER); entry + duration of the last poll that
        # returned a packet (ACK).
        wire=$(awk '
            / sendto\(/ && first == "" { first = $2 }
            / poll\(/ && / = 1 / { d = $NF; gsub(/[<>]/, "", d); last = $2 + d }
            END { if (first != "" && last != "") printf "%.1f", (last - first) * 1000; else print "-" }' "$W/strace")
    fi
    awk -v d=$((t1 - t0)) -v w="$wire" 'BEGIN { printf "%.1f/%s\n", d / 1e6, w }'
}

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

declare -A PERF STEADY LAT
SERVERS="hs dm dmping"
for r in $(seq 1 "$RUNS"); do
    if [ $((r % 2)) = 1 ]; then order="hs dm dmping"; else order="dm hs dmping"; fi
    for who in $order; do
        start_server $who
        if [ $who != dmping ]; then
            STEADY[$who,$r]=$(perf_run "$STEADY_RATE" $((STEADY_RATE * SECS)) 02:00:00:00:00:01)
            echo "# run $r $who steady $STEADY_RATE/s: DORA/s discovers unanswered% cpu_s DORA/cpu_s = ${STEADY[$who,$r]}" >&2
            PERF[$who,$r]=$(perf_run "$RATE" "$CLIENTS" 02:10:00:00:00:01)
            echo "# run $r $who flood $RATE/s: DORA/s discovers unanswered% cpu_s DORA/cpu_s = ${PERF[$who,$r]}" >&2
        fi
        for c in udhcpc dhclient; do
            for a in $(seq 1 "$ATTEMPTS"); do
                LAT[$who,$c]+="$(first_lease $c) "
            done
        done
        echo "# run $r $who: first lease ms udhcpc: ${LAT[$who,udhcpc]} dhclient: ${LAT[$who,dhclient]}" >&2
        stop_server
    done
done

name() { case $1 in hs) echo hastack ;; dm) echo "dnsmasq (--no-ping)" ;; dmping) echo "dnsmasq (defaults: ping check)" ;; esac; }
pcol() { # array who field
    local r
    for r in $(seq 1 "$RUNS"); do
        if [ "$1" = steady ]; then echo "${STEADY[$2,$r]}"; else echo "${PERF[$2,$r]}"; fi
    done | awk -v f="$3" '{ print $f }' | median
}
lat() { # who client field(1 total, 2 wire) -> "median / max" over all attempts
    local v
    v=$(echo "${LAT[$1,$2]}" | tr ' ' '\n' | grep -v -e '^$' -e fail | cut -d/ -f"$3" | grep -v -e '^-$' | sort -g)
    if [ -z "$v" ]; then echo "-"; return; fi
    echo "$(echo "$v" | median) / $(echo "$v" | tail -1)"
}
fails() { echo "${LAT[$1,$2]}" | tr ' ' '\n' | grep -c fail || true; }
echo "Throughput (leases on disk; hastack fsyncs each before its ACK):"
echo
echo "| server | steady $STEADY_RATE/s: DORA/s | DORA per CPU-s | unanswered % | flood $RATE/s: DORA/s | DORA per CPU-s | unanswered % |"
echo "|---|---|---|---|---|---|---|"
for who in hs dm; do
    echo "| $(name $who) | $(pcol steady $who 1) | $(pcol steady $who 5) | $(pcol steady $who 3) | $(pcol flood $who 1) | $(pcol flood $who 5) | $(pcol flood $who 3) |"
done
echo
awk -v a="$(pcol steady hs 5)" -v b="$(pcol steady dm 5)" -v c="$(pcol flood hs 1)" -v d="$(pcol flood dm 1)" -v e="$(pcol flood hs 5)" -v f="$(pcol flood dm 5)" \
    'BEGIN { printf "hastack/dnsmasq: DORA per CPU-s steady %.2f×, flood %.2f×; DORA/s under flood %.2f×\n", (b > 0 ? a / b : 0), (f > 0 ? e / f : 0), (d > 0 ? c / d : 0) }'
echo
echo "First lease of a new address, real clients (ms, median / max over $((RUNS * ATTEMPTS)) attempts each):"
echo
echo "| server | udhcpc DISCOVER→ACK | udhcpc process start→bound | dhclient process start→bound | client failures |"
echo "|---|---|---|---|---|"
for who in $SERVERS; do
    echo "| $(name $who) | $(lat $who udhcpc 2) | $(lat $who udhcpc 1) | $(lat $who dhclient 1) | $(( $(fails $who udhcpc) + $(fails $who dhclient) )) |"
done
echo
echo "medians of $RUNS runs × ${SECS}s; perfdhcp relayed, steady -r $STEADY_RATE, flood -r $RATE -R $CLIENTS; replication: off; $(date -u +%Y-%m-%d)"
