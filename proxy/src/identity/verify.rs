//! Verifying a peer's AppID certificate: chain, SPIFFE ID, AppID claims.
//!
//! This is the function the data plane calls for every handshake, from both
//! sides. It answers one question: *who is this peer, according to our trust
//! bundle?* — a verified SPIFFE ID plus the claims the authority signed, or a
//! [`PeerRejection`] that says precisely why not. Authorization (policy) is a
//! separate, later step.
//!
//! Order of checks, each one failing closed:
//! 1. the trust domain: the leaf is not a CA, and its one URI SAN is a `spiffe://` ID of a
//!    trust domain we trust, which picks the roots to check it with: our
//!    own trust domains share the roots of our authority, and each
//!    federated trust domain has the roots its own authority published, for
//!    it alone (SPIFFE Trust Domain and Bundle, §5). Until step 2 the ID is
//!    only a claim; it chooses the anchors, it is believed after the chain.
//!    So another authority's CA can never vouch for an ID in our trust
//!    domain, or in a third one;
//! 2. the chain: signatures up to one of those anchors, validity window,
//!    EKU (rustls-webpki, the same code rustls itself uses);
//! 3. exactly one AppID extension, non-critical, decoding strictly, whose
//!    `id` equals the SAN.
//!
//! Host names and IP addresses are never consulted.

use std::collections::BTreeMap;

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
    /// Our authority's roots, for every one of `trust_domains`.
    anchors: Vec<TrustAnchor<'static>>,
    trust_domains: Vec<String>,
    /// Federated trust domains, each with only the roots its authority
    /// published.
    federated: BTreeMap<String, Vec<TrustAnchor<'static>>>,
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
    #[error(
        "{0} is one of our own trust domains; a federated bundle can only be for another authority's"
    )]
    FederatedIsLocal(String),
    #[error("the federated bundle of {0} holds no root certificate")]
    FederatedEmpty(String),
    #[error("the bundle of {trust_domain}: {detail}")]
    FederatedFile {
        trust_domain: String,
        detail: String,
    },
}

fn anchors_of(
    file: &str,
    roots: &[CertificateDer<'_>],
) -> Result<Vec<TrustAnchor<'static>>, BundleError> {
    roots
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
        .collect()
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
        Ok(TrustBundle {
            anchors: anchors_of(file, roots)?,
            trust_domains,
            federated: BTreeMap::new(),
        })
    }

    /// This bundle, also trusting `roots` for `trust_domain` (and for
    /// nothing else). Replaces what it trusted for that domain before.
    pub fn with_federated(
        mut self,
        trust_domain: &str,
        roots: &[CertificateDer<'_>],
    ) -> Result<Self, BundleError> {
        if self.trust_domains.iter().any(|td| td == trust_domain) {
            return Err(BundleError::FederatedIsLocal(trust_domain.to_string()));
        }
        if roots.is_empty() {
            return Err(BundleError::FederatedEmpty(trust_domain.to_string()));
        }
        let anchors = anchors_of(&format!("the bundle of {trust_domain}"), roots)?;
        self.federated.insert(trust_domain.to_string(), anchors);
        Ok(self)
    }

    /// This bundle, also trusting the roots in each of `files` (trust
    /// domain → SPIFFE bundle JSON or PEM) for that trust domain only.
    pub fn with_federated_files(
        mut self,
        files: &BTreeMap<String, std::path::PathBuf>,
    ) -> Result<Self, BundleError> {
        for (trust_domain, path) in files {
            let roots = super::spiffe_bundle::read_roots_file(path).map_err(|detail| {
                BundleError::FederatedFile {
                    trust_domain: trust_domain.clone(),
                    detail,
                }
            })?;
            self = self.with_federated(trust_domain, &roots)?;
        }
        Ok(self)
    }

    /// The federated trust domains, in order.
    pub fn federated_domains(&self) -> impl Iterator<Item = &str> {
        self.federated.keys().map(String::as_str)
    }

    /// The roots a leaf claiming `trust_domain` must chain to, if we trust
    /// that domain at all.
    fn anchors_for(&self, trust_domain: &str) -> Option<&[TrustAnchor<'static>]> {
        if self.trust_domains.iter().any(|td| td == trust_domain) {
            Some(&self.anchors)
        } else {
            self.federated.get(trust_domain).map(Vec::as_slice)
        }
    }

    /// Every trust domain we accept peers of, for messages.
    fn accepted_domains(&self) -> String {
        self.trust_domains
            .iter()
            .map(String::as_str)
            .chain(self.federated_domains())
            .collect::<Vec<_>>()
            .join(", ")
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
    /// the same trust domains, federated ones included.
    pub fn same_roots(&self, other: &TrustBundle) -> bool {
        fn keys(anchors: &[TrustAnchor<'_>]) -> Vec<(Vec<u8>, Vec<u8>)> {
            let mut keys: Vec<_> = anchors
                .iter()
                .map(|a| {
                    (
                        a.subject.as_ref().to_vec(),
                        a.subject_public_key_info.as_ref().to_vec(),
                    )
                })
                .collect();
            keys.sort();
            keys
        }
        keys(&self.anchors) == keys(&other.anchors)
            && self.trust_domains == other.trust_domains
            && self.federated.len() == other.federated.len()
            && self
                .federated
                .iter()
                .zip(&other.federated)
                .all(|((d1, a1), (d2, a2))| d1 == d2 && keys(a1) == keys(a2))
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
    let (id, cert) = verify_svid_leaf(chain, bundle, role, now)?;

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

/// Steps 1 and 2 only: a SPIFFE X509-SVID of a trusted trust domain,
/// with or without AppID claims. For servers that are SPIFFE but not
/// appid (another trust domain's bundle endpoint, `https_spiffe`).
pub fn verify_svid(
    chain: &[CertificateDer<'_>],
    bundle: &TrustBundle,
    role: PeerRole,
    now: UnixTime,
) -> Result<SpiffeId, PeerRejection> {
    verify_svid_leaf(chain, bundle, role, now).map(|(id, _)| id)
}

fn verify_svid_leaf<'a>(
    chain: &'a [CertificateDer<'_>],
    bundle: &TrustBundle,
    role: PeerRole,
    now: UnixTime,
) -> Result<(SpiffeId, X509Certificate<'a>), PeerRejection> {
    let (leaf_der, intermediates) = chain.split_first().ok_or(PeerRejection::NoCertificate)?;

    // 1. The trust domain the leaf claims picks the roots.
    let (_, cert) = x509_parser::parse_x509_certificate(leaf_der)
        .map_err(|e| PeerRejection::Malformed(e.to_string()))?;
    if cert.is_ca() {
        return Err(PeerRejection::NotALeaf);
    }
    let id = spiffe_id_of(&cert)?;
    let anchors =
        bundle
            .anchors_for(id.trust_domain())
            .ok_or_else(|| PeerRejection::WrongTrustDomain {
                id: id.to_string(),
                allowed: bundle.accepted_domains(),
            })?;

    // 2. The chain, to those roots only.
    let leaf = webpki::EndEntityCert::try_from(leaf_der).map_err(|e| map_webpki(e, now))?;
    let usage = match role {
        PeerRole::Client => KeyUsage::client_auth(),
        PeerRole::Server => KeyUsage::server_auth(),
    };
    let algorithms = rustls::crypto::aws_lc_rs::default_provider()
        .signature_verification_algorithms
        .all;
    leaf.verify_for_usage(algorithms, anchors, intermediates, now, usage, None, None)
        .map_err(|e| map_webpki(e, now))?;
    Ok((id, cert))
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

    /// A leaf for `id` signed by `ca`, whatever trust domain `id` is in
    /// (a CA that tries to speak for another domain).
    fn leaf_by(ca: &Ca, id: &str) -> CertificateDer<'static> {
        let key = KeyAlg::EcdsaP256.generate().unwrap();
        let id = SpiffeId::parse(id).unwrap();
        let now = OffsetDateTime::now_utc();
        let claims = claims(id.as_str());
        let template = LeafTemplate {
            id: &id,
            appid_extensions: vec![appid_policy::extension::encode(&claims).unwrap()],
            not_before: now - Duration::minutes(1),
            not_after: now + Duration::hours(1),
        };
        ca.sign_leaf(&template, &key).unwrap().der
    }

    #[test]
    fn a_federated_domain_is_trusted_with_its_own_roots_only() {
        let ours = fixture(KeyAlg::EcdsaP256);
        let dir = tempfile::tempdir().unwrap();
        let gcp = Ca::init(dir.path(), "gcp.example", KeyAlg::EcdsaP256).unwrap();
        let bundle = ours
            .bundle
            .clone()
            .with_federated("gcp.example", std::slice::from_ref(gcp.cert_der()))
            .unwrap();
        let verify = |der: &CertificateDer<'static>| {
            verify_peer(std::slice::from_ref(der), &bundle, PeerRole::Client, now())
        };
        // Each authority for its own domain: trusted.
        let peer = verify(&leaf_by(&gcp, "spiffe://gcp.example/api")).unwrap();
        assert_eq!(peer.id.trust_domain(), "gcp.example");
        verify(&leaf_by(&ours.ca, "spiffe://prod.example/web")).unwrap();
        // Each authority for the other's domain: the chain does not reach
        // the roots of the domain it claims.
        for der in [
            leaf_by(&gcp, "spiffe://prod.example/web"),
            leaf_by(&ours.ca, "spiffe://gcp.example/api"),
        ] {
            assert!(matches!(verify(&der), Err(PeerRejection::BadChain(_))));
        }
        // A third domain: no roots at all.
        let err = verify(&leaf_by(&gcp, "spiffe://aws.example/x")).unwrap_err();
        assert_eq!(err.reason(), "wrong_trust_domain");
        assert!(
            err.to_string().contains("prod.example, gcp.example"),
            "{err}"
        );
        // Without the federated bundle, the gcp peer is refused.
        assert_eq!(
            verify_peer(
                &[leaf_by(&gcp, "spiffe://gcp.example/api")],
                &ours.bundle,
                PeerRole::Client,
                now()
            )
            .unwrap_err()
            .reason(),
            "wrong_trust_domain"
        );
        // Our own domain cannot be federated; roots compare per domain.
        assert!(matches!(
            ours.bundle
                .clone()
                .with_federated("prod.example", std::slice::from_ref(gcp.cert_der())),
            Err(BundleError::FederatedIsLocal(_))
        ));
        assert!(!bundle.same_roots(&ours.bundle));
        assert!(bundle.same_roots(&bundle.clone()));
        let swapped = ours
            .bundle
            .clone()
            .with_federated("gcp.example", std::slice::from_ref(ours.ca.cert_der()))
            .unwrap();
        assert!(!bundle.same_roots(&swapped));
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
