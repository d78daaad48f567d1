//! Verifying a peer's AppID certificate: chain, SPIFFE ID, AppID claims.
//!
//! This is the function the data plane calls for every handshake, from both
//! sides. It answers one question: *who is this peer, according to our trust
//! bundle?* — a verified SPIFFE ID plus the claims the authority signed, or a
//! [`PeerRejection`] that says precisely why not. Authorization (policy) is a
//! separate, later step.
//!
//! Order of checks, each one failing closed:
//! 1. the chain: signatures up to a trust anchor, validity window, EKU
//!    (rustls-webpki, the same code rustls itself uses);
//! 2. the leaf is a SPIFFE X509-SVID leaf: not a CA, exactly one URI SAN,
//!    a `spiffe://` ID in one of the configured trust domains;
//! 3. exactly one AppID extension, non-critical, decoding strictly, whose
//!    `id` equals the SAN.
//!
//! Host names and IP addresses are never consulted.

use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use thiserror::Error;
use webpki::KeyUsage;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};

use appid_policy::AppIdClaims;
use appid_policy::extension::{self, APPID_OID_DER, ExtensionError};

use super::files::FileError;
use super::spiffe::{SpiffeId, SpiffeIdError};

/// The certificates a peer must chain to, and the trust domains it may be in.
#[derive(Debug, Clone)]
pub struct TrustBundle {
    anchors: Vec<TrustAnchor<'static>>,
    trust_domains: Vec<String>,
}

/// Why a bundle could not be built.
#[derive(Debug, Error)]
pub enum BundleError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{file}: certificate #{index} is not usable as a trust anchor: {detail}")]
    BadAnchor {
        file: String,
        index: usize,
        detail: String,
    },
    #[error("no trust domains configured; list at least one (e.g. trust_domains: [prod.example])")]
    NoTrustDomains,
}

impl TrustBundle {
    /// A bundle from PEM certificates (`file` is only used in errors).
    pub fn new(
        file: &str,
        roots: &[CertificateDer<'_>],
        trust_domains: Vec<String>,
    ) -> Result<Self, BundleError> {
        if trust_domains.is_empty() {
            return Err(BundleError::NoTrustDomains);
        }
        let anchors = roots
            .iter()
            .enumerate()
            .map(|(index, der)| {
                webpki::anchor_from_trusted_cert(der)
                    .map(|anchor| anchor.to_owned())
                    .map_err(|e| BundleError::BadAnchor {
                        file: file.to_string(),
                        index: index + 1,
                        detail: e.to_string(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TrustBundle {
            anchors,
            trust_domains,
        })
    }

    /// Reads a bundle from a PEM file of one or more root certificates.
    pub fn from_pem_file(
        path: &std::path::Path,
        trust_domains: Vec<String>,
    ) -> Result<Self, BundleError> {
        let roots = super::files::read_certs(path)?;
        Self::new(&path.display().to_string(), &roots, trust_domains)
    }

    pub fn trust_domains(&self) -> &[String] {
        &self.trust_domains
    }

    /// Whether `other` trusts exactly the same roots (in any order) for
    /// the same trust domains.
    pub fn same_roots(&self, other: &TrustBundle) -> bool {
        let key = |a: &TrustAnchor<'_>| {
            (
                a.subject.as_ref().to_vec(),
                a.subject_public_key_info.as_ref().to_vec(),
            )
        };
        let mut mine: Vec<_> = self.anchors.iter().map(key).collect();
        let mut theirs: Vec<_> = other.anchors.iter().map(key).collect();
        mine.sort();
        theirs.sort();
        mine == theirs && self.trust_domains == other.trust_domains
    }
}

/// Which side of the handshake the peer is on (its certificate's EKU).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerRole {
    /// The peer connected to us: it must be fit for clientAuth.
    Client,
    /// We connected to the peer: it must be fit for serverAuth.
    Server,
}

/// A peer whose certificate checked out.
#[derive(Debug, Clone)]
pub struct VerifiedPeer {
    pub id: SpiffeId,
    pub claims: AppIdClaims,
    /// Seconds since the epoch at which the peer's certificate expires.
    pub not_after: i64,
}

/// Why a peer certificate was refused. Each variant is one reason a user can
/// act on; [`PeerRejection::reason`] gives a short stable label for metrics.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum PeerRejection {
    #[error("the peer presented no certificate")]
    NoCertificate,
    #[error("the certificate is not valid DER: {0}")]
    Malformed(String),
    #[error("the certificate does not chain to the trust bundle: {0}")]
    BadChain(String),
    #[error("the certificate expired at {not_after} (now {now}, seconds since epoch)")]
    Expired { not_after: u64, now: u64 },
    #[error("the certificate is not valid before {not_before} (now {now}, seconds since epoch)")]
    NotYetValid { not_before: u64, now: u64 },
    #[error("the certificate is a CA certificate, not a workload leaf")]
    NotALeaf,
    #[error("the certificate must have exactly one URI SAN, it has {0}")]
    UriSanCount(usize),
    #[error("the URI SAN is not a workload SPIFFE ID: {0}")]
    BadSpiffeId(SpiffeIdError),
    #[error("{id} is not in a trusted trust domain ({allowed})")]
    WrongTrustDomain { id: String, allowed: String },
    #[error("the certificate has no AppID extension")]
    MissingAppId,
    #[error("the certificate has {0} AppID extensions; exactly one is allowed")]
    DuplicateAppId(usize),
    #[error("the AppID extension is marked critical; it must be non-critical")]
    CriticalAppId,
    #[error("the AppID extension is invalid: {0}")]
    InvalidAppId(ExtensionError),
    #[error("the AppID claims name {claims_id} but the certificate is for {san}")]
    ClaimsIdMismatch { san: String, claims_id: String },
    #[error("{0} is revoked by the authority")]
    Revoked(String),
}

impl PeerRejection {
    /// A short, stable label (for metrics and audit lines).
    pub fn reason(&self) -> &'static str {
        match self {
            PeerRejection::NoCertificate => "no_certificate",
            PeerRejection::Malformed(_) => "malformed",
            PeerRejection::BadChain(_) => "bad_chain",
            PeerRejection::Expired { .. } => "expired",
            PeerRejection::NotYetValid { .. } => "not_yet_valid",
            PeerRejection::NotALeaf => "not_a_leaf",
            PeerRejection::UriSanCount(_) => "uri_san_count",
            PeerRejection::BadSpiffeId(_) => "bad_spiffe_id",
            PeerRejection::WrongTrustDomain { .. } => "wrong_trust_domain",
            PeerRejection::MissingAppId => "missing_appid",
            PeerRejection::DuplicateAppId(_) => "duplicate_appid",
            PeerRejection::CriticalAppId => "critical_appid",
            PeerRejection::InvalidAppId(_) => "invalid_appid",
            PeerRejection::ClaimsIdMismatch { .. } => "claims_id_mismatch",
            PeerRejection::Revoked(_) => "revoked",
        }
    }
}

/// Verifies a presented chain (leaf first) against `bundle` at time `now`.
pub fn verify_peer(
    chain: &[CertificateDer<'_>],
    bundle: &TrustBundle,
    role: PeerRole,
    now: UnixTime,
) -> Result<VerifiedPeer, PeerRejection> {
    let (leaf_der, intermediates) = chain.split_first().ok_or(PeerRejection::NoCertificate)?;

    // 1. The chain.
    let leaf = webpki::EndEntityCert::try_from(leaf_der).map_err(|e| map_webpki(e, now))?;
    let usage = match role {
        PeerRole::Client => KeyUsage::client_auth(),
        PeerRole::Server => KeyUsage::server_auth(),
    };
    let algorithms = rustls::crypto::aws_lc_rs::default_provider()
        .signature_verification_algorithms
        .all;
    leaf.verify_for_usage(
        algorithms,
        &bundle.anchors,
        intermediates,
        now,
        usage,
        None,
        None,
    )
    .map_err(|e| map_webpki(e, now))?;

    // 2. The SPIFFE leaf.
    let (_, cert) = x509_parser::parse_x509_certificate(leaf_der)
        .map_err(|e| PeerRejection::Malformed(e.to_string()))?;
    if cert.is_ca() {
        return Err(PeerRejection::NotALeaf);
    }
    let id = spiffe_id_of(&cert)?;
    if !bundle
        .trust_domains
        .iter()
        .any(|td| td == id.trust_domain())
    {
        return Err(PeerRejection::WrongTrustDomain {
            id: id.to_string(),
            allowed: bundle.trust_domains.join(", "),
        });
    }

    // 3. The AppID claims.
    let claims = appid_claims_of(&cert)?;
    if claims.id != id.as_str() {
        return Err(PeerRejection::ClaimsIdMismatch {
            san: id.to_string(),
            claims_id: claims.id,
        });
    }
    Ok(VerifiedPeer {
        id,
        claims,
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// The single URI SAN of a leaf, as a SPIFFE ID.
pub fn spiffe_id_of(cert: &X509Certificate<'_>) -> Result<SpiffeId, PeerRejection> {
    let uris: Vec<&str> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::URI(uri) => Some(*uri),
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => return Err(PeerRejection::Malformed(e.to_string())),
    };
    if uris.len() != 1 {
        return Err(PeerRejection::UriSanCount(uris.len()));
    }
    SpiffeId::parse(uris[0]).map_err(PeerRejection::BadSpiffeId)
}

/// The AppID claims of a certificate: exactly one non-critical extension.
pub fn appid_claims_of(cert: &X509Certificate<'_>) -> Result<AppIdClaims, PeerRejection> {
    let mut found = cert
        .extensions()
        .iter()
        .filter(|ext| ext.oid.as_bytes() == APPID_OID_DER);
    let ext = found.next().ok_or(PeerRejection::MissingAppId)?;
    let extra = found.count();
    if extra > 0 {
        return Err(PeerRejection::DuplicateAppId(extra + 1));
    }
    if ext.critical {
        return Err(PeerRejection::CriticalAppId);
    }
    // x509-parser does not know the OID, so it is left unparsed.
    debug_assert!(matches!(
        ext.parsed_extension(),
        ParsedExtension::UnsupportedExtension { .. }
    ));
    extension::decode(ext.value).map_err(PeerRejection::InvalidAppId)
}

fn map_webpki(error: webpki::Error, now: UnixTime) -> PeerRejection {
    match error {
        webpki::Error::CertExpired { not_after, .. } => PeerRejection::Expired {
            not_after: not_after.as_secs(),
            now: now.as_secs(),
        },
        webpki::Error::CertNotValidYet { not_before, .. } => PeerRejection::NotYetValid {
            not_before: not_before.as_secs(),
            now: now.as_secs(),
        },
        webpki::Error::CaUsedAsEndEntity => PeerRejection::NotALeaf,
        webpki::Error::BadDer | webpki::Error::BadDerTime | webpki::Error::TrailingData(_) => {
            PeerRejection::Malformed(format!("{error:?}"))
        }
        other => PeerRejection::BadChain(format!("{other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::ca::{Ca, KeyAlg};
    use crate::identity::issue::LeafTemplate;
    use appid_policy::claims::attestation;
    use time::{Duration, OffsetDateTime};

    struct Fixture {
        _dir: tempfile::TempDir,
        ca: Ca,
        bundle: TrustBundle,
    }

    fn fixture(alg: KeyAlg) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::init(dir.path(), "prod.example", alg).unwrap();
        let bundle = TrustBundle::new(
            "ca.pem",
            std::slice::from_ref(ca.cert_der()),
            vec!["prod.example".into()],
        )
        .unwrap();
        Fixture {
            _dir: dir,
            ca,
            bundle,
        }
    }

    fn claims(id: &str) -> AppIdClaims {
        let mut claims = AppIdClaims::new(id, attestation::MANUAL);
        claims.labels.insert("app".into(), "web".into());
        claims
    }

    fn id() -> SpiffeId {
        SpiffeId::parse("spiffe://prod.example/ns/shop/sa/web").unwrap()
    }

    fn now() -> UnixTime {
        UnixTime::now()
    }

    fn issue_ok(f: &Fixture) -> CertificateDer<'static> {
        let key = KeyAlg::EcdsaP256.generate().unwrap();
        f.ca.issue(&id(), &claims(id().as_str()), &key, Duration::hours(1))
            .unwrap()
            .der
    }

    fn sign(
        f: &Fixture,
        extensions: Vec<Vec<u8>>,
        from: Duration,
        to: Duration,
    ) -> CertificateDer<'static> {
        let key = KeyAlg::EcdsaP256.generate().unwrap();
        let id = id();
        let now = OffsetDateTime::now_utc();
        let template = LeafTemplate {
            id: &id,
            appid_extensions: extensions,
            not_before: now + from,
            not_after: now + to,
        };
        f.ca.sign_leaf(&template, &key).unwrap().der
    }

    #[test]
    fn a_good_certificate_verifies_for_both_roles_and_algorithms() {
        for alg in [KeyAlg::EcdsaP256, KeyAlg::Ed25519] {
            let f = fixture(alg);
            let der = issue_ok(&f);
            for role in [PeerRole::Client, PeerRole::Server] {
                let peer = verify_peer(std::slice::from_ref(&der), &f.bundle, role, now()).unwrap();
                assert_eq!(peer.id, id());
                assert_eq!(peer.claims, claims(id().as_str()));
            }
        }
    }

    #[test]
    fn a_tampered_extension_breaks_the_signature() {
        let f = fixture(KeyAlg::EcdsaP256);
        let mut der = issue_ok(&f).to_vec();
        // Change one byte inside the claims JSON ("web" -> "wec").
        let at = der
            .windows(5)
            .position(|w| w == b"\"web\"")
            .expect("claims present");
        der[at + 3] = b'c';
        let err = verify_peer(
            &[CertificateDer::from(der)],
            &f.bundle,
            PeerRole::Client,
            now(),
        )
        .unwrap_err();
        assert_eq!(err.reason(), "bad_chain", "{err}");
    }

    #[test]
    fn a_certificate_from_another_ca_is_refused() {
        let ours = fixture(KeyAlg::EcdsaP256);
        let theirs = fixture(KeyAlg::EcdsaP256);
        let der = issue_ok(&theirs);
        let err = verify_peer(&[der], &ours.bundle, PeerRole::Client, now()).unwrap_err();
        assert_eq!(err.reason(), "bad_chain", "{err}");
    }

    #[test]
    fn expired_and_not_yet_valid_certificates_are_refused() {
        let f = fixture(KeyAlg::EcdsaP256);
        let ext = extension::encode(&claims(id().as_str())).unwrap();
        let expired = sign(
            &f,
            vec![ext.clone()],
            Duration::hours(-2),
            Duration::hours(-1),
        );
        let err = verify_peer(&[expired], &f.bundle, PeerRole::Client, now()).unwrap_err();
        assert_eq!(err.reason(), "expired", "{err}");
        let future = sign(&f, vec![ext], Duration::hours(1), Duration::hours(2));
        let err = verify_peer(&[future], &f.bundle, PeerRole::Client, now()).unwrap_err();
        assert_eq!(err.reason(), "not_yet_valid", "{err}");
    }

    #[test]
    fn two_appid_extensions_are_refused() {
        let f = fixture(KeyAlg::EcdsaP256);
        let ext = extension::encode(&claims(id().as_str())).unwrap();
        let der = sign(
            &f,
            vec![ext.clone(), ext],
            Duration::ZERO,
            Duration::hours(1),
        );
        let err = verify_peer(&[der], &f.bundle, PeerRole::Client, now()).unwrap_err();
        assert_eq!(err, PeerRejection::DuplicateAppId(2));
    }

    #[test]
    fn oversized_claims_are_refused() {
        let f = fixture(KeyAlg::EcdsaP256);
        let mut big = claims(id().as_str());
        big.labels.insert("padding".into(), "x".repeat(3000));
        let json = big.to_json();
        assert!(json.len() > 3000);
        let raw = der_utf8string(&json);
        let der = sign(&f, vec![raw], Duration::ZERO, Duration::hours(1));
        let err = verify_peer(&[der], &f.bundle, PeerRole::Client, now()).unwrap_err();
        assert!(
            matches!(
                err,
                PeerRejection::InvalidAppId(ExtensionError::TooLarge(_))
            ),
            "{err}"
        );
    }

    #[test]
    fn missing_appid_and_mismatched_id_are_refused() {
        let f = fixture(KeyAlg::EcdsaP256);
        let der = sign(&f, vec![], Duration::ZERO, Duration::hours(1));
        let err = verify_peer(&[der], &f.bundle, PeerRole::Client, now()).unwrap_err();
        assert_eq!(err, PeerRejection::MissingAppId);

        let other = extension::encode(&claims("spiffe://prod.example/other")).unwrap();
        let der = sign(&f, vec![other], Duration::ZERO, Duration::hours(1));
        let err = verify_peer(&[der], &f.bundle, PeerRole::Client, now()).unwrap_err();
        assert_eq!(err.reason(), "claims_id_mismatch", "{err}");
    }

    #[test]
    fn a_trust_domain_not_configured_is_refused() {
        let f = fixture(KeyAlg::EcdsaP256);
        let der = issue_ok(&f);
        let bundle = TrustBundle::new(
            "ca.pem",
            std::slice::from_ref(f.ca.cert_der()),
            vec!["other.example".into()],
        )
        .unwrap();
        let err = verify_peer(&[der], &bundle, PeerRole::Client, now()).unwrap_err();
        assert_eq!(err.reason(), "wrong_trust_domain", "{err}");
    }

    #[test]
    fn the_ca_itself_is_not_a_leaf() {
        let f = fixture(KeyAlg::EcdsaP256);
        let err = verify_peer(
            std::slice::from_ref(f.ca.cert_der()),
            &f.bundle,
            PeerRole::Client,
            now(),
        )
        .unwrap_err();
        assert_eq!(err, PeerRejection::NotALeaf);
    }

    #[test]
    fn no_certificate_and_garbage_are_refused() {
        let f = fixture(KeyAlg::EcdsaP256);
        assert_eq!(
            verify_peer(&[], &f.bundle, PeerRole::Client, now()).unwrap_err(),
            PeerRejection::NoCertificate
        );
        let err = verify_peer(
            &[CertificateDer::from(vec![0x30, 0x03, 1, 2, 3])],
            &f.bundle,
            PeerRole::Client,
            now(),
        )
        .unwrap_err();
        assert_eq!(err.reason(), "malformed", "{err}");
    }

    fn der_utf8string(text: &str) -> Vec<u8> {
        let len = text.len();
        let mut out = vec![0x0c];
        if len < 0x80 {
            out.push(len as u8);
        } else if len < 0x100 {
            out.extend([0x81, len as u8]);
        } else {
            out.extend([0x82, (len >> 8) as u8, len as u8]);
        }
        out.extend_from_slice(text.as_bytes());
        out
    }
}
