//! The daemon as a child subreaper, and the reaping that comes with it.
//!
//! With warm python on, the daemon sets `PR_SET_CHILD_SUBREAPER`: when the
//! zygote dies, the children it forked are re-parented to the daemon, which
//! then waits for them itself, so no exit status is lost (see
//! `python_zygote.rs`). The price: every orphan below the daemon comes to it
//! too (a cold snippet's leftover processes, killed with their group, or
//! processes that escaped it). Those must be reaped or they stay zombies.
//!
//! Only pids nobody else waits for may be reaped here: tokio waits for the
//! interpreters it spawned, the zygote module for its zygote and adopted
//! executions. Those pids are [`register`]ed, and a spawn holds [`hold`]
//! from before the fork until the pid is registered, so the scan can never
//! see (and steal) a child whose owner has not registered it yet.

use std::collections::BTreeSet;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;

/// How often orphans are looked for besides on SIGCHLD.
const SCAN_INTERVAL: Duration = Duration::from_secs(1);

fn owned() -> &'static Mutex<BTreeSet<i32>> {
    static OWNED: OnceLock<Mutex<BTreeSet<i32>>> = OnceLock::new();
    OWNED.get_or_init(Mutex::default)
}

/// Pids with an owner that waits for them; reaping leaves them alone.
pub struct OwnedPids<'a>(MutexGuard<'a, BTreeSet<i32>>);

impl OwnedPids<'_> {
    /// `pid` has an owner that waits for it.
    pub fn register(&mut self, pid: i32) {
        self.0.insert(pid);
    }
}

/// Holds off the orphan scan while a child is spawned and registered.
pub fn hold() -> OwnedPids<'static> {
    OwnedPids(owned().lock().unwrap_or_else(|p| p.into_inner()))
}

/// `pid` was waited for by its owner.
pub fn forget(pid: i32) {
    hold().0.remove(&pid);
}

/// Makes the daemon a child subreaper and starts reaping orphans (once per
/// process; must be called inside a tokio runtime).
pub fn become_subreaper() -> std::io::Result<()> {
    static STARTED: OnceLock<()> = OnceLock::new();
    if STARTED.get().is_some() {
        return Ok(());
    }
    nix::sys::prctl::set_child_subreaper(true).map_err(std::io::Error::from)?;
    let mut sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())?;
    let _ = STARTED.set(());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SCAN_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = sigchld.recv() => {}
                _ = tick.tick() => {}
            }
            reap_orphans();
        }
    });
    Ok(())
}

/// Reaps every zombie child of the daemon that no owner waits for.
fn reap_orphans() {
    let owned = hold();
    for pid in zombie_children() {
        if owned.0.contains(&pid) {
            continue;
        }
        match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
            Ok(status) => tracing::debug!(pid, ?status, "reaped an orphan"),
            Err(e) => tracing::debug!(pid, error = %e, "reaping an orphan failed"),
        }
    }
}

/// The daemon's children that have ended and wait to be reaped.
fn zombie_children() -> Vec<i32> {
    let Ok(me) = procfs::process::Process::myself() else {
        return Vec::new();
    };
    let Ok(tasks) = me.tasks() else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| t.children().ok())
        .flatten()
        .map(|pid| pid as i32)
        .filter(|&pid| {
            procfs::process::Process::new(pid)
                .and_then(|p| p.stat())
                .is_ok_and(|s| s.state == 'Z')
        })
        .collect()
}
