//! Policy decision benchmarks: 10, 1 000 and 10 000 rules side by side, so
//! the growth (there should be none to speak of) is visible in one run.
//!
//! The policies are a realistic mix, generated deterministically: label
//! selectors between apps (half with a vulnerability threshold), globbed
//! SPIFFE IDs per namespace, port lists and ranges, deny rules on
//! vulnerability counts, cloud-tag selectors, external destinations and
//! unauthenticated sources, plus one global deny that every decision has
//! to look at. The L7 variant gives half of the app-to-app rules an `http`
//! section and decides one request.
//!
//! `cargo bench -p appid-policy --bench policy`

use std::hint::black_box;

use appid_policy::AppIdClaims;
use appid_policy::claims::{Cloud, Vulns};
use appid_policy::policy::{Direction, HttpRequest, Outcome, Policy, Query};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

const SIZES: [usize; 3] = [10, 1_000, 10_000];

/// A small deterministic generator (xorshift), so every run benches the
/// same policy.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

fn apps(n: usize) -> usize {
    (n / 4).max(4)
}

fn namespaces(n: usize) -> usize {
    (n / 50).max(2)
}

fn id(ns: usize, app: usize) -> String {
    format!("spiffe://prod.example/ns/ns-{ns}/sa/app-{app}")
}

/// The policy with `n` rules. Rule 0 always allows app-0 → app-1 on 8080
/// (L7: GET/POST under /api/app-1/), the connection the benchmark decides.
fn policy_yaml(n: usize, l7: bool) -> String {
    let (apps, nss) = (apps(n), namespaces(n));
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut s = String::from("version: 1\ndefault: deny\nmode: enforce\nrules:\n");
    s.push_str(
        "  - name: no-criticals\n    action: deny\n    from: { vulns.critical: { gt: 0 } }\n",
    );
    for r in 0..n.saturating_sub(1) {
        let (a, b) = if r == 0 {
            (0, 1)
        } else {
            (rng.below(apps), rng.below(apps))
        };
        let (k, k2) = (rng.below(nss), rng.below(nss));
        let rule = match r % 20 {
            0..=9 => {
                let vulns = if r % 2 == 0 {
                    ", vulns.critical: { lte: 0 }"
                } else {
                    ""
                };
                let ports = if r % 3 == 0 {
                    "[8080]"
                } else {
                    "[8080, \"9000-9100\"]"
                };
                let http = if l7 && r % 2 == 0 {
                    format!(
                        "\n    http: {{ methods: [GET, POST], paths: [\"/api/app-{b}/**\"], headers: {{ x-tenant: \"acme*\" }} }}"
                    )
                } else {
                    String::new()
                };
                format!(
                    "    action: allow\n    from: {{ labels.app: app-{a}{vulns} }}\n    to: {{ labels.app: app-{b}, ports: {ports} }}{http}"
                )
            }
            10..=12 => format!(
                "    action: allow\n    from: {{ id: {{ glob: \"spiffe://prod.example/ns/ns-{k}/sa/*\" }} }}\n    to: {{ labels.app: app-{b}, ports: [\"8000-8099\"] }}"
            ),
            13..=14 => format!(
                "    action: deny\n    from: {{ labels.app: app-{a}, vulns.high: {{ gt: 10 }} }}\n    to: {{ labels.app: app-{b} }}"
            ),
            15..=16 => format!(
                "    action: allow\n    from: {{ id: {{ glob: \"spiffe://prod.example/ns/ns-{k}/**\" }} }}\n    to: {{ id: {{ glob: \"spiffe://prod.example/ns/ns-{k2}/sa/*\" }}, ports: [443] }}"
            ),
            17 => format!(
                "    action: allow\n    from: {{ cloud.tags.env: prod, labels.team: {{ in: [team-{a}, team-{b}] }} }}\n    to: {{ labels.app: app-{b} }}"
            ),
            18 => format!(
                "    action: allow\n    from: {{ labels.app: app-{a} }}\n    to: {{ external: {{ hosts: [\"*.svc-{b}.example.com\"], ports: [443] }} }}"
            ),
            _ => format!(
                "    action: allow\n    from: {{ unauthenticated: {{ cidrs: [\"10.{}.0.0/16\"] }} }}\n    to: {{ labels.app: app-{b}, ports: [8081] }}",
                a % 256
            ),
        };
        s.push_str(&format!("  - name: rule-{r:05}\n{rule}\n"));
    }
    s
}

fn workload(ns: usize, app: usize, team: usize) -> AppIdClaims {
    let mut c = AppIdClaims::new(id(ns, app), "join_token");
    c.labels.insert("app".into(), format!("app-{app}"));
    c.labels.insert("team".into(), format!("team-{team}"));
    c.vulns = Some(Vulns {
        critical: 0,
        high: 3,
        medium: 7,
        low: 12,
        unknown: 0,
        scanner: "trivy".into(),
        report: "sha256:00".into(),
        scanned_at: None,
    });
    let mut cloud = Cloud {
        provider: Some("aws".into()),
        region: Some("eu-west-1".into()),
        ..Cloud::default()
    };
    cloud.tags.insert("env".into(), "prod".into());
    c.cloud = Some(cloud);
    c
}

fn load(n: usize, l7: bool) -> Policy {
    let p = Policy::load("bench.yaml", &policy_yaml(n, l7)).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{} | {:?}", p.summary(), p.index_stats());
    p
}

fn decide_l4(c: &mut Criterion) {
    let caller = workload(0, 0, 0);
    let callee = workload(0, 1, 1);
    let stranger = workload(999, 999_999, 999_999);
    let mut g = c.benchmark_group("decide_l4");
    for n in SIZES {
        let p = load(n, false);
        let q = Query::meshed(Direction::Inbound, &caller, &callee, 8080);
        assert_eq!(p.decide(&q).outcome, Outcome::Allow);
        g.bench_with_input(BenchmarkId::new("allow", n), &n, |b, _| {
            b.iter(|| p.decide(black_box(&q)).outcome)
        });
        let q = Query::meshed(Direction::Inbound, &stranger, &callee, 8080);
        assert_eq!(p.decide(&q).outcome, Outcome::Deny);
        g.bench_with_input(BenchmarkId::new("deny", n), &n, |b, _| {
            b.iter(|| p.decide(black_box(&q)).outcome)
        });
    }
    g.finish();
}

fn decide_l7(c: &mut Criterion) {
    let caller = workload(0, 0, 0);
    let callee = workload(0, 1, 1);
    let headers = [
        ("x-tenant", "acme-eu"),
        ("content-type", "application/json"),
    ];
    let request = HttpRequest {
        method: "GET",
        path: "/api/app-1/items/42?full=1",
        headers: &headers,
    };
    let mut g = c.benchmark_group("decide_l7");
    for n in SIZES {
        let p = load(n, true);
        let q = Query::meshed(Direction::Inbound, &caller, &callee, 8080).with_request(request);
        assert_eq!(p.decide(&q).outcome, Outcome::Allow);
        g.bench_with_input(BenchmarkId::new("allow", n), &n, |b, _| {
            b.iter(|| p.decide(black_box(&q)).outcome)
        });
    }
    g.finish();
}

criterion_group!(benches, decide_l4, decide_l7);
criterion_main!(benches);
