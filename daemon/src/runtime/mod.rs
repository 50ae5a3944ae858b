//! The seam between the daemon's state machine and whatever runs programs.
//!
//! The daemon core only asks a [`Runtime`] to start a program and then reads
//! its [`ProgramEvent`]s; it signals it through [`ProgramControl`]. The real
//! implementation ([`process::ProcessRuntime`]) runs interpreters as child
//! processes; a simulation supplies its own.

pub(crate) mod child_reaper;
mod cold_start;
mod command;
pub(crate) mod interpreter;
pub(crate) mod node_pool;
mod output_pump;
pub(crate) mod placement;
pub(crate) mod process;
mod program_control;
mod pty;
pub(crate) mod python_zygote;
pub(crate) mod run_as;
pub(crate) mod sandbox;
pub(crate) mod scripted;
pub(crate) mod start_counters;
pub(crate) mod typescript;

pub use command::{
    CommandContext, CommandError, CommandInput, CommandOutput, CommandRules, CommandSpec,
    MAX_COMMANDS_PER_EXECUTION,
};
pub use pty::WindowSize;
pub use start_counters::{StartCounters, StartStats};

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::sync::mpsc;

use crate::language::Language;
use crate::output::Stream;

/// Everything needed to start one program.
#[derive(Debug, Clone)]
pub struct ProgramSpec {
    /// For logs only.
    pub execution_id: String,
    /// Language of `code`.
    pub language: Language,
    /// The snippet source.
    pub code: String,
    /// Name of the source in tracebacks.
    pub source_name: String,
    /// Program arguments (after the source file).
    pub args: Vec<String>,
    /// The program's complete environment.
    pub env: BTreeMap<String, String>,
    /// Working directory of the program.
    pub working_dir: PathBuf,
    /// The user it runs as ("" for the runtime's default; see
    /// [`run_as::RunAsPolicy`]).
    pub run_as_user: String,
    /// A directory the runtime may use for this execution's files; the
    /// runtime creates it and removes it when the program has ended.
    pub scratch_dir: PathBuf,
    /// Memory limit in bytes, if any.
    pub memory_limit_bytes: Option<u64>,
    /// The cgroup Nomad made for the task, to run the program in (instead
    /// of a cgroup of the daemon's own).
    pub nomad_cgroup: Option<crate::cgroup::NomadCgroup>,
    /// Intrinsics granted to the program.
    pub intrinsics: Vec<String>,
    /// Whether local AI is enabled.
    pub enable_ai: bool,
}

/// How a program ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitInfo {
    /// It exited with this code.
    Code(i32),
    /// A signal ended it.
    Signal(Signal),
}

/// Something a running program did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProgramEvent {
    /// Output bytes, in order per stream.
    Output(Stream, Vec<u8>),
    /// Its memory went over the limit (the runtime does not kill it itself).
    MemoryExceeded {
        /// Resident memory observed, in bytes.
        rss_bytes: u64,
    },
    /// The kernel enforced one of its limits (reported just before
    /// [`ProgramEvent::Exited`]).
    KernelLimit(KernelLimit),
    /// It ended. Always the last event, after all output.
    Exited(ExitInfo),
}

/// A limit the kernel enforced on a program's cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelLimit {
    /// The OOM killer killed processes of it at its memory limit.
    OomKilled {
        /// Processes killed.
        kills: u64,
        /// The limit, bytes.
        limit_bytes: Option<u64>,
        /// Its highest memory use, bytes, where the kernel reports it.
        peak_bytes: Option<u64>,
        /// "cgroup v1" or "cgroup v2".
        cgroup: String,
    },
    /// Forks were refused at its process limit.
    ProcessLimit {
        /// The limit.
        limit: u64,
        /// Forks refused.
        refused: u64,
    },
}

/// Resource use of a program, summed over its processes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Metrics {
    /// User CPU time.
    pub cpu_user: Duration,
    /// System CPU time.
    pub cpu_system: Duration,
    /// Resident memory now, in bytes.
    pub rss_bytes: u64,
    /// Highest resident memory seen, in bytes.
    pub peak_rss_bytes: u64,
    /// Page cache charged to it, bytes (cgroups only).
    pub cache_bytes: u64,
    /// All memory charged to it, bytes (cgroups only).
    pub usage_bytes: u64,
    /// Number of processes.
    pub process_count: u32,
    /// Which figures were really measured (names in
    /// [`measured`]); the others are zero.
    pub measured: &'static [&'static str],
    /// Whether these figures were sampled while the program ran (false: the
    /// last sample before it ended).
    pub live: bool,
}

/// Names of the figures of [`Metrics`], for [`Metrics::measured`].
pub mod measured {
    /// Sampled from `/proc` over the process tree: CPU, resident memory and
    /// the highest resident memory among the samples.
    pub const PROCFS: &[&str] = &["cpu_user", "cpu_system", "memory_rss", "memory_peak"];
    /// From the kernel's cgroup accounting, peak included.
    pub const CGROUP: &[&str] = &[
        "cpu_user",
        "cpu_system",
        "memory_rss",
        "memory_cache",
        "memory_usage",
        "memory_peak",
    ];
    /// From a cgroup whose kernel keeps no peak (cgroup v2 before 5.19).
    pub const CGROUP_NO_PEAK: &[&str] = &[
        "cpu_user",
        "cpu_system",
        "memory_rss",
        "memory_cache",
        "memory_usage",
    ];
}

/// How memory limits are applied on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemoryEnforcement {
    /// By the kernel, in a cgroup per execution (the detail says which).
    Enforced(String),
    /// By sampling resident memory and killing over the limit (the detail
    /// says why no cgroup is used).
    Sampled(String),
}

/// Controls a running program.
pub trait ProgramControl: Send + Sync + 'static {
    /// Sends `sig` to every process of the program. Not an error once it ended.
    fn signal(&self, sig: Signal) -> Result<(), RuntimeError>;
    /// Current (or last known) resource use.
    fn metrics(&self) -> Metrics;
    /// How commands start beside the program (`nomad alloc exec`, script
    /// checks), or `None` when this runtime cannot run any.
    fn commands(&self) -> Option<CommandContext> {
        None
    }
}

/// A started program.
pub struct Program {
    /// Its events; [`ProgramEvent::Exited`] comes last.
    pub events: mpsc::Receiver<ProgramEvent>,
    /// Its control handle.
    pub control: Arc<dyn ProgramControl>,
    /// Started warm: forked from a zygote or handed to a pooled worker
    /// (what the `start` label of its metrics says).
    pub warm: bool,
}

/// Which runtime serves a language on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LanguageRuntime {
    /// The language.
    pub language: Language,
    /// Program that runs it, e.g. "python3"; empty when unavailable.
    pub runtime: String,
    /// Version it reported; empty when unavailable.
    pub version: String,
    /// Why it is unavailable, or `None` when available.
    pub unavailable_reason: Option<String>,
    /// How its programs start.
    pub start_mode: StartMode,
    /// What stands behind `start_mode`: for [`StartMode::Zygote`] the
    /// preloaded modules (comma-separated); for [`StartMode::Pool`] the pool
    /// size and how many workers are booted and waiting (after what
    /// transpiles typescript, when the daemon does); empty otherwise.
    pub start_detail: String,
}

/// How a language's programs start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartMode {
    /// A fresh interpreter process per execution.
    Cold,
    /// A fork of a long-lived interpreter that has already started and
    /// imported its preload set.
    Zygote,
    /// A pre-started interpreter from a pool, used once.
    Pool,
}

/// Errors of a runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// No runtime for the language on this host.
    #[error("no runtime for {language} on this host: {reason}")]
    Unavailable {
        /// The language asked for.
        language: Language,
        /// Why.
        reason: String,
    },
    /// Starting the program failed.
    #[error("could not start {what}: {source}")]
    Spawn {
        /// What was being started.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Signalling failed for a reason other than the program having ended.
    #[error("could not send {signal} to the program: {reason}")]
    Signal {
        /// The signal.
        signal: &'static str,
        /// Why.
        reason: String,
    },
}

/// Starts programs.
pub trait Runtime: Send + Sync + 'static {
    /// The languages this runtime was asked to serve, with their availability.
    fn languages(&self) -> Vec<LanguageRuntime>;
    /// Whether intrinsic switches are enforced (true) or only passed on.
    fn enforces_intrinsics(&self) -> bool;
    /// How denying `intrinsic` (canonical) is enforced on this host.
    fn intrinsic_enforcement(&self, intrinsic: &str) -> sandbox::Enforcement {
        let _ = intrinsic;
        sandbox::Enforcement {
            enforced: self.enforces_intrinsics(),
            detail: "this runtime runs no real programs".into(),
        }
    }
    /// Checks an execution's grants (canonical names) against what this
    /// host can deny: warnings for its status, or why it is refused.
    fn check_intrinsics(&self, granted: &[String]) -> Result<Vec<String>, String> {
        let _ = granted;
        Ok(Vec::new())
    }
    /// Checks a requested working directory ("" means the scratch
    /// directory); the error says what is wrong with it.
    fn check_working_dir(&self, dir: &str) -> Result<(), String> {
        let _ = dir;
        Ok(())
    }
    /// Checks that a program can run as `user` ("" for the default) in
    /// `working_dir` ("" for its scratch directory).
    fn check_run_as(&self, user: &str, working_dir: &str) -> Result<(), run_as::UserRefusal> {
        let _ = (user, working_dir);
        Ok(())
    }
    /// How memory limits are applied.
    fn memory_enforcement(&self) -> MemoryEnforcement {
        MemoryEnforcement::Sampled("this runtime has no cgroups".into())
    }
    /// Starts a program.
    fn spawn(&self, spec: ProgramSpec) -> Result<Program, RuntimeError>;
    /// Warm and cold starts so far (a runtime without warm starts reports
    /// nothing).
    fn start_stats(&self) -> StartStats {
        StartStats::default()
    }
}
