//! Header blocks in: the h2 crate's frame codec, fed one header frame at a
//! time from memory.
//!
//! Design bias: *borrow the HPACK decoder that is already fuzzed*. HPACK is
//! state shared by every stream of a connection (a dynamic table each way),
//! the most intricate parser in HTTP/2 and the one most often got wrong.
//! The h2 crate's codec (exposed by its `unstable` feature, pinned in
//! `Cargo.lock`) decodes a HEADERS frame and its CONTINUATIONs into a
//! pseudo-header set and an `http::HeaderMap` with the same checks hyper's
//! HTTP/2 server makes (header list size, connection-specific fields,
//! pseudo-fields after regular ones, …). Here it reads from a buffer in
//! memory, so it never waits: the relay hands it exactly the header frames
//! it read from the wire. Every other frame type the relay reads itself
//! ([`super::frame`]); what it writes, it writes without a table
//! ([`super::encode`]).
//!
//! One [`HeaderBlocks`] per side of the relay: its decoder mirrors that
//! side's encoder.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::Stream as _;
use h2::Reason;
use h2::frame::{Frame, Headers};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// One side's HPACK state, and its frames in and out.
pub struct HeaderBlocks {
    codec: h2::Codec<Memory, Bytes>,
}

/// What one header frame gave. (Not boxed: it is matched at once, never
/// stored.)
#[allow(clippy::large_enum_variant)]
pub enum Decoded {
    /// A whole header block (its last frame had END_HEADERS).
    Block(Headers),
    /// The block goes on in CONTINUATION frames.
    Continues,
}

/// Why a header block was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockError {
    /// A malformed block (RFC 9113 §8.1.1): that stream is reset; the
    /// connection's HPACK state is intact.
    Stream(u32, Reason),
    /// The connection cannot go on (HPACK state lost, a frame out of
    /// place, an abusive header list).
    Connection(Reason),
}

impl HeaderBlocks {
    /// `max_header_list`: the largest decoded header list accepted
    /// (`SETTINGS_MAX_HEADER_LIST_SIZE`); a larger one comes back marked
    /// over size ([`Headers::is_over_size`]).
    pub fn new(max_header_list: usize) -> Self {
        let mut codec = h2::Codec::new(Memory::default());
        codec.set_max_recv_header_list_size(max_header_list);
        HeaderBlocks { codec }
    }

    /// Decodes one HEADERS or CONTINUATION frame, header included.
    pub fn decode(&mut self, frame: &[u8]) -> Result<Decoded, BlockError> {
        self.codec.get_mut().input.extend_from_slice(frame);
        let mut cx = Context::from_waker(Waker::noop());
        let decoded = match Pin::new(&mut self.codec).poll_next(&mut cx) {
            // The frame was taken; its block needs more frames.
            Poll::Pending => Ok(Decoded::Continues),
            Poll::Ready(Some(Ok(Frame::Headers(headers)))) => Ok(Decoded::Block(headers)),
            // Only header frames are fed in.
            Poll::Ready(Some(Ok(_))) => Err(BlockError::Connection(Reason::PROTOCOL_ERROR)),
            Poll::Ready(Some(Err(h2::proto::Error::Reset(stream, reason, _)))) => {
                Err(BlockError::Stream(stream.into(), reason))
            }
            Poll::Ready(Some(Err(h2::proto::Error::GoAway(_, reason, _)))) => {
                Err(BlockError::Connection(reason))
            }
            Poll::Ready(Some(Err(h2::proto::Error::Io(..))) | None) => {
                Err(BlockError::Connection(Reason::INTERNAL_ERROR))
            }
        };
        // A frame is always taken whole: nothing may carry over.
        if !self.codec.get_mut().input.is_empty() {
            return Err(BlockError::Connection(Reason::PROTOCOL_ERROR));
        }
        decoded
    }

    /// Encodes `headers` with the h2 crate's (stateful) encoder: stands
    /// for a peer's encoder in tests. The relay itself writes with
    /// [`super::encode`].
    #[cfg(test)]
    pub fn encode(&mut self, headers: Headers, out: &mut BytesMut) {
        let mut cx = Context::from_waker(Waker::noop());
        // Memory never refuses a write, so the codec is always ready and
        // flushes completely; the errors below cannot happen.
        let ready = self.codec.poll_ready(&mut cx);
        debug_assert!(matches!(ready, Poll::Ready(Ok(()))));
        let buffered = self.codec.buffer(Frame::Headers(headers));
        debug_assert!(buffered.is_ok());
        let flushed = self.codec.flush(&mut cx);
        debug_assert!(matches!(flushed, Poll::Ready(Ok(()))));
        let written = &mut self.codec.get_mut().output;
        out.extend_from_slice(written);
        written.clear();
    }
}

/// The codec's "connection": bytes handed in, bytes written out.
#[derive(Default)]
struct Memory {
    input: BytesMut,
    output: BytesMut,
}

impl AsyncRead for Memory {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.input.is_empty() {
            // Polled only right after a frame was handed in, never awaited.
            return Poll::Pending;
        }
        let n = self.input.len().min(buf.remaining());
        buf.put_slice(&self.input[..n]);
        self.input.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Memory {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.output.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use h2::frame::{Pseudo, StreamId};
    use http::{HeaderMap, Method, StatusCode, Uri};

    fn request(stream: u32, path: &str, extra: usize) -> Headers {
        let uri: Uri = format!("http://api.test{path}").parse().unwrap();
        let pseudo = Pseudo::request(Method::GET, uri, None);
        let mut fields = HeaderMap::new();
        fields.insert("x-long", "v".repeat(extra).parse().unwrap());
        let mut headers = Headers::new(StreamId::from(stream), pseudo, fields);
        headers.set_end_stream();
        headers
    }

    #[test]
    fn a_block_encoded_on_one_side_decodes_on_the_other_many_times() {
        let mut sender = HeaderBlocks::new(64 * 1024);
        let mut receiver = HeaderBlocks::new(64 * 1024);
        // The second and later blocks use the dynamic table.
        for stream in [1u32, 3, 5] {
            let mut wire = BytesMut::new();
            sender.encode(request(stream, "/a?b", 10), &mut wire);
            let Ok(Decoded::Block(headers)) = receiver.decode(&wire) else {
                panic!("one whole block");
            };
            assert_eq!(u32::from(headers.stream_id()), stream);
            assert!(headers.is_end_stream());
            let (pseudo, fields) = headers.into_parts();
            assert_eq!(pseudo.path.as_deref(), Some("/a?b"));
            assert_eq!(fields["x-long"], "vvvvvvvvvv");
        }
    }

    #[test]
    fn a_block_split_into_continuations_is_reassembled() {
        let mut sender = HeaderBlocks::new(64 * 1024);
        let mut receiver = HeaderBlocks::new(64 * 1024);
        let mut wire = BytesMut::new();
        sender.encode(request(1, "/", 40_000), &mut wire);
        let mut frames = Vec::new();
        let mut rest = &wire[..];
        while let Some(head) = super::super::frame::Head::parse(rest) {
            frames.push(&rest[..9 + head.len]);
            rest = &rest[9 + head.len..];
        }
        assert!(frames.len() > 1, "a 40 KB header list needs CONTINUATIONs");
        for frame in &frames[..frames.len() - 1] {
            assert!(matches!(receiver.decode(frame), Ok(Decoded::Continues)));
        }
        let Ok(Decoded::Block(headers)) = receiver.decode(frames[frames.len() - 1]) else {
            panic!("the block at its last frame");
        };
        assert_eq!(headers.fields()["x-long"].len(), 40_000);
    }

    #[test]
    fn a_header_list_over_the_limit_is_marked() {
        let mut sender = HeaderBlocks::new(64 * 1024);
        let mut receiver = HeaderBlocks::new(1024);
        let mut wire = BytesMut::new();
        sender.encode(request(1, "/", 2048), &mut wire);
        let Ok(Decoded::Block(headers)) = receiver.decode(&wire) else {
            panic!("a block");
        };
        assert!(headers.is_over_size());
    }

    #[test]
    fn a_malformed_block_resets_its_stream_only() {
        let mut sender = HeaderBlocks::new(64 * 1024);
        let mut receiver = HeaderBlocks::new(64 * 1024);
        let mut fields = HeaderMap::new();
        fields.insert("connection", "close".parse().unwrap());
        let headers = Headers::new(StreamId::from(3), Pseudo::response(StatusCode::OK), fields);
        let mut wire = BytesMut::new();
        sender.encode(headers, &mut wire);
        assert_eq!(
            receiver.decode(&wire).err(),
            Some(BlockError::Stream(3, Reason::PROTOCOL_ERROR))
        );
        // The table is intact: the next block decodes.
        let mut wire = BytesMut::new();
        sender.encode(request(5, "/next", 1), &mut wire);
        assert!(matches!(receiver.decode(&wire), Ok(Decoded::Block(_))));
    }

    #[test]
    fn garbage_is_a_connection_error() {
        let mut receiver = HeaderBlocks::new(64 * 1024);
        // HEADERS, END_HEADERS, stream 1, an index far past both tables.
        let frame = [0, 0, 2, 1, 4, 0, 0, 0, 1, 0xff, 0x7f];
        assert!(matches!(
            receiver.decode(&frame),
            Err(BlockError::Connection(_))
        ));
    }
}
