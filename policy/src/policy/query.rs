//! What the data plane asks: who calls whom, on which port, with which HTTP
//! request (if any).
//!
//! Design bias: *the types make the IP of a meshed peer unsayable*. A meshed
//! side is its claims and nothing else; an IP address appears only for a
//! caller outside the mesh ([`Caller::Unauthenticated`]) and a destination
//! outside it ([`Callee::External`]). Everything is borrowed, so building a
//! query per connection or per request costs nothing.

use std::fmt;
use std::net::IpAddr;

use crate::claims::AppIdClaims;

/// Which way the connection goes, seen from the local sidecar.
///
/// Inbound, the peer is the caller and the local workload the callee;
/// outbound, the other way round. The decision itself depends only on
/// caller and callee; the direction is carried for logging and explain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The calling side.
#[derive(Debug, Clone, Copy)]
pub enum Caller<'q> {
    /// A workload in the mesh, known by its verified AppID claims.
    Meshed(&'q AppIdClaims),
    /// A client outside the mesh (inbound only), known by its source address.
    Unauthenticated(IpAddr),
}

/// The called side.
#[derive(Debug, Clone, Copy)]
pub enum Callee<'q> {
    /// A workload in the mesh, known by its AppID claims.
    Meshed(&'q AppIdClaims),
    /// A destination outside the mesh (outbound only): its address, and the
    /// TLS SNI or HTTP `Host` the app sent, when the sidecar saw one.
    External { ip: IpAddr, host: Option<&'q str> },
}

/// What is known about the application protocol.
#[derive(Debug, Clone, Copy)]
pub enum Http<'q> {
    /// Connection time: the protocol is not known yet. Rules with `http`
    /// cannot be decided; if they matter the decision is
    /// [`super::Outcome::DeferToL7`].
    Unknown,
    /// The connection turned out not to be HTTP: rules with `http` never
    /// match, and one that applies to the connection otherwise denies it
    /// ([`super::Reason::RequiresHttp`]) unless a matching allow rule has
    /// `to.protocol: tcp`.
    NotHttp,
    /// One HTTP request (HTTP/1.1, HTTP/2 or gRPC).
    Request(HttpRequest<'q>),
}

/// One HTTP request, borrowed from the data plane's own parse.
#[derive(Clone, Copy)]
pub struct HttpRequest<'q> {
    /// The method, as sent (methods are case-sensitive).
    pub method: &'q str,
    /// The request target's path; anything from `?` on is ignored.
    pub path: &'q str,
    /// Header lookup.
    pub headers: &'q dyn Headers,
}

impl fmt::Debug for HttpRequest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpRequest")
            .field("method", &self.method)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Header lookup by name without allocating.
///
/// A request may carry a header several times, and one field line may hold
/// a comma-separated list: policy looks at *every* value (see the policy
/// docs, "what policy sees"), so the lookup visits each field line's value
/// in order. Names compare with [`header_name_matches`]: ASCII
/// case-insensitively, with `_` and `-` the same character (servers and
/// frameworks that map `X_Debug` to `X-Debug` must not hide a header from a
/// rule). Implemented for header lists (`&[(&str, &str)]`, arrays of them,
/// `Vec<(String, String)>`); the data plane implements it for its own
/// header representation.
pub trait Headers {
    /// Calls `visit` with the value of every field line whose name matches
    /// `name` (given in lowercase, with `-`), in the order they were sent.
    fn each_value(&self, name: &str, visit: &mut dyn FnMut(&[u8]));

    /// The value of the first matching field line, if any and UTF-8 (for
    /// tools and tests; policy decisions use [`Headers::each_value`]).
    fn first_value(&self, name: &str) -> Option<String> {
        let mut first = None;
        self.each_value(name, &mut |v| {
            if first.is_none() {
                first = Some(String::from_utf8_lossy(v).into_owned());
            }
        });
        first
    }
}

/// Whether a header field called `field` (as sent) is the header `name`
/// (lowercase, `-`-separated, as rules write it): ASCII case-insensitive,
/// `_` and `-` equal. The one name comparison every header lookup uses.
pub fn header_name_matches(field: &str, name: &str) -> bool {
    field.len() == name.len()
        && field.bytes().zip(name.bytes()).all(|(f, n)| {
            let f = if f == b'_' {
                b'-'
            } else {
                f.to_ascii_lowercase()
            };
            let n = if n == b'_' {
                b'-'
            } else {
                n.to_ascii_lowercase()
            };
            f == n
        })
}

/// No headers at all.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHeaders;

impl Headers for NoHeaders {
    fn each_value(&self, _name: &str, _visit: &mut dyn FnMut(&[u8])) {}
}

fn visit_all<'a, K: AsRef<str> + 'a, V: AsRef<str> + 'a>(
    list: impl IntoIterator<Item = &'a (K, V)>,
    name: &str,
    visit: &mut dyn FnMut(&[u8]),
) {
    for (k, v) in list {
        if header_name_matches(k.as_ref(), name) {
            visit(v.as_ref().as_bytes());
        }
    }
}

impl Headers for &[(&str, &str)] {
    fn each_value(&self, name: &str, visit: &mut dyn FnMut(&[u8])) {
        visit_all(self.iter(), name, visit)
    }
}

impl<const N: usize> Headers for [(&str, &str); N] {
    fn each_value(&self, name: &str, visit: &mut dyn FnMut(&[u8])) {
        visit_all(self.iter(), name, visit)
    }
}

impl Headers for Vec<(String, String)> {
    fn each_value(&self, name: &str, visit: &mut dyn FnMut(&[u8])) {
        visit_all(self.iter(), name, visit)
    }
}

/// One authorization question.
#[derive(Debug, Clone, Copy)]
pub struct Query<'q> {
    pub direction: Direction,
    pub caller: Caller<'q>,
    pub callee: Callee<'q>,
    /// The port the caller dialled (see DESIGN.md, "Sidecar configuration").
    pub port: u16,
    pub http: Http<'q>,
}

impl<'q> Query<'q> {
    /// A connection between two meshed workloads, protocol not known yet.
    pub fn meshed(
        direction: Direction,
        caller: &'q AppIdClaims,
        callee: &'q AppIdClaims,
        port: u16,
    ) -> Query<'q> {
        Query {
            direction,
            caller: Caller::Meshed(caller),
            callee: Callee::Meshed(callee),
            port,
            http: Http::Unknown,
        }
    }

    /// An inbound connection from outside the mesh to the local workload.
    pub fn unauthenticated(source: IpAddr, local: &'q AppIdClaims, port: u16) -> Query<'q> {
        Query {
            direction: Direction::Inbound,
            caller: Caller::Unauthenticated(source),
            callee: Callee::Meshed(local),
            port,
            http: Http::Unknown,
        }
    }

    /// An outbound connection from the local workload to outside the mesh.
    pub fn external(
        local: &'q AppIdClaims,
        ip: IpAddr,
        host: Option<&'q str>,
        port: u16,
    ) -> Query<'q> {
        Query {
            direction: Direction::Outbound,
            caller: Caller::Meshed(local),
            callee: Callee::External { ip, host },
            port,
            http: Http::Unknown,
        }
    }

    /// The same question about one HTTP request.
    pub fn with_request(self, request: HttpRequest<'q>) -> Query<'q> {
        Query {
            http: Http::Request(request),
            ..self
        }
    }

    /// The same question for a connection known not to be HTTP.
    pub fn not_http(self) -> Query<'q> {
        Query {
            http: Http::NotHttp,
            ..self
        }
    }
}

/// Whether `name` is a host name as rules and apps read one: letters,
/// digits, `-`, `.`, `_`, `~` (and `*` in a pattern, with `pattern`), not
/// empty; or an IPv6 literal without brackets. No port, no brackets.
pub fn is_host_name(name: &str, pattern: bool) -> bool {
    let name_byte = |b: u8| {
        b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'.' | b'_' | b'~')
            || (pattern && b == b'*')
    };
    (!name.is_empty() && name.bytes().all(name_byte)) || name.parse::<std::net::Ipv6Addr>().is_ok()
}

/// RFC 3986 unreserved: `A–Z a–z 0–9 - . _ ~` (what a canonical path
/// spells decoded).
pub fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Whether a canonical path spells `b` decoded: the unreserved
/// characters, and the sub-delimiters, `:` and `@` that a path segment may
/// carry as they are (RFC 3986 `pchar`), which servers that decode before
/// routing (Go's `ServeMux`, Flask, Spring) read as such: `/v1/db%3Adelete`
/// is `/v1/db:delete` to them, and to policy. Not `;` (refused encoded),
/// `*` (a wildcard in patterns), nor `/`, `?`, `#`, `%`.
pub fn decoded_in_paths(b: u8) -> bool {
    is_unreserved(b)
        || matches!(
            b,
            b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'+' | b',' | b'=' | b':' | b'@'
        )
}

/// Appends `%XX` for `byte`, upper-case hex (how a canonical path spells
/// every other byte it encodes).
pub fn push_percent_encoded(out: &mut String, byte: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(byte >> 4)]));
    out.push(char::from(HEX[usize::from(byte & 0xf)]));
}

/// A host name as rules see it: no `:port`, no trailing dot, no IPv6 brackets.
pub fn normalize_host(host: &str) -> &str {
    let h = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        match host.rsplit_once(':') {
            Some((h, port)) if !h.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => host,
        }
    };
    h.strip_suffix('.').unwrap_or(h)
}

/// The host of `authority` as a proxy reading it for the metadata API
/// would: IPv6 brackets dropped, and whatever follows the last `:` of a
/// name or an IPv4 address (Squid reads a port as `atoi` does: `:80x`,
/// `:+80`; a CONNECT target may carry a path, `:443/x`).
fn metadata_host(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match authority.rsplit_once(':') {
        Some((host, _)) if !host.contains(':') => host,
        _ => authority,
    }
}

/// The metadata API (and the credential endpoints beside it) by address,
/// or by a name for one ([`metadata_name`]).
#[cfg(test)]
pub(crate) fn is_metadata_api(ip: IpAddr, host: Option<&str>) -> bool {
    metadata_target(ip, host).is_some()
}

/// What a destination outside the mesh is of the metadata API: the
/// address it goes to, the name the app gave for it, or both. A rule opens
/// it only by naming each ([`super::rule::MetadataNamed::opens`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MetadataTarget {
    /// The destination address, when it is one of the metadata API's
    /// (canonical: an IPv4-mapped address as IPv4).
    pub ip: Option<IpAddr>,
    /// The name the app gave, when it names the metadata API.
    pub name: Option<MetadataName>,
}

/// A name for the metadata API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MetadataName {
    /// One of [`METADATA_NAMES`].
    Name(&'static str),
    /// One of its addresses, written as a host (canonical).
    Addr(IpAddr),
}

/// The metadata API's names: GCP's (`metadata` is what its search path
/// makes of `metadata.google.internal`), AWS's.
pub(crate) const METADATA_NAMES: [&str; 4] = [
    "metadata.google.internal",
    "metadata",
    "instance-data",
    "instance-data.ec2.internal",
];

/// The metadata API `ip` and `host` (a `Host`, SNI or request target's
/// authority) name, if they name it.
pub(crate) fn metadata_target(ip: IpAddr, host: Option<&str>) -> Option<MetadataTarget> {
    let ip = is_metadata_ip(ip).then(|| ip.to_canonical());
    let name = host.and_then(|h| metadata_name(metadata_host(h)));
    (ip.is_some() || name.is_some()).then_some(MetadataTarget { ip, name })
}

/// Where a workload's cloud credentials are served: the instance metadata
/// API of AWS, GCP, Azure, Oracle and others (169.254.169.254), ECS task
/// credentials (169.254.170.2), EKS Pod Identity (169.254.170.23) and
/// Alibaba Cloud's metadata (100.100.100.200).
pub(crate) const METADATA_V4: [std::net::Ipv4Addr; 4] = [
    std::net::Ipv4Addr::new(169, 254, 169, 254),
    std::net::Ipv4Addr::new(169, 254, 170, 2),
    std::net::Ipv4Addr::new(169, 254, 170, 23),
    std::net::Ipv4Addr::new(100, 100, 100, 200),
];
/// The same over IPv6: AWS's metadata API (fd00:ec2::254) and EKS Pod
/// Identity (fd00:ec2::23), GCP's metadata server (fd20:ce::254).
pub(crate) const METADATA_V6: [std::net::Ipv6Addr; 3] = [
    std::net::Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254),
    std::net::Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0023),
    std::net::Ipv6Addr::new(0xfd20, 0x00ce, 0, 0, 0, 0, 0, 0x0254),
];

/// Every address [`is_metadata_ip`] takes for the metadata API (capture
/// rules keep these captured whatever else is excluded).
pub fn metadata_api_addresses() -> impl Iterator<Item = IpAddr> {
    let v4 = METADATA_V4.into_iter().map(IpAddr::V4);
    v4.chain(METADATA_V6.into_iter().map(IpAddr::V6))
}

/// Whether `ip` is one of the metadata API's addresses (an IPv4-mapped
/// address counts as its IPv4 one).
pub fn is_metadata_ip(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => METADATA_V4.contains(&v4),
        IpAddr::V6(v6) => METADATA_V6.contains(&v6),
    }
}

/// The metadata API a host (as [`normalize_host`] leaves it) names: one of
/// [`METADATA_NAMES`], or one of its addresses in any spelling a resolver
/// reads as one: `::ffff:169.254.169.254`, and the forms of `inet_aton`
/// that glibc, curl, Squid and Node take (`2852039166`, `0xa9fea9fe`,
/// `0251.0376.0251.0376`, `169.254.43518`).
pub(crate) fn metadata_name(host: &str) -> Option<MetadataName> {
    // Squid strips every trailing dot (`169.254.169.254..`).
    let host = host.trim_end_matches('.');
    // A zone id (`fd00:ec2::254%1`, `%251`) names no other address.
    if let Some((addr, _zone)) = host.split_once('%')
        && let Ok(ip) = addr.parse::<std::net::Ipv6Addr>()
    {
        let ip = IpAddr::V6(ip);
        return is_metadata_ip(ip).then(|| MetadataName::Addr(ip.to_canonical()));
    }
    // `169.254.169%2e254` is 169.254.169.254 to a WHATWG parser (Node's).
    if host.contains('%') {
        let decoded = percent_decoded(host)?;
        return metadata_name(&decoded);
    }
    if let Some(name) = METADATA_NAMES
        .iter()
        .find(|name| host.eq_ignore_ascii_case(name))
    {
        return Some(MetadataName::Name(name));
    }
    let ip = host
        .parse::<IpAddr>()
        .ok()
        .or_else(|| inet_aton(host).map(IpAddr::V4))?;
    is_metadata_ip(ip).then(|| MetadataName::Addr(ip.to_canonical()))
}

/// `host` with its `%XX` escapes decoded (`None`: a `%` that starts none,
/// or bytes that are no UTF-8).
fn percent_decoded(host: &str) -> Option<String> {
    let bytes = host.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// An IPv4 address as `inet_aton` reads it: one to four parts separated by
/// dots, each decimal, octal (a leading `0`) or hexadecimal (`0x`); the
/// last part fills the bytes the others leave (`a`: 32 bits, `a.b`: 8 and
/// 24, `a.b.c`: 8, 8 and 16).
fn inet_aton(host: &str) -> Option<std::net::Ipv4Addr> {
    let parts: Vec<&str> = host.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let mut values = Vec::with_capacity(parts.len());
    for part in &parts {
        let (digits, radix) =
            if let Some(hex) = part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
                (hex, 16)
            } else if part.len() > 1 && part.starts_with('0') {
                (&part[1..], 8)
            } else {
                (*part, 10)
            };
        if digits.is_empty() && radix != 16 {
            return None;
        }
        let value = if digits.is_empty() {
            0 // `0x` alone is 0 to inet_aton
        } else if digits.chars().all(|c| c.is_digit(radix)) {
            u32::from_str_radix(digits, radix).ok()?
        } else {
            return None;
        };
        values.push(value);
    }
    let (last, first) = values.split_last()?;
    if first.iter().any(|&v| v > 0xff) {
        return None;
    }
    let last_bits = 32 - 8 * first.len() as u32;
    if last_bits < 32 && *last >= 1 << last_bits {
        return None;
    }
    let high = first
        .iter()
        .enumerate()
        .fold(0u32, |acc, (i, &v)| acc | (v << (24 - 8 * i as u32)));
    Some(std::net::Ipv4Addr::from(high | last))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_normalize() {
        assert_eq!(normalize_host("api.stripe.com"), "api.stripe.com");
        assert_eq!(normalize_host("api.stripe.com:443"), "api.stripe.com");
        assert_eq!(normalize_host("api.stripe.com."), "api.stripe.com");
        assert_eq!(normalize_host("[fd00:ec2::254]:80"), "fd00:ec2::254");
        assert_eq!(normalize_host("fd00:ec2::254"), "fd00:ec2::254");
    }

    #[test]
    fn metadata_endpoints() {
        assert!(is_metadata_api("169.254.169.254".parse().unwrap(), None));
        assert!(is_metadata_api(
            "::ffff:169.254.169.254".parse().unwrap(),
            None
        ));
        assert!(is_metadata_api("fd00:ec2::254".parse().unwrap(), None));
        assert!(is_metadata_api(
            "10.0.0.1".parse().unwrap(),
            Some("Metadata.Google.Internal.")
        ));
        assert!(!is_metadata_api(
            "169.254.169.253".parse().unwrap(),
            Some("example.com")
        ));
        let elsewhere = "10.0.0.1".parse().unwrap();
        for named in [
            "169.254.169.254:80",
            "[fd00:ec2::254]",
            "[::ffff:169.254.169.254]:80",
            "metadata",
            "METADATA:80",
            "instance-data",
            "instance-data.ec2.internal.",
        ] {
            assert!(is_metadata_api(elsewhere, Some(named)), "{named}");
        }
        for credentials in [
            "169.254.170.2",
            "169.254.170.23",
            "100.100.100.200",
            "fd00:ec2::23",
            "fd20:ce::254",
        ] {
            assert!(
                is_metadata_api(credentials.parse().unwrap(), None),
                "{credentials}"
            );
        }
        // As Squid reads them: every trailing dot dropped, a port read as
        // `atoi` does, a CONNECT target's path, an IPv6 zone id.
        for spelled in [
            "169.254.169.254..",
            "169.254.169.254..:80",
            "metadata.google.internal..",
            "0xa9fea9fe..",
            "169.254.169.254%2e",
            "metadata.google.internal%2e",
            "169.254.169.254:+80",
            "169.254.169.254:80x",
            "169.254.169.254.:80.",
            "169.254.169.254:443/x",
            "[fd00:ec2::254%1]",
            "[fd00:ec2::254%251]:80",
        ] {
            assert!(is_metadata_api(elsewhere, Some(spelled)), "{spelled}");
        }
        // Percent-encoded, as WHATWG parsers decode it.
        for encoded in [
            "169.254.169%2e254",
            "%31%36%39.254.169.254",
            "metadata%2Egoogle%2einternal",
        ] {
            assert!(is_metadata_api(elsewhere, Some(encoded)), "{encoded}");
        }
        for broken in ["169.254.169.254%", "%zz", "%e2%28"] {
            assert!(!is_metadata_api(elsewhere, Some(broken)), "{broken}");
        }
        // The spellings of 169.254.169.254 `inet_aton` reads.
        for spelled in [
            "2852039166",
            "0xa9fea9fe",
            "0xA9.0xFE.0xA9.0xFE",
            "0251.0376.0251.0376",
            "169.254.43518",
            "169.16689662",
            "0xa9.254.0251.254",
        ] {
            assert!(is_metadata_api(elsewhere, Some(spelled)), "{spelled}");
        }
        assert_eq!(
            inet_aton("1.2.3.4"),
            Some(std::net::Ipv4Addr::new(1, 2, 3, 4))
        );
        assert_eq!(
            inet_aton("1.2.256"),
            Some(std::net::Ipv4Addr::new(1, 2, 1, 0))
        );
        for not_an_address in [
            "1.2.3.4.5",
            "256.1.1.1",
            "08.1.1.1",
            "1..1",
            "",
            "a.b",
            "4294967296",
        ] {
            assert_eq!(inet_aton(not_an_address), None, "{not_an_address}");
        }
        for other in [
            "metadata.example",
            "169.254.169.253",
            "[fd00:ec2::253]",
            "my-metadata",
        ] {
            assert!(!is_metadata_api(elsewhere, Some(other)), "{other}");
        }
    }

    #[test]
    fn header_slices() {
        let h: &[(&str, &str)] = &[("X-Tenant", "acme"), ("x_tenant", "other")];
        assert_eq!(h.first_value("x-tenant").as_deref(), Some("acme"));
        let mut all = Vec::new();
        h.each_value("x-tenant", &mut |v| all.push(v.to_vec()));
        assert_eq!(all, [b"acme".to_vec(), b"other".to_vec()]);
        assert_eq!(h.first_value("x-other"), None);
        assert_eq!([("a", "b")].first_value("a").as_deref(), Some("b"));
        let owned = vec![("A".to_string(), "b".to_string())];
        assert_eq!(owned.first_value("a").as_deref(), Some("b"));
        assert_eq!(NoHeaders.first_value("a"), None);
        assert!(header_name_matches("X_Debug", "x-debug"));
        assert!(!header_name_matches("x-debugx", "x-debug"));
    }
}
