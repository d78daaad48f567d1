#!/usr/bin/env bash
# Instructions per request through the appid pair, by function: a CPU figure
# that does not move with the machine (callgrind counts instructions, not
# time), for comparing two builds on a noisy VM where `run.sh`'s rates move
# by ±25% between runs of one binary.
#
#   bench/e2e/instructions.sh                       # HTTP/1.1 keep-alive and HTTP/2
#   BENCH_APPID_BIN=/path/to/appid bench/e2e/instructions.sh
#   BENCH_IC_WORKLOADS="h1" BENCH_IC_LAYER=l4 bench/e2e/instructions.sh
#   BENCH_IC_WORKLOADS="tcp" bench/e2e/instructions.sh   # bulk: per MiB
#
# The pair is `run.sh`'s loopback pair (pooled tunnels, `workers: 1`, its L7
# policy: every request authorized and audited on both sides; BENCH_IC_LAYER=l4
# for its L4 policy), each sidecar under `valgrind --tool=callgrind` with
# instrumentation off until the connections are warm. For each workload, h2load
# sends N1 and then N2 requests on 4 connections (HTTP/2: 10 streams each), the
# counters zeroed before each and dumped after it (instrumentation is on
# from the warm-up, whose counts are zeroed); the figure is the
# difference over N2 - N1 requests, so connection setup and the tunnel's
# handshake cancel out. Workload `tcp` is bulk TCP instead (iperf3 through
# the pair, BENCH_IC_MIB1 and BENCH_IC_MIB2 MiB, counted per MiB; valgrind
# hides AVX-512, so the cipher runs its AVX2 code there).
# Prints instructions per request for each sidecar and
# their sum, and writes callgrind files for `callgrind_annotate` to
# bench/e2e/raw/instructions/.
#
# Needs: valgrind, nginx, h2load (nghttp2-client), and iperf3 for `tcp`;
# installs nginx and h2load with apt-get when run as root. Takes about two minutes per workload.
set -euo pipefail
shopt -s inherit_errexit

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
WORKLOADS=${BENCH_IC_WORKLOADS:-h1 h2}
LAYER=${BENCH_IC_LAYER:-l7}
N1=${BENCH_IC_N1:-2000}
N2=${BENCH_IC_N2:-10000}
MIB1=${BENCH_IC_MIB1:-32}
MIB2=${BENCH_IC_MIB2:-160}
((MIB2 > MIB1)) || { echo "BENCH_IC_MIB2 ($MIB2) must be larger than BENCH_IC_MIB1 ($MIB1)" >&2; exit 1; }
((N2 > N1)) || { echo "BENCH_IC_N2 ($N2) must be larger than BENCH_IC_N1 ($N1)" >&2; exit 1; }
OUT=$HERE/raw/instructions

log() { printf '%s [instructions] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

command -v valgrind >/dev/null || die "needs valgrind (apt-get install -y valgrind)"
if ! command -v nginx >/dev/null || ! command -v h2load >/dev/null; then
    [[ $(id -u) == 0 ]] || die "needs nginx and h2load; as root run: apt-get install -y nginx nghttp2-client"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nginx nghttp2-client >&2
fi
if [[ -n ${BENCH_APPID_BIN:-} ]]; then
    APPID=$BENCH_APPID_BIN
else
    log "building appid (release)"
    (cd "$ROOT" && cargo build --release -q -p appid-proxy --bin appid)
    APPID=$ROOT/target/release/appid
fi

WORK=$(mktemp -d /tmp/appid-instructions.XXXXXX)
PIDS=()

# The pair run.sh measures: its certificates, policy, sidecar configs
# (`workers: 1`) and backend (bench/e2e/lib.sh).
# shellcheck source=bench/e2e/lib.sh
source "$HERE/lib.sh"
trap cleanup_scratch EXIT
mkdir -p "$WORK/audit" "$OUT"
setup_pki
appid_policy "$WORK/policy.yaml" "$SERVER_H1" "$SERVER_H2" "$SERVER_TCP" "$LAYER"
loopback_pair_configs "$WORK"
for side in server client; do echo "workers: 1" >>"$WORK/$side.yaml"; done
if [[ " $WORKLOADS " == *" tcp "* ]]; then
    command -v iperf3 >/dev/null || die "workload tcp needs iperf3 (apt-get install -y iperf3)"
    start_scratch_backend tcp
else
    start_scratch_backend
fi

declare -A SIDECAR
for side in server client; do
    RUST_LOG=warn valgrind --tool=callgrind --instr-atstart=no \
        --callgrind-out-file="$WORK/$side.%p.callgrind" \
        "$APPID" proxy --config "$WORK/$side.yaml" >"$WORK/$side.log" 2>&1 &
    SIDECAR[$side]=$!
    PIDS+=($!)
done
wait_port "$SERVER_H1" "${SIDECAR[server]}" server
wait_port "$CLIENT_H1" "${SIDECAR[client]}" client

# h2load ARGS for a workload and a request count.
load() { # WORKLOAD N
    case $1 in
        h1) h2load --h1 -n "$2" -c4 -t1 "http://127.0.0.1:$CLIENT_H1/" ;;
        h2) h2load -n "$2" -c4 -m10 -t1 "http://127.0.0.1:$CLIENT_H2/" ;;
        # In the shape of h2load's summary, for `measure`.
        tcp) iperf3 -c 127.0.0.1 -p "$CLIENT_TCP" -n "$2M" >/dev/null &&
            echo "requests: $2 total, $2 started, $2 done, $2 succeeded" ;;
        *) die "unknown workload $1 (h1 h2 tcp)" ;;
    esac
}

# The dump SIDE wrote for TAG (its newest file, which must be new: a
# callgrind_control that reached nothing exits 0 all the same).
dump_of() { # SIDE TAG DUMPS_BEFORE
    local file count
    count=$(find "$WORK" -maxdepth 1 -name "$1.*.callgrind*" | wc -l)
    ((count > $3)) || die "$1: no callgrind dump for $2 (is valgrind still running?)"
    file=$(ls -t "$WORK/$1".*.callgrind* | head -1)
    grep -qxF "desc: Trigger: dump $2" "$file" || die "$1: the newest dump ($file) is not the one for $2"
    echo "$file"
}

# Instructions in a dump (its `summary:` line).
total_of() { # FILE
    local total
    total=$(awk '/^summary:/ { print $2 }' "$1")
    [[ $total =~ ^[0-9]+$ ]] || die "no instruction total in $1"
    echo "$total"
}

# measure WORKLOAD N: zero both sidecars' counters, send N requests, dump;
# prints "server client" instructions and sets nothing else.
measure() {
    local side succeeded tag=$1-$2 before totals=()
    for side in server client; do callgrind_control -z "${SIDECAR[$side]}" >/dev/null 2>&1; done
    succeeded=$(load "$1" "$2" | awk '/^requests:/ { print $8 }')
    [[ $succeeded == "$2" ]] || die "$1: $succeeded of $2 requests succeeded"
    for side in server client; do
        before=$(find "$WORK" -maxdepth 1 -name "$side.*.callgrind*" | wc -l)
        callgrind_control -d "$tag" "${SIDECAR[$side]}" >/dev/null 2>&1
        totals+=("$(total_of "$(dump_of "$side" "$tag" "$before")")")
    done
    echo "${totals[*]}"
}

for side in server client; do callgrind_control -i on "${SIDECAR[$side]}" >/dev/null 2>&1; done
printf '%-4s %14s %14s %14s\n' "" "server" "client" "both"
for wl in $WORKLOADS; do
    n0=200 n1=$N1 n2=$N2 unit=requests
    [[ $wl == tcp ]] && n0=8 n1=$MIB1 n2=$MIB2 unit=MiB
    log "$wl: warming up, then $n1 and $n2 $unit"
    load "$wl" "$n0" >/dev/null
    first=$(measure "$wl" "$n1")
    second=$(measure "$wl" "$n2")
    read -r s1 c1 <<<"$first"
    read -r s2 c2 <<<"$second"
    for side in server client; do
        cp "$(ls -t "$WORK/$side".*.callgrind* | head -1)" "$OUT/$wl-$LAYER.$side.callgrind"
    done
    awk -v s1="$s1" -v s2="$s2" -v c1="$c1" -v c2="$c2" -v n="$((n2 - n1))" -v wl="$wl" 'BEGIN {
        s = (s2 - s1) / n; c = (c2 - c1) / n
        printf "%-4s %14.0f %14.0f %14.0f\n", wl, s, c, s + c
    }'
done
log "per-function profiles (of the second run): callgrind_annotate $OUT/<workload>-$LAYER.<side>.callgrind"
