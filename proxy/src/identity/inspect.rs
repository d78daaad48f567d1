//! Reading a certificate for people: `appid cert inspect`, `policy explain`.
//!
//! Unlike [`super::verify`], nothing here checks signatures or trust: it reads
//! what a certificate *says*, so an operator can see why verification or
//! policy treats it the way it does.

use std::path::Path;

use rustls_pki_types::CertificateDer;
use serde::Serialize;
use thiserror::Error;
use x509_parser::certificate::X509Certificate;

use appid_policy::AppIdClaims;

use super::files::{self, FileError};
use super::verify::{self, PeerRejection};

/// Why a certificate file could not be read as an AppID certificate.
#[derive(Debug, Error)]
pub enum InspectError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{file}: not a valid X.509 certificate: {detail}")]
    Malformed { file: String, detail: String },
    #[error("{file}: {problem}")]
    NoClaims {
        file: String,
        problem: PeerRejection,
    },
}

/// What a certificate says about itself.
#[derive(Debug, Clone, Serialize)]
pub struct CertInfo {
    pub subject: String,
    pub issuer: String,
    pub serial: String,
    pub not_before: String,
    pub not_after: String,
    /// Seconds until expiry (negative once expired).
    pub expires_in_secs: i64,
    pub uri_sans: Vec<String>,
    pub is_ca: bool,
    /// The AppID claims, or why there are none usable.
    #[serde(skip)]
    pub claims: Result<AppIdClaims, PeerRejection>,
}

impl CertInfo {
    pub fn from_der(file: &str, der: &CertificateDer<'_>) -> Result<CertInfo, InspectError> {
        let (_, cert) =
            x509_parser::parse_x509_certificate(der).map_err(|e| InspectError::Malformed {
                file: file.to_string(),
                detail: e.to_string(),
            })?;
        let validity = cert.validity();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        Ok(CertInfo {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            serial: cert.raw_serial_as_string(),
            not_before: rfc3339(validity.not_before.timestamp()),
            not_after: rfc3339(validity.not_after.timestamp()),
            expires_in_secs: validity.not_after.timestamp() - now,
            uri_sans: uri_sans(&cert),
            is_ca: cert.is_ca(),
            claims: verify::appid_claims_of(&cert),
        })
    }
}

/// Reads the first certificate of a PEM file and returns its AppID claims,
/// without verifying the chain.
pub fn claims_from_pem_file(path: &Path) -> Result<AppIdClaims, InspectError> {
    let certs = files::read_certs(path)?;
    let file = path.display().to_string();
    let info = CertInfo::from_der(&file, &certs[0])?;
    info.claims
        .map_err(|problem| InspectError::NoClaims { file, problem })
}

fn uri_sans(cert: &X509Certificate<'_>) -> Vec<String> {
    match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                x509_parser::extensions::GeneralName::URI(uri) => Some(uri.to_string()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Seconds since the epoch as RFC 3339 UTC.
pub fn rfc3339(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| secs.to_string())
}
