//! No connection churn (`redials`): each link the plugin makes to its
//! daemon dials once, and again only after something broke, a fault on
//! its client shortly before. A driver that gives up a connection on an
//! ordinary answer (a refusal, NOT_FOUND) reopens every stream on it and
//! keeps the daemon busy accepting connections; Nomad's operators see that
//! as a reconnect storm in the daemon's logs.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::evidence::{Evidence, Violation};

/// How long after a fault's end a redial is still its consequence: the
/// driver's back-off and heartbeat timeout, with room to spare.
const REDIAL_WINDOW: Duration = Duration::from_secs(60);

/// The violations of `redials`.
pub fn check(e: &Evidence<'_>) -> Vec<Violation> {
    let mut out = Vec::new();
    for (client, dials) in &e.dials {
        let mut dialled = BTreeSet::new();
        for dial in dials {
            if dialled.insert(dial.link) {
                continue;
            }
            let explained = e
                .plan
                .faults_during(*client, dial.at.saturating_sub(REDIAL_WINDOW), dial.at)
                .iter()
                .any(|fault| !fault.kind.only_logs());
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
