//! Reading and writing cgroup interface files and directories.

use std::path::Path;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::CgroupError;

/// How often and how long removal retries while the kernel still counts
/// exiting processes in the cgroup.
const REMOVE_RETRY: Duration = Duration::from_millis(20);
const REMOVE_ATTEMPTS: u32 = 100;

/// The value of `key` in a flat-keyed cgroup file ("key value" lines).
pub(crate) fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// A single-number cgroup file; `None` when absent or "max".
pub(crate) fn read_u64(dir: &Path, file: &str) -> Option<u64> {
    std::fs::read_to_string(dir.join(file))
        .ok()
        .and_then(|t| t.trim().parse().ok())
}

pub(super) fn write(dir: &Path, file: &str, value: &str) -> Result<(), CgroupError> {
    let path = dir.join(file);
    std::fs::write(&path, value).map_err(|source| CgroupError::Io { path, source })
}

pub(super) fn make_dir(dir: &Path) -> Result<(), CgroupError> {
    match std::fs::create_dir(dir) {
        // Left by an execution of the same name whose removal failed.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            remove_dir(dir)?;
            std::fs::create_dir(dir)
        }
        other => other,
    }
    .map_err(|source| CgroupError::Io {
        path: dir.to_path_buf(),
        source,
    })
}

pub(super) fn make_dir_all(dir: &Path) -> Result<(), CgroupError> {
    std::fs::create_dir_all(dir).map_err(|source| CgroupError::Io {
        path: dir.to_path_buf(),
        source,
    })
}

pub(super) fn require_dir(dir: &Path) -> Result<(), CgroupError> {
    if dir.is_dir() {
        Ok(())
    } else {
        Err(CgroupError::Layout(format!(
            "Nomad's task cgroup {} does not exist",
            dir.display()
        )))
    }
}

pub(super) fn kill_procs(dir: &Path) {
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    for pid in procs
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
    {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// Kills every process in `dir` and removes it, retrying while the kernel
/// still counts exiting processes (rmdir says EBUSY until they are gone).
pub(super) fn remove_dir(dir: &Path) -> Result<(), CgroupError> {
    let mut attempt = 0;
    loop {
        kill_procs(dir);
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if attempt < REMOVE_ATTEMPTS => {
                tracing::trace!(dir = %dir.display(), error = %e, "cgroup not empty yet");
                attempt += 1;
                std::thread::sleep(REMOVE_RETRY);
            }
            Err(source) => {
                return Err(CgroupError::Io {
                    path: dir.to_path_buf(),
                    source,
                })
            }
        }
    }
}
