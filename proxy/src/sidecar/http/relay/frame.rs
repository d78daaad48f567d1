//! HTTP/2 frames as bytes (RFC 9113 §4, §6): the 9-byte frame header read
//! and written, and the small frames the relay writes itself.
//!
//! Design bias: *bytes in, bytes out*. The relay passes most frames on
//! unchanged, so a frame here is its header and the payload where it was
//! read, not a parsed struct; only header blocks go through HPACK
//! ([`super::hpack`] in, [`super::encode`] out).

use bytes::{BufMut, BytesMut};
use h2::Reason;

/// The frame header's length.
pub const HEADER_LEN: usize = 9;
/// The largest payload the relay accepts and sends: the protocol's default
/// (`SETTINGS_MAX_FRAME_SIZE`), which the relay never raises on either side.
pub const MAX_PAYLOAD: usize = 16_384;
/// What a client sends first (RFC 9113 §3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const PRIORITY: u8 = 0x2;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PUSH_PROMISE: u8 = 0x5;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const PADDED: u8 = 0x8;

/// The settings the relay reads or writes (RFC 9113 §6.5.2).
pub const HEADER_TABLE_SIZE: u16 = 0x1;
pub const ENABLE_PUSH: u16 = 0x2;
pub const MAX_CONCURRENT_STREAMS: u16 = 0x3;
pub const INITIAL_WINDOW_SIZE: u16 = 0x4;
pub const MAX_FRAME_SIZE: u16 = 0x5;
pub const MAX_HEADER_LIST_SIZE: u16 = 0x6;

/// The largest flow-control window (RFC 9113 §6.9.1).
pub const MAX_WINDOW: u32 = (1 << 31) - 1;

/// A frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub len: usize,
    pub kind: u8,
    pub flags: u8,
    /// The stream ID, its reserved bit cleared.
    pub stream: u32,
}

impl Head {
    /// The header at the start of `bytes`, if all 9 bytes are there.
    pub fn parse(bytes: &[u8]) -> Option<Head> {
        let h: &[u8; HEADER_LEN] = bytes.get(..HEADER_LEN)?.try_into().ok()?;
        Some(Head {
            len: u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize,
            kind: h[3],
            flags: h[4],
            stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & MAX_WINDOW,
        })
    }

    /// The whole frame's length, header included.
    pub fn frame_len(&self) -> usize {
        HEADER_LEN + self.len
    }

    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

/// Writes a frame header.
///
/// Every caller writes at most [`MAX_PAYLOAD`] bytes of payload (the frames
/// the relay writes itself are small, and what it passes on was read under
/// that limit); a longer length would not fit the header's 24 bits
/// unharmed, so it is refused outright.
pub fn put_head(out: &mut BytesMut, len: usize, kind: u8, flags: u8, stream: u32) {
    assert!(len <= MAX_PAYLOAD, "a {len}-byte frame payload");
    out.reserve(HEADER_LEN + len);
    out.put_slice(&(len as u32).to_be_bytes()[1..]);
    out.put_u8(kind);
    out.put_u8(flags);
    out.put_u32(stream);
}

/// A DATA frame (unpadded).
pub fn put_data(out: &mut BytesMut, stream: u32, payload: &[u8], end_stream: bool) {
    let flags = if end_stream { END_STREAM } else { 0 };
    put_head(out, payload.len(), DATA, flags, stream);
    out.put_slice(payload);
}

pub fn put_window_update(out: &mut BytesMut, stream: u32, increment: u32) {
    put_head(out, 4, WINDOW_UPDATE, 0, stream);
    out.put_u32(increment);
}

/// Hands back `bytes` of flow-control window that the receiver will never
/// acknowledge (padding, DATA dropped): the connection's, and the stream's
/// while it is open.
pub fn put_refund(out: &mut BytesMut, stream: u32, bytes: u32, stream_open: bool) {
    if bytes == 0 {
        return;
    }
    put_window_update(out, 0, bytes);
    if stream_open {
        put_window_update(out, stream, bytes);
    }
}

pub fn put_reset(out: &mut BytesMut, stream: u32, reason: Reason) {
    put_head(out, 4, RST_STREAM, 0, stream);
    out.put_u32(reason.into());
}

pub fn put_go_away(out: &mut BytesMut, last_stream: u32, reason: Reason) {
    put_head(out, 8, GOAWAY, 0, 0);
    out.put_u32(last_stream);
    out.put_u32(reason.into());
}

pub fn put_ping_ack(out: &mut BytesMut, payload: &[u8]) {
    put_head(out, payload.len(), PING, ACK, 0);
    out.put_slice(payload);
}

/// A PING (§6.7): checked, and answered unless it is itself an answer.
pub fn answer_ping(head: &Head, payload: &[u8], out: &mut BytesMut) -> Result<(), Reason> {
    if head.stream != 0 {
        return Err(Reason::PROTOCOL_ERROR);
    }
    if payload.len() != 8 {
        return Err(Reason::FRAME_SIZE_ERROR);
    }
    if !head.has(ACK) {
        put_ping_ack(out, payload);
    }
    Ok(())
}

pub fn put_settings(out: &mut BytesMut, settings: &[(u16, u32)]) {
    put_head(out, settings.len() * 6, SETTINGS, 0, 0);
    for &(id, value) in settings {
        out.put_u16(id);
        out.put_u32(value);
    }
}

pub fn put_settings_ack(out: &mut BytesMut) {
    put_head(out, 0, SETTINGS, ACK, 0);
}

/// A SETTINGS frame's parameters, checked (RFC 9113 §6.5, §6.5.2).
pub fn parse_settings(payload: &[u8]) -> Result<Vec<(u16, u32)>, Reason> {
    if !payload.len().is_multiple_of(6) {
        return Err(Reason::FRAME_SIZE_ERROR);
    }
    let mut settings = Vec::with_capacity(payload.len() / 6);
    for p in payload.chunks_exact(6) {
        let id = u16::from_be_bytes([p[0], p[1]]);
        let value = u32::from_be_bytes([p[2], p[3], p[4], p[5]]);
        match id {
            ENABLE_PUSH if value > 1 => return Err(Reason::PROTOCOL_ERROR),
            INITIAL_WINDOW_SIZE if value > MAX_WINDOW => return Err(Reason::FLOW_CONTROL_ERROR),
            MAX_FRAME_SIZE if !(16_384..=16_777_215).contains(&value) => {
                return Err(Reason::PROTOCOL_ERROR);
            }
            _ => settings.push((id, value)),
        }
    }
    Ok(settings)
}

/// A DATA frame's content without its padding (RFC 9113 §6.1).
pub fn unpad<'p>(head: &Head, payload: &'p [u8]) -> Result<&'p [u8], Reason> {
    if !head.has(PADDED) {
        return Ok(payload);
    }
    let pad = *payload.first().ok_or(Reason::FRAME_SIZE_ERROR)? as usize;
    if pad >= payload.len() {
        return Err(Reason::PROTOCOL_ERROR);
    }
    Ok(&payload[1..payload.len() - pad])
}

/// A 4-byte payload as a number (WINDOW_UPDATE, RST_STREAM), reserved bit
/// cleared for window increments by the caller.
pub fn parse_u32(payload: &[u8]) -> Result<u32, Reason> {
    let bytes: [u8; 4] = payload.try_into().map_err(|_| Reason::FRAME_SIZE_ERROR)?;
    Ok(u32::from_be_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_header_reads_back() {
        let mut out = BytesMut::new();
        put_head(&mut out, 300, HEADERS, END_STREAM | END_HEADERS, 7);
        let head = Head::parse(&out).unwrap();
        assert_eq!(
            head,
            Head {
                len: 300,
                kind: HEADERS,
                flags: END_STREAM | END_HEADERS,
                stream: 7
            }
        );
        assert!(Head::parse(&out[..8]).is_none());
    }

    #[test]
    fn the_reserved_bit_of_a_stream_id_is_ignored() {
        let bytes = [0, 0, 0, DATA, 0, 0x80, 0, 0, 3];
        assert_eq!(Head::parse(&bytes).unwrap().stream, 3);
    }

    #[test]
    fn padding_is_removed_and_bad_padding_refused() {
        let head = Head {
            len: 6,
            kind: DATA,
            flags: PADDED,
            stream: 1,
        };
        assert_eq!(unpad(&head, b"\x02abc\0\0"), Ok(&b"abc"[..]));
        assert_eq!(unpad(&head, b"\x06abc\0\0"), Err(Reason::PROTOCOL_ERROR));
        assert_eq!(unpad(&head, b""), Err(Reason::FRAME_SIZE_ERROR));
    }

    #[test]
    fn settings_are_checked() {
        let mut out = BytesMut::new();
        put_settings(&mut out, &[(INITIAL_WINDOW_SIZE, 1 << 20), (0x99, 1)]);
        let parsed = parse_settings(&out[HEADER_LEN..]).unwrap();
        assert_eq!(parsed, vec![(INITIAL_WINDOW_SIZE, 1 << 20), (0x99, 1)]);
        assert_eq!(parse_settings(&[0; 5]), Err(Reason::FRAME_SIZE_ERROR));
        let window = [0, 4, 0x80, 0, 0, 0];
        assert_eq!(parse_settings(&window), Err(Reason::FLOW_CONTROL_ERROR));
        let push = [0, 2, 0, 0, 0, 2];
        assert_eq!(parse_settings(&push), Err(Reason::PROTOCOL_ERROR));
        let frame = [0, 5, 0, 0, 0x40, 0];
        assert!(parse_settings(&frame).is_ok());
        let small = [0, 5, 0, 0, 0x3f, 0xff];
        assert_eq!(parse_settings(&small), Err(Reason::PROTOCOL_ERROR));
    }
}
