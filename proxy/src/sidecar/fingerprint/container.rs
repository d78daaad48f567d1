//! The container a process runs in, from `/proc/<pid>/cgroup` and
//! `/proc/<pid>/mountinfo`.
//!
//! Runtimes name a container's cgroup after its 64-hex ID: Docker
//! (`/docker/<id>`, `docker-<id>.scope`), containerd under Kubernetes
//! (`/kubepods/…/pod<uid>/<id>`, `cri-containerd-<id>.scope`), CRI-O
//! (`crio-<id>.scope`) and Podman (`libpod-<id>.scope`). With a private
//! cgroup namespace the process sees only `0::/`; then the bind mounts the
//! runtime made for it may still name it (Docker's
//! `/var/lib/docker/containers/<id>/hostname`, Podman's and CRI-O's
//! `…/overlay-containers/<id>/userdata/…`).

/// Prefixes of a cgroup directory named after a container.
const SCOPE_PREFIXES: &[&str] = &["docker-", "cri-containerd-", "crio-", "libpod-"];

/// Directories whose child is a container's ID, in mount sources.
const MOUNT_PARENTS: &[&str] = &["containers", "overlay-containers"];

/// The container ID named by `cgroup` (the text of `/proc/<pid>/cgroup`).
pub fn id_from_cgroup(cgroup: &str) -> Option<String> {
    cgroup.lines().find_map(|line| {
        let path = line.splitn(3, ':').nth(2)?;
        path.rsplit('/').find_map(|segment| {
            let name = segment.strip_suffix(".scope").unwrap_or(segment);
            let id = SCOPE_PREFIXES
                .iter()
                .find_map(|p| name.strip_prefix(p))
                .unwrap_or(name);
            is_id(id).then(|| id.to_owned())
        })
    })
}

/// The container ID named by a mount source in `mountinfo` (the text of
/// `/proc/<pid>/mountinfo`).
pub fn id_from_mountinfo(mountinfo: &str) -> Option<String> {
    mountinfo.lines().find_map(|line| {
        // id parent major:minor root mount-point ...: the root (4th field)
        // is the path inside the mounted file system.
        let root = line.split(' ').nth(3)?;
        let segments: Vec<&str> = root.split('/').collect();
        segments.windows(2).find_map(|pair| {
            (MOUNT_PARENTS.contains(&pair[0]) && is_id(pair[1])).then(|| pair[1].to_owned())
        })
    })
}

fn is_id(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f0b9b6c1d9e4a8f7c2b1a0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a39281706";

    #[test]
    fn each_runtime_s_cgroup_names_the_container() {
        for cgroup in [
            format!("0::/system.slice/docker-{ID}.scope\n"),
            format!("12:pids:/docker/{ID}\n11:memory:/docker/{ID}\n0::/\n"),
            format!("0::/kubepods/burstable/pod1b2c3d4e-0000-1111-2222-333344445555/{ID}\n"),
            format!(
                "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1b2c3d4e_0000.slice/cri-containerd-{ID}.scope\n"
            ),
            format!("0::/kubepods.slice/kubepods-pod1.slice/crio-{ID}.scope\n"),
            format!(
                "0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container\n"
            ),
            format!("0::/machine.slice/libpod-{ID}.scope\n"),
        ] {
            assert_eq!(id_from_cgroup(&cgroup).as_deref(), Some(ID), "{cgroup}");
        }
    }

    #[test]
    fn hosts_and_helpers_are_not_containers() {
        for cgroup in [
            "0::/\n".to_owned(),
            "0::/user.slice/user-1000.slice/session-3.scope\n".to_owned(),
            "0::/system.slice/web.service\n".to_owned(),
            // conmon, Podman's and CRI-O's monitor, is not the container.
            format!("0::/machine.slice/libpod-conmon-{ID}.scope\n"),
            format!("0::/kubepods.slice/crio-conmon-{ID}.scope\n"),
            // 32 hex (a systemd invocation ID) is not a container ID.
            "4:memory:/process_api/202997dc1fd113fa06a154809ddd4f74\n".to_owned(),
            format!("0::/docker/{}\n", ID.to_uppercase()),
            String::new(),
            "garbage".to_owned(),
        ] {
            assert_eq!(id_from_cgroup(&cgroup), None, "{cgroup}");
        }
    }

    #[test]
    fn bind_mounts_name_the_container_with_a_private_cgroup_namespace() {
        let docker = format!(
            "713 694 0:115 / / rw,relatime master:261 - overlay overlay rw,lowerdir=/var/lib/docker/overlay2/l/X\n\
             741 713 8:1 /var/lib/docker/containers/{ID}/resolv.conf /etc/resolv.conf rw,relatime - ext4 /dev/sda1 rw\n"
        );
        assert_eq!(id_from_mountinfo(&docker).as_deref(), Some(ID));
        let podman = format!(
            "900 880 0:44 /containers/storage/overlay-containers/{ID}/userdata/hostname /etc/hostname rw - tmpfs tmpfs rw\n"
        );
        assert_eq!(id_from_mountinfo(&podman).as_deref(), Some(ID));
        let host = "22 27 0:21 / /proc rw,relatime - proc proc rw\n\
                    24 27 0:6 / /dev rw,relatime - devtmpfs devtmpfs rw\n";
        assert_eq!(id_from_mountinfo(host), None);
    }
}
