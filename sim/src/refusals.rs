//! What the driver does with a call the daemon refused for good
//! (`refused-for-good`): a `CancelExecution` or `DeleteExecution` answered
//! `PERMISSION_DENIED` (or another code that says the request itself will
//! not be taken) goes again only when Nomad asks again (`StopTask`,
//! `DestroyTask`, `RecoverTask`) or a new plugin process takes over, never
//! on the driver's own back-off. A driver that retries such a refusal
//! hammers a daemon that has said no, and hides the refusal from the
//! operator behind retries. Which codes are final is decided here, from
//! gRPC's status code meanings, not with the driver's own rule.

use crate::daemon_wire::Refusal;
use crate::evidence::{Evidence, Violation};

/// Whether the daemon's answer `code` is final: the same request would be
/// refused again.
fn final_answer(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated | tonic::Code::Unimplemented
    )
}

/// The calls `client`'s daemon refused for good for `execution_id`.
fn refused_for_good<'e>(
    e: &'e Evidence<'_>,
    client: u32,
    execution_id: &'e str,
) -> impl Iterator<Item = &'e Refusal> + 'e {
    e.refusals
        .get(&client)
        .into_iter()
        .flatten()
        .filter(move |r| r.execution_id == execution_id && final_answer(r.code))
}

/// Whether `client`'s daemon refused for good to delete `execution_id`:
/// then it may keep the execution (the driver reported the refusal; the
/// operator has to act).
pub fn delete_refused_for_good(e: &Evidence<'_>, client: u32, execution_id: &str) -> bool {
    refused_for_good(e, client, execution_id).any(|r| r.method == "DeleteExecution")
}

/// The violations of `refused-for-good`.
pub fn check(e: &Evidence<'_>) -> Vec<Violation> {
    let mut out = Vec::new();
    for plan in &e.plan.tasks {
        let refused: Vec<&Refusal> = refused_for_good(e, plan.client, &plan.execution_id).collect();
        let Some(first) = refused.first().map(|r| r.at) else {
            continue;
        };
        let seen = e.seen.seen(&plan.task_id);
        // Each of Nomad's calls may send one of each; so may each plugin
        // process that picks the task up after the first refusal.
        let boots = e
            .plugin_boots
            .get(&plan.client)
            .into_iter()
            .flatten()
            .filter(|at| **at > first)
            .count() as u32;
        let stops = seen.stop_calls.len() as u32;
        let asks = seen.destroy_calls + seen.recover_calls + boots;
        for (method, allowed) in [("CancelExecution", stops + asks), ("DeleteExecution", asks)] {
            let sent = refused.iter().filter(|r| r.method == method).count() as u32;
            if sent > allowed {
                out.push(Violation::of_task(
                    "refused-for-good",
                    &plan.task_id,
                    format!(
                        "the daemon refused {method} of {} for good {sent} times, but Nomad asked only {allowed} times (StopTask, DestroyTask, RecoverTask, new plugin processes)",
                        plan.execution_id
                    ),
                ));
            }
        }
    }
    out
}
