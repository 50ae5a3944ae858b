//! The per-session log of execution status changes that watchers resume from.

use std::collections::VecDeque;

use elide_proto::elide::daemon::v1 as pb;

/// What a watcher gets when it asks for events after some sequence number.
#[derive(Debug, Clone, PartialEq)]
pub struct EventBatch {
    /// Set when events the watcher has not seen were dropped from retention:
    /// `(first_missing_seq, first_available_seq)`.
    pub gap: Option<(u64, u64)>,
    /// Retained events newer than the cursor, oldest first.
    pub events: Vec<pb::ExecutionStatus>,
}

/// A bounded, ordered log of status events with increasing sequence numbers.
///
/// After a daemon restart the log starts with a *compacted history*: the
/// last persisted status of every retained execution, at its original
/// sequence number. Sequence numbers between them were intermediate states
/// that no longer matter, so they do not count as missing.
#[derive(Debug)]
pub struct EventLog {
    cap: usize,
    /// Sequence number the next event gets.
    next_seq: u64,
    /// Every event that matters with a seq at or above this is retained.
    complete_from: u64,
    events: VecDeque<pb::ExecutionStatus>,
}

impl EventLog {
    /// An empty log whose first event gets `first_seq` (at least 1).
    pub fn new(cap: usize, first_seq: u64) -> Self {
        EventLog {
            cap: cap.max(1),
            next_seq: first_seq.max(1),
            complete_from: 1,
            events: VecDeque::new(),
        }
    }

    /// A log that starts with `history` (statuses keeping their own seq, all
    /// below `first_seq`); new events get `first_seq` onwards.
    pub fn with_history(cap: usize, first_seq: u64, mut history: Vec<pb::ExecutionStatus>) -> Self {
        history.sort_by_key(|s| s.seq);
        let mut log = EventLog::new(cap, first_seq);
        for status in history
            .into_iter()
            .filter(|s| s.seq > 0 && s.seq < log.next_seq)
        {
            log.events.push_back(status);
        }
        log.trim();
        log
    }

    fn trim(&mut self) {
        while self.events.len() > self.cap {
            if let Some(dropped) = self.events.pop_front() {
                self.complete_from = dropped.seq + 1;
            }
        }
    }

    /// Sequence number of the newest event (0 before any).
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// Appends `status`, stamping it with the next sequence number, which is
    /// returned.
    pub fn push(&mut self, mut status: pb::ExecutionStatus) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        status.seq = seq;
        self.events.push_back(status);
        self.trim();
        seq
    }

    /// Events with `seq > after`, and whether some of them were dropped.
    pub fn after(&self, after: u64) -> EventBatch {
        let first_available = self.events.front().map_or(self.next_seq, |e| e.seq);
        let gap = if after == 0 {
            // "Everything retained": nothing was promised before that.
            None
        } else if after >= self.next_seq {
            // A cursor from the future: it belongs to another log (for
            // example an older daemon instance); the client must resync.
            Some((0, first_available))
        } else if after + 1 < self.complete_from {
            Some((after + 1, first_available))
        } else {
            None
        };
        let events = self
            .events
            .iter()
            .filter(|e| e.seq > after)
            .cloned()
            .collect();
        EventBatch { gap, events }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(id: &str) -> pb::ExecutionStatus {
        pb::ExecutionStatus {
            execution_id: id.into(),
            ..Default::default()
        }
    }

    #[test]
    fn resumes_after_a_sequence_number() {
        let mut log = EventLog::new(10, 1);
        assert_eq!(log.push(ev("a")), 1);
        assert_eq!(log.push(ev("b")), 2);
        assert_eq!(log.push(ev("c")), 3);
        let batch = log.after(1);
        assert_eq!(batch.gap, None);
        assert_eq!(
            batch.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![2, 3]
        );
        assert_eq!(
            log.after(3),
            EventBatch {
                gap: None,
                events: vec![]
            }
        );
        assert_eq!(log.after(0).events.len(), 3);
    }

    #[test]
    fn reports_dropped_events_as_a_gap() {
        let mut log = EventLog::new(2, 1);
        for id in ["a", "b", "c", "d"] {
            log.push(ev(id));
        }
        let batch = log.after(1);
        assert_eq!(batch.gap, Some((2, 3)));
        assert_eq!(
            batch.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![3, 4]
        );
        assert_eq!(log.after(2).gap, None);
    }

    #[test]
    fn a_compacted_history_is_not_a_gap() {
        let old = |id: &str, seq| pb::ExecutionStatus {
            execution_id: id.into(),
            seq,
            ..Default::default()
        };
        let mut log = EventLog::with_history(10, 1025, vec![old("b", 9), old("a", 4)]);
        assert_eq!(log.push(ev("c")), 1025);
        let batch = log.after(5);
        assert_eq!(batch.gap, None);
        assert_eq!(
            batch.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![9, 1025]
        );
        assert_eq!(log.after(2).events.len(), 3);
    }

    #[test]
    fn a_cursor_from_another_log_forces_a_resync() {
        let mut log = EventLog::new(10, 100);
        log.push(ev("a"));
        let batch = log.after(5000);
        assert_eq!(batch.gap, Some((0, 100)));
        // A zero cursor asks for whatever is retained: nothing is missing.
        assert_eq!(log.after(0).gap, None);
    }
}
