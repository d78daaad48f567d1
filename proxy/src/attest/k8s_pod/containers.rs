//! Which of a pod's containers run beside the app, what each runs, and
//! which are appid's own: the judgments behind `k8s.images`,
//! `image.digest` and `vulns`.
//!
//! The bias is the vouching one: when the pod object leaves a doubt, the
//! container counts, and counts as the app's. A container is listed unless
//! it has surely ended; its digest is known only where the spec and the
//! kubelet agree on it; and it is appid's own only when nothing in its spec
//! could make it run other code than appid. A doubt then costs the pod its
//! `image.digest` and `vulns` until a renewal sees it settled, never a
//! scan that vouches for an image the pod does not (only) run.

use serde::Deserialize;
use serde::de::IgnoredAny;

use super::registry_digest;
use crate::inject::{CONFIG_DIR, IDENTITY_DIR, RUN_DIR};

/// A container as the pod's spec describes it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct SpecContainer {
    pub name: String,
    pub image: Option<String>,
    /// `Always` on an init container: a native sidecar, which runs beside
    /// the app containers for the pod's life.
    pub restart_policy: Option<String>,
    // What could make a container of appid's image run other code than
    // appid ([`SpecContainer::runs_only_appid`]).
    #[serde(default)]
    command: Vec<String>,
    #[serde(default)]
    env: Vec<EnvVar>,
    #[serde(default)]
    env_from: Vec<IgnoredAny>,
    #[serde(default)]
    volume_mounts: Vec<VolumeMount>,
    lifecycle: Option<IgnoredAny>,
    startup_probe: Option<Probe>,
    readiness_probe: Option<Probe>,
    liveness_probe: Option<Probe>,
}

#[derive(Deserialize)]
struct EnvVar {
    name: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct VolumeMount {
    mount_path: String,
}

#[derive(Deserialize)]
struct Probe {
    exec: Option<IgnoredAny>,
}

/// A container as the kubelet last reported it.
#[derive(Deserialize)]
pub(super) struct ContainerStatus {
    pub name: String,
    #[serde(rename = "imageID", default)]
    image_id: String,
    #[serde(default)]
    state: ContainerState,
}

#[derive(Deserialize, Default)]
struct ContainerState {
    running: Option<IgnoredAny>,
    terminated: Option<Terminated>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Terminated {
    exit_code: Option<i64>,
}

/// Environment variables appid's containers may set (besides `APPID_*`):
/// none of them names code to load or run.
const APPID_ENV: [&str; 2] = ["XTABLES_LOCKFILE", "RUST_LOG"];

/// Where appid's containers may mount volumes: its own directories (as
/// `appid inject` writes them), and the API server's service-account token
/// under `/var/run/secrets/`. None holds a binary or a library it loads.
fn appid_mount(path: &str) -> bool {
    let no_dots = !path.split('/').any(|part| part == "..");
    no_dots
        && ([CONFIG_DIR, IDENTITY_DIR, RUN_DIR].contains(&path)
            || path.starts_with("/var/run/secrets/"))
}

impl SpecContainer {
    /// Whether nothing in this container's spec could make appid's image
    /// run other code than appid: no `command` (the image's entrypoint is
    /// appid, and `args` only choose what appid does), no environment that
    /// is not appid's (`LD_PRELOAD`, or a `PATH` to another `iptables`),
    /// no `envFrom`, no volume over anything but appid's directories (a
    /// binary, a library, `/etc/ld.so.preload`), no exec hook or probe (a
    /// command the kubelet runs inside it). appid's image has a shell: its
    /// digest alone says what could run, not what does.
    pub fn runs_only_appid(&self) -> bool {
        let probes = [
            &self.startup_probe,
            &self.readiness_probe,
            &self.liveness_probe,
        ];
        self.command.is_empty()
            && self.env_from.is_empty()
            && self
                .env
                .iter()
                .all(|e| e.name.starts_with("APPID_") || APPID_ENV.contains(&e.name.as_str()))
            && self
                .volume_mounts
                .iter()
                .all(|m| appid_mount(&m.mount_path))
            && self.lifecycle.is_none()
            && probes
                .iter()
                .all(|p| p.as_ref().is_none_or(|p| p.exec.is_none()))
    }

    /// The digest this container runs (or ran), when the spec and the
    /// kubelet do not leave it in doubt: the kubelet's digest of a
    /// container that runs or has run (what it pulled), unless the spec
    /// pins another (`kubectl set image` on a live pod: the old container
    /// ran one image, the spec names what comes next); else the digest the
    /// spec pins (the kubelet runs exactly that). A container waiting to
    /// start says nothing of what it will run but through its spec: its
    /// status may still carry the image of the container before.
    pub fn digest(&self, status: Option<&ContainerStatus>) -> Option<String> {
        let pinned = self.image.as_deref().and_then(registry_digest);
        let running = status
            .filter(|s| s.state.running.is_some() || s.state.terminated.is_some())
            .and_then(|s| registry_digest(&s.image_id));
        match (pinned, running) {
            (Some(pinned), Some(running)) if pinned != running => None,
            (Some(pinned), _) => Some(pinned),
            (None, running) => running,
        }
    }

    /// Whether this init container runs beside the app (or may yet): a
    /// native sidecar always; a plain one until it has ended with exit code
    /// 0 (appid's own redirect has; the pod's own init containers run after
    /// appid's proxy started, with its identity, and one may never end).
    pub fn init_runs_beside_app(&self, status: Option<&ContainerStatus>) -> bool {
        let ended_well = status
            .and_then(|s| s.state.terminated.as_ref())
            .is_some_and(|t| t.exit_code == Some(0));
        self.restart_policy.as_deref() == Some("Always") || !ended_well
    }
}
