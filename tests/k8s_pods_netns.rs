//! The Kubernetes acceptance of "Deployable identity", in network namespaces
//! standing in for a node and its pods (root, real iptables): two pods
//! injected from one Deployment get different identities from their own
//! projected tokens; a killed sidecar and a recreated pod recover an
//! identity with no new token and no operator action; kubelet's probe from
//! the node passes under a default-deny policy through the health port.
//!
//! ```text
//!  ns node: br0 10.80.0.1/24
//!           appid authority serve :15170 (--k8s-jwks/issuer/audience of the
//!           test "cluster", which signs each pod's projected token)
//!           kubelet: curl http://<pod>:15191/...
//!     │
//!     ├── veth ── ns pod-a 10.80.0.2    web-7d4b9c6f5-aaaaa
//!     ├── veth ── ns pod-b 10.80.0.3    web-7d4b9c6f5-bbbbb
//!     └── veth ── ns pod-b 10.80.0.4    web-7d4b9c6f5-ccccc (pod-b recreated)
//!
//!  each pod: app (python http.server :8080, /healthz)         as root
//!            appid-init: its args and env                       as root
//!            appid-proxy: its args, env (APPID_APP_PROBES)      as uid 1337
//!            /etc/appid/{proxy,policy}.yaml, ca.pem      the ConfigMap
//!            /var/run/appid/identity/token               the projected token
//!            /var/run/appid/run/                         the emptyDir
//! ```
//!
//! What the pods run is what `appid inject` makes of one Deployment (a web
//! container with an `httpGet` readiness probe on a named port): the init
//! container's and the sidecar's args and env, and kubelet's probes (the
//! sidecar's, and the app's as rewritten to the health port); their config
//! is the ConfigMap `appid inject config` prints. So a change to inject's
//! output that does not work in a pod fails here. The absolute volume
//! paths (`/etc/appid/…`, `/var/run/appid/…`) in that output are read
//! under each pod's own directory.
//!
//! Covered:
//! - both pods pass kubelet's probes from the node (the sidecar's
//!   startup, readiness and liveness, the app's readiness) and are
//!   `spiffe://k8s.example/ns/shop/sa/web`, each from its own token (its
//!   `k8s.pod` and `k8s.pod_uid` claims name it), with its own key and
//!   serial; the authority logs exactly two k8s redemptions;
//! - pod-a's app reaches pod-b's app through both sidecars, allowed by the
//!   policy's rule and audited on both sides with the SPIFFE ID;
//! - pod-b's sidecar, SIGKILLed and restarted over an expired token, comes
//!   back on the identity kept in the emptyDir: no new redemption, no
//!   refusal, and the mesh call works again;
//! - pod-b deleted (namespace, emptyDir) and recreated as a new pod with a
//!   new token: a new identity, the same SPIFFE ID, nothing registered;
//! - from the node, kubelet's probe `/app-health/web/readyz` on the health
//!   port answers the app's 200, while the same app's `/healthz` on 8080 is
//!   refused by the default-deny policy (audited as a denial): the health
//!   port is what lets the probe pass; `/metrics` answers there, `/config`
//!   does not.
//!
//! Everything is owned by guards (processes, namespaces, temp dirs), even
//! when a step fails; without root or the tools the tests skip with a
//! printed reason, and under `CI=true` a skip is a failure.

#[path = "k8s_cluster.rs"]
mod k8s_cluster;
#[path = "support/mod.rs"]
mod support;

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use k8s_cluster::{Cluster, K8S_AUDIENCE, authority_args};

use support::host::Host;
use support::netns::{Netns, Proc, Reply, path_str, should_run, temp_dir};
use support::pki::{APPID, Ca, appid};

const TRUST_DOMAIN: &str = "k8s.example";
const NAMESPACE: &str = "shop";
const SERVICE_ACCOUNT: &str = "web";
const SPIFFE_ID: &str = "spiffe://k8s.example/ns/shop/sa/web";
const NODE_IP: &str = "10.80.0.1";
const AUTHORITY_PORT: u16 = 15170;
const HEALTH_PORT: u16 = 15191;
const APP_PORT: u16 = 8080;
/// What each pod's app serves at `/hello`.
const HELLO: &str = "hello from a pod of shop/web\n";

/// The Deployment, as its owner writes it: one container with a readiness
/// probe on a named port.
const DEPLOYMENT: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      serviceAccountName: web
      containers:
        - name: web
          image: registry.example/web:1.4
          ports:
            - {name: http, containerPort: 8080}
          readinessProbe:
            httpGet: {path: /healthz, port: http}
"#;

/// Default deny; pods of shop/web may call each other's app port. Nothing
/// admits the node.
const POLICY: &str = r#"version: 1
default: deny
rules:
  - name: web-to-web
    action: allow
    from: { id: "spiffe://k8s.example/ns/shop/sa/web" }
    to: { id: "spiffe://k8s.example/ns/shop/sa/web", ports: [8080] }
"#;

// ---------------------------------------------------------------------------
// What `appid inject` makes of the Deployment

/// The injected pod template: what the pods run, and what kubelet asks.
struct Injected {
    /// `appid-init`'s args (`redirect install …`) and environment.
    init_args: Vec<String>,
    init_env: Vec<(String, String)>,
    /// `appid-proxy`'s args (`proxy --config /etc/appid/proxy.yaml`) and
    /// environment (`APPID_APP_PROBES`).
    proxy_args: Vec<String>,
    proxy_env: Vec<(String, String)>,
    /// kubelet's `httpGet` probes of the pod, (path, port): appid-proxy's
    /// startup, readiness and liveness probes, then the app's readiness.
    probes: Vec<(String, u16)>,
}

impl Injected {
    fn from_deployment(dir: &Path) -> Injected {
        let manifest = dir.join("deployment.yaml");
        fs::write(&manifest, DEPLOYMENT).expect("write manifest");
        let out = appid(&["inject", path_str(&manifest)]);
        let yaml = String::from_utf8(out.stdout).expect("UTF-8 YAML");
        let doc: Value = serde_saphyr::from_str(&yaml)
            .unwrap_or_else(|e| panic!("inject's output is not YAML: {e}\n{yaml}"));
        let spec = &doc["spec"]["template"]["spec"];
        let container = |list: &str, name: &str| -> Value {
            spec[list]
                .as_array()
                .and_then(|all| all.iter().find(|c| c["name"] == name))
                .cloned()
                .unwrap_or_else(|| panic!("no {list} {name} in\n{yaml}"))
        };
        let strings = |v: &Value| -> Vec<String> {
            let all = v.as_array().unwrap_or_else(|| panic!("a list: {v}"));
            all.iter()
                .map(|s| s.as_str().expect("a string").to_owned())
                .collect()
        };
        let env = |c: &Value| -> Vec<(String, String)> {
            let all = c["env"].as_array().into_iter().flatten();
            all.filter_map(|e| Some((e["name"].as_str()?.into(), e["value"].as_str()?.into())))
                .collect()
        };
        let http_get = |c: &Value, probe: &str| -> (String, u16) {
            let get = &c[probe]["httpGet"];
            let path = get["path"].as_str().map(str::to_owned);
            let port = get["port"].as_u64().and_then(|p| u16::try_from(p).ok());
            let (Some(path), Some(port)) = (path, port) else {
                panic!(
                    "{} {probe} is not httpGet on a port number:\n{yaml}",
                    c["name"]
                );
            };
            (path, port)
        };
        let init = container("initContainers", "appid-init");
        let proxy = container("initContainers", "appid-proxy");
        let app = container("containers", "web");
        let proxy_env = env(&proxy);
        assert!(
            proxy_env.iter().any(|(name, _)| name == "APPID_APP_PROBES"),
            "inject gave appid-proxy no APPID_APP_PROBES:\n{yaml}"
        );
        let mut probes: Vec<(String, u16)> = ["startupProbe", "readinessProbe", "livenessProbe"]
            .into_iter()
            .map(|probe| http_get(&proxy, probe))
            .collect();
        probes.push(http_get(&app, "readinessProbe"));
        Injected {
            init_args: strings(&init["args"]),
            init_env: env(&init),
            proxy_args: strings(&proxy["args"]),
            proxy_env,
            probes,
        }
    }

    /// The app container's readiness probe, as kubelet runs it.
    fn app_readiness(&self) -> &(String, u16) {
        self.probes.last().expect("the app's readiness probe")
    }
}

/// The ConfigMap's three files.
struct ConfigMap {
    proxy_yaml: String,
    policy_yaml: String,
    ca_pem: Vec<u8>,
}

impl ConfigMap {
    /// `appid inject config` for namespace shop, the node's authority, the
    /// policy and the CA's bundle: the ConfigMap's `data`.
    fn new(node: &Node) -> ConfigMap {
        let policy = node.dir.path().join("policy.yaml");
        fs::write(&policy, POLICY).expect("write policy");
        let url = node.authority_url();
        let bundle = node.ca_dir().join("ca.pem");
        let out = appid(&[
            "inject",
            "config",
            "--namespace",
            NAMESPACE,
            "--authority-url",
            &url,
            "--bundle",
            path_str(&bundle),
            "--policy",
            path_str(&policy),
        ]);
        let yaml = String::from_utf8(out.stdout).expect("UTF-8 YAML");
        let doc: Value = serde_saphyr::from_str(&yaml)
            .unwrap_or_else(|e| panic!("inject config's output is not YAML: {e}\n{yaml}"));
        assert_eq!(doc["kind"], "ConfigMap", "{yaml}");
        assert_eq!(doc["metadata"]["name"], "appid-sidecar", "{yaml}");
        assert_eq!(doc["metadata"]["namespace"], NAMESPACE, "{yaml}");
        let file = |key: &str| -> String {
            let value = doc["data"][key].as_str();
            value
                .unwrap_or_else(|| panic!("no data.{key} in\n{yaml}"))
                .to_owned()
        };
        ConfigMap {
            proxy_yaml: file("proxy.yaml"),
            policy_yaml: file("policy.yaml"),
            ca_pem: file("ca.pem").into_bytes(),
        }
    }
}

// ---------------------------------------------------------------------------
// The node: a bridge, the authority, kubelet's curl

struct Node {
    authority: Option<Proc>,
    ns: Netns,
    /// The authority's CA dir (`ca/`), its JWKS, logs.
    dir: tempfile::TempDir,
    cluster: Cluster,
    veths: std::cell::Cell<usize>,
}

impl Node {
    /// The node namespace with its bridge, and the authority serving the
    /// cluster's tokens, with shop/web registered.
    fn start() -> Node {
        let ns = Netns::new("node");
        ns.make_bridge(NODE_IP);
        let mut node = Node {
            authority: None,
            ns,
            dir: temp_dir(),
            cluster: Cluster::new(),
            veths: std::cell::Cell::new(0),
        };
        let ca = Ca::init(&node.ca_dir(), TRUST_DOMAIN).dir;
        let ca = path_str(&ca);
        appid(&[
            "authority",
            "register",
            "--dir",
            ca,
            "--k8s-namespace",
            NAMESPACE,
            "--k8s-service-account",
            SERVICE_ACCOUNT,
            "--label",
            "app=web",
        ]);
        let jwks = node.dir.path().join("jwks.json");
        fs::write(&jwks, &node.cluster.jwks).expect("write JWKS");
        let listen = format!("{NODE_IP}:{AUTHORITY_PORT}");
        let mut args = vec!["authority", "serve", "--dir", ca, "--listen", &listen];
        let k8s = authority_args(&jwks);
        args.extend(k8s.iter().map(String::as_str));
        let log = node.dir.path().join("authority.log");
        node.authority = Some(node.ns.spawn("authority", APPID, &args, &log));
        node.ns.wait_listening(AUTHORITY_PORT);
        node
    }

    fn ca_dir(&self) -> PathBuf {
        self.dir.path().join("ca")
    }

    fn authority_url(&self) -> String {
        format!("https://{NODE_IP}:{AUTHORITY_PORT}")
    }

    /// Plugs `pod` into the bridge as `ip`/24 (its `eth0`).
    fn attach(&self, pod: &Netns, ip: &str) {
        let n = self.veths.get();
        self.veths.set(n + 1);
        self.ns.attach(pod, ip, NODE_IP, n);
    }

    /// kubelet (or Prometheus) on the node: `GET url`.
    fn curl(&self, url: &str) -> Reply {
        self.ns.curl(url, 5)
    }

    /// The authority's k8s events so far (`issue`, `renew`, `refuse`).
    fn k8s_events(&self, event: &str) -> Vec<Value> {
        fs::read_to_string(self.ca_dir().join("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).expect("an authority audit line"))
            .filter(|l| l["event"] == event && l["attestation"] == "k8s_psat")
            .collect()
    }

    fn context(&self) -> String {
        let audit = fs::read_to_string(self.ca_dir().join("audit.jsonl")).unwrap_or_default();
        let log = self.authority.as_ref().map(Proc::log).unwrap_or_default();
        format!("=== node ===\n{log}\n--- authority audit ---\n{audit}")
    }
}

// ---------------------------------------------------------------------------
// Pods

/// One pod of the Deployment: its namespace (plugged into the node's
/// bridge), its files (the mounted volumes), its app and its sidecar.
struct Pod {
    name: String,
    ip: String,
    host: Host,
}

impl Pod {
    /// Creates pod `name` at `ip` as the kubelet would: volumes (ConfigMap,
    /// a freshly signed projected token, an empty emptyDir), the app, the
    /// init container's redirect, then the sidecar, ready.
    fn create(
        node: &Node,
        config: &ConfigMap,
        injected: &Injected,
        role: &str,
        name: &str,
        ip: &str,
    ) -> Pod {
        let mut host = Host::new(role);
        node.attach(&host.ns, ip);
        // The sidecar's audit goes to its stderr (`audit_log: "-"`).
        host.audit_file = host.path("sidecar.log");
        let pod = Pod {
            name: name.into(),
            ip: ip.into(),
            host,
        };
        let proxy_yaml = pod.rooted(&config.proxy_yaml);
        assert_ne!(proxy_yaml, config.proxy_yaml, "no pod path in proxy.yaml");
        pod.host.put("etc/appid/proxy.yaml", proxy_yaml.as_bytes());
        pod.host
            .put("etc/appid/policy.yaml", config.policy_yaml.as_bytes());
        pod.host.put("etc/appid/ca.pem", &config.ca_pem);
        pod.host.make_dir("var/run/appid/run");
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        pod.put_token(node, now - 5);
        let mut pod = pod;
        pod.start_app();
        let init: Vec<&str> = injected.init_args.iter().map(String::as_str).collect();
        let env = pod.rooted_env(&injected.init_env);
        pod.host.install_redirect_with(&init, &pairs(&env));
        pod.start_sidecar(injected);
        pod
    }

    /// `text` with the volumes' absolute paths moved into this pod's dir.
    fn rooted(&self, text: &str) -> String {
        let root = self.host.dir.path().display();
        text.replace("/etc/appid/", &format!("{root}/etc/appid/"))
            .replace("/var/run/appid/", &format!("{root}/var/run/appid/"))
    }

    /// The pod's UID, as the API server gives each pod its own.
    fn uid(&self) -> String {
        let suffix = &self.name[self.name.len() - 5..];
        format!("4f1c0c1e-0000-4000-8000-0000000{suffix}")
    }

    /// The kubelet writes the pod's projected token, issued at `iat`.
    fn put_token(&self, node: &Node, iat: i64) {
        let token = node.cluster.token_issued_at(
            NAMESPACE,
            SERVICE_ACCOUNT,
            &self.name,
            &self.uid(),
            K8S_AUDIENCE,
            iat,
        );
        self.host
            .put("var/run/appid/identity/token", token.as_bytes());
    }

    /// The app container: `/healthz` and `/hello` on 8080.
    fn start_app(&mut self) {
        let www = self.host.path("www");
        fs::create_dir(&www).expect("mkdir www");
        fs::write(www.join("healthz"), "ok\n").expect("write healthz");
        fs::write(www.join("hello"), HELLO).expect("write hello");
        let port = APP_PORT.to_string();
        let args = ["-m", "http.server", &port, "--directory", path_str(&www)];
        self.host.start_app("app", &args, APP_PORT);
    }

    /// The `appid-proxy` container, as uid 1337, with its args and env.
    fn start_sidecar(&mut self, injected: &Injected) {
        assert_eq!(injected.proxy_args[..2], ["proxy", "--config"]);
        let config = PathBuf::from(self.rooted(&injected.proxy_args[2]));
        let env = self.rooted_env(&injected.proxy_env);
        self.host.start_sidecar_with(&config, &pairs(&env));
    }

    /// An environment with the volumes' paths moved into this pod's dir.
    fn rooted_env(&self, env: &[(String, String)]) -> Vec<(String, String)> {
        let rooted = |(k, v): &(String, String)| (k.clone(), self.rooted(v));
        env.iter().map(rooted).collect()
    }

    /// The identity kept in the emptyDir: (certificate serial, private
    /// key PEM).
    fn kept_identity(&self) -> (String, String) {
        let path = self.host.path("var/run/appid/run/state/identity.pem");
        let pem = fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}\n{}", path.display(), self.host.context()));
        let key = pem
            .find("-----BEGIN PRIVATE KEY-----")
            .map(|start| pem[start..].to_owned())
            .unwrap_or_else(|| panic!("no key in {}", path.display()));
        (serial(&path), key)
    }

    /// How many `GET path` the app has answered (its access log).
    fn app_requests(&self, path: &str) -> usize {
        let log = fs::read_to_string(self.host.path("app.log")).unwrap_or_default();
        log.matches(&format!("\"GET {path} HTTP/1.1\"")).count()
    }

    fn url(&self, port: u16, path: &str) -> String {
        format!("http://{}:{port}{path}", self.ip)
    }
}

/// `(&str, &str)` views of owned pairs.
fn pairs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// The serial of the (first) certificate in `pem` (`appid cert inspect`).
fn serial(pem: &Path) -> String {
    let out = appid(&["cert", "inspect", path_str(pem)]);
    let printed = String::from_utf8_lossy(&out.stdout);
    printed
        .lines()
        .find_map(|l| l.strip_prefix("Serial:").map(|s| s.trim().to_owned()))
        .unwrap_or_else(|| panic!("no serial in {printed}"))
}

// ---------------------------------------------------------------------------
// The Deployment

/// The node, the namespace's ConfigMap and the injected Deployment: what
/// the pods are made from.
struct Deployment {
    config: ConfigMap,
    injected: Injected,
    node: Node,
}

impl Deployment {
    fn start() -> Deployment {
        let node = Node::start();
        Deployment {
            config: ConfigMap::new(&node),
            injected: Injected::from_deployment(node.dir.path()),
            node,
        }
    }

    /// A new pod of the Deployment, ready.
    fn pod(&self, role: &str, name: &str, ip: &str) -> Pod {
        Pod::create(&self.node, &self.config, &self.injected, role, name, ip)
    }

    fn context(&self, pods: &[&Pod]) -> String {
        let mut out = self.node.context();
        for pod in pods {
            out.push('\n');
            out.push_str(&pod.host.context());
        }
        out
    }
}

/// Asserts an audit line has the `expected` fields.
fn expect_line(line: &Value, expected: Value) {
    for (key, want) in expected.as_object().expect("an object of fields") {
        assert_eq!(&line[key], want, "audit line field {key}: {line}");
    }
}

/// kubelet sees the pod started, ready and live: every `httpGet` probe of
/// the injected template, from the node, answers 200.
fn assert_ready(deployment: &Deployment, pod: &Pod) {
    for (path, port) in &deployment.injected.probes {
        let probe = deployment.node.curl(&pod.url(*port, path));
        let context = || deployment.context(&[pod]);
        assert_eq!(probe.status, Some(200), "{path}: {probe:?}\n{}", context());
    }
}

/// The pod's identity is shop/web's, from its own token.
fn assert_identity(deployment: &Deployment, pod: &Pod) {
    let identity = pod.host.identity();
    let context = || deployment.context(&[pod]);
    assert_eq!(identity["id"], SPIFFE_ID, "{identity}\n{}", context());
    let claims = &identity["claims"];
    assert_eq!(claims["attestation"], "k8s_psat", "{identity}");
    assert_eq!(claims["labels"]["app"], "web", "{identity}");
    let k8s = &claims["k8s"];
    let expected = json!({"namespace": NAMESPACE, "service_account": SERVICE_ACCOUNT,
                          "pod": pod.name, "pod_uid": pod.uid(), "node": "node-1"});
    assert_eq!(k8s, &expected, "{identity}");
}

/// `from`'s app calls `to`'s app: allowed by `web-to-web` on both sides,
/// each side naming the other's SPIFFE ID.
fn assert_mesh_call(deployment: &Deployment, from: &Pod, to: &Pod) {
    let reply = from.host.ns.curl(&to.url(APP_PORT, "/hello"), 10);
    let context = || deployment.context(&[from, to]);
    assert!(reply.is_ok_with(HELLO), "{reply:?}\n{}", context());
    for (pod, direction) in [(from, "outbound"), (to, "inbound")] {
        let audit = pod.host.audit();
        // Inbound, the request's line; outbound, under this L4 policy, the
        // connection's (the client sidecar decides HTTP once there).
        let line = audit.iter().rev().find(|l| match direction {
            "inbound" => l["path"] == "/hello",
            _ => l["direction"] == "outbound" && l["protocol"] == "http1",
        });
        let line = line.unwrap_or_else(|| panic!("no {direction} line\n{}", context()));
        expect_line(
            line,
            json!({"direction": direction, "decision": "allow", "rule": "web-to-web",
                   "peer_id": SPIFFE_ID, "port": APP_PORT}),
        );
    }
}

// ---------------------------------------------------------------------------
// Tests

#[test]
fn pods_of_one_deployment_get_their_own_identities_and_keep_them_across_restarts() {
    if !should_run() {
        return;
    }
    let deployment = Deployment::start();
    let node = &deployment.node;

    // (a) Two pods, one manifest: one SPIFFE ID, two keys, two redemptions.
    let a = deployment.pod("pod-a", "web-7d4b9c6f5-aaaaa", "10.80.0.2");
    let mut b = deployment.pod("pod-b", "web-7d4b9c6f5-bbbbb", "10.80.0.3");
    for pod in [&a, &b] {
        assert_ready(&deployment, pod);
        assert_identity(&deployment, pod);
    }
    let (a_serial, a_key) = a.kept_identity();
    let (b_serial, b_key) = b.kept_identity();
    assert_ne!(a_serial, b_serial, "each pod its own certificate");
    assert_ne!(a_key, b_key, "each pod its own key");
    let issued = node.k8s_events("issue");
    assert_eq!(issued.len(), 2, "{}", deployment.context(&[&a, &b]));
    assert!(issued.iter().all(|l| l["id"] == SPIFFE_ID), "{issued:?}");

    // (b) pod-a's app reaches pod-b's through the mesh.
    assert_mesh_call(&deployment, &a, &b);

    // (c) pod-b's sidecar dies (SIGKILL) and restarts; the kubelet's token
    // meanwhile expired. It comes back on the identity in its emptyDir.
    b.host.sidecar = None;
    let down = node.curl(&b.url(HEALTH_PORT, "/ready"));
    assert_ne!(down.status, Some(200), "the sidecar is down: {down:?}");
    let an_hour_ago = time::OffsetDateTime::now_utc().unix_timestamp() - 3600;
    b.put_token(node, an_hour_ago);
    b.start_sidecar(&deployment.injected);
    assert_ready(&deployment, &b);
    assert_identity(&deployment, &b);
    assert!(
        fs::read_to_string(b.host.path("sidecar.log"))
            .is_ok_and(|log| log.contains("starting with the kept identity")),
        "{}",
        deployment.context(&[&b])
    );
    let context = || deployment.context(&[&a, &b]);
    assert_eq!(
        node.k8s_events("issue").len(),
        2,
        "no new redemption\n{}",
        context()
    );
    assert!(node.k8s_events("refuse").is_empty(), "{}", context());
    assert_mesh_call(&deployment, &a, &b);

    // (d) pod-b is deleted (its namespace, its emptyDir) and the
    // Deployment makes a new pod: a new token from the kubelet, nothing
    // from the operator.
    drop(b);
    let b = deployment.pod("pod-b", "web-7d4b9c6f5-ccccc", "10.80.0.4");
    assert_ready(&deployment, &b);
    assert_identity(&deployment, &b);
    let (new_serial, new_key) = b.kept_identity();
    assert!(
        new_serial != a_serial && new_serial != b_serial,
        "{new_serial}"
    );
    assert!(new_key != a_key && new_key != b_key, "a new key");
    let issued = node.k8s_events("issue");
    assert_eq!(issued.len(), 3, "{}", deployment.context(&[&a, &b]));
    assert_mesh_call(&deployment, &a, &b);
}

#[test]
fn kubelet_probes_from_the_node_pass_a_default_deny_policy_only_through_the_health_port() {
    if !should_run() {
        return;
    }
    let deployment = Deployment::start();
    let node = &deployment.node;
    let pod = deployment.pod("pod-b", "web-7d4b9c6f5-bbbbb", "10.80.0.3");
    let context = || deployment.context(&[&pod]);

    // kubelet's readiness probe, as `appid inject` rewrote it: the sidecar
    // runs the app's own probe and answers with its status.
    let (path, port) = deployment.injected.app_readiness();
    assert_eq!(
        (path.as_str(), *port),
        ("/app-health/web/readyz", HEALTH_PORT)
    );
    let url = pod.url(*port, path);
    let probe = node.ns.curl(&url, 5);
    assert!(probe.is_ok_with("ok\n"), "{url}: {probe:?}\n{}", context());

    // The control: the same app endpoint asked directly from the node is
    // refused (nothing admits the node), audited as a denial, and never
    // reaches the app, which has seen the probe's request only.
    let direct = node.curl(&pod.url(APP_PORT, "/healthz"));
    assert!(
        direct.is_refused_by("default"),
        "the node reached the app past a default-deny policy: {direct:?}\n{}",
        context()
    );
    let audit = pod.host.audit();
    let denied = audit.iter().find(|l| l["decision"] == "deny");
    let denied = denied.unwrap_or_else(|| panic!("no denial audited\n{}", context()));
    expect_line(
        denied,
        json!({"direction": "inbound", "decision": "deny", "rule": "default",
               "peer_id": null, "port": APP_PORT, "path": "/healthz"}),
    );
    let from = denied["peer_addr"].as_str().unwrap_or_default();
    assert!(from.starts_with(&format!("{NODE_IP}:")), "{denied}");
    assert_eq!(pod.app_requests("/healthz"), 1, "{}", context());

    // Prometheus scrapes the pod IP; the operator's endpoints stay on
    // loopback.
    let metrics = node.curl(&pod.url(HEALTH_PORT, "/metrics"));
    assert_eq!(metrics.status, Some(200), "{metrics:?}");
    assert!(metrics.body.contains("appid_"), "{}", metrics.body);
    for path in ["/config", "/appid"] {
        let reply = node.curl(&pod.url(HEALTH_PORT, path));
        assert_eq!(reply.status, Some(404), "{path}: {reply:?}");
        assert!(!reply.body.contains("spiffe://"), "{reply:?}");
    }
}
