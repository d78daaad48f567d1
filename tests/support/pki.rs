//! Identities, made with the real CLI (`appid authority init`, `appid issue`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const APPID: &str = env!("CARGO_BIN_EXE_appid");

/// Runs `appid` to completion; panics with its stderr on failure.
pub fn appid(args: &[&str]) -> Output {
    let out = Command::new(APPID).args(args).output().expect("run appid");
    assert!(
        out.status.success(),
        "appid {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temp path")
}

/// One certificate authority (`appid authority init`).
pub struct Ca {
    pub dir: PathBuf,
    pub trust_domain: String,
}

impl Ca {
    /// Creates a CA in `dir` (which must not exist yet).
    pub fn init(dir: &Path, trust_domain: &str) -> Ca {
        appid(&[
            "authority",
            "init",
            "--trust-domain",
            trust_domain,
            "--dir",
            path_str(dir),
        ]);
        Ca {
            dir: dir.to_path_buf(),
            trust_domain: trust_domain.to_string(),
        }
    }

    /// The trust bundle sidecars load (`ca.pem`).
    pub fn bundle(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Issues `spiffe://<td>/<path>` with `labels` (`k=v`) and any further
    /// `appid issue` flags, into `<out>.pem` / `<out>.key`.
    pub fn issue(&self, out: &Path, path: &str, labels: &[&str], extra: &[&str]) -> Cert {
        let id = format!("spiffe://{}/{path}", self.trust_domain);
        let cert = out.with_extension("pem");
        let key = out.with_extension("key");
        let mut args = vec![
            "issue",
            "--dir",
            path_str(&self.dir),
            "--id",
            &id,
            "--cert",
            path_str(&cert),
            "--key",
            path_str(&key),
        ];
        for label in labels {
            args.extend(["--label", label]);
        }
        args.extend_from_slice(extra);
        appid(&args);
        Cert { id, cert, key }
    }
}

/// An issued certificate and its key.
#[derive(Debug, Clone)]
pub struct Cert {
    pub id: String,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The AppID claims of a PEM certificate (`appid cert inspect --json`).
pub fn claims_of(pem: &Path) -> serde_json::Value {
    let out = appid(&["cert", "inspect", path_str(pem), "--json"]);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "cert inspect --json gave no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Writes `contents` to `path` atomically (temp file + rename), as config
/// management and Kubernetes do, so a watcher never sees half a file.
pub fn replace_file(path: &Path, contents: &[u8]) {
    let temp = path.with_extension("tmp-swap");
    std::fs::write(&temp, contents).expect("write temp file");
    std::fs::rename(&temp, path).expect("rename over the old file");
}
