//! Harness for the sidecar end-to-end tests: identities issued with the
//! real `appid` CLI, `appid proxy` processes that are killed on drop, small
//! backends (HTTP/1.1 + h2c + gRPC app, TCP echo) and clients (curl,
//! openssl, a hand-framed gRPC client, raw TCP); a throw-away PostgreSQL
//! cluster ([`postgres`]); for the tests that need root, network namespaces
//! ([`netns`]) with hosts in them ([`host`]).
//!
//! Everything a test starts is owned by a guard: a panic anywhere still
//! kills every sidecar and stops every backend.

#![allow(dead_code)] // each test binary uses a different subset

pub mod apps;
pub mod authority;
pub mod clients;
pub mod grpc;
pub mod host;
pub mod mesh;
pub mod net;
pub mod netns;
pub mod pki;
pub mod postgres;
pub mod rogue;
pub mod sidecar;
pub mod soak;
pub mod stats;
pub mod workload;

use std::future::Future;
use std::time::{Duration, Instant};

/// The JSON lines of an append-only log read while it may be written:
/// each line that ends in a newline, parsed (an unterminated last line is
/// still being written and is left for the next read). `whose` names the
/// log in the panic for a line that is not JSON.
pub fn json_lines(text: &str, whose: &str) -> Vec<serde_json::Value> {
    text.split_inclusive('\n')
        .filter(|l| l.ends_with('\n') && !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("a line of {whose} is not JSON ({e}): {l}"))
        })
        .collect()
}

/// Polls `check` every 50 ms until it returns `Some`, or panics with
/// `what` (and whatever `context` says then) after `limit`.
pub async fn poll_until<T, F, Fut>(
    what: &str,
    limit: Duration,
    context: impl Fn() -> String,
    mut check: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if start.elapsed() > limit {
            panic!(
                "timed out after {limit:?} waiting for {what}\n{}",
                context()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The third-party fixtures directory (`../shared/fixtures`), when present;
/// required under `CI=true`.
pub fn shared_fixtures() -> Option<std::path::PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures");
    if dir.is_dir() {
        Some(dir)
    } else if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{} is required in CI", dir.display());
    } else {
        None
    }
}

/// The Python interpreter that can `import module`: `python3` from the PATH,
/// else Debian's (a pyenv or venv `python3` may shadow the packages apt
/// installs). Panics, saying what to install, if neither can.
pub fn python_with(module: &str, package: &str) -> &'static str {
    ["python3", "/usr/bin/python3"]
        .into_iter()
        .find(|python| {
            std::process::Command::new(python)
                .args(["-c", &format!("import {module}")])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|status| status.success())
        })
        .unwrap_or_else(|| {
            panic!(
                "python3 cannot `import {module}`: this test drives real third-party clients and \
                 servers; run `apt-get install {package}` (CI installs it)"
            )
        })
}
