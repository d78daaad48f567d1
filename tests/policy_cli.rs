//! End-to-end tests of `appid policy check` and `appid policy explain`
//! (text, and `-o json|yaml` with `cert inspect -o`),
//! driving the real binary on certificates issued by `appid issue`.
//!
//! The vulnerability cases issue certificates from real Trivy reports in
//! `../shared/fixtures/trivy` (alpine-39: 2 CRITICAL; ubuntu-1804: none).
//! Without that directory those cases are skipped with a printed reason,
//! unless `CI=true`, where they fail.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const APPID: &str = env!("CARGO_BIN_EXE_appid");
const TD: &str = "prod.example";

const POLICY: &str = r#"version: 1
default: deny
mode: enforce
rules:
  - name: web-to-api
    action: allow
    from: { labels.app: web }
    to: { labels.app: api, ports: [8080, "9000-9100"] }
  - name: no-legacy
    action: deny
    from: { labels.tier: legacy }
  - name: batch-jobs
    action: allow
    from: { id: { glob: "spiffe://prod.example/ns/batch/**" } }
    to: { labels.app: api, ports: [7000] }
  - name: scanned-clean-to-db
    action: allow
    from: { vulns.critical: { lte: 0 } }
    to: { labels.app: db, ports: [5432] }
  - name: search-read
    action: allow
    from: { labels.app: web }
    to: { labels.app: search }
    http: { methods: [GET], paths: ["/v1/**"] }
"#;

fn run(args: &[&str]) -> Output {
    Command::new(APPID)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {APPID}: {e}"))
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn fixture(name: &str) -> Option<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures/trivy")
        .join(name);
    if path.exists() {
        return Some(path);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("fixture {} is missing (CI=true)", path.display());
    }
    eprintln!("skipping: fixture {} is missing", path.display());
    None
}

/// A CA in a temporary directory and the policy file next to it.
struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = dir.path().join("ca");
        let out = run(&[
            "authority",
            "init",
            "--trust-domain",
            TD,
            "--dir",
            path(&ca),
        ]);
        assert!(out.status.success(), "authority init: {:?}", text(&out));
        std::fs::write(dir.path().join("policy.yaml"), POLICY).expect("write policy");
        Env { dir }
    }

    fn policy(&self) -> PathBuf {
        self.dir.path().join("policy.yaml")
    }

    /// Issues a certificate: `name.pem`, with labels and an optional report.
    fn issue(&self, name: &str, id: &str, labels: &[&str], vulns: Option<&Path>) -> PathBuf {
        self.issue_by(&self.dir.path().join("ca"), name, id, labels, vulns)
    }

    /// [`Env::issue`] by the CA in `ca` (another trust domain's).
    fn issue_by(
        &self,
        ca: &Path,
        name: &str,
        id: &str,
        labels: &[&str],
        vulns: Option<&Path>,
    ) -> PathBuf {
        let cert = self.dir.path().join(format!("{name}.pem"));
        let key = self.dir.path().join(format!("{name}.key"));
        let mut args = vec!["issue", "--dir", path(ca), "--id", id];
        for l in labels {
            args.extend(["--label", l]);
        }
        if let Some(report) = vulns {
            args.extend(["--vulns", path(report)]);
        }
        args.extend(["--cert", path(&cert), "--key", path(&key)]);
        let out = run(&args);
        assert!(out.status.success(), "issue {name}: {:?}", text(&out));
        cert
    }

    /// `appid policy explain` → (exit code, stdout, stderr).
    fn explain(&self, from: &Path, to: &Path, port: u16, extra: &[&str]) -> (i32, String, String) {
        let port = port.to_string();
        let policy = self.policy();
        let mut args = vec![
            "policy",
            "explain",
            path(&policy),
            "--from",
            path(from),
            "--to",
            path(to),
            "--port",
            &port,
        ];
        args.extend(extra);
        let out = run(&args);
        let (stdout, stderr) = text(&out);
        (out.status.code().unwrap_or(-1), stdout, stderr)
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

#[test]
fn check_prints_a_summary_or_every_error() {
    let env = Env::new();
    let out = run(&["policy", "check", path(&env.policy())]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(
        stdout.trim(),
        format!(
            "{}: 5 rules (4 allow, 1 deny, 1 with http), default deny, mode enforce",
            env.policy().display()
        )
    );

    let bad = env.dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "version: 1\nrules:\n  - name: a\n    action: allow\n    to: { ports: [\"9100-9000\"] }\n  - name: a\n    action: allow\n    to: { external: { cidrs: [10.0.0.0/33] } }\n    http: { methods: [GET] }\n",
    )
    .unwrap();
    let out = run(&["policy", "check", path(&bad)]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
    let name = bad.display().to_string();
    for want in [
        format!("{name}:5:19: port range `9100-9000` is out of order; write `9000-9100`"),
        format!("{name}:6:11: duplicate rule name `a` (first defined at line 3)"),
        format!("{name}:8:31: `10.0.0.0/33` is not a CIDR"),
        format!("{name}:9:5: `http` cannot be combined with `to.external`"),
    ] {
        assert!(stderr.contains(&want), "want {want}\n got {stderr}");
    }
    assert!(stdout.is_empty(), "{stdout}");

    let out = run(&["policy", "check", "/nonexistent/policy.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("/nonexistent/policy.yaml"));
}

#[test]
fn explain_allows_by_label_and_checks_port_range_edges() {
    let env = Env::new();
    let web = env.issue(
        "web",
        "spiffe://prod.example/ns/shop/sa/web",
        &["app=web"],
        None,
    );
    let api = env.issue(
        "api",
        "spiffe://prod.example/ns/shop/sa/api",
        &["app=api"],
        None,
    );

    let (code, stdout, stderr) = env.explain(&web, &api, 8080, &[]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("decision: allow by rule web-to-api"),
        "{stdout}"
    );
    assert!(stdout.contains("rule: web-to-api"), "{stdout}");

    for (port, want) in [(8999, 1), (9000, 0), (9100, 0), (9101, 1)] {
        let (code, stdout, _) = env.explain(&web, &api, port, &[]);
        assert_eq!(code, want, "port {port}: {stdout}");
        if want == 1 {
            assert!(stdout.contains("decision: deny by default"), "{stdout}");
            assert!(
                stdout.contains("allow web-to-api (line 5): to.ports: [8080, \"9000-9100\"]"),
                "near miss names the port clause: {stdout}"
            );
        }
    }

    // The callee's label decides too: api → web is not web → api.
    let (code, stdout, _) = env.explain(&api, &web, 8080, &[]);
    assert_eq!(code, 1, "{stdout}");
}

#[test]
fn explain_deny_wins_over_allow() {
    let env = Env::new();
    let legacy = env.issue(
        "legacy",
        "spiffe://prod.example/ns/shop/sa/old-web",
        &["app=web", "tier=legacy"],
        None,
    );
    let api = env.issue(
        "api",
        "spiffe://prod.example/ns/shop/sa/api",
        &["app=api"],
        None,
    );
    let (code, stdout, _) = env.explain(&legacy, &api, 8080, &[]);
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.contains("decision: deny by rule no-legacy (from.labels.tier: legacy)"),
        "{stdout}"
    );
    // Both rules matched; the deny won.
    assert!(stdout.contains("  allow web-to-api (line 5)\n"), "{stdout}");
    assert!(stdout.contains("  deny no-legacy (line 9)\n"), "{stdout}");
}

#[test]
fn explain_globbed_spiffe_ids() {
    let env = Env::new();
    let api = env.issue(
        "api",
        "spiffe://prod.example/ns/shop/sa/api",
        &["app=api"],
        None,
    );
    let nightly = env.issue(
        "nightly",
        "spiffe://prod.example/ns/batch/sa/nightly",
        &[],
        None,
    );
    let lookalike = env.issue(
        "lookalike",
        "spiffe://prod.example/ns/batchx/sa/nightly",
        &[],
        None,
    );

    let (code, stdout, _) = env.explain(&nightly, &api, 7000, &[]);
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout.contains("decision: allow by rule batch-jobs"),
        "{stdout}"
    );

    let (code, stdout, _) = env.explain(&lookalike, &api, 7000, &[]);
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.contains(
            "allow batch-jobs (line 12): from.id: {glob: \"spiffe://prod.example/ns/batch/**\"}"
        ),
        "{stdout}"
    );
}

#[test]
fn explain_denies_a_workload_whose_report_has_criticals() {
    let (Some(dirty_report), Some(clean_report)) =
        (fixture("alpine-39.json"), fixture("ubuntu-1804.json"))
    else {
        return;
    };
    let env = Env::new();
    let db = env.issue(
        "db",
        "spiffe://prod.example/ns/data/sa/db",
        &["app=db"],
        None,
    );
    let dirty = env.issue(
        "dirty",
        "spiffe://prod.example/ns/shop/sa/worker",
        &["app=worker"],
        Some(&dirty_report),
    );
    let clean = env.issue(
        "clean",
        "spiffe://prod.example/ns/shop/sa/reporter",
        &["app=reporter"],
        Some(&clean_report),
    );
    let unscanned = env.issue(
        "unscanned",
        "spiffe://prod.example/ns/shop/sa/new",
        &[],
        None,
    );

    let (code, stdout, _) = env.explain(&dirty, &db, 5432, &[]);
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("decision: deny by default"), "{stdout}");
    assert!(
        stdout.contains("allow scanned-clean-to-db (line 16): from.vulns.critical: {lte: 0}"),
        "{stdout}"
    );

    let (code, stdout, _) = env.explain(&clean, &db, 5432, &[]);
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout.contains("decision: allow by rule scanned-clean-to-db"),
        "{stdout}"
    );

    // No scan at all: `lte` on a missing attribute does not match.
    let (code, stdout, _) = env.explain(&unscanned, &db, 5432, &[]);
    assert_eq!(code, 1, "{stdout}");
}

#[test]
fn explain_http_rules_need_a_request() {
    let env = Env::new();
    let web = env.issue(
        "web",
        "spiffe://prod.example/ns/shop/sa/web",
        &["app=web"],
        None,
    );
    let search = env.issue(
        "search",
        "spiffe://prod.example/ns/shop/sa/search",
        &["app=search"],
        None,
    );

    let (code, stdout, _) = env.explain(&web, &search, 80, &[]);
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.contains("decision: defer to L7: rule search-read inspects HTTP requests"),
        "{stdout}"
    );

    let (code, stdout, _) = env.explain(&web, &search, 80, &["--method", "GET", "--path", "/v1/q"]);
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout.contains("decision: allow by rule search-read"),
        "{stdout}"
    );

    let (code, stdout, _) =
        env.explain(&web, &search, 80, &["--method", "POST", "--path", "/v1/q"]);
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.contains("search-read (line 20): http.methods: [GET]"),
        "{stdout}"
    );

    // A connection an `http` rule governs must be HTTP (fails closed).
    let (code, stdout, _) = env.explain(&web, &search, 80, &["--not-http"]);
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.contains("decision: deny: not HTTP: rule search-read has http conditions"),
        "{stdout}"
    );

    // The path policy sees is the sidecar's canonical one, or a refusal.
    let (code, stdout, _) = env.explain(
        &web,
        &search,
        80,
        &["--method", "GET", "--path", "/v1//%71;x=1"],
    );
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("(canonical path /v1/q)"), "{stdout}");
    let (code, stdout, _) = env.explain(
        &web,
        &search,
        80,
        &["--method", "GET", "--path", "/v1/../admin"],
    );
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.contains("decision: refused before policy (400 invalid-request): dot segment"),
        "{stdout}"
    );
}

/// A peer of another trust domain is foreign unless it is one of the
/// sidecar's own `trust_domains` (`--trust-domain`, as the sidecar takes
/// its config's): then `web-to-api`, which names no trust domain, admits it.
#[test]
fn explain_takes_the_sidecars_trust_domains() {
    let env = Env::new();
    let old_ca = env.dir.path().join("old-ca");
    let out = run(&[
        "authority",
        "init",
        "--trust-domain",
        "old.example",
        "--dir",
        path(&old_ca),
    ]);
    assert!(out.status.success(), "authority init: {:?}", text(&out));
    let old_web = env.issue_by(
        &old_ca,
        "old-web",
        "spiffe://old.example/ns/shop/sa/web",
        &["app=web"],
        None,
    );
    let api = env.issue(
        "api",
        "spiffe://prod.example/ns/shop/sa/api",
        &["app=api"],
        None,
    );

    let (code, stdout, _) = env.explain(&old_web, &api, 8080, &[]);
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.contains("the peer is of another trust domain"),
        "{stdout}"
    );
    let home = [
        "--trust-domain",
        "prod.example",
        "--trust-domain",
        "old.example",
    ];
    let (code, stdout, _) = env.explain(&old_web, &api, 8080, &home);
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout.contains("decision: allow by rule web-to-api"),
        "{stdout}"
    );
    // Outbound from the old domain's web, the same.
    let (code, stdout, _) = env.explain(
        &old_web,
        &api,
        8080,
        &[&home[..], &["--direction", "outbound"]].concat(),
    );
    assert_eq!(code, 0, "{stdout}");

    let (code, _, stderr) = env.explain(&old_web, &api, 8080, &["--trust-domain", "Old Example"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--trust-domain"), "{stderr}");

    // The same domains read from the sidecar's own config file; a flag adds
    // to them.
    let config = env.dir.path().join("proxy.yaml");
    let write_config = |domains: &str| {
        std::fs::write(
            &config,
            format!(
                "identity: {{cert: api.pem, key: api.key, bundle: ca.pem}}\n\
                 trust_domains: {domains}\n\
                 policy: policy.yaml\n\
                 inbound:\n  - listen: \"127.0.0.1:8443\"\n    forward: \"127.0.0.1:8080\"\n"
            ),
        )
        .unwrap();
    };
    write_config("[prod.example, old.example]");
    let (code, stdout, _) = env.explain(&old_web, &api, 8080, &["--config", path(&config)]);
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout.contains("decision: allow by rule web-to-api"),
        "{stdout}"
    );
    write_config("[prod.example]");
    let (code, stdout, _) = env.explain(&old_web, &api, 8080, &["--config", path(&config)]);
    assert_eq!(code, 1, "{stdout}");
    let with_flag = ["--config", path(&config), "--trust-domain", "old.example"];
    let (code, stdout, _) = env.explain(&old_web, &api, 8080, &with_flag);
    assert_eq!(code, 0, "{stdout}");
    // A config that does not load: exit 2, naming the file and the way out.
    write_config("[Prod Example]");
    let (code, _, stderr) = env.explain(&old_web, &api, 8080, &["--config", path(&config)]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("proxy.yaml"), "{stderr}");
    assert!(stderr.contains("--trust-domain instead"), "{stderr}");
}

#[test]
fn explain_outside_the_mesh_and_bad_input() {
    let env = Env::new();
    let web = env.issue(
        "web",
        "spiffe://prod.example/ns/shop/sa/web",
        &["app=web"],
        None,
    );

    // `appid policy explain POLICY --from web --to TO --port PORT EXTRA…`
    // → (exit code, stdout).
    let explain_to = |policy: &Path, to: &str, port: &str, extra: &[&str]| {
        let mut args = vec![
            "policy",
            "explain",
            path(policy),
            "--from",
            path(&web),
            "--to",
            to,
            "--port",
            port,
        ];
        args.extend(extra);
        let out = run(&args);
        (out.status.code(), text(&out).0)
    };

    // The metadata API is denied by name.
    let policy = env.policy();
    let (code, stdout) = explain_to(&policy, "169.254.169.254", "80", &[]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains("metadata API"), "{stdout}");

    // `Host: metadata` to an address no rule takes outside the mesh is not
    // the metadata API (the sidecar sends it into the mesh): explain says
    // so and decides it without the name, as the sidecar does.
    let by_name =
        |policy: &Path| explain_to(policy, "198.51.100.40", "80", &["--host", "metadata"]).1;
    let stdout = by_name(&policy);
    assert!(
        stdout.contains("no rule takes 198.51.100.40 outside the mesh")
            && !stdout.contains("a cloud metadata endpoint"),
        "{stdout}"
    );
    // Where a rule takes the address outside, the name is the metadata API.
    let outside = env.dir.path().join("outside.yaml");
    std::fs::write(
        &outside,
        format!(
            "{POLICY}  - name: partner\n    action: allow\n    from: {{ labels.app: web }}\n    to: {{ external: {{ cidrs: [198.51.100.0/24] }} }}\n"
        ),
    )
    .unwrap();
    let stdout = by_name(&outside);
    assert!(
        stdout.contains("a cloud metadata endpoint") && !stdout.contains("outside the mesh:"),
        "{stdout}"
    );

    // An address no rule takes outside the mesh is not decided by the
    // default: the sidecar sends it into the mesh (mTLS), whether the
    // default denies or allows; exit 1 (not allowed outside the mesh).
    let allow_by_default = env.dir.path().join("allow-by-default.yaml");
    std::fs::write(
        &allow_by_default,
        POLICY.replace("default: deny", "default: allow"),
    )
    .unwrap();
    for (policy, default) in [(&policy, "deny"), (&allow_by_default, "allow")] {
        let (code, stdout) = explain_to(policy, "10.0.0.5", "5432", &[]);
        assert_eq!(code, Some(1), "default {default}: {stdout}");
        assert!(
            stdout.contains("decision: into the mesh: no rule takes 10.0.0.5 outside the mesh")
                && stdout.contains("rule: default")
                && stdout.contains("explain that call with --to <the certificate"),
            "default {default}: {stdout}"
        );
        let (code, stdout) = explain_to(policy, "10.0.0.5", "5432", &["-o", "json"]);
        assert_eq!(code, Some(1), "default {default}: {stdout}");
        let v: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
        assert_eq!(
            v["decision"]["outcome"], "mesh",
            "default {default}: {stdout}"
        );
        assert_eq!(
            v["decision"]["rule"], "default",
            "default {default}: {stdout}"
        );
    }
    // Taken outside by a rule, it is decided by it.
    let (code, stdout) = explain_to(&outside, "198.51.100.7", "443", &[]);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(
        stdout.contains("decision: allow") && !stdout.contains("into the mesh"),
        "{stdout}"
    );

    // A certificate that does not exist: exit 2, naming the file.
    let (code, stdout, stderr) = env.explain(Path::new("/nonexistent/cert.pem"), &web, 80, &[]);
    assert_eq!(code, 2, "{stdout}{stderr}");
    assert!(stderr.contains("/nonexistent/cert.pem"), "{stderr}");

    // A policy with errors: exit 2 with the position.
    std::fs::write(
        &policy,
        "version: 1\nrules:\n  - name: a\n    action: alow\n",
    )
    .unwrap();
    let (code, _, stderr) = env.explain(&web, &web, 80, &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("policy.yaml:4:13: `action` cannot be `alow`; did you mean `allow`?"),
        "{stderr}"
    );
}

/// `-o json|yaml`: the same decision as a document, the same exit status;
/// `cert inspect -o json` is `--json`, and `-o yaml` the same claims.
#[test]
fn explain_and_cert_inspect_print_json_and_yaml() {
    let env = Env::new();
    let web = env.issue(
        "web",
        "spiffe://prod.example/ns/shop/sa/web",
        &["app=web"],
        None,
    );
    let search = env.issue(
        "search",
        "spiffe://prod.example/ns/shop/sa/search",
        &["app=search"],
        None,
    );

    let (code, stdout, stderr) = env.explain(
        &web,
        &search,
        443,
        &["--method", "GET", "--path", "/v1/x", "-o", "json"],
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(v["decision"]["outcome"], "allow");
    assert_eq!(v["decision"]["rule"], "search-read");
    assert_eq!(v["query"]["direction"], "inbound");
    assert_eq!(v["query"]["port"], 443);
    assert_eq!(v["query"]["path"], "/v1/x");
    let rules = v["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 5);
    let search_rule = rules.iter().find(|r| r["name"] == "search-read").unwrap();
    assert_eq!(search_rule["status"], "matched");
    let web_rule = rules.iter().find(|r| r["name"] == "web-to-api").unwrap();
    assert_eq!(web_rule["status"], "failed");
    assert_eq!(web_rule["line"], 5);

    // Refused before policy: still a document, exit 1.
    let (code, stdout, _) = env.explain(
        &web,
        &search,
        443,
        &["--method", "GET", "--path", "/v1/x/../y", "-o", "json"],
    );
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["decision"]["outcome"], "refused");
    assert_eq!(v["decision"]["rule"], "invalid-request");

    // A deferred connection: exit 1, and the note says what to give.
    let (code, stdout, _) = env.explain(&web, &search, 443, &["-o", "json"]);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["decision"]["outcome"], "defer to L7");
    assert!(v["note"].as_str().unwrap().contains("--method"));

    let (code, stdout, _) = env.explain(&search, &web, 8080, &["-o", "yaml"]);
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("outcome: deny"), "{stdout}");
    assert!(stdout.contains("rule: default"), "{stdout}");

    let (code, _, stderr) = env.explain(&web, &search, 443, &["-o", "xml"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("xml"), "{stderr}");

    // cert inspect: --json and -o json print the same claims document.
    let inspect = |extra: &[&str]| {
        let mut args = vec!["cert", "inspect", path(&web)];
        args.extend(extra);
        let out = run(&args);
        assert!(out.status.success(), "{:?}", text(&out));
        text(&out).0
    };
    let old = inspect(&["--json"]);
    assert_eq!(inspect(&["-o", "json"]), old);
    let claims: serde_json::Value = serde_json::from_str(&old).unwrap();
    assert_eq!(claims["labels"]["app"], "web");
    let yaml = inspect(&["-o", "yaml"]);
    assert!(
        yaml.contains("id: spiffe://prod.example/ns/shop/sa/web"),
        "{yaml}"
    );
    assert!(inspect(&[]).contains("SPIFFE ID:"));
    let out = run(&["cert", "inspect", path(&web), "--json", "-o", "yaml"]);
    assert_eq!(out.status.code(), Some(2), "{:?}", text(&out));
}
