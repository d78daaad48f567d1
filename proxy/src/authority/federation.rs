//! Federation: trusting the workloads of another trust domain, through its
//! own authority (SPIFFE Trust Domain and Bundle, §5 and §6).
//!
//! Design bias: *each authority speaks only for its own trust domain*. An
//! AWS trust domain and a GCP trust domain each keep their authority and
//! CA; neither signs for the other. Each publishes its bundle (its CA
//! certificates, as a JWK Set: [`crate::identity::spiffe_bundle`]) at a
//! **bundle endpoint**, and fetches the other's on a refresh interval. The
//! foreign roots reach this authority's sidecars with the rest of the trust
//! bundle (`GET /v1/bundle`, `federated`), and the sidecars trust them for
//! that trust domain and nothing else ([`crate::identity::verify`]). Policy
//! then decides what a foreign workload may do (`from: { trust_domain: ... }`).
//!
//! Both profiles of the spec are implemented, for serving and fetching:
//! - `https_web`: the endpoint is served with a Web PKI certificate for its
//!   DNS name (the operator's, from files, re-read when they change), and a
//!   fetcher authenticates it as any HTTPS client would: against web roots
//!   (the system's, or a file of them) and the URL's host name;
//! - `https_spiffe`: the endpoint is served with an X509-SVID of its trust
//!   domain (ours: `spiffe://<td>/appid/authority`, from our CA), and a
//!   fetcher authenticates it by that SPIFFE ID against the trust domain's
//!   bundle: first one fetched out of band (`bundle:`), then each one it
//!   fetched, so a CA rotation on the far side is followed.
//!
//! Failures are survivable: a fetch that fails or returns a bad bundle
//! leaves the last good one in place, and is retried sooner than the
//! refresh interval.
//!
//! Configured by one file, `appid authority serve --federation FILE`:
//!
//! ```yaml
//! bundle_endpoint:                 # what we publish; off when absent
//!   listen: "0.0.0.0:8443"
//!   profile: https_web             # the default; or https_spiffe (no cert/key)
//!   cert: web.pem                  # https_web: Web PKI certificate chain, leaf first
//!   key: web.key
//!   refresh_hint: 60s              # spiffe_refresh_hint we publish
//! federates_with:                  # whose bundles we fetch
//!   - trust_domain: gcp.example
//!     url: https://bundle.gcp.example:8443
//!     web_roots: /etc/ssl/certs/ca-certificates.crt   # https_web; the default
//!     refresh: 60s                 # optional: instead of the publisher's hint
//!   - trust_domain: azure.example
//!     url: https://10.2.0.5:8443
//!     profile: https_spiffe
//!     bundle: azure-bundle.json    # fetched once out of band (JWKS or PEM)
//!     endpoint_spiffe_id: spiffe://azure.example/appid/authority   # the default
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
use serde::Deserialize;
use thiserror::Error;
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::service::Authority;
use crate::bounded_http::{self, ServerLimits};
use crate::identity::files;
use crate::identity::issue::pem_encode;
use crate::identity::spiffe_bundle::{self, MAX_BUNDLE_BYTES, SpiffeBundle};
use crate::identity::verify::TrustBundle;
use crate::sidecar::tls;

/// The web roots a fetcher uses when `web_roots` is not given (Debian,
/// Ubuntu, Alpine; the `ca-certificates` package).
pub const SYSTEM_WEB_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";
/// `refresh_hint` when the endpoint's configuration names none.
pub const DEFAULT_REFRESH_HINT: Duration = Duration::from_secs(60);
/// Refresh intervals are kept within these bounds, whatever a publisher
/// suggests.
const MIN_REFRESH: Duration = Duration::from_secs(1);
const MAX_REFRESH: Duration = Duration::from_secs(3600);
/// A failed fetch is retried after at most this long.
const RETRY: Duration = Duration::from_secs(10);
/// One fetch: connect, TLS, request and body.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// The federation file, checked.
#[derive(Debug)]
pub struct FederationConfig {
    pub endpoint: Option<EndpointConfig>,
    pub foreign: Vec<Foreign>,
}

/// The bundle endpoint we serve (`https_web`).
#[derive(Debug)]
pub struct EndpointConfig {
    pub listen: SocketAddr,
    pub profile: ServeProfile,
    pub refresh_hint: Duration,
}

/// What the bundle endpoint presents.
#[derive(Debug)]
pub enum ServeProfile {
    /// A Web PKI certificate from files, re-read when they change (a public
    /// CA's certificates live weeks).
    HttpsWeb {
        cert_file: PathBuf,
        key_file: PathBuf,
        /// As read at load, checked to match.
        web_cert: Arc<CertifiedKey>,
    },
    /// An X509-SVID of our trust domain from our CA.
    HttpsSpiffe,
}

/// A trust domain we federate with.
#[derive(Debug, Clone)]
pub struct Foreign {
    pub trust_domain: String,
    pub url: http::Uri,
    /// How the endpoint is authenticated.
    pub profile: FetchProfile,
    /// Overrides the publisher's `spiffe_refresh_hint`.
    pub refresh: Option<Duration>,
    /// The domain's appid authority, whose revocations we enforce too
    /// (`revocations_url`); none when absent.
    pub revocations: Option<http::Uri>,
}

/// How a fetcher authenticates a bundle endpoint.
#[derive(Debug, Clone)]
pub enum FetchProfile {
    /// Web PKI: these roots, and the URL's host name.
    HttpsWeb { web_roots: Arc<RootCertStore> },
    /// An X509-SVID with `endpoint_id`, chaining to the foreign trust
    /// domain's bundle as last known (bootstrap, then each fetch).
    HttpsSpiffe {
        endpoint_id: String,
        roots: Arc<ArcSwap<Vec<CertificateDer<'static>>>>,
    },
}

/// A mistake in the federation file: which file, which field, what to do.
#[derive(Debug, Error)]
#[error("{file}: {field}: {message}")]
pub struct FederationConfigError {
    pub file: String,
    pub field: String,
    pub message: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    bundle_endpoint: Option<RawEndpoint>,
    #[serde(default)]
    federates_with: Vec<RawForeign>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpoint {
    listen: String,
    #[serde(default)]
    profile: Option<String>,
    #[serde(default)]
    cert: Option<PathBuf>,
    #[serde(default)]
    key: Option<PathBuf>,
    #[serde(default)]
    refresh_hint: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawForeign {
    trust_domain: String,
    url: String,
    #[serde(default)]
    profile: Option<String>,
    #[serde(default)]
    web_roots: Option<PathBuf>,
    #[serde(default)]
    bundle: Option<PathBuf>,
    #[serde(default)]
    endpoint_spiffe_id: Option<String>,
    #[serde(default)]
    refresh: Option<String>,
    #[serde(default)]
    revocations_url: Option<String>,
}

const HTTPS_WEB: &str = "https_web";
const HTTPS_SPIFFE: &str = "https_spiffe";

impl FederationConfig {
    /// Reads and checks `path`; `own_trust_domain` may not be federated.
    /// Relative paths in it are relative to the file's directory.
    pub fn load(path: &Path, own_trust_domain: &str) -> Result<Self, FederationConfigError> {
        let file = path.display().to_string();
        let error = |field: &str, message: String| FederationConfigError {
            file: file.clone(),
            field: field.to_string(),
            message,
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| error("(file)", format!("cannot read it: {e}")))?;
        let raw: RawFile = serde_saphyr::from_str(&text).map_err(|e| {
            error(
                "(syntax)",
                format!("{e}; the file holds `bundle_endpoint:` and/or `federates_with:`"),
            )
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        let duration = |field: &str, text: &str| {
            humantime::parse_duration(text)
                .map_err(|e| error(field, format!("{e}; write e.g. 30s, 5m or 1h")))
                .and_then(|d| {
                    if (MIN_REFRESH..=MAX_REFRESH).contains(&d) {
                        Ok(d)
                    } else {
                        Err(error(field, "must be between 1s and 1h".into()))
                    }
                })
        };

        let endpoint = match raw.bundle_endpoint {
            None => None,
            Some(e) => {
                let listen = e.listen.parse().map_err(|_| {
                    error(
                        "bundle_endpoint.listen",
                        format!(
                            "`{}` is not an address; write e.g. \"0.0.0.0:8443\"",
                            e.listen
                        ),
                    )
                })?;
                let profile = match (e.profile.as_deref().unwrap_or(HTTPS_WEB), e.cert, e.key) {
                    (HTTPS_WEB, Some(cert), Some(key)) => {
                        let cert_file = resolve(&cert);
                        let key_file = resolve(&key);
                        let web_cert = load_web_cert(&cert_file, &key_file)
                            .map_err(|(field, message)| error(field, message))?;
                        ServeProfile::HttpsWeb {
                            cert_file,
                            key_file,
                            web_cert,
                        }
                    }
                    (HTTPS_WEB, _, _) => {
                        return Err(error(
                            "bundle_endpoint",
                            "https_web needs `cert` and `key` (a Web PKI certificate for the \
                             endpoint's DNS name); or write `profile: https_spiffe`"
                                .into(),
                        ));
                    }
                    (HTTPS_SPIFFE, None, None) => ServeProfile::HttpsSpiffe,
                    (HTTPS_SPIFFE, _, _) => {
                        return Err(error(
                            "bundle_endpoint",
                            "https_spiffe serves our own SPIFFE certificate: remove `cert` and `key`"
                                .into(),
                        ));
                    }
                    (other, _, _) => {
                        return Err(error(
                            "bundle_endpoint.profile",
                            format!("`{other}`: write https_web or https_spiffe"),
                        ));
                    }
                };
                let refresh_hint = match &e.refresh_hint {
                    Some(t) => duration("bundle_endpoint.refresh_hint", t)?,
                    None => DEFAULT_REFRESH_HINT,
                };
                Some(EndpointConfig {
                    listen,
                    profile,
                    refresh_hint,
                })
            }
        };

        let mut foreign = Vec::new();
        for (i, f) in raw.federates_with.into_iter().enumerate() {
            let at = |name: &str| format!("federates_with[{i}].{name}");
            if !crate::config::valid_trust_domain(&f.trust_domain) {
                return Err(error(
                    &at("trust_domain"),
                    format!(
                        "`{}` is not a trust domain name (lowercase letters, digits, '.', '-', '_')",
                        f.trust_domain
                    ),
                ));
            }
            if f.trust_domain == own_trust_domain {
                return Err(error(
                    &at("trust_domain"),
                    format!(
                        "{own_trust_domain} is this authority's own trust domain; federate with another"
                    ),
                ));
            }
            if foreign
                .iter()
                .any(|other: &Foreign| other.trust_domain == f.trust_domain)
            {
                return Err(error(
                    &at("trust_domain"),
                    format!("{} is listed twice", f.trust_domain),
                ));
            }
            let url: http::Uri = f
                .url
                .parse()
                .ok()
                .filter(|u: &http::Uri| u.scheme_str() == Some("https") && u.host().is_some())
                .ok_or_else(|| {
                    error(
                        &at("url"),
                        format!(
                            "`{}`: write the https:// URL of the trust domain's bundle endpoint",
                            f.url
                        ),
                    )
                })?;
            let profile = match f.profile.as_deref().unwrap_or(HTTPS_WEB) {
                HTTPS_WEB => {
                    if f.bundle.is_some() || f.endpoint_spiffe_id.is_some() {
                        return Err(error(
                            &at("profile"),
                            "`bundle` and `endpoint_spiffe_id` are for https_spiffe: write \
                             `profile: https_spiffe`, or remove them"
                                .into(),
                        ));
                    }
                    let roots_path = f
                        .web_roots
                        .as_deref()
                        .map_or_else(|| PathBuf::from(SYSTEM_WEB_ROOTS), resolve);
                    let certs = files::read_certs(&roots_path).map_err(|err| {
                        error(
                            &at("web_roots"),
                            format!("{err} (the roots that sign the endpoint's web certificate)"),
                        )
                    })?;
                    let mut web_roots = RootCertStore::empty();
                    let (added, _ignored) = web_roots.add_parsable_certificates(certs);
                    if added == 0 {
                        return Err(error(
                            &at("web_roots"),
                            format!("{}: no usable root certificate", roots_path.display()),
                        ));
                    }
                    FetchProfile::HttpsWeb {
                        web_roots: Arc::new(web_roots),
                    }
                }
                HTTPS_SPIFFE => {
                    if f.web_roots.is_some() {
                        return Err(error(
                            &at("web_roots"),
                            "https_spiffe checks the endpoint's SPIFFE ID against `bundle`, not \
                             web roots: remove `web_roots`"
                                .into(),
                        ));
                    }
                    let Some(bundle) = f.bundle.as_deref().map(resolve) else {
                        return Err(error(
                            &at("bundle"),
                            format!(
                                "missing: https_spiffe needs {}'s bundle once, fetched out of \
                                 band (e.g. `curl -k {}` on a trusted path), as JWKS or PEM",
                                f.trust_domain, f.url
                            ),
                        ));
                    };
                    let roots = spiffe_bundle::read_roots_file(&bundle)
                        .map_err(|message| error(&at("bundle"), message))?;
                    let endpoint_id = f
                        .endpoint_spiffe_id
                        .unwrap_or_else(|| super::server::authority_id(&f.trust_domain));
                    let in_domain = crate::identity::spiffe::SpiffeId::parse(&endpoint_id)
                        .is_ok_and(|id| id.trust_domain() == f.trust_domain);
                    if !in_domain {
                        return Err(error(
                            &at("endpoint_spiffe_id"),
                            format!(
                                "`{endpoint_id}`: write the SPIFFE ID of the endpoint's server, \
                                 in {} (e.g. spiffe://{}/spire/server)",
                                f.trust_domain, f.trust_domain
                            ),
                        ));
                    }
                    FetchProfile::HttpsSpiffe {
                        endpoint_id,
                        roots: Arc::new(ArcSwap::from_pointee(roots)),
                    }
                }
                other => {
                    return Err(error(
                        &at("profile"),
                        format!("`{other}`: write https_web or https_spiffe"),
                    ));
                }
            };
            let refresh = f
                .refresh
                .as_deref()
                .map(|t| duration(&at("refresh"), t))
                .transpose()?;
            let revocations = f
                .revocations_url
                .as_deref()
                .map(|text| {
                    text.parse::<http::Uri>()
                        .ok()
                        .filter(|u| u.scheme_str() == Some("https") && u.host().is_some())
                        .ok_or_else(|| {
                            error(
                                &at("revocations_url"),
                                format!(
                                    "`{text}`: write the https:// URL of {}'s appid authority, e.g. https://authority.{}:15170",
                                    f.trust_domain, f.trust_domain
                                ),
                            )
                        })
                })
                .transpose()?;
            foreign.push(Foreign {
                trust_domain: f.trust_domain,
                url,
                profile,
                refresh,
                revocations,
            });
        }
        if endpoint.is_none() && foreign.is_empty() {
            return Err(error(
                "(file)",
                "neither `bundle_endpoint` nor `federates_with`: nothing to do".into(),
            ));
        }
        Ok(FederationConfig { endpoint, foreign })
    }
}

/// The foreign roots this authority holds now: trust domain → PEM.
#[derive(Debug, Default)]
pub struct FederatedBundles {
    pems: ArcSwap<BTreeMap<String, String>>,
    roots: ArcSwap<BTreeMap<String, Vec<CertificateDer<'static>>>>,
    /// Trust domain → the IDs its authority revoked (`revocations_url`).
    revoked: ArcSwap<BTreeMap<String, Vec<String>>>,
}

impl FederatedBundles {
    pub fn pems(&self) -> Arc<BTreeMap<String, String>> {
        self.pems.load_full()
    }

    /// The roots last fetched for `trust_domain`.
    fn roots(&self, trust_domain: &str) -> Option<Vec<CertificateDer<'static>>> {
        self.roots.load().get(trust_domain).cloned()
    }

    /// Every foreign revoked ID, for our own revocation list.
    pub fn revoked(&self) -> Vec<String> {
        self.revoked.load().values().flatten().cloned().collect()
    }

    /// Records `roots` for `trust_domain`: whether anything changed.
    fn set(&self, trust_domain: &str, roots: &[CertificateDer<'_>]) -> bool {
        let pem: String = roots.iter().map(|der| pem_encode(der)).collect();
        let current = self.pems.load();
        if current.get(trust_domain) == Some(&pem) {
            return false;
        }
        let mut next = BTreeMap::clone(&current);
        next.insert(trust_domain.to_string(), pem);
        self.pems.store(Arc::new(next));
        let mut roots_next = BTreeMap::clone(&self.roots.load());
        roots_next.insert(
            trust_domain.to_string(),
            roots.iter().map(|der| der.clone().into_owned()).collect(),
        );
        self.roots.store(Arc::new(roots_next));
        true
    }

    /// Records `trust_domain`'s revoked IDs: whether anything changed.
    fn set_revoked(&self, trust_domain: &str, mut ids: Vec<String>) -> bool {
        ids.sort();
        ids.dedup();
        let current = self.revoked.load();
        if current.get(trust_domain) == Some(&ids) {
            return false;
        }
        let mut next = BTreeMap::clone(&current);
        next.insert(trust_domain.to_string(), ids);
        self.revoked.store(Arc::new(next));
        true
    }
}

/// Why one fetch of a foreign bundle failed.
#[derive(Debug, Error)]
pub enum FetchError {
    #[error("cannot reach {0}")]
    Unreachable(String),
    #[error("the endpoint answered {0}")]
    Status(StatusCode),
    #[error(transparent)]
    Bundle(#[from] spiffe_bundle::BundleFormatError),
    #[error("timed out after {FETCH_TIMEOUT:?}")]
    Timeout,
}

/// Fetches `foreign`'s bundle once.
pub async fn fetch(foreign: &Foreign) -> Result<SpiffeBundle, FetchError> {
    tokio::time::timeout(FETCH_TIMEOUT, fetch_unbounded(foreign))
        .await
        .map_err(|_| FetchError::Timeout)?
}

async fn fetch_unbounded(foreign: &Foreign) -> Result<SpiffeBundle, FetchError> {
    let url = &foreign.url;
    let unreachable = |what: &str, e: &dyn std::fmt::Display| {
        FetchError::Unreachable(format!("{url} ({what}: {e})"))
    };
    let provider = Arc::new(tls::provider());
    let config = match &foreign.profile {
        FetchProfile::HttpsWeb { web_roots } => {
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| unreachable("TLS", &e))?
                .with_root_certificates(web_roots.clone())
                .with_no_client_auth()
        }
        FetchProfile::HttpsSpiffe { endpoint_id, roots } => {
            let bundle = TrustBundle::new(
                "the last known bundle",
                &roots.load(),
                vec![foreign.trust_domain.clone()],
            )
            .map_err(|e| unreachable("bundle", &e))?;
            let verifier = tls::PeerVerifier::new(Arc::new(tls::SvidOnly(bundle)), &provider)
                .expecting(endpoint_id.clone());
            rustls::ClientConfig::builder_with_provider(provider)
                .with_protocol_versions(&[&rustls::version::TLS13])
                .map_err(|e| unreachable("TLS", &e))?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
                .with_no_client_auth()
        }
    };
    let body = https_get(url, config, MAX_BUNDLE_BYTES).await?;
    Ok(spiffe_bundle::decode(&body)?)
}

/// `GET url` over TLS with `config`; the body of a 200, at most `limit`
/// bytes. (https_spiffe ignores the server name, the SPIFFE ID is checked
/// instead; https_web checks it as any browser would.)
async fn https_get(
    url: &http::Uri,
    config: rustls::ClientConfig,
    limit: usize,
) -> Result<Bytes, FetchError> {
    let host = url.host().unwrap_or_default().trim_matches(['[', ']']);
    let port = url.port_u16().unwrap_or(443);
    let unreachable = |what: &str, e: &dyn std::fmt::Display| {
        FetchError::Unreachable(format!("{url} ({what}: {e})"))
    };
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(|e| unreachable("connect", &e))?;
    let _ = tcp.set_nodelay(true); // small request and response: no Nagle delay
    let server_name =
        ServerName::try_from(host.to_string()).map_err(|e| unreachable("server name", &e))?;
    let stream = TlsConnector::from(Arc::new(config))
        .connect(server_name, tcp)
        .await
        .map_err(|e| unreachable("TLS", &e))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| unreachable("HTTP", &e))?;
    let driver = tokio::spawn(connection);
    let path = url.path_and_query().map_or("/", |p| p.as_str());
    let request = Request::builder()
        .method(Method::GET)
        .uri(path)
        .header("host", url.authority().map_or(host, |a| a.as_str()))
        .header("accept", "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|e| unreachable("request", &e))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| unreachable("HTTP", &e))?;
    let status = response.status();
    let body = Limited::new(response.into_body(), limit)
        .collect()
        .await
        .map_err(|e| unreachable("body", &e))?
        .to_bytes();
    driver.abort();
    if status != StatusCode::OK {
        return Err(FetchError::Status(status));
    }
    Ok(body)
}

/// How often a foreign authority's revocation list is fetched (as our
/// sidecars poll ours).
pub const FOREIGN_REVOCATION_POLL: Duration = Duration::from_secs(2);
/// Largest revocation list accepted from a foreign authority.
const MAX_REVOCATIONS_BYTES: usize = 4 * 1024 * 1024;

/// Fetches `foreign`'s revocation list once, from its authority at
/// `api` (an appid authority: `GET /v1/revocations`), authenticated as
/// `spiffe://<td>/appid/authority` with the roots last fetched for the
/// domain. Only IDs of that trust domain are kept: an authority revokes
/// for its own domain, never for another.
pub async fn fetch_revocations(
    foreign: &Foreign,
    api: &http::Uri,
    bundles: &FederatedBundles,
) -> Result<Vec<String>, FetchError> {
    let td = &foreign.trust_domain;
    let roots = bundles
        .roots(td)
        .ok_or_else(|| FetchError::Unreachable(format!("{api}: no bundle of {td} yet")))?;
    let provider = Arc::new(tls::provider());
    let bundle = TrustBundle::new("the federated bundle", &roots, vec![td.clone()])
        .map_err(|e| FetchError::Unreachable(format!("{api}: {e}")))?;
    let verifier = tls::PeerVerifier::new(Arc::new(tls::SvidOnly(bundle)), &provider)
        .expecting(super::server::authority_id(td));
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| FetchError::Unreachable(format!("{api}: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    let url: http::Uri = format!(
        "https://{}/v1/revocations",
        api.authority().map_or("", |a| a.as_str())
    )
    .parse()
    .map_err(|e| FetchError::Unreachable(format!("{api}: {e}")))?;
    let body = tokio::time::timeout(
        FETCH_TIMEOUT,
        https_get(&url, config, MAX_REVOCATIONS_BYTES),
    )
    .await
    .map_err(|_| FetchError::Timeout)??;
    let list: super::service::RevocationList = serde_json::from_slice(&body)
        .map_err(|e| FetchError::Unreachable(format!("{url}: not a revocation list: {e}")))?;
    let (mine, strays): (Vec<String>, Vec<String>) = list.revoked.into_iter().partition(|id| {
        crate::identity::spiffe::SpiffeId::parse(id).is_ok_and(|id| id.trust_domain() == td)
    });
    if !strays.is_empty() {
        tracing::warn!(trust_domain = %td, ignored = strays.len(), "a foreign authority revoked IDs outside its trust domain; ignored");
    }
    Ok(mine)
}

/// Keeps `foreign`'s revocations in `bundles` fresh, forever; a failed
/// fetch keeps the last list.
pub async fn follow_revocations(foreign: Foreign, api: http::Uri, bundles: Arc<FederatedBundles>) {
    let td = foreign.trust_domain.clone();
    let mut failing = false;
    loop {
        match fetch_revocations(&foreign, &api, &bundles).await {
            Ok(revoked) => {
                failing = false;
                if bundles.set_revoked(&td, revoked) {
                    tracing::info!(trust_domain = %td, "federated revocation list changed");
                }
            }
            Err(e) => {
                // Logged once per outage, not every poll.
                if !failing {
                    tracing::warn!(trust_domain = %td, url = %api, error = %e, "federated revocation fetch failed; keeping the last list");
                }
                failing = true;
            }
        }
        tokio::time::sleep(FOREIGN_REVOCATION_POLL).await;
    }
}

/// Keeps `foreign`'s roots in `bundles` fresh, forever: fetch, then wait
/// for the refresh interval (the configured one, else the publisher's
/// hint); after a failure, retry sooner, keeping the last good roots.
pub async fn follow(foreign: Foreign, bundles: Arc<FederatedBundles>) {
    let td = foreign.trust_domain.as_str();
    let mut interval = foreign.refresh.unwrap_or(DEFAULT_REFRESH_HINT);
    loop {
        let wait = match fetch(&foreign).await {
            Ok(bundle) => {
                let roots = bundle.x509_authorities.len();
                if let FetchProfile::HttpsSpiffe { roots: known, .. } = &foreign.profile {
                    // The next fetch is authenticated with what this one said.
                    known.store(Arc::new(bundle.x509_authorities.clone()));
                }
                if bundles.set(td, &bundle.x509_authorities) {
                    tracing::info!(trust_domain = td, roots, url = %foreign.url, "federated bundle updated");
                }
                interval = foreign.refresh.unwrap_or_else(|| {
                    bundle
                        .refresh_hint
                        .map_or(DEFAULT_REFRESH_HINT, Duration::from_secs)
                        .clamp(MIN_REFRESH, MAX_REFRESH)
                });
                interval
            }
            Err(e) => {
                tracing::warn!(trust_domain = td, url = %foreign.url, error = %e, "federated bundle fetch failed; keeping the last good one");
                interval.min(RETRY)
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// Our bundle endpoint, bound and ready to serve.
pub struct BundleEndpoint {
    listener: tokio::net::TcpListener,
    acceptor: TlsAcceptor,
    cert: Arc<EndpointCert>,
    authority: Arc<Authority>,
    refresh_hint: Duration,
}

impl BundleEndpoint {
    /// Binds `config.listen` with its certificate (the web one loaded at
    /// config time, or an SVID issued now): a mistake stops the authority
    /// at start, not later.
    pub async fn bind(
        config: EndpointConfig,
        authority: Arc<Authority>,
    ) -> std::io::Result<BundleEndpoint> {
        let cert = Arc::new(match config.profile {
            ServeProfile::HttpsWeb {
                cert_file,
                key_file,
                web_cert,
            } => EndpointCert {
                source: CertSource::Files {
                    cert_file,
                    key_file,
                },
                current: ArcSwap::new(web_cert),
            },
            ServeProfile::HttpsSpiffe => {
                let signer = authority.ca();
                EndpointCert {
                    current: ArcSwap::new(super::server::serving_identity(&authority)?.certified),
                    source: CertSource::OurCa {
                        authority: authority.clone(),
                        signed: std::sync::Mutex::new(Signed {
                            signer,
                            at: std::time::Instant::now(),
                        }),
                    },
                }
            }
        });
        let mut server = rustls::ServerConfig::builder_with_provider(Arc::new(tls::provider()))
            .with_safe_default_protocol_versions()
            .map_err(std::io::Error::other)?
            .with_no_client_auth()
            .with_cert_resolver(cert.clone());
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("bundle_endpoint: cannot listen on {}: {e}", config.listen),
                )
            })?;
        Ok(BundleEndpoint {
            listener,
            acceptor: TlsAcceptor::from(Arc::new(server)),
            cert,
            authority,
            refresh_hint: config.refresh_hint,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `stop`: `GET /` answers the trust domain's bundle
    /// (every CA of a rotation under way) as a SPIFFE bundle.
    pub async fn serve(self, stop: impl std::future::Future<Output = ()>) {
        let profile = match self.cert.source {
            CertSource::Files { .. } => HTTPS_WEB,
            CertSource::OurCa { .. } => HTTPS_SPIFFE,
        };
        tracing::info!(listen = ?self.local_addr().ok(), profile, "SPIFFE bundle endpoint serving");
        let renewer = tokio::spawn(self.cert.clone().follow());
        let hint = self.refresh_hint.as_secs();
        let authority = self.authority;
        let handler = move |request: Request<hyper::body::Incoming>| {
            let authority = authority.clone();
            async move {
                if request.method() != Method::GET {
                    return bounded_http::method_not_allowed();
                }
                if request.uri().path() != "/" {
                    return bounded_http::text(StatusCode::NOT_FOUND, "the bundle is at /\n");
                }
                match bundle_document(&authority, hint) {
                    Ok(json) => {
                        bounded_http::respond(StatusCode::OK, "application/json", json.into())
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot write our SPIFFE bundle");
                        bounded_http::text(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "bundle unavailable\n",
                        )
                    }
                }
            }
        };
        bounded_http::serve_tls(
            self.listener,
            self.acceptor,
            "bundle endpoint",
            ENDPOINT_LIMITS,
            handler,
            stop,
        )
        .await;
        renewer.abort();
    }
}

/// How often the endpoint's web certificate files are looked at.
const CERT_CHECK: Duration = Duration::from_secs(5);
/// The endpoint's SVID is re-issued after this long (it lives 24 h), and
/// when our CA changes (a rotation's activation).
const SVID_REISSUE: Duration = Duration::from_secs(12 * 3600);

/// Reads the endpoint's certificate chain and key; a mistake names the
/// field (`bundle_endpoint.cert` or `.key`) and says what is wrong.
fn load_web_cert(
    cert_file: &Path,
    key_file: &Path,
) -> Result<Arc<CertifiedKey>, (&'static str, String)> {
    let chain =
        files::read_certs(cert_file).map_err(|e| ("bundle_endpoint.cert", e.to_string()))?;
    let key_pem = files::read_private_key_pem(key_file)
        .map_err(|e| ("bundle_endpoint.key", e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| {
        (
            "bundle_endpoint.key",
            format!("{}: not a PEM private key: {e}", key_file.display()),
        )
    })?;
    CertifiedKey::from_der(chain, key, &tls::provider())
        .map(Arc::new)
        .map_err(|e| {
            (
                "bundle_endpoint.key",
                format!(
                    "{} is not the key of {}: {e}",
                    key_file.display(),
                    cert_file.display()
                ),
            )
        })
}

/// The endpoint's certificate: served at every handshake, replaced when
/// its source changes. A web certificate is re-read when its files change
/// (a renewal by cert-manager or an ACME client); files that do not load
/// leave the current one in place. An SVID is re-issued by our CA at the
/// first handshake after the CA changed or the SVID aged: checked at every
/// handshake rather than on a timer, so that a fetcher which has just
/// learnt that the old CA is retired is never shown an SVID of it.
struct EndpointCert {
    source: CertSource,
    current: ArcSwap<CertifiedKey>,
}

impl std::fmt::Debug for EndpointCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let source = match &self.source {
            CertSource::Files { cert_file, .. } => {
                format!("web certificate {}", cert_file.display())
            }
            CertSource::OurCa { .. } => "SVID of our CA".to_string(),
        };
        f.debug_struct("EndpointCert")
            .field("source", &source)
            .finish()
    }
}

enum CertSource {
    Files {
        cert_file: PathBuf,
        key_file: PathBuf,
    },
    OurCa {
        authority: Arc<Authority>,
        signed: std::sync::Mutex<Signed>,
    },
}

/// Which CA signed the endpoint's current SVID, and when.
#[derive(Debug)]
struct Signed {
    signer: Arc<crate::identity::ca::Ca>,
    at: std::time::Instant,
}

impl rustls::server::ResolvesServerCert for EndpointCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let CertSource::OurCa { authority, signed } = &self.source {
            self.reissue_if_stale(authority, signed);
        }
        Some(self.current.load_full())
    }
}

/// What identifies two files' current contents.
fn files_signature(paths: [&Path; 2]) -> Vec<Option<(std::time::SystemTime, u64)>> {
    paths
        .iter()
        .map(|p| {
            let m = std::fs::metadata(p).ok()?;
            Some((m.modified().ok()?, m.len()))
        })
        .collect()
}

impl EndpointCert {
    /// Re-issues the SVID if our CA is no longer the one that signed it,
    /// or it is old; on failure the current one goes on being served.
    fn reissue_if_stale(&self, authority: &Authority, signed: &std::sync::Mutex<Signed>) {
        let ca = authority.ca();
        let mut signed = signed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if Arc::ptr_eq(&ca, &signed.signer) && signed.at.elapsed() < SVID_REISSUE {
            return;
        }
        match super::server::serving_identity(authority) {
            Ok(identity) => {
                self.current.store(identity.certified);
                *signed = Signed {
                    signer: ca,
                    at: std::time::Instant::now(),
                };
                tracing::info!("bundle endpoint: SVID re-issued");
            }
            Err(e) => {
                tracing::error!(error = %e, "bundle endpoint: cannot re-issue its SVID")
            }
        }
    }

    /// Follows the web certificate's files (the SPIFFE profile needs no
    /// loop: its SVID is checked at each handshake).
    async fn follow(self: Arc<Self>) {
        match &self.source {
            CertSource::Files {
                cert_file,
                key_file,
            } => {
                let mut seen = files_signature([cert_file, key_file]);
                loop {
                    tokio::time::sleep(CERT_CHECK).await;
                    let now = files_signature([cert_file, key_file]);
                    if now == seen {
                        continue;
                    }
                    match load_web_cert(cert_file, key_file) {
                        Ok(cert) => {
                            seen = now;
                            self.current.store(cert);
                            tracing::info!(cert = %cert_file.display(), "bundle endpoint: web certificate reloaded");
                        }
                        // Half-written (the key renamed before the
                        // certificate): look again next time.
                        Err((field, e)) => {
                            tracing::warn!(field, error = %e, "bundle endpoint: web certificate not reloaded; serving the previous one")
                        }
                    }
                }
            }
            CertSource::OurCa { .. } => {}
        }
    }
}

/// The bundle endpoint's bounds: small answers to anyone, few at a time.
const ENDPOINT_LIMITS: ServerLimits = ServerLimits {
    header_read_timeout: Duration::from_secs(10),
    connection_lifetime: Duration::from_secs(60),
    max_connections: 256,
    max_per_source: 16,
    max_head_bytes: 16 * 1024,
    keep_alive: true,
};

/// Our trust bundle as a SPIFFE bundle document.
fn bundle_document(authority: &Authority, refresh_hint: u64) -> Result<String, String> {
    let pem = authority.bundle_pem();
    let roots =
        files::parse_certs(Path::new("trust bundle"), pem.as_bytes()).map_err(|e| e.to_string())?;
    spiffe_bundle::encode(&roots, Some(refresh_hint), None).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(yaml: &str) -> Result<FederationConfig, FederationConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let roots = rcgen::generate_simple_self_signed(vec!["web-ca".into()]).unwrap();
        std::fs::write(dir.path().join("roots.pem"), roots.cert.pem()).unwrap();
        std::fs::write(dir.path().join("web.pem"), roots.cert.pem()).unwrap();
        std::fs::write(
            dir.path().join("web.key"),
            roots.signing_key.serialize_pem(),
        )
        .unwrap();
        let path = dir.path().join("federation.yaml");
        std::fs::write(&path, yaml).unwrap();
        FederationConfig::load(&path, "aws.example")
    }

    #[test]
    fn a_good_file_loads_with_paths_relative_to_it() {
        let config = load(
            "bundle_endpoint: { listen: \"127.0.0.1:8443\", cert: web.pem, key: web.key, refresh_hint: 5s }
federates_with:
  - { trust_domain: gcp.example, url: \"https://bundle.gcp.example:8443\", web_roots: roots.pem }
  - { trust_domain: azure.example, url: \"https://b.azure.example/bundle\", web_roots: roots.pem, refresh: 2m }
  - { trust_domain: other.example, url: \"https://10.0.0.1:8443\", profile: https_spiffe, bundle: roots.pem }
",
        )
        .unwrap();
        let endpoint = config.endpoint.unwrap();
        assert_eq!(endpoint.refresh_hint, Duration::from_secs(5));
        assert!(matches!(endpoint.profile, ServeProfile::HttpsWeb { .. }));
        assert_eq!(config.foreign.len(), 3);
        match &config.foreign[2].profile {
            FetchProfile::HttpsSpiffe { endpoint_id, roots } => {
                assert_eq!(endpoint_id, "spiffe://other.example/appid/authority");
                assert_eq!(roots.load().len(), 1);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(config.foreign[0].trust_domain, "gcp.example");
        assert_eq!(config.foreign[0].refresh, None);
        assert_eq!(config.foreign[1].refresh, Some(Duration::from_secs(120)));
        assert_eq!(config.foreign[1].url.path(), "/bundle");
    }

    #[test]
    fn mistakes_name_the_field_and_the_fix() {
        let cases = [
            (
                "federates_with: [{ trust_domain: aws.example, url: \"https://x\", web_roots: roots.pem }]",
                "federates_with[0].trust_domain",
                "own trust domain",
            ),
            (
                "federates_with: [{ trust_domain: GCP, url: \"https://x\", web_roots: roots.pem }]",
                "federates_with[0].trust_domain",
                "not a trust domain",
            ),
            (
                "federates_with: [{ trust_domain: gcp.example, url: \"http://x\", web_roots: roots.pem }]",
                "federates_with[0].url",
                "https://",
            ),
            (
                "federates_with: [{ trust_domain: gcp.example, url: \"https://x\", web_roots: nope.pem }]",
                "federates_with[0].web_roots",
                "nope.pem",
            ),
            (
                "federates_with: [{ trust_domain: gcp.example, url: \"https://x\", web_roots: roots.pem, refresh: 0s }]",
                "federates_with[0].refresh",
                "between 1s and 1h",
            ),
            (
                "federates_with:\n  - { trust_domain: gcp.example, url: \"https://x\", web_roots: roots.pem }\n  - { trust_domain: gcp.example, url: \"https://y\", web_roots: roots.pem }",
                "federates_with[1].trust_domain",
                "twice",
            ),
            (
                "bundle_endpoint: { listen: nowhere, cert: web.pem, key: web.key }",
                "bundle_endpoint.listen",
                "not an address",
            ),
            (
                "bundle_endpoint: { listen: \"127.0.0.1:1\", cert: web.pem, key: missing.key }",
                "bundle_endpoint.key",
                "missing.key",
            ),
            (
                "federates_with: [{ trust_domain: gcp.example, url: \"https://x\", profile: https_spiffe }]",
                "federates_with[0].bundle",
                "missing",
            ),
            (
                "federates_with: [{ trust_domain: gcp.example, url: \"https://x\", profile: https_spiffe, bundle: roots.pem, endpoint_spiffe_id: \"spiffe://aws.example/x\" }]",
                "federates_with[0].endpoint_spiffe_id",
                "in gcp.example",
            ),
            (
                "federates_with: [{ trust_domain: gcp.example, url: \"https://x\", profile: https_spiffe, bundle: roots.pem, web_roots: roots.pem }]",
                "federates_with[0].web_roots",
                "remove",
            ),
            (
                "federates_with: [{ trust_domain: gcp.example, url: \"https://x\", bundle: roots.pem }]",
                "federates_with[0].profile",
                "https_spiffe",
            ),
            (
                "federates_with: [{ trust_domain: gcp.example, url: \"https://x\", profile: mtls }]",
                "federates_with[0].profile",
                "https_web or https_spiffe",
            ),
            (
                "bundle_endpoint: { listen: \"127.0.0.1:1\" }",
                "bundle_endpoint",
                "cert",
            ),
            (
                "bundle_endpoint: { listen: \"127.0.0.1:1\", profile: https_spiffe, cert: web.pem, key: web.key }",
                "bundle_endpoint",
                "remove",
            ),
            (
                "federates_with: [{ trust_domain: gcp.example, url: \"https://x\", web_roots: roots.pem, revocations_url: \"http://a:15170\" }]",
                "federates_with[0].revocations_url",
                "https://authority.gcp.example:15170",
            ),
            ("federates_wiht: []", "(syntax)", "federates_wiht"),
            ("{}", "(file)", "nothing to do"),
        ];
        for (yaml, field, says) in cases {
            let err = load(yaml).expect_err(yaml);
            assert_eq!(err.field, field, "{yaml}: {err}");
            assert!(err.to_string().contains(says), "{yaml}: {err}");
            assert!(err.to_string().contains("federation.yaml"), "{err}");
        }
    }

    /// A self-signed `localhost` web certificate in `<name>.pem`/`.key`.
    fn web_cert(dir: &Path, name: &str) {
        let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), c.cert.pem()).unwrap();
        std::fs::write(
            dir.join(format!("{name}.key")),
            c.signing_key.serialize_pem(),
        )
        .unwrap();
    }

    fn foreign(dir: &Path, port: u16, roots: &str) -> Foreign {
        let mut store = RootCertStore::empty();
        store.add_parsable_certificates(files::read_certs(&dir.join(roots)).unwrap());
        Foreign {
            trust_domain: "prod.example".into(),
            url: format!("https://localhost:{port}/").parse().unwrap(),
            profile: FetchProfile::HttpsWeb {
                web_roots: Arc::new(store),
            },
            refresh: None,
            revocations: None,
        }
    }

    /// The endpoint serves our CA as a bundle a fetcher reads back; a new
    /// web certificate written over the files is served without a restart.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_endpoint_serves_our_bundle_and_follows_its_web_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let ca = crate::identity::ca::Ca::init(
            &dir.path().join("ca"),
            "prod.example",
            crate::identity::ca::KeyAlg::EcdsaP256,
        )
        .unwrap();
        let ca_der = ca.cert_der().clone();
        let store = super::super::store::Store::open(&dir.path().join("ca")).unwrap();
        let authority =
            Arc::new(Authority::new(ca, store, time::Duration::minutes(5), None, None).unwrap());
        web_cert(dir.path(), "first");
        web_cert(dir.path(), "second");
        let (cert_file, key_file) = (dir.path().join("web.pem"), dir.path().join("web.key"));
        std::fs::copy(dir.path().join("first.pem"), &cert_file).unwrap();
        std::fs::copy(dir.path().join("first.key"), &key_file).unwrap();
        let endpoint = BundleEndpoint::bind(
            EndpointConfig {
                listen: "127.0.0.1:0".parse().unwrap(),
                profile: ServeProfile::HttpsWeb {
                    web_cert: load_web_cert(&cert_file, &key_file).unwrap(),
                    cert_file: cert_file.clone(),
                    key_file: key_file.clone(),
                },
                refresh_hint: Duration::from_secs(7),
            },
            authority,
        )
        .await
        .unwrap();
        let port = endpoint.local_addr().unwrap().port();
        let server = tokio::spawn(endpoint.serve(std::future::pending()));

        let bundle = fetch(&foreign(dir.path(), port, "first.pem"))
            .await
            .unwrap();
        assert_eq!(bundle.x509_authorities, vec![ca_der]);
        assert_eq!(bundle.refresh_hint, Some(7));
        // A fetcher that trusts other web roots refuses the endpoint.
        let refused = fetch(&foreign(dir.path(), port, "second.pem")).await;
        assert!(
            matches!(refused, Err(FetchError::Unreachable(_))),
            "{refused:?}"
        );

        // Renewed on disk: served within the check interval.
        std::fs::copy(dir.path().join("second.key"), &key_file).unwrap();
        std::fs::copy(dir.path().join("second.pem"), &cert_file).unwrap();
        let start = std::time::Instant::now();
        while fetch(&foreign(dir.path(), port, "second.pem"))
            .await
            .is_err()
        {
            assert!(
                start.elapsed() < CERT_CHECK * 3,
                "the new web certificate is not served"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        server.abort();
    }

    /// `https_spiffe`: the endpoint presents our authority's SVID; a
    /// fetcher accepts it only with the right bundle and the right ID.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_spiffe_profile_authenticates_the_endpoint_by_its_spiffe_id() {
        let dir = tempfile::tempdir().unwrap();
        let new_ca = |name: &str| {
            crate::identity::ca::Ca::init(
                &dir.path().join(name),
                "prod.example",
                crate::identity::ca::KeyAlg::EcdsaP256,
            )
            .unwrap()
        };
        let ca = new_ca("ca");
        let stranger = new_ca("stranger").cert_der().clone();
        let ca_der = ca.cert_der().clone();
        let store = super::super::store::Store::open(&dir.path().join("ca")).unwrap();
        let authority =
            Arc::new(Authority::new(ca, store, time::Duration::minutes(5), None, None).unwrap());
        let endpoint = BundleEndpoint::bind(
            EndpointConfig {
                listen: "127.0.0.1:0".parse().unwrap(),
                profile: ServeProfile::HttpsSpiffe,
                refresh_hint: Duration::from_secs(9),
            },
            authority.clone(),
        )
        .await
        .unwrap();
        let port = endpoint.local_addr().unwrap().port();
        let server = tokio::spawn(endpoint.serve(std::future::pending()));
        let foreign = |roots: &CertificateDer<'static>, id: &str| Foreign {
            trust_domain: "prod.example".into(),
            url: format!("https://127.0.0.1:{port}/").parse().unwrap(),
            profile: FetchProfile::HttpsSpiffe {
                endpoint_id: id.into(),
                roots: Arc::new(ArcSwap::from_pointee(vec![roots.clone()])),
            },
            refresh: None,
            revocations: None,
        };
        let authority_id = super::super::server::authority_id("prod.example");
        let bundle = fetch(&foreign(&ca_der, &authority_id)).await.unwrap();
        assert_eq!(bundle.x509_authorities, vec![ca_der.clone()]);
        assert_eq!(bundle.refresh_hint, Some(9));
        for (roots, id) in [
            (&stranger, authority_id.as_str()),
            (&ca_der, "spiffe://prod.example/somebody-else"),
        ] {
            let refused = fetch(&foreign(roots, id)).await;
            assert!(
                matches!(refused, Err(FetchError::Unreachable(_))),
                "{refused:?}"
            );
        }

        // A new signing CA: the very next handshake shows an SVID of it,
        // so a fetcher that already trusts only the new CA gets through.
        let next = new_ca("next");
        let next_der = next.cert_der().clone();
        let next_pem = std::fs::read_to_string(dir.path().join("next/ca.pem")).unwrap();
        authority.set_ca(next, next_pem);
        let bundle = fetch(&foreign(&next_der, &authority_id)).await.unwrap();
        assert_eq!(bundle.x509_authorities, vec![next_der]);
        server.abort();
    }

    #[test]
    fn a_refetched_bundle_changes_nothing_unless_its_roots_change() {
        let bundles = FederatedBundles::default();
        let a = rcgen::generate_simple_self_signed(vec!["a".into()]).unwrap();
        let b = rcgen::generate_simple_self_signed(vec!["b".into()]).unwrap();
        assert!(bundles.set("gcp.example", &[a.cert.der().clone()]));
        assert!(!bundles.set("gcp.example", &[a.cert.der().clone()]));
        assert!(bundles.set("gcp.example", &[b.cert.der().clone()]));
        assert_eq!(bundles.pems().len(), 1);
    }
}
