use std::sync::Mutex;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::*;
use crate::metrics::Direction;

fn probes(json: &str) -> AppProbes {
    AppProbes::parse(json).unwrap()
}

#[test]
fn routes_only_the_shared_endpoints_and_configured_probes() {
    let p = probes(r#"{"/app-health/web/livez": {"tcpSocket": {"port": 8080}}}"#);
    for path in ["/live", "/ready", "/metrics"] {
        assert_eq!(route(path, &p), Route::Shared, "{path}");
    }
    assert!(matches!(route("/app-health/web/livez", &p), Route::App(_)));
    for path in [
        "/config",
        "/appid",
        "/",
        "/app-health/web/readyz",
        "/app-health/web/livez/",
        "/app-health/other/livez",
        "/APP-HEALTH/web/livez",
        "/live/",
        "/metrics.json",
    ] {
        assert_eq!(route(path, &p), Route::NotFound, "{path}");
    }
}

/// A one-request-per-connection app: reads a request head, records it, and
/// answers `status` with `body` (or never answers when `status` is 0).
struct App {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn app(status: u16, body: &'static str) -> App {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = heads.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.ends_with(b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                seen.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&head).into_owned());
                if status == 0 {
                    std::future::pending::<()>().await;
                }
                let reply = format!(
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nLocation: http://elsewhere/\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(reply.as_bytes()).await;
            });
        }
    });
    App { addr, heads, task }
}

struct Reply {
    status: u16,
    headers: String,
    body: String,
}

async fn request(addr: SocketAddr, method: &str, path: &str) -> Reply {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req =
        format!("{method} {path} HTTP/1.1\r\nHost: pod\r\nUser-Agent: kube-probe/1.31\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("the health port closes after one request")
        .unwrap();
    let text = String::from_utf8(buf).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    Reply {
        status: head.split(' ').nth(1).unwrap().parse().unwrap(),
        headers: head.to_ascii_lowercase(),
        body: body.to_owned(),
    }
}

async fn start(probes: AppProbes) -> (SocketAddr, Arc<HealthState>) {
    let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let state = Arc::new(HealthState::new(
        Readiness::default(),
        Arc::new(Metrics::new()),
        probes,
    ));
    tokio::spawn(serve(listener, state.clone(), std::future::pending()));
    (addr, state)
}

#[tokio::test]
async fn shared_endpoints_answer_as_the_admin_api_and_nothing_else_is_served() {
    let (addr, state) = start(AppProbes::default()).await;
    let r = request(addr, "GET", "/live").await;
    assert_eq!((r.status, r.body.as_str()), (200, "live\n"));
    let r = request(addr, "GET", "/ready").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (503, "not ready: identity, policy, listeners\n")
    );
    state.readiness.set_identity_ready(true);
    state.readiness.set_policy_ready(true);
    state.readiness.set_listeners_ready(true);
    let r = request(addr, "GET", "/ready?verbose").await;
    assert_eq!((r.status, r.body.as_str()), (200, "ready\n"));
    state.metrics.connection_opened(Direction::Inbound);
    let r = request(addr, "GET", "/metrics").await;
    assert_eq!(r.status, 200);
    assert!(
        r.headers
            .contains("content-type: text/plain; version=0.0.4")
    );
    assert!(
        r.body
            .contains("appid_connections_opened_total{direction=\"inbound\"} 1\n"),
        "{}",
        r.body
    );
    let r = request(addr, "HEAD", "/live").await;
    assert_eq!((r.status, r.body.as_str()), (200, ""));
    assert!(r.headers.contains("connection: close"), "{}", r.headers);

    for path in ["/config", "/appid", "/", "/app-health/web/livez"] {
        let r = request(addr, "GET", path).await;
        assert_eq!(r.status, 404, "{path}");
        assert!(!r.body.contains("prod.example"), "{path}: {}", r.body);
    }
    let r = request(addr, "POST", "/ready").await;
    assert_eq!(r.status, 405);
    assert!(r.headers.contains("allow: get, head"), "{}", r.headers);
    let r = request(addr, "DELETE", "/config").await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn http_probes_pass_on_the_apps_status_and_nothing_else() {
    let ok = app(200, "fine").await;
    let broken = app(500, "on fire").await;
    let moved = app(302, "").await;
    let (addr, _state) = start(probes(&format!(
        r#"{{"/app-health/ok/livez": {{"httpGet": {{"path": "/healthz?x=1", "port": {ok},
               "httpHeaders": [{{"name": "User-Agent", "value": "mine"}}, {{"name": "X-A", "value": "1"}}, {{"name": "x-a", "value": "2"}}]}}}},
            "/app-health/broken/livez": {{"httpGet": {{"path": "/healthz", "port": {broken}}}}},
            "/app-health/moved/readyz": {{"httpGet": {{"port": {moved}}}}}}}"#,
        ok = ok.addr.port(),
        broken = broken.addr.port(),
        moved = moved.addr.port(),
    )))
    .await;

    let r = request(addr, "GET", "/app-health/ok/livez").await;
    assert_eq!((r.status, r.body.as_str()), (200, "fine"));
    let head = ok.heads.lock().unwrap()[0].to_ascii_lowercase();
    assert!(head.starts_with("get /healthz?x=1 http/1.1\r\n"), "{head}");
    assert!(
        head.contains(&format!("host: 127.0.0.1:{}\r\n", ok.addr.port())),
        "{head}"
    );
    assert!(head.contains("user-agent: mine\r\n"), "{head}");
    assert!(!head.contains("kube-probe"), "{head}");
    assert!(head.contains("x-a: 1\r\nx-a: 2\r\n"), "{head}");

    let r = request(addr, "GET", "/app-health/broken/livez").await;
    assert_eq!((r.status, r.body.as_str()), (500, "on fire"));
    // kubelet's own User-Agent is passed on.
    let head = broken.heads.lock().unwrap()[0].to_ascii_lowercase();
    assert!(head.contains("user-agent: kube-probe/1.31\r\n"), "{head}");

    // A redirect is kubelet's success; where it points is not passed on.
    let r = request(addr, "GET", "/app-health/moved/readyz").await;
    assert_eq!(r.status, 302);
    assert!(!r.headers.contains("location"), "{}", r.headers);
    let r = request(addr, "HEAD", "/app-health/broken/livez").await;
    assert_eq!((r.status, r.body.as_str()), (500, ""));
}

#[tokio::test]
async fn failures_and_timeouts_are_503_with_one_line() {
    let silent = app(0, "").await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (addr, _state) = start(probes(&format!(
        r#"{{"/app-health/silent/livez": {{"httpGet": {{"port": {silent}}}, "timeoutSeconds": 1}},
            "/app-health/gone/livez": {{"httpGet": {{"port": {closed}}}}},
            "/app-health/gone/readyz": {{"tcpSocket": {{"port": {closed}}}}},
            "/app-health/up/readyz": {{"tcpSocket": {{"port": {silent}}}}}}}"#,
        silent = silent.addr.port(),
    )))
    .await;

    let started = std::time::Instant::now();
    let r = request(addr, "GET", "/app-health/silent/livez").await;
    let took = started.elapsed();
    assert_eq!(r.status, 503);
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert_eq!(
        r.body,
        format!(
            "probe timed out after 1s: GET http://127.0.0.1:{}/\n",
            silent.addr.port()
        )
    );
    let r = request(addr, "GET", "/app-health/gone/livez").await;
    assert_eq!(r.status, 503);
    assert!(
        r.body.starts_with("probe failed: GET http://127.0.0.1:"),
        "{}",
        r.body
    );
    assert_eq!(r.body.lines().count(), 1, "{}", r.body);
    let r = request(addr, "GET", "/app-health/gone/readyz").await;
    assert_eq!(r.status, 503);
    assert!(
        r.body.starts_with("probe failed: tcp connect"),
        "{}",
        r.body
    );
    let r = request(addr, "GET", "/app-health/up/readyz").await;
    assert_eq!(r.status, 200, "{}", r.body);
}

#[tokio::test]
async fn https_probes_accept_any_certificate() {
    // A TLS app with a self-signed certificate for a name that is not the
    // address dialled, as apps' certificates are.
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["web.shop.svc".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let server =
        rustls::ServerConfig::builder_with_provider(Arc::new(crate::sidecar::tls::provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(s).await else {
                    return;
                };
                let mut buf = [0u8; 1024];
                let _ = tls.read(&mut buf).await;
                let _ = tls
                    .write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
                    .await;
                let _ = tls.shutdown().await;
            });
        }
    });
    let probe = one_probe(&format!(
        r#"{{"/app-health/web/livez": {{"httpGet": {{"port": {port}, "scheme": "HTTPS"}}}}}}"#
    ));
    let outcome = Prober::new().run(&probe, None).await;
    assert_eq!(outcome.status, StatusCode::NO_CONTENT, "{outcome:?}");

    // The same port spoken to in plain HTTP is not healthy.
    let probe = one_probe(&format!(
        r#"{{"/app-health/web/livez": {{"httpGet": {{"port": {port}}}}}}}"#
    ));
    let outcome = Prober::new().run(&probe, None).await;
    assert_eq!(outcome.status, StatusCode::SERVICE_UNAVAILABLE);
    task.abort();
}

#[tokio::test]
async fn bodies_are_cut_at_the_limit() {
    let big: &'static str = Box::leak("x".repeat(prober::MAX_BODY_BYTES * 3).into_boxed_str());
    let app = app(200, big).await;
    let probe = one_probe(&format!(
        r#"{{"/app-health/web/livez": {{"httpGet": {{"port": {}}}}}}}"#,
        app.addr.port()
    ));
    let outcome = Prober::new().run(&probe, None).await;
    assert_eq!(outcome.status, StatusCode::OK);
    assert_eq!(outcome.body.len(), prober::MAX_BODY_BYTES);
}

fn one_probe(json: &str) -> AppProbe {
    probes(json).iter().next().unwrap().1.clone()
}

#[tokio::test]
async fn unspecified_ipv6_serves_both_families() {
    let listener = match bind("[::]:0".parse().unwrap()) {
        Ok(l) => l,
        Err(e) => panic!("binding [::]:0: {e}"),
    };
    let port = listener.local_addr().unwrap().port();
    let state = Arc::new(HealthState::new(
        Readiness::default(),
        Arc::new(Metrics::new()),
        AppProbes::default(),
    ));
    tokio::spawn(serve(listener, state, std::future::pending()));
    let r = request(SocketAddr::from(([127, 0, 0, 1], port)), "GET", "/live").await;
    assert_eq!(r.status, 200);
    if TcpStream::connect(("::1", port)).await.is_ok() {
        let r = request(
            SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
            "GET",
            "/live",
        )
        .await;
        assert_eq!(r.status, 200);
    } else {
        eprintln!("no IPv6 loopback here: only the IPv4 half was checked");
    }
}

#[tokio::test]
async fn one_source_holds_at_most_its_share() {
    let (addr, _state) = start(AppProbes::default()).await;
    let mut idle = Vec::new();
    for _ in 0..MAX_PER_SOURCE {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    // Give the server time to accept them all.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(2), extra.read(&mut buf))
        .await
        .expect("the excess connection is closed at once")
        .unwrap_or(0);
    assert_eq!(n, 0);
    // Another source is still served.
    let other = tokio::net::TcpSocket::new_v4().unwrap();
    other.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut s = other.connect(addr).await.unwrap();
    s.write_all(b"GET /live HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut reply))
        .await
        .unwrap()
        .unwrap();
    assert!(reply.starts_with(b"HTTP/1.1 200"), "{reply:?}");
}
