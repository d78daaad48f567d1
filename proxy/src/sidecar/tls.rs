//! TLS between sidecars: TLS 1.3 only, mutual, ALPN `appid/1`.
//!
//! rustls does the protocol; appid decides who is trusted. Both directions
//! use the same two pieces:
//!
//! - [`PeerVerifier`] plugs [`verify_peer`] into rustls as the client- and
//!   server-certificate verifier, so a peer without a valid AppID certificate
//!   fails the handshake itself (fail closed, before any app byte moves).
//!   Host names are ignored: identity is the SPIFFE ID and the claims.
//! - [`IdentityResolver`] hands rustls our current certificate at every
//!   handshake from an [`ArcSwap`], so a renewed certificate or a new trust
//!   bundle applies to the next handshake without touching live connections.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use thiserror::Error;

use appid_policy::AppIdClaims;

use crate::config::TunnelMode;
use crate::identity::files::{self, FileError};
use crate::identity::spiffe::SpiffeId;
use crate::identity::verify::{
    self, BundleError, PeerRejection, PeerRole, TrustBundle, VerifiedPeer,
};

/// The ALPN protocols sidecars speak to each other (one app connection per
/// TLS connection; many, as HTTP/2 streams: see [`super::tunnel`]).
pub use crate::detect::{ALPN_APPID, ALPN_APPID_MUX};

/// Why our own identity could not be loaded.
#[derive(Debug, Error)]
pub enum IdentityError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("{file}: not a usable private key: {detail}")]
    BadKey { file: String, detail: String },
    #[error("{file}: our own certificate is not a valid AppID certificate: {problem}")]
    BadOwnCert {
        file: String,
        problem: PeerRejection,
    },
    #[error("{cert} and {key} do not belong together: {detail}")]
    KeyMismatch {
        cert: String,
        key: String,
        detail: String,
    },
}

/// Our workload's certificate, key and claims.
#[derive(Debug)]
pub struct LocalIdentity {
    pub certified: Arc<CertifiedKey>,
    pub id: SpiffeId,
    /// Shared, not copied, by every connection's authorization context.
    pub claims: Arc<AppIdClaims>,
    /// Seconds since the epoch at which our certificate expires.
    pub not_after: i64,
}

impl LocalIdentity {
    /// Loads our certificate chain and key, checking the certificate against
    /// `bundle` exactly as a peer would (so a misconfiguration shows here,
    /// at startup, not as every peer refusing us).
    pub fn load(cert: &Path, key: &Path, bundle: &TrustBundle) -> Result<Self, IdentityError> {
        let chain_pem = files::read_small(cert)?;
        let key_pem = files::read_small(key)?;
        Self::from_pem(
            &cert.display().to_string(),
            &chain_pem,
            &key.display().to_string(),
            &key_pem,
            bundle,
        )
    }

    /// The same from PEM bytes in memory (`cert_name`/`key_name` are only
    /// used in errors): certificates from the authority never touch disk.
    pub fn from_pem(
        cert_name: &str,
        chain_pem: &[u8],
        key_name: &str,
        key_pem: &[u8],
        bundle: &TrustBundle,
    ) -> Result<Self, IdentityError> {
        let chain = files::parse_certs(Path::new(cert_name), chain_pem)?;
        let key_der =
            PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| IdentityError::BadKey {
                file: key_name.to_string(),
                detail: e.to_string(),
            })?;
        let verified = verify::verify_peer(&chain, bundle, PeerRole::Server, UnixTime::now())
            .map_err(|problem| IdentityError::BadOwnCert {
                file: cert_name.to_string(),
                problem,
            })?;
        let certified = CertifiedKey::from_der(chain, key_der, &provider()).map_err(|e| {
            IdentityError::KeyMismatch {
                cert: cert_name.to_string(),
                key: key_name.to_string(),
                detail: e.to_string(),
            }
        })?;
        Ok(LocalIdentity {
            certified: Arc::new(certified),
            id: verified.id,
            claims: Arc::new(verified.claims),
            not_after: verified.not_after,
        })
    }
}

impl LocalIdentity {
    /// What the admin API's `/appid` shows: our SPIFFE ID and claims.
    pub fn admin_json(&self) -> serde_json::Value {
        serde_json::json!({"id": self.id.as_str(), "claims": &*self.claims})
    }
}

/// Whom the sidecar trusts: the bundle and the authority's revocations.
/// One per sidecar, shared by every identity it holds ([`TlsState`]).
#[derive(Debug)]
pub struct Trust {
    pub bundle: ArcSwap<TrustBundle>,
    /// SPIFFE IDs the authority revoked: refused at every handshake.
    pub revoked: ArcSwap<HashSet<String>>,
}

/// What the TLS layer reads at every handshake of one local identity: its
/// certificate (swapped on renewal or reload) and the sidecar's trust.
#[derive(Debug)]
pub struct TlsState {
    pub identity: ArcSwap<LocalIdentity>,
    pub trust: Arc<Trust>,
}

impl TlsState {
    /// A local identity with a trust of its own (the authority's server,
    /// a sidecar with one identity).
    pub fn new(identity: LocalIdentity, bundle: TrustBundle) -> Arc<Self> {
        TlsState::sharing(identity, Trust::new(bundle))
    }

    /// A local identity verifying peers with `trust` (a sidecar holding
    /// several identities shares one trust between them).
    pub fn sharing(identity: LocalIdentity, trust: Arc<Trust>) -> Arc<Self> {
        Arc::new(TlsState {
            identity: ArcSwap::from_pointee(identity),
            trust,
        })
    }

    /// Whether a connection set up with `identity` and `bundle` still
    /// presents what a new handshake would (compared by pointer).
    pub fn is_current(&self, identity: &Arc<LocalIdentity>, bundle: &Arc<TrustBundle>) -> bool {
        Arc::ptr_eq(identity, &self.identity.load())
            && Arc::ptr_eq(bundle, &self.trust.bundle.load())
    }
}

impl Trust {
    pub fn new(bundle: TrustBundle) -> Arc<Self> {
        Arc::new(Trust {
            bundle: ArcSwap::from_pointee(bundle),
            revoked: ArcSwap::from_pointee(HashSet::new()),
        })
    }

    /// Verifies a peer chain (after the handshake too, for its claims),
    /// including revocation.
    pub fn verify(
        &self,
        chain: &[CertificateDer<'_>],
        role: PeerRole,
    ) -> Result<VerifiedPeer, PeerRejection> {
        self.verify_at(chain, role, UnixTime::now())
    }

    fn verify_at(
        &self,
        chain: &[CertificateDer<'_>],
        role: PeerRole,
        now: UnixTime,
    ) -> Result<VerifiedPeer, PeerRejection> {
        let peer = verify::verify_peer(chain, &self.bundle.load(), role, now)?;
        if self.revoked.load().contains(peer.id.as_str()) {
            return Err(PeerRejection::Revoked(peer.id.to_string()));
        }
        Ok(peer)
    }

    /// Whether `id` is revoked now.
    pub fn is_revoked(&self, id: &str) -> bool {
        self.revoked.load().contains(id)
    }
}

/// The crypto provider: rustls on aws-lc-rs.
pub fn provider() -> CryptoProvider {
    rustls::crypto::aws_lc_rs::default_provider()
}

/// [`provider`] with `TLS13_AES_128_GCM_SHA256` first, for a server that
/// picks the suite (the authority). aws-lc-rs lists AES-256/SHA-384
/// first, and SHA-384 (SHA-512's block function) has no instructions of
/// its own on x86 (SHA-256 has, SHA-NI): the handshake's key schedule
/// cost about 5% of the authority's CPU per issuance in SHA-512 blocks
/// (perf, `bench/issuance.rs`). Both suites are TLS 1.3's; 128-bit AES is
/// its mandatory one.
pub fn provider_sha256_first() -> CryptoProvider {
    let mut provider = provider();
    provider
        .cipher_suites
        .sort_by_key(|suite| suite.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    provider
}

/// Pays aws-lc's one-time cost before the sidecar says it is ready.
///
/// The first random bytes a process asks aws-lc for seed its DRBG, and that
/// takes tens of milliseconds (25–37 ms measured here, every later call
/// takes microseconds). Every TLS handshake starts with a fresh key share,
/// so without this the first connection through a fresh pair paid it on
/// both sides: 55–80 ms to a server's banner instead of 3. Later threads
/// share the seeded state, so once per process is enough.
pub fn warm_up() -> Result<(), aws_lc_rs::error::Unspecified> {
    let mut seed_probe = [0u8; 32];
    aws_lc_rs::rand::fill(&mut seed_probe)
}

/// The ALPN protocols a sidecar offers (client) or accepts (server), most
/// preferred first: a pooled sidecar prefers `appid-mux/1` and still speaks
/// `appid/1`; a strict one speaks only `appid/1`.
pub fn mesh_alpn(mode: TunnelMode) -> Vec<Vec<u8>> {
    match mode {
        TunnelMode::Pooled => vec![ALPN_APPID_MUX.to_vec(), ALPN_APPID.to_vec()],
        TunnelMode::Strict => vec![ALPN_APPID.to_vec()],
    }
}

/// Server side of sidecar mTLS: client certificate required.
pub fn server_config(state: Arc<TlsState>, mode: TunnelMode) -> Arc<rustls::ServerConfig> {
    server_config_with(provider(), state, ClientAuth::Required, mesh_alpn(mode))
}

/// Whether a TLS server demands a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Sidecar-to-sidecar: always.
    Required,
    /// The authority: bootstrap requests come without one, renewals with.
    Optional,
}

/// A TLS 1.3 server presenting `state`'s identity; client certificates,
/// when presented, are verified as AppID certificates. The cipher suite is
/// the first of `provider`'s that the client offers.
pub fn server_config_with(
    provider: CryptoProvider,
    state: Arc<TlsState>,
    client_auth: ClientAuth,
    alpn: Vec<Vec<u8>>,
) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(provider);
    let mut verifier = PeerVerifier::new(state.trust.clone(), &provider);
    verifier.mandatory = client_auth == ClientAuth::Required;
    let verifier = Arc::new(verifier);
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap_or_else(|_| unreachable!("aws-lc-rs supports TLS 1.3"))
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(IdentityResolver { state }));
    config.alpn_protocols = alpn;
    config.ignore_client_order = true;
    disable_resumption_server(&mut config);
    Arc::new(config)
}

/// No session resumption, on either side. A resumed TLS 1.3 session hands
/// back the peer certificates of the original full handshake: after a peer
/// renews (new claims, e.g. new vulnerability counts) or revokes, a resumed
/// connection would still be authorized on the old certificate. Every
/// connection therefore verifies the peer's current certificate; handshake
/// cost is amortized by connection reuse instead.
fn disable_resumption_server(config: &mut rustls::ServerConfig) {
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
}

/// Client side of sidecar mTLS.
pub fn client_config(state: Arc<TlsState>, mode: TunnelMode) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(provider());
    let verifier = Arc::new(PeerVerifier::new(state.trust.clone(), &provider));
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap_or_else(|_| unreachable!("aws-lc-rs supports TLS 1.3"))
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(IdentityResolver { state }));
    config.alpn_protocols = mesh_alpn(mode);
    // See `disable_resumption_server`.
    config.resumption = rustls::client::Resumption::disabled();
    // Names are not identity here; don't leak one in the ClientHello.
    config.enable_sni = false;
    Arc::new(config)
}

/// The server name rustls wants; never checked (see [`PeerVerifier`]).
pub fn peer_server_name() -> ServerName<'static> {
    ServerName::try_from("appid.invalid").unwrap_or_else(|_| unreachable!("valid DNS name"))
}

/// The reason label of a failed handshake, for metrics and audit lines.
pub fn handshake_failure_reason(error: &std::io::Error) -> String {
    let Some(tls) = error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    else {
        return match error.kind() {
            std::io::ErrorKind::TimedOut => "timeout".into(),
            std::io::ErrorKind::UnexpectedEof => "eof".into(),
            _ => "io".into(),
        };
    };
    match tls {
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => other
            .0
            .downcast_ref::<PeerRejection>()
            .map(|r| r.reason().to_string())
            .unwrap_or_else(|| "bad_certificate".into()),
        rustls::Error::NoCertificatesPresented => "no_certificate".into(),
        rustls::Error::AlertReceived(alert) => format!("alert_{alert:?}").to_lowercase(),
        rustls::Error::NoApplicationProtocol => "no_alpn".into(),
        rustls::Error::PeerIncompatible(_) => "incompatible".into(),
        _ => "tls".into(),
    }
}

/// Where a [`PeerVerifier`] gets its trust from: the verified peer's
/// SPIFFE ID, or why not.
pub trait PeerTrust: Send + Sync + std::fmt::Debug {
    fn verify_id(
        &self,
        chain: &[CertificateDer<'_>],
        role: PeerRole,
        now: UnixTime,
    ) -> Result<SpiffeId, PeerRejection>;
}

/// The sidecar's swappable bundle, with revocations.
impl PeerTrust for Trust {
    fn verify_id(
        &self,
        chain: &[CertificateDer<'_>],
        role: PeerRole,
        now: UnixTime,
    ) -> Result<SpiffeId, PeerRejection> {
        self.verify_at(chain, role, now).map(|peer| peer.id)
    }
}

/// A fixed bundle (e.g. to verify the authority before we have an identity).
impl PeerTrust for TrustBundle {
    fn verify_id(
        &self,
        chain: &[CertificateDer<'_>],
        role: PeerRole,
        now: UnixTime,
    ) -> Result<SpiffeId, PeerRejection> {
        verify::verify_peer(chain, self, role, now).map(|peer| peer.id)
    }
}

/// A fixed bundle for SPIFFE servers that carry no AppID claims (another
/// trust domain's bundle endpoint): the chain and the SPIFFE ID only.
#[derive(Debug)]
pub struct SvidOnly(pub TrustBundle);

impl PeerTrust for SvidOnly {
    fn verify_id(
        &self,
        chain: &[CertificateDer<'_>],
        role: PeerRole,
        now: UnixTime,
    ) -> Result<SpiffeId, PeerRejection> {
        verify::verify_svid(chain, &self.0, role, now)
    }
}

/// Checks peer certificates with [`verify_peer`], as a rustls client- and
/// server-certificate verifier.
#[derive(Debug)]
pub struct PeerVerifier {
    trust: Arc<dyn PeerTrust>,
    algorithms: WebPkiSupportedAlgorithms,
    /// Server side: whether a client certificate is required.
    mandatory: bool,
    /// Accept only this SPIFFE ID (e.g. the authority's), when set.
    expected_id: Option<String>,
}

impl PeerVerifier {
    pub fn new(trust: Arc<dyn PeerTrust>, provider: &CryptoProvider) -> Self {
        PeerVerifier {
            trust,
            algorithms: provider.signature_verification_algorithms,
            mandatory: true,
            expected_id: None,
        }
    }

    /// Accept only a peer with this SPIFFE ID.
    pub fn expecting(mut self, id: impl Into<String>) -> Self {
        self.expected_id = Some(id.into());
        self
    }

    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        role: PeerRole,
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let mut chain = Vec::with_capacity(1 + intermediates.len());
        chain.push(end_entity.clone());
        chain.extend(intermediates.iter().cloned());
        let peer_id = self
            .trust
            .verify_id(&chain, role, now)
            .map_err(|rejection| {
                rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(
                    Arc::new(rejection),
                )))
            })?;
        match &self.expected_id {
            Some(expected) if peer_id.as_str() != expected => Err(
                rustls::Error::InvalidCertificate(CertificateError::NotValidForName),
            ),
            _ => Ok(()),
        }
    }

    fn tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }
}

/// TLS 1.2 is never negotiated: every config here is TLS 1.3 only.
fn no_tls12() -> Result<HandshakeSignatureValid, rustls::Error> {
    Err(rustls::Error::PeerIncompatible(
        rustls::PeerIncompatible::Tls12NotOffered,
    ))
}

impl ClientCertVerifier for PeerVerifier {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity, intermediates, PeerRole::Client, now)
            .map(|()| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        no_tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity, intermediates, PeerRole::Server, now)
            .map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        no_tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Presents our current certificate.
#[derive(Debug)]
struct IdentityResolver {
    state: Arc<TlsState>,
}

impl rustls::server::ResolvesServerCert for IdentityResolver {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.state.identity.load().certified.clone())
    }
}

impl rustls::client::ResolvesClientCert for IdentityResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.state.identity.load().certified.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}
