//! A connection whose bytes are counted into `appid_bytes_total` as they
//! move, whatever carries them (opaque TCP, HTTP/1.1, HTTP/2, gRPC).
//!
//! Design bias: *count where every protocol passes*. The app-side end of
//! every proxied connection is wrapped once, in [`super::dispatch`], so
//! the L4 splice and the L7 proxies need no counting of their own and a
//! long-lived connection shows in the metric while it lives, not when it
//! ends. What is counted is what the calling side (the local app outbound,
//! the peer inbound) sent and received in plaintext, request and response
//! heads included for HTTP.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::splice::{Abort, Chunks};

/// `inner`, counting every byte read from or written to it into `counter`.
pub struct Counted<S> {
    inner: S,
    counter: Counter,
}

impl<S> Counted<S> {
    pub fn new(inner: S, counter: Counter) -> Self {
        Counted { inner, counter }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        self.counter.inc_by((buf.filled().len() - before) as u64);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
        self.counter.inc_by(n as u64);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.inner).poll_write_vectored(cx, bufs))?;
        self.counter.inc_by(n as u64);
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S: Abort> Abort for Counted<S> {
    fn abort(&mut self) {
        self.inner.abort();
    }
}

impl<S: Chunks> Chunks for Counted<S> {
    fn poll_read_chunk(&mut self, cx: &mut Context<'_>) -> Option<Poll<io::Result<Bytes>>> {
        let read = self.inner.poll_read_chunk(cx)?;
        if let Poll::Ready(Ok(chunk)) = &read {
            self.counter.inc_by(chunk.len() as u64);
        }
        Some(read)
    }

    fn takes_chunks(&self) -> bool {
        self.inner.takes_chunks()
    }

    fn poll_write_chunk(
        &mut self,
        cx: &mut Context<'_>,
        chunk: &mut Bytes,
    ) -> Poll<io::Result<()>> {
        let before = chunk.len();
        ready!(self.inner.poll_write_chunk(cx, chunk))?;
        self.counter.inc_by((before - chunk.len()) as u64);
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    #[tokio::test]
    async fn counts_both_ways() {
        let (near, mut far) = duplex(1024);
        let counter = Counter::default();
        let mut counted = Counted::new(near, counter.clone());
        counted.write_all(b"hello").await.unwrap();
        far.write_all(b"abc").await.unwrap();
        let mut buf = [0u8; 8];
        let n = counted.read(&mut buf).await.unwrap();
        assert_eq!(n, 3);
        assert_eq!(counter.get(), 8);
    }

    /// Chunks the splice hands through are counted like reads and writes.
    /// (In the sidecar `Counted` is inside `Prefixed`; here it wraps one,
    /// as a stream that hands out a chunk.)
    #[tokio::test]
    async fn counts_chunks_both_ways() {
        let (near, mut far) = duplex(1024);
        let counter = Counter::default();
        let prefixed = crate::sidecar::prefixed::Prefixed::new(Bytes::from_static(b"abcd"), near);
        let mut counted = Counted::new(prefixed, counter.clone());
        let read = std::future::poll_fn(|cx| counted.poll_read_chunk(cx).unwrap()).await;
        assert_eq!(&read.unwrap()[..], b"abcd");
        let mut chunk = Bytes::from_static(b"hello");
        while !chunk.is_empty() {
            std::future::poll_fn(|cx| counted.poll_write_chunk(cx, &mut chunk))
                .await
                .unwrap();
        }
        let mut buf = [0u8; 5];
        far.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
        assert_eq!(counter.get(), 9);
    }
}
