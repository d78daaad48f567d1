//! Runs one app probe, as kubelet would have: `httpGet` answers with the
//! app's status code (kubelet counts 200–399 as success) and at most
//! [`MAX_BODY_BYTES`] of its body; `tcpSocket` answers 200 when the
//! connection opens, 503 when it does not. A probe that takes longer than
//! its `timeoutSeconds`, or that cannot reach the app, is a 503 with one
//! line saying why. Nothing of the app's response but its status and the
//! start of its body is passed on (no `Location`, no cookies).
//!
//! HTTPS probes do not verify the app's certificate, exactly as kubelet
//! does not (`InsecureSkipVerify`): the app's certificate is issued for its
//! service name, not for the loopback address the probe dials, and often by
//! a CA the sidecar does not know; what a probe learns is "the app answers
//! and says it is healthy", which needs no authentication of the app. The
//! TLS handshake's signature is still checked against the certificate the
//! app sent, so a probe never "succeeds" through a broken handshake.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::header::{ACCEPT, CONNECTION, HOST, USER_AGENT};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::probes::{AppProbe, HttpGet, ProbeAction};

/// At most this much of the app's response body is passed on (kubelet
/// reads no more either).
pub const MAX_BODY_BYTES: usize = 10 * 1024;

/// `User-Agent` of a probe, unless kubelet's own is passed on or
/// `httpHeaders` sets one.
pub const USER_AGENT_DEFAULT: &str = concat!("kube-probe/appid-", env!("CARGO_PKG_VERSION"));

/// What the health port answers for one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Outcome {
    fn failed(line: String) -> Outcome {
        Outcome {
            status: StatusCode::SERVICE_UNAVAILABLE,
            body: Bytes::from(line + "\n"),
        }
    }
}

/// Runs probes; holds the TLS client configuration HTTPS probes share.
#[derive(Clone)]
pub struct Prober {
    tls: TlsConnector,
}

impl Default for Prober {
    fn default() -> Self {
        Prober::new()
    }
}

impl Prober {
    pub fn new() -> Prober {
        Prober {
            tls: TlsConnector::from(Arc::new(insecure_client_config())),
        }
    }

    /// Runs `probe` within its timeout. `user_agent` is kubelet's, passed
    /// on when the request came from kubelet.
    pub async fn run(&self, probe: &AppProbe, user_agent: Option<&HeaderValue>) -> Outcome {
        let what = probe.action.describe();
        let work = async {
            match &probe.action {
                ProbeAction::Tcp { target } => TcpStream::connect(target)
                    .await
                    .map(|_| Outcome {
                        status: StatusCode::OK,
                        body: Bytes::from(format!("{what}: connected\n")),
                    })
                    .map_err(|e| e.to_string()),
                ProbeAction::Http(get) => self.http_get(get, user_agent).await,
            }
        };
        match tokio::time::timeout(probe.timeout, work).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(reason)) => Outcome::failed(format!("probe failed: {what}: {reason}")),
            Err(_) => Outcome::failed(format!(
                "probe timed out after {}: {what}",
                humantime::format_duration(probe.timeout)
            )),
        }
    }

    async fn http_get(
        &self,
        get: &HttpGet,
        user_agent: Option<&HeaderValue>,
    ) -> Result<Outcome, String> {
        let tcp = TcpStream::connect(get.target)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let request = request(get, user_agent)?;
        if !get.tls {
            return exchange(tcp, request).await;
        }
        let name = ServerName::IpAddress(get.target.ip().into());
        let tls = self
            .tls
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
        exchange(tls, request).await
    }
}

/// The probe's request: kubelet's default headers, then `httpHeaders` (a
/// name given there replaces the default).
fn request(
    get: &HttpGet,
    user_agent: Option<&HeaderValue>,
) -> Result<Request<Empty<Bytes>>, String> {
    let mut request = Request::builder()
        .method(Method::GET)
        .uri(get.path.as_str())
        .body(Empty::new())
        .map_err(|e| format!("bad request path: {e}"))?;
    let headers = request.headers_mut();
    let host = host_header(get.target);
    headers.insert(HOST, host);
    let kubelet = user_agent.filter(|ua| ua.as_bytes().starts_with(b"kube-probe/"));
    headers.insert(
        USER_AGENT,
        kubelet
            .cloned()
            .unwrap_or(HeaderValue::from_static(USER_AGENT_DEFAULT)),
    );
    headers.insert(ACCEPT, HeaderValue::from_static("*/*"));
    headers.insert(CONNECTION, HeaderValue::from_static("close"));
    let mut given = HeaderMap::new();
    for (name, value) in &get.headers {
        given.append(name.clone(), value.clone());
    }
    for name in given.keys() {
        headers.remove(name);
    }
    for (name, value) in &get.headers {
        headers.append(name.clone(), value.clone());
    }
    Ok(request)
}

fn host_header(target: SocketAddr) -> HeaderValue {
    // An IP and a port are always a valid header value.
    HeaderValue::from_str(&target.to_string()).unwrap_or(HeaderValue::from_static("localhost"))
}

/// One request on a fresh connection; the status and the start of the body.
async fn exchange<S>(io: S, request: Request<Empty<Bytes>>) -> Result<Outcome, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    let response = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        let status = response.status();
        let body = read_at_most(response.into_body(), MAX_BODY_BYTES).await?;
        Ok(Outcome { status, body })
    };
    tokio::pin!(conn, response);
    tokio::select! {
        r = &mut response => r,
        // The connection ended: what it delivered is with the response.
        _ = &mut conn => response.await,
    }
}

/// The body up to `limit` bytes; the rest is not read.
async fn read_at_most(mut body: hyper::body::Incoming, limit: usize) -> Result<Bytes, String> {
    let mut out = BytesMut::new();
    while out.len() < limit {
        match body.frame().await {
            None => break,
            Some(Err(e)) => return Err(format!("reading the body: {e}")),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    let room = limit - out.len();
                    out.extend_from_slice(&data[..data.len().min(room)]);
                }
            }
        }
    }
    Ok(out.freeze())
}

/// TLS 1.2 and 1.3, HTTP/1.1, any server certificate (see the module
/// docs for why).
fn insecure_client_config() -> rustls::ClientConfig {
    let provider = Arc::new(crate::sidecar::tls::provider());
    let verifier = Arc::new(AnyServerCert {
        algorithms: provider.signature_verification_algorithms,
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .unwrap_or_else(|_| unreachable!("aws-lc-rs supports TLS 1.2 and 1.3"))
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

/// Accepts any certificate the app presents, as kubelet does for HTTPS
/// probes; checks only that the handshake was signed by its key.
#[derive(Debug)]
struct AnyServerCert {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
