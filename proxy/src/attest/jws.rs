//! Signed JWTs (JWS compact serialization) against a configured key set:
//! the part GCP instance identity tokens and Kubernetes service-account
//! tokens share.
//!
//! One implementation, used by [`super::gcp`] and [`super::k8s`]: the key
//! set ([`JwtKeys`], from a JWKS document or one PEM key), the signature
//! check ([`verify_signature`]), and the registered-claim checks every
//! token kind needs ([`check_issuer`], [`check_audience`], [`check_times`]).
//! What the payload *means* stays with each token kind.
//!
//! Design bias: **fail closed, and read nothing before the signature.** Each
//! token kind fixes the algorithms it accepts ([`TokenKind::algs`]); the
//! header's `alg` only selects among those, so `none`, `HS256` with the
//! public key as the secret, and anything else are refused by construction.
//! The header cannot supply a key (`jwk`/`jku`/`x5u`/`x5c` are ignored,
//! never fetched); `crit` extensions are refused, since none are understood.
//! A key only verifies the algorithm of its type (RSA keys RS256, P-256 keys
//! ES256). The signature is checked over the exact bytes received, and only
//! then is the payload returned for decoding.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents, UnparsedPublicKey,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde::de::IgnoredAny;

use super::cms::{self, PublicKey};
use super::{AttestError, CLOCK_SKEW};

/// Tokens longer than this are refused unread (real ones are 1–2 KiB).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// JWKS documents larger than this are refused unread.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;

/// A JWS signature algorithm this code verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwsAlg {
    /// RSASSA-PKCS1-v1_5 with SHA-256, 2048- to 8192-bit keys.
    Rs256,
    /// ECDSA P-256 with SHA-256, `r || s` (64 bytes).
    Es256,
}

impl JwsAlg {
    fn name(self) -> &'static str {
        match self {
            JwsAlg::Rs256 => "RS256",
            JwsAlg::Es256 => "ES256",
        }
    }
}

/// What differs between the kinds of token verified with this module.
#[derive(Debug)]
pub struct TokenKind {
    /// For messages, e.g. "GCP identity tokens".
    pub name: &'static str,
    /// The algorithms accepted; any other `alg` is refused.
    pub algs: &'static [JwsAlg],
    /// Where to get fresh keys, for [`AttestError::UnknownKid`].
    pub refresh_keys: &'static str,
}

/// Token signing keys, as configured on the authority (Google's keys, a
/// cluster's service-account issuer keys).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JwtKeys {
    keys: Vec<JwtKey>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct JwtKey {
    /// `None` for a key configured without an ID: it matches any `kid`.
    kid: Option<String>,
    material: KeyMaterial,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum KeyMaterial {
    /// Big-endian modulus and exponent, without leading zeros.
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// The uncompressed point `04 || x || y` (65 bytes).
    EcP256 { point: Vec<u8> },
}

impl KeyMaterial {
    fn alg(&self) -> JwsAlg {
        match self {
            KeyMaterial::Rsa { .. } => JwsAlg::Rs256,
            KeyMaterial::EcP256 { .. } => JwsAlg::Es256,
        }
    }

    fn verifies(&self, signed: &[u8], signature: &[u8]) -> bool {
        match self {
            KeyMaterial::Rsa { n, e } => RsaPublicKeyComponents { n, e }
                .verify(&RSA_PKCS1_2048_8192_SHA256, signed, signature)
                .is_ok(),
            KeyMaterial::EcP256 { point } => {
                UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
                    .verify(signed, signature)
                    .is_ok()
            }
        }
    }
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
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

fn magnitude(bytes: Vec<u8>) -> Vec<u8> {
    let zeros = bytes.iter().take_while(|&&b| b == 0).count();
    bytes[zeros..].to_vec()
}

impl JwtKeys {
    /// From a JWKS document (`{"keys":[{"kty":"RSA","kid":..,"n":..,"e":..}]}`).
    /// RSA keys (for RS256) and EC P-256 keys (for ES256) that are signing
    /// keys are kept; other keys are skipped. A malformed usable key, or a
    /// set with no usable key, is an error.
    pub fn from_jwks_json(json: &[u8]) -> Result<Self, AttestError> {
        let bad = |why: String| AttestError::BadTrustAnchor(format!("JWKS: {why}"));
        if json.len() > MAX_JWKS_BYTES {
            return Err(bad(format!("larger than {MAX_JWKS_BYTES} bytes")));
        }
        let jwks: Jwks = serde_json::from_slice(json).map_err(|e| bad(e.to_string()))?;
        let mut keys = Vec::new();
        for jwk in jwks.keys {
            let signing = jwk.use_.as_deref().is_none_or(|u| u == "sig");
            let alg_is = |name: &str| jwk.alg.as_deref().is_none_or(|a| a == name);
            let rsa = jwk.kty.as_deref() == Some("RSA") && alg_is("RS256");
            let ec = jwk.kty.as_deref() == Some("EC")
                && jwk.crv.as_deref() == Some("P-256")
                && alg_is("ES256");
            if !signing || !(rsa || ec) {
                continue;
            }
            let kid = jwk
                .kid
                .ok_or_else(|| bad(format!("an {} key has no kid", jwk.kty.unwrap_or_default())))?;
            let component = |value: Option<String>, name: &str| {
                let value = value.ok_or_else(|| bad(format!("key {kid} has no {name}")))?;
                URL_SAFE_NO_PAD
                    .decode(value.trim_end_matches('='))
                    .map_err(|e| bad(format!("key {kid}: {name} is not base64url ({e})")))
            };
            let material = if rsa {
                let n = magnitude(component(jwk.n, "n")?);
                let e = magnitude(component(jwk.e, "e")?);
                if n.is_empty() || e.is_empty() {
                    return Err(bad(format!("key {kid}: zero modulus or exponent")));
                }
                KeyMaterial::Rsa { n, e }
            } else {
                let x = component(jwk.x, "x")?;
                let y = component(jwk.y, "y")?;
                if x.len() != 32 || y.len() != 32 {
                    return Err(bad(format!(
                        "key {kid}: P-256 coordinates must be 32 bytes each"
                    )));
                }
                let mut point = vec![4];
                point.extend(x);
                point.extend(y);
                KeyMaterial::EcP256 { point }
            };
            keys.push(JwtKey {
                kid: Some(kid),
                material,
            });
        }
        if keys.is_empty() {
            return Err(bad("no RSA (RS256) or EC P-256 (ES256) signing key".into()));
        }
        Ok(JwtKeys { keys })
    }

    /// From one PEM RSA key: a `PUBLIC KEY` (SPKI) or a `CERTIFICATE` (as
    /// in Google's `oauth2/v1/certs`). With `kid`, it only verifies tokens
    /// naming that key; without, tokens naming any key.
    pub fn from_pem(pem: &[u8], kid: Option<&str>) -> Result<Self, AttestError> {
        let bad = |why: String| AttestError::BadTrustAnchor(format!("key PEM: {why}"));
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
        Ok(JwtKeys {
            keys: vec![JwtKey {
                kid: kid.map(str::to_string),
                material: KeyMaterial::Rsa {
                    n: n.to_vec(),
                    e: e.to_vec(),
                },
            }],
        })
    }

    /// Adds the keys of `other` (e.g. keys from several JWKS fetches while
    /// the issuer rotates).
    pub fn extend(&mut self, other: JwtKeys) {
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

#[derive(Deserialize)]
struct Header {
    alg: Option<String>,
    kid: Option<String>,
    crit: Option<IgnoredAny>,
}

/// The `aud` claim: one string or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

/// A JSON string or number, read as text (ids that are numbers in some
/// tokens and strings in others).
#[derive(Deserialize)]
#[serde(untagged)]
pub enum Id {
    Text(String),
    Number(u64),
}

impl Id {
    pub fn text(self) -> String {
        match self {
            Id::Text(s) => s,
            Id::Number(n) => n.to_string(),
        }
    }
}

fn segment(part: &str, what: &str) -> Result<Vec<u8>, AttestError> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|e| AttestError::BadEncoding(format!("token {what} is not base64url ({e})")))
}

/// Checks the token's form, header and signature against `keys`, and
/// returns the decoded payload bytes (not yet parsed: that is the caller's,
/// and only now is it safe).
pub fn verify_signature(
    token: &str,
    keys: &JwtKeys,
    kind: &TokenKind,
) -> Result<Vec<u8>, AttestError> {
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
    let alg = kind
        .algs
        .iter()
        .copied()
        .find(|a| header.alg.as_deref() == Some(a.name()));
    let Some(alg) = alg else {
        let accepted: Vec<&str> = kind.algs.iter().map(|a| a.name()).collect();
        return Err(AttestError::UnsupportedAlgorithm(format!(
            "token alg {}; {} are {}",
            header
                .alg
                .as_deref()
                .map_or_else(|| "(missing)".to_string(), |a| format!("{a:?}")),
            kind.name,
            accepted.join(" or ")
        )));
    };
    if header.crit.is_some() {
        return Err(AttestError::UnsupportedAlgorithm(
            "token header has crit extensions, which are not understood".into(),
        ));
    }
    let candidates: Vec<&JwtKey> = keys
        .keys
        .iter()
        .filter(|k| k.kid.is_none() || k.kid == header.kid)
        .collect();
    if candidates.is_empty() {
        return Err(AttestError::UnknownKid {
            kid: header.kid.unwrap_or_else(|| "(none)".into()),
            known: keys.kids().join(", "),
            refresh: kind.refresh_keys,
        });
    }
    let kid = header.kid.as_deref().unwrap_or("(none)");
    let usable: Vec<&&JwtKey> = candidates
        .iter()
        .filter(|k| k.material.alg() == alg)
        .collect();
    if usable.is_empty() {
        return Err(AttestError::WrongKey(format!(
            "the token is {}, but key {kid} is not a key for {}",
            alg.name(),
            alg.name()
        )));
    }
    let signature = segment(sig_b64, "signature")?;
    let signed = &token.as_bytes()[..header_b64.len() + 1 + payload_b64.len()];
    if !usable
        .iter()
        .any(|k| k.material.verifies(signed, &signature))
    {
        return Err(AttestError::BadSignature(format!(
            "the token signature does not verify with key {kid}: the token was altered, \
             or the configured keys are stale (refresh the JWKS)"
        )));
    }
    segment(payload_b64, "payload")
}

/// `iss` must be one of `accepted`.
pub fn check_issuer(iss: Option<&str>, accepted: &[&str]) -> Result<(), AttestError> {
    match iss {
        Some(iss) if accepted.contains(&iss) => Ok(()),
        other => Err(AttestError::WrongIssuer {
            got: other.unwrap_or("(missing)").to_string(),
            expected: accepted.join(" or "),
        }),
    }
}

/// `aud` must be, or contain, `expected` (which must not be empty).
pub fn check_audience(aud: Option<&Audience>, expected: &str) -> Result<(), AttestError> {
    if expected.is_empty() {
        return Err(AttestError::WrongAudience {
            got: "(not checked)".into(),
            expected: "(empty: configure the audience tokens are requested for)".into(),
        });
    }
    let ok = match aud {
        Some(Audience::One(a)) => a == expected,
        Some(Audience::Many(all)) => all.iter().any(|a| a == expected),
        None => false,
    };
    if ok {
        return Ok(());
    }
    let got = match aud {
        Some(Audience::One(a)) => a.clone(),
        Some(Audience::Many(all)) => all.join(","),
        None => "(missing)".into(),
    };
    Err(AttestError::WrongAudience {
        got,
        expected: expected.to_string(),
    })
}

/// A time claim (seconds since the epoch) as a `SystemTime`.
pub fn epoch(secs: i64) -> SystemTime {
    let magnitude = Duration::from_secs(secs.unsigned_abs());
    if secs >= 0 {
        UNIX_EPOCH.checked_add(magnitude).unwrap_or(UNIX_EPOCH)
    } else {
        UNIX_EPOCH.checked_sub(magnitude).unwrap_or(UNIX_EPOCH)
    }
}

/// `exp` must be after `now`, `iat` and `nbf` not after it, each with
/// [`CLOCK_SKEW`]; `exp` before `iat` is malformed.
pub fn check_times(
    now: SystemTime,
    iat: i64,
    exp: i64,
    nbf: Option<i64>,
) -> Result<(), AttestError> {
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
