//! The client side of `appid-mux/1` ([`super::tunnel`]): a small pool of
//! mTLS connections per peer sidecar, one HTTP/2 CONNECT stream per app
//! connection.
//!
//! Design bias: *a pooled connection is only reused while it proves what a
//! new handshake would*. A tunnel is picked for a new app connection only if
//! our certificate and trust bundle are still the ones it was opened with,
//! and the peer's certificate has neither expired nor been revoked;
//! otherwise it is left to finish its streams and a new one is dialed. Per
//! peer address (and data-plane worker: each keeps its own tunnels, see
//! [`super::workers`]), new streams go to the first tunnel carrying fewer than
//! [`SOFT_STREAMS`]; when all are that busy another is dialed, up to
//! [`MAX_TUNNELS_PER_PEER`]. Dialing happens
//! under the peer's lock, so a burst of app connections waits for one
//! handshake instead of racing to make many. A peer that answers `appid/1`
//! (strict, or older) gets one TLS connection per app connection, dialed
//! without that lock.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use appid_policy::AppIdClaims;

use super::Shared;
use super::eager::{DrivenConnection, Nudge};
use super::http::flood::FrameBudget;
use super::local::Local;
use super::memory::Meter;
use super::read_ahead::ReadAhead;
use super::tls::{self, LocalIdentity};
use super::tunnel::{self, StreamCount, TunnelStream};
use crate::config::TunnelMode;
use crate::detect::ALPN_APPID_MUX;
use crate::identity::verify::{PeerRole, TrustBundle};
use crate::metrics::Direction as MetricsDirection;

/// Streams on one tunnel before a second one to the same peer is opened.
pub const SOFT_STREAMS: usize = 100;
/// Tunnels per peer address at most; beyond, streams share the least busy.
pub const MAX_TUNNELS_PER_PEER: usize = 16;
/// How long a peer that answered `appid/1` is dialed without the pool lock.
const STRICT_PEER_MEMORY: Duration = Duration::from_secs(60);
/// How long after a failed dial new app connections fail fast (or use a
/// remaining tunnel) instead of queueing for another dial.
const FAILED_DIAL_MEMORY: Duration = Duration::from_millis(500);
/// Peer addresses remembered before empty entries are swept.
const SWEEP_ABOVE: usize = 4096;

/// The sidecar-side end of an app connection to a peer.
pub enum Upstream {
    /// A stream in a pooled `appid-mux/1` tunnel.
    Tunnel(TunnelStream),
    /// A TLS connection of its own (`appid/1`).
    Tls(Box<tokio_rustls::client::TlsStream<ReadAhead<TcpStream>>>),
}

impl super::splice::Abort for Upstream {
    fn abort(&mut self) {
        match self {
            Upstream::Tunnel(s) => s.abort(),
            Upstream::Tls(s) => s.abort(),
        }
    }
}

impl super::splice::Chunks for Upstream {
    fn poll_read_chunk(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> Option<std::task::Poll<std::io::Result<bytes::Bytes>>> {
        match self {
            Upstream::Tunnel(s) => s.poll_read_chunk(cx),
            Upstream::Tls(s) => s.poll_read_chunk(cx),
        }
    }

    fn takes_chunks(&self) -> bool {
        match self {
            Upstream::Tunnel(s) => s.takes_chunks(),
            Upstream::Tls(s) => s.takes_chunks(),
        }
    }

    fn poll_write_chunk(
        &mut self,
        cx: &mut std::task::Context<'_>,
        chunk: &mut bytes::Bytes,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self {
            Upstream::Tunnel(s) => s.poll_write_chunk(cx, chunk),
            Upstream::Tls(s) => s.poll_write_chunk(cx, chunk),
        }
    }
}

/// A connection to a peer sidecar, with the peer's verified claims.
pub struct Dialed {
    pub upstream: Upstream,
    pub peer: Arc<AppIdClaims>,
    /// When the peer's certificate expires (Unix seconds).
    pub peer_not_after: i64,
}

/// Tunnels by data-plane worker and peer address: a worker's app
/// connections use only tunnels its own thread drives (see
/// [`super::workers`]), so a stream never wakes another thread.
pub struct TunnelPool {
    mode: TunnelMode,
    peers: Mutex<HashMap<PoolKey, Arc<tokio::sync::Mutex<PeerTunnels>>>>,
}

/// A data-plane worker ([`super::workers::current`]) and a peer address.
type PoolKey = (usize, SocketAddr);

#[derive(Default)]
struct PeerTunnels {
    tunnels: Vec<Arc<Tunnel>>,
    /// Set when the peer last answered `appid/1`.
    strict_until: Option<Instant>,
    /// When the last dial failed.
    failed_at: Option<Instant>,
}

impl PeerTunnels {
    fn least_busy(&self) -> Option<Arc<Tunnel>> {
        self.tunnels
            .iter()
            .min_by_key(|t| t.streams.active())
            .cloned()
    }

    /// Nothing worth remembering: no open tunnel, no recent answer.
    fn is_forgettable(&self) -> bool {
        let now = Instant::now();
        self.tunnels
            .iter()
            .all(|t| t.closed.load(Ordering::Relaxed))
            && self.strict_until.is_none_or(|until| until <= now)
            && self
                .failed_at
                .is_none_or(|at| at.elapsed() >= FAILED_DIAL_MEMORY)
    }
}

/// One pooled `appid-mux/1` connection.
struct Tunnel {
    sender: h2::client::SendRequest<Bytes>,
    peer: Arc<AppIdClaims>,
    peer_not_after: i64,
    /// What the connection was opened with (compared by pointer).
    identity: Arc<LocalIdentity>,
    bundle: Arc<TrustBundle>,
    streams: Arc<StreamCount>,
    /// Set when the connection task ended (error, GOAWAY, idle close).
    closed: Arc<AtomicBool>,
    /// Sends the first frame queued on a quiet connection at once.
    nudge: Arc<dyn Nudge>,
}

impl Tunnel {
    /// Whether a new app connection may use this tunnel (see the module doc).
    fn usable(&self, tls: &tls::TlsState, now: i64) -> bool {
        !self.closed.load(Ordering::Relaxed)
            && tls.is_current(&self.identity, &self.bundle)
            && now < self.peer_not_after
            && !tls.trust.is_revoked(&self.peer.id)
    }

    /// Opens one CONNECT stream to `destination` for the app at `app_addr`.
    async fn open_stream(
        &self,
        destination: SocketAddr,
        app_addr: Option<SocketAddr>,
        timeout: Duration,
        meter: Meter,
    ) -> Result<TunnelStream, StreamFailure> {
        let counted = self.streams.open();
        let ready = tokio::time::timeout(timeout, self.sender.clone().ready());
        let mut sender = match ready.await {
            Ok(Ok(sender)) => sender,
            Ok(Err(e)) => return Err(StreamFailure::Tunnel(format!("not ready: {e}"))),
            Err(_) => return Err(StreamFailure::Tunnel("not ready in time".into())),
        };
        let mut request = http::Request::connect(destination.to_string());
        if let Some(app_addr) = app_addr {
            request = request.header(http::header::FORWARDED, tunnel::forwarded_for(app_addr));
        }
        let request = request
            .body(())
            .map_err(|e| StreamFailure::Stream(e.to_string()))?;
        let (response, send) = sender
            .send_request(request, false)
            .map_err(|e| StreamFailure::Tunnel(format!("CONNECT not sent: {e}")))?;
        self.nudge.queued();
        let response = match tokio::time::timeout(timeout, response).await {
            Ok(Ok(response)) => response,
            // A refused stream (e.g. the server is at its connection limit)
            // says nothing about the tunnel; a GOAWAY or I/O error does.
            Ok(Err(e)) if e.is_reset() && !e.is_go_away() => {
                return Err(StreamFailure::Stream(format!("CONNECT refused: {e}")));
            }
            Ok(Err(e)) => return Err(StreamFailure::Tunnel(format!("CONNECT failed: {e}"))),
            Err(_) => return Err(StreamFailure::Tunnel("CONNECT not answered in time".into())),
        };
        if response.status() != http::StatusCode::OK {
            return Err(StreamFailure::Stream(format!(
                "CONNECT answered {}",
                response.status()
            )));
        }
        Ok(TunnelStream::new(
            send,
            response.into_body(),
            Some(counted),
            Some(meter),
            Some(self.nudge.clone()),
        ))
    }
}

/// Why a stream could not be opened.
enum StreamFailure {
    /// The tunnel itself is unusable: retire it.
    Tunnel(String),
    /// This stream was refused; the tunnel may carry others.
    Stream(String),
}

enum Negotiated {
    Mux(Arc<Tunnel>),
    Strict(Dialed),
}

impl TunnelPool {
    pub fn new(mode: TunnelMode) -> Self {
        TunnelPool {
            mode,
            peers: Mutex::new(HashMap::new()),
        }
    }

    /// A verified connection to the peer sidecar at `destination`, made as
    /// `local` (whose pool this is): a stream in a pooled tunnel when both
    /// sides speak `appid-mux/1`, else a TLS connection of its own. `None`
    /// after logging and counting why not.
    pub async fn dial(
        &self,
        shared: &Shared,
        local: &Local,
        destination: SocketAddr,
        app_addr: Option<SocketAddr>,
    ) -> Option<Dialed> {
        if self.mode == TunnelMode::Pooled && shared.memory.is_exhausted() {
            // Shed: no new stream while peers hold the whole byte budget.
            tracing::info!(%destination, "outbound stream refused: byte budget exhausted");
            shared
                .metrics
                .stream_shed(MetricsDirection::Outbound, "memory");
            return None;
        }
        if self.mode == TunnelMode::Strict {
            return match handshake(shared, local, destination).await? {
                Negotiated::Strict(dialed) => Some(dialed),
                Negotiated::Mux(_) => None, // not offered; cannot happen
            };
        }
        // A stream that fails on a pooled tunnel is retried; the last
        // attempt always dials a fresh tunnel (e.g. the server renewed its
        // certificate and sent GOAWAY on every tunnel we hold).
        const ATTEMPTS: usize = 3;
        for attempt in 1..=ATTEMPTS {
            let fresh = attempt == ATTEMPTS;
            let tunnel = match self.tunnel_for(shared, local, destination, fresh).await? {
                Negotiated::Mux(tunnel) => tunnel,
                Negotiated::Strict(dialed) => return Some(dialed),
            };
            match tunnel
                .open_stream(
                    destination,
                    app_addr,
                    shared.limits.handshake_timeout,
                    shared.memory.meter(&tunnel.peer.id),
                )
                .await
            {
                Ok(stream) => {
                    shared.metrics.tunnel_stream(MetricsDirection::Outbound);
                    return Some(Dialed {
                        upstream: Upstream::Tunnel(stream),
                        peer: tunnel.peer.clone(),
                        peer_not_after: tunnel.peer_not_after,
                    });
                }
                Err(StreamFailure::Tunnel(reason)) => {
                    tracing::debug!(%destination, %reason, "tunnel failed; retiring it");
                    tunnel.closed.store(true, Ordering::Relaxed);
                }
                Err(StreamFailure::Stream(reason)) => {
                    tracing::debug!(%destination, %reason, "tunnel stream refused");
                }
            }
        }
        None
    }

    /// A usable pooled tunnel to `destination` (`fresh`: a new one),
    /// dialing one if needed.
    async fn tunnel_for(
        &self,
        shared: &Shared,
        local: &Local,
        destination: SocketAddr,
        fresh: bool,
    ) -> Option<Negotiated> {
        let slot = self.slot(destination);
        let mut peer = slot.lock().await;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        peer.tunnels.retain(|t| t.usable(&local.tls, now));
        if !fresh {
            // First fit, not least busy: packing streams onto the oldest
            // tunnel keeps their frames batched together, and lets the
            // others idle out.
            if let Some(tunnel) = peer
                .tunnels
                .iter()
                .find(|t| t.streams.active() < SOFT_STREAMS)
            {
                return Some(Negotiated::Mux(tunnel.clone()));
            }
            if peer.tunnels.len() >= MAX_TUNNELS_PER_PEER {
                return peer.least_busy().map(Negotiated::Mux);
            }
        }
        if peer
            .failed_at
            .is_some_and(|at| at.elapsed() < FAILED_DIAL_MEMORY)
        {
            // The last dial failed just now: don't queue every app
            // connection behind another one.
            return peer.least_busy().map(Negotiated::Mux);
        }
        if peer
            .strict_until
            .is_some_and(|until| Instant::now() < until)
        {
            // A strict peer: don't make every app connection queue for
            // the lock while one handshake runs.
            drop(peer);
            let negotiated = handshake(shared, local, destination).await?;
            if let Negotiated::Mux(tunnel) = &negotiated {
                let mut peer = slot.lock().await;
                peer.strict_until = None;
                if peer.tunnels.len() < MAX_TUNNELS_PER_PEER {
                    peer.tunnels.push(tunnel.clone());
                }
            }
            return Some(negotiated);
        }
        let Some(negotiated) = handshake(shared, local, destination).await else {
            peer.failed_at = Some(Instant::now());
            // Tunnels that still work are better than nothing, if they are
            // still usable after the wait (the bundle or our identity may
            // have changed during the dial).
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            peer.tunnels.retain(|t| t.usable(&local.tls, now));
            return peer.least_busy().map(Negotiated::Mux);
        };
        peer.failed_at = None;
        match &negotiated {
            Negotiated::Mux(tunnel) => peer.tunnels.push(tunnel.clone()),
            Negotiated::Strict(_) => peer.strict_until = Some(Instant::now() + STRICT_PEER_MEMORY),
        }
        Some(negotiated)
    }

    fn slot(&self, destination: SocketAddr) -> Arc<tokio::sync::Mutex<PeerTunnels>> {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if peers.len() > SWEEP_ABOVE {
            // Forget peers with nothing open (transparent mode can see many).
            peers.retain(|_, slot| slot.try_lock().map_or(true, |p| !p.is_forgettable()));
        }
        peers
            .entry((super::workers::current(), destination))
            .or_default()
            .clone()
    }
}

/// TCP, TLS and AppID verification to `destination`; then, when the server
/// selected `appid-mux/1`, the HTTP/2 handshake and a task that drives the
/// connection until it fails, is told to go away, or idles out.
async fn handshake(shared: &Shared, local: &Local, destination: SocketAddr) -> Option<Negotiated> {
    // Loaded before the handshake uses them: a swap during the handshake
    // makes the tunnel stale at once rather than mislabelled.
    let identity = local.tls.identity.load_full();
    let bundle = shared.trust.bundle.load_full();
    let tcp = ReadAhead::new(shared.connect(destination).await?);
    let (mut tls_stream, verified) = shared
        .mesh_handshake(
            local.connector.connect(tls::peer_server_name(), tcp),
            MetricsDirection::Outbound,
            PeerRole::Server,
            destination,
            |s| s.get_ref().1.peer_certificates(),
        )
        .await?;
    let peer_not_after = verified.not_after;
    let peer = Arc::new(verified.claims);
    if tls_stream.get_ref().1.alpn_protocol() != Some(ALPN_APPID_MUX) {
        shared
            .metrics
            .mesh_connection(MetricsDirection::Outbound, "appid/1");
        return Some(Negotiated::Strict(Dialed {
            upstream: Upstream::Tls(Box::new(tls_stream)),
            peer,
            peer_not_after,
        }));
    }
    tls_stream.get_mut().0.enable();
    // The server end of a tunnel is as able to flood control frames as the
    // client end, and is budgeted alike (the server sends no preface).
    let tls_stream = FrameBudget::new(tls_stream, false);
    let flooded = tls_stream.tripped();
    let h2_handshake = tunnel::client_builder().handshake::<_, Bytes>(tls_stream);
    // Dropped (closing the socket) only after a timeout is counted.
    tokio::pin!(h2_handshake);
    let (sender, connection) =
        match tokio::time::timeout(shared.limits.handshake_timeout, h2_handshake.as_mut()).await {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => {
                tracing::info!(%destination, error = %e, "tunnel handshake failed");
                shared
                    .metrics
                    .handshake_failure(MetricsDirection::Outbound, "tunnel");
                return None;
            }
            Err(_) => {
                shared
                    .metrics
                    .handshake_failure(MetricsDirection::Outbound, "timeout");
                return None;
            }
        };
    shared
        .metrics
        .mesh_connection(MetricsDirection::Outbound, "appid-mux/1");

    let streams = StreamCount::new();
    let closed = Arc::new(AtomicBool::new(false));
    let idle_timeout = shared.limits.http_idle_timeout;
    let connection = DrivenConnection::new(connection);
    let nudge = connection.nudge();
    tokio::spawn({
        let streams = streams.clone();
        let closed = closed.clone();
        let metrics = shared.metrics.clone();
        async move {
            // `biased`: no random start per poll (the connection is
            // polled for every frame); it ends at most once.
            tokio::select! {
                biased;
                result = tunnel::Coalesce::new(connection) => {
                    if flooded.load(Ordering::Relaxed) {
                        tracing::info!(%destination, "tunnel closed: HTTP/2 control frame flood");
                        metrics.h2_flood_closed(MetricsDirection::Outbound);
                    } else if let Err(e) = result {
                        tracing::debug!(%destination, error = %e, "tunnel closed");
                    }
                }
                () = streams.idle(idle_timeout) => {
                    tracing::debug!(%destination, "idle tunnel closed");
                }
            }
            closed.store(true, Ordering::Relaxed);
        }
    });
    Some(Negotiated::Mux(Arc::new(Tunnel {
        sender,
        peer,
        peer_not_after: verified.not_after,
        identity,
        bundle,
        streams,
        closed,
        nudge,
    })))
}

impl AsyncRead for Upstream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Tunnel(s) => Pin::new(s).poll_read(cx, buf),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Upstream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Upstream::Tunnel(s) => Pin::new(s).poll_write(cx, buf),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Upstream::Tunnel(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Upstream::Tunnel(s) => s.is_write_vectored(),
            Upstream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Tunnel(s) => Pin::new(s).poll_flush(cx),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Tunnel(s) => Pin::new(s).poll_shutdown(cx),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sidecar::workers::Workers;

    #[test]
    fn each_worker_has_its_own_tunnels_to_a_peer() {
        let pool = Arc::new(TunnelPool::new(TunnelMode::Pooled));
        let peer: SocketAddr = "10.0.0.2:15006".parse().unwrap();
        let workers = Workers::start(2).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let slots: Vec<_> = runtime.block_on(async {
            let mut slots = Vec::new();
            for handle in workers.handles() {
                // Twice on each worker: the same slot both times.
                for _ in 0..2 {
                    let pool = pool.clone();
                    slots.push(handle.spawn(async move { pool.slot(peer) }).await.unwrap());
                }
            }
            slots
        });
        assert!(Arc::ptr_eq(&slots[0], &slots[1]), "one worker, one slot");
        assert!(Arc::ptr_eq(&slots[2], &slots[3]), "one worker, one slot");
        assert!(
            !Arc::ptr_eq(&slots[0], &slots[2]),
            "two workers never share a tunnel"
        );
    }
}
