//! The sidecar's kept identity: its key and certificate in a state
//! directory (`identity.authority.state_dir`), so that it survives restarts.
//!
//! Why: a join token is one-time. A sidecar whose identity lived only in
//! memory could not come back after a restart (a crash, a node reboot, a
//! rolling update of the sidecar itself) without an operator registering it
//! again. With a state directory, a restarted sidecar whose kept certificate
//! is still valid (and chains to the configured bundle) serves with it at
//! once and renews over mTLS with it, exactly as a running sidecar does; the
//! join token is needed only when nothing valid is kept (the first start,
//! or a sidecar down for longer than its certificate lived). The token stays
//! one-time: nothing here makes it reusable.
//!
//! The directory holds one file, `identity.pem`: the PKCS#8 private key
//! followed by the certificate. One file, so that key and certificate are
//! always replaced together. It is written to `identity.pem.tmp` (mode 0600
//! from its creation, so the key is never readable by others even for a
//! moment), synced, renamed over the old file, and the directory synced: a
//! crash or a full disk leaves the old pair or the new one, never half of
//! one. The directory is created with mode 0700. One sidecar per state
//! directory.
//!
//! The key on disk is no longer lived than the certificate next to it: each
//! renewal brings a new key, and the file is replaced with it.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::tls::LocalIdentity;
use crate::identity::files::{self, FileError};
use crate::identity::verify::TrustBundle;

/// The file inside the state directory that holds the key and certificate.
pub const IDENTITY_FILE: &str = "identity.pem";

/// Why the state directory could not be used.
#[derive(Debug, Error)]
pub enum StateError {
    #[error(
        "{}: cannot create the state directory (identity.authority.state_dir): {error}; create it (mode 0700, owned by the sidecar's user) or point state_dir elsewhere",
        path.display()
    )]
    CreateDir { path: PathBuf, error: io::Error },
    #[error(
        "{}: cannot write the kept identity: {error}; make identity.authority.state_dir writable by the sidecar's user (a restart needs a new join token until then)",
        path.display()
    )]
    Write { path: PathBuf, error: io::Error },
}

/// What the state directory holds at start.
#[derive(Debug)]
pub enum Kept {
    /// A certificate that is valid now and chains to the bundle, with its
    /// key: the sidecar can serve with it and renew with it.
    Valid(LocalIdentity),
    /// Nothing kept yet (a first start).
    Nothing,
    /// Something is kept but cannot be used (expired, from another CA, not
    /// matching its key, corrupt); says why, naming the file.
    Unusable(String),
}

/// A state directory, created if missing.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// Opens `dir`, creating it (mode 0700) if it does not exist.
    pub fn open(dir: &Path) -> Result<StateDir, StateError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|error| StateError::CreateDir {
                path: dir.to_path_buf(),
                error,
            })?;
        Ok(StateDir {
            dir: dir.to_path_buf(),
        })
    }

    /// The path of the kept identity.
    pub fn identity_file(&self) -> PathBuf {
        self.dir.join(IDENTITY_FILE)
    }

    /// Reads the kept identity and checks it as a peer would check it.
    pub fn load(&self, bundle: &TrustBundle) -> Kept {
        let path = self.identity_file();
        let pem = match files::read_small(&path) {
            Ok(pem) => pem,
            Err(FileError::Io { error, .. }) if error.kind() == io::ErrorKind::NotFound => {
                return Kept::Nothing;
            }
            Err(e) => return Kept::Unusable(e.to_string()),
        };
        let name = path.display().to_string();
        match LocalIdentity::from_pem(&name, &pem, &name, &pem, bundle) {
            Ok(identity) => Kept::Valid(identity),
            Err(e) => Kept::Unusable(e.to_string()),
        }
    }

    /// Replaces the kept identity with `key_pem` and `cert_pem`, atomically.
    pub fn save(&self, key_pem: &str, cert_pem: &str) -> Result<(), StateError> {
        let target = self.identity_file();
        let tmp = self.dir.join(format!("{IDENTITY_FILE}.tmp"));
        let write_error = |error| StateError::Write {
            path: target.clone(),
            error,
        };
        // A temp file left by a crash mid-write is garbage: start over.
        match fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(write_error(e)),
        }
        let written = (|| {
            let mut out = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            out.write_all(key_pem.as_bytes())?;
            if !key_pem.ends_with('\n') {
                out.write_all(b"\n")?;
            }
            out.write_all(cert_pem.as_bytes())?;
            out.sync_all()?;
            fs::rename(&tmp, &target)?;
            // The rename itself is durable only once the directory is synced.
            fs::File::open(&self.dir)?.sync_all()
        })();
        if let Err(error) = written {
            let _ = fs::remove_file(&tmp);
            return Err(write_error(error));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::ca::{Ca, KeyAlg};
    use crate::identity::spiffe::SpiffeId;
    use appid_policy::AppIdClaims;
    use appid_policy::claims::attestation;
    use std::os::unix::fs::PermissionsExt;
    use time::Duration;

    struct Fixture {
        _temp: tempfile::TempDir,
        root: PathBuf,
        ca: Ca,
        bundle: TrustBundle,
    }

    fn fixture() -> Fixture {
        let temp = tempfile::tempdir().unwrap();
        let root = temp.path().to_path_buf();
        let ca = Ca::init(&root.join("ca"), "prod.example", KeyAlg::EcdsaP256).unwrap();
        let bundle = TrustBundle::new(
            "ca",
            std::slice::from_ref(ca.cert_der()),
            vec!["prod.example".into()],
        )
        .unwrap();
        Fixture {
            _temp: temp,
            root,
            ca,
            bundle,
        }
    }

    /// A fresh key and a certificate for it: (key PEM, certificate PEM).
    fn issue(ca: &Ca, ttl: Duration) -> (String, String) {
        let id = SpiffeId::parse("spiffe://prod.example/web").unwrap();
        let claims = AppIdClaims::new(id.as_str(), attestation::JOIN_TOKEN);
        let key = KeyAlg::EcdsaP256.generate().unwrap();
        let issued = ca.issue(&id, &claims, &key, ttl).unwrap();
        (key.serialize_pem(), issued.pem)
    }

    #[test]
    fn saved_identity_loads_back_with_mode_0600_in_a_0700_directory() {
        let f = fixture();
        let state = StateDir::open(&f.root.join("state/nested")).unwrap();
        assert!(matches!(state.load(&f.bundle), Kept::Nothing));
        let (key, cert) = issue(&f.ca, Duration::hours(1));
        state.save(&key, &cert).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state.identity_file()), 0o600);
        assert_eq!(mode(&f.root.join("state/nested")), 0o700);
        match state.load(&f.bundle) {
            Kept::Valid(identity) => {
                assert_eq!(identity.id.as_str(), "spiffe://prod.example/web")
            }
            other => panic!("{other:?}"),
        }
        // Replaced as a whole, and no temp file left behind.
        let (key2, cert2) = issue(&f.ca, Duration::hours(2));
        state.save(&key2, &cert2).unwrap();
        let text = fs::read_to_string(state.identity_file()).unwrap();
        assert_eq!(text, format!("{key2}{cert2}"));
        let names: Vec<_> = fs::read_dir(f.root.join("state/nested"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [IDENTITY_FILE]);
    }

    #[test]
    fn a_stale_temp_file_does_not_block_saving() {
        let f = fixture();
        let state = StateDir::open(&f.root.join("state")).unwrap();
        fs::write(f.root.join("state/identity.pem.tmp"), "half a key").unwrap();
        let (key, cert) = issue(&f.ca, Duration::hours(1));
        state.save(&key, &cert).unwrap();
        assert!(matches!(state.load(&f.bundle), Kept::Valid(_)));
    }

    #[test]
    fn expired_foreign_or_mismatched_identities_are_unusable_and_say_why() {
        let f = fixture();
        let state = StateDir::open(&f.root.join("state")).unwrap();
        let file = state.identity_file().display().to_string();

        // Expired: signed directly, valid until a minute ago.
        let id = SpiffeId::parse("spiffe://prod.example/web").unwrap();
        let claims = AppIdClaims::new(id.as_str(), attestation::JOIN_TOKEN);
        let key = KeyAlg::EcdsaP256.generate().unwrap();
        let now = time::OffsetDateTime::now_utc();
        let template = crate::identity::issue::LeafTemplate {
            id: &id,
            appid_extensions: vec![appid_policy::extension::encode(&claims).unwrap()],
            not_before: now - Duration::hours(1),
            not_after: now - Duration::minutes(1),
        };
        let expired = f.ca.sign_leaf(&template, &key).unwrap();
        state.save(&key.serialize_pem(), &expired.pem).unwrap();
        match state.load(&f.bundle) {
            Kept::Unusable(why) => assert!(why.contains(&file), "{why}"),
            other => panic!("{other:?}"),
        }

        // From another CA.
        let other = Ca::init(&f.root.join("other"), "prod.example", KeyAlg::EcdsaP256).unwrap();
        let (key, cert) = issue(&other, Duration::hours(1));
        state.save(&key, &cert).unwrap();
        assert!(matches!(state.load(&f.bundle), Kept::Unusable(_)));

        // A certificate with somebody else's key.
        let (_, cert) = issue(&f.ca, Duration::hours(1));
        let (key, _) = issue(&f.ca, Duration::hours(1));
        state.save(&key, &cert).unwrap();
        match state.load(&f.bundle) {
            Kept::Unusable(why) => assert!(why.contains("do not belong together"), "{why}"),
            other => panic!("{other:?}"),
        }

        // Garbage.
        fs::write(state.identity_file(), "not PEM").unwrap();
        assert!(matches!(state.load(&f.bundle), Kept::Unusable(_)));
    }
}
