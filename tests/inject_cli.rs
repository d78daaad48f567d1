//! End-to-end tests of `appid inject [FILE|-]`, driving the real binary.
//!
//! The fixture cases run on the real-world manifests in
//! `../shared/fixtures/k8s` (microservices-demo, ZooKeeper, a Pod with an
//! init container). Without that directory they are skipped with a printed
//! reason, unless `CI=true`, where they fail.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const APPID: &str = env!("CARGO_BIN_EXE_appid");

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

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn fixtures() -> Option<Vec<PathBuf>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/k8s");
    if !dir.is_dir() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("fixtures {} are missing (CI=true)", dir.display());
        }
        eprintln!("skipped: fixtures {} are missing", dir.display());
        return None;
    }
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    Some(files)
}

/// Counts `- name: X` lines (any indentation).
fn count_items(yaml: &str, name: &str) -> usize {
    yaml.lines()
        .filter(|l| l.trim_start().trim_start_matches("- ").trim() == format!("name: {name}"))
        .count()
}

fn count_kind(yaml: &str, kinds: &[&str]) -> usize {
    yaml.lines()
        .filter(|l| kinds.iter().any(|k| l.trim_end() == format!("kind: {k}")))
        .count()
}

const WORKLOADS: &[&str] = &[
    "Pod",
    "Deployment",
    "StatefulSet",
    "DaemonSet",
    "ReplicaSet",
    "Job",
    "CronJob",
];

/// The documents of a stream, split on `---` lines (good enough for these
/// fixtures, which have no block scalars starting with `---`).
fn documents(yaml: &str) -> Vec<String> {
    let mut docs = vec![String::new()];
    for line in yaml.lines() {
        if line.trim_end() == "---" {
            docs.push(String::new());
        } else if let Some(last) = docs.last_mut() {
            last.push_str(line);
            last.push('\n');
        }
    }
    docs
}

#[test]
fn fixtures_get_one_sidecar_each_and_nothing_else_changes() {
    let Some(files) = fixtures() else { return };
    assert!(files.len() >= 3, "{files:?}");
    for file in &files {
        let path = file.to_str().unwrap();
        let input = std::fs::read_to_string(file).unwrap();
        let out = appid(&["inject", path], None);
        let (yaml, err) = (text(&out.stdout), text(&out.stderr));
        assert!(out.status.success(), "{path}: {err}");
        // The warnings: gRPC probes, which cannot go through the sidecar
        // (one per container), and containers not hardened against getting
        // around capture (one each; none in microservices-demo, whose
        // containers all are).
        let warnings: Vec<&str> = err.lines().filter(|l| l.contains("warning")).collect();
        let (grpc, others): (Vec<&str>, Vec<&str>) =
            warnings.iter().partition(|w| w.contains("gRPC probes"));
        assert_eq!(
            grpc.len(),
            input.matches("grpc:").count() / 2,
            "{path}: {err}"
        );
        assert!(
            others
                .iter()
                .all(|w| w.contains("may get around capture")
                    && w.contains("capabilities.drop: [ALL]")),
            "{path}: {err}"
        );
        if path.ends_with("kubernetes-manifests.yaml") {
            assert!(others.is_empty(), "{path}: {err}");
        } else {
            assert!(!others.is_empty(), "{path}: {err}");
        }

        let workloads = count_kind(&input, WORKLOADS);
        assert!(workloads > 0, "{path}");
        assert!(
            err.contains(&format!("injected {workloads} workload")),
            "{path}: {err}"
        );
        assert_eq!(count_items(&yaml, "appid-init"), workloads, "{path}");
        assert_eq!(count_items(&yaml, "appid-proxy"), workloads, "{path}");
        assert_eq!(
            count_items(&yaml, "appid-config"),
            2 * workloads,
            "{path}: volume + mount"
        );
        assert_eq!(
            yaml.matches("restartPolicy: Always").count(),
            input.matches("restartPolicy: Always").count() + workloads,
            "{path}"
        );

        // Services, ServiceAccounts, PodDisruptionBudgets: the same text.
        let (before, after) = (documents(&input), documents(&yaml));
        assert_eq!(before.len(), after.len(), "{path}");
        for (b, a) in before.iter().zip(&after) {
            if count_kind(b, WORKLOADS) == 0 {
                assert_eq!(b, a, "{path}");
            }
        }

        // Running it on its own output changes nothing (through stdin).
        let again = appid(&["inject", "-"], Some(&yaml));
        assert!(again.status.success(), "{path}: {}", text(&again.stderr));
        assert_eq!(text(&again.stdout), yaml, "{path}: not idempotent");
        assert!(text(&again.stderr).contains("<stdin>"));
    }
}

#[test]
fn stdin_without_a_file_argument_and_a_custom_image() {
    let pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  containers:\n  - name: app\n    image: x\n";
    let out = appid(
        &["inject", "--image", "registry.example/appid:9"],
        Some(pod),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let yaml = text(&out.stdout);
    assert_eq!(
        yaml.matches("image: registry.example/appid:9").count(),
        2,
        "{yaml}"
    );
    assert!(
        yaml.ends_with("  containers:\n  - name: app\n    image: x\n"),
        "{yaml}"
    );
}

#[test]
fn other_kinds_pass_through_and_skips_are_warned() {
    let input = "\
# config
apiVersion: v1
kind: ConfigMap
metadata: {name: c}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: node-agent}
spec:
  template:
    spec:
      hostNetwork: true
      containers: [{name: a, image: x}]
";
    let out = appid(&["inject"], Some(input));
    assert!(out.status.success());
    assert_eq!(text(&out.stdout), input);
    let err = text(&out.stderr);
    assert!(
        err.contains("warning") && err.contains("hostNetwork"),
        "{err}"
    );
    assert!(err.contains("DaemonSet \"node-agent\""), "{err}");
    assert!(err.contains("injected 0 workloads, skipped 1"), "{err}");
}

#[test]
fn bad_input_exits_2_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: v1\nkind: Service\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations:\n    appid.dev/exclude-inbound-ports: \"22,ssh\"\nspec:\n  containers: [{name: a}]\n",
    )
    .unwrap();
    let out = appid(&["inject", bad.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty(), "nothing half-written on stdout");
    let err = text(&out.stderr);
    for needle in [
        "bad.yaml",
        "document 2",
        "Pod \"p\"",
        "appid.dev/exclude-inbound-ports",
        "ssh",
    ] {
        assert!(err.contains(needle), "{needle:?} not in {err}");
    }

    let out = appid(&["inject", "-"], Some("a: [\n"));
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("<stdin>") && err.contains("line "), "{err}");

    let missing = dir.path().join("nope.yaml");
    let out = appid(&["inject", missing.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("nope.yaml"));

    let out = appid(&["inject", "--image", "has space"], Some(""));
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--image"));
}

/// The CLI's edges: `appid` alone prints its usage (exit 2); a reader that
/// goes away (`appid inject big.yaml | head`) ends the command quietly
/// (exit 0, nothing on stderr); `appid probe` on a sidecar that does not
/// answer exits 1 (not ready), as documented, not 2 (bad input).
#[test]
fn usage_broken_pipes_and_probe_exit_codes() {
    let bare = Command::new(env!("CARGO_BIN_EXE_appid")).output().unwrap();
    assert_eq!(bare.status.code(), Some(2));
    assert!(
        text(&bare.stderr).contains("Usage: appid <COMMAND>"),
        "{}",
        text(&bare.stderr)
    );

    // Hardened, so that no warning is due (2000 of them would fill the
    // stderr pipe, which this test reads last).
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: { name: p }\nspec:\n  containers:\n    - { name: app, image: nginx, securityContext: { runAsUser: 101, allowPrivilegeEscalation: false, capabilities: { drop: [ALL] } } }\n---\n";
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.yaml");
    std::fs::write(&big, pod.repeat(2000)).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_appid"))
        .args(["inject", big.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 10];
    std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut first).unwrap();
    drop(child.stdout.take()); // `head` is done
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "", "a broken pipe ends quietly");

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let admin = closed.local_addr().unwrap().to_string();
    drop(closed);
    let probe = appid(&["probe", "ready", "--admin", &admin], None);
    assert_eq!(probe.status.code(), Some(1), "{}", text(&probe.stdout));
}
