//! A source is an IPv6 /64, not an IPv6 address (README "Limits under
//! load": "A source ... is an IPv4 address or an IPv6 /64"), end to end on
//! the health port (8 connections per source): the real `appid proxy` in a
//! network namespace (root) whose loopback holds addresses of two /64s, and
//! real sockets bound to them.
//!
//! ```text
//!  ns: lo  2001:db8::1        the sidecar's address; health: "[::]:15191"
//!          2001:db8:1:1::a    8 idle connections (connected, sending nothing)
//!          2001:db8:1:1::b    a 9th: same /64, another address → closed at once
//!          2001:db8:1:2::a    another /64, at the same moment → GET /live 200
//! ```
//!
//! Before sources were /64s, the 9th was a source of its own and was held
//! like the first 8. Without root or the tools the test skips with a
//! printed reason, and under `CI=true` a skip is a failure.

#[path = "support/mod.rs"]
mod support;

use std::fs;
use std::time::Duration;

use support::host::{ADMIN, Host};
use support::netns::{python, should_run, temp_dir, text, wait_for};
use support::pki::Ca;

const TRUST_DOMAIN: &str = "v6.example";
/// Where the sidecar is dialled.
const SIDECAR_IP: &str = "2001:db8::1";
const HEALTH_PORT: u16 = 15191;
/// One caller's /64 (2001:db8:1:1::/64), two of its addresses.
const FIRST_ADDRESS: &str = "2001:db8:1:1::a";
const SECOND_ADDRESS: &str = "2001:db8:1:1::b";
/// Another /64 (2001:db8:1:2::/64).
const OTHER_PREFIX_ADDRESS: &str = "2001:db8:1:2::a";
/// The health port's share per source (README: "8 per source address").
const PER_SOURCE: usize = 8;

/// Holds `count` connections from `source` to `server`:`port`, sending
/// nothing; prints `held <count>` once all are connected, then sleeps.
const HOLD: &str = r#"
import socket, sys, time
server, port, source, count = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
held = [socket.create_connection((server, port), timeout=5, source_address=(source, 0))
        for _ in range(count)]
print("held", len(held), flush=True)
time.sleep(120)
"#;

/// One connection from `source` to `server`:`port`, sending nothing: prints
/// `closed` when the far side closes (EOF or reset) within `wait` seconds,
/// `open` when it is still open then.
const CONNECT_IDLE: &str = r#"
import socket, sys
server, port, source, wait = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
s = socket.create_connection((server, port), timeout=5, source_address=(source, 0))
s.settimeout(wait)
try:
    print("closed" if s.recv(1) == b"" else "sent bytes")
except socket.timeout:
    print("open")
except ConnectionResetError:
    print("closed")
"#;

const DENY_ALL: &str = "version: 1\ndefault: deny\nrules: []\n";

#[test]
fn connections_from_one_ipv6_64_share_one_sources_quota() {
    if !should_run() {
        return;
    }
    let mut host = sidecar_with_health_port_on_ipv6();
    let health = format!("[{SIDECAR_IP}]:{HEALTH_PORT}");

    // 8 idle connections from one address of 2001:db8:1:1::/64: its share.
    // (The sidecar closes them at the 5 s head timeout; what follows takes
    // well under a second.)
    let port = HEALTH_PORT.to_string();
    let per_source = PER_SOURCE.to_string();
    let log = host.path("holder.log");
    let holder = host.ns.spawn(
        "8 idle connections",
        python(),
        &["-c", HOLD, SIDECAR_IP, &port, FIRST_ADDRESS, &per_source],
        &log,
    );
    host.apps.push(holder);
    wait_for(
        "8 connections held from 2001:db8:1:1::a",
        Duration::from_secs(5),
        || host.context(),
        || {
            fs::read_to_string(&log)
                .ok()?
                .contains("held 8")
                .then_some(())
        },
    );

    // A 9th from another address of the same /64: closed at once.
    let ninth = host.ns.run(
        python(),
        &["-c", CONNECT_IDLE, SIDECAR_IP, &port, SECOND_ADDRESS, "3"],
    );
    assert!(ninth.status.success(), "{}", text(&ninth.stderr));
    assert_eq!(
        text(&ninth.stdout).trim(),
        "closed",
        "a 9th connection from {SECOND_ADDRESS}, the same /64 as the 8 held, was not closed\n{}",
        host.context()
    );

    // The 8 are still held: the 9th was refused, not let in in their place.
    assert_eq!(
        established_from(&host, FIRST_ADDRESS),
        PER_SOURCE,
        "{}",
        host.ns.sh("ss -Htna")
    );

    // Meanwhile another /64 is served.
    let other = host.ns.curl_with(
        &["--interface", OTHER_PREFIX_ADDRESS],
        &format!("http://{health}/live"),
        3,
    );
    assert_eq!(
        other.status,
        Some(200),
        "{other:?} from {OTHER_PREFIX_ADDRESS}, another /64\n{}",
        host.context()
    );
}

/// A namespace whose loopback holds the sidecar's address and the callers',
/// and `appid proxy` in it (uid 1337, a default-deny policy) with its
/// health port on `[::]:15191`, ready.
fn sidecar_with_health_port_on_ipv6() -> Host {
    let mut host = Host::new("ipv6-sources");
    // nodad: usable at once, without duplicate address detection.
    for address in [
        SIDECAR_IP,
        FIRST_ADDRESS,
        SECOND_ADDRESS,
        OTHER_PREFIX_ADDRESS,
    ] {
        host.ns
            .sh(&format!("ip -6 addr add {address}/64 dev lo nodad"));
    }

    let pki = temp_dir();
    let ca = Ca::init(&pki.path().join("ca"), TRUST_DOMAIN);
    let cert = ca.issue(&pki.path().join("pod"), "pod", &["app=pod"], &[]);
    host.put("ca.pem", &fs::read(ca.bundle()).expect("read bundle"));
    host.put("cert.pem", &fs::read(&cert.cert).expect("read cert"));
    host.put("key.pem", &fs::read(&cert.key).expect("read key"));
    host.put("policy.yaml", DENY_ALL.as_bytes());
    let config = format!(
        r#"identity: {{ cert: cert.pem, key: key.pem, bundle: ca.pem }}
trust_domains: [{TRUST_DOMAIN}]
policy: policy.yaml
inbound:
  - listen: "127.0.0.1:15106"
    forward: "127.0.0.1:8080"
admin: "{ADMIN}"
health: "[::]:{HEALTH_PORT}"
audit_log: audit.jsonl
workers: 2
"#
    );
    host.put("proxy.yaml", config.as_bytes());
    let config = host.path("proxy.yaml");
    host.start_sidecar_with(&config, &[]);
    host.ns.wait_listening(HEALTH_PORT);
    host
}

/// How many connections from `source` to the health port are established
/// (on the caller's side: the sidecar has not closed them).
fn established_from(host: &Host, source: &str) -> usize {
    let local = format!("[{source}]:");
    let peer = format!("[{SIDECAR_IP}]:{HEALTH_PORT}");
    host.ns
        .sh("ss -Htn state established")
        .lines()
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // Recv-Q Send-Q Local Peer
            fields.len() >= 4 && fields[2].starts_with(&local) && fields[3] == peer
        })
        .count()
}
