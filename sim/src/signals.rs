//! The `SignalTask` invariants, for tasks with `signals` in their
//! scenario. What the driver promises for `SignalTask` is *at most once*:
//! it makes one `SignalExecution` call per `SignalTask` and never retries
//! it, so
//!
//! - `signal-once`: a `SignalTask` answered OK was delivered to its
//!   program exactly once, between the call and the answer (or the
//!   program ended before the answer, and the signal came too late to be
//!   one it received); one that failed was delivered at most once,
//!   possibly *after* its error (a request held on a slow link may still
//!   reach the daemon once the driver gave up on it), but never twice;
//! - `signal-target`: a program receives a signal of the ones scenarios
//!   send with `SignalTask` only after a `SignalTask` for its own task:
//!   never one meant for another task, never one nobody asked for;
//! - `signal-outcome`: a task with a `SignalTask` answered OK for a
//!   signal its program traps (`trap SIG DURATION CODE`), and a clean
//!   result, exited with that trap's code when that signal was the first
//!   its program got (only a SIGKILL can still end a trapped program
//!   otherwise);
//! - `signal-codes`: a failed `SignalTask` carries a code Nomad can act on:
//!   `NOT_FOUND` (a task the plugin does not know, e.g. not recovered yet
//!   after a plugin restart), `FAILED_PRECONDITION` (the task has ended,
//!   or its daemon cannot be reached), or a transport code
//!   (`UNAVAILABLE`, `UNKNOWN`, `CANCELLED`, `DEADLINE_EXCEEDED`: the
//!   plugin is gone); never `INVALID_ARGUMENT` or `OK`-less silence for a
//!   valid signal.
//!
//! The signals a scenario sends with `SignalTask` differ from its tasks'
//! stop signals (the scenario parser checks), so a stop's signal is never
//! mistaken for one of these.

use std::collections::BTreeSet;
use std::time::Duration;

use tonic::Code;

use crate::evidence::{Evidence, Violation};
use crate::observe::SignalCall;

/// Linux signal numbers of the names a job may give as `kill_signal` or
/// a `SignalTask` may carry (a table of our own, not the driver's or the
/// daemon's parser).
pub fn signal_number(name: &str) -> Option<i32> {
    let name = name.strip_prefix("SIG").unwrap_or(name);
    Some(match name {
        "HUP" => 1,
        "INT" => 2,
        "QUIT" => 3,
        "KILL" => 9,
        "USR1" => 10,
        "USR2" => 12,
        "TERM" => 15,
        _ => return None,
    })
}

/// The exit code a program gives on `signal` if it traps it.
fn trap_code(program: &str, signal: i32) -> Option<i32> {
    program.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        if words.next()? != "trap" {
            return None;
        }
        let trapped = signal_number(words.next()?)?;
        let _delay = words.next()?;
        let code = words.next().map_or(Some(0), |c| c.parse().ok())?;
        (trapped == signal).then_some(code)
    })
}

/// The `signal-*` violations of a run.
pub fn check(e: &Evidence<'_>) -> Vec<Violation> {
    let mut out = Vec::new();
    let sent: BTreeSet<i32> = e
        .plan
        .tasks
        .iter()
        .flat_map(|t| t.signals.iter())
        .filter_map(|(_, name)| signal_number(name))
        .collect();
    if sent.is_empty() {
        return out;
    }
    for plan in &e.plan.tasks {
        let seen = e.seen.seen(&plan.task_id);
        let runs = e.truth.runs_of(&plan.execution_id);
        let mut violation = |rule: &'static str, detail: String| {
            out.push(Violation {
                rule,
                task: Some(plan.task_id.clone()),
                detail,
            })
        };
        let ended = runs.first().and_then(|r| r.ended_at);
        for &signo in &sent {
            let calls: Vec<&SignalCall> = seen
                .signal_calls
                .iter()
                .filter(|c| signal_number(&c.signal) == Some(signo))
                .collect();
            let deliveries: Vec<Duration> = runs
                .iter()
                .flat_map(|r| r.signals.iter())
                .filter(|(_, s)| *s == signo)
                .map(|(at, _)| *at)
                .collect();
            let first_call = calls.first().map(|c| c.sent_at);
            for at in &deliveries {
                if first_call.is_none_or(|first| *at < first) {
                    violation(
                        "signal-target",
                        format!("its program got signal {signo} at {at:?} with no SignalTask of that signal for it before"),
                    );
                }
            }
            for (k, call) in calls.iter().enumerate() {
                let until = calls.get(k + 1).map_or(Duration::MAX, |next| next.sent_at);
                let mine: Vec<Duration> = deliveries
                    .iter()
                    .copied()
                    .filter(|at| (call.sent_at..until).contains(at))
                    .collect();
                let sent_at = call.sent_at;
                match call.answered_at {
                    Some(answered) if call.error.is_none() => {
                        let in_call = mine.iter().filter(|at| **at <= answered).count();
                        let too_late = ended.is_some_and(|end| end <= answered);
                        if mine.len() > 1 || in_call != mine.len() || (in_call == 0 && !too_late) {
                            violation(
                                "signal-once",
                                format!(
                                    "SignalTask {} sent at {sent_at:?} and answered OK at {answered:?}: delivered at {mine:?}",
                                    call.signal
                                ),
                            );
                        }
                    }
                    _ => {
                        if mine.len() > 1 {
                            violation(
                                "signal-once",
                                format!(
                                    "SignalTask {} sent at {sent_at:?} failed ({:?}) and was delivered {} times: at {mine:?}",
                                    call.signal,
                                    call.error,
                                    mine.len()
                                ),
                            );
                        }
                    }
                }
                if let Some((code, message)) = &call.error {
                    if !matches!(
                        code,
                        Code::NotFound
                            | Code::FailedPrecondition
                            | Code::Unavailable
                            | Code::Unknown
                            | Code::Cancelled
                            | Code::DeadlineExceeded
                    ) {
                        violation(
                            "signal-codes",
                            format!(
                                "SignalTask {} sent at {sent_at:?} failed with {code:?}: {message}",
                                call.signal
                            ),
                        );
                    }
                }
            }
        }

        // signal-outcome: the first OK signal the program traps decides a
        // clean exit.
        let trapped = seen.signal_calls.iter().filter(|c| c.ok()).find_map(|c| {
            let signo = signal_number(&c.signal)?;
            trap_code(&plan.program, signo).map(|code| (c, code))
        });
        let result = seen.results.iter().find(|r| r.persisted);
        if let (Some((call, code)), Some(result)) = (trapped, result) {
            let signalled_first = runs.first().is_some_and(|r| {
                r.signals.first().map(|(_, s)| Some(*s)) == Some(signal_number(&call.signal))
            });
            if result.err.is_empty()
                && signalled_first
                && (result.exit_code, result.signal) != (code, 0)
                && result.signal != 9
            {
                violation(
                    "signal-outcome",
                    format!(
                        "SignalTask {} was answered OK at {:?} and the program traps it with exit {code}, but Nomad was told exit_code={} signal={}",
                        call.signal, call.answered_at, result.exit_code, result.signal
                    ),
                );
            }
        }
    }
    out
}

/// What the `SignalTask` calls of a run amounted to, for the report.
#[derive(Debug, Clone, Default)]
pub struct SignalTally {
    /// Calls answered OK.
    pub ok: usize,
    /// Calls that failed (or were never answered).
    pub failed: usize,
    /// Failed calls whose signal still reached the program (after the
    /// error: a request held on the link).
    pub failed_delivered: usize,
}

/// The `SignalTask` calls of a run, counted.
pub fn tally(e: &Evidence<'_>) -> SignalTally {
    let mut tally = SignalTally::default();
    for plan in &e.plan.tasks {
        let calls = e.seen.seen(&plan.task_id).signal_calls;
        let runs = e.truth.runs_of(&plan.execution_id);
        for (k, call) in calls.iter().enumerate() {
            if call.ok() {
                tally.ok += 1;
                continue;
            }
            tally.failed += 1;
            let signo = signal_number(&call.signal);
            let until = calls[k + 1..]
                .iter()
                .find(|c| c.signal == call.signal)
                .map_or(Duration::MAX, |next| next.sent_at);
            let delivered = runs
                .iter()
                .flat_map(|r| r.signals.iter())
                .any(|(at, s)| Some(*s) == signo && (call.sent_at..until).contains(at));
            if delivered {
                tally.failed_delivered += 1;
            }
        }
    }
    tally
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trap_codes_are_read_from_the_program() {
        let program = "ignore HUP\ntrap USR1 1s 42\ntrap TERM 2s\nsleep 9s";
        assert_eq!(trap_code(program, 10), Some(42));
        assert_eq!(trap_code(program, 15), Some(0));
        assert_eq!(trap_code(program, 1), None);
        assert_eq!(trap_code(program, 12), None);
    }
}
