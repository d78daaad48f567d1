//! Every kind of certificate appid issues must parse under a strict DER
//! reader (issue 14, item 7).
//!
//! OpenSSL and rustls/webpki forgive a DEFAULT value written out (such as
//! basicConstraints `SEQUENCE { BOOLEAN FALSE }`); Python `cryptography`
//! does not (`EncodedDefault`), and neither do other strict parsers a
//! workload may use. So the certificates here are read with Python
//! `cryptography`, touching every extension (that is where such errors
//! surface), for:
//!
//! - the CA root of `appid authority init` (both key algorithms);
//! - a leaf of `appid issue` (both key algorithms);
//! - a leaf the running authority issues for a join token;
//! - the authority's own serving certificate (read off its TLS handshake
//!   with `openssl s_client`).
//!
//! Needs `python3` with `cryptography` (Debian `python3-cryptography`; CI
//! installs it) and `openssl`.

#[path = "support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use appid_proxy::authority::client::{AuthorityClient, new_key_and_csr};
use appid_proxy::authority::service::Proof;
use appid_proxy::identity::verify::TrustBundle;

use support::net::free_port;
use support::pki::{APPID, appid};

const TRUST_DOMAIN: &str = "strict.example";

/// Loads each PEM file given on the command line with `cryptography` and
/// reads every field and extension; prints one line per certificate and
/// exits 1 if any failed.
const STRICT_READER: &str = r#"
import sys
from cryptography import x509

failed = False
for path in sys.argv[1:]:
    data = open(path, "rb").read()
    try:
        certs = x509.load_pem_x509_certificates(data)
        for cert in certs:
            cert.subject, cert.issuer, cert.serial_number, cert.public_key()
            cert.not_valid_before_utc, cert.not_valid_after_utc
            for ext in cert.extensions:
                ext.value
            bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
            print(f"OK {path}: ca={bc.value.ca} critical={bc.critical}")
    except Exception as e:
        failed = True
        print(f"FAIL {path}: {type(e).__name__}: {e}")
sys.exit(1 if failed else 0)
"#;

/// Fails with a clear message when `cryptography` is missing.
fn require_python_cryptography() {
    let out = Command::new("python3")
        .args(["-c", "import cryptography"])
        .output();
    match out {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "python3 cannot import cryptography: install Debian package python3-cryptography \
             (apt-get install python3-cryptography)\n{}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => panic!(
            "python3 not found ({e}): install Debian packages python3 and python3-cryptography"
        ),
    }
}

/// Runs the strict reader over `files`; panics naming each failure.
/// Returns the reader's `OK` lines.
fn strict_parse(files: &[PathBuf]) -> Vec<String> {
    require_python_cryptography();
    let out = Command::new("python3")
        .arg("-c")
        .arg(STRICT_READER)
        .args(files)
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "a strict DER reader (Python cryptography) refused appid certificates:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.lines().map(str::to_string).collect()
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temp path")
}

#[test]
fn ca_and_issued_leaves_parse_strictly() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for alg in ["ecdsa-p256", "ed25519"] {
        let ca = dir.path().join(format!("ca-{alg}"));
        appid(&[
            "authority",
            "init",
            "--trust-domain",
            TRUST_DOMAIN,
            "--dir",
            path_str(&ca),
            "--key-alg",
            alg,
        ]);
        let cert = dir.path().join(format!("leaf-{alg}.pem"));
        let key = dir.path().join(format!("leaf-{alg}.key"));
        appid(&[
            "issue",
            "--dir",
            path_str(&ca),
            "--id",
            &format!("spiffe://{TRUST_DOMAIN}/web"),
            "--label",
            "app=web",
            "--key-alg",
            alg,
            "--cert",
            path_str(&cert),
            "--key",
            path_str(&key),
        ]);
        files.push(ca.join("ca.pem"));
        files.push(cert);
    }
    let lines = strict_parse(&files);
    assert_eq!(lines.len(), 4, "{lines:?}");
    for (line, file) in lines.iter().zip(&files) {
        let is_ca = path_str(file).ends_with("ca.pem");
        // Roots say ca=True; leaves ca=False; basicConstraints is critical.
        let expected = format!("ca={} critical=True", if is_ca { "True" } else { "False" });
        assert!(line.ends_with(&expected), "{line} (expected {expected})");
    }
}

/// `appid authority serve`, killed on drop.
struct Serve(std::process::Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authority_issued_and_serving_certificates_parse_strictly() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    appid(&[
        "authority",
        "init",
        "--trust-domain",
        TRUST_DOMAIN,
        "--dir",
        path_str(&ca),
    ]);
    let id = format!("spiffe://{TRUST_DOMAIN}/api");
    let token = appid(&[
        "authority",
        "register",
        "--dir",
        path_str(&ca),
        "--id",
        &id,
        "--label",
        "app=api",
    ])
    .stdout;
    let token = String::from_utf8(token).unwrap().trim().to_string();

    let port = free_port();
    let log = dir.path().join("serve.log");
    let _serve = Serve(
        Command::new(APPID)
            .args(["authority", "serve", "--dir", path_str(&ca)])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn appid authority serve"),
    );
    let bundle = TrustBundle::from_pem_file(&ca.join("ca.pem"), vec![TRUST_DOMAIN.into()])
        .expect("load ca.pem");
    let client = AuthorityClient::new(&format!("https://127.0.0.1:{port}"), bundle).unwrap();
    let start = Instant::now();
    while client.revocations().await.is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "authority not serving:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A leaf for a join token, as a sidecar gets it.
    let fresh = new_key_and_csr().unwrap();
    let issued = client
        .attest(&fresh.csr_pem, Proof::JoinToken { token }, None)
        .await
        .expect("attest with the join token");
    assert_eq!(issued.id, id);
    let leaf = dir.path().join("authority-leaf.pem");
    std::fs::write(&leaf, &issued.certificate).unwrap();

    // The authority's serving certificate, as presented in its handshake.
    let s_client = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(["-showcerts", "-tls1_3"])
        .stdin(Stdio::null())
        .output()
        .expect("openssl must be installed (apt-get install openssl)");
    let shown = String::from_utf8_lossy(&s_client.stdout);
    let begin = shown
        .find("-----BEGIN CERTIFICATE-----")
        .unwrap_or_else(|| panic!("no certificate from openssl s_client:\n{shown}"));
    let end_marker = "-----END CERTIFICATE-----";
    let end = shown[begin..].find(end_marker).expect("PEM end") + begin + end_marker.len();
    let serving = dir.path().join("authority-serving.pem");
    std::fs::write(&serving, format!("{}\n", &shown[begin..end])).unwrap();

    let lines = strict_parse(&[leaf, serving]);
    assert_eq!(lines.len(), 2, "{lines:?}");
    for line in &lines {
        assert!(line.ends_with("ca=False critical=True"), "{line}");
    }
}
