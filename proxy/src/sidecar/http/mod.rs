//! L7: proxy HTTP/1.1, HTTP/2 and gRPC, authorizing every request.
//!
//! Design bias: *one request model, two codecs*. The codecs ([`h1`] for
//! HTTP/1.x, [`relay`] for HTTP/2 and gRPC) parse and frame messages; neither
//! decides anything about a request on its own. Each hands the request
//! head to [`authorize_request`], which is the only place that:
//! - checks the method (tokens; a lower-case letter is refused, so `delete`
//!   cannot slip past a rule about `DELETE`; `CONNECT` is refused),
//! - turns the target into the canonical path policy sees ([`path`]), or
//!   refuses it,
//! - gives policy a header view in which `_` and `-` are one character,
//!   every value of a repeated header counts, and `x-appid-*` is invisible,
//! - asks the [`RequestAuthorizer`] (which writes the audit line) and says
//!   what to do: forward, deny (403 / `grpc-status: 7`) or refuse (400/405).
//!
//! So the same request gets the same verdict and the same status on every
//! protocol, direction and tunnel mode (`tests/l7_differential.rs` runs one
//! hostile table through all of them). `docs/what-policy-sees.md` is the
//! user-facing account.
//!
//! Design bias of the proxying: *one upstream connection per downstream
//! connection, same protocol on both sides*. An HTTP/2 client gets an
//! HTTP/2 upstream, so streams stay multiplexed end to end and gRPC
//! (trailers, streaming) passes through untouched; an HTTP/1.1 connection
//! gets an HTTP/1.1 upstream and keeps its keep-alive. On allow, the codec
//! strips every `x-appid-*` header the caller sent ([`is_appid_header`]),
//! adds the verified peer's identity headers (inbound only) and forwards;
//! inbound, it also strips `x-appid-*` from the app's responses.

pub mod flood;
pub mod h1;
pub mod path;
pub mod relay;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use appid_policy::policy::{Headers, is_unreserved};
use futures_util::future::Either;
use http::header::HeaderValue;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::sidecar::clock::Stamp;
use crate::sidecar::splice::{Abort, Chunks};

/// The HTTP version detected on the downstream connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpVersion {
    Http1,
    Http2,
}

/// What the authorizer sees of one request: checked and canonical.
pub struct RequestFacts<'a> {
    pub method: &'a str,
    /// The canonical path ([`path::canonical_path`]).
    pub path: &'a str,
    /// Every header but `x-appid-*`, `_` and `-` alike.
    pub headers: &'a dyn Headers,
    pub grpc: bool,
    /// When its head was read: the time its expiry check and audit line
    /// use ([`crate::sidecar::clock`]).
    pub arrived: Stamp,
}

/// The rule name of refusals in audit lines and metrics: the policy
/// crate's, which no rule may take
/// ([`appid_policy::policy::SIDECAR_RULE_NAMES`]).
pub use appid_policy::policy::INVALID_REQUEST_RULE;

/// Why a request is refused before policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A method with a lower-case letter (`delete`, `Delete`).
    LowerCaseMethod,
    /// A method that is not an RFC 9110 token.
    BadMethod,
    /// `CONNECT`: tunnels inside HTTP are not proxied.
    Connect,
    /// `*` as the target of anything but `OPTIONS`.
    AsteriskTarget,
    /// A path the sidecar cannot put into canonical form without guessing.
    Path(path::PathError),
    /// A head whose framing is malformed (see [`Malformed`]).
    Malformed(Malformed),
    /// An authority the app could route on that policy would not see as
    /// the request's host (see [`check_authority`]).
    Authority(AuthorityError),
    /// A request naming another host than the one its connection (outside
    /// the mesh) was allowed for ([`RequestAuthorizer::connection_host`]):
    /// `421 Misdirected Request`, so the app opens a connection for it.
    Misdirected,
}

/// Why a request's authority (the HTTP/2 `:authority`, or the authority of
/// an HTTP/1 absolute-form target) is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthorityError {
    /// A `Host` field names another host (RFC 9113 §8.3.1: malformed; RFC
    /// 9112 §3.2.2: an origin server routes on the target's authority and
    /// ignores `Host`, while many apps read `Host`).
    DiffersFromHost,
    /// `user@host`: userinfo a request must not carry (RFC 9110 §4.2.4),
    /// which parsers split differently.
    Userinfo,
    /// An empty authority.
    Empty,
    /// An authority, or a `Host`, that is no `host[:port]`
    /// (`[a.test]evil.test`, `a.test:x`).
    Invalid,
}

impl AuthorityError {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthorityError::DiffersFromHost => "Host differs from the request's authority",
            AuthorityError::Userinfo => "userinfo in the request's authority",
            AuthorityError::Empty => "an empty authority",
            AuthorityError::Invalid => "a host that is no host[:port]",
        }
    }
}

impl Refusal {
    /// The status of the answer: HTTP/1 always answers, HTTP/2 answers
    /// refusals before policy and resets a stream refused for its framing.
    pub fn status(self) -> u16 {
        match self {
            Refusal::Connect => 405,
            Refusal::Misdirected => 421,
            Refusal::Malformed(Malformed::HeadTooLarge) => 431,
            _ => 400,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::LowerCaseMethod => "lower-case request method",
            Refusal::BadMethod => "invalid request method",
            Refusal::Connect => "CONNECT is not proxied",
            Refusal::AsteriskTarget => "`*` is a target only for OPTIONS",
            Refusal::Path(e) => e.as_str(),
            Refusal::Malformed(m) => m.as_str(),
            Refusal::Authority(e) => e.as_str(),
            Refusal::Misdirected => {
                "the request names another host than its connection was allowed for"
            }
        }
    }
}

/// A request refused for its form rather than for what it asks: its
/// syntax, its size, its length, its trailers, whitespace around a value.
/// Such a request is either broken or trying to make two parsers disagree
/// (request smuggling), and either way the operator should hear of it: both
/// codecs audit it as a refusal (rule `invalid-request`, this reason),
/// through [`RequestAuthorizer::refused`] when the head names a method and
/// target, [`RequestAuthorizer::malformed`] when it does not (or the request
/// was already on its way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// A `content-length` that is not one integer, or values that differ.
    BadContentLength,
    /// Both `Transfer-Encoding` and `Content-Length` (HTTP/1).
    BothLengths,
    /// A `Transfer-Encoding` that does not end in `chunked` (HTTP/1).
    NotChunked,
    /// `Transfer-Encoding` on an HTTP/1.0 request, which has no chunked
    /// coding (some servers would read the chunks as the next request).
    TransferEncodingOnHttp10,
    /// A malformed chunked body (HTTP/1).
    BadChunk,
    /// A field value with leading or trailing whitespace (HTTP/2: HTTP/1's
    /// syntax trims it).
    PaddedValue,
    /// A body longer or shorter than its `content-length` (HTTP/2; in
    /// HTTP/1 bytes past it are the next request).
    BodyNotItsLength,
    /// Request trailers: they could carry fields past the authorizer.
    Trailers,
    /// A request body (`content-length`) that begins with a request line:
    /// an app that leaves the body unread would take it as its next
    /// request ([`crate::detect::body_first_line`]).
    BodyIsRequest,
    /// A head that does not parse as a request (HTTP/1: httparse refused
    /// it; HTTP/2: a header block or pseudo-headers no request may have).
    InvalidHead,
    /// A head over `max_header_bytes` (answered 431).
    HeadTooLarge,
    /// An HTTP/1 request line from the client after the app answered
    /// `101 Switching Protocols`: the new protocol's bytes (WebSocket
    /// frames) never are one; an app still reading HTTP (its `101` was no
    /// answer to this request) would run it unchecked.
    RequestAfterSwitch,
}

impl Malformed {
    pub fn as_str(self) -> &'static str {
        match self {
            Malformed::BadContentLength => "invalid Content-Length",
            Malformed::BothLengths => "both Transfer-Encoding and Content-Length",
            Malformed::NotChunked => "Transfer-Encoding does not end in chunked",
            Malformed::TransferEncodingOnHttp10 => "Transfer-Encoding on an HTTP/1.0 request",
            Malformed::BadChunk => "malformed chunked body",
            Malformed::PaddedValue => "a field value with leading or trailing whitespace",
            Malformed::BodyNotItsLength => "a body longer or shorter than its content-length",
            Malformed::Trailers => "request trailers",
            Malformed::BodyIsRequest => "a request body that begins with a request line",
            Malformed::InvalidHead => "invalid message head",
            Malformed::HeadTooLarge => "request head too large",
            Malformed::RequestAfterSwitch => "an HTTP request line after 101 Switching Protocols",
        }
    }
}

impl From<h1::framing::FramingError> for Malformed {
    fn from(error: h1::framing::FramingError) -> Self {
        use h1::framing::FramingError;
        match error {
            FramingError::BothLengths => Malformed::BothLengths,
            FramingError::BadContentLength => Malformed::BadContentLength,
            FramingError::NotChunked => Malformed::NotChunked,
            FramingError::BadChunk => Malformed::BadChunk,
            FramingError::Trailers => Malformed::Trailers,
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a codec does with one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestDecision {
    /// Strip `x-appid-*`, add the peer's headers, send it on.
    Forward,
    /// Policy denied it: answer 403 (`grpc-status: 7`) naming the rule.
    Deny { rule: String, reason: String },
    /// Refused before policy: answer [`Refusal::status`].
    Refuse(Refusal),
}

/// The one request check every codec calls: method, canonical path,
/// authority, header view, policy. `target` is the HTTP/1 request target
/// or the HTTP/2 `:path`; `authority` the HTTP/2 `:authority` (`None` in
/// HTTP/1, whose absolute-form target carries its own). Refusals and
/// decisions are audited (by `authorizer`).
pub fn authorize_request(
    authorizer: &dyn RequestAuthorizer,
    method: &str,
    target: &str,
    authority: Option<&str>,
    headers: &dyn Headers,
    grpc: bool,
    arrived: Stamp,
) -> RequestDecision {
    let held_to = authorizer.connection_host();
    let checked = match check_request(method, target) {
        // A connection held to a name outside the mesh is held to its host,
        // not to our canonical paths: no path rule can apply to it (`http`
        // and `to.external` do not combine), and external APIs use what
        // canonical form refuses (`%2F` in GitLab's project paths, `%25`
        // in object keys). So how a path is spelled is let go there, and
        // policy sees the raw path; what could move the authority or hide
        // part of the target (`http://a.test?@b.test/`, a backslash, a
        // fragment, control bytes) is refused there too.
        Err(Refusal::Path(
            path::PathError::EncodedSlash
            | path::PathError::EncodedPercent
            | path::PathError::EncodedSemicolon
            | path::PathError::DotSegment,
        )) if held_to.is_some() => match path::path_of(target) {
            Ok(raw) => Ok(std::borrow::Cow::Borrowed(raw)),
            Err(e) => Err(Refusal::Path(e)),
        },
        checked => checked,
    };
    let checked = checked.and_then(|path| {
        // HTTP/2's `:path` has no authority of its own (RFC 9113 §8.3.1):
        // one beside `:authority` would be checked as one and routed on by
        // an app that reads the other (Node's `new URL(req.url, base)`).
        if authority.is_some() && path::authority_of(target).is_some() {
            return Err(Refusal::Path(path::PathError::NotAbsolute));
        }
        let authority = authority.or_else(|| path::authority_of(target));
        check_authority(authority, headers)?;
        if let Some(allowed) = held_to
            && !names_only(allowed, authority, headers)
        {
            return Err(Refusal::Misdirected);
        }
        Ok((path, authority))
    });
    match checked {
        Err(refusal) => {
            authorizer.refused(method, target, refusal, grpc);
            RequestDecision::Refuse(refusal)
        }
        Ok((path, authority)) => {
            let with_host;
            let headers = match authority {
                Some(authority) => {
                    with_host = AuthorityAsHost { headers, authority };
                    &with_host as &dyn Headers
                }
                None => headers,
            };
            let facts = RequestFacts {
                method,
                path: &path,
                headers,
                grpc,
                arrived,
            };
            match authorizer.authorize(&facts) {
                RequestVerdict::Allow => RequestDecision::Forward,
                RequestVerdict::Deny { rule, reason } => RequestDecision::Deny { rule, reason },
            }
        }
    }
}

/// One host per request, the one the app routes on: a request that names
/// an authority (the HTTP/2 `:authority`, an HTTP/1 absolute-form target)
/// may carry `Host` only to name the same host (as host names compare:
/// ASCII case, a port and a trailing dot aside, so `http://a.test:80/` with
/// `Host: a.test` passes), and no userinfo. Otherwise policy would match
/// `host` rules against a `Host` the app ignores (or, in HTTP/2, against
/// no `host` at all) while the app routes on the authority.
pub fn check_authority(authority: Option<&str>, headers: &dyn Headers) -> Result<(), Refusal> {
    let Some(authority) = authority else {
        // `Host` alone names the host: it must be one (RFC 9112 §3.2: a
        // server answers 400 to an invalid one), or empty (a target with
        // no authority).
        let mut invalid = false;
        headers.each_value("host", &mut |host| {
            invalid |= !host.is_empty() && !valid_host(host);
        });
        if invalid {
            return Err(Refusal::Authority(AuthorityError::Invalid));
        }
        return Ok(());
    };
    if authority.is_empty() {
        return Err(Refusal::Authority(AuthorityError::Empty));
    }
    if authority.as_bytes().contains(&b'@') {
        return Err(Refusal::Authority(AuthorityError::Userinfo));
    }
    if !valid_host(authority.as_bytes()) {
        return Err(Refusal::Authority(AuthorityError::Invalid));
    }
    let mut differs = false;
    headers.each_value("host", &mut |host| {
        differs |= !same_host(host, authority);
    });
    if differs {
        return Err(Refusal::Authority(AuthorityError::DiffersFromHost));
    }
    Ok(())
}

/// RFC 9110 §4.2.3's `host [ ":" port ]`, as apps route on it: an IPv6
/// literal in brackets, or a name of letters, digits, `-`, `.`, `_` and `~`
/// (no percent-encoding, no brackets around a name: `[a.test]evil.test`
/// reads as `a.test` to one parser and `evil.test` to another) with no
/// empty label but the one after a final dot (`a.test..` would be
/// `a.test.` to policy, which takes one final dot off, and another name to
/// a server); then at most a port of digits.
pub(crate) fn valid_host(value: &[u8]) -> bool {
    if let Some(bracketed) = value.strip_prefix(b"[") {
        let Some(end) = bracketed.iter().position(|&b| b == b']') else {
            return false;
        };
        let literal = std::str::from_utf8(&bracketed[..end]).ok();
        return literal
            .and_then(|l| l.parse::<std::net::Ipv6Addr>().ok())
            .is_some()
            && port_ok(&bracketed[end + 1..]);
    }
    // A name (`is_host_name` without its IPv6 literals, which need their
    // brackets here), then maybe a port; one pass, as this runs for every
    // request.
    let (name, port) = match value.iter().rposition(|&b| b == b':') {
        Some(colon) => value.split_at(colon),
        None => (value, &value[value.len()..]),
    };
    // A host name's bytes are the unreserved ones (`is_host_name`); a dot
    // neither starts it nor follows another.
    let mut after_dot = true;
    let name_ok = name.iter().all(|&b| {
        let ok = is_unreserved(b) && !(b == b'.' && after_dot);
        after_dot = b == b'.';
        ok
    });
    !name.is_empty() && name_ok && port_ok(port)
}

/// Empty, or `:` and digits.
fn port_ok(port: &[u8]) -> bool {
    match port.split_first() {
        None => true,
        Some((b':', digits)) => digits.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    }
}

/// Whether `host` (a field's bytes) names the host `name` names, as host
/// names compare: ASCII case, a `:port`, a trailing dot and IPv6 brackets
/// aside (what policy matches is the name alone).
fn same_host(host: &[u8], name: &str) -> bool {
    use appid_policy::policy::normalize_host;
    valid_host(host)
        && valid_host(name.as_bytes())
        && std::str::from_utf8(host)
            .is_ok_and(|host| normalize_host(host).eq_ignore_ascii_case(normalize_host(name)))
}

/// Whether the request's host (its authority, else its `Host` fields, all
/// of them) is `allowed`, as host names compare: ASCII case aside, without
/// a port or a trailing dot. A request with no host names no host.
fn names_only(allowed: &str, authority: Option<&str>, headers: &dyn Headers) -> bool {
    if let Some(authority) = authority {
        return same_host(authority.as_bytes(), allowed);
    }
    let (mut any, mut all) = (false, true);
    headers.each_value("host", &mut |host| {
        any = true;
        all &= same_host(host, allowed);
    });
    any && all
}

/// The header view policy gets for a request that names an authority: its
/// `host` is that authority (any `Host` field says the same, see
/// [`check_authority`]); every other header is the codec's.
struct AuthorityAsHost<'a> {
    headers: &'a dyn Headers,
    authority: &'a str,
}

impl Headers for AuthorityAsHost<'_> {
    fn each_value(&self, name: &str, visit: &mut dyn FnMut(&[u8])) {
        if name == "host" {
            visit(self.authority.as_bytes());
        } else {
            self.headers.each_value(name, visit);
        }
    }
}

/// Method and target: the canonical path, or why not.
pub fn check_request<'t>(
    method: &str,
    target: &'t str,
) -> Result<std::borrow::Cow<'t, str>, Refusal> {
    if method.is_empty() || !method.bytes().all(crate::detect::is_tchar) {
        return Err(Refusal::BadMethod);
    }
    // Methods are case-sensitive, but some frameworks upper-case them.
    if method.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(Refusal::LowerCaseMethod);
    }
    if method == "CONNECT" {
        return Err(Refusal::Connect);
    }
    let path = path::canonical_path(target).map_err(Refusal::Path)?;
    if path == "*" && method != "OPTIONS" {
        return Err(Refusal::AsteriskTarget);
    }
    Ok(path)
}

/// `x-appid-*`, in any case, and with `_` for `-` (which some servers map
/// to the same name: `X_APPID_PEER_ID`). Only sidecars set these.
pub fn is_appid_header(name: &str) -> bool {
    const PREFIX: &[u8] = b"x-appid-";
    name.len() >= PREFIX.len()
        && name.as_bytes()[..PREFIX.len()]
            .iter()
            .zip(PREFIX)
            .all(|(&a, &p)| a.to_ascii_lowercase() == p || (p == b'-' && a == b'_'))
}

/// The header view policy gets over a codec's header fields: `name` looked
/// up with [`header_name_matches`](appid_policy::policy::header_name_matches),
/// `x-appid-*` fields skipped (they are removed before the request goes on).
pub fn visit_header_values<'f>(
    fields: impl Iterator<Item = (&'f str, &'f [u8])>,
    name: &str,
    visit: &mut dyn FnMut(&[u8]),
) {
    for (field, value) in fields {
        if appid_policy::policy::header_name_matches(field, name) && !is_appid_header(field) {
            visit(value);
        }
    }
}

/// The answer for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestVerdict {
    Allow,
    Deny { rule: String, reason: String },
}

/// Decides each request (and writes its audit line).
pub trait RequestAuthorizer: Send + Sync + 'static {
    fn authorize(&self, request: &RequestFacts<'_>) -> RequestVerdict;

    /// Outside the mesh, the host a connection was allowed for by name:
    /// its requests must name it ([`Refusal::Misdirected`]). `None` (the
    /// default): requests may name any host.
    fn connection_host(&self) -> Option<&str> {
        None
    }

    /// Called for a request refused before policy (with the raw target):
    /// audit it. Nothing, by default.
    fn refused(&self, _method: &str, _target: &str, _refusal: Refusal, _grpc: bool) {}

    /// Called for a request refused for its form where no method and target
    /// can be named: a head that does not parse or is too large, or a
    /// request already decided and cut off for its body or trailers. Audit
    /// it. Nothing, by default.
    fn malformed(&self, _why: Malformed) {}

    /// Called once per request with its response status and how long the
    /// proxy took to get the response head (for metrics).
    fn observe(&self, _status: u16, _elapsed: Duration) {}

    /// Resolves when the connection is no longer allowed (a policy reload
    /// or a revocation): what ends a connection that left HTTP behind (an
    /// upgrade to WebSocket, say). Never, by default.
    fn withdrawn(&self) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(std::future::pending())
    }
}

/// Headers the inbound sidecar adds for an authenticated peer.
#[derive(Debug, Clone)]
pub struct PeerHeaders {
    /// `x-appid-peer-id`: the SPIFFE ID.
    pub id: HeaderValue,
    /// `x-appid-peer`: base64url of the peer's AppID JSON.
    pub claims: HeaderValue,
}

pub const PEER_ID_HEADER: &str = "x-appid-peer-id";
pub const PEER_CLAIMS_HEADER: &str = "x-appid-peer";
pub const DENIED_BY_HEADER: &str = "x-appid-denied-by";

/// Where the local app is, seen from the proxy: what decides whether the
/// responses are the app's (and lose their `x-appid-*` headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppSide {
    /// Inbound: the app answers; its responses are stripped of `x-appid-*`.
    Upstream,
    /// Outbound: the app asks; responses come from the peer sidecar, whose
    /// `x-appid-denied-by` the app should see.
    Downstream,
}

/// Tells an HTTP proxy that the sidecar is shutting down. A handle rather
/// than a future: an idle HTTP/1 connection keeps it for its whole life,
/// and the future that waits (a waiter node, some 150 bytes) then exists
/// only while the proxy waits between requests. (A future passed in and
/// pinned inside the proxy's `async` block was kept twice: once captured,
/// once pinned.)
#[derive(Debug, Clone)]
pub struct Shutdown {
    signal: tokio::sync::watch::Receiver<bool>,
    /// This connection's own end, if it has one (its peer's certificate
    /// expires then).
    at: Option<tokio::time::Instant>,
}

impl Shutdown {
    /// Shutdown starts when `signal` turns `true` (or its sender is gone).
    pub fn new(signal: tokio::sync::watch::Receiver<bool>) -> Self {
        Shutdown { signal, at: None }
    }

    /// Starts at `at` too, if given.
    pub fn or_at(mut self, at: Option<tokio::time::Instant>) -> Self {
        self.at = at;
        self
    }

    /// Resolves once shutdown has started.
    pub async fn started(&mut self) {
        let signal = self.signal.wait_for(|stop| *stop);
        match self.at {
            // `biased`: no random start drawn at every poll (an HTTP/2
            // relay polls this at each of its wake-ups).
            Some(at) => tokio::select! {
                biased;
                _ = signal => {}
                () = tokio::time::sleep_until(at) => {}
            },
            None => {
                let _ = signal.await;
            }
        }
    }

    /// Never starts: for tests and fuzz harnesses that drive a proxy
    /// alone. Every such handle listens to one sender that lives as long
    /// as the process (a dropped sender would mean shutdown), so making
    /// millions of them costs nothing that stays.
    pub fn never() -> Self {
        static NEVER: std::sync::OnceLock<tokio::sync::watch::Sender<bool>> =
            std::sync::OnceLock::new();
        let sender = NEVER.get_or_init(|| tokio::sync::watch::channel(false).0);
        Shutdown::new(sender.subscribe())
    }
}

/// Limits for one proxied HTTP connection.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Largest request head (HTTP/1) or header list (HTTP/2) accepted.
    pub max_header_bytes: usize,
    /// How long a client may take to send a request head, and how long an
    /// HTTP/2 connection may carry no stream before its GOAWAY.
    pub header_timeout: Duration,
    /// How long a connection may take to finish after a GOAWAY.
    pub drain_timeout: Duration,
    /// Where the local app is.
    pub app: AppSide,
}

/// Why an HTTP proxy connection ended badly.
#[derive(Debug, thiserror::Error)]
pub enum HttpProxyError {
    /// The client broke HTTP/2 (RFC 9113 §5.4.1): a GOAWAY with this
    /// reason was sent and the connection closed. Audited by the caller,
    /// which knows the connection.
    #[error("http/2 connection error by the client: {0:?}")]
    ClientBrokeHttp2(::h2::Reason),
    #[error("i/o: {0}")]
    Io(std::io::Error),
    #[error("{0}")]
    Protocol(&'static str),
    /// A message (request or response) malformed in its form
    /// ([`Malformed`]); a request's is audited where it is refused.
    #[error("{}", .0.as_str())]
    Malformed(Malformed),
    /// The client sent more HTTP/2 control frames than its budget
    /// ([`flood`]); the connection was closed.
    #[error("HTTP/2 control frame flood")]
    Flood,
    /// The client cancelled most of its requests as soon as it sent them
    /// ([`relay`]'s rapid reset rule, CVE-2023-44487); the connection was
    /// closed.
    #[error("HTTP/2 rapid reset")]
    RapidReset,
}

/// Proxies one HTTP connection until it ends or `shutdown` resolves (then
/// in-flight requests finish and the connection closes gracefully).
/// HTTP/1.x goes through [`h1`], HTTP/2 and gRPC through [`relay`].
///
/// Not an `async fn`, which would keep its arguments beside the proxy it
/// awaits for the connection's whole life: the future returned is the
/// proxy itself.
pub fn proxy<D, U>(
    downstream: D,
    upstream: U,
    version: HttpVersion,
    authorizer: Arc<dyn RequestAuthorizer>,
    peer_headers: Option<PeerHeaders>,
    limits: HttpLimits,
    shutdown: Shutdown,
) -> impl Future<Output = Result<(), HttpProxyError>> + Send
where
    D: AsyncRead + AsyncWrite + Unpin + Send + Abort + Chunks + 'static,
    U: AsyncRead + AsyncWrite + Unpin + Send + Abort + Chunks + 'static,
{
    match version {
        HttpVersion::Http1 => Either::Left(h1::proxy(
            downstream,
            upstream,
            authorizer,
            peer_headers,
            limits,
            shutdown,
        )),
        // Boxed: the HTTP/2 state is large, and an HTTP/1 connection's task
        // would otherwise carry its size for its whole (mostly idle) life.
        HttpVersion::Http2 => Either::Right(Box::pin(relay::proxy(
            downstream,
            upstream,
            authorizer,
            peer_headers,
            limits,
            shutdown,
        ))),
    }
}

/// What a test's authorizer was asked to audit as refused
/// (`"refused <method> <target>: <why>"`) or malformed
/// (`"malformed: <why>"`), in order: one text for both codecs' tests.
#[cfg(test)]
#[derive(Default)]
pub(crate) struct AuditRecorder(std::sync::Mutex<Vec<String>>);

#[cfg(test)]
impl AuditRecorder {
    pub(crate) fn refused(&self, method: &str, target: &str, refusal: Refusal) {
        let line = format!("refused {method} {target}: {refusal}");
        self.0.lock().unwrap().push(line);
    }

    pub(crate) fn malformed(&self, why: Malformed) {
        let line = format!("malformed: {}", why.as_str());
        self.0.lock().unwrap().push(line);
    }

    pub(crate) fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appid_headers_in_either_spelling_and_any_case() {
        for name in [
            "x-appid-peer-id",
            "x_appid_peer_id",
            "X-AppID-Anything",
            "x-appid-",
        ] {
            assert!(is_appid_header(name), "{name}");
        }
        for name in ["x-other", "x-appid", "appid-peer-id", "x-appidpeer"] {
            assert!(!is_appid_header(name), "{name}");
        }
    }

    /// `valid_host` as its doc defines it, spelled out (the first form of
    /// it, before it became one pass over the bytes).
    fn valid_host_by_definition(value: &[u8]) -> bool {
        let (host, port) = match value.first() {
            Some(b'[') => match value.iter().position(|&b| b == b']') {
                Some(end) => match std::str::from_utf8(&value[1..end]) {
                    Ok(l) if l.parse::<std::net::Ipv6Addr>().is_ok() => {
                        (&value[..=end], &value[end + 1..])
                    }
                    _ => return false,
                },
                None => return false,
            },
            _ => match value.iter().rposition(|&b| b == b':') {
                Some(colon) => (&value[..colon], &value[colon..]),
                None => (value, &value[value.len()..]),
            },
        };
        let name_ok = host.first() == Some(&b'[')
            || std::str::from_utf8(host).is_ok_and(|name| {
                !name.contains(':')
                    && appid_policy::policy::is_host_name(name, false)
                    && !name.starts_with('.')
                    && !name.contains("..")
            });
        let port_ok = match port.split_first() {
            None => true,
            Some((b':', digits)) => digits.iter().all(u8::is_ascii_digit),
            Some(_) => false,
        };
        name_ok && port_ok
    }

    proptest::proptest! {
        #[test]
        fn valid_host_is_its_definition(
            value in proptest::string::bytes_regex(
                "(?s-u)(\\[[0-9a-fA-F:.\\]]{0,12}|[a-zA-Z0-9._~:@\\[\\]%\\x00\\xff-]{0,12})"
            ).unwrap()
        ) {
            proptest::prop_assert_eq!(valid_host(&value), valid_host_by_definition(&value), "{:?}", value);
        }
    }

    #[test]
    fn valid_hosts_and_not() {
        for ok in [
            &b"a.test"[..],
            b"a.test:80",
            b"A-b_c~d.",
            b"[::1]",
            b"[::1]:8080",
            b"10.0.0.1:1",
        ] {
            assert!(valid_host(ok), "{:?}", String::from_utf8_lossy(ok));
        }
        for bad in [
            &b""[..],
            b"a.test..",
            b".a.test",
            b"a..test:80",
            b".",
            b":80",
            b"a.test:8o",
            b"[a.test]evil.test",
            b"[::1",
            b"[::1]x",
            b"a b",
            b"a@b",
            b"::1",
            b"a%2e",
            b"\xc3\xa9.test",
        ] {
            assert!(!valid_host(bad), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    /// Records what policy saw of `host` and answers allow.
    struct SeesHost(std::sync::Mutex<Vec<String>>);

    impl RequestAuthorizer for SeesHost {
        fn authorize(&self, request: &RequestFacts<'_>) -> RequestVerdict {
            let mut seen = Vec::new();
            request.headers.each_value("host", &mut |v| {
                seen.push(String::from_utf8_lossy(v).into_owned());
            });
            *self.0.lock().unwrap() = seen;
            RequestVerdict::Allow
        }
    }

    /// Allows every request, on a connection allowed for `a.test` by name.
    struct HeldToName;

    impl RequestAuthorizer for HeldToName {
        fn authorize(&self, _: &RequestFacts<'_>) -> RequestVerdict {
            RequestVerdict::Allow
        }

        fn connection_host(&self) -> Option<&str> {
            Some("a.test")
        }
    }

    /// [`authorize_request`] for a GET of `target` with a `host` field
    /// for each of `host`.
    fn get_with_hosts(
        authorizer: &dyn RequestAuthorizer,
        target: &str,
        authority: Option<&str>,
        host: &[&str],
    ) -> RequestDecision {
        let fields: Vec<(&str, &str)> = host.iter().map(|h| ("host", *h)).collect();
        let headers: &dyn Headers = &&fields[..];
        authorize_request(
            authorizer,
            "GET",
            target,
            authority,
            headers,
            false,
            Stamp::now(),
        )
    }

    #[test]
    fn a_connection_allowed_by_name_carries_requests_for_that_host_only() {
        let decide = |target: &str, authority: Option<&str>, host: &[&str]| {
            get_with_hosts(&HeldToName, target, authority, host)
        };
        let misdirected = RequestDecision::Refuse(Refusal::Misdirected);
        assert_eq!(decide("/x", None, &["a.test"]), RequestDecision::Forward);
        assert_eq!(
            decide("/x", None, &["A.Test.:80"]),
            RequestDecision::Forward
        );
        assert_eq!(
            decide("http://a.test/x", None, &[]),
            RequestDecision::Forward
        );
        assert_eq!(decide("/x", Some("a.test"), &[]), RequestDecision::Forward);
        assert_eq!(decide("/x", None, &["b.test"]), misdirected);
        assert_eq!(decide("/x", None, &["a.test", "b.test"]), misdirected);
        assert_eq!(
            decide("/x", None, &[]),
            misdirected,
            "no host names no host"
        );
        assert_eq!(decide("http://b.test/x", None, &[]), misdirected);
        assert_eq!(Refusal::Misdirected.status(), 421);
        // Held to its host, not to canonical paths (no path rule applies
        // outside the mesh): what external APIs send passes.
        for target in [
            "/api/v4/projects/group%2Fproject",
            "/bucket/100%25.txt",
            "/a/./b",
        ] {
            assert_eq!(decide(target, None, &["a.test"]), RequestDecision::Forward);
        }
        // What could move the authority or hide part of the target is
        // still refused there.
        for target in [
            "http://a.test?@b.test/x",
            "http://a.test#@b.test/x",
            "/a\\b",
        ] {
            assert!(
                matches!(
                    decide(target, None, &["a.test"]),
                    RequestDecision::Refuse(_)
                ),
                "{target}"
            );
        }
        assert_eq!(
            decide("/x", None, &["[a.test]evil.test"]),
            RequestDecision::Refuse(Refusal::Authority(AuthorityError::Invalid))
        );
        // Methods are still checked.
        let fields = [("host", "a.test")];
        assert_eq!(
            authorize_request(
                &HeldToName,
                "get",
                "/x",
                None,
                &&fields[..],
                false,
                Stamp::now()
            ),
            RequestDecision::Refuse(Refusal::LowerCaseMethod)
        );
    }

    #[test]
    fn one_host_per_request_the_authority_the_app_routes_on() {
        let decide = |target: &str, authority: Option<&str>, host: &[&str]| {
            let seen = SeesHost(Default::default());
            let decision = get_with_hosts(&seen, target, authority, host);
            (decision, seen.0.into_inner().unwrap())
        };
        let refused = |e| (RequestDecision::Refuse(Refusal::Authority(e)), Vec::new());
        let allowed = |hosts: &[&str]| {
            let hosts = hosts.iter().map(|h| h.to_string()).collect();
            (RequestDecision::Forward, hosts)
        };
        // Origin form: `Host` is the host.
        assert_eq!(decide("/x", None, &["a.test"]), allowed(&["a.test"]));
        // An HTTP/2 `:path` in absolute form beside `:authority` is refused
        // whatever its authority (as HTTP/1 refuses each of these).
        for target in [
            "http:///public/admin/users",
            "http://api.test/x",
            "http://internal.test/public/x",
            "http://user@internal.test/public/x",
            "foo://[a.test]evil.test/public/x",
        ] {
            assert_eq!(
                decide(target, Some("api.test"), &[]),
                (
                    RequestDecision::Refuse(Refusal::Path(path::PathError::NotAbsolute)),
                    Vec::new()
                ),
                "{target}"
            );
        }
        assert_eq!(decide("/x", None, &[]), allowed(&[]));
        // Absolute form: its authority, which `Host` may only repeat.
        assert_eq!(
            decide("http://a.test/x", None, &["A.test"]),
            allowed(&["a.test"])
        );
        assert_eq!(decide("http://a.test/x", None, &[]), allowed(&["a.test"]));
        assert_eq!(
            decide("http://b.test/x", None, &["a.test"]),
            refused(AuthorityError::DiffersFromHost)
        );
        assert_eq!(
            decide("http://a.test/x", None, &["a.test", "b.test"]),
            refused(AuthorityError::DiffersFromHost)
        );
        // A host that is no host[:port] is refused, authority or Host.
        for host in [
            "[a.test]evil.test",
            "a.test:x",
            "a test",
            "a.test:80:80",
            "[::1",
            "a%2e",
        ] {
            assert_eq!(
                decide("/x", None, &[host]),
                refused(AuthorityError::Invalid),
                "{host}"
            );
        }
        assert_eq!(
            decide("/x", Some("[a.test]evil.test"), &[]),
            refused(AuthorityError::Invalid)
        );
        for host in [
            "a.test",
            "A-b_c.test.:8080",
            "[::1]:80",
            "10.0.0.1",
            "localhost",
            "",
        ] {
            assert_eq!(
                decide("/x", None, &[host]).0,
                RequestDecision::Forward,
                "{host}"
            );
        }
        // The same host, spelled with its port or a trailing dot.
        assert_eq!(
            decide("http://a.test:80/x", None, &["a.test"]),
            allowed(&["a.test:80"])
        );
        assert_eq!(
            decide("/x", Some("a.test:443"), &["A.test."]),
            allowed(&["a.test:443"])
        );
        assert_eq!(
            decide("/x", Some("[::1]:8080"), &["[::1]"]),
            allowed(&["[::1]:8080"])
        );
        assert_eq!(
            decide("http://u@a.test/x", None, &["a.test"]),
            refused(AuthorityError::Userinfo)
        );
        assert_eq!(
            decide("http:///x", None, &[]),
            refused(AuthorityError::Empty)
        );
        // HTTP/2: `:authority` is the host, `host` may only repeat it.
        assert_eq!(decide("/x", Some("a.test"), &[]), allowed(&["a.test"]));
        assert_eq!(
            decide("/x", Some("a.test"), &["a.test"]),
            allowed(&["a.test"])
        );
        assert_eq!(
            decide("/x", Some("a.test"), &["b.test"]),
            refused(AuthorityError::DiffersFromHost)
        );
        assert_eq!(decide("/x", Some(""), &[]), refused(AuthorityError::Empty));
        assert_eq!(
            path::authority_of("https://a.test:8443?q"),
            Some("a.test:8443")
        );
        assert_eq!(path::authority_of("/http://a.test/"), None);
    }
}
