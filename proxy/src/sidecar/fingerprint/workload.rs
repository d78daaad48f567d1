//! Which process is the workload (`identity.authority.workload`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::ids;
use super::read::{self, ReadError};

/// Where the cgroup v2 hierarchy is mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// At most this many processes of a cgroup, or of `/proc`, are looked at.
const MAX_PROCESSES: usize = 65_536;

/// How the sidecar finds the process whose facts it reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Workload {
    /// The PID written in this file (`pid_file: /run/web.pid`).
    PidFile(PathBuf),
    /// The main process of a systemd service (`systemd_unit: web.service`),
    /// from `/sys/fs/cgroup/system.slice/<unit>/cgroup.procs` (cgroup v2).
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
            Workload::SystemdUnit(unit) => {
                main_of_cgroup(&Path::new(CGROUP_ROOT).join("system.slice").join(unit))?
            }
            Workload::Cgroup(dir) => main_of_cgroup(dir)?,
            Workload::Command(exe) => first_running(exe)?,
        };
        Ok(Some(pid))
    }
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
