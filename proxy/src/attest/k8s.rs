//! Kubernetes projected service-account tokens (PSATs), as SPIRE's
//! `k8s_psat` attestor and Istio's CSR flow use them.
//!
//! A pod gets a short-lived token from a `serviceAccountToken` projected
//! volume (`audience:` the authority, `expirationSeconds:` 600–3600); the
//! kubelet refreshes the file before it expires. The API server signs it
//! with the cluster's service-account issuer key, so whoever holds the
//! issuer's public keys (`kubectl get --raw /openid/v1/jwks`) can check,
//! offline, that the cluster vouches for "pod P of service account S in
//! namespace N". A payload looks like:
//!
//! ```json
//! {"aud": ["https://authority.example:15170"], "exp": 1700078013,
//!  "iat": 1700077413, "iss": "https://kubernetes.default.svc.cluster.local",
//!  "jti": "ea28ed49-2e11-4280-9ec5-bc3d1d84661a",
//!  "kubernetes.io": {"namespace": "shop",
//!    "node": {"name": "node-1", "uid": "58456cb0-…"},
//!    "pod": {"name": "web-69cbfb9798-jv9gn", "uid": "778a530c-…"},
//!    "serviceaccount": {"name": "web", "uid": "a087d5a0-…"},
//!    "warnafter": 1700078020},
//!  "nbf": 1700077413, "sub": "system:serviceaccount:shop:web"}
//! ```
//!
//! Checked here, in order: the signature (RS256, or ES256 for clusters with
//! an EC issuer key; shared with GCP in [`super::jws`]); that it is not a
//! legacy Secret-based token (issuer `kubernetes/serviceaccount`, no `exp`:
//! those never expire and are refused with a pointer to projected tokens);
//! `iss` equal to the configured cluster issuer; `aud` containing the
//! configured audience (so a token minted for another service cannot be
//! replayed here); `exp`/`iat`/`nbf` against the clock; `exp - iat` at most
//! the configured maximum (a long-lived token is a stolen token's friend);
//! and the `kubernetes.io` facts: namespace, service account (name, uid),
//! pod (name, uid: only pod-bound tokens), optional node, and `sub` naming
//! the same namespace and service account.
//!
//! Design bias: **fail closed.** The namespace and service account become
//! part of a SPIFFE ID, so they must be valid Kubernetes names (DNS labels
//! and subdomains), never just "some string". Remembering that a token was
//! already redeemed is the authority's business ([`K8sIdentity::token_id`]).

use std::time::{Duration, SystemTime};

use serde::Deserialize;

use super::AttestError;
use super::jws::{self, Audience, JwsAlg, JwtKeys, TokenKind};
use appid_policy::claims::{K8s, attestation};

/// The issuer of legacy, Secret-based service-account tokens.
pub const LEGACY_ISSUER: &str = "kubernetes/serviceaccount";

/// The default for [`K8sExpectations::max_lifetime`]: Kubernetes' projected
/// tokens are typically valid 10 minutes to 1 hour.
pub const DEFAULT_MAX_LIFETIME: Duration = Duration::from_secs(3600);

/// Service-account tokens are RS256, or ES256 with an EC issuer key.
const K8S_TOKENS: TokenKind = TokenKind {
    name: "Kubernetes service-account tokens",
    algs: &[JwsAlg::Rs256, JwsAlg::Es256],
    refresh_keys: "refresh the cluster's keys (kubectl get --raw /openid/v1/jwks) and restart the authority",
};

/// What the authority requires of a token, besides the keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct K8sExpectations {
    /// The cluster's service-account issuer (`--service-account-issuer`,
    /// `kubectl get --raw /.well-known/openid-configuration` shows it).
    pub issuer: String,
    /// The audience pods request their token for (the authority).
    pub audience: String,
    /// The longest `exp - iat` accepted.
    pub max_lifetime: Duration,
}

/// The verified facts of a projected service-account token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct K8sIdentity {
    pub namespace: String,
    pub service_account: String,
    pub service_account_uid: String,
    pub pod_name: String,
    pub pod_uid: String,
    /// Present since Kubernetes 1.30 (`node` in the token).
    pub node_name: Option<String>,
    pub node_uid: Option<String>,
    /// `jti`, when present (Kubernetes 1.29+).
    pub jti: Option<String>,
    pub issued_at: SystemTime,
    pub expires_at: SystemTime,
}

impl K8sIdentity {
    /// The SPIFFE ID path the facts name: `ns/<namespace>/sa/<name>`.
    pub fn spiffe_path(&self) -> String {
        format!("ns/{}/sa/{}", self.namespace, self.service_account)
    }

    /// What identifies this very token, so it can be redeemed once: its
    /// `jti`, or (older clusters) the pod's uid and the issue time (the
    /// kubelet never asks twice in the same second for one pod).
    pub fn token_id(&self) -> String {
        match &self.jti {
            Some(jti) => format!("jti:{jti}"),
            None => {
                let iat = self
                    .issued_at
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                format!("pod:{}@{iat}", self.pod_uid)
            }
        }
    }

    /// The `k8s.*` claims the token vouches for: namespace, service
    /// account, pod, its uid and (when the token names it) the node.
    pub fn to_k8s_claims(&self) -> K8s {
        K8s {
            namespace: Some(self.namespace.clone()),
            service_account: Some(self.service_account.clone()),
            pod: Some(self.pod_name.clone()),
            pod_uid: Some(self.pod_uid.clone()),
            node: self.node_name.clone(),
            ..K8s::default()
        }
    }

    /// What the API server must confirm about the token's pod.
    pub fn pod_ref(&self) -> super::k8s_pod::PodRef<'_> {
        super::k8s_pod::PodRef {
            namespace: &self.namespace,
            service_account: &self.service_account,
            pod: &self.pod_name,
            pod_uid: &self.pod_uid,
            node: self.node_name.as_deref(),
        }
    }

    /// The `attestation` claim: `k8s_psat`.
    pub fn attestation(&self) -> &'static str {
        attestation::K8S_PSAT
    }
}

#[derive(Deserialize)]
struct Claims {
    iss: Option<String>,
    aud: Option<Audience>,
    exp: Option<i64>,
    iat: Option<i64>,
    nbf: Option<i64>,
    sub: Option<String>,
    jti: Option<String>,
    #[serde(rename = "kubernetes.io")]
    kubernetes: Option<KubernetesIo>,
}

#[derive(Deserialize)]
struct KubernetesIo {
    namespace: Option<String>,
    serviceaccount: Option<ObjectRef>,
    pod: Option<ObjectRef>,
    node: Option<ObjectRef>,
}

#[derive(Deserialize)]
struct ObjectRef {
    name: Option<String>,
    uid: Option<String>,
}

/// A DNS label (RFC 1123): what a namespace name is.
fn is_dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// A DNS subdomain (RFC 1123): what a service account name is.
fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(is_dns_label)
}

/// Checks a namespace and service account name as Kubernetes does; the
/// reason, if they are not valid.
pub fn check_names(namespace: &str, service_account: &str) -> Result<(), String> {
    if !is_dns_label(namespace) {
        return Err(format!(
            "namespace `{namespace}` is not a Kubernetes namespace name (lowercase letters, digits and '-', at most 63)"
        ));
    }
    if !is_dns_subdomain(service_account) {
        return Err(format!(
            "service account `{service_account}` is not a Kubernetes service account name (lowercase DNS subdomain, at most 253)"
        ));
    }
    Ok(())
}

/// Verifies a projected service-account token and returns its facts.
pub fn verify_psat(
    token: &str,
    keys: &JwtKeys,
    expect: &K8sExpectations,
    now: SystemTime,
) -> Result<K8sIdentity, AttestError> {
    let payload = jws::verify_signature(token.trim(), keys, &K8S_TOKENS)?;
    let claims: Claims = serde_json::from_slice(&payload)
        .map_err(|e| AttestError::MalformedDocument(format!("token payload JSON ({e})")))?;
    if claims.iss.as_deref() == Some(LEGACY_ISSUER) {
        return Err(AttestError::LegacyToken(format!("issuer {LEGACY_ISSUER}")));
    }
    let Some(exp) = claims.exp else {
        return Err(AttestError::LegacyToken("no exp".into()));
    };
    jws::check_issuer(claims.iss.as_deref(), &[expect.issuer.as_str()])?;
    jws::check_audience(claims.aud.as_ref(), &expect.audience)?;
    let iat = claims
        .iat
        .ok_or_else(|| AttestError::MalformedDocument("iat".into()))?;
    jws::check_times(now, iat, exp, claims.nbf)?;
    let lifetime = exp.abs_diff(iat);
    if lifetime > expect.max_lifetime.as_secs() {
        return Err(AttestError::LifetimeTooLong {
            lifetime,
            max: expect.max_lifetime.as_secs(),
        });
    }

    let k8s = claims
        .kubernetes
        .ok_or_else(|| AttestError::MalformedDocument("kubernetes.io".into()))?;
    fn required(value: Option<String>, field: &str) -> Result<String, AttestError> {
        match value {
            Some(v) if !v.is_empty() && v.len() <= 253 => Ok(v),
            _ => Err(AttestError::MalformedDocument(format!(
                "kubernetes.io.{field}"
            ))),
        }
    }
    let namespace = required(k8s.namespace, "namespace")?;
    let sa = k8s
        .serviceaccount
        .ok_or_else(|| AttestError::MalformedDocument("kubernetes.io.serviceaccount".into()))?;
    let service_account = required(sa.name, "serviceaccount.name")?;
    let service_account_uid = required(sa.uid, "serviceaccount.uid")?;
    let pod = k8s.pod.ok_or_else(|| {
        AttestError::MalformedDocument(
            "kubernetes.io.pod (only pod-bound tokens are accepted: mount a projected \
             serviceAccountToken volume)"
                .into(),
        )
    })?;
    let pod_name = required(pod.name, "pod.name")?;
    if !is_dns_subdomain(&pod_name) {
        return Err(AttestError::MalformedDocument(format!(
            "kubernetes.io.pod.name ({pod_name:?} is not a Kubernetes pod name)"
        )));
    }
    let pod_uid = required(pod.uid, "pod.uid")?;
    let (node_name, node_uid) = match k8s.node {
        Some(node) => (
            Some(required(node.name, "node.name")?),
            node.uid.filter(|u| !u.is_empty()),
        ),
        None => (None, None),
    };
    check_names(&namespace, &service_account).map_err(AttestError::MalformedDocument)?;
    let expected_sub = format!("system:serviceaccount:{namespace}:{service_account}");
    if claims.sub.as_deref() != Some(expected_sub.as_str()) {
        return Err(AttestError::MalformedDocument(format!(
            "sub (it is {:?}, but kubernetes.io names {expected_sub})",
            claims.sub.as_deref().unwrap_or("(missing)")
        )));
    }
    Ok(K8sIdentity {
        namespace,
        service_account,
        service_account_uid,
        pod_name,
        pod_uid,
        node_name,
        node_uid,
        jti: claims.jti.filter(|j| !j.is_empty()),
        issued_at: jws::epoch(iat),
        expires_at: jws::epoch(exp),
    })
}
