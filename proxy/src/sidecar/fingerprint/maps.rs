//! `/proc/<pid>/maps`: the files a process maps executable (its shared
//! libraries, and its own binary).

use std::collections::BTreeMap;

/// Marker the kernel appends to the path of a mapped file that was
/// deleted (or replaced) since it was mapped.
pub const DELETED: &str = " (deleted)";

/// One file mapped with execute permission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedFile {
    /// The path as the kernel shows it, without the ` (deleted)` marker.
    pub path: String,
    /// `start-end` of its first executable mapping (the name of its entry
    /// in `/proc/<pid>/map_files/`).
    pub range: String,
    /// The file was deleted or replaced after it was mapped.
    pub deleted: bool,
}

/// The files mapped executable in `maps` (the text of `/proc/<pid>/maps`),
/// deduplicated and sorted by path. Anonymous mappings, `[vdso]` and other
/// pseudo-paths are left out; so is a malformed line. A truncated last line
/// (a capped read) is ignored.
pub fn executable_files(maps: &str) -> Vec<MappedFile> {
    let mut files: BTreeMap<&str, MappedFile> = BTreeMap::new();
    let complete = match maps.rfind('\n') {
        Some(end) if !maps.ends_with('\n') => &maps[..end],
        _ => maps,
    };
    for line in complete.lines() {
        let Some((range, perms, inode, path)) = fields(line) else {
            continue;
        };
        if perms.as_bytes().get(2) != Some(&b'x') || inode == "0" || !path.starts_with('/') {
            continue;
        }
        let (path, deleted) = match path.strip_suffix(DELETED) {
            Some(p) => (p, true),
            None => (path, false),
        };
        files.entry(path).or_insert_with(|| MappedFile {
            path: path.to_owned(),
            range: range.to_owned(),
            deleted,
        });
    }
    files.into_values().collect()
}

/// `(range, perms, inode, path)` of one line:
/// `start-end perms offset dev inode   path`.
fn fields(line: &str) -> Option<(&str, &str, &str, &str)> {
    let mut rest = line;
    let mut next = || {
        let trimmed = rest.trim_start_matches(' ');
        let end = trimmed.find(' ').unwrap_or(trimmed.len());
        let (field, tail) = trimmed.split_at(end);
        rest = tail;
        (!field.is_empty()).then_some(field)
    };
    let range = next()?;
    let perms = next()?;
    let _offset = next()?;
    let _dev = next()?;
    let inode = next()?;
    let path = rest.trim_start_matches(' ');
    if !range.contains('-') || perms.len() != 4 || path.is_empty() {
        return None;
    }
    Some((range, perms, inode, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c8a00000-55d0c8a02000 r--p 00000000 08:01 1311 /usr/bin/sleep
55d0c8a02000-55d0c8a06000 r-xp 00002000 08:01 1311 /usr/bin/sleep
55d0c9b39000-55d0c9b5a000 rw-p 00000000 00:00 0                          [heap]
7f1c2a400000-7f1c2a428000 r--p 00000000 08:01 2055                       /usr/lib/x86_64-linux-gnu/libc.so.6
7f1c2a428000-7f1c2a5bd000 r-xp 00028000 08:01 2055                       /usr/lib/x86_64-linux-gnu/libc.so.6
7f1c2a5bd000-7f1c2a615000 r-xp 001bd000 08:01 2055                       /usr/lib/x86_64-linux-gnu/libc.so.6
7f1c2a700000-7f1c2a701000 r-xp 00000000 08:01 4242                       /opt/app/lib/libold.so (deleted)
7f1c2a800000-7f1c2a801000 r-xp 00000000 08:01 4243                       /opt/my app/lib space.so
7f1c2a900000-7f1c2a901000 r-xp 00000000 00:00 0 
7f1c2aa1a000-7f1c2aa1c000 r-xp 00001000 08:01 2051                       /usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2
7ffd4b5f2000-7ffd4b5f4000 r-xp 00000000 00:00 0                          [vdso]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
garbage line
";

    #[test]
    fn executable_file_mappings_deduplicated_and_sorted() {
        let files = executable_files(MAPS);
        let paths: Vec<_> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/opt/app/lib/libold.so",
                "/opt/my app/lib space.so",
                "/usr/bin/sleep",
                "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
                "/usr/lib/x86_64-linux-gnu/libc.so.6",
            ]
        );
        let libc = &files[4];
        assert_eq!(
            libc.range, "7f1c2a428000-7f1c2a5bd000",
            "the first executable mapping"
        );
        assert!(!libc.deleted);
        assert!(files[0].deleted);
    }

    #[test]
    fn a_cut_off_last_line_is_ignored() {
        let cut = "7f1c2a428000-7f1c2a5bd000 r-xp 00028000 08:01 2055 /usr/lib/libc.so.6\n\
                   7f1c2aa1a000-7f1c2aa1c000 r-xp 00001000 08:01 2051 /usr/lib/ld-lin";
        let files = executable_files(cut);
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].path, "/usr/lib/libc.so.6");
        assert!(executable_files("").is_empty());
        assert!(executable_files("no newline at all").is_empty());
    }
}
