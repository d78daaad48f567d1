//! The usual topology:
//!
//! ```text
//! client ──plain──▶ client sidecar ──mTLS appid/1──▶ server sidecar ──plain──▶ app
//!                   (outbound, web)                   (inbound, api)
//! ```
//!
//! Each sidecar has its own policy file, so a test can make one side
//! permissive and check that the other enforces.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::net::{free_port, local};
use super::pki::{Ca, Cert, replace_file};
use super::sidecar::{Sidecar, SidecarBuilder};

pub const TRUST_DOMAIN: &str = "test.example";
pub const WEB_PATH: &str = "ns/shop/sa/web";
pub const API_PATH: &str = "ns/shop/sa/api";

/// `web` (label `app=web`) may call `api` (label `app=api`), on any port.
pub const WEB_TO_API: &str = "\
version: 1
default: deny
rules:
  - name: web-to-api
    action: allow
    from: { labels.app: web }
    to: { labels.app: api }
";

/// A temp directory with a CA and the `api` workload's certificate.
pub struct Env {
    pub ca: Ca,
    pub api: Cert,
    /// Last: removed after everything that uses it.
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = Ca::init(&dir.path().join("ca"), TRUST_DOMAIN);
        let api = ca.issue(&dir.path().join("api"), API_PATH, &["app=api"], &[]);
        Env { ca, api, dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Issues a workload certificate into `<dir>/<name>.pem|key`.
    pub fn issue(&self, name: &str, path: &str, labels: &[&str], extra: &[&str]) -> Cert {
        self.ca.issue(&self.path(name), path, labels, extra)
    }

    /// Writes a policy file (atomically) and returns its path.
    pub fn policy(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        replace_file(&path, text.as_bytes());
        path
    }

    /// A sidecar with `cert`, enforcing the policy file `policy`.
    pub fn sidecar(&self, name: &str, cert: &Cert, policy: &Path) -> SidecarBuilder {
        SidecarBuilder::new(
            name,
            self.dir.path(),
            cert,
            &self.ca.bundle(),
            TRUST_DOMAIN,
            policy,
        )
    }
}

/// Options for [`Mesh::start`].
pub struct MeshOptions {
    /// Server sidecar policy; `{inbound}` is replaced by the inbound port.
    pub server_policy: String,
    /// Client sidecar policy; `{inbound}` as above.
    pub client_policy: String,
    /// Further `appid issue` flags for the `web` certificate.
    pub web_extra: Vec<String>,
    /// Further `appid issue` flags for the server's (`api`) certificate
    /// (none: the environment's own).
    pub api_extra: Vec<String>,
    pub server_limits: Vec<(&'static str, &'static str)>,
    pub client_limits: Vec<(&'static str, &'static str)>,
    /// `tunnel:` of each sidecar (`None`: the default, pooled).
    pub server_tunnel: Option<&'static str>,
    pub client_tunnel: Option<&'static str>,
    /// Declares the inbound port (what both sidecars' policies see) with
    /// this protocol and idle timeout on both sidecars (`ports:`).
    pub port: Option<(&'static str, Option<&'static str>)>,
    /// Top-level settings for both sidecars (YAML values as written).
    pub settings: Vec<(&'static str, String)>,
    /// Environment variables of both sidecars (e.g. `RUST_LOG`).
    pub env: Vec<(&'static str, &'static str)>,
}

impl Default for MeshOptions {
    fn default() -> Self {
        MeshOptions {
            server_policy: WEB_TO_API.into(),
            client_policy: WEB_TO_API.into(),
            web_extra: Vec::new(),
            api_extra: Vec::new(),
            server_limits: Vec::new(),
            client_limits: Vec::new(),
            server_tunnel: None,
            client_tunnel: None,
            port: None,
            settings: Vec::new(),
            env: Vec::new(),
        }
    }
}

/// A client sidecar and a server sidecar in front of one app.
pub struct Mesh {
    pub client: Sidecar,
    pub server: Sidecar,
    pub web: Cert,
    /// The server sidecar's explicit inbound port (what policy sees).
    pub inbound: u16,
    /// The client sidecar's explicit outbound port (where clients dial).
    pub outbound: u16,
    pub server_policy: PathBuf,
    pub client_policy: PathBuf,
    /// Last: the directory outlives the processes using it.
    pub env: Env,
}

impl Mesh {
    pub async fn start(app: SocketAddr, options: MeshOptions) -> Mesh {
        let env = Env::new();
        let extra: Vec<&str> = options.web_extra.iter().map(String::as_str).collect();
        let web = env.issue("web", WEB_PATH, &["app=web"], &extra);
        let api_extra: Vec<&str> = options.api_extra.iter().map(String::as_str).collect();
        let api = match api_extra.is_empty() {
            true => env.api.clone(),
            false => env.issue("api-extra", API_PATH, &["app=api"], &api_extra),
        };
        let inbound = free_port();
        let outbound = free_port();
        let render = |text: &str| text.replace("{inbound}", &inbound.to_string());
        let server_policy = env.policy("server-policy.yaml", &render(&options.server_policy));
        let client_policy = env.policy("client-policy.yaml", &render(&options.client_policy));

        let mut server = env
            .sidecar("server", &api, &server_policy)
            .inbound(inbound, app);
        for (key, value) in &options.server_limits {
            server = server.limit(key, value);
        }
        if let Some(mode) = options.server_tunnel {
            server = server.tunnel(mode);
        }
        if let Some((protocol, idle)) = options.port {
            server = server.port(inbound, protocol, idle);
        }
        for (key, value) in &options.settings {
            server = server.setting(key, value);
        }
        for (key, value) in &options.env {
            server = server.env(key, value);
        }
        let server = server.start().await;

        let mut client = env
            .sidecar("client", &web, &client_policy)
            .outbound(outbound, local(inbound));
        for (key, value) in &options.client_limits {
            client = client.limit(key, value);
        }
        if let Some(mode) = options.client_tunnel {
            client = client.tunnel(mode);
        }
        if let Some((protocol, idle)) = options.port {
            client = client.port(inbound, protocol, idle);
        }
        for (key, value) in &options.settings {
            client = client.setting(key, value);
        }
        for (key, value) in &options.env {
            client = client.env(key, value);
        }
        let client = client.start().await;

        Mesh {
            client,
            server,
            web,
            inbound,
            outbound,
            server_policy,
            client_policy,
            env,
        }
    }

    /// `http://127.0.0.1:<outbound><path>`: through both sidecars.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.outbound)
    }

    pub fn outbound_addr(&self) -> SocketAddr {
        local(self.outbound)
    }

    pub fn inbound_addr(&self) -> SocketAddr {
        local(self.inbound)
    }

    /// Both sidecars' audit logs and stderr, for failure messages.
    pub fn context(&self) -> String {
        format!("{}\n{}", self.client.context(), self.server.context())
    }
}
