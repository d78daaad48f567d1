//! The exchange promises of the module docs, with h2-crate peers on both
//! sides (a client and an app that behave as real ones do).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Request, Response, StatusCode};
use tokio::io::DuplexStream;
use tokio::sync::mpsc;

use super::proxy;
use crate::sidecar::http::{
    AppSide, HttpLimits, RequestAuthorizer, RequestFacts, RequestVerdict, Shutdown,
};

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

        let (request, mut respond) = within("the request at the app", app.recv()).await.unwrap();
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
        let (_request, mut respond) = within("the request at the app", app.recv()).await.unwrap();
        respond.send_reset(reset);
        let got = within("the answer", response)
            .await
            .map(|response| response.status())
            .map_err(|e| e.reason().expect("a reset"));
        assert_eq!(got, expected, "the app reset with {reset:?}");
    }
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
