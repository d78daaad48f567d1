//! The sidecar's side of the authority API: bootstrap, renewal, revocations.
//!
//! Design bias: *the key stays here, the authority is verified like a peer*.
//! The sidecar generates its key and sends only a CSR. It trusts the
//! authority only if the server presents a valid AppID certificate from the
//! configured bundle whose SPIFFE ID is `spiffe://<td>/appid/authority`.
//! Renewals authenticate with the current certificate over mTLS, so no
//! long-lived secret exists after the one-time join token.
//!
//! **Replicas.** The client may know several authority URLs (replicas over
//! one database), and each host name may resolve to several addresses.
//! A request goes to the replica that answered last; when it cannot be
//! reached, times out or answers 5xx, the same request goes to the next
//! address, then the next replica, each once, before the call fails
//! (transient: the caller retries with backoff). A refusal (4xx) is final
//! at once: replicas share one database, so another would say the same.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rcgen::{CertificateParams, KeyPair};
use rustls::SignatureScheme;
use rustls::sign::CertifiedKey;
use rustls_pki_types::ServerName;
use thiserror::Error;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::server::authority_id;
use super::service::{
    AttestRequest, BundleResponse, IssuedResponse, Proof, RenewRequest, RevocationList,
};
use crate::identity::ca::KeyAlg;
use crate::identity::verify::TrustBundle;
use crate::sidecar::tls::{self, PeerVerifier};

/// Self-reported facts, as sent (the claims' `reported` object).
pub type Reported = serde_json::Map<String, serde_json::Value>;

/// Largest response accepted from the authority.
const MAX_RESPONSE: usize = 1024 * 1024;
/// One attempt at one address, from connect to the last response byte.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Name lookup, and the TCP connect of one attempt: a dead replica whose
/// packets are dropped must not cost the whole request timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a call to the authority failed.
#[derive(Debug, Error)]
pub enum ClientError {
    #[error("authority URL `{0}`: expected https://HOST[:PORT]")]
    BadUrl(String),
    /// Worth retrying: the network or the authority is down.
    #[error("authority unreachable: {0}")]
    Unreachable(String),
    /// Not worth retrying as is: the authority said no.
    #[error("authority refused ({status}): {message}")]
    Refused { status: u16, message: String },
    #[error("authority answered nonsense: {0}")]
    BadResponse(String),
    #[error("generating the key or CSR: {0}")]
    Key(String),
}

impl ClientError {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Unreachable(_) | ClientError::BadResponse(_) => true,
            ClientError::Refused { status, .. } => *status >= 500,
            ClientError::BadUrl(_) | ClientError::Key(_) => false,
        }
    }
}

/// A new key and its CSR.
pub struct KeyAndCsr {
    pub key_pem: String,
    pub csr_pem: String,
}

/// Generates a P-256 key and a CSR for it.
pub fn new_key_and_csr() -> Result<KeyAndCsr, ClientError> {
    let key = KeyPair::generate_for(KeyAlg::EcdsaP256.signature_algorithm())
        .map_err(|e| ClientError::Key(e.to_string()))?;
    let csr = CertificateParams::default()
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .map_err(|e| ClientError::Key(e.to_string()))?;
    Ok(KeyAndCsr {
        key_pem: key.serialize_pem(),
        csr_pem: csr,
    })
}

/// One replica's address, as configured.
#[derive(Debug, Clone)]
struct Replica {
    host: String,
    port: u16,
}

impl Replica {
    fn parse(url: &str) -> Result<Replica, ClientError> {
        let uri: http::Uri = url.parse().map_err(|_| ClientError::BadUrl(url.into()))?;
        if uri.scheme_str() != Some("https") {
            return Err(ClientError::BadUrl(url.into()));
        }
        let host = uri
            .host()
            .ok_or_else(|| ClientError::BadUrl(url.into()))?
            .trim_matches(['[', ']'])
            .to_string();
        let port = uri.port_u16().unwrap_or(super::DEFAULT_PORT);
        Ok(Replica { host, port })
    }
}

/// A client for the authority (one or several replicas).
#[derive(Clone)]
pub struct AuthorityClient {
    replicas: Arc<[Replica]>,
    /// The replica that answered last: tried first.
    preferred: Arc<AtomicUsize>,
    /// Verifies the authority; follows the bundle it hands out (a CA
    /// rotation), shared by every clone.
    bundle: Arc<ArcSwap<TrustBundle>>,
    expected_id: String,
}

impl AuthorityClient {
    /// `url` is `https://host[:port]`; `bundle` verifies the authority.
    pub fn new(url: &str, bundle: TrustBundle) -> Result<Self, ClientError> {
        Self::with_replicas(&[url.to_owned()], bundle)
    }

    /// The same for several replicas, tried in turn (see the module doc).
    pub fn with_replicas(urls: &[String], bundle: TrustBundle) -> Result<Self, ClientError> {
        let replicas: Vec<Replica> = urls
            .iter()
            .map(|u| Replica::parse(u))
            .collect::<Result<_, _>>()?;
        if replicas.is_empty() {
            return Err(ClientError::BadUrl("no authority URL".into()));
        }
        let trust_domain = bundle
            .trust_domains()
            .first()
            .cloned()
            .ok_or_else(|| ClientError::BadUrl("no trust domain".into()))?;
        Ok(AuthorityClient {
            replicas: replicas.into(),
            preferred: Arc::new(AtomicUsize::new(0)),
            bundle: Arc::new(ArcSwap::from_pointee(bundle)),
            expected_id: authority_id(&trust_domain),
        })
    }

    /// First certificate, proven by `proof`; `reported` is what the
    /// sidecar says about its workload (the claims' `reported`).
    pub async fn attest(
        &self,
        csr_pem: &str,
        proof: Proof,
        reported: Option<Reported>,
    ) -> Result<IssuedResponse, ClientError> {
        let body = AttestRequest {
            csr: csr_pem.to_string(),
            proof,
            reported,
        };
        self.call(Method::POST, "/v1/attest", Some(&body), None)
            .await
    }

    /// A new certificate, authenticating with the current one; `reported`
    /// as for [`Self::attest`].
    pub async fn renew(
        &self,
        csr_pem: &str,
        current: Arc<CertifiedKey>,
        reported: Option<Reported>,
    ) -> Result<IssuedResponse, ClientError> {
        let body = RenewRequest {
            csr: csr_pem.to_string(),
            reported,
        };
        self.call(Method::POST, "/v1/renew", Some(&body), Some(current))
            .await
    }

    /// The trust bundle the authority hands out now (PEM): its CA, and
    /// during a rotation the prepared or the previous one.
    pub async fn bundle(&self) -> Result<BundleResponse, ClientError> {
        self.call::<(), _>(Method::GET, "/v1/bundle", None, None)
            .await
    }

    /// Verifies the authority with `bundle` from now on.
    pub fn set_bundle(&self, bundle: TrustBundle) {
        self.bundle.store(Arc::new(bundle));
    }

    /// The revoked SPIFFE IDs.
    pub async fn revocations(&self) -> Result<RevocationList, ClientError> {
        self.call::<(), _>(Method::GET, "/v1/revocations", None, None)
            .await
    }

    /// Sends the request to each replica's addresses in turn, starting
    /// with the one that answered last, until one answers (or refuses).
    async fn call<B: serde::Serialize, R: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        client_cert: Option<Arc<CertifiedKey>>,
    ) -> Result<R, ClientError> {
        let payload = match body {
            Some(body) => {
                serde_json::to_vec(body).map_err(|e| ClientError::BadResponse(e.to_string()))?
            }
            None => Vec::new(),
        };
        let first = self.preferred.load(Ordering::Relaxed) % self.replicas.len();
        let mut failures = Vec::new();
        for turn in 0..self.replicas.len() {
            let index = (first + turn) % self.replicas.len();
            let replica = &self.replicas[index];
            let addresses = match tokio::time::timeout(
                CONNECT_TIMEOUT,
                tokio::net::lookup_host((replica.host.as_str(), replica.port)),
            )
            .await
            {
                Ok(Ok(found)) => found.collect::<Vec<_>>(),
                Ok(Err(e)) => {
                    failures.push(format!("{}: {e}", replica.host));
                    continue;
                }
                Err(_) => {
                    failures.push(format!("{}: name lookup timed out", replica.host));
                    continue;
                }
            };
            for address in addresses {
                let attempt = self.call_at(
                    replica,
                    address,
                    method.clone(),
                    path,
                    payload.clone(),
                    client_cert.clone(),
                );
                match attempt.await {
                    Err(e) if e.is_transient() => {
                        failures.push(format!(
                            "{}:{} ({address}): {e}",
                            replica.host, replica.port
                        ));
                    }
                    result => {
                        if turn > 0 {
                            tracing::info!(replica = %replica.host, port = replica.port, "authority replica answered; using it from now on");
                        }
                        self.preferred.store(index, Ordering::Relaxed);
                        return result;
                    }
                }
            }
        }
        Err(ClientError::Unreachable(failures.join("; ")))
    }

    /// One attempt at one address of one replica.
    async fn call_at<R: serde::de::DeserializeOwned>(
        &self,
        replica: &Replica,
        address: std::net::SocketAddr,
        method: Method,
        path: &str,
        payload: Vec<u8>,
        client_cert: Option<Arc<CertifiedKey>>,
    ) -> Result<R, ClientError> {
        let work = async {
            let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address))
                .await
                .map_err(|_| ClientError::Unreachable("connect timed out".into()))?
                .map_err(|e| ClientError::Unreachable(e.to_string()))?;
            // Request and response are small writes: without this, Nagle
            // holds the request's last segment for the server's delayed
            // ACK (40 ms a request, measured by bench/issuance.rs).
            let _ = tcp.set_nodelay(true);
            let config = self.tls_config(client_cert);
            let server_name = ServerName::try_from(replica.host.clone())
                .unwrap_or_else(|_| tls::peer_server_name());
            let stream = TlsConnector::from(config)
                .connect(server_name, tcp)
                .await
                .map_err(|e| ClientError::Unreachable(format!("TLS: {e}")))?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| ClientError::Unreachable(e.to_string()))?;
            tokio::spawn(connection);
            let request = Request::builder()
                .method(method)
                .uri(path)
                .header("host", &replica.host)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(payload)))
                .map_err(|e| ClientError::BadResponse(e.to_string()))?;
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| ClientError::Unreachable(e.to_string()))?;
            let status = response.status().as_u16();
            let bytes = Limited::new(response.into_body(), MAX_RESPONSE)
                .collect()
                .await
                .map_err(|e| ClientError::BadResponse(e.to_string()))?
                .to_bytes();
            if status != 200 {
                let message = serde_json::from_slice::<serde_json::Value>(&bytes)
                    .ok()
                    .and_then(|v| v["error"].as_str().map(str::to_string))
                    .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
                return Err(ClientError::Refused { status, message });
            }
            serde_json::from_slice(&bytes).map_err(|e| ClientError::BadResponse(e.to_string()))
        };
        tokio::time::timeout(TIMEOUT, work)
            .await
            .map_err(|_| ClientError::Unreachable("timed out".into()))?
    }

    fn tls_config(&self, client_cert: Option<Arc<CertifiedKey>>) -> Arc<rustls::ClientConfig> {
        let provider = Arc::new(tls::provider());
        // The authority is verified like a peer, and must be the authority.
        let verifier = Arc::new(
            PeerVerifier::new(self.bundle.load_full(), &provider)
                .expecting(self.expected_id.clone()),
        );
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap_or_else(|_| unreachable!("aws-lc-rs supports TLS 1.3"))
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut config = match client_cert {
            Some(key) => builder.with_client_cert_resolver(Arc::new(FixedCert(key))),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        // Renewals must present the current certificate, never a resumed one.
        config.resumption = rustls::client::Resumption::disabled();
        Arc::new(config)
    }
}

/// Presents one fixed certificate (the current one, for renewal).
#[derive(Debug)]
struct FixedCert(Arc<CertifiedKey>);

impl rustls::client::ResolvesClientCert for FixedCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}
