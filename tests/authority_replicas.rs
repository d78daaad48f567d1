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

#[path = "support/mod.rs"]
mod support;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::net::{free_port, http_status, local};
use support::pki::{APPID, Ca, appid};

const TRUST_DOMAIN: &str = "prod.example";
const CERT_TTL: &str = "4s";
const READY_LIMIT: Duration = Duration::from_secs(20);

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// A child process killed (SIGKILL) on drop, its output in `log`.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(mut command: Command, log: PathBuf) -> Proc {
        let file = std::fs::File::create(&log).expect("create log");
        let child = command
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn appid");
        Proc { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `appid authority serve --dir <ca>` on `port`, once it accepts.
fn replica(ca: &Ca, port: u16, name: &str) -> Proc {
    replica_with_ttl(ca, port, name, CERT_TTL)
}

/// The same, issuing certificates that live `ttl`.
fn replica_with_ttl(ca: &Ca, port: u16, name: &str, ttl: &str) -> Proc {
    let mut command = Command::new(APPID);
    command.args(["authority", "serve", "--dir", path_str(&ca.dir)]);
    command.args(["--listen", &format!("127.0.0.1:{port}"), "--cert-ttl", ttl]);
    let proc = Proc::spawn(command, ca.dir.join(format!("{name}.log")));
    let start = Instant::now();
    while std::net::TcpStream::connect(local(port)).is_err() {
        assert!(
            start.elapsed() < READY_LIMIT,
            "replica {name} not listening:\n{}",
            proc.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    proc
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
    let mut command = Command::new(APPID);
    command.arg("proxy").arg("--config").arg(&config);
    let sidecar = Proc::spawn(command, dir.join("sidecar.log"));
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

/// Issue "authority at scale", item 5: while 200 workloads renew through
/// three replicas (the sidecar's own client, real TLS), one replica is
/// killed with SIGKILL; every renewal succeeds through another and no
/// certificate expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_renewing_workloads_lose_nothing_when_a_replica_is_killed() {
    use appid_proxy::authority::client::{AuthorityClient, new_key_and_csr};
    use appid_proxy::authority::service::Proof;
    use appid_proxy::identity::verify::TrustBundle;
    use appid_proxy::sidecar::tls::LocalIdentity;
    const WORKLOADS: usize = 200;
    const ROUNDS: usize = 3;

    let temp = tempfile::tempdir().expect("temp dir");
    let ca = Ca::init(&temp.path().join("ca"), TRUST_DOMAIN);
    let ports = [free_port(), free_port(), free_port()];
    let mut replicas: Vec<Proc> = ports
        .iter()
        .enumerate()
        .map(|(i, port)| replica_with_ttl(&ca, *port, &format!("replica-{i}"), "1h"))
        .collect();
    let urls: Vec<String> = ports
        .iter()
        .map(|p| format!("https://127.0.0.1:{p}"))
        .collect();
    let bundle =
        TrustBundle::from_pem_file(&ca.bundle(), vec![TRUST_DOMAIN.into()]).expect("ca.pem");

    // 200 workloads, each with its first certificate.
    let mut workloads = Vec::new();
    for i in 0..WORKLOADS {
        let id = format!("spiffe://{TRUST_DOMAIN}/w/{i}");
        let token = appid(&[
            "authority",
            "register",
            "--dir",
            path_str(&ca.dir),
            "--id",
            &id,
        ])
        .stdout;
        let token = String::from_utf8(token).expect("UTF-8").trim().to_owned();
        let client = AuthorityClient::with_replicas(&urls, bundle.clone()).expect("client");
        let fresh = new_key_and_csr().expect("key");
        let issued = client
            .attest(&fresh.csr_pem, Proof::JoinToken { token }, None)
            .await
            .unwrap_or_else(|e| panic!("attest {id}: {e}"));
        let identity = LocalIdentity::from_pem(
            "cert",
            issued.certificate.as_bytes(),
            "key",
            fresh.key_pem.as_bytes(),
            &bundle,
        )
        .expect("issued identity");
        workloads.push((client, identity));
    }

    // Every workload renews ROUNDS times, spread out; replica 0 (the one
    // each client prefers first) dies during the first round.
    let bundle = std::sync::Arc::new(bundle);
    let mut tasks = Vec::new();
    for (n, (client, mut identity)) in workloads.into_iter().enumerate() {
        let bundle = bundle.clone();
        tasks.push(tokio::spawn(async move {
            for round in 0..ROUNDS {
                let spread = Duration::from_millis((n as u64 * 7 + round as u64 * 13) % 400);
                tokio::time::sleep(spread).await;
                let fresh = new_key_and_csr().map_err(|e| e.to_string())?;
                let issued = client
                    .renew(&fresh.csr_pem, identity.certified.clone(), None)
                    .await
                    .map_err(|e| format!("workload {n}, round {round}: {e}"))?;
                identity = LocalIdentity::from_pem(
                    "cert",
                    issued.certificate.as_bytes(),
                    "key",
                    fresh.key_pem.as_bytes(),
                    &bundle,
                )
                .map_err(|e| e.to_string())?;
            }
            Ok::<i64, String>(identity.not_after)
        }));
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    replicas[0].kill();

    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut failures = Vec::new();
    for task in tasks {
        match task.await.expect("task") {
            Ok(not_after) => assert!(not_after > now, "an expired certificate"),
            Err(e) => failures.push(e),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {WORKLOADS} workloads failed a renewal:\n{}\n--- replica 1 ---\n{}",
        failures.len(),
        failures.join("\n"),
        replicas[1].log()
    );
    let renewed = std::fs::read_to_string(ca.dir.join("audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("\"renew\""))
        .count();
    assert!(
        renewed >= WORKLOADS * ROUNDS,
        "the authorities recorded {renewed} renewals"
    );
}
