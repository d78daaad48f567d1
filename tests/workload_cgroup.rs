//! End-to-end test of the cgroup forms of `identity.authority.workload`,
//! driving the real `appid authority serve` and `appid proxy`:
//!
//! ```text
//! workload (a copy of /bin/sleep) in a cgroup made here ◀── cgroup.procs, /proc ── appid proxy ──▶ appid authority serve
//! ```
//!
//! Covered:
//! - `cgroup: <dir>`: a fresh cgroup under the cgroup v2 mount holds the
//!   workload; the sidecar's certificate (admin `/appid`) reports the
//!   sha256 of its binary (hashed here from the file) and its path.
//! - `systemd_unit: <unit>`: the same, the workload moved into
//!   `<cgroup2 mount>/system.slice/<unit>` as systemd would put it. On a
//!   hybrid host (cgroup2 at `/sys/fs/cgroup/unified`) that is not
//!   `/sys/fs/cgroup/system.slice/<unit>`: the sidecar must find the
//!   hierarchies from `/proc/self/mountinfo`.
//!
//! Needs root (creating cgroups, moving a process): without it, or without
//! a cgroup2 mount, each test prints why it is skipped and passes. What the
//! tests create (the workload, the cgroup directories) is removed by a
//! guard, even when a step fails; directories that were there before are
//! left alone.

#[path = "support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};

use support::authority::{serve, wait_ready};
use support::pki::Ca;
use support::workload::{Confined, cgroup2_mount, claims, sha256_file, sidecar};

const TRUST_DOMAIN: &str = "cgroup.example";
const MINING_FAILED: &str = "mining the runtime fingerprint failed";

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// The cgroup v2 mount, or `None` (the reason printed) when these tests
/// cannot run here.
fn cgroup2_or_skip(test: &str) -> Option<PathBuf> {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipping {test}: not root (creating cgroups and moving processes need it)");
        return None;
    }
    let mount = cgroup2_mount();
    if mount.is_none() {
        eprintln!("skipping {test}: no cgroup2 hierarchy is mounted");
    }
    mount
}

/// Starts a copy of /bin/sleep in the cgroup `group` (a path under the
/// cgroup2 `mount`), then a sidecar with `workload: <workload>`, and checks
/// that the certificate reports that copy.
async fn reports_the_workload_in(mount: &Path, group: &str, workload: impl Fn(&Path) -> String) {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path();
    let ca = Ca::init(&dir.join("ca"), TRUST_DOMAIN);
    let (_authority, url) = serve(&ca, &[], dir.join("serve.log"));

    // The workload: a copy of /bin/sleep, so its hash is ours to know.
    let binary = dir.join("web");
    std::fs::copy("/bin/sleep", &binary).expect("copy /bin/sleep");
    let sha = sha256_file(&binary);
    let cgroup = mount.join(group);
    let confined = Confined::start(&binary, &["1000"], &cgroup);
    // The kernel agrees on where it is (`0::/<group>` in cgroup v2).
    let membership = std::fs::read_to_string(format!("/proc/{}/cgroup", confined.pid()))
        .expect("/proc/<pid>/cgroup");
    assert!(
        membership.lines().any(|l| l == format!("0::/{group}")),
        "{membership}"
    );

    let (sidecar, admin) = sidecar(dir, &ca, &url, &workload(&cgroup));
    wait_ready(admin, &sidecar).await;
    let claims = claims(admin, &sidecar).await;
    let process = &claims["reported"]["process"];
    assert_eq!(
        process["sha256"],
        sha.as_str(),
        "{claims:#}\n{}",
        sidecar.log()
    );
    assert_eq!(process["path"], path_str(&binary), "{claims:#}");
    assert_eq!(sidecar.count(MINING_FAILED), 0, "{}", sidecar.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cgroup_directory_names_the_workload() {
    let Some(mount) = cgroup2_or_skip("a_cgroup_directory_names_the_workload") else {
        return;
    };
    let group = format!("appid-test-{}-cgroup", std::process::id());
    reports_the_workload_in(&mount, &group, |cgroup| {
        format!(
            "{{ cgroup: {} }}",
            serde_json::to_string(path_str(cgroup)).unwrap()
        )
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_systemd_unit_is_found_in_the_cgroup2_hierarchy_wherever_it_is_mounted() {
    let Some(mount) = cgroup2_or_skip("a_systemd_unit_is_found_in_the_cgroup2_hierarchy") else {
        return;
    };
    let unit = format!("appid-test-{}.service", std::process::id());
    reports_the_workload_in(&mount, &format!("system.slice/{unit}"), |_| {
        format!("{{ systemd_unit: {unit} }}")
    })
    .await;
}
