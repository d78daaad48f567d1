//! Every request of a cleartext HTTP/2 connection that leaves the mesh by
//! its address, watched for the host it names.
//!
//! [`super::request_watch`] follows a plaintext HTTP/1 connection to a
//! forward proxy allowed by `external.cidrs`, request by request, because
//! the proxy goes wherever each request names. An HTTP/2 forward proxy
//! (Envoy's dynamic forward proxy, say) does the same per *stream*: it
//! routes each on its `:authority`. So a connection that starts with the
//! HTTP/2 preface (prior knowledge, or after `Upgrade: h2c`) is followed
//! here frame by frame, and every request head is judged as the frame
//! that completes it passes, before its bytes are sent.
//!
//! Design bias: *nothing is forwarded that was not read as what it is*,
//! as for HTTP/1. Frames are followed by their 9-byte headers; header
//! blocks (a HEADERS frame and its CONTINUATIONs) are decoded by the
//! relay's HPACK decoder ([`HeaderBlocks`]), whose dynamic table must stay
//! in step with the app's encoder, so every block is decoded, trailers
//! too; every other frame is skipped by its length, unread. A request
//! names the host of its `:authority`, else of its `host` field (RFC 9113
//! §8.3.1); one that names two hosts or none, a host no one reads alike
//! ([`one_way_host`]), or another place a server could take a target from
//! (an absolute `:path`, a `:scheme` other than `http`/`https`, an
//! extended CONNECT other than WebSocket's) is refused, and so is a block
//! that does not decode: the table is lost with it.
//!
//! Limits, failing closed: the protocol's defaults, which the relay
//! decodes with: a dynamic table of 4 096 bytes and header frames of at
//! most 16 KiB. A server may allow its client more; such a client's
//! connection to it is refused here (nghttp2, Go and gRPC clients keep the
//! defaults). A header list is held to the 16 KiB an HTTP/1 head is.
//! Responses are not read: they pass as they come.

use super::http::relay::frame::{self, CONTINUATION, HEADERS, Head, PREFACE, PUSH_PROMISE};
use super::http::relay::hpack::{Block, BlockError, Decoded, HeaderBlocks};
use super::request_watch::{Head as RequestHead, Judge};
use crate::detect::MAX_DETECT_BYTES;
use crate::head_host::one_way_host;

/// The largest header list a watched request may have: as an HTTP/1 head.
const MAX_HEADER_LIST: usize = MAX_DETECT_BYTES;

/// One connection's client side, from its preface on.
pub struct FrameWatch {
    /// How much of the preface has passed.
    preface_seen: usize,
    /// The current frame's header so far, or, for a header frame, the
    /// whole frame so far.
    frame: Vec<u8>,
    /// Payload bytes of another frame still to pass.
    skip: usize,
    blocks: HeaderBlocks,
}

/// What a decoded header block is, for the judge.
#[derive(Debug, PartialEq, Eq)]
enum Request<'b> {
    /// A request head naming this host.
    Names(&'b str),
    /// No request head (trailers): nothing to judge.
    Trailers,
    /// A head that cannot be read one way only; why.
    Unreadable(&'static str),
}

impl Default for FrameWatch {
    fn default() -> Self {
        FrameWatch {
            preface_seen: 0,
            frame: Vec::new(),
            skip: 0,
            blocks: HeaderBlocks::new(MAX_HEADER_LIST),
        }
    }
}

impl std::fmt::Debug for FrameWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameWatch")
            .field("preface_seen", &self.preface_seen)
            .field("frame_bytes", &self.frame.len())
            .field("skip", &self.skip)
            .finish_non_exhaustive()
    }
}

impl FrameWatch {
    /// Follows `bytes`, the next the app sent (from the preface's first
    /// byte on); each request head they complete is given to `judge`.
    /// `false` when the judge refuses one or the bytes cannot be read (the
    /// judge is told why): the connection ends.
    pub fn follow(&mut self, mut bytes: &[u8], judge: &mut Judge) -> bool {
        while !bytes.is_empty() {
            if self.preface_seen < PREFACE.len() {
                let expected = &PREFACE[self.preface_seen..];
                let n = expected.len().min(bytes.len());
                if bytes[..n] != expected[..n] {
                    return refuse(judge, "bytes that are not the HTTP/2 preface");
                }
                self.preface_seen += n;
                bytes = &bytes[n..];
            } else if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
            } else if self.frame.len() < frame::HEADER_LEN {
                let n = (frame::HEADER_LEN - self.frame.len()).min(bytes.len());
                self.frame.extend_from_slice(&bytes[..n]);
                bytes = &bytes[n..];
                let Some(head) = Head::parse(&self.frame) else {
                    continue;
                };
                if head.kind == PUSH_PROMISE {
                    // Only a server pushes; its block would move HPACK's
                    // table where no server follows.
                    return refuse(judge, "a PUSH_PROMISE from the client");
                }
                if !matches!(head.kind, HEADERS | CONTINUATION) {
                    self.skip = head.len;
                    self.frame.clear();
                } else if head.len > frame::MAX_PAYLOAD {
                    return refuse(
                        judge,
                        "a header frame over 16 KiB (the default SETTINGS_MAX_FRAME_SIZE)",
                    );
                } else if !self.judge_if_whole(head, judge) {
                    // (An empty frame is whole with its header: an empty
                    // CONTINUATION can be what completes a head.)
                    return false;
                }
            } else {
                // A header frame: gathered whole, then decoded.
                let Some(head) = Head::parse(&self.frame) else {
                    return refuse(judge, "a frame header lost");
                };
                let n = (head.frame_len() - self.frame.len()).min(bytes.len());
                self.frame.extend_from_slice(&bytes[..n]);
                bytes = &bytes[n..];
                if !self.judge_if_whole(head, judge) {
                    return false;
                }
            }
        }
        true
    }

    /// Once the header frame `head` is whole in `self.frame`, decodes it
    /// and judges the request head it completes; `false`: refused.
    fn judge_if_whole(&mut self, head: Head, judge: &mut Judge) -> bool {
        if self.frame.len() < head.frame_len() {
            return true;
        }
        let frame = std::mem::take(&mut self.frame);
        let go_on = self.judge_frame(&frame, judge);
        // The buffer is kept for the next header frame.
        self.frame = frame;
        self.frame.clear();
        go_on
    }

    /// Decodes one whole header frame and judges the request head it
    /// completes, if it does.
    fn judge_frame(&mut self, frame: &[u8], judge: &mut Judge) -> bool {
        let block = match self.blocks.decode(frame) {
            Ok(Decoded::Continues) => return true,
            Ok(Decoded::Block(block)) => block,
            Err(BlockError::Stream(..)) => {
                return refuse(judge, "a malformed HTTP/2 request head");
            }
            Err(BlockError::Connection(_)) => {
                return refuse(
                    judge,
                    "an HTTP/2 header block that does not decode within the protocol's defaults",
                );
            }
        };
        match request_of(&block) {
            Request::Trailers => true,
            Request::Unreadable(why) => refuse(judge, why),
            Request::Names(host) => judge(RequestHead::Names(Some(host))),
        }
    }
}

/// What the decoded `block` asks for (see [`Request`]).
fn request_of(block: &Block) -> Request<'_> {
    if block.over_size {
        return Request::Unreadable("a request head over 16 KiB");
    }
    let head = &block.fields;
    let mut hosts = head.get_all("host");
    if !head.has_request_pseudo() && hosts.next().is_none() {
        return Request::Trailers;
    }
    // An absolute target beside (or instead of) `:authority` is another
    // place a proxy could read a host from; so is a `:scheme` that is no
    // scheme to a server that rebuilds the URL (`http://169.254.169.254/#`
    // + `://a.example/`), and a MASQUE `:protocol`'s path.
    if head
        .path()
        .is_some_and(|path| !path.starts_with('/') && path != "*")
    {
        return Request::Unreadable("an HTTP/2 :path that is no path");
    }
    if head
        .scheme()
        .is_some_and(|scheme| scheme != "http" && scheme != "https")
    {
        return Request::Unreadable("an HTTP/2 :scheme other than http or https");
    }
    if head
        .protocol()
        .is_some_and(|protocol| protocol != "websocket")
    {
        return Request::Unreadable("an extended CONNECT to a protocol other than websocket");
    }
    let mut named: Option<&[u8]> = head.authority().map(str::as_bytes);
    for host in head.get_all("host") {
        match named {
            Some(before) if before != host => {
                return Request::Unreadable("an HTTP/2 request head that names two hosts");
            }
            _ => named = Some(host),
        }
    }
    // RFC 9113 §8.3.1: an http or https request names its host; one that
    // does not is malformed, and a server that takes it anyway reads a
    // host from wherever it can (`:path` `//169.254.169.254/…`).
    let Some(host) = named else {
        return Request::Unreadable("an HTTP/2 request that names no host");
    };
    match one_way_host(host) {
        Ok(host) => Request::Names(host),
        Err(why) => Request::Unreadable(why),
    }
}

fn refuse(judge: &mut Judge, why: &str) -> bool {
    judge(RequestHead::Unreadable(why));
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sidecar::request_watch::tests::recording_judge;

    use std::time::Duration;

    use bytes::Bytes;
    use http::Request as HttpRequest;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// What a real HTTP/2 client (the h2 crate: HPACK with its dynamic
    /// table and Huffman strings) writes for `requests` on one connection,
    /// each `(authority, path)`, with a body for the first.
    fn client_bytes(requests: &[(&str, &str)]) -> Vec<u8> {
        let requests: Vec<(String, String)> = requests
            .iter()
            .map(|(a, p)| ((*a).to_owned(), (*p).to_owned()))
            .collect();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let (client_io, mut server_io) = tokio::io::duplex(1 << 20);
            let (mut client, connection) = h2::client::handshake(client_io).await.unwrap();
            tokio::spawn(connection);
            // The server's (empty) SETTINGS: the client sends DATA after it.
            server_io
                .write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0])
                .await
                .unwrap();
            let mut streams = Vec::new();
            for (i, (authority, path)) in requests.iter().enumerate() {
                client = client.ready().await.unwrap();
                let request = HttpRequest::get(format!("http://{authority}{path}"))
                    .header("user-agent", "frame-watch-test")
                    .body(())
                    .unwrap();
                let (response, mut body) = client.send_request(request, i != 0).unwrap();
                if i == 0 {
                    body.send_data(Bytes::from_static(b"a body of DATA"), true)
                        .unwrap();
                }
                // Kept: a stream whose handles are dropped is reset.
                streams.push((response, body));
            }
            let mut written = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(100), server_io.read(&mut buf)).await
            {
                if n == 0 {
                    break;
                }
                written.extend_from_slice(&buf[..n]);
            }
            written
        })
    }

    /// Feeds `bytes` in reads of `size`: how many bytes were let through
    /// (those of the refused read are not).
    fn feed(watch: &mut FrameWatch, judge: &mut Judge, bytes: &[u8], size: usize) -> usize {
        let mut through = 0;
        for read in bytes.chunks(size.max(1)) {
            if !watch.follow(read, judge) {
                return through;
            }
            through += read.len();
        }
        through
    }

    #[test]
    fn every_request_of_a_connection_is_judged_by_its_authority() {
        let bytes = client_bytes(&[
            ("a.example", "/one"),
            ("a.example", "/two"),
            ("b.example:8080", "/three"),
        ]);
        let (mut judge, asked) = recording_judge();
        let mut watch = FrameWatch::default();
        assert_eq!(
            feed(&mut watch, &mut judge, &bytes, bytes.len()),
            bytes.len()
        );
        assert_eq!(
            *asked.lock().unwrap(),
            [
                "Names(Some(\"a.example\"))",
                "Names(Some(\"a.example\"))",
                "Names(Some(\"b.example:8080\"))"
            ]
        );
    }

    #[test]
    fn a_later_stream_naming_the_metadata_api_ends_the_connection_before_its_head_passes() {
        // The second request's `:authority` is in the dynamic table's
        // terms of the first: only a decoder in step reads it.
        let bytes = client_bytes(&[
            ("a.example", "/"),
            ("169.254.169.254", "/latest/meta-data/"),
        ]);
        let (mut judge, asked) = recording_judge();
        let mut watch = FrameWatch::default();
        let through = feed(&mut watch, &mut judge, &bytes, bytes.len());
        assert_eq!(through, 0, "one read holding the head: none of it passes");
        assert_eq!(asked.lock().unwrap().len(), 2);
        // Read by read, the bytes up to the refused head pass, not it.
        let second_headers = find_frames(&bytes, HEADERS)[1];
        let (mut judge, _) = recording_judge();
        let mut watch = FrameWatch::default();
        let through = feed(&mut watch, &mut judge, &bytes, 1);
        assert_eq!(
            through,
            second_headers.1 - 1,
            "all but the head's last byte"
        );
    }

    #[test]
    fn reads_of_any_size_judge_the_same() {
        let bytes = client_bytes(&[
            ("a.example", "/"),
            ("c.example", "/x"),
            ("169.254.169.254", "/latest/meta-data/"),
        ]);
        let last_headers = *find_frames(&bytes, HEADERS).last().unwrap();
        for size in (1..=64).chain([100, 333, 1000]) {
            let (mut judge, asked) = recording_judge();
            let mut watch = FrameWatch::default();
            let through = feed(&mut watch, &mut judge, &bytes, size);
            // The read that completes the third head is refused.
            assert_eq!(
                through,
                (last_headers.1 - 1) / size * size,
                "reads of {size}"
            );
            let asked = asked.lock().unwrap();
            assert_eq!(asked.len(), 3, "reads of {size}: {asked:?}");
            assert_eq!(asked[2], "Names(Some(\"169.254.169.254\"))");
        }
    }

    /// The `(start, end)` of each frame of `kind` in `bytes` (after the
    /// preface).
    fn find_frames(bytes: &[u8], kind: u8) -> Vec<(usize, usize)> {
        let mut at = PREFACE.len();
        let mut found = Vec::new();
        while let Some(head) = Head::parse(&bytes[at..]) {
            if head.kind == kind {
                found.push((at, at + head.frame_len()));
            }
            at += head.frame_len();
        }
        found
    }

    /// A HEADERS frame (END_HEADERS) of stream 1 whose block is `fields`,
    /// each a literal without indexing (RFC 7541 §6.2.2), no Huffman.
    fn headers_frame(fields: &[(&str, &str)]) -> Vec<u8> {
        let mut block = Vec::new();
        for (name, value) in fields {
            block.push(0);
            block.push(u8::try_from(name.len()).unwrap());
            block.extend_from_slice(name.as_bytes());
            block.push(u8::try_from(value.len()).unwrap());
            block.extend_from_slice(value.as_bytes());
        }
        let mut bytes = PREFACE.to_vec();
        bytes.extend_from_slice(&u32::try_from(block.len()).unwrap().to_be_bytes()[1..]);
        bytes.extend_from_slice(&[HEADERS, frame::END_HEADERS | frame::END_STREAM, 0, 0, 0, 1]);
        bytes.extend_from_slice(&block);
        bytes
    }

    /// A head of `fields` ends the connection, the judge told it is
    /// unreadable and `why`.
    fn assert_refused_as_unreadable(fields: &[(&str, &str)], why: &str) {
        let bytes = headers_frame(fields);
        let (mut judge, asked) = recording_judge();
        assert!(
            !FrameWatch::default().follow(&bytes, &mut judge),
            "{fields:?}"
        );
        let asked = asked.lock().unwrap();
        assert!(
            asked.len() == 1 && asked[0].starts_with("Unreadable") && asked[0].contains(why),
            "{fields:?}: {asked:?}"
        );
    }

    #[test]
    fn heads_that_name_a_host_two_ways_or_none_readable_are_refused() {
        let get = [(":method", "GET"), (":scheme", "http")];
        for (fields, why) in [
            (
                vec![
                    (":authority", "a.example"),
                    (":path", "/"),
                    ("host", "169.254.169.254"),
                ],
                "names two hosts",
            ),
            (
                vec![(":path", "http://169.254.169.254/"), ("host", "a.example")],
                "no path",
            ),
            (
                vec![
                    (":authority", "a.example\\@169.254.169.254"),
                    (":path", "/"),
                ],
                "host[:port]",
            ),
            (
                vec![(":authority", "169.254.169.254:80x"), (":path", "/")],
                "host[:port]",
            ),
            (
                vec![
                    (":authority", "a.example"),
                    (":path", "/"),
                    (":authority", "b.example"),
                ],
                "malformed",
            ),
        ] {
            assert_refused_as_unreadable(&[&get[..], &fields].concat(), why);
        }
        // `host` alone names the host (RFC 9113 §8.3.1); the same host
        // twice is one.
        for fields in [
            vec![(":path", "/"), ("host", "169.254.169.254")],
            vec![
                (":authority", "169.254.169.254"),
                (":path", "/"),
                ("host", "169.254.169.254"),
            ],
        ] {
            let bytes = headers_frame(&[&get[..], &fields].concat());
            let (mut judge, asked) = recording_judge();
            let mut watch = FrameWatch::default();
            assert!(!watch.follow(&bytes, &mut judge));
            assert_eq!(*asked.lock().unwrap(), ["Names(Some(\"169.254.169.254\"))"]);
        }
    }

    #[test]
    fn an_empty_continuation_that_completes_a_head_is_judged_with_it() {
        // HEADERS without END_HEADERS naming the metadata API, then an
        // empty CONTINUATION with END_HEADERS, each in a read of its own.
        let whole = headers_frame(&[
            (":method", "GET"),
            (":scheme", "http"),
            (":authority", "169.254.169.254"),
            (":path", "/"),
        ]);
        let mut headers = whole.clone();
        headers[PREFACE.len() + 4] = frame::END_STREAM;
        let continuation = [0, 0, 0, CONTINUATION, frame::END_HEADERS, 0, 0, 0, 1];
        let (mut judge, asked) = recording_judge();
        let mut watch = FrameWatch::default();
        assert!(watch.follow(&headers, &mut judge), "not a whole head yet");
        assert!(!watch.follow(&continuation, &mut judge));
        assert_eq!(*asked.lock().unwrap(), ["Names(Some(\"169.254.169.254\"))"]);
    }

    #[test]
    fn other_places_a_server_could_take_a_target_from_are_refused() {
        for fields in [
            // A URL rebuilt as `{scheme}://{authority}{path}`.
            vec![
                (":method", "GET"),
                (":scheme", "http://169.254.169.254/#"),
                (":authority", "a.example"),
                (":path", "/"),
            ],
            // No host at all: a lenient server reads one from `:path`.
            vec![
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "//169.254.169.254/latest/meta-data/"),
            ],
            // MASQUE's target is in its path.
            vec![
                (":method", "CONNECT"),
                (":protocol", "connect-tcp"),
                (":scheme", "https"),
                (":authority", "proxy.example"),
                (":path", "/.well-known/masque/tcp/169.254.169.254/80/"),
            ],
        ] {
            assert_refused_as_unreadable(&fields, "");
        }
        // WebSocket over HTTP/2 (RFC 8441) is judged by its authority.
        let bytes = headers_frame(&[
            (":method", "CONNECT"),
            (":protocol", "websocket"),
            (":scheme", "https"),
            (":authority", "a.example"),
            (":path", "/chat"),
        ]);
        let (mut judge, asked) = recording_judge();
        assert!(FrameWatch::default().follow(&bytes, &mut judge));
        assert_eq!(*asked.lock().unwrap(), ["Names(Some(\"a.example\"))"]);
    }

    #[test]
    fn what_is_no_http2_within_the_defaults_ends_the_connection() {
        let (mut judge, _) = recording_judge();
        assert!(!FrameWatch::default().follow(b"PRI * HTTP/1.1\r\n", &mut judge));
        // A header frame larger than the default frame size.
        let mut big = PREFACE.to_vec();
        big.extend_from_slice(&[0, 0x40, 0x01, HEADERS, frame::END_HEADERS, 0, 0, 0, 1]);
        let (mut judge, asked) = recording_judge();
        assert!(!FrameWatch::default().follow(&big, &mut judge));
        assert!(asked.lock().unwrap()[0].contains("16 KiB"));
        // A table size update over 4 096: HPACK's state is lost.
        let mut resize = PREFACE.to_vec();
        resize.extend_from_slice(&[0, 0, 3, HEADERS, frame::END_HEADERS, 0, 0, 0, 1]);
        resize.extend_from_slice(&[0x3f, 0xe1, 0x3f]); // size update to 8 192
        let (mut judge, asked) = recording_judge();
        assert!(!FrameWatch::default().follow(&resize, &mut judge));
        assert!(asked.lock().unwrap()[0].contains("does not decode"));
        // A client's PUSH_PROMISE.
        let mut push = PREFACE.to_vec();
        push.extend_from_slice(&[
            0,
            0,
            4,
            PUSH_PROMISE,
            frame::END_HEADERS,
            0,
            0,
            0,
            1,
            0,
            0,
            0,
            2,
        ]);
        let (mut judge, asked) = recording_judge();
        assert!(!FrameWatch::default().follow(&push, &mut judge));
        assert!(asked.lock().unwrap()[0].contains("PUSH_PROMISE"));
    }

    #[test]
    fn other_frames_pass_unread_and_trailers_are_no_request() {
        // A DATA frame whose payload is a HEADERS frame naming the
        // metadata API is a body.
        let inner = &headers_frame(&[
            (":method", "GET"),
            (":scheme", "http"),
            (":authority", "169.254.169.254"),
            (":path", "/"),
        ])[PREFACE.len()..];
        let mut bytes = PREFACE.to_vec();
        bytes.extend_from_slice(&u32::try_from(inner.len()).unwrap().to_be_bytes()[1..]);
        bytes.extend_from_slice(&[frame::DATA, 0, 0, 0, 0, 1]);
        bytes.extend_from_slice(inner);
        // Trailers (an empty block here) name no host.
        bytes.extend_from_slice(&[
            0,
            0,
            0,
            HEADERS,
            frame::END_HEADERS | frame::END_STREAM,
            0,
            0,
            0,
            1,
        ]);
        let (mut judge, asked) = recording_judge();
        for size in [1, 5, bytes.len()] {
            let mut watch = FrameWatch::default();
            assert_eq!(feed(&mut watch, &mut judge, &bytes, size), bytes.len());
        }
        assert!(asked.lock().unwrap().is_empty());
        // A real client's body and settings pass as well.
        let bytes = client_bytes(&[("a.example", "/")]);
        assert_eq!(
            find_frames(&bytes, frame::DATA).len(),
            1,
            "the request has a body"
        );
        let mut watch = FrameWatch::default();
        assert!(watch.follow(&bytes, &mut judge));
        assert_eq!(asked.lock().unwrap().len(), 1);
    }
}
