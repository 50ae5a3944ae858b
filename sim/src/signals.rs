//! The `SignalTask` invariants, for tasks with `signals` in their
//! scenario. What the driver promises for `SignalTask` is *at most once*:
//! it makes one `SignalExecution` call per `SignalTask` and never retries
//! it, so
//!
//! - `signal-once`: a `SignalTask` answered OK was delivered to its
//!   program between the call and the answer (unless the program ended
//!   before the answer, and the signal came too late to be one it
//!   received); one that failed was delivered at most once, possibly
//!   *after* its error, even after a later call (a request held on the
//!   link reaches the daemon once it is released, after the driver gave up
//!   on it: seed 5186 of `stats-signals-random`); and no call was
//!   delivered twice: the deliveries must match the calls one to one
//!   (`match_deliveries`);
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
use crate::scenario::signal_number;

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
            out.push(Violation::of_task(rule, &plan.task_id, detail))
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
            let matched = match_deliveries(&calls, &deliveries, ended);
            for call in matched.ok_undelivered {
                violation(
                    "signal-once",
                    format!(
                        "SignalTask {} sent at {:?} was answered OK at {:?}, but the program got no such signal in between (deliveries: {deliveries:?})",
                        call.signal, call.sent_at, call.answered_at
                    ),
                );
            }
            // Deliveries before any call are signal-target's.
            let surplus: Vec<Duration> = matched
                .surplus
                .into_iter()
                .filter(|at| first_call.is_some_and(|first| *at >= first))
                .collect();
            if !surplus.is_empty() {
                violation(
                    "signal-once",
                    format!(
                        "signal {signo} reached the program at {surplus:?} beyond what its SignalTask calls explain (one delivery each; calls: {:?})",
                        calls
                            .iter()
                            .map(|c| (c.sent_at, c.answered_at, c.error.as_ref().map(|e| e.0)))
                            .collect::<Vec<_>>()
                    ),
                );
            }
            for call in &calls {
                let sent_at = call.sent_at;
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

/// Deliveries of one signal to one program, matched to the `SignalTask`
/// calls of its task.
struct Matching<'c> {
    /// Calls answered OK with no delivery between call and answer (while
    /// the program still ran at the answer).
    ok_undelivered: Vec<&'c SignalCall>,
    /// Deliveries no call accounts for.
    surplus: Vec<Duration>,
    /// Failed calls a delivery was matched to.
    failed_delivered: usize,
}

/// Matches deliveries (times, sorted) to calls: each OK call takes the
/// first delivery between its call and its answer; then every other
/// delivery takes a distinct failed (or unanswered) call sent before it,
/// the earliest sent first. A failed call's delivery may come after its
/// error, even after a later call (a request held on the link reached the
/// daemon late), so it is not bound to its own window.
fn match_deliveries<'c>(
    calls: &[&'c SignalCall],
    deliveries: &[Duration],
    ended: Option<Duration>,
) -> Matching<'c> {
    let mut taken = vec![false; deliveries.len()];
    let mut ok_undelivered = Vec::new();
    for call in calls.iter().filter(|c| c.ok()) {
        let answered = call.answered_at.unwrap_or(Duration::MAX);
        let mine = (0..deliveries.len())
            .find(|&i| !taken[i] && (call.sent_at..=answered).contains(&deliveries[i]));
        match mine {
            Some(i) => taken[i] = true,
            None if ended.is_some_and(|end| end <= answered) => {}
            None => ok_undelivered.push(*call),
        }
    }
    let mut failed: Vec<Duration> = calls
        .iter()
        .filter(|c| !c.ok())
        .map(|c| c.sent_at)
        .collect();
    failed.sort();
    let mut used = vec![false; failed.len()];
    let mut surplus = Vec::new();
    let mut failed_delivered = 0;
    for (i, at) in deliveries.iter().enumerate() {
        if taken[i] {
            continue;
        }
        match (0..failed.len()).find(|&k| !used[k] && failed[k] <= *at) {
            Some(k) => {
                used[k] = true;
                failed_delivered += 1;
            }
            None => surplus.push(*at),
        }
    }
    Matching {
        ok_undelivered,
        surplus,
        failed_delivered,
    }
}

/// The `SignalTask` calls of a run, counted.
pub fn tally(e: &Evidence<'_>) -> SignalTally {
    let mut tally = SignalTally::default();
    for plan in &e.plan.tasks {
        let calls = e.seen.seen(&plan.task_id).signal_calls;
        let runs = e.truth.runs_of(&plan.execution_id);
        let ended = runs.first().and_then(|r| r.ended_at);
        tally.ok += calls.iter().filter(|c| c.ok()).count();
        tally.failed += calls.iter().filter(|c| !c.ok()).count();
        let signals: BTreeSet<&str> = calls.iter().map(|c| c.signal.as_str()).collect();
        for signal in signals {
            let signo = signal_number(signal);
            let calls: Vec<&SignalCall> = calls.iter().filter(|c| c.signal == signal).collect();
            let deliveries: Vec<Duration> = runs
                .iter()
                .flat_map(|r| r.signals.iter())
                .filter(|(_, s)| Some(*s) == signo)
                .map(|(at, _)| *at)
                .collect();
            tally.failed_delivered += match_deliveries(&calls, &deliveries, ended).failed_delivered;
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
