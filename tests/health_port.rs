//! The health port (README "Health port and kubelet probes"), end to end:
//! the real `appid proxy` with `health:` on loopback and `APPID_APP_PROBES`
//! set, in front of a real local HTTP app, under a default-deny policy, and
//! real `curl` in kubelet's and Prometheus's place.
//!
//! Covered:
//! - `/live`, `/ready`, `/metrics` answer as the admin API's do; `/config`
//!   and `/appid` (which the admin API serves) are 404 on the health port.
//! - `httpGet` probes: 200 when the app answers 200 (with the declared
//!   headers, and kubelet's `User-Agent`, reaching the app), the app's 500
//!   when it answers 500; the policy never sees them (no audit line).
//! - `tcpSocket` probes: 200 with a listener, 503 without.
//! - A probe to an app that never answers: 503 after `timeoutSeconds`.
//! - An `/app-health/` path nobody declared: 404.
//! - A bad `APPID_APP_PROBES` (or probes without `health:`) and `appid
//!   proxy` exits 2 naming the variable and the JSON path.
//! - Its bounds: a request head over 8 KiB is refused (431), one under it
//!   served; one request per connection (a second, pipelined, is not
//!   answered); a head that never finishes is closed at 5 s.
//!
//! Needs `curl` on the PATH (CI installs it).

#[path = "support/mod.rs"]
mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::net::TcpListener;

use support::apps::HttpApp;
use support::clients::curl;
use support::mesh::Env;
use support::net::{free_port, local};

const DENY_ALL: &str = "version: 1\ndefault: deny\nrules: []\n";

/// The `# TYPE` lines of a Prometheus exposition: which metrics it has.
fn metric_families(body: &str) -> BTreeSet<String> {
    body.lines()
        .filter(|l| l.starts_with("# TYPE "))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_what_kubelet_and_prometheus_need_and_runs_the_apps_probes() {
    let app = HttpApp::start().await;
    // A listener for the passing tcpSocket probe, one that accepts and
    // never answers, and a port nobody listens on.
    let tcp_up = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let closed_port = free_port();

    let probes = json!({
        "/app-health/web/livez": {"httpGet": {"path": "/status/200", "port": app.addr.port(),
            "scheme": "HTTP", "httpHeaders": [{"name": "x-probe", "value": "live"}]}, "timeoutSeconds": 10},
        // Generous timeouts where an answer is expected (a loaded machine
        // must not turn them into timeouts); `startupz` tests the timeout.
        "/app-health/web/readyz": {"httpGet": {"path": "/status/500", "port": app.addr.port()}, "timeoutSeconds": 10},
        "/app-health/web/startupz": {"httpGet": {"path": "/healthz", "port": silent_port}, "timeoutSeconds": 2},
        "/app-health/db/livez": {"tcpSocket": {"port": tcp_up.local_addr().unwrap().port()}},
        "/app-health/db/readyz": {"tcpSocket": {"port": closed_port}}
    });
    let env = Env::new();
    let (sidecar, health_port) = with_health_port(&env, app.addr, &probes).await;
    let health = |path: &str| format!("http://127.0.0.1:{health_port}{path}");
    let admin = |path: &str| format!("http://{}{path}", sidecar.admin);

    // What the admin API answers, the health port answers.
    for path in ["/live", "/ready"] {
        let on_health = curl(&[&health(path)]).await;
        let on_admin = curl(&[&admin(path)]).await;
        assert_eq!(
            (on_health.status, &on_health.body),
            (on_admin.status, &on_admin.body),
            "{path}"
        );
        assert_eq!(on_health.status, 200, "{path}: {}", sidecar.context());
    }
    let on_health = curl(&[&health("/metrics")]).await;
    let on_admin = curl(&[&admin("/metrics")]).await;
    assert_eq!(on_health.status, 200);
    assert_eq!(
        on_health.header("content-type"),
        on_admin.header("content-type")
    );
    // What curl gets (no Accept for OpenMetrics) is Prometheus' classic
    // text format, and it passes promtool; Prometheus itself asks for
    // OpenMetrics and gets it.
    promtool_check_metrics(&on_health.body);
    let openmetrics = curl(&[
        "-H",
        "Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        &health("/metrics"),
    ])
    .await;
    assert!(
        openmetrics
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/openmetrics-text")),
        "{:?}",
        openmetrics.header("content-type")
    );
    assert!(
        openmetrics.body.ends_with("# EOF\n"),
        "{}",
        openmetrics.body
    );
    let families = metric_families(&on_health.body);
    assert!(
        families.iter().any(|f| f.starts_with("# TYPE appid_")),
        "{families:?}"
    );
    assert_eq!(families, metric_families(&on_admin.body));

    // What only the local operator may see stays on loopback's admin API.
    for path in ["/config", "/appid"] {
        assert_eq!(curl(&[&admin(path)]).await.status, 200, "{path} on admin");
        let r = curl(&[&health(path)]).await;
        assert_eq!(r.status, 404, "{path} on the health port: {r:?}");
        assert!(!r.body.contains("spiffe://"), "{r:?}");
    }
    assert_eq!(curl(&[&health("/app-health/web/nope")]).await.status, 404);
    assert_eq!(curl(&[&health("/app-health/api/livez")]).await.status, 404);

    // httpGet: the app's 200, with the declared header and kubelet's
    // User-Agent; the body is the app's (its JSON echo of the request).
    let r = curl(&["-A", "kube-probe/1.31", &health("/app-health/web/livez")]).await;
    assert_eq!(r.status, 200, "{r:?}\n{}", sidecar.context());
    let seen = r.json();
    assert_eq!(seen["path"], "/status/200");
    assert_eq!(seen["headers"]["x-probe"], json!(["live"]));
    assert_eq!(seen["headers"]["user-agent"], json!(["kube-probe/1.31"]));
    assert_eq!(
        seen["headers"]["host"],
        json!([format!("127.0.0.1:{}", app.addr.port())])
    );
    // ...and the app's 500, which kubelet counts as a failure.
    let r = curl(&[&health("/app-health/web/readyz")]).await;
    assert_eq!(r.status, 500, "{r:?}");

    // tcpSocket: connected or not.
    let r = curl(&[&health("/app-health/db/livez")]).await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = curl(&[&health("/app-health/db/readyz")]).await;
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.body.starts_with("probe failed: tcp connect"), "{r:?}");

    // An app that never answers: 503 once timeoutSeconds (2) have passed.
    let started = Instant::now();
    let r = curl(&[&health("/app-health/web/startupz")]).await;
    let took = started.elapsed();
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(
        r.body,
        format!("probe timed out after 2s: GET http://127.0.0.1:{silent_port}/healthz\n")
    );
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(6),
        "{took:?}"
    );

    // Probes never touch the data path: the deny-all policy decided
    // nothing (allow lines are batched for 100 ms; wait past that).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(sidecar.audit_lines().is_empty(), "{}", sidecar.context());
    // The app was asked by the probes only.
    assert_eq!(
        app.state.requests.load(std::sync::atomic::Ordering::SeqCst),
        2
    );
    hold.abort();
}

/// Connections that ask nothing cannot lock kubelet out: with every slot of
/// the health port held (four addresses, each with its share of idle
/// connections, one of each half-way through a request head), a probe is
/// answered at once: the oldest connection of an address holding the most
/// gives way, however often the attacker fills the slot again (before: the
/// probe waited in the backlog for the 5 s header timeout, past kubelet's
/// probe timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_holding_every_slot_give_way_to_probes() {
    let app = HttpApp::start().await;
    let env = Env::new();
    let (sidecar, health_port) = with_health_port(&env, app.addr, &json!({})).await;
    let mut held = fill_every_slot(health_port, |i| match i % 8 {
        0 => b"GET /live HTTP/1.1\r\n",
        _ => b"",
    })
    .await;
    let url = format!("http://127.0.0.1:{health_port}/live");
    for round in 0..3 {
        // Older than a real client ever waits before its request.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let live = curl(&["--max-time", "3", &url]).await;
        assert_eq!(live.status, 200, "round {round}\n{}", sidecar.context());
        // The one open longest gave way (closed before the probe got its
        // slot), and no other (checked without waiting: every one of them
        // meets the 5 s header timeout soon).
        expect_closed(&mut held[round], &format!("round {round}: the oldest")).await;
        let mut byte = [0u8; 1];
        for (i, stream) in held.iter_mut().enumerate().skip(round + 1) {
            let read = stream.try_read(&mut byte);
            assert!(
                read.as_ref()
                    .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock),
                "round {round}, connection {i} was closed too: {read:?}"
            );
        }
        // The attacker fills the slot again (the probe's is free by now).
        held.push(
            support::net::connect_from(2, local(health_port))
                .await
                .unwrap(),
        );
    }
}

/// Nor can requests that are under way: four addresses each hold their
/// share of slots with app probes that hang (the app never answers, the
/// probe's timeout is 20 s), and kubelet's `/live` is still answered at
/// once, one of theirs closed for it (before: it waited for a slot past
/// its timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_probes_holding_every_slot_give_way_to_probes() {
    let app = HttpApp::start().await;
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let probes = json!({
        "/app-health/web/livez": {"httpGet": {"path": "/healthz", "port": silent_port},
            "timeoutSeconds": 20}
    });
    let env = Env::new();
    let (sidecar, health_port) = with_health_port(&env, app.addr, &probes).await;
    let mut held = fill_every_slot(health_port, |_| {
        b"GET /app-health/web/livez HTTP/1.1\r\nhost: x\r\n\r\n"
    })
    .await;
    // Every one of them is under way (no answer comes for 20 s).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let url = format!("http://127.0.0.1:{health_port}/live");
    let live = curl(&["--max-time", "3", &url]).await;
    assert_eq!(live.status, 200, "{}", sidecar.context());
    expect_closed(&mut held[0], "the oldest of an address holding the most").await;
    hold.abort();
}

/// What the health port takes from one connection: a request head of at
/// most 8 KiB (a 12 KiB one is refused with 431; hyper's default would take
/// it), one request (a second one pipelined behind it gets no answer: the
/// connection closes after the first), and a head within 5 s (hyper's
/// default is 30 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_small_request_per_connection_within_five_seconds() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = HttpApp::start().await;
    let env = Env::new();
    let (sidecar, health_port) = with_health_port(&env, app.addr, &json!({})).await;
    let exchange = |request: Vec<u8>| async move {
        let mut stream = tokio::net::TcpStream::connect(local(health_port))
            .await
            .unwrap();
        stream.write_all(&request).await.unwrap();
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer));
        assert!(
            read.await.is_ok(),
            "the connection was not closed within 10 s"
        );
        String::from_utf8_lossy(&answer).into_owned()
    };
    let with_filler = |bytes: usize| {
        format!(
            "GET /live HTTP/1.1\r\nhost: x\r\nx-filler: {}\r\n\r\n",
            "a".repeat(bytes)
        )
        .into_bytes()
    };

    let small = exchange(with_filler(6 * 1024)).await;
    assert!(
        small.starts_with("HTTP/1.1 200"),
        "{small}\n{}",
        sidecar.context()
    );
    let large = exchange(with_filler(12 * 1024)).await;
    assert!(
        large.starts_with("HTTP/1.1 431"),
        "{large}\n{}",
        sidecar.context()
    );

    let two = b"GET /live HTTP/1.1\r\nhost: x\r\n\r\nGET /ready HTTP/1.1\r\nhost: x\r\n\r\n";
    let answered = exchange(two.to_vec()).await;
    assert_eq!(
        answered.matches("HTTP/1.1 ").count(),
        1,
        "one answer per connection: {answered}"
    );

    let mut slow = tokio::net::TcpStream::connect(local(health_port))
        .await
        .unwrap();
    slow.write_all(b"GET /live HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let start = Instant::now();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(15), slow.read_to_end(&mut answer)).await;
    let took = start.elapsed();
    assert!(read.is_ok(), "an unfinished head still open after 15 s");
    assert!(
        (Duration::from_millis(4500)..Duration::from_secs(12)).contains(&took),
        "an unfinished head closed after {took:?}, not at 5 s"
    );
}

/// A sidecar in front of `app` under a default-deny policy, with a health
/// port and `APPID_APP_PROBES` set to `probes`; and the port.
async fn with_health_port(
    env: &Env,
    app: std::net::SocketAddr,
    probes: &serde_json::Value,
) -> (support::sidecar::Sidecar, u16) {
    let policy = env.policy("policy.yaml", DENY_ALL);
    let health_port = free_port();
    let sidecar = env
        .sidecar("server", &env.api, &policy)
        .inbound(free_port(), app)
        .health(health_port)
        .env("APPID_APP_PROBES", &probes.to_string())
        .start()
        .await;
    (sidecar, health_port)
}

/// Every slot of the health port (32) held by four addresses, 127.0.0.2
/// to .5, eight each (their share), oldest first; connection `i` sent
/// `first_bytes(i)`.
async fn fill_every_slot(
    health_port: u16,
    first_bytes: impl Fn(usize) -> &'static [u8],
) -> Vec<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt;
    let mut held = Vec::new();
    for source in 2..=5u8 {
        for _ in 0..8 {
            let address = local(health_port);
            let mut stream = support::net::connect_from(source, address).await.unwrap();
            stream.write_all(first_bytes(held.len())).await.unwrap();
            held.push(stream);
        }
    }
    held
}

/// `stream` is closed by the far side within 2 s (`what` gave way).
async fn expect_closed(stream: &mut tokio::net::TcpStream, what: &str) {
    use tokio::io::AsyncReadExt;
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut byte)).await;
    assert!(
        matches!(read, Ok(Ok(0) | Err(_))),
        "{what} should have given way: {read:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_app_probes_variable_stops_the_sidecar_with_the_json_path() {
    let env = Env::new();
    let policy = env.policy("policy.yaml", DENY_ALL);
    let start = |name: &str, health: bool, probes: &str| {
        let mut builder = env
            .sidecar(name, &env.api, &policy)
            .inbound(free_port(), local(free_port()))
            .env("APPID_APP_PROBES", probes);
        if health {
            builder = builder.health(free_port());
        }
        builder.run_to_exit(Duration::from_secs(20))
    };

    let (status, stderr) = start(
        "bad-port",
        true,
        r#"{"/app-health/web/livez": {"httpGet": {"path": "/healthz", "port": "http"}}}"#,
    );
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(
            r#"appid: error: APPID_APP_PROBES: $["/app-health/web/livez"].httpGet.port: `http` is a named port"#
        ),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("APPID_APP_PROBES").count(),
        1,
        "said once: {stderr}"
    );

    let (status, stderr) = start("not-json", true, "livez=8080");
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("APPID_APP_PROBES: $: not valid JSON"),
        "{stderr}"
    );

    let (status, stderr) = start(
        "no-health",
        false,
        r#"{"/app-health/web/livez": {"tcpSocket": {"port": 8080}}}"#,
    );
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("APPID_APP_PROBES declares 1 app probe(s) but the config has no `health:`"),
        "{stderr}"
    );
    assert!(stderr.contains("no-health-proxy.yaml"), "{stderr}");
}

/// Runs `promtool check metrics` (Debian: `apt-get install prometheus`;
/// CI installs it) on `exposition`; fails with its complaints.
fn promtool_check_metrics(exposition: &str) {
    use std::io::Write as _;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool must be installed (apt-get install prometheus)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}\n--- exposition:\n{exposition}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `promtool check metrics` passes on both sidecars' live `/metrics` after
/// traffic of every protocol (HTTP/1.1, HTTP/2, gRPC, opaque TCP), with
/// every series those calls create in the exposition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_after_traffic_of_every_protocol() {
    use support::mesh::{Mesh, MeshOptions};
    let app = HttpApp::start().await;
    let mesh = Mesh::start(app.addr, MeshOptions::default()).await;
    let h1 = curl(&["--http1.1", &mesh.url("/v1/h1")]).await;
    assert_eq!(h1.status, 200, "{h1:?}\n{}", mesh.context());
    let h2 = curl(&["--http2-prior-knowledge", &mesh.url("/v1/h2")]).await;
    assert_eq!(h2.status, 200, "{h2:?}\n{}", mesh.context());
    let mut grpc = support::grpc::GrpcClient::connect(mesh.outbound_addr()).await;
    let reply = grpc.call(support::apps::GRPC_UNARY, b"ping", |_| {}).await;
    assert_eq!(
        reply.grpc_status(),
        Some("0"),
        "{reply:?}\n{}",
        mesh.context()
    );
    // Not HTTP: one TCP decision, bytes spliced (the app answers them
    // however it likes; what matters is that they crossed).
    let mut tcp = tokio::net::TcpStream::connect(mesh.outbound_addr())
        .await
        .expect("connect");
    tokio::io::AsyncWriteExt::write_all(&mut tcp, b"\x16\x00 not http\r\n\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 64];
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut tcp, &mut buf),
    )
    .await;
    drop(tcp);

    for sidecar in [&mesh.client, &mesh.server] {
        let metrics = curl(&[&format!("http://{}/metrics", sidecar.admin)]).await;
        assert_eq!(metrics.status, 200);
        promtool_check_metrics(&metrics.body);
        for series in [
            "appid_authz_decisions_total{",
            "appid_bytes_total{",
            "appid_handshake_duration_seconds_bucket{",
            "appid_authz_decision_duration_seconds_bucket{",
            "appid_process_resident_memory_bytes ",
            "appid_build_info{",
        ] {
            assert!(
                metrics.body.contains(series),
                "{}: no {series}\n{}",
                sidecar.name,
                metrics.body
            );
        }
    }
    let decisions = mesh.server.metric(
        "appid_authz_decisions_total{direction=\"inbound\",decision=\"allow\",rule=\"web-to-api\"}",
    )
    .await;
    assert!(
        decisions >= 4.0,
        "inbound allows: {decisions}\n{}",
        mesh.context()
    );
}
