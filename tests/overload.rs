//! Overload, bounded in time and to loopback: a sidecar under several
//! attacks at once keeps serving its mesh.
//!
//! ```text
//! legitimate client ──▶ client sidecar ══ mTLS ══▶ server sidecar ──▶ app
//!                                        attackers ──┘ (plaintext, outside the mesh)
//! ```
//!
//! At the same time, for about ten seconds:
//! - idle connections from outside the mesh, twice the whole inbound
//!   budget (callers outside the mesh hold at most half of it once detected;
//!   while still in detection, the longest-silent gives way to a newcomer);
//! - a slowloris: request heads trickled a byte a second;
//! - HTTP/2 PING floods, reconnecting when closed;
//!
//! all from 127.0.0.2 (one source holds at most an eighth of the inbound
//! budget while in detection)
//!
//! while a meshed client makes a request every 100 ms. Every one of its
//! requests must succeed, `/live` must keep answering, the app must never be
//! dialled for the attackers, and the server sidecar's resident memory must
//! stay under [`RSS_CEILING_KIB`]. (How fast it answers is for `bench/`; here
//! only that it does.)

#[path = "support/mod.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::apps::HttpApp;
use support::clients::H1Session;
use support::mesh::{Mesh, MeshOptions};
use support::net;

/// Idle attacking connections opened: twice the whole inbound budget
/// (`max_connections: 1000`; outsiders hold at most 500 once detected, and
/// silent ones still in detection give way to newcomers).
const IDLE_ATTACKERS: usize = 2000;
const SLOWLORIS: usize = 50;
const FLOODERS: usize = 4;
const ATTACK: Duration = Duration::from_secs(10);
/// The server sidecar's resident memory must stay under this (KiB).
const RSS_CEILING_KIB: u64 = 256 * 1024;

const SERVER_POLICY: &str = "\
version: 1
default: deny
rules:
  - name: web-to-api
    action: allow
    from: { labels.app: web }
    to: { labels.app: api }
  - name: plain-public
    action: allow
    from: { unauthenticated: { cidrs: [\"127.0.0.0/8\"] } }
    to: { labels.app: api }
    http: { paths: [\"/public/**\"] }
";

/// A connection from the attackers' own address, 127.0.0.2 (the meshed
/// client comes from 127.0.0.1).
async fn attacker_connect(target: std::net::SocketAddr) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind("127.0.0.2:0".parse().expect("an address"))?;
    socket.connect(target).await
}

/// The resident set of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesh_is_served_while_outsiders_attack() {
    let app = HttpApp::start().await;
    let mesh = Mesh::start(
        app.addr,
        MeshOptions {
            server_policy: SERVER_POLICY.into(),
            // Small enough that the attackers exceed their share.
            server_limits: vec![("max_connections", "1000"), ("detect_timeout", "1s")],
            ..MeshOptions::default()
        },
    )
    .await;
    let target = mesh.inbound_addr();
    let stop = Arc::new(AtomicBool::new(false));
    let flood_closures = Arc::new(AtomicU64::new(0));

    // Idle connections (kept open until the end).
    let mut idle = Vec::new();
    for _ in 0..IDLE_ATTACKERS {
        if let Ok(stream) = attacker_connect(target).await {
            idle.push(stream);
        }
    }
    // Slowloris.
    let mut attackers = Vec::new();
    for _ in 0..SLOWLORIS {
        let stop = stop.clone();
        attackers.push(tokio::spawn(async move {
            let Ok(mut stream) = attacker_connect(target).await else {
                return;
            };
            for byte in b"GET /public/x HTTP/1.1\r\nHost: api.test\r\nX-Slow: "
                .iter()
                .cycle()
            {
                if stop.load(Ordering::Relaxed) || stream.write_all(&[*byte]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }));
    }
    // HTTP/2 PING floods, reconnecting when closed.
    for _ in 0..FLOODERS {
        let stop = stop.clone();
        let closures = flood_closures.clone();
        attackers.push(tokio::spawn(async move {
            let mut burst = Vec::new();
            for i in 0..2_000u64 {
                burst.extend_from_slice(b"\x00\x00\x08\x06\x00\x00\x00\x00\x00");
                burst.extend_from_slice(&i.to_be_bytes());
            }
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut stream) = attacker_connect(target).await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let _ = stream
                    .write_all(
                        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00",
                    )
                    .await;
                while !stop.load(Ordering::Relaxed) && stream.write_all(&burst).await.is_ok() {
                    // Drain what the sidecar answers, without waiting.
                    let mut sink = [0u8; 65536];
                    if let Ok(Ok(0)) =
                        tokio::time::timeout(Duration::from_millis(1), stream.read(&mut sink)).await
                    {
                        break;
                    }
                }
                closures.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    // The legitimate, meshed client.
    let start = tokio::time::Instant::now();
    let mut served = 0;
    let mut peak_rss = 0;
    while start.elapsed() < ATTACK {
        let mut session = H1Session::connect(mesh.outbound_addr()).await;
        let (status, _) = match session.get("/v1/orders").await {
            Ok(answer) => answer,
            Err(e) => {
                let metrics = net::http_get(mesh.server.admin, "/metrics")
                    .await
                    .unwrap_or_default();
                let refused: Vec<&str> = metrics
                    .lines()
                    .filter(|l| l.starts_with("appid_connections_") || l.starts_with("appid_h2"))
                    .collect();
                panic!(
                    "request {served} failed: {e}\n{}\n{}",
                    refused.join("\n"),
                    mesh.context()
                );
            }
        };
        assert_eq!(status, 200, "{}", mesh.context());
        served += 1;
        assert_eq!(
            net::http_status(mesh.server.admin, "/live").await,
            Some(200),
            "/live under attack"
        );
        peak_rss = peak_rss.max(rss_kib(mesh.server.pid()));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for attacker in attackers {
        attacker.abort();
    }

    eprintln!(
        "served {served} meshed requests; {} idle attackers connected; {} flood connections ended; peak RSS {peak_rss} KiB",
        idle.len(),
        flood_closures.load(Ordering::Relaxed),
    );
    assert!(served >= 50, "only {served} requests in {ATTACK:?}");
    assert!(peak_rss < RSS_CEILING_KIB, "RSS {peak_rss} KiB");
    // Only the meshed client's connection(s) reached the app.
    let dialled = app.state.connections.load(Ordering::SeqCst);
    assert!(dialled <= served, "the app was dialled {dialled} times");
    assert!(
        mesh.server
            .metric("appid_connections_refused_total{direction=\"inbound\",reason=\"max_pending_per_source\"}")
            .await
            > 0.0,
        "the attackers were held to their source's share\n{}",
        mesh.context()
    );
    // The flooders are refused with the other outsiders once those hold
    // their share, or closed for flooding (`sidecar.rs` tests that alone).
    drop(idle);
}
