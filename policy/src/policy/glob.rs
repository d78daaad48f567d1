//! Globs: `*` within one segment, `**` across segments. Nothing else.
//!
//! Design bias: *small language, linear time, no allocation when matching*.
//! Patterns are compiled once at load into the cheapest form that can answer
//! them (exact text, a prefix, a subtree, or a tiny NFA); matching never
//! backtracks, so a hostile HTTP path cannot make a decision slow. The
//! segment separator is `/` (SPIFFE IDs, HTTP paths, everything else) or `.`
//! for host names; header values have none ([`Glob::value`]). Host globs, and path globs under `paths_case_insensitive`,
//! ignore ASCII case (the pattern is lowered once at load, the text byte by
//! byte while matching).
//!
//! - `*` matches any run of characters except the separator (possibly empty).
//! - `**` must be a whole segment and matches any run, separators included:
//!   `a/**` matches `a`, `a/` and `a/x/y`; `a/**/b` matches `a/b` and
//!   `a/x/y/b`; `**` alone matches everything.
//! - `?`, `[`, `]`, `{`, `}` and `\` are refused rather than taken literally,
//!   so a pattern written for another glob dialect fails loudly at load.

use std::fmt;

/// Longest pattern (in compiled elements, roughly its length) we accept.
pub(crate) const MAX_GLOB_LEN: usize = 255;

/// Words of the NFA state bitset: `MAX_GLOB_LEN + 1` states.
const WORDS: usize = (MAX_GLOB_LEN + 1).div_ceil(64);

/// A compiled glob pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Glob {
    pattern: Box<str>,
    sep: u8,
    fold_case: bool,
    form: Form,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Form {
    /// No wildcard at all.
    Exact(Box<[u8]>),
    /// `**`: anything.
    Everything,
    /// `P/**`: `P` itself or anything under `P/`.
    Subtree(Box<[u8]>),
    /// `P*` with no separator after the star: `P` then one segment's rest.
    SegmentRest(Box<[u8]>),
    /// Anything else.
    Nfa(Box<[El]>),
}

/// One NFA element; state `i` means "about to match element `i`".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum El {
    Byte(u8),
    /// `*`: stay on any byte but the separator, or move on without input.
    Star,
    /// `**`: stay on any byte, or move on without input.
    Any,
    /// Move on without input to the next element, or skip the next `n`
    /// (how `**/` matches zero segments).
    Skip(u8),
}

/// Why a pattern was refused: message and what to write instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GlobError {
    pub message: String,
    pub hint: String,
}

impl Glob {
    /// A glob over `/`-separated text (SPIFFE IDs, paths, label values).
    pub fn path(pattern: &str) -> Result<Glob, GlobError> {
        Glob::new(pattern, b'/', false)
    }

    /// A glob over `/`-separated text, ignoring ASCII case (`http.paths`
    /// under `paths_case_insensitive`). Matching still allocates nothing.
    pub fn path_ignoring_case(pattern: &str) -> Result<Glob, GlobError> {
        Glob::new(pattern, b'/', true)
    }

    /// A glob over a header value, which has no segments: `*` (or `**`)
    /// matches any run of characters, `/` included (`curl*` meets
    /// `curl/8.4.0`; `*` alone, any value). Values never hold NUL (both
    /// codecs refuse it), so NUL is the separator nothing crosses.
    pub fn value(pattern: &str) -> Result<Glob, GlobError> {
        if pattern.contains("***") {
            return Glob::new(pattern, 0, false); // refused as written
        }
        let mut glob = Glob::new(&pattern.replace("**", "*"), 0, false)?;
        glob.pattern = pattern.into();
        Ok(glob)
    }

    /// A glob over `.`-separated host names, ignoring ASCII case.
    pub fn host(pattern: &str) -> Result<Glob, GlobError> {
        Glob::new(pattern, b'.', true)
    }

    /// Exactly `text`, taken literally (no wildcards, nothing refused).
    pub fn literal(text: &str) -> Glob {
        Glob {
            pattern: text.into(),
            sep: b'/',
            fold_case: false,
            form: Form::Exact(text.as_bytes().into()),
        }
    }

    fn new(pattern: &str, sep: u8, fold_case: bool) -> Result<Glob, GlobError> {
        let sep_c = char::from(sep);
        let err = |message: String, hint: String| Err(GlobError { message, hint });
        if pattern.is_empty() {
            return err(
                "empty glob".into(),
                "write `*` for any one segment or `**` for anything".into(),
            );
        }
        if let Some(c) = pattern.chars().find(|c| "?[]{}\\".contains(*c)) {
            return err(
                format!("`{c}` is not supported in globs (`{pattern}`)"),
                "only `*` (within a segment) and `**` (across segments) are wildcards; \
                 list alternatives under `in` instead"
                    .into(),
            );
        }
        let owned;
        let text = if fold_case {
            owned = pattern.to_ascii_lowercase();
            owned.as_str()
        } else {
            pattern
        };
        let bytes = text.as_bytes();
        let mut els: Vec<El> = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] != b'*' {
                els.push(El::Byte(bytes[i]));
                i += 1;
                continue;
            }
            let run = bytes[i..].iter().take_while(|b| **b == b'*').count();
            if run > 2 {
                return err(
                    format!("`{}` is not a wildcard (`{pattern}`)", "*".repeat(run)),
                    "write `*` (within a segment) or `**` (across segments)".into(),
                );
            }
            if run == 1 {
                els.push(El::Star);
                i += 1;
                continue;
            }
            let starts_segment = i == 0 || bytes[i - 1] == sep;
            let ends_segment = i + 2 == bytes.len() || bytes[i + 2] == sep;
            if !starts_segment || !ends_segment {
                return err(
                    format!("`**` must be a whole segment between `{sep_c}`s (`{pattern}`)"),
                    format!(
                        "write `*` to match within a segment, or put `**` between separators, e.g. `a{sep_c}**{sep_c}b`"
                    ),
                );
            }
            if i + 2 == bytes.len() {
                if i == 0 {
                    // `**` alone.
                    els.push(El::Any);
                } else {
                    // `P/**`: the separator before becomes optional with it.
                    els.pop();
                    els.extend([El::Skip(2), El::Byte(sep), El::Any]);
                }
                i += 2;
            } else {
                // `**/` at the start or in the middle: zero or more segments.
                els.extend([El::Skip(2), El::Any, El::Byte(sep)]);
                i += 3;
            }
        }
        if els.len() > MAX_GLOB_LEN {
            return err(
                format!("glob is longer than {MAX_GLOB_LEN} characters"),
                "shorten the pattern, or match on a more specific attribute".into(),
            );
        }
        let form = classify(&els, sep);
        Ok(Glob {
            pattern: pattern.into(),
            sep,
            fold_case,
            form,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// The exact text this pattern matches, if it has no wildcard.
    pub fn exact(&self) -> Option<&str> {
        match &self.form {
            Form::Exact(b) if !self.fold_case => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// The longest literal start of every match that ends in a separator
    /// (`spiffe://td/ns/` for `spiffe://td/ns/*/sa/x`), for indexing. Empty
    /// when there is none.
    pub fn separator_prefix(&self) -> &str {
        if self.fold_case {
            return "";
        }
        let literal = match &self.form {
            Form::Exact(b) | Form::Subtree(b) | Form::SegmentRest(b) => &b[..],
            Form::Everything => &[][..],
            Form::Nfa(els) => {
                let n = els.iter().take_while(|e| matches!(e, El::Byte(_))).count();
                // Exact bytes up to the first wildcard; mapped back to text below.
                return prefix_str(&self.pattern, n, self.sep);
            }
        };
        prefix_str(&self.pattern, literal.len(), self.sep)
    }

    /// Whether `text` matches. Linear in `text`, no allocation.
    pub fn matches(&self, text: &str) -> bool {
        let t = text.as_bytes();
        match &self.form {
            Form::Exact(p) => self.eq_bytes(t, p),
            Form::Everything => true,
            Form::Subtree(p) => {
                t.len() >= p.len()
                    && self.eq_bytes(&t[..p.len()], p)
                    && (t.len() == p.len() || t[p.len()] == self.sep)
            }
            Form::SegmentRest(p) => {
                t.len() >= p.len()
                    && self.eq_bytes(&t[..p.len()], p)
                    && !t[p.len()..].contains(&self.sep)
            }
            Form::Nfa(els) => self.run(els, t),
        }
    }

    fn eq_bytes(&self, a: &[u8], b: &[u8]) -> bool {
        if self.fold_case {
            a.eq_ignore_ascii_case(b)
        } else {
            a == b
        }
    }

    fn run(&self, els: &[El], text: &[u8]) -> bool {
        let accept = els.len();
        let mut states = [0u64; WORDS];
        set(&mut states, 0);
        close(els, &mut states);
        for &b in text {
            let b = if self.fold_case {
                b.to_ascii_lowercase()
            } else {
                b
            };
            let mut next = [0u64; WORDS];
            let mut any = false;
            for (w, word) in states.iter().enumerate() {
                let mut bits = *word;
                while bits != 0 {
                    let i = w * 64 + bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    match els.get(i) {
                        Some(El::Byte(c)) if *c == b => {
                            set(&mut next, i + 1);
                            any = true;
                        }
                        Some(El::Star) if b != self.sep => {
                            set(&mut next, i);
                            any = true;
                        }
                        Some(El::Any) => {
                            set(&mut next, i);
                            any = true;
                        }
                        _ => {}
                    }
                }
            }
            if !any {
                return false;
            }
            close(els, &mut next);
            states = next;
        }
        get(&states, accept)
    }
}

/// `pattern` up to (and including) the last separator within its first
/// `literal_len` bytes of compiled literal. Globs are ASCII-transparent, so
/// the first `literal_len` compiled bytes are the first bytes of the pattern.
fn prefix_str(pattern: &str, literal_len: usize, sep: u8) -> &str {
    let head = &pattern.as_bytes()[..literal_len.min(pattern.len())];
    match head.iter().rposition(|b| *b == sep) {
        // Separators are ASCII, so this is a char boundary.
        Some(p) => pattern.get(..=p).unwrap_or(""),
        None => "",
    }
}

fn classify(els: &[El], sep: u8) -> Form {
    let literal = |els: &[El]| -> Option<Box<[u8]>> {
        els.iter()
            .map(|e| match e {
                El::Byte(b) => Some(*b),
                _ => None,
            })
            .collect()
    };
    if let Some(bytes) = literal(els) {
        return Form::Exact(bytes);
    }
    if els == [El::Any] {
        return Form::Everything;
    }
    if let [head @ .., El::Skip(2), El::Byte(s), El::Any] = els
        && *s == sep
        && let Some(p) = literal(head)
    {
        return Form::Subtree(p);
    }
    if let [head @ .., El::Star] = els
        && let Some(p) = literal(head)
    {
        return Form::SegmentRest(p);
    }
    Form::Nfa(els.into())
}

fn set(bits: &mut [u64; WORDS], i: usize) {
    if let Some(w) = bits.get_mut(i / 64) {
        *w |= 1 << (i % 64);
    }
}

fn get(bits: &[u64; WORDS], i: usize) -> bool {
    bits.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
}

/// Follows moves without input. They only go forward, so one ascending pass
/// reaches everything.
fn close(els: &[El], bits: &mut [u64; WORDS]) {
    for (i, el) in els.iter().enumerate() {
        if !get(bits, i) {
            continue;
        }
        match el {
            El::Star | El::Any => set(bits, i + 1),
            El::Skip(n) => {
                set(bits, i + 1);
                set(bits, i + 1 + usize::from(*n));
            }
            El::Byte(_) => {}
        }
    }
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.pattern)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, t: &str) -> bool {
        Glob::path(p).unwrap().matches(t)
    }

    #[test]
    fn table() {
        let cases: &[(&str, &str, bool)] = &[
            ("web", "web", true),
            ("web", "web2", false),
            ("*", "anything", true),
            ("*", "", true),
            ("*", "a/b", false),
            ("**", "a/b/c", true),
            ("**", "", true),
            (
                "spiffe://td/ns/shop/sa/*",
                "spiffe://td/ns/shop/sa/web",
                true,
            ),
            (
                "spiffe://td/ns/shop/sa/*",
                "spiffe://td/ns/shop/sa/web/x",
                false,
            ),
            ("spiffe://td/ns/shop/sa/*", "spiffe://td/ns/shop/sa/", true),
            (
                "spiffe://td/ns/*/sa/web",
                "spiffe://td/ns/shop/sa/web",
                true,
            ),
            (
                "spiffe://td/ns/*/sa/web",
                "spiffe://td/ns/a/b/sa/web",
                false,
            ),
            ("spiffe://td/**", "spiffe://td/ns/a/b", true),
            ("spiffe://td/**", "spiffe://td", true),
            ("spiffe://td/**", "spiffe://tdx/a", false),
            ("/v1/**", "/v1", true),
            ("/v1/**", "/v1/", true),
            ("/v1/**", "/v1/users/7", true),
            ("/v1/**", "/v10", false),
            ("/a/**/b", "/a/b", true),
            ("/a/**/b", "/a/x/y/b", true),
            ("/a/**/b", "/a/xb", false),
            ("/a/**/b", "/a/x/y/c", false),
            ("**/b", "b", true),
            ("**/b", "x/y/b", true),
            ("**/b", "xb", false),
            ("/v*/users", "/v1/users", true),
            ("/v*/users", "/v1/x/users", false),
            ("*.json", "a.json", true),
            ("*-prod-*", "eu-prod-1", true),
            ("*-prod-*", "eu-dev-1", false),
            ("a*b*c", "abxbc", true),
            ("a*b*c", "abxbd", false),
        ];
        for (p, t, want) in cases {
            assert_eq!(m(p, t), *want, "{p} ~ {t}");
        }
    }

    #[test]
    fn hosts_use_dots_and_ignore_case() {
        let g = Glob::host("*.Stripe.com").unwrap();
        assert!(g.matches("api.stripe.com"));
        assert!(g.matches("API.STRIPE.COM"));
        assert!(!g.matches("a.b.stripe.com"));
        assert!(
            Glob::host("**.stripe.com")
                .unwrap()
                .matches("a.b.stripe.com")
        );
        assert!(Glob::host("**.stripe.com").unwrap().matches("stripe.com"));
        assert!(
            Glob::host("api.stripe.com")
                .unwrap()
                .matches("API.stripe.com")
        );
    }

    #[test]
    fn paths_can_ignore_case() {
        for (p, t, want) in [
            ("/Admin/**", "/ADMIN/x", true),
            ("/admin/**", "/aDmIn", true),
            ("/admin/**", "/admins", false),
            ("/api/*/Users", "/API/v1/users", true),
            ("/api/*/users", "/api/v1/x/users", false),
            ("/a/**/b", "/A/x/Y/B", true),
            ("/v*", "/V1", true),
            ("/caf%C3%A9", "/CAF%c3%a9", true),
        ] {
            let g = Glob::path_ignoring_case(p).unwrap();
            assert_eq!(g.matches(t), want, "{p} ~ {t}");
            assert_eq!(g.as_str(), p, "the pattern as written");
        }
        assert!(!Glob::path("/admin/**").unwrap().matches("/ADMIN/x"));
    }

    #[test]
    fn bad_globs_are_refused_with_a_hint() {
        for (p, needle) in [
            ("", "empty glob"),
            ("a***", "`***` is not a wildcard"),
            ("a**", "`**` must be a whole segment"),
            ("/v1/**x", "`**` must be a whole segment"),
            ("/v?/x", "`?` is not supported"),
            ("/v[12]", "`[` is not supported"),
            ("{a,b}", "`{` is not supported"),
        ] {
            let e = Glob::path(p).unwrap_err();
            assert!(e.message.contains(needle), "{p}: {}", e.message);
            assert!(!e.hint.is_empty());
        }
        assert!(Glob::path(&"a*".repeat(200)).is_err());
    }

    #[test]
    fn literals_are_taken_as_written() {
        let g = Glob::literal("a?[b]*");
        assert!(g.matches("a?[b]*"));
        assert!(!g.matches("a?[b]x"));
        assert_eq!(g.exact(), Some("a?[b]*"));
    }

    #[test]
    fn exact_and_prefix_for_indexing() {
        assert_eq!(Glob::path("a/b").unwrap().exact(), Some("a/b"));
        assert_eq!(Glob::path("a/*").unwrap().exact(), None);
        assert_eq!(
            Glob::path("spiffe://td/ns/*/sa/x")
                .unwrap()
                .separator_prefix(),
            "spiffe://td/ns/"
        );
        assert_eq!(
            Glob::path("spiffe://td/ns/**").unwrap().separator_prefix(),
            "spiffe://td/"
        );
        assert_eq!(
            Glob::path("spiffe://td/ns/a*").unwrap().separator_prefix(),
            "spiffe://td/ns/"
        );
        assert_eq!(Glob::path("*/x").unwrap().separator_prefix(), "");
        assert_eq!(Glob::path("**/x").unwrap().separator_prefix(), "");
    }

    #[test]
    fn long_hostile_input_is_linear() {
        let g = Glob::path("*a*a*a*a*a*a*a*a*b").unwrap();
        let text = "a".repeat(100_000);
        assert!(!g.matches(&text));
        let g = Glob::path("**/a/**/a/**/a/**/b").unwrap();
        let text = "a/".repeat(50_000);
        assert!(!g.matches(&text));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// A slow but obviously-right recursive matcher to compare against.
        fn reference(p: &[u8], t: &[u8]) -> bool {
            if p.is_empty() {
                return t.is_empty();
            }
            if p.starts_with(b"**/") {
                // zero segments, or any run ending in '/'
                if reference(&p[3..], t) {
                    return true;
                }
                return (0..t.len()).any(|k| t[k] == b'/' && reference(&p[3..], &t[k + 1..]));
            }
            if p == b"/**" {
                return t.is_empty() || t[0] == b'/';
            }
            if p == b"**" {
                return true;
            }
            if p[0] == b'*' {
                return (0..=t.len())
                    .take_while(|k| *k == 0 || t[k - 1] != b'/')
                    .any(|k| reference(&p[1..], &t[k..]));
            }
            !t.is_empty() && p[0] == t[0] && reference(&p[1..], &t[1..])
        }

        proptest! {
            #[test]
            fn agrees_with_reference(
                segs in proptest::collection::vec(prop_oneof![
                    Just("*".to_string()), Just("**".to_string()),
                    "[ab]{0,2}", "[ab]{0,1}\\*[ab]{0,1}"], 1..5),
                text in "[ab/]{0,10}",
            ) {
                let pattern = segs.join("/");
                if let Ok(g) = Glob::path(&pattern) {
                    prop_assert_eq!(g.matches(&text), reference(pattern.as_bytes(), text.as_bytes()),
                        "pattern {} text {}", pattern, text);
                }
            }
        }
    }
}
