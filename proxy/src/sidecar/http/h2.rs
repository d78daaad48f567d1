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
//! Nothing is dialled before a request is allowed: the upstream connection
//! (and its HTTP/2 handshake) is made for the first allowed request. A
//! connection that has carried no stream for the idle timeout gets a GOAWAY,
//! and is closed if it has not finished within the drain timeout.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};

use super::flood::FrameBudget;
use crate::sidecar::tunnel::StreamCount;

use super::{
    AppSide, DENIED_BY_HEADER, HeaderMapView, HttpLimits, HttpProxyError, PEER_CLAIMS_HEADER,
    PEER_ID_HEADER, PeerHeaders, RequestAuthorizer, RequestDecision, authorize_request,
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
    shutdown: impl Future<Output = ()>,
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
    let streams = StreamCount::new();
    let idle = streams.idle(limits.header_timeout);
    // Armed at GOAWAY: a client that never finishes loses the connection.
    let drained = tokio::time::sleep(Duration::MAX);
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
                    let stream = streams.open();
                    tokio::spawn(async move {
                        forward(request, respond, &upstream, &*authorizer, &peer_headers, limits.app).await;
                        drop(stream);
                    });
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

/// One request: authorize, send upstream, pass the response back.
async fn forward(
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    upstream: &Upstream,
    authorizer: &dyn RequestAuthorizer,
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
    let sent = match client.ready().await {
        Ok(mut client) => client.send_request(Request::from_parts(parts, ()), request_ends),
        Err(e) => Err(e),
    };
    let (response, upstream_body) = match sent {
        Ok(pair) => pair,
        Err(e) => {
            bad_gateway(&mut respond, authorizer, started, &e);
            return;
        }
    };

    let request_body = pipe(body, upstream_body, Trailers::Refuse);
    let response = async {
        let response = match response.await {
            Ok(response) => response,
            Err(e) => {
                bad_gateway(&mut respond, authorizer, started, &e);
                return Err(e);
            }
        };
        authorizer.observe(response.status().as_u16(), started.elapsed());
        let (mut parts, body) = response.into_parts();
        let trailers = match app {
            // The app's response: x-appid-* is not its to set.
            AppSide::Upstream => {
                strip_appid_headers(&mut parts.headers);
                Trailers::StripAppid
            }
            AppSide::Downstream => Trailers::Pass,
        };
        let ends = body.is_end_stream();
        let downstream_body = respond.send_response(Response::from_parts(parts, ()), ends)?;
        if !ends {
            pipe(body, downstream_body, trailers).await?;
        }
        Ok::<(), h2::Error>(())
    };
    tokio::pin!(request_body, response);
    let mut request_done = request_ends;
    loop {
        tokio::select! {
            sent = &mut request_body, if !request_done => {
                request_done = true;
                if let Err(e) = sent {
                    // The client reset or broke its stream: returning drops
                    // the upstream stream too (RST_STREAM).
                    tracing::debug!(error = %e, "request body not forwarded");
                    return;
                }
            }
            answered = &mut response => {
                if let Err(e) = answered {
                    tracing::debug!(error = %e, "response not forwarded");
                }
                return;
            }
        }
    }
}

/// What [`pipe`] does with trailers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trailers {
    /// Pass them on (responses from a peer sidecar).
    Pass,
    /// Pass them on without `x-appid-*` (responses from the local app).
    StripAppid,
    /// Reset both streams (requests: trailers could carry headers past the
    /// authorizer, and gRPC requests never have any).
    Refuse,
}

/// Passes DATA frames and trailers from `from` to `to`, handing each
/// frame's window back to the sender once `to` has taken it.
async fn pipe(
    mut from: RecvStream,
    mut to: SendStream<Bytes>,
    trailers: Trailers,
) -> Result<(), h2::Error> {
    if from.is_end_stream() {
        return Ok(());
    }
    while let Some(frame) = from.data().await {
        let mut frame = frame?;
        let taken = frame.len();
        while !frame.is_empty() {
            to.reserve_capacity(frame.len());
            let capacity = loop {
                let capacity = to.capacity();
                if capacity > 0 {
                    break capacity;
                }
                match std::future::poll_fn(|cx| to.poll_capacity(cx)).await {
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e),
                    None => return Err(h2::Error::from(h2::Reason::CANCEL)),
                }
            };
            let part = frame.split_to(capacity.min(frame.len()));
            to.send_data(part, false)?;
        }
        let _ = from.flow_control().release_capacity(taken);
    }
    match (from.trailers().await?, trailers) {
        (None, _) => to.send_data(Bytes::new(), true),
        (Some(_), Trailers::Refuse) => {
            tracing::debug!("request trailers refused: stream reset");
            to.send_reset(h2::Reason::PROTOCOL_ERROR);
            Err(h2::Error::from(h2::Reason::PROTOCOL_ERROR))
        }
        (Some(mut fields), Trailers::StripAppid) => {
            strip_appid_headers(&mut fields);
            to.send_trailers(fields)
        }
        (Some(fields), Trailers::Pass) => to.send_trailers(fields),
    }
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
}
