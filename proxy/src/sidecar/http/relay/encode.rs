//! Header blocks written without HPACK's dynamic table (RFC 7541 §6.1,
//! §6.2.2, §6.2.3).
//!
//! Design bias: *write, don't search*. A stateful HPACK encoder looks every
//! field up in its dynamic table and inserts what it did not find: on the
//! relay's profile that search was the largest single cost of a request.
//! Here a field is either a whole static-table entry (`:method GET` is one
//! byte) or a literal *without indexing* whose name, when the static table
//! has it, is an index: one pass, no table, no Huffman. The other side's
//! decoder table then stays empty, so its `SETTINGS_HEADER_TABLE_SIZE`
//! never matters to us; when it changes, the next block starts with a size
//! update to 0, which every size allows (RFC 7541 §4.2, §6.3). The cost is
//! bytes on the wire: names and values that a table would have shortened
//! are sent in full each time.

use bytes::{BufMut, BytesMut};

use super::frame::{self, CONTINUATION, END_HEADERS, END_STREAM, HEADERS};
use super::header_list::HeaderList;

/// One side's encoder: no table, only whether a size update is owed.
#[derive(Debug, Default)]
pub struct BlockWriter {
    size_update_owed: bool,
}

impl BlockWriter {
    /// The other side changed `SETTINGS_HEADER_TABLE_SIZE`.
    pub fn table_size_changed(&mut self) {
        self.size_update_owed = true;
    }

    /// Writes a HEADERS frame (and CONTINUATIONs past
    /// [`frame::MAX_PAYLOAD`]) for `stream` onto `out`.
    pub fn write(
        &mut self,
        out: &mut BytesMut,
        stream: u32,
        fields: &HeaderList,
        end_stream: bool,
    ) {
        let start = out.len();
        // The frame header is written once the block's length is known.
        out.put_bytes(0, frame::HEADER_LEN);
        if std::mem::take(&mut self.size_update_owed) {
            // Dynamic table size update, 0 (§6.3).
            out.put_u8(0x20);
        }
        encode_pseudo(out, fields);
        for field in fields.fields() {
            let flags = if field.sensitive || is_secret(field.name) {
                0x10
            } else {
                0x00
            };
            let index = field
                .static_index
                .map(usize::from)
                .or_else(|| static_index_of(field.name));
            match index {
                Some(index) => put_int(out, flags, 4, index),
                None => {
                    out.put_u8(flags);
                    put_string(out, field.name.as_bytes());
                }
            }
            put_string(out, field.value);
        }
        let block_len = out.len() - start - frame::HEADER_LEN;
        let stream_flag = if end_stream { END_STREAM } else { 0 };
        if block_len <= frame::MAX_PAYLOAD {
            let head = frame_head(block_len, HEADERS, stream_flag | END_HEADERS, stream);
            out[start..start + frame::HEADER_LEN].copy_from_slice(&head);
            return;
        }
        // Rare: split into HEADERS and CONTINUATIONs, each with its header.
        let block = out.split_off(start + frame::HEADER_LEN);
        out.truncate(start);
        let mut chunks = block.chunks(frame::MAX_PAYLOAD).peekable();
        let mut kind = HEADERS;
        let mut flags = stream_flag;
        while let Some(chunk) = chunks.next() {
            if chunks.peek().is_none() {
                flags |= END_HEADERS;
            }
            out.put_slice(&frame_head(chunk.len(), kind, flags, stream));
            out.put_slice(chunk);
            kind = CONTINUATION;
            flags = 0;
        }
    }
}

/// Fields written "never indexed" (§6.2.3) whatever their value says:
/// the relay's decoder keeps the mark a peer set ([`super::hpack`]), but a
/// peer that sends a credential indexable should not make the next hop
/// index it either.
fn is_secret(name: &str) -> bool {
    matches!(
        name,
        "authorization" | "proxy-authorization" | "cookie" | "set-cookie"
    )
}

fn frame_head(len: usize, kind: u8, flags: u8, stream: u32) -> [u8; frame::HEADER_LEN] {
    let len = (len as u32).to_be_bytes();
    let id = stream.to_be_bytes();
    [
        len[1], len[2], len[3], kind, flags, id[0], id[1], id[2], id[3],
    ]
}

/// The pseudo-fields, in the order RFC 9113 §8.3 lists them.
fn encode_pseudo(out: &mut BytesMut, pseudo: &HeaderList) {
    if let Some(method) = pseudo.method() {
        match method.as_str() {
            "GET" => out.put_u8(0x82),
            "POST" => out.put_u8(0x83),
            other => literal(out, 2, other.as_bytes()),
        }
    }
    if let Some(scheme) = pseudo.scheme() {
        match scheme {
            "http" => out.put_u8(0x86),
            "https" => out.put_u8(0x87),
            other => literal(out, 6, other.as_bytes()),
        }
    }
    if let Some(authority) = pseudo.authority() {
        literal(out, 1, authority.as_bytes());
    }
    if let Some(path) = pseudo.path() {
        match path {
            "/" => out.put_u8(0x84),
            other => literal(out, 4, other.as_bytes()),
        }
    }
    if let Some(status) = pseudo.status() {
        match status.as_u16() {
            200 => out.put_u8(0x88),
            204 => out.put_u8(0x89),
            206 => out.put_u8(0x8a),
            304 => out.put_u8(0x8b),
            400 => out.put_u8(0x8c),
            404 => out.put_u8(0x8d),
            500 => out.put_u8(0x8e),
            _ => literal(out, 8, status.as_str().as_bytes()),
        }
    }
}

/// A literal without indexing, its name a static-table index (§6.2.2).
fn literal(out: &mut BytesMut, name_index: usize, value: &[u8]) {
    put_int(out, 0x00, 4, name_index);
    put_string(out, value);
}

/// A string literal, not Huffman-coded (§5.2).
fn put_string(out: &mut BytesMut, bytes: &[u8]) {
    put_int(out, 0x00, 7, bytes.len());
    out.put_slice(bytes);
}

/// An integer with an `prefix_bits`-bit prefix, the first byte's other bits
/// `flags` (§5.1).
fn put_int(out: &mut BytesMut, flags: u8, prefix_bits: u32, value: usize) {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        out.put_u8(flags | value as u8);
        return;
    }
    out.put_u8(flags | max as u8);
    let mut rest = value - max;
    while rest >= 128 {
        out.put_u8((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.put_u8(rest as u8);
}

/// The static table's index of a (regular) field name (RFC 7541
/// Appendix A), for names the table holds.
pub(super) fn static_index_of(name: &str) -> Option<usize> {
    Some(match name {
        "accept-charset" => 15,
        "accept-encoding" => 16,
        "accept-language" => 17,
        "accept-ranges" => 18,
        "accept" => 19,
        "access-control-allow-origin" => 20,
        "age" => 21,
        "allow" => 22,
        "authorization" => 23,
        "cache-control" => 24,
        "content-disposition" => 25,
        "content-encoding" => 26,
        "content-language" => 27,
        "content-length" => 28,
        "content-location" => 29,
        "content-range" => 30,
        "content-type" => 31,
        "cookie" => 32,
        "date" => 33,
        "etag" => 34,
        "expect" => 35,
        "expires" => 36,
        "from" => 37,
        "host" => 38,
        "if-match" => 39,
        "if-modified-since" => 40,
        "if-none-match" => 41,
        "if-range" => 42,
        "if-unmodified-since" => 43,
        "last-modified" => 44,
        "link" => 45,
        "location" => 46,
        "max-forwards" => 47,
        "proxy-authenticate" => 48,
        "proxy-authorization" => 49,
        "range" => 50,
        "referer" => 51,
        "refresh" => 52,
        "retry-after" => 53,
        "server" => 54,
        "set-cookie" => 55,
        "strict-transport-security" => 56,
        "transfer-encoding" => 57,
        "user-agent" => 58,
        "vary" => 59,
        "via" => 60,
        "www-authenticate" => 61,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::super::hpack::{Block, Decoded, HeaderBlocks, STATIC_TABLE};
    use super::*;
    use h2::frame::{Headers, Pseudo, StreamId};
    use http::header::{HeaderName, HeaderValue};
    use http::{HeaderMap, Method, StatusCode, Uri};
    use proptest::prelude::*;

    /// Decodes with the h2 crate's decoder: what any peer would read.
    fn decode(blocks: &mut HeaderBlocks, wire: &[u8]) -> Block {
        let mut rest = wire;
        loop {
            let head = frame::Head::parse(rest).expect("a frame");
            let (one, after) = rest.split_at(frame::HEADER_LEN + head.len);
            rest = after;
            match blocks.decode_with_h2(one) {
                Ok(Decoded::Block(block)) => {
                    assert!(rest.is_empty(), "bytes after the block");
                    return block;
                }
                Ok(Decoded::Continues) => {}
                Err(e) => panic!("the decoder refused the block: {e:?}"),
            }
        }
    }

    #[test]
    fn static_entries_are_one_byte_and_the_rest_literals() {
        let uri: Uri = "https://api.test/".parse().unwrap();
        let pseudo = Pseudo::request(Method::GET, uri, None);
        let mut wire = BytesMut::new();
        BlockWriter::default().write(
            &mut wire,
            1,
            &HeaderList::from_h2(&pseudo, &HeaderMap::new()),
            true,
        );
        let block = &wire[frame::HEADER_LEN..];
        // :method GET, :scheme https, :authority literal, :path /.
        assert_eq!(block[..2], [0x82, 0x87]);
        assert_eq!(block[2..4], [0x01, 8]);
        assert_eq!(&block[4..12], b"api.test");
        assert_eq!(block[12..], [0x84]);
        let head = frame::Head::parse(&wire).unwrap();
        assert_eq!(head.flags, END_STREAM | END_HEADERS);
        let decoded = decode(&mut HeaderBlocks::new(1 << 16), &wire);
        assert_eq!(decoded.fields.to_h2().0, pseudo);
    }

    #[test]
    fn a_large_block_is_split_into_continuations() {
        let mut fields = HeaderMap::new();
        fields.insert("x-big", "b".repeat(40_000).parse().unwrap());
        let mut wire = BytesMut::new();
        let status = Pseudo::response(StatusCode::IM_A_TEAPOT);
        BlockWriter::default().write(&mut wire, 3, &HeaderList::from_h2(&status, &fields), false);
        let first = frame::Head::parse(&wire).unwrap();
        assert_eq!((first.kind, first.flags), (HEADERS, 0));
        let decoded = decode(&mut HeaderBlocks::new(1 << 17), &wire);
        assert!(!decoded.end_stream);
        let (pseudo, got) = decoded.fields.to_h2();
        assert_eq!(pseudo.status, Some(StatusCode::IM_A_TEAPOT));
        assert_eq!(got, fields);
    }

    #[test]
    fn a_size_update_is_owed_once_after_a_change() {
        let mut writer = BlockWriter::default();
        writer.table_size_changed();
        let status = Pseudo::response(StatusCode::OK);
        let mut wire = BytesMut::new();
        writer.write(
            &mut wire,
            1,
            &HeaderList::from_h2(&status, &HeaderMap::new()),
            true,
        );
        assert_eq!(wire[frame::HEADER_LEN..], [0x20, 0x88]);
        let mut decoder = HeaderBlocks::new(1 << 16);
        decode(&mut decoder, &wire);
        let mut wire = BytesMut::new();
        writer.write(
            &mut wire,
            3,
            &HeaderList::from_h2(&status, &HeaderMap::new()),
            true,
        );
        assert_eq!(wire[frame::HEADER_LEN..], [0x88]);
        decode(&mut decoder, &wire);
    }

    #[test]
    fn a_sensitive_value_is_never_indexed() {
        let mut fields = HeaderMap::new();
        let mut secret = HeaderValue::from_static("Bearer x");
        secret.set_sensitive(true);
        fields.insert(http::header::AUTHORIZATION, secret);
        let mut wire = BytesMut::new();
        let status = Pseudo::response(StatusCode::OK);
        BlockWriter::default().write(&mut wire, 1, &HeaderList::from_h2(&status, &fields), true);
        // :status 200, then "literal never indexed", name index 15 + 8.
        assert_eq!(
            wire[frame::HEADER_LEN..frame::HEADER_LEN + 3],
            [0x88, 0x1f, 8]
        );
    }

    /// Fields our decoder read with a static-table name come out with that
    /// index (and a never-indexed one still marked): decoded by our
    /// decoder from h2's encoding, written, read back by h2's decoder.
    #[test]
    fn fields_decoded_with_a_static_name_are_written_with_it() {
        let mut fields = HeaderMap::new();
        fields.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain"),
        );
        let mut secret = HeaderValue::from_static("Bearer x");
        secret.set_sensitive(true);
        fields.insert(http::header::AUTHORIZATION, secret);
        fields.insert("x-custom", HeaderValue::from_static("1"));
        let head = Headers::new(
            StreamId::from(1),
            Pseudo::response(StatusCode::OK),
            fields.clone(),
        );
        let mut wire = BytesMut::new();
        HeaderBlocks::new(1 << 16).encode(head, &mut wire);
        let Ok(Decoded::Block(block)) = HeaderBlocks::new(1 << 16).decode(&wire) else {
            panic!("one whole block");
        };
        let indexes: Vec<_> = block.fields.fields().map(|f| f.static_index).collect();
        assert_eq!(indexes, [Some(31), Some(23), None]);
        let mut out = BytesMut::new();
        BlockWriter::default().write(&mut out, 1, &block.fields, true);
        // :status 200; content-type: name index 31 (0x0f, 31 - 15), plain
        // value; authorization: never indexed, name index 23.
        let written = &out[frame::HEADER_LEN..];
        assert_eq!(written[..3], [0x88, 0x0f, 31 - 15]);
        let at = 3 + 1 + "text/plain".len();
        assert_eq!(written[at..at + 2], [0x1f, 23 - 15]);
        let back = decode(&mut HeaderBlocks::new(1 << 16), &out);
        assert_eq!(back.fields.to_h2().1, fields);
    }

    /// The encoder's name lookup (a `match`, what the hot path wants) and
    /// the decoder's table (`hpack::STATIC_TABLE`) are two listings of RFC
    /// 7541 Appendix A: they must agree entry for entry.
    #[test]
    fn the_encoders_static_names_are_the_decoders_table() {
        for (i, (name, _)) in STATIC_TABLE.iter().enumerate() {
            let index = i + 1;
            // Regular names are in the table once each, which
            // `HeaderList::get_all` relies on (it compares them as indexes).
            if name.starts_with(':') {
                assert_eq!(static_index_of(name), None, "{name}");
            } else {
                assert_eq!(static_index_of(name), Some(index), "{name}");
            }
        }
        // And the whole entries `encode_pseudo` writes by index.
        let whole = [
            (0x82u8, ":method", "GET"),
            (0x83, ":method", "POST"),
            (0x84, ":path", "/"),
            (0x86, ":scheme", "http"),
            (0x87, ":scheme", "https"),
            (0x88, ":status", "200"),
            (0x89, ":status", "204"),
            (0x8a, ":status", "206"),
            (0x8b, ":status", "304"),
            (0x8c, ":status", "400"),
            (0x8d, ":status", "404"),
            (0x8e, ":status", "500"),
        ];
        for (byte, name, value) in whole {
            assert_eq!(STATIC_TABLE[usize::from(byte & 0x7f) - 1], (name, value));
        }
    }

    /// Credentials and cookies are marked never-indexed even when their
    /// value was not flagged sensitive (a peer may send them indexable).
    #[test]
    fn credential_and_cookie_fields_are_never_indexed_whatever_their_flag() {
        for name in [
            "authorization",
            "proxy-authorization",
            "cookie",
            "set-cookie",
        ] {
            let mut fields = HeaderMap::new();
            fields.insert(HeaderName::from_static(name), HeaderValue::from_static("v"));
            let mut wire = BytesMut::new();
            let status = Pseudo::response(StatusCode::OK);
            BlockWriter::default().write(
                &mut wire,
                1,
                &HeaderList::from_h2(&status, &fields),
                true,
            );
            // After `:status 200` (0x88): the 4-bit pattern 0001 (§6.2.3).
            assert_eq!(wire[frame::HEADER_LEN + 1] & 0xf0, 0x10, "{name}");
        }
        let mut fields = HeaderMap::new();
        fields.insert("x-plain", HeaderValue::from_static("v"));
        let mut wire = BytesMut::new();
        let status = Pseudo::response(StatusCode::OK);
        BlockWriter::default().write(&mut wire, 1, &HeaderList::from_h2(&status, &fields), true);
        // Without indexing (0000), not never-indexed.
        assert_eq!(wire[frame::HEADER_LEN + 1] & 0xf0, 0x00);
    }

    fn field() -> impl Strategy<Value = (HeaderName, HeaderValue, bool)> {
        let names = prop_oneof![
            Just("content-type".to_string()),
            Just("www-authenticate".to_string()),
            Just("accept-charset".to_string()),
            // Connection-specific names are not HTTP/2 fields (RFC 9113
            // §8.2.2): h2's decoder refuses them, and the relay never has
            // one to write (it writes only what that decoder accepted).
            "[a-z][a-z0-9-]{0,40}".prop_filter("a connection-specific name", |name| {
                !matches!(
                    name.as_str(),
                    "connection"
                        | "te"
                        | "keep-alive"
                        | "transfer-encoding"
                        | "upgrade"
                        | "proxy-connection"
                )
            }),
        ];
        let value = proptest::collection::vec(
            prop_oneof![0x20u8..0x7f, 0x80u8..=0xff, Just(b'\t')],
            0..300,
        )
        // Padded values are malformed (§8.2.1): the decoder refuses them,
        // so the relay never has one to write.
        .prop_filter("a value with leading or trailing whitespace", |v| {
            let padded = |b: &u8| *b == b' ' || *b == b'\t';
            !v.first().is_some_and(padded) && !v.last().is_some_and(padded)
        });
        (names, value, any::<bool>()).prop_map(|(name, value, sensitive)| {
            let mut value = HeaderValue::from_bytes(&value).unwrap();
            value.set_sensitive(sensitive);
            (name.parse().unwrap(), value, sensitive)
        })
    }

    proptest! {
        /// Whatever the fields, h2's decoder reads back exactly what was
        /// written, over many blocks on one connection (its table stays
        /// empty).
        #[test]
        fn any_fields_decode_back_unchanged(
            blocks in proptest::collection::vec(proptest::collection::vec(field(), 0..12), 1..6),
            status in 100u16..600,
        ) {
            let mut writer = BlockWriter::default();
            let mut decoder = HeaderBlocks::new(1 << 20);
            let status = StatusCode::from_u16(status).unwrap();
            for (i, block) in blocks.iter().enumerate() {
                let mut fields = HeaderMap::new();
                for (name, value, _) in block {
                    fields.append(name.clone(), value.clone());
                }
                let mut wire = BytesMut::new();
                let stream = 2 * i as u32 + 1;
                let list = HeaderList::from_h2(&Pseudo::response(status), &fields);
                writer.write(&mut wire, stream, &list, i % 2 == 0);
                let decoded = decode(&mut decoder, &wire);
                prop_assert_eq!(decoded.stream, stream);
                prop_assert_eq!(decoded.end_stream, i % 2 == 0);
                let (pseudo, got) = decoded.fields.to_h2();
                prop_assert_eq!(pseudo.status, Some(status));
                prop_assert_eq!(&got, &fields);
            }
        }
    }
}
