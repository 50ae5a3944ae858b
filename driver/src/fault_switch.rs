//! Deliberately wrong behaviours, for proving that the simulation's
//! invariants catch a broken driver (`sim/tests/broken_drivers.rs`).
//! Compiled only with the `fault-switch` feature, which only the
//! simulation's test build enables; without it [`crate::broken!`] is
//! `false` and none of this exists. The switch is per thread: a turmoil
//! simulation runs every host on the thread that runs it, so one test's
//! breakage never reaches another test's simulation.

use std::cell::Cell;

/// One wrong behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Breakage {
    /// `WaitTask` answers every task "execution lost".
    ReportsEverythingLost,
    /// Marks every task lost as soon as the daemon cannot be reached.
    GivesUpDuringPartitions,
    /// `StopTask` sends SIGINT whatever the job's `kill_signal`.
    IgnoresKillSignal,
    /// Reports 4 KiB more output lost than the daemon dropped (and skips
    /// those bytes, so the log files agree with the claim).
    OverClaimsDroppedOutput,
    /// A second `WaitTask` for a task that already had its answer says
    /// "execution lost".
    AnswersWaitTaskTwice,
    /// A `StopTask` for a task not recovered yet is dropped.
    ForgetsStopBeforeRecovery,
    /// A task the daemon ended at its `elide_opts.timeout` is reported as a
    /// clean exit 0.
    ReportsTimeoutAsCleanExit,
    /// `oom_killed` is never set.
    NeverSetsOomKilled,
    /// A write to a log FIFO that would wait for its reader is skipped,
    /// and the skipped output is not reported lost.
    DropsOutputWhileStalled,
    /// `TaskStats` reports the figures of another task the driver runs.
    ReportsAnotherTasksStats,
    /// `TaskStats` goes on sampling after the task's exit.
    KeepsStatsStreamOpen,
    /// `SignalTask` sends the signal again when the daemon's answer is
    /// slow (as if it were lost), without cancelling the first request.
    RetriesSlowSignal,
}

impl Breakage {
    /// Every breakage.
    pub const ALL: [Breakage; 12] = [
        Breakage::ReportsEverythingLost,
        Breakage::GivesUpDuringPartitions,
        Breakage::IgnoresKillSignal,
        Breakage::OverClaimsDroppedOutput,
        Breakage::AnswersWaitTaskTwice,
        Breakage::ForgetsStopBeforeRecovery,
        Breakage::ReportsTimeoutAsCleanExit,
        Breakage::NeverSetsOomKilled,
        Breakage::DropsOutputWhileStalled,
        Breakage::ReportsAnotherTasksStats,
        Breakage::KeepsStatsStreamOpen,
        Breakage::RetriesSlowSignal,
    ];
}

/// Bytes [`Breakage::OverClaimsDroppedOutput`] claims beyond the truth.
pub const OVER_CLAIM_BYTES: u64 = 4096;

thread_local! {
    static ACTIVE: Cell<Option<Breakage>> = const { Cell::new(None) };
}

/// Breaks the driver running on this thread in one way (`None`: mends it).
pub fn set(breakage: Option<Breakage>) {
    ACTIVE.with(|a| a.set(breakage));
}

/// Whether `breakage` is switched on for this thread.
pub fn is(breakage: Breakage) -> bool {
    ACTIVE.with(|a| a.get() == Some(breakage))
}
