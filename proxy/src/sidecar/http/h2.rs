//! L7 for HTTP/2 and gRPC: the h2 crate on both sides, one upstream stream
//! per downstream stream.
//!
//! Design bias: *forward frames, not bodies*. Each request's head goes
//! through [`super::authorize_request`] (the check HTTP/1 shares), has its
//! `x-appid-*` headers rewritten, and is sent upstream on the one upstream
//! connection; DATA frames and response trailers are then passed along as
//! they come, with flow control end to end (a frame's window is handed
//! back to the sender only once the frame is handed on), so gRPC streaming
//! is never buffered and a slow reader slows its writer. A denial is
//! answered here: `403` with `x-appid-denied-by`, or for gRPC a
//! trailers-only answer with `grpc-status: 7`; a refusal is a `400` (`405`
//! for `CONNECT`) on that stream. Request trailers reset the stream (gRPC
//! requests never carry any); inbound, `x-appid-*` headers in the app's
//! response heads and trailers are removed.
//!
//! # Stream states (RFC 9113 §5.1, §8.1)
//!
//! Once a request's head is handed upstream, its stream is an [`Exchange`]
//! of two directions that end on their own: the request (client → app)
//! ends in a [`RequestEnd`], the response (app → client) in a
//! [`ResponseEnd`]. Neither direction's failure is taken for the other's:
//! - **The response always gets through.** An app may answer before the
//!   request is complete (a client-streaming gRPC call it finishes early,
//!   an upload rejected with 413) and then reset the request half with
//!   `NO_ERROR`. The request direction then just stops, and the response
//!   (head, DATA, trailers) is still passed on in full. Once it is, the
//!   exchange is over: the app's stream is reset with `NO_ERROR` if the
//!   request was still open, and so is the client's (h2 queues that reset
//!   *after* the response; an explicit reset would drop response frames
//!   not yet written).
//! - **A reset is passed on at once, both ways.** Each direction watches
//!   the side it writes to while it waits for the side it reads, so a
//!   client's RST_STREAM (a cancelled call) resets the app's stream with
//!   `CANCEL` whatever the stream is doing, and an app's reset reaches the
//!   client with the app's reason.
//! - **`502` only for what the app never got**: no upstream connection, a
//!   request that could not be sent, or one the app refused unprocessed
//!   (`REFUSED_STREAM`, or left out by its GOAWAY, §8.7). Once the app may
//!   have acted on a request, a failure is a reset, never a `502` that
//!   would invite the client to send it again.
//! - END_STREAM stays on the DATA frame that carried it, so an app never
//!   sees a complete request message on a stream that looks unfinished.
//!
//! Nothing is dialled before a request is allowed: the upstream connection
//! (and its HTTP/2 handshake) is made for the first allowed request. A
//! connection that has carried no stream for the idle timeout gets a GOAWAY,
//! and is closed if it has not finished within the drain timeout.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::ResponseFuture;
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};

use super::flood::FrameBudget;
use crate::sidecar::memory::Meter;
use crate::sidecar::trace::{self, TRACEPARENT, TRACESTATE};
use crate::sidecar::tunnel::StreamCount;
use tracing::Instrument as _;

use super::{
    AppSide, DENIED_BY_HEADER, HeaderMapView, HttpLimits, HttpProxyError, PEER_CLAIMS_HEADER,
    PEER_ID_HEADER, PeerHeaders, RequestAuthorizer, RequestDecision, Shutdown, authorize_request,
    strip_appid_headers,
};

/// Concurrent streams accepted from the client.
const MAX_STREAMS: u32 = 256;
/// Flow-control windows, per stream and per connection, both sides.
const STREAM_WINDOW: u32 = 1 << 20;
const CONNECTION_WINDOW: u32 = 4 << 20;

/// Proxies one HTTP/2 connection until it ends, idles out or `shutdown`
/// resolves (then GOAWAY, in-flight streams finish, and the connection
/// closes at the drain timeout at the latest). `upstream` is only used
/// (and so, when it is lazy, only dialled) for the first allowed request.
pub async fn proxy<D, U>(
    downstream: D,
    upstream: U,
    authorizer: Arc<dyn RequestAuthorizer>,
    peer_headers: Option<PeerHeaders>,
    limits: HttpLimits,
    mut shutdown: Shutdown,
) -> Result<(), HttpProxyError>
where
    D: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    U: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let downstream = FrameBudget::new(downstream, true);
    let flooded = downstream.tripped();
    let handshake = h2::server::Builder::new()
        .max_concurrent_streams(MAX_STREAMS)
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_header_list_size(limits.max_header_bytes as u32)
        .handshake::<_, Bytes>(downstream);
    let mut server = match tokio::time::timeout(limits.header_timeout, handshake).await {
        Ok(server) => server.map_err(HttpProxyError::H2)?,
        Err(_) => {
            return Err(HttpProxyError::Protocol(
                "HTTP/2 preface not received in time",
            ));
        }
    };
    let upstream = Arc::new(Upstream::new(upstream, limits));
    let peer_headers = Arc::new(peer_headers);
    // The peer's share of the byte budget, looked up once: each stream's
    // two directions get meters of their own from it.
    let meter = Arc::new(authorizer.meter());
    let streams = StreamCount::new();
    let idle = streams.idle(limits.header_timeout);
    // Armed at GOAWAY: a client that never finishes loses the connection.
    let drained = tokio::time::sleep(Duration::MAX);
    let shutdown = shutdown.started();
    tokio::pin!(shutdown, idle, drained);
    let mut stopping = false;
    loop {
        tokio::select! {
            accepted = server.accept() => match accepted {
                None => return Ok(()),
                Some(Err(_)) if flooded.load(std::sync::atomic::Ordering::Relaxed) => {
                    return Err(HttpProxyError::Flood);
                }
                Some(Err(e)) => return Err(HttpProxyError::H2(e)),
                Some(Ok((request, respond))) => {
                    let upstream = upstream.clone();
                    let authorizer = authorizer.clone();
                    let peer_headers = peer_headers.clone();
                    let meter = meter.clone();
                    let stream = streams.open();
                    let span = request_span(&request, limits.app);
                    // Boxed: the task then holds a pointer, not the
                    // stream's ~2.5 KB future, which tokio would otherwise
                    // copy in at spawn and over again as the task ends.
                    tokio::spawn(Box::pin(async move {
                        let meter = meter.as_ref().as_ref();
                        forward(request, respond, &upstream, &*authorizer, meter, &peer_headers, limits.app).await;
                        drop(stream);
                    }.instrument(span)));
                }
            },
            () = &mut idle, if !stopping => {
                tracing::debug!("http/2 connection idle: GOAWAY");
                stopping = true;
                server.graceful_shutdown();
                drained.as_mut().reset(tokio::time::Instant::now() + limits.drain_timeout);
            }
            () = &mut shutdown, if !stopping => {
                stopping = true;
                server.graceful_shutdown();
                drained.as_mut().reset(tokio::time::Instant::now() + limits.drain_timeout);
            }
            () = &mut drained, if stopping => {
                return Err(HttpProxyError::Protocol("not drained in time after GOAWAY"));
            }
        }
    }
}

/// The upstream HTTP/2 connection, made when the first allowed request
/// needs it. `None` once that failed (every request then gets a 502).
struct Upstream {
    io: std::sync::Mutex<Option<Box<dyn UpstreamIo>>>,
    client: tokio::sync::OnceCell<Option<h2::client::SendRequest<Bytes>>>,
    limits: HttpLimits,
}

/// What the upstream connection is, boxed so that [`Upstream`] is not
/// generic (one `forward` for every transport).
trait UpstreamIo: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> UpstreamIo for T {}

impl Upstream {
    fn new<U: UpstreamIo>(io: U, limits: HttpLimits) -> Upstream {
        Upstream {
            io: std::sync::Mutex::new(Some(Box::new(io))),
            client: tokio::sync::OnceCell::new(),
            limits,
        }
    }

    /// A handle for sending requests upstream (handshaking first, once).
    async fn client(&self) -> Option<h2::client::SendRequest<Bytes>> {
        self.client
            .get_or_init(|| async {
                let io = self.io.lock().unwrap_or_else(|e| e.into_inner()).take()?;
                let handshake = h2::client::Builder::new()
                    .enable_push(false)
                    .initial_window_size(STREAM_WINDOW)
                    .initial_connection_window_size(CONNECTION_WINDOW)
                    .max_header_list_size(self.limits.max_header_bytes as u32)
                    .handshake::<_, Bytes>(io)
                    .await;
                let (client, connection) = match handshake {
                    Ok(pair) => pair,
                    Err(e) => {
                        tracing::debug!(error = %e, "upstream http/2 handshake failed");
                        return None;
                    }
                };
                // Ends when the upstream closes, or when every handle (this
                // one included) is gone with the downstream connection.
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(error = %e, "upstream http/2 connection ended");
                    }
                });
                Some(client)
            })
            .await
            .clone()
    }
}

/// The stream's `appid.request` span, a child of its `traceparent` (if
/// valid) or of the connection span.
fn request_span(request: &Request<RecvStream>, app: AppSide) -> tracing::Span {
    trace::request_span(app, request.method().as_str(), |name| {
        request.headers().get(name).and_then(|v| v.to_str().ok())
    })
}

/// One request: authorize, send upstream, then run the exchange.
async fn forward(
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    upstream: &Upstream,
    authorizer: &dyn RequestAuthorizer,
    meter: Option<&Meter>,
    peer_headers: &Option<PeerHeaders>,
    app: AppSide,
) {
    let started = Instant::now();
    let (mut parts, body) = request.into_parts();
    let grpc = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"));
    // `:path` as sent (origin form, or `*`); an h2 request always has one.
    let target = parts.uri.path_and_query().map_or("", |p| p.as_str());
    let headers = HeaderMapView(&parts.headers);
    match authorize_request(authorizer, parts.method.as_str(), target, &headers, grpc) {
        RequestDecision::Forward => {}
        RequestDecision::Deny { rule, reason } => {
            let status = send_denied(&mut respond, &rule, &reason, grpc);
            authorizer.observe(status, started.elapsed());
            return;
        }
        RequestDecision::Refuse(refusal) => {
            let status = StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::BAD_REQUEST);
            send_local(&mut respond, status, &format!("appid: {refusal}\n"), None);
            authorizer.observe(status.as_u16(), started.elapsed());
            return;
        }
    }
    strip_appid_headers(&mut parts.headers);
    // Ours replaces theirs: the next hop's parent is this request's span.
    if let Some(context) = trace::outgoing(&tracing::Span::current()) {
        parts.headers.remove(TRACEPARENT);
        parts.headers.remove(TRACESTATE);
        for (name, value) in context.headers() {
            if let Ok(value) = HeaderValue::from_str(value) {
                parts.headers.insert(HeaderName::from_static(name), value);
            }
        }
    }
    if let Some(peer) = peer_headers {
        parts
            .headers
            .insert(HeaderName::from_static(PEER_ID_HEADER), peer.id.clone());
        parts.headers.insert(
            HeaderName::from_static(PEER_CLAIMS_HEADER),
            peer.claims.clone(),
        );
    }

    let request_ends = body.is_end_stream();
    let response_body = match parts.method {
        Method::HEAD => ResponseBody::None,
        _ => ResponseBody::Forwarded,
    };
    // The app is dialled for the first allowed request, not before.
    let Some(client) = upstream.client().await else {
        send_local(
            &mut respond,
            StatusCode::BAD_GATEWAY,
            "upstream unavailable\n",
            None,
        );
        authorizer.observe(502, started.elapsed());
        return;
    };
    // Until `send_request` succeeds nothing was handed to the upstream: a
    // failure here is a 502 (and safe for the client to retry). Waiting for
    // a stream slot (the app's concurrency limit) ends if the client gives
    // up: the app never hears of the request then.
    let ready = tokio::select! {
        ready = client.ready() => ready,
        reset = std::future::poll_fn(|cx| respond.poll_reset(cx)) => {
            tracing::debug!(?reset, "client reset its stream before it went upstream");
            return;
        }
    };
    let sent = match ready {
        Ok(mut client) => client.send_request(Request::from_parts(parts, ()), request_ends),
        Err(e) => Err(e),
    };
    let (response, upstream_request) = match sent {
        Ok(pair) => pair,
        Err(e) => {
            bad_gateway(&mut respond, authorizer, started, &e);
            return;
        }
    };
    let exchange = Exchange {
        client_request: body,
        upstream_request,
        respond,
        authorizer,
        meter,
        started,
        app,
        response_body,
    };
    exchange.run(response, request_ends).await;
}

/// One stream in flight, once its head went upstream: the two directions
/// of RFC 9113 §8.1, each with its own end.
struct Exchange<'a> {
    /// The client's request body (downstream, receiving).
    client_request: RecvStream,
    /// The request as sent to the upstream (upstream, sending).
    upstream_request: SendStream<Bytes>,
    /// The client's stream, for the response (downstream, sending).
    respond: SendResponse<Bytes>,
    authorizer: &'a dyn RequestAuthorizer,
    /// The connection's meter, which each direction's is made from.
    meter: Option<&'a Meter>,
    started: Instant,
    app: AppSide,
    response_body: ResponseBody,
}

/// Whether a response has a body to forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResponseBody {
    Forwarded,
    /// A response to `HEAD` ends with its head (RFC 9110 §9.3.2): content
    /// an app sends anyway is not forwarded (h2 would call it malformed
    /// and reset the stream, taking the head with it).
    None,
}

/// How the request direction (client → upstream) ended.
#[derive(Debug)]
enum RequestEnd {
    /// END_STREAM was passed on: the upstream has the whole request.
    Complete,
    /// The upstream stopped taking the request: it reset its stream (with
    /// `NO_ERROR` after a complete response, as §8.1 allows, or with an
    /// error the response direction reports). The rest of the body is not
    /// forwarded; the response still is.
    UpstreamStopped,
    /// The client reset or broke its stream: nobody is left to answer, and
    /// the upstream must learn at once (RST_STREAM `CANCEL`).
    ClientAborted(h2::Error),
    /// The client sent request trailers: both streams are reset.
    TrailersRefused,
}

/// How the response direction (upstream → client) ended.
#[derive(Debug)]
enum ResponseEnd {
    /// END_STREAM was passed on: the client has the whole response.
    Complete,
    /// The upstream never processed the request (it refused the stream, or
    /// a GOAWAY left it out): answered `502`, which is safe to retry.
    NotProcessed,
    /// The upstream reset or lost the stream after taking the request: the
    /// client's stream is reset with the same reason (`INTERNAL_ERROR` when
    /// there is none, e.g. the connection broke). Never a `502`: the app
    /// may have acted on the request.
    UpstreamFailed(Reason, h2::Error),
    /// The client reset its stream: the upstream's is reset with `CANCEL`.
    ClientGone(PipeError),
}

impl Exchange<'_> {
    /// Runs both directions until the exchange is over, then closes what
    /// is still open the way §8.1 says.
    async fn run(mut self, response: ResponseFuture, request_ends: bool) {
        let mut request_end = request_ends.then_some(RequestEnd::Complete);
        let response_end = {
            let request = pipe(
                &mut self.client_request,
                &mut self.upstream_request,
                Trailers::Refuse,
                self.meter.map(Meter::another),
            );
            let response = respond(
                response,
                &mut self.respond,
                self.authorizer,
                self.meter,
                self.started,
                self.app,
                self.response_body,
            );
            tokio::pin!(request, response);
            loop {
                tokio::select! {
                    // Biased: once the response has ended, a request error
                    // that raced with it must not be what decides.
                    biased;
                    end = &mut response => break Some(end),
                    piped = &mut request, if request_end.is_none() => {
                        let end = RequestEnd::of(piped);
                        let over = matches!(end, RequestEnd::ClientAborted(_) | RequestEnd::TrailersRefused);
                        tracing::debug!(?end, "request direction ended");
                        request_end = Some(end);
                        if over {
                            break None;
                        }
                    }
                }
            }
        };
        self.close(request_end, response_end);
    }

    /// What is left to say once either direction decided the exchange.
    fn close(mut self, request_end: Option<RequestEnd>, response_end: Option<ResponseEnd>) {
        match (request_end, response_end) {
            (Some(RequestEnd::ClientAborted(error)), _) => {
                tracing::debug!(%error, "client abandoned its stream: upstream reset (CANCEL)");
                self.upstream_request.send_reset(Reason::CANCEL);
            }
            (Some(RequestEnd::TrailersRefused), _) => {
                tracing::debug!("request trailers refused: both streams reset");
                self.upstream_request.send_reset(Reason::PROTOCOL_ERROR);
                self.respond.send_reset(Reason::PROTOCOL_ERROR);
            }
            (request_end, Some(ResponseEnd::Complete | ResponseEnd::NotProcessed)) => {
                if !matches!(request_end, Some(RequestEnd::Complete)) {
                    // §8.1: a complete response ends the exchange. The app
                    // gets no more of the request (NO_ERROR: nothing went
                    // wrong); the client gets RST_STREAM(NO_ERROR) from h2
                    // when `self` drops below, queued *after* the response.
                    // (An explicit `respond.send_reset` would discard
                    // response frames not yet written.)
                    self.upstream_request.send_reset(Reason::NO_ERROR);
                }
            }
            (_, Some(ResponseEnd::UpstreamFailed(reason, error))) => {
                tracing::debug!(%error, ?reason, "upstream reset or lost the stream: client reset");
                self.respond.send_reset(reason);
            }
            (_, Some(ResponseEnd::ClientGone(error))) => {
                tracing::debug!(%error, "client reset its stream: upstream reset (CANCEL)");
                self.upstream_request.send_reset(Reason::CANCEL);
            }
            // The loop above breaks without a response end only when the
            // request direction ended the exchange (matched first).
            (_, None) => {}
        }
    }
}

impl RequestEnd {
    fn of(piped: Result<(), PipeError>) -> RequestEnd {
        match piped {
            Ok(()) => RequestEnd::Complete,
            Err(PipeError::TrailersRefused) => RequestEnd::TrailersRefused,
            Err(PipeError::Source(error)) => RequestEnd::ClientAborted(error),
            Err(stopped @ (PipeError::SinkReset(_) | PipeError::Sink(_))) => {
                tracing::debug!(%stopped, "upstream stopped taking the request body");
                RequestEnd::UpstreamStopped
            }
        }
    }
}

/// The response direction: waits for the upstream's head (watching for a
/// client reset meanwhile), sends it on and pipes the body and trailers.
async fn respond(
    response: ResponseFuture,
    respond: &mut SendResponse<Bytes>,
    authorizer: &dyn RequestAuthorizer,
    meter: Option<&Meter>,
    started: Instant,
    app: AppSide,
    response_body: ResponseBody,
) -> ResponseEnd {
    let head = tokio::select! {
        head = response => head,
        reset = std::future::poll_fn(|cx| respond.poll_reset(cx)) => {
            return ResponseEnd::ClientGone(PipeError::reset(reset));
        }
    };
    let response = match head {
        Ok(response) => response,
        Err(error) if never_processed(&error) => {
            bad_gateway(respond, authorizer, started, &error);
            return ResponseEnd::NotProcessed;
        }
        Err(error) => return ResponseEnd::UpstreamFailed(reset_reason(&error), error),
    };
    authorizer.observe(response.status().as_u16(), started.elapsed());
    let (mut parts, mut body) = response.into_parts();
    let trailers = match app {
        // The app's response: x-appid-* is not its to set.
        AppSide::Upstream => {
            strip_appid_headers(&mut parts.headers);
            Trailers::StripAppid
        }
        AppSide::Downstream => Trailers::Pass,
    };
    let ends = body.is_end_stream() || response_body == ResponseBody::None;
    let mut to_client = match respond.send_response(Response::from_parts(parts, ()), ends) {
        Ok(stream) => stream,
        Err(error) => return ResponseEnd::ClientGone(PipeError::Sink(error)),
    };
    if ends {
        return ResponseEnd::Complete;
    }
    match pipe(
        &mut body,
        &mut to_client,
        trailers,
        meter.map(Meter::another),
    )
    .await
    {
        Ok(()) => ResponseEnd::Complete,
        Err(PipeError::Source(error)) => ResponseEnd::UpstreamFailed(reset_reason(&error), error),
        Err(gone) => ResponseEnd::ClientGone(gone),
    }
}

/// Whether an error on a stream whose head was queued upstream shows that
/// the upstream never processed it (RFC 9113 §8.7): it refused the stream,
/// or its GOAWAY's last stream ID left this one out.
fn never_processed(error: &h2::Error) -> bool {
    error.is_remote() && (error.is_go_away() || error.reason() == Some(Reason::REFUSED_STREAM))
}

/// The reason to reset the client's stream with when the upstream's failed.
fn reset_reason(error: &h2::Error) -> Reason {
    match error.reason() {
        Some(reason) if error.is_reset() => reason,
        _ => Reason::INTERNAL_ERROR,
    }
}

/// What [`pipe`] does with trailers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trailers {
    /// Pass them on (responses from a peer sidecar).
    Pass,
    /// Pass them on without `x-appid-*` (responses from the local app).
    StripAppid,
    /// Refuse them (requests: trailers could carry headers past the
    /// authorizer, and gRPC requests never have any).
    Refuse,
}

/// Why [`pipe`] stopped before passing END_STREAM on.
#[derive(Debug, thiserror::Error)]
enum PipeError {
    /// The sending side reset or broke its stream.
    #[error("reading: {0}")]
    Source(h2::Error),
    /// The receiving side reset its stream (with this reason).
    #[error("the receiving side reset its stream ({0:?})")]
    SinkReset(Reason),
    /// The receiving side's stream cannot be written any more.
    #[error("writing: {0}")]
    Sink(h2::Error),
    /// Trailers, with [`Trailers::Refuse`].
    #[error("request trailers refused")]
    TrailersRefused,
}

impl PipeError {
    /// From the outcome of `poll_reset` on the receiving side.
    fn reset(polled: Result<Reason, h2::Error>) -> PipeError {
        match polled {
            Ok(reason) => PipeError::SinkReset(reason),
            Err(error) => PipeError::Sink(error),
        }
    }
}

/// Passes DATA frames and trailers from `from` to `to`, handing each
/// frame's window back to the sender once `to` has taken it. END_STREAM
/// stays on the frame that carried it (a request's last message and its
/// end arrive together, so the app never answers a request it sees as
/// unfinished). Returns as soon as `to` is reset, even while waiting for
/// `from`.
/// What `to` holds until written out is charged to `meter`, if any.
async fn pipe(
    from: &mut RecvStream,
    to: &mut SendStream<Bytes>,
    trailers: Trailers,
    mut meter: Option<Meter>,
) -> Result<(), PipeError> {
    if from.is_end_stream() {
        return Ok(());
    }
    loop {
        let frame = tokio::select! {
            frame = from.data() => frame,
            reset = std::future::poll_fn(|cx| to.poll_reset(cx)) => {
                return Err(PipeError::reset(reset));
            }
        };
        let Some(frame) = frame else { break };
        let frame = frame.map_err(PipeError::Source)?;
        let taken = frame.len();
        // Nothing (no trailers) follows this frame: it ends the stream.
        let ends = from.is_end_stream();
        send_frame(to, frame, ends, meter.as_mut()).await?;
        let _ = from.flow_control().release_capacity(taken);
        if ends {
            return Ok(());
        }
    }
    let fields = tokio::select! {
        fields = from.trailers() => fields.map_err(PipeError::Source)?,
        reset = std::future::poll_fn(|cx| to.poll_reset(cx)) => {
            return Err(PipeError::reset(reset));
        }
    };
    let sent = match (fields, trailers) {
        (None, _) => to.send_data(Bytes::new(), true),
        (Some(_), Trailers::Refuse) => return Err(PipeError::TrailersRefused),
        (Some(mut fields), Trailers::StripAppid) => {
            strip_appid_headers(&mut fields);
            to.send_trailers(fields)
        }
        (Some(fields), Trailers::Pass) => to.send_trailers(fields),
    };
    sent.map_err(PipeError::Sink)
}

/// Sends one DATA frame's payload on `to`, in parts as `to`'s window
/// allows; the last part carries END_STREAM if `ends`.
async fn send_frame(
    to: &mut SendStream<Bytes>,
    mut frame: Bytes,
    ends: bool,
    mut meter: Option<&mut Meter>,
) -> Result<(), PipeError> {
    if frame.is_empty() {
        // An empty DATA frame only matters for its END_STREAM.
        if ends {
            to.send_data(frame, true).map_err(PipeError::Sink)?;
        }
        return Ok(());
    }
    while !frame.is_empty() {
        to.reserve_capacity(frame.len());
        let capacity = loop {
            let capacity = to.capacity();
            if capacity > 0 {
                break capacity;
            }
            match std::future::poll_fn(|cx| to.poll_capacity(cx)).await {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(PipeError::Sink(e)),
                // No longer open for sending: it was reset.
                None => {
                    let reset = std::future::poll_fn(|cx| to.poll_reset(cx)).await;
                    return Err(PipeError::reset(reset));
                }
            }
        };
        let mut part_len = capacity.min(frame.len());
        let charge = match meter.as_deref_mut() {
            None => None,
            Some(meter) => {
                let charge = std::future::poll_fn(|cx| meter.poll_charge(cx, part_len)).await;
                // The budget never closes while the sidecar runs.
                let charge = charge
                    .ok_or_else(|| PipeError::Sink(h2::Error::from(Reason::INTERNAL_ERROR)))?;
                part_len = charge.bytes();
                Some(charge)
            }
        };
        let part = frame.split_to(part_len);
        let part = match charge {
            Some(charge) => charge.attach(part),
            None => part,
        };
        to.send_data(part, ends && frame.is_empty())
            .map_err(PipeError::Sink)?;
    }
    Ok(())
}

/// The head of the local answer to a denied request (and its body, if
/// any): a gRPC "trailers-only" response, or a 403.
fn denied(rule: &str, reason: &str, grpc: bool) -> (Response<()>, Option<String>) {
    let rule_value =
        HeaderValue::from_str(rule).unwrap_or_else(|_| HeaderValue::from_static("invalid"));
    if grpc {
        let message = HeaderValue::from_str(reason)
            .unwrap_or_else(|_| HeaderValue::from_static("permission denied"));
        let mut response = Response::new(());
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert("grpc-status", HeaderValue::from_static("7"));
        headers.insert("grpc-message", message);
        headers.insert(DENIED_BY_HEADER, rule_value);
        return (response, None);
    }
    local(
        StatusCode::FORBIDDEN,
        format!("appid: {reason}\n"),
        Some(rule_value),
    )
}

fn local(
    status: StatusCode,
    body: String,
    denied_by: Option<HeaderValue>,
) -> (Response<()>, Option<String>) {
    let mut response = Response::new(());
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Some(rule) = denied_by {
        headers.insert(DENIED_BY_HEADER, rule);
    }
    (response, Some(body))
}

/// The answer when the upstream could not take or answer a request.
fn bad_gateway(
    respond: &mut SendResponse<Bytes>,
    authorizer: &dyn RequestAuthorizer,
    started: Instant,
    error: &h2::Error,
) {
    tracing::debug!(%error, "upstream request failed");
    send_local(
        respond,
        StatusCode::BAD_GATEWAY,
        "upstream unavailable\n",
        None,
    );
    authorizer.observe(502, started.elapsed());
}

/// Sends a denial; returns the status it carried.
fn send_denied(respond: &mut SendResponse<Bytes>, rule: &str, reason: &str, grpc: bool) -> u16 {
    let (head, body) = denied(rule, reason, grpc);
    let status = head.status().as_u16();
    send(respond, head, body);
    status
}

fn send_local(
    respond: &mut SendResponse<Bytes>,
    status: StatusCode,
    body: &str,
    denied_by: Option<HeaderValue>,
) {
    let (head, body) = local(status, body.to_string(), denied_by);
    send(respond, head, body);
}

fn send(respond: &mut SendResponse<Bytes>, head: Response<()>, body: Option<String>) {
    match body {
        None => {
            let _ = respond.send_response(head, true);
        }
        Some(body) => {
            // Small, and the stream's initial window is far larger.
            if let Ok(mut stream) = respond.send_response(head, false) {
                let _ = stream.send_data(Bytes::from(body), true);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sidecar::http::{RequestFacts, RequestVerdict};
    use tokio::io::DuplexStream;
    use tokio::sync::mpsc;

    /// Every request is allowed (authorization is not what these test).
    struct AllowAll;

    impl RequestAuthorizer for AllowAll {
        fn authorize(&self, _request: &RequestFacts<'_>) -> RequestVerdict {
            RequestVerdict::Allow
        }
    }

    /// A request as the app got it, and its answer handle.
    type AppRequest = (Request<RecvStream>, SendResponse<Bytes>);

    /// Guards against a hang (a broken proxy never answers); never an
    /// assertion about speed.
    const HANG: Duration = Duration::from_secs(20);

    async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
        tokio::time::timeout(HANG, future)
            .await
            .unwrap_or_else(|_| panic!("still waiting after {HANG:?} for {what}"))
    }

    /// client ──h2── [`proxy`] ──h2── app, in memory: the client's request
    /// handle and the requests the app receives (its connection is driven
    /// in the background).
    async fn start() -> (
        h2::client::SendRequest<Bytes>,
        mpsc::UnboundedReceiver<AppRequest>,
    ) {
        let (client_io, downstream) = tokio::io::duplex(1 << 16);
        let (upstream, app_io) = tokio::io::duplex(1 << 16);
        let limits = HttpLimits {
            max_header_bytes: 16 * 1024,
            header_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(30),
            app: AppSide::Upstream,
        };
        tokio::spawn(proxy(
            downstream,
            upstream,
            Arc::new(AllowAll),
            None,
            limits,
            Shutdown::never(),
        ));
        let (requests, received) = mpsc::unbounded_channel();
        tokio::spawn(serve_app(app_io, requests));
        let (client, connection) = h2::client::handshake(client_io).await.expect("handshake");
        tokio::spawn(connection);
        (client, received)
    }

    async fn serve_app(io: DuplexStream, requests: mpsc::UnboundedSender<AppRequest>) {
        let Ok(mut connection) = h2::server::handshake(io).await else {
            return;
        };
        while let Some(Ok(request)) = connection.accept().await {
            let _ = requests.send(request);
        }
    }

    fn grpc_request() -> Request<()> {
        Request::post("http://app/appid.test.Grpc/Upload")
            .header(CONTENT_TYPE, "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap()
    }

    fn grpc_response() -> Response<()> {
        Response::builder()
            .header(CONTENT_TYPE, "application/grpc")
            .body(())
            .unwrap()
    }

    /// Reads a whole body, releasing its window as it goes.
    async fn read_body(body: &mut RecvStream) -> Result<Vec<u8>, h2::Error> {
        let mut all = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk?;
            let _ = body.flow_control().release_capacity(chunk.len());
            all.extend_from_slice(&chunk);
        }
        Ok(all)
    }

    /// The gRPC pattern that was CANCELLED: the server answers (head,
    /// DATA, trailers, then RST_STREAM(NO_ERROR) as h2 and gRPC servers
    /// do) after the first message while the client is still sending.
    #[tokio::test]
    async fn a_response_completed_before_the_request_reaches_the_client() {
        let (client, mut app) = start().await;
        let (response, mut upload) = client
            .ready()
            .await
            .unwrap()
            .send_request(grpc_request(), false)
            .unwrap();
        upload
            .send_data(Bytes::from_static(b"first"), false)
            .unwrap();

        let (request, mut respond) = within("the request at the app", app.recv()).await.unwrap();
        let mut received = request.into_body();
        let first = within("the first message", received.data())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&first[..], b"first");
        // More than the client's window (64 KiB): the proxy must still be
        // handing the response on when the client's next DATA arrives.
        let answer = Bytes::from(vec![7u8; 256 * 1024]);
        let mut answering = respond.send_response(grpc_response(), false).unwrap();
        answering.send_data(answer.clone(), false).unwrap();
        let mut status = http::HeaderMap::new();
        status.insert("grpc-status", HeaderValue::from_static("0"));
        answering.send_trailers(status).unwrap();
        // Done with the stream: h2 sends RST_STREAM(NO_ERROR) after the
        // response (the request is still open).
        drop((received, respond, answering));

        let response = within("the response head", response).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        // The client goes on sending; whether the proxy still takes it
        // does not matter, the response must not suffer.
        for _ in 0..16 {
            if upload
                .send_data(Bytes::from(vec![1u8; 1024]), false)
                .is_err()
            {
                break;
            }
        }
        let mut body = response.into_body();
        let got = within("the response body", read_body(&mut body))
            .await
            .expect("the whole response body, no reset");
        assert_eq!(got.len(), answer.len());
        let trailers = within("the trailers", body.trailers())
            .await
            .expect("trailers, no reset")
            .expect("trailers");
        assert_eq!(trailers["grpc-status"], "0");
    }

    /// An app that answers an upload without reading it: the client gets
    /// the answer (not a reset, not a 502), and the app gets
    /// RST_STREAM(NO_ERROR) for the rest of the request (RFC 9113 §8.1).
    /// Some rounds the app keeps its side open, some it drops it at once
    /// (then h2 resets with NO_ERROR itself, racing the response).
    #[tokio::test]
    async fn an_app_that_does_not_read_the_body_still_answers() {
        let (client, mut app) = start().await;
        for round in 0..10 {
            let app_keeps_the_stream = round % 2 == 0;
            let (response, upload) = client
                .clone()
                .ready()
                .await
                .unwrap()
                .send_request(Request::post("http://app/upload").body(()).unwrap(), false)
                .unwrap();
            tokio::spawn(upload_forever(upload));

            let (request, mut respond) =
                within("the request at the app", app.recv()).await.unwrap();
            let mut answering = respond
                .send_response(Response::builder().status(413).body(()).unwrap(), false)
                .unwrap();
            answering
                .send_data(Bytes::from_static(b"too large"), true)
                .unwrap();
            if app_keeps_the_stream {
                let reason = within(
                    "the proxy's reset of the request",
                    std::future::poll_fn(|cx| respond.poll_reset(cx)),
                )
                .await
                .expect("a reset");
                assert_eq!(reason, Reason::NO_ERROR, "round {round}");
            }
            drop((request, respond, answering));

            let response = within("the response head", response).await.unwrap();
            assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
            let mut body = response.into_body();
            let got = within("the response body", read_body(&mut body))
                .await
                .unwrap_or_else(|e| panic!("round {round}: the response was reset: {e}"));
            assert_eq!(got, b"too large", "round {round}");
        }
    }

    /// Sends DATA as fast as the windows allow until the stream is closed.
    async fn upload_forever(mut upload: SendStream<Bytes>) {
        loop {
            upload.reserve_capacity(64 * 1024);
            match std::future::poll_fn(|cx| upload.poll_capacity(cx)).await {
                Some(Ok(n)) if n > 0 => {
                    if upload.send_data(Bytes::from(vec![0u8; n]), false).is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                _ => return,
            }
        }
    }

    /// A client's RST_STREAM reaches the app at once: while the app has
    /// not answered yet, and while it streams its response.
    #[tokio::test]
    async fn a_client_reset_reaches_the_app() {
        let (client, mut app) = start().await;

        // Before the response head (the request itself is complete).
        let (_response, mut stream) = client
            .clone()
            .ready()
            .await
            .unwrap()
            .send_request(grpc_request(), false)
            .unwrap();
        stream.send_data(Bytes::from_static(b"call"), true).unwrap();
        let (_request, mut respond) = within("the request at the app", app.recv()).await.unwrap();
        stream.send_reset(Reason::CANCEL);
        let reason = within(
            "the reset at the app",
            std::future::poll_fn(|cx| respond.poll_reset(cx)),
        )
        .await
        .expect("a reset");
        assert_eq!(reason, Reason::CANCEL);

        // While the response streams (a server-streaming call).
        let (response, mut stream) = client
            .ready()
            .await
            .unwrap()
            .send_request(grpc_request(), false)
            .unwrap();
        stream.send_data(Bytes::from_static(b"call"), true).unwrap();
        let (_request, mut respond) = within("the request at the app", app.recv()).await.unwrap();
        let mut answering = respond.send_response(grpc_response(), false).unwrap();
        answering
            .send_data(Bytes::from_static(b"message 1"), false)
            .unwrap();
        let mut body = within("the response head", response)
            .await
            .unwrap()
            .into_body();
        within("the first message", body.data())
            .await
            .unwrap()
            .unwrap();
        stream.send_reset(Reason::CANCEL);
        let reason = within(
            "the reset at the app",
            std::future::poll_fn(|cx| answering.poll_reset(cx)),
        )
        .await
        .expect("a reset");
        assert_eq!(reason, Reason::CANCEL);
    }

    /// The app resetting a stream it took is passed on as that reset (the
    /// app may have acted: a 502 would invite a retry); only a stream it
    /// refused unprocessed is a 502.
    #[tokio::test]
    async fn an_app_reset_is_passed_on_and_only_a_refusal_is_a_502() {
        let (client, mut app) = start().await;
        for (reset, expected) in [
            (Reason::CANCEL, Err(Reason::CANCEL)),
            (Reason::INTERNAL_ERROR, Err(Reason::INTERNAL_ERROR)),
            (Reason::REFUSED_STREAM, Ok(StatusCode::BAD_GATEWAY)),
        ] {
            let (response, mut stream) = client
                .clone()
                .ready()
                .await
                .unwrap()
                .send_request(grpc_request(), false)
                .unwrap();
            stream.send_data(Bytes::from_static(b"call"), true).unwrap();
            let (_request, mut respond) =
                within("the request at the app", app.recv()).await.unwrap();
            respond.send_reset(reset);
            let got = within("the answer", response)
                .await
                .map(|response| response.status())
                .map_err(|e| e.reason().expect("a reset"));
            assert_eq!(got, expected, "the app reset with {reset:?}");
        }
    }

    #[test]
    fn strips_only_appid_headers() {
        let mut headers = http::HeaderMap::new();
        headers.insert("x-appid-peer-id", HeaderValue::from_static("spoofed"));
        headers.insert("x_appid_peer_id", HeaderValue::from_static("spoofed"));
        headers.insert("x-appid-anything", HeaderValue::from_static("spoofed"));
        headers.insert("x-other", HeaderValue::from_static("kept"));
        strip_appid_headers(&mut headers);
        assert_eq!(headers.len(), 1);
        assert_eq!(headers["x-other"], "kept");
    }

    #[test]
    fn denials_name_the_rule() {
        let (plain, body) = denied("no-admin", "path /admin", false);
        assert_eq!(plain.status(), StatusCode::FORBIDDEN);
        assert_eq!(plain.headers()[DENIED_BY_HEADER], "no-admin");
        assert_eq!(body.as_deref(), Some("appid: path /admin\n"));
        let (grpc, body) = denied("default", "no rule matched", true);
        assert_eq!(grpc.status(), StatusCode::OK);
        assert_eq!(grpc.headers()["grpc-status"], "7");
        assert_eq!(grpc.headers()[DENIED_BY_HEADER], "default");
        assert_eq!(body, None, "trailers-only");
    }

    /// A response to HEAD is its head, even from an app that sends content
    /// anyway (which h2 calls malformed).
    #[tokio::test]
    async fn a_head_response_ends_with_its_head() {
        let (client, mut app) = start().await;
        let (response, _stream) = client
            .ready()
            .await
            .unwrap()
            .send_request(Request::head("http://app/x").body(()).unwrap(), true)
            .unwrap();
        let (_request, mut respond) = within("the request at the app", app.recv()).await.unwrap();
        let head = Response::builder()
            .header("content-length", "4")
            .body(())
            .unwrap();
        let mut answering = respond.send_response(head, false).unwrap();
        answering
            .send_data(Bytes::from_static(b"body"), true)
            .unwrap();
        let response = within("the response head", response)
            .await
            .expect("the head, not a reset");
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.body().is_end_stream());
    }
}
