//! The shape of what the sidecar reports (`reported` in the claims), and
//! how it is kept within [`MAX_REPORTED_BYTES`].
//!
//! ```json
//! {"process":{"sha256":"<hex>","path":"/usr/bin/web","uid":1000,"user":"web","gid":1000,
//!             "libraries":[{"path":"/usr/lib/x86_64-linux-gnu/libc.so.6","sha256":"<hex>"}],
//!             "libraries_sha256":"<hex>"},
//!  "host":{"kernel":"6.1.0-18-amd64","os":{"id":"debian","version_id":"12","pretty_name":"…"}},
//!  "container":{"id":"<64 hex>","image":"registry.example/web:1.4","image_digest":"sha256:<hex>"}}
//! ```

use serde::Serialize;
use serde_json::{Map, Value};

pub use crate::authority::reported::MAX_REPORTED_BYTES;

use super::os_release::OsRelease;

/// Longest string kept in any field (paths, names, image references): the
/// rest is cut, so no single fact can crowd out the others.
pub const MAX_FIELD_BYTES: usize = 512;

/// Everything mined about the workload and its host.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Reported {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<Process>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<Host>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<Container>,
}

/// The workload process.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Process {
    /// SHA-256 (hex) of the executable the process runs, read through
    /// `/proc/<pid>/exe` (so the running binary, even if the path was
    /// replaced since).
    pub sha256: String,
    /// The executable's path as the kernel shows it (` (deleted)` when the
    /// file was removed or replaced after the process started).
    pub path: String,
    pub uid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    pub gid: u32,
    /// File-backed executable mappings other than the executable, sorted by
    /// path.
    pub libraries: Vec<Library>,
    /// SHA-256 (hex) of `"<sha256>  <path>\n"` for every library found, in
    /// path order (`-` for one that could not be read): one value that
    /// pins the whole set even when the list is cut.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub libraries_sha256: Option<String>,
    /// Some libraries are not listed (count, time or size bound).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub libraries_truncated: bool,
}

/// One mapped library.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Library {
    pub path: String,
    /// Absent when the file could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// The kernel and operating system.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Host {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    #[serde(skip_serializing_if = "OsRelease::is_empty")]
    pub os: OsRelease,
}

/// The container the process runs in, when it runs in one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Container {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
}

impl Container {
    pub fn is_empty(&self) -> bool {
        self == &Container::default()
    }
}

/// What fitting the facts into the bound could not fix.
#[derive(Debug, thiserror::Error)]
#[error(
    "the reported facts are {0} bytes even without libraries; at most {MAX_REPORTED_BYTES} are sent"
)]
pub struct TooLarge(pub usize);

impl Reported {
    /// The facts as the JSON object sent to the authority, at most `max`
    /// bytes: library entries are dropped from the end (and
    /// `libraries_truncated` set) until it fits.
    pub fn to_bounded_map(&self, max: usize) -> Result<Map<String, Value>, TooLarge> {
        let mut facts = self.clone();
        loop {
            let json = serde_json::to_string(&facts).unwrap_or_default();
            if json.len() <= max {
                return match serde_json::from_str::<Value>(&json) {
                    Ok(Value::Object(map)) => Ok(map),
                    _ => Err(TooLarge(json.len())),
                };
            }
            match facts.process.as_mut() {
                Some(p) if !p.libraries.is_empty() => {
                    // Drop entries from the end until their JSON (and a
                    // comma each) makes up the excess.
                    let mut excess = json.len() - max;
                    while excess > 0 {
                        let Some(last) = p.libraries.pop() else { break };
                        let len = serde_json::to_string(&last).map_or(1, |j| j.len() + 1);
                        excess = excess.saturating_sub(len);
                    }
                    p.libraries_truncated = true;
                }
                _ => return Err(TooLarge(json.len())),
            }
        }
    }
}

/// `s` cut to at most [`MAX_FIELD_BYTES`] bytes, at a character boundary.
pub fn capped(s: &str) -> String {
    if s.len() <= MAX_FIELD_BYTES {
        return s.to_owned();
    }
    let mut end = MAX_FIELD_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(libraries: usize) -> Reported {
        Reported {
            process: Some(Process {
                sha256: "a".repeat(64),
                path: "/usr/bin/web".into(),
                uid: 1000,
                user: Some("web".into()),
                gid: 1000,
                libraries: (0..libraries)
                    .map(|i| Library {
                        path: format!("/usr/lib/x86_64-linux-gnu/lib{i:04}.so.1"),
                        sha256: Some("b".repeat(64)),
                    })
                    .collect(),
                libraries_sha256: Some("c".repeat(64)),
                libraries_truncated: false,
            }),
            host: Some(Host {
                kernel: Some("6.1.0-18-amd64".into()),
                os: OsRelease {
                    id: Some("debian".into()),
                    version_id: Some("12".into()),
                    pretty_name: Some("Debian GNU/Linux 12 (bookworm)".into()),
                },
            }),
            container: None,
        }
    }

    #[test]
    fn the_wire_shape() {
        let map = facts(1).to_bounded_map(MAX_REPORTED_BYTES).unwrap();
        let v = Value::Object(map);
        assert_eq!(v["process"]["uid"], 1000);
        assert_eq!(v["process"]["user"], "web");
        assert_eq!(v["process"]["libraries"][0]["sha256"], "b".repeat(64));
        assert_eq!(v["process"].get("libraries_truncated"), None);
        assert_eq!(v["host"]["kernel"], "6.1.0-18-amd64");
        assert_eq!(v["host"]["os"]["id"], "debian");
        assert_eq!(v.get("container"), None);
    }

    #[test]
    fn a_long_library_list_is_cut_to_the_bound_and_marked() {
        let small = facts(3).to_bounded_map(MAX_REPORTED_BYTES).unwrap();
        assert_eq!(small["process"]["libraries"].as_array().unwrap().len(), 3);

        let big = facts(500);
        assert!(serde_json::to_string(&big).unwrap().len() > MAX_REPORTED_BYTES);
        let map = big.to_bounded_map(MAX_REPORTED_BYTES).unwrap();
        let json = serde_json::to_string(&map).unwrap();
        assert!(json.len() <= MAX_REPORTED_BYTES, "{}", json.len());
        let kept = map["process"]["libraries"].as_array().unwrap();
        assert!(kept.len() > 100 && kept.len() < 500, "{}", kept.len());
        // As many as fit: one more would not have.
        assert!(json.len() + 130 > MAX_REPORTED_BYTES, "{}", json.len());
        // The first ones (in path order) are the ones kept.
        assert_eq!(kept[0]["path"], "/usr/lib/x86_64-linux-gnu/lib0000.so.1");
        assert_eq!(map["process"]["libraries_truncated"], true);
        assert_eq!(map["process"]["libraries_sha256"], "c".repeat(64));

        // A bound the rest cannot meet even without libraries is an error.
        assert!(facts(2).to_bounded_map(100).is_err());
    }

    #[test]
    fn fields_are_capped_at_a_character_boundary() {
        assert_eq!(capped("short"), "short");
        let long = "é".repeat(MAX_FIELD_BYTES); // 2 bytes each
        let cut = capped(&long);
        assert!(cut.len() <= MAX_FIELD_BYTES && cut.len() >= MAX_FIELD_BYTES - 1);
        assert!(cut.chars().all(|c| c == 'é'));
    }
}
