//! Issuing AppID certificates: SPIFFE X509-SVIDs carrying the claims.
//!
//! A leaf is a valid SPIFFE X509-SVID (exactly one URI SAN, `cA=false`,
//! critical keyUsage digitalSignature, EKU serverAuth + clientAuth) plus the
//! non-critical AppID extension. The same function serves offline issuance
//! (`appid issue`, a fresh key) and the authority (a key from a CSR): it only
//! needs the subject's public key.
//!
//! Strict DER: a DEFAULT value must be left out, never written out. rcgen's
//! `IsCa::ExplicitNoCa` writes basicConstraints as `SEQUENCE { BOOLEAN
//! FALSE }` (cA's DEFAULT spelled out), which strict parsers (Python
//! `cryptography`, Go's x509 in places) refuse. So leaves are built with
//! `IsCa::NoCa` and carry their own basicConstraints (`SEQUENCE {}`: cA
//! absent means false, critical as SPIFFE tools expect) and
//! subjectKeyIdentifier, see [`leaf_constraint_extensions`].

use rcgen::{
    CertificateParams, CustomExtension, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
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
    /// all or nothing (key mode 0600). An existing file is replaced only
    /// with `overwrite`; otherwise nothing is written.
    #[allow(clippy::too_many_arguments)]
    pub fn issue_to_files(
        &self,
        id: &SpiffeId,
        claims: &AppIdClaims,
        key_alg: KeyAlg,
        ttl: Duration,
        cert_path: &Path,
        key_path: &Path,
        overwrite: bool,
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
            overwrite,
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
        // Not `ExplicitNoCa`: see the module doc (strict DER).
        params.is_ca = IsCa::NoCa;
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
        params.custom_extensions = leaf_constraint_extensions(subject_key).into();
        params.custom_extensions.extend(
            leaf.appid_extensions
                .iter()
                .map(|value| oid_rewrite::appid_extension(value.clone())),
        );

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

/// `id-ce-basicConstraints` (2.5.29.19).
const BASIC_CONSTRAINTS_OID: [u64; 4] = [2, 5, 29, 19];
/// `id-ce-subjectKeyIdentifier` (2.5.29.14).
const SUBJECT_KEY_IDENTIFIER_OID: [u64; 4] = [2, 5, 29, 14];

/// The two extensions rcgen's `ExplicitNoCa` would write, in strict DER:
/// subjectKeyIdentifier (non-critical; the first 20 bytes of SHA-256 over
/// the SubjectPublicKeyInfo, as rcgen derives it) and basicConstraints
/// (critical) as an empty `SEQUENCE`, which *is* `cA=false`: the DEFAULT
/// is left out, as DER requires.
fn leaf_constraint_extensions(subject_key: &impl PublicKeyData) -> [CustomExtension; 2] {
    let spki_digest = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        &subject_key.subject_public_key_info(),
    );
    // OCTET STRING (20 bytes) holding the key identifier.
    let mut key_id = vec![0x04, 20];
    key_id.extend_from_slice(&spki_digest.as_ref()[..20]);
    let ski = CustomExtension::from_oid_content(&SUBJECT_KEY_IDENTIFIER_OID, key_id);
    // `SEQUENCE {}`: cA absent (DEFAULT FALSE), no pathLenConstraint.
    let mut basic_constraints =
        CustomExtension::from_oid_content(&BASIC_CONSTRAINTS_OID, vec![0x30, 0x00]);
    basic_constraints.set_criticality(true);
    [ski, basic_constraints]
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

#[cfg(test)]
mod tests {
    use super::*;
    use appid_policy::claims::attestation;

    /// The leaf's extensions as (OID, critical, raw extnValue).
    fn extensions(der: &[u8]) -> Vec<(String, bool, Vec<u8>)> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
        cert.extensions()
            .iter()
            .map(|e| (e.oid.to_id_string(), e.critical, e.value.to_vec()))
            .collect()
    }

    #[test]
    fn leaves_encode_ca_false_as_an_empty_critical_basic_constraints() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::init(dir.path(), "prod.example", KeyAlg::EcdsaP256).unwrap();
        let id = SpiffeId::parse("spiffe://prod.example/web").unwrap();
        let claims = AppIdClaims::new(id.as_str(), attestation::MANUAL);
        let key = KeyAlg::EcdsaP256.generate().unwrap();
        let issued = ca.issue(&id, &claims, &key, DEFAULT_TTL).unwrap();
        let exts = extensions(&issued.der);

        let bc: Vec<_> = exts.iter().filter(|e| e.0 == "2.5.29.19").collect();
        assert_eq!(bc.len(), 1, "{exts:?}");
        assert!(bc[0].1, "basicConstraints is critical");
        assert_eq!(bc[0].2, [0x30, 0x00], "cA=false is the empty SEQUENCE");

        let ski: Vec<_> = exts.iter().filter(|e| e.0 == "2.5.29.14").collect();
        assert_eq!(ski.len(), 1, "{exts:?}");
        let digest =
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &key.subject_public_key_info());
        assert_eq!(ski[0].2[2..], digest.as_ref()[..20]);

        // And x509-parser agrees it is not a CA.
        let (_, cert) = x509_parser::parse_x509_certificate(&issued.der).unwrap();
        assert!(!cert.is_ca());
    }
}
