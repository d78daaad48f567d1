//! Per-request decisions on one connection, without checking again what
//! the connection settled.
//!
//! Design bias: *what cannot change within a connection is checked once*.
//! A connection's caller, callee and port are fixed for its life, so which
//! rules the index offers and every clause before a rule's `http` part
//! come out the same for each of its requests. [`Policy::connection_rules`]
//! does that work once and keeps what can still matter; [`ConnectionRules::decide`] then checks only the
//! `http` clauses of the rules that passed and fills the same tally as
//! [`Policy::decide`] (a property test checks that the two agree on every
//! query). Rules are made from one policy and decide only with it: given
//! another (a reload), they decide from scratch.

use std::sync::atomic::{AtomicU64, Ordering};

use super::Policy;
use super::decision::Decision;
use super::eval::{MustName, Tally, partition};
use super::query::Query;
use super::rule::{Action, Eval};

/// Tells policies apart: each [`Policy::load`] takes the next number.
static GENERATIONS: AtomicU64 = AtomicU64::new(1);

pub(crate) fn next_generation() -> u64 {
    GENERATIONS.fetch_add(1, Ordering::Relaxed)
}

/// What one connection settled about the rules of one policy: which of
/// the rules the index offers for its caller, callee and port pass every
/// clause before `http`, and the one failure among the rest that a
/// decision could still name. Small whatever the policy's size: rules that
/// failed are not kept one by one.
#[derive(Debug)]
pub struct ConnectionRules {
    /// The policy's [`Policy::generation`].
    generation: u64,
    /// What an allow rule must name to count for the connection (the
    /// metadata API, a foreign peer's trust domain).
    must_name: MustName,
    /// The rules whose clauses before `http` all hold.
    passed: Box<[u32]>,
    /// Of the allow rules that failed before `http`, the one that got
    /// furthest (then the smallest id) with its failed clause: the only
    /// one of them a decision can name (the closest miss of a default
    /// denial, [`Tally::record`]). A deny rule that fails is never named.
    closest_miss: Option<(u32, usize)>,
    /// Debug builds: what of the connection's query a later query must
    /// repeat ([`ConnectionRules::decide`]'s precondition), as far as it is
    /// cheap to compare.
    #[cfg(debug_assertions)]
    made_for: MadeFor,
}

/// The direction, kind of caller and callee, and port of the query
/// [`ConnectionRules`] were made for.
#[cfg(debug_assertions)]
type MadeFor = (super::query::Direction, Option<usize>, u16);

#[cfg(debug_assertions)]
fn made_for(q: &Query<'_>) -> MadeFor {
    (q.direction, partition(q), q.port)
}

impl ConnectionRules {
    /// Whether these rules were made from `policy`.
    pub fn are_from(&self, policy: &Policy) -> bool {
        self.generation == policy.generation
    }

    /// The decision [`Policy::decide`] makes for `q`, which must have the
    /// caller, callee and port these rules were made for (its `http` may
    /// differ). With a policy they were not made from, `policy.decide(q)`.
    pub fn decide<'p>(&self, policy: &'p Policy, q: &Query<'_>) -> Decision<'p> {
        #[cfg(debug_assertions)]
        debug_assert_eq!(
            made_for(q),
            self.made_for,
            "a request decided with rules made for another connection"
        );
        if !self.are_from(policy) {
            return policy.decide(q);
        }
        let mut tally = Tally::new(self.must_name);
        for &id in &self.passed {
            let rule = &policy.rules[id as usize];
            if !tally.passes_over(id, rule) {
                tally.record(id, rule, rule.eval_after_l4(q));
            }
        }
        if let Some((id, clause)) = self.closest_miss {
            let rule = &policy.rules[id as usize];
            if !tally.passes_over(id, rule) {
                tally.record(id, rule, Eval::Fail(clause));
            }
        }
        tally.finish(policy)
    }
}

impl Policy {
    /// The rules that could decide a request on a connection with `q`'s
    /// caller, callee and port, checked up to their `http` part (`q.http`
    /// is not looked at): see [`ConnectionRules::decide`].
    pub fn connection_rules(&self, q: &Query<'_>) -> ConnectionRules {
        let must_name = MustName::of(q, self);
        let mut passed = Vec::new();
        let mut closest_miss: Option<(u32, usize)> = None;
        if let Some(p) = partition(q) {
            self.index[p].candidates(q, |id| {
                let rule = &self.rules[id as usize];
                match rule.failed_l4_clause(q) {
                    None => passed.push(id),
                    // Recorded as nothing ([`Tally::record`]).
                    Some(_) if rule.action == Action::Deny => {}
                    // Never looked at for this connection ([`Tally::passes_over`]).
                    Some(_) if must_name.passes_over(rule) => {}
                    Some(clause) => {
                        let further = closest_miss.is_none_or(|(best, best_clause)| {
                            clause > best_clause || (clause == best_clause && id < best)
                        });
                        if further {
                            closest_miss = Some((id, clause));
                        }
                    }
                }
            });
        }
        ConnectionRules {
            generation: self.generation,
            must_name,
            passed: passed.into(),
            closest_miss,
            #[cfg(debug_assertions)]
            made_for: made_for(q),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AppIdClaims;
    use crate::policy::{Direction, HttpRequest, NoHeaders, Outcome};

    fn claims(id: &str, app: &str) -> AppIdClaims {
        let mut c = AppIdClaims::new(id, "join_token");
        c.labels.insert("app".into(), app.into());
        c
    }

    const POLICY: &str = r#"version: 1
rules:
  - name: get-only
    action: allow
    from: { labels.app: web }
    to: { labels.app: api, ports: [80] }
    http: { methods: [GET] }
  - name: no-admin
    action: deny
    from: { labels.app: web }
    http: { paths: ["/admin/**"] }
"#;

    #[test]
    fn requests_are_decided_as_policy_decides_them() {
        let p = Policy::load("p.yaml", POLICY).unwrap();
        let (web, api) = (
            claims("spiffe://t/web", "web"),
            claims("spiffe://t/api", "api"),
        );
        for port in [80, 81] {
            let q = Query::meshed(Direction::Inbound, &web, &api, port);
            let rules = p.connection_rules(&q);
            assert!(rules.are_from(&p));
            for (method, path) in [("GET", "/x"), ("POST", "/x"), ("GET", "/admin/a")] {
                let q = q.with_request(HttpRequest {
                    method,
                    path,
                    headers: &NoHeaders,
                });
                let (a, b) = (rules.decide(&p, &q), p.decide(&q));
                assert_eq!(
                    (a.outcome, a.rule, &a.reason),
                    (b.outcome, b.rule, &b.reason)
                );
            }
        }
        let q = Query::meshed(Direction::Inbound, &web, &api, 80);
        let get = q.with_request(HttpRequest {
            method: "GET",
            path: "/x",
            headers: &NoHeaders,
        });
        assert_eq!(
            p.connection_rules(&q).decide(&p, &get).outcome,
            Outcome::Allow
        );
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "rules made for another connection")]
    fn rules_of_one_connection_refuse_another_connections_requests() {
        let p = Policy::load("p.yaml", POLICY).unwrap();
        let (web, api) = (
            claims("spiffe://t/web", "web"),
            claims("spiffe://t/api", "api"),
        );
        let rules = p.connection_rules(&Query::meshed(Direction::Inbound, &web, &api, 80));
        let other_port = Query::meshed(Direction::Inbound, &web, &api, 81);
        rules.decide(&p, &other_port);
    }

    #[test]
    fn rules_of_another_policy_decide_from_scratch() {
        // After a reload the allow rule is about another callee: rules made
        // from the old policy would still pass its `to` clause.
        let old = Policy::load("p.yaml", POLICY).unwrap();
        let new = Policy::load("p.yaml", &POLICY.replace("app: api", "app: db")).unwrap();
        let (web, api) = (
            claims("spiffe://t/web", "web"),
            claims("spiffe://t/api", "api"),
        );
        let q = Query::meshed(Direction::Inbound, &web, &api, 80);
        let rules = old.connection_rules(&q);
        assert!(!rules.are_from(&new));
        let get = q.with_request(HttpRequest {
            method: "GET",
            path: "/x",
            headers: &NoHeaders,
        });
        assert_eq!(rules.decide(&old, &get).outcome, Outcome::Allow);
        assert_eq!(rules.decide(&new, &get).outcome, Outcome::Deny);
    }
}
