//! `CancelExecution` and the fallbacks of a stop the daemon refuses: one
//! ladder for `StopTask` and for a stop applied in the background (at
//! recovery, or while the daemon cannot be reached).

use std::time::Duration;

use elide_proto::elide::daemon::v1 as pb;

use crate::daemon_link::{CallError, DaemonLink};

/// How one `CancelExecution` call went, as the stop ladder sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CancelOutcome {
    /// The daemon accepted: the signal is on its way.
    Accepted,
    /// `InvalidArgument`: the grace or the signal is not acceptable.
    Refused,
    /// The execution is not on the daemon (any more).
    NotFound,
    /// Not yet: the daemon could not be reached, or failed for a reason
    /// that may pass (`INTERNAL`, `RESOURCE_EXHAUSTED`, `ABORTED`: a
    /// daemon whose store fails, an overloaded one). Nomad retries a failed
    /// stop five times over about four minutes and then waits for the exit
    /// with no limit, so the stop is also kept up in the background (found
    /// by the simulation: `failing-stops`).
    NotYet,
    /// Any other failure (one that retrying will not change).
    Failed,
}

impl CancelOutcome {
    pub(super) fn of(result: &Result<(), CallError>) -> Self {
        match result {
            Ok(()) => CancelOutcome::Accepted,
            Err(e) if e.code() == tonic::Code::InvalidArgument => CancelOutcome::Refused,
            Err(e) if e.is_not_found() => CancelOutcome::NotFound,
            Err(e) if e.is_transport() || may_pass(e.code()) => CancelOutcome::NotYet,
            Err(_) => CancelOutcome::Failed,
        }
    }
}

/// Whether a daemon's answer with `code` may be different on a later try
/// (its own failure, not a judgement of the request): a stop or a delete
/// failed this way is tried again; one refused for good
/// (`PERMISSION_DENIED`, `UNIMPLEMENTED`, ...) is not.
pub(super) fn may_pass(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Internal | tonic::Code::ResourceExhausted | tonic::Code::Aborted
    )
}

/// What `StopTask` does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StopStep {
    /// Wait for the exit (the stop was accepted).
    AwaitExit,
    /// Cancel again with the longest grace the daemon allows.
    RetryWithAllowedGrace,
    /// Cancel with SIGKILL and no grace: the daemon does not take the signal.
    Kill,
    /// The execution is gone: report the task lost.
    MarkLost,
    /// Fail `StopTask`; with `keep_stopping`, keep asking in the background.
    Fail {
        /// The daemon could not take it yet (unreachable, or failing for a
        /// reason that may pass), so the stop may still get through.
        keep_stopping: bool,
    },
}

/// The stop fallback ladder: the step after a cancel that went `outcome`,
/// when `refusals` earlier cancels of this stop were refused. A refused
/// stop is first retried with the daemon's longest grace (the operator's
/// `kill_timeout` may be above the daemon's `max_cancel_grace`), then as
/// SIGKILL (the signal name is unknown to the daemon); a refused SIGKILL
/// fails the stop.
pub(super) fn next_stop_step(refusals: usize, outcome: CancelOutcome) -> StopStep {
    match outcome {
        CancelOutcome::Accepted => StopStep::AwaitExit,
        CancelOutcome::Refused if refusals == 0 => StopStep::RetryWithAllowedGrace,
        CancelOutcome::Refused if refusals == 1 => StopStep::Kill,
        CancelOutcome::Refused | CancelOutcome::Failed => StopStep::Fail {
            keep_stopping: false,
        },
        CancelOutcome::NotFound => StopStep::MarkLost,
        CancelOutcome::NotYet => StopStep::Fail {
            keep_stopping: true,
        },
    }
}

/// Deadline of one `CancelExecution` call. The daemon answers it at once
/// (it signals and returns; the program ends later), so an unanswered
/// cancel means a dead connection, most often one left over from a
/// partition that has already healed. A short deadline retires it sooner,
/// which also reopens the streams on it, so the stop goes out again and its
/// result comes back well inside `kill_timeout` + 10 s (found by the
/// simulation: random-faults seeds 2000255 and 2000371).
const CANCEL_CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// `CancelExecution`: `signal` now, SIGKILL after `grace`.
pub(super) async fn cancel_execution(
    link: &DaemonLink,
    session_id: &str,
    execution_id: &str,
    signal: &str,
    grace: Duration,
) -> Result<(), CallError> {
    let request = pb::CancelExecutionRequest {
        session_id: session_id.to_owned(),
        execution_id: execution_id.to_owned(),
        signal: signal.to_owned(),
        grace: Some(elide_proto::duration_to_proto(grace)),
    };
    link.unary_within(CANCEL_CALL_TIMEOUT, request, |mut c, r| async move {
        c.cancel_execution(r).await
    })
    .await
    .map(drop)
}

/// The longest grace the daemon allows (its `max_cancel_grace`), for a
/// stop it refused; none when it does not say, so the retry is a kill.
pub(super) async fn allowed_grace(link: &DaemonLink) -> Duration {
    max_cancel_grace(link).await.unwrap_or(Duration::ZERO)
}

/// The daemon's `max_cancel_grace`, if it says.
async fn max_cancel_grace(link: &DaemonLink) -> Option<Duration> {
    let capabilities = link
        .unary(pb::GetCapabilitiesRequest {}, |mut c, r| async move {
            c.get_capabilities(r).await
        })
        .await
        .ok()?;
    let grace = capabilities.limits?.max_cancel_grace?;
    Some(Duration::new(
        grace.seconds.max(0) as u64,
        grace.nanos.max(0) as u32,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stop_ladder_retries_a_refused_stop_with_the_allowed_grace_then_kills() {
        use CancelOutcome::*;
        assert_eq!(next_stop_step(0, Refused), StopStep::RetryWithAllowedGrace);
        assert_eq!(next_stop_step(1, Refused), StopStep::Kill);
        assert_eq!(
            next_stop_step(2, Refused),
            StopStep::Fail {
                keep_stopping: false
            }
        );
        for refusals in 0..3 {
            assert_eq!(next_stop_step(refusals, Accepted), StopStep::AwaitExit);
            assert_eq!(next_stop_step(refusals, NotFound), StopStep::MarkLost);
            assert_eq!(
                next_stop_step(refusals, NotYet),
                StopStep::Fail {
                    keep_stopping: true
                },
                "an unreachable or failing daemon keeps being asked in the background"
            );
            assert_eq!(
                next_stop_step(refusals, Failed),
                StopStep::Fail {
                    keep_stopping: false
                }
            );
        }
    }

    #[test]
    fn a_daemon_failing_for_its_own_reasons_is_asked_again_a_refusal_is_not() {
        use tonic::Code;
        let outcome =
            |code: Code| CancelOutcome::of(&Err(CallError::Status(tonic::Status::new(code, "x"))));
        for code in [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::Internal,
            Code::ResourceExhausted,
            Code::Aborted,
        ] {
            assert_eq!(outcome(code), CancelOutcome::NotYet, "{code:?}");
        }
        assert_eq!(outcome(Code::InvalidArgument), CancelOutcome::Refused);
        assert_eq!(outcome(Code::NotFound), CancelOutcome::NotFound);
        for code in [
            Code::PermissionDenied,
            Code::FailedPrecondition,
            Code::Unimplemented,
        ] {
            assert_eq!(outcome(code), CancelOutcome::Failed, "{code:?}");
        }
    }
}
