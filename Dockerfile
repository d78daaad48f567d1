# syntax=docker/dockerfile:1
#
# The appid image: one binary, /usr/local/bin/appid, for all three roles
# in a cluster (see README "Kubernetes"):
#   - appid-proxy, the sidecar `appid inject` adds (runs as uid 1337, the uid
#     the redirect leaves alone: the image's default user);
#   - appid-init, which runs `appid redirect install` as root with NET_ADMIN
#     and NET_RAW, hence iptables (nft and legacy) in the runtime image;
#   - the authority (`appid authority manifests`).
#
#   docker build -t registry.example/appid:0.1.0 .       # profile-guided
#   docker build --build-arg PGO=0 -t registry.example/appid:0.1.0 .
#   docker push registry.example/appid:0.1.0
#   appid inject --image registry.example/appid:0.1.0 app.yaml | kubectl apply -f -
#
# The injected containers give only `args`, so the entrypoint must stay the
# binary (tests/k8s_manifests.rs checks the path and the user).

ARG RUST_VERSION=1.95
ARG DEBIAN=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN} AS build
# PGO=1 (the default): the profile-guided build of bench/pgo.sh, the binary
# the README's performance figures are of (an instrumented build, a
# training run of two sidecars on the build's loopback, a second build
# from its profile: about twice the build time, and nginx, h2load, wrk,
# iperf3 and curl in the build stage only). PGO=0: `cargo build --release`
# (same code and checks; docs/performance.md, "A profile-guided build").
ARG PGO=1
WORKDIR /src
COPY . .
# The target directory is a cache mount, so the binary is copied out in the
# same step. aws-lc-sys and rusqlite's bundled SQLite build with the image's
# C compiler.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    if [ "$PGO" = 1 ]; then \
        rustup component add llvm-tools \
        && bench/pgo.sh \
        && install -D -m 0755 target/pgo/release/appid /out/appid; \
    else \
        cargo build --release --locked -p appid-proxy --bin appid \
        && install -D -m 0755 target/release/appid /out/appid; \
    fi

FROM debian:${DEBIAN}-slim
# iptables: iptables-{nft,legacy}-{save,restore} and the ip6tables ones,
# which `appid redirect` runs.
RUN apt-get update \
    && apt-get install -y --no-install-recommends iptables ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/appid /usr/local/bin/appid
USER 1337:1337
ENTRYPOINT ["/usr/local/bin/appid"]
CMD ["--help"]
