//! The authority on PostgreSQL, end to end: real `appid authority serve`
//! replicas sharing one database (in a throw-away cluster of this test
//! binary, `tests/support/postgres.rs`) and one CA directory, changed by
//! the real CLI (`register`/`import-scan`/`revoke --database`), asked by the
//! sidecar's own verifying client over real TLS.
//!
//! Covered:
//! - Three replicas started at once on an empty database (they race to
//!   migrate it) all serve; 50 concurrent redemptions of ONE join token,
//!   spread over the three, issue exactly one certificate: one `issue` and
//!   49 `refuse` ("already used") lines over the replicas' audit logs, and
//!   one row in `issued`.
//! - A revocation made with `appid authority revoke --database` is enforced
//!   by a replica that was running (renewal refused with 403, the ID in its
//!   revocation list) and by one started after it (connected through the
//!   unix socket); `register` refuses the revoked ID.
//! - A certificate issued by one replica renews at another, with the counts
//!   of a scan imported meanwhile with `import-scan --database`.
//! - Trust on first use across replicas: one Kubernetes service-account
//!   token (no fixtures needed) and one AWS instance identity document
//!   (`../shared/fixtures`; skipped without, required under `CI=true`),
//!   each sent 12 times at once over the three replicas, attest exactly
//!   once.
//! - TLS to the database (`sslmode=require&sslrootcert=…`, a cluster of
//!   its own with `ssl=on`): the session is encrypted (`pg_stat_ssl`), and
//!   a server certificate from another CA is refused.
//! - A replica whose database session is ended by the server (as by a
//!   restart or failover) answers the next request on a new connection.
//! - `--database` errors: a non-PostgreSQL URL, an unreachable server and a
//!   missing database each fail with a message naming the flag and what to
//!   do, and the password never shows (nor in the replicas' logs).
//!
//! The database URL carries a password the cluster never asks for (trust
//! authentication), only to check it is never printed.

#[path = "support/mod.rs"]
mod support;

#[path = "k8s_cluster.rs"]
mod k8s_cluster;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use appid_proxy::authority::client::{AuthorityClient, ClientError, new_key_and_csr};
use appid_proxy::authority::service::{IssuedResponse, Proof};
use appid_proxy::identity::verify::TrustBundle;
use appid_proxy::sidecar::tls::LocalIdentity;

use support::net::free_port;
use support::pki::APPID;
use support::postgres::Postgres;

const TRUST_DOMAIN: &str = "prod.example";
/// Never asked for (trust authentication); must never be printed.
const PASSWORD: &str = "pg-sekrit-7f3a";
const READY_LIMIT: Duration = Duration::from_secs(20);

fn id(path: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/{path}")
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temp path")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A CA directory and a fresh database in the shared cluster, or `None`
/// (the reason printed) without PostgreSQL outside CI.
struct Setup {
    temp: tempfile::TempDir,
    ca_dir: PathBuf,
    /// The database URL, with the password.
    url: String,
    /// The same database through the cluster's unix socket.
    socket_url: String,
}

impl Setup {
    async fn new() -> Option<Setup> {
        // The cluster's own client blocks: not on a runtime thread.
        let (url, socket_dir, port) = tokio::task::spawn_blocking(|| {
            Postgres::shared().map(|cluster| {
                let url = cluster.create_database("authority");
                (url, cluster.socket_dir().to_path_buf(), cluster.port())
            })
        })
        .await
        .expect("create the database")?;
        let database = url.rsplit('/').next().expect("a database name").to_string();
        // The socket is `<dir>/.s.PGSQL.<port>`.
        let socket_url = format!(
            "postgres://postgres@{}:{port}/{database}",
            path_str(&socket_dir).replace('/', "%2F")
        );
        Some(Setup::on(&url, socket_url))
    }

    /// A CA directory for the database at `url` (the password is added).
    fn on(url: &str, socket_url: String) -> Setup {
        let url = url.replacen("postgres@", &format!("postgres:{PASSWORD}@"), 1);
        let temp = tempfile::tempdir().expect("temp dir");
        let ca_dir = temp.path().join("ca");
        let out = Command::new(APPID)
            .args(["authority", "init", "--trust-domain", TRUST_DOMAIN, "--dir"])
            .arg(&ca_dir)
            .output()
            .expect("run appid");
        assert!(out.status.success(), "{}", text(&out.stderr));
        Setup {
            temp,
            ca_dir,
            url,
            socket_url,
        }
    }

    /// `appid authority <args> --dir CA --database URL`, to completion.
    fn cli(&self, args: &[&str]) -> Output {
        let out = Command::new(APPID)
            .arg("authority")
            .args(args)
            .args(["--dir", path_str(&self.ca_dir), "--database", &self.url])
            .output()
            .expect("run appid");
        let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert!(!all.contains(PASSWORD), "the password was printed: {all}");
        out
    }

    /// [`Self::cli`], which must succeed.
    fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "appid authority {}: {}",
            args.join(" "),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// Registers `path` with a join token; the token.
    fn register(&self, path: &str) -> String {
        let token = self.cli_ok(&["register", "--id", &id(path), "--label", "app=web"]);
        token.trim().to_string()
    }

    fn bundle(&self) -> TrustBundle {
        TrustBundle::from_pem_file(&self.ca_dir.join("ca.pem"), vec![TRUST_DOMAIN.into()])
            .expect("ca.pem")
    }

    /// One number from the database.
    async fn count(&self, sql: &str) -> i64 {
        let (url, sql) = (self.url.clone(), sql.to_string());
        tokio::task::spawn_blocking(move || {
            let mut client = postgres::Client::connect(&url, postgres::NoTls).expect("connect");
            client
                .query_one(&sql, &[])
                .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
                .get::<_, i64>(0)
        })
        .await
        .expect("query")
    }
}

/// One `appid authority serve` replica on the shared database (given in
/// `APPID_AUTHORITY_DATABASE`, as from a Kubernetes Secret), with its own
/// audit log; killed on drop.
struct Replica {
    name: String,
    child: Child,
    port: u16,
    log: PathBuf,
    audit: PathBuf,
}

impl Replica {
    fn spawn(setup: &Setup, name: &str, extra: &[&str]) -> Replica {
        let port = free_port();
        let log = setup.temp.path().join(format!("{name}.log"));
        let audit = setup.temp.path().join(format!("{name}-audit.jsonl"));
        let child = Command::new(APPID)
            .args(["authority", "serve", "--dir", path_str(&setup.ca_dir)])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--audit-log", path_str(&audit)])
            .args(extra)
            .env("APPID_AUTHORITY_DATABASE", &setup.url)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("create log"))
            .spawn()
            .expect("spawn appid authority serve");
        Replica {
            name: name.to_string(),
            child,
            port,
            log,
            audit,
        }
    }

    /// Waits until it answers over verified TLS.
    async fn ready(&mut self, setup: &Setup) {
        let client = self.client(setup);
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!(
                    "{} exited at startup ({status}):\n{}",
                    self.name,
                    self.logs()
                );
            }
            match client.revocations().await {
                Ok(_) => break,
                Err(e) if start.elapsed() > READY_LIMIT => {
                    panic!("{} not serving ({e}):\n{}", self.name, self.logs())
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        let logs = self.logs();
        assert!(!logs.contains(PASSWORD), "password in the log:\n{logs}");
        assert!(
            logs.contains("database=PostgreSQL postgres://postgres"),
            "the log does not say which database:\n{logs}"
        );
    }

    async fn start(setup: &Setup, name: &str, extra: &[&str]) -> Replica {
        let mut replica = Replica::spawn(setup, name, extra);
        replica.ready(setup).await;
        replica
    }

    fn client(&self, setup: &Setup) -> AuthorityClient {
        AuthorityClient::new(&format!("https://127.0.0.1:{}", self.port), setup.bundle())
            .expect("authority client")
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its audit lines with `event`.
    fn count_events(&self, event: &str) -> usize {
        std::fs::read_to_string(&self.audit)
            .unwrap_or_default()
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| serde_json::from_str::<Value>(line).expect("audit line is JSON"))
            .filter(|line| line["event"] == event)
            .count()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Three replicas, spawned at once (so they open the database together).
async fn three_replicas(setup: &Setup, extra: &[&str]) -> Vec<Replica> {
    let mut replicas: Vec<Replica> = ["a", "b", "c"]
        .into_iter()
        .map(|name| Replica::spawn(setup, &format!("replica-{name}"), extra))
        .collect();
    for replica in &mut replicas {
        replica.ready(setup).await;
    }
    replicas
}

fn logs(replicas: &[Replica]) -> String {
    replicas
        .iter()
        .map(|r| format!("--- {}:\n{}", r.name, r.logs()))
        .collect()
}

/// Sends `proof` `attempts` times at once, round-robin over `replicas`,
/// each with its own key and CSR; the outcomes.
async fn attest_at_once(
    setup: &Setup,
    replicas: &[Replica],
    attempts: usize,
    proof: Proof,
) -> Vec<Result<IssuedResponse, ClientError>> {
    let barrier = Arc::new(tokio::sync::Barrier::new(attempts));
    let tasks: Vec<_> = (0..attempts)
        .map(|i| {
            let client = replicas[i % replicas.len()].client(setup);
            let (proof, barrier) = (proof.clone(), barrier.clone());
            tokio::spawn(async move {
                let fresh = new_key_and_csr().expect("key and CSR");
                barrier.wait().await;
                client.attest(&fresh.csr_pem, proof, None).await
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.expect("task"));
    }
    outcomes
}

/// Exactly one of `outcomes` issued (for `expected_id`); every other one is
/// a 401 refusal mentioning `why`.
fn assert_exactly_once(
    outcomes: &[Result<IssuedResponse, ClientError>],
    expected_id: &str,
    why: &str,
    replicas: &[Replica],
) {
    let mut issued = Vec::new();
    for outcome in outcomes {
        match outcome {
            Ok(response) => issued.push(response.id.clone()),
            Err(ClientError::Refused {
                status: 401,
                message,
            }) if message.contains(why) => {}
            Err(e) => panic!("unexpected outcome: {e}\n{}", logs(replicas)),
        }
    }
    assert_eq!(issued, vec![expected_id.to_string()], "{}", logs(replicas));
    let issue_lines: usize = replicas.iter().map(|r| r.count_events("issue")).sum();
    let refuse_lines: usize = replicas.iter().map(|r| r.count_events("refuse")).sum();
    assert_eq!(issue_lines, 1);
    assert_eq!(refuse_lines, outcomes.len() - 1);
    for replica in replicas {
        assert!(
            replica.count_events("issue") + replica.count_events("refuse") > 0,
            "{} answered none of the requests",
            replica.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_redemptions_of_one_token_over_three_replicas_issue_one_certificate() {
    const ATTEMPTS: usize = 50;
    let Some(setup) = Setup::new().await else {
        return;
    };
    // Started together on the empty database: they race to migrate it.
    let replicas = three_replicas(&setup, &[]).await;
    assert_eq!(
        setup
            .count("SELECT COUNT(*) FROM appid_schema_migrations")
            .await,
        1
    );
    let web = id("ns/shop/sa/web");
    let token = setup.register("ns/shop/sa/web");
    assert!(token.starts_with("appid-jt-"), "{token}");

    let outcomes = attest_at_once(&setup, &replicas, ATTEMPTS, Proof::JoinToken { token }).await;
    assert_exactly_once(&outcomes, &web, "already used", &replicas);
    assert_eq!(setup.count("SELECT COUNT(*) FROM issued").await, 1);
    assert_eq!(
        setup
            .count("SELECT COUNT(*) FROM join_tokens WHERE consumed_at IS NOT NULL")
            .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_through_the_cli_reaches_running_and_new_replicas() {
    let Some(setup) = Setup::new().await else {
        return;
    };
    let web = id("ns/shop/sa/web");
    let token = setup.register("ns/shop/sa/web");
    let running = Replica::start(&setup, "running", &[]).await;
    let client = running.client(&setup);

    let fresh = new_key_and_csr().expect("key and CSR");
    let issued = client
        .attest(&fresh.csr_pem, Proof::JoinToken { token }, None)
        .await
        .expect("attest with the join token");
    let current = LocalIdentity::from_pem(
        "issued",
        issued.certificate.as_bytes(),
        "key",
        fresh.key_pem.as_bytes(),
        &setup.bundle(),
    )
    .expect("the issued certificate loads");
    let renew = |client: AuthorityClient| {
        let current = current.certified.clone();
        async move {
            let next = new_key_and_csr().expect("key and CSR");
            client.renew(&next.csr_pem, current, None).await
        }
    };
    renew(client.clone())
        .await
        .expect("renewal before the revocation");

    let out = setup.cli_ok(&["revoke", "--id", &web]);
    assert!(out.contains("revoked"), "{out}");

    // The running replica: renewal refused, the ID in its list.
    match renew(client.clone()).await {
        Err(ClientError::Refused {
            status: 403,
            message,
        }) if message.contains("revoked") => {}
        other => panic!(
            "renewal after the revocation: {other:?}\n{}",
            running.logs()
        ),
    }
    // Its revocation list (what sidecars poll) says so within the
    // replica's cache time (`REVOCATIONS_CACHE`, 1 s).
    let polled = Instant::now();
    while client.revocations().await.unwrap().revoked != vec![web.clone()] {
        assert!(
            polled.elapsed() < Duration::from_secs(3),
            "the revocation list did not follow\n{}",
            running.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A replica started after it (on the same database through the
    // cluster's unix socket; `--database` wins over the environment): the
    // same.
    let later = Replica::start(&setup, "later", &["--database", &setup.socket_url]).await;
    assert!(
        later.logs().contains("%2F"),
        "not on the socket:\n{}",
        later.logs()
    );
    let later_client = later.client(&setup);
    match renew(later_client.clone()).await {
        Err(ClientError::Refused {
            status: 403,
            message,
        }) if message.contains("revoked") => {}
        other => panic!("renewal at a new replica: {other:?}\n{}", later.logs()),
    }
    assert_eq!(
        later_client.revocations().await.unwrap().revoked,
        vec![web.clone()]
    );
    assert_eq!(running.count_events("refuse"), 1);
    assert_eq!(later.count_events("refuse"), 1);

    // Revoked stays revoked: no new token, and revoking again says so.
    let again = setup.cli(&["register", "--id", &web]);
    assert!(!again.status.success());
    assert!(text(&again.stderr).contains("is revoked"), "{again:?}");
    let out = setup.cli_ok(&["revoke", "--id", &web]);
    assert!(out.contains("already revoked"), "{out}");
    assert_eq!(setup.count("SELECT COUNT(*) FROM revocations").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_service_account_token_attests_once_over_three_replicas() {
    use k8s_cluster::{Cluster, K8S_AUDIENCE, K8S_ISSUER};
    let Some(setup) = Setup::new().await else {
        return;
    };
    let cluster = Cluster::new();
    let jwks = setup.temp.path().join("jwks.json");
    std::fs::write(&jwks, &cluster.jwks).unwrap();
    let replicas = three_replicas(
        &setup,
        &[
            "--k8s-jwks",
            path_str(&jwks),
            "--k8s-issuer",
            K8S_ISSUER,
            "--k8s-audience",
            K8S_AUDIENCE,
        ],
    )
    .await;
    setup.cli_ok(&[
        "register",
        "--k8s-namespace",
        "shop",
        "--k8s-service-account",
        "web",
        "--label",
        "app=web",
    ]);
    let token = cluster.token("shop", "web", "web-1", K8S_AUDIENCE);
    let outcomes = attest_at_once(&setup, &replicas, 12, Proof::K8sPsat { token }).await;
    assert_exactly_once(
        &outcomes,
        &id("ns/shop/sa/web"),
        "already redeemed",
        &replicas,
    );
    assert_eq!(setup.count("SELECT COUNT(*) FROM k8s_tokens").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_cloud_instance_attests_once_over_three_replicas() {
    let Some(fixtures) = support::shared_fixtures() else {
        eprintln!("skipping: ../shared/fixtures not found (the real AWS document)");
        return;
    };
    let Some(setup) = Setup::new().await else {
        return;
    };
    let certs = fixtures.join("aws-iid/certs");
    let replicas = three_replicas(&setup, &["--aws-certs", path_str(&certs)]).await;
    setup.cli_ok(&[
        "register",
        "--id",
        &id("vm/web"),
        "--label",
        "app=vm",
        "--cloud-match",
        "provider=aws",
        "--cloud-match",
        "account=189292791360",
        "--cloud-match",
        "region=ap-southeast-2",
    ]);
    let dir = fixtures.join("aws-iid/ap-southeast-2-2026");
    let proof = Proof::AwsIid {
        document: std::fs::read_to_string(dir.join("document.json")).unwrap(),
        kind: "signature".into(),
        signature: std::fs::read_to_string(dir.join("signature.b64"))
            .unwrap()
            .trim()
            .into(),
        region: "ap-southeast-2".into(),
    };
    let outcomes = attest_at_once(&setup, &replicas, 12, proof).await;
    assert_exactly_once(&outcomes, &id("vm/web"), "already attested", &replicas);
    assert_eq!(setup.count("SELECT COUNT(*) FROM cloud_instances").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_rides_out_the_loss_of_its_database_connection() {
    let Some(setup) = Setup::new().await else {
        return;
    };
    let token = setup.register("ns/shop/sa/web");
    let replica = Replica::start(&setup, "replica", &[]).await;
    let client = replica.client(&setup);
    for round in 0..2 {
        // The server ends the replica's session, as a restart or a
        // failover of the database does.
        let ended = setup
            .count(
                "SELECT COUNT(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE application_name = 'appid-authority' AND datname = current_database()) AS t",
            )
            .await;
        assert_eq!(ended, 1, "round {round}: the replica holds one connection");
        // The next request goes through on a new connection: no 503.
        if round == 0 {
            let fresh = new_key_and_csr().expect("key and CSR");
            let issued = client
                .attest(
                    &fresh.csr_pem,
                    Proof::JoinToken {
                        token: token.clone(),
                    },
                    None,
                )
                .await
                .unwrap_or_else(|e| panic!("attest after the loss: {e}\n{}", replica.logs()));
            assert_eq!(issued.id, id("ns/shop/sa/web"));
        } else {
            client
                .revocations()
                .await
                .unwrap_or_else(|e| panic!("revocations after the loss: {e}\n{}", replica.logs()));
        }
    }
    assert_eq!(setup.count("SELECT COUNT(*) FROM issued").await, 1);
}

/// The `vulns` claims of an issued certificate.
fn vulns_of(issued: &IssuedResponse) -> Value {
    use appid_proxy::identity::{files, inspect::CertInfo};
    let der =
        files::parse_certs(Path::new("issued"), issued.certificate.as_bytes()).expect("issued PEM");
    let claims = CertInfo::from_der("issued", &der[0])
        .expect("issued certificate")
        .claims
        .expect("AppID claims");
    serde_json::to_value(claims).expect("claims JSON")["vulns"].clone()
}

/// Writes a Trivy report with `high` HIGH and `critical` CRITICAL findings.
fn trivy_report(path: &Path, high: usize, critical: usize) {
    let findings: Vec<Value> = (0..high + critical)
        .map(|n| {
            serde_json::json!({"VulnerabilityID": format!("CVE-2024-{:05}", 20000 + n),
                "PkgName": format!("lib{n}"), "InstalledVersion": "1.0",
                "Severity": if n < high { "HIGH" } else { "CRITICAL" }})
        })
        .collect();
    let report = serde_json::json!({
        "SchemaVersion": 2,
        "ArtifactName": "registry.example/web:1.4",
        "ArtifactType": "container_image",
        "Results": [{"Target": "web", "Class": "os-pkgs", "Type": "alpine",
            "Vulnerabilities": findings}]
    });
    std::fs::write(path, report.to_string()).expect("write the report");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_one_replica_renews_at_another_with_the_newest_scan() {
    let Some(setup) = Setup::new().await else {
        return;
    };
    let digest = format!("sha256:{}", "c".repeat(64));
    let report = setup.temp.path().join("trivy.json");
    trivy_report(&report, 1, 0);
    setup.cli_ok(&["import-scan", path_str(&report), "--image-digest", &digest]);
    let token = setup.cli_ok(&[
        "register",
        "--id",
        &id("ns/shop/sa/web"),
        "--label",
        "app=web",
        "--image-digest",
        &digest,
    ]);
    let replicas = [
        Replica::start(&setup, "first", &[]).await,
        Replica::start(&setup, "second", &[]).await,
    ];
    let fresh = new_key_and_csr().expect("key and CSR");
    let issued = replicas[0]
        .client(&setup)
        .attest(
            &fresh.csr_pem,
            Proof::JoinToken {
                token: token.trim().to_string(),
            },
            None,
        )
        .await
        .expect("attest at the first replica");
    assert_eq!(vulns_of(&issued)["high"], 1, "{}", vulns_of(&issued));

    // A new scan, imported through the CLI; the renewal at the other
    // replica knows the serial the first one recorded, and the new counts.
    trivy_report(&report, 1, 2);
    setup.cli_ok(&["import-scan", path_str(&report), "--image-digest", &digest]);
    let current = LocalIdentity::from_pem(
        "issued",
        issued.certificate.as_bytes(),
        "key",
        fresh.key_pem.as_bytes(),
        &setup.bundle(),
    )
    .expect("the issued certificate loads");
    let next = new_key_and_csr().expect("key and CSR");
    let renewed = replicas[1]
        .client(&setup)
        .renew(&next.csr_pem, current.certified.clone(), None)
        .await
        .unwrap_or_else(|e| panic!("renew at the second replica: {e}\n{}", logs(&replicas)));
    assert_eq!(vulns_of(&renewed)["critical"], 2, "{}", vulns_of(&renewed));
    assert_eq!(setup.count("SELECT COUNT(*) FROM issued").await, 2);
}

/// A CA certificate and key (PEM), and a server certificate for 127.0.0.1
/// it signed with its key.
fn tls_pki() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().expect("server key");
    let server = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .expect("server params")
        .signed_by(&server_key, &issuer)
        .expect("server certificate");
    (ca_cert.pem(), server.pem(), server_key.serialize_pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_reaches_its_database_over_verified_tls() {
    let (ca_pem, cert_pem, key_pem) = tls_pki();
    let (other_ca, _, _) = tls_pki();
    // A cluster of its own, serving TLS.
    let Some((cluster, url)) = tokio::task::spawn_blocking(move || {
        let cluster = Postgres::start_with_tls(&cert_pem, &key_pem)?;
        let url = cluster.create_database("tls");
        Some((cluster, url))
    })
    .await
    .expect("start the TLS cluster") else {
        return;
    };
    let mut setup = Setup::on(&url, String::new());
    let (ca_file, other_file) = (
        setup.temp.path().join("db-ca.pem"),
        setup.temp.path().join("other-ca.pem"),
    );
    std::fs::write(&ca_file, ca_pem).unwrap();
    std::fs::write(&other_file, other_ca).unwrap();
    let plain = setup.url.clone();
    let with =
        |mode: &str, ca: &Path| format!("{plain}?sslmode={mode}&sslrootcert={}", path_str(ca));

    // Verified against another CA: refused, saying why.
    setup.url = with("verify-full", &other_file);
    let out = setup.cli(&["register", "--id", &id("web")]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "connected with the wrong CA");
    assert!(
        stderr.contains("cannot connect") && stderr.contains("TLS"),
        "{stderr}"
    );

    // With the right one: registration, a replica, an attestation.
    setup.url = with("require", &ca_file);
    let token = setup.register("ns/shop/sa/web");
    let replica = Replica::start(&setup, "replica", &[]).await;
    let fresh = new_key_and_csr().expect("key and CSR");
    let issued = replica
        .client(&setup)
        .attest(&fresh.csr_pem, Proof::JoinToken { token }, None)
        .await
        .unwrap_or_else(|e| panic!("attest over TLS: {e}\n{}", replica.logs()));
    assert_eq!(issued.id, id("ns/shop/sa/web"));
    // The server saw the replica's session encrypted (asked in plain).
    setup.url = plain;
    assert_eq!(
        setup
            .count(
                "SELECT COUNT(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid)
                 WHERE application_name = 'appid-authority' AND ssl"
            )
            .await,
        1,
        "{}",
        cluster.log()
    );
    drop(replica);
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_errors_name_the_flag_and_never_the_password() {
    let Some(setup) = Setup::new().await else {
        return;
    };
    let run = |args: &[&str], database: &str| {
        let out = Command::new(APPID)
            .arg("authority")
            .args(args)
            .args(["--dir", path_str(&setup.ca_dir), "--database", database])
            .output()
            .expect("run appid");
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{args:?} {database}: succeeded");
        assert!(!stderr.contains(PASSWORD), "password printed: {stderr}");
        assert!(stderr.contains("--database "), "{stderr}");
        stderr
    };
    let serve = ["serve", "--listen", "127.0.0.1:0"];

    let stderr = run(
        &["revoke", "--id", &id("web")],
        &format!("mysql://appid:{PASSWORD}@127.0.0.1/appid"),
    );
    assert!(stderr.contains("not a PostgreSQL URL"), "{stderr}");
    assert!(stderr.contains("postgres://USER"), "{stderr}");

    // Nothing listens on a port just found free.
    let closed = free_port();
    let stderr = run(
        &serve,
        &format!("postgres://appid:{PASSWORD}@127.0.0.1:{closed}/appid"),
    );
    assert!(
        stderr.contains(&format!("postgres://appid:***@127.0.0.1:{closed}/appid"))
            && stderr.contains("cannot connect"),
        "{stderr}"
    );

    // The server is there, the database is not.
    let missing = setup.url.replace("/authority_", "/missing_");
    let stderr = run(&["register", "--id", &id("web")], &missing);
    assert!(
        stderr.contains("cannot connect") && stderr.contains("does not exist"),
        "{stderr}"
    );
    assert!(stderr.contains("createdb"), "{stderr}");
}

/// While 200 workloads renew through three replicas on one database (the
/// sidecar's own client, with every replica's URL, real TLS), one replica
/// is killed with SIGKILL: every renewal succeeds through another and no
/// certificate expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_renewing_workloads_lose_nothing_when_a_replica_is_killed() {
    const WORKLOADS: usize = 200;
    const ROUNDS: usize = 3;
    let Some(setup) = Setup::new().await else {
        return;
    };
    let mut replicas = three_replicas(&setup, &["--cert-ttl", "1h"]).await;
    let urls: Vec<String> = replicas
        .iter()
        .map(|r| format!("https://127.0.0.1:{}", r.port))
        .collect();
    let bundle = setup.bundle();

    // 200 workloads, each with its first certificate.
    let mut workloads = Vec::new();
    for i in 0..WORKLOADS {
        let token = setup.register(&format!("w/{i}"));
        let client = AuthorityClient::with_replicas(&urls, bundle.clone()).expect("client");
        let fresh = new_key_and_csr().expect("key");
        let issued = client
            .attest(&fresh.csr_pem, Proof::JoinToken { token }, None)
            .await
            .unwrap_or_else(|e| panic!("attest w/{i}: {e}"));
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

    // Each renews ROUNDS times, spread out; replica a (the one every client
    // tries first) dies during the first round.
    let bundle = Arc::new(bundle);
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
    let _ = replicas[0].child.kill();
    let _ = replicas[0].child.wait();

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
        "{} of {WORKLOADS} workloads failed a renewal:\n{}\n{}",
        failures.len(),
        failures.join("\n"),
        logs(&replicas[1..])
    );
    let renewed: usize = replicas.iter().map(|r| r.count_events("renew")).sum();
    assert!(
        renewed >= WORKLOADS * ROUNDS,
        "the replicas recorded {renewed} renewals\n{}",
        logs(&replicas[1..])
    );
    // The next replica in the list took over.
    assert!(
        replicas[1].count_events("renew") >= WORKLOADS,
        "{} took over only {} renewals",
        replicas[1].name,
        replicas[1].count_events("renew")
    );
}
