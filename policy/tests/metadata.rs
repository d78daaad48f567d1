//! The metadata API's decisions, every way policy makes them: `decide`,
//! `decide_by_scan`, the cached connection rules and `explain` agree on
//! destinations that are (or are named as) the metadata API, under rules
//! that name parts of it; and no host string, whatever it spells, panics a
//! decision. (From review, stop 52.)

use std::net::IpAddr;

use appid_policy::AppIdClaims;
use appid_policy::policy::{
    Http, HttpRequest, NoHeaders, Outcome, Policy, Query, Reason, RuleStatus,
};

fn web() -> AppIdClaims {
    let mut c = AppIdClaims::new("spiffe://t.example/web", "join_token");
    c.labels.insert("app".into(), "web".into());
    c
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn load(src: &str) -> Policy {
    Policy::load("p.yaml", src).unwrap_or_else(|e| panic!("{e}"))
}

use proptest::prelude::*;

const EXTERNAL: &[&str] = &[
    "{ cidrs: [\"0.0.0.0/0\"] }",
    "{ cidrs: [\"169.254.169.254/32\"] }",
    "{ cidrs: [\"169.254.170.2/32\", \"0.0.0.0/0\"] }",
    "{ cidrs: [\"::ffff:169.254.169.254/128\"] }",
    "{ hosts: [metadata] }",
    "{ hosts: [metadata.google.internal, \"169.254.169.254\"] }",
    "{ hosts: [\"169.254.170.2\"] }",
    "{ hosts: [\"*.internal\"] }",
    "{ hosts: [\"2852039166\"] }",
    "{ cidrs: [\"10.0.0.0/8\"], ports: [80] }",
    "{ cidrs: [\"fd00:ec2::254/128\"] }",
];
const DESTS: &[&str] = &[
    "169.254.169.254",
    "::ffff:169.254.169.254",
    "169.254.170.2",
    "10.0.0.5",
    "1.2.3.4",
    "fd00:ec2::254",
];
const HOSTS: &[Option<&str>] = &[
    None,
    Some("metadata"),
    Some("METADATA.google.internal."),
    Some("169.254.170.2"),
    Some("2852039166"),
    Some("[::ffff:a9fe:a9fe]:80"),
    Some("api.internal"),
    Some("0x"),
    Some("169.254.169.254"),
];

fn policy(default_allow: bool, rules: &[(bool, usize, usize)]) -> String {
    let mut s = format!(
        "version: 1\ndefault: {}\nrules:\n",
        if default_allow { "allow" } else { "deny" }
    );
    for (i, (deny, ext, http)) in rules.iter().enumerate() {
        let action = if *deny { "deny" } else { "allow" };
        s.push_str(&format!(
            "  - name: r{i:02}\n    action: {action}\n    from: {{ labels.app: web }}\n    to: {{ external: {} }}\n",
            EXTERNAL[*ext]
        ));
        if *http == 1 {
            // (`http` cannot go with `to.external`.)
            let last = s.rfind("from: { labels.app: web }").unwrap();
            s.replace_range(
                last..last + "from: { labels.app: web }".len(),
                "from: { id: { glob: \"spiffe://t.example/**\" } }",
            );
        }
    }
    s
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(600))]

    /// decide, decide_by_scan, the cached connection rules and explain
    /// agree on metadata targets, with rules that name them.
    #[test]
    fn metadata_decisions_agree(
        rules in proptest::collection::vec((any::<bool>(), 0..EXTERNAL.len(), 0..2usize), 0..6),
        default_allow in any::<bool>(),
        queries in proptest::collection::vec((0..DESTS.len(), 0..HOSTS.len(), 0..3usize, prop_oneof![Just(80u16), Just(443u16)]), 1..6),
    ) {
        let p = load(&policy(default_allow, &rules));
        let web = web();
        for &(d, h, http, port) in &queries {
            let q = Query::external(&web, ip(DESTS[d]), HOSTS[h], port);
            let q = match http {
                0 => q,
                1 => q.not_http(),
                _ => q.with_request(HttpRequest { method: "GET", path: "/", headers: &NoHeaders }),
            };
            let (a, b) = (p.decide(&q), p.decide_by_scan(&q));
            prop_assert_eq!((a.outcome, a.rule, a.audit_only), (b.outcome, b.rule, b.audit_only), "{:?} {:?}", DESTS[d], HOSTS[h]);
            prop_assert_eq!(a.reason == Reason::MetadataApi, b.reason == Reason::MetadataApi);
            let c = p.connection_rules(&Query { http: Http::Unknown, ..q }).decide(&p, &q);
            prop_assert_eq!((a.outcome, a.rule, &a.reason), (c.outcome, c.rule, &c.reason), "{:?} {:?}", DESTS[d], HOSTS[h]);
            let e = p.explain(&q);
            if a.outcome == Outcome::Allow && a.reason == Reason::Rule {
                let check = e.rules.iter().find(|r| r.name == a.rule).unwrap();
                prop_assert_eq!(check.status, RuleStatus::Matched, "explain {:?}", check);
            }
            if a.reason == Reason::MetadataApi {
                prop_assert!(e.rules.iter().all(|r| r.action == appid_policy::policy::Action::Deny || r.status == RuleStatus::Failed), "explain says an allow rule held for a metadata denial: {:?}", e.rules);
            }
        }
    }

    /// No host string panics the decision (inet_aton on any input).
    #[test]
    fn any_host_decides(host in "\\PC{0,40}|[0-9xX.]{0,40}", d in 0..DESTS.len()) {
        let p = load(&policy(false, &[(false, 0, 0), (false, 5, 0)]));
        let web = web();
        let _ = p.decide(&Query::external(&web, ip(DESTS[d]), Some(&host), 80));
    }
}
