//! The admin API on loopback: `/live`, `/ready`, `/metrics`, `/config`,
//! `/appid`.
//!
//! Design bias: *small, read-only and bounded*. Only `GET` and `HEAD`, no
//! request bodies read, nothing that changes state. It refuses to serve on
//! a non-loopback address (the config refuses one too): what it shows (the
//! effective config, this workload's claims) is for the local operator, not
//! the network. A slow or idle client cannot hold it: request heads must
//! arrive within [`HEADER_READ_TIMEOUT`], a connection lives at most
//! [`CONNECTION_LIFETIME`], at most [`MAX_CONNECTIONS`] are served at once
//! (the rest wait in the kernel's backlog), and request heads are capped at
//! [`MAX_HEAD_BYTES`] (the server itself is [`crate::bounded_http`]).
//!
//! What kubelet and Prometheus need from the network (`/live`, `/ready`,
//! `/metrics`) the optional health port ([`crate::health`]) serves on the
//! pod IP, from the same [`probe_endpoint`]; `/config` and `/appid` never
//! leave loopback.
//!
//! `/ready` is 200 only when identity, policy and listeners are all up and
//! the sidecar is not draining; otherwise 503 with what is missing
//! (`not ready: identity, listeners`).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::net::TcpListener;

use crate::bounded_http::{self, Body, ServerLimits, respond, text};
use crate::metrics::{self, Metrics};

/// Time allowed for a request head to arrive.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// A kept-alive admin connection is closed after this long.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// Admin connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Largest request head accepted.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

#[derive(Debug, Default)]
struct ReadinessParts {
    identity: AtomicBool,
    policy: AtomicBool,
    listeners: AtomicBool,
    draining: AtomicBool,
    audit_failing: AtomicBool,
}

/// What `/ready` reports. Cheap to clone; clones share state.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<ReadinessParts>);

impl Readiness {
    /// Our certificate is loaded and valid.
    pub fn set_identity_ready(&self, ready: bool) {
        self.0.identity.store(ready, Ordering::Release);
    }

    /// A policy is loaded.
    pub fn set_policy_ready(&self, ready: bool) {
        self.0.policy.store(ready, Ordering::Release);
    }

    /// Every configured listener is bound and accepting.
    pub fn set_listeners_ready(&self, ready: bool) {
        self.0.listeners.store(ready, Ordering::Release);
    }

    /// Shutdown has begun: report not ready so traffic is steered away
    /// while live connections drain.
    pub fn set_draining(&self, draining: bool) {
        self.0.draining.store(draining, Ordering::Release);
    }

    /// Audit lines cannot be written: decisions would go unrecorded, so
    /// report not ready (traffic is still served: fail open on traffic,
    /// never silently).
    pub fn set_audit_failing(&self, failing: bool) {
        self.0.audit_failing.store(failing, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.missing().is_empty()
    }

    /// What keeps the sidecar from being ready, in a fixed order.
    pub fn missing(&self) -> Vec<&'static str> {
        let p = &*self.0;
        [
            (!p.identity.load(Ordering::Acquire), "identity"),
            (!p.policy.load(Ordering::Acquire), "policy"),
            (!p.listeners.load(Ordering::Acquire), "listeners"),
            (p.draining.load(Ordering::Acquire), "draining"),
            (p.audit_failing.load(Ordering::Acquire), "audit log"),
        ]
        .into_iter()
        .filter_map(|(bad, name)| bad.then_some(name))
        .collect()
    }
}

/// What the admin API shows.
pub struct AdminState {
    pub readiness: Readiness,
    pub metrics: Arc<Metrics>,
    /// [`crate::config::ProxyConfig::effective_json`].
    pub config_json: serde_json::Value,
    /// This workload's SPIFFE ID and claims; `Null` until the identity is
    /// loaded (then `/appid` answers 503). Swapped on rotation.
    pub identity_json: Arc<ArcSwap<serde_json::Value>>,
}

/// Why the admin server would not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("admin API on {0}: refusing a non-loopback address; use 127.0.0.1 or [::1]")]
    NotLoopback(SocketAddr),
    #[error("admin API: cannot read the listening address: {0}")]
    LocalAddr(#[source] std::io::Error),
}

/// The admin server's bounds.
const LIMITS: ServerLimits = ServerLimits {
    header_read_timeout: HEADER_READ_TIMEOUT,
    connection_lifetime: CONNECTION_LIFETIME,
    max_connections: MAX_CONNECTIONS,
    // Loopback only: every caller is local, none is held to a share (as
    // many as are served, and as many waiting).
    max_per_source: 2 * MAX_CONNECTIONS,
    max_head_bytes: MAX_HEAD_BYTES,
    keep_alive: true,
};

/// Serves the admin API on `listener` until `shutdown` resolves, then stops
/// accepting and lets in-flight requests finish (bounded by the header
/// timeout and connection lifetime). Returns an error only if the listener
/// is not on a loopback address.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AdminState>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AdminError> {
    let local = listener.local_addr().map_err(AdminError::LocalAddr)?;
    if !local.ip().is_loopback() {
        tracing::error!(%local, "admin API not started: address is not loopback");
        return Err(AdminError::NotLoopback(local));
    }
    tracing::info!(%local, "admin API listening");
    let handler = move |req: Request<Incoming>| {
        let response = handle(&state, &req);
        async move { response }
    };
    bounded_http::serve(listener, "admin API", LIMITS, handler, shutdown).await;
    Ok(())
}

fn json(value: &serde_json::Value) -> Response<Body> {
    match serde_json::to_vec_pretty(value) {
        Ok(mut v) => {
            v.push(b'\n');
            respond(StatusCode::OK, "application/json", v.into())
        }
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode JSON: {e}\n"),
        ),
    }
}

/// `/live`, `/ready` and `/metrics`: the answers the admin API and the
/// health port ([`crate::health`]) share, so both always say the same (one
/// check, one place). `None` for any other path. The method is the
/// caller's to check; `accept` (the request's `Accept`) picks the metrics
/// format ([`metrics::exposition`]).
pub fn probe_endpoint(
    path: &str,
    accept: Option<&str>,
    readiness: &Readiness,
    metrics: &Metrics,
) -> Option<Response<Body>> {
    Some(match path {
        "/live" => text(StatusCode::OK, "live\n"),
        "/ready" => {
            let missing = readiness.missing();
            if missing.is_empty() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: {}\n", missing.join(", ")),
                )
            }
        }
        "/metrics" => {
            let format = metrics::exposition::Format::negotiate(accept);
            respond(
                StatusCode::OK,
                format.content_type(),
                metrics.encode_as(format).into(),
            )
        }
        _ => return None,
    })
}

/// Routes one request. Pure apart from reading `state`.
fn handle<B>(state: &AdminState, req: &Request<B>) -> Response<Body> {
    let path = req.uri().path();
    let known = matches!(path, "/live" | "/ready" | "/metrics" | "/config" | "/appid");
    if !known {
        return text(
            StatusCode::NOT_FOUND,
            "not found: try /live, /ready, /metrics, /config or /appid\n",
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return bounded_http::method_not_allowed();
    }
    let accept = req
        .headers()
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    if let Some(response) = probe_endpoint(path, accept, &state.readiness, &state.metrics) {
        return response;
    }
    if path == "/config" {
        return json(&state.config_json);
    }
    let identity = state.identity_json.load();
    if identity.is_null() {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no identity loaded yet\n",
        )
    } else {
        json(&identity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    struct Reply {
        status: u16,
        headers: String,
        body: String,
    }

    /// One request on a fresh connection, `Connection: close`, read to EOF.
    async fn request(addr: SocketAddr, method: &str, path: &str) -> Reply {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let req =
            format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8(buf).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        Reply {
            status,
            headers: head.to_ascii_lowercase(),
            body: body.to_owned(),
        }
    }

    async fn start() -> (
        SocketAddr,
        Arc<AdminState>,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<Result<(), AdminError>>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(AdminState {
            readiness: Readiness::default(),
            metrics: Arc::new(Metrics::new()),
            config_json: json!({"admin": addr.to_string(), "trust_domains": ["prod.example"]}),
            identity_json: Arc::new(ArcSwap::from_pointee(serde_json::Value::Null)),
        });
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, state.clone(), async move {
            let _ = rx.await;
        }));
        (addr, state, tx, task)
    }

    #[tokio::test]
    async fn endpoints() {
        let (addr, state, stop, task) = start().await;

        let r = request(addr, "GET", "/live").await;
        assert_eq!((r.status, r.body.as_str()), (200, "live\n"));

        let r = request(addr, "GET", "/ready").await;
        assert_eq!(r.status, 503);
        assert_eq!(r.body, "not ready: identity, policy, listeners\n");
        state.readiness.set_identity_ready(true);
        state.readiness.set_policy_ready(true);
        let r = request(addr, "GET", "/ready").await;
        assert_eq!((r.status, r.body.as_str()), (503, "not ready: listeners\n"));
        state.readiness.set_listeners_ready(true);
        let r = request(addr, "GET", "/ready").await;
        assert_eq!((r.status, r.body.as_str()), (200, "ready\n"));
        state.readiness.set_draining(true);
        let r = request(addr, "GET", "/ready").await;
        assert_eq!((r.status, r.body.as_str()), (503, "not ready: draining\n"));

        state
            .metrics
            .connection_opened(crate::metrics::Direction::Inbound);
        let r = request(addr, "GET", "/metrics").await;
        assert_eq!(r.status, 200);
        assert!(
            // No `Accept: application/openmetrics-text`: the classic format.
            r.headers
                .contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
            "{}",
            r.headers
        );
        assert!(
            r.body
                .contains("appid_connections_opened_total{direction=\"inbound\"} 1\n"),
            "{}",
            r.body
        );
        assert!(!r.body.contains("# EOF"), "OpenMetrics only on request");

        let r = request(addr, "GET", "/config").await;
        assert_eq!(r.status, 200);
        assert!(r.headers.contains("content-type: application/json"));
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["trust_domains"][0], "prod.example");

        let r = request(addr, "GET", "/appid").await;
        assert_eq!(r.status, 503);
        state.identity_json.store(Arc::new(
            json!({"id": "spiffe://prod.example/ns/shop/sa/web", "claims": {"v": 1}}),
        ));
        let r = request(addr, "GET", "/appid?x=1").await;
        assert_eq!(r.status, 200);
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["id"], "spiffe://prod.example/ns/shop/sa/web");

        let r = request(addr, "GET", "/nope").await;
        assert_eq!(r.status, 404);
        let r = request(addr, "POST", "/ready").await;
        assert_eq!(r.status, 405);
        assert!(r.headers.contains("allow: get, head"), "{}", r.headers);
        let r = request(addr, "HEAD", "/live").await;
        assert_eq!((r.status, r.body.as_str()), (200, ""));

        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "listener should be closed after shutdown"
        );
    }

    #[tokio::test]
    async fn keep_alive_serves_several_requests() {
        let (addr, _state, _stop, _task) = start().await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /live HTTP/1.1\r\nHost: x\r\n\r\nGET /live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            String::from_utf8(buf)
                .unwrap()
                .matches("HTTP/1.1 200 OK")
                .count(),
            2
        );
    }

    #[tokio::test]
    async fn oversized_head_is_refused() {
        let (addr, _state, _stop, _task) = start().await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        let big = "a".repeat(MAX_HEAD_BYTES * 2);
        let req = format!("GET /live HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
        let _ = s.write_all(req.as_bytes()).await;
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&buf);
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 431"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn silent_client_is_dropped_after_header_timeout() {
        let (addr, _state, _stop, _task) = start().await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /live HT").await.unwrap();
        let mut buf = Vec::new();
        let r = tokio::time::timeout(HEADER_READ_TIMEOUT * 2, s.read_to_end(&mut buf)).await;
        assert!(r.is_ok(), "connection should be closed by the server");
    }

    #[tokio::test]
    async fn at_the_connection_limit_an_idle_connection_gives_way() {
        let (addr, _state, _stop, _task) = start().await;
        // Hold every slot with an idle connection...
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        // ...the next request waits (none has been idle long enough to
        // give way yet), then the oldest gives way, and it is served.
        let pending = tokio::spawn(request(addr, "GET", "/live"));
        tokio::time::sleep(crate::bounded_http::EVICT_AFTER / 2).await;
        assert!(!pending.is_finished());
        let r = tokio::time::timeout(Duration::from_secs(5), pending)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.status, 200);
        let mut byte = [0u8; 1];
        let oldest = tokio::time::timeout(Duration::from_secs(5), idle[0].read(&mut byte));
        assert!(
            matches!(oldest.await, Ok(Ok(0) | Err(_))),
            "the oldest was closed"
        );
    }

    #[tokio::test]
    async fn refuses_non_loopback() {
        // 0.0.0.0 is not loopback: serve must refuse before accepting anything.
        let listener = TcpListener::bind("0.0.0.0:0").await.unwrap();
        let state = Arc::new(AdminState {
            readiness: Readiness::default(),
            metrics: Arc::new(Metrics::new()),
            config_json: json!({}),
            identity_json: Arc::new(ArcSwap::from_pointee(serde_json::Value::Null)),
        });
        let r = serve(listener, state, std::future::pending()).await;
        assert!(matches!(r, Err(AdminError::NotLoopback(_))));
    }

    #[test]
    fn readiness_missing_order() {
        let r = Readiness::default();
        assert_eq!(r.missing(), vec!["identity", "policy", "listeners"]);
        assert!(!r.is_ready());
        let c = r.clone();
        c.set_identity_ready(true);
        c.set_policy_ready(true);
        c.set_listeners_ready(true);
        assert!(r.is_ready());
        c.set_policy_ready(false);
        assert_eq!(r.missing(), vec!["policy"]);
    }
}
