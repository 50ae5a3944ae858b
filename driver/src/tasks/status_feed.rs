//! Following execution state changes of one daemon session.
//!
//! [`StatusHub`] is where tasks register interest (by execution id) and
//! where status observations are dispatched to them. A feed fills it:
//! [`watch_session`] keeps ONE `WatchSession` stream for the whole session,
//! resuming after the last seen `seq` when it breaks, and re-listing with
//! `ListExecutions` on a `gap`, on a new daemon instance, and at start;
//! [`poll_session`] is the fallback for daemons without that stream
//! (`GetExecutionStatus` per running task every interval). Both feeds
//! report an execution that the daemon no longer knows as lost, so no
//! `WaitTask` hangs on a vanished execution.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use elide_proto::elide::daemon::v1 as pb;
use tokio::sync::watch;

use super::backoff::Backoff;
use super::exit::is_terminal;
use crate::daemon_link::heartbeat::{self, Next, Watchdog};
use crate::daemon_link::DaemonLink;
use crate::plugin_config::StatusMode;

/// What is known about one execution.
#[derive(Debug, Clone, PartialEq)]
pub enum Observed {
    /// Nothing yet.
    Pending,
    /// The newest status seen.
    Status(Box<pb::ExecutionStatus>),
    /// The daemon does not know the execution (any more).
    Lost(String),
}

impl Observed {
    /// Whether nothing will change any more.
    pub fn is_final(&self) -> bool {
        match self {
            Observed::Pending => false,
            Observed::Status(s) => is_terminal(s.state()),
            Observed::Lost(_) => true,
        }
    }
}

struct Entry {
    sender: watch::Sender<Observed>,
    /// Set once the daemon accepted the execution: only then does its
    /// absence from a listing mean it is lost (before, it may simply not
    /// have been submitted yet).
    confirmed: bool,
}

/// Dispatches status observations to the tasks waiting for them.
#[derive(Default)]
pub struct StatusHub {
    entries: Mutex<BTreeMap<String, Entry>>,
}

impl StatusHub {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers interest in `execution_id` (again: the same channel).
    /// Register *before* submitting, so no change can be missed.
    pub fn register(&self, execution_id: &str) -> watch::Receiver<Observed> {
        let mut entries = self.lock();
        let entry = entries
            .entry(execution_id.to_owned())
            .or_insert_with(|| Entry {
                sender: watch::Sender::new(Observed::Pending),
                confirmed: false,
            });
        entry.sender.subscribe()
    }

    /// The daemon accepted (or already had) the execution.
    pub fn confirm(&self, execution_id: &str) {
        if let Some(entry) = self.lock().get_mut(execution_id) {
            entry.confirmed = true;
        }
    }

    /// Stops following an execution.
    pub fn unregister(&self, execution_id: &str) {
        self.lock().remove(execution_id);
    }

    /// Records a status if it is newer than what is known. Final
    /// observations are never replaced.
    pub fn deliver(&self, status: pb::ExecutionStatus) {
        let entries = self.lock();
        let Some(entry) = entries.get(&status.execution_id) else {
            return;
        };
        entry.sender.send_if_modified(|current| {
            let newer = match current {
                Observed::Pending => true,
                Observed::Lost(_) => false,
                Observed::Status(old) => {
                    !is_terminal(old.state())
                        && (status.seq >= old.seq
                            || status.daemon_instance_id != old.daemon_instance_id
                            || is_terminal(status.state()))
                }
            };
            if newer {
                *current = Observed::Status(Box::new(status.clone()));
            }
            newer
        });
    }

    /// Records that the daemon does not know `execution_id`.
    pub fn mark_lost(&self, execution_id: &str, why: &str) {
        if let Some(entry) = self.lock().get(execution_id) {
            entry.sender.send_if_modified(|current| {
                if current.is_final() {
                    return false;
                }
                *current = Observed::Lost(why.to_owned());
                true
            });
        }
    }

    /// Confirmed executions that have not ended yet.
    pub fn active(&self) -> Vec<String> {
        self.lock()
            .iter()
            .filter(|(_, e)| e.confirmed && !e.sender.borrow().is_final())
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Applies a full listing: delivers every status and marks confirmed,
    /// unfinished executions missing from it as lost.
    pub fn apply_listing(&self, executions: Vec<pb::ExecutionStatus>, session_id: &str) {
        let present: BTreeSet<String> = executions.iter().map(|s| s.execution_id.clone()).collect();
        for status in executions {
            self.deliver(status);
        }
        for id in self.active() {
            if !present.contains(&id) {
                self.mark_lost(
                    &id,
                    &format!("the daemon no longer lists it in session {session_id}"),
                );
            }
        }
    }

    /// Marks every confirmed, unfinished execution lost.
    pub fn lose_all(&self, why: &str) {
        for id in self.active() {
            self.mark_lost(&id, why);
        }
    }
}

/// Re-lists the session; returns the listing's `last_seq`.
async fn relist(
    link: &DaemonLink,
    hub: &StatusHub,
    session_id: &str,
) -> Result<u64, crate::daemon_link::CallError> {
    let request = pb::ListExecutionsRequest {
        session_id: session_id.to_owned(),
        active_only: false,
    };
    match link
        .unary(
            request,
            |mut c, r| async move { c.list_executions(r).await },
        )
        .await
    {
        Ok(list) => {
            hub.apply_listing(list.executions, session_id);
            Ok(list.last_seq)
        }
        Err(e) => {
            if e.is_not_found() {
                hub.lose_all(&format!(
                    "session {session_id} no longer exists on the daemon"
                ));
            }
            Err(e)
        }
    }
}

/// Follows a session in `mode` until the task is aborted. `Auto` asks the
/// daemon whether it serves `WatchSession` first, retrying with back-off
/// while it is unreachable (so creating a feed never needs the daemon up).
pub async fn follow_session(
    link: DaemonLink,
    hub: Arc<StatusHub>,
    session_id: String,
    mode: StatusMode,
    poll_interval: Duration,
) {
    let mode = match mode {
        StatusMode::Auto => resolve_mode(&link, &session_id).await,
        explicit => explicit,
    };
    tracing::debug!(session_id, mode = mode.name(), "status feed running");
    if mode != StatusMode::Poll {
        watch_session(link.clone(), hub.clone(), session_id.clone()).await;
        // The daemon answered UNIMPLEMENTED (whatever its capabilities
        // said): it cannot push, so poll it.
        tracing::warn!(
            session_id,
            daemon = %link.target(),
            ?poll_interval,
            "the daemon does not serve WatchSession; polling it instead"
        );
    }
    poll_session(link, hub, session_id, poll_interval).await
}

/// `Watch` when the daemon lists the `WatchSession` feature, else `Poll`.
async fn resolve_mode(link: &DaemonLink, session_id: &str) -> StatusMode {
    let mut backoff = Backoff::default();
    loop {
        match link
            .unary(pb::GetCapabilitiesRequest {}, |mut c, r| async move {
                c.get_capabilities(r).await
            })
            .await
        {
            Ok(capabilities) if capabilities.features.iter().any(|f| f == "WatchSession") => {
                return StatusMode::Watch
            }
            Ok(_) => return StatusMode::Poll,
            Err(e) => {
                tracing::debug!(session_id, error = %e, "reading daemon capabilities failed; retrying");
                backoff.wait().await;
            }
        }
    }
}

/// The watch feed: runs until the task is aborted, or returns when the
/// daemon answers `WatchSession` with `UNIMPLEMENTED`.
pub async fn watch_session(link: DaemonLink, hub: Arc<StatusHub>, session_id: String) {
    use pb::session_event::Event;
    let mut backoff = Backoff::default();
    // (daemon instance, last seq delivered); None until the first listing.
    let mut cursor: Option<(String, u64)> = None;
    loop {
        let after_seq = match &cursor {
            Some((_, seq)) => *seq,
            None => match relist(&link, &hub, &session_id).await {
                Ok(seq) => {
                    cursor = Some((String::new(), seq));
                    seq
                }
                Err(e) => {
                    tracing::debug!(session_id, error = %e, "listing executions failed; retrying");
                    backoff.wait().await;
                    continue;
                }
            },
        };
        let request = pb::WatchSessionRequest {
            session_id: session_id.clone(),
            after_seq,
            heartbeat_interval: heartbeat::requested_interval(),
        };
        let opened = link
            .open_stream(request, |mut c, r| async move { c.watch_session(r).await })
            .await;
        let mut stream = match opened {
            Ok(stream) => stream,
            Err(e) if e.code() == tonic::Code::Unimplemented => return,
            Err(e) => {
                tracing::debug!(session_id, error = %e, "WatchSession failed; retrying");
                if e.is_not_found() {
                    hub.lose_all(&format!(
                        "session {session_id} no longer exists on the daemon"
                    ));
                }
                backoff.wait().await;
                continue;
            }
        };
        let mut watchdog = Watchdog::default();
        loop {
            let message = match watchdog.next(&mut stream).await {
                Next::Item(Some(message)) => message,
                Next::Item(None) => break,
                Next::Silent => {
                    tracing::info!(session_id, silent_for = ?heartbeat::HEARTBEAT_TIMEOUT, "WatchSession went silent; reconnecting");
                    link.retire_connection();
                    break;
                }
            };
            let event = match message {
                Ok(pb::SessionEvent { event: Some(event) }) => event,
                Ok(_) => continue,
                Err(status) => {
                    tracing::debug!(session_id, error = %status.message(), "WatchSession broke");
                    break;
                }
            };
            match event {
                Event::Opened(opened) => {
                    backoff.reset();
                    let known = cursor.as_ref().map(|(i, _)| i.clone()).unwrap_or_default();
                    if !known.is_empty() && known != opened.daemon_instance_id {
                        tracing::info!(session_id, old = %known, new = %opened.daemon_instance_id, "daemon restarted; re-listing executions");
                        if let Ok(seq) = relist(&link, &hub, &session_id).await {
                            bump(&mut cursor, seq);
                        }
                    }
                    if let Some((instance, _)) = cursor.as_mut() {
                        *instance = opened.daemon_instance_id;
                    }
                }
                Event::Status(status) => {
                    bump(&mut cursor, status.seq);
                    hub.deliver(status);
                }
                Event::Heartbeat(_) => watchdog.heartbeat(),
                Event::Gap(gap) => {
                    tracing::info!(
                        session_id,
                        first_missing = gap.first_missing_seq,
                        first_available = gap.first_available_seq,
                        "missed session events; re-listing executions"
                    );
                    match relist(&link, &hub, &session_id).await {
                        Ok(seq) => bump(&mut cursor, seq),
                        // Re-list from scratch on the next connection.
                        Err(_) => {
                            cursor = None;
                            break;
                        }
                    }
                }
            }
        }
        backoff.wait().await;
    }
}

fn bump(cursor: &mut Option<(String, u64)>, seq: u64) {
    if let Some((_, last)) = cursor.as_mut() {
        *last = (*last).max(seq);
    }
}

/// The polling feed: every `interval`, `GetExecutionStatus` for each
/// confirmed, unfinished execution. Runs until the task is aborted.
pub async fn poll_session(
    link: DaemonLink,
    hub: Arc<StatusHub>,
    session_id: String,
    interval: Duration,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        for execution_id in hub.active() {
            let request = pb::GetExecutionStatusRequest {
                session_id: session_id.clone(),
                execution_id: execution_id.clone(),
            };
            match link
                .unary(request, |mut c, r| async move {
                    c.get_execution_status(r).await
                })
                .await
            {
                Ok(response) => {
                    if let Some(status) = response.status {
                        hub.deliver(status);
                    }
                }
                Err(e) if e.is_not_found() => hub.mark_lost(&execution_id, &e.to_string()),
                Err(e) => {
                    tracing::debug!(session_id, execution_id, error = %e, "polling failed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(id: &str, state: pb::ExecutionState, seq: u64) -> pb::ExecutionStatus {
        let mut s = pb::ExecutionStatus {
            execution_id: id.into(),
            seq,
            ..Default::default()
        };
        s.set_state(state);
        s
    }

    #[test]
    fn newer_statuses_win_and_terminal_ones_stick() {
        let hub = StatusHub::default();
        let rx = hub.register("e");
        hub.deliver(status("e", pb::ExecutionState::Running, 5));
        hub.deliver(status("e", pb::ExecutionState::Queued, 3));
        assert!(matches!(&*rx.borrow(), Observed::Status(s) if s.seq == 5));
        hub.deliver(status("e", pb::ExecutionState::Exited, 6));
        hub.deliver(status("e", pb::ExecutionState::Running, 7));
        hub.mark_lost("e", "gone");
        assert!(
            matches!(&*rx.borrow(), Observed::Status(s) if s.state() == pb::ExecutionState::Exited)
        );
        // Unknown ids are ignored.
        hub.deliver(status("other", pb::ExecutionState::Exited, 8));
    }

    #[test]
    fn listing_loses_only_confirmed_missing_executions() {
        let hub = StatusHub::default();
        let submitted = hub.register("a");
        let unsent = hub.register("b");
        hub.confirm("a");
        hub.apply_listing(vec![], "s");
        assert!(matches!(&*submitted.borrow(), Observed::Lost(_)));
        assert_eq!(*unsent.borrow(), Observed::Pending);
        assert!(hub.active().is_empty());
    }
}
