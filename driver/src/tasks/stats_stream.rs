//! `TaskStats`: the stream of resource samples of a running task.

use std::time::Duration;

use elide_proto::elide::daemon::v1 as pb;
use futures::Stream;
use tokio::time::Instant;

use super::{stats, ResourceSample, TaskError, TaskManager};

impl TaskManager {
    /// `TaskStats`: a sample now and every `interval` until the task ends
    /// (or the daemon stops answering, which ends the stream; Nomad calls
    /// again). Fails at once for unknown tasks.
    pub fn stats(
        &self,
        task_id: &str,
        interval: Duration,
    ) -> Result<impl Stream<Item = ResourceSample> + Send + 'static, TaskError> {
        let task = self.task(task_id)?;
        let interval = interval.max(Duration::from_millis(100));
        let state = (task, stats::CpuRate::since(Instant::now()), true);
        let clock = self.host.clock.clone();
        let stream = futures::stream::unfold(state, move |(task, mut rate, first)| {
            let clock = clock.clone();
            async move {
                if !first {
                    let mut exit = task.exit.clone();
                    tokio::select! {
                        biased;
                        _ = tokio::time::sleep(interval) => {}
                        _ = exit.wait_for(Option::is_some) => return None,
                    }
                } else {
                    rate = stats::CpuRate::since(task.started_instant);
                }
                if task.outcome().is_some() {
                    return None;
                }
                let request = pb::GetExecutionMetricsRequest {
                    session_id: task.state.session_id.clone(),
                    execution_id: task.state.execution_id.clone(),
                };
                let metrics = task
                    .session
                    .link
                    .unary(request, |mut c, r| async move {
                        c.get_execution_metrics(r).await
                    })
                    .await;
                match metrics {
                    Ok(response) => {
                        let sample =
                            rate.sample(&response.metrics.unwrap_or_default(), clock.now());
                        Some((sample, (task, rate, false)))
                    }
                    Err(e) => {
                        tracing::debug!(task_id = %task.id, error = %e, "metrics unavailable; ending the stats stream");
                        None
                    }
                }
            }
        });
        Ok(stream)
    }
}
