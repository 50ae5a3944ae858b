//! The `fingerprint` invariant: the health Nomad is shown follows the
//! daemon. When a client's daemon is down for longer than
//! [`UNHEALTHY_WITHIN`], its agent must receive an unhealthy fingerprint
//! within that time of the crash, and a healthy one within
//! [`HEALTHY_AGAIN_WITHIN`] of the daemon's return. Outages that overlap
//! another fault on the same client (a plugin or agent restart breaks the
//! stream; a partition is an outage of its own) are not judged.

use std::time::Duration;

use crate::evidence::{Evidence, Violation};
use crate::scenario::FaultKind;

/// A healthy daemon is probed every `FINGERPRINT_INTERVAL` (30 s, as Go
/// drivers do); the probe has a 3 s deadline; plus slack.
pub const UNHEALTHY_WITHIN: Duration =
    Duration::from_secs(elide_driver::FINGERPRINT_INTERVAL.as_secs() + 3 + 2);

/// An unhealthy daemon is probed every 2 s; the probe has a 3 s deadline;
/// plus slack.
pub const HEALTHY_AGAIN_WITHIN: Duration = Duration::from_secs(2 + 3 + 2);

/// The `fingerprint` violations of a run.
pub fn check(e: &Evidence<'_>) -> Vec<Violation> {
    let mut out = Vec::new();
    for fault in &e.plan.faults {
        let Some(until) = fault.until else { continue };
        if !matches!(fault.kind, FaultKind::CrashDaemon | FaultKind::WipeDaemon)
            || until.saturating_sub(fault.at) <= UNHEALTHY_WITHIN
        {
            continue;
        }
        let window_end = until + HEALTHY_AGAIN_WITHIN;
        let others = e
            .plan
            .faults_during(fault.client, fault.at, window_end)
            .into_iter()
            .filter(|f| !std::ptr::eq(*f, fault))
            .count();
        if others > 0 {
            continue;
        }
        let seen = e.seen.fingerprints(fault.client);
        let in_window = |from: Duration, to: Duration, healthy: bool| {
            seen.iter()
                .any(|(at, h)| from <= *at && *at <= to && *h == healthy)
        };
        let mut violation = |detail: String| {
            out.push(Violation {
                rule: "fingerprint",
                task: None,
                detail,
            })
        };
        if !in_window(fault.at, fault.at + UNHEALTHY_WITHIN, false) {
            violation(format!(
                "client {}'s daemon was down from {:?} to {until:?}, but Nomad saw no unhealthy fingerprint within {UNHEALTHY_WITHIN:?}",
                fault.client, fault.at
            ));
        }
        if !in_window(until, window_end, true) {
            violation(format!(
                "client {}'s daemon was back at {until:?}, but Nomad saw no healthy fingerprint within {HEALTHY_AGAIN_WITHIN:?}",
                fault.client
            ));
        }
    }
    out
}
