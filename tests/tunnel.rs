//! End-to-end tests of pooled `appid-mux/1` tunnels (issue 7), driving the
//! real binary:
//!
//! ```text
//! curl ──▶ client sidecar ══ one mTLS connection, HTTP/2 CONNECT streams ══▶ server sidecar ──▶ app
//! ```
//!
//! - By default, many app connections (sequential and concurrent) share one
//!   TLS connection, each as one stream; the app still sees the caller's
//!   SPIFFE ID, each request is still authorized and audited on its own,
//!   and a denial is still a 403 naming the rule.
//! - A request the client sidecar denies leaves no trace at the server
//!   sidecar: it audits only what the client let through.
//! - `tunnel: strict` on either side: every app connection gets its own
//!   `appid/1` TLS connection, and strict and pooled sidecars interoperate
//!   both ways.
//! - Opaque TCP in a stream keeps its bytes and its half close.
//! - After the server sidecar swaps its certificate, live streams go on and
//!   new ones are refused on the old tunnel and carried by a new one.
//!
//! The metrics read here are `appid_mesh_connections_total{direction,alpn}`
//! (verified sidecar-to-sidecar TLS connections) and
//! `appid_tunnel_streams_total{direction}` (app connections carried as
//! streams).
//!
//! Needs `curl` on the PATH (CI installs it).

#[path = "support/mod.rs"]
mod support;

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::apps::{EchoServer, HttpApp};
use support::clients::{CurlResponse, H1Session, curl};
use support::mesh::{Mesh, MeshOptions, WEB_TO_API};
use support::sidecar::{Sidecar, has};

/// [`WEB_TO_API`] and a deny rule for `/admin`.
fn no_admin_policy() -> String {
    format!(
        "{WEB_TO_API}  - name: no-admin\n    action: deny\n    from: {{ labels.app: web }}\n    \
         to: {{ labels.app: api }}\n    http: {{ paths: [\"/admin\"] }}\n"
    )
}

fn mesh_connections(direction: &str, alpn: &str) -> String {
    format!("appid_mesh_connections_total{{direction=\"{direction}\",alpn=\"{alpn}\"}}")
}

fn tunnel_streams(direction: &str) -> String {
    format!("appid_tunnel_streams_total{{direction=\"{direction}\"}}")
}

/// The SPIFFE ID the app saw (its JSON echo of `x-appid-peer-id`).
fn seen_peer(echo: &Value) -> &str {
    echo["headers"]["x-appid-peer-id"][0]
        .as_str()
        .unwrap_or_default()
}

async fn get(mesh: &Mesh, path: &str) -> CurlResponse {
    curl(&[&mesh.url(path)]).await
}

/// Waits until `sidecar` has written `n` audit lines matching `predicate`
/// (allow lines are flushed on a short tick, not at once).
async fn wait_audit_count(sidecar: &Sidecar, n: usize, predicate: impl Fn(&Value) -> bool) {
    support::poll_until(
        &format!("{n} matching audit lines of {}", sidecar.name),
        Duration::from_secs(10),
        || sidecar.context(),
        || {
            let count = sidecar
                .audit_lines()
                .iter()
                .filter(|l| predicate(l))
                .count();
            async move { (count >= n).then_some(()) }
        },
    )
    .await;
    let count = sidecar
        .audit_lines()
        .iter()
        .filter(|l| predicate(l))
        .count();
    assert_eq!(count, n, "{}", sidecar.context());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_app_connections_are_streams_of_one_pooled_tls_connection_per_worker() {
    let app = HttpApp::start().await;
    let mesh = Mesh::start(
        app.addr,
        MeshOptions {
            server_policy: no_admin_policy(),
            // Each data-plane worker pools its own tunnels.
            settings: vec![("workers", "2".into())],
            ..MeshOptions::default()
        },
    )
    .await;
    let web_id = mesh.web.id.clone();

    // Ten app connections one after another (curl: one connection each).
    for _ in 0..10 {
        let response = get(&mesh, "/v1/items").await;
        assert_eq!(response.status, 200, "{response:?}\n{}", mesh.context());
        assert_eq!(seen_peer(&response.json()), web_id);
    }
    // Twenty at once, three keep-alive requests each.
    let sessions = (0..20).map(|_| {
        let address = mesh.outbound_addr();
        let web_id = web_id.clone();
        tokio::spawn(async move {
            let mut session = H1Session::connect(address).await;
            for _ in 0..3 {
                let (status, echo) = session.get("/v1/items").await.expect("request");
                assert_eq!(status, 200, "{echo}");
                assert_eq!(seen_peer(&echo), web_id);
            }
        })
    });
    for session in futures_util::future::join_all(sessions).await {
        session.expect("session task");
    }
    // A request the server's policy denies, on a stream like the others.
    let denied = get(&mesh, "/admin").await;
    assert_eq!(denied.status, 403, "{denied:?}");
    assert_eq!(denied.header("x-appid-denied-by"), Some("no-admin"));

    // 31 app connections, one TLS handshake per worker (of two) that took
    // any, on both sides.
    for (sidecar, direction) in [(&mesh.client, "outbound"), (&mesh.server, "inbound")] {
        let pooled = sidecar
            .metric(&mesh_connections(direction, "appid-mux/1"))
            .await;
        let single = sidecar
            .metric(&mesh_connections(direction, "appid/1"))
            .await;
        let streams = sidecar.metric(&tunnel_streams(direction)).await;
        assert!(
            (1.0..=2.0).contains(&pooled) && (single, streams) == (0.0, 31.0),
            "{direction}: (pooled TLS connections, appid/1 connections, streams) = \
             ({pooled}, {single}, {streams})\n{}",
            mesh.context()
        );
    }
    // Every request authorized and audited on its own, with the port policy
    // saw; the denial names its rule.
    let inbound = mesh.inbound as u64;
    wait_audit_count(&mesh.server, 70, |l| {
        has(l, "decision", "allow") && has(l, "rule", "web-to-api") && l["port"] == inbound
    })
    .await;
    wait_audit_count(&mesh.server, 1, |l| {
        has(l, "decision", "deny") && has(l, "rule", "no-admin")
    })
    .await;
}

/// A request the client sidecar's policy denies is answered there and
/// leaves no trace at the server sidecar, pooled or strict: the stream (or
/// TLS connection) it was going to take is reset unused, and the server
/// takes that as withdrawn (a pooled server used to see a clean close
/// before a byte and audit a denial of "not HTTP" that no one had sent; a
/// strict one never did, and is checked alike). On a keep-alive
/// connection whose first request is denied, the next, allowed one goes on
/// that same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_client_denies_leaves_no_trace_at_the_server() {
    let app = HttpApp::start().await;
    for tunnel in [None, Some("strict")] {
        let mesh = Mesh::start(
            app.addr,
            MeshOptions {
                client_policy: no_admin_policy(),
                client_tunnel: tunnel,
                ..MeshOptions::default()
            },
        )
        .await;
        let case = tunnel.unwrap_or("pooled");
        let denied = get(&mesh, "/admin").await;
        assert_eq!(denied.status, 403, "{case}: {denied:?}\n{}", mesh.context());
        assert_eq!(denied.header("x-appid-denied-by"), Some("no-admin"));
        let mut session = H1Session::connect(mesh.outbound_addr()).await;
        let (status, _) = session.get("/admin").await.expect("denied request");
        assert_eq!(status, 403, "{case}\n{}", mesh.context());
        let (status, echo) = session.get("/v1/items").await.expect("allowed request");
        assert_eq!(status, 200, "{case}: {echo}\n{}", mesh.context());
        assert_eq!(seen_peer(&echo), mesh.web.id);
        drop(session);
        // Once more after the session: the server's log is complete.
        let allowed = get(&mesh, "/v1/items").await;
        assert_eq!(allowed.status, 200, "{case}: {allowed:?}");

        wait_audit_count(&mesh.client, 2, |l| {
            has(l, "decision", "deny") && has(l, "rule", "no-admin")
        })
        .await;
        wait_audit_count(&mesh.server, 2, |l| {
            has(l, "decision", "allow") && has(l, "path", "/v1/items")
        })
        .await;
        let server_lines = mesh.server.audit_lines();
        assert_eq!(
            server_lines.len(),
            2,
            "{case}: the server audited only what reached it\n{server_lines:#?}"
        );
        // Nor counted: a client that withdrew is no detection that timed out.
        let refused = mesh
            .server
            .metric(
                "appid_connections_refused_total{direction=\"inbound\",reason=\"detect_timeout\"}",
            )
            .await;
        assert_eq!(refused, 0.0, "{case}\n{}", mesh.context());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_and_pooled_sidecars_interoperate_both_ways() {
    // (client tunnel, server tunnel, what the TLS connections negotiate)
    let cases = [
        (None, Some("strict"), "appid/1"),
        (Some("strict"), None, "appid/1"),
        (Some("strict"), Some("strict"), "appid/1"),
        (Some("pooled"), Some("pooled"), "appid-mux/1"),
    ];
    for (client_tunnel, server_tunnel, alpn) in cases {
        let app = HttpApp::start().await;
        let mesh = Mesh::start(
            app.addr,
            MeshOptions {
                client_tunnel,
                server_tunnel,
                // One pool: the connection counts below are exact.
                settings: vec![("workers", "1".into())],
                ..MeshOptions::default()
            },
        )
        .await;
        let case = format!("client {client_tunnel:?}, server {server_tunnel:?}");
        for _ in 0..3 {
            let response = get(&mesh, "/v1/items").await;
            assert_eq!(response.status, 200, "{case}: {response:?}");
            assert_eq!(seen_peer(&response.json()), mesh.web.id, "{case}");
        }
        let expected_tls = if alpn == "appid/1" { 3.0 } else { 1.0 };
        let other = if alpn == "appid/1" {
            "appid-mux/1"
        } else {
            "appid/1"
        };
        for (sidecar, direction) in [(&mesh.client, "outbound"), (&mesh.server, "inbound")] {
            assert_eq!(
                sidecar.metric(&mesh_connections(direction, alpn)).await,
                expected_tls,
                "{case}: {direction} {alpn} connections\n{}",
                mesh.context()
            );
            assert_eq!(
                sidecar.metric(&mesh_connections(direction, other)).await,
                0.0,
                "{case}: {direction} {other} connections"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_tcp_in_a_stream_keeps_its_bytes_and_half_close() {
    let echo = EchoServer::start().await;
    let mesh = Mesh::start(echo.addr, MeshOptions::default()).await;
    let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut stream = TcpStream::connect(mesh.outbound_addr()).await.unwrap();
    let (mut read, mut write) = stream.split();
    let send = async {
        write.write_all(&payload).await.unwrap();
        // Half close: the echo server sees EOF, finishes echoing, closes.
        write.shutdown().await.unwrap();
    };
    let mut back = Vec::new();
    let receive = read.read_to_end(&mut back);
    let ((), received) = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::join!(send, receive)
    })
    .await
    .expect("echo within 30 s");
    received.expect("read until the server's close");
    assert_eq!(back.len(), payload.len(), "{}", mesh.context());
    assert!(back == payload, "echoed bytes differ");
    assert_eq!(
        mesh.server.metric(&tunnel_streams("inbound")).await,
        1.0,
        "{}",
        mesh.context()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_server_certificate_swap_new_streams_get_a_new_tunnel() {
    let app = HttpApp::start().await;
    // One pool: the tunnel counts below are exact. A short drain timeout:
    // the live session must outlive it (below).
    let options = MeshOptions {
        settings: vec![("workers", "1".into())],
        server_limits: vec![("drain_timeout", "1s")],
        ..MeshOptions::default()
    };
    let mesh = Mesh::start(app.addr, options).await;
    let mut session = H1Session::connect(mesh.outbound_addr()).await;
    let (status, echo) = session.get("/v1/before").await.expect("first request");
    assert_eq!(status, 200, "{echo}\n{}", mesh.context());

    // Same SPIFFE ID, new claims, written over the server sidecar's files.
    let next = mesh.env.issue(
        "api-v2",
        support::mesh::API_PATH,
        &["app=api", "version=v2"],
        &[],
    );
    support::pki::replace_file(&mesh.env.api.cert, &std::fs::read(&next.cert).unwrap());
    support::pki::replace_file(&mesh.env.api.key, &std::fs::read(&next.key).unwrap());
    support::poll_until(
        "the server sidecar to load the new certificate",
        Duration::from_secs(15),
        || mesh.server.context(),
        || async {
            let body = support::net::http_get(mesh.server.admin, "/appid").await?;
            let appid: Value = serde_json::from_str(&body).ok()?;
            (appid["claims"]["labels"]["version"] == "v2").then_some(())
        },
    )
    .await;

    // The live stream goes on; a new app connection is refused on the old
    // tunnel (it proves the old certificate) and carried by a new one.
    let (status, echo) = session.get("/v1/after").await.expect("live session");
    assert_eq!(status, 200, "{echo}");
    let response = get(&mesh, "/v1/new").await;
    assert_eq!(response.status, 200, "{response:?}\n{}", mesh.context());
    assert_eq!(seen_peer(&response.json()), mesh.web.id);
    let refused = mesh
        .server
        .metric(
            "appid_connections_refused_total{direction=\"inbound\",reason=\"identity_changed\"}",
        )
        .await;
    assert!(
        refused >= 1.0,
        "refused streams: {refused}\n{}",
        mesh.context()
    );
    for (sidecar, direction) in [(&mesh.client, "outbound"), (&mesh.server, "inbound")] {
        assert_eq!(
            sidecar
                .metric(&mesh_connections(direction, "appid-mux/1"))
                .await,
            2.0,
            "{direction}: pooled TLS connections\n{}",
            mesh.context()
        );
    }

    // The refusal sent the old tunnel a GOAWAY; its live session was
    // authorized on certificates that still hold, so it goes on past the
    // drain timeout (until the first of them expires), on its connection.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (status, echo) = session
        .get("/v1/after-the-drain-timeout")
        .await
        .unwrap_or_else(|e| panic!("the live session was cut: {e}\n{}", mesh.context()));
    assert_eq!(status, 200, "{echo}");
}

/// With `workers: 2` on both sidecars, app connections opened one after
/// another are kept even across the client's workers whichever accepts
/// them, and so are the tunnels the server sees (one per client worker):
/// without it a burst often lands on one thread of each side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_and_tunnels_are_spread_over_the_workers() {
    let echo = EchoServer::start().await;
    let mesh = Mesh::start(echo.addr, MeshOptions::default()).await;
    let mut held = Vec::new();
    for i in 0..8 {
        let stream = support::net::connect_and_echo(mesh.outbound_addr(), b"hello\n")
            .await
            .unwrap_or_else(|e| panic!("connection {i}: {e}\n{}", mesh.context()));
        held.push(stream);
    }
    for (side, sidecar) in [("client", &mesh.client), ("server", &mesh.server)] {
        let one = sidecar
            .metric("appid_worker_connections{worker=\"1\"}")
            .await;
        let two = sidecar
            .metric("appid_worker_connections{worker=\"2\"}")
            .await;
        assert!(
            one >= 1.0 && two >= 1.0 && (one - two).abs() <= 1.0,
            "the {side}'s workers hold {one} and {two} connections\n{}",
            mesh.context()
        );
        if side == "client" {
            assert_eq!(one + two, 8.0, "{}", mesh.context());
        }
    }
    drop(held);
}

/// A live connection does not outlive its peer's certificate: the claims
/// of a certificate past its `notAfter` are no longer vouched for (a
/// renewal may carry others: a new scan's vulnerabilities). An HTTP/1.1
/// keep-alive connection and an HTTP/2 one (a gRPC channel), opened while
/// `web`'s 6-second certificate was valid and used every 500 ms, are wound
/// down when it expires (closed between requests; GOAWAY), and no request
/// is answered by the app after: one that still arrives is denied (rule
/// `expired`). A new connection is refused, as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_is_allowed_on_claims_of_an_expired_certificate() {
    let failures = requests_across_an_expiry(Expiring::Client).await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The same when the *server's* certificate expires: the client sidecar
/// winds the app's connections down (its peer's claims end with that
/// certificate), so no request reaches the app on them after, and a new
/// connection cannot be made (the client checks the server's certificate).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_reaches_a_server_whose_certificate_expired() {
    let failures = requests_across_an_expiry(Expiring::Server).await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Whose 6-second certificate expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expiring {
    Client,
    Server,
}

/// Requests every 500 ms for 12 s on a connection opened while the
/// certificate was valid, in every tunnel mode and HTTP version: what went
/// wrong (nothing answered while valid, something answered after a
/// refusal or for 12 s, a refusal for another reason, a new connection
/// answered after the expiry).
async fn requests_across_an_expiry(expiring: Expiring) -> Vec<String> {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let mut failures = Vec::new();
    for tunnel in ["pooled", "strict"] {
        for version in ["http1", "http2"] {
            let app = HttpApp::start().await;
            let mesh = Mesh::start(
                app.addr,
                MeshOptions {
                    web_extra: match expiring {
                        Expiring::Client => vec!["--ttl".into(), "6s".into()],
                        Expiring::Server => Vec::new(),
                    },
                    api_extra: match expiring {
                        Expiring::Client => Vec::new(),
                        Expiring::Server => vec!["--ttl".into(), "6s".into()],
                    },
                    server_tunnel: Some(tunnel),
                    client_tunnel: Some(tunnel),
                    ..MeshOptions::default()
                },
            )
            .await;
            let tcp = TcpStream::connect(mesh.outbound_addr()).await.unwrap();
            let mut outcomes = Vec::new();
            let started = std::time::Instant::now();
            macro_rules! run {
                ($sender:expr) => {{
                    let mut sender = $sender;
                    while started.elapsed() < Duration::from_secs(12) {
                        let request = hyper::Request::get("/x")
                            .header("host", "api.test")
                            .body(Empty::<bytes::Bytes>::new())
                            .unwrap();
                        let sent = async {
                            sender.ready().await.map_err(|e| e.to_string())?;
                            let response = sender
                                .send_request(request)
                                .await
                                .map_err(|e| e.to_string())?;
                            let status = response.status().as_u16();
                            let denied_by = response
                                .headers()
                                .get("x-appid-denied-by")
                                .map(|v| v.to_str().unwrap_or("").to_string());
                            let _ = response.into_body().collect().await;
                            Ok::<_, String>((status, denied_by))
                        };
                        match tokio::time::timeout(Duration::from_secs(5), sent).await {
                            Ok(Ok(answer)) => outcomes.push(Ok(answer)),
                            Ok(Err(e)) => {
                                outcomes.push(Err(e));
                                break;
                            }
                            Err(_) => {
                                outcomes.push(Err("no answer in 5 s".into()));
                                break;
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }};
            }
            if version == "http1" {
                let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                    .await
                    .unwrap();
                tokio::spawn(conn);
                run!(sender);
            } else {
                let (sender, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                        .await
                        .unwrap();
                tokio::spawn(conn);
                run!(sender);
            }
            let answered = outcomes
                .iter()
                .filter(|o| matches!(o, Ok((200, _))))
                .count();
            let first_other = outcomes.iter().position(|o| !matches!(o, Ok((200, _))));
            let label = format!("[{expiring:?} {tunnel} {version}]");
            match first_other {
                None => failures.push(format!(
                    "{label} every request for 12 s was answered on a 6 s certificate: {outcomes:?}"
                )),
                Some(i) if outcomes[i..].iter().any(|o| matches!(o, Ok((200, _)))) => failures
                    .push(format!(
                        "{label} answered again after a refusal: {outcomes:?}"
                    )),
                Some(_) => {}
            }
            if answered == 0 {
                failures.push(format!(
                    "{label} nothing answered while valid: {outcomes:?}"
                ));
            }
            for outcome in &outcomes {
                if let Ok((status, denied_by)) = outcome
                    && *status != 200
                    && denied_by.as_deref() != Some("expired")
                {
                    failures.push(format!("{label} refused for another reason: {outcomes:?}"));
                }
            }
            let app_saw = app.state.requests.load(std::sync::atomic::Ordering::SeqCst);
            if app_saw != answered as u64 {
                failures.push(format!(
                    "{label} the app saw {app_saw} requests, {answered} were answered"
                ));
            }
            // The control: a new connection now is no way in either.
            // (The wind-down comes a second before the expiry: wait for it.
            // The refusal may reset the connection before connect returns.)
            tokio::time::sleep(Duration::from_secs(2)).await;
            let mut back = Vec::new();
            if let Ok(mut fresh) = TcpStream::connect(mesh.outbound_addr()).await {
                let _ = fresh
                    .write_all(b"GET /x HTTP/1.1\r\nhost: api.test\r\n\r\n")
                    .await;
                let read = fresh.read_to_end(&mut back);
                let _ = tokio::time::timeout(Duration::from_secs(5), read).await;
            }
            if back.starts_with(b"HTTP/1.1 200") {
                failures.push(format!(
                    "{label} a new connection after expiry was answered"
                ));
            }
        }
    }
    failures
}
