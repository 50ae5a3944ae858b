//! Signalling and measuring one running program: its process group, and,
//! when it has one, its cgroup.
//!
//! With a cgroup the figures are the kernel's own accounting (CPU time,
//! anonymous memory, page cache, usage and peak), which count every process
//! of the execution, including ones that left the process group. Without
//! one, they are sampled from `/proc` over the process tree, on demand and
//! every sample interval; a sample over the memory limit is then reported
//! as [`ProgramEvent::MemoryExceeded`] (the kernel enforces nothing).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::sync::mpsc;

use super::{measured, CommandContext, Metrics, ProgramControl, ProgramEvent, RuntimeError};
use crate::cgroup::ExecutionCgroup;

/// Samples resource use periodically and reports a memory overrun once
/// (programs without a cgroup only).
pub(super) async fn sample_loop(
    control: Arc<ProcessControl>,
    every: Duration,
    limit: Option<u64>,
    tx: mpsc::Sender<ProgramEvent>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let m = control.sample();
        if let Some(limit) = limit {
            if m.rss_bytes > limit {
                let _ = tx
                    .send(ProgramEvent::MemoryExceeded {
                        rss_bytes: m.rss_bytes,
                    })
                    .await;
                return;
            }
        }
    }
}

/// Signals and measures one process group (and its cgroup, if any).
#[derive(Debug)]
pub(super) struct ProcessControl {
    pgid: i32,
    cgroup: Option<Arc<ExecutionCgroup>>,
    /// Set once the leader was reaped and the group killed: the pgid may be
    /// reused from then on, so no more signals are sent.
    done: AtomicBool,
    last: Mutex<Metrics>,
    /// Commands beside the program; ended with it.
    commands: Option<CommandContext>,
}

impl ProcessControl {
    pub(super) fn new(pgid: i32, cgroup: Option<Arc<ExecutionCgroup>>) -> Self {
        ProcessControl {
            pgid,
            cgroup,
            done: AtomicBool::new(false),
            last: Mutex::default(),
            commands: None,
        }
    }

    /// Lets commands run beside the program this way.
    pub(super) fn with_commands(mut self, commands: CommandContext) -> Self {
        self.commands = Some(commands);
        self
    }

    /// The leader exited: kill whatever it left behind and freeze metrics
    /// (with a cgroup: its final CPU time and peak).
    pub(super) fn finish(&self) {
        // The group id stays reserved while any member lives, so this reaches
        // exactly the leftovers of this execution.
        let _ = killpg(Pid::from_raw(self.pgid), Signal::SIGKILL);
        if let Some(commands) = &self.commands {
            commands.end();
        }
        let last_cgroup = self.cgroup.as_ref().map(|c| {
            // Also the ones that left the group (setsid, double fork).
            c.kill_all();
            cgroup_metrics(c, None)
        });
        self.done.store(true, Ordering::SeqCst);
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(fresh) = last_cgroup {
            let peak = last.peak_rss_bytes.max(fresh.peak_rss_bytes);
            *last = Metrics {
                peak_rss_bytes: peak,
                ..fresh
            };
        }
        last.live = false;
        last.rss_bytes = 0;
        last.cache_bytes = 0;
        last.usage_bytes = 0;
        last.process_count = 0;
    }

    /// Takes a fresh sample (while running).
    pub(super) fn sample(&self) -> Metrics {
        if self.done.load(Ordering::SeqCst) {
            return *self.last.lock().unwrap_or_else(|p| p.into_inner());
        }
        let fresh = match &self.cgroup {
            Some(cgroup) => Some(cgroup_metrics(cgroup, Some(self.pgid))),
            None => sample_tree(self.pgid),
        };
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if self.done.load(Ordering::SeqCst) {
            return *last;
        }
        if let Some(fresh) = fresh {
            let peak = last.peak_rss_bytes.max(fresh.peak_rss_bytes);
            *last = Metrics {
                peak_rss_bytes: peak,
                ..fresh
            };
        }
        *last
    }
}

impl ProgramControl for ProcessControl {
    fn signal(&self, sig: Signal) -> Result<(), RuntimeError> {
        if self.done.load(Ordering::SeqCst) {
            return Ok(());
        }
        match killpg(Pid::from_raw(self.pgid), sig) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(e) => Err(RuntimeError::Signal {
                signal: sig.as_str(),
                reason: e.to_string(),
            }),
        }
    }

    fn metrics(&self) -> Metrics {
        self.sample()
    }

    fn commands(&self) -> Option<CommandContext> {
        self.commands.clone()
    }
}

/// The kernel's figures for a cgroup; what it lacks (CPU time without a
/// v1 cpuacct controller, the process count without pids) comes from the
/// process tree under `pgid`, if given.
fn cgroup_metrics(cgroup: &ExecutionCgroup, pgid: Option<i32>) -> Metrics {
    let usage = cgroup.usage();
    let tree = match (usage.cpu_user, usage.processes, pgid) {
        (Some(_), Some(_), _) | (_, _, None) => None,
        (_, _, Some(pgid)) => sample_tree(pgid),
    };
    let tree = tree.unwrap_or_default();
    Metrics {
        cpu_user: usage.cpu_user.unwrap_or(tree.cpu_user),
        cpu_system: usage.cpu_system.unwrap_or(tree.cpu_system),
        rss_bytes: usage.rss.unwrap_or(0),
        peak_rss_bytes: usage.peak.unwrap_or(0),
        cache_bytes: usage.cache.unwrap_or(0),
        usage_bytes: usage.usage.unwrap_or(0),
        process_count: usage
            .processes
            .map_or(tree.process_count, |p| u32::try_from(p).unwrap_or(u32::MAX)),
        live: true,
        measured: if usage.peak.is_some() {
            measured::CGROUP
        } else {
            measured::CGROUP_NO_PEAK
        },
    }
}

/// Sums CPU and memory over `root` and its descendants; `None` when `root`
/// is gone.
fn sample_tree(root: i32) -> Option<Metrics> {
    let ticks = procfs::ticks_per_second() as f64;
    let page = procfs::page_size();
    let mut pending = vec![root];
    let mut m = Metrics {
        live: true,
        measured: measured::PROCFS,
        ..Metrics::default()
    };
    let mut seen_root = false;
    let (mut user, mut system) = (0u64, 0u64);
    while let Some(pid) = pending.pop() {
        let Ok(proc_) = procfs::process::Process::new(pid) else {
            continue;
        };
        let Ok(stat) = proc_.stat() else { continue };
        seen_root |= pid == root;
        m.process_count += 1;
        user += stat.utime;
        system += stat.stime;
        m.rss_bytes += stat.rss * page;
        if let Ok(tasks) = proc_.tasks() {
            for task in tasks.flatten() {
                if let Ok(children) = task.children() {
                    pending.extend(children.into_iter().map(|c| c as i32));
                }
            }
        }
        if m.process_count > 4096 {
            break;
        }
    }
    if !seen_root {
        return None;
    }
    m.cpu_user = Duration::from_secs_f64(user as f64 / ticks);
    m.cpu_system = Duration::from_secs_f64(system as f64 / ticks);
    m.peak_rss_bytes = m.rss_bytes;
    Some(m)
}
