//! End-to-end tests of the identity commands: `authority init`, `issue`,
//! `cert inspect`, checked against OpenSSL as an independent reader.
//!
//! OpenSSL is required (CI installs it); fixture reports come from
//! `../shared/fixtures` when present (required when `CI=true`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const APPID_OID: &str = "2.25.130917387716018385405044382042487633896";

fn appid(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_appid"))
        .args(args)
        .output()
        .expect("run appid")
}

fn openssl(args: &[&str]) -> Output {
    Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl must be installed (apt-get install openssl)")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts a command failed with `code` and a single-line error.
fn assert_fails(output: &Output, code: i32, needle: &str) {
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(code), "stderr: {stderr}");
    assert!(stderr.contains(needle), "expected `{needle}` in: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
}

struct Workspace {
    dir: tempfile::TempDir,
}

impl Workspace {
    fn new(trust_domain: &str, key_alg: &str) -> Workspace {
        let dir = tempfile::tempdir().unwrap();
        let ws = Workspace { dir };
        let out = appid(&[
            "authority",
            "init",
            "--trust-domain",
            trust_domain,
            "--dir",
            ws.ca_dir().to_str().unwrap(),
            "--key-alg",
            key_alg,
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        ws
    }

    fn ca_dir(&self) -> PathBuf {
        self.dir.path().join("ca")
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_string()
    }

    fn issue(&self, name: &str, extra: &[&str]) -> Output {
        let cert = self.path(&format!("{name}.pem"));
        let key = self.path(&format!("{name}.key"));
        let ca = self.ca_dir();
        let mut args = vec![
            "issue",
            "--dir",
            ca.to_str().unwrap(),
            "--cert",
            &cert,
            "--key",
            &key,
        ];
        args.extend_from_slice(extra);
        appid(&args)
    }
}

/// The claims JSON inside the AppID extension, decoded with openssl.
fn claims_via_openssl(cert: &str) -> serde_json::Value {
    let out = openssl(&["asn1parse", "-in", cert]);
    let dump = text(&out.stdout);
    let mut lines = dump.lines();
    lines
        .find(|line| line.contains(APPID_OID))
        .expect("AppID OID in asn1parse output");
    let value_line = lines.next().expect("extnValue after the OID");
    let hex = value_line
        .split("[HEX DUMP]:")
        .nth(1)
        .expect("OCTET STRING hex dump");
    let der = hex::decode(hex.trim()).unwrap();
    assert_eq!(der[0], 0x0c, "extnValue is a DER UTF8String");
    let (len, header) = match der[1] {
        n if n < 0x80 => (n as usize, 2),
        0x81 => (der[2] as usize, 3),
        0x82 => (((der[2] as usize) << 8) | der[3] as usize, 4),
        other => panic!("unexpected length byte {other:#x}"),
    };
    assert_eq!(der.len(), header + len, "no trailing bytes");
    serde_json::from_slice(&der[header..]).unwrap()
}

fn shared_fixtures() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures");
    if dir.is_dir() {
        Some(dir)
    } else if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{} is required in CI", dir.display());
    } else {
        eprintln!("skipping: {} not found", dir.display());
        None
    }
}

#[test]
fn issued_certificate_is_a_spiffe_svid_that_openssl_verifies() {
    for alg in ["ecdsa-p256", "ed25519"] {
        let ws = Workspace::new("prod.example", alg);
        let digest = format!("sha256:{}", "ab".repeat(32));
        let out = ws.issue(
            "web",
            &[
                "--id",
                "spiffe://prod.example/ns/shop/sa/web",
                "--label",
                "app=web",
                "--label",
                "team=shop",
                "--image-digest",
                &digest,
                "--cloud-tag",
                "env=prod",
            ],
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        let cert = ws.path("web.pem");
        let ca = ws.ca_dir().join("ca.pem");

        let verify = openssl(&["verify", "-CAfile", ca.to_str().unwrap(), &cert]);
        assert!(
            text(&verify.stdout).contains(": OK"),
            "{alg}: {}{}",
            text(&verify.stdout),
            text(&verify.stderr)
        );

        let x509 = text(&openssl(&["x509", "-in", &cert, "-noout", "-text"]).stdout);
        assert!(
            x509.contains("URI:spiffe://prod.example/ns/shop/sa/web"),
            "{x509}"
        );
        assert!(x509.contains("X509v3 Key Usage: critical"), "{x509}");
        assert!(x509.contains("Digital Signature"), "{x509}");
        assert!(
            x509.contains("TLS Web Server Authentication, TLS Web Client Authentication"),
            "{x509}"
        );
        assert!(x509.contains("CA:FALSE"), "{x509}");
        let oid_line = x509
            .lines()
            .find(|l| l.contains(APPID_OID))
            .expect("AppID OID shown by openssl");
        assert!(!oid_line.contains("critical"), "non-critical: {oid_line}");
        assert_eq!(x509.matches("URI:").count(), 1, "exactly one URI SAN");

        let claims = claims_via_openssl(&cert);
        assert_eq!(
            claims,
            serde_json::json!({
                "v": 1,
                "id": "spiffe://prod.example/ns/shop/sa/web",
                "labels": {"app": "web", "team": "shop"},
                "image": {"digest": digest},
                "cloud": {"tags": {"env": "prod"}},
                "attestation": "manual",
            })
        );

        let key_mode = std::fs::metadata(ws.path("web.key")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(key_mode.permissions().mode() & 0o777, 0o600);
    }
}

/// `--image-name` and `--attestation` land in the claims as given (the
/// name beside the digest; the attestation instead of `manual`, with a
/// warning that nothing was attested).
#[test]
fn issue_records_the_image_name_and_the_attestation_given() {
    let ws = Workspace::new("prod.example", "ecdsa-p256");
    let digest = format!("sha256:{}", "cd".repeat(32));
    let out = ws.issue(
        "api",
        &[
            "--id",
            "spiffe://prod.example/ns/shop/sa/api",
            "--image-digest",
            &digest,
            "--image-name",
            "registry.example/api:2.1",
            "--attestation",
            "join-token",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let claims = claims_via_openssl(&ws.path("api.pem"));
    assert_eq!(
        claims["image"],
        serde_json::json!({"digest": digest, "name": "registry.example/api:2.1"}),
        "{claims}"
    );
    assert_eq!(claims["attestation"], "join_token", "{claims}");
    // Recorded, not performed: the holder of the CA key is told so.
    let warning = text(&out.stderr);
    assert!(
        warning.contains("warning: the certificate says `attestation: join_token`, but this command attested nothing"),
        "{warning}"
    );
    let manual = ws.issue("web", &["--id", "spiffe://prod.example/ns/shop/sa/web"]);
    assert!(manual.status.success(), "{}", text(&manual.stderr));
    assert!(
        !text(&manual.stderr).contains("attested nothing"),
        "{}",
        text(&manual.stderr)
    );
}

#[test]
fn inspect_shows_identity_and_claims() {
    let ws = Workspace::new("prod.example", "ecdsa-p256");
    let out = ws.issue(
        "api",
        &[
            "--id",
            "spiffe://prod.example/api",
            "--label",
            "app=api",
            "--ttl",
            "30m",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let inspect = appid(&["cert", "inspect", &ws.path("api.pem")]);
    let shown = text(&inspect.stdout);
    assert!(inspect.status.success(), "{}", text(&inspect.stderr));
    assert!(
        shown.contains("SPIFFE ID:  spiffe://prod.example/api"),
        "{shown}"
    );
    assert!(shown.contains("labels.app"), "{shown}");
    assert!(shown.contains("appid CA prod.example"), "{shown}");
    assert!(
        shown.contains("Expires:    in 29m") || shown.contains("Expires:    in 30m"),
        "{shown}"
    );

    let json = appid(&["cert", "inspect", &ws.path("api.pem"), "--json"]);
    let claims: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(claims["labels"]["app"], "api");
    assert_eq!(claims, claims_via_openssl(&ws.path("api.pem")));

    // The CA certificate has no AppID extension: exit 1, and it says so.
    let ca = ws.ca_dir().join("ca.pem");
    let out = appid(&["cert", "inspect", ca.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout).contains("no AppID extension"),
        "{}",
        text(&out.stdout)
    );
    let out = appid(&["cert", "inspect", ca.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no AppID extension"));
}

/// A Trivy report in the real SchemaVersion 2 format, written for this test.
const OWN_TRIVY_REPORT: &str = r#"{
  "SchemaVersion": 2,
  "CreatedAt": "2026-11-20T10:00:00Z",
  "ArtifactName": "registry.example/legacy:0.9",
  "ArtifactType": "container_image",
  "Metadata": {
    "ImageID": "sha256:1111111111111111111111111111111111111111111111111111111111111111",
    "RepoDigests": ["registry.example/legacy@sha256:2222222222222222222222222222222222222222222222222222222222222222"]
  },
  "Results": [
    {"Target": "legacy (debian 10.1)", "Class": "os-pkgs", "Type": "debian",
     "Vulnerabilities": [
       {"VulnerabilityID": "CVE-2026-0001", "PkgName": "openssl", "InstalledVersion": "1.1.1d", "Severity": "CRITICAL"},
       {"VulnerabilityID": "CVE-2026-0002", "PkgName": "zlib", "InstalledVersion": "1.2.11", "Severity": "HIGH"},
       {"VulnerabilityID": "CVE-2026-0003", "PkgName": "bash", "InstalledVersion": "5.0", "Severity": "LOW"}
     ]}
  ]
}"#;

#[test]
fn issue_from_a_scanner_report_fills_vulns_and_digest() {
    let ws = Workspace::new("prod.example", "ecdsa-p256");
    let report = ws.path("report.json");
    std::fs::write(&report, OWN_TRIVY_REPORT).unwrap();
    let out = ws.issue(
        "legacy",
        &["--id", "spiffe://prod.example/legacy", "--vulns", &report],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let claims = claims_via_openssl(&ws.path("legacy.pem"));
    let vulns = &claims["vulns"];
    assert_eq!(
        (
            vulns["critical"].as_u64(),
            vulns["high"].as_u64(),
            vulns["low"].as_u64()
        ),
        (Some(1), Some(1), Some(1))
    );
    assert_eq!(vulns["scanner"], "trivy");
    let sha = text(
        &Command::new("sha256sum")
            .arg(&report)
            .output()
            .unwrap()
            .stdout,
    );
    assert_eq!(
        vulns["report"],
        format!("sha256:{}", sha.split_whitespace().next().unwrap())
    );
    assert_eq!(
        claims["image"]["digest"],
        "sha256:2222222222222222222222222222222222222222222222222222222222222222"
    );
    // An explicit --image-digest wins over the report's.
    let digest = format!("sha256:{}", "cd".repeat(32));
    let out = ws.issue(
        "legacy2",
        &[
            "--id",
            "spiffe://prod.example/legacy",
            "--vulns",
            &report,
            "--image-digest",
            &digest,
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        claims_via_openssl(&ws.path("legacy2.pem"))["image"]["digest"],
        digest
    );
}

#[test]
fn issue_from_fixture_reports() {
    let Some(fixtures) = shared_fixtures() else {
        return;
    };
    let ws = Workspace::new("prod.example", "ecdsa-p256");
    // (file, critical, high, medium, low) from fixtures/SOURCES.md.
    let cases = [
        ("trivy/alpine-39.json", 2, 0, 4, 0),
        ("grype/chainguard-ruby-test.json", 0, 3, 0, 0),
    ];
    for (i, (file, critical, high, medium, low)) in cases.into_iter().enumerate() {
        let report = fixtures.join(file);
        let name = format!("w{i}");
        let out = ws.issue(
            &name,
            &[
                "--id",
                "spiffe://prod.example/w",
                "--vulns",
                report.to_str().unwrap(),
            ],
        );
        assert!(out.status.success(), "{file}: {}", text(&out.stderr));
        let vulns = &claims_via_openssl(&ws.path(&format!("{name}.pem")))["vulns"];
        assert_eq!(
            [
                &vulns["critical"],
                &vulns["high"],
                &vulns["medium"],
                &vulns["low"]
            ],
            [critical, high, medium, low]
                .map(serde_json::Value::from)
                .each_ref(),
            "{file}"
        );
    }
}

#[test]
fn bad_input_gives_exit_2_one_line_and_writes_nothing() {
    let ws = Workspace::new("prod.example", "ecdsa-p256");
    let ca = ws.ca_dir();
    let ca = ca.to_str().unwrap();

    // A CA directory that already holds a CA.
    let before = std::fs::read(ws.ca_dir().join("ca.key")).unwrap();
    let out = appid(&[
        "authority",
        "init",
        "--trust-domain",
        "prod.example",
        "--dir",
        ca,
    ]);
    assert_fails(&out, 2, "refusing to overwrite");
    assert_eq!(std::fs::read(ws.ca_dir().join("ca.key")).unwrap(), before);

    // A bad trust domain.
    let out = appid(&[
        "authority",
        "init",
        "--trust-domain",
        "Not A Domain",
        "--dir",
        &ws.path("other-ca"),
    ]);
    assert_fails(&out, 2, "trust domain");
    assert!(!Path::new(&ws.path("other-ca")).exists());

    let report = ws.path("not-a-report.json");
    std::fs::write(&report, r#"{"hello": "world"}"#).unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--id", "http://prod.example/web"], "spiffe://"),
        (vec!["--id", "spiffe://prod.example"], "no workload path"),
        (vec!["--id", "spiffe://other.example/web"], "trust domain"),
        (
            vec!["--id", "spiffe://prod.example/web", "--label", "app"],
            "key=value",
        ),
        (
            vec![
                "--id",
                "spiffe://prod.example/web",
                "--image-digest",
                "sha256:12",
            ],
            "64",
        ),
        (
            vec![
                "--id",
                "spiffe://prod.example/web",
                "--vulns",
                "/nonexistent/r.json",
            ],
            "/nonexistent/r.json",
        ),
        (
            vec!["--id", "spiffe://prod.example/web", "--vulns", &report],
            "not-a-report.json",
        ),
        (
            vec!["--id", "spiffe://prod.example/web", "--ttl", "forever"],
            "--ttl",
        ),
    ];
    for (extra, needle) in cases {
        let out = ws.issue("bad", &extra);
        assert_fails(&out, 2, needle);
        assert!(!Path::new(&ws.path("bad.pem")).exists(), "{extra:?}");
        assert!(!Path::new(&ws.path("bad.key")).exists(), "{extra:?}");
    }

    // A CA directory that does not exist.
    let out = appid(&[
        "issue",
        "--dir",
        &ws.path("missing"),
        "--id",
        "spiffe://prod.example/web",
        "--cert",
        &ws.path("x.pem"),
        "--key",
        &ws.path("x.key"),
    ]);
    assert_fails(&out, 2, "missing");

    // A file that is not PEM.
    let out = appid(&["cert", "inspect", &report]);
    assert_fails(&out, 2, "not-a-report.json");
}

/// `issue` never replaces a certificate or key silently: an existing file
/// is an error that names it and the way out (`--force`), and nothing is
/// written; with `--force` both are replaced.
#[test]
fn issue_refuses_to_overwrite_without_force() {
    let ws = Workspace::new("prod.example", "ecdsa-p256");
    let id = ["--id", "spiffe://prod.example/ns/shop/sa/web"];
    let first = ws.issue("web", &id);
    assert!(first.status.success(), "{}", text(&first.stderr));
    let (cert, key) = (ws.path("web.pem"), ws.path("web.key"));
    let before = (std::fs::read(&cert).unwrap(), std::fs::read(&key).unwrap());

    let again = ws.issue("web", &id);
    assert_fails(&again, 2, "--force");
    assert!(
        text(&again.stderr).contains("web.key"),
        "{}",
        text(&again.stderr)
    );
    let unchanged = (std::fs::read(&cert).unwrap(), std::fs::read(&key).unwrap());
    assert!(before == unchanged, "nothing is written when refused");

    let forced = ws.issue("web", &[id[0], id[1], "--force"]);
    assert!(forced.status.success(), "{}", text(&forced.stderr));
    assert_ne!(std::fs::read(&key).unwrap(), before.1, "a new key");
    assert_ne!(std::fs::read(&cert).unwrap(), before.0, "a new certificate");
}
