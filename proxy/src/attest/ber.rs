//! A small BER reader (X.690): just enough for CMS `SignedData` as AWS emits
//! it and for the DER keys inside certificates.
//!
//! AWS's PKCS#7 documents are BER, not DER (indefinite lengths, constructed
//! OCTET STRINGs), so strict DER parsers refuse them. This reader accepts
//! both forms, with limits that keep hostile input cheap: low tag numbers
//! only, definite lengths of at most four octets, and at most [`MAX_DEPTH`]
//! levels of nesting (so recursion cannot exhaust the stack).

use std::borrow::Cow;

use super::AttestError;

/// Deepest nesting accepted. CMS SignedData as AWS emits it goes 10 deep.
pub(super) const MAX_DEPTH: usize = 24;

pub(super) const INTEGER: u8 = 0x02;
pub(super) const BIT_STRING: u8 = 0x03;
pub(super) const OCTET_STRING: u8 = 0x04;
pub(super) const OID: u8 = 0x06;
pub(super) const SEQUENCE: u8 = 0x30;
pub(super) const SET: u8 = 0x31;
/// `[0]`, constructed (EXPLICIT, or IMPLICIT over a constructed type).
pub(super) const CONTEXT_0: u8 = 0xA0;
/// `[1]`, constructed.
pub(super) const CONTEXT_1: u8 = 0xA1;
/// `[0]`, primitive (e.g. an IMPLICIT OCTET STRING).
pub(super) const CONTEXT_0_PRIMITIVE: u8 = 0x80;

const CONSTRUCTED: u8 = 0x20;

fn bad(what: &str, why: &str) -> AttestError {
    AttestError::BadEncoding(format!("{what}: {why}"))
}

/// One element: its identifier octet, content, and whole encoding.
#[derive(Debug, Clone, Copy)]
pub(super) struct Tlv<'a> {
    /// The identifier octet (class, constructed bit, tag number < 31).
    pub tag: u8,
    /// The content octets; for an indefinite length, everything between the
    /// header and the end-of-contents octets.
    pub content: &'a [u8],
    /// The whole encoding: identifier, length, content (and end-of-contents).
    pub raw: &'a [u8],
    depth: usize,
}

/// Reads consecutive elements from a byte string.
#[derive(Debug, Clone)]
pub(super) struct Reader<'a> {
    data: &'a [u8],
    depth: usize,
}

impl<'a> Reader<'a> {
    /// A reader over a top-level encoding.
    pub fn new(data: &'a [u8]) -> Self {
        Reader { data, depth: 0 }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The identifier octet of the next element, if any.
    pub fn peek_tag(&self) -> Option<u8> {
        self.data.first().copied()
    }

    /// The next element, whatever its tag.
    pub fn read(&mut self, what: &str) -> Result<Tlv<'a>, AttestError> {
        let (tlv, rest) = parse_one(self.data, self.depth, what)?;
        self.data = rest;
        Ok(tlv)
    }

    /// The next element, which must have identifier `tag`.
    pub fn expect(&mut self, tag: u8, what: &str) -> Result<Tlv<'a>, AttestError> {
        match self.peek_tag() {
            Some(t) if t == tag => self.read(what),
            Some(t) => Err(bad(
                what,
                &format!("expected tag 0x{tag:02x}, found 0x{t:02x}"),
            )),
            None => Err(bad(what, "missing")),
        }
    }

    /// The next element if it has identifier `tag`.
    pub fn optional(&mut self, tag: u8, what: &str) -> Result<Option<Tlv<'a>>, AttestError> {
        if self.peek_tag() == Some(tag) {
            self.read(what).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Refuses anything left over: trailing data is never ignored.
    pub fn finish(&self, what: &str) -> Result<(), AttestError> {
        if self.data.is_empty() {
            Ok(())
        } else {
            Err(bad(
                what,
                &format!("{} unexpected trailing bytes", self.data.len()),
            ))
        }
    }
}

/// Parses one element at the start of `data`; returns it and what follows.
fn parse_one<'a>(
    data: &'a [u8],
    depth: usize,
    what: &str,
) -> Result<(Tlv<'a>, &'a [u8]), AttestError> {
    if depth > MAX_DEPTH {
        return Err(bad(what, "nested too deeply"));
    }
    let (&tag, after_tag) = data.split_first().ok_or_else(|| bad(what, "truncated"))?;
    if tag == 0 {
        return Err(bad(what, "unexpected end-of-contents octets"));
    }
    if tag & 0x1f == 0x1f {
        return Err(bad(what, "high tag numbers are not used here"));
    }
    let (&first, _) = after_tag
        .split_first()
        .ok_or_else(|| bad(what, "truncated length"))?;
    let header = 2;
    if first == 0x80 {
        // Indefinite length: children follow until the end-of-contents octets.
        if tag & CONSTRUCTED == 0 {
            return Err(bad(what, "indefinite length on a primitive element"));
        }
        let mut pos = header;
        loop {
            let rest = &data[pos..];
            if rest.starts_with(&[0, 0]) {
                let tlv = Tlv {
                    tag,
                    content: &data[header..pos],
                    raw: &data[..pos + 2],
                    depth,
                };
                return Ok((tlv, &data[pos + 2..]));
            }
            let (_, after) = parse_one(rest, depth + 1, what)?;
            pos = data.len() - after.len();
        }
    }
    let (len, header) = if first & 0x80 == 0 {
        (usize::from(first), header)
    } else {
        let n = usize::from(first & 0x7f);
        if n > 4 {
            return Err(bad(what, "length too large"));
        }
        let octets = data
            .get(2..2 + n)
            .ok_or_else(|| bad(what, "truncated length"))?;
        let len = octets
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, header + n)
    };
    let end = header
        .checked_add(len)
        .filter(|&end| end <= data.len())
        .ok_or_else(|| bad(what, "truncated content"))?;
    let tlv = Tlv {
        tag,
        content: &data[header..end],
        raw: &data[..end],
        depth,
    };
    Ok((tlv, &data[end..]))
}

impl<'a> Tlv<'a> {
    /// A reader over the children of a constructed element.
    pub fn children(&self, what: &str) -> Result<Reader<'a>, AttestError> {
        if self.tag & CONSTRUCTED == 0 {
            return Err(bad(what, "expected a constructed element"));
        }
        Ok(Reader {
            data: self.content,
            depth: self.depth + 1,
        })
    }

    /// The bytes of an OCTET STRING (or an IMPLICIT one with tag number 0 or
    /// 4), primitive or constructed from primitive segments (BER).
    pub fn octets(&self, what: &str) -> Result<Cow<'a, [u8]>, AttestError> {
        if self.tag & CONSTRUCTED == 0 {
            return Ok(Cow::Borrowed(self.content));
        }
        let mut out = Vec::new();
        let mut segments = self.children(what)?;
        while !segments.is_empty() {
            let segment = segments.read(what)?;
            if segment.tag & 0x1f != OCTET_STRING {
                return Err(bad(what, "a constructed OCTET STRING holds something else"));
            }
            out.extend_from_slice(&segment.octets(what)?);
        }
        Ok(Cow::Owned(out))
    }

    /// The magnitude of a non-negative INTEGER, without leading zeros
    /// (zero is an empty slice).
    pub fn unsigned(&self, what: &str) -> Result<&'a [u8], AttestError> {
        if self.tag != INTEGER {
            return Err(bad(what, "expected an INTEGER"));
        }
        match self.content.first() {
            None => Err(bad(what, "empty INTEGER")),
            Some(b) if b & 0x80 != 0 => Err(bad(what, "negative INTEGER")),
            Some(_) => {
                let zeros = self.content.iter().take_while(|&&b| b == 0).count();
                Ok(&self.content[zeros..])
            }
        }
    }

    /// The bits of a BIT STRING with no unused bits.
    pub fn bit_string(&self, what: &str) -> Result<&'a [u8], AttestError> {
        if self.tag != BIT_STRING {
            return Err(bad(what, "expected a BIT STRING"));
        }
        match self.content.split_first() {
            Some((0, bits)) => Ok(bits),
            _ => Err(bad(what, "BIT STRING with unused bits")),
        }
    }
}

/// `AlgorithmIdentifier ::= SEQUENCE { algorithm OID, parameters ANY OPTIONAL }`:
/// the OID's content octets and the parameters, if any.
pub(super) fn algorithm<'a>(
    tlv: &Tlv<'a>,
    what: &str,
) -> Result<(&'a [u8], Option<Tlv<'a>>), AttestError> {
    if tlv.tag != SEQUENCE {
        return Err(bad(what, "expected an AlgorithmIdentifier"));
    }
    let mut r = tlv.children(what)?;
    let oid = r.expect(OID, what)?.content;
    let params = if r.is_empty() {
        None
    } else {
        Some(r.read(what)?)
    };
    r.finish(what)?;
    Ok((oid, params))
}

/// Dotted form of an OID's content octets, for messages.
pub(super) fn oid_string(oid: &[u8]) -> String {
    let mut arcs: Vec<u64> = Vec::new();
    let mut value: u64 = 0;
    for &b in oid {
        if value > u64::MAX >> 7 {
            return format!("<oid {}>", hex::encode(oid));
        }
        value = (value << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            if arcs.is_empty() {
                let first = (value / 40).min(2);
                arcs.push(first);
                arcs.push(value - first * 40);
            } else {
                arcs.push(value);
            }
            value = 0;
        }
    }
    if arcs.is_empty() || oid.last().is_some_and(|b| b & 0x80 != 0) {
        return format!("<oid {}>", hex::encode(oid));
    }
    arcs.iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_definite_and_indefinite_lengths() {
        // SEQUENCE (indefinite) { INTEGER 5, OCTET STRING (constructed,
        // indefinite) { "ab", "c" } } followed by NULL.
        let data = [
            0x30, 0x80, 0x02, 0x01, 0x05, 0x24, 0x80, 0x04, 0x02, b'a', b'b', 0x04, 0x01, b'c',
            0x00, 0x00, 0x00, 0x00, 0x05, 0x00,
        ];
        let mut r = Reader::new(&data);
        let seq = r.expect(SEQUENCE, "t").unwrap();
        assert_eq!(seq.raw.len(), 18);
        let mut c = seq.children("t").unwrap();
        assert_eq!(c.read("t").unwrap().unsigned("t").unwrap(), &[5]);
        assert_eq!(&*c.read("t").unwrap().octets("t").unwrap(), b"abc");
        c.finish("t").unwrap();
        assert_eq!(r.read("t").unwrap().tag, 0x05);
        r.finish("t").unwrap();
    }

    #[test]
    fn long_form_lengths() {
        let mut data = vec![0x04, 0x82, 0x01, 0x00];
        data.extend(std::iter::repeat_n(7u8, 256));
        let tlv = Reader::new(&data).read("t").unwrap();
        assert_eq!(tlv.content.len(), 256);
    }

    #[test]
    fn refuses_malformed() {
        for data in [
            &[0x30, 0x05, 0x02][..],         // truncated content
            &[0x04, 0x80, 0x00, 0x00],       // indefinite primitive
            &[0x30, 0x80, 0x02, 0x01, 0x05], // no end-of-contents
            &[0x1f, 0x01, 0x00],             // high tag number
            &[0x04, 0x85, 1, 1, 1, 1, 1],    // length of five octets
            &[0x00, 0x00],                   // stray end-of-contents
            &[0x30],                         // no length
        ] {
            assert!(Reader::new(data).read("t").is_err(), "{data:02x?}");
        }
        let negative = [0x02, 0x01, 0x80];
        assert!(
            Reader::new(&negative)
                .read("t")
                .unwrap()
                .unsigned("t")
                .is_err()
        );
    }

    #[test]
    fn deep_nesting_is_refused_without_overflowing_the_stack() {
        let mut data = Vec::new();
        for _ in 0..100_000 {
            data.extend_from_slice(&[0x30, 0x80]);
        }
        for _ in 0..100_000 {
            data.extend_from_slice(&[0x00, 0x00]);
        }
        let err = Reader::new(&data).read("t").unwrap_err();
        assert!(err.to_string().contains("nested too deeply"), "{err}");
    }

    #[test]
    fn oid_strings() {
        assert_eq!(
            oid_string(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02]),
            "1.2.840.113549.1.7.2"
        );
        assert_eq!(
            oid_string(&[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01]),
            "2.16.840.1.101.3.4.2.1"
        );
        assert!(oid_string(&[0x86]).starts_with("<oid"));
        assert!(oid_string(&[]).starts_with("<oid"));
    }
}
