//! End-to-end tests of `appid proxy` (issue 4 acceptance), driving the real
//! binary as separate processes. The usual topology (see `support/mesh.rs`):
//!
//! ```text
//! client ──▶ client sidecar ──mTLS appid/1──▶ server sidecar ──▶ app
//!            (explicit outbound, web)          (explicit inbound, api)
//! ```
//!
//! Covered:
//! - HTTP/1.1 (curl), HTTP/2 with prior knowledge (curl), gRPC unary and
//!   server-streaming (hand-framed over hyper h2c) through the pair; the app
//!   sees `x-appid-peer-id`/`x-appid-peer` of the caller and never a spoofed
//!   `x-appid-*` header; streamed gRPC messages are not buffered.
//! - Opaque TCP: a 100 MiB stream echoed through the pair is unchanged
//!   (sha256 both ways; throughput printed).
//! - Denials, each with its audit line naming the rule: by vulnerability
//!   claims (a Trivy SchemaVersion 2 report written here, and the real
//!   `alpine-39.json` fixture when `../shared` exists) as HTTP 403
//!   `x-appid-denied-by` and gRPC `grpc-status: 7`; by port as 403 and as a
//!   closed TCP connection; by HTTP path/method (deny rule and default).
//! - Handshakes: `openssl s_client -alpn appid/1` with a cert from another
//!   CA, an expired cert, or no cert is refused and reaches no app (a valid
//!   cert, same command, gets through); a plain TCP/HTTP client is refused
//!   unless an `unauthenticated` rule allows its CIDR (one for 10.0.0.0/8
//!   does not), and then the app sees no `x-appid-*` header at all.
//! - Certificate swap on disk: an open HTTP/1.1 keep-alive session goes on
//!   on the same connection; the next handshake presents the new cert.
//! - A reload decides the next request of a live HTTP connection afresh,
//!   also what the connection settled about the rules (its `from`/`to`).
//! - Policy reload withdrawing a live opaque TCP connection closes it (and
//!   audits it). Under an L4 policy the client sidecar decides an HTTP
//!   connection once and the server still every request; a reload that
//!   adds an `http` rule closes the connection decided once, and such a
//!   connection outlasts the client's `http_idle_timeout` on a slow response.
//! - `limits.max_connections`: excess refused, `/live` still answers, a new
//!   connection is admitted once an old one closes; a client that sends one
//!   byte and stalls is dropped at `limits.detect_timeout`.
//! - SIGTERM with a request in flight: it completes, both sidecars exit 0.
//!
//! Needs `curl` and `openssl` on the PATH (CI installs them).

#[path = "support/mod.rs"]
mod support;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::apps::{EchoServer, GRPC_STREAM, GRPC_UNARY, HttpApp};
use support::clients::{CurlResponse, H1Session, curl, first_pem_cert, s_client};
use support::grpc::GrpcClient;
use support::mesh::{Env, Mesh, MeshOptions, TRUST_DOMAIN, WEB_PATH, WEB_TO_API};
use support::net::{
    self, Closed, connect_and_echo, connect_from_and_echo, echo_once, expect_closed, free_port,
    local,
};
use support::pki::{Ca, Cert, claims_of, replace_file};
use support::sidecar::{Sidecar, has};

const SPOOFED_ID: &str = "spiffe://test.example/spoofed";

/// `web` may GET `/v1/**` from `api`, and nothing else.
const WEB_READS_V1: &str = "\
version: 1
default: deny
rules:
  - name: web-reads-v1
    action: allow
    from: { labels.app: web }
    to: { labels.app: api }
    http: { methods: [GET], paths: [\"/v1/**\"] }
";

// ---------------------------------------------------------------------------
// Helpers

/// The headers the app saw (`name` → values), from its JSON echo.
fn app_header<'a>(echo: &'a Value, name: &str) -> Vec<&'a str> {
    echo["headers"][name]
        .as_array()
        .map(|values| values.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// The app saw exactly the sidecar's identity headers for `caller`, and
/// nothing the caller made up.
fn assert_peer_headers(echo: &Value, caller: &Cert) {
    assert_eq!(
        app_header(echo, "x-appid-peer-id"),
        [caller.id.as_str()],
        "{echo:#}"
    );
    let claims = app_header(echo, "x-appid-peer");
    assert_eq!(claims.len(), 1, "one x-appid-peer header: {echo:#}");
    let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(claims[0])
        .expect("x-appid-peer is base64url");
    let claims: Value = serde_json::from_slice(&decoded).expect("x-appid-peer is AppID JSON");
    assert_eq!(claims["id"], caller.id.as_str(), "{claims:#}");
    assert_eq!(claims["labels"]["app"], "web", "{claims:#}");
    assert!(
        app_header(echo, "x-appid-extra").is_empty(),
        "a caller's x-appid-* header reached the app: {echo:#}"
    );
}

/// Sends the spoofing headers every identity test uses.
const SPOOF: [&str; 6] = [
    "-H",
    "x-appid-peer-id: spiffe://test.example/spoofed",
    "-H",
    "x-appid-peer: eyJpZCI6ImZha2UifQ",
    "-H",
    "x-appid-extra: made-up",
];

/// A 403 from a sidecar naming `rule`, with a one-line body.
fn assert_denied(response: &CurlResponse, rule: &str) {
    assert_eq!(response.status, 403, "{response:?}");
    assert_eq!(
        response.header("x-appid-denied-by"),
        Some(rule),
        "{response:?}"
    );
    assert_eq!(
        response.body.trim_end().lines().count(),
        1,
        "one-line body: {response:?}"
    );
    assert!(
        response.body.contains(rule),
        "body names the rule: {response:?}"
    );
}

fn is_deny(line: &Value, rule: &str) -> bool {
    has(line, "decision", "deny") && has(line, "rule", rule)
}

/// `GET path` via curl through the pair.
async fn get(mesh: &Mesh, path: &str) -> CurlResponse {
    curl(&[&mesh.url(path)]).await
}

/// [`WEB_TO_API`] plus one more rule (YAML, indented as a list item).
fn with_rule(rule: &str) -> String {
    format!("{WEB_TO_API}{rule}")
}

/// A Trivy `--format json` (SchemaVersion 2) report of an Alpine image with
/// two critical, one high and one medium finding.
fn write_trivy_report(path: &Path) {
    let vuln = |id: &str, pkg: &str, installed: &str, fixed: &str, severity: &str| {
        json!({
            "VulnerabilityID": id,
            "PkgID": format!("{pkg}@{installed}"),
            "PkgName": pkg,
            "PkgIdentifier": {
                "PURL": format!("pkg:apk/alpine/{pkg}@{installed}?arch=x86_64&distro=3.9.4")
            },
            "InstalledVersion": installed,
            "FixedVersion": fixed,
            "Status": "fixed",
            "Layer": {
                "Digest": "sha256:e7c96db7181be991f19a9fb6975cdbbd73c65f4a2681348e63a141a2192a5f10",
                "DiffID": "sha256:f1b5933fe4b5f49bbe8258745cf396afe07e625bdab3168e364daf7c956b6b81"
            },
            "SeveritySource": "nvd",
            "PrimaryURL": format!("https://avd.aquasec.com/nvd/{}", id.to_lowercase()),
            "Title": format!("{pkg}: {id}"),
            "Severity": severity
        })
    };
    let report = json!({
        "SchemaVersion": 2,
        "CreatedAt": "2026-11-20T10:00:00.000000000Z",
        "ArtifactName": "registry.example/legacy:1.0",
        "ArtifactType": "container_image",
        "Metadata": {
            "OS": { "Family": "alpine", "Name": "3.9.4", "EOSL": true },
            "ImageID": "sha256:055936d3920576da37aa9bc460d70c5f212028bda1c08c0879aedf03d7a66ea1",
            "DiffIDs": ["sha256:f1b5933fe4b5f49bbe8258745cf396afe07e625bdab3168e364daf7c956b6b81"],
            "RepoTags": ["registry.example/legacy:1.0"],
            "RepoDigests": [
                "registry.example/legacy@sha256:8b5e3e1e0a47b1d8f4e5fbd5c0c1a0d7c9c8f1f2f3e4d5c6b7a8998877665544"
            ]
        },
        "Results": [{
            "Target": "registry.example/legacy:1.0 (alpine 3.9.4)",
            "Class": "os-pkgs",
            "Type": "alpine",
            "Vulnerabilities": [
                vuln("CVE-2019-14697", "musl", "1.1.20-r4", "1.1.20-r5", "CRITICAL"),
                vuln("CVE-2019-14697", "musl-utils", "1.1.20-r4", "1.1.20-r5", "CRITICAL"),
                vuln("CVE-2019-5747", "busybox", "1.29.3-r10", "1.30.1-r2", "HIGH"),
                vuln("CVE-2019-1549", "libssl1.1", "1.1.1b-r1", "1.1.1d-r0", "MEDIUM")
            ]
        }]
    });
    std::fs::write(path, serde_json::to_vec_pretty(&report).unwrap()).unwrap();
}

// ---------------------------------------------------------------------------
// Through the pair: HTTP/1.1, HTTP/2, gRPC, TCP

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_reaches_the_app_with_the_callers_spiffe_id_and_no_spoofed_header() {
    let app = HttpApp::start().await;
    let mesh = Mesh::start(app.addr, MeshOptions::default()).await;

    let mut args = SPOOF.to_vec();
    let url = mesh.url("/v1/hello?x=1");
    args.push(&url);
    let response = curl(&args).await;
    assert_eq!(response.status, 200, "{response:?}\n{}", mesh.context());
    assert_eq!(response.version, "HTTP/1.1");
    let echo = response.json();
    assert_eq!(echo["version"], "HTTP/1.1");
    assert_eq!(echo["path"], "/v1/hello");
    assert_peer_headers(&echo, &mesh.web);

    let line = mesh
        .server
        .wait_audit("inbound allow of GET /v1/hello", |l| {
            has(l, "direction", "inbound")
                && has(l, "decision", "allow")
                && has(l, "path", "/v1/hello")
        })
        .await;
    assert_eq!(line["rule"], "web-to-api");
    assert_eq!(line["peer_id"], mesh.web.id.as_str());
    assert_eq!(line["method"], "GET");
    assert_eq!(line["protocol"], "http1");
    assert_eq!(line["port"], mesh.inbound);
    let inbound_app_addr = line["app_addr"].clone();
    let line = mesh
        .client
        .wait_audit("outbound allow of GET /v1/hello", |l| {
            has(l, "direction", "outbound") && has(l, "decision", "allow")
        })
        .await;
    assert_eq!(
        line["peer_id"],
        mesh.env.api.id.as_str(),
        "outbound names the server"
    );
    assert_eq!(
        line["port"], mesh.inbound,
        "outbound sees the upstream port"
    );
    // Outbound, `peer_addr` is where the app called (the server sidecar)
    // and `app_addr` the app itself (curl, on loopback).
    assert_eq!(line["peer_addr"], mesh.inbound_addr().to_string(), "{line}");
    let app_addr = line["app_addr"].as_str().unwrap_or_default();
    assert!(app_addr.starts_with("127.0.0.1:"), "{line}");
    assert_ne!(app_addr, line["peer_addr"].as_str().unwrap_or_default());
    // Inbound (a pooled tunnel stream), `peer_addr` is the client sidecar
    // and `app_addr` the calling app, as that sidecar reported it.
    assert_eq!(inbound_app_addr, app_addr, "inbound app_addr");
}

/// A keep-alive connection's first request line is encoded whole; from
/// its second request on, the fields every line of the connection shares
/// are kept encoded (`audit::ConnectionFields`). Both kinds of line must
/// say the same: three requests on one connection, over HTTP/1.1 and over
/// HTTP/2, each side's three lines alike but for time and path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_of_a_keep_alive_connection_is_audited_alike() {
    // HTTP rules on both sides: each request is decided (and audited) by
    // the client's sidecar as well as the server's.
    let policy = WEB_READS_V1;
    let app = HttpApp::start().await;
    let mesh = Mesh::start(
        app.addr,
        MeshOptions {
            server_policy: policy.into(),
            client_policy: policy.into(),
            ..MeshOptions::default()
        },
    )
    .await;
    for version in ["http1", "http2"] {
        let paths: Vec<String> = (1..=3).map(|i| format!("/v1/{version}/kept{i}")).collect();
        if version == "http1" {
            let urls: Vec<String> = paths.iter().map(|p| mesh.url(p)).collect();
            let mut args = vec!["--http1.1"];
            args.extend(urls.iter().map(String::as_str));
            let response = curl(&args).await;
            assert_eq!(response.status, 200, "{response:?}\n{}", mesh.context());
        } else {
            // Not curl: 7.88 fails to reuse an h2c connection
            // (curl/curl#10634, fixed in 8.0).
            let tcp = TcpStream::connect(mesh.outbound_addr()).await.unwrap();
            let (mut sender, connection) = hyper::client::conn::http2::handshake(
                hyper_util::rt::TokioExecutor::new(),
                hyper_util::rt::TokioIo::new(tcp),
            )
            .await
            .expect("h2c handshake");
            tokio::spawn(connection);
            for path in &paths {
                let request = hyper::Request::get(mesh.url(path))
                    .body(http_body_util::Empty::<bytes::Bytes>::new())
                    .unwrap();
                let response = sender.send_request(request).await.expect("a response");
                assert_eq!(response.status(), 200, "{path}\n{}", mesh.context());
            }
        }
        for (side, direction) in [(&mesh.client, "outbound"), (&mesh.server, "inbound")] {
            let last = &paths[2];
            side.wait_audit(&format!("{direction} allow of {last}"), |l| {
                has(l, "direction", direction) && has(l, "path", last)
            })
            .await;
            // Compared as written (byte for byte, key order included),
            // less what differs by request: the time, the path, and the
            // documents (`appids`) a file's first line carries.
            let text = std::fs::read_to_string(&side.audit).unwrap();
            let raw: Vec<&str> = text
                .lines()
                .filter(|l| {
                    l.contains(&format!("\"direction\":\"{direction}\""))
                        && paths
                            .iter()
                            .any(|p| l.contains(&format!("\"path\":\"{p}\"")))
                })
                .collect();
            assert_eq!(raw.len(), 3, "{direction} {version}: {raw:?}");
            let shared = |line: &str| -> String {
                let line = match line.find(",\"appids\":") {
                    Some(at) => format!("{}}}", &line[..at]),
                    None => line.to_string(),
                };
                let after_time = line.find("\",\"direction\"").unwrap();
                let mut line = format!("{{\"time\":\"T{}", &line[after_time..]);
                for path in &paths {
                    line = line.replace(path.as_str(), "P");
                }
                line
            };
            for line in &raw[1..] {
                assert_eq!(shared(line), shared(raw[0]), "{direction} {version}");
            }
            let lines: Vec<Value> = raw
                .iter()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            let first = &lines[0];
            assert_eq!(first["protocol"], version, "{first}");
            for field in [
                "peer_id",
                "peer_addr",
                "app_addr",
                "peer_appid",
                "local_appid",
            ] {
                assert!(
                    first[field].is_string(),
                    "{direction} {version}: {field} in {first}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_prior_knowledge_reaches_the_app_with_the_callers_spiffe_id() {
    let app = HttpApp::start().await;
    let mesh = Mesh::start(app.addr, MeshOptions::default()).await;

    let mut args = vec!["--http2-prior-knowledge"];
    args.extend(SPOOF);
    let url = mesh.url("/v1/h2");
    args.push(&url);
    let response = curl(&args).await;
    assert_eq!(response.status, 200, "{response:?}\n{}", mesh.context());
    assert_eq!(
        response.version, "HTTP/2",
        "curl spoke h2 to the client sidecar"
    );
    let echo = response.json();
    assert_eq!(
        echo["version"], "HTTP/2.0",
        "the app got h2 end to end: {echo:#}"
    );
    assert_peer_headers(&echo, &mesh.web);
    let line = mesh
        .server
        .wait_audit("an allow of GET /v1/h2", |l| has(l, "path", "/v1/h2"))
        .await;
    assert_eq!(line["decision"], "allow");
    assert_eq!(line["protocol"], "http2");
    // Under this L4 policy the client sidecar decided the connection once.
    let line = mesh
        .client
        .wait_audit("the outbound decision", |l| has(l, "direction", "outbound"))
        .await;
    assert_eq!(line["protocol"], "http2", "{line}");
    assert!(line.get("path").is_none(), "one line, no request: {line}");
}

/// `appid_bytes_total` counts HTTP traffic too, both HTTP/1.1 and HTTP/2,
/// on both sidecars, while the connection is still open. (A sidecar counts
/// bytes once it has written them, which may be just after the caller read
/// them: each check waits up to 5 s for the counts to get there.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_are_counted_for_http_as_they_move() {
    let app = HttpApp::start().await;
    let mesh = Mesh::start(app.addr, MeshOptions::default()).await;
    let counted = || async {
        (
            mesh.client
                .metric("appid_bytes_total{direction=\"outbound\"}")
                .await,
            mesh.server
                .metric("appid_bytes_total{direction=\"inbound\"}")
                .await,
        )
    };
    // The counts once both are above `floor` (or as they are after 5 s).
    let counted_past = |floor: (f64, f64)| async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let now = counted().await;
            if (now.0 > floor.0 && now.1 > floor.1) || tokio::time::Instant::now() >= deadline {
                return now;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    assert_eq!(counted().await, (0.0, 0.0));

    let mut session = H1Session::connect(mesh.outbound_addr()).await;
    let (status, _) = session.get("/v1/counted").await.unwrap();
    assert_eq!(status, 200, "{}", mesh.context());
    let (client, server) = counted_past((100.0, 100.0)).await;
    assert!(
        client > 100.0 && server > 100.0,
        "HTTP/1.1, session still open: client {client}, server {server}\n{}",
        mesh.context()
    );

    let url = mesh.url("/v1/counted-h2");
    let response = curl(&["--http2-prior-knowledge", &url]).await;
    assert_eq!(response.status, 200, "{response:?}\n{}", mesh.context());
    let (client_after, server_after) = counted_past((client + 100.0, server + 100.0)).await;
    assert!(
        client_after > client + 100.0 && server_after > server + 100.0,
        "HTTP/2: client {client} -> {client_after}, server {server} -> {server_after}"
    );
}

/// The operator's metrics besides traffic: handshake and decision latency
/// histograms fill with traffic, the process's own facts and the build are
/// exported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_decision_process_and_build_metrics_are_exported() {
    let app = HttpApp::start().await;
    let mesh = Mesh::start(app.addr, MeshOptions::default()).await;
    let response = curl(&[&mesh.url("/v1/metrics")]).await;
    assert_eq!(response.status, 200, "{response:?}\n{}", mesh.context());
    for (sidecar, direction) in [(&mesh.client, "outbound"), (&mesh.server, "inbound")] {
        for histogram in [
            "appid_handshake_duration_seconds",
            "appid_authz_decision_duration_seconds",
        ] {
            let count = sidecar
                .metric(&format!("{histogram}_count{{direction=\"{direction}\"}}"))
                .await;
            assert!(count >= 1.0, "{histogram} {direction}: {count}");
        }
        assert!(sidecar.metric("appid_process_resident_memory_bytes").await > 1e6);
        assert!(sidecar.metric("appid_process_open_fds").await > 3.0);
        assert!(sidecar.metric("appid_process_max_fds").await > 0.0);
        assert!(sidecar.metric("appid_process_cpu_seconds_total").await > 0.0);
        let version = format!(
            "appid_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(sidecar.metric(&version).await, 1.0);
    }
}

/// `log_format: json` reaches the running sidecar: every line it writes to
/// stderr is a JSON object (the default is text, which is not).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_format_json_makes_every_log_line_json() {
    let env = Env::new();
    let app = HttpApp::start().await;
    let policy = env.policy("policy.yaml", WEB_TO_API);
    for (format, json) in [("json", true), ("text", false)] {
        let sidecar = env
            .sidecar(&format!("logs-{format}"), &env.api, &policy)
            .inbound(free_port(), app.addr)
            .setting("log_format", format)
            .start()
            .await;
        let stderr = std::fs::read_to_string(&sidecar.stderr).unwrap();
        let lines: Vec<&str> = stderr.lines().collect();
        assert!(!lines.is_empty(), "{format}: the sidecar logged nothing");
        for line in lines {
            let parsed = serde_json::from_str::<Value>(line).ok();
            assert_eq!(
                parsed.as_ref().is_some_and(Value::is_object),
                json,
                "{format}: {line}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_and_server_streaming_calls_pass_through() {
    let app = HttpApp::start().await;
    let mesh = Mesh::start(app.addr, MeshOptions::default()).await;
    let mut client = GrpcClient::connect(mesh.outbound_addr()).await;

    let reply = client.call(GRPC_UNARY, b"hello over grpc", |_| {}).await;
    assert_eq!(reply.http_status, 200, "{reply:?}\n{}", mesh.context());
    assert_eq!(reply.grpc_status(), Some("0"), "{reply:?}");
    assert_eq!(reply.messages, [b"hello over grpc".to_vec()]);
    assert_eq!(
        reply.header("x-seen-peer-id"),
        Some(mesh.web.id.as_str()),
        "the app saw the caller's ID, not the spoofed one ({SPOOFED_ID})"
    );

    // Streaming: the app holds back message 2.. until we have message 1,
    // so this only completes if the sidecars forward messages as they come.
    let state = app.state.clone();
    let mut received = 0;
    let reply = client
        .call(GRPC_STREAM, &[5], |_| {
            received += 1;
            if received == 1 {
                state.stream_first_received.notify_one();
            }
        })
        .await;
    assert_eq!(
        reply.grpc_status(),
        Some("0"),
        "{reply:?}\n{}",
        mesh.context()
    );
    let messages: Vec<String> = reply
        .messages
        .iter()
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .collect();
    assert_eq!(
        messages,
        ["count 0", "count 1", "count 2", "count 3", "count 4"]
    );

    let line = mesh
        .server
        .wait_audit("an allow of the streaming call", |l| {
            has(l, "path", GRPC_STREAM)
        })
        .await;
    assert_eq!(line["decision"], "allow");
    assert_eq!(line["method"], "POST");
    assert_eq!(line["peer_id"], mesh.web.id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_echo_of_100_mib_is_byte_exact() {
    use aws_lc_rs::digest::{Context, SHA256};
    const TOTAL: usize = 100 * 1024 * 1024;
    const CHUNK: usize = 64 * 1024;

    let echo = EchoServer::start().await;
    let mesh = Mesh::start(echo.addr, MeshOptions::default()).await;
    let stream = TcpStream::connect(mesh.outbound_addr()).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let start = Instant::now();

    // Pseudo-random bytes, generated and hashed as they are sent: memory
    // stays at one chunk each way.
    let writer = tokio::spawn(async move {
        let mut hash = Context::new(&SHA256);
        let mut state = 0x9E37_79B9_7F4A_7C15_u64;
        let mut buffer = vec![0u8; CHUNK];
        let mut sent = 0;
        while sent < TOTAL {
            for word in buffer.chunks_exact_mut(8) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                word.copy_from_slice(&state.to_le_bytes());
            }
            if sent == 0 {
                // Starts like no protocol the sidecar knows: opaque TCP.
                buffer[..5].copy_from_slice(b"#e2e\n");
            }
            let n = CHUNK.min(TOTAL - sent);
            hash.update(&buffer[..n]);
            write.write_all(&buffer[..n]).await.expect("send");
            sent += n;
        }
        write.shutdown().await.expect("half-close");
        hash.finish()
    });

    let reader = async {
        let mut hash = Context::new(&SHA256);
        let mut buffer = vec![0u8; CHUNK];
        let mut received = 0usize;
        loop {
            let n = read.read(&mut buffer).await.expect("receive");
            if n == 0 {
                break;
            }
            hash.update(&buffer[..n]);
            received += n;
        }
        (received, hash.finish())
    };
    let (received, got) = tokio::time::timeout(Duration::from_secs(120), reader)
        .await
        .unwrap_or_else(|_| panic!("echo not finished after 120 s\n{}", mesh.context()));
    let sent = writer.await.unwrap();
    let elapsed = start.elapsed();
    assert_eq!(received, TOTAL, "bytes echoed\n{}", mesh.context());
    assert_eq!(got.as_ref(), sent.as_ref(), "sha256 of the echo");
    eprintln!(
        "100 MiB echoed through two sidecars in {elapsed:.2?} ({:.0} MiB/s each way)",
        100.0 / elapsed.as_secs_f64()
    );
    let line = mesh
        .server
        .wait_audit("the TCP allow", |l| has(l, "protocol", "tcp"))
        .await;
    assert_eq!(line["decision"], "allow");
    assert_eq!(line["rule"], "web-to-api");
}

// ---------------------------------------------------------------------------
// Denials

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn critical_vulnerabilities_are_denied_by_the_server_with_403_and_grpc_7() {
    // The client side allows anything web → api; the server adds a deny on
    // criticals, so the server's enforcement is what is tested.
    let server_policy = with_rule(
        "  - name: no-criticals
    action: deny
    from: { vulns.critical: { gt: 0 } }
    to: { labels.app: api }
",
    );
    let scratch = tempfile::tempdir().unwrap();
    let own = scratch.path().join("trivy-legacy.json");
    write_trivy_report(&own);
    let mut reports = vec![own];
    if let Some(fixtures) = support::shared_fixtures() {
        reports.push(fixtures.join("trivy/alpine-39.json"));
    }

    for report in reports {
        let app = HttpApp::start().await;
        let mesh = Mesh::start(
            app.addr,
            MeshOptions {
                server_policy: server_policy.clone(),
                web_extra: vec!["--vulns".into(), report.display().to_string()],
                ..MeshOptions::default()
            },
        )
        .await;
        let claims = claims_of(&mesh.web.cert);
        assert_eq!(
            claims["vulns"]["critical"],
            2,
            "{}: {claims:#}",
            report.display()
        );

        let response = get(&mesh, "/v1/orders").await;
        assert_denied(&response, "no-criticals");
        let line = mesh
            .server
            .wait_audit("the no-criticals denial", |l| is_deny(l, "no-criticals"))
            .await;
        assert_eq!(line["direction"], "inbound");
        assert_eq!(line["peer_id"], mesh.web.id.as_str());
        assert_eq!(line["path"], "/v1/orders");
        assert_eq!(line["port"], mesh.inbound);
        assert_eq!(
            line["claims"]["from.vulns.critical"], 2,
            "the audit line shows the claim the rule looked at: {line}"
        );
        assert!(
            line["reason"].as_str().is_some_and(|r| !r.is_empty()),
            "{line}"
        );

        let mut grpc = GrpcClient::connect(mesh.outbound_addr()).await;
        let reply = grpc.call(GRPC_UNARY, b"x", |_| {}).await;
        assert_eq!(reply.grpc_status(), Some("7"), "{reply:?}");
        assert_eq!(reply.header("x-appid-denied-by"), Some("no-criticals"));
        assert!(reply.messages.is_empty());

        assert_eq!(
            app.state.requests.load(Ordering::SeqCst),
            0,
            "nothing reached the app"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_port_closes_tcp_and_answers_http_with_403() {
    let server_policy = with_rule(
        "  - name: closed-port
    action: deny
    from: { labels.app: web }
    to: { ports: [{inbound}] }
",
    );
    let options = || MeshOptions {
        server_policy: server_policy.clone(),
        ..MeshOptions::default()
    };

    // Opaque TCP: the connection is closed, nothing is echoed.
    let echo = EchoServer::start().await;
    let mesh = Mesh::start(echo.addr, options()).await;
    let mut stream = TcpStream::connect(mesh.outbound_addr()).await.unwrap();
    stream.write_all(b"hello\n").await.unwrap();
    expect_closed(&mut stream, Duration::from_secs(10)).await;
    let line = mesh
        .server
        .wait_audit("the closed-port denial", |l| is_deny(l, "closed-port"))
        .await;
    assert_eq!(line["protocol"], "tcp");
    assert_eq!(line["port"], mesh.inbound);
    assert_eq!(line["peer_id"], mesh.web.id.as_str());
    assert_eq!(
        echo.connections.load(Ordering::SeqCst),
        0,
        "the app was never dialled"
    );
    drop(mesh);

    // HTTP on the same kind of port: a 403 naming the rule.
    let app = HttpApp::start().await;
    let mesh = Mesh::start(app.addr, options()).await;
    let response = get(&mesh, "/v1/anything").await;
    assert_denied(&response, "closed-port");
    let line = mesh
        .server
        .wait_audit("the closed-port denial", |l| is_deny(l, "closed-port"))
        .await;
    assert_eq!(line["path"], "/v1/anything");
    assert_eq!(app.state.requests.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_paths_and_grpc_methods_are_authorized_per_request() {
    let server_policy = WEB_READS_V1.to_owned()
        + "  - name: grpc-unary-only
    action: allow
    from: { labels.app: web }
    to: { labels.app: api }
    http: { methods: [POST], paths: [\"/appid.test.Echo/Unary\"] }
  - name: no-admin
    action: deny
    from: { labels.app: web }
    to: { labels.app: api }
    http: { paths: [\"/v1/admin/**\"] }
";
    let app = HttpApp::start().await;
    let mesh = Mesh::start(
        app.addr,
        MeshOptions {
            server_policy,
            ..MeshOptions::default()
        },
    )
    .await;

    // All on one keep-alive connection: decisions are per request.
    let mut session = H1Session::connect(mesh.outbound_addr()).await;
    let (status, echo) = session.get("/v1/items").await.unwrap();
    assert_eq!(status, 200, "{echo}\n{}", mesh.context());
    assert_peer_headers(&echo, &mesh.web);

    let response = get(&mesh, "/v1/admin/users").await;
    assert_denied(&response, "no-admin");
    let response = get(&mesh, "/v2/items").await;
    assert_denied(&response, "default");
    let response = curl(&["-X", "POST", "-d", "x", &mesh.url("/v1/items")]).await;
    assert_denied(&response, "default");
    let (status, _) = session.get("/v1/admin/x").await.unwrap();
    assert_eq!(status, 403, "denied on the live connection too");
    let (status, _) = session.get("/v1/again").await.unwrap();
    assert_eq!(
        status, 200,
        "and the connection still serves allowed requests"
    );

    let mut grpc = GrpcClient::connect(mesh.outbound_addr()).await;
    let reply = grpc.call(GRPC_UNARY, b"ok", |_| {}).await;
    assert_eq!(reply.grpc_status(), Some("0"), "{reply:?}");
    let reply = grpc.call(GRPC_STREAM, &[3], |_| {}).await;
    assert_eq!(reply.grpc_status(), Some("7"), "{reply:?}");
    assert_eq!(reply.header("x-appid-denied-by"), Some("default"));
    assert!(reply.messages.is_empty());

    for (rule, path) in [
        ("no-admin", "/v1/admin/users"),
        ("default", "/v2/items"),
        ("default", GRPC_STREAM),
    ] {
        let line = mesh
            .server
            .wait_audit(&format!("a {rule} denial of {path}"), |l| {
                is_deny(l, rule) && has(l, "path", path)
            })
            .await;
        assert_eq!(line["peer_id"], mesh.web.id.as_str());
        assert!(line["method"].is_string(), "{line}");
    }
    let grpc_line = mesh
        .server
        .wait_audit("the gRPC denial", |l| has(l, "path", GRPC_STREAM))
        .await;
    assert_eq!(grpc_line["protocol"], "grpc");
    // GET /v1/items, GET /v1/again, the unary call.
    assert_eq!(
        app.state.requests.load(Ordering::SeqCst),
        3,
        "only allowed requests reach the app"
    );
}

// ---------------------------------------------------------------------------
// Handshakes and callers outside the mesh

/// Waits until `cert` has expired for a verifier that, like webpki, reads
/// the clock in whole seconds and treats `notAfter` itself as still valid
/// (RFC 5280: the validity period includes it): until the second after it.
async fn wait_expired(cert: &Path) {
    let out = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-enddate", "-in"])
        .arg(cert)
        .output()
        .expect("openssl x509");
    let text = String::from_utf8_lossy(&out.stdout);
    // notAfter=Nov 23 15:12:18 2026 GMT
    let date = text
        .trim()
        .strip_prefix("notAfter=")
        .expect("notAfter line");
    let format = time::macros::format_description!(
        "[month repr:short] [day padding:space] [hour]:[minute]:[second] [year] GMT"
    );
    let not_after = time::PrimitiveDateTime::parse(date, &format)
        .unwrap_or_else(|e| panic!("{date}: {e}"))
        .assume_utc();
    let deadline = not_after + time::Duration::seconds(1);
    let left = deadline - time::OffsetDateTime::now_utc();
    assert!(
        left < time::Duration::seconds(5),
        "a 1s certificate valid until {not_after}"
    );
    if left.is_positive() {
        tokio::time::sleep(left.unsigned_abs() + Duration::from_millis(50)).await;
    }
}

const CLOSE_REQUEST: &[u8] = b"GET /v1/x HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_handshakes_without_a_valid_appid_certificate_are_refused() {
    let env = Env::new();
    let app = HttpApp::start().await;
    let policy = env.policy("policy.yaml", WEB_TO_API);
    let inbound = free_port();
    let server = env
        .sidecar("server", &env.api, &policy)
        .inbound(inbound, app.addr)
        .start()
        .await;

    let other_ca = Ca::init(&env.path("other-ca"), TRUST_DOMAIN);
    let foreign = other_ca.issue(&env.path("foreign"), WEB_PATH, &["app=web"], &[]);
    let expired = env.issue("expired", WEB_PATH, &["app=web"], &["--ttl", "1s"]);
    wait_expired(&expired.cert).await;

    for (what, cert) in [
        ("a certificate from another CA", Some(&foreign)),
        ("an expired certificate", Some(&expired)),
        ("no certificate", None),
    ] {
        let result = s_client(
            local(inbound),
            cert.map(|c| (c.cert.as_path(), c.key.as_path())),
            &[],
            CLOSE_REQUEST,
        )
        .await;
        assert!(
            !result.output.contains("HTTP/1.1"),
            "{what}: got an HTTP answer through the sidecar:\n{}",
            result.output
        );
        assert!(
            result.output.to_lowercase().contains("alert"),
            "{what}: expected a TLS alert from the sidecar:\n{}\n{}",
            result.output,
            server.context()
        );
        assert_eq!(
            app.state.connections.load(Ordering::SeqCst),
            0,
            "{what} reached the app"
        );
    }

    // The same command with a valid certificate gets through: the refusals
    // above are about the certificates, not the client.
    let web = env.issue("web", WEB_PATH, &["app=web"], &[]);
    let result = s_client(
        local(inbound),
        Some((&web.cert, &web.key)),
        &[],
        CLOSE_REQUEST,
    )
    .await;
    assert!(
        result.output.contains("HTTP/1.1 200"),
        "valid certificate: {}\n{}",
        result.output,
        server.context()
    );
    assert!(
        result.output.contains(&web.id),
        "the app saw the SPIFFE ID: {}",
        result.output
    );
}

/// A sidecar in front of a TCP echo and an HTTP app, for callers outside
/// the mesh, with `policy` (where `{ports}` lists both inbound ports).
async fn outside_sidecar(
    env: &Env,
    name: &str,
    policy: &str,
    echo: &EchoServer,
    app: &HttpApp,
) -> (Sidecar, u16, u16) {
    let (tcp_port, http_port) = (free_port(), free_port());
    let policy = env.policy(
        &format!("{name}-policy.yaml"),
        &policy.replace("{ports}", &format!("[{tcp_port}, {http_port}]")),
    );
    let sidecar = env
        .sidecar(name, &env.api, &policy)
        .inbound(tcp_port, echo.addr)
        .inbound(http_port, app.addr)
        .start()
        .await;
    (sidecar, tcp_port, http_port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_clients_are_refused_unless_an_unauthenticated_rule_allows_their_cidr() {
    let env = Env::new();
    let echo = EchoServer::start().await;
    let app = HttpApp::start().await;

    // With a rule for other sources only (a load balancer's 10.0.0.0/8):
    // TCP closed, HTTP 403, both audited.
    let lb_only = with_rule(
        "  - name: lb-only
    action: allow
    from: { unauthenticated: { cidrs: [\"10.0.0.0/8\"] } }
    to: { labels.app: api, ports: {ports} }
",
    );
    let (closed, tcp_port, http_port) =
        outside_sidecar(&env, "closed", &lb_only, &echo, &app).await;
    let mut stream = TcpStream::connect(local(tcp_port)).await.unwrap();
    stream.write_all(b"hello\n").await.unwrap();
    expect_closed(&mut stream, Duration::from_secs(10)).await;
    let line = closed
        .wait_audit("a TCP denial", |l| {
            is_deny(l, "default") && has(l, "protocol", "tcp")
        })
        .await;
    assert_eq!(
        line["peer_id"],
        Value::Null,
        "no identity outside the mesh: {line}"
    );
    assert_eq!(line["port"], tcp_port);
    let response = curl(&[&format!("http://127.0.0.1:{http_port}/v1/x")]).await;
    assert_denied(&response, "default");
    assert_eq!(echo.connections.load(Ordering::SeqCst), 0);
    assert_eq!(app.state.requests.load(Ordering::SeqCst), 0);

    // With `unauthenticated: { cidrs: [127.0.0.0/8] }`: both get through,
    // and the HTTP app sees no identity headers (spoofed ones stripped).
    let open_policy = with_rule(
        "  - name: local-plain
    action: allow
    from: { unauthenticated: { cidrs: [\"127.0.0.0/8\"] } }
    to: { labels.app: api, ports: {ports} }
",
    );
    let (open, tcp_port, http_port) =
        outside_sidecar(&env, "open", &open_policy, &echo, &app).await;
    connect_and_echo(local(tcp_port), b"hello\n")
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", open.context()));
    let mut args = SPOOF.to_vec();
    let url = format!("http://127.0.0.1:{http_port}/v1/x");
    args.push(&url);
    let response = curl(&args).await;
    assert_eq!(response.status, 200, "{response:?}\n{}", open.context());
    let echoed = response.json();
    for name in ["x-appid-peer-id", "x-appid-peer", "x-appid-extra"] {
        assert!(
            app_header(&echoed, name).is_empty(),
            "{name} reached the app: {echoed:#}"
        );
    }
    let line = open
        .wait_audit("the local-plain allow", |l| {
            has(l, "rule", "local-plain") && has(l, "protocol", "tcp")
        })
        .await;
    assert_eq!(line["decision"], "allow");
    assert_eq!(line["peer_id"], Value::Null);
}

// ---------------------------------------------------------------------------
// Live changes: certificate swap, policy reload

/// The claims of the certificate the server sidecar presents now.
async fn presented_claims(inbound: u16, client: &Cert, scratch: &Path) -> Value {
    let result = s_client(
        local(inbound),
        Some((&client.cert, &client.key)),
        &["-showcerts"],
        CLOSE_REQUEST,
    )
    .await;
    let pem = first_pem_cert(&result.output)
        .unwrap_or_else(|| panic!("no certificate in s_client output:\n{}", result.output));
    let file = scratch.join("presented.pem");
    std::fs::write(&file, pem).unwrap();
    claims_of(&file)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_swap_keeps_live_sessions_and_applies_to_new_handshakes() {
    let app = HttpApp::start().await;
    // The rule looks at the server's `labels.version` (which v1 lacks), so
    // its audit lines show the claims each connection was made with; one
    // data-plane thread, so that both connections' lines come from one
    // thread's kept claims objects (`sidecar::audit_claims`).
    let policy = WEB_TO_API.replace(
        "to: { labels.app: api }",
        "to: { labels.app: api, labels.version: { not: v9 } }",
    );
    assert_ne!(policy, WEB_TO_API);
    let options = MeshOptions {
        server_policy: policy.clone(),
        client_policy: policy,
        settings: vec![("workers", "1".into())],
        ..MeshOptions::default()
    };
    let mesh = Mesh::start(app.addr, options).await;
    let scratch = mesh.env.path("scratch");
    std::fs::create_dir(&scratch).unwrap();
    let before = presented_claims(mesh.inbound, &mesh.web, &scratch).await;
    assert_eq!(before["labels"].get("version"), None, "{before:#}");

    let mut session = H1Session::connect(mesh.outbound_addr()).await;
    let (status, echo) = session.get("/v1/before").await.unwrap();
    assert_eq!(status, 200, "{echo}\n{}", mesh.context());
    let conn = echo["conn"].clone();

    // Same SPIFFE ID, new claims; written over the files the sidecar uses.
    let next = mesh.env.issue(
        "api-v2",
        support::mesh::API_PATH,
        &["app=api", "version=v2"],
        &[],
    );
    replace_file(&mesh.env.api.cert, &std::fs::read(&next.cert).unwrap());
    replace_file(&mesh.env.api.key, &std::fs::read(&next.key).unwrap());

    let after = support::poll_until(
        "the server sidecar to present the new certificate",
        Duration::from_secs(15),
        || mesh.server.context(),
        || async {
            let claims = presented_claims(mesh.inbound, &mesh.web, &scratch).await;
            (claims["labels"]["version"] == "v2").then_some(claims)
        },
    )
    .await;
    assert_eq!(after["id"], mesh.env.api.id.as_str());

    // The session opened before the swap goes on, on the same connection.
    for i in 0..3 {
        let (status, echo) = session
            .get(&format!("/v1/after/{i}"))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "keep-alive session broken by the swap: {e}\n{}",
                    mesh.context()
                )
            });
        assert_eq!(status, 200, "{echo}");
        assert_eq!(echo["conn"], conn, "same app connection: {echo}");
        assert_peer_headers(&echo, &mesh.web);
    }
    // And a new connection through the pair (new handshake) works too.
    let response = get(&mesh, "/v1/new").await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_ne!(response.json()["conn"], conn, "a new connection");

    // Each connection's audit lines show the claims it was made with: the
    // live session the old ones, the new connection the new ones.
    let line_of = |path: &'static str| {
        let server = &mesh.server;
        async move {
            server
                .wait_audit(path, |l| l["path"] == path && l["decision"] == "allow")
                .await
        }
    };
    for (path, version) in [
        ("/v1/before", None),
        ("/v1/after/2", None),
        ("/v1/new", Some("v2")),
    ] {
        let line = line_of(path).await;
        assert_eq!(
            line["claims"]
                .get("to.labels.version")
                .and_then(Value::as_str),
            version,
            "{line}"
        );
        assert_eq!(line["claims"]["to.labels.app"], "api", "{line}");
        assert_eq!(line["claims"]["from.labels.app"], "web", "{line}");
    }
}

/// An echo app behind a mesh of two sidecars (default options), and one
/// TCP connection through it that has carried a line.
async fn live_tcp_connection() -> (EchoServer, Mesh, TcpStream) {
    let echo = EchoServer::start().await;
    let mesh = Mesh::start(echo.addr, MeshOptions::default()).await;
    let stream = connect_and_echo(mesh.outbound_addr(), b"ping\n")
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", mesh.context()));
    (echo, mesh, stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_reload_closes_a_live_tcp_connection_it_no_longer_allows() {
    let (_echo, mesh, mut stream) = live_tcp_connection().await;

    let cut_off = with_rule(
        "  - name: cut-off
    action: deny
    from: { labels.app: web }
    to: { labels.app: api }
",
    );
    replace_file(&mesh.server_policy, cut_off.as_bytes());
    let changed = Instant::now();
    let closed = expect_closed(&mut stream, Duration::from_secs(10)).await;
    eprintln!(
        "live TCP connection closed {:.2?} after the policy file changed ({closed:?})",
        changed.elapsed()
    );
    assert!(
        changed.elapsed() < Duration::from_secs(5),
        "closed only after {:.2?} (the reload polls every 500 ms)",
        changed.elapsed()
    );
    let line = mesh
        .server
        .wait_audit("the cut-off denial", |l| is_deny(l, "cut-off"))
        .await;
    assert_eq!(line["protocol"], "tcp");
    assert_eq!(line["peer_id"], mesh.web.id.as_str());

    // New connections are refused too.
    let mut again = TcpStream::connect(mesh.outbound_addr()).await.unwrap();
    again.write_all(b"ping\n").await.unwrap();
    expect_closed(&mut again, Duration::from_secs(10)).await;
}

/// A reload applies to the next request of a live HTTP connection, also
/// where it changes what the connection settled: from its third request
/// on, the server sidecar keeps which rules passed their `from`/`to`
/// clauses for the connection (`ConnectionRules`), and a reload that makes
/// the allowing rule's `from` fail must be decided afresh. (Kept from the
/// old policy, the rule — its id unchanged — would still pass.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_decides_the_next_request_on_a_live_connection_afresh() {
    let rule = |from: &str| {
        format!(
            "version: 1
default: deny
rules:
  - name: a-v1
    action: allow
    from: {{ {from} }}
    to: {{ labels.app: api }}
    http: {{ paths: [\"/v1/**\"] }}
  - name: b-other
    action: allow
    from: {{ labels.app: web }}
    to: {{ labels.app: api }}
    http: {{ paths: [\"/other/**\"] }}
"
        )
    };
    let app = HttpApp::start().await;
    let mesh = Mesh::start(
        app.addr,
        MeshOptions {
            server_policy: rule("labels.app: web"),
            ..MeshOptions::default()
        },
    )
    .await;
    let mut session = H1Session::connect(mesh.outbound_addr()).await;
    for i in 0..3 {
        let (status, echo) = session
            .get(&format!("/v1/before/{i}"))
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", mesh.context()));
        assert_eq!(status, 200, "{echo}");
    }

    let reloads = || mesh.server.logs().matches("policy reloaded").count();
    let before = reloads();
    replace_file(
        &mesh.server_policy,
        rule("labels.app: web, labels.team: payments").as_bytes(),
    );
    support::poll_until(
        "the reload",
        Duration::from_secs(10),
        || mesh.context(),
        || async { (reloads() > before).then_some(()) },
    )
    .await;

    // The same connection: `b-other` still applies to it, so it stays.
    let (status, body) = session
        .get("/v1/after")
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", mesh.context()));
    assert_eq!(status, 403, "{body}\n{}", mesh.context());
    let line = mesh
        .server
        .wait_audit("the denial of /v1/after", |l| has(l, "path", "/v1/after"))
        .await;
    assert!(is_deny(&line, "default"), "{line}");
    let (status, body) = session
        .get("/other/x")
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", mesh.context()));
    assert_eq!(status, 200, "{body}");
    // One connection's requests met three rules; each counted under its own
    // (the connection keeps the counter it counted into last).
    for (decision, rule, count) in [
        ("allow", "a-v1", 3.0),
        ("deny", "default", 1.0),
        ("allow", "b-other", 1.0),
    ] {
        let sample = format!(
            "appid_authz_decisions_total{{direction=\"inbound\",decision=\"{decision}\",rule=\"{rule}\"}}"
        );
        assert_eq!(
            mesh.server.metric(&sample).await,
            count,
            "{sample}\n{}",
            mesh.context()
        );
    }
}

/// A pooled connection that once carried a burst gives its grown copy
/// buffers (and their bytes of the budget, `appid_buffer_bytes`) back once
/// it is quiet, and still carries bytes after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_gives_back_the_buffers_a_burst_grew() {
    let (_echo, mesh, mut stream) = live_tcp_connection().await;
    let burst: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
    let (mut read, mut write) = stream.split();
    let mut back = vec![0u8; burst.len()];
    let (sent, got) = tokio::join!(write.write_all(&burst), read.read_exact(&mut back));
    sent.unwrap();
    got.unwrap();
    assert!(back == burst, "the burst came back intact");
    let held = |who: &'static str| {
        let sidecar = if who == "client" {
            &mesh.client
        } else {
            &mesh.server
        };
        async move { sidecar.metric("appid_buffer_bytes").await }
    };
    let during = held("client").await + held("server").await;
    assert!(
        during > 0.0,
        "the burst grew the copy buffers\n{}",
        mesh.context()
    );
    support::poll_until(
        "the quiet connection's buffers to be given back",
        Duration::from_secs(10),
        || mesh.context(),
        || async { (held("client").await + held("server").await == 0.0).then_some(()) },
    )
    .await;
    echo_once(&mut stream, b"still here\n", Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", mesh.context()));
}

/// The same reload as a dry run (`mode: audit`): the live connection stays
/// open, and the denial it would have met is audited as audit-only (a dry
/// run shows the live connections a policy would cut) — once: another
/// reload with the same would-be denial writes no second line for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_into_audit_mode_keeps_a_live_connection_and_audits_its_would_be_denial() {
    let (_echo, mesh, mut stream) = live_tcp_connection().await;

    let dry_run = format!(
        "{}mode: audit\n",
        with_rule(
            "  - name: cut-off
    action: deny
    from: { labels.app: web }
    to: { labels.app: api }
",
        )
    );
    replace_file(&mesh.server_policy, dry_run.as_bytes());
    let line = mesh
        .server
        .wait_audit("the cut-off would-be denial of the live connection", |l| {
            l["rule"] == "cut-off" && l["audit_only"] == true
        })
        .await;
    assert_eq!(line["decision"], "allow", "{line}");
    assert_eq!(line["protocol"], "tcp", "{line}");
    assert_eq!(line["peer_id"], mesh.web.id.as_str(), "{line}");
    let this_connection = line["app_addr"].clone();
    assert!(this_connection.is_string(), "{line}");
    // Still open, still carrying bytes.
    stream.write_all(b"pong\n").await.unwrap();
    let mut back = [0u8; 5];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut back))
        .await
        .expect("the live connection still echoes")
        .unwrap();
    assert_eq!(&back, b"pong\n");

    // The same dry run again (a comment more): reloaded, re-checked, and
    // nothing new to say about this connection. A new connection, decided
    // after the reload, marks when its re-check is over.
    let reloads = || mesh.server.logs().matches("policy reloaded").count();
    // "policy reloaded" is logged after the re-check it starts, which
    // wrote the line above: wait for the first reload's log line, or the
    // second reload's wait below could be met by the first.
    support::poll_until(
        "the first reload to be logged",
        Duration::from_secs(10),
        || mesh.context(),
        || async { (reloads() >= 1).then_some(()) },
    )
    .await;
    let before = reloads();
    replace_file(
        &mesh.server_policy,
        format!("# again\n{dry_run}").as_bytes(),
    );
    support::poll_until(
        "the second reload",
        Duration::from_secs(10),
        || mesh.context(),
        || async { (reloads() > before).then_some(()) },
    )
    .await;
    let marker = connect_and_echo(mesh.outbound_addr(), b"mark\n")
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", mesh.context()));
    let marker_addr = marker.local_addr().unwrap().to_string();
    mesh.server
        .wait_audit("the marker connection's decision", |l| {
            l["app_addr"] == marker_addr.as_str()
        })
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let lines_for_it = mesh
        .server
        .audit_lines()
        .iter()
        .filter(|l| l["rule"] == "cut-off" && l["app_addr"] == this_connection)
        .count();
    assert_eq!(lines_for_it, 1, "{}", mesh.context());
}

/// Under a policy with no `http` rule for the call, the client sidecar
/// decides an outbound HTTP connection once (one audit line, no method) and
/// passes its bytes through; the server sidecar still decides, audits and
/// rewrites every request. A reload that gives the client's policy an
/// `http` rule for the call closes the live connection (audited), and the
/// next connection's requests are decided one by one on the client too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_l4_policy_decides_outbound_http_once_until_an_http_rule_applies() {
    let app = HttpApp::start().await;
    let mesh = Mesh::start(app.addr, MeshOptions::default()).await;
    let mut session = H1Session::connect(mesh.outbound_addr()).await;
    for i in 0..3 {
        let (status, echo) = session
            .get(&format!("/v1/once/{i}"))
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", mesh.context()));
        assert_eq!(status, 200, "{echo}");
        assert_peer_headers(&echo, &mesh.web);
    }

    let per_request = with_rule(
        "  - name: no-admin
    action: deny
    from: { labels.app: web }
    to: { labels.app: api }
    http: { paths: [\"/admin/**\"] }
",
    );
    replace_file(&mesh.client_policy, per_request.as_bytes());
    support::poll_until(
        "the client sidecar to close the connection decided once",
        Duration::from_secs(10),
        || mesh.client.context(),
        || async { session.is_closed().then_some(()) },
    )
    .await;
    let closed = mesh
        .client
        .wait_audit("the closure of the connection decided once", |l| {
            is_deny(l, "no-admin")
        })
        .await;
    assert_eq!(closed["protocol"], "http1", "{closed}");

    // A new connection: its requests are decided one by one on both sides.
    let response = get(&mesh, "/admin/users").await;
    assert_denied(&response, "no-admin");
    let response = get(&mesh, "/v1/after").await;
    assert_eq!(response.status, 200, "{response:?}");
    mesh.client
        .wait_audit("GET /v1/after, outbound", |l| has(l, "path", "/v1/after"))
        .await;
    mesh.server
        .wait_audit("GET /v1/after, inbound", |l| has(l, "path", "/v1/after"))
        .await;

    let lines = |sidecar: &Sidecar| -> Vec<Value> {
        sidecar
            .audit_lines()
            .into_iter()
            .filter(|l| {
                l["path"]
                    .as_str()
                    .is_some_and(|p| p.starts_with("/v1/once/"))
            })
            .collect()
    };
    assert_eq!(lines(&mesh.server).len(), 3, "every request, inbound");
    assert!(lines(&mesh.client).is_empty(), "no request line outbound");
    let client = mesh.client.audit_lines();
    let once: Vec<_> = client
        .iter()
        .filter(|l| has(l, "decision", "allow") && l.get("path").is_none())
        .collect();
    assert_eq!(
        once.len(),
        1,
        "one decision for the connection: {client:#?}"
    );
    assert_eq!(once[0]["rule"], "web-to-api");
    assert_eq!(once[0]["protocol"], "http1");
    assert_eq!(once[0]["direction"], "outbound");
}

/// The same with `tunnel: strict` on the client (one mTLS connection per
/// app connection, ALPN `appid/1`): one outbound line for the connection,
/// one inbound line per request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strict_client_decides_outbound_http_once_too() {
    let app = HttpApp::start().await;
    let options = MeshOptions {
        client_tunnel: Some("strict"),
        ..MeshOptions::default()
    };
    let mesh = Mesh::start(app.addr, options).await;
    let mut session = H1Session::connect(mesh.outbound_addr()).await;
    for i in 0..2 {
        let (status, echo) = session
            .get(&format!("/v1/strict/{i}"))
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", mesh.context()));
        assert_eq!(status, 200, "{echo}");
        assert_peer_headers(&echo, &mesh.web);
    }
    mesh.server
        .wait_audit("the second request, inbound", |l| {
            has(l, "path", "/v1/strict/1")
        })
        .await;
    mesh.client
        .wait_audit("the outbound decision", |l| has(l, "direction", "outbound"))
        .await;
    let outbound: Vec<Value> = mesh
        .client
        .audit_lines()
        .into_iter()
        .filter(|l| has(l, "direction", "outbound"))
        .collect();
    assert_eq!(outbound.len(), 1, "{outbound:#?}");
    assert!(outbound[0].get("path").is_none(), "{outbound:#?}");
    assert_eq!(outbound[0]["protocol"], "http1");
}

/// A connection the client sidecar decided once idles out as opaque TCP
/// (`idle_timeout`), not at `http_idle_timeout`, which is for the wait
/// between requests: a response the app takes longer than that to start
/// still arrives (the server's sidecar, parsing, is not waiting for a
/// request then either).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_response_outlasts_the_client_sides_http_idle_timeout_when_decided_once() {
    let app = HttpApp::start().await;
    let options = MeshOptions {
        client_limits: vec![("http_idle_timeout", "300ms")],
        ..MeshOptions::default()
    };
    let mesh = Mesh::start(app.addr, options).await;
    let response = get(&mesh, "/slow").await;
    assert_eq!(response.status, 200, "{response:?}\n{}", mesh.context());
    let line = mesh
        .client
        .wait_audit("the connection's decision", |l| {
            has(l, "direction", "outbound")
        })
        .await;
    assert!(line.get("path").is_none(), "decided once: {line}");
}

/// Hostile or unlucky policy edits never load: an alias bomb ("billion
/// laughs", a few hundred bytes) is refused with the old policy serving, and
/// a policy written in place in two parts is not loaded half-way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alias_bombs_and_half_written_policies_never_load() {
    let echo = EchoServer::start().await;
    let mesh = Mesh::start(echo.addr, MeshOptions::default()).await;
    let still_allowed = |when: &'static str| {
        let address = mesh.outbound_addr();
        let context = mesh.context();
        async move {
            connect_and_echo(address, b"ping\n")
                .await
                .unwrap_or_else(|e| panic!("{when}: {e}\n{context}"));
        }
    };
    still_allowed("before").await;

    // Nine levels of nine aliases: 9^9 scalars if expanded.
    let mut bomb = String::from("version: 1\nx0: &x0 [a, a, a, a, a, a, a, a, a]\n");
    for level in 1..9 {
        let refs = vec![format!("*x{}", level - 1); 9].join(", ");
        bomb.push_str(&format!("x{level}: &x{level} [{refs}]\n"));
    }
    replace_file(&mesh.server_policy, bomb.as_bytes());
    // Refused once read (the second poll after a rename), then the old
    // policy still holds.
    support::poll_until(
        "the alias bomb to be refused",
        Duration::from_secs(10),
        || mesh.context(),
        || async {
            mesh.server
                .logs()
                .contains("aliases in this file expand")
                .then_some(())
        },
    )
    .await;
    still_allowed("after the alias bomb").await;

    // In place (same inode), in two parts 1.2 s apart: the first part alone
    // is a valid policy that denies everything.
    let complete = WEB_TO_API.to_string();
    let first_part = "version: 1\ndefault: deny\nrules:\n";
    assert!(complete.starts_with(first_part));
    std::fs::write(&mesh.server_policy, first_part).unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    still_allowed("between the two parts of an in-place write").await;
    std::fs::write(&mesh.server_policy, &complete).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    still_allowed("after the in-place write").await;
    assert!(
        !mesh
            .server
            .audit_lines()
            .iter()
            .any(|l| is_deny(l, "default")),
        "the half-written policy was applied\n{}",
        mesh.context()
    );
}

// ---------------------------------------------------------------------------
// Limits and shutdown

/// Callers outside the mesh (from loopback) may `GET /public/**` over HTTP.
const PLAIN_PUBLIC: &str = "\
version: 1
default: deny
rules:
  - name: plain-public
    action: allow
    from: { unauthenticated: { cidrs: [\"127.0.0.0/8\"] } }
    to: { labels.app: api }
    http: { paths: [\"/public/**\"] }
";

/// A server sidecar for `api` in front of an [`HttpApp`] on an explicit
/// inbound port, under [`PLAIN_PUBLIC`], with `limits`; returns the
/// environment (its directory outlives the sidecar), the app, the sidecar
/// and the port.
async fn public_server(limits: &[(&str, &str)]) -> (Env, HttpApp, Sidecar, u16) {
    let env = Env::new();
    let app = HttpApp::start().await;
    let policy = env.policy("policy.yaml", PLAIN_PUBLIC);
    let inbound = free_port();
    let mut builder = env
        .sidecar("server", &env.api, &policy)
        .inbound(inbound, app.addr);
    for (key, value) in limits {
        builder = builder.limit(key, value);
    }
    let sidecar = builder.start().await;
    (env, app, sidecar, inbound)
}

const LOCAL_PLAIN: &str = "\
version: 1
default: deny
rules:
  - name: local-plain
    action: allow
    from: { unauthenticated: { cidrs: [\"127.0.0.0/8\"] } }
    to: { labels.app: api }
";

/// `max_connections` is per direction, and callers outside the mesh get at
/// most half of the inbound budget: with 4, two plaintext callers (from two
/// addresses: one address holds an eighth, at least one) fit and a third is
/// refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_max_connections_are_refused_and_the_sidecar_stays_healthy() {
    let env = Env::new();
    let echo = EchoServer::start().await;
    let policy = env.policy("policy.yaml", LOCAL_PLAIN);
    let inbound = free_port();
    let sidecar = env
        .sidecar("server", &env.api, &policy)
        .inbound(inbound, echo.addr)
        .limit("max_connections", "4")
        .start()
        .await;
    let address = local(inbound);

    let first = connect_from_and_echo(1, address, b"one\n")
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", sidecar.context()));
    let mut second = connect_from_and_echo(2, address, b"two\n")
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", sidecar.context()));

    let mut third = support::net::connect_from(3, address).await.unwrap();
    let _ = third.write_all(b"three\n").await;
    expect_closed(&mut third, Duration::from_secs(10)).await;
    assert_eq!(
        echo.connections.load(Ordering::SeqCst),
        2,
        "the third never reached the app"
    );

    assert_eq!(
        net::http_status(sidecar.admin, "/live").await,
        Some(200),
        "/live while full"
    );
    assert_eq!(
        sidecar
            .metric(
                "appid_connections_refused_total{direction=\"inbound\",reason=\"max_unauthenticated\"}"
            )
            .await,
        1.0,
        "{}",
        sidecar.context()
    );
    echo_once(&mut second, b"still here\n", Duration::from_secs(10))
        .await
        .expect("admitted connections keep working");

    drop(first);
    support::poll_until(
        "a new connection to be admitted after one closed",
        Duration::from_secs(10),
        || sidecar.context(),
        || async { connect_and_echo(address, b"four\n").await.ok().map(drop) },
    )
    .await;
}

/// The audit log under pressure: SIGHUP reopens it after a move (logrotate
/// without `copytruncate`), and when lines cannot be written (here: a full
/// disk, `/dev/full`) they are counted and `/ready` turns false.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_reopens_on_sighup_and_a_full_disk_makes_the_sidecar_unready() {
    let env = Env::new();
    let echo = EchoServer::start().await;
    let policy = env.policy("policy.yaml", LOCAL_PLAIN);
    let inbound = free_port();
    let sidecar = env
        .sidecar("server", &env.api, &policy)
        .inbound(inbound, echo.addr)
        .start()
        .await;
    connect_and_echo(local(inbound), b"one\n").await.unwrap();
    sidecar
        .wait_audit("the first line", |l| has(l, "decision", "allow"))
        .await;
    let rotated = sidecar.audit.with_extension("jsonl.1");
    std::fs::rename(&sidecar.audit, &rotated).unwrap();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &sidecar.pid().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    support::poll_until(
        "the audit log to be reopened",
        Duration::from_secs(10),
        || sidecar.context(),
        || async { sidecar.logs().contains("audit log reopened").then_some(()) },
    )
    .await;
    connect_and_echo(local(inbound), b"two\n").await.unwrap();
    sidecar
        .wait_audit("a line in the reopened file", |l| {
            has(l, "decision", "allow")
        })
        .await;
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert_eq!(old.lines().count(), 1, "{old}");
    drop(sidecar);

    // A full disk.
    let full = env.path("full-audit.jsonl");
    std::os::unix::fs::symlink("/dev/full", &full).unwrap();
    let inbound = free_port();
    let deny_all = env.policy("deny.yaml", "version: 1\ndefault: deny\nrules: []\n");
    let sidecar = env
        .sidecar("full", &env.api, &deny_all)
        .inbound(inbound, echo.addr)
        .start()
        .await;
    let mut denied = TcpStream::connect(local(inbound)).await.unwrap();
    let _ = denied.write_all(b"hello\n").await;
    expect_closed(&mut denied, Duration::from_secs(10)).await;
    support::poll_until(
        "/ready to turn false while the audit log cannot be written",
        Duration::from_secs(10),
        || sidecar.context(),
        || async { (net::http_status(sidecar.admin, "/ready").await == Some(503)).then_some(()) },
    )
    .await;
    assert!(sidecar.metric("appid_audit_lines_dropped_total").await >= 1.0);
    assert_eq!(net::http_status(sidecar.admin, "/live").await, Some(200));
}

/// An audit flood: hundreds of denied requests with 60 KB paths from one
/// caller write a few kilobytes of audit log, not tens of megabytes (paths
/// are cut to 1 KiB, repeats within a second are counted into one line).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_requests_with_huge_paths_cannot_flood_the_audit_log() {
    let (_env, app, sidecar, inbound) = public_server(&[]).await;
    let request = format!(
        "GET /admin/{} HTTP/1.1\r\nHost: api.test\r\n\r\n",
        "a".repeat(60_000)
    );
    let requests = 300;
    let stream = TcpStream::connect(local(inbound)).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        for _ in 0..requests {
            if write.write_all(request.as_bytes()).await.is_err() {
                break;
            }
        }
        write
    });
    let mut answers = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let counted = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let denied = answers.windows(12).filter(|w| w == b"HTTP/1.1 403").count();
            if denied >= requests {
                return denied;
            }
            match read.read(&mut chunk).await {
                Ok(0) | Err(_) => return denied,
                Ok(n) => answers.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .expect("answers within 30 s");
    let _write = writer.await.unwrap();
    assert_eq!(counted, requests, "{}", sidecar.context());
    // The `repeated` count line is written at the first flush after its
    // second ends: wait for every denial to be accounted for.
    let accounted = || -> u64 {
        sidecar
            .audit_lines()
            .iter()
            .map(|l| l["repeated"].as_u64().unwrap_or(1))
            .sum()
    };
    support::poll_until(
        "every denial to be accounted for in the audit log",
        Duration::from_secs(10),
        || format!("{} of {requests}\n{}", accounted(), sidecar.context()),
        || async { (accounted() >= requests as u64).then_some(()) },
    )
    .await;
    assert_eq!(accounted(), requests as u64, "every denial, once");
    let size = std::fs::metadata(&sidecar.audit).unwrap().len();
    assert!(
        size < 100_000,
        "{size} bytes of audit log for {requests} denials"
    );
    assert_eq!(app.state.requests.load(Ordering::SeqCst), 0);
}

/// The audit file is rotated at `limits.audit_log_max_bytes`: at most
/// `audit_log_keep` rotated files stay, each of whole lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_rotates_at_its_size_cap() {
    let (_env, _app, sidecar, inbound) =
        public_server(&[("audit_log_max_bytes", "4096"), ("audit_log_keep", "2")]).await;
    let mut session = H1Session::connect(local(inbound)).await;
    for i in 0..100 {
        let (status, _) = session.get(&format!("/public/{i}")).await.unwrap();
        assert_eq!(status, 200);
    }
    let rotated = |n: u32| {
        let mut name = sidecar.audit.clone().into_os_string();
        name.push(format!(".{n}"));
        std::path::PathBuf::from(name)
    };
    support::poll_until(
        "two rotated audit files",
        Duration::from_secs(10),
        || sidecar.context(),
        || async { rotated(2).exists().then_some(()) },
    )
    .await;
    assert!(!rotated(3).exists(), "only audit_log_keep files are kept");
    let paths = [sidecar.audit.clone(), rotated(1), rotated(2)];
    // A rotation renames the current file before it opens the next one: a
    // read that falls in between finds no current file, so read all three
    // again until none is missing.
    let texts = support::poll_until(
        "the current and both rotated audit files",
        Duration::from_secs(10),
        || sidecar.context(),
        || async {
            paths
                .iter()
                .map(|p| std::fs::read_to_string(p).ok())
                .collect::<Option<Vec<String>>>()
        },
    )
    .await;
    for (path, text) in paths.iter().zip(texts) {
        // At most one line past the cap.
        assert!(
            text.len() < 4096 + 2048,
            "{}: {} bytes",
            path.display(),
            text.len()
        );
        for line in text.lines() {
            let line: Value = serde_json::from_str(line).expect("whole JSON lines");
            assert_eq!(line["decision"], "allow");
        }
    }
}

/// Sends `bytes` on a new connection to the sidecar's `inbound` port and
/// reads what comes back until the sidecar closes it (within 10 s).
async fn sent_until_closed(inbound: u16, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(local(inbound)).await.unwrap();
    let _ = stream.write_all(bytes).await;
    let mut answers = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answers));
    assert!(read.await.is_ok(), "the connection is still open");
    answers
}

/// Another client is served meanwhile: an HTTP/2 `GET /public/x`, `200`.
async fn others_are_served(sidecar: &Sidecar, inbound: u16) {
    let response = curl(&[
        "--http2-prior-knowledge",
        &format!("http://127.0.0.1:{inbound}/public/x"),
    ])
    .await;
    assert_eq!(response.status, 200, "{response:?}\n{}", sidecar.context());
}

/// The one inbound HTTP/2 connection was closed as a flood: audited as a
/// denial whose reason starts with `why`, and counted once.
async fn closed_as_flood(sidecar: &Sidecar, why: &str) {
    sidecar
        .wait_audit("the flood's audit line", |l| {
            has(l, "decision", "deny") && l["reason"].as_str().is_some_and(|r| r.starts_with(why))
        })
        .await;
    assert_eq!(
        sidecar
            .metric("appid_h2_floods_closed_total{direction=\"inbound\"}")
            .await,
        1.0
    );
}

/// An HTTP/2 control-frame flood (here: PINGs) from outside the mesh is
/// closed, counted and audited; other clients keep being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_ping_flood_is_closed_and_others_are_served() {
    let (_env, _app, sidecar, inbound) = public_server(&[]).await;

    sent_until_closed(inbound, &support::rogue::ping_flood(true)).await;
    closed_as_flood(&sidecar, "HTTP/2 control frame flood").await;
    others_are_served(&sidecar, inbound).await;
}

/// Rapid reset (CVE-2023-44487): a client that cancels every request as
/// soon as it sent it gets a GOAWAY(ENHANCE_YOUR_CALM) once 500 of them
/// went to the app, is counted and audited like a flood; the app saw at
/// most those 500, and other clients keep being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_rapid_reset_is_closed_and_others_are_served() {
    let (_env, app, sidecar, inbound) = public_server(&[]).await;

    let answers =
        sent_until_closed(inbound, &support::rogue::rapid_reset("/public/x", 5_000)).await;
    // GOAWAY (type 7) whose error code (after the last stream ID) is
    // ENHANCE_YOUR_CALM (0xb).
    let mut goaway = None;
    let mut rest = &answers[..];
    while rest.len() >= 9 {
        let length = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
        let Some(payload) = rest.get(9..9 + length) else {
            break;
        };
        if rest[3] == 0x7 && payload.len() >= 8 {
            goaway = Some(u32::from_be_bytes(payload[4..8].try_into().unwrap()));
        }
        rest = &rest[9 + length..];
    }
    assert_eq!(goaway, Some(0xb), "{}", sidecar.context());
    closed_as_flood(&sidecar, "HTTP/2 rapid reset").await;
    let reached = app.state.requests.load(std::sync::atomic::Ordering::SeqCst);
    assert!(reached <= 500, "{reached} requests reached the app");
    others_are_served(&sidecar, inbound).await;
}

/// A client that pings after DATA it receives, as gRPC-Go measures its
/// bandwidth-delay product (one PING per round trip in which DATA came), is
/// not a flood however fast it goes: thousands of PINGs a second on a busy
/// connection, each after DATA the sidecar sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_that_follow_data_are_not_a_flood() {
    const PINGS: usize = 3_000;
    let (_env, _app, sidecar, inbound) = public_server(&[]).await;
    let frame = support::rogue::h2_frame;
    let mut stream = TcpStream::connect(local(inbound)).await.unwrap();
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    // SETTINGS_INITIAL_WINDOW_SIZE 16 MiB; the connection's window alike.
    hello.extend(frame(0x4, 0, 0, &[0, 4, 1, 0, 0, 0]));
    hello.extend(frame(0x8, 0, 0, &(16u32 << 20).to_be_bytes()));
    stream.write_all(&hello).await.unwrap();
    // GET http://127.0.0.1/public/big (4 MiB: 256 DATA frames or more).
    let block = support::rogue::h2_get_block("/public/big");

    let started = Instant::now();
    let (mut pinged, mut next_stream, mut input) = (0usize, 1u32, Vec::new());
    let mut in_first_second = None;
    let mut chunk = vec![0u8; 64 * 1024];
    while pinged < PINGS {
        stream
            .write_all(&frame(0x1, 0x5, next_stream, &block))
            .await
            .unwrap();
        next_stream += 2;
        loop {
            let whole = input.len() >= 9
                && input.len()
                    >= 9 + u32::from_be_bytes([0, input[0], input[1], input[2]]) as usize;
            if !whole {
                let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
                    .await
                    .expect("an answer in time")
                    .unwrap();
                assert!(
                    n > 0,
                    "the sidecar closed the connection after {pinged} PINGs\n{}",
                    sidecar.context()
                );
                input.extend_from_slice(&chunk[..n]);
                continue;
            }
            let length = u32::from_be_bytes([0, input[0], input[1], input[2]]);
            let (kind, flags) = (input[3], input[4]);
            let on = u32::from_be_bytes([input[5], input[6], input[7], input[8]]);
            input.drain(..9 + length as usize);
            assert_ne!(
                kind,
                0x7,
                "GOAWAY after {pinged} PINGs\n{}",
                sidecar.context()
            );
            let mut out = Vec::new();
            if kind == 0x4 && flags & 0x1 == 0 {
                out.extend(frame(0x4, 0x1, 0, &[]));
            }
            if kind == 0x0 && length > 0 {
                // The window back, and a PING: at most what a BDP probe sends.
                out.extend(frame(0x8, 0, 0, &length.to_be_bytes()));
                out.extend(frame(0x8, 0, on, &length.to_be_bytes()));
                out.extend(frame(0x6, 0, 0, &(pinged as u64).to_be_bytes()));
                pinged += 1;
            }
            if !out.is_empty() {
                stream.write_all(&out).await.unwrap();
            }
            if in_first_second.is_none() && started.elapsed() >= Duration::from_secs(1) {
                in_first_second = Some(pinged);
            }
            if matches!(kind, 0x0 | 0x1) && flags & 0x1 != 0 {
                break;
            }
        }
    }
    // Only a test of the budget if the budget alone (1 000 a second) would
    // have been crossed within the connection's first second.
    let in_first_second = in_first_second.unwrap_or(pinged);
    assert!(
        in_first_second > 1_000,
        "only {in_first_second} PINGs in the first second: too slow to test the budget"
    );
    assert_eq!(
        sidecar
            .metric("appid_h2_floods_closed_total{direction=\"inbound\"}")
            .await,
        0.0
    );
}

/// Decide before you dial: callers whose requests are all denied, or who
/// send nothing but an HTTP/2 preface, never cost the app a connection; an
/// HTTP/2 connection that carries no stream is closed at the HTTP idle
/// timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_is_dialled_for_the_first_allowed_request_only() {
    let (_env, app, sidecar, inbound) =
        public_server(&[("http_idle_timeout", "2s"), ("drain_timeout", "1s")]).await;
    let address = local(inbound);

    // HTTP/1.1: two denied requests on one connection.
    let mut session = H1Session::connect(address).await;
    for path in ["/admin/a", "/admin/b"] {
        let (status, _) = session.get(path).await.unwrap();
        assert_eq!(status, 403, "{}", sidecar.context());
    }
    // HTTP/2: connections that send the preface and SETTINGS, then nothing.
    let mut silent = Vec::new();
    for _ in 0..20 {
        let mut stream = TcpStream::connect(address).await.unwrap();
        stream
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            .await
            .unwrap();
        silent.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        app.state.connections.load(Ordering::SeqCst),
        0,
        "the app was dialled before any request was allowed\n{}",
        sidecar.context()
    );
    // Idle HTTP/2 connections get a GOAWAY and are gone by idle + drain.
    let start = Instant::now();
    for stream in &mut silent {
        // The sidecar's SETTINGS and GOAWAY frames, then the end.
        let mut frames = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut frames));
        assert!(read.await.is_ok(), "still open after 10 s");
    }
    let waited = start.elapsed();
    assert!(waited < Duration::from_secs(6), "closed after {waited:?}");

    // The first allowed request dials the app, once (a new connection: the
    // first one idled out too).
    let mut session = H1Session::connect(address).await;
    let (status, _) = session.get("/public/x").await.unwrap();
    assert_eq!(status, 200, "{}", sidecar.context());
    assert_eq!(app.state.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stalls_during_detection_is_dropped_at_detect_timeout() {
    let env = Env::new();
    let echo = EchoServer::start().await;
    let policy = env.policy("policy.yaml", LOCAL_PLAIN);
    let inbound = free_port();
    let sidecar = env
        .sidecar("server", &env.api, &policy)
        .inbound(inbound, echo.addr)
        .limit("detect_timeout", "1s")
        .start()
        .await;

    let mut stream = TcpStream::connect(local(inbound)).await.unwrap();
    let start = Instant::now();
    // The first byte of a TLS handshake record, then nothing.
    stream.write_all(&[0x16]).await.unwrap();
    let closed = expect_closed(&mut stream, Duration::from_secs(10)).await;
    let waited = start.elapsed();
    eprintln!("stalled client dropped after {waited:.2?} ({closed:?})");
    assert!(
        waited >= Duration::from_millis(900),
        "dropped before the timeout: {waited:?}"
    );
    assert_eq!(
        echo.connections.load(Ordering::SeqCst),
        0,
        "the app was never dialled"
    );
    assert!(matches!(closed, Closed::Eof | Closed::Error(_)));
    // The sidecar still serves others.
    connect_and_echo(local(inbound), b"hello\n")
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", sidecar.context()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_in_flight_request_complete_then_exits_0() {
    let app = HttpApp::start().await;
    let mut mesh = Mesh::start(app.addr, MeshOptions::default()).await;
    let url = mesh.url("/slow");
    let request = tokio::spawn(async move { curl(&[&url]).await });
    support::poll_until(
        "the app to receive /slow",
        Duration::from_secs(10),
        || mesh.context(),
        || async { (app.state.slow_started.load(Ordering::SeqCst) == 1).then_some(()) },
    )
    .await;

    // Both sidecars are told to stop while the app is still answering.
    mesh.server.terminate();
    mesh.client.terminate();
    let response = request.await.unwrap();
    assert_eq!(response.status, 200, "{response:?}\n{}", mesh.context());
    assert_eq!(response.json()["path"], "/slow");
    for sidecar in [&mut mesh.server, &mut mesh.client] {
        let status = sidecar.wait_exit(Duration::from_secs(15)).await;
        assert_eq!(
            status.code(),
            Some(0),
            "{} exit status\n{}",
            sidecar.name,
            sidecar.context()
        );
    }
}

/// A file the config names that cannot be used is reported with the config
/// file and the key that named it, and nothing is left running.
#[test]
fn a_missing_identity_file_names_the_config_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("policy.yaml"),
        "version: 1\ndefault: deny\nrules: []\n",
    )
    .unwrap();
    let config = dir.path().join("proxy.yaml");
    std::fs::write(
        &config,
        format!(
            "identity: {{ cert: web.pem, key: web.key, bundle: ca.pem }}\ntrust_domains: [prod.example]\n\
             policy: policy.yaml\ninbound: [{{ listen: \"127.0.0.1:{}\", forward: \"127.0.0.1:9\" }}]\n\
             admin: \"127.0.0.1:{}\"\n",
            free_port(),
            free_port()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(support::pki::APPID)
        .args(["proxy", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("proxy.yaml: identity.bundle: ") && stderr.contains("ca.pem"),
        "{stderr}"
    );
}
