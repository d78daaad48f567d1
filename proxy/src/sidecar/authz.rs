//! Authorization of one connection and its requests, with the audit line.
//!
//! Design bias: *every decision is written down*. The data plane never calls
//! the policy directly; it builds a [`ConnAuthz`] once per connection (who
//! calls whom, on which port) and asks it for the connection and, for HTTP,
//! for each request. Each answer is one audit line naming the rule, and one
//! count in `appid_authz_decisions_total`.
//!
//! The policy is read from an `ArcSwap` at every decision, so a reload
//! applies to the next request of a live HTTP connection at once (what a
//! connection settled about the rules is kept per policy, and made again
//! for a new one: [`ConnAuthz::decide_request`]), and
//! [`ConnAuthz::still_allowed`] lets an opaque TCP connection re-check
//! itself when the policy changes.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::SystemTime;

use appid_policy::AppIdClaims;
use appid_policy::policy::{
    ConnectionRules, Direction, HttpRequest, Outcome, Policy, Query, Reason,
};
use prometheus_client::metrics::counter::Counter;

use super::Shared;
use super::http::{
    INVALID_REQUEST_RULE, Malformed, Refusal, RequestAuthorizer, RequestFacts, RequestVerdict,
};
use crate::audit::{AppIdDoc, AuditRecord, Claims, ConnectionFields, ExternalDest};

/// The rule names of the sidecar's own denials: the policy crate's, which
/// no rule may take ([`appid_policy::policy::SIDECAR_RULE_NAMES`]).
pub use appid_policy::policy::{EXPIRED_RULE, REVOKED_RULE};

/// The other party of a connection, as policy sees it.
#[derive(Debug, Clone)]
pub enum Peer {
    /// A verified sidecar: its SPIFFE ID and claims.
    Meshed(Arc<AppIdClaims>),
    /// Inbound, outside the mesh: only its source address is known.
    Unauthenticated(IpAddr),
    /// Outbound, outside the mesh: the destination and the host the app named.
    External { ip: IpAddr, host: Option<String> },
}

/// The connection-level answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnVerdict {
    Allow,
    /// Allowed so far; HTTP requests must each be decided.
    PerRequest,
    Deny {
        rule: String,
        reason: String,
    },
}

/// The answer for a transparent outbound destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExternalVerdict {
    /// An external rule allows it: pass through untouched.
    Allow,
    /// A deny rule names it, or it is the cloud metadata API: refuse.
    Refused,
    /// No external rule is about it: treat it as a meshed destination.
    NotExternal,
}

/// What a decision on a destination outside the mesh (`Callee::External`)
/// makes of the connection: the one reading of it, for the sidecar
/// ([`ConnAuthz::decide_external`]), `appid policy explain` and
/// `appid policy replay`.
/// `named_metadata_only`: whether the destination is the metadata API by
/// the name the app gave only, and no rule would take its address outside
/// the mesh ([`Policy::metadata_by_name_only`]); asked only then.
/// `as_external`: [`Policy::decide_as_external`] on the same query; asked
/// only for an audit-mode would-be denial by a deny rule without
/// `to.external`.
pub(crate) fn external_verdict<'p>(
    decision: &appid_policy::policy::Decision<'p>,
    named_metadata_only: impl FnOnce() -> bool,
    as_external: impl FnOnce() -> appid_policy::policy::Decision<'p>,
) -> ExternalVerdict {
    // Audit mode lets through what a deny rule about every destination
    // (`from: { labels.app: legacy }`, no `to.external`) would refuse; that
    // rule makes no destination one outside the mesh (a meshed service
    // must not be reached in plaintext for it), the other rules say
    // whether this one is.
    if decision.audit_only && !decision.takes_outside_the_mesh() {
        return read_external(&as_external(), named_metadata_only);
    }
    read_external(decision, named_metadata_only)
}

/// [`external_verdict`] of a decision made by rules that make destinations
/// outside the mesh.
fn read_external(
    decision: &appid_policy::policy::Decision<'_>,
    named_metadata_only: impl FnOnce() -> bool,
) -> ExternalVerdict {
    match (decision.outcome, decision.reason) {
        // A name alone (`Host: metadata`) makes no metadata API of a
        // destination no rule takes outside the mesh: a meshed service
        // called `metadata` is reached as any other.
        (_, Reason::MetadataApi) if named_metadata_only() => ExternalVerdict::NotExternal,
        // The metadata API first: nothing opens it but a rule naming it.
        (_, Reason::MetadataApi) => ExternalVerdict::Refused,
        // Only a rule can make a destination external: `default: allow`
        // or audit mode must not turn meshed traffic into plaintext.
        (_, Reason::Default { .. }) => ExternalVerdict::NotExternal,
        (Outcome::Allow, _) => ExternalVerdict::Allow,
        (Outcome::Deny, Reason::Rule) => ExternalVerdict::Refused,
        // The sidecar does not read the requests it passes out of the mesh,
        // so a decision that waits for them refuses. (None comes: `http` is
        // refused with `to.external`, and a deny rule with `http` is not
        // about destinations outside the mesh.)
        (Outcome::DeferToL7, _) => ExternalVerdict::Refused,
        _ => ExternalVerdict::NotExternal,
    }
}

/// Whether the name an app gives for a connection outside the mesh could
/// change its decision ([`ConnAuthz::external_name_could_matter`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameMatters {
    /// A rule with `external.hosts` could decide it.
    ForRules,
    /// Only as the metadata API's name: a client that sends a `Host` or an
    /// SNI sends it at once.
    ForTheMetadataApi,
    No,
}

/// One connection's authorization context.
pub struct ConnAuthz {
    shared: Arc<Shared>,
    direction: Direction,
    local: Arc<AppIdClaims>,
    peer: Peer,
    peer_addr: SocketAddr,
    /// The calling app's address (see [`ConnAuthz::with_app_addr`]).
    app_addr: Option<SocketAddr>,
    port: u16,
    protocol: &'static str,
    /// How the connection reaches the peer sidecar (for its span).
    transport: Option<super::trace::Transport>,
    /// The claims as JSON with their digest, for the values audit lines
    /// show (`from.labels.app: web`) and the full claims they name
    /// (`peer_appid`, `local_appid`); shared by every connection with the
    /// same claims (see [`ClaimsJson`]).
    local_json: OnceLock<Arc<AppIdDoc>>,
    peer_json: OnceLock<Arc<AppIdDoc>>,
    /// The rule of the would-be denial (`mode: audit`) last audited for
    /// this connection as a whole ([`rule_digest`]; 0: none), so that a
    /// re-check after an authorization change ([`Self::still_allowed`])
    /// audits it only when it starts or its rule changes, not again on
    /// every policy reload or revocation-list update. A digest, not the
    /// name: 8 bytes on every connection, no lock, no allocation.
    would_deny: std::sync::atomic::AtomicU64,
    /// What every audit line of this connection shares, kept from its
    /// second request on ([`KeptAuditFields`]); a connection that carries
    /// one request (or none) keeps nothing.
    audit_fields: OnceLock<Box<KeptAuditFields>>,
    /// A request was audited on this connection.
    request_audited: std::sync::atomic::AtomicBool,
    /// Outside the mesh, allowed by the name the app gave: its requests
    /// must name that host ([`ConnAuthz::held_to_its_name`]).
    held_to_name: bool,
    /// When the meshed peer's certificate expires (Unix seconds; `i64::MAX`
    /// for other peers): no request is allowed on its claims after.
    peer_not_after: i64,
    /// When our own certificate (current when the connection was
    /// authorized) expires: the peer checked *our* claims against its
    /// policy with it, so with a meshed peer the connection ends then too.
    own_not_after: i64,
}

/// A rule's name as 64 bits, never 0 (SipHash with the standard library's
/// fixed keys: the same name, the same digest, within the process).
fn rule_digest(rule: &str) -> u64 {
    use std::hash::BuildHasher as _;
    std::hash::BuildHasherDefault::<std::hash::DefaultHasher>::default().hash_one(rule) | 1
}

/// A connection's addresses as text, for one audit line. Made per decision
/// until the connection's second request, then kept ([`KeptAuditFields`]):
/// keeping them on every connection cost 1.1 KiB per idle connection (both
/// sidecars, `bench/e2e` idle workload), more than the formatting saves on
/// a connection that carries one request.
struct AuditAddrs {
    peer_addr: AddrText,
    app_addr: Option<AddrText>,
    /// The destination's IP, for a peer outside the mesh (outbound).
    external_ip: Option<Box<str>>,
}

impl AuditAddrs {
    fn new(peer_addr: SocketAddr, app_addr: Option<SocketAddr>, peer: &Peer) -> AuditAddrs {
        AuditAddrs {
            peer_addr: AddrText::new(peer_addr),
            app_addr: app_addr.map(AddrText::new),
            external_ip: match peer {
                Peer::External { ip, .. } => Some(ip.to_string().into()),
                _ => None,
            },
        }
    }
}

/// What a keep-alive connection keeps for its requests, made at its second
/// request: its addresses as text, and the fields every audit line of it
/// shares encoded ([`ConnectionFields`]; `None` if they could not be, when
/// every line is encoded whole); from its third request on, what it
/// settled about the policy's rules and the decision counter it counted
/// into last ([`ConnAuthz::decide_request`], [`ConnAuthz::count_decision`]).
/// A connection that carries one request keeps none of it.
struct KeptAuditFields {
    peer_addr: Box<str>,
    app_addr: Option<Box<str>>,
    external_ip: Option<Box<str>>,
    encoded: OnceLock<Option<ConnectionFields>>,
    rules: Mutex<Option<ConnectionRules>>,
    decision_counter: Mutex<KeptCounter>,
}

/// A decision counter a connection keeps, with the decision and rule it
/// counts (buffers reused when they change; no counter until the first).
#[derive(Default)]
struct KeptCounter {
    decision: String,
    rule: String,
    counter: Option<Counter>,
}

/// A socket address as text, on the stack. `SocketAddr`'s `Display` goes
/// through the formatting machinery digit by digit and the text then to
/// the heap: with two addresses per audit line that was about 2% of a
/// sidecar's CPU per HTTP/2 request (`bench/e2e`, `BENCH_PROFILE=1`). IPv4,
/// the common case, is written with `itoa`; IPv6 still goes through
/// `Display`, into the same buffer.
struct AddrText {
    /// Room for the longest IPv6 form: `[` 45 `%` 10 `]:` 5 = 64 bytes.
    buf: [u8; 64],
    len: usize,
}

impl AddrText {
    fn new(addr: SocketAddr) -> AddrText {
        use std::fmt::Write as _;
        let mut text = AddrText {
            buf: [0; 64],
            len: 0,
        };
        // Cannot fail: 64 bytes hold every socket address.
        let _ = match addr {
            SocketAddr::V4(v4) => text.write_v4(v4),
            SocketAddr::V6(v6) => write!(text, "{v6}"),
        };
        text
    }

    fn write_v4(&mut self, addr: std::net::SocketAddrV4) -> std::fmt::Result {
        use std::fmt::Write as _;
        let mut number = itoa::Buffer::new();
        for (i, octet) in addr.ip().octets().into_iter().enumerate() {
            if i > 0 {
                self.write_str(".")?;
            }
            self.write_str(number.format(octet))?;
        }
        self.write_str(":")?;
        self.write_str(number.format(addr.port()))
    }

    fn as_str(&self) -> &str {
        // Only `itoa`'s digits and `Display`'s own text are ever written.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

impl std::fmt::Write for AddrText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        let slot = self.buf.get_mut(self.len..end).ok_or(std::fmt::Error)?;
        slot.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Claims documents as JSON, made once per claims `Arc` (our identity; a
/// pooled tunnel's peer) rather than once per connection: idle connections
/// then hold a pointer, not a document.
#[derive(Default)]
pub struct ClaimsJson {
    /// By the claims' address; the `Weak` tells a live entry from a reused
    /// address.
    by_claims: std::sync::Mutex<CachedDocs>,
}

/// The cache and the size at which dead entries are next swept.
#[derive(Default)]
struct CachedDocs {
    map: HashMap<usize, CachedJson>,
    sweep_at: usize,
}

type CachedJson = (Weak<AppIdClaims>, Arc<AppIdDoc>);

impl ClaimsJson {
    /// Entries kept before dead ones are swept.
    const SWEEP_ABOVE: usize = 1024;

    pub fn get(&self, claims: &Arc<AppIdClaims>) -> Arc<AppIdDoc> {
        let key = Arc::as_ptr(claims) as usize;
        let mut cache = self.by_claims.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((weak, json)) = cache.map.get(&key)
            && weak
                .upgrade()
                .is_some_and(|live| Arc::ptr_eq(&live, claims))
        {
            return json.clone();
        }
        // Sweep when the map has doubled since the last sweep, not at every
        // insert past a size: with many live entries (strict mode makes one
        // claims `Arc` per connection) a sweep per connection would cost
        // O(live connections) under this lock.
        if cache.map.len() >= cache.sweep_at.max(Self::SWEEP_ABOVE) {
            cache.map.retain(|_, (weak, _)| weak.strong_count() > 0);
            cache.sweep_at = 2 * cache.map.len();
        }
        let json = Arc::new(AppIdDoc::new(claims));
        cache
            .map
            .insert(key, (Arc::downgrade(claims), json.clone()));
        json
    }
}

impl ConnAuthz {
    /// The authorization of one connection made or served as `local`.
    pub fn new(
        shared: Arc<Shared>,
        local: &super::local::Local,
        direction: Direction,
        peer: Peer,
        peer_addr: SocketAddr,
        port: u16,
    ) -> Self {
        let identity = local.tls.identity.load();
        let own_not_after = identity.not_after;
        let local = identity.claims.clone();
        ConnAuthz {
            shared,
            direction,
            local,
            peer,
            peer_addr,
            app_addr: None,
            port,
            protocol: "unknown",
            transport: None,
            local_json: OnceLock::new(),
            peer_json: OnceLock::new(),
            would_deny: std::sync::atomic::AtomicU64::new(0),
            audit_fields: OnceLock::new(),
            request_audited: std::sync::atomic::AtomicBool::new(false),
            held_to_name: false,
            peer_not_after: i64::MAX,
            own_not_after,
        }
    }

    /// The meshed peer's certificate expires at `not_after` (Unix
    /// seconds): requests after are denied ([`EXPIRED_RULE`]), and the
    /// connection winds down then ([`ConnAuthz::wind_down_at`]).
    pub fn vouched_until(mut self, not_after: i64) -> Self {
        self.peer_not_after = not_after;
        self
    }

    /// When an HTTP connection should stop taking requests (its client
    /// told to reconnect: GOAWAY, or a close between requests), so the next
    /// connection is made with the certificates current then: the first
    /// of the two certificates to expire, the peer's or ours. `None` for
    /// peers outside the mesh.
    pub fn wind_down_at(&self) -> Option<tokio::time::Instant> {
        let until = self.vouched_until_either()?;
        // A second before it (to the nanosecond: a whole-second reading
        // would wind down up to a second after requests start being denied),
        // so a busy client is told to reconnect rather than refused.
        instant_at(until, std::time::Duration::from_secs(1))
    }

    /// Until when both sides' claims are vouched for, with a meshed peer:
    /// the first of the two certificates to expire. A server's claims are
    /// what its client's policy decided on (`to`), a client's what the
    /// server's did (`from`); each side ends the connection at either
    /// expiry, so neither relies on the other to (the client side may
    /// forward an HTTP connection as bytes, [`Self::allows_every_request`]).
    fn vouched_until_either(&self) -> Option<i64> {
        match self.peer {
            Peer::Meshed(_) => Some(self.peer_not_after.min(self.own_not_after)),
            _ => None,
        }
    }

    /// A denial because the peer's certificate or ours expired since the
    /// connection was made, if one did.
    fn expired(
        &self,
        request: Option<(&str, &str, bool)>,
        at: SystemTime,
    ) -> Option<(String, String)> {
        let Peer::Meshed(claims) = &self.peer else {
            return None;
        };
        let now = super::clock::unix_seconds(at);
        let reason = if now >= self.peer_not_after {
            format!(
                "the certificate of {} expired (not after {}): its claims are no longer vouched for",
                claims.id, self.peer_not_after
            )
        } else if now >= self.own_not_after {
            format!(
                "our own certificate expired (not after {}): the claims {} knows us by are no \
                 longer vouched for",
                self.own_not_after, claims.id
            )
        } else {
            return None;
        };
        self.write_audit(
            "deny",
            false,
            EXPIRED_RULE,
            Claims::NONE,
            Some(&reason),
            request,
            at,
        );
        Some((EXPIRED_RULE.to_string(), reason))
    }

    /// Records the application protocol for the audit lines that follow
    /// (and on the connection span, when there is one).
    pub fn set_protocol(&mut self, protocol: &'static str) {
        self.protocol = protocol;
        tracing::Span::current().record("network.protocol.name", protocol);
    }

    /// The calling app's address, recorded beside `peer_addr` in audit
    /// lines: outbound the local app (`peer_addr` is the destination),
    /// inbound over a tunnel the peer's app as its sidecar reports it.
    pub fn with_app_addr(mut self, app_addr: SocketAddr) -> Self {
        self.app_addr = Some(app_addr);
        self
    }

    /// Outside the mesh, allowed by the name the app gave: every request
    /// on the connection must name that host, else it is refused (421)
    /// before policy ([`RequestAuthorizer::connection_host`]).
    pub fn held_to_its_name(mut self) -> Self {
        self.held_to_name = true;
        self
    }

    /// Says how the connection reaches the peer sidecar (for its span).
    pub fn with_transport(mut self, transport: super::trace::Transport) -> Self {
        self.transport = Some(transport);
        self
    }

    /// The `appid.connection` span for this connection.
    pub fn connection_span(&self) -> tracing::Span {
        let peer_id = match &self.peer {
            Peer::Meshed(claims) => Some(claims.id.as_str()),
            _ => None,
        };
        super::trace::connection_span(
            self.direction.as_str(),
            peer_id,
            self.peer_addr,
            self.port,
            self.transport,
        )
    }

    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    /// The app port policy sees.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whose share of the byte budget this connection's buffers count
    /// against (see `sidecar::memory`): a peer sidecar's identity, or the
    /// address of a caller outside the mesh.
    pub fn budget_key(&self) -> String {
        match &self.peer {
            Peer::Meshed(claims) => claims.id.clone(),
            Peer::Unauthenticated(ip) => format!("unauthenticated {ip}"),
            Peer::External { ip, .. } => format!("external {ip}"),
        }
    }

    fn query<'q>(&'q self, policy_http: Option<bool>) -> Query<'q> {
        let local = &*self.local;
        let query = match (&self.peer, self.direction) {
            (Peer::Meshed(peer), Direction::Inbound) => {
                Query::meshed(Direction::Inbound, peer, local, self.port)
            }
            (Peer::Meshed(peer), Direction::Outbound) => {
                Query::meshed(Direction::Outbound, local, peer, self.port)
            }
            (Peer::Unauthenticated(ip), _) => Query::unauthenticated(*ip, local, self.port),
            (Peer::External { ip, host }, _) => {
                Query::external(local, *ip, host.as_deref(), self.port)
            }
        };
        match policy_http {
            Some(false) => query.not_http(),
            _ => query,
        }
    }

    /// Decides the connection. `is_http`: `None` before the protocol is
    /// known, `Some(false)` for opaque TCP, `Some(true)` for HTTP (then
    /// rules with `http` defer to per-request decisions).
    /// Asks `policy` about `query`. Every decision goes through here, so
    /// `appid_authz_decision_duration_seconds` times them all.
    fn decide<'p>(
        &self,
        policy: &'p Policy,
        query: &Query<'_>,
    ) -> appid_policy::policy::Decision<'p> {
        self.timed(|| policy.decide(query))
    }

    /// `decide`, timed into `appid_authz_decision_duration_seconds` when
    /// it is a thread's first or one of every [`TIMED_DECISIONS`] after
    /// ([`time_this_decision`]).
    fn timed<T>(&self, decide: impl FnOnce() -> T) -> T {
        if !time_this_decision() {
            return decide();
        }
        let started = std::time::Instant::now();
        let decision = decide();
        self.shared
            .metrics
            .decision_took(self.direction.into(), started.elapsed());
        decision
    }

    /// [`Self::decide`] for a request. Once the connection keeps fields
    /// (its third request on), with the rules it settled
    /// ([`ConnectionRules`]: the index's answer and every clause before
    /// `http` are the same for all its requests), made again when the
    /// policy is not theirs.
    fn decide_request<'p>(
        &self,
        policy: &'p Policy,
        query: &Query<'_>,
    ) -> appid_policy::policy::Decision<'p> {
        let Some(kept) = self.audit_fields.get() else {
            return self.decide(policy, query);
        };
        self.timed(|| {
            let mut rules = kept.rules.lock().unwrap_or_else(PoisonError::into_inner);
            let current = rules.take().filter(|rules| rules.are_from(policy));
            let rules = rules.insert(current.unwrap_or_else(|| policy.connection_rules(query)));
            rules.decide(policy, query)
        })
    }

    pub fn decide_connection(&self, is_http: Option<bool>) -> ConnVerdict {
        if let Some((rule, reason)) = self.revoked(None, SystemTime::now()) {
            return ConnVerdict::Deny { rule, reason };
        }
        let policy = self.shared.policy.load();
        let query = self.query(is_http);
        let decision = self.decide(&policy, &query);
        let verdict = match decision.outcome {
            Outcome::Allow => ConnVerdict::Allow,
            Outcome::DeferToL7 if is_http != Some(false) => ConnVerdict::PerRequest,
            Outcome::DeferToL7 | Outcome::Deny => ConnVerdict::Deny {
                rule: decision.rule.to_string(),
                reason: decision.to_string(),
            },
        };
        // A deferral is not a decision yet: the requests will be audited.
        if verdict != ConnVerdict::PerRequest {
            self.audit(&policy, &decision, None, SystemTime::now());
            if decision.audit_only {
                self.would_deny_is(Some(decision.rule));
            }
        }
        verdict
    }

    /// Records the rule of this connection's would-be denial (`None`: it
    /// is allowed outright); true if that is news (not what was last
    /// audited).
    fn would_deny_is(&self, rule: Option<&str>) -> bool {
        let digest = rule.map_or(0, rule_digest);
        self.would_deny
            .swap(digest, std::sync::atomic::Ordering::Relaxed)
            != digest
    }

    /// Decides a transparent outbound destination as external. Audited when
    /// it allows or refuses; silent when the destination is not external.
    pub fn decide_external(&self) -> ExternalVerdict {
        let policy = self.shared.policy.load();
        let query = self.query(None);
        let decision = self.decide(&policy, &query);
        let verdict = external_verdict(
            &decision,
            || self.named_metadata_only(&policy),
            || self.timed(|| policy.decide_as_external(&query)),
        );
        if verdict != ExternalVerdict::NotExternal {
            self.audit(&policy, &decision, None, SystemTime::now());
        }
        verdict
    }

    /// Whether the destination is the metadata API by the name the app
    /// gave only, and no rule would take its address outside the mesh
    /// ([`Policy::metadata_by_name_only`]).
    fn named_metadata_only(&self, policy: &Policy) -> bool {
        self.timed(|| policy.metadata_by_name_only(&self.query(None)))
    }

    /// Outbound outside the mesh, before the app's name is known: whether
    /// that name could change the decision (a rule with `external.hosts`
    /// could decide it, or it could name the metadata API). Unaudited.
    pub fn external_name_could_matter(&self) -> NameMatters {
        let policy = self.shared.policy.load();
        let query = self.query(None);
        if policy.external_name_could_matter(&query) {
            NameMatters::ForRules
        } else if self.decide(&policy, &query).name_could_be_metadata_api() {
            NameMatters::ForTheMetadataApi
        } else {
            NameMatters::No
        }
    }

    /// Outbound outside the mesh: the name the app gave, when the rule that
    /// would allow the connection allows it by that name
    /// ([`Decision::trusts_external_name`]): then it must go where the name
    /// resolves. Unaudited (the decision on the address it goes to is).
    ///
    /// [`Decision::trusts_external_name`]: appid_policy::policy::Decision::trusts_external_name
    ///
    /// A connection a rule allows by the dialled address alone (a rule
    /// without `hosts`: a forward proxy's `cidrs`, say) stays there.
    pub fn external_name(&self) -> Option<&str> {
        let Peer::External {
            ip,
            host: Some(host),
        } = &self.peer
        else {
            return None;
        };
        let policy = self.shared.policy.load();
        let by_address = Query::external(&self.local, *ip, None, self.port);
        let by_address = self.decide(&policy, &by_address);
        if by_address.outcome == Outcome::Allow
            && by_address.reason == Reason::Rule
            && !by_address.audit_only
        {
            return None;
        }
        let decision = self.decide(&policy, &self.query(None));
        (decision.outcome == Outcome::Allow && decision.trusts_external_name())
            .then_some(host.as_str())
    }

    /// Audits the closure of a connection that was allowed, for `reason`
    /// (rule `invalid-request`).
    pub fn audit_closed(&self, reason: &str) {
        self.write_audit(
            "deny",
            false,
            INVALID_REQUEST_RULE,
            Claims::NONE,
            Some(reason),
            None,
            SystemTime::now(),
        );
    }

    /// Whether the connection would be allowed as plain TCP, without an
    /// audit line (nothing is decided yet: see `dispatch`, a silent client).
    pub fn would_allow_tcp(&self) -> bool {
        self.quiet_outcome(Some(false)) == Some(Outcome::Allow)
    }

    /// Whether some HTTP request on this connection could be allowed,
    /// without an audit line: `false` when the connection is denied
    /// whatever it carries.
    pub fn could_allow_http(&self) -> bool {
        self.quiet_outcome(None).is_some_and(|o| o != Outcome::Deny)
    }

    /// Whether every HTTP request on this connection would be decided as
    /// the connection is, allowed, so that deciding them one by one could
    /// only repeat the connection's decision: outbound to a peer sidecar,
    /// allowed by a rule (or `default: allow`) that no rule with `http`
    /// could overturn ([`Outcome::Allow`] for a connection that may be
    /// HTTP), and not a would-be denial of audit mode. Unaudited.
    ///
    /// Only outbound: inbound, the sidecar must still parse every request
    /// to remove `x-appid-*` headers and add the verified ones (DESIGN.md),
    /// and outbound to a destination outside the mesh, `external.hosts`
    /// may match the `Host` of each request.
    pub fn allows_every_request(&self) -> bool {
        self.direction == Direction::Outbound
            && matches!(self.peer, Peer::Meshed(_))
            && self.quiet_decision(Some(true)) == Some((Outcome::Allow, false))
    }

    /// The policy's outcome for the connection, unaudited; `None` when the
    /// peer is revoked.
    fn quiet_outcome(&self, is_http: Option<bool>) -> Option<Outcome> {
        self.quiet_decision(is_http).map(|(outcome, _)| outcome)
    }

    /// [`Self::quiet_outcome`], and whether it is a would-be denial that
    /// audit mode allows.
    fn quiet_decision(&self, is_http: Option<bool>) -> Option<(Outcome, bool)> {
        if matches!(&self.peer, Peer::Meshed(claims) if self.shared.trust.is_revoked(&claims.id)) {
            return None;
        }
        let policy = self.shared.policy.load();
        let decision = self.decide(&policy, &self.query(is_http));
        Some((decision.outcome, decision.audit_only))
    }

    /// Re-decides a connection decided once (opaque TCP, or HTTP that
    /// [`Self::allows_every_request`]: `is_http`) after a policy change;
    /// audits the closure if the answer is no. For HTTP, a policy that now
    /// has a rule with `http` for it says no ([`Outcome::DeferToL7`]): the
    /// client's next connection has its requests decided one by one. Under
    /// `mode: audit`, a connection the new policy would deny stays open and
    /// gets an audit-only line for it: a dry run of a policy shows the live
    /// connections it would cut, not only new ones. Once per would-be
    /// denial: again only if its rule changes, or after a policy that
    /// allowed the connection outright.
    pub fn still_allowed(&self, is_http: bool) -> ConnVerdict {
        if let Some((rule, reason)) = self.revoked(None, SystemTime::now()) {
            return ConnVerdict::Deny { rule, reason };
        }
        let policy = self.shared.policy.load();
        let decision = self.decide(&policy, &self.query(Some(is_http)));
        match decision.outcome {
            Outcome::Allow => {
                let would_deny = decision.audit_only.then_some(decision.rule);
                if self.would_deny_is(would_deny) && decision.audit_only {
                    self.audit(&policy, &decision, None, SystemTime::now());
                }
                ConnVerdict::Allow
            }
            _ => {
                self.audit(&policy, &decision, None, SystemTime::now());
                ConnVerdict::Deny {
                    rule: decision.rule.to_string(),
                    reason: format!("policy changed: {}", decision.why()),
                }
            }
        }
    }

    /// Writes the audit line and counts the decision.
    fn audit(
        &self,
        policy: &Arc<Policy>,
        decision: &appid_policy::policy::Decision<'_>,
        request: Option<(&str, &str, bool)>,
        at: SystemTime,
    ) {
        let pairs = || -> Vec<(&str, &serde_json::Value)> {
            decision
                .attributes()
                .filter_map(|path| Some((path, self.attribute_value(path)?)))
                .collect()
        };
        // Kept per rule and identities (`audit_claims`), made if not.
        let kept = decision.rule_identity().and_then(|rule| {
            let key = super::audit_claims::Key {
                policy,
                rule,
                direction: self.direction,
                peer: match &self.peer {
                    Peer::Meshed(peer) => Some(peer),
                    _ => None,
                },
                local: &self.local,
            };
            super::audit_claims::claims_json(&key, |buf| Claims::new(&mut pairs()).write_json(buf))
        });
        let mut made;
        let claims = match &kept {
            Some(json) => Claims::from_json(json),
            None => {
                made = pairs();
                Claims::new(&mut made)
            }
        };
        let reason = if decision.outcome == Outcome::Allow && !decision.audit_only {
            None
        } else {
            Some(decision.why().to_string())
        };
        let label = match decision.outcome {
            Outcome::Allow => "allow",
            _ => "deny",
        };
        self.write_audit(
            label,
            decision.audit_only,
            decision.rule,
            claims,
            reason.as_deref(),
            request,
            at,
        );
    }

    /// One audit line and one decision count, at `at` (the time of the
    /// request it is about, or of the connection's decision).
    #[expect(
        clippy::too_many_arguments,
        reason = "the line's fields, each from its caller; a struct for them would be built once per call"
    )]
    fn write_audit(
        &self,
        decision: &str,
        audit_only: bool,
        rule: &str,
        claims: Claims<'_>,
        reason: Option<&str>,
        request: Option<(&str, &str, bool)>,
        at: SystemTime,
    ) {
        let peer_id = match &self.peer {
            Peer::Meshed(claims) => Some(claims.id.as_str()),
            _ => None,
        };
        let kept = self.kept_audit_fields(request.is_some());
        let made;
        let (peer_addr, app_addr, external_ip) = match kept {
            Some(kept) => (
                &*kept.peer_addr,
                kept.app_addr.as_deref(),
                kept.external_ip.as_deref(),
            ),
            None => {
                made = AuditAddrs::new(self.peer_addr, self.app_addr, &self.peer);
                (
                    made.peer_addr.as_str(),
                    made.app_addr.as_ref().map(AddrText::as_str),
                    made.external_ip.as_deref(),
                )
            }
        };
        let peer_appid = match &self.peer {
            Peer::Meshed(claims) => Some(
                &**self
                    .peer_json
                    .get_or_init(|| self.shared.claims_json.get(claims)),
            ),
            _ => None,
        };
        let local_appid = self
            .local_json
            .get_or_init(|| self.shared.claims_json.get(&self.local));
        let external = match (&self.peer, external_ip) {
            (Peer::External { host, .. }, Some(ip)) => Some(ExternalDest {
                ip,
                host: host.as_deref().map(|h| truncate_utf8(h, AUDIT_FIELD_BYTES)),
            }),
            _ => None,
        };
        super::trace::record_decision(decision, rule);
        let record = AuditRecord {
            external,
            peer_appid,
            local_appid: Some(local_appid),
            direction: self.direction.as_str(),
            decision,
            audit_only,
            rule,
            peer_id,
            peer_addr: Some(peer_addr),
            app_addr,
            claims,
            port: self.port,
            // Bounded: a caller picks these, and must not pick the size of
            // the audit log (a 60 KB path is a 60 KB line otherwise).
            method: request.map(|(m, _, _)| truncate_utf8(m, AUDIT_FIELD_BYTES)),
            path: request.map(|(_, p, _)| truncate_utf8(p, AUDIT_FIELD_BYTES)),
            reason,
            protocol: match request {
                Some((_, _, true)) => "grpc",
                _ => self.protocol,
            },
        };
        let encoded = kept.and_then(|kept| {
            kept.encoded
                .get_or_init(|| ConnectionFields::new(&record).ok())
                .as_ref()
        });
        match encoded {
            Some(fields) => self.shared.audit.log_on_connection(&record, fields, at),
            None => self.shared.audit.log_at(&record, at),
        }
        self.count_decision(decision, rule, kept);
    }

    /// Counts a decision in `appid_authz_decisions_total`. A connection's
    /// requests mostly meet one rule, so once it keeps fields it keeps the
    /// counter it counted into last: no lookup by name then.
    fn count_decision(&self, decision: &str, rule: &str, kept: Option<&KeptAuditFields>) {
        let direction = metrics_direction(self.direction);
        let Some(kept) = kept else {
            return self
                .shared
                .metrics
                .authz_decision(direction, decision, rule);
        };
        let mut last = kept
            .decision_counter
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let same = last.decision == decision && last.rule == rule;
        let counter = match &last.counter {
            Some(counter) if same => counter,
            _ => {
                last.decision.clear();
                last.decision.push_str(decision);
                last.rule.clear();
                last.rule.push_str(rule);
                let counter = self
                    .shared
                    .metrics
                    .decision_counter(direction, decision, rule);
                last.counter.insert(counter)
            }
        };
        counter.inc();
    }

    /// The connection's kept audit fields: made at its second request
    /// decision, `None` before (and for decisions that are no request's
    /// until then).
    fn kept_audit_fields(&self, for_request: bool) -> Option<&KeptAuditFields> {
        use std::sync::atomic::Ordering::Relaxed;
        if let Some(kept) = self.audit_fields.get() {
            return Some(kept);
        }
        if !for_request || !self.request_audited.swap(true, Relaxed) {
            return None;
        }
        let kept = self.audit_fields.get_or_init(|| {
            let addrs = AuditAddrs::new(self.peer_addr, self.app_addr, &self.peer);
            Box::new(KeptAuditFields {
                peer_addr: addrs.peer_addr.as_str().into(),
                app_addr: addrs.app_addr.as_ref().map(|a| a.as_str().into()),
                external_ip: addrs.external_ip,
                encoded: OnceLock::new(),
                rules: Mutex::new(None),
                decision_counter: Mutex::new(KeptCounter::default()),
            })
        });
        Some(kept)
    }

    /// A denial because the authority revoked the peer, if it did.
    fn revoked(
        &self,
        request: Option<(&str, &str, bool)>,
        at: SystemTime,
    ) -> Option<(String, String)> {
        let Peer::Meshed(claims) = &self.peer else {
            return None;
        };
        if !self.shared.trust.is_revoked(&claims.id) {
            return None;
        }
        let reason = format!("{} was revoked by the authority", claims.id);
        self.write_audit(
            "deny",
            false,
            REVOKED_RULE,
            Claims::NONE,
            Some(&reason),
            request,
            at,
        );
        Some((REVOKED_RULE.to_string(), reason))
    }

    /// The value behind an audit path like `from.labels.app`.
    fn attribute_value(&self, path: &str) -> Option<&serde_json::Value> {
        let (side, rest) = split_dot(path)?;
        let value = match (side, self.direction, &self.peer) {
            ("from", Direction::Inbound, Peer::Meshed(peer))
            | ("to", Direction::Outbound, Peer::Meshed(peer)) => self
                .peer_json
                .get_or_init(|| self.shared.claims_json.get(peer)),
            ("from", Direction::Outbound, _) | ("to", Direction::Inbound, _) => self
                .local_json
                .get_or_init(|| self.shared.claims_json.get(&self.local)),
            _ => return None,
        };
        let mut node: &serde_json::Value = &value.value;
        let mut remaining = rest;
        // Label and tag keys may themselves contain dots.
        while let Some(object) = node.as_object() {
            if let Some(found) = object.get(remaining) {
                return Some(found);
            }
            let (head, tail) = split_dot(remaining)?;
            node = object.get(head)?;
            remaining = tail;
        }
        None
    }
}

/// `path` split at its first `.` (a byte search: attribute paths are short,
/// and `str::split_once` set up a general searcher for each, several times
/// per audit line).
fn split_dot(path: &str) -> Option<(&str, &str)> {
    let dot = path.bytes().position(|b| b == b'.')?;
    Some((&path[..dot], &path[dot + 1..]))
}

/// The most of a request's method and path an audit line keeps (bytes).
pub const AUDIT_FIELD_BYTES: usize = 1024;

/// `text` cut to at most `max` bytes, on a character boundary.
fn truncate_utf8(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The metrics label for a policy direction.
pub fn metrics_direction(direction: Direction) -> crate::metrics::Direction {
    match direction {
        Direction::Inbound => crate::metrics::Direction::Inbound,
        Direction::Outbound => crate::metrics::Direction::Outbound,
    }
}

impl RequestAuthorizer for ConnAuthz {
    /// An upgraded connection ends when its peer is revoked. A policy
    /// reload does not end it: the request that upgraded it was decided by
    /// an L7 rule, which an L4 re-check could not match.
    fn withdrawn(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        let mut versions = self.shared.policy_version.subscribe();
        Box::pin(async move {
            while versions.changed().await.is_ok() {
                if let Some((_, reason)) = self.revoked(None, SystemTime::now()) {
                    tracing::info!(%reason, "closing an upgraded connection");
                    return;
                }
            }
            std::future::pending::<()>().await
        })
    }

    fn observe(&self, status: u16, elapsed: std::time::Duration) {
        // The request span, when the codec runs the request inside it.
        if super::trace::spans_on() {
            super::trace::record_status(&tracing::Span::current(), status);
        }
        self.shared
            .metrics
            .http_request(metrics_direction(self.direction), status, elapsed);
    }

    /// A request refused before policy: one audit line (rule
    /// `invalid-request`) with the reason and the raw target.
    fn refused(&self, method: &str, target: &str, refusal: Refusal, grpc: bool) {
        self.write_audit(
            "deny",
            false,
            INVALID_REQUEST_RULE,
            Claims::NONE,
            Some(refusal.as_str()),
            Some((method, target, grpc)),
            SystemTime::now(),
        );
    }

    /// A request refused for its form with no method and target to name
    /// (a head that does not parse, or one already decided and cut off: its
    /// own line came before and names them): one audit line (rule
    /// `invalid-request`) with the reason.
    fn malformed(&self, why: Malformed) {
        self.write_audit(
            "deny",
            false,
            INVALID_REQUEST_RULE,
            Claims::NONE,
            Some(why.as_str()),
            None,
            SystemTime::now(),
        );
    }

    fn connection_host(&self) -> Option<&str> {
        match &self.peer {
            Peer::External {
                host: Some(host), ..
            } if self.held_to_name => Some(host),
            _ => None,
        }
    }

    fn authorize(&self, request: &RequestFacts<'_>) -> RequestVerdict {
        let named = Some((request.method, request.path, request.grpc));
        // The time the request was read, for its expiry check and its audit
        // line both (`clock`: no clock reading of its own).
        let at = request.arrived.wall;
        if let Some((rule, reason)) = self.expired(named, at).or_else(|| self.revoked(named, at)) {
            return RequestVerdict::Deny { rule, reason };
        }
        let policy = self.shared.policy.load();
        let query = self.query(Some(true)).with_request(HttpRequest {
            method: request.method,
            path: request.path,
            headers: request.headers,
        });
        let decision = self.decide_request(&policy, &query);
        if super::trace::spans_on() {
            tracing::Span::current().record("url.path", request.path);
        }
        self.audit(&policy, &decision, named, at);
        match decision.outcome {
            Outcome::Allow => RequestVerdict::Allow,
            _ => RequestVerdict::Deny {
                rule: decision.rule.to_string(),
                reason: decision.to_string(),
            },
        }
    }
}

/// One decision in this many is timed (per thread, its first among them).
/// A decision takes under a microsecond and timing it two clock readings
/// (tens of nanoseconds each on a VM; `super::clock`), a tenth of the
/// decision, on every request. A histogram of one decision in 16 has the
/// same shape at any rate where that tenth matters;
/// `appid_authz_decisions_total` counts them all.
pub const TIMED_DECISIONS: u32 = 16;

thread_local! {
    /// Decisions this thread made since it last timed one.
    static UNTIMED_DECISIONS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Whether to time the decision about to be made: the first of every
/// [`TIMED_DECISIONS`] on this thread.
fn time_this_decision() -> bool {
    UNTIMED_DECISIONS.with(|untimed| {
        let n = untimed.get();
        untimed.set((n + 1) % TIMED_DECISIONS);
        n == 0
    })
}

/// The instant on the runtime's clock when the wall clock reads `unix`
/// (seconds since the epoch) less `early`, to the nanosecond; now if that
/// has passed. `None` for a time no date holds (past the year 9999, as
/// `i64::MAX`), which callers read as "never".
pub(crate) fn instant_at(unix: i64, early: std::time::Duration) -> Option<tokio::time::Instant> {
    let at = time::OffsetDateTime::from_unix_timestamp(unix).ok()?;
    let left = at - time::OffsetDateTime::now_utc() - early;
    let left = std::time::Duration::try_from(left).unwrap_or(std::time::Duration::ZERO);
    Some(tokio::time::Instant::now() + left)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deny rule about every destination (`from` only) refuses a
    /// destination outside the mesh; in audit mode it lets it through only
    /// where an external rule takes it out of the mesh, and otherwise
    /// leaves it a meshed destination (never plaintext for a meshed
    /// service because a quarantine is being tried out).
    #[test]
    fn a_deny_about_every_destination_refuses_and_audits_by_the_external_rules() {
        let rules = r#"
rules:
  - name: egress-https
    action: allow
    to: { external: { cidrs: ["93.184.216.0/24"], ports: [443] } }
  - name: critical-quarantine
    action: deny
    from: { labels.app: legacy }
"#;
        let mut legacy = AppIdClaims::new("spiffe://t/legacy", "join_token");
        legacy.labels.insert("app".into(), "legacy".into());
        for (mode, internet, meshed) in [
            (
                "enforce",
                ExternalVerdict::Refused,
                ExternalVerdict::Refused,
            ),
            (
                "audit",
                ExternalVerdict::Allow,
                ExternalVerdict::NotExternal,
            ),
        ] {
            let src = format!("version: 1\nmode: {mode}\n{rules}");
            let policy = Policy::load("p.yaml", &src).unwrap();
            for (addr, want) in [("93.184.216.34", internet), ("10.1.1.1", meshed)] {
                let query = Query::external(&legacy, addr.parse().unwrap(), None, 443);
                let verdict = external_verdict(
                    &policy.decide(&query),
                    || policy.metadata_by_name_only(&query),
                    || policy.decide_as_external(&query),
                );
                assert_eq!(verdict, want, "{mode}, {addr}");
            }
        }
    }

    #[test]
    fn instants_of_wall_clock_times() {
        use std::time::Duration;
        let now_unix = time::OffsetDateTime::now_utc().unix_timestamp();
        let before = tokio::time::Instant::now();
        let at = instant_at(now_unix + 10, Duration::from_secs(1)).unwrap();
        let after = tokio::time::Instant::now();
        // Whole seconds of `now_unix` lose up to one.
        assert!(at >= before + Duration::from_secs(8), "{:?}", at - before);
        assert!(at <= after + Duration::from_secs(9));
        let past = instant_at(now_unix - 10, Duration::ZERO).unwrap();
        assert!(past >= before && past <= tokio::time::Instant::now());
        assert_eq!(instant_at(i64::MAX, Duration::ZERO), None);
    }

    /// A thread times its first decision, then one in every
    /// `TIMED_DECISIONS` (each test runs on its own thread).
    #[test]
    fn one_decision_in_sixteen_is_timed() {
        let timed: Vec<bool> = (0..2 * TIMED_DECISIONS + 1)
            .map(|_| time_this_decision())
            .collect();
        let at: Vec<usize> = (0..timed.len()).filter(|&i| timed[i]).collect();
        assert_eq!(at, [0, 16, 32]);
    }

    #[test]
    fn audit_fields_are_cut_on_character_boundaries() {
        assert_eq!(truncate_utf8("/short", AUDIT_FIELD_BYTES), "/short");
        let long = "/".to_string() + &"é".repeat(2000);
        let cut = truncate_utf8(&long, AUDIT_FIELD_BYTES);
        assert!(cut.len() <= AUDIT_FIELD_BYTES && cut.len() >= AUDIT_FIELD_BYTES - 1);
        assert!(long.starts_with(cut));
    }

    #[test]
    fn audit_addresses_are_the_addresses_as_text() {
        let peer_addr: SocketAddr = "[2001:db8::7%3]:41234".parse().unwrap();
        let app_addr: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        let external = Peer::External {
            ip,
            host: Some("api.example".into()),
        };
        let addrs = AuditAddrs::new(peer_addr, Some(app_addr), &external);
        assert_eq!(addrs.peer_addr.as_str(), peer_addr.to_string());
        assert_eq!(
            addrs.app_addr.as_ref().map(AddrText::as_str),
            Some(&*app_addr.to_string())
        );
        assert_eq!(addrs.external_ip.as_deref(), Some("2001:db8::1"));
        let unauthenticated = Peer::Unauthenticated(ip);
        let addrs = AuditAddrs::new(app_addr, None, &unauthenticated);
        assert_eq!(addrs.peer_addr.as_str(), "127.0.0.1:5000");
        assert!(addrs.app_addr.is_none() && addrs.external_ip.is_none());
        // The longest forms fit.
        for longest in [
            "255.255.255.255:65535",
            "0.0.0.0:0",
            "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff%4294967295]:65535",
            "[::ffff:255.255.255.255%4294967295]:65535",
        ] {
            let addr: SocketAddr = longest.parse().unwrap();
            assert_eq!(AddrText::new(addr).as_str(), addr.to_string());
        }
    }

    proptest::proptest! {
        #[test]
        fn an_address_as_text_is_what_display_writes(
            v4 in proptest::prelude::any::<std::net::SocketAddrV4>(),
            v6 in proptest::prelude::any::<std::net::SocketAddrV6>(),
        ) {
            for addr in [SocketAddr::V4(v4), SocketAddr::V6(v6)] {
                let text = AddrText::new(addr);
                proptest::prop_assert_eq!(text.as_str(), addr.to_string());
            }
        }
    }

    #[test]
    fn claims_documents_are_shared_and_dead_ones_swept_without_a_sweep_per_insert() {
        let cache = ClaimsJson::default();
        let claims = |i: usize| Arc::new(AppIdClaims::new(format!("spiffe://t/w{i}"), "manual"));
        let one = claims(0);
        assert!(Arc::ptr_eq(&cache.get(&one), &cache.get(&one)), "shared");
        // Many live entries: they all stay; the next sweep waits until the
        // map has doubled.
        let live: Vec<_> = (1..3000).map(claims).collect();
        for c in &live {
            cache.get(c);
        }
        let locked = cache.by_claims.lock().unwrap();
        assert_eq!(locked.map.len(), 3000);
        assert!(locked.sweep_at >= 2 * ClaimsJson::SWEEP_ABOVE);
        drop(locked);
        // Once they are gone, their entries go at the next sweep.
        drop(live);
        for i in 0..5000 {
            cache.get(&claims(10_000 + i));
        }
        assert!(cache.by_claims.lock().unwrap().map.len() < 5000);
    }
}
