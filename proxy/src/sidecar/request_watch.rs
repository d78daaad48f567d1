//! Every request of a plaintext HTTP/1 connection that leaves the mesh by
//! its address, watched for the host it names.
//!
//! A forward proxy allowed by `external.cidrs` goes wherever each request
//! on its connection names, and clients keep such connections open: an
//! app that fetched one URL through the proxy fetches the next, the one an
//! SSRF chose (`GET http://169.254.169.254/latest/meta-data/…`), on the
//! same connection. The connection's first request is decided before any
//! byte moves ([`super::outbound`]); this reads the app's side as it
//! passes and decides every later request the same way, as its head
//! completes, before the bytes that complete it are sent.
//!
//! Design bias: *nothing is forwarded that was not read as what it is*.
//! Bodies are skipped by their framing ([`framing`]: `content-length`, or
//! chunked, trailers refused); a head that could be read two ways
//! ([`head_host`]), that does not parse, or is no HTTP/1 at all where a
//! request must begin, ends the connection. After a `CONNECT` or an
//! `Upgrade` request, bytes that are no HTTP/1 request (a TLS ClientHello,
//! WebSocket frames) are a tunnel to the host the request named, decided:
//! the watch ends there; a request instead (the proxy refused the tunnel
//! and kept the connection) is judged as any. Where a request must begin,
//! the HTTP/2 preface (prior knowledge, or after `Upgrade: h2c`) hands the
//! connection to [`FrameWatch`], which judges every stream's head alike.
//! Responses are not read: they pass as they come.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use tokio::io::{AsyncRead, ReadBuf};

use super::frame_watch::FrameWatch;
use super::http::h1::framing::{self, BodyLength, Chunked};
use super::splice::{Abort, Chunks};
use crate::detect::{self, Classification, FirstLine, MAX_DETECT_BYTES};
use crate::head_host::{HeadHost, head_host, request_line_verdict};

/// What a request head was found to be, for the connection's judge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head<'a> {
    /// A head that names this host (`None`: none, HTTP/1.0 without `Host`).
    Names(Option<&'a str>),
    /// A head that cannot be read one way only, or no head at all; why.
    Unreadable(&'a str),
}

/// Decides a later request by its head: `true` lets it go on. Called once
/// per request, the connection's first one excepted (decided before).
pub type Judge = Box<dyn FnMut(Head<'_>) -> bool + Send>;

/// The app's side of such a connection: reads pass through, each request
/// head is judged as it completes, and a read that completes a head the
/// judge refuses fails (`ConnectionAborted`), its bytes unsent.
pub struct RequestWatch<S> {
    inner: S,
    state: State,
    /// The connection's first head is not judged again.
    first: bool,
    /// The current head's request line has ended and was found well
    /// formed (so it is not read again at each read).
    line_checked: bool,
    judge: Judge,
}

#[derive(Debug)]
enum State {
    /// A request head, this much of it so far.
    Head(Vec<u8>),
    /// A `content-length` body, this many bytes left.
    Body(u64),
    Chunked(Chunked),
    /// After `CONNECT` or `Upgrade` (or at the start of a connection whose
    /// first bytes were not read before), these first bytes so far: a tunnel
    /// if they are no HTTP/1 request (a TLS ClientHello, WebSocket
    /// frames), the next request if they are one (the proxy refused the
    /// tunnel and kept the connection).
    MaybeTunnel(Vec<u8>),
    /// Cleartext HTTP/2: its frames followed, each request head judged.
    Frames(Box<FrameWatch>),
    /// A tunnel: no longer watched.
    Tunnel,
    /// A head was refused.
    Refused,
}

/// What to watch a connection with.
pub struct Watch {
    pub judge: Judge,
    /// The connection's first request was read and decided before it was
    /// let through: it is not judged again. Otherwise its first bytes came
    /// too late to be read before (or were no HTTP): if they turn out to
    /// be a request, it is judged like the later ones.
    pub first_decided: bool,
}

impl<S> RequestWatch<S> {
    /// Watches `inner`'s requests; `None`: passes it as it is.
    pub fn new(inner: S, watch: Option<Watch>) -> Self {
        let (state, first, judge) = match watch {
            Some(Watch {
                judge,
                first_decided: true,
            }) => (State::Head(Vec::new()), true, judge),
            Some(Watch {
                judge,
                first_decided: false,
            }) => (State::MaybeTunnel(Vec::new()), false, judge),
            None => (State::Tunnel, false, Box::new(|_: Head<'_>| true) as Judge),
        };
        RequestWatch {
            inner,
            state,
            first,
            line_checked: false,
            judge,
        }
    }

    /// Follows `bytes`, the next the app sent; `false` when they complete
    /// a head the judge refuses (or that no one can read).
    fn follow(&mut self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() {
            match &mut self.state {
                State::Tunnel => return true,
                State::Refused => return false,
                State::Frames(frames) => {
                    if frames.follow(bytes, &mut self.judge) {
                        return true;
                    }
                    self.state = State::Refused;
                    return false;
                }
                State::MaybeTunnel(first) => {
                    let before = first.len();
                    let room = MAX_DETECT_BYTES.saturating_sub(before);
                    first.extend_from_slice(&bytes[..bytes.len().min(room)]);
                    match after_tunnel_request(first) {
                        AfterTunnelRequest::Request => {
                            // A request after all: read as one, from its
                            // first byte (these bytes are read again).
                            first.truncate(before);
                            self.state = State::Head(std::mem::take(first));
                        }
                        AfterTunnelRequest::Http2 => {
                            // HTTP/2: followed from the preface's first
                            // byte (these bytes are read again).
                            first.truncate(before);
                            let earlier = std::mem::take(first);
                            let mut frames = Box::<FrameWatch>::default();
                            if !frames.follow(&earlier, &mut self.judge) {
                                self.state = State::Refused;
                                return false;
                            }
                            self.state = State::Frames(frames);
                        }
                        AfterTunnelRequest::Undecided => return true,
                        AfterTunnelRequest::Tunnel => self.state = State::Tunnel,
                    }
                }
                State::Body(left) => {
                    let n = bytes
                        .len()
                        .min(usize::try_from(*left).unwrap_or(usize::MAX));
                    *left -= n as u64;
                    bytes = &bytes[n..];
                    if *left == 0 {
                        self.state = State::Head(Vec::new());
                    }
                }
                State::Chunked(chunked) => match chunked.advance(bytes) {
                    Ok(n) => {
                        bytes = &bytes[n..];
                        if chunked.is_done() {
                            self.state = State::Head(Vec::new());
                        }
                    }
                    Err(e) => return self.refuse(&e.to_string()),
                },
                State::Head(head) => {
                    let before = head.len();
                    let room = (MAX_DETECT_BYTES + 1).saturating_sub(before);
                    head.extend_from_slice(&bytes[..bytes.len().min(room)]);
                    let Some(end) = head_end(head, before) else {
                        if head.len() > MAX_DETECT_BYTES {
                            return self.refuse("a request head over 16 KiB");
                        }
                        // A line a server runs before any blank line
                        // (HTTP/0.9) is refused as soon as it ends.
                        if !self.line_checked {
                            match request_line_verdict(head) {
                                Some(Err(why)) => return self.refuse(why),
                                Some(Ok(())) => self.line_checked = true,
                                None => {}
                            }
                        }
                        return true;
                    };
                    self.line_checked = false;
                    let head = std::mem::take(head);
                    bytes = &bytes[(end - before).min(bytes.len())..];
                    if !self.next_state(&head[..end]) {
                        return false;
                    }
                }
            }
        }
        true
    }

    /// Judges the complete head `head` and sets what follows it.
    fn next_state(&mut self, head: &[u8]) -> bool {
        let named = match head_host(head) {
            HeadHost::Named(host) => Some(host),
            HeadHost::Unnamed => None,
            HeadHost::Ambiguous(why) => return self.refuse(why),
            HeadHost::Incomplete | HeadHost::NotHttp1 => {
                return self.refuse("bytes that are no HTTP/1 request where one must begin");
            }
        };
        let mut fields = [httparse::EMPTY_HEADER; 128];
        let mut request = httparse::Request::new(&mut fields);
        if !matches!(request.parse(head), Ok(httparse::Status::Complete(_))) {
            return self.refuse("a request head that does not parse");
        }
        let mut upgrades = request
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("upgrade"))
            .peekable();
        let tunnel = request.method == Some("CONNECT") || upgrades.peek().is_some();
        // A protocol that names its target in the request's path
        // (`connect-udp`, `connect-tcp`: MASQUE) goes where no host check
        // looked.
        if upgrades.any(|h| !upgrade_names_no_other_target(h.value)) {
            return self.refuse("an Upgrade to a protocol other than websocket or h2c");
        }
        let body = framing::framing(request.headers.iter().map(|h| (h.name, h.value)), true);
        let body = match body {
            Ok((body, _)) => body,
            Err(e) => return self.refuse(&e.to_string()),
        };
        // After such a request its body would be read as a tunnel's first
        // bytes, where a proxy that did not switch reads it as a body and
        // then the next request.
        if tunnel && !matches!(body, BodyLength::Empty | BodyLength::Length(0)) {
            return self.refuse("a CONNECT or Upgrade request with a body");
        }
        let first = std::mem::replace(&mut self.first, false);
        if !first && !(self.judge)(Head::Names(named)) {
            self.state = State::Refused;
            return false;
        }
        self.state = match body {
            _ if tunnel => State::MaybeTunnel(Vec::new()),
            BodyLength::Length(n) if n > 0 => State::Body(n),
            BodyLength::Chunked => State::Chunked(Chunked::for_request()),
            _ => State::Head(Vec::new()),
        };
        true
    }

    fn refuse(&mut self, why: &str) -> bool {
        self.state = State::Refused;
        (self.judge)(Head::Unreadable(why));
        false
    }
}

/// What the first bytes after a `CONNECT` or `Upgrade` request (or at the
/// start of a connection whose first bytes were not read before) are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterTunnelRequest {
    /// An HTTP/1 request (the proxy refused the tunnel, or never switched):
    /// judged as any.
    Request,
    /// The HTTP/2 preface: its frames are followed.
    Http2,
    /// Bytes no server reads as a request (TLS, WebSocket frames, a
    /// server-first protocol's client): a tunnel, no longer watched.
    Tunnel,
    /// Not decided yet by these bytes.
    Undecided,
}

/// Decides what `first` is (see [`AfterTunnelRequest`]), failing closed:
/// only bytes that *cannot* begin a request line a lenient server reads
/// (`detect::first_line`) are a tunnel. So a method split across writes
/// (`PROPF` + `IND http://…`) waits for its line, and blank lines up to the
/// 16 KiB looked at are a request's (servers skip them).
fn after_tunnel_request(first: &[u8]) -> AfterTunnelRequest {
    let class = if first.len() >= MAX_DETECT_BYTES {
        detect::classify_final(first)
    } else {
        detect::classify(first)
    };
    match class {
        Classification::Http1 => AfterTunnelRequest::Request,
        Classification::Http2Preface => AfterTunnelRequest::Http2,
        Classification::TlsClientHello(_) | Classification::TlsUnreadable(_) => {
            AfterTunnelRequest::Tunnel
        }
        Classification::NeedMore => AfterTunnelRequest::Undecided,
        Classification::Opaque => match detect::first_line(first) {
            FirstLine::RequestLine => AfterTunnelRequest::Request,
            FirstLine::NotRequestLine => AfterTunnelRequest::Tunnel,
            FirstLine::Undecided => AfterTunnelRequest::Undecided,
        },
    }
}

/// Whether an `Upgrade` value names only protocols whose target is the
/// request's host: WebSocket, and HTTP/2 (`h2c`).
fn upgrade_names_no_other_target(value: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .all(|protocol| {
            protocol.eq_ignore_ascii_case(b"websocket") || protocol.eq_ignore_ascii_case(b"h2c")
        })
}

/// Where the head in `bytes` ends (after its blank line: CRLF CRLF, or a
/// bare LF's LF LF), if it does, looking only from about `seen` (the
/// bytes before it were looked at already: a head sent a byte at a time
/// costs its length, not its square). Blank lines before a request line
/// are part of the head, as servers skip them.
fn head_end(bytes: &[u8], seen: usize) -> Option<usize> {
    let start = bytes
        .iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count();
    // A blank line ending in the new bytes may begin two bytes before.
    let from = start.max(seen.saturating_sub(2));
    let rest = &bytes[from..];
    rest.windows(2)
        .enumerate()
        .find_map(|(i, w)| match w {
            b"\n\n" => Some(i + 2),
            b"\n\r" if rest.get(i + 2) == Some(&b'\n') => Some(i + 3),
            _ => None,
        })
        .map(|end| from + end)
}

impl<S: AsyncRead + Unpin> AsyncRead for RequestWatch<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if matches!(self.state, State::Refused) {
            return Poll::Ready(Err(refused()));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let this = &mut *self;
        if !this.follow(&buf.filled()[before..]) {
            buf.set_filled(before);
            return Poll::Ready(Err(refused()));
        }
        Poll::Ready(Ok(()))
    }
}

fn refused() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "a request refused on a connection outside the mesh",
    )
}

super::forward_async_write!(RequestWatch, inner);

impl<S: Abort> Abort for RequestWatch<S> {
    fn abort(&mut self) {
        self.inner.abort();
    }
}

/// While requests are watched, reads go through `poll_read`; after a
/// tunnel began, chunks pass.
impl<S: Chunks> Chunks for RequestWatch<S> {
    fn poll_read_chunk(&mut self, cx: &mut Context<'_>) -> Option<Poll<io::Result<Bytes>>> {
        match self.state {
            State::Tunnel => self.inner.poll_read_chunk(cx),
            _ => None,
        }
    }

    super::forward_chunk_writes!(inner);
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    use std::sync::{Arc, Mutex};

    use proptest::prelude::*;

    /// A watch whose judge records what it was asked and refuses any head
    /// naming `169.254.169.254`.
    fn watch() -> (RequestWatch<()>, Arc<Mutex<Vec<String>>>) {
        let (judge, asked) = recording_judge();
        let watch = Watch {
            judge,
            first_decided: true,
        };
        (RequestWatch::new((), Some(watch)), asked)
    }

    /// A judge that records what it was asked (also for
    /// `frame_watch`'s tests) and refuses any head naming
    /// `169.254.169.254`.
    pub(crate) fn recording_judge() -> (Judge, Arc<Mutex<Vec<String>>>) {
        let asked = Arc::new(Mutex::new(Vec::new()));
        let seen = asked.clone();
        let judge: Judge = Box::new(move |head| {
            seen.lock().unwrap().push(format!("{head:?}"));
            match head {
                Head::Names(Some(host)) => !host.starts_with("169.254.169.254"),
                Head::Names(None) => true,
                Head::Unreadable(_) => false,
            }
        });
        (judge, asked)
    }

    /// Feeds `chunks` one read at a time: how many were let through.
    fn feed(watch: &mut RequestWatch<()>, chunks: &[&[u8]]) -> usize {
        chunks.iter().take_while(|c| watch.follow(c)).count()
    }

    const FIRST: &[u8] = b"GET http://a.example/ HTTP/1.1\r\nHost: a.example\r\n\r\n";

    /// The HTTP/2 preface and a HEADERS frame of stream 1, `GET
    /// http://169.254.169.254/` (HPACK: three static entries and a literal
    /// `:authority`).
    fn h2_metadata_request() -> Vec<u8> {
        let mut bytes = crate::sidecar::http::relay::frame::PREFACE.to_vec();
        bytes.extend_from_slice(&[0, 0, 20, 0x1, 0x5, 0, 0, 0, 1]);
        bytes.extend_from_slice(&[0x82, 0x86, 0x84, 0x01, 15]);
        bytes.extend_from_slice(b"169.254.169.254");
        bytes
    }

    #[test]
    fn a_connect_or_upgrade_request_with_a_body_is_refused() {
        // Its body would be taken for a tunnel's first bytes, where a proxy
        // that did not switch reads a body, then the next request.
        let websocket = b"POST http://a.example/ HTTP/1.1\r\nHost: a.example\r\n\
            Upgrade: websocket\r\nContent-Length: 5\r\n\r\n";
        let h2c = b"POST http://a.example/ HTTP/1.1\r\nHost: a.example\r\nUpgrade: h2c\r\n\
            Connection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\
            Transfer-Encoding: chunked\r\n\r\n";
        for opening in [&websocket[..], h2c] {
            let (mut w, asked) = watch();
            assert_eq!(
                feed(&mut w, &[FIRST, opening, b"\x16\x03\x01\x00\x00", METADATA]),
                1
            );
            assert!(
                asked.lock().unwrap()[0].contains("with a body"),
                "{asked:?}"
            );
        }
        // And an Upgrade to a protocol whose target is in the path.
        let masque = b"GET /.well-known/masque/udp/169.254.169.254/53/ HTTP/1.1\r\n\
            Host: a.example\r\nUpgrade: connect-udp\r\nConnection: Upgrade\r\n\r\n";
        let (mut w, _) = watch();
        assert_eq!(feed(&mut w, &[FIRST, masque]), 1);
    }

    #[test]
    fn only_bytes_that_cannot_begin_a_request_are_a_tunnel() {
        let ignored_upgrade =
            b"GET http://a.example/ HTTP/1.1\r\nHost: a.example\r\nUpgrade: websocket\r\n\r\n";
        // A method split across writes waits for its line.
        let (mut w, asked) = watch();
        let split = [
            FIRST,
            ignored_upgrade,
            b"PROPF",
            b"IND http://169.254.169.254/ HTTP/1.1\r\nHost: a.example\r\n\r\n",
        ];
        assert_eq!(feed(&mut w, &split), 3, "{asked:?}");
        // Blank lines that fill what is looked at are a request's (servers
        // skip them), on a connection's late first bytes too.
        let blanks = b"\r\n".repeat(MAX_DETECT_BYTES);
        let (mut w, _) = watch();
        (w.state, w.first) = (State::MaybeTunnel(Vec::new()), false);
        assert!(feed(&mut w, &[&blanks, METADATA]) < 2);
        let (mut w, _) = watch();
        assert!(feed(&mut w, &[FIRST, ignored_upgrade, &blanks, METADATA]) < 4);
        // WebSocket frames and TLS are a tunnel.
        for tunnel in [
            &b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"[..],
            b"\x16\x03\x01\x00\x05",
        ] {
            let (mut w, _) = watch();
            assert_eq!(feed(&mut w, &[FIRST, ignored_upgrade, tunnel, METADATA]), 4);
        }
    }

    #[test]
    fn cleartext_http2_is_followed_stream_by_stream() {
        let h2 = h2_metadata_request();
        // Prior knowledge: the connection's first bytes.
        let (mut w, asked) = watch();
        (w.state, w.first) = (State::MaybeTunnel(Vec::new()), false);
        assert_eq!(feed(&mut w, &[&h2[..10], &h2[10..30], &h2[30..]]), 2);
        assert_eq!(*asked.lock().unwrap(), ["Names(Some(\"169.254.169.254\"))"]);
        // After `Upgrade: h2c`, on a connection whose first request passed.
        let upgrade = b"GET http://a.example/ HTTP/1.1\r\nHost: a.example\r\nUpgrade: h2c\r\n\
            Connection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n";
        let (mut w, asked) = watch();
        assert_eq!(feed(&mut w, &[FIRST, upgrade, &h2]), 2);
        assert_eq!(asked.lock().unwrap().len(), 2);
        assert!(matches!(w.state, State::Refused));
    }
    const METADATA: &[u8] =
        b"GET http://169.254.169.254/latest/meta-data/ HTTP/1.1\r\nHost: a.example\r\n\r\n";

    #[test]
    fn a_later_request_naming_the_metadata_api_is_refused() {
        let (mut w, asked) = watch();
        assert_eq!(feed(&mut w, &[FIRST, FIRST, METADATA, FIRST]), 2);
        // The first head is not judged again; the second and third are.
        assert_eq!(asked.lock().unwrap().len(), 2);
        assert!(matches!(w.state, State::Refused));
    }

    #[test]
    fn bodies_are_skipped_by_their_framing_not_read_as_requests() {
        // A body that is a request line is the body.
        let post = format!(
            "POST http://a.example/ HTTP/1.1\r\nHost: a.example\r\ncontent-length: {}\r\n\r\n",
            METADATA.len()
        );
        let (mut w, asked) = watch();
        assert_eq!(feed(&mut w, &[FIRST, post.as_bytes(), METADATA, FIRST]), 4);
        assert_eq!(asked.lock().unwrap().len(), 2, "{asked:?}");
        let chunked =
            b"POST http://a.example/ HTTP/1.1\r\nHost: a.example\r\ntransfer-encoding: chunked\r\n\r\n";
        let body = [
            format!("{:x}\r\n", METADATA.len()).as_bytes(),
            METADATA,
            b"\r\n0\r\n\r\n",
        ]
        .concat();
        let (mut w, _) = watch();
        assert_eq!(feed(&mut w, &[FIRST, chunked, &body, FIRST]), 4);
        // And after the body, the next head is judged.
        assert_eq!(feed(&mut w, &[METADATA]), 0);
    }

    #[test]
    fn a_head_split_across_reads_is_judged_when_it_completes() {
        let (mut w, _) = watch();
        assert_eq!(feed(&mut w, &[FIRST]), 1);
        let (a, b) = METADATA.split_at(40);
        assert!(w.follow(a), "a head is not judged before it ends");
        assert!(!w.follow(b));
        // Two requests in one read (pipelined): the second is judged too.
        let (mut w, _) = watch();
        assert!(!w.follow(&[FIRST, FIRST, METADATA].concat()));
    }

    #[test]
    fn what_cannot_be_read_one_way_ends_the_connection() {
        for later in [
            &b"GET\thttp://169.254.169.254/\tHTTP/1.1\r\nHost: a.example\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: a.example\r\nX: a\r\n b\r\n\r\n",
            b"\x16\x03\x01\x00\x05hello\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a.example\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a.example\r\ntransfer-encoding: gzip\r\n\r\n",
        ] {
            let (mut w, asked) = watch();
            assert_eq!(feed(&mut w, &[FIRST, later]), 1, "{later:?}");
            let asked = asked.lock().unwrap();
            assert!(asked.last().unwrap().starts_with("Unreadable"), "{asked:?}");
        }
        let (mut w, _) = watch();
        let endless = [&b"GET / HTTP/1.1\r\nX: "[..], &vec![b'a'; MAX_DETECT_BYTES]].concat();
        assert_eq!(feed(&mut w, &[FIRST, &endless]), 1);
    }

    #[test]
    fn after_connect_or_upgrade_the_bytes_are_a_tunnel() {
        for opening in [
            &b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n"[..],
            b"GET http://a.example/ws HTTP/1.1\r\nHost: a.example\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
        ] {
            let (mut w, _) = watch();
            assert_eq!(feed(&mut w, &[FIRST, opening, b"\x16\x03\x01 tls", METADATA]), 4);
        }
        // A tunnel refused, the connection kept: the next request is one.
        let connect = b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n";
        let (mut w, _) = watch();
        assert_eq!(feed(&mut w, &[FIRST, connect, METADATA]), 2);
        let (mut w, _) = watch();
        let (a, b) = METADATA.split_at(2);
        assert_eq!(feed(&mut w, &[FIRST, connect, a, b]), 3);
        // An Upgrade the proxy ignores: the next request is one.
        let upgrade: &[u8] =
            b"GET http://a.example/ HTTP/1.1\r\nHost: a.example\r\nUpgrade: websocket\r\n\r\n";
        let (mut w, _) = watch();
        assert_eq!(feed(&mut w, &[FIRST, upgrade, METADATA]), 2);
        // The CONNECT itself is judged.
        let (mut w, _) = watch();
        assert_eq!(
            feed(
                &mut w,
                &[FIRST, b"CONNECT 169.254.169.254:80 HTTP/1.1\r\n\r\n"]
            ),
            1
        );
    }

    #[test]
    fn a_line_a_server_runs_before_any_blank_line_is_refused_when_it_ends() {
        for line in [
            &b"GET http://169.254.169.254/latest/meta-data/\r\n"[..],
            b"GET http://169.254.169.254/latest/meta-data/ \r\n",
            b"GET http://169.254.169.254/latest/meta-data/ ICY/1.0\r\n",
        ] {
            let (mut w, asked) = watch();
            assert_eq!(feed(&mut w, &[FIRST, line]), 1, "{line:?}");
            assert!(asked.lock().unwrap()[0].starts_with("Unreadable"));
        }
        // A request line as it should be waits for its head.
        let (mut w, _) = watch();
        assert_eq!(
            feed(&mut w, &[FIRST, b"GET http://a.example/ HTTP/1.1\r\n"]),
            2
        );
    }

    #[test]
    fn head_end_finds_the_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nx", 0), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\nx", 0), Some(16));
        assert_eq!(head_end(b"\r\nGET / HTTP/1.1\r\n\r\n", 0), Some(20));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n", 0), None);
        // Where the new bytes begin (before the end) does not change
        // where the head ends.
        let head = b"GET / HTTP/1.1\r\nA: b\r\n\r\n";
        for seen in 0..head.len() {
            assert_eq!(head_end(head, seen), Some(head.len()), "{seen}");
        }
    }

    proptest! {
        /// However the bytes are cut into reads, the same requests are
        /// judged and the same verdict reached.
        #[test]
        fn reads_cut_anywhere_reach_the_same_verdict(cuts in prop::collection::vec(0usize..400, 0..8)) {
            let post = &b"POST http://a.example/ HTTP/1.1\r\nHost: a.example\r\ncontent-length: 5\r\n\r\nhello"[..];
            let stream = [FIRST, post, FIRST, METADATA, FIRST].concat();
            let (mut whole, whole_asked) = watch();
            let whole_ok = whole.follow(&stream);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(stream.len())).collect();
            cuts.sort_unstable();
            let (mut pieces, pieces_asked) = watch();
            let mut start = 0;
            let mut ok = true;
            for cut in cuts.into_iter().chain([stream.len()]) {
                ok = pieces.follow(&stream[start..cut]);
                start = cut;
                if !ok {
                    break;
                }
            }
            prop_assert_eq!(ok, whole_ok);
            prop_assert_eq!(&*pieces_asked.lock().unwrap(), &*whole_asked.lock().unwrap());
        }
    }
}
