//! Ground truth: what the simulated programs really did, recorded below
//! the daemon (between it and its runtime), where no bug in the daemon or
//! the driver can distort it. The invariants compare what Nomad was told
//! with this.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use elide_daemon::{
    ExitInfo, KernelLimit, LanguageRuntime, Metrics, Program, ProgramControl, ProgramEvent,
    ProgramSpec, Runtime, RuntimeError, ScriptedRuntime, Stream,
};
use nix::sys::signal::Signal;
use tokio::sync::mpsc;

/// One run of one program.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProgramRun {
    /// The daemon host it ran on.
    pub daemon: String,
    /// That host's boot number when it started.
    pub boot: u64,
    /// Simulated time it started.
    pub started_at: Duration,
    /// Bytes it wrote to stdout.
    pub stdout: Vec<u8>,
    /// Bytes it wrote to stderr.
    pub stderr: Vec<u8>,
    /// How it ended; `None` while running or if it died with its daemon.
    pub exit: Option<ExitInfo>,
    /// Simulated time it ended.
    pub ended_at: Option<Duration>,
    /// Every signal the daemon sent it: (simulated time, signal number).
    pub signals: Vec<(Duration, i32)>,
    /// The memory limit the daemon gave it (`ProgramSpec::memory_limit_bytes`:
    /// what the real runtime makes its cgroup's limit).
    pub memory_limit: Option<u64>,
    /// Whether the kernel's OOM killer took it at that limit (the scripted
    /// runtime's `KernelLimit::OomKilled`, reported just before its exit).
    pub oom_killed: bool,
    /// Its resident memory each time the daemon measured it: (simulated
    /// time, bytes). The scripted program sets it with `memory SIZE`; it
    /// is 0 before that and after the program's end.
    pub memory: Vec<(Duration, u64)>,
    /// Bytes per stream its daemon keeps (`output_retention_bytes_per_stream`):
    /// the daemon can only have discarded what lies further back than that
    /// from the end of what the program wrote.
    pub retention: u64,
}

/// Every program run of a simulation, by execution id (a list: a second
/// run of the same execution is itself a violation).
#[derive(Debug, Clone, Default)]
pub struct GroundTruth {
    runs: Arc<Mutex<BTreeMap<String, Vec<ProgramRun>>>>,
}

impl GroundTruth {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Vec<ProgramRun>>> {
        self.runs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// All runs, by execution id.
    pub fn runs(&self) -> BTreeMap<String, Vec<ProgramRun>> {
        self.lock().clone()
    }

    /// Runs of one execution.
    pub fn runs_of(&self, execution_id: &str) -> Vec<ProgramRun> {
        self.lock().get(execution_id).cloned().unwrap_or_default()
    }

    /// Programs still running on `daemon` at boot `boot` (those of earlier
    /// boots died with the host).
    pub fn live_on(&self, daemon: &str, boot: u64) -> Vec<String> {
        self.lock()
            .iter()
            .filter(|(_, runs)| {
                runs.iter()
                    .any(|r| r.daemon == daemon && r.boot == boot && r.exit.is_none())
            })
            .map(|(id, _)| id.clone())
            .collect()
    }

    fn update(&self, execution_id: &str, index: usize, f: impl FnOnce(&mut ProgramRun)) {
        if let Some(run) = self
            .lock()
            .get_mut(execution_id)
            .and_then(|runs| runs.get_mut(index))
        {
            f(run);
        }
    }
}

/// The scripted runtime, with every program's output and exit recorded in
/// a [`GroundTruth`].
pub struct RecordingRuntime {
    inner: ScriptedRuntime,
    truth: GroundTruth,
    daemon: String,
    boot: u64,
    retention: u64,
}

impl RecordingRuntime {
    /// Runs `inner`, recording into `truth` as programs of `daemon` in its
    /// boot `boot`,
    /// a daemon keeping `retention` bytes of output per stream.
    pub fn new(
        inner: ScriptedRuntime,
        truth: GroundTruth,
        daemon: &str,
        boot: u64,
        retention: u64,
    ) -> Self {
        RecordingRuntime {
            inner,
            truth,
            daemon: daemon.to_owned(),
            boot,
            retention,
        }
    }
}

/// A program's control with every signal recorded as it is sent.
struct RecordingControl {
    inner: std::sync::Arc<dyn ProgramControl>,
    truth: GroundTruth,
    execution_id: String,
    index: usize,
}

impl ProgramControl for RecordingControl {
    fn signal(&self, sig: Signal) -> Result<(), RuntimeError> {
        let now = turmoil::sim_elapsed().unwrap_or_default();
        self.truth.update(&self.execution_id, self.index, |r| {
            // Only signals that can still reach it: one sent after its end
            // is not a signal the program received.
            if r.exit.is_none() {
                r.signals.push((now, sig as i32));
            }
        });
        self.inner.signal(sig)
    }

    fn metrics(&self) -> Metrics {
        let metrics = self.inner.metrics();
        let now = turmoil::sim_elapsed().unwrap_or_default();
        self.truth.update(&self.execution_id, self.index, |r| {
            r.memory.push((now, metrics.rss_bytes));
        });
        metrics
    }
}

impl Runtime for RecordingRuntime {
    fn languages(&self) -> Vec<LanguageRuntime> {
        self.inner.languages()
    }

    fn enforces_intrinsics(&self) -> bool {
        self.inner.enforces_intrinsics()
    }

    fn memory_enforcement(&self) -> elide_daemon::MemoryEnforcement {
        self.inner.memory_enforcement()
    }

    fn spawn(&self, spec: ProgramSpec) -> Result<Program, RuntimeError> {
        let execution_id = spec.execution_id.clone();
        let spec_id = execution_id.clone();
        let memory_limit = spec.memory_limit_bytes;
        let Program {
            mut events,
            control,
            warm,
        } = self.inner.spawn(spec)?;
        let index = {
            let mut runs = self.truth.lock();
            let runs = runs.entry(execution_id.clone()).or_default();
            runs.push(ProgramRun {
                daemon: self.daemon.clone(),
                boot: self.boot,
                started_at: turmoil::sim_elapsed().unwrap_or_default(),
                retention: self.retention,
                memory_limit,
                ..ProgramRun::default()
            });
            runs.len() - 1
        };
        // A capacity of one: the program waits for the daemon to take each
        // event, as it would on a pipe, so backpressure still reaches it.
        let (sender, receiver) = mpsc::channel(1);
        let truth = self.truth.clone();
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                match &event {
                    ProgramEvent::Output(stream, bytes) => {
                        truth.update(&execution_id, index, |r| match stream {
                            Stream::Stdout => r.stdout.extend_from_slice(bytes),
                            Stream::Stderr => r.stderr.extend_from_slice(bytes),
                        })
                    }
                    ProgramEvent::Exited(exit) => truth.update(&execution_id, index, |r| {
                        r.exit = Some(*exit);
                        r.ended_at = Some(turmoil::sim_elapsed().unwrap_or_default());
                    }),
                    // Killed at its memory limit, by the kernel or by the
                    // daemon's sampler (whose SIGKILL follows).
                    ProgramEvent::KernelLimit(KernelLimit::OomKilled { .. })
                    | ProgramEvent::MemoryExceeded { .. } => {
                        truth.update(&execution_id, index, |r| r.oom_killed = true)
                    }
                    ProgramEvent::KernelLimit(_) => {}
                }
                if sender.send(event).await.is_err() {
                    break;
                }
            }
        });
        Ok(Program {
            events: receiver,
            control: std::sync::Arc::new(RecordingControl {
                inner: control,
                truth: self.truth.clone(),
                execution_id: spec_id,
                index,
            }),
            warm,
        })
    }
}
