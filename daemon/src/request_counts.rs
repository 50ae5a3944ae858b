//! Requests served, by gRPC method: the one count behind both
//! `GetDaemonStats.requests` and the Prometheus `elide_requests_total`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Requests per method of `elide.daemon.v1`, shared by every listener's
/// copy of the service.
#[derive(Debug, Clone, Default)]
pub struct RequestCounts(Arc<Mutex<BTreeMap<&'static str, u64>>>);

impl RequestCounts {
    /// Counts one request of `method`.
    pub fn count(&self, method: &'static str) {
        *self.lock().entry(method).or_default() += 1;
    }

    /// The counts so far, ordered by method.
    pub fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, u64>> {
        // One increment at a time: a panicking holder cannot leave it torn.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}
