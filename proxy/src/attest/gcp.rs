//! GCP Compute Engine instance identity tokens (IITs).
//!
//! The instance asks the metadata server for
//! `/computeMetadata/v1/instance/service-accounts/default/identity?audience=AUD&format=full`
//! and hands the JWT to the authority. The token is verified here against
//! Google's keys as the authority configured them (the JWKS from
//! `https://www.googleapis.com/oauth2/v3/certs`, or one PEM key): RS256
//! only, the `kid` must name a configured key, the signature must verify
//! over the first two segments before any claim is read, then `iss`, `aud`,
//! `exp`/`iat`/`nbf` are checked. The classic pitfalls are closed by
//! construction: the algorithm is fixed (`none`, `HS256` with the public key
//! as secret, and everything else are refused), and the header cannot supply
//! a key (`jwk`/`jku`/`x5u` are ignored, never fetched).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::{RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde::de::IgnoredAny;

use super::cms::{self, PublicKey};
use super::{AttestError, CLOCK_SKEW};
use appid_policy::claims::{Cloud, attestation};

/// Tokens longer than this are refused unread (real ones are ~1 KiB).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// JWKS documents larger than this are refused unread.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;

/// The issuers Google uses for identity tokens.
pub const GOOGLE_ISSUERS: [&str; 2] = ["https://accounts.google.com", "accounts.google.com"];

/// Google's token signing keys, as configured on the authority.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcpKeys {
    keys: Vec<RsaKey>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct RsaKey {
    /// `None` for a key configured without an ID: it matches any `kid`.
    kid: Option<String>,
    n: Vec<u8>,
    e: Vec<u8>,
}

#[derive(Deserialize)]
struct Jwks {
    keys: Vec<Jwk>,
}

#[derive(Deserialize)]
struct Jwk {
    kty: Option<String>,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    n: Option<String>,
    e: Option<String>,
}

fn magnitude(bytes: Vec<u8>) -> Vec<u8> {
    let zeros = bytes.iter().take_while(|&&b| b == 0).count();
    bytes[zeros..].to_vec()
}

impl GcpKeys {
    /// From a JWKS document (`{"keys":[{"kty":"RSA","kid":..,"n":..,"e":..}]}`).
    /// Keys that are not RSA signing keys for RS256 are skipped; a malformed
    /// RSA key, or a set with no usable key, is an error.
    pub fn from_jwks_json(json: &[u8]) -> Result<Self, AttestError> {
        let bad = |why: String| AttestError::BadTrustAnchor(format!("JWKS: {why}"));
        if json.len() > MAX_JWKS_BYTES {
            return Err(bad(format!("larger than {MAX_JWKS_BYTES} bytes")));
        }
        let jwks: Jwks = serde_json::from_slice(json).map_err(|e| bad(e.to_string()))?;
        let mut keys = Vec::new();
        for jwk in jwks.keys {
            let usable = jwk.kty.as_deref() == Some("RSA")
                && jwk.alg.as_deref().is_none_or(|a| a == "RS256")
                && jwk.use_.as_deref().is_none_or(|u| u == "sig");
            if !usable {
                continue;
            }
            let kid = jwk.kid.ok_or_else(|| bad("an RSA key has no kid".into()))?;
            let component = |value: Option<String>, name: &str| {
                let value = value.ok_or_else(|| bad(format!("key {kid} has no {name}")))?;
                let bytes = URL_SAFE_NO_PAD
                    .decode(value.trim_end_matches('='))
                    .map_err(|e| bad(format!("key {kid}: {name} is not base64url ({e})")))?;
                let bytes = magnitude(bytes);
                if bytes.is_empty() {
                    return Err(bad(format!("key {kid}: {name} is zero")));
                }
                Ok(bytes)
            };
            let n = component(jwk.n, "n")?;
            let e = component(jwk.e, "e")?;
            keys.push(RsaKey {
                kid: Some(kid),
                n,
                e,
            });
        }
        if keys.is_empty() {
            return Err(bad("no RSA RS256 signing key".into()));
        }
        Ok(GcpKeys { keys })
    }

    /// From one PEM RSA key: a `PUBLIC KEY` (SPKI) or a `CERTIFICATE` (as
    /// in Google's `oauth2/v1/certs`). With `kid`, it only verifies tokens
    /// naming that key; without, tokens naming any key.
    pub fn from_pem(pem: &[u8], kid: Option<&str>) -> Result<Self, AttestError> {
        let bad = |why: String| AttestError::BadTrustAnchor(format!("GCP key PEM: {why}"));
        let (_, block) =
            x509_parser::pem::parse_x509_pem(pem).map_err(|e| bad(format!("not PEM ({e})")))?;
        let spki = match block.label.as_str() {
            "PUBLIC KEY" => block.contents.clone(),
            "CERTIFICATE" => {
                let cert = block
                    .parse_x509()
                    .map_err(|e| bad(format!("not an X.509 certificate ({e})")))?;
                cert.tbs_certificate.subject_pki.raw.to_vec()
            }
            other => {
                return Err(bad(format!(
                    "label {other}, expected PUBLIC KEY or CERTIFICATE"
                )));
            }
        };
        let PublicKey::Rsa(der) = cms::public_key(&spki)? else {
            return Err(bad("not an RSA key".into()));
        };
        let (n, e) = cms::rsa_components(der).map_err(|e| bad(e.to_string()))?;
        if n.is_empty() || e.is_empty() {
            return Err(bad("zero modulus or exponent".into()));
        }
        Ok(GcpKeys {
            keys: vec![RsaKey {
                kid: kid.map(str::to_string),
                n: n.to_vec(),
                e: e.to_vec(),
            }],
        })
    }

    /// Adds the keys of `other` (e.g. keys from several JWKS fetches while
    /// Google rotates).
    pub fn extend(&mut self, other: GcpKeys) {
        self.keys.extend(other.keys);
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The configured key IDs, for messages.
    pub fn kids(&self) -> Vec<&str> {
        self.keys
            .iter()
            .map(|k| k.kid.as_deref().unwrap_or("(any)"))
            .collect()
    }
}

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
            tags: Default::default(),
        }
    }

    /// The `attestation` claim: `gcp_iit`.
    pub fn attestation(&self) -> &'static str {
        attestation::GCP_IIT
    }
}

#[derive(Deserialize)]
struct Header {
    alg: Option<String>,
    kid: Option<String>,
    crit: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

/// A JSON string or number, read as text (ids that are numbers in some
/// tokens and strings in others).
#[derive(Deserialize)]
#[serde(untagged)]
enum Id {
    Text(String),
    Number(u64),
}

impl Id {
    fn text(self) -> String {
        match self {
            Id::Text(s) => s,
            Id::Number(n) => n.to_string(),
        }
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

fn segment(part: &str, what: &str) -> Result<Vec<u8>, AttestError> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|e| AttestError::BadEncoding(format!("token {what} is not base64url ({e})")))
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
    let token = token.trim();
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AttestError::BadEncoding(format!(
            "the token is {} bytes, more than {MAX_TOKEN_BYTES}",
            token.len()
        )));
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(sig_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AttestError::BadEncoding(
            "the token is not a JWS compact serialization (three dot-separated parts)".into(),
        ));
    };
    let header: Header = serde_json::from_slice(&segment(header_b64, "header")?)
        .map_err(|e| AttestError::BadEncoding(format!("token header JSON ({e})")))?;
    match header.alg.as_deref() {
        Some("RS256") => {}
        other => {
            return Err(AttestError::UnsupportedAlgorithm(format!(
                "token alg {}; GCP identity tokens are RS256",
                other.map_or_else(|| "(missing)".to_string(), |a| format!("{a:?}"))
            )));
        }
    }
    if header.crit.is_some() {
        return Err(AttestError::UnsupportedAlgorithm(
            "token header has crit extensions, which are not understood".into(),
        ));
    }
    let candidates: Vec<&RsaKey> = keys
        .keys
        .iter()
        .filter(|k| k.kid.is_none() || k.kid == header.kid)
        .collect();
    if candidates.is_empty() {
        return Err(AttestError::UnknownKid {
            kid: header.kid.unwrap_or_else(|| "(none)".into()),
            known: keys.kids().join(", "),
        });
    }
    let signature = segment(sig_b64, "signature")?;
    let signed = &token.as_bytes()[..header_b64.len() + 1 + payload_b64.len()];
    let verified = candidates.iter().any(|k| {
        RsaPublicKeyComponents { n: &k.n, e: &k.e }
            .verify(&RSA_PKCS1_2048_8192_SHA256, signed, &signature)
            .is_ok()
    });
    if !verified {
        return Err(AttestError::BadSignature(format!(
            "the token signature does not verify with key {}: the token was altered, \
             or the configured keys are stale (refresh the JWKS)",
            header.kid.as_deref().unwrap_or("(none)")
        )));
    }

    let claims: Claims = serde_json::from_slice(&segment(payload_b64, "payload")?)
        .map_err(|e| AttestError::MalformedDocument(format!("token payload JSON ({e})")))?;
    match claims.iss.as_deref() {
        Some(iss) if GOOGLE_ISSUERS.contains(&iss) => {}
        other => {
            return Err(AttestError::WrongIssuer(
                other.unwrap_or("(missing)").to_string(),
            ));
        }
    }
    if expected_audience.is_empty() {
        return Err(AttestError::WrongAudience {
            got: "(not checked)".into(),
            expected: "(empty: configure the audience instances request)".into(),
        });
    }
    let audience_ok = match &claims.aud {
        Some(Audience::One(a)) => a == expected_audience,
        Some(Audience::Many(all)) => all.iter().any(|a| a == expected_audience),
        None => false,
    };
    if !audience_ok {
        let got = match claims.aud {
            Some(Audience::One(a)) => a,
            Some(Audience::Many(all)) => all.join(","),
            None => "(missing)".into(),
        };
        return Err(AttestError::WrongAudience {
            got,
            expected: expected_audience.to_string(),
        });
    }
    let exp = claims
        .exp
        .ok_or_else(|| AttestError::MalformedDocument("exp".into()))?;
    let iat = claims
        .iat
        .ok_or_else(|| AttestError::MalformedDocument("iat".into()))?;
    check_times(now, iat, exp, claims.nbf)?;

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
        issued_at: epoch(iat),
        expires_at: epoch(exp),
    })
}

fn epoch(secs: i64) -> SystemTime {
    let magnitude = Duration::from_secs(secs.unsigned_abs());
    if secs >= 0 {
        UNIX_EPOCH.checked_add(magnitude).unwrap_or(UNIX_EPOCH)
    } else {
        UNIX_EPOCH.checked_sub(magnitude).unwrap_or(UNIX_EPOCH)
    }
}

fn check_times(now: SystemTime, iat: i64, exp: i64, nbf: Option<i64>) -> Result<(), AttestError> {
    let now_secs: i64 = match now.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    };
    let skew = CLOCK_SKEW.as_secs() as i64;
    if exp < iat {
        return Err(AttestError::MalformedDocument("exp (before iat)".into()));
    }
    if now_secs >= exp.saturating_add(skew) {
        return Err(AttestError::Expired(format!(
            "the token expired at {exp} (exp), the authority's clock says {now_secs}"
        )));
    }
    for (name, at) in [("iat", Some(iat)), ("nbf", nbf)] {
        if let Some(at) = at.filter(|&at| at > now_secs.saturating_add(skew)) {
            return Err(AttestError::NotYetValid(format!(
                "the token's {name} is {at}, after the authority's clock ({now_secs})"
            )));
        }
    }
    Ok(())
}
