//! Who a process runs as: its IDs from `/proc/<pid>/status`, its user name
//! from the `passwd` file of its own root (read directly: no NSS, no LDAP,
//! nothing the sidecar would have to trust or wait for).

/// The effective user and group IDs and the parent of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    pub uid: u32,
    pub gid: u32,
    pub ppid: u32,
}

/// Reads `Uid:`, `Gid:` (real, effective, saved, fs: the effective one is
/// taken) and `PPid:` from the text of `/proc/<pid>/status`.
pub fn parse_status(text: &str) -> Option<Status> {
    let mut uid = None;
    let mut gid = None;
    let mut ppid = None;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let effective = || value.split_whitespace().nth(1)?.parse::<u32>().ok();
        match key {
            "Uid" => uid = effective(),
            "Gid" => gid = effective(),
            "PPid" => ppid = value.trim().parse::<u32>().ok(),
            _ => {}
        }
    }
    Some(Status {
        uid: uid?,
        gid: gid?,
        ppid: ppid?,
    })
}

/// The name of `uid` in the text of a `passwd(5)` file: the first entry
/// with that UID. NIS compat lines (`+`, `-`) and comments are skipped.
pub fn user_name(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().find_map(|line| {
        if line.starts_with(['#', '+', '-']) {
            return None;
        }
        let mut fields = line.split(':');
        let name = fields.next().filter(|n| !n.is_empty())?;
        let _password = fields.next()?;
        let entry_uid: u32 = fields.next()?.trim().parse().ok()?;
        (entry_uid == uid).then(|| name.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_gives_the_effective_ids_and_parent() {
        let status = "Name:\tweb\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t4242\nPid:\t4242\n\
                      PPid:\t1\nTracerPid:\t0\nUid:\t1000\t1001\t1001\t1001\nGid:\t100\t101\t101\t101\n";
        assert_eq!(
            parse_status(status),
            Some(Status {
                uid: 1001,
                gid: 101,
                ppid: 1
            })
        );
        assert_eq!(parse_status("Name:\tx\nUid:\t0\n"), None);
        assert_eq!(parse_status("Uid:\tx\tx\nGid:\t0\t0\nPPid:\t1\n"), None);
        assert_eq!(parse_status(""), None);
    }

    #[test]
    fn passwd_names_the_uid() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n\
                      # a comment\n\
                      +nisuser:x:1000:1000::/:/bin/sh\n\
                      web:x:1000:1000:Web,,,:/srv/web:/usr/sbin/nologin\n\
                      alias:x:1000:1000::/:/bin/sh\n\
                      broken:x:notanumber:0::/:\n\
                      :x:2000:0::/:\n\
                      short:x\n";
        assert_eq!(user_name(passwd, 0).as_deref(), Some("root"));
        assert_eq!(user_name(passwd, 1000).as_deref(), Some("web"));
        assert_eq!(user_name(passwd, 2000), None);
        assert_eq!(user_name(passwd, 65534), None);
        assert_eq!(user_name("", 0), None);
    }
}
