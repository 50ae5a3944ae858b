//! Runs one execution from queue to terminal state.
//!
//! It waits for a run slot, starts the program through the
//! [`Runtime`](crate::runtime::Runtime), copies its output into the
//! execution's [`OutputLog`], and applies the three ways an execution can be
//! ended from outside: a stop request (cancel, session deletion, shutdown),
//! its timeout, and its memory limit. Every stop escalates to SIGKILL after
//! its grace period, so nothing it started outlives it. Time comes only from
//! `tokio::time`, so the same code runs on a simulated clock.

use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::sync::{mpsc, Semaphore};
use tokio::time::{sleep_until, Instant};

use crate::output::OutputLog;
use crate::prometheus::{ExecutionMetrics, Outcome};
use crate::runtime::{ExitInfo, KernelLimit, ProgramControl, ProgramEvent, ProgramSpec, Runtime};

/// What an execution run needs from the daemon and tells it: the narrow
/// interface the registry implements, so the run does not know the
/// registry.
pub trait ExecutionReport: Send + Sync + 'static {
    /// The runtime that starts programs.
    fn runtime(&self) -> &Arc<dyn Runtime>;
    /// Run slots shared by all executions (waits while all are taken).
    fn run_slots(&self) -> Arc<Semaphore>;
    /// Time between SIGTERM and SIGKILL when an execution times out.
    fn timeout_grace(&self) -> Duration;
    /// Where runs record what only they see (outcomes, timings, output).
    fn execution_metrics(&self) -> &ExecutionMetrics;
    /// The execution left the queue (started or cancelled while queued).
    fn dequeued(&self);
    /// The program started.
    fn mark_running(&self, session_id: &str, execution_id: &str, control: Arc<dyn ProgramControl>);
    /// The execution ended.
    fn finish(&self, session_id: &str, execution_id: &str, ending: Ending);
}

/// How an execution ended, as its run saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The program ended by itself.
    Exited(ExitInfo),
    /// Stopped by a cancel; with how the program finally ended, if it ran.
    Cancelled(String, Option<ExitInfo>),
    /// Stopped after its timeout.
    TimedOut(Duration, ExitInfo),
    /// Killed over its memory limit by the daemon's sampler.
    MemoryExceeded(String, ExitInfo),
    /// Killed by the kernel's OOM killer at its cgroup memory limit.
    OomKilled(String, ExitInfo),
    /// Ended by itself, after the kernel enforced a limit on it (refused
    /// forks at the process limit, an OOM kill of one of its processes).
    ExitedAtLimit(String, ExitInfo),
    /// Could not start.
    SpawnFailed(String),
    /// The runtime stopped reporting without an exit.
    Lost(String),
}

impl Ending {
    /// The `outcome` label of its metrics.
    fn outcome(&self) -> Outcome {
        match self {
            Ending::Exited(info) | Ending::ExitedAtLimit(_, info) => match info {
                ExitInfo::Code(_) => Outcome::Exit,
                ExitInfo::Signal(_) => Outcome::Signal,
            },
            Ending::Cancelled(..) => Outcome::Cancelled,
            Ending::TimedOut(..) => Outcome::Timeout,
            Ending::MemoryExceeded(..) | Ending::OomKilled(..) => Outcome::Oom,
            Ending::SpawnFailed(_) => Outcome::Failed,
            Ending::Lost(_) => Outcome::Lost,
        }
    }
}

/// A request to stop an execution: `signal` now, SIGKILL after `grace`.
#[derive(Debug, Clone)]
pub struct StopRequest {
    /// First signal.
    pub signal: Signal,
    /// Time allowed before SIGKILL.
    pub grace: Duration,
    /// Why, as shown in the final status.
    pub reason: String,
}

/// Why an execution is being ended from outside.
enum Cause {
    Stop(String),
    Timeout(Duration),
    Memory(String),
}

/// Runs one execution until it reaches a terminal state.
pub async fn run_execution(
    registry: Arc<dyn ExecutionReport>,
    session_id: String,
    spec: ProgramSpec,
    timeout: Option<Duration>,
    backpressure: bool,
    output: Arc<OutputLog>,
    mut stops: mpsc::UnboundedReceiver<StopRequest>,
) {
    let execution_id = spec.execution_id.clone();
    let language = spec.language;
    let metrics = registry.execution_metrics().clone();
    // Every ending goes through here: counted, then reported. `ran` is how
    // the program started and how long it ran, if it started.
    let end = |ending: Ending, ran: Option<(bool, Duration)>| {
        metrics.finished(language, ending.outcome(), ran);
        registry.finish(&session_id, &execution_id, ending);
        // Normally closed by `finish`; here too in case the session was deleted.
        output.close();
    };

    // 1. A run slot, unless stopped first.
    let slots = registry.run_slots();
    let permit = tokio::select! {
       biased;
        stop = stops.recv() => {
            registry.dequeued();
            let why = stop.map_or_else(|| "cancelled while queued".to_string(), |s| s.reason);
            end(Ending::Cancelled(why, None), None);
            return;
        }
        permit = slots.acquire_owned() => permit,
    };
    registry.dequeued();
    let Ok(_permit) = permit else {
        end(Ending::Lost("run slots are closed".into()), None);
        return;
    };

    // 2. Start.
    let limit_mb = spec.memory_limit_bytes.unwrap_or(0) / (1024 * 1024);
    let slot_taken = Instant::now();
    let mut program = match registry.runtime().spawn(spec) {
        Ok(p) => p,
        Err(e) => {
            end(Ending::SpawnFailed(e.to_string()), None);
            return;
        }
    };
    let started = Instant::now();
    metrics.started(language, program.warm, started - slot_taken);
    let control = program.control.clone();
    registry.mark_running(&session_id, &execution_id, control.clone());

    // 3. Run until the program exits, acting on stops, timeout and memory.
    let timeout_at = timeout.map(|t| Instant::now() + t);
    let mut cause: Option<Cause> = None;
    let mut kill_at: Option<Instant> = None;
    let mut stops_open = true;
    // What the kernel enforced: an OOM kill, refused forks.
    let mut oom: Option<String> = None;
    let mut limit_note: Option<String> = None;
    let mut progress = output.subscribe_progress();
    let exit = loop {
        // Seen before checking, so progress made after the check wakes us.
        progress.borrow_and_update();
        // Backpressure: leave the program's output unread (so it blocks on
        // write) while followers lag; never once it is being stopped.
        let paused = backpressure && cause.is_none() && output.needs_pause();
        tokio::select! {
            biased;
            event = program.events.recv(), if !paused => match event {
                Some(ProgramEvent::Output(stream, data)) => {
                    let dropped = output.append(stream, &data);
                    metrics.output(stream, data.len() as u64, dropped);
                }
                Some(ProgramEvent::Exited(info)) => break Some(info),
                Some(ProgramEvent::MemoryExceeded { rss_bytes }) => {
                    if cause.is_none() {
                        cause = Some(Cause::Memory(format!(
                            "memory limit exceeded: {} MiB resident, limit {limit_mb} MiB",
                            rss_bytes / (1024 * 1024)
                        )));
                    }
                    send(&*control, Signal::SIGKILL);
                }
                Some(ProgramEvent::KernelLimit(limit)) => match limit {
                    KernelLimit::OomKilled { kills, limit_bytes, peak_bytes, cgroup } => {
                        let mib = |b: u64| b / (1024 * 1024);
                        let peak = peak_bytes.map(|p| format!(", peak {} MiB", mib(p))).unwrap_or_default();
                        oom = Some(format!(
                            "killed by the kernel's OOM killer at the memory limit: limit {} MiB{peak} ({cgroup}, {kills} process(es) killed)",
                            limit_bytes.map_or(limit_mb, mib)
                        ));
                    }
                    KernelLimit::ProcessLimit { limit, refused } => {
                        limit_note = Some(format!(
                            "reached the process limit of {limit} ({refused} fork(s) refused)"
                        ));
                    }
                },
                None => break None,
            },
            stop = stops.recv(), if stops_open => match stop {
                Some(stop) => {
                    if cause.is_none() {
                        cause = Some(Cause::Stop(stop.reason.clone()));
                    }
                    send(&*control, stop.signal);
                    let at = Instant::now() + stop.grace;
                    kill_at = Some(kill_at.map_or(at, |k| k.min(at)));
                }
                None => stops_open = false,
            },
            _ = sleep_until(timeout_at.unwrap_or_else(Instant::now)), if cause.is_none() && timeout_at.is_some() => {
                let after = timeout.unwrap_or_default();
                cause = Some(Cause::Timeout(after));
                send(&*control, Signal::SIGTERM);
                kill_at = Some(Instant::now() + registry.timeout_grace());
            }
            _ = sleep_until(kill_at.unwrap_or_else(Instant::now)), if kill_at.is_some() => {
                send(&*control, Signal::SIGKILL);
                kill_at = None;
            }
            _ = progress.changed(), if paused => {}
        }
    };
    let ending = match (exit, cause) {
        (None, _) => Ending::Lost("the runtime stopped reporting on the program".into()),
        // The kernel's kill is the cause only when it took the program
        // itself; an OOM-killed child is a note on an ordinary exit.
        (Some(info @ ExitInfo::Signal(Signal::SIGKILL)), None) if oom.is_some() => {
            Ending::OomKilled(oom.unwrap_or_default(), info)
        }
        (Some(info), None) => match oom.or(limit_note) {
            Some(note) => Ending::ExitedAtLimit(note, info),
            None => Ending::Exited(info),
        },
        (Some(info), Some(Cause::Stop(why))) => Ending::Cancelled(why, Some(info)),
        (Some(info), Some(Cause::Timeout(after))) => Ending::TimedOut(after, info),
        (Some(info), Some(Cause::Memory(msg))) => Ending::MemoryExceeded(msg, info),
    };
    end(ending, Some((program.warm, started.elapsed())));
}

fn send(control: &dyn crate::runtime::ProgramControl, sig: Signal) {
    if let Err(e) = control.signal(sig) {
        tracing::warn!(error = %e, "signalling the program failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_ending_has_the_outcome_label_its_metrics_show() {
        let killed = ExitInfo::Signal(Signal::SIGKILL);
        let table = [
            (Ending::Exited(ExitInfo::Code(0)), "exit"),
            (Ending::Exited(ExitInfo::Code(3)), "exit"),
            (Ending::Exited(killed), "signal"),
            (
                Ending::ExitedAtLimit("forks refused".into(), ExitInfo::Code(1)),
                "exit",
            ),
            (
                Ending::Cancelled("cancelled while queued".into(), None),
                "cancelled",
            ),
            (
                Ending::Cancelled("cancelled".into(), Some(killed)),
                "cancelled",
            ),
            (Ending::TimedOut(Duration::from_secs(1), killed), "timeout"),
            (Ending::MemoryExceeded("over".into(), killed), "oom"),
            (Ending::OomKilled("kernel".into(), killed), "oom"),
            (Ending::SpawnFailed("no python".into()), "failed"),
            (Ending::Lost("gone".into()), "lost"),
        ];
        for (ending, label) in table {
            assert_eq!(ending.outcome().label(), label, "{ending:?}");
        }
    }
}
