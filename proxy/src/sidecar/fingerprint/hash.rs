//! SHA-256 of a file, streamed in fixed chunks: a 2 GiB binary costs 64 KiB
//! of memory, and hashing stops at the deadline rather than overrunning the
//! time budget.

use std::io::{self, Read};
use std::time::Instant;

const CHUNK: usize = 64 * 1024;

/// Why a file was not hashed.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("the time budget ran out while hashing")]
    OutOfTime,
}

/// The lowercase hex SHA-256 of everything `reader` yields, or
/// [`HashError::OutOfTime`] once `deadline` passes.
pub fn sha256_hex(mut reader: impl Read, deadline: Instant) -> Result<String, HashError> {
    let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut buffer = vec![0u8; CHUNK];
    loop {
        if Instant::now() > deadline {
            return Err(HashError::OutOfTime);
        }
        let n = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        context.update(&buffer[..n]);
    }
    Ok(hex::encode(context.finish().as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn streams_and_respects_the_deadline() {
        let later = Instant::now() + Duration::from_secs(60);
        assert_eq!(
            sha256_hex(&b"abc"[..], later).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        // 1 MiB of zeros, read in chunks, equals the one-shot digest.
        let zeros = vec![0u8; 1024 * 1024];
        let one_shot =
            hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &zeros).as_ref());
        assert_eq!(sha256_hex(&zeros[..], later).unwrap(), one_shot);
        // An endless reader stops at the deadline.
        let endless = io::repeat(7);
        let soon = Instant::now() + Duration::from_millis(50);
        assert!(matches!(
            sha256_hex(endless, soon),
            Err(HashError::OutOfTime)
        ));
    }
}
