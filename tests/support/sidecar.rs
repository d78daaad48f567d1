//! `appid proxy --config` as a child process, killed on drop.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::net::{free_port, http_status, local};
use super::pki::{APPID, Cert};

/// How long a sidecar may take to become ready (debug build, busy CI).
const READY_LIMIT: Duration = Duration::from_secs(20);

/// What to start.
pub struct SidecarBuilder {
    name: String,
    dir: PathBuf,
    cert: Cert,
    bundle: PathBuf,
    trust_domain: String,
    policy: PathBuf,
    inbound: Vec<(u16, Option<SocketAddr>)>,
    outbound: Vec<(u16, Option<SocketAddr>)>,
    limits: Vec<(String, String)>,
    tunnel: Option<String>,
    /// `ports:` entries, as YAML flow maps.
    ports: Vec<String>,
    /// `health:` (`127.0.0.1:<port>`).
    health: Option<u16>,
    /// Environment variables of the process.
    env: Vec<(String, String)>,
    /// Further top-level settings (`otlp_endpoint: ...`).
    settings: Vec<(String, String)>,
    /// `identity.federated`: trust domain → bundle file.
    federated: Vec<(String, PathBuf)>,
}

impl SidecarBuilder {
    /// A sidecar called `name` (its files go to `dir/<name>-*`) with the
    /// identity `cert` trusted by `bundle`, enforcing `policy`.
    pub fn new(
        name: &str,
        dir: &Path,
        cert: &Cert,
        bundle: &Path,
        trust_domain: &str,
        policy: &Path,
    ) -> Self {
        SidecarBuilder {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            cert: cert.clone(),
            bundle: bundle.to_path_buf(),
            trust_domain: trust_domain.to_string(),
            policy: policy.to_path_buf(),
            inbound: Vec::new(),
            outbound: Vec::new(),
            // Short enough that a test waiting on them stays quick, long
            // enough for a debug build on a loaded machine.
            limits: vec![
                ("handshake_timeout".into(), "5s".into()),
                ("drain_timeout".into(), "10s".into()),
            ],
            tunnel: None,
            ports: Vec::new(),
            health: None,
            env: Vec::new(),
            settings: Vec::new(),
            federated: Vec::new(),
        }
    }

    /// Trusts `bundle` (SPIFFE bundle JSON or PEM) for `trust_domain`.
    pub fn federated(mut self, trust_domain: &str, bundle: &Path) -> Self {
        self.federated
            .push((trust_domain.to_string(), bundle.to_path_buf()));
        self
    }

    /// Serves the health port on `127.0.0.1:port` (`health:`).
    pub fn health(mut self, port: u16) -> Self {
        self.health = Some(port);
        self
    }

    /// Adds a top-level setting, e.g. `("otlp_endpoint", "\"http://...\"")`
    /// (the value is written as given: YAML).
    pub fn setting(mut self, key: &str, value: &str) -> Self {
        self.settings.push((key.to_string(), value.to_string()));
        self
    }

    /// Sets an environment variable of the `appid proxy` process.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Declares app port `port` (`ports:`): `protocol` (`tcp`, `http`, …)
    /// and, if given, its idle timeout.
    pub fn port(mut self, port: u16, protocol: &str, idle_timeout: Option<&str>) -> Self {
        let idle = idle_timeout.map_or(String::new(), |t| format!(", idle_timeout: {t}"));
        self.ports
            .push(format!("{{ port: {port}, protocol: {protocol}{idle} }}"));
        self
    }

    /// Sets `tunnel:` (`pooled` | `strict`; unset: the default).
    pub fn tunnel(mut self, mode: &str) -> Self {
        self.tunnel = Some(mode.to_string());
        self
    }

    /// An explicit inbound: mTLS (or plaintext from outside the mesh) on
    /// `127.0.0.1:listen`, forwarded to the app at `forward`.
    pub fn inbound(mut self, listen: u16, forward: SocketAddr) -> Self {
        self.inbound.push((listen, Some(forward)));
        self
    }

    /// An explicit outbound: plaintext from the app on `127.0.0.1:listen`,
    /// mTLS to the peer sidecar at `upstream`.
    pub fn outbound(mut self, listen: u16, upstream: SocketAddr) -> Self {
        self.outbound.push((listen, Some(upstream)));
        self
    }

    /// Sets `limits.<key>` (e.g. `("max_connections", "2")`).
    pub fn limit(mut self, key: &str, value: &str) -> Self {
        self.limits.retain(|(k, _)| k != key);
        self.limits.push((key.to_string(), value.to_string()));
        self
    }

    fn config(&self, admin: SocketAddr, audit: &Path) -> String {
        let mut yaml = String::new();
        let q = |p: &Path| serde_json::to_string(p.to_str().expect("UTF-8 path")).unwrap();
        writeln!(yaml, "identity:").unwrap();
        writeln!(yaml, "  cert: {}", q(&self.cert.cert)).unwrap();
        writeln!(yaml, "  key: {}", q(&self.cert.key)).unwrap();
        writeln!(yaml, "  bundle: {}", q(&self.bundle)).unwrap();
        if !self.federated.is_empty() {
            writeln!(yaml, "  federated:").unwrap();
            for (trust_domain, bundle) in &self.federated {
                writeln!(yaml, "    {trust_domain}: {}", q(bundle)).unwrap();
            }
        }
        writeln!(yaml, "trust_domains: [{}]", self.trust_domain).unwrap();
        writeln!(yaml, "policy: {}", q(&self.policy)).unwrap();
        for (section, listeners, key) in [
            ("inbound", &self.inbound, "forward"),
            ("outbound", &self.outbound, "upstream"),
        ] {
            if listeners.is_empty() {
                continue;
            }
            writeln!(yaml, "{section}:").unwrap();
            for (listen, target) in listeners {
                writeln!(yaml, "  - listen: \"127.0.0.1:{listen}\"").unwrap();
                if let Some(target) = target {
                    writeln!(yaml, "    {key}: \"{target}\"").unwrap();
                }
            }
        }
        writeln!(yaml, "admin: \"{admin}\"").unwrap();
        if let Some(port) = self.health {
            writeln!(yaml, "health: \"127.0.0.1:{port}\"").unwrap();
        }
        writeln!(yaml, "audit_log: {}", q(audit)).unwrap();
        // Two data-plane threads unless the test sets its own.
        if !self.settings.iter().any(|(key, _)| key == "workers") {
            writeln!(yaml, "workers: 2").unwrap();
        }
        if let Some(mode) = &self.tunnel {
            writeln!(yaml, "tunnel: {mode}").unwrap();
        }
        if !self.ports.is_empty() {
            writeln!(yaml, "ports:").unwrap();
            for entry in &self.ports {
                writeln!(yaml, "  - {entry}").unwrap();
            }
        }
        for (key, value) in &self.settings {
            writeln!(yaml, "{key}: {value}").unwrap();
        }
        writeln!(yaml, "limits:").unwrap();
        for (key, value) in &self.limits {
            writeln!(yaml, "  {key}: {value}").unwrap();
        }
        yaml
    }

    /// Spawns `appid proxy --config` and waits until `/ready` answers 200.
    pub async fn start(self) -> Sidecar {
        let admin = local(free_port());
        let audit = self.dir.join(format!("{}-audit.jsonl", self.name));
        let config_path = self.dir.join(format!("{}-proxy.yaml", self.name));
        let stderr_path = self.dir.join(format!("{}-stderr.log", self.name));
        std::fs::write(&config_path, self.config(admin, &audit)).expect("write config");
        let stderr = std::fs::File::create(&stderr_path).expect("create stderr log");
        let child = Command::new(APPID)
            .arg("proxy")
            .arg("--config")
            .arg(&config_path)
            // APPID_TEST_LOG=debug shows more when a test needs explaining.
            .env(
                "RUST_LOG",
                std::env::var("APPID_TEST_LOG").unwrap_or_else(|_| "info".to_owned()),
            )
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn appid proxy");
        let mut sidecar = Sidecar {
            name: self.name,
            child,
            exited: None,
            admin,
            audit,
            stderr: stderr_path,
            config: config_path,
        };
        sidecar.wait_ready().await;
        sidecar
    }
}

impl SidecarBuilder {
    /// Runs `appid proxy --config` expecting it to refuse to start: waits
    /// (up to `limit`) for it to exit on its own and returns its status and
    /// stderr; panics if it is still running then.
    pub fn run_to_exit(self, limit: Duration) -> (ExitStatus, String) {
        let admin = local(free_port());
        let audit = self.dir.join(format!("{}-audit.jsonl", self.name));
        let config_path = self.dir.join(format!("{}-proxy.yaml", self.name));
        let stderr_path = self.dir.join(format!("{}-stderr.log", self.name));
        std::fs::write(&config_path, self.config(admin, &audit)).expect("write config");
        let stderr = std::fs::File::create(&stderr_path).expect("create stderr log");
        let mut child = Command::new(APPID)
            .arg("proxy")
            .arg("--config")
            .arg(&config_path)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn appid proxy");
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return (
                    status,
                    std::fs::read_to_string(&stderr_path).unwrap_or_default(),
                );
            }
            if start.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "sidecar {} still running after {limit:?}; expected it to refuse to start\nstderr:\n{}",
                    self.name,
                    std::fs::read_to_string(&stderr_path).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A running `appid proxy`. Dropping it kills the process and reaps it.
pub struct Sidecar {
    pub name: String,
    child: Child,
    exited: Option<ExitStatus>,
    pub admin: SocketAddr,
    pub audit: PathBuf,
    pub stderr: PathBuf,
    pub config: PathBuf,
}

impl Sidecar {
    async fn wait_ready(&mut self) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!(
                    "sidecar {} exited before it was ready ({status})\nconfig:\n{}\nstderr:\n{}",
                    self.name,
                    std::fs::read_to_string(&self.config).unwrap_or_default(),
                    self.logs()
                );
            }
            if http_status(self.admin, "/ready").await == Some(200) {
                return;
            }
            if start.elapsed() > READY_LIMIT {
                panic!(
                    "sidecar {} not ready after {READY_LIMIT:?} (GET http://{}/ready)\nstderr:\n{}",
                    self.name,
                    self.admin,
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The value of one sample on `/metrics` (e.g.
    /// `appid_tunnel_streams_total{direction="inbound"}`); 0 when absent.
    pub async fn metric(&self, sample: &str) -> f64 {
        let body = super::net::http_get(self.admin, "/metrics")
            .await
            .unwrap_or_else(|| panic!("no /metrics from {}", self.name));
        body.lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
            .map_or(0.0, |v| v.trim().parse().expect("a number"))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process's stderr so far (tracing output), for failure messages.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Every audit line so far, parsed (panics on a line that is not JSON).
    /// Only whole lines: a read while the sidecar appends may end inside
    /// one (the file grows a page at a time).
    pub fn audit_lines(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.audit).unwrap_or_default();
        super::json_lines(&text, &format!("{}'s audit log", self.name))
    }

    /// Everything a failure message should show about this sidecar.
    pub fn context(&self) -> String {
        format!(
            "--- {} audit log:\n{}\n--- {} stderr:\n{}",
            self.name,
            std::fs::read_to_string(&self.audit).unwrap_or_default(),
            self.name,
            self.logs()
        )
    }

    /// Waits (up to 10 s) for an audit line matching `predicate`.
    pub async fn wait_audit(&self, what: &str, predicate: impl Fn(&Value) -> bool) -> Value {
        super::poll_until(
            &format!("an audit line of {} with {what}", self.name),
            Duration::from_secs(10),
            || self.context(),
            || {
                let found = self.audit_lines().into_iter().find(&predicate);
                async move { found }
            },
        )
        .await
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {} failed", self.pid());
    }

    /// Waits (up to `limit`) for the process to exit on its own.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.exited = Some(status);
                return status;
            }
            if start.elapsed() > limit {
                panic!(
                    "sidecar {} still running {limit:?} after it was told to stop\n{}",
                    self.name,
                    self.context()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Does this audit line have `key` equal to `value` (a string)?
pub fn has(line: &Value, key: &str, value: &str) -> bool {
    line.get(key).and_then(Value::as_str) == Some(value)
}
