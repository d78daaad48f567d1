//! L7: proxy HTTP/1.1, HTTP/2 and gRPC, authorizing every request.
//!
//! Design bias: *one upstream connection per downstream connection, same
//! protocol on both sides*. An HTTP/2 client gets an HTTP/2 upstream, so
//! streams stay multiplexed end to end and gRPC (trailers, streaming) passes
//! through untouched ([`super::http2`]); an HTTP/1.1 connection gets an
//! HTTP/1.1 upstream and keeps its keep-alive ([`super::h1`], which parses
//! heads only). This module holds what both share.
//!
//! Per request: ask the [`RequestAuthorizer`]; on denial answer locally
//! (403 with `x-appid-denied-by`, or `grpc-status: 7` for gRPC) and never
//! touch the upstream; on allow strip every `x-appid-*` header the caller
//! sent, add the verified peer's identity headers (inbound only), forward.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use appid_policy::policy::Headers;
use http::HeaderMap;
use http::header::HeaderValue;
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
pub struct HeaderMapView<'a>(pub &'a HeaderMap);

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

    /// Resolves when the connection is no longer allowed (a policy reload
    /// or a revocation): what ends a connection that left HTTP behind (an
    /// upgrade to WebSocket, say). Never, by default.
    fn withdrawn(&self) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(std::future::pending())
    }
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

/// Why an HTTP proxy connection ended badly.
#[derive(Debug, thiserror::Error)]
pub enum HttpProxyError {
    #[error("http/2: {0}")]
    H2(h2::Error),
    #[error("i/o: {0}")]
    Io(std::io::Error),
    #[error("{0}")]
    Protocol(&'static str),
}

/// Proxies one HTTP connection until it ends or `shutdown` resolves (then
/// in-flight requests finish and the connection closes gracefully).
/// HTTP/1.x goes through [`super::h1`], HTTP/2 and gRPC through
/// [`super::http2`].
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
    match version {
        HttpVersion::Http1 => {
            super::h1::proxy(
                downstream,
                upstream,
                authorizer,
                peer_headers,
                limits,
                shutdown,
            )
            .await
        }
        // Boxed: the HTTP/2 state is large, and an HTTP/1 connection's task
        // would otherwise carry its size for its whole (mostly idle) life.
        HttpVersion::Http2 => {
            Box::pin(super::http2::proxy(
                downstream,
                upstream,
                authorizer,
                peer_headers,
                limits,
                shutdown,
            ))
            .await
        }
    }
}
