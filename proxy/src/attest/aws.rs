//! AWS EC2 instance identity documents (IIDs).
//!
//! The instance reads `/latest/dynamic/instance-identity/document` and one of
//! its signatures from the metadata service and hands both to the authority,
//! which verifies them against AWS's published certificate for the region
//! (docs: "Verify the instance identity document", regions-certs.html):
//!
//! | metadata path | [`AwsSignature`] | region certificate |
//! |---|---|---|
//! | `/signature` | [`AwsSignature::Rsa`] | the "RSA" certificate (1024-bit key) |
//! | `/rsa2048`   | [`AwsSignature::Pkcs7Rsa2048`] | the "RSA-2048" certificate |
//! | `/pkcs7`     | [`AwsSignature::Pkcs7Dsa`] | the "DSA" certificate |
//!
//! The signature is checked over the exact document bytes before the JSON is
//! read. An IID is a bearer document: the same bytes are served for the
//! instance's whole run, so anyone who has read them once can replay them.
//! Binding one attestation per instance ID (trust on first use) is the
//! authority's job; this module only says whether AWS signed the document.

use std::time::{Duration, SystemTime};

use aws_lc_rs::digest;
use aws_lc_rs::signature::{
    RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY, RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey,
};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;

use super::cms::{self, PublicKey, SignerId};
use super::{AttestError, CLOCK_SKEW, ber};
use appid_policy::claims::{Cloud, attestation};

/// Documents larger than this are refused unread (real ones are < 1 KiB).
pub const MAX_DOCUMENT_BYTES: usize = 16 * 1024;
/// Signatures (base64 or PEM text) larger than this are refused unread.
pub const MAX_SIGNATURE_BYTES: usize = 64 * 1024;

/// One of the signatures the metadata service offers for the document,
/// as the text it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AwsSignature<'a> {
    /// `/signature`: base64 RSA PKCS#1 v1.5 SHA-256 over the document bytes,
    /// made with the region's 1024-bit "RSA" certificate key.
    Rsa(&'a str),
    /// `/rsa2048`: base64 (or PEM) PKCS#7 SignedData, RSA-2048 with SHA-256.
    Pkcs7Rsa2048(&'a str),
    /// `/pkcs7`: base64 (or PEM) PKCS#7 SignedData, DSA with SHA-1
    /// (or SHA-256).
    Pkcs7Dsa(&'a str),
}

impl<'a> AwsSignature<'a> {
    /// From the metadata path's last segment: `signature`, `rsa2048` or
    /// `pkcs7` (the `kind` of an attestation request).
    pub fn from_kind(kind: &str, text: &'a str) -> Result<Self, AttestError> {
        match kind {
            "signature" | "rsa" => Ok(AwsSignature::Rsa(text)),
            "rsa2048" => Ok(AwsSignature::Pkcs7Rsa2048(text)),
            "pkcs7" | "dsa" => Ok(AwsSignature::Pkcs7Dsa(text)),
            other => Err(AttestError::UnsupportedAlgorithm(format!(
                "AWS signature kind {other:?}; use signature, rsa2048 or pkcs7"
            ))),
        }
    }

    /// The metadata path the signature comes from.
    pub fn kind(&self) -> &'static str {
        match self {
            AwsSignature::Rsa(_) => "signature",
            AwsSignature::Pkcs7Rsa2048(_) => "rsa2048",
            AwsSignature::Pkcs7Dsa(_) => "pkcs7",
        }
    }

    /// Which of AWS's certificate sets verifies this kind.
    fn certificate_set(&self) -> &'static str {
        match self {
            AwsSignature::Rsa(_) => "the region's \"RSA\" certificate",
            AwsSignature::Pkcs7Rsa2048(_) => "the region's \"RSA-2048\" certificate",
            AwsSignature::Pkcs7Dsa(_) => "the region's \"DSA\" certificate",
        }
    }
}

/// The verified facts of an instance identity document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsIdentity {
    pub account_id: String,
    pub region: String,
    pub availability_zone: String,
    pub instance_id: String,
    pub image_id: String,
    pub instance_type: String,
    /// When the instance last started (`pendingTime`).
    pub pending_time: SystemTime,
    pub architecture: Option<String>,
    pub private_ip: Option<String>,
    /// The document format version (`version`), e.g. `2017-09-30`.
    pub version: Option<String>,
    /// Which signature was verified: `signature`, `rsa2048` or `pkcs7`.
    pub signature_kind: &'static str,
    /// The document bytes that were verified (for audit or storage).
    pub document: Vec<u8>,
}

impl AwsIdentity {
    /// The `cloud.*` claims these facts vouch for.
    pub fn to_cloud_claims(&self) -> Cloud {
        Cloud {
            provider: Some("aws".into()),
            account: Some(self.account_id.clone()),
            project: None,
            region: Some(self.region.clone()),
            zone: Some(self.availability_zone.clone()),
            instance: Some(self.instance_id.clone()),
            image: Some(self.image_id.clone()),
            instance_type: Some(self.instance_type.clone()),
            tags: Default::default(),
        }
    }

    /// The `attestation` claim: `aws_iid`.
    pub fn attestation(&self) -> &'static str {
        attestation::AWS_IID
    }
}

/// Verifies an instance identity document and returns its facts.
///
/// - `document`: the exact bytes of `/instance-identity/document`. For the
///   PKCS#7 kinds it may be empty, and the content embedded in the PKCS#7 is
///   used; when given it must equal the embedded content.
/// - `region_cert_pem`: AWS's certificate for the region and kind (PEM, or
///   DER). Only its public key is used (AWS's PKCS#7 carries no
///   certificates); its validity dates are not checked, as AWS's own
///   instructions do not.
/// - `expected_region`: when given, the document's `region` must equal it
///   (the region the configured certificate is for).
/// - `max_age`: when given, refuse documents whose `pendingTime` is older.
/// - `now`: the clock; `pendingTime` may not be after it (beyond
///   [`CLOCK_SKEW`]).
pub fn verify_iid(
    document: &[u8],
    signature: AwsSignature<'_>,
    region_cert_pem: &[u8],
    expected_region: Option<&str>,
    max_age: Option<Duration>,
    now: SystemTime,
) -> Result<AwsIdentity, AttestError> {
    if document.len() > MAX_DOCUMENT_BYTES {
        return Err(AttestError::BadEncoding(format!(
            "the document is {} bytes, more than {MAX_DOCUMENT_BYTES}",
            document.len()
        )));
    }
    let cert = RegionCert::parse(region_cert_pem)?;
    let verified: Vec<u8> = match signature {
        AwsSignature::Rsa(text) => {
            if document.is_empty() {
                return Err(AttestError::MalformedDocument(
                    "document (empty; /signature needs the document bytes)".into(),
                ));
            }
            let sig = decode_base64(text, "the /signature value")?;
            let PublicKey::Rsa(key) = cms::public_key(&cert.spki)? else {
                return Err(wrong_key_type(&signature));
            };
            UnparsedPublicKey::new(&RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY, key)
                .verify(document, &sig)
                .map_err(|_| {
                    AttestError::BadSignature(format!(
                        "the /signature does not verify over the document with {}; \
                         the document or signature was altered, or the certificate is \
                         for another region or kind",
                        signature.certificate_set()
                    ))
                })?;
            document.to_vec()
        }
        AwsSignature::Pkcs7Rsa2048(text) | AwsSignature::Pkcs7Dsa(text) => {
            let der = decode_pkcs7_text(text)?;
            verify_pkcs7(document, &der, &signature, &cert)?
        }
    };
    let identity = parse_document(&verified, signature.kind())?;
    if let Some(expected) = expected_region
        && identity.region != expected
    {
        return Err(AttestError::RegionMismatch {
            document: identity.region,
            expected: expected.to_string(),
        });
    }
    check_clock(&identity, max_age, now)?;
    Ok(identity)
}

/// What the authority uses from its configured region certificate.
struct RegionCert {
    spki: Vec<u8>,
    issuer: Vec<u8>,
    serial: Vec<u8>,
    subject_key_id: Option<Vec<u8>>,
}

impl RegionCert {
    fn parse(bytes: &[u8]) -> Result<Self, AttestError> {
        let bad = |why: String| AttestError::BadTrustAnchor(format!("region certificate: {why}"));
        let der = if bytes.first() == Some(&ber::SEQUENCE) {
            bytes.to_vec()
        } else {
            let (_, pem) = x509_parser::pem::parse_x509_pem(bytes)
                .map_err(|e| bad(format!("not PEM ({e})")))?;
            if pem.label != "CERTIFICATE" {
                return Err(bad(format!("PEM label is {}, not CERTIFICATE", pem.label)));
            }
            pem.contents
        };
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| bad(format!("not an X.509 certificate ({e})")))?;
        let tbs = &cert.tbs_certificate;
        let subject_key_id = tbs
            .extensions()
            .iter()
            .find_map(|ext| match ext.parsed_extension() {
                x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(id) => {
                    Some(id.0.to_vec())
                }
                _ => None,
            });
        let serial = tbs.raw_serial();
        let zeros = serial.iter().take_while(|&&b| b == 0).count();
        Ok(RegionCert {
            spki: tbs.subject_pki.raw.to_vec(),
            issuer: tbs.issuer.as_raw().to_vec(),
            serial: serial[zeros..].to_vec(),
            subject_key_id,
        })
    }

    /// Whether the PKCS#7 names this certificate as its signer.
    fn is_named_by(&self, sid: &SignerId<'_>) -> bool {
        match sid {
            SignerId::IssuerSerial { issuer, serial } => {
                *issuer == self.issuer.as_slice() && *serial == self.serial.as_slice()
            }
            SignerId::SubjectKeyId(id) => self.subject_key_id.as_deref() == Some(&**id),
        }
    }

    fn serial_hex(&self) -> String {
        hex::encode_upper(&self.serial)
    }
}

fn sid_description(sid: &SignerId<'_>) -> String {
    match sid {
        SignerId::IssuerSerial { serial, .. } => format!("serial {}", hex::encode_upper(serial)),
        SignerId::SubjectKeyId(id) => format!("key ID {}", hex::encode_upper(id)),
    }
}

fn wrong_key_type(signature: &AwsSignature<'_>) -> AttestError {
    AttestError::WrongKey(format!(
        "the configured certificate's key type does not fit a /{} signature; \
         configure {}",
        signature.kind(),
        signature.certificate_set()
    ))
}

/// Verifies a PKCS#7 SignedData; returns the content it signs.
fn verify_pkcs7(
    document: &[u8],
    der: &[u8],
    signature: &AwsSignature<'_>,
    cert: &RegionCert,
) -> Result<Vec<u8>, AttestError> {
    let signed = cms::parse(der)?;
    let content: Vec<u8> = match (&signed.content, document.is_empty()) {
        (Some(embedded), false) if **embedded != *document => {
            return Err(AttestError::ContentMismatch);
        }
        (Some(embedded), _) => embedded.to_vec(),
        (None, false) => document.to_vec(),
        (None, true) => {
            return Err(AttestError::MalformedDocument(
                "document (the PKCS#7 is detached; send the document bytes too)".into(),
            ));
        }
    };
    let si = &signed.signer;
    let digest_alg = if si.digest_algorithm == cms::OID_SHA256 {
        &digest::SHA256
    } else if si.digest_algorithm == cms::OID_SHA1 && matches!(signature, AwsSignature::Pkcs7Dsa(_))
    {
        &digest::SHA1_FOR_LEGACY_USE_ONLY
    } else {
        return Err(AttestError::UnsupportedAlgorithm(format!(
            "PKCS#7 digest algorithm {} for a /{} signature (expected SHA-256{})",
            ber::oid_string(si.digest_algorithm),
            signature.kind(),
            if matches!(signature, AwsSignature::Pkcs7Dsa(_)) {
                " or SHA-1"
            } else {
                ""
            }
        )));
    };
    let signed_message: &[u8] = match &si.signed_attrs {
        Some(attrs) => {
            let content_digest = digest::digest(digest_alg, &content);
            if attrs.message_digest.as_ref() != content_digest.as_ref() {
                return Err(AttestError::BadSignature(
                    "the PKCS#7 messageDigest does not match the content: \
                     the document was altered"
                        .into(),
                ));
            }
            &attrs.signed_bytes
        }
        None => &content,
    };
    let key = cms::public_key(&cert.spki)?;
    let ok = match (signature, &key) {
        (AwsSignature::Pkcs7Rsa2048(_), PublicKey::Rsa(rsa)) => {
            let sig_alg = si.signature_algorithm;
            if !(sig_alg == cms::OID_RSA || sig_alg == cms::OID_SHA256_WITH_RSA) {
                return Err(AttestError::UnsupportedAlgorithm(format!(
                    "PKCS#7 signature algorithm {} (expected RSA PKCS#1 v1.5 with SHA-256)",
                    ber::oid_string(sig_alg)
                )));
            }
            UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, rsa)
                .verify(signed_message, &si.signature)
                .is_ok()
        }
        (AwsSignature::Pkcs7Dsa(_), PublicKey::Dsa(dsa)) => {
            let sig_alg = si.signature_algorithm;
            let fits = sig_alg == cms::OID_DSA
                || (sig_alg == cms::OID_DSA_WITH_SHA1 && si.digest_algorithm == cms::OID_SHA1)
                || (sig_alg == cms::OID_DSA_WITH_SHA256 && si.digest_algorithm == cms::OID_SHA256);
            if !fits {
                return Err(AttestError::UnsupportedAlgorithm(format!(
                    "PKCS#7 signature algorithm {} with digest {} (expected DSA with the same digest)",
                    ber::oid_string(sig_alg),
                    ber::oid_string(si.digest_algorithm)
                )));
            }
            let hash = digest::digest(digest_alg, signed_message);
            dsa.verify(hash.as_ref(), &si.signature)?
        }
        _ => return Err(wrong_key_type(signature)),
    };
    if ok {
        return Ok(content);
    }
    if !cert.is_named_by(&si.sid) {
        return Err(AttestError::WrongKey(format!(
            "the PKCS#7 was signed by the certificate with {}, the configured certificate \
             has serial {}; configure {} of the document's region",
            sid_description(&si.sid),
            cert.serial_hex(),
            signature.certificate_set()
        )));
    }
    Err(AttestError::BadSignature(format!(
        "the PKCS#7 signature does not verify with {}: the signature was altered",
        signature.certificate_set()
    )))
}

/// Base64 with any whitespace (the metadata service breaks lines).
fn decode_base64(text: &str, what: &str) -> Result<Vec<u8>, AttestError> {
    if text.len() > MAX_SIGNATURE_BYTES {
        return Err(AttestError::BadEncoding(format!(
            "{what} is {} bytes, more than {MAX_SIGNATURE_BYTES}",
            text.len()
        )));
    }
    let compact: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    STANDARD
        .decode(&compact)
        .map_err(|e| AttestError::BadEncoding(format!("{what} is not base64 ({e})")))
}

/// PKCS#7 as the metadata service returns it (base64 with line breaks), or
/// PEM-armored (`PKCS7` or `CMS`).
fn decode_pkcs7_text(text: &str) -> Result<Vec<u8>, AttestError> {
    let what = "the PKCS#7 signature";
    let trimmed = text.trim();
    let Some(armored) = trimmed.strip_prefix("-----BEGIN ") else {
        return decode_base64(trimmed, what);
    };
    let (label, rest) = armored
        .split_once("-----")
        .ok_or_else(|| AttestError::BadEncoding(format!("{what}: malformed PEM header")))?;
    if label != "PKCS7" && label != "CMS" {
        return Err(AttestError::BadEncoding(format!(
            "{what}: PEM label {label:?}, expected PKCS7"
        )));
    }
    let end = format!("-----END {label}-----");
    let body = rest
        .strip_suffix(end.as_str())
        .ok_or_else(|| AttestError::BadEncoding(format!("{what}: missing {end}")))?;
    decode_base64(body, what)
}

/// The document's JSON, read only after its signature verified.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Document {
    account_id: Option<String>,
    region: Option<String>,
    availability_zone: Option<String>,
    instance_id: Option<String>,
    image_id: Option<String>,
    instance_type: Option<String>,
    pending_time: Option<String>,
    architecture: Option<String>,
    private_ip: Option<String>,
    version: Option<String>,
}

fn parse_document(bytes: &[u8], kind: &'static str) -> Result<AwsIdentity, AttestError> {
    let doc: Document = serde_json::from_slice(bytes).map_err(|e| {
        AttestError::MalformedDocument(format!("instance identity document JSON ({e})"))
    })?;
    fn required(value: Option<String>, field: &str) -> Result<String, AttestError> {
        match value {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(AttestError::MalformedDocument(field.to_string())),
        }
    }
    let pending = required(doc.pending_time, "pendingTime")?;
    let pending_time =
        time::OffsetDateTime::parse(&pending, &time::format_description::well_known::Rfc3339)
            .map_err(|_| {
                AttestError::MalformedDocument(format!("pendingTime ({pending:?} is not RFC 3339)"))
            })?;
    Ok(AwsIdentity {
        account_id: required(doc.account_id, "accountId")?,
        region: required(doc.region, "region")?,
        availability_zone: required(doc.availability_zone, "availabilityZone")?,
        instance_id: required(doc.instance_id, "instanceId")?,
        image_id: required(doc.image_id, "imageId")?,
        instance_type: required(doc.instance_type, "instanceType")?,
        pending_time: pending_time.into(),
        architecture: doc.architecture,
        private_ip: doc.private_ip,
        version: doc.version,
        signature_kind: kind,
        document: bytes.to_vec(),
    })
}

fn check_clock(
    identity: &AwsIdentity,
    max_age: Option<Duration>,
    now: SystemTime,
) -> Result<(), AttestError> {
    match now.duration_since(identity.pending_time) {
        Ok(age) => {
            if let Some(max) = max_age
                && age > max
            {
                return Err(AttestError::Expired(format!(
                    "the instance started (pendingTime) {}s ago, more than the allowed {}s",
                    age.as_secs(),
                    max.as_secs()
                )));
            }
            Ok(())
        }
        Err(ahead) if ahead.duration() <= CLOCK_SKEW => Ok(()),
        Err(ahead) => Err(AttestError::NotYetValid(format!(
            "pendingTime is {}s after the authority's clock",
            ahead.duration().as_secs()
        ))),
    }
}
