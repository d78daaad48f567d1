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
//!   state HPACK requires) into a [`header_list::HeaderList`] (the fields'
//!   bytes where they came, in order), and a request head goes through
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
//!   the control-frame budget ([`super::flood`], on both sides), and at most
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
//!
//! Files: this one holds the connection (its state, the poll loop, timers,
//! closing) and what both directions share; [`from_client`] handles the
//! client's frames and authorizes each request; [`from_app`] handles the
//! app's frames, its GOAWAY and its going; [`frame`],
//! [`hpack`] (in) and [`encode`] (out) are the wire, [`header_list`] what
//! a decoded head is between them.

mod encode;
pub(crate) mod frame;
mod from_app;
mod from_client;
mod header_list;
pub(crate) mod hpack;
mod huffman;
mod rapid_reset;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use h2::Reason;
use http::StatusCode;
use http::header::CONTENT_LENGTH;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Sleep};

use self::encode::BlockWriter;
use self::frame::Head;
use self::header_list::HeaderList;
use self::hpack::HeaderBlocks;
use self::rapid_reset::RapidReset;
use super::flood::FrameBudget;
use super::h1::framing::{ContentLength, FramingError};
use super::{HttpLimits, HttpProxyError, PeerHeaders, RequestAuthorizer, Shutdown};
use crate::sidecar::clock::BatchClock;

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
    // The app's side is budgeted alike: outbound it is the peer (a sidecar,
    // or whoever holds a certificate the policy allows). Over budget it is
    // gone like an app that broke HTTP/2 (its streams answered, the client
    // told to reconnect); the client did nothing to be audited for.
    let upstream = FrameBudget::new(upstream, false);
    let app_flooded = upstream.tripped();
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
    if app_flooded.load(Ordering::Relaxed) {
        tracing::info!(
            "the side requests were relayed to sent an HTTP/2 control frame flood: cut off"
        );
    }
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
    /// Request body bytes its `content-length` still promises (`None`: no
    /// length declared).
    request_left: Option<u64>,
    /// The same for the response.
    response_left: Option<u64>,
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
    /// By stream ID, with a seeded fast hash (the IDs are the client's
    /// choice; at most [`MAX_STREAMS`] of them live).
    streams: HashMap<u32, Stream, foldhash::fast::RandomState>,
    /// The highest stream ID the client opened.
    last_stream: u32,
    /// Requests passed to the app and how many the client cancelled at
    /// once ([`rapid_reset`]).
    rapid_reset: RapidReset,
    /// Streams the app accepts, from its SETTINGS (at most ours).
    max_streams: u32,
    /// The app's first SETTINGS arrived.
    app_settled: bool,
    /// Our GOAWAY went out with this last stream ID.
    going_away: Option<u32>,
    /// Some bytes reached the app (a failure after that is no `502`).
    app_delivered: bool,
    /// When the bytes last read from each side arrived: the time of the
    /// requests and responses they hold ([`BatchClock`]).
    client_clock: BatchClock,
    app_clock: BatchClock,
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
            streams: HashMap::default(),
            last_stream: 0,
            rapid_reset: RapidReset::default(),
            max_streams: STREAMS_BEFORE_APP_SETTINGS,
            app_settled: false,
            going_away: None,
            app_delivered: false,
            client_clock: BatchClock::default(),
            app_clock: BatchClock::default(),
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
                    if self.failed.is_some() {
                        // The frame ended the connection itself (a rapid
                        // reset): nothing after it is read.
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
                Poll::Ready(Ok(_)) => {
                    self.client_clock.bytes_read();
                    progress = true;
                }
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
                Poll::Ready(Ok(_)) => {
                    self.app_clock.bytes_read();
                    progress = true;
                }
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

    /// The client broke the protocol: GOAWAY with `reason`, then close
    /// (the caller audits [`HttpProxyError::ClientBrokeHttp2`]).
    /// `INTERNAL_ERROR` is the decoder's own failure, not the client's.
    fn connection_error(&mut self, reason: Reason) {
        let error = if reason == Reason::INTERNAL_ERROR {
            HttpProxyError::Protocol("http/2: the header block decoder failed")
        } else {
            HttpProxyError::ClientBrokeHttp2(reason)
        };
        self.end_connection(reason, error);
    }

    /// GOAWAY with `reason`, then close, ending with `error`.
    fn end_connection(&mut self, reason: Reason, error: HttpProxyError) {
        tracing::debug!(?reason, "http/2 connection error");
        // A later GOAWAY may not raise the last stream ID of an earlier one
        // (§6.8): streams refused after it were never processed.
        let last = self
            .going_away
            .map_or(self.last_stream, |sent| sent.min(self.last_stream));
        frame::put_go_away(&mut self.to_client, last, reason);
        // No GOAWAY(NO_ERROR) may follow this one.
        self.going_away = Some(last);
        self.failed = Some(error);
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

    // ----- streams, both directions ------------------------------------

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

/// The first field whose value starts or ends with whitespace (space or
/// tab). HTTP/1 parsers trim it as syntax; HTTP/2 carries it verbatim and
/// calls such a message malformed (RFC 9113 §8.2.1), which an intermediary
/// must not forward (§8.1.1) — an app that trims would act on a value the
/// client spelled differently. HPACK decoding does not refuse it (neither
/// h2's decoder nor ours), so the relay does.
fn padded_value(fields: &HeaderList) -> Option<&str> {
    let padded = |b: &u8| *b == b' ' || *b == b'\t';
    fields.fields().find_map(|field| {
        let bytes = field.value;
        (bytes.first().is_some_and(padded) || bytes.last().is_some_and(padded))
            .then_some(field.name)
    })
}

/// What a message's `content-length` fields declare (HTTP/1's reading:
/// one integer, repeated values equal; [`ContentLength`]), read in one
/// pass. (`transfer-encoding` never gets here: the decoder refuses it,
/// `hpack::is_connection_specific`.)
fn declared_length(fields: &HeaderList) -> Result<ContentLength, FramingError> {
    ContentLength::read(fields.get_all(CONTENT_LENGTH.as_str()))
}

/// A `content-length: 5, 5` (or the field twice) as one `5`: what the next
/// hop is given ([`ContentLength::rewrite`]).
fn settle_content_length(fields: &mut HeaderList, declared: &ContentLength) {
    if let Some(length) = declared.rewrite() {
        let mut text = itoa::Buffer::new();
        fields.insert(
            CONTENT_LENGTH.as_str(),
            text.format(length).as_bytes(),
            false,
        );
    }
}

/// Counts `n` body bytes against what a message declared: `false` when
/// they go past it, or fall short of it at the end — a malformed message
/// (RFC 9113 §8.1.1) that is reset rather than passed on.
fn within_declared(left: &mut Option<u64>, n: usize, end: bool) -> bool {
    let Some(rest) = left else {
        return true;
    };
    let Some(after) = rest.checked_sub(n as u64) else {
        return false;
    };
    *rest = after;
    !(end && after != 0)
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
mod tests {
    use super::within_declared;

    #[test]
    fn a_body_must_be_what_its_length_declares() {
        // No length declared: anything goes.
        assert!(within_declared(&mut None, 1 << 20, true));
        let mut left = Some(5);
        assert!(within_declared(&mut left, 2, false));
        assert!(within_declared(&mut left, 3, false));
        // Exactly at the length, then an empty frame that ends it.
        assert!(within_declared(&mut left, 0, true));
        // Past it.
        assert!(!within_declared(&mut Some(5), 6, false));
        // Short of it at the end.
        assert!(!within_declared(&mut Some(5), 4, true));
        // A head that ends the stream but promises a body.
        assert!(!within_declared(&mut Some(1), 0, true));
        assert!(within_declared(&mut Some(0), 0, true));
    }
}
#[cfg(test)]
mod h2_tests;
#[cfg(test)]
mod raw_tests;
