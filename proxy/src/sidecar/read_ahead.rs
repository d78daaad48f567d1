//! A socket that can read ahead into a buffer, switched on per connection.
//!
//! rustls asks its transport for at most 4 KiB per read, so a 16 KiB TLS
//! record costs four `recvfrom` calls; on a busy pooled tunnel those reads
//! were a third of the sidecar's CPU. With read-ahead on, one `recvfrom`
//! fills [`READ_AHEAD`] bytes and rustls's small reads are served from
//! memory. It is off until [`ReadAhead::enable`] (after the handshake, for
//! pooled `appid-mux/1` connections only): a buffer this size on every
//! one-app-connection TLS session would cost more memory than it saves CPU.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The read-ahead buffer of an enabled connection.
pub const READ_AHEAD: usize = 64 * 1024;

/// `inner` with optional read-ahead; writes pass straight through.
#[derive(Debug)]
pub struct ReadAhead<S> {
    inner: S,
    /// Empty while read-ahead is off.
    buffer: Box<[u8]>,
    /// `buffer[start..end]` is read and not yet handed out.
    start: usize,
    end: usize,
}

impl<S> ReadAhead<S> {
    pub fn new(inner: S) -> Self {
        ReadAhead {
            inner,
            buffer: Box::default(),
            start: 0,
            end: 0,
        }
    }

    /// Turns read-ahead on.
    pub fn enable(&mut self) {
        if self.buffer.is_empty() {
            self.buffer = vec![0u8; READ_AHEAD].into_boxed_slice();
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: super::splice::Abort> super::splice::Abort for ReadAhead<S> {
    fn abort(&mut self) {
        self.inner.abort();
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.start == this.end {
            if this.buffer.is_empty() || out.remaining() >= this.buffer.len() {
                return Pin::new(&mut this.inner).poll_read(cx, out);
            }
            let mut fill = ReadBuf::new(&mut this.buffer);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut fill))?;
            this.start = 0;
            this.end = fill.filled().len();
            if this.end == 0 {
                return Poll::Ready(Ok(())); // EOF
            }
        }
        let n = (this.end - this.start).min(out.remaining());
        out.put_slice(&this.buffer[this.start..this.start + n]);
        this.start += n;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn small_reads_see_the_same_bytes_with_and_without_read_ahead() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
        for enabled in [false, true] {
            let (mut writer, reader) = tokio::io::duplex(8 * 1024);
            let mut reader = ReadAhead::new(reader);
            if enabled {
                reader.enable();
            }
            let sent = data.clone();
            tokio::spawn(async move {
                writer.write_all(&sent).await.unwrap();
                writer.shutdown().await.unwrap();
            });
            let mut got = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let n = reader.read(&mut chunk).await.unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&chunk[..n]);
            }
            assert!(got == data, "read-ahead {enabled}: bytes differ");
        }
    }
}
