//! A run's trace: what happened, stamped with simulated time. Two runs with
//! the same seed must produce the same trace, byte for byte.

use std::sync::{Arc, Mutex};

use sha2::Digest;

/// Shared, append-only trace of a simulation run.
#[derive(Debug, Clone, Default)]
pub struct Trace {
    lines: Arc<Mutex<Vec<String>>>,
}

impl Trace {
    /// Appends `line`, prefixed with the simulated time (from inside a
    /// simulated host or client).
    pub fn record(&self, who: &str, line: impl AsRef<str>) {
        self.record_at(turmoil::sim_elapsed().unwrap_or_default(), who, line);
    }

    /// Appends `line` at simulated time `at` (for the world outside hosts,
    /// which reads the time from `Sim::elapsed`).
    pub fn record_at(&self, at: std::time::Duration, who: &str, line: impl AsRef<str>) {
        let entry = format!("[{:>10.3}s] {who}: {}", at.as_secs_f64(), line.as_ref());
        self.lines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(entry);
    }

    /// All lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// SHA-256 of the whole trace, hex.
    pub fn hash(&self) -> String {
        let mut h = sha2::Sha256::new();
        for line in self.lines() {
            h.update(line.as_bytes());
            h.update(b"\n");
        }
        hex::encode(h.finalize())
    }
}
