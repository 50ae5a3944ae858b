//! Harness for end-to-end tests of `nomad-driver-elide`: the real plugin
//! binary, the real `elide-daemon`, real interpreters, real FIFOs.
//!
//! The implementation modules are private; the namespaces below are the
//! harness's whole public surface, listed item by item (the compiler then
//! reports what no test uses):
//!
//! * `binaries`: finds (building once if needed) the binaries under test;
//! * `daemon`: a daemon process in a temporary directory, warm or cold;
//! * `daemon_api`: the daemon API as tests drive it (the daemon's own tests
//!   use it too);
//! * `nomad_client`: the plugin process, started by `elide_nomad_client`;
//! * `nomad`: the Driver RPCs as Nomad's client calls them, with alloc and
//!   task directories and logmon-like FIFO readers (`logmon`);
//! * `cty`: configuration encoded the way Nomad encodes it;
//! * `procs`: finding and cleaning up processes through `/proc`.

#[path = "binaries.rs"]
mod binaries_impl;
#[path = "cty.rs"]
mod cty_impl;
#[path = "daemon_api.rs"]
mod daemon_api_impl;
#[path = "daemon.rs"]
mod daemon_impl;
#[path = "logmon.rs"]
mod logmon_impl;
#[path = "nomad_client.rs"]
mod nomad_client_impl;
#[path = "nomad.rs"]
mod nomad_impl;
#[path = "procs.rs"]
mod procs_impl;

/// The binaries under test.
pub mod binaries {
    pub use crate::binaries_impl::{binary, profile_dir, CTL, DAEMON, PLUGIN};
}

/// Plugin and task configuration as HCL bodies, encoded with the plugin's
/// own schemas.
pub mod cty {
    pub use crate::cty_impl::{encode, DaemonBlock, PluginConfig, TaskConfig};
}

/// A real `elide-daemon`.
pub mod daemon {
    pub use crate::daemon_impl::{
        free_loopback_address, javascript_support, wait_pool_full, Client, Daemon, Start,
        TEST_POOL_SIZE,
    };
}

/// The daemon API as tests drive it.
pub mod daemon_api {
    pub use crate::daemon_api_impl::{
        assert_started_on, count, create_session, daemon_stats, env, every_grant, execute, exists,
        follow_stdout_until, metrics_of, read_output, run_raw, run_to_end, secs, snippet,
        status_of, wait_for_stdout, wait_state, wait_terminal, Output,
    };
}

/// logmon's side of a task's FIFOs.
pub mod logmon {
    pub use crate::logmon_impl::FifoReader;
}

/// The Driver RPCs as Nomad's client calls them, and an allocation.
pub mod nomad {
    pub use crate::nomad_impl::{next_with_health, recoverable_flag, Alloc, NomadHost};
}

/// The plugin process.
pub mod nomad_client {
    pub use crate::nomad_client_impl::{run_by_hand, PluginProcess, COOKIE};
}

/// Processes, through `/proc`.
pub mod procs {
    pub use crate::procs_impl::{
        fd_target, is_alive, processes_with, session_id, wait_until, with_arg, KillOnDrop,
    };
}

/// A temporary directory other users may pass through but not list (mode
/// 0711), as a Nomad client's data directory: tasks run as their own users
/// (the plugin's default is `nobody`) and must reach their task directory
/// and the daemon's scratch directory inside it.
pub fn passable_tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o711),
    )
    .expect("tempdir mode");
    dir
}
