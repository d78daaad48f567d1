//! SPIFFE bundles in their standard form: a JWK Set (SPIFFE Trust Domain and
//! Bundle, §4), what one trust domain's authority publishes at its bundle
//! endpoint and another's fetches to federate with it.
//!
//! Design bias: *strict in, plain out*. A bundle comes from another
//! organization's server, so decoding trusts nothing: the document and the
//! number of keys are bounded, each X.509 authority must be exactly one
//! certificate in `x5c`, that certificate must be a CA, and the JWK's key
//! parameters (`kty`, `crv`, `x`, `y`, `n`, `e`) must describe the key of
//! that very certificate. One bad X.509 entry refuses the whole bundle (the
//! caller keeps the last good one): a bundle silently missing a root would
//! fail handshakes later for no visible reason. Keys of other uses
//! (`jwt-svid`) are skipped, as the spec asks of uses a reader does not
//! implement.
//!
//! Only the X.509 part of the format is implemented: appid issues X509-SVIDs
//! and no JWT-SVIDs.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use x509_parser::public_key::PublicKey;

/// Largest bundle document accepted (SPIRE's own are a few KiB).
pub const MAX_BUNDLE_BYTES: usize = 1024 * 1024;
/// Most keys a bundle may hold.
pub const MAX_KEYS: usize = 256;

/// The `use` of a key that is an X.509 authority.
const X509_SVID: &str = "x509-svid";

/// What a bundle says: the trust domain's X.509 authorities, and when to
/// look again.
#[derive(Debug, Clone, PartialEq)]
pub struct SpiffeBundle {
    pub x509_authorities: Vec<CertificateDer<'static>>,
    /// `spiffe_refresh_hint`, seconds: how often the publisher suggests
    /// fetching.
    pub refresh_hint: Option<u64>,
    /// `spiffe_sequence`: increases whenever the publisher's bundle changes.
    pub sequence: Option<u64>,
}

/// Why a bundle document was refused. `key` numbers the JWK from 1.
#[derive(Debug, Error, PartialEq)]
pub enum BundleFormatError {
    #[error("the bundle is {0} bytes; at most {MAX_BUNDLE_BYTES} are accepted")]
    TooLarge(usize),
    #[error("the bundle is not a JWK Set: {0}")]
    NotJwks(String),
    #[error("the bundle has {0} keys; at most {MAX_KEYS} are accepted")]
    TooManyKeys(usize),
    #[error("key #{key}: no `use`; a SPIFFE bundle key says what it is for (x509-svid, jwt-svid)")]
    NoUse { key: usize },
    #[error(
        "key #{key}: an x509-svid key must carry exactly one certificate in `x5c`, it has {count}"
    )]
    X5cCount { key: usize, count: usize },
    #[error("key #{key}: `x5c` is not base64 DER: {detail}")]
    BadBase64 { key: usize, detail: String },
    #[error("key #{key}: the certificate does not parse: {detail}")]
    BadCertificate { key: usize, detail: String },
    #[error("key #{key}: the certificate is not a CA; an X.509 authority must be one")]
    NotACa { key: usize },
    #[error("key #{key}: the key parameters do not match the certificate's key ({detail})")]
    KeyMismatch { key: usize, detail: String },
    #[error("the bundle has no X.509 authority")]
    NoX509Authority,
    #[error("certificate #{index}: {detail}")]
    Unencodable { index: usize, detail: String },
}

/// One JWK as the bundle format writes it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Jwk {
    #[serde(rename = "use", default, skip_serializing_if = "Option::is_none")]
    use_: Option<String>,
    #[serde(default)]
    kty: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    crv: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    x: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    y: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    n: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    e: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    x5c: Option<Vec<String>>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Jwks {
    keys: Vec<Jwk>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    spiffe_sequence: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    spiffe_refresh_hint: Option<u64>,
}

/// The JWK key parameters of a certificate's public key.
#[derive(Debug, PartialEq)]
struct KeyParams {
    kty: &'static str,
    crv: Option<&'static str>,
    x: Option<String>,
    y: Option<String>,
    n: Option<String>,
    e: Option<String>,
}

const OID_P256: &str = "1.2.840.10045.3.1.7";
const OID_P384: &str = "1.3.132.0.34";
const OID_ED25519: &str = "1.3.101.112";

/// The key parameters of `cert`'s key, or why it has none we can write.
fn key_params(cert: &x509_parser::certificate::X509Certificate<'_>) -> Result<KeyParams, String> {
    let spki = cert.public_key();
    let b64 = |bytes: &[u8]| Some(URL_SAFE_NO_PAD.encode(bytes));
    if spki.algorithm.algorithm.to_id_string() == OID_ED25519 {
        return Ok(KeyParams {
            kty: "OKP",
            crv: Some("Ed25519"),
            x: b64(&spki.subject_public_key.data),
            y: None,
            n: None,
            e: None,
        });
    }
    match spki.parsed().map_err(|e| e.to_string())? {
        PublicKey::EC(point) => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|oid| oid.to_id_string());
            let (crv, size) = match curve.as_deref() {
                Some(OID_P256) => ("P-256", 32),
                Some(OID_P384) => ("P-384", 48),
                other => return Err(format!("unsupported EC curve {other:?}")),
            };
            // Uncompressed point: 0x04 || x || y.
            match point.data() {
                [4, rest @ ..] if rest.len() == 2 * size => Ok(KeyParams {
                    kty: "EC",
                    crv: Some(crv),
                    x: b64(&rest[..size]),
                    y: b64(&rest[size..]),
                    n: None,
                    e: None,
                }),
                _ => Err("the EC point is not uncompressed".into()),
            }
        }
        PublicKey::RSA(rsa) => {
            let trim = |bytes: &[u8]| {
                let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
                bytes[first..].to_vec()
            };
            Ok(KeyParams {
                kty: "RSA",
                crv: None,
                x: None,
                y: None,
                n: b64(&trim(rsa.modulus)),
                e: b64(&trim(rsa.exponent)),
            })
        }
        _ => Err("unsupported key type".into()),
    }
}

/// A trust domain's roots from a file: a SPIFFE bundle (JWKS, what a
/// bundle endpoint serves) or PEM certificates. The error names the file.
pub fn read_roots_file(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = super::files::read_small(path).map_err(|e| e.to_string())?;
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
        decode(&bytes)
            .map(|b| b.x509_authorities)
            .map_err(|e| format!("{}: {e}", path.display()))
    } else {
        super::files::parse_certs(path, &bytes).map_err(|e| e.to_string())
    }
}

/// Writes `roots` as a SPIFFE bundle.
pub fn encode(
    roots: &[CertificateDer<'_>],
    refresh_hint: Option<u64>,
    sequence: Option<u64>,
) -> Result<String, BundleFormatError> {
    let keys = roots
        .iter()
        .enumerate()
        .map(|(i, der)| {
            let unencodable = |detail: String| BundleFormatError::Unencodable {
                index: i + 1,
                detail,
            };
            let (_, cert) =
                x509_parser::parse_x509_certificate(der).map_err(|e| unencodable(e.to_string()))?;
            let params = key_params(&cert).map_err(unencodable)?;
            Ok(Jwk {
                use_: Some(X509_SVID.into()),
                kty: params.kty.into(),
                crv: params.crv.map(Into::into),
                x: params.x,
                y: params.y,
                n: params.n,
                e: params.e,
                x5c: Some(vec![STANDARD.encode(der.as_ref())]),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let jwks = Jwks {
        keys,
        spiffe_sequence: sequence,
        spiffe_refresh_hint: refresh_hint,
    };
    serde_json::to_string_pretty(&jwks).map_err(|e| BundleFormatError::Unencodable {
        index: 0,
        detail: e.to_string(),
    })
}

/// Reads a SPIFFE bundle document, strictly (see the module docs).
pub fn decode(document: &[u8]) -> Result<SpiffeBundle, BundleFormatError> {
    if document.len() > MAX_BUNDLE_BYTES {
        return Err(BundleFormatError::TooLarge(document.len()));
    }
    let jwks: Jwks =
        serde_json::from_slice(document).map_err(|e| BundleFormatError::NotJwks(e.to_string()))?;
    if jwks.keys.len() > MAX_KEYS {
        return Err(BundleFormatError::TooManyKeys(jwks.keys.len()));
    }
    let mut x509_authorities = Vec::new();
    for (i, jwk) in jwks.keys.iter().enumerate() {
        let key = i + 1;
        match jwk.use_.as_deref() {
            None => return Err(BundleFormatError::NoUse { key }),
            Some(X509_SVID) => x509_authorities.push(x509_authority(key, jwk)?),
            Some(_) => continue,
        }
    }
    if x509_authorities.is_empty() {
        return Err(BundleFormatError::NoX509Authority);
    }
    Ok(SpiffeBundle {
        x509_authorities,
        refresh_hint: jwks.spiffe_refresh_hint,
        sequence: jwks.spiffe_sequence,
    })
}

/// The certificate of one `x509-svid` key, checked against its parameters.
fn x509_authority(key: usize, jwk: &Jwk) -> Result<CertificateDer<'static>, BundleFormatError> {
    let x5c = jwk.x5c.as_deref().unwrap_or_default();
    let [encoded] = x5c else {
        return Err(BundleFormatError::X5cCount {
            key,
            count: x5c.len(),
        });
    };
    let der = STANDARD
        .decode(encoded)
        .map_err(|e| BundleFormatError::BadBase64 {
            key,
            detail: e.to_string(),
        })?;
    let (rest, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| {
        BundleFormatError::BadCertificate {
            key,
            detail: e.to_string(),
        }
    })?;
    if !rest.is_empty() {
        return Err(BundleFormatError::BadCertificate {
            key,
            detail: format!("{} bytes after the certificate", rest.len()),
        });
    }
    if !cert.is_ca() {
        return Err(BundleFormatError::NotACa { key });
    }
    let params =
        key_params(&cert).map_err(|detail| BundleFormatError::KeyMismatch { key, detail })?;
    let stated = KeyParams {
        kty: params.kty,
        crv: params.crv,
        x: jwk.x.clone(),
        y: jwk.y.clone(),
        n: jwk.n.clone(),
        e: jwk.e.clone(),
    };
    if jwk.kty != params.kty || jwk.crv.as_deref() != params.crv || stated != params {
        return Err(BundleFormatError::KeyMismatch {
            key,
            detail: format!(
                "the JWK says kty {:?} crv {:?}, the certificate's key is {} {:?}",
                jwk.kty, jwk.crv, params.kty, params.crv
            ),
        });
    }
    drop(cert);
    Ok(CertificateDer::from(der))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::ca::{Ca, KeyAlg};
    use proptest::prelude::*;

    fn ca_der(alg: KeyAlg) -> CertificateDer<'static> {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::init(dir.path(), "prod.example", alg).unwrap();
        ca.cert_der().clone()
    }

    #[test]
    fn round_trips_every_key_type_we_issue() {
        let roots = vec![ca_der(KeyAlg::EcdsaP256), ca_der(KeyAlg::Ed25519)];
        let text = encode(&roots, Some(300), Some(7)).unwrap();
        let bundle = decode(text.as_bytes()).unwrap();
        assert_eq!(bundle.x509_authorities, roots);
        assert_eq!(bundle.refresh_hint, Some(300));
        assert_eq!(bundle.sequence, Some(7));
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["keys"][0]["use"], "x509-svid");
        assert_eq!(value["keys"][0]["kty"], "EC");
        assert_eq!(value["keys"][0]["crv"], "P-256");
        assert_eq!(value["keys"][1]["kty"], "OKP");
    }

    /// A bundle as SPIRE writes it (its shape: `use`, `kty`, `crv`, `x`,
    /// `y`, `x5c`; a JWT key beside; sequence and hint), with our CA in it.
    #[test]
    fn reads_spire_shaped_bundles_and_skips_jwt_keys() {
        let root = ca_der(KeyAlg::EcdsaP256);
        let ours: serde_json::Value =
            serde_json::from_str(&encode(std::slice::from_ref(&root), None, None).unwrap())
                .unwrap();
        let mut x509 = ours["keys"][0].clone();
        x509["alg"] = "ES256".into(); // unknown members are ignored
        let document = serde_json::json!({
            "keys": [
                {"use": "jwt-svid", "kty": "EC", "kid": "C6vs25welZOx6WksNYfbMfiw9l96pMnD",
                 "crv": "P-256", "x": "ngLYQnlfF6GsojUwqtcEE3WgTNG2RUlsGhK73RNEl5k",
                 "y": "tKbiDSUSsQ3F1P7wteeHNXIcU-cx6CgSbroeQrQHTLM"},
                x509,
            ],
            "spiffe_sequence": 1,
            "spiffe_refresh_hint": 60
        });
        let bundle = decode(document.to_string().as_bytes()).unwrap();
        assert_eq!(bundle.x509_authorities, vec![root]);
        assert_eq!(bundle.refresh_hint, Some(60));
    }

    #[test]
    fn refuses_what_is_not_a_clean_x509_authority() {
        let root = ca_der(KeyAlg::EcdsaP256);
        let other = ca_der(KeyAlg::EcdsaP256);
        let good: serde_json::Value =
            serde_json::from_str(&encode(std::slice::from_ref(&root), None, None).unwrap())
                .unwrap();
        let with = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut doc = good.clone();
            f(&mut doc["keys"][0]);
            decode(doc.to_string().as_bytes())
        };
        assert_eq!(
            with(&|k| k["x5c"] = serde_json::json!([])),
            Err(BundleFormatError::X5cCount { key: 1, count: 0 })
        );
        let b64 = STANDARD.encode(root.as_ref());
        assert_eq!(
            with(&|k| k["x5c"] = serde_json::json!([b64, b64])),
            Err(BundleFormatError::X5cCount { key: 1, count: 2 })
        );
        assert!(matches!(
            with(&|k| k["x5c"] = serde_json::json!(["%%%"])),
            Err(BundleFormatError::BadBase64 { key: 1, .. })
        ));
        assert!(matches!(
            with(&|k| k["x5c"] = serde_json::json!([STANDARD.encode(b"not DER")])),
            Err(BundleFormatError::BadCertificate { key: 1, .. })
        ));
        // Another CA's certificate under this key's parameters.
        let other_b64 = STANDARD.encode(other.as_ref());
        assert!(matches!(
            with(&|k| k["x5c"] = serde_json::json!([other_b64])),
            Err(BundleFormatError::KeyMismatch { key: 1, .. })
        ));
        assert!(matches!(
            with(&|k| k["kty"] = "RSA".into()),
            Err(BundleFormatError::KeyMismatch { key: 1, .. })
        ));
        assert_eq!(
            with(&|k| {
                k.as_object_mut().unwrap().remove("use");
            }),
            Err(BundleFormatError::NoUse { key: 1 })
        );
        assert_eq!(
            with(&|k| k["use"] = "jwt-svid".into()),
            Err(BundleFormatError::NoX509Authority)
        );
        assert!(matches!(
            decode(b"{\"keys\": 3}"),
            Err(BundleFormatError::NotJwks(_))
        ));
        assert_eq!(
            decode(&vec![b' '; MAX_BUNDLE_BYTES + 1]),
            Err(BundleFormatError::TooLarge(MAX_BUNDLE_BYTES + 1))
        );
    }

    #[test]
    fn a_workload_leaf_is_not_an_authority() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::init(dir.path(), "prod.example", KeyAlg::EcdsaP256).unwrap();
        let id = crate::identity::spiffe::SpiffeId::parse("spiffe://prod.example/web").unwrap();
        let claims = appid_policy::AppIdClaims::new(id.as_str(), "manual");
        let key = KeyAlg::EcdsaP256.generate().unwrap();
        let issued = ca
            .issue(&id, &claims, &key, time::Duration::hours(1))
            .unwrap();
        let leaf = crate::identity::files::parse_certs(
            std::path::Path::new("leaf"),
            issued.pem.as_bytes(),
        )
        .unwrap()
        .remove(0);
        // encode() writes what it is given; decode() refuses it.
        let text = encode(&[leaf], None, None).unwrap();
        assert_eq!(
            decode(text.as_bytes()),
            Err(BundleFormatError::NotACa { key: 1 })
        );
    }

    proptest! {
        /// Whatever bytes arrive, decoding returns (never panics); and a
        /// valid bundle with bytes flipped either still decodes to
        /// certificates that parse or is refused.
        #[test]
        fn decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn a_damaged_bundle_is_refused_or_still_clean(
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4)
        ) {
            static GOOD: std::sync::OnceLock<String> = std::sync::OnceLock::new();
            let good = GOOD.get_or_init(|| encode(&[ca_der(KeyAlg::EcdsaP256)], Some(5), None).unwrap());
            let mut bytes = good.as_bytes().to_vec();
            for (at, value) in flips {
                let i = at.index(bytes.len());
                bytes[i] = value;
            }
            if let Ok(bundle) = decode(&bytes) {
                for der in &bundle.x509_authorities {
                    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
                    prop_assert!(cert.is_ca());
                }
            }
        }
    }
}
