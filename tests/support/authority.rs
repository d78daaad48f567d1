//! A real `appid authority serve` and the sidecars it issues to, as the
//! authority tests start them: processes killed on drop, logs in files.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::net::{free_port, http_status, local};
use super::pki::{APPID, Ca, appid};

/// How long a process gets to start and say it is ready.
pub const READY_LIMIT: Duration = Duration::from_secs(20);

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// An `appid` child killed on drop, its stderr in `log`.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(args: &[&str], log: PathBuf) -> Proc {
        let child = Command::new(APPID)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("create log"))
            .spawn()
            .expect("spawn appid");
        Proc { child, log }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, now.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Lines of the log that contain `what`.
    pub fn count(&self, what: &str) -> usize {
        self.log().lines().filter(|l| l.contains(what)).count()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `appid authority serve --dir <ca> <extra>` on a free loopback port,
/// once it accepts connections; and its URL.
pub fn serve(ca: &Ca, extra: &[&str], log: PathBuf) -> (Proc, String) {
    let port = free_port();
    (
        serve_on(ca, port, extra, log),
        format!("https://127.0.0.1:{port}"),
    )
}

/// [`serve`] on a given port.
pub fn serve_on(ca: &Ca, port: u16, extra: &[&str], log: PathBuf) -> Proc {
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec![
        "authority",
        "serve",
        "--dir",
        path_str(&ca.dir),
        "--listen",
        &listen,
    ];
    args.extend_from_slice(extra);
    let proc = Proc::spawn(&args, log);
    let start = Instant::now();
    while std::net::TcpStream::connect(local(port)).is_err() {
        assert!(
            start.elapsed() < READY_LIMIT,
            "not listening:\n{}",
            proc.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    proc
}

/// A sidecar whose identity `spiffe://<td>/<name>` (label `app=<name>`)
/// comes from the authority at `url` with a fresh join token, with one
/// listener (`listener` is its YAML line) and `policy`. Files go in `dir`.
pub fn sidecar(
    dir: &Path,
    ca: &Ca,
    url: &str,
    name: &str,
    listener: &str,
    policy: &Path,
) -> (Proc, SocketAddr) {
    sidecar_with_workload(dir, ca, url, name, listener, policy, None)
}

/// [`sidecar`], its runtime fingerprint mined from `workload` (the YAML
/// flow mapping of `identity.authority.workload`) when given.
pub fn sidecar_with_workload(
    dir: &Path,
    ca: &Ca,
    url: &str,
    name: &str,
    listener: &str,
    policy: &Path,
    workload: Option<&str>,
) -> (Proc, SocketAddr) {
    let q = |p: &Path| serde_json::to_string(path_str(p)).expect("JSON");
    let token = appid(&[
        "authority",
        "register",
        "--dir",
        path_str(&ca.dir),
        "--id",
        &format!("spiffe://{}/{name}", ca.trust_domain),
        "--label",
        &format!("app={name}"),
    ])
    .stdout;
    let token_file = dir.join(format!("{name}.token"));
    std::fs::write(&token_file, token).expect("token");
    let admin = local(free_port());
    let mut yaml = String::new();
    writeln!(yaml, "identity:").unwrap();
    writeln!(yaml, "  authority:").unwrap();
    writeln!(yaml, "    url: \"{url}\"").unwrap();
    writeln!(yaml, "    bundle: {}", q(&ca.bundle())).unwrap();
    writeln!(yaml, "    join_token_file: {}", q(&token_file)).unwrap();
    writeln!(
        yaml,
        "    state_dir: {}",
        q(&dir.join(format!("{name}-state")))
    )
    .unwrap();
    if let Some(workload) = workload {
        writeln!(yaml, "    workload: {workload}").unwrap();
    }
    writeln!(yaml, "trust_domains: [{}]", ca.trust_domain).unwrap();
    writeln!(yaml, "policy: {}", q(policy)).unwrap();
    writeln!(yaml, "{listener}").unwrap();
    writeln!(yaml, "admin: \"{admin}\"").unwrap();
    writeln!(
        yaml,
        "audit_log: {}",
        q(&dir.join(format!("{name}-audit.jsonl")))
    )
    .unwrap();
    let config = dir.join(format!("{name}.yaml"));
    std::fs::write(&config, yaml).expect("config");
    let proc = Proc::spawn(
        &["proxy", "--config", path_str(&config)],
        dir.join(format!("{name}.log")),
    );
    (proc, admin)
}

/// Waits for the sidecar's `/ready`.
pub async fn wait_ready(admin: SocketAddr, proc: &Proc) {
    let start = Instant::now();
    while http_status(admin, "/ready").await != Some(200) {
        assert!(start.elapsed() < READY_LIMIT, "not ready:\n{}", proc.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `check` holds, or fails with `context`.
pub async fn wait_until(
    what: &str,
    limit: Duration,
    context: impl Fn() -> String,
    check: impl Fn() -> bool,
) {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < limit,
            "timed out waiting for {what}\n{}",
            context()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `openssl verify -CAfile ca_pem` of the certificate in a kept
/// `identity.pem` (key, then certificate).
pub fn verifies_with(ca_pem: &Path, identity: &Path) -> bool {
    let text = std::fs::read_to_string(identity).unwrap_or_default();
    let Some(start) = text.find("-----BEGIN CERTIFICATE-----") else {
        return false;
    };
    let cert = identity.with_extension("cert.pem");
    std::fs::write(&cert, &text[start..]).expect("write cert");
    Command::new("openssl")
        .args(["verify", "-CAfile", path_str(ca_pem), path_str(&cert)])
        .output()
        .is_ok_and(|o| o.status.success())
}
