//! Cloud attestation end to end: the real `appid authority serve` with the
//! real signed AWS and GCP documents from `../shared/fixtures`, requested
//! through the sidecar's own (verifying) authority client.
//!
//! Covers: the valid AWS document attests (for `/signature` and `/rsa2048`)
//! and yields `cloud.*` claims; a replay of an attested document is refused;
//! the invalid document and signature are refused; a document checked
//! against another region's certificate is refused; the GCP token attests at
//! a clock inside its validity and is refused as expired at the real clock.
//! Without `../shared` these skip with a reason (fail under `CI=true`).
//!
//! Kubernetes (no fixtures needed: the test is the cluster): a key made here
//! signs projected service-account tokens in the shape the API server
//! issues; the authority gets its JWKS, issuer and audience. Two pods of one
//! registered service account get the same SPIFFE ID with the registered
//! labels and scan; a token redeemed twice, a token of an unregistered or
//! join-token-only service account, and a token for another audience are
//! refused with their reason; incomplete settings are refused at start.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use appid_proxy::authority::client::{AuthorityClient, new_key_and_csr};
use appid_proxy::authority::service::Proof;
use appid_proxy::identity::files;
use appid_proxy::identity::inspect::CertInfo;
use appid_proxy::identity::verify::TrustBundle;

#[path = "k8s_cluster.rs"]
mod k8s_cluster;

fn appid() -> Command {
    Command::new(env!("CARGO_BIN_EXE_appid"))
}

fn fixtures() -> Option<PathBuf> {
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

/// A running authority, killed on drop.
struct Authority {
    _dir: tempfile::TempDir,
    ca_dir: PathBuf,
    url: String,
    child: Child,
}

impl Drop for Authority {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run_ok(command: &mut Command) -> String {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn start_authority(registrations: &[(&str, &[&str])], extra: &[&str]) -> Authority {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let ca = ca_dir.to_str().unwrap().to_string();
    run_ok(appid().args([
        "authority",
        "init",
        "--trust-domain",
        "prod.example",
        "--dir",
        &ca,
    ]));
    for (id, matches) in registrations {
        let mut command = appid();
        command.args([
            "authority",
            "register",
            "--dir",
            &ca,
            "--id",
            id,
            "--label",
            "app=vm",
        ]);
        for m in *matches {
            command.args(["--cloud-match", m]);
        }
        run_ok(&mut command);
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let child = appid()
        .args(["authority", "serve", "--dir", &ca, "--listen", &listen])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let authority = Authority {
        _dir: dir,
        ca_dir,
        url: format!("https://{listen}"),
        child,
    };
    for _ in 0..100 {
        if std::net::TcpStream::connect(&listen).is_ok() {
            return authority;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("authority did not start on {listen}");
}

fn client(authority: &Authority) -> AuthorityClient {
    let bundle = TrustBundle::from_pem_file(
        &authority.ca_dir.join("ca.pem"),
        vec!["prod.example".into()],
    )
    .unwrap();
    AuthorityClient::new(&authority.url, bundle).unwrap()
}

/// Asks for a certificate with `proof`; the claims, or the refusal text.
fn attest(authority: &Authority, proof: Proof) -> Result<serde_json::Value, String> {
    attest_reporting(authority, proof, None)
}

/// [`attest`], with self-reported facts.
fn attest_reporting(
    authority: &Authority,
    proof: Proof,
    reported: Option<serde_json::Value>,
) -> Result<serde_json::Value, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let fresh = new_key_and_csr().unwrap();
    let issued = runtime
        .block_on(client(authority).attest(
            &fresh.csr_pem,
            proof,
            reported.and_then(|r| r.as_object().cloned()),
        ))
        .map_err(|e| e.to_string())?;
    let der = files::parse_certs(Path::new("issued"), issued.certificate.as_bytes()).unwrap();
    let claims = CertInfo::from_der("issued", &der[0])
        .unwrap()
        .claims
        .unwrap();
    Ok(serde_json::to_value(claims).unwrap())
}

fn aws_proof(fixtures: &Path, document: &str, kind: &str, signature: &str, region: &str) -> Proof {
    let dir = fixtures.join("aws-iid/ap-southeast-2-2026");
    Proof::AwsIid {
        document: std::fs::read_to_string(dir.join(document)).unwrap(),
        kind: kind.into(),
        signature: std::fs::read_to_string(dir.join(signature))
            .unwrap()
            .trim()
            .into(),
        region: region.into(),
    }
}

const AWS_MATCH: &[&str] = &[
    "provider=aws",
    "account=189292791360",
    "region=ap-southeast-2",
];

#[test]
fn aws_documents_attest_once_and_bad_ones_are_refused_with_a_reason() {
    let Some(fixtures) = fixtures() else { return };
    let certs = fixtures.join("aws-iid/certs");
    let authority = start_authority(
        &[("spiffe://prod.example/vm/web", AWS_MATCH)],
        &["--aws-certs", certs.to_str().unwrap()],
    );
    let good = aws_proof(
        &fixtures,
        "document.json",
        "signature",
        "signature.b64",
        "ap-southeast-2",
    );

    // What the sidecar reports stays under `reported`, even under vouched
    // names; everything the document says is under `cloud`.
    let reported = serde_json::json!({"host": {"kernel": "6.1.0"},
        "cloud": {"instance_type": "m7.metal", "account": "000000000000"}});
    let claims = attest_reporting(&authority, good.clone(), Some(reported.clone()))
        .expect("the valid document attests");
    assert_eq!(claims["reported"], reported);
    assert_eq!(claims["id"], "spiffe://prod.example/vm/web");
    assert_eq!(claims["attestation"], "aws_iid");
    assert_eq!(claims["labels"]["app"], "vm");
    let cloud = &claims["cloud"];
    assert_eq!(cloud["provider"], "aws");
    assert_eq!(cloud["account"], "189292791360");
    assert_eq!(cloud["region"], "ap-southeast-2");
    assert_eq!(cloud["zone"], "ap-southeast-2a");
    assert_eq!(cloud["instance"], "i-0c5541936caf78c12");
    assert_eq!(cloud["image"], "ami-0cbde744623b7506b");
    assert_eq!(cloud["instance_type"], "t4g.small");

    let replay = attest(&authority, good).unwrap_err();
    assert!(replay.contains("already attested"), "{replay}");

    let invalid = attest(
        &authority,
        aws_proof(
            &fixtures,
            "invalid-document.json",
            "signature",
            "signature.b64",
            "ap-southeast-2",
        ),
    )
    .unwrap_err();
    assert!(invalid.contains("does not verify"), "{invalid}");

    let bad_signature = attest(
        &authority,
        aws_proof(
            &fixtures,
            "document.json",
            "signature",
            "invalid-signature.b64",
            "ap-southeast-2",
        ),
    )
    .unwrap_err();
    assert!(bad_signature.contains("does not verify"), "{bad_signature}");

    let other_region = attest(
        &authority,
        aws_proof(
            &fixtures,
            "document.json",
            "rsa2048",
            "rsa2048.b64",
            "us-east-1",
        ),
    )
    .unwrap_err();
    assert!(
        other_region.contains("another key") || other_region.contains("region"),
        "{other_region}"
    );

    let audit = std::fs::read_to_string(authority.ca_dir.join("audit.jsonl")).unwrap();
    assert_eq!(audit.matches("\"event\":\"issue\"").count(), 1, "{audit}");
    assert_eq!(audit.matches("\"event\":\"refuse\"").count(), 4, "{audit}");
}

#[test]
fn the_pkcs7_rsa2048_signature_attests_too() {
    let Some(fixtures) = fixtures() else { return };
    let certs = fixtures.join("aws-iid/certs");
    let authority = start_authority(
        &[("spiffe://prod.example/vm/web", AWS_MATCH)],
        &["--aws-certs", certs.to_str().unwrap()],
    );
    let claims = attest(
        &authority,
        aws_proof(
            &fixtures,
            "document.json",
            "rsa2048",
            "rsa2048.b64",
            "ap-southeast-2",
        ),
    )
    .expect("the PKCS#7 signature attests");
    assert_eq!(claims["cloud"]["instance"], "i-0c5541936caf78c12");
}

#[test]
fn a_document_from_an_unregistered_account_gets_nothing() {
    let Some(fixtures) = fixtures() else { return };
    let certs = fixtures.join("aws-iid/certs");
    let authority = start_authority(
        &[(
            "spiffe://prod.example/vm/web",
            &[
                "provider=aws",
                "account=000000000000",
                "region=ap-southeast-2",
            ],
        )],
        &["--aws-certs", certs.to_str().unwrap()],
    );
    let refused = attest(
        &authority,
        aws_proof(
            &fixtures,
            "document.json",
            "signature",
            "signature.b64",
            "ap-southeast-2",
        ),
    )
    .unwrap_err();
    assert!(refused.contains("no registration matches"), "{refused}");

    // A registration that names no account would match anyone's instance:
    // refused, naming the flag and the fact to add. One that does gets no
    // join token (the signed document is the way in).
    let register = |fact: &str| {
        authority_cli(
            &authority,
            &[
                "register",
                "--id",
                "spiffe://prod.example/vm/golden",
                "--cloud-match",
                "provider=aws",
                "--cloud-match",
                fact,
            ],
        )
    };
    let out = register("image=ami-0golden");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("--cloud-match") && stderr.contains("account="),
        "{stderr}"
    );
    let out = register("account=000000000000");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("no join token") && !said.contains("one-time"),
        "{said}"
    );
}

#[test]
fn the_gcp_token_attests_inside_its_validity_and_is_refused_after() {
    let Some(fixtures) = fixtures() else { return };
    let jwks = fixtures.join("gcp-iit/google-oauth2-v3-certs-2019-04-29.jwks.json");
    let token = std::fs::read_to_string(fixtures.join("gcp-iit/istio-mesh-expansion-2019.jwt"))
        .unwrap()
        .trim()
        .to_string();
    let registration: &[&str] = &["provider=gcp", "project=mesh-expansion-235023"];
    let gcp = [
        "--gcp-jwks",
        jwks.to_str().unwrap(),
        "--gcp-audience",
        "myaudience",
    ];

    // iat 1556235445 .. exp 1556239045 (2019-04-25/26).
    let mut at_issue_time = gcp.to_vec();
    at_issue_time.extend(["--clock", "2019-04-25T23:50:00Z"]);
    let authority = start_authority(
        &[("spiffe://prod.example/gce/vm", registration)],
        &at_issue_time,
    );
    let claims = attest(
        &authority,
        Proof::GcpIit {
            token: token.clone(),
        },
    )
    .expect("valid in 2019");
    assert_eq!(claims["attestation"], "gcp_iit");
    assert_eq!(claims["cloud"]["provider"], "gcp");
    assert_eq!(claims["cloud"]["project"], "mesh-expansion-235023");
    assert_eq!(claims["cloud"]["zone"], "us-central1-a");
    assert_eq!(claims["cloud"]["region"], "us-central1");
    assert_eq!(claims["cloud"]["instance"], "3860110238946415859");

    let now = start_authority(&[("spiffe://prod.example/gce/vm", registration)], &gcp);
    let expired = attest(&now, Proof::GcpIit { token }).unwrap_err();
    assert!(expired.to_lowercase().contains("expired"), "{expired}");
}

// ---------------------------------------------------------------------------
// Kubernetes projected service-account tokens.

use k8s_cluster::{Cluster, K8S_AUDIENCE, K8S_ISSUER};

/// `appid authority <args> --dir <the authority's CA dir>`.
fn authority_cli(authority: &Authority, args: &[&str]) -> std::process::Output {
    appid()
        .arg("authority")
        .args(args)
        .arg("--dir")
        .arg(&authority.ca_dir)
        .output()
        .unwrap()
}

/// `appid authority register --k8s-namespace shop --k8s-service-account
/// web <extra>`: what it printed (it must succeed).
fn register_shop_web(authority: &Authority, extra: &[&str]) -> String {
    let mut args = vec![
        "register",
        "--k8s-namespace",
        "shop",
        "--k8s-service-account",
        "web",
    ];
    args.extend_from_slice(extra);
    let out = authority_cli(authority, &args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An authority that accepts `cluster`'s projected tokens (its JWKS is
/// written into `dir`), with `extra` flags.
fn start_k8s_authority(cluster: &Cluster, dir: &Path, extra: &[&str]) -> Authority {
    let jwks = dir.join("jwks.json");
    std::fs::write(&jwks, &cluster.jwks).unwrap();
    let mut flags = vec![
        "--k8s-jwks",
        jwks.to_str().unwrap(),
        "--k8s-issuer",
        K8S_ISSUER,
        "--k8s-audience",
        K8S_AUDIENCE,
    ];
    flags.extend_from_slice(extra);
    start_authority(&[], &flags)
}

#[test]
fn pods_of_a_registered_service_account_attest_with_projected_tokens() {
    let cluster = Cluster::new();
    let temp = tempfile::tempdir().unwrap();
    let authority = start_k8s_authority(&cluster, temp.path(), &[]);
    let digest = format!("sha256:{}", "c".repeat(64));
    let report = temp.path().join("trivy.json");
    std::fs::write(
        &report,
        serde_json::json!({
            "SchemaVersion": 2,
            "ArtifactName": "registry.example/web:1.4",
            "ArtifactType": "container_image",
            "Results": [{"Target": "web", "Class": "os-pkgs", "Type": "alpine",
                "Vulnerabilities": [{"VulnerabilityID": "CVE-2024-20001", "PkgName": "libexample",
                    "InstalledVersion": "1.0", "Severity": "HIGH"}]}]
        })
        .to_string(),
    )
    .unwrap();
    let out = authority_cli(
        &authority,
        &[
            "import-scan",
            report.to_str().unwrap(),
            "--image-digest",
            &digest,
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The service account is registered as such: no join token is printed.
    let stdout = register_shop_web(
        &authority,
        &["--label", "app=web", "--image-digest", &digest],
    );
    assert!(
        stdout.contains("spiffe://prod.example/ns/shop/sa/web"),
        "{stdout}"
    );
    assert!(!stdout.contains("appid-jt-"), "{stdout}");
    // A join-token-only registration under a service account's ID.
    let out = authority_cli(
        &authority,
        &["register", "--id", "spiffe://prod.example/ns/shop/sa/batch"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Two pods of the Deployment: one identity, the registered claims.
    let pod_a = cluster.token("shop", "web", "web-7d4b9c6f5-aaaaa", K8S_AUDIENCE);
    let pod_b = cluster.token("shop", "web", "web-7d4b9c6f5-bbbbb", K8S_AUDIENCE);
    for (token, pod) in [
        (&pod_a, "web-7d4b9c6f5-aaaaa"),
        (&pod_b, "web-7d4b9c6f5-bbbbb"),
    ] {
        let claims = attest(
            &authority,
            Proof::K8sPsat {
                token: token.clone(),
            },
        )
        .unwrap_or_else(|e| panic!("{pod}: {e}"));
        assert_eq!(claims["id"], "spiffe://prod.example/ns/shop/sa/web");
        assert_eq!(claims["attestation"], "k8s_psat");
        assert_eq!(claims["labels"]["app"], "web");
        assert_eq!(claims["image"]["digest"], digest.as_str());
        assert_eq!(claims["vulns"]["high"], 1, "{claims}");
        // What the token vouches for, under `k8s` (no API lookup here).
        assert_eq!(claims["cloud"], serde_json::Value::Null, "{claims}");
        let k8s = &claims["k8s"];
        assert_eq!(k8s["namespace"], "shop");
        assert_eq!(k8s["service_account"], "web");
        assert_eq!(k8s["pod"], pod);
        assert_eq!(k8s["pod_uid"], format!("uid-{pod}"));
        assert_eq!(k8s["node"], "node-1");
        assert_eq!(k8s["labels"], serde_json::Value::Null);
    }

    let replay = attest(&authority, Proof::K8sPsat { token: pod_a }).unwrap_err();
    assert!(replay.contains("already redeemed"), "{replay}");

    let unregistered = attest(
        &authority,
        Proof::K8sPsat {
            token: cluster.token("shop", "api", "api-5f6d7c8b9-ccccc", K8S_AUDIENCE),
        },
    )
    .unwrap_err();
    assert!(unregistered.contains("403"), "{unregistered}");
    assert!(
        unregistered.contains("service account shop/api is not registered")
            && unregistered.contains("--k8s-namespace shop --k8s-service-account api"),
        "{unregistered}"
    );

    let join_token_only = attest(
        &authority,
        Proof::K8sPsat {
            token: cluster.token("shop", "batch", "batch-1", K8S_AUDIENCE),
        },
    )
    .unwrap_err();
    assert!(
        join_token_only.contains("not for Kubernetes attestation"),
        "{join_token_only}"
    );

    let other_audience = attest(
        &authority,
        Proof::K8sPsat {
            token: cluster.token(
                "shop",
                "web",
                "web-7d4b9c6f5-ddddd",
                "https://kubernetes.default.svc.cluster.local",
            ),
        },
    )
    .unwrap_err();
    assert!(
        other_audience.contains("audience") && other_audience.contains(K8S_AUDIENCE),
        "{other_audience}"
    );

    let audit = std::fs::read_to_string(authority.ca_dir.join("audit.jsonl")).unwrap();
    let k8s_lines: Vec<&str> = audit
        .lines()
        .filter(|l| l.contains("\"attestation\":\"k8s_psat\""))
        .collect();
    assert_eq!(
        k8s_lines
            .iter()
            .filter(|l| l.contains("\"event\":\"issue\""))
            .count(),
        2,
        "{audit}"
    );
    assert_eq!(
        k8s_lines
            .iter()
            .filter(|l| l.contains("\"event\":\"refuse\""))
            .count(),
        4,
        "{audit}"
    );
}

/// `serve --k8s-max-token-ttl 5m`: a projected token valid for ten minutes
/// (what the test cluster issues; the default 1h takes it, as the test
/// above shows) is refused, the reason naming both lifetimes.
#[test]
fn a_token_living_longer_than_k8s_max_token_ttl_is_refused() {
    let cluster = Cluster::new();
    let temp = tempfile::tempdir().unwrap();
    let authority = start_k8s_authority(&cluster, temp.path(), &["--k8s-max-token-ttl", "5m"]);
    register_shop_web(&authority, &[]);
    let token = cluster.token("shop", "web", "web-7d4b9c6f5-aaaaa", K8S_AUDIENCE);
    let refused = attest(&authority, Proof::K8sPsat { token }).unwrap_err();
    assert!(
        refused.contains("600") && refused.contains("300"),
        "the reason names the token's lifetime and the limit: {refused}"
    );
}

#[test]
fn kubernetes_settings_and_registrations_are_checked_with_a_way_out() {
    let temp = tempfile::tempdir().unwrap();
    let ca = temp.path().join("ca");
    let ca = ca.to_str().unwrap();
    run_ok(appid().args([
        "authority",
        "init",
        "--trust-domain",
        "prod.example",
        "--dir",
        ca,
    ]));

    // Only some of the three flags: the missing one and how to get it.
    let out = appid()
        .args(["authority", "serve", "--dir", ca, "--listen", "127.0.0.1:0"])
        .args(["--k8s-issuer", K8S_ISSUER, "--k8s-audience", K8S_AUDIENCE])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("missing: --k8s-jwks")
            && stderr.contains("kubectl get --raw /openid/v1/jwks"),
        "{stderr}"
    );

    // A JWKS file that is not there: how to fetch it.
    let out = appid()
        .args(["authority", "serve", "--dir", ca, "--listen", "127.0.0.1:0"])
        .args(["--k8s-jwks", "/nonexistent/jwks.json"])
        .args(["--k8s-issuer", K8S_ISSUER, "--k8s-audience", K8S_AUDIENCE])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("kubectl get --raw /openid/v1/jwks"),
        "{stderr}"
    );

    // Names that are not Kubernetes names are not registered.
    let out = appid()
        .args(["authority", "register", "--dir", ca])
        .args(["--k8s-namespace", "Shop", "--k8s-service-account", "web"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("namespace `Shop`"), "{stderr}");
}

/// `GET http://<admin><path>` (the sidecar's admin API): status and body.
fn admin_get(admin: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(admin).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// `appid proxy` with identity from the authority, killed on drop.
struct PodSidecar {
    child: Child,
    admin: String,
    log: PathBuf,
}

impl Drop for PodSidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl PodSidecar {
    /// Starts a sidecar whose config (in `dir`) bootstraps from the
    /// projected token in `dir/token` and keeps its identity in
    /// `dir/state`; waits for `/ready`.
    fn start(authority: &Authority, dir: &Path) -> PodSidecar {
        let token = dir.join("token");
        PodSidecar::start_with(
            authority,
            dir,
            &format!("k8s_token_file: \"{}\"", token.display()),
        )
    }

    /// The same, proving itself with `proof` (a line of
    /// `identity.authority`).
    fn start_with(authority: &Authority, dir: &Path, proof: &str) -> PodSidecar {
        let free = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        };
        let admin = format!("127.0.0.1:{}", free());
        let policy = dir.join("policy.yaml");
        std::fs::write(&policy, "version: 1\ndefault: deny\nrules: []\n").unwrap();
        let config = format!(
            "identity:\n  authority:\n    url: \"{url}\"\n    bundle: \"{bundle}\"\n    \
             {proof}\n    state_dir: \"{state}\"\n\
             trust_domains: [prod.example]\npolicy: \"{policy}\"\n\
             inbound: [{{ listen: \"127.0.0.1:{port}\", forward: \"127.0.0.1:9\" }}]\n\
             admin: \"{admin}\"\n",
            url = authority.url,
            bundle = authority.ca_dir.join("ca.pem").display(),
            state = dir.join("state").display(),
            policy = policy.display(),
            port = free(),
        );
        let config_path = dir.join("proxy.yaml");
        std::fs::write(&config_path, config).unwrap();
        let log = dir.join("sidecar.log");
        let child = appid()
            .args(["proxy", "--config"])
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut sidecar = PodSidecar { child, admin, log };
        for _ in 0..200 {
            if let Ok(Some(status)) = sidecar.child.try_wait() {
                panic!("the sidecar exited ({status}): {}", sidecar.logs());
            }
            if admin_get(&sidecar.admin, "/ready").is_some_and(|(s, _)| s == 200) {
                return sidecar;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the sidecar was not ready in 20 s: {}", sidecar.logs());
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The sidecar's identity (`/appid`): SPIFFE ID and claims.
    fn identity(&self) -> serde_json::Value {
        let (_, body) = admin_get(&self.admin, "/appid").expect("the admin API answers");
        serde_json::from_str(&body).expect("JSON from /appid")
    }
}

/// In a pod, the sidecar bootstraps from its projected service-account
/// token (`identity.authority.k8s_token_file`), and a restart recovers the
/// identity it kept (`state_dir`) without a new token — the one it had was
/// redeemed already. A second pod of the same service account gets the same
/// SPIFFE ID with its own certificate.
#[test]
fn a_pod_sidecar_bootstraps_from_its_projected_token_and_restarts_without_one() {
    let cluster = Cluster::new();
    let temp = tempfile::tempdir().unwrap();
    let authority = start_k8s_authority(&cluster, temp.path(), &[]);
    register_shop_web(&authority, &["--label", "app=web"]);

    let pod = |name: &str| {
        let dir = temp.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(
            dir.join("token"),
            cluster.token("shop", "web", name, K8S_AUDIENCE),
        )
        .unwrap();
        dir
    };
    let first = pod("web-1");
    let sidecar = PodSidecar::start(&authority, &first);
    let identity = sidecar.identity();
    assert_eq!(
        identity["id"],
        "spiffe://prod.example/ns/shop/sa/web",
        "{}",
        sidecar.logs()
    );
    assert_eq!(identity["claims"]["attestation"], "k8s_psat");
    assert_eq!(identity["claims"]["labels"]["app"], "web");
    assert!(first.join("state").join("identity.pem").exists());

    // Killed and started again: the token was redeemed, the kept identity
    // carries it.
    drop(sidecar);
    let restarted = PodSidecar::start(&authority, &first);
    assert_eq!(
        restarted.identity()["id"],
        "spiffe://prod.example/ns/shop/sa/web"
    );

    // Another pod of the service account: its own token, its own key.
    let second = pod("web-2");
    let other = PodSidecar::start(&authority, &second);
    assert_eq!(
        other.identity()["id"],
        "spiffe://prod.example/ns/shop/sa/web"
    );
    assert_ne!(
        std::fs::read(first.join("state").join("identity.pem")).unwrap(),
        std::fs::read(second.join("state").join("identity.pem")).unwrap(),
        "each pod keeps its own key and certificate"
    );
}

/// A fake EC2 metadata service (IMDSv2 only: reads without the session
/// token from `PUT /latest/api/token` get 401) serving the fixture
/// instance identity document and signature. Returns its address.
fn fake_imds(fixtures: &Path) -> String {
    use std::io::{BufRead as _, BufReader, Write as _};
    let dir = fixtures.join("aws-iid/ap-southeast-2-2026");
    let document = std::fs::read_to_string(dir.join("document.json")).unwrap();
    let signature = std::fs::read_to_string(dir.join("signature.b64")).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            let mut token = None;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() || line.trim().is_empty() {
                    break;
                }
                if let Some((name, value)) = line.split_once(':')
                    && name.eq_ignore_ascii_case("x-aws-ec2-metadata-token")
                {
                    token = Some(value.trim().to_string());
                }
            }
            let mut parts = request_line.split_whitespace();
            let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let (status, body) = match (method, path) {
                ("PUT", "/latest/api/token") => ("200 OK", "session-token-1".to_string()),
                (_, _) if token.as_deref() != Some("session-token-1") => {
                    ("401 Unauthorized", String::new())
                }
                ("GET", "/latest/dynamic/instance-identity/document") => {
                    ("200 OK", document.clone())
                }
                ("GET", "/latest/dynamic/instance-identity/signature") => {
                    ("200 OK", signature.clone())
                }
                _ => ("404 Not Found", String::new()),
            };
            let mut stream = stream;
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    address
}

/// On a VM, the sidecar fetches its instance identity document from the
/// metadata service itself (IMDSv2) and redeems it; killed and restarted,
/// it comes back with the identity it kept — the document, attested once,
/// would be refused as a replay.
#[test]
fn a_vm_sidecar_bootstraps_from_the_metadata_service_and_restarts_without_it() {
    let Some(fixtures) = fixtures() else { return };
    let certs = fixtures.join("aws-iid/certs");
    let authority = start_authority(
        &[("spiffe://prod.example/vm/web", AWS_MATCH)],
        &["--aws-certs", certs.to_str().unwrap()],
    );
    let imds = fake_imds(&fixtures);
    let temp = tempfile::tempdir().unwrap();
    let proof = format!("cloud: aws\n    metadata_endpoint: \"http://{imds}\"");
    let sidecar = PodSidecar::start_with(&authority, temp.path(), &proof);
    let identity = sidecar.identity();
    assert_eq!(
        identity["id"],
        "spiffe://prod.example/vm/web",
        "{}",
        sidecar.logs()
    );
    assert_eq!(identity["claims"]["attestation"], "aws_iid");
    assert_eq!(
        identity["claims"]["cloud"]["instance"],
        "i-0c5541936caf78c12"
    );
    drop(sidecar);
    let restarted = PodSidecar::start_with(&authority, temp.path(), &proof);
    assert_eq!(restarted.identity()["id"], "spiffe://prod.example/vm/web");
    let audit = std::fs::read_to_string(authority.ca_dir.join("audit.jsonl")).unwrap();
    assert_eq!(audit.matches("\"event\":\"issue\"").count(), 1, "{audit}");
}
