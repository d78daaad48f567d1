//! The canonical path: what policy matches `http.paths` against.
//!
//! Design bias: *one spelling per resource, or a refusal*. Servers read a
//! request target differently — nginx merges `//` and resolves `..`, Tomcat
//! drops `;params`, everyone decodes `%61` to `a`, some decode `%2F` to `/`
//! and some do not. A path rule is only sound if the path it sees is the one
//! the app will route, whatever the app. So: what every server agrees on is
//! normalized here (unreserved characters decoded, empty segments merged,
//! segment parameters dropped); what servers disagree on (encoded `/`, `\`
//! and `%`, dot segments, control bytes) is refused. The request is still
//! forwarded byte for byte: only policy sees the canonical form.
//!
//! The rules, in `docs/what-policy-sees.md`:
//! 1. the path is the target up to `?` (after the authority in absolute
//!    form, `scheme://` at the start); `*` is its own path (the caller
//!    allows it only for `OPTIONS`);
//! 2. refused: `\`, `%2F`, `%5C`, `%25`, `%3B`, NUL and control bytes (raw or
//!    encoded), malformed `%`, `.`/`..` segments (raw, encoded, or with
//!    `;params`), a path that does not start with `/`, a `#` anywhere in
//!    the target (a request has no fragment), an origin-form path that
//!    starts with `//` (a URL parser reads a host there), an absolute form
//!    whose authority is followed by anything but a path or holds a `\`;
//! 3. `%XX` of an unreserved character is decoded; other encodings are kept
//!    with upper-case hex, and raw non-ASCII bytes are encoded so
//!    (`/café` is `/caf%C3%A9`, as `/caf%c3%a9` is);
//! 4. in each segment, everything from the first `;` is dropped;
//! 5. empty segments are merged (`/a//b` is `/a/b`).
//!
//! [`canonical_path`] is pure and total: any string gives a path or a
//! [`PathError`], without panicking. It does not allocate for a path that
//! is already canonical (the common case).

use std::borrow::Cow;

use appid_policy::policy::{decoded_in_paths, push_percent_encoded};
use std::fmt;

/// Why a request path is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// Neither `/…` nor `*` (after the authority, in absolute form).
    NotAbsolute,
    /// A raw backslash, or `%5C`: Windows servers and some frameworks read
    /// it as `/`.
    Backslash,
    /// `%2F`: some servers decode it before routing, some after.
    EncodedSlash,
    /// `%25`: a server that decodes twice would see another encoding.
    EncodedPercent,
    /// `%3B`: a server that decodes before dropping `;params` would cut the
    /// segment there, one that decodes after would not.
    EncodedSemicolon,
    /// NUL or another control byte, raw or encoded.
    ControlCharacter,
    /// A `%` not followed by two hex digits.
    BadPercentEncoding,
    /// A `.` or `..` segment: servers resolve them or not.
    DotSegment,
    /// A `#` anywhere in the target. A request target has no fragment
    /// (RFC 9112 §3.2, RFC 9113 §8.3.1); a server that takes `#` as part
    /// of the path (Go's `url.ParseRequestURI` does) would route
    /// `/public#/../admin` where policy saw `/public`.
    Fragment,
    /// An origin-form path that starts with `//`. Policy would see
    /// `//public/admin` as `/public/admin`, but an app that resolves the
    /// target as a URL reference (Node's `new URL(req.url, base)`, Python's
    /// `urlsplit`) reads a network-path reference: host `public`, path
    /// `/admin`.
    LeadingDoubleSlash,
    /// Absolute form whose authority is not followed by `/` or the end of
    /// the target (`http://h?/admin`; a backslash in the authority is
    /// [`PathError::Backslash`]): its path is
    /// `/` by RFC 3986, but routers that match the raw target (Fastify's
    /// find-my-way) route what follows the first `/`.
    AbsoluteFormWithoutPath,
}

impl PathError {
    pub fn as_str(self) -> &'static str {
        match self {
            PathError::NotAbsolute => "request path does not start with /",
            PathError::Backslash => "backslash in the request path",
            PathError::EncodedSlash => "encoded slash (%2F) in the request path",
            PathError::EncodedPercent => "encoded percent (%25) in the request path",
            PathError::EncodedSemicolon => "encoded semicolon (%3B) in the request path",
            PathError::ControlCharacter => "control character in the request path",
            PathError::BadPercentEncoding => "malformed percent-encoding in the request path",
            PathError::DotSegment => "dot segment (. or ..) in the request path",
            PathError::Fragment => "fragment (#) in the request target",
            PathError::LeadingDoubleSlash => "request path starts with //",
            PathError::AbsoluteFormWithoutPath => {
                "absolute-form target whose authority is not followed by a path"
            }
        }
    }
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The path part of a request target: origin form up to `?` or `#`;
/// absolute form (`scheme://authority/p`, the scheme at the start) after
/// the authority (`/` when nothing follows it; refused when something
/// other than a path does, or the authority holds a `\`); anything else
/// (`*`, or a target a caller must refuse) as is.
pub fn path_of(target: &str) -> Result<&str, PathError> {
    // Origin form (nearly every request) first: no search for `://`.
    let path = match absolute_form(target) {
        None => target,
        Some(after_scheme) => {
            let (authority, rest) = split_authority(after_scheme);
            if authority.contains('\\') {
                return Err(PathError::Backslash);
            }
            match rest.as_bytes().first() {
                None => "/",
                Some(b'/') => rest,
                Some(_) => return Err(PathError::AbsoluteFormWithoutPath),
            }
        }
    };
    // Bytes, not chars: `?` and `#` are ASCII, and a byte search is what
    // every request pays for.
    let end = path.bytes().position(|b| b == b'?' || b == b'#');
    Ok(end.map_or(path, |end| &path[..end]))
}

/// The authority of an absolute-form target (`http://api.test/p`:
/// `api.test`), or `None` for any other form.
pub fn authority_of(target: &str) -> Option<&str> {
    absolute_form(target).map(|after_scheme| split_authority(after_scheme).0)
}

/// What follows `scheme://`, split where the authority ends: at the first
/// `/`, `?` or `#`.
fn split_authority(after_scheme: &str) -> (&str, &str) {
    let end = after_scheme
        .find(['/', '?', '#'])
        .unwrap_or(after_scheme.len());
    after_scheme.split_at(end)
}

/// What follows `scheme://` when `target` starts with an RFC 3986 scheme
/// (a letter, then letters, digits, `+`, `-` or `.`) and `://`.
fn absolute_form(target: &str) -> Option<&str> {
    let bytes = target.as_bytes();
    if !bytes.first().is_some_and(u8::is_ascii_alphabetic) {
        return None;
    }
    let scheme = bytes
        .iter()
        .take_while(|&&b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
        .count();
    target[scheme..].strip_prefix("://")
}

/// The canonical path of a request target (see the module docs).
pub fn canonical_path(target: &str) -> Result<Cow<'_, str>, PathError> {
    if target.as_bytes().contains(&b'#') {
        return Err(PathError::Fragment);
    }
    let raw = path_of(target)?;
    if raw == "*" {
        return Ok(Cow::Borrowed(raw));
    }
    if !raw.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    // Only in origin form: in absolute form the authority came first.
    if target.starts_with("//") {
        return Err(PathError::LeadingDoubleSlash);
    }
    // Refusals first, over the raw bytes; remember whether anything needs
    // rewriting so the common path is returned borrowed.
    let mut rewrite = false;
    let bytes = raw.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => return Err(PathError::Backslash),
            b if b.is_ascii_control() => return Err(PathError::ControlCharacter),
            b'%' => {
                let decoded = percent_byte(bytes, i).ok_or(PathError::BadPercentEncoding)?;
                match decoded {
                    b'/' => return Err(PathError::EncodedSlash),
                    b'\\' => return Err(PathError::Backslash),
                    b'%' => return Err(PathError::EncodedPercent),
                    b';' => return Err(PathError::EncodedSemicolon),
                    b if b.is_ascii_control() => return Err(PathError::ControlCharacter),
                    _ => {}
                }
                // Decoded, or re-spelled (lower-case hex).
                if decoded_in_paths(decoded)
                    || bytes[i + 1..i + 3].iter().any(u8::is_ascii_lowercase)
                {
                    rewrite = true;
                }
                i += 3;
                continue;
            }
            b';' => rewrite = true,
            b'/' if bytes.get(i + 1) == Some(&b'/') => rewrite = true,
            // Raw non-ASCII (UTF-8): spelled `%XX`, as its encoding is.
            b if !b.is_ascii() => rewrite = true,
            _ => {}
        }
        i += 1;
    }

    let canonical = if rewrite {
        Cow::Owned(rewritten(raw))
    } else {
        Cow::Borrowed(raw)
    };
    // Dot segments, after decoding (`%2e` is `.`) and dropping parameters
    // (`..;x` is `..`).
    if canonical.split('/').any(|s| s == "." || s == "..") {
        return Err(PathError::DotSegment);
    }
    Ok(canonical)
}

/// Decodes what [`decoded_in_paths`] names, upper-cases other encodings, drops
/// segment parameters and merges empty segments. The input has passed the
/// refusals of [`canonical_path`].
fn rewritten(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for segment in raw.split('/').skip(1) {
        // `;` starts the parameters: the segment's name is what comes before.
        let name = segment.split(';').next().unwrap_or(segment);
        if name.is_empty() {
            continue; // `//`, or a segment that was only parameters
        }
        out.push('/');
        let bytes = name.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' {
                // Checked by the caller: two hex digits follow.
                let decoded = percent_byte(bytes, i).unwrap_or(b'%');
                if decoded_in_paths(decoded) {
                    out.push(char::from(decoded));
                } else {
                    out.push('%');
                    out.push(char::from(bytes[i + 1].to_ascii_uppercase()));
                    out.push(char::from(bytes[i + 2].to_ascii_uppercase()));
                }
                i += 3;
            } else if !bytes[i].is_ascii() {
                push_percent_encoded(&mut out, bytes[i]);
                i += 1;
            } else {
                // Copy the ASCII up to the next `%` or non-ASCII byte.
                let end = bytes[i..]
                    .iter()
                    .position(|&b| b == b'%' || !b.is_ascii())
                    .map_or(name.len(), |n| i + n);
                out.push_str(&name[i..end]);
                i = end;
            }
        }
    }
    // A trailing slash is part of the path (`/a/` is not `/a`); the root
    // stays `/`.
    if raw.ends_with('/') || out.is_empty() {
        out.push('/');
    }
    out
}

/// The byte `%XX` at `at` encodes, if two hex digits follow.
fn percent_byte(bytes: &[u8], at: usize) -> Option<u8> {
    let hex = bytes.get(at + 1..at + 3)?;
    let digit = |b: u8| char::from(b).to_digit(16);
    Some((digit(hex[0])? * 16 + digit(hex[1])?) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn canonical_paths() {
        for (target, want) in [
            ("/", "/"),
            ("/v1/orders?x=1", "/v1/orders"),
            ("*", "*"),
            ("http://h:80/v1/x?q", "/v1/x"),
            ("http://h", "/"),
            ("HTTPS://h:443/x", "/x"),
            ("/%61dmin/users", "/admin/users"),
            // What a segment may carry as it is is decoded too, as servers
            // that decode before routing read it.
            ("/users/%40admin/x", "/users/@admin/x"),
            ("/v1/db%3adelete", "/v1/db:delete"),
            ("/a%21%24%26%27%28%29%2B%2C%3D", "/a!$&'()+,="),
            // Not `*`, `?`, `#`: a wildcard in patterns, and structure.
            ("/a%2ab%3F%23", "/a%2Ab%3F%23"),
            ("/%70ublic/x", "/public/x"),
            ("/public/%73ecret/x", "/public/secret/x"),
            ("/caf\u{e9}/%61b?q", "/caf%C3%A9/ab"),
            // Raw or encoded, non-ASCII is one spelling.
            ("/caf\u{e9}", "/caf%C3%A9"),
            ("/\u{1f600}/a\u{e9}b", "/%F0%9F%98%80/a%C3%A9b"),
            ("/x%20y", "/x%20y"),
            ("/a%2ab", "/a%2Ab"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/public//secret/x", "/public/secret/x"),
            ("/admin///x", "/admin/x"),
            ("/a/", "/a/"),
            ("/a//", "/a/"),
            ("http://h//public/x", "/public/x"),
            ("/public/secret;jsessionid=1/x", "/public/secret/x"),
            ("/a;x=1/b;y", "/a/b"),
            ("/a/;x/b", "/a/b"),
            ("/public/x?y=/../admin", "/public/x"),
            ("/.well-known/x", "/.well-known/x"),
            ("/a..b/c.", "/a..b/c."),
            ("/%7euser", "/~user"),
        ] {
            assert_eq!(canonical_path(target).as_deref(), Ok(want), "{target}");
        }
    }

    #[test]
    fn refused_paths() {
        for (target, why) in [
            ("/public/../admin", PathError::DotSegment),
            ("/public/./secret/x", PathError::DotSegment),
            ("/public/%2e%2e/admin", PathError::DotSegment),
            ("/public/%2E/admin", PathError::DotSegment),
            ("/public/.%2e/admin", PathError::DotSegment),
            ("/public/..;/admin", PathError::DotSegment),
            ("/public/.;x/admin", PathError::DotSegment),
            ("/public/..", PathError::DotSegment),
            ("/..", PathError::DotSegment),
            ("/public/..%2fadmin", PathError::EncodedSlash),
            ("/a%2Fb", PathError::EncodedSlash),
            ("/public/..\\admin", PathError::Backslash),
            ("/a%5cb", PathError::Backslash),
            ("/a%25b", PathError::EncodedPercent),
            ("/admin%3bx/y", PathError::EncodedSemicolon),
            ("/a%00b", PathError::ControlCharacter),
            ("/a%0ab", PathError::ControlCharacter),
            ("/a%7fb", PathError::ControlCharacter),
            ("/a\u{1}b", PathError::ControlCharacter),
            ("/a%zzb", PathError::BadPercentEncoding),
            ("/a/%2", PathError::BadPercentEncoding),
            ("/a/%", PathError::BadPercentEncoding),
            ("a/b", PathError::NotAbsolute),
            ("", PathError::NotAbsolute),
            ("?x", PathError::NotAbsolute),
            ("/a#frag", PathError::Fragment),
            ("/public#/../admin", PathError::Fragment),
            ("/ok?q#\r\nx: y", PathError::Fragment),
            ("http://h/a#b", PathError::Fragment),
            ("http://h#b", PathError::Fragment),
            ("//public/admin", PathError::LeadingDoubleSlash),
            ("//", PathError::LeadingDoubleSlash),
            ("//admin///x", PathError::LeadingDoubleSlash),
            ("http://h?/admin/users", PathError::AbsoluteFormWithoutPath),
            ("http://h?q", PathError::AbsoluteFormWithoutPath),
            ("http://h\\admin?", PathError::Backslash),
            ("http://h\\admin/x", PathError::Backslash),
            // `://` later in the target is no absolute form.
            ("admin?x=http://h/public", PathError::NotAbsolute),
            ("1http://h/public", PathError::NotAbsolute),
            ("://h/public", PathError::NotAbsolute),
        ] {
            assert_eq!(canonical_path(target), Err(why), "{target}");
        }
    }

    #[test]
    fn canonical_paths_are_borrowed_when_nothing_changes() {
        assert!(matches!(
            canonical_path("/v1/orders/42?x"),
            Ok(Cow::Borrowed(_))
        ));
        assert!(matches!(canonical_path("/x%20y"), Ok(Cow::Borrowed(_))));
    }

    /// How a normalizing server (nginx with `merge_slashes`, plus Tomcat's
    /// parameter stripping) routes a raw path: decode every `%XX`, drop
    /// `;params`, merge `//`, resolve `.` and `..`. `None` when it would
    /// escape the root.
    fn server_route(raw: &str) -> Option<Vec<u8>> {
        let bytes = raw.as_bytes();
        let mut decoded = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' {
                decoded.push(percent_byte(bytes, i)?);
                i += 3;
            } else {
                decoded.push(bytes[i]);
                i += 1;
            }
        }
        let mut segments: Vec<&[u8]> = Vec::new();
        for segment in decoded.split(|&b| b == b'/').skip(1) {
            let name = segment.split(|&b| b == b';').next().unwrap_or(segment);
            match name {
                b"" | b"." => {}
                b".." => {
                    segments.pop()?;
                }
                name => segments.push(name),
            }
        }
        let mut route = Vec::new();
        for s in &segments {
            route.push(b'/');
            route.extend_from_slice(s);
        }
        if route.is_empty() || raw.ends_with('/') {
            route.push(b'/');
        }
        Some(route)
    }

    fn decode_all(path: &str) -> Vec<u8> {
        let bytes = path.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            match (bytes[i], percent_byte(bytes, i)) {
                (b'%', Some(b)) => {
                    out.push(b);
                    i += 3;
                }
                (b, _) => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        out
    }

    /// Path pieces that exercise every rule.
    fn piece() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "/", "//", "a", "b", "admin", ".", "..", "%2e", "%2E", "%2e%2e", ";x", ";", "%61",
            "%2f", "%2F", "%5c", "\\", "%25", "%00", "%20", "%3b", "%c3%a9", "\u{e9}", "~", "%7e",
            "%", "%z", "-", "_",
        ])
    }

    proptest! {
        /// Whatever the path, policy sees what a normalizing server routes
        /// (decoded) — or the request is refused.
        #[test]
        fn policy_sees_what_a_normalizing_server_routes(
            pieces in prop::collection::vec(piece(), 0..12)
        ) {
            let raw = format!("/{}", pieces.concat());
            // Refused is always an acceptable answer; a path is not.
            if let Ok(canonical) = canonical_path(&raw) {
                let route = server_route(&raw);
                prop_assert_eq!(Some(decode_all(&canonical)), route, "{} -> {}", raw, canonical);
                // Canonical is a fixed point.
                let again = canonical_path(&canonical).map(|c| c.into_owned());
                prop_assert_eq!(again, Ok(canonical.to_string()));
            }
        }

        /// Total: arbitrary strings never panic.
        #[test]
        fn any_target_is_decided(target in ".{0,64}") {
            let _ = canonical_path(&target);
        }
    }
}
