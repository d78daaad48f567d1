//! Federation across trust domains, end to end: two authorities (an "AWS"
//! and a "GCP" trust domain), each publishing its bundle at a SPIFFE bundle
//! endpoint (GCP: `https_web`, a Web PKI certificate made with openssl;
//! AWS: `https_spiffe`, its own SVID) and fetching the other's; their
//! sidecars call each other both ways, and policy selects peers by
//! `trust_domain`.
//!
//! ```text
//!   aws.example                                   gcp.example
//!   web ─────────────── mTLS ───────────────────▶ api   (rule foreign-web-to-api)
//!   api ◀────────────── mTLS ──────────────────── web
//!   authority ◀── bundle endpoints (JWKS) ──────▶ authority
//!
//!   other.example: trusts gcp.example, but nobody trusts it
//!   web ─────────────── mTLS ──────── refused ──▶ gcp api (wrong_trust_domain)
//! ```
//!
//! Then the AWS CA rotates (prepare, activate, retire): the GCP sidecars
//! learn the new AWS root through the two authorities, traffic both ways
//! goes on with AWS certificates of the new CA, and GCP's `https_spiffe`
//! fetches follow the AWS endpoint onto its new SVID.

#[path = "support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;

use support::apps::HttpApp;
use support::authority::{self, Proc, sidecar, verifies_with, wait_ready, wait_until};
use support::net::{free_port, http_get, http_status, local};
use support::pki::{Ca, appid};

const CERT_TTL: &str = "6s";

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A web CA and a `localhost` server certificate it signed (openssl), as a
/// public CA would issue for a bundle endpoint's DNS name.
fn web_pki(dir: &Path) {
    let p = |name: &str| dir.join(name).to_str().expect("UTF-8").to_string();
    run(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &p("webca.key"),
            "-out",
            &p("webca.pem"),
            "-days",
            "1",
            "-subj",
            "/CN=federation test web CA",
        ],
    );
    run(
        "openssl",
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &p("web.key"),
            "-out",
            &p("web.csr"),
            "-subj",
            "/CN=localhost",
        ],
    );
    std::fs::write(
        dir.join("web.ext"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("ext");
    run(
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            &p("web.csr"),
            "-CA",
            &p("webca.pem"),
            "-CAkey",
            &p("webca.key"),
            "-CAcreateserial",
            "-out",
            &p("web.pem"),
            "-days",
            "1",
            "-extfile",
            &p("web.ext"),
        ],
    );
}

/// Policy of one trust domain: its web may call the other domain's api,
/// and the other domain's web may call its api under `/v1/`; any web may
/// read any api's `/health` by a rule that names no trust domain, which
/// admits only webs of the local one. Nothing else.
fn policy(dir: &Path, name: &str, foreign: &str) -> std::path::PathBuf {
    let path = dir.join(format!("{name}-policy.yaml"));
    std::fs::write(
        &path,
        format!(
            "version: 1
default: deny
rules:
  - name: web-calls-foreign-api
    action: allow
    from: {{ labels.app: web }}
    to: {{ trust_domain: {foreign}, labels.app: api }}
  - name: foreign-web-to-api
    action: allow
    from: {{ trust_domain: {foreign}, labels.app: web }}
    to: {{ labels.app: api }}
    http: {{ paths: [\"/v1/**\"] }}
  - name: web-reads-health
    action: allow
    from: {{ labels.app: web }}
    to: {{ labels.app: api }}
    http: {{ paths: [/health] }}
"
        ),
    )
    .expect("policy");
    path
}

/// The status of `GET /v1/x` through an outbound listener (`None`: the
/// connection was refused or closed without an answer).
async fn status_through(outbound: SocketAddr) -> Option<u16> {
    http_status(outbound, "/v1/x").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_trust_domains_call_each_other_through_federated_bundles() {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path();
    web_pki(dir);
    let aws_ca = Ca::init(&dir.join("aws-ca"), "aws.example");
    let gcp_ca = Ca::init(&dir.join("gcp-ca"), "gcp.example");
    let other_ca = Ca::init(&dir.join("other-ca"), "other.example");

    // Each authority publishes its bundle and fetches the other's. GCP's
    // endpoint is `https_web` (a web certificate for `localhost`); AWS's
    // is `https_spiffe` (its own SVID), which GCP authenticates with a
    // bundle fetched once out of band.
    let (aws_endpoint, gcp_endpoint) = (free_port(), free_port());
    // The AWS authority's API: GCP's also follows its revocations.
    let aws_port = free_port();
    let fetch_gcp = format!(
        "  - {{ trust_domain: gcp.example, url: \"https://localhost:{gcp_endpoint}\", web_roots: webca.pem }}\n"
    );
    let aws_yaml = format!(
        "bundle_endpoint: {{ listen: \"127.0.0.1:{aws_endpoint}\", profile: https_spiffe, refresh_hint: 1s }}\n\
         federates_with:\n{fetch_gcp}"
    );
    let gcp_yaml = format!(
        "bundle_endpoint: {{ listen: \"127.0.0.1:{gcp_endpoint}\", cert: web.pem, key: web.key, refresh_hint: 1s }}\n\
         federates_with:\n  - {{ trust_domain: aws.example, url: \"https://127.0.0.1:{aws_endpoint}\", \
         profile: https_spiffe, bundle: aws-bundle.json, \
         revocations_url: \"https://127.0.0.1:{aws_port}\" }}\n"
    );
    // other.example trusts gcp.example; nobody trusts other.example.
    let other_yaml = format!("federates_with:\n{fetch_gcp}");
    for (name, yaml) in [("aws", aws_yaml), ("gcp", gcp_yaml), ("other", other_yaml)] {
        std::fs::write(dir.join(format!("{name}-federation.yaml")), yaml).expect("federation");
    }
    let serve = |ca: &Ca, name: &str| {
        let file = dir.join(format!("{name}-federation.yaml"));
        authority::serve(
            ca,
            &["--cert-ttl", CERT_TTL, "--federation", path_str(&file)],
            dir.join(format!("{name}-authority.log")),
        )
    };
    let aws_file = dir.join("aws-federation.yaml");
    let aws = authority::serve_on(
        &aws_ca,
        aws_port,
        &["--cert-ttl", CERT_TTL, "--federation", path_str(&aws_file)],
        dir.join("aws-authority.log"),
    );
    let aws_url = format!("https://127.0.0.1:{aws_port}");

    // The out-of-band step of https_spiffe: GCP's operator fetches AWS's
    // bundle once (here `curl -k`, as over a trusted path) for the file.
    let curl = |args: &[&str]| Command::new("curl").args(args).output().expect("curl");
    let aws_jwks = {
        let url = format!("https://127.0.0.1:{aws_endpoint}/");
        let mut tries = 0;
        loop {
            let out = curl(&["-sS", "--fail", "-k", &url]);
            if out.status.success() {
                break out.stdout;
            }
            tries += 1;
            assert!(
                tries < 100,
                "curl -k {url}: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                aws.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    std::fs::write(dir.join("aws-bundle.json"), &aws_jwks).expect("bootstrap bundle");
    let (gcp, gcp_url) = serve(&gcp_ca, "gcp");
    let (other, other_url) = serve(&other_ca, "other");

    // The bundle endpoints, as any HTTPS client sees them: SPIFFE bundles
    // (JWKS) holding each domain's CA.
    let gcp_jwks = curl(&[
        "-sS",
        "--fail",
        "--cacert",
        path_str(&dir.join("webca.pem")),
        &format!("https://localhost:{gcp_endpoint}/"),
    ]);
    assert!(
        gcp_jwks.status.success(),
        "curl: {}\n{}",
        String::from_utf8_lossy(&gcp_jwks.stderr),
        gcp.log()
    );
    let aws_pem = std::fs::read_to_string(aws_ca.bundle()).expect("ca.pem");
    let gcp_pem = std::fs::read_to_string(gcp_ca.bundle()).expect("ca.pem");
    for (jwks, pem) in [(&aws_jwks, &aws_pem), (&gcp_jwks.stdout, &gcp_pem)] {
        let jwks: serde_json::Value = serde_json::from_slice(jwks).expect("JSON");
        assert_eq!(jwks["spiffe_refresh_hint"], 1, "{jwks}");
        assert_eq!(jwks["keys"][0]["use"], "x509-svid", "{jwks}");
        assert_eq!(jwks["keys"][0]["kty"], "EC", "{jwks}");
        let x5c = base64::engine::general_purpose::STANDARD
            .decode(jwks["keys"][0]["x5c"][0].as_str().expect("x5c"))
            .expect("base64");
        assert_eq!(
            x5c,
            rustls_pki_types::pem::PemObject::from_pem_slice(pem.as_bytes())
                .map(|c: rustls_pki_types::CertificateDer<'static>| c.to_vec())
                .expect("PEM"),
            "the endpoint serves its domain's CA"
        );
    }
    // https_spiffe: the AWS endpoint presents the AWS authority's SVID.
    let presented = Command::new("bash")
        .args([
            "-c",
            &format!(
                "openssl s_client -connect 127.0.0.1:{aws_endpoint} </dev/null 2>/dev/null \
                 | openssl x509 -noout -ext subjectAltName"
            ),
        ])
        .output()
        .expect("openssl");
    let presented = String::from_utf8_lossy(&presented.stdout).into_owned();
    assert!(
        presented.contains("URI:spiffe://aws.example/appid/authority"),
        "{presented}"
    );

    // Apps and sidecars.
    let aws_app = HttpApp::start().await;
    let gcp_app = HttpApp::start().await;
    let aws_policy = policy(dir, "aws", "gcp.example");
    let gcp_policy = policy(dir, "gcp", "aws.example");
    let other_policy = policy(dir, "other", "gcp.example");
    let (aws_api_in, gcp_api_in) = (free_port(), free_port());
    let (aws_web_out, gcp_web_out, gcp_web_home, other_web_out) =
        (free_port(), free_port(), free_port(), free_port());
    let inbound = |port: u16, app: SocketAddr| {
        format!("inbound: [{{ listen: \"127.0.0.1:{port}\", forward: \"{app}\" }}]")
    };
    let outbound = |pairs: &[(u16, u16)]| {
        let entries: Vec<String> = pairs
            .iter()
            .map(|(from, to)| {
                format!("{{ listen: \"127.0.0.1:{from}\", upstream: \"127.0.0.1:{to}\" }}")
            })
            .collect();
        format!("outbound: [{}]", entries.join(", "))
    };
    // One directory per trust domain: sidecar files are named by service.
    let aws_dir = dir.join("aws");
    let gcp_dir = dir.join("gcp");
    let other_dir = dir.join("other");
    for d in [&aws_dir, &gcp_dir, &other_dir] {
        std::fs::create_dir(d).expect("mkdir");
    }
    let (aws_api, aws_api_admin) = sidecar(
        &aws_dir,
        &aws_ca,
        &aws_url,
        "api",
        &inbound(aws_api_in, aws_app.addr),
        &aws_policy,
    );
    let (aws_web, aws_web_admin) = sidecar(
        &aws_dir,
        &aws_ca,
        &aws_url,
        "web",
        &outbound(&[(aws_web_out, gcp_api_in)]),
        &aws_policy,
    );
    let (gcp_api, gcp_api_admin) = sidecar(
        &gcp_dir,
        &gcp_ca,
        &gcp_url,
        "api",
        &inbound(gcp_api_in, gcp_app.addr),
        &gcp_policy,
    );
    // The GCP web calls the AWS api, and (to show the trust domain rule
    // at work) its own domain's api.
    let (gcp_web, gcp_web_admin) = sidecar(
        &gcp_dir,
        &gcp_ca,
        &gcp_url,
        "web",
        &outbound(&[(gcp_web_out, aws_api_in), (gcp_web_home, gcp_api_in)]),
        &gcp_policy,
    );
    let (other_web, other_web_admin) = sidecar(
        &other_dir,
        &other_ca,
        &other_url,
        "web",
        &outbound(&[(other_web_out, gcp_api_in)]),
        &other_policy,
    );
    let sidecars: [(&str, &Proc, SocketAddr); 5] = [
        ("aws api", &aws_api, aws_api_admin),
        ("aws web", &aws_web, aws_web_admin),
        ("gcp api", &gcp_api, gcp_api_admin),
        ("gcp web", &gcp_web, gcp_web_admin),
        ("other web", &other_web, other_web_admin),
    ];
    for (_, proc, admin) in &sidecars {
        wait_ready(*admin, proc).await;
    }
    let context = || {
        let mut text = String::new();
        for (name, proc) in [("aws authority", &aws), ("gcp authority", &gcp)] {
            text += &format!("--- {name} ---\n{}\n", proc.log());
        }
        for (name, proc, _) in &sidecars {
            text += &format!("--- {name} ---\n{}\n", proc.log());
        }
        text
    };

    // Every sidecar comes to trust the federated domain (the authority
    // fetched it; the sidecar's bundle poll brought it).
    wait_until(
        "every sidecar to trust its federated trust domain",
        Duration::from_secs(20),
        context,
        || {
            sidecars
                .iter()
                .all(|(_, proc, _)| proc.count("trust bundle changed") >= 1)
        },
    )
    .await;

    // Both ways across the trust domains: allowed, by the trust domain rule.
    assert_eq!(
        status_through(local(aws_web_out)).await,
        Some(200),
        "{}",
        context()
    );
    assert_eq!(
        status_through(local(gcp_web_out)).await,
        Some(200),
        "{}",
        context()
    );
    // The api sides' audit lines name the peer and the trust domain rule.
    let audit_has = |path: std::path::PathBuf, peer: &'static str| {
        move || {
            std::fs::read_to_string(&path)
                .unwrap_or_default()
                .lines()
                .any(|l| l.contains(peer) && l.contains("foreign-web-to-api"))
        }
    };
    wait_until(
        "the GCP api's audit line for the AWS web",
        Duration::from_secs(10),
        context,
        audit_has(
            gcp_dir.join("api-audit.jsonl"),
            "\"spiffe://aws.example/web\"",
        ),
    )
    .await;
    wait_until(
        "the AWS api's audit line for the GCP web",
        Duration::from_secs(10),
        context,
        audit_has(
            aws_dir.join("api-audit.jsonl"),
            "\"spiffe://gcp.example/web\"",
        ),
    )
    .await;

    // Inside GCP: the rule names the AWS trust domain, so GCP's web may
    // not call GCP's api; denied by default.
    assert_eq!(
        status_through(local(gcp_web_home)).await,
        Some(403),
        "{}",
        context()
    );
    // A rule that names no trust domain speaks for the local one only:
    // GCP's web may read GCP's `/health`, AWS's web (whose authority
    // vouched for `app: web` too) may not, though its sidecar lets it try
    // (its own rule names gcp.example).
    assert_eq!(
        http_status(local(gcp_web_home), "/health").await,
        Some(200),
        "{}",
        context()
    );
    assert_eq!(
        http_status(local(aws_web_out), "/health").await,
        Some(403),
        "{}",
        context()
    );
    wait_until(
        "the GCP api's audit line for the AWS web's /health",
        Duration::from_secs(10),
        context,
        || {
            std::fs::read_to_string(gcp_dir.join("api-audit.jsonl"))
                .unwrap_or_default()
                .lines()
                .any(|l| {
                    l.contains("\"spiffe://aws.example/web\"")
                        && l.contains("/health")
                        && l.contains("another trust domain")
                })
        },
    )
    .await;

    // other.example: it trusts GCP, GCP does not trust it. GCP's api
    // refuses the handshake for the trust domain.
    assert_ne!(status_through(local(other_web_out)).await, Some(200));
    // The sidecar counts the failure after its alert is sent: the caller
    // can see the refusal first.
    support::poll_until(
        "GCP's api to count the wrong trust domain",
        Duration::from_secs(5),
        context,
        || async {
            let metrics = http_get(gcp_api_admin, "/metrics").await?;
            metrics
                .lines()
                .any(|l| {
                    l.starts_with("appid_handshake_failures_total")
                        && l.contains("reason=\"wrong_trust_domain\"")
                        && !l.ends_with(" 0")
                })
                .then_some(())
        },
    )
    .await;
    assert!(
        !std::fs::read_to_string(gcp_dir.join("api-audit.jsonl"))
            .unwrap_or_default()
            .contains("spiffe://other.example"),
        "no decision is made for an untrusted domain: the handshake fails first"
    );

    // The AWS CA rotates. GCP's sidecars learn the prepared AWS root from
    // the GCP authority (which fetched it from the AWS bundle endpoint)
    // before it signs anything.
    let gcp_changes = |proc: &Proc| proc.count("trust bundle changed");
    let (api_before, web_before) = (gcp_changes(&gcp_api), gcp_changes(&gcp_web));
    let said = String::from_utf8(
        appid(&["authority", "ca", "rotate", "--dir", path_str(&aws_ca.dir)]).stdout,
    )
    .expect("UTF-8");
    assert!(said.contains("prepared a new CA"), "{said}");
    wait_until(
        "GCP's sidecars to trust the prepared AWS CA",
        Duration::from_secs(20),
        context,
        || gcp_changes(&gcp_api) > api_before && gcp_changes(&gcp_web) > web_before,
    )
    .await;
    let said = String::from_utf8(
        appid(&[
            "authority",
            "ca",
            "rotate",
            "--dir",
            path_str(&aws_ca.dir),
            "--propagation",
            "1s",
        ])
        .stdout,
    )
    .expect("UTF-8");
    assert!(said.contains("the new CA signs"), "{said}");
    let new_aws_ca = dir.join("aws-new-ca.pem");
    std::fs::copy(aws_ca.bundle(), &new_aws_ca).expect("copy");
    assert_ne!(
        std::fs::read(&new_aws_ca).unwrap(),
        aws_pem.as_bytes(),
        "the activation changed ca.pem"
    );
    wait_until(
        "both AWS sidecars to renew onto the new AWS CA",
        Duration::from_secs(20),
        context,
        || {
            verifies_with(&new_aws_ca, &aws_dir.join("web-state/identity.pem"))
                && verifies_with(&new_aws_ca, &aws_dir.join("api-state/identity.pem"))
        },
    )
    .await;
    // New connections both ways, with AWS certificates of the new CA.
    let both_ways = || async {
        for _ in 0..3 {
            assert_eq!(
                status_through(local(aws_web_out)).await,
                Some(200),
                "{}",
                context()
            );
            assert_eq!(
                status_through(local(gcp_web_out)).await,
                Some(200),
                "{}",
                context()
            );
        }
    };
    both_ways().await;

    // Retire the old AWS CA. GCP's authority goes on fetching over
    // https_spiffe: the AWS endpoint's SVID was re-issued by the new CA,
    // and GCP authenticates it with the bundle it fetched last.
    let fetch_failures = || gcp.count("federated bundle fetch failed");
    let failures_before = fetch_failures();
    // Read before the rotation: GCP may fetch the new bundle before
    // `rotate` returns.
    let fetched = || gcp.count("federated bundle updated");
    let fetched_before = fetched();
    let said = String::from_utf8(
        appid(&[
            "authority",
            "ca",
            "rotate",
            "--dir",
            path_str(&aws_ca.dir),
            "--force",
        ])
        .stdout,
    )
    .expect("UTF-8");
    assert!(said.contains("retired"), "{said}");
    wait_until(
        "GCP's authority to fetch the one-CA AWS bundle",
        Duration::from_secs(20),
        context,
        || fetched() > fetched_before,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(fetch_failures(), failures_before, "{}", gcp.log());
    both_ways().await;

    // AWS revokes its web. GCP's authority follows AWS's revocations
    // (`revocations_url`) and hands them to its sidecars, so GCP's api
    // holds AWS's web as revoked and refuses it; GCP's web calling AWS's
    // api is not affected.
    //
    // The proof of propagation is GCP's api holding the ID: the reason a
    // call is refused races the revoked web's own certificate, which it
    // can no longer renew and which expires within one `CERT_TTL` of the
    // revocation, while the ID reaches GCP's api up to two polls (GCP's
    // authority's and its sidecar's) after it. That a sidecar refuses a
    // peer on its revocation list is tested in `tests/authority.rs`
    // (`revoked_workload_is_refused_by_its_peers_within_a_few_polls`).
    appid(&[
        "authority",
        "revoke",
        "--dir",
        path_str(&aws_ca.dir),
        "--id",
        "spiffe://aws.example/web",
    ]);
    wait_until(
        "GCP's api to hold the revoked AWS web",
        Duration::from_secs(20),
        context,
        || gcp_api.count("revocation list changed count=1") > 0,
    )
    .await;
    support::poll_until(
        "GCP's api to refuse the revoked AWS web",
        Duration::from_secs(20),
        context,
        || async { (status_through(local(aws_web_out)).await != Some(200)).then_some(()) },
    )
    .await;
    assert_eq!(
        status_through(local(gcp_web_out)).await,
        Some(200),
        "{}",
        context()
    );

    // Outbound, the caller's own sidecar refuses a foreign callee that only
    // a rule naming no trust domain would admit: without
    // `web-calls-foreign-api`, GCP's web may not call AWS's api, though
    // `web-reads-health` (callee `app: api`) matches AWS's api's labels.
    let text = std::fs::read_to_string(&gcp_policy).expect("GCP policy");
    let without = text.replace(
        "  - name: web-calls-foreign-api\n    action: allow\n    from: { labels.app: web }\n    \
         to: { trust_domain: aws.example, labels.app: api }\n",
        "",
    );
    assert_ne!(without, text, "the rule to remove is in the policy");
    let reloads = gcp_web.count("policy reloaded");
    std::fs::write(&gcp_policy, without).expect("rewrite GCP policy");
    wait_until(
        "GCP's web to reload its policy",
        Duration::from_secs(10),
        context,
        || gcp_web.count("policy reloaded") > reloads,
    )
    .await;
    for path in ["/v1/x", "/health"] {
        assert_ne!(
            http_status(local(gcp_web_out), path).await,
            Some(200),
            "{path}: {}",
            context()
        );
    }
    wait_until(
        "GCP's web to refuse AWS's api outbound, as another trust domain",
        Duration::from_secs(10),
        context,
        || {
            std::fs::read_to_string(gcp_dir.join("web-audit.jsonl"))
                .unwrap_or_default()
                .lines()
                .any(|l| {
                    l.contains("\"direction\":\"outbound\"")
                        && l.contains("\"decision\":\"deny\"")
                        && l.contains("\"spiffe://aws.example/api\"")
                        && l.contains("another trust domain")
                })
        },
    )
    .await;
    drop(other);
}

/// Sidecars with certificate files take federated roots from files
/// (`identity.federated`), here as `appid authority ca bundle` writes
/// them, and follow a change of those files without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_identities_trust_federated_bundle_files_and_follow_them() {
    use support::sidecar::SidecarBuilder;
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path();
    let aws_ca = Ca::init(&dir.join("aws-ca"), "aws.example");
    let gcp_ca = Ca::init(&dir.join("gcp-ca"), "gcp.example");
    let stranger_ca = Ca::init(&dir.join("stranger-ca"), "aws.example");
    let bundle_of = |ca: &Ca, format: &str, file: &str| {
        let out = appid(&[
            "authority",
            "ca",
            "bundle",
            "--dir",
            path_str(&ca.dir),
            "--format",
            format,
        ]);
        let path = dir.join(file);
        std::fs::write(&path, out.stdout).expect("bundle");
        path
    };
    // GCP's api trusts, for aws.example, a CA that is not AWS's (a stale
    // or wrong file); AWS's web trusts GCP's real CA, as PEM.
    let aws_for_gcp = bundle_of(&stranger_ca, "spiffe", "aws-for-gcp.json");
    let gcp_for_aws = bundle_of(&gcp_ca, "pem", "gcp-for-aws.pem");
    let web_cert = aws_ca.issue(&dir.join("web"), "web", &["app=web"], &[]);
    let api_cert = gcp_ca.issue(&dir.join("api"), "api", &["app=api"], &[]);
    let app = HttpApp::start().await;
    let (api_in, web_out) = (free_port(), free_port());
    let api = SidecarBuilder::new(
        "api",
        dir,
        &api_cert,
        &gcp_ca.bundle(),
        "gcp.example",
        &policy(dir, "gcp", "aws.example"),
    )
    .federated("aws.example", &aws_for_gcp)
    .inbound(api_in, app.addr)
    .start()
    .await;
    let web = SidecarBuilder::new(
        "web",
        dir,
        &web_cert,
        &aws_ca.bundle(),
        "aws.example",
        &policy(dir, "aws", "gcp.example"),
    )
    .federated("gcp.example", &gcp_for_aws)
    .outbound(web_out, local(api_in))
    .start()
    .await;

    // The api's roots for aws.example are not the ones AWS's web chains
    // to: refused at the handshake.
    assert_ne!(status_through(local(web_out)).await, Some(200));
    // Counted after the alert is sent: the caller can see the refusal first.
    support::poll_until(
        "the api to count the bad chain",
        Duration::from_secs(5),
        || api.context(),
        || async {
            (api.metric(
                "appid_handshake_failures_total{direction=\"inbound\",reason=\"bad_chain\"}",
            )
            .await
                >= 1.0)
                .then_some(())
        },
    )
    .await;

    // The right bundle, renamed over the file: trusted within a poll.
    let fresh = bundle_of(&aws_ca, "spiffe", "aws-fresh.json");
    std::fs::rename(&fresh, &aws_for_gcp).expect("rename");
    support::poll_until(
        "the api to trust AWS's real CA",
        Duration::from_secs(10),
        || format!("{}\n{}", api.context(), web.context()),
        || async { (status_through(local(web_out)).await == Some(200)).then_some(()) },
    )
    .await;
    api.wait_audit("the AWS web allowed by the trust domain rule", |line| {
        line.to_string().contains("spiffe://aws.example/web")
            && line.to_string().contains("foreign-web-to-api")
    })
    .await;
}

/// An HTTPS bundle endpoint of our own on `localhost` (the web certificate
/// of [`web_pki`]) that serves `jwks` and counts the requests it answers.
async fn counting_bundle_endpoint(
    dir: &Path,
    jwks: String,
) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use rustls_pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let chain: Vec<_> = rustls_pki_types::CertificateDer::pem_file_iter(dir.join("web.pem"))
        .expect("web.pem")
        .map(Result::unwrap)
        .collect();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_file(dir.join("web.key")).expect("web.key");
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = served.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, count, jwks) = (acceptor.clone(), count.clone(), jwks.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
                    match tls.read(&mut byte).await {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{jwks}",
                    jwks.len()
                );
                if tls.write_all(response.as_bytes()).await.is_ok() {
                    count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                let _ = tls.shutdown().await;
            });
        }
    });
    (port, served)
}

/// `federates_with[].refresh` is the interval when given: of two endpoints
/// whose bundles both say "come back in an hour" (`spiffe_refresh_hint`),
/// the one with `refresh: 1s` is fetched every second, the other once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_is_the_fetch_interval_whatever_the_hint() {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path();
    web_pki(dir);
    let aws_ca = Ca::init(&dir.join("aws-ca"), "aws.example");
    let mut endpoints = Vec::new();
    for domain in ["gcp.example", "azure.example"] {
        let ca = Ca::init(&dir.join(domain), domain);
        let out = appid(&["authority", "ca", "bundle", "--dir", path_str(&ca.dir)]);
        let mut jwks: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JWKS");
        jwks["spiffe_refresh_hint"] = serde_json::json!(3600);
        endpoints.push(counting_bundle_endpoint(dir, jwks.to_string()).await);
    }
    let (refreshed, hinted) = (&endpoints[0], &endpoints[1]);
    let yaml = format!(
        "federates_with:\n\
         \x20 - {{ trust_domain: gcp.example, url: \"https://localhost:{}\", web_roots: webca.pem, refresh: 1s }}\n\
         \x20 - {{ trust_domain: azure.example, url: \"https://localhost:{}\", web_roots: webca.pem }}\n",
        refreshed.0, hinted.0
    );
    let file = dir.join("aws-federation.yaml");
    std::fs::write(&file, yaml).expect("federation");
    let (aws, _) = authority::serve(
        &aws_ca,
        &["--federation", path_str(&file)],
        dir.join("aws-authority.log"),
    );
    let count =
        |served: &std::sync::atomic::AtomicUsize| served.load(std::sync::atomic::Ordering::SeqCst);
    let started = std::time::Instant::now();
    while count(&refreshed.1) < 4 {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the `refresh: 1s` endpoint was fetched {} times\n{}",
            count(&refreshed.1),
            aws.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        count(&hinted.1),
        1,
        "the endpoint without `refresh` follows its hour-long hint\n{}",
        aws.log()
    );
}

/// A trust domain's aliases (an old and a new name during a rename): a
/// sidecar whose `trust_domains` lists both, with both CAs in its bundle,
/// takes a peer of either as its own authority's. A rule naming no trust
/// domain admits such a peer both ways (AWS's peer above was refused by
/// one); without the aliases in `trust_domains` it would be foreign.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_of_one_of_our_trust_domains_needs_no_rule_naming_it() {
    use support::sidecar::SidecarBuilder;
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path();
    let new_ca = Ca::init(&dir.join("new-ca"), "new.example");
    let old_ca = Ca::init(&dir.join("old-ca"), "old.example");
    let bundle = dir.join("both.pem");
    let mut pem = std::fs::read(new_ca.bundle()).expect("new CA");
    pem.extend(std::fs::read(old_ca.bundle()).expect("old CA"));
    std::fs::write(&bundle, pem).expect("bundle");
    let domains = "new.example, old.example";
    let web_cert = old_ca.issue(&dir.join("web"), "web", &["app=web"], &[]);
    let api_cert = new_ca.issue(&dir.join("api"), "api", &["app=api"], &[]);
    let write_policy = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("policy");
        path
    };
    let api_policy = write_policy(
        "api-policy.yaml",
        "version: 1\nrules:\n  - name: web-reads-v1\n    action: allow\n    \
         from: { labels.app: web }\n    to: { labels.app: api }\n    http: { paths: [\"/v1/**\"] }\n",
    );
    let web_policy = write_policy(
        "web-policy.yaml",
        "version: 1\nrules:\n  - name: web-calls-api\n    action: allow\n    \
         from: { labels.app: web }\n    to: { labels.app: api }\n",
    );
    let app = HttpApp::start().await;
    let (api_in, web_out) = (free_port(), free_port());
    let api = SidecarBuilder::new("api", dir, &api_cert, &bundle, domains, &api_policy)
        .inbound(api_in, app.addr)
        .start()
        .await;
    let web = SidecarBuilder::new("web", dir, &web_cert, &bundle, domains, &web_policy)
        .outbound(web_out, local(api_in))
        .start()
        .await;

    let context = || format!("{}\n{}", web.context(), api.context());
    assert_eq!(
        status_through(local(web_out)).await,
        Some(200),
        "{}",
        context()
    );
    assert_eq!(
        http_status(local(web_out), "/admin").await,
        Some(403),
        "{}",
        context()
    );
    api.wait_audit(
        "web's call allowed by the rule naming no trust domain",
        |line| {
            line["peer_id"] == "spiffe://old.example/web"
                && line["rule"] == "web-reads-v1"
                && line["decision"] == "allow"
        },
    )
    .await;
    web.wait_audit("the call to api allowed outbound", |line| {
        line["peer_id"] == "spiffe://new.example/api"
            && line["rule"] == "web-calls-api"
            && line["decision"] == "allow"
    })
    .await;
    let lines = [web.audit_lines(), api.audit_lines()].concat();
    assert!(
        !lines
            .iter()
            .any(|line| line.to_string().contains("another trust domain")),
        "{}",
        context()
    );

    // `appid policy replay` of the api's log re-decides alike when given
    // the sidecar's trust domains; without them the old name is foreign
    // and web's allowed calls would change (exit 1).
    let replay = |extra: &[&str]| {
        let (policy, audit) = (api_policy.to_str().unwrap(), dir.join("api-audit.jsonl"));
        let mut args = vec!["policy", "replay", policy, audit.to_str().unwrap()];
        args.extend(extra);
        let out = Command::new(support::pki::APPID)
            .args(&args)
            .output()
            .expect("run appid policy replay");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, report) = replay(&[
        "--trust-domain",
        "new.example",
        "--trust-domain",
        "old.example",
    ]);
    assert_eq!(code, Some(0), "{report}");
    // Or read from the api sidecar's own config.
    let api_config = dir.join("api-proxy.yaml");
    let (code, report) = replay(&["--config", api_config.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{report}");
    let (code, report) = replay(&[]);
    assert_eq!(code, Some(1), "{report}");
    assert!(report.contains("another trust domain"), "{report}");
}
