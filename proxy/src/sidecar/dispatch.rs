//! From an app connection's first bytes to the right proxy: HTTP requests
//! authorized one by one, anything else decided once as TCP.
//!
//! Design bias: *no fall-back is a way around L7*. Inbound and outbound,
//! strict and pooled, every app connection comes through [`dispatch`] once
//! its first bytes are classified ([`crate::detect`]): HTTP goes to the L7
//! proxy, anything else gets one TCP decision (which policy denies on a
//! connection an `http` rule governs, unless a rule says `protocol: tcp`).
//!
//! The delicate case is a client that sends nothing within the detection
//! timeout ([`FirstBytes::Silent`]). It may speak a server-first protocol
//! (SMTP, MySQL), or it may be an HTTP client that opened its connection
//! early and sends its request later — and a late request must not become
//! opaque bytes that reach the app unparsed, spoofed `x-appid-*` headers
//! and all. So:
//! - if the connection would be allowed as TCP, the server side is
//!   connected and whoever speaks first decides: the server makes it TCP
//!   (its first line still watched, below: an app may send a banner and
//!   then read HTTP); the client's first bytes are classified as usual, so
//!   HTTP is still parsed. An HTTP/2 server's greeting (its SETTINGS, sent
//!   before its client's preface arrives) is no banner: it is held until
//!   the client speaks ([`client_spoke`]);
//! - if only HTTP could be allowed (a connection an `http` rule governs),
//!   nothing is connected and the client is waited for, up to the idle
//!   timeout, then classified;
//! - if nothing could be allowed, it is denied (and audited) at once.
//!
//! Before any of that, [`plan`] says how long to wait for the first bytes
//! at all: not at all on a port the config declares `tcp` or `tls`
//! (`ports:`), nor when the connection would be allowed as TCP whatever it
//! carries — then the server side is connected at once and whoever speaks
//! first decides, so a server-first protocol's banner is not held back for
//! the detection timeout; up to `limits.http_idle_timeout` on a port
//! declared `http`/`http2`/`grpc` (a late first request is served); else
//! up to the detection timeout. A client that closes its side before
//! sending a byte is an empty TCP stream: decided, audited and proxied, so
//! the server can still answer it.
//!
//! Last line of defence: whenever a connection goes to opaque TCP, the
//! client's first line is still watched as it passes ([`FirstLineGuard`]),
//! whether the client spoke first or answered the server's banner. Should
//! it complete an HTTP/1 request line (a request split so that detection
//! saw only `PROPF`; a request sent after a banner, to an app that reads
//! HTTP once it has greeted), the connection is cut before the bytes that
//! complete it are sent, and the closure is audited. A server-first
//! protocol's client lines (`EHLO`, `USER`, `a1 LOGIN`, binary handshakes)
//! are no request lines, so they pass.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tracing::Instrument as _;
use tracing::instrument::Instrumented;

use super::Shared;
use super::authz::{ConnAuthz, ConnVerdict};
use super::counted::Counted;
use super::http::{self as l7, AppSide, HttpVersion, PeerHeaders};
use super::lazy::LazyUpstream;
use super::prefixed::{self, Prefixed};
use super::splice::{Abort, Chunks};
use crate::detect::{self, Classification, FirstLine};
use crate::metrics::Direction as MetricsDirection;

/// How to find an app connection's protocol, before reading a byte of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Declared `tcp` or `tls`: opaque, no detection, no wait.
    Opaque,
    /// Allowed as TCP whatever it carries: no wait either
    /// ([`FirstBytes::Silent`] races the client against the server).
    Race,
    /// Read the first bytes, waiting at most this long for them.
    Detect(Duration),
}

/// How to find the protocol of `authz`'s connection (module docs).
pub fn plan(shared: &Shared, authz: &ConnAuthz) -> Plan {
    let declared = shared.port(authz.port()).protocol;
    if declared.is_opaque() {
        Plan::Opaque
    } else if declared.is_http() {
        Plan::Detect(shared.limits.http_idle_timeout)
    } else if authz.would_allow_tcp() {
        Plan::Race
    } else {
        Plan::Detect(shared.limits.detect_timeout)
    }
}

/// What the first bytes of an app connection said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstBytes {
    Http(HttpVersion),
    /// Bytes that are not HTTP.
    Opaque,
    /// Nothing within the detection timeout.
    Silent,
}

impl FirstBytes {
    /// From a classification of bytes the client sent.
    pub fn of(class: &Classification) -> FirstBytes {
        match class {
            Classification::Http1 => FirstBytes::Http(HttpVersion::Http1),
            Classification::Http2Preface => FirstBytes::Http(HttpVersion::Http2),
            _ => FirstBytes::Opaque,
        }
    }
}

/// One app connection, after detection: `downstream` is the calling side
/// (with `prefix`, the bytes detection read from it), `connect` opens the
/// called side (the local app inbound; the peer's stream outbound, already
/// open) — for HTTP only at the first allowed request, for TCP only once the
/// connection is allowed. `app` says which side the local app is on.
///
/// Not an `async fn`, and no `async` block either: the future it returns
/// is what an idle connection's task holds for the connection's whole life.
/// An `async fn` would keep its arguments there beside what was made of
/// them, and an `async` block keeps each value it captures beside the
/// future that value was moved into (rustc does not overlap the two), so
/// the way on is chosen here and the future returned is one pointer to it
/// and the connection's span ([`Connection`]).
#[allow(clippy::too_many_arguments)]
pub fn dispatch<D, U, F, Fut>(
    shared: &Arc<Shared>,
    downstream: D,
    prefix: Bytes,
    first: FirstBytes,
    authz: ConnAuthz,
    peer_headers: Option<PeerHeaders>,
    app: AppSide,
    connect: F,
) -> Connection
where
    D: AsyncRead + AsyncWrite + Abort + Chunks + Unpin + Send + 'static,
    U: AsyncRead + AsyncWrite + Abort + Chunks + Unpin + Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Option<U>> + Send + 'static,
{
    let span = authz.connection_span();
    let conn = AppConnection {
        shared: shared.clone(),
        authz,
        peer_headers,
        app,
        // Request spans are on exactly when connection spans are.
        request_spans: !span.is_disabled(),
    };
    let counter = shared.metrics.bytes_counter(conn.direction());
    counter.inc_by(prefix.len() as u64);
    let downstream = Prefixed::new(prefix, Counted::new(downstream, counter));
    // Each way on is boxed: a task is allocated once, at the size of its
    // largest state, so unboxed, every idle HTTP/1 connection would carry
    // the TCP and silent-client states too, for its whole life (`bench/e2e`
    // idle: 36 KiB per connection for both sidecars before this and the
    // boxing in `http::h1`, about 20 KiB after).
    // In the connection's span: the setup records on it (the protocol).
    let way_on = span.in_scope(|| -> WayOn {
        match first {
            FirstBytes::Http(version) => {
                conn.http(downstream, LazyUpstream::new(connect()), version)
            }
            FirstBytes::Opaque => Box::pin(conn.tcp(downstream, connect, Bytes::new())),
            FirstBytes::Silent => Box::pin(set_up_then_run(conn.silent(downstream, connect))),
        }
    });
    way_on.instrument(span)
}

/// An app connection once its way on is chosen ([`dispatch`]): what its
/// task holds for the rest of its life, a pointer and a span.
pub type Connection = Instrumented<WayOn>;

/// One way on (HTTP, TCP), boxed.
type WayOn = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Runs a connection's setup, then the connection it returns (`None`:
/// closed during setup). Boxed, so that the setup's state (detection,
/// dialing, admission: over a kilobyte) is freed once it is done; a task
/// spawned with this holds only a pointer to what follows for the
/// connection's whole (mostly idle) life. A setup that borrowed from an
/// `async` block around it instead would keep that block's captures
/// beside it, for the same life.
pub fn set_up_then_run<S, C>(setup: S) -> impl Future<Output = ()> + Send + 'static
where
    S: Future<Output = Option<C>> + Send + 'static,
    C: Future<Output = ()> + Send + 'static,
{
    Box::pin(setup).then(|connection| match connection {
        Some(connection) => futures_util::future::Either::Left(connection),
        None => futures_util::future::Either::Right(std::future::ready(())),
    })
}

/// What every path below needs.
struct AppConnection {
    shared: Arc<Shared>,
    authz: ConnAuthz,
    peer_headers: Option<PeerHeaders>,
    app: AppSide,
    /// Whether `appid.request` spans are collected (`crate::sidecar::trace`).
    request_spans: bool,
}

impl AppConnection {
    fn direction(&self) -> MetricsDirection {
        match self.app {
            AppSide::Upstream => MetricsDirection::Inbound,
            AppSide::Downstream => MetricsDirection::Outbound,
        }
    }

    /// HTTP: every request authorized — unless the connection is
    /// [decided once](Self::decided_once).
    ///
    /// Not an `async fn`: one keeps its arguments (`self`, both streams)
    /// beside the future it awaits, and an idle HTTP connection sits in
    /// that await for its whole life. The setup runs here; the future
    /// returned holds only the proxy and what is needed once it ends.
    fn http<D, U>(mut self, downstream: D, upstream: LazyUpstream<U>, version: HttpVersion) -> WayOn
    where
        D: AsyncRead + AsyncWrite + Unpin + Send + Abort + Chunks + 'static,
        U: AsyncRead + AsyncWrite + Unpin + Send + Abort + Chunks + 'static,
    {
        self.authz.set_protocol(match version {
            HttpVersion::Http1 => "http1",
            HttpVersion::Http2 => "http2",
        });
        if self.decided_once() {
            return Box::pin(self.http_decided_once(downstream, upstream));
        }
        let direction = self.direction();
        let shared = self.shared;
        let authz = Arc::new(self.authz);
        let proxy = l7::proxy(
            downstream,
            upstream,
            version,
            authz.clone(),
            self.peer_headers,
            shared.http_limits(self.app),
            // An HTTP connection to or from a meshed peer winds down when
            // the peer's certificate expires (its requests after are denied
            // anyway): the client reconnects, with certificates current then.
            l7::Shutdown::new(shared.shutdown.clone()).or_at(authz.wind_down_at()),
        );
        // `map`, not `async move { proxy.await; … }`: the block would keep
        // the captured `proxy` beside the awaited one (1.4 KiB per idle
        // HTTP/1 connection, measured with `-Zprint-type-sizes`).
        Box::pin(proxy.map(move |result| {
            // The two ways a client can end a whole connection, audited:
            // no request of theirs is the one refused.
            match &result {
                Err(l7::HttpProxyError::Flood) => {
                    authz.audit_closed("HTTP/2 control frame flood");
                    shared.metrics.h2_flood_closed(direction);
                }
                Err(l7::HttpProxyError::RapidReset) => {
                    authz.audit_closed("HTTP/2 rapid reset: most requests cancelled as soon as sent");
                    shared.metrics.h2_flood_closed(direction);
                }
                Err(l7::HttpProxyError::ClientBrokeHttp2(reason)) => {
                    authz.audit_closed(&format!(
                        "the client broke HTTP/2 ({reason:?}): connection closed"
                    ));
                }
                _ => {}
            }
            if let Err(e) = result {
                tracing::debug!(error = %e, direction = direction.as_str(), "http connection ended with an error");
            }
        }))
    }

    /// Whether this HTTP connection is decided once, as a whole, instead of
    /// request by request: outbound to a peer sidecar under a policy whose
    /// every request decision could only repeat the connection's
    /// ([`ConnAuthz::allows_every_request`]: no rule with `http` applies,
    /// the connection is allowed), and nobody collects per-request spans
    /// (no `otlp_endpoint`). Then parsing the requests here would only
    /// write the same audit line again and again: the connection gets one,
    /// the bytes go through unparsed, and the peer's sidecar, which must
    /// parse them anyway (it removes `x-appid-*` headers and adds the
    /// verified ones), still authorizes and audits each request against
    /// its own policy. ztunnel decides such a connection once too.
    ///
    /// What the client side gives up then: its per-request metrics
    /// (`appid_http_requests_total` outbound) and a `502` for a peer that
    /// cannot be reached (the app's connection is closed instead).
    fn decided_once(&self) -> bool {
        self.app == AppSide::Downstream && !self.request_spans && self.authz.allows_every_request()
    }

    /// An HTTP connection [decided once](Self::decided_once): one audited
    /// decision, then bytes both ways until either side ends or a policy
    /// change makes its requests need deciding one by one.
    async fn http_decided_once<D, U>(self, mut downstream: D, mut upstream: LazyUpstream<U>)
    where
        D: AsyncRead + AsyncWrite + Unpin + Send + Abort + Chunks + 'static,
        U: AsyncRead + AsyncWrite + Unpin + Send + Abort + Chunks + 'static,
    {
        match self.authz.decide_connection(Some(true)) {
            ConnVerdict::Allow => {}
            // Audited; or, the policy changed since `decided_once`: the
            // client's next connection is decided afresh.
            ConnVerdict::Deny { .. } | ConnVerdict::PerRequest => return,
        }
        // Not `http_idle_timeout`, which is for the wait between requests
        // (the server's sidecar still enforces it, and closes its side): an
        // HTTP/2 stream or a response body may be quiet for longer. What
        // the client side sees is bytes, so it idles out as opaque TCP does.
        let idle = self.shared.tcp_idle_timeout(self.authz.port());
        self.forward(&mut downstream, &mut upstream, true, idle)
            .await;
    }

    /// Not HTTP: one decision (audited), then bytes both ways until either
    /// side ends or a policy change withdraws the connection.
    /// `server_first`: bytes the server already sent, for the client.
    async fn tcp<D, U, F, Fut>(mut self, downstream: D, connect: F, server_first: Bytes)
    where
        D: AsyncRead + AsyncWrite + Abort + Chunks + Unpin + Send + 'static,
        U: AsyncRead + AsyncWrite + Abort + Chunks + Unpin + Send + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Option<U>> + Send + 'static,
    {
        self.authz.set_protocol("tcp");
        if self.authz.decide_connection(Some(false)) != ConnVerdict::Allow {
            return; // audited; dropping the streams closes them
        }
        let Some(upstream) = connect().await else {
            return;
        };
        // The client's first line is watched whoever spoke first: an app
        // may greet with a banner and then read HTTP requests.
        let mut downstream = FirstLineGuard::new(downstream);
        if !server_first.is_empty() && write_flush(&mut downstream, &server_first).await.is_err() {
            return;
        }
        let tripped = downstream.tripped();
        let mut upstream = upstream;
        let idle = self.shared.tcp_idle_timeout(self.authz.port());
        self.forward(&mut downstream, &mut upstream, false, idle)
            .await;
        if tripped.load(Ordering::Relaxed) {
            self.authz
                .audit_closed("an HTTP request line on a connection decided as TCP");
            self.shared
                .metrics
                .connection_refused(self.direction(), "request_line_on_tcp");
        }
    }

    /// Bytes both ways, for a connection decided once (`is_http`: as HTTP),
    /// until either side ends, `idle` passes without a byte, or a policy
    /// change withdraws the connection.
    async fn forward<D, U>(
        &self,
        downstream: &mut D,
        upstream: &mut U,
        is_http: bool,
        idle: Duration,
    ) where
        D: AsyncRead + AsyncWrite + Abort + Chunks + Unpin + Send,
        U: AsyncRead + AsyncWrite + Abort + Chunks + Unpin + Send,
    {
        let revoked = self.shared.revoked(&self.authz, is_http);
        let meter = self.shared.memory.meter(&self.authz.budget_key());
        let (end, copied) = super::splice::splice(
            &mut *downstream,
            &mut *upstream,
            &[],
            idle,
            Some(&meter),
            revoked,
        )
        .await;
        super::splice::forward_reset(end, downstream, upstream);
        tracing::debug!(
            ?end,
            ?copied,
            is_http,
            direction = self.direction().as_str(),
            "connection decided once ended"
        );
    }

    /// The client said nothing yet: within the detection timeout, or
    /// nothing was waited for ([`Plan::Race`]); see the module docs. A
    /// setup ([`set_up_then_run`]): it returns the way on once someone
    /// spoke, so that the wait's state is not kept beside it.
    async fn silent<D, U, F, Fut>(self, mut downstream: Prefixed<D>, connect: F) -> Option<WayOn>
    where
        D: AsyncRead + AsyncWrite + Abort + Chunks + Unpin + Send + 'static,
        U: AsyncRead + AsyncWrite + Abort + Chunks + Unpin + Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Option<U>> + Send + 'static,
    {
        let http_idle = self.shared.limits.http_idle_timeout;
        if self.shared.port(self.authz.port()).protocol.is_http() {
            // Declared HTTP, and silent for the HTTP idle timeout.
            self.gave_up("silent client on a port declared HTTP");
            return None;
        }
        if !self.authz.would_allow_tcp() && !self.authz.could_allow_http() {
            // Denied whatever it carries: decide (and audit) now, as TCP,
            // rather than hold the connection.
            return Some(Box::pin(self.tcp(downstream, connect, Bytes::new())));
        }
        if !self.authz.would_allow_tcp() {
            // HTTP-only: wait for the client (as between keep-alive
            // requests, up to the idle timeout); connect nothing.
            return match prefixed::read_and_classify(&mut downstream, http_idle).await {
                Ok((_, prefix)) if prefix.is_empty() => {
                    self.gave_up("silent client");
                    None
                }
                Ok((class, prefix)) => {
                    let downstream = Prefixed::new(prefix, downstream);
                    Some(match FirstBytes::of(&class) {
                        FirstBytes::Http(version) => {
                            self.http(downstream, LazyUpstream::new(connect()), version)
                        }
                        _ => Box::pin(self.tcp(downstream, connect, Bytes::new())),
                    })
                }
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    self.gave_up("stalled during protocol detection");
                    None
                }
                // Closed or reset before a byte (a withdrawn stream).
                Err(_) => {
                    self.gone("client gone before its first bytes");
                    None
                }
            };
        }
        let mut upstream = connect().await?;
        let limits = &self.shared.limits;
        let silence = self.shared.tcp_idle_timeout(self.authz.port());
        match first_speaker(
            &mut downstream,
            &mut upstream,
            silence,
            limits.detect_timeout,
        )
        .await
        {
            FirstSpeaker::Client(class, prefix) => {
                let downstream = Prefixed::new(prefix, downstream);
                Some(match FirstBytes::of(&class) {
                    FirstBytes::Http(version) => {
                        self.http(downstream, LazyUpstream::ready(upstream), version)
                    }
                    _ => Box::pin(self.tcp(downstream, || async { Some(upstream) }, Bytes::new())),
                })
            }
            FirstSpeaker::Server(banner) => Some(Box::pin(self.tcp(
                downstream,
                || async { Some(upstream) },
                banner,
            ))),
            FirstSpeaker::ClientAfterGreeting {
                class,
                prefix,
                greeting,
            } => {
                let downstream = Prefixed::new(prefix, downstream);
                Some(match FirstBytes::of(&class) {
                    FirstBytes::Http(HttpVersion::Http2) => self.http(
                        downstream,
                        LazyUpstream::ready(Prefixed::new(greeting, upstream)),
                        HttpVersion::Http2,
                    ),
                    // No HTTP/2 client: opaque, the greeting passed on as a
                    // banner, the client's first line watched as after any
                    // (an HTTP/1 request line is cut).
                    _ => Box::pin(self.tcp(downstream, || async { Some(upstream) }, greeting)),
                })
            }
            FirstSpeaker::Nobody(why) => {
                self.gave_up(why);
                None
            }
            FirstSpeaker::Gone(why) => {
                self.gone(why);
                None
            }
        }
    }

    /// A side went away before anyone spoke: nothing was decided, and no
    /// limit refused it (not counted in `appid_connections_refused_total`).
    fn gone(&self, why: &'static str) {
        tracing::debug!(
            reason = why,
            direction = self.direction().as_str(),
            "connection gone before a decision"
        );
    }

    fn gave_up(&self, why: &'static str) {
        tracing::debug!(
            reason = why,
            direction = self.direction().as_str(),
            "connection closed before a decision"
        );
        self.shared
            .metrics
            .connection_refused(self.direction(), "detect_timeout");
    }
}

/// The client side of an opaque connection: bytes pass through, but until
/// its first line is decided ([`detect::first_line`]) the line is kept
/// aside (at most [`detect::MAX_DETECT_BYTES`]) and judged at every read.
/// A read that would complete an HTTP/1 request line fails instead
/// (`ConnectionAborted`), its bytes unsent, and `tripped` is set.
/// Also the client side of an HTTP/1 connection after a `101`
/// ([`FirstLineGuard::continuing`]).
pub(crate) struct FirstLineGuard<S> {
    inner: S,
    /// The first line so far, while undecided.
    line: Option<Vec<u8>>,
    tripped: Arc<AtomicBool>,
}

impl<S> FirstLineGuard<S> {
    pub(crate) fn new(inner: S) -> Self {
        FirstLineGuard {
            inner,
            line: Some(Vec::new()),
            tripped: Arc::new(AtomicBool::new(false)),
        }
    }

    /// A guard whose first line began with `already`: bytes the client
    /// sent that go on without being read through the guard (what followed
    /// an HTTP/1 upgrade request). `Err` (the stream back) when they
    /// already make a request line.
    pub(crate) fn continuing(inner: S, already: &[u8]) -> Result<Self, S> {
        let mut guard = FirstLineGuard::new(inner);
        let start = &already[..already.len().min(detect::MAX_DETECT_BYTES)];
        match detect::first_line(start) {
            FirstLine::RequestLine => return Err(guard.inner),
            FirstLine::NotRequestLine => guard.line = None,
            FirstLine::Undecided => guard.line = Some(start.to_vec()),
        }
        Ok(guard)
    }

    /// Set once a read was refused for completing a request line.
    pub(crate) fn tripped(&self) -> Arc<AtomicBool> {
        self.tripped.clone()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FirstLineGuard<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let this = &mut *self;
        let Some(line) = &mut this.line else {
            return Poll::Ready(Ok(()));
        };
        let new = &buf.filled()[before..];
        let room = detect::MAX_DETECT_BYTES.saturating_sub(line.len());
        line.extend_from_slice(&new[..new.len().min(room)]);
        match detect::first_line(line) {
            FirstLine::Undecided if !new.is_empty() => {}
            // Undecided at EOF, or decided: nothing more to watch.
            FirstLine::Undecided | FirstLine::NotRequestLine => this.line = None,
            FirstLine::RequestLine => {
                this.line = None;
                buf.set_filled(before);
                this.tripped.store(true, Ordering::Relaxed);
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "an HTTP request line on a connection decided as TCP",
                )));
            }
        }
        Poll::Ready(Ok(()))
    }
}

// Writes go to the client unchanged.
super::forward_async_write!(FirstLineGuard, inner);

impl<S: Abort> Abort for FirstLineGuard<S> {
    fn abort(&mut self) {
        self.inner.abort();
    }
}

/// While the first line is watched, reads go through `poll_read`, which
/// watches them; after, chunks pass.
impl<S: Chunks> Chunks for FirstLineGuard<S> {
    fn poll_read_chunk(&mut self, cx: &mut Context<'_>) -> Option<Poll<io::Result<Bytes>>> {
        match self.line {
            Some(_) => None,
            None => self.inner.poll_read_chunk(cx),
        }
    }

    super::forward_chunk_writes!(inner);
}

/// Who sent bytes first on a connection where the client was silent.
#[derive(Debug)]
enum FirstSpeaker {
    /// The client, and what its first bytes are.
    Client(Classification, Bytes),
    /// The server (a banner), with what it sent.
    Server(Bytes),
    /// An HTTP/2 server greeted (`greeting`: its SETTINGS,
    /// [`detect::h2_server_greeting`]), held back until the client spoke:
    /// what its first bytes are.
    ClientAfterGreeting {
        class: Classification,
        prefix: Bytes,
        greeting: Bytes,
    },
    /// Neither within the idle timeout, or the client stalled in detection.
    Nobody(&'static str),
    /// A side went away before anyone spoke: the client failed (a pooled
    /// stream withdrawn: reset before its first byte) or the app closed.
    /// Nothing to decide and no timeout: not counted as refused.
    Gone(&'static str),
}

/// Waits (up to `silence`) for either side's first bytes; once the client
/// has sent some, up to `detect` more for them to be classified. Reads are
/// cancel-safe: the side that loses the race has lost no bytes. A client
/// that closes its side first is an (empty) opaque client.
async fn first_speaker<C, S>(
    client: &mut C,
    server: &mut S,
    silence: Duration,
    detect: Duration,
) -> FirstSpeaker
where
    C: AsyncRead + Unpin,
    S: AsyncRead + Unpin,
{
    let deadline = tokio::time::Instant::now() + silence;
    let mut from_client = BytesMut::with_capacity(1024);
    let mut from_server = BytesMut::with_capacity(1024);
    tokio::select! {
        read = client.read_buf(&mut from_client) => {
            client_spoke(read, client, from_client, detect, None).await
        }
        read = server.read_buf(&mut from_server) => match read {
            Ok(n) if n > 0 && detect::h2_server_greeting(&from_server) => {
                // See `client_spoke`: the greeting waits for the client.
                let greeting = Some(from_server.freeze());
                match tokio::time::timeout_at(deadline, client.read_buf(&mut from_client)).await {
                    Ok(read) => client_spoke(read, client, from_client, detect, greeting).await,
                    Err(_) => FirstSpeaker::Nobody("silent until the idle timeout"),
                }
            }
            Ok(n) if n > 0 => FirstSpeaker::Server(from_server.freeze()),
            _ => FirstSpeaker::Gone("server closed"),
        },
        () = tokio::time::sleep_until(deadline) => FirstSpeaker::Nobody("silent until the idle timeout"),
    }
}

/// What the client's first read (`read`, into `from_client`) makes of the
/// connection: its bytes classified (up to `detect` more for them), or
/// gone. `greeting`: an HTTP/2 server's SETTINGS, held back until now. An
/// HTTP/2 server greets every connection at once, and its clients send
/// their preface without waiting for it: the greeting is no server-first
/// banner. Passed on first, it would make the connection opaque, where the
/// client's preface (`PRI * HTTP/2.0`) is an HTTP/1 request line the guard
/// cuts; held (the client reads nothing before it has spoken), the
/// client's bytes are classified as usual and a preface goes to the HTTP/2
/// relay, which reads the greeting as the app's first frame.
async fn client_spoke<C: AsyncRead + Unpin>(
    read: std::io::Result<usize>,
    client: &mut C,
    from_client: BytesMut,
    detect: Duration,
    greeting: Option<Bytes>,
) -> FirstSpeaker {
    match read {
        // Closed without a byte: an empty stream (the greeting goes out,
        // as any banner).
        Ok(0) => match greeting {
            None => FirstSpeaker::Client(Classification::Opaque, Bytes::new()),
            Some(greeting) => FirstSpeaker::Server(greeting),
        },
        Ok(_) => {
            let deadline = tokio::time::Instant::now() + detect;
            match prefixed::classify_more(client, from_client, deadline).await {
                Ok((class, prefix)) => match greeting {
                    None => FirstSpeaker::Client(class, prefix),
                    Some(greeting) => FirstSpeaker::ClientAfterGreeting {
                        class,
                        prefix,
                        greeting,
                    },
                },
                Err(_) => FirstSpeaker::Nobody("stalled during protocol detection"),
            }
        }
        Err(_) => FirstSpeaker::Gone("client failed"),
    }
}

async fn write_flush<W: AsyncWrite + Unpin>(writer: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    writer.write_all(bytes).await?;
    writer.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a connection's task holds for its life must not grow with its
    /// setup: the setup's state (here 4 KiB, kept across an await) is
    /// boxed and freed once the connection it returns starts.
    #[tokio::test]
    async fn a_connection_does_not_keep_its_setup() {
        let (ran_tx, ran_rx) = tokio::sync::oneshot::channel();
        let setup = async move {
            let scratch = [7u8; 4096];
            tokio::task::yield_now().await;
            let sum: u64 = scratch.iter().map(|&b| u64::from(b)).sum();
            Some(async move {
                let _ = ran_tx.send(sum);
            })
        };
        assert!(std::mem::size_of_val(&setup) >= 4096);
        let task = set_up_then_run(setup);
        let held = std::mem::size_of_val(&task);
        assert!(held <= 64, "a connection's task holds {held} bytes");
        task.await;
        assert_eq!(ran_rx.await.unwrap(), 7 * 4096);
        // Closed during setup: nothing runs after it.
        set_up_then_run(async { None::<std::future::Ready<()>> }).await;
    }

    #[tokio::test]
    async fn a_late_client_request_is_classified() {
        let (mut client, mut client_side) = tokio::io::duplex(1024);
        let (_server, mut server_side) = tokio::io::duplex(1024);
        client
            .write_all(b"GET /admin HTTP/1.1\r\nx-appid-peer-id: evil\r\n\r\n")
            .await
            .unwrap();
        match first_speaker(
            &mut client_side,
            &mut server_side,
            Duration::from_secs(1),
            Duration::from_secs(1),
        )
        .await
        {
            FirstSpeaker::Client(Classification::Http1, prefix) => {
                assert!(prefix.starts_with(b"GET /admin"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_server_banner_comes_first() {
        let (_client, mut client_side) = tokio::io::duplex(1024);
        let (mut server, mut server_side) = tokio::io::duplex(1024);
        server
            .write_all(b"220 smtp.example ESMTP\r\n")
            .await
            .unwrap();
        match first_speaker(
            &mut client_side,
            &mut server_side,
            Duration::from_secs(1),
            Duration::from_secs(1),
        )
        .await
        {
            FirstSpeaker::Server(banner) => assert_eq!(&banner[..], b"220 smtp.example ESMTP\r\n"),
            other => panic!("{other:?}"),
        }
    }

    /// An HTTP/2 server's SETTINGS, sent before its client's preface came,
    /// wait for the client; the client's bytes decide.
    #[tokio::test]
    async fn an_h2_servers_greeting_waits_for_the_client() {
        let greeting: &[u8] = &[0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100];
        let (mut client, mut client_side) = tokio::io::duplex(1024);
        let (mut server, mut server_side) = tokio::io::duplex(1024);
        server.write_all(greeting).await.unwrap();
        let speak = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            client.write_all(detect::H2_PREFACE).await.unwrap();
            client
        });
        let first = first_speaker(
            &mut client_side,
            &mut server_side,
            Duration::from_secs(5),
            Duration::from_secs(1),
        )
        .await;
        match first {
            FirstSpeaker::ClientAfterGreeting {
                class: Classification::Http2Preface,
                prefix,
                greeting: held,
            } => {
                assert_eq!(&prefix[..], detect::H2_PREFACE);
                assert_eq!(&held[..], greeting);
            }
            other => panic!("{other:?}"),
        }
        let _client = speak.await.unwrap();

        // A client silent until the idle timeout: nobody spoke.
        let (_client, mut client_side) = tokio::io::duplex(1024);
        let (mut server, mut server_side) = tokio::io::duplex(1024);
        server.write_all(greeting).await.unwrap();
        let first = first_speaker(
            &mut client_side,
            &mut server_side,
            Duration::from_millis(100),
            Duration::from_secs(1),
        )
        .await;
        assert!(matches!(first, FirstSpeaker::Nobody(_)), "{first:?}");
    }

    /// Feeds `chunks` through a guard one read at a time: what passed, and
    /// whether it tripped.
    async fn through_guard(chunks: &[&[u8]]) -> (Vec<u8>, bool) {
        let (mut client, client_side) = tokio::io::duplex(1 << 16);
        let mut guard = FirstLineGuard::new(client_side);
        let mut passed = Vec::new();
        for chunk in chunks {
            client.write_all(chunk).await.unwrap();
            let mut buf = [0u8; 1024];
            match guard.read(&mut buf).await {
                Ok(n) => passed.extend_from_slice(&buf[..n]),
                Err(e) => {
                    assert_eq!(e.kind(), io::ErrorKind::ConnectionAborted);
                    break;
                }
            }
        }
        (passed, guard.tripped.load(Ordering::Relaxed))
    }

    #[tokio::test]
    async fn a_request_line_split_past_detection_is_cut_before_it_completes() {
        let (passed, tripped) = through_guard(&[
            b"PROPF",
            b"IND /admin HTT",
            b"P/1.1\r\nx-appid-peer-id: evil\r\n\r\n",
        ])
        .await;
        assert!(tripped);
        assert_eq!(passed, b"PROPFIND /admin HTT");
        let (passed, tripped) = through_guard(&[b"de", b"lete /admin HTTP/1.1\r\n"]).await;
        assert!(tripped);
        assert_eq!(passed, b"de");
    }

    /// Through the splice, which takes a stream's own chunks where it has
    /// them: the detection bytes replayed ahead of the stream ([`Prefixed`]
    /// hands them out as a chunk) are still watched with the rest, whether
    /// the splice copies for its writer or reads into buffers it gives
    /// away (a tunnel stream's).
    #[tokio::test]
    async fn the_guard_watches_replayed_bytes_through_the_splice() {
        guard_through_the_splice(false).await;
        guard_through_the_splice(true).await;
    }

    /// An upstream that keeps what it is given, as chunks (as a tunnel
    /// stream does) or copied (as a socket does), and sends nothing.
    #[derive(Default)]
    struct Recording {
        takes_chunks: bool,
        got: Vec<u8>,
        chunks: usize,
    }

    impl AsyncRead for Recording {
        fn poll_read(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            _buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(())) // EOF
        }
    }

    impl AsyncWrite for Recording {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.got.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl Chunks for Recording {
        fn takes_chunks(&self) -> bool {
            self.takes_chunks
        }

        fn poll_write_chunk(
            &mut self,
            _cx: &mut Context<'_>,
            chunk: &mut Bytes,
        ) -> Poll<io::Result<()>> {
            self.got.extend_from_slice(chunk);
            self.chunks += 1;
            chunk.clear();
            Poll::Ready(Ok(()))
        }
    }

    async fn guard_through_the_splice(takes_chunks: bool) {
        let (mut client, client_side) = tokio::io::duplex(1 << 16);
        let mut upstream = Recording {
            takes_chunks,
            ..Default::default()
        };
        let prefixed = Prefixed::new(Bytes::from_static(b"PROPFIND /admin"), client_side);
        let mut guard = FirstLineGuard::new(prefixed);
        client.write_all(b" HTTP/1.1\r\n\r\n").await.unwrap();
        let (end, copied) = crate::sidecar::splice::splice(
            &mut guard,
            &mut upstream,
            b"",
            Duration::from_secs(5),
            None,
            std::future::pending(),
        )
        .await;
        assert_eq!(end, crate::sidecar::splice::SpliceEnd::Error);
        assert!(guard.tripped.load(Ordering::Relaxed));
        assert_eq!(String::from_utf8_lossy(&upstream.got), "PROPFIND /admin");
        assert_eq!(copied.to_upstream, 15, "the start of the line, not its end");
        assert_eq!(
            upstream.chunks,
            usize::from(takes_chunks),
            "given as a chunk"
        );
    }

    #[tokio::test]
    async fn other_protocols_pass_the_guard_untouched() {
        for chunks in [
            &[&b"appid-echo-1234"[..], b"5678\r\n", b"GET / HTTP/1.1\r\n"][..],
            &[b"EHLO mail.example\r\n", b"MAIL FROM:<a@b> HTTP/1.1\r\n"],
            &[b"\x00\x00\x00\x08", b"GET / HTTP/1.1\r\n"],
            // What clients of server-first protocols send after the banner
            // (the guard watches those connections too): FTP, POP3, IMAP,
            // and a MySQL handshake response's first bytes.
            &[b"USER anonymous\r\n", b"RETR /etc/passwd\r\n"],
            &[b"CAPA\r\n"],
            &[b"a1 LOGIN user pass\r\n", b"a2 SELECT INBOX\r\n"],
            &[b"\x55\x00\x00\x01\x8d\xa6\xff\x09"],
            // NATS: `CONNECT` and a JSON object (no version: no request but
            // a GET runs without one).
            &[
                b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\n",
                b"PING\r\n",
            ],
            // LDAP: `0`, a length of 12 (a form feed), then binary.
            &[b"\x30\x0c\x02\x01\x01\x60\x07\x02\x01\x03\x04\x00\x80\x00"],
        ] {
            let (passed, tripped) = through_guard(chunks).await;
            assert!(!tripped, "{chunks:?}");
            assert_eq!(passed, chunks.concat());
        }
    }

    #[tokio::test]
    async fn silence_on_both_sides_ends_at_the_timeout() {
        let (_client, mut client_side) = tokio::io::duplex(1024);
        let (_server, mut server_side) = tokio::io::duplex(1024);
        let got = first_speaker(
            &mut client_side,
            &mut server_side,
            Duration::from_millis(50),
            Duration::from_millis(50),
        )
        .await;
        assert!(matches!(got, FirstSpeaker::Nobody(_)), "{got:?}");
    }
}
