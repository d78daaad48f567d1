//! The relay's frame-level promises, checked with raw HTTP/2 on both sides
//! (the h2 crate's client cannot pad, interleave or skip; its server
//! cannot be told which GOAWAY to send).

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use h2::Reason;
use h2::frame::{Headers, Pseudo, StreamId};
use http::{HeaderMap, Method, StatusCode, Uri};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::task::JoinHandle;

use super::frame::{self, Head};
use super::hpack::{Decoded, HeaderBlocks};
use crate::sidecar::clock::Stamp;
use crate::sidecar::http::{
    AppSide, AuditRecorder, HttpLimits, HttpProxyError, Malformed, Refusal, RequestAuthorizer,
    RequestFacts, RequestVerdict, Shutdown,
};

/// Denies `/admin…`, allows the rest; keeps what it was asked to audit
/// ([`AuditRecorder`]).
#[derive(Default)]
struct NoAdmin {
    audited: AuditRecorder,
    /// When each request it decided arrived, in order.
    arrived: std::sync::Mutex<Vec<Stamp>>,
}

impl NoAdmin {
    fn audited(&self) -> Vec<String> {
        self.audited.lines()
    }
}

impl RequestAuthorizer for NoAdmin {
    fn refused(&self, method: &str, target: &str, refusal: Refusal, _grpc: bool) {
        self.audited.refused(method, target, refusal);
    }

    fn malformed(&self, why: Malformed) {
        self.audited.malformed(why);
    }

    fn authorize(&self, request: &RequestFacts<'_>) -> RequestVerdict {
        self.arrived.lock().unwrap().push(request.arrived);
        if request.path.starts_with("/admin") {
            RequestVerdict::Deny {
                rule: "no-admin".into(),
                reason: "path /admin".into(),
            }
        } else {
            RequestVerdict::Allow
        }
    }
}

/// Guards against a hang; never an assertion about speed.
const HANG: Duration = Duration::from_secs(20);

/// One end of a raw HTTP/2 connection.
struct Peer {
    io: DuplexStream,
    input: BytesMut,
    blocks: HeaderBlocks,
}

/// A frame as read, its header block decoded.
#[derive(Debug)]
struct Got {
    head: Head,
    payload: Bytes,
    block: Option<(Pseudo, HeaderMap)>,
}

impl Peer {
    fn new(io: DuplexStream) -> Peer {
        Peer {
            io,
            input: BytesMut::new(),
            blocks: HeaderBlocks::new(64 * 1024),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.expect("write");
    }

    async fn send_head(&mut self, stream: u32, pseudo: Pseudo, end: bool) {
        let mut out = BytesMut::new();
        self.encode_head(stream, pseudo, end, &mut out);
        self.send(&out).await;
    }

    fn encode_head(&mut self, stream: u32, pseudo: Pseudo, end: bool, out: &mut BytesMut) {
        let mut head = Headers::new(StreamId::from(stream), pseudo, HeaderMap::new());
        if end {
            head.set_end_stream();
        }
        self.blocks.encode(head, out);
    }

    async fn request(&mut self, stream: u32, method: Method, path: &str, end: bool) {
        let mut out = BytesMut::new();
        self.encode_request(stream, method, path, end, &mut out);
        self.send(&out).await;
    }

    fn encode_request(
        &mut self,
        stream: u32,
        method: Method,
        path: &str,
        end: bool,
        out: &mut BytesMut,
    ) {
        let uri: Uri = format!("http://api.test{path}").parse().unwrap();
        self.encode_head(stream, Pseudo::request(method, uri, None), end, out);
    }

    /// The next frame; `None` at the end of the connection.
    async fn frame(&mut self) -> Option<Got> {
        loop {
            if let Some(head) = Head::parse(&self.input)
                && self.input.len() >= frame::HEADER_LEN + head.len
            {
                let bytes = self.input.split_to(frame::HEADER_LEN + head.len).freeze();
                let block = if matches!(head.kind, frame::HEADERS | frame::CONTINUATION) {
                    match self.blocks.decode(&bytes) {
                        Ok(Decoded::Block(block)) => Some(block.fields.to_h2()),
                        _ => None,
                    }
                } else {
                    None
                };
                return Some(Got {
                    head,
                    payload: bytes.slice(frame::HEADER_LEN..),
                    block,
                });
            }
            let read = tokio::time::timeout(HANG, self.io.read_buf(&mut self.input))
                .await
                .expect("a frame in time");
            if read.expect("read") == 0 {
                return None;
            }
        }
    }

    /// Frames up to and including the first that `stop` picks.
    async fn until(&mut self, what: &str, stop: impl Fn(&Got) -> bool) -> Vec<Got> {
        let mut seen = Vec::new();
        loop {
            let Some(got) = self.frame().await else {
                panic!("connection closed before {what}; saw {seen:?}");
            };
            let done = stop(&got);
            seen.push(got);
            if done {
                return seen;
            }
        }
    }
}

impl Peer {
    /// Frames up to the GOAWAY, and its error code.
    async fn go_away(&mut self) -> (Vec<Got>, Reason) {
        let seen = self.until("GOAWAY", |g| g.head.kind == frame::GOAWAY).await;
        let reason = go_away_reason(seen.last().unwrap());
        (seen, reason)
    }

    /// A hand-written header block, whole, as one HEADERS frame that also
    /// ends the stream.
    async fn send_block(&mut self, stream: u32, block: &[u8]) {
        let mut out = BytesMut::new();
        let flags = frame::END_HEADERS | frame::END_STREAM;
        frame::put_head(&mut out, block.len(), frame::HEADERS, flags, stream);
        out.extend_from_slice(block);
        self.send(&out).await;
    }

    /// Frames up to the `n`th RST_STREAM: the resets as (stream, reason),
    /// and every frame seen on the way.
    async fn resets(&mut self, n: usize) -> (Vec<(u32, Reason)>, Vec<Got>) {
        let mut resets = Vec::new();
        let mut seen = Vec::new();
        while resets.len() < n {
            let got = self.frame().await.expect("the resets");
            if got.head.kind == frame::RST_STREAM {
                resets.push((got.head.stream, reset_reason(&got)));
            }
            seen.push(got);
        }
        (resets, seen)
    }
}

/// A GET request's header block written by hand (so it can say what
/// encoders refuse to): `:method GET`, `:scheme http`, `:authority a.test`,
/// `:path` (`/` when `None`), then `fields` as literals with new names.
fn get_block(path: Option<&[u8]>, fields: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut block = vec![0x82, 0x86, 0x01, 6];
    block.extend_from_slice(b"a.test");
    match path {
        None => block.push(0x84),
        Some(path) => {
            // A literal without indexing, name `:path` (static entry 4).
            block.extend_from_slice(&[0x04, path.len() as u8]);
            block.extend_from_slice(path);
        }
    }
    for (name, value) in fields {
        block.extend_from_slice(&[0x00, name.len() as u8]);
        block.extend_from_slice(name);
        block.push(value.len() as u8);
        block.extend_from_slice(value);
    }
    block
}

/// client ──raw── relay ──raw── app. The client has sent its preface and
/// SETTINGS; the app side is connected but silent until it reads.
fn start() -> (Peer, Peer) {
    let (client, app, _) = start_audited();
    (client, app)
}

/// [`start`], with the authorizer (what it audited).
fn start_audited() -> (Peer, Peer, Arc<NoAdmin>) {
    let (client, app, authorizer, _) = start_relay();
    (client, app, authorizer)
}

/// [`start`], with how the relay ended (the error the sidecar audits a
/// connection's closure by).
fn start_ending() -> (Peer, Peer, JoinHandle<Result<(), HttpProxyError>>) {
    let (client, app, _, ended) = start_relay();
    (client, app, ended)
}

fn start_relay() -> (
    Peer,
    Peer,
    Arc<NoAdmin>,
    JoinHandle<Result<(), HttpProxyError>>,
) {
    let authorizer = Arc::new(NoAdmin::default());
    let (client, downstream) = tokio::io::duplex(1 << 20);
    let (upstream, app) = tokio::io::duplex(1 << 20);
    let limits = HttpLimits {
        max_header_bytes: 16 * 1024,
        header_timeout: Duration::from_secs(30),
        drain_timeout: Duration::from_secs(30),
        app: AppSide::Upstream,
    };
    let ended = tokio::spawn(super::proxy(
        downstream,
        upstream,
        authorizer.clone(),
        None,
        limits,
        Shutdown::never(),
    ));
    (Peer::new(client), Peer::new(app), authorizer, ended)
}

/// How the relay ended, once the client has read its GOAWAY and closed.
async fn ended(client: Peer, ended: JoinHandle<Result<(), HttpProxyError>>) -> HttpProxyError {
    drop(client);
    let result = tokio::time::timeout(Duration::from_secs(5), ended)
        .await
        .expect("the relay ends once the client is gone")
        .expect("the relay does not panic");
    result.expect_err("a connection error")
}

async fn client_preface(client: &mut Peer) {
    let mut out = BytesMut::from(&frame::PREFACE[..]);
    frame::put_settings(&mut out, &[]);
    client.send(&out).await;
}

/// The app reads the relay's preface and SETTINGS and answers with its own.
async fn app_handshake(app: &mut Peer) {
    let mut preface = [0u8; 24];
    app.io.read_exact(&mut preface).await.unwrap();
    assert_eq!(&preface, frame::PREFACE);
    app.until("the relay's SETTINGS", |g| g.head.kind == frame::SETTINGS)
        .await;
    let mut out = BytesMut::new();
    frame::put_settings(&mut out, &[]);
    frame::put_settings_ack(&mut out);
    app.send(&out).await;
}

fn is_headers_on(stream: u32) -> impl Fn(&Got) -> bool {
    move |g| g.head.kind == frame::HEADERS && g.head.stream == stream
}

fn status(got: &Got) -> Option<StatusCode> {
    got.block.as_ref().and_then(|(pseudo, _)| pseudo.status)
}

fn window_updates(frames: &[Got], stream: u32) -> u32 {
    frames
        .iter()
        .filter(|g| g.head.kind == frame::WINDOW_UPDATE && g.head.stream == stream)
        .map(|g| frame::parse_u32(&g.payload).unwrap())
        .sum()
}

/// A denied request's body never reaches the app, and the client's
/// connection window it used comes back; the app sees the next allowed
/// stream with the denied one's ID skipped.
#[tokio::test]
async fn a_denied_stream_gives_back_its_window_and_its_id_is_skipped() {
    let (mut client, mut app) = start();
    client_preface(&mut client).await;
    client.request(1, Method::POST, "/admin/x", false).await;
    let mut body = BytesMut::new();
    for _ in 0..3 {
        frame::put_data(&mut body, 1, &[b'x'; 16_384], false);
    }
    client.send(&body).await;
    let seen = client
        .until("the refund", |g| {
            g.head.kind == frame::WINDOW_UPDATE && g.head.stream == 0
        })
        .await;
    let answer = seen.iter().find(|g| is_headers_on(1)(g)).expect("403");
    assert_eq!(status(answer), Some(StatusCode::FORBIDDEN));
    let (_, fields) = answer.block.as_ref().unwrap();
    assert_eq!(fields["x-appid-denied-by"], "no-admin");
    let mut refunded = window_updates(&seen, 0);
    while refunded < 3 * 16_384 {
        let got = client.frame().await.expect("more refunds");
        refunded += window_updates(std::slice::from_ref(&got), 0);
    }
    assert_eq!(refunded, 3 * 16_384);

    client.request(3, Method::GET, "/ok", true).await;
    app_handshake(&mut app).await;
    let at_app = app.until("the allowed request", is_headers_on(3)).await;
    assert!(
        !at_app
            .iter()
            .any(|g| g.head.stream == 1 || g.head.kind == frame::DATA),
        "the denied stream reached the app: {at_app:?}"
    );
    let (pseudo, _) = at_app.last().unwrap().block.as_ref().unwrap();
    assert_eq!(pseudo.path.as_deref(), Some("/ok"));
    app.send_head(3, Pseudo::response(StatusCode::OK), true)
        .await;
    let seen = client.until("the answer", is_headers_on(3)).await;
    assert_eq!(status(seen.last().unwrap()), Some(StatusCode::OK));
}

/// Padding is the relay's to remove, and the window it used is handed back
/// at once (the app only acknowledges what it got).
#[tokio::test]
async fn padded_data_reaches_the_app_unpadded_and_its_padding_is_refunded() {
    let (mut client, mut app) = start();
    client_preface(&mut client).await;
    client.request(1, Method::POST, "/upload", false).await;
    let mut padded = BytesMut::new();
    frame::put_head(&mut padded, 1 + 5 + 10, frame::DATA, frame::PADDED, 1);
    padded.extend_from_slice(&[10]);
    padded.extend_from_slice(b"hello");
    padded.extend_from_slice(&[0; 10]);
    frame::put_data(&mut padded, 1, b"", true);
    client.send(&padded).await;
    app_handshake(&mut app).await;
    let at_app = app
        .until("the body's end", |g| {
            g.head.kind == frame::DATA && g.head.has(frame::END_STREAM)
        })
        .await;
    let data: Vec<u8> = at_app
        .iter()
        .filter(|g| g.head.kind == frame::DATA)
        .flat_map(|g| g.payload.to_vec())
        .collect();
    assert_eq!(data, b"hello");
    assert!(
        at_app
            .iter()
            .all(|g| g.head.kind != frame::DATA || !g.head.has(frame::PADDED))
    );
    let seen = client
        .until("the padding's refund", |g| {
            g.head.kind == frame::WINDOW_UPDATE && g.head.stream == 0
        })
        .await;
    assert_eq!(window_updates(&seen, 0), 11);
}

/// A header block must be followed by its CONTINUATIONs and nothing else
/// (RFC 9113 §6.10): anything between is a connection error.
#[tokio::test]
async fn a_frame_inside_a_header_block_ends_the_connection() {
    let (mut client, _app) = start();
    client_preface(&mut client).await;
    let mut out = BytesMut::new();
    // HEADERS without END_HEADERS (`:method GET`, static index 2), then a PING.
    frame::put_head(&mut out, 1, frame::HEADERS, 0, 1);
    out.extend_from_slice(&[0x82]);
    frame::put_head(&mut out, 8, frame::PING, 0, 0);
    out.extend_from_slice(&[0; 8]);
    client.send(&out).await;
    assert_eq!(client.go_away().await.1, Reason::PROTOCOL_ERROR);
}

/// The client's SETTINGS reach the app (after the dial) and the app's ACK
/// reaches the client; the relay's own SETTINGS are acknowledged by it.
#[tokio::test]
async fn settings_and_their_acks_pass_through_in_order() {
    let (mut client, mut app) = start();
    client_preface(&mut client).await;
    // Before the app is dialled, the relay acknowledges.
    client
        .until("the ACK of the first SETTINGS", |g| {
            g.head.kind == frame::SETTINGS && g.head.has(frame::ACK)
        })
        .await;
    client.request(1, Method::GET, "/ok", false).await;
    app_handshake(&mut app).await;
    app.until("the request", is_headers_on(1)).await;
    let mut out = BytesMut::new();
    frame::put_settings(&mut out, &[(frame::INITIAL_WINDOW_SIZE, 1000)]);
    client.send(&out).await;
    let at_app = app
        .until("the client's SETTINGS", |g| {
            g.head.kind == frame::SETTINGS && !g.head.has(frame::ACK)
        })
        .await;
    let settings = frame::parse_settings(&at_app.last().unwrap().payload).unwrap();
    assert_eq!(settings, vec![(frame::INITIAL_WINDOW_SIZE, 1000)]);
    let mut ack = BytesMut::new();
    frame::put_settings_ack(&mut ack);
    app.send(&ack).await;
    // The app's own (empty) SETTINGS came first; then the ACK is the app's.
    client
        .until("the app's ACK", |g| {
            g.head.kind == frame::SETTINGS && g.head.has(frame::ACK)
        })
        .await;
}

/// The app's GOAWAY: what it never processed is answered `502` (safe to
/// retry), what it did still gets its answer, and the client is told.
#[tokio::test]
async fn the_apps_goaway_answers_what_it_never_processed_with_502() {
    let (mut client, mut app) = start();
    client_preface(&mut client).await;
    client.request(1, Method::GET, "/one", true).await;
    client.request(3, Method::GET, "/two", true).await;
    app_handshake(&mut app).await;
    app.until("the second request", is_headers_on(3)).await;
    let mut out = BytesMut::new();
    frame::put_go_away(&mut out, 1, Reason::NO_ERROR);
    app.send(&out).await;
    let seen = client
        .until("the GOAWAY", |g| g.head.kind == frame::GOAWAY)
        .await;
    let bad_gateway = seen.iter().find(|g| is_headers_on(3)(g)).expect("a 502");
    assert_eq!(status(bad_gateway), Some(StatusCode::BAD_GATEWAY));
    app.send_head(1, Pseudo::response(StatusCode::OK), true)
        .await;
    let seen = client.until("the answer", is_headers_on(1)).await;
    assert_eq!(status(seen.last().unwrap()), Some(StatusCode::OK));
    // Nothing is left open: the connection ends.
    while client.frame().await.is_some() {}
}

/// Request trailers never reach the app: both sides of the stream reset.
#[tokio::test]
async fn request_trailers_reset_the_stream_on_both_sides() {
    let (mut client, mut app, authorizer) = start_audited();
    client_preface(&mut client).await;
    client.request(1, Method::POST, "/upload", false).await;
    app_handshake(&mut app).await;
    app.until("the request", is_headers_on(1)).await;
    client.send_head(1, Pseudo::default(), true).await;
    let at_app = app
        .until("a reset", |g| g.head.kind == frame::RST_STREAM)
        .await;
    assert!(
        !at_app.iter().any(|g| g.head.kind == frame::HEADERS),
        "trailers reached the app"
    );
    let seen = client
        .until("a reset", |g| g.head.kind == frame::RST_STREAM)
        .await;
    let reason = frame::parse_u32(&seen.last().unwrap().payload).unwrap();
    assert_eq!(Reason::from(reason), Reason::PROTOCOL_ERROR);
    assert_eq!(authorizer.audited(), ["malformed: request trailers"]);
}

/// SETTINGS before the app is dialled are acknowledged by the relay and
/// only their last window is kept: however many a client sends, the app's
/// preface carries one small SETTINGS frame.
#[tokio::test]
async fn settings_before_the_dial_keep_only_their_last_window() {
    let (mut client, mut app) = start();
    client_preface(&mut client).await;
    let entries: Vec<(u16, u32)> = (0..2_000)
        .map(|i| (frame::INITIAL_WINDOW_SIZE, 1_000 + i))
        .collect();
    let mut out = BytesMut::new();
    for _ in 0..50 {
        frame::put_settings(&mut out, &entries);
    }
    client.send(&out).await;
    let mut acks = 0;
    while acks < 51 {
        let got = client.frame().await.expect("the ACKs");
        if got.head.kind == frame::SETTINGS && got.head.has(frame::ACK) {
            acks += 1;
        }
    }
    client.request(1, Method::GET, "/ok", true).await;
    let mut preface = [0u8; 24];
    app.io.read_exact(&mut preface).await.unwrap();
    let seen = app
        .until("the relay's SETTINGS", |g| g.head.kind == frame::SETTINGS)
        .await;
    let settings = frame::parse_settings(&seen.last().unwrap().payload).unwrap();
    assert_eq!(settings.len(), 3, "{settings:?}");
    assert_eq!(settings[2], (frame::INITIAL_WINDOW_SIZE, 2_999));
}

/// A response head over the header list limit is not passed on cut short:
/// the stream is reset on both sides.
#[tokio::test]
async fn an_app_header_list_over_the_limit_resets_the_stream() {
    let (mut client, mut app) = start();
    client_preface(&mut client).await;
    client.request(1, Method::GET, "/ok", true).await;
    app_handshake(&mut app).await;
    app.until("the request", is_headers_on(1)).await;
    let mut fields = HeaderMap::new();
    fields.insert("x-big", "v".repeat(20_000).parse().unwrap());
    let mut head = Headers::new(StreamId::from(1), Pseudo::response(StatusCode::OK), fields);
    head.set_end_stream();
    let mut out = BytesMut::new();
    app.blocks.encode(head, &mut out);
    app.send(&out).await;
    let seen = client
        .until("a reset", |g| g.head.kind == frame::RST_STREAM)
        .await;
    assert!(
        !seen.iter().any(|g| g.head.kind == frame::HEADERS),
        "a cut head reached the client: {seen:?}"
    );
}

/// Even stream IDs are the server's: the client's frames on one are a
/// connection error, however low the ID.
#[tokio::test]
async fn a_client_frame_on_an_even_stream_ends_the_connection() {
    let (mut client, _app) = start();
    client_preface(&mut client).await;
    client.request(3, Method::GET, "/admin", true).await;
    let mut out = BytesMut::new();
    frame::put_window_update(&mut out, 2, 100);
    client.send(&out).await;
    assert_eq!(client.go_away().await.1, Reason::PROTOCOL_ERROR);
}

/// A response head with request pseudo-fields is malformed: not passed on.
#[tokio::test]
async fn a_response_with_request_pseudo_fields_resets_the_stream() {
    let (mut client, mut app) = start();
    client_preface(&mut client).await;
    client.request(1, Method::GET, "/ok", true).await;
    app_handshake(&mut app).await;
    app.until("the request", is_headers_on(1)).await;
    let mut pseudo = Pseudo::response(StatusCode::OK);
    pseudo.path = Pseudo::request(Method::GET, "/x".parse().unwrap(), None).path;
    app.send_head(1, pseudo, true).await;
    let seen = client
        .until("a reset", |g| g.head.kind == frame::RST_STREAM)
        .await;
    assert!(
        !seen
            .iter()
            .any(|g| g.head.kind == frame::HEADERS && g.head.stream == 1)
    );
}

fn go_away_reason(got: &Got) -> Reason {
    Reason::from(frame::parse_u32(&got.payload[4..8]).unwrap())
}

/// Until the app's SETTINGS say how many streams it takes, the relay
/// forwards at most 100 (RFC 9113 §6.5.2's recommended floor); beyond that,
/// a stream is refused (safe to retry), and once the app has spoken its own
/// limit (or ours) counts.
#[tokio::test]
async fn before_the_apps_settings_at_most_100_streams_are_forwarded() {
    let (mut client, mut app) = start();
    client_preface(&mut client).await;
    for i in 0..101 {
        client.request(2 * i + 1, Method::GET, "/ok", true).await;
    }
    let seen = client
        .until("a refusal", |g| g.head.kind == frame::RST_STREAM)
        .await;
    let refused = seen.last().unwrap();
    assert_eq!(refused.head.stream, 201, "the 101st stream is refused");
    assert_eq!(
        Reason::from(frame::parse_u32(&refused.payload).unwrap()),
        Reason::REFUSED_STREAM
    );
    app_handshake(&mut app).await;
    let at_app = app.until("the 100th request", is_headers_on(199)).await;
    let heads = at_app
        .iter()
        .filter(|g| g.head.kind == frame::HEADERS)
        .count();
    assert_eq!(heads, 100);
    // The app named no limit: ours (256) counts once its SETTINGS are read
    // (the relay passes them on).
    client
        .until("the app's SETTINGS", |g| {
            g.head.kind == frame::SETTINGS && !g.head.has(frame::ACK)
        })
        .await;
    client.request(203, Method::GET, "/ok", true).await;
    app.until("the request after the app's SETTINGS", is_headers_on(203))
        .await;
}

/// A client that sends SETTINGS faster than the app acknowledges them
/// would grow the relay's queue of owed ACKs: past 16, a connection error.
#[tokio::test]
async fn a_client_over_16_unacknowledged_settings_ends_the_connection() {
    let (mut client, mut app) = start();
    client_preface(&mut client).await;
    client.request(1, Method::GET, "/ok", false).await;
    // The app reads, sends its SETTINGS, and never acknowledges one.
    let mut preface = [0u8; 24];
    app.io.read_exact(&mut preface).await.unwrap();
    let mut out = BytesMut::new();
    frame::put_settings(&mut out, &[]);
    app.send(&out).await;
    app.until("the request", is_headers_on(1)).await;
    let mut out = BytesMut::new();
    for _ in 0..20 {
        frame::put_settings(&mut out, &[(frame::INITIAL_WINDOW_SIZE, 1000)]);
    }
    client.send(&out).await;
    assert_eq!(client.go_away().await.1, Reason::ENHANCE_YOUR_CALM);
}

/// The other way: an app whose SETTINGS the client never acknowledges
/// cannot queue more than 16 ACKs owed; the client is in breach of §6.5.3.
#[tokio::test]
async fn a_client_that_leaves_16_settings_unacknowledged_is_timed_out() {
    let (mut client, mut app, relay) = start_ending();
    client_preface(&mut client).await;
    client.request(1, Method::GET, "/ok", false).await;
    app_handshake(&mut app).await;
    app.until("the request", is_headers_on(1)).await;
    let mut out = BytesMut::new();
    for _ in 0..20 {
        frame::put_settings(&mut out, &[(frame::INITIAL_WINDOW_SIZE, 1000)]);
    }
    app.send(&out).await;
    let (seen, reason) = client.go_away().await;
    assert_eq!(reason, Reason::SETTINGS_TIMEOUT);
    let settings = seen
        .iter()
        .filter(|g| g.head.kind == frame::SETTINGS && !g.head.has(frame::ACK))
        .count();
    assert!(settings <= 16, "{settings} SETTINGS reached the client");
    // Not audited as the client's error: the app may have sent them faster
    // than any client could answer.
    let error = ended(client, relay).await;
    assert!(
        !matches!(error, HttpProxyError::ClientBrokeHttp2(_)),
        "{error}"
    );
}

/// An app that announces a frame larger than it may send is gone: what it
/// had been sent is reset (it may have acted on it), the client is told to
/// reconnect, and the connection ends rather than spinning on the bytes
/// the app left behind.
#[tokio::test]
async fn an_app_frame_too_large_ends_the_apps_side_and_the_connection() {
    let (mut client, mut app) = start();
    client_preface(&mut client).await;
    client.request(1, Method::GET, "/ok", true).await;
    app_handshake(&mut app).await;
    app.until("the request", is_headers_on(1)).await;
    let mut out = BytesMut::new();
    frame::put_head(&mut out, frame::MAX_PAYLOAD, frame::DATA, 0, 1);
    // Over the limit: the length field says 16 385 bytes follow.
    out[2] += 1;
    out.extend_from_slice(&[0; 100]);
    app.send(&out).await;
    let seen = client
        .until("GOAWAY", |g| g.head.kind == frame::GOAWAY)
        .await;
    let reset = seen
        .iter()
        .find(|g| g.head.kind == frame::RST_STREAM && g.head.stream == 1)
        .expect("the stream the app had is reset");
    assert_eq!(
        Reason::from(frame::parse_u32(&reset.payload).unwrap()),
        Reason::INTERNAL_ERROR
    );
    while client.frame().await.is_some() {}
}

/// An app (outbound: the peer) that floods PINGs is cut off like one that
/// broke HTTP/2, under the budget every client has: what it had is reset,
/// the client is told to reconnect, and far fewer PINGs are answered than
/// were sent.
#[tokio::test]
async fn an_app_that_floods_pings_is_gone() {
    let (mut client, mut app) = start();
    client_preface(&mut client).await;
    client.request(1, Method::GET, "/ok", true).await;
    app_handshake(&mut app).await;
    app.until("the request", is_headers_on(1)).await;
    let mut flood = BytesMut::new();
    for i in 0..5_000u64 {
        frame::put_head(&mut flood, 8, frame::PING, 0, 0);
        flood.extend_from_slice(&i.to_be_bytes());
    }
    app.send(&flood).await;
    let seen = client
        .until("GOAWAY", |g| g.head.kind == frame::GOAWAY)
        .await;
    assert!(
        seen.iter()
            .any(|g| g.head.kind == frame::RST_STREAM && g.head.stream == 1),
        "the stream the app had is reset: {seen:?}"
    );
    let mut answered = 0;
    while let Some(got) = app.frame().await {
        answered += usize::from(got.head.kind == frame::PING);
    }
    assert!(answered <= 1_000, "{answered} PINGs answered");
}

/// RFC 9113 §8.2.1 and §8.1.1: an intermediary must not forward a request
/// whose field values have leading or trailing whitespace; its stream is
/// reset and the app never sees it (nor such an answer from the app).
#[tokio::test]
async fn malformed_fields_are_not_forwarded() {
    let cases: [(&[u8], &[u8]); 4] = [
        (b"x-pad", b"v "),
        (b"x-pad", b" v"),
        (b"x-pad", b"v\t"),
        (b"x-ok", b"v"),
    ];
    let (mut client, mut app) = start();
    client_preface(&mut client).await;
    for (i, (name, value)) in cases.iter().enumerate() {
        let block = get_block(None, &[(name, value)]);
        client.send_block(2 * i as u32 + 1, &block).await;
    }
    app_handshake(&mut app).await;
    let at_app = app.until("the well-formed request", is_headers_on(7)).await;
    let heads: Vec<u32> = at_app
        .iter()
        .filter(|g| g.head.kind == frame::HEADERS)
        .map(|g| g.head.stream)
        .collect();
    assert_eq!(heads, [7], "malformed requests reached the app");
    let (resets, _) = client.resets(3).await;
    let protocol_error = Reason::PROTOCOL_ERROR;
    assert_eq!(
        resets,
        [
            (1, protocol_error),
            (3, protocol_error),
            (5, protocol_error)
        ]
    );
    // A padded value in the app's answer is not passed on either.
    let mut fields = HeaderMap::new();
    fields.insert("x-pad", "v ".parse().unwrap());
    let mut head = Headers::new(StreamId::from(7), Pseudo::response(StatusCode::OK), fields);
    head.set_end_stream();
    let mut out = BytesMut::new();
    app.blocks.encode(head, &mut out);
    app.send(&out).await;
    let seen = client
        .until("a reset", |g| g.head.kind == frame::RST_STREAM)
        .await;
    assert_eq!(seen.last().unwrap().head.stream, 7);
    assert!(!seen.iter().any(|g| g.head.kind == frame::HEADERS));
}

/// An upper-case field name is refused by h2's decoder as a connection
/// error (as hyper's server does): stricter than §8.2.1's stream error,
/// never forwarded.
#[tokio::test]
async fn an_upper_case_field_name_ends_the_connection() {
    let (mut client, _app, relay) = start_ending();
    client_preface(&mut client).await;
    let block = get_block(None, &[(b"X-Up", b"v")]);
    client.send_block(1, &block).await;
    let seen = client
        .until("GOAWAY", |g| g.head.kind == frame::GOAWAY)
        .await;
    assert_eq!(go_away_reason(seen.last().unwrap()), Reason::PROTOCOL_ERROR);
    // The client's error: the sidecar audits the closure.
    assert!(matches!(
        ended(client, relay).await,
        HttpProxyError::ClientBrokeHttp2(Reason::PROTOCOL_ERROR)
    ));
}

/// A padded value refused after it entered the HPACK table (h2's encoder
/// indexes it) leaves both sides' tables in step: the same field sent again
/// by reference is refused again, and the next well-formed request passes.
#[tokio::test]
async fn a_refused_padded_value_keeps_hpack_in_step() {
    let (mut client, mut app, authorizer) = start_audited();
    client_preface(&mut client).await;
    for (stream, value) in [(1, "v "), (3, "v "), (5, "v")] {
        let mut fields = HeaderMap::new();
        fields.insert("x-pad", value.parse().unwrap());
        let uri: Uri = "http://api.test/ok".parse().unwrap();
        let pseudo = Pseudo::request(Method::GET, uri, None);
        let mut head = Headers::new(StreamId::from(stream), pseudo, fields);
        head.set_end_stream();
        let mut out = BytesMut::new();
        client.blocks.encode(head, &mut out);
        client.send(&out).await;
    }
    app_handshake(&mut app).await;
    let at_app = app.until("the well-formed request", is_headers_on(5)).await;
    let (_, fields) = at_app.last().unwrap().block.as_ref().unwrap();
    assert_eq!(fields["x-pad"], "v");
    assert_eq!(
        at_app
            .iter()
            .filter(|g| g.head.kind == frame::HEADERS)
            .count(),
        1
    );
    let (resets, _) = client.resets(2).await;
    let streams: Vec<u32> = resets.iter().map(|(stream, _)| *stream).collect();
    assert_eq!(streams, [1, 3]);
    let padded = "refused GET /ok: a field value with leading or trailing whitespace";
    assert_eq!(authorizer.audited(), [padded, padded]);
}

/// A `:path` with a fragment is refused (400) before policy: `http`'s
/// parser stops at `#`, so what follows (here CR LF) would otherwise reach
/// the app unchecked.
#[tokio::test]
async fn a_path_with_a_fragment_is_refused() {
    let (mut client, mut app) = start();
    client_preface(&mut client).await;
    let block = get_block(Some(b"/ok#\r\nx-injected: 1"), &[]);
    client.send_block(1, &block).await;
    let seen = client.until("the answer", is_headers_on(1)).await;
    assert_eq!(status(seen.last().unwrap()), Some(StatusCode::BAD_REQUEST));
    client.request(3, Method::GET, "/ok", true).await;
    app_handshake(&mut app).await;
    let at_app = app.until("the next request", is_headers_on(3)).await;
    assert!(!at_app.iter().any(|g| g.head.stream == 1));
}

/// A request head with these extra fields on `stream`, not ending it.
async fn request_with(client: &mut Peer, stream: u32, path: &str, fields: &[(&str, &str)]) {
    let mut map = HeaderMap::new();
    for (name, value) in fields {
        map.append(
            http::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    let uri: Uri = format!("http://api.test{path}").parse().unwrap();
    let pseudo = Pseudo::request(Method::POST, uri, None);
    let head = Headers::new(StreamId::from(stream), pseudo, map);
    let mut out = BytesMut::new();
    client.blocks.encode(head, &mut out);
    client.send(&out).await;
}

fn reset_reason(got: &Got) -> Reason {
    Reason::from(frame::parse_u32(&got.payload).unwrap())
}

/// A request body that is not the length its `content-length` declares is
/// malformed (RFC 9113 §8.1.1): reset both ways, never passed on whole.
/// Too long: the frame that goes past it never reaches the app. Too short:
/// the frame that ends it early does not either (the app sees a reset, not
/// END_STREAM).
#[tokio::test]
async fn a_request_body_not_its_content_length_is_reset() {
    let (mut client, mut app, authorizer) = start_audited();
    client_preface(&mut client).await;
    request_with(&mut client, 1, "/long", &[("content-length", "5")]).await;
    request_with(&mut client, 3, "/short", &[("content-length", "5")]).await;
    request_with(&mut client, 5, "/bad", &[("content-length", "5, 6")]).await;
    let mut out = BytesMut::new();
    frame::put_data(&mut out, 1, b"hello!", false);
    frame::put_data(&mut out, 3, b"hel", true);
    client.send(&out).await;
    let (mut resets, _) = client.resets(3).await;
    resets.sort_by_key(|(stream, _)| *stream);
    let protocol_error = Reason::PROTOCOL_ERROR;
    assert_eq!(
        resets,
        [
            (1, protocol_error),
            (3, protocol_error),
            (5, protocol_error)
        ]
    );
    app_handshake(&mut app).await;
    let at_app = app
        .until("both resets", |g| {
            g.head.kind == frame::RST_STREAM && g.head.stream == 3
        })
        .await;
    assert!(
        !at_app.iter().any(|g| g.head.kind == frame::DATA),
        "body bytes reached the app: {at_app:?}"
    );
    assert!(!at_app.iter().any(|g| g.head.stream == 5));
    // Each is audited as a refusal: the conflicting head before policy,
    // the two bodies as cut off once decided.
    let mut audited = authorizer.audited();
    audited.sort();
    assert_eq!(
        audited,
        [
            "malformed: a body longer or shorter than its content-length",
            "malformed: a body longer or shorter than its content-length",
            "refused POST /bad: invalid Content-Length",
        ]
    );
}

/// A `content-length` of equal values (`2, 2`) is accepted and passed on
/// as one plain value, both ways (RFC 9112 §6.3): the next hop never sees
/// the list, which parsers read differently (hyper resets the stream).
/// A `HEAD` answer's too, though it frames nothing.
#[tokio::test]
async fn a_content_length_list_of_equal_values_goes_on_as_one_value() {
    let (mut client, mut app) = start();
    client_preface(&mut client).await;
    request_with(&mut client, 1, "/upload", &[("content-length", "2, 2")]).await;
    let mut out = BytesMut::new();
    frame::put_data(&mut out, 1, b"ab", true);
    client.send(&out).await;
    app_handshake(&mut app).await;
    let at_app = app.until("the request", is_headers_on(1)).await;
    let (_, fields) = at_app.last().unwrap().block.as_ref().expect("a head");
    let lengths: Vec<_> = fields.get_all("content-length").iter().collect();
    assert_eq!(lengths, ["2"]);
    app.until("its body", |g| g.head.kind == frame::DATA).await;

    let mut fields = HeaderMap::new();
    fields.append("content-length", "3".parse().unwrap());
    fields.append("content-length", "3".parse().unwrap());
    let head = Headers::new(StreamId::from(1), Pseudo::response(StatusCode::OK), fields);
    let mut out = BytesMut::new();
    app.blocks.encode(head, &mut out);
    frame::put_data(&mut out, 1, b"abc", true);
    app.send(&out).await;
    let seen = client.until("the answer", is_headers_on(1)).await;
    let (_, fields) = seen.last().unwrap().block.as_ref().expect("a head");
    let lengths: Vec<_> = fields.get_all("content-length").iter().collect();
    assert_eq!(lengths, ["3"]);
    let data = client
        .until("its body", |g| g.head.kind == frame::DATA)
        .await;
    assert_eq!(&data.last().unwrap().payload[..], b"abc");

    // A `HEAD` answer's frames nothing, and is made one value all the same.
    client.request(3, Method::HEAD, "/head", true).await;
    app.until("the HEAD request", is_headers_on(3)).await;
    let mut fields = HeaderMap::new();
    fields.insert("content-length", "4, 4".parse().unwrap());
    let mut head = Headers::new(StreamId::from(3), Pseudo::response(StatusCode::OK), fields);
    head.set_end_stream();
    let mut out = BytesMut::new();
    app.blocks.encode(head, &mut out);
    app.send(&out).await;
    let seen = client.until("the HEAD answer", is_headers_on(3)).await;
    let (_, fields) = seen.last().unwrap().block.as_ref().expect("a head");
    let lengths: Vec<_> = fields.get_all("content-length").iter().collect();
    assert_eq!(lengths, ["4"]);
}

/// The same for the app's answer; a `HEAD` answer and a `304` may declare a
/// length they carry no body for.
#[tokio::test]
async fn a_response_body_not_its_content_length_is_reset() {
    let (mut client, mut app) = start();
    client_preface(&mut client).await;
    client.request(1, Method::GET, "/long", true).await;
    client.request(3, Method::HEAD, "/head", true).await;
    client.request(5, Method::GET, "/cached", true).await;
    app_handshake(&mut app).await;
    app.until("the last request", is_headers_on(5)).await;
    let mut out = BytesMut::new();
    for (stream, status, end) in [
        (1, StatusCode::OK, false),
        (3, StatusCode::OK, true),
        (5, StatusCode::NOT_MODIFIED, true),
    ] {
        let mut fields = HeaderMap::new();
        fields.insert("content-length", "2".parse().unwrap());
        let mut head = Headers::new(StreamId::from(stream), Pseudo::response(status), fields);
        if end {
            head.set_end_stream();
        }
        app.blocks.encode(head, &mut out);
    }
    frame::put_data(&mut out, 1, b"abc", true);
    app.send(&out).await;
    let seen = client
        .until("the reset", |g| g.head.kind == frame::RST_STREAM)
        .await;
    assert_eq!(seen.last().unwrap().head.stream, 1);
    assert_eq!(reset_reason(seen.last().unwrap()), Reason::PROTOCOL_ERROR);
    assert!(!seen.iter().any(|g| g.head.kind == frame::DATA));
    let answered: Vec<(u32, Option<StatusCode>)> = seen
        .iter()
        .filter(|g| g.head.kind == frame::HEADERS)
        .map(|g| (g.head.stream, status(g)))
        .collect();
    assert_eq!(
        answered,
        [
            (1, Some(StatusCode::OK)),
            (3, Some(StatusCode::OK)),
            (5, Some(StatusCode::NOT_MODIFIED))
        ]
    );
}

/// A `204` carries no content whatever follows it (RFC 9110 §15.3.5), and a
/// 1xx head never ends a stream (RFC 9113 §8.1): both malformed, reset.
#[tokio::test]
async fn content_after_204_and_a_1xx_that_ends_the_stream_are_reset() {
    let (mut client, mut app) = start();
    client_preface(&mut client).await;
    client.request(1, Method::GET, "/none", true).await;
    client.request(3, Method::GET, "/early", true).await;
    app_handshake(&mut app).await;
    app.until("the last request", is_headers_on(3)).await;
    let mut out = BytesMut::new();
    let no_content = Headers::new(
        StreamId::from(1),
        Pseudo::response(StatusCode::NO_CONTENT),
        HeaderMap::new(),
    );
    app.blocks.encode(no_content, &mut out);
    frame::put_data(&mut out, 1, b"x", true);
    let mut early = Headers::new(
        StreamId::from(3),
        Pseudo::response(StatusCode::EARLY_HINTS),
        HeaderMap::new(),
    );
    early.set_end_stream();
    app.blocks.encode(early, &mut out);
    app.send(&out).await;
    let (resets, seen) = client.resets(2).await;
    let protocol_error = Reason::PROTOCOL_ERROR;
    assert_eq!(resets, [(1, protocol_error), (3, protocol_error)]);
    assert!(!seen.iter().any(|g| g.head.kind == frame::DATA));
    assert!(!seen.iter().any(|g| is_headers_on(3)(g)), "{seen:?}");
}

/// Heads that are no request are refused and audited: one without
/// `:scheme` (reset; the line names the method and path it has), one with
/// a connection-specific field h2's decoder refuses for the stream (reset),
/// one over `max_header_bytes` (431; neither of the last two names a method
/// and target).
#[tokio::test]
async fn heads_that_are_no_request_are_audited() {
    let (mut client, _app, authorizer) = start_audited();
    client_preface(&mut client).await;
    // `:method GET`, `:path /`, nothing else.
    client.send_block(1, &[0x82, 0x84]).await;
    client
        .send_block(3, &get_block(None, &[(b"connection", b"close")]))
        .await;
    let mut fields = HeaderMap::new();
    fields.insert("x-big", "v".repeat(20 * 1024).parse().unwrap());
    let uri: Uri = "http://api.test/ok".parse().unwrap();
    let mut head = Headers::new(
        StreamId::from(5),
        Pseudo::request(Method::GET, uri, None),
        fields,
    );
    head.set_end_stream();
    let mut out = BytesMut::new();
    client.blocks.encode(head, &mut out);
    client.send(&out).await;
    let seen = client
        .until("the 431", |g| {
            g.head.kind == frame::HEADERS && g.head.stream == 5
        })
        .await;
    let reset = |id| {
        seen.iter()
            .any(|g| g.head.kind == frame::RST_STREAM && g.head.stream == id)
    };
    assert!(reset(1) && reset(3));
    let (pseudo, _) = seen.last().unwrap().block.as_ref().unwrap();
    assert_eq!(
        pseudo.status,
        Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
    );
    assert_eq!(
        authorizer.audited(),
        [
            "refused GET /: invalid message head",
            "malformed: invalid message head",
            "malformed: request head too large"
        ]
    );
}

/// The raw app for the rapid reset tests: its handshake, then a `200` with
/// END_STREAM for every request head (a reset may cross it: the relay
/// drops answers on streams it no longer has); returns how many heads it
/// got once the relay closes its connection.
fn answering_app(mut app: Peer) -> JoinHandle<usize> {
    tokio::spawn(async move {
        // The handshake of `app_handshake`, but the relay may close the
        // connection before the app has written its part.
        let mut preface = [0u8; 24];
        app.io.read_exact(&mut preface).await.unwrap();
        let mut out = BytesMut::new();
        frame::put_settings(&mut out, &[]);
        frame::put_settings_ack(&mut out);
        let _ = app.io.write_all(&out).await;
        let mut heads = 0;
        while let Some(got) = app.frame().await {
            if got.head.kind == frame::HEADERS {
                heads += 1;
                let mut out = BytesMut::new();
                let ok = Pseudo::response(StatusCode::OK);
                app.encode_head(got.head.stream, ok, true, &mut out);
                // The relay may have closed the connection already.
                if app.io.write_all(&out).await.is_err() {
                    break;
                }
            }
        }
        heads
    })
}

/// Rapid reset (CVE-2023-44487): a client that cancels every request as
/// soon as it sent it is cut off once it has made the app start
/// `MIN_REQUESTS` of them, however few were open at a time.
#[tokio::test]
async fn requests_reset_as_soon_as_sent_end_the_connection() {
    use super::rapid_reset::MIN_REQUESTS;
    let (mut client, app, relay) = start_ending();
    let app = answering_app(app);
    client_preface(&mut client).await;
    // In one write: the relay may close the connection before it is all read.
    let mut out = BytesMut::new();
    for i in 0..2 * MIN_REQUESTS as u32 {
        let stream = 2 * i + 1;
        client.encode_request(stream, Method::GET, "/ok", true, &mut out);
        frame::put_reset(&mut out, stream, Reason::CANCEL);
    }
    let _ = client.io.write_all(&out).await;
    assert_eq!(client.go_away().await.1, Reason::ENHANCE_YOUR_CALM);
    let error = ended(client, relay).await;
    assert!(matches!(error, HttpProxyError::RapidReset), "{error}");
    let heads = tokio::time::timeout(HANG, app).await.unwrap().unwrap();
    assert!(
        (1..=MIN_REQUESTS as usize).contains(&heads),
        "{heads} requests reached the app"
    );
}

/// What a rapid reset is not: a client that cancels one request for each
/// that runs (a hedged call's loser), on and on, keeps its connection.
#[tokio::test]
async fn one_request_cancelled_for_each_that_runs_is_carried() {
    use super::rapid_reset::MIN_REQUESTS;
    let (mut client, app, relay) = start_ending();
    let app = answering_app(app);
    client_preface(&mut client).await;
    let pairs = 2 * MIN_REQUESTS as u32;
    for i in 0..pairs {
        let (runs, cancelled) = (4 * i + 1, 4 * i + 3);
        client.request(runs, Method::GET, "/ok", true).await;
        let mut out = BytesMut::new();
        client.encode_request(cancelled, Method::GET, "/ok", true, &mut out);
        frame::put_reset(&mut out, cancelled, Reason::CANCEL);
        client.send(&out).await;
    }
    let last = 4 * pairs + 1;
    client.request(last, Method::GET, "/ok", true).await;
    let seen = client
        .until("the last answer", |g| is_headers_on(last)(g))
        .await;
    assert!(
        !seen.iter().any(|g| g.head.kind == frame::GOAWAY),
        "GOAWAY before the last answer"
    );
    assert_eq!(status(seen.last().unwrap()), Some(StatusCode::OK));
    assert!(!relay.is_finished());
    drop(client);
    let heads = tokio::time::timeout(HANG, app).await.unwrap().unwrap();
    assert_eq!(heads, 2 * pairs as usize + 1);
}

/// A request's time is when the bytes that hold it were read: requests
/// read together share one reading of the clocks (`clock::BatchClock`),
/// a later read gets a later one.
#[tokio::test]
async fn requests_read_together_share_one_time() {
    let (mut client, app, authorizer) = start_audited();
    let answered = answering_app(app);
    // The preface, SETTINGS and two requests in one write: one read.
    let mut out = BytesMut::from(&frame::PREFACE[..]);
    frame::put_settings(&mut out, &[]);
    client.encode_request(1, Method::GET, "/a", true, &mut out);
    client.encode_request(3, Method::GET, "/b", true, &mut out);
    client.send(&out).await;
    client
        .until("the answer to 3", |g| {
            is_headers_on(3)(g) && status(g).is_some()
        })
        .await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    client.request(5, Method::GET, "/c", true).await;
    client
        .until("the answer to 5", |g| {
            is_headers_on(5)(g) && status(g).is_some()
        })
        .await;
    let arrived = authorizer.arrived.lock().unwrap().clone();
    assert_eq!(arrived.len(), 3);
    assert_eq!(arrived[0], arrived[1], "read together, one time");
    assert!(
        arrived[2].mono >= arrived[0].mono + Duration::from_millis(5),
        "read later, a later time: {arrived:?}"
    );
    assert!(arrived[2].wall > arrived[0].wall);
    drop(client);
    tokio::time::timeout(HANG, answered).await.unwrap().unwrap();
}
