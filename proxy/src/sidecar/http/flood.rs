//! A limit on HTTP/2 control frames per connection (flood protection).
//!
//! Design bias: *count frames, not guesses*. An HTTP/2 peer can make the
//! other side work without sending any request: SETTINGS, PING, PRIORITY,
//! RST_STREAM and WINDOW_UPDATE frames, and empty DATA frames, each cost a
//! parse, often an answer, and never a decision (CVE-2019-9512/9515/9518,
//! CVE-2023-44487). The h2 crate answers them all, so a flood held a core
//! per attacking connection. [`FrameBudget`] reads the frame headers as the
//! bytes pass (nothing is buffered or re-framed) and ends the connection
//! when one second holds more than the budget:
//! - [`CONTROL_PER_SECOND`] SETTINGS, PRIORITY and empty non-final DATA
//!   frames together (a well-behaved peer sends a handful);
//! - PING frames, [`CONTROL_PER_SECOND`] plus one per DATA frame with a
//!   payload written to the peer in that second: an HTTP/2 library that
//!   measures the bandwidth-delay product (gRPC-Go's, hyper's adaptive
//!   window) pings after DATA it receives, once per round trip, which on a
//!   busy loopback connection is thousands of times a second;
//! - RST_STREAM frames: one per HEADERS frame either side sent in the
//!   connection's life (a pooled tunnel may end every stream with one, however
//!   late: a stream lingers up to seconds before its reset), and beyond those
//!   [`CONTROL_PER_SECOND`]. Opening a stream to reset it is judged where
//!   streams are opened, not here: on a tunnel by h2's limits (a stream
//!   reset before its first byte is withdrawn: nothing reaches the app), in
//!   the relay by its rapid reset rule (`relay::rapid_reset`: most
//!   requests cancelled as soon as sent end the connection);
//! - WINDOW_UPDATE frames, [`CONTROL_PER_SECOND`] plus one per
//!   [`WINDOW_UPDATE_BYTES`] written to the peer in that second (a receiver
//!   acknowledges what it was sent; Envoy bounds them the same way).
//!
//! Tripping sets a flag the owner reads to count and log the closure.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Control frames (other than WINDOW_UPDATE) allowed per second.
pub const CONTROL_PER_SECOND: u32 = 1000;
/// Each this many bytes sent to the peer allow it one more WINDOW_UPDATE.
pub const WINDOW_UPDATE_BYTES: u64 = 4096;

const PREFACE_LEN: usize = 24;
const FRAME_HEADER: usize = 9;
const WINDOW: Duration = Duration::from_secs(1);

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const WINDOW_UPDATE: u8 = 0x8;
const END_STREAM: u8 = 0x1;

/// Where a walk through one direction's frames is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Position {
    /// In the client preface: this many bytes left.
    Preface(usize),
    /// In a frame header: this many bytes of it seen.
    Header(usize),
    /// In a frame's payload: this many bytes left.
    Payload(u32),
}

/// Follows one direction's frames as its bytes pass, whatever the chunks
/// (a frame header may straddle two reads).
#[derive(Debug)]
struct FrameWalk {
    position: Position,
    header: [u8; FRAME_HEADER],
}

/// A frame header as [`FrameWalk`] found it.
#[derive(Debug, Clone, Copy)]
struct Frame {
    kind: u8,
    flags: u8,
    length: u32,
}

impl FrameWalk {
    /// `preface`: this direction starts with the client connection preface.
    fn new(preface: bool) -> Self {
        FrameWalk {
            position: if preface {
                Position::Preface(PREFACE_LEN)
            } else {
                Position::Header(0)
            },
            header: [0; FRAME_HEADER],
        }
    }

    /// Calls `each` for every frame header completed in `bytes`, until it
    /// returns `false` (then so does this).
    fn walk(&mut self, mut bytes: &[u8], mut each: impl FnMut(Frame) -> bool) -> bool {
        while !bytes.is_empty() {
            match self.position {
                Position::Preface(left) => {
                    let n = left.min(bytes.len());
                    bytes = &bytes[n..];
                    self.position = if n == left {
                        Position::Header(0)
                    } else {
                        Position::Preface(left - n)
                    };
                }
                Position::Payload(left) => {
                    let n = (left as usize).min(bytes.len());
                    bytes = &bytes[n..];
                    self.position = if n == left as usize {
                        Position::Header(0)
                    } else {
                        Position::Payload(left - n as u32)
                    };
                }
                Position::Header(seen) => {
                    let n = (FRAME_HEADER - seen).min(bytes.len());
                    self.header[seen..seen + n].copy_from_slice(&bytes[..n]);
                    bytes = &bytes[n..];
                    if seen + n < FRAME_HEADER {
                        self.position = Position::Header(seen + n);
                        continue;
                    }
                    let h = self.header;
                    let length = u32::from_be_bytes([0, h[0], h[1], h[2]]);
                    if !each(Frame {
                        kind: h[3],
                        flags: h[4],
                        length,
                    }) {
                        return false;
                    }
                    self.position = if length == 0 {
                        Position::Header(0)
                    } else {
                        Position::Payload(length)
                    };
                }
            }
        }
        true
    }
}

/// What the peer sent, and what it was sent, in the current second.
#[derive(Debug, Default)]
struct Counts {
    control: u32,
    pings: u32,
    /// RST_STREAMs beyond [`Lifetime::headers`].
    resets_over: u32,
    window_updates: u32,
    /// DATA frames with a payload written to the peer.
    data_sent: u32,
    written: u64,
}

/// What the connection carried over its whole life.
#[derive(Debug, Default)]
struct Lifetime {
    /// HEADERS frames, both ways: every stream has at least one.
    headers: u64,
    /// RST_STREAM frames the peer sent.
    resets: u64,
}

/// `inner`, the side an HTTP/2 peer writes to, with its control frames
/// counted (see the module docs).
pub struct FrameBudget<S> {
    inner: S,
    read: FrameWalk,
    write: FrameWalk,
    /// When the current second's counts end (a comparison per read is
    /// cheaper than the difference of two instants).
    window_end: Instant,
    counts: Counts,
    lifetime: Lifetime,
    tripped: Arc<AtomicBool>,
}

impl<S> FrameBudget<S> {
    /// `preface`: the peer starts with the client connection preface (it is
    /// the client; else we are, and our first bytes are the preface).
    pub fn new(inner: S, preface: bool) -> Self {
        FrameBudget {
            inner,
            read: FrameWalk::new(preface),
            write: FrameWalk::new(!preface),
            window_end: Instant::now() + WINDOW,
            counts: Counts::default(),
            lifetime: Lifetime::default(),
            tripped: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Set once the budget was exceeded (the connection then fails).
    pub fn tripped(&self) -> Arc<AtomicBool> {
        self.tripped.clone()
    }

    /// Follows the frames the peer sent in `bytes`; `false` when over
    /// budget.
    fn account(&mut self, bytes: &[u8]) -> bool {
        // One clock read per read, not per frame (a read may hold hundreds).
        let mut now = None;
        let FrameBudget {
            read,
            window_end,
            counts,
            lifetime,
            ..
        } = self;
        read.walk(bytes, |frame| {
            let now = *now.get_or_insert_with(Instant::now);
            if now >= *window_end {
                *window_end = now + WINDOW;
                *counts = Counts::default();
            }
            counts.count(frame, lifetime)
        })
    }

    /// Follows the frames written to the peer in `bytes` (credited to the
    /// current second without a clock read: at worst to one just over).
    fn account_written(&mut self, bytes: &[u8]) {
        let (mut data, mut headers) = (0u32, 0u64);
        self.write.walk(bytes, |frame| {
            data += u32::from(frame.kind == DATA && frame.length > 0);
            headers += u64::from(frame.kind == HEADERS);
            true
        });
        self.lifetime.headers += headers;
        self.counts.written += bytes.len() as u64;
        self.counts.data_sent = self.counts.data_sent.saturating_add(data);
    }
}

impl Counts {
    /// Counts one frame the peer sent; `false` when over budget.
    fn count(&mut self, frame: Frame, lifetime: &mut Lifetime) -> bool {
        match frame.kind {
            PRIORITY | SETTINGS => self.control += 1,
            DATA if frame.length == 0 && frame.flags & END_STREAM == 0 => self.control += 1,
            PING => self.pings += 1,
            HEADERS => lifetime.headers += 1,
            RST_STREAM => {
                lifetime.resets += 1;
                if lifetime.resets > lifetime.headers {
                    self.resets_over += 1;
                }
            }
            WINDOW_UPDATE => self.window_updates += 1,
            _ => return true,
        }
        let window_update_budget =
            u64::from(CONTROL_PER_SECOND) + self.written / WINDOW_UPDATE_BYTES;
        self.control <= CONTROL_PER_SECOND
            && self.pings <= CONTROL_PER_SECOND.saturating_add(self.data_sent)
            && self.resets_over <= CONTROL_PER_SECOND
            && u64::from(self.window_updates) <= window_update_budget
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FrameBudget<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let within = self.account(&buf.filled()[before..]);
        if !within {
            buf.set_filled(before);
            self.tripped.store(true, Ordering::Relaxed);
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "HTTP/2 control frame flood",
            )));
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FrameBudget<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.inner).poll_write(cx, data))?;
        self.account_written(&data[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.inner).poll_write_vectored(cx, bufs))?;
        let mut left = n;
        for buf in bufs {
            if left == 0 {
                break;
            }
            let take = left.min(buf.len());
            self.account_written(&buf[..take]);
            left -= take;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = len.to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, flags, 0, 0, 0, 1]);
        f.extend_from_slice(payload);
        f
    }

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    #[tokio::test]
    async fn a_ping_flood_trips_the_budget() {
        let mut budget = FrameBudget::new(tokio::io::empty(), true);
        assert!(budget.account(PREFACE));
        assert!(budget.account(&frame(SETTINGS, 0, &[])));
        let ping = frame(PING, 0, &[0; 8]);
        let mut flood = Vec::new();
        for _ in 0..=CONTROL_PER_SECOND {
            flood.extend_from_slice(&ping);
        }
        // Split at an awkward place: headers may straddle reads.
        let (a, b) = flood.split_at(17 * CONTROL_PER_SECOND as usize + 4);
        assert!(budget.account(a));
        assert!(!budget.account(b));
    }

    /// gRPC-Go pings once for each round trip in which it received DATA:
    /// at most one PING per DATA frame it was sent, beyond the budget.
    #[tokio::test]
    async fn pings_may_follow_the_data_sent() {
        // We are the client here: what we write starts with the preface.
        let mut budget = FrameBudget::new(tokio::io::empty(), false);
        budget.account_written(PREFACE);
        let data = frame(DATA, 0, &[1; 20]);
        let ping = frame(PING, 0, &[0; 8]);
        for _ in 0..CONTROL_PER_SECOND {
            assert!(budget.account(&ping));
        }
        for _ in 0..3 * CONTROL_PER_SECOND {
            // A frame written in two pieces counts once.
            let (a, b) = data.split_at(5);
            budget.account_written(a);
            budget.account_written(b);
            // Empty DATA (an end of stream) earns no PING.
            budget.account_written(&frame(DATA, END_STREAM, &[]));
            assert!(budget.account(&ping));
        }
        assert!(!budget.account(&ping), "a PING beyond the DATA sent");
    }

    /// A stream may be reset long after it was opened (a pooled tunnel's
    /// stream lingers before its reset), and whichever side opened it: each
    /// HEADERS frame, either way, earns one reset for the connection's life.
    #[tokio::test]
    async fn resets_may_come_late_for_streams_opened_either_way() {
        tokio::time::pause();
        let mut budget = FrameBudget::new(tokio::io::empty(), false);
        budget.account_written(PREFACE);
        for _ in 0..5 * CONTROL_PER_SECOND {
            budget.account_written(&frame(HEADERS, 0x4, b"connect"));
        }
        tokio::time::advance(WINDOW).await;
        let reset = frame(RST_STREAM, 0, &[0, 0, 0, 8]);
        for _ in 0..5 * CONTROL_PER_SECOND {
            assert!(budget.account(&reset));
        }
        for _ in 0..CONTROL_PER_SECOND {
            assert!(budget.account(&reset));
        }
        assert!(
            !budget.account(&reset),
            "more resets than streams and budget"
        );
    }

    #[tokio::test]
    async fn requests_and_data_do_not_count_and_window_updates_follow_what_was_sent() {
        let mut budget = FrameBudget::new(tokio::io::empty(), true);
        assert!(budget.account(PREFACE));
        for _ in 0..10 * CONTROL_PER_SECOND {
            assert!(budget.account(&frame(HEADERS, 0x4, b"headers")));
            assert!(budget.account(&frame(DATA, 0, &[7; 100])));
            assert!(budget.account(&frame(DATA, END_STREAM, &[])));
            // A pooled tunnel may end each stream with a reset.
            assert!(budget.account(&frame(RST_STREAM, 0, &[0, 0, 0, 8])));
        }
        let reset = frame(RST_STREAM, 0, &[0, 0, 0, 8]);
        for _ in 0..CONTROL_PER_SECOND {
            assert!(budget.account(&reset));
        }
        assert!(
            !budget.account(&reset),
            "more resets than streams and budget"
        );
        let mut budget = FrameBudget::new(tokio::io::empty(), true);
        assert!(budget.account(PREFACE));
        let update = frame(WINDOW_UPDATE, 0, &[0, 0, 0x40, 0]);
        for _ in 0..CONTROL_PER_SECOND {
            assert!(budget.account(&update));
        }
        assert!(!budget.account(&update), "over budget without data sent");
        let mut budget = FrameBudget::new(tokio::io::empty(), false);
        budget.counts.written = 64 * 1024 * 1024; // what a bulk download sends in a second
        for _ in 0..(CONTROL_PER_SECOND + 10_000) {
            assert!(budget.account(&update));
        }
    }

    #[tokio::test]
    async fn the_budget_is_per_second() {
        tokio::time::pause();
        let mut budget = FrameBudget::new(tokio::io::empty(), false);
        let ping = frame(PING, 0, &[0; 8]);
        for _ in 0..CONTROL_PER_SECOND {
            assert!(budget.account(&ping));
        }
        tokio::time::advance(WINDOW).await;
        assert!(budget.account(&ping));
    }
}
