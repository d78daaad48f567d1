//! The local apps behind the server sidecar: an HTTP/1.1 + h2c + gRPC app,
//! a TCP echo and a server-first (banner) protocol. All run on the test's
//! runtime and stop on drop.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

use super::grpc;

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// The gRPC methods the app serves.
pub const GRPC_UNARY: &str = "/appid.test.Echo/Unary";
pub const GRPC_STREAM: &str = "/appid.test.Echo/Count";

/// What the app observed, for assertions.
#[derive(Default)]
pub struct AppState {
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Requests received (any kind).
    pub requests: AtomicU64,
    /// `/slow` requests that have started (and will answer in a second).
    pub slow_started: AtomicU64,
    /// The gRPC streaming client got the first message: send the rest.
    pub stream_first_received: Notify,
    /// Every request trailer field `…/echo-trailers` received, as
    /// `(name, value)`, over all requests (what trailer tests check stays
    /// empty).
    pub trailers_seen: Mutex<Vec<(String, String)>>,
    /// Bytes of `/big` responses taken by the server (hyper polls a body
    /// only as its connection's flow control allows).
    pub big_bytes_sent: AtomicU64,
}

/// HTTP app: for any path, answers `200` with a JSON echo of the request
/// (`method`, `path`, `version`, `conn` — the number of the connection it
/// came on — and `headers`, name → list of values). `/slow` answers the
/// same after one second; `/status/<code>` answers the same with that
/// status code. A path ending in `/echo-trailers` first reads
/// the whole request body with its trailers, records the trailer fields in
/// [`AppState::trailers_seen`] and adds them to the echo (`trailers`). A
/// path ending in `/forge` answers with forged `x-appid-*` headers (and
/// trailers, which HTTP/2 and `TE: trailers` callers get), which a sidecar
/// must remove. gRPC (`content-type: application/grpc`) goes to
/// [`GRPC_UNARY`] (echoes the message) and [`GRPC_STREAM`] (one-byte
/// request `n`, answers `n` messages).
pub struct HttpApp {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    task: JoinHandle<()>,
}

impl HttpApp {
    pub async fn start() -> HttpApp {
        HttpApp::start_serving(false).await
    }

    /// The same app speaking HTTP/2 only (prior knowledge, as gRPC servers
    /// do): it greets every connection with its SETTINGS at once, before
    /// the client's preface (hyper's HTTP/1-or-2 server waits to see the
    /// client's first bytes instead).
    pub async fn start_h2_only() -> HttpApp {
        HttpApp::start_serving(true).await
    }

    async fn start_serving(h2_only: bool) -> HttpApp {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(AppState::default());
        let task = tokio::spawn({
            let state = state.clone();
            async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let conn = state.connections.fetch_add(1, Ordering::SeqCst) + 1;
                    let state = state.clone();
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |request| {
                            let state = state.clone();
                            async move { Ok::<_, Infallible>(respond(request, conn, state).await) }
                        });
                        let io = TokioIo::new(stream);
                        if h2_only {
                            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                                .serve_connection(io, service)
                                .await;
                        } else {
                            let _ = auto::Builder::new(TokioExecutor::new())
                                .serve_connection(io, service)
                                .await;
                        }
                    });
                }
            }
        });
        HttpApp { addr, state, task }
    }
}

impl Drop for HttpApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into()).boxed_unsync()
}

async fn respond(request: Request<Incoming>, conn: u64, state: Arc<AppState>) -> Response<Body> {
    state.requests.fetch_add(1, Ordering::SeqCst);
    let is_grpc = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if is_grpc {
        return grpc_respond(request, state).await;
    }
    let path = request.uri().path().to_string();
    if path.ends_with("/forge") {
        return forged();
    }
    if path.ends_with("/big") {
        // 4 MiB in 64 KiB chunks, counted as hyper takes them: for tests of
        // what a sidecar holds for a reader that does not read.
        let chunks = futures_util::stream::iter(0..64).map(move |_| {
            state.big_bytes_sent.fetch_add(64 * 1024, Ordering::SeqCst);
            Ok::<_, Infallible>(Frame::data(Bytes::from(vec![b'x'; 64 * 1024])))
        });
        return Response::new(StreamBody::new(chunks).boxed_unsync());
    }
    let mut headers = serde_json::Map::new();
    for (name, value) in request.headers() {
        let entry = headers
            .entry(name.as_str().to_string())
            .or_insert_with(|| json!([]));
        entry
            .as_array_mut()
            .unwrap()
            .push(json!(String::from_utf8_lossy(value.as_bytes())));
    }
    let mut echo = json!({
        "method": request.method().as_str(),
        "path": path,
        "version": format!("{:?}", request.version()),
        "conn": conn,
        "headers": headers,
    });
    if path.ends_with("/echo-trailers") {
        // Only a complete body (with its trailers, if any) gets an answer:
        // a request cut short by a sidecar gets none.
        let Ok(collected) = request.into_body().collect().await else {
            return Response::new(full(Bytes::new()));
        };
        let mut trailers = Vec::new();
        for (name, value) in collected.trailers().into_iter().flatten() {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            trailers.push((name.as_str().to_string(), value));
        }
        echo["trailers"] = json!(trailers);
        echo["body_len"] = json!(collected.to_bytes().len());
        state.trailers_seen.lock().unwrap().extend(trailers);
    }
    if path == "/slow" {
        state.slow_started.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let mut response = Response::new(full(echo.to_string()));
    if let Some(code) = path
        .strip_prefix("/status/")
        .and_then(|c| c.parse::<u16>().ok())
        .and_then(|c| StatusCode::from_u16(c).ok())
    {
        *response.status_mut() = code;
    }
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The `/forge` answer: a 200 whose head and trailers carry `x-appid-*`
/// fields only a sidecar may set (in both spellings).
fn forged() -> Response<Body> {
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-appid-denied-by", HeaderValue::from_static("forged"));
    trailers.insert("x_appid_peer_id", HeaderValue::from_static("forged"));
    trailers.insert("x-forge-trailer", HeaderValue::from_static("kept"));
    let frames = [
        Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"forged\n"))),
        Ok(Frame::trailers(trailers)),
    ];
    let body = StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync();
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    for name in [
        "x-appid-denied-by",
        "x-appid-peer-id",
        "x_appid_peer",
        "x-appid-extra",
    ] {
        headers.insert(name, HeaderValue::from_static("forged"));
    }
    headers.insert("x-forge-header", HeaderValue::from_static("kept"));
    response
}

async fn grpc_respond(request: Request<Incoming>, state: Arc<AppState>) -> Response<Body> {
    let path = request.uri().path().to_string();
    let peer_id = request.headers().get("x-appid-peer-id").cloned();
    let body = match request.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return grpc_trailers_only("13", "request body failed"),
    };
    let Some(messages) = grpc::decode_messages(&body) else {
        return grpc_trailers_only("13", "bad gRPC framing");
    };
    let [message] = messages.as_slice() else {
        return grpc_trailers_only("12", "expected exactly one request message");
    };
    let (tx, rx) = mpsc::channel::<Frame<Bytes>>(16);
    match path.as_str() {
        GRPC_UNARY => {
            tx.try_send(Frame::data(grpc::encode_message(message)))
                .unwrap();
            tx.try_send(Frame::trailers(grpc::status_trailers("0")))
                .unwrap();
        }
        GRPC_STREAM => {
            let count = message.first().copied().unwrap_or(0);
            tokio::spawn(stream_counts(tx, count, state));
        }
        _ => return grpc_trailers_only("12", "unknown method"),
    }
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|frame| (Ok::<_, Infallible>(frame), rx))
    });
    let mut response = Response::new(StreamBody::new(stream).boxed_unsync());
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    if let Some(peer_id) = peer_id {
        headers.insert("x-seen-peer-id", peer_id);
    }
    response
}

/// Sends `count` messages; after the first, waits until the test's client
/// says it received it, which proves the sidecars pass messages through
/// as they come instead of buffering the whole response.
async fn stream_counts(tx: mpsc::Sender<Frame<Bytes>>, count: u8, state: Arc<AppState>) {
    for i in 0..count {
        let message = format!("count {i}");
        if tx
            .send(Frame::data(grpc::encode_message(message.as_bytes())))
            .await
            .is_err()
        {
            return;
        }
        if i == 0 {
            let first = state.stream_first_received.notified();
            if tokio::time::timeout(Duration::from_secs(10), first)
                .await
                .is_err()
            {
                let _ = tx.send(Frame::trailers(grpc::status_trailers("4"))).await;
                return;
            }
        }
    }
    let _ = tx.send(Frame::trailers(grpc::status_trailers("0"))).await;
}

fn grpc_trailers_only(status: &'static str, message: &'static str) -> Response<Body> {
    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", HeaderValue::from_static(status));
    headers.insert("grpc-message", HeaderValue::from_static(message));
    response
}

/// A TCP echo server: every byte back, half-close when the client does.
pub struct EchoServer {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl EchoServer {
    pub async fn start() -> EchoServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn({
            let connections = connections.clone();
            async move {
                loop {
                    let Ok((mut stream, _)) = listener.accept().await else {
                        continue;
                    };
                    connections.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(async move {
                        let (mut read, mut write) = stream.split();
                        if tokio::io::copy(&mut read, &mut write).await.is_ok() {
                            let _ = write.shutdown().await;
                        }
                    });
                }
            }
        });
        EchoServer {
            addr,
            connections,
            task,
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A server that speaks first: a banner on accept, then echoes lines.
pub async fn banner_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                if stream
                    .write_all(b"220 banner.test ready\r\n")
                    .await
                    .is_err()
                {
                    return;
                }
                let mut buf = [0u8; 1024];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A real server run from a script (`python3 -c`, `node -e`): it prints
/// its port on its first line, and appends what it handles to the log file
/// named by its first argument. Killed on drop.
pub struct ScriptApp {
    pub addr: SocketAddr,
    log: std::path::PathBuf,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl ScriptApp {
    /// `python3 -c script log`.
    pub fn python(script: &str) -> ScriptApp {
        ScriptApp::start("python3", "-c", script)
    }

    /// `program flag script log`, once it printed its port.
    pub fn start(program: &str, flag: &str, script: &str) -> ScriptApp {
        use std::io::BufRead;
        use std::process::{Command, Stdio};
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("seen.log");
        std::fs::write(&log, b"").unwrap();
        let mut child = Command::new(program)
            .arg(flag)
            .arg(script)
            .arg(&log)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{program}: {e}"));
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port: u16 = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{program} printed no port: {line:?}"));
        ScriptApp {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            log,
            child,
            _dir: dir,
        }
    }

    /// What it logged so far.
    pub fn seen(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }

    /// Empties the log.
    pub fn forget(&self) {
        std::fs::write(&self.log, b"").unwrap();
    }
}

impl Drop for ScriptApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
