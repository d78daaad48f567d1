//! The small HTTP/1.1 server under the admin API and the health port.
//!
//! Design bias: *bounded in every dimension, the same way for both, and
//! an idle connection gives way to a caller with a question*. Request
//! heads must arrive within a time limit and fit a size limit, a connection
//! lives at most a fixed time, a fixed number are served at once, and one
//! source address may hold only a share of them (its excess is closed at
//! once). No request body is ever read. What is served is the caller's
//! business: a handler turns a request head into a response.
//!
//! When every slot is held, a newcomer does not wait behind connections
//! that ask nothing: the one that has waited longest for a request head
//! (at least [`EVICT_AFTER`], far longer than a real client takes to send
//! one) is closed to make room. Without this, a few addresses holding
//! their shares of idle connections locked kubelet's probes out until the
//! header timeout, again and again. Only when every connection is in the
//! middle of a request does the newcomer wait for a slot (at most as many
//! wait as are served, each at most the header timeout; beyond, closed).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore, watch};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::sidecar::shares::Shares;

/// The response body of both servers: small and complete.
pub type Body = Full<Bytes>;

/// How long a connection must have waited for a request head before it
/// may be closed for a newcomer.
pub const EVICT_AFTER: Duration = Duration::from_millis(200);

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
    /// Connections one source address may hold at once.
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
    serve_maybe_tls(listener, None, what, limits, handler, shutdown).await;
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
    serve_maybe_tls(listener, Some(tls), what, limits, handler, shutdown).await;
}

async fn serve_maybe_tls<H, Fut>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    what: &'static str,
    limits: ServerLimits,
    handler: H,
    shutdown: impl Future<Output = ()>,
) where
    H: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    // Newcomers waiting for a slot while every connection is mid-request.
    let waiting = Arc::new(Semaphore::new(limits.max_connections));
    let held = Arc::new(Held::default());
    let sources: Shares<IpAddr> = Shares::new(limits.max_per_source);
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
        let Some(share) = sources.take(&peer.ip()) else {
            tracing::debug!(%peer, "{what}: the source holds its share of connections; closed");
            continue;
        };
        let slot = match permits.clone().try_acquire_owned() {
            // Registered here, in the order accepted: the oldest gives way.
            Ok(permit) => Slot::Now(permit, held.register()),
            // Full: make room, then wait for the slot it gives back.
            Err(_) => match waiting.clone().try_acquire_owned() {
                Ok(wait) => {
                    if held.evict_oldest_waiting(EVICT_AFTER) {
                        tracing::debug!(%peer, "{what}: full; an idle connection gave way");
                    }
                    Slot::Later(wait)
                }
                Err(_) => {
                    tracing::debug!(%peer, "{what}: full, and as many waiting; closed");
                    continue;
                }
            },
        };
        let handler = handler.clone();
        let builder = builder.clone();
        let stop = stop_rx.clone();
        let tls = tls.clone();
        let permits = permits.clone();
        let held = held.clone();
        tokio::spawn(async move {
            let (permit, me) = match slot {
                Slot::Now(permit, me) => (permit, me),
                Slot::Later(_wait) => {
                    let wait = permits.acquire_owned();
                    match tokio::time::timeout(limits.header_read_timeout, wait).await {
                        Ok(Ok(permit)) => (permit, held.register()),
                        _ => return tracing::debug!(%peer, "{what}: no slot in time; closed"),
                    }
                }
            };
            let _held = (permit, share);
            let Some(tls) = tls else {
                return drive(&builder, stream, handler, limits, stop, &me, peer, what).await;
            };
            let handshake = tokio::time::timeout(limits.header_read_timeout, tls.accept(stream));
            tokio::select! {
                done = handshake => match done {
                    Ok(Ok(stream)) => {
                        drive(&builder, stream, handler, limits, stop, &me, peer, what).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "{what}: TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "{what}: TLS handshake timed out"),
                },
                () = me.evict.notified() => tracing::debug!(%peer, "{what}: evicted in its handshake"),
            }
        });
    }
    let _ = stop_tx.send(true);
    let local = listener.local_addr().ok();
    tracing::info!(local = ?local, "{what} stopped accepting");
}

/// How a newcomer gets its slot.
enum Slot {
    Now(tokio::sync::OwnedSemaphorePermit, Arc<Connection>),
    /// Once one is given back; holds a place among those waiting.
    Later(tokio::sync::OwnedSemaphorePermit),
}

/// The connections a server holds, oldest first.
#[derive(Debug, Default)]
struct Held {
    connections: Mutex<VecDeque<Weak<Connection>>>,
}

/// One held connection: since when, whether a request is under way, and
/// how it is told to give way.
#[derive(Debug)]
struct Connection {
    since: Instant,
    in_request: AtomicBool,
    evict: Notify,
}

impl Held {
    /// Registers a new connection, the newest; it leaves when dropped.
    fn register(&self) -> Arc<Connection> {
        let connection = Arc::new(Connection {
            since: Instant::now(),
            in_request: AtomicBool::new(false),
            evict: Notify::new(),
        });
        let mut connections = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        connections.retain(|c| c.strong_count() > 0);
        connections.push_back(Arc::downgrade(&connection));
        connection
    }

    /// Tells the oldest connection that is waiting for a request head, and
    /// has been open at least `older_than`, to close. `false`: none is.
    fn evict_oldest_waiting(&self, older_than: Duration) -> bool {
        let mut connections = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        let oldest = connections.iter().position(|c| {
            c.upgrade().is_some_and(|c| {
                c.since.elapsed() >= older_than && !c.in_request.load(Ordering::Acquire)
            })
        });
        let Some(connection) = oldest.and_then(|i| connections.remove(i)?.upgrade()) else {
            return false;
        };
        connection.evict.notify_one();
        true
    }
}

/// Marks a connection's request under way until dropped.
struct InRequest(Arc<Connection>);

impl InRequest {
    fn new(connection: Arc<Connection>) -> InRequest {
        connection.in_request.store(true, Ordering::Release);
        InRequest(connection)
    }
}

impl Drop for InRequest {
    fn drop(&mut self) {
        self.0.in_request.store(false, Ordering::Release);
    }
}

/// Serves one connection until it ends, its lifetime is over, the server
/// stops, or it is evicted for a newcomer while waiting for a request.
#[allow(clippy::too_many_arguments)]
async fn drive<I, H, Fut>(
    builder: &http1::Builder,
    io: I,
    handler: H,
    limits: ServerLimits,
    mut stop: watch::Receiver<bool>,
    me: &Arc<Connection>,
    peer: std::net::SocketAddr,
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
            () = me.evict.notified() => {
                if me.in_request.load(Ordering::Acquire) {
                    continue; // a request came in meanwhile: it finishes
                }
                tracing::debug!(%peer, "{what}: idle connection closed for a newcomer");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_oldest_connection_waiting_for_a_request_gives_way() {
        tokio::time::pause();
        let held = Held::default();
        let first = held.register();
        let second = held.register();
        assert!(
            !held.evict_oldest_waiting(EVICT_AFTER),
            "none has waited long enough"
        );
        tokio::time::advance(EVICT_AFTER).await;
        // The first is mid-request: the second gives way.
        let request = InRequest::new(first.clone());
        assert!(held.evict_oldest_waiting(EVICT_AFTER));
        second.evict.notified().await; // resolves: it was told
        assert!(!held.evict_oldest_waiting(EVICT_AFTER), "told once only");
        // Its request over, the first may be evicted; a closed one never is.
        drop(request);
        let third = held.register();
        drop(third);
        tokio::time::advance(EVICT_AFTER).await;
        assert!(held.evict_oldest_waiting(EVICT_AFTER));
        first.evict.notified().await;
        assert!(!held.evict_oldest_waiting(EVICT_AFTER));
    }
}
