//! One execution's cgroup(s): made with their limits (the daemon's own, or
//! Nomad's task cgroup), processes placed in them, the kernel's figures
//! read, and everything in them killed and removed at the end.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use super::files::{kill_procs, make_dir, remove_dir, require_dir, write};
use super::{v1, v2, CgroupError, CgroupUsage, Cgroups, LimitCounters, NomadCgroup, Version};

/// A cgroup directory an execution joins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Joined {
    dir: PathBuf,
    /// Made by the daemon (removed at the end) rather than Nomad's.
    owned: bool,
}

/// One execution's cgroup(s).
#[derive(Debug)]
pub struct ExecutionCgroup {
    version: Version,
    joined: Vec<Joined>,
    memory: Option<PathBuf>,
    pids: Option<PathBuf>,
    cpu: Option<PathBuf>,
    memory_limit: Option<u64>,
    pids_limit: u64,
    /// Counters at creation: a Nomad cgroup may have counted before.
    baseline: LimitCounters,
}

impl Cgroups {
    pub(super) fn create_v1(
        &self,
        parents: &BTreeMap<&'static str, PathBuf>,
        name: &str,
        memory_limit: Option<u64>,
        nomad: Option<&NomadCgroup>,
    ) -> Result<ExecutionCgroup, CgroupError> {
        // Nomad's directories per controller (v1: derived from the cpuset
        // path as Nomad's executor does), where Nomad made them.
        let mut nomad_dirs: BTreeMap<&str, PathBuf> = BTreeMap::new();
        if let Some(nomad) = nomad {
            let cpuset_mount = self.mounts.v1.get("cpuset").ok_or_else(|| {
                CgroupError::Layout(
                    "cgroup v1 has no cpuset mount for Nomad's cpuset_cgroup".into(),
                )
            })?;
            let relative = nomad.path.strip_prefix(cpuset_mount).map_err(|_| {
                CgroupError::Layout(format!(
                    "Nomad's cpuset_cgroup {} is not under the cpuset mount {}",
                    nomad.path.display(),
                    cpuset_mount.display()
                ))
            })?;
            require_dir(&nomad.path)?;
            nomad_dirs.insert("cpuset", nomad.path.clone());
            // "nomad/share/<alloc>.<task>" → "nomad/<alloc>.<task>".
            let task_relative: PathBuf = relative
                .components()
                .filter(|c| !matches!(c.as_os_str().to_str(), Some("share" | "reserve")))
                .collect();
            for controller in ["memory", "cpu", "cpuacct", "freezer"] {
                if let Some(mount) = self.mounts.v1.get(controller) {
                    let dir = mount.join(&task_relative);
                    if dir.is_dir() {
                        nomad_dirs.insert(controller, dir);
                    }
                }
            }
            if !nomad_dirs.contains_key("memory") {
                return Err(CgroupError::Layout(format!(
                    "Nomad made no memory cgroup for the task next to {}",
                    nomad.path.display()
                )));
            }
        }
        let mut cgroup = ExecutionCgroup::new(Version::V1, memory_limit, self.pids_limit);
        // Nomad's first, then the daemon's own for the controllers Nomad
        // has none of; a failure removes what was made.
        for (controller, dir) in &nomad_dirs {
            cgroup.joined.push(Joined {
                dir: dir.clone(),
                owned: false,
            });
            match *controller {
                "memory" => cgroup.memory = Some(dir.clone()),
                "cpuacct" => cgroup.cpu = Some(dir.clone()),
                _ => {}
            }
        }
        for (controller, parent) in parents {
            if nomad_dirs.contains_key(controller) {
                continue;
            }
            let dir = parent.join(name);
            if let Err(e) = make_dir(&dir) {
                cgroup.remove();
                return Err(e);
            }
            cgroup.joined.push(Joined {
                dir: dir.clone(),
                owned: true,
            });
            match *controller {
                "memory" => cgroup.memory = Some(dir),
                "pids" => cgroup.pids = Some(dir),
                "cpuacct" => cgroup.cpu = Some(dir),
                _ => {}
            }
        }
        let written = self.write_v1_limits(&cgroup, memory_limit, nomad, &nomad_dirs);
        if let Err(e) = written {
            cgroup.remove();
            return Err(e);
        }
        Ok(cgroup)
    }

    pub(super) fn create_v2(
        &self,
        parent: &Path,
        name: &str,
        memory_limit: Option<u64>,
        nomad: Option<&NomadCgroup>,
    ) -> Result<ExecutionCgroup, CgroupError> {
        let mut cgroup = ExecutionCgroup::new(Version::V2, memory_limit, self.pids_limit);
        let dir = match nomad {
            Some(nomad) => {
                let mount = self.mounts.unified.as_deref().unwrap_or(Path::new("/"));
                if !nomad.path.starts_with(mount) {
                    return Err(CgroupError::Layout(format!(
                        "Nomad's cpuset_cgroup {} is not under the cgroup v2 mount {}",
                        nomad.path.display(),
                        mount.display()
                    )));
                }
                require_dir(&nomad.path)?;
                nomad.path.clone()
            }
            None => {
                let dir = parent.join(name);
                make_dir(&dir)?;
                dir
            }
        };
        cgroup.joined.push(Joined {
            dir: dir.clone(),
            owned: nomad.is_none(),
        });
        cgroup.memory = Some(dir.clone());
        cgroup.cpu = Some(dir.clone());
        // A controller's files exist in a child iff the parent enabled it.
        let enabled = std::fs::read_to_string(
            dir.parent()
                .unwrap_or(parent)
                .join("cgroup.subtree_control"),
        )
        .unwrap_or_default();
        let has = |controller: &str| {
            enabled
                .split_whitespace()
                .any(|c| c.trim_start_matches('+') == controller)
        };
        if has("pids") {
            cgroup.pids = Some(dir.clone());
        }
        let written = self.write_v2_limits(&cgroup, &dir, &enabled, memory_limit, nomad);
        if let Err(e) = written {
            cgroup.remove();
            return Err(e);
        }
        Ok(cgroup)
    }

    fn write_v1_limits(
        &self,
        cgroup: &ExecutionCgroup,
        memory_limit: Option<u64>,
        nomad: Option<&NomadCgroup>,
        nomad_dirs: &BTreeMap<&str, PathBuf>,
    ) -> Result<(), CgroupError> {
        let memory = cgroup
            .memory
            .as_deref()
            .ok_or_else(|| CgroupError::Layout("no memory cgroup for the execution".into()))?;
        v1::write_memory_limit(
            memory,
            memory_limit,
            nomad.and_then(|n| n.memory_soft_bytes),
        )?;
        if let Some(pids) = &cgroup.pids {
            v1::write_pids_limit(pids, self.pids_limit)?;
        }
        if let Some(nomad) = nomad {
            if let Some(cpu) = nomad_dirs.get("cpu") {
                write(cpu, "cpu.shares", &nomad.cpu_shares.max(2).to_string())?;
            }
            if !nomad.cpuset_cpus.is_empty() {
                write(&nomad.path, "cpuset.cpus", &nomad.cpuset_cpus)?;
            }
        }
        Ok(())
    }

    fn write_v2_limits(
        &self,
        cgroup: &ExecutionCgroup,
        dir: &Path,
        enabled: &str,
        memory_limit: Option<u64>,
        nomad: Option<&NomadCgroup>,
    ) -> Result<(), CgroupError> {
        let has = |controller: &str| {
            enabled
                .split_whitespace()
                .any(|c| c.trim_start_matches('+') == controller)
        };
        if memory_limit.is_some() && !has("memory") {
            return Err(CgroupError::Layout(format!(
                "{} has no memory controller enabled (its parent's cgroup.subtree_control lacks memory)",
                dir.display()
            )));
        }
        v2::write_memory_limit(dir, memory_limit, nomad.and_then(|n| n.memory_soft_bytes))?;
        if cgroup.pids.is_some() {
            v2::write_pids_limit(dir, self.pids_limit)?;
        }
        if let Some(nomad) = nomad {
            if has("cpu") {
                write(
                    dir,
                    "cpu.weight",
                    &v2::cpu_weight(nomad.cpu_shares).to_string(),
                )?;
            }
            if !nomad.cpuset_cpus.is_empty() {
                write(dir, "cpuset.cpus", &nomad.cpuset_cpus)?;
            }
        }
        Ok(())
    }
}

impl ExecutionCgroup {
    fn new(version: Version, memory_limit: Option<u64>, pids_limit: u64) -> Self {
        ExecutionCgroup {
            version,
            joined: Vec::new(),
            memory: None,
            pids: None,
            cpu: None,
            memory_limit,
            pids_limit,
            baseline: LimitCounters::default(),
        }
    }

    /// Its cgroup version.
    pub fn version(&self) -> Version {
        self.version
    }

    /// The memory limit the kernel enforces, bytes.
    pub fn memory_limit(&self) -> Option<u64> {
        self.memory_limit
    }

    /// The process limit, when a pids cgroup enforces one.
    pub fn pids_limit(&self) -> Option<u64> {
        self.pids.as_ref().map(|_| self.pids_limit)
    }

    /// The directories the execution's processes are in.
    pub fn dirs(&self) -> Vec<PathBuf> {
        self.joined.iter().map(|j| j.dir.clone()).collect()
    }

    /// The `cgroup.procs` files, opened for writing, so a child can move
    /// itself in between fork and exec by writing "0" to each (no
    /// allocation, no path lookup there).
    pub fn open_procs(&self) -> Result<Vec<OwnedFd>, CgroupError> {
        self.joined
            .iter()
            .map(|j| {
                let path = j.dir.join("cgroup.procs");
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map(OwnedFd::from)
                    .map_err(|source| CgroupError::Io { path, source })
            })
            .collect()
    }

    /// Moves process `pid` (all its threads) in.
    pub fn place(&self, pid: i32) -> Result<(), CgroupError> {
        for joined in &self.joined {
            write(&joined.dir, "cgroup.procs", &pid.to_string())?;
        }
        Ok(())
    }

    /// What the kernel accounts for it now.
    pub fn usage(&self) -> CgroupUsage {
        match self.version {
            Version::V1 => v1::usage(
                self.memory.as_deref(),
                self.cpu.as_deref(),
                self.pids.as_deref(),
            ),
            Version::V2 => self.memory.as_deref().map(v2::usage).unwrap_or_default(),
        }
    }

    /// Takes the counters now as the zero of [`ExecutionCgroup::limit_hits`].
    pub(super) fn start_counting(&mut self) {
        self.baseline = self.counters_now();
    }

    fn counters_now(&self) -> LimitCounters {
        match self.version {
            Version::V1 => v1::counters(self.memory.as_deref(), self.pids.as_deref()),
            Version::V2 => self.memory.as_deref().map(v2::counters).unwrap_or_default(),
        }
    }

    /// OOM kills and refused forks since the execution started.
    pub fn limit_hits(&self) -> LimitCounters {
        let now = self.counters_now();
        LimitCounters {
            oom_kills: now.oom_kills.saturating_sub(self.baseline.oom_kills),
            pids_refused: now.pids_refused.saturating_sub(self.baseline.pids_refused),
        }
    }

    /// SIGKILLs every process still in it (ones that left the process
    /// group included).
    pub fn kill_all(&self) {
        for joined in &self.joined {
            kill_procs(&joined.dir);
        }
    }

    /// Kills what is left and removes the daemon's own directories (Nomad
    /// removes its own). Blocks while the kernel finishes the exits.
    pub fn remove(&self) {
        for joined in &self.joined {
            if joined.owned {
                if let Err(e) = remove_dir(&joined.dir) {
                    tracing::warn!(error = %e, "could not remove an execution's cgroup");
                }
            } else {
                kill_procs(&joined.dir);
            }
        }
    }
}
