//! Opaque TCP: copy bytes both ways until either side is done, the
//! connection idles out, or it is revoked.
//!
//! Design bias: *a connection is only as alive as its authorization*. Besides
//! EOF and errors, a splice ends when it has been idle (no byte either way)
//! for the idle timeout, or when the caller's `revoked` future resolves —
//! which the sidecar uses to close a live connection that a new policy no
//! longer allows. The outcome says which, as an enum, for the audit log.
//!
//! A reset is news too: when one side resets its connection, the splice
//! says which ([`SpliceEnd::Reset`]) and [`forward_reset`] resets the other,
//! so an abort reaches the other party as an abort, not as a clean end.
//! Streams are taken by value; pass `&mut stream` to keep them for that.
//!
//! Copies are the cost of a bulk transfer, so where a stream already holds
//! its bytes as [`Bytes`] (a tunnel stream's DATA frames) or queues what it
//! sends as `Bytes` (a tunnel stream's send side), the splice hands chunks
//! over instead of copying them through its buffer: [`Chunks`]. Through a
//! tunnel, a bulk transfer's bytes are copied in user space only by rustls
//! (into and out of its records); h2 still copies DATA too small to be
//! worth chaining into its write buffer.

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::copy_buf::{ReadBuffer, led_room};
use super::memory::Meter;

/// Why a splice ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpliceEnd {
    /// Both directions reached EOF (or one side closed after the other).
    Done,
    /// No byte moved for the idle timeout.
    IdleTimeout,
    /// The `revoked` future resolved: authorization was withdrawn.
    Revoked,
    /// One side reset its connection (a read failed with
    /// `ConnectionReset`): the other side should learn that the stream was
    /// cut short, not that it ended ([`forward_reset`]).
    Reset(Side),
    /// Another read or write failure.
    Error,
}

/// One of the two connections of a splice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The side that connected to us.
    Downstream,
    /// The side we connected to.
    Upstream,
}

/// A connection that can be closed abortively: how the other party is told
/// "this was cut short" rather than "this is the end" (for a protocol that
/// ends its messages at the close, the difference between a truncated
/// response and a complete one).
pub trait Abort {
    /// Makes the close that follows (when the connection is dropped) an
    /// abortive one: a TCP RST, or an HTTP/2 RST_STREAM. What was already
    /// written still goes first, as far as the transport allows.
    fn abort(&mut self);
}

impl Abort for tokio::net::TcpStream {
    /// `SO_LINGER` 0: the close sends RST. Bytes still in our send buffer
    /// are discarded, as the resetting party's were; on loopback (where the
    /// app always is) what we wrote is already in the app's receive queue,
    /// and the app reads it before the reset.
    fn abort(&mut self) {
        let _ = self.set_zero_linger();
    }
}

impl<S: Abort> Abort for tokio_rustls::server::TlsStream<S> {
    fn abort(&mut self) {
        self.get_mut().0.abort();
    }
}

impl<S: Abort> Abort for tokio_rustls::client::TlsStream<S> {
    fn abort(&mut self) {
        self.get_mut().0.abort();
    }
}

/// In-memory pipes (the unit tests', the fuzz targets') have no abortive
/// close: dropping one is all they can do.
impl Abort for tokio::io::DuplexStream {
    fn abort(&mut self) {}
}

/// The splice's zero-copy paths (see the module doc). A stream that holds
/// what it received as [`Bytes`] hands them out as they are; one that
/// queues what it sends as `Bytes` takes them as they are. Every other
/// stream keeps the defaults, and the splice reads into its buffer and
/// writes from it. A wrapper passes both on to what it wraps, doing to a
/// chunk what it does to a read or a write (counting it, watching it).
pub trait Chunks: AsyncWrite + Unpin {
    /// The next received bytes the stream already holds, as they are (an
    /// empty chunk is EOF), or `None` when it has none to hand out this way
    /// now: the splice then reads with `poll_read`. A stream may answer
    /// either way from one read to the next; the bytes stay in order. EOF
    /// and errors must be answered again when asked again: the splice asks
    /// for more chunks after one it got, and leaves anything else for its
    /// next read.
    fn poll_read_chunk(&mut self, _cx: &mut Context<'_>) -> Option<Poll<io::Result<Bytes>>> {
        None
    }

    /// Whether the stream keeps what it is given by
    /// [`Chunks::poll_write_chunk`] instead of copying it: the splice then
    /// reads into buffers it can give away.
    fn takes_chunks(&self) -> bool {
        false
    }

    /// Sends a prefix of `chunk` and takes it off, as `poll_write` sends a
    /// prefix of a slice; by default with `poll_write`. A write that is
    /// ready and takes nothing is the splice's `WriteZero` error
    /// (`poll_write_some`), as a `poll_write` of 0 bytes is `write_all`'s.
    fn poll_write_chunk(
        &mut self,
        cx: &mut Context<'_>,
        chunk: &mut Bytes,
    ) -> Poll<io::Result<()>> {
        let n = ready!(Pin::new(&mut *self).poll_write(cx, chunk))?;
        chunk.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<T: Chunks + ?Sized> Chunks for &mut T {
    fn poll_read_chunk(&mut self, cx: &mut Context<'_>) -> Option<Poll<io::Result<Bytes>>> {
        (**self).poll_read_chunk(cx)
    }

    fn takes_chunks(&self) -> bool {
        (**self).takes_chunks()
    }

    fn poll_write_chunk(
        &mut self,
        cx: &mut Context<'_>,
        chunk: &mut Bytes,
    ) -> Poll<io::Result<()>> {
        (**self).poll_write_chunk(cx, chunk)
    }
}

/// Sockets and TLS streams copy what they send into the kernel or into
/// TLS records anyway, and read into the caller's buffer.
impl Chunks for tokio::net::TcpStream {}
impl<S: AsyncRead + AsyncWrite + Unpin> Chunks for tokio_rustls::server::TlsStream<S> {}
impl<S: AsyncRead + AsyncWrite + Unpin> Chunks for tokio_rustls::client::TlsStream<S> {}
impl Chunks for tokio::io::DuplexStream {}

/// After a splice that ended because one side was reset, resets the other.
pub fn forward_reset(end: SpliceEnd, downstream: &mut impl Abort, upstream: &mut impl Abort) {
    match end {
        SpliceEnd::Reset(Side::Downstream) => upstream.abort(),
        SpliceEnd::Reset(Side::Upstream) => downstream.abort(),
        _ => {}
    }
}

/// Bytes copied, per direction.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Copied {
    /// From the downstream (the side that connected to us) to upstream.
    pub to_upstream: u64,
    /// From upstream back to downstream.
    pub to_downstream: u64,
}

/// Start small so an idle connection costs little (ztunnel's copy starts
/// at 1 KiB too); double while reads fill the buffer (and while the byte
/// budget, when given, has room: see [`super::memory`]). A grown buffer
/// goes back to this size, and its growth back to the budget, once its
/// direction has been quiet for [`QUIET`]: a pooled connection that once
/// carried a burst (a database pool, a keep-alive HTTP connection decided
/// once) would otherwise hold up to 128 KiB while idle, for its whole life,
/// and, charged to its peer's share of the budget, could leave that peer's
/// live writers waiting on bytes nobody uses. Not after a small read: that
/// rule also fired on the remnant of every tunnel DATA frame the doubling
/// had not yet caught up with, and made bulk transfers re-grow from 1 KiB
/// frame after frame.
const MIN_BUFFER: usize = 1024;
/// How long a direction with a grown buffer waits for bytes before the
/// buffer shrinks back to [`MIN_BUFFER`] (see there). Only a grown buffer
/// keeps a timer; a transfer never pauses this long between reads.
const QUIET: Duration = Duration::from_secs(2);
/// The largest chunk, sized so that one written anywhere leaves in one
/// TCP segment of the largest kind, 64 KiB (loopback's MTU; the largest
/// segment the kernel builds for a NIC to split, elsewhere). A write that
/// is a little larger than a segment becomes a full segment and a
/// sliver, and every segment costs both kernels the same: at 64 KiB − 9
/// bytes (which fitted rustls's 64 KiB write exactly, with the frame head)
/// a chunk in TLS records (88 bytes more: 4 records' heads and tags) or a
/// chunk written to the app left as 65 483 + a few bytes, and bulk through
/// the pair made twice the segments it needs (docs/performance.md,
/// "A chunk that leaves in one TCP segment"). Now a chunk as a DATA frame
/// in TLS records fits `LARGEST_SEGMENT` (a test measures rustls's
/// records).
const MAX_BUFFER: usize = 64 * 1024 - 256;

/// The largest TCP segment's payload the sums above must fit: a 64 KiB
/// loopback MTU less IPv6's header (40 bytes), TCP's (20) and its
/// timestamps option (12).
#[cfg(test)]
const LARGEST_SEGMENT: usize = 64 * 1024 - 40 - 20 - 12;

/// Copies between `downstream` and `upstream`. `initial` is data already read
/// from downstream (a peeked prefix) that must be sent upstream first.
pub async fn splice<D, U>(
    downstream: D,
    upstream: U,
    initial: &[u8],
    idle_timeout: Duration,
    memory: Option<&Meter>,
    revoked: impl Future<Output = ()>,
) -> (SpliceEnd, Copied)
where
    D: AsyncRead + Chunks,
    U: AsyncRead + Chunks,
{
    let downstream = End::new(downstream);
    let upstream = End::new(upstream);
    let start = Instant::now();
    // Milliseconds since `start` of the last byte moved, either way.
    let last_activity = Arc::new(AtomicU64::new(0));

    if !initial.is_empty() && write_all(&upstream, initial).await.is_err() {
        return (SpliceEnd::Error, Copied::default());
    }
    let mut copied = Copied {
        to_upstream: initial.len() as u64,
        to_downstream: 0,
    };

    let up = copy_one_way(&downstream, &upstream, &last_activity, start, memory);
    let down = copy_one_way(&upstream, &downstream, &last_activity, start, memory);
    let idle = watch_idle(&last_activity, start, idle_timeout);
    tokio::pin!(up, down, idle, revoked);

    let mut up_done = false;
    let mut down_done = false;
    let end = loop {
        // `biased`: no random start per poll (one per chunk); each
        // direction ends once, so none can starve the others.
        tokio::select! {
            biased;
            () = &mut revoked => break SpliceEnd::Revoked,
            result = &mut up, if !up_done => {
                copied.to_upstream += result.bytes;
                up_done = true;
                match result.outcome {
                    Outcome::Eof if down_done => break SpliceEnd::Done,
                    Outcome::Eof => {}
                    Outcome::ReadReset => break SpliceEnd::Reset(Side::Downstream),
                    Outcome::Failed => break SpliceEnd::Error,
                }
            }
            result = &mut down, if !down_done => {
                copied.to_downstream += result.bytes;
                down_done = true;
                match result.outcome {
                    Outcome::Eof if up_done => break SpliceEnd::Done,
                    Outcome::Eof => {}
                    Outcome::ReadReset => break SpliceEnd::Reset(Side::Upstream),
                    Outcome::Failed => break SpliceEnd::Error,
                }
            }
            () = &mut idle => break SpliceEnd::IdleTimeout,
        }
    };
    (end, copied)
}

struct OneWay {
    bytes: u64,
    outcome: Outcome,
}

/// How one direction ended.
enum Outcome {
    /// EOF read, and passed on as a half close.
    Eof,
    /// The reader's connection was reset.
    ReadReset,
    /// Any other failure, or the half close could not be passed on.
    Failed,
}

/// One end of the splice, shared by its two directions: each locks it for
/// one poll at a time. Both directions are polled by the splice's one
/// task, so the lock is never contended; unlike tokio's `split`, it leaves
/// the stream's [`Chunks`] within reach.
struct End<S>(Mutex<S>);

impl<S: AsyncRead + Chunks> End<S> {
    fn new(stream: S) -> Self {
        End(Mutex::new(stream))
    }

    fn with<T>(&self, f: impl FnOnce(&mut S) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

// The writes below are each one `poll_fn` looping inside a poll: their
// state is two references and what is left to write, where an `async fn`
// with an inner `.await` per piece kept a future of each nested one. They
// sit in every spliced connection's task, whose size is what an idle
// connection costs (README, "Memory").

/// Writes all of `data`.
fn write_all<'a, S: AsyncRead + Chunks>(
    end: &'a End<S>,
    mut data: &'a [u8],
) -> impl Future<Output = io::Result<()>> + 'a {
    poll_fn(move |cx| {
        end.with(|s| {
            while !data.is_empty() {
                let n = ready!(Pin::new(&mut *s).poll_write(cx, data))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                data = &data[n..];
            }
            Poll::Ready(Ok(()))
        })
    })
}

/// Writes all of `chunk`, as a chunk ([`Chunks::poll_write_chunk`]).
fn write_chunk<S: AsyncRead + Chunks>(
    end: &End<S>,
    mut chunk: Bytes,
) -> impl Future<Output = io::Result<()>> + '_ {
    poll_fn(move |cx| {
        end.with(|s| {
            while !chunk.is_empty() {
                ready!(poll_write_some(s, cx, &mut chunk))?;
            }
            Poll::Ready(Ok(()))
        })
    })
}

/// [`Chunks::poll_write_chunk`], with a write that takes nothing made an
/// error (`WriteZero`), as `write_all` does: the loops above would spin.
fn poll_write_some<S: Chunks>(
    writer: &mut S,
    cx: &mut Context<'_>,
    chunk: &mut Bytes,
) -> Poll<io::Result<()>> {
    let before = chunk.len();
    ready!(writer.poll_write_chunk(cx, chunk))?;
    if chunk.len() == before {
        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
    }
    Poll::Ready(Ok(()))
}

/// Writes out what was gathered: chunk by chunk to a writer that keeps
/// them, else with vectored writes where the writer has them (sockets, TLS
/// streams and the wrappers around them do: one system call for many small
/// frames, as one read of a copy buffer would have been).
fn write_gathered<'a, S: AsyncRead + Chunks>(
    end: &'a End<S>,
    gathered: &'a mut Gathered,
) -> impl Future<Output = io::Result<()>> + 'a {
    poll_fn(move |cx| end.with(|s| gathered.poll_write_to(s, cx)))
}

/// Chunks a direction gathers from a reader that has several ready, at
/// most; it also stops once it holds [`MAX_BUFFER`] bytes or more (so at
/// most that and one chunk). Small DATA frames that arrived together are
/// written with one vectored write.
const GATHER_CHUNKS: usize = 64;

/// Chunks taken from the reader, not yet written.
#[derive(Default)]
struct Gathered {
    chunks: VecDeque<Bytes>,
    len: usize,
}

impl Gathered {
    fn push(&mut self, chunk: Bytes) {
        self.len += chunk.len();
        self.chunks.push_back(chunk);
    }

    /// Writes everything out to `writer`.
    fn poll_write_to<S: Chunks>(
        &mut self,
        writer: &mut S,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        if writer.takes_chunks() {
            while let Some(front) = self.chunks.front_mut() {
                let before = front.len();
                let written = poll_write_some(writer, cx, front);
                self.len -= before - front.len();
                if front.is_empty() {
                    self.chunks.pop_front();
                }
                ready!(written)?;
            }
            return Poll::Ready(Ok(()));
        }
        while self.has_remaining() {
            let n = ready!(tokio_util::io::poll_write_buf(
                Pin::new(&mut *writer),
                cx,
                self
            ))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl Buf for Gathered {
    fn remaining(&self) -> usize {
        self.len
    }

    fn chunk(&self) -> &[u8] {
        self.chunks.front().map_or(&[], |chunk| chunk)
    }

    fn advance(&mut self, mut n: usize) {
        debug_assert!(n <= self.len, "advanced past what was gathered");
        while n > 0 {
            let Some(front) = self.chunks.front_mut() else {
                return;
            };
            let step = n.min(front.len());
            front.advance(step);
            self.len -= step;
            n -= step;
            if front.is_empty() {
                self.chunks.pop_front();
            }
        }
    }

    fn chunks_vectored<'a>(&'a self, slices: &mut [io::IoSlice<'a>]) -> usize {
        let mut filled = 0;
        for (slice, chunk) in slices.iter_mut().zip(&self.chunks) {
            *slice = io::IoSlice::new(chunk);
            filled += 1;
        }
        filled
    }
}

/// Where one direction reads when its reader hands out no chunk of its
/// own. Its size starts at [`MIN_BUFFER`] and doubles while reads fill it.
enum Buffer {
    /// Kept for the direction's life and written from: the writer copies
    /// what it is given anyway. Allocated at the first read into it.
    Kept(Option<ReadBuffer>),
    /// Read into and split off: what was read is handed to the writer,
    /// which keeps it ([`Chunks::takes_chunks`]); the room left behind is
    /// read into next, until less than half a read is left. So a buffer is
    /// at least half used before the next is made: small reads queued for
    /// a slow peer (charged to the budget by their length) cannot each
    /// hold a whole buffer alive. (One exception: when a quiet direction
    /// shrinks, its room may still be pinned by chunks queued from it;
    /// at most one buffer per direction.)
    Given(BytesMut),
}

/// What one read brought.
enum Read {
    /// The reader's own chunks, now in the direction's [`Gathered`]: this
    /// many bytes.
    Chunks(usize),
    /// This many bytes at the start of [`Buffer::Kept`].
    Kept(usize),
    /// Bytes read into [`Buffer::Given`], split off.
    Given(Bytes),
    /// End of file.
    Eof,
}

impl Buffer {
    fn new(writer_takes_chunks: bool) -> Self {
        if writer_takes_chunks {
            Buffer::Given(BytesMut::new())
        } else {
            Buffer::Kept(None)
        }
    }

    /// The kind of buffer the writer wants now: a connection dialled late
    /// ([`super::lazy::LazyUpstream`]) starts out taking no chunks.
    fn fit(&mut self, writer_takes_chunks: bool) {
        if writer_takes_chunks != matches!(self, Buffer::Given(_)) {
            *self = Buffer::new(writer_takes_chunks);
        }
    }

    /// Reads from `reader`: the chunks it has ready, if it hands out its
    /// own (into `gathered`, as they are), else up to `size` bytes into
    /// this buffer.
    fn poll_read<R: AsyncRead + Chunks>(
        &mut self,
        reader: &mut R,
        cx: &mut Context<'_>,
        size: usize,
        gathered: &mut Gathered,
    ) -> Poll<io::Result<Read>> {
        if let Some(first) = reader.poll_read_chunk(cx) {
            let first = ready!(first)?;
            if first.is_empty() {
                return Poll::Ready(Ok(Read::Eof));
            }
            gathered.push(first);
            // More already here? EOF or an error after them is answered
            // again on the next read (see `Chunks::poll_read_chunk`).
            while gathered.len < MAX_BUFFER && gathered.chunks.len() < GATHER_CHUNKS {
                match reader.poll_read_chunk(cx) {
                    Some(Poll::Ready(Ok(chunk))) if !chunk.is_empty() => gathered.push(chunk),
                    _ => break,
                }
            }
            return Poll::Ready(Ok(Read::Chunks(gathered.len)));
        }
        let n = match self {
            Buffer::Kept(kept) => {
                let kept = kept.get_or_insert_with(|| ReadBuffer::new(size));
                if kept.len() != size {
                    kept.resize(size);
                }
                let mut read = ReadBuf::new(kept.bytes());
                ready!(Pin::new(reader).poll_read(cx, &mut read))?;
                read.filled().len()
            }
            Buffer::Given(room) => {
                if room.capacity() < size / 2 || room.capacity() == 0 {
                    *room = led_room(size);
                }
                let mut limited = (&mut *room).limit(size);
                ready!(tokio_util::io::poll_read_buf(
                    Pin::new(reader),
                    cx,
                    &mut limited
                ))?;
                return Poll::Ready(Ok(match room.is_empty() {
                    true => Read::Eof,
                    false => Read::Given(room.split().freeze()),
                }));
            }
        };
        Poll::Ready(Ok(if n == 0 { Read::Eof } else { Read::Kept(n) }))
    }

    /// The bytes a [`Read::Kept`] of `n` brought.
    fn kept(&mut self, n: usize) -> &[u8] {
        match self {
            Buffer::Kept(Some(kept)) => &kept.bytes()[..n],
            _ => &[],
        }
    }

    /// Back to the smallest size (what a quiet direction holds).
    fn shrink(&mut self) {
        match self {
            Buffer::Kept(kept) => *kept = None,
            Buffer::Given(room) => *room = BytesMut::new(),
        }
    }
}

/// Copies until EOF, then half-closes the writer (TCP FIN) so the other side
/// sees the end of this direction while the other keeps flowing.
async fn copy_one_way<R, W>(
    reader: &End<R>,
    writer: &End<W>,
    last_activity: &AtomicU64,
    start: Instant,
    memory: Option<&Meter>,
) -> OneWay
where
    R: AsyncRead + Chunks,
    W: AsyncRead + Chunks,
{
    // Its bytes may go into TLS: see `copy_buf` for where they start. Its
    // kind follows the writer, decided before each read (`fit`).
    let mut buffer = Buffer::Kept(None);
    let mut gathered = Gathered::default();
    let mut size = MIN_BUFFER;
    // What the buffer's growth beyond MIN_BUFFER holds of the budget.
    let mut grown = Vec::new();
    let mut bytes = 0u64;
    // Polled only while the buffer is grown: one timer for the direction's
    // life, moved on once per QUIET (not a timer per read).
    let quiet = tokio::time::sleep(QUIET);
    tokio::pin!(quiet);
    let mut last_read = Instant::now();
    loop {
        buffer.fit(writer.with(|w| w.takes_chunks()));
        let mut read = poll_fn(|cx| reader.with(|r| buffer.poll_read(r, cx, size, &mut gathered)));
        let read = if size == MIN_BUFFER {
            read.await
        } else {
            tokio::select! {
                biased;
                // Cancel-safe: when the timer wins, nothing was read.
                read = &mut read => read,
                () = &mut quiet => {
                    let due = last_read + QUIET;
                    if Instant::now() < due {
                        quiet.as_mut().reset(due); // bytes came meanwhile
                    } else {
                        drop(read);
                        buffer.shrink();
                        size = MIN_BUFFER;
                        grown = Vec::new(); // the budget's bytes given back
                    }
                    continue;
                }
            }
        };
        // Only reads into our own buffer size it: a reader's own chunks
        // (DATA frames as the peer cut them) cost us no buffer.
        let (n, into_buffer, written) = match read {
            Ok(Read::Eof) => {
                return OneWay {
                    bytes,
                    outcome: end_of_reads(writer).await,
                };
            }
            Ok(Read::Chunks(n)) => (n, false, write_gathered(writer, &mut gathered).await),
            Ok(Read::Kept(n)) => (n, true, write_all(writer, buffer.kept(n)).await),
            Ok(Read::Given(chunk)) => (chunk.len(), true, write_chunk(writer, chunk).await),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                return OneWay {
                    bytes,
                    outcome: Outcome::ReadReset,
                };
            }
            Err(_) => {
                return OneWay {
                    bytes,
                    outcome: Outcome::Failed,
                };
            }
        };
        if written.is_err() {
            return OneWay {
                bytes,
                outcome: Outcome::Failed,
            };
        }
        bytes += n as u64;
        last_read = Instant::now();
        let since_start = last_read.saturating_duration_since(start);
        last_activity.store(since_start.as_millis() as u64, Ordering::Relaxed);
        if into_buffer && n == size && size < MAX_BUFFER {
            let len = (size * 2).min(MAX_BUFFER);
            let charge = match memory {
                None => None,
                Some(memory) => match memory.try_grow(len - size) {
                    Some(charge) => Some(charge),
                    None => continue, // no room: stay this size
                },
            };
            grown.extend(charge);
            size = len;
        }
    }
}

/// EOF read: passed on as a half close.
async fn end_of_reads<W: AsyncRead + Chunks>(writer: &End<W>) -> Outcome {
    match poll_fn(|cx| writer.with(|w| Pin::new(w).poll_shutdown(cx))).await {
        Ok(()) => Outcome::Eof,
        Err(_) => Outcome::Failed,
    }
}

/// Resolves once nothing has moved for `idle_timeout`.
async fn watch_idle(last_activity: &AtomicU64, start: Instant, idle_timeout: Duration) {
    loop {
        let last = Duration::from_millis(last_activity.load(Ordering::Relaxed));
        let deadline = start + last + idle_timeout;
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    /// The TLS bytes rustls (TLS 1.3, AES-GCM: 22 bytes a record more with
    /// either key size) writes for one write of `plaintext` bytes, measured.
    fn tls_bytes_for(plaintext: usize) -> usize {
        use std::sync::Arc;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["peer.test".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.der().clone()).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("peer.test").unwrap();
        let mut client = rustls::ClientConnection::new(Arc::new(client), name).unwrap();
        let mut server = rustls::ServerConnection::new(Arc::new(server)).unwrap();
        let mut wire = Vec::new();
        while client.is_handshaking() || server.is_handshaking() {
            wire.clear();
            client.write_tls(&mut wire).unwrap();
            server.read_tls(&mut &wire[..]).unwrap();
            server.process_new_packets().unwrap();
            wire.clear();
            server.write_tls(&mut wire).unwrap();
            client.read_tls(&mut &wire[..]).unwrap();
            client.process_new_packets().unwrap();
        }
        wire.clear();
        while client.wants_write() {
            client.write_tls(&mut wire).unwrap(); // what the handshake left
        }
        std::io::Write::write_all(&mut client.writer(), &vec![7u8; plaintext]).unwrap();
        let mut records = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut records).unwrap();
        }
        records.len()
    }

    #[test]
    fn a_largest_chunk_leaves_in_one_tcp_segment() {
        // Through a tunnel: a DATA frame (9-byte head) in TLS records.
        assert!(tls_bytes_for(MAX_BUFFER + 9) <= LARGEST_SEGMENT);
        // Strict: the chunk in TLS records; to the app: the chunk alone.
        assert!(tls_bytes_for(MAX_BUFFER) <= LARGEST_SEGMENT);
        // What the sum was before (64 KiB - 9 per chunk): over by a sliver.
        assert!(tls_bytes_for(64 * 1024) > LARGEST_SEGMENT);
    }

    /// A stream for the chunk paths: it reads `to_read` (as its own chunks
    /// when `reads_chunks`, else copied through `poll_read`), then EOF (or
    /// nothing more, when `then_pending`); it keeps what it is given to
    /// write, chunks as they are (when `takes_chunks`), slices copied, one
    /// entry per call.
    #[derive(Default)]
    struct ChunkStream {
        to_read: VecDeque<Bytes>,
        reads_chunks: bool,
        /// Every second item of `to_read` only through `poll_read`.
        every_other_copied: bool,
        /// One chunk per read: asked again at once, it is not ready.
        one_chunk_per_read: bool,
        then_pending: bool,
        takes_chunks: bool,
        /// Takes chunks once something was written (as a connection
        /// dialled at its first write does).
        takes_once_written: bool,
        vectored: bool,
        /// Takes at most this many bytes a write (0: all).
        write_limit: usize,
        /// Every other write is not ready (and wakes the task at once).
        stalls: bool,
        /// Every write is ready and takes nothing.
        takes_nothing: bool,
        stalled: bool,
        taken: usize,
        handed: bool,
        written: Vec<Bytes>,
        shut: bool,
    }

    impl AsyncRead for ChunkStream {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let Some(mut next) = self.to_read.pop_front() else {
                return match self.then_pending {
                    true => Poll::Pending,
                    false => Poll::Ready(Ok(())),
                };
            };
            let n = next.len().min(buf.remaining());
            buf.put_slice(&next.split_to(n));
            match next.is_empty() {
                true => self.taken += 1,
                false => self.to_read.push_front(next),
            }
            Poll::Ready(Ok(()))
        }
    }

    impl ChunkStream {
        /// Whether this write stalls; else how much of `len` it takes.
        fn poll_take(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<usize> {
            if self.stalls {
                self.stalled = !self.stalled;
                if self.stalled {
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
            }
            if self.takes_nothing {
                return Poll::Ready(0);
            }
            Poll::Ready(match self.write_limit {
                0 => len,
                limit => len.min(limit),
            })
        }
    }

    impl AsyncWrite for ChunkStream {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = ready!(self.poll_take(cx, buf.len()));
            self.written.push(Bytes::copy_from_slice(&buf[..n]));
            Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let all: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            let n = ready!(self.poll_take(cx, all.len()));
            self.written.push(Bytes::copy_from_slice(&all[..n]));
            Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            self.vectored
        }

        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.shut = true;
            Poll::Ready(Ok(()))
        }
    }

    impl Chunks for ChunkStream {
        fn poll_read_chunk(&mut self, cx: &mut Context<'_>) -> Option<Poll<io::Result<Bytes>>> {
            if !self.reads_chunks || (self.every_other_copied && self.taken % 2 == 1) {
                return None;
            }
            if self.one_chunk_per_read && std::mem::take(&mut self.handed) {
                cx.waker().wake_by_ref();
                return Some(Poll::Pending);
            }
            match self.to_read.pop_front() {
                Some(chunk) => {
                    self.taken += 1;
                    self.handed = true;
                    Some(Poll::Ready(Ok(chunk)))
                }
                None if self.then_pending => Some(Poll::Pending),
                None => Some(Poll::Ready(Ok(Bytes::new()))),
            }
        }

        fn takes_chunks(&self) -> bool {
            self.takes_chunks || (self.takes_once_written && !self.written.is_empty())
        }

        fn poll_write_chunk(
            &mut self,
            cx: &mut Context<'_>,
            chunk: &mut Bytes,
        ) -> Poll<io::Result<()>> {
            if !self.takes_chunks() {
                let n = ready!(Pin::new(&mut *self).poll_write(cx, chunk))?;
                chunk.advance(n);
                return Poll::Ready(Ok(()));
            }
            let n = ready!(self.poll_take(cx, chunk.len()));
            self.written.push(chunk.split_to(n));
            Poll::Ready(Ok(()))
        }
    }

    async fn splice_one_way(downstream: &mut ChunkStream, upstream: &mut ChunkStream) -> Copied {
        let (end, copied) = splice(
            &mut *downstream,
            &mut *upstream,
            b"",
            Duration::from_secs(5),
            None,
            std::future::pending(),
        )
        .await;
        assert_eq!(end, SpliceEnd::Done);
        assert!(upstream.shut, "EOF passed on");
        copied
    }

    fn joined(chunks: &[Bytes]) -> Vec<u8> {
        chunks.iter().flat_map(|c| c.iter().copied()).collect()
    }

    /// A tunnel stream's DATA frames reach a tunnel stream's send side as
    /// the same buffers: no copy in between.
    #[tokio::test]
    async fn chunks_pass_from_reader_to_writer_as_they_are() {
        let sent = [Bytes::from(vec![1u8; 1000]), Bytes::from(vec![2u8; 70_000])];
        let mut downstream = ChunkStream {
            to_read: sent.iter().cloned().collect(),
            reads_chunks: true,
            ..Default::default()
        };
        let mut upstream = ChunkStream {
            takes_chunks: true,
            ..Default::default()
        };
        let copied = splice_one_way(&mut downstream, &mut upstream).await;
        assert_eq!(copied.to_upstream, 71_000);
        assert_eq!(upstream.written.len(), 2);
        for (given, got) in sent.iter().zip(&upstream.written) {
            assert_eq!(got.as_ptr(), given.as_ptr(), "the same buffer, not a copy");
            assert_eq!(got, given);
        }
    }

    /// Reads for a writer that keeps its chunks go into one buffer after
    /// another, each split off as it is read: small reads share one
    /// allocation (a trickle of small writes cannot make every byte hold a
    /// buffer of its own while queued), and a read that fills the buffer
    /// doubles the next.
    #[tokio::test]
    async fn reads_for_a_writer_that_keeps_chunks_share_their_buffer() {
        let sent: Vec<Bytes> = (0..60u8).map(|i| Bytes::from(vec![i; 100])).collect();
        let mut downstream = ChunkStream {
            to_read: sent.iter().cloned().collect(),
            ..Default::default()
        };
        let mut upstream = ChunkStream {
            takes_chunks: true,
            ..Default::default()
        };
        splice_one_way(&mut downstream, &mut upstream).await;
        assert_eq!(joined(&upstream.written), joined(&sent));
        assert_eq!(upstream.written.len(), 60, "one chunk per read");
        let new_buffers = upstream
            .written
            .windows(2)
            .filter(|w| w[1].as_ptr() as usize != w[0].as_ptr() as usize + w[0].len())
            .count();
        // 6 000 bytes read 100 at a time into 1 KiB buffers, a new one once
        // less than half is left: about one per 500 bytes.
        assert!(
            new_buffers <= 6000 / (MIN_BUFFER / 2),
            "{new_buffers} buffers"
        );
        assert!(
            new_buffers >= 6,
            "{new_buffers} buffers: a buffer is not kept past half"
        );

        // Bulk: full reads grow the size, each read into a fresh buffer.
        let big = Bytes::from(vec![9u8; 512 * 1024]);
        let mut downstream = ChunkStream {
            to_read: [big.clone()].into(),
            ..Default::default()
        };
        let mut upstream = ChunkStream {
            takes_chunks: true,
            ..Default::default()
        };
        splice_one_way(&mut downstream, &mut upstream).await;
        assert_eq!(joined(&upstream.written), big);
        let sizes: Vec<usize> = upstream.written.iter().map(Bytes::len).collect();
        assert_eq!(&sizes[..4], &[1024, 2048, 4096, 8192]);
        assert!(sizes.iter().all(|&n| n <= MAX_BUFFER));
        assert!(sizes.contains(&MAX_BUFFER));
    }

    /// A writer that starts taking chunks later (dialled at its first
    /// write) gets them from then on.
    #[tokio::test]
    async fn a_writer_that_starts_taking_chunks_gets_them() {
        let sent: Vec<Bytes> = (0..6u8).map(|i| Bytes::from(vec![i; 100])).collect();
        let mut downstream = ChunkStream {
            to_read: sent.iter().cloned().collect(),
            ..Default::default()
        };
        let mut upstream = ChunkStream {
            takes_once_written: true,
            ..Default::default()
        };
        splice_one_way(&mut downstream, &mut upstream).await;
        assert_eq!(joined(&upstream.written), joined(&sent));
        // The first read was copied; the next five were split off one room.
        let w = &upstream.written;
        assert_eq!(w.len(), 6);
        assert_ne!(w[0].as_ptr(), sent[0].as_ptr());
        assert!(
            w[1..]
                .windows(2)
                .all(|p| p[1].as_ptr() as usize == p[0].as_ptr() as usize + p[0].len()),
            "one room, given away"
        );
    }

    /// Small chunks that are ready together are written together: one
    /// vectored write for a writer that copies, each as it is for one that
    /// keeps them.
    #[tokio::test]
    async fn ready_chunks_are_gathered_into_one_write() {
        let sent: Vec<Bytes> = (0..10u8).map(|i| Bytes::from(vec![i; 100])).collect();
        for takes_chunks in [false, true] {
            let mut downstream = ChunkStream {
                to_read: sent.iter().cloned().collect(),
                reads_chunks: true,
                ..Default::default()
            };
            let mut upstream = ChunkStream {
                vectored: true,
                takes_chunks,
                ..Default::default()
            };
            splice_one_way(&mut downstream, &mut upstream).await;
            assert_eq!(joined(&upstream.written), joined(&sent));
            if takes_chunks {
                assert_eq!(upstream.written.len(), 10);
                for (given, got) in sent.iter().zip(&upstream.written) {
                    assert_eq!(got.as_ptr(), given.as_ptr(), "each chunk as it is");
                }
            } else {
                assert_eq!(upstream.written.len(), 1, "one vectored write");
            }
        }
    }

    /// A writer that takes a little at a time and is often not ready gets
    /// every gathered byte once, in order, whichever way it takes them.
    #[tokio::test]
    async fn gathered_chunks_survive_partial_and_stalled_writes() {
        let sent: Vec<Bytes> = (0..10u8).map(|i| Bytes::from(vec![i; 100])).collect();
        for (vectored, takes_chunks) in [(true, false), (false, false), (false, true)] {
            let mut downstream = ChunkStream {
                to_read: sent.iter().cloned().collect(),
                reads_chunks: true,
                ..Default::default()
            };
            let mut upstream = ChunkStream {
                vectored,
                takes_chunks,
                write_limit: 37,
                stalls: true,
                ..Default::default()
            };
            let copied = splice_one_way(&mut downstream, &mut upstream).await;
            assert_eq!(copied.to_upstream, 1000);
            assert_eq!(
                joined(&upstream.written),
                joined(&sent),
                "{vectored} {takes_chunks}"
            );
            assert!(upstream.written.iter().all(|w| w.len() <= 37));
        }
    }

    /// Reads that alternate between the reader's own chunks and `poll_read`
    /// keep every byte in order, whatever the writer takes.
    #[tokio::test]
    async fn chunks_and_reads_alternate_in_order() {
        let sent: Vec<Bytes> = (0..9u8).map(|i| Bytes::from(vec![b'a' + i; 700])).collect();
        for takes_chunks in [false, true] {
            let mut downstream = ChunkStream {
                to_read: sent.iter().cloned().collect(),
                reads_chunks: true,
                every_other_copied: true,
                ..Default::default()
            };
            let mut upstream = ChunkStream {
                takes_chunks,
                ..Default::default()
            };
            let copied = splice_one_way(&mut downstream, &mut upstream).await;
            assert_eq!(copied.to_upstream, 6300);
            assert_eq!(joined(&upstream.written), joined(&sent));
        }
    }

    /// A reader's own chunks do not grow the direction's buffer, nor charge
    /// the budget for it: even chunks the size of each doubling (a bulk
    /// sender's DATA frames are cut by its reads: 1, 2, 4 … 64 KiB).
    #[tokio::test]
    async fn a_readers_own_chunks_charge_no_buffer() {
        let budget = crate::sidecar::memory::MemoryBudget::new(64 << 20);
        let meter = budget.meter("spiffe://t/peer");
        let sizes = [1024, 2048, 4096, 8192, 16384, 32768, MAX_BUFFER];
        let mut downstream = ChunkStream {
            to_read: sizes.iter().map(|&n| Bytes::from(vec![1u8; n])).collect(),
            reads_chunks: true,
            one_chunk_per_read: true,
            then_pending: true,
            ..Default::default()
        };
        let mut upstream = ChunkStream::default();
        let splice = splice(
            &mut downstream,
            &mut upstream,
            b"",
            Duration::from_secs(5),
            Some(&meter),
            std::future::pending(),
        );
        let mut splice = Box::pin(splice);
        let moved = tokio::time::timeout(Duration::from_millis(200), &mut splice).await;
        assert!(moved.is_err(), "still running: the reader never ends");
        assert_eq!(budget.used(), 0, "while the splice runs");
        drop(splice);
        let written: usize = upstream.written.iter().map(Bytes::len).sum();
        assert_eq!(
            written,
            sizes.iter().sum::<usize>(),
            "every chunk went through"
        );
    }

    /// A writer that is ready but takes nothing ends the splice with an
    /// error, whichever way it is written to; it never spins. (On a thread
    /// of its own: a spin inside one poll would never let a timer fire.)
    #[test]
    fn a_writer_that_takes_nothing_is_an_error() {
        for (vectored, takes_chunks, reads_chunks) in [
            (true, false, true),
            (false, true, true),
            (false, false, false),
            (false, true, false),
        ] {
            let (done, ended) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let mut downstream = ChunkStream {
                    to_read: [Bytes::from_static(b"data")].into(),
                    reads_chunks,
                    then_pending: true,
                    ..Default::default()
                };
                let mut upstream = ChunkStream {
                    vectored,
                    takes_chunks,
                    takes_nothing: true,
                    then_pending: true,
                    ..Default::default()
                };
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let (end, _) = runtime.block_on(splice(
                    &mut downstream,
                    &mut upstream,
                    b"",
                    Duration::from_secs(5),
                    None,
                    std::future::pending(),
                ));
                let _ = done.send(end);
            });
            let end = ended
                .recv_timeout(Duration::from_secs(10))
                .expect("the splice spun or hung");
            assert_eq!(
                end,
                SpliceEnd::Error,
                "{vectored} {takes_chunks} {reads_chunks}"
            );
        }
    }

    /// A reader that hands out chunks only sometimes (a prefix first, a
    /// watched first line) and a writer that copies: every byte, in order.
    #[tokio::test]
    async fn chunks_and_copies_mix_in_order() {
        let mut inner = ChunkStream {
            to_read: [Bytes::from_static(b" world"), Bytes::from_static(b"!")].into(),
            reads_chunks: true,
            ..Default::default()
        };
        let mut downstream =
            crate::sidecar::prefixed::Prefixed::new(Bytes::from_static(b"hello"), &mut inner);
        let mut upstream = ChunkStream::default();
        let (end, copied) = splice(
            &mut downstream,
            &mut upstream,
            b">",
            Duration::from_secs(5),
            None,
            std::future::pending(),
        )
        .await;
        assert_eq!(end, SpliceEnd::Done);
        assert_eq!(copied.to_upstream, 13);
        assert_eq!(joined(&upstream.written), b">hello world!");
    }

    #[tokio::test]
    async fn copies_both_ways_and_ends_on_eof() {
        let (client, proxy_down) = duplex(1024);
        let (proxy_up, server) = duplex(1024);
        let task = tokio::spawn(splice(
            proxy_down,
            proxy_up,
            b"hello ",
            Duration::from_secs(5),
            None,
            std::future::pending(),
        ));
        let (mut client_r, mut client_w) = tokio::io::split(client);
        let (mut server_r, mut server_w) = tokio::io::split(server);
        client_w.write_all(b"world").await.unwrap();
        client_w.shutdown().await.unwrap();
        let mut got = Vec::new();
        server_r.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello world");
        server_w.write_all(b"reply").await.unwrap();
        server_w.shutdown().await.unwrap();
        let mut reply = Vec::new();
        client_r.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, b"reply");
        let (end, copied) = task.await.unwrap();
        assert_eq!(end, SpliceEnd::Done);
        assert_eq!(
            copied,
            Copied {
                to_upstream: 11,
                to_downstream: 5
            }
        );
    }

    /// A burst grows the buffer (and charges the budget); a quiet spell
    /// gives both back; bytes after it still go through.
    #[tokio::test(start_paused = true)]
    async fn a_grown_buffer_is_given_back_once_its_direction_is_quiet() {
        let budget = crate::sidecar::memory::MemoryBudget::new(64 << 20);
        let meter = budget.meter("spiffe://t/peer");
        let (client, proxy_down) = duplex(1 << 20);
        let (proxy_up, server) = duplex(1 << 20);
        let splice = tokio::spawn(async move {
            splice(
                proxy_down,
                proxy_up,
                b"",
                Duration::from_secs(3600),
                Some(&meter),
                std::future::pending(),
            )
            .await
        });
        let (_client_r, mut client_w) = tokio::io::split(client);
        let (mut server_r, _server_w) = tokio::io::split(server);
        let burst = vec![7u8; 512 * 1024];
        let mut got = vec![0u8; burst.len()];
        client_w.write_all(&burst).await.unwrap();
        server_r.read_exact(&mut got).await.unwrap();
        assert_eq!(got, burst);
        assert!(budget.used() > 0, "the burst grew the buffer");
        tokio::time::sleep(QUIET + Duration::from_millis(100)).await;
        assert_eq!(budget.used(), 0, "given back after {QUIET:?} of quiet");
        client_w.write_all(b"after").await.unwrap();
        let mut after = [0u8; 5];
        server_r.read_exact(&mut after).await.unwrap();
        assert_eq!(&after, b"after");
        splice.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_time_out() {
        let (_client, proxy_down) = duplex(64);
        let (proxy_up, _server) = duplex(64);
        let (end, _) = splice(
            proxy_down,
            proxy_up,
            b"",
            Duration::from_secs(30),
            None,
            std::future::pending(),
        )
        .await;
        assert_eq!(end, SpliceEnd::IdleTimeout);
    }

    #[tokio::test]
    async fn revocation_ends_the_splice() {
        let (_client, proxy_down) = duplex(64);
        let (proxy_up, _server) = duplex(64);
        let (end, _) = splice(
            proxy_down,
            proxy_up,
            b"",
            Duration::from_secs(30),
            None,
            tokio::time::sleep(Duration::from_millis(10)),
        )
        .await;
        assert_eq!(end, SpliceEnd::Revoked);
    }
}
