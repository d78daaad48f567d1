# Pieces bench/e2e/run.sh, bench/e2e/instructions.sh and bench/pgo.sh share,
# so that all three run the same pair: its certificates, the backend, the
# sidecars' policy and configs, and the ports of the loopback pair (below).
# Sourced; the functions read the caller's globals WORK and APPID and the
# ports.

# Ports. Load generator -> CLIENT_* (client sidecar, plaintext) ->
# SERVER_* (server sidecar, mTLS) -> BACKEND_* (plaintext); the sidecars'
# admin ports. The backend listens on BACKEND_BIND (127.0.0.1 unless the caller
# set it; run.sh's mesh moves it to 0.0.0.0).
BACKEND_BIND=${BACKEND_BIND:-127.0.0.1}
BACKEND_H1=18080 BACKEND_H2=18081 BACKEND_TCP=18201
CLIENT_H1=20080 CLIENT_H2=20081 CLIENT_TCP=20201
SERVER_H1=21080 SERVER_H2=21081 SERVER_TCP=21201
ADMIN_CLIENT=15190 ADMIN_SERVER=15191

# wait_port PORT PID NAME: waits (up to 60 s) until something listens on
# 127.0.0.1:PORT; fails, showing $WORK/NAME.log, if process PID exits first.
# Uses the caller's `die`.
wait_port() {
    local i
    for ((i = 0; i < 600; i++)); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return
        kill -0 "$2" 2>/dev/null || { cat "$WORK/$3.log" >&2; die "$3 exited"; }
        sleep 0.1
    done
    cat "$WORK/$3.log" >&2
    die "$3: nothing listens on $1"
}

# The scratch state of instructions.sh and pgo.sh: the processes they
# start (PIDS) are killed and their directory (WORK) removed on exit:
# `PIDS=(); trap cleanup_scratch EXIT`.
cleanup_scratch() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}

# start_scratch_backend [tcp]: nginx on the backend ports (and with `tcp`
# an iperf3 server on BACKEND_TCP), their PIDs added to PIDS; returns once
# they listen. (run.sh starts its own, pinned to the load generator's CPU.)
start_scratch_backend() {
    write_backend_conf
    nginx -e "$WORK/backend/error.log" -p "$WORK/backend" -c "$WORK/backend/nginx.conf" >"$WORK/backend.log" 2>&1 &
    PIDS+=($!)
    wait_port "$BACKEND_H1" "$!" backend
    if [[ ${1:-} == tcp ]]; then
        iperf3 -s -B "$BACKEND_BIND" -p "$BACKEND_TCP" >"$WORK/iperf3.log" 2>&1 &
        PIDS+=($!)
        wait_port "$BACKEND_TCP" "$!" iperf3
    fi
}

# setup_pki: a CA in $WORK/ca, the load generator's (client) and the
# backend's (server) certificates and keys in $WORK, the CA certificate as
# $WORK/ca.pem, and cert+key files for haproxy.
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

# write_backend_conf: $WORK/backend/nginx.conf, `return 200` on
# $BACKEND_BIND:$BACKEND_H1 (HTTP/1.1) and :$BACKEND_H2 (h2c).
write_backend_conf() {
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
        listen $BACKEND_BIND:$BACKEND_H1 backlog=4096;
        location / { return 200 "hello from the backend\n"; }
    }
    server {
        listen $BACKEND_BIND:$BACKEND_H2 http2 backlog=4096;
        location / { return 200 "hello from the backend\n"; }
    }
}
EOF
}

# appid_policy FILE H1_PORT H2_PORT TCP_PORT LAYER: the sidecars' policy.
# LAYER l7: every HTTP request is authorized (method, and path for the
# gRPC-like calls), the TCP port at L4; l4: identities and ports only.
appid_policy() {
    local file=$1 h1=$2 h2=$3 tcp=$4 layer=$5
    if [[ $layer == l4 ]]; then
        cat >"$file" <<EOF
version: 1
default: deny
rules:
  - name: loadgen-l4            # L4: identities and ports, no request read
    action: allow
    from: { labels.app: loadgen }
    to: { labels.app: backend, ports: [$h1, $h2, $tcp] }
EOF
    else
        cat >"$file" <<EOF
version: 1
default: deny
rules:
  - name: loadgen-http          # L7: every request is authorized
    action: allow
    from: { labels.app: loadgen }
    to: { labels.app: backend, ports: [$h1, $h2] }
    http: { methods: [GET] }
  - name: loadgen-grpc          # L7: the fixed-rate gRPC-like calls
    action: allow
    from: { labels.app: loadgen }
    to: { labels.app: backend, ports: [$h2] }
    http: { methods: [POST], paths: ["/bench.Echo/*"] }
  - name: loadgen-tcp           # L4: iperf3
    action: allow
    from: { labels.app: loadgen }
    to: { labels.app: backend, ports: [$tcp] }
EOF
    fi
    "$APPID" policy check "$file" >/dev/null
}

# appid_config SIDE DIR SECTION LISTENER...: writes DIR/SIDE.yaml (SIDE
# server or client) with its identity, the shared policy, its admin port
# and audit log, and SECTION (inbound or outbound) listing the listeners.
appid_config() {
    local side=$1 dir=$2 section=$3 admin=$ADMIN_SERVER
    shift 3
    [[ $side == client ]] && admin=$ADMIN_CLIENT
    {
        echo "identity: { cert: $WORK/$side.pem, key: $WORK/$side.key, bundle: $WORK/ca.pem }"
        echo "trust_domains: [bench.example]"
        echo "policy: $dir/policy.yaml"
        echo "$section:"
        printf '  - %s\n' "$@"
        echo "admin: \"127.0.0.1:$admin\""
        echo "audit_log: $WORK/audit/$side.jsonl"
    } >"$dir/$side.yaml"
}

# loopback_pair_configs DIR: DIR/server.yaml and DIR/client.yaml of the
# loopback pair (appid_config): the server's three listeners forward to the
# backend's HTTP/1.1, HTTP/2 and TCP ports, the client's to the server's.
# Reads the caller's SERVER_*, CLIENT_* and BACKEND_* ports.
loopback_pair_configs() {
    local dir=$1
    appid_config server "$dir" inbound \
        "{ listen: \"127.0.0.1:$SERVER_H1\", forward: \"127.0.0.1:$BACKEND_H1\" }" \
        "{ listen: \"127.0.0.1:$SERVER_H2\", forward: \"127.0.0.1:$BACKEND_H2\" }" \
        "{ listen: \"127.0.0.1:$SERVER_TCP\", forward: \"127.0.0.1:$BACKEND_TCP\" }"
    appid_config client "$dir" outbound \
        "{ listen: \"127.0.0.1:$CLIENT_H1\", upstream: \"127.0.0.1:$SERVER_H1\" }" \
        "{ listen: \"127.0.0.1:$CLIENT_H2\", upstream: \"127.0.0.1:$SERVER_H2\" }" \
        "{ listen: \"127.0.0.1:$CLIENT_TCP\", upstream: \"127.0.0.1:$SERVER_TCP\" }"
}
