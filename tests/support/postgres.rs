//! A throw-away PostgreSQL cluster for tests: `initdb` from Debian's
//! `/usr/lib/postgresql/<version>/bin/` into a temp dir, `postgres` on a
//! free loopback port with its unix socket in that dir, `fsync` off.
//!
//! PostgreSQL refuses to run as root, so as root (CI) both run as the
//! `postgres` user (or `nobody` when there is none) through `runuser`.
//! The server runs under a small shell that waits on a pipe from this
//! process: when the harness is dropped — or the test process exits in any
//! way, even killed, which a `static` cluster shared by one test binary
//! relies on — the pipe closes and the shell stops the server (immediate
//! shutdown) and removes the temp dir. Nothing outlives the test binary.
//!
//! Self-contained (std, tempfile, rustix, postgres), so the library's unit
//! tests include it too (`#[path]`).

#![allow(dead_code)]

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A running cluster; stopped and removed on drop.
pub struct Postgres {
    port: u16,
    dir: PathBuf,
    /// The shell that runs the server; its stdin is the pipe it waits on.
    keeper: Child,
}

/// The server's directory (`initdb`, `postgres`), when installed.
fn server_bin() -> Option<PathBuf> {
    std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .map(|version| version.path().join("bin"))
        .filter(|bin| bin.join("initdb").is_file() && bin.join("postgres").is_file())
        .max()
}

/// The user that runs the server when we are root.
fn server_user() -> &'static str {
    let exists = |user: &str| {
        Command::new("id")
            .arg(user)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    };
    if exists("postgres") {
        "postgres"
    } else {
        "nobody"
    }
}

fn id_of(flag: &str, user: &str) -> u32 {
    let out = Command::new("id")
        .args([flag, user])
        .output()
        .expect("run id");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("id {flag} {user}: {out:?}"))
}

/// `program` as the server user (root), or as ourselves.
fn as_server_user(program: &str) -> Command {
    if rustix::process::geteuid().is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", server_user(), "--", program]);
        command
    } else {
        Command::new(program)
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

/// Stops the server when stdin closes, then removes the directory.
const KEEPER: &str = r#"
bin="$1"; root="$2"; port="$3"; shift 3
"$bin/postgres" -D "$root/data" -p "$port" -k "$root" \
    -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
    -c full_page_writes=off -c max_connections=200 "$@" >"$root/postgres.log" 2>&1 &
pid=$!
cat >/dev/null
kill -QUIT "$pid" 2>/dev/null
wait "$pid"
rm -rf "$root"
"#;

impl Postgres {
    /// Starts a cluster. `None` (saying why) when PostgreSQL is not
    /// installed, except under `CI=true`, where it must be.
    pub fn start() -> Option<Postgres> {
        Postgres::start_with(None)
    }

    /// [`Self::start`], serving TLS too (`ssl=on`) with this certificate
    /// and key (PEM); plain connections are still accepted.
    pub fn start_with_tls(cert_pem: &str, key_pem: &str) -> Option<Postgres> {
        Postgres::start_with(Some((cert_pem, key_pem)))
    }

    /// [`Self::start`] with the durability a production server has:
    /// `fsync`, `synchronous_commit` and `full_page_writes` on (every commit
    /// is on disk before it is acknowledged). For benchmarks; tests keep
    /// them off for speed.
    pub fn start_durable() -> Option<Postgres> {
        Postgres::start_with_settings(
            None,
            &["fsync=on", "synchronous_commit=on", "full_page_writes=on"],
        )
    }

    fn start_with(tls: Option<(&str, &str)>) -> Option<Postgres> {
        Postgres::start_with_settings(tls, &[])
    }

    /// Starts a cluster; each of `extra` (`name=value`) is given as `-c`
    /// after the defaults, so it overrides them.
    fn start_with_settings(tls: Option<(&str, &str)>, extra: &[&str]) -> Option<Postgres> {
        let Some(bin) = server_bin() else {
            let why = "PostgreSQL's server is not installed (no /usr/lib/postgresql/*/bin/initdb): \
                       apt-get install -y postgresql (.ci/run installs it)";
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{why}");
            }
            eprintln!("skipping the PostgreSQL cases: {why}");
            return None;
        };
        let dir = tempfile::Builder::new()
            .prefix("appid-pg-")
            .tempdir()
            .expect("temp dir")
            .keep();
        let owner = rustix::process::geteuid().is_root().then(|| {
            let user = server_user();
            (id_of("-u", user), id_of("-g", user))
        });
        let give = |path: &Path| {
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown");
            }
        };
        give(&dir);
        let mut settings = Vec::new();
        if let Some((cert, key)) = tls {
            use std::os::unix::fs::PermissionsExt as _;
            let (cert_file, key_file) = (dir.join("server.crt"), dir.join("server.key"));
            std::fs::write(&cert_file, cert).expect("write the server certificate");
            std::fs::write(&key_file, key).expect("write the server key");
            std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600))
                .expect("chmod the server key");
            give(&cert_file);
            give(&key_file);
            for setting in [
                "ssl=on".to_string(),
                format!("ssl_cert_file={}", cert_file.display()),
                format!("ssl_key_file={}", key_file.display()),
            ] {
                settings.extend(["-c".to_string(), setting]);
            }
        }
        for setting in extra {
            settings.extend(["-c".to_string(), setting.to_string()]);
        }
        let init = as_server_user(bin.join("initdb").to_str().expect("UTF-8 path"))
            .arg("-D")
            .arg(dir.join("data"))
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-locale",
            ])
            .arg("--no-sync")
            .output()
            .expect("run initdb");
        if !init.status.success() {
            let _ = std::fs::remove_dir_all(&dir);
            panic!(
                "initdb failed ({}): {}{}",
                init.status,
                String::from_utf8_lossy(&init.stdout),
                String::from_utf8_lossy(&init.stderr)
            );
        }
        let port = free_port();
        let keeper = as_server_user("sh")
            .args(["-c", KEEPER, "keeper"])
            .arg(&bin)
            .arg(&dir)
            .arg(port.to_string())
            .args(&settings)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start postgres");
        let mut cluster = Postgres { port, dir, keeper };
        cluster.wait_ready();
        Some(cluster)
    }

    /// The cluster shared by every test of this binary, started at first
    /// use; stopped when the binary exits.
    pub fn shared() -> Option<&'static Postgres> {
        static SHARED: OnceLock<Option<Postgres>> = OnceLock::new();
        SHARED.get_or_init(Postgres::start).as_ref()
    }

    fn wait_ready(&mut self) {
        let start = Instant::now();
        loop {
            match postgres::Client::connect(&self.url("postgres"), postgres::NoTls) {
                Ok(_) => return,
                Err(e) => {
                    if let Ok(Some(status)) = self.keeper.try_wait() {
                        panic!("postgres exited ({status}):\n{}", self.log());
                    }
                    if start.elapsed() > Duration::from_secs(30) {
                        panic!("postgres not ready after 30 s ({e}):\n{}", self.log());
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The unix socket directory.
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = std::fs::File::open(self.dir.join("postgres.log")) {
            let _ = file.read_to_string(&mut text);
        }
        text
    }

    /// `postgres://postgres@127.0.0.1:PORT/<database>` (trust auth).
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Runs SQL as the superuser in `database`.
    pub fn execute(&self, database: &str, sql: &str) {
        let mut client = postgres::Client::connect(&self.url(database), postgres::NoTls)
            .unwrap_or_else(|e| panic!("connect to {database}: {e}"));
        client
            .batch_execute(sql)
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }

    /// A new, empty database named `<hint>_<n>`; its URL.
    pub fn create_database(&self, hint: &str) -> String {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!("{hint}_{}", NEXT.fetch_add(1, Ordering::Relaxed));
        self.execute("postgres", &format!("CREATE DATABASE \"{name}\""));
        self.url(&name)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Closing the pipe tells the keeper to stop the server and clean up.
        drop(self.keeper.stdin.take());
        let _ = self.keeper.wait();
    }
}
