#!/usr/bin/env bash
# End-to-end benchmark (issues 7 and 17): load generator -> client sidecar
# (plaintext) -> mTLS -> server sidecar -> backend, all on 127.0.0.1, for
# these peers side by side: direct (no proxies), haproxy, nginx and appid,
# with one worker each, and haproxy and appid again with two.
#
#   bench/e2e/run.sh                      # one round: 7 peers x 9 workloads x 10 s
#   bench/e2e/run.sh --repeat 3           # 3 interleaved rounds: medians and spread
#   BENCH_SECONDS=5 bench/e2e/run.sh      # shorter
#   BENCH_PEERS="direct appid-strict" BENCH_WORKLOADS="h1 tcp" bench/e2e/run.sh
#
# --repeat N (or BENCH_REPEAT) runs every peer N times, rounds interleaved
# (peer a, b, c, then a, b, c again), so that a slow minute of the machine
# hits every peer alike; every figure is then the median of the rounds with
# its min-max, and a ratio is taken within each round before its median.
#
# Environment: BENCH_SECONDS (per workload, default 10), BENCH_PEERS,
# BENCH_WORKLOADS (idle h1 h1close h2 tcp rate), BENCH_RATES (the fixed
# request rates of the `rate` workload, default "1000 10000" req/s, each over
# HTTP/1.1 and over gRPC-like HTTP/2), BENCH_IDLE_CONNS (1000),
# BENCH_PROXY_CPU (1) / BENCH_LOAD_CPU (0): the cores for the two sidecars
# and for load generator + backend (peers with two workers get every core),
# BENCH_OUT (results JSON path),
# BENCH_RESUMPTION=1 turns TLS session resumption on for haproxy and nginx
# (it is off by default, as the issue asks; appid never resumes),
# BENCH_KEEP=1 keeps the scratch directory, BENCH_APPID_BIN=PATH measures that
# appid binary instead of building the checkout (to compare two builds). Raw tool output lands in
# bench/e2e/raw/. Installs missing tools with apt-get when run as root.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
DURATION=${BENCH_SECONDS:-10}
IDLE_CONNS=${BENCH_IDLE_CONNS:-1000}
PROXY_CPU=${BENCH_PROXY_CPU:-1}
LOAD_CPU=${BENCH_LOAD_CPU:-0}
OUT=${BENCH_OUT:-$HERE/results.json}
RAW=$HERE/raw
WORKLOADS=${BENCH_WORKLOADS:-idle h1 h1close h2 tcp rate}
RATES=${BENCH_RATES:-1000 10000}
# Connections of the fixed-rate client, each sending rate/connections req/s:
# HTTP/1.1 has one request in flight per connection, so it gets one
# connection per 100 req/s (a connection is never asked for more than one
# request per 10 ms); HTTP/2 multiplexes, as gRPC clients do, on 10.
RATE_H1_PER_CONN=100
RATE_H2_CONNS=10
RESUMPTION=${BENCH_RESUMPTION:-0}
REPEAT=${BENCH_REPEAT:-1}

# appid configurations, one entry each: "key|label|extra sidecar YAML" (the
# YAML, with \n for newlines, is appended to both sidecars' configs; without
# a `workers:` line the sidecars get `workers: 1`). The peer is named
# appid-<key>. `default` is what a user gets (pooled appid-mux/1 tunnels);
# `strict` is one TLS connection per app connection, like the haproxy and
# nginx pairs. A key ending in -w2 runs with two workers on every core, and
# its ratios are taken to haproxy-w2 (two threads, every core).
APPID_CONFIGS=(
    "default|appid (default)|"
    "strict|appid (strict)|tunnel: strict"
    "default-w2|appid (default, 2 workers)|workers: 2"
)

# Ports. Load generator -> CLIENT_* (client sidecar, plaintext) ->
# SERVER_* (server sidecar, mTLS) -> BACKEND_* (plaintext).
BACKEND_H1=18080 BACKEND_H2=18081 BACKEND_TCP=18201
CLIENT_H1=20080 CLIENT_H2=20081 CLIENT_TCP=20201
SERVER_H1=21080 SERVER_H2=21081 SERVER_TCP=21201
ADMIN_CLIENT=15190 ADMIN_SERVER=15191
NGINX_STREAM_MODULE=/usr/lib/nginx/modules/ngx_stream_module.so
CIPHERSUITE=TLS_AES_256_GCM_SHA384 # what rustls (appid) negotiates by default

log() { printf '%s [bench] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --- tools -----------------------------------------------------------------

install_missing() {
    local need=()
    command -v haproxy >/dev/null || need+=(haproxy)
    command -v nginx >/dev/null || need+=(nginx)
    [[ -e $NGINX_STREAM_MODULE ]] || need+=(libnginx-mod-stream)
    command -v wrk >/dev/null || need+=(wrk)
    command -v h2load >/dev/null || need+=(nghttp2-client)
    command -v iperf3 >/dev/null || need+=(iperf3)
    command -v python3 >/dev/null || need+=(python3)
    command -v taskset >/dev/null || need+=(util-linux)
    command -v pgrep >/dev/null || need+=(procps)
    ((${#need[@]} == 0)) && return
    [[ $(id -u) == 0 ]] || die "missing tools; as root run: apt-get install -y ${need[*]}"
    log "installing ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >&2 ||
        { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >&2; }
}

# --- processes -------------------------------------------------------------

declare -a STARTED=() # every pid we started, for the trap
WORK=""

cleanup() {
    local pid
    for pid in "${STARTED[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${STARTED[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    STARTED=()
    if [[ -n $WORK && -d $WORK ]]; then
        if [[ ${BENCH_KEEP:-0} == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start CPU NAME CMD...: runs CMD pinned to CPU in the background, stderr
# to $WORK/NAME.log; sets LAST_PID.
start() {
    local cpu=$1 name=$2
    shift 2
    taskset -c "$cpu" "$@" >"$WORK/$name.log" 2>&1 &
    LAST_PID=$!
    STARTED+=("$LAST_PID")
}

# stop PID...: SIGTERM, wait (SIGKILL after 10 s).
stop() {
    local pid i keep=()
    for pid in "$@"; do kill "$pid" 2>/dev/null || true; done
    for pid in "$@"; do
        for ((i = 0; i < 100; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    for pid in "${STARTED[@]}"; do
        [[ " $* " == *" $pid "* ]] || keep+=("$pid")
    done
    STARTED=("${keep[@]}")
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_ports() { # NAME PID PORT...
    local name=$1 pid=$2 port i
    shift 2
    for port in "$@"; do
        for ((i = 0; i < 200; i++)); do
            port_open "$port" && continue 2
            kill -0 "$pid" 2>/dev/null || { cat "$WORK/$name.log" >&2; die "$name exited"; }
            sleep 0.05
        done
        cat "$WORK/$name.log" >&2
        die "$name: nothing listens on $port after 10 s"
    done
}

# The pid and its descendants (nginx: master + worker).
tree() {
    local pid=$1 child
    echo "$pid"
    for child in $(pgrep -P "$pid" || true); do tree "$child"; done
}

# CPU clock ticks (utime + stime, all threads) of a pid and its
# descendants; with a second argument `sys`, stime only (the kernel's part).
ticks() {
    local total=0 p stat rest f
    for p in $(tree "$1"); do
        stat=$(cat "/proc/$p/stat" 2>/dev/null) || continue
        rest=${stat##*) }                      # after "pid (comm) "
        read -r -a f <<<"$rest"                # f[0] is field 3 (state)
        if [[ ${2:-} == sys ]]; then
            total=$((total + f[12]))           # field 15
        else
            total=$((total + f[11] + f[12]))   # fields 14, 15
        fi
    done
    echo "$total"
}

# BENCH_SYSCALLS=1: count the sidecars' system calls and context switches
# during each workload (perf stat on software events; it costs each
# syscall a little, so it is off for the figures that matter).
count_start() { # OUTFILE PID...
    local out=$1
    shift
    PERF_PID=""
    [[ ${BENCH_SYSCALLS:-0} == 1 ]] || return 0
    command -v perf >/dev/null || die "BENCH_SYSCALLS=1 needs perf (apt-get install linux-perf)"
    local pids
    pids=$(for p in "$@"; do tree "$p"; done | paste -sd,)
    perf stat -x, -e raw_syscalls:sys_enter,context-switches -p "$pids" -o "$out" &
    PERF_PID=$!
}

count_stop() {
    [[ -n $PERF_PID ]] || return 0
    kill -INT "$PERF_PID" 2>/dev/null || true
    wait "$PERF_PID" 2>/dev/null || true
    PERF_PID=""
}

# Resident memory (KiB) of a pid and its descendants.
rss_kib() {
    local total=0 p kib
    for p in $(tree "$1"); do
        kib=$(awk '/^VmRSS:/ { print $2 }' "/proc/$p/status" 2>/dev/null) || continue
        total=$((total + ${kib:-0}))
    done
    echo "$total"
}

# Busy CPU ticks of the whole machine (all CPUs), from /proc/stat.
sys_busy() {
    local _ user nice system irq softirq steal
    read -r _ user nice system _ _ irq softirq steal _ </proc/stat
    echo $((user + nice + system + irq + softirq + steal))
}

# CPU ticks of this shell's waited-for children (the load tools).
children_ticks() {
    local stat rest f
    stat=$(cat "/proc/$$/stat")
    rest=${stat##*) }
    read -r -a f <<<"$rest"
    echo $((f[13] + f[14])) # fields 16, 17: cutime, cstime
}

# Other people's work on this machine skews everything: before each
# workload, wait (up to BENCH_QUIET_WAIT seconds, default 300) until the
# machine is quiet (< 10% of its CPU busy while our processes are idle).
wait_quiet() {
    local limit=${BENCH_QUIET_WAIT:-300} waited=0 a b pct
    while :; do
        a=$(sys_busy)
        sleep 1
        b=$(sys_busy)
        pct=$(((b - a) * 100 / (CLK_TCK * NCPU)))
        ((pct < 10)) && return
        ((waited == 0)) && log "the machine is busy (${pct}% of its CPU, not us); waiting up to ${limit}s"
        if ((waited >= limit)); then
            log "still busy; measuring anyway (report.py flags the figures)"
            return
        fi
        waited=$((waited + 1))
    done
}

record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$ROUND_RAW/measure.tsv"; }

# --- certificates, backend -------------------------------------------------

setup_pki() {
    local ca=$WORK/ca
    "$APPID" authority init --trust-domain bench.example --dir "$ca" >/dev/null
    "$APPID" issue --dir "$ca" --id spiffe://bench.example/loadgen --label app=loadgen \
        --ttl 4h --cert "$WORK/client.pem" --key "$WORK/client.key" >/dev/null
    "$APPID" issue --dir "$ca" --id spiffe://bench.example/backend --label app=backend \
        --ttl 4h --cert "$WORK/server.pem" --key "$WORK/server.key" >/dev/null
    cp "$ca/ca.pem" "$WORK/ca.pem"
    cat "$WORK/client.pem" "$WORK/client.key" >"$WORK/client.combined.pem" # haproxy: cert + key
    cat "$WORK/server.pem" "$WORK/server.key" >"$WORK/server.combined.pem"
}

start_backend() {
    mkdir -p "$WORK/backend"
    cat >"$WORK/backend/nginx.conf" <<EOF
worker_processes 1;
worker_rlimit_nofile 20000;
daemon off;
pid $WORK/backend/nginx.pid;
error_log $WORK/backend/error.log warn;
events { worker_connections 16000; }
http {
    access_log off;
    client_body_temp_path $WORK/backend;
    proxy_temp_path $WORK/backend;
    fastcgi_temp_path $WORK/backend;
    uwsgi_temp_path $WORK/backend;
    scgi_temp_path $WORK/backend;
    default_type text/plain;
    keepalive_timeout 600s;
    keepalive_requests 100000000;
    server {
        listen 127.0.0.1:$BACKEND_H1 backlog=4096;
        location / { return 200 "hello from the backend\n"; }
    }
    server {
        listen 127.0.0.1:$BACKEND_H2 http2 backlog=4096;
        location / { return 200 "hello from the backend\n"; }
    }
}
EOF
    start "$LOAD_CPU" backend-http nginx -e "$WORK/backend/error.log" -p "$WORK/backend" -c "$WORK/backend/nginx.conf"
    BACKEND_HTTP_PID=$LAST_PID
    wait_ports backend-http "$LAST_PID" "$BACKEND_H1" "$BACKEND_H2"
    start "$LOAD_CPU" backend-tcp iperf3 -s -B 127.0.0.1 -p "$BACKEND_TCP"
    BACKEND_TCP_PID=$LAST_PID
    wait_ports backend-tcp "$LAST_PID" "$BACKEND_TCP"
}

# --- peers -----------------------------------------------------------------
# start_<kind> DIR: starts the client and the server sidecar; sets
# CLIENT_PID SERVER_PID and the ports the load generator dials.

start_direct() {
    CLIENT_PID="" SERVER_PID=""
    DIAL_H1=$BACKEND_H1 DIAL_H2=$BACKEND_H2 DIAL_TCP=$BACKEND_TCP
}

start_haproxy() { # DIR THREADS
    local dir=$1 threads=$2 side cache=0 reuse=no-ssl-reuse tickets=no-tls-tickets
    [[ $RESUMPTION == 1 ]] && { cache=20000 reuse="" tickets=""; }
    for side in client server; do
        cat >"$dir/$side.cfg" <<EOF
global
    nbthread $threads
    maxconn 8000
    tune.ssl.cachesize $cache
    ssl-server-verify required
defaults
    mode tcp
    timeout connect 5s
    timeout client 600s
    timeout server 600s
EOF
    done
    local pair
    for pair in "h1 $CLIENT_H1 $SERVER_H1 $BACKEND_H1" "h2 $CLIENT_H2 $SERVER_H2 $BACKEND_H2" \
        "tcp $CLIENT_TCP $SERVER_TCP $BACKEND_TCP"; do
        read -r name cport sport bport <<<"$pair"
        cat >>"$dir/client.cfg" <<EOF
listen $name
    bind 127.0.0.1:$cport
    server s 127.0.0.1:$sport ssl verify required verifyhost backend ca-file $WORK/ca.pem crt $WORK/client.combined.pem ssl-min-ver TLSv1.3 ssl-max-ver TLSv1.3 ciphersuites $CIPHERSUITE $reuse
EOF
        cat >>"$dir/server.cfg" <<EOF
listen $name
    bind 127.0.0.1:$sport ssl crt $WORK/server.combined.pem ca-file $WORK/ca.pem verify required ssl-min-ver TLSv1.3 ssl-max-ver TLSv1.3 ciphersuites $CIPHERSUITE $tickets
    server b 127.0.0.1:$bport
EOF
    done
    for side in client server; do
        haproxy -c -q -f "$dir/$side.cfg" || die "haproxy $side config"
    done
    start "$PEER_CPUS" haproxy-server haproxy -db -f "$dir/server.cfg"
    SERVER_PID=$LAST_PID
    start "$PEER_CPUS" haproxy-client haproxy -db -f "$dir/client.cfg"
    CLIENT_PID=$LAST_PID
}

start_nginx() {
    local dir=$1 side reuse=off cache=off tickets=off
    [[ $RESUMPTION == 1 ]] && { reuse=on cache=shared:tls:10m tickets=on; }
    for side in client server; do
        cat >"$dir/$side.conf" <<EOF
load_module $NGINX_STREAM_MODULE;
worker_processes 1;
worker_rlimit_nofile 20000;
daemon off;
pid $dir/$side.pid;
error_log $dir/$side.error.log warn;
events { worker_connections 16000; }
stream {
    proxy_timeout 600s;
EOF
    done
    cat >>"$dir/client.conf" <<EOF
    proxy_ssl on;
    proxy_ssl_protocols TLSv1.3;
    proxy_ssl_conf_command Ciphersuites $CIPHERSUITE;
    proxy_ssl_certificate $WORK/client.pem;
    proxy_ssl_certificate_key $WORK/client.key;
    proxy_ssl_trusted_certificate $WORK/ca.pem;
    proxy_ssl_verify on;
    proxy_ssl_verify_depth 2;
    proxy_ssl_name backend;        # the CN: the certificates carry no DNS SAN
    proxy_ssl_session_reuse $reuse;
EOF
    cat >>"$dir/server.conf" <<EOF
    ssl_protocols TLSv1.3;
    ssl_conf_command Ciphersuites $CIPHERSUITE;
    ssl_certificate $WORK/server.pem;
    ssl_certificate_key $WORK/server.key;
    ssl_client_certificate $WORK/ca.pem;
    ssl_verify_client on;
    ssl_verify_depth 2;
    ssl_session_cache $cache;
    ssl_session_tickets $tickets;
EOF
    local pair
    for pair in "$CLIENT_H1 $SERVER_H1 $BACKEND_H1" "$CLIENT_H2 $SERVER_H2 $BACKEND_H2" \
        "$CLIENT_TCP $SERVER_TCP $BACKEND_TCP"; do
        read -r cport sport bport <<<"$pair"
        echo "    server { listen 127.0.0.1:$cport backlog=4096; proxy_pass 127.0.0.1:$sport; }" >>"$dir/client.conf"
        echo "    server { listen 127.0.0.1:$sport ssl backlog=4096; proxy_pass 127.0.0.1:$bport; }" >>"$dir/server.conf"
    done
    echo "}" >>"$dir/client.conf"
    echo "}" >>"$dir/server.conf"
    for side in client server; do
        nginx -q -t -e "$dir/$side.error.log" -p "$dir" -c "$dir/$side.conf" || die "nginx $side config"
    done
    start "$PEER_CPUS" nginx-server nginx -e "$dir/server.error.log" -p "$dir" -c "$dir/server.conf"
    SERVER_PID=$LAST_PID
    start "$PEER_CPUS" nginx-client nginx -e "$dir/client.error.log" -p "$dir" -c "$dir/client.conf"
    CLIENT_PID=$LAST_PID
}

# start_appid DIR EXTRA_YAML
start_appid() {
    local dir=$1 extra=$2
    cat >"$dir/policy.yaml" <<EOF
version: 1
default: deny
rules:
  - name: loadgen-http          # L7: every request is authorized
    action: allow
    from: { labels.app: loadgen }
    to: { labels.app: backend, ports: [$SERVER_H1, $SERVER_H2] }
    http: { methods: [GET] }
  - name: loadgen-grpc          # L7: the fixed-rate gRPC-like calls
    action: allow
    from: { labels.app: loadgen }
    to: { labels.app: backend, ports: [$SERVER_H2] }
    http: { methods: [POST], paths: ["/bench.Echo/*"] }
  - name: loadgen-tcp           # L4: iperf3
    action: allow
    from: { labels.app: loadgen }
    to: { labels.app: backend, ports: [$SERVER_TCP] }
EOF
    "$APPID" policy check "$dir/policy.yaml" >/dev/null
    cat >"$dir/server.yaml" <<EOF
identity: { cert: $WORK/server.pem, key: $WORK/server.key, bundle: $WORK/ca.pem }
trust_domains: [bench.example]
policy: $dir/policy.yaml
inbound:
  - { listen: "127.0.0.1:$SERVER_H1", forward: "127.0.0.1:$BACKEND_H1" }
  - { listen: "127.0.0.1:$SERVER_H2", forward: "127.0.0.1:$BACKEND_H2" }
  - { listen: "127.0.0.1:$SERVER_TCP", forward: "127.0.0.1:$BACKEND_TCP" }
admin: "127.0.0.1:$ADMIN_SERVER"
audit_log: $WORK/audit-server.jsonl
EOF
    cat >"$dir/client.yaml" <<EOF
identity: { cert: $WORK/client.pem, key: $WORK/client.key, bundle: $WORK/ca.pem }
trust_domains: [bench.example]
policy: $dir/policy.yaml
outbound:
  - { listen: "127.0.0.1:$CLIENT_H1", upstream: "127.0.0.1:$SERVER_H1" }
  - { listen: "127.0.0.1:$CLIENT_H2", upstream: "127.0.0.1:$SERVER_H2" }
  - { listen: "127.0.0.1:$CLIENT_TCP", upstream: "127.0.0.1:$SERVER_TCP" }
admin: "127.0.0.1:$ADMIN_CLIENT"
audit_log: $WORK/audit-client.jsonl
EOF
    [[ $extra == *workers:* ]] || extra="workers: 1${extra:+\n$extra}"
    if [[ -n $extra ]]; then
        printf '%b\n' "$extra" | tee -a "$dir/server.yaml" >>"$dir/client.yaml"
    fi
    : >"$WORK/audit-server.jsonl"
    : >"$WORK/audit-client.jsonl"
    start "$PEER_CPUS" appid-server env RUST_LOG=warn "$APPID" proxy --config "$dir/server.yaml"
    SERVER_PID=$LAST_PID
    start "$PEER_CPUS" appid-client env RUST_LOG=warn "$APPID" proxy --config "$dir/client.yaml"
    CLIENT_PID=$LAST_PID
}

# --- workloads -------------------------------------------------------------

# measure PEER WORKLOAD OUTFILE CMD...: runs CMD (bounded by timeout) with
# the sidecars' CPU ticks before/after; stdout to OUTFILE.
measure() {
    local peer=$1 wl=$2 out=$3 rc=0 c0=0 s0=0 c1=0 s1=0 t0 t1 b0 b1 k0 k1 g0 g1 y0=0 y1=0
    shift 3
    wait_quiet
    [[ -n $CLIENT_PID ]] && {
        c0=$(ticks "$CLIENT_PID") s0=$(ticks "$SERVER_PID")
        y0=$(($(ticks "$CLIENT_PID" sys) + $(ticks "$SERVER_PID" sys)))
        count_start "$out.counts" "$CLIENT_PID" "$SERVER_PID"
    }
    k0=$(($(ticks "$BACKEND_HTTP_PID") + $(ticks "$BACKEND_TCP_PID")))
    g0=$(children_ticks)
    b0=$(sys_busy)
    t0=$(date +%s.%N)
    timeout -k 5 $((DURATION + 60)) taskset -c "$LOAD_CPU" "$@" >"$out" 2>"$out.err" || rc=$?
    t1=$(date +%s.%N)
    b1=$(sys_busy)
    g1=$(children_ticks)
    k1=$(($(ticks "$BACKEND_HTTP_PID") + $(ticks "$BACKEND_TCP_PID")))
    [[ -n $CLIENT_PID ]] && {
        count_stop
        c1=$(ticks "$CLIENT_PID") s1=$(ticks "$SERVER_PID")
        y1=$(($(ticks "$CLIENT_PID" sys) + $(ticks "$SERVER_PID" sys)))
    }
    record "$peer" "$wl" exit_code "$rc"
    record "$peer" "$wl" machine_busy_ticks $((b1 - b0))
    record "$peer" "$wl" own_ticks $((c1 - c0 + s1 - s0 + k1 - k0 + g1 - g0))
    record "$peer" "$wl" wall_seconds "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')"
    if [[ -n $CLIENT_PID ]]; then
        record "$peer" "$wl" cpu_ticks_client $((c1 - c0))
        record "$peer" "$wl" cpu_ticks_server $((s1 - s0))
        record "$peer" "$wl" cpu_ticks_sys $((y1 - y0))
        record "$peer" "$wl" rss_kib_client "$(rss_kib "$CLIENT_PID")"
        record "$peer" "$wl" rss_kib_server "$(rss_kib "$SERVER_PID")"
    fi
    if [[ $peer == appid-* ]]; then
        record "$peer" "$wl" audit_bytes "$(($(stat -c %s "$WORK/audit-client.jsonl") + $(stat -c %s "$WORK/audit-server.jsonl")))"
        record "$peer" "$wl" audit_lines "$(($(wc -l <"$WORK/audit-client.jsonl") + $(wc -l <"$WORK/audit-server.jsonl")))"
        : >"$WORK/audit-client.jsonl" # O_APPEND: truncation is safe
        : >"$WORK/audit-server.jsonl"
    fi
    ((rc == 0)) || log "$peer $wl: exit $rc (see $out.err)"
    sleep 1
}

run_workloads() {
    local peer=$1 wl dir=$ROUND_RAW/$1 rate conns
    mkdir -p "$dir"
    for wl in $WORKLOADS; do
        case $wl in
        idle)
            [[ -n $CLIENT_PID ]] || continue # no sidecars: nothing to weigh
            log "$peer: $IDLE_CONNS idle connections"
            measure "$peer" idle "$dir/idle.json" python3 "$HERE/idle.py" --port "$DIAL_H1" \
                --conns "$IDLE_CONNS" --settle 2 "$CLIENT_PID" "$SERVER_PID"
            sleep 1
            ;;
        h1)
            log "$peer: HTTP/1.1 keep-alive, wrk -t1 -c32, ${DURATION}s"
            measure "$peer" h1 "$dir/h1.txt" wrk -t1 -c32 -d"${DURATION}s" --latency "http://127.0.0.1:$DIAL_H1/"
            ;;
        h1close)
            log "$peer: HTTP/1.1 one connection per request, ${DURATION}s"
            measure "$peer" h1close "$dir/h1close.txt" wrk -t1 -c32 -d"${DURATION}s" --latency \
                -H 'Connection: close' "http://127.0.0.1:$DIAL_H1/"
            ;;
        h2)
            log "$peer: HTTP/2, h2load -t1 -c32 -m10, ${DURATION}s"
            measure "$peer" h2 "$dir/h2.txt" h2load -t1 -c32 -m10 -D "$DURATION" "http://127.0.0.1:$DIAL_H2/"
            ;;
        tcp)
            log "$peer: bulk TCP, iperf3 -P1, ${DURATION}s"
            measure "$peer" tcp "$dir/tcp.json" iperf3 -c 127.0.0.1 -p "$DIAL_TCP" -P 1 -t "$DURATION" -J
            ;;
        rate)
            # Latency at a fixed load (a set rate, not as fast as possible):
            # h2load spreads the rate over its connections and logs every
            # request's latency; report.py takes p50/p99/p99.9 and subtracts
            # direct's of the same round.
            for rate in $RATES; do
                conns=$(((rate + RATE_H1_PER_CONN - 1) / RATE_H1_PER_CONN))
                log "$peer: HTTP/1.1 at $rate req/s on $conns connections, ${DURATION}s"
                measure "$peer" "rate-h1-$rate" "$dir/rate-h1-$rate.txt" h2load --h1 -t1 -c"$conns" \
                    --rps "$(awk -v r="$rate" -v c="$conns" 'BEGIN { print r / c }')" -D "$DURATION" \
                    --log-file "$dir/rate-h1-$rate.log" "http://127.0.0.1:$DIAL_H1/"
                log "$peer: gRPC-like HTTP/2 at $rate req/s on $RATE_H2_CONNS connections, ${DURATION}s"
                measure "$peer" "rate-h2-$rate" "$dir/rate-h2-$rate.txt" h2load -t1 -c"$RATE_H2_CONNS" -m16 \
                    --rps "$(awk -v r="$rate" -v c="$RATE_H2_CONNS" 'BEGIN { print r / c }')" -D "$DURATION" \
                    --log-file "$dir/rate-h2-$rate.log" \
                    -d "$WORK/grpc-request.bin" -H 'content-type: application/grpc' -H 'te: trailers' \
                    "http://127.0.0.1:$DIAL_H2/bench.Echo/Say"
            done
            ;;
        *) die "unknown workload $wl (idle h1 h1close h2 tcp rate)" ;;
        esac
    done
}

# --- main ------------------------------------------------------------------

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
}

main() {
    while (($#)); do
        case $1 in
        --repeat) REPEAT=${2:-}; shift 2 || die "--repeat needs a number" ;;
        --repeat=*) REPEAT=${1#--repeat=}; shift ;;
        -h | --help) usage; return 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
        esac
    done
    [[ $REPEAT =~ ^[1-9][0-9]*$ ]] || die "--repeat wants a whole number of rounds >= 1, not '$REPEAT'"
    [[ $(nproc) -gt $PROXY_CPU && $(nproc) -gt $LOAD_CPU ]] || die "needs CPUs $LOAD_CPU and $PROXY_CPU"
    install_missing
    local built
    if [[ -n ${BENCH_APPID_BIN:-} ]]; then
        built=$BENCH_APPID_BIN
        log "appid: $built (BENCH_APPID_BIN, not rebuilt)"
    else
        log "building appid (release)"
        (cd "$ROOT" && cargo build --release -q -p appid-proxy)
        built=${CARGO_TARGET_DIR:-$ROOT/target}/release/appid
    fi
    [[ -x $built ]] || die "no $built"
    CLK_TCK=$(getconf CLK_TCK)
    NCPU=$(nproc)

    local port
    for port in $BACKEND_H1 $BACKEND_H2 $BACKEND_TCP $CLIENT_H1 $CLIENT_H2 $CLIENT_TCP \
        $SERVER_H1 $SERVER_H2 $SERVER_TCP $ADMIN_CLIENT $ADMIN_SERVER; do
        ! port_open "$port" || die "port $port is in use; the harness needs 18080-18201, 20080-21201, 15190-15191"
    done
    ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"

    local base=/dev/shm # tmpfs: the appid audit logs live here
    [[ -d $base && -w $base ]] || base=${TMPDIR:-/tmp}
    WORK=$(mktemp -d "$base/appid-bench.XXXXXX")
    APPID=$WORK/appid # a copy: a concurrent `cargo build` cannot swap it mid-run
    cp "$built" "$APPID"
    rm -rf "$RAW"
    mkdir -p "$RAW"
    printf '\0\0\0\0\5hello' >"$WORK/grpc-request.bin" # one gRPC message, 5 bytes

    declare -A labels=([direct]="direct" [haproxy]="haproxy" [nginx]="nginx"
        [haproxy-w2]="haproxy (2 threads)")
    declare -A extras=()
    local all=(direct haproxy nginx) entry key label extra
    for entry in "${APPID_CONFIGS[@]}"; do
        IFS='|' read -r key label extra <<<"$entry"
        all+=("appid-$key")
        labels[appid-$key]=$label
        extras[appid-$key]=$extra
    done
    all+=(haproxy-w2)
    local peers
    read -r -a peers <<<"${BENCH_PEERS:-${all[*]}}"

    {
        echo "seconds=$DURATION"
        echo "repeat=$REPEAT"
        echo "rates=$RATES"
        echo "rate_h1_per_conn=$RATE_H1_PER_CONN"
        echo "rate_h2_conns=$RATE_H2_CONNS"
        echo "idle_conns=$IDLE_CONNS"
        echo "peer_resumption=$RESUMPTION"
        echo "proxy_cpu=$PROXY_CPU"
        echo "load_cpu=$LOAD_CPU"
        echo "clk_tck=$CLK_TCK"
        echo "cpu_model=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
        echo "nproc=$(nproc)"
        echo "kernel=$(uname -r)"
        echo "appid=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)$(cd "$ROOT" && git diff --quiet HEAD 2>/dev/null || echo +dirty)"
        echo "haproxy=$(haproxy -v | head -1 | awk '{print $3}')"
        echo "nginx=$(nginx -v 2>&1 | sed 's|.*nginx/||')"
        echo "openssl=$(openssl version 2>/dev/null | awk '{print $2}')"
        echo "wrk=$(wrk -v 2>&1 | head -1 | awk '{print $2}')"
        echo "h2load=$(h2load --version | awk '{print $2}')"
        echo "iperf3=$(iperf3 --version | head -1 | awk '{print $2}')"
    } >"$RAW/env.txt"
    : >"$RAW/peers.tsv"

    setup_pki
    start_backend
    log "backend up (nginx :$BACKEND_H1 h1, :$BACKEND_H2 h2c; iperf3 :$BACKEND_TCP), load on CPU $LOAD_CPU, proxies on CPU $PROXY_CPU"

    local peer dir round
    for peer in "${peers[@]}"; do
        [[ -n ${labels[$peer]+x} ]] || die "unknown peer $peer (known: ${all[*]})"
        printf '%s\t%s\n' "$peer" "${labels[$peer]}" >>"$RAW/peers.tsv"
    done
    for ((round = 1; round <= REPEAT; round++)); do
        ROUND_RAW=$RAW/round-$round
        mkdir -p "$ROUND_RAW"
        : >"$ROUND_RAW/measure.tsv"
        for peer in "${peers[@]}"; do
            dir=$WORK/$peer
            rm -rf "$dir"
            mkdir -p "$dir"
            # Two workers (threads) get every core; one gets PROXY_CPU.
            PEER_CPUS=$PROXY_CPU
            [[ $peer == *-w2 ]] && PEER_CPUS=0-$((NCPU - 1))
            case $peer in
            direct) start_direct ;;
            haproxy) start_haproxy "$dir" 1 ;;
            haproxy-w2) start_haproxy "$dir" 2 ;;
            nginx) start_nginx "$dir" ;;
            appid-*) start_appid "$dir" "${extras[$peer]}" ;;
            esac
            if [[ -n $CLIENT_PID ]]; then
                wait_ports "${peer%%-*}-server" "$SERVER_PID" "$SERVER_H1" "$SERVER_H2" "$SERVER_TCP"
                wait_ports "${peer%%-*}-client" "$CLIENT_PID" "$CLIENT_H1" "$CLIENT_H2" "$CLIENT_TCP"
                DIAL_H1=$CLIENT_H1 DIAL_H2=$CLIENT_H2 DIAL_TCP=$CLIENT_TCP
            fi
            log "== round $round of $REPEAT: $peer (${labels[$peer]}) =="
            run_workloads "$peer"
            if [[ -n $CLIENT_PID ]]; then
                cp "$WORK/${peer%%-*}-client.log" "$ROUND_RAW/$peer/client.log" 2>/dev/null || true
                cp "$WORK/${peer%%-*}-server.log" "$ROUND_RAW/$peer/server.log" 2>/dev/null || true
                stop "$CLIENT_PID" "$SERVER_PID"
            fi
        done
    done

    local rc=0
    python3 "$HERE/report.py" "$RAW" --json "$OUT" || rc=$?
    log "raw output in $RAW, results in $OUT"
    return "$rc"
}

main "$@"
