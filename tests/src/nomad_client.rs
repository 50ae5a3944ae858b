//! The plugin process as the tests hold it: started as Nomad starts it, by
//! the one Nomad-client library (`elide_nomad_client`), plus running the
//! binary by hand, as an operator might by mistake.

use std::io::Read;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};

pub use elide_nomad_client::PluginProcess;
/// Nomad's magic cookie.
pub use elide_proto::handshake::MAGIC_COOKIE_VALUE as COOKIE;

/// Runs `binary` with `env` only (no cookie unless given) and returns its
/// exit status and combined output.
pub fn run_by_hand(binary: &Path, env: &[(&str, &str)]) -> (ExitStatus, String, String) {
    let mut command = Command::new(binary);
    command.env_clear();
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("plugin binary starts");
    let mut stdout = String::new();
    let mut stderr = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (child.wait().unwrap(), stdout, stderr)
}
