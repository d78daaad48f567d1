//! Which process is the workload (`identity.authority.workload`).

use std::collections::HashSet;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use super::ids;
use super::read::{self, ReadError};

/// Where cgroups are looked for when `/proc/self/mountinfo` names no
/// hierarchy systemd uses.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// Where the kernel lists this process's mounts.
const MOUNTINFO: &str = "/proc/self/mountinfo";
/// At most this many processes of a cgroup, or of `/proc`, are looked at.
const MAX_PROCESSES: usize = 65_536;

/// How the sidecar finds the process whose facts it reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Workload {
    /// The PID written in this file (`pid_file: /run/web.pid`).
    PidFile(PathBuf),
    /// The main process of a systemd service (`systemd_unit: web.service`),
    /// from `<hierarchy>/system.slice/<unit>/cgroup.procs`, in the cgroup v2
    /// hierarchy if it has the unit, else in the v1 `name=systemd` one (see
    /// [`systemd_hierarchies`]): unified, hybrid and legacy hosts alike.
    SystemdUnit(String),
    /// The main process of a cgroup v2 directory (`cgroup: /sys/fs/cgroup/…`).
    Cgroup(PathBuf),
    /// The first process (lowest PID) whose executable is this path
    /// (`command: /usr/bin/web`).
    Command(PathBuf),
    /// No process: only the facts of the sidecar's own host (`self: true`).
    SelfOnly,
}

/// Why the workload process was not found.
#[derive(Debug, thiserror::Error)]
pub enum FindError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("{file}: `{text}` is not a process ID")]
    NotAPid { file: String, text: String },
    #[error("process {pid} (from {from}) is not running")]
    NotRunning { pid: u32, from: String },
    #[error("{0}: no process in this cgroup")]
    EmptyCgroup(String),
    #[error("no running process has the executable {0}")]
    NoSuchCommand(String),
    #[error(
        "systemd unit {unit}: no cgroup at {tried}; is the unit running? \
         `systemctl status {unit}` (a unit outside system.slice needs `workload: {{ cgroup: … }}`)"
    )]
    NoSuchUnit { unit: String, tried: String },
}

impl Workload {
    /// The PID of the workload now; `None` for [`Workload::SelfOnly`].
    pub fn find(&self) -> Result<Option<u32>, FindError> {
        let pid = match self {
            Workload::SelfOnly => return Ok(None),
            Workload::PidFile(file) => {
                let text = read::capped(file, 64)?;
                let pid = text
                    .trim()
                    .parse::<u32>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| FindError::NotAPid {
                        file: file.display().to_string(),
                        text: text.trim().chars().take(32).collect(),
                    })?;
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    return Err(FindError::NotRunning {
                        pid,
                        from: file.display().to_string(),
                    });
                }
                pid
            }
            Workload::SystemdUnit(unit) => main_of_unit(unit)?,
            Workload::Cgroup(dir) => main_of_cgroup(dir)?,
            Workload::Command(exe) => first_running(exe)?,
        };
        Ok(Some(pid))
    }
}

/// The main process of `system.slice/<unit>`, in the first hierarchy that
/// has that cgroup.
fn main_of_unit(unit: &str) -> Result<u32, FindError> {
    let mountinfo = read::capped(Path::new(MOUNTINFO), 1024 * 1024).unwrap_or_default();
    let mut roots = systemd_hierarchies(&mountinfo);
    if roots.is_empty() {
        roots.push(PathBuf::from(CGROUP_ROOT));
    }
    let dirs: Vec<PathBuf> = roots
        .iter()
        .map(|root| root.join("system.slice").join(unit))
        .collect();
    for dir in &dirs {
        match main_of_cgroup(dir) {
            Err(FindError::Read(e)) if e.error.kind() == std::io::ErrorKind::NotFound => continue,
            found => return found,
        }
    }
    Err(FindError::NoSuchUnit {
        unit: unit.to_owned(),
        tried: dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// Where the cgroup hierarchies systemd puts units in are mounted, from the
/// text of `/proc/self/mountinfo`: the cgroup v2 one (`/sys/fs/cgroup` on a
/// unified host, `/sys/fs/cgroup/unified` on a hybrid one), then the v1 one
/// named `name=systemd` (hybrid and legacy hosts). The first mount of each
/// kind; empty if there is neither.
pub fn systemd_hierarchies(mountinfo: &str) -> Vec<PathBuf> {
    // `36 35 98:0 /root /mnt rw,noatime master:1 - cgroup2 cgroup2 rw`: the
    // mount point is the 5th field; after the optional fields, ` - `, then
    // the file system type, the source and the super options.
    let mounts: Vec<(&str, &str, &str)> = mountinfo
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let dash = fields.iter().skip(6).position(|f| *f == "-")? + 6;
            let rest = fields.get(dash + 1..dash + 4)?;
            Some((*fields.get(4)?, rest[0], rest[2]))
        })
        .collect();
    let v2 = mounts.iter().find(|(_, fstype, _)| *fstype == "cgroup2");
    let v1 = mounts.iter().find(|(_, fstype, options)| {
        *fstype == "cgroup" && options.split(',').any(|o| o == "name=systemd")
    });
    v2.into_iter()
        .chain(v1)
        .map(|(mount_point, _, _)| unescape(mount_point))
        .collect()
}

/// A mountinfo path: the kernel writes space, tab, newline and backslash
/// as `\ooo` (octal).
fn unescape(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)))
            .and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok());
        match octal {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    PathBuf::from(OsString::from_vec(out))
}

/// The main process of a cgroup: the first listed in `cgroup.procs` whose
/// parent is outside the cgroup (the service's own process, not one it
/// forked), else the first listed.
fn main_of_cgroup(dir: &Path) -> Result<u32, FindError> {
    let text = read::capped(&dir.join("cgroup.procs"), 1024 * 1024)?;
    let pids = parse_pids(&text);
    let members: HashSet<u32> = pids.iter().copied().collect();
    let root = pids.iter().copied().find(|pid| {
        read::capped(Path::new(&format!("/proc/{pid}/status")), 64 * 1024)
            .ok()
            .and_then(|s| ids::parse_status(&s))
            .is_some_and(|s| !members.contains(&s.ppid))
    });
    root.or_else(|| pids.first().copied())
        .ok_or_else(|| FindError::EmptyCgroup(dir.display().to_string()))
}

/// The PIDs of a `cgroup.procs` file, in its order (at most
/// [`MAX_PROCESSES`]).
pub fn parse_pids(text: &str) -> Vec<u32> {
    text.lines()
        .filter_map(|l| l.trim().parse::<u32>().ok())
        .filter(|p| *p > 0)
        .take(MAX_PROCESSES)
        .collect()
}

/// The lowest PID whose `/proc/<pid>/exe` is `exe`.
fn first_running(exe: &Path) -> Result<u32, FindError> {
    let entries = std::fs::read_dir("/proc").map_err(|e| ReadError::new(Path::new("/proc"), e))?;
    let mut pids: Vec<u32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .take(MAX_PROCESSES)
        .collect();
    pids.sort_unstable();
    pids.into_iter()
        .find(|pid| std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| p == exe))
        .ok_or_else(|| FindError::NoSuchCommand(exe.display().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_procs_lists_pids_in_order() {
        assert_eq!(parse_pids("812\n77\n\n  9 \nx\n0\n"), [812, 77, 9]);
        assert!(parse_pids("").is_empty());
    }

    /// `/proc/self/mountinfo` lines as the three layouts of systemd have
    /// them (with unrelated mounts around).
    const UNIFIED: &str = "\
22 27 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
36 24 0:31 / /sys/fs/pstore rw,nosuid,nodev,noexec,relatime shared:10 - pstore pstore rw
";
    const HYBRID: &str = "\
25 23 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
27 25 0:24 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
30 25 0:27 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,memory
";
    const LEGACY: &str = "\
24 18 0:20 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:7 - tmpfs tmpfs ro,mode=755
25 24 0:21 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:8 - cgroup cgroup rw,xattr,release_agent=/usr/lib/systemd/systemd-cgroups-agent,name=systemd
26 24 0:22 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
";

    #[test]
    fn systemd_hierarchies_of_unified_hybrid_and_legacy_hosts() {
        let paths = systemd_hierarchies;
        assert_eq!(paths(UNIFIED), [PathBuf::from("/sys/fs/cgroup")]);
        assert_eq!(
            paths(HYBRID),
            [
                PathBuf::from("/sys/fs/cgroup/unified"),
                PathBuf::from("/sys/fs/cgroup/systemd")
            ]
        );
        assert_eq!(paths(LEGACY), [PathBuf::from("/sys/fs/cgroup/systemd")]);
        // v2 first whatever the order of the lines; no optional fields (a
        // container); only the first mount of each kind.
        let reordered = "\
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
90 31 0:38 /x /mnt/again rw,relatime - cgroup2 cgroup2 rw
";
        assert_eq!(
            paths(reordered),
            [
                PathBuf::from("/sys/fs/cgroup/unified"),
                PathBuf::from("/sys/fs/cgroup/systemd")
            ]
        );
        // Escaped mount points; a v1 hierarchy that is not systemd's.
        assert_eq!(
            paths("1 2 0:9 / /mnt/my\\040cg\\134s rw - cgroup2 none rw\n"),
            [PathBuf::from("/mnt/my cg\\s")]
        );
        assert!(
            paths("3 2 0:9 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu,name=systemdx\n")
                .is_empty()
        );
        // Nothing, or nonsense: no hierarchy, no panic.
        for text in [
            "",
            "\n\n",
            "-",
            "1 2 3 4 5 6 -",
            "1 2 3 4 5 6 - cgroup2",
            "1 2 0:9 / /x rw cgroup2 cgroup2 rw",
            "1 2 0:9 / /x\\ rw - cgroup cgroup name=systemd\\",
        ] {
            assert!(paths(text).is_empty(), "{text:?}");
        }
        assert_eq!(
            unescape("/a\\\\\\999\\04"),
            PathBuf::from("/a\\\\\\999\\04")
        );
    }

    #[test]
    fn a_unit_found_nowhere_is_named_with_the_paths_tried() {
        let unit = "appid-no-such-unit-4f1c.service";
        let err = Workload::SystemdUnit(unit.into()).find().unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, FindError::NoSuchUnit { .. }), "{text}");
        assert!(
            text.contains(&format!("system.slice/{unit}"))
                && text.contains(&format!("systemctl status {unit}")),
            "{text}"
        );
    }

    #[test]
    fn finds_this_process_by_its_pid_file_and_command() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("app.pid");
        std::fs::write(&file, format!("{}\n", std::process::id())).unwrap();
        assert_eq!(
            Workload::PidFile(file.clone()).find().unwrap(),
            Some(std::process::id())
        );
        std::fs::write(&file, "not a pid").unwrap();
        assert!(matches!(
            Workload::PidFile(file.clone()).find(),
            Err(FindError::NotAPid { .. })
        ));
        std::fs::write(&file, "4000000000").unwrap();
        assert!(matches!(
            Workload::PidFile(file).find(),
            Err(FindError::NotRunning { .. })
        ));
        assert!(matches!(
            Workload::PidFile(dir.path().join("missing")).find(),
            Err(FindError::Read(_))
        ));
        let me = std::fs::read_link("/proc/self/exe").unwrap();
        let found = Workload::Command(me).find().unwrap().unwrap();
        assert!(found <= std::process::id());
        assert!(matches!(
            Workload::Command("/nonexistent/binary".into()).find(),
            Err(FindError::NoSuchCommand(_))
        ));
        assert_eq!(Workload::SelfOnly.find().unwrap(), None);
    }
}
