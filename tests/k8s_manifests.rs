//! Every manifest appid writes is one Kubernetes accepts: the output of
//! `appid inject` on the real-world manifests in `../shared/fixtures/k8s`,
//! the sidecar ConfigMap of `appid inject config` and the authority's
//! manifests of `appid authority manifests` all pass
//! `kubernetes-validate --strict` (unknown fields are errors) for
//! Kubernetes 1.29, the first release with native sidecars on by default,
//! and for the newest schema the validator ships.
//!
//! kubernetes-validate is a PyPI package: `.ci/run` installs it into
//! `/opt/kv`. The tests find it through `KUBERNETES_VALIDATE`, then
//! `/opt/kv/bin/kubernetes-validate`, then the `PATH`, and fail (not skip)
//! without it, saying how to install it.
//!
//! Also here: the authority runs with the very arguments its StatefulSet
//! gives it, and the Dockerfile's entrypoint and user are the ones the
//! injected containers rely on.

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use support::pki::{APPID, Ca};

/// Kubernetes 1.29: native sidecars (`restartPolicy: Always` init
/// containers) are on by default from here.
const OLDEST: &str = "1.29.0";

fn appid(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(APPID)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {APPID}: {e}"));
    let mut pipe = child.stdin.take().unwrap();
    if let Some(input) = stdin {
        pipe.write_all(input.as_bytes()).unwrap();
    }
    drop(pipe);
    child.wait_with_output().unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = appid(args, None);
    assert!(
        out.status.success(),
        "appid {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The kubernetes-validate executable.
fn validator() -> PathBuf {
    const INSTALL: &str = "`python3 -m venv /opt/kv && /opt/kv/bin/pip install kubernetes-validate` \
        (on Debian, `apt-get install python3-venv` first)";
    if let Some(path) = std::env::var_os("KUBERNETES_VALIDATE") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "KUBERNETES_VALIDATE={} is not a file: point it at the kubernetes-validate \
             executable, or install that with {INSTALL}",
            path.display()
        );
        return path;
    }
    let venv = PathBuf::from("/opt/kv/bin/kubernetes-validate");
    if venv.is_file() {
        return venv;
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join("kubernetes-validate"))
        .find(|p| p.is_file());
    on_path.unwrap_or_else(|| {
        panic!(
            "kubernetes-validate is not installed: these tests check every manifest appid writes \
             against the Kubernetes schemas. Install it as .ci/run does, with {INSTALL}, or \
             point KUBERNETES_VALIDATE at the executable"
        )
    })
}

/// The newest Kubernetes version the validator has schemas for (its
/// default, which `--help` names).
fn newest() -> String {
    let out = Command::new(validator()).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout).replace('\n', " ");
    let words: Vec<&str> = help.split_whitespace().collect();
    let at = words
        .windows(2)
        .position(|w| w == ["Defaults", "to"])
        .unwrap_or_else(|| panic!("no default version in kubernetes-validate --help: {help}"));
    let version = words[at + 2].trim_end_matches('.').to_owned();
    assert!(
        version.split('.').all(|p| p.parse::<u32>().is_ok()),
        "{version}"
    );
    version
}

/// Runs the validator on `yaml` for both versions: whether it passed, and
/// what it said.
fn validate(name: &str, yaml: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(name);
    std::fs::write(&file, yaml).unwrap();
    let newest = newest();
    let out = Command::new(validator())
        .args(["--strict", "-k", OLDEST, "-k", &newest])
        .arg(&file)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

/// `yaml` passes for both versions, every one of its `resources`.
fn assert_valid(name: &str, yaml: &str, resources: usize) {
    let (passed, said) = validate(name, yaml);
    assert!(passed, "{name} does not validate:\n{said}\n{yaml}");
    let checked = said.lines().filter(|l| l.contains(" passed ")).count();
    assert_eq!(
        checked,
        2 * resources,
        "{name}: expected {resources} resources checked against 2 versions:\n{said}"
    );
}

/// Top-level `kind:` lines: the resources of a stream.
fn resources(yaml: &str) -> usize {
    yaml.lines().filter(|l| l.starts_with("kind: ")).count()
}

#[test]
fn injected_real_world_manifests_are_valid() {
    let Some(fixtures) = support::shared_fixtures() else {
        eprintln!("skipped: ../shared/fixtures is missing");
        return;
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(fixtures.join("k8s"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "{files:?}");
    for file in &files {
        let path = file.to_str().unwrap();
        let yaml = ok(&["inject", path]);
        let name = file.file_name().unwrap().to_str().unwrap();
        assert!(yaml.contains("appid.dev/status"), "{name}");
        assert_valid(name, &yaml, resources(&yaml));
    }
}

#[test]
fn a_broken_manifest_is_refused() {
    // The validator is strict: a misspelled field fails, so a pass above
    // means something.
    let pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  containers:\n  - name: app\n    image: x\n";
    let injected = String::from_utf8(appid(&["inject"], Some(pod)).stdout).unwrap();
    assert_valid("pod.yaml", &injected, 1);
    let broken = injected.replacen("restartPolicy: Always", "restartPolicyy: Always", 1);
    assert_ne!(broken, injected);
    let (passed, said) = validate("broken.yaml", &broken);
    assert!(!passed, "{said}");
    assert!(said.contains("restartPolicyy"), "{said}");
}

fn write_policy(dir: &Path) -> PathBuf {
    let policy = dir.join("policy.yaml");
    std::fs::write(
        &policy,
        "version: 1\ndefault: deny\nrules:\n  - name: web-calls-api\n    action: allow\n    \
         from: { id: \"spiffe://prod.example/ns/shop/sa/web\" }\n    to: { labels.app: api }\n",
    )
    .unwrap();
    policy
}

#[test]
fn the_sidecar_config_map_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::init(&dir.path().join("ca"), "prod.example");
    let policy = write_policy(dir.path());
    let yaml = ok(&[
        "inject",
        "config",
        "--namespace",
        "shop",
        "--bundle",
        ca.bundle().to_str().unwrap(),
        "--policy",
        policy.to_str().unwrap(),
    ]);
    assert_valid("configmap.yaml", &yaml, 1);
    let doc: Json = serde_saphyr::from_str(&yaml).unwrap();
    assert_eq!(
        doc["data"]["policy.yaml"].as_str().unwrap(),
        std::fs::read_to_string(&policy).unwrap()
    );
    assert_eq!(
        doc["data"]["ca.pem"].as_str().unwrap(),
        std::fs::read_to_string(ca.bundle()).unwrap()
    );
}

#[test]
fn inject_config_names_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::init(&dir.path().join("ca"), "prod.example");
    let bad = dir.path().join("bad-policy.yaml");
    std::fs::write(&bad, "version: 1\nrules:\n  - name: x\n    action: alow\n").unwrap();
    let bundle = ca.bundle();
    let out = appid(
        &[
            "inject",
            "config",
            "--namespace",
            "shop",
            "--bundle",
            bundle.to_str().unwrap(),
            "--policy",
            bad.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad-policy.yaml") && err.contains("alow"),
        "{err}"
    );

    let policy = write_policy(dir.path());
    let out = appid(
        &[
            "inject",
            "config",
            "--namespace",
            "shop",
            "--bundle",
            policy.to_str().unwrap(),
            "--policy",
            policy.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("policy.yaml") && err.contains("ca.pem"),
        "{err}"
    );
}

fn authority_manifests(extra: &[&str]) -> String {
    let mut args = vec!["authority", "manifests", "--trust-domain", "prod.example"];
    args.extend_from_slice(extra);
    ok(&args)
}

#[test]
fn the_authority_manifests_are_valid() {
    assert_valid("authority.yaml", &authority_manifests(&[]), 4);
    let custom = authority_manifests(&[
        "--namespace",
        "security",
        "--image",
        "registry.example/appid:1.0",
        "--storage",
        "2Gi",
        "--storage-class",
        "fast",
    ]);
    assert_valid("authority-custom.yaml", &custom, 4);
    // With the pod lookup: its ClusterRole and binding too.
    let lookup = authority_manifests(&["--k8s-pod-lookup", "--k8s-trust-labels", "app,version"]);
    assert_valid("authority-pod-lookup.yaml", &lookup, 6);
    // PostgreSQL: a Deployment of stateless replicas, no volume.
    let postgres = authority_manifests(&["--database-secret", "appid-db", "--replicas", "3"]);
    assert_valid("authority-postgres.yaml", &postgres, 4);
    for (flags, says) in [
        (&["--replicas", "2"][..], "required"),
        (
            &["--database-secret", "Not_A_Name"][..],
            "--database-secret `Not_A_Name`",
        ),
        (
            &["--database-secret", "db", "--replicas", "0"][..],
            "--replicas `0`",
        ),
    ] {
        let mut args = vec!["authority", "manifests", "--trust-domain", "prod.example"];
        args.extend_from_slice(flags);
        let out = appid(&args, None);
        assert_eq!(out.status.code(), Some(2), "{flags:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{flags:?}: {stderr}");
    }

    let out = appid(
        &[
            "authority",
            "manifests",
            "--trust-domain",
            "prod.example",
            "--storage",
            "big",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--storage `big`"));
}

/// A JWKS with one P-256 key, as `kubectl get --raw /openid/v1/jwks` gives.
fn jwks() -> String {
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
    use base64::Engine as _;
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
    let point = key.public_key().as_ref().to_vec();
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    serde_json::json!({"keys": [{"use": "sig", "kty": "EC", "crv": "P-256", "kid": "k1",
        "alg": "ES256", "x": b64(&point[1..33]), "y": b64(&point[33..65])}]})
    .to_string()
}

/// Runs the authority container of `yaml` (its `kind`) as the manifest
/// says, on this machine: the mounts become temporary directories (the CA
/// from `appid authority init`, the JWKS ConfigMap), the environment is
/// `env` (what the Secrets would give). Returns the CA directory once the
/// authority served.
fn run_the_manifest(
    yaml: &str,
    kind: &str,
    env: &[(&str, String)],
) -> (tempfile::TempDir, PathBuf) {
    let docs: Vec<Json> = serde_saphyr::from_multiple(yaml).unwrap();
    let set = docs.iter().find(|d| d["kind"] == kind).unwrap();
    let container = &set["spec"]["template"]["spec"]["containers"][0];
    let mounts = container["volumeMounts"].as_array().unwrap();
    let mount_of = |name: &str| {
        mounts
            .iter()
            .find(|m| m["name"] == name && m.get("subPath").is_none())
            .and_then(|m| m["mountPath"].as_str())
            .unwrap()
            .to_owned()
    };
    // SQLite: the state volume, with the CA's files in it (what the
    // Secret's subPath mounts give); PostgreSQL: the CA Secret itself.
    let ca_dir = if kind == "StatefulSet" {
        mount_of("state")
    } else {
        mount_of("ca")
    };
    let jwks_dir = mount_of("jwks");
    let temp = tempfile::tempdir().unwrap();
    let ca = temp.path().join("ca");
    Ca::init(&ca, "prod.example");
    let jwks_path = temp.path().join("jwks");
    std::fs::create_dir(&jwks_path).unwrap();
    std::fs::write(jwks_path.join("jwks.json"), jwks()).unwrap();
    let port = support::net::free_port();
    let args: Vec<String> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let a = a.as_str().unwrap();
            a.replace(&ca_dir, ca.to_str().unwrap())
                .replace(&jwks_dir, jwks_path.to_str().unwrap())
                .replace("0.0.0.0:15170", &format!("127.0.0.1:{port}"))
        })
        .collect();
    assert!(
        args.iter()
            .any(|a| a.contains(&format!("127.0.0.1:{port}"))),
        "{args:?}"
    );
    let mut child = Command::new(APPID)
        .args(&args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let up = loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break true;
        }
        if child.try_wait().unwrap().is_some() || start.elapsed() > Duration::from_secs(20) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    assert!(
        up,
        "appid {} did not serve: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    (temp, ca)
}

#[test]
fn the_authority_runs_with_its_manifest_arguments() {
    let (_temp, ca) = run_the_manifest(&authority_manifests(&[]), "StatefulSet", &[]);
    assert!(
        ca.join("authority.db").is_file(),
        "the database is in --dir"
    );
}

/// With `--database-secret`: stateless replicas whose state is in
/// PostgreSQL; the CA directory (a read-only Secret in the pod) gets no
/// file.
#[test]
fn the_postgres_authority_runs_with_its_manifest_arguments() {
    let yaml = authority_manifests(&["--database-secret", "appid-db", "--replicas", "3"]);
    let Some(postgres) = support::postgres::Postgres::start() else {
        return;
    };
    let url = postgres.create_database("manifests");
    let (_temp, ca) = run_the_manifest(
        &yaml,
        "Deployment",
        &[("APPID_AUTHORITY_DATABASE", url.clone())],
    );
    let mut files: Vec<String> = std::fs::read_dir(&ca)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        ["ca.key", "ca.pem"],
        "nothing written into the CA Secret"
    );
    // The authority migrated the database: a registration lands in it.
    let out = appid(
        &[
            "authority",
            "register",
            "--dir",
            ca.to_str().unwrap(),
            "--database",
            &url,
            "--id",
            "spiffe://prod.example/web",
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_image_runs_what_inject_emits() {
    let dockerfile =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Dockerfile"))
            .unwrap();
    let instruction = |name: &str| {
        dockerfile
            .lines()
            .rfind(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in the Dockerfile"))
            .to_owned()
    };
    assert_eq!(
        instruction("ENTRYPOINT"),
        "ENTRYPOINT [\"/usr/local/bin/appid\"]"
    );
    // The profile-guided build (the default) and the plain one.
    assert!(dockerfile.contains("install -D -m 0755 target/pgo/release/appid /out/appid"));
    assert!(dockerfile.contains("install -D -m 0755 target/release/appid /out/appid"));
    assert!(dockerfile.contains("COPY --from=build /out/appid /usr/local/bin/appid"));
    assert!(dockerfile.contains("apt-get install -y --no-install-recommends iptables"));

    let pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  containers:\n  - name: app\n    image: x\n";
    let injected = String::from_utf8(appid(&["inject"], Some(pod)).stdout).unwrap();
    let doc: Json = serde_saphyr::from_str(&injected).unwrap();
    let proxy = &doc["spec"]["initContainers"][1];
    assert_eq!(proxy["name"], "appid-proxy");
    // Only args: the image's entrypoint is the binary.
    for container in doc["spec"]["initContainers"].as_array().unwrap() {
        assert!(container.get("command").is_none(), "{container}");
        assert!(container.get("args").is_some(), "{container}");
    }
    let uid = proxy["securityContext"]["runAsUser"].as_u64().unwrap();
    assert_eq!(instruction("USER"), format!("USER {uid}:{uid}"));
}

/// The README's walk-through (`examples/kubernetes`): the manifests it
/// injects and the ConfigMap it makes are valid, and the api's probe goes
/// through the sidecar.
#[test]
fn the_walk_through_is_valid() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/kubernetes");
    let shop = examples.join("shop.yaml");
    let yaml = ok(&["inject", shop.to_str().unwrap()]);
    assert_valid("shop.yaml", &yaml, 5);
    let docs: Vec<Json> = serde_saphyr::from_multiple(&yaml).unwrap();
    let api = docs
        .iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "api");
    let spec = &api.unwrap()["spec"]["template"]["spec"];
    assert_eq!(
        spec["containers"][0]["readinessProbe"]["httpGet"],
        serde_json::json!({"path": "/app-health/api/readyz", "port": 15191})
    );
    let env = &spec["initContainers"][1]["env"][0];
    assert_eq!(env["name"], "APPID_APP_PROBES");
    let probes: Json = serde_json::from_str(env["value"].as_str().unwrap()).unwrap();
    assert_eq!(
        probes["/app-health/api/readyz"]["httpGet"]["port"], 8080,
        "the named port is resolved"
    );

    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::init(&dir.path().join("ca"), "prod.example");
    let policy = examples.join("policy.yaml");
    let config = ok(&[
        "inject",
        "config",
        "--namespace",
        "shop",
        "--bundle",
        ca.bundle().to_str().unwrap(),
        "--policy",
        policy.to_str().unwrap(),
    ]);
    assert_valid("configmap.yaml", &config, 1);
}
