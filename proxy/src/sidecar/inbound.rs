//! Inbound: peers (mTLS) and callers outside the mesh, to the local app.
//!
//! Per connection, straight through:
//! 1. peek: a ClientHello offering `appid/1` or `appid-mux/1` is a peer
//!    sidecar; anything else is a caller outside the mesh (a stalled sender
//!    is dropped at the detection timeout);
//! 2. for a peer: TLS 1.3 handshake with client certificate required; the
//!    verifier refuses any certificate without a valid AppID (fail closed);
//!    with `appid-mux/1`, each HTTP/2 CONNECT stream inside is one app
//!    connection from that peer ([`super::tunnel`]), taken through step 3;
//! 3. find the app protocol inside and hand the connection to
//!    [`super::dispatch`]: HTTP → every request is authorized (a denial is
//!    a 403 or gRPC status 7); anything else → one decision for the
//!    connection, closed on denial, re-checked when the policy changes.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use futures_util::FutureExt;
use http::HeaderValue;
use tokio::net::TcpStream;

use appid_policy::policy::Direction;

use super::authz::{ConnAuthz, Peer};
use super::balance::Acceptor;
use super::dispatch::{self, Connection, FirstBytes, Plan, dispatch};
use super::eager::DrivenConnection;
use super::http::flood::FrameBudget;
use super::http::{AppSide, PeerHeaders};
use super::local::Local;
use super::pending::SourceGuard;
use super::prefixed;
use super::read_ahead::ReadAhead;
use super::splice::{Abort, Chunks};
use super::trace::Transport;
use super::tunnel::{self, StreamCount, TunnelStream};
use super::{PeerConnection, Shared, orig_dst, tls};
use crate::detect::{self, Classification, Detection, MeshAlpn};
use crate::identity::verify::{PeerRole, VerifiedPeer};
use crate::metrics::Direction as MetricsDirection;
use crate::sidecar::{LocalIdentity, TrustBundle};

/// One inbound listener from the config.
#[derive(Debug, Clone, Copy)]
pub struct InboundSpec {
    pub listen: SocketAddr,
    /// Explicit mode: the app's address. `None`: transparent (original
    /// destination port on 127.0.0.1).
    pub forward: Option<SocketAddr>,
}

/// Accepts until shutdown. Connections are refused at once while the
/// sidecar's own certificate is expired; each is then served as the
/// identity of its app port ([`super::local`]).
pub async fn serve(shared: Arc<Shared>, acceptor: Acceptor, spec: InboundSpec) {
    let own = shared.locals.own().clone();
    super::accept_loop(
        shared,
        acceptor,
        MetricsDirection::Inbound,
        own,
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
    // Until its first bytes say what it is, the connection may be evicted
    // for a newcomer when the inbound budget is full: while silent, after
    // a short while; once bytes came that do not say yet what it is, after
    // longer (`pending::Stage::Unfinished`).
    let Some(source) = shared.detecting_from(peer_addr.ip()) else {
        return;
    };
    let detection = {
        let detect = detect::detect(&stream, limits.detect_timeout, detect::MAX_DETECT_BYTES);
        tokio::pin!(detect);
        let mut pending = shared.silent();
        let mut spoke = false;
        loop {
            tokio::select! {
                // Detection first: its answer makes the rest moot, and an
                // eviction notice must not be lost to `readable`.
                biased;
                detection = &mut detect => break detection,
                () = pending.evicted() => {
                    let mut byte = [0u8; 1];
                    let sent = stream.peek(&mut byte).now_or_never();
                    if spoke || !matches!(sent, Some(Ok(n)) if n > 0) {
                        tracing::debug!(%peer_addr, unfinished = spoke, "evicted during protocol detection for a newcomer");
                        return;
                    }
                    // Bytes came just now: it gets an unfinished one's time.
                    spoke = true;
                    pending = shared.unfinished();
                }
                // The first bytes (or the end): no longer silent.
                Ok(()) = stream.readable(), if !spoke => {
                    spoke = true;
                    pending = shared.unfinished();
                }
            }
        }
    };
    let class = match detection {
        Detection::Classified { class, .. } => Some(class),
        // A silent client: a server-first protocol, or a late request.
        Detection::ReadTimeout { peeked: 0 } => None,
        Detection::ReadTimeout { peeked } => {
            tracing::debug!(%peer_addr, peeked, "dropped: stalled during protocol detection");
            shared
                .metrics
                .connection_refused(MetricsDirection::Inbound, "detect_timeout");
            return;
        }
        // Closed before a byte: an empty TCP stream, still decided (as a
        // caller outside the mesh: a peer sidecar starts with a ClientHello).
        Detection::Closed => Some(Classification::Opaque),
        Detection::Error(_) => return,
    };

    match class {
        Some(Classification::TlsClientHello(hello))
            if hello.mesh_alpn() != MeshAlpn::NotOffered =>
        {
            // Boxed: the TLS handshake's state is large and short-lived.
            // Still anonymous until the handshake proves who it is: the
            // source's share stays taken until then.
            Box::pin(from_peer(
                shared, stream, peer_addr, spec, port, app, source,
            ))
            .await;
        }
        other => {
            drop(source);
            // Outside the mesh; the bytes were only peeked, so the stream
            // still starts at its first byte.
            let Some(_slot) = shared.admit_unauthenticated(peer_addr.ip()) else {
                return;
            };
            let peer = Peer::Unauthenticated(peer_addr.ip());
            let local = shared.locals.for_inbound_port(port);
            let authz = ConnAuthz::new(
                shared.clone(),
                local,
                Direction::Inbound,
                peer,
                peer_addr,
                port,
            );
            let first = other.as_ref().map_or(FirstBytes::Silent, FirstBytes::of);
            to_app(shared, stream, authz, first, None, app, Bytes::new()).await;
        }
    }
}

/// A verified `appid-mux/1` connection, as its handshake made it.
struct Tunnel {
    verified: VerifiedPeer,
    /// Our certificate and trust bundle when the handshake began.
    presented: (Arc<LocalIdentity>, Arc<TrustBundle>),
    peer_addr: SocketAddr,
    /// The port the connection was captured on.
    connection_port: u16,
}

/// A peer sidecar: mutual TLS, then one app connection inside (`appid/1`)
/// or many, as HTTP/2 CONNECT streams (`appid-mux/1`).
async fn from_peer(
    shared: &Arc<Shared>,
    stream: TcpStream,
    peer_addr: SocketAddr,
    spec: InboundSpec,
    port: u16,
    app: SocketAddr,
    anonymous: SourceGuard,
) {
    // We answer as the service listening on the app port (the stream's
    // port is always the connection's, see `stream_target`), or ourselves.
    let local = shared.locals.for_inbound_port(port).clone();
    // Until it proves who it is, a handshake that has been under way for a
    // while may be evicted for a newcomer when the budget is full.
    let in_handshake = shared.handshaking();
    // What this handshake presents and trusts, read before it starts (as
    // the client side does): a renewal or a bundle change while it runs
    // then refuses the tunnel's streams, so the peer never keeps deciding
    // on claims we no longer present.
    let presented = (
        local.tls.identity.load_full(),
        shared.trust.bundle.load_full(),
    );
    let handshake = async {
        tokio::select! {
            accepted = local.acceptor.accept(ReadAhead::new(stream)) => accepted,
            () = in_handshake.evicted() => Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "handshake evicted for a newcomer",
            )),
        }
    };
    let Some((mut tls_stream, verified)) = shared
        .mesh_handshake(
            handshake,
            MetricsDirection::Inbound,
            PeerRole::Client,
            peer_addr,
            |s| s.get_ref().1.peer_certificates(),
        )
        .await
    else {
        return;
    };
    drop((anonymous, in_handshake));
    // The TLS connection is one of the peer's share, a tunnel too (its
    // streams take one each besides): it holds an inbound slot, and a peer
    // that opened tunnels and no streams in them could otherwise take them
    // all.
    let Some(_peer_share) = shared.peer_connection(&verified.claims.id, PeerConnection::Tls) else {
        return;
    };
    if tls_stream.get_ref().1.alpn_protocol() == Some(tls::ALPN_APPID_MUX) {
        shared
            .metrics
            .mesh_connection(MetricsDirection::Inbound, "appid-mux/1");
        tls_stream.get_mut().0.enable();
        let tunnel = Tunnel {
            verified,
            presented,
            peer_addr,
            connection_port: port,
        };
        serve_tunnel(shared, &local, tls_stream, tunnel, spec).await;
        return;
    }
    shared
        .metrics
        .mesh_connection(MetricsDirection::Inbound, "appid/1");
    let peer_headers = peer_headers(&verified);
    let peer_not_after = verified.not_after;
    let peer = Peer::Meshed(Arc::new(verified.claims));
    let authz = ConnAuthz::new(
        shared.clone(),
        &local,
        Direction::Inbound,
        peer,
        peer_addr,
        port,
    )
    .with_transport(Transport::Strict)
    .vouched_until(peer_not_after);
    if let Some(connection) = from_peer_to_app(shared, tls_stream, authz, peer_headers, app).await {
        connection.await;
    }
}

/// The headers the app sees for an authenticated peer.
fn peer_headers(verified: &VerifiedPeer) -> PeerHeaders {
    let claims_json = verified.claims.to_json();
    PeerHeaders {
        id: HeaderValue::from_str(verified.id.as_str()).unwrap_or(HeaderValue::from_static("")),
        claims: HeaderValue::from_str(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims_json),
        )
        .unwrap_or(HeaderValue::from_static("")),
    }
}

/// One app connection from a verified peer (a TLS connection or a tunnel
/// stream): find its protocol, then the way on ([`dispatch`]). A setup:
/// `None` when the connection closed or failed during detection.
async fn from_peer_to_app<S>(
    shared: &Arc<Shared>,
    mut downstream: S,
    authz: ConnAuthz,
    peer_headers: PeerHeaders,
    app: SocketAddr,
) -> Option<Connection>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Abort + Chunks + Unpin + Send + 'static,
{
    let (first, prefix) = match dispatch::plan(shared, &authz) {
        Plan::Opaque => (FirstBytes::Opaque, Bytes::new()),
        Plan::Race => (FirstBytes::Silent, Bytes::new()),
        Plan::Detect(wait) => match prefixed::read_and_classify(&mut downstream, wait).await {
            Ok((_, prefix)) if prefix.is_empty() => (FirstBytes::Silent, prefix),
            Ok((class, prefix)) => (FirstBytes::of(&class), prefix),
            // Closed before a byte: an empty TCP stream, still decided.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                (FirstBytes::Opaque, Bytes::new())
            }
            Err(_) => return None,
        },
    };
    Some(to_app(
        shared,
        downstream,
        authz,
        first,
        Some(peer_headers),
        app,
        prefix,
    ))
}

/// Why a tunnel stream was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamRefusal {
    /// Our certificate or trust bundle changed since the handshake: the
    /// peer must handshake again to see (and be checked against) the new one.
    IdentityChanged,
    /// The peer's certificate expired after the handshake.
    PeerExpired,
    /// The authority revoked the peer after the handshake.
    PeerRevoked,
}

impl StreamRefusal {
    fn as_str(self) -> &'static str {
        match self {
            StreamRefusal::IdentityChanged => "identity_changed",
            StreamRefusal::PeerExpired => "expired",
            StreamRefusal::PeerRevoked => "revoked",
        }
    }
}

/// An `appid-mux/1` connection: every CONNECT stream is an app connection
/// from the same verified peer, authorized (and audited) on its own. New
/// streams are refused once the connection no longer proves what a new
/// handshake would (see [`StreamRefusal`]); the connection closes when it
/// has carried no stream for the idle timeout, or at shutdown, after its
/// streams finish (GOAWAY first).
async fn serve_tunnel(
    shared: &Arc<Shared>,
    local: &Local,
    tls_stream: tokio_rustls::server::TlsStream<ReadAhead<TcpStream>>,
    tunnel: Tunnel,
    spec: InboundSpec,
) {
    let Tunnel {
        verified,
        presented: (identity, bundle),
        peer_addr,
        connection_port,
    } = tunnel;
    let limits = shared.limits;
    // Control frames are budgeted like on any HTTP/2 connection.
    let tls_stream = FrameBudget::new(tls_stream, true);
    let flooded = tls_stream.tripped();
    let handshake = tunnel::server_builder().handshake::<_, Bytes>(tls_stream);
    // Dropped (closing the socket) only after a timeout is counted.
    tokio::pin!(handshake);
    let connection = match tokio::time::timeout(limits.handshake_timeout, handshake.as_mut()).await
    {
        Ok(Ok(connection)) => DrivenConnection::new(connection),
        Ok(Err(e)) => {
            tracing::info!(%peer_addr, error = %e, "tunnel handshake failed");
            shared
                .metrics
                .handshake_failure(MetricsDirection::Inbound, "tunnel");
            return;
        }
        Err(_) => {
            shared
                .metrics
                .handshake_failure(MetricsDirection::Inbound, "timeout");
            return;
        }
    };
    let headers = peer_headers(&verified);
    let peer_not_after = verified.not_after;
    let peer = Arc::new(verified.claims);
    let streams = StreamCount::new();
    let idle = streams.idle(limits.http_idle_timeout);
    let shutdown = shared.shutdown_signal();
    // Armed at GOAWAY: a peer that never finishes (or never answers the
    // closing PING) loses the connection at the drain timeout.
    let drained = tokio::time::sleep(Duration::MAX);
    tokio::pin!(idle, shutdown, drained);
    let nudge = connection.nudge();
    // The next stream; `None` once the connection has ended.
    let accept = || {
        std::future::poll_fn(
            |cx| match connection.poll_with(cx, |c, cx| c.poll_accept(cx)) {
                Ok(poll) => poll,
                // A stream's nudge saw it end (see `eager`).
                Err(ended) => Poll::Ready(ended.err().map(Err)),
            },
        )
    };
    let mut going_away = false;
    loop {
        // `biased`: no random start per poll (the connection is polled
        // for every frame); the timers first, so a peer whose streams keep
        // coming still meets them.
        let accepted = tokio::select! {
            biased;
            () = &mut shutdown, if !going_away => {
                connection.with(|c| c.graceful_shutdown());
                going_away = true;
                drained.as_mut().reset(tokio::time::Instant::now() + limits.drain_timeout);
                continue;
            }
            () = &mut drained, if going_away => {
                tracing::debug!(%peer_addr, "tunnel not drained in time; closing it");
                break;
            }
            () = &mut idle, if !going_away => {
                connection.with(|c| c.graceful_shutdown());
                going_away = true;
                drained.as_mut().reset(tokio::time::Instant::now() + limits.drain_timeout);
                continue;
            }
            accepted = tunnel::Coalesce::new(accept()) => accepted,
        };
        let (request, mut respond) = match accepted {
            None => break,
            Some(Ok(pair)) => pair,
            Some(Err(e)) => {
                if flooded.load(std::sync::atomic::Ordering::Relaxed) {
                    tracing::info!(%peer_addr, "tunnel closed: HTTP/2 control frame flood");
                    shared.metrics.h2_flood_closed(MetricsDirection::Inbound);
                } else {
                    tracing::debug!(%peer_addr, error = %e, "tunnel ended");
                }
                break;
            }
        };

        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let refusal = if !local.tls.is_current(&identity, &bundle) {
            Some(StreamRefusal::IdentityChanged)
        } else if now >= peer_not_after {
            Some(StreamRefusal::PeerExpired)
        } else if shared.trust.is_revoked(&peer.id) {
            Some(StreamRefusal::PeerRevoked)
        } else {
            None
        };
        if let Some(refusal) = refusal {
            tracing::info!(%peer_addr, reason = refusal.as_str(), "tunnel stream refused");
            shared
                .metrics
                .connection_refused(MetricsDirection::Inbound, refusal.as_str());
            respond.send_reset(h2::Reason::REFUSED_STREAM);
            if !going_away {
                connection.with(|c| c.graceful_shutdown());
                going_away = true;
                // After a renewal of ours (same trust roots: a file reload
                // stores an equal bundle anew), the streams
                // already carried were authorized on certificates that still
                // hold: they may finish until the first of the two expires
                // (HTTP ones wind down just before), as on a tunnel no new
                // stream came to. The drain timeout cuts the rest.
                let renewed = refusal == StreamRefusal::IdentityChanged
                    && bundle.same_roots(&shared.trust.bundle.load());
                let drain = tokio::time::Instant::now() + limits.drain_timeout;
                let drain = if renewed {
                    drain.max(
                        super::authz::instant_at(
                            identity.not_after.min(peer_not_after),
                            Duration::ZERO,
                        )
                        // No date: no expiry to wait for; a year.
                        .unwrap_or_else(|| drain + Duration::from_secs(365 * 24 * 3600)),
                    )
                } else {
                    drain
                };
                drained.as_mut().reset(drain);
            }
            continue;
        }

        let Some((port, app)) =
            stream_target(request.method(), request.uri(), spec, connection_port)
        else {
            tracing::info!(%peer_addr, uri = %request.uri(), "tunnel stream refused: not a CONNECT to ip:port");
            let mut bad = http::Response::new(());
            *bad.status_mut() = http::StatusCode::BAD_REQUEST;
            let _ = respond.send_response(bad, true);
            continue;
        };
        if shared.memory.is_exhausted() {
            // Shed: the peer retries on a new connection, or later.
            tracing::info!(%peer_addr, "tunnel stream refused: byte budget exhausted");
            shared
                .metrics
                .stream_shed(MetricsDirection::Inbound, "memory");
            respond.send_reset(h2::Reason::REFUSED_STREAM);
            continue;
        }
        let Some(peer_share) = shared.peer_connection(&peer.id, PeerConnection::TunnelStream)
        else {
            respond.send_reset(h2::Reason::REFUSED_STREAM);
            continue;
        };
        // Admission may wait briefly (evicting a silent caller to make room):
        // in the stream's own task, so the accept loop never waits.
        let shared = shared.clone();
        let headers = headers.clone();
        let counted = streams.open();
        let authz = ConnAuthz::new(
            shared.clone(),
            local,
            Direction::Inbound,
            Peer::Meshed(peer.clone()),
            peer_addr,
            port,
        )
        .with_transport(Transport::Pooled)
        .vouched_until(peer_not_after);
        // The calling app's address, as its sidecar reports it.
        let authz = match tunnel::forwarded_app(request.headers()) {
            Some(app_addr) => authz.with_app_addr(app_addr),
            None => authz,
        };
        let meter = shared.memory.meter(&peer.id);
        // Only the body goes on: the CONNECT request's head (its header map
        // on the heap) is not kept for the stream's whole life.
        let body = request.into_body();
        let nudge = nudge.clone();
        let set_up = async move {
            let Some(permit) = shared.admit(MetricsDirection::Inbound).await else {
                respond.send_reset(h2::Reason::REFUSED_STREAM);
                return None;
            };
            let send = respond.send_response(http::Response::new(()), false).ok()?;
            nudge.queued();
            shared.metrics.tunnel_stream(MetricsDirection::Inbound);
            let stream = TunnelStream::new(send, body, Some(counted), Some(meter), Some(nudge));
            let connection = from_peer_to_app(&shared, stream, authz, headers, app).await?;
            // The admission and the peer's share are held until it ends.
            Some(connection.map(move |()| drop((permit, peer_share))))
        };
        tokio::spawn(dispatch::set_up_then_run(set_up));
    }
}

/// Where a tunnel stream goes: the policy port and the app address. Explicit
/// listeners have one app (the `:authority` only has to be well formed).
/// Transparent ones reach `127.0.0.1:<port>` where the port must be the one
/// the TLS connection itself was sent to (its original destination): the
/// capture rules decide which ports a peer can reach at all (the admin API,
/// excluded ports stay out of reach), and a stream cannot widen that.
fn stream_target(
    method: &http::Method,
    uri: &http::Uri,
    spec: InboundSpec,
    connection_port: u16,
) -> Option<(u16, SocketAddr)> {
    if method != http::Method::CONNECT {
        return None;
    }
    let target: SocketAddr = uri.authority()?.as_str().parse().ok()?;
    match spec.forward {
        Some(forward) => Some((spec.listen.port(), forward)),
        None if target.port() != connection_port || target.port() == spec.listen.port() => None,
        None => Some((
            target.port(),
            SocketAddr::from((Ipv4Addr::LOCALHOST, target.port())),
        )),
    }
}

/// Authorizes and forwards to the local app: per request for HTTP, once
/// (and again on policy changes) for opaque TCP. Returns `dispatch`'s
/// future itself (see there why this is no `async fn`).
fn to_app<S>(
    shared: &Arc<Shared>,
    downstream: S,
    authz: ConnAuthz,
    first: FirstBytes,
    peer_headers: Option<PeerHeaders>,
    app: SocketAddr,
    prefix: Bytes,
) -> Connection
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Abort + Chunks + Unpin + Send + 'static,
{
    dispatch(
        shared,
        downstream,
        prefix,
        first,
        authz,
        peer_headers,
        AppSide::Upstream,
        {
            let shared = shared.clone();
            move || async move { shared.connect(app).await }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(uri: &str, forward: Option<&str>, connection_port: u16) -> Option<(u16, SocketAddr)> {
        let spec = InboundSpec {
            listen: "0.0.0.0:15106".parse().unwrap(),
            forward: forward.map(|f| f.parse().unwrap()),
        };
        let spec = match forward {
            Some(_) => InboundSpec {
                listen: "127.0.0.1:8443".parse().unwrap(),
                ..spec
            },
            None => spec,
        };
        stream_target(
            &http::Method::CONNECT,
            &uri.parse().unwrap(),
            spec,
            connection_port,
        )
    }

    #[test]
    fn transparent_streams_stay_on_the_captured_port() {
        assert_eq!(
            target("10.0.0.2:8080", None, 8080),
            Some((8080, "127.0.0.1:8080".parse().unwrap()))
        );
        // Another port (e.g. the loopback-only admin API) is refused.
        assert_eq!(target("10.0.0.2:15190", None, 8080), None);
        assert_eq!(target("10.0.0.2:15106", None, 15106), None);
        assert_eq!(target("not-an-address", None, 8080), None);
    }

    #[test]
    fn explicit_streams_reach_the_configured_app() {
        assert_eq!(
            target("10.0.0.2:8443", Some("127.0.0.1:8080"), 8443),
            Some((8443, "127.0.0.1:8080".parse().unwrap()))
        );
    }

    #[test]
    fn only_connect_opens_a_stream() {
        let spec = InboundSpec {
            listen: "0.0.0.0:15106".parse().unwrap(),
            forward: None,
        };
        let uri: http::Uri = "10.0.0.2:8080".parse().unwrap();
        assert_eq!(stream_target(&http::Method::GET, &uri, spec, 8080), None);
    }
}
