//! What the app sends outside an answer. Between requests an HTTP/1
//! app has nothing to say; bytes it sends then (a body written after a
//! `HEAD` answer's head, the `do_HEAD = do_GET` idiom; a second answer to
//! one request) would be read as the answer to the client's *next*
//! request, and a `101` among them would switch the connection to opaque
//! bytes while the app still reads HTTP: later requests unparsed,
//! unauthorized, unaudited. The sidecar watches the app's side while no
//! request is in flight and closes the connection on any byte (or passes
//! on the app's close: Node closing an idle connection costs the client's
//! next request no 502). After a `101`, the client's first line is watched
//! as on a connection decided as TCP. And an answer the app cuts short
//! with a reset reaches the client as a reset, not as a complete body.
//!
//! Every test runs pooled and strict, meshed and plaintext; the apps are
//! real lenient servers (Python's `http.server`, Node's `http`).
//! (Found by review: stop 52.)

#[path = "support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::apps::ScriptApp;
use support::mesh::{Mesh, MeshOptions};

const SPOOFED_ID: &str = "spiffe://test.example/spoofed";

/// Default deny; `/public/**` allowed for the meshed `web` and for plain
/// callers from 127.0.0.0/8. Nothing else (`/admin/**` in particular) is.
fn public_only_policy() -> String {
    "version: 1
default: deny
rules:
  - name: public
    action: allow
    from: { labels.app: web }
    to: { labels.app: api }
    http: { paths: [\"/public/**\"] }
  - name: plain-public
    action: allow
    from: { unauthenticated: { cidrs: [\"127.0.0.0/8\"] } }
    to: { labels.app: api }
    http: { paths: [\"/public/**\"] }
"
    .to_string()
}

/// Python's `http.server`, keep-alive, with two common lenient habits:
/// `do_HEAD = do_GET` (a `HEAD` answer that carries the body), and a body
/// written after the head has been flushed (a handler that computes or
/// streams its body: here `/public/echo?m=…` echoes `m`, 150 ms after its
/// head). `/public/switch` answers `101` and goes on reading HTTP (an app
/// that says it switched and did not). Every request it handles is logged
/// with its `x-appid-peer-id`.
const PYTHON_APP: &str = r#"
import http.server, sys, time, urllib.parse
log = open(sys.argv[1], "a", buffering=1)
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        line = "%s | peer=%s" % (self.requestline, self.headers.get("x-appid-peer-id"))
        log.write(line + "\n")
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/public/switch":
            self.wfile.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
            return
        if url.path == "/public/echo":
            body = urllib.parse.parse_qs(url.query)["m"][0].encode("latin-1")
        else:
            body = (line + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()          # flushed: the head goes out now
        if url.path == "/public/echo":
            time.sleep(0.15)        # the body is computed, then written
        self.wfile.write(body)
    do_HEAD = do_GET                # the common idiom: HEAD gets a body too
    do_POST = do_GET
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

async fn mesh(app: SocketAddr, mode: &'static str) -> Mesh {
    let policy = public_only_policy();
    Mesh::start(
        app,
        MeshOptions {
            server_policy: policy.clone(),
            client_policy: policy,
            server_tunnel: Some(mode),
            client_tunnel: Some(mode),
            ..MeshOptions::default()
        },
    )
    .await
}

fn entry_points(mesh: &Mesh) -> [(&'static str, SocketAddr); 2] {
    [
        ("meshed", mesh.outbound_addr()),
        ("plaintext", mesh.inbound_addr()),
    ]
}

/// Reads until the far side is quiet for `quiet` or closes.
async fn read_quiet(stream: &mut TcpStream, quiet: Duration) -> Vec<u8> {
    let mut back = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match tokio::time::timeout(quiet, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return back,
            Ok(Ok(n)) => back.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Percent-encodes everything but unreserved characters.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `HEAD /public/echo?m=<101 head>` is allowed; the app answers with a
/// head (relayed, bodiless as HEAD's answer is) and 150 ms later the
/// "body": `HTTP/1.1 101 Switching Protocols …`. Were those bytes left on
/// the idle connection, the client's next request, `GET /public/x` with
/// `Upgrade: websocket` (allowed), would be answered by the stale `101`
/// while Python answers it `200` and goes on reading HTTP; `GET /admin/x`
/// with a spoofed identity would then reach it unparsed. The app must never
/// run it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_101_from_the_app_opens_no_way_past_policy() {
    let app = ScriptApp::python(PYTHON_APP);
    let fake_101 =
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
    let head_request = format!(
        "HEAD /public/echo?m={} HTTP/1.1\r\nHost: api.test\r\n\r\n",
        encode(fake_101)
    );
    let upgrade = "GET /public/x HTTP/1.1\r\nHost: api.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let smuggled =
        format!("GET /admin/x HTTP/1.1\r\nHost: api.test\r\nx-appid-peer-id: {SPOOFED_ID}\r\n\r\n");
    let mut failures = Vec::new();
    for mode in ["pooled", "strict"] {
        let mesh = mesh(app.addr, mode).await;
        for (who, address) in entry_points(&mesh) {
            // The control: /admin/x as itself is denied.
            let mut control = TcpStream::connect(address).await.unwrap();
            control
                .write_all(b"GET /admin/x HTTP/1.1\r\nHost: api.test\r\n\r\n")
                .await
                .unwrap();
            let back = read_quiet(&mut control, Duration::from_millis(800)).await;
            assert!(back.starts_with(b"HTTP/1.1 403"), "[{mode} {who}] control");

            tokio::time::sleep(Duration::from_millis(300)).await;
            let admin_lines = |mesh: &Mesh| {
                [&mesh.client, &mesh.server]
                    .iter()
                    .flat_map(|s| s.audit_lines())
                    .filter(|l| l.to_string().contains("/admin/x"))
                    .count()
            };
            let admin_lines_before = admin_lines(&mesh);
            app.forget();
            let mut stream = TcpStream::connect(address).await.unwrap();
            stream.write_all(head_request.as_bytes()).await.unwrap();
            let mut back = read_quiet(&mut stream, Duration::from_millis(600)).await;
            stream.write_all(upgrade.as_bytes()).await.unwrap();
            back.extend(read_quiet(&mut stream, Duration::from_millis(600)).await);
            let _ = stream.write_all(smuggled.as_bytes()).await;
            back.extend(read_quiet(&mut stream, Duration::from_millis(800)).await);
            tokio::time::sleep(Duration::from_millis(300)).await;
            let seen = app.seen();
            if seen.contains("/admin/x") {
                // Allow lines are batched for up to 100 ms.
                tokio::time::sleep(Duration::from_millis(300)).await;
                let audited_admin = admin_lines(&mesh) > admin_lines_before;
                failures.push(format!(
                    "[{mode} {who}] the app ran GET /admin/x (audited: {audited_admin}).\n  app log:\n{seen}  caller got:\n{}",
                    String::from_utf8_lossy(&back)
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// The same stale bytes without an upgrade: a `HEAD` whose answer the app
/// follows with a body (150 ms later). Left on the idle connection, they
/// would answer the next request (`GET /public/y` getting `HTTP/1.1 200 OK
/// … STALE`), and a caller that pools connections (a gateway) would serve
/// one user's response to another. The sidecar notices bytes from the app
/// while no request is in flight and closes the connection (what hyper, Go
/// and Node clients do with an "unsolicited response on an idle
/// connection").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_bytes_from_the_app_never_answer_the_next_request() {
    let app = ScriptApp::python(PYTHON_APP);
    let stale = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nSTALE";
    let head_request = format!(
        "HEAD /public/echo?m={} HTTP/1.1\r\nHost: api.test\r\n\r\n",
        encode(stale)
    );
    let next = "GET /public/y HTTP/1.1\r\nHost: api.test\r\n\r\n";
    let mut failures = Vec::new();
    for mode in ["pooled", "strict"] {
        let mesh = mesh(app.addr, mode).await;
        for (who, address) in entry_points(&mesh) {
            let mut stream = TcpStream::connect(address).await.unwrap();
            stream.write_all(head_request.as_bytes()).await.unwrap();
            let _ = read_quiet(&mut stream, Duration::from_millis(600)).await;
            if stream.write_all(next.as_bytes()).await.is_err() {
                continue; // closed: fine
            }
            let back = read_quiet(&mut stream, Duration::from_millis(800)).await;
            let text = String::from_utf8_lossy(&back);
            if text.contains("STALE") {
                failures.push(format!(
                    "[{mode} {who}] GET /public/y was answered with the app's stale bytes:\n{text}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// The same, induced by the client alone against a stock handler (no
/// `HEAD` quirk): `GET /public/x` with a 3-byte body `x\r\n` (no request
/// line: the CL.0 guard rightly lets it pass). Python answers the GET,
/// then reads the unread body as its next request and answers it too
/// (`400 Bad request syntax ('x')`, and closes). That second answer arrives
/// after the sidecar finished relaying the first, so it waits on the idle
/// connection and becomes the answer to the next request on the client's
/// connection (for a gateway that pools connections, another user's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_induced_second_answer_never_answers_the_next_request() {
    let app = ScriptApp::python(PYTHON_APP);
    let first = "GET /public/x HTTP/1.1\r\nHost: api.test\r\nContent-Length: 3\r\n\r\nx\r\n";
    let next = "GET /public/y HTTP/1.1\r\nHost: api.test\r\n\r\n";
    let mut failures = Vec::new();
    for mode in ["pooled", "strict"] {
        let mesh = mesh(app.addr, mode).await;
        for (who, address) in entry_points(&mesh) {
            let mut hits = 0;
            for _ in 0..5 {
                let mut stream = TcpStream::connect(address).await.unwrap();
                stream.write_all(first.as_bytes()).await.unwrap();
                let _ = read_quiet(&mut stream, Duration::from_millis(300)).await;
                if stream.write_all(next.as_bytes()).await.is_err() {
                    continue;
                }
                let back = read_quiet(&mut stream, Duration::from_millis(500)).await;
                if String::from_utf8_lossy(&back).contains("Bad request syntax") {
                    hits += 1;
                }
            }
            if hits > 0 {
                failures.push(format!(
                    "[{mode} {who}] {hits}/5: GET /public/y was answered with the app's 400 to the previous request's body"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A raw app: for each connection, reads one request head, writes
/// `answer`, and then resets the connection (SO_LINGER 0) instead of
/// closing it: a crash in the middle of a close-delimited body.
async fn resetting_app(answer: &'static [u8]) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut chunk = [0u8; 4096];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = stream.write_all(answer).await;
                let _ = stream.flush().await;
                tokio::time::sleep(Duration::from_millis(100)).await;
                #[allow(deprecated)]
                let _ = stream.set_linger(Some(Duration::ZERO));
                drop(stream); // RST
            });
        }
    });
    addr
}

/// A response framed by the connection's close (no `content-length`, no
/// chunks) is complete only if the connection ends cleanly. The app
/// resets it half way (a crash): the client sees a reset too, or it would
/// take `partial` for the whole body (README: "An abort is passed on as
/// an abort … so a response cut short is never mistaken for a complete
/// one"). Without a sidecar the client gets ECONNRESET.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_in_a_close_delimited_body_reaches_the_client_as_a_reset() {
    let app = resetting_app(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\npartial").await;
    // The control: straight to the app, the client sees the reset.
    let mut direct = TcpStream::connect(app).await.unwrap();
    direct
        .write_all(b"GET /public/x HTTP/1.1\r\nHost: api.test\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let direct_end = tokio::time::timeout(Duration::from_secs(3), direct.read_to_end(&mut got))
        .await
        .unwrap();
    assert!(
        direct_end.is_err(),
        "control: no reset without a sidecar: {direct_end:?}"
    );

    let mut failures = Vec::new();
    for mode in ["pooled", "strict"] {
        let mesh = mesh(app, mode).await;
        for (who, address) in entry_points(&mesh) {
            let mut stream = TcpStream::connect(address).await.unwrap();
            stream
                .write_all(b"GET /public/x HTTP/1.1\r\nHost: api.test\r\n\r\n")
                .await
                .unwrap();
            let mut got = Vec::new();
            let end = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut got))
                .await
                .expect("the connection ends");
            if end.is_ok() {
                failures.push(format!(
                    "[{mode} {who}] the app reset the connection mid-body; the client saw a clean close after {:?}",
                    String::from_utf8_lossy(&got)
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Node closes a keep-alive connection idle for `keepAliveTimeout` (5 s by
/// default; 300 ms here). The sidecar passes the close on, so the client's
/// next request goes on a new connection; left open, the connection would
/// answer it `502` (a request never delivered, which a client retries only
/// on a connection closed while idle).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_closing_an_idle_connection_does_not_cost_the_next_request_a_502() {
    let script = r#"
const http = require('http');
const server = http.createServer((req, res) => { res.setHeader('content-length', 3); res.end('ok\n'); });
server.keepAliveTimeout = 300;
server.listen(0, '127.0.0.1', () => console.log(server.address().port));
"#;
    let node = ScriptApp::start("node", "-e", script);
    let app = node.addr;
    let mut failures = Vec::new();
    for mode in ["pooled", "strict"] {
        let mesh = mesh(app, mode).await;
        for (who, address) in entry_points(&mesh) {
            let mut stream = TcpStream::connect(address).await.unwrap();
            let request = b"GET /public/x HTTP/1.1\r\nHost: api.test\r\n\r\n";
            stream.write_all(request).await.unwrap();
            let first = read_quiet(&mut stream, Duration::from_millis(200)).await;
            assert!(
                first.starts_with(b"HTTP/1.1 200"),
                "[{mode} {who}] {first:?}"
            );
            // Node closes at keepAliveTimeout plus its own margin (about 1 s).
            tokio::time::sleep(Duration::from_millis(2500)).await;
            if stream.write_all(request).await.is_err() {
                continue;
            }
            let second = read_quiet(&mut stream, Duration::from_millis(800)).await;
            if second.starts_with(b"HTTP/1.1 502") {
                failures.push(format!(
                    "[{mode} {who}] after the app closed the idle connection, the next request got: {:?}",
                    String::from_utf8_lossy(&second)
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// An app that answers an upgrade request `101` and goes on reading HTTP
/// (it said it switched; it did not). After a `101` the client's bytes are
/// the new protocol's (WebSocket frames), never an HTTP request line: one
/// is cut before the app gets it, and audited, with the bytes that
/// followed the upgrade request (pipelined) or sent after the `101`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_request_after_a_101_never_reaches_the_app() {
    let app = ScriptApp::python(PYTHON_APP);
    let upgrade = "GET /public/switch HTTP/1.1\r\nHost: api.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let smuggled =
        format!("GET /admin/x HTTP/1.1\r\nHost: api.test\r\nx-appid-peer-id: {SPOOFED_ID}\r\n\r\n");
    let mut failures = Vec::new();
    for mode in ["pooled", "strict"] {
        let mesh = mesh(app.addr, mode).await;
        for (who, address) in entry_points(&mesh) {
            for pipelined in [false, true] {
                app.forget();
                let mut stream = TcpStream::connect(address).await.unwrap();
                let mut back = Vec::new();
                if pipelined {
                    let both = format!("{upgrade}{smuggled}");
                    stream.write_all(both.as_bytes()).await.unwrap();
                } else {
                    stream.write_all(upgrade.as_bytes()).await.unwrap();
                    back = read_quiet(&mut stream, Duration::from_millis(500)).await;
                    assert!(
                        back.starts_with(b"HTTP/1.1 101"),
                        "[{mode} {who}] the app's 101 is relayed: {:?}",
                        String::from_utf8_lossy(&back)
                    );
                    let _ = stream.write_all(smuggled.as_bytes()).await;
                }
                back.extend(read_quiet(&mut stream, Duration::from_millis(800)).await);
                tokio::time::sleep(Duration::from_millis(200)).await;
                let seen = app.seen();
                if seen.contains("/admin/x") || !seen.contains("/public/switch") {
                    failures.push(format!(
                        "[{mode} {who} pipelined={pipelined}] app log:\n{seen}  caller got:\n{}",
                        String::from_utf8_lossy(&back)
                    ));
                }
            }
        }
        let audited = [&mesh.client, &mesh.server]
            .iter()
            .flat_map(|s| s.audit_lines())
            .filter(|l| l.to_string().contains("after 101 Switching Protocols"))
            .count();
        if audited < 4 {
            failures.push(format!(
                "[{mode}] {audited} audit lines for the cut requests, not 4"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
