//! HPACK's Huffman code (RFC 7541 §5.2, Appendix B), decoding only: the
//! relay writes its string literals plain ([`super::encode`]).
//!
//! Design bias: *the spec's lengths are the only data*. The code is
//! canonical (its codes, sorted by length and then by symbol, count up),
//! so Appendix B's column of code lengths determines every code; the
//! tables here are derived from it at compile time. Codes of up to 8 bits
//! (lower-case letters, digits and the usual punctuation: most of what a
//! header holds) decode with one lookup of the next 8 bits, and two of
//! them that fit in 12 bits (most pairs of those) with one lookup of the
//! next 12; longer ones walk the lengths from 9 up. A string ends in at
//! most 7 bits of padding, all ones (the start of EOS); anything else, and
//! EOS itself, is an error (§5.2).
//!
//! [`Recent`] keeps the last few short strings decoded, by their coded
//! bytes: an encoder that does not index its fields (nginx's, for every
//! response) sends the same coded `content-type` or `date` again and
//! again, and comparing its bytes is cheaper than walking its bits. (The
//! caller leaves never-indexed values out of it.)

/// Bits in each symbol's code: symbols 0–255 are bytes, 256 is EOS
/// (RFC 7541 Appendix B, the "len in bits" column).
const CODE_LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28,
    28, 28, 28, 28, 28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5,
    5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6,
    6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22, 22, 23, 22,
    23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22,
    21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20,
    22, 22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19,
    21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22,
    22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, 30,
];

const EOS: u16 = 256;
const MAX_LEN: usize = 30;

/// Why a Huffman string did not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HuffmanError {
    /// The string holds EOS.
    Eos,
    /// It ends in more than 7 bits that are no symbol, or in padding that
    /// is not all ones.
    BadPadding,
}

struct Tables {
    /// By code length: the first (smallest) code of that length, the index
    /// of its symbol in `symbols`, and how many codes have that length.
    first_code: [u32; MAX_LEN + 1],
    first_index: [u16; MAX_LEN + 1],
    count: [u16; MAX_LEN + 1],
    /// Symbols in code order (by length, then by value).
    symbols: [u16; 257],
    /// By the next 8 bits: the symbol whose code of at most 8 bits they
    /// begin with, and that code's length; length 0 for a longer code.
    short: [(u8, u8); 256],
    /// By the next 12 bits: the one or two symbols whose codes (each of at
    /// most 8 bits) they begin with, packed as `first | second << 8 |
    /// bits << 16 | symbols << 24`; 0 symbols when the first code is longer.
    pairs: [u32; 4096],
}

static TABLES: Tables = build();

const fn build() -> Tables {
    let mut t = Tables {
        first_code: [0; MAX_LEN + 1],
        first_index: [0; MAX_LEN + 1],
        count: [0; MAX_LEN + 1],
        symbols: [0; 257],
        short: [(0, 0); 256],
        pairs: [0; 4096],
    };
    let mut s = 0;
    while s < 257 {
        t.count[CODE_LENGTHS[s] as usize] += 1;
        s += 1;
    }
    // Canonical codes: each length's first code is one past the previous
    // length's last, shifted left by one.
    let mut code: u32 = 0;
    let mut index: u16 = 0;
    let mut len = 1;
    while len <= MAX_LEN {
        t.first_code[len] = code;
        t.first_index[len] = index;
        let mut s = 0;
        while s < 257 {
            if CODE_LENGTHS[s] as usize == len {
                t.symbols[index as usize] = s as u16;
                index += 1;
            }
            s += 1;
        }
        code = (code + t.count[len] as u32) << 1;
        len += 1;
    }
    let mut len = 1;
    while len <= 8 {
        let mut k = 0;
        while k < t.count[len] {
            let code = t.first_code[len] + k as u32;
            let symbol = t.symbols[(t.first_index[len] + k) as usize];
            let spread = 8 - len;
            let mut v = code << spread;
            while v < (code + 1) << spread {
                t.short[v as usize] = (symbol as u8, len as u8);
                v += 1;
            }
            k += 1;
        }
        len += 1;
    }
    let mut v = 0;
    while v < 4096 {
        let (first, first_len) = t.short[v >> 4];
        if first_len != 0 {
            // The bits after the first code, as the top of an 8-bit window
            // (a code found there counts only if it fits in what is left).
            let after = (v << first_len) & 0xfff;
            let (second, second_len) = t.short[after >> 4];
            let (count, used) = if second_len != 0 && first_len + second_len <= 12 {
                (2, first_len + second_len)
            } else {
                (1, first_len)
            };
            t.pairs[v] = first as u32 | (second as u32) << 8 | (used as u32) << 16 | count << 24;
        }
        v += 1;
    }
    t
}

/// Strings [`Recent`] keeps, at most.
const RECENT: usize = 8;
/// The longest coded string [`Recent`] keeps (a `date` is 22 bytes coded,
/// an `etag` about 15): so it holds at most about 1 KiB.
const RECENT_CODED: usize = 48;

/// The last [`RECENT`] short strings decoded, each with its coded bytes,
/// replaced oldest first; empty until the first. Its buffers are reused.
#[derive(Default)]
pub struct Recent {
    kept: Vec<(Vec<u8>, Vec<u8>)>,
    /// The entry to replace next, once all are made.
    next: usize,
}

impl Recent {
    /// How many strings it keeps.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.kept.len()
    }

    /// [`decode`]s `src` into `out` (cleared first), or copies what it
    /// decoded to the last time these bytes came.
    pub fn decode(&mut self, src: &[u8], out: &mut Vec<u8>) -> Result<(), HuffmanError> {
        out.clear();
        if let Some((_, text)) = self.kept.iter().find(|(coded, _)| coded == src) {
            out.extend_from_slice(text);
            return Ok(());
        }
        decode(src, out)?;
        if src.len() <= RECENT_CODED {
            if self.kept.len() < RECENT {
                self.kept.push((src.to_vec(), out.clone()));
            } else {
                let (coded, text) = &mut self.kept[self.next];
                coded.clear();
                coded.extend_from_slice(src);
                text.clear();
                text.extend_from_slice(out);
                self.next = (self.next + 1) % RECENT;
            }
        }
        Ok(())
    }
}

/// Appends the decoding of `src` to `out`.
pub fn decode(src: &[u8], out: &mut Vec<u8>) -> Result<(), HuffmanError> {
    let t = &TABLES;
    // The unread bits are the low `bits` bits of `acc` (bits above them
    // are stale and masked off where they could show).
    let mut acc: u64 = 0;
    let mut bits: u32 = 0;
    let mut rest = src;
    // No symbol is shorter than 5 bits.
    out.reserve(src.len() * 8 / 5 + 1);
    loop {
        // Keep at least 30 bits (the longest code) while input lasts: four
        // bytes at a time, then byte by byte at the end.
        if bits < 30 {
            if let Some((four, after)) = rest.split_first_chunk::<4>() {
                acc = (acc << 32) | u64::from(u32::from_be_bytes(*four));
                bits += 32;
                rest = after;
            } else {
                while bits <= 56 {
                    let Some((&byte, after)) = rest.split_first() else {
                        break;
                    };
                    acc = (acc << 8) | u64::from(byte);
                    bits += 8;
                    rest = after;
                }
            }
        }
        if bits >= 12 {
            let pair = t.pairs[((acc >> (bits - 12)) & 0xfff) as usize];
            let count = pair >> 24;
            if count != 0 {
                out.push(pair as u8);
                if count == 2 {
                    out.push((pair >> 8) as u8);
                }
                bits -= (pair >> 16) & 0xff;
                continue;
            }
        }
        if bits >= 8 {
            let (symbol, len) = t.short[usize::from((acc >> (bits - 8)) as u8)];
            if len != 0 {
                out.push(symbol);
                bits -= u32::from(len);
                continue;
            }
            // A code longer than 8 bits: walk the lengths from 9. Only at
            // the end can one be longer than what is there (more than 7
            // bits that are no symbol).
            let mut len = 9;
            loop {
                if len > MAX_LEN || len as u32 > bits {
                    return Err(HuffmanError::BadPadding);
                }
                let code = ((acc >> (bits - len as u32)) & ((1 << len) - 1)) as u32;
                let offset = code.wrapping_sub(t.first_code[len]);
                if offset < u32::from(t.count[len]) {
                    let symbol = t.symbols[usize::from(t.first_index[len]) + offset as usize];
                    if symbol == EOS {
                        return Err(HuffmanError::Eos);
                    }
                    out.push(symbol as u8);
                    bits -= len as u32;
                    break;
                }
                len += 1;
            }
            continue;
        }
        // Under 8 bits, and the input is spent: a last short symbol (read
        // with ones after it, as padding would be), or the padding.
        if bits == 0 {
            return Ok(());
        }
        let ones = (1u8 << (8 - bits)) - 1;
        let (symbol, len) = t.short[usize::from(((acc << (8 - bits)) as u8) | ones)];
        if len != 0 && u32::from(len) <= bits {
            out.push(symbol);
            bits -= u32::from(len);
            continue;
        }
        let padding = acc & ((1 << bits) - 1);
        return if padding == (1 << bits) - 1 {
            Ok(())
        } else {
            Err(HuffmanError::BadPadding)
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The encoder the spec implies: each symbol's canonical code, bit by
    /// bit, then padding with ones. Built from the same tables, so decoding
    /// what it writes checks the decoder's walk (every length, the end of
    /// input), not the tables: those are checked by the spec's examples
    /// here and by the differential tests in `hpack.rs` against h2's
    /// encoder.
    fn encode(text: &[u8]) -> Vec<u8> {
        let t = &TABLES;
        let code_of = |symbol: u16| {
            let len = CODE_LENGTHS[usize::from(symbol)] as usize;
            let rank = (0..t.count[len])
                .find(|&k| t.symbols[usize::from(t.first_index[len] + k)] == symbol)
                .unwrap();
            (t.first_code[len] + u32::from(rank), len)
        };
        let mut bits: Vec<bool> = Vec::new();
        for &byte in text {
            let (code, len) = code_of(u16::from(byte));
            bits.extend((0..len).rev().map(|i| code >> i & 1 == 1));
        }
        while !bits.len().is_multiple_of(8) {
            bits.push(true);
        }
        bits.chunks(8)
            .map(|b| b.iter().fold(0u8, |a, &bit| a << 1 | u8::from(bit)))
            .collect()
    }

    #[test]
    fn the_specs_examples_decode() {
        // RFC 7541 Appendix C.4.1 and C.6.1.
        let cases: [(&[u8], &[u8]); 3] = [
            (
                &[
                    0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff,
                ],
                b"www.example.com",
            ),
            (&[0x64, 0x02], b"302"),
            (&[0xae, 0xc3, 0x77, 0x1a, 0x4b], b"private"),
        ];
        for (wire, text) in cases {
            let mut out = Vec::new();
            decode(wire, &mut out).unwrap();
            assert_eq!(out, text);
        }
    }

    #[test]
    fn the_codes_form_a_complete_prefix_code() {
        // Kraft's sum is exactly one: no code is a prefix of another and
        // no bit string is left over (what canonical assignment needs).
        let sum: u64 = CODE_LENGTHS.iter().map(|&l| 1u64 << (30 - l)).sum();
        assert_eq!(sum, 1 << 30);
        // EOS is 30 ones (§5.2).
        assert_eq!(
            TABLES.first_code[30] + u32::from(TABLES.count[30]) - 1,
            (1 << 30) - 1
        );
        assert_eq!(TABLES.symbols[256], EOS);
    }

    #[test]
    fn every_byte_round_trips() {
        let all: Vec<u8> = (0..=255).collect();
        let mut out = Vec::new();
        decode(&encode(&all), &mut out).unwrap();
        assert_eq!(out, all);
    }

    #[test]
    fn bad_endings_are_refused() {
        // '0' is 00000 (5 bits): padded with zeros instead of ones.
        assert_eq!(
            decode(&[0b0000_0000], &mut Vec::new()),
            Err(HuffmanError::BadPadding)
        );
        // 11 bits of ones after a symbol: padding longer than 7 bits.
        assert_eq!(
            decode(&[0b0000_0111, 0xff], &mut Vec::new()),
            Err(HuffmanError::BadPadding)
        );
        // EOS itself, then two bits of padding.
        assert_eq!(
            decode(&[0xff, 0xff, 0xff, 0xff], &mut Vec::new()),
            Err(HuffmanError::Eos)
        );
        // A symbol, then 3 bits of padding; and the empty string.
        let mut out = Vec::new();
        decode(&[0b0000_0111], &mut out).unwrap();
        assert_eq!(out, b"0");
        decode(&[], &mut out).unwrap();
        assert_eq!(out, b"0");
    }

    /// Every entry of the 12-bit table is what two lookups of the 8-bit
    /// one give: the first code's symbol, then the next code's when it ends
    /// within the 12 bits.
    #[test]
    fn the_pairs_table_is_two_short_lookups() {
        let t = &TABLES;
        for v in 0..4096usize {
            let pair = t.pairs[v];
            let (first, first_len) = t.short[v >> 4];
            if first_len == 0 {
                assert_eq!(pair, 0, "{v:012b}");
                continue;
            }
            assert_eq!(pair as u8, first);
            let after = (v << first_len) & 0xfff;
            let (second, second_len) = t.short[after >> 4];
            let both = second_len != 0 && first_len + second_len <= 12;
            assert_eq!(pair >> 24, if both { 2 } else { 1 }, "{v:012b}");
            if both {
                assert_eq!((pair >> 8) as u8, second);
                assert_eq!((pair >> 16) & 0xff, u32::from(first_len + second_len));
            } else {
                assert_eq!((pair >> 16) & 0xff, u32::from(first_len));
            }
        }
    }

    proptest::proptest! {
        /// Text of short codes (what headers mostly hold): the 12-bit
        /// path's pairs, and its hand-over to the 8-bit path at the end.
        #[test]
        fn short_code_text_round_trips(text in "[a-z0-9 %./:=_-]{0,80}") {
            let mut out = Vec::new();
            decode(&encode(text.as_bytes()), &mut out).unwrap();
            proptest::prop_assert_eq!(out, text.as_bytes());
        }

        #[test]
        fn any_bytes_round_trip(text in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let mut out = Vec::new();
            decode(&encode(&text), &mut out).unwrap();
            proptest::prop_assert_eq!(out, text);
        }

        #[test]
        fn arbitrary_input_never_panics(wire in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = decode(&wire, &mut Vec::new());
        }

        /// Kept strings decode as `decode` does, errors included, whatever
        /// repeats and evictions a sequence of strings brings (a few
        /// distinct ones, some long, some not Huffman at all).
        #[test]
        fn recent_decodes_as_decode_does(
            picks in proptest::collection::vec(0..12usize, 1..60),
            texts in proptest::collection::vec("[ -~]{0,70}", 12),
        ) {
            let wires: Vec<Vec<u8>> = texts
                .iter()
                .enumerate()
                .map(|(i, t)| match i {
                    // Not a Huffman string: a byte of EOS (an error).
                    0 => vec![0xff, 0xff, 0xff, 0xff],
                    _ => encode(t.as_bytes()),
                })
                .collect();
            let mut recent = Recent::default();
            let mut out = b"left over".to_vec();
            for &i in &picks {
                let mut want = Vec::new();
                let expected = decode(&wires[i], &mut want);
                let got = recent.decode(&wires[i], &mut out);
                proptest::prop_assert_eq!(got.is_ok(), expected.is_ok());
                if got.is_ok() {
                    proptest::prop_assert_eq!(&out, &want);
                }
                proptest::prop_assert!(recent.kept.len() <= RECENT);
                proptest::prop_assert!(recent.kept.iter().all(|(c, _)| c.len() <= RECENT_CODED));
            }
        }
    }
}
