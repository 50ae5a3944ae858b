//! Warm python: a long-lived zygote interpreter that forks one child per
//! execution.
//!
//! The zygote (`python_zygote.py`, embedded in the binary) starts once,
//! imports the preload set and then only forks; it never runs user code.
//! Each execution is a `fork()` of it that becomes the execution (its own
//! process group, the execution's env, cwd, argv, stdio) and runs the
//! snippet as `python3 -u FILE` would. Its stdout/stderr are pipes the
//! daemon created and passed with `SCM_RIGHTS`, so output reaches the daemon
//! as raw bytes exactly as from a cold interpreter.
//!
//! Why no exit status can be lost:
//! * the zygote reports a child's status on the report pipe *before* it
//!   reaps it (`waitid(WNOWAIT)`); a line in a pipe survives its writer;
//! * the daemon is a child subreaper ([`child_reaper`]), so if the zygote
//!   dies, its unreaped children (running or zombie) become the daemon's,
//!   and the daemon waits for every pid it handed out and saw no report for,
//!   after the zygote itself was reaped (re-parenting is complete by then);
//! * a child waits for a "go" byte that the daemon writes only once it has
//!   the child's pid, so a child whose pid never reached the daemon runs
//!   nothing (the daemon then starts that execution cold).
//!
//! A dead zygote is replaced in the background; meanwhile executions start
//! cold.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, IoSlice, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::sys::signal::Signal;
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use tokio::sync::oneshot;

use super::child_reaper;
use super::placement::Placement;
use super::run_as::Identity;
use super::sandbox::Prepared;
use super::{ExitInfo, ProgramSpec, StartCounters};
use crate::language::Language;

/// The zygote's source.
const ZYGOTE_SOURCE: &str = include_str!("python_zygote.py");

/// Modules the zygote imports unless configured otherwise: the standard
/// library modules snippets commonly use (see README, "Warm starts", for
/// how the set was measured).
pub const DEFAULT_PRELOAD: &[&str] = &[
    "json",
    "re",
    "os",
    "sys",
    "math",
    "random",
    "time",
    "datetime",
    "collections",
    "itertools",
    "functools",
    "subprocess",
    "pathlib",
    "typing",
    "dataclasses",
    "base64",
    "hashlib",
    "uuid",
    "string",
    "textwrap",
    "threading",
    "urllib.parse",
    "tempfile",
    "shutil",
    "csv",
    "io",
    "struct",
    "decimal",
    "logging",
    "argparse",
    "asyncio",
];

/// Longest a zygote may take to import its preload set and say ready.
const BOOT_LIMIT: Duration = Duration::from_secs(30);
/// Longest a fork request may take before the zygote is declared broken.
const REQUEST_LIMIT: Duration = Duration::from_secs(5);
/// Wait before booting a replacement again after a failed boot (doubling,
/// up to `RESTART_BACKOFF_MAX`).
const RESTART_BACKOFF: Duration = Duration::from_millis(100);
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Errors of the zygote.
#[derive(Debug, thiserror::Error)]
pub enum ZygoteError {
    /// The zygote could not be started or did not become ready.
    #[error("the python zygote did not start: {0}")]
    Boot(String),
    /// No zygote is ready (it died and its replacement is booting).
    #[error("no python zygote is ready")]
    Down,
    /// This execution must start cold: its environment sets a variable the
    /// interpreter only reads at start-up.
    #[error("{0}")]
    NeedsCold(String),
    /// A fork request failed; the zygote is being replaced.
    #[error("the python zygote failed a fork request: {0}")]
    Request(String),
    /// The forked child could not be put in its cgroup; it was not released
    /// and exits without running anything. The zygote is fine.
    #[error("{0}")]
    Placement(String),
}

/// A forked execution.
#[derive(Debug)]
pub struct WarmChild {
    /// Its pid, also its process group id.
    pub pid: i32,
    /// Read end of its stdout.
    pub stdout: OwnedFd,
    /// Read end of its stderr.
    pub stderr: OwnedFd,
    /// Its exit status, whoever learns it (zygote report or adoption).
    pub exit: oneshot::Receiver<ExitInfo>,
}

/// Keeps a python zygote alive and forks executions from it.
#[derive(Debug, Clone)]
pub struct PythonZygote {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    python: PathBuf,
    preload: Vec<String>,
    counters: Arc<StartCounters>,
    current: Mutex<Option<Arc<Generation>>>,
}

/// One zygote process.
#[derive(Debug)]
struct Generation {
    pid: i32,
    control: Mutex<Control>,
    exits: Arc<Mutex<ExitBook>>,
}

#[derive(Debug)]
struct Control {
    stream: UnixStream,
    replies: BufReader<UnixStream>,
}

/// Exit statuses of one zygote's children, and who waits for them.
#[derive(Debug, Default)]
struct ExitBook {
    waiting: BTreeMap<i32, oneshot::Sender<ExitInfo>>,
    /// Reports that came before the spawn claimed the pid.
    early: BTreeMap<i32, ExitInfo>,
    /// Pids handed out with no report yet.
    unreported: BTreeSet<i32>,
    /// The zygote was reaped: unreported children are the daemon's now.
    dead: bool,
}

impl ExitBook {
    fn deliver(&mut self, pid: i32, info: ExitInfo) {
        self.unreported.remove(&pid);
        match self.waiting.remove(&pid) {
            Some(tx) => {
                let _ = tx.send(info);
            }
            None => {
                self.early.insert(pid, info);
            }
        }
    }
}

impl PythonZygote {
    /// Starts the zygote and waits until it has imported `preload`; a module
    /// that cannot be imported is an error naming it. Makes the daemon a
    /// child subreaper (must be called inside a tokio runtime).
    pub fn start(
        python: &Path,
        preload: Vec<String>,
        counters: Arc<StartCounters>,
    ) -> Result<Self, ZygoteError> {
        if let Some(bad) = preload
            .iter()
            .find(|m| m.is_empty() || !m.split('.').all(is_identifier))
        {
            return Err(ZygoteError::Boot(format!(
                "preload module {bad:?} is not a module name"
            )));
        }
        child_reaper::become_subreaper()
            .map_err(|e| ZygoteError::Boot(format!("becoming a child subreaper: {e}")))?;
        let shared = Arc::new(Shared {
            python: python.to_path_buf(),
            preload,
            counters,
            current: Mutex::new(None),
        });
        let (first_tx, first_rx) = std::sync::mpsc::channel();
        let keeper_shared = shared.clone();
        std::thread::Builder::new()
            .name("python-zygote".into())
            .spawn(move || keeper(keeper_shared, first_tx))
            .map_err(|e| ZygoteError::Boot(format!("starting the keeper thread: {e}")))?;
        first_rx
            .recv()
            .map_err(|_| ZygoteError::Boot("the keeper thread ended".into()))??;
        Ok(PythonZygote { shared })
    }

    /// The preloaded modules.
    pub fn preload(&self) -> &[String] {
        &self.shared.preload
    }

    /// The current zygote's pid, if one is ready.
    pub fn pid(&self) -> Option<i32> {
        self.shared.ready().map(|g| g.pid)
    }

    /// Forks an execution running `file` (the snippet, already written).
    /// The child drops to `identity` (when given) before it runs anything
    /// of the request.
    pub fn fork(
        &self,
        spec: &ProgramSpec,
        file: &Path,
        identity: Option<&Identity>,
        placement: &Placement,
        sandbox: Option<&Prepared>,
    ) -> Result<WarmChild, ZygoteError> {
        if let Some(name) = spec.env.keys().find(|k| read_at_startup(k)) {
            return Err(ZygoteError::NeedsCold(format!(
                "{name} is read by python at start-up"
            )));
        }
        let generation = self.shared.ready().ok_or(ZygoteError::Down)?;
        let result = generation.fork(spec, file, identity, placement, sandbox);
        match &result {
            Ok(_) => self.shared.counters.warm_start(Language::Python),
            // The child was refused, not the zygote's fault.
            Err(ZygoteError::Placement(_)) => {}
            Err(e) => {
                // A zygote that fails a request is not trusted again: kill it,
                // its monitor adopts its children and boots a new one.
                tracing::warn!(pid = generation.pid, error = %e, "python zygote failed; replacing it");
                self.shared.retire(&generation);
                let _ = nix::sys::signal::kill(Pid::from_raw(generation.pid), Signal::SIGKILL);
            }
        }
        result
    }
}

/// Variables python reads only while starting (PYTHONPATH, PYTHONHASHSEED,
/// PYTHONSAFEPATH, …): a fork of the zygote cannot honour them.
/// PYTHONIOENCODING is applied by the child; PYTHONUNBUFFERED changes
/// nothing under `-u`.
fn read_at_startup(name: &str) -> bool {
    name.starts_with("PYTHON") && !matches!(name, "PYTHONIOENCODING" | "PYTHONUNBUFFERED")
}

fn is_identifier(part: &str) -> bool {
    let mut chars = part.chars();
    chars.next().is_some_and(|c| c.is_alphabetic() || c == '_')
        && chars.all(|c| c.is_alphanumeric() || c == '_')
}

impl Shared {
    fn ready(&self) -> Option<Arc<Generation>> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn retire(&self, generation: &Arc<Generation>) {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if current.as_ref().is_some_and(|g| Arc::ptr_eq(g, generation)) {
            *current = None;
        }
    }
}

/// Starts one zygote, waits for it to be ready and installs it.
fn boot(shared: &Arc<Shared>) -> Result<Booted, ZygoteError> {
    let boot_err =
        |what: &str, e: &dyn std::fmt::Display| ZygoteError::Boot(format!("{what}: {e}"));
    let (daemon_end, zygote_end) =
        UnixStream::pair().map_err(|e| boot_err("creating the control socket", &e))?;
    let (report_r, report_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)
        .map_err(|e| boot_err("creating the report pipe", &e))?;
    let (control_fd, report_fd) = (zygote_end.as_raw_fd(), report_w.as_raw_fd());
    let mut cmd = Command::new(&shared.python);
    cmd.arg("-u")
        .arg("-c")
        .arg(ZYGOTE_SOURCE)
        .arg(control_fd.to_string())
        .arg(report_fd.to_string())
        .arg(shared.preload.join(","))
        .env_clear()
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .process_group(0);
    // SAFETY: the closure runs between fork and exec and only makes
    // async-signal-safe fcntl and prctl system calls.
    unsafe {
        cmd.pre_exec(move || {
            for fd in [control_fd, report_fd] {
                let fd = std::os::fd::BorrowedFd::borrow_raw(fd);
                fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty())).map_err(std::io::Error::from)?;
            }
            // Orphans of executions come to the zygote, which reaps them.
            nix::sys::prctl::set_child_subreaper(true).map_err(std::io::Error::from)?;
            // The daemon is gone: the zygote kills its children and exits.
            nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from)
        });
    }
    let mut child = {
        let mut owned = child_reaper::hold();
        let child = cmd
            .spawn()
            .map_err(|e| boot_err(&format!("running {}", shared.python.display()), &e))?;
        owned.register(child.id() as i32);
        child
    };
    drop(zygote_end);
    drop(report_w);
    let pid = child.id() as i32;

    let ready = read_ready(&daemon_end);
    if let Err(reason) = ready {
        let _ = child.kill();
        let status = child.wait();
        child_reaper::forget(pid);
        let status = status.map(|s| format!(" ({s})")).unwrap_or_default();
        return Err(ZygoteError::Boot(format!("{reason}{status}")));
    }
    let replies = daemon_end
        .try_clone()
        .map_err(|e| boot_err("cloning the control socket", &e))?;
    let generation = Arc::new(Generation {
        pid,
        control: Mutex::new(Control {
            stream: daemon_end,
            replies: BufReader::new(replies),
        }),
        exits: Arc::default(),
    });
    *shared.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(generation.clone());
    tracing::info!(pid, preload = %shared.preload.join(","), "python zygote ready");
    Ok(Booted {
        generation,
        child,
        report: report_r,
    })
}

/// A zygote that said ready, with what its keeper follows it by.
struct Booted {
    generation: Arc<Generation>,
    child: Child,
    report: OwnedFd,
}

/// The thread that boots every zygote and follows it until it dies. It lives
/// as long as the daemon because a zygote's `PR_SET_PDEATHSIG` fires when
/// the *thread* that spawned it ends.
fn keeper(shared: Arc<Shared>, first: std::sync::mpsc::Sender<Result<(), ZygoteError>>) {
    let mut booted = match boot(&shared) {
        Ok(booted) => {
            let _ = first.send(Ok(()));
            booted
        }
        Err(e) => {
            let _ = first.send(Err(e));
            return;
        }
    };
    loop {
        follow(&shared, booted);
        let mut backoff = RESTART_BACKOFF;
        booted = loop {
            match boot(&shared) {
                Ok(booted) => break booted,
                Err(e) => {
                    tracing::error!(error = %e, retry_in = ?backoff, "replacing the python zygote failed");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(RESTART_BACKOFF_MAX);
                }
            }
        };
        shared.counters.restart();
    }
}

/// Reads the zygote's first line: ready, or the error that stopped it.
fn read_ready(stream: &UnixStream) -> Result<(), String> {
    stream
        .set_read_timeout(Some(BOOT_LIMIT))
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .map_err(|e| format!("no ready message within {BOOT_LIMIT:?}: {e}"))?;
    // The control stream is line-based; the reader above read at most the
    // first line because the zygote sends nothing else until asked.
    stream.set_read_timeout(None).map_err(|e| e.to_string())?;
    let message: serde_json::Value = serde_json::from_str(line.trim())
        .map_err(|_| format!("it exited or said {:?} instead of ready", line.trim()))?;
    if let Some(error) = message.get("error").and_then(|e| e.as_str()) {
        return Err(error.to_string());
    }
    if message.get("ready").and_then(|r| r.as_bool()) != Some(true) {
        return Err(format!("unexpected first message {message}"));
    }
    Ok(())
}

impl Generation {
    fn fork(
        &self,
        spec: &ProgramSpec,
        file: &Path,
        identity: Option<&Identity>,
        placement: &Placement,
        sandbox: Option<&Prepared>,
    ) -> Result<WarmChild, ZygoteError> {
        let request_err =
            |what: &str, e: &dyn std::fmt::Display| ZygoteError::Request(format!("{what}: {e}"));
        let pipe =
            || nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| request_err("creating a pipe", &e));
        let (stdout_r, stdout_w) = pipe()?;
        let (stderr_r, stderr_w) = pipe()?;
        let (go_r, go_w) = pipe()?;
        let mut argv = vec![file.display().to_string()];
        argv.extend(spec.args.iter().cloned());
        let body = serde_json::to_vec(&serde_json::json!({
            "argv": argv,
            "env": spec.env,
            "cwd": spec.working_dir,
            "file": file,
            "user": identity,
            // Entered by the child as a cold child does (see `sandbox`); the
            // Landlock ruleset comes as a fourth descriptor.
            "sandbox": sandbox.map(|s| serde_json::json!({
                "unshare_net": s.rules.isolate_net,
                "landlock": s.landlock.is_some(),
                "seccomp": s.seccomp.as_deref().map(super::sandbox::filter_rows),
            })),
        }))
        .map_err(|e| request_err("encoding the request", &e))?;

        // From the request until the pid is registered, the orphan scan
        // waits: if the zygote dies meanwhile, the child it adopted is ours.
        let mut owned = child_reaper::hold();
        let mut control = self.control.lock().unwrap_or_else(|p| p.into_inner());
        let control = &mut *control;
        control
            .stream
            .set_write_timeout(Some(REQUEST_LIMIT))
            .and_then(|()| control.stream.set_read_timeout(Some(REQUEST_LIMIT)))
            .map_err(|e| request_err("setting socket timeouts", &e))?;
        let header = (body.len() as u64).to_be_bytes();
        let mut fds = vec![stdout_w.as_raw_fd(), stderr_w.as_raw_fd(), go_r.as_raw_fd()];
        fds.extend(
            sandbox
                .and_then(|s| s.landlock.as_ref())
                .map(|fd| fd.as_raw_fd()),
        );
        let sent = sendmsg::<()>(
            control.stream.as_raw_fd(),
            &[IoSlice::new(&header)],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .map_err(|e| request_err("sending the request", &e))?;
        if sent != header.len() {
            return Err(ZygoteError::Request(format!(
                "sent {sent} of {} header bytes",
                header.len()
            )));
        }
        control
            .stream
            .write_all(&body)
            .map_err(|e| request_err("sending the request", &e))?;
        drop((stdout_w, stderr_w, go_r));
        let mut line = String::new();
        match control.replies.read_line(&mut line) {
            Ok(0) => return Err(ZygoteError::Request("it closed the control socket".into())),
            Ok(_) => {}
            Err(e) => return Err(request_err("reading the reply", &e)),
        }
        let reply: serde_json::Value = serde_json::from_str(line.trim())
            .map_err(|e| request_err(&format!("reading the reply {line:?}"), &e))?;
        let Some(pid) = reply.get("pid").and_then(|p| p.as_i64()).map(|p| p as i32) else {
            return Err(ZygoteError::Request(format!("it answered {reply}")));
        };
        owned.register(pid);
        drop(owned);

        let (tx, exit) = oneshot::channel();
        {
            let mut book = self.exits.lock().unwrap_or_else(|p| p.into_inner());
            match book.early.remove(&pid) {
                Some(info) => {
                    let _ = tx.send(info);
                }
                None => {
                    book.waiting.insert(pid, tx);
                    book.unreported.insert(pid);
                    if book.dead {
                        adopt(self.exits.clone(), pid);
                    }
                }
            }
        }
        // Into its cgroup before it runs a line of the snippet; if that
        // fails, closing the go pipe unsent makes it exit 127.
        placement
            .place(pid)
            .map_err(|e| ZygoteError::Placement(e.to_string()))?;
        // The child may run now: its pid is known and its exit will be.
        (&std::fs::File::from(go_w))
            .write_all(b"g")
            .map_err(|e| request_err("releasing the child", &e))?;
        Ok(WarmChild {
            pid,
            stdout: stdout_r,
            stderr: stderr_r,
            exit,
        })
    }
}

/// Waits for an adopted child (the zygote died before reporting it) from a
/// thread of its own and delivers its status.
fn adopt(book: Arc<Mutex<ExitBook>>, pid: i32) {
    let spawned = std::thread::Builder::new()
        .name("python-adopted".into())
        .spawn(move || {
            let info = wait_adopted(pid);
            child_reaper::forget(pid);
            book.lock()
                .unwrap_or_else(|p| p.into_inner())
                .deliver(pid, info);
        });
    if let Err(e) = spawned {
        tracing::error!(pid, error = %e, "could not start a thread to wait for an adopted child");
    }
}

fn wait_adopted(pid: i32) -> ExitInfo {
    loop {
        match waitpid(Pid::from_raw(pid), None) {
            Ok(WaitStatus::Exited(_, code)) => return ExitInfo::Code(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => return ExitInfo::Signal(sig),
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                tracing::error!(pid, error = %e, "waiting for an adopted python child failed");
                return ExitInfo::Code(-1);
            }
        }
    }
}

/// Follows one zygote: delivers its reports; when it dies, adopts its
/// unreported children.
fn follow(shared: &Arc<Shared>, booted: Booted) {
    let Booted {
        generation,
        mut child,
        report,
    } = booted;
    let pid = generation.pid;
    let mut reader = BufReader::new(std::fs::File::from(report));
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => break,
            Ok(_) => match parse_report(&line) {
                Some((child_pid, info)) => {
                    generation
                        .exits
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .deliver(child_pid, info);
                    child_reaper::forget(child_pid);
                }
                None => tracing::warn!(pid, line = %line.trim(), "unreadable zygote report"),
            },
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!(pid, error = %e, "reading zygote reports failed");
                break;
            }
        }
    }
    // EOF: the zygote closed its end, so it is exiting. Once it is reaped,
    // its children have been re-parented to the daemon.
    shared.retire(&generation);
    let status = child.wait();
    child_reaper::forget(pid);
    tracing::warn!(pid, status = ?status.map(|s| (s.code(), s.signal())), "python zygote ended");
    let orphans: Vec<i32> = {
        let mut book = generation.exits.lock().unwrap_or_else(|p| p.into_inner());
        book.dead = true;
        book.unreported.iter().copied().collect()
    };
    for orphan in orphans {
        tracing::info!(
            pid = orphan,
            "waiting for an execution the dead zygote left"
        );
        adopt(generation.exits.clone(), orphan);
    }
}

/// "PID exit CODE" or "PID signal SIGNO".
fn parse_report(line: &str) -> Option<(i32, ExitInfo)> {
    let mut parts = line.split_whitespace();
    let pid = parts.next()?.parse().ok()?;
    let kind = parts.next()?;
    let value: i32 = parts.next()?.parse().ok()?;
    let info = match kind {
        "exit" => ExitInfo::Code(value),
        "signal" => Signal::try_from(value)
            .map(ExitInfo::Signal)
            .unwrap_or(ExitInfo::Code(128 + value)),
        _ => return None,
    };
    Some((pid, info))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_parse_to_exit_codes_and_signals() {
        assert_eq!(parse_report("42 exit 3\n"), Some((42, ExitInfo::Code(3))));
        assert_eq!(
            parse_report("7 signal 9"),
            Some((7, ExitInfo::Signal(Signal::SIGKILL)))
        );
        assert_eq!(parse_report("7 vanished 9"), None);
        assert_eq!(parse_report("garbage"), None);
    }

    #[test]
    fn preload_names_must_be_module_names() {
        assert!("urllib.parse".split('.').all(is_identifier));
        assert!(!"os; import x".split('.').all(is_identifier));
        assert!(!"".split('.').all(is_identifier));
    }
}
