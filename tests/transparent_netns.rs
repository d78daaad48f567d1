//! Transparent capture end to end, in network namespaces (root, real
//! iptables): unmodified apps, `appid redirect install`, and sidecars in
//! transparent mode running as the excluded uid 1337.
//!
//! ```text
//!  direct:  ns A (web)                               ns B (api)
//!           curl, echo client                          python http.server :8080
//!             │ OUTPUT → REDIRECT                      python echo        :9000
//!             ▼                                          ▲ 127.0.0.1:<port>
//!           sidecar :15101 ══ mTLS ══ veth ══► PREROUTING → sidecar :15106
//!           10.77.0.1/24          (wire probe)         10.77.0.2/24
//!
//!  nat:     ns A 10.78.1.2 ─── ns GW 10.78.1.1 | 10.78.2.1 ─── ns B 10.78.2.2
//!                              ip_forward, MASQUERADE out of gw-b,
//!                              (wire probe in FORWARD)
//!
//!  metadata: one ns, fake metadata service on 169.254.169.254:80 (on lo)
//!  loop:     one ns, the capture ports dialled directly
//! ```
//!
//! Covered:
//! - curl reaches B's HTTP app and a raw TCP client B's echo server only
//!   through both sidecars: each side writes one audit line per request
//!   naming `web-to-api` with the peer's SPIFFE ID, and A's sidecar writes
//!   exactly one outbound decision per request (its own upstream connection
//!   is not recaptured: uid 1337 is excluded);
//! - what crosses between the hosts is TLS: iptables `string` matches on the
//!   path (B's veth; the gateway's FORWARD chain) count no packet carrying
//!   the request line, the response body or the echo payload — and, as a
//!   control that proves the probe can fail, they do count them once
//!   `appid redirect remove` has taken the sidecars out;
//! - a workload issued from a Trivy report with criticals (`legacy`) is
//!   refused by `no-critical-vulns`: by its own sidecar, and, when its
//!   sidecar's policy is replaced by one that checks nothing (a client side
//!   that stopped enforcing), by the server's sidecar — which must see the
//!   client's *current* certificate right after the swap (no TLS session
//!   resumed under the previous identity);
//! - across the NAT the server's sidecar sees the client as the gateway's
//!   address (10.78.2.1), and the same policy still allows `web` and denies
//!   `legacy`: decisions do not depend on addresses;
//! - under `mode: audit` or `default: allow` peers are still meshed (mTLS
//!   on the wire, decided by rule), not passed through as external;
//! - the cloud metadata API is refused (audited as "metadata API") until a
//!   policy rule names it, then reachable;
//! - a host outside the mesh allowed by name (`external.hosts`) is reached
//!   where the name resolves (the namespace's own `/etc/hosts`), even by
//!   an app that dials another address with that name in its `Host`, and
//!   where it moved to while the sidecar still keeps its old answer; a
//!   request naming another host on that connection is refused (421);
//! - a server-first protocol outside the mesh (a banner on accept) gets
//!   its banner without the sidecar waiting `detect_timeout` for a name the
//!   client never sends (only where a rule by name could decide is the name
//!   awaited that long), while a client that names the metadata API to the
//!   same address is refused by that name;
//! - dialling a capture port directly (outbound: loopback and the host's own
//!   address; inbound: under audit mode, where policy stops nothing) fails
//!   fast instead of looping.
//! - a VM namespace with a fake IMDSv2 at 169.254.169.254 serving the real
//!   signed document (`../shared/fixtures`) and the authority on its
//!   loopback: the sidecar bootstraps from its own metadata fetch while the
//!   app is refused the metadata service, and restarts on its kept identity
//!   without attesting again; both address families are captured and meshed
//!   (dual-stack listeners).
//!
//! Everything is owned by guards: sidecars and apps are killed, namespaces
//! (with their veths and iptables rules) deleted, even when a test fails
//! midway; namespaces (and temp dirs) left by a killed run are swept at the
//! next run.
//! Without root or the tools the tests skip with a printed reason; under
//! `CI=true` a skip is a failure.

#[path = "support/mod.rs"]
mod support;

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};

use support::host::{ADMIN, Host, context};
use support::netns::{Netns, WAIT, path_str, python, should_run, temp_dir, text, wait_for};
use support::pki::{APPID, appid};

const TRUST_DOMAIN: &str = "netns.example";

const INBOUND_PORT: u16 = 15106;
const OUTBOUND_PORT: u16 = 15101;
const HTTP_PORT: u16 = 8080;
const ECHO_PORT: u16 = 9000;

const METADATA_IP: &str = "169.254.169.254";

/// What B's HTTP app serves at `/file`: unique, so the wire probe only
/// counts this.
const BODY: &str = "appid-netns-body-7f3a9c\n";
/// What the echo client sends.
const ECHO_PAYLOAD: &str = "appid-netns-echo-51e0b2";
/// The request line's start, as curl sends it.
const REQUEST_LINE: &str = "GET /file";

const POLICY: &str = r#"version: 1
default: deny
rules:
  - name: no-critical-vulns
    action: deny
    from: { vulns.critical: { gt: 0 } }
  - name: web-to-api
    action: allow
    from: { labels.app: web }
    to: { labels.app: api, ports: [8080, 9000] }
"#;

/// Added to [`POLICY`] to open the metadata API to `web`.
const METADATA_RULE: &str = r#"  - name: web-reads-metadata
    action: allow
    from: { labels.app: web }
    to: { external: { cidrs: ["169.254.169.254/32"], ports: [80] } }
"#;

/// A client sidecar that stopped enforcing: it lets its workload call any
/// meshed peer (still over mTLS), so only the server side decides.
const CLIENT_CHECKS_NOTHING: &str = r#"version: 1
default: deny
rules:
  - name: client-checks-nothing
    action: allow
    from: { id: { glob: "spiffe://netns.example/**" } }
"#;

/// A Trivy (`SchemaVersion` 2) report with two criticals.
const TRIVY_REPORT: &str = r#"{"SchemaVersion": 2,
 "ArtifactName": "registry.example/legacy:0.9",
 "ArtifactType": "container_image",
 "Metadata": {"ImageID": "sha256:1111111111111111111111111111111111111111111111111111111111111111"},
 "Results": [{"Target": "registry.example/legacy:0.9 (debian 10.13)",
   "Class": "os-pkgs", "Type": "debian",
   "Vulnerabilities": [
     {"VulnerabilityID": "CVE-2021-44228", "PkgName": "liblog4j2-java",
      "InstalledVersion": "2.11.1-2", "Severity": "CRITICAL"},
     {"VulnerabilityID": "CVE-2019-5482", "PkgName": "curl",
      "InstalledVersion": "7.64.0-4", "Severity": "CRITICAL"},
     {"VulnerabilityID": "CVE-2020-8177", "PkgName": "curl",
      "InstalledVersion": "7.64.0-4", "Severity": "HIGH"}]}]}
"#;

const ECHO_SERVER: &str = r#"
import socketserver, sys
class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        while True:
            data = self.request.recv(65536)
            if not data:
                return
            self.request.sendall(data)
class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
Server((sys.argv[1], int(sys.argv[2])), Echo).serve_forever()
"#;

/// Sends argv[3], prints what comes back (up to as many bytes), exits 1
/// when the connection fails or closes early.
const ECHO_CLIENT: &str = r#"
import socket, sys
want = sys.argv[3].encode()
got = b""
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
    s.sendall(want)
    while len(got) < len(want):
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
except OSError as e:
    print(e, file=sys.stderr)
sys.stdout.write(got.decode(errors="replace"))
sys.exit(0 if got == want else 1)
"#;

// ---------------------------------------------------------------------------
// Identities

/// A CA and the three workloads, issued with the real CLI.
struct Identities {
    _dir: tempfile::TempDir,
    bundle: PathBuf,
    web: Cert,
    api: Cert,
    legacy: Cert,
}

#[derive(Debug, Clone)]
struct Cert {
    id: String,
    cert: PathBuf,
    key: PathBuf,
}

impl Identities {
    fn new() -> Identities {
        let dir = temp_dir();
        let ca = dir.path().join("ca");
        appid(&[
            "authority",
            "init",
            "--trust-domain",
            TRUST_DOMAIN,
            "--dir",
            path_str(&ca),
        ]);
        let report = dir.path().join("legacy-trivy.json");
        fs::write(&report, TRIVY_REPORT).expect("write report");
        let issue = |name: &str, extra: &[&str]| {
            let id = format!("spiffe://{TRUST_DOMAIN}/ns/shop/sa/{name}");
            let cert = dir.path().join(format!("{name}.pem"));
            let key = dir.path().join(format!("{name}.key"));
            let label = format!("app={name}");
            let mut args = vec![
                "issue",
                "--dir",
                path_str(&ca),
                "--id",
                &id,
                "--label",
                &label,
                "--cert",
                path_str(&cert),
                "--key",
                path_str(&key),
            ];
            args.extend_from_slice(extra);
            appid(&args);
            Cert { id, cert, key }
        };
        let web = issue("web", &[]);
        let api = issue("api", &[]);
        let legacy = issue("legacy", &["--vulns", path_str(&report)]);
        let claims = appid(&["cert", "inspect", path_str(&legacy.cert), "--json"]);
        let claims: Value = serde_json::from_slice(&claims.stdout).expect("claims JSON");
        assert_eq!(claims["vulns"]["critical"], 2, "{claims}");
        Identities {
            bundle: ca.join("ca.pem"),
            _dir: dir,
            web,
            api,
            legacy,
        }
    }
}

// ---------------------------------------------------------------------------
// Hosts

/// One host of these tests: a namespace with a transparent sidecar
/// (uid 1337) whose identity is `cert` (files), enforcing `policy`; nothing
/// started yet.
fn host(role: &str, ids: &Identities, cert: &Cert, policy: &str) -> Host {
    let host = Host::new(role);
    host.put("ca.pem", &fs::read(&ids.bundle).expect("read bundle"));
    host.set_identity_files(cert);
    host.put("policy.yaml", policy.as_bytes());
    let config = format!(
        r#"identity: {{ cert: cert.pem, key: key.pem, bundle: ca.pem }}
trust_domains: [{TRUST_DOMAIN}]
policy: policy.yaml
inbound:
  - listen: "0.0.0.0:{INBOUND_PORT}"
  - listen: "[::]:{INBOUND_PORT}"
outbound:
  - listen: "127.0.0.1:{OUTBOUND_PORT}"
  - listen: "[::1]:{OUTBOUND_PORT}"
admin: "{ADMIN}"
audit_log: audit.jsonl
workers: 2
limits:
  handshake_timeout: 5s
  detect_timeout: 2s
  connect_timeout: 3s
  drain_timeout: 1s
"#
    );
    host.put("proxy.yaml", config.as_bytes());
    host
}

/// What these tests do with a host beyond the shared [`Host`].
trait TestHost {
    fn set_identity_files(&self, cert: &Cert);
    fn swap_identity(&self, cert: &Cert);
    fn start_api_apps(&mut self);
}

impl TestHost for Host {
    fn set_identity_files(&self, cert: &Cert) {
        self.put("key.pem", &fs::read(&cert.key).expect("read key"));
        self.put("cert.pem", &fs::read(&cert.cert).expect("read cert"));
    }

    /// Replaces the identity files and waits until the sidecar serves the
    /// new identity (it polls its files twice a second).
    fn swap_identity(&self, cert: &Cert) {
        self.set_identity_files(cert);
        wait_for(
            &format!("the sidecar in {} to load {}", self.ns.name, cert.id),
            WAIT,
            || self.context(),
            || {
                let (status, body) = self.admin("/appid");
                let json: Value = serde_json::from_str(&body).ok()?;
                (status == 200 && json["id"] == cert.id.as_str()).then_some(())
            },
        );
    }

    /// B's apps: `GET /file` on `:8080`, an echo server on `:9000`.
    fn start_api_apps(&mut self) {
        let www = self.path("www");
        fs::create_dir(&www).expect("mkdir www");
        fs::write(www.join("file"), BODY).expect("write file");
        let port = HTTP_PORT.to_string();
        self.start_app(
            "http",
            &[
                "-m",
                "http.server",
                &port,
                "--bind",
                "0.0.0.0",
                "--directory",
                path_str(&www),
            ],
            HTTP_PORT,
        );
        let port = ECHO_PORT.to_string();
        self.start_app("echo", &["-c", ECHO_SERVER, "0.0.0.0", &port], ECHO_PORT);
    }
}

/// The echo client from inside `ns`: `Ok(echoed)` or `Err(what happened)`.
fn echo(ns: &Netns, ip: &str, port: u16, payload: &str) -> Result<String, String> {
    let port = port.to_string();
    let out = ns.run(python(), &["-c", ECHO_CLIENT, ip, &port, payload]);
    if out.status.success() {
        Ok(text(&out.stdout))
    } else {
        Err(format!(
            "echo got {:?}; {}",
            text(&out.stdout),
            text(&out.stderr).trim()
        ))
    }
}

// ---------------------------------------------------------------------------
// The wire

/// iptables `string` matches counting packets on the path between the
/// hosts that carry an app's plaintext. Rules without a target only count.
struct WireProbe<'a> {
    ns: &'a Netns,
    /// (comment, needle) per rule.
    rules: Vec<(String, &'static str)>,
}

impl<'a> WireProbe<'a> {
    /// One counting rule per (mangle chain + interface match, needle).
    /// `None` (printed) when the kernel has no `string` match.
    fn install(ns: &'a Netns, places: &[(&str, &str)]) -> Option<WireProbe<'a>> {
        let mut rules = Vec::new();
        for (i, (chain, matches)) in places.iter().enumerate() {
            for (j, needle) in [REQUEST_LINE, BODY.trim_end(), ECHO_PAYLOAD]
                .into_iter()
                .enumerate()
            {
                let comment = format!("appid-test-plaintext-{i}-{j}");
                let mut args = vec!["-t", "mangle", "-I", chain, "-p", "tcp"];
                args.extend(matches.split_whitespace());
                args.extend(["-m", "string", "--string", needle, "--algo", "bm"]);
                args.extend(["-m", "comment", "--comment", &comment]);
                let out = ns.run("iptables", &args);
                if !out.status.success() {
                    eprintln!(
                        "skipping the plaintext-on-the-wire assertion: iptables string match \
                         unavailable ({})",
                        text(&out.stderr).trim()
                    );
                    return None;
                }
                rules.push((comment, needle));
            }
        }
        Some(WireProbe { ns, rules })
    }

    /// Packets seen per needle that carried it, e.g.
    /// `[("GET /file", 0), ...]`, summed over places.
    fn counts(&self) -> Vec<(&'static str, u64)> {
        let saved = self.ns.sh("iptables-save -c -t mangle");
        let mut counts: Vec<(&'static str, u64)> = Vec::new();
        for (comment, needle) in &self.rules {
            let packets = saved
                .lines()
                .find(|l| l.contains(&format!("--comment {comment}")))
                .and_then(|l| l.strip_prefix('['))
                .and_then(|l| l.split(':').next())
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("no counter for {comment} in\n{saved}"));
            match counts.iter_mut().find(|(n, _)| n == needle) {
                Some((_, total)) => *total += packets,
                None => counts.push((needle, packets)),
            }
        }
        counts
    }
}

// ---------------------------------------------------------------------------
// Topologies

/// Client host A (`web`) and server host B (`api`, with its apps), with
/// sidecars and redirects installed; `gateway` between them for NAT.
struct Topology {
    a: Host,
    b: Host,
    gateway: Option<Netns>,
    /// The server's address as the client dials it.
    server_ip: &'static str,
    /// The client's address as the server's sidecar sees it.
    client_seen_as: &'static str,
}

impl Topology {
    /// A 10.77.0.1/24 —veth— B 10.77.0.2/24.
    fn direct(ids: &Identities, policy: &str) -> Topology {
        let a = host("a", ids, &ids.web, policy);
        let b = host("b", ids, &ids.api, policy);
        a.ns.sh(&format!(
            "ip link add veth-a type veth peer name veth-b netns {b}
             ip addr add 10.77.0.1/24 dev veth-a && ip link set veth-a up",
            b = b.ns.name
        ));
        b.ns.sh("ip addr add 10.77.0.2/24 dev veth-b && ip link set veth-b up");
        Topology::start(a, b, None, "10.77.0.2", "10.77.0.1")
    }

    /// A 10.78.1.2 — GW (10.78.1.1 | 10.78.2.1, MASQUERADE) — B 10.78.2.2.
    fn nat(ids: &Identities, policy: &str) -> Topology {
        let a = host("a", ids, &ids.web, policy);
        let b = host("b", ids, &ids.api, policy);
        let gateway = Netns::new("gw");
        gateway.sh(&format!(
            "ip link add gw-a type veth peer name veth-a netns {a}
             ip link add gw-b type veth peer name veth-b netns {b}
             ip addr add 10.78.1.1/24 dev gw-a && ip link set gw-a up
             ip addr add 10.78.2.1/24 dev gw-b && ip link set gw-b up
             echo 1 > /proc/sys/net/ipv4/ip_forward
             iptables -t nat -A POSTROUTING -s 10.78.1.0/24 -o gw-b -j MASQUERADE",
            a = a.ns.name,
            b = b.ns.name
        ));
        a.ns.sh(
            "ip addr add 10.78.1.2/24 dev veth-a && ip link set veth-a up
             ip route add default via 10.78.1.1",
        );
        b.ns.sh(
            "ip addr add 10.78.2.2/24 dev veth-b && ip link set veth-b up
             ip route add default via 10.78.2.1",
        );
        Topology::start(a, b, Some(gateway), "10.78.2.2", "10.78.2.1")
    }

    fn start(
        mut a: Host,
        mut b: Host,
        gateway: Option<Netns>,
        server_ip: &'static str,
        client_seen_as: &'static str,
    ) -> Topology {
        b.start_api_apps();
        for host in [&mut a, &mut b] {
            host.start_sidecar();
            host.install_redirect();
        }
        Topology {
            a,
            b,
            gateway,
            server_ip,
            client_seen_as,
        }
    }

    fn context(&self) -> String {
        context(&[&self.a, &self.b])
    }

    fn url(&self) -> String {
        format!("http://{}:{HTTP_PORT}/file", self.server_ip)
    }

    /// Where to watch the wire: B's veth (both directions) or the
    /// gateway's FORWARD chain.
    fn wire_probe(&self) -> Option<WireProbe<'_>> {
        match &self.gateway {
            Some(gateway) => WireProbe::install(gateway, &[("FORWARD", "")]),
            None => WireProbe::install(
                &self.b.ns,
                &[("PREROUTING", "-i veth-b"), ("POSTROUTING", "-o veth-b")],
            ),
        }
    }

    /// The whole acceptance run for one topology.
    fn check(&self, ids: &Identities) {
        let probe = self.wire_probe();
        self.web_reaches_api_only_through_the_sidecars(ids);
        if let Some(probe) = &probe {
            for (needle, packets) in probe.counts() {
                assert_eq!(
                    packets, 0,
                    "{packets} packets carried {needle:?} in plaintext between the hosts"
                );
            }
        }
        if let Some(probe) = &probe {
            self.without_the_redirect_the_wire_shows_plaintext(probe);
        }
        self.legacy_is_refused(ids);
    }

    fn web_reaches_api_only_through_the_sidecars(&self, ids: &Identities) {
        let (a, b) = (&self.a, &self.b);
        let seen_as = self.client_seen_as;

        let reply = a.ns.curl(&self.url(), 10);
        assert!(
            reply.is_ok_with(BODY),
            "web GET /file: {reply:?}\n{}",
            self.context()
        );

        // A: exactly one decision, outbound — its own upstream connection
        // went out directly (uid 1337), not back into its capture port. The
        // connection's: under this L4 policy the client sidecar decides an
        // HTTP connection once (B still decides the request).
        let a_audit = a.audit();
        assert_eq!(
            a_audit.len(),
            1,
            "decisions in A for one request\n{}",
            self.context()
        );
        expect_line(
            &a_audit[0],
            json!({"direction": "outbound", "decision": "allow", "rule": "web-to-api",
                   "peer_id": ids.api.id, "port": HTTP_PORT, "protocol": "http1", "method": null}),
        );
        // B: the request came from web's sidecar, decided by AppID.
        let b_audit = b.audit();
        assert_eq!(
            b_audit.len(),
            1,
            "decisions in B for one request\n{}",
            self.context()
        );
        expect_line(
            &b_audit[0],
            json!({"direction": "inbound", "decision": "allow", "rule": "web-to-api",
                   "peer_id": ids.web.id, "port": HTTP_PORT, "method": "GET", "path": "/file",
                   "peer_ip": seen_as}),
        );

        // Opaque TCP: one decision per connection on each side.
        let echoed = echo(&a.ns, self.server_ip, ECHO_PORT, ECHO_PAYLOAD);
        assert_eq!(echoed.as_deref(), Ok(ECHO_PAYLOAD), "{}", self.context());
        let a_audit = a.audit();
        assert_eq!(a_audit.len(), 2, "{}", self.context());
        expect_line(
            &a_audit[1],
            json!({"direction": "outbound", "decision": "allow", "rule": "web-to-api",
                   "peer_id": ids.api.id, "port": ECHO_PORT, "protocol": "tcp"}),
        );
        let b_audit = b.audit();
        assert_eq!(b_audit.len(), 2, "{}", self.context());
        expect_line(
            &b_audit[1],
            json!({"direction": "inbound", "decision": "allow", "rule": "web-to-api",
                   "peer_id": ids.web.id, "port": ECHO_PORT, "protocol": "tcp",
                   "peer_ip": seen_as}),
        );
    }

    /// A's workload becomes `legacy` (criticals): refused by A's sidecar;
    /// then, with A's sidecar no longer enforcing, by B's.
    fn legacy_is_refused(&self, ids: &Identities) {
        let (a, b) = (&self.a, &self.b);
        let seen_as = self.client_seen_as;
        a.swap_identity(&ids.legacy);
        let b_before = b.audit().len();

        let reply = a.ns.curl(&self.url(), 10);
        assert!(
            reply.is_refused_by("no-critical-vulns"),
            "legacy GET /file: {reply:?}\n{}",
            self.context()
        );
        expect_line(
            &a.audit().pop().expect("an audit line in A"),
            json!({"direction": "outbound", "decision": "deny", "rule": "no-critical-vulns",
                   "port": HTTP_PORT}),
        );
        let echoed = echo(&a.ns, self.server_ip, ECHO_PORT, ECHO_PAYLOAD);
        assert!(echoed.is_err(), "legacy echo: {echoed:?}");
        expect_line(
            &a.audit().pop().expect("an audit line in A"),
            json!({"direction": "outbound", "decision": "deny", "rule": "no-critical-vulns",
                   "port": ECHO_PORT}),
        );
        // B saw, at most, the mTLS connections A opened before it could
        // tell what the app sent — and must have seen them as legacy's.
        for line in &b.audit()[b_before..] {
            assert_eq!(
                line["peer_id"],
                ids.legacy.id.as_str(),
                "B's sidecar saw the client with its previous identity after it became \
                 legacy (a resumed TLS session carries the old certificate): {line}\n{}",
                self.context()
            );
            assert_eq!(line["decision"], "deny", "{line}");
        }

        // A's sidecar stops enforcing (allow-all policy): B decides alone.
        // Until A reloads its policy it still refuses locally, and B sees
        // at most an empty connection; then the request itself reaches B.
        a.put("policy.yaml", CLIENT_CHECKS_NOTHING.as_bytes());
        let line = wait_for(
            "the request to reach B's sidecar once A's policy allows all",
            WAIT,
            || self.context(),
            || {
                let reply = a.ns.curl(&self.url(), 10);
                assert!(
                    reply.is_refused_by("no-critical-vulns"),
                    "legacy GET /file with A not enforcing: {reply:?} (if B's audit says \
                     the peer is web, a resumed TLS session carried A's old certificate)\n{}",
                    self.context()
                );
                b.audit()
                    .into_iter()
                    .skip(b_before)
                    .find(|l| l["method"] == "GET")
            },
        );
        expect_line(
            &line,
            json!({"direction": "inbound", "decision": "deny", "rule": "no-critical-vulns",
                   "peer_id": ids.legacy.id, "port": HTTP_PORT, "peer_ip": seen_as}),
        );

        let b_before = b.audit().len();
        let echoed = echo(&a.ns, self.server_ip, ECHO_PORT, ECHO_PAYLOAD);
        assert!(
            echoed.is_err(),
            "legacy echo with A not enforcing: {echoed:?}"
        );
        // B writes its line as it closes; the client may see the close first.
        let line = wait_for(
            "B's decision on legacy's echo connection",
            WAIT,
            || self.context(),
            || {
                b.audit()
                    .into_iter()
                    .skip(b_before)
                    .find(|l| l["port"] == ECHO_PORT)
            },
        );
        expect_line(
            &line,
            json!({"direction": "inbound", "decision": "deny", "rule": "no-critical-vulns",
                   "peer_id": ids.legacy.id, "peer_ip": seen_as}),
        );
    }

    /// The control: the probe does see plaintext when the sidecars are out
    /// of the path (which also shows `appid redirect remove` works).
    fn without_the_redirect_the_wire_shows_plaintext(&self, probe: &WireProbe<'_>) {
        let before = probe.counts();
        let audits = (self.a.audit().len(), self.b.audit().len());
        self.a.remove_redirect();
        self.b.remove_redirect();

        let reply = self.a.ns.curl(&self.url(), 10);
        assert!(reply.is_ok_with(BODY), "direct GET /file: {reply:?}");
        let echoed = echo(&self.a.ns, self.server_ip, ECHO_PORT, ECHO_PAYLOAD);
        assert_eq!(echoed.as_deref(), Ok(ECHO_PAYLOAD));

        for ((needle, was), (_, now)) in before.iter().zip(probe.counts()) {
            assert!(
                now > *was,
                "the probe missed plaintext {needle:?} ({was} -> {now})"
            );
        }
        assert_eq!(
            (self.a.audit().len(), self.b.audit().len()),
            audits,
            "the sidecars saw traffic after `redirect remove`"
        );

        // Back to transparent capture for what follows.
        self.a.install_redirect();
        self.b.install_redirect();
        let reply = self.a.ns.curl(&self.url(), 10);
        assert!(
            reply.is_ok_with(BODY),
            "GET /file after reinstall: {reply:?}"
        );
        assert_eq!(self.b.audit().len(), audits.1 + 1, "{}", self.context());
    }
}

/// Asserts an audit line has the `expected` fields; `peer_ip` stands for
/// the address part of `peer_addr`.
fn expect_line(line: &Value, expected: Value) {
    for (key, want) in expected.as_object().expect("an object of fields") {
        let got = if key == "peer_ip" {
            Value::from(peer_ip(line))
        } else {
            line[key].clone()
        };
        assert_eq!(&got, want, "audit line field {key}: {line}");
    }
}

/// `policy` with `mode: audit` (log would-be denials, allow them).
fn audit_mode(policy: &str) -> String {
    format!("{policy}mode: audit\n")
}

/// The IP of an audit line's `peer_addr` (`ip:port`).
fn peer_ip(line: &Value) -> &str {
    line["peer_addr"]
        .as_str()
        .and_then(|a| a.rsplit_once(':'))
        .map_or("", |(ip, _)| ip)
}

// ---------------------------------------------------------------------------
// Tests

#[test]
fn over_a_veth_the_sidecars_carry_only_tls_and_decide_by_appid() {
    if !should_run() {
        return;
    }
    let ids = Identities::new();
    let topology = Topology::direct(&ids, POLICY);
    topology.check(&ids);
}

#[test]
fn across_nat_the_same_policy_allows_and_denies_by_appid_not_address() {
    if !should_run() {
        return;
    }
    let ids = Identities::new();
    let topology = Topology::nat(&ids, POLICY);
    topology.check(&ids);
}

#[test]
fn permissive_policies_still_speak_mtls_between_hosts() {
    if !should_run() {
        return;
    }
    let ids = Identities::new();
    // Audit mode (a rollout) and `default: allow`: the sidecar must still
    // treat a peer as meshed unless a rule names it external.
    for (what, policy) in [
        ("mode: audit", audit_mode(POLICY)),
        (
            "default: allow",
            POLICY.replace("default: deny", "default: allow"),
        ),
    ] {
        let topology = Topology::direct(&ids, &policy);
        let probe = topology.wire_probe();
        let reply = topology.a.ns.curl(&topology.url(), 10);
        assert!(
            reply.is_ok_with(BODY),
            "{what}: web GET /file: {reply:?}\n{}",
            topology.context()
        );
        if let Some(probe) = &probe {
            for (needle, packets) in probe.counts() {
                assert_eq!(
                    packets,
                    0,
                    "{what}: {packets} packets carried {needle:?} in plaintext between the \
                     hosts (A's sidecar passed the connection through as external)\n{}",
                    topology.context()
                );
            }
        }
        // Meshed on both sides and decided by the rule — not an allow of a
        // destination taken for external, nor of a caller taken for one
        // outside the mesh.
        let a_audit = topology.a.audit();
        assert_eq!(a_audit.len(), 1, "{what}\n{}", topology.context());
        expect_line(
            &a_audit[0],
            json!({"direction": "outbound", "decision": "allow", "rule": "web-to-api",
                   "audit_only": false, "peer_id": ids.api.id}),
        );
        let b_audit = topology.b.audit();
        assert_eq!(b_audit.len(), 1, "{what}\n{}", topology.context());
        expect_line(
            &b_audit[0],
            json!({"direction": "inbound", "decision": "allow", "rule": "web-to-api",
                   "audit_only": false, "peer_id": ids.web.id}),
        );
    }
}

/// Dual stack: with an IPv4 and an IPv6 listener per direction (IPv6
/// listeners are IPv6 only), both families are captured, meshed and decided
/// by AppID.
#[test]
fn both_address_families_are_captured_and_meshed() {
    if !should_run() {
        return;
    }
    let ids = Identities::new();
    let topology = Topology::direct(&ids, POLICY);
    let (a, b) = (&topology.a, &topology.b);
    a.ns.sh("ip -6 addr add fd77::1/64 dev veth-a nodad");
    b.ns.sh("ip -6 addr add fd77::2/64 dev veth-b nodad");

    let reply = a.ns.curl(&format!("http://[fd77::2]:{HTTP_PORT}/file"), 10);
    assert!(
        reply.is_ok_with(BODY),
        "web GET /file over IPv6: {reply:?}\n{}",
        topology.context()
    );
    expect_line(
        &a.audit().pop().expect("an audit line in A"),
        json!({"direction": "outbound", "decision": "allow", "rule": "web-to-api",
               "peer_id": ids.api.id, "port": HTTP_PORT, "protocol": "http1"}),
    );
    expect_line(
        &b.audit().pop().expect("an audit line in B"),
        json!({"direction": "inbound", "decision": "allow", "rule": "web-to-api",
               "peer_id": ids.web.id, "port": HTTP_PORT, "path": "/file",
               "peer_ip": "[fd77::1]"}),
    );
    // And IPv4, side by side.
    let reply = a.ns.curl(&topology.url(), 10);
    assert!(
        reply.is_ok_with(BODY),
        "over IPv4: {reply:?}\n{}",
        topology.context()
    );
    expect_line(
        &b.audit().pop().expect("an audit line in B"),
        json!({"direction": "inbound", "decision": "allow", "peer_ip": "10.77.0.1"}),
    );
}

#[test]
fn the_metadata_api_is_refused_until_a_rule_names_it() {
    if !should_run() {
        return;
    }
    let ids = Identities::new();
    let mut a = host("meta", &ids, &ids.web, POLICY);
    a.ns.sh(&format!("ip addr add {METADATA_IP}/32 dev lo"));
    let www = a.path("metadata");
    let role_dir = www.join("latest/meta-data/iam/security-credentials");
    fs::create_dir_all(&role_dir).expect("mkdir");
    let secret = "FAKE-AWS-SECRET-appid-netns\n";
    fs::write(role_dir.join("web-role"), secret).expect("write");
    a.start_app(
        "metadata",
        &[
            "-m",
            "http.server",
            "80",
            "--bind",
            METADATA_IP,
            "--directory",
            path_str(&www),
        ],
        80,
    );
    let url = format!("http://{METADATA_IP}/latest/meta-data/iam/security-credentials/web-role");

    // Without capture the fake service answers: what follows is the sidecar.
    let reply = a.ns.curl(&url, 5);
    assert!(
        reply.is_ok_with(secret),
        "metadata without capture: {reply:?}\n{}",
        a.context()
    );

    a.start_sidecar();
    a.install_redirect();
    let reply = a.ns.curl(&url, 5);
    assert!(
        reply.status.is_none() && reply.exit != Some(0) && !reply.body.contains("SECRET"),
        "the metadata API must be refused: {reply:?}\n{}",
        a.context()
    );
    assert_ne!(reply.exit, Some(28), "refused, not timed out: {reply:?}");
    let line = a
        .audit()
        .pop()
        .unwrap_or_else(|| panic!("no audit line\n{}", a.context()));
    expect_line(
        &line,
        json!({"direction": "outbound", "decision": "deny", "port": 80, "peer_id": null}),
    );
    assert!(
        line["reason"]
            .as_str()
            .is_some_and(|r| r.contains("metadata API")),
        "{line}"
    );

    a.put("policy.yaml", format!("{POLICY}{METADATA_RULE}").as_bytes());
    let reply = wait_for(
        "the metadata API to open once a rule names it",
        WAIT,
        || a.context(),
        || Some(a.ns.curl(&url, 5)).filter(|r| r.is_ok_with(secret)),
    );
    assert_eq!(reply.body, secret);
    expect_line(
        &a.audit().pop().expect("an audit line"),
        json!({"direction": "outbound", "decision": "allow", "rule": "web-reads-metadata",
               "port": 80}),
    );
}

/// Added to [`POLICY`]: `web` may call `allowed.test` on port 80, by name.
const EXTERNAL_BY_NAME_RULE: &str = r#"  - name: web-to-allowed-test
    action: allow
    from: { labels.app: web }
    to: { external: { hosts: [allowed.test], ports: [80] } }
"#;

#[test]
fn an_external_host_allowed_by_name_is_reached_whatever_address_the_app_dials() {
    if !should_run() {
        return;
    }
    let ids = Identities::new();
    let policy = format!("{POLICY}{EXTERNAL_BY_NAME_RULE}");
    let mut a = host("named", &ids, &ids.web, &policy);
    // Two servers outside the mesh on port 80: the one `allowed.test`
    // names, and one elsewhere; each says which it is.
    let (named, elsewhere) = ("192.0.2.10", "192.0.2.20");
    a.ns.sh(&format!(
        "ip addr add {named}/32 dev lo && ip addr add {elsewhere}/32 dev lo"
    ));
    a.ns.set_hosts_file(&format!(
        "127.0.0.1 localhost\n::1 localhost\n{named} allowed.test\n"
    ));
    for (what, address) in [("named", named), ("elsewhere", elsewhere)] {
        let www = a.path(what);
        fs::create_dir_all(&www).expect("mkdir");
        fs::write(www.join("who"), format!("{what}\n")).expect("write");
        a.start_app(
            what,
            &[
                "-m",
                "http.server",
                "80",
                // Keep-alive, as a CDN's servers are.
                "--protocol",
                "HTTP/1.1",
                "--bind",
                address,
                "--directory",
                path_str(&www),
            ],
            80,
        );
    }
    // An app that lies: `allowed.test` in its Host, the other address dialled.
    let lie = format!("allowed.test:80:{elsewhere}");
    let lying = |a: &Host| {
        a.ns.curl_with(&["--resolve", &lie], "http://allowed.test/who", 5)
    };
    // Without capture, the lie reaches the other server: what follows is
    // the sidecar. (Waited for: the second server may still be starting.)
    wait_for(
        "both servers to answer without capture",
        WAIT,
        || a.context(),
        || {
            (a.ns
                .curl("http://allowed.test/who", 5)
                .is_ok_with("named\n")
                && lying(&a).is_ok_with("elsewhere\n"))
            .then_some(())
        },
    );

    a.start_sidecar();
    a.install_redirect();
    let honest = a.ns.curl("http://allowed.test/who", 5);
    assert!(honest.is_ok_with("named\n"), "{honest:?}\n{}", a.context());
    expect_line(
        &a.audit().pop().expect("an audit line"),
        json!({"direction": "outbound", "decision": "allow", "rule": "web-to-allowed-test",
               "peer_ip": named, "port": 80}),
    );
    // The lie is carried where the name resolves, and audited there.
    let lied = lying(&a);
    assert!(
        lied.is_ok_with("named\n"),
        "the app reached another address by naming an allowed host: {lied:?}\n{}",
        a.context()
    );
    expect_line(
        &a.audit().pop().expect("an audit line"),
        json!({"direction": "outbound", "decision": "allow", "rule": "web-to-allowed-test",
               "peer_ip": named, "port": 80}),
    );
    // DNS moves the name (here: the namespace's hosts file) and the app
    // follows at once, while the sidecar still keeps the old answer (5 s):
    // the connection goes to the new address, not where the kept answer
    // says (an address it lacks is checked against a fresh lookup).
    let hosts =
        |address: &str| format!("127.0.0.1 localhost\n::1 localhost\n{address} allowed.test\n");
    let kept = a.ns.curl("http://allowed.test/who", 5);
    assert!(kept.is_ok_with("named\n"), "{kept:?}\n{}", a.context());
    a.ns.set_hosts_file(&hosts(elsewhere));
    let moved = a.ns.curl("http://allowed.test/who", 5);
    assert!(
        moved.is_ok_with("elsewhere\n"),
        "a connection to where the name moved was sent to its old address: {moved:?}\n{}",
        a.context()
    );
    expect_line(
        &a.audit().pop().expect("an audit line"),
        json!({"direction": "outbound", "decision": "allow", "rule": "web-to-allowed-test",
               "peer_ip": elsewhere, "port": 80}),
    );
    a.ns.set_hosts_file(&hosts(named));
    // A name allowed once carries no request for another host: on the
    // same keep-alive connection (to a server that would answer any host,
    // as a CDN's does), a request naming another host is refused with 421
    // by the sidecar and never reaches the server.
    let out = a.ns.run(python(), &["-c", TWO_HOSTS_CLIENT, named]);
    let answers = text(&out.stdout);
    assert!(
        answers.starts_with("200 named\n|421 "),
        "{answers:?} {}\n{}",
        text(&out.stderr),
        a.context()
    );
    let misdirected = a.audit().pop().expect("an audit line");
    expect_line(
        &misdirected,
        json!({"direction": "outbound", "decision": "deny", "rule": "invalid-request",
               "peer_ip": named, "port": 80}),
    );
    // The other address under its own name is no destination a rule allows.
    let direct = a.ns.curl(&format!("http://{elsewhere}/who"), 5);
    assert!(
        !direct.body.contains("elsewhere"),
        "{direct:?}\n{}",
        a.context()
    );
    // Once a rule allows that address itself (a forward proxy's, say), a
    // connection dialled there stays there, whatever name it gives.
    let by_address = format!(
        "{policy}  - name: web-to-elsewhere\n    action: allow\n    from: {{ labels.app: web }}\n    to: {{ external: {{ cidrs: [\"{elsewhere}/32\"], ports: [80] }} }}\n"
    );
    a.put("policy.yaml", by_address.as_bytes());
    wait_for(
        "a connection allowed by its address to stay there",
        WAIT,
        || a.context(),
        || lying(&a).is_ok_with("elsewhere\n").then_some(()),
    );
}

/// Two requests on one keep-alive connection to port 80 of `argv[1]`, the
/// first for `allowed.test`, the second for `other.test`; prints each
/// answer's status and body, `|`-separated.
const TWO_HOSTS_CLIENT: &str = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], 80), timeout=10)
f = s.makefile("rb")
def ask(host):
    s.sendall(b"GET /who HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
    status = f.readline().split(b" ")[1].decode()
    length = 0
    while True:
        line = f.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    return status + " " + f.read(length).decode(errors="replace")
out = [ask(b"allowed.test")]
out.append(ask(b"other.test"))
print("|".join(out))
"#;

/// Speaks first, as SSH, SMTP and MySQL servers do: a banner on accept.
const BANNER_SERVER: &str = r#"
import socketserver, sys
class Banner(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.sendall(b"SSH-2.0-appid-netns-banner\r\n")
        self.request.recv(1)
class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
Server((sys.argv[1], int(sys.argv[2])), Banner).serve_forever()
"#;

/// Connects and prints the first line the server sends, sending nothing;
/// gives up after 10 s.
const BANNER_CLIENT: &str = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
print(s.recv(100).decode(errors="replace").strip())
"#;

#[test]
fn a_server_first_protocol_outside_the_mesh_gets_its_banner_without_waiting() {
    if !should_run() {
        return;
    }
    let ids = Identities::new();
    let banner = "192.0.2.30";
    // The banner server is allowed by its address; a rule by name exists
    // too, for another port (so the sidecar only looks for a name where
    // one could decide).
    let policy = format!(
        "{POLICY}{EXTERNAL_BY_NAME_RULE}  - name: web-to-banner\n    action: allow\n    from: {{ labels.app: web }}\n    to: {{ external: {{ cidrs: [\"{banner}/32\"], ports: [2222] }} }}\n"
    );
    let mut a = host("banner", &ids, &ids.web, &policy);
    // Detection would wait 30 s for a name the client never sends: longer
    // than the client waits for its banner.
    let config = fs::read_to_string(a.path("proxy.yaml")).expect("read proxy.yaml");
    let config = config.replace("detect_timeout: 2s", "detect_timeout: 30s");
    assert!(config.contains("detect_timeout: 30s"));
    a.put("proxy.yaml", config.as_bytes());
    a.ns.sh(&format!("ip addr add {banner}/32 dev lo"));
    a.start_app("banner", &["-c", BANNER_SERVER, banner, "2222"], 2222);
    a.start_sidecar();
    a.install_redirect();
    let out = a.ns.run(python(), &["-c", BANNER_CLIENT, banner, "2222"]);
    assert!(
        text(&out.stdout).contains("SSH-2.0-appid-netns-banner"),
        "no banner within 10 s: {} {}\n{}",
        text(&out.stdout),
        text(&out.stderr),
        a.context()
    );
    expect_line(
        &a.audit().pop().expect("an audit line"),
        json!({"direction": "outbound", "decision": "allow", "rule": "web-to-banner",
               "peer_ip": banner, "port": 2222}),
    );
    // A client that names the metadata API (as through a forward proxy the
    // same rule allows) is still refused by that name.
    let reply = a.ns.curl_with(
        &["-H", "Host: metadata.google.internal"],
        &format!("http://{banner}:2222/computeMetadata/v1/"),
        5,
    );
    assert!(!reply.body.contains("SSH-2.0"), "{reply:?}");
    let line = a.audit().pop().expect("an audit line");
    expect_line(
        &line,
        json!({"direction": "outbound", "decision": "deny", "port": 2222}),
    );
    assert!(
        line["reason"]
            .as_str()
            .is_some_and(|r| r.contains("metadata API")),
        "{line}\n{}",
        a.context()
    );
}

#[test]
fn the_outbound_capture_port_dialled_directly_fails_fast_without_a_loop() {
    if !should_run() {
        return;
    }
    let ids = Identities::new();
    let mut a = host("loop", &ids, &ids.web, POLICY);
    // An address of the host's own (not loopback, so captured).
    a.ns.sh("ip link add own0 type veth peer name own1
         ip addr add 10.79.0.1/24 dev own0 && ip link set own0 up && ip link set own1 up");
    a.start_sidecar();
    a.install_redirect();

    // Loopback is not captured: this reaches the listener with no original
    // destination but itself. Then the same port on the host's own address,
    // which is captured and redirected into that very port.
    for url in [
        format!("http://127.0.0.1:{OUTBOUND_PORT}/"),
        format!("http://10.79.0.1:{OUTBOUND_PORT}/"),
    ] {
        let reply = a.ns.curl(&url, 10);
        assert!(
            reply.status.is_none() && reply.exit != Some(0),
            "{url}: {reply:?}\n{}",
            a.context()
        );
        assert!(
            reply.took < Duration::from_secs(5),
            "{url} took {:?}: {reply:?}",
            reply.took
        );
    }
    assert_eq!(a.admin("/live").0, 200, "{}", a.context());
    assert_eq!(a.admin("/ready").0, 200, "{}", a.context());
    // One accepted connection per dial, none recursing through the sidecar.
    let opened = |d: &str| {
        a.metric(&format!(
            "appid_connections_opened_total{{direction=\"{d}\"}}"
        ))
    };
    assert_eq!(opened("outbound"), 2.0, "{}", a.context());
    assert_eq!(opened("inbound"), 0.0, "{}", a.context());
    assert!(a.audit().is_empty(), "{}", a.context());
}

#[test]
fn the_inbound_capture_port_dialled_directly_is_not_forwarded_to_itself() {
    if !should_run() {
        return;
    }
    let ids = Identities::new();
    // Audit mode (a typical rollout): denials are logged and let through,
    // so only the sidecar itself can stop a loop.
    let mut a = host("inloop", &ids, &ids.api, &audit_mode(POLICY));
    a.start_sidecar();
    a.install_redirect();

    let reply = a.ns.curl(&format!("http://127.0.0.1:{INBOUND_PORT}/"), 5);
    let opened = a.metric("appid_connections_opened_total{direction=\"inbound\"}");
    assert!(
        opened <= 1.0,
        "dialling the inbound port directly opened {opened} inbound connections \
         (the sidecar forwarded to itself): {reply:?}"
    );
    assert!(
        reply.status.is_none() && reply.exit != Some(0) && reply.exit != Some(28),
        "{reply:?}\n{}",
        a.context()
    );
    assert_eq!(a.admin("/live").0, 200, "{}", a.context());
}

/// A fake EC2 metadata service (IMDSv2 only) for `python3 -c`: argv is the
/// address, the document and the signature file.
const FAKE_IMDS: &str = r#"
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
ip, document, signature = sys.argv[1], open(sys.argv[2], 'rb').read(), open(sys.argv[3], 'rb').read().strip()
TOKEN = b'imds-session-token'
class Imds(BaseHTTPRequestHandler):
    def answer(self, status, body=b''):
        self.send_response(status)
        self.send_header('content-length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_PUT(self):
        if self.path == '/latest/api/token' and self.headers.get('x-aws-ec2-metadata-token-ttl-seconds'):
            return self.answer(200, TOKEN)
        self.answer(400)
    def do_GET(self):
        if self.headers.get('x-aws-ec2-metadata-token', '').encode() != TOKEN:
            return self.answer(401)
        pages = {'/latest/dynamic/instance-identity/document': document,
                 '/latest/dynamic/instance-identity/signature': signature}
        self.answer(200, pages[self.path]) if self.path in pages else self.answer(404)
HTTPServer((ip, 80), Imds).serve_forever()
"#;

/// A VM with transparent capture bootstraps its identity from its own
/// metadata service (the sidecar, uid 1337, is the only process that may
/// reach it: the app is refused), and after a restart comes back on the
/// identity it kept — the authority would refuse the same document again.
#[test]
fn a_vm_bootstraps_from_its_own_metadata_service_and_restarts_on_its_kept_identity() {
    if !should_run() {
        return;
    }
    let Some(fixtures) = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(|dir| PathBuf::from(dir).join("../../shared/fixtures/aws-iid"))
        .filter(|dir| dir.is_dir())
    else {
        assert!(
            std::env::var_os("CI").is_none(),
            "../shared/fixtures is missing under CI"
        );
        eprintln!("skipping: ../shared/fixtures not found");
        return;
    };
    let ids = Identities::new();
    let mut vm = host("vm", &ids, &ids.web, POLICY);
    vm.ns.sh(&format!("ip addr add {METADATA_IP}/32 dev lo"));
    let document = fixtures.join("ap-southeast-2-2026/document.json");
    let signature = fixtures.join("ap-southeast-2-2026/signature.b64");
    vm.start_app(
        "imds",
        &[
            "-c",
            FAKE_IMDS,
            METADATA_IP,
            path_str(&document),
            path_str(&signature),
        ],
        80,
    );

    // The authority, on the VM's loopback (its port is never captured).
    let ca = vm.path("authority");
    let ca_dir = path_str(&ca);
    let out = appid(&[
        "authority",
        "init",
        "--trust-domain",
        TRUST_DOMAIN,
        "--dir",
        ca_dir,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = format!("spiffe://{TRUST_DOMAIN}/vm/web");
    let out = appid(&[
        "authority",
        "register",
        "--dir",
        ca_dir,
        "--id",
        &id,
        "--label",
        "app=web",
        "--cloud-match",
        "provider=aws",
        "--cloud-match",
        "account=189292791360",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let certs = fixtures.join("certs");
    let authority = vm.ns.spawn(
        "authority",
        APPID,
        &[
            "authority",
            "serve",
            "--dir",
            ca_dir,
            "--listen",
            "127.0.0.1:15170",
            "--aws-certs",
            path_str(&certs),
        ],
        &vm.path("authority.log"),
    );
    vm.ns.wait_listening(15170);
    vm.put(
        "authority-ca.pem",
        &fs::read(ca.join("ca.pem")).expect("read CA"),
    );
    let config = format!(
        r#"identity:
  authority:
    url: "https://127.0.0.1:15170"
    bundle: authority-ca.pem
    cloud: aws
    state_dir: state
trust_domains: [{TRUST_DOMAIN}]
policy: policy.yaml
inbound:
  - listen: "0.0.0.0:{INBOUND_PORT}"
outbound:
  - listen: "127.0.0.1:{OUTBOUND_PORT}"
admin: "{ADMIN}"
audit_log: audit.jsonl
"#
    );
    vm.put("proxy.yaml", config.as_bytes());
    vm.start_sidecar();
    vm.install_redirect();
    let identity = |vm: &Host| -> Value {
        serde_json::from_str(&vm.admin("/appid").1).expect("JSON from /appid")
    };
    let json = identity(&vm);
    assert_eq!(json["id"], id.as_str(), "{}", vm.context());
    assert_eq!(json["claims"]["attestation"], "aws_iid");
    assert_eq!(json["claims"]["cloud"]["instance"], "i-0c5541936caf78c12");

    // The app (root, captured) does not get to the metadata service.
    let reply = vm.ns.curl(
        &format!("http://{METADATA_IP}/latest/dynamic/instance-identity/document"),
        5,
    );
    assert!(
        reply.status.is_none() && !reply.body.contains("instanceId"),
        "the app reached the metadata service: {reply:?}\n{}",
        vm.context()
    );

    // Restarted: ready again on the kept identity, with no second attestation.
    vm.sidecar = None;
    vm.start_sidecar();
    assert_eq!(identity(&vm)["id"], id.as_str(), "{}", vm.context());
    let audit = fs::read_to_string(ca.join("audit.jsonl")).unwrap_or_default();
    assert_eq!(
        audit.matches("\"event\":\"issue\"").count(),
        1,
        "{audit}\n{}",
        authority.log()
    );
}
