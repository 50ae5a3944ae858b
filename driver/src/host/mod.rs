//! What the driver needs from the machine it runs on, besides the daemon:
//! the wall clock, Nomad's log FIFOs, small files in the task directory,
//! the host's users and the machine's identity.
//!
//! The plugin uses [`Host::real`]. A simulation supplies its own parts (a
//! virtual clock, in-memory log sinks and files, a host name of its
//! choosing) without anything above this seam knowing; the same goes for
//! the transport to the daemon ([`crate::daemon_link::Dialer`]).

mod fifo;
mod files;
mod users;

use std::sync::Arc;

pub use elide_proto::wall_clock::{SystemClock, WallClock};

pub use fifo::{FifoSinks, LogSinks, LogWriter};
pub use files::{LocalFiles, StateFiles};
pub use users::{HostUser, SystemUsers, TaskUsers};

/// The machine-facing parts of the driver.
#[derive(Clone)]
pub struct Host {
    /// What the session id is derived from: host name and machine id, one
    /// per line ([`crate::daemon_link::identity::host_identity`]).
    pub identity: String,
    /// Timestamps.
    pub clock: Arc<dyn WallClock>,
    /// Where task output goes (Nomad's FIFOs).
    pub logs: Arc<dyn LogSinks>,
    /// Where per-task driver files live (output offsets).
    pub files: Arc<dyn StateFiles>,
    /// Who tasks may run as, and their task directories.
    pub users: Arc<dyn TaskUsers>,
}

impl Host {
    /// This machine: its identity, the system clock, real FIFOs and files.
    pub fn real() -> Self {
        Host {
            identity: crate::daemon_link::identity::host_identity(),
            clock: Arc::new(SystemClock),
            logs: Arc::new(FifoSinks),
            files: Arc::new(LocalFiles),
            users: Arc::new(SystemUsers),
        }
    }

    /// The host name (the first line of [`Host::identity`]).
    pub fn hostname(&self) -> &str {
        self.identity.lines().next().unwrap_or_default()
    }
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("hostname", &self.hostname())
            .finish_non_exhaustive()
    }
}
