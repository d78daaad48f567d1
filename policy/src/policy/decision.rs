//! What the engine answers: an outcome, the rule that decided, and why.
//!
//! Design bias: *a decision explains itself without a second lookup*. It
//! borrows the rule's name and clause texts from the policy, so the data
//! plane can write the audit line (rule, the attributes it looked at, why a
//! denial happened) and the `x-appid-denied-by` header from the decision
//! alone, and building one allocates nothing.

use std::fmt;

use super::rule::Rule;

/// The rule name decisions made by the policy's `default` carry.
pub const DEFAULT_RULE: &str = "default";

/// The rule name audit lines and `x-appid-denied-by` carry for a peer the
/// authority revoked.
pub const REVOKED_RULE: &str = "revoked";

/// The rule name audit lines and `x-appid-denied-by` carry for a request
/// on a live connection whose peer's certificate has expired since the
/// handshake: its claims are no longer vouched for (a renewal may carry
/// other ones).
pub const EXPIRED_RULE: &str = "expired";

/// The rule name of requests and connections the sidecar refuses before
/// policy sees them (a malformed request, an unreadable head), in audit
/// lines and metrics.
pub const INVALID_REQUEST_RULE: &str = "invalid-request";

/// The rule names the sidecar gives its own denials, made before or beside
/// the policy: no rule may be named so (nor [`DEFAULT_RULE`]), so that an
/// audit line's or `x-appid-denied-by`'s rule always says who decided, and
/// `appid policy replay` can tell them from the policy's decisions. The
/// sidecar uses these constants, never its own spelling.
pub const SIDECAR_RULE_NAMES: [&str; 3] = [REVOKED_RULE, EXPIRED_RULE, INVALID_REQUEST_RULE];

/// Allow, deny, or "ask again per HTTP request".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Allow,
    Deny,
    /// A connection-time decision that depends on HTTP requests: a rule
    /// with `http` matches this connection's caller, callee and port. Decide
    /// again for each request ([`super::Http::Request`]), or with
    /// [`super::Http::NotHttp`] if the connection is not HTTP.
    DeferToL7,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allow => "allow",
            Outcome::Deny => "deny",
            Outcome::DeferToL7 => "defer to L7",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An allow rule that did not match, and the first clause that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Miss<'p> {
    pub rule: &'p str,
    /// The clause as written, e.g. `from.labels.app: web`.
    pub clause: &'p str,
}

/// The clause text of a rule with `http` on a connection that is not HTTP
/// (in [`super::Explanation`], for a rule that failed elsewhere too).
pub const NOT_HTTP_CLAUSE: &str = "http (the connection is not HTTP)";

/// Why the outcome is what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason<'p> {
    /// The rule named in the decision matched, and its action decided.
    Rule,
    /// No rule matched, so the policy's `default` decided. `closest` is the
    /// allow rule that got furthest among those looked at, with the clause
    /// that failed.
    Default { closest: Option<Miss<'p>> },
    /// The destination is a cloud metadata API (169.254.169.254,
    /// fd00:ec2::254, metadata.google.internal) and no allow rule names it
    /// explicitly. Denied even when `default: allow`.
    MetadataApi,
    /// The peer is of another trust domain than the local workload (a
    /// federated one) and no allow rule that names its `trust_domain`
    /// matched: rules without it, and `default: allow`, admit only peers
    /// of the local trust domain. `closest` as for [`Reason::Default`],
    /// among the rules that name it. Always a denial (or an audit-only
    /// allow in audit mode).
    ForeignTrustDomain { closest: Option<Miss<'p>> },
    /// The rule named in the decision has `http`: decide per request.
    NeedsHttp,
    /// The connection is not HTTP ([`super::Http::NotHttp`]), and the rule
    /// named in the decision, which has `http` (or `to.protocol: http`),
    /// applies to it in everything but its `http` part: that makes the
    /// connection HTTP-only, and no matching allow rule has `to.protocol:
    /// tcp` to accept other traffic. Always a denial.
    RequiresHttp,
}

/// One authorization decision. Borrowed from the policy; no allocation.
#[derive(Debug, Clone, Copy)]
pub struct Decision<'p> {
    pub outcome: Outcome,
    /// The deciding rule's name, or [`DEFAULT_RULE`].
    pub rule: &'p str,
    /// Audit mode turned a denial into this allow: log it as a would-be
    /// denial.
    pub audit_only: bool,
    pub reason: Reason<'p>,
    pub(crate) matched: Option<&'p Rule>,
}

impl<'p> Decision<'p> {
    pub fn is_allowed(&self) -> bool {
        self.outcome == Outcome::Allow
    }

    pub fn is_denied(&self) -> bool {
        self.outcome == Outcome::Deny
    }

    /// The outcome enforce mode would have given.
    pub fn enforced_outcome(&self) -> Outcome {
        if self.audit_only {
            Outcome::Deny
        } else {
            self.outcome
        }
    }

    /// Which rule decided, as an identity that is the same for every
    /// decision that rule makes while its policy lives (its address):
    /// what [`Self::attributes`] yields depends on nothing else, so a
    /// caller can keep what it made of them under this key (with the policy
    /// kept from being freed, so that no other rule can take the address).
    /// `None` when no rule decided (`default`, the metadata API).
    pub fn rule_identity(&self) -> Option<usize> {
        self.matched.map(|rule| std::ptr::from_ref(rule) as usize)
    }

    /// Whether the deciding rule has `to.external`. Only such a rule makes
    /// a destination one outside the mesh: a deny rule about every
    /// destination (`from` only) also decides connections out of the mesh,
    /// but its would-be denial in audit mode says nothing of where they
    /// go ([`super::Policy::decide_as_external`] does).
    pub fn takes_outside_the_mesh(&self) -> bool {
        self.matched
            .is_some_and(|rule| rule.callee == super::rule::CalleeKind::External)
    }

    /// Whether the deciding rule let a connection out of the mesh by the
    /// name the app gave (`to.external.hosts`). The address the app
    /// dialled proves nothing about that name (an app can send any SNI or
    /// `Host` to any address), so such a connection must go where the name
    /// resolves, not where it was dialled; a `to.external.cidrs` beside the
    /// hosts then holds for the address resolved.
    pub fn trusts_external_name(&self) -> bool {
        self.matched.is_some_and(|rule| rule.names_external_hosts())
    }

    /// Whether a name the app gave could still turn this allow into a
    /// refusal as the cloud metadata API (`metadata.google.internal` as a
    /// `Host`, through a forward proxy a rule allows by address): allowed
    /// by a rule that does not name the metadata API.
    pub fn name_could_be_metadata_api(&self) -> bool {
        self.outcome == Outcome::Allow
            && self.reason == Reason::Rule
            && self
                .matched
                .is_some_and(|rule| !rule.metadata_named.opens_every_name())
    }

    /// The attribute paths the deciding rule looked at (`from.labels.app`,
    /// `to.ports`, `http.paths`, ...), for the audit log. Empty for
    /// `default`.
    pub fn attributes(&self) -> impl Iterator<Item = &'p str> + 'p {
        self.matched
            .into_iter()
            .flat_map(|r| r.clauses.iter().map(|c| &*c.path))
    }

    /// The deciding rule's clauses as written (`from.vulns.critical: {lte: 0}`).
    pub fn clauses(&self) -> impl Iterator<Item = &'p str> + 'p {
        self.matched
            .into_iter()
            .flat_map(|r| r.clauses.iter().map(|c| &*c.text))
    }

    /// On a denial by `default`: the clause of the closest allow rule that
    /// failed.
    pub fn failed_clause(&self) -> Option<Miss<'p>> {
        match self.reason {
            Reason::Default { closest } if self.enforced_outcome() == Outcome::Deny => closest,
            _ => None,
        }
    }

    /// A one-line reason for the audit log and a 403 body, e.g.
    /// `rule no-criticals (from.vulns.critical: {gt: 0})`, `metadata API: ...`
    /// or `not HTTP: rule ...`.
    pub fn why(&self) -> Why<'_, 'p> {
        Why(self)
    }
}

/// See [`Decision::why`].
pub struct Why<'d, 'p>(&'d Decision<'p>);

impl fmt::Display for Why<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        match d.reason {
            Reason::Rule => {
                write!(f, "rule {}", d.rule)?;
                if d.enforced_outcome() == Outcome::Deny {
                    let mut clauses = d.clauses();
                    if let Some(first) = clauses.next() {
                        write!(f, " ({first}")?;
                        for c in clauses {
                            write!(f, ", {c}")?;
                        }
                        f.write_str(")")?;
                    }
                }
                Ok(())
            }
            Reason::Default { closest: None } => f.write_str("no rule matched"),
            Reason::Default {
                closest: Some(miss),
            } => write!(
                f,
                "no rule matched; closest: rule {} failed at {}",
                miss.rule, miss.clause
            ),
            Reason::ForeignTrustDomain { closest } => {
                f.write_str(
                    "the peer is of another trust domain, and only allow rules that name \
                     its trust_domain admit it (add `trust_domain: <its domain>` to the rule's \
                     from, or to outbound, or an id that spells the domain out); none matched",
                )?;
                match closest {
                    Some(miss) => write!(
                        f,
                        "; closest: rule {} failed at {}",
                        miss.rule, miss.clause
                    ),
                    None => Ok(()),
                }
            }
            Reason::MetadataApi => f.write_str(
                "metadata API: the destination is a cloud metadata endpoint and no rule names it explicitly",
            ),
            Reason::NeedsHttp => write!(f, "rule {} inspects HTTP requests", d.rule),
            Reason::RequiresHttp => write!(
                f,
                "not HTTP: rule {} has http conditions for this connection (add `protocol: tcp` \
                 to an allow rule to accept non-HTTP traffic here)",
                d.rule
            ),
        }
    }
}

impl fmt::Display for Decision<'_> {
    /// `allow by rule web-to-api`, `deny by default: no rule matched; ...`,
    /// `allow (audit only, would deny) by rule no-criticals (...)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.audit_only {
            f.write_str("allow (audit only, would deny)")?;
        } else {
            write!(f, "{}", self.outcome)?;
        }
        match self.reason {
            Reason::Rule => write!(f, " by {}", self.why()),
            Reason::Default { .. } | Reason::ForeignTrustDomain { .. } => {
                write!(f, " by default: {}", self.why())
            }
            Reason::MetadataApi | Reason::NeedsHttp | Reason::RequiresHttp => {
                write!(f, ": {}", self.why())
            }
        }
    }
}
