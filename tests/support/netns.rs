//! Network namespaces for the end-to-end tests that need root
//! (`tests/transparent_netns.rs`, `tests/k8s_pods_netns.rs`): whether they
//! can run here, namespaces deleted on drop with everything in them,
//! processes started inside one (as root or as another uid) and killed on
//! drop, bounded commands and waits, `curl` from inside.
//!
//! A run killed by a signal never gets to its guards: the first test of the
//! next run deletes the namespaces and temp dirs such a run left (they are
//! named after its pid).

use std::cell::RefCell;
use std::fs;
use std::io::Read as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// The sidecar's uid and gid: excluded from capture by the redirect.
pub const PROXY_UID: u32 = 1337;
/// Namespace and temp dir names: `<prefix><pid>-<n>-<role>`.
const NS_PREFIX: &str = "appid-tn-";
/// Every wait is bounded by this, unless said otherwise.
pub const WAIT: Duration = Duration::from_secs(10);
/// A debug-build sidecar on a busy CI machine may take a while to start.
pub const READY_WAIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------
// Skipping

/// Returns true when the test should go on; prints why not otherwise
/// (under `CI=true`, a reason to skip is a failure). The first call also
/// sweeps what killed runs left.
pub fn should_run() -> bool {
    static REASON: OnceLock<Option<String>> = OnceLock::new();
    static SWEPT: OnceLock<()> = OnceLock::new();
    match REASON.get_or_init(cannot_run) {
        None => {
            SWEPT.get_or_init(sweep_stale);
            true
        }
        Some(reason) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("network-namespace tests cannot run in CI: {reason}")
        }
        Some(reason) => {
            eprintln!("skipping network-namespace test: {reason}");
            false
        }
    }
}

/// Why these tests cannot run here, if they cannot.
fn cannot_run() -> Option<String> {
    match fs::metadata("/proc/self") {
        Ok(meta) if meta.uid() == 0 => {}
        _ => return Some("not root (namespaces and iptables rules need it)".into()),
    }
    for tool in [
        "ip",
        "iptables",
        "iptables-save",
        "ip6tables-save",
        "python3",
        "setpriv",
        "curl",
        "ss",
    ] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Some(format!("`{tool}` not installed"));
        }
    }
    // Root in a container without CAP_SYS_ADMIN cannot make namespaces.
    let probe = format!("{NS_PREFIX}{}-probe", std::process::id());
    let out = Command::new("ip").args(["netns", "add", &probe]).output();
    let _ = Command::new("ip").args(["netns", "del", &probe]).output();
    match out {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "cannot create a network namespace: {}",
            text(&o.stderr).trim()
        )),
        Err(e) => Some(format!("cannot run `ip`: {e}")),
    }
}

// ---------------------------------------------------------------------------
// Processes

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temp path")
}

/// Runs `command` to completion within `limit`, killing it (and failing the
/// test) when it takes longer.
pub fn output_within(mut command: Command, limit: Duration) -> Output {
    let shown = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {shown}: {e}"));
    let drain = |mut pipe: Box<dyn std::io::Read + Send>| {
        thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("piped stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("piped stderr")));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{shown} did not finish within {limit:?}");
        }
        thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

/// Polls `check` every 100 ms until it returns `Some`, or fails the test
/// after `limit`, printing `context()`.
pub fn wait_for<T>(
    what: &str,
    limit: Duration,
    context: impl Fn() -> String,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        if start.elapsed() > limit {
            panic!(
                "timed out after {limit:?} waiting for {what}\n{}",
                context()
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// A long-running child (sidecar, app, authority), killed (SIGKILL) when
/// dropped.
pub struct Proc {
    what: String,
    child: RefCell<Child>,
    log: PathBuf,
}

impl Proc {
    /// `Some(status)` when it has already exited.
    pub fn exited(&self) -> Option<ExitStatus> {
        self.child.borrow_mut().try_wait().ok().flatten()
    }

    /// The end of its output, headed by what it is.
    pub fn log(&self) -> String {
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        // The end is what matters; keep failure messages readable.
        let start = log.len().saturating_sub(4000);
        let start = (start..log.len())
            .find(|&i| log.is_char_boundary(i))
            .unwrap_or(0);
        format!(
            "--- {} ({}) ---\n{}",
            self.what,
            self.log.display(),
            &log[start..]
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let child = self.child.get_mut();
        let _ = child.kill();
        let _ = child.wait();
    }
}

// ---------------------------------------------------------------------------
// Namespaces

/// A network namespace that is deleted when dropped, even on panic, with
/// everything in it: veths, bridges, addresses, iptables rules, processes.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// A new namespace named after `role`, with `lo` up.
    pub fn new(role: &str) -> Netns {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "{NS_PREFIX}{}-{}-{role}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut add = Command::new("ip");
        add.args(["netns", "add", &name]);
        let out = output_within(add, WAIT);
        assert!(
            out.status.success(),
            "ip netns add {name}: {}",
            text(&out.stderr)
        );
        let ns = Netns { name };
        ns.sh("ip link set lo up");
        ns
    }

    /// Makes this namespace a switch: a bridge `br0` with `ip`/24 on it,
    /// the gateway of the hosts [`Netns::attach`]ed to it.
    pub fn make_bridge(&self, ip: &str) {
        self.sh(&format!(
            "ip link add br0 type bridge && ip addr add {ip}/24 dev br0 && ip link set br0 up"
        ));
    }

    /// Plugs `host` into this namespace's bridge (see [`Netns::make_bridge`],
    /// whose address `gateway` is) as `ip`/24 on its `eth0`, through the
    /// veth `veth<n>` (`n`: unique per bridge).
    pub fn attach(&self, host: &Netns, ip: &str, gateway: &str, n: usize) {
        self.sh(&format!(
            "ip link add veth{n} type veth peer name eth0 netns {host}
             ip link set veth{n} master br0 && ip link set veth{n} up",
            host = host.name
        ));
        host.sh(&format!(
            "ip addr add {ip}/24 dev eth0 && ip link set eth0 up
             ip route add default via {gateway}"
        ));
    }

    /// `program args` inside the namespace (as root).
    pub fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.name, program])
            .args(args);
        command
    }

    pub fn run(&self, program: &str, args: &[&str]) -> Output {
        output_within(self.command(program, args), WAIT)
    }

    /// A shell script inside the namespace that must succeed; its stdout.
    pub fn sh(&self, script: &str) -> String {
        let out = self.run("sh", &["-c", script]);
        assert!(
            out.status.success(),
            "in {}: {script}: {}",
            self.name,
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// Starts a long-running `program args` as root, output to `log`.
    pub fn spawn(&self, what: &str, program: &str, args: &[&str], log: &Path) -> Proc {
        self.spawn_command(what, self.command(program, args), log)
    }

    /// Starts a long-running `program args` as `uid` (and gid `uid`, no
    /// supplementary groups) with `env` added, output to `log`.
    pub fn spawn_as(
        &self,
        uid: u32,
        what: &str,
        program: &str,
        args: &[&str],
        env: &[(&str, &str)],
        log: &Path,
    ) -> Proc {
        let uid = uid.to_string();
        let mut all = vec!["--reuid", &uid, "--regid", &uid, "--clear-groups", program];
        all.extend_from_slice(args);
        let mut command = self.command("setpriv", &all);
        command.envs(env.iter().copied());
        self.spawn_command(what, command, log)
    }

    fn spawn_command(&self, what: &str, mut command: Command, log: &Path) -> Proc {
        let file = fs::File::create(log).expect("create log file");
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("clone log file"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        Proc {
            what: format!("{what} in {}", self.name),
            child: RefCell::new(child),
            log: log.to_path_buf(),
        }
    }

    /// Waits until something listens on TCP `port` (any address).
    pub fn wait_listening(&self, port: u16) {
        let filter = format!("sport = :{port}");
        wait_for(
            &format!("a listener on port {port} in {}", self.name),
            WAIT,
            || self.sh("ss -Hltnp"),
            || {
                let out = self.run("ss", &["-Hltn", &filter]);
                (out.status.success() && !out.stdout.is_empty()).then_some(())
            },
        );
    }

    /// `curl` from inside the namespace (as root, so it is captured).
    pub fn curl(&self, url: &str, max_secs: u32) -> Reply {
        self.curl_with(&[], url, max_secs)
    }

    /// [`Netns::curl`] with more of curl's options (`--resolve`, ...).
    pub fn curl_with(&self, options: &[&str], url: &str, max_secs: u32) -> Reply {
        let max = max_secs.to_string();
        let mut args = vec!["-sS", "-i", "-m", &max];
        args.extend_from_slice(options);
        args.push(url);
        let start = Instant::now();
        let out = output_within(
            self.command("curl", &args),
            Duration::from_secs(u64::from(max_secs) + 5),
        );
        Reply::parse(&out, start.elapsed())
    }

    /// What `/etc/hosts` holds for every program started in the namespace
    /// from now on (`ip netns exec` mounts `/etc/netns/<name>/hosts` over
    /// it); removed with the namespace.
    pub fn set_hosts_file(&self, contents: &str) {
        let dir = Path::new("/etc/netns").join(&self.name);
        fs::create_dir_all(&dir).expect("mkdir /etc/netns/<name>");
        fs::write(dir.join("hosts"), contents).expect("write /etc/netns/<name>/hosts");
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        remove_namespace(&self.name);
    }
}

/// Kills whatever still runs inside (it would keep the namespace, and its
/// veths, alive after `ip netns del`), then deletes it.
fn remove_namespace(name: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() {
        for pid in text(&out.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-KILL", pid]).output();
        }
    }
    let _ = Command::new("ip").args(["netns", "del", name]).output();
    // Its files (`Netns::set_hosts_file`), if any.
    let _ = fs::remove_dir_all(Path::new("/etc/netns").join(name));
}

/// Whether `name` (a namespace or temp dir) is ours, left by a test process
/// that no longer exists (a run killed by a signal never got to its guards).
fn is_stale(name: &str) -> bool {
    name.strip_prefix(NS_PREFIX)
        .and_then(|rest| rest.split('-').next())
        .and_then(|pid| pid.parse::<u32>().ok())
        .is_some_and(|pid| {
            pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
        })
}

/// Deletes stale namespaces (and what runs in them) and temp dirs.
fn sweep_stale() {
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        for line in text(&out.stdout).lines() {
            match line.split_whitespace().next() {
                Some(name) if is_stale(name) => {
                    eprintln!("removing stale namespace {name}");
                    remove_namespace(name);
                }
                _ => {}
            }
        }
    }
    for entry in fs::read_dir(std::env::temp_dir())
        .into_iter()
        .flatten()
        .flatten()
    {
        if entry.file_name().to_str().is_some_and(is_stale) {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// A temp dir named after this process, so a later run can sweep it.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("{NS_PREFIX}{}-", std::process::id()))
        .tempdir()
        .expect("temp dir")
}

/// The real interpreter behind `python3` (pyenv shims and the like are
/// slow to start, and some resolve per directory).
pub fn python() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| {
        Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .ok()
            .map(|o| text(&o.stdout).trim().to_string())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "python3".into())
    })
}

// ---------------------------------------------------------------------------
// HTTP replies

/// What `curl -i` got.
#[derive(Debug)]
pub struct Reply {
    /// curl's exit code (0 ok, 7 refused, 28 timeout, 52 empty reply, 56
    /// connection reset, ...).
    pub exit: Option<i32>,
    pub status: Option<u16>,
    /// Lowercased names.
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub took: Duration,
    /// Shown in failure messages (through `Debug`).
    pub stderr: String,
}

impl Reply {
    fn parse(out: &Output, took: Duration) -> Reply {
        let raw = text(&out.stdout);
        let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw.as_str(), ""));
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok());
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Reply {
            exit: out.status.code(),
            status,
            headers,
            body: body.to_string(),
            took,
            stderr: text(&out.stderr),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn is_ok_with(&self, body: &str) -> bool {
        self.exit == Some(0) && self.status == Some(200) && self.body == body
    }

    /// Refused by `rule`: a 403 naming it, or a connection closed without
    /// a response (a denial found before the protocol was known).
    pub fn is_refused_by(&self, rule: &str) -> bool {
        match self.status {
            Some(403) => self.header("x-appid-denied-by") == Some(rule),
            Some(_) => false,
            None => self.exit != Some(0) && self.exit != Some(28),
        }
    }
}
