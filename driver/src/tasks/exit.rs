//! How a finished execution is reported to Nomad.
//!
//! Nomad counts a run as successful only when `exit_code == 0`,
//! `signal == 0` and `err` is empty; a non-empty `err` marks the run failed
//! and becomes the message of the "Terminated" event. So `err` is set for
//! every ending that is a failure *regardless of how the program exited*:
//! a timeout (the program may well exit 0 after the SIGTERM it got), a
//! daemon-side failure, a lost execution. A cancel (what `StopTask` does)
//! reports only how the program ended.
//!
//! The exit code is never made up. When the daemon has no exit code and no
//! signal for the program (it never started, the daemon lost it, the record
//! is gone), Nomad gets [`UNKNOWN_EXIT_CODE`] (-1) and an `err` that says
//! why, as Nomad's own drivers report an unknown ending since 1.10; never
//! a 0 that would read as "it exited cleanly".

use std::str::FromStr;
use std::time::SystemTime;

use elide_proto::elide::daemon::v1 as pb;
use nix::sys::signal::Signal;

/// The exit code Nomad gets when the real one is unknown (Nomad's own
/// drivers use -1 for the same since 1.10). It always comes with an `err`.
pub const UNKNOWN_EXIT_CODE: i32 = -1;

/// The exit of a task as Nomad's `ExitResult` + `WaitTaskResponse.err`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExitOutcome {
    /// Exit code: 0 when it ended by a signal, [`UNKNOWN_EXIT_CODE`] when
    /// neither a code nor a signal is known.
    pub exit_code: i32,
    /// Number of the terminating signal, 0 if none.
    pub signal: i32,
    /// Killed over its memory limit.
    pub oom_killed: bool,
    /// Why the run failed beyond its exit code; empty when it did not.
    pub err: String,
    /// When the driver saw it end.
    pub completed_at: Option<SystemTime>,
}

/// Whether a daemon state is terminal.
pub fn is_terminal(state: pb::ExecutionState) -> bool {
    use pb::ExecutionState as S;
    matches!(state, S::Exited | S::Failed | S::Cancelled | S::TimedOut)
}

/// Signal number of a daemon signal name ("SIGKILL"); 0 for none, and for
/// names this platform does not know (the name then appears in `err`).
pub fn signal_number(name: &str) -> i32 {
    if name.is_empty() {
        return 0;
    }
    Signal::from_str(name).map(|s| s as i32).unwrap_or(0)
}

/// The outcome of a terminal execution status, seen at `now`.
pub fn outcome_of(status: &pb::ExecutionStatus, now: SystemTime) -> ExitOutcome {
    use pb::ExecutionState as S;
    let signal = signal_number(&status.signal);
    let ended_by_program = status.exit_code.is_some() || !status.signal.is_empty();
    let exit_code = match status.exit_code {
        Some(code) => code,
        None if ended_by_program => 0,
        None => UNKNOWN_EXIT_CODE,
    };
    let unknown_signal = (!status.signal.is_empty() && signal == 0)
        .then(|| format!("ended by signal {}", status.signal));
    let mut outcome = ExitOutcome {
        exit_code,
        signal,
        completed_at: Some(now),
        ..ExitOutcome::default()
    };
    outcome.err = match status.state() {
        S::Exited if !ended_by_program => {
            "the daemon reported the execution exited but has no exit code or signal for it"
                .to_owned()
        }
        S::Exited => unknown_signal.unwrap_or_default(),
        S::Cancelled if ended_by_program => unknown_signal.unwrap_or_default(),
        // Cancelled with no exit: it was still queued.
        S::Cancelled if status.message.is_empty() => "cancelled before it started".to_owned(),
        S::Cancelled => format!("cancelled before it started: {}", status.message),
        // The test-only fault switch's driver that passes a timeout off as
        // a clean run.
        S::TimedOut if crate::broken!(ReportsTimeoutAsCleanExit) => {
            outcome.exit_code = 0;
            outcome.signal = 0;
            String::new()
        }
        S::TimedOut => non_empty(&status.message, "timed out"),
        S::Failed => {
            // The kernel's OOM kill at the cgroup limit, or the daemon's kill
            // over the limit where it can only sample: Nomad shows both as
            // "OOM Killed".
            outcome.oom_killed = (status.oom_killed
                || status.failure() == pb::FailureReason::MemoryLimitExceeded)
                && !crate::broken!(NeverSetsOomKilled);
            let reason = status.failure().as_str_name().to_ascii_lowercase();
            format!(
                "execution failed ({reason}): {}",
                non_empty(&status.message, "no detail from the daemon")
            )
        }
        S::Queued | S::Running | S::Unspecified => {
            format!(
                "execution is not finished ({})",
                status.state().as_str_name()
            )
        }
    };
    outcome
}

/// `outcome` of a `CANCELLED` execution that nobody in Nomad asked to stop
/// (no `StopTask` was recorded for it): the daemon shutting down, its
/// session deleted behind the driver's back, an operator's `elide-ctl
/// cancel`. The program may have taken the signal and exited 0, but the run
/// was cut short, so `err` says so: Nomad must not count an interrupted
/// task as complete. Every other outcome is returned unchanged.
pub fn unrequested_cancel(mut outcome: ExitOutcome, status: &pb::ExecutionStatus) -> ExitOutcome {
    if status.state() == pb::ExecutionState::Cancelled && outcome.err.is_empty() {
        outcome.err = format!(
            "stopped outside Nomad: {}",
            non_empty(&status.message, "the daemon cancelled it")
        );
    }
    outcome
}

/// The outcome of an execution the daemon no longer knows, seen at `now`.
pub fn lost(why: &str, now: SystemTime) -> ExitOutcome {
    ExitOutcome {
        exit_code: UNKNOWN_EXIT_CODE,
        err: format!("execution lost: {why}"),
        completed_at: Some(now),
        ..ExitOutcome::default()
    }
}

fn non_empty(text: &str, fallback: &str) -> String {
    if text.is_empty() {
        fallback.to_owned()
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(state: pb::ExecutionState, code: Option<i32>, signal: &str) -> pb::ExecutionStatus {
        let mut s = pb::ExecutionStatus {
            exit_code: code,
            signal: signal.into(),
            ..Default::default()
        };
        s.set_state(state);
        s
    }

    #[test]
    fn exited_reports_code_or_signal_number() {
        let o = outcome_of(
            &status(pb::ExecutionState::Exited, Some(3), ""),
            SystemTime::UNIX_EPOCH,
        );
        assert_eq!((o.exit_code, o.signal, o.err.as_str()), (3, 0, ""));
        let o = outcome_of(
            &status(pb::ExecutionState::Exited, None, "SIGKILL"),
            SystemTime::UNIX_EPOCH,
        );
        assert_eq!((o.exit_code, o.signal, o.err.as_str()), (0, 9, ""));
    }

    #[test]
    fn cancelled_reports_how_the_program_ended() {
        let o = outcome_of(
            &status(pb::ExecutionState::Cancelled, None, "SIGINT"),
            SystemTime::UNIX_EPOCH,
        );
        assert_eq!((o.signal, o.err.as_str()), (2, ""));
        let o = outcome_of(
            &status(pb::ExecutionState::Cancelled, Some(0), ""),
            SystemTime::UNIX_EPOCH,
        );
        assert_eq!(
            o,
            ExitOutcome {
                completed_at: o.completed_at,
                ..Default::default()
            }
        );
        let o = outcome_of(
            &status(pb::ExecutionState::Cancelled, None, ""),
            SystemTime::UNIX_EPOCH,
        );
        assert_eq!(
            (o.exit_code, o.signal, o.err.as_str()),
            (-1, 0, "cancelled before it started")
        );
    }

    #[test]
    fn an_unknown_exit_is_minus_one_with_a_reason() {
        let o = lost("session s no longer exists", SystemTime::UNIX_EPOCH);
        assert_eq!(
            (o.exit_code, o.signal, o.err.as_str()),
            (-1, 0, "execution lost: session s no longer exists")
        );
        let o = outcome_of(
            &status(pb::ExecutionState::Exited, None, ""),
            SystemTime::UNIX_EPOCH,
        );
        assert_eq!(o.exit_code, -1);
        assert!(o.err.contains("no exit code"), "{}", o.err);
        let mut s = status(pb::ExecutionState::Failed, None, "");
        s.set_failure(pb::FailureReason::SpawnFailed);
        s.message = "no such interpreter".into();
        let o = outcome_of(&s, SystemTime::UNIX_EPOCH);
        assert_eq!(
            (o.exit_code, o.err.as_str()),
            (-1, "execution failed (spawn_failed): no such interpreter")
        );
        let o = outcome_of(
            &status(pb::ExecutionState::Running, None, ""),
            SystemTime::UNIX_EPOCH,
        );
        assert_eq!(o.exit_code, -1);
        // A signal is a known ending: exit code 0 beside it, as before.
        let o = outcome_of(
            &status(pb::ExecutionState::Exited, None, "SIGTERM"),
            SystemTime::UNIX_EPOCH,
        );
        assert_eq!((o.exit_code, o.signal), (0, 15));
    }

    #[test]
    fn a_cancel_nomad_did_not_ask_for_fails_the_run() {
        let mut s = status(pb::ExecutionState::Cancelled, Some(0), "");
        s.message = "the daemon is shutting down".into();
        let o = unrequested_cancel(outcome_of(&s, SystemTime::UNIX_EPOCH), &s);
        assert_eq!(
            (o.exit_code, o.signal, o.err.as_str()),
            (0, 0, "stopped outside Nomad: the daemon is shutting down")
        );
        // Endings that already explain themselves, or are no cancel, stay.
        let s = status(pb::ExecutionState::Cancelled, None, "");
        let o = unrequested_cancel(outcome_of(&s, SystemTime::UNIX_EPOCH), &s);
        assert_eq!(o.err, "cancelled before it started");
        let s = status(pb::ExecutionState::Exited, Some(0), "");
        let o = unrequested_cancel(outcome_of(&s, SystemTime::UNIX_EPOCH), &s);
        assert_eq!(o.err, "");
    }

    #[test]
    fn timeout_and_failures_set_err() {
        let mut s = status(pb::ExecutionState::TimedOut, Some(0), "");
        s.message = "timed out after 2s".into();
        let o = outcome_of(&s, SystemTime::UNIX_EPOCH);
        assert_eq!((o.exit_code, o.err.as_str()), (0, "timed out after 2s"));
        let mut s = status(pb::ExecutionState::Failed, None, "SIGKILL");
        s.set_failure(pb::FailureReason::MemoryLimitExceeded);
        s.message = "memory limit exceeded".into();
        let o = outcome_of(&s, SystemTime::UNIX_EPOCH);
        assert!(o.oom_killed && o.signal == 9);
        assert!(o.err.contains("memory limit exceeded"), "{}", o.err);
    }
}
