//! Task events (Nomad's "Driver" task events) and the plugin-wide message
//! for calls made before `SetConfig`: vocabulary the task lifecycle and the
//! driver share, kept here so `driver` depends on `tasks` and not back.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use tokio::sync::broadcast;

/// Description reported before the first successful `SetConfig`.
pub const NOT_CONFIGURED: &str = "plugin not configured yet (SetConfig has not been called)";

/// An event about a task, shown by Nomad as a "Driver" task event.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskEvent {
    /// Nomad's task id (`<alloc>/<task>/<random>`).
    pub task_id: String,
    /// Allocation id; with `task_name`, what Nomad routes the event by.
    pub alloc_id: String,
    /// Task name.
    pub task_name: String,
    /// When it happened.
    pub timestamp: SystemTime,
    /// Human-readable message.
    pub message: String,
    /// Extra details.
    pub annotations: BTreeMap<String, String>,
}

/// Events kept for Nomad while no `TaskEvents` stream is open.
pub const EVENT_BACKLOG_LIMIT: usize = 256;

/// Loss reports kept per live task for later subscribers.
pub const STICKY_EVENTS_PER_TASK: usize = 16;

/// Events buffered per live subscriber before a slow one skips ahead.
const LIVE_CAPACITY: usize = 256;

/// Task events on their way to Nomad.
///
/// Nomad opens `TaskEvents` once per plugin instance, and again after it
/// relaunches a plugin that exited; a restarted plugin's `RecoverTask` can
/// run before that stream is open, and the event it publishes (output the
/// daemon had discarded, say) would reach no one. An event published while
/// no stream is open is therefore kept, up to [`EVENT_BACKLOG_LIMIT`]
/// (oldest dropped first), and handed to the next subscriber before its
/// live events.
#[derive(Clone)]
pub struct TaskEventHub {
    inner: Arc<Mutex<Hub>>,
}

struct Hub {
    live: broadcast::Sender<TaskEvent>,
    backlog: VecDeque<TaskEvent>,
    /// Reports of lost output, by task, until the task is destroyed.
    sticky: BTreeMap<String, Vec<TaskEvent>>,
}

impl Default for TaskEventHub {
    fn default() -> Self {
        TaskEventHub {
            inner: Arc::new(Mutex::new(Hub {
                live: broadcast::channel(LIVE_CAPACITY).0,
                backlog: VecDeque::new(),
                sticky: BTreeMap::new(),
            })),
        }
    }
}

impl TaskEventHub {
    fn lock(&self) -> MutexGuard<'_, Hub> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends `event` to every open stream, or keeps it for the next one.
    pub fn publish(&self, event: TaskEvent) {
        let mut hub = self.lock();
        if hub.live.receiver_count() > 0 {
            let _ = hub.live.send(event);
            return;
        }
        if hub.backlog.len() == EVENT_BACKLOG_LIMIT {
            hub.backlog.pop_front();
        }
        hub.backlog.push_back(event);
    }

    /// Publishes a report that part of a task's output is lost, and keeps
    /// it, up to [`STICKY_EVENTS_PER_TASK`] per task, for every later
    /// subscriber until [`TaskEventHub::forget`]: a Nomad agent that
    /// restarts as the report is on its way (its stream dead but not yet
    /// closed) would otherwise never learn of the loss; the next agent
    /// process gets it again (random-faults-wide seed 797000035).
    pub fn publish_sticky(&self, event: TaskEvent) {
        {
            let mut hub = self.lock();
            let kept = hub.sticky.entry(event.task_id.clone()).or_default();
            if kept.len() < STICKY_EVENTS_PER_TASK {
                kept.push(event.clone());
            }
        }
        self.publish(event);
    }

    /// Drops the reports kept for `task_id` (it is destroyed).
    pub fn forget(&self, task_id: &str) {
        self.lock().sticky.remove(task_id);
    }

    /// The events kept while no stream was open, then the kept loss
    /// reports not among them, and every event published from now on.
    /// Taken under one lock, so nothing falls between them.
    pub fn subscribe(&self) -> (Vec<TaskEvent>, broadcast::Receiver<TaskEvent>) {
        let mut hub = self.lock();
        let live = hub.live.subscribe();
        let mut first: Vec<TaskEvent> = hub.backlog.drain(..).collect();
        let again: Vec<TaskEvent> = hub
            .sticky
            .values()
            .flatten()
            .filter(|kept| !first.contains(kept))
            .cloned()
            .collect();
        first.extend(again);
        (first, live)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(message: &str) -> TaskEvent {
        TaskEvent {
            task_id: "a/t/1".into(),
            alloc_id: "a".into(),
            task_name: "t".into(),
            timestamp: SystemTime::UNIX_EPOCH,
            message: message.into(),
            annotations: BTreeMap::new(),
        }
    }

    fn messages(events: Vec<TaskEvent>) -> Vec<String> {
        events.into_iter().map(|e| e.message).collect()
    }

    #[test]
    fn an_event_published_with_no_stream_open_goes_to_the_next_subscriber_first() {
        let hub = TaskEventHub::default();
        hub.publish(event("lost 10 bytes"));
        let (backlog, mut live) = hub.subscribe();
        assert_eq!(messages(backlog), ["lost 10 bytes"]);
        hub.publish(event("later"));
        assert_eq!(live.try_recv().unwrap().message, "later");
        // Handed over once: a second subscriber gets no backlog.
        let (backlog, _) = hub.subscribe();
        assert!(backlog.is_empty(), "{:?}", messages(backlog));
    }

    #[test]
    fn an_event_a_stream_received_is_not_kept_for_the_next() {
        let hub = TaskEventHub::default();
        let (_, first) = hub.subscribe();
        hub.publish(event("seen"));
        drop(first);
        let (backlog, _) = hub.subscribe();
        assert!(backlog.is_empty(), "{:?}", messages(backlog));
    }

    #[test]
    fn a_loss_report_reaches_every_later_subscriber_until_its_task_is_forgotten() {
        let hub = TaskEventHub::default();
        let (_, mut first) = hub.subscribe();
        hub.publish_sticky(event("8 bytes of stdout were lost"));
        hub.publish(event("ordinary"));
        assert_eq!(
            first.try_recv().unwrap().message,
            "8 bytes of stdout were lost"
        );
        // A new agent process subscribes while the first stream is still
        // open (dead, but not yet noticed): it gets the report, not the
        // ordinary event.
        let (again, _) = hub.subscribe();
        assert_eq!(messages(again), ["8 bytes of stdout were lost"]);
        hub.forget("a/t/1");
        let (after, _) = hub.subscribe();
        assert!(after.is_empty(), "{:?}", messages(after));
    }

    #[test]
    fn a_loss_report_kept_for_no_subscriber_is_handed_over_once() {
        let hub = TaskEventHub::default();
        hub.publish_sticky(event("lost"));
        let (first, _) = hub.subscribe();
        assert_eq!(messages(first), ["lost"]);
    }

    #[test]
    fn the_backlog_keeps_the_newest_events_up_to_its_limit() {
        let hub = TaskEventHub::default();
        for n in 0..EVENT_BACKLOG_LIMIT + 2 {
            hub.publish(event(&n.to_string()));
        }
        let (backlog, _) = hub.subscribe();
        let got = messages(backlog);
        assert_eq!(got.len(), EVENT_BACKLOG_LIMIT);
        assert_eq!(got[0], "2");
        assert_eq!(
            got[EVENT_BACKLOG_LIMIT - 1],
            (EVENT_BACKLOG_LIMIT + 1).to_string()
        );
    }
}
