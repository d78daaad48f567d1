//! The overload scenario, shared by `tests/overload.rs` (which checks that
//! the mesh is served) and `bench/soak.rs` (which measures how well).
//!
//! ```text
//! legitimate client ──▶ client sidecar ══ mTLS ══▶ server sidecar ──▶ app
//!                                        attackers ──┘ (plaintext, outside the mesh)
//! ```
//!
//! While the attack runs, all from 127.0.0.2:
//! - idle connections from outside the mesh, opened and kept open;
//! - a slowloris: request heads trickled a byte a second;
//! - HTTP/2 PING floods, reconnecting when closed;
//!
//! a meshed client makes one request on a new connection every `interval`
//! and records its latency; the server sidecar's `/live` is asked each time
//! and its resident memory sampled.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::clients::H1Session;
use super::mesh::{Mesh, MeshOptions};
use super::net;

/// The server sidecar's policy: the meshed `web` may call `api`; callers
/// outside the mesh may only reach `/public/**`.
pub const SERVER_POLICY: &str = "\
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

/// The server sidecar's limits: small enough that the attackers exceed
/// their share (`max_connections: 1000`), a short detection timeout.
pub const SERVER_LIMITS: [(&str, &str); 2] =
    [("max_connections", "1000"), ("detect_timeout", "1s")];

/// The attack both the test and the benchmark run: ten thousand idle
/// connections (ten times the inbound budget), 50 slowloris, 4 floods.
pub const ATTACK: Attack = Attack {
    idle: 10_000,
    slowloris: 50,
    flooders: 4,
};

/// A pair in front of `app` whose server sidecar is set up for the soak.
pub async fn mesh(app: SocketAddr) -> Mesh {
    Mesh::start(
        app,
        MeshOptions {
            server_policy: SERVER_POLICY.into(),
            server_limits: SERVER_LIMITS.to_vec(),
            ..MeshOptions::default()
        },
    )
    .await
}

/// The attackers.
#[derive(Debug, Clone, Copy)]
pub struct Attack {
    pub idle: usize,
    pub slowloris: usize,
    pub flooders: usize,
}

impl Attack {
    /// No attacker: the baseline.
    pub const NONE: Attack = Attack {
        idle: 0,
        slowloris: 0,
        flooders: 0,
    };
}

/// What the legitimate client saw.
#[derive(Debug, Default)]
pub struct Report {
    /// Latency of each successful request (connect to full answer).
    pub latencies: Vec<Duration>,
    /// Requests that failed or did not answer 200, with why.
    pub failures: Vec<String>,
    /// `/live` answers that were not 200.
    pub live_failures: usize,
    /// Highest resident set of the server sidecar, in KiB.
    pub peak_rss_kib: u64,
    /// Idle attacking connections that were accepted by the kernel.
    pub idle_connected: usize,
    /// Flood connections that ended (closed by the sidecar).
    pub flood_closures: u64,
}

impl Report {
    /// The `q` quantile (0..=1) of the latencies.
    pub fn quantile(&self, q: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        if sorted.is_empty() {
            return Duration::ZERO;
        }
        let index = ((sorted.len() - 1) as f64 * q).round() as usize;
        sorted[index]
    }
}

/// A connection from the attackers' own address, 127.0.0.2 (the meshed
/// client comes from 127.0.0.1).
pub async fn attacker_connect(target: SocketAddr) -> std::io::Result<TcpStream> {
    super::net::connect_from(2, target).await
}

/// The resident set of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Raises this process's open-file limit to its hard limit (the attackers
/// hold many sockets).
pub fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let _ = setrlimit(
        Resource::Nofile,
        rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        },
    );
}

/// Runs `attack` against `mesh`'s server sidecar for `duration` while the
/// legitimate client asks every `interval`.
pub async fn run(mesh: &Mesh, attack: Attack, duration: Duration, interval: Duration) -> Report {
    let target = mesh.inbound_addr();
    let stop = Arc::new(AtomicBool::new(false));
    let flood_closures = Arc::new(AtomicU64::new(0));

    // Idle connections (kept open until the end).
    let mut idle = Vec::new();
    for _ in 0..attack.idle {
        if let Ok(stream) = attacker_connect(target).await {
            idle.push(stream);
        }
    }
    let mut attackers = Vec::new();
    for _ in 0..attack.slowloris {
        attackers.push(tokio::spawn(slowloris(target, stop.clone())));
    }
    for _ in 0..attack.flooders {
        attackers.push(tokio::spawn(ping_flood(
            target,
            stop.clone(),
            flood_closures.clone(),
        )));
    }

    let mut report = Report {
        idle_connected: idle.len(),
        ..Report::default()
    };
    let start = Instant::now();
    while start.elapsed() < duration {
        let asked = Instant::now();
        let mut session = H1Session::connect(mesh.outbound_addr()).await;
        match session.get("/v1/orders").await {
            Ok((200, _)) => report.latencies.push(asked.elapsed()),
            Ok((status, _)) => report.failures.push(format!("status {status}")),
            Err(e) => report.failures.push(e),
        }
        drop(session);
        if net::http_status(mesh.server.admin, "/live").await != Some(200) {
            report.live_failures += 1;
        }
        report.peak_rss_kib = report.peak_rss_kib.max(rss_kib(mesh.server.pid()));
        tokio::time::sleep(interval.saturating_sub(asked.elapsed())).await;
    }
    stop.store(true, Ordering::Relaxed);
    for attacker in attackers {
        attacker.abort();
    }
    report.flood_closures = flood_closures.load(Ordering::Relaxed);
    report
}

/// Request heads trickled a byte a second.
async fn slowloris(target: SocketAddr, stop: Arc<AtomicBool>) {
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
}

/// Plaintext HTTP/2 PING floods, reconnecting when closed.
async fn ping_flood(target: SocketAddr, stop: Arc<AtomicBool>, closures: Arc<AtomicU64>) {
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
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
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
}
