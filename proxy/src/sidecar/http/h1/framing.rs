//! Where an HTTP/1.1 message body ends (RFC 9112 section 6), without
//! decoding it.
//!
//! Design bias: *refuse what two parsers could read differently*. A proxy
//! that disagrees with the server about where a body ends lets a client
//! smuggle a second request past authorization. So: `Transfer-Encoding`
//! together with `Content-Length` is refused, differing `Content-Length`
//! values are refused, a request's `Transfer-Encoding` must end in
//! `chunked`, chunk lines must end in CRLF, sizes are plain hex of at most
//! 15 digits.

use super::super::Malformed;
use std::fmt;

/// How a message's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLength {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the sender closes (responses only).
    UntilClose,
}

/// Why a message's framing is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FramingError {
    /// Both `Transfer-Encoding` and `Content-Length`.
    BothLengths,
    /// A `Content-Length` that is not one non-negative integer.
    BadContentLength,
    /// A request whose `Transfer-Encoding` does not end in `chunked`.
    NotChunked,
    /// A malformed chunk size line, chunk end or trailer.
    BadChunk,
    /// Trailer fields after a request's last chunk (none are allowed).
    Trailers,
}

/// In the words of the audit line ([`Malformed`]: one text per reason).
impl fmt::Display for FramingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(Malformed::from(*self).as_str())
    }
}

/// The framing of a message from its headers: its body length, and what
/// its `content-length` fields declared (whether they must become one
/// plain value before the message goes on), in one pass. `request`:
/// requests without either header have no body; responses are then read
/// until close.
pub fn framing<'h>(
    headers: impl Iterator<Item = (&'h str, &'h [u8])>,
    request: bool,
) -> Result<(BodyLength, ContentLength), FramingError> {
    let mut transfer_encoding: Option<bool> = None; // Some(ends in chunked)
    let mut content_length = ContentLength::default();
    for (name, value) in headers {
        if name.eq_ignore_ascii_case("transfer-encoding") {
            let last = value
                .split(|&b| b == b',')
                .map(|coding| coding.trim_ascii())
                .rfind(|coding| !coding.is_empty());
            transfer_encoding = Some(last.is_some_and(|c| c.eq_ignore_ascii_case(b"chunked")));
        } else if name.eq_ignore_ascii_case("content-length") {
            content_length.add(value)?;
        }
    }
    let body = match (transfer_encoding, content_length.length()) {
        (Some(_), Some(_)) => return Err(FramingError::BothLengths),
        (Some(true), None) => BodyLength::Chunked,
        (Some(false), None) if request => return Err(FramingError::NotChunked),
        (Some(false), None) => BodyLength::UntilClose,
        (None, Some(0)) => BodyLength::Empty,
        (None, Some(n)) => BodyLength::Length(n),
        (None, None) if request => BodyLength::Empty,
        (None, None) => BodyLength::UntilClose,
    };
    Ok((body, content_length))
}

/// What a message's `content-length` fields declare, read one field value
/// at a time ([`ContentLength::add`]): the length, and whether the fields
/// must be replaced by one plain value before the message goes on. RFC
/// 9112 §6.3 lets a recipient accept a list of equal values (`5, 5`), the
/// field repeated, or blanks around the number, and then requires it to
/// forward a single valid value: the next hop, which may read them
/// differently, never sees them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ContentLength {
    length: Option<u64>,
    /// More than one field.
    repeated: bool,
    /// A value that was not one plain number (a list, blanks).
    listed: bool,
}

impl ContentLength {
    /// Reads every value of a message's `content-length` fields, in order
    /// ([`ContentLength::add`]).
    pub fn read<'v>(values: impl Iterator<Item = &'v [u8]>) -> Result<Self, FramingError> {
        let mut declared = ContentLength::default();
        for value in values {
            declared.add(value)?;
        }
        Ok(declared)
    }

    /// Reads one field value: comma-separated items of 1 to 19 digits,
    /// blanks around them allowed, each equal to every length read so far;
    /// an error for anything else. A plain number, the usual case, is read
    /// in one pass. After an error the message is refused: what was read is
    /// to be dropped, not used.
    pub fn add(&mut self, value: &[u8]) -> Result<(), FramingError> {
        self.repeated |= self.length.is_some();
        if let Some(n) = plain_length(value) {
            return self.take(n);
        }
        self.listed = true;
        for item in value.split(|&b| b == b',') {
            self.take(plain_length(item.trim_ascii()).ok_or(FramingError::BadContentLength)?)?;
        }
        Ok(())
    }

    fn take(&mut self, n: u64) -> Result<(), FramingError> {
        if self.length.is_some_and(|seen| seen != n) {
            return Err(FramingError::BadContentLength);
        }
        self.length = Some(n);
        Ok(())
    }

    /// The length declared; `None` without a field.
    pub fn length(&self) -> Option<u64> {
        self.length
    }

    /// The length to forward as the one plain field that replaces the
    /// ones read, when they are anything but one plain number; `None` when
    /// they go on as they came (one plain number, or no field).
    pub fn rewrite(&self) -> Option<u64> {
        self.length.filter(|_| self.repeated || self.listed)
    }
}

/// `digits` as a number when they are 1 to 19 ASCII digits (no sign, no
/// blank); 19 digits cannot overflow a `u64`.
fn plain_length(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &b| {
        b.is_ascii_digit().then(|| n * 10 + u64::from(b - b'0'))
    })
}

/// What an `x-appid-*` field name starts with (`_` read as `-`).
const APPID_PREFIX: &[u8] = b"x-appid-";

/// Longest chunk-size line (size, extensions) or trailer line accepted.
pub const MAX_CHUNK_LINE: usize = 4096;

/// Follows a chunked body through the bytes that carry it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunked {
    state: State,
    /// Bytes of the current size or trailer line so far.
    line: usize,
    /// What trailer fields after the last chunk may be.
    trailers: TrailerFields,
    /// The current trailer line still starts like `x-appid-`.
    appid_so_far: bool,
}

/// Which trailer fields a chunked body may end with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TrailerFields {
    /// Any (responses from a peer sidecar).
    Any,
    /// None (requests: nothing a client needs, and a place to hide
    /// header-like lines from the authorizer).
    None,
    /// Any but `x-appid-*` (responses from the local app: only sidecars
    /// set those; a forged one cuts the response short).
    NotAppid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In a chunk-size line: the size so far and the digits seen.
    Size {
        size: u64,
        digits: u8,
    },
    /// Whitespace after the size: only `;` (an extension) or CR may follow.
    SizeBws {
        size: u64,
    },
    /// In a chunk extension (visible characters, spaces, tabs).
    Ext {
        size: u64,
    },
    /// Saw the size line's CR.
    SizeLf {
        size: u64,
    },
    /// This many data bytes left.
    Data(u64),
    DataCr,
    DataLf,
    /// After the last chunk: at the start of a trailer line (or the end).
    TrailerStart,
    /// Inside a trailer line.
    Trailer,
    TrailerLf,
    /// The final CRLF's CR.
    EndLf,
    Done,
}

impl Default for Chunked {
    fn default() -> Self {
        Chunked::new()
    }
}

impl Chunked {
    /// A response body (trailers allowed).
    pub fn new() -> Self {
        Chunked {
            state: State::Size { size: 0, digits: 0 },
            line: 0,
            trailers: TrailerFields::Any,
            appid_so_far: false,
        }
    }

    /// A request body (trailers refused).
    pub fn for_request() -> Self {
        Chunked {
            trailers: TrailerFields::None,
            ..Chunked::new()
        }
    }

    /// A response body from the local app (`x-appid-*` trailers refused).
    pub fn for_app_response() -> Self {
        Chunked {
            trailers: TrailerFields::NotAppid,
            ..Chunked::new()
        }
    }

    /// Whether the whole body has been seen.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Reads `bytes` as the continuation of the body; returns how many of
    /// them belong to it (fewer than `bytes.len()` only once done: the rest
    /// is the next message).
    pub fn advance(&mut self, bytes: &[u8]) -> Result<usize, FramingError> {
        let mut i = 0;
        while i < bytes.len() {
            if let State::Data(left) = self.state {
                let take = (bytes.len() - i).min(usize::try_from(left).unwrap_or(usize::MAX));
                i += take;
                let left = left - take as u64;
                self.state = if left == 0 {
                    State::DataCr
                } else {
                    State::Data(left)
                };
                continue;
            }
            if self.state == State::Done {
                break;
            }
            let b = bytes[i];
            i += 1;
            self.state = self.step(b)?;
        }
        Ok(i)
    }

    fn step(&mut self, b: u8) -> Result<State, FramingError> {
        let bad = Err(FramingError::BadChunk);
        Ok(match self.state {
            State::Size { .. } | State::SizeBws { .. } | State::Ext { .. } => {
                self.line += 1;
                if self.line > MAX_CHUNK_LINE {
                    return bad;
                }
                match (self.state, b) {
                    (_, b'\n') => return bad,
                    (State::Size { size, digits }, b'\r') if digits > 0 => State::SizeLf { size },
                    (State::SizeBws { size } | State::Ext { size }, b'\r') => {
                        State::SizeLf { size }
                    }
                    (State::Size { size, digits }, b' ' | b'\t') if digits > 0 => {
                        State::SizeBws { size }
                    }
                    (State::SizeBws { size }, b' ' | b'\t') => State::SizeBws { size },
                    (State::Size { size, digits }, b';') if digits > 0 => State::Ext { size },
                    (State::SizeBws { size }, b';') => State::Ext { size },
                    (State::Ext { size }, b'\t' | b' '..=b'~') => State::Ext { size },
                    (State::Size { size, digits }, _) => {
                        let Some(d) = (b as char).to_digit(16) else {
                            return bad;
                        };
                        if digits >= 15 {
                            return bad;
                        }
                        State::Size {
                            size: size * 16 + u64::from(d),
                            digits: digits + 1,
                        }
                    }
                    _ => return bad,
                }
            }
            State::SizeLf { size } => {
                if b != b'\n' {
                    return bad;
                }
                self.line = 0;
                if size == 0 {
                    State::TrailerStart
                } else {
                    State::Data(size)
                }
            }
            State::DataCr if b == b'\r' => State::DataLf,
            State::DataLf if b == b'\n' => State::Size { size: 0, digits: 0 },
            State::TrailerStart if b == b'\r' => State::EndLf,
            State::TrailerStart if self.trailers == TrailerFields::None => {
                return Err(FramingError::Trailers);
            }
            State::TrailerStart | State::Trailer => {
                if self.state == State::TrailerStart {
                    self.appid_so_far = self.trailers == TrailerFields::NotAppid;
                }
                self.line += 1;
                if self.line > MAX_CHUNK_LINE || b == b'\n' {
                    return bad;
                }
                if self.appid_so_far && self.line <= APPID_PREFIX.len() {
                    let want = APPID_PREFIX[self.line - 1];
                    let got = if b == b'_' {
                        b'-'
                    } else {
                        b.to_ascii_lowercase()
                    };
                    self.appid_so_far = got == want;
                    if self.appid_so_far && self.line == APPID_PREFIX.len() {
                        return bad;
                    }
                }
                if b == b'\r' {
                    State::TrailerLf
                } else {
                    State::Trailer
                }
            }
            State::TrailerLf if b == b'\n' => {
                self.line = 0;
                State::TrailerStart
            }
            State::EndLf if b == b'\n' => State::Done,
            _ => return bad,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn headers(list: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static [u8])> {
        list.iter().map(|(n, v)| (*n, v.as_bytes())).collect()
    }

    fn length(
        list: &[(&'static str, &'static str)],
        request: bool,
    ) -> Result<BodyLength, FramingError> {
        framing(headers(list).into_iter(), request).map(|(body, _)| body)
    }

    #[test]
    fn framing_from_headers() {
        assert_eq!(length(&[], true), Ok(BodyLength::Empty));
        assert_eq!(length(&[], false), Ok(BodyLength::UntilClose));
        assert_eq!(
            length(&[("Content-Length", "12")], true),
            Ok(BodyLength::Length(12))
        );
        assert_eq!(
            length(&[("content-length", "0")], false),
            Ok(BodyLength::Empty)
        );
        assert_eq!(
            length(&[("Content-Length", "7, 7"), ("content-length", "7")], true),
            Ok(BodyLength::Length(7))
        );
        assert_eq!(
            length(&[("Transfer-Encoding", "gzip, Chunked")], true),
            Ok(BodyLength::Chunked)
        );
        assert_eq!(
            length(&[("Transfer-Encoding", "gzip")], false),
            Ok(BodyLength::UntilClose)
        );
    }

    #[test]
    fn only_a_single_plain_content_length_goes_on_as_it_came() {
        let needs = |list: &[(&'static str, &'static str)]| {
            framing(headers(list).into_iter(), true).map(|(_, declared)| declared.rewrite())
        };
        assert_eq!(needs(&[]), Ok(None));
        assert_eq!(needs(&[("Content-Length", "12"), ("Host", "a")]), Ok(None));
        assert_eq!(needs(&[("content-length", "0")]), Ok(None));
        assert_eq!(needs(&[("Content-Length", "7, 7")]), Ok(Some(7)));
        assert_eq!(
            needs(&[("Content-Length", "7"), ("content-length", "7")]),
            Ok(Some(7))
        );
        assert_eq!(
            needs(&[("Content-Length", "0"), ("content-length", "0")]),
            Ok(Some(0))
        );
        assert_eq!(needs(&[("Content-Length", " 7")]), Ok(Some(7)));
        assert_eq!(needs(&[("Content-Length", "7 ,7")]), Ok(Some(7)));
        assert!(needs(&[("Content-Length", "7,")]).is_err());
        // Not a content-length: left alone.
        assert_eq!(needs(&[("X-Content-Length", "7, 7")]), Ok(None));
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        assert_eq!(
            length(
                &[("Transfer-Encoding", "chunked"), ("Content-Length", "3")],
                true
            ),
            Err(FramingError::BothLengths)
        );
        for bad in ["-1", "1x", "", "+5", "99999999999999999999", "1 2"] {
            assert_eq!(
                length(&[("Content-Length", bad)], true),
                Err(FramingError::BadContentLength),
                "{bad:?}"
            );
        }
        assert_eq!(
            length(&[("Content-Length", "3"), ("Content-Length", "4")], true),
            Err(FramingError::BadContentLength)
        );
        assert_eq!(
            length(&[("Transfer-Encoding", "chunked, gzip")], true),
            Err(FramingError::NotChunked)
        );
    }

    #[test]
    fn request_bodies_refuse_trailers_and_extensions_stay_strict() {
        assert_eq!(
            Chunked::for_request().advance(b"0\r\nX-Appid-Peer-Id: evil\r\n\r\n"),
            Err(FramingError::Trailers)
        );
        let mut c = Chunked::for_request();
        assert_eq!(c.advance(b"3 ; name=\"v\"\r\nabc\r\n0\r\n\r\n"), Ok(24));
        assert!(c.is_done());
    }

    #[test]
    fn app_responses_cannot_end_with_appid_trailers() {
        for forged in [
            &b"0\r\nX-Appid-Denied-By: forged\r\n\r\n"[..],
            b"0\r\nx_appid_peer_id: forged\r\n\r\n",
            b"0\r\ngrpc-status: 0\r\nx-appid-x: 1\r\n\r\n",
        ] {
            assert_eq!(
                Chunked::for_app_response().advance(forged),
                Err(FramingError::BadChunk),
                "{forged:?}"
            );
            // From a peer sidecar they pass.
            assert_eq!(Chunked::new().advance(forged), Ok(forged.len()));
        }
        for fine in [
            &b"0\r\ngrpc-status: 0\r\n\r\n"[..],
            b"0\r\nx-appidx: 1\r\nx-app: 2\r\n\r\n",
            b"0\r\n\r\n",
        ] {
            let mut c = Chunked::for_app_response();
            assert_eq!(c.advance(fine), Ok(fine.len()), "{fine:?}");
            assert!(c.is_done());
        }
    }

    #[test]
    fn chunked_bodies_end_where_they_end() {
        let body = b"4\r\nWiki\r\n5;ext=1\r\npedia\r\n0\r\nX-Trailer: 1\r\n\r\nGET /next";
        let mut c = Chunked::new();
        let n = c.advance(body).unwrap();
        assert!(c.is_done());
        assert_eq!(&body[n..], b"GET /next");
    }

    #[test]
    fn malformed_chunks_are_refused() {
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b"4\nWiki",
            b"4\r\nWikiXX",
            b"0\r\n\n",
            b"1234567890abcdef0\r\n",
            b"1;ext\nX\r\n",
            // A request line hidden as an "extension" after whitespace.
            b"BAD /admin HTTP/1.1\r\n",
            b"1 x\r\n",
        ] {
            assert_eq!(
                Chunked::new().advance(bad),
                Err(FramingError::BadChunk),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = format!("1;{}\r\n", "e".repeat(MAX_CHUNK_LINE));
        assert_eq!(
            Chunked::new().advance(long.as_bytes()),
            Err(FramingError::BadChunk)
        );
    }

    /// Encodes `chunks` (and trailers) the way a sender would.
    fn encode(chunks: &[Vec<u8>], trailers: &[String]) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in chunks.iter().filter(|c| !c.is_empty()) {
            out.extend_from_slice(format!("{:X}\r\n", chunk.len()).as_bytes());
            out.extend_from_slice(chunk);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n");
        for t in trailers {
            out.extend_from_slice(format!("{t}\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out
    }

    proptest! {
        /// However the bytes are split across reads, the body ends exactly
        /// at its end and the next message's bytes are left alone.
        #[test]
        fn any_split_finds_the_same_end(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..6),
            trailers in proptest::collection::vec("[a-z]{1,8}: [a-z0-9]{0,8}", 0..3),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let body = encode(&chunks, &trailers);
            let mut stream = body.clone();
            stream.extend_from_slice(b"NEXT");
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(stream.len())).collect();
            points.push(stream.len());
            points.sort_unstable();
            let mut c = Chunked::new();
            let (mut start, mut consumed) = (0, 0);
            for p in points {
                let n = c.advance(&stream[start..p]).unwrap();
                consumed += n;
                if c.is_done() { break; }
                prop_assert_eq!(n, p - start);
                start = p;
            }
            prop_assert!(c.is_done());
            prop_assert_eq!(consumed, body.len());
        }

        /// `ContentLength` reads one value as `str::parse` reads its items:
        /// their one length when every item is 1 to 19 digits and all are
        /// equal, else an error; and asks for a rewrite exactly when the
        /// value is not plain digits.
        #[test]
        fn content_lengths_are_read_as_the_items_parse(
            value in prop_oneof![
                "[0-9]{0,21}",
                // Lists of one value, blanks between.
                (0u64..100_000, 1usize..4, "[ \t]{0,2}").prop_map(|(n, k, blank)| {
                    vec![n.to_string(); k].join(&format!("{blank},{blank}"))
                }),
                "[0-9 ,\t\r\n\x0b\x0c]{0,24}",
                proptest::collection::vec(any::<u8>(), 0..24)
                    .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
            ]
        ) {
            let items: Result<Vec<u64>, FramingError> = value
                .as_bytes()
                .split(|&b| b == b',')
                .map(|item| {
                    let item = item.trim_ascii();
                    if item.is_empty() || item.len() > 19 || !item.iter().all(u8::is_ascii_digit) {
                        return Err(FramingError::BadContentLength);
                    }
                    std::str::from_utf8(item)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .ok_or(FramingError::BadContentLength)
                })
                .collect();
            let want = items.and_then(|items| match items.split_first() {
                Some((first, rest)) if rest.iter().all(|n| n == first) => Ok(*first),
                _ => Err(FramingError::BadContentLength),
            });
            let mut got = ContentLength::default();
            let read = got.add(value.as_bytes());
            prop_assert_eq!(read.map(|()| got.length()), want.map(Some));
            if let Ok(n) = want {
                // One field: a rewrite exactly when it is not plain digits.
                let plain = value.len() <= 19 && value.bytes().all(|b| b.is_ascii_digit());
                prop_assert_eq!(got.rewrite(), (!plain).then_some(n), "{:?}", value);
            }
        }

        /// Arbitrary bytes never panic; they end the body, need more, or
        /// are refused.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut c = Chunked::new();
            if let Ok(n) = c.advance(&bytes) {
                prop_assert!(n <= bytes.len());
                prop_assert!(n == bytes.len() || c.is_done());
            }
        }
    }
}
