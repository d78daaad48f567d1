//! The host a plaintext HTTP/1 request head names, for a decision outside
//! the mesh: a rule's `external.hosts`, and the cloud metadata API, which
//! no allowed destination may be made to reach by naming it.
//!
//! Design bias: *a name that could be read two ways is no name*. A forward
//! proxy that policy allows by its address (`external.cidrs`) goes where
//! the request's target or `Host` says, as *it* reads them, and lenient
//! proxies read more than RFC 9112 allows: Squid splits a request line on
//! tabs, joins folded header lines, strips whitespace before a colon. So a
//! head is read strictly here, and whatever a lenient reader could take
//! differently (a tab in the request line, a folded line, a header line
//! without a colon, two `Host` lines, a target in no form a server reads
//! alike) is [`HeadHost::Ambiguous`], never a head without a name: the
//! caller refuses it where a name could matter. Only a complete head (up to
//! its blank line) is read, so a `Host` held back to after the check is
//! [`HeadHost::Incomplete`], not missing.
//!
//! [`head_host`] is pure and total; [`peek_head_host`] drives it over a
//! socket with `peek`, consuming nothing.

use std::time::Duration;

use tokio::net::TcpStream;

use crate::detect::{self, Classification, Peeked};
use crate::sidecar::http::valid_host;

/// What a request head says about the host it is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadHost<S> {
    /// The one host the complete head names: the authority of its target
    /// in absolute form (`GET http://host/…`: a forward proxy routes on it,
    /// and RFC 9112 §3.2.2 has `Host` ignored) or authority form
    /// (`CONNECT host:port`), else its `Host` field; trimmed, as sent (it
    /// may carry a `:port`).
    Named(S),
    /// A complete head that names no host: an origin-form target and no
    /// `Host` (HTTP/1.0).
    Unnamed,
    /// The head has not ended (no blank line yet): what follows could
    /// still name a host.
    Incomplete,
    /// Readers could disagree about the host; why.
    Ambiguous(&'static str),
    /// The bytes are no HTTP/1 request.
    NotHttp1,
}

impl HeadHost<&str> {
    pub fn to_owned(&self) -> HeadHost<String> {
        match self {
            HeadHost::Named(host) => HeadHost::Named((*host).to_owned()),
            HeadHost::Unnamed => HeadHost::Unnamed,
            HeadHost::Incomplete => HeadHost::Incomplete,
            HeadHost::Ambiguous(why) => HeadHost::Ambiguous(why),
            HeadHost::NotHttp1 => HeadHost::NotHttp1,
        }
    }
}

/// Reads the host the HTTP/1 request head at the start of `prefix` names
/// (see [`HeadHost`]). Leading blank lines are skipped, as servers skip
/// them; the request line must be `method SP target SP HTTP/1.x` with one
/// space each, and every header line `name: value` with a token name.
#[must_use]
pub fn head_host(prefix: &[u8]) -> HeadHost<&str> {
    if !matches!(
        detect::classify(prefix),
        Classification::Http1 | Classification::NeedMore
    ) {
        return HeadHost::NotHttp1;
    }
    let mut lines = detect::skip_blanks(prefix).split_inclusive(|&b| b == b'\n');
    let Some(request_line) = lines.next().and_then(complete_line) else {
        return HeadHost::Incomplete;
    };
    let from_target = match target_host(request_line) {
        Ok(host) => host,
        Err(why) => return HeadHost::Ambiguous(why),
    };
    let mut host_field: Option<&[u8]> = None;
    let mut ended = false;
    for line in lines {
        let Some(line) = complete_line(line) else {
            break;
        };
        if line.is_empty() {
            ended = true;
            break;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            return HeadHost::Ambiguous("a folded header line");
        }
        if line.contains(&b'\r') {
            return HeadHost::Ambiguous("a CR inside a header line");
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return HeadHost::Ambiguous("a header line without a colon");
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.is_empty() || !name.iter().all(|&b| detect::is_tchar(b)) {
            return HeadHost::Ambiguous("a header name that is no token");
        }
        if name.eq_ignore_ascii_case(b"host") {
            if host_field.is_some() {
                return HeadHost::Ambiguous("two Host lines");
            }
            host_field = Some(value.trim_ascii());
        }
    }
    if !ended {
        return HeadHost::Incomplete;
    }
    let host = match (from_target, host_field) {
        (Some(host), _) => host,
        (None, Some(host)) => host,
        (None, None) => return HeadHost::Unnamed,
    };
    // As the mesh's own requests must (RFC 9112 §3.2): a name or address,
    // then at most `:` and digits (`:80x`, a zone id, `CONNECT h:443/x`
    // are read another way by Squid).
    match one_way_host(host) {
        Ok(host) => HeadHost::Named(host),
        Err(why) => HeadHost::Ambiguous(why),
    }
}

/// A host a request names (HTTP/1's target or `Host`, HTTP/2's
/// `:authority` or `host`), if every reader takes it alike: a name or
/// address, then at most `:` and digits (`sidecar::http::valid_host`, the check the
/// sidecar's own L7 path holds requests to); else why not.
pub fn one_way_host(host: &[u8]) -> Result<&str, &'static str> {
    const WHY: &str = "a host that is no host[:port]";
    if !valid_host(host) {
        return Err(WHY);
    }
    // (`valid_host` takes ASCII only.)
    std::str::from_utf8(host).map_err(|_| WHY)
}

/// Whether the request line at the start of `prefix` is `method SP
/// target SP HTTP/1.x` with a target read one way only (`Err`: why not),
/// once that line is complete (`None`: it has not ended). A server that
/// runs HTTP/0.9 acts on such a line before any blank line.
#[must_use]
pub fn request_line_verdict(prefix: &[u8]) -> Option<Result<(), &'static str>> {
    let line = detect::skip_blanks(prefix)
        .split_inclusive(|&b| b == b'\n')
        .next()
        .and_then(complete_line)?;
    Some(target_host(line).map(|_| ()))
}

/// `line` without its LF (and a CR before it), if it has one.
fn complete_line(line: &[u8]) -> Option<&[u8]> {
    let line = line.strip_suffix(b"\n")?;
    Some(line.strip_suffix(b"\r").unwrap_or(line))
}

/// The host a request line's target names, `None` for origin form and `*`
/// (then `Host` names it). Refused as ambiguous: anything but
/// `method SP target SP HTTP/1.x` (a tab or a second space is a delimiter
/// to lenient servers and not to strict ones), and a target in no form
/// (`http:/host`, `http:\\host`: read as a URL by some, refused by others).
fn target_host(line: &[u8]) -> Result<Option<&[u8]>, &'static str> {
    const MALFORMED: &str = "a request line not `METHOD SP target SP HTTP/1.x`";
    let mut words = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        return Err(MALFORMED);
    };
    let method_ok = !method.is_empty() && method.iter().all(|&b| detect::is_tchar(b));
    let target_ok = !target.is_empty() && target.iter().all(u8::is_ascii_graphic);
    if !method_ok || !target_ok || !matches!(version, b"HTTP/1.0" | b"HTTP/1.1") {
        return Err(MALFORMED);
    }
    if method == b"CONNECT" {
        return Ok(Some(target));
    }
    if target.starts_with(b"/") || target == b"*" {
        return Ok(None);
    }
    // Absolute form, any scheme: a proxy may open a connection for one it
    // cannot speak (`whois://169.254.169.254:80/`).
    let rest =
        detect::after_scheme(target).ok_or("a request target in no form a server reads alike")?;
    let end = rest
        .iter()
        .position(|&b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    let authority = &rest[..end];
    // A backslash ends the authority to WHATWG parsers (Node's:
    // `http://169.254.169.254\@a.example/` goes to the first host) and not
    // to Squid (which goes to the last): no one reading.
    if authority.contains(&b'\\') {
        return Err("a backslash in the request target's authority");
    }
    let host = match authority.iter().rposition(|&b| b == b'@') {
        Some(at) => &authority[at + 1..],
        None => authority,
    };
    Ok(Some(host))
}

/// Peeks at `stream`, an HTTP/1 request, until its head is read
/// ([`head_host`]), for at most `timeout`. A head not complete by then, or
/// larger than [`detect::MAX_DETECT_BYTES`], or a connection that closes
/// or fails first, is [`HeadHost::Incomplete`]. Nothing is consumed.
pub async fn peek_head_host(stream: &TcpStream, timeout: Duration) -> HeadHost<String> {
    let judged =
        detect::peek_until(
            stream,
            timeout,
            detect::MAX_DETECT_BYTES,
            |prefix, _| match head_host(prefix) {
                HeadHost::Incomplete => None,
                decided => Some(decided.to_owned()),
            },
        );
    match judged.await {
        Peeked::Judged { verdict, .. } => verdict,
        _ => HeadHost::Incomplete,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sidecar::test_io::loopback_pair;

    use proptest::prelude::*;
    use tokio::io::AsyncWriteExt;

    const METADATA: HeadHost<&str> = HeadHost::Named("169.254.169.254");

    #[test]
    fn head_host_names_the_host_a_server_routes_on() {
        let cases: [(&[u8], HeadHost<&str>); 14] = [
            (
                b"GET / HTTP/1.1\r\nHost: api.example\r\n\r\n",
                HeadHost::Named("api.example"),
            ),
            (
                b"GET / HTTP/1.1\r\nAccept: */*\r\nhOsT:\tapi.example:8443  \r\n\r\n",
                HeadHost::Named("api.example:8443"),
            ),
            (
                b"GET / HTTP/1.1\nHost: bare-lf.example\n\n",
                HeadHost::Named("bare-lf.example"),
            ),
            (
                b"\r\nGET / HTTP/1.1\r\nHost: a.example\r\n\r\n",
                HeadHost::Named("a.example"),
            ),
            (
                b"GET / HTTP/1.1\r\nHost: [::1]:80\r\nUser-Agent: x\r\n\r\n",
                HeadHost::Named("[::1]:80"),
            ),
            // A target in absolute or authority form names the host; Host
            // is then ignored, as the recipient ignores it.
            (
                b"GET http://169.254.169.254/latest HTTP/1.1\r\nHost: a.example\r\n\r\n",
                METADATA,
            ),
            (
                b"GET HTTPS://user:pw@Metadata.Google.Internal:80?x HTTP/1.0\r\n\r\n",
                HeadHost::Named("Metadata.Google.Internal:80"),
            ),
            (
                b"CONNECT 169.254.169.254:80 HTTP/1.1\r\nHost: a.example\r\n\r\n",
                HeadHost::Named("169.254.169.254:80"),
            ),
            (
                b"GET http://a.example/ HTTP/1.1\r\nHost: b.example\r\n\r\n",
                HeadHost::Named("a.example"),
            ),
            (
                b"GET http://[fd00:ec2::254]:80/ HTTP/1.1\r\nHost: a.example\r\n\r\n",
                HeadHost::Named("[fd00:ec2::254]:80"),
            ),
            // Any scheme: a proxy may connect for one it cannot speak.
            (
                b"GET whois://169.254.169.254:80/x HTTP/1.1\r\nHost: a.example\r\n\r\n",
                HeadHost::Named("169.254.169.254:80"),
            ),
            // Origin form and `*`: Host.
            (
                b"GET /x?u=http://b.example/ HTTP/1.1\r\nHost: a.example\r\n\r\n",
                HeadHost::Named("a.example"),
            ),
            (
                b"OPTIONS * HTTP/1.1\r\nHost: a.example\r\n\r\n",
                HeadHost::Named("a.example"),
            ),
            (b"GET / HTTP/1.0\r\nAccept: */*\r\n\r\n", HeadHost::Unnamed),
        ];
        for (prefix, want) in cases {
            assert_eq!(
                head_host(prefix),
                want,
                "{:?}",
                String::from_utf8_lossy(prefix)
            );
        }
    }

    #[test]
    fn heads_a_lenient_reader_could_read_otherwise_are_ambiguous() {
        // Each names the metadata API to some reader (Squid 5.7 with its
        // default, relaxed parser fetched the first five from it).
        let heads: [&[u8]; 24] = [
            b"GET http://a.example/ HTTP/1.1\r\nHost: b.example\r\nHost: 169.254.169.254\r\n\r\n",
            b"GET http://169.254.169.254/ HTTP/1.1\r\nHost: a.example\r\nX-A: b\r\n c\r\n\r\n",
            b"GET http://169.254.169.254/ HTTP/1.1\r\nHost: a.example\r\nX-A: b\r\n\tc\r\n\r\n",
            b"GET\thttp://169.254.169.254/\tHTTP/1.1\r\nHost: a.example\r\n\r\n",
            b"GET\x0bhttp://169.254.169.254/\x0bHTTP/1.1\r\nHost: a.example\r\n\r\n",
            b"CONNECT\t169.254.169.254:80\tHTTP/1.1\r\nHost: a.example\r\n\r\n",
            b"GET http://169.254.169.254/ HTTP/1.1\r\nHost: a.example\r\nX-A : b\r\n\r\n",
            b"GET http://169.254.169.254/ HTTP/1.1\r\nHost: a.example\r\njunk\r\n\r\n",
            b"GET http:/169.254.169.254/ HTTP/1.1\r\nHost: a.example\r\n\r\n",
            b"GET http:\\\\169.254.169.254/ HTTP/1.1\r\nHost: a.example\r\n\r\n",
            b"GET  http://169.254.169.254/ HTTP/1.1\r\nHost: a.example\r\n\r\n",
            b"GET http://169.254.169.254/\r\nHost: a.example\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: 169.254.169.254\r\nHost: a.example\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost : 169.254.169.254\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a.example 169.254.169.254\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost:\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: caf\xc3\xa9.example\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\rHost: 169.254.169.254\r\n\r\n",
            // What Squid reads as the metadata API, others not.
            b"GET http://192.0.2.10\\@169.254.169.254/x HTTP/1.1\r\nHost: 192.0.2.10\r\n\r\n",
            b"GET http://169.254.169.254:80x/ HTTP/1.1\r\n\r\n",
            b"GET http://169.254.169.254:+80/ HTTP/1.1\r\n\r\n",
            b"GET http://[fd00:ec2::254%1]/ HTTP/1.1\r\n\r\n",
            b"CONNECT 169.254.169.254:443/x HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: 169.254.169.254:80:80\r\n\r\n",
        ];
        for head in heads {
            assert!(
                matches!(head_host(head), HeadHost::Ambiguous(_)),
                "{:?}: {:?}",
                String::from_utf8_lossy(head),
                head_host(head)
            );
        }
    }

    #[test]
    fn a_head_is_read_only_once_it_has_ended() {
        for head in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: a.example\r\n",
            b"GET / HTTP/1.1\r\nHost: a.exa",
            b"GET http://169.254.",
            b"CONNECT 169.254.169.254:80",
            b"GET",
        ] {
            assert_eq!(head_host(head), HeadHost::Incomplete, "{head:?}");
        }
        // After the head: a body, not a header.
        assert_eq!(
            head_host(b"POST / HTTP/1.1\r\nA: b\r\n\r\nHost: api.example\r\n"),
            HeadHost::Unnamed
        );
        for not_http in [
            &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nHost: a.example\r\n"[..],
            b"\x16\x03\x01\x00\x05Host: a.example\r\n",
            b"SSH-2.0-OpenSSH_9.6\r\n",
        ] {
            assert_eq!(head_host(not_http), HeadHost::NotHttp1, "{not_http:?}");
        }
    }

    /// A head split anywhere reads as incomplete until its end arrives, and
    /// then as the whole head does: a name sent late is waited for.
    #[test]
    fn every_cut_of_a_head_is_incomplete_or_the_whole_verdict() {
        for head in [
            &b"GET / HTTP/1.1\r\nAccept: */*\r\nHost: 169.254.169.254\r\n\r\n"[..],
            b"GET http://169.254.169.254/latest/ HTTP/1.1\r\nHost: a.example\r\n\r\n",
            b"CONNECT 169.254.169.254:80 HTTP/1.1\r\n\r\n",
        ] {
            let whole = head_host(head);
            assert!(matches!(whole, HeadHost::Named(_)), "{whole:?}");
            for cut in 1..head.len() {
                assert_eq!(
                    head_host(&head[..cut]),
                    HeadHost::Incomplete,
                    "cut at {cut}"
                );
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        #[test]
        fn head_host_never_panics_and_names_only_graphic_hosts(
            bytes in prop::collection::vec(any::<u8>(), 0..400),
            head in prop::collection::vec(prop::sample::select(b"Host: \r\n\tab:./@\\1\x00\xff".to_vec()), 0..200),
        ) {
            let _ = head_host(&bytes);
            let head = [&b"GET / HTTP/1.1\r\n"[..], &head].concat();
            if let HeadHost::Named(host) = head_host(&head) {
                prop_assert!(!host.is_empty() && host.bytes().all(|b| b.is_ascii_graphic()));
            }
        }

        /// More bytes never change a verdict other than `Incomplete`.
        #[test]
        fn head_host_verdicts_are_stable_under_more_bytes(
            head in prop::collection::vec(prop::sample::select(b"GET / HTTP/1.1Host: \r\n\tab:.".to_vec()), 0..120),
            more in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            let first = head_host(&head);
            // (`NotHttp1` may be "not yet": a bare token can become a
            // method; callers ask only once detection said HTTP/1.)
            if !matches!(first, HeadHost::Incomplete | HeadHost::NotHttp1) {
                let longer = [&head[..], &more].concat();
                prop_assert_eq!(head_host(&longer), first);
            }
        }
    }

    #[tokio::test]
    async fn peek_head_host_waits_for_a_host_sent_late() {
        let (mut client, server) = loopback_pair().await;
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let late = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(150)).await;
            client
                .write_all(b"Host: 169.254.169.254\r\n\r\n")
                .await
                .unwrap();
            client
        });
        let got = peek_head_host(&server, Duration::from_secs(5)).await;
        assert_eq!(got, HeadHost::Named("169.254.169.254".to_owned()));
        drop(late.await.unwrap());
    }

    #[tokio::test]
    async fn peek_head_host_gives_up_on_a_head_that_does_not_end() {
        let (mut client, server) = loopback_pair().await;
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: a.example\r\n")
            .await
            .unwrap();
        let got = peek_head_host(&server, Duration::from_millis(200)).await;
        assert_eq!(got, HeadHost::Incomplete);
        // Too large to read: incomplete too.
        let (mut client, server) = loopback_pair().await;
        let mut big = b"GET / HTTP/1.1\r\n".to_vec();
        while big.len() <= detect::MAX_DETECT_BYTES {
            big.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        client.write_all(&big).await.unwrap();
        let got = peek_head_host(&server, Duration::from_secs(5)).await;
        assert_eq!(got, HeadHost::Incomplete);
    }
}
