//! GCP Compute Engine instance identity tokens (IITs).
//!
//! The instance asks the metadata server for
//! `/computeMetadata/v1/instance/service-accounts/default/identity?audience=AUD&format=full`
//! and hands the JWT to the authority. The token is verified here against
//! Google's keys as the authority configured them (the JWKS from
//! `https://www.googleapis.com/oauth2/v3/certs`, or one PEM key): RS256
//! only, the `kid` must name a configured key, the signature must verify
//! over the first two segments before any claim is read (all of that is the
//! shared [`super::jws`]), then `iss`, `aud`, `exp`/`iat`/`nbf` are checked
//! and the `google.compute_engine` facts read. The classic pitfalls are
//! closed by construction: the algorithm is fixed (`none`, `HS256` with the
//! public key as secret, and everything else are refused), and the header
//! cannot supply a key (`jwk`/`jku`/`x5u` are ignored, never fetched).

use std::time::SystemTime;

use serde::Deserialize;

use super::AttestError;
use super::jws::{self, Audience, Id, JwsAlg, JwtKeys, TokenKind};
use appid_policy::claims::{Cloud, attestation};

pub use super::jws::{MAX_JWKS_BYTES, MAX_TOKEN_BYTES};

/// The issuers Google uses for identity tokens.
pub const GOOGLE_ISSUERS: [&str; 2] = ["https://accounts.google.com", "accounts.google.com"];

/// Google's token signing keys, as configured on the authority: the shared
/// JWT key set (the name is kept for the GCP configuration).
pub type GcpKeys = JwtKeys;

/// GCP identity tokens are RS256 only.
const GCP_TOKENS: TokenKind = TokenKind {
    name: "GCP identity tokens",
    algs: &[JwsAlg::Rs256],
    refresh_keys: "refresh Google's keys from https://www.googleapis.com/oauth2/v3/certs",
};

/// The verified facts of an instance identity token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcpIdentity {
    pub project_id: String,
    pub project_number: String,
    pub zone: String,
    pub instance_id: String,
    pub instance_name: String,
    /// Seconds since the epoch, when present.
    pub instance_creation_timestamp: Option<u64>,
    /// `license_id`: the image's license IDs, when present.
    pub license_ids: Vec<String>,
    /// `sub`: the service account's unique ID.
    pub subject: Option<String>,
    pub email: Option<String>,
    pub issued_at: SystemTime,
    pub expires_at: SystemTime,
}

impl GcpIdentity {
    /// The region of the zone: `us-central1-a` gives `us-central1`.
    pub fn region(&self) -> Option<&str> {
        self.zone
            .rsplit_once('-')
            .map(|(region, _)| region)
            .filter(|r| !r.is_empty())
    }

    /// The `cloud.*` claims these facts vouch for.
    pub fn to_cloud_claims(&self) -> Cloud {
        Cloud {
            provider: Some("gcp".into()),
            account: None,
            project: Some(self.project_id.clone()),
            region: self.region().map(str::to_string),
            zone: Some(self.zone.clone()),
            instance: Some(self.instance_id.clone()),
            image: None,
            instance_type: None,
            tags: Default::default(),
        }
    }

    /// The `attestation` claim: `gcp_iit`.
    pub fn attestation(&self) -> &'static str {
        attestation::GCP_IIT
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
    email: Option<String>,
    google: Option<Google>,
}

#[derive(Deserialize)]
struct Google {
    compute_engine: Option<ComputeEngine>,
}

#[derive(Deserialize)]
struct ComputeEngine {
    project_id: Option<String>,
    project_number: Option<Id>,
    zone: Option<String>,
    instance_id: Option<Id>,
    instance_name: Option<String>,
    instance_creation_timestamp: Option<u64>,
    license_id: Option<Vec<String>>,
}

/// Verifies an instance identity token and returns its facts.
///
/// `expected_audience` is the `audience` the instance was told to request
/// (the authority's URL, typically); it must not be empty.
pub fn verify_iit(
    token: &str,
    keys: &GcpKeys,
    expected_audience: &str,
    now: SystemTime,
) -> Result<GcpIdentity, AttestError> {
    let payload = jws::verify_signature(token.trim(), keys, &GCP_TOKENS)?;
    let claims: Claims = serde_json::from_slice(&payload)
        .map_err(|e| AttestError::MalformedDocument(format!("token payload JSON ({e})")))?;
    jws::check_issuer(claims.iss.as_deref(), &GOOGLE_ISSUERS)?;
    jws::check_audience(claims.aud.as_ref(), expected_audience)?;
    let exp = claims
        .exp
        .ok_or_else(|| AttestError::MalformedDocument("exp".into()))?;
    let iat = claims
        .iat
        .ok_or_else(|| AttestError::MalformedDocument("iat".into()))?;
    jws::check_times(now, iat, exp, claims.nbf)?;

    let ce = claims
        .google
        .and_then(|g| g.compute_engine)
        .ok_or_else(|| {
            AttestError::MalformedDocument(
                "google.compute_engine (request the token with format=full)".into(),
            )
        })?;
    fn required(value: Option<String>, field: &str) -> Result<String, AttestError> {
        match value {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(AttestError::MalformedDocument(format!(
                "google.compute_engine.{field}"
            ))),
        }
    }
    Ok(GcpIdentity {
        project_id: required(ce.project_id, "project_id")?,
        project_number: required(ce.project_number.map(Id::text), "project_number")?,
        zone: required(ce.zone, "zone")?,
        instance_id: required(ce.instance_id.map(Id::text), "instance_id")?,
        instance_name: required(ce.instance_name, "instance_name")?,
        instance_creation_timestamp: ce.instance_creation_timestamp,
        license_ids: ce.license_id.unwrap_or_default(),
        subject: claims.sub,
        email: claims.email,
        issued_at: jws::epoch(iat),
        expires_at: jws::epoch(exp),
    })
}
