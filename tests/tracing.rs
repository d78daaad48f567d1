//! Trace export through a real sidecar pair (issue "Operators' view", 1):
//! a real OTLP/HTTP receiver in this process decodes what both sidecars
//! send, and the spans must tell one story.
//!
//! ```text
//! curl (traceparent) ──▶ client sidecar (web) ══ mTLS ══▶ server sidecar (api) ──▶ app
//!                           │ appid.request (client)        │ appid.request (server)
//!                           └──────── OTLP/HTTP ────────────┴──▶ receiver (this test)
//! ```
//!
//! Both sidecars run with `RUST_LOG=trace`, so h2/hyper/rustls have spans
//! to give; none may reach the receiver.

#[path = "support/mod.rs"]
mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message as _;

use support::apps::HttpApp;
use support::clients;
use support::mesh::{API_PATH, Mesh, MeshOptions, TRUST_DOMAIN, WEB_PATH, WEB_TO_API};

/// The server sidecar: `/allowed/**` allowed, `/admin/**` denied by name.
const SERVER_POLICY: &str = "\
version: 1
default: deny
rules:
  - name: no-admin
    action: deny
    from: { labels.app: web }
    to: { labels.app: api }
    http: { paths: [\"/admin/**\"] }
  - name: web-reads
    action: allow
    from: { labels.app: web }
    to: { labels.app: api }
    http: { methods: [GET], paths: [\"/allowed/**\"] }
";

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CURL_SPAN_ID: &str = "00f067aa0ba902b7";

/// One span as received, with its resource's `service.name`.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    scope: String,
    span: Span,
}

impl Received {
    fn attr(&self, key: &str) -> Option<String> {
        attr(&self.span.attributes, key)
    }

    fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }

    fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }

    fn parent_span_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }
}

fn attr(attributes: &[KeyValue], key: &str) -> Option<String> {
    let value = attributes.iter().find(|kv| kv.key == key)?.value.as_ref()?;
    match value {
        AnyValue {
            value: Some(any_value::Value::StringValue(s)),
        } => Some(s.clone()),
        AnyValue {
            value: Some(any_value::Value::IntValue(i)),
        } => Some(i.to_string()),
        AnyValue {
            value: Some(any_value::Value::BoolValue(b)),
        } => Some(b.to_string()),
        other => Some(format!("{other:?}")),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A real OTLP/HTTP receiver: `POST /v1/traces` with protobuf bodies,
/// decoded as they come.
async fn receiver() -> (SocketAddr, Arc<Mutex<Vec<Received>>>) {
    let received = Arc::new(Mutex::new(Vec::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the receiver");
    let addr = listener.local_addr().expect("its address");
    let store = received.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let store = store.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: hyper::Request<Incoming>| {
                    let store = store.clone();
                    async move {
                        let path = request.uri().path().to_owned();
                        let body = request
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let status = if path != "/v1/traces" {
                            404
                        } else {
                            match ExportTraceServiceRequest::decode(body) {
                                Ok(export) => {
                                    store.lock().unwrap().extend(flatten(export));
                                    200
                                }
                                Err(_) => 400,
                            }
                        };
                        Ok::<_, Infallible>(
                            hyper::Response::builder()
                                .status(status)
                                .header("content-type", "application/x-protobuf")
                                .body(Full::new(Bytes::new()))
                                .unwrap(),
                        )
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, received)
}

fn flatten(export: ExportTraceServiceRequest) -> Vec<Received> {
    let mut out = Vec::new();
    for resource_spans in export.resource_spans {
        let service = resource_spans
            .resource
            .as_ref()
            .and_then(|r| attr(&r.attributes, "service.name"))
            .unwrap_or_default();
        for scope_spans in resource_spans.scope_spans {
            let scope = scope_spans.scope.map(|s| s.name).unwrap_or_default();
            for span in scope_spans.spans {
                out.push(Received {
                    service: service.clone(),
                    scope: scope.clone(),
                    span,
                });
            }
        }
    }
    out
}

#[tokio::test]
async fn spans_from_both_sidecars_continue_the_callers_trace() {
    let (collector, received) = receiver().await;
    let app = HttpApp::start().await;
    let endpoint = format!("\"http://{collector}\"");
    let mut mesh = Mesh::start(
        app.addr,
        MeshOptions {
            server_policy: SERVER_POLICY.into(),
            client_policy: WEB_TO_API.into(),
            settings: vec![("otlp_endpoint", endpoint)],
            env: vec![("RUST_LOG", "trace")],
            ..MeshOptions::default()
        },
    )
    .await;

    let traceparent = format!("traceparent: 00-{TRACE_ID}-{CURL_SPAN_ID}-01");
    let allowed = clients::curl(&["-H", &traceparent, &mesh.url("/allowed/x")]).await;
    assert_eq!(allowed.status, 200, "{allowed:?}\n{}", mesh.context());
    let denied = clients::curl(&[&mesh.url("/admin/panel")]).await;
    assert_eq!(denied.status, 403, "{denied:?}\n{}", mesh.context());
    let app_traceparent = allowed.json()["headers"]["traceparent"][0]
        .as_str()
        .unwrap_or_else(|| panic!("the app got no traceparent: {}", allowed.body))
        .to_owned();

    // SIGTERM: each sidecar drains, then flushes its spans on the way out.
    mesh.server.terminate();
    mesh.client.terminate();
    for sidecar in [&mut mesh.server, &mut mesh.client] {
        let status = sidecar.wait_exit(Duration::from_secs(20)).await;
        assert!(status.success(), "{status}");
    }
    let spans = received.lock().unwrap().clone();
    let context = || {
        let lines: Vec<String> = spans
            .iter()
            .map(|r| {
                format!(
                    "{} {} {} parent={} {:?}",
                    r.service,
                    r.span.name,
                    r.span_id(),
                    r.parent_span_id(),
                    r.span
                        .attributes
                        .iter()
                        .map(|kv| format!("{}={:?}", kv.key, kv.value))
                        .collect::<Vec<_>>()
                )
            })
            .collect();
        format!("{}\n{}", lines.join("\n"), mesh.context())
    };

    // Only our spans: nothing from h2, hyper or rustls, at RUST_LOG=trace.
    assert!(!spans.is_empty(), "no spans received\n{}", context());
    for r in &spans {
        assert!(
            ["appid.connection", "appid.request"].contains(&r.span.name.as_str()),
            "unexpected span {:?} from scope {}\n{}",
            r.span.name,
            r.scope,
            context()
        );
        for key in ["code.namespace", "code.module.name", "target"] {
            if let Some(module) = r.attr(key) {
                assert!(
                    module.starts_with("appid_proxy"),
                    "{key}={module}\n{}",
                    context()
                );
            }
        }
    }

    let web = format!("spiffe://{TRUST_DOMAIN}/{WEB_PATH}");
    let api = format!("spiffe://{TRUST_DOMAIN}/{API_PATH}");
    let request = |service: &str, path: &str| {
        spans
            .iter()
            .find(|r| {
                r.service == service
                    && r.span.name == "appid.request"
                    && r.attr("url.path").as_deref() == Some(path)
            })
            .unwrap_or_else(|| panic!("no request span for {path} from {service}\n{}", context()))
            .clone()
    };

    // The allowed call: curl -> client sidecar -> server sidecar -> app.
    let client = request(&web, "/allowed/x");
    let server = request(&api, "/allowed/x");
    assert_eq!(client.trace_id(), TRACE_ID, "{}", context());
    assert_eq!(client.parent_span_id(), CURL_SPAN_ID, "{}", context());
    assert_eq!(client.span.kind, SpanKind::Client as i32);
    assert_eq!(server.trace_id(), TRACE_ID, "{}", context());
    assert_eq!(server.parent_span_id(), client.span_id(), "{}", context());
    assert_eq!(server.span.kind, SpanKind::Server as i32);
    assert_eq!(
        app_traceparent,
        format!("00-{TRACE_ID}-{}-01", server.span_id()),
        "{}",
        context()
    );
    for r in [&client, &server] {
        assert_eq!(r.attr("http.request.method").as_deref(), Some("GET"));
        assert_eq!(r.attr("http.response.status_code").as_deref(), Some("200"));
        assert_eq!(r.attr("appid.decision").as_deref(), Some("allow"));
    }
    assert_eq!(client.attr("appid.rule").as_deref(), Some("web-to-api"));
    assert_eq!(server.attr("appid.rule").as_deref(), Some("web-reads"));

    // The denied call: decided by the server sidecar, which names the rule.
    let denied = request(&api, "/admin/panel");
    assert_eq!(denied.attr("appid.decision").as_deref(), Some("deny"));
    assert_eq!(denied.attr("appid.rule").as_deref(), Some("no-admin"));
    assert_eq!(
        denied.attr("http.response.status_code").as_deref(),
        Some("403")
    );
    let denied_client = request(&web, "/admin/panel");
    assert_eq!(denied.parent_span_id(), denied_client.span_id());
    assert_eq!(
        denied_client.attr("http.response.status_code").as_deref(),
        Some("403")
    );

    // Connection spans on both sides, with the verified peer.
    for (service, peer, direction) in [(&web, &api, "outbound"), (&api, &web, "inbound")] {
        let connection = spans
            .iter()
            .find(|r| {
                r.service == *service
                    && r.span.name == "appid.connection"
                    && r.attr("appid.peer.id").as_deref() == Some(peer.as_str())
            })
            .unwrap_or_else(|| panic!("no connection span from {service}\n{}", context()));
        assert_eq!(
            connection.attr("appid.direction").as_deref(),
            Some(direction)
        );
        assert_eq!(
            connection.attr("appid.mesh.alpn").as_deref(),
            Some("appid-mux/1")
        );
        assert_eq!(connection.attr("appid.tunnel").as_deref(), Some("pooled"));
        assert_eq!(
            connection.attr("network.peer.address").as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(
            connection.attr("network.protocol.name").as_deref(),
            Some("http1")
        );
    }
    // Without a traceparent, a request span is the connection span's child.
    let connection_of_denied = spans
        .iter()
        .find(|r| r.span_id() == denied_client.parent_span_id())
        .unwrap_or_else(|| panic!("the denied call's parent was not exported\n{}", context()));
    assert_eq!(connection_of_denied.span.name, "appid.connection");
}

/// Starts a pair exporting to a fresh receiver.
async fn traced_mesh(
    app: SocketAddr,
    server_policy: &str,
    tunnel: Option<&'static str>,
    extra: Vec<(&'static str, String)>,
) -> (Mesh, Arc<Mutex<Vec<Received>>>) {
    let (collector, received) = receiver().await;
    let mut settings = vec![("otlp_endpoint", format!("\"http://{collector}\""))];
    settings.extend(extra);
    let mesh = Mesh::start(
        app,
        MeshOptions {
            server_policy: server_policy.into(),
            client_policy: WEB_TO_API.into(),
            server_tunnel: tunnel,
            client_tunnel: tunnel,
            settings,
            ..MeshOptions::default()
        },
    )
    .await;
    (mesh, received)
}

/// SIGTERM to both sidecars (they flush their spans on the way out), then
/// what the receiver got.
async fn finish(mesh: &mut Mesh, received: &Arc<Mutex<Vec<Received>>>) -> Vec<Received> {
    mesh.server.terminate();
    mesh.client.terminate();
    for sidecar in [&mut mesh.server, &mut mesh.client] {
        let status = sidecar.wait_exit(Duration::from_secs(20)).await;
        assert!(status.success(), "{status}");
    }
    received.lock().unwrap().clone()
}

fn describe(spans: &[Received]) -> String {
    spans
        .iter()
        .map(|r| {
            let attrs: Vec<String> = r
                .span
                .attributes
                .iter()
                .map(|kv| format!("{}={:?}", kv.key, attr(std::slice::from_ref(kv), &kv.key)))
                .collect();
            format!(
                "{} {} {} {}",
                r.service,
                r.span.name,
                r.trace_id(),
                attrs.join(" ")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The connection span of `service` with the peer `peer`.
fn connection_of<'a>(spans: &'a [Received], service: &str, peer: &str) -> &'a Received {
    spans
        .iter()
        .find(|r| {
            r.service == service
                && r.span.name == "appid.connection"
                && r.attr("appid.peer.id").as_deref() == Some(peer)
        })
        .unwrap_or_else(|| panic!("no connection span from {service}\n{}", describe(spans)))
}

/// The same spans whatever carries the call: a strict TLS connection, a
/// pooled tunnel, HTTP/2 inside it, or opaque TCP (decided once, on the
/// connection span).
#[tokio::test]
async fn every_transport_and_protocol_exports_its_spans() {
    let web = format!("spiffe://{TRUST_DOMAIN}/{WEB_PATH}");
    let api = format!("spiffe://{TRUST_DOMAIN}/{API_PATH}");

    // HTTP/1.1 over strict tunnels, HTTP/2 over pooled ones.
    let app = HttpApp::start().await;
    for (tunnel, alpn, mode, curl_flag, protocol) in [
        (Some("strict"), "appid/1", "strict", "--http1.1", "http1"),
        (
            None,
            "appid-mux/1",
            "pooled",
            "--http2-prior-knowledge",
            "http2",
        ),
    ] {
        let (mut mesh, received) = traced_mesh(app.addr, SERVER_POLICY, tunnel, Vec::new()).await;
        let traceparent = format!("traceparent: 00-{TRACE_ID}-{CURL_SPAN_ID}-01");
        let reply = clients::curl(&[curl_flag, "-H", &traceparent, &mesh.url("/allowed/x")]).await;
        assert_eq!(reply.status, 200, "{mode}: {reply:?}\n{}", mesh.context());
        let spans = finish(&mut mesh, &received).await;
        for (service, peer, direction, kind) in [
            (&web, &api, "outbound", SpanKind::Client),
            (&api, &web, "inbound", SpanKind::Server),
        ] {
            let connection = connection_of(&spans, service, peer);
            let shown = describe(&spans);
            assert_eq!(
                connection.attr("appid.direction").as_deref(),
                Some(direction),
                "{shown}"
            );
            assert_eq!(
                connection.attr("appid.mesh.alpn").as_deref(),
                Some(alpn),
                "{shown}"
            );
            assert_eq!(
                connection.attr("appid.tunnel").as_deref(),
                Some(mode),
                "{shown}"
            );
            assert_eq!(
                connection.attr("network.protocol.name").as_deref(),
                Some(protocol),
                "{shown}"
            );
            let request = spans
                .iter()
                .find(|r| r.service == *service && r.span.name == "appid.request")
                .unwrap_or_else(|| panic!("{mode}: no request span from {service}\n{shown}"));
            assert_eq!(request.trace_id(), TRACE_ID, "{shown}");
            assert_eq!(request.span.kind, kind as i32, "{shown}");
            assert_eq!(
                request.attr("appid.decision").as_deref(),
                Some("allow"),
                "{shown}"
            );
            assert_eq!(
                request.attr("url.path").as_deref(),
                Some("/allowed/x"),
                "{shown}"
            );
        }
    }

    // Opaque TCP: no request span; the connection span carries the one
    // decision, on both sides (both allow it by `web-to-api`).
    let echo = support::apps::EchoServer::start().await;
    let (mut mesh, received) = traced_mesh(echo.addr, WEB_TO_API, None, Vec::new()).await;
    support::net::connect_and_echo(mesh.outbound_addr(), b"\x00\x01 not http\n")
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", mesh.context()));
    let spans = finish(&mut mesh, &received).await;
    let shown = describe(&spans);
    assert!(
        spans.iter().all(|r| r.span.name == "appid.connection"),
        "{shown}"
    );
    for (service, peer) in [(&web, &api), (&api, &web)] {
        let connection = connection_of(&spans, service, peer);
        assert_eq!(
            connection.attr("network.protocol.name").as_deref(),
            Some("tcp"),
            "{shown}"
        );
        assert_eq!(
            connection.attr("appid.decision").as_deref(),
            Some("allow"),
            "{shown}"
        );
        assert_eq!(
            connection.attr("appid.rule").as_deref(),
            Some("web-to-api"),
            "{shown}"
        );
    }
}

/// `otlp_sampling_ratio` at run time: at 0 no new trace is sampled, while
/// a caller's sampled trace is still followed (parent-based) and an
/// unsampled one is not.
#[tokio::test]
async fn the_sampling_ratio_applies_to_new_traces_and_parents_decide_theirs() {
    let app = HttpApp::start().await;
    let (mut mesh, received) = traced_mesh(
        app.addr,
        SERVER_POLICY,
        None,
        vec![("otlp_sampling_ratio", "0".into())],
    )
    .await;
    let unsampled_trace = "0af7651916cd43dd8448eb211c80319c";
    for header in [
        None,
        Some(format!(
            "traceparent: 00-{unsampled_trace}-{CURL_SPAN_ID}-00"
        )),
        Some(format!("traceparent: 00-{TRACE_ID}-{CURL_SPAN_ID}-01")),
    ] {
        let url = mesh.url("/allowed/x");
        let mut args = vec![url.as_str()];
        if let Some(header) = &header {
            args.extend(["-H", header.as_str()]);
        }
        let reply = clients::curl(&args).await;
        assert_eq!(reply.status, 200, "{reply:?}\n{}", mesh.context());
    }
    let spans = finish(&mut mesh, &received).await;
    let shown = describe(&spans);
    // Only the sampled caller's trace: its request span on each side.
    assert!(
        spans.iter().all(|r| r.trace_id() == TRACE_ID),
        "spans of an unsampled or new trace were exported at ratio 0\n{shown}"
    );
    let requests = spans
        .iter()
        .filter(|r| r.span.name == "appid.request")
        .count();
    assert_eq!(requests, 2, "{shown}");
}

/// `otlp_service_name` names the `service.name` of every span a sidecar
/// exports (without it: the workload's SPIFFE ID, as the other tests see).
#[tokio::test]
async fn otlp_service_name_names_every_exported_span() {
    let app = HttpApp::start().await;
    let (mut mesh, received) = traced_mesh(
        app.addr,
        SERVER_POLICY,
        None,
        vec![("otlp_service_name", "\"shop-mesh\"".into())],
    )
    .await;
    let reply = clients::curl(&[&mesh.url("/allowed/x")]).await;
    assert_eq!(reply.status, 200, "{reply:?}\n{}", mesh.context());
    let spans = finish(&mut mesh, &received).await;
    let shown = describe(&spans);
    let requests = spans
        .iter()
        .filter(|r| r.span.name == "appid.request")
        .count();
    assert_eq!(requests, 2, "a request span from each sidecar\n{shown}");
    assert!(
        spans.iter().all(|r| r.service == "shop-mesh"),
        "every span under otlp_service_name\n{shown}"
    );
}
