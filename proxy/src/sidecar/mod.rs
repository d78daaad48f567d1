//! The sidecar: `appid proxy --config PROXY.yaml`.
//!
//! - [`tls`]: sidecar-to-sidecar TLS (verifiers and resolvers over swappable
//!   identity and trust);
//! - [`inbound`] / [`outbound`]: one straight-line function per connection;
//! - [`authz`]: the only place that asks the policy and writes audit lines;
//! - [`http`]: the L7 proxy (hyper on both sides);
//! - [`splice`]: opaque TCP with idle timeout and revocation;
//! - [`prefixed`], [`orig_dst`]: small helpers.
//!
//! [`run`] wires them: load identity, trust and policy (refusing to start on
//! any error), bind every listener, serve admin, poll the files for changes,
//! and on SIGTERM stop accepting, drain, exit.

pub mod authz;
pub mod http;
pub mod inbound;
pub mod orig_dst;
pub mod outbound;
pub mod prefixed;
mod reload;
pub mod splice;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use thiserror::Error;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use appid_policy::Policy;

use crate::admin::{self, AdminState, Readiness};
use crate::audit::AuditLog;
use crate::config::{IdentitySource, ProxyConfig};
use crate::identity::verify::{BundleError, TrustBundle};
use crate::metrics::{Direction as MetricsDirection, Metrics};
use authz::{ConnAuthz, ConnVerdict};
use splice::Copied;
use tls::{IdentityError, LocalIdentity, TlsState};

/// Why the sidecar could not start.
#[derive(Debug, Error)]
pub enum SidecarError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("{0}")]
    Policy(String),
    #[error("audit log {path}: {source}")]
    Audit {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "identity from the authority is not available in this build yet; use identity.cert/key/bundle files"
    )]
    AuthorityIdentity,
}

/// Data-plane limits (from the config's `limits:`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub handshake_timeout: Duration,
    pub detect_timeout: Duration,
    pub idle_timeout: Duration,
    pub connect_timeout: Duration,
    pub max_connections: usize,
    pub max_header_bytes: usize,
    pub drain_timeout: Duration,
}

/// What every connection task shares.
pub struct Shared {
    pub tls: Arc<TlsState>,
    pub acceptor: TlsAcceptor,
    pub connector: TlsConnector,
    pub policy: ArcSwap<Policy>,
    /// Bumped on every successful policy reload.
    policy_version: watch::Sender<u64>,
    pub audit: AuditLog,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    connections: Arc<Semaphore>,
    /// Becomes `true` on SIGTERM.
    pub shutdown: watch::Receiver<bool>,
}

impl Shared {
    /// A connection slot, or `None` (counted, connection dropped) when the
    /// sidecar is at `max_connections`: excess is refused, never queued.
    fn admit(&self, direction: MetricsDirection) -> Option<OwnedSemaphorePermit> {
        match self.connections.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => {
                self.metrics
                    .connection_refused(direction, "max_connections");
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

    fn http_limits(&self) -> http::HttpLimits {
        http::HttpLimits {
            max_header_bytes: self.limits.max_header_bytes,
            // hyper runs this timer whenever it waits for a request head,
            // including between keep-alive requests: it is the idle timeout.
            header_timeout: self.limits.idle_timeout,
        }
    }

    /// Resolves when shutdown starts.
    fn shutdown_signal(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut shutdown = self.shutdown.clone();
        async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        }
    }

    /// Resolves when a policy reload no longer allows `authz`'s connection
    /// (the denial is audited by [`ConnAuthz::still_allowed`]).
    fn revoked<'a>(&self, authz: &'a ConnAuthz) -> impl Future<Output = ()> + 'a {
        let mut versions = self.policy_version.subscribe();
        async move {
            while versions.changed().await.is_ok() {
                if let ConnVerdict::Deny { reason, .. } = authz.still_allowed() {
                    tracing::info!(%reason, "closing a live connection");
                    return;
                }
            }
            std::future::pending::<()>().await
        }
    }

    fn count_bytes(&self, direction: MetricsDirection, copied: Copied) {
        self.metrics
            .bytes(direction, copied.to_upstream + copied.to_downstream);
    }
}

/// Files the sidecar watches.
#[derive(Debug, Clone)]
struct Watched {
    cert: PathBuf,
    key: PathBuf,
    bundle: PathBuf,
    policy: PathBuf,
    trust_domains: Vec<String>,
}

/// Loads a policy file into a compiled policy.
pub fn load_policy(path: &std::path::Path) -> Result<Policy, SidecarError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| SidecarError::Policy(format!("{}: {e}", path.display())))?;
    Policy::load(&path.display().to_string(), &text).map_err(|errors| {
        SidecarError::Policy(
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n"),
        )
    })
}

/// Runs the sidecar until SIGTERM/SIGINT, then drains and returns.
pub async fn run(config: ProxyConfig) -> Result<(), SidecarError> {
    run_until(config, wait_for_signal(), |_| {}).await
}

/// Runs the sidecar until `stop` resolves, then drains and returns.
/// `on_ready` is called once every listener is bound and serving (with the
/// admin address), for embedding (the quickstart, tests).
pub async fn run_until(
    config: ProxyConfig,
    stop: impl Future<Output = ()>,
    on_ready: impl FnOnce(SocketAddr),
) -> Result<(), SidecarError> {
    let (cert, key, bundle_path) = match &config.identity {
        IdentitySource::Files { cert, key, bundle } => (cert.clone(), key.clone(), bundle.clone()),
        IdentitySource::Authority { .. } => return Err(SidecarError::AuthorityIdentity),
    };
    let watched = Watched {
        cert,
        key,
        bundle: bundle_path,
        policy: config.policy.clone(),
        trust_domains: config.trust_domains.clone(),
    };
    let bundle = TrustBundle::from_pem_file(&watched.bundle, watched.trust_domains.clone())?;
    let identity = LocalIdentity::load(&watched.cert, &watched.key, &bundle)?;
    let policy = load_policy(&watched.policy)?;
    let audit_target = config.audit_log.display();
    let audit = AuditLog::open_target(&config.audit_log).map_err(|source| SidecarError::Audit {
        path: audit_target.clone(),
        source,
    })?;
    let metrics = Arc::new(Metrics::new());
    metrics.set_certificate_expiry(
        identity.not_after - time::OffsetDateTime::now_utc().unix_timestamp(),
    );
    let identity_json = serde_json::json!({"id": identity.id.as_str(), "claims": identity.claims});
    let tls_state = TlsState::new(identity, bundle);

    let limits = Limits {
        handshake_timeout: config.limits.handshake_timeout,
        detect_timeout: config.limits.detect_timeout,
        idle_timeout: config.limits.idle_timeout,
        connect_timeout: config.limits.connect_timeout,
        max_connections: config.limits.max_connections as usize,
        max_header_bytes: config.limits.max_header_bytes as usize,
        drain_timeout: config.limits.drain_timeout,
    };

    // Bind everything first: a port in use is a startup error, not a
    // half-running sidecar.
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
    let mut outbound = Vec::new();
    for spec in &config.outbound {
        let listener = bind(spec.listen).await?;
        outbound.push((
            listener,
            outbound::OutboundSpec {
                listen: spec.listen,
                upstream: spec.upstream,
            },
        ));
    }
    let admin_listener = bind(config.admin).await?;
    let admin_address = admin_listener.local_addr().unwrap_or(config.admin);

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (policy_version, _) = watch::channel(0u64);
    let shared = Arc::new(Shared {
        acceptor: TlsAcceptor::from(tls::server_config(tls_state.clone())),
        connector: TlsConnector::from(tls::client_config(tls_state.clone())),
        tls: tls_state,
        policy: ArcSwap::from_pointee(policy),
        policy_version,
        audit,
        metrics: metrics.clone(),
        limits,
        connections: Arc::new(Semaphore::new(limits.max_connections)),
        shutdown: shutdown_rx,
    });

    let readiness = Readiness::default();
    let identity_swap = Arc::new(ArcSwap::from_pointee(identity_json));
    let admin_state = Arc::new(AdminState {
        readiness: readiness.clone(),
        metrics,
        config_json: config.effective_json(),
        identity_json: identity_swap.clone(),
    });
    let admin_shutdown = shared.shutdown_signal();
    tokio::spawn(admin::serve(admin_listener, admin_state, admin_shutdown));

    let mut tasks = Vec::new();
    for (listener, spec) in inbound {
        tasks.push(tokio::spawn(inbound::serve(shared.clone(), listener, spec)));
    }
    for (listener, spec) in outbound {
        tasks.push(tokio::spawn(outbound::serve(
            shared.clone(),
            listener,
            spec,
        )));
    }
    tokio::spawn(reload::watch_files(shared.clone(), watched, identity_swap));
    readiness.set_identity_ready(true);
    readiness.set_policy_ready(true);
    readiness.set_listeners_ready(true);
    tracing::info!(%admin_address, "appid sidecar ready");
    on_ready(admin_address);

    stop.await;
    tracing::info!("shutting down: no new connections, draining live ones");
    readiness.set_listeners_ready(false);
    let _ = shutdown_tx.send(true);
    for task in tasks {
        let _ = task.await;
    }
    let drained = tokio::time::timeout(
        limits.drain_timeout,
        shared
            .connections
            .acquire_many(limits.max_connections as u32),
    )
    .await;
    if drained.is_err() {
        tracing::warn!("drain deadline passed with connections still open; closing them");
    }
    Ok(())
}

async fn bind(address: SocketAddr) -> Result<TcpListener, SidecarError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| SidecarError::Bind { address, source })
}

async fn wait_for_signal() {
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
