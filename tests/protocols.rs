//! Protocol fidelity through a sidecar pair, in both tunnel modes (issue
//! 12): server-first protocols, half-close, aborts, idle timeouts, a late
//! first request, and real third-party clients and servers (redis).
//!
//! ```text
//! client ──▶ client sidecar ══ mTLS (pooled or strict) ══▶ server sidecar ──▶ app
//! ```
//!
//! Time bounds here are functional, not performance: each one sits far
//! below the wait it proves is gone (the detection timeout, the 5 s linger,
//! an idle timeout), so a slow machine does not fail them.

#[path = "support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use support::mesh::{Mesh, MeshOptions, WEB_TO_API};
use support::sidecar::has;
use support::{apps, clients};

const MODES: [&str; 2] = ["pooled", "strict"];

/// The detection timeout the pairs run with: long, so that waiting for it
/// anywhere would show.
const DETECT_TIMEOUT: &str = "10s";

/// A pair in `mode` in front of `app`, with `policy` on both sides.
async fn pair(app: SocketAddr, mode: &'static str, policy: &str) -> Mesh {
    pair_with(app, mode, policy, None, Vec::new()).await
}

async fn pair_with(
    app: SocketAddr,
    mode: &'static str,
    policy: &str,
    port: Option<(&'static str, Option<&'static str>)>,
    limits: Vec<(&'static str, &'static str)>,
) -> Mesh {
    let mut all_limits = vec![("detect_timeout", DETECT_TIMEOUT)];
    all_limits.extend(limits);
    Mesh::start(
        app,
        MeshOptions {
            server_policy: policy.into(),
            client_policy: policy.into(),
            server_limits: all_limits.clone(),
            client_limits: all_limits,
            server_tunnel: Some(mode),
            client_tunnel: Some(mode),
            port,
            ..MeshOptions::default()
        },
    )
    .await
}

/// A banner protocol gets its banner through the pair at once: with no
/// config when no `http` rule applies to the port, and when one does but
/// an allow rule says `to.protocol: tcp` (the connection is allowed as TCP
/// whatever it carries: nothing to detect).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_first_protocols_get_their_banner_without_waiting() {
    let app = apps::banner_server().await;
    let (direct, _) = clients::first_byte(app).await;
    let with_http_rule = "\
version: 1
default: deny
rules:
  - name: web-http
    action: allow
    from: { labels.app: web }
    to: { labels.app: api }
    http: { paths: [\"/public/**\"] }
  - name: web-tcp
    action: allow
    from: { labels.app: web }
    to: { labels.app: api, protocol: tcp }
";
    for mode in MODES {
        for (what, policy) in [
            ("L4 policy", WEB_TO_API),
            ("http rule + tcp", with_http_rule),
        ] {
            let mesh = pair(app, mode, policy).await;
            let (took, banner) = clients::first_byte(mesh.outbound_addr()).await;
            // Printed, not asserted (bench/ measures): later connections,
            // with a tunnel already open in pooled mode.
            let mut later = Vec::new();
            for _ in 0..5 {
                later.push(clients::first_byte(mesh.outbound_addr()).await.0);
            }
            later.sort();
            eprintln!(
                "{mode}, {what}: banner after {took:?}, then a median of {:?} (direct {direct:?})",
                later[2]
            );
            assert_eq!(banner, b"220 banner.test ready\r\n", "{}", mesh.context());
            assert!(
                took < Duration::from_secs(3),
                "{mode}, {what}: the banner waited {took:?} (detection timeout {DETECT_TIMEOUT})\n{}",
                mesh.context()
            );
        }
    }
}

/// A port declared `tcp` is never waited on, whatever the policy (here a
/// policy whose only allow rule for the port is `to.protocol: tcp`, next
/// to an HTTP deny rule).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_declared_tcp_is_not_detected() {
    let app = apps::banner_server().await;
    let policy = "\
version: 1
default: deny
rules:
  - name: no-admin
    action: deny
    from: { labels.app: web }
    to: { labels.app: api }
    http: { paths: [\"/admin/**\"] }
  - name: web-tcp
    action: allow
    from: { labels.app: web }
    to: { labels.app: api, protocol: tcp }
";
    for mode in MODES {
        let mesh = pair_with(app, mode, policy, Some(("tcp", None)), Vec::new()).await;
        let (took, banner) = clients::first_byte(mesh.outbound_addr()).await;
        assert_eq!(banner, b"220 banner.test ready\r\n", "{}", mesh.context());
        assert!(took < Duration::from_secs(3), "{mode}: {took:?}");
        let line = mesh
            .server
            .wait_audit("the server's decision", |l| has(l, "direction", "inbound"))
            .await;
        assert_eq!(line["protocol"], "tcp");
        assert_eq!(line["rule"], "web-tcp");
    }
}

/// A port declared `tcp` carries no HTTP (README, "Declared in the
/// config"): a request line sent on it — it could carry forged
/// `x-appid-*` headers past every check — is cut before the app gets it,
/// and the closure is audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_on_a_port_declared_tcp_is_cut_and_audited() {
    let app = support::apps::HttpApp::start().await;
    for mode in MODES {
        let mesh = pair_with(app.addr, mode, WEB_TO_API, Some(("tcp", None)), Vec::new()).await;
        let mut stream = TcpStream::connect(mesh.outbound_addr()).await.unwrap();
        stream
            .write_all(b"GET /x HTTP/1.1\r\nHost: api\r\nx-appid-peer-id: spiffe://forged\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
        assert!(
            read.is_ok() && answer.is_empty(),
            "{mode}: {read:?} {}\n{}",
            String::from_utf8_lossy(&answer),
            mesh.context()
        );
        assert_eq!(
            app.state.requests.load(Ordering::SeqCst),
            0,
            "{mode}: the request reached the app\n{}",
            mesh.context()
        );
        mesh.client
            .wait_audit("the client sidecar's closure", |l| {
                l["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("request line on a connection decided as TCP"))
            })
            .await;
    }
}

/// A server that reads its client to the end, then answers and closes.
async fn answer_at_eof_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut got = Vec::new();
                if stream.read_to_end(&mut got).await.is_ok() {
                    let answer = format!("got {} bytes\n", got.len());
                    let _ = stream.write_all(answer.as_bytes()).await;
                }
            });
        }
    });
    addr
}

/// `nc -N host port </dev/null`: a client that closes its side before
/// sending a byte still reaches the server (which answers), and the
/// connection is decided and audited on both sides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_close_before_the_first_byte_is_proxied() {
    let app = answer_at_eof_server().await;
    for mode in MODES {
        let mesh = pair(app, mode, WEB_TO_API).await;
        let mut stream = TcpStream::connect(mesh.outbound_addr()).await.unwrap();
        stream.shutdown().await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut answer))
            .await
            .expect("an answer within 30 s")
            .unwrap();
        assert_eq!(answer, b"got 0 bytes\n", "{mode}\n{}", mesh.context());
        for (sidecar, direction) in [(&mesh.client, "outbound"), (&mesh.server, "inbound")] {
            let line = sidecar
                .wait_audit("the decision", |l| has(l, "direction", direction))
                .await;
            assert_eq!(line["decision"], "allow");
            assert_eq!(line["protocol"], "tcp");
        }
    }
}

/// A server that streams to its client until a write fails, and records
/// when that was.
async fn streaming_server(failed_at: Arc<AtomicU64>, epoch: Instant) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let failed_at = failed_at.clone();
            tokio::spawn(async move {
                let chunk = [b'x'; 1024];
                loop {
                    if stream.write_all(&chunk).await.is_err() {
                        failed_at.store(epoch.elapsed().as_millis() as u64, Ordering::SeqCst);
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            });
        }
    });
    addr
}

/// A client that goes away mid-response is noticed by the app promptly
/// (its writes fail), in both modes — not after the tunnel's 5 s linger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_is_noticed_by_the_app_promptly() {
    let epoch = Instant::now();
    let failed_at = Arc::new(AtomicU64::new(0));
    let app = streaming_server(failed_at.clone(), epoch).await;
    for mode in MODES {
        failed_at.store(0, Ordering::SeqCst);
        let mesh = pair(app, mode, WEB_TO_API).await;
        let mut stream = TcpStream::connect(mesh.outbound_addr()).await.unwrap();
        let mut buf = [0u8; 4096];
        let mut got = 0;
        while got < 8192 {
            got += stream.read(&mut buf).await.unwrap();
        }
        drop(stream);
        let closed_at = epoch.elapsed();
        let noticed = support::poll_until(
            "the app's write to fail",
            Duration::from_secs(15),
            || mesh.context(),
            || async {
                let at = failed_at.load(Ordering::SeqCst);
                (at > 0).then(|| Duration::from_millis(at))
            },
        )
        .await;
        let after = noticed.saturating_sub(closed_at);
        eprintln!("{mode}: the app noticed {after:?} after the client closed");
        assert!(
            after < Duration::from_millis(2500),
            "{mode}: the app noticed after {after:?}\n{}",
            mesh.context()
        );
    }
}

/// A server that sends 8 KiB, then aborts the connection (RST) and records
/// when.
async fn aborting_server(aborted_at: Arc<AtomicU64>, epoch: Instant) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let aborted_at = aborted_at.clone();
            tokio::spawn(async move {
                let _ = stream.write_all(&[b'x'; 8192]).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
                let _ = stream.set_zero_linger();
                aborted_at.store(epoch.elapsed().as_millis() as u64, Ordering::SeqCst);
                drop(stream);
            });
        }
    });
    addr
}

/// An app that aborts mid-response is seen by the client promptly, in both
/// modes, as a reset rather than a clean end (so it can tell the response
/// was cut short), after every byte the app sent before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_that_aborts_is_seen_by_the_client_promptly() {
    let epoch = Instant::now();
    let aborted_at = Arc::new(AtomicU64::new(0));
    let app = aborting_server(aborted_at.clone(), epoch).await;
    for mode in MODES {
        let mesh = pair(app, mode, WEB_TO_API).await;
        let mut stream = TcpStream::connect(mesh.outbound_addr()).await.unwrap();
        let mut buf = [0u8; 4096];
        let mut got = 0;
        let ended = loop {
            match tokio::time::timeout(Duration::from_secs(15), stream.read(&mut buf))
                .await
                .expect("the connection to end within 15 s")
            {
                Ok(0) => break Ok(()),
                Ok(n) => got += n,
                Err(e) => break Err(e),
            }
        };
        let seen = epoch.elapsed();
        let after = seen.saturating_sub(Duration::from_millis(aborted_at.load(Ordering::SeqCst)));
        eprintln!("{mode}: the client saw {ended:?} {after:?} after the app aborted ({got} bytes)");
        assert_eq!(
            got,
            8192,
            "{mode}: everything before the abort arrives\n{}",
            mesh.context()
        );
        assert!(
            ended.is_err(),
            "{mode}: the abort reached the client as a clean end\n{}",
            mesh.context()
        );
        assert!(
            after < Duration::from_millis(2500),
            "{mode}: the client saw the abort after {after:?}\n{}",
            mesh.context()
        );
    }
}

/// A server that reads until its client's end and reports what it saw:
/// the bytes, and whether the end was a reset.
async fn end_reporting_server() -> (SocketAddr, tokio::sync::mpsc::Receiver<(usize, bool)>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let mut got = 0;
                let reset = loop {
                    match stream.read(&mut buf).await {
                        Ok(0) => break false,
                        Ok(n) => got += n,
                        Err(e) => break e.kind() == std::io::ErrorKind::ConnectionReset,
                    }
                };
                let _ = tx.send((got, reset)).await;
            });
        }
    });
    (addr, rx)
}

/// A client that aborts its connection: the app sees a reset too, after
/// every byte the client sent before it, in both modes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_aborts_is_seen_by_the_app_as_a_reset() {
    let (app, mut ends) = end_reporting_server().await;
    for mode in MODES {
        let mesh = pair(app, mode, WEB_TO_API).await;
        let mut stream = TcpStream::connect(mesh.outbound_addr()).await.unwrap();
        stream.write_all(&[b'x'; 8192]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        stream.set_zero_linger().unwrap();
        drop(stream);
        let (got, reset) = tokio::time::timeout(Duration::from_secs(15), ends.recv())
            .await
            .expect("the app to see the end within 15 s")
            .unwrap();
        assert_eq!(got, 8192, "{mode}\n{}", mesh.context());
        assert!(
            reset,
            "{mode}: the client's abort reached the app as a clean end\n{}",
            mesh.context()
        );
    }
}

const UPGRADE_REQUEST: &[u8] =
    b"GET /ws HTTP/1.1\r\nhost: api\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n";
const SWITCHING: &[u8] =
    b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n";

/// Reads up to the end of an HTTP head.
async fn read_head(stream: &mut TcpStream) -> Vec<u8> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await.unwrap_or(0) == 0 {
            break;
        }
        head.push(byte[0]);
    }
    head
}

/// After a `101`, an abort is passed on as an abort both ways, as on a
/// plain TCP connection (a WebSocket cut short is not a clean close): the
/// app aborting reaches the client as a reset after every byte before it,
/// and the client aborting reaches the app as a reset. Both modes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborts_cross_an_upgraded_connection_as_resets() {
    // The app: answers the upgrade; on `/ws` sends 8 KiB then aborts, and
    // reports what it saw of the client's end.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = listener.local_addr().unwrap();
    let (tx, mut ends) = tokio::sync::mpsc::channel::<(usize, bool)>(4);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let head = read_head(&mut stream).await;
                stream.write_all(SWITCHING).await.unwrap();
                if head.starts_with(b"GET /ws ") {
                    let _ = stream.write_all(&[b'x'; 8192]).await;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let _ = stream.set_zero_linger();
                    return;
                }
                let mut buf = [0u8; 4096];
                let mut got = 0;
                let reset = loop {
                    match stream.read(&mut buf).await {
                        Ok(0) => break false,
                        Ok(n) => got += n,
                        Err(e) => break e.kind() == std::io::ErrorKind::ConnectionReset,
                    }
                };
                let _ = tx.send((got, reset)).await;
            });
        }
    });
    for mode in MODES {
        let mesh = pair(app, mode, WEB_TO_API).await;

        // The app aborts.
        let mut stream = TcpStream::connect(mesh.outbound_addr()).await.unwrap();
        stream.write_all(UPGRADE_REQUEST).await.unwrap();
        let head = read_head(&mut stream).await;
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "{mode}: {}",
            String::from_utf8_lossy(&head)
        );
        let mut buf = [0u8; 4096];
        let mut got = 0;
        let ended = loop {
            match tokio::time::timeout(Duration::from_secs(15), stream.read(&mut buf))
                .await
                .expect("the connection to end within 15 s")
            {
                Ok(0) => break Ok(()),
                Ok(n) => got += n,
                Err(e) => break Err(e),
            }
        };
        assert_eq!(
            got,
            8192,
            "{mode}: everything before the abort\n{}",
            mesh.context()
        );
        assert!(
            ended.is_err(),
            "{mode}: the app's abort reached the client as a clean end\n{}",
            mesh.context()
        );

        // The client aborts (on `/in`, where the app listens).
        let mut stream = TcpStream::connect(mesh.outbound_addr()).await.unwrap();
        stream
            .write_all(&[b"GET /in ", &UPGRADE_REQUEST[8..]].concat())
            .await
            .unwrap();
        let head = read_head(&mut stream).await;
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "{mode}: {}",
            String::from_utf8_lossy(&head)
        );
        stream.write_all(&[b'y'; 4096]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        stream.set_zero_linger().unwrap();
        drop(stream);
        let (got, reset) = tokio::time::timeout(Duration::from_secs(15), ends.recv())
            .await
            .expect("the app to see the end within 15 s")
            .unwrap();
        assert_eq!(got, 4096, "{mode}\n{}", mesh.context());
        assert!(
            reset,
            "{mode}: the client's abort reached the app as a clean end\n{}",
            mesh.context()
        );
    }
}

/// Echoes until the client closes.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
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

async fn echo(stream: &mut TcpStream, message: &[u8]) -> std::io::Result<Vec<u8>> {
    stream.write_all(message).await?;
    let mut got = vec![0u8; message.len()];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut got))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    Ok(got)
}

/// An idle TCP session outlives the HTTP idle timeout (TCP has its own,
/// 1 h by default); a port's own `idle_timeout` closes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_sessions_idle_out_on_their_own_timeout() {
    let app = echo_server().await;
    for mode in MODES {
        let short_http = vec![("http_idle_timeout", "1s")];
        let mesh = pair_with(app, mode, WEB_TO_API, None, short_http.clone()).await;
        let mut session = TcpStream::connect(mesh.outbound_addr()).await.unwrap();
        assert_eq!(echo(&mut session, b"ping\n").await.unwrap(), b"ping\n");
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(
            echo(&mut session, b"still there?\n").await.unwrap(),
            b"still there?\n",
            "{mode}: an idle TCP session was cut at the HTTP idle timeout\n{}",
            mesh.context()
        );
        drop(mesh);

        let mesh = pair_with(app, mode, WEB_TO_API, Some(("tcp", Some("1s"))), short_http).await;
        let mut session = TcpStream::connect(mesh.outbound_addr()).await.unwrap();
        assert_eq!(echo(&mut session, b"ping\n").await.unwrap(), b"ping\n");
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(15), session.read_to_end(&mut rest));
        assert!(
            closed.await.is_ok(),
            "{mode}: not closed at the port's idle timeout"
        );
    }
}

/// An HTTP client that connects first and sends its request later than the
/// detection timeout (pre-warmed pools) is served, on a port where an
/// `http` rule applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_first_request_is_served() {
    let app = support::apps::HttpApp::start().await;
    let policy = "\
version: 1
default: deny
rules:
  - name: web-public
    action: allow
    from: { labels.app: web }
    to: { labels.app: api }
    http: { paths: [\"/public/**\"] }
";
    for mode in MODES {
        let mesh = pair_with(app.addr, mode, policy, None, vec![("detect_timeout", "1s")]).await;
        let mut stream = TcpStream::connect(mesh.outbound_addr()).await.unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        stream
            .write_all(b"GET /public/late HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
            .await
            .expect("an answer")
            .unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "{mode}: {answer}\n{}",
            mesh.context()
        );
    }
}

/// A local redis-server, killed on drop.
struct Redis {
    child: std::process::Child,
    addr: SocketAddr,
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn need(tool: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "`{tool}` is needed for this test: apt-get install -y {package} (.ci/run installs it)"
    );
}

async fn redis_server() -> Redis {
    need("redis-server", "redis-server");
    let port = support::net::free_port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-server");
    let addr = support::net::local(port);
    let redis = Redis { child, addr };
    support::poll_until(
        "redis-server to listen",
        Duration::from_secs(10),
        String::new,
        || async { TcpStream::connect(addr).await.ok().map(|_| ()) },
    )
    .await;
    redis
}

fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("run redis-cli");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// redis-cli through the pair to a real redis-server: commands, a
/// pipeline of 1 000, and a pub/sub subscriber that gets a message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_through_the_pair() {
    need("redis-cli", "redis-tools");
    let redis = redis_server().await;
    for mode in MODES {
        let mesh = pair(redis.addr, mode, WEB_TO_API).await;
        let port = mesh.outbound;
        assert_eq!(
            redis_cli(port, &["SET", "k", mode]),
            "OK",
            "{}",
            mesh.context()
        );
        assert_eq!(redis_cli(port, &["GET", "k"]), mode);
        let pipeline = format!("INCR n{mode}\n").repeat(1000);
        let mut child = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "--pipe"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(pipeline.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let out = String::from_utf8_lossy(&out.stdout);
        assert!(out.contains("errors: 0, replies: 1000"), "{out}");
        assert_eq!(redis_cli(port, &["GET", &format!("n{mode}")]), "1000");

        // Pub/sub: a long-lived subscriber through the pair.
        let mut subscriber = Command::new("redis-cli")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "SUBSCRIBE",
                "news",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut delivered = String::new();
        let stdout = subscriber.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            use std::io::Read as _;
            let mut stdout = stdout;
            let mut buf = [0u8; 4096];
            let mut all = String::new();
            while !all.contains("hello") {
                match stdout.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => all.push_str(&String::from_utf8_lossy(&buf[..n])),
                }
            }
            all
        });
        support::poll_until(
            "the subscriber to get the message",
            Duration::from_secs(15),
            || mesh.context(),
            || async {
                let receivers = redis_cli(port, &["PUBLISH", "news", "hello"]);
                (receivers == "1").then_some(())
            },
        )
        .await;
        // The reader ends once it has seen the message.
        delivered.push_str(&reader.join().unwrap());
        let _ = subscriber.kill();
        let _ = subscriber.wait();
        assert!(delivered.contains("hello"), "{delivered}");
    }
}

/// A PostgreSQL server of its own (initdb into a temp dir), stopped on drop.
struct Postgres {
    child: std::process::Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `program` as the `postgres` user when we are root (PostgreSQL
/// refuses to run as root), else as ourselves.
fn as_postgres(program: &std::path::Path) -> Command {
    if rustix::process::geteuid().is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

async fn postgres_server() -> Postgres {
    let bin = std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .and_then(|versions| versions.flatten().map(|v| v.path().join("bin")).max())
        .filter(|bin| bin.join("initdb").exists());
    let Some(bin) = bin else {
        panic!(
            "PostgreSQL is needed for this test: apt-get install -y postgresql (.ci/run installs it)"
        );
    };
    let dir = tempfile::tempdir().unwrap();
    if rustix::process::geteuid().is_root() {
        let uid = Command::new("id")
            .args(["-u", "postgres"])
            .output()
            .unwrap();
        let uid: u32 = String::from_utf8_lossy(&uid.stdout).trim().parse().unwrap();
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(uid)).unwrap();
    }
    let data = dir.path().join("data");
    let init = as_postgres(&bin.join("initdb"))
        .arg("-D")
        .arg(&data)
        .args(["-U", "postgres", "--auth=trust", "-E", "UTF8"])
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "initdb: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    let port = support::net::free_port();
    let child = as_postgres(&bin.join("postgres"))
        .arg("-D")
        .arg(&data)
        .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
        .arg("-k")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr = support::net::local(port);
    let server = Postgres {
        child,
        addr,
        _dir: dir,
    };
    support::poll_until(
        "PostgreSQL to listen",
        Duration::from_secs(30),
        String::new,
        || async { TcpStream::connect(addr).await.ok().map(|_| ()) },
    )
    .await;
    server
}

/// psql through the pair to a real PostgreSQL: a query, and a session that
/// idles past the HTTP idle timeout (1 s here) between two queries — TCP
/// sessions idle out on their own timeout (1 h by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_through_the_pair() {
    need("psql", "postgresql-client");
    let postgres = postgres_server().await;
    for mode in MODES {
        let mesh = pair_with(
            postgres.addr,
            mode,
            WEB_TO_API,
            None,
            vec![("http_idle_timeout", "1s")],
        )
        .await;
        let port = mesh.outbound.to_string();
        let psql = |script: &str| {
            let out = Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "{script} | psql -X -At -h 127.0.0.1 -p {port} -U postgres -v ON_ERROR_STOP=1"
                ))
                .output()
                .unwrap();
            (
                String::from_utf8_lossy(&out.stdout).trim().to_string(),
                String::from_utf8_lossy(&out.stderr).to_string(),
            )
        };
        let (out, err) = psql("echo 'select 40 + 2;'");
        assert_eq!(out, "42", "{mode}: {err}\n{}", mesh.context());
        let (out, err) = psql("(echo 'select 1;'; sleep 3; echo 'select 2;')");
        assert_eq!(
            out,
            "1\n2",
            "{mode}: an idle session was cut: {err}\n{}",
            mesh.context()
        );
    }
}

/// WebSocket with real clients and servers (Python `websockets`) through
/// the pair: an upgrade, text, a 4 MiB binary message, 100 small ones, and
/// a clean close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_through_the_pair() {
    let python = support::python_with("websockets", "python3-websockets");
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/websocket");
    let mut server = Command::new(python)
        .arg(format!("{dir}/server.py"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the WebSocket server");
    let port: u16 = {
        use std::io::BufRead as _;
        let mut line = String::new();
        std::io::BufReader::new(server.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        line.trim().parse().expect("the server's port")
    };
    for mode in MODES {
        let mesh = pair(support::net::local(port), mode, WEB_TO_API).await;
        let out = Command::new(python)
            .arg(format!("{dir}/client.py"))
            .arg(mesh.outbound_addr().to_string())
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "ok",
            "{mode}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            mesh.context()
        );
    }
    let _ = server.kill();
    let _ = server.wait();
}

/// HTTP/2 with nghttp2's own clients through the pair: `nghttp` (one
/// connection, concurrent streams) and `h2load` (1 000 requests over 4
/// connections, 10 streams each): every request answered 200, none failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nghttp2_clients_through_the_pair() {
    need("h2load", "nghttp2-client");
    let app = support::apps::HttpApp::start().await;
    for mode in MODES {
        let mesh = pair(app.addr, mode, WEB_TO_API).await;
        let urls: Vec<String> = (0..10)
            .map(|i| mesh.url(&format!("/v1/items/{i}")))
            .collect();
        let out = Command::new("nghttp")
            .args(["-n", "--stat"])
            .args(&urls)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{mode}: nghttp: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            mesh.context()
        );
        let out = Command::new("h2load")
            .args(["-n", "1000", "-c", "4", "-m", "10"])
            .arg(mesh.url("/v1/orders"))
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&out.stdout);
        assert!(
            report.contains("1000 succeeded, 0 failed, 0 errored")
                && report.contains("status codes: 1000 2xx"),
            "{mode}: {report}\n{}",
            mesh.context()
        );
    }
}

/// An HTTP/2-only app (gRPC servers, hyper's `http2` server) greets every
/// connection with its SETTINGS before its client's preface arrives. On a
/// port allowed as TCP (whoever speaks first decides) that greeting made
/// the connection opaque, and the client's preface — `PRI * HTTP/2.0`, an
/// HTTP/1 request line to the guard — was cut: every connection whose
/// client was slower than the app's greeting failed. The client here waits
/// 100 ms before its preface, so the greeting always comes first; the
/// requests must then be served and decided one by one at L7 (`/admin` is
/// denied by its HTTP rule, on the same connection as an allowed request).
/// Then `nghttp` (no wait) on 10 connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_app_that_greets_first_is_served_at_l7_on_a_port_allowed_as_tcp() {
    need("nghttp", "nghttp2-client");
    let app = support::apps::HttpApp::start_h2_only().await;
    let policy = "\
version: 1
default: deny
rules:
  - name: no-admin
    action: deny
    from: { labels.app: web }
    to: { labels.app: api }
    http: { paths: [\"/admin/**\"] }
  - name: web-http
    action: allow
    from: { labels.app: web }
    to: { labels.app: api }
    http: { paths: [\"/public/**\"] }
  - name: web-tcp
    action: allow
    from: { labels.app: web }
    to: { labels.app: api, protocol: tcp }
";
    for mode in MODES {
        let mesh = pair(app.addr, mode, policy).await;
        for round in 0..3 {
            let tcp = TcpStream::connect(mesh.outbound_addr()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            let (mut sender, conn) = hyper::client::conn::http2::handshake(
                hyper_util::rt::TokioExecutor::new(),
                hyper_util::rt::TokioIo::new(tcp),
            )
            .await
            .unwrap_or_else(|e| {
                panic!("{mode}, round {round}: handshake: {e}\n{}", mesh.context())
            });
            let driver = tokio::spawn(conn);
            for (path, want) in [("/public/x", 200), ("/admin/x", 403), ("/public/y", 200)] {
                let request = http::Request::get(format!("http://api.test{path}"))
                    .body(http_body_util::Empty::<bytes::Bytes>::new())
                    .unwrap();
                let response = sender.send_request(request).await.unwrap_or_else(|e| {
                    panic!("{mode}, round {round}, {path}: {e}\n{}", mesh.context())
                });
                assert_eq!(
                    response.status().as_u16(),
                    want,
                    "{mode}, round {round}, {path}\n{}",
                    mesh.context()
                );
                if want == 403 {
                    assert_eq!(
                        response.headers()["x-appid-denied-by"],
                        "no-admin",
                        "{mode}: decided by the HTTP rule"
                    );
                }
            }
            drop(sender);
            let _ = driver.await;
        }
        let urls: Vec<String> = (0..10).map(|i| mesh.url(&format!("/public/{i}"))).collect();
        for _ in 0..10 {
            let out = Command::new("nghttp")
                .args(["-n", "--stat"])
                .args(&urls)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{mode}: nghttp: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                mesh.context()
            );
        }
    }
}

/// A port declared `http` is waited on as HTTP: a client that connects and
/// says nothing costs the app no connection (undeclared, with a policy
/// that allows TCP, the sidecar would connect at once to let a
/// server-first protocol speak), and its late request is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_declared_http_waits_for_the_request_before_dialling() {
    for (declared, dialled_early) in [(Some(("http", None)), false), (None, true)] {
        let app = support::apps::HttpApp::start().await;
        let mesh = pair_with(app.addr, "strict", WEB_TO_API, declared, Vec::new()).await;
        let mut stream = TcpStream::connect(mesh.outbound_addr()).await.unwrap();
        let dialled = support::poll_until(
            "the app to be dialled, or a second to pass",
            Duration::from_secs(5),
            || mesh.context(),
            || async {
                let n = app.state.connections.load(Ordering::SeqCst);
                (n > 0 || !dialled_early).then_some(n > 0)
            },
        )
        .await;
        if !dialled_early {
            tokio::time::sleep(Duration::from_secs(1)).await;
            assert_eq!(
                app.state.connections.load(Ordering::SeqCst),
                0,
                "declared http: the app was dialled for a silent client\n{}",
                mesh.context()
            );
        } else {
            assert!(dialled, "undeclared: the server side is connected at once");
        }
        stream
            .write_all(b"GET /late HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
            .await
            .expect("an answer")
            .unwrap();
        assert!(
            String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"),
            "{}",
            mesh.context()
        );
    }
}
