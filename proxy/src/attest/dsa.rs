//! DSA signature verification (FIPS 186-4 section 4.7), for the DSA-signed
//! `/pkcs7` AWS identity documents.
//!
//! aws-lc-rs exposes no DSA. Verification uses only public values, so there
//! is no secret to leak through timing; it is the textbook computation on
//! `num-bigint` (already built for `x509-parser`), with the domain
//! parameters and both signature halves range-checked first.

use num_bigint::BigUint;

use super::AttestError;
use super::ber::{INTEGER, Reader, SEQUENCE, Tlv};

/// A DSA public key: domain parameters and `y`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct DsaKey {
    p: BigUint,
    q: BigUint,
    g: BigUint,
    y: BigUint,
}

fn untrusted(why: &str) -> AttestError {
    AttestError::BadTrustAnchor(format!("DSA key: {why}"))
}

impl DsaKey {
    /// From the `Dss-Parms` of the algorithm identifier and the subject
    /// public key bits (a DER INTEGER `y`).
    pub(super) fn from_spki_parts(params: &Tlv<'_>, key_bits: &[u8]) -> Result<Self, AttestError> {
        let what = "DSA domain parameters";
        let wrap = |e: AttestError| AttestError::BadTrustAnchor(e.to_string());
        if params.tag != SEQUENCE {
            return Err(untrusted("domain parameters are not a SEQUENCE"));
        }
        let mut r = params.children(what).map_err(wrap)?;
        let int = |r: &mut Reader<'_>| -> Result<BigUint, AttestError> {
            let bytes = r.expect(INTEGER, what).and_then(|t| t.unsigned(what));
            bytes.map(BigUint::from_bytes_be).map_err(wrap)
        };
        let p = int(&mut r)?;
        let q = int(&mut r)?;
        let g = int(&mut r)?;
        r.finish(what).map_err(wrap)?;
        let mut yr = Reader::new(key_bits);
        let y = int(&mut yr)?;
        yr.finish(what).map_err(wrap)?;
        DsaKey::new(p, q, g, y)
    }

    fn new(p: BigUint, q: BigUint, g: BigUint, y: BigUint) -> Result<Self, AttestError> {
        let one = BigUint::from(1u8);
        if !(1024..=3072).contains(&p.bits()) || !p.bit(0) {
            return Err(untrusted("p must be an odd number of 1024 to 3072 bits"));
        }
        if ![160, 224, 256].contains(&q.bits()) || !q.bit(0) {
            return Err(untrusted("q must be an odd number of 160, 224 or 256 bits"));
        }
        if (&p - &one) % &q != BigUint::ZERO {
            return Err(untrusted("q does not divide p - 1"));
        }
        if g <= one || g >= p || y <= one || y >= p {
            return Err(untrusted("g and y must lie in 2..p-1"));
        }
        Ok(DsaKey { p, q, g, y })
    }

    /// Whether `signature` (DER `Dss-Sig-Value ::= SEQUENCE { r, s }`) is
    /// valid for the message whose hash is `digest`.
    pub(super) fn verify(&self, digest: &[u8], signature: &[u8]) -> Result<bool, AttestError> {
        let what = "DSA signature";
        let mut top = Reader::new(signature);
        let seq = top.expect(SEQUENCE, what)?;
        top.finish(what)?;
        let mut rs = seq.children(what)?;
        let r = BigUint::from_bytes_be(rs.expect(INTEGER, what)?.unsigned(what)?);
        let s = BigUint::from_bytes_be(rs.expect(INTEGER, what)?.unsigned(what)?);
        rs.finish(what)?;
        let q = &self.q;
        if r == BigUint::ZERO || &r >= q || s == BigUint::ZERO || &s >= q {
            return Ok(false);
        }
        // z: the leftmost min(N, outlen) bits of the hash.
        let n_bits = q.bits();
        let mut z = BigUint::from_bytes_be(digest);
        let out_bits = 8 * digest.len() as u64;
        if out_bits > n_bits {
            z >>= out_bits - n_bits;
        }
        let Some(w) = s.modinv(q) else {
            return Ok(false);
        };
        let u1 = (&z * &w) % q;
        let u2 = (&r * &w) % q;
        let v = (self.g.modpow(&u1, &self.p) * self.y.modpow(&u2, &self.p)) % &self.p % q;
        Ok(v == r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A toy group (p = 2q + 1 is too small for `new`, so built directly) to
    /// check the arithmetic against a hand-computed signature.
    #[test]
    fn textbook_example() {
        // p = 23, q = 11, g = 4 (order 11), x = 3, y = 4^3 mod 23 = 18.
        let key = DsaKey {
            p: 23u8.into(),
            q: 11u8.into(),
            g: 4u8.into(),
            y: 18u8.into(),
        };
        // k = 7: r = (4^7 mod 23) mod 11 = 8 mod 11 = 8;
        // s = k^-1 (z + x r) mod 11 with z = 5: 7^-1 = 8, (5 + 24) = 29 = 7,
        // s = 8 * 7 mod 11 = 1.
        let sig = [0x30, 0x06, 0x02, 0x01, 8, 0x02, 0x01, 1];
        // A digest of one octet with value 5 has 8 bits > N = 4 bits, so it
        // is shifted; give it as 5 << 4 to land on z = 5.
        assert!(key.verify(&[5 << 4], &sig).unwrap());
        assert!(!key.verify(&[6 << 4], &sig).unwrap());
        let zero_s = [0x30, 0x06, 0x02, 0x01, 8, 0x02, 0x01, 0];
        assert!(!key.verify(&[5 << 4], &zero_s).unwrap());
    }

    #[test]
    fn refuses_weak_parameters() {
        let small = DsaKey::new(23u8.into(), 11u8.into(), 4u8.into(), 18u8.into());
        assert!(matches!(small, Err(AttestError::BadTrustAnchor(_))));
    }
}
