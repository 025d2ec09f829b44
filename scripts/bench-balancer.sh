#!/bin/bash
# Balancer benchmark: HAProxy 2.6 (tcp, tcp+splice, http), nginx stream, hastack (tcp, and http
# when the build supports it) and direct, in ONE run against the same two nginx backends on
# loopback. wrk -t1 -c50 for a small and a 1 MiB response, RUNS runs each (medians): requests/s,
# p50/p99, CPU per request of the balancer (utime+stime from /proc, all its processes), then the
# RSS each balancer adds per idle connection with IDLE idle connections.
#
# Usage: scripts/bench-balancer.sh [--runs N] [--secs S] [--idle N] [--out FILE] [--bin PATH]
#            [--before PATH] [--targets "t1 t2 ..."] [--sizes "small 1m"] [--threads N]
# --before adds "hastack-before" and "hastack-before-http": another hastack binary (e.g. the
# previous commit's) in tcp and http mode, for before/after figures in the same run. --targets keeps only the named targets (direct,
# haproxy-tcp, haproxy-splice, haproxy-http, nginx-stream, hastack-tcp, hastack-copy,
# hastack-http, hastack-before, hastack-before-http, floor-relay, floor-relay-1t, haproxy-tcp-1t,
# hastack-tcp-1t; the -1t ones run one thread: nbthread 1, threads = 1, and only when named
# here). --threads sets
# hastack's [balancer] threads (and floor-relay's). floor-relay is scripts/floor/relay.c (the
# cheapest copying relay: epoll, recv/send, half-close, nothing else) built with gcc -O2 here, one
# thread per core (floor-relay-1t: one thread): the floor any copying proxy can reach.
# Besides req/s and the balancer's CPU, every run records per request: the balancer's voluntary
# and involuntary context switches (all threads), the CPU of wrk and of the two nginx backends,
# and the whole machine's busy CPU (/proc/stat) and idle share, so a balancer that makes its
# neighbours pay (more wake-ups, split segments) shows.
# Needs: wrk, haproxy, nginx (+ stream module), python3, gcc (floor targets), GNU time; a release
# hastack binary (built here unless --bin is given). Bounded: every wrk run is S seconds; everything it starts is stopped by
# PID on exit. Traffic stays on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

RUNS=3
SECS=5
IDLE=10000
OUT=""
BIN=""
BEFORE=""
ONLY=""
SIZES="small 1m"
THREADS=""
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) RUNS=$2; shift 2 ;;
        --secs) SECS=$2; shift 2 ;;
        --idle) IDLE=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --bin) BIN=$2; shift 2 ;;
        --before) BEFORE=$2; shift 2 ;;
        --targets) ONLY=$2; shift 2 ;;
        --sizes) SIZES=$2; shift 2 ;;
        --threads) THREADS=$2; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
[ "$RUNS" -ge 1 ] && [ "$RUNS" -le 15 ] || { echo "--runs 1..15" >&2; exit 2; }
[ "$SECS" -ge 1 ] && [ "$SECS" -le 60 ] || { echo "--secs 1..60" >&2; exit 2; }
[ "$IDLE" -ge 0 ] && [ "$IDLE" -le 20000 ] || { echo "--idle 0..20000" >&2; exit 2; }
for t in wrk haproxy nginx python3; do command -v $t >/dev/null || { echo "missing: $t" >&2; exit 2; }; done
if [ -z "$BIN" ]; then
    ensure_cargo
    cargo build --release -q -p hastack
    BIN="${CARGO_TARGET_DIR:-target}/release/hastack"
fi

W=$(mktemp -d /tmp/bench-balancer.XXXXXX)
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    sleep 0.3
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    rm -rf "$W"
}
trap cleanup EXIT

# Descriptors: idle connections need two per connection in a balancer.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
if [ $((IDLE * 2 + 200)) -gt "$NOFILE" ]; then
    IDLE=$(((NOFILE - 200) / 2))
    echo "note: RLIMIT_NOFILE $NOFILE: $IDLE idle connections" >&2
fi

# HAProxy reserves two descriptors per maxconn and two per pipe (maxpipes), and refuses to start
# past the hard limit.
HMAXCONN=$(( (NOFILE - 2400) / 2 ))
if [ "$IDLE" -gt $((HMAXCONN - 100)) ]; then
    IDLE=$((HMAXCONN - 100))
    echo "note: HAProxy's maxconn is $HMAXCONN here: $IDLE idle connections" >&2
fi
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
B1=$(port); B2=$(port)
P_HT=$(port); P_HS=$(port); P_HH=$(port); P_NG=$(port); P_HK=$(port); P_HKH=$(port); P_HKC=$(port); P_HKB=$(port); P_HKBH=$(port); P_FL=$(port); P_FL1=$(port); P_HT1=$(port); P_HK1=$(port)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

# --- backends: two nginx instances, one worker each -------------------------------------------
mkdir -p "$W/www"
head -c 100 /dev/zero | tr '\0' 'x' > "$W/www/small"
head -c 1048576 /dev/urandom > "$W/www/1m"
for b in $B1 $B2; do
    mkdir -p "$W/nginx-$b"
    cat > "$W/nginx-$b/nginx.conf" <<EOF
worker_processes 1;
user root;
worker_rlimit_nofile $NOFILE;
pid $W/nginx-$b/nginx.pid;
error_log $W/nginx-$b/error.log;
events { worker_connections 20000; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    server { listen 127.0.0.1:$b backlog=4096; root $W/www; }
}
EOF
    nginx -c "$W/nginx-$b/nginx.conf" -g 'daemon off;' &
    PIDS+=($!)
done

# --- balancers ------------------------------------------------------------------------------
haproxy_cfg() { # mode extra port [global extra]
    cat <<EOF
global
    maxconn $HMAXCONN
    maxpipes 1000
    ${4:-}
defaults
    mode $1
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    $2
listen bench
    bind 127.0.0.1:$3
    balance roundrobin
    server b1 127.0.0.1:$B1
    server b2 127.0.0.1:$B2
EOF
}
haproxy_cfg tcp "" $P_HT > "$W/haproxy-tcp.cfg"
haproxy_cfg tcp "option splice-auto" $P_HS > "$W/haproxy-splice.cfg"
haproxy_cfg http "option http-keep-alive" $P_HH > "$W/haproxy-http.cfg"
haproxy_cfg tcp "" $P_HT1 "nbthread 1" > "$W/haproxy-tcp-1t.cfg"
cat > "$W/nginx-stream.conf" <<EOF
worker_processes auto;
user root;
worker_rlimit_nofile $NOFILE;
pid $W/nginx-stream.pid;
error_log $W/nginx-stream.err;
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
events { worker_connections 20000; }
stream {
    upstream be { server 127.0.0.1:$B1; server 127.0.0.1:$B2; }
    server { listen 127.0.0.1:$P_NG backlog=4096; proxy_pass be; proxy_timeout 300s; }
}
EOF
[ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || sed -i '/load_module/d' "$W/nginx-stream.conf"
hastack_cfg() { # port mode splice [threads]
    local threads=${4:-$THREADS}
    cat <<EOF
[control]
balancer_socket = "$W/hastack-$1.sock"

[balancer]
maxconn = 20000
splice = ${3:-true}
${threads:+threads = $threads}

[balancer.timeouts]
client = "300s"
server = "300s"

[[balancer.frontend]]
name = "bench"
bind = ["127.0.0.1:$1"]
mode = "$2"
backend = "be"

[[balancer.backend]]
name = "be"
balance = "roundrobin"

[[balancer.backend.server]]
name = "b1"
address = "127.0.0.1:$B1"

[[balancer.backend.server]]
name = "b2"
address = "127.0.0.1:$B2"
EOF
}
hastack_cfg $P_HK tcp > "$W/hastack-tcp.toml"
hastack_cfg $P_HKC tcp false > "$W/hastack-copy.toml"
hastack_cfg $P_HK1 tcp true 1 > "$W/hastack-tcp-1t.toml"
hastack_cfg $P_HKH http > "$W/hastack-http.toml"
hastack_cfg $P_HKB tcp > "$W/hastack-before.toml"
hastack_cfg $P_HKBH http > "$W/hastack-before-http.toml"

# name port command...: starts a balancer in the foreground-style, records its PID.
declare -A PORT PID
start() {
    local name=$1 port=$2; shift 2
    "$@" > "$W/$name.log" 2>&1 &
    PID[$name]=$!
    PIDS+=($!)
    PORT[$name]=$port
}
wanted() { [ -z "$ONLY" ] || [[ " $ONLY " == *" $1 "* ]]; }
# The one-thread variants run only when named in --targets.
named() { [[ " $ONLY " == *" $1 "* ]]; }
TARGETS=""
want_start() { # name port command...
    wanted "$1" || return 0
    start "$@"
    TARGETS="$TARGETS $1"
}
wanted direct && TARGETS="direct"
FLOOR=""
if wanted floor-relay || named floor-relay-1t; then
    if command -v gcc >/dev/null; then
        gcc -O2 -pthread -o "$W/relay" scripts/floor/relay.c
        FLOOR=1
    elif [ -n "$ONLY" ]; then
        echo "missing: gcc (floor-relay)" >&2; exit 2
    else
        echo "note: no gcc: floor-relay skipped" >&2
    fi
fi
want_start haproxy-tcp $P_HT haproxy -db -f "$W/haproxy-tcp.cfg"
named haproxy-tcp-1t && want_start haproxy-tcp-1t $P_HT1 haproxy -db -f "$W/haproxy-tcp-1t.cfg"
want_start haproxy-splice $P_HS haproxy -db -f "$W/haproxy-splice.cfg"
want_start haproxy-http $P_HH haproxy -db -f "$W/haproxy-http.cfg"
want_start nginx-stream $P_NG nginx -c "$W/nginx-stream.conf" -g 'daemon off;'
if [ -n "$BEFORE" ]; then
    want_start hastack-before $P_HKB "$BEFORE" balancer --config "$W/hastack-before.toml"
    want_start hastack-before-http $P_HKBH "$BEFORE" balancer --config "$W/hastack-before-http.toml"
fi
[ -n "$FLOOR" ] && want_start floor-relay $P_FL "$W/relay" -t "${THREADS:-$(nproc)}" 127.0.0.1:$P_FL 127.0.0.1:$B1 127.0.0.1:$B2
[ -n "$FLOOR" ] && named floor-relay-1t && want_start floor-relay-1t $P_FL1 "$W/relay" -t 1 127.0.0.1:$P_FL1 127.0.0.1:$B1 127.0.0.1:$B2
want_start hastack-tcp $P_HK "$BIN" balancer --config "$W/hastack-tcp.toml"
want_start hastack-copy $P_HKC "$BIN" balancer --config "$W/hastack-copy.toml"
named hastack-tcp-1t && want_start hastack-tcp-1t $P_HK1 "$BIN" balancer --config "$W/hastack-tcp-1t.toml"
if "$BIN" config check "$W/hastack-http.toml" >/dev/null 2>&1; then
    want_start hastack-http $P_HKH "$BIN" balancer --config "$W/hastack-http.toml"
fi
TARGETS=$(echo $TARGETS)
PORT[direct]=$B1
sleep 1
for t in $TARGETS; do
    if ! curl -sf -o /dev/null "http://127.0.0.1:${PORT[$t]}/small"; then
        echo "$t does not serve on ${PORT[$t]}; dropped" >&2
        TARGETS=$(echo " $TARGETS " | sed "s/ $t / /")
    fi
done

# All processes of a balancer: the PID and its children (nginx workers).
procs() { local p=$1; echo "$p"; pgrep -P "$p" || true; }
cpu_ticks() { # sum of utime+stime over the processes
    local s=0 p
    for p in $(procs "$1"); do
        [ -r /proc/$p/stat ] || continue
        s=$((s + $(awk '{sub(/.*\) /,""); print $12+$13}' /proc/$p/stat)))
    done
    echo $s
}
rss_kib() {
    local s=0 p
    for p in $(procs "$1"); do
        [ -r /proc/$p/status ] || continue
        s=$((s + $(awk '/^VmRSS:/{print $2}' /proc/$p/status)))
    done
    echo $s
}
to_ms() { # wrk latency (e.g. 812.00us, 1.23ms, 2.01s) to ms
    awk -v v="$1" 'BEGIN{ if (v ~ /us$/) {sub(/us/,"",v); print v/1000} else if (v ~ /ms$/) {sub(/ms/,"",v); print v+0} else {sub(/s/,"",v); print v*1000} }'
}
median() { sort -g | awk '{a[NR]=$1} END{ if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2 }'; }
HZ=$(getconf CLK_TCK)
BACKENDS="${PIDS[0]} ${PIDS[1]}"
ctx_switches() { # "voluntary involuntary", summed over every thread of the processes
    local v=0 i=0 p f
    for p in $(procs "$1"); do
        for f in /proc/$p/task/*/status; do
            [ -r "$f" ] || continue
            read -r a b < <(awk '/^voluntary_ctxt_switches/{v=$2} /^nonvoluntary_ctxt_switches/{i=$2} END{print v+0, i+0}' "$f")
            v=$((v + a)); i=$((i + b))
        done
    done
    echo "$v $i"
}
backend_ticks() { local s=0 b; for b in $BACKENDS; do s=$((s + $(cpu_ticks "$b"))); done; echo $s; }
machine_ticks() { awk '/^cpu /{print $2+$3+$4+$7+$8, $5+$6}' /proc/stat; } # busy idle(+iowait)

RES="$W/results"
: > "$RES"
for size in $SIZES; do
    for run in $(seq 1 "$RUNS"); do
        # Each run starts one target later (rotation): no target always runs right after
        # "direct" or right after a given neighbour, which biased the first balancer's req/s.
        order=$(echo $TARGETS | awk -v r="$run" '{ for (i = 0; i < NF; i++) printf "%s ", $(((i + r - 1) % NF) + 1) }')
        for t in $order; do
            pid=${PID[$t]:-}
            c0=0; [ -n "$pid" ] && c0=$(cpu_ticks "$pid")
            x0="0 0"; [ -n "$pid" ] && x0=$(ctx_switches "$pid")
            n0=$(backend_ticks); read -r m0 i0 < <(machine_ticks)
            # GNU time's last line: wrk's user and system seconds, voluntary and involuntary switches.
            out=$(/usr/bin/time -f "WRKTIME %U %S %w %c" wrk -t1 -c50 -d"${SECS}s" --latency "http://127.0.0.1:${PORT[$t]}/$size" 2>&1)
            c1=0; [ -n "$pid" ] && c1=$(cpu_ticks "$pid")
            x1="0 0"; [ -n "$pid" ] && x1=$(ctx_switches "$pid")
            n1=$(backend_ticks); read -r m1 i1 < <(machine_ticks)
            reqs=$(echo "$out" | awk '/requests in/{print $1}')
            rps=$(echo "$out" | awk '/^Requests\/sec/{print $2}')
            p50=$(to_ms "$(echo "$out" | awk '$1=="50%"{print $2}')")
            p99=$(to_ms "$(echo "$out" | awk '$1=="99%"{print $2}')")
            errs=$(echo "$out" | grep -c -E "Socket errors|Non-2xx" || true)
            cpu_us=$(awk -v d=$((c1 - c0)) -v hz="$HZ" -v n="$reqs" 'BEGIN{ if (n>0) printf "%.1f", d/hz*1e6/n; else print 0 }')
            extra=$(echo "$out" | awk -v x0="$x0" -v x1="$x1" -v n="$reqs" -v hz="$HZ" -v nb=$((n1 - n0)) -v mb=$((m1 - m0)) -v mi=$((i1 - i0)) '
                /^WRKTIME/{ split(x0, a, " "); split(x1, b, " ")
                    if (n <= 0) { print "0 0 0 0 0 0"; exit }
                    printf "%.3f %.3f %.1f %.1f %.1f %.1f\n", (b[1]-a[1])/n, (b[2]-a[2])/n, ($2+$3)*1e6/n, nb/hz*1e6/n, mb/hz*1e6/n, ((mb+mi) > 0 ? 100*mi/(mb+mi) : 0) }')
            [ -n "$extra" ] || extra="0 0 0 0 0 0"
            echo "$size $t $run $rps $p50 $p99 $cpu_us $errs $extra" >> "$RES"
            echo "$size $t run $run: $rps req/s p50 ${p50}ms p99 ${p99}ms cpu ${cpu_us}us/req errors $errs (vcs ivcs wrk-us nginx-us machine-us idle%: $extra)" >&2
        done
    done
done

# --- idle connections: RSS added per connection ------------------------------------------------
cat > "$W/idle.py" <<'EOF'
import socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
socks = []
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    socks.append(s)
print("up", flush=True)
sys.stdin.read()
EOF
IDLE_RES="$W/idle"
: > "$IDLE_RES"
if [ "$IDLE" -gt 0 ]; then
    for t in $TARGETS; do
        pid=${PID[$t]:-}
        [ -n "$pid" ] || continue
        before=$(rss_kib "$pid")
        mkfifo "$W/idle-in"
        python3 "$W/idle.py" "${PORT[$t]}" "$IDLE" < "$W/idle-in" > "$W/idle-out" &
        ipid=$!
        PIDS+=($ipid)
        exec 9> "$W/idle-in"
        for _ in $(seq 1 600); do grep -q up "$W/idle-out" 2>/dev/null && break; sleep 0.1; done
        sleep 2  # let the balancer finish connecting to the servers
        after=$(rss_kib "$pid")
        exec 9>&-
        wait "$ipid" 2>/dev/null || true
        rm -f "$W/idle-in" "$W/idle-out"
        per=$(( (after - before) * 1024 / IDLE ))
        echo "$t $before $after $per" >> "$IDLE_RES"
        echo "$t: RSS $before KiB -> $after KiB with $IDLE idle connections: $per bytes each" >&2
        sleep 1
    done
fi

# --- report -------------------------------------------------------------------------------------
{
    echo "Balancer benchmark, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, $(uname -r)"
    echo "wrk -t1 -c50 -d${SECS}s, medians of $RUNS runs; two nginx backends (1 worker each); $(haproxy -v | head -1 | cut -d' ' -f1-3); nginx $(nginx -v 2>&1 | sed 's/.*nginx\///')"
    echo "load average (1/5/15 min) at start: $LOAD_START; at end: $(cut -d' ' -f1-3 /proc/loadavg); hastack threads: ${THREADS:-default}"
    echo
    for size in $SIZES; do
        d_rps=$(awk -v s=$size '$1==s && $2=="direct"{print $4}' "$RES" | median)
        h_rps=$(awk -v s=$size '$1==s && $2=="haproxy-tcp"{print $4}' "$RES" | median)
        hs_rps=$(awk -v s=$size '$1==s && $2=="haproxy-splice"{print $4}' "$RES" | median)
        hh_rps=$(awk -v s=$size '$1==s && $2=="haproxy-http"{print $4}' "$RES" | median)
        echo "### $size responses"
        echo
        echo "| target | req/s | p50 ms | p99 ms | CPU µs/req | × direct | × HAProxy tcp | × HAProxy splice | × HAProxy http | errors |"
        echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        for t in $TARGETS; do
            rps=$(awk -v s=$size -v t=$t '$1==s && $2==t{print $4}' "$RES" | median)
            p50=$(awk -v s=$size -v t=$t '$1==s && $2==t{print $5}' "$RES" | median)
            p99=$(awk -v s=$size -v t=$t '$1==s && $2==t{print $6}' "$RES" | median)
            cpu=$(awk -v s=$size -v t=$t '$1==s && $2==t{print $7}' "$RES" | median)
            errs=$(awk -v s=$size -v t=$t '$1==s && $2==t{e+=$8} END{print e+0}' "$RES")
            [ "$t" = direct ] && cpu="-"
            awk -v t=$t -v r="$rps" -v a="$p50" -v b="$p99" -v c="$cpu" -v d="$d_rps" -v h="$h_rps" -v hs="$hs_rps" -v hh="$hh_rps" -v e="$errs" \
                'function q(x, y) { return y > 0 ? sprintf("%.2f", x / y) : "-" }
                 BEGIN{ printf "| %s | %.0f | %.3f | %.3f | %s | %s | %s | %s | %s | %d |\n", t, r, a, b, c, q(r, d), q(r, h), q(r, hs), q(r, hh), e }'
        done
        echo
        echo "Per request, same runs (medians): the balancer's context switches (all threads), CPU µs of wrk,"
        echo "of the two nginx backends, of the balancer, their sum, and the whole machine's busy CPU µs (/proc/stat,"
        echo "includes softirq and everything else running) and idle share."
        echo
        echo "| target | vol. cs/req | invol. cs/req | wrk µs | nginx µs | balancer µs | sum µs | machine µs | idle % |"
        echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
        for t in $TARGETS; do
            col() { awk -v s=$size -v t=$t -v c=$1 '$1==s && $2==t{print $c}' "$RES" | median; }
            vcs=$(col 9); ics=$(col 10); wus=$(col 11); nus=$(col 12); bus=$(col 7); mus=$(col 13); idl=$(col 14)
            [ "$t" = direct ] && bus=0
            awk -v t=$t -v a="$vcs" -v b="$ics" -v w="$wus" -v n="$nus" -v c="$bus" -v m="$mus" -v i="$idl" \
                'BEGIN{ printf "| %s | %.3f | %.3f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f |\n", t, a, b, w, n, c, w+n+c, m, i }'
        done
        echo
    done
    if [ -s "$IDLE_RES" ]; then
        echo "### RSS per idle connection ($IDLE idle client connections, each with its server connection)"
        echo
        echo "| target | RSS before KiB | RSS after KiB | bytes per connection |"
        echo "|---|---:|---:|---:|"
        awk '{printf "| %s | %d | %d | %d |\n", $1, $2, $3, $4}' "$IDLE_RES"
        echo
    fi
} | tee "$W/report.md"
[ -n "$OUT" ] && cp "$W/report.md" "$OUT"
exit 0
