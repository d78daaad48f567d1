//! The health port (`health: "0.0.0.0:15191"`): what kubelet and
//! Prometheus need, on the pod IP.
//!
//! Design bias: *nothing sensitive leaves loopback; the pod IP gets only
//! what kubelet and Prometheus need*. The admin API stays on loopback with
//! `/config` and `/appid`; this port serves `GET`/`HEAD` of exactly
//!
//! - `/live`, `/ready`, `/metrics`: the admin API's own answers
//!   ([`crate::admin::probe_endpoint`]: one check, one place);
//! - `/app-health/<container>/<livez|readyz|startupz>`: the app's own
//!   kubelet probes, declared in `APPID_APP_PROBES` ([`probes`]) and run
//!   against the app by the sidecar ([`prober`]), the way Istio's status
//!   port does;
//!
//! and `404` for anything else (`405` for another method on those paths).
//!
//! Why app probes bypass policy, safely: kubelet's probes come from the
//! node, unauthenticated, so a default-deny policy refuses them on the app
//! port. Here they never reach the data path: a request can only trigger
//! one of the fixed probes the operator declared (a fixed port, path and
//! headers on the app, nothing from the request but kubelet's
//! `User-Agent`), and gets back only a status code and at most
//! [`prober::MAX_BODY_BYTES`] of body. There is no forwarding of arbitrary
//! requests, so nothing here widens what the network can ask the app.
//!
//! Bounds: plain HTTP/1.1, one request per connection, request heads of at
//! most [`MAX_HEAD_BYTES`] within [`HEADER_READ_TIMEOUT`], at most
//! [`MAX_CONNECTIONS`] served at once and [`MAX_PER_SOURCE`] from one
//! source, an IPv4 address or IPv6 /64 (its excess is closed); when all are held, one gives way to a
//! newcomer, fairly by address first (see `bounded_http`). So a scanner on
//! the pod network can neither hold the port against kubelet nor turn it
//! into a flood against the app's health endpoint.

pub mod prober;
pub mod probes;

use std::future::Future;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use tokio::net::TcpListener;

use crate::admin::{self, Readiness};
use crate::bounded_http::{self, Body, ServerLimits};
use crate::metrics::Metrics;
use prober::Prober;
use probes::{AppProbe, AppProbes};

/// Time allowed for a request head to arrive.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 32;
/// Connections one source (an IPv4 address or an IPv6 /64, [`crate::sidecar::shares::Source`]) may hold at once.
pub const MAX_PER_SOURCE: usize = 8;
/// Largest request head accepted.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;

const LIMITS: ServerLimits = ServerLimits {
    header_read_timeout: HEADER_READ_TIMEOUT,
    // One request per connection: the longest probe, and a little.
    connection_lifetime: Duration::from_secs(probes::MAX_TIMEOUT_SECONDS + 10),
    max_connections: MAX_CONNECTIONS,
    max_per_source: MAX_PER_SOURCE,
    max_head_bytes: MAX_HEAD_BYTES,
    keep_alive: false,
};

/// What the health port serves from.
pub struct HealthState {
    pub readiness: Readiness,
    pub metrics: Arc<Metrics>,
    pub probes: AppProbes,
    prober: Prober,
}

impl HealthState {
    pub fn new(readiness: Readiness, metrics: Arc<Metrics>, probes: AppProbes) -> HealthState {
        HealthState {
            readiness,
            metrics,
            probes,
            prober: Prober::new(),
        }
    }
}

/// Binds the health listener. `[::]:p` is one dual-stack socket (IPv4
/// callers arrive as `::ffff:a.b.c.d`), so one address serves kubelet on a
/// pod IP of either family; on a host without IPv6 it falls back to
/// `0.0.0.0:p`. (Data-plane listeners are IPv6-only instead, because
/// policy and the original-destination lookup need each connection's own
/// family; nothing here looks at addresses.)
pub fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    if address.ip() != IpAddr::V6(Ipv6Addr::UNSPECIFIED) {
        return crate::sidecar::bind_socket(address, true);
    }
    match crate::sidecar::bind_socket(address, false) {
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::AFNOSUPPORT.raw_os_error()) => {
            let v4 = SocketAddr::from(([0, 0, 0, 0], address.port()));
            tracing::warn!(%address, fallback = %v4, "no IPv6 here: the health port serves IPv4 only");
            crate::sidecar::bind_socket(v4, true)
        }
        other => other,
    }
}

/// Serves the health port on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    state: Arc<HealthState>,
    shutdown: impl Future<Output = ()>,
) {
    let local = listener.local_addr().ok();
    tracing::info!(local = ?local, app_probes = state.probes.len(), "health port listening");
    let handler = move |req| handle(state.clone(), req);
    bounded_http::serve(listener, "health port", LIMITS, handler, shutdown).await;
}

/// What a path on the health port is.
#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    /// `/live`, `/ready`, `/metrics`: as on the admin API.
    Shared,
    /// A configured `/app-health/...` probe.
    App(&'a AppProbe),
    NotFound,
}

fn route<'a>(path: &str, probes: &'a AppProbes) -> Route<'a> {
    match path {
        "/live" | "/ready" | "/metrics" => Route::Shared,
        _ => probes.get(path).map_or(Route::NotFound, Route::App),
    }
}

async fn handle(state: Arc<HealthState>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    let route = route(path, &state.probes);
    if route == Route::NotFound {
        return not_found();
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return bounded_http::method_not_allowed();
    }
    match route {
        Route::App(probe) => {
            let outcome = state
                .prober
                .run(probe, req.headers().get(header::USER_AGENT))
                .await;
            if !(outcome.status.is_success() || outcome.status.is_redirection()) {
                tracing::debug!(path, status = %outcome.status, "app probe failed");
            }
            bounded_http::text(outcome.status, outcome.body)
        }
        _ => {
            let accept = req
                .headers()
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok());
            admin::probe_endpoint(path, accept, &state.readiness, &state.metrics)
                .unwrap_or_else(not_found)
        }
    }
}

fn not_found() -> Response<Body> {
    bounded_http::text(
        StatusCode::NOT_FOUND,
        "not found: this port serves /live, /ready, /metrics and /app-health/<container>/<livez|readyz|startupz>\n",
    )
}

#[cfg(test)]
mod tests;
