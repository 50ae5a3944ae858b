//! `TaskStats`: the stream of resource samples of a running task.

use std::time::Duration;

use elide_proto::elide::daemon::v1 as pb;
use futures::Stream;
use tokio::time::Instant;

use super::{stats, ResourceSample, TaskError, TaskManager};

impl TaskManager {
    /// `TaskStats`: a sample now and every `interval` until the task ends
    /// (or the daemon stops answering, which ends the stream; Nomad calls
    /// again). The stream ends as soon as the driver learns of the exit,
    /// also during a daemon call, so no sample follows the task's result.
    /// Fails at once for unknown tasks.
    pub fn stats(
        &self,
        task_id: &str,
        interval: Duration,
    ) -> Result<impl Stream<Item = ResourceSample> + Send + 'static, TaskError> {
        let task = self.task(task_id)?;
        let interval = interval.max(Duration::from_millis(100));
        // The execution measured: the task's own (a broken driver's: another's).
        let measured = if crate::broken!(ReportsAnotherTasksStats) {
            let other = self.table().values().find(|t| t.id != task.id).cloned();
            other.unwrap_or_else(|| task.clone())
        } else {
            task.clone()
        };
        let keeps_open = crate::broken!(KeepsStatsStreamOpen);
        let state = (task, stats::CpuRate::since(Instant::now()), true, None);
        let clock = self.host.clock.clone();
        let stream = futures::stream::unfold(
            state,
            move |(task, mut rate, first, last): (_, _, _, Option<ResourceSample>)| {
                let clock = clock.clone();
                let measured = measured.clone();
                async move {
                    if !first {
                        let mut exit = task.exit.clone();
                        tokio::select! {
                            biased;
                            _ = tokio::time::sleep(interval) => {}
                            _ = exit.wait_for(Option::is_some), if !keeps_open => return None,
                        }
                    } else {
                        rate = stats::CpuRate::since(task.started_instant);
                    }
                    if task.outcome().is_some() {
                        // A broken driver repeats its last figures instead.
                        let last = last?;
                        return Some((last.clone(), (task, rate, false, Some(last))));
                    }
                    let request = pb::GetExecutionMetricsRequest {
                        session_id: measured.state.session_id.clone(),
                        execution_id: measured.state.execution_id.clone(),
                    };
                    let asked = task.session.link.unary(request, |mut c, r| async move {
                        c.get_execution_metrics(r).await
                    });
                    // The exit ends the stream even while the daemon is slow
                    // to answer: a sample that comes after the task's result
                    // is not one Nomad wants (simulation: stats-signals-random
                    // seeds 5037 and 5074).
                    let mut exit = task.exit.clone();
                    let metrics = tokio::select! {
                        biased;
                        _ = exit.wait_for(Option::is_some), if !keeps_open => return None,
                        metrics = asked => metrics,
                    };
                    match metrics {
                        Ok(response) => {
                            let sample =
                                rate.sample(&response.metrics.unwrap_or_default(), clock.now());
                            let kept = keeps_open.then(|| sample.clone());
                            Some((sample, (task, rate, false, kept)))
                        }
                        Err(e) => {
                            tracing::debug!(task_id = %task.id, error = %e, "metrics unavailable; ending the stats stream");
                            None
                        }
                    }
                }
            },
        );
        Ok(stream)
    }
}
