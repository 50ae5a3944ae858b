//! `Driver.Shutdown` (Nomad ≥ 2.0.4, on agent shutdown, 2 s deadline):
//! detach from every task without touching it.
//!
//! Tasks live in the daemon and must outlive this plugin process, so
//! nothing is stopped or cancelled. What the plugin itself does for a task
//! is wound down cleanly instead of being cut off by the process exit that
//! follows (`GRPCController/Shutdown`, then SIGKILL after 2 s):
//!
//! * each output forwarder stops between two chunks, never in the middle
//!   of a write, with its offsets recorded, and closes its FIFO write ends;
//!   so the next plugin process, recovering the task, goes on from exactly
//!   there and Nomad's logs get no byte twice;
//! * no exit is published for a detached task: pending `WaitTask` calls
//!   stay open until the connection goes, as they would for any plugin
//!   that stops while its tasks run (a "lost" answer would make Nomad
//!   count a running task as failed);
//! * `StartTask` and `RecoverTask` are refused from then on.
//!
//! Everything else the plugin keeps is already on disk as it changes (stop
//! files, the delete journal, offsets after every chunk), so there is
//! nothing more to flush.

use std::time::Duration;

use super::{TaskError, TaskManager};

/// What `Driver.Shutdown` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Detached {
    /// Tasks whose forwarders had stopped by the deadline.
    pub complete: bool,
}

impl TaskManager {
    /// Detaches from every task (see the module docs), waiting up to
    /// `limit` for their forwarders to record where they stopped.
    /// Idempotent.
    pub async fn detach(&self, limit: Duration) -> Detached {
        self.detach.send_replace(true);
        // The table's own handle on the liveness channel goes, so the
        // receiver ends once every supervisor has let go of its clone.
        let alive = self.alive.lock().unwrap_or_else(|p| p.into_inner()).take();
        drop(alive);
        let receiver = self
            .alive_receiver
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let complete = match receiver {
            Some(mut receiver) => tokio::time::timeout(limit, receiver.recv()).await.is_ok(),
            // A second Shutdown: the first one waited.
            None => true,
        };
        tracing::info!(
            tasks = self.table().len(),
            complete,
            "detached from every task (Driver.Shutdown); they keep running in the daemon"
        );
        Detached { complete }
    }

    /// Whether `Driver.Shutdown` was called.
    pub fn is_detached(&self) -> bool {
        *self.detach.borrow()
    }

    /// A token a task supervisor holds while it may still write; `Err`
    /// once the plugin detached.
    pub(super) fn liveness_token(&self) -> Result<tokio::sync::mpsc::Sender<()>, TaskError> {
        self.alive
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or(TaskError::Precondition(DETACHED.to_owned()))
    }
}

/// Why task calls are refused after `Driver.Shutdown`.
pub const DETACHED: &str =
    "the plugin is shutting down (Driver.Shutdown was called); its tasks keep running in the daemon and the next plugin process recovers them";
