//! CMS / PKCS#7 `SignedData` (RFC 5652), read by hand with the BER reader.
//!
//! Only the shape AWS emits is accepted: `id-data` content (embedded or
//! detached), exactly one `SignerInfo`, identified by issuer and serial
//! number or by subject key identifier. Certificates and CRLs carried in the
//! message are skipped, never trusted: the key comes from the authority's
//! configuration.

use std::borrow::Cow;

use super::AttestError;
use super::ber::{
    self, BIT_STRING, CONTEXT_0, CONTEXT_0_PRIMITIVE, CONTEXT_1, INTEGER, OCTET_STRING, OID,
    Reader, SEQUENCE, SET,
};

// OID content octets.
pub(super) const OID_SIGNED_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02];
pub(super) const OID_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01];
pub(super) const OID_CONTENT_TYPE: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x03];
pub(super) const OID_MESSAGE_DIGEST: &[u8] =
    &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x04];
pub(super) const OID_SHA256: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];
pub(super) const OID_SHA1: &[u8] = &[0x2b, 0x0e, 0x03, 0x02, 0x1a];
pub(super) const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
pub(super) const OID_SHA256_WITH_RSA: &[u8] =
    &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b];
pub(super) const OID_DSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x38, 0x04, 0x01];
pub(super) const OID_DSA_WITH_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x38, 0x04, 0x03];
pub(super) const OID_DSA_WITH_SHA256: &[u8] =
    &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x03, 0x02];

const WHAT: &str = "PKCS#7 signature";

/// The parts of a `SignedData` that verification needs.
#[derive(Debug)]
pub(super) struct SignedData<'a> {
    /// The embedded content, or `None` when the signature is detached.
    pub content: Option<Cow<'a, [u8]>>,
    pub signer: SignerInfo<'a>,
}

/// How the signer names its certificate.
#[derive(Debug)]
pub(super) enum SignerId<'a> {
    /// The DER of the issuer `Name` and the serial number's magnitude.
    IssuerSerial {
        issuer: &'a [u8],
        serial: &'a [u8],
    },
    SubjectKeyId(Cow<'a, [u8]>),
}

#[derive(Debug)]
pub(super) struct SignerInfo<'a> {
    pub sid: SignerId<'a>,
    /// OID of the digest algorithm.
    pub digest_algorithm: &'a [u8],
    pub signed_attrs: Option<SignedAttrs<'a>>,
    /// OID of the signature algorithm.
    pub signature_algorithm: &'a [u8],
    pub signature: Cow<'a, [u8]>,
}

#[derive(Debug)]
pub(super) struct SignedAttrs<'a> {
    /// What is signed: the attributes as a DER `SET OF` (RFC 5652 5.4),
    /// i.e. the encoding found in the message with its `[0]` tag made `SET`.
    pub signed_bytes: Vec<u8>,
    /// The `messageDigest` attribute's value.
    pub message_digest: Cow<'a, [u8]>,
}

/// Parses a DER/BER `ContentInfo` holding `SignedData`.
pub(super) fn parse(der: &[u8]) -> Result<SignedData<'_>, AttestError> {
    let mut top = Reader::new(der);
    let content_info = top.expect(SEQUENCE, "PKCS#7 ContentInfo")?;
    top.finish("PKCS#7 ContentInfo")?;
    let mut ci = content_info.children(WHAT)?;
    if ci.expect(OID, "PKCS#7 contentType")?.content != OID_SIGNED_DATA {
        return Err(AttestError::BadEncoding(
            "PKCS#7 contentType is not signedData".into(),
        ));
    }
    let explicit = ci.expect(CONTEXT_0, "PKCS#7 content")?;
    ci.finish("PKCS#7 ContentInfo")?;
    let mut outer = explicit.children(WHAT)?;
    let signed_data = outer.expect(SEQUENCE, "PKCS#7 SignedData")?;
    outer.finish("PKCS#7 content")?;

    let mut sd = signed_data.children(WHAT)?;
    sd.expect(INTEGER, "SignedData version")?;
    sd.expect(SET, "SignedData digestAlgorithms")?;
    let encap = sd.expect(SEQUENCE, "SignedData encapContentInfo")?;
    let mut e = encap.children(WHAT)?;
    if e.expect(OID, "eContentType")?.content != OID_DATA {
        return Err(AttestError::BadEncoding(
            "PKCS#7 eContentType is not id-data".into(),
        ));
    }
    let content = match e.optional(CONTEXT_0, "eContent")? {
        None => None,
        Some(explicit) => {
            let mut inner = explicit.children("eContent")?;
            let octets = inner.read("eContent")?;
            inner.finish("eContent")?;
            if octets.tag & 0x1f != OCTET_STRING || octets.tag & 0xc0 != 0 {
                return Err(AttestError::BadEncoding(
                    "PKCS#7 eContent is not an OCTET STRING".into(),
                ));
            }
            Some(octets.octets("eContent")?)
        }
    };
    e.finish("encapContentInfo")?;
    // Carried certificates and CRLs are skipped: never a source of trust.
    sd.optional(CONTEXT_0, "SignedData certificates")?;
    sd.optional(CONTEXT_1, "SignedData crls")?;
    let signer_infos = sd.expect(SET, "SignedData signerInfos")?;
    sd.finish("SignedData")?;

    let mut infos = signer_infos.children(WHAT)?;
    let info = infos.expect(SEQUENCE, "SignerInfo")?;
    if !infos.is_empty() {
        return Err(AttestError::BadEncoding(
            "PKCS#7 has more than one SignerInfo; AWS documents have exactly one".into(),
        ));
    }
    let signer = parse_signer_info(&info)?;
    Ok(SignedData { content, signer })
}

fn parse_signer_info<'a>(info: &ber::Tlv<'a>) -> Result<SignerInfo<'a>, AttestError> {
    let mut si = info.children("SignerInfo")?;
    si.expect(INTEGER, "SignerInfo version")?;
    let sid = match si.peek_tag() {
        Some(SEQUENCE) => {
            let ias = si.read("SignerInfo issuerAndSerialNumber")?;
            let mut r = ias.children("issuerAndSerialNumber")?;
            let issuer = r.expect(SEQUENCE, "issuerAndSerialNumber issuer")?.raw;
            let serial = r.expect(INTEGER, "issuerAndSerialNumber serial")?;
            r.finish("issuerAndSerialNumber")?;
            SignerId::IssuerSerial {
                issuer,
                serial: strip_zeros(serial.content),
            }
        }
        Some(CONTEXT_0_PRIMITIVE) => {
            let ski = si.read("SignerInfo subjectKeyIdentifier")?;
            SignerId::SubjectKeyId(ski.octets("subjectKeyIdentifier")?)
        }
        _ => {
            return Err(AttestError::BadEncoding(
                "SignerInfo sid is neither issuerAndSerialNumber nor subjectKeyIdentifier".into(),
            ));
        }
    };
    let digest = si.read("SignerInfo digestAlgorithm")?;
    let (digest_algorithm, _) = ber::algorithm(&digest, "SignerInfo digestAlgorithm")?;
    let signed_attrs = match si.optional(CONTEXT_0, "SignerInfo signedAttrs")? {
        Some(attrs) => Some(parse_signed_attrs(&attrs)?),
        None => None,
    };
    let sig_alg = si.read("SignerInfo signatureAlgorithm")?;
    let (signature_algorithm, _) = ber::algorithm(&sig_alg, "SignerInfo signatureAlgorithm")?;
    let signature = si.read("SignerInfo signature")?;
    if signature.tag & 0x1f != OCTET_STRING || signature.tag & 0xc0 != 0 {
        return Err(AttestError::BadEncoding(
            "SignerInfo signature is not an OCTET STRING".into(),
        ));
    }
    let signature = signature.octets("SignerInfo signature")?;
    // unsignedAttrs [1] may follow; nothing in them is trusted.
    si.optional(CONTEXT_1, "SignerInfo unsignedAttrs")?;
    si.finish("SignerInfo")?;
    Ok(SignerInfo {
        sid,
        digest_algorithm,
        signed_attrs,
        signature_algorithm,
        signature,
    })
}

fn parse_signed_attrs<'a>(attrs: &ber::Tlv<'a>) -> Result<SignedAttrs<'a>, AttestError> {
    let mut content_type = None;
    let mut message_digest = None;
    let mut r = attrs.children("signedAttrs")?;
    while !r.is_empty() {
        let attr = r.expect(SEQUENCE, "signed attribute")?;
        let mut a = attr.children("signed attribute")?;
        let oid = a.expect(OID, "signed attribute type")?.content;
        let values = a.expect(SET, "signed attribute values")?;
        a.finish("signed attribute")?;
        let mut v = values.children("signed attribute values")?;
        let value = v.read("signed attribute value")?;
        let single = v.is_empty();
        if oid == OID_CONTENT_TYPE || oid == OID_MESSAGE_DIGEST {
            let slot = if oid == OID_CONTENT_TYPE {
                &mut content_type
            } else {
                &mut message_digest
            };
            if slot.is_some() || !single {
                return Err(AttestError::BadEncoding(format!(
                    "signed attribute {} appears more than once",
                    ber::oid_string(oid)
                )));
            }
            *slot = Some(value);
        }
    }
    let content_type = content_type
        .ok_or_else(|| AttestError::BadEncoding("signed attributes lack contentType".into()))?;
    if content_type.tag != OID || content_type.content != OID_DATA {
        return Err(AttestError::BadEncoding(
            "signed contentType attribute is not id-data".into(),
        ));
    }
    let message_digest = message_digest
        .ok_or_else(|| AttestError::BadEncoding("signed attributes lack messageDigest".into()))?;
    if message_digest.tag != OCTET_STRING {
        return Err(AttestError::BadEncoding(
            "messageDigest attribute is not an OCTET STRING".into(),
        ));
    }
    let mut signed_bytes = attrs.raw.to_vec();
    signed_bytes[0] = SET;
    Ok(SignedAttrs {
        signed_bytes,
        message_digest: Cow::Borrowed(message_digest.content),
    })
}

fn strip_zeros(bytes: &[u8]) -> &[u8] {
    let zeros = bytes.iter().take_while(|&&b| b == 0).count();
    &bytes[zeros..]
}

/// A public key from a `SubjectPublicKeyInfo`.
#[derive(Debug)]
pub(super) enum PublicKey<'a> {
    /// DER `RSAPublicKey` (PKCS#1), as aws-lc-rs takes it.
    Rsa(&'a [u8]),
    Dsa(super::dsa::DsaKey),
}

/// Reads an RSA or DSA key from the DER of a `SubjectPublicKeyInfo`.
pub(super) fn public_key(spki: &[u8]) -> Result<PublicKey<'_>, AttestError> {
    let what = "the certificate's public key";
    let bad = |e: AttestError| AttestError::BadTrustAnchor(e.to_string());
    let mut top = Reader::new(spki);
    let seq = top.expect(SEQUENCE, what).map_err(bad)?;
    let mut r = seq.children(what).map_err(bad)?;
    let alg = r.read(what).map_err(bad)?;
    let (oid, params) = ber::algorithm(&alg, what).map_err(bad)?;
    let bits = r
        .expect(BIT_STRING, what)
        .and_then(|b| b.bit_string(what))
        .map_err(bad)?;
    if oid == OID_RSA {
        Ok(PublicKey::Rsa(bits))
    } else if oid == OID_DSA {
        let params = params.ok_or_else(|| {
            AttestError::BadTrustAnchor("the DSA key has no domain parameters".into())
        })?;
        super::dsa::DsaKey::from_spki_parts(&params, bits).map(PublicKey::Dsa)
    } else {
        Err(AttestError::BadTrustAnchor(format!(
            "the certificate's key type {} is neither RSA nor DSA",
            ber::oid_string(oid)
        )))
    }
}

/// Splits a DER `RSAPublicKey` into modulus and exponent magnitudes.
pub(super) fn rsa_components(der: &[u8]) -> Result<(&[u8], &[u8]), AttestError> {
    let what = "RSA public key";
    let mut top = Reader::new(der);
    let seq = top.expect(SEQUENCE, what)?;
    top.finish(what)?;
    let mut r = seq.children(what)?;
    let n = r.expect(INTEGER, what)?.unsigned(what)?;
    let e = r.expect(INTEGER, what)?.unsigned(what)?;
    r.finish(what)?;
    Ok((n, e))
}
