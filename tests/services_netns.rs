//! Per-process identity on a VM (`services:`), in network namespaces (root,
//! real iptables, the real `appid` binary): one sidecar serves two services
//! of one host, each with its own certificate from the authority, chosen
//! outbound by the kernel (the calling socket's owner uid, or its cgroup)
//! and inbound by the app port.
//!
//! ```text
//!  ns lan: br0 10.81.0.1/24, appid authority serve :15170 (--cert-ttl 8s)
//!     ├── veth ── ns vm   10.81.0.2   one sidecar (uid 1337 + CAP_SYS_PTRACE), redirect
//!     │                               --services-from its config:
//!     │             alpha: a copy of python3 ("v1") as uid 40101, :8081  owner uid 40101 → :15111
//!     │             beta:  another copy of python3 as uid 40102, :8082   owner cgroup      → :15112
//!     │             anything else (root's curl)                          → :15101, the VM's own identity
//!     └── veth ── ns peer 10.81.0.3   api: sidecar + python http.server :8080, redirect
//! ```
//!
//! Covered (issue "runtime fingerprint", items 3 and 4):
//! - the VM's sidecar holds three identities (`/appid` lists the services);
//! - alpha and beta, each calling the api through its own capture rule,
//!   reach the api's sidecar as two different SPIFFE IDs, and the claims
//!   the api's audit log records for each carry `reported.process.sha256`
//!   equal to `sha256sum` of that service's binary;
//! - the api's policy allows only alpha's binary: alpha's call passes,
//!   beta's is denied (rule `default`), and a call from another process of
//!   the VM goes out as the VM's own identity (also denied);
//! - inbound, the api calling the VM on 8081 and 8082 meets alpha's and
//!   beta's certificates (the api's audit names them per port);
//! - alpha's binary replaced and the service restarted: at the next
//!   renewal its claim changes and the api denies it.
//!
//! Without root or the tools the test skips with a printed reason, and
//! under `CI=true` a skip is a failure.

#[path = "support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use support::host::{Host, context};
use support::netns::{Netns, Proc, Reply, WAIT, path_str, should_run, temp_dir, text, wait_for};
use support::pki::{APPID, Ca, appid};

const TRUST_DOMAIN: &str = "vm.example";
const LAN_IP: &str = "10.81.0.1";
const VM_IP: &str = "10.81.0.2";
const PEER_IP: &str = "10.81.0.3";
const AUTHORITY_PORT: u16 = 15170;
const API_PORT: u16 = 8080;
/// Renewal at about half of it: a few seconds per renewal.
const CERT_TTL: &str = "8s";

const HOST_ID: &str = "spiffe://vm.example/vm1";
const ALPHA_ID: &str = "spiffe://vm.example/vm1/alpha";
const BETA_ID: &str = "spiffe://vm.example/vm1/beta";
const API_ID: &str = "spiffe://vm.example/api";

/// A service of the VM: on GET /call?<ip:port> it calls `http://<ip:port>/hello`
/// itself (so the connection is its own: its uid, its cgroup) and answers
/// with what came back; any other GET answers `hello from <name>`. It
/// writes its pid file first.
const SERVICE: &str = r#"
import http.server, os, sys, urllib.request, urllib.error
name, port, pid_file = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with open(pid_file + ".tmp", "w") as f:
    f.write(str(os.getpid()))
os.rename(pid_file + ".tmp", pid_file)

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path.startswith("/call?"):
            target = self.path[len("/call?"):]
            try:
                with urllib.request.urlopen("http://" + target + "/hello", timeout=5) as r:
                    body = "status=%d body=%s" % (r.status, r.read().decode())
            except urllib.error.HTTPError as e:
                body = "status=%d denied_by=%s" % (e.code, e.headers.get("x-appid-denied-by"))
            except Exception as e:
                body = "error=%s" % e
        else:
            body = "hello from %s\n" % name
        data = body.encode()
        self.send_response(200)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass

http.server.ThreadingHTTPServer(("0.0.0.0", port), Handler).serve_forever()
"#;

/// The api's app: `hello from api` at any path.
const API_APP: &str = r#"
import http.server
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        data = b"hello from api\n"
        self.send_response(200)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", 8080), Handler).serve_forever()
"#;

/// The VM lets its services call the api and the api call them; what the
/// api accepts is the api's to decide.
const VM_POLICY: &str = r#"version: 1
default: deny
rules:
  - name: vm-to-api
    action: allow
    from: { labels.vm: vm1 }
    to: { labels.app: api, ports: [8080] }
  - name: api-to-services
    action: allow
    from: { labels.app: api }
    to: { labels.vm: vm1, ports: [8081, 8082] }
"#;

/// The api accepts alpha only, and only while it runs the binary whose
/// SHA-256 replaces `ALPHA_SHA256`.
const API_POLICY: &str = r#"version: 1
default: deny
rules:
  - name: alpha-binary-to-api
    action: allow
    from:
      id: "spiffe://vm.example/vm1/alpha"
      reported.process.sha256: "ALPHA_SHA256"
    to: { labels.app: api, ports: [8080] }
  - name: api-to-services
    action: allow
    from: { labels.app: api }
    to: { labels.vm: vm1, ports: [8081, 8082] }
"#;

/// `sha256sum FILE`, the real tool.
fn sha256sum(file: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(file)
        .output()
        .expect("run sha256sum");
    assert!(out.status.success(), "sha256sum: {}", text(&out.stderr));
    text(&out.stdout)
        .split_whitespace()
        .next()
        .expect("a digest")
        .to_owned()
}

/// Debian's interpreter (a copy of pyenv's would lose its shared library).
fn system_python() -> PathBuf {
    fs::canonicalize("/usr/bin/python3").expect("/usr/bin/python3 (Debian's python3)")
}

/// Where cgroup v2 is mounted (`/sys/fs/cgroup` or, on hybrid hosts,
/// `/sys/fs/cgroup/unified`).
fn cgroup2_root() -> PathBuf {
    let mounts = fs::read_to_string("/proc/self/mounts").expect("/proc/self/mounts");
    mounts
        .lines()
        .find_map(|l| {
            let mut fields = l.split_whitespace();
            let (_, at, kind) = (fields.next()?, fields.next()?, fields.next()?);
            (kind == "cgroup2").then(|| PathBuf::from(at))
        })
        .expect("a cgroup v2 mount (for `owner: { cgroup }`)")
}

/// A cgroup v2 directory, removed on drop (after its processes are gone).
struct Cgroup {
    dir: PathBuf,
    /// The path iptables and the config name: relative to the cgroup root.
    path: String,
}

impl Cgroup {
    fn new(name: &str) -> Cgroup {
        let root = cgroup2_root();
        let dir = root.join(name);
        fs::create_dir_all(&dir).expect("create cgroup");
        Cgroup {
            path: format!("/{name}"),
            dir,
        }
    }

    fn add(&self, pid: &str) {
        fs::write(self.dir.join("cgroup.procs"), pid).expect("move into cgroup");
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // The service is killed before this (field order of `Vm`); wait
        // for the kernel to notice.
        for _ in 0..50 {
            if fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The lan: a bridge, the authority, and each host's veth.
struct Lan {
    authority: Option<Proc>,
    ca: Ca,
    _dir: tempfile::TempDir,
    ns: Netns,
}

impl Lan {
    fn start() -> Lan {
        let ns = Netns::new("lan");
        ns.make_bridge(LAN_IP);
        let dir = temp_dir();
        let ca = Ca::init(&dir.path().join("ca"), TRUST_DOMAIN);
        let listen = format!("{LAN_IP}:{AUTHORITY_PORT}");
        let args = [
            "authority",
            "serve",
            "--dir",
            path_str(&ca.dir),
            "--listen",
            &listen,
            "--cert-ttl",
            CERT_TTL,
        ];
        let log = dir.path().join("authority.log");
        let authority = ns.spawn("authority", APPID, &args, &log);
        ns.wait_listening(AUTHORITY_PORT);
        Lan {
            authority: Some(authority),
            ca,
            _dir: dir,
            ns,
        }
    }

    /// Registers `id` with labels and returns its one-time join token.
    fn register(&self, id: &str, labels: &[&str]) -> String {
        let mut args = vec!["authority", "register", "--dir", path_str(&self.ca.dir)];
        args.extend(["--id", id]);
        for label in labels {
            args.extend(["--label", label]);
        }
        text(&appid(&args).stdout).trim().to_owned()
    }

    /// Plugs `host` into the bridge as `ip`.
    fn attach(&self, host: &Netns, ip: &str, n: usize) {
        self.ns.attach(host, ip, LAN_IP, n);
    }

    fn context(&self) -> String {
        self.authority.iter().map(Proc::log).collect()
    }
}

/// One service of the VM: its binary (a copy of python3 with a version
/// appended, so each has its own SHA-256), its uid, its port.
struct Service {
    name: &'static str,
    uid: u32,
    port: u16,
    outbound: u16,
    binary: PathBuf,
    pid_file: PathBuf,
}

impl Service {
    fn new(vm: &Host, name: &'static str, uid: u32, port: u16, outbound: u16) -> Service {
        let dir = vm.path(name);
        fs::create_dir_all(&dir).expect("service dir");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod");
        // The service writes its own pid file.
        let run = dir.join("run");
        fs::create_dir_all(&run).expect("run dir");
        std::os::unix::fs::chown(&run, Some(uid), Some(uid)).expect("chown");
        let service = Service {
            name,
            uid,
            port,
            outbound,
            binary: dir.join("python3"),
            pid_file: run.join(format!("{name}.pid")),
        };
        service.install_binary("v1");
        service
    }

    /// (Re)installs the binary: python3 with `version` appended (the ELF
    /// loader ignores trailing bytes; the hash does not).
    fn install_binary(&self, version: &str) {
        let mut bytes = fs::read(system_python()).expect("read python3");
        bytes.extend_from_slice(format!("appid-test {} {version}", self.name).as_bytes());
        let temp = self.binary.with_extension("new");
        fs::write(&temp, bytes).expect("write binary");
        fs::set_permissions(&temp, fs::Permissions::from_mode(0o755)).expect("chmod");
        fs::rename(&temp, &self.binary).expect("replace binary");
    }

    /// Starts it as its uid, and returns it with its pid (from its file).
    fn start(&self, vm: &Host) -> (Proc, String) {
        let _ = fs::remove_file(&self.pid_file);
        let script = vm.path("service.py");
        let port = self.port.to_string();
        let proc = vm.ns.spawn_as(
            self.uid,
            self.name,
            path_str(&self.binary),
            &[
                path_str(&script),
                self.name,
                &port,
                path_str(&self.pid_file),
            ],
            &[],
            &vm.path(format!("{}.log", self.name)),
        );
        let pid = wait_for(
            &format!("{} to write its pid file", self.name),
            WAIT,
            || proc.log(),
            || {
                fs::read_to_string(&self.pid_file)
                    .ok()
                    .filter(|p| !p.is_empty())
            },
        );
        vm.ns.wait_listening(self.port);
        (proc, pid)
    }

    /// Makes the service call the api (its own connection) and returns
    /// what it got: `status=200 body=…` or `status=403 denied_by=<rule>`.
    fn call_api(&self, vm: &Host) -> String {
        let reply = vm.ns.curl(
            &format!("http://127.0.0.1:{}/call?{PEER_IP}:{API_PORT}", self.port),
            15,
        );
        assert_eq!(reply.status, Some(200), "{reply:?}");
        reply.body
    }
}

/// The api's audit lines about `peer_id`, with the claims documents its
/// audit file carried (`appids`), newest last.
fn audited(api: &Host, peer_id: &str) -> Vec<(Value, Value)> {
    let lines = api.audit();
    let mut documents: BTreeMap<String, Value> = BTreeMap::new();
    for line in &lines {
        if let Some(Value::Object(map)) = line.get("appids") {
            for (digest, doc) in map {
                documents.insert(digest.clone(), doc.clone());
            }
        }
    }
    lines
        .into_iter()
        .filter(|l| l["peer_id"] == peer_id)
        .map(|l| {
            let doc = l["peer_appid"]
                .as_str()
                .and_then(|d| documents.get(d))
                .cloned()
                .unwrap_or(Value::Null);
            (l, doc)
        })
        .collect()
}

/// The api's last audit line about `peer_id` says `decision` by `rule`, and
/// the claims it decided on report the binary `sha256` run by `uid`.
fn assert_last_seen(api: &Host, peer_id: &str, decision: &str, rule: &str, sha256: &str, uid: u32) {
    let (line, doc) = audited(api, peer_id)
        .pop()
        .unwrap_or_else(|| panic!("no audit line about {peer_id}"));
    assert_eq!(line["decision"], decision, "{line}");
    assert_eq!(line["rule"], rule, "{line}");
    let process = &doc["reported"]["process"];
    assert_eq!(process["sha256"], sha256, "{doc:#}");
    assert_eq!(process["uid"], uid, "{doc:#}");
}

/// Every log, for failure messages.
fn everything(lan: &Lan, vm: &Host, api: &Host) -> String {
    format!("{}\n{}", lan.context(), context(&[vm, api]))
}

fn vm_config(
    vm: &Host,
    lan: &Lan,
    alpha: &Service,
    beta: &Service,
    beta_cgroup: &str,
    tunnel: &str,
) -> String {
    let q = |p: &Path| serde_json::to_string(path_str(p)).expect("JSON string");
    let service = |s: &Service, owner: String| {
        format!(
            "  - name: {name}
    join_token_file: {name}.token
    workload: {{ pid_file: {pid} }}
    inbound_ports: [{port}]
    outbound: {{ listen: \"127.0.0.1:{out}\", owner: {owner} }}
",
            name = s.name,
            pid = q(&s.pid_file),
            port = s.port,
            out = s.outbound,
        )
    };
    format!(
        "identity:
  authority:
    url: \"https://{LAN_IP}:{AUTHORITY_PORT}\"
    bundle: {bundle}
    join_token_file: host.token
    state_dir: state
    workload: {{ self: true }}
trust_domains: [{TRUST_DOMAIN}]
policy: policy.yaml
inbound: [{{ listen: \"0.0.0.0:15106\" }}]
outbound: [{{ listen: \"127.0.0.1:15101\" }}]
services:
{alpha}{beta}admin: \"127.0.0.1:15190\"
audit_log: {audit}
tunnel: {tunnel}
",
        alpha = service(alpha, format!("{{ uid: {} }}", alpha.uid)),
        beta = service(beta, format!("{{ cgroup: {beta_cgroup} }}")),
        audit = q(&vm.audit_file),
        bundle = q(&lan.ca.bundle()),
    )
}

fn api_config(lan: &Lan, tunnel: &str) -> String {
    format!(
        "identity:
  authority:
    url: \"https://{LAN_IP}:{AUTHORITY_PORT}\"
    bundle: {bundle}
    join_token_file: api.token
trust_domains: [{TRUST_DOMAIN}]
policy: policy.yaml
inbound: [{{ listen: \"0.0.0.0:15106\" }}]
outbound: [{{ listen: \"127.0.0.1:15101\" }}]
admin: \"127.0.0.1:15190\"
audit_log: audit.jsonl
tunnel: {tunnel}
",
        bundle = path_str(&lan.ca.bundle()),
    )
}

/// Both tunnel modes: each service's identity is chosen in one place
/// (`Locals`), whichever way its connections travel.
#[test]
fn two_services_on_one_vm_call_and_answer_as_themselves() {
    if !should_run() {
        return;
    }
    for tunnel in ["pooled", "strict"] {
        eprintln!("--- tunnel: {tunnel} ---");
        scenario(tunnel);
    }
}

fn scenario(tunnel: &str) {
    let lan = Lan::start();
    let host_token = lan.register(HOST_ID, &["vm=vm1"]);
    let alpha_token = lan.register(ALPHA_ID, &["vm=vm1", "svc=alpha"]);
    let beta_token = lan.register(BETA_ID, &["vm=vm1", "svc=beta"]);
    let api_token = lan.register(API_ID, &["app=api"]);

    // The api: its app, its sidecar (policy: alpha's binary only).
    let mut api = Host::new("api");
    lan.attach(&api.ns, PEER_IP, 0);
    api.put("api.py", API_APP.as_bytes());
    api.put("api.token", api_token.as_bytes());
    api.put("proxy.yaml", api_config(&lan, tunnel).as_bytes());

    // The VM: two services, their binaries and users, one sidecar.
    // (The cgroup outlives the VM's processes: declared first, dropped last.)
    let beta_cgroup = Cgroup::new(&format!("appid-test-{}-beta", std::process::id()));
    let mut vm = Host::new("vm");
    lan.attach(&vm.ns, VM_IP, 1);
    let alpha = Service::new(&vm, "alpha", 40101, 8081, 15111);
    let beta = Service::new(&vm, "beta", 40102, 8082, 15112);
    vm.put("service.py", SERVICE.as_bytes());
    fs::set_permissions(vm.path("service.py"), fs::Permissions::from_mode(0o644)).expect("chmod");
    vm.put("host.token", host_token.as_bytes());
    vm.put("alpha.token", alpha_token.as_bytes());
    vm.put("beta.token", beta_token.as_bytes());
    vm.put("policy.yaml", VM_POLICY.as_bytes());
    vm.put(
        "proxy.yaml",
        vm_config(&vm, &lan, &alpha, &beta, &beta_cgroup.path, tunnel).as_bytes(),
    );
    let (alpha_proc, _) = alpha.start(&vm);
    vm.apps.push(alpha_proc);
    let (beta_proc, beta_pid) = beta.start(&vm);
    beta_cgroup.add(&beta_pid);
    vm.apps.push(beta_proc);
    let alpha_v1 = sha256sum(&alpha.binary);
    let beta_v1 = sha256sum(&beta.binary);
    assert_ne!(alpha_v1, beta_v1);

    api.put(
        "policy.yaml",
        API_POLICY.replace("ALPHA_SHA256", &alpha_v1).as_bytes(),
    );
    api.start_app("api", &[path_str(&api.path("api.py"))], API_PORT);
    api.start_sidecar();
    api.install_redirect();

    // The VM's sidecar reads its services' processes (other users'):
    // CAP_SYS_PTRACE, as `AmbientCapabilities=` in its unit.
    vm.start_sidecar_with_capability(&vm.path("proxy.yaml"), "sys_ptrace");
    let redirect = vm.ns.command(
        APPID,
        &[
            "redirect",
            "install",
            "--proxy-uid",
            "1337",
            "--services-from",
            path_str(&vm.path("proxy.yaml")),
        ],
    );
    let out = support::netns::output_within(redirect, WAIT);
    assert!(out.status.success(), "redirect: {}", text(&out.stderr));
    let rules = vm.ns.sh("iptables-save -t nat");
    assert!(
        rules.contains("--uid-owner 40101") && rules.contains("--path"),
        "{rules}"
    );

    // Three identities, each with its own process facts.
    let identity = vm.identity();
    assert_eq!(identity["id"], HOST_ID, "{identity:#}");
    let services = &identity["services"];
    assert_eq!(services["alpha"]["id"], ALPHA_ID, "{identity:#}");
    assert_eq!(services["beta"]["id"], BETA_ID, "{identity:#}");
    let reported_sha = |who: &Value| who["claims"]["reported"]["process"]["sha256"].clone();
    assert_eq!(reported_sha(&services["alpha"]), alpha_v1.as_str());
    assert_eq!(reported_sha(&services["beta"]), beta_v1.as_str());

    // Outbound: each service's own connection carries its own identity.
    let got = alpha.call_api(&vm);
    assert_eq!(
        got,
        "status=200 body=hello from api\n",
        "{}",
        everything(&lan, &vm, &api)
    );
    // (The api refuses beta before the protocol is known: there is no
    // rule it could pass. What beta sees is the VM sidecar's answer to a
    // refused upstream; the api's audit below says why.)
    let got = beta.call_api(&vm);
    assert!(
        !got.starts_with("status=200"),
        "{got}\n{}",
        everything(&lan, &vm, &api)
    );
    // Anything else on the VM (here root's curl) is the VM itself.
    let reply: Reply = vm
        .ns
        .curl(&format!("http://{PEER_IP}:{API_PORT}/hello"), 10);
    assert_ne!(
        reply.status,
        Some(200),
        "{reply:?}\n{}",
        everything(&lan, &vm, &api)
    );

    assert_last_seen(
        &api,
        ALPHA_ID,
        "allow",
        "alpha-binary-to-api",
        &alpha_v1,
        40101,
    );
    assert_last_seen(&api, BETA_ID, "deny", "default", &beta_v1, 40102);
    let host_lines = audited(&api, HOST_ID);
    assert!(
        host_lines.iter().any(|(l, _)| l["decision"] == "deny"),
        "the VM's own identity was not seen by the api\n{}",
        everything(&lan, &vm, &api)
    );

    // Inbound: the api calling each port meets the service behind it.
    for service in [&alpha, &beta] {
        let url = format!("http://{VM_IP}:{}/hello", service.port);
        let reply = api.ns.curl(&url, 10);
        let expected = format!("hello from {}\n", service.name);
        assert!(
            reply.is_ok_with(&expected),
            "{reply:?}\n{}",
            everything(&lan, &vm, &api)
        );
    }
    let outbound: Vec<(u64, String)> = api
        .audit()
        .into_iter()
        .filter(|l| l["direction"] == "outbound")
        .filter_map(|l| Some((l["port"].as_u64()?, l["peer_id"].as_str()?.to_owned())))
        .collect();
    assert!(
        outbound.contains(&(8081, ALPHA_ID.to_owned())),
        "{outbound:?}"
    );
    assert!(
        outbound.contains(&(8082, BETA_ID.to_owned())),
        "{outbound:?}"
    );

    // alpha's binary is replaced and the service restarted: at its next
    // renewal the claim follows the new binary, and the api's decision
    // follows the claim.
    vm.apps.remove(0); // killed
    alpha.install_binary("v2");
    let alpha_v2 = sha256sum(&alpha.binary);
    assert_ne!(alpha_v1, alpha_v2);
    let (alpha_proc, _) = alpha.start(&vm);
    vm.apps.push(alpha_proc);
    wait_for(
        "alpha's renewed certificate to carry its new binary",
        Duration::from_secs(30),
        || everything(&lan, &vm, &api),
        || {
            let identity = vm.identity();
            (reported_sha(&identity["services"]["alpha"]) == alpha_v2.as_str()).then_some(())
        },
    );
    let got = alpha.call_api(&vm);
    assert!(
        !got.starts_with("status=200"),
        "{got}\n{}",
        everything(&lan, &vm, &api)
    );
    assert_last_seen(&api, ALPHA_ID, "deny", "default", &alpha_v2, 40101);

    api.remove_redirect();
    vm.remove_redirect();
    drop(vm);
    drop(beta_cgroup);
}
