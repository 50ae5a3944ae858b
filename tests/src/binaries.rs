//! The binaries under test, from the target directory of the running test.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The plugin binary's name.
pub const PLUGIN: &str = "nomad-driver-elide";
/// The daemon binary's name.
pub const DAEMON: &str = "elide-daemon";
/// The daemon's command-line client.
pub const CTL: &str = "elide-ctl";

/// `target/<profile>/` of the running test executable
/// (`target/<profile>/deps/<test>-<hash>`).
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let deps = exe.parent().expect("deps directory");
    deps.parent().expect("profile directory").to_owned()
}

/// Builds the binaries once per test process. `cargo build` is a no-op
/// when they are fresh, and guarantees the tests never run stale ones.
fn build_once() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let profile_dir = profile_dir();
        let target_dir = profile_dir.parent().expect("target directory");
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("workspace root");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let mut command = Command::new(cargo);
        command
            .current_dir(workspace)
            .args(["build", "-p", "elide-driver", "-p", "elide-daemon"])
            .args(["--bin", PLUGIN, "--bin", DAEMON, "--bin", CTL])
            .arg("--target-dir")
            .arg(target_dir);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            command.arg("--release");
        }
        let status = command.status().expect("running cargo build");
        assert!(status.success(), "building the binaries under test failed");
    });
}

/// Path of a binary under test, built if needed.
pub fn binary(name: &str) -> PathBuf {
    build_once();
    let path = profile_dir().join(name);
    assert!(path.exists(), "{} was not built", path.display());
    path
}
