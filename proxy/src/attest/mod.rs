//! Cloud attestation: verifying the signed documents a cloud gives an
//! instance, so the authority can vouch for `cloud.*` claims.
//!
//! - [`aws`]: EC2 instance identity documents, with their `/signature`
//!   (RSA-SHA256), `/rsa2048` (PKCS#7, RSA) or `/pkcs7` (PKCS#7, DSA),
//!   against AWS's published certificate for the region.
//! - [`gcp`]: Compute Engine instance identity tokens (RS256 JWTs) against
//!   Google's keys.
//! - [`k8s`]: Kubernetes projected service-account tokens (RS256 or ES256
//!   JWTs) against the cluster issuer's keys.
//! - [`k8s_pod`]: the pod object the API server returns for a token's pod
//!   (`appid authority serve --k8s-api`): the checks and the `k8s.*` facts.
//! - [`jws`]: the JWT signature and registered-claim checks [`gcp`] and
//!   [`k8s`] share, and their key set ([`JwtKeys`]).
//!
//! Everything here is pure and synchronous: bytes and a clock in, verified
//! facts or a typed reason out. Fetching certificates and key sets, keeping
//! them fresh, and remembering which instances already attested is the
//! authority's business.
//!
//! Design bias: **fail closed.** The signature is verified over the exact
//! bytes received before any of their meaning is read; nothing a document
//! carries (embedded certificates, `jwk`/`jku` headers, its own algorithm
//! choice beyond the one fixed per kind) is trusted; input that is larger,
//! deeper or stranger than the real thing is refused, never guessed at.
//! Every refusal is an [`AttestError`] variant whose message names what to
//! check. No input, however malformed, makes these functions panic.

mod ber;
mod cms;
mod dsa;

pub mod aws;
pub mod gcp;
pub mod jws;
pub mod k8s;
pub mod k8s_pod;

#[cfg(test)]
mod tests;

use std::time::Duration;

pub use aws::{AwsIdentity, AwsSignature, verify_iid};
pub use gcp::{GcpIdentity, GcpKeys, verify_iit};
pub use jws::JwtKeys;
pub use k8s::{K8sExpectations, K8sIdentity, verify_psat};

/// Clock difference tolerated between the authority and the cloud's (or the
/// cluster's) signer (for `pendingTime`, `iat`, `nbf` and `exp`).
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// Why a document or token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AttestError {
    /// The document, signature or token cannot be decoded.
    #[error(
        "cannot decode the attestation: {0}; send the values exactly as the metadata server returned them"
    )]
    BadEncoding(String),
    /// The authority's configured certificate or key is unusable.
    #[error(
        "the configured trust anchor is unusable: {0}; check the authority's cloud attestation settings"
    )]
    BadTrustAnchor(String),
    /// The signature does not verify: altered content or signature.
    #[error("signature does not verify: {0}")]
    BadSignature(String),
    /// Signed by a key other than the configured one (another region, or the
    /// wrong kind of certificate for this signature).
    #[error("signed by another key: {0}")]
    WrongKey(String),
    /// The token names a key that is not configured.
    #[error("the token's key ID {kid} is not configured (known: {known}); {refresh}")]
    UnknownKid {
        kid: String,
        known: String,
        /// Where to get the issuer's current keys.
        refresh: &'static str,
    },
    /// The document is for another region than the configured certificate.
    #[error(
        "the document is for region {document}, but region {expected} was expected; configure and select the certificate for {document} if the instance should be accepted"
    )]
    RegionMismatch { document: String, expected: String },
    /// The document differs from the content signed inside the PKCS#7.
    #[error(
        "the document differs from the content signed in the PKCS#7; send the document and the signature from the same metadata read"
    )]
    ContentMismatch,
    /// Too old for the clock or the authority's policy.
    #[error("expired: {0}; fetch a fresh one, or check the authority's clock")]
    Expired(String),
    /// Dated after the authority's clock.
    #[error("not yet valid: {0}; check the clocks of the authority and the instance")]
    NotYetValid(String),
    /// The token was minted for another audience.
    #[error(
        "the token's audience is {got}, expected {expected}; request the token with audience={expected}"
    )]
    WrongAudience { got: String, expected: String },
    /// The token was issued by someone else than the configured issuer.
    #[error("the token's issuer is {got:?}, expected {expected}")]
    WrongIssuer { got: String, expected: String },
    /// A Kubernetes service-account token that is not a projected one.
    #[error(
        "a legacy service-account token ({0}) is not accepted: it never expires and names no audience; mount a projected service-account token (a serviceAccountToken volume with audience and expirationSeconds) instead"
    )]
    LegacyToken(String),
    /// The token is valid for longer than the authority accepts.
    #[error(
        "the token is valid for {lifetime}s (exp - iat), more than the {max}s this authority accepts; request it with expirationSeconds of at most {max}"
    )]
    LifetimeTooLong { lifetime: u64, max: u64 },
    /// An algorithm, signature kind or header this code does not accept.
    #[error("unsupported: {0}")]
    UnsupportedAlgorithm(String),
    /// A field is missing or malformed in a verified document (the field is named).
    #[error("malformed document: {0} is missing or malformed")]
    MalformedDocument(String),
}

impl AttestError {
    /// A short stable code for metrics and audit lines.
    pub fn code(&self) -> &'static str {
        match self {
            AttestError::BadEncoding(_) => "bad_encoding",
            AttestError::BadTrustAnchor(_) => "bad_trust_anchor",
            AttestError::BadSignature(_) => "bad_signature",
            AttestError::WrongKey(_) => "wrong_key",
            AttestError::UnknownKid { .. } => "unknown_kid",
            AttestError::RegionMismatch { .. } => "region_mismatch",
            AttestError::ContentMismatch => "content_mismatch",
            AttestError::Expired(_) => "expired",
            AttestError::NotYetValid(_) => "not_yet_valid",
            AttestError::WrongAudience { .. } => "wrong_audience",
            AttestError::WrongIssuer { .. } => "wrong_issuer",
            AttestError::LegacyToken(_) => "legacy_token",
            AttestError::LifetimeTooLong { .. } => "lifetime_too_long",
            AttestError::UnsupportedAlgorithm(_) => "unsupported_algorithm",
            AttestError::MalformedDocument(_) => "malformed_document",
        }
    }
}
