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
    /// The connection turned out not to be HTTP: rules with `http` never match.
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
/// Implemented for header lists (`&[(&str, &str)]`, arrays of them,
/// `Vec<(String, String)>`); the data plane implements it for its own header
/// map type.
pub trait Headers {
    /// The value of the first header called `name` (given in lowercase;
    /// header names compare case-insensitively), if any.
    fn header(&self, name: &str) -> Option<&str>;
}

/// No headers at all.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHeaders;

impl Headers for NoHeaders {
    fn header(&self, _name: &str) -> Option<&str> {
        None
    }
}

fn find<'a, K: AsRef<str> + 'a, V: AsRef<str> + 'a>(
    list: impl IntoIterator<Item = &'a (K, V)>,
    name: &str,
) -> Option<&'a str> {
    list.into_iter()
        .find(|(k, _)| k.as_ref().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_ref())
}

impl Headers for &[(&str, &str)] {
    fn header(&self, name: &str) -> Option<&str> {
        find(self.iter(), name)
    }
}

impl<const N: usize> Headers for [(&str, &str); N] {
    fn header(&self, name: &str) -> Option<&str> {
        find(self.iter(), name)
    }
}

impl Headers for Vec<(String, String)> {
    fn header(&self, name: &str) -> Option<&str> {
        find(self.iter(), name)
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

/// A host name as rules see it: no `:port`, no trailing dot, no IPv6 brackets.
pub(crate) fn normalize_host(host: &str) -> &str {
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

/// The metadata API of AWS (IPv4 and IPv6), GCP and Azure by address, or
/// GCP's by name.
pub(crate) fn is_metadata_api(ip: IpAddr, host: Option<&str>) -> bool {
    is_metadata_ip(ip) || host.is_some_and(|h| is_metadata_host(normalize_host(h)))
}

pub(crate) const METADATA_V4: std::net::Ipv4Addr = std::net::Ipv4Addr::new(169, 254, 169, 254);
pub(crate) const METADATA_V6: std::net::Ipv6Addr =
    std::net::Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254);

pub(crate) fn is_metadata_ip(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4 == METADATA_V4,
        IpAddr::V6(v6) => v6 == METADATA_V6,
    }
}

pub(crate) fn is_metadata_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("metadata.google.internal") || host == "169.254.169.254"
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
    }

    #[test]
    fn header_slices() {
        let h: &[(&str, &str)] = &[("X-Tenant", "acme"), ("x-tenant", "other")];
        assert_eq!(h.header("x-tenant"), Some("acme"));
        assert_eq!(h.header("x-other"), None);
        assert_eq!([("a", "b")].header("a"), Some("b"));
        let owned = vec![("A".to_string(), "b".to_string())];
        assert_eq!(owned.header("a"), Some("b"));
        assert_eq!(NoHeaders.header("a"), None);
    }
}
