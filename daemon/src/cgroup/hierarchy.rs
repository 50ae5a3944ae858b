//! Where the cgroup hierarchies are mounted and where this process sits in
//! them: parsing `/proc/self/mountinfo` and `/proc/self/cgroup`. Pure
//! functions over the files' text, so they are tested without a kernel.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The cgroup mounts of this mount namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mounts {
    /// The cgroup v2 (unified) mount, if any.
    pub unified: Option<PathBuf>,
    /// cgroup v1 mounts by controller ("memory", "pids", "cpuacct", …);
    /// co-mounted controllers ("cpu,cpuacct") share one path.
    pub v1: BTreeMap<String, PathBuf>,
}

/// Reads the cgroup mounts out of `/proc/self/mountinfo` text. The first
/// mount of a controller wins (a bind mount of it elsewhere is ignored).
pub fn parse_mountinfo(text: &str) -> Mounts {
    let mut mounts = Mounts::default();
    for line in text.lines() {
        // "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL…] - FSTYPE SOURCE SUPEROPTS"
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let fields: Vec<&str> = left.split(' ').collect();
        let Some(mount_point) = fields.get(4) else {
            continue;
        };
        let mount_point = PathBuf::from(unescape(mount_point));
        let mut right = right.split(' ');
        let fs_type = right.next().unwrap_or_default();
        let _source = right.next();
        let super_options = right.next().unwrap_or_default();
        match fs_type {
            "cgroup2" => {
                mounts.unified.get_or_insert(mount_point);
            }
            "cgroup" => {
                for option in super_options.split(',') {
                    if is_v1_controller(option) {
                        mounts
                            .v1
                            .entry(option.to_string())
                            .or_insert_with(|| mount_point.clone());
                    }
                }
            }
            _ => {}
        }
    }
    mounts
}

/// Mount options of a v1 cgroup mount that name a controller (not "rw",
/// "relatime", "name=systemd", …).
fn is_v1_controller(option: &str) -> bool {
    matches!(
        option,
        "cpu"
            | "cpuacct"
            | "cpuset"
            | "memory"
            | "devices"
            | "freezer"
            | "net_cls"
            | "blkio"
            | "perf_event"
            | "net_prio"
            | "hugetlb"
            | "pids"
            | "rdma"
            | "misc"
    )
}

/// Mount points in mountinfo escape space, tab, newline and backslash as
/// octal (`\040`).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let octal = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or_default();
            if let Ok(b) = u8::from_str_radix(octal, 8) {
                out.push(b);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Where a process sits: its cgroup path per v1 controller, and in the
/// unified hierarchy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Membership {
    /// The unified hierarchy's path ("0::/…"), if listed.
    pub unified: Option<String>,
    /// Path per v1 controller.
    pub v1: BTreeMap<String, String>,
}

/// Reads `/proc/PID/cgroup` text ("ID:CONTROLLERS:PATH" lines).
pub fn parse_proc_cgroup(text: &str) -> Membership {
    let mut membership = Membership::default();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if controllers.is_empty() {
            membership.unified = Some(path.to_string());
        } else {
            for controller in controllers.split(',') {
                membership
                    .v1
                    .insert(controller.to_string(), path.to_string());
            }
        }
    }
    membership
}

/// `mount` joined with a cgroup path as `/proc/PID/cgroup` gives it
/// ("/" is the mount itself).
pub fn join(mount: &Path, cgroup_path: &str) -> PathBuf {
    let relative = cgroup_path.trim_start_matches('/');
    if relative.is_empty() {
        mount.to_path_buf()
    } else {
        mount.join(relative)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO_V1: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
90 35 0:32 / /mnt/memory\\040copy rw,relatime - cgroup cgroup rw,memory
";

    #[test]
    fn v1_mounts_are_found_per_controller_and_comounts_share_a_path() {
        let mounts = parse_mountinfo(MOUNTINFO_V1);
        assert_eq!(
            mounts.unified.as_deref(),
            Some(Path::new("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            mounts.v1.get("memory").map(PathBuf::as_path),
            Some(Path::new("/sys/fs/cgroup/memory"))
        );
        assert_eq!(
            mounts.v1.get("cpuacct"),
            mounts.v1.get("cpu"),
            "co-mounted controllers share the mount"
        );
        assert_eq!(
            mounts.v1.get("pids").map(PathBuf::as_path),
            Some(Path::new("/sys/fs/cgroup/pids"))
        );
        assert!(!mounts.v1.contains_key("name=systemd"));
        assert!(!mounts.v1.contains_key("rw"));
    }

    #[test]
    fn a_pure_v2_host_has_only_the_unified_mount() {
        let mounts = parse_mountinfo(
            "25 21 0:22 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n",
        );
        assert_eq!(mounts.unified.as_deref(), Some(Path::new("/sys/fs/cgroup")));
        assert!(mounts.v1.is_empty());
    }

    #[test]
    fn escaped_mount_points_are_unescaped() {
        assert_eq!(unescape("/mnt/memory\\040copy"), "/mnt/memory copy");
        assert_eq!(unescape("/plain"), "/plain");
    }

    #[test]
    fn proc_cgroup_lists_each_controller_and_the_unified_path() {
        let m = parse_proc_cgroup(
            "9:name=systemd:/\n4:memory:/process_api/abc\n2:cpu,cpuacct:/x\n0::/system.slice/elide.service\n",
        );
        assert_eq!(
            m.v1.get("memory").map(String::as_str),
            Some("/process_api/abc")
        );
        assert_eq!(m.v1.get("cpuacct").map(String::as_str), Some("/x"));
        assert_eq!(m.unified.as_deref(), Some("/system.slice/elide.service"));
    }

    #[test]
    fn join_treats_the_root_path_as_the_mount() {
        let mount = Path::new("/sys/fs/cgroup/memory");
        assert_eq!(join(mount, "/"), mount);
        assert_eq!(join(mount, "/a/b"), mount.join("a/b"));
    }
}
