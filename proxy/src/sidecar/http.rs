//! L7: proxy HTTP/1.1, HTTP/2 and gRPC, authorizing every request.
//!
//! Design bias: *one upstream connection per downstream connection, same
//! protocol on both sides*. An HTTP/2 client gets an HTTP/2 upstream, so
//! streams stay multiplexed end to end and gRPC (trailers, streaming) passes
//! through untouched; an HTTP/1.1 connection gets an HTTP/1.1 upstream and
//! keeps its keep-alive. HTTP/2 is parsed by hyper on both sides; HTTP/1.x
//! is handed to the lean [`super::h1`] proxy, which parses only heads.
//!
//! Per request: ask the [`RequestAuthorizer`]; on denial answer locally
//! (403 with `x-appid-denied-by`, or `grpc-status: 7` for gRPC) and never
//! touch the upstream; on allow strip every `x-appid-*` header the caller
//! sent, add the verified peer's identity headers (inbound only), forward.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use appid_policy::policy::Headers;
use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

/// The HTTP version detected on the downstream connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpVersion {
    Http1,
    Http2,
}

/// What the authorizer sees of one request.
pub struct RequestFacts<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub headers: &'a dyn Headers,
    pub grpc: bool,
}

/// Header lookup over an `http::HeaderMap`.
struct HeaderMapView<'a>(&'a HeaderMap);

impl Headers for HeaderMapView<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.0.get(name).and_then(|v| v.to_str().ok())
    }
}

/// The answer for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestVerdict {
    Allow,
    Deny { rule: String, reason: String },
}

/// Decides each request (and writes its audit line).
pub trait RequestAuthorizer: Send + Sync + 'static {
    fn authorize(&self, request: &RequestFacts<'_>) -> RequestVerdict;

    /// Called once per request with its response status and how long the
    /// proxy took to get the response head (for metrics).
    fn observe(&self, _status: u16, _elapsed: Duration) {}
}

/// Headers the inbound sidecar adds for an authenticated peer.
#[derive(Debug, Clone)]
pub struct PeerHeaders {
    /// `x-appid-peer-id`: the SPIFFE ID.
    pub id: HeaderValue,
    /// `x-appid-peer`: base64url of the peer's AppID JSON.
    pub claims: HeaderValue,
}

pub const PEER_ID_HEADER: &str = "x-appid-peer-id";
pub const PEER_CLAIMS_HEADER: &str = "x-appid-peer";
pub const DENIED_BY_HEADER: &str = "x-appid-denied-by";

/// Limits for one proxied HTTP connection.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Largest request head (HTTP/1) or header list (HTTP/2) accepted.
    pub max_header_bytes: usize,
    /// How long a client may take to send a request head.
    pub header_timeout: Duration,
}

type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// Why an HTTP proxy connection ended badly.
#[derive(Debug, thiserror::Error)]
pub enum HttpProxyError {
    #[error("upstream handshake failed: {0}")]
    UpstreamHandshake(hyper::Error),
    #[error("downstream connection error: {0}")]
    Downstream(hyper::Error),
    #[error("i/o: {0}")]
    Io(std::io::Error),
    #[error("{0}")]
    Protocol(&'static str),
}

/// Proxies one HTTP connection until it ends or `shutdown` resolves (then
/// in-flight requests finish and the connection closes gracefully).
/// HTTP/1.x goes through [`super::h1`]; HTTP/2 (and gRPC) through hyper.
pub async fn proxy<D, U>(
    downstream: D,
    upstream: U,
    version: HttpVersion,
    authorizer: Arc<dyn RequestAuthorizer>,
    peer_headers: Option<PeerHeaders>,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()>,
) -> Result<(), HttpProxyError>
where
    D: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    U: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if version == HttpVersion::Http1 {
        return super::h1::proxy(
            downstream,
            upstream,
            authorizer,
            peer_headers,
            limits,
            shutdown,
        )
        .await;
    }
    // Boxed: the HTTP/2 machinery is large, and an HTTP/1 connection's task
    // would otherwise carry its size for its whole (mostly idle) life.
    Box::pin(proxy_h2(
        downstream,
        upstream,
        authorizer,
        peer_headers,
        limits,
        shutdown,
    ))
    .await
}

/// HTTP/2 (and gRPC) through hyper on both sides.
async fn proxy_h2<D, U>(
    downstream: D,
    upstream: U,
    authorizer: Arc<dyn RequestAuthorizer>,
    peer_headers: Option<PeerHeaders>,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()>,
) -> Result<(), HttpProxyError>
where
    D: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    U: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes as u32)
        .handshake(TokioIo::new(upstream))
        .await
        .map_err(HttpProxyError::UpstreamHandshake)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream http/2 connection ended");
        }
    });

    let peer_headers = Arc::new(peer_headers);
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let sender = sender.clone();
        let authorizer = authorizer.clone();
        let peer_headers = peer_headers.clone();
        async move { Ok::<_, Infallible>(handle(request, sender, &*authorizer, &peer_headers).await) }
    });
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes as u32)
        .serve_connection(TokioIo::new(downstream), service);
    serve_until(conn, |c| c.graceful_shutdown(), shutdown).await
}

/// Drives `conn`; once `shutdown` resolves, lets in-flight requests finish
/// and closes the connection.
/// (`graceful` is the connection type's own `graceful_shutdown`.)
async fn serve_until<C>(
    conn: C,
    graceful: fn(Pin<&mut C>),
    shutdown: impl Future<Output = ()>,
) -> Result<(), HttpProxyError>
where
    C: Future<Output = Result<(), hyper::Error>>,
{
    tokio::pin!(conn, shutdown);
    tokio::select! {
        result = conn.as_mut() => return result.map_err(HttpProxyError::Downstream),
        () = &mut shutdown => graceful(conn.as_mut()),
    }
    conn.await.map_err(HttpProxyError::Downstream)
}

async fn handle(
    mut request: Request<Incoming>,
    mut upstream: hyper::client::conn::http2::SendRequest<Incoming>,
    authorizer: &dyn RequestAuthorizer,
    peer_headers: &Option<PeerHeaders>,
) -> Response<ProxyBody> {
    let grpc = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"));
    let verdict = authorizer.authorize(&RequestFacts {
        method: request.method().as_str(),
        path: request.uri().path(),
        headers: &HeaderMapView(request.headers()),
        grpc,
    });
    if let RequestVerdict::Deny { rule, reason } = verdict {
        return denied(&rule, &reason, grpc);
    }

    strip_appid_headers(request.headers_mut());
    if let Some(peer) = peer_headers {
        let headers = request.headers_mut();
        headers.insert(HeaderName::from_static(PEER_ID_HEADER), peer.id.clone());
        headers.insert(
            HeaderName::from_static(PEER_CLAIMS_HEADER),
            peer.claims.clone(),
        );
    }

    let result = match upstream.ready().await {
        Ok(()) => upstream.send_request(request).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(response) => response.map(|body| body.boxed()),
        Err(e) => {
            tracing::debug!(error = %e, "upstream request failed");
            local_response(StatusCode::BAD_GATEWAY, "upstream unavailable\n", &[])
        }
    }
}

/// Removes every `x-appid-*` header: only this sidecar may set them.
fn strip_appid_headers(headers: &mut HeaderMap) {
    let spoofed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with("x-appid-"))
        .cloned()
        .collect();
    for name in spoofed {
        headers.remove(name);
    }
}

/// The local answer to a denied request.
fn denied(rule: &str, reason: &str, grpc: bool) -> Response<ProxyBody> {
    let rule_value =
        HeaderValue::from_str(rule).unwrap_or_else(|_| HeaderValue::from_static("invalid"));
    if grpc {
        // A gRPC "trailers-only" response: status in the headers, no body.
        let message = HeaderValue::from_str(reason)
            .unwrap_or_else(|_| HeaderValue::from_static("permission denied"));
        let mut response = Response::new(empty());
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert("grpc-status", HeaderValue::from_static("7"));
        headers.insert("grpc-message", message);
        headers.insert(DENIED_BY_HEADER, rule_value);
        return response;
    }
    local_response(
        StatusCode::FORBIDDEN,
        &format!("appid: {reason}\n"),
        &[(DENIED_BY_HEADER, rule_value)],
    )
}

fn local_response(
    status: StatusCode,
    body: &str,
    headers: &[(&'static str, HeaderValue)],
) -> Response<ProxyBody> {
    let mut response = Response::new(
        Full::new(Bytes::from(body.to_string()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    for (name, value) in headers {
        response.headers_mut().insert(*name, value.clone());
    }
    response
}

fn empty() -> ProxyBody {
    Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_only_appid_headers() {
        let mut headers = HeaderMap::new();
        headers.insert("x-appid-peer-id", HeaderValue::from_static("spoofed"));
        headers.insert("x-appid-anything", HeaderValue::from_static("spoofed"));
        headers.insert("x-other", HeaderValue::from_static("kept"));
        strip_appid_headers(&mut headers);
        assert_eq!(headers.len(), 1);
        assert_eq!(headers["x-other"], "kept");
    }

    #[test]
    fn denials_name_the_rule() {
        let plain = denied("no-admin", "path /admin", false);
        assert_eq!(plain.status(), StatusCode::FORBIDDEN);
        assert_eq!(plain.headers()[DENIED_BY_HEADER], "no-admin");
        let grpc = denied("default", "no rule matched", true);
        assert_eq!(grpc.status(), StatusCode::OK);
        assert_eq!(grpc.headers()["grpc-status"], "7");
        assert_eq!(grpc.headers()[DENIED_BY_HEADER], "default");
    }
}
