//! What the authority does, independent of HTTP: attest, derive the claims,
//! issue from a CSR, record it, write the audit line.
//!
//! Design bias: *vouch only for what was checked, re-derive every time*. The
//! claims of every certificate — first issuance or renewal — are rebuilt
//! from the registration, the newest scan for the registered image digest
//! and the verified cloud facts; what the workload says about itself goes
//! under `reported`, never elsewhere. So importing a scan with criticals
//! changes the very next certificate, and a revoked workload gets nothing.
//!
//! With a pod lookup configured (`serve --k8s-api`), a Kubernetes
//! attestation also reads the token's pod from the API server and vouches
//! for what it says under `k8s.*` ([`crate::attest::k8s_pod`]); so does
//! every renewal of a certificate that names its pod's uid, so a deleted
//! pod's certificate is not renewed and labels and images stay current.
//!
//! Renewal is authenticated by the current certificate over mTLS, which
//! must be one this authority issued and recorded (its serial is in the
//! database), not merely one its CA signed: a certificate made offline with
//! `appid issue` cannot be turned into an authority-vouched one.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::path::Path;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use rcgen::CertificateSigningRequestParams;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use appid_policy::AppIdClaims;
use appid_policy::claims::{Cloud, Image, K8s, attestation};

use super::federation::FederatedBundles;
use super::reported::{self, Fit};
use super::store::{
    Redemption, Registration, Store, StoreError, StorePool, Tx, registrations_matching_cloud,
};
use crate::attest::K8sIdentity;
use crate::attest::k8s_pod::{self, AppImage, PodFacts, PodRef};
use crate::identity::ca::Ca;
use crate::identity::spiffe::SpiffeId;

/// How a workload proves who it is on first contact.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "method")]
pub enum Proof {
    /// A one-time join token from `appid authority register`.
    JoinToken { token: String },
    /// An AWS instance identity document and one of its signatures.
    AwsIid {
        document: String,
        /// `signature` (RSA-SHA256), `rsa2048` or `pkcs7`.
        kind: String,
        signature: String,
        region: String,
    },
    /// A GCP instance identity token (JWT).
    GcpIit { token: String },
    /// A Kubernetes projected service-account token (JWT), read by the
    /// sidecar from its `serviceAccountToken` volume.
    K8sPsat { token: String },
}

impl Proof {
    /// The attestation method this proof stands for.
    pub fn method(&self) -> &'static str {
        match self {
            Proof::JoinToken { .. } => attestation::JOIN_TOKEN,
            Proof::AwsIid { .. } => attestation::AWS_IID,
            Proof::GcpIit { .. } => attestation::GCP_IIT,
            Proof::K8sPsat { .. } => attestation::K8S_PSAT,
        }
    }
}

/// A request for a first certificate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttestRequest {
    /// PEM CSR; the workload's key never leaves it.
    pub csr: String,
    pub proof: Proof,
    /// Self-reported facts; they land under `reported` in the claims.
    #[serde(default)]
    pub reported: Option<serde_json::Map<String, serde_json::Value>>,
}

/// A request to renew, made over mTLS with the current certificate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RenewRequest {
    pub csr: String,
    #[serde(default)]
    pub reported: Option<serde_json::Map<String, serde_json::Value>>,
}

/// The certificate a renewal is authenticated with: verified over mTLS
/// (chain, validity, AppID extension) before the service sees it.
#[derive(Debug, Clone)]
pub struct PresentedCert {
    pub claims: AppIdClaims,
    /// Serial number, lowercase hex, as recorded at issuance.
    pub serial: String,
    /// When it expires, seconds since the epoch: a connection verified it
    /// once, at its handshake, and may be kept past then.
    pub not_after: i64,
}

impl PresentedCert {
    /// Reads the serial of a verified certificate `der` with `claims`.
    pub fn new(der: &[u8], claims: AppIdClaims) -> Option<PresentedCert> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        Some(PresentedCert {
            claims,
            serial: hex::encode(cert.raw_serial()),
            not_after: cert.validity().not_after.timestamp(),
        })
    }
}

/// A certificate, as returned to the sidecar.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IssuedResponse {
    pub id: String,
    /// The leaf, PEM.
    pub certificate: String,
    /// The trust bundle, PEM.
    pub bundle: String,
    /// Seconds since the epoch.
    pub not_after: i64,
}

/// The trust bundle sidecars verify peers with (`GET /v1/bundle`): every
/// CA of a rotation under way, PEM; and the roots of each federated trust
/// domain, trusted for that domain only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleResponse {
    pub bundle: String,
    /// Trust domain → its authority's roots (PEM), from its bundle endpoint.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub federated: BTreeMap<String, String>,
}

/// The revocation list.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevocationList {
    pub revoked: Vec<String>,
}

/// Why a request was refused; the HTTP layer maps it to a status.
#[derive(Debug, Error)]
pub enum Refusal {
    #[error("bad request: {0}")]
    BadRequest(String),
    /// A request body over the authority's limit (413).
    #[error("request too large: {0}")]
    TooLarge(String),
    #[error("attestation refused: {0}")]
    Unauthenticated(String),
    #[error("{0} is revoked")]
    Revoked(String),
    #[error("{0} is not registered")]
    NotRegistered(String),
    /// The workload is not registered for the way it attested.
    #[error("{id}: {reason}")]
    NotAllowed { id: String, reason: String },
    /// Something the authority depends on (the Kubernetes API) is down:
    /// worth retrying.
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl Refusal {
    pub fn status(&self) -> u16 {
        match self {
            Refusal::BadRequest(_) => 400,
            Refusal::TooLarge(_) => 413,
            Refusal::Unauthenticated(_) => 401,
            Refusal::Revoked(_) | Refusal::NotRegistered(_) | Refusal::NotAllowed { .. } => 403,
            Refusal::Internal(_) => 500,
            Refusal::Unavailable(_) => 503,
        }
    }

    pub(super) fn short(&self) -> &'static str {
        match self {
            Refusal::BadRequest(_) => "bad_request",
            Refusal::TooLarge(_) => "too_large",
            Refusal::Unauthenticated(_) => "unauthenticated",
            Refusal::Revoked(_) => "revoked",
            Refusal::NotRegistered(_) | Refusal::NotAllowed { .. } => "not_registered",
            Refusal::Internal(_) => "internal",
            Refusal::Unavailable(_) => "unavailable",
        }
    }
}

impl From<StoreError> for Refusal {
    /// A database that is down or too busy is worth retrying (503);
    /// anything else is the authority's fault (500).
    fn from(error: StoreError) -> Self {
        if error.is_transient() {
            Refusal::Unavailable(error.to_string())
        } else {
            Refusal::Internal(error.to_string())
        }
    }
}

/// Verifies cloud documents and cluster tokens; provided by the
/// attestation module.
pub trait CloudVerifier: Send + Sync {
    /// Verified cloud facts (`provider`, `account`/`project`, `region`,
    /// `zone`, `instance`, ...) and their claims form, or why not.
    fn verify(&self, proof: &Proof, now: i64) -> Result<Cloud, String>;

    /// The verified facts of a Kubernetes projected service-account token,
    /// or why not.
    fn verify_k8s(&self, token: &str, now: i64) -> Result<K8sIdentity, String> {
        let _ = (token, now);
        Err(K8S_NOT_CONFIGURED.into())
    }
}

/// Why a PSAT is refused by an authority without a cluster configured.
pub const K8S_NOT_CONFIGURED: &str = "Kubernetes attestation is not configured on this authority \
     (serve --k8s-jwks FILE --k8s-issuer URL --k8s-audience AUD)";

/// The `cloud_match` marker of a registration that Kubernetes pods of its
/// service account may attest to (`register --k8s-namespace --k8s-service-account`).
pub const K8S_PROVIDER: &str = "kubernetes";

/// Why the API server did not give the pod.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{message}")]
pub struct PodLookupError {
    /// The API server is unreachable or failing (5xx, timeout): worth
    /// retrying. Otherwise it answered, and the answer is a refusal.
    pub transient: bool,
    /// What went wrong, naming the pod.
    pub message: String,
}

/// Reads a pod object from the Kubernetes API (`GET
/// /api/v1/namespaces/<ns>/pods/<name>`): its JSON, at most
/// [`k8s_pod::MAX_POD_BYTES`].
pub trait PodSource: Send + Sync {
    fn get(&self, namespace: &str, pod: &str) -> Result<Vec<u8>, PodLookupError>;
}

/// The pod lookup of `serve --k8s-api`.
pub struct PodLookup {
    pub source: Box<dyn PodSource>,
    /// The pod label keys vouched for as `k8s.labels.*`.
    pub trust_labels: Vec<String>,
    /// How appid's own containers are told from the app's
    /// (`--k8s-appid-digests`).
    pub appid: k8s_pod::AppidContainers,
}

/// What the proof was verified into, before the database is touched.
enum Verified {
    /// A join token: checked against the database only.
    Nothing,
    Cloud(Cloud),
    /// The token's facts, and the pod's when the lookup is configured.
    K8s(K8sIdentity, Option<PodFacts>),
}

/// How long a replica answers revocation polls from its last read of the
/// database. Every sidecar polls every 2 s; without this, each poll would
/// be a serializable transaction on one of the replica's connections. A
/// revocation made through any replica (or the CLI) reaches every sidecar
/// within this plus the sidecars' poll interval. Issuance never uses it:
/// whether an identity is revoked is read in the issuing transaction.
pub const REVOCATIONS_CACHE: std::time::Duration = std::time::Duration::from_secs(1);

/// The authority: CA, store, settings.
pub struct Authority {
    /// The signing CA; swapped when a rotation step lands
    /// ([`crate::identity::ca_rotation`]).
    ca: ArcSwap<Ca>,
    /// The trust bundle as PEM: the signing CA, and during a rotation the
    /// prepared or the previous one too.
    bundle_pem: ArcSwap<String>,
    /// The database connections: one per transaction in flight
    /// ([`StorePool`]).
    store: StorePool,
    /// The revocation list as last read, and when ([`REVOCATIONS_CACHE`]).
    revocations: Mutex<Option<(std::time::Instant, RevocationList)>>,
    cert_ttl: time::Duration,
    events: super::event_log::EventLog,
    cloud: Option<Box<dyn CloudVerifier>>,
    pods: Option<PodLookup>,
    /// A fixed "now" (seconds since the epoch), for testing expired documents.
    clock: Option<i64>,
    /// Other trust domains' roots, as last fetched ([`super::federation`]).
    federated: Arc<FederatedBundles>,
}

impl Authority {
    pub fn new(
        ca: Ca,
        store: Store,
        cert_ttl: time::Duration,
        audit_log: Option<&Path>,
        cloud: Option<Box<dyn CloudVerifier>>,
    ) -> std::io::Result<Authority> {
        let events = match audit_log {
            Some(path) => Some(OpenOptions::new().create(true).append(true).open(path)?),
            None => None,
        };
        let bundle_pem = ca.cert_pem().to_owned();
        Ok(Authority {
            ca: ArcSwap::from_pointee(ca),
            bundle_pem: ArcSwap::from_pointee(bundle_pem),
            store: StorePool::new(store),
            revocations: Mutex::new(None),
            cert_ttl,
            events: super::event_log::EventLog::new(events),
            cloud,
            pods: None,
            clock: None,
            federated: Arc::default(),
        })
    }

    /// The federated bundles this authority hands out with its own.
    pub fn federated(&self) -> &Arc<FederatedBundles> {
        &self.federated
    }

    /// Fixes the authority's clock (tests of expired documents).
    pub fn with_clock(mut self, now: Option<i64>) -> Self {
        self.clock = now;
        self
    }

    /// Looks up the pod of every Kubernetes attestation (and renewal).
    pub fn with_pod_lookup(mut self, pods: Option<PodLookup>) -> Self {
        self.pods = pods;
        self
    }

    /// The pod's facts from the API server, when the lookup is configured.
    /// Any failure refuses (fail closed): 503 when the API server is
    /// unreachable or failing, 401 when it does not back the token.
    fn look_up_pod(&self, pod: &PodRef<'_>) -> Result<Option<PodFacts>, Refusal> {
        let Some(lookup) = &self.pods else {
            return Ok(None);
        };
        let body = lookup
            .source
            .get(pod.namespace, pod.pod)
            .map_err(|e| match e.transient {
                true => Refusal::Unavailable(e.message),
                false => Refusal::Unauthenticated(e.message),
            })?;
        k8s_pod::check_pod(&body, pod, &lookup.trust_labels, &lookup.appid)
            .map(Some)
            .map_err(|e| Refusal::Unauthenticated(e.to_string()))
    }

    /// The authority's notion of now, seconds since the epoch.
    pub fn now(&self) -> i64 {
        self.clock
            .unwrap_or_else(|| time::OffsetDateTime::now_utc().unix_timestamp())
    }

    /// The signing CA now.
    pub fn ca(&self) -> Arc<Ca> {
        self.ca.load_full()
    }

    /// The trust bundle now (PEM).
    pub fn bundle_pem(&self) -> Arc<String> {
        self.bundle_pem.load_full()
    }

    /// A rotation step landed: sign with `ca` from now on, and hand out
    /// `bundle_pem`.
    pub fn set_ca(&self, ca: Ca, bundle_pem: String) {
        self.ca.store(Arc::new(ca));
        self.bundle_pem.store(Arc::new(bundle_pem));
    }

    /// First issuance: check the proof, then issue.
    pub fn attest(&self, request: &AttestRequest, now: i64) -> Result<IssuedResponse, Refusal> {
        let method = request.proof.method();
        let result = self.attest_inner(request, now);
        match &result {
            Ok(issued) => self.event("issue", Some(&issued.id), method, None),
            Err(refusal) => self.event("refuse", None, method, Some(refusal)),
        }
        result
    }

    /// Checks the proof and issues, atomically: the token redemption (or
    /// the instance's first-use record) and the issued certificate's record
    /// commit together, so a crash or a refusal in between consumes nothing.
    fn attest_inner(&self, request: &AttestRequest, now: i64) -> Result<IssuedResponse, Refusal> {
        check_reported(request.reported.as_ref())?;
        let csr = parse_csr(&request.csr)?;
        // Cloud documents and cluster tokens are verified before taking the
        // database lock.
        let verified = match &request.proof {
            Proof::JoinToken { .. } => Verified::Nothing,
            Proof::K8sPsat { token } => {
                let verifier = self
                    .cloud
                    .as_ref()
                    .ok_or_else(|| Refusal::Unauthenticated(K8S_NOT_CONFIGURED.into()))?;
                let identity = verifier
                    .verify_k8s(token, now)
                    .map_err(Refusal::Unauthenticated)?;
                let pod = self.look_up_pod(&identity.pod_ref())?;
                Verified::K8s(identity, pod)
            }
            cloud_proof => {
                let verifier = self.cloud.as_ref().ok_or_else(|| {
                    Refusal::Unauthenticated(
                        "cloud attestation is not configured on this authority".into(),
                    )
                })?;
                Verified::Cloud(
                    verifier
                        .verify(cloud_proof, now)
                        .map_err(Refusal::Unauthenticated)?,
                )
            }
        };

        // One transaction: on PostgreSQL it may run more than once (a
        // serialization failure), so nothing in it acts outside the
        // database; the audit line is written after the commit.
        self.store
            .transaction(|tx| self.attest_steps(tx, request, &csr, &verified, now))
    }

    /// The database part of [`Self::attest_inner`]: redeem the proof, find
    /// the registration, issue and record.
    fn attest_steps(
        &self,
        tx: &mut dyn Tx,
        request: &AttestRequest,
        csr: &CertificateSigningRequestParams,
        verified: &Verified,
        now: i64,
    ) -> Result<IssuedResponse, Refusal> {
        let (mut k8s, mut app_image) = (None, None);
        let (registration, cloud, method) = match (&request.proof, verified) {
            (Proof::JoinToken { token }, _) => {
                let id = match tx.redeem_token(&hash_token(token), now)? {
                    Redemption::Redeemed { id } => id,
                    Redemption::Unknown => {
                        return Err(Refusal::Unauthenticated("unknown join token".into()));
                    }
                    Redemption::AlreadyUsed => {
                        return Err(Refusal::Unauthenticated(
                            "join token already used (tokens are one-time)".into(),
                        ));
                    }
                    Redemption::Expired => {
                        return Err(Refusal::Unauthenticated("join token expired".into()));
                    }
                };
                let registration = tx
                    .registration(&id)?
                    .ok_or_else(|| Refusal::NotRegistered(id.clone()))?;
                (registration, None, attestation::JOIN_TOKEN)
            }
            (_, Verified::K8s(identity, pod)) => {
                let registration = self.k8s_registration(tx, identity, now)?;
                let (claims, image) = vouch_pod(
                    &registration,
                    &identity.pod_ref(),
                    identity.to_k8s_claims(),
                    pod.clone(),
                )?;
                (k8s, app_image) = (Some(claims), image);
                (registration, None, attestation::K8S_PSAT)
            }
            (cloud_proof, Verified::Cloud(cloud)) => {
                let facts = cloud_facts(cloud);
                let matching = registrations_matching_cloud(tx, &facts)?;
                let registration = match matching.as_slice() {
                    [one] => one.clone(),
                    [] => {
                        return Err(Refusal::NotRegistered(format!(
                            "no registration matches the attested cloud facts {facts:?}"
                        )));
                    }
                    many => {
                        return Err(Refusal::BadRequest(format!(
                            "{} registrations match these cloud facts; make them specific",
                            many.len()
                        )));
                    }
                };
                let method = match cloud_proof {
                    Proof::GcpIit { .. } => attestation::GCP_IIT,
                    _ => attestation::AWS_IID,
                };
                let instance = format!(
                    "{}/{}/{}",
                    cloud.provider.as_deref().unwrap_or("?"),
                    cloud
                        .account
                        .as_deref()
                        .or(cloud.project.as_deref())
                        .unwrap_or("?"),
                    cloud.instance.as_deref().unwrap_or("?")
                );
                if !tx.claim_instance(&instance, &registration.id, now)? {
                    return Err(Refusal::Unauthenticated(format!(
                        "instance {instance} already attested once; it renews with its certificate (a replayed document?)"
                    )));
                }
                (registration, Some(cloud.clone()), method)
            }
            (_, Verified::Nothing) => {
                return Err(Refusal::Internal("cloud proof without verification".into()));
            }
        };
        self.issue(
            tx,
            Issuance {
                registration: &registration,
                csr,
                method,
                cloud,
                k8s,
                app_image,
                reported: request.reported.clone(),
            },
            now,
        )
    }

    /// The registration a verified service-account token attests to, with
    /// the token recorded as redeemed (in the caller's transaction).
    ///
    /// The SPIFFE ID is derived from the token, never chosen by the pod:
    /// `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`, and it
    /// must be registered for Kubernetes attestation. Unlike a cloud
    /// instance, a service account attests many times (every replica, every
    /// restart, each with a fresh token), so what is remembered is the
    /// token: the same token is never redeemed twice.
    fn k8s_registration(
        &self,
        tx: &mut dyn Tx,
        identity: &K8sIdentity,
        now: i64,
    ) -> Result<Registration, Refusal> {
        let id = format!(
            "spiffe://{}/{}",
            self.ca.load().trust_domain(),
            identity.spiffe_path()
        );
        let register = format!(
            "appid authority register --k8s-namespace {} --k8s-service-account {}",
            identity.namespace, identity.service_account
        );
        let registration = tx.registration(&id)?.ok_or_else(|| Refusal::NotAllowed {
            id: id.clone(),
            reason: format!(
                "service account {}/{} is not registered; register it with `{register}`",
                identity.namespace, identity.service_account
            ),
        })?;
        if registration.cloud_match.get("provider").map(String::as_str) != Some(K8S_PROVIDER) {
            return Err(Refusal::NotAllowed {
                id,
                reason: format!(
                    "registered, but not for Kubernetes attestation (join token or cloud document only); \
                     re-register it with `{register}`"
                ),
            });
        }
        let expires_at = identity
            .expires_at
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        if !tx.redeem_k8s_token(&identity.token_id(), &id, expires_at, now)? {
            return Err(Refusal::Unauthenticated(format!(
                "this service-account token ({}) was already redeemed; a token attests once \
                 (the kubelet refreshes it; a replayed token?)",
                identity.token_id()
            )));
        }
        Ok(registration)
    }

    /// Renewal for a peer that proved its identity with a valid certificate
    /// over mTLS, one this authority issued. The claims are re-derived; the
    /// old attestation method is kept.
    pub fn renew(
        &self,
        presented: &PresentedCert,
        request: &RenewRequest,
        now: i64,
    ) -> Result<IssuedResponse, Refusal> {
        let current = &presented.claims;
        let result = (|| {
            // The handshake checked the certificate when the connection
            // opened; a request on it after the certificate's end is no
            // renewal (the sidecar bootstraps again).
            if presented.not_after < now {
                return Err(Refusal::Unauthenticated(format!(
                    "the certificate expired at {} (seconds since the epoch) before this request; \
                     bootstrap with a join token or attestation",
                    presented.not_after
                )));
            }
            check_reported(request.reported.as_ref())?;
            let csr = parse_csr(&request.csr)?;
            // A pod-attested certificate that names its pod is renewed only
            // while the API server still has that pod (looked up before the
            // database lock). Certificates from before the lookup (no
            // `k8s.pod_uid`) keep their claims.
            let pod = match (&current.k8s, current.attestation.as_str()) {
                (Some(k8s), attestation::K8S_PSAT) => pod_ref_of(k8s)
                    .map(|pod| Ok::<_, Refusal>((pod, self.look_up_pod(&pod)?)))
                    .transpose()?,
                _ => None,
            };
            self.store.transaction(|tx| {
                if !tx.was_issued(&presented.serial)? {
                    return Err(Refusal::Unauthenticated(format!(
                        "certificate serial {} was not issued by this authority (made offline, or before its database was replaced); bootstrap with a join token",
                        presented.serial
                    )));
                }
                let registration = tx
                    .registration(&current.id)?
                    .ok_or_else(|| Refusal::NotRegistered(current.id.clone()))?;
                // A cloud instance's certificate renews only while its
                // registration still takes that instance: an edited
                // `--cloud-match` (another account, a token instead) ends
                // the identities it no longer covers at their next renewal.
                if matches!(
                    current.attestation.as_str(),
                    attestation::AWS_IID | attestation::GCP_IIT
                ) {
                    let cloud = current.cloud.as_ref().map(cloud_facts).unwrap_or_default();
                    if !registration.takes_cloud_instance(&cloud) {
                        return Err(Refusal::NotAllowed {
                            id: current.id.clone(),
                            reason: format!(
                                "its registration no longer takes this instance (cloud facts \
                                 {cloud:?}); the instance must attest again with its document"
                            ),
                        });
                    }
                }
                let (k8s, app_image) = match &pod {
                    Some((pod, facts)) => {
                        let (claims, image) = vouch_pod(
                            &registration,
                            pod,
                            token_facts(current.k8s.as_ref()),
                            facts.clone(),
                        )?;
                        (Some(claims), image)
                    }
                    None => (current.k8s.clone(), None),
                };
                self.issue(
                    tx,
                    Issuance {
                        registration: &registration,
                        csr: &csr,
                        method: &current.attestation,
                        cloud: current.cloud.clone(),
                        k8s,
                        app_image,
                        reported: request.reported.clone(),
                    },
                    now,
                )
            })
        })();
        match &result {
            Ok(issued) => self.event("renew", Some(&issued.id), &current.attestation, None),
            Err(refusal) => self.event("refuse", Some(&current.id), "renewal", Some(refusal)),
        }
        result
    }

    /// The revoked SPIFFE IDs, as read at most [`REVOCATIONS_CACHE`] ago.
    pub fn revocations(&self) -> Result<RevocationList, Refusal> {
        let mut cached = self
            .revocations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((read_at, list)) = cached.as_ref()
            && read_at.elapsed() < REVOCATIONS_CACHE
        {
            return Ok(list.clone());
        }
        let list = RevocationList {
            revoked: self.store.transaction(|tx| tx.revoked())?,
        };
        *cached = Some((std::time::Instant::now(), list.clone()));
        Ok(list)
    }

    fn issue(
        &self,
        tx: &mut dyn Tx,
        what: Issuance<'_>,
        now: i64,
    ) -> Result<IssuedResponse, Refusal> {
        let Issuance {
            registration,
            csr,
            method,
            cloud,
            k8s,
            app_image,
            reported,
        } = what;
        if tx.is_revoked(&registration.id)? {
            return Err(Refusal::Revoked(registration.id.clone()));
        }
        let id = SpiffeId::parse(&registration.id)
            .map_err(|e| Refusal::Internal(format!("stored registration: {e}")))?;
        let mut claims = AppIdClaims::new(id.as_str(), method);
        claims.labels = registration.labels.clone();
        // The registered digest; else, for a pod, the one image its app
        // containers run as the API server reported it. Its scan vouches for
        // the workload only when nothing else runs as its app: a pod that
        // runs the pinned image beside another gets `image.digest` (it runs
        // it) and no `vulns` (no one scan describes it).
        let (digest, scan_describes_it) = match (&registration.image_digest, &app_image) {
            (Some(pinned), None) => (Some(pinned), true),
            (Some(pinned), Some(image)) => (
                Some(pinned),
                matches!(image, AppImage::One(running) if running == pinned),
            ),
            (None, Some(AppImage::One(running))) => (Some(running), true),
            (None, _) => (None, false),
        };
        if let Some(digest) = digest {
            claims.image = Some(Image {
                digest: Some(digest.clone()),
                name: None,
            });
            if scan_describes_it && let Some(scan) = tx.latest_scan(digest)? {
                claims.vulns = Some(scan.vulns);
            }
        }
        claims.cloud = cloud;
        claims.k8s = k8s;
        // Self-reported facts go under `reported` and nowhere else; what
        // does not fit the extension is cut, never a reason to refuse.
        claims.reported = reported.filter(|r| !r.is_empty());
        match reported::fit(&mut claims) {
            Fit::Whole => {}
            fit => tracing::info!(id = %id, ?fit, "reported facts cut to fit the certificate"),
        }
        let issued = self
            .ca
            .load()
            .issue(&id, &claims, &csr.public_key, self.cert_ttl)
            .map_err(|e| Refusal::BadRequest(e.to_string()))?;
        let not_after = issued.not_after.unix_timestamp();
        tx.record_issued(&issued.serial, id.as_str(), not_after, method, now)?;
        Ok(IssuedResponse {
            id: id.to_string(),
            certificate: issued.pem,
            bundle: self.bundle_pem.load().to_string(),
            not_after,
        })
    }

    /// One JSON line per attestation, issuance, renewal, refusal
    /// ([`super::event_log`]: refusals past a rate are counted).
    fn event(&self, event: &str, id: Option<&str>, method: &str, refusal: Option<&Refusal>) {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        self.events.event(now, event, id, method, refusal);
    }

    /// Writes out the refusals counted in a second that is over.
    pub fn flush_events(&self) {
        self.events
            .flush(time::OffsetDateTime::now_utc().unix_timestamp());
    }

    /// Writes out every refusal counted so far (at shutdown).
    pub fn finish_events(&self) {
        self.events.finish();
    }

    /// Writes a revocation event (the CLI revokes through the store).
    pub fn log_revocation(&self, id: &str) {
        self.event("revoke", Some(id), "admin", None);
    }
}

/// What one certificate is derived from.
struct Issuance<'a> {
    registration: &'a Registration,
    csr: &'a CertificateSigningRequestParams,
    /// The attestation method recorded in the claims.
    method: &'a str,
    /// Verified cloud facts, if the workload attested with a cloud document.
    cloud: Option<Cloud>,
    /// Verified pod facts, if the workload attested with a pod's token.
    k8s: Option<K8s>,
    /// What the pod's app containers run, when the API server was asked.
    app_image: Option<AppImage>,
    /// What the workload says about itself (lands under `reported`).
    reported: Option<serde_json::Map<String, serde_json::Value>>,
}

/// The `k8s` claims of a pod: the token's facts, plus the API server's when
/// the lookup ran, checked against the digest the registration pins; and
/// what its app containers run, when the lookup ran.
fn vouch_pod(
    registration: &Registration,
    pod: &PodRef<'_>,
    mut claims: K8s,
    facts: Option<PodFacts>,
) -> Result<(K8s, Option<AppImage>), Refusal> {
    let Some(facts) = facts else {
        return Ok((claims, None));
    };
    if let Some(pinned) = &registration.image_digest {
        k8s_pod::check_pinned(&facts, pod, pinned).map_err(|e| Refusal::NotAllowed {
            id: registration.id.clone(),
            reason: e.to_string(),
        })?;
    }
    let image = facts.app_image();
    facts.vouch(&mut claims);
    Ok((claims, Some(image)))
}

/// The pod a certificate's `k8s` claims name, if they name it fully.
fn pod_ref_of(k8s: &K8s) -> Option<PodRef<'_>> {
    Some(PodRef {
        namespace: k8s.namespace.as_deref()?,
        service_account: k8s.service_account.as_deref()?,
        pod: k8s.pod.as_deref()?,
        pod_uid: k8s.pod_uid.as_deref()?,
        node: k8s.node.as_deref(),
    })
}

/// The token's part of earlier `k8s` claims (what the API server's facts
/// are added to again).
fn token_facts(k8s: Option<&K8s>) -> K8s {
    k8s.map(|k| K8s {
        labels: BTreeMap::new(),
        images: BTreeMap::new(),
        ..k.clone()
    })
    .unwrap_or_default()
}

/// The facts a cloud registration can match on.
pub fn cloud_facts(cloud: &Cloud) -> BTreeMap<String, String> {
    let mut facts = BTreeMap::new();
    let mut put = |key: &str, value: &Option<String>| {
        if let Some(v) = value {
            facts.insert(key.to_string(), v.clone());
        }
    };
    put("provider", &cloud.provider);
    put("account", &cloud.account);
    put("project", &cloud.project);
    put("region", &cloud.region);
    put("zone", &cloud.zone);
    put("instance", &cloud.instance);
    put("image", &cloud.image);
    put("instance_type", &cloud.instance_type);
    facts
}

/// Refuses a `reported` object that is too large or too deep (400).
fn check_reported(
    reported: Option<&serde_json::Map<String, serde_json::Value>>,
) -> Result<(), Refusal> {
    match reported {
        Some(r) => reported::check(r).map_err(Refusal::BadRequest),
        None => Ok(()),
    }
}

fn parse_csr(pem: &str) -> Result<CertificateSigningRequestParams, Refusal> {
    if pem.len() > 16 * 1024 {
        return Err(Refusal::BadRequest("CSR larger than 16 KiB".into()));
    }
    CertificateSigningRequestParams::from_pem(pem)
        .map_err(|e| Refusal::BadRequest(format!("invalid CSR: {e}")))
}

/// Join tokens are stored as the hex SHA-256 of the token.
pub fn hash_token(token: &str) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes()).as_ref())
}

/// A fresh join token: 32 random bytes, base64url. `None` only when the
/// system has no randomness to give (then there is no safe token).
pub fn new_token() -> Option<String> {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes).ok()?;
    Some(format!(
        "appid-jt-{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attest::k8s_pod::AppidContainers;
    use crate::authority::client::new_key_and_csr;
    use crate::identity::ca::KeyAlg;
    use appid_policy::claims::Vulns;
    use serde_json::json;

    const WEB: &str = "spiffe://td.example/web";

    /// An authority in `dir` with `web` registered (label app=web) and a
    /// join token `t1` for it.
    fn authority(dir: &Path) -> Authority {
        let ca = Ca::init(dir, "td.example", KeyAlg::EcdsaP256).unwrap();
        let mut store = Store::open(dir).unwrap();
        store
            .register(
                &Registration {
                    id: WEB.into(),
                    labels: BTreeMap::from([("app".into(), "web".into())]),
                    image_digest: None,
                    cloud_match: BTreeMap::new(),
                },
                0,
            )
            .unwrap();
        store.add_token(&hash_token("t1"), WEB, i64::MAX).unwrap();
        let log = dir.join("audit.jsonl");
        Authority::new(ca, store, time::Duration::minutes(5), Some(&log), None).unwrap()
    }

    fn claims_and_der(issued: &IssuedResponse) -> (AppIdClaims, Vec<u8>) {
        let (_, pem) = x509_parser::pem::parse_x509_pem(issued.certificate.as_bytes()).unwrap();
        let cert = pem.parse_x509().unwrap();
        let claims = crate::identity::verify::appid_claims_of(&cert).unwrap();
        (claims, pem.contents.clone())
    }

    /// A workload can only ever add to `reported`: claims it sends at the
    /// top level of the request are ignored, and the same names inside
    /// `reported` stay there, where no vouched-claim selector looks.
    #[test]
    fn nothing_outside_reported_comes_from_the_workload() {
        let dir = tempfile::tempdir().unwrap();
        let authority = authority(dir.path());
        let csr = new_key_and_csr().unwrap().csr_pem;
        let reported = json!({
            "process": {"sha256": "a".repeat(64), "uid": 1000},
            "labels": {"app": "admin"},
            "id": "spiffe://td.example/admin",
            "attestation": "aws_iid"
        });
        let request: AttestRequest = serde_json::from_value(json!({
            "csr": csr,
            "proof": {"method": "join_token", "token": "t1"},
            "reported": reported,
            "labels": {"app": "admin"},
            "id": "spiffe://td.example/admin",
            "image": {"digest": format!("sha256:{}", "f".repeat(64))},
            "vulns": {"critical": 0},
            "cloud": {"provider": "aws"},
            "attestation": "aws_iid",
            "claims": {"labels": {"app": "admin"}}
        }))
        .unwrap();
        let issued = authority.attest(&request, 10).unwrap();
        let (claims, der) = claims_and_der(&issued);
        assert_eq!(claims.id, WEB);
        assert_eq!(claims.labels["app"], "web");
        assert_eq!(claims.attestation, "join_token");
        assert_eq!(
            (
                claims.image.as_ref(),
                claims.vulns.as_ref(),
                claims.cloud.as_ref()
            ),
            (None, None, None)
        );
        assert_eq!(claims.reported, reported.as_object().cloned());

        // Renewal: the facts are replaced by the new report, the rest
        // re-derived from the registration.
        let presented = PresentedCert::new(&der, claims).unwrap();
        let renew = RenewRequest {
            csr: new_key_and_csr().unwrap().csr_pem,
            reported: json!({"process": {"uid": 0}}).as_object().cloned(),
        };
        let (renewed, _) = claims_and_der(&authority.renew(&presented, &renew, 20).unwrap());
        assert_eq!(renewed.labels["app"], "web");
        assert_eq!(renewed.reported.unwrap()["process"]["uid"], 0);
        // No report: no `reported` at all.
        let bare = RenewRequest {
            csr: new_key_and_csr().unwrap().csr_pem,
            reported: None,
        };
        let (bare, _) = claims_and_der(&authority.renew(&presented, &bare, 30).unwrap());
        assert_eq!(bare.reported, None);
        // Past its end (on a connection verified before), no renewal.
        let late = authority.renew(&presented, &bare_request(), presented.not_after + 1);
        assert!(
            matches!(&late, Err(Refusal::Unauthenticated(why)) if why.contains("expired")),
            "{:?}",
            late.map(|r| r.id)
        );
        assert!(
            authority
                .renew(&presented, &bare_request(), presented.not_after)
                .is_ok()
        );
    }

    fn bare_request() -> RenewRequest {
        RenewRequest {
            csr: new_key_and_csr().unwrap().csr_pem,
            reported: None,
        }
    }

    #[test]
    fn oversized_or_deep_reports_are_refused_with_400_and_consume_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let authority = authority(dir.path());
        let request = |reported: serde_json::Value| AttestRequest {
            csr: new_key_and_csr().unwrap().csr_pem,
            proof: Proof::JoinToken { token: "t1".into() },
            reported: reported.as_object().cloned(),
        };
        let big = request(json!({"blob": "x".repeat(17 * 1024)}));
        let refusal = authority.attest(&big, 10).unwrap_err();
        assert_eq!(refusal.status(), 400);
        assert!(refusal.to_string().contains("at most 16384"), "{refusal}");
        let deep = request(json!({"a": {"b": {"c": {"d": {"e": 1}}}}}));
        let refusal = authority.attest(&deep, 10).unwrap_err();
        assert_eq!(refusal.status(), 400);
        assert!(refusal.to_string().contains("levels deep"), "{refusal}");
        // The token was not spent on them; a report that fits the request
        // but not the certificate is cut, not refused.
        let libraries: Vec<_> = (0..60)
            .map(|i| json!({"path": format!("/usr/lib/lib{i}.so"), "sha256": "b".repeat(64)}))
            .collect();
        let long = request(json!({"process": {"uid": 7, "libraries": libraries}}));
        let (claims, _) = claims_and_der(&authority.attest(&long, 10).unwrap());
        let process = &claims.reported.unwrap()["process"];
        assert_eq!(process["uid"], 7);
        assert_eq!(process["libraries_truncated"], true);
        assert!(process["libraries"].as_array().unwrap().len() < 60);
    }

    /// A cluster whose every token is pod `web-1` (uid `uid-1`) of
    /// `shop/web`, and an API server that answers with `pod`.
    struct FakeCluster;
    impl CloudVerifier for FakeCluster {
        fn verify(&self, _: &Proof, _: i64) -> Result<Cloud, String> {
            Err("no cloud".into())
        }
        fn verify_k8s(&self, token: &str, _: i64) -> Result<K8sIdentity, String> {
            Ok(K8sIdentity {
                namespace: "shop".into(),
                service_account: "web".into(),
                service_account_uid: "sa-uid".into(),
                pod_name: "web-1".into(),
                pod_uid: "uid-1".into(),
                node_name: Some("node-1".into()),
                node_uid: None,
                jti: Some(token.into()),
                issued_at: std::time::UNIX_EPOCH,
                expires_at: std::time::UNIX_EPOCH + std::time::Duration::from_secs(1 << 40),
            })
        }
    }

    struct FakeApi(std::sync::Arc<Mutex<Result<serde_json::Value, PodLookupError>>>);
    impl PodSource for FakeApi {
        fn get(&self, namespace: &str, pod: &str) -> Result<Vec<u8>, PodLookupError> {
            assert_eq!((namespace, pod), ("shop", "web-1"));
            self.0
                .lock()
                .unwrap()
                .clone()
                .map(|v| v.to_string().into_bytes())
        }
    }

    fn pod_json(uid: &str, digest: &str) -> serde_json::Value {
        json!({"kind": "Pod", "apiVersion": "v1",
            "metadata": {"name": "web-1", "namespace": "shop", "uid": uid,
                         "labels": {"app": "web", "team": "shop"}},
            "spec": {"serviceAccountName": "web", "nodeName": "node-1",
                     "containers": [{"name": "web", "image": "registry.example/web:1"}]},
            "status": {"phase": "Running", "containerStatuses": [
                {"name": "web", "imageID": format!("registry.example/web@{digest}"),
                 "state": {"running": {}}}]}})
    }

    type Answer = std::sync::Arc<Mutex<Result<serde_json::Value, PodLookupError>>>;

    /// `pod` with one more container, `name` running `digest`.
    fn with_container(mut pod: serde_json::Value, name: &str, digest: &str) -> serde_json::Value {
        let image = format!("registry.example/{name}@{digest}");
        pod["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": name, "image": image}));
        pod["status"]["containerStatuses"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": name, "imageID": image, "state": {"running": {}}}));
        pod
    }

    /// An authority with `shop/web` registered for Kubernetes attestation
    /// (pinning `pinned`, if given) and the fake pod lookup.
    fn k8s_authority(dir: &Path, pinned: Option<&str>) -> (Authority, Answer) {
        k8s_authority_with(dir, pinned, AppidContainers::ByName)
    }

    /// The same, telling appid's containers by `appid`, with a scan
    /// (one high) of the images `a…` and `c…`.
    fn k8s_authority_with(
        dir: &Path,
        pinned: Option<&str>,
        appid: AppidContainers,
    ) -> (Authority, Answer) {
        let ca = Ca::init(dir, "td.example", KeyAlg::EcdsaP256).unwrap();
        let mut store = Store::open(dir).unwrap();
        store
            .register(
                &Registration {
                    id: "spiffe://td.example/ns/shop/sa/web".into(),
                    labels: BTreeMap::from([("app".into(), "web".into())]),
                    image_digest: pinned.map(str::to_owned),
                    cloud_match: BTreeMap::from([("provider".into(), K8S_PROVIDER.into())]),
                },
                0,
            )
            .unwrap();
        for scanned in ["a", "c"] {
            let vulns = Vulns {
                high: 1,
                scanner: "trivy".into(),
                report: format!("sha256:{}", "9".repeat(64)),
                ..Vulns::default()
            };
            let digest = format!("sha256:{}", scanned.repeat(64));
            store.import_scan(&digest, &vulns, 0).unwrap();
        }
        let answer: Answer = std::sync::Arc::new(Mutex::new(Ok(pod_json(
            "uid-1",
            &format!("sha256:{}", "a".repeat(64)),
        ))));
        let authority = Authority::new(
            ca,
            store,
            time::Duration::minutes(5),
            Some(&dir.join("audit.jsonl")),
            Some(Box::new(FakeCluster)),
        )
        .unwrap()
        .with_pod_lookup(Some(PodLookup {
            source: Box::new(FakeApi(answer.clone())),
            trust_labels: vec!["app".into()],
            appid,
        }));
        (authority, answer)
    }

    fn psat(token: &str) -> AttestRequest {
        AttestRequest {
            csr: new_key_and_csr().unwrap().csr_pem,
            proof: Proof::K8sPsat {
                token: token.into(),
            },
            reported: None,
        }
    }

    #[test]
    fn a_looked_up_pod_is_vouched_for_and_rechecked_at_renewal() {
        let dir = tempfile::tempdir().unwrap();
        let (authority, answer) = k8s_authority(dir.path(), None);
        let running = format!("sha256:{}", "a".repeat(64));
        let (claims, der) = claims_and_der(&authority.attest(&psat("t1"), 10).unwrap());
        let k8s = claims.k8s.as_ref().unwrap();
        assert_eq!(
            (k8s.namespace.as_deref(), k8s.service_account.as_deref()),
            (Some("shop"), Some("web"))
        );
        assert_eq!(
            (k8s.pod.as_deref(), k8s.pod_uid.as_deref()),
            (Some("web-1"), Some("uid-1"))
        );
        assert_eq!(k8s.node.as_deref(), Some("node-1"));
        // Only the trusted label.
        assert_eq!(k8s.labels, BTreeMap::from([("app".into(), "web".into())]));
        assert_eq!(k8s.images["web"], running);
        // Unpinned registration, one app container: its digest is the image.
        assert_eq!(
            claims.image.as_ref().unwrap().digest.as_ref(),
            Some(&running)
        );
        assert_eq!(
            (claims.cloud.as_ref(), claims.reported.as_ref()),
            (None, None)
        );

        // Renewal reads the pod again: a new image shows up...
        let newer = format!("sha256:{}", "b".repeat(64));
        *answer.lock().unwrap() = Ok(pod_json("uid-1", &newer));
        let presented = PresentedCert::new(&der, claims).unwrap();
        let renew = || RenewRequest {
            csr: new_key_and_csr().unwrap().csr_pem,
            reported: None,
        };
        let (renewed, _) = claims_and_der(&authority.renew(&presented, &renew(), 20).unwrap());
        assert_eq!(renewed.k8s.as_ref().unwrap().images["web"], newer);
        assert_eq!(
            renewed.k8s.as_ref().unwrap().pod_uid.as_deref(),
            Some("uid-1")
        );
        // ...and a deleted (or re-created) pod's certificate is not renewed.
        *answer.lock().unwrap() = Ok(pod_json("uid-2", &newer));
        let refusal = authority.renew(&presented, &renew(), 30).unwrap_err();
        assert_eq!(refusal.status(), 401, "{refusal}");
        assert!(refusal.to_string().contains("pod shop/web-1"), "{refusal}");
        // The API server down: 503, so the sidecar retries.
        *answer.lock().unwrap() = Err(PodLookupError {
            transient: true,
            message: "looking up pod shop/web-1 at the Kubernetes API: connection refused".into(),
        });
        let refusal = authority.renew(&presented, &renew(), 40).unwrap_err();
        assert_eq!(refusal.status(), 503, "{refusal}");
        let refusal = authority.attest(&psat("t2"), 40).unwrap_err();
        assert_eq!(refusal.status(), 503, "{refusal}");
        assert!(refusal.to_string().contains("pod shop/web-1"), "{refusal}");
    }

    #[test]
    fn a_pod_that_runs_another_image_than_registered_is_refused_and_keeps_its_token() {
        let dir = tempfile::tempdir().unwrap();
        let pinned = format!("sha256:{}", "c".repeat(64));
        let (authority, answer) = k8s_authority(dir.path(), Some(&pinned));
        let refusal = authority.attest(&psat("t1"), 10).unwrap_err();
        assert_eq!(refusal.status(), 403, "{refusal}");
        let text = refusal.to_string();
        assert!(
            text.contains("pod shop/web-1") && text.contains(&pinned),
            "{text}"
        );
        // The refusal consumed nothing: once the pod runs the registered
        // image, the same token attests.
        *answer.lock().unwrap() = Ok(pod_json("uid-1", &pinned));
        let (claims, _) = claims_and_der(&authority.attest(&psat("t1"), 10).unwrap());
        assert_eq!(claims.image.unwrap().digest, Some(pinned));
        let audit = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
        assert!(audit.contains("\"refusal\":\"not_registered\""), "{audit}");
    }

    /// `image.digest` and `vulns` describe the app: a pod that runs its
    /// pinned image beside another app container has the image, not its
    /// scan. With appid's digests given, a container named as appid's proxy
    /// that runs something else is such a container.
    #[test]
    fn a_pinned_image_beside_another_app_container_is_vouched_for_without_its_scan() {
        let dir = tempfile::tempdir().unwrap();
        let pinned = format!("sha256:{}", "c".repeat(64));
        let appid_digest = format!("sha256:{}", "1".repeat(64));
        let appid = AppidContainers::ByDigest([appid_digest.clone()].into());
        let (authority, answer) = k8s_authority_with(dir.path(), Some(&pinned), appid);
        let attest = |pod: serde_json::Value, token: &str| {
            *answer.lock().unwrap() = Ok(pod);
            let (claims, _) = claims_and_der(&authority.attest(&psat(token), 10).unwrap());
            let digest = claims.image.as_ref().and_then(|i| i.digest.clone());
            (
                digest,
                claims.vulns.map(|v| v.high),
                claims.k8s.unwrap().images,
            )
        };

        // The pinned image alone, and beside appid's own proxy: its scan.
        let alone = pod_json("uid-1", &pinned);
        assert_eq!(attest(alone.clone(), "t1").1, Some(1));
        let beside_appid = with_container(alone.clone(), "appid-proxy", &appid_digest);
        let (digest, high, images) = attest(beside_appid, "t2");
        assert_eq!((digest.as_ref(), high), (Some(&pinned), Some(1)));
        assert_eq!(images["appid-proxy"], appid_digest);

        // Beside anything else, whatever its name: the image, no scan.
        let evil = format!("sha256:{}", "e".repeat(64));
        for name in ["miner", "appid-proxy"] {
            let (digest, high, images) = attest(with_container(alone.clone(), name, &evil), name);
            assert_eq!((digest.as_ref(), high), (Some(&pinned), None), "{name}");
            assert_eq!(images[name], evil);
        }
        // A plain init container that has not ended: the same.
        let mut init = alone.clone();
        let image = format!("registry.example/migrate@{evil}");
        init["spec"]["initContainers"] = json!([{"name": "migrate", "image": image}]);
        init["status"]["initContainerStatuses"] =
            json!([{"name": "migrate", "imageID": image, "state": {"running": {}}}]);
        let (digest, high, images) = attest(init, "init");
        assert_eq!((digest.as_ref(), high), (Some(&pinned), None));
        assert_eq!(images["migrate"], evil);
    }

    /// A cloud instance's certificate renews only while its registration
    /// still takes the instance: re-registered for another account, the
    /// identity ends at its next renewal.
    #[test]
    fn a_cloud_instance_renews_only_while_its_registration_takes_it() {
        struct OneInstance;
        impl CloudVerifier for OneInstance {
            fn verify(&self, _: &Proof, _: i64) -> Result<Cloud, String> {
                Ok(Cloud {
                    provider: Some("aws".into()),
                    account: Some("123456789012".into()),
                    region: Some("eu-west-1".into()),
                    instance: Some("i-0abc".into()),
                    ..Cloud::default()
                })
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::init(dir.path(), "td.example", KeyAlg::EcdsaP256).unwrap();
        let aws = |account: &str| Registration {
            id: "spiffe://td.example/vm/billing".into(),
            labels: BTreeMap::new(),
            image_digest: None,
            cloud_match: BTreeMap::from([
                ("provider".into(), "aws".into()),
                ("account".into(), account.into()),
            ]),
        };
        let mut store = Store::open(dir.path()).unwrap();
        store.register(&aws("123456789012"), 0).unwrap();
        let authority = Authority::new(
            ca,
            store,
            time::Duration::minutes(5),
            None,
            Some(Box::new(OneInstance)),
        )
        .unwrap();
        let request = AttestRequest {
            csr: new_key_and_csr().unwrap().csr_pem,
            proof: Proof::AwsIid {
                document: "{}".into(),
                kind: "signature".into(),
                signature: String::new(),
                region: "eu-west-1".into(),
            },
            reported: None,
        };
        let (claims, der) = claims_and_der(&authority.attest(&request, 10).unwrap());
        let presented = PresentedCert::new(&der, claims).unwrap();
        let renew = || RenewRequest {
            csr: new_key_and_csr().unwrap().csr_pem,
            reported: None,
        };
        authority.renew(&presented, &renew(), 20).unwrap();
        Store::open(dir.path())
            .unwrap()
            .register(&aws("210987654321"), 30)
            .unwrap();
        let refusal = authority.renew(&presented, &renew(), 40).unwrap_err();
        assert_eq!(refusal.status(), 403, "{refusal}");
        assert!(refusal.to_string().contains("no longer takes"), "{refusal}");
    }

    /// The request a sidecar sends for a Kubernetes attestation.
    #[test]
    fn the_psat_proof_on_the_wire() {
        let request: AttestRequest = serde_json::from_str(
            r#"{"csr": "PEM", "proof": {"method": "k8s_psat", "token": "eyJ.x.y"}}"#,
        )
        .unwrap();
        assert!(matches!(&request.proof, Proof::K8sPsat { token } if token == "eyJ.x.y"));
        assert_eq!(request.proof.method(), "k8s_psat");
        assert_eq!(
            serde_json::to_value(&request.proof).unwrap(),
            serde_json::json!({"method": "k8s_psat", "token": "eyJ.x.y"})
        );
    }
}
