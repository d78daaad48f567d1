//! Sidecar `limits:` keys that are read at run time, each proved to take
//! effect on the real `appid proxy` over real sockets: every test sets its
//! key far from the default and fails if the sidecar ran with the default
//! instead.
//!
//! - `handshake_timeout`: a mesh ClientHello that never goes on is closed
//!   at the configured timeout (1 s), not the default (10 s; the harness's
//!   own 5 s).
//! - `idle_timeout`: an opaque TCP connection through a pair, on a port
//!   with no `ports[].idle_timeout`, is closed once idle for the global
//!   timeout (1 s, not 1 h).
//! - `connect_timeout`: an outbound whose upstream never answers a SYN (a
//!   loopback listener whose accept queue is full) closes the app's
//!   connection at the configured timeout (1 s, not 5 s).
//! - `max_header_bytes`: a request head over the limit (2 KiB) is refused
//!   (431) and never reaches the app, one under it is served; the 64 KiB
//!   default would let both through.
//! - `drain_timeout`: after SIGTERM, a live opaque TCP session through the
//!   server sidecar is closed at the configured deadline (1 s, not 30 s)
//!   and the sidecar exits 0.

#[path = "support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use support::apps::{EchoServer, HttpApp};
use support::mesh::{Env, Mesh, MeshOptions, WEB_TO_API};
use support::net::{free_port, local};

/// An opaque TCP session through `mesh` that has echoed `message` once.
async fn echoing_session(mesh: &Mesh, message: &[u8]) -> TcpStream {
    let mut session = TcpStream::connect(mesh.outbound_addr()).await.unwrap();
    support::net::echo_once(&mut session, message, Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("no echo through the pair: {e}\n{}", mesh.context()));
    session
}

/// `ended` came at a key set to 1 s: not before it, and well before the
/// key's `default` (3 s of slack for a loaded machine).
fn closed_at_one_second(ended: &Ended, key: &str, default: &str, context: &str) {
    assert!(
        ended.after >= Duration::from_millis(900),
        "closed before {key} (1s): {ended:?}\n{context}"
    );
    assert!(
        ended.after < Duration::from_secs(4),
        "closed after {:?}: not at {key} 1s (the default is {default})\n{context}",
        ended.after
    );
}

/// What a read until the far side closes saw.
#[derive(Debug)]
struct Ended {
    /// From the start given to [`read_until_closed`] to the close.
    after: Duration,
    /// Everything that arrived before it.
    bytes: Vec<u8>,
    /// `None`: an orderly close (FIN); else the error (a reset).
    error: Option<std::io::ErrorKind>,
}

/// [`read_until_closed`] within 10 s of `start`, or a panic naming `what`
/// is still open, with `context`.
async fn closed_within_10s(
    stream: &mut TcpStream,
    start: Instant,
    what: &str,
    context: impl Fn() -> String,
) -> Ended {
    match read_until_closed(stream, start, Duration::from_secs(10)).await {
        Some(ended) => ended,
        None => panic!("{what}\n{}", context()),
    }
}

/// Reads (keeping what arrives) until the peer closes or resets; `None` if
/// it has not within `limit` of `start`.
async fn read_until_closed(
    stream: &mut TcpStream,
    start: Instant,
    limit: Duration,
) -> Option<Ended> {
    let mut bytes = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let left = limit.checked_sub(start.elapsed())?;
        match tokio::time::timeout(left, stream.read(&mut buffer)).await {
            Err(_) => return None,
            Ok(Ok(0)) => {
                return Some(Ended {
                    after: start.elapsed(),
                    bytes,
                    error: None,
                });
            }
            Ok(Ok(n)) => bytes.extend_from_slice(&buffer[..n]),
            Ok(Err(e)) => {
                return Some(Ended {
                    after: start.elapsed(),
                    bytes,
                    error: Some(e.kind()),
                });
            }
        }
    }
}

/// `limits.handshake_timeout: 1s`: a client that sends a whole mesh
/// ClientHello (so detection is done at once and the TLS handshake starts)
/// and then nothing is closed after about a second, well before the
/// default 10 s (and the harness's usual 5 s). Detection is given 30 s so
/// that only the handshake timeout can explain the close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_mesh_handshake_is_closed_at_handshake_timeout() {
    let env = Env::new();
    let app = EchoServer::start().await;
    let policy = env.policy("policy.yaml", WEB_TO_API);
    let inbound = free_port();
    let sidecar = env
        .sidecar("server", &env.api, &policy)
        .inbound(inbound, app.addr)
        .limit("handshake_timeout", "1s")
        .limit("detect_timeout", "30s")
        .start()
        .await;

    let mut stream = TcpStream::connect(local(inbound)).await.unwrap();
    stream
        .write_all(&support::rogue::mesh_client_hello())
        .await
        .unwrap();
    let start = Instant::now();
    // The server's first flight arrives, then (once the timeout passes)
    // the close.
    let ended = closed_within_10s(
        &mut stream,
        start,
        "a stalled handshake still open after 10 s",
        || sidecar.context(),
    )
    .await;
    eprintln!(
        "stalled handshake closed after {:.2?} ({} bytes first, {:?})",
        ended.after,
        ended.bytes.len(),
        ended.error
    );
    assert!(
        !ended.bytes.is_empty(),
        "the handshake never started (no ServerHello): {ended:?}\n{}",
        sidecar.context()
    );
    closed_at_one_second(&ended, "handshake_timeout", "10s", &sidecar.context());
    // Counted before the stalled handshake is dropped (closing the
    // socket): the close this test saw comes after the count.
    let timeouts = sidecar
        .metric(r#"appid_handshake_failures_total{direction="inbound",reason="timeout"}"#)
        .await;
    assert_eq!(timeouts, 1.0, "counted as a handshake timeout");
    assert_eq!(
        app.connections.load(Ordering::SeqCst),
        0,
        "the app was never dialled"
    );
}

/// `limits.idle_timeout: 1s` (global; no `ports:` entry): an opaque TCP
/// connection through a sidecar pair that works, then carries nothing, is
/// closed within seconds, not after the default hour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tcp_connection_is_closed_at_the_global_idle_timeout() {
    let app = EchoServer::start().await;
    let limits = vec![("idle_timeout", "1s"), ("detect_timeout", "10s")];
    let mesh = Mesh::start(
        app.addr,
        MeshOptions {
            server_limits: limits.clone(),
            client_limits: limits,
            ..MeshOptions::default()
        },
    )
    .await;

    let mut session = echoing_session(&mesh, b"ping\n").await;
    let start = Instant::now();
    let ended = closed_within_10s(
        &mut session,
        start,
        "an idle TCP session still open after 10 s (idle_timeout 1s)",
        || mesh.context(),
    )
    .await;
    eprintln!(
        "idle session closed after {:.2?} ({:?})",
        ended.after, ended.error
    );
    assert!(
        ended.bytes.is_empty(),
        "unexpected bytes on an idle session: {ended:?}"
    );
}

/// A loopback listener whose accept queue is full and is never accepted
/// from: Linux drops every further SYN, so a connect to it hangs (rather
/// than being refused). Keep the returned values alive.
async fn unanswering_upstream() -> (SocketAddr, TcpListener, Vec<TcpStream>) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(local(0)).unwrap();
    let listener = socket.listen(0).unwrap();
    let address = listener.local_addr().unwrap();
    let mut queued = Vec::new();
    for _ in 0..8 {
        match tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(address)).await {
            Ok(Ok(stream)) => queued.push(stream),
            Ok(Err(e)) => panic!("connect to the backlog listener {address}: {e}"),
            // The queue is full: connects now hang.
            Err(_) => return (address, listener, queued),
        }
    }
    panic!("{address}: still accepting after 8 queued connections; no way to make a connect hang");
}

/// `limits.connect_timeout: 1s`: an explicit outbound whose upstream never
/// answers the SYN gives up on it after about a second and closes the
/// app's connection, well before the default 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_upstream_connect_gives_up_at_connect_timeout() {
    let (upstream, _listener, _queued) = unanswering_upstream().await;
    let env = Env::new();
    let policy = env.policy("policy.yaml", WEB_TO_API);
    let outbound = free_port();
    let sidecar = env
        .sidecar("client", &env.api, &policy)
        .outbound(outbound, upstream)
        .limit("connect_timeout", "1s")
        .start()
        .await;

    let start = Instant::now();
    let mut stream = TcpStream::connect(local(outbound)).await.unwrap();
    let ended = closed_within_10s(
        &mut stream,
        start,
        "the app's connection still open after 10 s",
        || sidecar.context(),
    )
    .await;
    eprintln!(
        "connection to a hanging upstream closed after {:.2?} ({:?})",
        ended.after, ended.error
    );
    assert!(ended.bytes.is_empty(), "bytes from nowhere: {ended:?}");
    // It was the timeout, not a refusal.
    support::poll_until(
        "the sidecar to log the connect timeout",
        Duration::from_secs(5),
        || sidecar.context(),
        || async { sidecar.logs().contains("connect timed out").then_some(()) },
    )
    .await;
    closed_at_one_second(&ended, "connect_timeout", "5s", &sidecar.context());
}

/// `GET /head-<filler>` with a `x-filler` header of `filler` bytes, on a
/// fresh connection to `address`; what came back before the close.
async fn get_with_filler(address: SocketAddr, filler: usize) -> Ended {
    let mut stream = TcpStream::connect(address).await.unwrap();
    let request = format!(
        "GET /head-{filler} HTTP/1.1\r\nHost: api\r\nX-Filler: {}\r\nConnection: close\r\n\r\n",
        "f".repeat(filler)
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    read_until_closed(&mut stream, Instant::now(), Duration::from_secs(10))
        .await
        .expect("an answer or a close within 10 s")
}

/// `limits.max_header_bytes: 2048` on both sidecars: an HTTP/1.1 request
/// whose head is 4 KiB is refused (431) and never reaches the app, while
/// one with a 1 KiB head is served. With the 64 KiB default both would be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_over_max_header_bytes_is_refused() {
    let app = HttpApp::start().await;
    let limits = vec![("max_header_bytes", "2048")];
    let mesh = Mesh::start(
        app.addr,
        MeshOptions {
            server_limits: limits.clone(),
            client_limits: limits,
            ..MeshOptions::default()
        },
    )
    .await;

    let small = get_with_filler(mesh.outbound_addr(), 1024).await;
    let text = String::from_utf8_lossy(&small.bytes);
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "a 1 KiB head was not served: {text}\n{}",
        mesh.context()
    );
    let served = app.state.requests.load(Ordering::SeqCst);
    assert_eq!(served, 1, "the app got the 1 KiB request");

    let big = get_with_filler(mesh.outbound_addr(), 4096).await;
    let text = String::from_utf8_lossy(&big.bytes);
    eprintln!(
        "4 KiB head: {:?} ({:?})",
        text.lines().next().unwrap_or(""),
        big.error
    );
    // 431 is what the sidecar answers; a reset that overtook the answer
    // (the rest of the head was never read) is a refusal too.
    assert!(
        text.starts_with("HTTP/1.1 431") || (text.is_empty() && big.error.is_some()),
        "a 4 KiB head was not refused at max_header_bytes 2048: {text}\n{}",
        mesh.context()
    );
    assert_eq!(
        app.state.requests.load(Ordering::SeqCst),
        served,
        "the 4 KiB request reached the app"
    );
}

/// `limits.drain_timeout: 1s`: SIGTERM lets live connections finish for at
/// most the drain timeout. An opaque TCP session (which has no idle point
/// between requests to close at) stays open through the drain and is
/// closed at about 1 s, and the server sidecar exits 0; with the default
/// 30 s both would still be waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_session_is_closed_at_drain_timeout_after_sigterm() {
    let app = EchoServer::start().await;
    let mut mesh = Mesh::start(
        app.addr,
        MeshOptions {
            server_limits: vec![("drain_timeout", "1s")],
            ..MeshOptions::default()
        },
    )
    .await;
    let mut session = echoing_session(&mesh, b"before\n").await;

    let start = Instant::now();
    mesh.server.terminate();
    // Still carried while the server drains.
    support::net::echo_once(&mut session, b"draining\n", Duration::from_millis(500))
        .await
        .unwrap_or_else(|e| panic!("no echo while draining: {e}\n{}", mesh.context()));
    let ended = closed_within_10s(
        &mut session,
        start,
        "a live session still open 10 s after SIGTERM (drain_timeout 1s)",
        || mesh.context(),
    )
    .await;
    closed_at_one_second(&ended, "drain_timeout", "30s", &mesh.context());
    let status = mesh.server.wait_exit(Duration::from_secs(3)).await;
    assert_eq!(status.code(), Some(0), "{}", mesh.context());
}
