//! L7 for HTTP/2 and gRPC: one connection's frames relayed between the
//! client and the app, every request authorized on its way.
//!
//! Design bias: *a relay, not two endpoints*. The sidecar used to end the
//! client's HTTP/2 connection in one h2 server and open the app's in an h2
//! client, with a task per stream between them: two full stream state
//! machines, two flow-control loops and a future per stream, for a request
//! whose only change is its head. Here one task reads frames from both
//! sides and passes them on, with the same stream IDs on both connections:
//! - **Header blocks** are decoded ([`hpack`], one decoder per side, the
//!   state HPACK requires), and a request head goes through
//!   [`super::authorize_request`], the check HTTP/1 shares. An allowed one
//!   is re-encoded to the app with `x-appid-*` replaced; a denied one never
//!   reaches the app — its stream ID is skipped there (a later, higher ID
//!   closes it, RFC 9113 §5.1.1) and the answer (`403` with
//!   `x-appid-denied-by`, gRPC's `grpc-status: 7`, `400`/`405`, `502`) is a
//!   head of our own with END_STREAM. Our answers carry no body: DATA of our
//!   own would use the client's connection window behind the app's back.
//! - **DATA, WINDOW_UPDATE and RST_STREAM** pass on as they are, so flow
//!   control is end to end: the windows are the app's and the client's, and
//!   a slow reader slows its writer. DATA the app never sees (a denied
//!   stream's body, padding) has its connection window handed back by a
//!   WINDOW_UPDATE of ours.
//! - **SETTINGS** pass on in order, so each side's ACK of the other's means
//!   what it says; only `SETTINGS_INITIAL_WINDOW_SIZE` (both ways) and the
//!   app's `MAX_CONCURRENT_STREAMS` (clamped to ours) are kept — the others
//!   describe the relay's own codecs (HPACK tables, frame and header list
//!   sizes), which it announces itself. PING is answered by each hop.
//! - **Limits**: at most [`MAX_STREAMS`] streams, the header list limit,
//!   the control-frame budget ([`super::flood`]), and at most
//!   [`HIGH_WATER`] bytes (plus one frame) waiting for each side: the relay
//!   reads a side only while what it has for the other is under that, so
//!   memory per connection is bounded without a per-stream buffer.
//!
//! What each exchange keeps from before (RFC 9113 §8.1): the response
//! always gets through (an app may answer, then reset the request half with
//! `NO_ERROR`); resets pass on at once both ways; `502` only for a request
//! the app never got (no connection, `REFUSED_STREAM`, or above the
//! last-stream-id of its GOAWAY), a reset otherwise; END_STREAM stays on
//! the frame that carried it; request trailers reset the stream (gRPC
//! requests never carry any); inbound, the app's `x-appid-*` response
//! headers and trailers are removed. The app is dialled for the first
//! allowed request, not before. A connection that has carried no stream for
//! the header timeout gets a GOAWAY, as does every client at shutdown, and
//! is closed if not finished within the drain timeout.

mod encode;
mod frame;
mod hpack;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use h2::Reason;
use h2::frame::{Headers, Pseudo};
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Sleep};

use self::encode::BlockWriter;
use self::frame::Head;
use self::hpack::{BlockError, Decoded, HeaderBlocks};
use super::flood::FrameBudget;
use super::{
    AppSide, DENIED_BY_HEADER, HeaderMapView, HttpLimits, HttpProxyError, PEER_CLAIMS_HEADER,
    PEER_ID_HEADER, PeerHeaders, RequestAuthorizer, RequestDecision, Shutdown, authorize_request,
    strip_appid_headers,
};
use crate::sidecar::trace::{self, TRACEPARENT, TRACESTATE};

/// Concurrent streams accepted from the client.
pub const MAX_STREAMS: u32 = 256;
/// Bytes waiting for one side above which the relay stops reading.
pub const HIGH_WATER: usize = 64 * 1024;
/// SETTINGS sent to a side and not yet acknowledged, at most.
const MAX_UNACKED_SETTINGS: usize = 16;
/// Streams passed to the app before its SETTINGS say how many it takes
/// (RFC 9113 §6.5.2 recommends no fewer than 100).
const STREAMS_BEFORE_APP_SETTINGS: u32 = 100;
/// Frames handled in one turn before the task yields to others.
const FRAMES_PER_TURN: usize = 64;

/// Proxies one HTTP/2 connection until it ends, idles out or `shutdown`
/// resolves (then GOAWAY, in-flight streams finish, and the connection
/// closes at the drain timeout at the latest). `upstream` is only used
/// (and so, when it is lazy, only dialled) for the first allowed request.
pub async fn proxy<D, U>(
    downstream: D,
    upstream: U,
    authorizer: Arc<dyn RequestAuthorizer>,
    peer_headers: Option<PeerHeaders>,
    limits: HttpLimits,
    mut shutdown: Shutdown,
) -> Result<(), HttpProxyError>
where
    D: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    U: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let downstream = FrameBudget::new(downstream, true);
    let flooded = downstream.tripped();
    let mut relay = Relay::new(downstream, upstream, authorizer, peer_headers, limits);
    let stop = shutdown.started();
    tokio::pin!(stop);
    let mut stop_seen = false;
    let ended = std::future::poll_fn(|cx| {
        if !stop_seen && stop.as_mut().poll(cx).is_ready() {
            stop_seen = true;
            relay.go_away();
        }
        relay.poll(cx)
    })
    .await;
    match ended {
        Err(_) if flooded.load(Ordering::Relaxed) => Err(HttpProxyError::Flood),
        ended => ended,
    }
}

/// The app's connection.
enum App<U> {
    /// Not needed yet: no request was allowed.
    NotDialled(U),
    Open(U),
    /// Closed, failed or never reached: requests are answered `502`.
    Gone,
}

/// Who sent a SETTINGS frame that waits for its ACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// The relay's own: the ACK stops here.
    Relay,
    /// The other side's, passed on: so is the ACK.
    Forwarded,
}

/// A stream whose request went to the app.
struct Stream {
    /// The client may still send DATA.
    request_open: bool,
    /// The app may still send on it.
    response_open: bool,
    /// The final (non-1xx) response head went to the client.
    responded: bool,
    /// A `HEAD` request: the response has no content.
    head: bool,
    started: std::time::Instant,
    span: tracing::Span,
}

struct Relay<D, U> {
    client: D,
    app: App<U>,
    client_in: BytesMut,
    app_in: BytesMut,
    to_client: BytesMut,
    to_app: BytesMut,
    client_out: Writer,
    app_out: Writer,
    /// Each side's HPACK decoder (the state its encoder writes for).
    client_blocks: HeaderBlocks,
    app_blocks: HeaderBlocks,
    /// What we write to each side ([`encode`]: no table).
    client_writer: BlockWriter,
    app_writer: BlockWriter,
    /// Bytes of the client preface still to come.
    preface_left: usize,
    /// The client's first SETTINGS arrived (it must come first).
    client_settled: bool,
    /// A header block continues on this stream (CONTINUATION must follow).
    client_block: Option<u32>,
    app_block: Option<u32>,
    /// SETTINGS sent to each side, oldest first, waiting for its ACK.
    client_acks: VecDeque<Origin>,
    app_acks: VecDeque<Origin>,
    /// The client's settings the app gets when it is dialled.
    dial_window: Option<u32>,
    /// Connection window the client granted before the app was dialled.
    pre_dial_window: u64,
    streams: HashMap<u32, Stream>,
    /// The highest stream ID the client opened.
    last_stream: u32,
    /// Streams the app accepts, from its SETTINGS (at most ours).
    max_streams: u32,
    /// The app's first SETTINGS arrived.
    app_settled: bool,
    /// Our GOAWAY went out with this last stream ID.
    going_away: Option<u32>,
    /// Some bytes reached the app (a failure after that is no `502`).
    app_delivered: bool,
    /// When the connection last had no stream.
    idle_since: Option<Instant>,
    /// After our GOAWAY: when the connection is closed regardless.
    drain_deadline: Option<Instant>,
    timer: Pin<Box<Sleep>>,
    /// Drained after our GOAWAY: only the close is left.
    closing: bool,
    /// The connection failed: what is left for the client is written, then
    /// this is returned.
    failed: Option<HttpProxyError>,
    authorizer: Arc<dyn RequestAuthorizer>,
    peer_headers: Option<PeerHeaders>,
    limits: HttpLimits,
}

impl<D, U> Relay<D, U>
where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    fn new(
        client: D,
        app: U,
        authorizer: Arc<dyn RequestAuthorizer>,
        peer_headers: Option<PeerHeaders>,
        limits: HttpLimits,
    ) -> Self {
        let now = Instant::now();
        let mut to_client = BytesMut::new();
        // Our server preface (RFC 9113 §3.4). The windows are the app's:
        // none is announced until its SETTINGS are passed on.
        frame::put_settings(
            &mut to_client,
            &[
                (frame::MAX_CONCURRENT_STREAMS, MAX_STREAMS),
                (frame::MAX_HEADER_LIST_SIZE, limits.max_header_bytes as u32),
            ],
        );
        Relay {
            client,
            app: App::NotDialled(app),
            client_in: BytesMut::new(),
            app_in: BytesMut::new(),
            to_client,
            to_app: BytesMut::new(),
            client_out: Writer::default(),
            app_out: Writer::default(),
            client_blocks: HeaderBlocks::new(limits.max_header_bytes),
            app_blocks: HeaderBlocks::new(limits.max_header_bytes),
            client_writer: BlockWriter::default(),
            app_writer: BlockWriter::default(),
            preface_left: frame::PREFACE.len(),
            client_settled: false,
            client_block: None,
            app_block: None,
            client_acks: VecDeque::from([Origin::Relay]),
            app_acks: VecDeque::new(),
            dial_window: None,
            pre_dial_window: 0,
            streams: HashMap::new(),
            last_stream: 0,
            max_streams: STREAMS_BEFORE_APP_SETTINGS,
            app_settled: false,
            going_away: None,
            app_delivered: false,
            idle_since: Some(now),
            drain_deadline: None,
            timer: Box::pin(tokio::time::sleep_until(now + limits.header_timeout)),
            closing: false,
            failed: None,
            authorizer,
            peer_headers,
            limits,
        }
    }

    /// Drives the connection; `Ready` when it is over.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), HttpProxyError>> {
        for _ in 0..FRAMES_PER_TURN {
            if self.failed.is_some() {
                return self.poll_failed(cx);
            }
            if self.closing {
                return self.poll_closing(cx);
            }
            let mut progress = false;
            match self.poll_client(cx) {
                Ok(moved) => progress |= moved,
                Err(ended) => return Poll::Ready(ended),
            }
            progress |= self.poll_app(cx);
            if self.failed.is_some() {
                continue;
            }
            if self.finished() {
                self.closing = true;
                return self.poll_closing(cx);
            }
            if !progress {
                if let Err(e) = self.poll_timer(cx) {
                    return Poll::Ready(Err(e));
                }
                return Poll::Pending;
            }
        }
        // Busy: let other connections run, then go on (the timers too: a
        // busy connection still has its drain deadline).
        if let Err(e) = self.poll_timer(cx) {
            return Poll::Ready(Err(e));
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Drained after our GOAWAY: nothing open, everything written.
    fn finished(&self) -> bool {
        self.going_away.is_some()
            && self.streams.is_empty()
            && self.client_out.idle(&self.to_client)
    }

    /// Writes what is queued for the client, handles what it sent. `Err`
    /// when the client's connection is over (`Ok(())` for a clean close).
    fn poll_client(&mut self, cx: &mut Context<'_>) -> Result<bool, Result<(), HttpProxyError>> {
        // Frames are handled where they were read: the buffer is lent out.
        let mut input = std::mem::take(&mut self.client_in);
        let polled = self.poll_client_from(&mut input, cx);
        self.client_in = input;
        polled
    }

    fn poll_client_from(
        &mut self,
        input: &mut BytesMut,
        cx: &mut Context<'_>,
    ) -> Result<bool, Result<(), HttpProxyError>> {
        let client_io = |e| Err(Err(HttpProxyError::Io(e)));
        let mut progress = match self
            .client_out
            .write(&mut self.client, &mut self.to_client, cx)
        {
            Ok(wrote) => wrote,
            Err(e) => return client_io(e),
        };
        while self.to_client.len() < HIGH_WATER && self.to_app.len() < HIGH_WATER {
            match self.next_client_frame(input) {
                Ok(Some(head)) => {
                    progress = true;
                    let handled = self.client_frame(head, &input[..head.frame_len()]);
                    input.advance(head.frame_len());
                    if let Err(reason) = handled {
                        self.connection_error(reason);
                        return Ok(true);
                    }
                    continue;
                }
                Ok(None) => {}
                Err(reason) => {
                    self.connection_error(reason);
                    return Ok(true);
                }
            }
            match read_in(&mut self.client, input, cx) {
                Poll::Ready(Ok(0)) => return Err(Ok(())),
                Poll::Ready(Ok(_)) => progress = true,
                Poll::Ready(Err(e)) => return client_io(e),
                Poll::Pending => break,
            }
        }
        match self
            .client_out
            .write(&mut self.client, &mut self.to_client, cx)
        {
            Ok(wrote) => Ok(progress | wrote),
            Err(e) => client_io(e),
        }
    }

    /// Writes what is queued for the app, handles what it sent.
    fn poll_app(&mut self, cx: &mut Context<'_>) -> bool {
        if !matches!(self.app, App::Open(_)) {
            return false;
        }
        let mut input = std::mem::take(&mut self.app_in);
        let progress = self.poll_app_from(&mut input, cx);
        if matches!(self.app, App::Open(_)) {
            self.app_in = input;
        }
        // (Else what a gone app sent last is dropped with it.)
        progress
    }

    fn poll_app_from(&mut self, input: &mut BytesMut, cx: &mut Context<'_>) -> bool {
        let mut progress = match self.write_app(cx) {
            Some(wrote) => wrote,
            None => return true,
        };
        while self.to_client.len() < HIGH_WATER && self.to_app.len() < HIGH_WATER {
            match next_frame(input) {
                Ok(Some(head)) => {
                    progress = true;
                    let handled = self.app_frame(head, &input[..head.frame_len()]);
                    input.advance(head.frame_len());
                    if let Err(reason) = handled {
                        tracing::debug!(?reason, "the app broke HTTP/2");
                        self.app_gone();
                        return true;
                    }
                    continue;
                }
                Ok(None) => {}
                Err(reason) => {
                    tracing::debug!(?reason, "the app sent a frame too large");
                    self.app_gone();
                    return true;
                }
            }
            let App::Open(app) = &mut self.app else {
                return progress;
            };
            match read_in(app, input, cx) {
                Poll::Ready(Ok(0)) => {
                    tracing::debug!("the app closed its connection");
                    self.app_gone();
                    return true;
                }
                Poll::Ready(Ok(_)) => progress = true,
                Poll::Ready(Err(e)) => {
                    tracing::debug!(error = %e, "reading from the app failed");
                    self.app_gone();
                    return true;
                }
                Poll::Pending => break,
            }
        }
        match self.write_app(cx) {
            Some(wrote) => progress | wrote,
            None => true,
        }
    }

    /// Writes what is queued for the app: whether anything was, `None`
    /// when the app's connection failed.
    fn write_app(&mut self, cx: &mut Context<'_>) -> Option<bool> {
        let App::Open(app) = &mut self.app else {
            return Some(false);
        };
        match self.app_out.write(app, &mut self.to_app, cx) {
            Ok(wrote) => {
                self.app_delivered |= wrote;
                Some(wrote)
            }
            Err(e) => {
                tracing::debug!(error = %e, "writing to the app failed");
                self.app_gone();
                None
            }
        }
    }

    /// The next whole frame from the client, after its preface.
    fn next_client_frame(&mut self, input: &mut BytesMut) -> Result<Option<Head>, Reason> {
        if self.preface_left > 0 {
            let seen = frame::PREFACE.len() - self.preface_left;
            let n = self.preface_left.min(input.len());
            if input[..n] != frame::PREFACE[seen..seen + n] {
                return Err(Reason::PROTOCOL_ERROR);
            }
            input.advance(n);
            self.preface_left -= n;
            if self.preface_left > 0 {
                return Ok(None);
            }
        }
        next_frame(input)
    }

    /// Timers: the idle GOAWAY, the drain deadline, a client that never
    /// sent its preface. Registers for the next one.
    fn poll_timer(&mut self, cx: &mut Context<'_>) -> Result<(), HttpProxyError> {
        while self.timer.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            if let Some(deadline) = self.drain_deadline {
                if now >= deadline {
                    return Err(HttpProxyError::Protocol("not drained in time after GOAWAY"));
                }
                self.timer.as_mut().reset(deadline);
                continue;
            }
            if !self.client_settled {
                return Err(HttpProxyError::Protocol(
                    "HTTP/2 preface not received in time",
                ));
            }
            match self.idle_since {
                Some(since) if now >= since + self.limits.header_timeout => {
                    tracing::debug!("http/2 connection idle: GOAWAY");
                    self.go_away();
                    // The GOAWAY is queued: write it.
                    cx.waker().wake_by_ref();
                }
                Some(since) => self
                    .timer
                    .as_mut()
                    .reset(since + self.limits.header_timeout),
                None => self.timer.as_mut().reset(now + self.limits.header_timeout),
            }
        }
        Ok(())
    }

    /// Our GOAWAY (idle, shutdown, the app went away): no new streams,
    /// those open finish within the drain timeout.
    fn go_away(&mut self) {
        if self.going_away.is_some() {
            return;
        }
        self.going_away = Some(self.last_stream);
        frame::put_go_away(&mut self.to_client, self.last_stream, Reason::NO_ERROR);
        let deadline = Instant::now() + self.limits.drain_timeout;
        self.drain_deadline = Some(deadline);
        self.timer.as_mut().reset(deadline);
    }

    /// The client broke the protocol: GOAWAY with `reason`, then close.
    fn connection_error(&mut self, reason: Reason) {
        tracing::debug!(?reason, "http/2 connection error");
        frame::put_go_away(&mut self.to_client, self.last_stream, reason);
        self.failed = Some(HttpProxyError::H2(h2::Error::from(reason)));
        if self.drain_deadline.is_none() {
            let deadline = Instant::now() + self.limits.drain_timeout;
            self.drain_deadline = Some(deadline);
            self.timer.as_mut().reset(deadline);
        }
    }

    /// After a connection error: the GOAWAY written (or not, in time).
    fn poll_failed(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), HttpProxyError>> {
        let written = match self
            .client_out
            .write(&mut self.client, &mut self.to_client, cx)
        {
            Ok(_) => self.client_out.idle(&self.to_client),
            Err(_) => true,
        };
        if (!written || self.poll_close(cx).is_pending()) && self.poll_timer(cx).is_ok() {
            return Poll::Pending;
        }
        Poll::Ready(Err(self
            .failed
            .take()
            .unwrap_or(HttpProxyError::Protocol("http/2 connection error"))))
    }

    /// Drained: the client's side is closed in an orderly way (a TLS
    /// close_notify, a FIN), so that it reads the GOAWAY and the last
    /// answers; nothing more is handled or written. Bounded by the drain
    /// deadline.
    fn poll_closing(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), HttpProxyError>> {
        if self.poll_close(cx).is_pending() {
            if let Err(e) = self.poll_timer(cx) {
                return Poll::Ready(Err(e));
            }
            return Poll::Pending;
        }
        // What the client sent last (a WINDOW_UPDATE for the last DATA) is
        // read and dropped where it is already here: unread bytes at close
        // would make the kernel reset the connection, losing the answers.
        for _ in 0..4 {
            self.client_in.clear();
            match read_in(&mut self.client, &mut self.client_in, cx) {
                Poll::Ready(Ok(n)) if n > 0 => continue,
                _ => break,
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Shuts the client's side down (bounded by the drain deadline).
    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.client).poll_shutdown(cx).map(|_| ())
    }

    // ----- client → app -------------------------------------------------

    /// One frame from the client. `Err`: a connection error.
    fn client_frame(&mut self, head: Head, frame: &[u8]) -> Result<(), Reason> {
        if let Some(stream) = self.client_block
            && (head.kind != frame::CONTINUATION || head.stream != stream)
        {
            return Err(Reason::PROTOCOL_ERROR);
        }
        if !self.client_settled && head.kind != frame::SETTINGS {
            return Err(Reason::PROTOCOL_ERROR);
        }
        let payload = &frame[frame::HEADER_LEN..];
        match head.kind {
            frame::DATA => self.client_data(head, payload),
            frame::HEADERS | frame::CONTINUATION => {
                if head.stream == 0 {
                    return Err(Reason::PROTOCOL_ERROR);
                }
                if head.kind == frame::CONTINUATION && self.client_block != Some(head.stream) {
                    return Err(Reason::PROTOCOL_ERROR);
                }
                match self.client_blocks.decode(frame) {
                    Ok(Decoded::Continues) => {
                        self.client_block = Some(head.stream);
                        Ok(())
                    }
                    Ok(Decoded::Block(headers)) => {
                        self.client_block = None;
                        self.client_headers(headers)
                    }
                    // A stream the client may not use: a connection error.
                    Err(BlockError::Stream(stream, _)) if stream.is_multiple_of(2) => {
                        Err(Reason::PROTOCOL_ERROR)
                    }
                    Err(BlockError::Stream(stream, reason)) => {
                        self.client_block = None;
                        self.malformed_request(stream, reason);
                        Ok(())
                    }
                    Err(BlockError::Connection(reason)) => Err(reason),
                }
            }
            frame::PRIORITY => {
                if head.stream == 0 || head.len != 5 {
                    return Err(Reason::PROTOCOL_ERROR);
                }
                Ok(())
            }
            frame::RST_STREAM => {
                let reason = Reason::from(frame::parse_u32(payload)?);
                if head.stream == 0 || self.is_idle(head.stream) {
                    return Err(Reason::PROTOCOL_ERROR);
                }
                if let Some(stream) = self.streams.remove(&head.stream) {
                    tracing::debug!(parent: &stream.span, ?reason, "client reset its stream");
                    frame::put_reset(&mut self.to_app, head.stream, reason);
                    self.note_closed();
                }
                Ok(())
            }
            frame::SETTINGS => self.client_settings(head, payload),
            // Each hop answers PINGs itself.
            frame::PING => frame::answer_ping(&head, payload, &mut self.to_client),
            frame::GOAWAY => {
                // The client opens nothing more; streams in flight finish.
                if head.stream != 0 || payload.len() < 8 {
                    return Err(Reason::PROTOCOL_ERROR);
                }
                Ok(())
            }
            frame::WINDOW_UPDATE => {
                let increment = frame::parse_u32(payload)? & frame::MAX_WINDOW;
                if head.stream == 0 {
                    if increment == 0 {
                        return Err(Reason::PROTOCOL_ERROR);
                    }
                    match self.app {
                        App::Open(_) => frame::put_window_update(&mut self.to_app, 0, increment),
                        App::Gone => {}
                        App::NotDialled(_) => {
                            self.pre_dial_window += u64::from(increment);
                            // The window may not pass 2^31 - 1 (§6.9.1).
                            if self.pre_dial_window > u64::from(frame::MAX_WINDOW - 65_535) {
                                return Err(Reason::FLOW_CONTROL_ERROR);
                            }
                        }
                    }
                } else if self.is_idle(head.stream) {
                    return Err(Reason::PROTOCOL_ERROR);
                } else if increment == 0 {
                    // A stream error (§6.9): that stream ends, on both sides.
                    self.reset_both(head.stream, Reason::PROTOCOL_ERROR);
                } else if self.streams.contains_key(&head.stream) {
                    frame::put_window_update(&mut self.to_app, head.stream, increment);
                }
                Ok(())
            }
            // Push goes from servers to clients only.
            frame::PUSH_PROMISE => Err(Reason::PROTOCOL_ERROR),
            // Unknown frame types are ignored (§5.5).
            _ => Ok(()),
        }
    }

    /// A stream ID the client has not opened yet.
    /// (Even IDs are the server's: the client never opens them, so they
    /// stay idle for it, RFC 9113 §5.1.1.)
    fn is_idle(&self, stream: u32) -> bool {
        stream > self.last_stream || stream.is_multiple_of(2)
    }

    fn client_data(&mut self, head: Head, payload: &[u8]) -> Result<(), Reason> {
        if head.stream == 0 || self.is_idle(head.stream) {
            return Err(Reason::PROTOCOL_ERROR);
        }
        let flow = payload.len() as u32;
        let content = frame::unpad(&head, payload)?;
        let end = head.has(frame::END_STREAM);
        let forward = self
            .streams
            .get(&head.stream)
            .is_some_and(|s| s.request_open);
        if !forward {
            // A denied or finished stream: the app never sees this, so the
            // client's connection window comes back from us.
            frame::put_refund(&mut self.to_client, head.stream, flow, false);
            return Ok(());
        }
        frame::put_data(&mut self.to_app, head.stream, content, end);
        frame::put_refund(
            &mut self.to_client,
            head.stream,
            flow - content.len() as u32,
            !end,
        );
        if end && let Some(stream) = self.streams.get_mut(&head.stream) {
            stream.request_open = false;
            self.forget_if_done(head.stream);
        }
        Ok(())
    }

    fn client_settings(&mut self, head: Head, payload: &[u8]) -> Result<(), Reason> {
        if head.stream != 0 {
            return Err(Reason::PROTOCOL_ERROR);
        }
        if head.has(frame::ACK) {
            if !payload.is_empty() {
                return Err(Reason::FRAME_SIZE_ERROR);
            }
            return settings_acked(&mut self.client_acks, &mut self.to_app);
        }
        let settings = frame::parse_settings(payload)?;
        self.client_settled = true;
        // Settings apply in order: of several values, the last one counts.
        let mut window = None;
        for (id, value) in settings {
            match id {
                frame::HEADER_TABLE_SIZE => self.client_writer.table_size_changed(),
                frame::INITIAL_WINDOW_SIZE => window = Some(value),
                _ => {}
            }
        }
        match self.app {
            App::Open(_) => {
                if self.app_acks.len() >= MAX_UNACKED_SETTINGS {
                    // More SETTINGS than the app has acknowledged yet.
                    return Err(Reason::ENHANCE_YOUR_CALM);
                }
                let kept: Vec<_> = window
                    .map(|w| (frame::INITIAL_WINDOW_SIZE, w))
                    .into_iter()
                    .collect();
                frame::put_settings(&mut self.to_app, &kept);
                self.app_acks.push_back(Origin::Forwarded);
            }
            App::NotDialled(_) => {
                self.dial_window = window.or(self.dial_window);
                frame::put_settings_ack(&mut self.to_client);
            }
            App::Gone => frame::put_settings_ack(&mut self.to_client),
        }
        Ok(())
    }

    /// A whole request head (or trailers) from the client.
    fn client_headers(&mut self, headers: Headers) -> Result<(), Reason> {
        let id = u32::from(headers.stream_id());
        let end = headers.is_end_stream();
        if let Some(request_open) = self.streams.get(&id).map(|s| s.request_open) {
            // A second header block: request trailers, or a block on a
            // stream whose request is over. Either way, both sides reset.
            let reason = if request_open {
                tracing::debug!(stream = id, "request trailers refused: both streams reset");
                Reason::PROTOCOL_ERROR
            } else {
                Reason::STREAM_CLOSED
            };
            self.reset_both(id, reason);
            return Ok(());
        }
        if id.is_multiple_of(2) {
            return Err(Reason::PROTOCOL_ERROR);
        }
        if !self.is_idle(id) {
            // A stream we answered or reset: its frames are ignored (its
            // block was decoded, so HPACK stays in step).
            return Ok(());
        }
        self.last_stream = id;
        if self.going_away.is_some() || self.streams.len() >= self.max_streams as usize {
            // Not processed: the client may retry it (§8.7).
            frame::put_reset(&mut self.to_client, id, Reason::REFUSED_STREAM);
            return Ok(());
        }
        if headers.is_over_size() {
            self.answer(id, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, &[], !end);
            return Ok(());
        }
        let (pseudo, fields) = headers.into_parts();
        if let Err(why) = check_request_pseudo(&pseudo) {
            tracing::debug!(stream = id, why, "malformed request head");
            frame::put_reset(&mut self.to_client, id, Reason::PROTOCOL_ERROR);
            return Ok(());
        }
        self.request(id, pseudo, fields, end);
        Ok(())
    }

    /// A request head that came through HPACK: authorize, then forward or
    /// answer.
    fn request(&mut self, id: u32, pseudo: Pseudo, mut fields: HeaderMap, end: bool) {
        let started = std::time::Instant::now();
        let method = pseudo.method.clone().unwrap_or(Method::GET);
        let span = trace::request_span(self.limits.app, method.as_str(), |name| {
            fields.get(name).and_then(|v| v.to_str().ok())
        });
        let grpc = fields
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/grpc"));
        // `:path` as sent; a CONNECT has none (and is refused).
        let target = pseudo.path.as_deref().unwrap_or("");
        let decision = span.in_scope(|| {
            authorize_request(
                &*self.authorizer,
                method.as_str(),
                target,
                &HeaderMapView(&fields),
                grpc,
            )
        });
        let status = match decision {
            RequestDecision::Forward => None,
            RequestDecision::Deny { rule, reason } => {
                let status = if grpc {
                    let message = header_value(&reason, "permission denied");
                    let denied = [
                        (CONTENT_TYPE, HeaderValue::from_static("application/grpc")),
                        (grpc_status(), HeaderValue::from_static("7")),
                        (grpc_message(), message),
                        (denied_by(), header_value(&rule, "invalid")),
                    ];
                    self.answer(id, StatusCode::OK, &denied, !end);
                    StatusCode::OK
                } else {
                    let denied = [(denied_by(), header_value(&rule, "invalid"))];
                    self.answer(id, StatusCode::FORBIDDEN, &denied, !end);
                    StatusCode::FORBIDDEN
                };
                Some(status)
            }
            RequestDecision::Refuse(refusal) => {
                let status =
                    StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::BAD_REQUEST);
                self.answer(id, status, &[], !end);
                Some(status)
            }
        };
        if let Some(status) = status {
            span.in_scope(|| self.authorizer.observe(status.as_u16(), started.elapsed()));
            return;
        }
        strip_appid_headers(&mut fields);
        // Ours replaces theirs: the next hop's parent is this request's span.
        if let Some(context) = trace::outgoing(&span) {
            fields.remove(TRACEPARENT);
            fields.remove(TRACESTATE);
            for (name, value) in context.headers() {
                if let Ok(value) = HeaderValue::from_str(value) {
                    fields.insert(HeaderName::from_static(name), value);
                }
            }
        }
        if let Some(peer) = &self.peer_headers {
            fields.insert(HeaderName::from_static(PEER_ID_HEADER), peer.id.clone());
            fields.insert(
                HeaderName::from_static(PEER_CLAIMS_HEADER),
                peer.claims.clone(),
            );
        }
        // The app is dialled for the first allowed request, not before.
        if !self.dial_app() {
            self.answer(id, StatusCode::BAD_GATEWAY, &[], !end);
            span.in_scope(|| self.authorizer.observe(502, started.elapsed()));
            return;
        }
        self.app_writer
            .write(&mut self.to_app, id, &pseudo, &fields, end);
        self.streams.insert(
            id,
            Stream {
                request_open: !end,
                response_open: true,
                responded: false,
                head: method == Method::HEAD,
                started,
                span,
            },
        );
        self.idle_since = None;
    }

    /// Makes sure the app's connection is open (or being dialled); `false`
    /// when it is gone.
    fn dial_app(&mut self) -> bool {
        let app = match std::mem::replace(&mut self.app, App::Gone) {
            App::NotDialled(app) => app,
            open @ App::Open(_) => {
                self.app = open;
                return true;
            }
            App::Gone => return false,
        };
        // Our client preface: push off, the client's windows.
        self.to_app.extend_from_slice(frame::PREFACE);
        let mut settings = vec![
            (frame::ENABLE_PUSH, 0),
            (
                frame::MAX_HEADER_LIST_SIZE,
                self.limits.max_header_bytes as u32,
            ),
        ];
        if let Some(window) = self.dial_window.take() {
            settings.push((frame::INITIAL_WINDOW_SIZE, window));
        }
        frame::put_settings(&mut self.to_app, &settings);
        self.app_acks.push_back(Origin::Relay);
        let mut window = std::mem::take(&mut self.pre_dial_window);
        while window > 0 {
            let increment = window.min(u64::from(frame::MAX_WINDOW));
            frame::put_window_update(&mut self.to_app, 0, increment as u32);
            window -= increment;
        }
        self.app = App::Open(app);
        true
    }

    /// A client header block HPACK found malformed (§8.1.1): its stream is
    /// reset (and the app's, if the request had reached it).
    fn malformed_request(&mut self, id: u32, reason: Reason) {
        tracing::debug!(stream = id, ?reason, "malformed header block");
        if self.is_idle(id) {
            self.last_stream = id;
        }
        if self.streams.remove(&id).is_some() {
            frame::put_reset(&mut self.to_app, id, Reason::CANCEL);
            self.note_closed();
        }
        frame::put_reset(&mut self.to_client, id, reason);
    }

    /// Our answer on a stream the app never sees: a head with END_STREAM,
    /// then RST_STREAM(NO_ERROR) if the client is still sending (§8.1).
    fn answer(
        &mut self,
        id: u32,
        status: StatusCode,
        fields: &[(HeaderName, HeaderValue)],
        request_open: bool,
    ) {
        let mut map = HeaderMap::with_capacity(fields.len() + 1);
        for (name, value) in fields {
            map.insert(name.clone(), value.clone());
        }
        map.insert(http::header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        self.client_writer.write(
            &mut self.to_client,
            id,
            &Pseudo::response(status),
            &map,
            true,
        );
        if request_open {
            frame::put_reset(&mut self.to_client, id, Reason::NO_ERROR);
        }
        // A connection busy with answers is not idle.
        if self.streams.is_empty() {
            self.idle_since = Some(Instant::now());
        }
    }

    // ----- app → client -------------------------------------------------

    /// One frame from the app. `Err`: the app broke the protocol.
    fn app_frame(&mut self, head: Head, frame: &[u8]) -> Result<(), Reason> {
        if let Some(stream) = self.app_block
            && (head.kind != frame::CONTINUATION || head.stream != stream)
        {
            return Err(Reason::PROTOCOL_ERROR);
        }
        let payload = &frame[frame::HEADER_LEN..];
        match head.kind {
            frame::DATA => self.app_data(head, payload),
            frame::HEADERS | frame::CONTINUATION => {
                if head.stream == 0
                    || (head.kind == frame::CONTINUATION && self.app_block != Some(head.stream))
                {
                    return Err(Reason::PROTOCOL_ERROR);
                }
                match self.app_blocks.decode(frame) {
                    Ok(Decoded::Continues) => {
                        self.app_block = Some(head.stream);
                        Ok(())
                    }
                    Ok(Decoded::Block(headers)) => {
                        self.app_block = None;
                        self.app_headers(headers);
                        Ok(())
                    }
                    Err(BlockError::Stream(id, reason)) => {
                        self.app_block = None;
                        self.reset_both(id, reason);
                        Ok(())
                    }
                    Err(BlockError::Connection(reason)) => Err(reason),
                }
            }
            frame::RST_STREAM => {
                let reason = Reason::from(frame::parse_u32(payload)?);
                if head.stream == 0 {
                    return Err(Reason::PROTOCOL_ERROR);
                }
                if let Some(stream) = self.streams.remove(&head.stream) {
                    if reason == Reason::REFUSED_STREAM && !stream.responded {
                        self.never_processed(head.stream, &stream);
                    } else {
                        tracing::debug!(parent: &stream.span, ?reason, "the app reset the stream");
                        frame::put_reset(&mut self.to_client, head.stream, reason);
                    }
                    self.note_closed();
                }
                Ok(())
            }
            frame::SETTINGS => self.app_settings(head, payload),
            // Each hop answers PINGs itself.
            frame::PING => frame::answer_ping(&head, payload, &mut self.to_app),
            frame::GOAWAY => {
                if head.stream != 0 {
                    return Err(Reason::PROTOCOL_ERROR);
                }
                if payload.len() < 8 {
                    return Err(Reason::FRAME_SIZE_ERROR);
                }
                let last = frame::parse_u32(&payload[..4])? & frame::MAX_WINDOW;
                self.app_going_away(last);
                Ok(())
            }
            frame::WINDOW_UPDATE => {
                let increment = frame::parse_u32(payload)? & frame::MAX_WINDOW;
                if head.stream == 0 {
                    if increment == 0 {
                        return Err(Reason::PROTOCOL_ERROR);
                    }
                    frame::put_window_update(&mut self.to_client, 0, increment);
                } else if increment == 0 {
                    self.reset_both(head.stream, Reason::PROTOCOL_ERROR);
                } else if self.streams.contains_key(&head.stream) {
                    frame::put_window_update(&mut self.to_client, head.stream, increment);
                }
                Ok(())
            }
            // Push is off (our SETTINGS said so).
            frame::PUSH_PROMISE => Err(Reason::PROTOCOL_ERROR),
            _ => Ok(()),
        }
    }

    fn app_data(&mut self, head: Head, payload: &[u8]) -> Result<(), Reason> {
        if head.stream == 0 {
            return Err(Reason::PROTOCOL_ERROR);
        }
        let flow = payload.len() as u32;
        let content = frame::unpad(&head, payload)?;
        let end = head.has(frame::END_STREAM);
        let Some(stream) = self.streams.get(&head.stream) else {
            frame::put_refund(&mut self.to_app, head.stream, flow, false);
            return Ok(());
        };
        if !stream.responded || !stream.response_open {
            // DATA before a response head, or after its end.
            self.reset_both(head.stream, Reason::PROTOCOL_ERROR);
            return Ok(());
        }
        frame::put_data(&mut self.to_client, head.stream, content, end);
        frame::put_refund(
            &mut self.to_app,
            head.stream,
            flow - content.len() as u32,
            !end,
        );
        if end {
            self.response_ended(head.stream);
        }
        Ok(())
    }

    fn app_settings(&mut self, head: Head, payload: &[u8]) -> Result<(), Reason> {
        if head.stream != 0 {
            return Err(Reason::PROTOCOL_ERROR);
        }
        if head.has(frame::ACK) {
            return settings_acked(&mut self.app_acks, &mut self.to_client);
        }
        let settings = frame::parse_settings(payload)?;
        if !self.app_settled {
            // Without a limit of its own, the app takes ours.
            self.app_settled = true;
            self.max_streams = MAX_STREAMS;
        }
        let mut kept = Vec::new();
        for (id, value) in settings {
            match id {
                frame::HEADER_TABLE_SIZE => self.app_writer.table_size_changed(),
                frame::INITIAL_WINDOW_SIZE => kept.push((id, value)),
                frame::MAX_CONCURRENT_STREAMS => {
                    self.max_streams = value.min(MAX_STREAMS);
                    kept.push((id, self.max_streams));
                }
                _ => {}
            }
        }
        if self.client_acks.len() >= MAX_UNACKED_SETTINGS {
            // The client does not acknowledge SETTINGS (§6.5.3).
            self.connection_error(Reason::SETTINGS_TIMEOUT);
            return Ok(());
        }
        frame::put_settings(&mut self.to_client, &kept);
        self.client_acks.push_back(Origin::Forwarded);
        Ok(())
    }

    /// A response head, 1xx head or trailers from the app.
    fn app_headers(&mut self, headers: Headers) {
        let id = u32::from(headers.stream_id());
        let end = headers.is_end_stream();
        let Some(stream) = self.streams.get(&id) else {
            // Not a stream the app was given (or one already over).
            return;
        };
        let (responded, head_request) = (stream.responded, stream.head);
        if !stream.response_open {
            self.reset_both(id, Reason::STREAM_CLOSED);
            return;
        }
        if headers.is_over_size() {
            // Past the header list limit the decoder kept only part of it.
            tracing::debug!(stream = id, "the app's header list is too large");
            self.reset_both(id, Reason::PROTOCOL_ERROR);
            return;
        }
        let (pseudo, mut fields) = headers.into_parts();
        if pseudo.method.is_some()
            || pseudo.scheme.is_some()
            || pseudo.authority.is_some()
            || pseudo.path.is_some()
            || pseudo.protocol.is_some()
        {
            // Request pseudo-fields in a response: malformed (§8.3).
            self.reset_both(id, Reason::PROTOCOL_ERROR);
            return;
        }
        let final_head = match pseudo.status {
            _ if responded => {
                if pseudo.status.is_some() || !end {
                    // Trailers end the stream and carry no pseudo-fields.
                    self.reset_both(id, Reason::PROTOCOL_ERROR);
                    return;
                }
                false
            }
            None => {
                tracing::debug!(stream = id, "a response head without :status");
                self.reset_both(id, Reason::PROTOCOL_ERROR);
                return;
            }
            Some(status) if status.is_informational() => false,
            Some(status) => {
                stream.span.in_scope(|| {
                    self.authorizer
                        .observe(status.as_u16(), stream.started.elapsed())
                });
                true
            }
        };
        if let Some(stream) = self.streams.get_mut(&id) {
            stream.responded |= final_head;
        }
        if self.limits.app == AppSide::Upstream {
            // The app's response: x-appid-* is not its to set.
            strip_appid_headers(&mut fields);
        }
        // A response to HEAD ends with its final head (RFC 9110 §9.3.2):
        // content an app sends anyway is not wanted, so its stream is reset.
        let head_only = head_request && final_head && !end;
        self.client_writer
            .write(&mut self.to_client, id, &pseudo, &fields, end || head_only);
        if head_only {
            frame::put_reset(&mut self.to_app, id, Reason::NO_ERROR);
            if let Some(stream) = self.streams.get_mut(&id) {
                stream.response_open = false;
                stream.request_open = false;
            }
            self.forget_if_done(id);
        } else if end {
            self.response_ended(id);
        }
    }

    /// The response passed END_STREAM on: the exchange is over (§8.1). If
    /// the client is still sending, neither side gets more of the request.
    fn response_ended(&mut self, id: u32) {
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        stream.response_open = false;
        if stream.request_open {
            stream.request_open = false;
            frame::put_reset(&mut self.to_app, id, Reason::NO_ERROR);
            frame::put_reset(&mut self.to_client, id, Reason::NO_ERROR);
        }
        self.forget_if_done(id);
    }

    /// Resets a stream on both sides.
    fn reset_both(&mut self, id: u32, reason: Reason) {
        if self.streams.remove(&id).is_some() {
            frame::put_reset(&mut self.to_app, id, reason);
            frame::put_reset(&mut self.to_client, id, reason);
            self.note_closed();
        }
    }

    /// `502` for a stream the app never processed (safe to retry, §8.7).
    fn never_processed(&mut self, id: u32, stream: &Stream) {
        self.answer(id, StatusCode::BAD_GATEWAY, &[], stream.request_open);
        stream
            .span
            .in_scope(|| self.authorizer.observe(502, stream.started.elapsed()));
    }

    /// The app's GOAWAY: streams above `last` were never processed (`502`);
    /// the client is told to go elsewhere for new ones.
    fn app_going_away(&mut self, last: u32) {
        let unprocessed: Vec<u32> = self
            .streams
            .iter()
            .filter(|(id, s)| **id > last && !s.responded)
            .map(|(id, _)| *id)
            .collect();
        for id in unprocessed {
            if let Some(stream) = self.streams.remove(&id) {
                self.never_processed(id, &stream);
            }
        }
        self.note_closed();
        self.go_away();
    }

    /// The app's connection is over (closed, failed, or broke the
    /// protocol). A request it never got is answered `502`; one it may have
    /// acted on is reset, never a `502` that would invite a retry.
    fn app_gone(&mut self) {
        self.app = App::Gone;
        self.to_app.clear();
        // The client's SETTINGS the app will never acknowledge are, in
        // order, so that the client's later ones pair with theirs.
        for origin in std::mem::take(&mut self.app_acks) {
            if origin == Origin::Forwarded {
                frame::put_settings_ack(&mut self.to_client);
            }
        }
        for (id, stream) in std::mem::take(&mut self.streams) {
            if self.app_delivered {
                frame::put_reset(&mut self.to_client, id, Reason::INTERNAL_ERROR);
            } else {
                self.never_processed(id, &stream);
            }
        }
        self.note_closed();
        if self.app_delivered {
            // The client should reconnect for what comes next.
            self.go_away();
        }
    }

    /// Forgets a stream once both of its directions are over.
    fn forget_if_done(&mut self, id: u32) {
        if let Some(stream) = self.streams.get(&id)
            && !stream.request_open
            && !stream.response_open
        {
            self.streams.remove(&id);
            self.note_closed();
        }
    }

    /// Starts the idle clock when the last stream closed.
    fn note_closed(&mut self) {
        if self.streams.is_empty() && self.idle_since.is_none() {
            self.idle_since = Some(Instant::now());
        }
    }
}

/// A SETTINGS ACK from one side: the oldest SETTINGS sent to it was ours
/// (the ACK stops here) or the other side's (the ACK goes on to it).
fn settings_acked(sent: &mut VecDeque<Origin>, other: &mut BytesMut) -> Result<(), Reason> {
    match sent.pop_front() {
        Some(Origin::Relay) => Ok(()),
        Some(Origin::Forwarded) => {
            frame::put_settings_ack(other);
            Ok(())
        }
        None => Err(Reason::PROTOCOL_ERROR),
    }
}

/// The request pseudo-fields as hyper's HTTP/2 server checks them (RFC
/// 9113 §8.3.1): a malformed head resets its stream.
fn check_request_pseudo(pseudo: &Pseudo) -> Result<(), &'static str> {
    let Some(method) = &pseudo.method else {
        return Err("missing :method");
    };
    let connect = method == Method::CONNECT;
    if pseudo.protocol.is_some() {
        // Extended CONNECT is not offered.
        return Err(":protocol");
    }
    if pseudo.status.is_some() {
        return Err(":status in a request");
    }
    if let Some(authority) = &pseudo.authority
        && http::uri::Authority::try_from(&**authority).is_err()
    {
        return Err("malformed :authority");
    }
    match &pseudo.scheme {
        Some(_) if connect => return Err(":scheme in CONNECT"),
        Some(scheme) if scheme.parse::<http::uri::Scheme>().is_err() => {
            return Err("malformed :scheme");
        }
        None if !connect => return Err("missing :scheme"),
        _ => {}
    }
    match &pseudo.path {
        Some(_) if connect => Err(":path in CONNECT"),
        Some(path) if path.is_empty() => Err("empty :path"),
        Some(path) if http::uri::PathAndQuery::try_from(&**path).is_err() => Err("malformed :path"),
        None if !connect => Err("missing :path"),
        _ => Ok(()),
    }
}

fn header_value(text: &str, fallback: &'static str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static(fallback))
}

fn denied_by() -> HeaderName {
    HeaderName::from_static(DENIED_BY_HEADER)
}

fn grpc_status() -> HeaderName {
    HeaderName::from_static("grpc-status")
}

fn grpc_message() -> HeaderName {
    HeaderName::from_static("grpc-message")
}

/// The header of the next frame in `input` once all of it is there
/// (`None` until then). A frame larger than the relay accepts is a
/// connection error.
fn next_frame(input: &mut BytesMut) -> Result<Option<Head>, Reason> {
    let Some(head) = Head::parse(input) else {
        return Ok(None);
    };
    if head.len > frame::MAX_PAYLOAD {
        return Err(Reason::FRAME_SIZE_ERROR);
    }
    let total = frame::HEADER_LEN + head.len;
    if input.len() < total {
        input.reserve(total - input.len());
        return Ok(None);
    }
    Ok(Some(head))
}

/// Reads what `io` has into `input`.
fn read_in<S: AsyncRead + Unpin>(
    io: &mut S,
    input: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<usize>> {
    if input.capacity() - input.len() < 4096 {
        input.reserve(frame::HEADER_LEN + frame::MAX_PAYLOAD);
    }
    tokio_util::io::poll_read_buf(Pin::new(io), cx, input)
}

/// One side's writing: what is queued goes out, then a flush (a TLS
/// stream holds records until flushed), retried until it completes.
#[derive(Default)]
struct Writer {
    flush_pending: bool,
}

impl Writer {
    /// Writes out as much of `output` as `io` takes, then flushes; `true`
    /// if anything was written.
    fn write<S: AsyncWrite + Unpin>(
        &mut self,
        io: &mut S,
        output: &mut BytesMut,
        cx: &mut Context<'_>,
    ) -> std::io::Result<bool> {
        let mut wrote = false;
        while !output.is_empty() {
            match Pin::new(&mut *io).poll_write(cx, output) {
                Poll::Ready(Ok(0)) => return Err(std::io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(n)) => {
                    output.advance(n);
                    wrote = true;
                    self.flush_pending = true;
                }
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => break,
            }
        }
        if self.flush_pending {
            match Pin::new(io).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.flush_pending = false,
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => {}
            }
        }
        Ok(wrote)
    }

    /// Everything queued went out.
    fn idle(&self, output: &BytesMut) -> bool {
        output.is_empty() && !self.flush_pending
    }
}

#[cfg(test)]
mod h2_tests;
#[cfg(test)]
mod raw_tests;
