//! Putting a program's process where its limits apply before its first
//! line of user code runs, on each of the three ways a program starts:
//!
//! * cold spawn: the child moves itself into the cgroup between fork and
//!   exec ([`Placement::before_exec`]), writing "0" to `cgroup.procs` files
//!   the daemon opened for it;
//! * forked python zygote child: the daemon writes the child's pid into
//!   the cgroup ([`Placement::place`]) before it sends the go byte the
//!   child waits for;
//! * pooled node worker: the daemon moves the worker in before it hands it
//!   the program.
//!
//! Each also gets its `oom_score_adj` reset to 0: the daemon itself may run
//! protected (the shipped systemd unit sets `OOMScoreAdjust=-500`), and a
//! child would inherit that, so the kernel would pick the daemon over a
//! runaway snippet.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use crate::cgroup::{CgroupError, ExecutionCgroup};

/// What every execution's `oom_score_adj` is set to (the kernel's default).
pub const OOM_SCORE_ADJ: &str = "0";

/// Where one execution's processes go.
#[derive(Debug, Clone, Default)]
pub struct Placement {
    cgroup: Option<Arc<ExecutionCgroup>>,
}

impl Placement {
    /// Into `cgroup` (or, without one, only the `oom_score_adj` reset).
    pub fn new(cgroup: Option<ExecutionCgroup>) -> Self {
        Placement {
            cgroup: cgroup.map(Arc::new),
        }
    }

    /// The execution's cgroup, if it has one.
    pub fn cgroup(&self) -> Option<&Arc<ExecutionCgroup>> {
        self.cgroup.as_ref()
    }

    /// Moves an already running process that has not run user code yet
    /// (a zygote child waiting for its go byte, a waiting node worker).
    pub fn place(&self, pid: i32) -> Result<(), CgroupError> {
        if let Some(cgroup) = &self.cgroup {
            cgroup.place(pid)?;
        }
        // Best effort: lowering a positive score needs CAP_SYS_RESOURCE,
        // and the process is no less limited for keeping it.
        if let Err(e) = std::fs::write(format!("/proc/{pid}/oom_score_adj"), OOM_SCORE_ADJ) {
            tracing::debug!(pid, error = %e, "could not reset oom_score_adj");
        }
        Ok(())
    }

    /// Arranges for a cold child to move itself in before it execs.
    pub fn before_exec(&self, cmd: &mut tokio::process::Command) -> Result<(), CgroupError> {
        let procs: Vec<OwnedFd> = match &self.cgroup {
            Some(cgroup) => cgroup.open_procs()?,
            None => Vec::new(),
        };
        // SAFETY: the closure runs between fork and exec. It only makes the
        // async-signal-safe open, write and close system calls on file
        // descriptors and a path that exist before the fork; it allocates
        // nothing.
        unsafe {
            cmd.pre_exec(move || {
                for fd in &procs {
                    // "0" is the writing process itself.
                    nix::unistd::write(fd.as_fd(), b"0").map_err(std::io::Error::from)?;
                }
                // Best effort, as in `place`.
                if let Ok(oom) = nix::fcntl::open(
                    c"/proc/self/oom_score_adj",
                    nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_CLOEXEC,
                    nix::sys::stat::Mode::empty(),
                ) {
                    let _ = nix::unistd::write(&oom, OOM_SCORE_ADJ.as_bytes());
                }
                Ok(())
            });
        }
        Ok(())
    }
}
