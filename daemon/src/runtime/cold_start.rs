//! A program on a fresh interpreter: the cold start path, in a process
//! group of its own, entering its cgroup, user and sandbox rules between
//! fork and exec.

use std::path::Path;
use std::process::Stdio;

use nix::sys::signal::Signal;

use super::interpreter::Interpreter;
use super::placement::Placement;
use super::run_as::{self, Identity};
use super::sandbox::ChildRules;
use super::ProgramSpec;
use crate::language::Language;

/// Starts `file` on a fresh interpreter, in a process group of its own,
/// placed before it execs.
pub(super) fn start_cold(
    interp: &Interpreter,
    spec: &ProgramSpec,
    file: &Path,
    on_node: bool,
    user: Option<Identity>,
    placement: &Placement,
    rules: ChildRules,
) -> std::io::Result<tokio::process::Child> {
    let mut cmd = tokio::process::Command::new(&interp.path);
    match spec.language {
        Language::Python => {
            cmd.arg("-u");
        }
        _ if on_node => {
            if let Some(limit) = spec.memory_limit_bytes {
                // A hint to V8's collector; the cgroup (or the sampler)
                // enforces the limit.
                cmd.arg(format!(
                    "--max-old-space-size={}",
                    (limit / (1024 * 1024)).max(16)
                ));
            }
        }
        Language::JavaScript => {}
        Language::TypeScript => {
            cmd.arg("run");
        }
    }
    cmd.arg(file)
        .args(&spec.args)
        .env_clear()
        .envs(&spec.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    // Into its cgroup first (the closures run in the order added), while
    // still privileged; then the user's credentials.
    placement
        .before_exec(&mut cmd)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let cwd = run_as::c_path(&spec.working_dir)?;
    // SAFETY: the closure runs between fork and exec and only makes
    // async-signal-safe system calls on memory allocated before the fork.
    unsafe {
        cmd.pre_exec(move || {
            // The sandbox's privileged part, the user, then its other rules.
            rules.before_privilege_drop()?;
            // As the user, so it enters only a directory the user may.
            run_as::become_user_in(user.as_ref(), &cwd)?;
            rules.after_privilege_drop()?;
            // After the credential change, which would clear it.
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
        });
    }
    cmd.spawn()
}
