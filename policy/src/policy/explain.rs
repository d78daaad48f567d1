//! `appid policy explain`: the decision, and for every rule which clauses
//! held and which did not.
//!
//! Design bias: *for people, not the hot path*. Explaining checks every
//! clause of every rule (it does not stop at the first failure, and it does
//! not use the index), allocates freely, and reports rules in file order.
//! The decision it shows is the data plane's own ([`Policy::decide`]).

use std::fmt;

use super::Policy;
use super::decision::{Decision, NOT_HTTP_CLAUSE};
use super::eval::MustName;
use super::query::{Http, Query};
use super::rule::{Action, CalleeKind, CallerKind, Rule, Side, kinds_of};

/// How one rule fared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleStatus {
    /// Every clause held.
    Matched,
    /// Every clause up to `http` held; the HTTP request is not known.
    NeedsHttp,
    /// Every clause up to `http` held, and the connection is not HTTP: the
    /// rule makes it HTTP-only (denied unless a matching allow rule has
    /// `to.protocol: tcp`).
    NotHttp,
    /// At least one clause failed.
    Failed,
}

/// One rule's check against the query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleCheck<'p> {
    pub name: &'p str,
    pub action: Action,
    /// Line of the rule in the policy file.
    pub line: usize,
    pub status: RuleStatus,
    /// The clauses that failed, as written (or why the rule does not apply).
    pub failed: Vec<&'p str>,
}

/// A decision with the evidence.
#[derive(Debug, Clone)]
pub struct Explanation<'p> {
    pub decision: Decision<'p>,
    /// Every rule, in file order.
    pub rules: Vec<RuleCheck<'p>>,
}

impl Explanation<'_> {
    /// Rules where all clauses but one held.
    pub fn near_misses(&self) -> impl Iterator<Item = &RuleCheck<'_>> {
        self.rules
            .iter()
            .filter(|r| r.status == RuleStatus::Failed && r.failed.len() == 1)
    }

    /// Rules whose every clause held (including up to `http`, whether the
    /// request is unknown or the connection is not HTTP).
    pub fn matched(&self) -> impl Iterator<Item = &RuleCheck<'_>> {
        self.rules.iter().filter(|r| r.status != RuleStatus::Failed)
    }
}

const CALLER_IN_MESH: &str = "from.unauthenticated (the caller is in the mesh)";
const CALLER_OUTSIDE: &str = "from (the caller is outside the mesh; only from.unauthenticated \
     rules and deny rules without caller claims apply)";
const CALLEE_IN_MESH: &str = "to.external (the destination is in the mesh)";
const CALLEE_OUTSIDE: &str = "to (the destination is outside the mesh; only to.external rules \
     and deny rules without callee claims or http apply)";
const BOTH_OUTSIDE: &str =
    "from, to (a caller outside the mesh cannot call a destination outside it)";
const NOT_NAMING_METADATA: &str = "to.external (the destination is the cloud metadata API, which only rules naming it explicitly allow)";
const NOT_NAMING_CALLER_DOMAIN: &str = "from.trust_domain (the caller is of another trust domain, which only allow rules naming its trust domain, by trust_domain or an id spelling it out, admit)";
const NOT_NAMING_CALLEE_DOMAIN: &str = "to.trust_domain (the callee is of another trust domain, which only allow rules naming its trust domain, by trust_domain or an id spelling it out, admit)";

impl Policy {
    /// The decision for `q` and, for every rule, the clauses that failed.
    pub fn explain(&self, q: &Query<'_>) -> Explanation<'_> {
        let must_name = MustName::of(q, self);
        let mut rules: Vec<RuleCheck<'_>> =
            self.rules.iter().map(|r| check(r, q, must_name)).collect();
        rules.sort_by_key(|r| r.line);
        Explanation {
            decision: self.decide(q),
            rules,
        }
    }
}

fn check<'p>(rule: &'p Rule, q: &Query<'_>, must_name: MustName) -> RuleCheck<'p> {
    let mut failed = Vec::new();
    // Why the rule is not about this kind of caller or callee ([`scope`]).
    //
    // [`scope`]: super::rule::scope
    match kinds_of(q) {
        Some((caller, callee)) => {
            if !rule.caller.includes(caller) {
                failed.push(match caller {
                    CallerKind::Meshed => CALLER_IN_MESH,
                    _ => CALLER_OUTSIDE,
                });
            }
            if !rule.callee.includes(callee) {
                failed.push(match callee {
                    CalleeKind::Meshed => CALLEE_IN_MESH,
                    _ => CALLEE_OUTSIDE,
                });
            }
        }
        None => failed.push(BOTH_OUTSIDE),
    }
    let left_out = must_name.left_out(rule);
    if left_out.metadata {
        failed.push(NOT_NAMING_METADATA);
    }
    match left_out.trust_domain {
        Some(Side::Caller) => failed.push(NOT_NAMING_CALLER_DOMAIN),
        Some(Side::Callee) => failed.push(NOT_NAMING_CALLEE_DOMAIN),
        None => {}
    }
    let request = match &q.http {
        Http::Request(r) => Some(r),
        _ => None,
    };
    for clause in &rule.clauses[..rule.l7_from] {
        if !clause.test.holds(q, None, rule.action) {
            failed.push(&clause.text);
        }
    }
    let mut status = if failed.is_empty() {
        RuleStatus::Matched
    } else {
        RuleStatus::Failed
    };
    if rule.is_l7 {
        match (&q.http, request) {
            (Http::Request(_), Some(r)) => {
                for clause in &rule.clauses[rule.l7_from..] {
                    if !clause.test.holds(q, Some(r), rule.action) {
                        failed.push(&clause.text);
                    }
                }
                if !failed.is_empty() {
                    status = RuleStatus::Failed;
                }
            }
            (Http::NotHttp, _) => {
                if status == RuleStatus::Matched {
                    // Not a failure either: the rule applies to this
                    // connection and makes it HTTP-only.
                    status = RuleStatus::NotHttp;
                } else {
                    failed.push(NOT_HTTP_CLAUSE);
                }
            }
            _ => {
                // Not a failure: the request is not known. The rule either
                // needs it (all else held) or failed elsewhere already.
                if status == RuleStatus::Matched {
                    status = RuleStatus::NeedsHttp;
                }
            }
        }
    }
    RuleCheck {
        name: &rule.name,
        action: rule.action,
        line: rule.mark.line,
        status,
        failed,
    }
}

impl fmt::Display for Explanation<'_> {
    /// The decision, the rules that matched, and the near misses.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "decision: {}", self.decision)?;
        writeln!(f, "rule: {}", self.decision.rule)?;
        let mut attributes = self.decision.attributes().peekable();
        if attributes.peek().is_some() {
            let list: Vec<&str> = attributes.collect();
            writeln!(f, "looked at: {}", list.join(", "))?;
        }
        let matched: Vec<_> = self.matched().collect();
        if !matched.is_empty() {
            writeln!(f, "matching rules:")?;
            for r in matched {
                let note = match r.status {
                    RuleStatus::NeedsHttp => " (up to http; give --method and --path)",
                    RuleStatus::NotHttp => {
                        " (up to http; the connection is not HTTP, which this rule requires)"
                    }
                    RuleStatus::Matched | RuleStatus::Failed => "",
                };
                writeln!(f, "  {} {} (line {}){note}", r.action, r.name, r.line)?;
            }
        }
        let misses: Vec<_> = self.near_misses().collect();
        if !misses.is_empty() {
            writeln!(f, "near misses (one clause failed):")?;
            for r in misses {
                let clause = r.failed.first().copied().unwrap_or("");
                writeln!(f, "  {} {} (line {}): {clause}", r.action, r.name, r.line)?;
            }
        }
        Ok(())
    }
}
