//! The authority's pod lookup end to end: the real `appid authority serve
//! --k8s-api` against a fake Kubernetes API server in this process (real
//! TLS with a test CA made by rcgen, a bearer token it checks, pod objects
//! in the exact shape the API server returns), with projected tokens signed
//! by the test cluster's key (`k8s_cluster.rs`).
//!
//! Covers: a pod the API server knows attests, and its certificate carries
//! the vouched pod facts (`k8s.namespace`, `.service_account`, `.pod`,
//! `.pod_uid`, `.node`, only the trusted `k8s.labels.*`, `k8s.images.*`),
//! the running digest as `image.digest` with the scan for it; the API server
//! saw the authority's bearer token; a token for a pod the API server does
//! not know, a pod re-created under the same name (uid mismatch) and a pod
//! running another image than its registration pins are refused, each
//! naming the pod; `--k8s-api` over plain http is refused at start; with
//! `--k8s-appid-digests` a container named as appid's proxy that runs
//! another image is no cover for it (no `image.digest`, no scan), without
//! the flag the authority warns, and a value that is no digest refuses.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use appid_proxy::authority::client::{AuthorityClient, new_key_and_csr};
use appid_proxy::authority::service::Proof;
use appid_proxy::identity::files;
use appid_proxy::identity::inspect::CertInfo;
use appid_proxy::identity::verify::TrustBundle;

#[path = "k8s_cluster.rs"]
mod k8s_cluster;
use k8s_cluster::{Cluster, K8S_AUDIENCE, K8S_ISSUER};

/// The token the fake API server accepts from the authority.
const API_TOKEN: &str = "authority-sa-token-0123456789";

fn appid() -> Command {
    Command::new(env!("CARGO_BIN_EXE_appid"))
}

fn run_ok(command: &mut Command) -> String {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// ---------------------------------------------------------------------------
// The fake API server.

/// What the fake API server serves and saw.
#[derive(Default)]
struct ApiState {
    /// `namespace/name` to the pod object.
    pods: BTreeMap<String, serde_json::Value>,
    /// `(path, authorization header)` of every request.
    requests: Vec<(String, String)>,
}

struct FakeApi {
    url: String,
    ca_pem: String,
    state: Arc<Mutex<ApiState>>,
}

impl FakeApi {
    /// Serves on 127.0.0.1 with a certificate for that IP from a fresh CA.
    fn start() -> FakeApi {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "kubernetes-test-ca");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let mut leaf_params =
            CertificateParams::new(vec!["kubernetes.default.svc".into()]).unwrap();
        leaf_params
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        let leaf = leaf_params
            .signed_by(&leaf_key, &Issuer::from_params(&ca_params, &ca_key))
            .unwrap();

        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                rustls_pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
            )
            .unwrap();
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(ApiState::default()));
        let shared = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (config, state) = (config.clone(), shared.clone());
                std::thread::spawn(move || serve_one(stream, config, &state));
            }
        });
        FakeApi {
            url,
            ca_pem: ca_cert.pem(),
            state,
        }
    }

    fn put_pod(&self, pod: serde_json::Value) {
        let key = format!(
            "{}/{}",
            pod["metadata"]["namespace"].as_str().unwrap(),
            pod["metadata"]["name"].as_str().unwrap()
        );
        self.state.lock().unwrap().pods.insert(key, pod);
    }
}

/// One request, answered as the API server does (JSON, `Status` on errors).
fn serve_one(
    stream: std::net::TcpStream,
    config: Arc<rustls::ServerConfig>,
    state: &Mutex<ApiState>,
) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let Ok(connection) = rustls::ServerConnection::new(config) else {
        return;
    };
    let mut tls = rustls::StreamOwned::new(connection, stream);
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
        match tls.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_owned();
    let path = request_line
        .split(' ')
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    let authorization = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default();
    let mut state = state.lock().unwrap();
    state.requests.push((path.clone(), authorization.clone()));
    let status_object = |code: u16, reason: &str, message: String| {
        serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": message, "reason": reason, "code": code})
    };
    let (code, body) = if authorization != format!("Bearer {API_TOKEN}") {
        (
            401,
            status_object(401, "Unauthorized", "Unauthorized".into()),
        )
    } else if let Some(key) = path
        .strip_prefix("/api/v1/namespaces/")
        .and_then(|rest| rest.split_once("/pods/"))
        .map(|(ns, name)| format!("{ns}/{name}"))
    {
        match state.pods.get(&key) {
            Some(pod) => (200, pod.clone()),
            None => {
                let name = key.split('/').nth(1).unwrap_or_default();
                (
                    404,
                    status_object(404, "NotFound", format!("pods \"{name}\" not found")),
                )
            }
        }
    } else {
        (
            404,
            status_object(
                404,
                "NotFound",
                "the server could not find the requested resource".into(),
            ),
        )
    };
    drop(state);
    let body = body.to_string();
    let reason = match code {
        200 => "OK",
        401 => "Unauthorized",
        _ => "Not Found",
    };
    let response = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tls.write_all(response.as_bytes());
    let _ = tls.flush();
    tls.conn.send_close_notify();
    let _ = tls.flush();
}

/// A pod object as `GET /api/v1/namespaces/NS/pods/NAME` returns it: an
/// injected pod whose app container `web` runs `registry.example/web` at
/// `digest` (hex), appid's containers as native sidecars.
fn pod_object(ns: &str, sa: &str, name: &str, uid: &str, digest: &str) -> serde_json::Value {
    serde_json::json!({
      "kind": "Pod",
      "apiVersion": "v1",
      "metadata": {
        "name": name,
        "generateName": "web-7d4b9c6f5-",
        "namespace": ns,
        "uid": uid,
        "resourceVersion": "48213",
        "creationTimestamp": "2026-01-12T09:30:11Z",
        "labels": {"app": "web", "version": "v2", "team": "shop", "pod-template-hash": "7d4b9c6f5"},
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d4b9c6f5",
          "uid": "0b9d0c5e-1f4a-4bb1-8a44-5b1f9c2e7d10", "controller": true, "blockOwnerDeletion": true}]
      },
      "spec": {
        "initContainers": [
          {"name": "appid-init", "image": "registry.example/appid:0.1.0"},
          {"name": "appid-proxy", "image": "registry.example/appid:0.1.0", "restartPolicy": "Always"}
        ],
        "containers": [{"name": "web", "image": "registry.example/web:1.4",
          "ports": [{"containerPort": 8080, "protocol": "TCP"}]}],
        "restartPolicy": "Always",
        "serviceAccountName": sa,
        "serviceAccount": sa,
        "nodeName": "node-1"
      },
      "status": {
        "phase": "Running",
        "hostIP": "10.0.0.11",
        "podIP": "10.244.1.23",
        "initContainerStatuses": [
          {"name": "appid-init", "ready": true, "restartCount": 0,
           "state": {"terminated": {"exitCode": 0, "reason": "Completed"}},
           "image": "registry.example/appid:0.1.0",
           "imageID": format!("registry.example/appid@sha256:{}", "1".repeat(64)),
           "containerID": "containerd://aa"},
          {"name": "appid-proxy", "ready": true, "restartCount": 0, "started": true,
           "state": {"running": {"startedAt": "2026-01-12T09:30:13Z"}},
           "image": "registry.example/appid:0.1.0",
           "imageID": format!("registry.example/appid@sha256:{}", "1".repeat(64)),
           "containerID": "containerd://bb"}
        ],
        "containerStatuses": [
          {"name": "web", "ready": true, "restartCount": 0, "started": true,
           "state": {"running": {"startedAt": "2026-01-12T09:30:18Z"}},
           "image": "registry.example/web:1.4",
           "imageID": format!("registry.example/web@sha256:{digest}"),
           "containerID": "containerd://cc"}
        ],
        "qosClass": "BestEffort"
      }
    })
}

// ---------------------------------------------------------------------------
// The authority.

struct Authority {
    _dir: tempfile::TempDir,
    ca_dir: PathBuf,
    url: String,
    child: Child,
}

impl Drop for Authority {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Authority {
    /// Stops the authority; what it wrote on stderr.
    fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut stderr = String::new();
        if let Some(mut pipe) = self.child.stderr.take() {
            pipe.read_to_string(&mut stderr).unwrap();
        }
        stderr
    }

    fn cli(&self, args: &[&str]) -> String {
        run_ok(
            appid()
                .arg("authority")
                .args(args)
                .arg("--dir")
                .arg(&self.ca_dir),
        )
    }

    /// Asks for a certificate with a projected token; the claims, or the
    /// refusal text.
    fn attest(&self, token: String) -> Result<serde_json::Value, String> {
        let bundle =
            TrustBundle::from_pem_file(&self.ca_dir.join("ca.pem"), vec!["prod.example".into()])
                .unwrap();
        let client = AuthorityClient::new(&self.url, bundle).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let fresh = new_key_and_csr().unwrap();
        let issued = runtime
            .block_on(client.attest(&fresh.csr_pem, Proof::K8sPsat { token }, None))
            .map_err(|e| e.to_string())?;
        let der = files::parse_certs(Path::new("issued"), issued.certificate.as_bytes()).unwrap();
        let claims = CertInfo::from_der("issued", &der[0])
            .unwrap()
            .claims
            .unwrap();
        Ok(serde_json::to_value(claims).unwrap())
    }
}

/// `appid authority serve` with `cluster`'s keys and `extra` arguments.
fn spawn_authority(cluster: &Cluster, extra: &[&str]) -> (Authority, Option<String>) {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    run_ok(
        appid()
            .args([
                "authority",
                "init",
                "--trust-domain",
                "prod.example",
                "--dir",
            ])
            .arg(&ca_dir),
    );
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, &cluster.jwks).unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = appid()
        .args(["authority", "serve", "--listen", &listen, "--dir"])
        .arg(&ca_dir)
        .arg("--k8s-jwks")
        .arg(&jwks)
        .args(["--k8s-issuer", K8S_ISSUER, "--k8s-audience", K8S_AUDIENCE])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if std::net::TcpStream::connect(&listen).is_ok() {
            let authority = Authority {
                _dir: dir,
                ca_dir,
                url: format!("https://{listen}"),
                child,
            };
            return (authority, None);
        }
        if let Ok(Some(_)) = child.try_wait() {
            let mut stderr = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut stderr)
                .unwrap();
            let authority = Authority {
                _dir: dir,
                ca_dir,
                url: String::new(),
                child,
            };
            return (authority, Some(stderr));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("authority did not start on {listen}");
}

/// An authority that looks pods up at `api`, trusting labels app,version.
fn start_authority(cluster: &Cluster, api: &FakeApi, dir: &Path) -> Authority {
    start_authority_with(cluster, api, dir, &[])
}

/// The same, with `extra` arguments.
fn start_authority_with(cluster: &Cluster, api: &FakeApi, dir: &Path, extra: &[&str]) -> Authority {
    let ca = dir.join("api-ca.pem");
    std::fs::write(&ca, &api.ca_pem).unwrap();
    let token = dir.join("api-token");
    std::fs::write(&token, format!("{API_TOKEN}\n")).unwrap();
    let mut args = vec![
        "--k8s-api",
        &api.url,
        "--k8s-api-ca",
        ca.to_str().unwrap(),
        "--k8s-api-token-file",
        token.to_str().unwrap(),
        "--k8s-trust-labels",
        "app,version",
    ];
    args.extend(extra);
    let (authority, failed) = spawn_authority(cluster, &args);
    assert_eq!(failed, None);
    authority
}

/// `pod` served by `api`, attested with its own token (service account
/// `web` of `shop`): the certificate's claims.
fn attest_pod(
    authority: &Authority,
    api: &FakeApi,
    cluster: &Cluster,
    pod: serde_json::Value,
) -> serde_json::Value {
    let name = pod["metadata"]["name"].as_str().unwrap().to_owned();
    api.put_pod(pod);
    authority
        .attest(cluster.token("shop", "web", &name, K8S_AUDIENCE))
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The scan of `digest` (one HIGH), imported into `authority`.
fn import_one_high(authority: &Authority, dir: &Path, digest: &str) {
    let report = dir.join("trivy.json");
    std::fs::write(
        &report,
        serde_json::json!({"SchemaVersion": 2, "ArtifactName": "registry.example/web:1.4",
            "ArtifactType": "container_image",
            "Results": [{"Target": "web", "Class": "os-pkgs", "Type": "alpine",
                "Vulnerabilities": [{"VulnerabilityID": "CVE-2024-20001", "PkgName": "libexample",
                    "InstalledVersion": "1.0", "Severity": "HIGH"}]}]})
        .to_string(),
    )
    .unwrap();
    authority.cli(&[
        "import-scan",
        report.to_str().unwrap(),
        "--image-digest",
        digest,
    ]);
}

#[test]
fn the_authority_vouches_for_the_pod_the_api_server_describes() {
    let cluster = Cluster::new();
    let api = FakeApi::start();
    let temp = tempfile::tempdir().unwrap();
    let authority = start_authority(&cluster, &api, temp.path());
    let running = "d".repeat(64);
    let digest = format!("sha256:{running}");

    // A scan of the image the pod runs, and the service account registered
    // without a digest: the API server says which image runs.
    import_one_high(&authority, temp.path(), &digest);
    authority.cli(&[
        "register",
        "--k8s-namespace",
        "shop",
        "--k8s-service-account",
        "web",
        "--label",
        "app=web",
    ]);

    let pod = "web-7d4b9c6f5-aaaaa";
    let object = pod_object("shop", "web", pod, &format!("uid-{pod}"), &running);
    let claims = attest_pod(&authority, &api, &cluster, object);
    assert_eq!(claims["id"], "spiffe://prod.example/ns/shop/sa/web");
    assert_eq!(claims["attestation"], "k8s_psat");
    let k8s = &claims["k8s"];
    assert_eq!(k8s["namespace"], "shop", "{claims}");
    assert_eq!(k8s["service_account"], "web");
    assert_eq!(k8s["pod"], pod);
    assert_eq!(k8s["pod_uid"], format!("uid-{pod}"));
    assert_eq!(k8s["node"], "node-1");
    // Only the trusted label keys; every container that runs is listed,
    // appid's proxy too (`appid-init` has finished).
    assert_eq!(
        k8s["labels"],
        serde_json::json!({"app": "web", "version": "v2"})
    );
    let proxy = format!("sha256:{}", "1".repeat(64));
    assert_eq!(
        k8s["images"],
        serde_json::json!({"web": digest, "appid-proxy": proxy})
    );
    // One app container: its digest is the image, with the scan for it.
    assert_eq!(claims["image"]["digest"], digest.as_str());
    assert_eq!(claims["vulns"]["high"], 1, "{claims}");
    assert_eq!(claims["labels"]["app"], "web");
    assert_eq!(claims["reported"], serde_json::Value::Null);
    assert!(claims.to_string().len() <= 2048);
    {
        let state = api.state.lock().unwrap();
        assert_eq!(
            state.requests,
            [(
                format!("/api/v1/namespaces/shop/pods/{pod}"),
                format!("Bearer {API_TOKEN}")
            )]
        );
    }

    // A token for a pod the API server does not know.
    let gone = authority
        .attest(cluster.token("shop", "web", "web-7d4b9c6f5-gone0", K8S_AUDIENCE))
        .unwrap_err();
    assert!(gone.contains("401"), "{gone}");
    assert!(
        gone.contains("pod shop/web-7d4b9c6f5-gone0") && gone.contains("404"),
        "{gone}"
    );

    // The pod was deleted and re-created under the same name: the old
    // pod's token names the old uid.
    let name = "web-7d4b9c6f5-bbbbb";
    api.put_pod(pod_object("shop", "web", name, "uid-new", &running));
    let recreated = authority
        .attest(cluster.token_for_uid("shop", "web", name, "uid-old", K8S_AUDIENCE))
        .unwrap_err();
    assert!(
        recreated.contains(&format!("pod shop/{name}"))
            && recreated.contains("uid-new")
            && recreated.contains("uid-old"),
        "{recreated}"
    );
    // Its own token attests.
    authority
        .attest(cluster.token_for_uid("shop", "web", name, "uid-new", K8S_AUDIENCE))
        .unwrap();

    // A registration that pins another image than the pod runs.
    let pinned = format!("sha256:{}", "e".repeat(64));
    authority.cli(&[
        "register",
        "--k8s-namespace",
        "shop",
        "--k8s-service-account",
        "api",
        "--image-digest",
        &pinned,
    ]);
    let api_pod = "api-5f6d7c8b9-ccccc";
    api.put_pod(pod_object(
        "shop",
        "api",
        api_pod,
        &format!("uid-{api_pod}"),
        &running,
    ));
    let other_image = authority
        .attest(cluster.token("shop", "api", api_pod, K8S_AUDIENCE))
        .unwrap_err();
    assert!(other_image.contains("403"), "{other_image}");
    assert!(
        other_image.contains(&format!("pod shop/{api_pod}"))
            && other_image.contains(&pinned)
            && other_image.contains(&format!("web={digest}")),
        "{other_image}"
    );

    // The audit log names the refusals.
    let audit = std::fs::read_to_string(authority.ca_dir.join("audit.jsonl")).unwrap();
    assert!(audit.contains("web-7d4b9c6f5-gone0"), "{audit}");
}

#[test]
fn the_api_is_reached_over_https_only_with_its_ca_and_a_token() {
    let cluster = Cluster::new();
    let temp = tempfile::tempdir().unwrap();
    let token = temp.path().join("token");
    std::fs::write(&token, API_TOKEN).unwrap();
    let missing = temp.path().join("missing");
    for (args, wanted) in [
        (
            vec!["--k8s-api", "http://127.0.0.1:6443", "--k8s-api-token-file"],
            "expected https://",
        ),
        (
            vec![
                "--k8s-api",
                "https://127.0.0.1:6443",
                "--k8s-api-token-file",
            ],
            "--k8s-api-ca",
        ),
    ] {
        let mut args: Vec<&str> = args;
        args.push(token.to_str().unwrap());
        args.extend(["--k8s-api-ca", missing.to_str().unwrap()]);
        let (_authority, failed) = spawn_authority(&cluster, &args);
        let stderr = failed.expect("the authority must refuse to start");
        assert!(stderr.contains(wanted), "{stderr}");
    }
    let (_authority, failed) = spawn_authority(
        &cluster,
        &[
            "--k8s-api",
            "https://127.0.0.1:6443",
            "--k8s-trust-labels",
            "app,Bad Key",
        ],
    );
    let stderr = failed.expect("a bad label key must refuse to start");
    assert!(
        stderr.contains("--k8s-trust-labels") && stderr.contains("Bad Key"),
        "{stderr}"
    );
}

/// The names `appid-proxy`/`appid-init` are anyone's to use in a pod spec.
/// With `--k8s-appid-digests` a container of appid's name that runs another
/// image is an app container: beside a clean decoy it leaves the pod with
/// no one image, so neither the decoy's digest nor its scan vouches for the
/// pod. Without the flag the authority says at start what it trusts.
#[test]
fn with_appid_digests_a_container_named_as_appids_proxy_is_no_cover_for_another_image() {
    let cluster = Cluster::new();
    let api = FakeApi::start();
    let temp = tempfile::tempdir().unwrap();
    let appid_digest = format!("sha256:{}", "1".repeat(64));
    let authority = start_authority_with(
        &cluster,
        &api,
        temp.path(),
        &["--k8s-appid-digests", &appid_digest],
    );
    let decoy = "d".repeat(64);
    import_one_high(&authority, temp.path(), &format!("sha256:{decoy}"));
    authority.cli(&[
        "register",
        "--k8s-namespace",
        "shop",
        "--k8s-service-account",
        "web",
    ]);

    // appid's own proxy (pod_object's runs sha256:1…): the app's image and scan.
    let pod = "web-7d4b9c6f5-aaaaa";
    let object = pod_object("shop", "web", pod, &format!("uid-{pod}"), &decoy);
    let claims = attest_pod(&authority, &api, &cluster, object);
    assert_eq!(
        claims["image"]["digest"],
        format!("sha256:{decoy}"),
        "{claims}"
    );
    assert_eq!(claims["vulns"]["high"], 1, "{claims}");

    // Another image under appid's name beside the decoy.
    let evil = format!("sha256:{}", "e".repeat(64));
    let pod = "web-7d4b9c6f5-bbbbb";
    let mut impostor = pod_object("shop", "web", pod, &format!("uid-{pod}"), &decoy);
    impostor["status"]["initContainerStatuses"][1]["imageID"] =
        serde_json::json!(format!("registry.example/miner@{evil}"));
    let claims = attest_pod(&authority, &api, &cluster, impostor);
    assert_eq!(
        claims["k8s"]["images"]["appid-proxy"],
        evil.as_str(),
        "{claims}"
    );
    assert_eq!(claims["image"], serde_json::Value::Null, "{claims}");
    assert_eq!(claims["vulns"], serde_json::Value::Null, "{claims}");

    // Without the flag: a warning at start naming it.
    let by_name = start_authority(&cluster, &api, temp.path());
    let stderr = by_name.stop();
    assert!(
        stderr.contains("WARN") && stderr.contains("--k8s-appid-digests"),
        "{stderr}"
    );

    // A value that is no digest refuses to start, naming the flag.
    let (_refused, failed) = spawn_authority(
        &cluster,
        &[
            "--k8s-api",
            "https://127.0.0.1:6443",
            "--k8s-appid-digests",
            "appid/appid:0.1.0",
        ],
    );
    let stderr = failed.expect("a value that is no digest must refuse to start");
    assert!(
        stderr.contains("--k8s-appid-digests") && stderr.contains("appid/appid:0.1.0"),
        "{stderr}"
    );
}
