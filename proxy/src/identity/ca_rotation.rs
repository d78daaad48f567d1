//! CA rotation without an outage, in three steps (as SPIRE does it):
//!
//! 1. **prepare**: a new CA is made (`ca-next.pem`, `ca-next.key`) and
//!    published in the trust bundle beside the signing one; nothing is
//!    signed with it yet. Sidecars fetch the bundle from the authority
//!    (every few seconds) and trust both.
//! 2. **activate**: once sidecars have the new CA, it becomes the signing
//!    one (`ca.pem`/`ca.key`); the old certificate stays in the bundle as
//!    `ca-previous.pem`, because certificates it signed are still live
//!    until they expire (at most one `--cert-ttl`) and renew.
//! 3. **retire**: after the longest certificate life has passed, the old CA
//!    leaves the bundle.
//!
//! Design bias: *the directory is the state*. Every replica of the
//! authority watches the same files (mounted from one secret) and follows
//! them; each step is a few renames, and a step interrupted half way is
//! finished by the next load ([`finish_interrupted`]). The step to take is
//! read from what files exist, so `appid authority ca rotate` just takes
//! the next one.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rustls_pki_types::CertificateDer;

use super::ca::{CA_CERT_FILE, CA_KEY_FILE, Ca, CaError, KeyAlg};
use super::files;

/// The prepared CA, not yet signing.
pub const NEXT_CERT_FILE: &str = "ca-next.pem";
pub const NEXT_KEY_FILE: &str = "ca-next.key";
/// The CA signed with before the last activation, still trusted.
pub const PREVIOUS_CERT_FILE: &str = "ca-previous.pem";

/// Where a CA directory is in a rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// One CA, nothing under way.
    Steady,
    /// A next CA is published, not signing yet (since the file's time).
    Prepared { since: SystemTime },
    /// Signing with the new CA; the previous one still trusted (since).
    Activated { since: SystemTime },
}

/// What `ca rotate` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Prepared,
    Activated,
    Retired,
}

/// The phase of `dir`, from the files that exist.
pub fn phase(dir: &Path) -> Result<Phase, CaError> {
    finish_interrupted(dir)?;
    let modified = |name: &str| -> Result<Option<SystemTime>, CaError> {
        match std::fs::metadata(dir.join(name)) {
            Ok(meta) => Ok(Some(meta.modified().unwrap_or(SystemTime::UNIX_EPOCH))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(CaError::Io {
                path: dir.join(name),
                error,
            }),
        }
    };
    Ok(
        match (modified(NEXT_CERT_FILE)?, modified(PREVIOUS_CERT_FILE)?) {
            (Some(since), _) => Phase::Prepared { since },
            (None, Some(since)) => Phase::Activated { since },
            (None, None) => Phase::Steady,
        },
    )
}

/// Every CA certificate the trust bundle holds now: the signing one first,
/// then the prepared and the previous one, if any.
pub fn bundle(dir: &Path) -> Result<Vec<CertificateDer<'static>>, CaError> {
    finish_interrupted(dir)?;
    let mut roots = files::read_certs(&dir.join(CA_CERT_FILE))?;
    for name in [NEXT_CERT_FILE, PREVIOUS_CERT_FILE] {
        let path = dir.join(name);
        if path.exists() {
            roots.extend(files::read_certs(&path)?);
        }
    }
    Ok(roots)
}

/// The same as PEM, as served to sidecars.
pub fn bundle_pem(dir: &Path) -> Result<String, CaError> {
    Ok(bundle(dir)?
        .iter()
        .map(|der| super::issue::pem_encode(der))
        .collect::<Vec<_>>()
        .join(""))
}

/// Takes the next step in `dir`: prepare (none under way), activate (one
/// prepared, at least `propagation` ago), retire (activated at least
/// `longest_life` ago). `force` skips the waits.
pub fn rotate(
    dir: &Path,
    alg: KeyAlg,
    propagation: std::time::Duration,
    longest_life: std::time::Duration,
    force: bool,
) -> Result<Step, RotateError> {
    let current = Ca::load(dir)?;
    let age = |since: SystemTime| SystemTime::now().duration_since(since).unwrap_or_default();
    match phase(dir)? {
        Phase::Steady => {
            let next_dir = dir.join(".ca-next.tmp");
            let _ = std::fs::remove_dir_all(&next_dir);
            Ca::init(&next_dir, current.trust_domain(), alg)?;
            rename(&next_dir.join(CA_KEY_FILE), &dir.join(NEXT_KEY_FILE))?;
            rename(&next_dir.join(CA_CERT_FILE), &dir.join(NEXT_CERT_FILE))?;
            let _ = std::fs::remove_dir_all(&next_dir);
            Ok(Step::Prepared)
        }
        Phase::Prepared { since } => {
            if !force && age(since) < propagation {
                return Err(RotateError::TooSoon {
                    step: "activate",
                    wait: propagation - age(since),
                    why: "sidecars may not have fetched the new CA yet",
                });
            }
            if dir.join(PREVIOUS_CERT_FILE).exists() {
                return Err(RotateError::PreviousStillTrusted);
            }
            // Keep the old certificate trusted, then swap in the new pair:
            // key first, certificate last (an interruption in between is
            // finished by `finish_interrupted`).
            let keep = dir.join(".ca-previous.tmp");
            std::fs::copy(dir.join(CA_CERT_FILE), &keep).map_err(|error| CaError::Io {
                path: keep.clone(),
                error,
            })?;
            rename(&keep, &dir.join(PREVIOUS_CERT_FILE))?;
            rename(&dir.join(NEXT_KEY_FILE), &dir.join(CA_KEY_FILE))?;
            match std::fs::rename(dir.join(NEXT_CERT_FILE), dir.join(CA_CERT_FILE)) {
                Ok(()) => {}
                // A replica loading the directory right now finished the
                // step for us (`finish_interrupted`).
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => {
                    return Err(CaError::Io {
                        path: dir.join(CA_CERT_FILE),
                        error,
                    }
                    .into());
                }
            }
            Ok(Step::Activated)
        }
        Phase::Activated { since } => {
            if !force && age(since) < longest_life {
                return Err(RotateError::TooSoon {
                    step: "retire",
                    wait: longest_life - age(since),
                    why: "certificates signed by the previous CA may still be live",
                });
            }
            let path = dir.join(PREVIOUS_CERT_FILE);
            std::fs::remove_file(&path).map_err(|error| CaError::Io { path, error })?;
            Ok(Step::Retired)
        }
    }
}

/// Finishes an activation interrupted between its renames: the new key is
/// in `ca.key` while `ca-next.pem` still holds its certificate.
pub fn finish_interrupted(dir: &Path) -> Result<(), CaError> {
    let next_cert = dir.join(NEXT_CERT_FILE);
    if next_cert.exists() && !dir.join(NEXT_KEY_FILE).exists() {
        rename(&next_cert, &dir.join(CA_CERT_FILE))?;
    }
    Ok(())
}

fn rename(from: &Path, to: &Path) -> Result<(), CaError> {
    std::fs::rename(from, to).map_err(|error| CaError::Io {
        path: PathBuf::from(to),
        error,
    })
}

/// Why `ca rotate` did not take its step.
#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error(
        "too soon to {step}: {why}; wait {}s more (or pass --force if you know better)",
        wait.as_secs() + 1
    )]
    TooSoon {
        step: &'static str,
        wait: std::time::Duration,
        why: &'static str,
    },
    #[error(
        "a previous CA is still trusted: retire it first (run `ca rotate` once more after its certificates expired)"
    )]
    PreviousStillTrusted,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn three_steps_keep_every_live_certificate_trusted() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("ca");
        let first = Ca::init(&dir, "prod.example", KeyAlg::EcdsaP256).unwrap();
        let zero = Duration::ZERO;
        assert_eq!(phase(&dir).unwrap(), Phase::Steady);
        assert_eq!(bundle(&dir).unwrap(), vec![first.cert_der().clone()]);

        let step = rotate(&dir, KeyAlg::EcdsaP256, zero, zero, false).unwrap();
        assert_eq!(step, Step::Prepared);
        assert!(matches!(phase(&dir).unwrap(), Phase::Prepared { .. }));
        let roots = bundle(&dir).unwrap();
        assert_eq!(roots.len(), 2);
        assert_eq!(&roots[0], first.cert_der(), "still signing with the first");
        assert_eq!(Ca::load(&dir).unwrap().cert_der(), first.cert_der());
        let next = roots[1].clone();

        // Too soon, unless forced.
        let err = rotate(
            &dir,
            KeyAlg::EcdsaP256,
            Duration::from_secs(60),
            zero,
            false,
        )
        .unwrap_err();
        assert!(err.to_string().contains("too soon to activate"), "{err}");

        assert_eq!(
            rotate(&dir, KeyAlg::EcdsaP256, zero, zero, false).unwrap(),
            Step::Activated
        );
        let active = Ca::load(&dir).unwrap();
        assert_eq!(active.cert_der(), &next, "signing with the new one");
        assert_eq!(active.trust_domain(), "prod.example");
        assert_eq!(
            bundle(&dir).unwrap(),
            vec![next.clone(), first.cert_der().clone()]
        );
        assert!(
            bundle_pem(&dir)
                .unwrap()
                .matches("BEGIN CERTIFICATE")
                .count()
                == 2
        );

        let err = rotate(
            &dir,
            KeyAlg::EcdsaP256,
            zero,
            Duration::from_secs(60),
            false,
        )
        .unwrap_err();
        assert!(err.to_string().contains("too soon to retire"), "{err}");
        assert_eq!(
            rotate(&dir, KeyAlg::EcdsaP256, zero, Duration::from_secs(60), true).unwrap(),
            Step::Retired
        );
        assert_eq!(phase(&dir).unwrap(), Phase::Steady);
        assert_eq!(bundle(&dir).unwrap(), vec![next]);
    }

    #[test]
    fn an_activation_cut_between_its_renames_is_finished() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("ca");
        Ca::init(&dir, "prod.example", KeyAlg::EcdsaP256).unwrap();
        rotate(
            &dir,
            KeyAlg::EcdsaP256,
            Duration::ZERO,
            Duration::ZERO,
            false,
        )
        .unwrap();
        let next = bundle(&dir).unwrap()[1].clone();
        // As if the process died right after moving the key.
        std::fs::rename(dir.join(NEXT_KEY_FILE), dir.join(CA_KEY_FILE)).unwrap();
        // The next load finishes it: the new key with its own certificate.
        assert_eq!(Ca::load(&dir).unwrap().cert_der(), &next);
        assert!(!dir.join(NEXT_CERT_FILE).exists());
        assert_eq!(bundle(&dir).unwrap()[0], next);
    }
}
