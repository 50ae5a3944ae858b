//! Nomad's stats hook (`client/allocrunner/taskrunner/stats_hook.go`):
//! from the task's start (or recovery) until its exit, `TaskStats` with
//! the collection interval, every sample read; when the stream ends or
//! fails, `TaskStats` again after a back-off of 1 s, 4 s, then 5 s at most
//! (`1 << 2 * retry` seconds, capped at 5 s, the retry count never reset
//! while the hook lives), whatever the error.
//!
//! Two departures from Nomad, both to judge the plugin rather than
//! Nomad: Nomad's loop also sleeps the back-off before each *read* once it
//! has retried (so after a failure it reads samples late); here samples
//! are read as they arrive, and their arrival times are what the
//! invariants judge. And Nomad cancels the stream when the task exits;
//! here the agent keeps reading the stream that is open at the result for
//! up to [`STATS_END_WITHIN`], to see that the plugin ends it itself (a
//! stream left open would keep polling the daemon for a dead task).

use std::sync::Arc;
use std::time::Duration;

use elide_proto::hashicorp::nomad::plugins::drivers::proto as drivers;
use tokio::sync::watch;
use tokio_stream::StreamExt;

use super::plugin::Plugin;
use crate::observe::{Observations, StatsSeen};
use crate::trace::Trace;

/// Nomad's stats hook back-off limit.
pub const STATS_BACKOFF_LIMIT: Duration = Duration::from_secs(5);

/// How long after the task's result the agent waits for the plugin to
/// end an open `TaskStats` stream: the plugin ends it when it learns of
/// the exit, before it answers `WaitTask`, so one second is generous.
pub const STATS_END_WITHIN: Duration = Duration::from_secs(1);

/// One task's stats collection.
pub(super) struct StatsHook {
    pub(super) plugin: Arc<Plugin>,
    pub(super) seen: Observations,
    pub(super) trace: Trace,
    pub(super) who: String,
    pub(super) label: String,
    pub(super) task_id: String,
    pub(super) interval: Duration,
    /// Becomes true when the task's result arrived (Nomad's `Exited` hook).
    pub(super) exited: watch::Receiver<bool>,
}

/// Nomad's back-off before the `retry`-th new `TaskStats` call (0-based).
pub(super) fn backoff(retry: u32) -> Duration {
    Duration::from_secs(1u64 << (2 * retry.min(8))).min(STATS_BACKOFF_LIMIT)
}

impl StatsHook {
    pub(super) async fn run(mut self) {
        let mut retry = 0;
        loop {
            let request = drivers::TaskStatsRequest {
                task_id: self.task_id.clone(),
                collection_interval: Some(elide_proto::duration_to_proto(self.interval)),
            };
            let mut driver = self.plugin.driver();
            let opened = tokio::select! {
                opened = driver.task_stats(request) => opened,
                _ = self.exited.wait_for(|e| *e) => return,
            };
            match opened {
                Ok(response) => {
                    let mut stream = response.into_inner();
                    loop {
                        let next = tokio::select! {
                            next = stream.next() => Some(next),
                            _ = self.exited.wait_for(|e| *e) => None,
                        };
                        let Some(next) = next else {
                            self.drain(stream).await;
                            return;
                        };
                        match next {
                            Some(Ok(response)) => self.record(response),
                            Some(Err(status)) => {
                                self.note(format!("TaskStats stream failed: {}", status.code()));
                                break;
                            }
                            None => break,
                        }
                    }
                }
                Err(status) => self.note(format!(
                    "TaskStats failed: {} ({})",
                    status.code(),
                    status.message()
                )),
            }
            let wait = backoff(retry);
            retry += 1;
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.exited.wait_for(|e| *e) => return,
            }
        }
    }

    fn note(&self, line: String) {
        self.trace
            .record(&self.who, format!("{} {line}", self.label));
    }

    fn record(&self, response: drivers::TaskStatsResponse) {
        let stats = response.stats.unwrap_or_default();
        let rss_bytes = stats
            .agg_resource_usage
            .and_then(|u| u.memory)
            .map(|m| m.rss)
            .unwrap_or_default();
        let at = turmoil::sim_elapsed().unwrap_or_default();
        self.note(format!("stats rss={rss_bytes}"));
        self.seen.task(&self.task_id, |t| {
            t.stats.push(StatsSeen {
                at,
                task_id: stats.id,
                rss_bytes,
            })
        });
    }

    /// Reads the stream open at the task's result until the plugin ends it
    /// or [`STATS_END_WITHIN`] passes.
    async fn drain(&self, mut stream: tonic::Streaming<drivers::TaskStatsResponse>) {
        let deadline = tokio::time::Instant::now() + STATS_END_WITHIN;
        loop {
            match tokio::time::timeout_at(deadline, stream.next()).await {
                Ok(Some(Ok(response))) => self.record(response),
                Ok(Some(Err(_)) | None) => return,
                Err(_) => {
                    let at = turmoil::sim_elapsed().unwrap_or_default();
                    self.note("TaskStats stream still open after the result".into());
                    self.seen
                        .task(&self.task_id, |t| t.stats_left_open = Some(at));
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_back_off_is_nomads_one_four_five_five() {
        let waits: Vec<u64> = (0..5).map(|r| backoff(r).as_secs()).collect();
        assert_eq!(waits, vec![1, 4, 5, 5, 5]);
    }
}
