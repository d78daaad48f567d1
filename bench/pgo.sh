#!/usr/bin/env bash
# A profile-guided (PGO) release build of appid: the binary the README's
# performance figures are measured on, and the one to ship.
#
#   bench/pgo.sh                    # writes target/pgo/release/appid
#   BENCH_APPID_BIN=target/pgo/release/appid bench/e2e/run.sh --repeat 3
#
# Paths are under CARGO_TARGET_DIR when it is set (…/pgo/release/appid),
# and RUSTFLAGS the caller set (`-Ctarget-cpu=native`, say) are kept: the
# profile flags are added to them, in both builds.
#
# Three steps. (1) An instrumented release build (`-Cprofile-generate`,
# target dir target/pgo-instrumented). (2) A training run of that binary: a
# pair of sidecars (pooled tunnels, then `tunnel: strict` with two workers)
# carrying HTTP/1.1 keep-alive and one-connection-per-request calls, HTTP/2
# and gRPC-like POSTs, denied requests and bulk TCP both ways, then SIGTERM,
# after which each sidecar writes its counts (`*.profraw`). (3) The
# counts merged with `llvm-profdata` and a second release build that uses
# them (`-Cprofile-use`, target dir target/pgo).
#
# The training run is not the benchmark: other request counts, concurrency,
# paths, headers and bodies, request mixes the benchmark does not send
# (denied calls, POST bodies, reverse bulk) and a second configuration, so
# that the profile is of the proxy's paths in general, not of run.sh's five
# loads (docs/performance.md, "A profile-guided build"). What PGO changes is
# code layout, inlining and branch order; the program and every check it
# makes are the same as `cargo build --release`'s.
#
# Needs: `llvm-profdata` of rustc's LLVM version (`rustup component add
# llvm-tools`, or LLVM_PROFDATA=path), nginx, h2load (nghttp2-client), wrk,
# iperf3, curl; installs the last five with apt-get when run as root. Takes
# about 13 minutes on 2 cores (two fat-LTO builds).
set -euo pipefail
shopt -s inherit_errexit

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
[[ $TARGET == /* ]] || TARGET=$PWD/$TARGET # cargo runs from $ROOT below
PROFILES=$TARGET/pgo-profiles
# The caller's flags, then ours (both builds must see the same ones).
FLAGS=${RUSTFLAGS:+$RUSTFLAGS }

log() { printf '%s [pgo] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# llvm-profdata must read the format of rustc's own LLVM.
find_profdata() {
    local sysroot candidate
    if [[ -n ${LLVM_PROFDATA:-} ]]; then
        echo "$LLVM_PROFDATA"
        return
    fi
    sysroot=$(rustc --print sysroot)
    for candidate in "$sysroot"/lib/rustlib/*/bin/llvm-profdata; do
        [[ -x $candidate ]] && { echo "$candidate"; return; }
    done
    die "no llvm-profdata for rustc's LLVM: run 'rustup component add llvm-tools' (or set LLVM_PROFDATA)"
}
PROFDATA=$(find_profdata)

missing=()
for tool in nginx h2load wrk iperf3 curl; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
    [[ $(id -u) == 0 ]] || die "needs ${missing[*]}; as root run: apt-get install -y nginx nghttp2-client wrk iperf3 curl"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 # a fresh image (the Dockerfile's build stage) has no package lists
    apt-get install -y -q --no-install-recommends \
        nginx nghttp2-client wrk iperf3 curl >&2
fi

log "1/3: instrumented build ($TARGET/pgo-instrumented)"
rm -rf "$PROFILES"
mkdir -p "$PROFILES"
# (Build scripts are instrumented too and write their own counts as they
# run; only the sidecars' files, named by LLVM_PROFILE_FILE below, are merged.)
(cd "$ROOT" && RUSTFLAGS="$FLAGS-Cprofile-generate=$PROFILES" CARGO_TARGET_DIR=$TARGET/pgo-instrumented \
    cargo build --release --locked -q -p appid-proxy --bin appid)
APPID=$TARGET/pgo-instrumented/release/appid

WORK=$(mktemp -d /tmp/appid-pgo.XXXXXX)
PIDS=()

# shellcheck source=bench/e2e/lib.sh
source "$HERE/e2e/lib.sh"
trap cleanup_scratch EXIT
mkdir -p "$WORK/audit"
setup_pki
appid_policy "$WORK/policy.yaml" "$SERVER_H1" "$SERVER_H2" "$SERVER_TCP" l7
start_scratch_backend tcp
head -c 300 /dev/urandom >"$WORK/body.bin"

# h2load ARGS...: runs it and fails unless every request got a 2xx (a
# profile of refusals would teach the optimizer the wrong paths).
h2load_ok() {
    local out
    out=$(h2load "$@")
    grep -Eq '^requests: ([0-9]+) total, \1 started, \1 done, \1 succeeded' <<<"$out" &&
        grep -Eq "^status codes: $(grep -Eo '^requests: [0-9]+' <<<"$out" | cut -d' ' -f2) 2xx" <<<"$out" ||
        die "h2load $*: not every request got a 2xx: $(grep -E '^(requests|status codes):' <<<"$out")"
}

# train EXTRA_YAML: a pair with EXTRA_YAML in both configs, the loads, and a
# clean stop (the counts are written as the process exits).
train() {
    local extra=$1 side pid
    loopback_pair_configs "$WORK"
    declare -A sidecar
    for side in server client; do
        printf '%b\n' "$extra" >>"$WORK/$side.yaml"
        RUST_LOG=warn LLVM_PROFILE_FILE="$PROFILES/appid-%p.profraw" "$APPID" proxy --config "$WORK/$side.yaml" >"$WORK/$side.log" 2>&1 &
        sidecar[$side]=$!
        PIDS+=($!)
    done
    wait_port "$SERVER_H1" "${sidecar[server]}" server
    wait_port "$CLIENT_H1" "${sidecar[client]}" client
    local h1=http://127.0.0.1:$CLIENT_H1 h2=http://127.0.0.1:$CLIENT_H2
    log "   ($extra): HTTP/1.1 keep-alive, new connections, denied calls"
    h2load_ok --h1 -n 40000 -c 8 -t1 -H 'user-agent: appid-pgo' -H 'accept: text/plain' \
        "$h1/train/items?page=2"
    wrk -t1 -c 4 -d 3s -H 'Connection: close' "$h1/train/close" >/dev/null
    for _ in $(seq 1 40); do
        curl -s -o /dev/null -X DELETE "$h1/train/items/7"
        curl -s -o /dev/null --http2-prior-knowledge -X PUT "$h2/train/items/7"
    done
    log "   ($extra): HTTP/2, gRPC-like POSTs"
    h2load_ok -n 40000 -c 4 -m 20 -t1 -H 'accept: */*' "$h2/train/h2?q=1"
    h2load_ok -n 20000 -c 2 -m 8 -t1 -d "$WORK/body.bin" -H 'content-type: application/grpc' \
        -H 'te: trailers' "$h2/bench.Echo/Train"
    log "   ($extra): bulk TCP both ways"
    iperf3 -c 127.0.0.1 -p "$CLIENT_TCP" -n 400M >/dev/null
    iperf3 -c 127.0.0.1 -p "$CLIENT_TCP" -n 400M -R >/dev/null
    for side in client server; do
        pid=${sidecar[$side]}
        kill -TERM "$pid"
        wait "$pid" || die "the $side sidecar did not exit cleanly (see $WORK/$side.log)"
    done
}

log "2/3: training run"
train "workers: 1"
train "workers: 2\ntunnel: strict"
shopt -s nullglob
raw=("$PROFILES"/appid-*.profraw)
((${#raw[@]} == 4)) || die "expected the counts of 4 sidecars, found ${#raw[@]} in $PROFILES"
"$PROFDATA" merge -o "$PROFILES/merged.profdata" "${raw[@]}"
# Named by its contents: cargo does not look into the profile a flag names,
# so a new profile under an old name would leave the last build in place.
profile=$PROFILES/appid-$(sha256sum "$PROFILES/merged.profdata" | cut -c1-16).profdata
mv "$PROFILES/merged.profdata" "$profile"

log "3/3: optimized build ($TARGET/pgo)"
(cd "$ROOT" && RUSTFLAGS="$FLAGS-Cprofile-use=$profile" CARGO_TARGET_DIR=$TARGET/pgo \
    cargo build --release --locked -q -p appid-proxy --bin appid)
log "done: $TARGET/pgo/release/appid"
