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

use super::exit::is_terminal;
use crate::backoff::Backoff;
use crate::daemon_link::heartbeat::{self, Next, Watchdog};
use crate::daemon_link::DaemonLink;
use crate::plugin_config::StatusMode;

/// What is known about one execution's end. Only the end is kept: a task
/// waits for nothing else, so the statuses before it (queued, running)
/// would be state no reader acts on.
#[derive(Debug, Clone, PartialEq)]
pub enum Observed {
    /// Not ended as far as the driver knows.
    Pending,
    /// Its terminal status: the first one seen.
    Ended(Box<pb::ExecutionStatus>),
    /// The daemon does not know the execution (any more).
    Lost(String),
}

impl Observed {
    /// Whether nothing will change any more.
    pub fn is_final(&self) -> bool {
        !matches!(self, Observed::Pending)
    }
}

struct Entry {
    sender: watch::Sender<Observed>,
    /// Set once the daemon accepted the execution (to the hub's
    /// [`Epoch`] then): only then does its absence from a listing mean it
    /// is lost (before, it may simply not have been submitted yet), and
    /// only from a listing asked for after that.
    confirmed: Option<Epoch>,
}

/// Counts confirmations, so that an answer can be matched with the
/// executions confirmed before it was asked for.
pub type Epoch = u64;

/// Dispatches status observations to the tasks waiting for them.
#[derive(Default)]
pub struct StatusHub {
    entries: Mutex<BTreeMap<String, Entry>>,
    epoch: std::sync::atomic::AtomicU64,
    /// Wakes a feed waiting out its back-off (the session now exists).
    wake: tokio::sync::Notify,
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
                confirmed: None,
            });
        entry.sender.subscribe()
    }

    /// The daemon accepted (or already had) the execution.
    pub fn confirm(&self, execution_id: &str) {
        if let Some(entry) = self.lock().get_mut(execution_id) {
            let epoch = self.epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            entry.confirmed.get_or_insert(epoch);
        }
    }

    /// Now, for matching a request's answer with [`StatusHub::confirm`]s:
    /// take it before sending the request.
    pub fn epoch(&self) -> Epoch {
        self.epoch.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The session was just created (again) on the daemon: a feed backing
    /// off because it was missing retries now, so tasks started into the
    /// new session get their results without waiting out the back-off.
    pub fn session_created(&self) {
        self.wake.notify_waiters();
    }

    /// Waits out `backoff`, or less if [`StatusHub::session_created`] is
    /// called meanwhile (then the back-off starts over).
    async fn pause(&self, backoff: &mut Backoff) {
        tokio::select! {
            biased;
            _ = self.wake.notified() => backoff.reset(),
            _ = backoff.wait() => {}
        }
    }

    /// Stops following an execution.
    pub fn unregister(&self, execution_id: &str) {
        self.lock().remove(execution_id);
    }

    /// Records a terminal status as the execution's end, unless its end
    /// is known already (final observations are never replaced). Other
    /// statuses change nothing.
    pub fn deliver(&self, status: pb::ExecutionStatus) {
        if !is_terminal(status.state()) {
            return;
        }
        let entries = self.lock();
        let Some(entry) = entries.get(&status.execution_id) else {
            return;
        };
        entry.sender.send_if_modified(|current| {
            if current.is_final() {
                return false;
            }
            *current = Observed::Ended(Box::new(status.clone()));
            true
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
        self.active_as_of(Epoch::MAX)
    }

    /// Executions confirmed by `epoch` that have not ended yet.
    fn active_as_of(&self, epoch: Epoch) -> Vec<String> {
        self.lock()
            .iter()
            .filter(|(_, e)| {
                e.confirmed.is_some_and(|c| c <= epoch) && !e.sender.borrow().is_final()
            })
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Applies a full listing asked for at `asked`: delivers every status
    /// and marks unfinished executions confirmed by then that are missing
    /// from it as lost (one confirmed later may be newer than the listing).
    pub fn apply_listing(
        &self,
        executions: Vec<pb::ExecutionStatus>,
        session_id: &str,
        asked: Epoch,
    ) {
        let present: BTreeSet<String> = executions.iter().map(|s| s.execution_id.clone()).collect();
        for status in executions {
            self.deliver(status);
        }
        for id in self.active_as_of(asked) {
            if !present.contains(&id) {
                self.mark_lost(
                    &id,
                    &format!("the daemon no longer lists it in session {session_id}"),
                );
            }
        }
    }

    /// Marks every unfinished execution confirmed by `asked` lost (the
    /// daemon said, in answer to a request sent at `asked`, that the
    /// session does not exist; it may have been created again since).
    pub fn lose_all(&self, why: &str, asked: Epoch) {
        for id in self.active_as_of(asked) {
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
    let asked = hub.epoch();
    match link
        .unary(
            request,
            |mut c, r| async move { c.list_executions(r).await },
        )
        .await
    {
        Ok(list) => {
            hub.apply_listing(list.executions, session_id, asked);
            Ok(list.last_seq)
        }
        Err(e) => {
            if e.is_not_found() {
                hub.lose_all(
                    &format!("session {session_id} no longer exists on the daemon"),
                    asked,
                );
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
                    hub.pause(&mut backoff).await;
                    continue;
                }
            },
        };
        let request = pb::WatchSessionRequest {
            session_id: session_id.clone(),
            after_seq,
            heartbeat_interval: heartbeat::requested_interval(),
        };
        let asked = hub.epoch();
        let watchdog_on = Watchdog::on(&link);
        let opened = link
            .open_stream(request, |mut c, r| async move { c.watch_session(r).await })
            .await;
        let mut stream = match opened {
            Ok(stream) => stream,
            Err(e) if e.code() == tonic::Code::Unimplemented => return,
            Err(e) => {
                tracing::debug!(session_id, error = %e, "WatchSession failed; retrying");
                if e.is_not_found() || crate::broken!(GivesUpDuringPartitions) {
                    hub.lose_all(
                        &format!("session {session_id} no longer exists on the daemon"),
                        asked,
                    );
                }
                hub.pause(&mut backoff).await;
                continue;
            }
        };
        let mut watchdog = watchdog_on;
        let mut reopen_now = false;
        loop {
            let message = match watchdog.next(&mut stream).await {
                Next::Item(Some(message)) => message,
                Next::Item(None) => break,
                Next::Retired => {
                    tracing::info!(
                        session_id,
                        "the connection under WatchSession was retired; reconnecting"
                    );
                    break;
                }
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
                    match log_change(cursor.as_ref(), &opened, after_seq) {
                        LogChange::None => {
                            if let Some((instance, _)) = cursor.as_mut() {
                                *instance = opened.daemon_instance_id;
                            }
                        }
                        change => {
                            let known = cursor.as_ref().map(|(i, _)| i.as_str()).unwrap_or("");
                            tracing::info!(session_id, old = %known, new = %opened.daemon_instance_id, after_seq, last_seq = opened.last_seq, "the daemon's event log is not the one followed (daemon restarted or session created again); re-listing executions");
                            // The old numbering means nothing in a new log:
                            // the cursor is the listing's, never the larger
                            // of the two (which would skip the new log's
                            // events up to the old cursor on the next
                            // connection).
                            cursor = match relist(&link, &hub, &session_id).await {
                                Ok(seq) => Some((opened.daemon_instance_id, seq)),
                                Err(_) => None,
                            };
                            if change == LogChange::Restarted || cursor.is_none() {
                                // This stream only sends events after the
                                // old cursor: reopen it after the listing.
                                reopen_now = cursor.is_some();
                                break;
                            }
                        }
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
        if !reopen_now {
            hub.pause(&mut backoff).await;
        }
    }
}

/// How the event log a `WatchSession` stream opened on relates to the one
/// the cursor counts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LogChange {
    /// The same log: the stream goes on from the cursor.
    None,
    /// Another daemon instance whose log reaches the cursor (a restart that
    /// kept its numbering, or a new log already as long): events the
    /// stream will not send are covered by a listing.
    NewInstance,
    /// The log is shorter than the cursor: it started over (a daemon that
    /// lost its state, or the session created again), so the stream skips
    /// the new log's events up to the old cursor.
    Restarted,
}

fn log_change(
    cursor: Option<&(String, u64)>,
    opened: &pb::WatchOpened,
    after_seq: u64,
) -> LogChange {
    let Some((known, _)) = cursor else {
        return LogChange::None;
    };
    if opened.last_seq < after_seq {
        LogChange::Restarted
    } else if !known.is_empty() && *known != opened.daemon_instance_id {
        LogChange::NewInstance
    } else {
        LogChange::None
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

    fn opened(instance: &str, last_seq: u64) -> pb::WatchOpened {
        pb::WatchOpened {
            daemon_instance_id: instance.into(),
            last_seq,
        }
    }

    #[test]
    fn a_log_shorter_than_the_cursor_started_over() {
        let cursor = ("boot1".to_owned(), 16);
        // A wiped daemon's new log, or the session created again on the
        // same daemon: both start at seq 1, below the old cursor.
        assert_eq!(
            log_change(Some(&cursor), &opened("boot2", 2), 16),
            LogChange::Restarted
        );
        assert_eq!(
            log_change(Some(&cursor), &opened("boot1", 0), 16),
            LogChange::Restarted
        );
        // A restart that kept its numbering.
        assert_eq!(
            log_change(Some(&cursor), &opened("boot2", 16), 16),
            LogChange::NewInstance
        );
        assert_eq!(
            log_change(Some(&cursor), &opened("boot1", 20), 16),
            LogChange::None
        );
        // The first stream after the first listing names the instance.
        let first = (String::new(), 4);
        assert_eq!(
            log_change(Some(&first), &opened("boot1", 4), 4),
            LogChange::None
        );
        assert_eq!(log_change(None, &opened("boot1", 0), 0), LogChange::None);
    }

    #[test]
    fn the_first_terminal_status_sticks_and_others_change_nothing() {
        let hub = StatusHub::default();
        let rx = hub.register("e");
        hub.deliver(status("e", pb::ExecutionState::Running, 5));
        hub.deliver(status("e", pb::ExecutionState::Queued, 3));
        assert_eq!(*rx.borrow(), Observed::Pending);
        hub.deliver(status("e", pb::ExecutionState::Exited, 6));
        hub.deliver(status("e", pb::ExecutionState::Running, 7));
        hub.deliver(status("e", pb::ExecutionState::Failed, 8));
        hub.mark_lost("e", "gone");
        assert!(
            matches!(&*rx.borrow(), Observed::Ended(s) if s.state() == pb::ExecutionState::Exited && s.seq == 6)
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
        hub.apply_listing(vec![], "s", hub.epoch());
        assert!(matches!(&*submitted.borrow(), Observed::Lost(_)));
        assert_eq!(*unsent.borrow(), Observed::Pending);
        assert!(hub.active().is_empty());
    }

    #[test]
    fn an_answer_asked_for_before_a_confirmation_does_not_lose_it() {
        let hub = StatusHub::default();
        let old = hub.register("old");
        hub.confirm("old");
        let asked = hub.epoch();
        // Submitted while the listing (or NOT_FOUND) was on its way.
        let new = hub.register("new");
        hub.confirm("new");
        hub.apply_listing(vec![], "s", asked);
        assert!(matches!(&*old.borrow(), Observed::Lost(_)));
        assert_eq!(*new.borrow(), Observed::Pending);
        hub.lose_all("gone", asked);
        assert_eq!(*new.borrow(), Observed::Pending);
        hub.lose_all("gone", hub.epoch());
        assert!(matches!(&*new.borrow(), Observed::Lost(_)));
    }
}
