//! Issuing AppID certificates: SPIFFE X509-SVIDs carrying the claims.
//!
//! A leaf is a valid SPIFFE X509-SVID (exactly one URI SAN, `cA=false`,
//! critical keyUsage digitalSignature, EKU serverAuth + clientAuth) plus the
//! non-critical AppID extension. The same function serves offline issuance
//! (`appid issue`, a fresh key) and the authority (a key from a CSR): it only
//! needs the subject's public key.

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use thiserror::Error;
use time::{Duration, OffsetDateTime};

use appid_policy::AppIdClaims;
use appid_policy::extension::{self, ExtensionError};

use std::path::Path;

use super::ca::{Ca, CaError, KeyAlg};
use super::files::{self, FileError, NewFile};
use super::oid_rewrite::{self, RewritingSigner};
use super::spiffe::SpiffeId;

/// The default certificate lifetime.
pub const DEFAULT_TTL: Duration = Duration::hours(1);
/// The longest lifetime `issue` accepts: AppID certificates are short-lived.
pub const MAX_TTL: Duration = Duration::days(30);
/// How far `notBefore` is backdated, to tolerate clock skew between hosts.
const BACKDATE: Duration = Duration::seconds(60);

/// Why a certificate was not issued.
#[derive(Debug, Error)]
pub enum IssueError {
    #[error("SPIFFE ID {id} is not in this CA's trust domain `{ca_domain}`")]
    WrongTrustDomain { id: String, ca_domain: String },
    #[error("the claims name `{claims_id}` but the certificate is for `{id}`")]
    ClaimsIdMismatch { id: String, claims_id: String },
    #[error("TTL must be between 1s and {} days", MAX_TTL.whole_days())]
    BadTtl,
    #[error("cannot encode the AppID claims: {0}")]
    Claims(#[from] ExtensionError),
    #[error("certificate generation failed: {0}")]
    Crypto(#[from] rcgen::Error),
    #[error("key generation failed: {0}")]
    Key(String),
    #[error(transparent)]
    File(#[from] FileError),
}

/// A freshly issued leaf certificate.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    pub der: CertificateDer<'static>,
    pub pem: String,
    pub not_after: OffsetDateTime,
    /// Serial number, lowercase hex.
    pub serial: String,
}

impl Ca {
    /// Issues an AppID certificate for `id` with `claims`, binding
    /// `subject_key` (the workload's public key), valid from now for `ttl`.
    pub fn issue(
        &self,
        id: &SpiffeId,
        claims: &AppIdClaims,
        subject_key: &impl PublicKeyData,
        ttl: Duration,
    ) -> Result<IssuedCert, IssueError> {
        if id.trust_domain() != self.trust_domain() {
            return Err(IssueError::WrongTrustDomain {
                id: id.to_string(),
                ca_domain: self.trust_domain().to_string(),
            });
        }
        if claims.id != id.as_str() {
            return Err(IssueError::ClaimsIdMismatch {
                id: id.to_string(),
                claims_id: claims.id.clone(),
            });
        }
        if ttl < Duration::seconds(1) || ttl > MAX_TTL {
            return Err(IssueError::BadTtl);
        }
        let now = OffsetDateTime::now_utc();
        let leaf = LeafTemplate {
            id,
            appid_extensions: vec![extension::encode(claims)?],
            not_before: now - BACKDATE,
            not_after: now + ttl,
        };
        self.sign_leaf(&leaf, subject_key)
    }

    /// Issues a certificate with a fresh key of `key_alg` and writes both,
    /// all or nothing (key mode 0600; existing files are replaced).
    pub fn issue_to_files(
        &self,
        id: &SpiffeId,
        claims: &AppIdClaims,
        key_alg: KeyAlg,
        ttl: Duration,
        cert_path: &Path,
        key_path: &Path,
    ) -> Result<IssuedCert, IssueError> {
        let key = key_alg.generate().map_err(|e| match e {
            CaError::Crypto(e) => IssueError::Crypto(e),
            other => IssueError::Key(other.to_string()),
        })?;
        let issued = self.issue(id, claims, &key, ttl)?;
        let key_pem = key.serialize_pem();
        files::write_all_or_nothing(
            &[
                NewFile {
                    path: key_path,
                    contents: key_pem.as_bytes(),
                    mode: 0o600,
                },
                NewFile {
                    path: cert_path,
                    contents: issued.pem.as_bytes(),
                    mode: 0o644,
                },
            ],
            true,
        )?;
        Ok(issued)
    }

    /// Signs a leaf from a template. `issue` is the checked entry point; tests
    /// use this directly to build certificates a correct issuer never would
    /// (two AppID extensions, oversized claims, already expired).
    pub(crate) fn sign_leaf(
        &self,
        leaf: &LeafTemplate<'_>,
        subject_key: &impl PublicKeyData,
    ) -> Result<IssuedCert, IssueError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = leaf_subject(leaf.id);
        params.subject_alt_names = vec![SanType::URI(leaf.id.as_str().try_into()?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = leaf.not_before;
        params.not_after = leaf.not_after;
        let serial = random_serial();
        let serial_hex = hex::encode(serial.as_ref());
        params.serial_number = Some(serial);
        params.custom_extensions = leaf
            .appid_extensions
            .iter()
            .map(|value| oid_rewrite::appid_extension(value.clone()))
            .collect();

        let signer = RewritingSigner { key: self.key() };
        let issuer = Issuer::from_ca_cert_der(self.cert_der(), signer)?;
        let cert = params.signed_by(subject_key, &issuer)?;
        let der = CertificateDer::from(oid_rewrite::rewrite(cert.der()));
        let pem = pem_encode(&der);
        Ok(IssuedCert {
            der,
            pem,
            not_after: leaf.not_after,
            serial: serial_hex,
        })
    }
}

/// What goes into a leaf, before signing.
pub(crate) struct LeafTemplate<'a> {
    pub id: &'a SpiffeId,
    /// Each entry becomes one AppID extension (exactly one when valid).
    pub appid_extensions: Vec<Vec<u8>>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

/// A readable subject. SPIFFE ignores it; people reading `openssl x509` don't.
fn leaf_subject(id: &SpiffeId) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "appid");
    // X.520 caps commonName at 64 characters.
    let name: String = id
        .path()
        .rsplit('/')
        .next()
        .unwrap_or("")
        .chars()
        .take(64)
        .collect();
    if !name.is_empty() {
        dn.push(DnType::CommonName, name);
    }
    dn
}

/// A random positive 128-bit serial number (RFC 5280 allows up to 20 bytes).
pub(crate) fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    // aws-lc's system RNG; failure here would mean no entropy at all.
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        let nanos = OffsetDateTime::now_utc().unix_timestamp_nanos();
        bytes = nanos.to_be_bytes();
    }
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01; // keep it positive and of a fixed length
    SerialNumber::from_slice(&bytes)
}

/// PEM armor for a DER certificate.
pub fn pem_encode(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}
