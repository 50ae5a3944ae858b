//! No connection churn (`redials`): each link the plugin makes to its
//! daemon dials once, and again only after something broke, a fault on
//! its client shortly before. A driver that gives up a connection on an
//! ordinary answer (a refusal, NOT_FOUND) reopens every stream on it and
//! keeps the daemon busy accepting connections; Nomad's operators see that
//! as a reconnect storm in the daemon's logs. No request storm either
//! (`request-storm`): the daemon serves at most
//! [`CANCELS_PER_TASK`] `CancelExecution` calls per task of its client (a
//! stop, its fallbacks, the force kill, retries after faults), plus one per
//! [`PACED_RETRY`] that faults on the client lasted (a stop kept up in the
//! background at its back-off), so a stop retried in a loop is caught even when Nomad's own force destroy ends
//! the program in the same way. And no call the daemon did not offer
//! (`capabilities`): on a daemon whose `GetCapabilities` does not list
//! `WatchSession`, a plugin in `status_mode = "auto"` polls and never asks
//! for the stream (the contract: "a client falls back to polling when
//! `WatchSession` is absent").

use std::collections::BTreeSet;
use std::time::Duration;

use crate::evidence::{Evidence, Violation};

/// How long after a fault's end a redial is still its consequence: the
/// driver's back-off and heartbeat timeout, with room to spare.
const REDIAL_WINDOW: Duration = Duration::from_secs(60);

/// `CancelExecution` calls a daemon may serve per task of its client.
pub const CANCELS_PER_TASK: u64 = 10;

/// A retry every this long while a fault lasts is paced, not a storm:
/// half the longest back-off of a stop kept up in the background.
const PACED_RETRY: Duration = Duration::from_secs(15);

/// Cancels per task that faults on `client` explain beyond
/// [`CANCELS_PER_TASK`]: one per [`PACED_RETRY`] they lasted.
fn paced_retries(e: &Evidence<'_>, client: u32) -> u64 {
    let lasted: Duration = e
        .plan
        .faults
        .iter()
        .filter(|f| f.client == client && f.kind.disturbs_calls())
        .filter_map(|f| f.until.map(|until| until.saturating_sub(f.at)))
        .sum();
    lasted.as_secs() / PACED_RETRY.as_secs()
}

/// The violations of `redials`, `request-storm` and `capabilities`.
pub fn check(e: &Evidence<'_>) -> Vec<Violation> {
    let mut out = Vec::new();
    let cluster = &e.scenario.cluster;
    for (client, requests) in &e.daemon_requests {
        let watches = requests.get("WatchSession").copied().unwrap_or(0);
        if !cluster.daemon_watch && cluster.status_mode == "auto" && watches > 0 {
            out.push(Violation {
                rule: "capabilities",
                task: None,
                detail: format!(
                    "client {client}: its daemon does not list WatchSession, yet the plugin \
                     (status_mode auto) asked for it {watches} times"
                ),
            });
        }
        let tasks = e.plan.tasks_of(*client).len() as u64;
        let cancels = requests.get("CancelExecution").copied().unwrap_or(0);
        let allowed = tasks * (CANCELS_PER_TASK + paced_retries(e, *client));
        if cancels > allowed {
            out.push(Violation {
                rule: "request-storm",
                task: None,
                detail: format!(
                    "client {client}: its daemon served {cancels} CancelExecution calls for {tasks} tasks \
                     (at most {allowed})"
                ),
            });
        }
    }
    for (client, dials) in &e.dials {
        let mut dialled = BTreeSet::new();
        for dial in dials {
            if dialled.insert(dial.link) {
                continue;
            }
            let explained =
                e.plan
                    .calls_disturbed(*client, dial.at.saturating_sub(REDIAL_WINDOW), dial.at);
            if !explained {
                out.push(Violation {
                    rule: "redials",
                    task: None,
                    detail: format!(
                        "client {client}: the plugin dialled its daemon again at {:?} \
                         (link {}) with no fault on the client in the {REDIAL_WINDOW:?} before",
                        dial.at, dial.link
                    ),
                });
            }
        }
    }
    out
}
