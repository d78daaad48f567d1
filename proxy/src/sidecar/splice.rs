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

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::copy_buf::ReadBuffer;
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
/// The largest chunk: 64 KiB less the 9 bytes of an HTTP/2 frame head, so
/// that a chunk written into a tunnel stream goes out as one DATA frame
/// that fills rustls's 64 KiB write exactly. At 64 KiB the last 9 bytes
/// of every frame went out as a TLS record and a `writev` of their own
/// (docs/performance.md: 100 → 88 syscalls per MiB of bulk in a tunnel).
const MAX_BUFFER: usize = 64 * 1024 - 9;

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
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (mut down_read, mut down_write) = tokio::io::split(downstream);
    let (mut up_read, mut up_write) = tokio::io::split(upstream);
    let start = Instant::now();
    // Milliseconds since `start` of the last byte moved, either way.
    let last_activity = Arc::new(AtomicU64::new(0));

    if !initial.is_empty() && up_write.write_all(initial).await.is_err() {
        return (SpliceEnd::Error, Copied::default());
    }
    let mut copied = Copied {
        to_upstream: initial.len() as u64,
        to_downstream: 0,
    };

    let up = copy_one_way(&mut down_read, &mut up_write, &last_activity, start, memory);
    let down = copy_one_way(&mut up_read, &mut down_write, &last_activity, start, memory);
    let idle = watch_idle(&last_activity, start, idle_timeout);
    tokio::pin!(up, down, idle, revoked);

    let mut up_done = false;
    let mut down_done = false;
    let end = loop {
        tokio::select! {
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
            () = &mut revoked => break SpliceEnd::Revoked,
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

/// Copies until EOF, then half-closes the writer (TCP FIN) so the other side
/// sees the end of this direction while the other keeps flowing.
async fn copy_one_way<R, W>(
    reader: &mut R,
    writer: &mut W,
    last_activity: &AtomicU64,
    start: Instant,
    memory: Option<&Meter>,
) -> OneWay
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // Its bytes may go into TLS: see `copy_buf` for where they start.
    let mut buffer = ReadBuffer::new(MIN_BUFFER);
    // What the buffer's growth beyond MIN_BUFFER holds of the budget.
    let mut grown = Vec::new();
    let mut bytes = 0u64;
    // Polled only while the buffer is grown: one timer for the direction's
    // life, moved on once per QUIET (not a timer per read).
    let quiet = tokio::time::sleep(QUIET);
    tokio::pin!(quiet);
    let mut last_read = Instant::now();
    loop {
        let read = if buffer.len() == MIN_BUFFER {
            reader.read(buffer.bytes()).await
        } else {
            tokio::select! {
                biased;
                // Cancel-safe: when the timer wins, nothing was read.
                read = reader.read(buffer.bytes()) => read,
                () = &mut quiet => {
                    let due = last_read + QUIET;
                    if Instant::now() < due {
                        quiet.as_mut().reset(due); // bytes came meanwhile
                    } else {
                        buffer = ReadBuffer::new(MIN_BUFFER);
                        grown = Vec::new(); // the budget's bytes given back
                    }
                    continue;
                }
            }
        };
        let n = match read {
            Ok(0) => {
                let outcome = match writer.shutdown().await {
                    Ok(()) => Outcome::Eof,
                    Err(_) => Outcome::Failed,
                };
                return OneWay { bytes, outcome };
            }
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
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
        if writer.write_all(&buffer.bytes()[..n]).await.is_err() {
            return OneWay {
                bytes,
                outcome: Outcome::Failed,
            };
        }
        bytes += n as u64;
        last_read = Instant::now();
        let since_start = last_read.saturating_duration_since(start);
        last_activity.store(since_start.as_millis() as u64, Ordering::Relaxed);
        if n == buffer.len() && buffer.len() < MAX_BUFFER {
            let len = (buffer.len() * 2).min(MAX_BUFFER);
            let charge = match memory {
                None => None,
                Some(memory) => match memory.try_grow(len - buffer.len()) {
                    Some(charge) => Some(charge),
                    None => continue, // no room: stay this size
                },
            };
            grown.extend(charge);
            buffer.resize(len);
        }
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
    use tokio::io::duplex;

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
