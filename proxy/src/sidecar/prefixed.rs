//! A stream whose first bytes were already read, replayed before the rest.
//!
//! Plaintext connections are classified with `peek` and need nothing of the
//! sort; inside TLS there is no peek, so protocol detection reads the first
//! bytes, and this wrapper hands them to whoever reads next (hyper, or the
//! TCP splice) as if they had never been taken.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

use crate::detect::{self, Classification};

/// `inner`, with `prefix` to be read first.
#[derive(Debug)]
pub struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Bytes, inner: S) -> Self {
        Prefixed { prefix, inner }
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }
}

impl<S: super::splice::Abort> super::splice::Abort for Prefixed<S> {
    fn abort(&mut self) {
        self.inner.abort();
    }
}

/// The prefix is a chunk already.
impl<S: super::splice::Chunks> super::splice::Chunks for Prefixed<S> {
    fn poll_read_chunk(&mut self, cx: &mut Context<'_>) -> Option<Poll<io::Result<Bytes>>> {
        if !self.prefix.is_empty() {
            return Some(Poll::Ready(Ok(std::mem::take(&mut self.prefix))));
        }
        self.inner.poll_read_chunk(cx)
    }

    super::forward_chunk_writes!(inner);
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            if self.prefix.is_empty() {
                // Release the detection buffer behind it, not just skip it.
                self.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

// Writes go to the stream unchanged.
super::forward_async_write!(Prefixed, inner);

/// Reads from `stream` until the first bytes are classified (or `timeout`
/// passes, or the peer closes), returning the class and the bytes read.
/// A silent peer yields [`Classification::Opaque`] with no bytes: protocols
/// where the server speaks first are opaque TCP. A peer that sent the start
/// of something recognisable and then stalled is an error (`TimedOut`), as
/// on a plaintext connection: it is dropped at the detection timeout. A peer
/// that closes without sending a byte is `UnexpectedEof`: nothing to decide.
pub async fn read_and_classify<S: AsyncRead + Unpin>(
    stream: &mut S,
    timeout: Duration,
) -> io::Result<(Classification, Bytes)> {
    let deadline = tokio::time::Instant::now() + timeout;
    let buffer = BytesMut::with_capacity(1024);
    match classify_more(stream, buffer, deadline).await {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            Ok((Classification::Opaque, Bytes::new()))
        }
        other => other,
    }
}

/// Reads on from `buffer` (bytes already read from `stream`) until they are
/// classified. Before `deadline` passes: with nothing read yet, a
/// `WouldBlock` error (silence); with bytes read, `TimedOut` (a stall).
pub async fn classify_more<S: AsyncRead + Unpin>(
    stream: &mut S,
    mut buffer: BytesMut,
    deadline: tokio::time::Instant,
) -> io::Result<(Classification, Bytes)> {
    loop {
        if !buffer.is_empty() {
            match detect::classify(&buffer) {
                Classification::NeedMore if buffer.len() < detect::MAX_DETECT_BYTES => {}
                Classification::NeedMore => {
                    return Ok((detect::classify_final(&buffer), buffer.freeze()));
                }
                class => return Ok((class, buffer.freeze())),
            }
        }
        let read = tokio::time::timeout_at(deadline, stream.read_buf(&mut buffer)).await;
        match read {
            Err(_) if buffer.is_empty() => return Err(io::Error::from(io::ErrorKind::WouldBlock)),
            Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "stalled during protocol detection",
                ));
            }
            Ok(Err(e)) => return Err(e),
            // Closed before sending anything: no traffic to authorize.
            Ok(Ok(0)) if buffer.is_empty() => {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
            }
            Ok(Ok(0)) => return Ok((detect::classify_final(&buffer), buffer.freeze())),
            Ok(Ok(_)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn replays_the_prefix_then_reads_on() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b" world").await.unwrap();
        drop(client);
        let mut stream = Prefixed::new(Bytes::from_static(b"hello"), server);
        let mut all = Vec::new();
        stream.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"hello world");
    }

    #[tokio::test]
    async fn classifies_http_inside_a_stream() {
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let (class, bytes) = read_and_classify(&mut server, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(class, Classification::Http1);
        assert_eq!(&bytes[..], b"GET / HTTP/1.1\r\n");
    }

    #[tokio::test]
    async fn a_stalled_partial_prefix_is_an_error_and_silence_is_opaque() {
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"GE").await.unwrap();
        let error = read_and_classify(&mut server, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);

        let (_silent, mut server) = tokio::io::duplex(64);
        let (class, bytes) = read_and_classify(&mut server, Duration::from_millis(50))
            .await
            .unwrap();
        assert_eq!(class, Classification::Opaque);
        assert!(bytes.is_empty());

        let (closed, mut server) = tokio::io::duplex(64);
        drop(closed);
        let error = read_and_classify(&mut server, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    }
}
