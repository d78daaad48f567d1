#!/usr/bin/env bash
# Builds Istio's ztunnel, the peer of `bench/e2e/run.sh --mesh` (issue 19),
# from its public source. Not run by CI or by run.sh: a build takes about
# 10 minutes on 2 cores. Prints the BENCH_ZTUNNEL_BIN to give run.sh.
#
#   bench/e2e/build-ztunnel.sh [SRC]     # SRC: a checkout of istio/ztunnel
#                                        # (default: cloned into target/ztunnel)
#   BENCH_ZTUNNEL_PREPARE_ONLY=1 bench/e2e/build-ztunnel.sh SRC   # patch and resolve, no build
#
# What it does to the source, and why:
# - drops the optional `boring-rustls-provider` git dependency and the
#   `tls-boring` feature that uses it: cargo resolves git dependencies even
#   when they are optional, and the benchmark runs ztunnel's default rustls
#   provider (aws-lc, as appid's);
# - builds with the `testing` feature, which gives ztunnel the fake CA the
#   mesh benchmark runs it with (no istiod);
# - needs `protoc` (Debian: protobuf-compiler), installed when run as root.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SRC=${1:-$ROOT/target/ztunnel}
die() {
    echo "build-ztunnel: $*" >&2
    exit 1
}

if [[ ! -f $SRC/Cargo.toml ]]; then
    [[ $# -eq 0 ]] || die "$SRC has no Cargo.toml: give a checkout of https://github.com/istio/ztunnel"
    git clone --depth 1 https://github.com/istio/ztunnel "$SRC" ||
        die "could not clone istio/ztunnel into $SRC; clone it yourself and give its path"
fi
grep -q '^name = "ztunnel"' "$SRC/Cargo.toml" || die "$SRC/Cargo.toml is not ztunnel's"

if ! command -v protoc >/dev/null; then
    [[ $(id -u) == 0 ]] || die "protoc is missing: apt-get install -y protobuf-compiler"
    apt-get install -y protobuf-compiler >/dev/null
fi

sed -i -e '/^tls-boring *=/d' -e '/^boring-rustls-provider *=/d' "$SRC/Cargo.toml"
if grep -q 'boring-rustls-provider' "$SRC/Cargo.toml"; then
    die "$SRC/Cargo.toml still names boring-rustls-provider (a newer layout?): remove it and the features that use it"
fi

cd "$SRC"
if [[ ${BENCH_ZTUNNEL_PREPARE_ONLY:-0} == 1 ]]; then
    cargo metadata --format-version 1 >/dev/null
    echo "prepared $SRC (cargo resolves it); to build: cargo build --release --features testing --bin ztunnel"
    exit 0
fi
cargo build --release --features testing --bin ztunnel
echo "BENCH_ZTUNNEL_BIN=$SRC/target/release/ztunnel"
