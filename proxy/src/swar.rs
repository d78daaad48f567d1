//! Bytes scanned eight at a time ("SIMD within a register"), for the two
//! hot checks that look for a few bad bytes in mostly plain text: JSON
//! escaping in audit lines ([`crate::audit`]) and HTTP/2 field values
//! (`sidecar::http::relay::header_list`).
//!
//! For a word `x`, `(x - 0x0101…·n) & !x & 0x8080…` is non-zero exactly
//! when some byte of `x` is below `n` (for `n` ≤ 0x80), and a byte equal to
//! `c` is a zero byte of `x ^ 0x0101…·c`. The marks are exact for the
//! lowest such byte and may spill into the bytes above it, so they answer
//! "is there one", not "where".

const ONES: u64 = u64::from_ne_bytes([1; 8]);
const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);

/// Whether some byte of `word` is below `n` (`n` ≤ 0x80) or equal to one
/// of `bytes`.
pub fn has_byte_below_or(word: u64, n: u8, bytes: &[u8]) -> bool {
    let mut found = below(word, n);
    for &b in bytes {
        found |= below(word ^ (ONES * u64::from(b)), 1);
    }
    found & HIGH != 0
}

fn below(word: u64, n: u8) -> u64 {
    word.wrapping_sub(ONES * u64::from(n)) & !word
}

/// `bytes` as whole words and the rest (under 8 bytes).
pub fn words(bytes: &[u8]) -> (impl Iterator<Item = u64> + '_, &[u8]) {
    let chunks = bytes.chunks_exact(8);
    let rest = chunks.remainder();
    let words = chunks.map(|word| u64::from_ne_bytes(word.try_into().unwrap_or_default()));
    (words, rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every byte at every place of a word, against the byte-wise answer.
    #[test]
    fn the_word_tests_are_the_byte_tests() {
        for b in 0..=255u8 {
            for at in 0..8 {
                let mut bytes = *b"abcdefgh";
                bytes[at] = b;
                let word = u64::from_ne_bytes(bytes);
                for n in [0x20, 0x80] {
                    let want = bytes.iter().any(|&x| x < n);
                    assert_eq!(has_byte_below_or(word, n, &[]), want);
                }
                let want = bytes.iter().any(|&x| x < 0x20 || x == b'"' || x == 0x7f);
                assert_eq!(
                    has_byte_below_or(word, 0x20, b"\"\x7f"),
                    want,
                    "{b} at {at}"
                );
            }
        }
        let (words, rest) = words(b"0123456789");
        assert_eq!(words.count(), 1);
        assert_eq!(rest, b"89");
    }
}
