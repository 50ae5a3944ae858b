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
//! Each also gets its `oom_score_adj` raised to [`OOM_SCORE_ADJ`]: a child
//! would otherwise inherit the daemon's (the shipped systemd unit protects
//! the daemon with `OOMScoreAdjust=-500`), and when the host runs short of
//! memory the kernel must pick a runaway snippet, never the daemon that
//! supervises every tenant. Raising needs no privilege (lowering needs
//! `CAP_SYS_RESOURCE`), so this holds for a daemon without it too.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use crate::cgroup::{CgroupError, ExecutionCgroup};

/// What every execution's `oom_score_adj` is set to: above the kernel's
/// default (0) and the daemon's, so snippets are the OOM killer's first
/// choice host-wide; within its own cgroup's limit it is the only choice.
pub const OOM_SCORE_ADJ: &str = "500";

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
        // Best effort: a daemon whose own score is above it would have to
        // lower it (CAP_SYS_RESOURCE); the child keeps the higher one.
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
