//! Per-execution cgroups: the memory limit enforced by the kernel, the
//! kernel's OOM kills read back, a process limit against fork bombs, and
//! CPU and memory figures from the kernel's own accounting.
//!
//! One interface over both cgroup versions ([`Cgroups`], detected once at
//! start): cgroup v2 where the unified hierarchy has the memory controller,
//! the v1 controllers otherwise. The daemon nests its executions under the
//! cgroup it was started in (so whatever limits that cgroup has still apply
//! to the sum):
//!
//! * v1: `<mount of C>/<daemon's cgroup in C>/elide-<key>/<execution>` for
//!   C in `memory`, `pids`, `cpuacct` (those mounted);
//! * v2: the daemon moves itself into `<its cgroup>/elide-daemon` (a cgroup
//!   with processes cannot hand controllers to children) and makes
//!   `<its cgroup>/elide-<key>/<execution>`. This needs a cgroup of its own
//!   to manage (systemd `Delegate=yes`); a cgroup shared with other
//!   processes is refused with that reason.
//!
//! `<key>` is derived from the daemon's state directory, so a restarted
//! daemon finds (and removes) what its crashed predecessor left, and two
//! daemons with different state never touch each other's cgroups.
//!
//! When Nomad passes the task's own cgroup ([`NomadCgroup`]), the execution
//! joins it instead and the limits are written there the way Nomad's
//! `raw_exec` executor writes them; the daemon keeps its own `pids` (and, on
//! v1, `cpuacct`) cgroup where Nomad has none.
//!
//! Where no cgroup can be made, [`Cgroups::unavailable`] says why, and the
//! runtime falls back to sampling `/proc`.

mod execution;
mod files;
pub(crate) mod hierarchy;
pub(crate) mod v1;
pub(crate) mod v2;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

pub use execution::ExecutionCgroup;
pub(crate) use files::{keyed, read_u64};
use files::{make_dir_all, remove_dir, write};

/// The cgroup version in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// Per-controller hierarchies.
    V1,
    /// The unified hierarchy.
    V2,
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Version::V1 => "cgroup v1",
            Version::V2 => "cgroup v2",
        })
    }
}

/// Errors of cgroup set-up; each names the file or directory.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A cgroup file or directory could not be read, written or made.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The request does not fit this host's cgroups.
    #[error("{0}")]
    Layout(String),
}

/// What the kernel accounts for an execution's cgroup; `None` where this
/// host's cgroups do not provide the figure.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupUsage {
    /// User CPU time.
    pub cpu_user: Option<Duration>,
    /// System CPU time.
    pub cpu_system: Option<Duration>,
    /// Anonymous (resident, not file-backed) memory, bytes.
    pub rss: Option<u64>,
    /// Page cache charged to it, bytes.
    pub cache: Option<u64>,
    /// All memory charged to it, bytes.
    pub usage: Option<u64>,
    /// Highest `usage`, bytes.
    pub peak: Option<u64>,
    /// Processes in it.
    pub processes: Option<u64>,
}

/// Limits the kernel enforced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitCounters {
    /// Processes the kernel's OOM killer killed at the memory limit.
    pub oom_kills: u64,
    /// Forks refused at the process limit.
    pub pids_refused: u64,
}

/// The cgroup Nomad prepared for the task (`TaskConfig.resources.
/// linux_resources`), and the resources to write into it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NomadCgroup {
    /// `cpuset_cgroup`: on v2 the task's scope directory, on v1 its cpuset
    /// directory (the other controllers' directories are derived from it
    /// as Nomad does).
    pub path: PathBuf,
    /// `cpu_shares` (the task's `cpu`, MHz).
    pub cpu_shares: u64,
    /// `cpuset_cpus`: reserved cores, empty for none.
    pub cpuset_cpus: String,
    /// The soft limit (`memory` when `memory_max` is the hard one), bytes.
    pub memory_soft_bytes: Option<u64>,
}

/// The daemon's cgroups, as detected at start.
#[derive(Debug)]
pub struct Cgroups {
    layout: Layout,
    mounts: hierarchy::Mounts,
    pids_limit: u64,
}

#[derive(Debug)]
enum Layout {
    V1 {
        /// The daemon's `elide-<key>` directory per controller.
        parents: BTreeMap<&'static str, PathBuf>,
    },
    V2 {
        /// The daemon's `elide-<key>` directory.
        parent: PathBuf,
    },
    Unavailable(String),
}

impl Cgroups {
    /// Finds this host's cgroups and prepares the daemon's parent cgroup
    /// for the state directory `state_key`. Never fails: a host where no
    /// cgroup can be made gets [`Cgroups::unavailable`] with the reason.
    pub fn detect(state_key: &str, pids_limit: u64) -> Cgroups {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let mounts = hierarchy::parse_mountinfo(&read("/proc/self/mountinfo"));
        let membership = hierarchy::parse_proc_cgroup(&read("/proc/self/cgroup"));
        Cgroups::prepare(
            mounts,
            &membership,
            std::process::id(),
            state_key,
            pids_limit,
        )
    }

    /// Cgroups turned off by configuration.
    pub fn disabled(reason: &str) -> Cgroups {
        Cgroups {
            layout: Layout::Unavailable(reason.to_string()),
            mounts: hierarchy::Mounts::default(),
            pids_limit: 0,
        }
    }

    /// [`Cgroups::detect`] over given mounts and membership (tests point
    /// these at a temporary directory standing in for the cgroup fs).
    pub fn prepare(
        mounts: hierarchy::Mounts,
        membership: &hierarchy::Membership,
        own_pid: u32,
        state_key: &str,
        pids_limit: u64,
    ) -> Cgroups {
        let leaf = format!("elide-{}", short_hash(state_key));
        let unified_memory = mounts.unified.as_ref().is_some_and(|m| {
            std::fs::read_to_string(m.join("cgroup.controllers"))
                .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"))
        });
        let layout = if unified_memory {
            let mount = mounts.unified.clone().unwrap_or_default();
            let own = hierarchy::join(&mount, membership.unified.as_deref().unwrap_or("/"));
            prepare_v2(&own, own_pid, &leaf)
        } else if let Some(memory) = mounts.v1.get("memory") {
            prepare_v1(&mounts, membership, memory, &leaf)
        } else {
            Layout::Unavailable(
                "no cgroup memory controller: neither the unified hierarchy nor a v1 memory mount has it"
                    .into(),
            )
        };
        match &layout {
            Layout::Unavailable(reason) => {
                tracing::warn!(%reason, "no per-execution cgroups: memory limits are sampled from /proc")
            }
            _ => tracing::info!(cgroups = %describe(&layout), "per-execution cgroups"),
        }
        Cgroups {
            layout,
            mounts,
            pids_limit,
        }
    }

    /// Why no cgroups are made, or `None` when they are.
    pub fn unavailable(&self) -> Option<&str> {
        match &self.layout {
            Layout::Unavailable(reason) => Some(reason),
            _ => None,
        }
    }

    /// One line for logs and capabilities: version, controllers, where.
    pub fn describe(&self) -> String {
        describe(&self.layout)
    }

    /// The process limit each execution gets.
    pub fn pids_limit(&self) -> u64 {
        self.pids_limit
    }

    /// Removes the executions' cgroups a previous daemon with the same
    /// state left (it crashed, or was killed before it could), killing any
    /// process still in them. Returns how many were removed.
    pub fn clean_stale(&self) -> usize {
        let parents: Vec<PathBuf> = match &self.layout {
            Layout::V1 { parents } => parents.values().cloned().collect(),
            Layout::V2 { parent } => vec![parent.clone()],
            Layout::Unavailable(_) => return 0,
        };
        let mut removed = 0;
        for parent in parents {
            let Ok(entries) = std::fs::read_dir(&parent) else {
                continue;
            };
            for entry in entries.flatten() {
                let dir = entry.path();
                if !dir.is_dir() {
                    continue;
                }
                match remove_dir(&dir) {
                    Ok(()) => {
                        tracing::info!(dir = %dir.display(), "removed a cgroup left by an earlier daemon");
                        removed += 1;
                    }
                    Err(e) => tracing::warn!(error = %e, "could not remove a stale cgroup"),
                }
            }
        }
        removed
    }

    /// Removes the daemon's own parent cgroups (`elide-<key>`) at a clean
    /// shutdown; one that still holds an execution's cgroup stays.
    pub fn remove_parents(&self) {
        let parents: Vec<&PathBuf> = match &self.layout {
            Layout::V1 { parents } => parents.values().collect(),
            Layout::V2 { parent } => vec![parent],
            Layout::Unavailable(_) => Vec::new(),
        };
        for parent in parents {
            if let Err(e) = std::fs::remove_dir(parent) {
                tracing::debug!(dir = %parent.display(), error = %e, "parent cgroup kept");
            }
        }
    }

    /// Makes the cgroup(s) of one execution (`name` unique among running
    /// executions) with its limits. `Ok(None)` when this host has no
    /// cgroups (the caller samples instead); an error when it has them and
    /// this execution's cannot be made: never a silently unlimited task.
    pub fn create(
        &self,
        name: &str,
        memory_limit: Option<u64>,
        nomad: Option<&NomadCgroup>,
    ) -> Result<Option<ExecutionCgroup>, CgroupError> {
        let name = dir_name(name);
        let mut cgroup = match (&self.layout, nomad) {
            (Layout::Unavailable(reason), Some(nomad)) => {
                return Err(CgroupError::Layout(format!(
                    "cannot join Nomad's task cgroup {}: {reason}",
                    nomad.path.display()
                )))
            }
            (Layout::Unavailable(_), None) => return Ok(None),
            (Layout::V1 { parents }, nomad) => {
                self.create_v1(parents, &name, memory_limit, nomad)?
            }
            (Layout::V2 { parent }, nomad) => self.create_v2(parent, &name, memory_limit, nomad)?,
        };
        cgroup.start_counting();
        Ok(Some(cgroup))
    }
}

fn prepare_v1(
    mounts: &hierarchy::Mounts,
    membership: &hierarchy::Membership,
    memory_mount: &Path,
    leaf: &str,
) -> Layout {
    let mut parents = BTreeMap::new();
    for controller in v1::OWNED_CONTROLLERS {
        let Some(mount) = mounts.v1.get(*controller) else {
            continue;
        };
        let own = membership.v1.get(*controller).map_or("/", String::as_str);
        let parent = hierarchy::join(mount, own).join(leaf);
        match std::fs::create_dir_all(&parent) {
            Ok(()) => {
                parents.insert(*controller, parent);
            }
            Err(e) if *controller == "memory" => {
                return Layout::Unavailable(format!(
                    "cgroup v1 memory controller at {} is not writable: {}: {e}",
                    memory_mount.display(),
                    parent.display()
                ))
            }
            Err(e) => {
                tracing::warn!(controller, dir = %parent.display(), error = %e, "cgroup v1 controller not usable")
            }
        }
    }
    Layout::V1 { parents }
}

fn prepare_v2(own: &Path, own_pid: u32, leaf: &str) -> Layout {
    let controllers = std::fs::read_to_string(own.join("cgroup.controllers")).unwrap_or_default();
    let enable = v2::available(&controllers, v2::WANTED_CONTROLLERS);
    if !enable.contains(&"memory") {
        return Layout::Unavailable(format!(
            "cgroup v2: the memory controller is not delegated to {} (cgroup.controllers: {:?})",
            own.display(),
            controllers.trim()
        ));
    }
    let others: Vec<String> = std::fs::read_to_string(own.join("cgroup.procs"))
        .unwrap_or_default()
        .split_whitespace()
        .filter(|p| *p != own_pid.to_string())
        .map(String::from)
        .collect();
    if !others.is_empty() {
        return Layout::Unavailable(format!(
            "cgroup v2: {} also holds other processes ({}); the daemon needs a cgroup of its own (systemd Delegate=yes)",
            own.display(),
            others.join(" ")
        ));
    }
    let control = enable
        .iter()
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(" ");
    let steps = || -> Result<PathBuf, CgroupError> {
        // No internal processes: the daemon itself moves into a leaf.
        let daemon_leaf = own.join("elide-daemon");
        make_dir_all(&daemon_leaf)?;
        write(&daemon_leaf, "cgroup.procs", &own_pid.to_string())?;
        write(own, "cgroup.subtree_control", &control)?;
        let parent = own.join(leaf);
        make_dir_all(&parent)?;
        write(&parent, "cgroup.subtree_control", &control)?;
        Ok(parent)
    };
    match steps() {
        Ok(parent) => Layout::V2 { parent },
        Err(e) => Layout::Unavailable(format!("cgroup v2: {e}")),
    }
}

fn describe(layout: &Layout) -> String {
    match layout {
        Layout::V1 { parents } => format!(
            "cgroup v1 ({})",
            parents
                .iter()
                .map(|(c, p)| format!("{c} under {}", p.display()))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Layout::V2 { parent } => format!("cgroup v2 under {}", parent.display()),
        Layout::Unavailable(reason) => format!("none: {reason}"),
    }
}

/// A directory name for an execution: readable, bounded, and unique by a
/// hash of the whole name.
fn dir_name(name: &str) -> String {
    let readable: String = name
        .chars()
        .rev()
        .take(40)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{}-{readable}", short_hash(name))
}

fn short_hash(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    digest[..6].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests;
