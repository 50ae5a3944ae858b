//! Commands run beside a running program (`nomad alloc exec`, script
//! checks): the way the program itself runs, so what an operator sees is
//! what the snippet sees.
//!
//! * The program's complete environment, its working directory and its
//!   user (the same privilege drop as every start path, [`run_as`]).
//! * Its cgroup, entered between fork and exec exactly as a cold start
//!   does ([`Placement::before_exec`]): the command counts against the
//!   task's memory and process limits and is killed with the program's
//!   leftovers when the program ends.
//! * Its own process group (pipes) or its own session with the pty as its
//!   controlling terminal (tty), so it can be killed as a whole: when it
//!   ends (leftovers), when its timeout passes, when the program ends, and
//!   when whoever reads its output goes away.
//!
//! At most [`MAX_COMMANDS_PER_EXECUTION`] run at once beside one program.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

use super::interpreter::{is_executable_file, on_path};
use super::placement::Placement;
use super::pty::{Pty, WindowSize};
use super::run_as::{self, Identity};
use super::sandbox::rules::ExecutionPaths;
use super::sandbox::{ChildRules, Grants, Sandbox, StartPath};
use super::{child_reaper, ExitInfo};
use crate::output::Stream;

/// Commands that may run at once beside one program; one more is refused
/// (RESOURCE_EXHAUSTED) rather than queued.
pub const MAX_COMMANDS_PER_EXECUTION: usize = 8;
/// Bytes read from a command's output at a time.
const READ_CHUNK: usize = 32 * 1024;
/// Input chunks buffered for a command that is not reading its stdin;
/// beyond it, input waits (and so does the stream it comes from).
const INPUT_BUFFER: usize = 16;
/// How long output may still be read after the command's group was
/// killed (a process that left the group may hold the pipe or pty open).
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// How commands start beside one program. Cloned from the program's
/// control; ended (every running command killed) when the program ends.
#[derive(Debug, Clone)]
pub struct CommandContext {
    env: BTreeMap<String, String>,
    working_dir: PathBuf,
    user: Option<Identity>,
    placement: Placement,
    slots: Arc<Semaphore>,
    ended: Arc<watch::Sender<bool>>,
    rules: Option<CommandRules>,
}

/// The kernel rules a program runs under, for the commands beside it: its
/// grants, its scratch directory and its snippet, over the command's own
/// executable instead of the interpreter. A command can therefore do what
/// the program may, no more: without `subprocess` it can run itself but
/// start nothing else, without `net` it has no sockets.
#[derive(Clone)]
pub struct CommandRules {
    /// The daemon's sandbox.
    pub sandbox: Arc<Sandbox>,
    /// The program's intrinsics.
    pub intrinsics: Vec<String>,
    /// The program's scratch directory.
    pub scratch: PathBuf,
    /// The program's snippet file.
    pub script: PathBuf,
}

impl std::fmt::Debug for CommandRules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandRules")
            .field("intrinsics", &self.intrinsics)
            .field("scratch", &self.scratch)
            .field("script", &self.script)
            .finish_non_exhaustive()
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct CommandSpec {
    /// argv; `[0]` is looked up on the program's `PATH`.
    pub argv: Vec<String>,
    /// On a pseudo-terminal of this first size, instead of pipes.
    pub tty: Option<WindowSize>,
    /// Killed (its whole group) when this passes.
    pub timeout: Option<Duration>,
}

/// Input for a running command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandInput {
    /// Bytes for its stdin.
    Stdin(Vec<u8>),
    /// End of its stdin.
    CloseStdin,
    /// A new terminal size (tty only; ignored otherwise).
    Resize(WindowSize),
}

/// What a running command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandOutput {
    /// Output bytes (a tty's output is all stdout).
    Output(Stream, Vec<u8>),
    /// It ended; always last, after all its output.
    Exited {
        /// How.
        exit: ExitInfo,
        /// Killed at its timeout.
        timed_out: bool,
    },
}

/// Why a command could not start.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The program has ended (or is ending): there is nothing to run beside.
    #[error("the program has ended")]
    ProgramEnded,
    /// [`MAX_COMMANDS_PER_EXECUTION`] are running already.
    #[error(
        "{MAX_COMMANDS_PER_EXECUTION} commands are already running beside this program, the limit"
    )]
    TooMany,
    /// The argv is empty or holds a NUL byte.
    #[error("{0}")]
    BadCommand(String),
    /// The program was not found or could not be executed.
    #[error("command[0]: {program:?} could not be started: {source}")]
    NotStarted {
        /// `argv[0]`.
        program: String,
        /// What `execve` (or the set-up before it) said.
        source: std::io::Error,
    },
    /// The pty or the cgroup could not be set up.
    #[error("setting up the command failed: {0}")]
    Setup(String),
}

impl CommandContext {
    /// Commands beside a program with this environment, working directory,
    /// user and placement.
    pub fn new(
        env: BTreeMap<String, String>,
        working_dir: PathBuf,
        user: Option<Identity>,
        placement: Placement,
    ) -> Self {
        CommandContext {
            env,
            working_dir,
            user,
            placement,
            slots: Arc::new(Semaphore::new(MAX_COMMANDS_PER_EXECUTION)),
            ended: Arc::new(watch::Sender::new(false)),
            rules: None,
        }
    }

    /// Commands enter `rules` as the program did.
    pub fn with_rules(mut self, rules: CommandRules) -> Self {
        self.rules = Some(rules);
        self
    }

    /// `program` as the exec will find it: a path as given, else the first
    /// executable file of that name on the program's `PATH`.
    fn resolve(&self, program: &str) -> Option<PathBuf> {
        if program.contains('/') {
            return Some(self.working_dir.join(program)).filter(|p| is_executable_file(p));
        }
        let path = self.env.get("PATH")?;
        on_path(std::ffi::OsStr::new(path), program).next()
    }

    /// The program ended: every running command is killed, no new one starts.
    pub fn end(&self) {
        self.ended.send_replace(true);
    }

    /// Starts `spec`. Its output and exit go to `output`; its input comes
    /// from `input`. The command is killed when `output` is closed (its
    /// reader went away).
    pub fn start(
        &self,
        spec: CommandSpec,
        input: mpsc::Receiver<CommandInput>,
        output: mpsc::Sender<CommandOutput>,
    ) -> Result<(), CommandError> {
        if *self.ended.borrow() {
            return Err(CommandError::ProgramEnded);
        }
        let permit = self
            .slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| CommandError::TooMany)?;
        let Some(program) = spec.argv.first() else {
            return Err(CommandError::BadCommand("command: is empty".into()));
        };
        if let Some(i) = spec.argv.iter().position(|a| a.contains('\0')) {
            return Err(CommandError::BadCommand(format!(
                "command[{i}]: {:?} contains a NUL byte",
                spec.argv[i]
            )));
        }
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(&spec.argv[1..])
            .env_clear()
            .envs(&self.env)
            .kill_on_drop(true);
        let pty = match spec.tty {
            Some(size) => {
                let pty = Pty::open(size).map_err(|e| CommandError::Setup(e.to_string()))?;
                let slave = |what| {
                    pty.slave_stdio()
                        .map_err(|e| CommandError::Setup(format!("{what}: {e}")))
                };
                cmd.stdin(slave("stdin")?)
                    .stdout(slave("stdout")?)
                    .stderr(slave("stderr")?);
                Some(pty)
            }
            None => {
                cmd.stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .process_group(0);
                None
            }
        };
        // Into the program's cgroup first, while still privileged (the
        // closures run in the order added).
        self.placement
            .before_exec(&mut cmd)
            .map_err(|e| CommandError::Setup(e.to_string()))?;
        // The program's kernel rules, built here over the command's own
        // executable (kept alive until the child has started: the Landlock
        // ruleset is a descriptor it inherits).
        let prepared = match (&self.rules, self.resolve(program)) {
            (Some(rules), Some(executable)) => rules
                .sandbox
                .prepare(
                    Grants::from_names(&rules.intrinsics),
                    &executable,
                    ExecutionPaths {
                        scratch: &rules.scratch,
                        working_dir: &self.working_dir,
                        script: &rules.script,
                    },
                    StartPath::BeforeExec,
                )
                .map_err(|e| CommandError::Setup(format!("the program's sandbox: {e}")))?,
            // Nothing to exec: the spawn below fails and says so.
            _ => None,
        };
        let child_rules = ChildRules::of(prepared.as_ref());
        let cwd = run_as::c_path(&self.working_dir).map_err(|e| {
            CommandError::Setup(format!("working directory {:?}: {e}", self.working_dir))
        })?;
        let user = self.user.clone();
        let tty = pty.is_some();
        // SAFETY: the closure runs between fork and exec and only makes
        // async-signal-safe system calls on memory allocated before the fork.
        unsafe {
            cmd.pre_exec(move || {
                if tty {
                    // A session of its own with the pty (its stdin by now)
                    // as the controlling terminal: job control and ^C work,
                    // and the session's group is what gets killed.
                    nix::unistd::setsid().map_err(std::io::Error::from)?;
                    if nix::libc::ioctl(0, nix::libc::TIOCSCTTY, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                // As a cold program: the network namespace while still
                // privileged, then the user, then Landlock and seccomp.
                child_rules.before_privilege_drop()?;
                run_as::become_user_in(user.as_ref(), &cwd)?;
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
                child_rules.after_privilege_drop()
            });
        }
        let mut owned = child_reaper::hold();
        let mut child = cmd.spawn().map_err(|source| CommandError::NotStarted {
            program: program.clone(),
            source,
        })?;
        let Some(pid) = child.id().map(|p| p as i32) else {
            return Err(CommandError::Setup(
                "the command exited before it got a pid".into(),
            ));
        };
        owned.register(pid);
        drop(prepared);
        tracing::info!(pid, program = %program, tty, "command started beside a program");
        let io = match pty.map(Pty::into_master) {
            Some(Ok(master)) => CommandIo::Pty(master),
            Some(Err(e)) => {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
                return Err(CommandError::Setup(format!("the pty's master: {e}")));
            }
            None => CommandIo::Pipes {
                stdin: child.stdin.take(),
                stdout: child.stdout.take(),
                stderr: child.stderr.take(),
            },
        };
        let running = Running {
            pid,
            child,
            timeout: spec.timeout,
            ended: self.ended.subscribe(),
            _permit: permit,
        };
        tokio::spawn(running.run(io, input, output));
        Ok(())
    }
}

enum CommandIo {
    Pipes {
        stdin: Option<tokio::process::ChildStdin>,
        stdout: Option<tokio::process::ChildStdout>,
        stderr: Option<tokio::process::ChildStderr>,
    },
    Pty(super::pty::Master),
}

struct Running {
    pid: i32,
    child: tokio::process::Child,
    timeout: Option<Duration>,
    ended: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
}

impl Running {
    async fn run(
        mut self,
        io: CommandIo,
        mut input: mpsc::Receiver<CommandInput>,
        output: mpsc::Sender<CommandOutput>,
    ) {
        let (stdin_tx, stdin_rx) = mpsc::channel::<Option<Vec<u8>>>(INPUT_BUFFER);
        let (killed_tx, killed) = watch::channel(false);
        let mut readers = Vec::new();
        let mut master = None;
        match io {
            CommandIo::Pipes {
                stdin,
                stdout,
                stderr,
            } => {
                if let Some(stdin) = stdin {
                    tokio::spawn(write_stdin(stdin, stdin_rx));
                }
                for (pipe, stream) in [
                    (stdout.map(|p| Box::new(p) as BoxRead), Stream::Stdout),
                    (stderr.map(|p| Box::new(p) as BoxRead), Stream::Stderr),
                ] {
                    if let Some(pipe) = pipe {
                        readers.push(tokio::spawn(pump(
                            pipe,
                            stream,
                            output.clone(),
                            killed.clone(),
                        )));
                    }
                }
            }
            CommandIo::Pty(pty) => {
                let pty = Arc::new(pty);
                tokio::spawn(write_stdin(pty.writer(), stdin_rx));
                readers.push(tokio::spawn(pump(
                    pty.reader(),
                    Stream::Stdout,
                    output.clone(),
                    killed.clone(),
                )));
                master = Some(pty);
            }
        }
        let deadline = self.timeout.map(|t| tokio::time::Instant::now() + t);
        let mut timed_out = false;
        // Killed once, only the exit is awaited.
        let mut killed_once = false;
        let mut input_open = true;
        let status = loop {
            tokio::select! {
                status = self.child.wait() => break status,
                message = input.recv(), if input_open && stdin_tx.capacity() > 0 => match message {
                    Some(CommandInput::Stdin(data)) => { let _ = stdin_tx.try_send(Some(data)); }
                    // A terminal has no end of input but its EOF character
                    // (^D), which is what a person at it would type.
                    Some(CommandInput::CloseStdin) => {
                        let _ = stdin_tx.try_send(master.is_some().then(|| vec![0x04]));
                    }
                    Some(CommandInput::Resize(size)) => {
                        if let Some(master) = &master {
                            if let Err(e) = master.resize(size) {
                                tracing::debug!(pid = self.pid, error = %e, "resizing the pty failed");
                            }
                        }
                    }
                    // The input side is done; the command runs on until it
                    // ends or its reader goes away.
                    None => input_open = false,
                },
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() && !killed_once => {
                    timed_out = true;
                    killed_once = kill_group(self.pid, "its timeout passed");
                }
                _ = output.closed(), if !killed_once => killed_once = kill_group(self.pid, "its reader went away"),
                _ = self.ended.wait_for(|ended| *ended), if !killed_once => killed_once = kill_group(self.pid, "the program ended"),
            }
        };
        child_reaper::forget(self.pid);
        // Whatever it left in its group goes too.
        let _ = killpg(Pid::from_raw(self.pid), Signal::SIGKILL);
        let _ = killed_tx.send(true);
        for reader in readers {
            let _ = reader.await;
        }
        let exit = match status {
            Ok(status) => exit_info(status),
            Err(e) => {
                tracing::error!(pid = self.pid, error = %e, "waiting for the command failed");
                ExitInfo::Code(-1)
            }
        };
        tracing::info!(pid = self.pid, ?exit, timed_out, "command ended");
        let _ = output.send(CommandOutput::Exited { exit, timed_out }).await;
    }
}

/// Kills a command's whole group (its session's, on a tty); true, for the
/// caller's "killed" flag.
fn kill_group(pid: i32, why: &str) -> bool {
    tracing::info!(pid, why, "killing a command");
    let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    true
}

fn exit_info(status: std::process::ExitStatus) -> ExitInfo {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitInfo::Code(code),
        (None, Some(sig)) => Signal::try_from(sig)
            .map(ExitInfo::Signal)
            .unwrap_or(ExitInfo::Code(128 + sig)),
        (None, None) => ExitInfo::Code(-1),
    }
}

type BoxRead = Box<dyn AsyncRead + Unpin + Send>;

/// Feeds stdin chunks in order; `None` closes it.
async fn write_stdin(
    mut stdin: impl tokio::io::AsyncWrite + Unpin,
    mut chunks: mpsc::Receiver<Option<Vec<u8>>>,
) {
    while let Some(Some(chunk)) = chunks.recv().await {
        if stdin.write_all(&chunk).await.is_err() {
            return;
        }
    }
    // Dropping it closes a pipe (a pty's input ends with the session).
    let _ = stdin.shutdown().await;
}

/// Copies output until EOF (a pty's EIO once every slave is closed). Once
/// the group was killed, a read may take at most [`DRAIN_LIMIT`].
async fn pump(
    mut from: impl AsyncRead + Unpin,
    stream: Stream,
    to: mpsc::Sender<CommandOutput>,
    mut killed: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; READ_CHUNK];
    let mut after_kill = false;
    loop {
        let read = if after_kill {
            match tokio::time::timeout(DRAIN_LIMIT, from.read(&mut buf)).await {
                Ok(read) => read,
                Err(_) => return,
            }
        } else {
            tokio::select! {
                biased;
                read = from.read(&mut buf) => read,
                _ = killed.wait_for(|k| *k) => { after_kill = true; continue; }
            }
        };
        match read {
            Ok(0) => return,
            Ok(n) => {
                if to
                    .send(CommandOutput::Output(stream, buf[..n].to_vec()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // EIO: the pty's last slave was closed; everything was read.
            Err(_) => return,
        }
    }
}
