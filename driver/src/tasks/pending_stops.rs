//! Stops Nomad asked for tasks this plugin does not hold (yet) and could
//! not deliver: after a plugin restart, `StopTask` can come before the
//! task's `RecoverTask`. A remembered stop is applied when the task is
//! recovered. The set is bounded: beyond its limit the oldest is forgotten
//! (the task's stop file in its directory still carries a stop that was
//! asked of an earlier plugin process).

use std::collections::BTreeMap;

use super::intents::StopRequest;

/// Remembered stops by task id, oldest forgotten first beyond `limit`.
#[derive(Debug)]
pub(super) struct PendingStops {
    limit: usize,
    /// Order of arrival of the next stop.
    next: u64,
    stops: BTreeMap<String, (u64, StopRequest)>,
}

impl PendingStops {
    /// An empty set holding at most `limit` stops.
    pub(super) fn new(limit: usize) -> Self {
        PendingStops {
            limit,
            next: 0,
            stops: BTreeMap::new(),
        }
    }

    /// Remembers `stop` for `task_id`, replacing an earlier one (the newest
    /// stop is the one Nomad means); forgets the oldest beyond the limit.
    pub(super) fn remember(&mut self, task_id: &str, stop: StopRequest) {
        self.stops.insert(task_id.to_owned(), (self.next, stop));
        self.next += 1;
        while self.stops.len() > self.limit {
            let oldest = self
                .stops
                .iter()
                .min_by_key(|(_, (order, _))| *order)
                .map(|(id, _)| id.clone());
            match oldest {
                Some(id) => self.stops.remove(&id),
                None => break,
            };
        }
    }

    /// The stop remembered for `task_id`, forgotten as it is taken.
    pub(super) fn take(&mut self, task_id: &str) -> Option<StopRequest> {
        self.stops.remove(task_id).map(|(_, stop)| stop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn stop(signal: &str, secs: u64) -> StopRequest {
        StopRequest::new(signal, Duration::from_secs(secs))
    }

    #[test]
    fn a_remembered_stop_is_taken_once() {
        let mut pending = PendingStops::new(4);
        pending.remember("a", stop("SIGTERM", 5));
        let taken = pending.take("a").expect("remembered");
        assert_eq!(
            (taken.signal.as_str(), taken.grace()),
            ("SIGTERM", Duration::from_secs(5))
        );
        assert!(pending.take("a").is_none(), "taken twice");
        assert!(pending.take("b").is_none());
    }

    #[test]
    fn a_later_stop_replaces_an_earlier_one_for_the_same_task() {
        let mut pending = PendingStops::new(4);
        pending.remember("a", stop("SIGINT", 5));
        pending.remember("a", stop("SIGKILL", 0));
        let taken = pending.take("a").expect("remembered");
        assert_eq!(taken.signal, "SIGKILL");
    }

    #[test]
    fn beyond_the_limit_the_oldest_is_forgotten() {
        let mut pending = PendingStops::new(2);
        pending.remember("first", stop("SIGINT", 1));
        pending.remember("second", stop("SIGINT", 2));
        // Renewed: now newer than "second".
        pending.remember("first", stop("SIGTERM", 3));
        pending.remember("third", stop("SIGINT", 4));
        assert!(pending.take("second").is_none(), "the oldest stays");
        assert_eq!(pending.take("first").expect("kept").signal, "SIGTERM");
        assert_eq!(
            pending.take("third").expect("kept").grace(),
            Duration::from_secs(4)
        );
    }
}
