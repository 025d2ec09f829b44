#!/usr/bin/env bash
# Replicated DHCP benchmark: three gateways, each running `hastack cluster` (holding the VIP) and
# `hastack dhcp-dns` with `follow_vip` (only the VIP holder answers), perfdhcp relayed from a client
# namespace to the VIP, for replication = none, sync and async; then dnsmasq, single server (it has
# no replication), on the same link and load. Reports DORA/s, DORA per CPU-second summed over every
# gateway process (all cluster and dhcp-dns daemons: replication work is split between them and
# the peers persist every lease too; dnsmasq: its one process), the REQUEST→ACK latency perfdhcp
# measures (avg / max), and the active leases in each gateway's log afterwards (replicated: equal).
# The issue's Kea-HA model (its HA hook sends each lease to the partner before the ACK) runs at
# about half the throughput of no replication: the "vs Kea-HA model" column is sync / (none / 2).
#
# Topology (namespaces created here, removed on exit; addresses in 198.18.0.0/15 only):
#   switch ns: bridge br0 — gw1 198.18.0.11/16, gw2 .12, gw3 .13 (VIP 198.18.0.100), perf .200
# perfdhcp is a relay agent (giaddr 198.18.0.200; pool 198.18.1.0-198.18.255.254). Every gateway
# process is pinned to core 0, perfdhcp to core 1. Each mode starts afresh with empty lease logs on
# the real disk. Two loads per start: steady (-r RATE) and flood (-r FLOOD -R FLOOD_CLIENTS), new
# clients each.
#
# --profile DIR records a CPU profile (perf record -g) of every server process during each load
# into DIR/<mode>-<steady|flood>-<run>.data (read with `perf report -i`).
# --modes "sync dnsmasq" runs only those servers (default: none sync async dnsmasq). With
# HASTACK_BEFORE=<binary>, a mode written "sync@before" runs that binary instead: an earlier
# build measured side by side with the current one, interleaved in every run.
# --strace DIR counts the system calls of every server process (strace -c -f, one per process)
# during each steady load into DIR/<mode>-steady-<run>.<process>.txt (slows the servers: use it
# for calls per lease, not for the CPU figures).
# --counts also counts, per process and per ACKed lease, the system calls and context switches
# during each steady load (perf stat on raw_syscalls:sys_enter and context-switches: cheap
# enough to leave the figures as they are).
# --idle also measures the gateways' CPU while idle for SECS before the loads (fixed cost:
# heartbeats, timers). Per run, stderr shows the CPU seconds of each process (holder first).
#
# Bounded: RUNS × 4 servers × (start-up ≤ 30 s + 2 × SECS). Root needed. Cleans up by PID and
# namespace. Usage: scripts/bench-dhcp-ha.sh [--runs N] [--secs S] [--rate R] [--flood R]
#   [--profile DIR] [--modes "M ..."] [--idle]
set -euo pipefail

RUNS=3
SECS=5
RATE=1000
FLOOD=10000
FLOOD_CLIENTS=30000
PROFILE=
MODES="none sync async dnsmasq"
IDLE=
COUNTS=
STRACE=
STRACE_PIDS=()
HASTACK=${HASTACK:-target/release/hastack}
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) RUNS=$2; shift 2 ;;
        --secs) SECS=$2; shift 2 ;;
        --rate) RATE=$2; shift 2 ;;
        --flood) FLOOD=$2; FLOOD_CLIENTS=$((FLOOD * 3)); shift 2 ;;
        --profile) PROFILE=$(mkdir -p "$2" && readlink -f "$2"); shift 2 ;;
        --modes) MODES=$2; shift 2 ;;
        --idle) IDLE=1; shift ;;
        --counts) COUNTS=1; shift ;;
        --strace) STRACE=$(mkdir -p "$2" && readlink -f "$2"); shift 2 ;;
        -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "bench-dhcp-ha: needs root (network namespaces)" >&2; exit 1; }
for t in perfdhcp dnsmasq taskset ip ss "$HASTACK"; do
    command -v "$t" >/dev/null || { echo "bench-dhcp-ha: $t not found (apt install kea-admin dnsmasq; cargo build --release -p hastack)" >&2; exit 1; }
done
HASTACK=$(readlink -f "$HASTACK")
HASTACK_NOW=$HASTACK
if [ -n "${HASTACK_BEFORE:-}" ]; then HASTACK_BEFORE=$(readlink -f "$HASTACK_BEFORE"); fi
[ $((RATE * SECS + FLOOD_CLIENTS)) -lt 65000 ] || { echo "bench-dhcp-ha: more clients than the pool holds" >&2; exit 2; }

P=bh$$
NS_SW=$P-sw NS_PERF=$P-perf
VIP=198.18.0.100
# Lease logs on the real disk (not tmpfs): fsync must cost what it costs.
W=$(mktemp -d /var/tmp/bench-dhcp-ha.XXXXXX)
PIDS=()
PERF_PID=
stop_all() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    PIDS=()
}
cleanup() {
    [ -n "$PERF_PID" ] && kill "$PERF_PID" 2>/dev/null || true
    for p in "${STRACE_PIDS[@]}"; do kill -INT "$p" 2>/dev/null || true; done
    stop_all
    # Safety net: anything this run started that is still alive names our unique work dir.
    local p
    for p in $(pgrep -f "$W" || true); do kill "$p" 2>/dev/null || true; done
    for i in 1 2 3; do ip netns del $P-gw$i 2>/dev/null || true; done
    ip netns del $NS_PERF 2>/dev/null || true
    ip netns del $NS_SW 2>/dev/null || true
    rm -rf "$W"
}
trap cleanup EXIT INT TERM

ip netns add $NS_SW
ip -n $NS_SW link add br0 type bridge stp_state 0 forward_delay 0
ip -n $NS_SW link set br0 up
host() { # name ns addr
    ip netns add "$2"
    ip link add eth0 netns "$2" type veth peer name "$1" netns $NS_SW
    ip -n $NS_SW link set "$1" master br0 up
    ip -n "$2" addr add "$3/16" dev eth0
    ip -n "$2" link set lo up
    ip -n "$2" link set eth0 up
}
for i in 1 2 3; do host gw$i $P-gw$i 198.18.0.1$i; done
host perf $NS_PERF 198.18.0.200
"$HASTACK" keygen "$W/authkey" >/dev/null

config() { # gateway-index replication
    local i=$1 rep=$2 n
    {
        printf '[logging]\nlevel = "info"\n\n[cluster]\nname = "bench-dhcp-ha"\nauthkey = "%s"\n\n' "$W/authkey"
        for n in 1 2 3; do printf '[[cluster.node]]\nid = %d\nname = "gw%d"\nlinks = ["198.18.0.1%d/16"]\n\n' $n $n $n; done
        printf '[resource_defaults]\nstickiness = 100\n\n[[resource]]\nname = "vip"\n[resource.vip]\naddress = "%s/16"\ninterface = "eth0"\nlease = "2s"\n\n' $VIP
        printf '[dhcp]\ninterfaces = ["eth0"]\nlease_file = "%s/gw%d/leases.log"\nreplication = "%s"\n' "$W" "$i" "$rep"
        printf 'replication_socket = "%s/gw%d.sock"\nfollow_vip = "%s"\n\n' "$W" "$i" $VIP
        printf '[[dhcp.subnet]]\nsubnet = "198.18.0.0/16"\npool = ["198.18.1.0-198.18.255.254"]\nserver_id = "%s"\nlease_time = "1h"\n' $VIP
    } > "$W/gw$i.toml"
}

wait_for() { # seconds description command...
    local secs=$1 what=$2 t
    shift 2
    for t in $(seq 1 $((secs * 10))); do
        "$@" && return 0
        sleep 0.1
    done
    echo "bench-dhcp-ha: timed out waiting for $what" >&2
    for f in "$W"/*.log; do echo "--- $f" >&2; tail -20 "$f" >&2; done
    exit 1
}
holder() { local i; for i in 1 2 3; do ip -n $P-gw$i -4 addr show dev eth0 | grep -q " $VIP/" && echo $i; done; }
one_holder() { [ "$(holder | wc -l)" = 1 ]; }
synced() { # replication
    local i
    for i in 1 2 3; do
        if [ "$1" != none ]; then grep -q "lease state transfer done" "$W/gw$i.dhcp.log" 2>/dev/null || return 1; fi
        grep -q "dhcp-dns serving" "$W/gw$i.dhcp.log" 2>/dev/null || return 1
    done
    grep -q -e "DHCP answering" -e "follows the VIP.*active=true" "$W/gw$(holder).dhcp.log" 2>/dev/null
}

start_gateways() { # replication
    local i
    for i in 1 2 3; do
        rm -rf "$W/gw$i" "$W/gw$i.sock"
        mkdir -p "$W/gw$i"
        config $i "$1"
    done
    for i in 1 2 3; do
        ip netns exec $P-gw$i taskset -c 0 "$HASTACK" cluster --config "$W/gw$i.toml" --node gw$i \
            --socket "$W/gw$i.sock" --state-dir "$W/gw$i" > "$W/gw$i.cluster.log" 2>&1 &
        PIDS+=($!)
        PNAME[$!]=gw$i.cluster
    done
    wait_for 20 "a VIP holder" one_holder
    for i in 1 2 3; do
        ip netns exec $P-gw$i taskset -c 0 "$HASTACK" dhcp-dns --config "$W/gw$i.toml" > "$W/gw$i.dhcp.log" 2>&1 &
        PIDS+=($!)
        PNAME[$!]=gw$i.dhcp
    done
    wait_for 20 "every dhcp-dns in the lease group, the holder answering" synced "$1"
    TARGET=$VIP
}

start_dnsmasq() {
    rm -f "$W/dm.leases"
    touch "$W/dm.leases"
    ip netns exec $P-gw1 taskset -c 0 dnsmasq -k -C /dev/null --pid-file= --user=root --port=0 \
        --interface=eth0 --dhcp-leasefile="$W/dm.leases" --dhcp-authoritative --no-ping \
        --dhcp-range=198.18.1.0,198.18.255.254,255.255.0.0,1h --dhcp-lease-max=100000 \
        --log-facility=/dev/null > "$W/dm.log" 2>&1 &
    PIDS+=($!)
    PNAME[$!]=dnsmasq
    port67() { ip netns exec $P-gw1 ss -lun 2>/dev/null | grep -q ':67 '; }
    wait_for 5 "dnsmasq on port 67" port67
    TARGET=198.18.0.11
}

ticks() { # all started pids: utime + stime (children included)
    local p s=0
    for p in "${PIDS[@]}"; do
        [ -r "/proc/$p/stat" ] && s=$((s + $(awk '{ print $14 + $15 + $16 + $17 }' "/proc/$p/stat")))
    done
    echo $s
}
HZ=$(getconf CLK_TCK)

# name=ticks of every started process (gateway daemons: gwN.cluster / gwN.dhcp).
proc_ticks() {
    local p
    for p in "${PIDS[@]}"; do
        [ -r "/proc/$p/stat" ] && printf '%s=%s ' "${PNAME[$p]:-$p}" "$(awk '{ print $14 + $15 + $16 + $17 }' "/proc/$p/stat")"
    done
    echo
}
# CPU seconds per process between two proc_ticks lines.
proc_delta() { # before after
    awk -v hz="$HZ" -v a="$1" -v b="$2" 'BEGIN {
        n = split(a, x, " "); for (i = 1; i <= n; i++) { split(x[i], kv, "="); t0[kv[1]] = kv[2] }
        n = split(b, y, " "); for (i = 1; i <= n; i++) { split(y[i], kv, "="); printf "%s %.2f  ", kv[1], (kv[2] - t0[kv[1]]) / hz }
        print "" }'
}
declare -A PNAME

# perfdhcp for SECS at RATE with CLIENTS new clients from MAC base MACBASE:
# prints "dora_per_s unanswered_pct cpu_s dora_per_cpu_s ack_avg_ms ack_max_ms".
perf_run() { # rate clients macbase [profile-file]
    local t0 t1 p0
    if [ -n "${4:-}" ]; then
        perf record -q -F 499 -g -p "$(IFS=,; echo "${PIDS[*]}")" -o "$4" > /dev/null 2>&1 &
        PERF_PID=$!
    fi
    local counts=() cdir=
    if [ -n "${6:-}" ]; then
        local c
        cdir=$(mktemp -d "$W/counts.XXXXXX")
        for c in "${PIDS[@]}"; do
            perf stat -e raw_syscalls:sys_enter,context-switches -x, -p "$c" -o "$cdir/${PNAME[$c]:-$c}" > /dev/null 2>&1 &
            counts+=($!)
        done
        sleep 0.3
    fi
    if [ -n "${5:-}" ]; then
        local p
        for p in "${PIDS[@]}"; do
            strace -c -f -p "$p" -o "$5.${PNAME[$p]:-$p}.txt" > /dev/null 2>&1 &
            STRACE_PIDS+=($!)
        done
        sleep 0.5
    fi
    t0=$(ticks)
    p0=$(proc_ticks)
    ip netns exec $NS_PERF taskset -c 1 perfdhcp -4 -l 198.18.0.200 -r "$1" -R "$2" -b "mac=$3" -p "$SECS" "$TARGET" \
        > "$W/perf.out" 2>&1 || true
    if [ -n "$PERF_PID" ]; then
        kill -INT "$PERF_PID" 2>/dev/null || true
        wait "$PERF_PID" 2>/dev/null || true
        PERF_PID=
    fi
    # Let the servers finish what is queued (and the peers persist it) before reading CPU time.
    sleep 0.5
    if [ ${#counts[@]} -gt 0 ]; then
        for c in "${counts[@]}"; do kill -INT "$c" 2>/dev/null || true; done
        for c in "${counts[@]}"; do wait "$c" 2>/dev/null || true; done
        local acked
        acked=$(awk '/received packets:/ { r++; if (r == 2) print $3 }' "$W/perf.out")
        echo "#   per ACKed lease ($acked): $(for f in "$cdir"/*; do awk -F, -v n="$(basename "$f")" -v a="${acked:-0}" '$3 ~ /sys_enter/ { s = $1 } $3 ~ /context-switches/ { c = $1 } END { if (a > 0) printf "%s %.1f syscalls %.1f cs  ", n, s / a, c / a }' "$f"; done)" >&2
    fi
    if [ ${#STRACE_PIDS[@]} -gt 0 ]; then
        for p in "${STRACE_PIDS[@]}"; do kill -INT "$p" 2>/dev/null || true; done
        for p in "${STRACE_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
        STRACE_PIDS=()
    fi
    t1=$(ticks)
    echo "#   cpu s by process (VIP on gw$(holder 2>/dev/null | head -1)): $(proc_delta "$p0" "$(proc_ticks)")" >&2
    # perfdhcp prints sent/received and delays for DISCOVER-OFFER, then for REQUEST-ACK.
    awk -v dt=$((t1 - t0)) -v hz="$HZ" -v secs="$SECS" '
        /sent packets:/ { sent[++s] = $3 }
        /received packets:/ { recv[++r] = $3 }
        /avg delay:/ { avg[++a] = $3 }
        /max delay:/ { mx[++m] = $3 }
        END {
            acks = recv[2] + 0; cpu = dt / hz
            lost = (sent[1] > 0) ? 100 * (sent[1] - acks) / sent[1] : 0
            printf "%.0f %.1f %.2f %.0f %s %s\n", acks / secs, lost, cpu, (cpu > 0 ? acks / cpu : 0), (avg[2] == "" ? "-" : avg[2]), (mx[2] == "" ? "-" : mx[2])
        }' "$W/perf.out"
}

active_leases() { # gateway -> active leases in its lease log
    "$HASTACK" leases --json --config "$W/gw$1.toml" 2>/dev/null | grep -c '"Active"' || true
}

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

declare -A STEADY FLOOD_R LEASES
for r in $(seq 1 "$RUNS"); do
    for who in $MODES; do
        case $who in
            *@before) HASTACK=${HASTACK_BEFORE:?HASTACK_BEFORE names the earlier binary} ;;
            *) HASTACK=$HASTACK_NOW ;;
        esac
        if [ $who = dnsmasq ]; then start_dnsmasq; else start_gateways "${who%@before}"; fi
        if [ -n "$IDLE" ]; then
            if [ -n "$PROFILE" ]; then
                perf record -q -F 499 -g -p "$(IFS=,; echo "${PIDS[*]}")" -o "$PROFILE/$who-idle-$r.data" > /dev/null 2>&1 &
                PERF_PID=$!
            fi
            i0=$(ticks); p0=$(proc_ticks); sleep "$SECS"; i1=$(ticks)
            echo "# run $r $who idle ${SECS}s: cpu_s = $(awk -v d=$((i1 - i0)) -v hz="$HZ" 'BEGIN { printf "%.2f", d / hz }'); by process: $(proc_delta "$p0" "$(proc_ticks)")" >&2
            if [ -n "$PERF_PID" ]; then
                kill -INT "$PERF_PID" 2>/dev/null || true
                wait "$PERF_PID" 2>/dev/null || true
                PERF_PID=
            fi
        fi
        STEADY[$who,$r]=$(perf_run "$RATE" $((RATE * SECS)) 02:00:00:00:00:01 "${PROFILE:+$PROFILE/$who-steady-$r.data}" "${STRACE:+$STRACE/$who-steady-$r}" "$COUNTS")
        echo "# run $r $who steady $RATE/s: DORA/s unanswered% cpu_s DORA/cpu_s ack_avg_ms ack_max_ms = ${STEADY[$who,$r]}" >&2
        FLOOD_R[$who,$r]=$(perf_run "$FLOOD" "$FLOOD_CLIENTS" 02:10:00:00:00:01 "${PROFILE:+$PROFILE/$who-flood-$r.data}")
        echo "# run $r $who flood $FLOOD/s: DORA/s unanswered% cpu_s DORA/cpu_s ack_avg_ms ack_max_ms = ${FLOOD_R[$who,$r]}" >&2
        stop_all
        if [ $who != dnsmasq ]; then
            LEASES[$who,$r]="$(active_leases 1)/$(active_leases 2)/$(active_leases 3)"
            HASTACK=$HASTACK_NOW
            echo "# run $r $who: active leases in the logs of gw1/gw2/gw3 = ${LEASES[$who,$r]}" >&2
        fi
    done
done

name() { case $1 in none) echo "hastack, replication none" ;; sync) echo "hastack, replication sync" ;; async) echo "hastack, replication async" ;; dnsmasq) echo "dnsmasq (--no-ping), single server" ;; *@before) echo "$(name "${1%@before}") (HASTACK_BEFORE)" ;; esac; }
col() { # load who field
    local r
    for r in $(seq 1 "$RUNS"); do
        if [ "$1" = steady ]; then echo "${STEADY[$2,$r]:-}"; else echo "${FLOOD_R[$2,$r]:-}"; fi
    done | awk -v f="$3" 'NF && $f != "-" { print $f }' | median
}
echo "Replicated DHCP (three gateways behind a VIP; leases fsync'd on every gateway that holds them):"
echo
echo "| server | steady $RATE/s: DORA/s | DORA per CPU-s | ACK avg / max ms | flood $FLOOD/s: DORA/s | DORA per CPU-s | ACK avg / max ms | unanswered % (flood) |"
echo "|---|---|---|---|---|---|---|---|"
for who in $MODES; do
    echo "| $(name $who) | $(col steady $who 1) | $(col steady $who 4) | $(col steady $who 5) / $(col steady $who 6) | $(col flood $who 1) | $(col flood $who 4) | $(col flood $who 5) / $(col flood $who 6) | $(col flood $who 2) |"
done
echo
for who in none sync async none@before sync@before async@before; do
    case " $MODES " in *" $who "*) ;; *) continue ;; esac
    echo "$(name $who): active leases in gw1/gw2/gw3 logs after each run: $(for r in $(seq 1 "$RUNS"); do printf '%s ' "${LEASES[$who,$r]}"; done)"
done
echo
for b in $MODES; do
    case $b in *@before) ;; *) continue ;; esac
    awk -v b="$b" -v bs="$(col steady "$b" 4)" -v ns="$(col steady "${b%@before}" 4)" -v bf="$(col flood "$b" 4)" -v nf="$(col flood "${b%@before}" 4)" \
        'BEGIN { printf "%s -> current build, DORA per CPU-s: steady %.2f×, flood %.2f×\n", b, (bs > 0 ? ns / bs : 0), (bf > 0 ? nf / bf : 0) }'
done
awk -v sc="$(col steady sync 4)" -v ac="$(col steady async 4)" -v dc="$(col steady dnsmasq 4)" \
    -v sf="$(col flood sync 1)" -v nf="$(col flood none 1)" -v af="$(col flood async 1)" \
    -v scf="$(col flood sync 4)" -v dcf="$(col flood dnsmasq 4)" 'BEGIN {
        printf "sync/dnsmasq DORA per CPU-s: steady %.2f×, flood %.2f×; async/dnsmasq steady %.2f×\n", (dc > 0 ? sc / dc : 0), (dcf > 0 ? scf / dcf : 0), (dc > 0 ? ac / dc : 0)
        printf "flood DORA/s: sync/none %.2f, async/none %.2f; sync vs the Kea-HA model (none/2): %.2f×\n", (nf > 0 ? sf / nf : 0), (nf > 0 ? af / nf : 0), (nf > 0 ? sf / (nf / 2) : 0)
    }'
echo
echo "medians of $RUNS runs × ${SECS}s; perfdhcp relayed to the VIP, steady -r $RATE, flood -r $FLOOD -R $FLOOD_CLIENTS; gateways on core 0, perfdhcp on core 1; $(date -u +%Y-%m-%d)"
