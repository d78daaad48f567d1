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

use super::authz::{ConnAuthz, ExternalVerdict, NameMatters, Peer};
use super::balance::Acceptor;
use super::dispatch::{self, Connection, FirstBytes, Plan, dispatch};
use super::http::{AppSide, HttpVersion};
use super::local::Local;
use super::pool::{Dialed, Upstream};
use super::request_watch::{Head, Judge, RequestWatch, Watch};
use super::{Shared, orig_dst};
use crate::config::PortProtocol;
use crate::detect::{self, Classification, Detection};
use crate::head_host::{self, HeadHost};
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
            External::PassThrough { to, watch } => {
                let mut upstream = shared.connect(to).await?;
                let app = super::counted::Counted::new(
                    app,
                    shared.metrics.bytes_counter(MetricsDirection::Outbound),
                );
                let mut app = RequestWatch::new(app, watch);
                let meter = shared.memory.meter(&format!("external {}", to.ip()));
                let idle_timeout = shared.tcp_idle_timeout(to.port());
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
            External::Http { to, authz } => {
                // Allowed by the name in its first request's `Host`: every
                // request is parsed, and one naming another host is
                // refused (421: the app opens a connection for it), so a
                // name allowed once cannot carry requests for others to
                // the same server (a CDN's, say).
                let shared_for_connect = shared.clone();
                return Some(dispatch(
                    shared,
                    app,
                    Bytes::new(),
                    FirstBytes::Http(HttpVersion::Http1),
                    *authz,
                    None,
                    AppSide::Downstream,
                    move || async move { shared_for_connect.connect(to).await },
                ));
            }
            External::Refused => return None,
            External::Meshed => {}
        }
    }
    to_peer(shared, local, app, app_addr, destination).await
}

enum External {
    /// Allowed: pass through to this address, untouched, but where the
    /// name the app gives could matter: then its requests are watched
    /// ([`RequestWatch`]), each judged as its head completes (the first
    /// too, when it came after the wait for it).
    PassThrough {
        to: SocketAddr,
        watch: Option<Watch>,
    },
    /// Allowed by the name of a plaintext HTTP/1 request: to this address,
    /// each request authorized by `authz` (and held to that name).
    Http {
        to: SocketAddr,
        authz: Box<ConnAuthz>,
    },
    Refused,
    Meshed,
}

/// Transparent mode: is this destination outside the mesh, and allowed?
///
/// Allowed by the name the app gave (`external.hosts`), the connection
/// goes where that name resolves ([`super::names`]), and policy decides on
/// that address: the app's name is all that was checked, and an app can
/// send any name to any address.
async fn external(
    shared: &Arc<Shared>,
    local: &Arc<Local>,
    app: &TcpStream,
    app_addr: SocketAddr,
    dialled: SocketAddr,
) -> External {
    let authz =
        |to: SocketAddr, host: Option<String>| external_authz(shared, local, app_addr, to, host);
    // The host the app names (TLS SNI or HTTP Host), waited for as long as
    // a rule with `external.hosts` could need it; only briefly where it
    // could only name the metadata API (an HTTP or TLS client starts at
    // once; then the rest of an HTTP head is waited for, [`name_of`]); not
    // at all otherwise, nor on a port declared `tcp`: a server-first
    // protocol (SSH, SMTP, MySQL) sends nothing until the server speaks,
    // and would wait for nothing (its requests are still watched as they
    // pass, below).
    let detect_timeout = shared.limits.detect_timeout;
    let declared_tcp = shared.port(dialled.port()).protocol == PortProtocol::Tcp;
    let name_matters = authz(dialled, None).external_name_could_matter();
    let wait = match name_matters {
        NameMatters::ForRules => Some(detect_timeout),
        NameMatters::ForTheMetadataApi if !declared_tcp => {
            Some(METADATA_NAME_WAIT.min(detect_timeout))
        }
        _ => None,
    };
    let named = match wait {
        Some(wait) => name_of(app, wait, detect_timeout).await,
        None => Named::default(),
    };
    // Fail closed: where a name could matter, a head that cannot be read
    // one way only is no head without a name (a lenient forward proxy
    // could read the metadata API's in it).
    if let Some(why) = named.unreadable {
        shared
            .metrics
            .connection_refused(MetricsDirection::Outbound, "external_unreadable_head");
        authz(dialled, None).audit_closed(&why);
        return External::Refused;
    }
    let host = named.host;
    let authz = |to: SocketAddr| authz(to, host.clone());
    let mut to = dialled;
    let mut decided = authz(dialled);
    let by_name = decided.external_name().is_some();
    if let Some(name) = decided.external_name() {
        let limit = shared.limits.connect_timeout;
        match shared.names.address_of(name, dialled, limit).await {
            Ok(resolved) => {
                if resolved != dialled {
                    tracing::debug!(%dialled, %resolved, name, "external: to where the name resolves");
                    to = resolved;
                    decided = authz(resolved);
                }
            }
            Err(e) => {
                shared
                    .metrics
                    .connection_refused(MetricsDirection::Outbound, "external_unresolved");
                decided.audit_closed(&e);
                return External::Refused;
            }
        }
    }
    match decided.decide_external() {
        ExternalVerdict::Allow if by_name && named.http1 => External::Http {
            to,
            authz: Box::new(decided.held_to_its_name()),
        },
        ExternalVerdict::Allow => External::PassThrough {
            to,
            // Wherever a name could matter, bytes too late for the wait
            // (or after a TLS or opaque start, or on a port declared `tcp`,
            // not waited for) are watched too: declaring a port `tcp` says
            // the app need not speak first, not that an HTTP request on it
            // may name the metadata API to a forward proxy.
            watch: (name_matters != NameMatters::No).then(|| Watch {
                judge: later_requests(shared.clone(), local.clone(), app_addr, to),
                first_decided: named.http1,
            }),
        },
        ExternalVerdict::Refused => External::Refused,
        ExternalVerdict::NotExternal if to == dialled => External::Meshed,
        // The address the name resolves to is no destination outside the
        // mesh a rule allows (a deny rule's cidrs, say): not there.
        ExternalVerdict::NotExternal => {
            decided.audit_closed(&format!(
                "{} resolves to {}, which no external rule allows",
                host.as_deref().unwrap_or_default(),
                to.ip()
            ));
            External::Refused
        }
    }
}

/// The authorization of a connection from `app_addr` to `to`, outside
/// the mesh, named `host` by the app.
fn external_authz(
    shared: &Arc<Shared>,
    local: &Local,
    app_addr: SocketAddr,
    to: SocketAddr,
    host: Option<String>,
) -> ConnAuthz {
    let peer = Peer::External { ip: to.ip(), host };
    ConnAuthz::new(
        shared.clone(),
        local,
        Direction::Outbound,
        peer,
        to,
        to.port(),
    )
    .with_app_addr(app_addr)
}

/// The judge of a passed-through HTTP/1 connection's later requests: each
/// is decided as its first was, by the address it goes to and the host it
/// names, and audited; a head that cannot be read is refused, audited.
fn later_requests(
    shared: Arc<Shared>,
    local: Arc<Local>,
    app_addr: SocketAddr,
    to: SocketAddr,
) -> Judge {
    let authz = move |host| external_authz(&shared, &local, app_addr, to, host);
    Box::new(move |head| match head {
        Head::Names(host) => {
            authz(host.map(str::to_owned)).decide_external() == ExternalVerdict::Allow
        }
        Head::Unreadable(why) => {
            authz(None).audit_closed(&format!("a later request on the connection: {why}"));
            false
        }
    })
}

/// How long a connection that only the metadata API's name could refuse
/// waits for its first bytes: a client that names a host starts with its
/// first write, right after connecting.
const METADATA_NAME_WAIT: Duration = Duration::from_millis(100);

/// The name the app gives for its connection, and how.
#[derive(Debug, Default)]
struct Named {
    /// The SNI of its TLS ClientHello, or the host its first HTTP/1
    /// request names (its target's authority, else its `Host`).
    host: Option<String>,
    /// The connection is plaintext HTTP/1.
    http1: bool,
    /// Why the name could not be read, when an HTTP/1 head could be read
    /// two ways or did not end in time: the connection is refused.
    unreadable: Option<String>,
}

/// The name the app gives for its connection: its first bytes are waited
/// for at most `wait`, and an HTTP/1 request's whole head (which a client
/// sends at once: a server-first protocol's silence is over) for at most
/// `head_wait` from then.
async fn name_of(app: &TcpStream, wait: Duration, head_wait: Duration) -> Named {
    let detected = detect::detect(app, wait, detect::MAX_DETECT_BYTES);
    match detected.await {
        Detection::Classified {
            class: Classification::TlsClientHello(hello),
            ..
        } => Named {
            host: hello.sni,
            ..Named::default()
        },
        Detection::Classified {
            class: Classification::Http1,
            ..
        } => {
            // `detect` stops at the method; the host is further on.
            let (host, unreadable) = match head_host::peek_head_host(app, head_wait).await {
                HeadHost::Named(host) => (Some(host), None),
                HeadHost::Unnamed => (None, None),
                HeadHost::Ambiguous(why) => (
                    None,
                    Some(format!(
                        "an HTTP request head that readers could take two ways ({why}): \
                         which host it names is unknown"
                    )),
                ),
                HeadHost::Incomplete | HeadHost::NotHttp1 => (
                    None,
                    Some(format!(
                        "an HTTP request head that did not end within limits.detect_timeout \
                         ({}) or {} KiB: which host it names is unknown",
                        humantime::format_duration(head_wait),
                        detect::MAX_DETECT_BYTES / 1024
                    )),
                ),
            };
            Named {
                host,
                http1: true,
                unreadable,
            }
        }
        _ => Named::default(),
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
        peer_not_after,
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
    .vouched_until(peer_not_after)
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
        {
            let mut unused = Unused(Some(tls_stream));
            move || async move { unused.0.take() }
        },
    ))
}

/// The way to the peer until the app's first allowed bytes take it. It is
/// opened before the first decision (the decision needs the peer's claims,
/// and only the stream's answer proves the tunnel still reaches that peer);
/// when the connection ends without using it (every request denied here,
/// or none sent) it is closed abortively — RST_STREAM, or a TCP reset for a
/// TLS connection of its own — which the peer sidecar takes as withdrawn
/// (a read error before the first byte: nothing decided, nothing audited).
/// A clean close would be an empty connection, decided and audited there
/// as a denial of "not HTTP" that no one sent.
struct Unused(Option<Upstream>);

impl Drop for Unused {
    fn drop(&mut self) {
        if let Some(upstream) = self.0.as_mut() {
            super::splice::Abort::abort(upstream);
        }
    }
}
