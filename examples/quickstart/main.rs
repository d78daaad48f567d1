//! The appid quickstart: a CA, three workloads, sidecars, and three calls,
//! all on loopback in a temporary directory, no root.
//!
//! ```text
//!   web app ──► web sidecar ──┐
//!                             ├── mTLS (appid/1) ──► api sidecar ──► api app
//!   legacy app ► legacy sidecar┘
//! ```
//!
//! - `web` is clean and calls `GET /v1/orders`: allowed.
//! - `legacy` was issued from a scanner report with critical
//!   vulnerabilities: denied by the rule `no-critical-vulns`.
//! - `web` calls `GET /admin/users`: denied, no rule allows that path.
//!
//! Run it with `cargo run --release --example quickstart`. Everything it
//! does goes through the same library the `appid` binary uses; the
//! equivalent commands are printed as it goes.

use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use appid_policy::AppIdClaims;
use appid_policy::claims::attestation;
use appid_proxy::config::ProxyConfig;
use appid_proxy::identity::ca::{Ca, KeyAlg};
use appid_proxy::identity::spiffe::SpiffeId;
use appid_proxy::{scan, sidecar};

const TRUST_DOMAIN: &str = "quickstart.example";

/// A Trivy report (SchemaVersion 2) for the legacy image: two criticals.
const LEGACY_TRIVY_REPORT: &str = r#"{
  "SchemaVersion": 2,
  "CreatedAt": "2026-11-20T10:00:00Z",
  "ArtifactName": "registry.example/legacy:0.9",
  "ArtifactType": "container_image",
  "Metadata": {"ImageID": "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"},
  "Results": [{"Target": "legacy (debian 10.1)", "Class": "os-pkgs", "Type": "debian",
    "Vulnerabilities": [
      {"VulnerabilityID": "CVE-2026-1001", "PkgName": "openssl", "InstalledVersion": "1.1.1d", "Severity": "CRITICAL"},
      {"VulnerabilityID": "CVE-2026-1002", "PkgName": "glibc", "InstalledVersion": "2.28", "Severity": "CRITICAL"},
      {"VulnerabilityID": "CVE-2026-1003", "PkgName": "zlib", "InstalledVersion": "1.2.11", "Severity": "MEDIUM"}
    ]}]
}"#;

/// One policy for the whole mesh; each sidecar applies it in its direction.
const POLICY: &str = r#"version: 1
default: deny
mode: enforce
rules:
  # Nothing with a known critical vulnerability may call the api.
  - name: no-critical-vulns
    action: deny
    from: { vulns.critical: { gt: 0 } }
    to: { labels.app: api }
  # Workloads of the shop namespace may read the api's /v1 endpoints.
  - name: shop-reads-api
    action: allow
    from: { id: { glob: "spiffe://quickstart.example/ns/shop/sa/*" } }
    to: { labels.app: api }
    http: { methods: [GET, HEAD], paths: ["/v1/**"] }
"#;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    // `--keep DIR`: work in DIR (new) and leave everything there (the CA,
    // certificates, configs, audit logs); otherwise a temporary directory.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let kept = match args.as_slice() {
        [] => None,
        [flag, dir] if flag == "--keep" => {
            let dir = PathBuf::from(dir);
            std::fs::create_dir(&dir).with_context(|| {
                format!(
                    "--keep {}: cannot create it (it must not exist yet)",
                    dir.display()
                )
            })?;
            Some(dir)
        }
        _ => bail!("usage: quickstart [--keep DIR]  (DIR: a new directory to leave everything in)"),
    };
    let temp = match &kept {
        None => Some(tempfile::tempdir().context("creating a temporary directory")?),
        Some(_) => None,
    };
    let root = match (&kept, &temp) {
        (Some(dir), _) => dir.as_path(),
        (None, Some(temp)) => temp.path(),
        (None, None) => bail!("no working directory"),
    };
    println!("appid quickstart, working in {}\n", root.display());

    // 1. A CA, and a certificate per workload.
    println!("$ appid authority init --trust-domain {TRUST_DOMAIN} --dir ca");
    let ca = Ca::init(&root.join("ca"), TRUST_DOMAIN, KeyAlg::EcdsaP256)?;
    issue(&ca, root, "api", "api", None)?;
    issue(&ca, root, "web", "web", None)?;
    let report = root.join("legacy-trivy.json");
    std::fs::write(&report, LEGACY_TRIVY_REPORT)?;
    issue(&ca, root, "legacy", "legacy", Some(&report))?;
    std::fs::write(root.join("policy.yaml"), POLICY)?;
    println!("\npolicy.yaml:\n{}", indent(POLICY));

    // 2. The api app: a plain HTTP server that says who called it.
    let api_app = serve_api_app().await?;

    // 3. Sidecars: api (inbound), web and legacy (outbound to the api).
    let (stop_tx, stop_rx) = watch::channel(false);
    let api_inbound = free_port()?;
    let api = start_sidecar(
        root,
        "api",
        &format!("inbound:\n  - listen: \"{api_inbound}\"\n    forward: \"{api_app}\"\n"),
        &stop_rx,
    )
    .await?;
    let web_out = free_port()?;
    let web = start_sidecar(
        root,
        "web",
        &format!("outbound:\n  - listen: \"{web_out}\"\n    upstream: \"{api_inbound}\"\n"),
        &stop_rx,
    )
    .await?;
    let legacy_out = free_port()?;
    let legacy = start_sidecar(
        root,
        "legacy",
        &format!("outbound:\n  - listen: \"{legacy_out}\"\n    upstream: \"{api_inbound}\"\n"),
        &stop_rx,
    )
    .await?;

    // 4. Three calls, as the unmodified apps would make them: plain HTTP to
    //    their own sidecar.
    println!("\n== calls ==\n");
    let calls = [
        ("web", web_out, "/v1/orders", "allowed"),
        (
            "legacy",
            legacy_out,
            "/v1/orders",
            "denied: critical vulnerabilities",
        ),
        ("web", web_out, "/admin/users", "denied: path not allowed"),
    ];
    let mut outcomes = Vec::new();
    for (who, port, path, expect) in calls {
        let response = http_get(port, path).await?;
        println!("{who} GET {path}  ({expect})");
        println!("  -> {}", response.status_line);
        if let Some(rule) = response.header("x-appid-denied-by") {
            println!("     x-appid-denied-by: {rule}");
        }
        println!("     {}", response.body.trim());
        outcomes.push(response.status);
    }

    // 5. What the sidecars wrote down (stopping them first writes out the
    // allow lines they buffer for up to 100 ms).
    let _ = stop_tx.send(true);
    let mut audits = Vec::new();
    for (name, sidecar) in [("web", web), ("legacy", legacy), ("api", api)] {
        sidecar.task.await??;
        audits.push((name, sidecar.audit));
    }
    for (name, audit) in audits {
        println!("\n== audit log of the {name} sidecar ==");
        for line in std::fs::read_to_string(&audit)?.lines() {
            println!("{line}");
        }
    }
    if outcomes != [200, 403, 403] {
        bail!("unexpected outcomes {outcomes:?}; expected 200, 403, 403");
    }
    match &kept {
        Some(dir) => println!(
            "\nOK: one allowed and two denied calls. Everything is kept in {}.",
            dir.display()
        ),
        None => println!(
            "\nOK: one allowed and two denied calls. Cleaning up {}.",
            root.display()
        ),
    }
    Ok(())
}

/// Issues `<name>.pem` / `<name>.key` for `spiffe://TD/ns/shop/sa/<name>`.
fn issue(ca: &Ca, root: &Path, name: &str, app: &str, report: Option<&Path>) -> Result<()> {
    let id = SpiffeId::parse(&format!("spiffe://{TRUST_DOMAIN}/ns/shop/sa/{name}"))?;
    let mut claims = AppIdClaims::new(id.as_str(), attestation::MANUAL);
    claims.labels.insert("app".into(), app.into());
    let mut command = format!("$ appid issue --dir ca --id {id} --label app={app}");
    if let Some(report) = report {
        let bytes = std::fs::read(report)?;
        scan::parse_report(&bytes)
            .with_context(|| report.display().to_string())?
            .fill_claims(&mut claims);
        command.push_str(" --vulns legacy-trivy.json");
    }
    println!("{command} --cert {name}.pem --key {name}.key");
    ca.issue_to_files(
        &id,
        &claims,
        KeyAlg::EcdsaP256,
        time::Duration::hours(1),
        &root.join(format!("{name}.pem")),
        &root.join(format!("{name}.key")),
        false, // a fresh temporary directory: nothing to replace
    )?;
    if let Some(vulns) = &claims.vulns {
        println!(
            "  claims: labels.app={app} vulns.critical={} vulns.medium={}",
            vulns.critical, vulns.medium
        );
    }
    Ok(())
}

struct RunningSidecar {
    audit: PathBuf,
    task: tokio::task::JoinHandle<Result<(), sidecar::SidecarError>>,
}

async fn start_sidecar(
    root: &Path,
    name: &str,
    listeners: &str,
    stop: &watch::Receiver<bool>,
) -> Result<RunningSidecar> {
    let admin = free_port()?;
    let yaml = format!(
        "identity:\n  cert: {name}.pem\n  key: {name}.key\n  bundle: ca/ca.pem\n\
         trust_domains: [{TRUST_DOMAIN}]\npolicy: policy.yaml\n{listeners}\
         admin: \"{admin}\"\naudit_log: {name}-audit.jsonl\n"
    );
    let file = root.join(format!("{name}-proxy.yaml"));
    std::fs::write(&file, &yaml)?;
    let config = ProxyConfig::from_yaml(&file.display().to_string(), root, &yaml)?;
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let mut stop = stop.clone();
    let task = tokio::spawn(sidecar::run_until(
        config,
        async move {
            let _ = stop.wait_for(|s| *s).await;
        },
        move |_admin| {
            let _ = ready_tx.send(());
        },
    ));
    if tokio::time::timeout(Duration::from_secs(10), ready_rx)
        .await
        .is_err()
    {
        bail!("the {name} sidecar did not become ready");
    }
    println!(
        "started the {name} sidecar ({name}-proxy.yaml):\n{}",
        indent(&yaml)
    );
    Ok(RunningSidecar {
        audit: root.join(format!("{name}-audit.jsonl")),
        task,
    })
}

/// The api: answers every request with who called it (from the header the
/// sidecar adds; the app never parses a certificate).
async fn serve_api_app() -> Result<SocketAddr> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buffer = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buffer[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head);
                let caller = text
                    .lines()
                    .find_map(|l| l.strip_prefix("x-appid-peer-id: "))
                    .unwrap_or("(unknown)");
                let body = format!("hello from api, {caller}\n");
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    Ok(address)
}

struct HttpResponse {
    status: u16,
    status_line: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl HttpResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A minimal HTTP/1.1 GET, as any app would send it.
async fn http_get(port: SocketAddr, path: &str) -> Result<HttpResponse> {
    let mut stream = TcpStream::connect(port).await?;
    let request = format!("GET {path} HTTP/1.1\r\nhost: api\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .context("response timed out")??;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or("(no response)").to_string();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok(HttpResponse {
        status,
        status_line,
        headers,
        body: body.to_string(),
    })
}

fn free_port() -> Result<SocketAddr> {
    let listener = StdListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?)
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
