//! SPIFFE IDs: `spiffe://<trust-domain>/<path>`.
//!
//! Parsed once at the edge (a flag, a certificate's URI SAN) into a
//! [`SpiffeId`] so the rest of the code never re-validates strings. The rules
//! follow the SPIFFE ID specification: a lowercase trust domain of
//! `[a-z0-9.-_]`, a path of non-empty segments of `[a-zA-Z0-9.-_]` that are
//! not `.` or `..`, no query, fragment, port or user info.

use std::fmt;

use thiserror::Error;

/// Why a string is not a SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SpiffeIdError {
    #[error("`{0}` does not start with spiffe://")]
    WrongScheme(String),
    #[error("`{0}` has an empty trust domain")]
    EmptyTrustDomain(String),
    #[error(
        "`{0}`: the trust domain may only hold lowercase letters, digits, '.', '-' and '_' (no port, no user info)"
    )]
    BadTrustDomain(String),
    #[error("`{0}` has no workload path (write e.g. spiffe://example.org/ns/default/sa/web)")]
    EmptyPath(String),
    #[error(
        "`{0}`: path segments must be non-empty, not '.' or '..', and hold only letters, digits, '.', '-' and '_'"
    )]
    BadPath(String),
    #[error("`{0}` is longer than 2048 bytes")]
    TooLong(String),
}

/// A validated SPIFFE ID of a workload (it always has a path).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    uri: String,
    /// Byte offset where the path starts (the `/` after the trust domain).
    path_start: usize,
}

const SCHEME: &str = "spiffe://";

impl SpiffeId {
    /// Parses a workload SPIFFE ID.
    pub fn parse(uri: &str) -> Result<Self, SpiffeIdError> {
        let err = |f: fn(String) -> SpiffeIdError| f(uri.to_string());
        if uri.len() > 2048 {
            return Err(err(SpiffeIdError::TooLong));
        }
        let rest = uri
            .strip_prefix(SCHEME)
            .ok_or_else(|| err(SpiffeIdError::WrongScheme))?;
        let (domain, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        validate_trust_domain(domain).map_err(|_| {
            if domain.is_empty() {
                err(SpiffeIdError::EmptyTrustDomain)
            } else {
                err(SpiffeIdError::BadTrustDomain)
            }
        })?;
        if path.is_empty() || path == "/" {
            return Err(err(SpiffeIdError::EmptyPath));
        }
        let segments_ok = path[1..].split('/').all(|segment| {
            !segment.is_empty()
                && segment != "."
                && segment != ".."
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        });
        if !segments_ok {
            return Err(err(SpiffeIdError::BadPath));
        }
        Ok(SpiffeId {
            uri: uri.to_string(),
            path_start: SCHEME.len() + domain.len(),
        })
    }

    /// The trust domain, e.g. `prod.example`.
    pub fn trust_domain(&self) -> &str {
        &self.uri[SCHEME.len()..self.path_start]
    }

    /// The path, starting with `/`.
    pub fn path(&self) -> &str {
        &self.uri[self.path_start..]
    }

    /// The whole ID as a string.
    pub fn as_str(&self) -> &str {
        &self.uri
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

/// Checks a bare trust domain name (`prod.example`).
pub fn validate_trust_domain(domain: &str) -> Result<(), SpiffeIdError> {
    if domain.is_empty() {
        return Err(SpiffeIdError::EmptyTrustDomain(domain.to_string()));
    }
    let ok = domain.len() <= 255
        && domain.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        });
    if ok {
        Ok(())
    } else {
        Err(SpiffeIdError::BadTrustDomain(domain.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_workload_ids() {
        let id = SpiffeId::parse("spiffe://prod.example/ns/shop/sa/web").unwrap();
        assert_eq!(id.trust_domain(), "prod.example");
        assert_eq!(id.path(), "/ns/shop/sa/web");
        assert_eq!(id.to_string(), "spiffe://prod.example/ns/shop/sa/web");
    }

    #[test]
    fn rejects_each_kind_of_bad_id() {
        use SpiffeIdError::*;
        type Case = (&'static str, fn(String) -> SpiffeIdError);
        let cases: &[Case] = &[
            ("https://prod.example/web", WrongScheme),
            ("spiffe:///web", EmptyTrustDomain),
            ("spiffe://Prod.example/web", BadTrustDomain),
            ("spiffe://prod.example:443/web", BadTrustDomain),
            ("spiffe://user@prod.example/web", BadTrustDomain),
            ("spiffe://prod.example", EmptyPath),
            ("spiffe://prod.example/", EmptyPath),
            ("spiffe://prod.example/a//b", BadPath),
            ("spiffe://prod.example/a/../b", BadPath),
            ("spiffe://prod.example/a/", BadPath),
            ("spiffe://prod.example/a?b=c", BadPath),
            ("spiffe://prod.example/a#frag", BadPath),
        ];
        for (input, expected) in cases {
            assert_eq!(
                SpiffeId::parse(input),
                Err(expected(input.to_string())),
                "{input}"
            );
        }
    }
}
