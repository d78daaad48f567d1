//! Turning the rules that match into one decision.
//!
//! Design bias: *one tally, several ways to fill it*. [`Tally`] is the whole
//! of the semantics (deny wins, then allow, then default; L7 deferral;
//! HTTP-only connections; the metadata API; audit mode). The data plane
//! fills it from the index's candidates (per request, from what the
//! connection settled about them: `super::connection`); tests and
//! `explain` fill it from a scan of every rule; the property tests check
//! that all agree. Among several matching rules of the
//! winning kind the one whose name sorts first is named (rule ids are ranks
//! by name), so no decision depends on the order rules are written in.

use super::Policy;
use super::attr::trust_domain_of;
use super::decision::{DEFAULT_RULE, Decision, Miss, Outcome, Reason};
use super::load::Mode;
use super::query::{Callee, Caller, Direction, MetadataTarget, Query, metadata_target};
use super::rule::{Action, CalleeKind, CallerKind, Eval, Rule, Side, kinds_of};

/// The partitions of rules, one index each, by the kinds of caller and
/// callee a query has. A rule is filed in every partition it is about
/// ([`Rule::is_about`]: a deny rule without caller claims in the first two,
/// say); a query looks in one only, so it still meets each rule once.
pub(crate) const PARTITIONS: [(CallerKind, CalleeKind); 3] = [
    (CallerKind::Meshed, CalleeKind::Meshed),
    (CallerKind::Unauthenticated, CalleeKind::Meshed),
    (CallerKind::Meshed, CalleeKind::External),
];

/// Which partition (and index) a query belongs to; `None` for a
/// combination no rule can describe.
pub(crate) fn partition(q: &Query<'_>) -> Option<usize> {
    let kinds = kinds_of(q)?;
    PARTITIONS.iter().position(|p| *p == kinds)
}

pub(crate) fn targets_metadata_api(q: &Query<'_>) -> Option<MetadataTarget> {
    match q.callee {
        Callee::External { ip, host } => metadata_target(ip, host),
        Callee::Meshed(_) => None,
    }
}

/// What an allow rule must name to be looked at for one query: the
/// metadata API, when that is the destination; the peer's trust domain,
/// when the peer is foreign: of another trust domain than the local
/// workload's and the policy's home ones ([`Policy::with_home_trust_domains`]). A
/// rule that does not name them cannot allow the query, and `default:
/// allow` does not either. Fixed for a connection (caller, callee, port).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct MustName {
    pub metadata: Option<MetadataTarget>,
    /// The side (`from` inbound, `to` outbound) of a peer whose trust
    /// domain is not the local workload's.
    pub foreign_peer: Option<Side>,
}

impl MustName {
    pub fn of(q: &Query<'_>, policy: &Policy) -> MustName {
        MustName {
            metadata: targets_metadata_api(q),
            foreign_peer: foreign_peer(q, &policy.home_trust_domains),
        }
    }

    /// What an allow rule leaves out of what this query needs named
    /// (nothing for deny rules: they always count).
    pub fn left_out(&self, rule: &Rule) -> LeftOut {
        if rule.action == Action::Deny {
            return LeftOut::default();
        }
        LeftOut {
            metadata: self
                .metadata
                .is_some_and(|target| !rule.opens_metadata(&target)),
            trust_domain: self
                .foreign_peer
                .filter(|&side| !rule.names_trust_domain(side)),
        }
    }

    /// Whether an allow rule leaves out something this query needs named.
    pub fn passes_over(&self, rule: &Rule) -> bool {
        self.left_out(rule) != LeftOut::default()
    }
}

/// What a rule does not name that a query needs ([`MustName::left_out`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct LeftOut {
    /// The metadata API the query's destination is.
    pub metadata: bool,
    /// The trust domain of the foreign peer on this side.
    pub trust_domain: Option<Side>,
}

/// The side of a meshed peer (the other side of the query) whose trust
/// domain is neither the local workload's nor one of `home`. A peer whose
/// ID has no trust domain while ours has one counts as foreign.
fn foreign_peer(q: &Query<'_>, home: &[Box<str>]) -> Option<Side> {
    let (Caller::Meshed(caller), Callee::Meshed(callee)) = (q.caller, q.callee) else {
        return None;
    };
    let (local, peer, side) = match q.direction {
        Direction::Inbound => (callee, caller, Side::Caller),
        Direction::Outbound => (caller, callee, Side::Callee),
    };
    let peer_domain = trust_domain_of(&peer.id);
    if peer_domain == trust_domain_of(&local.id)
        || peer_domain.is_some_and(|d| home.iter().any(|h| **h == *d))
    {
        return None;
    }
    Some(side)
}

/// What the rules looked at so far say. Each slot holds the smallest id.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    /// A deny rule matched fully.
    deny: Option<u32>,
    /// A deny rule with `http` matched up to `http`; the request is unknown.
    deny_l7: Option<u32>,
    allow: Option<u32>,
    allow_l7: Option<u32>,
    /// A rule with `http` (allow or deny) matched up to `http` on a
    /// connection that is not HTTP: the connection is HTTP-only.
    http_only: Option<u32>,
    /// A matching allow rule has `to.protocol: tcp`: non-HTTP traffic is
    /// accepted even where a rule with `http` applies.
    non_http_allowed: bool,
    /// The allow rule that got furthest: (clauses passed, id, failed clause).
    closest: Option<(usize, u32, usize)>,
    /// What an allow rule must name to count for this query.
    must_name: MustName,
    /// Pass over deny rules without `to.external` ([`Policy::decide_as_external`]).
    external_denies_only: bool,
}

fn keep_min(slot: &mut Option<u32>, id: u32) {
    if slot.is_none_or(|s| id < s) {
        *slot = Some(id);
    }
}

impl Tally {
    pub fn new(must_name: MustName) -> Tally {
        Tally {
            must_name,
            ..Tally::default()
        }
    }

    /// Looks at one rule (which must apply to the query's kinds).
    pub fn consider(&mut self, id: u32, rule: &Rule, q: &Query<'_>) {
        if !self.passes_over(id, rule) {
            self.record(id, rule, rule.eval(q));
        }
    }

    /// Whether rule `id` cannot change what is recorded so far, or must not
    /// be looked at: then [`Tally::record`] is not called for it.
    pub fn passes_over(&self, id: u32, rule: &Rule) -> bool {
        match rule.action {
            Action::Deny if self.external_denies_only => {
                rule.callee != CalleeKind::External || self.deny.is_some_and(|d| d < id)
            }
            // A smaller deny already decides.
            Action::Deny => self.deny.is_some_and(|d| d < id),
            // Once a deny matched, allows cannot change the outcome.
            Action::Allow if self.deny.is_some() => true,
            // The metadata API only opens to rules that name it, a peer
            // of another trust domain only to rules that name its domain.
            Action::Allow => self.must_name.passes_over(rule),
        }
    }

    /// Records how rule `id` relates to the query.
    pub fn record(&mut self, id: u32, rule: &Rule, eval: Eval) {
        match (rule.action, eval) {
            (Action::Deny, Eval::Match) => keep_min(&mut self.deny, id),
            (Action::Deny, Eval::NeedsHttp) => keep_min(&mut self.deny_l7, id),
            (Action::Allow, Eval::Match) => {
                keep_min(&mut self.allow, id);
                self.non_http_allowed |= rule.allows_non_http;
            }
            (Action::Allow, Eval::NeedsHttp) => keep_min(&mut self.allow_l7, id),
            (_, Eval::NotHttp) => keep_min(&mut self.http_only, id),
            (Action::Allow, Eval::Fail(clause)) => {
                let better = match self.closest {
                    None => true,
                    Some((passed, best, _)) => clause > passed || (clause == passed && id < best),
                };
                if better {
                    self.closest = Some((clause, id, clause));
                }
            }
            (Action::Deny, Eval::Fail(_)) => {}
        }
    }

    /// The decision. See the module documentation of [`super`].
    pub fn finish(self, policy: &Policy) -> Decision<'_> {
        let rule = |id: u32| &policy.rules[id as usize];
        let decided = |outcome, id: u32, reason| Decision {
            outcome,
            rule: &rule(id).name,
            audit_only: false,
            reason,
            matched: Some(rule(id)),
        };
        let by_default = |outcome, reason| Decision {
            outcome,
            rule: DEFAULT_RULE,
            audit_only: false,
            reason,
            matched: None,
        };
        let closest = || {
            self.closest.map(|(_, id, clause)| Miss {
                rule: &rule(id).name,
                clause: &rule(id).clauses[clause].text,
            })
        };
        // Only ever set for a connection that is not HTTP.
        let http_only = self.http_only.filter(|_| !self.non_http_allowed);

        let MustName {
            metadata,
            foreign_peer,
        } = self.must_name;
        let allow_possible = self.allow.is_some()
            || self.allow_l7.is_some()
            || (policy.default == Action::Allow && metadata.is_none() && foreign_peer.is_none());
        let mut decision = if let Some(id) = self.deny {
            decided(Outcome::Deny, id, Reason::Rule)
        } else if let Some(id) = http_only {
            decided(Outcome::Deny, id, Reason::RequiresHttp)
        } else if !allow_possible {
            // Nothing here can allow, whatever the requests are.
            if metadata.is_some() {
                by_default(Outcome::Deny, Reason::MetadataApi)
            } else if foreign_peer.is_some() {
                by_default(
                    Outcome::Deny,
                    Reason::ForeignTrustDomain { closest: closest() },
                )
            } else {
                by_default(Outcome::Deny, Reason::Default { closest: closest() })
            }
        } else if let Some(id) = self.deny_l7 {
            decided(Outcome::DeferToL7, id, Reason::NeedsHttp)
        } else if let Some(id) = self.allow {
            decided(Outcome::Allow, id, Reason::Rule)
        } else if let Some(id) = self.allow_l7 {
            decided(Outcome::DeferToL7, id, Reason::NeedsHttp)
        } else {
            by_default(Outcome::Allow, Reason::Default { closest: None })
        };
        // Audit mode records denials instead of enforcing them; the metadata
        // API is not policy's to open by a dry run (an allow rule must name
        // it), so any refusal of it holds in audit mode too: by default, and
        // by a deny rule that covers it (`cidrs: [169.254.0.0/16]`).
        if decision.outcome == Outcome::Deny && policy.mode == Mode::Audit && metadata.is_none() {
            decision.outcome = Outcome::Allow;
            decision.audit_only = true;
        }
        decision
    }
}

impl Policy {
    /// Decides one query: per connection with [`super::Http::Unknown`] (or
    /// [`super::Http::NotHttp`] once it is known not to be HTTP), per
    /// request with [`super::Http::Request`]. Looks only at the rules the
    /// index returns; no allocation.
    pub fn decide(&self, q: &Query<'_>) -> Decision<'_> {
        self.decide_with(q, Tally::new(MustName::of(q, self)))
    }

    /// The decision on `q`, a destination outside the mesh, by the allow
    /// rules and the deny rules with `to.external` only: the deny rules
    /// about every destination (`from` only, `to.ports` only) passed over.
    /// Audit mode lets through what such a rule would refuse, and such a
    /// rule makes no destination one outside the mesh: this decision says
    /// whether the others do (see the sidecar's reading of decisions on
    /// destinations outside the mesh, and
    /// [`Decision::takes_outside_the_mesh`]).
    pub fn decide_as_external(&self, q: &Query<'_>) -> Decision<'_> {
        let tally = Tally {
            external_denies_only: true,
            ..Tally::new(MustName::of(q, self))
        };
        self.decide_with(q, tally)
    }

    /// Fills `tally` with the rules the index returns for `q`.
    fn decide_with(&self, q: &Query<'_>, mut tally: Tally) -> Decision<'_> {
        if let Some(p) = partition(q) {
            self.index[p].candidates(q, |id| tally.consider(id, &self.rules[id as usize], q));
        }
        tally.finish(self)
    }

    /// Whether `q` is refused as the metadata API only for the name the app
    /// gave (`Host: metadata` to an address that is not one of the API's)
    /// while no rule takes that address outside the mesh (without the name
    /// it is decided by `default`). Then the name makes no metadata API of
    /// it: the destination is a meshed service called so, and the sidecar
    /// sends it into the mesh, where its certificate is decided. The
    /// sidecar and `appid policy explain` both ask this.
    pub fn metadata_by_name_only(&self, q: &Query<'_>) -> bool {
        let Callee::External { ip, host: Some(_) } = q.callee else {
            return false;
        };
        // As the rules about destinations outside the mesh decide: in
        // enforce mode a deny rule about every destination that matches
        // refuses before this is asked, in audit mode it does not count.
        if super::query::is_metadata_ip(ip)
            || self.decide_as_external(q).reason != Reason::MetadataApi
        {
            return false;
        }
        let nameless = Query {
            callee: Callee::External { ip, host: None },
            http: super::Http::Unknown,
            ..*q
        };
        matches!(
            self.decide_as_external(&nameless).reason,
            Reason::Default { .. }
        )
    }

    /// The same decision as [`Policy::decide`], by checking every rule.
    /// Slow; for tests and tools.
    pub fn decide_by_scan(&self, q: &Query<'_>) -> Decision<'_> {
        let mut tally = Tally::new(MustName::of(q, self));
        for (id, rule) in self.rules.iter().enumerate() {
            if rule.applies_to(q) {
                tally.consider(id_of(id), rule, q);
            }
        }
        tally.finish(self)
    }
}

/// Rule ids fit in u32: [`Policy::load`] refuses more rules than that.
pub(crate) fn id_of(index: usize) -> u32 {
    u32::try_from(index).unwrap_or(u32::MAX)
}
