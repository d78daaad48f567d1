//! One "host" of the network-namespace tests (a machine, a VM, a pod): a
//! namespace, a directory of files the sidecar (uid 1337) may read and
//! write, `appid proxy` running there as uid 1337, apps running there as
//! root (so their traffic is captured), and `appid redirect` in it.
//!
//! What the sidecar is (its `proxy.yaml`, identity, policy) is the test's
//! to write with [`Host::put`]; this is the machinery around it.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

use super::netns::{
    Netns, PROXY_UID, Proc, READY_WAIT, WAIT, output_within, path_str, python, temp_dir, text,
    wait_for,
};
use super::pki::APPID;

/// The admin API every sidecar of these tests listens on (in its own
/// namespace).
pub const ADMIN: &str = "127.0.0.1:15190";
/// Three ticks of the sidecar's audit flush (allow lines are buffered).
const AUDIT_FLUSH_WAIT: std::time::Duration = std::time::Duration::from_millis(300);

/// Field order is drop order: processes first, then files, then the
/// namespace.
pub struct Host {
    pub sidecar: Option<Proc>,
    pub apps: Vec<Proc>,
    pub dir: tempfile::TempDir,
    /// Where the sidecar's audit lines are: `audit.jsonl` in [`Host::dir`]
    /// unless set otherwise (the sidecar's own log, for `audit_log: "-"`).
    pub audit_file: PathBuf,
    pub ns: Netns,
}

impl Host {
    /// A new namespace and an empty directory the sidecar's uid owns.
    pub fn new(role: &str) -> Host {
        Host::in_namespace(Netns::new(role))
    }

    /// The same, in `ns`.
    pub fn in_namespace(ns: Netns) -> Host {
        let dir = temp_dir();
        // The sidecar runs as uid 1337: it must read its files and write
        // its audit log.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        std::os::unix::fs::chown(dir.path(), Some(PROXY_UID), Some(PROXY_UID)).expect("chown");
        let audit_file = dir.path().join("audit.jsonl");
        Host {
            sidecar: None,
            apps: Vec::new(),
            dir,
            audit_file,
            ns,
        }
    }

    pub fn path(&self, name: impl AsRef<Path>) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `name` (a path under [`Host::dir`]; missing directories are
    /// made, owned by the sidecar) atomically (temp file + rename, as config
    /// management and the kubelet do), owned by the sidecar's uid, private.
    pub fn put(&self, name: &str, contents: &[u8]) {
        let path = self.path(name);
        let parent = path.parent().expect("a parent directory");
        self.make_dir(parent);
        let file_name = path.file_name().and_then(|n| n.to_str()).expect("a name");
        let temp = parent.join(format!(".{file_name}.tmp"));
        fs::write(&temp, contents).expect("write file");
        fs::set_permissions(&temp, fs::Permissions::from_mode(0o600)).expect("chmod");
        std::os::unix::fs::chown(&temp, Some(PROXY_UID), Some(PROXY_UID)).expect("chown");
        fs::rename(&temp, &path).expect("rename into place");
    }

    /// Makes `name` (a directory under [`Host::dir`]) and its missing
    /// parents, owned by the sidecar's uid.
    pub fn make_dir(&self, name: impl AsRef<Path>) {
        let path = self.path(name);
        fs::create_dir_all(&path).expect("mkdir");
        for dir in path.ancestors().take_while(|d| *d != self.dir.path()) {
            std::os::unix::fs::chown(dir, Some(PROXY_UID), Some(PROXY_UID)).expect("chown");
        }
    }

    /// Starts `appid proxy --config proxy.yaml` as uid 1337 and waits
    /// until `/ready`.
    pub fn start_sidecar(&mut self) {
        let config = self.path("proxy.yaml");
        self.start_sidecar_with(&config, &[]);
    }

    /// Starts `appid proxy --config <config>` as uid 1337 with `env` and
    /// waits until `/ready` on the admin API.
    pub fn start_sidecar_with(&mut self, config: &Path, env: &[(&str, &str)]) {
        let proc = self.ns.spawn_as(
            PROXY_UID,
            "sidecar",
            APPID,
            &["proxy", "--config", path_str(config)],
            env,
            &self.path("sidecar.log"),
        );
        self.sidecar = Some(proc);
        self.wait_sidecar_ready();
    }

    /// Starts `appid proxy --config <config>` as uid 1337 with the ambient
    /// capability `cap` (e.g. `sys_ptrace`: a systemd unit's
    /// `AmbientCapabilities=CAP_SYS_PTRACE`), and waits until `/ready`.
    pub fn start_sidecar_with_capability(&mut self, config: &Path, cap: &str) {
        let uid = PROXY_UID.to_string();
        let cap = format!("+{cap}");
        let args = [
            "--reuid",
            &uid,
            "--regid",
            &uid,
            "--clear-groups",
            "--inh-caps",
            &cap,
            "--ambient-caps",
            &cap,
            APPID,
            "proxy",
            "--config",
            path_str(config),
        ];
        let proc = self
            .ns
            .spawn("sidecar", "setpriv", &args, &self.path("sidecar.log"));
        self.sidecar = Some(proc);
        self.wait_sidecar_ready();
    }

    fn wait_sidecar_ready(&self) {
        wait_for(
            &format!("the sidecar in {} to be ready", self.ns.name),
            READY_WAIT,
            || self.context(),
            || {
                if let Some(status) = self.sidecar.as_ref().and_then(Proc::exited) {
                    panic!("the sidecar exited ({status})\n{}", self.context());
                }
                (self.admin("/ready").0 == 200).then_some(())
            },
        );
    }

    /// `GET` on the admin API: (status, body); status 0 when unreachable.
    pub fn admin(&self, path: &str) -> (u16, String) {
        let reply = self.ns.curl(&format!("http://{ADMIN}{path}"), 2);
        (reply.status.unwrap_or(0), reply.body)
    }

    /// The sidecar's identity (`/appid` on the admin API).
    pub fn identity(&self) -> Value {
        let (status, body) = self.admin("/appid");
        assert_eq!(status, 200, "/appid: {body}\n{}", self.context());
        serde_json::from_str(&body).expect("JSON from /appid")
    }

    /// A numeric metric from `/metrics` (0 when absent).
    pub fn metric(&self, series: &str) -> f64 {
        let (_, body) = self.admin("/metrics");
        body.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// `appid redirect <args>` in the namespace, as root.
    pub fn redirect(&self, args: &[&str]) -> Output {
        let mut all = vec!["redirect"];
        all.extend_from_slice(args);
        self.ns.run(APPID, &all)
    }

    /// `appid redirect install --proxy-uid 1337`.
    pub fn install_redirect(&self) {
        let uid = PROXY_UID.to_string();
        self.install_redirect_with(&["redirect", "install", "--proxy-uid", &uid], &[]);
    }

    /// `appid <args>` as root with `env` added (an init container's:
    /// `redirect install ...`), which must succeed.
    pub fn install_redirect_with(&self, args: &[&str], env: &[(&str, &str)]) {
        let mut command = self.ns.command(APPID, args);
        command.envs(env.iter().copied());
        let out = output_within(command, WAIT);
        assert!(
            out.status.success(),
            "appid {}: {}",
            args.join(" "),
            text(&out.stderr)
        );
    }

    /// `appid redirect remove`, checked: `show` then finds nothing, and no
    /// chain of ours is left.
    pub fn remove_redirect(&self) {
        let out = self.redirect(&["remove"]);
        assert!(
            out.status.success(),
            "redirect remove: {}",
            text(&out.stderr)
        );
        let show = self.redirect(&["show"]);
        assert_eq!(
            show.status.code(),
            Some(1),
            "show after remove: {}",
            text(&show.stdout)
        );
        let saved = self.ns.sh("iptables-save -t nat");
        assert!(!saved.contains("APPID_"), "left after remove:\n{saved}");
    }

    /// The audit lines so far (the JSON lines of [`Host::audit_file`]).
    /// The sidecar writes allow lines out on a 100 ms tick (denials at
    /// once), so this first waits out a few ticks.
    pub fn audit(&self) -> Vec<Value> {
        std::thread::sleep(AUDIT_FLUSH_WAIT);
        let text = fs::read_to_string(&self.audit_file).unwrap_or_default();
        // The sidecar's own log may hold the audit lines (`audit_log: "-"`)
        // among its other lines: only the JSON ones.
        let json: String = text
            .split_inclusive('\n')
            .filter(|l| l.starts_with('{'))
            .collect();
        super::json_lines(&json, "the audit log")
    }

    /// Starts `python3 args` (an app, as root) and waits for it to listen
    /// on `port`.
    pub fn start_app(&mut self, what: &str, args: &[&str], port: u16) {
        let log = self.path(format!("{what}.log"));
        let proc = self.ns.spawn(what, python(), args, &log);
        self.apps.push(proc);
        self.ns.wait_listening(port);
    }

    /// The sidecar's and apps' logs and the audit log, for failure messages.
    pub fn context(&self) -> String {
        let mut out = format!("=== {} ===\n", self.ns.name);
        for proc in self.sidecar.iter().chain(&self.apps) {
            out.push_str(&proc.log());
            out.push('\n');
        }
        if self.audit_file != self.path("sidecar.log") {
            out.push_str("--- audit ---\n");
            out.push_str(&fs::read_to_string(&self.audit_file).unwrap_or_default());
        }
        out
    }
}

/// Context from several hosts.
pub fn context(hosts: &[&Host]) -> String {
    hosts
        .iter()
        .map(|h| h.context())
        .collect::<Vec<_>>()
        .join("\n")
}
