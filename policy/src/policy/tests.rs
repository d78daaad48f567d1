//! Whole-engine tests: the semantics in the module documentation, every
//! load error with its position, and the properties (deny monotonicity,
//! audit never denies, order independence, index = scan).

use std::net::IpAddr;

use super::*;
use crate::claims::{AppIdClaims, Cloud, Vulns};

fn claims(id: &str, labels: &[(&str, &str)]) -> AppIdClaims {
    let mut c = AppIdClaims::new(id, "join_token");
    for (k, v) in labels {
        c.labels.insert((*k).into(), (*v).into());
    }
    c
}

fn with_criticals(mut c: AppIdClaims, critical: u64) -> AppIdClaims {
    c.vulns = Some(Vulns {
        critical,
        scanner: "trivy".into(),
        report: "sha256:00".into(),
        ..Vulns::default()
    });
    c
}

fn load(src: &str) -> Policy {
    Policy::load("p.yaml", src).unwrap_or_else(|e| panic!("{e}"))
}

fn errors(src: &str) -> Vec<String> {
    Policy::load("p.yaml", src)
        .map(|_| ())
        .expect_err("policy should not load")
        .iter()
        .map(ToString::to_string)
        .collect()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Decides with both the index and a scan, checks they agree, returns the
/// indexed decision's (outcome, rule, audit_only).
/// The clauses of rule `name` that failed in `e` (none if it matched or
/// is not there).
fn failed_clauses<'p>(e: &explain::Explanation<'p>, name: &str) -> Vec<&'p str> {
    e.rules
        .iter()
        .find(|r| r.name == name)
        .map(|r| r.failed.clone())
        .unwrap_or_default()
}

fn decide<'p>(p: &'p Policy, q: &Query<'_>) -> Decision<'p> {
    let fast = p.decide(q);
    let slow = p.decide_by_scan(q);
    assert_eq!(
        (fast.outcome, fast.rule, fast.audit_only),
        (slow.outcome, slow.rule, slow.audit_only),
        "index and scan disagree"
    );
    fast
}

const WEB: &str = "spiffe://prod.example/ns/shop/sa/web";
const API: &str = "spiffe://prod.example/ns/shop/sa/api";

fn web() -> AppIdClaims {
    with_criticals(claims(WEB, &[("app", "web"), ("team", "shop")]), 0)
}

fn api() -> AppIdClaims {
    claims(API, &[("app", "api")])
}

// ---------------------------------------------------------------- semantics

#[test]
fn design_example_loads_and_decides() {
    let p = load(
        r#"version: 1
default: deny            # deny | allow
mode: enforce            # enforce | audit (log would-be denials, allow them)
rules:
  - name: web-to-api     # required, unique; appears in every decision log
    action: allow        # allow | deny; a matching deny always wins
    from:                # the calling side
      id: "spiffe://prod.example/ns/shop/sa/*"
      labels.app: web
      vulns.critical: { lte: 0 }
      cloud.provider: { in: [aws, gcp] }
    to:                  # the called side
      labels.app: api
      ports: [8080, "9000-9100"]
    http:                # optional: makes the rule L7
      methods: [GET, HEAD]
      paths: ["/v1/**"]
      headers: { x-tenant: acme }
  - name: api-to-stripe
    action: allow
    from: { labels.app: api }
    to: { external: { hosts: [api.stripe.com], cidrs: ["0.0.0.0/0"], ports: [443] } }
  - name: lb-health
    action: allow
    from: { unauthenticated: { cidrs: ["10.0.0.0/8"] } }
    to: { labels.app: api, ports: [8081] }
"#,
    );
    assert_eq!(
        p.summary().to_string(),
        "p.yaml: 3 rules (3 allow, 0 deny, 1 with http), default deny, mode enforce"
    );
    // A plain value with `*` is a glob, so the design example's id matches.
    let mut caller = web();
    caller.cloud = Some(Cloud {
        provider: Some("aws".into()),
        ..Cloud::default()
    });
    let callee = api();
    let q = Query::meshed(Direction::Inbound, &caller, &callee, 8080);
    let d = decide(&p, &q);
    assert_eq!((d.outcome, d.rule), (Outcome::DeferToL7, "web-to-api"));
    let headers = [("x-tenant", "acme")];
    let get = HttpRequest {
        method: "GET",
        path: "/v1/orders",
        headers: &headers,
    };
    let d = decide(&p, &q.with_request(get));
    assert_eq!((d.outcome, d.rule), (Outcome::Allow, "web-to-api"));
    // Another namespace: the hot path has no near miss to report (the
    // index never reached the rule); explain finds it.
    let mut elsewhere = caller.clone();
    elsewhere.id = "spiffe://prod.example/ns/other/sa/web".into();
    let q = Query::meshed(Direction::Inbound, &elsewhere, &callee, 8080);
    assert_eq!(decide(&p, &q).outcome, Outcome::Deny);
    let e = p.explain(&q);
    let misses: Vec<_> = e.near_misses().map(|r| (r.name, r.failed[0])).collect();
    assert_eq!(
        misses,
        [(
            "web-to-api",
            "from.id: \"spiffe://prod.example/ns/shop/sa/*\""
        )]
    );

    let stripe = Query::external(&callee, ip("1.2.3.4"), Some("api.stripe.com"), 443);
    assert_eq!(decide(&p, &stripe).rule, "api-to-stripe");
    let lb = Query::unauthenticated(ip("10.1.2.3"), &callee, 8081);
    assert_eq!(decide(&p, &lb).rule, "lb-health");
    let outside = Query::unauthenticated(ip("192.168.1.1"), &callee, 8081);
    assert!(decide(&p, &outside).is_denied());
}

const BASE: &str = r#"version: 1
rules:
  - name: web-to-api
    action: allow
    from: { labels.app: web }
    to: { labels.app: api, ports: [8080, "9000-9100"] }
  - name: no-criticals
    action: deny
    from: { vulns.critical: { gt: 0 } }
  - name: glob-ids
    action: allow
    from: { id: { glob: "spiffe://prod.example/ns/batch/*" } }
    to: { labels.app: api }
"#;

#[test]
fn deny_wins_allow_allows_otherwise_default() {
    let p = load(BASE);
    let callee = api();
    let clean = web();
    let dirty = with_criticals(web(), 2);
    let batch = claims("spiffe://prod.example/ns/batch/job", &[]);
    let batch_deep = claims("spiffe://prod.example/ns/batch/job/x", &[]);
    let other = claims("spiffe://prod.example/ns/shop/sa/db", &[("app", "db")]);
    struct Case<'a> {
        caller: &'a AppIdClaims,
        port: u16,
        outcome: Outcome,
        rule: &'a str,
    }
    let cases = [
        Case {
            caller: &clean,
            port: 8080,
            outcome: Outcome::Allow,
            rule: "web-to-api",
        },
        Case {
            caller: &dirty,
            port: 8080,
            outcome: Outcome::Deny,
            rule: "no-criticals",
        },
        Case {
            caller: &clean,
            port: 8081,
            outcome: Outcome::Deny,
            rule: "default",
        },
        Case {
            caller: &other,
            port: 8080,
            outcome: Outcome::Deny,
            rule: "default",
        },
        Case {
            caller: &batch,
            port: 1,
            outcome: Outcome::Allow,
            rule: "glob-ids",
        },
        Case {
            caller: &batch_deep,
            port: 1,
            outcome: Outcome::Deny,
            rule: "default",
        },
        // Port range edges.
        Case {
            caller: &clean,
            port: 8999,
            outcome: Outcome::Deny,
            rule: "default",
        },
        Case {
            caller: &clean,
            port: 9000,
            outcome: Outcome::Allow,
            rule: "web-to-api",
        },
        Case {
            caller: &clean,
            port: 9100,
            outcome: Outcome::Allow,
            rule: "web-to-api",
        },
        Case {
            caller: &clean,
            port: 9101,
            outcome: Outcome::Deny,
            rule: "default",
        },
    ];
    for c in cases {
        let q = Query::meshed(Direction::Inbound, c.caller, &callee, c.port);
        let d = decide(&p, &q);
        assert_eq!(
            (d.outcome, d.rule),
            (c.outcome, c.rule),
            "{} port {}",
            c.caller.id,
            c.port
        );
    }
}

#[test]
fn decisions_explain_themselves() {
    let p = load(BASE);
    let callee = api();
    let dirty = with_criticals(web(), 2);
    let d = decide(
        &p,
        &Query::meshed(Direction::Inbound, &dirty, &callee, 8080),
    );
    assert_eq!(d.reason, Reason::Rule);
    assert_eq!(d.attributes().collect::<Vec<_>>(), ["from.vulns.critical"]);
    let no_criticals = d.rule_identity();
    assert_eq!(
        d.to_string(),
        "deny by rule no-criticals (from.vulns.critical: {gt: 0})"
    );

    let clean = web();
    let d = decide(
        &p,
        &Query::meshed(Direction::Inbound, &clean, &callee, 8081),
    );
    assert_eq!(
        d.failed_clause(),
        Some(Miss {
            rule: "web-to-api",
            clause: "to.ports: [8080, \"9000-9100\"]"
        })
    );
    assert_eq!(
        d.to_string(),
        "deny by default: no rule matched; closest: rule web-to-api failed at to.ports: [8080, \"9000-9100\"]"
    );
    let d = decide(
        &p,
        &Query::meshed(Direction::Inbound, &clean, &callee, 8080),
    );
    assert_eq!(d.to_string(), "allow by rule web-to-api");
    assert_eq!(
        d.attributes().collect::<Vec<_>>(),
        ["to.ports", "from.labels.app", "to.labels.app"]
    );

    // A rule's identity: the same for each of its decisions, another
    // rule's differs, and `default` has none.
    assert!(no_criticals.is_some());
    assert_ne!(d.rule_identity(), no_criticals);
    let again = decide(
        &p,
        &Query::meshed(Direction::Inbound, &dirty, &callee, 9000),
    );
    assert_eq!(again.rule, "no-criticals");
    assert_eq!(again.rule_identity(), no_criticals);
    let by_default = decide(
        &p,
        &Query::meshed(Direction::Inbound, &clean, &callee, 8081),
    );
    assert_eq!(by_default.rule_identity(), None);
}

#[test]
fn default_allow_and_audit_mode() {
    let callee = api();
    let stranger = claims("spiffe://prod.example/x", &[]);
    let dirty = with_criticals(web(), 2);

    let p = load(&BASE.replace("version: 1\n", "version: 1\ndefault: allow\n"));
    let d = decide(
        &p,
        &Query::meshed(Direction::Inbound, &stranger, &callee, 1),
    );
    assert_eq!(
        (d.outcome, d.rule, d.audit_only),
        (Outcome::Allow, "default", false)
    );
    // Deny still wins under default allow.
    let d = decide(
        &p,
        &Query::meshed(Direction::Inbound, &dirty, &callee, 8080),
    );
    assert_eq!(d.outcome, Outcome::Deny);

    let p = load(&BASE.replace("version: 1\n", "version: 1\nmode: audit\n"));
    let d = decide(
        &p,
        &Query::meshed(Direction::Inbound, &dirty, &callee, 8080),
    );
    assert_eq!(
        (d.outcome, d.rule, d.audit_only),
        (Outcome::Allow, "no-criticals", true)
    );
    assert_eq!(d.enforced_outcome(), Outcome::Deny);
    assert!(
        d.to_string()
            .starts_with("allow (audit only, would deny) by rule no-criticals")
    );
    let d = decide(
        &p,
        &Query::meshed(Direction::Inbound, &stranger, &callee, 1),
    );
    assert_eq!(
        (d.outcome, d.rule, d.audit_only),
        (Outcome::Allow, "default", true)
    );
    let clean = web();
    let d = decide(
        &p,
        &Query::meshed(Direction::Inbound, &clean, &callee, 8080),
    );
    assert_eq!((d.outcome, d.audit_only), (Outcome::Allow, false));
}

#[test]
fn peers_of_another_trust_domain_need_rules_that_name_it() {
    let p = load(
        r#"version: 1
default: allow
rules:
  - name: web-to-api
    action: allow
    from: { labels.app: web }
    to: { labels.app: api }
  - name: aws-web-to-api
    action: allow
    from: { trust_domain: aws.example, labels.app: web }
    to: { labels.app: api }
    http: { paths: ["/v1/**"] }
  - name: api-calls-aws
    action: allow
    from: { labels.app: api }
    to: { trust_domain: aws.example }
  - name: no-criticals
    action: deny
    from: { vulns.critical: { gt: 0 } }
"#,
    );
    let local_web = web();
    let local_api = api();
    let aws_web = claims("spiffe://aws.example/web", &[("app", "web")]);
    let gcp_web = claims("spiffe://gcp.example/web", &[("app", "web")]);
    let get = |path| HttpRequest {
        method: "GET",
        path,
        headers: &NoHeaders,
    };

    // Our own web: the rule without a trust domain admits it.
    let q = Query::meshed(Direction::Inbound, &local_web, &local_api, 80);
    assert_eq!(decide(&p, &q).rule, "web-to-api");
    assert!(decide(&p, &q).is_allowed());

    // AWS's web, whose authority vouched for `app: web` too: only the rule
    // naming aws.example counts, and it looks at requests.
    let q = Query::meshed(Direction::Inbound, &aws_web, &local_api, 80);
    let d = decide(&p, &q);
    assert_eq!((d.outcome, d.rule), (Outcome::DeferToL7, "aws-web-to-api"));
    let d = decide(&p, &q.with_request(get("/v1/x")));
    assert_eq!((d.outcome, d.rule), (Outcome::Allow, "aws-web-to-api"));
    let d = decide(&p, &q.with_request(get("/admin")));
    assert_eq!((d.outcome, d.rule), (Outcome::Deny, DEFAULT_RULE));
    assert!(matches!(d.reason, Reason::ForeignTrustDomain { .. }));
    let why = d.to_string();
    assert!(
        why.starts_with("deny by default: the peer is of another trust domain"),
        "{why}"
    );
    assert!(
        why.contains("closest: rule aws-web-to-api failed at http.paths"),
        "{why}"
    );

    // GCP's web: no rule names gcp.example, and `default: allow` does not
    // admit it either.
    let q = Query::meshed(Direction::Inbound, &gcp_web, &local_api, 80);
    let d = decide(&p, &q);
    assert_eq!((d.outcome, d.rule), (Outcome::Deny, DEFAULT_RULE));
    assert_eq!(d.reason, Reason::ForeignTrustDomain { closest: None });
    // While a local caller no rule names falls to `default: allow`.
    let q = Query::meshed(Direction::Inbound, &local_api, &local_web, 80);
    assert!(decide(&p, &q).is_allowed());

    // Deny rules apply to every trust domain.
    let bad_aws_web = with_criticals(aws_web.clone(), 1);
    let q = Query::meshed(Direction::Inbound, &bad_aws_web, &local_api, 80);
    assert_eq!(decide(&p, &q).rule, "no-criticals");

    // Outbound the peer is the callee: `to.trust_domain` names it, and
    // `from.trust_domain` would not do.
    let q = Query::meshed(Direction::Outbound, &local_api, &aws_web, 80);
    assert_eq!(decide(&p, &q).rule, "api-calls-aws");
    let q = Query::meshed(Direction::Outbound, &local_web, &aws_web, 80);
    assert!(decide(&p, &q).is_denied());

    // What `explain` says of the rule that does not name it.
    let q = Query::meshed(Direction::Inbound, &gcp_web, &local_api, 80);
    let e = p.explain(&q);
    let web_to_api = e.rules.iter().find(|r| r.name == "web-to-api").unwrap();
    assert_eq!(web_to_api.status, RuleStatus::Failed);
    assert_eq!(
        web_to_api.failed,
        [
            "from.trust_domain (the caller is of another trust domain, which only allow rules naming its trust domain, by trust_domain or an id spelling it out, admit)"
        ]
    );

    // An `id` whose trust domain is written out names it too; one that
    // leaves the domain to a `*`, or only excludes, does not.
    for (id, admits) in [
        ("\"spiffe://aws.example/web\"", true),
        ("[spiffe://aws.example/web, spiffe://gcp.example/web]", true),
        ("\"spiffe://aws.example/**\"", true),
        ("{ glob: \"spiffe://aws.example/*\" }", true),
        ("{ glob: \"spiffe://*/web\" }", false),
        ("\"spiffe://**\"", false),
        ("{ not_in: [spiffe://gcp.example/web] }", false),
        ("{ exists: true }", false),
    ] {
        let p = load(&format!(
            "version: 1\nrules:\n  - name: by-id\n    action: allow\n    from: {{ id: {id} }}\n"
        ));
        let q = Query::meshed(Direction::Inbound, &aws_web, &local_api, 80);
        assert_eq!(decide(&p, &q).is_allowed(), admits, "id: {id}");
    }

    // Audit mode records the denial and lets it through, as any other.
    let audit = load(
        "version: 1\nmode: audit\nrules:\n  - name: web-to-api\n    action: allow\n    \
         from: { labels.app: web }\n",
    );
    let d = decide(&audit, &q);
    assert!(d.audit_only && d.is_allowed());
    assert_eq!(d.enforced_outcome(), Outcome::Deny);
    assert!(matches!(d.reason, Reason::ForeignTrustDomain { .. }));
}

#[test]
fn peers_of_a_home_trust_domain_are_not_foreign() {
    // A sidecar whose own authority vouches for two trust domains (its
    // `trust_domains`, e.g. the old and new name during a rename) treats a
    // peer of either as its own; a federated authority's stays foreign.
    let text = "version: 1\ndefault: allow\nrules:\n  - name: web-to-api\n    \
                action: allow\n    from: { labels.app: web }\n    to: { labels.app: api }\n";
    let alone = load(text);
    let aliased = load(text).with_home_trust_domains(["prod.example", "old.example"]);
    assert_eq!(
        aliased.home_trust_domains().collect::<Vec<_>>(),
        ["prod.example", "old.example"]
    );
    let local_api = api();
    let old_web = claims("spiffe://old.example/web", &[("app", "web")]);
    let aws_web = claims("spiffe://aws.example/web", &[("app", "web")]);
    let old_other = claims("spiffe://old.example/batch", &[]);

    let q = Query::meshed(Direction::Inbound, &old_web, &local_api, 80);
    let d = decide(&alone, &q);
    assert!(matches!(d.reason, Reason::ForeignTrustDomain { .. }), "{d}");
    let d = decide(&aliased, &q);
    assert_eq!((d.outcome, d.rule), (Outcome::Allow, "web-to-api"));
    let rules = aliased.connection_rules(&q);
    assert!(
        rules.decide(&aliased, &q).is_allowed(),
        "per connection too"
    );

    // `default: allow` admits an alias peer no rule names, as a local one.
    let q = Query::meshed(Direction::Inbound, &old_other, &local_api, 80);
    assert!(decide(&aliased, &q).is_allowed());
    assert!(decide(&alone, &q).is_denied());

    // Outbound, the callee is the peer.
    let q = Query::meshed(Direction::Outbound, &local_api, &old_other, 80);
    assert!(decide(&aliased, &q).is_allowed());
    assert!(decide(&alone, &q).is_denied());

    // Another authority's peer is foreign whatever the home domains are.
    let q = Query::meshed(Direction::Inbound, &aws_web, &local_api, 80);
    let d = decide(&aliased, &q);
    assert!(matches!(d.reason, Reason::ForeignTrustDomain { .. }), "{d}");
    let e = aliased.explain(&q);
    assert!(e.decision.is_denied());
}

#[test]
fn numeric_operators_on_missing_attributes() {
    let p = load(
        r#"version: 1
rules:
  - name: scanned-clean
    action: allow
    from: { vulns.critical: { lte: 0 } }
    to: { ports: [1] }
  - name: not-dirty
    action: allow
    from: { vulns.critical: { not: { gt: 0 } } }
    to: { ports: [2] }
"#,
    );
    let unscanned = claims("spiffe://prod.example/a", &[]);
    let callee = api();
    let q = |port| Query::meshed(Direction::Inbound, &unscanned, &callee, port);
    assert_eq!(
        decide(&p, &q(1)).outcome,
        Outcome::Deny,
        "lte on missing does not match"
    );
    assert_eq!(
        decide(&p, &q(2)).outcome,
        Outcome::Allow,
        "not of gt on missing matches"
    );
    let clean = with_criticals(claims("spiffe://prod.example/a", &[]), 0);
    let q = Query::meshed(Direction::Inbound, &clean, &callee, 1);
    assert_eq!(decide(&p, &q).outcome, Outcome::Allow);
}

const L7: &str = r#"version: 1
rules:
  - name: read-v1
    action: allow
    from: { labels.app: web }
    to: { labels.app: api, ports: [8080] }
    http: { methods: [GET, HEAD], paths: ["/v1/**"], headers: { x-tenant: "acme*" } }
"#;

#[test]
fn http_rules_defer_at_l4_and_make_connections_http_only() {
    let p = load(L7);
    let (caller, callee) = (web(), api());
    let q = Query::meshed(Direction::Inbound, &caller, &callee, 8080);
    let d = decide(&p, &q);
    assert_eq!(
        (d.outcome, d.rule, d.reason),
        (Outcome::DeferToL7, "read-v1", Reason::NeedsHttp)
    );

    // Not HTTP where a rule with `http` applies: denied, naming the rule.
    let d = decide(&p, &q.not_http());
    assert_eq!(
        (d.outcome, d.rule, d.reason),
        (Outcome::Deny, "read-v1", Reason::RequiresHttp)
    );
    assert_eq!(d.failed_clause(), None);
    assert_eq!(
        d.to_string(),
        "deny: not HTTP: rule read-v1 has http conditions for this connection \
         (add `protocol: tcp` to an allow rule to accept non-HTTP traffic here)"
    );

    // Wrong port: nothing could allow, so deny at once rather than defer.
    let q9 = Query::meshed(Direction::Inbound, &caller, &callee, 9);
    assert_eq!(decide(&p, &q9).outcome, Outcome::Deny);

    let acme: &[(&str, &str)] = &[("X-Tenant", "acme-eu")];
    let other: &[(&str, &str)] = &[("x-tenant", "globex")];
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], Outcome, &'a str);
    let cases: &[Case<'_>] = &[
        ("GET", "/v1/users", acme, Outcome::Allow, "read-v1"),
        ("HEAD", "/v1", acme, Outcome::Allow, "read-v1"),
        ("GET", "/v1/users?x=/v2", acme, Outcome::Allow, "read-v1"),
        ("POST", "/v1/users", acme, Outcome::Deny, "default"),
        ("get", "/v1/users", acme, Outcome::Deny, "default"),
        ("GET", "/v2/users", acme, Outcome::Deny, "default"),
        ("GET", "/v1/users", other, Outcome::Deny, "default"),
        ("GET", "/v1/users", &[], Outcome::Deny, "default"),
    ];
    for (method, path, headers, outcome, rule) in cases {
        let r = HttpRequest {
            method,
            path,
            headers,
        };
        let d = decide(&p, &q.with_request(r));
        assert_eq!((d.outcome, d.rule), (*outcome, *rule), "{method} {path}");
    }
    let r = HttpRequest {
        method: "POST",
        path: "/v1/x",
        headers: &acme,
    };
    let d = decide(&p, &q.with_request(r));
    assert_eq!(
        d.failed_clause().map(|m| m.clause),
        Some("http.methods: [GET, HEAD]")
    );
}

#[test]
fn l4_decisions_with_mixed_l4_and_l7_rules() {
    let mixed = |extra: &str| load(&format!("{L7}{extra}"));
    let (caller, callee) = (web(), api());
    let q = Query::meshed(Direction::Inbound, &caller, &callee, 8080);

    // A plain allow decides at L4 when no L7 deny is pending.
    let p = mixed("  - name: all-web\n    action: allow\n    from: { labels.app: web }\n");
    assert_eq!(
        (decide(&p, &q).outcome, decide(&p, &q).rule),
        (Outcome::Allow, "all-web")
    );

    // An L7 deny that could match forces deferral even with a plain allow.
    let p = mixed(
        "  - name: all-web\n    action: allow\n    from: { labels.app: web }\n  - name: no-admin\n    action: deny\n    from: { labels.app: web }\n    http: { paths: [\"/admin/**\"] }\n",
    );
    let d = decide(&p, &q);
    assert_eq!((d.outcome, d.rule), (Outcome::DeferToL7, "no-admin"));
    let admin = HttpRequest {
        method: "GET",
        path: "/admin/x",
        headers: &NoHeaders,
    };
    assert_eq!(decide(&p, &q.with_request(admin)).rule, "no-admin");
    // Not HTTP: the rules with `http` make the connection HTTP-only, the
    // first of them by name is named.
    let d = decide(&p, &q.not_http());
    assert_eq!(
        (d.outcome, d.rule, d.reason),
        (Outcome::Deny, "no-admin", Reason::RequiresHttp)
    );
    // Unless the plain allow says it accepts other traffic too.
    let p = mixed(
        "  - name: all-web\n    action: allow\n    from: { labels.app: web }\n    to: { protocol: tcp }\n  - name: no-admin\n    action: deny\n    from: { labels.app: web }\n    http: { paths: [\"/admin/**\"] }\n",
    );
    let d = decide(&p, &q.not_http());
    assert_eq!((d.outcome, d.rule), (Outcome::Allow, "all-web"));
    assert_eq!(decide(&p, &q).outcome, Outcome::DeferToL7);

    // A plain deny decides at L4 whatever the L7 rules say.
    let p = mixed("  - name: no-web\n    action: deny\n    from: { labels.app: web }\n");
    assert_eq!(decide(&p, &q).outcome, Outcome::Deny);
}

// ---------------------------------------------------------------- headers

/// Header lines with raw (possibly non-UTF-8) values.
struct RawHeaders<'a>(&'a [(&'a str, &'a [u8])]);

impl Headers for RawHeaders<'_> {
    fn each_value(&self, name: &str, visit: &mut dyn FnMut(&[u8])) {
        for (field, value) in self.0 {
            if header_name_matches(field, name) {
                visit(value);
            }
        }
    }
}

/// The decision for `GET /` from web to api with these headers.
fn decide_with_headers<'p>(p: &'p Policy, headers: &dyn Headers) -> Decision<'p> {
    let (caller, callee) = (web(), api());
    let q = Query::meshed(Direction::Inbound, &caller, &callee, 8080).with_request(HttpRequest {
        method: "GET",
        path: "/",
        headers,
    });
    decide(p, &q)
}

#[test]
fn audit_mode_keeps_a_deny_rules_refusal_of_the_metadata_api() {
    let p = load(
        "version: 1\nmode: audit\nrules:\n  - name: no-link-local\n    action: deny\n    \
         from: { labels.app: web }\n    to: { external: { cidrs: [\"169.254.0.0/16\"] } }\n",
    );
    let w = web();
    let d = decide(&p, &Query::external(&w, ip("169.254.169.254"), None, 80));
    assert_eq!(
        (d.outcome, d.audit_only, d.rule),
        (Outcome::Deny, false, "no-link-local"),
        "{d}"
    );
    // Another link-local address is a dry run's to allow.
    let d = decide(&p, &Query::external(&w, ip("169.254.1.1"), None, 80));
    assert_eq!((d.outcome, d.audit_only), (Outcome::Allow, true), "{d}");
}

#[test]
fn an_external_host_pattern_with_a_port_is_refused_an_ipv6_literal_is_not() {
    let rules = |host: &str| {
        format!(
            "version: 1\nrules:\n  - name: no-evil\n    action: deny\n    \
             from: {{ labels.app: web }}\n    to: {{ external: {{ hosts: [\"{host}\"] }} }}\n"
        )
    };
    let errs = errors(&rules("evil.example:443"));
    assert!(
        errs.iter()
            .any(|e| e.contains("`evil.example:443` is not a host name pattern")),
        "{errs:?}"
    );
    load(&rules("fd00::1"));
}

#[test]
fn cidrs_of_ipv4_mapped_addresses_hold_for_ipv4_addresses() {
    let p = load(
        "version: 1\nrules:\n  - name: lb\n    action: allow\n    \
         from: { unauthenticated: { cidrs: [\"0.0.0.0/0\"] } }\n  - name: no-net\n    \
         action: deny\n    from: { unauthenticated: { cidrs: [\"::ffff:10.0.0.0/104\"] } }\n",
    );
    let a = api();
    for source in ["10.1.2.3", "::ffff:10.1.2.3"] {
        let d = decide(&p, &Query::unauthenticated(ip(source), &a, 80));
        assert_eq!(
            (d.outcome, d.rule),
            (Outcome::Deny, "no-net"),
            "{source}: {d}"
        );
    }
    let d = decide(&p, &Query::unauthenticated(ip("192.168.1.1"), &a, 80));
    assert_eq!(d.outcome, Outcome::Allow, "{d}");
}

#[test]
fn yaml_spellings_of_booleans_and_integers_equal_the_claims() {
    let mut c = web();
    c.reported = serde_json::from_str(r#"{"process":{"root":true,"uid":0,"mode":420}}"#).ok();
    let a = api();
    for (selector, want) in [
        ("reported.process.root: True", Outcome::Deny),
        ("reported.process.root: TRUE", Outcome::Deny),
        ("reported.process.root: true", Outcome::Deny),
        ("reported.process.root: False", Outcome::Allow),
        ("reported.process.uid: 0x0", Outcome::Deny),
        ("reported.process.mode: 0o644", Outcome::Deny),
        ("reported.process.mode: 0x1a4", Outcome::Deny),
        ("reported.process.mode: 0o645", Outcome::Allow),
    ] {
        let p = load(&format!(
            "version: 1\ndefault: allow\nrules:\n  - name: no-root\n    action: deny\n    \
             from: {{ {selector} }}\n"
        ));
        let d = decide(&p, &Query::meshed(Direction::Inbound, &c, &a, 80));
        assert_eq!(d.outcome, want, "{selector}: {d}");
    }
}

#[test]
fn path_patterns_are_spelled_as_canonical_request_paths() {
    let p = load(
        r#"version: 1
default: allow
rules:
  - name: no-reports
    action: deny
    http: { paths: ["/files/annual report/**", "/users/%40admin/**", "/v1/*%3Adelete"] }
"#,
    );
    let (caller, callee) = (web(), api());
    // The paths as the sidecar spells a request's (`%20` kept, `%40` and
    // `%3A` decoded).
    for (path, want) in [
        ("/files/annual%20report/q4.pdf", Outcome::Deny),
        ("/users/@admin/x", Outcome::Deny),
        ("/v1/db:delete", Outcome::Deny),
        ("/v1/db:get", Outcome::Allow),
    ] {
        let q = Query::meshed(Direction::Inbound, &caller, &callee, 80).with_request(HttpRequest {
            method: "POST",
            path,
            headers: &NoHeaders,
        });
        assert_eq!(decide(&p, &q).outcome, want, "{path}");
    }
}

#[test]
fn a_deny_of_get_holds_for_head_an_allow_of_get_does_not() {
    let p = load(
        r#"version: 1
default: deny
rules:
  - name: no-export
    action: deny
    http: { methods: [GET], paths: ["/admin/export"] }
  - name: reads
    action: allow
    http: { methods: [GET], paths: ["/**"] }
  - name: head-of-health
    action: allow
    http: { methods: [HEAD], paths: ["/health"] }
"#,
    );
    let (caller, callee) = (web(), api());
    let decide_request = |method: &str, path: &str| {
        let q =
            Query::meshed(Direction::Inbound, &caller, &callee, 8080).with_request(HttpRequest {
                method,
                path,
                headers: &NoHeaders,
            });
        let d = decide(&p, &q);
        (d.outcome, d.rule.to_owned())
    };
    let of = |outcome, rule: &str| (outcome, rule.to_owned());
    // Servers run GET's handler for HEAD: a deny of GET stops HEAD too.
    assert_eq!(
        decide_request("GET", "/admin/export"),
        of(Outcome::Deny, "no-export")
    );
    assert_eq!(
        decide_request("HEAD", "/admin/export"),
        of(Outcome::Deny, "no-export")
    );
    // Allows hold for what they name only.
    assert_eq!(decide_request("GET", "/x"), of(Outcome::Allow, "reads"));
    assert_eq!(decide_request("HEAD", "/x"), of(Outcome::Deny, "default"));
    assert_eq!(
        decide_request("HEAD", "/health"),
        of(Outcome::Allow, "head-of-health")
    );
    // Nothing else is widened.
    assert_eq!(
        decide_request("POST", "/admin/export"),
        of(Outcome::Deny, "default")
    );
}

#[test]
fn a_header_value_pattern_has_no_segments() {
    let p = load(
        r#"version: 1
default: allow
rules:
  - name: no-debug
    action: deny
    http: { headers: { x-debug: "*" } }
  - name: no-curl
    action: deny
    http: { headers: { user-agent: "curl*" } }
  - name: no-json
    action: deny
    http: { headers: { content-type: "application/**json" } }
"#,
    );
    type Case<'a> = (&'a [(&'a str, &'a str)], Outcome);
    let cases: &[Case<'_>] = &[
        (&[("x-debug", "1")], Outcome::Deny),
        (&[("x-debug", "on/1")], Outcome::Deny),
        (&[("user-agent", "curl/8.4.0")], Outcome::Deny),
        (&[("user-agent", "Mozilla/5.0 curl")], Outcome::Allow),
        (
            &[("content-type", "application/vnd.api+json")],
            Outcome::Deny,
        ),
        (&[("content-type", "text/plain")], Outcome::Allow),
    ];
    for (headers, want) in cases {
        assert_eq!(
            decide_with_headers(&p, headers).outcome,
            *want,
            "{headers:?}"
        );
    }
}

#[test]
fn deny_header_clauses_match_any_value() {
    let p = load(
        r#"version: 1
default: allow
rules:
  - name: no-debug
    action: deny
    http: { headers: { x_debug: "1" } }
  - name: no-combo
    action: deny
    http: { headers: { x-combo: "a, b" } }
"#,
    );
    type Case<'a> = (&'a [(&'a str, &'a str)], Outcome);
    let cases: &[Case<'_>] = &[
        (&[("x-debug", "1")], Outcome::Deny),
        (&[("X_Debug", "1")], Outcome::Deny),
        // Another line or list item cannot hide the value.
        (&[("x-debug", "0"), ("x-debug", "1")], Outcome::Deny),
        (&[("x-debug", "1"), ("x-debug", "0")], Outcome::Deny),
        (&[("x-debug", "0, 1")], Outcome::Deny),
        (&[("x-debug", "0,1")], Outcome::Deny),
        (&[("x-debug", " \t1 ,")], Outcome::Deny),
        (&[("x-debug", "0"), ("x_debug", "2,1")], Outcome::Deny),
        (&[("x-debug", "0")], Outcome::Allow),
        (&[("x-debug", "0,,2"), ("x-debug", "")], Outcome::Allow),
        (&[("x-debug", "10")], Outcome::Allow),
        (&[("x-debugx", "1")], Outcome::Allow),
        (&[], Outcome::Allow),
        // A whole line counts too, for values that contain commas.
        (&[("x-combo", "a, b")], Outcome::Deny),
        (&[("x-combo", "a")], Outcome::Allow),
    ];
    for (headers, want) in cases {
        let d = decide_with_headers(&p, headers);
        assert_eq!(d.outcome, *want, "{headers:?}");
    }
    let d = decide_with_headers(&p, &[("x-debug", "0, 1")]);
    assert_eq!(
        d.to_string(),
        "deny by rule no-debug (http.headers.x-debug: \"1\")"
    );
}

#[test]
fn host_clauses_match_host_names_as_hosts() {
    let p = load(
        r#"version: 1
default: allow
rules:
  - name: no-internal
    action: deny
    http: { headers: { host: [internal.test, "*.corp.test", "fqdn.test."] } }
  - name: only-public
    action: deny
    http: { headers: { x-path: "internal.test" } }
"#,
    );
    type Case<'a> = (&'a [(&'a str, &'a str)], Outcome);
    let cases: &[Case<'_>] = &[
        (&[("host", "internal.test")], Outcome::Deny),
        // Host names ignore case; the port, a trailing dot, brackets are
        // no part of the name an app routes on.
        (&[("Host", "INTERNAL.Test")], Outcome::Deny),
        (&[("host", "internal.test:8080")], Outcome::Deny),
        (&[("host", "internal.test.")], Outcome::Deny),
        (&[("host", "Internal.test.:80")], Outcome::Deny),
        (&[("host", "a.corp.test")], Outcome::Deny),
        // `*` spans labels, as in any header pattern (it did before host
        // patterns were host names: a deny must not narrow).
        (&[("host", "a.b.corp.test")], Outcome::Deny),
        // Patterns are host names too: a trailing dot written in one is
        // no part of the name.
        (&[("host", "fqdn.test.")], Outcome::Deny),
        (&[("host", "FQDN.test")], Outcome::Deny),
        (&[("host", "internal.test.evil")], Outcome::Allow),
        (&[("host", "public.test")], Outcome::Allow),
        // Other headers keep comparing values as written.
        (&[("x-path", "INTERNAL.test")], Outcome::Allow),
    ];
    for (headers, want) in cases {
        let d = decide_with_headers(&p, headers);
        assert_eq!(d.outcome, *want, "{headers:?}");
    }
    // Patterns that could never mean what they say are refused at load.
    for bad in [
        "\"*:8080\"",
        "\"internal.test:*\"",
        "\"port.test:8080\"",
        "\"[::1]:8080\"",
        "\"[a]junk\"",
        "\":80\"",
        "\".\"",
    ] {
        let errors = errors(&format!(
            "version: 1\nrules:\n  - name: x\n    action: deny\n    http: {{ headers: {{ host: {bad} }} }}\n"
        ));
        assert!(
            errors
                .iter()
                .any(|e| e.contains("is not a host name pattern") && e.contains("to.ports")),
            "{bad}: {errors:?}"
        );
    }
    // An IPv6 literal, bracketed or not, is a host; the request's port
    // is no part of it.
    let p = load(
        "version: 1\ndefault: allow\nrules:\n  - name: x\n    action: deny\n    http: { headers: { host: [\"[::1]\", \"fe80::1\"] } }\n",
    );
    for host in ["[::1]", "[::1]:8080", "[fe80::1]"] {
        let d = decide_with_headers(&p, &[("host", host)]);
        assert_eq!(d.outcome, Outcome::Deny, "{host}");
    }
}

#[test]
fn allow_header_clauses_need_every_element() {
    let p = load(
        r#"version: 1
rules:
  - name: acme-only
    action: allow
    http: { headers: { X_Tenant: acme } }
"#,
    );
    type Case<'a> = (&'a [(&'a str, &'a str)], Outcome);
    let cases: &[Case<'_>] = &[
        (&[("x-tenant", "acme")], Outcome::Allow),
        (&[("X_TENANT", "acme")], Outcome::Allow),
        (
            &[("x-tenant", "acme"), ("x_tenant", "acme")],
            Outcome::Allow,
        ),
        (&[("x-tenant", "acme, acme")], Outcome::Allow),
        (&[("x-tenant", " acme\t, ")], Outcome::Allow),
        (&[("x-tenant", "acme"), ("x-tenant", "")], Outcome::Allow),
        // Something else riding along is not allowed.
        (&[("x-tenant", "acme"), ("x-tenant", "evil")], Outcome::Deny),
        (&[("x-tenant", "evil"), ("x-tenant", "acme")], Outcome::Deny),
        (&[("x-tenant", "acme, evil")], Outcome::Deny),
        (&[("x-tenant", "acme"), ("X_Tenant", "evil")], Outcome::Deny),
        // Present means at least one element.
        (&[("x-tenant", "")], Outcome::Deny),
        (&[("x-tenant", " , ")], Outcome::Deny),
        (&[], Outcome::Deny),
        (&[("x-other", "acme")], Outcome::Deny),
    ];
    for (headers, want) in cases {
        let d = decide_with_headers(&p, headers);
        assert_eq!(d.outcome, *want, "{headers:?}");
    }
    // The rule's name is normalized at load: `X_Tenant` is `x-tenant`.
    let d = decide_with_headers(&p, &[("x-tenant", "acme")]);
    assert_eq!(
        d.attributes().collect::<Vec<_>>(),
        ["http.headers.x-tenant"]
    );
    let d = decide_with_headers(&p, &[("x-tenant", "acme"), ("x-tenant", "evil")]);
    assert_eq!(
        d.failed_clause(),
        Some(Miss {
            rule: "acme-only",
            clause: "http.headers.x-tenant: acme"
        })
    );
}

#[test]
fn header_values_that_are_not_utf8_are_compared_lossily() {
    let deny = load(
        "version: 1\ndefault: allow\nrules:\n  - name: no-debug\n    action: deny\n    http: { headers: { x-debug: \"1\" } }\n",
    );
    let allow = load(
        "version: 1\nrules:\n  - name: acme\n    action: allow\n    http: { headers: { x-tenant: \"acme*\" } }\n",
    );
    type Case<'a> = (&'a Policy, &'a [(&'a str, &'a [u8])], Outcome);
    let cases: &[Case<'_>] = &[
        (&deny, &[("x-debug", b"\xff, 1")], Outcome::Deny),
        (
            &deny,
            &[("x-debug", b"\xff"), ("x-debug", b"1")],
            Outcome::Deny,
        ),
        (&deny, &[("x-debug", b"1\xff")], Outcome::Allow),
        (&allow, &[("x-tenant", b"acme-\xff")], Outcome::Allow),
        (&allow, &[("x-tenant", b"acme, \xfe")], Outcome::Deny),
        (&allow, &[("x-tenant", b"\xfeacme")], Outcome::Deny),
    ];
    for (p, headers, want) in cases {
        let d = decide_with_headers(p, &RawHeaders(headers));
        assert_eq!(d.outcome, *want, "{headers:?}");
    }
}

// ---------------------------------------------------------------- protocols

const HTTP_ONLY: &str = r#"version: 1
rules:
  - name: api-http
    action: allow
    from: { labels.app: web }
    to: { labels.app: api, ports: [8080] }
    http: { paths: ["/v1/**"] }
  - name: web-any
    action: allow
    from: { labels.app: web }
"#;

#[test]
fn connections_an_http_rule_applies_to_are_http_only() {
    let (caller, callee) = (web(), api());
    let q = |port| Query::meshed(Direction::Inbound, &caller, &callee, port);
    let p = load(HTTP_ONLY);

    // Where `api-http` applies, only HTTP gets through.
    let d = decide(&p, &q(8080).not_http());
    assert_eq!(
        (d.outcome, d.rule, d.reason),
        (Outcome::Deny, "api-http", Reason::RequiresHttp)
    );
    assert!(d.why().to_string().starts_with("not HTTP: rule api-http"));
    // Elsewhere the plain allow allows whatever the protocol.
    let d = decide(&p, &q(9).not_http());
    assert_eq!((d.outcome, d.rule), (Outcome::Allow, "web-any"));
    // Connection time and requests are decided as before.
    assert_eq!(decide(&p, &q(8080)).rule, "web-any");
    let r = HttpRequest {
        method: "GET",
        path: "/v2",
        headers: &NoHeaders,
    };
    assert_eq!(decide(&p, &q(8080).with_request(r)).rule, "web-any");
    // A caller the http rule is not about is not affected.
    let other = claims("spiffe://prod.example/ns/shop/sa/db", &[("app", "db")]);
    let d = decide(
        &p,
        &Query::meshed(Direction::Inbound, &other, &callee, 8080).not_http(),
    );
    assert_eq!((d.outcome, d.rule), (Outcome::Deny, "default"));

    // `protocol: tcp` on a matching allow rule accepts other traffic.
    let web_any = "web-any\n    action: allow\n    from: { labels.app: web }\n";
    let tcp = load(&HTTP_ONLY.replace(web_any, &format!("{web_any}    to: {{ protocol: tcp }}\n")));
    let d = decide(&tcp, &q(8080).not_http());
    assert_eq!((d.outcome, d.rule), (Outcome::Allow, "web-any"));
    // Only where it matches.
    let tcp_elsewhere = load(&HTTP_ONLY.replace(
        web_any,
        &format!("{web_any}    to: {{ ports: [5432], protocol: tcp }}\n"),
    ));
    let d = decide(&tcp_elsewhere, &q(8080).not_http());
    assert_eq!((d.outcome, d.reason), (Outcome::Deny, Reason::RequiresHttp));
    let d = decide(&tcp_elsewhere, &q(5432).not_http());
    assert_eq!((d.outcome, d.rule), (Outcome::Allow, "web-any"));

    // A deny rule with http makes the connection HTTP-only too, and a
    // plain deny still wins over everything.
    let deny_l7 = "  - name: a-no-admin\n    action: deny\n    from: { labels.app: web }\n    http: { paths: [\"/admin/**\"] }\n";
    let p = load(&format!("{HTTP_ONLY}{deny_l7}"));
    let d = decide(&p, &q(9).not_http());
    assert_eq!(
        (d.outcome, d.rule, d.reason),
        (Outcome::Deny, "a-no-admin", Reason::RequiresHttp)
    );
    let p = load(&format!(
        "{HTTP_ONLY}{deny_l7}  - name: z-no-web\n    action: deny\n    from: {{ labels.app: web }}\n"
    ));
    let d = decide(&p, &q(8080).not_http());
    assert_eq!(
        (d.outcome, d.rule, d.reason),
        (Outcome::Deny, "z-no-web", Reason::Rule)
    );

    // Under `default: allow` as well.
    let p = load(&L7.replace("version: 1\n", "version: 1\ndefault: allow\n"));
    let d = decide(&p, &q(8080).not_http());
    assert_eq!((d.outcome, d.reason), (Outcome::Deny, Reason::RequiresHttp));
    assert_eq!(decide(&p, &q(9).not_http()).outcome, Outcome::Allow);
}

#[test]
fn audit_mode_allows_http_only_denials() {
    let p = load(&HTTP_ONLY.replace("version: 1\n", "version: 1\nmode: audit\n"));
    let (caller, callee) = (web(), api());
    let q = Query::meshed(Direction::Inbound, &caller, &callee, 8080).not_http();
    let d = decide(&p, &q);
    assert_eq!(
        (d.outcome, d.rule, d.audit_only, d.reason),
        (Outcome::Allow, "api-http", true, Reason::RequiresHttp)
    );
    assert_eq!(d.enforced_outcome(), Outcome::Deny);
    assert!(
        d.to_string()
            .starts_with("allow (audit only, would deny): not HTTP: rule api-http"),
        "{d}"
    );
}

#[test]
fn explain_names_http_only_denials() {
    let p = load(HTTP_ONLY);
    let (caller, callee) = (web(), api());
    let q = Query::meshed(Direction::Inbound, &caller, &callee, 8080).not_http();
    let e = p.explain(&q);
    assert_eq!(e.decision.reason, Reason::RequiresHttp);
    let statuses: Vec<_> = e.rules.iter().map(|r| (r.name, r.status)).collect();
    assert_eq!(
        statuses,
        [
            ("api-http", RuleStatus::NotHttp),
            ("web-any", RuleStatus::Matched)
        ]
    );
    let text = e.to_string();
    assert!(
        text.starts_with(
            "decision: deny: not HTTP: rule api-http has http conditions for this connection"
        ),
        "{text}"
    );
    assert!(text.contains("rule: api-http\n"), "{text}");
    assert!(
        text.contains("allow api-http (line 3) (up to http; the connection is not HTTP"),
        "{text}"
    );
    // A rule that fails elsewhere as well lists not being HTTP among its
    // failures.
    let q = Query::meshed(Direction::Inbound, &caller, &callee, 9).not_http();
    let e = p.explain(&q);
    assert_eq!(e.rules[0].status, RuleStatus::Failed);
    assert_eq!(e.rules[0].failed, ["to.ports: [8080]", NOT_HTTP_CLAUSE]);
}

#[test]
fn protocol_http_and_empty_http_make_a_rule_http_only_without_conditions() {
    let (caller, callee) = (web(), api());
    let q = Query::meshed(Direction::Inbound, &caller, &callee, 8080);
    for spelling in [
        "    to: { protocol: http }\n",
        "    http: {}\n",
        "    http:\n",
        "    to: { protocol: http }\n    http: {}\n",
    ] {
        let p = load(&format!(
            "version: 1\nrules:\n  - name: web-http\n    action: allow\n    from: {{ labels.app: web }}\n{spelling}"
        ));
        assert!(
            p.summary().to_string().contains("1 with http"),
            "{spelling}"
        );
        let d = decide(&p, &q);
        assert_eq!(
            (d.outcome, d.rule),
            (Outcome::DeferToL7, "web-http"),
            "{spelling}"
        );
        let r = HttpRequest {
            method: "PROPFIND",
            path: "/anything",
            headers: &NoHeaders,
        };
        let d = decide(&p, &q.with_request(r));
        assert_eq!(
            (d.outcome, d.rule),
            (Outcome::Allow, "web-http"),
            "{spelling}"
        );
        let d = decide(&p, &q.not_http());
        assert_eq!(
            (d.outcome, d.rule, d.reason),
            (Outcome::Deny, "web-http", Reason::RequiresHttp),
            "{spelling}"
        );
    }
    // `protocol: tcp` alone changes nothing else about a rule.
    let p = load(
        "version: 1\nrules:\n  - name: db\n    action: allow\n    from: { labels.app: web }\n    to: { protocol: tcp, ports: [5432] }\n",
    );
    assert!(p.summary().to_string().contains("0 with http"));
    let d = decide(
        &p,
        &Query::meshed(Direction::Inbound, &caller, &callee, 5432),
    );
    assert_eq!((d.outcome, d.rule), (Outcome::Allow, "db"));
    let d = decide(
        &p,
        &Query::meshed(Direction::Inbound, &caller, &callee, 5432).not_http(),
    );
    assert_eq!((d.outcome, d.rule), (Outcome::Allow, "db"));
}

// ---------------------------------------------------------------- paths

#[test]
fn path_patterns_are_spelled_as_canonical_paths() {
    let p = load(
        r#"version: 1
default: allow
rules:
  - name: no-cafe
    action: deny
    http: { paths: ["/café/**", "/%61dmin/**", "/b%c3%a9/*"] }
"#,
    );
    let (caller, callee) = (web(), api());
    let q = Query::meshed(Direction::Inbound, &caller, &callee, 80);
    let outcome = |path: &str| {
        let r = HttpRequest {
            method: "GET",
            path,
            headers: &NoHeaders,
        };
        decide(&p, &q.with_request(r)).outcome
    };
    // Canonical request paths (the sidecar encodes raw non-ASCII, decodes
    // unreserved characters, upper-cases hex).
    assert_eq!(outcome("/caf%C3%A9/x"), Outcome::Deny);
    assert_eq!(outcome("/admin/x"), Outcome::Deny);
    assert_eq!(outcome("/b%C3%A9/x"), Outcome::Deny);
    assert_eq!(outcome("/cafe/x"), Outcome::Allow);
}

#[test]
fn paths_can_be_case_insensitive() {
    let src = r#"version: 1
default: allow
rules:
  - name: no-admin
    action: deny
    http: { paths: ["/Admin/**", "/api/*/Keys"] }
"#;
    let (caller, callee) = (web(), api());
    let q = Query::meshed(Direction::Inbound, &caller, &callee, 80);
    let outcome = |p: &Policy, path: &str| {
        let r = HttpRequest {
            method: "GET",
            path,
            headers: &NoHeaders,
        };
        decide(p, &q.with_request(r)).outcome
    };

    let sensitive = load(src);
    assert!(!sensitive.paths_case_insensitive());
    assert_eq!(outcome(&sensitive, "/Admin/x"), Outcome::Deny);
    assert_eq!(outcome(&sensitive, "/admin/x"), Outcome::Allow);
    assert_eq!(outcome(&sensitive, "/ADMIN"), Outcome::Allow);

    // The key may come anywhere at the top, after the rules too.
    for insensitive in [
        src.replace("version: 1\n", "version: 1\npaths_case_insensitive: true\n"),
        format!("{src}paths_case_insensitive: true\n"),
    ] {
        let p = load(&insensitive);
        assert!(p.paths_case_insensitive());
        assert!(
            p.summary()
                .to_string()
                .ends_with("mode enforce, paths case-insensitive"),
            "{}",
            p.summary()
        );
        for (path, want) in [
            ("/Admin/x", Outcome::Deny),
            ("/admin/x", Outcome::Deny),
            ("/ADMIN", Outcome::Deny),
            ("/aDmIn/x?q=1", Outcome::Deny),
            ("/API/v1/KEYS", Outcome::Deny),
            ("/administrator", Outcome::Allow),
            ("/api/v1/x/keys", Outcome::Allow),
        ] {
            assert_eq!(outcome(&p, path), want, "{path}");
        }
    }
    let p = load(&src.replace(
        "version: 1\n",
        "version: 1\npaths_case_insensitive: false\n",
    ));
    assert!(!p.paths_case_insensitive());
    assert_eq!(outcome(&p, "/ADMIN"), Outcome::Allow);
}

// ---------------------------------------------------------------- new load errors

#[test]
fn protocol_methods_headers_and_path_case_errors() {
    let cases: &[(&str, &str)] = &[
        (
            "version: 1\nrules:\n  - name: a\n    action: deny\n    to: { protocol: tcp }\n",
            "p.yaml:5:21: `to.protocol: tcp` is for allow rules: it lets an allow rule accept \
             connections that are not HTTP; remove it",
        ),
        (
            "version: 1\nrules:\n  - name: a\n    action: allow\n    to: { protocol: tcp }\n    http: { methods: [GET] }\n",
            "p.yaml:5:21: `to.protocol: tcp` cannot be combined with `http` (line 6)",
        ),
        (
            "version: 1\nrules:\n  - name: a\n    action: allow\n    to: { protocol: tcp }\n    http: {}\n",
            "p.yaml:5:21: `to.protocol: tcp` cannot be combined with `http` (line 6)",
        ),
        (
            "version: 1\nrules:\n  - name: a\n    action: allow\n    to: { protocol: udp }\n",
            "p.yaml:5:21: `to.protocol` cannot be `udp`; ",
        ),
        (
            "version: 1\nrules:\n  - name: a\n    action: allow\n    to: { protocol: [tcp, http] }\n",
            "p.yaml:5:21: `to.protocol` cannot be `[tcp, http]`; ",
        ),
        (
            "version: 1\nrules:\n  - name: a\n    action: allow\n    to: { external: { hosts: [x.com] }, protocol: tcp }\n",
            "p.yaml:5:41: `to.protocol` cannot be combined with `to.external`",
        ),
        (
            "version: 1\nrules:\n  - name: a\n    action: allow\n    from: { protocol: tcp }\n",
            "p.yaml:5:13: unknown key `protocol` in `from`",
        ),
        (
            "version: 1\nrules:\n  - name: a\n    action: allow\n    http: { methods: [GET, delete] }\n",
            "p.yaml:5:28: HTTP method `delete` has lower-case letters, so this rule could never \
             match it: methods are case-sensitive and the sidecar refuses lower-case ones; write `DELETE`",
        ),
        (
            "version: 1\nrules:\n  - name: a\n    action: deny\n    http: { methods: [Delete] }\n",
            "p.yaml:5:23: HTTP method `Delete` has lower-case letters",
        ),
        (
            "version: 1\nrules:\n  - name: a\n    action: deny\n    http: { methods: [\"GET /\"] }\n",
            "p.yaml:5:23: `GET /` is not an HTTP method",
        ),
        (
            "version: 1\nrules:\n  - name: a\n    action: deny\n    http: { headers: { x_debug: \"1\", X-Debug: \"2\" } }\n",
            "p.yaml:5:38: `X-Debug` is the same header as `x_debug` (line 5)",
        ),
        (
            "version: 1\nrules:\n  - name: a\n    action: deny\n    http: { headers: { \"x debug\": \"1\" } }\n",
            "p.yaml:5:24: `x debug` is not a valid HTTP header name",
        ),
        (
            "version: 1\npaths_case_insensitive: yes\n",
            "p.yaml:2:25: `paths_case_insensitive` takes true or false, found `yes`",
        ),
        (
            "version: 1\npaths_case_insensitive: \"true\"\n",
            "p.yaml:2:25: `paths_case_insensitive` takes true or false",
        ),
        (
            "version: 1\npaths_case_insensitve: true\n",
            "p.yaml:2:1: unknown key `paths_case_insensitve` in the policy; did you mean `paths_case_insensitive`?",
        ),
    ];
    let mut bad = Vec::new();
    for (src, want) in cases {
        let errs = errors(src);
        if !errs.iter().any(|e| e.starts_with(want)) {
            bad.push(format!("want {want}\n got {errs:#?}"));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));

    // Any other upper-case token is an ordinary method.
    let p = load(
        "version: 1\nrules:\n  - name: a\n    action: allow\n    http: { methods: [PROPFIND, M-SEARCH, PURGE] }\n",
    );
    assert_eq!(p.len(), 1);
}

#[test]
fn unauthenticated_callers_only_match_unauthenticated_rules() {
    let p = load(
        r#"version: 1
rules:
  - name: lb
    action: allow
    from: { unauthenticated: { cidrs: ["10.0.0.0/8", "fd00::/8"] } }
    to: { labels.app: api, ports: [8081] }
  - name: any-meshed
    action: allow
"#,
    );
    let callee = api();
    for (source, want) in [
        ("10.9.9.9", Outcome::Allow),
        ("::ffff:10.9.9.9", Outcome::Allow),
        ("fd00::1", Outcome::Allow),
        ("11.0.0.1", Outcome::Deny),
    ] {
        let d = decide(&p, &Query::unauthenticated(ip(source), &callee, 8081));
        assert_eq!(d.outcome, want, "{source}");
    }
    // `any-meshed` (no from at all) does not let unauthenticated callers in.
    let d = decide(&p, &Query::unauthenticated(ip("11.0.0.1"), &callee, 80));
    assert_eq!((d.outcome, d.rule), (Outcome::Deny, "default"));
    let caller = web();
    let d = decide(&p, &Query::meshed(Direction::Inbound, &caller, &callee, 80));
    assert_eq!(d.rule, "any-meshed");
}

#[test]
fn external_destinations_and_the_metadata_api() {
    let src = r#"version: 1
rules:
  - name: stripe
    action: allow
    from: { labels.app: api }
    to: { external: { hosts: ["*.stripe.com"], ports: [443] } }
  - name: anywhere-https
    action: allow
    from: { labels.app: web }
    to: { external: { cidrs: ["0.0.0.0/0", "::/0"] } }
  - name: meshed-only
    action: allow
"#;
    let p = load(src);
    let (web, api) = (web(), api());
    type Case<'a> = (
        &'a AppIdClaims,
        &'a str,
        Option<&'a str>,
        u16,
        Outcome,
        &'a str,
    );
    let cases: &[Case<'_>] = &[
        (
            &api,
            "1.2.3.4",
            Some("api.stripe.com"),
            443,
            Outcome::Allow,
            "stripe",
        ),
        (
            &api,
            "1.2.3.4",
            Some("API.Stripe.com:443"),
            443,
            Outcome::Allow,
            "stripe",
        ),
        (
            &api,
            "1.2.3.4",
            Some("api.stripe.com"),
            80,
            Outcome::Deny,
            "default",
        ),
        (&api, "1.2.3.4", None, 443, Outcome::Deny, "default"),
        (
            &api,
            "1.2.3.4",
            Some("evil.com"),
            443,
            Outcome::Deny,
            "default",
        ),
        (&web, "1.2.3.4", None, 80, Outcome::Allow, "anywhere-https"),
        (&web, "169.254.169.254", None, 80, Outcome::Deny, "default"),
        (&web, "fd00:ec2::254", None, 80, Outcome::Deny, "default"),
        (
            &web,
            "1.2.3.4",
            Some("metadata.google.internal"),
            80,
            Outcome::Deny,
            "default",
        ),
    ];
    for (caller, addr, host, port, outcome, rule) in cases {
        let d = decide(&p, &Query::external(caller, ip(addr), *host, *port));
        assert_eq!(
            (d.outcome, d.rule),
            (*outcome, *rule),
            "{addr} {host:?} {port}"
        );
        if addr.contains("254") || host.is_some_and(|h| h.starts_with("metadata")) {
            assert_eq!(d.reason, Reason::MetadataApi);
            assert!(d.why().to_string().starts_with("metadata API"));
        }
    }
    // Allowed by name, the connection goes where the name resolves; by
    // address, where it was dialled.
    let by_name = decide(
        &p,
        &Query::external(&api, ip("1.2.3.4"), Some("api.stripe.com"), 443),
    );
    assert!(by_name.trusts_external_name());
    let by_address = decide(&p, &Query::external(&web, ip("1.2.3.4"), Some("x.com"), 80));
    assert_eq!(by_address.rule, "anywhere-https");
    assert!(!by_address.trusts_external_name());
    assert!(
        by_address.name_could_be_metadata_api(),
        "a Host could still name the metadata API"
    );
    // A name alone is the metadata API only where a rule takes the
    // address outside the mesh (web's `anywhere-https`); api has none for
    // port 80, so `Host: metadata` there is a meshed service called so.
    let named = |caller, addr, host| Query::external(caller, ip(addr), Some(host), 80);
    assert!(p.metadata_by_name_only(&named(&api, "10.0.0.9", "metadata")));
    assert!(!p.metadata_by_name_only(&named(&web, "10.0.0.9", "metadata")));
    assert!(!p.metadata_by_name_only(&named(&api, "169.254.169.254", "metadata")));
    assert!(!p.metadata_by_name_only(&named(&api, "10.0.0.9", "reports")));

    // Before the name is known: only where a rule by name could decide
    // does the name matter (its caller and ports hold).
    let nameless = |caller, port| Query::external(caller, ip("1.2.3.4"), None, port);
    assert!(p.external_name_could_matter(&nameless(&api, 443)));
    assert!(!p.external_name_could_matter(&nameless(&api, 80)), "ports");
    assert!(
        !p.external_name_could_matter(&nameless(&web, 443)),
        "caller"
    );

    // default allow does not open the metadata API either.
    let p = load(&src.replace("version: 1\n", "version: 1\ndefault: allow\n"));
    let d = decide(&p, &Query::external(&api, ip("169.254.169.254"), None, 80));
    assert_eq!((d.outcome, d.reason), (Outcome::Deny, Reason::MetadataApi));
    let d = decide(&p, &Query::external(&api, ip("1.1.1.1"), None, 80));
    assert_eq!(d.outcome, Outcome::Allow);

    // Nor does audit mode (a dry run of a policy is no way to it), by
    // address or by name; other would-be denials are let through.
    let p = load(&src.replace("version: 1\n", "version: 1\nmode: audit\n"));
    for (addr, host) in [
        ("169.254.169.254", None),
        ("fd00:ec2::254", None),
        ("10.0.0.9", Some("metadata.google.internal")),
    ] {
        let d = decide(&p, &Query::external(&api, ip(addr), host, 80));
        assert_eq!(
            (d.outcome, d.reason, d.audit_only),
            (Outcome::Deny, Reason::MetadataApi, false),
            "{addr} {host:?}"
        );
    }
    let d = decide(&p, &Query::external(&api, ip("1.1.1.1"), None, 80));
    assert_eq!((d.outcome, d.audit_only), (Outcome::Allow, true));

    // Naming it explicitly does.
    for named in [
        "cidrs: [\"169.254.169.254/32\"]",
        "cidrs: [169.254.169.254]",
        "hosts: [169.254.169.254]",
        "hosts: [metadata.google.internal]",
    ] {
        let p = load(&format!(
            "version: 1\nrules:\n  - name: imds\n    action: allow\n    from: {{ labels.app: web }}\n    to: {{ external: {{ {named} }} }}\n"
        ));
        let host = named
            .contains("google")
            .then_some("metadata.google.internal");
        let host = host.or(named.contains("hosts").then_some("169.254.169.254"));
        let d = decide(&p, &Query::external(&web, ip("169.254.169.254"), host, 80));
        assert_eq!((d.outcome, d.rule), (Outcome::Allow, "imds"), "{named}");
        // It names one of the metadata API's names or addresses: through a
        // destination it allows, another could still be named.
        assert!(d.name_could_be_metadata_api(), "{named}");
    }

    // Naming one endpoint opens that one only, not the others through the
    // rule's wider cidrs (a rule for ECS's task credentials beside
    // `0.0.0.0/0` does not open the instance's metadata API).
    let p = load(
        "version: 1\nrules:\n  - name: ecs-and-internet\n    action: allow\n    from: { labels.app: web }\n    to: { external: { cidrs: [169.254.170.2/32, 0.0.0.0/0] } }\n",
    );
    let ecs = decide(&p, &Query::external(&web, ip("169.254.170.2"), None, 80));
    assert_eq!(
        (ecs.outcome, ecs.rule),
        (Outcome::Allow, "ecs-and-internet")
    );
    let internet = decide(&p, &Query::external(&web, ip("1.1.1.1"), None, 80));
    assert_eq!(internet.outcome, Outcome::Allow);
    for (addr, host) in [
        ("169.254.169.254", None),
        ("100.100.100.200", None),
        ("192.0.2.30", Some("metadata.google.internal")),
        ("192.0.2.30", Some("2852039166")),
    ] {
        let d = decide(&p, &Query::external(&web, ip(addr), host, 80));
        assert_eq!(
            (d.outcome, d.reason),
            (Outcome::Deny, Reason::MetadataApi),
            "{addr} {host:?}"
        );
        assert_eq!(
            d.outcome,
            p.decide_by_scan(&Query::external(&web, ip(addr), host, 80))
                .outcome
        );
    }
    // A rule without `hosts` lets the connection go where it was dialled:
    // it decides by the address, whatever name the app gives (a `Host`
    // naming ECS opens nothing at 169.254.169.254; GCP's clients naming
    // `metadata.google.internal` pass a rule for 169.254.169.254).
    let lying = Query::external(&web, ip("169.254.169.254"), Some("169.254.170.2"), 80);
    let lying = decide(&p, &lying);
    assert_eq!(
        (lying.outcome, lying.reason),
        (Outcome::Deny, Reason::MetadataApi)
    );
    let p = load(
        "version: 1\nrules:\n  - name: imds\n    action: allow\n    from: { labels.app: web }\n    to: { external: { cidrs: [169.254.169.254/32] } }\n",
    );
    let gcp = Some("metadata.google.internal");
    let named = decide(&p, &Query::external(&web, ip("169.254.169.254"), gcp, 80));
    assert_eq!((named.outcome, named.rule), (Outcome::Allow, "imds"));
    // A rule with `hosts` decides by the name (the connection goes where
    // it resolves, and is decided again there).
    let p = load(
        "version: 1\nrules:\n  - name: gcp\n    action: allow\n    from: { labels.app: web }\n    to: { external: { hosts: [metadata.google.internal] } }\n",
    );
    let named = decide(&p, &Query::external(&web, ip("169.254.169.254"), gcp, 80));
    assert_eq!((named.outcome, named.rule), (Outcome::Allow, "gcp"));
    let other = Query::external(&web, ip("169.254.169.254"), Some("metadata"), 80);
    let other = decide(&p, &other);
    assert_eq!(
        (other.outcome, other.reason),
        (Outcome::Deny, Reason::MetadataApi)
    );
}

#[test]
fn ties_are_broken_by_name_not_order() {
    let a = "  - name: b-rule\n    action: allow\n    from: { labels.app: web }\n";
    let b = "  - name: a-rule\n    action: allow\n    from: { id: { glob: \"spiffe://prod.example/**\" } }\n";
    let (caller, callee) = (web(), api());
    let q = Query::meshed(Direction::Inbound, &caller, &callee, 1);
    for src in [
        format!("version: 1\nrules:\n{a}{b}"),
        format!("version: 1\nrules:\n{b}{a}"),
    ] {
        assert_eq!(decide(&load(&src), &q).rule, "a-rule");
    }
}

#[test]
fn claim_paths_reach_every_part_of_the_claims() {
    let mut c = web();
    c.image = Some(crate::claims::Image {
        digest: Some("sha256:ab".into()),
        name: Some("registry.example/web:1.4".into()),
    });
    let mut cloud = Cloud {
        provider: Some("aws".into()),
        region: Some("eu-west-1".into()),
        ..Cloud::default()
    };
    cloud.tags.insert("env".into(), "prod".into());
    c.cloud = Some(cloud);
    c.reported = serde_json::from_str(r#"{"process":{"uid":1000}}"#).ok();
    let callee = api();
    for sel in [
        "image.digest: \"sha256:ab\"",
        "image.name: { glob: \"registry.example/*\" }",
        "cloud.region: { glob: \"eu-*\" }",
        "cloud.tags.env: prod",
        "reported.process.uid: { gte: 1000 }",
        "reported.process.uid: 1000",
        "attestation: join_token",
        "labels.team: [shop, ops]",
        "vulns.scanner: trivy",
        "image: { exists: true }",
        "labels.nope: { exists: false }",
    ] {
        let p = load(&format!(
            "version: 1\nrules:\n  - name: r\n    action: allow\n    from: {{ {sel} }}\n"
        ));
        let d = decide(&p, &Query::meshed(Direction::Inbound, &c, &callee, 1));
        assert_eq!(d.outcome, Outcome::Allow, "{sel}");
    }
}

/// What the authority vouches for about a pod (`k8s.*`: the token and the
/// API server) and an instance (`cloud.instance_type`) is selectable, by
/// those paths; the same names under `reported` never answer for them.
#[test]
fn vouched_kubernetes_and_cloud_facts_are_selectable() {
    let digest = format!("sha256:{}", "c".repeat(64));
    let mut c = web();
    c.attestation = "k8s_psat".into();
    c.k8s = Some(crate::claims::K8s {
        namespace: Some("shop".into()),
        service_account: Some("web".into()),
        pod: Some("web-7d4b9c6f5-aaaaa".into()),
        pod_uid: Some("8a1c7f3e-5b2d-4c1e-9f0a-3d2b1c0e9f8a".into()),
        node: Some("node-1".into()),
        labels: [
            ("app".into(), "web".into()),
            ("version".into(), "v2".into()),
        ]
        .into(),
        images: [("web".into(), digest.clone())].into(),
    });
    c.cloud = Some(Cloud {
        provider: Some("aws".into()),
        instance_type: Some("m5.large".into()),
        ..Cloud::default()
    });
    c.reported = serde_json::from_value(serde_json::json!({
        "k8s": {"namespace": "kube-system", "labels": {"app": "admin"}}
    }))
    .ok();
    let callee = api();
    let allows = |sel: &str| {
        let p = load(&format!(
            "version: 1\nrules:\n  - name: r\n    action: allow\n    from: {{ {sel} }}\n"
        ));
        decide(&p, &Query::meshed(Direction::Inbound, &c, &callee, 1)).outcome == Outcome::Allow
    };
    for sel in [
        "k8s.namespace: shop".to_owned(),
        "k8s.service_account: [web, api]".to_owned(),
        "k8s.pod: { glob: \"web-*\" }".to_owned(),
        "k8s.pod_uid: { exists: true }".to_owned(),
        "k8s.node: node-1".to_owned(),
        "k8s.labels.app: web".to_owned(),
        "k8s.labels.version: { in: [v1, v2] }".to_owned(),
        format!("k8s.images.web: \"{digest}\""),
        "k8s.images: { exists: true }".to_owned(),
        "k8s: { exists: true }".to_owned(),
        "cloud.instance_type: { glob: \"m5.*\" }".to_owned(),
        "reported.k8s.namespace: kube-system".to_owned(),
    ] {
        assert!(allows(&sel), "{sel}");
    }
    for sel in [
        "k8s.namespace: kube-system",
        "k8s.labels.app: admin",
        "k8s.labels.team: { exists: true }",
        "k8s.images.sidecar: { exists: true }",
        "cloud.instance_type: t3.micro",
    ] {
        assert!(!allows(sel), "{sel}");
    }
    // Unknown `k8s` fields are load errors that list the valid ones.
    let e =
        errors("version: 1\nrules:\n  - name: r\n    action: allow\n    from: { k8s.nodes: n }\n");
    assert!(e.iter().any(|e| e.contains("`k8s.node`")), "{e:?}");
}

/// The runtime fingerprint a sidecar reports (`reported.process`,
/// `reported.host`, `reported.container`) is selectable like any claim, by
/// its `reported.*` path only: the same names inside `reported` never
/// answer for vouched claims.
#[test]
fn the_reported_fingerprint_is_selectable_only_as_reported() {
    let sha = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    let mut c = web();
    c.reported = serde_json::from_value(serde_json::json!({
        "process": {"sha256": sha, "path": "/usr/bin/web", "uid": 1000, "user": "web", "gid": 1000,
                    "libraries": [{"path": "/usr/lib/libc.so.6", "sha256": sha}],
                    "libraries_sha256": sha},
        "host": {"kernel": "6.1.0-18-amd64", "os": {"id": "debian", "version_id": "12"}},
        "container": {"id": "ab", "image_digest": format!("sha256:{sha}")},
        "labels": {"app": "admin"}
    }))
    .ok();
    let callee = api();
    let allows = |sel: &str| {
        let p = load(&format!(
            "version: 1\nrules:\n  - name: r\n    action: allow\n    from: {{ {sel} }}\n"
        ));
        decide(&p, &Query::meshed(Direction::Inbound, &c, &callee, 1)).outcome == Outcome::Allow
    };
    for sel in [
        format!("reported.process.sha256: \"{sha}\""),
        format!("reported.process.sha256: [\"00\", \"{sha}\"]"),
        "reported.process.user: web".to_owned(),
        "reported.process.uid: { gte: 1000 }".to_owned(),
        "reported.process.path: { glob: \"/usr/bin/*\" }".to_owned(),
        format!("reported.process.libraries_sha256: \"{sha}\""),
        "reported.process.libraries: { exists: true }".to_owned(),
        "reported.process.libraries_truncated: { exists: false }".to_owned(),
        "reported.host.kernel: { glob: \"6.1.*\" }".to_owned(),
        "reported.host.os.id: debian".to_owned(),
        "reported.host.os.version_id: \"12\"".to_owned(),
        format!("reported.container.image_digest: \"sha256:{sha}\""),
        "reported.labels.app: admin".to_owned(),
    ] {
        assert!(allows(&sel), "{sel}");
    }
    for sel in [
        "reported.process.sha256: \"00\"",
        "reported.process.user: root",
        "reported.process.uid: 0",
        "reported.host.os.id: alpine",
        // `reported.labels.app` is not `labels.app`, and nothing under
        // `reported` is an image digest the authority vouched for.
        "labels.app: admin",
        "image.digest: { exists: true }",
    ] {
        assert!(!allows(sel), "{sel}");
    }
}

#[test]
fn explain_lists_matches_and_near_misses() {
    let p = load(BASE);
    let (caller, callee) = (web(), api());
    let e = p.explain(&Query::meshed(Direction::Inbound, &caller, &callee, 8081));
    assert_eq!(e.decision.outcome, Outcome::Deny);
    let misses: Vec<_> = e.near_misses().map(|r| (r.name, r.failed[0])).collect();
    assert_eq!(
        misses,
        [
            ("web-to-api", "to.ports: [8080, \"9000-9100\"]"),
            ("no-criticals", "from.vulns.critical: {gt: 0}"),
            (
                "glob-ids",
                "from.id: {glob: \"spiffe://prod.example/ns/batch/*\"}"
            ),
        ]
    );
    let text = e.to_string();
    assert!(
        text.contains("near misses (one clause failed):\n  allow web-to-api (line 3): to.ports"),
        "{text}"
    );
    let lines: Vec<_> = e.rules.iter().map(|r| r.line).collect();
    assert_eq!(lines, [3, 7, 10]);
}

#[test]
fn indexing_files_rules_under_values_prefixes_and_ports() {
    let p = load(
        r#"version: 1
rules:
  - { name: a, action: allow, from: { labels.app: web }, to: { labels.app: api } }
  - { name: b, action: allow, from: { id: { glob: "spiffe://td/ns/x/*" } } }
  - { name: c, action: allow, from: { vulns.critical: { lte: 0 } }, to: { ports: ["9000-9010"] } }
  - { name: d, action: deny, from: { vulns.critical: { gt: 0 } } }
"#,
    );
    assert_eq!(
        p.index_stats(),
        IndexStats {
            by_value: 1,
            by_prefix: 1,
            by_port: 1,
            unindexed: 1
        }
    );
}

// ---------------------------------------------------------------- load errors

/// Every documented validation error, with its exact position and message.
#[test]
fn validation_errors_name_file_line_column_and_fix() {
    let cases: &[(&str, &str)] = &[
        // unknown keys, at every level
        (
            "version: 1\nrulez: []\n",
            "p.yaml:2:1: unknown key `rulez` in the policy; did you mean `rules`?",
        ),
        (
            "version: 1\nrules:\n  - name: a\n    acton: allow\n",
            "p.yaml:4:5: unknown key `acton` in a rule; did you mean `action`?",
        ),
        (
            "version: 1\nrules:\n  - name: a\n    action: allow\n    to: { external: { host: [x.com] } }\n",
            "p.yaml:5:23: unknown key `host` in `to.external`; did you mean `hosts`?",
        ),
        (
            "version: 1\nrules:\n  - name: a\n    action: allow\n    http: { method: [GET] }\n",
            "p.yaml:5:13: unknown key `method` in `http`; did you mean `methods`?",
        ),
        (
            "version: 1\nrules:\n  - name: a\n    action: allow\n    from: { lables.app: web }\n",
            "p.yaml:5:13: unknown key `lables.app` in `from`: not a claim path or `unauthenticated`; did you mean `labels`?",
        ),
        // unknown operators
        (
            "version: 1\nrules:\n  - name: a\n    action: deny\n    from:\n      vulns.critical: { lessthan: 1 }\n",
            "p.yaml:6:25: unknown operator `lessthan`; operators are `in`",
        ),
        (
            "version: 1\nrules:\n  - name: a\n    action: deny\n    from: { vulns.critical: { not: { gtt: 0 } } }\n",
            "p.yaml:5:38: unknown operator `gtt`; did you mean `gt`?",
        ),
        // bad globs
        (
            "version: 1\nrules:\n  - name: a\n    action: allow\n    from: { id: { glob: \"spiffe://td/ns**\" } }\n",
            "p.yaml:5:25: bad glob: `**` must be a whole segment between `/`s",
        ),
        (
            "version: 1\nrules:\n  - name: a\n    action: allow\n    http: { paths: [\"/v1/[ab]\"] }\n",
            "p.yaml:5:21: bad glob: `[` is not supported in globs",
        ),
        // bad CIDRs
        (
            "version: 1\nrules:\n  - name: a\n    action: allow\n    from: { unauthenticated: { cidrs: [\"10.0.0.0/33\"] } }\n",
            "p.yaml:5:40: `10.0.0.0/33` is not a CIDR; write an address and prefix length",
        ),
        (
            "version: 1\nrules:\n  - name: a\n    action: allow\n    to: { external: { cidrs: [10.1.0.0/8] } }\n",
            "p.yaml:5:31: CIDR `10.1.0.0/8` has host bits set; write `10.0.0.0/8`",
        ),
        // port ranges
        (
            "version: 1\nrules:\n  - name: a\n    action: allow\n    to: { ports: [80, \"9100-9000\"] }\n",
            "p.yaml:5:23: port range `9100-9000` is out of order; write `9000-9100`",
        ),
        (
            "version: 1\nrules:\n  - name: a\n    action: allow\n    to: { ports: [70000] }\n",
            "p.yaml:5:19: port `70000` is out of range; ports are 1 to 65535",
        ),
        // duplicate rule names
        (
            "version: 1\nrules:\n  - name: a\n    action: allow\n  - name: a\n    action: deny\n",
            "p.yaml:5:11: duplicate rule name `a` (first defined at line 3); give each rule a unique name",
        ),
        // http with to.external
        (
            "version: 1\nrules:\n  - name: a\n    action: allow\n    to: { external: { hosts: [x.com] } }\n    http: { methods: [GET] }\n",
            "p.yaml:6:5: `http` cannot be combined with `to.external` (line 5)",
        ),
    ];
    let mut bad = Vec::new();
    for (src, want) in cases {
        let errs = errors(src);
        if !errs.iter().any(|e| e.starts_with(want)) {
            bad.push(format!("want {want}\n got {errs:#?}"));
        }
        assert!(
            errs.iter().all(|e| e.contains("; ")),
            "every error has a hint: {errs:#?}"
        );
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn more_validation_errors() {
    let cases: &[(&str, &str)] = &[
        ("", "p.yaml:1:1: the policy is empty"),
        (
            "rules: []\n",
            "p.yaml:1:1: the policy has no `version`; add `version: 1`",
        ),
        (
            "version: 2\n",
            "p.yaml:1:10: unsupported policy version `2`",
        ),
        (
            "version: 1\ndefault: block\n",
            "p.yaml:2:10: `default` cannot be `block`",
        ),
        (
            "version: 1\nmode: audti\n",
            "p.yaml:2:7: `mode` cannot be `audti`; did you mean `audit`?",
        ),
        (
            "version: 1\nversion: 1\n",
            "p.yaml:2:1: duplicate key `version` in the policy (first at line 1)",
        ),
        (
            "version: 1\nrules: {a: 1}\n",
            "p.yaml:2:8: `rules` must be a list",
        ),
        (
            "version: 1\nrules:\n  - action: allow\n",
            "p.yaml:3:5: a rule has no `name`",
        ),
        (
            "version: 1\nrules:\n  - name: a\n",
            "p.yaml:3:5: rule `a` has no `action`",
        ),
        (
            "version: 1\nrules:\n  - name: a b\n    action: allow\n",
            "p.yaml:3:11: `a b` is not a valid rule name",
        ),
        (
            "version: 1\nrules:\n  - name: default\n    action: allow\n",
            "p.yaml:3:11: `default` is reserved",
        ),
        (
            "version: 1\nrules:\n  - name: a\n    action: permit\n",
            "p.yaml:4:13: `action` cannot be `permit`",
        ),
        (
            "version: 1\nrules:\n  - name: a\n    action: allow\n    from: { unauthenticated: { cidrs: [\"10.0.0.0/8\"] }, labels.app: web }\n",
            "p.yaml:5:57: a caller outside the mesh has no claims",
        ),
        (
            "version: 1\nrules:\n  - name: a\n    action: allow\n    from: { unauthenticated: {} }\n",
            "p.yaml:5:30: `from.unauthenticated` needs `cidrs`",
        ),
        (
            "version: 1\nrules:\n  - name: a\n    action: allow\n    to: { external: {}, ports: [443] }\n",
            "p.yaml:5:25: `to.ports` cannot be combined with `to.external`; put the ports under `to.external.ports`",
        ),
        (
            "version: 1\nrules:\n  - name: a\n    action: allow\n    from: { unauthenticated: { cidrs: [\"0.0.0.0/0\"] } }\n    to: { external: {} }\n",
            "p.yaml:6:11: a rule cannot have both `from.unauthenticated` and `to.external`",
        ),
        (
            "version: 1\nrules:\n  - name: a\n    action: allow\n    from: { ports: [1] }\n",
            "p.yaml:5:13: `ports` describes the called side, not the caller; move it under `to`",
        ),
        (
            "version: 1\nrules:\n  - name: a\n    action: allow\n    http: { methods: [get] }\n",
            "p.yaml:5:23: HTTP method `get` has lower-case letters, so this rule could never match it: \
             methods are case-sensitive and the sidecar refuses lower-case ones; write `GET`",
        ),
        (
            "version: 1\nrules:\n  - name: a\n    action: allow\n    http: { paths: [v1] }\n",
            "p.yaml:5:21: HTTP path pattern `v1` does not start with `/`",
        ),
        (
            "version: 1\nrules:\n  - name: a\n    action: allow\n    to: { ports: [] }\n",
            "p.yaml:5:18: empty `to.ports` matches nothing",
        ),
        (
            "version: 1\nrules:\n  - name: a\n    action: allow\n    from: { labels: { app: web } }\n",
            "p.yaml:5:23: unknown operator `app`; claim paths are flattened with dots: write `labels.app: ...`",
        ),
        (
            "version: 1\nrules: [\n",
            "p.yaml:2:8: invalid YAML: unclosed bracket",
        ),
        (
            "version: 1\n---\nversion: 1\n",
            "p.yaml:2:1: a policy file holds one YAML document",
        ),
    ];
    let mut bad = Vec::new();
    for (src, want) in cases {
        let errs = errors(src);
        if !errs.iter().any(|e| e.starts_with(want)) {
            bad.push(format!("want {want}\n got {errs:#?}"));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn every_error_is_reported_and_nothing_is_loaded() {
    let src = "version: 1\nrules:\n  - name: a\n    action: allow\n    to: { ports: [\"2-1\"] }\n  - name: b\n    action: allow\n    from: { id: { glob: \"a**\" } }\n  - name: a\n    action: deny\n";
    let errs = errors(src);
    assert_eq!(errs.len(), 3, "{errs:#?}");
    assert!(
        errs[0].starts_with("p.yaml:5:19: port range `2-1` is out of order"),
        "{errs:#?}"
    );
    assert!(errs[1].starts_with("p.yaml:8:25: bad glob"), "{errs:#?}");
    assert!(
        errs[2].starts_with("p.yaml:9:11: duplicate rule name `a`"),
        "{errs:#?}"
    );
}

// ---------------------------------------------------------------- properties

mod props {
    use super::*;
    use proptest::prelude::*;

    const FROM: &[&str] = &[
        "labels.app: a",
        "labels.app: b",
        "labels.app: [a, c]",
        "id: { glob: \"spiffe://td/ns/n1/*\" }",
        "id: { glob: \"spiffe://td/**\" }",
        "id: \"spiffe://td/ns/*/b\"",
        "id: spiffe://td/ns/n2/b",
        "vulns.critical: { lte: 0 }",
        "vulns.critical: { gt: 0 }",
        "labels.env: { not_in: [prod] }",
        "cloud.provider: { in: [aws] }",
        "labels.tier: { exists: true }",
        "vulns.critical: { not: { gt: 0 } }",
        "trust_domain: other",
        "trust_domain: td",
        "trust_domain: { in: [td, other] }",
    ];
    const PORTS: &[&str] = &["", "[80]", "[\"80-90\"]", "[8080, 443]"];
    /// `http` sections, and (starting with `protocol:`) `to.protocol`.
    const HTTP: &[&str] = &[
        "",
        "{ methods: [GET] }",
        "{ paths: [\"/v1/**\"] }",
        "{ headers: { x_t: a } }",
        "{}",
        "protocol: http",
        "protocol: tcp",
    ];
    const EXTERNAL: &[&str] = &[
        "{ cidrs: [\"0.0.0.0/0\"], ports: [443] }",
        "{ hosts: [\"*.stripe.com\"] }",
        "{ cidrs: [\"169.254.169.254/32\"] }",
        "{}",
    ];

    #[derive(Debug, Clone)]
    struct RuleSpec {
        deny: bool,
        kind: u8,
        from: Vec<usize>,
        to: Vec<usize>,
        ports: usize,
        http: usize,
        external: usize,
    }

    fn rule_spec() -> impl Strategy<Value = RuleSpec> {
        (
            any::<bool>(),
            prop_oneof![6 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8)],
            proptest::collection::vec(0..FROM.len(), 0..3),
            proptest::collection::vec(0..FROM.len(), 0..2),
            0..PORTS.len(),
            0..HTTP.len(),
            0..EXTERNAL.len(),
        )
            .prop_map(|(deny, kind, from, to, ports, http, external)| RuleSpec {
                deny,
                kind,
                from,
                to,
                ports,
                http,
                external,
            })
    }

    fn selectors(ix: &[usize]) -> Vec<&'static str> {
        // One selector per path: later ones replace earlier ones.
        let mut out: Vec<&str> = Vec::new();
        for &i in ix {
            let s = FROM[i];
            let path = s.split(':').next().unwrap_or("");
            out.retain(|o| !o.starts_with(path));
            out.push(s);
        }
        out
    }

    fn render(name: &str, r: &RuleSpec) -> String {
        let action = if r.deny { "deny" } else { "allow" };
        let mut from = selectors(&r.from);
        let mut to = selectors(&r.to);
        let mut http = HTTP[r.http];
        let ports = PORTS[r.ports];
        let mut to_ports = (!ports.is_empty()).then(|| format!("ports: {ports}"));
        let mut external = None;
        match r.kind {
            1 => {
                from = vec!["unauthenticated: { cidrs: [\"10.0.0.0/8\"] }"];
            }
            2 => {
                to.clear();
                to_ports = None;
                http = "";
                external = Some(format!("external: {}", EXTERNAL[r.external]));
            }
            _ => {}
        }
        let mut to_parts: Vec<String> = to.iter().map(ToString::to_string).collect();
        to_parts.extend(to_ports);
        to_parts.extend(external);
        if http.starts_with("protocol:") {
            // `protocol: tcp` is for allow rules only.
            if !(r.deny && http.ends_with("tcp")) {
                to_parts.push(http.to_string());
            }
            http = "";
        }
        let mut s = format!(
            "  - name: {name}\n    action: {action}\n    from: {{ {} }}\n    to: {{ {} }}\n",
            from.join(", "),
            to_parts.join(", ")
        );
        if !http.is_empty() {
            s.push_str(&format!("    http: {http}\n"));
        }
        s
    }

    fn render_policy(default_allow: bool, audit: bool, rules: &[(String, RuleSpec)]) -> String {
        let mut s = format!(
            "version: 1\ndefault: {}\nmode: {}\nrules:\n",
            if default_allow { "allow" } else { "deny" },
            if audit { "audit" } else { "enforce" }
        );
        for (name, r) in rules {
            s.push_str(&render(name, r));
        }
        s
    }

    fn named(specs: Vec<RuleSpec>) -> Vec<(String, RuleSpec)> {
        specs
            .into_iter()
            .enumerate()
            .map(|(i, r)| (format!("r{i:02}"), r))
            .collect()
    }

    #[derive(Debug, Clone)]
    struct ClaimSpec {
        id: usize,
        app: usize,
        env: usize,
        crit: usize,
        aws: bool,
        tier: bool,
    }

    fn claim_spec() -> impl Strategy<Value = ClaimSpec> {
        (
            0..4usize,
            0..4usize,
            0..3usize,
            0..3usize,
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(id, app, env, crit, aws, tier)| ClaimSpec {
                id,
                app,
                env,
                crit,
                aws,
                tier,
            })
    }

    fn make_claims(s: &ClaimSpec) -> AppIdClaims {
        let id = [
            "spiffe://td/ns/n1/a",
            "spiffe://td/ns/n2/b",
            "spiffe://td/ns/n1/x/y",
            "spiffe://other/z",
        ][s.id];
        let mut c = AppIdClaims::new(id, "join_token");
        if let Some(app) = ["a", "b", "c"].get(s.app) {
            c.labels.insert("app".into(), (*app).into());
        }
        if let Some(env) = ["prod", "dev"].get(s.env) {
            c.labels.insert("env".into(), (*env).into());
        }
        if s.tier {
            c.labels.insert("tier".into(), "1".into());
        }
        if s.crit > 0 {
            c = with_criticals(c, (s.crit - 1) as u64 * 3);
        }
        if s.aws {
            c.cloud = Some(Cloud {
                provider: Some("aws".into()),
                ..Cloud::default()
            });
        }
        c
    }

    #[derive(Debug, Clone)]
    struct QuerySpec {
        caller: ClaimSpec,
        callee: ClaimSpec,
        kind: u8,
        source: usize,
        dest: usize,
        host: usize,
        port: usize,
        http: usize,
    }

    fn query_spec() -> impl Strategy<Value = QuerySpec> {
        (
            claim_spec(),
            claim_spec(),
            0..3u8,
            0..2usize,
            0..3usize,
            0..3usize,
            0..6usize,
            0..7usize,
        )
            .prop_map(
                |(caller, callee, kind, source, dest, host, port, http)| QuerySpec {
                    caller,
                    callee,
                    kind,
                    source,
                    dest,
                    host,
                    port,
                    http,
                },
            )
    }

    /// Runs `f` with the query the spec describes.
    fn with_query<R>(s: &QuerySpec, f: impl FnOnce(&Query<'_>) -> R) -> R {
        let caller = make_claims(&s.caller);
        let callee = make_claims(&s.callee);
        let port = [80, 85, 90, 91, 443, 8080][s.port];
        let mut q = match s.kind {
            // Outbound too: the peer is then the callee.
            0 => Query::meshed(
                [Direction::Inbound, Direction::Outbound][s.source],
                &caller,
                &callee,
                port,
            ),
            1 => Query::unauthenticated(ip(["10.1.1.1", "192.168.1.1"][s.source]), &callee, port),
            _ => Query::external(
                &caller,
                ip(["1.2.3.4", "169.254.169.254", "fd00:ec2::254"][s.dest]),
                [
                    None,
                    Some("api.stripe.com"),
                    Some("metadata.google.internal"),
                ][s.host],
                port,
            ),
        };
        q = match s.http {
            0 => q,
            1 => q.not_http(),
            2 => q.with_request(HttpRequest {
                method: "GET",
                path: "/v1/x",
                headers: &NoHeaders,
            }),
            3 => q.with_request(HttpRequest {
                method: "POST",
                path: "/v1/x",
                headers: &NoHeaders,
            }),
            4 => q.with_request(HttpRequest {
                method: "GET",
                path: "/v1/x",
                headers: &[("X-T", "a")],
            }),
            5 => q.with_request(HttpRequest {
                method: "GET",
                path: "/v1/x",
                headers: &[("x-t", "a"), ("x_t", "b")],
            }),
            _ => q.with_request(HttpRequest {
                method: "GET",
                path: "/v2",
                headers: &NoHeaders,
            }),
        };
        f(&q)
    }

    type Summary = (Outcome, String, bool);

    fn summarize(d: &Decision<'_>) -> Summary {
        (d.outcome, d.rule.to_string(), d.audit_only)
    }

    const HOME_DOMAINS: &[&[&str]] = &[&[], &["td"], &["other"], &["td", "other"]];

    /// Up to 24 rules, either default, up to 7 queries, and the home trust
    /// domains (none, either or both of the two the claims are in).
    fn policy_and_queries()
    -> impl Strategy<Value = (Vec<RuleSpec>, bool, Vec<QuerySpec>, &'static [&'static str])> {
        (
            proptest::collection::vec(rule_spec(), 0..25),
            any::<bool>(),
            proptest::collection::vec(query_spec(), 1..8),
            proptest::sample::select(HOME_DOMAINS),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        #[test]
        fn index_agrees_with_scan(
            (specs, default_allow, queries, home) in policy_and_queries(),
        ) {
            let p = load(&render_policy(default_allow, false, &named(specs)))
                .with_home_trust_domains(home.iter().copied());
            for qs in &queries {
                with_query(qs, |q| {
                    let (a, b) = (p.decide(q), p.decide_by_scan(q));
                    assert_eq!(summarize(&a), summarize(&b), "{qs:?}");
                    assert_eq!(a.reason == Reason::MetadataApi, b.reason == Reason::MetadataApi);
                    // Rules settled once for the connection (made with
                    // any `http`: they do not look at it) decide alike.
                    let c = p.connection_rules(&Query { http: Http::Unknown, ..*q }).decide(&p, q);
                    assert_eq!(summarize(&a), summarize(&c), "{qs:?}");
                    assert_eq!(a.reason, c.reason, "{qs:?}");
                });
            }
        }

        #[test]
        fn adding_a_deny_rule_never_turns_a_denial_into_an_allow(
            specs in proptest::collection::vec(rule_spec(), 0..20),
            mut extra in rule_spec(),
            default_allow in any::<bool>(),
            queries in proptest::collection::vec(query_spec(), 1..8),
        ) {
            extra.deny = true;
            let rules = named(specs);
            let before = load(&render_policy(default_allow, false, &rules));
            let mut more = rules.clone();
            more.push(("zz-extra".into(), extra));
            let after = load(&render_policy(default_allow, false, &more));
            for qs in &queries {
                with_query(qs, |q| {
                    let (b, a) = (before.decide(q), after.decide(q));
                    if b.outcome == Outcome::Deny {
                        assert_eq!(a.outcome, Outcome::Deny, "{qs:?}");
                    }
                    if a.outcome == Outcome::Allow {
                        assert_eq!(b.outcome, Outcome::Allow, "{qs:?}");
                    }
                });
            }
        }

        #[test]
        fn audit_mode_denies_nothing_but_the_metadata_api(
            specs in proptest::collection::vec(rule_spec(), 0..20),
            default_allow in any::<bool>(),
            queries in proptest::collection::vec(query_spec(), 1..8),
        ) {
            let rules = named(specs);
            let enforce = load(&render_policy(default_allow, false, &rules));
            let audit = load(&render_policy(default_allow, true, &rules));
            for qs in &queries {
                with_query(qs, |q| {
                    let (e, a) = (enforce.decide(q), audit.decide(q));
                    let metadata = super::eval::MustName::of(q, &enforce).metadata.is_some();
                    if e.outcome == Outcome::Deny && metadata {
                        assert_eq!((a.outcome, a.audit_only), (Outcome::Deny, false));
                        assert_eq!((a.rule, a.reason), (e.rule, e.reason));
                        return;
                    }
                    assert_ne!(a.outcome, Outcome::Deny);
                    assert_eq!(a.audit_only, e.outcome == Outcome::Deny);
                    assert_eq!(a.enforced_outcome(), e.outcome);
                    assert_eq!(a.rule, e.rule);
                });
            }
        }

        #[test]
        fn reordering_rules_never_changes_a_decision(
            specs in proptest::collection::vec(rule_spec(), 0..20),
            seed in any::<u64>(),
            default_allow in any::<bool>(),
            queries in proptest::collection::vec(query_spec(), 1..8),
        ) {
            let rules = named(specs);
            let mut shuffled = rules.clone();
            // A deterministic Fisher-Yates from the seed.
            let mut state = seed | 1;
            for i in (1..shuffled.len()).rev() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                shuffled.swap(i, (state % (i as u64 + 1)) as usize);
            }
            let a = load(&render_policy(default_allow, false, &rules));
            let b = load(&render_policy(default_allow, false, &shuffled));
            for qs in &queries {
                with_query(qs, |q| {
                    let (x, y) = (a.decide(q), b.decide(q));
                    assert_eq!(summarize(&x), summarize(&y), "{qs:?}");
                    assert_eq!(x.reason, y.reason, "{qs:?}");
                });
            }
        }

        /// A peer of another trust domain than the local workload's and
        /// the home ones is allowed only by an allow rule that names
        /// `trust_domain` on the peer's side (`from` inbound, `to`
        /// outbound): never by a rule without it, never by `default:
        /// allow`. A peer of a home domain is never refused as foreign.
        #[test]
        fn a_foreign_peer_is_allowed_only_by_a_rule_naming_its_trust_domain(
            (specs, default_allow, queries, home) in policy_and_queries(),
        ) {
            let p = load(&render_policy(default_allow, false, &named(specs)))
                .with_home_trust_domains(home.iter().copied());
            for qs in &queries {
                with_query(qs, |q| {
                    let (Caller::Meshed(caller), Callee::Meshed(callee)) = (q.caller, q.callee) else {
                        return;
                    };
                    let td = |c: &AppIdClaims| c.id.split('/').nth(2).map(str::to_owned);
                    let (local, peer, peer_side) = match q.direction {
                        Direction::Inbound => (callee, caller, rule::Side::Caller),
                        Direction::Outbound => (caller, callee, rule::Side::Callee),
                    };
                    let peer_domain = td(peer).unwrap_or_default();
                    if td(local) == td(peer) || home.contains(&peer_domain.as_str()) {
                        let d = p.decide(q);
                        assert!(
                            !matches!(d.reason, Reason::ForeignTrustDomain { .. }),
                            "{qs:?}, home {home:?}: a home peer is not foreign: {}", d.why()
                        );
                        return;
                    }
                    let peer = peer_side;
                    let d = p.decide(q);
                    match d.outcome {
                        Outcome::Allow => {
                            let rule = d.matched.expect("an allow of a foreign peer names its rule");
                            assert!(rule.names_trust_domain(peer), "{qs:?}: allowed by {}", d.rule);
                        }
                        Outcome::DeferToL7 => {
                            let rule = d.matched.expect("a deferral names its rule");
                            assert!(
                                rule.action == Action::Deny || rule.names_trust_domain(peer),
                                "{qs:?}: deferred by {}", d.rule
                            );
                        }
                        Outcome::Deny => assert!(
                            !matches!(d.reason, Reason::Default { .. }),
                            "{qs:?}: a foreign peer's default denial says why: {}", d.why()
                        ),
                    }
                });
            }
        }

        /// Loading never panics, whatever the text.
        #[test]
        fn load_never_panics(src in "[a-z:{}\\[\\]\\-, \n\"*/.0-9]{0,200}") {
            let _ = Policy::load("fuzz.yaml", &src);
        }
    }
}

// ------------------------------------------------ outside the mesh

/// A deny rule without caller claims (no `from`) holds for callers outside
/// the mesh too, its `to` and `http` clauses still checked (reviewer's
/// finding: a `from.unauthenticated` allow let the load balancer's range
/// past `deny to.ports: [6060]` and a deny of `/admin/**`). An allow rule
/// without `from` still admits meshed callers only.
#[test]
fn a_deny_without_from_holds_for_callers_outside_the_mesh() {
    let p = load(
        r#"version: 1
rules:
  - name: lb-health
    action: allow
    from: { unauthenticated: { cidrs: ["10.0.0.0/8"] } }
    to: { labels.app: api }
  - name: any-meshed
    action: allow
  - name: no-debug-port
    action: deny
    to: { ports: [6060] }
  - name: no-admin
    action: deny
    to: { labels.app: api }
    http: { paths: ["/admin/**"] }
  - name: no-legacy
    action: deny
    from: { labels.app: legacy }
"#,
    );
    let callee = api();
    let q = Query::unauthenticated(ip("10.1.2.3"), &callee, 6060);
    let d = decide(&p, &q);
    assert_eq!(
        (d.outcome, d.rule),
        (Outcome::Deny, "no-debug-port"),
        "deny to.ports: [6060] must hold for every caller: {d}"
    );
    let q = Query::unauthenticated(ip("10.1.2.3"), &callee, 8080);
    assert_eq!(
        (decide(&p, &q).outcome, decide(&p, &q).rule),
        (Outcome::DeferToL7, "no-admin")
    );
    for (path, want) in [
        ("/admin/users", (Outcome::Deny, "no-admin")),
        ("/health", (Outcome::Allow, "lb-health")),
    ] {
        let d = decide(
            &p,
            &q.with_request(HttpRequest {
                method: "GET",
                path,
                headers: &NoHeaders,
            }),
        );
        assert_eq!((d.outcome, d.rule), want, "{path}: {d}");
    }
    // A deny with caller claims cannot be checked without claims; an allow
    // without `from` is still about meshed callers only.
    let d = decide(&p, &Query::unauthenticated(ip("11.0.0.1"), &callee, 80));
    assert_eq!((d.outcome, d.rule), (Outcome::Deny, "default"), "{d}");
    // explain says which rules a caller outside the mesh meets.
    let e = p.explain(&Query::unauthenticated(ip("10.1.2.3"), &callee, 6060));
    let failed = |name: &str| failed_clauses(&e, name);
    assert!(failed("no-debug-port").is_empty());
    let outside = "from (the caller is outside the mesh; only from.unauthenticated rules and \
                   deny rules without caller claims apply)";
    for name in ["any-meshed", "no-legacy"] {
        assert_eq!(failed(name).first().copied(), Some(outside), "{name}");
    }
}

/// A deny rule without callee claims and without `http` holds for
/// destinations outside the mesh too, its `to.ports` checked against the
/// destination's port (reviewer's finding: a quarantine by `from` alone
/// let the workload out through a broad `to.external` allow). An allow
/// rule without `to.external`, and a deny rule with callee claims or
/// `http`, are still about meshed callees only.
#[test]
fn a_deny_without_to_holds_for_destinations_outside_the_mesh() {
    let p = load(
        r#"version: 1
rules:
  - name: egress-https
    action: allow
    to: { external: { cidrs: ["0.0.0.0/0"], ports: [443, 25] } }
  - name: any-meshed
    action: allow
  - name: quarantine-critical
    action: deny
    from: { vulns.critical: { gt: 0 } }
  - name: no-smtp
    action: deny
    to: { ports: [25] }
  - name: no-api-for-web
    action: deny
    from: { labels.app: web }
    to: { labels.app: api }
  - name: no-admin
    action: deny
    http: { paths: ["/admin/**"] }
"#,
    );
    let bad = with_criticals(claims(WEB, &[("app", "web")]), 3);
    let good = web();
    let out = |c, port| Query::external(c, ip("93.184.216.34"), Some("exfil.example"), port);
    for (caller, port, want) in [
        (&bad, 443, (Outcome::Deny, "quarantine-critical")),
        (&good, 443, (Outcome::Allow, "egress-https")),
        (&good, 25, (Outcome::Deny, "no-smtp")),
    ] {
        let d = decide(&p, &out(caller, port));
        assert_eq!((d.outcome, d.rule), want, "{port}: {d}");
    }
    // Not an external rule: `any-meshed` allows no destination outside
    // the mesh.
    let d = decide(&p, &out(&good, 80));
    assert_eq!((d.outcome, d.rule), (Outcome::Deny, "default"), "{d}");
    let e = p.explain(&out(&good, 443));
    let failed = |name: &str| failed_clauses(&e, name);
    let outside = "to (the destination is outside the mesh; only to.external rules and deny \
                   rules without callee claims or http apply)";
    for name in ["any-meshed", "no-api-for-web", "no-admin"] {
        assert_eq!(failed(name).first().copied(), Some(outside), "{name}");
    }
    assert_eq!(failed("no-smtp"), ["to.ports: [25]"]);
}

/// In audit mode a would-be denial by a deny rule about every destination
/// is no rule taking the destination out of the mesh:
/// [`Policy::decide_as_external`] decides without such rules what the
/// destination is (a meshed service must not be reached in plaintext
/// because a quarantine is being tried out).
#[test]
fn audit_mode_tells_a_deny_about_every_destination_from_an_external_rule() {
    let src = r#"version: 1
mode: audit
rules:
  - name: egress-https
    action: allow
    to: { external: { cidrs: ["93.184.216.0/24"], ports: [443] } }
  - name: no-internal-db
    action: deny
    to: { external: { cidrs: ["10.9.0.0/16"] } }
  - name: critical-quarantine
    action: deny
    from: { vulns.critical: { gt: 0 } }
"#;
    let p = load(src);
    let bad = with_criticals(claims(WEB, &[("app", "web")]), 3);
    let to = |addr| Query::external(&bad, ip(addr), None, 443);
    for (addr, then) in [
        ("93.184.216.34", (Outcome::Allow, "egress-https", true)),
        ("10.9.1.1", (Outcome::Allow, "no-internal-db", true)),
        // Audited by default: no rule takes it out of the mesh.
        ("10.1.1.1", (Outcome::Allow, "default", false)),
    ] {
        let d = decide(&p, &to(addr));
        assert_eq!(
            (d.outcome, d.rule, d.audit_only, d.takes_outside_the_mesh()),
            (Outcome::Allow, "critical-quarantine", true, false),
            "{addr}: {d}"
        );
        let e = p.decide_as_external(&to(addr));
        assert_eq!(
            (e.outcome, e.rule, e.takes_outside_the_mesh()),
            then,
            "{addr}: {e}"
        );
    }
}

/// In a deny rule a path pattern also holds for the path with one trailing
/// `/` (reviewer's finding: `deny paths: [/admin]` missed `/admin/`, which
/// Express and Spring MVC < 6 route to `/admin`). A pattern ending in `/`
/// or `**` is unchanged, and an allow holds only for what it names.
#[test]
fn a_deny_of_an_exact_path_holds_with_a_trailing_slash() {
    let p = load(
        r#"version: 1
rules:
  - name: web-to-api
    action: allow
    from: { labels.app: web }
    http: { paths: ["/**"] }
  - name: no-admin
    action: deny
    http: { paths: ["/admin", "/users/*/delete", "/x/", "/y/**"] }
  - name: status-only
    action: allow
    from: { labels.app: monitor }
    http: { paths: ["/status"] }
"#,
    );
    let (caller, callee) = (web(), api());
    let request = |caller, path| {
        Query::meshed(Direction::Inbound, caller, &callee, 80).with_request(HttpRequest {
            method: "POST",
            path,
            headers: &NoHeaders,
        })
    };
    for (path, want) in [
        ("/admin", "no-admin"),
        ("/admin/", "no-admin"),
        ("/admin/?q=1", "no-admin"),
        ("/users/1/delete/", "no-admin"),
        ("/x/", "no-admin"),
        ("/y/", "no-admin"),
        ("/admin//", "web-to-api"),
        ("/adminx/", "web-to-api"),
        ("/x", "web-to-api"),
        ("/", "web-to-api"),
    ] {
        let d = decide(&p, &request(&caller, path));
        assert_eq!(d.rule, want, "{path}: {d}");
    }
    let monitor = claims(WEB, &[("app", "monitor")]);
    let d = decide(&p, &request(&monitor, "/status/"));
    assert_eq!((d.outcome, d.rule), (Outcome::Deny, "default"), "{d}");
}

/// `in` and `not_in` compare exactly, so a `*` in them is refused at load
/// (reviewer's finding: `{not_in: ["spiffe://prod.example/ns/legacy/**"]}`
/// took the pattern as a literal and admitted `legacy`). The error names
/// the entry's line and the ways to write a glob; a plain list and `{not:
/// [...]}` glob as before.
#[test]
fn a_star_in_in_or_not_in_is_refused_not_taken_literally() {
    let rule = |from: &str| {
        format!(
            "version: 1\nrules:\n  - name: all-but-legacy\n    action: allow\n    from: {from}\n"
        )
    };
    let e = errors(&rule(
        r#"{ id: { not_in: ["spiffe://prod.example/ns/legacy/**"] } }"#,
    ));
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with(
            "p.yaml:5:28: `not_in` compares exactly, and no claim has a `*`: \
             `\"spiffe://prod.example/ns/legacy/**\"` would match nothing; for a glob write a \
             plain list (`{not: [\"spiffe://prod.example/ns/legacy/**\"]}`) or `{glob: "
        ),
        "{e:?}"
    );
    let e = errors(&rule("{ labels.app: { in: [web, \"api-*\"] } }"));
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with("p.yaml:5:37: `in` compares exactly"),
        "{e:?}"
    );
    assert!(e[0].contains("`[\"api-*\"]`"), "{e:?}");

    let p = load(&rule(
        r#"{ id: { not: ["spiffe://prod.example/ns/legacy/**"] } }"#,
    ));
    let callee = api();
    for (id, want) in [
        ("spiffe://prod.example/ns/legacy/sa/old", Outcome::Deny),
        (WEB, Outcome::Allow),
    ] {
        let caller = claims(id, &[]);
        let d = decide(&p, &Query::meshed(Direction::Inbound, &caller, &callee, 80));
        assert_eq!(d.outcome, want, "{id}: {d}");
    }
}

/// An operator map is read like every other map: a repeated operator is
/// refused (reviewer's finding: `{in: [legacy], in: [old]}` loaded as an
/// AND of both, a deny that never fires).
#[test]
fn a_repeated_operator_is_refused() {
    let e = errors(
        "version: 1\nrules:\n  - name: r\n    action: deny\n    \
         from: { labels.app: { in: [legacy], in: [old] } }\n",
    );
    assert_eq!(
        e,
        [
            "p.yaml:5:41: duplicate key `in` in the operators of `labels.app` (first at line 5); \
          keep only one of them"
        ]
    );
}

/// The rule names the sidecar gives its own denials are reserved like
/// `default` (reviewer's finding: a rule named `revoked` was told from a
/// revocation by nothing in audit lines or `x-appid-denied-by`, and
/// `policy replay` skipped its lines as decided before policy).
#[test]
fn the_sidecars_own_rule_names_are_reserved() {
    assert_eq!(
        SIDECAR_RULE_NAMES,
        ["revoked", "expired", "invalid-request"]
    );
    for name in SIDECAR_RULE_NAMES {
        let src = format!(
            "version: 1\nrules:\n  - name: {name}\n    action: deny\n    \
             from: {{ labels.app: legacy }}\n"
        );
        let e = errors(&src);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with(&format!(
                "p.yaml:3:11: `{name}` is reserved: the sidecar names"
            )),
            "{e:?}"
        );
    }
    load("version: 1\nrules:\n  - { name: revoked-peers, action: deny }\n");
}

/// An unquoted YAML 1.1 boolean (`yes`, `on`, `no`, `off`, any case) as a
/// selector value is refused; quoted it is text (reviewer's finding: `deny
/// reported.process.root: yes` loaded as the text `yes` and never met
/// `root: true`).
#[test]
fn yaml_1_1_booleans_in_selectors_are_refused_unless_quoted() {
    let rule = |from: &str| {
        format!(
            "version: 1\ndefault: allow\nrules:\n  - name: no-root\n    action: deny\n    from: {from}\n"
        )
    };
    for (from, column, text, boolean) in [
        ("{ reported.process.root: yes }", 36, "yes", "true"),
        ("{ labels.debug: [On, x] }", 28, "On", "true"),
        ("{ labels.debug: { not_in: [OFF] } }", 38, "OFF", "false"),
        ("{ labels.debug: { not: no } }", 34, "no", "false"),
    ] {
        let e = errors(&rule(from));
        assert_eq!(
            e,
            [format!(
                "p.yaml:6:{column}: `{text}` is a boolean in YAML 1.1 but text in the YAML \
                 policies are read as (1.2), so it would never equal a `{boolean}` claim; write \
                 `{boolean}` for the boolean, or `\"{text}\"` for the text"
            )],
            "{from}"
        );
    }
    let p = load(&rule(
        r#"{ labels.debug: "on", reported.process.root: true }"#,
    ));
    let mut c = claims(WEB, &[("debug", "on")]);
    c.reported = serde_json::from_str(r#"{"process":{"root":true}}"#).ok();
    let callee = api();
    let d = decide(&p, &Query::meshed(Direction::Inbound, &c, &callee, 80));
    assert_eq!((d.outcome, d.rule), (Outcome::Deny, "no-root"), "{d}");
}
