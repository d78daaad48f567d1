//! The small HTTP/1.1 server under the admin API, the health port, the
//! authority's API and the federation bundle endpoint.
//!
//! Design bias: *bounded in every dimension, the same way for all, and
//! an idle connection gives way to a caller with a question*. Request
//! heads must arrive within a time limit and fit a size limit, a connection
//! lives at most a fixed time, a fixed number are served at once, and one
//! source address may hold only a share of them (its excess is closed at
//! once). What is served is the caller's business: a handler turns a
//! request into a response. The server reads no request body itself; a
//! handler that takes one reads it within bounds of its own (the
//! authority's: 64 KiB, within its header timeout).
//!
//! When every slot is held, a newcomer does not simply wait in the backlog
//! behind connections that may ask nothing: one of them gives way, fairly
//! by source first, then the one idle longest, and hands its slot to the
//! newcomer ([`held`]). Without this, a few addresses holding their shares
//! of idle connections locked kubelet's probes out of the health port
//! until the header timeout, again and again.

pub(crate) mod held;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConnection;

use crate::sidecar::shares::{Shares, Source};
use held::{Admission, Admitted, Connection, InRequest, Phase};
pub use held::{EVICT_AFTER, HANDSHAKE_EVICT_AFTER};

/// The response body of both servers: small and complete.
pub type Body = Full<Bytes>;

/// A connection whose handshake is done, as its handler is made for it.
#[derive(Clone, Copy)]
pub struct Accepted<'a> {
    /// The caller's address.
    pub peer: SocketAddr,
    /// Its TLS session (with the client certificate it presented, if any),
    /// on a TLS server.
    pub tls: Option<&'a ServerConnection>,
}

/// The bounds of one server.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// Time allowed for a request head to arrive (also the grace period a
    /// closing connection gets to finish its request).
    pub header_read_timeout: Duration,
    /// A connection is closed after this long.
    pub connection_lifetime: Duration,
    /// Connections served at once.
    pub max_connections: usize,
    /// Connections one source ([`crate::sidecar::shares::Source`]: an IPv4
    /// address or an IPv6 /64) may hold at once.
    pub max_per_source: usize,
    /// Largest request head accepted.
    pub max_head_bytes: usize,
    /// Several requests per connection (otherwise one, then close).
    pub keep_alive: bool,
}

/// Serves `handler` on `listener` within `limits` until `shutdown`
/// resolves, then stops accepting and lets in-flight requests finish
/// (bounded by the header timeout and the connection lifetime). `what`
/// names the server in logs.
pub async fn serve<H, Fut>(
    listener: TcpListener,
    what: &'static str,
    limits: ServerLimits,
    handler: H,
    shutdown: impl Future<Output = ()>,
) where
    H: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let handler_for = move |_: Accepted<'_>| handler.clone();
    serve_maybe_tls(listener, None, what, limits, handler_for, shutdown).await;
}

/// [`serve`] over TLS: the handshake must finish within the header read
/// timeout, and counts against the same limits.
pub async fn serve_tls<H, Fut>(
    listener: TcpListener,
    tls: TlsAcceptor,
    what: &'static str,
    limits: ServerLimits,
    handler: H,
    shutdown: impl Future<Output = ()>,
) where
    H: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let handler_for = move |_: Accepted<'_>| handler.clone();
    serve_tls_per_connection(listener, tls, what, limits, handler_for, shutdown).await;
}

/// [`serve_tls`] for a server whose answers depend on the connection: once
/// a connection's handshake is done, `handler_for` is told who it is
/// ([`Accepted`]: the caller's address, the client certificate it
/// presented, if any) and returns the handler of its requests.
pub async fn serve_tls_per_connection<F, H, Fut>(
    listener: TcpListener,
    tls: TlsAcceptor,
    what: &'static str,
    limits: ServerLimits,
    handler_for: F,
    shutdown: impl Future<Output = ()>,
) where
    F: Fn(Accepted<'_>) -> H + Send + Sync + 'static,
    H: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    serve_maybe_tls(listener, Some(tls), what, limits, handler_for, shutdown).await;
}

async fn serve_maybe_tls<F, H, Fut>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    what: &'static str,
    limits: ServerLimits,
    handler_for: F,
    shutdown: impl Future<Output = ()>,
) where
    F: Fn(Accepted<'_>) -> H + Send + Sync + 'static,
    H: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let handler_for = Arc::new(handler_for);
    let admission = Arc::new(Admission::new(
        limits.max_connections,
        limits.max_per_source,
    ));
    let sources: Shares<Source> = Shares::new(limits.max_per_source);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_head_bytes)
        .max_headers(64)
        .keep_alive(limits.keep_alive);
    let builder = Arc::new(builder);

    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "{what}: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Small request-response exchanges: no Nagle delay.
        let _ = stream.set_nodelay(true);
        let source = Source::of(peer.ip());
        let Some(share) = sources.take(&source) else {
            tracing::debug!(%peer, "{what}: the source holds its share of connections; closed");
            continue;
        };
        let phase = match tls {
            Some(_) => Phase::Handshake,
            None => Phase::AwaitingHead,
        };
        let Some(admitted) = admission.admit(source, phase) else {
            tracing::debug!(%peer, "{what}: full, none may give way, as many waiting; closed");
            continue;
        };
        let handler_for = handler_for.clone();
        let builder = builder.clone();
        let stop = stop_rx.clone();
        let tls = tls.clone();
        let admission = admission.clone();
        tokio::spawn(async move {
            let slot = match admitted {
                Admitted::Now(slot) => slot,
                Admitted::Later(later) => {
                    let limit = limits.header_read_timeout;
                    match admission.slot_for(later, limit, stop.clone()).await {
                        Some(slot) => slot,
                        None => return tracing::debug!(%peer, "{what}: no slot in time; closed"),
                    }
                }
            };
            let _held = share;
            let me = slot.connection().clone();
            let _slot = slot;
            let Some(tls) = tls else {
                let handler = handler_for(Accepted { peer, tls: None });
                return drive(&builder, stream, handler, limits, stop, &me, peer, what).await;
            };
            let handshake = tokio::time::timeout(limits.header_read_timeout, tls.accept(stream));
            tokio::select! {
                done = handshake => match done {
                    Ok(Ok(stream)) => {
                        me.enter(Phase::AwaitingHead);
                        let tls = Some(stream.get_ref().1);
                        let handler = handler_for(Accepted { peer, tls });
                        drive(&builder, stream, handler, limits, stop, &me, peer, what).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "{what}: TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "{what}: TLS handshake timed out"),
                },
                _ = me.evicted() => tracing::debug!(%peer, "{what}: closed in its handshake for a newcomer"),
            }
        });
    }
    let _ = stop_tx.send(true);
    let local = listener.local_addr().ok();
    tracing::info!(local = ?local, "{what} stopped accepting");
}

/// Serves one connection until it ends, its lifetime is over, the server
/// stops, or it gives way to a newcomer ([`held`]).
#[allow(clippy::too_many_arguments)]
async fn drive<I, H, Fut>(
    builder: &http1::Builder,
    io: I,
    handler: H,
    limits: ServerLimits,
    mut stop: watch::Receiver<bool>,
    me: &Arc<Connection>,
    peer: SocketAddr,
    what: &'static str,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let connection = me.clone();
    let service = service_fn(move |req| {
        let in_request = InRequest::new(connection.clone());
        let response = handler(req);
        async move {
            let response = response.await;
            drop(in_request);
            Ok::<_, Infallible>(response)
        }
    });
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let evicted = me.evicted();
    tokio::pin!(evicted);
    let lifetime = tokio::time::sleep(limits.connection_lifetime);
    tokio::pin!(lifetime);
    // Past its lifetime or at shutdown, a connection finishes the
    // request in flight and closes; one that does not within the
    // grace period is dropped.
    let grace = limits.header_read_timeout;
    let mut closing = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "{what}: connection ended with an error");
                }
                break;
            }
            why = &mut evicted => {
                tracing::debug!(%peer, ?why, "{what}: closed for a newcomer");
                break;
            }
            _ = stop.wait_for(|s| *s), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
                lifetime.as_mut().reset(tokio::time::Instant::now() + grace);
            }
            () = &mut lifetime => {
                if closing {
                    break;
                }
                closing = true;
                conn.as_mut().graceful_shutdown();
                lifetime.as_mut().reset(tokio::time::Instant::now() + grace);
            }
        }
    }
}

/// A plain-text response.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    respond(status, "text/plain; charset=utf-8", body.into())
}

/// A response that is never cached nor sniffed.
pub fn respond(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Body> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// `405` for a path that exists but is only read (`GET`, `HEAD`).
pub fn method_not_allowed() -> Response<Body> {
    let mut r = text(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed: use GET\n",
    );
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    r
}
