//! `appid authority serve`: the authority's HTTPS API.
//!
//! Design bias: *TLS first, JSON second, nothing unbounded*. The API is
//! served over TLS 1.3 with an AppID certificate of the authority's own
//! (`spiffe://<td>/appid/authority`, issued by its CA at startup and renewed
//! in the background), so a sidecar verifies the authority exactly as it
//! verifies a peer. Client certificates are optional: bootstrap requests
//! have none and prove themselves in the body; renewals must present the
//! current, valid certificate, one this authority issued.
//!
//! | method, path | body | answer |
//! |---|---|---|
//! | `POST /v1/attest` | [`AttestRequest`] | [`IssuedResponse`] |
//! | `POST /v1/renew` (mTLS) | [`RenewRequest`] | [`IssuedResponse`] |
//! | `GET /v1/revocations` | | [`RevocationList`] |
//! | `GET /v1/bundle` | | [`BundleResponse`]: our CAs, federated roots |
//! | `GET /healthz` | | `ok` |

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use appid_policy::AppIdClaims;
use appid_policy::claims::attestation;

use super::service::{
    AttestRequest, Authority, BundleResponse, PresentedCert, Refusal, RenewRequest,
};
use crate::bounded_http::{self, Accepted, ServerLimits};
use crate::identity::ca::{CA_CERT_FILE, CA_KEY_FILE, Ca, CaError, KeyAlg};
use crate::identity::ca_rotation;
use crate::identity::spiffe::SpiffeId;
use crate::identity::verify::{PeerRole, TrustBundle};
use crate::sidecar::tls::{self, ClientAuth, LocalIdentity, TlsState};

/// Largest request body accepted.
const MAX_BODY: usize = 64 * 1024;
/// Time allowed for the TLS handshake, for a request head, and for a
/// request body once its head is in: a client that stalls in any of them
/// gives its connection back.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection is closed (gracefully, after the request under way) this
/// long after its handshake, however busy: no client holds one forever.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// Concurrent connections served.
const MAX_CONNECTIONS: usize = 1024;
/// Largest request head: a sidecar's are a few hundred bytes.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// The API's bounds. One source (an IPv4 address or an IPv6 /64) may hold
/// an eighth of the connections, so one client cannot take them all
/// (sidecars behind one NAT address still get 128 at once; each holds one
/// only for a renewal's round trips).
const LIMITS: ServerLimits = ServerLimits {
    header_read_timeout: READ_TIMEOUT,
    connection_lifetime: CONNECTION_LIFETIME,
    max_connections: MAX_CONNECTIONS,
    max_per_source: MAX_CONNECTIONS / 8,
    max_head_bytes: MAX_HEAD_BYTES,
    keep_alive: true,
};
/// The authority's own serving certificate lifetime; renewed at half.
const SERVING_TTL: time::Duration = time::Duration::hours(24);

/// The SPIFFE ID the authority's serving certificate carries.
pub fn authority_id(trust_domain: &str) -> String {
    format!("spiffe://{trust_domain}/appid/authority")
}

/// How often a replica looks at its CA directory for a rotation step.
pub const CA_WATCH: Duration = Duration::from_secs(1);

/// Serves until `stop` resolves. With `ca_dir`, follows CA rotation steps
/// made in that directory (by `appid authority ca rotate`, or a secret
/// updated under every replica) within [`CA_WATCH`].
pub async fn serve(
    authority: Arc<Authority>,
    listener: TcpListener,
    ca_dir: Option<std::path::PathBuf>,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), std::io::Error> {
    if let Some(dir) = &ca_dir {
        load_ca(&authority, dir).map_err(std::io::Error::other)?;
    }
    let tls_state = TlsState::new(serving_identity(&authority)?, bundle(&authority)?);
    let watcher =
        ca_dir.map(|dir| tokio::spawn(watch_ca(authority.clone(), tls_state.clone(), dir)));
    let acceptor = TlsAcceptor::from(tls::server_config_with(
        tls::provider_sha256_first(),
        tls_state.clone(),
        ClientAuth::Optional,
        vec![b"http/1.1".to_vec()],
    ));
    let renewer = tokio::spawn(renew_serving_cert(authority.clone(), tls_state.clone()));
    // Refusals counted rather than written (`event_log`) go out once their
    // second is over, not with the next event.
    let events = tokio::spawn({
        let authority = authority.clone();
        async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                authority.flush_events();
            }
        }
    });
    // Bounded as the health port and the admin API are, by the same code:
    // when full, an address holding a lot, else a connection idle long
    // enough, gives way to a newcomer (`bounded_http::held`), so silent
    // handshakes from a few addresses cannot keep sidecars from renewing.
    let handler_for = {
        let authority = authority.clone();
        move |accepted: Accepted<'_>| {
            // A presented client certificate was verified in the handshake;
            // read its claims and serial for renewals.
            let client = accepted
                .tls
                .and_then(|tls| tls.peer_certificates())
                .and_then(|chain| {
                    let peer = tls_state.trust.verify(chain, PeerRole::Client).ok()?;
                    PresentedCert::new(chain.first()?, peer.claims).map(Arc::new)
                });
            let authority = authority.clone();
            let peer = accepted.peer;
            move |request| route(authority.clone(), client.clone(), peer, request)
        }
    };
    bounded_http::serve_tls_per_connection(
        listener,
        acceptor,
        "authority API",
        LIMITS,
        handler_for,
        stop,
    )
    .await;
    renewer.abort();
    events.abort();
    authority.finish_events();
    if let Some(watcher) = watcher {
        watcher.abort();
    }
    Ok(())
}

/// Loads the signing CA and the trust bundle of `dir` into `authority`.
fn load_ca(authority: &Authority, dir: &std::path::Path) -> Result<(), CaError> {
    let ca = Ca::load(dir)?;
    let bundle_pem = ca_rotation::bundle_pem(dir)?;
    authority.set_ca(ca, bundle_pem);
    Ok(())
}

/// What the CA files look like (names, sizes, times), to notice a step.
fn ca_files_signature(dir: &std::path::Path) -> Vec<(String, u64, Option<std::time::SystemTime>)> {
    [
        CA_CERT_FILE,
        CA_KEY_FILE,
        ca_rotation::NEXT_CERT_FILE,
        ca_rotation::NEXT_KEY_FILE,
        ca_rotation::PREVIOUS_CERT_FILE,
    ]
    .iter()
    .filter_map(|name| {
        let meta = std::fs::metadata(dir.join(name)).ok()?;
        Some((name.to_string(), meta.len(), meta.modified().ok()))
    })
    .collect()
}

/// Follows rotation steps in `dir`: the signing CA, the bundle handed out
/// and trusted for renewals, and (after an activation) the authority's own
/// serving certificate, from the new CA.
async fn watch_ca(authority: Arc<Authority>, state: Arc<TlsState>, dir: std::path::PathBuf) {
    let mut seen = ca_files_signature(&dir);
    loop {
        tokio::time::sleep(CA_WATCH).await;
        let now = ca_files_signature(&dir);
        if now == seen {
            continue;
        }
        let signing = authority.ca().cert_der().clone();
        if let Err(e) = load_ca(&authority, &dir) {
            // Mid-step (files being renamed) or broken: keep what works,
            // look again next tick.
            tracing::warn!(error = %e, "the CA directory changed but does not load; keeping the current CA");
            continue;
        }
        seen = now;
        match bundle(&authority) {
            Ok(trust) => state.trust.bundle.store(Arc::new(trust)),
            Err(e) => tracing::error!(error = %e, "the new trust bundle does not load"),
        }
        let roots = authority.bundle_pem().matches("BEGIN CERTIFICATE").count();
        if authority.ca().cert_der() != &signing {
            match serving_identity(&authority) {
                Ok(identity) => state.identity.store(Arc::new(identity)),
                Err(e) => {
                    tracing::error!(error = %e, "re-issuing the authority's serving certificate")
                }
            }
            tracing::info!(roots, "signing with a new CA");
        } else {
            tracing::info!(roots, "trust bundle changed");
        }
    }
}

async fn route(
    authority: Arc<Authority>,
    client: Option<Arc<PresentedCert>>,
    peer: SocketAddr,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let now = authority.now();
    let result: Result<serde_json::Value, Refusal> = match (method, path.as_str()) {
        (Method::GET, "/healthz") => return text(StatusCode::OK, "ok\n"),
        (Method::GET, "/v1/revocations") => {
            // Ours, and those of federated domains whose authority we
            // follow (`revocations_url`).
            blocking(move || {
                authority.revocations().and_then(|mut list| {
                    list.revoked.extend(authority.federated().revoked());
                    to_json(&list)
                })
            })
            .await
        }
        (Method::GET, "/v1/bundle") => to_json(&BundleResponse {
            bundle: authority.bundle_pem().to_string(),
            federated: BTreeMap::clone(&authority.federated().pems()),
        }),
        (Method::POST, "/v1/attest") => match body::<AttestRequest>(request).await {
            Ok(body) => {
                blocking(move || authority.attest(&body, now).and_then(|r| to_json(&r))).await
            }
            Err(refusal) => Err(refusal),
        },
        (Method::POST, "/v1/renew") => {
            let Some(current) = client else {
                return json_error(&Refusal::Unauthenticated(
                    "renewal needs the current certificate as a TLS client certificate".into(),
                ));
            };
            match body::<RenewRequest>(request).await {
                Ok(body) => {
                    blocking(move || {
                        authority
                            .renew(&current, &body, now)
                            .and_then(|r| to_json(&r))
                    })
                    .await
                }
                Err(refusal) => Err(refusal),
            }
        }
        (_, "/healthz" | "/v1/revocations" | "/v1/bundle" | "/v1/attest" | "/v1/renew") => {
            return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        }
        _ => return text(StatusCode::NOT_FOUND, "not found\n"),
    };
    match result {
        Ok(value) => {
            let mut response = Response::new(Full::new(Bytes::from(value.to_string())));
            response.headers_mut().insert(
                "content-type",
                http::HeaderValue::from_static("application/json"),
            );
            response
        }
        Err(refusal) => {
            tracing::info!(%peer, %path, %refusal, "authority refused a request");
            json_error(&refusal)
        }
    }
}

async fn body<T: serde::de::DeserializeOwned>(request: Request<Incoming>) -> Result<T, Refusal> {
    // Refused before a byte of it is read when its length says so: a
    // client that waits for `100 Continue` then sends nothing (one that
    // does not may lose this answer to the reset that closing on its
    // unread body causes; a bigger body is no request of ours).
    let announced = request
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let too_large = || Refusal::TooLarge(format!("the body is over {MAX_BODY} bytes"));
    if announced.is_some_and(|length| length > MAX_BODY as u64) {
        return Err(too_large());
    }
    let collect = Limited::new(request.into_body(), MAX_BODY).collect();
    let collected = tokio::time::timeout(READ_TIMEOUT, collect)
        .await
        .map_err(|_| {
            Refusal::BadRequest(format!(
                "request body: not complete within {}s",
                READ_TIMEOUT.as_secs()
            ))
        })?
        .map_err(|e| {
            if e.is::<LengthLimitError>() {
                too_large()
            } else {
                Refusal::BadRequest(format!("request body: {e}"))
            }
        })?;
    serde_json::from_slice(&collected.to_bytes())
        .map_err(|e| Refusal::BadRequest(format!("request JSON: {e}")))
}

async fn blocking<F>(work: F) -> Result<serde_json::Value, Refusal>
where
    F: FnOnce() -> Result<serde_json::Value, Refusal> + Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(Refusal::Internal(format!("worker failed: {e}"))))
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<serde_json::Value, Refusal> {
    serde_json::to_value(value).map_err(|e| Refusal::Internal(e.to_string()))
}

fn json_error(refusal: &Refusal) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "error": refusal.to_string() }).to_string();
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() =
        StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    response
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
}

/// The trust bundle (every CA of a rotation), for verifying renewals.
fn bundle(authority: &Authority) -> std::io::Result<TrustBundle> {
    let pem = authority.bundle_pem();
    let roots =
        crate::identity::files::parse_certs(std::path::Path::new("trust bundle"), pem.as_bytes())
            .map_err(std::io::Error::other)?;
    TrustBundle::new(
        "authority CA",
        &roots,
        vec![authority.ca().trust_domain().to_string()],
    )
    .map_err(std::io::Error::other)
}

/// A fresh serving certificate for the authority itself.
pub(super) fn serving_identity(authority: &Authority) -> std::io::Result<LocalIdentity> {
    let ca = authority.ca();
    let id = SpiffeId::parse(&authority_id(ca.trust_domain())).map_err(std::io::Error::other)?;
    let claims = AppIdClaims::new(id.as_str(), attestation::MANUAL);
    let key = KeyAlg::EcdsaP256
        .generate()
        .map_err(std::io::Error::other)?;
    let issued = ca
        .issue(&id, &claims, &key, SERVING_TTL)
        .map_err(std::io::Error::other)?;
    LocalIdentity::from_pem(
        "authority serving certificate",
        issued.pem.as_bytes(),
        "authority serving key",
        key.serialize_pem().as_bytes(),
        &bundle(authority)?,
    )
    .map_err(std::io::Error::other)
}

async fn renew_serving_cert(authority: Arc<Authority>, state: Arc<TlsState>) {
    loop {
        tokio::time::sleep(Duration::from_secs(
            (SERVING_TTL.whole_seconds() / 2) as u64,
        ))
        .await;
        match serving_identity(&authority) {
            Ok(identity) => state.identity.store(Arc::new(identity)),
            Err(e) => tracing::error!(error = %e, "renewing the authority's serving certificate"),
        }
    }
}
