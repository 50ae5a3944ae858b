//! The real runtime: each execution is an interpreter child process in a
//! process group of its own.
//!
//! * python runs as `python3 -u FILE ARGS…`, javascript as `node FILE ARGS…`
//!   (on a pre-started worker of the [`NodePool`] when one is waiting),
//!   typescript as javascript after [`typescript::transpile`] (or, when so
//!   configured, as `elide run FILE ARGS…`); with warm python on, python
//!   runs as a fork of the [`PythonZygote`] instead when it is ready.
//! * The snippet is written to a file in the execution's scratch directory,
//!   so tracebacks name a file and large snippets avoid argv limits.
//! * Signals go to the whole process group. When the interpreter exits, any
//!   process it left in its group is killed, so nothing outlives an
//!   execution. Children also get `PR_SET_PDEATHSIG=SIGKILL`, so they die
//!   with the daemon instead of running on unsupervised.
//! * Each execution gets a cgroup ([`crate::cgroup`]) with its memory and
//!   process limits, entered before its first line of user code on every
//!   start path ([`Placement`]); the kernel's OOM kills and refused forks
//!   are reported as [`ProgramEvent::KernelLimit`]. Without cgroups,
//!   resource use is sampled from `/proc` ([`program_control`]).

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::io::AsyncRead;
use tokio::sync::mpsc;

use super::cold_start::start_cold;
use super::interpreter::probe;
pub use super::interpreter::Interpreter;
use super::node_pool::{self, Job, NodePool, NodePoolConfig};
use super::output_pump::pump;
use super::placement::Placement;
use super::program_control::{self, ProcessControl};
use super::python_zygote::{PythonZygote, WarmChild, ZygoteError};
use super::run_as::{self, Identity, RunAsPolicy, UserRefusal};
use super::sandbox::{ChildRules, Enforcement, Sandbox, StartPath, Unenforceable};
use super::{
    child_reaper, typescript, CommandContext, CommandRules, ExitInfo, KernelLimit, LanguageRuntime,
    MemoryEnforcement, Program, ProgramEvent, ProgramSpec, Runtime, RuntimeError, StartCounters,
    StartMode, StartStats,
};
use crate::cgroup::Cgroups;
use crate::language::Language;
use crate::output::Stream;

/// Where to find interpreters and how often to sample.
#[derive(Debug, Clone)]
pub struct ProcessRuntimeConfig {
    /// python3 (name on PATH or a path).
    pub python: String,
    /// node (name on PATH or a path).
    pub node: String,
    /// elide CLI (name on PATH or a path).
    pub elide: String,
    /// Interval of resource sampling.
    pub sample_interval: Duration,
    /// Pre-started node workers to keep (0: every javascript and
    /// typescript program starts cold).
    pub node_pool_size: usize,
    /// Directory for the runtime's own files (the node worker script).
    pub runtime_dir: PathBuf,
    /// What runs typescript.
    pub typescript: TypeScriptRunner,
    /// Who programs run as when their request names nobody (a root daemon
    /// only; see [`run_as`]).
    pub default_user: String,
    /// Per-execution cgroups (detected by the caller).
    pub cgroups: Arc<Cgroups>,
    /// What to do where the kernel cannot deny an intrinsic ([`sandbox`]).
    pub unenforceable_intrinsics: Unenforceable,
}

/// What runs typescript.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TypeScriptRunner {
    /// The daemon transpiles it (oxc) and node runs the javascript.
    #[default]
    Builtin,
    /// The `elide` CLI runs the file (`elide run FILE ARGS…`).
    Elide,
}

impl Default for ProcessRuntimeConfig {
    fn default() -> Self {
        ProcessRuntimeConfig {
            python: "python3".into(),
            node: "node".into(),
            elide: "elide".into(),
            sample_interval: Duration::from_secs(1),
            node_pool_size: 0,
            runtime_dir: std::env::temp_dir().join("elide-daemon"),
            typescript: TypeScriptRunner::Builtin,
            default_user: "nobody".into(),
            cgroups: Arc::new(Cgroups::disabled("not configured")),
            unenforceable_intrinsics: Unenforceable::Refuse,
        }
    }
}

/// Runs snippets as interpreter processes.
#[derive(Debug, Clone)]
pub struct ProcessRuntime {
    python: Result<Interpreter, String>,
    node: Result<Interpreter, String>,
    elide: Result<Interpreter, String>,
    sample_interval: Duration,
    typescript: TypeScriptRunner,
    node_pool: Option<Arc<NodePool>>,
    /// Warm python, when enabled.
    python_zygote: Option<PythonZygote>,
    counters: Arc<StartCounters>,
    run_as: RunAsPolicy,
    cgroups: Arc<Cgroups>,
    sandbox: Arc<Sandbox>,
}

impl ProcessRuntime {
    /// Looks for the interpreters (runs each with `--version`).
    /// Starts the node pool when one is configured and node was found.
    pub fn discover(config: &ProcessRuntimeConfig) -> Self {
        let counters = Arc::<StartCounters>::default();
        let run_as = RunAsPolicy::new(&config.default_user);
        let others = run_as.switches_users();
        let node = probe(&config.node, Language::JavaScript, others);
        // Workers boot as the default user; programs of other users start cold.
        let pool_user = match run_as.resolve("") {
            Ok(user) => Some(user),
            Err(e) if config.node_pool_size > 0 => {
                tracing::warn!(error = %e, "no node pool: its workers run as the default user");
                None
            }
            Err(_) => None,
        };
        let node_pool = match (&node, pool_user) {
            (Ok(interp), Some(user)) if config.node_pool_size > 0 => {
                match NodePool::new(NodePoolConfig {
                    size: config.node_pool_size,
                    node: interp.path.clone(),
                    script_dir: config.runtime_dir.clone(),
                    counters: counters.clone(),
                    user,
                }) {
                    Ok(pool) => {
                        pool.ensure_refilling();
                        Some(pool)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, dir = %config.runtime_dir.display(), "no node pool: writing its worker script failed; javascript starts cold");
                        None
                    }
                }
            }
            _ => None,
        };
        let python = probe(&config.python, Language::Python, others);
        let elide = match config.typescript {
            TypeScriptRunner::Elide => probe(&config.elide, Language::TypeScript, others),
            TypeScriptRunner::Builtin => {
                Err("not used: typescript is transpiled in the daemon".into())
            }
        };
        let sandbox = Sandbox::new(config.unenforceable_intrinsics, [&python, &node, &elide]);
        ProcessRuntime {
            python,
            node,
            elide,
            sample_interval: config.sample_interval,
            typescript: config.typescript,
            node_pool,
            python_zygote: None,
            counters,
            run_as,
            cgroups: config.cgroups.clone(),
            sandbox,
        }
    }

    /// Starts python executions as forks of a zygote that has imported
    /// `preload` (see `python_zygote`). A preload module that cannot be
    /// imported is an error naming it. Without a python interpreter there is
    /// nothing to warm and python stays unavailable.
    pub fn with_python_zygote(mut self, preload: Vec<String>) -> Result<Self, ZygoteError> {
        if let Ok(python) = &self.python {
            self.python_zygote = Some(PythonZygote::start(
                &python.path,
                preload,
                self.counters.clone(),
            )?);
        }
        Ok(self)
    }

    /// The python zygote's pid, while one is ready.
    pub fn python_zygote_pid(&self) -> Option<i32> {
        self.python_zygote.as_ref().and_then(PythonZygote::pid)
    }

    fn interpreter(&self, language: Language) -> &Result<Interpreter, String> {
        match language {
            Language::Python => &self.python,
            Language::JavaScript => &self.node,
            Language::TypeScript if self.typescript == TypeScriptRunner::Builtin => &self.node,
            Language::TypeScript => &self.elide,
        }
    }

    /// Whether `language` runs on node (and so may use the pool).
    fn runs_on_node(&self, language: Language) -> bool {
        language == Language::JavaScript
            || (language == Language::TypeScript && self.typescript == TypeScriptRunner::Builtin)
    }

    /// How `language` starts, and what stands behind it.
    fn start_mode(&self, language: Language) -> (StartMode, String) {
        if let (Language::Python, Some(zygote)) = (language, &self.python_zygote) {
            return (StartMode::Zygote, zygote.preload().join(","));
        }
        let transpiled =
            if language == Language::TypeScript && self.typescript == TypeScriptRunner::Builtin {
                format!("transpiled in the daemon by {}", typescript::TRANSPILER)
            } else {
                String::new()
            };
        match &self.node_pool {
            Some(pool) if self.runs_on_node(language) => {
                let pool = format!(
                    "node pool of {} per daemon, {} ready",
                    pool.size(),
                    pool.ready()
                );
                let detail = if transpiled.is_empty() {
                    pool
                } else {
                    format!("{transpiled}; {pool}")
                };
                (StartMode::Pool, detail)
            }
            _ => (StartMode::Cold, transpiled),
        }
    }

    /// Starts `file` on a pooled node worker, if one is waiting, it runs as
    /// `user` and the environment sets nothing node reads only while booting.
    fn start_warm(
        &self,
        spec: &ProgramSpec,
        file: &Path,
        user: Option<&Identity>,
        placement: &Placement,
        sandboxed: bool,
    ) -> Result<Option<tokio::process::Child>, RuntimeError> {
        let Some(pool) = self
            .node_pool
            .as_ref()
            .filter(|pool| !sandboxed && self.runs_on_node(spec.language) && pool.user() == user)
        else {
            return Ok(None);
        };
        if spec.env.keys().any(|k| node_pool::read_at_boot(k)) {
            return Ok(None);
        }
        let Some(worker) = pool.take() else {
            return Ok(None);
        };
        let pid = worker.pid();
        // In its cgroup before it has the program (dropping the worker on
        // failure kills it).
        placement.place(pid).map_err(|e| RuntimeError::Spawn {
            what: "the pooled node worker in the execution's cgroup".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let job = Job {
            file,
            args: &spec.args,
            env: &spec.env,
            cwd: &spec.working_dir,
        };
        match worker.run(&job) {
            Ok(child) => Ok(Some(child)),
            Err(e) => {
                tracing::warn!(execution_id = %spec.execution_id, pid, error = %e, "handing the program to a pooled node worker failed; starting it cold");
                Ok(None)
            }
        }
    }
}

impl Runtime for ProcessRuntime {
    fn languages(&self) -> Vec<LanguageRuntime> {
        Language::ALL
            .iter()
            .map(|&language| {
                let runtime = match language {
                    Language::Python => "python3",
                    Language::JavaScript => "node",
                    Language::TypeScript if self.typescript == TypeScriptRunner::Builtin => "node",
                    Language::TypeScript => "elide",
                };
                let (start_mode, start_detail) = self.start_mode(language);
                match self.interpreter(language) {
                    Ok(i) => LanguageRuntime {
                        language,
                        runtime: runtime.into(),
                        version: i.version.clone(),
                        unavailable_reason: None,
                        start_mode,
                        start_detail,
                    },
                    Err(reason) => LanguageRuntime {
                        language,
                        runtime: runtime.into(),
                        version: String::new(),
                        unavailable_reason: Some(reason.clone()),
                        start_mode: StartMode::Cold,
                        start_detail: String::new(),
                    },
                }
            })
            .collect()
    }

    fn enforces_intrinsics(&self) -> bool {
        self.sandbox.enforces_all()
    }

    fn intrinsic_enforcement(&self, intrinsic: &str) -> Enforcement {
        self.sandbox.enforcement(intrinsic)
    }

    fn check_intrinsics(&self, granted: &[String]) -> Result<Vec<String>, String> {
        self.sandbox.check(granted)
    }

    fn check_run_as(&self, user: &str, working_dir: &str) -> Result<(), UserRefusal> {
        match self.run_as.resolve(user)? {
            Some(identity) if !working_dir.is_empty() => {
                run_as::check_can_enter(Path::new(working_dir), &identity)
                    .map_err(UserRefusal::CannotEnter)
            }
            _ => Ok(()),
        }
    }

    fn memory_enforcement(&self) -> MemoryEnforcement {
        match self.cgroups.unavailable() {
            None => MemoryEnforcement::Enforced(self.cgroups.describe()),
            Some(reason) => MemoryEnforcement::Sampled(reason.to_string()),
        }
    }

    fn check_working_dir(&self, dir: &str) -> Result<(), String> {
        if dir.is_empty() {
            return Ok(());
        }
        match std::fs::metadata(dir) {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(format!("{dir:?} is not a directory")),
            Err(e) => Err(format!("{dir:?}: {e}")),
        }
    }

    fn spawn(&self, mut spec: ProgramSpec) -> Result<Program, RuntimeError> {
        let interp = self.interpreter(spec.language).as_ref().map_err(|reason| {
            RuntimeError::Unavailable {
                language: spec.language,
                reason: reason.clone(),
            }
        })?;
        let spawn_err = |what: &str, source| RuntimeError::Spawn {
            what: what.into(),
            source,
        };
        let user = (self.run_as.resolve(&spec.run_as_user))
            .map_err(|e| spawn_err("the program as its user", std::io::Error::other(e)))?;
        spec.env = self.sandbox.environment(&spec);
        run_as::create_scratch(&spec.scratch_dir, user.as_ref())
            .map_err(|e| spawn_err("the scratch directory", e))?;
        if let Some(user) = &user {
            run_as::check_can_enter(&spec.working_dir, user).map_err(|problem| {
                spawn_err("the program as its user", std::io::Error::other(problem))
            })?;
        }
        let mut file = spec
            .scratch_dir
            .join(source_file_name(&spec.source_name, spec.language));
        let mut code = std::borrow::Cow::Borrowed(spec.code.as_str());
        if spec.language == Language::TypeScript && self.typescript == TypeScriptRunner::Builtin {
            let name = file
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            match typescript::transpile(&name, &spec.code) {
                Ok(js) => {
                    file.set_extension(if js.is_module { "mjs" } else { "js" });
                    code = js.code.into();
                }
                // The program's own error, reported as its output.
                Err(e) => return Ok(typescript::failed_program(&e, &spec.scratch_dir)),
            }
        }
        std::fs::write(&file, code.as_bytes())
            .and_then(|()| run_as::give_file(&file, user.as_ref()))
            .map_err(|e| spawn_err("the snippet file", e))?;

        // The scratch dir is unique per session and execution: it names the
        // cgroup. Never run without the cgroup the host could give.
        let cgroup = self
            .cgroups
            .create(
                &spec.scratch_dir.display().to_string(),
                spec.memory_limit_bytes,
                spec.nomad_cgroup.as_ref(),
            )
            .map_err(|e| {
                spawn_err(
                    "the execution's cgroup",
                    std::io::Error::other(e.to_string()),
                )
            })?;
        let placement = Placement::new(cgroup);
        let started = self.start(interp, &spec, &file, user.as_ref(), &placement);
        if started.is_err() {
            if let Some(cgroup) = placement.cgroup() {
                cgroup.remove();
            }
        }
        started
    }

    fn start_stats(&self) -> StartStats {
        self.counters.snapshot()
    }
}

impl ProcessRuntime {
    /// Starts the written snippet `file`: forked from the zygote, on a
    /// pooled worker or cold, placed by `placement` before it runs.
    fn start(
        &self,
        interp: &Interpreter,
        spec: &ProgramSpec,
        file: &Path,
        user: Option<&Identity>,
        placement: &Placement,
    ) -> Result<Program, RuntimeError> {
        let spawn_err = |what: &str, source| RuntimeError::Spawn {
            what: what.into(),
            source,
        };
        let rules_for = |start| self.sandbox.for_program(spec, &interp.path, file, start);
        if let (Language::Python, Some(zygote)) = (spec.language, &self.python_zygote) {
            let rules = rules_for(StartPath::AfterExec)?;
            match zygote.fork(spec, file, user, placement, rules.as_ref()) {
                // The zygote counts its warm starts.
                Ok(child) => return self.watch_warm(child, spec, (user, placement, file)),
                Err(ZygoteError::Placement(e)) => {
                    return Err(spawn_err(
                        "the forked python in the execution's cgroup",
                        std::io::Error::other(e),
                    ))
                }
                // Cold rather than failed: the zygote is being replaced.
                Err(e) => {
                    tracing::info!(execution_id = %spec.execution_id, reason = %e, "starting cold")
                }
            }
        }
        let rules = rules_for(StartPath::BeforeExec)?;
        // A pooled worker cannot enter rules of its own (see `sandbox`).
        let warm = self.start_warm(spec, file, user, placement, rules.is_some())?;
        let started_warm = warm.is_some();
        if started_warm {
            self.counters.warm_start(spec.language);
        } else {
            self.counters.cold_start(spec.language);
        }
        let (mut child, pid) = match warm {
            // The pool registered the worker with the reaper when it spawned it.
            Some(child) => {
                let pid = child.id().map(|p| p as i32).ok_or_else(|| {
                    spawn_err(
                        "the pooled node worker",
                        std::io::Error::other("exited before it got a pid"),
                    )
                })?;
                (child, pid)
            }
            None => {
                // Registered before the orphan scan can see it (tokio waits for it).
                let mut owned = child_reaper::hold();
                let child = start_cold(
                    interp,
                    spec,
                    file,
                    self.runs_on_node(spec.language),
                    user.cloned(),
                    placement,
                    ChildRules::of(rules.as_ref()),
                )
                .map_err(|e| spawn_err(&interp.path.display().to_string(), e))?;
                let pid = child.id().map(|p| p as i32).ok_or_else(|| {
                    spawn_err(
                        "the interpreter",
                        std::io::Error::other("exited before it got a pid"),
                    )
                })?;
                owned.register(pid);
                (child, pid)
            }
        };
        tracing::debug!(execution_id = %spec.execution_id, pid, "program started");
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let exit = async move {
            let status = child.wait().await;
            child_reaper::forget(pid);
            match status {
                Ok(s) => match (s.code(), s.signal()) {
                    (Some(code), _) => ExitInfo::Code(code),
                    (None, Some(sig)) => Signal::try_from(sig)
                        .map(ExitInfo::Signal)
                        .unwrap_or(ExitInfo::Code(128 + sig)),
                    (None, None) => ExitInfo::Code(-1),
                },
                Err(e) => {
                    tracing::error!(pid, error = %e, "waiting for the program failed");
                    ExitInfo::Code(-1)
                }
            }
        };
        let program = self.watch(pid, stdout, stderr, exit, spec, (user, placement, file));
        Ok(Program {
            warm: started_warm,
            ..program
        })
    }

    /// Follows a forked python execution exactly as a cold one.
    fn watch_warm(
        &self,
        child: WarmChild,
        spec: &ProgramSpec,
        placed: (Option<&Identity>, &Placement, &Path),
    ) -> Result<Program, RuntimeError> {
        let pid = child.pid;
        tracing::debug!(execution_id = %spec.execution_id, pid, "program forked from the python zygote");
        let receiver = |fd| {
            tokio::net::unix::pipe::Receiver::from_owned_fd(fd).map_err(|e| RuntimeError::Spawn {
                what: "the output pipes".into(),
                source: e,
            })
        };
        let stdout = receiver(child.stdout)?;
        let stderr = receiver(child.stderr)?;
        let exit = child.exit;
        let exit = async move {
            exit.await.unwrap_or_else(|_| {
                tracing::error!(pid, "the exit status of a forked program was lost");
                ExitInfo::Code(-1)
            })
        };
        let program = self.watch(pid, Some(stdout), Some(stderr), exit, spec, placed);
        Ok(Program {
            warm: true,
            ..program
        })
    }

    /// Copies a started program's output, samples it and reports its exit.
    fn watch(
        &self,
        pid: i32,
        stdout: Option<impl AsyncRead + Unpin + Send + 'static>,
        stderr: Option<impl AsyncRead + Unpin + Send + 'static>,
        exit: impl std::future::Future<Output = ExitInfo> + Send + 'static,
        spec: &ProgramSpec,
        (user, placement, script): (Option<&Identity>, &Placement, &Path),
    ) -> Program {
        let (tx, rx) = mpsc::channel(64);
        let cgroup = placement.cgroup().cloned();
        // Commands beside it run as it does: same env, directory, user, cgroup.
        let commands = CommandContext::new(
            spec.env.clone(),
            spec.working_dir.clone(),
            user.cloned(),
            placement.clone(),
        )
        .with_rules(CommandRules {
            sandbox: self.sandbox.clone(),
            intrinsics: spec.intrinsics.clone(),
            scratch: spec.scratch_dir.clone(),
            script: script.to_path_buf(),
        });
        let control = Arc::new(ProcessControl::new(pid, cgroup.clone()).with_commands(commands));
        let (exited_tx, exited_rx) = tokio::sync::watch::channel(false);
        let readers = [
            stdout.map(|p| tokio::spawn(pump(p, Stream::Stdout, tx.clone(), exited_rx.clone()))),
            stderr.map(|p| tokio::spawn(pump(p, Stream::Stderr, tx.clone(), exited_rx))),
        ];
        // The kernel enforces and accounts for a program with a cgroup.
        let sampler = cgroup.is_none().then(|| {
            tokio::spawn(program_control::sample_loop(
                control.clone(),
                self.sample_interval,
                spec.memory_limit_bytes,
                tx.clone(),
            ))
        });
        let waiter_control = control.clone();
        let scratch = spec.scratch_dir.clone();
        tokio::spawn(async move {
            let info = exit.await;
            waiter_control.finish();
            if let Some(sampler) = sampler {
                sampler.abort();
            }
            let _ = exited_tx.send(true);
            // Every byte is delivered before the exit, however long the
            // consumer takes; `pump` itself bounds waiting on a pipe.
            for reader in readers.into_iter().flatten() {
                let _ = reader.await;
            }
            // The snippet file is only needed while the program runs.
            if let Err(e) = std::fs::remove_dir_all(&scratch) {
                tracing::debug!(pid, error = %e, "removing the scratch directory failed");
            }
            if let Some(cgroup) = cgroup {
                for limit in kernel_limits(&cgroup) {
                    let _ = tx.send(ProgramEvent::KernelLimit(limit)).await;
                }
                // Removal waits for the kernel to finish the exits.
                let _ = tokio::task::spawn_blocking(move || cgroup.remove()).await;
            }
            let _ = tx.send(ProgramEvent::Exited(info)).await;
        });
        Program {
            events: rx,
            control,
            warm: false,
        }
    }
}

/// What the kernel enforced on an ended program's cgroup.
fn kernel_limits(cgroup: &crate::cgroup::ExecutionCgroup) -> Vec<KernelLimit> {
    let hits = cgroup.limit_hits();
    let mut limits = Vec::new();
    if hits.oom_kills > 0 {
        limits.push(KernelLimit::OomKilled {
            kills: hits.oom_kills,
            limit_bytes: cgroup.memory_limit(),
            peak_bytes: cgroup.usage().peak,
            cgroup: cgroup.version().to_string(),
        });
    }
    if let (true, Some(limit)) = (hits.pids_refused > 0, cgroup.pids_limit()) {
        limits.push(KernelLimit::ProcessLimit {
            limit,
            refused: hits.pids_refused,
        });
    }
    limits
}

/// File name for the snippet: the last component of `source_name` (when it
/// is a plain name) with the language's extension.
fn source_file_name(source_name: &str, language: Language) -> String {
    let ext = language.extension();
    let base = Path::new(source_name)
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| {
            n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        })
        .filter(|n| !n.starts_with('.'))
        .unwrap_or("snippet");
    // A name whose extension already means this language keeps it, so
    // `main.mjs` stays an ES module for node.
    let own_extension = Path::new(base)
        .extension()
        .and_then(|e| e.to_str())
        .and_then(Language::from_extension)
        == Some(language);
    if own_extension {
        base.to_string()
    } else {
        format!("{base}.{ext}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_file_names_are_plain_and_carry_the_extension() {
        assert_eq!(
            source_file_name("local/hello.py", Language::Python),
            "hello.py"
        );
        assert_eq!(source_file_name("", Language::JavaScript), "snippet.js");
        assert_eq!(
            source_file_name("../../etc/passwd", Language::Python),
            "passwd.py"
        );
        assert_eq!(source_file_name(".hidden", Language::Python), "snippet.py");
        assert_eq!(source_file_name("a b", Language::TypeScript), "snippet.ts");
        assert_eq!(
            source_file_name("local/main.mjs", Language::JavaScript),
            "main.mjs"
        );
        assert_eq!(
            source_file_name("local/main.mjs", Language::Python),
            "main.mjs.py"
        );
    }
}
