//! Identity from the authority: bootstrap once, renew forever, follow
//! revocations.
//!
//! Design bias: *never stop serving for the authority's sake*. The first
//! certificate is required (the sidecar is not ready without one); after
//! that an unreachable authority only delays renewal — the current
//! certificate keeps serving until it expires, and only then does `/ready`
//! turn false. Renewal happens at half the remaining lifetime with jitter,
//! with a new key each time. Without a kept identity the sidecar proves
//! itself with a one-time join token, in a pod a Kubernetes projected
//! service-account token, or on a cloud VM the instance identity it fetches
//! from the metadata service ([`ProofSource`]), afresh at each attempt.
//!
//! With `state_dir` ([`super::state_dir`]) every certificate obtained, first
//! or renewed, is kept on disk with its key; a restarted sidecar whose kept
//! certificate is still valid starts with it and renews at once, over mTLS
//! with that certificate. The join token is only redeemed when nothing valid
//! is kept.
//!
//! With `workload` configured, every attestation and renewal carries the
//! runtime fingerprint ([`super::fingerprint`]) as `reported`, mined just
//! before the request; a failure to mine sends the last good facts and
//! never delays the request.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use super::fingerprint::Fingerprinter;
use super::local::Local;
use super::metadata::{self, Endpoint};
use super::state_dir::{Kept, StateDir};
use super::tls::LocalIdentity;
use super::{Shared, SidecarError};
use crate::admin::Readiness;
use crate::authority::client::{AuthorityClient, ClientError, new_key_and_csr};
use crate::authority::service::{BundleResponse, IssuedResponse, Proof};
use crate::config::CloudAttestation;
use crate::identity::verify::TrustBundle;

/// How often the revocation list is fetched.
pub const REVOCATION_POLL: Duration = Duration::from_secs(2);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Where the first certificate came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Bootstrap {
    /// A valid certificate kept in the state directory by an earlier run.
    Kept,
    /// A new certificate for the join token.
    JoinToken,
    /// A new certificate for a Kubernetes projected service-account token.
    K8sToken,
    /// A new certificate for the cloud's instance identity document or token.
    Cloud,
}

/// What the sidecar proves itself with when it has no kept identity.
#[derive(Debug, Clone)]
pub(super) enum ProofSource<'a> {
    /// A one-time join token.
    JoinToken(&'a Path),
    /// A projected service-account token, read afresh for every attempt
    /// (the kubelet rotates it, and the authority redeems each token once).
    K8sToken(&'a Path),
    /// The cloud's statement about this instance, from the metadata
    /// service ([`super::metadata`]); GCP tokens name `audience`.
    Cloud {
        cloud: CloudAttestation,
        endpoint: Endpoint,
        audience: &'a str,
    },
    /// Nothing configured: only a kept identity will do.
    Nothing,
}

/// Why no proof is at hand.
enum ProofError {
    /// Try again later (the metadata service is not answering yet).
    Transient(String),
    Fatal(SidecarError),
}

impl<'a> ProofSource<'a> {
    pub(super) fn from_config(
        join_token: Option<&'a Path>,
        k8s_token: Option<&'a Path>,
        cloud: Option<CloudAttestation>,
        metadata_endpoint: Option<&str>,
        audience: &'a str,
    ) -> Result<Self, SidecarError> {
        Ok(match (join_token, k8s_token, cloud) {
            (Some(file), _, _) => ProofSource::JoinToken(file),
            (None, Some(file), _) => ProofSource::K8sToken(file),
            (None, None, Some(cloud)) => {
                let url = metadata_endpoint.unwrap_or(metadata::DEFAULT_ENDPOINT);
                let endpoint = Endpoint::parse(url).ok_or_else(|| {
                    SidecarError::Authority(format!("`{url}` is not a metadata service address"))
                })?;
                ProofSource::Cloud {
                    cloud,
                    endpoint,
                    audience,
                }
            }
            (None, None, None) => ProofSource::Nothing,
        })
    }

    /// The proof to send now.
    async fn proof(&self) -> Result<(Proof, Bootstrap), ProofError> {
        let (file, what) = match self {
            ProofSource::JoinToken(file) => (file, "join token"),
            ProofSource::K8sToken(file) => (file, "service-account token"),
            ProofSource::Cloud {
                cloud,
                endpoint,
                audience,
            } => {
                let fetched = match cloud {
                    CloudAttestation::Aws => metadata::aws_iid(endpoint).await,
                    CloudAttestation::Gcp => metadata::gcp_iit(endpoint, audience).await,
                };
                return match fetched {
                    Ok(proof) => Ok((proof, Bootstrap::Cloud)),
                    Err(e) if e.is_transient() => Err(ProofError::Transient(e.to_string())),
                    Err(e) => Err(ProofError::Fatal(SidecarError::Authority(e.to_string()))),
                };
            }
            ProofSource::Nothing => {
                return Err(ProofError::Fatal(SidecarError::Authority(
                    "no kept identity, and identity.authority has none of join_token_file, \
                     k8s_token_file and cloud: add the one this workload bootstraps with"
                        .into(),
                )));
            }
        };
        let fatal = |message: String| ProofError::Fatal(SidecarError::Authority(message));
        let token = std::fs::read_to_string(file)
            .map_err(|e| fatal(format!("{}: {e}", file.display())))?
            .trim()
            .to_string();
        if token.is_empty() {
            return Err(fatal(format!(
                "{}: the {what} file is empty",
                file.display()
            )));
        }
        Ok(match self {
            ProofSource::K8sToken(_) => (Proof::K8sPsat { token }, Bootstrap::K8sToken),
            _ => (Proof::JoinToken { token }, Bootstrap::JoinToken),
        })
    }
}

/// One identity to bootstrap: the sidecar's own or a service's.
pub(super) struct Bootstrapping<'a> {
    /// `None`: the sidecar's own; `Some(name)`: the service's.
    pub service: Option<String>,
    pub source: ProofSource<'a>,
    pub state: Option<StateDir>,
    pub fingerprint: Option<Arc<Fingerprinter>>,
}

/// The first certificate of `b` ([`first_certificate`]), and what keeps it
/// renewed from then on.
pub(super) async fn bootstrap(
    client: &AuthorityClient,
    bundle: &TrustBundle,
    b: Bootstrapping<'_>,
) -> Result<(LocalIdentity, Renewer), SidecarError> {
    let (identity, how) = first_certificate(
        client,
        bundle,
        b.source,
        b.state.as_ref(),
        b.fingerprint.as_deref(),
    )
    .await
    .map_err(|e| match &b.service {
        None => e,
        Some(name) => SidecarError::Authority(format!("service `{name}`: {e}")),
    })?;
    let renewer = Renewer {
        service: b.service,
        state: b.state,
        renew_now: how == Bootstrap::Kept,
        fingerprint: b.fingerprint,
    };
    Ok((identity, renewer))
}

/// What keeps one identity renewed once the sidecar runs.
pub(super) struct Renewer {
    /// Whose identity: `None` the sidecar's own, `Some(name)` the service's.
    pub service: Option<String>,
    /// Where each renewed certificate is kept, if configured.
    pub state: Option<StateDir>,
    /// Renew at once instead of at half life (after starting with a kept
    /// certificate: its claims may be stale, and the authority may have
    /// revoked it meanwhile).
    pub renew_now: bool,
    /// Mines the facts sent as `reported`, if `workload` is configured.
    pub fingerprint: Option<Arc<Fingerprinter>>,
}

/// The facts to send as `reported` now.
async fn reported(
    fingerprint: Option<&Fingerprinter>,
) -> Option<serde_json::Map<String, serde_json::Value>> {
    match fingerprint {
        Some(f) => f.reported().await,
        None => None,
    }
}

/// The first identity: the one kept in `state` if it is still valid,
/// otherwise a certificate for the proof from `source` (then kept in
/// `state`), retrying while the authority is unreachable. A refusal is
/// final.
pub(super) async fn first_certificate(
    client: &AuthorityClient,
    bundle: &TrustBundle,
    source: ProofSource<'_>,
    state: Option<&StateDir>,
    fingerprint: Option<&Fingerprinter>,
) -> Result<(LocalIdentity, Bootstrap), SidecarError> {
    if let Some(state) = state {
        match state.load(bundle) {
            Kept::Valid(identity) => {
                tracing::info!(
                    id = %identity.id,
                    not_after = identity.not_after,
                    file = %state.identity_file().display(),
                    "starting with the kept identity; renewing with it"
                );
                return Ok((identity, Bootstrap::Kept));
            }
            Kept::Nothing => tracing::info!(
                file = %state.identity_file().display(),
                "no kept identity yet; bootstrapping"
            ),
            Kept::Unusable(why) => tracing::warn!(
                %why,
                "the kept identity cannot be used; bootstrapping"
            ),
        }
    }
    let mut backoff = Duration::from_millis(500);
    loop {
        let fresh = new_key_and_csr().map_err(|e| SidecarError::Authority(e.to_string()))?;
        let (proof, bootstrap) = match source.proof().await {
            Ok(found) => found,
            Err(ProofError::Fatal(e)) => return Err(e),
            Err(ProofError::Transient(why)) => {
                tracing::warn!(%why, retry_in = ?backoff, "waiting for the metadata service");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        match client
            .attest(&fresh.csr_pem, proof, reported(fingerprint).await)
            .await
        {
            Ok(issued) => {
                let identity = identity_from(&issued, &fresh.key_pem, bundle)?;
                keep(state, &fresh.key_pem, &issued);
                return Ok((identity, bootstrap));
            }
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, retry_in = ?backoff, "waiting for the authority");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(e) => return Err(SidecarError::Authority(e.to_string())),
        }
    }
}

/// Keeps a new certificate and its key in `state`, if configured. A failure
/// is logged, not fatal: the sidecar serves on, but would need a new join
/// token after a restart.
fn keep(state: Option<&StateDir>, key_pem: &str, issued: &IssuedResponse) {
    if let Some(state) = state
        && let Err(e) = state.save(key_pem, &issued.certificate)
    {
        tracing::error!(error = %e, "the new certificate is not kept");
    }
}

fn identity_from(
    issued: &IssuedResponse,
    key_pem: &str,
    bundle: &TrustBundle,
) -> Result<LocalIdentity, SidecarError> {
    LocalIdentity::from_pem(
        "certificate from the authority",
        issued.certificate.as_bytes(),
        "generated key",
        key_pem.as_bytes(),
        bundle,
    )
    .map_err(SidecarError::Identity)
}

/// Renews at half life (with jitter) until shutdown. Only the sidecar's
/// own identity moves readiness: a service whose certificate expired
/// fails its own handshakes (peers refuse an expired certificate), and its
/// outbound listener refuses at once.
pub(super) async fn keep_renewed(
    shared: Arc<Shared>,
    client: AuthorityClient,
    renewer: Renewer,
    readiness: Readiness,
    identity_json: Arc<ArcSwap<serde_json::Value>>,
) {
    let Renewer {
        service,
        state,
        mut renew_now,
        fingerprint,
    } = renewer;
    let local = match &service {
        None => shared.locals.own().clone(),
        Some(name) => match shared.locals.service(name) {
            Some(local) => local.clone(),
            None => {
                tracing::error!(service = %name, "no such service; its identity is not renewed");
                return;
            }
        },
    };
    let readiness = service.is_none().then_some(readiness);
    let label = local.label().to_owned();
    loop {
        if !std::mem::take(&mut renew_now) {
            let not_after = local.tls.identity.load().not_after;
            let remaining = (not_after - now()).max(0) as u64;
            // Half of what is left, minus up to 10% jitter so a fleet spreads out.
            let half = Duration::from_secs(remaining) / 2;
            let jitter = half.mul_f64(jitter_fraction() * 0.1);
            tokio::time::sleep(half.saturating_sub(jitter).max(Duration::from_secs(1))).await;
        }

        let mut backoff = Duration::from_millis(500);
        loop {
            match renew_once(
                &shared,
                &local,
                &client,
                state.as_ref(),
                fingerprint.as_deref(),
            )
            .await
            {
                Ok(identity) => {
                    tracing::info!(id = %identity.id, identity = %label, not_after = identity.not_after, "certificate renewed");
                    local.tls.identity.store(Arc::new(identity));
                    identity_json.store(Arc::new(shared.locals.admin_json()));
                    shared
                        .metrics
                        .set_certificate_expiry(shared.locals.soonest_not_after() - now());
                    if let Some(readiness) = &readiness {
                        readiness.set_identity_ready(true);
                    }
                    break;
                }
                Err(e) => {
                    let left = local.tls.identity.load().not_after - now();
                    if left <= 0
                        && let Some(readiness) = &readiness
                    {
                        readiness.set_identity_ready(false);
                    }
                    tracing::warn!(error = %e, identity = %label, seconds_left = left, "renewal failed; retrying");
                    // Never sleep past the expiry: readiness must turn
                    // false when the certificate does, not a backoff later.
                    let until_expiry = Duration::from_secs(left.max(0) as u64 + 1);
                    let wait = if left > 0 {
                        backoff.min(until_expiry)
                    } else {
                        backoff
                    };
                    tokio::time::sleep(wait).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

async fn renew_once(
    shared: &Shared,
    local: &Local,
    client: &AuthorityClient,
    state: Option<&StateDir>,
    fingerprint: Option<&Fingerprinter>,
) -> Result<LocalIdentity, String> {
    let fresh = new_key_and_csr().map_err(|e| e.to_string())?;
    let reported = reported(fingerprint).await;
    let current = local.tls.identity.load().certified.clone();
    let issued = client
        .renew(&fresh.csr_pem, current, reported)
        .await
        .map_err(|e: ClientError| e.to_string())?;
    let identity = identity_from(&issued, &fresh.key_pem, &shared.trust.bundle.load())
        .map_err(|e| e.to_string())?;
    keep(state, &fresh.key_pem, &issued);
    Ok(identity)
}

/// Fetches the revocation list every [`REVOCATION_POLL`]; a change makes
/// every live connection re-check its peer.
pub(super) async fn follow_revocations(shared: Arc<Shared>, client: AuthorityClient) {
    loop {
        match client.revocations().await {
            Ok(list) => {
                let revoked: HashSet<String> = list.revoked.into_iter().collect();
                if **shared.trust.revoked.load() != revoked {
                    tracing::info!(count = revoked.len(), "revocation list changed");
                    shared.trust.revoked.store(Arc::new(revoked));
                    shared.authorization_changed();
                }
            }
            Err(e) => tracing::debug!(error = %e, "revocation poll failed"),
        }
        tokio::time::sleep(REVOCATION_POLL).await;
    }
}

/// How often the trust bundle is fetched from the authority.
pub const BUNDLE_POLL: Duration = Duration::from_secs(5);

/// Fetches the trust bundle at start and every [`BUNDLE_POLL`], and trusts
/// what the authority hands out: its CAs (a CA rotation: the prepared CA
/// before it signs, the previous one until it is retired) and the roots of
/// each federated trust domain, for that domain only. The bundle comes over
/// a connection verified with the current one. Tunnels opened under the
/// old bundle take no new streams (`TlsState::is_current`); live
/// connections stay up.
pub(super) async fn follow_bundle(shared: Arc<Shared>, client: AuthorityClient) {
    let mut last = None;
    loop {
        match client.bundle().await {
            Ok(response) if last.as_ref() != Some(&response) => {
                let trust_domains = shared.trust.bundle.load().trust_domains().to_vec();
                match bundle_from_response(&response, trust_domains) {
                    Ok(bundle) => {
                        last = Some(response);
                        // The same roots as now (the first poll, usually):
                        // nothing changes, no tunnel is retired.
                        if !bundle.same_roots(&shared.trust.bundle.load()) {
                            tracing::info!(
                                federated = ?bundle.federated_domains().collect::<Vec<_>>(),
                                "trust bundle changed"
                            );
                            shared.trust.bundle.store(Arc::new(bundle.clone()));
                            client.set_bundle(bundle);
                        }
                    }
                    Err(e) => tracing::warn!("{e}; keeping ours"),
                }
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "bundle poll failed"),
        }
        tokio::time::sleep(BUNDLE_POLL).await;
    }
}

/// The bundle a `/v1/bundle` answer describes. Our own roots must be
/// there; a federated trust domain whose roots are unusable is left out
/// (logged), the others still count.
fn bundle_from_response(
    response: &BundleResponse,
    trust_domains: Vec<String>,
) -> Result<TrustBundle, String> {
    let what = "the authority's trust bundle";
    let roots = crate::identity::files::parse_certs(Path::new(what), response.bundle.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut bundle = TrustBundle::new(what, &roots, trust_domains).map_err(|e| e.to_string())?;
    for (trust_domain, pem) in &response.federated {
        let federated = crate::identity::files::parse_certs(Path::new(what), pem.as_bytes())
            .map_err(|e| e.to_string())
            .and_then(|roots| {
                bundle
                    .clone()
                    .with_federated(trust_domain, &roots)
                    .map_err(|e| e.to_string())
            });
        match federated {
            Ok(with) => bundle = with,
            Err(e) => {
                tracing::warn!(%trust_domain, error = %e, "federated roots unusable; left out")
            }
        }
    }
    Ok(bundle)
}

/// A uniform fraction in [0, 1).
fn jitter_fraction() -> f64 {
    let mut byte = [0u8; 1];
    let _ = aws_lc_rs::rand::fill(&mut byte);
    f64::from(byte[0]) / 256.0
}
