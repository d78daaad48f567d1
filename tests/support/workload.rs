//! A workload process confined to cgroups the test creates, and a sidecar
//! told where its workload is (`identity.authority.workload`), for
//! `tests/workload_cgroup.rs`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::authority::Proc;
use super::net::{free_port, http_get};
use super::pki::Ca;

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// SHA-256 of a file, hex.
pub fn sha256_file(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes).as_ref())
}

/// Where the cgroup v2 hierarchy is mounted (`/proc/self/mounts`), if it is.
pub fn cgroup2_mount() -> Option<PathBuf> {
    std::fs::read_to_string("/proc/self/mounts")
        .ok()?
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            (fields.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(fields[1]))
        })
}

/// A process moved into a cgroup made for it. On drop: the process is
/// killed and reaped, then the directories this guard created are removed
/// (deepest first), and nothing else.
pub struct Confined {
    child: Child,
    created: Vec<PathBuf>,
}

impl Confined {
    /// Runs `binary args…`, creates `dir` (and its missing parents below an
    /// existing directory) and writes the PID into `<dir>/cgroup.procs`.
    pub fn start(binary: &Path, args: &[&str], dir: &Path) -> Confined {
        let child = Command::new(binary)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the workload");
        let mut confined = Confined {
            child,
            created: Vec::new(),
        };
        let mut missing: Vec<&Path> = dir.ancestors().take_while(|d| !d.exists()).collect();
        missing.reverse();
        for d in missing {
            std::fs::create_dir(d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
            confined.created.push(d.to_path_buf());
        }
        let procs = dir.join("cgroup.procs");
        std::fs::write(&procs, confined.pid().to_string())
            .unwrap_or_else(|e| panic!("write {}: {e}", procs.display()));
        confined
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Confined {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The kernel may take a moment to empty a cgroup whose last process
        // was just reaped.
        for dir in self.created.iter().rev() {
            for _ in 0..50 {
                match std::fs::remove_dir(dir) {
                    Err(e) if e.kind() == std::io::ErrorKind::ResourceBusy => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    _ => break,
                }
            }
        }
    }
}

/// `appid proxy` with a fresh identity `spiffe://<td>/web` from the
/// authority at `url`, a deny-all policy and `workload: <workload>` (a YAML
/// flow mapping); files in `dir`. Not waited for: see
/// [`super::authority::wait_ready`].
pub fn sidecar(dir: &Path, ca: &Ca, url: &str, workload: &str) -> (Proc, SocketAddr) {
    let policy = dir.join("policy.yaml");
    std::fs::write(&policy, "version: 1\ndefault: deny\nrules: []\n").expect("policy");
    let listener = format!(
        "inbound: [{{ listen: \"127.0.0.1:{}\", forward: \"127.0.0.1:9\" }}]",
        free_port()
    );
    super::authority::sidecar_with_workload(dir, ca, url, "web", &listener, &policy, Some(workload))
}

/// The claims of the certificate the sidecar at `admin` serves with now
/// (admin `/appid`).
pub async fn claims(admin: SocketAddr, proc: &Proc) -> serde_json::Value {
    let body = http_get(admin, "/appid")
        .await
        .unwrap_or_else(|| panic!("no /appid:\n{}", proc.log()));
    let appid: serde_json::Value = serde_json::from_str(&body).expect("/appid JSON");
    appid["claims"].clone()
}
