//! Test doubles for I/O (tests only): a pipe end that records what is
//! written through it, the HTTP/2 frames in what was written, and a
//! connected pair of loopback sockets.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Records what is written through it, one entry per write.
pub struct Recorder<T> {
    inner: T,
    writes: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl<T> Recorder<T> {
    pub fn new(inner: T, writes: Arc<Mutex<Vec<Vec<u8>>>>) -> Self {
        Recorder { inner, writes }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Recorder<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Recorder<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
        self.writes.lock().unwrap().push(buf[..n].to_vec());
        Poll::Ready(Ok(n))
    }

    /// One write for all the slices, as a socket's `writev` is.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let joined: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
        self.poll_write(cx, &joined)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// (index of the write it started in, type, flags, stream id).
pub type Written = (usize, u8, u8, u32);

/// Every frame written (after a client's connection preface).
pub fn frames_written(writes: &[Vec<u8>]) -> Vec<Written> {
    let mut starts = Vec::new(); // (offset, write index)
    let mut all = Vec::new();
    for (i, w) in writes.iter().enumerate() {
        starts.push((all.len(), i));
        all.extend_from_slice(w);
    }
    let write_at = |offset: usize| starts.iter().rev().find(|s| s.0 <= offset).unwrap().1;
    let mut frames = Vec::new();
    // A client's connection preface comes before its frames.
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut at = if all.starts_with(PREFACE) {
        PREFACE.len()
    } else {
        0
    };
    while all.len() >= at + 9 {
        let h = &all[at..at + 9];
        let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
        let stream = u32::from_be_bytes(h[5..9].try_into().unwrap()) & 0x7fff_ffff;
        frames.push((write_at(at), h[3], h[4], stream));
        at += 9 + len;
    }
    frames
}

/// A connected loopback TCP pair: (client, server).
pub async fn loopback_pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server, _) = listener.accept().await.unwrap();
    (client, server)
}
