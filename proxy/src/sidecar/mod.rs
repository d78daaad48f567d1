//! The sidecar: `appid proxy --config PROXY.yaml`.
//!
//! - [`tls`]: sidecar-to-sidecar TLS (verifiers and resolvers over swappable
//!   identity and trust);
//! - [`inbound`] / [`outbound`]: one straight-line function per connection;
//! - [`tunnel`] / [`pool`]: `appid-mux/1`, app connections as HTTP/2 streams
//!   in pooled mTLS connections (the default), and its client-side pool;
//! - [`authz`]: the only place that asks the policy and writes audit lines;
//! - [`http`]: the L7 proxies (HTTP/1.x parsing heads only; HTTP/2 and
//!   gRPC relayed frame by frame, header blocks through HPACK);
//! - [`splice`]: opaque TCP with idle timeout and revocation;
//! - [`prefixed`], [`orig_dst`]: small helpers.
//!
//! [`run`] wires them: load identity, trust and policy (refusing to start on
//! any error), bind every listener, serve admin (and the health port when
//! configured), poll the files for changes,
//! and on SIGTERM stop accepting, drain, exit.

/// `AsyncWrite` for a wrapper `$type<S>` whose writes go to its field
/// `$field` unchanged (the wrappers that only watch or replay reads).
macro_rules! forward_async_write {
    ($type:ident, $field:ident) => {
        impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for $type<S> {
            fn poll_write(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.$field).poll_write(cx, buf)
            }

            fn poll_write_vectored(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.$field).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.$field.is_write_vectored()
            }

            fn poll_flush(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.$field).poll_flush(cx)
            }

            fn poll_shutdown(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.$field).poll_shutdown(cx)
            }
        }
    };
}
pub(crate) use forward_async_write;

/// The write side of [`splice::Chunks`] for the same wrappers (their
/// writes go to `$field` unchanged); written inside their `impl Chunks`.
macro_rules! forward_chunk_writes {
    ($field:ident) => {
        fn takes_chunks(&self) -> bool {
            self.$field.takes_chunks()
        }

        fn poll_write_chunk(
            &mut self,
            cx: &mut std::task::Context<'_>,
            chunk: &mut bytes::Bytes,
        ) -> std::task::Poll<std::io::Result<()>> {
            self.$field.poll_write_chunk(cx, chunk)
        }
    };
}
pub(crate) use forward_chunk_writes;

mod audit_claims;
pub mod authz;
pub mod balance;
pub mod clock;
pub mod copy_buf;
mod counted;
mod dispatch;
pub mod eager;
mod fd_budget;
pub mod fingerprint;
mod frame_watch;
mod from_authority;
pub mod http;
pub mod inbound;
mod lazy;
pub mod local;
pub mod memory;
pub mod metadata;
mod names;
mod not_ready;
pub mod orig_dst;
pub mod outbound;
mod pending;
pub mod pool;
pub mod prefixed;
pub mod read_ahead;
mod reload;
mod request_watch;
pub(crate) mod shares;
pub mod splice;
pub mod state_dir;
#[cfg(test)]
pub mod test_io;
pub mod tls;
pub mod trace;
pub mod tunnel;
pub mod workers;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use thiserror::Error;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use appid_policy::Policy;

use crate::admin::{self, AdminState, Readiness};
use crate::audit::AuditLog;
use crate::authority::client::AuthorityClient;
use crate::config::{IdentitySource, PortSettings, ProxyConfig};
use crate::health;
use crate::identity::verify::{BundleError, PeerRole, TrustBundle, VerifiedPeer};
use crate::metrics::{Direction as MetricsDirection, Metrics};
use authz::{ConnAuthz, ConnVerdict};
use local::{Local, Locals};
use rustls_pki_types::CertificateDer;
use state_dir::StateDir;
use tls::{IdentityError, LocalIdentity, Trust};

/// Why the sidecar could not start.
#[derive(Debug, Error)]
pub enum SidecarError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("{0}")]
    Policy(String),
    #[error("audit log {path}: {error}")]
    Audit { path: String, error: std::io::Error },
    #[error("cannot listen on {address}: {error}")]
    Bind {
        address: SocketAddr,
        error: std::io::Error,
    },
    #[error("identity from the authority: {0}")]
    Authority(String),
    #[error(transparent)]
    State(#[from] state_dir::StateError),
    #[error("the system's random number generator failed; TLS cannot work without it")]
    Entropy,
    #[error("cannot start the data-plane worker threads (`workers`): {0}")]
    Workers(std::io::Error),
    /// A file the config names could not be used: says which config file
    /// and which key named it.
    #[error("{config}: {field}: {error}")]
    Configured {
        config: String,
        field: &'static str,
        error: Box<SidecarError>,
    },
}

impl SidecarError {
    /// This error, as caused by the file at `field` in the config `config`.
    fn named(self, config: &str, field: &'static str) -> SidecarError {
        SidecarError::Configured {
            config: config.to_owned(),
            field,
            error: Box::new(self),
        }
    }
}

/// Data-plane limits (from the config's `limits:`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub handshake_timeout: Duration,
    pub detect_timeout: Duration,
    pub idle_timeout: Duration,
    pub http_idle_timeout: Duration,
    pub connect_timeout: Duration,
    pub max_connections: usize,
    pub max_header_bytes: usize,
    pub drain_timeout: Duration,
}

/// What a peer's inbound app connection is carried in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PeerConnection {
    TunnelStream,
    Tls,
}

/// What every connection task shares.
pub struct Shared {
    /// Whom we trust (the bundle, revocations), for every identity.
    pub trust: Arc<Trust>,
    /// The identities we speak as ([`local`]): each with its certificate,
    /// TLS configs and tunnels to peer sidecars.
    pub locals: Locals,
    pub policy: ArcSwap<Policy>,
    /// Bumped on every successful policy reload.
    policy_version: watch::Sender<u64>,
    pub audit: AuditLog,
    /// Claims as JSON for audit values, shared across connections.
    pub claims_json: authz::ClaimsJson,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    /// Connection slots, one budget per direction (so a flood of inbound
    /// callers cannot refuse the workload's own outbound calls), and within
    /// the inbound one, at most half for callers outside the mesh.
    inbound_slots: Arc<Semaphore>,
    outbound_slots: Arc<Semaphore>,
    unauthenticated_slots: Arc<Semaphore>,
    /// External hosts' addresses by name: lookups bounded, recent answers kept.
    names: names::Names,
    /// Callers outside the mesh per source address: at most an eighth of
    /// the inbound budget each, so one address cannot hold all of their
    /// half (as in detection, [`pending::Pending`]).
    unauthenticated_sources: shares::Shares<shares::Source>,
    /// Inbound connections still in protocol detection (evicted, oldest
    /// first, to make room when the inbound budget is full).
    pending: pending::Pending,
    /// Bytes held for peers that have not read them yet.
    pub memory: Arc<memory::MemoryBudget>,
    /// What the config declares about app ports (`ports:`).
    ports: BTreeMap<u16, PortSettings>,
    /// Inbound app connections per peer identity (tunnel streams and
    /// `appid/1` connections): at most half of the inbound budget each.
    peer_connections: shares::Shares<String>,
    /// Becomes `true` on SIGTERM.
    pub shutdown: watch::Receiver<bool>,
}

impl Shared {
    /// A connection slot, or `None` (counted, connection dropped) when the
    /// direction is at `max_connections`: excess is refused, never queued.
    /// Inbound, a full budget first evicts the longest-silent connection
    /// still in detection ([`pending`]) and waits briefly for its slot.
    async fn admit(&self, direction: MetricsDirection) -> Option<OwnedSemaphorePermit> {
        if let Some(permit) = self.try_admit(direction) {
            return Some(permit);
        }
        let slots = self.slots(direction);
        let evicted = match direction {
            MetricsDirection::Inbound => self.pending.evict_oldest(),
            MetricsDirection::Outbound => None,
        };
        if let Some(stage) = evicted {
            self.metrics
                .connection_refused(direction, stage.eviction_reason());
            let freed = slots.clone().acquire_owned();
            if let Ok(Ok(permit)) = tokio::time::timeout(Duration::from_millis(50), freed).await {
                return Some(permit);
            }
        }
        self.metrics
            .connection_refused(direction, "max_connections");
        None
    }

    /// A slot if one is free now (no eviction, not counted when none).
    fn try_admit(&self, direction: MetricsDirection) -> Option<OwnedSemaphorePermit> {
        self.slots(direction).clone().try_acquire_owned().ok()
    }

    fn slots(&self, direction: MetricsDirection) -> &Arc<Semaphore> {
        match direction {
            MetricsDirection::Inbound => &self.inbound_slots,
            MetricsDirection::Outbound => &self.outbound_slots,
        }
    }

    /// Registers an inbound connection entering detection, silent so far.
    fn silent(&self) -> pending::PendingGuard {
        self.pending.enter(pending::Stage::Silent)
    }

    /// Registers an inbound connection in detection whose first bytes are
    /// there but do not say yet what it is.
    fn unfinished(&self) -> pending::PendingGuard {
        self.pending.enter(pending::Stage::Unfinished)
    }

    /// Registers an inbound connection whose TLS handshake has begun.
    fn handshaking(&self) -> pending::PendingGuard {
        self.pending.enter(pending::Stage::Handshaking)
    }

    /// One of the peer's share of inbound app connections, or `None`
    /// (counted) when it holds half of the inbound budget already.
    fn peer_connection(
        &self,
        peer_id: &str,
        what: PeerConnection,
    ) -> Option<shares::ShareGuard<String>> {
        let share = self.peer_connections.take(&peer_id.to_string());
        if share.is_none() {
            tracing::info!(
                peer = peer_id,
                "refused: the peer holds its share of inbound connections"
            );
            match what {
                PeerConnection::TunnelStream => self
                    .metrics
                    .stream_shed(MetricsDirection::Inbound, "max_per_peer"),
                PeerConnection::Tls => self
                    .metrics
                    .connection_refused(MetricsDirection::Inbound, "max_per_peer"),
            }
        }
        share
    }

    /// Counts an inbound connection from `ip` in detection, or `None`
    /// (counted) when that source has its share in detection already.
    fn detecting_from(&self, ip: std::net::IpAddr) -> Option<pending::SourceGuard> {
        let guard = self.pending.source(ip);
        if guard.is_none() {
            self.metrics
                .connection_refused(MetricsDirection::Inbound, "max_pending_per_source");
        }
        guard
    }

    /// A slot for a caller outside the mesh at `ip` (on top of its inbound
    /// one), or `None` (counted) when that source holds its share of them
    /// already, or they all hold half the inbound budget.
    fn admit_unauthenticated(
        &self,
        ip: std::net::IpAddr,
    ) -> Option<(OwnedSemaphorePermit, shares::ShareGuard<shares::Source>)> {
        let Some(share) = self.unauthenticated_sources.take(&shares::Source::of(ip)) else {
            self.metrics
                .connection_refused(MetricsDirection::Inbound, "max_unauthenticated_per_source");
            return None;
        };
        match self.unauthenticated_slots.clone().try_acquire_owned() {
            Ok(permit) => Some((permit, share)),
            Err(_) => {
                self.metrics
                    .connection_refused(MetricsDirection::Inbound, "max_unauthenticated");
                None
            }
        }
    }

    /// Connects to `address` within the connect timeout.
    async fn connect(&self, address: SocketAddr) -> Option<TcpStream> {
        match tokio::time::timeout(self.limits.connect_timeout, TcpStream::connect(address)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                Some(stream)
            }
            Ok(Err(e)) => {
                tracing::info!(%address, error = %e, "connect failed");
                None
            }
            Err(_) => {
                tracing::info!(%address, "connect timed out");
                None
            }
        }
    }

    /// What the config declares about app port `port`.
    fn port(&self, port: u16) -> PortSettings {
        self.ports.get(&port).copied().unwrap_or_default()
    }

    /// The idle timeout of an opaque TCP connection to app port `port`.
    fn tcp_idle_timeout(&self, port: u16) -> Duration {
        self.port(port)
            .idle_timeout
            .unwrap_or(self.limits.idle_timeout)
    }

    /// Limits for an HTTP connection whose local app is on the `app` side.
    fn http_limits(&self, app: http::AppSide) -> http::HttpLimits {
        http::HttpLimits {
            max_header_bytes: self.limits.max_header_bytes,
            // The wait for a request head, including between keep-alive
            // requests: it is the HTTP idle timeout.
            header_timeout: self.limits.http_idle_timeout,
            drain_timeout: self.limits.drain_timeout,
            app,
        }
    }

    /// Resolves when shutdown starts.
    fn shutdown_signal(&self) -> impl Future<Output = ()> + Send + 'static + use<> {
        let mut shutdown = self.shutdown.clone();
        async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        }
    }

    /// Resolves when a policy reload no longer allows `authz`'s connection
    /// (the denial is audited by [`ConnAuthz::still_allowed`]).
    fn revoked<'a>(&self, authz: &'a ConnAuthz, is_http: bool) -> impl Future<Output = ()> + 'a {
        let mut versions = self.policy_version.subscribe();
        async move {
            while versions.changed().await.is_ok() {
                if let ConnVerdict::Deny { reason, .. } = authz.still_allowed(is_http) {
                    tracing::info!(%reason, "closing a live connection");
                    return;
                }
            }
            std::future::pending::<()>().await
        }
    }

    /// Completes a sidecar-to-sidecar TLS handshake within the handshake
    /// timeout and returns the stream with the peer's verified identity, or
    /// `None` after counting (and logging) why not. `peer_chain` reads the
    /// peer's certificates from the stream type at hand.
    async fn mesh_handshake<S>(
        &self,
        handshake: impl Future<Output = std::io::Result<S>>,
        direction: MetricsDirection,
        role: PeerRole,
        peer: SocketAddr,
        peer_chain: fn(&S) -> Option<&[CertificateDer<'static>]>,
    ) -> Option<(S, VerifiedPeer)> {
        let started = std::time::Instant::now();
        // Pinned here, not moved into the timeout: a stalled handshake (and
        // the socket it owns) is dropped after its timeout is counted, so a
        // peer that sees the close can already read the count.
        tokio::pin!(handshake);
        let stream = match tokio::time::timeout(self.limits.handshake_timeout, handshake.as_mut())
            .await
        {
            Ok(Ok(stream)) => {
                self.metrics.handshake_done(direction, started.elapsed());
                stream
            }
            Ok(Err(e)) => {
                let reason = tls::handshake_failure_reason(&e);
                tracing::info!(%peer, %reason, error = %e, direction = direction.as_str(), "handshake refused");
                self.metrics.handshake_failure(direction, &reason);
                return None;
            }
            Err(_) => {
                self.metrics.handshake_failure(direction, "timeout");
                return None;
            }
        };
        // The handshake verifier already checked this chain; verifying again
        // yields the claims (and catches a revocation in between).
        let chain = peer_chain(&stream).unwrap_or_default();
        match self.trust.verify(chain, role) {
            Ok(verified) => Some((stream, verified)),
            Err(rejection) => {
                self.metrics
                    .handshake_failure(direction, rejection.reason());
                None
            }
        }
    }

    /// Makes every live opaque connection re-check its authorization (after
    /// a policy reload or a revocation-list change).
    fn authorization_changed(&self) {
        self.policy_version.send_modify(|v| *v += 1);
    }
}

/// Loads a policy file into a compiled policy, with `trust_domains` (the
/// config's: those our own authority vouches for) as its home trust
/// domains: a peer of any other is foreign to it
/// ([`Policy::with_home_trust_domains`]).
pub fn load_policy(
    path: &std::path::Path,
    trust_domains: &[String],
) -> Result<Policy, SidecarError> {
    let text = read_policy_file(path)
        .map_err(|e| SidecarError::Policy(format!("{}: {e}", path.display())))?;
    Policy::load(&path.display().to_string(), &text)
        .map(|policy| policy.with_home_trust_domains(trust_domains.iter().map(String::as_str)))
        .map_err(|errors| {
            SidecarError::Policy(
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n"),
            )
        })
}

/// Reads a policy file, refusing one larger than
/// [`appid_policy::policy::MAX_POLICY_BYTES`] without reading it all.
pub fn read_policy_file(path: &std::path::Path) -> std::io::Result<String> {
    use std::io::Read;
    let limit = appid_policy::policy::MAX_POLICY_BYTES as u64;
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(limit + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {limit} bytes; a policy this size is refused"),
        ));
    }
    Ok(text)
}

/// Runs the sidecar until SIGTERM/SIGINT, then drains and returns.
pub async fn run(config: ProxyConfig) -> Result<(), SidecarError> {
    run_until(config, wait_for_signal(), |_| {}).await
}

/// Runs the sidecar until `stop` resolves, then drains and returns.
/// `on_ready` is called once every listener is bound and serving (with the
/// admin address), for embedding (the quickstart, tests).
///
/// Order matters: the admin server comes up first (so `/ready` answers 503
/// while the identity is fetched), then identity and trust, the policy, and
/// the listeners; readiness flips only when all of them are in place.
pub async fn run_until(
    config: ProxyConfig,
    stop: impl Future<Output = ()>,
    on_ready: impl FnOnce(SocketAddr),
) -> Result<(), SidecarError> {
    tokio::pin!(stop);
    tls::warm_up().map_err(|_| SidecarError::Entropy)?;
    let policy = load_policy(&config.policy, &config.trust_domains)?;
    let rotation = crate::audit::Rotation {
        max_bytes: config.limits.audit_log_max_bytes,
        keep: config.limits.audit_log_keep,
    };
    let audit = AuditLog::open_target(&config.audit_log, rotation).map_err(|error| {
        SidecarError::Audit {
            path: config.audit_log.display(),
            error,
        }
    })?;
    let metrics = Arc::new(Metrics::new());
    let limits = Limits {
        handshake_timeout: config.limits.handshake_timeout,
        detect_timeout: config.limits.detect_timeout,
        idle_timeout: config.limits.idle_timeout,
        http_idle_timeout: config.limits.http_idle_timeout,
        connect_timeout: config.limits.connect_timeout,
        max_connections: fd_budget::max_connections(config.limits.max_connections as usize),
        max_header_bytes: config.limits.max_header_bytes as usize,
        drain_timeout: config.limits.drain_timeout,
    };

    // Bind everything first: a port in use is a startup error, not a
    // half-running sidecar.
    let admin_listener = bind(config.admin).await?;
    let admin_address = admin_listener.local_addr().unwrap_or(config.admin);
    let health_listener = match config.health {
        Some(address) => {
            Some(health::bind(address).map_err(|error| SidecarError::Bind { address, error })?)
        }
        None => None,
    };
    let mut inbound = Vec::new();
    for spec in &config.inbound {
        let listener = bind(spec.listen).await?;
        inbound.push((
            listener,
            inbound::InboundSpec {
                listen: spec.listen,
                forward: spec.forward,
            },
        ));
    }
    // Each with the service whose connections it takes (`None`: ours).
    let mut outbound = Vec::new();
    for spec in &config.outbound {
        let listener = bind(spec.listen).await?;
        let spec = outbound::OutboundSpec {
            listen: spec.listen,
            upstream: spec.upstream,
        };
        outbound.push((listener, spec, None));
    }
    for service in &config.services {
        if let Some(out) = &service.outbound {
            let listener = bind(out.listen).await?;
            let spec = outbound::OutboundSpec {
                listen: out.listen,
                upstream: None,
            };
            outbound.push((listener, spec, Some(service.name.clone())));
        }
    }

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let readiness = Readiness::default();
    let identity_json = Arc::new(ArcSwap::from_pointee(serde_json::Value::Null));
    let admin_state = Arc::new(AdminState {
        readiness: readiness.clone(),
        metrics: metrics.clone(),
        config_json: config.effective_json(),
        identity_json: identity_json.clone(),
    });
    let mut admin_stop = shutdown_rx.clone();
    tokio::spawn(admin::serve(admin_listener, admin_state, async move {
        let _ = admin_stop.wait_for(|stop| *stop).await;
    }));
    if let Some(listener) = health_listener {
        let state = Arc::new(health::HealthState::new(
            readiness.clone(),
            metrics.clone(),
            config.app_probes.clone(),
        ));
        let mut health_stop = shutdown_rx.clone();
        tokio::spawn(health::serve(listener, state, async move {
            let _ = health_stop.wait_for(|stop| *stop).await;
        }));
    }
    readiness.set_policy_ready(true);

    // Identity and trust.
    let (identity, bundle, authority, watched) = match &config.identity {
        IdentitySource::Files {
            cert,
            key,
            bundle,
            federated,
        } => {
            let trust = TrustBundle::from_pem_file(bundle, config.trust_domains.clone())
                .map_err(|e| SidecarError::from(e).named(&config.source, "identity.bundle"))?
                .with_federated_files(federated)
                .map_err(|e| SidecarError::from(e).named(&config.source, "identity.federated"))?;
            let identity = LocalIdentity::load(cert, key, &trust)
                .map_err(|e| SidecarError::from(e).named(&config.source, "identity.cert/key"))?;
            // Files carry one identity; `services:` needs the authority
            // (the config refuses it otherwise).
            let identity = (identity, Vec::new());
            let watched = reload::Watched {
                cert: cert.clone(),
                key: key.clone(),
                bundle: bundle.clone(),
                federated: federated.clone(),
                trust_domains: config.trust_domains.clone(),
            };
            (identity, trust, None, Some(watched))
        }
        IdentitySource::Authority {
            urls,
            bundle,
            join_token_file,
            k8s_token_file,
            cloud,
            metadata_endpoint,
            state_dir,
            workload,
        } => {
            let trust =
                TrustBundle::from_pem_file(bundle, config.trust_domains.clone()).map_err(|e| {
                    SidecarError::from(e).named(&config.source, "identity.authority.bundle")
                })?;
            let client = AuthorityClient::with_replicas(urls, trust.clone())
                .map_err(|e| SidecarError::Authority(e.to_string()))?;
            // A GCP identity token names one audience: the first URL.
            let audience = urls.first().map_or("", String::as_str);
            // Until the first certificate arrives, connections are refused
            // at once rather than left waiting in the accept queue.
            let refused_in = inbound.iter().map(|(l, _)| (l, MetricsDirection::Inbound));
            let refused_out = outbound
                .iter()
                .map(|(l, _, _)| (l, MetricsDirection::Outbound));
            let waiting: Vec<_> = refused_in.chain(refused_out).collect();
            let state = state_dir.as_deref().map(StateDir::open).transpose()?;
            let source = from_authority::ProofSource::from_config(
                join_token_file.as_deref(),
                k8s_token_file.as_deref(),
                *cloud,
                metadata_endpoint.as_deref(),
                audience,
            )?;
            let fingerprint = workload
                .clone()
                .map(|w| Arc::new(fingerprint::Fingerprinter::new(w)));
            let own = from_authority::Bootstrapping {
                service: None,
                source,
                state,
                fingerprint,
            };
            // The services' identities (`services:`), each from its own
            // token, kept in its own directory under the state directory.
            let mut services = Vec::new();
            for service in &config.services {
                let source = from_authority::ProofSource::from_config(
                    service.join_token_file.as_deref(),
                    None,
                    None,
                    None,
                    audience,
                )?;
                let state = state_dir
                    .as_deref()
                    .map(|dir| StateDir::open(&dir.join("services").join(&service.name)))
                    .transpose()?;
                let fingerprint = service
                    .workload
                    .clone()
                    .map(|w| Arc::new(fingerprint::Fingerprinter::new(w)));
                services.push(from_authority::Bootstrapping {
                    service: Some(service.name.clone()),
                    source,
                    state,
                    fingerprint,
                });
            }
            let everyone = std::iter::once(own).chain(services);
            let firsts = futures_util::future::try_join_all(
                everyone.map(|b| from_authority::bootstrap(&client, &trust, b)),
            );
            let mut firsts = tokio::select! {
                firsts = firsts => firsts?,
                never = not_ready::refuse_all(&waiting, &metrics) => match never {},
                () = &mut stop => return Ok(()),
            };
            let (own_identity, own_renewer) = firsts.remove(0);
            let (service_identities, service_renewers): (Vec<_>, Vec<_>) =
                firsts.into_iter().unzip();
            let renewers = std::iter::once(own_renewer).chain(service_renewers);
            let identities = (own_identity, service_identities);
            let renewers: Vec<_> = renewers.collect();
            (identities, trust, Some((client, renewers)), None)
        }
    };
    let trust = Trust::new(bundle);
    let (own_identity, service_identities) = identity;
    let own = Local::new(None, own_identity, trust.clone(), config.tunnel);
    let services = config
        .services
        .iter()
        .zip(service_identities)
        .map(|(service, identity)| {
            let local = Local::new(
                Some(service.name.clone()),
                identity,
                trust.clone(),
                config.tunnel,
            );
            (local, service.inbound_ports.clone())
        })
        .collect();
    let locals = Locals::new(own, services);
    metrics.set_certificate_expiry(
        locals.soonest_not_after() - time::OffsetDateTime::now_utc().unix_timestamp(),
    );
    identity_json.store(Arc::new(locals.admin_json()));
    readiness.set_identity_ready(true);

    let (policy_version, _) = watch::channel(0u64);
    let shared = Arc::new(Shared {
        trust,
        locals,
        policy: ArcSwap::from_pointee(policy),
        policy_version,
        audit,
        claims_json: authz::ClaimsJson::default(),
        metrics,
        limits,
        inbound_slots: Arc::new(Semaphore::new(limits.max_connections)),
        outbound_slots: Arc::new(Semaphore::new(limits.max_connections)),
        unauthenticated_slots: Arc::new(Semaphore::new((limits.max_connections / 2).max(1))),
        names: names::Names::default(),
        unauthenticated_sources: shares::Shares::new(limits.max_connections / 8),
        // In detection, one source address holds at most an eighth of
        // the inbound budget.
        pending: pending::Pending::new(limits.max_connections / 8),
        peer_connections: shares::Shares::new(limits.max_connections / 2),
        ports: config.ports.clone(),
        memory: memory::MemoryBudget::new(
            usize::try_from(config.limits.max_buffer_bytes).unwrap_or(usize::MAX),
        ),
        shutdown: shutdown_rx,
    });

    let memory = Arc::downgrade(&shared.memory);
    shared.metrics.watch_buffer(move || {
        memory
            .upgrade()
            .map_or(0, |m| i64::try_from(m.used()).unwrap_or(i64::MAX))
    });

    // With `workers: N` the data plane runs on N threads of its own, each
    // accepting from every listener (see `workers`); with 1, here.
    let workers = match config.workers {
        0 | 1 => None,
        n => Some(workers::Workers::start(n).map_err(SidecarError::Workers)?),
    };
    let mut tasks = Vec::new();
    for (listener, spec) in inbound {
        let metrics = shared.metrics.clone();
        let shared = shared.clone();
        tasks.extend(serve_listener(
            workers.as_ref(),
            &metrics,
            spec.listen,
            listener,
            move |listener| inbound::serve(shared.clone(), listener, spec),
        )?);
    }
    for (listener, spec, service) in outbound {
        let local = match &service {
            None => shared.locals.own().clone(),
            Some(name) => shared.locals.service(name).cloned().ok_or_else(|| {
                SidecarError::Authority(format!("service `{name}` has no identity"))
            })?,
        };
        let metrics = shared.metrics.clone();
        let shared = shared.clone();
        tasks.extend(serve_listener(
            workers.as_ref(),
            &metrics,
            spec.listen,
            listener,
            move |listener| outbound::serve(shared.clone(), listener, spec, local.clone()),
        )?);
    }
    shared.audit.buffer_allows();
    shared.audit.coalesce_denials();
    let audit = shared.audit.clone();
    let metrics = shared.metrics.clone();
    let audit_readiness = readiness.clone();
    let mut background = vec![tokio::spawn(async move {
        let mut tick = tokio::time::interval(crate::audit::FLUSH_INTERVAL);
        let (mut dropped, mut coalesced) = (0, 0);
        loop {
            tick.tick().await;
            audit.flush();
            let now = audit.write_errors();
            metrics.audit_lines_dropped(now - dropped);
            dropped = now;
            let now = audit.coalesced();
            metrics.audit_denials_coalesced(now - coalesced);
            coalesced = now;
            audit_readiness.set_audit_failing(audit.failing());
        }
    })];
    // SIGHUP reopens the audit file (after logrotate moved it away).
    let audit = shared.audit.clone();
    background.push(tokio::spawn(async move {
        let Ok(mut hangups) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        while hangups.recv().await.is_some() {
            match audit.reopen() {
                Ok(()) => tracing::info!(audit_log = %audit.target(), "audit log reopened"),
                Err(e) => {
                    tracing::warn!(error = %e, "audit log not reopened; still writing the old file")
                }
            }
        }
    }));
    background.push(tokio::spawn(reload::watch_files(
        shared.clone(),
        config.policy.clone(),
        watched,
        identity_json.clone(),
    )));
    if let Some((client, renewers)) = authority {
        for renewer in renewers {
            background.push(tokio::spawn(from_authority::keep_renewed(
                shared.clone(),
                client.clone(),
                renewer,
                readiness.clone(),
                identity_json.clone(),
            )));
        }
        background.push(tokio::spawn(from_authority::follow_bundle(
            shared.clone(),
            client.clone(),
        )));
        background.push(tokio::spawn(from_authority::follow_revocations(
            shared.clone(),
            client,
        )));
    }
    readiness.set_listeners_ready(true);
    tracing::info!(%admin_address, "appid sidecar ready");
    on_ready(admin_address);

    stop.await;
    tracing::info!("shutting down: no new connections, draining live ones");
    readiness.set_draining(true);
    let _ = shutdown_tx.send(true);
    for task in tasks {
        let _ = task.await;
    }
    for task in background {
        task.abort();
    }
    // Drained when every slot of both directions is free again.
    let all = limits.max_connections as u32;
    let drained = tokio::time::timeout(limits.drain_timeout, async {
        let inbound = shared.inbound_slots.acquire_many(all).await;
        let outbound = shared.outbound_slots.acquire_many(all).await;
        (inbound, outbound)
    })
    .await;
    if drained.is_err() {
        tracing::warn!("drain deadline passed with connections still open; closing them");
    }
    // Stops the worker threads, closing what is still open on them.
    drop(workers);
    shared.audit.flush();
    Ok(())
}

/// Serves one data-plane listener (bound at `address`, as configured) with
/// `serve`: on every worker, each from its own registration of the socket,
/// their connections kept even ([`balance`]; the counts are `metrics`'
/// `appid_worker_connections`, shared by every listener), or on this
/// runtime when there are no workers.
fn serve_listener<F, Fut>(
    workers: Option<&workers::Workers>,
    metrics: &crate::metrics::Metrics,
    address: SocketAddr,
    listener: TcpListener,
    serve: F,
) -> Result<Vec<tokio::task::JoinHandle<()>>, SidecarError>
where
    F: Fn(balance::Acceptor) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(workers) = workers else {
        return Ok(vec![tokio::spawn(serve(balance::Acceptor::alone(
            listener,
        )))]);
    };
    let bind_error = |error| SidecarError::Bind { address, error };
    let listener = listener.into_std().map_err(bind_error)?;
    let live = (1..=workers.handles().len())
        .map(|worker| metrics.worker_connections(worker))
        .collect();
    let (balance, inboxes) = balance::Balance::new(live);
    let mut tasks = Vec::with_capacity(workers.handles().len());
    for (me, (handle, inbox)) in workers.handles().iter().zip(inboxes).enumerate() {
        let registered = {
            let _on_worker = handle.enter();
            TcpListener::from_std(listener.try_clone().map_err(bind_error)?).map_err(bind_error)?
        };
        let acceptor = balance::Acceptor::shared(registered, me, balance.clone(), inbox);
        tasks.push(handle.spawn(serve(acceptor)));
    }
    Ok(tasks)
}

/// Accepts connections until shutdown, admitting each against the
/// connection limit and counting it, and runs `handle` for it in a task.
/// Shared by the inbound and outbound listeners.
async fn accept_loop<F, Fut>(
    shared: Arc<Shared>,
    mut acceptor: balance::Acceptor,
    direction: MetricsDirection,
    local: Arc<Local>,
    handle: F,
) where
    F: Fn(Arc<Shared>, TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let serve = |stream: TcpStream, peer_addr: SocketAddr, ticket: balance::Ticket| {
        // An expired certificate (renewal failing): refuse at once.
        if !not_ready::still_valid(local.tls.identity.load().not_after) {
            not_ready::refuse(stream, peer_addr, direction, &shared.metrics);
            return;
        }
        // The fast path here; a full budget is waited out (briefly, after
        // an eviction) in the connection's own task, so accepting goes on.
        let fast = shared.try_admit(direction);
        // Boxed: captured by the task below and then awaited, an unboxed
        // connection future would be held twice in the task (the capture
        // and the awaited copy: rustc keeps both), 2.4 KiB each.
        let connection = Box::pin(handle(shared.clone(), stream, peer_addr));
        let metrics = shared.metrics.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            let permit = match fast {
                Some(permit) => permit,
                None => match shared.admit(direction).await {
                    Some(permit) => permit,
                    None => return, // refused and counted; the stream closes
                },
            };
            metrics.connection_opened(direction);
            connection.await;
            metrics.connection_closed(direction);
            drop(permit);
            drop(ticket);
        });
    };
    let shutdown = shared.shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = acceptor.accept() => accepted,
            () = &mut shutdown => break,
        };
        match accepted {
            Ok((stream, peer_addr, ticket)) => serve(stream, peer_addr, ticket),
            Err(e) => {
                // E.g. out of file descriptors: back off, don't spin.
                tracing::warn!(error = %e, direction = direction.as_str(), "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    // Connections another worker handed over just before the shutdown are
    // served like those accepted before it (and drain with them).
    for (stream, peer_addr, ticket) in acceptor.close() {
        serve(stream, peer_addr, ticket);
    }
}

/// Binds a listener. An IPv6 address is IPv6 only (`IPV6_V6ONLY`), so that
/// `0.0.0.0:p` and `[::]:p` can be listed side by side for dual stack, and
/// every connection's addresses are of the family it arrived on (policy's
/// CIDRs and the original-destination lookup need that).
async fn bind(address: SocketAddr) -> Result<TcpListener, SidecarError> {
    bind_socket(address, true).map_err(|error| SidecarError::Bind { address, error })
}

/// Binds a listening socket; `v6only` sets `IPV6_V6ONLY` on an IPv6 one
/// (off: `[::]` also takes IPv4, as `::ffff:a.b.c.d`). Must run inside the
/// runtime.
pub(crate) fn bind_socket(address: SocketAddr, v6only: bool) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(address),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    if address.is_ipv6() {
        socket.set_only_v6(v6only)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// Resolves on SIGTERM or SIGINT.
pub async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers there is nothing to wait for but forever.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
