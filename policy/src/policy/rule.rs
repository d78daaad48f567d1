//! One rule, as loaded: a name, an action, and a conjunction of clauses.
//!
//! Design bias: *a rule is a flat list of checks that reads like the YAML*.
//! Every clause keeps the text it was written as (`from.vulns.critical:
//! {lte: 0}`) and the path it looked at, so a decision can always say which
//! rule decided and which clause failed. Clauses are ordered cheapest first
//! (ports, addresses, then claims in file order), and the HTTP clauses come
//! last, so "does this rule match at L4" is a prefix of the list.

use std::net::IpAddr;

use ipnet::IpNet;

use super::attr::Attr;
use super::glob::Glob;
use super::query::{
    Callee, Caller, Headers, Http, HttpRequest, METADATA_NAMES, MetadataName, MetadataTarget,
    Query, is_metadata_ip, metadata_api_addresses, metadata_name, normalize_host,
};
use super::selector::Pred;
use super::yaml::Mark;

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Allow,
    Deny,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `from` or `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Side {
    Caller,
    Callee,
}

/// Which callers a rule is about (see [`scope`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallerKind {
    Meshed,
    /// `from.unauthenticated`.
    Unauthenticated,
    /// Both: a deny rule without caller claims.
    Any,
}

/// Which callees a rule is about (see [`scope`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CalleeKind {
    Meshed,
    /// `to.external`.
    External,
    /// Both: a deny rule without callee claims and without `http`.
    Any,
}

impl CallerKind {
    /// Whether a rule about `self` callers is about a caller of kind `of`.
    pub fn includes(self, of: CallerKind) -> bool {
        self == of || self == CallerKind::Any
    }

    /// The kind of caller a query has.
    fn of(caller: Caller<'_>) -> CallerKind {
        match caller {
            Caller::Meshed(_) => CallerKind::Meshed,
            Caller::Unauthenticated(_) => CallerKind::Unauthenticated,
        }
    }
}

impl CalleeKind {
    /// Whether a rule about `self` callees is about a callee of kind `of`.
    pub fn includes(self, of: CalleeKind) -> bool {
        self == of || self == CalleeKind::Any
    }

    /// The kind of callee a query has.
    fn of(callee: Callee<'_>) -> CalleeKind {
        match callee {
            Callee::Meshed(_) => CalleeKind::Meshed,
            Callee::External { .. } => CalleeKind::External,
        }
    }
}

/// The kinds of caller and callee of a query, `None` for a caller outside
/// the mesh calling a destination outside it (no connection is both
/// inbound and outbound, so no rule is about that).
pub(crate) fn kinds_of(q: &Query<'_>) -> Option<(CallerKind, CalleeKind)> {
    match (CallerKind::of(q.caller), CalleeKind::of(q.callee)) {
        (CallerKind::Unauthenticated, CalleeKind::External) => None,
        kinds => Some(kinds),
    }
}

/// Which callers and callees a rule is about: the one place that says so.
///
/// An **allow** rule is about what it names: meshed callers unless it has
/// `from.unauthenticated`, meshed callees unless it has `to.external`.
/// Widening an allow would let in what its author never looked at.
///
/// A **deny** rule holds wherever its clauses can be checked, so that "a
/// matching deny always wins" is true of every connection:
/// - without caller claims (no `from`, or `from: {}`), it is about callers
///   outside the mesh too: `deny to: { ports: [6060] }` stops a load
///   balancer that a `from.unauthenticated` rule admits;
/// - without callee claims and without `http` (or `to.protocol: http`),
///   it is about destinations outside the mesh too, its `to.ports` then
///   checked against the destination's port: `deny from: { labels.app:
///   legacy }` quarantines `legacy` from the internet as well.
///
/// A deny rule with `http` stays about meshed callees: the sidecar passes
/// traffic to destinations outside the mesh through without reading its
/// HTTP (which is why `http` with `to.external` is refused), so its `http`
/// clauses could not be checked there; stopping all of the caller's
/// traffic out of the mesh instead would turn a deny of `/admin/**` into a
/// deny of every destination outside it.
pub(crate) fn scope(
    action: Action,
    unauthenticated: bool,
    external: bool,
    clauses: &[Clause],
    is_l7: bool,
) -> (CallerKind, CalleeKind) {
    let has_claims = |side: Side| {
        clauses
            .iter()
            .any(|c| matches!(c.test, Test::Claim(s, ..) if s == side))
    };
    let deny = action == Action::Deny;
    let caller = if unauthenticated {
        CallerKind::Unauthenticated
    } else if deny && !has_claims(Side::Caller) {
        CallerKind::Any
    } else {
        CallerKind::Meshed
    };
    let callee = if external {
        CalleeKind::External
    } else if deny && !has_claims(Side::Callee) && !is_l7 {
        CalleeKind::Any
    } else {
        CalleeKind::Meshed
    };
    (caller, callee)
}

/// Inclusive port ranges, sorted and merged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PortSet(pub Box<[(u16, u16)]>);

impl PortSet {
    pub fn new(mut ranges: Vec<(u16, u16)>) -> PortSet {
        ranges.sort_unstable();
        let mut merged: Vec<(u16, u16)> = Vec::with_capacity(ranges.len());
        for (lo, hi) in ranges {
            match merged.last_mut() {
                Some(last) if u32::from(lo) <= u32::from(last.1) + 1 => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        PortSet(merged.into())
    }

    pub fn contains(&self, port: u16) -> bool {
        self.0.iter().any(|(lo, hi)| (*lo..=*hi).contains(&port))
    }
}

/// One check.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Test {
    /// A claim of the caller (`from.*`) or callee (`to.*`).
    Claim(Side, Attr, Pred),
    /// `from.unauthenticated.cidrs`: the source address.
    SourceCidrs(Box<[IpNet]>),
    /// `to.ports`.
    Ports(PortSet),
    /// `to.external.hosts`: the SNI or `Host` the app sent.
    ExternalHosts(Box<[Glob]>),
    /// `to.external.cidrs`: the destination address.
    ExternalCidrs(Box<[IpNet]>),
    /// `to.external.ports`.
    ExternalPorts(PortSet),
    /// `http.methods`.
    Methods(Box<[Box<str>]>),
    /// `http.paths`.
    Paths(Box<[Glob]>),
    /// `http.headers.<name>`: the name lowercase and with `-` for `_`.
    /// Every value counts; see [`header_holds`].
    Header(Box<str>, Box<[Glob]>),
}

/// A check with the text it was written as.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Clause {
    /// The attribute path looked at: `from.labels.app`, `to.ports`,
    /// `http.paths`.
    pub path: Box<str>,
    /// `path: value` as written (flow style).
    pub text: Box<str>,
    pub test: Test,
}

/// How one rule relates to one query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Eval {
    Match,
    /// Everything up to `http` matched; the request is not known yet.
    NeedsHttp,
    /// Everything up to `http` matched; the connection is not HTTP.
    NotHttp,
    /// Clause `n` (0-based, in evaluation order) failed; all before held.
    Fail(usize),
}

/// A loaded rule.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Rule {
    pub name: Box<str>,
    pub action: Action,
    /// Where the rule starts in the file.
    pub mark: Mark,
    pub caller: CallerKind,
    pub callee: CalleeKind,
    /// L4 clauses, then (from `l7_from` on) HTTP clauses.
    pub clauses: Box<[Clause]>,
    pub l7_from: usize,
    /// Has an `http` section or `to.protocol: http`: matches HTTP requests
    /// only, and makes a connection it applies to HTTP-only.
    pub is_l7: bool,
    /// `to.protocol: tcp` (allow rules only): also allows connections that
    /// are not HTTP where a rule with `http` applies.
    pub allows_non_http: bool,
    /// The parts of the cloud metadata API it names explicitly (see
    /// [`super::query`]): only those it may open.
    pub metadata_named: MetadataNamed,
}

/// Whether every ID an `id` predicate accepts is of a trust domain written
/// out in it: equals, any of, globs whose `spiffe://<domain>/` has no `*`;
/// of several operators, one such is enough (they must all hold).
fn ids_name_their_domain(pred: &Pred) -> bool {
    fn written_out(id: &str) -> bool {
        id.strip_prefix("spiffe://")
            .map(|rest| rest.split('/').next().unwrap_or(""))
            .is_some_and(|domain| !domain.is_empty() && !domain.contains('*'))
    }
    match pred {
        Pred::Eq(lit) => written_out(&lit.text),
        Pred::AnyOf(lits) => lits.iter().all(|l| written_out(&l.text)),
        Pred::Glob(globs) => globs.iter().all(|g| written_out(g.as_str())),
        Pred::All(preds) => preds.iter().any(ids_name_their_domain),
        Pred::NotIn(_) | Pred::Exists(_) | Pred::Cmp(..) | Pred::Not(_) => false,
    }
}

/// The metadata API's addresses and names a rule lists explicitly: an
/// `external.cidrs` entry that is exactly one of its addresses (`/32`,
/// `/128`), a `hosts` entry without `*` that names one of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetadataNamed {
    ips: Vec<IpAddr>,
    names: Vec<&'static str>,
}

impl MetadataNamed {
    /// What `cidrs` and `hosts` entries (without `*`) name of it.
    pub(crate) fn of<'a>(
        cidrs: impl Iterator<Item = &'a IpNet>,
        hosts: impl Iterator<Item = &'a str>,
    ) -> MetadataNamed {
        let mut named = MetadataNamed::default();
        for net in cidrs {
            if net.prefix_len() == net.max_prefix_len() && is_metadata_ip(net.addr()) {
                named.ips.push(net.addr().to_canonical());
            }
        }
        for host in hosts.filter(|h| !h.contains('*')) {
            match metadata_name(normalize_host(host)) {
                Some(MetadataName::Name(name)) => named.names.push(name),
                Some(MetadataName::Addr(ip)) => named.ips.push(ip),
                None => {}
            }
        }
        named
    }

    /// Whether the rule names what `target` is, where the connection it
    /// allows goes: by the name the app gave when the rule has `hosts`
    /// (such a connection goes where that name resolves, and is decided
    /// again there), else by the address dialled (a `Host` naming ECS's
    /// 169.254.170.2 opens nothing at 169.254.169.254). Naming one endpoint
    /// opens no other.
    pub(crate) fn opens(&self, target: &MetadataTarget, by_name: bool) -> bool {
        let named = |name: MetadataName| match name {
            MetadataName::Name(name) => self.names.contains(&name),
            MetadataName::Addr(ip) => self.ips.contains(&ip),
        };
        match (by_name, target.name, target.ip) {
            (true, Some(name), _) => named(name),
            (_, _, Some(ip)) => self.ips.contains(&ip),
            // Through a destination that is no metadata address (a forward
            // proxy), named by an address: that address.
            (false, Some(name @ MetadataName::Addr(_)), None) => named(name),
            _ => false,
        }
    }

    /// Whether no name the app could give would make the metadata API of a
    /// destination this rule allows: it names every name and address.
    pub(crate) fn opens_every_name(&self) -> bool {
        METADATA_NAMES.iter().all(|n| self.names.contains(n))
            && metadata_api_addresses().all(|ip| self.ips.contains(&ip))
    }
}

impl Rule {
    /// Whether this (allow) rule may open the metadata API `target` is
    /// ([`MetadataNamed::opens`]).
    pub(crate) fn opens_metadata(&self, target: &MetadataTarget) -> bool {
        self.metadata_named
            .opens(target, self.names_external_hosts())
    }

    /// Whether a `from` (caller) or `to` (callee) clause says which trust
    /// domains it takes: only such a rule admits a peer of another trust
    /// domain on that side ([`super::eval::MustName`]). A `trust_domain`
    /// clause does, whatever it tests; so does an `id` clause that accepts
    /// only IDs whose trust domain is written out (`spiffe://aws.example/web`,
    /// `spiffe://aws.example/**`; not `spiffe://*/web`, not `not_in`).
    pub(crate) fn names_trust_domain(&self, side: Side) -> bool {
        self.clauses.iter().any(|c| match &c.test {
            Test::Claim(s, Attr::TrustDomain, _) => *s == side,
            Test::Claim(s, Attr::Id, pred) => *s == side && ids_name_their_domain(pred),
            _ => false,
        })
    }

    /// Whether the rule is about this kind of caller and callee at all
    /// ([`scope`]).
    pub fn applies_to(&self, q: &Query<'_>) -> bool {
        kinds_of(q).is_some_and(|(caller, callee)| self.is_about(caller, callee))
    }

    /// Whether the rule is about callers of kind `caller` and callees of
    /// kind `callee` ([`scope`]).
    pub fn is_about(&self, caller: CallerKind, callee: CalleeKind) -> bool {
        self.caller.includes(caller) && self.callee.includes(callee)
    }

    /// Has a `to.external.hosts` clause.
    pub fn names_external_hosts(&self) -> bool {
        self.clauses
            .iter()
            .any(|c| matches!(c.test, Test::ExternalHosts(_)))
    }

    /// Every connection clause but `to.external.hosts` holds for `q`.
    pub fn holds_but_for_external_hosts(&self, q: &Query<'_>) -> bool {
        self.clauses[..self.l7_from]
            .iter()
            .filter(|c| !matches!(c.test, Test::ExternalHosts(_)))
            .all(|c| c.test.holds(q, None, self.action))
    }

    /// Checks the rule's clauses in order, stopping at the first failure.
    /// The caller has checked [`Rule::applies_to`]. No allocation.
    pub fn eval(&self, q: &Query<'_>) -> Eval {
        match self.failed_l4_clause(q) {
            Some(i) => Eval::Fail(i),
            None => self.eval_after_l4(q),
        }
    }

    /// The first clause before `http` that fails, if one does: what a
    /// connection's caller, callee and port settle for all its requests.
    pub fn failed_l4_clause(&self, q: &Query<'_>) -> Option<usize> {
        self.clauses[..self.l7_from]
            .iter()
            .position(|clause| !clause.test.holds(q, None, self.action))
    }

    /// [`Rule::eval`] for a query that passed every clause before `http`.
    pub fn eval_after_l4(&self, q: &Query<'_>) -> Eval {
        if !self.is_l7 {
            return Eval::Match;
        }
        let request = match &q.http {
            Http::Unknown => return Eval::NeedsHttp,
            Http::NotHttp => return Eval::NotHttp,
            Http::Request(r) => r,
        };
        for (i, clause) in self.clauses[self.l7_from..].iter().enumerate() {
            if !clause.test.holds(q, Some(request), self.action) {
                return Eval::Fail(self.l7_from + i);
            }
        }
        Eval::Match
    }
}

impl Test {
    /// Whether the check holds in a rule with this `action` (header clauses
    /// read values differently in allow and deny rules). HTTP checks need
    /// the request. No allocation (except for a header value that is not
    /// UTF-8).
    pub fn holds(&self, q: &Query<'_>, request: Option<&HttpRequest<'_>>, action: Action) -> bool {
        match self {
            Test::Claim(side, attr, pred) => {
                let claims = match (side, q.caller, q.callee) {
                    (Side::Caller, Caller::Meshed(c), _) | (Side::Callee, _, Callee::Meshed(c)) => {
                        c
                    }
                    _ => return false,
                };
                pred.matches(attr.get(claims))
            }
            Test::SourceCidrs(nets) => match q.caller {
                Caller::Unauthenticated(ip) => in_cidrs(nets, ip),
                Caller::Meshed(_) => false,
            },
            Test::Ports(ports) | Test::ExternalPorts(ports) => ports.contains(q.port),
            Test::ExternalHosts(globs) => match q.callee {
                Callee::External {
                    host: Some(host), ..
                } => {
                    let host = normalize_host(host);
                    globs.iter().any(|g| g.matches(host))
                }
                _ => false,
            },
            Test::ExternalCidrs(nets) => match q.callee {
                Callee::External { ip, .. } => in_cidrs(nets, ip),
                Callee::Meshed(_) => false,
            },
            Test::Methods(methods) => {
                request.is_some_and(|r| method_holds(methods, r.method, action))
            }
            Test::Paths(globs) => request.is_some_and(|r| path_holds(globs, r.path, action)),
            Test::Header(name, globs) => {
                request.is_some_and(|r| header_holds(r.headers, name, globs, action))
            }
        }
    }
}

/// A methods clause: is `method` one of `methods` in a rule with this
/// `action`? Exactly, but that in a deny rule `GET` also holds for `HEAD`:
/// servers run a `GET` handler for a `HEAD` (Flask, Go's `ServeMux`,
/// Express, Spring, Python's `do_HEAD = do_GET`), its effects and its
/// response's head included, so a deny of `GET /admin/export` that let
/// `HEAD /admin/export` through would deny only the body. (An allow of
/// `GET` alone does not allow `HEAD`: allows only ever hold for what they
/// name.)
fn method_holds(methods: &[Box<str>], method: &str, action: Action) -> bool {
    methods
        .iter()
        .any(|m| **m == *method || (action == Action::Deny && method == "HEAD" && &**m == "GET"))
}

/// A paths clause: does the request's (canonical) `path` meet one of
/// `globs` in a rule with this `action`? Anything from `?` or `#` on is
/// not path. In a deny rule a pattern also holds for the path with one
/// trailing `/`: `/admin` for `/admin/`, `/users/*/delete` for
/// `/users/1/delete/`, since servers route those to the same handler
/// (Express without strict routing, its default; Spring MVC before 6), so
/// a deny of `/admin` that let `/admin/` (or `/%61dmin/`, `/admin;x/`,
/// which are `/admin/` canonically) through would deny nothing. A pattern
/// ending in `/` or `**` already says what it holds for there. (An allow of
/// `/admin` does not allow `/admin/`: allows only ever hold for what they
/// name.)
fn path_holds(globs: &[Glob], path: &str, action: Action) -> bool {
    let path = path.split(['?', '#']).next().unwrap_or(path);
    let without_slash = match action {
        Action::Deny => path.strip_suffix('/').filter(|p| !p.is_empty()),
        Action::Allow => None,
    };
    globs
        .iter()
        .any(|g| g.matches(path) || without_slash.is_some_and(|p| g.matches(p)))
}

/// A header clause: does header `name` meet `globs` in a rule with this
/// `action`?
///
/// The *elements* of a header are the comma-separated items of all its
/// field lines, trimmed of spaces and tabs, empty ones ignored. In a deny
/// rule the clause holds when any element or any whole line matches (a
/// second `x-debug: 1` line or a `0, 1` list cannot hide a value from a
/// deny); in an allow rule only when there is at least one element and
/// every element matches (an extra `x-tenant: evil` cannot ride along on an
/// allowed `acme`).
///
/// `host` is a host name (its globs ignore case, and were written without
/// a port or trailing dot): its elements are matched without a `:port`, a
/// trailing dot or IPv6 brackets ([`normalize_host`]), so `Host:
/// Internal.test.:80` meets `deny host: internal.test`.
fn header_holds(headers: &dyn Headers, name: &str, globs: &[Glob], action: Action) -> bool {
    let is_host = name == "host";
    let matches = |value: &[u8]| {
        // Borrowed unless the value is not UTF-8.
        let text = String::from_utf8_lossy(value);
        let text = if is_host {
            normalize_host(&text)
        } else {
            &text
        };
        globs.iter().any(|g| g.matches(text))
    };
    match action {
        Action::Deny => {
            let mut any_matches = false;
            headers.each_value(name, &mut |line| {
                if !any_matches {
                    any_matches = matches(trim_ows(line)) || elements(line).any(matches);
                }
            });
            any_matches
        }
        Action::Allow => {
            let mut present = false;
            let mut all_match = true;
            headers.each_value(name, &mut |line| {
                for element in elements(line) {
                    present = true;
                    all_match = all_match && matches(element);
                }
            });
            present && all_match
        }
    }
}

/// The comma-separated items of one field line, trimmed, empty ones skipped.
fn elements(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    line.split(|b| *b == b',')
        .map(trim_ows)
        .filter(|e| !e.is_empty())
}

/// `value` without leading and trailing spaces and tabs (HTTP's "optional
/// whitespace").
fn trim_ows(value: &[u8]) -> &[u8] {
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = value.iter().position(|b| !is_ows(b)).unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|b| !is_ows(b))
        .map_or(start, |i| i + 1);
    &value[start..end]
}

fn in_cidrs(nets: &[IpNet], ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    nets.iter().any(|n| n.contains(&ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_sets_merge_and_contain_edges() {
        let p = PortSet::new(vec![(9000, 9100), (8080, 8080), (9101, 9200), (1, 1)]);
        assert_eq!(&*p.0, &[(1, 1), (8080, 8080), (9000, 9200)]);
        for (port, want) in [
            (1, true),
            (2, false),
            (8079, false),
            (8080, true),
            (8081, false),
            (8999, false),
            (9000, true),
            (9200, true),
            (9201, false),
            (65535, false),
        ] {
            assert_eq!(p.contains(port), want, "{port}");
        }
        assert!(PortSet::new(vec![(1, 65535)]).contains(65535));
    }

    #[test]
    fn cidrs_match_v4_mapped_addresses() {
        let nets: Box<[IpNet]> = Box::new(["10.0.0.0/8".parse().unwrap()]);
        assert!(in_cidrs(&nets, "10.1.2.3".parse().unwrap()));
        assert!(in_cidrs(&nets, "::ffff:10.1.2.3".parse().unwrap()));
        assert!(!in_cidrs(&nets, "11.0.0.1".parse().unwrap()));
    }
}
