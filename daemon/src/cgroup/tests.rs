//! The cgroup layouts and file writes, over a temporary directory standing
//! in for the cgroup filesystem (the kernel's own behaviour is tested end to
//! end in `tests/tests/cgroups.rs`).

use super::hierarchy::{Membership, Mounts};
use super::*;

fn put(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

/// A v2 host: the daemon alone in `system.slice/elide.service`.
fn v2_host(root: &Path, others: &str) -> (Mounts, Membership) {
    let own = root.join("system.slice/elide.service");
    put(
        &root.join("cgroup.controllers"),
        "cpuset cpu io memory pids",
    );
    put(&own.join("cgroup.controllers"), "cpu memory pids");
    put(&own.join("cgroup.procs"), &format!("4242\n{others}"));
    let mounts = Mounts {
        unified: Some(root.to_path_buf()),
        v1: BTreeMap::new(),
    };
    let membership = Membership {
        unified: Some("/system.slice/elide.service".into()),
        v1: BTreeMap::new(),
    };
    (mounts, membership)
}

#[test]
fn v2_moves_the_daemon_into_a_leaf_and_delegates_controllers() {
    let root = tempfile::tempdir().unwrap();
    let (mounts, membership) = v2_host(root.path(), "");
    let cgroups = Cgroups::prepare(mounts, &membership, 4242, "/var/lib/elide", 128);
    assert_eq!(cgroups.unavailable(), None, "{}", cgroups.describe());
    let own = root.path().join("system.slice/elide.service");
    assert_eq!(read(&own.join("elide-daemon/cgroup.procs")), "4242");
    assert_eq!(
        read(&own.join("cgroup.subtree_control")),
        "+memory +pids +cpu"
    );
    let parent = own.join(format!("elide-{}", short_hash("/var/lib/elide")));
    assert_eq!(
        read(&parent.join("cgroup.subtree_control")),
        "+memory +pids +cpu"
    );

    let cgroup = cgroups
        .create("s/e1", Some(64 << 20), None)
        .unwrap()
        .unwrap();
    assert_eq!(cgroup.version(), Version::V2);
    let dirs = cgroup.dirs();
    assert_eq!(dirs.len(), 1);
    assert_eq!(dirs[0].parent(), Some(parent.as_path()));
    assert_eq!(read(&dirs[0].join("memory.max")), "67108864");
    assert_eq!(read(&dirs[0].join("pids.max")), "128");
    assert_eq!(cgroup.pids_limit(), Some(128));
    cgroup.place(777).unwrap();
    assert_eq!(read(&dirs[0].join("cgroup.procs")), "777");
}

#[test]
fn v2_refuses_a_cgroup_shared_with_other_processes() {
    let root = tempfile::tempdir().unwrap();
    let (mounts, membership) = v2_host(root.path(), "99\n");
    let cgroups = Cgroups::prepare(mounts, &membership, 4242, "k", 128);
    let reason = cgroups.unavailable().expect("no cgroups");
    assert!(
        reason.contains("Delegate=yes") && reason.contains("99"),
        "{reason}"
    );
    assert!(cgroups.create("e", Some(1 << 20), None).unwrap().is_none());
}

#[test]
fn v2_without_the_memory_controller_is_unavailable() {
    let root = tempfile::tempdir().unwrap();
    let (mounts, membership) = v2_host(root.path(), "");
    put(
        &root
            .path()
            .join("system.slice/elide.service/cgroup.controllers"),
        "cpu pids",
    );
    let cgroups = Cgroups::prepare(mounts, &membership, 4242, "k", 128);
    assert!(cgroups.unavailable().unwrap().contains("memory controller"));
}

#[test]
fn v2_joins_nomads_scope_and_writes_its_limits_like_raw_exec() {
    let root = tempfile::tempdir().unwrap();
    let (mounts, membership) = v2_host(root.path(), "");
    let scope = root.path().join("nomad.slice/share.slice/a1b2.web.scope");
    put(
        &root
            .path()
            .join("nomad.slice/share.slice/cgroup.subtree_control"),
        "cpu memory pids cpuset",
    );
    put(&scope.join("memory.max"), "max");
    let cgroups = Cgroups::prepare(mounts, &membership, 4242, "k", 64);
    let nomad = NomadCgroup {
        path: scope.clone(),
        cpu_shares: 1024,
        cpuset_cpus: "0,3".into(),
        memory_soft_bytes: Some(128 << 20),
    };
    let cgroup = cgroups
        .create("e", Some(256 << 20), Some(&nomad))
        .unwrap()
        .unwrap();
    assert_eq!(cgroup.dirs(), vec![scope.clone()]);
    assert_eq!(read(&scope.join("memory.max")), (256u64 << 20).to_string());
    assert_eq!(read(&scope.join("memory.low")), (128u64 << 20).to_string());
    assert_eq!(read(&scope.join("cpu.weight")), "39");
    assert_eq!(read(&scope.join("cpuset.cpus")), "0,3");
    assert_eq!(read(&scope.join("pids.max")), "64");
}

#[test]
fn a_nomad_cgroup_outside_the_hierarchy_is_a_clear_error() {
    let root = tempfile::tempdir().unwrap();
    let (mounts, membership) = v2_host(root.path(), "");
    let cgroups = Cgroups::prepare(mounts, &membership, 4242, "k", 64);
    let nomad = NomadCgroup {
        path: "/elsewhere/x.scope".into(),
        ..Default::default()
    };
    let err = cgroups
        .create("e", None, Some(&nomad))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("/elsewhere/x.scope") && err.contains("not under"),
        "{err}"
    );
    let missing = NomadCgroup {
        path: root.path().join("nomad.slice/gone.scope"),
        ..Default::default()
    };
    let err = cgroups
        .create("e", None, Some(&missing))
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not exist"), "{err}");
}

/// A v1 host: memory, pids and cpuacct mounted, the daemon in `/svc`.
fn v1_host(root: &Path) -> (Mounts, Membership) {
    let mut v1 = BTreeMap::new();
    for c in ["memory", "pids", "cpuacct", "cpuset", "cpu", "freezer"] {
        std::fs::create_dir_all(root.join(c)).unwrap();
        v1.insert(c.to_string(), root.join(c));
    }
    let membership = Membership {
        unified: Some("/".into()),
        v1: [("memory", "/svc"), ("pids", "/"), ("cpuacct", "/")]
            .into_iter()
            .map(|(c, p)| (c.to_string(), p.to_string()))
            .collect(),
    };
    (Mounts { unified: None, v1 }, membership)
}

#[test]
fn v1_nests_each_controller_under_the_daemons_own_cgroup() {
    let root = tempfile::tempdir().unwrap();
    let (mounts, membership) = v1_host(root.path());
    let cgroups = Cgroups::prepare(mounts, &membership, 1, "state", 32);
    assert_eq!(cgroups.unavailable(), None);
    let leaf = format!("elide-{}", short_hash("state"));
    let cgroup = cgroups
        .create("s/e", Some(64 << 20), None)
        .unwrap()
        .unwrap();
    let name = dir_name("s/e");
    let memory = root.path().join("memory/svc").join(&leaf).join(&name);
    let pids = root.path().join("pids").join(&leaf).join(&name);
    assert_eq!(read(&memory.join("memory.limit_in_bytes")), "67108864");
    assert_eq!(read(&pids.join("pids.max")), "32");
    assert_eq!(cgroup.dirs().len(), 3);
}

#[test]
fn v1_joins_nomads_task_cgroups_derived_from_the_cpuset_path() {
    let root = tempfile::tempdir().unwrap();
    let (mounts, membership) = v1_host(root.path());
    for c in ["memory", "cpu", "freezer"] {
        std::fs::create_dir_all(root.path().join(c).join("nomad/a1.web")).unwrap();
    }
    let cpuset = root.path().join("cpuset/nomad/share/a1.web");
    std::fs::create_dir_all(&cpuset).unwrap();
    let cgroups = Cgroups::prepare(mounts, &membership, 1, "state", 32);
    let nomad = NomadCgroup {
        path: cpuset.clone(),
        cpu_shares: 500,
        cpuset_cpus: String::new(),
        memory_soft_bytes: None,
    };
    let cgroup = cgroups
        .create("e", Some(300 << 20), Some(&nomad))
        .unwrap()
        .unwrap();
    let memory = root.path().join("memory/nomad/a1.web");
    assert_eq!(
        read(&memory.join("memory.limit_in_bytes")),
        (300u64 << 20).to_string()
    );
    assert_eq!(
        read(&root.path().join("cpu/nomad/a1.web/cpu.shares")),
        "500"
    );
    let dirs = cgroup.dirs();
    assert!(dirs.contains(&cpuset) && dirs.contains(&memory), "{dirs:?}");
    // Nomad makes no pids or cpuacct cgroup on v1: the daemon's own serve.
    assert!(dirs.iter().any(|d| d.starts_with(root.path().join("pids"))));
    assert!(dirs
        .iter()
        .any(|d| d.starts_with(root.path().join("cpuacct"))));
}

#[test]
fn without_a_memory_controller_there_are_no_cgroups_and_no_error() {
    let cgroups = Cgroups::prepare(Mounts::default(), &Membership::default(), 1, "k", 32);
    assert!(cgroups
        .unavailable()
        .unwrap()
        .contains("no cgroup memory controller"));
    assert!(cgroups.create("e", Some(1 << 20), None).unwrap().is_none());
    let nomad = NomadCgroup {
        path: "/sys/fs/cgroup/x.scope".into(),
        ..Default::default()
    };
    assert!(cgroups.create("e", None, Some(&nomad)).is_err());
}

#[test]
fn directory_names_are_bounded_safe_and_distinct() {
    let a = dir_name("session/../exec id");
    assert!(
        !a.contains('/') && !a.contains(' ') && !a.contains(".."),
        "{a}"
    );
    assert_ne!(dir_name("s1/e"), dir_name("s2/e"));
    assert!(dir_name(&"x".repeat(500)).len() <= 13 + 40);
}

#[test]
fn keyed_files_are_read_by_exact_key() {
    let text = "oom 3\noom_kill 2\n";
    assert_eq!(keyed(text, "oom_kill"), Some(2));
    assert_eq!(keyed(text, "oom"), Some(3));
    assert_eq!(keyed(text, "max"), None);
}
