//! `appid-mux/1`: many app connections over one mTLS connection.
//!
//! Design bias: *pay for a TLS handshake per peer, not per app connection*.
//! A TLS 1.3 handshake with certificate verification and AppID decoding
//! costs far more than the few bytes most app connections carry, and every
//! sidecar-to-sidecar TCP segment costs a trip through the kernel on both
//! ends. So, by default, the client sidecar keeps a small pool of mTLS
//! connections per peer sidecar (per data-plane worker: [`super::pool`])
//! and carries each app connection as one HTTP/2 stream, the way Istio's
//! HBONE does.
//!
//! # Wire format
//!
//! - **TLS**: exactly as `appid/1` (TLS 1.3, mutual, AppID certificates on
//!   both sides, verified the same way), except that the client offers ALPN
//!   `appid-mux/1` first and `appid/1` second. A server that selects
//!   `appid/1` (a `tunnel: strict` sidecar, or an older one) gets an ordinary
//!   one-app-connection-per-TLS-connection session: strict and pooled
//!   sidecars interoperate in both directions.
//! - **Inside**, when `appid-mux/1` was selected: HTTP/2 (RFC 9113) with the
//!   connection preface, no TLS inside TLS, no server push.
//! - **One app connection = one stream**: the client sends a `CONNECT`
//!   request (RFC 9113 section 8.5) whose `:authority` is the destination
//!   the app dialed, `ip:port` (transparent mode: the original destination;
//!   explicit mode: the configured upstream). No other pseudo-headers, no
//!   other headers are needed; any are ignored.
//! - The client may add `Forwarded: for="ip:port"` (RFC 7239): the
//!   address of the app that made the connection, which the server
//!   records in audit lines as `app_addr` (informational: it is only what
//!   the authenticated peer sidecar says; nothing is decided on it).
//! - The server answers `200` and from then on the stream's DATA frames are
//!   the app connection's bytes, both ways. END_STREAM is a half close (TCP
//!   FIN); RST_STREAM is an abort (TCP RST). `400` refuses a malformed
//!   request, and RST_STREAM(REFUSED_STREAM) a stream the server will not
//!   take on this connection (its identity or trust changed, the peer's
//!   certificate expired or was revoked, the connection limit): the client
//!   then opens a new TLS connection.
//! - **Authorization** is unchanged: the server decides on the TLS
//!   connection's verified AppID plus the stream's port (transparent: the
//!   `:authority` port; explicit: its listener's), per HTTP request at L7,
//!   and the client decides on the server's AppID before sending any app
//!   byte. Each stream is audited like a connection of its own.
//!
//! # Limits
//!
//! The server advertises [`MAX_STREAMS`] concurrent streams; windows are
//! [`STREAM_WINDOW`] per stream and [`CONNECTION_WINDOW`] per connection;
//! a stream buffers at most [`SEND_BUFFER`] unsent bytes, each charged to
//! the peer's share of the byte budget ([`super::memory`]) until written
//! out. Every stream also takes one of the sidecar's `max_connections`
//! slots, and one peer identity at most half of them.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::copy_buf::led_copy;
use super::eager::Nudge;
use super::memory::{Charge, Meter};
use super::splice::{Abort, Chunks};

/// Concurrent streams the server allows per connection.
pub const MAX_STREAMS: u32 = 1000;
/// Flow-control window per stream: what a peer may send before we read it.
///
/// It caps one transfer's rate at a window per round trip of a
/// WINDOW_UPDATE (h2 sends one once about a third of the window has been
/// read, as we hand window back at once), and that round trip goes through
/// both sidecars. At 1 MiB a bulk transfer waited for window: 4 MiB
/// (ztunnel's) carried 1.29–1.36× haproxy's rate against 1.17–1.31×, at
/// about 8% less CPU per GB (docs/performance.md, "A bulk stream waited
/// for its window").
pub const STREAM_WINDOW: u32 = 4 << 20;
/// Flow-control window per connection: four streams' worth, so that up to
/// three streams whose apps do not read (each holding its whole window)
/// leave the others room; a fourth would stall them. It is also what a
/// peer can make us hold per connection while our apps do not read (README
/// "Memory under load").
pub const CONNECTION_WINDOW: u32 = 16 << 20;
const _: () = assert!(
    CONNECTION_WINDOW >= 4 * STREAM_WINDOW,
    "several streams' worth"
);
/// Unsent bytes buffered per stream before a writer waits.
pub const SEND_BUFFER: usize = 256 * 1024;
/// Largest DATA frame accepted: h2 writes (and flushes) every large DATA
/// frame on its own, so bigger frames mean fewer TLS writes and syscalls for
/// bulk transfers (measured: a third of the client sidecar's `writev`s).
pub const MAX_FRAME: u32 = 64 * 1024;
/// Largest HEADERS block accepted (a CONNECT request or its answer is tiny).
pub const MAX_HEADER_LIST: u32 = 16 * 1024;

/// Streams we reset whose id h2 remembers, and for how long, so that the
/// peer's frames already on their way are ignored, as RFC 9113 §5.4.2 asks.
/// Every stream a sidecar drops before the peer finished ends in a reset
/// (see [`TunnelStream`]'s drop), and the peer's END_STREAM often crosses
/// it. h2 remembered 10 (and remembers none beyond its limit until the
/// oldest expire), took a frame on a forgotten stream for the peer's
/// error and answered it with a reset of its own. Enough for 2 000 such
/// closes a second per tunnel; each costs a few hundred bytes meanwhile.
const REMEMBERED_RESETS: usize = 4 * MAX_STREAMS as usize;
const RESET_MEMORY: Duration = Duration::from_secs(2);

/// The client side's HTTP/2 settings.
pub fn client_builder() -> h2::client::Builder {
    let mut builder = h2::client::Builder::new();
    builder
        .max_concurrent_reset_streams(REMEMBERED_RESETS)
        .reset_stream_duration(RESET_MEMORY)
        // No lifetime cap on the resets h2 sends for a peer's errors: at
        // 1 024 (its default) in a tunnel's whole life it sent
        // GOAWAY(ENHANCE_YOUR_CALM) and failed every stream on the tunnel,
        // which a few thousand short connections a second reached in
        // under a second. The peer is an authenticated sidecar, and
        // a reset answers a frame it sent (each end's `FrameBudget`
        // bounds the cheap ones).
        .max_local_error_reset_streams(None)
        .enable_push(false)
        .max_frame_size(MAX_FRAME)
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_send_buffer_size(SEND_BUFFER)
        .max_header_list_size(MAX_HEADER_LIST);
    builder
}

/// The server side's HTTP/2 settings.
pub fn server_builder() -> h2::server::Builder {
    let mut builder = h2::server::Builder::new();
    builder
        .max_concurrent_reset_streams(REMEMBERED_RESETS)
        .reset_stream_duration(RESET_MEMORY)
        .max_local_error_reset_streams(None) // see `client_builder`
        .max_concurrent_streams(MAX_STREAMS)
        .max_frame_size(MAX_FRAME)
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_send_buffer_size(SEND_BUFFER)
        .max_header_list_size(MAX_HEADER_LIST);
    builder
}

/// How many streams a tunnel carries now, and since when it has carried
/// none (for closing idle tunnels).
#[derive(Debug)]
pub struct StreamCount {
    active: AtomicUsize,
    /// [`monotonic_ms`] when `active` last fell to 0 (or the tunnel opened).
    idle_since_ms: AtomicU64,
}

impl StreamCount {
    pub fn new() -> Arc<Self> {
        Arc::new(StreamCount {
            active: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(monotonic_ms()),
        })
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Counts a stream until the returned guard drops.
    pub fn open(self: &Arc<Self>) -> StreamGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        StreamGuard(self.clone())
    }

    /// Resolves once the tunnel has carried no stream for `idle_timeout`
    /// (checked every quarter of it: closing is approximate on purpose).
    pub async fn idle(&self, idle_timeout: Duration) {
        let timeout_ms = idle_timeout.as_millis() as u64;
        loop {
            tokio::time::sleep(idle_timeout / 4).await;
            let since = self.idle_since_ms.load(Ordering::Relaxed);
            if self.active() == 0 && monotonic_ms().saturating_sub(since) >= timeout_ms {
                return;
            }
        }
    }
}

/// Keeps one stream counted in a [`StreamCount`].
#[derive(Debug)]
pub struct StreamGuard(Arc<StreamCount>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.0
                .idle_since_ms
                .store(monotonic_ms(), Ordering::Relaxed);
        }
    }
}

/// Microseconds since the first call in this process (tokio's clock, so
/// paused-time tests see it move): the tunnels' idle times and
/// [`super::eager`]'s quiet spells.
pub(super) fn monotonic_us() -> u64 {
    static START: OnceLock<tokio::time::Instant> = OnceLock::new();
    let start = *START.get_or_init(tokio::time::Instant::now);
    start.elapsed().as_micros() as u64
}

fn monotonic_ms() -> u64 {
    monotonic_us() / 1000
}

/// Polls the connection future only after yielding once per wake-up, so
/// that every stream task woken in the same scheduler tick queues its frames
/// before the connection writes them out: one TLS record and one syscall
/// then carry many streams' data. Without it, tokio's LIFO slot runs the
/// connection task right after each stream's write, and every app write
/// costs its own record, TCP segment and syscall (measured: two `writev`
/// per proxied request per sidecar, instead of about one).
pub struct Coalesce<F> {
    inner: F,
    yielded: bool,
}

impl<F> Coalesce<F> {
    pub fn new(inner: F) -> Self {
        Coalesce {
            inner,
            yielded: false,
        }
    }
}

impl<F: Future + Unpin> Future for Coalesce<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        if !this.yielded {
            // A task that wakes itself goes to the back of the run queue.
            this.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        this.yielded = false;
        Pin::new(&mut this.inner).poll(cx)
    }
}

/// One app connection carried in one HTTP/2 stream: reads are the peer's
/// DATA frames, writes become ours, shutdown is END_STREAM. Dropping it
/// closes like a TCP socket would: END_STREAM after what was written; if
/// the peer has not finished its side, what we queued is still written out
/// (for at most [`LINGER`], while the peer's data is read and discarded),
/// then the stream is reset (`CANCEL`) — the way a socket closed with
/// unread data sends RST — so the peer's app learns at once that nobody
/// reads it any more. After [`Abort::abort`] dropping sends no END_STREAM:
/// the stream is reset once what was queued is out.
pub struct TunnelStream {
    halves: Option<(SendStream<Bytes>, RecvStream)>,
    /// DATA handed to h2 and not yet written out.
    unflushed: Arc<Unflushed>,
    /// Charges what we queue for the peer to its share of the byte budget
    /// (`None` in tests that need no budget).
    meter: Option<Meter>,
    /// Received and not yet read by the caller (at most one DATA frame).
    unread: Bytes,
    write_closed: bool,
    /// END_STREAM was read: every read after answers EOF again (h2 may
    /// turn a stream that ended into an error once the connection fails).
    read_eof: bool,
    /// Set by [`Abort::abort`]: dropping resets instead of ending.
    aborted: bool,
    counted: Option<StreamGuard>,
    /// Told of every frame queued, so that the first on a quiet connection
    /// goes out at once ([`super::eager`]; `None` in tests).
    nudge: Option<Arc<dyn Nudge>>,
}

/// How long a dropped stream waits for what it queued to be written out.
pub const LINGER: Duration = Duration::from_secs(5);

/// Counts DATA chunks h2 still holds for one stream (each chunk carries an
/// [`UnflushedChunk`] that gives its count back when h2 drops it).
#[derive(Debug, Default)]
struct Unflushed {
    chunks: AtomicUsize,
    notify: tokio::sync::Notify,
}

impl Unflushed {
    fn track(self: &Arc<Self>) -> UnflushedChunk {
        self.chunks.fetch_add(1, Ordering::Relaxed);
        UnflushedChunk(self.clone())
    }

    /// The empty payload of END_STREAM, counted like a chunk: a stream that
    /// lingers to reset waits until its END_STREAM is out too. h2's reset
    /// drops what the stream still has queued, END_STREAM included, so a
    /// reset queued before it was written replaced it: the peer's app saw a
    /// reset where a socket would have seen EOF (once a quiet tunnel wrote
    /// the data at once, [`super::eager`], the linger no longer waited for
    /// anything). Not nudged: it leaves with the connection task, as it
    /// always did.
    fn end_of_stream(self: &Arc<Self>) -> Bytes {
        Bytes::from_owner(Queued {
            data: Bytes::new(),
            _charge: None,
            _unflushed: self.track(),
        })
    }

    /// Resolves once h2 holds no chunk of ours.
    async fn flushed(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.chunks.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

#[derive(Debug)]
struct UnflushedChunk(Arc<Unflushed>);

impl Drop for UnflushedChunk {
    fn drop(&mut self) {
        if self.0.chunks.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.notify.notify_waiters();
        }
    }
}

/// A chunk of DATA as handed to h2, with what it holds until written out.
/// rustls copies the bytes into its records: where they were copied from
/// the caller's slice, the copy is placed for that ([`led_copy`]).
struct Queued {
    data: Bytes,
    _charge: Option<Charge>,
    _unflushed: UnflushedChunk,
}

impl AsRef<[u8]> for Queued {
    fn as_ref(&self) -> &[u8] {
        self.data.as_ref()
    }
}

impl TunnelStream {
    pub fn new(
        send: SendStream<Bytes>,
        recv: RecvStream,
        counted: Option<StreamGuard>,
        meter: Option<Meter>,
        nudge: Option<Arc<dyn Nudge>>,
    ) -> Self {
        TunnelStream {
            halves: Some((send, recv)),
            unflushed: Arc::default(),
            meter,
            unread: Bytes::new(),
            write_closed: false,
            read_eof: false,
            aborted: false,
            counted,
            nudge,
        }
    }

    fn nudge(&self) {
        if let Some(nudge) = &self.nudge {
            nudge.queued();
        }
    }

    fn halves(&mut self) -> &mut (SendStream<Bytes>, RecvStream) {
        self.halves
            .as_mut()
            .unwrap_or_else(|| unreachable!("only taken by drop"))
    }
}

impl Drop for TunnelStream {
    fn drop(&mut self) {
        let Some((mut send, mut recv)) = self.halves.take() else {
            return;
        };
        if !self.write_closed && !self.aborted {
            let _ = send.send_data(self.unflushed.end_of_stream(), true);
        }
        if recv.is_end_stream() && (self.write_closed || !self.aborted) {
            return; // closed both ways: nothing is reset or lost
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let counted = self.counted.take();
        let unflushed = self.unflushed.clone();
        let aborted = self.aborted;
        runtime.spawn(async move {
            let drain = async {
                while let Some(Ok(data)) = recv.data().await {
                    let _ = recv.flow_control().release_capacity(data.len());
                }
            };
            // Until all we queued is out, or (a clean close) the peer
            // finishes too; then dropping both halves resets the stream.
            // The peer's data is read and discarded meanwhile.
            let _ = tokio::time::timeout(LINGER, async {
                tokio::pin!(drain);
                let mut peer_done = false;
                loop {
                    tokio::select! {
                        () = &mut drain, if !peer_done => {
                            peer_done = true;
                            if !aborted {
                                return;
                            }
                        }
                        () = unflushed.flushed() => return,
                    }
                }
            })
            .await;
            if aborted || !recv.is_end_stream() {
                send.send_reset(h2::Reason::CANCEL);
            }
            drop((send, recv, counted));
        });
    }
}

impl Abort for TunnelStream {
    /// The stream ends with RST_STREAM (`CANCEL`) instead of END_STREAM,
    /// once what was queued is written out (at most [`LINGER`] later).
    fn abort(&mut self) {
        self.aborted = true;
    }
}

fn to_io(error: h2::Error) -> io::Error {
    if error.is_io() {
        return error
            .into_io()
            .unwrap_or_else(|| io::Error::other("tunnel i/o error"));
    }
    io::Error::new(io::ErrorKind::ConnectionReset, error)
}

impl TunnelStream {
    /// The next non-empty DATA frame, `None` at END_STREAM (and at every
    /// call after). Its window is handed back at once: what a peer can
    /// make us buffer is what the caller holds (`poll_read`: this one
    /// frame; the splice: what it gathered, at most
    /// [`super::splice`]'s largest read and a frame).
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        if self.read_eof {
            return Poll::Ready(Ok(None));
        }
        let (_, recv) = self.halves();
        loop {
            match ready!(recv.poll_data(cx)) {
                None => {
                    self.read_eof = true;
                    return Poll::Ready(Ok(None));
                }
                Some(Ok(data)) => {
                    let _ = recv.flow_control().release_capacity(data.len());
                    if !data.is_empty() {
                        return Poll::Ready(Ok(Some(data)));
                    }
                }
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
            }
        }
    }

    /// Queues the first bytes of a write of `len` for the peer, as many as
    /// the stream's window and the byte budget allow now: `take(n)` gives
    /// those `n` bytes.
    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        len: usize,
        take: impl FnOnce(usize) -> Bytes,
    ) -> Poll<io::Result<usize>> {
        if len == 0 {
            return Poll::Ready(Ok(0));
        }
        if self.write_closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let Some((send, _)) = self.halves.as_mut() else {
            unreachable!("only taken by drop")
        };
        send.reserve_capacity(len);
        loop {
            let capacity = send.capacity();
            if capacity > 0 {
                let wanted = capacity.min(len);
                // Charged to the byte budget until h2 has written it out: a
                // peer that does not read makes its own writers wait here.
                let charge = match &mut self.meter {
                    None => None,
                    Some(meter) => match ready!(meter.poll_charge(cx, wanted)) {
                        Some(charge) => Some(charge),
                        None => return Poll::Ready(Err(io::Error::other("byte budget closed"))),
                    },
                };
                let n = charge.as_ref().map_or(wanted, Charge::bytes);
                let data = Bytes::from_owner(Queued {
                    data: take(n),
                    _charge: charge,
                    _unflushed: self.unflushed.track(),
                });
                send.send_data(data, false).map_err(to_io)?;
                self.nudge();
                return Poll::Ready(Ok(n));
            }
            match ready!(send.poll_capacity(cx)) {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
                None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            }
        }
    }
}

impl AsyncRead for TunnelStream {
    /// Hands out every DATA frame already received, up to the caller's
    /// buffer: small frames that arrived together cost the reader's writer
    /// one syscall, not one each. (The splice takes the frames themselves
    /// instead, [`Chunks`], and gathers them the same way.)
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let mut copied = false;
        while buf.remaining() > 0 {
            if this.unread.is_empty() {
                match this.poll_frame(cx) {
                    Poll::Ready(Ok(Some(data))) => this.unread = data,
                    // END_STREAM: the peer's half close (an empty read, once
                    // what was copied so far is handed out).
                    Poll::Ready(Ok(None)) => break,
                    Poll::Ready(Err(e)) if !copied => return Poll::Ready(Err(e)),
                    // Reported on the next read, after the bytes before it.
                    Poll::Ready(Err(_)) => break,
                    Poll::Pending if !copied => return Poll::Pending,
                    Poll::Pending => break,
                }
            }
            let n = this.unread.len().min(buf.remaining());
            buf.put_slice(&this.unread[..n]);
            this.unread.advance(n);
            copied = true;
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for TunnelStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .poll_send(cx, buf.len(), |n| led_copy(&buf[..n]))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The connection task writes queued frames out on its own.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.write_closed {
            this.write_closed = true;
            let end = this.unflushed.end_of_stream();
            let (send, _) = this.halves();
            send.send_data(end, true).map_err(to_io)?;
        }
        Poll::Ready(Ok(()))
    }
}

/// DATA frames are `Bytes` both ways: received ones are handed out as
/// they are, and chunks given to send are queued for h2 as they are.
impl Chunks for TunnelStream {
    fn poll_read_chunk(&mut self, cx: &mut Context<'_>) -> Option<Poll<io::Result<Bytes>>> {
        if !self.unread.is_empty() {
            return Some(Poll::Ready(Ok(std::mem::take(&mut self.unread))));
        }
        Some(
            self.poll_frame(cx)
                .map_ok(|frame| frame.unwrap_or_default()),
        )
    }

    fn takes_chunks(&self) -> bool {
        true
    }

    fn poll_write_chunk(
        &mut self,
        cx: &mut Context<'_>,
        chunk: &mut Bytes,
    ) -> Poll<io::Result<()>> {
        ready!(self.poll_send(cx, chunk.len(), |n| chunk.split_to(n)))?;
        Poll::Ready(Ok(()))
    }
}

/// The `Forwarded` header value naming the calling app (RFC 7239: an
/// address with a port is quoted, an IPv6 one bracketed).
pub fn forwarded_for(app_addr: std::net::SocketAddr) -> http::HeaderValue {
    let value = format!("for=\"{app_addr}\"");
    http::HeaderValue::from_str(&value).unwrap_or(http::HeaderValue::from_static("for=unknown"))
}

/// The calling app's address from a `Forwarded` header, if it names one
/// as [`forwarded_for`] writes it (anything else is ignored).
pub fn forwarded_app(headers: &http::HeaderMap) -> Option<std::net::SocketAddr> {
    let value = headers.get(http::header::FORWARDED)?.to_str().ok()?;
    let for_part = value.split([';', ',']).map(str::trim).find_map(|part| {
        part.strip_prefix("for=")
            .or_else(|| part.strip_prefix("FOR="))
    })?;
    for_part.trim_matches('"').parse().ok()
}

#[cfg(test)]
mod tests {
    /// One HTTP/2 frame: length, type, flags, stream id, payload.
    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        out.extend([kind, flags]);
        out.extend(stream.to_be_bytes());
        out.extend(payload);
        out
    }

    /// A `CONNECT 127.0.0.1:1` request head, HPACK without Huffman coding:
    /// `:method` (static index 2) and `:authority` (1), literals.
    fn connect_head(stream: u32) -> Vec<u8> {
        let mut block = vec![0x02, 7];
        block.extend(b"CONNECT");
        block.extend([0x01, 11]);
        block.extend(b"127.0.0.1:1");
        frame(0x1, 0x4, stream, &block) // HEADERS, END_HEADERS
    }

    /// The server's frames as (type, stream id, first 4 payload bytes: a
    /// RST_STREAM's error code) until `until` holds or the connection ends.
    async fn read_frames(
        io: &mut (impl AsyncRead + Unpin),
        mut until: impl FnMut(u8, u32) -> bool,
    ) -> Vec<(u8, u32, u32)> {
        let mut seen = Vec::new();
        let mut header = [0u8; 9];
        while io.read_exact(&mut header).await.is_ok() {
            let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
            let mut payload = vec![0u8; len];
            if io.read_exact(&mut payload).await.is_err() {
                break;
            }
            let stream = u32::from_be_bytes(header[5..9].try_into().unwrap()) & 0x7fff_ffff;
            let code = payload
                .get(..4)
                .map_or(0, |c| u32::from_be_bytes(c.try_into().unwrap()));
            seen.push((header[3], stream, code));
            if until(header[3], stream) {
                break;
            }
        }
        seen
    }

    /// A peer's END_STREAM that crosses our reset of the stream is ignored,
    /// however many streams we reset: 2 000 streams, each reset by the
    /// server (as a dropped [`TunnelStream`] does) before the client's last
    /// DATA frame reaches it. With h2's defaults the server answered those
    /// frames with resets of its own (STREAM_CLOSED) and, after 1 024,
    /// closed the connection with GOAWAY(ENHANCE_YOUR_CALM).
    #[tokio::test]
    async fn late_frames_on_streams_we_reset_never_close_the_tunnel() {
        const STREAMS: u32 = 2_000;
        const BATCH: u32 = 500; // below the concurrent stream limit
        let (mut client, server_io) = tokio::io::duplex(1 << 20);
        let server = tokio::spawn(async move {
            let mut connection = server_builder().handshake::<_, Bytes>(server_io).await?;
            while let Some(accepted) = connection.accept().await {
                let (_request, mut respond) = accepted?;
                let response = http::Response::new(());
                let mut send = respond.send_response(response, false)?;
                send.send_reset(h2::Reason::CANCEL);
            }
            Ok::<(), h2::Error>(())
        });
        client
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        client.write_all(&frame(0x4, 0, 0, &[])).await.unwrap(); // SETTINGS
        let mut next = 1u32;
        while next < 2 * STREAMS {
            let batch: Vec<u32> = (0..BATCH).map(|i| next + 2 * i).collect();
            next += 2 * BATCH;
            for &stream in &batch {
                client.write_all(&connect_head(stream)).await.unwrap();
            }
            // Wait until the server has reset every stream of the batch ...
            let last = *batch.last().unwrap();
            let seen = read_frames(&mut client, |kind, stream| {
                kind == 0x7 || (kind == 0x3 && stream == last)
            })
            .await;
            assert!(
                !seen.iter().any(|&(kind, _, _)| kind == 0x7),
                "GOAWAY before stream {last}"
            );
            let answered: Vec<u32> = seen
                .iter()
                .filter(|&&(kind, stream, code)| kind == 0x3 && (code != 0x8 || stream < batch[0]))
                .map(|&(_, stream, _)| stream)
                .collect();
            assert!(
                answered.is_empty(),
                "late frames answered with resets on {} streams, e.g. {:?}",
                answered.len(),
                &answered[..answered.len().min(5)]
            );
            // ... then finish each: frames that crossed the reset.
            for &stream in &batch {
                if client
                    .write_all(&frame(0x0, 0x1, stream, b"x"))
                    .await
                    .is_err()
                {
                    panic!("the server hung up at {stream}: {:?}", server.await);
                }
            }
        }
        // A PING answered means every late DATA frame before it was read
        // and the connection is still up.
        client
            .write_all(&frame(0x6, 0, 0, b"late-end"))
            .await
            .unwrap();
        let seen = read_frames(&mut client, |kind, _| kind == 0x6 || kind == 0x7).await;
        assert_eq!(seen.last().map(|&(kind, _, _)| kind), Some(0x6), "{seen:?}");
        assert!(
            !seen.iter().any(|&(kind, _, _)| kind == 0x3 || kind == 0x7),
            "the server answered late frames with resets or GOAWAY: {seen:?}"
        );
        drop(client);
        server.await.unwrap().ok();
    }

    proptest::proptest! {
        /// Whatever a peer sends in `Forwarded`, parsing never panics, and
        /// what we write always reads back.
        #[test]
        fn forwarded_parses_anything_and_round_trips(
            junk in ".{0,200}",
            ip in proptest::prelude::any::<std::net::IpAddr>(),
            port in proptest::prelude::any::<u16>(),
        ) {
            let mut headers = http::HeaderMap::new();
            if let Ok(value) = http::HeaderValue::from_str(&junk) {
                headers.insert(http::header::FORWARDED, value);
                let _ = forwarded_app(&headers);
            }
            let addr = std::net::SocketAddr::new(ip, port);
            headers.insert(http::header::FORWARDED, forwarded_for(addr));
            proptest::prop_assert_eq!(forwarded_app(&headers), Some(addr));
        }
    }

    #[test]
    fn forwarded_names_the_calling_app_both_families() {
        for addr in ["10.0.0.7:41234", "[fd00::7]:41234"] {
            let addr: std::net::SocketAddr = addr.parse().unwrap();
            let mut headers = http::HeaderMap::new();
            headers.insert(http::header::FORWARDED, forwarded_for(addr));
            assert_eq!(forwarded_app(&headers), Some(addr));
        }
        let mut headers = http::HeaderMap::new();
        assert_eq!(forwarded_app(&headers), None);
        for junk in ["for=unknown", "by=1.2.3.4", "for=\"not an address\"", ""] {
            headers.insert(
                http::header::FORWARDED,
                http::HeaderValue::from_static(junk),
            );
            assert_eq!(forwarded_app(&headers), None, "{junk}");
        }
        headers.insert(
            http::header::FORWARDED,
            http::HeaderValue::from_static("proto=https;for=\"192.0.2.1:80\""),
        );
        assert_eq!(
            forwarded_app(&headers),
            Some("192.0.2.1:80".parse().unwrap())
        );
    }

    use super::*;
    use crate::sidecar::test_io::{Recorder, frames_written};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A client and a server over an in-memory pipe; returns the client's
    /// stream and the server's (after the CONNECT and its 200).
    async fn pair() -> (TunnelStream, TunnelStream, http::uri::Authority) {
        let (client, server, authority) = streams(1).await.pop().unwrap();
        (client, server, authority)
    }

    /// `n` streams on one tunnel connection: for each, the client's end,
    /// the server's, and the authority the server saw.
    async fn streams(n: usize) -> Vec<(TunnelStream, TunnelStream, http::uri::Authority)> {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(async move {
            let mut conn = server_builder().handshake::<_, Bytes>(b).await.unwrap();
            let mut accepted = Vec::new();
            for _ in 0..n {
                let (request, mut respond) = conn.accept().await.unwrap().unwrap();
                let authority = request.uri().authority().cloned().unwrap();
                assert_eq!(request.method(), http::Method::CONNECT);
                let send = respond
                    .send_response(http::Response::new(()), false)
                    .unwrap();
                let stream = TunnelStream::new(send, request.into_body(), None, None, None);
                accepted.push((stream, authority));
            }
            tokio::spawn(async move { while conn.accept().await.is_some() {} });
            accepted
        });
        let (sender, conn) = client_builder().handshake::<_, Bytes>(a).await.unwrap();
        tokio::spawn(conn);
        let mut clients = Vec::new();
        for _ in 0..n {
            let mut sender = sender.clone().ready().await.unwrap();
            let request = http::Request::connect("10.0.0.2:8080").body(()).unwrap();
            let (response, send) = sender.send_request(request, false).unwrap();
            let response = response.await.unwrap();
            assert_eq!(response.status(), 200);
            clients.push(TunnelStream::new(
                send,
                response.into_body(),
                None,
                None,
                None,
            ));
        }
        let accepted = server.await.unwrap();
        clients
            .into_iter()
            .zip(accepted)
            .map(|(client, (server, authority))| (client, server, authority))
            .collect()
    }

    /// Streams whose apps stop reading, each holding its whole window
    /// unread: how many of them a tunnel's connection window takes.
    const STALLED: usize = 3;

    /// Three such streams leave room for the others (else the stream read
    /// here would stall: the time limit).
    #[tokio::test]
    async fn streams_whose_readers_stop_leave_the_tunnel_to_the_others() {
        tokio::time::timeout(Duration::from_secs(20), stalled_streams_leave_room())
            .await
            .expect("the stalled streams stalled the tunnel");
    }

    async fn stalled_streams_leave_room() {
        let mut streams = streams(STALLED + 1).await;
        let (client, server, _) = streams.pop().unwrap();
        let unread = fill_windows(streams).await;
        carry_windows(client, server, 2).await;
        drop(unread);
    }

    /// And one more takes it all: what a peer can make a tunnel hold while
    /// its apps do not read is the connection window (README "Memory under load"),
    /// four streams' worth; a fifth stream gets no window for one byte.
    #[tokio::test]
    async fn a_tunnel_holds_at_most_its_connection_window_unread() {
        let mut streams = streams(STALLED + 2).await;
        let (mut last, _last_server, _) = streams.pop().unwrap();
        let unread = tokio::time::timeout(Duration::from_secs(20), fill_windows(streams))
            .await
            .expect("four streams' windows fit the connection's");
        let sent = tokio::time::timeout(Duration::from_millis(300), last.write_all(b"x")).await;
        assert!(sent.is_err(), "a fifth stream was given window");
        drop(unread);
    }

    /// Writes a whole window into each stream, none of them read: h2
    /// grants each write only once it has the window for it, and the peer
    /// never hands it back.
    async fn fill_windows(
        streams: Vec<(TunnelStream, TunnelStream, http::uri::Authority)>,
    ) -> Vec<(TunnelStream, TunnelStream)> {
        let mut unread = Vec::new();
        for (mut client, server, _) in streams {
            client
                .write_all(&vec![1u8; STREAM_WINDOW as usize])
                .await
                .unwrap();
            unread.push((client, server));
        }
        unread
    }

    #[tokio::test]
    async fn carries_bytes_both_ways_with_half_close() {
        let (mut client, mut server, authority) = pair().await;
        assert_eq!(authority.as_str(), "10.0.0.2:8080");
        client.write_all(b"ping").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"ping");
        // The other direction still flows after the client's half close.
        server.write_all(b"pong").await.unwrap();
        server.shutdown().await.unwrap();
        let mut reply = Vec::new();
        client.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, b"pong");
    }

    /// The chunk paths the splice uses: several windows' worth given as
    /// chunks on one side and taken as chunks on the other, in order, with
    /// the window handed back (else this would stall: the time limit),
    /// END_STREAM as an empty chunk, answered again when asked again; and
    /// the rest of a frame `poll_read` took part of comes next, whole.
    #[tokio::test]
    async fn chunks_cross_a_tunnel_in_order_within_flow_control() {
        tokio::time::timeout(Duration::from_secs(20), chunks_cross_a_tunnel())
            .await
            .expect("the transfer stalled");
    }

    async fn chunks_cross_a_tunnel() {
        let (mut client, mut server, _) = pair().await;
        let payload: Bytes = (0..3 * STREAM_WINDOW as usize).map(|i| i as u8).collect();
        let expected = payload.clone();
        let writer = tokio::spawn(async move {
            for piece in payload.chunks(100_000) {
                let mut chunk = Bytes::copy_from_slice(piece);
                while !chunk.is_empty() {
                    std::future::poll_fn(|cx| client.poll_write_chunk(cx, &mut chunk))
                        .await
                        .unwrap();
                }
            }
            client.shutdown().await.unwrap();
            client
        });
        let mut got = Vec::new();
        loop {
            let chunk = std::future::poll_fn(|cx| server.poll_read_chunk(cx).unwrap())
                .await
                .unwrap();
            if chunk.is_empty() {
                break;
            }
            assert!(chunk.len() <= MAX_FRAME as usize);
            got.extend_from_slice(&chunk);
        }
        assert!(got == expected);
        let again = std::future::poll_fn(|cx| server.poll_read_chunk(cx).unwrap()).await;
        assert!(again.unwrap().is_empty(), "END_STREAM answered again");
        let mut client = writer.await.unwrap();

        // A frame only partly read by `poll_read` is handed out whole after.
        server.write_all(&[7u8; 3000]).await.unwrap();
        let mut first = [0u8; 1000];
        client.read_exact(&mut first).await.unwrap();
        let rest = std::future::poll_fn(|cx| client.poll_read_chunk(cx).unwrap())
            .await
            .unwrap();
        assert_eq!(&rest[..], &[7u8; 2000][..]);
    }

    #[tokio::test]
    async fn large_transfers_respect_flow_control() {
        let (client, server, _) = pair().await;
        // Several windows' worth: only works if reads hand capacity back.
        carry_windows(client, server, 5).await;
    }

    /// Writes `windows` stream windows' worth of numbered bytes on `client`,
    /// then its end, and checks that `server` reads exactly them.
    async fn carry_windows(mut client: TunnelStream, mut server: TunnelStream, windows: usize) {
        let payload: Vec<u8> = (0..windows * STREAM_WINDOW as usize)
            .map(|i| i as u8)
            .collect();
        let expected = payload.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&payload).await.unwrap();
            client.shutdown().await.unwrap();
            client
        });
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), expected.len());
        assert!(got == expected);
        drop(writer.await.unwrap());
    }

    /// A stream ended and dropped while the peer has not finished lingers,
    /// then resets; its END_STREAM is written before the reset, even when
    /// its data went out before (a quiet tunnel writes a frame at once,
    /// `super::eager`), and whether it ended by `shutdown` or by its drop.
    /// h2's reset drops an END_STREAM still queued: the peer's app would see
    /// a reset connection where a socket would have seen EOF.
    #[tokio::test(flavor = "current_thread")]
    async fn a_lingering_reset_comes_after_the_end_of_stream() {
        lingering_reset_after_end(true).await;
        lingering_reset_after_end(false).await;
    }

    async fn lingering_reset_after_end(shut_down_first: bool) {
        let (mut client, server_io) = tokio::io::duplex(1 << 20);
        let writes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let server_io = Recorder::new(server_io, writes.clone());
        let client = tokio::spawn(async move {
            client
                .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
                .await
                .unwrap();
            client.write_all(&frame(0x4, 0, 0, &[])).await.unwrap(); // SETTINGS
            client.write_all(&connect_head(1)).await.unwrap();
            read_frames(&mut client, |kind, stream| kind == 0x3 && stream == 1).await
        });
        let mut connection = server_builder()
            .handshake::<_, Bytes>(server_io)
            .await
            .unwrap();
        let (request, mut respond) = connection.accept().await.unwrap().unwrap();
        // Driven as a sidecar drives it: after the tick's other tasks.
        tokio::spawn(async move {
            while Coalesce::new(Box::pin(connection.accept())).await.is_some() {}
        });
        let send = respond
            .send_response(http::Response::new(()), false)
            .unwrap();
        let mut stream = TunnelStream::new(send, request.into_body(), None, None, None);
        stream.write_all(b"response").await.unwrap();
        let data_out = || {
            let writes = writes.lock().unwrap();
            frames_written(&writes)
                .iter()
                .any(|f| (f.1, f.3) == (0x0, 1))
        };
        tokio::time::timeout(Duration::from_secs(10), async {
            while !data_out() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the data is written out");
        if shut_down_first {
            stream.shutdown().await.unwrap();
        }
        drop(stream); // the client has not ended its side: linger, then reset
        let seen = tokio::time::timeout(Duration::from_secs(10), client)
            .await
            .expect("the reset comes")
            .unwrap();
        assert!(seen.iter().any(|f| (f.0, f.1) == (0x3, 1)), "{seen:?}");
        let frames = frames_written(&writes.lock().unwrap());
        let end = frames
            .iter()
            .position(|f| f.1 == 0x0 && f.2 & 0x1 != 0 && f.3 == 1)
            .expect("END_STREAM is written (h2 drops it when a reset is queued first)");
        let reset = frames.iter().position(|f| f.1 == 0x3 && f.3 == 1).unwrap();
        assert!(reset > end, "{frames:?}");
    }

    #[tokio::test]
    async fn dropping_a_stream_closes_it_like_a_socket_without_losing_data() {
        let (mut client, mut server, _) = pair().await;
        // Written, never flushed by anyone, then dropped: still delivered,
        // then an orderly end (END_STREAM), not a reset.
        client.write_all(b"last words").await.unwrap();
        drop(client);
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"last words");
        // The server side drops too; nothing hangs.
        drop(server);
    }

    #[tokio::test]
    async fn stream_counts_follow_guards() {
        let count = StreamCount::new();
        let a = count.open();
        let b = count.open();
        assert_eq!(count.active(), 2);
        drop(a);
        assert_eq!(count.active(), 1);
        drop(b);
        assert_eq!(count.active(), 0);
    }
}
