//! CA rotation under traffic (`appid authority ca rotate`, three steps),
//! with the real authority and two real sidecars whose certificates live
//! 8 s: not one request fails, no handshake is refused, and at the end the
//! sidecars hold certificates of the new CA only and trust nothing else.
//!
//! ```text
//!  client (new connection every 25 ms) ─▶ web sidecar ══ mTLS ══▶ api sidecar ─▶ app
//!                                             │                      │
//!                                             └── renew, bundle ─────┴──▶ appid authority serve --dir ca
//!  appid authority ca rotate --dir ca   ×3: prepare, activate, retire
//! ```

#[path = "support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use support::apps::HttpApp;
use support::authority::{self, sidecar, verifies_with, wait_ready, wait_until};
use support::net::{free_port, http_get, local};
use support::pki::{APPID, Ca, appid};

const TRUST_DOMAIN: &str = "prod.example";
/// Certificates live this long (`CERT_TTL_SECS`); sidecars renew at
/// half-life, so each renewal has half of it to finish before a
/// certificate expires under traffic that must not see one failure.
const CERT_TTL: &str = "8s";
const CERT_TTL_SECS: u64 = 8;
const POLICY: &str = "version: 1
default: deny
rules:
  - name: web-to-api
    action: allow
    from: { labels.app: web }
    to: { labels.app: api }
";

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// `appid authority ca rotate --dir ca <flags>`: what it printed.
fn rotate(ca: &Ca, flags: &[&str]) -> String {
    let mut args = vec!["authority", "ca", "rotate", "--dir", path_str(&ca.dir)];
    args.extend_from_slice(flags);
    String::from_utf8(appid(&args).stdout).expect("UTF-8")
}

/// One request on a new connection: whether it got a 200.
async fn one_request(address: SocketAddr) -> Result<(), String> {
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .write_all(b"GET /v1/x HTTP/1.1\r\nhost: api\r\nconnection: close\r\n\r\n")
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut reply))
        .await
        .map_err(|_| "no reply in 10 s".to_string())?
        .map_err(|e| format!("read: {e}"))?;
    let head = String::from_utf8_lossy(&reply[..reply.len().min(200)]).into_owned();
    if head.starts_with("HTTP/1.1 200") {
        Ok(())
    } else {
        Err(format!("got: {head}"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_rotates_under_traffic_without_one_failed_request() {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path();
    let ca = Ca::init(&dir.join("ca"), TRUST_DOMAIN);
    let first_ca = std::fs::read(ca.bundle()).expect("ca.pem");
    let policy = dir.join("policy.yaml");
    std::fs::write(&policy, POLICY).expect("policy");
    let (authority, url) =
        authority::serve(&ca, &["--cert-ttl", CERT_TTL], dir.join("authority.log"));

    let app = HttpApp::start().await;
    let api_in = free_port();
    let web_out = free_port();
    let (api, api_admin) = sidecar(
        dir,
        &ca,
        &url,
        "api",
        &format!(
            "inbound: [{{ listen: \"127.0.0.1:{api_in}\", forward: \"{}\" }}]",
            app.addr
        ),
        &policy,
    );
    let (web, web_admin) = sidecar(
        dir,
        &ca,
        &url,
        "web",
        &format!(
            "outbound: [{{ listen: \"127.0.0.1:{web_out}\", upstream: \"127.0.0.1:{api_in}\" }}]"
        ),
        &policy,
    );
    wait_ready(api_admin, &api).await;
    wait_ready(web_admin, &web).await;
    let context = || {
        format!(
            "--- authority ---\n{}\n--- web ---\n{}\n--- api ---\n{}",
            authority.log(),
            web.log(),
            api.log()
        )
    };

    // Traffic the whole time: a new app connection every 25 ms.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(std::sync::Mutex::new(Vec::new())),
    );
    let traffic = tokio::spawn({
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        async move {
            while !stop.load(Ordering::Relaxed) {
                match one_request(local(web_out)).await {
                    Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        failed.lock().unwrap().push(e);
                        0
                    }
                };
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;

    // 1. Prepare: both sidecars come to trust the new CA too.
    let said = rotate(&ca, &[]);
    assert!(said.contains("prepared a new CA"), "{said}");
    wait_until(
        "both sidecars to fetch the two-CA bundle",
        Duration::from_secs(15),
        context,
        || web.count("trust bundle changed") >= 1 && api.count("trust bundle changed") >= 1,
    )
    .await;

    // 2. Activate: the new CA signs; the sidecars renew onto it.
    let said = rotate(&ca, &["--propagation", "1s"]);
    assert!(said.contains("the new CA signs"), "{said}");
    let new_ca = dir.join("new-ca.pem");
    std::fs::copy(ca.bundle(), &new_ca).expect("copy the new ca.pem");
    assert_ne!(
        std::fs::read(&new_ca).unwrap(),
        first_ca,
        "ca.pem is the new CA"
    );
    wait_until(
        "both sidecars to hold a certificate of the new CA",
        Duration::from_secs(20),
        context,
        || {
            ["web", "api"]
                .iter()
                .all(|name| verifies_with(&new_ca, &dir.join(format!("{name}-state/identity.pem"))))
        },
    )
    .await;

    // 3. Retire, once the old CA's last certificate has expired.
    tokio::time::sleep(Duration::from_secs(CERT_TTL_SECS)).await;
    let said = rotate(&ca, &["--max-cert-ttl", CERT_TTL]);
    assert!(said.contains("retired the previous CA"), "{said}");
    wait_until(
        "both sidecars to drop the old CA",
        Duration::from_secs(15),
        context,
        || web.count("trust bundle changed") >= 2 && api.count("trust bundle changed") >= 2,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    traffic.await.expect("traffic task");

    let failed = failed.lock().unwrap().clone();
    let ok = ok.load(Ordering::Relaxed);
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during the rotation: {:?}\n{}",
        failed.len(),
        failed.len() + ok,
        &failed[..failed.len().min(5)],
        context()
    );
    assert!(ok > 100, "only {ok} requests made");
    for (name, admin) in [("web", web_admin), ("api", api_admin)] {
        let metrics = http_get(admin, "/metrics").await.expect("metrics");
        let refused: Vec<&str> = metrics
            .lines()
            .filter(|l| l.starts_with("appid_handshake_failures_total{"))
            .filter(|l| !l.trim_end().ends_with(" 0"))
            .collect();
        assert!(refused.is_empty(), "{name}: {refused:?}\n{}", context());
        assert!(
            verifies_with(&new_ca, &dir.join(format!("{name}-state/identity.pem"))),
            "{name} does not hold a certificate of the new CA"
        );
    }
    // The authority is steady again, with one CA in its bundle.
    let status = Command::new(APPID)
        .args(["authority", "ca", "status", "--dir", path_str(&ca.dir)])
        .output()
        .expect("ca status");
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(status.starts_with("steady"), "{status}");
    assert_eq!(status.matches("sha256:").count(), 1, "{status}");
    let json = appid(&[
        "authority",
        "ca",
        "status",
        "--dir",
        path_str(&ca.dir),
        "-o",
        "json",
    ]);
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON status");
    assert_eq!(json["phase"], "steady", "{json:#}");
    assert_eq!(json["cas"].as_array().map(Vec::len), Some(1), "{json:#}");
    assert_eq!(json["cas"][0]["role"], "signing", "{json:#}");
}

/// `ca rotate --key-alg ed25519` prepares the next CA with an Ed25519 key
/// (the CA it replaces is ECDSA P-256); without the flag it would be P-256.
#[test]
fn the_next_ca_gets_the_key_algorithm_asked_for() {
    let temp = tempfile::tempdir().expect("temp dir");
    let ca = Ca::init(&temp.path().join("ca"), "prod.example");
    let printed = rotate(&ca, &["--key-alg", "ed25519"]);
    assert!(printed.contains("prepared a new CA"), "{printed}");
    let algorithm = |file: &str| {
        let out = Command::new("openssl")
            .args(["x509", "-noout", "-text", "-in"])
            .arg(ca.dir.join(file))
            .output()
            .expect("openssl must be installed");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .find(|l| l.contains("Public Key Algorithm"))
            .unwrap_or_else(|| panic!("no key algorithm in {file}: {text}"))
            .trim()
            .to_owned()
    };
    assert!(algorithm("ca.pem").contains("id-ecPublicKey"));
    assert_eq!(algorithm("ca-next.pem"), "Public Key Algorithm: ED25519");
}
