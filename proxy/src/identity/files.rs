//! Reading PEM files and writing key material without leaving half a file.
//!
//! Every error names the file it is about, so a CLI can print it as is.
//! Writes go to a temporary file beside the target and are renamed into place
//! only once every file of the group has been written, so a failure (disk
//! full, permission denied, a crash) never leaves a certificate without its
//! key or a truncated PEM.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use thiserror::Error;

/// Files larger than this are not PEM certificates or keys we would accept.
pub const MAX_PEM_FILE: u64 = 1024 * 1024;

/// A problem with one file.
#[derive(Debug, Error)]
pub enum FileError {
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: io::Error },
    #[error("{}: larger than {MAX_PEM_FILE} bytes; expected a PEM file", path.display())]
    TooLarge { path: PathBuf },
    #[error("{}: no certificate found; expected a PEM block `-----BEGIN CERTIFICATE-----`", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: no private key found; expected a PEM block `-----BEGIN PRIVATE KEY-----`", path.display())]
    NoPrivateKey { path: PathBuf },
    #[error("{}: not valid PEM: {detail}", path.display())]
    BadPem { path: PathBuf, detail: String },
    #[error("{}: already exists; refusing to overwrite it", path.display())]
    AlreadyExists { path: PathBuf },
}

impl FileError {
    pub fn io(path: &Path, error: io::Error) -> Self {
        FileError::Io {
            path: path.to_path_buf(),
            error,
        }
    }
}

/// Reads a whole (small) file, naming it in any error.
pub fn read_small(path: &Path) -> Result<Vec<u8>, FileError> {
    let meta = fs::metadata(path).map_err(|e| FileError::io(path, e))?;
    if meta.len() > MAX_PEM_FILE {
        return Err(FileError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    fs::read(path).map_err(|e| FileError::io(path, e))
}

/// Reads every certificate in a PEM file, in order. At least one is required.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, FileError> {
    let bytes = read_small(path)?;
    parse_certs(path, &bytes)
}

/// Parses every certificate in PEM bytes that came from `path`.
pub fn parse_certs(path: &Path, bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, FileError> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| FileError::BadPem {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(FileError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// Reads a PKCS#8 private key PEM file as text (what rcgen and rustls load).
pub fn read_private_key_pem(path: &Path) -> Result<String, FileError> {
    let bytes = read_small(path)?;
    let text = String::from_utf8(bytes).map_err(|_| FileError::BadPem {
        path: path.to_path_buf(),
        detail: "not text".into(),
    })?;
    if !text.contains("PRIVATE KEY-----") {
        return Err(FileError::NoPrivateKey {
            path: path.to_path_buf(),
        });
    }
    Ok(text)
}

/// One file to write: where, what, and its permission bits.
pub struct NewFile<'a> {
    pub path: &'a Path,
    pub contents: &'a [u8],
    pub mode: u32,
}

/// Writes all files or none.
///
/// With `overwrite == false` an existing target is an error and nothing is
/// written. Each file is written to `<name>.tmp.<pid>` beside it with its
/// final mode from the start (a private key is never world-readable, not even
/// for a moment), synced, then all are renamed into place.
pub fn write_all_or_nothing(files: &[NewFile<'_>], overwrite: bool) -> Result<(), FileError> {
    if !overwrite && let Some(existing) = files.iter().find(|f| f.path.exists()) {
        return Err(FileError::AlreadyExists {
            path: existing.path.to_path_buf(),
        });
    }
    let mut written: Vec<(PathBuf, &Path)> = Vec::new();
    let result = (|| {
        for file in files {
            let tmp = temp_path(file.path);
            // Record before creating so a partial write is cleaned up too.
            written.push((tmp.clone(), file.path));
            let mut out = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(file.mode)
                .open(&tmp)
                .map_err(|e| FileError::io(file.path, e))?;
            out.write_all(file.contents)
                .and_then(|()| out.sync_all())
                .map_err(|e| FileError::io(file.path, e))?;
        }
        for (tmp, target) in &written {
            fs::rename(tmp, target).map_err(|e| FileError::io(target, e))?;
        }
        Ok(())
    })();
    if result.is_err() {
        for (tmp, _) in &written {
            let _ = fs::remove_file(tmp);
        }
    }
    result
}

fn temp_path(target: &Path) -> PathBuf {
    let mut name = target
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".tmp.{}", std::process::id()));
    target.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn writes_with_mode_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.pem");
        let cert = dir.path().join("c.pem");
        let files = [
            NewFile {
                path: &key,
                contents: b"key",
                mode: 0o600,
            },
            NewFile {
                path: &cert,
                contents: b"cert",
                mode: 0o644,
            },
        ];
        write_all_or_nothing(&files, false).unwrap();
        let mode = fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(fs::read(&cert).unwrap(), b"cert");
        assert!(matches!(
            write_all_or_nothing(&files, false),
            Err(FileError::AlreadyExists { .. })
        ));
        write_all_or_nothing(&files, true).unwrap();
    }

    #[test]
    fn a_failed_group_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.pem");
        let bad = dir.path().join("missing-dir/bad.pem");
        let files = [
            NewFile {
                path: &good,
                contents: b"a",
                mode: 0o600,
            },
            NewFile {
                path: &bad,
                contents: b"b",
                mode: 0o600,
            },
        ];
        assert!(write_all_or_nothing(&files, false).is_err());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn pem_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.pem");
        fs::write(&path, "hello").unwrap();
        let err = read_certs(&path).unwrap_err().to_string();
        assert!(
            err.contains("x.pem") && err.contains("no certificate"),
            "{err}"
        );
        let err = read_certs(&dir.path().join("nope.pem"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope.pem"), "{err}");
    }
}
