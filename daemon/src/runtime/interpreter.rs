//! Finding the interpreters that run snippets: resolved once on the
//! daemon's own PATH, asked for their real executable and version.

use std::path::PathBuf;
use std::process::Stdio;

use crate::language::Language;

/// An interpreter found on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interpreter {
    /// Program to run.
    pub path: PathBuf,
    /// Version it reported.
    pub version: String,
}

/// Every candidate for `program` on the daemon's own PATH, in order (a
/// name with a `/` is taken as is). Resolved once, so the interpreter that
/// runs snippets is the one whose version was reported, whatever PATH a
/// snippet's environment sets.
fn candidates(program: &str) -> Result<Vec<PathBuf>, String> {
    if program.contains('/') {
        return Ok(vec![PathBuf::from(program)]);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found: Vec<PathBuf> = on_path(&path, program).collect();
    if found.is_empty() {
        return Err(format!("{program} not found on PATH"));
    }
    Ok(found)
}

/// The executable files named `program` in the directories of `path` (a
/// `PATH` value), in order.
pub(super) fn on_path<'a>(
    path: &'a std::ffi::OsStr,
    program: &'a str,
) -> impl Iterator<Item = PathBuf> + 'a {
    std::env::split_paths(path)
        .map(move |dir| dir.join(program))
        .filter(|candidate| is_executable_file(candidate))
}

/// Whether `path` is a regular file someone may execute.
pub(super) fn is_executable_file(path: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Resolves `program` and learns its real path and version. With
/// `for_other_users` (a root daemon whose programs run as other users),
/// an interpreter those users cannot reach is passed over for the next one
/// on PATH: pyenv under `/root`, say, before `/usr/bin/python3`. When none
/// is reachable the error says why, naming the directory in the way.
pub fn probe(
    program: &str,
    language: Language,
    for_other_users: bool,
) -> Result<Interpreter, String> {
    let mut passed_over = Vec::new();
    for path in candidates(program)? {
        let interpreter = probe_at(program, path, language)?;
        if !for_other_users {
            return Ok(interpreter);
        }
        match super::run_as::check_reachable_by_all(&interpreter.path) {
            Ok(()) => {
                for problem in &passed_over {
                    tracing::info!(%problem, chosen = %interpreter.path.display(), "passed over an interpreter other users cannot run");
                }
                return Ok(interpreter);
            }
            Err(problem) => passed_over.push(problem),
        }
    }
    Err(format!(
        "no {program} on PATH that the users programs run as can run: {}",
        passed_over.join("; ")
    ))
}

/// How to ask an interpreter for its real executable and its version (two
/// lines). Wrappers such as pyenv shims need their own environment, which
/// snippets do not get, so snippets run the real executable directly.
fn self_report(language: Language) -> &'static [&'static str] {
    match language {
        Language::Python => &[
            "-c",
            "import sys, platform; print(sys.executable); print(platform.python_version())",
        ],
        Language::JavaScript => &["-p", "process.execPath + '\\n' + process.versions.node"],
        Language::TypeScript => &["--version"],
    }
}

/// Learns the real path and version of `program` found at `path`.
fn probe_at(program: &str, path: PathBuf, language: Language) -> Result<Interpreter, String> {
    let out = std::process::Command::new(&path)
        .args(self_report(language))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{program} could not be run: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`{program}` failed with {} when asked for its version",
            out.status
        ));
    }
    let text = String::from_utf8_lossy(if out.stdout.is_empty() {
        &out.stderr
    } else {
        &out.stdout
    })
    .to_string();
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let (real, version_text) = match language {
        Language::TypeScript => (None, text.trim().to_string()),
        _ => (
            lines.next().map(PathBuf::from),
            lines.next().unwrap_or_default().to_string(),
        ),
    };
    let version = version_text
        .split_whitespace()
        .find(|w| {
            w.trim_start_matches('v')
                .starts_with(|c: char| c.is_ascii_digit())
        })
        .map(|w| w.trim_start_matches('v').to_string())
        .unwrap_or(version_text);
    let path = real
        .filter(|p| p.is_absolute() && p.is_file())
        .unwrap_or(path);
    Ok(Interpreter { path, version })
}
