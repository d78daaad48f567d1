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
//! `reported.process.uid`; module `attr`), plus three reserved keys:
//! `from.unauthenticated` (a caller outside the mesh, by source CIDR; only
//! ever inbound), `to.ports` (absent = any port) and `to.external` (a
//! destination outside the mesh: `cidrs`, `hosts` globs against the SNI or
//! `Host` the app sent, `ports`; only ever outbound). A rule without
//! `from.unauthenticated` is about meshed callers only, and one without
//! `to.external` about meshed callees only. The IP address of a meshed peer
//! is never looked at: [`Query`] cannot even carry it.
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
//! **HTTP.** A rule with `http` never matches a connection that is not HTTP
//! ([`Http::NotHttp`]; the decision's `closest` says so). At connection time
//! ([`Http::Unknown`]) a rule with `http` whose other clauses match cannot be
//! decided yet; the connection decision is [`Outcome::DeferToL7`] whenever
//! such a rule could change the outcome: a deny rule with `http`, or an
//! allow rule with `http` when no plain rule allows. If nothing could allow
//! (no allow rule matches and `default: deny`) the connection is denied at
//! once. Each request is then decided with [`Http::Request`].
//!
//! **Outside the mesh.** A caller outside the mesh is only matched by rules
//! with `from.unauthenticated`, a destination outside it only by rules with
//! `to.external`. The cloud metadata API (169.254.169.254, fd00:ec2::254,
//! metadata.google.internal) is denied — even under `default: allow` —
//! unless an allow rule names it explicitly: a `to.external.cidrs` entry
//! that is exactly that host (`/32`, `/128`) or a `hosts` entry
//! `169.254.169.254` or `metadata.google.internal`. `0.0.0.0/0` does not
//! count. Such a denial has [`Reason::MetadataApi`].
//!
//! **Audit mode.** With `mode: audit` every would-be denial is allowed and
//! marked [`Decision::audit_only`]; the rule and reason are those of the
//! denial.
//!
//! **Loading** is all or nothing: [`Policy::load`] returns a complete
//! policy or every error, each naming file, line, column and what to write
//! instead. Unknown keys, unknown claim paths and operators, bad globs and
//! CIDRs, port ranges out of order, duplicate rule names and `http` with
//! `to.external` are all errors.
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
//! - `explain`: every rule against one query, for people.

mod attr;
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

pub use decision::{DEFAULT_RULE, Decision, Miss, NOT_HTTP_CLAUSE, Outcome, Reason, Why};
pub use error::{PolicyError, PolicyErrors};
pub use explain::{Explanation, RuleCheck, RuleStatus};
pub use load::Mode;
pub use query::{Callee, Caller, Direction, Headers, Http, HttpRequest, NoHeaders, Query};
pub use rule::Action;

use error::Diags;
use index::Index;
pub use index::IndexStats;
use rule::Rule;
use yaml::Mark;

/// Most rules a policy may have.
pub const MAX_RULES: usize = 1_000_000;

/// A loaded, validated and indexed policy. Immutable; share it across
/// threads (`Arc<Policy>`) and swap the whole thing on reload.
#[derive(Debug)]
pub struct Policy {
    file: Box<str>,
    default: Action,
    mode: Mode,
    /// Sorted by name: a rule's id is its rank.
    rules: Box<[Rule]>,
    /// One per caller/callee kind: see `eval::partition`.
    index: [Index; 3],
}

impl Policy {
    /// Parses, validates and indexes a policy. `file_name` is only used in
    /// error messages. Either the whole policy or every error.
    pub fn load(file_name: &str, yaml: &str) -> Result<Policy, PolicyErrors> {
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
        let mut members: [Vec<u32>; 3] = Default::default();
        for (id, rule) in rules.iter().enumerate() {
            let p = match (rule.caller, rule.callee) {
                (rule::CallerKind::Meshed, rule::CalleeKind::Meshed) => 0,
                (rule::CallerKind::Unauthenticated, rule::CalleeKind::Meshed) => 1,
                (rule::CallerKind::Meshed, rule::CalleeKind::External) => 2,
                // Refused by the loader.
                (rule::CallerKind::Unauthenticated, rule::CalleeKind::External) => continue,
            };
            members[p].push(eval::id_of(id));
        }
        let index = members.map(|m| Index::build(&rules, &m));
        Ok(Policy {
            file: file_name.into(),
            default: loaded.default,
            mode: loaded.mode,
            rules: rules.into(),
            index,
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
    /// 2 with http), default deny, mode enforce`.
    pub fn summary(&self) -> Summary<'_> {
        Summary(self)
    }

    /// How the rules were indexed (for `policy check` and tests).
    pub fn index_stats(&self) -> IndexStats {
        let mut total = IndexStats::default();
        for i in &self.index {
            let s = i.stats();
            total.by_value += s.by_value;
            total.by_prefix += s.by_prefix;
            total.by_port += s.by_port;
            total.unindexed += s.unindexed;
        }
        total
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
        )
    }
}
