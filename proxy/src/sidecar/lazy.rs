//! An upstream connection that is dialled when first used.
//!
//! Design bias: *decide before you dial*. An HTTP connection's upstream (the
//! local app inbound) is not connected when the client connects, but when
//! the first allowed request is written to it: a caller whose requests are
//! all denied — or who sends none — never costs the app a connection.
//! [`LazyUpstream`] is an ordinary `AsyncRead + AsyncWrite`, so the HTTP
//! codecs need not know; a failed dial is an I/O error at first use (the
//! codec answers 502).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A connection that is dialled at its first read, write, flush or shutdown.
pub struct LazyUpstream<U> {
    state: State<U>,
}

enum State<U> {
    Dialling(Pin<Box<dyn Future<Output = Option<U>> + Send>>),
    Ready(U),
    Failed,
}

impl<U> LazyUpstream<U> {
    /// Dials with `dial` when first used.
    pub fn new(dial: impl Future<Output = Option<U>> + Send + 'static) -> Self {
        LazyUpstream {
            state: State::Dialling(Box::pin(dial)),
        }
    }

    /// Already connected.
    pub fn ready(upstream: U) -> Self {
        LazyUpstream {
            state: State::Ready(upstream),
        }
    }

    /// Whether it was dialled.
    #[cfg(test)]
    fn is_connected(&self) -> bool {
        matches!(self.state, State::Ready(_))
    }

    /// The connection, dialling it first if needed.
    fn poll_connected(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<&mut U>> {
        if let State::Dialling(dial) = &mut self.state {
            self.state = match ready!(dial.as_mut().poll(cx)) {
                Some(upstream) => State::Ready(upstream),
                None => State::Failed,
            };
        }
        match &mut self.state {
            State::Ready(upstream) => Poll::Ready(Ok(upstream)),
            _ => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                "upstream could not be reached",
            ))),
        }
    }
}

/// A connection never dialled has nothing to reset.
impl<U: super::splice::Abort> super::splice::Abort for LazyUpstream<U> {
    fn abort(&mut self) {
        if let State::Ready(upstream) = &mut self.state {
            upstream.abort();
        }
    }
}

/// Until dialled, reads and writes go the ordinary way (which dials).
impl<U: super::splice::Chunks> super::splice::Chunks for LazyUpstream<U> {
    fn poll_read_chunk(&mut self, cx: &mut Context<'_>) -> Option<Poll<io::Result<bytes::Bytes>>> {
        match &mut self.state {
            State::Ready(upstream) => upstream.poll_read_chunk(cx),
            _ => None,
        }
    }

    fn takes_chunks(&self) -> bool {
        match &self.state {
            State::Ready(upstream) => upstream.takes_chunks(),
            _ => false,
        }
    }

    fn poll_write_chunk(
        &mut self,
        cx: &mut Context<'_>,
        chunk: &mut bytes::Bytes,
    ) -> Poll<io::Result<()>> {
        let upstream = ready!(self.poll_connected(cx))?;
        upstream.poll_write_chunk(cx, chunk)
    }
}

impl<U: AsyncRead + Unpin> AsyncRead for LazyUpstream<U> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let upstream = ready!(self.poll_connected(cx))?;
        Pin::new(upstream).poll_read(cx, buf)
    }
}

impl<U: AsyncWrite + Unpin> AsyncWrite for LazyUpstream<U> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let upstream = ready!(self.poll_connected(cx))?;
        Pin::new(upstream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let upstream = ready!(self.poll_connected(cx))?;
        Pin::new(upstream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        match &self.state {
            State::Ready(upstream) => upstream.is_write_vectored(),
            _ => false,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.state {
            // Nothing was written: nothing to flush, and no reason to dial.
            State::Dialling(_) => Poll::Ready(Ok(())),
            _ => {
                let upstream = ready!(self.poll_connected(cx))?;
                Pin::new(upstream).poll_flush(cx)
            }
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.state {
            // Never dialled: closing it is nothing.
            State::Dialling(_) => Poll::Ready(Ok(())),
            _ => {
                let upstream = ready!(self.poll_connected(cx))?;
                Pin::new(upstream).poll_shutdown(cx)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn dials_at_first_write_only() {
        let dialled = Arc::new(AtomicBool::new(false));
        let (near, mut far) = tokio::io::duplex(64);
        let flag = dialled.clone();
        let mut lazy = LazyUpstream::new(async move {
            flag.store(true, Ordering::SeqCst);
            Some(near)
        });
        lazy.flush().await.unwrap();
        assert!(!dialled.load(Ordering::SeqCst), "a flush does not dial");
        lazy.write_all(b"hi").await.unwrap();
        assert!(dialled.load(Ordering::SeqCst) && lazy.is_connected());
        let mut got = [0u8; 2];
        far.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hi");
    }

    #[tokio::test]
    async fn a_failed_dial_is_an_error_at_first_use() {
        let mut lazy = LazyUpstream::<tokio::io::DuplexStream>::new(async { None });
        let error = lazy.write_all(b"x").await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::ConnectionRefused);
        assert!(lazy.shutdown().await.is_err());
    }
}
