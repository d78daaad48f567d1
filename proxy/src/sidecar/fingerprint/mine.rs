//! One round of mining: find the workload, read what `/proc` and its root
//! file system say about it, hash its executable and libraries.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::facts::{Container, Host, Library, Process, Reported, TooLarge, capped};
use super::hash::{self, HashError};
use super::read::{self, ReadError};
use super::workload::{FindError, Workload};
use super::{container, ids, maps, os_release};

/// At most this many libraries are hashed.
pub const MAX_LIBRARIES: usize = 128;
/// Caps on the text files read (a process with a million mappings costs
/// at most this much memory, its list is cut).
const MAPS_CAP: u64 = 4 * 1024 * 1024;
const PASSWD_CAP: u64 = 4 * 1024 * 1024;
const SMALL_CAP: u64 = 256 * 1024;

/// Environment variables the injector (or an operator) sets on the sidecar
/// for the image the workload's container runs.
pub const IMAGE_ENV: &str = "APPID_IMAGE";
pub const IMAGE_DIGEST_ENV: &str = "APPID_IMAGE_DIGEST";

/// Why a round of mining produced nothing.
#[derive(Debug, thiserror::Error)]
pub enum MineError {
    #[error("finding the workload: {0}")]
    Find(#[from] FindError),
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("/proc/{0}/status has no Uid/Gid/PPid")]
    Status(u32),
    #[error("hashing the executable of process {pid}: {error}")]
    Exe { pid: u32, error: HashError },
    #[error("the previous round of mining has not finished (a slow file system?)")]
    Busy,
    #[error("mining took longer than its time budget")]
    OutOfTime,
    #[error(transparent)]
    TooLarge(#[from] TooLarge),
    #[error("the mining task failed: {0}")]
    Task(String),
}

impl MineError {
    /// A short name per kind of failure: each kind is logged once (until
    /// a round succeeds again).
    pub fn kind(&self) -> &'static str {
        match self {
            MineError::Find(_) => "no_process",
            MineError::Read(_) | MineError::Status(_) => "unreadable",
            MineError::Exe {
                error: HashError::Io(_),
                ..
            } => "unreadable",
            MineError::Exe {
                error: HashError::OutOfTime,
                ..
            }
            | MineError::OutOfTime => "time_budget",
            MineError::Busy => "busy",
            MineError::TooLarge(_) => "too_large",
            MineError::Task(_) => "internal",
        }
    }
}

/// Mines the facts of `workload`, hashing until `deadline`.
pub fn mine(workload: &Workload, deadline: Instant) -> Result<Reported, MineError> {
    let kernel = read::capped(Path::new("/proc/sys/kernel/osrelease"), 256)
        .ok()
        .map(|k| capped(k.trim()))
        .filter(|k| !k.is_empty());
    let Some(pid) = workload.find()? else {
        return Ok(Reported {
            host: Some(Host {
                kernel,
                os: os_release_in(Path::new("/")),
            }),
            ..Reported::default()
        });
    };
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    let process = process(pid, &root, deadline)?;
    let container = container_of(pid);
    Ok(Reported {
        process: Some(process),
        host: Some(Host {
            kernel,
            os: os_release_in(&root),
        }),
        container: (!container.is_empty()).then_some(container),
    })
}

/// `path` (absolute) inside the root file system `root`.
fn in_root(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

fn os_release_in(root: &Path) -> os_release::OsRelease {
    ["/etc/os-release", "/usr/lib/os-release"]
        .iter()
        .find_map(|p| read::capped(&in_root(root, p), SMALL_CAP).ok())
        .map(|text| {
            let mut r = os_release::parse(&text);
            for field in [&mut r.id, &mut r.version_id, &mut r.pretty_name] {
                *field = field.as_deref().map(capped);
            }
            r
        })
        .unwrap_or_default()
}

fn process(pid: u32, root: &Path, deadline: Instant) -> Result<Process, MineError> {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let exe_link = proc_dir.join("exe");
    let path = std::fs::read_link(&exe_link)
        .map_err(|e| ReadError::new(&exe_link, e))?
        .to_string_lossy()
        .into_owned();
    let status = read::capped(&proc_dir.join("status"), SMALL_CAP)?;
    let status = ids::parse_status(&status).ok_or(MineError::Status(pid))?;
    let exe = File::open(&exe_link).map_err(|e| ReadError::new(&exe_link, e))?;
    let sha256 = hash::sha256_hex(exe, deadline).map_err(|error| MineError::Exe { pid, error })?;
    let user = read::capped(&in_root(root, "/etc/passwd"), PASSWD_CAP)
        .ok()
        .and_then(|passwd| ids::user_name(&passwd, status.uid))
        .map(|u| capped(&u));

    let maps = read::capped(&proc_dir.join("maps"), MAPS_CAP)?;
    let own = path.strip_suffix(maps::DELETED).unwrap_or(&path);
    let mapped: Vec<_> = maps::executable_files(&maps)
        .into_iter()
        .filter(|f| f.path != own)
        .collect();
    let mut truncated = mapped.len() > MAX_LIBRARIES;
    let mut libraries = Vec::new();
    for file in mapped.iter().take(MAX_LIBRARIES) {
        let sha256 = match library_hash(&proc_dir, root, file, deadline) {
            Ok(hash) => Some(hash),
            Err(HashError::OutOfTime) => {
                truncated = true;
                break;
            }
            Err(HashError::Io(e)) => {
                tracing::debug!(pid, library = %file.path, error = %e, "library not hashed");
                None
            }
        };
        libraries.push(Library {
            path: capped(&file.path),
            sha256,
        });
    }
    Ok(Process {
        sha256,
        path: capped(&path),
        uid: status.uid,
        user,
        gid: status.gid,
        libraries_sha256: (!libraries.is_empty()).then(|| set_digest(&libraries)),
        libraries,
        libraries_truncated: truncated,
    })
}

/// Hashes a mapped file: by its path inside the process's root, or (when
/// it was deleted or replaced since) the mapping itself.
fn library_hash(
    proc_dir: &Path,
    root: &Path,
    file: &maps::MappedFile,
    deadline: Instant,
) -> Result<String, HashError> {
    let by_mapping = proc_dir.join("map_files").join(&file.range);
    let opened = if file.deleted {
        File::open(&by_mapping)
    } else {
        File::open(in_root(root, &file.path)).or_else(|_| File::open(&by_mapping))
    };
    hash::sha256_hex(opened?, deadline)
}

/// SHA-256 of the `sha256sum`-style listing of `libraries`.
fn set_digest(libraries: &[Library]) -> String {
    let listing: String = libraries
        .iter()
        .map(|l| format!("{}  {}\n", l.sha256.as_deref().unwrap_or("-"), l.path))
        .collect();
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, listing.as_bytes()).as_ref())
}

/// The container `pid` runs in, and the image the environment names.
fn container_of(pid: u32) -> Container {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let id = read::capped(&proc_dir.join("cgroup"), SMALL_CAP)
        .ok()
        .and_then(|t| container::id_from_cgroup(&t))
        .or_else(|| {
            read::capped(&proc_dir.join("mountinfo"), MAPS_CAP)
                .ok()
                .and_then(|t| container::id_from_mountinfo(&t))
        });
    let (image, image_digest) = image_of(
        std::env::var(IMAGE_ENV).ok().as_deref(),
        std::env::var(IMAGE_DIGEST_ENV).ok().as_deref(),
    );
    Container {
        id,
        image,
        image_digest,
    }
}

/// The image reference and digest from [`IMAGE_ENV`] and
/// [`IMAGE_DIGEST_ENV`]: the digest variable when it is a digest, else the
/// one a `…@sha256:` reference carries; anything else is left out.
fn image_of(image: Option<&str>, digest: Option<&str>) -> (Option<String>, Option<String>) {
    let image = image.map(|i| capped(i.trim())).filter(|i| !i.is_empty());
    let digest = [
        digest,
        image.as_deref().and_then(|i| Some(i.split_once('@')?.1)),
    ]
    .into_iter()
    .flatten()
    .map(str::trim)
    .find(|d| is_digest(d))
    .map(str::to_owned);
    (image, digest)
}

/// `sha256:<64 lowercase hex>`.
fn is_digest(d: &str) -> bool {
    d.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(30)
    }

    #[test]
    fn the_image_digest_variable_wins_over_the_references_digest() {
        let by_ref = format!("registry.example/web@sha256:{}", "e".repeat(64));
        let given = format!("sha256:{}", "f".repeat(64));
        let of = |image: Option<&str>, digest: Option<&str>| image_of(image, digest);
        assert_eq!(
            of(Some("registry.example/web:1.4"), Some(&given)),
            (Some("registry.example/web:1.4".into()), Some(given.clone()))
        );
        assert_eq!(of(Some(&by_ref), Some(&given)).1, Some(given.clone()));
        assert_eq!(
            of(Some(&by_ref), None).1,
            Some(format!("sha256:{}", "e".repeat(64)))
        );
        // Not a digest: the reference's, else none.
        assert_eq!(
            of(Some(&by_ref), Some("sha256:short")).1,
            Some(format!("sha256:{}", "e".repeat(64)))
        );
        assert_eq!(of(Some("web:1.4"), Some("latest")).1, None);
        assert_eq!(of(Some("  "), None), (None, None));
        assert_eq!(of(None, Some(&format!(" {given} "))), (None, Some(given)));
    }

    /// Mines this test process itself, from the real `/proc`.
    #[test]
    fn mines_this_process() {
        let me = std::process::id();
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let facts = mine(&Workload::Command(exe.clone()), soon()).unwrap();
        let process = facts.process.unwrap();
        assert_eq!(process.path, exe.to_str().unwrap());
        let bytes = std::fs::read(&exe).unwrap();
        assert_eq!(
            process.sha256,
            hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes).as_ref())
        );
        let status = std::fs::read_to_string(format!("/proc/{me}/status")).unwrap();
        let ids = ids::parse_status(&status).unwrap();
        assert_eq!((process.uid, process.gid), (ids.uid, ids.gid));
        // The test binary maps libc (and the dynamic loader), hashed.
        assert!(
            process
                .libraries
                .iter()
                .any(|l| l.path.contains("libc") && l.sha256.is_some()),
            "{:?}",
            process.libraries
        );
        let mut sorted = process.libraries.clone();
        sorted.sort_by(|a, b| a.path.cmp(&b.path));
        assert_eq!(sorted, process.libraries);
        let host = facts.host.unwrap();
        assert_eq!(
            host.kernel.as_deref(),
            Some(
                std::fs::read_to_string("/proc/sys/kernel/osrelease")
                    .unwrap()
                    .trim()
            )
        );
    }

    #[test]
    fn self_only_reports_the_host_and_no_process() {
        let facts = mine(&Workload::SelfOnly, soon()).unwrap();
        assert!(facts.process.is_none() && facts.container.is_none());
        assert!(facts.host.unwrap().kernel.is_some());
    }

    #[test]
    fn a_spent_budget_is_a_time_budget_failure() {
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let spent = Instant::now()
            .checked_sub(Duration::from_millis(1))
            .unwrap();
        let err = mine(&Workload::Command(exe), spent).unwrap_err();
        assert_eq!(err.kind(), "time_budget", "{err}");
    }

    #[test]
    fn digests_look_like_digests() {
        assert!(is_digest(&format!("sha256:{}", "0a".repeat(32))));
        assert!(!is_digest("sha256:abc"));
        assert!(!is_digest(&format!("sha512:{}", "0a".repeat(32))));
        assert!(!is_digest(&format!("sha256:{}", "0A".repeat(32))));
    }
}
