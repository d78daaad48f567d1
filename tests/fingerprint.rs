//! End-to-end test of the runtime fingerprint (`identity.authority.workload`),
//! driving the real `appid authority serve` and `appid proxy`:
//!
//! ```text
//! workload (a copy of /bin/sleep, then of /bin/cat) ◀── /proc ── appid proxy ──▶ appid authority serve
//!        └── pid file ──────────────────────────────────────┘   attest / renew with `reported`
//! ```
//!
//! Covered:
//! - The sidecar's certificate (admin `/appid`) says under `reported` what
//!   the test knows independently: the sha256 of the workload's binary
//!   (hashed here from the file), its path, uid and user name (the workload
//!   runs as `nobody` when the test is root), the sha256 of every library
//!   it maps (each hashed here from its path), the kernel release
//!   (`/proc/sys/kernel/osrelease`), the OS (`/etc/os-release`) and the
//!   image the environment names (`APPID_IMAGE`).
//! - Nothing of it leaks into vouched claims: labels stay the registered
//!   ones; `appid cert inspect` lists the facts apart, as self-reported.
//! - `appid policy explain` with a rule `from: { reported.process.sha256 }`
//!   allows the certificate of the sleep binary.
//! - The binary is replaced (a copy of /bin/cat) and the workload restarted
//!   (pid file updated): within a few renewals (`--cert-ttl 6s`) the claim
//!   follows, and the same policy now denies.
//! - Failure to mine: the pid file names a dead process; the sidecar still
//!   renews (twice), stays ready, keeps sending the last good facts, and
//!   logs the failure once (not once per renewal).

#[path = "support/mod.rs"]
mod support;

use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use appid_proxy::authority::client::AuthorityClient;
use appid_proxy::identity::verify::TrustBundle;

use support::net::{free_port, http_get, http_status, local};
use support::pki::{APPID, Ca, appid, replace_file};
use support::poll_until;

const TRUST_DOMAIN: &str = "fp.example";
/// Certificates live 6 s, so the sidecar renews about every 3 s.
const CERT_TTL: &str = "6s";
const READY_LIMIT: Duration = Duration::from_secs(20);
/// Long enough for several renewals.
const RENEWAL_LIMIT: Duration = Duration::from_secs(30);
const MINING_FAILED: &str = "mining the runtime fingerprint failed";

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temp path")
}

fn sha256_file(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes).as_ref())
}

/// The effective uid of a process, from `/proc/<pid>/status`.
fn effective_uid(pid: &str) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1)?.parse().ok())
        .expect("Uid line")
}

/// The name of `uid` in /etc/passwd.
fn user_name(uid: u32) -> Option<String> {
    std::fs::read_to_string("/etc/passwd")
        .ok()?
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 2 && f[2] == uid.to_string()).then(|| f[0].to_string())
        })
}

/// `appid authority serve`, killed on drop.
struct Authority {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Authority {
    async fn start(ca: &Ca) -> Authority {
        let port = free_port();
        let log = ca.dir.join("serve.log");
        let child = Command::new(APPID)
            .args(["authority", "serve", "--dir", path_str(&ca.dir)])
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--cert-ttl",
                CERT_TTL,
            ])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("create log"))
            .spawn()
            .expect("spawn appid authority serve");
        let authority = Authority { child, port, log };
        let bundle = TrustBundle::from_pem_file(&ca.bundle(), vec![TRUST_DOMAIN.into()])
            .expect("load ca.pem");
        let client = AuthorityClient::new(&authority.url(), bundle).expect("client");
        let start = Instant::now();
        while client.revocations().await.is_err() {
            assert!(
                start.elapsed() < READY_LIMIT,
                "authority not serving:\n{}",
                std::fs::read_to_string(&authority.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        authority
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }
}

impl Drop for Authority {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A workload process, killed on drop. Runs as `nobody` when the test is
/// root, so its uid is not simply the sidecar's.
struct Workload {
    child: Child,
}

impl Workload {
    fn start(binary: &Path, args: &[&str], run_as: Option<u32>) -> Workload {
        let mut command = Command::new(binary);
        command
            .args(args)
            .stdin(Stdio::piped()) // `cat` waits on it for ever
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(uid) = run_as {
            command.uid(uid).gid(uid);
        }
        Workload {
            child: command.spawn().expect("spawn the workload"),
        }
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `appid proxy` with its identity from the authority and a workload; killed
/// on drop.
struct Sidecar {
    child: Child,
    admin: std::net::SocketAddr,
    stderr: PathBuf,
}

impl Sidecar {
    async fn start(dir: &Path, ca: &Ca, url: &str, token: &str, pid_file: &Path) -> Sidecar {
        let q = |p: &Path| serde_json::to_string(path_str(p)).expect("JSON string");
        let token_file = dir.join("join-token");
        std::fs::write(&token_file, token).expect("write token");
        let policy = dir.join("sidecar-policy.yaml");
        std::fs::write(&policy, "version: 1\ndefault: deny\nrules: []\n").expect("policy");
        let admin = local(free_port());
        let mut yaml = String::new();
        writeln!(yaml, "identity:").unwrap();
        writeln!(yaml, "  authority:").unwrap();
        writeln!(yaml, "    url: \"{url}\"").unwrap();
        writeln!(yaml, "    bundle: {}", q(&ca.bundle())).unwrap();
        writeln!(yaml, "    join_token_file: {}", q(&token_file)).unwrap();
        writeln!(yaml, "    state_dir: {}", q(&dir.join("state"))).unwrap();
        writeln!(yaml, "    workload: {{ pid_file: {} }}", q(pid_file)).unwrap();
        writeln!(yaml, "trust_domains: [{TRUST_DOMAIN}]").unwrap();
        writeln!(yaml, "policy: {}", q(&policy)).unwrap();
        writeln!(yaml, "inbound:").unwrap();
        writeln!(yaml, "  - listen: \"127.0.0.1:{}\"", free_port()).unwrap();
        writeln!(yaml, "    forward: \"127.0.0.1:9\"").unwrap();
        writeln!(yaml, "admin: \"{admin}\"").unwrap();
        writeln!(yaml, "audit_log: {}", q(&dir.join("audit.jsonl"))).unwrap();
        let config = dir.join("proxy.yaml");
        std::fs::write(&config, yaml).expect("write config");
        let stderr = dir.join("sidecar.log");
        let child = Command::new(APPID)
            .arg("proxy")
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info")
            .env(
                "APPID_IMAGE",
                format!("registry.example/web@sha256:{}", "e".repeat(64)),
            )
            .env_remove("APPID_IMAGE_DIGEST")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).expect("create log"))
            .spawn()
            .expect("spawn appid proxy");
        let mut sidecar = Sidecar {
            child,
            admin,
            stderr,
        };
        let start = Instant::now();
        while http_status(admin, "/ready").await != Some(200) {
            if let Some(status) = sidecar.child.try_wait().expect("try_wait") {
                panic!("sidecar exited ({status}):\n{}", sidecar.logs());
            }
            assert!(
                start.elapsed() < READY_LIMIT,
                "sidecar not ready:\n{}",
                sidecar.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        sidecar
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The claims of the certificate the sidecar serves with now.
    async fn claims(&self) -> Value {
        let body = http_get(self.admin, "/appid")
            .await
            .unwrap_or_else(|| panic!("no /appid:\n{}", self.logs()));
        let appid: Value = serde_json::from_str(&body).expect("/appid JSON");
        appid["claims"].clone()
    }

    fn warnings(&self) -> usize {
        self.logs().matches(MINING_FAILED).count()
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Renewals the authority has recorded (its audit log's `renew` lines).
fn renewals(ca: &Ca) -> usize {
    std::fs::read_to_string(ca.dir.join("audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("\"event\":\"renew\""))
        .count()
}

/// Waits until the authority has recorded `more` renewals after `since`.
async fn wait_renewals(ca: &Ca, sidecar: &Sidecar, since: usize, more: usize) {
    poll_until(
        &format!("{more} more renewals"),
        RENEWAL_LIMIT,
        || sidecar.logs(),
        || async { (renewals(ca) >= since + more).then_some(()) },
    )
    .await;
}

/// `appid policy explain POLICY --from CERT --to CERT --port 8080`: exit code
/// and stdout.
fn explain(policy: &Path, from: &Path, to: &Path) -> (i32, String) {
    let out = Command::new(APPID)
        .args(["policy", "explain", path_str(policy)])
        .args(["--from", path_str(from), "--to", path_str(to)])
        .args(["--port", "8080"])
        .output()
        .expect("run appid policy explain");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fingerprint_reaches_the_certificate_follows_the_binary_and_survives_failures() {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path();
    // The workload may run as nobody: it must be able to reach its binary.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let ca = Ca::init(&dir.join("ca"), TRUST_DOMAIN);
    let web_id = format!("spiffe://{TRUST_DOMAIN}/web");
    let token = String::from_utf8(
        appid(&[
            "authority",
            "register",
            "--dir",
            path_str(&ca.dir),
            "--id",
            &web_id,
            "--label",
            "app=web",
        ])
        .stdout,
    )
    .expect("UTF-8 token");
    let api = ca.issue(&dir.join("api"), "api", &["app=api"], &[]);
    let authority = Authority::start(&ca).await;

    // The workload: a copy of /bin/sleep, so its hash is ours to know.
    let binary = dir.join("web");
    std::fs::copy("/bin/sleep", &binary).expect("copy /bin/sleep");
    let sleep_sha = sha256_file(&binary);
    let me = effective_uid("self");
    let run_as = (me == 0).then_some(65534);
    let mut workload = Workload::start(&binary, &["1000"], run_as);
    let pid_file = dir.join("web.pid");
    replace_file(&pid_file, workload.pid().as_bytes());

    let sidecar = Sidecar::start(dir, &ca, &authority.url(), token.trim(), &pid_file).await;
    let claims = sidecar.claims().await;
    let reported = &claims["reported"];
    let process = &reported["process"];
    assert_eq!(process["sha256"], sleep_sha.as_str(), "{claims:#}");
    assert_eq!(process["path"], path_str(&binary), "{claims:#}");
    let uid = effective_uid(&workload.pid());
    assert_eq!(process["uid"], uid, "{claims:#}");
    if let Some(name) = user_name(uid) {
        assert_eq!(process["user"], name.as_str(), "{claims:#}");
    }
    let libraries = process["libraries"].as_array().expect("libraries");
    assert!(
        libraries
            .iter()
            .any(|l| l["path"].as_str().is_some_and(|p| p.contains("libc"))),
        "{claims:#}"
    );
    for library in libraries {
        let path = Path::new(library["path"].as_str().expect("path"));
        assert_eq!(library["sha256"], sha256_file(path).as_str(), "{library}");
    }
    assert!(process["libraries_sha256"].is_string(), "{claims:#}");
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    assert_eq!(reported["host"]["kernel"], kernel.trim(), "{claims:#}");
    if let Ok(os) = std::fs::read_to_string("/etc/os-release")
        && let Some(id) = os.lines().find_map(|l| l.strip_prefix("ID="))
    {
        assert_eq!(
            reported["host"]["os"]["id"],
            id.trim_matches('"'),
            "{claims:#}"
        );
    }
    assert_eq!(
        reported["container"]["image"],
        format!("registry.example/web@sha256:{}", "e".repeat(64)),
        "{claims:#}"
    );
    assert_eq!(
        reported["container"]["image_digest"],
        format!("sha256:{}", "e".repeat(64)),
        "{claims:#}"
    );
    // Vouched claims are the registration's, untouched.
    assert_eq!(claims["labels"], serde_json::json!({"app": "web"}));
    assert_eq!(claims["id"], web_id.as_str());

    // `cert inspect` keeps the two apart.
    let kept = dir.join("state").join("identity.pem");
    let inspect = appid(&["cert", "inspect", path_str(&kept)]);
    let text = String::from_utf8_lossy(&inspect.stdout);
    let vouched_at = text.find("AppID claims (vouched").expect(&text);
    let labels_at = text.find("labels.app").expect(&text);
    let reported_at = text.find("Self-reported (not vouched").expect(&text);
    let sha_line = text
        .lines()
        .find(|l| l.trim_start().starts_with("reported.process.sha256"))
        .expect(&text);
    assert!(sha_line.ends_with(&sleep_sha), "{text}");
    assert!(
        vouched_at < labels_at
            && labels_at < reported_at
            && reported_at < text.find(sha_line).unwrap(),
        "{text}"
    );

    // Policy on the fingerprint.
    let policy = dir.join("policy.yaml");
    std::fs::write(
        &policy,
        format!(
            "version: 1\ndefault: deny\nrules:\n  - name: only-the-sleep-binary\n    action: allow\n    \
             from: {{ reported.process.sha256: \"{sleep_sha}\" }}\n    to: {{ labels.app: api, ports: [8080] }}\n"
        ),
    )
    .expect("write policy");
    let (code, out) = explain(&policy, &kept, &api.cert);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("only-the-sleep-binary"), "{out}");

    // Replace the binary (different content), restart the workload.
    let new_binary = dir.join("web.new");
    std::fs::copy("/bin/cat", &new_binary).expect("copy /bin/cat");
    let cat_sha = sha256_file(&new_binary);
    assert_ne!(cat_sha, sleep_sha);
    std::fs::rename(&new_binary, &binary).expect("replace the binary");
    let mut restarted = Workload::start(&binary, &[], run_as);
    replace_file(&pid_file, restarted.pid().as_bytes());
    workload.stop();
    let claims = poll_until(
        "the renewed certificate to carry the new binary's hash",
        RENEWAL_LIMIT,
        || sidecar.logs(),
        || async {
            let claims = sidecar.claims().await;
            (claims["reported"]["process"]["sha256"] == cat_sha.as_str()).then_some(claims)
        },
    )
    .await;
    assert_eq!(claims["reported"]["process"]["path"], path_str(&binary));
    assert_eq!(claims["labels"], serde_json::json!({"app": "web"}));
    // The state file is written before /appid shows the new certificate.
    let (code, out) = explain(&policy, &kept, &api.cert);
    assert_eq!(code, 1, "the old binary's rule no longer matches: {out}");

    // Failure to mine: the pid file names a dead process.
    let warned_before = sidecar.warnings();
    restarted.stop();
    let since = renewals(&ca);
    wait_renewals(&ca, &sidecar, since, 2).await;
    let claims = sidecar.claims().await;
    assert_eq!(
        claims["reported"]["process"]["sha256"],
        cat_sha.as_str(),
        "the last good facts are sent: {claims:#}"
    );
    assert_eq!(http_status(sidecar.admin, "/ready").await, Some(200));
    let logs = sidecar.logs();
    assert_eq!(
        sidecar.warnings() - warned_before,
        1,
        "one warning for a failure that repeats at every renewal:\n{logs}"
    );
    let warning = logs
        .lines()
        .rev()
        .find(|l| l.contains(MINING_FAILED))
        .unwrap();
    assert!(
        warning.contains("WARN")
            && warning.contains("no_process")
            && warning.contains("is not running"),
        "{warning}"
    );
    drop(authority);
}
