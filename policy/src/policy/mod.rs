//! The AppID policy: load a YAML policy, decide connections and requests.
//!
//! ```yaml
//! version: 1
//! default: deny            # deny | allow (default: deny)
//! mode: enforce            # enforce | audit (default: enforce)
//! rules:
//!   - name: web-to-api
//!     action: allow
//!     from: { id: "spiffe://prod.example/ns/shop/sa/*", vulns.critical: { lte: 0 } }
//!     to:   { labels.app: api, ports: [8080, "9000-9100"] }
//!     http: { methods: [GET], paths: ["/v1/**"], headers: { x-tenant: acme } }
//! ```
//!
//! # Semantics
//!
//! **Who is who.** `from` selects the *caller* and `to` the *callee*, in
//! both directions: inbound the peer is the caller and the local workload
//! the callee, outbound the other way round. Keys are flattened claim paths
//! (`id`, `labels.app`, `vulns.critical`, `cloud.tags.env`,
//! `reported.process.uid`; module `attr`), plus four reserved keys:
//! `from.unauthenticated` (a caller outside the mesh, by source CIDR; only
//! ever inbound), `to.ports` (absent = any port), `to.protocol` (`tcp` or
//! `http`; see "HTTP-only connections") and `to.external` (a
//! destination outside the mesh: `cidrs`, `hosts` globs against the SNI or
//! `Host` the app sent, `ports`; only ever outbound). An allow rule without
//! `from.unauthenticated` is about meshed callers only, and one without
//! `to.external` about meshed callees only. A deny rule holds wherever its
//! clauses can be checked: without caller claims (no `from`) it is about
//! callers outside the mesh too, and without callee claims and without
//! `http` (no `to`, or `to.ports` only) about destinations outside the mesh
//! too, its `to.ports` then checked against the destination's port (see
//! "Outside the mesh"). The IP address of a meshed peer is never looked at:
//! [`Query`] cannot even carry it.
//!
//! **A rule matches** when every clause holds (a map is an AND, a list an
//! OR). Selector values: a plain value means equals (a glob if it contains
//! `*`), a list means any of,
//! and the operators are `in`, `not_in`, `glob`, `exists`, `lt`, `lte`,
//! `gt`, `gte`, `not` (module `selector` has a table for each, including
//! missing attributes). **Numeric operators on a missing or non-numeric attribute do
//! not match, and `not` of them therefore does**: `vulns.critical: {lte: 0}`
//! fails for a workload without scan results, and
//! `{not: {gt: 0}}` passes for it — write the former to require a scan.
//!
//! **Deciding.**
//! 1. A matching `deny` rule wins over any `allow`.
//! 2. Otherwise a matching `allow` rule allows.
//! 3. Otherwise the policy's `default` decides.
//!
//! When several rules of the deciding kind match, the decision names the
//! one whose name sorts first, so the order of rules in the file never
//! changes a decision.
//!
//! **Peers of another trust domain.** A federated peer's claims are what
//! *its* authority vouched for, and that authority can write any label.
//! So when the peer (the caller inbound, the callee outbound) is of another
//! trust domain than the local workload, an allow rule counts only if it
//! names trust domains on the peer's side (`from` inbound, `to` outbound):
//! with a `trust_domain` clause (whatever value it tests, so `trust_domain:
//! "*"` takes every federated domain's word) or an `id` clause whose IDs all
//! spell their trust domain out (`id: spiffe://aws.example/web`,
//! `spiffe://aws.example/**`; not `spiffe://*/web`); and `default: allow`
//! does not admit the peer. Deny rules apply to every peer. Such a
//! default denial has [`Reason::ForeignTrustDomain`]; `mode: audit` allows
//! it like any other would-be denial. A rule without `trust_domain` thus
//! speaks for the local trust domain only: `from: { labels.app: web }`
//! does not admit another domain's `app: web`.
//!
//! **HTTP.** A rule with `http` (or `to.protocol: http`, the same as an
//! empty `http: {}`) matches HTTP requests only. At connection time
//! ([`Http::Unknown`]) such a rule whose other clauses match cannot be
//! decided yet; the connection decision is [`Outcome::DeferToL7`] whenever
//! it could change the outcome: a deny rule with `http`, or an allow rule
//! with `http` when no plain rule allows. If nothing could allow (no allow
//! rule matches and `default: deny`) the connection is denied at once. Each
//! request is then decided with [`Http::Request`].
//!
//! **HTTP-only connections.** A connection that a rule with `http` (allow
//! or deny) applies to in everything but its `http` part is HTTP-only: if
//! it turns out not to be HTTP ([`Http::NotHttp`]) it is denied with
//! [`Reason::RequiresHttp`], naming that rule (the first by name), even if a
//! plain allow rule matches and even under `default: allow`. A matching
//! plain deny rule still decides first. To accept non-HTTP traffic there
//! too, put `to.protocol: tcp` on a matching allow rule: that rule then
//! allows connections that are not HTTP (only allow rules, and not together
//! with `http`). Otherwise a non-HTTP connection is decided like any other
//! (deny, then allow, then `default`). Decisions with [`Http::Unknown`] and
//! [`Http::Request`] do not depend on `to.protocol: tcp`.
//!
//! **Requests.** Methods compare exactly; a method with a lower-case letter
//! is a load error (the sidecar refuses such requests, so the rule could
//! never match). `http.paths` globs compare against the canonical path the
//! sidecar computed (anything from `?` on is ignored), case-sensitively
//! unless the policy says `paths_case_insensitive: true`: then they ignore
//! ASCII case, so `/ADMIN/x` meets `/admin/**` (for apps that route that
//! way). In a **deny** rule a path pattern also holds for the path with one
//! trailing `/` (`/admin` for `/admin/`: many servers route both alike),
//! as a deny of `GET` also holds for `HEAD`; allows hold only for what they
//! name. Header names ignore case and treat `_` as `-` (`x_debug` in a rule
//! is `x-debug`, and so is an `X_Debug` request header). A header's
//! *elements* are the comma-separated items of all its field lines, trimmed,
//! empty ones ignored; a value that is not UTF-8 is compared with its
//! invalid bytes replaced (U+FFFD). A header clause in a **deny** rule
//! holds when any element, or any whole line, matches one of its globs; in
//! an **allow** rule only when there is at least one element and every
//! element matches. So a second `x-debug: 1` line or an `x-debug: 0, 1`
//! list meets `deny x-debug: 1`, and `x-tenant: acme, evil` does not meet
//! `allow x-tenant: acme`.
//!
//! **Outside the mesh.** A caller outside the mesh is allowed only by rules
//! with `from.unauthenticated`, a destination outside it only by rules with
//! `to.external`: an allow rule is about what it names, and widening one
//! would let in what its author never looked at. A matching deny always
//! wins, so a deny rule is about every caller and callee its clauses can
//! be checked against: `deny to: { ports: [6060] }` holds for a load
//! balancer a `from.unauthenticated` rule admits, and `deny from: {
//! labels.app: legacy }` for `legacy`'s connections out of the mesh (as
//! `from.unauthenticated` cannot be checked against a meshed caller, a
//! claim cannot be checked against a caller or destination outside the
//! mesh: a deny rule with one is not about it). A deny rule with `http` is
//! about meshed callees only: the sidecar passes traffic out of the mesh
//! without reading its HTTP, so those clauses could not be checked there
//! (write a deny rule without `http`, or with `to.external`, to stop it).
//! In audit mode such a rule's would-be denial of a destination outside
//! the mesh does not make it one ([`Policy::decide_as_external`]). The
//! cloud metadata API and the credential endpoints
//! beside it (169.254.169.254, 169.254.170.2, 169.254.170.23,
//! 100.100.100.200, fd00:ec2::254, fd00:ec2::23, fd20:ce::254,
//! metadata.google.internal, `metadata`, `instance-data`) are denied —
//! even under `default: allow` — unless an allow rule names it explicitly:
//! a `to.external.cidrs` entry that is exactly that address (`/32`,
//! `/128`) or a `hosts` entry naming it (`169.254.169.254`,
//! `metadata.google.internal`). A rule opens only what it names (the name
//! the app gave, else the address): naming ECS's 169.254.170.2 beside
//! `0.0.0.0/0` does not open 169.254.169.254. `0.0.0.0/0` does not count. Such a denial has [`Reason::MetadataApi`].
//!
//! **Audit mode.** With `mode: audit` every would-be denial (a
//! [`Reason::RequiresHttp`] one too) is allowed and marked
//! [`Decision::audit_only`]; the rule and reason are those of the denial.
//! The metadata API's refusal ([`Reason::MetadataApi`]) is the exception:
//! it holds in audit mode, as under `default: allow` (a policy being tried
//! out must not open what only a rule naming it may).
//!
//! **Loading** is all or nothing: [`Policy::load`] returns a complete
//! policy or every error, each naming file, line, column and what to write
//! instead. Unknown keys, unknown claim paths and operators, bad globs and
//! CIDRs, port ranges out of order, duplicate rule names, `http` or
//! `to.protocol` with `to.external`, `to.protocol: tcp` on a deny rule or
//! with `http`, lower-case methods and one header named twice (`x_debug`
//! and `x-debug`) are all errors.
//!
//! **Deciding fast.** Rules are indexed by exact claim values, glob
//! prefixes and ports (module `index`), so a decision looks at the few
//! rules that could match, and allocates nothing.
//!
//! # Modules
//! - `yaml`: YAML into a tree of nodes with positions.
//! - `load`: that tree into validated rules, with every error.
//! - `attr`, `selector`, `glob`: claim paths, selector values, globs.
//! - `rule`: one rule and how its clauses are checked.
//! - `index`: which rules a query could match.
//! - `eval`, `decision`: the semantics above and their result.
//! - `connection`: per-request decisions that reuse what a connection
//!   settled (the index's answer, every clause before `http`).
//! - `explain`: every rule against one query, for people.

mod attr;
mod connection;
mod decision;
mod error;
mod eval;
mod explain;
mod glob;
mod index;
mod load;
mod query;
mod rule;
mod selector;
mod yaml;

#[cfg(test)]
mod tests;

use std::fmt;

pub use connection::ConnectionRules;
pub use decision::{
    DEFAULT_RULE, Decision, EXPIRED_RULE, INVALID_REQUEST_RULE, Miss, NOT_HTTP_CLAUSE, Outcome,
    REVOKED_RULE, Reason, SIDECAR_RULE_NAMES, Why,
};
pub use error::{PolicyError, PolicyErrors};
pub use explain::{Explanation, RuleCheck, RuleStatus};
pub use load::Mode;
pub use query::{
    Callee, Caller, Direction, Headers, Http, HttpRequest, NoHeaders, Query, decoded_in_paths,
    header_name_matches, is_host_name, is_metadata_ip, is_unreserved, metadata_api_addresses,
    normalize_host, push_percent_encoded,
};
pub use rule::Action;

use error::Diags;
use index::Index;
pub use index::IndexStats;
use rule::Rule;
use yaml::Mark;

/// Most rules a policy may have.
pub const MAX_RULES: usize = 1_000_000;

/// Largest policy file accepted (bytes).
pub const MAX_POLICY_BYTES: usize = 16 << 20;

/// A loaded, validated and indexed policy. Immutable; share it across
/// threads (`Arc<Policy>`) and swap the whole thing on reload.
#[derive(Debug)]
pub struct Policy {
    file: Box<str>,
    default: Action,
    mode: Mode,
    paths_case_insensitive: bool,
    /// Sorted by name: a rule's id is its rank.
    rules: Box<[Rule]>,
    /// One per caller/callee kind: see `eval::partition`.
    index: [Index; 3],
    /// Unique per load ([`ConnectionRules`] tell policies apart by it).
    generation: u64,
    /// The rules with `to.external.hosts` (ids into `rules`).
    external_host_rules: Box<[usize]>,
    /// The trust domains whose peers are not foreign, beside the local
    /// workload's own: see [`Policy::with_home_trust_domains`].
    home_trust_domains: Box<[Box<str>]>,
}

impl Policy {
    /// Parses, validates and indexes a policy. `file_name` is only used in
    /// error messages. Either the whole policy or every error.
    pub fn load(file_name: &str, yaml: &str) -> Result<Policy, PolicyErrors> {
        if yaml.len() > MAX_POLICY_BYTES {
            let mut d = Diags::default();
            d.push(
                Mark { line: 1, column: 1 },
                format!(
                    "the file is {} bytes, more than the {MAX_POLICY_BYTES} supported",
                    yaml.len()
                ),
                "merge rules with lists of values, or split the policy",
            );
            return Err(d.into_errors(file_name));
        }
        let loaded = load::load(yaml).map_err(|d| d.into_errors(file_name))?;
        if loaded.rules.len() > MAX_RULES {
            let mut d = Diags::default();
            d.push(
                Mark { line: 1, column: 1 },
                format!(
                    "{} rules is more than the {MAX_RULES} supported",
                    loaded.rules.len()
                ),
                "merge rules with lists of values",
            );
            return Err(d.into_errors(file_name));
        }
        let mut rules = loaded.rules;
        rules.sort_by(|a, b| a.name.cmp(&b.name));
        // Ids ascend in each partition; a rule may be in several.
        let members = eval::PARTITIONS.map(|(caller, callee)| {
            (0..rules.len())
                .filter(|&id| rules[id].is_about(caller, callee))
                .map(eval::id_of)
                .collect::<Vec<u32>>()
        });
        let index = members.map(|m| Index::build(&rules, &m));
        let external_host_rules = (0..rules.len())
            .filter(|&id| rules[id].names_external_hosts())
            .collect();
        Ok(Policy {
            file: file_name.into(),
            default: loaded.default,
            mode: loaded.mode,
            paths_case_insensitive: loaded.paths_case_insensitive,
            rules: rules.into(),
            index,
            generation: connection::next_generation(),
            external_host_rules,
            home_trust_domains: Box::default(),
        })
    }

    /// This policy, with `domains` as the trust domains whose peers are
    /// the local authority's own: a sidecar's `trust_domains`, every one
    /// of which its own authority's roots vouch for (aliases while a trust
    /// domain is renamed, say). A peer of one of them is not foreign, so
    /// rules need not name its trust domain to admit it; a peer of any
    /// other domain (a federated authority's) is. Without this, only the
    /// local workload's own trust domain is home (`appid policy explain`
    /// without `--trust-domain`, tests).
    pub fn with_home_trust_domains<D: Into<Box<str>>>(
        mut self,
        domains: impl IntoIterator<Item = D>,
    ) -> Policy {
        self.home_trust_domains = domains.into_iter().map(Into::into).collect();
        // Connections settled with the old answer must not reuse it.
        self.generation = connection::next_generation();
        self
    }

    /// The trust domains given to [`Policy::with_home_trust_domains`].
    pub fn home_trust_domains(&self) -> impl Iterator<Item = &str> {
        self.home_trust_domains.iter().map(AsRef::as_ref)
    }

    /// Whether the name an app gives for a connection outside the mesh
    /// (its SNI or `Host`) could change the decision on `query` (the
    /// connection without it): some rule with `to.external.hosts` is about
    /// this caller and callee, and all its other connection clauses hold.
    /// When none is, the sidecar need not wait for the app's first bytes
    /// to learn the name (a server-first protocol would wait for nothing).
    pub fn external_name_could_matter(&self, query: &Query<'_>) -> bool {
        self.external_host_rules.iter().any(|&id| {
            let rule = &self.rules[id];
            rule.applies_to(query) && rule.holds_but_for_external_hosts(query)
        })
    }

    /// The file name given to [`Policy::load`].
    pub fn file_name(&self) -> &str {
        &self.file
    }

    pub fn default_action(&self) -> Action {
        self.default
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// `paths_case_insensitive: true`: `http.paths` compare ignoring ASCII
    /// case (the app routes `/ADMIN` like `/admin`).
    pub fn paths_case_insensitive(&self) -> bool {
        self.paths_case_insensitive
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Rule names, sorted.
    pub fn rule_names(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| &*r.name)
    }

    /// A one-line summary, e.g. `policy.yaml: 12 rules (9 allow, 3 deny,
    /// 2 with http), default deny, mode enforce` (and `, paths
    /// case-insensitive` when they are).
    pub fn summary(&self) -> Summary<'_> {
        Summary(self)
    }

    /// How the rules were indexed (for `policy check` and tests). A rule
    /// in several partitions ([`eval::PARTITIONS`]) counts once under each
    /// way it is filed.
    pub fn index_stats(&self) -> IndexStats {
        index::stats(&self.index)
    }
}

/// See [`Policy::summary`].
pub struct Summary<'p>(&'p Policy);

impl fmt::Display for Summary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self.0;
        let allow = p.rules.iter().filter(|r| r.action == Action::Allow).count();
        let l7 = p.rules.iter().filter(|r| r.is_l7).count();
        let n = p.rules.len();
        write!(
            f,
            "{}: {n} rule{} ({allow} allow, {} deny, {l7} with http), default {}, mode {}",
            p.file,
            if n == 1 { "" } else { "s" },
            n - allow,
            p.default,
            p.mode
        )?;
        if p.paths_case_insensitive {
            f.write_str(", paths case-insensitive")?;
        }
        Ok(())
    }
}
