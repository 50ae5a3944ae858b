//! What the daemons hold once the run has settled (`nothing-runs`,
//! `cleanup`, `session-expiry`): no program runs on any daemon, no daemon
//! still holds the execution of a destroyed task (unless it refused its
//! delete for good: `refused-for-good`), an undisturbed `DestroyTask`
//! answered only once the daemon had deleted the execution
//! (`destroy-waits`), and a departed client's session has expired.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::evidence::{Evidence, Violation};
use crate::plan::daemon_host;

/// How long before a `DestroyTask` a fault on its client may still slow
/// its delete (dead connections found, back-off).
const DISTURBED_BEFORE: Duration = Duration::from_secs(30);

/// The violations of `nothing-runs`, `cleanup`, `destroy-waits` and
/// `session-expiry`.
pub fn check(e: &Evidence<'_>) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut violation = |rule: &'static str, task: Option<&str>, detail: String| {
        out.push(Violation::new(rule, task, detail))
    };
    let departed = e.plan.departed_clients();
    // 6. Nothing runs at the end.
    for (client, (boots, running)) in &e.daemons {
        if !running {
            continue;
        }
        let live = e.truth.live_on(&daemon_host(*client), *boots);
        if !live.is_empty() {
            violation(
                "nothing-runs",
                None,
                format!(
                    "{} still runs {} program(s) after every task was destroyed: {}",
                    daemon_host(*client),
                    live.len(),
                    live.join(", ")
                ),
            );
        }
    }

    // 6b. Destroyed tasks' executions are gone from their daemon. A
    // daemon the observer could not list is reported once; one it never
    // got to list (the run did not settle) is already a `finishes` failure.
    let mut unlisted = BTreeSet::new();
    for plan in &e.plan.tasks {
        let seen = e.seen.seen(&plan.task_id);
        if seen.destroyed_at.is_none()
            || departed.contains(&plan.client)
            || crate::refusals::delete_refused_for_good(e, plan.client, &plan.execution_id)
        {
            continue;
        }
        match e.held.get(&plan.client) {
            Some(Some(held)) if held.executions.contains(&plan.execution_id) => violation(
                "cleanup",
                Some(&plan.task_id),
                format!(
                    "destroyed, but {} still holds execution {}",
                    daemon_host(plan.client),
                    plan.execution_id
                ),
            ),
            Some(None) => {
                unlisted.insert(plan.client);
            }
            Some(Some(_)) | None => {}
        }
    }
    // 6c. An undisturbed `DestroyTask` answers once the daemon has let go
    // of the execution (the plugin waits up to its limit for the delete:
    // Nomad removes the allocation's directories next).
    for plan in &e.plan.tasks {
        let seen = e.seen.seen(&plan.task_id);
        let Some((called, answered)) = seen.destroy_answered else {
            continue;
        };
        if answered.saturating_sub(called) >= elide_driver::DESTROY_WAIT_LIMIT
            || e.truth.runs_of(&plan.execution_id).is_empty()
            || e.plan.calls_disturbed(
                plan.client,
                called.saturating_sub(DISTURBED_BEFORE),
                answered,
            )
        {
            continue;
        }
        let deleted = e
            .deletes
            .get(&plan.client)
            .and_then(|deletes| deletes.get(&plan.execution_id));
        // The plugin answers after the daemon's answer reached it: strictly
        // later (every message takes at least the minimum latency).
        if deleted.is_none_or(|at| *at >= answered) {
            violation(
                "destroy-waits",
                Some(&plan.task_id),
                format!(
                    "DestroyTask (called at {called:?}) answered at {answered:?}, but {} deleted execution {} {}",
                    daemon_host(plan.client),
                    plan.execution_id,
                    deleted.map_or("never".to_owned(), |at| format!("only at {at:?}"))
                ),
            );
        }
    }
    for client in unlisted {
        violation(
            "cleanup",
            None,
            format!("could not list what {} holds", daemon_host(client)),
        );
    }

    // 7. Departed clients' sessions expire.
    for client in departed {
        match e.held.get(&client) {
            Some(Some(held)) if !held.sessions.is_empty() => violation(
                "session-expiry",
                None,
                format!(
                    "client {client} is gone but its daemon still holds {}",
                    held.sessions.join(", ")
                ),
            ),
            Some(Some(_)) | None => {}
            Some(None) => violation(
                "session-expiry",
                None,
                format!("could not list the sessions of client {client}'s daemon"),
            ),
        }
    }
    out
}
