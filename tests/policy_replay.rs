//! End-to-end test of `appid policy replay`: real sidecars write the audit
//! log (a permissive policy in `mode: audit`, two peers, two paths), then
//! the real binary replays it under a tightened policy and must list
//! exactly the calls that change, with the documented exit status and
//! JSON shape.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;
use support::apps::HttpApp;
use support::mesh::{Mesh, MeshOptions, TRUST_DOMAIN, WEB_PATH};
use support::net::{free_port, http_status, local};
use support::sidecar::has;

const APPID: &str = env!("CARGO_BIN_EXE_appid");
const BATCH_PATH: &str = "ns/jobs/sa/batch";

/// What ran: any workload labelled web or batch may call the api.
const PERMISSIVE: &str = "\
version: 1
default: deny
mode: audit
rules:
  - name: any-workload
    action: allow
    from: { labels.app: [web, batch] }
    to: { labels.app: api }
";

/// The tightened policy: web keeps everything (same rule name: unchanged),
/// batch may only GET /v1/**.
const TIGHTENED: &str = r#"version: 1
default: deny
mode: enforce
rules:
  - name: any-workload
    action: allow
    from: { labels.app: web }
    to: { labels.app: api }
  - name: batch-reads-v1
    action: allow
    from: { labels.app: batch }
    to: { labels.app: api }
    http: { methods: [GET], paths: ["/v1/**"] }
"#;

fn replay(args: &[&str]) -> (i32, String, String) {
    let out: Output = Command::new(APPID)
        .args(["policy", "replay"])
        .args(args)
        .output()
        .expect("run appid");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

fn spiffe(path: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/{path}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_lists_exactly_the_calls_a_tightened_policy_changes() {
    let app = HttpApp::start().await;
    let mesh = Mesh::start(
        app.addr,
        MeshOptions {
            server_policy: PERMISSIVE.into(),
            client_policy: PERMISSIVE.into(),
            ..MeshOptions::default()
        },
    )
    .await;
    // A second peer: batch, with its own client sidecar.
    let batch = mesh.env.issue("batch", BATCH_PATH, &["app=batch"], &[]);
    let batch_out = free_port();
    let batch_client = mesh
        .env
        .sidecar("batch-client", &batch, &mesh.client_policy)
        .outbound(batch_out, local(mesh.inbound))
        .start()
        .await;

    let calls = [
        (mesh.outbound_addr(), "/v1/items"),
        (mesh.outbound_addr(), "/admin/users"),
        (local(batch_out), "/v1/items"),
        (local(batch_out), "/admin/users"),
    ];
    for (addr, path) in calls {
        assert_eq!(
            http_status(addr, path).await,
            Some(200),
            "GET {path} via {addr}\n{}\n{}",
            mesh.context(),
            batch_client.context()
        );
    }
    // Allow lines are buffered for up to 100 ms: wait for all four.
    for (peer, path) in [
        (WEB_PATH, "/v1/items"),
        (WEB_PATH, "/admin/users"),
        (BATCH_PATH, "/v1/items"),
        (BATCH_PATH, "/admin/users"),
    ] {
        let id = spiffe(peer);
        mesh.server
            .wait_audit(&format!("{id} GET {path}"), |l| {
                has(l, "direction", "inbound") && has(l, "peer_id", &id) && has(l, "path", path)
            })
            .await;
    }
    let lines = mesh.server.audit_lines();
    assert_eq!(lines.len(), 4, "{}", mesh.context());
    for line in &lines {
        assert_eq!(line["rule"], "any-workload");
        assert!(
            line["peer_appid"].as_str().is_some_and(|d| d.len() == 32),
            "{line}"
        );
        assert!(line["local_appid"].is_string(), "{line}");
    }
    assert!(
        lines[0]["appids"].as_object().is_some_and(|m| m.len() == 2),
        "the first line carries both documents: {}",
        lines[0]
    );
    assert!(
        lines[1].get("appids").is_none(),
        "once per file: {}",
        lines[1]
    );

    let dir = &mesh.env.dir;
    let tightened = dir.path().join("tightened.yaml");
    std::fs::write(&tightened, TIGHTENED).unwrap();
    let audit = mesh.server.audit.clone();

    // The text report.
    let (code, stdout, stderr) = replay(&[p(&tightened), p(&audit)]);
    assert_eq!(code, 1, "something changes\n{stdout}\n{stderr}");
    assert!(stdout.contains("newly denied: 1 decision\n"), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "1 × {}: any-workload -> default",
            spiffe(BATCH_PATH)
        )),
        "{stdout}"
    );
    assert!(stdout.contains("GET /admin/users"), "{stdout}");
    assert!(stdout.contains("newly allowed: none"), "{stdout}");
    assert!(stdout.contains("unchanged: 2"), "{stdout}");

    // The JSON report: exactly batch's /admin call is newly denied.
    let (code, stdout, _) = replay(&[p(&tightened), p(&audit), "-o", "json"]);
    assert_eq!(code, 1);
    let report: Value = serde_json::from_str(&stdout).expect("JSON report");
    assert_eq!(report["lines"], 4);
    assert_eq!(report["unchanged"], 2, "web's two calls: {report:#}");
    assert_eq!(report["newly_allowed"], serde_json::json!([]));
    let denied = report["newly_denied"].as_array().unwrap();
    assert_eq!(denied.len(), 1, "{report:#}");
    let group = &denied[0];
    assert_eq!(group["peer"], spiffe(BATCH_PATH));
    assert_eq!(group["old_rule"], "any-workload");
    assert_eq!(group["new_rule"], "default");
    assert_eq!(group["count"], 1);
    let example = &group["example"];
    assert_eq!(example["file"], p(&audit));
    assert_eq!(example["line"], 4);
    assert_eq!(example["direction"], "inbound");
    assert_eq!(example["port"], mesh.inbound);
    assert_eq!(example["method"], "GET");
    assert_eq!(example["path"], "/admin/users");
    assert!(
        example["new_decision"]
            .as_str()
            .unwrap()
            .starts_with("deny")
    );
    // batch's /v1 call is still allowed, by the new rule.
    let moved = report["rule_changed"].as_array().unwrap();
    assert_eq!(moved.len(), 1, "{report:#}");
    assert_eq!(moved[0]["new_rule"], "batch-reads-v1");
    assert_eq!(moved[0]["example"]["path"], "/v1/items");
    assert_eq!(report["undecidable"], serde_json::json!([]));
    assert_eq!(report["bad_lines"], serde_json::json!([]));

    // YAML: the same document.
    let (code, stdout, _) = replay(&[p(&tightened), p(&audit), "-o", "yaml"]);
    assert_eq!(code, 1);
    assert!(stdout.contains("newly_denied:"), "{stdout}");
    assert!(stdout.contains(&spiffe(BATCH_PATH)), "{stdout}");

    // The policy that ran changes nothing: exit 0.
    let (code, stdout, _) = replay(&[p(&mesh.server_policy), p(&audit)]);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("unchanged: 4"), "{stdout}");

    // Rotated files are more arguments: documents ride in the older one.
    let text = std::fs::read_to_string(&audit).unwrap();
    let all: Vec<&str> = text.lines().collect();
    let current = dir.path().join("split.jsonl");
    let rotated = dir.path().join("split.jsonl.1");
    std::fs::write(&rotated, all[..3].join("\n") + "\n").unwrap();
    std::fs::write(&current, all[3].to_string() + "\n").unwrap();
    let (code, stdout, _) = replay(&[p(&tightened), p(&current), "-o", "json"]);
    let alone: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(code, 0, "nothing re-decided changes: {alone:#}");
    assert_eq!(alone["undecidable"][0]["count"], 1, "{alone:#}");
    assert_eq!(alone["undecidable"][0]["example"]["line"], 1);
    let (code, _, _) = replay(&[p(&tightened), p(&current), "--fail-undecidable"]);
    assert_eq!(code, 1);
    let (code, stdout, _) = replay(&[p(&tightened), p(&current), p(&rotated), "-o", "json"]);
    let both: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(code, 1);
    assert_eq!(both["newly_denied"][0]["example"]["file"], p(&current));
    assert_eq!(both["undecidable"], serde_json::json!([]));

    // A bad line: reported with file:line, exit 2, the report still printed.
    let broken = dir.path().join("broken.jsonl");
    std::fs::write(&broken, format!("{text}{{\"half\": \n")).unwrap();
    let (code, stdout, stderr) = replay(&[p(&tightened), p(&broken)]);
    assert_eq!(code, 2, "{stdout}\n{stderr}");
    assert!(
        stderr.contains(&format!("{}:5: not an audit line", p(&broken))),
        "{stderr}"
    );
    assert!(stdout.contains("newly denied: 1 decision"), "{stdout}");
    // Bad input before any line: a missing file, a broken policy.
    let (code, _, stderr) = replay(&[p(&tightened), p(&dir.path().join("nope.jsonl"))]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("nope.jsonl: cannot read the audit log"),
        "{stderr}"
    );
    let bad_policy = dir.path().join("bad.yaml");
    std::fs::write(&bad_policy, "version: 1\nrules: [{}]\n").unwrap();
    assert_eq!(replay(&[p(&bad_policy), p(&audit)]).0, 2);

    // The peer's claims are those decided on, not the api's own.
    assert_ne!(lines[0]["peer_appid"], lines[0]["local_appid"]);
    drop(batch_client);
}
