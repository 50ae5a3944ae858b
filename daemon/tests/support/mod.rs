//! The daemon's tests use the one daemon harness, `elide_e2e`: the real
//! `elide-daemon` binary on a real Unix socket, and the API helpers.

pub use elide_e2e::daemon::*;
pub use elide_e2e::daemon_api::*;
