//! Harness for end-to-end tests of `nomad-driver-elide`: the real plugin
//! binary, the real `elide-daemon`, real interpreters, real FIFOs.
//!
//! * [`binaries`]: finds (building once if needed) the binaries under test;
//! * [`daemon`]: a daemon process in a temporary directory;
//! * [`nomad_client`]: launching the plugin as Nomad's go-plugin host does;
//! * [`nomad`]: the Driver RPCs as Nomad's client calls them, with alloc
//!   and task directories and logmon-like FIFO readers ([`logmon`]);
//! * [`cty`]: configuration encoded the way Nomad encodes it;
//! * [`procs`]: finding and cleaning up processes through `/proc`.

pub mod binaries;
pub mod cty;
pub mod daemon;
pub mod daemon_api;
pub mod logmon;
pub mod nomad;
pub mod nomad_client;
pub mod procs;

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
