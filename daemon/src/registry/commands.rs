//! Where a command beside an execution may start: only beside a program
//! that is running now.

use super::core::{entry, session_mut};
use super::SessionRegistry;
use crate::error::{DaemonError, Result};
use crate::runtime::CommandContext;
use tokio::time::Instant;

impl SessionRegistry {
    /// How commands start beside a running execution. An unknown session
    /// or execution is NOT_FOUND; one that is still queued or has ended is
    /// FAILED_PRECONDITION, as is a runtime that runs no commands.
    pub fn commands(&self, session_id: &str, execution_id: &str) -> Result<CommandContext> {
        let mut inner = self.lock();
        let session = session_mut(&mut inner, session_id, Instant::now())?;
        let e = entry(session, session_id, execution_id)?;
        if e.is_terminal() {
            return Err(DaemonError::FailedPrecondition(format!(
                "execution {execution_id} has already ended ({}): there is nothing to run a command beside",
                e.status.state().as_str_name()
            )));
        }
        let Some(control) = e.control.as_ref() else {
            return Err(DaemonError::FailedPrecondition(format!(
                "execution {execution_id} is still queued: its program has not started"
            )));
        };
        control.commands().ok_or_else(|| {
            DaemonError::FailedPrecondition(
                "this daemon's runtime cannot run commands beside a program".into(),
            )
        })
    }
}
