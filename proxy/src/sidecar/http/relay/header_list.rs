//! A header block's fields as the relay holds them, from decoding
//! ([`super::hpack`]) through the checks to re-encoding ([`super::encode`]).
//!
//! Design bias: *hold the bytes, build nothing*. The relay reads a handful
//! of fields of a head (the pseudo-fields, `content-length`,
//! `content-type`, the ones a policy names), drops or adds a few, and
//! writes the rest on unchanged. Building the h2 crate's `Pseudo` and an
//! `http::HeaderMap` for that (an allocation per value and per pseudo
//! string, a hash per name, a name parsed into a `HeaderName`) was about
//! half of what decoding a block cost (`bench/e2e/instructions.sh`). Here a head is
//! two buffers and a list: names and pseudo-field texts in one `String`,
//! values in one byte buffer, each field a pair of spans into them, in the
//! order they came. Lookups walk the list: a head has tens of fields, not
//! thousands (the header list limit bounds it).
//!
//! What a `HeaderList` holds was checked on the way in, as the h2 crate
//! checked it (names: lower-case tokens; values: no CR, LF, NUL or other control
//! byte but tab; pseudo-field texts: UTF-8, a method and status that
//! parse). Fields added later come from the relay itself.

use http::{Method, StatusCode};

use super::encode::static_index_of;
use super::hpack::STATIC_TABLE;
use appid_policy::policy::Headers;

use crate::sidecar::http::visit_header_values;

/// Where a text or value lies in its head's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    start: u32,
    len: u32,
}

impl Span {
    /// `len` bytes after the buffer's first `start`. Spans are `u32`: a
    /// head's buffers are bounded by the header list limit (4 times it at
    /// most, `hpack::ABUSE_FACTOR`), far under 4 GiB.
    fn after(start: usize, len: usize) -> Span {
        debug_assert!(start + len <= u32::MAX as usize);
        Span {
            start: start as u32,
            len: len as u32,
        }
    }

    fn range(self) -> std::ops::Range<usize> {
        let start = self.start as usize;
        start..start + self.len as usize
    }
}

/// A field's name: a static table entry's (RFC 7541 Appendix A, an index
/// of a regular field, 15–61), or text of its own.
#[derive(Debug, Clone, Copy)]
enum Name {
    Static(u8),
    Text(Span),
}

#[derive(Debug, Clone, Copy)]
struct Field {
    name: Name,
    value: Span,
    /// The sender marked it never-indexed (RFC 7541 §7.1.3).
    sensitive: bool,
}

/// One field of a head, as [`HeaderList::fields`] lists it.
#[derive(Debug, Clone, Copy)]
pub struct FieldRef<'h> {
    pub name: &'h str,
    pub value: &'h [u8],
    pub sensitive: bool,
    /// The static table's index of the name, when the field came with it.
    pub static_index: Option<u8>,
}

/// The pseudo-fields (RFC 9113 §8.3): the ones that are text lie in the
/// head's text buffer.
#[derive(Debug, Clone, Default)]
struct Pseudo {
    method: Option<Method>,
    scheme: Option<Span>,
    authority: Option<Span>,
    path: Option<Span>,
    protocol: Option<Span>,
    status: Option<StatusCode>,
}

/// A pseudo-field that is text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PseudoText {
    Scheme,
    Authority,
    Path,
    Protocol,
}

/// A request or response head, or trailers.
#[derive(Debug, Clone, Default)]
pub struct HeaderList {
    /// Field names of their own and the pseudo-fields' texts.
    text: String,
    /// Field values.
    values: Vec<u8>,
    pseudo: Pseudo,
    fields: Vec<Field>,
}

/// Room made for a decoded head at once, in one allocation per buffer:
/// what a typical request or response head needs (a browser's request
/// head is 500–800 bytes, under 20 fields), so that most never grow.
const VALUE_ROOM: usize = 1024;
const TEXT_ROOM: usize = 256;
const FIELD_ROOM: usize = 24;

/// Buffers of lists that were dropped, kept for the next head decoded on
/// the same thread (a worker's connections take turns on it): three
/// allocations and three frees a block fewer. At most [`KEPT_BUFFERS`]
/// sets, and only buffers made with room that did not grow past twice it.
type Buffers = (String, Vec<u8>, Vec<Field>);
const KEPT_BUFFERS: usize = 8;

thread_local! {
    static KEPT: std::cell::RefCell<Vec<Buffers>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl HeaderList {
    /// An empty list with room for a typical head.
    pub fn with_room() -> HeaderList {
        let kept = KEPT
            .try_with(|kept| kept.try_borrow_mut().ok().and_then(|mut kept| kept.pop()))
            .ok()
            .flatten();
        let (text, values, fields) = kept.unwrap_or_else(|| {
            (
                String::with_capacity(TEXT_ROOM),
                Vec::with_capacity(VALUE_ROOM),
                Vec::with_capacity(FIELD_ROOM),
            )
        });
        HeaderList {
            text,
            values,
            pseudo: Pseudo::default(),
            fields,
        }
    }

    /// A response head with `status` and no fields.
    pub fn response(status: StatusCode) -> HeaderList {
        let mut list = HeaderList::default();
        list.pseudo.status = Some(status);
        list
    }

    pub fn method(&self) -> Option<&Method> {
        self.pseudo.method.as_ref()
    }

    pub fn scheme(&self) -> Option<&str> {
        self.pseudo.scheme.map(|span| self.text(span))
    }

    pub fn authority(&self) -> Option<&str> {
        self.pseudo.authority.map(|span| self.text(span))
    }

    pub fn path(&self) -> Option<&str> {
        self.pseudo.path.map(|span| self.text(span))
    }

    pub fn protocol(&self) -> Option<&str> {
        self.pseudo.protocol.map(|span| self.text(span))
    }

    pub fn status(&self) -> Option<StatusCode> {
        self.pseudo.status
    }

    /// Whether the head has any request pseudo-field.
    pub fn has_request_pseudo(&self) -> bool {
        let p = &self.pseudo;
        p.method.is_some()
            || p.scheme.is_some()
            || p.authority.is_some()
            || p.path.is_some()
            || p.protocol.is_some()
    }

    /// The regular fields, in the order they came (and were added).
    pub fn fields(&self) -> impl Iterator<Item = FieldRef<'_>> {
        self.fields.iter().map(|field| FieldRef {
            name: self.name(field.name),
            value: self.value(field.value),
            sensitive: field.sensitive,
            static_index: match field.name {
                Name::Static(index) => Some(index),
                Name::Text(_) => None,
            },
        })
    }

    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// The first value of the field `name` (lower case).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.get_all(name).next()
    }

    /// Every value of the field `name` (lower case), in order.
    pub fn get_all<'h>(&'h self, name: &str) -> impl Iterator<Item = &'h [u8]> {
        let index = static_index_of(name);
        self.fields
            .iter()
            .filter(move |field| self.is_named(field, name, index))
            .map(|field| self.value(field.value))
    }

    /// Whether `field` is named `name`, whose static-table index is
    /// `index` ([`static_index_of`]). A name the decoder took from the static
    /// table compares as its index, without a look at the table or the
    /// text: regular names are there once each (15–61), so the indexes are
    /// equal exactly when the names are.
    fn is_named(&self, field: &Field, name: &str, index: Option<usize>) -> bool {
        match field.name {
            Name::Static(own) => index == Some(usize::from(own)),
            Name::Text(span) => self.text(span) == name,
        }
    }

    /// Keeps the fields whose name `keep` says yes to. (The bytes of the
    /// others stay in the buffers until the list is dropped: a head loses
    /// a few fields, never many.)
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        let HeaderList { text, fields, .. } = self;
        fields.retain(|field| keep(name_of(text, field.name)));
    }

    /// Drops every field named `name`.
    pub fn remove(&mut self, name: &str) {
        self.retain(|field| field != name);
    }

    /// Adds a field after the others. `name` must be a lower-case field
    /// name and `value` a valid value: the relay's own, not a peer's.
    pub fn append(&mut self, name: &str, value: &[u8], sensitive: bool) {
        let name = Name::Text(push_text(&mut self.text, name));
        let value = push_bytes(&mut self.values, value);
        self.fields.push(Field {
            name,
            value,
            sensitive,
        });
    }

    /// Replaces every field named `name` with this one.
    pub fn insert(&mut self, name: &str, value: &[u8], sensitive: bool) {
        self.remove(name);
        self.append(name, value, sensitive);
    }

    // The decoder's side: what it pushes it has checked.

    pub(super) fn set_method(&mut self, method: Method) {
        self.pseudo.method = Some(method);
    }

    pub(super) fn set_status(&mut self, status: StatusCode) {
        self.pseudo.status = Some(status);
    }

    pub(super) fn set_text(&mut self, which: PseudoText, text: &str) {
        let span = Some(push_text(&mut self.text, text));
        let p = &mut self.pseudo;
        match which {
            PseudoText::Scheme => p.scheme = span,
            PseudoText::Authority => p.authority = span,
            PseudoText::Path => p.path = span,
            PseudoText::Protocol => p.protocol = span,
        }
    }

    pub(super) fn has_text(&self, which: PseudoText) -> bool {
        let p = &self.pseudo;
        match which {
            PseudoText::Scheme => p.scheme.is_some(),
            PseudoText::Authority => p.authority.is_some(),
            PseudoText::Path => p.path.is_some(),
            PseudoText::Protocol => p.protocol.is_some(),
        }
    }

    /// A field whose name is static table entry `index` (15–61).
    pub(super) fn push_static(&mut self, index: u8, value: &[u8], sensitive: bool) {
        debug_assert!((15..=61).contains(&index), "not a regular name: {index}");
        let value = push_bytes(&mut self.values, value);
        self.fields.push(Field {
            name: Name::Static(index),
            value,
            sensitive,
        });
    }

    fn text(&self, span: Span) -> &str {
        // Spans are made by `push_text`, at character boundaries.
        self.text.get(span.range()).unwrap_or_default()
    }

    fn value(&self, span: Span) -> &[u8] {
        self.values.get(span.range()).unwrap_or_default()
    }

    fn name(&self, name: Name) -> &str {
        name_of(&self.text, name)
    }
}

fn name_of(text: &str, name: Name) -> &str {
    match name {
        Name::Static(index) => STATIC_TABLE
            .get(usize::from(index).wrapping_sub(1))
            .map_or("", |entry| entry.0),
        Name::Text(span) => text.get(span.range()).unwrap_or_default(),
    }
}

fn push_text(text: &mut String, more: &str) -> Span {
    let span = Span::after(text.len(), more.len());
    text.push_str(more);
    span
}

fn push_bytes(bytes: &mut Vec<u8>, more: &[u8]) -> Span {
    let span = Span::after(bytes.len(), more.len());
    bytes.extend_from_slice(more);
    span
}

impl Drop for HeaderList {
    fn drop(&mut self) {
        let usual = self.text.capacity() <= 2 * TEXT_ROOM
            && self.values.capacity() <= 2 * VALUE_ROOM
            && self.fields.capacity() <= 2 * FIELD_ROOM
            && self.values.capacity() >= VALUE_ROOM;
        if !usual {
            return;
        }
        let mut buffers = (
            std::mem::take(&mut self.text),
            std::mem::take(&mut self.values),
            std::mem::take(&mut self.fields),
        );
        buffers.0.clear();
        buffers.1.clear();
        buffers.2.clear();
        // `try_with`: a list dropped while the thread itself ends keeps
        // nothing.
        let _ = KEPT.try_with(|kept| {
            if let Ok(mut kept) = kept.try_borrow_mut()
                && kept.len() < KEPT_BUFFERS
            {
                kept.push(buffers);
            }
        });
    }
}

/// A policy's header lookups (the check HTTP/1 shares).
impl Headers for HeaderList {
    fn each_value(&self, name: &str, visit: &mut dyn FnMut(&[u8])) {
        visit_header_values(
            self.fields().map(|field| (field.name, field.value)),
            name,
            visit,
        )
    }
}

/// Whether `name` is a field name as HTTP/2 carries it: a token of
/// lower-case letters, digits and `!"#$%&'*+-.^_`|~`, 1 to 65 535 bytes
/// (the `http` crate's `HeaderName::from_lowercase`, which the tests
/// compare with byte for byte).
pub fn is_field_name(name: &[u8]) -> bool {
    const ALLOWED: [bool; 256] = {
        let mut table = [false; 256];
        let symbols = b"!\"#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz";
        let mut i = 0;
        while i < symbols.len() {
            table[symbols[i] as usize] = true;
            i += 1;
        }
        table
    };
    !name.is_empty() && name.len() < 1 << 16 && name.iter().all(|&b| ALLOWED[usize::from(b)])
}

/// Whether `value` is a field value the `http` crate accepts: no control
/// byte but tab (`HeaderValue::from_bytes`).
pub fn is_field_value(value: &[u8]) -> bool {
    let byte_by_byte = |bytes: &[u8]| {
        bytes
            .iter()
            .all(|&b| (b >= 0x20 && b != 0x7f) || b == b'\t')
    };
    // Eight bytes at a time ([`crate::swar`]) while no byte is below 0x20
    // or DEL: a value with a tab, or a bad byte, is then checked byte by
    // byte.
    let (mut words, rest) = crate::swar::words(value);
    if words.any(|word| crate::swar::has_byte_below_or(word, 0x20, b"\x7f")) {
        return byte_by_byte(value);
    }
    byte_by_byte(rest)
}

/// `value` as text when it is visible ASCII (and tab), as
/// `HeaderValue::to_str` reads it.
pub fn visible_ascii(value: &[u8]) -> Option<&str> {
    value
        .iter()
        .all(|&b| (0x20..0x7f).contains(&b) || b == b'\t')
        .then(|| std::str::from_utf8(value).ok())
        .flatten()
}

/// Conversions to and from the h2 crate's types, for the tests (whose
/// peers are h2's encoder and decoder).
#[cfg(test)]
mod h2_types {
    use bytes::Bytes;
    use h2::ext::Protocol;
    use h2::frame::{BytesStr, Pseudo};
    use http::header::{HeaderName, HeaderValue};
    use http::{HeaderMap, StatusCode};

    use super::{HeaderList, PseudoText};

    impl HeaderList {
        /// A head with h2's pseudo-fields and fields.
        pub fn from_h2(pseudo: &Pseudo, fields: &HeaderMap) -> HeaderList {
            let mut head = HeaderList::default();
            if let Some(method) = &pseudo.method {
                head.set_method(method.clone());
            }
            if let Some(status) = pseudo.status {
                head.set_status(status);
            }
            let texts = [
                (PseudoText::Scheme, pseudo.scheme.as_deref()),
                (PseudoText::Authority, pseudo.authority.as_deref()),
                (PseudoText::Path, pseudo.path.as_deref()),
                (
                    PseudoText::Protocol,
                    pseudo
                        .protocol
                        .as_ref()
                        .map(|p| std::str::from_utf8(p.as_ref()).unwrap()),
                ),
            ];
            for (which, text) in texts {
                if let Some(text) = text {
                    head.set_text(which, text);
                }
            }
            for (name, value) in fields {
                head.append(name.as_str(), value.as_bytes(), value.is_sensitive());
            }
            head
        }

        /// The head as h2's pseudo-fields and a `HeaderMap`.
        pub fn to_h2(&self) -> (Pseudo, HeaderMap) {
            let text =
                |t: Option<&str>| t.map(|t| BytesStr::try_from(Bytes::from(t.to_owned())).unwrap());
            let pseudo = Pseudo {
                method: self.method().cloned(),
                scheme: text(self.scheme()),
                authority: text(self.authority()),
                path: text(self.path()),
                protocol: self.protocol().map(Protocol::from),
                status: self.status(),
            };
            let mut fields = HeaderMap::new();
            for field in self.fields() {
                let name = HeaderName::from_lowercase(field.name.as_bytes()).unwrap();
                let mut value = HeaderValue::from_bytes(field.value).unwrap();
                value.set_sensitive(field.sensitive);
                fields.append(name, value);
            }
            (pseudo, fields)
        }
    }

    #[test]
    fn a_head_goes_to_h2_and_back() {
        let mut head = HeaderList::response(StatusCode::OK);
        head.append("x-a", b"1", false);
        head.push_static(31, b"text/plain", true);
        head.append("x-a", b"2", false);
        let (pseudo, fields) = head.to_h2();
        let back = HeaderList::from_h2(&pseudo, &fields);
        assert_eq!(back.status(), Some(StatusCode::OK));
        assert_eq!(back.get_all("x-a").collect::<Vec<_>>(), [b"1", b"2"]);
        assert_eq!(back.get("content-type"), Some(&b"text/plain"[..]));
        assert!(
            back.fields()
                .any(|f| f.name == "content-type" && f.sensitive)
        );
    }
}

#[cfg(test)]
mod tests {
    use http::header::{HeaderName, HeaderValue};

    use super::*;

    #[test]
    fn field_names_are_what_the_http_crate_accepts() {
        for b in 0..=255u8 {
            for name in [vec![b], vec![b'a', b], vec![b; 70]] {
                assert_eq!(
                    is_field_name(&name),
                    HeaderName::from_lowercase(&name).is_ok(),
                    "{name:?}"
                );
            }
        }
        for len in [0, 1, 64, 65, 65_535, 65_536] {
            let name = vec![b'x'; len];
            assert_eq!(
                is_field_name(&name),
                HeaderName::from_lowercase(&name).is_ok(),
                "length {len}"
            );
        }
    }

    #[test]
    fn field_values_are_what_the_http_crate_accepts() {
        // Every byte at every place of a value long enough for whole
        // words and a remainder.
        for b in 0..=255u8 {
            for at in 0..19 {
                let mut value = *b"abcdefghijklmnopqrs";
                value[at] = b;
                assert_eq!(
                    is_field_value(&value),
                    HeaderValue::from_bytes(&value).is_ok(),
                    "{b} at {at}"
                );
            }
        }
        for b in 0..=255u8 {
            let value = [b'a', b, b'z'];
            assert_eq!(
                is_field_value(&value),
                HeaderValue::from_bytes(&value).is_ok(),
                "{b}"
            );
            let expected = HeaderValue::from_bytes(&value)
                .ok()
                .and_then(|v| v.to_str().ok().map(str::to_owned));
            assert_eq!(visible_ascii(&value).map(str::to_owned), expected, "{b}");
        }
    }

    #[test]
    fn a_kept_lists_buffers_come_back_empty() {
        for _ in 0..2 * KEPT_BUFFERS {
            let mut list = HeaderList::with_room();
            assert_eq!(list.len(), 0);
            assert_eq!(list.get("x-old"), None);
            assert_eq!((list.path(), list.status()), (None, None));
            list.set_text(PseudoText::Path, "/old");
            list.set_status(StatusCode::OK);
            list.append("x-old", b"stale", false);
            assert_eq!(list.get("x-old"), Some(&b"stale"[..]));
        }
        // One that grew past its room is not kept, and takes none.
        let mut big = HeaderList::with_room();
        big.append("x-big", &[b'b'; 4 * VALUE_ROOM], false);
        drop(big);
        assert_eq!(HeaderList::with_room().len(), 0);
    }

    #[test]
    fn fields_are_kept_in_order_and_edited_by_name() {
        let mut head = HeaderList::default();
        head.push_static(58, b"curl", false); // user-agent
        head.append("x-appid-peer-id", b"spoofed", false);
        head.append("accept", b"*/*", false);
        head.append("x-appid-peer-id", b"again", false);
        assert_eq!(head.get("user-agent"), Some(&b"curl"[..]));
        head.retain(|name| !name.starts_with("x-appid-"));
        let names: Vec<_> = head.fields().map(|f| f.name).collect();
        assert_eq!(names, ["user-agent", "accept"]);
        head.insert("accept", b"text/html", false);
        head.insert("x-appid-peer-id", b"ours", false);
        let fields: Vec<_> = head.fields().map(|f| (f.name, f.value)).collect();
        assert_eq!(
            fields,
            [
                ("user-agent", &b"curl"[..]),
                ("accept", b"text/html"),
                ("x-appid-peer-id", b"ours")
            ]
        );
        assert_eq!(head.len(), 3);
        assert_eq!(head.fields().next().unwrap().static_index, Some(58));
    }

    /// A name finds its fields whether the decoder stored it as a static
    /// index or as text (a dynamic-table or literal name), and finds no
    /// field of another static name.
    #[test]
    fn lookups_match_static_and_spelled_names_alike() {
        let index = |name: &str| {
            let i = STATIC_TABLE.iter().position(|(n, _)| *n == name).unwrap() + 1;
            u8::try_from(i).unwrap()
        };
        let mut head = HeaderList::default();
        head.push_static(index("content-length"), b"5", false);
        head.push_static(index("content-type"), b"text/plain", false);
        head.append("content-length", b"6", false);
        head.append("x-a", b"1", false);
        head.push_static(index("content-location"), b"/x", false);
        let all = |name| head.get_all(name).collect::<Vec<_>>();
        assert_eq!(all("content-length"), [b"5", b"6"]);
        assert_eq!(all("content-type"), [&b"text/plain"[..]]);
        assert_eq!(all("content-location"), [&b"/x"[..]]);
        assert_eq!(all("x-a"), [b"1"]);
        assert!(all("content-encoding").is_empty());
        assert!(all("x-b").is_empty());
        assert_eq!(head.get("content-length"), Some(&b"5"[..]));
        assert_eq!(head.get("accept"), None);
    }
}
