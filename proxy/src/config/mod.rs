//! The sidecar configuration (`appid proxy --config PROXY.yaml`).
//!
//! Design bias: *refuse early, say exactly what to write*. The file is read
//! once into loosely typed, position-carrying nodes (every scalar is kept as
//! text with its `line:col`), then converted by hand, so that every error
//! names `FILE:LINE:COL`, the field (`inbound[1].listen`) and an example of
//! what would be accepted. All problems found are reported together, not one
//! per run. Unknown keys are errors everywhere (a misspelled `forwrad:` would
//! otherwise silently turn an explicit listener transparent). Addresses are
//! IP literals parsed at load: nothing here resolves names or touches the
//! network, and relative paths are resolved against the config file's
//! directory, never the working directory. The admin API may only listen on
//! a loopback address; the health port (`health:`) may listen anywhere, as
//! it serves only what kubelet and Prometheus need. The app's probes come
//! from the environment, not the file (`APPID_APP_PROBES`, read once by
//! [`ProxyConfig::load`]). [`ProxyConfig::effective_json`] never contains a
//! secret: file paths yes, file contents never, probe header values never,
//! and credentials embedded in URLs are redacted.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use serde_json::json;
use serde_saphyr::{Location, MessageFormatter, Spanned};

use crate::health::probes::{AppProbes, ProbeAction, ProbesError};
use crate::telemetry::LogFormat;

mod services;
pub use services::{Owner, ServiceConfig, ServiceOutbound};

/// The default admin address (DESIGN "Ports").
pub const DEFAULT_ADMIN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 15190);

/// The health port's usual port (`health: "0.0.0.0:15191"`; off unless
/// configured). `appid redirect` never captures it inbound.
pub const DEFAULT_HEALTH_PORT: u16 = 15191;

/// The environment variable holding the app's probes for the health port
/// (JSON; see [`crate::health::probes`]).
pub const APP_PROBES_ENV: &str = "APPID_APP_PROBES";

/// A config file larger than this is refused before parsing.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// Where the workload's certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentitySource {
    /// Certificate, key and trust bundle from files, watched and swapped in
    /// without a restart.
    Files {
        cert: PathBuf,
        key: PathBuf,
        bundle: PathBuf,
        /// Other trust domains' bundles (SPIFFE bundle JSON or PEM), each
        /// trusted for its trust domain only (`identity.federated`).
        federated: BTreeMap<String, PathBuf>,
    },
    /// Certificates issued by the authority.
    Authority {
        /// `https://` URLs of the authority API's replicas (`url:` or
        /// `urls:`), tried in turn: a request that fails to reach one (or
        /// is answered 5xx) goes to the next. Never empty; the first is the
        /// audience of a GCP identity token.
        urls: Vec<String>,
        /// Trust anchors used to verify the authority and peers.
        bundle: PathBuf,
        /// One-time join token. Absent: the sidecar attests by other means
        /// (cloud instance identity document).
        join_token_file: Option<PathBuf>,
        /// A Kubernetes projected service-account token (audience: the
        /// authority), read afresh for each attempt: the kubelet rotates it.
        k8s_token_file: Option<PathBuf>,
        /// On a cloud VM: the instance proves itself with the document (AWS)
        /// or token (GCP) the sidecar fetches from the metadata service.
        cloud: Option<CloudAttestation>,
        /// The metadata service (default `http://169.254.169.254`).
        metadata_endpoint: Option<String>,
        /// Where the sidecar keeps its key and certificate, so a restart
        /// with a still-valid certificate renews instead of needing a new
        /// join token. Absent: the identity lives in memory only.
        state_dir: Option<PathBuf>,
        /// The process whose runtime fingerprint is sent as `reported`.
        /// Absent: nothing is reported.
        workload: Option<crate::sidecar::fingerprint::Workload>,
    },
}

/// An inbound listener: mTLS from peers, plaintext from outside the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboundListener {
    pub listen: SocketAddr,
    /// `None`: transparent (the app is reached at `127.0.0.1:<original port>`).
    pub forward: Option<SocketAddr>,
}

/// An outbound listener: plaintext from the local app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboundListener {
    pub listen: SocketAddr,
    /// `None`: transparent (destination from `SO_ORIGINAL_DST`).
    pub upstream: Option<SocketAddr>,
}

/// Where the audit log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditTarget {
    /// `"-"`: standard error.
    Stderr,
    /// A file, opened in append mode.
    File(PathBuf),
}

impl AuditTarget {
    /// The value as written in the config (`-` or the resolved path).
    pub fn display(&self) -> String {
        match self {
            AuditTarget::Stderr => "-".to_owned(),
            AuditTarget::File(p) => p.display().to_string(),
        }
    }
}

/// Which cloud's instance identity the sidecar fetches and redeems
/// (`identity.authority.cloud`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloudAttestation {
    /// The EC2 instance identity document and its signature (IMDSv2).
    Aws,
    /// The Compute Engine instance identity token (audience: the authority).
    Gcp,
}

impl CloudAttestation {
    pub fn as_str(self) -> &'static str {
        match self {
            CloudAttestation::Aws => "aws",
            CloudAttestation::Gcp => "gcp",
        }
    }
}

/// Resource bounds of the data plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// TLS handshake, from accept to the peer's Finished.
    pub handshake_timeout: Duration,
    /// Peeking at the first bytes to tell mTLS, TLS, HTTP and TCP apart.
    pub detect_timeout: Duration,
    /// An opaque TCP connection with no traffic either way for this long is
    /// closed (per port: `ports[].idle_timeout`).
    pub idle_timeout: Duration,
    /// HTTP: how long a connection may wait for its next (or first)
    /// request, and an HTTP/2 connection or pooled tunnel carry no stream,
    /// before it is closed.
    pub http_idle_timeout: Duration,
    /// Dialling the local app or the upstream.
    pub connect_timeout: Duration,
    /// Concurrent connections, in each direction (inbound and outbound
    /// each have this many).
    pub max_connections: u32,
    /// Largest HTTP request/response head accepted.
    pub max_header_bytes: u32,
    /// How long shutdown waits for open connections.
    pub drain_timeout: Duration,
    /// Bytes the sidecar may hold for peers that have not read them yet
    /// (tunnel send buffers, grown copy buffers); one peer identity may
    /// hold an eighth (see `sidecar::memory`).
    pub max_buffer_bytes: u64,
    /// The audit file is rotated (renamed to `<file>.1`, older ones shifted
    /// up) when it reaches this size; 0 turns rotation off.
    pub audit_log_max_bytes: u64,
    /// Rotated audit files kept (`<file>.1` … `<file>.N`).
    pub audit_log_keep: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            handshake_timeout: Duration::from_secs(10),
            detect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(3600),
            http_idle_timeout: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(5),
            max_connections: 10_000,
            max_header_bytes: 65_536,
            drain_timeout: Duration::from_secs(30),
            max_buffer_bytes: 256 * 1024 * 1024,
            audit_log_max_bytes: 100 * 1024 * 1024,
            audit_log_keep: 5,
        }
    }
}

/// The sidecar configuration, validated, with defaults filled and paths
/// resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    /// The config file this came from, as given.
    pub source: String,
    pub identity: IdentitySource,
    /// Trust domains whose SPIFFE IDs are accepted (lowercase, no scheme).
    pub trust_domains: Vec<String>,
    pub policy: PathBuf,
    pub inbound: Vec<InboundListener>,
    pub outbound: Vec<OutboundListener>,
    /// Always a loopback address.
    pub admin: SocketAddr,
    /// The health port (`/live`, `/ready`, `/metrics`, `/app-health/...`);
    /// `None` = off. May be any address.
    pub health: Option<SocketAddr>,
    /// The app's probes, from `APPID_APP_PROBES` (empty unless
    /// [`ProxyConfig::load`] found the variable set).
    pub app_probes: AppProbes,
    pub audit_log: AuditTarget,
    /// Data-plane threads (default: the number of CPUs).
    pub workers: usize,
    /// How app connections travel to peer sidecars (default: pooled).
    pub tunnel: TunnelMode,
    /// How logs on stderr are written (`log_format`, default text).
    pub log_format: LogFormat,
    /// OTLP endpoint for traces; `None` = export off.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of exported spans; `None` = from the identity (see
    /// `cli::proxy`).
    pub otlp_service_name: Option<String>,
    /// The ratio of new traces sampled (0 to 1, default 1); spans with a
    /// sampled or unsampled parent follow it.
    pub otlp_sampling_ratio: SamplingRatio,
    /// What is declared about app ports (`ports:`), by port.
    pub ports: BTreeMap<u16, PortSettings>,
    /// Services on this host with identities of their own (`services:`,
    /// see [`services`]); empty: the sidecar's identity serves everything.
    pub services: Vec<ServiceConfig>,
    pub limits: Limits,
}

/// A sampling ratio from 0 to 1 (never NaN, so it is `Eq`).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct SamplingRatio(f64);

impl Eq for SamplingRatio {}

impl SamplingRatio {
    pub const ALL: SamplingRatio = SamplingRatio(1.0);

    /// `Some` for a number from 0 to 1.
    pub fn new(ratio: f64) -> Option<SamplingRatio> {
        (0.0..=1.0).contains(&ratio).then_some(SamplingRatio(ratio))
    }

    pub fn get(self) -> f64 {
        self.0
    }
}

/// What the config declares about one app port (`ports:` in the config):
/// its protocol and, for opaque TCP, its idle timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PortSettings {
    pub protocol: PortProtocol,
    /// Overrides `limits.idle_timeout` for opaque connections on the port.
    pub idle_timeout: Option<Duration>,
}

/// The protocol of an app port, as declared (the way Istio names ports and
/// Linkerd marks opaque ones). A declaration takes precedence over
/// detection: a `tcp` or `tls` port is never waited on for its first bytes
/// (server-first protocols get their banner at once); an `http`, `http2`
/// or `grpc` port waits for a client's first request up to
/// `limits.http_idle_timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PortProtocol {
    /// Not declared: detected from the first bytes.
    #[default]
    Detect,
    Tcp,
    Tls,
    Http,
    Http2,
    Grpc,
}

impl PortProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            PortProtocol::Detect => "detect",
            PortProtocol::Tcp => "tcp",
            PortProtocol::Tls => "tls",
            PortProtocol::Http => "http",
            PortProtocol::Http2 => "http2",
            PortProtocol::Grpc => "grpc",
        }
    }

    /// Opaque by declaration: no detection, no wait.
    pub fn is_opaque(self) -> bool {
        matches!(self, PortProtocol::Tcp | PortProtocol::Tls)
    }

    /// HTTP by declaration: a silent client is waited for.
    pub fn is_http(self) -> bool {
        matches!(
            self,
            PortProtocol::Http | PortProtocol::Http2 | PortProtocol::Grpc
        )
    }
}

/// How app connections travel between sidecars (`tunnel:` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TunnelMode {
    /// Offer `appid-mux/1` and `appid/1`: app connections to a peer share a
    /// small pool of mTLS connections, one HTTP/2 CONNECT stream each;
    /// a peer that only speaks `appid/1` gets one TLS connection per app
    /// connection. Inbound accepts both.
    #[default]
    Pooled,
    /// `appid/1` only, both ways: one TLS connection per app connection.
    Strict,
}

impl TunnelMode {
    pub fn as_str(self) -> &'static str {
        match self {
            TunnelMode::Pooled => "pooled",
            TunnelMode::Strict => "strict",
        }
    }
}

/// Where in the config file a problem is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub file: String,
    /// 1-based line and column, when known.
    pub line_col: Option<(u64, u64)>,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line_col {
            Some((l, c)) => write!(f, "{}:{l}:{c}", self.file),
            None => f.write_str(&self.file),
        }
    }
}

/// One problem in the config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub at: Position,
    /// The field, as a path (`inbound[1].listen`); empty when the YAML
    /// library's own message already names it.
    pub field: String,
    /// What is wrong and what to write instead.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}: {}", self.at, self.message)
        } else {
            write!(f, "{}: {}: {}", self.at, self.field, self.message)
        }
    }
}

/// All problems found in one config file, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// Why a sidecar config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read the sidecar config: {error} (check the path given to --config)", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{}: the sidecar config is larger than {MAX_CONFIG_BYTES} bytes; is this the right file?", path.display())]
    TooLarge { path: PathBuf },
    #[error("{0}")]
    Invalid(Diagnostics),
    #[error(transparent)]
    AppProbes(#[from] ProbesError),
    #[error(
        "{file}: {APP_PROBES_ENV} declares {count} app probe(s) but the config has no `health:` address to \
         serve them on: add `health: \"0.0.0.0:{DEFAULT_HEALTH_PORT}\"` (the port `appid inject` points \
         kubelet at), or unset {APP_PROBES_ENV}"
    )]
    ProbesWithoutHealth { file: String, count: usize },
}

impl ConfigError {
    /// The problems found, when the file was read but is not valid.
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            ConfigError::Invalid(d) => &d.0,
            _ => &[],
        }
    }
}

impl ProxyConfig {
    /// Reads and validates `path`; relative paths inside are resolved
    /// against the directory of `path`.
    pub fn load(path: &Path) -> Result<ProxyConfig, ConfigError> {
        let read_err = |error| ConfigError::Read {
            path: path.to_owned(),
            error,
        };
        let file = std::fs::File::open(path).map_err(read_err)?;
        let mut bytes = Vec::new();
        file.take(MAX_CONFIG_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(read_err)?;
        if bytes.len() as u64 > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge {
                path: path.to_owned(),
            });
        }
        let text = String::from_utf8(bytes).map_err(|e| {
            read_err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("not UTF-8 text ({e})"),
            ))
        })?;
        let base = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let config = ProxyConfig::from_yaml(&path.display().to_string(), base, &text)?;
        let probes = match std::env::var(APP_PROBES_ENV) {
            Ok(value) => Some(value),
            Err(std::env::VarError::NotPresent) => None,
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(ProbesError {
                    path: "$".to_owned(),
                    message: "not UTF-8 text: set it to a JSON object of probes, or unset it"
                        .to_owned(),
                }
                .into());
            }
        };
        config.with_app_probes(probes.as_deref())
    }

    /// Sets the app's probes from the value of `APPID_APP_PROBES` (`None`:
    /// unset). Refused: a value that does not parse, probes without a
    /// `health:` address to serve them, and a probe aimed at the health
    /// port itself.
    pub fn with_app_probes(mut self, value: Option<&str>) -> Result<ProxyConfig, ConfigError> {
        let probes = AppProbes::parse(value.unwrap_or_default())?;
        if probes.is_empty() {
            return Ok(self);
        }
        let Some(health) = self.health else {
            return Err(ConfigError::ProbesWithoutHealth {
                file: self.source.clone(),
                count: probes.len(),
            });
        };
        for (path, probe) in probes.iter() {
            let target = probe.action.target();
            let ours = target.port() == health.port()
                && (health.ip().is_unspecified() || health.ip() == target.ip());
            if ours {
                let kind = match probe.action {
                    ProbeAction::Http(_) => "httpGet",
                    ProbeAction::Tcp { .. } => "tcpSocket",
                };
                return Err(ProbesError {
                    path: format!("$[{}].{kind}.port", serde_json::Value::from(path)),
                    message: format!(
                        "{target} is this sidecar's own health port ({} `health:`): the probe would \
                         call itself; point it at the app's port",
                        self.source
                    ),
                }
                .into());
            }
        }
        self.app_probes = probes;
        Ok(self)
    }

    /// Parses and validates config text. `file_name` is used in messages
    /// only; relative paths are resolved against `base_dir`.
    pub fn from_yaml(
        file_name: &str,
        base_dir: &Path,
        text: &str,
    ) -> Result<ProxyConfig, ConfigError> {
        if text.trim().is_empty()
            || text
                .lines()
                .all(|l| l.trim_start().starts_with('#') || l.trim().is_empty())
        {
            return Err(invalid(vec![Diagnostic {
                at: Position {
                    file: file_name.to_owned(),
                    line_col: None,
                },
                field: String::new(),
                message: "the file is empty: a sidecar config needs at least `identity`, \
                          `trust_domains`, `policy` and one `inbound` or `outbound` listener"
                    .to_owned(),
            }]));
        }
        let raw: RawConfig = serde_saphyr::from_str(text)
            .map_err(|e| invalid(vec![yaml_diagnostic(file_name, text, &e)]))?;
        let mut cx = Cx {
            file: file_name,
            base: base_dir,
            diags: Vec::new(),
        };
        let cfg = cx.convert(raw);
        match cfg {
            Some(cfg) if cx.diags.is_empty() => Ok(cfg),
            _ => {
                let mut diags = cx.diags;
                diags.sort_by_key(|d| d.at.line_col.unwrap_or((u64::MAX, u64::MAX)));
                Err(invalid(diags))
            }
        }
    }

    /// The effective configuration with defaults filled in, for the admin
    /// `/config` endpoint. Paths are shown; no file is read; URLs have any
    /// `user:password@` and query string redacted.
    pub fn effective_json(&self) -> serde_json::Value {
        let identity = match &self.identity {
            IdentitySource::Files {
                cert,
                key,
                bundle,
                federated,
            } => json!({
                "cert": cert.display().to_string(),
                "key": key.display().to_string(),
                "bundle": bundle.display().to_string(),
                "federated": federated
                    .iter()
                    .map(|(td, path)| (td.clone(), path.display().to_string()))
                    .collect::<BTreeMap<_, _>>(),
            }),
            IdentitySource::Authority {
                urls,
                bundle,
                join_token_file,
                k8s_token_file,
                cloud,
                metadata_endpoint,
                state_dir,
                workload,
            } => json!({
                "authority": {
                    "urls": urls.iter().map(|u| redact_url(u)).collect::<Vec<_>>(),
                    "bundle": bundle.display().to_string(),
                    "join_token_file": join_token_file.as_ref().map(|p| p.display().to_string()),
                    "k8s_token_file": k8s_token_file.as_ref().map(|p| p.display().to_string()),
                    "cloud": cloud.map(CloudAttestation::as_str),
                    "metadata_endpoint": metadata_endpoint,
                    "state_dir": state_dir.as_ref().map(|p| p.display().to_string()),
                    "workload": workload.as_ref().map(workload_json),
                }
            }),
        };
        let inbound: Vec<_> = self
            .inbound
            .iter()
            .map(|l| json!({"listen": l.listen.to_string(), "forward": l.forward.map(|a| a.to_string())}))
            .collect();
        let outbound: Vec<_> = self
            .outbound
            .iter()
            .map(|l| json!({"listen": l.listen.to_string(), "upstream": l.upstream.map(|a| a.to_string())}))
            .collect();
        let ports: Vec<_> = self
            .ports
            .iter()
            .map(|(port, p)| {
                json!({
                    "port": port,
                    "protocol": p.protocol.as_str(),
                    "idle_timeout": p.idle_timeout.map(|d| humantime::format_duration(d).to_string()),
                })
            })
            .collect();
        let services: Vec<_> = self
            .services
            .iter()
            .map(ServiceConfig::effective_json)
            .collect();
        let app_probes: serde_json::Map<String, serde_json::Value> = self
            .app_probes
            .iter()
            .map(|(path, p)| {
                let timeout = humantime::format_duration(p.timeout);
                (
                    path.to_owned(),
                    json!(format!("{} ({timeout})", p.action.describe())),
                )
            })
            .collect();
        let l = &self.limits;
        json!({
            "source": self.source,
            "identity": identity,
            "trust_domains": self.trust_domains,
            "policy": self.policy.display().to_string(),
            "inbound": inbound,
            "outbound": outbound,
            "admin": self.admin.to_string(),
            "health": self.health.map(|a| a.to_string()),
            "app_probes": app_probes,
            "audit_log": self.audit_log.display(),
            "workers": self.workers,
            "tunnel": self.tunnel.as_str(),
            "log_format": self.log_format.as_str(),
            "otlp_endpoint": self.otlp_endpoint.as_deref().map(redact_url),
            "otlp_service_name": self.otlp_service_name,
            "otlp_sampling_ratio": self.otlp_sampling_ratio.get(),
            "ports": ports,
            "services": services,
            "limits": {
                "handshake_timeout": humantime::format_duration(l.handshake_timeout).to_string(),
                "detect_timeout": humantime::format_duration(l.detect_timeout).to_string(),
                "idle_timeout": humantime::format_duration(l.idle_timeout).to_string(),
                "http_idle_timeout": humantime::format_duration(l.http_idle_timeout).to_string(),
                "connect_timeout": humantime::format_duration(l.connect_timeout).to_string(),
                "max_connections": l.max_connections,
                "max_header_bytes": l.max_header_bytes,
                "drain_timeout": humantime::format_duration(l.drain_timeout).to_string(),
                "max_buffer_bytes": l.max_buffer_bytes,
                "audit_log_max_bytes": l.audit_log_max_bytes,
                "audit_log_keep": l.audit_log_keep,
            },
        })
    }
}

fn invalid(diags: Vec<Diagnostic>) -> ConfigError {
    ConfigError::Invalid(Diagnostics(diags))
}

/// `identity.authority.workload` as shown on `/config`.
pub(crate) fn workload_json(workload: &crate::sidecar::fingerprint::Workload) -> serde_json::Value {
    use crate::sidecar::fingerprint::Workload;
    match workload {
        Workload::PidFile(p) => json!({"pid_file": p.display().to_string()}),
        Workload::SystemdUnit(u) => json!({"systemd_unit": u}),
        Workload::Cgroup(p) => json!({"cgroup": p.display().to_string()}),
        Workload::Command(p) => json!({"command": p.display().to_string()}),
        Workload::SelfOnly => json!({"self": true}),
    }
}

/// Strips `user:password@` and `?query` / `#fragment` from a URL for display.
fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (Some(s), r),
        None => (None, url),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let authority = match authority.rfind('@') {
        Some(i) => format!("REDACTED@{}", &authority[i + 1..]),
        None => authority.to_owned(),
    };
    let path_end = tail.find(['?', '#']).unwrap_or(tail.len());
    let mut out = String::with_capacity(url.len());
    if let Some(s) = scheme {
        out.push_str(s);
        out.push_str("://");
    }
    out.push_str(&authority);
    out.push_str(&tail[..path_end]);
    if path_end < tail.len() {
        out.push_str("?REDACTED");
    }
    out
}

/// Turns a YAML library error into a diagnostic with its position, the key
/// on that line (when the library's message does not already name it) and
/// a hint.
fn yaml_diagnostic(file: &str, text: &str, e: &serde_saphyr::Error) -> Diagnostic {
    let inner = e.without_snippet();
    let formatter = serde_saphyr::UserMessageFormatter;
    let msg: String = formatter
        .format_message(inner)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let line_col = e
        .location()
        .filter(|l| l.line() > 0)
        .map(|l| (l.line(), l.column()));
    let mut field = String::new();
    let message = if msg.contains("unknown field") {
        format!("{msg}; remove it or fix its spelling (see DESIGN.md \"Sidecar configuration\")")
    } else if msg.starts_with("duplicate mapping key") {
        format!("{msg}: keep one")
    } else if msg.contains("expected mapping start") {
        if line_col == Some((1, 1)) {
            "the file must be a mapping of settings (`identity:`, `trust_domains:`, `policy:`, ...), not a list or a single value".to_owned()
        } else {
            field = line_col
                .and_then(|(l, _)| key_on_line(text, l))
                .unwrap_or_default();
            "expected `key: value` settings here, not a list or a single value".to_owned()
        }
    } else {
        field = line_col
            .and_then(|(l, _)| key_on_line(text, l))
            .unwrap_or_default();
        msg
    };
    Diagnostic {
        at: Position {
            file: file.to_owned(),
            line_col,
        },
        field,
        message,
    }
}

/// The mapping key that starts 1-based `line` (`  - listen: x` → `listen`).
fn key_on_line(text: &str, line: u64) -> Option<String> {
    let l = text
        .lines()
        .nth(usize::try_from(line).ok()?.checked_sub(1)?)?;
    let l = l.trim_start();
    let l = l.strip_prefix('-').map_or(l, str::trim_start);
    let (key, _) = l.split_once(':')?;
    (!key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        .then(|| key.to_owned())
}

// ---------------------------------------------------------------------------
// Raw, position-carrying form.

/// Any YAML scalar, kept as its text, so conversion errors are ours (with the
/// field name and an example) rather than a generic type mismatch.
#[derive(Debug, Clone)]
struct Scalar(String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a single value (text or a number), not a list or a mapping")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Scalar, E> {
                Ok(Scalar(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

type S = Spanned<Scalar>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    identity: Option<Spanned<RawIdentity>>,
    trust_domains: Option<Spanned<Vec<S>>>,
    policy: Option<S>,
    inbound: Option<Vec<Spanned<RawInbound>>>,
    outbound: Option<Vec<Spanned<RawOutbound>>>,
    admin: Option<S>,
    health: Option<S>,
    audit_log: Option<S>,
    workers: Option<S>,
    tunnel: Option<S>,
    log_format: Option<S>,
    otlp_endpoint: Option<S>,
    otlp_service_name: Option<S>,
    otlp_sampling_ratio: Option<S>,
    ports: Option<Vec<Spanned<RawPort>>>,
    services: Option<Spanned<Vec<Spanned<services::RawService>>>>,
    limits: Option<RawLimits>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPort {
    port: Option<S>,
    protocol: Option<S>,
    idle_timeout: Option<S>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdentity {
    cert: Option<S>,
    key: Option<S>,
    bundle: Option<S>,
    federated: Option<Spanned<BTreeMap<String, S>>>,
    authority: Option<Spanned<RawAuthority>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuthority {
    url: Option<S>,
    urls: Option<Spanned<Vec<S>>>,
    bundle: Option<S>,
    join_token_file: Option<S>,
    k8s_token_file: Option<S>,
    cloud: Option<S>,
    metadata_endpoint: Option<S>,
    state_dir: Option<S>,
    workload: Option<Spanned<RawWorkload>>,
}

/// `identity.authority.workload`: exactly one key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkload {
    pid_file: Option<S>,
    systemd_unit: Option<S>,
    cgroup: Option<S>,
    command: Option<S>,
    #[serde(rename = "self")]
    self_only: Option<S>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInbound {
    listen: Option<S>,
    forward: Option<S>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutbound {
    listen: Option<S>,
    upstream: Option<S>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    handshake_timeout: Option<S>,
    detect_timeout: Option<S>,
    idle_timeout: Option<S>,
    http_idle_timeout: Option<S>,
    connect_timeout: Option<S>,
    max_connections: Option<S>,
    max_header_bytes: Option<S>,
    drain_timeout: Option<S>,
    max_buffer_bytes: Option<S>,
    audit_log_max_bytes: Option<S>,
    audit_log_keep: Option<S>,
}

// ---------------------------------------------------------------------------
// Conversion and validation.

struct Cx<'a> {
    file: &'a str,
    base: &'a Path,
    diags: Vec<Diagnostic>,
}

fn line_col(loc: &Location) -> Option<(u64, u64)> {
    (loc.line() > 0).then(|| (loc.line(), loc.column()))
}

/// How a listener address is used, for overlap checks and messages.
struct Bound {
    addr: SocketAddr,
    field: String,
    at: Option<(u64, u64)>,
}

impl Cx<'_> {
    fn err(&mut self, at: Option<(u64, u64)>, field: &str, message: impl Into<String>) {
        self.diags.push(Diagnostic {
            at: Position {
                file: self.file.to_owned(),
                line_col: at,
            },
            field: field.to_owned(),
            message: message.into(),
        });
    }

    fn err_at(&mut self, s: &S, field: &str, message: impl Into<String>) {
        self.err(line_col(&s.referenced), field, message);
    }

    fn convert(&mut self, raw: RawConfig) -> Option<ProxyConfig> {
        let identity = match raw.identity {
            Some(i) => self.identity(i),
            None => {
                self.err(
                    None,
                    "identity",
                    "missing: write `identity: { cert: web.pem, key: web.key, bundle: ca.pem }` or \
                     `identity: { authority: { url: \"https://authority:15170\", bundle: ca.pem, join_token_file: token } }`",
                );
                None
            }
        };
        let trust_domains = self.trust_domains(raw.trust_domains);
        let policy = match &raw.policy {
            Some(p) => self.path(p, "policy"),
            None => {
                self.err(
                    None,
                    "policy",
                    "missing: write `policy: policy.yaml` (the policy file's path)",
                );
                None
            }
        };

        // The admin address is reserved first, so a listener that collides
        // with it (even with the default) is the one reported.
        let mut bound: Vec<Bound> = Vec::new();
        let admin = match &raw.admin {
            None => {
                bound.push(Bound {
                    addr: DEFAULT_ADMIN,
                    field: "admin (default)".to_owned(),
                    at: None,
                });
                Some(DEFAULT_ADMIN)
            }
            Some(a) => self.admin(a, &mut bound),
        };
        let health = match &raw.health {
            None => Some(None),
            Some(h) => self.health(h, &mut bound).map(Some),
        };
        let mut inbound = Vec::new();
        for (i, l) in raw.inbound.iter().flatten().enumerate() {
            let field = format!("inbound[{i}]");
            let listen = self.listen(&l.value.listen, &l.referenced, &field, &mut bound);
            let forward = l
                .value
                .forward
                .as_ref()
                .and_then(|f| self.dial_addr(f, &format!("{field}.forward"), "127.0.0.1:8080"));
            if let (Some(listen), true) = (listen, l.value.forward.is_none() || forward.is_some()) {
                inbound.push((i, InboundListener { listen, forward }));
            }
        }
        let mut outbound = Vec::new();
        for (i, l) in raw.outbound.iter().flatten().enumerate() {
            let field = format!("outbound[{i}]");
            let listen = self.listen(&l.value.listen, &l.referenced, &field, &mut bound);
            let upstream = l
                .value
                .upstream
                .as_ref()
                .and_then(|u| self.dial_addr(u, &format!("{field}.upstream"), "10.0.0.2:8443"));
            if let (Some(listen), true) = (listen, l.value.upstream.is_none() || upstream.is_some())
            {
                outbound.push((i, OutboundListener { listen, upstream }));
            }
        }
        let authority = matches!(identity, Some(IdentitySource::Authority { .. }));
        let services = match &raw.services {
            None => Some(Vec::new()),
            Some(list) => self.services(list, authority, &mut bound),
        };
        let n_listeners = raw.inbound.as_ref().map_or(0, Vec::len)
            + raw.outbound.as_ref().map_or(0, Vec::len)
            + services
                .iter()
                .flatten()
                .filter(|s| s.outbound.is_some())
                .count();
        if n_listeners == 0 {
            self.err(
                None,
                "inbound",
                "no listener: add at least one, e.g. `inbound: [{ listen: \"0.0.0.0:15106\" }]` or \
                 `outbound: [{ listen: \"127.0.0.1:15101\" }]`",
            );
        }

        // Forward/upstream pointing back at one of our own listeners loops.
        for (i, l) in &inbound {
            let raw_at = raw
                .inbound
                .as_ref()
                .and_then(|v| v.get(*i))
                .and_then(|r| r.value.forward.as_ref());
            if let (Some(f), Some(s)) = (l.forward, raw_at) {
                self.check_not_self(f, &bound, &format!("inbound[{i}].forward"), s);
            }
        }
        for (i, l) in &outbound {
            let raw_at = raw
                .outbound
                .as_ref()
                .and_then(|v| v.get(*i))
                .and_then(|r| r.value.upstream.as_ref());
            if let (Some(u), Some(s)) = (l.upstream, raw_at) {
                self.check_not_self(u, &bound, &format!("outbound[{i}].upstream"), s);
            }
        }
        let inbound: Vec<InboundListener> = inbound.into_iter().map(|(_, l)| l).collect();
        let outbound: Vec<OutboundListener> = outbound.into_iter().map(|(_, l)| l).collect();

        let audit_log = match &raw.audit_log {
            None => Some(AuditTarget::Stderr),
            Some(a) if a.value.0 == "-" => Some(AuditTarget::Stderr),
            Some(a) => self.path(a, "audit_log").map(AuditTarget::File),
        };

        let workers = match &raw.workers {
            None => Some(std::thread::available_parallelism().map_or(1, |n| n.get())),
            Some(w) => self.number(w, "workers", 1, 1024, "2").map(|n| n as usize),
        };

        let tunnel = match &raw.tunnel {
            None => Some(TunnelMode::default()),
            Some(t) => match t.value.0.trim() {
                "pooled" => Some(TunnelMode::Pooled),
                "strict" => Some(TunnelMode::Strict),
                other => {
                    self.err_at(
                        t,
                        "tunnel",
                        format!(
                            "`{other}` is not a tunnel mode: write `tunnel: pooled` (the default: app connections share pooled mTLS connections) or `tunnel: strict` (one mTLS connection per app connection)"
                        ),
                    );
                    None
                }
            },
        };

        let log_format = match &raw.log_format {
            None => Some(LogFormat::Text),
            Some(f) => match f.value.0.trim() {
                "text" => Some(LogFormat::Text),
                "json" => Some(LogFormat::Json),
                other => {
                    self.err_at(
                        f,
                        "log_format",
                        format!(
                            "`{other}` is not a log format: write `log_format: text` (the default: one readable line per event) or `log_format: json` (one JSON object per line, for files and collectors)"
                        ),
                    );
                    None
                }
            },
        };

        let otlp_endpoint = match &raw.otlp_endpoint {
            None => None,
            Some(o) => {
                let v = o.value.0.trim();
                if !(v.starts_with("http://") || v.starts_with("https://"))
                    || v.len() <= "https://".len()
                {
                    self.err_at(
                        o,
                        "otlp_endpoint",
                        format!(
                            "`{}` is not an OTLP endpoint URL: write e.g. `otlp_endpoint: \"http://127.0.0.1:4318\"`, or remove the line to turn export off",
                            o.value.0
                        ),
                    );
                }
                Some(v.to_owned())
            }
        };

        let otlp_service_name = match &raw.otlp_service_name {
            None => Some(None),
            Some(n) => {
                let v = n.value.0.trim();
                if v.is_empty() || v.len() > 255 || v.chars().any(char::is_control) {
                    self.err_at(
                        n,
                        "otlp_service_name",
                        "is not a service name: write e.g. `otlp_service_name: web` (1 to 255 printable characters), or remove the line to use the workload's SPIFFE ID",
                    );
                    None
                } else {
                    Some(Some(v.to_owned()))
                }
            }
        };

        let otlp_sampling_ratio = match &raw.otlp_sampling_ratio {
            None => Some(SamplingRatio::ALL),
            Some(r) => match r
                .value
                .0
                .trim()
                .parse::<f64>()
                .ok()
                .and_then(SamplingRatio::new)
            {
                Some(v) => Some(v),
                None => {
                    self.err_at(
                        r,
                        "otlp_sampling_ratio",
                        format!(
                            "`{}` is not a ratio: write a number from 0 to 1, e.g. `otlp_sampling_ratio: 0.1` (one new trace in ten; 1, the default, samples all)",
                            r.value.0
                        ),
                    );
                    None
                }
            },
        };

        let limits = self.limits(raw.limits.as_ref());
        let ports = self.ports(raw.ports.as_deref().unwrap_or_default());

        Some(ProxyConfig {
            source: self.file.to_owned(),
            identity: identity?,
            trust_domains: trust_domains?,
            policy: policy?,
            inbound,
            outbound,
            admin: admin?,
            health: health?,
            app_probes: AppProbes::default(),
            audit_log: audit_log?,
            workers: workers?,
            tunnel: tunnel?,
            log_format: log_format?,
            otlp_endpoint,
            otlp_service_name: otlp_service_name?,
            otlp_sampling_ratio: otlp_sampling_ratio?,
            ports: ports?,
            services: services?,
            limits: limits?,
        })
    }

    fn ports(&mut self, raw: &[Spanned<RawPort>]) -> Option<BTreeMap<u16, PortSettings>> {
        let mut ports = BTreeMap::new();
        let mut ok = true;
        for (i, p) in raw.iter().enumerate() {
            let field = format!("ports[{i}]");
            let port = match &p.value.port {
                None => {
                    self.err(
                        line_col(&p.referenced),
                        &field,
                        "missing `port`: write e.g. `- { port: 5432, protocol: tcp }`",
                    );
                    None
                }
                Some(s) => self
                    .number(s, &format!("{field}.port"), 1, 65535, "5432")
                    .map(|n| n as u16),
            };
            let protocol = match &p.value.protocol {
                None => Some(PortProtocol::Detect),
                Some(s) => match s.value.0.trim() {
                    "tcp" => Some(PortProtocol::Tcp),
                    "tls" => Some(PortProtocol::Tls),
                    "http" => Some(PortProtocol::Http),
                    "http2" => Some(PortProtocol::Http2),
                    "grpc" => Some(PortProtocol::Grpc),
                    other => {
                        self.err_at(
                            s,
                            &format!("{field}.protocol"),
                            format!(
                                "`{other}` is not a port protocol: write tcp, tls, http, http2 or grpc (or leave it out to detect it)"
                            ),
                        );
                        None
                    }
                },
            };
            let idle_timeout = match &p.value.idle_timeout {
                None => Some(None),
                some => self
                    .duration(
                        some,
                        &format!("{field}.idle_timeout"),
                        Duration::from_secs(3600),
                        false,
                    )
                    .map(Some),
            };
            match (port, protocol, idle_timeout) {
                (Some(port), Some(protocol), Some(idle_timeout)) => {
                    let settings = PortSettings {
                        protocol,
                        idle_timeout,
                    };
                    if ports.insert(port, settings).is_some() {
                        self.err(
                            line_col(&p.referenced),
                            &field,
                            format!("port {port} is declared twice: keep one entry"),
                        );
                        ok = false;
                    }
                }
                _ => ok = false,
            }
        }
        ok.then_some(ports)
    }

    fn identity(&mut self, i: Spanned<RawIdentity>) -> Option<IdentitySource> {
        let at = line_col(&i.referenced);
        let RawIdentity {
            cert,
            key,
            bundle,
            federated,
            authority,
        } = i.value;
        let any_file = cert.is_some() || key.is_some() || bundle.is_some();
        if let (Some(f), Some(_)) = (&federated, &authority) {
            self.err(
                line_col(&f.referenced).or(at),
                "identity.federated",
                "with `authority`, federation is the authority's to configure \
                 (`appid authority serve --federation`); its sidecars get the bundles with its own: remove it here",
            );
            return None;
        }
        let federated = match federated {
            None => Some(BTreeMap::new()),
            Some(f) => self.federated_bundles(f),
        };
        match authority {
            Some(a) if any_file => {
                self.err(
                    line_col(&a.referenced).or(at),
                    "identity",
                    "both files (cert/key/bundle) and `authority` are given: keep one form; with \
                     `authority`, put the trust bundle inside it: `authority: { url, bundle, join_token_file }`",
                );
                None
            }
            Some(a) => {
                let a_at = line_col(&a.referenced).or(at);
                let RawAuthority {
                    url,
                    urls,
                    bundle,
                    join_token_file,
                    k8s_token_file,
                    cloud,
                    metadata_endpoint,
                    state_dir,
                    workload,
                } = a.value;
                let mut check_url = |u: &S, field: &str| {
                    let v = u.value.0.trim();
                    let host = v.strip_prefix("https://").unwrap_or("");
                    if host.is_empty() || host.starts_with('/') {
                        self.err_at(
                            u,
                            field,
                            format!("`{}` is not an https:// URL: write e.g. `url: \"https://authority:15170\"` (the join token is sent over it, so plain http is refused)", u.value.0),
                        );
                        None
                    } else {
                        Some(v.to_owned())
                    }
                };
                let urls = match (&url, &urls) {
                    (None, None) => {
                        self.err(
                            a_at,
                            "identity.authority.url",
                            "missing: write e.g. `url: \"https://authority:15170\"` (or, for replicas, \
                             `urls: [\"https://authority-a:15170\", \"https://authority-b:15170\"]`)",
                        );
                        None
                    }
                    (Some(_), Some(list)) => {
                        self.err(
                            line_col(&list.referenced).or(a_at),
                            "identity.authority.urls",
                            "both `url` and `urls` are given: keep one (`urls` lists every replica)",
                        );
                        None
                    }
                    (Some(u), None) => check_url(u, "identity.authority.url").map(|u| vec![u]),
                    (None, Some(list)) if list.value.is_empty() => {
                        self.err(
                            line_col(&list.referenced).or(a_at),
                            "identity.authority.urls",
                            "empty: list the replicas, e.g. `urls: [\"https://authority-a:15170\", \"https://authority-b:15170\"]`",
                        );
                        None
                    }
                    (None, Some(list)) => {
                        let checked: Vec<_> = list
                            .value
                            .iter()
                            .enumerate()
                            .map(|(i, u)| check_url(u, &format!("identity.authority.urls[{i}]")))
                            .collect();
                        checked.into_iter().collect::<Option<Vec<_>>>()
                    }
                };
                let bundle = match &bundle {
                    None => {
                        self.err(
                            a_at,
                            "identity.authority.bundle",
                            "missing: write `bundle: ca.pem` (the authority's CA certificate)",
                        );
                        None
                    }
                    Some(b) => self.path(b, "identity.authority.bundle"),
                };
                let join_token_file = match &join_token_file {
                    None => Some(None),
                    Some(t) => self.path(t, "identity.authority.join_token_file").map(Some),
                };
                let k8s_token_file = match &k8s_token_file {
                    None => Some(None),
                    Some(t) => self.path(t, "identity.authority.k8s_token_file").map(Some),
                };
                let cloud = match &cloud {
                    None => Some(None),
                    Some(c) => match c.value.0.trim() {
                        "aws" => Some(Some(CloudAttestation::Aws)),
                        "gcp" => Some(Some(CloudAttestation::Gcp)),
                        other => {
                            self.err_at(
                                c,
                                "identity.authority.cloud",
                                format!("`{other}` is not a cloud the sidecar attests on: write `cloud: aws` or `cloud: gcp`"),
                            );
                            None
                        }
                    },
                };
                let metadata_endpoint = match &metadata_endpoint {
                    None => Some(None),
                    Some(m)
                        if crate::sidecar::metadata::Endpoint::parse(m.value.0.trim())
                            .is_some() =>
                    {
                        Some(Some(m.value.0.trim().to_owned()))
                    }
                    Some(m) => {
                        self.err_at(
                            m,
                            "identity.authority.metadata_endpoint",
                            format!("`{}` is not a metadata service address: write e.g. `metadata_endpoint: \"http://169.254.169.254\"` (plain http, no path)", m.value.0),
                        );
                        None
                    }
                };
                let proofs = [
                    matches!(join_token_file, Some(Some(_))),
                    matches!(k8s_token_file, Some(Some(_))),
                    matches!(cloud, Some(Some(_))),
                ];
                if proofs.iter().filter(|given| **given).count() > 1 {
                    self.err(
                        a_at,
                        "identity.authority",
                        "more than one of `join_token_file`, `k8s_token_file` and `cloud` is given: keep \
                         the one this workload bootstraps with (in a pod, the projected service-account \
                         token; on a cloud VM, `cloud`)",
                    );
                    return None;
                }
                let state_dir = match &state_dir {
                    None => Some(None),
                    Some(d) => self.path(d, "identity.authority.state_dir").map(Some),
                };
                let workload = match workload {
                    None => Some(None),
                    Some(w) => self
                        .workload(w, a_at, "identity.authority.workload")
                        .map(Some),
                };
                Some(IdentitySource::Authority {
                    urls: urls?,
                    bundle: bundle?,
                    join_token_file: join_token_file?,
                    k8s_token_file: k8s_token_file?,
                    cloud: cloud?,
                    metadata_endpoint: metadata_endpoint?,
                    state_dir: state_dir?,
                    workload: workload?,
                })
            }
            None => {
                if !any_file {
                    self.err(
                        at,
                        "identity",
                        "empty: write `cert`, `key` and `bundle` (files), or `authority: { url, bundle, join_token_file }`",
                    );
                    return None;
                }
                let mut get = |v: &Option<S>, name: &str, example: &str| match v {
                    Some(s) => self.path(s, &format!("identity.{name}")),
                    None => {
                        self.err(
                            at,
                            &format!("identity.{name}"),
                            format!("missing: with certificate files, write all of cert, key and bundle, e.g. `{name}: {example}`"),
                        );
                        None
                    }
                };
                let cert = get(&cert, "cert", "web.pem");
                let key = get(&key, "key", "web.key");
                let bundle = get(&bundle, "bundle", "ca.pem");
                Some(IdentitySource::Files {
                    cert: cert?,
                    key: key?,
                    bundle: bundle?,
                    federated: federated?,
                })
            }
        }
    }

    /// `identity.federated`: trust domain → bundle file.
    fn federated_bundles(
        &mut self,
        f: Spanned<BTreeMap<String, S>>,
    ) -> Option<BTreeMap<String, PathBuf>> {
        let mut out = BTreeMap::new();
        let mut ok = true;
        for (td, path) in &f.value {
            let field = format!("identity.federated.{td}");
            if !valid_trust_domain(td) {
                self.err_at(
                    path,
                    &field,
                    format!(
                        "`{td}` is not a trust domain: use lowercase letters, digits, `.`, `-` and `_` only, e.g. `{}`",
                        suggest_trust_domain(td)
                    ),
                );
                ok = false;
            } else if let Some(p) = self.path(path, &field) {
                out.insert(td.clone(), p);
            } else {
                ok = false;
            }
        }
        ok.then_some(out)
    }

    fn trust_domains(&mut self, t: Option<Spanned<Vec<S>>>) -> Option<Vec<String>> {
        let Some(t) = t else {
            self.err(
                None,
                "trust_domains",
                "missing: write e.g. `trust_domains: [prod.example]`",
            );
            return None;
        };
        if t.value.is_empty() {
            self.err(
                line_col(&t.referenced),
                "trust_domains",
                "empty: list at least one, e.g. `trust_domains: [prod.example]`",
            );
            return None;
        }
        let mut out = Vec::with_capacity(t.value.len());
        let mut ok = true;
        for (i, d) in t.value.iter().enumerate() {
            let field = format!("trust_domains[{i}]");
            let v = d.value.0.as_str();
            if let Some(rest) = v.strip_prefix("spiffe://") {
                self.err_at(
                    d,
                    &field,
                    format!(
                        "write the trust domain without `spiffe://`: `{}`",
                        rest.trim_end_matches('/')
                    ),
                );
                ok = false;
            } else if !valid_trust_domain(v) {
                self.err_at(
                    d,
                    &field,
                    format!(
                        "`{v}` is not a trust domain: use lowercase letters, digits, `.`, `-` and `_` only, e.g. `{}`",
                        suggest_trust_domain(v)
                    ),
                );
                ok = false;
            } else if out.iter().any(|o: &String| o == v) {
                self.err_at(d, &field, format!("`{v}` is listed twice: remove one"));
                ok = false;
            } else {
                out.push(v.to_owned());
            }
        }
        ok.then_some(out)
    }

    /// A path, resolved against the config file's directory.
    /// `identity.authority.workload`: exactly one of its keys.
    /// (`FIELD` is where it is: `identity.authority.workload` or
    /// `services[i].workload`.)
    fn workload(
        &mut self,
        w: Spanned<RawWorkload>,
        outer: Option<(u64, u64)>,
        at_field: &str,
    ) -> Option<crate::sidecar::fingerprint::Workload> {
        use crate::sidecar::fingerprint::Workload;
        const CHOICES: &str = "`pid_file: /run/web.pid`, `systemd_unit: web.service`, \
             `cgroup: /sys/fs/cgroup/…`, `command: /usr/bin/web` or `self: true`";
        let at = line_col(&w.referenced).or(outer);
        let RawWorkload {
            pid_file,
            systemd_unit,
            cgroup,
            command,
            self_only,
        } = w.value;
        let given = [
            ("pid_file", pid_file),
            ("systemd_unit", systemd_unit),
            ("cgroup", cgroup),
            ("command", command),
            ("self", self_only),
        ];
        let named: Vec<_> = given
            .into_iter()
            .filter_map(|(k, v)| Some((k, v?)))
            .collect();
        let (key, value) = match named.as_slice() {
            [one] => one,
            [] => {
                self.err(at, at_field, format!("empty: write one of {CHOICES}"));
                return None;
            }
            many => {
                let keys: Vec<_> = many.iter().map(|(k, _)| format!("`{k}`")).collect();
                self.err(
                    at,
                    at_field,
                    format!(
                        "{} are given: the workload is one process; keep one of {CHOICES}",
                        keys.join(" and ")
                    ),
                );
                return None;
            }
        };
        let field = format!("{at_field}.{key}");
        let text = value.value.0.trim();
        let absolute = |cx: &mut Self, example: &str| {
            if Path::new(text).is_absolute() {
                Some(PathBuf::from(text))
            } else {
                cx.err_at(
                    value,
                    &field,
                    format!("`{text}` is not an absolute path: write e.g. `{key}: {example}`"),
                );
                None
            }
        };
        match *key {
            "pid_file" => self.path(value, &field).map(Workload::PidFile),
            "cgroup" => {
                absolute(self, "/sys/fs/cgroup/system.slice/web.service").map(Workload::Cgroup)
            }
            "command" => absolute(self, "/usr/bin/web").map(Workload::Command),
            "systemd_unit" => {
                let valid = !text.is_empty()
                    && !text.starts_with('.')
                    && text
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.:@\\".contains(&b));
                if !valid {
                    self.err_at(
                        value,
                        &field,
                        format!("`{text}` is not a systemd unit name: write e.g. `systemd_unit: web.service` (a unit in system.slice; elsewhere, use `cgroup:`)"),
                    );
                    return None;
                }
                Some(Workload::SystemdUnit(if text.contains('.') {
                    text.to_owned()
                } else {
                    format!("{text}.service")
                }))
            }
            _ => match text {
                "true" => Some(Workload::SelfOnly),
                other => {
                    self.err_at(
                        value,
                        &field,
                        format!("`self` can only be `true` (found `{other}`): to report nothing, remove `workload`"),
                    );
                    None
                }
            },
        }
    }

    fn path(&mut self, s: &S, field: &str) -> Option<PathBuf> {
        let v = s.value.0.as_str();
        if v.trim().is_empty() {
            self.err_at(
                s,
                field,
                "empty path: write a file path (relative paths are relative to this config file)",
            );
            return None;
        }
        let p = Path::new(v);
        Some(if p.is_relative() {
            self.base.join(p)
        } else {
            p.to_owned()
        })
    }

    fn socket_addr(&mut self, s: &S, field: &str, example: &str) -> Option<SocketAddr> {
        let v = s.value.0.trim();
        match v.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                let hint = if v.parse::<IpAddr>().is_ok() {
                    " (the port is missing)"
                } else if v.chars().filter(|c| *c == ':').count() > 1 && !v.starts_with('[') {
                    " (write IPv6 addresses in brackets: [::1]:15106)"
                } else if v
                    .rsplit_once(':')
                    .is_some_and(|(h, _)| h.parse::<IpAddr>().is_err())
                {
                    " (host names are not accepted: write an IP address)"
                } else {
                    ""
                };
                self.err_at(
                    s,
                    field,
                    format!(
                        "`{}` is not an address: expected ip:port like {example}{hint}",
                        s.value.0
                    ),
                );
                None
            }
        }
    }

    fn listen(
        &mut self,
        l: &Option<S>,
        item: &Location,
        field: &str,
        bound: &mut Vec<Bound>,
    ) -> Option<SocketAddr> {
        let lf = format!("{field}.listen");
        let Some(l) = l else {
            self.err(
                line_col(item),
                &lf,
                "missing: write the address to listen on, e.g. `listen: \"127.0.0.1:15106\"`",
            );
            return None;
        };
        let example = if field.starts_with("inbound") {
            "0.0.0.0:15106"
        } else {
            "127.0.0.1:15101"
        };
        let addr = self.socket_addr(l, &lf, example)?;
        self.claim(addr, &lf, line_col(&l.referenced), bound);
        Some(addr)
    }

    fn admin(&mut self, a: &S, bound: &mut Vec<Bound>) -> Option<SocketAddr> {
        let addr = self.socket_addr(a, "admin", "127.0.0.1:15190")?;
        if !addr.ip().is_loopback() {
            self.err_at(
                a,
                "admin",
                format!(
                    "`{addr}` is not a loopback address: the admin API (config, identity, metrics) must never be \
                     reachable from the network; write `admin: \"127.0.0.1:{}\"` (or [::1])",
                    addr.port()
                ),
            );
            return None;
        }
        self.claim(addr, "admin", line_col(&a.referenced), bound);
        Some(addr)
    }

    /// The health port: any address (it serves only what kubelet and
    /// Prometheus need). `[::]:p` is bound dual stack, so it also holds
    /// the IPv4 port.
    fn health(&mut self, h: &S, bound: &mut Vec<Bound>) -> Option<SocketAddr> {
        let addr = self.socket_addr(h, "health", "0.0.0.0:15191")?;
        let at = line_col(&h.referenced);
        let collided = self.claim(addr, "health", at, bound);
        if addr.ip() == IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED) {
            let v4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), addr.port());
            let label = "health (`[::]` serves IPv4 too)";
            if collided {
                bound.push(Bound {
                    addr: v4,
                    field: label.to_owned(),
                    at,
                });
            } else {
                self.claim_as(v4, addr, "health", label, at, bound);
            }
        }
        Some(addr)
    }

    /// Records a listening address, refusing one that collides with an
    /// earlier one (port 0, "any free port", never collides). True when it
    /// collided.
    fn claim(
        &mut self,
        addr: SocketAddr,
        field: &str,
        at: Option<(u64, u64)>,
        bound: &mut Vec<Bound>,
    ) -> bool {
        self.claim_as(addr, addr, field, field, at, bound)
    }

    /// [`Cx::claim`] of `addr`, reported as `written` at `field` (what the
    /// file says), and named `label` to later listeners.
    fn claim_as(
        &mut self,
        addr: SocketAddr,
        written: SocketAddr,
        field: &str,
        label: &str,
        at: Option<(u64, u64)>,
        bound: &mut Vec<Bound>,
    ) -> bool {
        let mut collided = false;
        if addr.port() != 0
            && let Some(prev) = bound.iter().find(|b| overlaps(b.addr, addr))
        {
            let prev_at = match prev.at {
                Some((l, c)) => format!(" (line {l}, column {c})"),
                None => String::new(),
            };
            let msg = format!(
                "`{written}` is already used by {}{prev_at}: give each listener its own address",
                prev.field
            );
            self.err(at, field, msg);
            collided = true;
        }
        bound.push(Bound {
            addr,
            field: label.to_owned(),
            at,
        });
        collided
    }

    fn dial_addr(&mut self, s: &S, field: &str, example: &str) -> Option<SocketAddr> {
        let addr = self.socket_addr(s, field, example)?;
        if addr.port() == 0 || addr.ip().is_unspecified() {
            self.err_at(
                s,
                field,
                format!(
                    "`{addr}` cannot be dialled: write a concrete address and port like {example}"
                ),
            );
            return None;
        }
        Some(addr)
    }

    fn check_not_self(&mut self, target: SocketAddr, bound: &[Bound], field: &str, raw: &S) {
        let hit = bound.iter().find(|b| {
            b.addr.port() == target.port()
                && (b.addr.ip() == target.ip()
                    || (b.addr.ip().is_unspecified() && target.ip().is_loopback()))
        });
        if let Some(b) = hit {
            let msg = format!(
                "`{target}` is this sidecar's own {}: traffic would loop; point it at the app or the peer",
                b.field
            );
            self.err_at(raw, field, msg);
        }
    }

    fn number(&mut self, s: &S, field: &str, min: u64, max: u64, example: &str) -> Option<u64> {
        match s.value.0.trim().replace('_', "").parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => Some(n),
            Ok(n) => {
                self.err_at(s, field, format!("{n} is out of range: write a whole number from {min} to {max}, e.g. `{example}`"));
                None
            }
            Err(_) => {
                self.err_at(
                    s,
                    field,
                    format!(
                        "`{}` is not a whole number: write e.g. `{}: {example}`",
                        s.value.0,
                        field.rsplit('.').next().unwrap_or(field)
                    ),
                );
                None
            }
        }
    }

    fn duration(
        &mut self,
        s: &Option<S>,
        field: &str,
        default: Duration,
        allow_zero: bool,
    ) -> Option<Duration> {
        let Some(s) = s else { return Some(default) };
        let v = s.value.0.trim();
        let name = field.rsplit('.').next().unwrap_or(field);
        let example = humantime::format_duration(default).to_string();
        if !v.is_empty() && v.chars().all(|c| c.is_ascii_digit()) {
            self.err_at(
                s,
                field,
                format!("`{v}` has no unit: write e.g. `{name}: {v}s` or `{name}: {example}`"),
            );
            return None;
        }
        match humantime::parse_duration(v) {
            Ok(d) if d.is_zero() && !allow_zero => {
                self.err_at(
                    s,
                    field,
                    format!("must be more than zero: write e.g. `{name}: {example}`"),
                );
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.err_at(
                    s,
                    field,
                    format!("`{}` is not a duration ({e}): write e.g. `{name}: {example}` (units: ms, s, m, h)", s.value.0),
                );
                None
            }
        }
    }

    fn limits(&mut self, raw: Option<&RawLimits>) -> Option<Limits> {
        let d = Limits::default();
        let Some(r) = raw else { return Some(d) };
        let handshake_timeout = self.duration(
            &r.handshake_timeout,
            "limits.handshake_timeout",
            d.handshake_timeout,
            false,
        );
        let detect_timeout = self.duration(
            &r.detect_timeout,
            "limits.detect_timeout",
            d.detect_timeout,
            false,
        );
        let idle_timeout = self.duration(
            &r.idle_timeout,
            "limits.idle_timeout",
            d.idle_timeout,
            false,
        );
        let http_idle_timeout = self.duration(
            &r.http_idle_timeout,
            "limits.http_idle_timeout",
            d.http_idle_timeout,
            false,
        );
        let connect_timeout = self.duration(
            &r.connect_timeout,
            "limits.connect_timeout",
            d.connect_timeout,
            false,
        );
        let drain_timeout = self.duration(
            &r.drain_timeout,
            "limits.drain_timeout",
            d.drain_timeout,
            true,
        );
        let max_connections = match &r.max_connections {
            None => Some(d.max_connections),
            Some(s) => self
                .number(s, "limits.max_connections", 1, u64::from(u32::MAX), "10000")
                .map(|n| n as u32),
        };
        let max_header_bytes = match &r.max_header_bytes {
            None => Some(d.max_header_bytes),
            Some(s) => self
                .number(
                    s,
                    "limits.max_header_bytes",
                    1024,
                    16 * 1024 * 1024,
                    "65536",
                )
                .map(|n| n as u32),
        };
        let max_buffer_bytes = match &r.max_buffer_bytes {
            None => Some(d.max_buffer_bytes),
            Some(s) => self.number(
                s,
                "limits.max_buffer_bytes",
                8 * 1024 * 1024,
                1 << 40,
                "268435456",
            ),
        };
        let audit_log_max_bytes = match &r.audit_log_max_bytes {
            None => Some(d.audit_log_max_bytes),
            Some(s) => self.number(s, "limits.audit_log_max_bytes", 0, 1 << 50, "104857600"),
        };
        let audit_log_keep = match &r.audit_log_keep {
            None => Some(d.audit_log_keep),
            Some(s) => self
                .number(s, "limits.audit_log_keep", 1, 1000, "5")
                .map(|n| n as u32),
        };
        Some(Limits {
            handshake_timeout: handshake_timeout?,
            detect_timeout: detect_timeout?,
            idle_timeout: idle_timeout?,
            http_idle_timeout: http_idle_timeout?,
            connect_timeout: connect_timeout?,
            max_connections: max_connections?,
            max_header_bytes: max_header_bytes?,
            drain_timeout: drain_timeout?,
            max_buffer_bytes: max_buffer_bytes?,
            audit_log_max_bytes: audit_log_max_bytes?,
            audit_log_keep: audit_log_keep?,
        })
    }
}

/// Two listening addresses that the kernel would refuse to bind both of:
/// the same address, or a wildcard of the same family (IPv6 `[::]` is
/// dual-stack by default, so it also covers IPv4).
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() != b.port() {
        return false;
    }
    let (x, y) = (a.ip(), b.ip());
    if x == y {
        return true;
    }
    // IPv6 listeners are IPv6 only (dual stack is two listeners), so a
    // wildcard covers its own family.
    let covers = |w: IpAddr, o: IpAddr| w.is_unspecified() && w.is_ipv4() == o.is_ipv4();
    covers(x, y) || covers(y, x)
}

/// SPIFFE trust domain: lowercase letters, digits, `.`, `-`, `_`.
/// Whether `s` is a trust domain name as SPIFFE allows it.
pub(crate) fn valid_trust_domain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        })
}

fn suggest_trust_domain(s: &str) -> String {
    let t: String = s
        .trim()
        .to_ascii_lowercase()
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_'))
        .collect();
    if t.is_empty() {
        "prod.example".to_owned()
    } else {
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// The top-level keys of the format.
    fn known_keys() -> BTreeSet<&'static str> {
        [
            "identity",
            "trust_domains",
            "policy",
            "inbound",
            "outbound",
            "admin",
            "health",
            "audit_log",
            "workers",
            "tunnel",
            "log_format",
            "otlp_endpoint",
            "otlp_service_name",
            "otlp_sampling_ratio",
            "ports",
            "services",
            "limits",
        ]
        .into_iter()
        .collect()
    }

    const DESIGN_EXAMPLE: &str = r#"
identity:                      # one of: files, or authority
  cert: web.pem                # files are watched and swapped in without a restart
  key: web.key
  bundle: ca.pem               # trust anchors (one or more PEM certificates)
  # authority: { url: "https://authority:15170", bundle: ca.pem, join_token_file: token }
trust_domains: [prod.example]
policy: policy.yaml            # watched; a bad edit is logged and the old policy stays
inbound:
  - listen: "0.0.0.0:15106"    # transparent: app reached at 127.0.0.1:<original port>
  - listen: "127.0.0.1:8443"   # explicit: a fixed local app
    forward: "127.0.0.1:8080"
outbound:
  - listen: "127.0.0.1:15101"  # transparent: destination from SO_ORIGINAL_DST
  - listen: "127.0.0.1:9001"   # explicit: a fixed peer (its sidecar's inbound)
    upstream: "10.0.0.2:8443"
admin: "127.0.0.1:15190"
audit_log: "-"                 # "-" for stderr, or a path; JSON lines
workers: 2                     # data-plane threads; default: the number of CPUs
"#;

    const MINIMAL: &str = "identity: { cert: a.pem, key: a.key, bundle: ca.pem }\n\
                           trust_domains: [prod.example]\n\
                           policy: p.yaml\n\
                           inbound: [{ listen: \"0.0.0.0:15106\" }]\n";

    fn parse(text: &str) -> Result<ProxyConfig, ConfigError> {
        ProxyConfig::from_yaml("proxy.yaml", Path::new("/etc/appid"), text)
    }

    /// The single diagnostic of a failed parse.
    fn one_err(text: &str) -> Diagnostic {
        let e = parse(text).expect_err("config should be refused");
        let d = e.diagnostics();
        assert_eq!(d.len(), 1, "expected one diagnostic, got: {e}");
        d[0].clone()
    }

    #[test]
    fn federated_bundles_go_with_file_identities_only() {
        let c = parse(&MINIMAL.replace(
            "bundle: ca.pem }",
            "bundle: ca.pem, federated: { gcp.example: gcp.json, azure.example: /b/az.pem } }",
        ))
        .unwrap();
        let IdentitySource::Files { federated, .. } = &c.identity else {
            panic!("{:?}", c.identity)
        };
        assert_eq!(
            federated,
            &BTreeMap::from([
                ("azure.example".to_string(), PathBuf::from("/b/az.pem")),
                (
                    "gcp.example".to_string(),
                    PathBuf::from("/etc/appid/gcp.json")
                ),
            ])
        );
        let d = one_err(&MINIMAL.replace(
            "bundle: ca.pem }",
            "bundle: ca.pem, federated: { GCP: gcp.json } }",
        ));
        assert_eq!(d.field, "identity.federated.GCP");
        assert!(d.message.contains("e.g. `gcp`"), "{}", d.message);
        let d = one_err(&MINIMAL.replace(
            "identity: { cert: a.pem, key: a.key, bundle: ca.pem }",
            "identity: { federated: { gcp.example: g.json }, authority: { url: \"https://a\", bundle: ca.pem, join_token_file: t } }",
        ));
        assert_eq!(d.field, "identity.federated");
        assert!(d.message.contains("--federation"), "{}", d.message);
    }

    #[test]
    fn design_example_parses() {
        let c = parse(DESIGN_EXAMPLE).unwrap();
        assert_eq!(
            c.identity,
            IdentitySource::Files {
                cert: "/etc/appid/web.pem".into(),
                key: "/etc/appid/web.key".into(),
                bundle: "/etc/appid/ca.pem".into(),
                federated: BTreeMap::new(),
            }
        );
        assert_eq!(c.trust_domains, vec!["prod.example"]);
        assert_eq!(c.policy, PathBuf::from("/etc/appid/policy.yaml"));
        assert_eq!(
            c.inbound,
            vec![
                InboundListener {
                    listen: "0.0.0.0:15106".parse().unwrap(),
                    forward: None
                },
                InboundListener {
                    listen: "127.0.0.1:8443".parse().unwrap(),
                    forward: Some("127.0.0.1:8080".parse().unwrap())
                },
            ]
        );
        assert_eq!(c.outbound.len(), 2);
        assert_eq!(c.outbound[0].upstream, None);
        assert_eq!(
            c.outbound[1].upstream,
            Some("10.0.0.2:8443".parse().unwrap())
        );
        assert_eq!(c.admin, DEFAULT_ADMIN);
        assert_eq!(c.audit_log, AuditTarget::Stderr);
        assert_eq!(c.workers, 2);
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.otlp_endpoint, None);
    }

    #[test]
    fn ports_declare_protocols_and_idle_timeouts() {
        let c = parse(&format!(
            "{MINIMAL}ports:\n  - {{ port: 25, protocol: tcp }}\n  - {{ port: 5432, protocol: tcp, idle_timeout: 2h }}\n  - {{ port: 8080, protocol: http }}\n"
        ))
        .unwrap();
        assert_eq!(c.ports[&25].protocol, PortProtocol::Tcp);
        assert_eq!(c.ports[&25].idle_timeout, None);
        assert_eq!(c.ports[&5432].idle_timeout, Some(Duration::from_secs(7200)));
        assert!(c.ports[&8080].protocol.is_http());
        let j = c.effective_json();
        assert_eq!(j["ports"][1]["idle_timeout"], "2h");

        let d = one_err(&format!(
            "{MINIMAL}ports:\n  - {{ port: 25, protocol: smtp }}\n"
        ));
        assert_eq!(d.field, "ports[0].protocol");
        assert!(d.message.contains("tcp, tls, http, http2 or grpc"), "{d}");
        let d = one_err(&format!(
            "{MINIMAL}ports:\n  - {{ port: 25, protocol: tcp }}\n  - {{ port: 25 }}\n"
        ));
        assert_eq!(d.field, "ports[1]");
        let d = one_err(&format!("{MINIMAL}ports:\n  - {{ protocol: tcp }}\n"));
        assert!(d.message.contains("missing `port`"), "{d}");
        let d = one_err(&format!("{MINIMAL}ports:\n  - {{ port: 70000 }}\n"));
        assert_eq!(d.field, "ports[0].port");
    }

    #[test]
    fn defaults_filled() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.admin.to_string(), "127.0.0.1:15190");
        assert_eq!(c.audit_log, AuditTarget::Stderr);
        assert!(c.workers >= 1);
        assert_eq!(c.limits.handshake_timeout, Duration::from_secs(10));
        assert_eq!(c.limits.idle_timeout, Duration::from_secs(3600));
        assert_eq!(c.limits.max_connections, 10_000);
        assert_eq!(c.limits.max_header_bytes, 65_536);
        assert_eq!(c.limits.drain_timeout, Duration::from_secs(30));
    }

    #[test]
    fn a_pod_bootstraps_from_its_projected_token_file_not_both() {
        let rest = "trust_domains: [prod.example]\npolicy: p.yaml\ninbound: [{ listen: \"0.0.0.0:15106\" }]\n";
        let c = parse(&format!(
            "identity:\n  authority: {{ url: \"https://authority:15170\", bundle: ca.pem, k8s_token_file: /var/run/secrets/appid/token }}\n{rest}"
        ))
        .unwrap();
        match &c.identity {
            IdentitySource::Authority {
                k8s_token_file,
                join_token_file,
                ..
            } => {
                assert_eq!(
                    k8s_token_file.as_deref(),
                    Some(Path::new("/var/run/secrets/appid/token"))
                );
                assert_eq!(join_token_file, &None);
            }
            other => panic!("{other:?}"),
        }
        let d = one_err(&format!(
            "identity:\n  authority: {{ url: \"https://a:1\", bundle: ca.pem, join_token_file: t, k8s_token_file: k }}\n{rest}"
        ));
        assert_eq!(d.field, "identity.authority");
        assert!(d.message.contains("keep the one"), "{d}");

        let c = parse(&format!(
            "identity:\n  authority: {{ url: \"https://a:1\", bundle: ca.pem, cloud: aws, state_dir: /var/lib/appid }}\n{rest}"
        ))
        .unwrap();
        let IdentitySource::Authority {
            cloud,
            metadata_endpoint,
            ..
        } = &c.identity
        else {
            panic!("{:?}", c.identity)
        };
        assert_eq!(
            (*cloud, metadata_endpoint.as_deref()),
            (Some(CloudAttestation::Aws), None)
        );
        let d = one_err(&format!(
            "identity:\n  authority: {{ url: \"https://a:1\", bundle: ca.pem, cloud: azure }}\n{rest}"
        ));
        assert_eq!(d.field, "identity.authority.cloud");
        let d = one_err(&format!(
            "identity:\n  authority: {{ url: \"https://a:1\", bundle: ca.pem, cloud: gcp, metadata_endpoint: \"https://m\" }}\n{rest}"
        ));
        assert_eq!(d.field, "identity.authority.metadata_endpoint");
    }

    #[test]
    fn authority_form_and_limits() {
        let c = parse(
            "identity:\n  authority: { url: \"https://authority:15170\", bundle: ca.pem, join_token_file: /run/token, state_dir: state }\n\
             trust_domains: [prod.example, dev_1.example-2]\npolicy: /p.yaml\n\
             outbound: [{ listen: \"[::1]:15101\" }]\n\
             audit_log: audit/decisions.jsonl\n\
             otlp_endpoint: \"http://127.0.0.1:4318\"\n\
             limits:\n  handshake_timeout: 3s\n  idle_timeout: 1h 30m\n  max_connections: 5\n  drain_timeout: 0s\n",
        )
        .unwrap();
        assert_eq!(
            c.identity,
            IdentitySource::Authority {
                urls: vec!["https://authority:15170".into()],
                bundle: "/etc/appid/ca.pem".into(),
                join_token_file: Some("/run/token".into()),
                k8s_token_file: None,
                cloud: None,
                metadata_endpoint: None,
                state_dir: Some("/etc/appid/state".into()),
                workload: None,
            }
        );
        assert_eq!(c.policy, PathBuf::from("/p.yaml"));
        assert_eq!(
            c.audit_log,
            AuditTarget::File("/etc/appid/audit/decisions.jsonl".into())
        );
        assert_eq!(c.limits.handshake_timeout, Duration::from_secs(3));
        assert_eq!(c.limits.idle_timeout, Duration::from_secs(5400));
        assert_eq!(c.limits.max_connections, 5);
        assert_eq!(c.limits.drain_timeout, Duration::ZERO);
        assert_eq!(c.limits.detect_timeout, Duration::from_secs(5));
        assert_eq!(c.otlp_endpoint.as_deref(), Some("http://127.0.0.1:4318"));
    }

    #[test]
    fn replicas_are_listed_with_urls_never_both_forms() {
        let with = |authority: &str| {
            format!(
                "identity:\n  authority: {{ {authority}, bundle: ca.pem, join_token_file: t }}\n\
                 trust_domains: [prod.example]\npolicy: p.yaml\noutbound: [{{ listen: \"127.0.0.1:15101\" }}]\n"
            )
        };
        let c = parse(&with(
            "urls: [\"https://authority-a:15170\", \"https://authority-b\"]",
        ))
        .unwrap();
        let IdentitySource::Authority { urls, .. } = &c.identity else {
            panic!("{:?}", c.identity)
        };
        assert_eq!(urls, &["https://authority-a:15170", "https://authority-b"]);
        assert_eq!(
            c.effective_json()["identity"]["authority"]["urls"][1],
            "https://authority-b"
        );
        let d = one_err(&with(
            "url: \"https://a:15170\", urls: [\"https://b:15170\"]",
        ));
        assert_eq!(d.field, "identity.authority.urls");
        assert!(d.message.contains("keep one"), "{d}");
        let d = one_err(&with("urls: []"));
        assert!(d.message.contains("empty"), "{d}");
        let d = one_err(&with("urls: [\"https://a:1\", \"http://b:1\"]"));
        assert_eq!(d.field, "identity.authority.urls[1]");
    }

    #[test]
    fn load_resolves_against_config_dir() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.yaml");
        std::fs::write(&path, MINIMAL).unwrap();
        let c = ProxyConfig::load(&path).unwrap();
        assert_eq!(c.policy, dir.path().join("p.yaml"));
        assert_eq!(c.source, path.display().to_string());
    }

    #[test]
    fn load_missing_file_names_path() {
        let e = ProxyConfig::load(Path::new("/nonexistent/proxy.yaml")).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }));
        assert!(
            e.to_string()
                .starts_with("/nonexistent/proxy.yaml: cannot read"),
            "{e}"
        );
    }

    #[test]
    fn empty_file() {
        let d = one_err("# nothing here\n\n");
        assert!(d.message.contains("the file is empty"), "{d}");
    }

    #[test]
    fn unknown_field_has_position() {
        let text = MINIMAL.replace(
            "inbound: [{ listen: \"0.0.0.0:15106\" }]",
            "inbound:\n  - listen: \"0.0.0.0:15106\"\n    forwrad: \"127.0.0.1:80\"",
        );
        let d = one_err(&text);
        let s = d.to_string();
        assert!(s.starts_with("proxy.yaml:6:5: "), "{s}");
        assert!(s.contains("forwrad"), "{s}");
    }

    #[test]
    fn unknown_top_level_key() {
        let d = one_err(&format!("{MINIMAL}inbond: []\n"));
        assert!(d.to_string().starts_with("proxy.yaml:5:1: "), "{d}");
        assert!(d.message.contains("inbond"), "{d}");
    }

    #[test]
    fn alias_bombs_are_refused_not_expanded() {
        // "Billion laughs": nine levels of ten aliases each, where a list is
        // expected. The config's types are strict (no field takes arbitrary
        // YAML), and serde-saphyr budgets aliases: a quick, clean error.
        let mut text = String::from("trust_domains:\n  - &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for level in 1..=9 {
            let prev = level - 1;
            let refs = vec![format!("*a{prev}"); 10].join(", ");
            text.push_str(&format!("  - &a{level} [{refs}]\n"));
        }
        text.push_str("policy: *a9\n");
        let started = std::time::Instant::now();
        let d = one_err(&text);
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        assert!(d.to_string().starts_with("proxy.yaml:"), "{d}");
    }

    #[test]
    fn yaml_syntax_error_has_position() {
        let d = one_err("identity: { cert: a.pem\ntrust_domains: [x\n");
        assert!(d.at.line_col.is_some(), "{d}");
    }

    #[test]
    fn bad_listen_address() {
        let d = one_err(&MINIMAL.replace("0.0.0.0:15106", "localhost:15106"));
        assert_eq!(d.field, "inbound[0].listen");
        assert_eq!(d.at.line_col, Some((4, 21)));
        let s = d.to_string();
        assert!(s.starts_with("proxy.yaml:4:21: inbound[0].listen: "), "{s}");
        assert!(s.contains("expected ip:port like 0.0.0.0:15106"), "{s}");
        assert!(s.contains("host names are not accepted"), "{s}");
    }

    #[test]
    fn listen_without_port() {
        let d = one_err(&MINIMAL.replace("0.0.0.0:15106", "10.0.0.1"));
        assert!(d.message.contains("the port is missing"), "{d}");
    }

    #[test]
    fn bad_forward_address() {
        let d = one_err(&MINIMAL.replace(
            "inbound: [{ listen: \"0.0.0.0:15106\" }]",
            "inbound:\n  - listen: \"127.0.0.1:8443\"\n    forward: 8080\n",
        ));
        assert_eq!(d.field, "inbound[0].forward");
        assert_eq!(d.at.line_col, Some((6, 14)));
        assert!(
            d.message.contains("expected ip:port like 127.0.0.1:8080"),
            "{d}"
        );
    }

    #[test]
    fn missing_listen() {
        let d = one_err(&MINIMAL.replace(
            "inbound: [{ listen: \"0.0.0.0:15106\" }]",
            "outbound:\n  - upstream: \"10.0.0.2:8443\"\n",
        ));
        assert_eq!(d.field, "outbound[0].listen");
        assert!(d.message.contains("missing"), "{d}");
        assert_eq!(d.at.line_col.map(|p| p.0), Some(5));
    }

    #[test]
    fn no_listener() {
        let d =
            one_err(&MINIMAL.replace("inbound: [{ listen: \"0.0.0.0:15106\" }]", "inbound: []"));
        assert!(d.message.contains("no listener"), "{d}");
        let d = one_err(&MINIMAL.replace("inbound: [{ listen: \"0.0.0.0:15106\" }]\n", ""));
        assert!(d.message.contains("no listener"), "{d}");
    }

    #[test]
    fn trust_domains_missing_empty_invalid() {
        let d = one_err(&MINIMAL.replace("trust_domains: [prod.example]\n", ""));
        assert_eq!(d.field, "trust_domains");
        assert!(d.message.contains("missing"), "{d}");

        let d = one_err(&MINIMAL.replace("[prod.example]", "[]"));
        assert_eq!(d.field, "trust_domains");
        assert!(d.message.contains("empty"), "{d}");
        assert_eq!(d.at.line_col.map(|p| p.0), Some(2));

        let d = one_err(&MINIMAL.replace("[prod.example]", "[prod.example, Prod.Example]"));
        assert_eq!(d.field, "trust_domains[1]");
        assert_eq!(d.at.line_col, Some((2, 31)));
        assert!(d.message.contains("lowercase"), "{d}");
        assert!(d.message.contains("`prod.example`"), "{d}");

        let d = one_err(&MINIMAL.replace("[prod.example]", "[\"spiffe://prod.example\"]"));
        assert!(d.message.contains("without `spiffe://`"), "{d}");

        let d = one_err(&MINIMAL.replace("[prod.example]", "[a.example, a.example]"));
        assert!(d.message.contains("listed twice"), "{d}");
    }

    #[test]
    fn admin_must_be_loopback() {
        let d = one_err(&format!("{MINIMAL}admin: \"0.0.0.0:15190\"\n"));
        assert_eq!(d.field, "admin");
        assert_eq!(d.at.line_col, Some((5, 8)));
        assert!(d.message.contains("not a loopback address"), "{d}");
        assert!(d.message.contains("127.0.0.1:15190"), "{d}");
        let c = parse(&format!("{MINIMAL}admin: \"[::1]:15190\"\n")).unwrap();
        assert!(c.admin.ip().is_loopback());
    }

    #[test]
    fn health_is_optional_any_address_and_never_shared() {
        assert_eq!(parse(MINIMAL).unwrap().health, None);
        let c = parse(&format!("{MINIMAL}health: \"0.0.0.0:15191\"\n")).unwrap();
        assert_eq!(c.health, Some("0.0.0.0:15191".parse().unwrap()));
        assert_eq!(c.health.map(|a| a.port()), Some(DEFAULT_HEALTH_PORT));
        assert_eq!(c.effective_json()["health"], "0.0.0.0:15191");
        let c = parse(&format!("{MINIMAL}health: \"[::]:15191\"\n")).unwrap();
        assert_eq!(c.health, Some("[::]:15191".parse().unwrap()));

        let d = one_err(&format!("{MINIMAL}health: \"15191\"\n"));
        assert_eq!((d.field.as_str(), d.at.line_col), ("health", Some((5, 9))));
        assert!(d.to_string().starts_with("proxy.yaml:5:9: health: "), "{d}");
        assert!(d.message.contains("0.0.0.0:15191"), "{d}");

        let d = one_err(&format!("{MINIMAL}health: \"127.0.0.1:15190\"\n"));
        assert_eq!(d.field, "health");
        assert!(d.message.contains("already used by admin (default)"), "{d}");
        // `[::]` is bound dual stack: it takes the IPv4 port as well.
        let d = one_err(&format!("{MINIMAL}health: \"[::]:15190\"\n"));
        assert_eq!(d.field, "health");
        assert!(
            d.message.contains("`[::]:15190` is already used by admin"),
            "{d}"
        );
        let d = one_err(&format!("{MINIMAL}health: \"[::]:15106\"\n"));
        assert_eq!(d.field, "inbound[0].listen");
        assert!(
            d.message
                .contains("already used by health (`[::]` serves IPv4 too) (line 5, column 9)"),
            "{d}"
        );
        let d = one_err(&format!(
            "{MINIMAL}health: \"0.0.0.0:9000\"\noutbound: [{{ listen: \"127.0.0.1:9001\", upstream: \"10.0.0.2:8443\" }}, {{ listen: \"127.0.0.1:9000\" }}]\n"
        ));
        assert_eq!(d.field, "outbound[1].listen");
        assert!(d.message.contains("already used by health"), "{d}");
        let d = one_err(&MINIMAL.replace(
            "inbound: [{ listen: \"0.0.0.0:15106\" }]",
            "inbound: [{ listen: \"0.0.0.0:8443\", forward: \"127.0.0.1:15191\" }]\nhealth: \"[::]:15191\"",
        ));
        assert_eq!(d.field, "inbound[0].forward");
        assert!(d.message.contains("loop"), "{d}");
    }

    #[test]
    fn app_probes_need_a_health_port_and_never_name_it() {
        const PROBES: &str = r#"{"/app-health/web/livez": {"httpGet": {"path": "/healthz", "port": 8080,
            "httpHeaders": [{"name": "Authorization", "value": "Bearer s3cret"}]}, "timeoutSeconds": 2},
            "/app-health/web/readyz": {"tcpSocket": {"port": 8080}}}"#;
        let with_health = parse(&format!("{MINIMAL}health: \"0.0.0.0:15191\"\n")).unwrap();
        let c = with_health.clone().with_app_probes(Some(PROBES)).unwrap();
        assert_eq!(c.app_probes.len(), 2);
        let j = c.effective_json();
        assert_eq!(
            j["app_probes"]["/app-health/web/livez"],
            "GET http://127.0.0.1:8080/healthz (2s)"
        );
        assert_eq!(
            j["app_probes"]["/app-health/web/readyz"],
            "tcp connect 127.0.0.1:8080 (1s)"
        );
        assert!(!j.to_string().contains("s3cret"), "{j}");

        // Unset, empty or `{}`: no probes, health or not.
        for value in [None, Some(""), Some("{}")] {
            let c = parse(MINIMAL).unwrap().with_app_probes(value).unwrap();
            assert!(c.app_probes.is_empty());
        }

        let e = parse(MINIMAL)
            .unwrap()
            .with_app_probes(Some(PROBES))
            .unwrap_err();
        assert!(
            matches!(e, ConfigError::ProbesWithoutHealth { count: 2, .. }),
            "{e}"
        );
        let shown = e.to_string();
        assert!(
            shown.starts_with("proxy.yaml: APPID_APP_PROBES declares 2 app probe(s)"),
            "{shown}"
        );
        assert!(shown.contains("health: \"0.0.0.0:15191\""), "{shown}");

        let e = with_health
            .clone()
            .with_app_probes(Some(
                r#"{"/app-health/web/livez": {"httpGet": {"port": "http"}}}"#,
            ))
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with(r#"APPID_APP_PROBES: $["/app-health/web/livez"].httpGet.port: "#),
            "{e}"
        );

        let e = with_health
            .with_app_probes(Some(
                r#"{"/app-health/web/livez": {"tcpSocket": {"port": 15191}}}"#,
            ))
            .unwrap_err();
        let shown = e.to_string();
        assert!(
            shown.starts_with(
                r#"APPID_APP_PROBES: $["/app-health/web/livez"].tcpSocket.port: 127.0.0.1:15191 is this sidecar's own health port"#
            ),
            "{shown}"
        );
    }

    #[test]
    fn duplicate_listeners() {
        let d = one_err(&MINIMAL.replace(
            "inbound: [{ listen: \"0.0.0.0:15106\" }]",
            "inbound: [{ listen: \"0.0.0.0:15106\" }]\noutbound: [{ listen: \"127.0.0.1:15106\" }]",
        ));
        assert_eq!(d.field, "outbound[0].listen");
        assert!(
            d.message.contains("already used by inbound[0].listen"),
            "{d}"
        );
        assert!(d.message.contains("line 4"), "{d}");

        let d = one_err(&format!(
            "{MINIMAL}outbound: [{{ listen: \"127.0.0.1:15190\" }}]\n"
        ));
        assert_eq!(d.field, "outbound[0].listen");
        assert!(d.message.contains("already used by admin (default)"), "{d}");
        let d = one_err(&format!(
            "{MINIMAL}outbound: [{{ listen: \"127.0.0.1:15191\" }}]\nadmin: \"127.0.0.1:15191\"\n"
        ));
        assert_eq!(d.field, "outbound[0].listen");
        assert!(d.message.contains("already used by admin (line 6"), "{d}");
        // Port 0 (any free port) never collides.
        parse(&MINIMAL.replace(
            "inbound: [{ listen: \"0.0.0.0:15106\" }]",
            "inbound: [{ listen: \"127.0.0.1:0\" }, { listen: \"127.0.0.1:0\" }]",
        ))
        .unwrap();
        // Different addresses, same port: fine.
        parse(&MINIMAL.replace(
            "inbound: [{ listen: \"0.0.0.0:15106\" }]",
            "inbound: [{ listen: \"127.0.0.1:15106\" }, { listen: \"127.0.0.2:15106\" }]",
        ))
        .unwrap();
    }

    #[test]
    fn forward_to_self_loops() {
        let d = one_err(&MINIMAL.replace(
            "inbound: [{ listen: \"0.0.0.0:15106\" }]",
            "inbound: [{ listen: \"0.0.0.0:8443\", forward: \"127.0.0.1:8443\" }]",
        ));
        assert_eq!(d.field, "inbound[0].forward");
        assert!(d.message.contains("loop"), "{d}");
    }

    #[test]
    fn identity_forms() {
        let d = one_err(&MINIMAL.replace(
            "identity: { cert: a.pem, key: a.key, bundle: ca.pem }",
            "identity: { cert: a.pem, key: a.key, bundle: ca.pem, authority: { url: \"https://a:1\", bundle: ca.pem } }",
        ));
        assert_eq!(d.field, "identity");
        assert!(d.message.contains("keep one form"), "{d}");

        let d = one_err(&MINIMAL.replace(
            "identity: { cert: a.pem, key: a.key, bundle: ca.pem }",
            "identity: { cert: a.pem, bundle: ca.pem }",
        ));
        assert_eq!(d.field, "identity.key");
        assert_eq!(d.at.line_col.map(|p| p.0), Some(1));

        let d = one_err(&MINIMAL.replace(
            "identity: { cert: a.pem, key: a.key, bundle: ca.pem }",
            "identity: {}",
        ));
        assert_eq!(d.field, "identity");

        let d = one_err(&MINIMAL.replace(
            "identity: { cert: a.pem, key: a.key, bundle: ca.pem }\n",
            "",
        ));
        assert_eq!(d.field, "identity");
        assert!(d.message.contains("missing"), "{d}");

        let d = one_err(&MINIMAL.replace(
            "identity: { cert: a.pem, key: a.key, bundle: ca.pem }",
            "identity: { authority: { url: \"http://authority:15170\", bundle: ca.pem } }",
        ));
        assert_eq!(d.field, "identity.authority.url");
        assert!(d.message.contains("https://"), "{d}");

        let c = parse(&MINIMAL.replace(
            "identity: { cert: a.pem, key: a.key, bundle: ca.pem }",
            "identity: { authority: { url: \"https://authority:15170\", bundle: ca.pem } }",
        ))
        .unwrap();
        assert!(matches!(
            c.identity,
            IdentitySource::Authority {
                join_token_file: None,
                k8s_token_file: None,
                cloud: None,
                metadata_endpoint: None,
                state_dir: None,
                ..
            }
        ));
    }

    #[test]
    fn authority_workload_names_one_process() {
        use crate::sidecar::fingerprint::Workload;
        let rest = "trust_domains: [prod.example]\npolicy: p.yaml\ninbound: [{ listen: \"0.0.0.0:15106\" }]\n";
        let with = |w: &str| {
            format!(
                "identity:\n  authority:\n    url: \"https://a:1\"\n    bundle: ca.pem\n    workload: {w}\n{rest}"
            )
        };
        let workload = |w: &str| match parse(&with(w)).unwrap().identity {
            IdentitySource::Authority { workload, .. } => workload,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            workload("{ pid_file: run/app.pid }"),
            Some(Workload::PidFile("/etc/appid/run/app.pid".into()))
        );
        assert_eq!(
            workload("{ systemd_unit: web }"),
            Some(Workload::SystemdUnit("web.service".into()))
        );
        assert_eq!(
            workload("{ systemd_unit: web@1.service }"),
            Some(Workload::SystemdUnit("web@1.service".into()))
        );
        assert_eq!(
            workload("{ cgroup: /sys/fs/cgroup/app.slice }"),
            Some(Workload::Cgroup("/sys/fs/cgroup/app.slice".into()))
        );
        assert_eq!(
            workload("{ command: /usr/bin/web }"),
            Some(Workload::Command("/usr/bin/web".into()))
        );
        assert_eq!(workload("{ self: true }"), Some(Workload::SelfOnly));
        let absent = parse(&format!(
            "identity:\n  authority: {{ url: \"https://a:1\", bundle: ca.pem }}\n{rest}"
        ))
        .unwrap();
        assert!(matches!(
            absent.identity,
            IdentitySource::Authority { workload: None, .. }
        ));
        let shown = parse(&with("{ pid_file: /run/app.pid }"))
            .unwrap()
            .effective_json();
        assert_eq!(
            shown["identity"]["authority"]["workload"],
            json!({"pid_file": "/run/app.pid"})
        );

        for (w, field, says) in [
            ("{}", "identity.authority.workload", "empty: write one of"),
            (
                "{ pid_file: /run/a.pid, command: /usr/bin/a }",
                "identity.authority.workload",
                "`pid_file` and `command` are given",
            ),
            (
                "{ command: web }",
                "identity.authority.workload.command",
                "not an absolute path",
            ),
            (
                "{ cgroup: app.slice }",
                "identity.authority.workload.cgroup",
                "not an absolute path",
            ),
            (
                "{ systemd_unit: ../../etc }",
                "identity.authority.workload.systemd_unit",
                "not a systemd unit name",
            ),
            (
                "{ self: false }",
                "identity.authority.workload.self",
                "remove `workload`",
            ),
            (
                "{ pid_file: \"\" }",
                "identity.authority.workload.pid_file",
                "empty path",
            ),
        ] {
            let d = one_err(&with(w));
            assert_eq!(d.field, field, "{w}: {d}");
            assert!(d.message.contains(says), "{w}: {d}");
            assert_eq!(d.at.line_col.map(|(line, _)| line), Some(5), "{w}: {d}");
        }
        // An unknown key is refused by name, at its line.
        let text = with("{ pidfile: /run/a.pid }");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("pidfile") && err.contains(":5:"), "{err}");
    }

    #[test]
    fn limits_errors() {
        let with = |l: &str| format!("{MINIMAL}limits:\n  {l}\n");
        let d = one_err(&with("idle_timeout: 300"));
        assert_eq!(d.field, "limits.idle_timeout");
        assert_eq!(d.at.line_col, Some((6, 17)));
        assert!(d.message.contains("has no unit"), "{d}");
        assert!(d.message.contains("300s"), "{d}");

        let d = one_err(&with("connect_timeout: soon"));
        assert!(d.message.contains("not a duration"), "{d}");

        let d = one_err(&with("handshake_timeout: 0s"));
        assert!(d.message.contains("more than zero"), "{d}");

        let d = one_err(&with("max_connections: 0"));
        assert_eq!(d.field, "limits.max_connections");
        assert!(d.message.contains("from 1 to"), "{d}");

        let d = one_err(&with("max_connections: lots"));
        assert!(d.message.contains("not a whole number"), "{d}");

        let d = one_err(&with("max_header_bytes: 10"));
        assert!(d.message.contains("from 1024"), "{d}");

        let d = one_err(&with("max_idle: 5s"));
        assert!(d.message.contains("max_idle"), "{d}");
        assert!(d.at.line_col.is_some(), "{d}");
    }

    #[test]
    fn tunnel_modes() {
        assert_eq!(parse(MINIMAL).unwrap().tunnel, TunnelMode::Pooled);
        let c = parse(&format!("{MINIMAL}tunnel: strict\n")).unwrap();
        assert_eq!(c.tunnel, TunnelMode::Strict);
        let d = one_err(&format!("{MINIMAL}tunnel: hbone\n"));
        assert_eq!(d.field, "tunnel");
        assert!(d.message.contains("tunnel: strict"), "{d}");
    }

    #[test]
    fn workers_and_otlp_errors() {
        let d = one_err(&format!("{MINIMAL}workers: 0\n"));
        assert_eq!(d.field, "workers");
        assert!(d.message.contains("from 1 to 1024"), "{d}");
        let d = one_err(&format!("{MINIMAL}otlp_endpoint: collector\n"));
        assert_eq!(d.field, "otlp_endpoint");
    }

    #[test]
    fn otlp_service_name_and_sampling_ratio() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.otlp_service_name, None);
        assert_eq!(c.otlp_sampling_ratio.get(), 1.0);
        let c = parse(&format!(
            "{MINIMAL}otlp_service_name: web.shop\notlp_sampling_ratio: 0.25\n"
        ))
        .unwrap();
        assert_eq!(c.otlp_service_name.as_deref(), Some("web.shop"));
        assert_eq!(c.otlp_sampling_ratio.get(), 0.25);
        assert_eq!(
            parse(&format!("{MINIMAL}otlp_sampling_ratio: 0\n"))
                .unwrap()
                .otlp_sampling_ratio
                .get(),
            0.0
        );
        for bad in ["1.5", "-0.1", "half", "NaN"] {
            let d = one_err(&format!("{MINIMAL}otlp_sampling_ratio: {bad}\n"));
            assert_eq!(d.field, "otlp_sampling_ratio");
            assert!(d.message.contains("from 0 to 1"), "{d}");
            assert!(d.at.line_col.is_some(), "{d}");
        }
        let d = one_err(&format!("{MINIMAL}otlp_service_name: \"\"\n"));
        assert_eq!(d.field, "otlp_service_name");
        assert!(d.at.line_col.is_some(), "{d}");
    }

    #[test]
    fn log_format_is_text_or_json() {
        assert_eq!(parse(MINIMAL).unwrap().log_format, LogFormat::Text);
        let c = parse(&format!("{MINIMAL}log_format: json\n")).unwrap();
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.effective_json()["log_format"], "json");
        let d = one_err(&format!("{MINIMAL}log_format: xml\n"));
        assert_eq!(d.field, "log_format");
        assert!(d.message.contains("`log_format: json`"), "{d}");
        assert!(d.at.line_col.is_some(), "{d}");
    }

    #[test]
    fn all_problems_reported_in_file_order() {
        let e = parse(
            "identity: { cert: a.pem, key: a.key, bundle: ca.pem }\n\
             trust_domains: [BAD]\npolicy: p.yaml\n\
             inbound: [{ listen: nowhere }]\nadmin: \"10.0.0.1:15190\"\n",
        )
        .unwrap_err();
        let fields: Vec<_> = e.diagnostics().iter().map(|d| d.field.as_str()).collect();
        assert_eq!(
            fields,
            vec!["trust_domains[0]", "inbound[0].listen", "admin"]
        );
        assert_eq!(e.to_string().lines().count(), 3);
    }

    #[test]
    fn list_where_scalar_expected() {
        let d = one_err(&MINIMAL.replace("policy: p.yaml", "policy: [a, b]"));
        assert_eq!(d.at.line_col.map(|p| p.0), Some(3), "{d}");
        assert_eq!(d.field, "policy");
        assert!(d.message.contains("not a list or a mapping"), "{d}");
    }

    #[test]
    fn scalar_where_mapping_expected() {
        let d = one_err(&format!("{MINIMAL}limits: 5\n"));
        assert_eq!(
            d.to_string(),
            "proxy.yaml:5:9: limits: expected `key: value` settings here, not a list or a single value"
        );
        let d = one_err("- a\n- b\n");
        assert!(
            d.to_string()
                .starts_with("proxy.yaml:1:1: the file must be a mapping"),
            "{d}"
        );
    }

    #[test]
    fn duplicate_key() {
        let d = one_err(&format!("{MINIMAL}policy: other.yaml\n"));
        assert_eq!(d.at.line_col, Some((5, 1)));
        assert!(
            d.message.contains("duplicate")
                && d.message.contains("policy")
                && d.message.contains("keep one"),
            "{d}"
        );
    }

    #[test]
    fn effective_json_has_defaults_and_no_secrets() {
        let c = parse(
            "identity:\n  authority: { url: \"https://user:s3cret@authority:15170/v1?token=abc\", bundle: ca.pem, join_token_file: token }\n\
             trust_domains: [prod.example]\npolicy: p.yaml\n\
             inbound: [{ listen: \"0.0.0.0:15106\" }, { listen: \"127.0.0.1:8443\", forward: \"127.0.0.1:8080\" }]\n\
             otlp_endpoint: \"https://k:v@otel:4317\"\n",
        )
        .unwrap();
        let j = c.effective_json();
        let text = j.to_string();
        assert!(
            !text.contains("s3cret") && !text.contains("abc") && !text.contains("k:v"),
            "{text}"
        );
        assert_eq!(
            j["identity"]["authority"]["urls"][0],
            "https://REDACTED@authority:15170/v1?REDACTED"
        );
        assert_eq!(
            j["identity"]["authority"]["join_token_file"],
            "/etc/appid/token"
        );
        assert_eq!(j["otlp_endpoint"], "https://REDACTED@otel:4317");
        assert_eq!(j["admin"], "127.0.0.1:15190");
        assert_eq!(j["audit_log"], "-");
        assert_eq!(j["limits"]["idle_timeout"], "1h");
        assert_eq!(j["limits"]["http_idle_timeout"], "5m");
        assert_eq!(j["limits"]["max_connections"], 10000);
        assert_eq!(j["inbound"][0]["forward"], serde_json::Value::Null);
        assert_eq!(j["inbound"][1]["forward"], "127.0.0.1:8080");
        assert!(j["workers"].as_u64().unwrap() >= 1);
        for k in known_keys() {
            assert!(j.get(k).is_some(), "effective config lacks {k}");
        }
    }

    #[test]
    fn redact_url_cases() {
        assert_eq!(redact_url("https://a:1"), "https://a:1");
        assert_eq!(
            redact_url("https://u@a:1/x#f"),
            "https://REDACTED@a:1/x?REDACTED"
        );
        assert_eq!(redact_url("http://a/p?q=1"), "http://a/p?REDACTED");
    }

    #[test]
    fn overlap_rules() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(overlaps(a("0.0.0.0:1"), a("127.0.0.1:1")));
        assert!(
            !overlaps(a("[::]:1"), a("127.0.0.1:1")),
            "dual stack: two listeners"
        );
        assert!(overlaps(a("[::]:1"), a("[::1]:1")));
        assert!(!overlaps(a("0.0.0.0:1"), a("[::1]:1")));
        assert!(!overlaps(a("127.0.0.1:1"), a("127.0.0.1:2")));
        assert!(!overlaps(a("127.0.0.1:1"), a("127.0.0.2:1")));
    }
}
