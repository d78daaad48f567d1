//! A sidecar over several authority replicas (`identity.authority.urls`):
//! when the replica it uses is killed (`kill -9`), its next renewal goes to
//! another, and it never stops being ready.
//!
//! ```text
//!  appid authority serve --dir ca :A ─┐  one CA, one database
//!  appid authority serve --dir ca :B ─┘  (SQLite in WAL mode on one machine;
//!                                        tests/authority_postgres.rs runs
//!                                        replicas on PostgreSQL)
//!  appid proxy  (urls: [A, B], certificates of 4 s, renewed every ~2 s)
//! ```
//!
//! (`tests/authority_postgres.rs` also kills a replica while 200 workloads
//! renew through three.)

#[path = "support/mod.rs"]
mod support;

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use support::authority::{self, Proc, READY_LIMIT};
use support::net::{free_port, http_status, local};
use support::pki::{Ca, appid};

const TRUST_DOMAIN: &str = "prod.example";
const CERT_TTL: &str = "4s";

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// `appid authority serve --dir <ca>` on `port`, once it accepts.
fn replica(ca: &Ca, port: u16, name: &str) -> Proc {
    authority::serve_on(
        ca,
        port,
        &["--cert-ttl", CERT_TTL],
        ca.dir.join(format!("{name}.log")),
    )
}

/// The lines of `log` that say a certificate was renewed.
fn renewals(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("certificate renewed"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_fail_over_to_another_replica_and_the_sidecar_stays_ready() {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path();
    let ca = Ca::init(&dir.join("ca"), TRUST_DOMAIN);
    let token = appid(&[
        "authority",
        "register",
        "--dir",
        path_str(&ca.dir),
        "--id",
        "spiffe://prod.example/web",
    ])
    .stdout;
    let token_file = dir.join("join-token");
    std::fs::write(&token_file, token).expect("write token");
    std::fs::write(
        dir.join("policy.yaml"),
        "version: 1\ndefault: deny\nrules: []\n",
    )
    .expect("policy");

    let (port_a, port_b) = (free_port(), free_port());
    let mut a = replica(&ca, port_a, "replica-a");
    let b = replica(&ca, port_b, "replica-b");

    let q = |p: &Path| serde_json::to_string(path_str(p)).expect("JSON string");
    let admin = local(free_port());
    let mut yaml = String::new();
    writeln!(yaml, "identity:").unwrap();
    writeln!(yaml, "  authority:").unwrap();
    writeln!(
        yaml,
        "    urls: [\"https://127.0.0.1:{port_a}\", \"https://127.0.0.1:{port_b}\"]"
    )
    .unwrap();
    writeln!(yaml, "    bundle: {}", q(&ca.bundle())).unwrap();
    writeln!(yaml, "    join_token_file: {}", q(&token_file)).unwrap();
    writeln!(yaml, "trust_domains: [{TRUST_DOMAIN}]").unwrap();
    writeln!(yaml, "policy: {}", q(&dir.join("policy.yaml"))).unwrap();
    writeln!(
        yaml,
        "inbound: [{{ listen: \"127.0.0.1:{}\", forward: \"127.0.0.1:9\" }}]",
        free_port()
    )
    .unwrap();
    writeln!(yaml, "admin: \"{admin}\"").unwrap();
    writeln!(yaml, "audit_log: {}", q(&dir.join("audit.jsonl"))).unwrap();
    let config = dir.join("proxy.yaml");
    std::fs::write(&config, yaml).expect("write config");
    let sidecar = Proc::spawn(
        &["proxy", "--config", path_str(&config)],
        dir.join("sidecar.log"),
    );
    let context = |sidecar: &Proc| {
        format!(
            "--- sidecar ---\n{}\n--- replica b ---\n{}",
            sidecar.log(),
            b.log()
        )
    };
    let start = Instant::now();
    while http_status(admin, "/ready").await != Some(200) {
        assert!(
            start.elapsed() < READY_LIMIT,
            "sidecar not ready\n{}",
            context(&sidecar)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // It renews through A (the first URL) while A lives.
    let start = Instant::now();
    while renewals(&sidecar.log()) < 1 {
        assert!(
            start.elapsed() < READY_LIMIT,
            "no renewal\n{}",
            context(&sidecar)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A dies without a word; for three certificate lifetimes the sidecar
    // is ready at every look, renewing through B.
    a.kill();
    let before = renewals(&sidecar.log());
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(12) {
        assert_eq!(
            http_status(admin, "/ready").await,
            Some(200),
            "not ready {:?} after replica A was killed\n{}",
            watch.elapsed(),
            context(&sidecar)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = sidecar.log();
    assert!(
        renewals(&log) >= before + 3,
        "renewals after the kill: {}\n{}",
        renewals(&log) - before,
        context(&sidecar)
    );
    assert!(
        log.contains("authority replica answered; using it from now on"),
        "{}",
        context(&sidecar)
    );
}
