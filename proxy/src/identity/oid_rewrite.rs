//! Writing the AppID extension OID, which rcgen cannot express.
//!
//! The AppID OID is a UUID OID, `2.25.<128-bit integer>`. rcgen takes OID
//! arcs as `u64`, so it cannot write that arc. Rather than hand-encode whole
//! certificates, we let rcgen build the certificate with a *placeholder* OID
//! whose DER encoding has exactly the same length as the real one, and swap
//! the bytes:
//!
//! 1. the placeholder goes into the certificate as a custom extension;
//! 2. rcgen hands the to-be-signed bytes to our [`RewritingSigner`], which
//!    replaces the placeholder with the real OID *before* signing;
//! 3. the caller applies the same replacement ([`rewrite`]) to rcgen's output,
//!    so the TBS inside the certificate is exactly the signed one.
//!
//! Equal lengths mean no DER length field anywhere changes. The placeholder
//! is 22 bytes of high-entropy OID encoding that nothing else in a
//! certificate can contain by accident; `openssl verify` in the tests proves
//! the signature covers the rewritten bytes.

use appid_policy::extension::APPID_OID_DER;
use rcgen::{CustomExtension, KeyPair, PublicKeyData, SignatureAlgorithm, SigningKey};

/// `2.25.(2^62 + "APPID").(2^63 + "APPID")`: 1 + 9 + 10 = 20 content bytes,
/// the length of the real OID's content.
const PLACEHOLDER_ARCS: [u64; 4] = [
    2,
    25,
    (1 << 62) | 0x41_5050_4944,
    (1 << 63) | 0x41_5050_4944,
];

/// DER tag and length of an OID with 20 content bytes.
const OID_HEADER: [u8; 2] = [0x06, 20];

/// An AppID extension (non-critical) carrying `extn_value`, under the
/// placeholder OID that [`rewrite`] turns into the real one.
pub(crate) fn appid_extension(extn_value: Vec<u8>) -> CustomExtension {
    let mut ext = CustomExtension::from_oid_content(&PLACEHOLDER_ARCS, extn_value);
    ext.set_criticality(false);
    ext
}

/// Replaces every placeholder OID in `der` with the AppID OID.
pub(crate) fn rewrite(der: &[u8]) -> Vec<u8> {
    let from = tlv(&placeholder_content());
    let to = tlv(&APPID_OID_DER);
    let mut out = Vec::with_capacity(der.len());
    let mut i = 0;
    while i < der.len() {
        if der[i..].starts_with(&from) {
            out.extend_from_slice(&to);
            i += from.len();
        } else {
            out.push(der[i]);
            i += 1;
        }
    }
    out
}

/// Signs with the CA key after rewriting the placeholder OID.
pub(crate) struct RewritingSigner<'a> {
    pub key: &'a KeyPair,
}

impl PublicKeyData for RewritingSigner<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.key.der_bytes()
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.key.algorithm()
    }
}

impl SigningKey for RewritingSigner<'_> {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.key.sign(&rewrite(msg))
    }
}

fn tlv(content: &[u8]) -> Vec<u8> {
    let mut out = OID_HEADER.to_vec();
    out.extend_from_slice(content);
    out
}

/// DER content octets of [`PLACEHOLDER_ARCS`].
fn placeholder_content() -> Vec<u8> {
    let mut out = vec![(PLACEHOLDER_ARCS[0] * 40 + PLACEHOLDER_ARCS[1]) as u8];
    for &arc in &PLACEHOLDER_ARCS[2..] {
        let mut groups = vec![(arc & 0x7f) as u8];
        let mut rest = arc >> 7;
        while rest > 0 {
            groups.push((rest & 0x7f) as u8 | 0x80);
            rest >>= 7;
        }
        out.extend(groups.iter().rev());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholder_has_the_length_of_the_real_oid() {
        assert_eq!(placeholder_content().len(), APPID_OID_DER.len());
        assert_eq!(OID_HEADER[1] as usize, APPID_OID_DER.len());
    }

    #[test]
    fn rewrite_replaces_only_the_placeholder() {
        let mut input = b"abc".to_vec();
        input.extend(tlv(&placeholder_content()));
        input.extend(b"xyz");
        let out = rewrite(&input);
        assert_eq!(out.len(), input.len());
        assert!(out.starts_with(b"abc") && out.ends_with(b"xyz"));
        assert_eq!(&out[3..25], tlv(&APPID_OID_DER).as_slice());
    }
}
