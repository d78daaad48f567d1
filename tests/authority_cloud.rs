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

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use appid_proxy::authority::client::{AuthorityClient, new_key_and_csr};
use appid_proxy::authority::service::Proof;
use appid_proxy::identity::files;
use appid_proxy::identity::inspect::CertInfo;
use appid_proxy::identity::verify::TrustBundle;

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
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let fresh = new_key_and_csr().unwrap();
    let issued = runtime
        .block_on(client(authority).attest(&fresh.csr_pem, proof))
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

    let claims = attest(&authority, good.clone()).expect("the valid document attests");
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
