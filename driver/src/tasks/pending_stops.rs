//! Stops Nomad asked for tasks this plugin does not hold (yet): after a
//! plugin restart, `StopTask` can come before the task's `RecoverTask`. A
//! remembered stop is applied when the task is recovered, and makes the
//! execution's cancelled ending read as the stop Nomad asked for. The set
//! is bounded: beyond its limit the oldest is forgotten.
//!
//! Once the plugin is configured the set is also kept in
//! [`PENDING_STOPS_FILE`] under its state directory: a plugin that crashes
//! between such a `StopTask` and the recovery would otherwise leave the
//! next one taking the cancel for one from outside Nomad (random-faults
//! seed 797000027).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::intents::StopRequest;
use crate::host::StateFiles;

/// The file of pending stops in the plugin's state directory.
pub const PENDING_STOPS_FILE: &str = "pending-stops.json";

/// Remembered stops by task id, oldest forgotten first beyond `limit`.
#[derive(Debug)]
pub(super) struct PendingStops {
    limit: usize,
    /// Order of arrival of the next stop.
    next: u64,
    stops: BTreeMap<String, (u64, StopRequest)>,
    /// Where the set is kept, once the plugin is configured.
    path: Option<PathBuf>,
}

impl PendingStops {
    /// An empty set holding at most `limit` stops.
    pub(super) fn new(limit: usize) -> Self {
        PendingStops {
            limit,
            next: 0,
            stops: BTreeMap::new(),
            path: None,
        }
    }

    /// Keeps the set in `dir` from now on, adding the stops an earlier
    /// plugin process left there (older than any this one holds).
    pub(super) fn open(&mut self, dir: &Path, files: &dyn StateFiles) {
        let path = dir.join(PENDING_STOPS_FILE);
        if self.path.as_deref() == Some(path.as_path()) {
            return;
        }
        let earlier: Vec<(String, StopRequest)> = files
            .read(&path)
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        let mine = std::mem::take(&mut self.stops);
        self.next = 0;
        for (task_id, stop) in earlier {
            self.remember(&task_id, stop);
        }
        let mut mine: Vec<(String, (u64, StopRequest))> = mine.into_iter().collect();
        mine.sort_by_key(|(_, (order, _))| *order);
        for (task_id, (_, stop)) in mine {
            self.remember(&task_id, stop);
        }
        self.path = Some(path);
        self.save(files);
    }

    /// Writes the set to its file, oldest first (nothing before `open`).
    /// A failure is logged: the stops still hold in this process.
    pub(super) fn save(&self, files: &dyn StateFiles) {
        let Some(path) = &self.path else {
            return;
        };
        let mut list: Vec<(&String, &(u64, StopRequest))> = self.stops.iter().collect();
        list.sort_by_key(|(_, (order, _))| *order);
        let list: Vec<(&String, &StopRequest)> =
            list.into_iter().map(|(id, (_, stop))| (id, stop)).collect();
        let bytes = serde_json::to_vec(&list).unwrap_or_default();
        if let Err(e) = files.replace(path, &bytes) {
            tracing::warn!(path = %path.display(), error = %e, "could not record the pending stops");
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
    fn a_stop_kept_in_the_state_directory_reaches_the_next_plugin_process() {
        let dir = tempfile::tempdir().unwrap();
        let files = crate::host::LocalFiles;
        let mut first = PendingStops::new(4);
        // Asked before the plugin was configured, then kept in its file.
        first.remember("a", stop("SIGINT", 3));
        first.open(dir.path(), &files);
        first.remember("b", stop("SIGTERM", 5));
        first.save(&files);

        let mut next = PendingStops::new(4);
        next.remember("c", stop("SIGQUIT", 1));
        next.open(dir.path(), &files);
        assert_eq!(next.take("a").expect("kept").signal, "SIGINT");
        next.save(&files);
        let mut third = PendingStops::new(4);
        third.open(dir.path(), &files);
        assert!(third.take("a").is_none(), "taken, and saved as taken");
        assert_eq!(
            third.take("b").expect("kept").grace(),
            Duration::from_secs(5)
        );
        assert_eq!(third.take("c").expect("kept").signal, "SIGQUIT");
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
