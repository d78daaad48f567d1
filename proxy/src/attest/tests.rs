//! Tests for cloud attestation: (a) the real signed documents in
//! ../shared/fixtures (read in place; ground truth from its SOURCES.md),
//! (b) documents, PKCS#7 and tokens signed here with generated keys, so the
//! paths are covered without the fixtures, (c) properties: nothing panics,
//! and nothing altered verifies.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair, KeySize, PublicKeyComponents};
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _, RSA_PKCS1_SHA256,
};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use proptest::prelude::*;
use serde_json::json;

use super::aws::{AwsSignature, verify_iid};
use super::cms::{
    OID_CONTENT_TYPE, OID_DATA, OID_MESSAGE_DIGEST, OID_SHA1, OID_SHA256, OID_SHA256_WITH_RSA,
    OID_SIGNED_DATA,
};
use super::gcp::{GcpKeys, verify_iit};
use super::*;

fn secs(s: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(s)
}

// ---------------------------------------------------------------------------
// (a) Fixtures.

/// The shared fixture folder, or `None` (with the reason printed) when it is
/// absent outside CI. In CI (`CI=true`) a missing folder is a failure.
fn fixtures() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures");
    if dir.is_dir() {
        return Some(dir);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "fixture folder {} is missing and CI=true",
        dir.display()
    );
    eprintln!("skipped: fixture folder {} does not exist", dir.display());
    None
}

fn read(dir: &Path, rel: &str) -> Vec<u8> {
    std::fs::read(dir.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn text(dir: &Path, rel: &str) -> String {
    String::from_utf8(read(dir, rel)).unwrap()
}

const AWS_2026: &str = "aws-iid/ap-southeast-2-2026";
const AWS_2016: &str = "aws-iid/us-east-1-2016-dsa";
/// pendingTime of the 2026 document (2026-02-16T00:38:27Z).
const PENDING_2026: u64 = 1_771_202_307;
/// pendingTime of the 2016 document (2016-04-08T03:01:38Z).
const PENDING_2016: u64 = 1_460_084_498;

fn after_2026() -> SystemTime {
    secs(PENDING_2026 + 3600)
}

#[test]
fn aws_signature_fixture_attests() {
    let Some(f) = fixtures() else { return };
    let doc = read(&f, &format!("{AWS_2026}/document.json"));
    let sig = text(&f, &format!("{AWS_2026}/signature.b64"));
    let cert = read(&f, "aws-iid/certs/rsa/ap-southeast-2.pem");
    let id = verify_iid(
        &doc,
        AwsSignature::Rsa(&sig),
        &cert,
        Some("ap-southeast-2"),
        None,
        after_2026(),
    )
    .unwrap();
    assert_eq!(id.account_id, "189292791360");
    assert_eq!(id.region, "ap-southeast-2");
    assert_eq!(id.availability_zone, "ap-southeast-2a");
    assert_eq!(id.instance_id, "i-0c5541936caf78c12");
    assert_eq!(id.image_id, "ami-0cbde744623b7506b");
    assert_eq!(id.instance_type, "t4g.small");
    assert_eq!(id.architecture.as_deref(), Some("arm64"));
    assert_eq!(id.private_ip.as_deref(), Some("10.0.1.242"));
    assert_eq!(id.version.as_deref(), Some("2017-09-30"));
    assert_eq!(id.pending_time, secs(PENDING_2026));
    assert_eq!(id.signature_kind, "signature");
    assert_eq!(id.document, doc);
    assert_eq!(id.attestation(), "aws_iid");
    let cloud = id.to_cloud_claims();
    assert_eq!(
        serde_json::to_value(&cloud).unwrap(),
        json!({"provider":"aws","account":"189292791360","region":"ap-southeast-2",
               "zone":"ap-southeast-2a","instance":"i-0c5541936caf78c12",
               "image":"ami-0cbde744623b7506b","instance_type":"t4g.small"})
    );

    // The real clock is fine too: pendingTime is in the past.
    verify_iid(
        &doc,
        AwsSignature::Rsa(&sig),
        &cert,
        None,
        None,
        SystemTime::now(),
    )
    .unwrap();
    // Line breaks as the metadata service sends them are accepted.
    let wrapped: String = sig
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    verify_iid(
        &doc,
        AwsSignature::Rsa(&wrapped),
        &cert,
        None,
        None,
        after_2026(),
    )
    .unwrap();
}

#[test]
fn aws_signature_fixture_shares_key_with_us_east_1_but_region_is_checked() {
    let Some(f) = fixtures() else { return };
    let doc = read(&f, &format!("{AWS_2026}/document.json"));
    let sig = text(&f, &format!("{AWS_2026}/signature.b64"));
    let cert = read(&f, "aws-iid/certs/rsa/us-east-1.pem");
    // SOURCES.md: 17 regions share the 1024-bit key, so the signature verifies...
    let id = verify_iid(
        &doc,
        AwsSignature::Rsa(&sig),
        &cert,
        None,
        None,
        after_2026(),
    )
    .unwrap();
    assert_eq!(id.region, "ap-southeast-2");
    // ...and only the region check tells the document is not from us-east-1.
    let err = verify_iid(
        &doc,
        AwsSignature::Rsa(&sig),
        &cert,
        Some("us-east-1"),
        None,
        after_2026(),
    )
    .unwrap_err();
    assert_eq!(
        err,
        AttestError::RegionMismatch {
            document: "ap-southeast-2".into(),
            expected: "us-east-1".into()
        }
    );
    assert!(err.to_string().contains("ap-southeast-2"), "{err}");
    // A region whose 1024-bit key differs refuses the signature outright.
    let other = read(&f, "aws-iid/certs/rsa/af-south-1.pem");
    let err = verify_iid(
        &doc,
        AwsSignature::Rsa(&sig),
        &other,
        None,
        None,
        after_2026(),
    )
    .unwrap_err();
    assert!(matches!(err, AttestError::BadSignature(_)), "{err}");
}

#[test]
fn aws_rsa2048_fixture_attests_in_both_encodings_and_from_embedded_content() {
    let Some(f) = fixtures() else { return };
    let doc = read(&f, &format!("{AWS_2026}/document.json"));
    let cert = read(&f, "aws-iid/certs/rsa2048/ap-southeast-2.pem");
    for file in ["rsa2048.b64", "rsa2048.pem"] {
        let p7 = text(&f, &format!("{AWS_2026}/{file}"));
        let id = verify_iid(
            &doc,
            AwsSignature::Pkcs7Rsa2048(&p7),
            &cert,
            Some("ap-southeast-2"),
            None,
            after_2026(),
        )
        .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(id.instance_id, "i-0c5541936caf78c12");
        assert_eq!(id.signature_kind, "rsa2048");
        // Without a document, the content embedded in the PKCS#7 is used.
        let id = verify_iid(
            &[],
            AwsSignature::Pkcs7Rsa2048(&p7),
            &cert,
            None,
            None,
            after_2026(),
        )
        .unwrap();
        assert_eq!(
            id.document, doc,
            "SOURCES.md: byte-identical to the embedded content"
        );
    }
}

#[test]
fn aws_rsa2048_fixture_against_another_region_is_refused_as_wrong_key() {
    let Some(f) = fixtures() else { return };
    let doc = read(&f, &format!("{AWS_2026}/document.json"));
    let p7 = text(&f, &format!("{AWS_2026}/rsa2048.b64"));
    let cert = read(&f, "aws-iid/certs/rsa2048/us-east-1.pem");
    let err = verify_iid(
        &doc,
        AwsSignature::Pkcs7Rsa2048(&p7),
        &cert,
        None,
        None,
        after_2026(),
    )
    .unwrap_err();
    let AttestError::WrongKey(why) = &err else {
        panic!("expected WrongKey, got {err:?}")
    };
    assert!(
        why.contains("BD9B3A06FE76AF6B") && why.contains("B169CC401559A419"),
        "{why}"
    );
    assert_eq!(err.code(), "wrong_key");
}

#[test]
fn aws_fixture_negative_cases_are_refused() {
    let Some(f) = fixtures() else { return };
    let doc = read(&f, &format!("{AWS_2026}/document.json"));
    let bad_doc = read(&f, &format!("{AWS_2026}/invalid-document.json"));
    let sig = text(&f, &format!("{AWS_2026}/signature.b64"));
    let bad_sig = text(&f, &format!("{AWS_2026}/invalid-signature.b64"));
    let p7 = text(&f, &format!("{AWS_2026}/rsa2048.b64"));
    let rsa = read(&f, "aws-iid/certs/rsa/ap-southeast-2.pem");
    let rsa2048 = read(&f, "aws-iid/certs/rsa2048/ap-southeast-2.pem");
    let now = after_2026();

    let err = verify_iid(&bad_doc, AwsSignature::Rsa(&sig), &rsa, None, None, now).unwrap_err();
    assert!(matches!(err, AttestError::BadSignature(_)), "{err}");
    let err = verify_iid(&doc, AwsSignature::Rsa(&bad_sig), &rsa, None, None, now).unwrap_err();
    assert!(matches!(err, AttestError::BadSignature(_)), "{err}");
    let err = verify_iid(&bad_doc, AwsSignature::Rsa(&bad_sig), &rsa, None, None, now).unwrap_err();
    assert!(matches!(err, AttestError::BadSignature(_)), "{err}");
    let err = verify_iid(
        &bad_doc,
        AwsSignature::Pkcs7Rsa2048(&p7),
        &rsa2048,
        None,
        None,
        now,
    )
    .unwrap_err();
    assert_eq!(err, AttestError::ContentMismatch);
    // The /signature and the PKCS#7 need their own certificate sets.
    let err = verify_iid(&doc, AwsSignature::Rsa(&sig), &rsa2048, None, None, now).unwrap_err();
    assert!(matches!(err, AttestError::BadSignature(_)), "{err}");
    let err = verify_iid(&doc, AwsSignature::Pkcs7Rsa2048(&p7), &rsa, None, None, now).unwrap_err();
    assert!(matches!(err, AttestError::WrongKey(_)), "{err}");
    let dsa = read(&f, "aws-iid/certs/dsa/ap-southeast-2.pem");
    let err = verify_iid(&doc, AwsSignature::Pkcs7Rsa2048(&p7), &dsa, None, None, now).unwrap_err();
    assert!(matches!(err, AttestError::WrongKey(_)), "{err}");
    let err = verify_iid(&doc, AwsSignature::Pkcs7Dsa(&p7), &rsa2048, None, None, now).unwrap_err();
    assert!(matches!(err, AttestError::WrongKey(_)), "{err}");
}

#[test]
fn aws_fixture_tampering_is_refused() {
    let Some(f) = fixtures() else { return };
    let doc = read(&f, &format!("{AWS_2026}/document.json"));
    let sig = text(&f, &format!("{AWS_2026}/signature.b64"));
    let p7 = text(&f, &format!("{AWS_2026}/rsa2048.b64"));
    let rsa = read(&f, "aws-iid/certs/rsa/ap-southeast-2.pem");
    let rsa2048 = read(&f, "aws-iid/certs/rsa2048/ap-southeast-2.pem");
    let now = after_2026();

    // One changed digit of the account ID.
    let at = find(&doc, b"189292791360");
    let mut tampered = doc.clone();
    tampered[at] = b'2';
    let err = verify_iid(&tampered, AwsSignature::Rsa(&sig), &rsa, None, None, now).unwrap_err();
    assert!(matches!(err, AttestError::BadSignature(_)), "{err}");
    let err = verify_iid(
        &tampered,
        AwsSignature::Pkcs7Rsa2048(&p7),
        &rsa2048,
        None,
        None,
        now,
    )
    .unwrap_err();
    assert_eq!(err, AttestError::ContentMismatch);
    // A trailing newline is a different document too.
    let mut newline = doc.clone();
    newline.push(b'\n');
    let err = verify_iid(&newline, AwsSignature::Rsa(&sig), &rsa, None, None, now).unwrap_err();
    assert!(matches!(err, AttestError::BadSignature(_)), "{err}");

    // The same change inside the PKCS#7's embedded content: the signed
    // messageDigest no longer matches.
    let der = STANDARD.decode(p7.trim()).unwrap();
    let at = find(&der, b"189292791360");
    let mut der_tampered = der.clone();
    der_tampered[at] = b'2';
    let b64 = STANDARD.encode(&der_tampered);
    let err = verify_iid(
        &[],
        AwsSignature::Pkcs7Rsa2048(&b64),
        &rsa2048,
        None,
        None,
        now,
    )
    .unwrap_err();
    assert!(matches!(err, AttestError::BadSignature(_)), "{err}");
    // A flipped bit in the signature value (its last byte precedes the
    // BER end-of-contents octets, 6 of them after the SignerInfo).
    let mut der_sig = der.clone();
    let last = der_sig.len() - 7;
    der_sig[last] ^= 1;
    let b64 = STANDARD.encode(&der_sig);
    let err = verify_iid(
        &[],
        AwsSignature::Pkcs7Rsa2048(&b64),
        &rsa2048,
        None,
        None,
        now,
    )
    .unwrap_err();
    assert!(matches!(err, AttestError::BadSignature(_)), "{err}");
    // A flipped bit in the signed attributes (the signingTime).
    let at = find(&der, b"260216003828Z");
    let mut der_attr = der.clone();
    der_attr[at + 11] ^= 1;
    let b64 = STANDARD.encode(&der_attr);
    let err = verify_iid(
        &[],
        AwsSignature::Pkcs7Rsa2048(&b64),
        &rsa2048,
        None,
        None,
        now,
    )
    .unwrap_err();
    assert!(matches!(err, AttestError::BadSignature(_)), "{err}");
}

#[test]
fn aws_dsa_2016_fixture_attests() {
    let Some(f) = fixtures() else { return };
    let doc = read(&f, &format!("{AWS_2016}/document.json"));
    let p7 = text(&f, &format!("{AWS_2016}/pkcs7.pem"));
    let now = secs(PENDING_2016 + 60);
    for cert in [
        "aws-iid/certs/dsa/us-east-1.pem",
        &format!("{AWS_2016}/aws-dsa-cert.pem"),
    ] {
        let cert = read(&f, cert);
        let id = verify_iid(
            &doc,
            AwsSignature::Pkcs7Dsa(&p7),
            &cert,
            Some("us-east-1"),
            None,
            now,
        )
        .unwrap();
        assert_eq!(id.account_id, "121659014334");
        assert_eq!(id.instance_id, "i-f79fe56c");
        assert_eq!(id.image_id, "ami-fce3c696");
        assert_eq!(id.availability_zone, "us-east-1a");
        assert_eq!(id.instance_type, "t2.micro");
        assert_eq!(id.signature_kind, "pkcs7");
        let embedded =
            verify_iid(&[], AwsSignature::Pkcs7Dsa(&p7), &cert, None, None, now).unwrap();
        assert_eq!(embedded.document, doc);
    }
    // A region with another DSA key: wrong key, with both serials named.
    let other = read(&f, "aws-iid/certs/dsa/af-south-1.pem");
    let err = verify_iid(&doc, AwsSignature::Pkcs7Dsa(&p7), &other, None, None, now).unwrap_err();
    let AttestError::WrongKey(why) = &err else {
        panic!("expected WrongKey, got {err:?}")
    };
    assert!(
        why.contains("96BA48D9E55E1A67") && why.contains("A771B0AD41B8EECB"),
        "{why}"
    );
    // The signature given as the wrong kind.
    let cert = read(&f, "aws-iid/certs/dsa/us-east-1.pem");
    let err = verify_iid(
        &doc,
        AwsSignature::Pkcs7Rsa2048(&p7),
        &cert,
        None,
        None,
        now,
    )
    .unwrap_err();
    assert!(matches!(err, AttestError::UnsupportedAlgorithm(_)), "{err}");
    // Tampered document, tampered DSA signature.
    let mut tampered = doc.clone();
    tampered[find(&doc, b"121659014334")] = b'2';
    let err = verify_iid(
        &tampered,
        AwsSignature::Pkcs7Dsa(&p7),
        &cert,
        None,
        None,
        now,
    )
    .unwrap_err();
    assert_eq!(err, AttestError::ContentMismatch);
    let der = pem_body(&p7);
    let at = find(&der, &[0x02, 0x14, 0x3a, 0x3b]); // s of (r, s)
    let mut bad = der.clone();
    bad[at + 5] ^= 0x10;
    let armored = format!(
        "-----BEGIN PKCS7-----\n{}\n-----END PKCS7-----\n",
        STANDARD.encode(&bad)
    );
    let err = verify_iid(
        &doc,
        AwsSignature::Pkcs7Dsa(&armored),
        &cert,
        None,
        None,
        now,
    )
    .unwrap_err();
    assert!(matches!(err, AttestError::BadSignature(_)), "{err}");
}

#[test]
fn aws_clock_checks() {
    let Some(f) = fixtures() else { return };
    let doc = read(&f, &format!("{AWS_2026}/document.json"));
    let sig = text(&f, &format!("{AWS_2026}/signature.b64"));
    let cert = read(&f, "aws-iid/certs/rsa/ap-southeast-2.pem");
    let verify =
        |max_age, now| verify_iid(&doc, AwsSignature::Rsa(&sig), &cert, None, max_age, now);
    let err = verify(None, secs(PENDING_2026 - 3600)).unwrap_err();
    assert!(matches!(err, AttestError::NotYetValid(_)), "{err}");
    // Within the skew is fine.
    verify(None, secs(PENDING_2026 - 30)).unwrap();
    let hour = Some(Duration::from_secs(3600));
    verify(hour, secs(PENDING_2026 + 3599)).unwrap();
    let err = verify(hour, secs(PENDING_2026 + 7200)).unwrap_err();
    assert!(matches!(err, AttestError::Expired(_)), "{err}");
}

/// 2019-04-25 23:37:25Z .. 2019-04-26 00:37:25Z.
const IIT_IAT: u64 = 1_556_235_445;
const IIT_EXP: u64 = 1_556_239_045;
const IIT: &str = "gcp-iit/istio-mesh-expansion-2019.jwt";
const JWKS: &str = "gcp-iit/google-oauth2-v3-certs-2019-04-29.jwks.json";
const IIT_PEM: &str = "gcp-iit/google-26fc4cd23d387cbc490f60db54a94a6dd1653998.pub.pem";

#[test]
fn gcp_fixture_token_verifies_inside_its_validity() {
    let Some(f) = fixtures() else { return };
    let token = text(&f, IIT);
    let keys = GcpKeys::from_jwks_json(&read(&f, JWKS)).unwrap();
    assert_eq!(keys.len(), 2);
    let id = verify_iit(&token, &keys, "myaudience", secs(IIT_IAT + 60)).unwrap();
    assert_eq!(id.project_id, "mesh-expansion-235023");
    assert_eq!(id.project_number, "1000523393341");
    assert_eq!(id.zone, "us-central1-a");
    assert_eq!(id.instance_id, "3860110238946415859");
    assert_eq!(id.instance_name, "instance-1a");
    assert_eq!(id.instance_creation_timestamp, Some(1_553_099_295));
    assert!(id.license_ids.is_empty());
    assert_eq!(id.issued_at, secs(IIT_IAT));
    assert_eq!(id.expires_at, secs(IIT_EXP));
    assert_eq!(id.region(), Some("us-central1"));
    assert_eq!(id.attestation(), "gcp_iit");
    assert_eq!(
        serde_json::to_value(id.to_cloud_claims()).unwrap(),
        json!({"provider":"gcp","project":"mesh-expansion-235023","region":"us-central1",
               "zone":"us-central1-a","instance":"3860110238946415859"})
    );
    // The same key as PEM, with and without its kid.
    for kid in [Some("26fc4cd23d387cbc490f60db54a94a6dd1653998"), None] {
        let keys = GcpKeys::from_pem(&read(&f, IIT_PEM), kid).unwrap();
        verify_iit(&token, &keys, "myaudience", secs(IIT_EXP - 1)).unwrap();
    }
    let other_kid = GcpKeys::from_pem(&read(&f, IIT_PEM), Some("5d887f26")).unwrap();
    let err = verify_iit(&token, &other_kid, "myaudience", secs(IIT_IAT)).unwrap_err();
    assert!(matches!(err, AttestError::UnknownKid { .. }), "{err}");
}

#[test]
fn gcp_fixture_token_is_refused_when_expired_misdirected_or_altered() {
    let Some(f) = fixtures() else { return };
    let token = text(&f, IIT);
    let keys = GcpKeys::from_jwks_json(&read(&f, JWKS)).unwrap();
    let inside = secs(IIT_IAT + 60);

    let err = verify_iit(&token, &keys, "myaudience", SystemTime::now()).unwrap_err();
    assert!(matches!(err, AttestError::Expired(_)), "{err}");
    assert_eq!(err.code(), "expired");
    let err = verify_iit(&token, &keys, "myaudience", secs(IIT_EXP + 61)).unwrap_err();
    assert!(matches!(err, AttestError::Expired(_)), "{err}");
    let err = verify_iit(&token, &keys, "myaudience", secs(IIT_IAT - 3600)).unwrap_err();
    assert!(matches!(err, AttestError::NotYetValid(_)), "{err}");
    let err = verify_iit(&token, &keys, "https://authority.example", inside).unwrap_err();
    assert_eq!(
        err,
        AttestError::WrongAudience {
            got: "myaudience".into(),
            expected: "https://authority.example".into()
        }
    );
    let err = verify_iit(&token, &keys, "", inside).unwrap_err();
    assert!(matches!(err, AttestError::WrongAudience { .. }), "{err}");

    // A modified payload (another project) under the original signature.
    let parts: Vec<&str> = token.trim().split('.').collect();
    let payload = String::from_utf8(URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    let forged = payload.replace("mesh-expansion-235023", "mesh-expansion-666666");
    assert_ne!(forged, payload);
    let forged_token = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(&forged),
        parts[2]
    );
    let err = verify_iit(&forged_token, &keys, "myaudience", inside).unwrap_err();
    assert!(matches!(err, AttestError::BadSignature(_)), "{err}");

    // The header's alg rewritten: refused before any key is used.
    let header = String::from_utf8(URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    assert!(header.contains("RS256"), "{header}");
    for alg in ["none", "HS256", "RS512", "PS256", "ES256"] {
        let h = URL_SAFE_NO_PAD.encode(header.replace("RS256", alg));
        for sig in [parts[2], ""] {
            let t = format!("{h}.{}.{sig}", parts[1]);
            let err = verify_iit(&t, &keys, "myaudience", inside).unwrap_err();
            assert!(
                matches!(err, AttestError::UnsupportedAlgorithm(_)),
                "{alg}: {err}"
            );
        }
    }
    // HS256 "signed" with the public key as the HMAC secret: still refused.
    let h = URL_SAFE_NO_PAD.encode(header.replace("RS256", "HS256"));
    let signing_input = format!("{h}.{}", parts[1]);
    let secret = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &read(&f, IIT_PEM));
    let mac = aws_lc_rs::hmac::sign(&secret, signing_input.as_bytes());
    let t = format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(mac.as_ref()));
    let err = verify_iit(&t, &keys, "myaudience", inside).unwrap_err();
    assert!(matches!(err, AttestError::UnsupportedAlgorithm(_)), "{err}");

    // A JWKS without the token's key.
    let mut jwks: serde_json::Value = serde_json::from_slice(&read(&f, JWKS)).unwrap();
    jwks["keys"].as_array_mut().unwrap().remove(0);
    let keys = GcpKeys::from_jwks_json(jwks.to_string().as_bytes()).unwrap();
    let err = verify_iit(&token, &keys, "myaudience", inside).unwrap_err();
    let AttestError::UnknownKid { kid, known, .. } = &err else {
        panic!("expected UnknownKid, got {err:?}")
    };
    assert_eq!(kid, "26fc4cd23d387cbc490f60db54a94a6dd1653998");
    assert!(known.contains("5d887f26"), "{known}");
}

fn find(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap_or_else(|| panic!("{needle:02x?} not found"))
}

fn pem_body(pem: &str) -> Vec<u8> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    STANDARD.decode(body).unwrap()
}

// ---------------------------------------------------------------------------
// (b) Signed here, with generated keys.

struct Signer {
    key: KeyPair,
    cert_pem: String,
    issuer: Vec<u8>,
    serial: Vec<u8>,
}

/// One RSA-2048 key and a self-signed certificate for it, shared by the tests
/// (generating keys is the slow part).
fn signer() -> &'static Signer {
    static SIGNER: OnceLock<Signer> = OnceLock::new();
    SIGNER.get_or_init(|| {
        let key = KeyPair::generate(KeySize::Rsa2048).unwrap();
        let pkcs8 = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&key).unwrap();
        let rc_key = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
            &rustls_pki_types::PrivatePkcs8KeyDer::from(pkcs8.as_ref().to_vec()),
            &rcgen::PKCS_RSA_SHA256,
        )
        .unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.serial_number = Some(rcgen::SerialNumber::from(0x0102_0304_u64));
        let cert = params.self_signed(&rc_key).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.der()).unwrap();
        let issuer = parsed.tbs_certificate.issuer.as_raw().to_vec();
        Signer {
            key,
            cert_pem: cert.pem(),
            issuer,
            serial: vec![1, 2, 3, 4],
        }
    })
}

fn rsa_sign(message: &[u8]) -> Vec<u8> {
    let key = &signer().key;
    let mut sig = vec![0; key.public_modulus_len()];
    key.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), message, &mut sig)
        .unwrap();
    sig
}

fn sample_document(region: &str, pending: &str) -> Vec<u8> {
    serde_json::to_vec_pretty(&json!({
        "accountId": "123456789012",
        "architecture": "x86_64",
        "availabilityZone": format!("{region}b"),
        "imageId": "ami-0123456789abcdef0",
        "instanceId": "i-0abc",
        "instanceType": "m5.large",
        "pendingTime": pending,
        "privateIp": "10.0.0.7",
        "region": region,
        "version": "2017-09-30"
    }))
    .unwrap()
}

const SAMPLE_PENDING: &str = "2026-11-20T10:00:00Z";
const SAMPLE_PENDING_SECS: u64 = 1_795_168_800;

fn sample_now() -> SystemTime {
    secs(SAMPLE_PENDING_SECS + 600)
}

#[test]
fn self_signed_rsa_signature_attests_and_tampering_is_refused() {
    let s = signer();
    let doc = sample_document("eu-west-1", SAMPLE_PENDING);
    let sig = STANDARD.encode(rsa_sign(&doc));
    let cert = s.cert_pem.as_bytes();
    let id = verify_iid(
        &doc,
        AwsSignature::Rsa(&sig),
        cert,
        Some("eu-west-1"),
        None,
        sample_now(),
    )
    .unwrap();
    assert_eq!(id.account_id, "123456789012");
    assert_eq!(id.availability_zone, "eu-west-1b");
    assert_eq!(id.pending_time, secs(SAMPLE_PENDING_SECS));
    // The certificate as DER works too.
    let der = pem_body(&s.cert_pem);
    verify_iid(
        &doc,
        AwsSignature::Rsa(&sig),
        &der,
        None,
        None,
        sample_now(),
    )
    .unwrap();

    for i in [0, doc.len() / 2, doc.len() - 1] {
        let mut tampered = doc.clone();
        tampered[i] ^= 0x01;
        let err = verify_iid(
            &tampered,
            AwsSignature::Rsa(&sig),
            cert,
            None,
            None,
            sample_now(),
        )
        .unwrap_err();
        assert!(matches!(err, AttestError::BadSignature(_)), "{err}");
    }
    let err = verify_iid(&[], AwsSignature::Rsa(&sig), cert, None, None, sample_now()).unwrap_err();
    assert!(matches!(err, AttestError::MalformedDocument(_)), "{err}");
    let err = verify_iid(
        &doc,
        AwsSignature::Rsa("not base64!"),
        cert,
        None,
        None,
        sample_now(),
    )
    .unwrap_err();
    assert!(matches!(err, AttestError::BadEncoding(_)), "{err}");
    let err = verify_iid(
        &doc,
        AwsSignature::Rsa(&sig),
        b"garbage",
        None,
        None,
        sample_now(),
    )
    .unwrap_err();
    assert!(matches!(err, AttestError::BadTrustAnchor(_)), "{err}");
}

#[test]
fn signed_document_missing_fields_is_malformed_after_verification() {
    let cert = signer().cert_pem.as_bytes();
    let mut value: serde_json::Value =
        serde_json::from_slice(&sample_document("eu-west-1", SAMPLE_PENDING)).unwrap();
    value.as_object_mut().unwrap().remove("accountId");
    let doc = serde_json::to_vec(&value).unwrap();
    let sig = STANDARD.encode(rsa_sign(&doc));
    let err = verify_iid(
        &doc,
        AwsSignature::Rsa(&sig),
        cert,
        None,
        None,
        sample_now(),
    )
    .unwrap_err();
    assert_eq!(err, AttestError::MalformedDocument("accountId".into()));

    let doc = sample_document("eu-west-1", "yesterday");
    let sig = STANDARD.encode(rsa_sign(&doc));
    let err = verify_iid(
        &doc,
        AwsSignature::Rsa(&sig),
        cert,
        None,
        None,
        sample_now(),
    )
    .unwrap_err();
    assert!(matches!(err, AttestError::MalformedDocument(ref f) if f.starts_with("pendingTime")));

    // A duplicated key is refused, not resolved either way.
    let doc = br#"{"accountId":"1","accountId":"2","region":"r","availabilityZone":"ra","instanceId":"i","imageId":"a","instanceType":"t","pendingTime":"2026-11-20T10:00:00Z"}"#;
    let sig = STANDARD.encode(rsa_sign(doc));
    let err = verify_iid(doc, AwsSignature::Rsa(&sig), cert, None, None, sample_now()).unwrap_err();
    assert!(matches!(err, AttestError::MalformedDocument(_)), "{err}");
}

/// DER of one element.
fn der(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    let content = parts.concat();
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|&b| b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend(content);
    out
}

fn oid(content: &[u8]) -> Vec<u8> {
    der(0x06, &[content])
}

fn alg(content: &[u8]) -> Vec<u8> {
    der(0x30, &[&oid(content), &[0x05, 0x00]])
}

/// How to build a test PKCS#7.
struct P7 {
    embed: bool,
    digest_oid: &'static [u8],
    signed_attrs: bool,
    /// Replace the messageDigest value.
    message_digest: Option<Vec<u8>>,
    serial: Vec<u8>,
    signer_infos: usize,
    corrupt_signature: bool,
}

impl Default for P7 {
    fn default() -> Self {
        P7 {
            embed: true,
            digest_oid: OID_SHA256,
            signed_attrs: true,
            message_digest: None,
            serial: signer().serial.clone(),
            signer_infos: 1,
            corrupt_signature: false,
        }
    }
}

impl P7 {
    fn build(&self, content: &[u8]) -> String {
        let s = signer();
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, content);
        let md = self
            .message_digest
            .clone()
            .unwrap_or_else(|| digest.as_ref().to_vec());
        let attrs = [
            der(
                0x30,
                &[&oid(OID_CONTENT_TYPE), &der(0x31, &[&oid(OID_DATA)])],
            ),
            der(
                0x30,
                &[&oid(OID_MESSAGE_DIGEST), &der(0x31, &[&der(0x04, &[&md])])],
            ),
        ]
        .concat();
        let attrs_set = der(0x31, &[&attrs]);
        let (signed_attrs, signed_message) = if self.signed_attrs {
            (der(0xa0, &[&attrs]), attrs_set.clone())
        } else {
            (Vec::new(), content.to_vec())
        };
        let mut signature = rsa_sign(&signed_message);
        if self.corrupt_signature {
            signature[10] ^= 0x40;
        }
        let sid = der(0x30, &[&s.issuer, &der(0x02, &[&self.serial])]);
        let signer_info = der(
            0x30,
            &[
                &der(0x02, &[&[1]]),
                &sid,
                &alg(self.digest_oid),
                &signed_attrs,
                &alg(OID_SHA256_WITH_RSA),
                &der(0x04, &[&signature]),
            ],
        );
        let infos = vec![signer_info; self.signer_infos].concat();
        let econtent = if self.embed {
            der(0xa0, &[&der(0x04, &[content])])
        } else {
            Vec::new()
        };
        let signed_data = der(
            0x30,
            &[
                &der(0x02, &[&[1]]),
                &der(0x31, &[&alg(OID_SHA256)]),
                &der(0x30, &[&oid(OID_DATA), &econtent]),
                &der(0x31, &[&infos]),
            ],
        );
        let content_info = der(0x30, &[&oid(OID_SIGNED_DATA), &der(0xa0, &[&signed_data])]);
        STANDARD.encode(content_info)
    }
}

#[test]
fn self_made_pkcs7_attests_in_every_accepted_shape() {
    let cert = signer().cert_pem.as_bytes();
    let doc = sample_document("us-west-2", SAMPLE_PENDING);
    let verify = |document: &[u8], p7: &str| {
        verify_iid(
            document,
            AwsSignature::Pkcs7Rsa2048(p7),
            cert,
            Some("us-west-2"),
            None,
            sample_now(),
        )
    };
    let embedded = P7::default().build(&doc);
    assert_eq!(verify(&doc, &embedded).unwrap().document, doc);
    assert_eq!(verify(&[], &embedded).unwrap().document, doc);
    let pem = format!("-----BEGIN PKCS7-----\n{embedded}\n-----END PKCS7-----\n");
    verify(&doc, &pem).unwrap();
    let detached = P7 {
        embed: false,
        ..P7::default()
    }
    .build(&doc);
    verify(&doc, &detached).unwrap();
    let err = verify(&[], &detached).unwrap_err();
    assert!(matches!(err, AttestError::MalformedDocument(_)), "{err}");
    // No signed attributes: the signature is over the content itself.
    let plain = P7 {
        signed_attrs: false,
        ..P7::default()
    }
    .build(&doc);
    verify(&doc, &plain).unwrap();
    // The signer ID is not covered by the signature; a matching signature
    // from the configured key is what counts.
    let other_serial = P7 {
        serial: vec![9, 9],
        ..P7::default()
    }
    .build(&doc);
    verify(&doc, &other_serial).unwrap();
}

#[test]
fn self_made_pkcs7_refusals() {
    let cert = signer().cert_pem.as_bytes();
    let doc = sample_document("us-west-2", SAMPLE_PENDING);
    let verify = |p7: &str| {
        verify_iid(
            &doc,
            AwsSignature::Pkcs7Rsa2048(p7),
            cert,
            None,
            None,
            sample_now(),
        )
    };

    let err = verify(
        &P7 {
            corrupt_signature: true,
            ..P7::default()
        }
        .build(&doc),
    )
    .unwrap_err();
    assert!(matches!(err, AttestError::BadSignature(_)), "{err}");
    let err = verify(
        &P7 {
            corrupt_signature: true,
            serial: vec![7],
            ..P7::default()
        }
        .build(&doc),
    )
    .unwrap_err();
    assert!(matches!(err, AttestError::WrongKey(_)), "{err}");
    let err = verify(
        &P7 {
            message_digest: Some(vec![0; 32]),
            ..P7::default()
        }
        .build(&doc),
    )
    .unwrap_err();
    assert!(matches!(err, AttestError::BadSignature(_)), "{err}");
    let err = verify(
        &P7 {
            digest_oid: OID_SHA1,
            ..P7::default()
        }
        .build(&doc),
    )
    .unwrap_err();
    assert!(matches!(err, AttestError::UnsupportedAlgorithm(_)), "{err}");
    let err = verify(
        &P7 {
            signer_infos: 2,
            ..P7::default()
        }
        .build(&doc),
    )
    .unwrap_err();
    assert!(matches!(err, AttestError::BadEncoding(_)), "{err}");
    let mut other = doc.clone();
    other[3] ^= 1;
    let err = verify(&P7::default().build(&other)).unwrap_err();
    assert_eq!(err, AttestError::ContentMismatch);
    // Trailing bytes after the ContentInfo.
    let mut bytes = STANDARD.decode(P7::default().build(&doc)).unwrap();
    bytes.push(0);
    let err = verify(&STANDARD.encode(&bytes)).unwrap_err();
    assert!(matches!(err, AttestError::BadEncoding(_)), "{err}");
    let err = verify("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----").unwrap_err();
    assert!(matches!(err, AttestError::BadEncoding(_)), "{err}");
}

#[test]
fn signature_kinds_map_from_metadata_paths() {
    assert_eq!(
        AwsSignature::from_kind("signature", "x").unwrap(),
        AwsSignature::Rsa("x")
    );
    assert_eq!(
        AwsSignature::from_kind("rsa2048", "x").unwrap(),
        AwsSignature::Pkcs7Rsa2048("x")
    );
    assert_eq!(
        AwsSignature::from_kind("pkcs7", "x").unwrap(),
        AwsSignature::Pkcs7Dsa("x")
    );
    assert!(matches!(
        AwsSignature::from_kind("ed25519", "x"),
        Err(AttestError::UnsupportedAlgorithm(_))
    ));
    for kind in ["signature", "rsa2048", "pkcs7"] {
        assert_eq!(AwsSignature::from_kind(kind, "").unwrap().kind(), kind);
    }
}

/// A P-256 key for ES256 tokens, shared by the tests.
fn ec_signer() -> &'static EcdsaKeyPair {
    static SIGNER: OnceLock<EcdsaKeyPair> = OnceLock::new();
    SIGNER.get_or_init(|| EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap())
}

/// The JWK of [`ec_signer`]'s public key, with `kid: ec`.
fn ec_jwk() -> serde_json::Value {
    let point = ec_signer().public_key().as_ref();
    json!({"kty": "EC", "kid": "ec", "crv": "P-256", "use": "sig",
           "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..])})
}

/// A JWKS with an ES256 key `ec` and an RS256 key `k1` (the [`signer`]).
fn jwks() -> Vec<u8> {
    let components = PublicKeyComponents::<Vec<u8>>::from(signer().key.public_key());
    json!({"keys": [
        ec_jwk(),
        {"kty": "EC", "kid": "p384", "crv": "P-384", "x": "AA", "y": "AA"},
        {"kty": "RSA", "kid": "k1", "alg": "RS256", "use": "sig",
         "n": URL_SAFE_NO_PAD.encode(&components.n), "e": URL_SAFE_NO_PAD.encode(&components.e)}
    ]})
    .to_string()
    .into_bytes()
}

fn sample_claims() -> serde_json::Value {
    json!({
        "iss": "https://accounts.google.com",
        "aud": "https://authority.example:15170",
        "azp": "1234567890",
        "sub": "1234567890",
        "iat": 1_795_168_800u64,
        "exp": 1_795_172_400u64,
        "google": {"compute_engine": {
            "project_id": "shop-prod",
            "project_number": 987654321012u64,
            "zone": "europe-west4-b",
            "instance_id": "1234567890123456789",
            "instance_name": "web-1",
            "instance_creation_timestamp": 1_795_000_000u64,
            "license_id": ["1000010"]
        }}
    })
}

fn jwt(header: &serde_json::Value, claims: &serde_json::Value) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let sig = rsa_sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
}

fn rs256() -> serde_json::Value {
    json!({"alg": "RS256", "kid": "k1", "typ": "JWT"})
}

const AUD: &str = "https://authority.example:15170";

fn jwt_now() -> SystemTime {
    secs(1_795_168_800 + 60)
}

#[test]
fn self_signed_jwt_verifies_and_checks_claims() {
    let keys = GcpKeys::from_jwks_json(&jwks()).unwrap();
    assert_eq!(keys.kids(), ["ec", "k1"]);
    let token = jwt(&rs256(), &sample_claims());
    let id = verify_iit(&token, &keys, AUD, jwt_now()).unwrap();
    assert_eq!(id.project_id, "shop-prod");
    assert_eq!(id.project_number, "987654321012");
    assert_eq!(id.instance_id, "1234567890123456789");
    assert_eq!(id.license_ids, ["1000010"]);
    assert_eq!(id.region(), Some("europe-west4"));
    assert_eq!(id.subject.as_deref(), Some("1234567890"));

    let mut claims = sample_claims();
    claims["iss"] = json!("accounts.google.com");
    claims["aud"] = json!(["other", AUD]);
    verify_iit(&jwt(&rs256(), &claims), &keys, AUD, jwt_now()).unwrap();

    let mut claims = sample_claims();
    claims["iss"] = json!("https://evil.example");
    let err = verify_iit(&jwt(&rs256(), &claims), &keys, AUD, jwt_now()).unwrap_err();
    assert_eq!(
        err,
        AttestError::WrongIssuer {
            got: "https://evil.example".into(),
            expected: "https://accounts.google.com or accounts.google.com".into()
        }
    );

    let mut claims = sample_claims();
    claims.as_object_mut().unwrap().remove("google");
    let err = verify_iit(&jwt(&rs256(), &claims), &keys, AUD, jwt_now()).unwrap_err();
    assert!(matches!(err, AttestError::MalformedDocument(ref f) if f.contains("format=full")));

    let mut claims = sample_claims();
    claims.as_object_mut().unwrap().remove("exp");
    let err = verify_iit(&jwt(&rs256(), &claims), &keys, AUD, jwt_now()).unwrap_err();
    assert_eq!(err, AttestError::MalformedDocument("exp".into()));

    let mut claims = sample_claims();
    claims["nbf"] = json!(1_795_168_800u64 + 3600);
    let err = verify_iit(&jwt(&rs256(), &claims), &keys, AUD, jwt_now()).unwrap_err();
    assert!(matches!(err, AttestError::NotYetValid(_)), "{err}");

    let header = json!({"alg": "RS256", "kid": "k2"});
    let err = verify_iit(&jwt(&header, &sample_claims()), &keys, AUD, jwt_now()).unwrap_err();
    assert!(matches!(err, AttestError::UnknownKid { .. }), "{err}");
    let header = json!({"alg": "RS256"});
    let err = verify_iit(&jwt(&header, &sample_claims()), &keys, AUD, jwt_now()).unwrap_err();
    assert!(matches!(err, AttestError::UnknownKid { .. }), "{err}");
    let header = json!({"alg": "RS256", "kid": "k1", "crit": ["exp"]});
    let err = verify_iit(&jwt(&header, &sample_claims()), &keys, AUD, jwt_now()).unwrap_err();
    assert!(matches!(err, AttestError::UnsupportedAlgorithm(_)), "{err}");

    // Duplicate header members are refused, not resolved.
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","alg":"RS256","kid":"k1"}"#),
        URL_SAFE_NO_PAD.encode(sample_claims().to_string())
    );
    let t = format!(
        "{input}.{}",
        URL_SAFE_NO_PAD.encode(rsa_sign(input.as_bytes()))
    );
    let err = verify_iit(&t, &keys, AUD, jwt_now()).unwrap_err();
    assert!(matches!(err, AttestError::BadEncoding(_)), "{err}");

    for bad in ["", "a.b", "a.b.c.d", "...", "e30.e30.", "e30=.e30.AA"] {
        let err = verify_iit(bad, &keys, AUD, jwt_now()).unwrap_err();
        assert!(
            matches!(
                err,
                AttestError::BadEncoding(_) | AttestError::UnsupportedAlgorithm(_)
            ),
            "{bad}: {err}"
        );
    }
}

#[test]
fn gcp_key_configuration_errors() {
    for bad in [
        &b"{}"[..],
        br#"{"keys":[]}"#,
        br#"{"keys":[{"kty":"EC","kid":"x"}]}"#,
        br#"{"keys":[{"kty":"RSA","kid":"x","e":"AQAB"}]}"#,
        br#"{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB"}]}"#,
        br#"{"keys":[{"kty":"RSA","kid":"x","n":"!!","e":"AQAB"}]}"#,
        b"not json",
    ] {
        let err = GcpKeys::from_jwks_json(bad).unwrap_err();
        assert!(matches!(err, AttestError::BadTrustAnchor(_)), "{err}");
    }
    let err = GcpKeys::from_pem(
        b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        None,
    )
    .unwrap_err();
    assert!(matches!(err, AttestError::BadTrustAnchor(_)), "{err}");
    // A certificate PEM is accepted (Google's oauth2/v1/certs form).
    let keys = GcpKeys::from_pem(signer().cert_pem.as_bytes(), Some("k1")).unwrap();
    verify_iit(&jwt(&rs256(), &sample_claims()), &keys, AUD, jwt_now()).unwrap();
}

#[test]
fn error_messages_name_what_to_check() {
    let cases = [
        (AttestError::ContentMismatch, "same metadata read"),
        (
            AttestError::UnknownKid {
                kid: "a".into(),
                known: "b".into(),
                refresh: "refresh Google's keys from https://www.googleapis.com/oauth2/v3/certs",
            },
            "oauth2/v3/certs",
        ),
        (
            AttestError::WrongAudience {
                got: "a".into(),
                expected: "b".into(),
            },
            "audience=b",
        ),
        (AttestError::Expired("x".into()), "clock"),
    ];
    for (err, needle) in cases {
        assert!(err.to_string().contains(needle), "{err}");
    }
}

// ---------------------------------------------------------------------------
// (c) Properties.

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_aws_input_never_panics(
        doc in proptest::collection::vec(any::<u8>(), 0..600),
        sig in ".{0,400}",
        raw in proptest::collection::vec(any::<u8>(), 0..600),
        kind in 0..3u8,
    ) {
        let cert = signer().cert_pem.as_bytes();
        let b64 = STANDARD.encode(&raw);
        for text in [sig.as_str(), b64.as_str()] {
            let signature = match kind {
                0 => AwsSignature::Rsa(text),
                1 => AwsSignature::Pkcs7Rsa2048(text),
                _ => AwsSignature::Pkcs7Dsa(text),
            };
            prop_assert!(verify_iid(&doc, signature, cert, None, None, sample_now()).is_err());
            prop_assert!(verify_iid(&doc, signature, &raw, None, None, sample_now()).is_err());
        }
    }

    #[test]
    fn mutated_pkcs7_never_panics_and_never_attests_other_content(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 1..=255u8), 1..4),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let cert = signer().cert_pem.as_bytes();
        let doc = sample_document("us-west-2", SAMPLE_PENDING);
        let mut bytes = STANDARD.decode(P7::default().build(&doc)).unwrap();
        for (at, x) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= x;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len()));
        }
        let text = STANDARD.encode(&bytes);
        if let Ok(id) = verify_iid(&[], AwsSignature::Pkcs7Rsa2048(&text), cert, None, None, sample_now()) {
            prop_assert_eq!(id.document, doc);
        }
    }

    #[test]
    fn arbitrary_ber_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        fn walk(r: &mut ber::Reader<'_>) {
            while !r.is_empty() {
                let Ok(tlv) = r.read("p") else { return };
                let _ = tlv.octets("p");
                let _ = tlv.unsigned("p");
                if let Ok(mut children) = tlv.children("p") {
                    walk(&mut children);
                }
            }
        }
        walk(&mut ber::Reader::new(&data));
        let _ = cms::parse(&data);
        let _ = cms::public_key(&data);
        let _ = cms::rsa_components(&data);
    }

    #[test]
    fn arbitrary_gcp_input_never_panics(
        token in ".{0,300}",
        parts in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 3),
        junk in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let keys = GcpKeys::from_jwks_json(&jwks()).unwrap();
        prop_assert!(verify_iit(&token, &keys, AUD, jwt_now()).is_err());
        let encoded: Vec<String> = parts.iter().map(|p| URL_SAFE_NO_PAD.encode(p)).collect();
        prop_assert!(verify_iit(&encoded.join("."), &keys, AUD, jwt_now()).is_err());
        let _ = GcpKeys::from_jwks_json(&junk);
        let _ = GcpKeys::from_pem(&junk, None);
    }

    #[test]
    fn mutated_jwt_never_verifies(
        at in any::<prop::sample::Index>(),
        c in prop::sample::select(b"AQgw_-.x=".to_vec()),
    ) {
        let keys = GcpKeys::from_jwks_json(&jwks()).unwrap();
        let token = jwt(&rs256(), &sample_claims());
        let mut bytes = token.clone().into_bytes();
        let i = at.index(bytes.len());
        bytes[i] = c;
        let mutated = String::from_utf8(bytes).unwrap();
        let result = verify_iit(&mutated, &keys, AUD, jwt_now());
        prop_assert_eq!(result.is_ok(), mutated == token);
    }
}

// ---------------------------------------------------------------------------
// (d) Kubernetes projected service-account tokens, signed here in the shape
// the API server issues (see the example in `k8s.rs`).

use super::k8s::{DEFAULT_MAX_LIFETIME, K8sExpectations, K8sIdentity, verify_psat};

const K8S_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
const K8S_AUD: &str = "https://appid-authority.appid-system.svc:15170";
const K8S_IAT: u64 = 1_795_168_800;

fn k8s_expect() -> K8sExpectations {
    K8sExpectations {
        issuer: K8S_ISSUER.into(),
        audience: K8S_AUD.into(),
        max_lifetime: DEFAULT_MAX_LIFETIME,
    }
}

/// A projected token's payload: pod `web-7d4b9c6f5-x2x9q` of `shop/web`,
/// valid one hour (`expirationSeconds: 3600`).
fn psat_claims() -> serde_json::Value {
    json!({
        "aud": [K8S_AUD],
        "exp": K8S_IAT + 3600,
        "iat": K8S_IAT,
        "iss": K8S_ISSUER,
        "jti": "ea28ed49-2e11-4280-9ec5-bc3d1d84661a",
        "kubernetes.io": {
            "namespace": "shop",
            "node": {"name": "node-1", "uid": "58456cb0-dd00-45ed-b797-5578fdceaced"},
            "pod": {"name": "web-7d4b9c6f5-x2x9q", "uid": "778a530c-b3f4-47c0-9cd5-ab018fb64f33"},
            "serviceaccount": {"name": "web", "uid": "a087d5a0-e1dd-43ec-93ac-f13d89cd13af"},
            "warnafter": K8S_IAT + 3600 - 7
        },
        "nbf": K8S_IAT,
        "sub": "system:serviceaccount:shop:web"
    })
}

fn es256_jwt(header: &serde_json::Value, claims: &serde_json::Value) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let sig = ec_signer()
        .sign(&SystemRandom::new(), input.as_bytes())
        .unwrap();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
}

fn k8s_now() -> SystemTime {
    secs(K8S_IAT + 60)
}

fn psat(claims: &serde_json::Value) -> Result<K8sIdentity, AttestError> {
    let keys = JwtKeys::from_jwks_json(&jwks()).unwrap();
    verify_psat(
        &jwt(&json!({"alg": "RS256", "kid": "k1"}), claims),
        &keys,
        &k8s_expect(),
        k8s_now(),
    )
}

#[test]
fn psat_in_the_shape_kubernetes_issues_verifies() {
    let id = psat(&psat_claims()).unwrap();
    assert_eq!(id.namespace, "shop");
    assert_eq!(id.service_account, "web");
    assert_eq!(
        id.service_account_uid,
        "a087d5a0-e1dd-43ec-93ac-f13d89cd13af"
    );
    assert_eq!(id.pod_name, "web-7d4b9c6f5-x2x9q");
    assert_eq!(id.pod_uid, "778a530c-b3f4-47c0-9cd5-ab018fb64f33");
    assert_eq!(id.node_name.as_deref(), Some("node-1"));
    assert_eq!(id.spiffe_path(), "ns/shop/sa/web");
    assert_eq!(id.token_id(), "jti:ea28ed49-2e11-4280-9ec5-bc3d1d84661a");
    assert_eq!(id.attestation(), "k8s_psat");
    assert_eq!(
        serde_json::to_value(id.to_k8s_claims()).unwrap(),
        json!({"namespace": "shop", "service_account": "web", "pod": "web-7d4b9c6f5-x2x9q",
               "pod_uid": "778a530c-b3f4-47c0-9cd5-ab018fb64f33", "node": "node-1"})
    );

    // Older clusters: no jti, no node; the pod uid and iat name the token.
    let mut claims = psat_claims();
    claims.as_object_mut().unwrap().remove("jti");
    claims["kubernetes.io"]
        .as_object_mut()
        .unwrap()
        .remove("node");
    let id = psat(&claims).unwrap();
    assert_eq!(id.node_name, None);
    assert_eq!(
        id.token_id(),
        format!("pod:778a530c-b3f4-47c0-9cd5-ab018fb64f33@{K8S_IAT}")
    );

    // A one-string audience; a cluster with an EC issuer key (ES256).
    let mut claims = psat_claims();
    claims["aud"] = json!(K8S_AUD);
    psat(&claims).unwrap();
    let keys = JwtKeys::from_jwks_json(&jwks()).unwrap();
    let token = es256_jwt(&json!({"alg": "ES256", "kid": "ec"}), &psat_claims());
    let id = verify_psat(&token, &keys, &k8s_expect(), k8s_now()).unwrap();
    assert_eq!(id.spiffe_path(), "ns/shop/sa/web");
}

#[test]
fn psat_refusals_name_the_reason() {
    let keys = JwtKeys::from_jwks_json(&jwks()).unwrap();
    let verify = |token: &str| verify_psat(token, &keys, &k8s_expect(), k8s_now());
    let good = jwt(&json!({"alg": "RS256", "kid": "k1"}), &psat_claims());

    let mut claims = psat_claims();
    claims["iss"] = json!("https://other-cluster.example");
    let err = psat(&claims).unwrap_err();
    assert_eq!(
        err,
        AttestError::WrongIssuer {
            got: "https://other-cluster.example".into(),
            expected: K8S_ISSUER.into()
        }
    );

    // Minted for the API server, not for the authority.
    let mut claims = psat_claims();
    claims["aud"] = json!(["https://kubernetes.default.svc.cluster.local", "k3s"]);
    let err = psat(&claims).unwrap_err();
    assert!(matches!(err, AttestError::WrongAudience { .. }), "{err}");
    assert!(err.to_string().contains(K8S_AUD), "{err}");

    let late = secs(K8S_IAT + 3600 + 61);
    let err = verify_psat(&good, &keys, &k8s_expect(), late).unwrap_err();
    assert!(matches!(err, AttestError::Expired(_)), "{err}");
    let mut claims = psat_claims();
    claims["nbf"] = json!(K8S_IAT + 600);
    let err = psat(&claims).unwrap_err();
    assert!(matches!(err, AttestError::NotYetValid(_)), "{err}");

    // Another pod's payload under this token's signature.
    let mut claims = psat_claims();
    claims["kubernetes.io"]["namespace"] = json!("admin");
    claims["sub"] = json!("system:serviceaccount:admin:web");
    let other = jwt(&json!({"alg": "RS256", "kid": "k1"}), &claims);
    let parts: Vec<&str> = good.split('.').collect();
    let spliced = format!(
        "{}.{}.{}",
        parts[0],
        other.split('.').nth(1).unwrap(),
        parts[2]
    );
    let err = verify(&spliced).unwrap_err();
    assert!(matches!(err, AttestError::BadSignature(_)), "{err}");

    let err = verify(&jwt(
        &json!({"alg": "RS256", "kid": "rotated"}),
        &psat_claims(),
    ))
    .unwrap_err();
    let AttestError::UnknownKid { kid, refresh, .. } = &err else {
        panic!("expected UnknownKid, got {err:?}")
    };
    assert_eq!(kid, "rotated");
    assert!(refresh.contains("/openid/v1/jwks"), "{err}");

    // alg none, HS256 with the public key as secret, and ES256 naming the RSA key.
    let payload = URL_SAFE_NO_PAD.encode(psat_claims().to_string());
    let none = format!(
        "{}.{payload}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","kid":"k1"}"#)
    );
    let err = verify(&none).unwrap_err();
    assert!(matches!(err, AttestError::UnsupportedAlgorithm(_)), "{err}");
    assert!(err.to_string().contains("RS256 or ES256"), "{err}");
    let input = format!(
        "{}.{payload}",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","kid":"k1"}"#)
    );
    let secret =
        aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, signer().cert_pem.as_bytes());
    let mac = aws_lc_rs::hmac::sign(&secret, input.as_bytes());
    let hs256 = format!("{input}.{}", URL_SAFE_NO_PAD.encode(mac.as_ref()));
    let err = verify(&hs256).unwrap_err();
    assert!(matches!(err, AttestError::UnsupportedAlgorithm(_)), "{err}");
    let err = verify(&es256_jwt(
        &json!({"alg": "ES256", "kid": "k1"}),
        &psat_claims(),
    ))
    .unwrap_err();
    assert!(matches!(err, AttestError::WrongKey(_)), "{err}");

    let mut claims = psat_claims();
    claims.as_object_mut().unwrap().remove("kubernetes.io");
    let err = psat(&claims).unwrap_err();
    assert_eq!(err, AttestError::MalformedDocument("kubernetes.io".into()));

    // A token bound to a Secret, not a pod (`kubectl create token`).
    let mut claims = psat_claims();
    claims["kubernetes.io"]
        .as_object_mut()
        .unwrap()
        .remove("pod");
    claims["kubernetes.io"]["secret"] = json!({"name": "s", "uid": "u"});
    let err = psat(&claims).unwrap_err();
    assert!(err.to_string().contains("pod-bound"), "{err}");

    // The legacy, Secret-based token: signed by the same key, never expires.
    let legacy = json!({
        "iss": "kubernetes/serviceaccount",
        "kubernetes.io/serviceaccount/namespace": "shop",
        "kubernetes.io/serviceaccount/secret.name": "web-token-x7k2p",
        "kubernetes.io/serviceaccount/service-account.name": "web",
        "kubernetes.io/serviceaccount/service-account.uid": "a087d5a0-e1dd-43ec-93ac-f13d89cd13af",
        "sub": "system:serviceaccount:shop:web"
    });
    let err = psat(&legacy).unwrap_err();
    assert!(matches!(err, AttestError::LegacyToken(_)), "{err}");
    assert!(err.to_string().contains("projected"), "{err}");
    let mut claims = psat_claims();
    claims.as_object_mut().unwrap().remove("exp");
    let err = psat(&claims).unwrap_err();
    assert!(matches!(err, AttestError::LegacyToken(_)), "{err}");

    // `sub` must name the same namespace and service account.
    let mut claims = psat_claims();
    claims["sub"] = json!("system:serviceaccount:shop:admin");
    let err = psat(&claims).unwrap_err();
    assert!(matches!(err, AttestError::MalformedDocument(ref f) if f.starts_with("sub")));
    let mut claims = psat_claims();
    claims.as_object_mut().unwrap().remove("sub");
    assert!(psat(&claims).is_err());

    // Names that are not Kubernetes names never reach a SPIFFE ID.
    for (ns, sa) in [
        ("../admin", "web"),
        ("shop", "web/../x"),
        ("Shop", "web"),
        ("shop", ""),
    ] {
        let mut claims = psat_claims();
        claims["kubernetes.io"]["namespace"] = json!(ns);
        claims["kubernetes.io"]["serviceaccount"]["name"] = json!(sa);
        claims["sub"] = json!(format!("system:serviceaccount:{ns}:{sa}"));
        let err = psat(&claims).unwrap_err();
        assert!(
            matches!(err, AttestError::MalformedDocument(_)),
            "{ns}/{sa}: {err}"
        );
    }

    // Longer-lived than the authority accepts (e.g. the API server's
    // one-year extension of tokens for its own audience).
    let mut claims = psat_claims();
    claims["exp"] = json!(K8S_IAT + 365 * 24 * 3600);
    let err = psat(&claims).unwrap_err();
    assert_eq!(
        err,
        AttestError::LifetimeTooLong {
            lifetime: 365 * 24 * 3600,
            max: 3600
        }
    );
    assert!(err.to_string().contains("expirationSeconds"), "{err}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn mutated_psat_never_verifies(
        at in any::<prop::sample::Index>(),
        c in prop::sample::select(b"AQgw_-.x=".to_vec()),
        junk in ".{0,300}",
    ) {
        let keys = JwtKeys::from_jwks_json(&jwks()).unwrap();
        prop_assert!(verify_psat(&junk, &keys, &k8s_expect(), k8s_now()).is_err());
        let token = jwt(&json!({"alg": "RS256", "kid": "k1"}), &psat_claims());
        let mut bytes = token.clone().into_bytes();
        let i = at.index(bytes.len());
        bytes[i] = c;
        let mutated = String::from_utf8(bytes).unwrap();
        let result = verify_psat(&mutated, &keys, &k8s_expect(), k8s_now());
        prop_assert_eq!(result.is_ok(), mutated == token);
    }
}
