//! End-to-end tests with real gRPC clients and servers (grpcio, issue 12):
//!
//! ```text
//! tests/grpc/client.py ──▶ client sidecar ══ mTLS ══▶ server sidecar ──▶ tests/grpc/server.py
//! ```
//!
//! Every test runs in both tunnel modes (`tunnel: strict`, and the default
//! pooled one). What real clients found and these tests pin down:
//! - every kind of call passes: unary, server streaming, client streaming,
//!   bidirectional; a deadline is reported as DEADLINE_EXCEEDED (and its
//!   cancellation reaches the server's handler at once), a failed
//!   call keeps its details and trailing metadata, and a method the policy
//!   denies is PERMISSION_DENIED (and never reaches the app);
//! - a server that finishes a client-streaming call after the first
//!   message, while the client is still sending, gets its answer to the
//!   client (the request is abandoned without error, RFC 9113 §8.1) —
//!   not CANCELLED;
//! - a thousand unary calls, each on a fresh channel (a new connection),
//!   all succeed: no `UNAVAILABLE` "status: 502" for a call the server ran.
//!
//! The Python scripts report what they saw as JSON; the assertions are here.
//! Needs `python3` with the `grpc` module (Debian: `apt-get install
//! python3-grpcio`; CI installs it). Without it these tests fail, they are
//! not skipped.

#[path = "support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use serde_json::Value;

use support::mesh::{Mesh, MeshOptions, WEB_TO_API};
use support::sidecar::has;

const SERVER_PY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/grpc/server.py");
const CLIENT_PY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/grpc/client.py");

/// The gRPC method the server sidecar's policy denies.
const DENIED_METHOD: &str = "/appid.test.Grpc/Admin";

/// [`WEB_TO_API`] and a deny rule for [`DENIED_METHOD`].
fn server_policy() -> String {
    format!(
        "{WEB_TO_API}  - name: no-admin\n    action: deny\n    from: {{ labels.app: web }}\n    \
         to: {{ labels.app: api }}\n    http: {{ paths: [\"{DENIED_METHOD}\"] }}\n"
    )
}

/// How the sidecars carry app connections between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tunnel {
    /// `tunnel: strict` on both sides: one TLS connection per app connection.
    Strict,
    /// The default: app connections as streams of pooled TLS connections.
    Pooled,
}

impl Tunnel {
    fn setting(self) -> Option<&'static str> {
        match self {
            Tunnel::Strict => Some("strict"),
            Tunnel::Pooled => None,
        }
    }
}

/// A Python interpreter that has the `grpc` module.
fn python() -> &'static str {
    static PYTHON: OnceLock<&'static str> = OnceLock::new();
    PYTHON.get_or_init(|| support::python_with("grpc", "python3-grpcio"))
}

/// `tests/grpc/server.py`, killed on drop.
struct GrpcServer {
    child: Child,
    addr: SocketAddr,
}

impl GrpcServer {
    fn start() -> GrpcServer {
        let mut child = Command::new(python())
            .args([SERVER_PY, "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the gRPC server");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("piped stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the gRPC server's port");
        let Some(port) = line
            .trim()
            .strip_prefix("PORT ")
            .and_then(|p| p.parse().ok())
        else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the gRPC server did not say its port: {line:?}");
        };
        GrpcServer {
            child,
            addr: support::net::local(port),
        }
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The gRPC server behind a sidecar pair in `tunnel` mode.
struct Setup {
    mesh: Mesh,
    /// Declared last: the server outlives the sidecars in front of it.
    _server: GrpcServer,
}

impl Setup {
    async fn start(tunnel: Tunnel) -> Setup {
        let server = GrpcServer::start();
        let mesh = Mesh::start(
            server.addr,
            MeshOptions {
                server_policy: server_policy(),
                server_tunnel: tunnel.setting(),
                client_tunnel: tunnel.setting(),
                ..MeshOptions::default()
            },
        )
        .await;
        Setup {
            mesh,
            _server: server,
        }
    }

    /// Runs `client.py <outbound> <scenario> [count]`: what it observed.
    async fn client(&self, scenario: &str, count: Option<u32>) -> Value {
        let mut command = tokio::process::Command::new(python());
        command
            .arg(CLIENT_PY)
            .arg(self.mesh.outbound_addr().to_string())
            .arg(scenario);
        if let Some(count) = count {
            command.arg(count.to_string());
        }
        let output = command
            .stdin(Stdio::null())
            .output()
            .await
            .expect("run the gRPC client");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "client.py {scenario} failed ({}):\n{stdout}\n{}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr),
            self.mesh.context()
        );
        serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("client.py {scenario} printed no JSON ({e}): {stdout}"))
    }

    /// Runs a scenario of many calls and asserts that none failed.
    async fn expect_no_errors(&self, scenario: &str, calls: u32) {
        let result = self.client(scenario, Some(calls)).await;
        assert_eq!(result["calls"], calls, "{result}");
        assert_eq!(
            result["errors"],
            serde_json::json!({}),
            "{scenario}: failed calls by status, and one example of each: {result}\n{}",
            self.mesh.context()
        );
    }
}

/// Asserts a single call's status (and shows both sidecars if not).
fn expect_code(setup: &Setup, result: &Value, code: &str) {
    assert_eq!(result["code"], code, "{result}\n{}", setup.mesh.context());
}

async fn every_kind_of_call(tunnel: Tunnel) {
    let setup = Setup::start(tunnel).await;

    let unary = setup.client("unary", None).await;
    expect_code(&setup, &unary, "OK");
    assert_eq!(unary["reply"], "hello");

    let streamed = setup.client("server_stream", None).await;
    expect_code(&setup, &streamed, "OK");
    let expected: Vec<String> = (0..5).map(|i| format!("message {i}")).collect();
    assert_eq!(streamed["replies"], serde_json::json!(expected));

    let counted = setup.client("client_stream", None).await;
    expect_code(&setup, &counted, "OK");
    assert_eq!(
        counted["reply"], "10",
        "all ten messages reached the server"
    );

    let echoed = setup.client("bidi", None).await;
    expect_code(&setup, &echoed, "OK");
    let expected: Vec<String> = (0..5).map(|i| format!("b{i}")).collect();
    assert_eq!(echoed["replies"], serde_json::json!(expected));

    // The client's RST_STREAM at its deadline reaches the app: its handler
    // sees the call cancelled well before the two seconds it would
    // otherwise run (printed: the ~300 ms deadline plus what the pair adds).
    let late = setup.client("deadline", None).await;
    expect_code(&setup, &late, "DEADLINE_EXCEEDED");
    let cancelled_after = late["server_cancelled_after_ms"].as_u64();
    eprintln!("{tunnel:?}: the server saw the cancellation after {cancelled_after:?} ms");
    assert!(
        cancelled_after.is_some_and(|ms| ms < 1500),
        "the app never saw the client's cancellation in time: {late}\n{}",
        setup.mesh.context()
    );

    let failed = setup.client("status", None).await;
    expect_code(&setup, &failed, "FAILED_PRECONDITION");
    assert_eq!(failed["details"], "precondition", "{failed}");
    assert_eq!(
        failed["trailing"]["x-detail"], "kept",
        "trailing metadata is delivered: {failed}"
    );

    let denied = setup.client("denied", None).await;
    expect_code(&setup, &denied, "PERMISSION_DENIED");
    let line = setup
        .mesh
        .server
        .wait_audit("the denial of the Admin method", |l| {
            has(l, "decision", "deny") && has(l, "path", DENIED_METHOD)
        })
        .await;
    assert_eq!(line["rule"], "no-admin", "{line}");
    assert_eq!(line["protocol"], "grpc", "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_call_passes_a_strict_tunnel() {
    every_kind_of_call(Tunnel::Strict).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_call_passes_a_pooled_tunnel() {
    every_kind_of_call(Tunnel::Pooled).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_finishing_early_answers_through_a_strict_tunnel() {
    let setup = Setup::start(Tunnel::Strict).await;
    setup.expect_no_errors("early_finish", 100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_finishing_early_answers_through_a_pooled_tunnel() {
    let setup = Setup::start(Tunnel::Pooled).await;
    setup.expect_no_errors("early_finish", 100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_fresh_channels_through_a_strict_tunnel() {
    let setup = Setup::start(Tunnel::Strict).await;
    setup.expect_no_errors("fresh_channels", 1000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_fresh_channels_through_a_pooled_tunnel() {
    let setup = Setup::start(Tunnel::Pooled).await;
    setup.expect_no_errors("fresh_channels", 1000).await;
}
