//! The certificate authority that signs AppID certificates.
//!
//! A CA directory holds `ca.pem` (the self-signed root, also the trust bundle
//! sidecars verify against) and `ca.key` (PKCS#8, mode 0600). The trust
//! domain is recorded in the root itself, as its SPIFFE URI SAN
//! `spiffe://<trust-domain>` (the SPIFFE convention for signing
//! certificates), so the directory has no second source of truth.
//!
//! `init` refuses to touch an existing CA: replacing a root silently would
//! cut every workload off the mesh.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SanType, SignatureAlgorithm,
};
use rustls_pki_types::CertificateDer;
use thiserror::Error;
use time::{Duration, OffsetDateTime};

use super::files::{self, FileError, NewFile};
use super::spiffe::{self, SpiffeIdError};

/// File name of the CA certificate inside a CA directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key inside a CA directory.
pub const CA_KEY_FILE: &str = "ca.key";

/// How long a root made by `init` is valid.
const CA_VALIDITY: Duration = Duration::days(5 * 365);

/// The key algorithm of a CA or of a workload key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum KeyAlg {
    /// ECDSA on P-256 with SHA-256 (the default; what SPIFFE tools expect).
    #[default]
    #[value(name = "ecdsa-p256")]
    EcdsaP256,
    /// Ed25519.
    #[value(name = "ed25519")]
    Ed25519,
}

impl KeyAlg {
    pub fn signature_algorithm(self) -> &'static SignatureAlgorithm {
        match self {
            KeyAlg::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyAlg::Ed25519 => &rcgen::PKCS_ED25519,
        }
    }

    /// A fresh key pair of this algorithm.
    pub fn generate(self) -> Result<KeyPair, CaError> {
        KeyPair::generate_for(self.signature_algorithm()).map_err(CaError::Crypto)
    }
}

/// Why a CA could not be created or loaded.
#[derive(Debug, Error)]
pub enum CaError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error(
        "{}: a CA already exists here ({CA_CERT_FILE} or {CA_KEY_FILE}); refusing to overwrite it. Use another --dir, or remove the old CA deliberately",
        dir.display()
    )]
    AlreadyExists { dir: PathBuf },
    #[error("{}: cannot create the CA directory: {error}", dir.display())]
    CreateDir { dir: PathBuf, error: std::io::Error },
    #[error("invalid trust domain: {0}")]
    TrustDomain(#[from] SpiffeIdError),
    #[error("{}: not a CA made by `appid authority init`: {detail}", path.display())]
    NotOurCa { path: PathBuf, detail: String },
    #[error("{}: cannot load the CA key: {error}", path.display())]
    BadKey { path: PathBuf, error: rcgen::Error },
    #[error("certificate generation failed: {0}")]
    Crypto(rcgen::Error),
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// A loaded CA: its certificate, key and trust domain.
pub struct Ca {
    trust_domain: String,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    key: KeyPair,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("Ca")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// Creates a new CA in `dir` (created if missing). Refuses if one exists.
    pub fn init(dir: &Path, trust_domain: &str, alg: KeyAlg) -> Result<Ca, CaError> {
        spiffe::validate_trust_domain(trust_domain)?;
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        if cert_path.exists() || key_path.exists() {
            return Err(CaError::AlreadyExists {
                dir: dir.to_path_buf(),
            });
        }
        std::fs::create_dir_all(dir).map_err(|error| CaError::CreateDir {
            dir: dir.to_path_buf(),
            error,
        })?;

        let key = alg.generate()?;
        let params = root_params(trust_domain)?;
        let cert = params.self_signed(&key).map_err(CaError::Crypto)?;
        let cert_pem = cert.pem();
        let key_pem = key.serialize_pem();
        files::write_all_or_nothing(
            &[
                NewFile {
                    path: &key_path,
                    contents: key_pem.as_bytes(),
                    mode: 0o600,
                },
                NewFile {
                    path: &cert_path,
                    contents: cert_pem.as_bytes(),
                    mode: 0o644,
                },
            ],
            false,
        )
        .map_err(|e| match e {
            FileError::AlreadyExists { .. } => CaError::AlreadyExists {
                dir: dir.to_path_buf(),
            },
            other => other.into(),
        })?;
        Ok(Ca {
            trust_domain: trust_domain.to_string(),
            cert_der: cert.der().clone(),
            cert_pem,
            key,
        })
    }

    /// Loads the CA in `dir` (the signing one, during a rotation: see
    /// [`super::ca_rotation`], whose interrupted step this finishes).
    pub fn load(dir: &Path) -> Result<Ca, CaError> {
        super::ca_rotation::finish_interrupted(dir)?;
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let cert_der = files::read_certs(&cert_path)?.remove(0);
        let key_pem = files::read_private_key_pem(&key_path)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|error| CaError::BadKey {
            path: key_path.clone(),
            error,
        })?;
        let trust_domain = trust_domain_of_root(&cert_path, &cert_der)?;
        let cert_pem = String::from_utf8_lossy(&files::read_small(&cert_path)?).into_owned();
        Ok(Ca {
            trust_domain,
            cert_der,
            cert_pem,
            key,
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub(crate) fn key(&self) -> &KeyPair {
        &self.key
    }
}

fn root_params(trust_domain: &str) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "appid");
    dn.push(DnType::CommonName, format!("appid CA {trust_domain}"));
    params.distinguished_name = dn;
    let uri = format!("spiffe://{trust_domain}");
    params.subject_alt_names = vec![SanType::URI(
        uri.as_str().try_into().map_err(CaError::Crypto)?,
    )];
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + CA_VALIDITY;
    params.serial_number = Some(super::issue::random_serial());
    Ok(params)
}

/// Reads the trust domain from the root's `spiffe://<td>` URI SAN.
pub(crate) fn trust_domain_of_root(
    path: &Path,
    der: &CertificateDer<'_>,
) -> Result<String, CaError> {
    let not_ours = |detail: &str| CaError::NotOurCa {
        path: path.to_path_buf(),
        detail: detail.to_string(),
    };
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| not_ours(&format!("cannot parse certificate: {e}")))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| not_ours(&e.to_string()))?
        .ok_or_else(|| not_ours("no spiffe://<trust-domain> URI SAN"))?;
    for name in &san.value.general_names {
        if let x509_parser::extensions::GeneralName::URI(uri) = name
            && let Some(domain) = uri.strip_prefix("spiffe://")
        {
            spiffe::validate_trust_domain(domain)?;
            return Ok(domain.to_string());
        }
    }
    Err(not_ours("no spiffe://<trust-domain> URI SAN"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn init_then_load_round_trips_for_both_algorithms() {
        for alg in [KeyAlg::EcdsaP256, KeyAlg::Ed25519] {
            let dir = tempfile::tempdir().unwrap();
            let ca_dir = dir.path().join("ca");
            let made = Ca::init(&ca_dir, "prod.example", alg).unwrap();
            let loaded = Ca::load(&ca_dir).unwrap();
            assert_eq!(loaded.trust_domain(), "prod.example");
            assert_eq!(loaded.cert_der(), made.cert_der());
            let mode = std::fs::metadata(ca_dir.join(CA_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn init_refuses_an_existing_ca_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        Ca::init(dir.path(), "td", KeyAlg::EcdsaP256).unwrap();
        let before = std::fs::read(dir.path().join(CA_KEY_FILE)).unwrap();
        let err = Ca::init(dir.path(), "td", KeyAlg::EcdsaP256).unwrap_err();
        assert!(matches!(err, CaError::AlreadyExists { .. }), "{err}");
        assert_eq!(std::fs::read(dir.path().join(CA_KEY_FILE)).unwrap(), before);
    }

    #[test]
    fn init_refuses_a_bad_trust_domain_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let err = Ca::init(&dir.path().join("x"), "Bad Domain", KeyAlg::EcdsaP256).unwrap_err();
        assert!(matches!(err, CaError::TrustDomain(_)), "{err}");
        assert!(!dir.path().join("x").exists());
    }
}
