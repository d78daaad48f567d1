//! Outbound: from the local app to a peer sidecar (mTLS) or, when policy
//! says so, to a destination outside the mesh.
//!
//! Per connection, straight through:
//! 1. the destination: the configured upstream (explicit) or the original
//!    destination (transparent);
//! 2. transparent only: ask policy whether the destination is external —
//!    allowed external traffic passes through untouched, the cloud metadata
//!    API is refused unless a rule names it; otherwise it is meshed;
//! 3. meshed: TLS 1.3 with our certificate (by default a stream in a pooled
//!    `appid-mux/1` connection, see [`super::pool`]), verify the server's
//!    AppID, and authorize it *before any app byte is sent*;
//! 4. then the app protocol: HTTP requests are authorized one by one, opaque
//!    TCP is spliced (and closed if a policy change withdraws it).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpStream;
use tracing::Instrument as _;

use appid_policy::policy::Direction;

use super::authz::{ConnAuthz, ExternalVerdict, Peer};
use super::balance::Acceptor;
use super::dispatch::{self, Connection, FirstBytes, Plan, dispatch};
use super::http::AppSide;
use super::local::Local;
use super::pool::Dialed;
use super::{Shared, orig_dst};
use crate::detect::{self, Classification, Detection};
use crate::metrics::Direction as MetricsDirection;

/// One outbound listener from the config.
#[derive(Debug, Clone, Copy)]
pub struct OutboundSpec {
    pub listen: SocketAddr,
    /// Explicit mode: the peer sidecar's inbound address. `None`:
    /// transparent (original destination).
    pub upstream: Option<SocketAddr>,
}

/// Accepts until shutdown; every connection is made as `local` (the
/// sidecar's own identity, or the service whose sockets the capture rules
/// send to this listener).
pub async fn serve(shared: Arc<Shared>, acceptor: Acceptor, spec: OutboundSpec, local: Arc<Local>) {
    super::accept_loop(
        shared,
        acceptor,
        MetricsDirection::Outbound,
        local.clone(),
        move |shared, stream, app_addr| {
            let local = local.clone();
            dispatch::set_up_then_run(set_up(shared, local, stream, app_addr, spec))
        },
    )
    .await;
}

/// Everything before the connection's long wait: its destination, whether
/// it leaves the mesh, the peer it goes to. `None`: closed.
async fn set_up(
    shared: Arc<Shared>,
    local: Arc<Local>,
    app: TcpStream,
    app_addr: SocketAddr,
    spec: OutboundSpec,
) -> Option<Connection> {
    let (shared, local) = (&shared, &local);
    let _ = app.set_nodelay(true);
    let destination = match spec.upstream {
        Some(upstream) => upstream,
        None => match orig_dst::original_destination(&app) {
            Ok(dst) if !orig_dst::is_self(dst, spec.listen) => dst,
            _ => {
                tracing::debug!(%app_addr, "transparent outbound without an original destination");
                return None;
            }
        },
    };

    if spec.upstream.is_none() {
        match Box::pin(external(shared, local, &app, app_addr, destination)).await {
            External::PassThrough => {
                let mut upstream = shared.connect(destination).await?;
                let mut app = super::counted::Counted::new(
                    app,
                    shared.metrics.bytes_counter(MetricsDirection::Outbound),
                );
                let meter = shared
                    .memory
                    .meter(&format!("external {}", destination.ip()));
                let idle_timeout = shared.tcp_idle_timeout(destination.port());
                let pass_through = async move {
                    let (end, _) = super::splice::splice(
                        &mut app,
                        &mut upstream,
                        &[],
                        idle_timeout,
                        Some(&meter),
                        std::future::pending(),
                    )
                    .await;
                    super::splice::forward_reset(end, &mut app, &mut upstream);
                };
                let pass_through: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(pass_through);
                return Some(pass_through.in_current_span());
            }
            External::Refused => return None,
            External::Meshed => {}
        }
    }
    to_peer(shared, local, app, app_addr, destination).await
}

enum External {
    PassThrough,
    Refused,
    Meshed,
}

/// Transparent mode: is this destination outside the mesh, and allowed?
async fn external(
    shared: &Arc<Shared>,
    local: &Local,
    app: &TcpStream,
    app_addr: SocketAddr,
    destination: SocketAddr,
) -> External {
    // The host the app names (TLS SNI or HTTP Host), for `external.hosts`.
    let host =
        match detect::detect(app, shared.limits.detect_timeout, detect::MAX_DETECT_BYTES).await {
            Detection::Classified {
                class: Classification::TlsClientHello(hello),
                ..
            } => hello.sni,
            Detection::Classified {
                class: Classification::Http1,
                ..
            } => {
                // `detect` stops at the method; the Host line is further on.
                let mut buffer = vec![0u8; detect::MAX_DETECT_BYTES];
                match app.peek(&mut buffer).await {
                    Ok(n) => detect::http_host(&buffer[..n]).map(str::to_string),
                    Err(_) => None,
                }
            }
            _ => None,
        };
    let peer = Peer::External {
        ip: destination.ip(),
        host,
    };
    let authz = ConnAuthz::new(
        shared.clone(),
        local,
        Direction::Outbound,
        peer,
        destination,
        destination.port(),
    )
    .with_app_addr(app_addr);
    match authz.decide_external() {
        ExternalVerdict::Allow => External::PassThrough,
        ExternalVerdict::Refused => External::Refused,
        ExternalVerdict::NotExternal => External::Meshed,
    }
}

/// A meshed destination: mTLS to its sidecar (a stream in a pooled tunnel,
/// or a TLS connection of its own), authorize the server, proxy.
async fn to_peer(
    shared: &Arc<Shared>,
    local: &Local,
    app: TcpStream,
    app_addr: SocketAddr,
    destination: SocketAddr,
) -> Option<Connection> {
    let Dialed {
        upstream: tls_stream,
        peer,
    } = Box::pin(
        local
            .tunnels
            .dial(shared, local, destination, Some(app_addr)),
    )
    .await?;
    let authz = ConnAuthz::new(
        shared.clone(),
        local,
        Direction::Outbound,
        Peer::Meshed(peer),
        destination,
        destination.port(),
    )
    .with_app_addr(app_addr)
    .with_transport(match &tls_stream {
        super::pool::Upstream::Tunnel(_) => super::trace::Transport::Pooled,
        super::pool::Upstream::Tls(_) => super::trace::Transport::Strict,
    });
    // The app's protocol, peeked (nothing is consumed or sent yet). HTTP is
    // then authorized per request — a denied request is answered here and
    // never reaches the server; anything else gets one decision before a
    // single app byte moves ([`super::dispatch`]).
    let wait = match dispatch::plan(shared, &authz) {
        Plan::Opaque => None,
        Plan::Race => Some(Duration::ZERO),
        Plan::Detect(wait) => Some(wait),
    };
    let first = match wait {
        None => FirstBytes::Opaque,
        Some(wait) => match detect::detect(&app, wait, detect::MAX_DETECT_BYTES).await {
            Detection::Classified { class, .. } => FirstBytes::of(&class),
            // A server-first protocol, or a late request.
            Detection::ReadTimeout { peeked: 0 } => FirstBytes::Silent,
            Detection::ReadTimeout { peeked } if wait.is_zero() => {
                // Racing: bytes arrived but are not decided yet.
                tracing::trace!(%app_addr, peeked, "racing with bytes buffered");
                FirstBytes::Silent
            }
            Detection::ReadTimeout { peeked } => {
                tracing::debug!(%app_addr, peeked, "dropped: stalled during protocol detection");
                shared
                    .metrics
                    .connection_refused(MetricsDirection::Outbound, "detect_timeout");
                return None;
            }
            // Closed before a byte: an empty TCP stream, still decided.
            Detection::Closed => FirstBytes::Opaque,
            Detection::Error(_) => return None,
        },
    };
    Some(dispatch(
        shared,
        app,
        Bytes::new(),
        first,
        authz,
        None,
        AppSide::Downstream,
        || async { Some(tls_stream) },
    ))
}
