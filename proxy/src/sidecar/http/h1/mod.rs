//! L7 for HTTP/1.1 without an HTTP stack in the middle.
//!
//! Design bias: *parse heads, follow bodies, copy the rest*. To authorize a
//! request the proxy needs its method, path and headers; to find where the
//! next request starts it needs the framing of the request body and of the
//! response ([`framing`]). Nothing else is decoded or re-encoded: a request
//! head is parsed (httparse), authorized, and re-written only where appid
//! owns it (`x-appid-*` headers out, the verified peer's in); bodies and
//! response heads are copied as they came. Buffers exist only while a
//! message is in flight, so an idle keep-alive connection holds none.
//! What a request *is* (method, canonical path, headers for policy) is
//! decided by [`super::authorize_request`], the one check HTTP/2 shares.
//!
//! One request at a time per connection: a pipelined request waits, unread,
//! until the response before it is through. Refused at the edge, with the
//! connection closed: a head over `max_header_bytes` (431), unparsable
//! heads or ambiguous framing (400), and what the shared check refuses
//! (400, or 405 for `CONNECT`). A request is denied with a 403 naming the
//! rule, and the connection stays open unless the request has a body
//! (which is then never read). A chunked request body with trailer fields
//! closes the connection (trailers could carry headers past the
//! authorizer). Inbound, `x-appid-*` headers in the app's response heads
//! are removed. A `101 Switching Protocols` answer turns the connection
//! into opaque TCP.

pub(crate) mod framing;

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, Sleep};

use crate::detect::{self, BodyLine};
use crate::sidecar::clock::Stamp;
use crate::sidecar::dispatch::FirstLineGuard;
use crate::sidecar::splice::{Abort, Chunks};

use appid_policy::policy::Headers;

pub use framing::{BodyLength, Chunked, FramingError};

use super::{
    AppSide, DENIED_BY_HEADER, HttpLimits, HttpProxyError, Malformed, PEER_CLAIMS_HEADER,
    PEER_ID_HEADER, PeerHeaders, Refusal, RequestAuthorizer, RequestDecision, Shutdown,
    authorize_request, is_appid_header, visit_header_values,
};
use crate::sidecar::trace;

/// Headers parsed per message at most (more: 431).
const MAX_HEADERS: usize = 128;
/// What a buffer grows by per read while a head is read.
const HEAD_CHUNK: usize = 4 * 1024;
/// The first read of a head: enough for most request heads, and all an
/// idle keep-alive connection holds while it waits.
const FIRST_READ: usize = 512;
/// Body copies double their buffer up to this.
const MAX_BODY_BUFFER: usize = 64 * 1024;

/// Proxies one HTTP/1.x connection until it ends, an error, or `shutdown`
/// (which is only noticed between requests: one in flight completes).
///
/// The streams are split here, before the future starts: as an `async fn`
/// its arguments would stay in the connection's state beside what was made
/// of them, for the connection's whole (mostly idle) life.
pub fn proxy<D, U>(
    downstream: D,
    upstream: U,
    authorizer: Arc<dyn RequestAuthorizer>,
    peer_headers: Option<PeerHeaders>,
    limits: HttpLimits,
    mut shutdown: Shutdown,
) -> impl Future<Output = Result<(), HttpProxyError>>
where
    D: AsyncRead + AsyncWrite + Unpin + Abort + Chunks,
    U: AsyncRead + AsyncWrite + Unpin + Abort + Chunks,
{
    let (mut down_read, mut down_write) = tokio::io::split(downstream);
    let (mut up_read, mut up_write) = tokio::io::split(upstream);
    async move {
        let mut down_buf = BytesMut::new();
        let mut up_buf = BytesMut::new();
        // Made once: listening anew for every request cost about 500
        // instructions a request (a waiter added and removed each time).
        let stop = shutdown.started();
        tokio::pin!(stop);
        // The request heads' deadline, one timer for the connection's life,
        // moved forward for each head: moving a registered timer later is
        // one atomic update, where a timer made per request was added to
        // the runtime's wheel and removed again (about 1 100 instructions a
        // request).
        let head_timer = tokio::time::sleep(limits.header_timeout);
        tokio::pin!(head_timer);
        // A request went to the app (which is dialled for the first one:
        // the app is not watched before, so no read dials it).
        let mut app_asked = false;

        loop {
            // Idle between requests: free the buffers, wait for a head.
            if down_buf.is_empty() {
                down_buf = BytesMut::new();
            }
            if up_buf.is_empty() {
                up_buf = BytesMut::new();
            }
            // The head is parsed once, and inspected (authorized) as parsed.
            let inspect = RequestHead(|request: &httparse::Request<'_, '_>, head: &[u8]| {
                // Both clocks, once: the latency's start, and the time its
                // expiry check and audit line use.
                let arrived = Stamp::now();
                let inspected = inspect_request(
                    request,
                    head,
                    authorizer.as_ref(),
                    &peer_headers,
                    limits.app,
                    arrived,
                );
                (Instant::from_std(arrived.mono), inspected)
            });
            // `biased` (here and in the other selects a request or a chunk
            // passes through): polled in the order written, without the
            // random start `select!` draws from a thread-local generator
            // at every poll. Shutdown first, so a client whose requests keep
            // coming still sees it.
            let mut probe = [0u8; 1];
            let head = tokio::select! {
                biased;
                () = &mut stop => return Ok(()),
                head = read_head(
                    &mut down_read,
                    &mut down_buf,
                    limits,
                    Some(head_timer.as_mut()),
                    inspect,
                ) => head,
                // Between requests the app has nothing to say: a byte from
                // it now would be read as the answer to the next request (a
                // body written after a HEAD answer's head, a second answer
                // to one request; a `101` among them would switch this
                // connection to opaque bytes while the app still reads
                // HTTP). Closed instead, as HTTP clients close a connection
                // with an unsolicited response on it; and an app that closed
                // an idle connection (Node after its keep-alive timeout) is
                // passed on as a close, so the client's next request goes on
                // a fresh connection instead of getting a 502. Watched from
                // the first request on: no read dials the app before.
                read = up_read.read(&mut probe), if app_asked => {
                    if !matches!(read, Ok(0)) {
                        tracing::debug!("bytes from the app with no request in flight: closing");
                    }
                    let _ = down_write.shutdown().await;
                    return Ok(());
                }
            };
            let (head_len, (started, inspected)) = match head {
                HeadRead::Complete(n, inspected) => (n, inspected),
                HeadRead::Closed | HeadRead::TimedOut => return Ok(()),
                HeadRead::TooLarge => {
                    let why = Malformed::HeadTooLarge;
                    return Err(refuse_head(&mut down_write, authorizer.as_ref(), why).await);
                }
                HeadRead::Invalid => {
                    let why = Malformed::InvalidHead;
                    return Err(refuse_head(&mut down_write, authorizer.as_ref(), why).await);
                }
                // The client went away mid-head: nothing was refused.
                HeadRead::Truncated => {
                    let what = "connection closed inside a message head";
                    local_response(&mut down_write, 400, what, None, false).await;
                    return Err(HttpProxyError::Protocol(what));
                }
                HeadRead::Io(e) => return Err(HttpProxyError::Io(e)),
            };
            let request = match inspected {
                Ok(request) => request,
                Err(Rejected { status, message }) => {
                    local_response(&mut down_write, status, message, None, false).await;
                    return Err(HttpProxyError::Protocol(message));
                }
            };
            down_buf.advance(head_len);

            if let Some((rule, reason)) = request.denied {
                // The body (if any) is never read: close after the answer.
                let close = !request.keep_alive || request.body != BodyLength::Empty;
                let body = format!("appid: {reason}\n");
                let written = local_response(
                    &mut down_write,
                    403,
                    &body,
                    Some((&rule, close)),
                    request.head,
                )
                .await;
                authorizer.observe(403, started.elapsed());
                trace::record_status(&request.span, 403);
                if close || !written {
                    let _ = down_write.shutdown().await;
                    return Ok(());
                }
                continue;
            }

            // Allowed: the rewritten head, with the body bytes already here
            // when the whole (fixed-length) body is.
            let to_head = request.head;
            let mut out = request.upstream_head;
            let mut body = request.body;
            // A body that ends inside what could still be a request line
            // leaves this connection with no next request
            // ([`BodyLine::Unfinished`]): its answer says `connection: close`
            // when that is known before the answer's head (the body is
            // watched while the answer is awaited), and it is closed after.
            let last_on_connection = AtomicBool::new(false);
            if let BodyLength::Length(n) = body
                && n <= down_buf.len() as u64
            {
                let mut start = BodyStart::new(&last_on_connection);
                if start.passes(&down_buf[..n as usize], true).is_err() {
                    let why = Malformed::BodyIsRequest;
                    return Err(refuse_head(&mut down_write, authorizer.as_ref(), why).await);
                }
                out.extend_from_slice(&down_buf[..n as usize]);
                down_buf.advance(n as usize);
                body = BodyLength::Empty;
            }
            let span = request.span;
            if let Err(e) = write_flush(&mut up_write, &out).await {
                tracing::debug!(error = %e, "upstream closed before the request");
                trace::record_status(&span, 502);
                upstream_unavailable(&mut down_write, to_head).await;
                return Err(HttpProxyError::Io(e));
            }
            drop(out);
            app_asked = true;

            // The request body and the response move at the same time (a server
            // may answer before it has read the whole body).
            let mut body_sent = body == BodyLength::Empty;
            let watch =
                matches!(body, BodyLength::Length(_)).then(|| BodyStart::new(&last_on_connection));
            // Boxed, as is `switch_protocols`: this state lives only while a
            // request is in flight, and unboxed it would be allocated for the
            // connection's whole (mostly idle) life.
            let response = Box::pin(async {
                // Request trailers are refused: they could carry headers
                // (`x-appid-peer-id`, what a rule looks at) past the authorizer.
                let send = copy_body(
                    &mut down_read,
                    &mut down_buf,
                    &mut up_write,
                    body,
                    (body == BodyLength::Chunked).then(Chunked::for_request),
                    watch,
                    limits,
                );
                let relay = relay_response(
                    &mut up_read,
                    &mut up_buf,
                    &mut down_write,
                    request.head,
                    request.upgrade,
                    &last_on_connection,
                    limits,
                );
                tokio::pin!(send, relay);
                loop {
                    tokio::select! {
                        biased;
                        sent = &mut send, if !body_sent => match sent {
                            Ok(()) => body_sent = true,
                            Err(e) => {
                                // Request trailers among them: audited.
                                if let HttpProxyError::Malformed(why) = e {
                                    authorizer.malformed(why);
                                }
                                return Err(e);
                            }
                        },
                        response = &mut relay => break Ok(response),
                    }
                }
            })
            .await?;
            let response = match response {
                Ok(response) => response,
                Err(Relay::Failed { answered, error }) => {
                    if answered {
                        // Part of the answer is with the client: its end
                        // must not look like a complete answer (a body framed
                        // by the close would), so the client's connection is
                        // reset, as the app's was or as a cut tunnel is.
                        down_read.unsplit(down_write).abort();
                    } else {
                        upstream_unavailable(&mut down_write, to_head).await;
                        trace::record_status(&span, 502);
                    }
                    return Err(error);
                }
            };
            authorizer.observe(
                response.status,
                response.head_after.saturating_duration_since(started),
            );
            trace::record_status(&span, response.status);
            drop(span);

            if response.status == 101 {
                let downstream = down_read.unsplit(down_write);
                let upstream = up_read.unsplit(up_write);
                // From here the client speaks the new protocol, whose bytes
                // (WebSocket frames) are never an HTTP request line; one
                // would be for an app still reading HTTP (a `101` it sent
                // for no request in flight), unchecked. So the client's
                // first line is watched as on a connection decided as TCP.
                let why = Malformed::RequestAfterSwitch;
                let Ok(downstream) = FirstLineGuard::continuing(downstream, &down_buf) else {
                    authorizer.malformed(why);
                    return Err(HttpProxyError::Malformed(why));
                };
                let tripped = downstream.tripped();
                let switched = Box::pin(switch_protocols(
                    downstream,
                    upstream,
                    down_buf,
                    up_buf,
                    limits,
                    authorizer.withdrawn(),
                ))
                .await;
                if tripped.load(Ordering::Relaxed) {
                    authorizer.malformed(why);
                    return Err(HttpProxyError::Malformed(why));
                }
                return switched;
            }
            // Bytes after a response that nobody asked for would be taken as
            // the next response: close instead.
            if last_on_connection.load(Ordering::Relaxed)
                || !(request.keep_alive && response.keep_alive && body_sent && up_buf.is_empty())
            {
                let _ = down_write.shutdown().await;
                return Ok(());
            }
        }
    }
}

/// A request head, read and decided.
struct InspectedRequest {
    /// `Some((rule, reason))` when policy denied it.
    denied: Option<(String, String)>,
    /// The head to send upstream (allowed requests only).
    upstream_head: Vec<u8>,
    body: BodyLength,
    keep_alive: bool,
    /// A HEAD request (its response has no body).
    head: bool,
    /// It asks for a protocol upgrade (a `101` answer is only accepted then).
    upgrade: bool,
    /// Its `appid.request` span (disabled when spans are off).
    span: tracing::Span,
}

/// A request the proxy answers itself, then closes.
struct Rejected {
    status: u16,
    message: &'static str,
}

/// Checks and authorizes `request`, parsed from `head` (the head's bytes).
fn inspect_request(
    request: &httparse::Request<'_, '_>,
    head: &[u8],
    authorizer: &dyn RequestAuthorizer,
    peer_headers: &Option<PeerHeaders>,
    app: AppSide,
    arrived: Stamp,
) -> Result<InspectedRequest, Rejected> {
    // httparse fills all three in a complete head.
    let (Some(method), Some(target), Some(version)) =
        (request.method, request.path, request.version)
    else {
        authorizer.malformed(Malformed::InvalidHead);
        return Err(Rejected {
            status: 400,
            message: Malformed::InvalidHead.as_str(),
        });
    };
    let headers = HeaderList(&*request.headers);
    // Refused for its framing before policy is asked, and audited as such.
    let malformed = |why: Malformed| {
        let refusal = Refusal::Malformed(why);
        authorizer.refused(method, target, refusal, false);
        Rejected {
            status: refusal.status(),
            message: refusal.as_str(),
        }
    };
    // HTTP/1.0 has no chunked coding; some servers (Go) ignore the header
    // there and would read the "chunks" as the next request.
    if version == 0 && headers.has("transfer-encoding") {
        return Err(malformed(Malformed::TransferEncodingOnHttp10));
    }
    let (body, content_length) =
        framing::framing(headers.pairs(), true).map_err(|e| malformed(Malformed::from(e)))?;
    let keep_alive = match version {
        1 => !headers.connection_has("close"),
        _ => headers.connection_has("keep-alive"),
    };
    // An `h2c` upgrade would turn the connection into HTTP/2 the proxy
    // cannot see into: drop it (the app answers in HTTP/1.1).
    let h2c = headers.all("upgrade").any(|v| {
        v.split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"h2c"))
    });
    let span = trace::request_span(app, method, |name| {
        headers
            .all(name)
            .next()
            .and_then(|v| std::str::from_utf8(v).ok())
    });
    match span
        .in_scope(|| authorize_request(authorizer, method, target, None, &headers, false, arrived))
    {
        RequestDecision::Forward => {}
        RequestDecision::Refuse(refusal) => {
            trace::record_status(&span, refusal.status());
            return Err(Rejected {
                status: refusal.status(),
                message: refusal.as_str(),
            });
        }
        RequestDecision::Deny { rule, reason } => {
            return Ok(InspectedRequest {
                denied: Some((rule, reason)),
                upstream_head: Vec::new(),
                body,
                keep_alive,
                // Its answer (the 403) has no body then.
                head: method == "HEAD",
                upgrade: false,
                span,
            });
        }
    }
    let upgrade = !h2c && headers.has("upgrade");
    let trace_context = trace::outgoing(&span);
    // `Content-Length: 5, 5` (or twice 5) is forwarded as one `5`.
    let own_length = content_length.rewrite();

    let mut out = Vec::with_capacity(head.len() + 512);
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(if version == 1 {
        b" HTTP/1.1\r\n"
    } else {
        b" HTTP/1.0\r\n"
    });
    for header in headers.0 {
        // Only this sidecar may set x-appid-* headers.
        if is_appid_header(header.name) {
            continue;
        }
        // Replaced by ours, naming this request's span.
        if trace_context.is_some() && trace::is_trace_header(header.name) {
            continue;
        }
        if h2c
            && (header.name.eq_ignore_ascii_case("upgrade")
                || header.name.eq_ignore_ascii_case("http2-settings"))
        {
            continue;
        }
        if own_length.is_some() && header.name.eq_ignore_ascii_case("content-length") {
            continue;
        }
        // Connection options name fields for the next hop to remove: an
        // in-pod proxy that honours `connection: x-tenant, x-appid-peer-id`
        // would take away a field policy decided on, or the peer's verified
        // identity. Only the options this hop acts on go on; the fields
        // stay, as policy saw them.
        if header.name.eq_ignore_ascii_case("connection") {
            push_connection_options(&mut out, header.value, !h2c);
            continue;
        }
        out.extend_from_slice(header.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(header.value);
        out.extend_from_slice(b"\r\n");
    }
    if let Some(length) = own_length {
        push_content_length(&mut out, length);
    }
    if let Some(peer) = peer_headers {
        for (name, value) in [
            (PEER_ID_HEADER, &peer.id),
            (PEER_CLAIMS_HEADER, &peer.claims),
        ] {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    for (name, value) in trace_context.iter().flat_map(trace::Outgoing::headers) {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(InspectedRequest {
        denied: None,
        upstream_head: out,
        body,
        keep_alive,
        head: method == "HEAD",
        upgrade,
        span,
    })
}

/// A `connection` field with only the options a hop acts on (`close`,
/// `keep-alive`, and `upgrade` when `upgrade`); none: no field.
fn push_connection_options(out: &mut Vec<u8>, value: &[u8], upgrade: bool) {
    let kept = |option: &[u8]| {
        option.eq_ignore_ascii_case(b"close")
            || option.eq_ignore_ascii_case(b"keep-alive")
            || (upgrade && option.eq_ignore_ascii_case(b"upgrade"))
    };
    let options = value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|option| !option.is_empty());
    if options.clone().all(kept) {
        // The common case (`keep-alive`, `close`, `Upgrade`): as sent.
        if options.clone().next().is_some() {
            out.extend_from_slice(b"connection: ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        return;
    }
    let mut first = true;
    for option in options.filter(|option| kept(option)) {
        out.extend_from_slice(if first { b"connection: " } else { b", " });
        out.extend_from_slice(option);
        first = false;
    }
    if !first {
        out.extend_from_slice(b"\r\n");
    }
}

/// The parsed headers of one message.
struct HeaderList<'h, 'b>(&'h [httparse::Header<'b>]);

impl<'h, 'b> HeaderList<'h, 'b> {
    fn pairs(&self) -> impl Iterator<Item = (&'b str, &'b [u8])> + Clone + 'h {
        self.0.iter().map(|h| (h.name, h.value))
    }

    fn all(&self, name: &'h str) -> impl Iterator<Item = &'b [u8]> + 'h {
        self.0
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }

    fn has(&self, name: &str) -> bool {
        self.0.iter().any(|h| h.name.eq_ignore_ascii_case(name))
    }

    /// Whether a `Connection` header lists `token`.
    fn connection_has(&self, token: &str) -> bool {
        self.0
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("connection"))
            .flat_map(|h| h.value.split(|&b| b == b','))
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    }
}

impl Headers for HeaderList<'_, '_> {
    /// Every value; never a caller's `x-appid-*` header (those are removed
    /// before the request goes on).
    fn each_value(&self, name: &str, visit: &mut dyn FnMut(&[u8])) {
        visit_header_values(self.pairs(), name, visit)
    }
}

/// How reading a message head went.
#[derive(Debug)]
enum HeadRead<T> {
    /// The head is the first this many bytes of the buffer, and this is
    /// what the caller made of it ([`HeadParser`]).
    Complete(usize, T),
    /// Clean EOF before any byte.
    Closed,
    /// No complete request head within the idle timeout.
    TimedOut,
    /// Over `max_header_bytes` or [`MAX_HEADERS`].
    TooLarge,
    /// Not a message head (httparse refused it).
    Invalid,
    /// EOF inside the head.
    Truncated,
    Io(io::Error),
}

/// One parse of what a head buffer holds so far.
enum Parse<T, P> {
    /// A complete head of this many bytes, and what the caller made of it.
    Complete(usize, T),
    /// Not complete yet: the parser back, for the next try.
    Partial(P),
    TooLarge,
    Invalid,
}

/// A kind of message head, and what to do with one once it is complete.
/// The caller's function gets the head as httparse parsed it, so a head
/// is parsed once (its tries while incomplete aside), not once to find its
/// end and again to use it.
trait HeadParser: Sized {
    type Output;
    fn parse(self, buf: &[u8], max_bytes: usize) -> Parse<Self::Output, Self>;
}

/// A request head, handed to the function once complete.
struct RequestHead<F>(F);

/// A response head, handed to the function once complete.
struct ResponseHead<F>(F);

impl<T, F: FnOnce(&httparse::Request<'_, '_>, &[u8]) -> T> HeadParser for RequestHead<F> {
    type Output = T;

    fn parse(self, buf: &[u8], max_bytes: usize) -> Parse<T, Self> {
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut slots);
        let parsed = request.parse(buf);
        Parse::of(parsed, max_bytes, self, |Self(use_head), n| {
            use_head(&request, &buf[..n])
        })
    }
}

impl<T, F: FnOnce(&httparse::Response<'_, '_>, &[u8]) -> T> HeadParser for ResponseHead<F> {
    type Output = T;

    fn parse(self, buf: &[u8], max_bytes: usize) -> Parse<T, Self> {
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut slots);
        let parsed = response.parse(buf);
        Parse::of(parsed, max_bytes, self, |Self(use_head), n| {
            use_head(&response, &buf[..n])
        })
    }
}

impl<T, P> Parse<T, P> {
    /// What httparse's answer means: a complete head within `max_bytes`
    /// goes to `complete` (with the parser and its length).
    fn of(
        parsed: httparse::Result<usize>,
        max_bytes: usize,
        parser: P,
        complete: impl FnOnce(P, usize) -> T,
    ) -> Parse<T, P> {
        match parsed {
            Ok(httparse::Status::Complete(n)) if n <= max_bytes => {
                Parse::Complete(n, complete(parser, n))
            }
            Ok(httparse::Status::Complete(_)) | Err(httparse::Error::TooManyHeaders) => {
                Parse::TooLarge
            }
            Ok(httparse::Status::Partial) => Parse::Partial(parser),
            Err(_) => Parse::Invalid,
        }
    }
}

/// Reads until `buf` starts with a complete head, and hands it to
/// `parser`'s function. With a `timer` (request heads), the head must
/// arrive within the idle timeout from now: the timer is set to that
/// deadline here; without (response heads), it may take as long as the
/// app does.
async fn read_head<R: AsyncRead + Unpin, P: HeadParser>(
    reader: &mut R,
    buf: &mut BytesMut,
    limits: HttpLimits,
    mut timer: Option<Pin<&mut Sleep>>,
    mut parser: P,
) -> HeadRead<P::Output> {
    // One deadline for the whole head: a client trickling a byte at a time
    // cannot hold the connection longer than a silent one.
    if let Some(timer) = &mut timer {
        let deadline = tokio::time::Instant::now() + limits.header_timeout;
        timer.as_mut().reset(deadline);
    }
    // Parse only when a line ended since the last try (a head trickled in
    // byte by byte is then parsed once per line, not once per byte).
    let mut parse = !buf.is_empty();
    loop {
        if parse {
            parser = match parser.parse(buf, limits.max_header_bytes) {
                Parse::Complete(n, output) => return HeadRead::Complete(n, output),
                Parse::Partial(parser) => parser,
                Parse::TooLarge => return HeadRead::TooLarge,
                Parse::Invalid => return HeadRead::Invalid,
            };
        }
        if buf.len() >= limits.max_header_bytes {
            return HeadRead::TooLarge;
        }
        if buf.capacity() == 0 {
            buf.reserve(FIRST_READ);
        } else if buf.capacity() - buf.len() < HEAD_CHUNK / 4 {
            buf.reserve(HEAD_CHUNK);
        }
        let before = buf.len();
        let read = reader.read_buf(buf);
        let result = match &mut timer {
            Some(timer) => tokio::select! {
                biased;
                result = read => result,
                () = timer.as_mut() => return HeadRead::TimedOut,
            },
            None => read.await,
        };
        match result {
            Ok(0) if buf.is_empty() => return HeadRead::Closed,
            Ok(0) => return HeadRead::Truncated,
            Ok(_) => parse = buf[before..].contains(&b'\n'),
            Err(e) => return HeadRead::Io(e),
        }
    }
}

/// Copies one body of `length` from `reader` (starting with what `buf`
/// already holds) to `writer`, and flushes. Bytes past its end stay in
/// `buf`. `start`: the body's first line is watched, and the bytes that
/// would complete a request line are not sent ([`BodyStart`]).
async fn copy_body<R, W>(
    reader: &mut R,
    buf: &mut BytesMut,
    writer: &mut W,
    length: BodyLength,
    chunks_so_far: Option<Chunked>,
    mut start: Option<BodyStart<'_>>,
    limits: HttpLimits,
) -> Result<(), HttpProxyError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut left = match length {
        BodyLength::Empty => return Ok(()),
        BodyLength::Length(n) => n,
        BodyLength::Chunked | BodyLength::UntilClose => u64::MAX,
    };
    let mut chunked = (length == BodyLength::Chunked).then(|| chunks_so_far.unwrap_or_default());
    let mut want = HEAD_CHUNK;
    loop {
        if !buf.is_empty() {
            let take = match &mut chunked {
                Some(c) => c
                    .advance(buf)
                    .map_err(|e| HttpProxyError::Malformed(e.into()))?,
                None => buf.len().min(usize::try_from(left).unwrap_or(usize::MAX)),
            };
            if let Some(watch) = &mut start {
                let ended = chunked.is_none() && left == take as u64;
                watch
                    .passes(&buf[..take], ended)
                    .map_err(HttpProxyError::Malformed)?;
            }
            writer
                .write_all(&buf[..take])
                .await
                .map_err(HttpProxyError::Io)?;
            buf.advance(take);
            if chunked.is_none() && length != BodyLength::UntilClose {
                left -= take as u64;
            }
        }
        let done = match &chunked {
            Some(c) => c.is_done(),
            None => left == 0,
        };
        if done {
            writer.flush().await.map_err(HttpProxyError::Io)?;
            return Ok(());
        }
        writer.flush().await.map_err(HttpProxyError::Io)?;
        if buf.capacity() < want {
            buf.reserve(want);
        }
        let n = match tokio::time::timeout(limits.header_timeout, reader.read_buf(buf)).await {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(HttpProxyError::Io(e)),
            Err(_) => {
                return Err(HttpProxyError::Protocol(
                    "body stalled past the idle timeout",
                ));
            }
        };
        if n == 0 {
            if length == BodyLength::UntilClose {
                writer.flush().await.map_err(HttpProxyError::Io)?;
                return Ok(());
            }
            return Err(HttpProxyError::Protocol("connection closed inside a body"));
        }
        if n == want && want < MAX_BODY_BUFFER {
            want *= 2;
        }
    }
}

/// The first line of a request body, watched as it passes: a body that
/// begins with a request line is refused before the bytes that complete it
/// are sent ([`detect::body_first_line`]: an app that leaves the body
/// unread would run it as its next request, one policy never saw). The
/// opaque path's `FirstLineGuard` does the same for a connection's first
/// line; both judge with `detect`.
struct BodyStart<'c> {
    /// The body so far, while undecided (at most `MAX_DETECT_BYTES`).
    line: Option<Vec<u8>>,
    /// Set when the body ended inside what could still be a request line
    /// ([`BodyLine::Unfinished`]): the connection must carry no next
    /// request. Shared with the answer's relay, which says
    /// `connection: close` if it is set before the answer's head goes.
    unfinished: &'c AtomicBool,
}

impl<'c> BodyStart<'c> {
    fn new(unfinished: &'c AtomicBool) -> Self {
        BodyStart {
            line: Some(Vec::new()),
            unfinished,
        }
    }

    /// Whether `more` (the body's next bytes; `ended`: its last) may be
    /// sent: `Err` when they complete a request line.
    fn passes(&mut self, more: &[u8], ended: bool) -> Result<(), Malformed> {
        let Some(line) = &mut self.line else {
            return Ok(());
        };
        let room = detect::MAX_DETECT_BYTES.saturating_sub(line.len());
        let judged = if line.is_empty() && more.len() <= room {
            // The common case, the whole start in one piece: no copy.
            detect::body_first_line(more, ended)
        } else {
            line.extend_from_slice(&more[..more.len().min(room)]);
            detect::body_first_line(line, ended)
        };
        match judged {
            BodyLine::RequestLine => Err(Malformed::BodyIsRequest),
            BodyLine::NotRequestLine => {
                self.line = None;
                Ok(())
            }
            BodyLine::Unfinished => {
                self.line = None;
                self.unfinished.store(true, Ordering::Relaxed);
                Ok(())
            }
            BodyLine::Undecided => {
                if line.is_empty() {
                    line.extend_from_slice(more);
                }
                Ok(())
            }
        }
    }
}

/// A response relayed to the client.
struct Relayed {
    status: u16,
    keep_alive: bool,
    /// When the final response head was read.
    head_after: Instant,
}

enum Relay {
    /// `answered`: some of the response already reached the client (so it
    /// cannot be replaced by a 502).
    Failed {
        answered: bool,
        error: HttpProxyError,
    },
}

/// Reads the response (and any 1xx before it) from upstream and writes it
/// to the client unchanged.
async fn relay_response<R, W>(
    reader: &mut R,
    buf: &mut BytesMut,
    writer: &mut W,
    head_request: bool,
    upgrade_requested: bool,
    last_on_connection: &AtomicBool,
    limits: HttpLimits,
) -> Result<Relayed, Relay>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut answered = false;
    let fail = |answered, error| Relay::Failed { answered, error };
    loop {
        // The head is parsed once, and read as parsed.
        let read = ResponseHead(|response: &httparse::Response<'_, '_>, head: &[u8]| {
            let head_after = Instant::now();
            let status = response.code.unwrap_or(0);
            let headers = HeaderList(&*response.headers);
            let keep_alive = match response.version {
                Some(1) => !headers.connection_has("close"),
                _ => headers.connection_has("keep-alive"),
            };
            let bodiless =
                head_request || (100..200).contains(&status) || status == 204 || status == 304;
            let (length, own_length) = if bodiless {
                // Its `content-length` frames nothing: only a clean list
                // of one value is made one value; anything else goes on.
                let declared = framing::ContentLength::read(headers.all("content-length"));
                (BodyLength::Empty, declared.ok().and_then(|d| d.rewrite()))
            } else {
                let (length, declared) = framing::framing(headers.pairs(), false)
                    .map_err(|_| HttpProxyError::Protocol("ambiguous response framing"))?;
                (length, declared.rewrite())
            };
            // Inbound, the response is the app's: `x-appid-*` is not its
            // to set (a forged `x-appid-denied-by`, say). `Content-Length:
            // 5, 5` goes on as one `5`. Rewritten only when needed;
            // otherwise the head goes on as it came.
            let drop_appid = limits.app == AppSide::Upstream
                && headers.0.iter().any(|h| is_appid_header(h.name));
            // The final answer on a connection that carries no next
            // request says so (`connection: close`).
            let close =
                last_on_connection.load(Ordering::Relaxed) && status >= 200 && status != 101;
            let rewritten = (drop_appid || own_length.is_some() || close)
                .then(|| rewritten_response_head(head, &headers, drop_appid, own_length, close));
            Ok((head_after, status, keep_alive && !close, length, rewritten))
        });
        let (head_len, (head_after, status, keep_alive, length, rewritten)) =
            match read_head(reader, buf, limits, None, read).await {
                HeadRead::Complete(n, Ok(response)) => (n, response),
                HeadRead::Complete(_, Err(error)) => return Err(fail(answered, error)),
                HeadRead::Io(e) => return Err(fail(answered, HttpProxyError::Io(e))),
                HeadRead::Closed => {
                    return Err(fail(answered, HttpProxyError::Protocol("upstream closed")));
                }
                _ => {
                    return Err(fail(
                        answered,
                        HttpProxyError::Protocol("invalid response head"),
                    ));
                }
            };
        if status == 101 && !upgrade_requested {
            // Switching to a protocol nobody asked for would take the rest
            // of the connection out of authorization.
            return Err(fail(
                answered,
                HttpProxyError::Protocol("unrequested 101 response"),
            ));
        }

        // The head and whatever of the body is already here, in one write.
        let available = &buf[head_len..];
        let mut rest = length;
        let mut chunks = None;
        let first_body = match length {
            BodyLength::Empty => 0,
            BodyLength::Length(n) => {
                let k = (n.min(available.len() as u64)) as usize;
                rest = if k as u64 == n {
                    BodyLength::Empty
                } else {
                    BodyLength::Length(n - k as u64)
                };
                k
            }
            BodyLength::Chunked => {
                let mut state = match limits.app {
                    AppSide::Upstream => Chunked::for_app_response(),
                    AppSide::Downstream => Chunked::new(),
                };
                let Ok(k) = state.advance(available) else {
                    return Err(fail(
                        answered,
                        HttpProxyError::Malformed(Malformed::BadChunk),
                    ));
                };
                if state.is_done() {
                    rest = BodyLength::Empty;
                }
                chunks = Some(state);
                k
            }
            BodyLength::UntilClose => available.len(),
        };
        let first = head_len + first_body;
        let written = match rewritten {
            Some(mut head) => {
                head.extend_from_slice(&buf[head_len..first]);
                write_flush(writer, &head).await
            }
            None => write_flush(writer, &buf[..first]).await,
        };
        if let Err(e) = written {
            return Err(fail(true, HttpProxyError::Io(e)));
        }
        answered = true;
        buf.advance(first);
        if (100..200).contains(&status) && status != 101 {
            continue; // interim: the final response follows
        }
        if let Err(error) = copy_body(reader, buf, writer, rest, chunks, None, limits).await {
            return Err(fail(true, error));
        }
        return Ok(Relayed {
            status,
            keep_alive: keep_alive && length != BodyLength::UntilClose,
            head_after,
        });
    }
}

/// A response head rewritten: the status line as it came, then every
/// field but the `x-appid-*` ones (when `drop_appid`), when `length` is
/// given the `content-length` ones, which become one of that value, and
/// with `close` the `connection` ones, which become `connection: close`.
fn rewritten_response_head(
    head: &[u8],
    headers: &HeaderList<'_, '_>,
    drop_appid: bool,
    length: Option<u64>,
    close: bool,
) -> Vec<u8> {
    let status_line_end = head.iter().position(|&b| b == b'\n').map_or(0, |i| i + 1);
    let mut out = Vec::with_capacity(head.len());
    out.extend_from_slice(&head[..status_line_end]);
    for header in headers.0 {
        if (drop_appid && is_appid_header(header.name))
            || (length.is_some() && header.name.eq_ignore_ascii_case("content-length"))
            || (close && header.name.eq_ignore_ascii_case("connection"))
        {
            continue;
        }
        out.extend_from_slice(header.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(header.value);
        out.extend_from_slice(b"\r\n");
    }
    if let Some(length) = length {
        push_content_length(&mut out, length);
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Appends `content-length: <length>` and its line end.
fn push_content_length(out: &mut Vec<u8>, length: u64) {
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(itoa::Buffer::new().format(length).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// After `101 Switching Protocols`: opaque bytes both ways, including what
/// each side already sent past the heads, until either side ends or the
/// connection's authorization is `withdrawn`.
async fn switch_protocols<D, U>(
    mut downstream: D,
    mut upstream: U,
    down_buf: BytesMut,
    up_buf: BytesMut,
    limits: HttpLimits,
    withdrawn: impl Future<Output = ()>,
) -> Result<(), HttpProxyError>
where
    D: AsyncRead + AsyncWrite + Unpin + Abort + Chunks,
    U: AsyncRead + AsyncWrite + Unpin + Abort + Chunks,
{
    write_flush(&mut downstream, &up_buf)
        .await
        .map_err(HttpProxyError::Io)?;
    // A reset on one side is passed on as a reset (a WebSocket cut short
    // is not a clean close).
    let (end, _) = crate::sidecar::splice::splice(
        &mut downstream,
        &mut upstream,
        &down_buf,
        limits.header_timeout,
        // What an upgraded connection holds is bounded per connection (a
        // copy buffer or what it gathered from a tunnel stream, up to
        // 64 KiB and a frame, each way; what a tunnel stream queues: its
        // send buffer) but not charged to the process budget.
        None,
        withdrawn,
    )
    .await;
    crate::sidecar::splice::forward_reset(end, &mut downstream, &mut upstream);
    Ok(())
}

async fn write_flush<W: AsyncWrite + Unpin>(writer: &mut W, bytes: &[u8]) -> io::Result<()> {
    writer.write_all(bytes).await?;
    writer.flush().await
}

/// A request head refused with no method or target to name (too large, or
/// not a head at all): audited with the reason, then answered; the caller
/// closes the connection.
async fn refuse_head<W: AsyncWrite + Unpin>(
    writer: &mut W,
    authorizer: &dyn RequestAuthorizer,
    why: Malformed,
) -> HttpProxyError {
    authorizer.malformed(why);
    local_response(
        writer,
        Refusal::Malformed(why).status(),
        why.as_str(),
        None,
        false,
    )
    .await;
    HttpProxyError::Malformed(why)
}

/// The `502` for a request the app (or the peer) never got whole.
async fn upstream_unavailable<W: AsyncWrite + Unpin>(writer: &mut W, to_head: bool) {
    local_response(writer, 502, "upstream unavailable\n", None, to_head).await;
}

/// Writes a response the proxy makes itself; `denied`: the rule for
/// `x-appid-denied-by` and whether to close; `to_head`: it answers a `HEAD`
/// request, so it has no body (RFC 9110 §9.3.2: its `content-length` is
/// the body a `GET` would get). Sent on a connection kept open, a body
/// would be read as the start of the next response. Returns whether it was
/// written.
async fn local_response<W: AsyncWrite + Unpin>(
    writer: &mut W,
    status: u16,
    body: &str,
    denied: Option<(&str, bool)>,
    to_head: bool,
) -> bool {
    let reason = match status {
        400 => "Bad Request",
        403 => "Forbidden",
        405 => "Method Not Allowed",
        421 => "Misdirected Request",
        431 => "Request Header Fields Too Large",
        502 => "Bad Gateway",
        _ => "Error",
    };
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n",
        body.len()
    );
    let close = match denied {
        Some((rule, close)) => {
            let rule = if rule.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
                rule
            } else {
                "invalid"
            };
            head.push_str(&format!("{DENIED_BY_HEADER}: {rule}\r\n"));
            close
        }
        None => true,
    };
    if close {
        head.push_str("connection: close\r\n");
    }
    head.push_str("\r\n");
    if !to_head {
        head.push_str(body);
    }
    let written =
        tokio::time::timeout(Duration::from_secs(5), write_flush(writer, head.as_bytes()))
            .await
            .is_ok_and(|r| r.is_ok());
    if close {
        let _ = writer.shutdown().await;
    }
    written
}

#[cfg(test)]
mod tests {
    use super::super::{RequestFacts, RequestVerdict};
    use super::*;
    use std::sync::Mutex;
    use tokio::io::duplex;

    /// The body's first line, fed in pieces: the piece that completes a
    /// request line is refused (before it is sent), and a body decided as
    /// no request is not watched further.
    #[test]
    fn a_body_start_is_refused_where_it_becomes_a_request_line() {
        let flag = AtomicBool::new(false);
        let mut start = BodyStart::new(&flag);
        assert_eq!(start.passes(b"\r\nGE", false), Ok(()));
        assert_eq!(start.passes(b"T", false), Ok(()));
        assert_eq!(
            start.passes(b" /admin", false),
            Err(Malformed::BodyIsRequest)
        );

        let flag = AtomicBool::new(false);
        let mut start = BodyStart::new(&flag);
        assert_eq!(start.passes(b"PROPFIND", false), Ok(()));
        assert_eq!(
            start.passes(b"\t/x\x0bHTTP/1.1\r\n", false),
            Err(Malformed::BodyIsRequest)
        );

        let flag = AtomicBool::new(false);
        let mut start = BodyStart::new(&flag);
        assert_eq!(start.passes(b"{\"a\"", false), Ok(()));
        assert_eq!(start.passes(b"GET /admin HTTP/1.1\r\n", false), Ok(()));

        // Ends inside a line: passes, and the connection takes no next
        // request.
        let flag = AtomicBool::new(false);
        let mut start = BodyStart::new(&flag);
        assert_eq!(start.passes(b"PROPFIND /wor", false), Ok(()));
        assert!(!flag.load(Ordering::Relaxed));
        assert_eq!(start.passes(b"ld", true), Ok(()));
        assert!(flag.load(Ordering::Relaxed));
        let flag = AtomicBool::new(false);
        let mut start = BodyStart::new(&flag);
        assert_eq!(start.passes(b"hello wor", false), Ok(()));
        assert_eq!(start.passes(b"ld", true), Ok(()));
        assert!(!flag.load(Ordering::Relaxed));
        let flag = AtomicBool::new(false);
        let mut start = BodyStart::new(&flag);
        assert_eq!(start.passes(b"hello\n", true), Ok(()));
        assert!(!flag.load(Ordering::Relaxed));
        // A control byte is part of the target.
        let flag = AtomicBool::new(false);
        let mut start = BodyStart::new(&flag);
        assert_eq!(start.passes(b"PURGE /admin\x01", false), Ok(()));
        assert_eq!(
            start.passes(b" HTTP/1.1\r\n", false),
            Err(Malformed::BodyIsRequest)
        );

        // Blank lines to the cap, then a request: fail closed.
        let flag = AtomicBool::new(false);
        let mut start = BodyStart::new(&flag);
        let blanks = vec![b'\n'; detect::MAX_DETECT_BYTES - 1];
        assert_eq!(start.passes(&blanks, false), Ok(()));
        assert_eq!(
            start.passes(b"GET /admin HTTP/1.1\r\n", false),
            Err(Malformed::BodyIsRequest)
        );
    }

    /// Denies paths under `/admin` (rule `no-admin`), records what it saw
    /// and what it was asked to audit as refused or malformed.
    #[derive(Default)]
    struct Recorder {
        seen: Mutex<Vec<(String, String, Option<String>)>>,
        observed: Mutex<Vec<u16>>,
        audited: super::super::AuditRecorder,
    }

    impl RequestAuthorizer for Recorder {
        fn refused(&self, method: &str, target: &str, refusal: Refusal, _grpc: bool) {
            self.audited.refused(method, target, refusal);
        }

        fn malformed(&self, why: Malformed) {
            self.audited.malformed(why);
        }

        fn authorize(&self, request: &RequestFacts<'_>) -> RequestVerdict {
            self.seen.lock().unwrap().push((
                request.method.to_string(),
                request.path.to_string(),
                request.headers.first_value("x-tenant"),
            ));
            if request.path.starts_with("/admin") {
                RequestVerdict::Deny {
                    rule: "no-admin".into(),
                    reason: "path /admin".into(),
                }
            } else {
                RequestVerdict::Allow
            }
        }

        fn observe(&self, status: u16, _elapsed: Duration) {
            self.observed.lock().unwrap().push(status);
        }
    }

    fn limits() -> HttpLimits {
        HttpLimits {
            max_header_bytes: 8 * 1024,
            header_timeout: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(5),
            app: AppSide::Upstream,
        }
    }

    /// An idle connection carries this future for its whole life: the
    /// layer that picks HTTP/1 or HTTP/2 must add nothing to it. As an
    /// `async fn` it kept its own copy of every argument beside the h1
    /// future it awaited (2 416 bytes around h1's 1 848, release build).
    #[test]
    fn choosing_the_protocol_adds_nothing_to_an_http1_connection() {
        let h1 = proxy(
            duplex(64).0,
            duplex(64).0,
            Arc::new(Recorder::default()),
            None,
            limits(),
            Shutdown::never(),
        );
        let chosen = super::super::proxy(
            duplex(64).0,
            duplex(64).0,
            super::super::HttpVersion::Http1,
            Arc::new(Recorder::default()),
            None,
            limits(),
            Shutdown::never(),
        );
        let (h1, chosen) = (std::mem::size_of_val(&h1), std::mem::size_of_val(&chosen));
        assert!(
            chosen <= h1 + 8,
            "http::proxy's future is {chosen} bytes around h1's {h1}"
        );
    }

    /// Runs the proxy between a client pipe and an upstream pipe; the
    /// `upstream` closure plays the app.
    async fn run<F, Fut>(client_sends: &[u8], upstream: F) -> (Vec<u8>, Arc<Recorder>)
    where
        F: FnOnce(tokio::io::DuplexStream) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (mut client, proxy_down) = duplex(1 << 20);
        let (proxy_up, app) = duplex(1 << 20);
        let recorder = Arc::new(Recorder::default());
        let peer = Some(PeerHeaders {
            id: http::HeaderValue::from_static("spiffe://t.example/web"),
            claims: http::HeaderValue::from_static("e30"),
        });
        let proxy_task = tokio::spawn(proxy(
            proxy_down,
            proxy_up,
            recorder.clone(),
            peer,
            limits(),
            Shutdown::never(),
        ));
        let app_task = tokio::spawn(upstream(app));
        client.write_all(client_sends).await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut got))
            .await
            .expect("proxy answered and closed")
            .unwrap();
        let _ = proxy_task.await;
        app_task.await.unwrap();
        (got, recorder)
    }

    /// An app that answers each request head it reads with `200` and a
    /// body echoing the head, until EOF (requests have no body here).
    async fn echo_heads(app: tokio::io::DuplexStream) {
        answer_heads(app, None).await
    }

    /// [`echo_heads`], counting the heads it answered.
    async fn answer_heads(mut app: tokio::io::DuplexStream, count: Option<Arc<Mutex<usize>>>) {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head: Vec<u8> = buf.drain(..end + 4).collect();
                if let Some(count) = &count {
                    *count.lock().unwrap() += 1;
                }
                let body = String::from_utf8_lossy(&head).into_owned();
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                if app.write_all(response.as_bytes()).await.is_err() {
                    return; // the proxy closed: fine
                }
            }
            match app.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    #[tokio::test]
    async fn keep_alive_requests_are_authorized_one_by_one() {
        let (got, recorder) = run(
            b"GET /a?x=1 HTTP/1.1\r\nhost: a\r\nx-tenant: acme\r\nX-AppID-Peer-ID: spoofed\r\n\r\n\
              GET /admin/users HTTP/1.1\r\nhost: a\r\n\r\n\
              GET /b HTTP/1.1\r\nhost: a\r\n\r\n",
            echo_heads,
        )
        .await;
        let text = String::from_utf8_lossy(&got);
        assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
        assert_eq!(text.matches("HTTP/1.1 403 Forbidden").count(), 1, "{text}");
        assert!(text.contains("x-appid-denied-by: no-admin"), "{text}");
        // The app saw our peer headers, never the spoofed one.
        assert!(!text.contains("spoofed"), "{text}");
        assert!(
            text.contains("x-appid-peer-id: spiffe://t.example/web"),
            "{text}"
        );
        let seen = recorder.seen.lock().unwrap().clone();
        assert_eq!(seen[0], ("GET".into(), "/a".into(), Some("acme".into())));
        assert_eq!(seen[1].1, "/admin/users");
        assert_eq!(seen[2].1, "/b");
        assert_eq!(*recorder.observed.lock().unwrap(), [200, 403, 200]);
    }

    /// Each request head has the whole idle timeout from when it is
    /// awaited: the connection's one head timer is moved forward for every
    /// request, not left at the first one's deadline; a connection idle
    /// past it is closed.
    #[tokio::test(start_paused = true)]
    async fn every_request_head_has_the_whole_idle_timeout() {
        let (mut client, proxy_down) = duplex(1 << 16);
        let (proxy_up, app) = duplex(1 << 16);
        let recorder = Arc::new(Recorder::default());
        let limits = limits();
        tokio::spawn(proxy(
            proxy_down,
            proxy_up,
            recorder.clone(),
            None,
            limits,
            Shutdown::never(),
        ));
        tokio::spawn(echo_heads(app));
        let mut got = Vec::new();
        // Requests 3/5 of the timeout apart: the third comes after the
        // first one's deadline.
        for answered in 1..=4 {
            client
                .write_all(b"GET /a HTTP/1.1\r\nhost: a\r\n\r\n")
                .await
                .unwrap();
            while got.windows(15).filter(|w| w == b"HTTP/1.1 200 OK").count() < answered {
                let mut chunk = [0u8; 1024];
                let n = client.read(&mut chunk).await.unwrap();
                assert_ne!(n, 0, "closed before answer {answered}");
                got.extend_from_slice(&chunk[..n]);
            }
            tokio::time::sleep(limits.header_timeout * 3 / 5).await;
        }
        tokio::time::sleep(limits.header_timeout).await;
        let mut rest = [0u8; 64];
        assert_eq!(
            client.read(&mut rest).await.unwrap(),
            0,
            "idle past the timeout: closed"
        );
        assert_eq!(*recorder.observed.lock().unwrap(), [200; 4]);
    }

    /// Connection options naming fields (which a hop that honours them
    /// would remove: a field policy decided on, the verified identity) are
    /// not passed on; the fields themselves are, as policy saw them.
    #[tokio::test]
    async fn connection_options_name_no_field_to_the_app() {
        let (got, _) = run(
            b"GET /a HTTP/1.1\r\nhost: a\r\nx-tenant: acme\r\n\
              Connection: keep-alive, X-AppID-Peer-ID, x-tenant, TE\r\n\r\n\
              GET /b HTTP/1.1\r\nhost: a\r\nconnection: x-tenant\r\n\r\n\
              GET /c HTTP/1.1\r\nhost: a\r\nConnection: Keep-Alive\r\n\r\n",
            echo_heads,
        )
        .await;
        let text = String::from_utf8_lossy(&got);
        let heads: Vec<&str> = text.split("HTTP/1.1 200 OK").skip(1).collect();
        assert_eq!(heads.len(), 3, "{text}");
        assert!(
            heads[0].contains("\r\nconnection: keep-alive\r\n"),
            "{}",
            heads[0]
        );
        assert!(heads[0].contains("x-tenant: acme"), "{}", heads[0]);
        assert!(
            !heads[1].to_ascii_lowercase().contains("connection:"),
            "{}",
            heads[1]
        );
        assert!(
            heads[2].contains("connection: Keep-Alive\r\n"),
            "{}",
            heads[2]
        );
        for head in &heads {
            let lower = head.to_ascii_lowercase();
            assert!(!lower.contains("x-appid-peer-id,"), "{head}");
            assert!(!lower.contains(", x-tenant"), "{head}");
        }
    }

    /// A scripted app: for each `(until, answer)`, reads until what it has
    /// read ends with `until`, then writes `answer`; returns all it read.
    async fn answer_in_turn(
        app: &mut tokio::io::DuplexStream,
        answers: &[(&[u8], &[u8])],
    ) -> String {
        let mut all = Vec::new();
        let mut chunk = [0u8; 4096];
        for (until, answer) in answers {
            while !all.ends_with(until) {
                let n = app.read(&mut chunk).await.unwrap();
                assert!(n > 0, "app saw: {}", String::from_utf8_lossy(&all));
                all.extend_from_slice(&chunk[..n]);
            }
            app.write_all(answer).await.unwrap();
        }
        String::from_utf8_lossy(&all).into_owned()
    }

    #[tokio::test]
    async fn bodies_are_framed_by_length_and_by_chunks() {
        let app = |mut app: tokio::io::DuplexStream| async move {
            // One request at a time: each is answered before the next one
            // reaches the app.
            let answers: [(&[u8], &[u8]); 3] = [
                (
                    b"\r\n\r\nhello",
                    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\none\r\n0\r\n\r\n",
                ),
                (
                    b"\r\n\r\n5\r\nworld\r\n0\r\n\r\n",
                    b"HTTP/1.1 201 Created\r\ncontent-length: 3\r\n\r\ntwo",
                ),
                (
                    b"x-appid-peer: e30\r\n\r\n",
                    b"HTTP/1.1 204 No Content\r\n\r\n",
                ),
            ];
            let text = answer_in_turn(&mut app, &answers).await;
            assert!(text.contains("GET /three HTTP/1.1\r\n"), "{text}");
            let mut rest = Vec::new();
            let _ = app.read_to_end(&mut rest).await;
        };
        let (got, _) = run(
            b"POST /one HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\n\r\nhello\
              POST /two HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n5\r\nworld\r\n0\r\n\r\n\
              GET /three HTTP/1.1\r\nhost: a\r\n\r\n",
            app,
        )
        .await;
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\none\r\n0\r\n\r\nHTTP/1.1 201 Created"), "{text}");
        assert!(
            text.ends_with("two\r\nHTTP/1.1 204 No Content\r\n\r\n")
                || text.ends_with("twoHTTP/1.1 204 No Content\r\n\r\n"),
            "{text}"
        );
    }

    /// A `content-length` list of equal values, or the field twice, is
    /// accepted (RFC 9112 §6.3) and forwarded as one plain value, both
    /// ways, so that the next hop never reads it differently (a `HEAD`
    /// answer's too, though it frames nothing); a single plain one goes on
    /// as it came, in its place.
    #[tokio::test]
    async fn a_repeated_content_length_is_forwarded_as_one_value() {
        let app = |mut app: tokio::io::DuplexStream| async move {
            let answers: [(&[u8], &[u8]); 4] = [
                (
                    b"\r\n\r\nab",
                    b"HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\nx-kept: 1\r\n\r\nabc",
                ),
                (
                    b"\r\n\r\ncd",
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\ncontent-length: 2\r\n\r\nxy",
                ),
                (
                    b"\r\n\r\nef",
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nx-z: 1\r\n\r\nzz",
                ),
                (
                    b"\r\n\r\n", // the HEAD request's head
                    b"HTTP/1.1 200 OK\r\nContent-Length: 4, 4\r\n\r\n",
                ),
            ];
            let text = answer_in_turn(&mut app, &answers).await;
            // The first two as one plain value, the third as it came.
            assert_eq!(text.matches("content-length: 2\r\n").count(), 2, "{text}");
            assert!(
                text.contains(
                    "POST /three HTTP/1.1\r\nhost: a\r\nContent-Length: 2\r\nx-after: 1\r\n"
                ),
                "{text}"
            );
            assert_eq!(
                text.to_ascii_lowercase().matches("content-length").count(),
                3,
                "{text}"
            );
            let mut rest = Vec::new();
            let _ = app.read_to_end(&mut rest).await;
        };
        let (got, _) = run(
            b"POST /one HTTP/1.1\r\nhost: a\r\nContent-Length: 2, 2\r\nx-order: 1\r\n\r\nab\
              POST /two HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\nContent-Length: 2\r\n\r\ncd\
              POST /three HTTP/1.1\r\nhost: a\r\nContent-Length: 2\r\nx-after: 1\r\n\r\nef\
              HEAD /four HTTP/1.1\r\nhost: a\r\n\r\n",
            app,
        )
        .await;
        let text = String::from_utf8_lossy(&got);
        let want = "HTTP/1.1 200 OK\r\nx-kept: 1\r\ncontent-length: 3\r\n\r\nabc\
                    HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nxy\
                    HTTP/1.1 200 OK\r\nContent-Length: 2\r\nx-z: 1\r\n\r\nzz\
                    HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n";
        assert_eq!(text, want);
    }

    /// Each is refused before the app, and audited as a refusal (a head
    /// that does not parse as a request names no method or target).
    #[tokio::test]
    async fn smuggling_shapes_are_refused_before_the_app() {
        for (request, audited) in [
            (
                &b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n"[..],
                "refused POST /: both Transfer-Encoding and Content-Length",
            ),
            (
                b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n",
                "refused POST /: invalid Content-Length",
            ),
            (
                b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: gzip\r\n\r\n",
                "refused POST /: Transfer-Encoding does not end in chunked",
            ),
            (
                b"POST / HTTP/1.0\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n",
                "refused POST /: Transfer-Encoding on an HTTP/1.0 request",
            ),
            (
                b"GET / HTTP/1.1\r\nho st: a\r\n\r\n",
                "malformed: invalid message head",
            ),
            (
                b"CONNECT a:443 HTTP/1.1\r\nhost: a\r\n\r\n",
                "refused CONNECT a:443: CONNECT is not proxied",
            ),
        ] {
            let (got, recorder) = run(request, |mut app| async move {
                let mut seen = Vec::new();
                let _ = app.read_to_end(&mut seen).await;
                assert!(seen.is_empty(), "the app saw {}", String::from_utf8_lossy(&seen));
            })
            .await;
            let text = String::from_utf8_lossy(&got);
            assert!(text.starts_with("HTTP/1.1 400") || text.starts_with("HTTP/1.1 405"), "{text}");
            assert!(recorder.seen.lock().unwrap().is_empty());
            assert_eq!(recorder.audited.lines(), [audited]);
        }
    }

    /// Request trailers (a place to hide fields from the authorizer) cut
    /// the request off at the trailer, the connection closed, and are
    /// audited: the request's own decision came first.
    #[tokio::test]
    async fn request_trailers_are_cut_off_and_audited() {
        let (got, recorder) = run(
            b"POST /x HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n1\r\na\r\n0\r\nx-tenant: evil\r\n\r\n",
            |mut app| async move {
                let mut seen = Vec::new();
                let _ = app.read_to_end(&mut seen).await;
                let seen = String::from_utf8_lossy(&seen).into_owned();
                assert!(!seen.contains("evil"), "the app saw {seen}");
            },
        )
        .await;
        assert!(!String::from_utf8_lossy(&got).contains("200"));
        assert_eq!(recorder.seen.lock().unwrap().len(), 1);
        assert_eq!(recorder.audited.lines(), ["malformed: request trailers"]);
    }

    #[tokio::test]
    async fn desync_and_spoofing_shapes_are_refused_or_neutralized() {
        for request in [
            // Go ignores Transfer-Encoding on HTTP/1.0: the "chunks" would
            // be the next request to it.
            &b"POST /public HTTP/1.0\r\nconnection: keep-alive\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"[..],
            b"delete /x HTTP/1.1\r\nhost: a\r\n\r\n",
            b"GET /public/%2e%2e/admin HTTP/1.1\r\nhost: a\r\n\r\n",
            b"GET /public/../admin HTTP/1.1\r\nhost: a\r\n\r\n",
            b"GET /public/..;/admin HTTP/1.1\r\nhost: a\r\n\r\n",
            b"GET /a%2Fb HTTP/1.1\r\nhost: a\r\n\r\n",
            b"GET /a\\b HTTP/1.1\r\nhost: a\r\n\r\n",
        ] {
            let (got, recorder) = run(request, |mut app| async move {
                let mut seen = Vec::new();
                let _ = app.read_to_end(&mut seen).await;
                let seen = String::from_utf8_lossy(&seen).into_owned();
                assert!(!seen.contains("admin"), "the app saw {seen}");
            })
            .await;
            let text = String::from_utf8_lossy(&got);
            assert!(text.starts_with("HTTP/1.1 400"), "{}: {text}", String::from_utf8_lossy(request));
            assert!(recorder.observed.lock().unwrap().iter().all(|&s| s != 200));
        }
    }

    #[tokio::test]
    async fn a_request_line_hidden_in_a_chunk_never_reaches_the_app() {
        let (got, _) = run(
            b"POST /x HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\nBAD /admin HTTP/1.1\r\nhost: a\r\n\r\n",
            |mut app| async move {
                let mut seen = Vec::new();
                let _ = app.read_to_end(&mut seen).await;
                let seen = String::from_utf8_lossy(&seen).into_owned();
                assert!(seen.starts_with("POST /x"), "{seen}");
                assert!(!seen.contains("admin"), "the app saw {seen}");
            },
        )
        .await;
        assert!(!String::from_utf8_lossy(&got).contains("200"));
    }

    #[tokio::test]
    async fn encoded_letters_are_decoded_for_policy_and_spoofed_identities_dropped() {
        let (got, recorder) = run(
            b"GET /%61dmin/users HTTP/1.1\r\nhost: a\r\n\r\n\
              GET /ok HTTP/1.1\r\nhost: a\r\nX_Appid_Peer_Id: evil\r\nupgrade: h2c\r\nhttp2-settings: AAMAAABkAAQAoAAAAAIAAAAA\r\nconnection: Upgrade, HTTP2-Settings\r\n\r\n",
            echo_heads,
        )
        .await;
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 403"), "{text}");
        assert_eq!(recorder.seen.lock().unwrap()[0].1, "/admin/users");
        assert!(text.contains("200 OK"), "{text}");
        assert!(!text.contains("evil"), "{text}");
        assert!(!text.to_ascii_lowercase().contains("h2c"), "{text}");
        assert!(
            !text.to_ascii_lowercase().contains("http2-settings:"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn an_unrequested_101_is_not_followed() {
        let app = |mut app: tokio::io::DuplexStream| async move {
            let mut buf = vec![0u8; 4096];
            let _ = app.read(&mut buf).await.unwrap();
            app.write_all(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: h2c\r\n\r\n")
                .await
                .unwrap();
            let mut rest = Vec::new();
            let _ = app.read_to_end(&mut rest).await;
        };
        let (got, _) = run(b"GET / HTTP/1.1\r\nhost: a\r\n\r\nPRI * HTTP/2.0\r\n", app).await;
        assert!(
            String::from_utf8_lossy(&got).starts_with("HTTP/1.1 502"),
            "{}",
            String::from_utf8_lossy(&got)
        );
    }

    /// A head that arrives in pieces is handed over once, complete, as
    /// parsed; what follows it stays in the buffer. Bad heads are told
    /// apart as before.
    #[tokio::test]
    async fn a_head_is_handed_over_once_as_parsed() {
        let (mut client, mut server) = duplex(1 << 16);
        let head = b"GET /v1/x HTTP/1.1\r\nHost: a\r\nX-Tenant: acme\r\n\r\n";
        let sender = tokio::spawn(async move {
            for piece in [&head[..3], &head[3..20], &head[20..30], &head[30..]] {
                client.write_all(piece).await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            client.write_all(b"body").await.unwrap();
            client
        });
        let calls = std::cell::Cell::new(0);
        let parser = RequestHead(|request: &httparse::Request<'_, '_>, bytes: &[u8]| {
            calls.set(calls.get() + 1);
            let tenant = HeaderList(&*request.headers).first_value("x-tenant");
            (
                request.method.map(str::to_owned),
                request.path.map(str::to_owned),
                tenant,
                bytes.len(),
            )
        });
        let mut buf = BytesMut::new();
        let timer = std::pin::pin!(tokio::time::sleep(Duration::ZERO));
        let read = read_head(&mut server, &mut buf, limits(), Some(timer), parser).await;
        let HeadRead::Complete(n, (method, path, tenant, seen)) = read else {
            panic!("{read:?}");
        };
        assert_eq!((n, seen), (head.len(), head.len()));
        assert_eq!(method.as_deref(), Some("GET"));
        assert_eq!(path.as_deref(), Some("/v1/x"));
        assert_eq!(tenant.as_deref(), Some("acme"));
        assert_eq!(calls.get(), 1);
        drop(sender.await.unwrap());

        let cases: [(&[u8], &str); 3] = [
            (b"\x01\x02 not http\r\n", "invalid"),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n", "closed inside"),
            (&[b'x'; 20_000], "too large"),
        ];
        // A complete head over the limits (bytes, fields) is refused and
        // never handed over: nothing authorizes or audits it.
        let many = (0..MAX_HEADERS + 1)
            .map(|i| format!("X-{i}: v\r\n"))
            .collect::<String>();
        let too_many = format!("GET / HTTP/1.1\r\n{many}\r\n");
        let too_long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(200));
        let small = HttpLimits {
            max_header_bytes: 128,
            ..limits()
        };
        for (bytes, limits) in [(too_many, limits()), (too_long, small)] {
            let (mut client, mut server) = duplex(1 << 16);
            client.write_all(bytes.as_bytes()).await.unwrap();
            let handed = std::cell::Cell::new(false);
            let parser = RequestHead(|_: &httparse::Request<'_, '_>, _: &[u8]| handed.set(true));
            let timer = std::pin::pin!(tokio::time::sleep(Duration::ZERO));
            let read = read_head(
                &mut server,
                &mut BytesMut::new(),
                limits,
                Some(timer),
                parser,
            )
            .await;
            assert!(matches!(read, HeadRead::TooLarge), "{read:?}");
            assert!(!handed.get());
        }

        for (bytes, want) in cases {
            let (mut client, mut server) = duplex(1 << 16);
            client.write_all(bytes).await.unwrap();
            drop(client);
            let parser = ResponseHead(|_: &httparse::Response<'_, '_>, _: &[u8]| ());
            let read = read_head(&mut server, &mut BytesMut::new(), limits(), None, parser).await;
            let got = match read {
                HeadRead::Invalid => "invalid",
                HeadRead::Truncated => "closed inside",
                HeadRead::TooLarge => "too large",
                other => panic!("{other:?}"),
            };
            assert_eq!(
                got,
                want,
                "{:?}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(20)])
            );
        }
    }

    #[tokio::test]
    async fn oversized_heads_get_431() {
        let mut request = b"GET / HTTP/1.1\r\nx-big: ".to_vec();
        request.extend(std::iter::repeat_n(b'a', 10_000));
        request.extend_from_slice(b"\r\n\r\n");
        let (got, _) = run(&request, |_app| async {}).await;
        assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 431"));
    }

    #[tokio::test]
    async fn a_denied_request_with_a_body_closes_the_connection() {
        let (got, _) = run(
            b"POST /admin HTTP/1.1\r\nhost: a\r\ncontent-length: 4\r\n\r\nbodyGET /a HTTP/1.1\r\n\r\n",
            echo_heads,
        )
        .await;
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 403"), "{text}");
        assert!(text.contains("connection: close"), "{text}");
        assert!(!text.contains("200 OK"), "{text}");
    }

    #[tokio::test]
    async fn interim_100_continue_is_relayed_before_the_final_response() {
        let app = |mut app: tokio::io::DuplexStream| async move {
            let mut seen = Vec::new();
            let mut chunk = [0u8; 4096];
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = app.read(&mut chunk).await.unwrap();
                seen.extend_from_slice(&chunk[..n]);
            }
            app.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .unwrap();
            while !seen.ends_with(b"hello") {
                let n = app.read(&mut chunk).await.unwrap();
                assert!(n > 0);
                seen.extend_from_slice(&chunk[..n]);
            }
            app.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await
                .unwrap();
            let _ = app.read_to_end(&mut seen).await;
        };
        let (got, recorder) = run(
            b"POST /up HTTP/1.1\r\nhost: a\r\nexpect: 100-continue\r\ncontent-length: 5\r\n\r\nhello",
            app,
        )
        .await;
        assert_eq!(
            String::from_utf8_lossy(&got),
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
        );
        assert_eq!(*recorder.observed.lock().unwrap(), [200]);
    }

    #[tokio::test]
    async fn switching_protocols_becomes_opaque_tcp() {
        let app = |mut app: tokio::io::DuplexStream| async move {
            let mut buf = vec![0u8; 4096];
            let n = app.read(&mut buf).await.unwrap();
            assert!(String::from_utf8_lossy(&buf[..n]).starts_with("GET /ws HTTP/1.1"));
            app.write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\nconnection: upgrade\r\n\r\nhi",
            )
            .await
            .unwrap();
            let mut rest = Vec::new();
            app.read_to_end(&mut rest).await.unwrap();
            assert_eq!(rest, b"raw bytes");
            app.shutdown().await.unwrap();
        };
        let (got, _) = run(
            b"GET /ws HTTP/1.1\r\nhost: a\r\nupgrade: x\r\nconnection: upgrade\r\n\r\nraw bytes",
            app,
        )
        .await;
        assert!(String::from_utf8_lossy(&got).ends_with("\r\n\r\nhi"));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Whatever a client sends, the proxy ends (no panic, no hang), and
        /// every request the app receives was first shown to the authorizer.
        #[test]
        fn arbitrary_client_bytes_are_answered_or_refused(
            prefix in proptest::sample::select(vec![
                &b""[..], b"GET / HTTP/1.1\r\n", b"POST /a HTTP/1.1\r\ncontent-length: ",
                b"POST /a HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n",
            ]),
            noise in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let mut input = prefix.to_vec();
            input.extend_from_slice(&noise);
            let (_, recorder, app_heads) = runtime.block_on(async move {
                let heads = Arc::new(Mutex::new(0usize));
                let counted = heads.clone();
                let (got, recorder) = run(&input, move |app| answer_heads(app, Some(counted))).await;
                let heads = *heads.lock().unwrap();
                (got, recorder, heads)
            });
            let authorized = recorder.seen.lock().unwrap().len();
            proptest::prop_assert!(app_heads <= authorized, "{} heads reached the app, {} were authorized", app_heads, authorized);
        }
    }
}
