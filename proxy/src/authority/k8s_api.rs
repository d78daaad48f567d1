//! The authority's Kubernetes API client: one request, `GET
//! /api/v1/namespaces/<ns>/pods/<name>`, for the pod lookup of `serve
//! --k8s-api` ([`crate::attest::k8s_pod`] checks the answer).
//!
//! The same client approach as the sidecar's authority client
//! ([`super::client`]): hyper's HTTP/1 connection over tokio-rustls, a
//! bounded body, a timeout. Only `https://`: the API server is verified
//! with the cluster CA (`--k8s-api-ca`, in a pod
//! `/var/run/secrets/kubernetes.io/serviceaccount/ca.crt`) and the
//! authority authenticates with a bearer token read afresh for every
//! request from `--k8s-api-token-file` (the kubelet rotates a pod's token).
//!
//! The service runs on the blocking pool, so [`PodSource::get`] drives the
//! request on the runtime it was called from.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use thiserror::Error;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::service::{PodLookupError, PodSource};
use crate::attest::k8s_pod::MAX_POD_BYTES;
use crate::identity::files;

/// The API server as a pod sees it.
pub const IN_CLUSTER_URL: &str = "https://kubernetes.default.svc";
/// A pod's service-account token.
pub const IN_CLUSTER_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
/// The cluster CA, as mounted into a pod.
pub const IN_CLUSTER_CA: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";

/// One lookup, connection to body.
const TIMEOUT: Duration = Duration::from_secs(5);
/// The largest token file read.
const MAX_TOKEN: usize = 16 * 1024;

/// Why the client cannot be set up (at `serve` start).
#[derive(Debug, Error)]
pub enum K8sApiError {
    #[error(
        "--k8s-api `{0}`: expected https://HOST[:PORT] (the API server; in a pod: {IN_CLUSTER_URL})"
    )]
    BadUrl(String),
    #[error(
        "--k8s-api-ca {path}: {reason}; give the cluster CA (in a pod: {IN_CLUSTER_CA}, from `kubectl config view --raw`'s certificate-authority-data otherwise)"
    )]
    BadCa { path: String, reason: String },
    #[error(
        "--k8s-api-token-file {path}: {reason}; give a token allowed to get pods (in a pod: {IN_CLUSTER_TOKEN}, with automountServiceAccountToken)"
    )]
    BadToken { path: String, reason: String },
}

/// A client for one API server.
pub struct K8sApi {
    host: String,
    port: u16,
    server_name: ServerName<'static>,
    tls: TlsConnector,
    token_file: PathBuf,
}

impl K8sApi {
    /// `url` is `https://host[:port]`; `ca` the PEM file of the cluster CA;
    /// `token_file` is read now (so a wrong path fails at start) and again
    /// for every request.
    pub fn new(url: &str, ca: &Path, token_file: &Path) -> Result<K8sApi, K8sApiError> {
        let uri: http::Uri = url.parse().map_err(|_| K8sApiError::BadUrl(url.into()))?;
        let path_ok = matches!(uri.path(), "" | "/") && uri.query().is_none();
        if uri.scheme_str() != Some("https") || !path_ok {
            return Err(K8sApiError::BadUrl(url.into()));
        }
        let host = uri
            .host()
            .ok_or_else(|| K8sApiError::BadUrl(url.into()))?
            .trim_matches(['[', ']'])
            .to_string();
        let port = uri.port_u16().unwrap_or(443);
        let server_name =
            ServerName::try_from(host.clone()).map_err(|_| K8sApiError::BadUrl(url.into()))?;
        let bad_ca = |reason: String| K8sApiError::BadCa {
            path: ca.display().to_string(),
            reason,
        };
        let pem = files::read_small(ca).map_err(|e| bad_ca(e.to_string()))?;
        let certs = files::parse_certs(ca, &pem).map_err(|e| bad_ca(e.to_string()))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| bad_ca(format!("not a usable CA certificate ({e})")))?;
        }
        let config =
            rustls::ClientConfig::builder_with_provider(Arc::new(crate::sidecar::tls::provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| bad_ca(e.to_string()))?
                .with_root_certificates(roots)
                .with_no_client_auth();
        let api = K8sApi {
            host,
            port,
            server_name,
            tls: TlsConnector::from(Arc::new(config)),
            token_file: token_file.to_owned(),
        };
        api.token().map_err(|reason| K8sApiError::BadToken {
            path: token_file.display().to_string(),
            reason,
        })?;
        Ok(api)
    }

    fn token(&self) -> Result<String, String> {
        let bytes = files::read_small(&self.token_file).map_err(|e| e.to_string())?;
        if bytes.len() > MAX_TOKEN {
            return Err(format!("larger than {MAX_TOKEN} bytes"));
        }
        let token = String::from_utf8(bytes).map_err(|_| "not UTF-8".to_string())?;
        let token = token.trim();
        if token.is_empty() || token.bytes().any(|b| !b.is_ascii_graphic()) {
            return Err("empty, or not a bearer token".into());
        }
        Ok(token.to_owned())
    }

    /// The pod object's JSON.
    pub async fn pod(&self, namespace: &str, pod: &str) -> Result<Vec<u8>, PodLookupError> {
        let name = format!("{namespace}/{pod}");
        let transient = |what: String| PodLookupError {
            transient: true,
            message: format!("looking up pod {name} at the Kubernetes API: {what}"),
        };
        let refused = |what: String| PodLookupError {
            transient: false,
            message: format!("looking up pod {name} at the Kubernetes API: {what}"),
        };
        let token = self
            .token()
            .map_err(|e| refused(format!("the token file {}: {e}", self.token_file.display())))?;
        let work = async {
            let tcp = TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| {
                    transient(format!("connecting to {}:{}: {e}", self.host, self.port))
                })?;
            let _ = tcp.set_nodelay(true); // small request and response: no Nagle delay
            let tls = self
                .tls
                .connect(self.server_name.clone(), tcp)
                .await
                .map_err(|e| transient(format!("TLS: {e}")))?;
            let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .map_err(|e| transient(e.to_string()))?;
            tokio::spawn(connection);
            // Both names were checked as DNS names (no '/', '?', '%').
            let request = Request::builder()
                .method(Method::GET)
                .uri(format!("/api/v1/namespaces/{namespace}/pods/{pod}"))
                .header("host", &self.host)
                .header("accept", "application/json")
                .header("authorization", format!("Bearer {token}"))
                .header(
                    "user-agent",
                    concat!("appid-authority/", env!("CARGO_PKG_VERSION")),
                )
                .body(Empty::<Bytes>::new())
                .map_err(|e| refused(e.to_string()))?;
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| transient(e.to_string()))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_POD_BYTES)
                .collect()
                .await
                .map_err(|e| {
                    refused(format!(
                        "the answer is not read ({e}; at most {MAX_POD_BYTES} bytes)"
                    ))
                })?
                .to_bytes();
            match status {
                StatusCode::OK => Ok(body.to_vec()),
                StatusCode::NOT_FOUND => Err(refused(
                    "no such pod (404): deleted, or the token names a pod this cluster does not have"
                        .into(),
                )),
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(refused(format!(
                    "the API server refused the authority ({status}: {}); the authority's service account needs `get` on pods (see `appid authority manifests --k8s-pod-lookup`)",
                    status_message(&body)
                ))),
                s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => {
                    Err(transient(format!("{s}: {}", status_message(&body))))
                }
                s => Err(refused(format!("{s}: {}", status_message(&body)))),
            }
        };
        tokio::time::timeout(TIMEOUT, work)
            .await
            .map_err(|_| transient(format!("no answer within {}s", TIMEOUT.as_secs())))?
    }
}

/// `message` of a Kubernetes `Status` answer, or the start of the body.
fn status_message(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned())
}

impl PodSource for K8sApi {
    fn get(&self, namespace: &str, pod: &str) -> Result<Vec<u8>, PodLookupError> {
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => runtime.block_on(self.pod(namespace, pod)),
            Err(_) => Err(PodLookupError {
                transient: true,
                message: format!(
                    "looking up pod {namespace}/{pod}: no runtime to run the request on"
                ),
            }),
        }
    }
}
