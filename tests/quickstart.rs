//! The quickstart (README command 1) and `appid policy replay` on its own
//! audit logs: tightening the policy lists exactly the calls that change.
//!
//! Runs the quickstart example binary that `cargo test --workspace` builds
//! beside the tests (`target/<profile>/examples/quickstart`), with
//! `--keep DIR` so its CA, configs and audit logs stay.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

const APPID: &str = env!("CARGO_BIN_EXE_appid");

/// `target/<profile>/examples/quickstart`, next to this test's `deps/`.
fn quickstart() -> PathBuf {
    let me = std::env::current_exe().expect("the test's path");
    let profile_dir = me
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps/<test>");
    let binary = profile_dir.join("examples/quickstart");
    assert!(
        binary.is_file(),
        "{} is not built: run the whole suite (`cargo test --workspace` builds the examples), \
         or `cargo build --example quickstart` first",
        binary.display()
    );
    binary
}

#[test]
fn replaying_the_quickstarts_audit_logs_under_a_tighter_policy_names_exactly_the_calls_that_change()
{
    let temp = tempfile::tempdir().expect("temp dir");
    let kept = temp.path().join("qs");
    let run = Command::new(quickstart())
        .arg("--keep")
        .arg(&kept)
        .output()
        .expect("run the quickstart");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "quickstart failed ({}):\n{stdout}\n{}",
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        stdout.contains("OK: one allowed and two denied calls"),
        "{stdout}"
    );

    // The shop may now read only the catalog: the one allowed call (web
    // GET /v1/orders) would be denied, on both sidecars that decided it.
    let policy = std::fs::read_to_string(kept.join("policy.yaml")).expect("policy.yaml");
    let tightened = policy.replace(r#"paths: ["/v1/**"]"#, r#"paths: ["/v1/catalog/**"]"#);
    assert_ne!(policy, tightened, "the quickstart's policy changed shape");
    std::fs::write(kept.join("tightened.yaml"), tightened).expect("write tightened.yaml");
    let replay = Command::new(APPID)
        .args(["policy", "replay", "tightened.yaml"])
        .args(["web-audit.jsonl", "legacy-audit.jsonl", "api-audit.jsonl"])
        .args(["-o", "json"])
        .current_dir(&kept)
        .output()
        .expect("run appid policy replay");
    assert_eq!(
        replay.status.code(),
        Some(1),
        "a newly denied call exits 1: {}",
        String::from_utf8_lossy(&replay.stderr)
    );
    let report: Value = serde_json::from_slice(&replay.stdout).expect("JSON report");
    // (How many lines the sidecars wrote varies a little with timing, e.g.
    // a connection-level line; every one but the two below is unchanged.)
    let lines = report["lines"].as_u64().expect("lines");
    assert!(lines >= 4, "{report:#}");
    assert_eq!(report["unchanged"].as_u64(), Some(lines - 2), "{report:#}");
    assert_eq!(report["newly_allowed"], serde_json::json!([]), "{report:#}");
    let denied = report["newly_denied"].as_array().expect("newly_denied");
    let mut changed: Vec<(String, String, String, String)> = denied
        .iter()
        .map(|group| {
            assert_eq!(group["count"], 1, "{group:#}");
            assert_eq!(group["old_rule"], "shop-reads-api", "{group:#}");
            assert_eq!(group["new_rule"], "default", "{group:#}");
            let e = &group["example"];
            let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
            (
                s(&e["file"]),
                s(&e["direction"]),
                s(&e["method"]),
                s(&e["path"]),
            )
        })
        .collect();
    changed.sort();
    let expected = [
        ("api-audit.jsonl", "inbound", "GET", "/v1/orders"),
        ("web-audit.jsonl", "outbound", "GET", "/v1/orders"),
    ]
    .map(|(f, d, m, p)| (f.to_owned(), d.to_owned(), m.to_owned(), p.to_owned()));
    assert_eq!(changed, expected, "{report:#}");
}
