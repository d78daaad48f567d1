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
# HTTP/1.1 and over gRPC-like HTTP/2), BENCH_RATE_ARRIVALS (spread: the
# fixed-rate client's connections send in turn; burst: all at once) and
# BENCH_RATE_LAYOUT (pods: during the fixed-rate runs each sidecar shares a
# core with its app, as on two nodes; apart: the cores of the other
# workloads), BENCH_IDLE_CONNS (1000),
# BENCH_PROXY_CPU (1) / BENCH_LOAD_CPU (0): the cores for the two sidecars
# and for load generator + backend (peers with two workers get every core),
# BENCH_OUT (results JSON path),
# BENCH_RESUMPTION=1 turns TLS session resumption on for haproxy and nginx
# (it is off by default, as the issue asks; appid never resumes),
# BENCH_PROFILE=1 records the sidecars' stacks per workload (raw/…/<workload>.*.perf),
# BENCH_RUST_LOG: the sidecars' RUST_LOG (default warn; `info` is what a sidecar runs
# with when RUST_LOG is unset),
# BENCH_KEEP=1 keeps the scratch directory, BENCH_APPID_BIN=PATH measures that
# appid binary instead of building the checkout (to compare two builds;
# BENCH_APPID_BUILD then says in the report what it is; `appid=` names it by
# its SHA-256, not the checkout's commit). BENCH_BUILD: how the
# checkout is built when no binary is given: `pgo` (default), the
# profile-guided build of bench/pgo.sh (what the Dockerfile ships; needs
# `rustup component add llvm-tools`), or `release` (`cargo build --release`).
# Raw tool output lands in
# bench/e2e/raw/. Installs missing tools with apt-get when run as root.
#
# --mesh (issue 19, root): the topology of a mesh instead of loopback ports.
# Two network namespaces joined by a veth, the load generator and the client
# sidecar in one (10.79.0.1), the backend and the server sidecar in the
# other (10.79.0.2); the load generator dials the backend's own address and
# iptables captures it on both sides (`appid redirect install`; the sidecars
# run as uid 1337 in transparent mode). Peers: direct, appid-l7 (the same
# L7 policy as above: every request authorized), appid-l4 (a policy on
# identities and ports only) and, when BENCH_ZTUNNEL_BIN names a ztunnel
# binary, Istio's ztunnel pair (HBONE, its fake CA, a local XDS file listing
# both workloads, an L4 ALLOW policy on the client's identity, capture with
# the REDIRECT to :15001 its docs give); ratios (z×) are then to ztunnel.
# Every proxy gets BENCH_MESH_WORKERS (2) worker threads and every process
# every core; BENCH_RATES defaults to "1000". ztunnel is not built here: a
# binary of istio/ztunnel built with its `testing` feature (the fake CA).
#
#   bench/e2e/run.sh --mesh --repeat 3
#   BENCH_ZTUNNEL_BIN=/path/to/ztunnel bench/e2e/run.sh --mesh --repeat 3
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
DURATION=${BENCH_SECONDS:-10}
SIDECAR_LOG=${BENCH_RUST_LOG:-warn}
IDLE_CONNS=${BENCH_IDLE_CONNS:-1000}
PROXY_CPU=${BENCH_PROXY_CPU:-1}
LOAD_CPU=${BENCH_LOAD_CPU:-0}
OUT=${BENCH_OUT:-$HERE/results.json}
RAW=$HERE/raw
WORKLOADS=${BENCH_WORKLOADS:-idle h1 h1close h2 tcp rate}
RATES=${BENCH_RATES:-1000 10000}
RATE_LAYOUT=${BENCH_RATE_LAYOUT:-pods}
RATE_ARRIVALS=${BENCH_RATE_ARRIVALS:-burst}
# Connections of the fixed-rate client, each sending rate/connections req/s:
# HTTP/1.1 has one request in flight per connection, so it gets one
# connection per 100 req/s (a connection is never asked for more than one
# request per 10 ms); HTTP/2 multiplexes, as gRPC clients do, on 10.
RATE_H1_PER_CONN=100
RATE_H2_CONNS=10
RESUMPTION=${BENCH_RESUMPTION:-0}
REPEAT=${BENCH_REPEAT:-1}

# Topology (--mesh switches it). In the mesh the load generator runs in
# IN_CLIENT's namespace and dials DIAL_ADDR; the backend runs in IN_SERVER's
# and listens on BACKEND_BIND. On loopback both prefixes are empty.
TOPOLOGY=loopback
MESH_NS_CLIENT=appid-bench-client MESH_NS_SERVER=appid-bench-server
MESH_IP_CLIENT=10.79.0.1 MESH_IP_SERVER=10.79.0.2
MESH_WORKERS=${BENCH_MESH_WORKERS:-2}
MESH_PROXY_UID=1337 # the uid `appid redirect install` never captures
IN_CLIENT=() IN_SERVER=() WAIT_CLIENT=() WAIT_SERVER=()
DIAL_ADDR=127.0.0.1 BACKEND_BIND=127.0.0.1
ZTUNNEL=${BENCH_ZTUNNEL_BIN:-}
ZTUNNEL_ALLOWED=loadgen # the service account its policy allows

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

NGINX_STREAM_MODULE=/usr/lib/nginx/modules/ngx_stream_module.so
CIPHERSUITE=TLS_AES_256_GCM_SHA384 # what rustls (appid) negotiates by default

# The ports, certificates, the backend's nginx.conf, the sidecars' policy
# and configs: shared with instructions.sh and pgo.sh.
# shellcheck source=bench/e2e/lib.sh
source "$HERE/lib.sh"

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
    [[ $TOPOLOGY == mesh ]] && mesh_down
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

port_open() { # PORT [NETNS]
    if [[ -n ${2:-} ]]; then
        ip netns exec "$2" bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
    else
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
    fi
}

wait_ports() { # [--in NETNS] NAME PID PORT...
    local ns="" name pid port i
    [[ $1 == --in ]] && { ns=$2; shift 2; }
    name=$1 pid=$2
    shift 2
    for port in "$@"; do
        for ((i = 0; i < 200; i++)); do
            port_open "$port" "$ns" && continue 2
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

# pin CPUS PID...: moves every thread of the processes and of their
# descendants to CPUS.
pin() {
    local cpus=$1 p
    shift
    for p in $(pid_list "$@" | tr , ' '); do
        # A process or thread that ended since it was listed is not an error.
        taskset -a -p -c "$cpus" "$p" >/dev/null 2>&1 || ! kill -0 "$p" 2>/dev/null ||
            log "could not move $p to CPU $cpus"
    done
}

# rate_layout on|off: where the processes run during the fixed-rate
# workload (BENCH_RATE_LAYOUT). `pods` (the default on loopback): as in a
# deployment of two pods on two nodes, the load generator and the client
# sidecar share LOAD_CPU, the backend and the server sidecar PROXY_CPU;
# direct then crosses between the two CPUs as the pair does, so the
# latency added over direct is what the sidecars add. `apart`: the layout
# of the throughput workloads (the sidecars on PROXY_CPU, load generator and
# backend on LOAD_CPU), where direct crosses no CPU and the pair four times.
# Two-worker peers keep every core either way.
rate_layout() {
    [[ $TOPOLOGY == loopback && $RATE_LAYOUT == pods ]] || return 0
    if [[ $1 == on ]]; then
        pin "$PROXY_CPU" "$BACKEND_HTTP_PID"
        [[ -n $CLIENT_PID && $PEER_CPUS == "$PROXY_CPU" ]] && {
            pin "$LOAD_CPU" "$CLIENT_PID"
            pin "$PROXY_CPU" "$SERVER_PID"
        }
    else
        pin "$LOAD_CPU" "$BACKEND_HTTP_PID"
        [[ -n $CLIENT_PID ]] && pin "$PEER_CPUS" "$CLIENT_PID" "$SERVER_PID"
    fi
    return 0
}

# rate_spread RATE CONNS: h2load's options for how long a fixed-rate run
# lasts and when its connections start. `spread`: one connection every
# millisecond (RATE/1000 of them when there are more; -r and -D exclude each
# other, so the run is RATE x DURATION requests), like fortio's -uniform
# and -jitter in Istio's own latency runs (istio/tools,
# perf/benchmark/configs/istio/*/latency.yaml): connection i then sends at
# i ms into each request period, and at 1 000 req/s on 10 connections one
# request arrives every millisecond. At 10 000 req/s the period of a
# gRPC-like connection is 1 ms, so its 10 connections send in step either
# way (h2load's rate period is whole milliseconds). `burst`: -D, every
# connection opened at once.
rate_spread() {
    local rate=$1 conns=$2
    if [[ $RATE_ARRIVALS == burst ]]; then
        echo "-D $DURATION"
    else
        echo "-r $(((rate + 999) / 1000 < conns ? (rate + 999) / 1000 : conns)) --rate-period 1ms -n $((rate * DURATION))"
    fi
}

# The given pids and their descendants, comma-separated (for `perf -p`).
pid_list() {
    local p
    for p in "$@"; do tree "$p"; done | paste -sd,
}

# Stops a perf running in the background (SIGINT: it writes its output).
perf_stop() { # PID (empty: none)
    [[ -n $1 ]] || return 0
    kill -INT "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

# BENCH_SYSCALLS=1: count the sidecars' system calls and context switches
# during each workload (perf stat on software events; it costs each
# syscall a little, so it is off for the figures that matter).
# BENCH_PROFILE=1: sample their stacks (`perf record --call-graph dwarf`,
# 499 Hz) into OUTFILE.perf, for `perf report -i FILE --no-children --sort
# sym`; it costs the sidecars CPU too.
perf_start() { # OUTFILE PID...
    local out=$1 pids
    shift
    PERF_PID="" PROFILE_PID=""
    [[ ${BENCH_SYSCALLS:-0} == 1 || ${BENCH_PROFILE:-0} == 1 ]] || return 0
    command -v perf >/dev/null || die "BENCH_SYSCALLS and BENCH_PROFILE need perf (apt-get install linux-perf)"
    pids=$(pid_list "$@")
    if [[ ${BENCH_SYSCALLS:-0} == 1 ]]; then
        perf stat -x, -e raw_syscalls:sys_enter,context-switches -p "$pids" -o "$out.counts" &
        PERF_PID=$!
    fi
    if [[ ${BENCH_PROFILE:-0} == 1 ]]; then
        perf record -q -F 499 --call-graph dwarf,16384 -p "$pids" -o "$out.perf" 2>/dev/null &
        PROFILE_PID=$!
    fi
}

perf_stop_all() {
    perf_stop "$PERF_PID"
    perf_stop "$PROFILE_PID"
    PERF_PID="" PROFILE_PID=""
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

start_backend() {
    write_backend_conf
    start "$LOAD_CPU" backend-http "${IN_SERVER[@]}" nginx -e "$WORK/backend/error.log" -p "$WORK/backend" \
        -c "$WORK/backend/nginx.conf"
    BACKEND_HTTP_PID=$LAST_PID
    wait_ports "${WAIT_SERVER[@]}" backend-http "$LAST_PID" "$BACKEND_H1" "$BACKEND_H2"
    start "$LOAD_CPU" backend-tcp "${IN_SERVER[@]}" iperf3 -s -B "$BACKEND_BIND" -p "$BACKEND_TCP"
    BACKEND_TCP_PID=$LAST_PID
    wait_ports "${WAIT_SERVER[@]}" backend-tcp "$LAST_PID" "$BACKEND_TCP"
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

# appid_start_pair DIR EXTRA_YAML: appends EXTRA_YAML (and `workers: 1`
# unless it sets workers) to both configs and starts both sidecars (in the
# mesh: in their namespaces, as the uid the capture excludes).
appid_start_pair() {
    local dir=$1 extra=$2 as=()
    [[ $extra == *workers:* ]] || extra="workers: 1${extra:+\n$extra}"
    printf '%b\n' "$extra" | tee -a "$dir/server.yaml" >>"$dir/client.yaml"
    # Their own directory: rotating a log at its size cap renames it there.
    mkdir -p "$WORK/audit"
    : >"$WORK/audit/server.jsonl"
    : >"$WORK/audit/client.jsonl"
    if [[ $TOPOLOGY == mesh ]]; then
        chown -R "$MESH_PROXY_UID:$MESH_PROXY_UID" "$dir" "$WORK/audit"
        as=(setpriv --reuid "$MESH_PROXY_UID" --regid "$MESH_PROXY_UID" --clear-groups)
    fi
    start "$PEER_CPUS" appid-server "${IN_SERVER[@]}" "${as[@]}" env RUST_LOG="$SIDECAR_LOG" "$APPID" proxy --config "$dir/server.yaml"
    SERVER_PID=$LAST_PID
    start "$PEER_CPUS" appid-client "${IN_CLIENT[@]}" "${as[@]}" env RUST_LOG="$SIDECAR_LOG" "$APPID" proxy --config "$dir/client.yaml"
    CLIENT_PID=$LAST_PID
}

# start_appid DIR EXTRA_YAML: the loopback pair, one listener per service.
start_appid() {
    local dir=$1 extra=$2
    appid_policy "$dir/policy.yaml" "$SERVER_H1" "$SERVER_H2" "$SERVER_TCP" l7
    loopback_pair_configs "$dir"
    appid_start_pair "$dir" "$extra"
}

# --- the mesh topology (--mesh) ----------------------------------------------

mesh_up() {
    [[ $(id -u) == 0 ]] || die "--mesh needs root (network namespaces, iptables)"
    local tool
    for tool in ip iptables setpriv; do
        command -v "$tool" >/dev/null || die "--mesh needs $tool (apt-get install -y iproute2 iptables util-linux)"
    done
    mesh_down
    ip netns add "$MESH_NS_CLIENT"
    ip netns add "$MESH_NS_SERVER"
    ip link add appid-bench-c type veth peer name appid-bench-s
    ip link set appid-bench-c netns "$MESH_NS_CLIENT"
    ip link set appid-bench-s netns "$MESH_NS_SERVER"
    ip -n "$MESH_NS_CLIENT" addr add "$MESH_IP_CLIENT/24" dev appid-bench-c
    ip -n "$MESH_NS_SERVER" addr add "$MESH_IP_SERVER/24" dev appid-bench-s
    ip -n "$MESH_NS_CLIENT" link set appid-bench-c up
    ip -n "$MESH_NS_SERVER" link set appid-bench-s up
    ip -n "$MESH_NS_CLIENT" link set lo up
    ip -n "$MESH_NS_SERVER" link set lo up
    IN_CLIENT=(ip netns exec "$MESH_NS_CLIENT") IN_SERVER=(ip netns exec "$MESH_NS_SERVER")
    WAIT_CLIENT=(--in "$MESH_NS_CLIENT") WAIT_SERVER=(--in "$MESH_NS_SERVER")
    DIAL_ADDR=$MESH_IP_SERVER BACKEND_BIND=0.0.0.0
    # The sidecars (uid 1337) read their keys and write their audit logs here.
    chmod 755 "$WORK"
    chown "$MESH_PROXY_UID:$MESH_PROXY_UID" "$WORK"/*.pem "$WORK"/*.key
}

# Deleting a namespace deletes its veth end and its iptables rules.
mesh_down() {
    ip netns del "$MESH_NS_CLIENT" 2>/dev/null || true
    ip netns del "$MESH_NS_SERVER" 2>/dev/null || true
}

# The client ztunnel's capture, as its docs give it: everything to the
# server's address but HBONE itself goes to :15001.
ZTUNNEL_CAPTURE=(OUTPUT -p tcp -d "$MESH_IP_SERVER" ! --dport 15008 -m comment --comment "bench: ztunnel capture"
    -j REDIRECT --to-ports 15001)

# mesh_capture on|off PEER: the iptables capture of a mesh peer.
mesh_capture() {
    local what=$1 peer=$2
    case $peer in
    appid-*)
        local verb=install
        [[ $what == off ]] && verb=remove
        "${IN_CLIENT[@]}" "$APPID" redirect "$verb" --proxy-uid "$MESH_PROXY_UID" >/dev/null
        "${IN_SERVER[@]}" "$APPID" redirect "$verb" --proxy-uid "$MESH_PROXY_UID" >/dev/null
        ;;
    ztunnel)
        local op=-A
        [[ $what == off ]] && op=-D
        "${IN_CLIENT[@]}" iptables -t nat "$op" "${ZTUNNEL_CAPTURE[@]}"
        ;;
    esac
}

# start_appid_mesh DIR LAYER EXTRA_YAML: transparent sidecars (the capture
# is mesh_capture's).
start_appid_mesh() {
    local dir=$1 layer=$2 extra=$3
    appid_policy "$dir/policy.yaml" "$BACKEND_H1" "$BACKEND_H2" "$BACKEND_TCP" "$layer"
    # Redirected inbound (the backend is reached on 127.0.0.1:<port>) and
    # outbound (the destination from SO_ORIGINAL_DST).
    appid_config server "$dir" inbound 'listen: "0.0.0.0:15106"'
    appid_config client "$dir" outbound 'listen: "127.0.0.1:15101"'
    appid_start_pair "$dir" "$extra"
    READY_CLIENT=15101 READY_SERVER=15106
}

# start_ztunnel DIR: Istio's ztunnel pair, each in dedicated mode (one
# workload per proxy) with its fake CA and a local XDS file naming both
# workloads and an L4 ALLOW policy on the client's identity (so every
# connection is authorized, as appid's are). ztunnel logs one access line
# per connection at its default level, as appid audits.
start_ztunnel() {
    local dir=$1 side ns name
    cat >"$dir/xds.yaml" <<EOF
workloads:
- uid: bench//v1/Pod/bench/loadgen
  name: loadgen
  namespace: bench
  serviceAccount: loadgen
  trustDomain: cluster.local
  workloadIps: ["$MESH_IP_CLIENT"]
  protocol: HBONE
  node: client
  network: ""
  services: {}
- uid: bench//v1/Pod/bench/backend
  name: backend
  namespace: bench
  serviceAccount: backend
  trustDomain: cluster.local
  workloadIps: ["$MESH_IP_SERVER"]
  protocol: HBONE
  node: server
  network: ""
  services: {}
policies:
- name: loadgen-to-backend
  namespace: bench
  scope: Namespace
  action: Allow
  rules:
  - - - principals: [!Exact "cluster.local/ns/bench/sa/$ZTUNNEL_ALLOWED"]
  dryRun: false
EOF
    for side in client server; do
        ns=$MESH_NS_CLIENT name=loadgen
        [[ $side == server ]] && ns=$MESH_NS_SERVER name=backend
        start "$PEER_CPUS" "ztunnel-$side" ip netns exec "$ns" env FAKE_CA=true XDS_ADDRESS= \
            LOCAL_XDS_PATH="$dir/xds.yaml" PROXY_MODE=dedicated PROXY_WORKLOAD_INFO="bench/$name/$name" \
            ENABLE_ORIG_SRC=false ZTUNNEL_WORKER_THREADS="$MESH_WORKERS" "$ZTUNNEL"
        if [[ $side == client ]]; then CLIENT_PID=$LAST_PID; else SERVER_PID=$LAST_PID; fi
    done
    READY_CLIENT=15001 READY_SERVER=15008
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
        perf_start "$out" "$CLIENT_PID" "$SERVER_PID"
    }
    k0=$(($(ticks "$BACKEND_HTTP_PID") + $(ticks "$BACKEND_TCP_PID")))
    g0=$(children_ticks)
    b0=$(sys_busy)
    t0=$(date +%s.%N)
    timeout -k 5 $((DURATION + 60)) taskset -c "$LOAD_CPU" "${IN_CLIENT[@]}" "$@" >"$out" 2>"$out.err" || rc=$?
    t1=$(date +%s.%N)
    b1=$(sys_busy)
    g1=$(children_ticks)
    k1=$(($(ticks "$BACKEND_HTTP_PID") + $(ticks "$BACKEND_TCP_PID")))
    [[ -n $CLIENT_PID ]] && {
        perf_stop_all
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
        # With the files the sidecars rotated away at their size cap
        # (`<log>.1`, ...): at tens of thousands of requests a second a run
        # writes past the default 100 MiB.
        local logs=("$WORK"/audit/client.jsonl* "$WORK"/audit/server.jsonl*)
        record "$peer" "$wl" audit_bytes "$(cat "${logs[@]}" | wc -c)"
        record "$peer" "$wl" audit_lines "$(cat "${logs[@]}" | wc -l)"
        : >"$WORK/audit/client.jsonl" # O_APPEND: truncation is safe
        : >"$WORK/audit/server.jsonl"
        rm -f "$WORK"/audit/client.jsonl.* "$WORK"/audit/server.jsonl.*
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
            measure "$peer" idle "$dir/idle.json" python3 "$HERE/idle.py" --host "$DIAL_ADDR" --port "$DIAL_H1" \
                --conns "$IDLE_CONNS" --settle 2 "$CLIENT_PID" "$SERVER_PID"
            sleep 1
            ;;
        h1)
            log "$peer: HTTP/1.1 keep-alive, wrk -t1 -c32, ${DURATION}s"
            measure "$peer" h1 "$dir/h1.txt" wrk -t1 -c32 -d"${DURATION}s" --latency "http://$DIAL_ADDR:$DIAL_H1/"
            ;;
        h1close)
            log "$peer: HTTP/1.1 one connection per request, ${DURATION}s"
            measure "$peer" h1close "$dir/h1close.txt" wrk -t1 -c32 -d"${DURATION}s" --latency \
                -H 'Connection: close' "http://$DIAL_ADDR:$DIAL_H1/"
            ;;
        h2)
            log "$peer: HTTP/2, h2load -t1 -c32 -m10, ${DURATION}s"
            measure "$peer" h2 "$dir/h2.txt" h2load -t1 -c32 -m10 -D "$DURATION" "http://$DIAL_ADDR:$DIAL_H2/"
            ;;
        tcp)
            log "$peer: bulk TCP, iperf3 -P1, ${DURATION}s"
            measure "$peer" tcp "$dir/tcp.json" iperf3 -c "$DIAL_ADDR" -p "$DIAL_TCP" -P 1 -t "$DURATION" -J
            ;;
        rate)
            rate_layout on
            # Latency at a fixed load (a set rate, not as fast as possible):
            # h2load spreads the rate over its connections and logs every
            # request's latency; report.py takes p50/p99/p99.9 and subtracts
            # direct's of the same round. Arrivals (BENCH_RATE_ARRIVALS):
            # `spread` opens the connections one after another, a request
            # period apart in all (-r/--rate-period: `rate_spread`), so that
            # their requests interleave; `burst` opens them at once, and
            # every connection then sends in the same instant.
            for rate in $RATES; do
                conns=$(((rate + RATE_H1_PER_CONN - 1) / RATE_H1_PER_CONN))
                log "$peer: HTTP/1.1 at $rate req/s on $conns connections, ${DURATION}s, $RATE_ARRIVALS"
                measure "$peer" "rate-h1-$rate" "$dir/rate-h1-$rate.txt" h2load --h1 -t1 -c"$conns" \
                    --rps "$(awk -v r="$rate" -v c="$conns" 'BEGIN { print r / c }')" \
                    $(rate_spread "$rate" "$conns") \
                    --log-file "$dir/rate-h1-$rate.log" "http://$DIAL_ADDR:$DIAL_H1/"
                log "$peer: gRPC-like HTTP/2 at $rate req/s on $RATE_H2_CONNS connections, ${DURATION}s, $RATE_ARRIVALS"
                measure "$peer" "rate-h2-$rate" "$dir/rate-h2-$rate.txt" h2load -t1 -c"$RATE_H2_CONNS" -m16 \
                    --rps "$(awk -v r="$rate" -v c="$RATE_H2_CONNS" 'BEGIN { print r / c }')" \
                    $(rate_spread "$rate" "$RATE_H2_CONNS") \
                    --log-file "$dir/rate-h2-$rate.log" \
                    -d "$WORK/grpc-request.bin" -H 'content-type: application/grpc' -H 'te: trailers' \
                    "http://$DIAL_ADDR:$DIAL_H2/bench.Echo/Say"
            done
            rate_layout off
            ;;
        *) die "unknown workload $wl (idle h1 h1close h2 tcp rate)" ;;
        esac
    done
}

# start_loopback_peer PEER DIR EXTRA: starts it and waits for its ports;
# sets DIAL_*.
start_loopback_peer() {
    local peer=$1 dir=$2 extra=$3
    case $peer in
    direct) start_direct ;;
    haproxy) start_haproxy "$dir" 1 ;;
    haproxy-w2) start_haproxy "$dir" 2 ;;
    nginx) start_nginx "$dir" ;;
    appid-*) start_appid "$dir" "$extra" ;;
    esac
    if [[ -n $CLIENT_PID ]]; then
        wait_ports "${peer%%-*}-server" "$SERVER_PID" "$SERVER_H1" "$SERVER_H2" "$SERVER_TCP"
        wait_ports "${peer%%-*}-client" "$CLIENT_PID" "$CLIENT_H1" "$CLIENT_H2" "$CLIENT_TCP"
        DIAL_H1=$CLIENT_H1 DIAL_H2=$CLIENT_H2 DIAL_TCP=$CLIENT_TCP
    fi
}

# start_mesh_peer PEER DIR: the same in the mesh, where the load generator
# always dials the backend's own address and ports, captured or not.
start_mesh_peer() {
    local peer=$1 dir=$2
    case $peer in
    direct) start_direct ;;
    appid-l7) start_appid_mesh "$dir" l7 "workers: $MESH_WORKERS" ;;
    appid-l4) start_appid_mesh "$dir" l4 "workers: $MESH_WORKERS" ;;
    ztunnel) start_ztunnel "$dir" ;;
    esac
    if [[ -n $CLIENT_PID ]]; then
        wait_ports "${WAIT_SERVER[@]}" "${peer%%-*}-server" "$SERVER_PID" "$READY_SERVER"
        wait_ports "${WAIT_CLIENT[@]}" "${peer%%-*}-client" "$CLIENT_PID" "$READY_CLIENT"
        mesh_capture on "$peer"
    fi
    DIAL_H1=$BACKEND_H1 DIAL_H2=$BACKEND_H2 DIAL_TCP=$BACKEND_TCP
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
        --mesh) TOPOLOGY=mesh; shift ;;
        -h | --help) usage; return 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
        esac
    done
    [[ $REPEAT =~ ^[1-9][0-9]*$ ]] || die "--repeat wants a whole number of rounds >= 1, not '$REPEAT'"
    [[ $RATE_LAYOUT == pods || $RATE_LAYOUT == apart ]] ||
        die "BENCH_RATE_LAYOUT is pods or apart, not '$RATE_LAYOUT'"
    [[ $RATE_ARRIVALS == spread || $RATE_ARRIVALS == burst ]] ||
        die "BENCH_RATE_ARRIVALS is spread or burst, not '$RATE_ARRIVALS'"
    [[ $(nproc) -gt $PROXY_CPU && $(nproc) -gt $LOAD_CPU ]] || die "needs CPUs $LOAD_CPU and $PROXY_CPU"
    if [[ $TOPOLOGY == mesh ]]; then
        # Every process on every core, as in a pod; the fixed-rate run at
        # 1 000 req/s only, unless BENCH_RATES says otherwise.
        LOAD_CPU=0-$(($(nproc) - 1)) PROXY_CPU=$LOAD_CPU
        RATES=${BENCH_RATES:-1000}
        if [[ -n $ZTUNNEL ]]; then
            [[ -x $ZTUNNEL ]] || die "BENCH_ZTUNNEL_BIN=$ZTUNNEL is not an executable"
        else
            log "no BENCH_ZTUNNEL_BIN: the mesh runs without ztunnel (ratios are then to no one)"
        fi
    fi
    install_missing
    local built build
    if [[ -n ${BENCH_APPID_BIN:-} ]]; then
        built=$BENCH_APPID_BIN
        build=${BENCH_APPID_BUILD:-given as BENCH_APPID_BIN}
        log "appid: $built (BENCH_APPID_BIN, not rebuilt)"
    else
        case ${BENCH_BUILD:-pgo} in
        pgo)
            log "building appid (profile-guided: bench/pgo.sh)"
            "$ROOT/bench/pgo.sh"
            built=${CARGO_TARGET_DIR:-$ROOT/target}/pgo/release/appid
            build="profile-guided build (bench/pgo.sh)"
            ;;
        release)
            log "building appid (release)"
            (cd "$ROOT" && cargo build --release -q -p appid-proxy)
            built=${CARGO_TARGET_DIR:-$ROOT/target}/release/appid
            build="cargo build --release"
            ;;
        *) die "BENCH_BUILD is pgo or release, not '$BENCH_BUILD'" ;;
        esac
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
    if [[ -n $ZTUNNEL ]]; then
        cp "$ZTUNNEL" "$WORK/ztunnel.bin" # not $WORK/ztunnel: that is the peer's directory
        ZTUNNEL=$WORK/ztunnel.bin
    fi
    rm -rf "$RAW"
    mkdir -p "$RAW"
    printf '\0\0\0\0\5hello' >"$WORK/grpc-request.bin" # one gRPC message, 5 bytes

    declare -A labels=([direct]="direct" [haproxy]="haproxy" [nginx]="nginx"
        [haproxy-w2]="haproxy (2 threads)")
    declare -A extras=()
    local all=(direct haproxy nginx) entry key label extra reference=haproxy
    for entry in "${APPID_CONFIGS[@]}"; do
        IFS='|' read -r key label extra <<<"$entry"
        all+=("appid-$key")
        labels[appid-$key]=$label
        extras[appid-$key]=$extra
    done
    all+=(haproxy-w2)
    if [[ $TOPOLOGY == mesh ]]; then
        labels=([direct]="direct" [appid-l7]="appid, L7 policy" [appid-l4]="appid, L4 policy"
            [ztunnel]="ztunnel (L4 policy)")
        all=(direct appid-l7 appid-l4)
        [[ -n $ZTUNNEL ]] && all+=(ztunnel)
        reference=ztunnel
    fi
    local peers
    read -r -a peers <<<"${BENCH_PEERS:-${all[*]}}"

    {
        echo "topology=$TOPOLOGY"
        echo "reference=$reference"
        echo "workers=$([[ $TOPOLOGY == mesh ]] && echo "$MESH_WORKERS" || echo 1)"
        echo "seconds=$DURATION"
        echo "repeat=$REPEAT"
        echo "rates=$RATES"
        echo "rate_h1_per_conn=$RATE_H1_PER_CONN"
        echo "rate_h2_conns=$RATE_H2_CONNS"
        echo "rate_layout=$([[ $TOPOLOGY == loopback ]] && echo "$RATE_LAYOUT" || echo mesh)"
        echo "rate_arrivals=$RATE_ARRIVALS"
        echo "idle_conns=$IDLE_CONNS"
        echo "peer_resumption=$RESUMPTION"
        echo "proxy_cpu=$PROXY_CPU"
        echo "load_cpu=$LOAD_CPU"
        echo "clk_tck=$CLK_TCK"
        echo "cpu_model=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
        echo "nproc=$(nproc)"
        echo "kernel=$(uname -r)"
        # The checkout's commit is the binary's only when run.sh built it;
        # a given binary (BENCH_APPID_BIN) is named by its digest instead.
        local checkout
        checkout="$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)$(cd "$ROOT" && git diff --quiet HEAD 2>/dev/null || echo +dirty)"
        if [[ -n ${BENCH_APPID_BIN:-} ]]; then
            echo "appid=given binary sha256:$(sha256sum "$built" | cut -c1-16) (checkout $checkout)"
        else
            echo "appid=$checkout"
        fi
        echo "appid_build=$build"
        echo "haproxy=$(haproxy -v | head -1 | awk '{print $3}')"
        echo "nginx=$(nginx -v 2>&1 | sed 's|.*nginx/||')"
        echo "openssl=$(openssl version 2>/dev/null | awk '{print $2}')"
        echo "wrk=$(wrk -v 2>&1 | head -1 | awk '{print $2}')"
        echo "h2load=$(h2load --version | awk '{print $2}')"
        echo "iperf3=$(iperf3 --version | head -1 | awk '{print $2}')"
        [[ -n $ZTUNNEL ]] && echo "ztunnel=$("$ZTUNNEL" version 2>/dev/null | head -1 || echo unknown)"
    } >"$RAW/env.txt"
    : >"$RAW/peers.tsv"

    setup_pki
    [[ $TOPOLOGY == mesh ]] && mesh_up
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
            if [[ $TOPOLOGY == mesh ]]; then
                start_mesh_peer "$peer" "$dir"
            else
                start_loopback_peer "$peer" "$dir" "${extras[$peer]:-}"
            fi
            if [[ -n $CLIENT_PID ]]; then
                record "$peer" start rss_kib_client "$(rss_kib "$CLIENT_PID")"
                record "$peer" start rss_kib_server "$(rss_kib "$SERVER_PID")"
            fi
            log "== round $round of $REPEAT: $peer (${labels[$peer]}) =="
            run_workloads "$peer"
            if [[ -n $CLIENT_PID ]]; then
                cp "$WORK/${peer%%-*}-client.log" "$ROUND_RAW/$peer/client.log" 2>/dev/null || true
                cp "$WORK/${peer%%-*}-server.log" "$ROUND_RAW/$peer/server.log" 2>/dev/null || true
                stop "$CLIENT_PID" "$SERVER_PID"
                [[ $TOPOLOGY == mesh ]] && mesh_capture off "$peer"
            fi
        done
    done

    local rc=0
    python3 "$HERE/report.py" "$RAW" --json "$OUT" || rc=$?
    log "raw output in $RAW, results in $OUT"
    return "$rc"
}

main "$@"
