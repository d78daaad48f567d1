//! End-to-end tests of the authority (issue 6 acceptance), driving the real
//! `appid` binary: `appid authority init|register|import-scan|revoke|serve`
//! and `appid proxy` sidecars whose identity comes from the authority
//! (`identity: { authority: { url, bundle, join_token_file } }`).
//!
//! ```text
//! test ──▶ web sidecar ──mTLS appid/1──▶ api sidecar ──▶ app (HTTP / TCP echo)
//!          (outbound)                    (inbound)
//!              │   join token, CSR, renew (mTLS), revocations   │
//!              └──────────────▶ appid authority serve ◀─────────┘
//! ```
//!
//! Covered:
//! - Bootstrap with a join token: the sidecar's certificate carries exactly
//!   the registered labels and image digest plus the counts of a Trivy
//!   (SchemaVersion 2) report imported for that digest (the whole claims
//!   object from the admin `GET /appid`). The same token again is refused —
//!   by a second sidecar (which exits with the reason) and by a raw POST
//!   of the documented wire format — and so are an expired token
//!   (`register --ttl 1s`) and an unknown one, each with a reason, each
//!   audited.
//! - 50 concurrent HTTPS redemptions of one token (each with its own key
//!   and CSR): exactly one certificate; 49 refusals; one `issue` line in
//!   the authority's audit log.
//! - `--cert-ttl 30s`: both sidecars renew at least twice while an HTTP/1.1
//!   keep-alive session and a TCP echo stream (a message every 200 ms) go
//!   through the pair unbroken, on the same connections. Then the authority
//!   is killed: once the first certificates have expired, new connections
//!   still work (so they use the renewed ones), until the renewed ones
//!   expire too; then `/ready` answers 503 (within a few seconds of
//!   notAfter; also checked alone with a 20 s TTL and no renewal at all).
//! - Not ready means refuse: while a sidecar's authority accepts TCP but
//!   never answers, connections to its outbound and inbound ports are reset
//!   at once (counted as `not_ready`), not held; so are new connections
//!   once its certificate has expired without renewal.
//! - `state_dir`: a sidecar killed and started again with the same config
//!   (its join token used) comes up ready with the same SPIFFE ID from its
//!   kept key and certificate (mode 0600), renews with them at once, and
//!   presents no token; another sidecar with the used token and an empty
//!   state directory still exits with "already used".
//! - Renewal needs a certificate this authority issued (its serial
//!   recorded): one made offline with `appid issue` by the same CA is
//!   refused (401).
//! - A scan with criticals imported for the registered digest: the next
//!   renewal carries the new counts, and from the very next connections
//!   the peer whose policy says `vulns.critical: {lte: 0}` refuses with 403
//!   (audited, the reason naming `vulns.critical`).
//! - `appid authority revoke`: the peer closes a live opaque TCP connection
//!   and refuses new ones within a few revocation polls (2 s each), audited
//!   with rule `revoked`; `register` refuses to hand the revoked ID a new token.
//!   Its audit line goes to `--audit-log` (the file `serve` was given), and
//!   an audit log it cannot open stops it before anything is revoked.
//! - `kill -9` of the authority during a burst of attestations, restart on
//!   the same directory: tokens redeemed before the kill stay consumed,
//!   every certificate answered before the kill is recorded, registrations
//!   work (even while it is down), `PRAGMA integrity_check` is `ok` (when
//!   `sqlite3` is installed), and the authority serves again.
//! - The authority's TLS server picks AES-128-GCM/SHA-256 even when the
//!   client prefers AES-256-GCM/SHA-384 (`openssl s_client`'s default order).
//!
//! Needs `curl` and `openssl` on the PATH (CI installs them). The 30 s TTL test dominates
//! the run time (about a minute) and sorts first, so it starts at once;
//! the others run beside it.

#[path = "support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use appid_proxy::authority::client::{AuthorityClient, ClientError, new_key_and_csr};
use appid_proxy::authority::service::{IssuedResponse, Proof};
use appid_proxy::identity::verify::TrustBundle;
use appid_proxy::sidecar::tls::LocalIdentity;

use support::apps::{EchoServer, HttpApp};
use support::clients::{H1Session, curl};
use support::net::{connect_and_echo, echo_once, expect_closed, free_port, http_status, local};
use support::pki::{APPID, appid};
use support::poll_until;

const TRUST_DOMAIN: &str = "test.example";

/// `web` may call `api`; the same file serves both sidecars.
const WEB_TO_API: &str = "\
version: 1
default: deny
rules:
  - name: web-to-api
    action: allow
    from: { labels.app: web }
    to: { labels.app: api }
";

/// How long a sidecar may take to bootstrap and become ready.
const READY_LIMIT: Duration = Duration::from_secs(20);
/// The sidecar polls revocations every 2 s; a peer must act on a revocation
/// within a few polls.
const REVOCATION_LIMIT: Duration = Duration::from_secs(10);
/// After its certificate's notAfter, how long a sidecar may still say it is
/// ready (polling and second-granularity rounding; nothing to wait for).
const EXPIRY_GRACE: Duration = Duration::from_secs(5);
/// Once a sidecar shows a renewed certificate on `/appid`, how long until
/// its new connections present it (only the swap itself is in between).
const NEW_CERT_LIMIT: Duration = Duration::from_secs(3);

fn id(path: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/{path}")
}

fn digest(byte: char) -> String {
    format!("sha256:{}", byte.to_string().repeat(64))
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temp path")
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes).as_ref())
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

// ---------------------------------------------------------------------------
// Scanner reports

/// Writes a Trivy `--format json` (SchemaVersion 2) report with `count`
/// distinct findings of each severity (`CRITICAL`, `HIGH`, ...), scanned at
/// `created_at`; returns `sha256:<hex>` of the file, as `vulns.report`.
fn write_trivy_report(path: &Path, created_at: &str, findings: &[(&str, usize)]) -> String {
    let mut vulnerabilities = Vec::new();
    for (severity, count) in findings {
        for _ in 0..*count {
            let n = vulnerabilities.len() + 1;
            let package = format!("libexample{n}");
            let installed = format!("1.{n}.0-r0");
            vulnerabilities.push(json!({
                "VulnerabilityID": format!("CVE-2024-{:05}", 20000 + n),
                "PkgID": format!("{package}@{installed}"),
                "PkgName": package,
                "PkgIdentifier": {
                    "PURL": format!("pkg:apk/alpine/{package}@{installed}?arch=x86_64&distro=3.19.1")
                },
                "InstalledVersion": installed,
                "FixedVersion": format!("1.{n}.1-r0"),
                "Status": "fixed",
                "Layer": {
                    "Digest": "sha256:4abcf20661432fb2d719aaf90656f55c287f8ca915dc1c92ec14ff61e67fbaf8",
                    "DiffID": "sha256:d4fc045c9e3a848011de66f34b81f052d4f2c15a17bb196d637e526349601820"
                },
                "SeveritySource": "nvd",
                "PrimaryURL": format!("https://avd.aquasec.com/nvd/cve-2024-{:05}", 20000 + n),
                "Title": format!("{package}: example finding {n}"),
                "Severity": severity,
            }));
        }
    }
    let mut result = json!({
        "Target": "registry.example/web:1.4 (alpine 3.19.1)",
        "Class": "os-pkgs",
        "Type": "alpine",
    });
    // Trivy omits `Vulnerabilities` when a target has none.
    if !vulnerabilities.is_empty() {
        result["Vulnerabilities"] = Value::Array(vulnerabilities);
    }
    let report = json!({
        "SchemaVersion": 2,
        "CreatedAt": created_at,
        "ArtifactName": "registry.example/web:1.4",
        "ArtifactType": "container_image",
        "Metadata": {
            "OS": { "Family": "alpine", "Name": "3.19.1" },
            "ImageID": "sha256:05455a08881ea9cf0e752bc48e61bbd71a34c029bb13df01e40e3e70e0d007bd",
            "DiffIDs": ["sha256:d4fc045c9e3a848011de66f34b81f052d4f2c15a17bb196d637e526349601820"],
            "RepoTags": ["registry.example/web:1.4"],
            // Not the registered digest: `import-scan --image-digest` decides.
            "RepoDigests": [format!("registry.example/web@{}", digest('9'))]
        },
        "Results": [result]
    });
    let bytes = serde_json::to_vec_pretty(&report).expect("report JSON");
    std::fs::write(path, &bytes).expect("write report");
    format!("sha256:{}", sha256_hex(&bytes))
}

// ---------------------------------------------------------------------------
// The authority: its directory (CLI) and its server process

/// An authority directory made by `appid authority init`; every other
/// command goes through the real CLI too.
struct AuthorityDir {
    dir: PathBuf,
}

impl AuthorityDir {
    fn init(root: &Path) -> AuthorityDir {
        let dir = root.join("ca");
        appid(&[
            "authority",
            "init",
            "--trust-domain",
            TRUST_DOMAIN,
            "--dir",
            path_str(&dir),
        ]);
        AuthorityDir { dir }
    }

    fn bundle(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// `appid authority register`; returns the printed join token.
    fn register(
        &self,
        id: &str,
        labels: &[&str],
        image_digest: Option<&str>,
        ttl: Option<&str>,
    ) -> String {
        let mut args = vec![
            "authority",
            "register",
            "--dir",
            path_str(&self.dir),
            "--id",
            id,
        ];
        for label in labels {
            args.extend(["--label", label]);
        }
        if let Some(d) = image_digest {
            args.extend(["--image-digest", d]);
        }
        if let Some(ttl) = ttl {
            args.extend(["--ttl", ttl]);
        }
        let out = appid(&args);
        let token = String::from_utf8(out.stdout).expect("UTF-8 token");
        let token = token.trim().to_string();
        assert!(token.starts_with("appid-jt-"), "register printed {token:?}");
        token
    }

    /// `appid authority import-scan --image-digest D REPORT`.
    fn import_scan(&self, report: &Path, image_digest: &str) {
        appid(&[
            "authority",
            "import-scan",
            "--dir",
            path_str(&self.dir),
            path_str(report),
            "--image-digest",
            image_digest,
        ]);
    }

    fn revoke(&self, id: &str) {
        appid(&[
            "authority",
            "revoke",
            "--dir",
            path_str(&self.dir),
            "--id",
            id,
        ]);
    }

    /// The authority's audit log (`DIR/audit.jsonl`), parsed.
    fn events(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(self.dir.join("audit.jsonl")).unwrap_or_default();
        support::json_lines(&text, "the authority's audit log")
    }

    /// Audit lines with `event` (and `id`, when given).
    fn count_events(&self, event: &str, id: Option<&str>) -> usize {
        self.events()
            .iter()
            .filter(|e| e["event"] == event && id.is_none_or(|id| e["id"] == id))
            .count()
    }

    fn audit_text(&self) -> String {
        std::fs::read_to_string(self.dir.join("audit.jsonl")).unwrap_or_default()
    }

    /// A client that verifies the authority as the sidecar does.
    fn client(&self, url: &str) -> AuthorityClient {
        let bundle = TrustBundle::from_pem_file(&self.bundle(), vec![TRUST_DOMAIN.into()])
            .expect("load ca.pem");
        AuthorityClient::new(url, bundle).expect("authority client")
    }
}

/// `appid authority serve`, killed (SIGKILL) on drop.
struct AuthorityServer {
    child: Child,
    port: u16,
    stderr: PathBuf,
    exited: Option<ExitStatus>,
}

impl AuthorityServer {
    /// Starts `serve` on a free loopback port and waits until it answers
    /// `GET /v1/revocations` over verified TLS.
    async fn start(dir: &AuthorityDir, cert_ttl: &str) -> AuthorityServer {
        Self::start_with(dir, cert_ttl, &[]).await
    }

    /// [`Self::start`] with further `serve` flags.
    async fn start_with(dir: &AuthorityDir, cert_ttl: &str, extra: &[&str]) -> AuthorityServer {
        let port = free_port();
        let stderr = dir.dir.join(format!("serve-{port}.log"));
        let child = Command::new(APPID)
            .args(["authority", "serve", "--dir", path_str(&dir.dir)])
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--cert-ttl",
                cert_ttl,
            ])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).expect("create log"))
            .spawn()
            .expect("spawn appid authority serve");
        let mut server = AuthorityServer {
            child,
            port,
            stderr,
            exited: None,
        };
        let client = dir.client(&server.url());
        let start = Instant::now();
        loop {
            if let Some(status) = server.child.try_wait().expect("try_wait") {
                panic!("authority exited at startup ({status}):\n{}", server.logs());
            }
            match client.revocations().await {
                Ok(_) => break,
                Err(e) if start.elapsed() > READY_LIMIT => {
                    panic!(
                        "authority not serving after {READY_LIMIT:?} ({e}):\n{}",
                        server.logs()
                    )
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        server
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// `kill -9` and reap.
    fn kill(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            self.exited = Some(self.child.wait().expect("reap the authority"));
        }
    }
}

impl Drop for AuthorityServer {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------
// Sidecars with their identity from the authority

/// An `appid proxy` config with `identity.authority`.
struct SidecarSpec {
    name: String,
    dir: PathBuf,
    url: String,
    bundle: PathBuf,
    token_file: PathBuf,
    policy: PathBuf,
    inbound: Vec<(u16, SocketAddr)>,
    outbound: Vec<(u16, SocketAddr)>,
    state_dir: Option<PathBuf>,
}

impl SidecarSpec {
    /// A sidecar `name` (files in `dir/<name>-*`) that bootstraps at the
    /// authority `url` with `token`, enforcing `policy`.
    fn new(
        name: &str,
        dir: &Path,
        ca: &AuthorityDir,
        url: &str,
        token: &str,
        policy: &Path,
    ) -> Self {
        let token_file = dir.join(format!("{name}-join-token"));
        std::fs::write(&token_file, format!("{token}\n")).expect("write token file");
        SidecarSpec {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            url: url.to_string(),
            bundle: ca.bundle(),
            token_file,
            policy: policy.to_path_buf(),
            inbound: Vec::new(),
            outbound: Vec::new(),
            state_dir: None,
        }
    }

    /// `identity.authority.state_dir`: where the identity is kept.
    fn state_dir(mut self, dir: &Path) -> Self {
        self.state_dir = Some(dir.to_path_buf());
        self
    }

    /// Explicit inbound on `127.0.0.1:listen`, forwarded to `app`.
    fn inbound(mut self, listen: u16, app: SocketAddr) -> Self {
        self.inbound.push((listen, app));
        self
    }

    /// Explicit outbound on `127.0.0.1:listen`, mTLS to `upstream`.
    fn outbound(mut self, listen: u16, upstream: SocketAddr) -> Self {
        self.outbound.push((listen, upstream));
        self
    }

    fn config(&self, admin: SocketAddr, audit: &Path) -> String {
        let q = |p: &Path| serde_json::to_string(path_str(p)).expect("JSON string");
        let mut yaml = String::new();
        writeln!(yaml, "identity:").unwrap();
        writeln!(yaml, "  authority:").unwrap();
        writeln!(yaml, "    url: \"{}\"", self.url).unwrap();
        writeln!(yaml, "    bundle: {}", q(&self.bundle)).unwrap();
        writeln!(yaml, "    join_token_file: {}", q(&self.token_file)).unwrap();
        if let Some(dir) = &self.state_dir {
            writeln!(yaml, "    state_dir: {}", q(dir)).unwrap();
        }
        writeln!(yaml, "trust_domains: [{TRUST_DOMAIN}]").unwrap();
        writeln!(yaml, "policy: {}", q(&self.policy)).unwrap();
        for (section, listeners, key) in [
            ("inbound", &self.inbound, "forward"),
            ("outbound", &self.outbound, "upstream"),
        ] {
            if !listeners.is_empty() {
                writeln!(yaml, "{section}:").unwrap();
                for (listen, target) in listeners {
                    writeln!(yaml, "  - listen: \"127.0.0.1:{listen}\"").unwrap();
                    writeln!(yaml, "    {key}: \"{target}\"").unwrap();
                }
            }
        }
        writeln!(yaml, "admin: \"{admin}\"").unwrap();
        writeln!(yaml, "audit_log: {}", q(audit)).unwrap();
        writeln!(yaml, "workers: 2").unwrap();
        writeln!(
            yaml,
            "limits: {{ handshake_timeout: 5s, drain_timeout: 5s }}"
        )
        .unwrap();
        yaml
    }

    /// Spawns the process without waiting for it.
    fn spawn(self) -> AuthoritySidecar {
        let admin = local(free_port());
        let audit = self.dir.join(format!("{}-audit.jsonl", self.name));
        let config = self.dir.join(format!("{}-proxy.yaml", self.name));
        let stderr = self.dir.join(format!("{}-stderr.log", self.name));
        std::fs::write(&config, self.config(admin, &audit)).expect("write config");
        let child = Command::new(APPID)
            .arg("proxy")
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).expect("create stderr log"))
            .spawn()
            .expect("spawn appid proxy");
        AuthoritySidecar {
            name: self.name,
            child,
            exited: None,
            admin,
            audit,
            stderr,
            config,
        }
    }

    /// Spawns the process and waits until `/ready` answers 200.
    async fn start(self) -> AuthoritySidecar {
        let mut sidecar = self.spawn();
        let start = Instant::now();
        loop {
            if let Some(status) = sidecar.child.try_wait().expect("try_wait") {
                sidecar.exited = Some(status);
                panic!(
                    "sidecar {} exited before it was ready ({status})\nconfig:\n{}\n{}",
                    sidecar.name,
                    std::fs::read_to_string(&sidecar.config).unwrap_or_default(),
                    sidecar.context()
                );
            }
            if http_status(sidecar.admin, "/ready").await == Some(200) {
                return sidecar;
            }
            if start.elapsed() > READY_LIMIT {
                panic!(
                    "sidecar {} not ready after {READY_LIMIT:?}\n{}",
                    sidecar.name,
                    sidecar.context()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A running `appid proxy`; killed and reaped on drop.
struct AuthoritySidecar {
    name: String,
    child: Child,
    exited: Option<ExitStatus>,
    admin: SocketAddr,
    audit: PathBuf,
    stderr: PathBuf,
    config: PathBuf,
}

impl AuthoritySidecar {
    fn logs(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn audit_lines(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.audit).unwrap_or_default();
        support::json_lines(&text, &format!("{}'s audit log", self.name))
    }

    fn context(&self) -> String {
        format!(
            "--- {name} audit log:\n{}\n--- {name} stderr:\n{}",
            std::fs::read_to_string(&self.audit).unwrap_or_default(),
            self.logs(),
            name = self.name,
        )
    }

    /// `GET /appid`: `{id, claims}`.
    async fn appid(&self) -> Value {
        let (status, body) = admin_get(self.admin, "/appid")
            .await
            .unwrap_or_else(|| panic!("no answer from {} /appid\n{}", self.name, self.context()));
        assert_eq!(status, 200, "{} /appid: {body}", self.name);
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("/appid is not JSON ({e}): {body}"))
    }

    /// Unix seconds at which our certificate expires, from
    /// `appid_certificate_expiry_seconds` (computed at scrape time).
    async fn not_after(&self) -> i64 {
        let (status, body) = admin_get(self.admin, "/metrics")
            .await
            .unwrap_or_else(|| panic!("no answer from {} /metrics", self.name));
        assert_eq!(status, 200, "{} /metrics: {body}", self.name);
        let now = unix_now();
        let left: i64 = body
            .lines()
            .find_map(|l| l.strip_prefix("appid_certificate_expiry_seconds "))
            .unwrap_or_else(|| panic!("no appid_certificate_expiry_seconds in:\n{body}"))
            .trim()
            .parse()
            .expect("expiry seconds is an integer");
        now + left
    }

    /// Waits (up to `limit`) for the process to exit.
    async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.exited = Some(status);
                return status;
            }
            assert!(
                start.elapsed() < limit,
                "sidecar {} still running after {limit:?}\n{}",
                self.name,
                self.context()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for AuthoritySidecar {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// An HTTP/1.1 response read off a fresh connection.
#[derive(Debug)]
struct Fetched {
    status: u16,
    /// Lower-cased names.
    headers: Vec<(String, String)>,
    body: String,
}

impl Fetched {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path` on a fresh connection (`Connection: close`); `Err` says what
/// happened instead of a response (refused, reset, closed, timed out).
async fn fetch(address: SocketAddr, path: &str) -> Result<Fetched, String> {
    let attempt = async {
        let mut stream = TcpStream::connect(address)
            .await
            .map_err(|e| format!("connect {address}: {e}"))?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut response = Vec::new();
        stream
            .read_to_end(&mut response)
            .await
            .map_err(|e| format!("read: {e}"))?;
        let text = String::from_utf8_lossy(&response).into_owned();
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("no HTTP response: {text:?}"))?;
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.strip_prefix("HTTP/1.1 "))
            .and_then(|l| l.get(..3))
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| format!("bad status line: {head:?}"))?;
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Ok(Fetched {
            status,
            headers,
            body: body.to_string(),
        })
    };
    tokio::time::timeout(Duration::from_secs(10), attempt)
        .await
        .unwrap_or_else(|_| Err("no response within 10 s".into()))
}

/// `GET path` on an admin API: status and body, or `None`.
async fn admin_get(address: SocketAddr, path: &str) -> Option<(u16, String)> {
    fetch(address, path).await.ok().map(|f| (f.status, f.body))
}

/// `vulns.critical` of the caller as the app behind the inbound sidecar
/// saw it (the `x-appid-peer` header its JSON echo reports).
fn seen_critical(response: &Fetched) -> Value {
    use base64::Engine;
    let echo: Value = serde_json::from_str(&response.body).unwrap_or_default();
    echo["headers"]["x-appid-peer"][0]
        .as_str()
        .and_then(|b64| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(b64)
                .ok()
        })
        .and_then(|json| serde_json::from_slice::<Value>(&json).ok())
        .map_or(Value::Null, |claims| claims["vulns"]["critical"].clone())
}

/// The handshake failure counters of a sidecar, for failure messages.
async fn handshake_failures(sidecar: &AuthoritySidecar) -> String {
    let metrics = admin_get(sidecar.admin, "/metrics")
        .await
        .map(|(_, body)| body)
        .unwrap_or_default();
    let lines: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("appid_handshake_failures"))
        .collect();
    format!(
        "--- {} handshake failures:\n{}",
        sidecar.name,
        lines.join("\n")
    )
}

fn write_policy(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write policy");
    path
}

/// A fresh key and CSR, then `POST /v1/attest` with `token`.
async fn attest(client: &AuthorityClient, token: &str) -> Result<IssuedResponse, ClientError> {
    let fresh = new_key_and_csr().expect("key and CSR");
    client
        .attest(
            &fresh.csr_pem,
            Proof::JoinToken {
                token: token.to_string(),
            },
            None,
        )
        .await
}

/// Asserts `result` is a refusal with `status` whose message contains `why`.
fn assert_refused(result: &Result<IssuedResponse, ClientError>, status: u16, why: &str) {
    match result {
        Err(ClientError::Refused { status: s, message })
            if *s == status && message.contains(why) => {}
        other => panic!("expected a {status} refusal mentioning {why:?}, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// Join tokens

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_token_bootstraps_exactly_the_registered_claims_once() {
    let temp = tempfile::tempdir().expect("temp dir");
    let ca = AuthorityDir::init(temp.path());
    let image = digest('a');
    let report = temp.path().join("web-trivy.json");
    let report_sha = write_trivy_report(
        &report,
        "2026-11-20T10:00:00.123456789Z",
        &[
            ("CRITICAL", 1),
            ("HIGH", 2),
            ("MEDIUM", 3),
            ("LOW", 4),
            ("UNKNOWN", 1),
        ],
    );
    ca.import_scan(&report, &image);
    let web = id("ns/shop/sa/web");
    let token = ca.register(&web, &["app=web", "team=shop"], Some(&image), None);
    let server = AuthorityServer::start(&ca, "1h").await;
    let app = HttpApp::start().await;
    let policy = write_policy(temp.path(), "policy.yaml", WEB_TO_API);

    let sidecar = SidecarSpec::new("web", temp.path(), &ca, &server.url(), &token, &policy)
        .inbound(free_port(), app.addr)
        .start()
        .await;
    let shown = sidecar.appid().await;
    assert_eq!(shown["id"], web.as_str(), "{shown}");
    let expected = json!({
        "v": 1,
        "id": web,
        "labels": { "app": "web", "team": "shop" },
        "image": { "digest": image },
        "vulns": {
            "critical": 1, "high": 2, "medium": 3, "low": 4, "unknown": 1,
            "scanner": "trivy",
            "report": report_sha,
            "scanned_at": "2026-11-20T10:00:00Z"
        },
        "attestation": "join_token"
    });
    assert_eq!(
        shown["claims"], expected,
        "claims differ from the registration + scan"
    );
    assert_eq!(
        ca.count_events("issue", Some(&web)),
        1,
        "{}",
        ca.audit_text()
    );

    // The same token in a second sidecar: refused, the sidecar says why and
    // exits instead of retrying, and never reports ready.
    let mut second = SidecarSpec::new(
        "web-again",
        temp.path(),
        &ca,
        &server.url(),
        &token,
        &policy,
    )
    .inbound(free_port(), app.addr)
    .spawn();
    let status = second.wait_exit(READY_LIMIT).await;
    assert!(!status.success(), "a refused bootstrap must fail: {status}");
    assert!(
        second.logs().contains("already used"),
        "the refusal reason is missing:\n{}",
        second.logs()
    );

    // The same token in a raw POST of the documented wire format. curl's
    // `-k` skips verifying the authority: the serving certificate names a
    // SPIFFE ID, not a host, so curl's host name check cannot pass. What is
    // tested here is the authority's answer, not the client's trust.
    let body = json!({
        "csr": new_key_and_csr().expect("key and CSR").csr_pem,
        "proof": { "method": "join_token", "token": token }
    });
    let body_file = temp.path().join("attest.json");
    std::fs::write(&body_file, body.to_string()).unwrap();
    let url = format!("{}/v1/attest", server.url());
    let data = format!("@{}", path_str(&body_file));
    let raw = curl(&[
        "-k",
        "-H",
        "content-type: application/json",
        "--data-binary",
        &data,
        &url,
    ])
    .await;
    assert_eq!(raw.status, 401, "{raw:?}");
    let error = raw.json()["error"].as_str().unwrap_or_default().to_string();
    assert!(error.contains("already used"), "{raw:?}");

    // An expired token (valid 1 s; expiry is checked to the second).
    let api = id("ns/shop/sa/api");
    let short = ca.register(&api, &["app=api"], None, Some("1s"));
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let client = ca.client(&server.url());
    assert_refused(&attest(&client, &short).await, 401, "expired");
    // And one it never issued.
    assert_refused(
        &attest(&client, "appid-jt-never-issued").await,
        401,
        "unknown join token",
    );

    // Every refusal is audited with its reason; still exactly one issuance.
    let refusals: Vec<String> = ca
        .events()
        .iter()
        .filter(|e| e["event"] == "refuse")
        .map(|e| e["reason"].as_str().unwrap_or_default().to_string())
        .collect();
    for why in ["already used", "expired", "unknown join token"] {
        assert!(
            refusals.iter().any(|r| r.contains(why)),
            "no audited refusal for {why:?}:\n{}",
            ca.audit_text()
        );
    }
    assert_eq!(ca.count_events("issue", None), 1, "{}", ca.audit_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_redemptions_of_one_token_issue_one_certificate() {
    const ATTEMPTS: usize = 50;
    let temp = tempfile::tempdir().expect("temp dir");
    let ca = AuthorityDir::init(temp.path());
    let web = id("ns/shop/sa/web");
    let token = ca.register(&web, &["app=web"], None, None);
    let server = AuthorityServer::start(&ca, "1h").await;
    let client = ca.client(&server.url());

    // Each request has its own key and CSR, made before the barrier so the
    // 50 HTTPS requests (TLS included) start together.
    let barrier = Arc::new(tokio::sync::Barrier::new(ATTEMPTS));
    let tasks: Vec<_> = (0..ATTEMPTS)
        .map(|_| {
            let (client, token, barrier) = (client.clone(), token.clone(), barrier.clone());
            tokio::spawn(async move {
                let fresh = new_key_and_csr().expect("key and CSR");
                barrier.wait().await;
                client
                    .attest(&fresh.csr_pem, Proof::JoinToken { token }, None)
                    .await
            })
        })
        .collect();
    let mut issued = Vec::new();
    let mut refused = 0;
    for task in tasks {
        match task.await.expect("task") {
            Ok(response) => issued.push(response),
            Err(ClientError::Refused {
                status: 401,
                message,
            }) if message.contains("already used") => {
                refused += 1;
            }
            Err(e) => panic!("unexpected outcome: {e}\n{}", server.logs()),
        }
    }
    assert_eq!(issued.len(), 1, "exactly one redemption must win");
    assert_eq!(refused, ATTEMPTS - 1);
    assert_eq!(issued[0].id, web);
    assert_eq!(ca.count_events("issue", None), 1, "{}", ca.audit_text());
    assert_eq!(
        ca.count_events("refuse", None),
        ATTEMPTS - 1,
        "{}",
        ca.audit_text()
    );
}

// ---------------------------------------------------------------------------
// Renewal under traffic, and life without the authority

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_renew_under_live_traffic_and_outlive_the_authority_until_expiry() {
    let temp = tempfile::tempdir().expect("temp dir");
    let ca = AuthorityDir::init(temp.path());
    let (web, api) = (id("ns/shop/sa/web"), id("ns/shop/sa/api"));
    let web_token = ca.register(&web, &["app=web"], None, None);
    let api_token = ca.register(&api, &["app=api"], None, None);
    let mut server = AuthorityServer::start(&ca, "30s").await;
    let policy = write_policy(temp.path(), "policy.yaml", WEB_TO_API);
    let app = HttpApp::start().await;
    let echo = EchoServer::start().await;
    let (api_http, api_tcp) = (free_port(), free_port());
    let api_sidecar = SidecarSpec::new("api", temp.path(), &ca, &server.url(), &api_token, &policy)
        .inbound(api_http, app.addr)
        .inbound(api_tcp, echo.addr)
        .start()
        .await;
    let (web_http, web_tcp) = (free_port(), free_port());
    let web_sidecar = SidecarSpec::new("web", temp.path(), &ca, &server.url(), &web_token, &policy)
        .outbound(web_http, local(api_http))
        .outbound(web_tcp, local(api_tcp))
        .start()
        .await;
    let context = || {
        format!(
            "{}\n{}\n--- authority audit:\n{}",
            web_sidecar.context(),
            api_sidecar.context(),
            ca.audit_text()
        )
    };

    // An HTTP/1.1 keep-alive session and a TCP echo stream through the pair.
    let mut session = H1Session::connect(local(web_http)).await;
    let (status, first) = session.get("/session/0").await.expect("first request");
    assert_eq!(status, 200, "{first}\n{}", context());
    assert_eq!(
        first["headers"]["x-appid-peer-id"][0],
        web.as_str(),
        "{first}"
    );
    let mut app_connection = first["conn"].clone();
    // Every certificate's notAfter seen so far: an HTTP connection winds
    // down when a certificate it was made with expires (its claims are no
    // longer vouched for), and only then may the session move on to a new
    // connection (and a new app connection).
    let mut not_afters = vec![web_sidecar.not_after().await, api_sidecar.not_after().await];
    let stop = Arc::new(AtomicBool::new(false));
    let stream = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut tcp = TcpStream::connect(local(web_tcp))
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let message = format!("tick {sent:06}\n");
                echo_once(&mut tcp, message.as_bytes(), Duration::from_secs(10))
                    .await
                    .map_err(|e| format!("after {sent} echoes: {e}"))?;
                sent += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok::<u64, String>(sent)
        }
    });

    // Both renew twice (at half life, with jitter) while the session and the
    // stream go on, and the certificates they started with expire.
    let first_not_after = web_sidecar
        .not_after()
        .await
        .max(api_sidecar.not_after().await);
    let mut request = 1;
    let renewed_twice = |ca: &AuthorityDir| {
        ca.count_events("renew", Some(&web)) >= 2 && ca.count_events("renew", Some(&api)) >= 2
    };
    let start = Instant::now();
    while !renewed_twice(&ca) || unix_now() <= first_not_after {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "two renewals each did not happen within 60 s with a 30 s TTL\n{}",
            context()
        );
        not_afters.extend([web_sidecar.not_after().await, api_sidecar.not_after().await]);
        let path = format!("/session/{request}");
        let (status, echoed) = session_get(
            &mut session,
            local(web_http),
            &path,
            (&not_afters, &mut app_connection),
            &context(),
        )
        .await;
        assert_eq!(status, 200, "{echoed}");
        assert_eq!(
            echoed["conn"], app_connection,
            "the session moved to a new connection"
        );
        assert!(
            !stream.is_finished(),
            "the TCP stream ended early: {:?}",
            stream.await
        );
        request += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // The authority goes away for good.
    server.kill();
    let deadlines = [web_sidecar.not_after().await, api_sidecar.not_after().await];
    let expiry = *deadlines.iter().min().unwrap();
    assert!(
        expiry > unix_now(),
        "a certificate already expired: {deadlines:?}"
    );

    // Until the renewed certificates expire, everything keeps serving: the
    // live session and stream, `/ready`, and new connections (whose
    // handshakes can only succeed with the renewed certificates: the first
    // ones have expired).
    while unix_now() < expiry - 2 {
        for sidecar in [&web_sidecar, &api_sidecar] {
            assert_eq!(
                http_status(sidecar.admin, "/ready").await,
                Some(200),
                "{} not ready before its certificate expired\n{}",
                sidecar.name,
                context()
            );
        }
        not_afters.extend([web_sidecar.not_after().await, api_sidecar.not_after().await]);
        let path = format!("/session/{request}");
        let (status, echoed) = session_get(
            &mut session,
            local(web_http),
            &path,
            (&not_afters, &mut app_connection),
            &context(),
        )
        .await;
        assert_eq!(
            (status, &echoed["conn"]),
            (200, &app_connection),
            "{echoed}"
        );
        let new = fetch(local(web_http), &format!("/new/{request}")).await;
        let echoed = connect_and_echo(local(web_tcp), b"new stream\n").await;
        if !matches!(&new, Ok(r) if r.status == 200) || echoed.is_err() {
            panic!(
                "a new connection through the pair failed with valid renewed certificates \
                 (the first ones expired at {first_not_after}, now {}):\nHTTP: {new:?}\nTCP: {:?}\n{}\n{}\n{}",
                unix_now(),
                echoed.err(),
                handshake_failures(&web_sidecar).await,
                handshake_failures(&api_sidecar).await,
                context()
            );
        }
        request += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let echoes = stream.await.expect("stream task");
    let echoes = echoes.unwrap_or_else(|e| panic!("the TCP stream broke: {e}\n{}", context()));
    assert!(echoes > 10, "only {echoes} echoes");

    // Once expired (the authority being unreachable), `/ready` says so.
    for (sidecar, not_after) in [(&web_sidecar, deadlines[0]), (&api_sidecar, deadlines[1])] {
        wait_not_ready_at_expiry(sidecar, not_after).await;
    }
}

/// Waits for `/ready` to answer 503 (naming the identity) once `not_after`
/// has passed, and not before.
/// `GET path` on a keep-alive session. The sidecars wind an HTTP
/// connection down when a certificate it was made with expires (see
/// `tunnel::no_request_is_allowed_on_claims_of_an_expired_certificate`),
/// and only then: a session closed within 3 s of one of `not_afters` goes
/// on on a new connection (whose app connection becomes `app_connection`);
/// closed at any other time, it panics.
async fn session_get(
    session: &mut H1Session,
    address: SocketAddr,
    path: &str,
    (not_afters, app_connection): (&[i64], &mut Value),
    context: &str,
) -> (u16, Value) {
    let error = match session.get(path).await {
        Ok(answer) => return answer,
        Err(error) => error,
    };
    let now = unix_now();
    assert!(
        not_afters.iter().any(|&n| (now - n).abs() <= 3),
        "keep-alive session broke at {now}, no certificate expiring then \
         ({not_afters:?}): {error}\n{context}"
    );
    *session = H1Session::connect(address).await;
    let answer = session.get(path).await.expect("a new session");
    *app_connection = answer.1["conn"].clone();
    answer
}

async fn wait_not_ready_at_expiry(sidecar: &AuthoritySidecar, not_after: i64) {
    let limit = Duration::from_secs((not_after - unix_now()).max(0) as u64) + EXPIRY_GRACE;
    let start = Instant::now();
    loop {
        match admin_get(sidecar.admin, "/ready").await {
            Some((503, body)) if body.contains("identity") => break,
            Some((200, _)) => {}
            other => panic!("{} /ready: {other:?}\n{}", sidecar.name, sidecar.context()),
        }
        if start.elapsed() > limit {
            panic!(
                "{} still ready {}s after its certificate expired (notAfter {not_after}; \
                 allowed {EXPIRY_GRACE:?})\n{}",
                sidecar.name,
                unix_now() - not_after,
                sidecar.context()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        unix_now() >= not_after,
        "{} not ready before its certificate expired",
        sidecar.name
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_turns_503_when_the_certificate_expires_without_the_authority() {
    let temp = tempfile::tempdir().expect("temp dir");
    let ca = AuthorityDir::init(temp.path());
    let web = id("ns/shop/sa/web");
    let token = ca.register(&web, &["app=web"], None, None);
    let mut server = AuthorityServer::start(&ca, "20s").await;
    let policy = write_policy(temp.path(), "policy.yaml", WEB_TO_API);
    let app = HttpApp::start().await;
    let inbound = free_port();
    let sidecar = SidecarSpec::new("web", temp.path(), &ca, &server.url(), &token, &policy)
        .inbound(inbound, app.addr)
        .start()
        .await;
    // Gone before the first renewal.
    server.kill();
    let not_after = sidecar.not_after().await;
    wait_not_ready_at_expiry(&sidecar, not_after).await;
    // Expired: a new connection is refused at once, never held.
    expect_refused_not_ready(&sidecar, inbound, "inbound").await;
}

/// Well below any timeout of the sidecar (handshake 5 s here, the authority
/// client's 10 s, the backoff's 30 s): a refusal, not a wait.
const REFUSAL_LIMIT: Duration = Duration::from_secs(3);

/// Connects to `127.0.0.1:port`, sends an HTTP request, and expects the
/// connection closed or reset within [`REFUSAL_LIMIT`]; then expects the
/// refusal counted as `not_ready` for `direction`.
async fn expect_refused_not_ready(sidecar: &AuthoritySidecar, port: u16, direction: &str) {
    // The reset may arrive before the connect even completes on our side.
    match tokio::time::timeout(REFUSAL_LIMIT, TcpStream::connect(local(port))).await {
        Ok(Ok(mut stream)) => {
            // The write may already fail (reset); either way the read must end.
            let _ = stream
                .write_all(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
                .await;
            expect_closed(&mut stream, REFUSAL_LIMIT).await;
        }
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Ok(Err(e)) => panic!("connect to {} port {port}: {e}", sidecar.name),
        Err(_) => panic!("connect to {} port {port} timed out", sidecar.name),
    }
    let (status, metrics) = admin_get(sidecar.admin, "/metrics")
        .await
        .unwrap_or_else(|| panic!("no answer from {} /metrics", sidecar.name));
    assert_eq!(status, 200);
    let series = format!(
        "appid_connections_refused_total{{direction=\"{direction}\",reason=\"not_ready\"}} "
    );
    let count: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .unwrap_or_else(|| panic!("no {series} in:\n{metrics}"))
        .trim()
        .parse()
        .expect("a counter");
    assert!(count >= 1, "{series}{count}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_refused_at_once_while_the_authority_does_not_answer() {
    let temp = tempfile::tempdir().expect("temp dir");
    let ca = AuthorityDir::init(temp.path());
    let token = ca.register(&id("ns/shop/sa/web"), &["app=web"], None, None);
    // An "authority" that accepts TCP (the kernel completes handshakes into
    // its backlog) but never answers: the sidecar's bootstrap waits.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("https://{}", silent.local_addr().expect("address"));
    let policy = write_policy(temp.path(), "policy.yaml", WEB_TO_API);
    let (inbound, outbound) = (free_port(), free_port());
    let mut sidecar = SidecarSpec::new("web", temp.path(), &ca, &url, &token, &policy)
        .inbound(inbound, local(free_port()))
        .outbound(outbound, local(free_port()))
        .spawn();
    // Up (admin answers) but not ready: no identity yet.
    poll_until(
        "/ready to answer 503",
        READY_LIMIT,
        || sidecar.context(),
        || async { (http_status(sidecar.admin, "/ready").await == Some(503)).then_some(()) },
    )
    .await;
    expect_refused_not_ready(&sidecar, outbound, "outbound").await;
    expect_refused_not_ready(&sidecar, inbound, "inbound").await;
    // Still waiting for the authority, not given up.
    assert!(
        sidecar.child.try_wait().expect("try_wait").is_none(),
        "the sidecar exited\n{}",
        sidecar.context()
    );
}

// ---------------------------------------------------------------------------
// Identity that survives restarts (identity.authority.state_dir)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_sidecar_keeps_its_identity_and_the_token_stays_one_time() {
    use std::os::unix::fs::PermissionsExt;

    let temp = tempfile::tempdir().expect("temp dir");
    let ca = AuthorityDir::init(temp.path());
    let web = id("ns/shop/sa/web");
    let token = ca.register(&web, &["app=web"], None, None);
    let server = AuthorityServer::start(&ca, "1h").await;
    let policy = write_policy(temp.path(), "policy.yaml", WEB_TO_API);
    let state = temp.path().join("web-state");
    let inbound = free_port();
    let spec = || {
        SidecarSpec::new("web", temp.path(), &ca, &server.url(), &token, &policy)
            .inbound(inbound, local(free_port()))
            .state_dir(&state)
    };

    // First start: the join token is redeemed and the identity kept.
    let mut first = spec().start().await;
    assert_eq!(first.appid().await["id"], web.as_str());
    let kept = state.join("identity.pem");
    let mode = std::fs::metadata(&kept)
        .unwrap_or_else(|e| panic!("{}: {e}\n{}", kept.display(), first.context()))
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{} must be private", kept.display());
    let text = std::fs::read_to_string(&kept).expect("read the kept identity");
    assert!(
        text.contains("-----BEGIN PRIVATE KEY-----")
            && text.contains("-----BEGIN CERTIFICATE-----"),
        "{} holds the key and the certificate",
        kept.display()
    );
    assert_eq!(
        ca.count_events("issue", Some(&web)),
        1,
        "{}",
        ca.audit_text()
    );

    // Killed (no chance to clean up) and started again with the same config
    // and the same, now used, token: ready with the same SPIFFE ID.
    first.child.kill().expect("kill the sidecar");
    first.exited = Some(first.child.wait().expect("reap the sidecar"));
    let second = spec().start().await;
    assert_eq!(second.appid().await["id"], web.as_str());
    assert!(
        second.logs().contains("starting with the kept identity"),
        "{}",
        second.context()
    );
    // It renewed with its kept certificate (over mTLS), at once; the token
    // was not presented again, and the renewal was kept in turn.
    poll_until(
        "a renewal by the restarted sidecar",
        READY_LIMIT,
        || {
            format!(
                "{}\n--- authority audit:\n{}",
                second.context(),
                ca.audit_text()
            )
        },
        || async { (ca.count_events("renew", Some(&web)) >= 1).then_some(()) },
    )
    .await;
    assert_eq!(
        ca.count_events("issue", Some(&web)),
        1,
        "{}",
        ca.audit_text()
    );
    assert_eq!(ca.count_events("refuse", None), 0, "{}", ca.audit_text());
    poll_until(
        "the renewed certificate kept",
        READY_LIMIT,
        || second.context(),
        || async { (std::fs::read_to_string(&kept).ok()? != text).then_some(()) },
    )
    .await;

    // The token is still one-time: another sidecar with an empty state
    // directory cannot use it.
    let mut other = SidecarSpec::new(
        "web-elsewhere",
        temp.path(),
        &ca,
        &server.url(),
        &token,
        &policy,
    )
    .inbound(free_port(), local(free_port()))
    .state_dir(&temp.path().join("empty-state"))
    .spawn();
    let status = other.wait_exit(READY_LIMIT).await;
    assert!(
        !status.success(),
        "a used token must not bootstrap: {status}"
    );
    assert!(
        other.logs().contains("already used"),
        "the refusal reason is missing:\n{}",
        other.logs()
    );
}

/// SHA-384 has no instructions of its own on x86 (SHA-256 has), so the
/// authority's handshakes prefer TLS 1.3's mandatory AES-128/SHA-256 suite
/// over whatever the client lists first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_authority_picks_aes_128_gcm_sha256_over_the_clients_first_choice() {
    let temp = tempfile::tempdir().expect("temp dir");
    let ca = AuthorityDir::init(temp.path());
    let server = AuthorityServer::start(&ca, "1h").await;
    // openssl lists TLS_AES_256_GCM_SHA384 first.
    let out = Command::new("openssl")
        .args(["s_client", "-tls1_3", "-connect"])
        .arg(format!("127.0.0.1:{}", server.port))
        .stdin(Stdio::null())
        .output()
        .expect("run openssl s_client");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("Cipher is TLS_AES_128_GCM_SHA256"),
        "the authority negotiated another suite:\n{said}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_needs_a_certificate_this_authority_issued() {
    let temp = tempfile::tempdir().expect("temp dir");
    let ca = AuthorityDir::init(temp.path());
    let web = id("ns/shop/sa/web");
    let token = ca.register(&web, &["app=web"], None, None);
    let server = AuthorityServer::start(&ca, "1h").await;
    let client = ca.client(&server.url());
    let bundle =
        TrustBundle::from_pem_file(&ca.bundle(), vec![TRUST_DOMAIN.into()]).expect("ca.pem");

    // Issued by the authority: renews over mTLS with it.
    let fresh = new_key_and_csr().expect("key and CSR");
    let issued = client
        .attest(&fresh.csr_pem, Proof::JoinToken { token }, None)
        .await
        .expect("attest with the join token");
    let current = LocalIdentity::from_pem(
        "issued",
        issued.certificate.as_bytes(),
        "key",
        fresh.key_pem.as_bytes(),
        &bundle,
    )
    .expect("the issued certificate loads");
    let next = new_key_and_csr().expect("key and CSR");
    let renewed = client
        .renew(&next.csr_pem, current.certified.clone(), None)
        .await
        .expect("renewal with the authority's certificate");
    assert_eq!(renewed.id, web);

    // Signed by the same CA, but offline (`appid issue`): not renewed.
    let (cert, key) = (
        temp.path().join("offline.pem"),
        temp.path().join("offline.key"),
    );
    appid(&[
        "issue",
        "--dir",
        path_str(&ca.dir),
        "--id",
        &web,
        "--label",
        "app=web",
        "--cert",
        path_str(&cert),
        "--key",
        path_str(&key),
    ]);
    let offline = LocalIdentity::load(&cert, &key, &bundle).expect("the offline certificate loads");
    let next = new_key_and_csr().expect("key and CSR");
    let refused = client
        .renew(&next.csr_pem, offline.certified.clone(), None)
        .await;
    assert_refused(&refused, 401, "not issued by this authority");
}

// ---------------------------------------------------------------------------
// Claims re-derived at renewal

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_criticals_reach_the_next_renewal_and_the_peer_refuses_them() {
    let temp = tempfile::tempdir().expect("temp dir");
    let ca = AuthorityDir::init(temp.path());
    let image = digest('b');
    let clean = temp.path().join("clean.json");
    let clean_sha = write_trivy_report(&clean, "2026-11-20T10:00:00Z", &[]);
    ca.import_scan(&clean, &image);
    let (web, api) = (id("ns/shop/sa/web"), id("ns/shop/sa/api"));
    let web_token = ca.register(&web, &["app=web"], Some(&image), None);
    let api_token = ca.register(&api, &["app=api"], None, None);
    let server = AuthorityServer::start(&ca, "10s").await;

    // The api side refuses callers with criticals; web's own policy does not
    // look at vulnerabilities, so any refusal is the peer's.
    let api_policy = write_policy(
        temp.path(),
        "api-policy.yaml",
        "\
version: 1
default: deny
rules:
  - name: clean-web-to-api
    action: allow
    from: { labels.app: web, vulns.critical: { lte: 0 } }
    to: { labels.app: api }
",
    );
    let web_policy = write_policy(temp.path(), "web-policy.yaml", WEB_TO_API);
    let app = HttpApp::start().await;
    let api_port = free_port();
    let api_sidecar = SidecarSpec::new(
        "api",
        temp.path(),
        &ca,
        &server.url(),
        &api_token,
        &api_policy,
    )
    .inbound(api_port, app.addr)
    .start()
    .await;
    let web_port = free_port();
    let web_sidecar = SidecarSpec::new(
        "web",
        temp.path(),
        &ca,
        &server.url(),
        &web_token,
        &web_policy,
    )
    .outbound(web_port, local(api_port))
    .start()
    .await;
    let context = || format!("{}\n{}", web_sidecar.context(), api_sidecar.context());
    let url = format!("http://127.0.0.1:{web_port}/v1/orders");

    let claims = web_sidecar.appid().await["claims"].clone();
    assert_eq!(claims["vulns"]["critical"], 0, "{claims}");
    assert_eq!(claims["vulns"]["report"], clean_sha.as_str(), "{claims}");
    let allowed = curl(&[&url]).await;
    assert_eq!(allowed.status, 200, "{allowed:?}\n{}", context());

    // A new scan of the same image finds criticals.
    let bad = temp.path().join("criticals.json");
    let bad_sha = write_trivy_report(
        &bad,
        "2026-11-21T08:30:00Z",
        &[("CRITICAL", 2), ("HIGH", 1), ("MEDIUM", 1)],
    );
    ca.import_scan(&bad, &image);
    let vulns = poll_until(
        "web's next certificate to carry the new scan",
        Duration::from_secs(30),
        context,
        || async {
            let vulns = web_sidecar.appid().await["claims"]["vulns"].clone();
            (vulns["report"] == bad_sha.as_str()).then_some(vulns)
        },
    )
    .await;
    assert_eq!(
        vulns,
        json!({
            "critical": 2, "high": 1, "medium": 1, "low": 0, "unknown": 0,
            "scanner": "trivy", "report": bad_sha, "scanned_at": "2026-11-21T08:30:00Z"
        })
    );
    assert!(
        ca.count_events("renew", Some(&web)) >= 1,
        "{}",
        ca.audit_text()
    );

    // The very next connections present the new certificate (the sidecar
    // swaps it in for new handshakes), and api refuses it: 403, audited.
    // Each `fetch` is a new connection, so a new handshake web → api.
    let renewed = unix_now();
    let start = Instant::now();
    let mut seen = Vec::new();
    let denied = loop {
        match fetch(local(web_port), "/v1/orders").await {
            Ok(response) if response.status == 403 => break response,
            Ok(response) => seen.push(format!(
                "{} (the app saw the caller's vulns.critical = {})",
                response.status,
                seen_critical(&response)
            )),
            Err(e) => seen.push(e),
        }
        if start.elapsed() > NEW_CERT_LIMIT {
            let stale: Vec<String> = api_sidecar
                .audit_lines()
                .into_iter()
                .filter(|l| l["claims"]["from.vulns.critical"] == 0)
                .map(|l| l["time"].to_string())
                .collect();
            panic!(
                "api did not refuse web within {NEW_CERT_LIMIT:?} of web's /appid showing \
                 the new scan (at {renewed}); new connections got:\n{}\n\
                 api saw `from.vulns.critical: 0` at {stale:?}\n{}\n{}\n{}",
                seen.join("\n"),
                handshake_failures(&web_sidecar).await,
                handshake_failures(&api_sidecar).await,
                context()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        denied.header("x-appid-denied-by"),
        Some("default"),
        "{denied:?}"
    );
    let audited = api_sidecar.audit_lines().into_iter().any(|line| {
        line["decision"] == "deny"
            && line["direction"] == "inbound"
            && line["peer_id"] == web.as_str()
            && line["rule"] == "default"
            && line["method"] == "GET"
            && line["reason"]
                .as_str()
                .is_some_and(|r| r.contains("vulns.critical"))
    });
    assert!(audited, "no audited denial of web\n{}", context());
}

// ---------------------------------------------------------------------------
// Revocation

/// `revoke --audit-log PATH` audits where `serve --audit-log PATH` does (it
/// used to write DIR/audit.jsonl whatever `serve` was given, and to drop
/// the line silently when it could not write it); an audit log it cannot
/// open stops it before the revocation is made.
/// Sidecars take `spiffe://<td>/appid/authority`'s word for the bundle
/// and revocations: no workload may be registered as it.
#[test]
fn the_authoritys_own_id_is_no_workloads() {
    let temp = tempfile::tempdir().expect("temp dir");
    let ca = AuthorityDir::init(temp.path());
    let out = Command::new(APPID)
        .args(["authority", "register", "--dir", path_str(&ca.dir)])
        .args(["--id", &id("appid/authority")])
        .output()
        .expect("run appid authority register");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "registered: {stderr}");
    assert!(stderr.contains("the authority's own ID"), "{stderr}");
    // Another ID under `appid/` is a workload's like any.
    ca.register(&id("appid/tools"), &["app=tools"], None, None);
}

#[test]
fn revoke_audits_to_the_log_it_is_given_or_revokes_nothing() {
    let temp = tempfile::tempdir().expect("temp dir");
    let ca = AuthorityDir::init(temp.path());
    let web = id("ns/shop/sa/web");
    ca.register(&web, &["app=web"], None, None);
    let revoke = |audit_log: &Path| {
        Command::new(APPID)
            .args([
                "authority",
                "revoke",
                "--dir",
                path_str(&ca.dir),
                "--id",
                &web,
            ])
            .args(["--audit-log", path_str(audit_log)])
            .output()
            .expect("run appid authority revoke")
    };

    let unwritable = temp.path().join("no-such-dir").join("audit.jsonl");
    let out = revoke(&unwritable);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "revoke succeeded: {stderr}");
    assert!(
        stderr.contains(path_str(&unwritable)) && stderr.contains("--audit-log"),
        "the error names the file and the flag: {stderr}"
    );

    let kept = temp.path().join("kept-audit.jsonl");
    let out = revoke(&kept);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(&format!("revoked {web}")),
        "the failed attempt revoked nothing, this one does: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = support::json_lines(
        &std::fs::read_to_string(&kept).expect("the given audit log"),
        "the given audit log",
    );
    assert!(
        lines.len() == 1 && lines[0]["event"] == "revoke" && lines[0]["id"] == web.as_str(),
        "{lines:?}"
    );
    assert_eq!(ca.count_events("revoke", None), 0, "{}", ca.audit_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_workload_is_refused_by_its_peers_within_a_few_polls() {
    let temp = tempfile::tempdir().expect("temp dir");
    let ca = AuthorityDir::init(temp.path());
    let (web, api) = (id("ns/shop/sa/web"), id("ns/shop/sa/api"));
    let web_token = ca.register(&web, &["app=web"], None, None);
    let api_token = ca.register(&api, &["app=api"], None, None);
    let server = AuthorityServer::start(&ca, "1h").await;
    let policy = write_policy(temp.path(), "policy.yaml", WEB_TO_API);
    let echo = EchoServer::start().await;
    let api_port = free_port();
    let api_sidecar = SidecarSpec::new("api", temp.path(), &ca, &server.url(), &api_token, &policy)
        .inbound(api_port, echo.addr)
        .start()
        .await;
    let web_port = free_port();
    let web_sidecar = SidecarSpec::new("web", temp.path(), &ca, &server.url(), &web_token, &policy)
        .outbound(web_port, local(api_port))
        .start()
        .await;
    let context = || format!("{}\n{}", web_sidecar.context(), api_sidecar.context());

    let mut live = connect_and_echo(local(web_port), b"before revocation\n")
        .await
        .unwrap_or_else(|e| panic!("echo through the pair: {e}\n{}", context()));

    ca.revoke(&web);
    let revoked_at = Instant::now();
    // The live opaque connection is closed by the peer...
    expect_closed(&mut live, REVOCATION_LIMIT).await;
    // ...and new ones are refused.
    let refused = connect_and_echo(local(web_port), b"after revocation\n").await;
    assert!(
        refused.is_err(),
        "a revoked workload got through\n{}",
        context()
    );
    assert!(
        revoked_at.elapsed() < REVOCATION_LIMIT,
        "took {:?}",
        revoked_at.elapsed()
    );
    let audited = api_sidecar.audit_lines().into_iter().any(|line| {
        line["decision"] == "deny" && line["rule"] == "revoked" && line["peer_id"] == web.as_str()
    });
    assert!(
        audited,
        "closing the revoked connection was not audited\n{}",
        context()
    );
    assert_eq!(
        ca.count_events("revoke", Some(&web)),
        1,
        "{}",
        ca.audit_text()
    );

    // A revoked identity stays revoked: no new join token is handed out.
    let again = std::process::Command::new(APPID)
        .args([
            "authority",
            "register",
            "--dir",
            path_str(&ca.dir),
            "--id",
            &web,
        ])
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("is revoked"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}

// ---------------------------------------------------------------------------
// Crash safety

/// What one attestation of the burst got before the kill.
#[derive(Debug)]
enum Outcome {
    Issued,
    /// Cut off by the kill (anything else is a failure of the test).
    Failed(ClientError),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_issuance_keeps_the_database_intact() {
    const BURST: usize = 60;
    const WORKERS: usize = 6;
    let temp = tempfile::tempdir().expect("temp dir");
    let ca = AuthorityDir::init(temp.path());
    let before = ca.register(&id("before"), &["app=before"], None, None);
    let mut tokens = Vec::new();
    // `register` is a process each; eight at a time.
    for first in (0..BURST).step_by(8) {
        let registering: Vec<_> = (first..BURST.min(first + 8))
            .map(|i| {
                let dir = ca.dir.clone();
                tokio::task::spawn_blocking(move || {
                    AuthorityDir { dir }.register(
                        &id(&format!("burst/{i}")),
                        &["app=burst"],
                        None,
                        None,
                    )
                })
            })
            .collect();
        for task in registering {
            tokens.push(task.await.expect("register"));
        }
    }
    let mut server = AuthorityServer::start(&ca, "1h").await;
    let client = ca.client(&server.url());
    attest(&client, &before)
        .await
        .expect("redeem before the kill");

    // The burst: workers take tokens in turn; the authority is killed once
    // some issuances are done and others are in flight.
    // The kill follows the tenth answer at once (a poll of the audit log
    // was too slow on a quick machine: the whole burst was answered first).
    const KILL_AFTER: usize = 10;
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let kill_now = Arc::new(tokio::sync::Notify::new());
    let outcomes = Arc::new(std::sync::Mutex::new(BTreeMap::<usize, Outcome>::new()));
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let (client, tokens, next, outcomes) = (
                client.clone(),
                tokens.clone(),
                next.clone(),
                outcomes.clone(),
            );
            let (answered, kill_now) = (answered.clone(), kill_now.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(token) = tokens.get(i) else { return };
                    let outcome = match attest(&client, token).await {
                        Ok(_) => {
                            if answered.fetch_add(1, Ordering::SeqCst) + 1 == KILL_AFTER {
                                kill_now.notify_one();
                            }
                            Outcome::Issued
                        }
                        Err(e) => Outcome::Failed(e),
                    };
                    let failed = matches!(outcome, Outcome::Failed(_));
                    outcomes.lock().unwrap().insert(i, outcome);
                    if failed {
                        return; // the authority is gone
                    }
                }
            })
        })
        .collect();
    if tokio::time::timeout(Duration::from_secs(20), kill_now.notified())
        .await
        .is_err()
    {
        panic!(
            "fewer than {KILL_AFTER} burst issuances in 20 s\n{}",
            server.logs()
        );
    }
    server.kill();
    for worker in workers {
        worker.await.expect("worker");
    }
    let outcomes = std::mem::take(&mut *outcomes.lock().unwrap());
    let issued: Vec<usize> = outcomes
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Issued))
        .map(|(i, _)| *i)
        .collect();
    let interrupted: Vec<usize> = outcomes
        .iter()
        .filter(|(i, o)| match o {
            Outcome::Issued => false,
            // Before the kill nothing is refused; after it, nothing answers.
            Outcome::Failed(ClientError::Unreachable(_) | ClientError::BadResponse(_)) => true,
            Outcome::Failed(e) => panic!("burst request {i} failed: {e}"),
        })
        .map(|(i, _)| *i)
        .collect();
    assert!(issued.len() >= 5, "{outcomes:?}");
    assert!(
        !interrupted.is_empty() && issued.len() < BURST,
        "the kill did not interrupt the burst: {outcomes:?}"
    );

    // While it is down, the database takes registrations (the CLI writes it
    // directly, recovering the WAL the kill left behind).
    let after = ca.register(&id("after"), &["app=after"], None, None);

    let db = ca.dir.join("authority.db");
    let sqlite = |sql: &str| -> Option<String> {
        let out = Command::new("sqlite3").arg(&db).arg(sql).output().ok()?;
        assert!(
            out.status.success(),
            "sqlite3 {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    match sqlite("PRAGMA integrity_check") {
        Some(check) => {
            assert_eq!(check, "ok");
            // Everything answered 200 before the kill was committed first.
            let recorded: usize = sqlite("SELECT COUNT(*) FROM issued")
                .unwrap()
                .parse()
                .unwrap();
            assert!(
                recorded > issued.len(),
                "{recorded} recorded, {} + 1 answered",
                issued.len()
            );
        }
        None => eprintln!("sqlite3 is not installed: integrity checked through behaviour only"),
    }

    let server = AuthorityServer::start(&ca, "1h").await;
    let client = ca.client(&server.url());
    assert_refused(&attest(&client, &before).await, 401, "already used");
    for i in &issued {
        assert_refused(&attest(&client, &tokens[*i]).await, 401, "already used");
    }
    // A request cut off by the kill either never consumed its token (it
    // works now) or consumed it (refused now); never anything else.
    let mut consumed_without_answer = 0;
    for i in &interrupted {
        match attest(&client, &tokens[*i]).await {
            Ok(_) => {}
            Err(ClientError::Refused {
                status: 401,
                message,
            }) if message.contains("already used") => {
                consumed_without_answer += 1;
            }
            Err(e) => panic!("token {i} after the restart: {e}\n{}", server.logs()),
        }
    }
    eprintln!(
        "burst: {} issued before the kill, {} interrupted ({consumed_without_answer} of them consumed without an answer)",
        issued.len(),
        interrupted.len()
    );
    // Tokens the burst never reached are intact.
    for (i, token) in tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| !outcomes.contains_key(i))
    {
        attest(&client, token)
            .await
            .unwrap_or_else(|e| panic!("untouched token {i}: {e}"));
    }
    let response = attest(&client, &after)
        .await
        .expect("registered while down");
    assert_eq!(response.id, id("after"));
}

/// `authority serve --log-format json` reaches the running authority: every
/// line it writes to stderr (after serving an attestation) is a JSON
/// object; with the default (text) none is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_log_format_json_makes_every_log_line_json() {
    let temp = tempfile::tempdir().expect("temp dir");
    let ca = AuthorityDir::init(temp.path());
    for (flags, json) in [(&["--log-format", "json"][..], true), (&[][..], false)] {
        let token = ca.register(&id("ns/shop/sa/web"), &["app=web"], None, None);
        let server = AuthorityServer::start_with(&ca, "1h", flags).await;
        let client = ca.client(&server.url());
        attest(&client, &token).await.expect("attested");
        let logs = server.logs();
        let lines: Vec<&str> = logs.lines().collect();
        assert!(!lines.is_empty(), "{flags:?}: nothing logged");
        for line in lines {
            let parsed = serde_json::from_str::<serde_json::Value>(line).ok();
            assert_eq!(
                parsed.as_ref().is_some_and(serde_json::Value::is_object),
                json,
                "{flags:?}: {line}"
            );
        }
    }
}
