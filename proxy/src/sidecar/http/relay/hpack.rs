//! Header blocks in: HEADERS and CONTINUATION frames, reassembled and
//! HPACK-decoded (RFC 7541) into a request or response head
//! ([`HeaderList`]).
//!
//! Design bias: *decode once, from the bytes where they lie*. Every request
//! through the HTTP/2 relay has two header blocks decoded on each sidecar,
//! and with the h2 crate's codec (which this module used to drive from
//! memory) those four decodes were about 40% of the pair's instructions
//! per request (`bench/e2e/instructions.sh`): a frame codec around each
//! block, reference-counted slices per string, the table's entries kept
//! parsed. Here a block that fits one frame (nearly all do) is decoded
//! from that frame's payload, strings are borrowed from it or Huffman-
//! decoded into a scratch buffer ([`super::huffman`]), and the dynamic
//! table keeps bytes; the head it makes is bytes too, not the h2 crate's
//! `Pseudo` and `HeaderMap` ([`super::header_list`]). The checks are the
//! ones the h2 crate made, with the same outcomes, so that a request is
//! refused alike whichever code reads it: the h2 codec stays as the oracle
//! of the differential tests below.
//!
//! What is checked, and what it costs:
//! - **HPACK itself** (bad integers, indexes, strings, Huffman padding, a
//!   table size update out of place or over 4 096): the connection's
//!   decoding state is lost, so the connection ends (`COMPRESSION_ERROR`,
//!   RFC 9113 §4.3).
//! - **Fields that are no fields** (an upper-case or invalid name, a value
//!   with CR, LF or NUL, an unknown pseudo-field, a method or status that
//!   does not parse): a connection error (`PROTOCOL_ERROR`), as hyper's
//!   server makes it — stricter than §8.2.1's stream error.
//! - **Malformed heads** (pseudo-fields after regular ones or twice,
//!   connection-specific fields, `te` other than `trailers`, §8.2.2): a
//!   stream error; the whole block is still decoded, so HPACK stays in step.
//! - **Size**: a header list over `max_header_list` comes back marked
//!   [`Block::over_size`] (the relay answers `431`); over four times that,
//!   or a block of more frames or bytes than such a list needs, the
//!   connection ends (`ENHANCE_YOUR_CALM`).
//!
//! One [`HeaderBlocks`] per side of the relay: its table mirrors that
//! side's encoder. What the relay writes, it writes without a table
//! ([`super::encode`]).

use std::collections::VecDeque;

#[cfg(test)]
use bytes::Bytes;
use h2::Reason;
use http::{Method, StatusCode};

use super::frame::{self, CONTINUATION, END_HEADERS, END_STREAM, HEADERS, Head, PADDED};
use super::header_list::{HeaderList, PseudoText, is_field_name, is_field_value};
use super::huffman;

/// The dynamic table's size: the protocol's default, which the relay never
/// changes (it sends no `SETTINGS_HEADER_TABLE_SIZE`).
const TABLE_SIZE: usize = 4_096;
/// A header list this many times the limit ends the connection (as h2's).
const ABUSE_FACTOR: usize = 4;
/// HEADERS' PRIORITY flag (RFC 9113 §6.2).
const PRIORITY: u8 = 0x20;
/// Room for decoded strings kept between blocks; a larger buffer (a long
/// Huffman string) is let go after its block.
const KEPT_TEXT: usize = 8 * 1024;

/// One side's HPACK state, and a block in the making.
pub struct HeaderBlocks {
    table: Table,
    max_header_list: usize,
    /// A block whose END_HEADERS has not come yet.
    pending: Option<Pending>,
    /// Huffman-decoded strings: a field's name and its value.
    name_text: Vec<u8>,
    value_text: Vec<u8>,
    /// Values decoded lately, by their coded bytes.
    recent_values: huffman::Recent,
    /// The peer's encoder in tests, and the old decoder as their oracle.
    #[cfg(test)]
    codec: h2::Codec<oracle::Memory, Bytes>,
}

/// What one header frame gave. (Not boxed: it is matched at once, never
/// stored.)
#[allow(clippy::large_enum_variant)]
pub enum Decoded {
    /// A whole header block (its last frame had END_HEADERS).
    Block(Block),
    /// The block goes on in CONTINUATION frames.
    Continues,
}

/// A decoded header block.
pub struct Block {
    pub stream: u32,
    /// Its HEADERS frame had END_STREAM.
    pub end_stream: bool,
    pub fields: HeaderList,
    /// The header list passed `max_header_list`: what was decoded up to
    /// there is kept, the rest dropped.
    pub over_size: bool,
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

struct Pending {
    stream: u32,
    end_stream: bool,
    self_dependent: bool,
    block: Vec<u8>,
    continuations: usize,
}

const COMPRESSION: BlockError = BlockError::Connection(Reason::COMPRESSION_ERROR);
const PROTOCOL: BlockError = BlockError::Connection(Reason::PROTOCOL_ERROR);
const CALM: BlockError = BlockError::Connection(Reason::ENHANCE_YOUR_CALM);

impl HeaderBlocks {
    /// `max_header_list`: the largest decoded header list accepted
    /// (`SETTINGS_MAX_HEADER_LIST_SIZE`); a larger one comes back marked
    /// [`Block::over_size`].
    pub fn new(max_header_list: usize) -> Self {
        HeaderBlocks {
            table: Table::default(),
            max_header_list,
            pending: None,
            name_text: Vec::new(),
            value_text: Vec::new(),
            recent_values: huffman::Recent::default(),
            #[cfg(test)]
            codec: oracle::codec(max_header_list),
        }
    }

    /// Decodes one whole HEADERS or CONTINUATION frame, header included.
    pub fn decode(&mut self, frame: &[u8]) -> Result<Decoded, BlockError> {
        let Some(head) = Head::parse(frame) else {
            return Err(PROTOCOL);
        };
        if frame.len() != head.frame_len() || head.stream == 0 {
            return Err(PROTOCOL);
        }
        let payload = &frame[frame::HEADER_LEN..];
        match head.kind {
            HEADERS if self.pending.is_none() => {
                let (fragment, self_dependent) = headers_fragment(&head, payload)?;
                let end_stream = head.has(END_STREAM);
                if head.has(END_HEADERS) {
                    return self.block(head.stream, end_stream, self_dependent, fragment);
                }
                self.check_pending(fragment.len(), 0)?;
                self.pending = Some(Pending {
                    stream: head.stream,
                    end_stream,
                    self_dependent,
                    block: fragment.to_vec(),
                    continuations: 0,
                });
                Ok(Decoded::Continues)
            }
            CONTINUATION => {
                let Some(mut pending) = self.pending.take() else {
                    return Err(PROTOCOL);
                };
                if pending.stream != head.stream {
                    return Err(PROTOCOL);
                }
                // As h2 counts them: the last one (END_HEADERS) is free.
                if !head.has(END_HEADERS) {
                    pending.continuations += 1;
                }
                self.check_pending(pending.block.len() + payload.len(), pending.continuations)?;
                pending.block.extend_from_slice(payload);
                if !head.has(END_HEADERS) {
                    self.pending = Some(pending);
                    return Ok(Decoded::Continues);
                }
                let Pending {
                    stream,
                    end_stream,
                    self_dependent,
                    block,
                    ..
                } = pending;
                self.block(stream, end_stream, self_dependent, &block)
            }
            _ => Err(PROTOCOL),
        }
    }

    /// A block in pieces may grow to what a list of the largest size
    /// needs, in frames and in bytes (h2's bound on CONTINUATIONs: a
    /// quarter more frames than the size needs, at least five).
    fn check_pending(&self, bytes: usize, continuations: usize) -> Result<(), BlockError> {
        let frames = (self.max_header_list / frame::MAX_PAYLOAD).max(1);
        let most = (frames + frames / 4).max(5);
        if continuations > most || bytes > self.max_header_list.saturating_mul(ABUSE_FACTOR) {
            return Err(CALM);
        }
        Ok(())
    }

    /// Decodes a whole block. `self_dependent`: its HEADERS frame made the
    /// stream depend on itself, a stream error (RFC 9113 §5.3.1) reported
    /// once the block is decoded: the table must stay in step (§4.3).
    fn block(
        &mut self,
        stream: u32,
        end_stream: bool,
        self_dependent: bool,
        src: &[u8],
    ) -> Result<Decoded, BlockError> {
        let decoded = self.decode_block(stream, end_stream, src);
        // A block's strings may have been long (up to the abuse limit):
        // the connection does not keep their room.
        for text in [&mut self.name_text, &mut self.value_text] {
            if text.capacity() > KEPT_TEXT {
                *text = Vec::new();
            }
        }
        match decoded {
            Ok(_) if self_dependent => Err(BlockError::Stream(stream, Reason::PROTOCOL_ERROR)),
            decoded => decoded,
        }
    }

    fn decode_block(
        &mut self,
        stream: u32,
        end_stream: bool,
        mut src: &[u8],
    ) -> Result<Decoded, BlockError> {
        let HeaderBlocks {
            table,
            max_header_list,
            name_text,
            value_text,
            recent_values,
            ..
        } = self;
        let mut head = HeadBuilder::new(*max_header_list);
        let mut fields_seen = false;
        while let Some(&first) = src.first() {
            if first & 0x80 != 0 {
                // Indexed field (§6.1).
                let index = integer(&mut src, 7)?;
                let (name, value) = table.get(index)?;
                head.field(name, static_name(index), value, false)?;
            } else if first & 0xe0 == 0x20 {
                // Dynamic table size update (§6.3): only before the first
                // field.
                let size = integer(&mut src, 5)?;
                if fields_seen || size > TABLE_SIZE {
                    return Err(COMPRESSION);
                }
                table.resize(size);
                continue;
            } else {
                // Literal (§6.2): with incremental indexing (01), without
                // (0000) or never indexed (0001).
                let (prefix, indexing) = if first & 0x40 != 0 {
                    (6, true)
                } else {
                    (4, false)
                };
                let never = first & 0xf0 == 0x10;
                let index = integer(&mut src, prefix)?;
                let name = if index == 0 {
                    string(&mut src, name_text, None)?.unwrap_or(name_text)
                } else {
                    table.get(index)?.0
                };
                // A never-indexed value (a credential, by the encoder's
                // word) is not kept past its block.
                let recent = (!never).then_some(&mut *recent_values);
                let value = string(&mut src, value_text, recent)?.unwrap_or(value_text);
                head.field(name, static_name(index), value, never)?;
                if indexing {
                    table.insert(Entry::new(name, value));
                }
            }
            fields_seen = true;
        }
        head.finish(stream, end_stream).map(Decoded::Block)
    }
}

/// A HEADERS frame's block fragment: its payload less padding and
/// priority (RFC 9113 §6.2); and whether the priority made the stream
/// depend on itself.
fn headers_fragment<'a>(head: &Head, payload: &'a [u8]) -> Result<(&'a [u8], bool), BlockError> {
    let mut rest = payload;
    let mut pad = 0;
    let mut self_dependent = false;
    if head.has(PADDED) {
        let (&length, after) = rest.split_first().ok_or(PROTOCOL)?;
        pad = usize::from(length);
        rest = after;
    }
    if head.flags & PRIORITY != 0 {
        let (dependency, after) = rest.split_first_chunk::<5>().ok_or(PROTOCOL)?;
        let on = u32::from_be_bytes([dependency[0], dependency[1], dependency[2], dependency[3]])
            & frame::MAX_WINDOW;
        self_dependent = on == head.stream;
        rest = after;
    }
    let len = rest.len().checked_sub(pad).ok_or(PROTOCOL)?;
    Ok((&rest[..len], self_dependent))
}

/// An integer with an `prefix`-bit prefix (RFC 7541 §5.1), at most
/// 2^28 + 2^prefix - 2: four continuation bytes (h2 allows no more).
fn integer(src: &mut &[u8], prefix: u32) -> Result<usize, BlockError> {
    let mask = (1usize << prefix) - 1;
    let (&first, mut rest) = src.split_first().ok_or(COMPRESSION)?;
    let mut value = usize::from(first) & mask;
    if value == mask {
        let mut shift = 0;
        loop {
            let (&byte, after) = rest.split_first().ok_or(COMPRESSION)?;
            rest = after;
            value += usize::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                break;
            }
            shift += 7;
            if shift > 21 {
                return Err(COMPRESSION);
            }
        }
    }
    *src = rest;
    Ok(value)
}

/// A string literal (§5.2): `Some` of its bytes in `src`, or `None` when
/// it was Huffman-coded and is now decoded in `text` (through `recent`
/// when given).
fn string<'a>(
    src: &mut &'a [u8],
    text: &mut Vec<u8>,
    recent: Option<&mut huffman::Recent>,
) -> Result<Option<&'a [u8]>, BlockError> {
    let huffman = src.first().is_some_and(|&b| b & 0x80 != 0);
    let len = integer(src, 7)?;
    if len > src.len() {
        return Err(COMPRESSION);
    }
    let (raw, rest) = src.split_at(len);
    *src = rest;
    if !huffman {
        return Ok(Some(raw));
    }
    match recent {
        Some(recent) => recent.decode(raw, text),
        None => {
            text.clear();
            huffman::decode(raw, text)
        }
    }
    .map_err(|_| COMPRESSION)?;
    Ok(None)
}

/// The dynamic table (RFC 7541 §2.3.2, §4): newest entry first.
struct Table {
    entries: VecDeque<Entry>,
    /// Sum of the entries' sizes (§4.1).
    size: usize,
    max: usize,
}

/// A table entry: its name, then its value, in one allocation.
struct Entry {
    bytes: Box<[u8]>,
    name_len: usize,
}

impl Entry {
    fn new(name: &[u8], value: &[u8]) -> Entry {
        let mut bytes = Vec::with_capacity(name.len() + value.len());
        bytes.extend_from_slice(name);
        bytes.extend_from_slice(value);
        Entry {
            bytes: bytes.into_boxed_slice(),
            name_len: name.len(),
        }
    }

    fn name_value(&self) -> (&[u8], &[u8]) {
        self.bytes.split_at(self.name_len)
    }

    /// Its size as §4.1 counts it.
    fn size(&self) -> usize {
        self.bytes.len() + 32
    }
}

impl Table {
    /// Entry `index` of the static table (1–61) then this one.
    fn get(&self, index: usize) -> Result<(&[u8], &[u8]), BlockError> {
        if let Some(&(name, value)) = index.checked_sub(1).and_then(|i| STATIC_TABLE.get(i)) {
            return Ok((name.as_bytes(), value.as_bytes()));
        }
        let entry = index
            .checked_sub(STATIC_TABLE.len() + 1)
            .and_then(|i| self.entries.get(i))
            .ok_or(COMPRESSION)?;
        Ok(entry.name_value())
    }

    fn insert(&mut self, entry: Entry) {
        let size = entry.size();
        if size > self.max {
            // Larger than the table: it empties it (§4.4).
            self.entries.clear();
            self.size = 0;
            return;
        }
        self.evict_to(self.max - size);
        self.size += size;
        self.entries.push_front(entry);
    }

    fn resize(&mut self, max: usize) {
        self.max = max;
        self.evict_to(max);
    }

    fn evict_to(&mut self, room: usize) {
        while self.size > room {
            let Some(old) = self.entries.pop_back() else {
                break;
            };
            self.size -= old.size();
        }
    }
}

impl Default for Table {
    fn default() -> Self {
        Table {
            entries: VecDeque::new(),
            size: 0,
            max: TABLE_SIZE,
        }
    }
}

/// A head as its fields come: pseudo-fields, then regular ones, checked
/// as the module doc says.
struct HeadBuilder {
    list: HeaderList,
    regular_seen: bool,
    malformed: bool,
    /// The header list's size so far (§4.1's count, as for the table).
    size: usize,
    max: usize,
    over_size: bool,
}

/// The most fields a head keeps; past it, the list is over size. A bound
/// of our own, at least h2's (an `http::HeaderMap` holds 24 576 distinct
/// names, any number of values). Under the default header list limit
/// (`limits.max_header_bytes`, 64 KiB, at least 32 bytes a field) it is
/// never met; under the largest (16 MiB) a list of more fields is answered
/// as one over size.
const MAX_FIELDS: usize = 24_576;

impl HeadBuilder {
    fn new(max: usize) -> Self {
        HeadBuilder {
            list: HeaderList::with_room(),
            regular_seen: false,
            malformed: false,
            size: 0,
            max,
            over_size: false,
        }
    }

    /// One field; `static_index`: its name is that static table entry's.
    fn field(
        &mut self,
        name: &[u8],
        static_index: Option<u8>,
        value: &[u8],
        never_indexed: bool,
    ) -> Result<(), BlockError> {
        if let Some(pseudo) = name.strip_prefix(b":") {
            return self.pseudo_field(pseudo, value);
        }
        // HTTP/2 names are lower case (§8.2.1): this refuses others.
        if (static_index.is_none() && !is_field_name(name)) || !is_field_value(value) {
            return Err(PROTOCOL);
        }
        if is_connection_specific(name) || (name == b"te" && value != b"trailers") {
            self.malformed = true;
            return Ok(());
        }
        self.regular_seen = true;
        self.count(name.len() + value.len())?;
        if self.over_size {
            return Ok(());
        }
        if self.list.len() >= MAX_FIELDS {
            self.over_size = true;
            return Ok(());
        }
        match static_index {
            Some(index) => self.list.push_static(index, value, never_indexed),
            // Checked above: a token is ASCII.
            None => {
                let name = std::str::from_utf8(name).map_err(|_| PROTOCOL)?;
                self.list.append(name, value, never_indexed);
            }
        }
        Ok(())
    }

    fn pseudo_field(&mut self, name: &[u8], value: &[u8]) -> Result<(), BlockError> {
        let text = || std::str::from_utf8(value).map_err(|_| PROTOCOL);
        // Parsed first: a value that does not parse ends the connection,
        // malformed or not (as with h2's decoder).
        let field = match name {
            b"method" => PseudoField::Method(Method::from_bytes(value).map_err(|_| PROTOCOL)?),
            b"scheme" => PseudoField::Text(PseudoText::Scheme, text()?),
            b"authority" => PseudoField::Text(PseudoText::Authority, text()?),
            b"path" => PseudoField::Text(PseudoText::Path, text()?),
            b"protocol" => PseudoField::Text(PseudoText::Protocol, text()?),
            b"status" => PseudoField::Status(StatusCode::from_bytes(value).map_err(|_| PROTOCOL)?),
            _ => return Err(PROTOCOL),
        };
        let already = match &field {
            PseudoField::Method(_) => self.list.method().is_some(),
            PseudoField::Text(which, _) => self.list.has_text(*which),
            PseudoField::Status(_) => self.list.status().is_some(),
        };
        if self.regular_seen || already {
            // After a regular field, or twice (§8.3).
            self.malformed = true;
            return Ok(());
        }
        self.count(1 + name.len() + value.len())?;
        if self.over_size {
            return Ok(());
        }
        match field {
            PseudoField::Method(method) => self.list.set_method(method),
            PseudoField::Text(which, text) => self.list.set_text(which, text),
            PseudoField::Status(status) => self.list.set_status(status),
        }
        Ok(())
    }

    /// Adds a field's size to the list's; past four times the limit, the
    /// connection ends.
    fn count(&mut self, len: usize) -> Result<(), BlockError> {
        self.size += len + 32;
        if self.size > self.max.saturating_mul(ABUSE_FACTOR) {
            return Err(CALM);
        }
        if self.size >= self.max {
            self.over_size = true;
        }
        Ok(())
    }

    fn finish(self, stream: u32, end_stream: bool) -> Result<Block, BlockError> {
        if self.malformed {
            return Err(BlockError::Stream(stream, Reason::PROTOCOL_ERROR));
        }
        Ok(Block {
            stream,
            end_stream,
            fields: self.list,
            over_size: self.over_size,
        })
    }
}

/// A pseudo-field, parsed.
enum PseudoField<'v> {
    Method(Method),
    Text(PseudoText, &'v str),
    Status(StatusCode),
}

/// Fields that name a property of one connection, not of the message: an
/// HTTP/2 head carrying one is malformed (RFC 9113 §8.2.2).
fn is_connection_specific(name: &[u8]) -> bool {
    matches!(
        name,
        b"connection" | b"transfer-encoding" | b"upgrade" | b"keep-alive" | b"proxy-connection"
    )
}

/// `index` when it is a regular field's static table entry (15–61);
/// `None` for a pseudo-field's or a dynamic entry's.
fn static_name(index: usize) -> Option<u8> {
    (15..=STATIC_TABLE.len())
        .contains(&index)
        .then_some(index as u8)
}

/// RFC 7541 Appendix A: index 1 is the first entry.
pub(super) const STATIC_TABLE: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// The h2 crate's codec, driven from memory: the peer's (stateful,
/// Huffman-coding) encoder in tests, and the decoder this module replaced,
/// kept as the oracle its differential tests compare against.
#[cfg(test)]
mod oracle {
    use std::io;
    use std::pin::Pin;
    use std::task::{Context, Poll, Waker};

    use bytes::{Buf, Bytes, BytesMut};
    use futures_util::Stream as _;
    use h2::Reason;
    use h2::frame::{Frame, Headers};
    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

    use super::{Block, BlockError, Decoded, HeaderBlocks, HeaderList};

    pub fn codec(max_header_list: usize) -> h2::Codec<Memory, Bytes> {
        let mut codec = h2::Codec::new(Memory::default());
        codec.set_max_recv_header_list_size(max_header_list);
        codec
    }

    impl HeaderBlocks {
        /// Encodes `headers` as a peer's h2 encoder would (dynamic table,
        /// Huffman where shorter).
        pub fn encode(&mut self, headers: Headers, out: &mut BytesMut) {
            let mut cx = Context::from_waker(Waker::noop());
            // Memory never refuses a write, so the codec is always ready
            // and flushes completely.
            assert!(matches!(
                self.codec.poll_ready(&mut cx),
                Poll::Ready(Ok(()))
            ));
            assert!(self.codec.buffer(Frame::Headers(headers)).is_ok());
            assert!(matches!(self.codec.flush(&mut cx), Poll::Ready(Ok(()))));
            let written = &mut self.codec.get_mut().output;
            out.extend_from_slice(written);
            written.clear();
        }

        /// Decodes one header frame with the h2 crate's codec.
        pub fn decode_with_h2(&mut self, frame: &[u8]) -> Result<Decoded, BlockError> {
            self.codec.get_mut().input.extend_from_slice(frame);
            let mut cx = Context::from_waker(Waker::noop());
            let decoded = match Pin::new(&mut self.codec).poll_next(&mut cx) {
                Poll::Pending => Ok(Decoded::Continues),
                Poll::Ready(Some(Ok(Frame::Headers(headers)))) => Ok(Decoded::Block(Block {
                    stream: headers.stream_id().into(),
                    end_stream: headers.is_end_stream(),
                    over_size: headers.is_over_size(),
                    fields: {
                        let (pseudo, fields) = headers.into_parts();
                        HeaderList::from_h2(&pseudo, &fields)
                    },
                })),
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
            self.codec.get_mut().input.clear();
            decoded
        }
    }

    /// The codec's "connection": bytes handed in, bytes written out.
    #[derive(Default)]
    pub struct Memory {
        pub input: BytesMut,
        pub output: BytesMut,
    }

    impl AsyncRead for Memory {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if self.input.is_empty() {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use h2::frame::{Headers, Pseudo, StreamId};
    use http::header::{HeaderName, HeaderValue};
    use http::{HeaderMap, Uri};
    use proptest::prelude::*;

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
            let Ok(Decoded::Block(block)) = receiver.decode(&wire) else {
                panic!("one whole block");
            };
            assert_eq!(block.stream, stream);
            assert!(block.end_stream);
            assert_eq!(block.fields.path(), Some("/a?b"));
            assert_eq!(block.fields.get("x-long"), Some(&b"vvvvvvvvvv"[..]));
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
        let Ok(Decoded::Block(Block { fields, .. })) = receiver.decode(frames[frames.len() - 1])
        else {
            panic!("the block at its last frame");
        };
        assert_eq!(fields.get("x-long").unwrap().len(), 40_000);
    }

    #[test]
    fn a_header_list_over_the_limit_is_marked() {
        let mut sender = HeaderBlocks::new(64 * 1024);
        let mut receiver = HeaderBlocks::new(1024);
        let mut wire = BytesMut::new();
        sender.encode(request(1, "/", 2048), &mut wire);
        let Ok(Decoded::Block(block)) = receiver.decode(&wire) else {
            panic!("a block");
        };
        assert!(block.over_size);
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

    /// A Huffman-coded value is kept for the blocks after (`huffman::Recent`),
    /// unless the encoder marked it never-indexed: a credential is not kept
    /// past its block.
    #[test]
    fn never_indexed_values_are_not_kept_past_their_block() {
        // `:status: 200`, then `cache-control` (static 24) with the value
        // "private" Huffman-coded (RFC 7541 C.6.1): without indexing
        // (0000), then never indexed (0001).
        let private = [0x85, 0xae, 0xc3, 0x77, 0x1a, 0x4b];
        for (first, kept) in [(0x0f, 1), (0x1f, 0)] {
            let mut block = vec![0x88, first, 24 - 15];
            block.extend_from_slice(&private);
            let mut receiver = HeaderBlocks::new(64 * 1024);
            let fields =
                decoded(receiver.decode(&headers_frame(1, END_HEADERS | END_STREAM, &block)));
            assert!(
                fields.contains(&("cache-control".into(), "private".into())),
                "{fields:?}"
            );
            assert_eq!(receiver.recent_values.len(), kept, "first byte {first:#x}");
        }
    }

    /// A HEADERS frame with END_HEADERS carrying `block` on `stream`.
    fn headers_frame(stream: u32, flags: u8, block: &[u8]) -> BytesMut {
        let mut frame = BytesMut::new();
        super::super::frame::put_head(&mut frame, block.len(), HEADERS, flags, stream);
        frame.extend_from_slice(block);
        frame
    }

    fn decoded(result: Result<Decoded, BlockError>) -> Vec<(String, String)> {
        let Ok(Decoded::Block(Block { fields, .. })) = result else {
            panic!("a block");
        };
        let (pseudo, fields) = fields.to_h2();
        let mut out: Vec<(String, String)> = Vec::new();
        if let Some(status) = pseudo.status {
            out.push((":status".into(), status.as_str().into()));
        }
        for (name, value) in &fields {
            out.push((name.to_string(), value.to_str().unwrap().into()));
        }
        out
    }

    /// RFC 7541 Appendix C.5.1 and C.5.2: responses through a table of 256
    /// bytes (set here by a size update at the start of the first block),
    /// where the second response's `:status` evicts the first's and its
    /// other fields are references that only resolve if eviction and the
    /// indexes after it are right.
    #[test]
    fn the_specs_responses_decode_through_a_small_table() {
        let hex = |text: &str| -> Vec<u8> {
            let digits: String = text.split_whitespace().collect();
            (0..digits.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).unwrap())
                .collect()
        };
        let mut receiver = HeaderBlocks::new(64 * 1024);
        // 001 11111, then 256 - 31 = 225 as 0xe1 0x01.
        let mut first = vec![0x3f, 0xe1, 0x01];
        first.extend(hex(
            "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133
             2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70
             6c65 2e63 6f6d",
        ));
        let date = "Mon, 21 Oct 2013 20:13:21 GMT";
        let location = "https://www.example.com";
        let want = |status: &str| -> Vec<(String, String)> {
            [
                (":status", status),
                ("cache-control", "private"),
                ("date", date),
                ("location", location),
            ]
            .into_iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
        };
        assert_eq!(
            decoded(receiver.decode(&headers_frame(1, END_HEADERS, &first))),
            want("302")
        );
        assert_eq!(receiver.table.size, 222);
        let second = hex("4803 3330 37c1 c0bf");
        assert_eq!(
            decoded(receiver.decode(&headers_frame(3, END_HEADERS, &second))),
            want("307")
        );
        assert_eq!(receiver.table.size, 222);
        assert_eq!(receiver.table.entries.len(), 4);
    }

    /// A HEADERS frame that makes its stream depend on itself is a stream
    /// error, but its block is decoded first: an entry it adds to the
    /// table is there for the next block (RFC 9113 §4.3; h2's decoder
    /// skipped the block and lost step).
    #[test]
    fn a_self_dependent_block_still_feeds_the_table() {
        let mut receiver = HeaderBlocks::new(64 * 1024);
        // PRIORITY on stream 1, depending on 1; :status 200, then `x-a: 1`
        // with incremental indexing.
        let mut block = vec![0, 0, 0, 1, 16, 0x88, 0x40, 3];
        block.extend_from_slice(b"x-a");
        block.extend_from_slice(&[1, b'1']);
        assert_eq!(
            receiver
                .decode(&headers_frame(1, END_HEADERS | PRIORITY, &block))
                .err(),
            Some(BlockError::Stream(1, Reason::PROTOCOL_ERROR))
        );
        // The next block names it by index 62.
        assert_eq!(
            decoded(receiver.decode(&headers_frame(3, END_HEADERS, &[0x88, 0xbe]))),
            [
                (":status".to_string(), "200".to_string()),
                ("x-a".into(), "1".into())
            ]
        );
    }

    /// CONTINUATIONs: as many as h2 took, and one more is refused as h2
    /// refused it (the last, END_HEADERS, not counted).
    #[test]
    fn continuations_are_bounded_as_h2_bounds_them() {
        for limit in [1024, 64 * 1024, 256 * 1024] {
            for count in 0..16 {
                let mut ours = HeaderBlocks::new(limit);
                let mut theirs = HeaderBlocks::new(limit);
                let first = headers_frame(1, 0, &[0x88]);
                same_outcome(ours.decode(&first), theirs.decode_with_h2(&first));
                let mut ended = false;
                for i in 0..=count {
                    let flags = if i == count { END_HEADERS } else { 0 };
                    let mut frame = BytesMut::new();
                    super::super::frame::put_head(&mut frame, 0, CONTINUATION, flags, 1);
                    let a = ours.decode(&frame);
                    let b = theirs.decode_with_h2(&frame);
                    ended = matches!(a, Err(BlockError::Connection(_)));
                    same_outcome(a, b);
                    if ended {
                        break;
                    }
                }
                assert_eq!(
                    ended,
                    count > 5 + usize::from(limit == 256 * 1024) * 15,
                    "{limit} {count}"
                );
            }
        }
    }

    /// A long Huffman string's room is not kept after its block.
    #[test]
    fn a_long_strings_room_is_let_go() {
        let mut sender = HeaderBlocks::new(1 << 20);
        let mut receiver = HeaderBlocks::new(1 << 20);
        let mut wire = BytesMut::new();
        sender.encode(request(1, "/", 100_000), &mut wire);
        for frame in frames(&wire) {
            let _ = receiver.decode(frame).map_err(|e| panic!("{e:?}"));
        }
        assert!(receiver.value_text.capacity() <= KEPT_TEXT);
        assert!(receiver.name_text.capacity() <= KEPT_TEXT);
    }

    /// A never-indexed field stays marked (RFC 7541 §7.1.3: an
    /// intermediary forwards it as never indexed; h2's decoder dropped
    /// the mark); one without indexing does not.
    #[test]
    fn the_never_indexed_mark_is_kept() {
        let mut receiver = HeaderBlocks::new(64 * 1024);
        let mut block = vec![0x88]; // :status 200
        for first in [0x10u8, 0x00] {
            block.push(first);
            block.push(8);
            block.extend_from_slice(if first == 0x10 {
                b"x-secret"
            } else {
                b"x-public"
            });
            block.extend_from_slice(&[1, b'v']);
        }
        let mut frame = BytesMut::new();
        super::super::frame::put_head(&mut frame, block.len(), HEADERS, END_HEADERS, 2);
        frame.extend_from_slice(&block);
        let Ok(Decoded::Block(Block { fields, .. })) = receiver.decode(&frame) else {
            panic!("a block");
        };
        let sensitive = |name: &str| fields.fields().find(|f| f.name == name).unwrap().sensitive;
        assert!(sensitive("x-secret"));
        assert!(!sensitive("x-public"));
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
    /// The h2 crate's decoder and this one, fed the same frames: the same
    /// heads (pseudo-fields; fields by name, each name's values in order;
    /// h2's drops the never-indexed mark, this one keeps it), the
    /// same over-size mark; a refusal by one is a refusal by the other,
    /// of the same kind (stream or connection).
    fn same_outcome(ours: Result<Decoded, BlockError>, theirs: Result<Decoded, BlockError>) {
        match (ours, theirs) {
            (Ok(Decoded::Continues), Ok(Decoded::Continues)) => {}
            (Ok(Decoded::Block(a)), Ok(Decoded::Block(b))) => {
                assert_eq!(a.over_size, b.over_size, "over size");
                assert_eq!(a.stream, b.stream);
                assert_eq!(a.end_stream, b.end_stream);
                let (pseudo_a, fields_a) = a.fields.to_h2();
                let (pseudo_b, fields_b) = b.fields.to_h2();
                assert_eq!(format!("{pseudo_a:?}"), format!("{pseudo_b:?}"));
                // As h2's map holds them: by name, each name's values in
                // order (ours keep the wire order across names too).
                let fields = |map: HeaderMap| -> Vec<_> { map.into_iter().collect() };
                assert_eq!(fields(fields_a), fields(fields_b));
            }
            (Err(BlockError::Stream(a, ra)), Err(BlockError::Stream(b, rb))) => {
                assert_eq!((a, ra), (b, rb));
            }
            // Both end the connection; the reasons may differ: h2 says
            // PROTOCOL_ERROR for HPACK errors, RFC 9113 §4.3 (and we)
            // COMPRESSION_ERROR.
            (Err(BlockError::Connection(_)), Err(BlockError::Connection(_))) => {}
            (a, b) => panic!(
                "ours: {:?}, h2's: {:?}",
                a.as_ref().map(|_| "decoded"),
                b.as_ref().map(|_| "decoded")
            ),
        }
    }

    /// A field a peer's HeaderMap can hold (h2 lower-cases nothing: the
    /// map's names already are).
    fn any_field() -> impl Strategy<Value = (String, String)> {
        let names = prop_oneof![
            Just("content-type".to_string()),
            Just("user-agent".to_string()),
            Just("authorization".to_string()),
            Just("cookie".to_string()),
            Just("te".to_string()),
            Just("connection".to_string()),
            Just("x-appid-peer".to_string()),
            "[a-z0-9-]{1,12}",
        ];
        // Any visible ASCII, spaces and tabs inside, and bytes above 0x7f
        // (which Huffman codes in 19 to 26 bits).
        (names, "[ -~\\t\u{80}-\u{ff}]{0,40}")
    }

    fn any_head(stream: u32) -> impl Strategy<Value = Headers> {
        (
            prop::bool::ANY,
            "/[a-z0-9/?=&%]{0,30}",
            prop::collection::vec(any_field(), 0..12),
            prop::bool::ANY,
        )
            .prop_map(move |(request, path, fields, end)| {
                let pseudo = if request {
                    let uri: Uri = format!("https://api.test{path}").parse().unwrap();
                    Pseudo::request(Method::POST, uri, None)
                } else {
                    Pseudo::response(StatusCode::IM_A_TEAPOT)
                };
                let mut map = HeaderMap::new();
                for (name, value) in fields {
                    let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
                    let Ok(mut value) = HeaderValue::from_bytes(value.trim().as_bytes()) else {
                        continue;
                    };
                    value.set_sensitive(name == "authorization");
                    map.append(name, value);
                }
                let mut head = Headers::new(StreamId::from(stream), pseudo, map);
                if end {
                    head.set_end_stream();
                }
                head
            })
    }

    /// The frames of `wire`, one by one.
    fn frames(wire: &[u8]) -> Vec<&[u8]> {
        let mut frames = Vec::new();
        let mut rest = wire;
        while let Some(head) = super::super::frame::Head::parse(rest) {
            frames.push(&rest[..head.frame_len()]);
            rest = &rest[head.frame_len()..];
        }
        frames
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Heads from h2's encoder (its dynamic table filling, evicting,
        /// Huffman strings), through both decoders, on one connection.
        #[test]
        fn decodes_as_h2_does(
            heads in prop::collection::vec(any_head(1), 1..8),
            limit in prop_oneof![Just(64 * 1024), 100usize..2_000],
        ) {
            let mut sender = HeaderBlocks::new(1 << 20);
            let mut ours = HeaderBlocks::new(limit);
            let mut theirs = HeaderBlocks::new(limit);
            for (i, head) in heads.into_iter().enumerate() {
                let stream = 1 + 2 * i as u32;
                let end = head.is_end_stream();
                let (pseudo, fields) = head.into_parts();
                let mut head = Headers::new(StreamId::from(stream), pseudo, fields);
                if end {
                    head.set_end_stream();
                }
                let mut wire = BytesMut::new();
                sender.encode(head, &mut wire);
                for frame in frames(&wire) {
                    let a = ours.decode(frame);
                    let ended = matches!(a, Err(BlockError::Connection(_)));
                    same_outcome(a, theirs.decode_with_h2(frame));
                    if ended {
                        return Ok(());
                    }
                }
            }
        }

        /// Any bytes as a block (after one good block has filled the
        /// table): the same outcome, and no panic.
        #[test]
        fn garbage_fares_as_with_h2(
            first in any_head(1),
            block in prop::collection::vec(any::<u8>(), 0..64),
            flags in prop_oneof![Just(0x4u8), Just(0x5), Just(0x0), Just(0x2c), Just(0x24)],
        ) {
            let mut sender = HeaderBlocks::new(1 << 20);
            let mut ours = HeaderBlocks::new(4096);
            let mut theirs = HeaderBlocks::new(4096);
            let mut wire = BytesMut::new();
            sender.encode(first, &mut wire);
            for frame in frames(&wire) {
                same_outcome(ours.decode(frame), theirs.decode_with_h2(frame));
            }
            let mut frame = BytesMut::new();
            super::super::frame::put_head(&mut frame, block.len(), HEADERS, flags, 3);
            frame.extend_from_slice(&block);
            let (mut a, mut b) = (ours.decode(&frame), theirs.decode_with_h2(&frame));
            if flags & END_HEADERS == 0 {
                // The block ends in an empty CONTINUATION. h2 decodes each
                // frame as it comes (and may refuse the first); this
                // decoder waits for the whole block: compare the ends.
                let mut last = BytesMut::new();
                super::super::frame::put_head(&mut last, 0, CONTINUATION, END_HEADERS, 3);
                a = ours.decode(&last);
                if b.is_ok() {
                    b = theirs.decode_with_h2(&last);
                }
            }
            same_outcome(a, b);
        }
    }
}
