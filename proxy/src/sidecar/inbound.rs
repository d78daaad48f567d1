//! Inbound: peers (mTLS) and callers outside the mesh, to the local app.
//!
//! Per connection, straight through:
//! 1. peek: an `appid/1` ClientHello is a peer sidecar; anything else is a
//!    caller outside the mesh (a stalled sender is dropped at the detection
//!    timeout);
//! 2. for a peer: TLS 1.3 handshake with client certificate required; the
//!    verifier refuses any certificate without a valid AppID (fail closed);
//! 3. find the app protocol inside: HTTP → every request is authorized
//!    (a denial is a 403 or gRPC status 7); anything else → one decision for
//!    the connection, closed on denial, re-checked when the policy changes.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use base64::Engine;
use http::HeaderValue;
use tokio::net::{TcpListener, TcpStream};

use appid_policy::policy::Direction;

use super::authz::{ConnAuthz, ConnVerdict, Peer};
use super::http::{self as l7, HttpVersion, PeerHeaders};
use super::prefixed::{self, Prefixed};
use super::{Shared, orig_dst, tls};
use crate::detect::{self, Classification, Detection};
use crate::identity::verify::PeerRole;
use crate::metrics::Direction as MetricsDirection;

/// One inbound listener from the config.
#[derive(Debug, Clone, Copy)]
pub struct InboundSpec {
    pub listen: SocketAddr,
    /// Explicit mode: the app's address. `None`: transparent (original
    /// destination port on 127.0.0.1).
    pub forward: Option<SocketAddr>,
}

/// Accepts until shutdown.
pub async fn serve(shared: Arc<Shared>, listener: TcpListener, spec: InboundSpec) {
    super::accept_loop(
        shared,
        listener,
        MetricsDirection::Inbound,
        move |shared, stream, peer_addr| async move { handle(&shared, stream, peer_addr, spec).await },
    )
    .await;
}

async fn handle(shared: &Arc<Shared>, stream: TcpStream, peer_addr: SocketAddr, spec: InboundSpec) {
    let _ = stream.set_nodelay(true);
    let (port, app) = match spec.forward {
        Some(forward) => (spec.listen.port(), forward),
        None => match orig_dst::original_destination(&stream) {
            Ok(dst) if !orig_dst::is_self(dst, spec.listen) => (
                dst.port(),
                SocketAddr::from((Ipv4Addr::LOCALHOST, dst.port())),
            ),
            _ => {
                tracing::debug!(%peer_addr, "transparent inbound without an original destination");
                return;
            }
        },
    };

    let limits = shared.limits;
    let class = match detect::detect(&stream, limits.detect_timeout, detect::MAX_DETECT_BYTES).await
    {
        Detection::Classified { class, .. } => class,
        // A silent client may speak a server-first protocol: opaque TCP.
        Detection::ReadTimeout { peeked: 0 } => Classification::Opaque,
        Detection::ReadTimeout { peeked } => {
            tracing::debug!(%peer_addr, peeked, "dropped: stalled during protocol detection");
            shared
                .metrics
                .connection_refused(MetricsDirection::Inbound, "detect_timeout");
            return;
        }
        Detection::Closed | Detection::Error(_) => return,
    };

    match class {
        Classification::TlsClientHello(hello) if hello.offers(tls::ALPN_APPID) => {
            from_peer(shared, stream, peer_addr, port, app).await;
        }
        other => {
            let peer = Peer::Unauthenticated(peer_addr.ip());
            let authz = ConnAuthz::new(shared.clone(), Direction::Inbound, peer, peer_addr, port);
            let version = match other {
                Classification::Http1 => Some(HttpVersion::Http1),
                Classification::Http2Preface => Some(HttpVersion::Http2),
                _ => None,
            };
            to_app(
                shared,
                stream,
                authz,
                version,
                None,
                app,
                bytes::Bytes::new(),
            )
            .await;
        }
    }
}

/// A peer sidecar: mutual TLS, then the app protocol inside.
async fn from_peer(
    shared: &Arc<Shared>,
    stream: TcpStream,
    peer_addr: SocketAddr,
    port: u16,
    app: SocketAddr,
) {
    let limits = shared.limits;
    let Some((mut tls_stream, verified)) = shared
        .mesh_handshake(
            shared.acceptor.accept(stream),
            MetricsDirection::Inbound,
            PeerRole::Client,
            peer_addr,
            |s| s.get_ref().1.peer_certificates(),
        )
        .await
    else {
        return;
    };
    let claims_json = verified.claims.to_json();
    let peer_headers = PeerHeaders {
        id: HeaderValue::from_str(verified.id.as_str()).unwrap_or(HeaderValue::from_static("")),
        claims: HeaderValue::from_str(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims_json),
        )
        .unwrap_or(HeaderValue::from_static("")),
    };
    let peer = Peer::Meshed(Arc::new(verified.claims));
    let authz = ConnAuthz::new(shared.clone(), Direction::Inbound, peer, peer_addr, port);

    let (class, prefix) =
        match prefixed::read_and_classify(&mut tls_stream, limits.detect_timeout).await {
            Ok(found) => found,
            Err(_) => return,
        };
    let version = match class {
        Classification::Http1 => Some(HttpVersion::Http1),
        Classification::Http2Preface => Some(HttpVersion::Http2),
        _ => None,
    };
    to_app(
        shared,
        tls_stream,
        authz,
        version,
        Some(peer_headers),
        app,
        prefix,
    )
    .await;
}

/// Authorizes and forwards to the local app: per request for HTTP, once
/// (and again on policy changes) for opaque TCP.
async fn to_app<S>(
    shared: &Arc<Shared>,
    downstream: S,
    mut authz: ConnAuthz,
    version: Option<HttpVersion>,
    peer_headers: Option<PeerHeaders>,
    app: SocketAddr,
    prefix: bytes::Bytes,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let limits = shared.limits;
    let downstream = Prefixed::new(prefix, downstream);
    match version {
        Some(version) => {
            authz.set_protocol(match version {
                HttpVersion::Http1 => "http1",
                HttpVersion::Http2 => "http2",
            });
            let Some(upstream) = shared.connect(app).await else {
                return;
            };
            let shutdown = shared.shutdown_signal();
            let result = l7::proxy(
                downstream,
                upstream,
                version,
                Arc::new(authz),
                peer_headers,
                shared.http_limits(),
                shutdown,
            )
            .await;
            if let Err(e) = result {
                tracing::debug!(error = %e, "inbound http connection ended with an error");
            }
        }
        None => {
            authz.set_protocol("tcp");
            if authz.decide_connection(Some(false)) != ConnVerdict::Allow {
                return; // audited; dropping the stream closes it
            }
            let Some(upstream) = shared.connect(app).await else {
                return;
            };
            let revoked = shared.revoked(&authz);
            let (end, copied) =
                super::splice::splice(downstream, upstream, &[], limits.idle_timeout, revoked)
                    .await;
            shared.count_bytes(MetricsDirection::Inbound, copied);
            tracing::debug!(?end, ?copied, "inbound tcp connection ended");
        }
    }
}
