//! Opaque TCP: copy bytes both ways until either side is done, the
//! connection idles out, or it is revoked.
//!
//! Design bias: *a connection is only as alive as its authorization*. Besides
//! EOF and errors, a splice ends when it has been idle (no byte either way)
//! for the idle timeout, or when the caller's `revoked` future resolves —
//! which the sidecar uses to close a live connection that a new policy no
//! longer allows. The outcome says which, as an enum, for the audit log.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

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
    /// A read or write failed.
    Error,
}

/// Bytes copied, per direction.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Copied {
    /// From the downstream (the side that connected to us) to upstream.
    pub to_upstream: u64,
    /// From upstream back to downstream.
    pub to_downstream: u64,
}

/// Start small so an idle connection costs little; grow while data flows
/// (and while the byte budget, when given, has room: see
/// [`super::memory`]).
const MIN_BUFFER: usize = 4 * 1024;
const MAX_BUFFER: usize = 64 * 1024;

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

    let mut up_done = None;
    let mut down_done = None;
    let end = loop {
        tokio::select! {
            result = &mut up, if up_done.is_none() => {
                copied.to_upstream += result.bytes;
                up_done = Some(result.ok);
                if !result.ok { break SpliceEnd::Error; }
                if down_done.is_some() { break SpliceEnd::Done; }
            }
            result = &mut down, if down_done.is_none() => {
                copied.to_downstream += result.bytes;
                down_done = Some(result.ok);
                if !result.ok { break SpliceEnd::Error; }
                if up_done.is_some() { break SpliceEnd::Done; }
            }
            () = &mut idle => break SpliceEnd::IdleTimeout,
            () = &mut revoked => break SpliceEnd::Revoked,
        }
    };
    (end, copied)
}

struct OneWay {
    bytes: u64,
    ok: bool,
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
    let mut buffer = vec![0u8; MIN_BUFFER];
    // What the buffer's growth beyond MIN_BUFFER holds of the budget.
    let mut grown = Vec::new();
    let mut bytes = 0u64;
    loop {
        let n = match reader.read(&mut buffer).await {
            Ok(0) => {
                let ok = writer.shutdown().await.is_ok();
                return OneWay { bytes, ok };
            }
            Ok(n) => n,
            Err(_) => return OneWay { bytes, ok: false },
        };
        if writer.write_all(&buffer[..n]).await.is_err() {
            return OneWay { bytes, ok: false };
        }
        bytes += n as u64;
        last_activity.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
        if n == buffer.len() && buffer.len() < MAX_BUFFER {
            let charge = match memory {
                None => None,
                Some(memory) => match memory.try_grow(buffer.len()) {
                    Some(charge) => Some(charge),
                    None => continue, // no room: stay this size
                },
            };
            grown.extend(charge);
            buffer.resize(buffer.len() * 2, 0);
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
