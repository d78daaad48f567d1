//! Bounded reads of small text files (`/proc`, `/etc`): a file larger than
//! the cap is read up to the cap, never whole.

use std::io::Read;
use std::path::Path;

/// A file that could not be read, and why.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {error}")]
pub struct ReadError {
    pub path: String,
    pub error: std::io::Error,
}

impl ReadError {
    pub fn new(path: &Path, error: std::io::Error) -> Self {
        ReadError {
            path: path.display().to_string(),
            error,
        }
    }
}

/// At most `cap` bytes of `path`, as text (invalid UTF-8 replaced).
pub fn capped(path: &Path, cap: u64) -> Result<String, ReadError> {
    let file = std::fs::File::open(path).map_err(|e| ReadError::new(path, e))?;
    let mut bytes = Vec::new();
    file.take(cap)
        .read_to_end(&mut bytes)
        .map_err(|e| ReadError::new(path, e))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_up_to_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "0123456789").unwrap();
        assert_eq!(capped(&file, 4).unwrap(), "0123");
        assert_eq!(capped(&file, 100).unwrap(), "0123456789");
        let err = capped(&dir.path().join("missing"), 4).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }
}
