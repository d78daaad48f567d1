//! Protocol detection: what a connection is, from its first bytes.
//!
//! The inbound listener peeks (never reads) the start of each connection to
//! decide how to treat it: an `appid/1` TLS ClientHello is a peer sidecar; a
//! plain HTTP/1 request, an HTTP/2 preface, other TLS or anything else comes
//! from outside the mesh (DESIGN.md "Between sidecars"). Peeking leaves the
//! bytes in the socket, so the TLS stack or the forwarder that takes over
//! reads the connection from its first byte.
//!
//! Design bias: *correct before fast, and never more trusting than the
//! bytes*. Unlike linkerd2-proxy's HTTP detection, which biases towards
//! availability and decides from a single read, this module waits (up to a
//! timeout and a byte cap) for a complete ClientHello, because its SNI and
//! ALPN decide mesh membership and external-host matching, and a guess there
//! would be a security decision. Every uncertain outcome (a stall, a
//! malformed or oversized hello, unknown bytes) lands on a variant that the
//! caller treats as "outside the mesh", which policy denies by default. A
//! slow client costs latency bounded by the timeout, never a wrong identity.
//!
//! [`classify`] is pure and total: any byte slice gives an answer without
//! panicking. [`detect`] drives it over a [`TcpStream`] with `peek`.

use std::io;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

/// The most bytes classification ever needs: one full TLS record (16 KiB
/// payload) holds any ClientHello real clients send (post-quantum key shares
/// included, about 1.8 KiB). A hello that has not been read by then is
/// reported as [`TlsUnreadable::TooLarge`] rather than waited for.
pub const MAX_DETECT_BYTES: usize = 16 * 1024;

/// ALPN protocol between sidecars (DESIGN.md "Between sidecars").
pub const ALPN_APPID: &[u8] = b"appid/1";
/// ALPN protocol for multiplexed connections between sidecars.
pub const ALPN_APPID_MUX: &[u8] = b"appid-mux/1";

/// The HTTP/2 client connection preface (RFC 9113 section 3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Request methods that decide "HTTP/1" as soon as a space follows them
/// (the common case, without waiting for the rest of the request line).
/// Any other token is HTTP/1 too, once a target and `HTTP/` follow.
/// Methods are case-sensitive (RFC 9110 section 9.1).
const HTTP1_METHODS: [&[u8]; 9] = [
    b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE", b"PATCH",
];

/// How long to wait before peeking again when a peek saw no new bytes, at
/// first; each further look that sees nothing new waits twice as long, up
/// to [`MAX_REPEEK_PAUSE`]. `peek` leaves the socket readable, so without a
/// pause a client that sends half a ClientHello and stalls would spin a
/// core until the timeout; with a fixed pause, thousands of such clients
/// would still cost each a 16 KiB peek 200 times a second.
const REPEEK_PAUSE: Duration = Duration::from_millis(5);
/// The longest pause between two looks at a stalled client's bytes.
const MAX_REPEEK_PAUSE: Duration = Duration::from_millis(160);

/// What a byte prefix of a connection is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Classification {
    /// Not enough bytes yet to decide; peek again.
    NeedMore,
    /// A complete, well-formed TLS ClientHello.
    TlsClientHello(ClientHelloInfo),
    /// A TLS handshake record whose ClientHello could not be read.
    TlsUnreadable(TlsUnreadable),
    /// An HTTP/1 request line: a known method and a space (or tab), or any
    /// token, a target and `HTTP/` (after any leading CR, LF, spaces and
    /// tabs).
    Http1,
    /// The HTTP/2 connection preface (prior knowledge, cleartext).
    Http2Preface,
    /// Anything else: treat as opaque TCP.
    Opaque,
}

/// Why a connection that starts like TLS gave no ClientHello details.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsUnreadable {
    /// The ClientHello is larger than [`MAX_DETECT_BYTES`].
    TooLarge,
    /// No more bytes will be looked at (the peek limit or the end of input)
    /// and the ClientHello is not complete.
    Truncated,
    /// The ClientHello breaks the TLS encoding rules (bad lengths, trailing
    /// bytes, a repeated SNI or ALPN extension, an empty ALPN protocol).
    Malformed,
}

/// What a ClientHello says about where it is going.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientHelloInfo {
    /// The `host_name` of the server_name extension, when sent. Always
    /// ASCII; compared case-insensitively by whoever matches it.
    pub sni: Option<String>,
    /// The ALPN protocols offered, in the client's order (raw bytes:
    /// protocol IDs need not be UTF-8).
    pub alpn: Vec<Vec<u8>>,
}

/// Which sidecar-to-sidecar ALPN protocols a ClientHello offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeshAlpn {
    /// Neither: the connection is not from a peer sidecar.
    NotOffered,
    /// `appid/1` only.
    Appid,
    /// `appid-mux/1` only.
    AppidMux,
    /// Both; the TLS server picks.
    Both,
}

impl ClientHelloInfo {
    /// Whether the client offers `protocol` in ALPN.
    #[must_use]
    pub fn offers(&self, protocol: &[u8]) -> bool {
        self.alpn.iter().any(|p| p == protocol)
    }

    /// Which mesh protocols are offered.
    #[must_use]
    pub fn mesh_alpn(&self) -> MeshAlpn {
        match (self.offers(ALPN_APPID), self.offers(ALPN_APPID_MUX)) {
            (false, false) => MeshAlpn::NotOffered,
            (true, false) => MeshAlpn::Appid,
            (false, true) => MeshAlpn::AppidMux,
            (true, true) => MeshAlpn::Both,
        }
    }
}

/// Classifies the first bytes of a connection.
///
/// Returns [`Classification::NeedMore`] only while `prefix` is shorter than
/// [`MAX_DETECT_BYTES`] and is a proper prefix of something recognisable; any
/// other input gets a verdict. Never panics.
#[must_use]
pub fn classify(prefix: &[u8]) -> Classification {
    match prefix.first() {
        None => Classification::NeedMore,
        Some(&TLS_HANDSHAKE) => classify_tls(prefix),
        Some(_) => classify_plain(prefix),
    }
}

/// Classifies bytes when no more will be looked at (the peek limit was
/// reached, or the caller stops waiting): like [`classify`], but never
/// [`Classification::NeedMore`]. An incomplete ClientHello is
/// [`TlsUnreadable::Truncated`]; anything else undecided is `Opaque`.
#[must_use]
pub fn classify_final(prefix: &[u8]) -> Classification {
    match classify(prefix) {
        Classification::NeedMore if prefix.first() == Some(&TLS_HANDSHAKE) => {
            Classification::TlsUnreadable(TlsUnreadable::Truncated)
        }
        // Fail closed: a request line cut short after its method is still
        // parsed as HTTP (and refused by the parser), not passed as TCP;
        // so are blank lines that fill what detection looks at, which
        // servers skip while they wait for a request line. (Fewer, then
        // the end or a stall: nothing follows them, or the opaque path's
        // guard watches what does.)
        Classification::NeedMore => {
            let line = skip_blanks(prefix);
            match request_line(line, Reading::Detection) {
                RequestLine::Partial { past_method: true } => Classification::Http1,
                RequestLine::Partial { past_method: false }
                    if line.is_empty() && prefix.len() >= MAX_DETECT_BYTES =>
                {
                    Classification::Http1
                }
                _ => Classification::Opaque,
            }
        }
        decided => decided,
    }
}

/// HTTP/2 preface or HTTP/1 request line, or opaque.
///
/// Fails closed: whatever a lenient HTTP/1 server would take as a request
/// is HTTP/1 here (and then parsed, and refused if malformed), so no request
/// reaches an app as opaque bytes past the authorizer: leading blanks
/// (which servers skip, [`skip_blanks`]), tabs as delimiters, any token as
/// the method (`PROPFIND`, `PURGE`).
fn classify_plain(prefix: &[u8]) -> Classification {
    if prefix.starts_with(H2_PREFACE) {
        return Classification::Http2Preface;
    }
    // `PRI * HTTP/` reads as a request line too: wait for the whole preface.
    if H2_PREFACE.starts_with(prefix) {
        return Classification::NeedMore;
    }
    let line = skip_blanks(prefix);
    match request_line(line, Reading::Detection) {
        RequestLine::Yes => Classification::Http1,
        RequestLine::Partial { past_method: true } => Classification::NeedMore,
        // A bare token so far: wait only if it may become a known method.
        // Any other (`PROPF…`, or a client-first protocol's token that waits
        // for an answer) is opaque for now; the opaque path watches its first
        // line and cuts the connection if it turns out to be a request line
        // ([`first_line`]).
        RequestLine::Partial { past_method: false } => {
            if line.is_empty() || HTTP1_METHODS.iter().any(|m| m.starts_with(line)) {
                Classification::NeedMore
            } else {
                Classification::Opaque
            }
        }
        // The opaque path's guard watches what follows the CR.
        RequestLine::CrLast | RequestLine::No => Classification::Opaque,
    }
}

/// What the first line of a connection that went to opaque TCP turned out
/// to be, for the guard that watches it (`sidecar::dispatch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstLine {
    /// An HTTP/1 request line: the connection must not carry it unparsed.
    RequestLine,
    /// Not one; nothing more to watch.
    NotRequestLine,
    /// Not decided by these bytes.
    Undecided,
}

/// Judges the bytes a client sent first on a connection classified as
/// opaque: could a server read them as an HTTP/1 request line? At
/// [`MAX_DETECT_BYTES`] a line still consistent with one is taken as one
/// (fail closed): blank lines up to the cap, or a token that long, would
/// otherwise end the watch and let the request after them pass unparsed.
#[must_use]
pub fn first_line(prefix: &[u8]) -> FirstLine {
    match request_line(skip_blanks(prefix), Reading::Lenient) {
        RequestLine::Yes => FirstLine::RequestLine,
        RequestLine::No => FirstLine::NotRequestLine,
        RequestLine::Partial { .. } | RequestLine::CrLast if prefix.len() >= MAX_DETECT_BYTES => {
            FirstLine::RequestLine
        }
        RequestLine::Partial { .. } | RequestLine::CrLast => FirstLine::Undecided,
    }
}

/// Whether the bytes a server sent before its client spoke are an HTTP/2
/// server's greeting: a SETTINGS frame header (RFC 9113 §3.4: "the server
/// connection preface consists of a potentially empty SETTINGS frame",
/// the first frame it sends, at once, without waiting for the client) —
/// type 4, no flags (not an ACK), stream 0, a whole number of 6-byte
/// settings, no larger than the default frame size. Fewer than the 9 bytes
/// of a frame header are no greeting (an h2 server writes its SETTINGS
/// frame whole).
///
/// Such a server's clients always speak first in their own eyes (the
/// preface, `PRI * HTTP/2.0`, is sent without waiting for the server), so
/// a greeting must not make the connection "server first": its client's
/// preface would then be an HTTP/1 request line on an opaque connection.
#[must_use]
pub fn h2_server_greeting(prefix: &[u8]) -> bool {
    const SETTINGS: u8 = 0x4;
    /// SETTINGS_MAX_FRAME_SIZE's initial value (RFC 9113 §6.5.2).
    const DEFAULT_MAX_FRAME: usize = 16_384;
    let Some(header) = prefix.get(..9) else {
        return false;
    };
    let length =
        usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
    let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
    header[3] == SETTINGS
        && header[4] == 0
        && stream == 0
        && length % 6 == 0
        && length <= DEFAULT_MAX_FRAME
}

/// What the start of an HTTP/1 request body is to an app that leaves the
/// body unread ([`body_first_line`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLine {
    /// It begins with a request line: refuse the body.
    RequestLine,
    /// It does not: nothing more to watch.
    NotRequestLine,
    /// Not decided by these bytes; more of the body follows.
    Undecided,
    /// The body ended inside what could still be the start of a request
    /// line whose method is upper case (`DEL`, `PROPFIND /x`). Harmless
    /// itself, but an app that
    /// leaves it unread reads the next request on the connection as the
    /// rest of that line (`DEL` + `ETE /x HTTP/1.1` is a `DELETE` policy
    /// saw as `ETE`): the connection must carry no next request.
    Unfinished,
}

/// Judges the start of an HTTP/1 request body framed by `content-length`
/// (`prefix`; `ended`: it is the whole body): could an app that does not
/// read the body read it as its next request? Python's `http.server` does so
/// on a GET (its handlers read no body), and so does any handler that
/// answers before reading one: what policy allowed carries, as its body, a
/// request policy never saw, spoofed `x-appid-*` fields and all (request
/// smuggling of the kind called CL.0). So a body that begins with a request
/// line ([`first_line`]'s reading, leading blanks skipped) is refused, and
/// one that ends before its first line is decided is [`BodyLine::Unfinished`].
///
/// At [`MAX_DETECT_BYTES`], a line past its method and still consistent with
/// a request, or blank lines (then maybe the start of a method), is taken as
/// one (fail closed, as [`first_line`]); a single token from the first byte
/// that long is no method, and a body of hex may be one.
#[must_use]
pub fn body_first_line(prefix: &[u8], ended: bool) -> BodyLine {
    let line = skip_blanks(prefix);
    let at_limit = prefix.len() >= MAX_DETECT_BYTES;
    match request_line(line, Reading::Lenient) {
        RequestLine::Yes => BodyLine::RequestLine,
        RequestLine::No => BodyLine::NotRequestLine,
        // One token from the first byte to the cap: no method.
        RequestLine::Partial { past_method: false } if at_limit && line.len() == prefix.len() => {
            BodyLine::NotRequestLine
        }
        // Blank lines to the cap (then maybe a method), or a line past
        // its method: fail closed.
        RequestLine::Partial { .. } | RequestLine::CrLast if at_limit => BodyLine::RequestLine,
        // Run together with the next request line, only a method-like
        // start can make a method an app handles (`DEL` + `ETE`); `42`,
        // `true` or `hello world` make none, and an empty body nothing.
        RequestLine::Partial { .. } | RequestLine::CrLast if ended => {
            let method = line.iter().take_while(|&&b| is_tchar(b)).count();
            let method_like = method > 0
                && line[..method]
                    .iter()
                    .all(|&b| b.is_ascii_uppercase() || b == b'-' || b == b'_');
            if method_like {
                BodyLine::Unfinished
            } else {
                BodyLine::NotRequestLine
            }
        }
        RequestLine::Partial { .. } | RequestLine::CrLast => BodyLine::Undecided,
    }
}

/// `prefix` after any leading run of blanks: LFs and [`line_space`]s.
/// RFC 9112 section 2.2 lets a server skip empty lines before a request
/// line (httparse skips `\r\n` and `\n`); lenient servers skip more:
/// llhttp (Node) and Tomcat any CR or LF, a lone CR included; Python's
/// `http.server` splits the line on any whitespace, so a leading space or
/// form feed is nothing to it. What any of them would skip is skipped
/// here, so such a request is classified as HTTP/1 (and refused by our
/// stricter parser), never passed as opaque bytes.
pub(crate) fn skip_blanks(prefix: &[u8]) -> &[u8] {
    let n = prefix
        .iter()
        .take_while(|&&b| b == b'\n' || line_space(b))
        .count();
    &prefix[n..]
}

/// Whether some HTTP/1 server splits a request line on `b`: space and tab
/// (RFC 9112, Tomcat), and everything Python's `http.server` splits the
/// line on (`str.split()` of the line read as ISO-8859-1: also VT, FF, CR,
/// the separators 0x1C–0x1F, NEL 0x85 and NBSP 0xA0; Ruby's WEBrick splits
/// on VT and FF too). Detection takes every one as a delimiter, so that no
/// server's request line is passed as opaque bytes because ours would not
/// read it as one. (LF ends the line.)
fn line_space(b: u8) -> bool {
    LINE_SPACES.contains(&b)
}

/// The bytes [`line_space`] is true of.
const LINE_SPACES: [u8; 11] = [
    b' ', b'\t', 0x0b, 0x0c, b'\r', 0x1c, 0x1d, 0x1e, 0x1f, 0x85, 0xa0,
];

/// How far `line` goes as an HTTP/1 request line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RequestLine {
    /// A known method and a space, or `token SP target SP HTTP/`.
    Yes,
    /// Consistent with a request line so far; `past_method`: a token and a
    /// space were seen.
    Partial {
        past_method: bool,
    },
    /// A token (and maybe a target) then a CR, last: a delimiter if a byte
    /// other than LF follows it (Python splits on it), the end of a line
    /// otherwise (`AT\r`, `%1POWR 1\r`). Opaque for now, and watched.
    CrLast,
    No,
}

/// Whose reading of a request line [`request_line`] takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reading {
    /// Detection's, which picks the parser: quick to decide. A known
    /// method and a delimiter is HTTP at once, and a control byte ends the
    /// target (our parser refuses such a line anyway), so a binary
    /// protocol that happens to start with a token and a delimiter (LDAP's
    /// `0` and a length of 12, a form feed) is opaque at once rather than
    /// waited on.
    Detection,
    /// A lenient server's, for what goes to an app unparsed (the opaque
    /// path's guard, a request body): a control byte is part of the target
    /// (Python splits on whitespace only: `PURGE /admin\x01 HTTP/1.1` is a
    /// request to it), and `GET` is a request at once, a delimiter after
    /// it (HTTP/0.9's one method: `GET /admin\r\n` runs on Python). In both
    /// readings any other method needs no version either when its target
    /// has a request's form (llhttp runs `PURGE /admin\r\n`; `CONNECT
    /// {…}\r\n`, a NATS client's first line, runs nowhere), and `RTSP/` and
    /// `ICE/` are versions (llhttp's).
    Lenient,
}

/// Reads `line` as `method SP+ target SP+ HTTP/…`, as `reading` says. Runs
/// of [`line_space`]s count as one delimiter (a lenient server's view:
/// Tomcat takes a tab, Python a form feed); the target is any run of bytes
/// other than those and LF (and, for detection, control bytes).
fn request_line(line: &[u8], reading: Reading) -> RequestLine {
    if line.is_empty() {
        return RequestLine::Partial { past_method: false };
    }
    let eager: &[&[u8]] = match reading {
        Reading::Detection => &HTTP1_METHODS,
        Reading::Lenient => &[b"GET"],
    };
    for method in eager {
        // A known method and a delimiter: a CR counts when a byte other
        // than LF follows it (`GET\r/admin\r\n` is an HTTP/0.9 GET to
        // Python's `http.server`; `GET\r\n` is no request; a CR last is
        // left to the general case: opaque for now, and watched).
        if let Some([next, after @ ..]) = line.strip_prefix(*method)
            && line_space(*next)
            && (*next != b'\r' || after.first().is_some_and(|&b| b != b'\n'))
        {
            return RequestLine::Yes;
        }
    }
    let method_len = line.iter().take_while(|&&b| is_tchar(b)).count();
    let rest = &line[method_len..];
    if method_len == 0 {
        return RequestLine::No;
    }
    if rest.is_empty() {
        return RequestLine::Partial { past_method: false };
    }
    if rest == b"\r" {
        return RequestLine::CrLast;
    }
    let Some(rest) = strip_spaces(rest) else {
        return RequestLine::No;
    };
    let partial = RequestLine::Partial { past_method: true };
    let target_len = rest
        .iter()
        .take_while(|&&b| {
            !line_space(b) && b != b'\n' && (reading == Reading::Lenient || !b.is_ascii_control())
        })
        .count();
    let after_target = &rest[target_len..];
    if after_target.is_empty() {
        return partial;
    }
    if target_len == 0 {
        return RequestLine::No;
    }
    // No version: HTTP/0.9, which llhttp (Node) runs for any method, and
    // with headers after it, when the target is one a request has.
    if after_target.starts_with(b"\n") || after_target.starts_with(b"\r\n") {
        return match request_target_like(&rest[..target_len]) {
            true => RequestLine::Yes,
            false => RequestLine::No,
        };
    }
    if after_target == b"\r" {
        return RequestLine::CrLast;
    }
    let Some(version) = strip_spaces(after_target) else {
        return RequestLine::No;
    };
    let mut could_be = false;
    for name in VERSION_NAMES {
        let n = version.len().min(name.len());
        if version[..n] == name[..n] {
            if n == name.len() {
                return RequestLine::Yes;
            }
            could_be = true;
        }
    }
    if could_be { partial } else { RequestLine::No }
}

/// What a request line's version may start with to some HTTP/1 server:
/// llhttp (Node) parses RTSP's and Icecast's requests with its HTTP
/// parser, and with `Connection: keep-alive` reads HTTP/1.1 requests after
/// them on the same connection.
const VERSION_NAMES: [&[u8]; 3] = [b"HTTP/", b"RTSP/", b"ICE/"];

/// Whether `target` has a request target's form: origin (`/…`), asterisk,
/// or absolute (`scheme://…`). NATS's `CONNECT {…}` and a Redis key have
/// none.
fn request_target_like(target: &[u8]) -> bool {
    target.starts_with(b"/") || target == b"*" || after_scheme(target).is_some()
}

/// What follows `scheme://` when `target` starts with an RFC 3986 scheme
/// (a letter, then letters, digits, `+`, `-`, `.`) and `://`: an
/// absolute-form request target's authority and on.
pub(crate) fn after_scheme(target: &[u8]) -> Option<&[u8]> {
    let end = target.windows(3).position(|w| w == b"://")?;
    let scheme = &target[..end];
    let is_scheme = scheme.first().is_some_and(u8::is_ascii_alphabetic)
        && scheme
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    is_scheme.then(|| &target[end + 3..])
}

/// `bytes` without its leading [`line_space`]s, if it starts with at
/// least one. A CR before LF ends the line (`PING\r\n` is no request line
/// to anyone), so it is no delimiter; a CR last may still be one. (A CR
/// alone after a token or target is [`RequestLine::CrLast`].)
fn strip_spaces(bytes: &[u8]) -> Option<&[u8]> {
    let n = bytes
        .iter()
        .enumerate()
        .take_while(|&(i, &b)| line_space(b) && (b != b'\r' || bytes.get(i + 1) != Some(&b'\n')))
        .count();
    (n > 0).then_some(&bytes[n..])
}

/// RFC 9110 `tchar`: the characters of a method.
pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

// --- TLS -----------------------------------------------------------------

const TLS_HANDSHAKE: u8 = 0x16;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const TLS_RECORD_HEADER: usize = 5;
/// RFC 8446 section 5.1: a plaintext record carries at most 2^14 bytes.
const MAX_RECORD_PAYLOAD: usize = 1 << 14;
const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;
const SNI_HOST_NAME: u8 = 0;

/// Whether `major.minor` is a version a ClientHello may carry in its record
/// header or `legacy_version`: 3.1 (TLS 1.0) to 3.4. TLS 1.3 clients write
/// 3.1 or 3.3 there and announce 1.3 in an extension.
fn is_tls_version(major: u8, minor: u8) -> bool {
    major == 3 && (1..=4).contains(&minor)
}

/// Reassembles the handshake bytes from consecutive handshake records (a
/// ClientHello may legally be split across records) and parses the
/// ClientHello once complete.
fn classify_tls(prefix: &[u8]) -> Classification {
    // Partial record header: check what is there.
    if prefix.len() < TLS_RECORD_HEADER {
        let plausible = match prefix {
            [_, major] => *major == 3,
            [_, major, minor, ..] => is_tls_version(*major, *minor),
            _ => true,
        };
        return if plausible {
            Classification::NeedMore
        } else {
            Classification::Opaque
        };
    }

    // Handshake bytes, borrowed when the first record holds the whole
    // ClientHello (the usual case), copied when it spans records.
    let mut joined: Vec<u8> = Vec::new();
    let mut first_body: &[u8] = &[];
    let mut pos = 0;
    let mut records = 0usize;
    loop {
        let Some(header) = prefix.get(pos..pos + TLS_RECORD_HEADER) else {
            return need_more(prefix);
        };
        let (kind, major, minor) = (header[0], header[1], header[2]);
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if kind != TLS_HANDSHAKE || !is_tls_version(major, minor) {
            // The first record decides whether this is TLS at all; a later
            // non-handshake record before the hello is complete is invalid.
            return if records == 0 {
                Classification::Opaque
            } else {
                Classification::TlsUnreadable(TlsUnreadable::Malformed)
            };
        }
        if len == 0 || len > MAX_RECORD_PAYLOAD {
            return if records == 0 {
                Classification::Opaque
            } else {
                Classification::TlsUnreadable(TlsUnreadable::Malformed)
            };
        }
        let start = pos + TLS_RECORD_HEADER;
        let available = &prefix[start..prefix.len().min(start + len)];
        if records == 0 {
            first_body = available;
        } else {
            if records == 1 {
                joined.extend_from_slice(first_body);
            }
            joined.extend_from_slice(available);
        }
        records += 1;
        let handshake: &[u8] = if records == 1 { first_body } else { &joined };

        // The handshake header: type and 24-bit length.
        if let Some(&kind) = handshake.first()
            && kind != HANDSHAKE_CLIENT_HELLO
        {
            return if records == 1 {
                Classification::Opaque
            } else {
                Classification::TlsUnreadable(TlsUnreadable::Malformed)
            };
        }
        if let [_, a, b, c, ..] = *handshake {
            let body_len = (usize::from(a) << 16) | (usize::from(b) << 8) | usize::from(c);
            // Record headers for the needed bytes add at least 5 more.
            if 4 + body_len + TLS_RECORD_HEADER > MAX_DETECT_BYTES {
                return Classification::TlsUnreadable(TlsUnreadable::TooLarge);
            }
            if let Some(body) = handshake.get(4..4 + body_len) {
                return match parse_client_hello(body) {
                    Some(info) => Classification::TlsClientHello(info),
                    None => Classification::TlsUnreadable(TlsUnreadable::Malformed),
                };
            }
        }
        if available.len() < len {
            return need_more(prefix); // this record is not all here yet
        }
        pos = start + len;
    }
}

fn need_more(prefix: &[u8]) -> Classification {
    if prefix.len() >= MAX_DETECT_BYTES {
        Classification::TlsUnreadable(TlsUnreadable::TooLarge)
    } else {
        Classification::NeedMore
    }
}

/// A bounds-checked reader over TLS's length-prefixed encoding. Every method
/// returns `None` instead of reading past the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        let b = self.take(2)?;
        Some(u16::from_be_bytes([b[0], b[1]]))
    }
    /// A vector with a one-byte length prefix.
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }
    /// A vector with a two-byte length prefix.
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Parses a ClientHello body (after the 4-byte handshake header), RFC 8446
/// section 4.1.2. `None` if it is malformed.
fn parse_client_hello(body: &[u8]) -> Option<ClientHelloInfo> {
    let mut r = Reader(body);
    let (major, minor) = (r.u8()?, r.u8()?);
    if !is_tls_version(major, minor) {
        return None;
    }
    r.take(32)?; // random
    if r.vec8()?.len() > 32 {
        return None; // legacy_session_id
    }
    let suites = r.vec16()?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return None;
    }
    if r.vec8()?.is_empty() {
        return None; // legacy_compression_methods
    }
    let mut info = ClientHelloInfo::default();
    if r.is_empty() {
        return Some(info); // TLS 1.2 and earlier may omit extensions
    }
    let mut exts = Reader(r.vec16()?);
    if !r.is_empty() {
        return None;
    }
    // A second SNI or ALPN extension could be read differently by another
    // parser (RFC 8446 section 4.2 forbids repeats), so it is malformed.
    let (mut seen_sni, mut seen_alpn) = (false, false);
    while !exts.is_empty() {
        let kind = exts.u16()?;
        let data = exts.vec16()?;
        match kind {
            EXT_SERVER_NAME => {
                if std::mem::replace(&mut seen_sni, true) {
                    return None;
                }
                info.sni = parse_sni(data)?;
            }
            EXT_ALPN => {
                if std::mem::replace(&mut seen_alpn, true) {
                    return None;
                }
                info.alpn = parse_alpn(data)?;
            }
            _ => {}
        }
    }
    Some(info)
}

/// The server_name extension (RFC 6066 section 3): `Some(None)` when it
/// names no host_name, `None` when malformed.
fn parse_sni(data: &[u8]) -> Option<Option<String>> {
    let mut outer = Reader(data);
    let mut list = Reader(outer.vec16()?);
    if !outer.is_empty() || list.is_empty() {
        return None;
    }
    let mut host = None;
    while !list.is_empty() {
        let kind = list.u8()?;
        let name = list.vec16()?;
        if kind == SNI_HOST_NAME {
            // At most one name of each type; a host name is non-empty ASCII.
            if host.is_some() || name.is_empty() || !name.iter().all(u8::is_ascii_graphic) {
                return None;
            }
            host = Some(String::from_utf8(name.to_vec()).ok()?);
        }
    }
    Some(host)
}

/// The ALPN extension (RFC 7301 section 3.1): a non-empty list of non-empty
/// protocol names.
fn parse_alpn(data: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut outer = Reader(data);
    let mut list = Reader(outer.vec16()?);
    if !outer.is_empty() || list.is_empty() {
        return None;
    }
    let mut protocols = Vec::new();
    while !list.is_empty() {
        let protocol = list.vec8()?;
        if protocol.is_empty() {
            return None;
        }
        protocols.push(protocol.to_vec());
    }
    Some(protocols)
}

// --- Detection on a socket -------------------------------------------------

/// The outcome of peeking at a new connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Detection {
    /// The first `peeked` bytes decided it (never [`Classification::NeedMore`]).
    Classified {
        class: Classification,
        peeked: usize,
    },
    /// The timeout passed first, with `peeked` bytes buffered (0 for a
    /// silent client, e.g. a server-speaks-first protocol, or a stall).
    ReadTimeout { peeked: usize },
    /// The peer closed the connection without sending anything.
    Closed,
    /// The socket failed.
    Error(io::ErrorKind),
}

/// Peeks at `stream` until its first bytes are classified.
///
/// Stops when [`classify`] decides, when `max_peek` bytes are buffered (then
/// [`classify_final`] decides), when the peer closes before sending, on a
/// socket error, or when `timeout` has passed. `max_peek` is clamped to
/// `1..=MAX_DETECT_BYTES`. No bytes are consumed: whoever handles the
/// connection next reads it from the start.
///
/// A peer that sends a few bytes and then closes is reported as
/// [`Detection::ReadTimeout`]: `peek` keeps returning the buffered bytes and
/// cannot see the end of stream behind them.
pub async fn detect(stream: &TcpStream, timeout: Duration, max_peek: usize) -> Detection {
    let judged = peek_until(stream, timeout, max_peek, |prefix, full| {
        match classify(prefix) {
            Classification::NeedMore if !full => None,
            Classification::NeedMore => Some(classify_final(prefix)),
            class => Some(class),
        }
    });
    match judged.await {
        Peeked::Judged { verdict, peeked } => Detection::Classified {
            class: verdict,
            peeked,
        },
        Peeked::ReadTimeout { peeked } => Detection::ReadTimeout { peeked },
        Peeked::Closed => Detection::Closed,
        Peeked::Error(kind) => Detection::Error(kind),
    }
}

/// What [`peek_until`] ended with.
#[derive(Debug)]
pub(crate) enum Peeked<T> {
    /// `judge` decided on the first `peeked` bytes.
    Judged { verdict: T, peeked: usize },
    /// The timeout passed first, with `peeked` bytes buffered.
    ReadTimeout { peeked: usize },
    /// The peer closed the connection without sending anything.
    Closed,
    /// The socket failed.
    Error(io::ErrorKind),
}

/// Peeks at `stream` until `judge(prefix, full)` gives a verdict on the
/// bytes buffered so far (`full`: `max_peek` of them, no more will be
/// looked at; clamped to `1..=MAX_DETECT_BYTES`), or the timeout passes.
/// A look that sees nothing new waits before the next (from
/// [`REPEEK_PAUSE`], doubling up to [`MAX_REPEEK_PAUSE`]). Nothing is
/// consumed.
pub(crate) async fn peek_until<T>(
    stream: &TcpStream,
    timeout: Duration,
    max_peek: usize,
    mut judge: impl FnMut(&[u8], bool) -> Option<T>,
) -> Peeked<T> {
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; max_peek.clamp(1, MAX_DETECT_BYTES)];
    let mut seen = 0;
    let mut pause = REPEEK_PAUSE;
    loop {
        let peeked = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Err(_) => return Peeked::ReadTimeout { peeked: seen },
            Ok(Err(err)) => return Peeked::Error(err.kind()),
            Ok(Ok(0)) => return Peeked::Closed,
            Ok(Ok(n)) => n,
        };
        let prefix = &buf[..peeked.min(buf.len())];
        if let Some(verdict) = judge(prefix, prefix.len() == buf.len()) {
            return Peeked::Judged { verdict, peeked };
        }
        if peeked <= seen {
            // Nothing new since the last look: pause, bounded by the deadline.
            let wake = deadline.min(Instant::now() + pause);
            tokio::time::sleep_until(wake).await;
            if Instant::now() >= deadline {
                return Peeked::ReadTimeout { peeked };
            }
            pause = (pause * 2).min(MAX_REPEEK_PAUSE);
        } else {
            pause = REPEEK_PAUSE;
        }
        seen = peeked;
        // Readiness stays set while bytes are buffered, so this usually
        // returns at once; it matters when the kernel clears it.
        match tokio::time::timeout_at(deadline, stream.readable()).await {
            Err(_) => return Peeked::ReadTimeout { peeked: seen },
            Ok(Err(err)) => return Peeked::Error(err.kind()),
            Ok(Ok(())) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, OnceLock};
    use std::time::Instant as StdInstant;

    use proptest::prelude::*;
    use rustls::pki_types::ServerName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio_rustls::TlsConnector;

    use super::*;
    use crate::sidecar::test_io::loopback_pair;

    // --- Real ClientHellos, from a real rustls client over loopback ---------

    fn client_config(alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    /// Starts a rustls handshake towards `addr` in the background. It fails
    /// when the server side hangs up, which is fine: only its hello matters.
    fn spawn_tls_client(
        addr: std::net::SocketAddr,
        alpn: &[&[u8]],
        server_name: &str,
    ) -> tokio::task::JoinHandle<()> {
        let connector = TlsConnector::from(client_config(alpn));
        let name = ServerName::try_from(server_name.to_owned()).unwrap();
        tokio::spawn(async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let _ = connector.connect(name, tcp).await;
        })
    }

    /// The first TLS record a real client sends: its ClientHello, as the
    /// server side of a loopback connection receives it.
    async fn capture_hello(alpn: &[&[u8]], server_name: &str) -> Vec<u8> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = spawn_tls_client(listener.local_addr().unwrap(), alpn, server_name);
        let (mut server, _) = listener.accept().await.unwrap();
        let mut bytes = Vec::new();
        let mut chunk = [0u8; 4096];
        // Read exactly one record, parsing only its 5-byte header here.
        let record_len = loop {
            if let [_, _, _, hi, lo, ..] = bytes[..] {
                let len = 5 + usize::from(u16::from_be_bytes([hi, lo]));
                if bytes.len() >= len {
                    break len;
                }
            }
            let n = server.read(&mut chunk).await.unwrap();
            assert!(n > 0, "client closed before sending its hello");
            bytes.extend_from_slice(&chunk[..n]);
        };
        bytes.truncate(record_len);
        drop(server);
        client.await.unwrap();
        bytes
    }

    /// A hello with ALPN `appid/1` and SNI `api.example`, captured once.
    /// (Captured on its own thread so sync tests and async tests can share it.)
    fn real_hello() -> &'static [u8] {
        static HELLO: OnceLock<Vec<u8>> = OnceLock::new();
        HELLO.get_or_init(|| {
            std::thread::spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(capture_hello(&[ALPN_APPID], "api.example"))
            })
            .join()
            .unwrap()
        })
    }

    fn hello_info(sni: Option<&str>, alpn: &[&[u8]]) -> Classification {
        Classification::TlsClientHello(ClientHelloInfo {
            sni: sni.map(str::to_owned),
            alpn: alpn.iter().map(|p| p.to_vec()).collect(),
        })
    }

    #[test]
    fn detect_classifies_a_real_client_hello() {
        let hello = real_hello();
        let class = classify(hello);
        assert_eq!(class, hello_info(Some("api.example"), &[ALPN_APPID]));
        let Classification::TlsClientHello(info) = class else {
            unreachable!()
        };
        assert_eq!(info.mesh_alpn(), MeshAlpn::Appid);
        assert!(info.offers(b"appid/1") && !info.offers(b"h2"));
    }

    #[tokio::test]
    async fn detect_classifies_client_hello_variants() {
        let both = capture_hello(&[ALPN_APPID_MUX, ALPN_APPID], "b.example").await;
        let Classification::TlsClientHello(info) = classify(&both) else {
            panic!("{:?}", classify(&both));
        };
        assert_eq!(info.mesh_alpn(), MeshAlpn::Both);
        assert_eq!(info.alpn, [ALPN_APPID_MUX, ALPN_APPID]);

        let web = capture_hello(&[b"h2", b"http/1.1"], "API.Stripe.com").await;
        let Classification::TlsClientHello(info) = classify(&web) else {
            panic!("{:?}", classify(&web));
        };
        assert_eq!(info.mesh_alpn(), MeshAlpn::NotOffered);
        // rustls lower-cases the name it sends.
        assert_eq!(
            info.sni.as_deref().map(str::to_ascii_lowercase).as_deref(),
            Some("api.stripe.com")
        );

        // No SNI for an IP address; no ALPN extension when none is configured.
        let bare = capture_hello(&[], "127.0.0.1").await;
        assert_eq!(classify(&bare), hello_info(None, &[]));
    }

    #[test]
    fn detect_every_truncation_of_a_real_hello_needs_more() {
        let hello = real_hello();
        for len in 0..hello.len() {
            let prefix = &hello[..len];
            assert_eq!(classify(prefix), Classification::NeedMore, "at {len} bytes");
            let want = if len == 0 {
                Classification::Opaque
            } else {
                Classification::TlsUnreadable(TlsUnreadable::Truncated)
            };
            assert_eq!(classify_final(prefix), want, "at {len} bytes");
        }
    }

    /// Re-frames a single-record hello as two records split at `at`.
    fn split_records(hello: &[u8], at: usize) -> Vec<u8> {
        let (version, body) = (&hello[1..3], &hello[5..]);
        let mut out = Vec::new();
        for part in [&body[..at], &body[at..]] {
            out.push(TLS_HANDSHAKE);
            out.extend_from_slice(version);
            out.extend_from_slice(&u16::try_from(part.len()).unwrap().to_be_bytes());
            out.extend_from_slice(part);
        }
        out
    }

    #[test]
    fn detect_hello_split_across_records_is_reassembled() {
        let hello = real_hello();
        let want = classify(hello);
        let body_len = hello.len() - TLS_RECORD_HEADER;
        for at in 1..body_len {
            let split = split_records(hello, at);
            assert_eq!(classify(&split), want, "split at {at}");
            for len in [at + 4, at + 5, at + 6, split.len() - 1] {
                let len = len.min(split.len() - 1);
                assert_eq!(
                    classify(&split[..len]),
                    Classification::NeedMore,
                    "split at {at}, {len} bytes"
                );
            }
        }
        // An alert record where the second handshake record should be.
        let mut split = split_records(hello, 10);
        split[5 + 10] = 0x15;
        assert_eq!(
            classify(&split),
            Classification::TlsUnreadable(TlsUnreadable::Malformed)
        );
    }

    #[test]
    fn detect_corrupted_real_hello_never_panics() {
        let hello = real_hello();
        let mut copy = hello.to_vec();
        for i in 0..copy.len() {
            for flip in [0x01, 0x80, 0xFF] {
                copy[i] ^= flip;
                let _ = classify(&copy);
                let _ = classify_final(&copy[..i]);
                copy[i] ^= flip;
            }
        }
    }

    // --- Hand-built hellos, for the malformed cases a real client never sends.

    fn vec8(data: &[u8]) -> Vec<u8> {
        let mut out = vec![u8::try_from(data.len()).unwrap()];
        out.extend_from_slice(data);
        out
    }

    fn vec16(data: &[u8]) -> Vec<u8> {
        let mut out = u16::try_from(data.len()).unwrap().to_be_bytes().to_vec();
        out.extend_from_slice(data);
        out
    }

    fn ext(kind: u16, data: &[u8]) -> Vec<u8> {
        let mut out = kind.to_be_bytes().to_vec();
        out.extend(vec16(data));
        out
    }

    fn sni_ext(names: &[(u8, &[u8])]) -> Vec<u8> {
        let list: Vec<u8> = names
            .iter()
            .flat_map(|(kind, name)| [vec![*kind], vec16(name)].concat())
            .collect();
        ext(EXT_SERVER_NAME, &vec16(&list))
    }

    fn alpn_ext(protocols: &[&[u8]]) -> Vec<u8> {
        let list: Vec<u8> = protocols.iter().flat_map(|p| vec8(p)).collect();
        ext(EXT_ALPN, &vec16(&list))
    }

    /// A TLS 1.2-style ClientHello record; `extensions: None` omits the block.
    fn built_hello(extensions: Option<&[u8]>, trailing: &[u8]) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend([7u8; 32]);
        body.extend(vec8(&[]));
        body.extend(vec16(&[0x13, 0x01]));
        body.extend(vec8(&[0]));
        if let Some(exts) = extensions {
            body.extend(vec16(exts));
        }
        body.extend_from_slice(trailing);
        let len = u32::try_from(body.len()).unwrap().to_be_bytes();
        let mut handshake = vec![HANDSHAKE_CLIENT_HELLO, len[1], len[2], len[3]];
        handshake.extend(body);
        let mut record = vec![TLS_HANDSHAKE, 3, 1];
        record.extend(vec16(&handshake));
        record
    }

    #[test]
    fn detect_built_hellos() {
        let ok = |exts: &[Vec<u8>]| built_hello(Some(&exts.concat()), &[]);
        assert_eq!(classify(&built_hello(None, &[])), hello_info(None, &[]));
        assert_eq!(
            classify(&ok(&[
                ext(0xAAAA, b"grease"),
                sni_ext(&[(0, b"a.example")]),
                alpn_ext(&[b"appid/1"])
            ])),
            hello_info(Some("a.example"), &[b"appid/1"])
        );
        // An SNI list with no host_name entry is well-formed.
        assert_eq!(
            classify(&ok(&[sni_ext(&[(7, b"other")])])),
            hello_info(None, &[])
        );

        let malformed = Classification::TlsUnreadable(TlsUnreadable::Malformed);
        for (what, hello) in [
            (
                "two SNI extensions",
                ok(&[sni_ext(&[(0, b"a.example")]), sni_ext(&[(0, b"b.example")])]),
            ),
            (
                "two host names",
                ok(&[sni_ext(&[(0, b"a.example"), (0, b"b.example")])]),
            ),
            ("empty host name", ok(&[sni_ext(&[(0, b"")])])),
            (
                "non-ASCII host name",
                ok(&[sni_ext(&[(0, "bücher.example".as_bytes())])]),
            ),
            ("empty SNI list", ok(&[ext(EXT_SERVER_NAME, &vec16(&[]))])),
            (
                "two ALPN extensions",
                ok(&[alpn_ext(&[b"h2"]), alpn_ext(&[b"appid/1"])]),
            ),
            ("empty ALPN protocol", ok(&[alpn_ext(&[b"appid/1", b""])])),
            ("empty ALPN list", ok(&[ext(EXT_ALPN, &vec16(&[]))])),
            (
                "bytes after the ALPN list",
                ok(&[ext(EXT_ALPN, &[vec16(&vec8(b"h2")), vec![0]].concat())]),
            ),
            (
                "bytes after the extensions",
                built_hello(Some(&alpn_ext(&[b"h2"])), &[0]),
            ),
            (
                "extension longer than the block",
                built_hello(Some(&[0, 16, 0, 9, 0]), &[]),
            ),
        ] {
            assert_eq!(classify(&hello), malformed, "{what}");
        }
    }

    #[test]
    fn detect_tls_record_and_handshake_headers() {
        // Partial record headers: plausible so far, or not TLS.
        assert_eq!(classify(b"\x16"), Classification::NeedMore);
        assert_eq!(classify(b"\x16\x03\x01\x02"), Classification::NeedMore);
        assert_eq!(classify(b"\x16\x04"), Classification::Opaque);
        assert_eq!(classify(b"\x16\x03\x00"), Classification::Opaque);
        assert_eq!(classify(b"\x16\x03\x05\x00\x10"), Classification::Opaque);
        // Record length 0, or over 2^14: not TLS.
        assert_eq!(classify(b"\x16\x03\x01\x00\x00"), Classification::Opaque);
        assert_eq!(
            classify(b"\x16\x03\x01\x40\x01\x01"),
            Classification::Opaque
        );
        // Not a ClientHello (2 = ServerHello); not a handshake record.
        assert_eq!(
            classify(b"\x16\x03\x03\x00\x30\x02\x00"),
            Classification::Opaque
        );
        assert_eq!(classify(b"\x17\x03\x03\x00\x30"), Classification::Opaque);
        // A declared hello over the cap is refused at once, not waited for.
        assert_eq!(
            classify(b"\x16\x03\x01\x40\x00\x01\x00\x3f\xf8"),
            Classification::TlsUnreadable(TlsUnreadable::TooLarge)
        );
        // A hello declared as fitting needs more.
        assert_eq!(
            classify(b"\x16\x03\x01\x40\x00\x01\x00\x3f\xf7"),
            Classification::NeedMore
        );
    }

    #[test]
    fn detect_http1_request_lines() {
        for method in HTTP1_METHODS {
            let line = [method, b" / HTTP/1.1\r\n"].concat();
            assert_eq!(classify(&line), Classification::Http1, "{line:?}");
            assert_eq!(classify(&line[..method.len() + 1]), Classification::Http1);
            for len in 1..=method.len() {
                assert_eq!(
                    classify(&line[..len]),
                    Classification::NeedMore,
                    "{:?}",
                    &line[..len]
                );
                assert_eq!(classify_final(&line[..len]), Classification::Opaque);
            }
        }
        for not_http in [
            &b"EHLO mail.example\r\n"[..],
            b"FOO bar baz\r\n",
            b"FOO \r\n",
            b"\x00GET / HTTP/1.1\r\n",
        ] {
            let class = classify(not_http);
            let class = if class == Classification::NeedMore {
                classify_final(not_http)
            } else {
                class
            };
            assert_eq!(class, Classification::Opaque, "{not_http:?}");
        }
    }

    /// Whatever a lenient server would take as a request is HTTP/1: it is
    /// then parsed, and refused if malformed, never passed as opaque bytes.
    #[test]
    fn detect_fails_closed_on_anything_that_could_be_http1() {
        for http in [
            &b"\r\nGET /admin HTTP/1.1\r\n"[..],
            b"\n\r\n\nGET / HTTP/1.1\r\n",
            // What lenient servers skip or split on (llhttp and Tomcat: a
            // lone CR; Python's http.server: leading blanks; Tomcat: tabs).
            b"\rGET /admin/x HTTP/1.1\r\n",
            b" GET / HTTP/1.1\r\n",
            b"\t\r \nDELETE /x HTTP/1.1\r\n",
            b"GET\t/admin\tHTTP/1.1\r\n",
            b"GET\t/",
            b"PROPFIND\t/x\tHTTP/1.1\r\n",
            b"PROPFIND /x HTTP/1.1\r\n",
            b"PURGE /cache HTTP/1.0\r\n",
            b"get / HTTP/1.1\r\n",
            b"Delete /x HTTP/1.1\r\n",
            b"GETX /  HTTP/1.1",
            b"FOO   /a?b HTTP/9",
            b"PRI * HTTP/1.1\r\n",
            b"PRI * HTTP/2.0\r\n\r\nXX",
            b"M-SEARCH * HTTP/1.1\r\n",
            // Python's http.server splits on any whitespace of ISO-8859-1:
            // each of these between the parts, or first, is a request to it.
            b"GET\x0b/admin\x0bHTTP/1.1\r\n",
            b"GET\x0c/admin\x0cHTTP/1.1\r\n",
            b"GET\x1c/admin\x1fHTTP/1.1\r\n",
            b"GET\x85/admin\x85HTTP/1.1\r\n",
            b"GET\xa0/admin\xa0HTTP/1.1\r\n",
            b"GET\r/admin\rHTTP/1.1\r\n",
            b"PROPFIND\xa0/x\x0bHTTP/1.1\r\n",
            b"FOO /admin\xa0HTTP/1.1\r\n",
            b"\x0cGET /admin HTTP/1.1\r\n",
            b"\xa0\x85\x1dGET /admin HTTP/1.1\r\n",
        ] {
            assert_eq!(
                classify(http),
                Classification::Http1,
                "{:?}",
                String::from_utf8_lossy(http)
            );
        }
        // Cut short after the method: more may come; at the end, still HTTP.
        for partial in [
            &b"\r\n"[..],
            b"\r",
            b"PROPFIND /a",
            b"FOO /x HTT",
            b"PAT",
            b"\r\nGE",
        ] {
            assert_eq!(classify(partial), Classification::NeedMore, "{partial:?}");
        }
        // A bare unknown token is opaque at once (a client-first protocol
        // may be waiting for an answer); the opaque path's guard watches it.
        for token in [&b"POSTS"[..], b"PROPFIND", b"appid-echo-1234"] {
            assert_eq!(classify(token), Classification::Opaque, "{token:?}");
            assert_eq!(first_line(token), FirstLine::Undecided, "{token:?}");
        }
        assert_eq!(first_line(b"PROPFIND /x HTTP/1.1"), FirstLine::RequestLine);
        // HTTP/2's preface is one too (`PRI * HTTP/2.0`): a connection
        // that went opaque carries no HTTP/2 either.
        assert_eq!(first_line(H2_PREFACE), FirstLine::RequestLine);
        assert_eq!(
            first_line(b"\r\ndelete /admin HTTP/"),
            FirstLine::RequestLine
        );
        assert_eq!(first_line(b"PING\r\n"), FirstLine::NotRequestLine);
        assert_eq!(first_line(b"PING\r\nPING\r\n"), FirstLine::NotRequestLine);
        assert_eq!(classify_final(b"PING\r\n"), Classification::Opaque);
        assert_eq!(classify(b"GET\r\n"), Classification::Opaque);
        // A CR that may end a line is no delimiter yet: line-based
        // protocols that end lines with a lone CR stay opaque, watched
        // until what follows the CR decides.
        for line in [
            &b"AT\r"[..],
            b"ATZ\r",
            b"AT+CSQ\r",
            b"%1POWR 1\r",
            b"PING\r",
            b"GET\r",
        ] {
            assert_eq!(classify(line), Classification::Opaque, "{line:?}");
            assert_eq!(classify_final(line), Classification::Opaque, "{line:?}");
            assert_eq!(first_line(line), FirstLine::Undecided, "{line:?}");
            let mut ended = line.to_vec();
            ended.extend(b"\nOK\r\n");
            assert_eq!(first_line(&ended), FirstLine::NotRequestLine, "{line:?}");
        }
        assert_eq!(first_line(b"GET\r/admin\rHTTP/1.1"), FirstLine::RequestLine);
        // HTTP/0.9 GETs (Python serves them: no version needed).
        for get in [
            &b"GET\r/admin\r\n"[..],
            b"GET\r/admin\n",
            b"GET\r/admin \r\n",
            b"GET\r\r/admin\r\r\n",
        ] {
            assert_eq!(classify(get), Classification::Http1, "{get:?}");
            assert_eq!(first_line(get), FirstLine::RequestLine, "{get:?}");
        }
        assert_eq!(first_line(b"FOO /x \r"), FirstLine::Undecided);
        assert_eq!(first_line(b"FOO /x \rHTTP/1.1"), FirstLine::RequestLine);
        assert_eq!(first_line(b"%1POWR 1\rHTTP/1.1"), FirstLine::RequestLine);
        assert_eq!(
            classify(b"GET\r/admin\rHTTP/1.1\r\n"),
            Classification::Http1
        );
        assert_eq!(
            first_line(b"PROPFIND\x0c/x\xa0HTTP/1.1"),
            FirstLine::RequestLine
        );
        assert_eq!(
            first_line(b"EHLO mail.example\r\n"),
            FirstLine::NotRequestLine
        );
        assert_eq!(first_line(b"\x00\x01"), FirstLine::NotRequestLine);
        assert_eq!(first_line(b"\r PROPFIND\t/x"), FirstLine::Undecided);
        assert_eq!(
            first_line(b"\r PROPFIND\t/x\tHTTP/1.1"),
            FirstLine::RequestLine
        );
        // At the cap, what is still consistent with a request line is
        // taken as one: blank lines that long, then a request, or a
        // request after them cut at the cap inside its method, would
        // otherwise pass once the watch ends.
        let blanks = b"\r\n".repeat(MAX_DETECT_BYTES / 2);
        assert_eq!(first_line(&blanks[..100]), FirstLine::Undecided);
        assert_eq!(first_line(&blanks), FirstLine::RequestLine);
        let mut cut_in_method = blanks[..MAX_DETECT_BYTES - 3].to_vec();
        cut_in_method.extend_from_slice(b"GET");
        assert_eq!(first_line(&cut_in_method), FirstLine::RequestLine);
        let mut long_token = vec![b'A'; MAX_DETECT_BYTES];
        assert_eq!(first_line(&long_token), FirstLine::RequestLine);
        long_token[MAX_DETECT_BYTES - 1] = 0;
        assert_eq!(first_line(&long_token), FirstLine::NotRequestLine);
        // A body's first line: the same reading; a body that ends
        // undecided is unfinished, and one token to the cap is no request.
        for body in [
            &b"GET /admin/x HTTP/1.1\r\nx-appid-peer-id: x\r\n\r\n"[..],
            b"GET /admin/x\r\n",
            b"\r\n\r\nPROPFIND\t/x\x0bHTTP/1.1\r\n",
            b"GET /",
            b"PURGE /admin/x\x01 HTTP/1.1\r\n",
            b"PROPFIND /admin/x\x7f HTTP/1.1\r\n",
        ] {
            assert_eq!(
                body_first_line(body, true),
                BodyLine::RequestLine,
                "{body:?}"
            );
            assert_eq!(
                body_first_line(body, false),
                BodyLine::RequestLine,
                "{body:?}"
            );
        }
        for body in [
            &b"{\"query\": {\"match_all\": {}}}"[..],
            b"a=1&b=2",
            b"\x00\x01binary",
            b"line one\nline two",
            b"\x0a\x03abc",
        ] {
            assert_eq!(
                body_first_line(body, true),
                BodyLine::NotRequestLine,
                "{body:?}"
            );
        }
        for body in [&b"hello world"[..], b"42", b"true", b"Del", b""] {
            assert_eq!(
                body_first_line(body, true),
                BodyLine::NotRequestLine,
                "{body:?}"
            );
        }
        for body in [
            &b"GET"[..],
            b"DEL",
            b"PROPFIND /x",
            b"AT\r",
            b"\r\nM-SEARCH",
        ] {
            assert_eq!(
                body_first_line(body, true),
                BodyLine::Unfinished,
                "{body:?}"
            );
            assert_eq!(
                body_first_line(body, false),
                BodyLine::Undecided,
                "{body:?}"
            );
        }
        assert_eq!(body_first_line(b"{", false), BodyLine::NotRequestLine);
        let hex = vec![b'a'; MAX_DETECT_BYTES];
        assert_eq!(body_first_line(&hex, false), BodyLine::NotRequestLine);
        assert_eq!(body_first_line(&blanks, false), BodyLine::RequestLine);
        assert_eq!(
            body_first_line(&cut_in_method, false),
            BodyLine::RequestLine
        );
        let mut long_target = b"PROPFIND /".to_vec();
        long_target.resize(MAX_DETECT_BYTES, b'a');
        assert_eq!(body_first_line(&long_target, false), BodyLine::RequestLine);
        // No version (HTTP/0.9) is a request to llhttp (Node) for any
        // method with a request's target, and so are RTSP's and Icecast's
        // versions (Node then reads HTTP/1.1 requests after them); a NATS
        // client's first line after the server's banner is no request, nor
        // a Redis or memcached command; `DELETE /` at a body's end is
        // unfinished.
        assert_eq!(
            first_line(b"CONNECT {\"verbose\":false}\r\n"),
            FirstLine::NotRequestLine
        );
        for request in [
            &b"DELETE /admin\r\n"[..],
            b"PURGE /admin/x\r\nHost: a\r\n",
            b"PURGE /admin/x\nHost: a\n",
            b"GET /admin\r\n",
            b"OPTIONS *\r\n",
            b"FETCH http://a.example/x\r\n",
            b"SETUP /public/x RTSP/1.0\r\nHost: a\r\n",
            b"DESCRIBE rtsp://cam.example/s RTSP/1.0\r\n",
            b"SOURCE /admin/x ICE/1.0\r\n",
        ] {
            assert_eq!(first_line(request), FirstLine::RequestLine, "{request:?}");
            assert_eq!(classify(request), Classification::Http1, "{request:?}");
            assert_eq!(
                body_first_line(request, false),
                BodyLine::RequestLine,
                "{request:?}"
            );
        }
        for not_request in [
            &b"get foo\r\n"[..],
            b"set foo 0 0 3\r\n",
            b"EHLO mail.example\r\n",
            b"a1 LOGIN user pass\r\n",
            b"PUB subject 5\r\n",
            b"SETUP /x RTSQ/1.0\r\n",
        ] {
            assert_eq!(
                first_line(not_request),
                FirstLine::NotRequestLine,
                "{not_request:?}"
            );
        }
        assert_eq!(first_line(b"SETUP /x RTS"), FirstLine::Undecided);
        assert_eq!(body_first_line(b"DELETE /", true), BodyLine::Unfinished);
        // Detection: an LDAP client's first messages (`0`, then a length
        // of 12 or 29, which are delimiters) are opaque at once.
        for ldap in [
            &b"\x30\x0c\x02\x01\x01\x60\x07\x02\x01\x03\x04\x00\x80\x00"[..],
            b"\x30\x1d\x02\x01\x01\x77\x18\x80\x161.3.6.1.4.1.1466.20037",
        ] {
            assert_eq!(classify(ldap), Classification::Opaque, "{ldap:?}");
            assert_eq!(classify_final(ldap), Classification::Opaque, "{ldap:?}");
        }
        // A control byte is part of a target to the guards (Python splits
        // on whitespace only).
        assert_eq!(
            first_line(b"PURGE /admin/x\x01 HTTP/1.1"),
            FirstLine::RequestLine
        );
        // (Detection calls it opaque; the guard on that path cuts it.)
        assert_eq!(
            classify(b"PURGE /admin/x\x01 HTTP/1.1\r\n"),
            Classification::Opaque
        );
        assert_eq!(classify_final(b"PROPFIND /a"), Classification::Http1);
        assert_eq!(classify_final(b"FOO /x HTT"), Classification::Http1);
        assert_eq!(classify_final(b"PROPFIND"), Classification::Opaque);
        assert_eq!(classify_final(b""), Classification::Opaque);
        assert_eq!(classify_final(b"\r\n \t\r"), Classification::Opaque);
        let blanks = b"\r\n".repeat(MAX_DETECT_BYTES / 2);
        assert_eq!(classify(&blanks), Classification::NeedMore);
        assert_eq!(classify_final(&blanks), Classification::Http1);
        let mut long = b"PROPFIND /".to_vec();
        long.resize(MAX_DETECT_BYTES, b'a');
        assert_eq!(classify(&long), Classification::NeedMore);
        assert_eq!(classify_final(&long), Classification::Http1);
    }

    #[test]
    fn detect_h2_preface() {
        assert_eq!(classify(H2_PREFACE), Classification::Http2Preface);
        let with_settings = [H2_PREFACE, b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"].concat();
        assert_eq!(classify(&with_settings), Classification::Http2Preface);
        for len in 1..H2_PREFACE.len() {
            assert_eq!(
                classify(&H2_PREFACE[..len]),
                Classification::NeedMore,
                "{len}"
            );
            // Cut short: decided (as HTTP/1 once `PRI ` is there: the
            // parser refuses it), never left open.
            assert_ne!(classify_final(&H2_PREFACE[..len]), Classification::NeedMore);
        }
    }

    #[test]
    fn detect_opaque_protocols() {
        for bytes in [
            &b"SSH-2.0-OpenSSH_9.6\r\n"[..],
            b"\x00",
            b"\r\n\x00",
            b"*1\r\n$4\r\nPING\r\n",             // Redis
            b"\x00\x00\x00\x08\x04\xd2\x16\x2f", // PostgreSQL SSLRequest
        ] {
            assert_eq!(classify(bytes), Classification::Opaque, "{bytes:?}");
        }
    }

    // --- Properties ----------------------------------------------------------

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        #[test]
        fn detect_arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
            let class = classify(&bytes);
            prop_assert!(class != Classification::NeedMore || bytes.len() < MAX_DETECT_BYTES);
            prop_assert!(classify_final(&bytes) != Classification::NeedMore);
        }

        #[test]
        fn detect_arbitrary_tls_records_never_panic(
            version in 0u8..6, len in any::<u16>(), hs_type in 0u8..3,
            body in prop::collection::vec(any::<u8>(), 0..600),
        ) {
            let mut bytes = vec![TLS_HANDSHAKE, 3, version];
            bytes.extend(len.to_be_bytes());
            bytes.push(hs_type);
            bytes.extend(body);
            let _ = classify(&bytes);
            let _ = classify_final(&bytes);
        }

        #[test]
        fn detect_arbitrary_http_heads_never_panic(
            head in prop::collection::vec(prop::sample::select(b"Host: \r\n\tab:.1\x00\xff".to_vec()), 0..200),
        ) {
            let bytes = [&b"GET / HTTP/1.1\r\n"[..], &head].concat();
            prop_assert_eq!(classify(&bytes), Classification::Http1);
        }

        /// A verdict never changes when more bytes arrive: it is safe to act
        /// on the first decisive peek. The one designed exception: a bare
        /// token that is no method's prefix (`PROPF`, `*`) is opaque *for
        /// now*; more bytes may make it a request line, which the opaque
        /// path's first-line guard catches ([`first_line`]).
        #[test]
        fn detect_verdicts_are_stable_under_more_bytes(
            start in prop::collection::vec(any::<u8>(), 0..64),
            more in prop::collection::vec(any::<u8>(), 0..64),
            use_hello in any::<bool>(),
        ) {
            let start = if use_hello { real_hello().to_vec() } else { start };
            let first = classify(&start);
            let opaque_for_now = first == Classification::Opaque
                && matches!(
                    request_line(skip_blanks(&start), Reading::Detection),
                    RequestLine::Partial { past_method: false } | RequestLine::CrLast
                );
            if first != Classification::NeedMore && !opaque_for_now {
                prop_assert_eq!(classify(&[start, more].concat()), first);
            }
        }

        /// A request line split by any bytes some server splits on, cut
        /// anywhere (a client may send it a byte at a time): the guard never
        /// gives up on a prefix of it, and classification never calls a
        /// prefix opaque for good.
        #[test]
        fn a_request_line_cut_anywhere_is_never_given_up(
            method in "[A-Z]{1,8}",
            target in "/[a-z]{0,6}",
            first in prop::collection::vec(prop::sample::select(LINE_SPACES.to_vec()), 1..3),
            second in prop::collection::vec(prop::sample::select(LINE_SPACES.to_vec()), 1..3),
        ) {
            let line = [
                method.as_bytes(), &first, target.as_bytes(), &second, b"HTTP/1.1\r\n",
            ]
            .concat();
            for cut in 1..=line.len() {
                let prefix = &line[..cut];
                prop_assert_ne!(first_line(prefix), FirstLine::NotRequestLine, "{:?}", prefix);
                let opaque_for_now = matches!(
                    request_line(skip_blanks(prefix), Reading::Detection),
                    RequestLine::Partial { past_method: false } | RequestLine::CrLast
                );
                if classify(prefix) == Classification::Opaque {
                    prop_assert!(opaque_for_now, "{:?}", prefix);
                }
            }
        }

        /// The exception above, pinned: what was opaque for now and became
        /// a request line is one the first-line guard recognizes.
        #[test]
        fn an_opaque_for_now_token_that_becomes_a_request_line_is_caught(
            token in "[!#$%&'*+.^_`|~0-9a-zA-Z-]{1,8}",
        ) {
            let bare = token.as_bytes();
            if classify(bare) == Classification::Opaque {
                let line = [bare, b" /x HTTP/1.1\r\n"].concat();
                prop_assert_eq!(first_line(&line), FirstLine::RequestLine);
            }
        }
    }

    // --- detect() over real loopback sockets ---------------------------------

    const TIMEOUT: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn detect_http1_on_a_socket_leaves_the_bytes_unread() {
        let (mut client, mut server) = loopback_pair().await;
        let request = b"GET /v1/x HTTP/1.1\r\nHost: api.example\r\n\r\n";
        client.write_all(request).await.unwrap();
        let got = detect(&server, TIMEOUT, 1024).await;
        let Detection::Classified {
            class: Classification::Http1,
            peeked,
        } = got
        else {
            panic!("{got:?}");
        };
        assert!(peeked >= 4);
        // Peeking consumed nothing: the next reader sees the whole request.
        let mut read = vec![0u8; request.len()];
        server.read_exact(&mut read).await.unwrap();
        assert_eq!(read, request);
    }

    #[tokio::test]
    async fn detect_h2_preface_on_a_socket() {
        let (mut client, server) = loopback_pair().await;
        client.write_all(H2_PREFACE).await.unwrap();
        let got = detect(&server, TIMEOUT, 1024).await;
        assert_eq!(
            got,
            Detection::Classified {
                class: Classification::Http2Preface,
                peeked: H2_PREFACE.len()
            }
        );
    }

    #[tokio::test]
    async fn detect_tls_hello_from_a_real_client() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = spawn_tls_client(listener.local_addr().unwrap(), &[ALPN_APPID], "api.example");
        let (server, _) = listener.accept().await.unwrap();
        let got = detect(&server, TIMEOUT, MAX_DETECT_BYTES).await;
        let Detection::Classified { class, .. } = got else {
            panic!("{got:?}");
        };
        assert_eq!(class, hello_info(Some("api.example"), &[ALPN_APPID]));
        drop(server);
        client.await.unwrap();
    }

    #[tokio::test]
    async fn detect_one_byte_then_stall_times_out() {
        let (mut client, server) = loopback_pair().await;
        client.write_all(b"G").await.unwrap();
        let timeout = Duration::from_millis(300);
        let started = StdInstant::now();
        let got = detect(&server, timeout, 1024).await;
        let elapsed = started.elapsed();
        assert_eq!(got, Detection::ReadTimeout { peeked: 1 });
        assert!(elapsed >= timeout, "{elapsed:?}");
        assert!(elapsed < timeout + Duration::from_secs(2), "{elapsed:?}");
        drop(client);
    }

    #[tokio::test]
    async fn detect_silent_client_times_out_with_nothing_seen() {
        let (_client, server) = loopback_pair().await;
        let got = detect(&server, Duration::from_millis(100), 1024).await;
        assert_eq!(got, Detection::ReadTimeout { peeked: 0 });
    }

    #[tokio::test]
    async fn detect_connect_and_close_is_closed() {
        let (client, server) = loopback_pair().await;
        drop(client);
        assert_eq!(detect(&server, TIMEOUT, 1024).await, Detection::Closed);
    }

    #[tokio::test]
    async fn detect_bytes_arriving_in_pieces() {
        let (mut client, server) = loopback_pair().await;
        let writer = tokio::spawn(async move {
            for piece in [&b"G"[..], b"E", b"T / HTTP/1.1\r\n"] {
                client.write_all(piece).await.unwrap();
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            client
        });
        let got = detect(&server, TIMEOUT, 1024).await;
        assert!(
            matches!(
                got,
                Detection::Classified {
                    class: Classification::Http1,
                    ..
                }
            ),
            "{got:?}"
        );
        drop(writer.await.unwrap());
    }

    #[tokio::test]
    async fn detect_peek_limit_settles_an_incomplete_hello() {
        let (mut client, server) = loopback_pair().await;
        client.write_all(real_hello()).await.unwrap();
        let got = detect(&server, TIMEOUT, 16).await;
        assert_eq!(
            got,
            Detection::Classified {
                class: Classification::TlsUnreadable(TlsUnreadable::Truncated),
                peeked: 16
            }
        );
    }

    /// What a real HTTP/2 server (the h2 crate's, under hyper and most Rust
    /// servers) sends before its client has said a word is a greeting.
    #[tokio::test]
    async fn a_real_h2_servers_first_bytes_are_a_greeting() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let task = tokio::spawn(async move { h2::server::handshake(server).await.map(|_| ()) });
        let mut first = vec![0u8; 256];
        let n = client.read(&mut first).await.unwrap();
        assert!(h2_server_greeting(&first[..n]), "{:?}", &first[..n]);
        drop(client);
        let _ = task.await;
    }

    #[test]
    fn only_a_settings_frame_on_stream_zero_is_a_greeting() {
        // An empty SETTINGS frame, and one with two settings.
        assert!(h2_server_greeting(&[0, 0, 0, 4, 0, 0, 0, 0, 0]));
        assert!(h2_server_greeting(&[
            0, 0, 12, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100, 0, 4, 0, 1, 0, 0
        ]));
        // The reserved bit of the stream id is ignored (RFC 9113 §4.1).
        assert!(h2_server_greeting(&[0, 0, 0, 4, 0, 0x80, 0, 0, 0]));
        for (bytes, why) in [
            (&[0u8, 0, 0, 4, 1, 0, 0, 0, 0][..], "an ACK"),
            (&[0, 0, 0, 4, 0, 0, 0, 0, 1], "stream 1"),
            (&[0, 0, 5, 4, 0, 0, 0, 0, 0], "not whole settings"),
            (
                &[0, 0x40, 2, 4, 0, 0, 0, 0, 0],
                "over the default frame size",
            ),
            (&[0, 0, 0, 4, 0, 0, 0, 0], "eight bytes"),
            (&[0, 0, 8, 6, 0, 0, 0, 0, 0], "PING"),
            (b"220 smtp.example ESMTP\r\n", "a text banner"),
            (H2_PREFACE, "a client's preface"),
            (&[0x16, 3, 3, 0, 0x7a, 2, 0, 0, 0x76], "a TLS ServerHello"),
        ] {
            assert!(!h2_server_greeting(bytes), "{why}");
        }
    }
}
