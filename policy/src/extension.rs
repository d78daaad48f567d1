//! The AppID X.509 extension codec.
//!
//! The extension's `extnValue` holds a DER `UTF8String` whose content is the
//! compact JSON claims document ([`AppIdClaims`]), at most
//! [`MAX_CLAIMS_LEN`] bytes. The extension is non-critical: SPIFFE-aware tools
//! that do not know it still accept the certificate.
//!
//! Design bias: *reject early, say exactly why*. The input comes from a peer
//! we have not authorized yet, so decoding checks the size before anything
//! else, accepts only strict DER, and names the first thing that is wrong as
//! an [`ExtensionError`] variant; it never panics on any byte string.

use der::{Decode, Encode, Tag, Tagged};
use thiserror::Error;

use crate::claims::{AppIdClaims, CLAIMS_VERSION};

/// The AppID extension OID, a UUID OID (ITU-T X.667) in dotted form.
pub const APPID_OID: &str = "2.25.130917387716018385405044382042487633896";

/// The DER content octets of [`APPID_OID`] (no tag, no length), for code that
/// has to find or write the OID as bytes.
pub const APPID_OID_DER: [u8; 20] = [
    0x69, 0x81, 0xc4, 0xfd, 0xe2, 0xe3, 0xf7, 0x9a, 0xd2, 0xbc, 0x97, 0xa4, 0xf1, 0xea, 0xe4, 0xe1,
    0xb5, 0xd6, 0xef, 0x68,
];

/// The largest claims document (JSON bytes) a certificate may carry.
pub const MAX_CLAIMS_LEN: usize = 2048;

/// Why an AppID extension value was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ExtensionError {
    #[error("AppID extension is not a DER UTF8String: {0}")]
    NotUtf8String(String),
    #[error("AppID claims are {0} bytes; at most {MAX_CLAIMS_LEN} are allowed")]
    TooLarge(usize),
    #[error("AppID claims are not valid UTF-8")]
    InvalidUtf8,
    #[error("AppID claims are not valid JSON: {0}")]
    InvalidJson(String),
    #[error("AppID claims have no numeric version `v`")]
    MissingVersion,
    #[error("AppID claims version {0} is not supported (this build understands v{CLAIMS_VERSION})")]
    UnsupportedVersion(u64),
}

/// Encodes claims as the extension's `extnValue` (a DER UTF8String).
///
/// Fails with [`ExtensionError::TooLarge`] when the JSON exceeds
/// [`MAX_CLAIMS_LEN`], so an issuer can never produce a certificate that
/// every verifier would reject.
pub fn encode(claims: &AppIdClaims) -> Result<Vec<u8>, ExtensionError> {
    let json = claims.to_json();
    if json.len() > MAX_CLAIMS_LEN {
        return Err(ExtensionError::TooLarge(json.len()));
    }
    let value = der::asn1::Utf8StringRef::new(&json)
        .map_err(|e| ExtensionError::NotUtf8String(e.to_string()))?;
    value
        .to_der()
        .map_err(|e| ExtensionError::NotUtf8String(e.to_string()))
}

/// Decodes the extension's `extnValue` into claims, strictly.
pub fn decode(extn_value: &[u8]) -> Result<AppIdClaims, ExtensionError> {
    // A DER header for content up to 64 KiB is at most 4 bytes; anything
    // longer than that plus the limit cannot be valid, so refuse it before
    // parsing.
    if extn_value.len() > MAX_CLAIMS_LEN + 4 {
        return Err(ExtensionError::TooLarge(extn_value.len()));
    }
    let any = der::asn1::AnyRef::from_der(extn_value)
        .map_err(|e| ExtensionError::NotUtf8String(e.to_string()))?;
    if any.tag() != Tag::Utf8String {
        return Err(ExtensionError::NotUtf8String(format!(
            "found {} instead",
            any.tag()
        )));
    }
    let content = any.value();
    if content.len() > MAX_CLAIMS_LEN {
        return Err(ExtensionError::TooLarge(content.len()));
    }
    let text = std::str::from_utf8(content).map_err(|_| ExtensionError::InvalidUtf8)?;
    decode_json(text)
}

/// Parses a claims JSON document, checking its version first.
pub fn decode_json(text: &str) -> Result<AppIdClaims, ExtensionError> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| ExtensionError::InvalidJson(e.to_string()))?;
    let version = value
        .get("v")
        .and_then(serde_json::Value::as_u64)
        .ok_or(ExtensionError::MissingVersion)?;
    if version != u64::from(CLAIMS_VERSION) {
        return Err(ExtensionError::UnsupportedVersion(version));
    }
    serde_json::from_value(value).map_err(|e| ExtensionError::InvalidJson(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::claims::{Vulns, attestation};
    use proptest::prelude::*;

    fn sample() -> AppIdClaims {
        let mut claims = AppIdClaims::new("spiffe://prod.example/ns/shop/sa/web", "join_token");
        claims.labels.insert("app".into(), "web".into());
        claims
    }

    /// Encodes the arcs of a dotted OID as DER content octets.
    fn oid_content(dotted: &str) -> Vec<u8> {
        let arcs: Vec<u128> = dotted.split('.').map(|a| a.parse().unwrap()).collect();
        let mut out = Vec::new();
        let mut push = |mut arc: u128| {
            let mut groups = vec![(arc & 0x7f) as u8];
            arc >>= 7;
            while arc > 0 {
                groups.push((arc & 0x7f) as u8 | 0x80);
                arc >>= 7;
            }
            out.extend(groups.iter().rev());
        };
        push(arcs[0] * 40 + arcs[1]);
        for &arc in &arcs[2..] {
            push(arc);
        }
        out
    }

    #[test]
    fn oid_bytes_match_the_dotted_oid() {
        assert_eq!(oid_content(APPID_OID), APPID_OID_DER);
    }

    #[test]
    fn round_trip() {
        let claims = sample();
        let der = encode(&claims).unwrap();
        assert_eq!(der[0], 0x0c, "UTF8String tag");
        assert_eq!(decode(&der).unwrap(), claims);
    }

    #[test]
    fn unknown_top_level_keys_are_ignored() {
        let json = r#"{"v":1,"id":"spiffe://td/x","attestation":"manual","future":{"a":1}}"#;
        let der = der::asn1::Utf8StringRef::new(json)
            .unwrap()
            .to_der()
            .unwrap();
        assert_eq!(decode(&der).unwrap().id, "spiffe://td/x");
    }

    #[test]
    fn each_malformation_has_its_own_error() {
        let utf8 = |s: &str| der::asn1::Utf8StringRef::new(s).unwrap().to_der().unwrap();
        assert_eq!(
            decode(&utf8(r#"{"v":2,"id":"x","attestation":"manual"}"#)),
            Err(ExtensionError::UnsupportedVersion(2))
        );
        assert_eq!(
            decode(&utf8(r#"{"id":"x","attestation":"manual"}"#)),
            Err(ExtensionError::MissingVersion)
        );
        assert!(matches!(
            decode(&utf8("{not json")),
            Err(ExtensionError::InvalidJson(_))
        ));
        assert!(matches!(
            decode(&utf8(r#"{"v":1}"#)),
            Err(ExtensionError::InvalidJson(_))
        ));
        // Same bytes, wrong tag (OCTET STRING).
        let mut octets = utf8(r#"{"v":1,"id":"x","attestation":"manual"}"#);
        octets[0] = 0x04;
        assert!(matches!(
            decode(&octets),
            Err(ExtensionError::NotUtf8String(_))
        ));
        // A UTF8String header around invalid UTF-8.
        assert_eq!(
            decode(&[0x0c, 0x02, 0xff, 0xfe]),
            Err(ExtensionError::InvalidUtf8)
        );
        // Trailing garbage after the string is not DER.
        let mut trailing = utf8(r#"{"v":1,"id":"x","attestation":"manual"}"#);
        trailing.push(0);
        assert!(matches!(
            decode(&trailing),
            Err(ExtensionError::NotUtf8String(_))
        ));
        // Non-minimal length encoding is not DER.
        assert!(matches!(
            decode(&[0x0c, 0x81, 0x02, b'{', b'}']),
            Err(ExtensionError::NotUtf8String(_))
        ));
    }

    #[test]
    fn oversized_claims_are_refused_on_both_sides() {
        let mut claims = sample();
        claims.labels.insert("big".into(), "x".repeat(3000));
        assert!(matches!(encode(&claims), Err(ExtensionError::TooLarge(_))));
        let json = claims.to_json();
        let der = der::asn1::Utf8StringRef::new(&json)
            .unwrap()
            .to_der()
            .unwrap();
        assert!(matches!(decode(&der), Err(ExtensionError::TooLarge(_))));
        // Exactly at the limit is fine.
        let mut at_limit = sample();
        let room = MAX_CLAIMS_LEN - at_limit.to_json().len() - r#","pad":"""#.len();
        at_limit.labels.insert("pad".into(), "y".repeat(room));
        assert_eq!(at_limit.to_json().len(), MAX_CLAIMS_LEN);
        assert_eq!(decode(&encode(&at_limit).unwrap()).unwrap(), at_limit);
    }

    fn arb_text() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9 ._/:\\-\"\\\\é€]{0,24}"
    }

    prop_compose! {
        fn arb_claims()(
            id in arb_text(),
            labels in proptest::collection::btree_map(arb_text(), arb_text(), 0..6),
            counts in proptest::array::uniform5(0u64..1_000_000),
            with_vulns in any::<bool>(),
        ) -> AppIdClaims {
            let mut claims = AppIdClaims::new(id, attestation::MANUAL);
            claims.labels = labels;
            if with_vulns {
                claims.vulns = Some(Vulns {
                    critical: counts[0], high: counts[1], medium: counts[2],
                    low: counts[3], unknown: counts[4],
                    scanner: "trivy".into(), report: "sha256:ab".into(), scanned_at: None,
                });
            }
            claims
        }
    }

    proptest! {
        #[test]
        fn encode_then_decode_round_trips(claims in arb_claims()) {
            let der = encode(&claims).unwrap();
            prop_assert_eq!(decode(&der).unwrap(), claims);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..3000)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn arbitrary_utf8string_content_never_panics(text in ".{0,200}") {
            if let Ok(der) = der::asn1::Utf8StringRef::new(&text).and_then(|s| s.to_der()) {
                let _ = decode(&der);
            }
        }
    }
}
