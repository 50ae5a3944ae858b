//! A started job's tasks, as a Nomad task runner follows them: the first
//! healthy fingerprint, the driver's task events, `WaitTask` for each task,
//! `StopTask` with its `kill_signal`/`kill_timeout` on interruption, then
//! `DestroyTask` and the end of its output.

use elide_proto::hashicorp::nomad::plugins::drivers::proto::fingerprint_response::HealthState;
use elide_proto::hashicorp::nomad::plugins::drivers::proto::{
    DestroyTaskRequest, FingerprintRequest, StopTaskRequest, TaskEventsRequest, WaitTaskRequest,
    WaitTaskResponse,
};
use std::time::Duration;

use tokio::sync::watch;
use tokio_stream::StreamExt;

use crate::jobspec::{JobType, Task};
use crate::logmon::FifoForwarder;
use crate::plugin_host::PluginHost;
use crate::run_error::{bounded, rpc, RunError, RPC_LIMIT};

/// How long the plugin may take to report a HEALTHY fingerprint.
pub const HEALTHY_LIMIT: Duration = Duration::from_secs(30);
/// Extra time, beyond `kill_timeout`, for a stopped task to report its exit.
pub const STOP_MARGIN: Duration = Duration::from_secs(15);
/// How long a task's output may trail its exit.
pub const OUTPUT_DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// How one task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskOutcome {
    /// The task.
    pub task: String,
    /// Its exit code (128+N for signal N; 1 for a driver error with code 0).
    pub exit_code: i32,
}

/// A task whose `StartTask` succeeded, with its output forwarders.
pub(crate) struct Running {
    pub(crate) task: Task,
    pub(crate) id: String,
    pub(crate) stdout: FifoForwarder,
    pub(crate) stderr: FifoForwarder,
}

/// Waits for every task to exit; on interrupt stops the rest with their
/// `kill_signal`/`kill_timeout`. Always destroys every task.
pub(crate) async fn follow_tasks(
    plugin: &mut PluginHost,
    job_type: JobType,
    running: Vec<Running>,
    interrupt: &mut watch::Receiver<bool>,
) -> Vec<TaskOutcome> {
    let mut waits: futures::stream::FuturesUnordered<_> = running
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut driver = plugin.driver.clone();
            let id = r.id.clone();
            async move {
                let result = driver
                    .wait_task(WaitTaskRequest { task_id: id })
                    .await
                    .map(tonic::Response::into_inner);
                (i, result)
            }
        })
        .collect();
    let mut outcomes: Vec<Option<i32>> = vec![None; running.len()];
    let mut stop_deadline: Option<tokio::time::Instant> = None;
    while !waits.is_empty() {
        tokio::select! {
            Some((i, result)) = waits.next() => {
                let r = &running[i];
                let code = exit_code(&r.task.name, result);
                outcomes[i] = Some(code);
                if job_type == JobType::Service && stop_deadline.is_none() {
                    tracing::warn!(
                        "service task {} exited with code {code}; Nomad would restart it under the group's restart policy, elide-run does not",
                        r.task.name
                    );
                } else {
                    tracing::info!("task {} exited with code {code}", r.task.name);
                }
            }
            _ = interrupt.wait_for(|v| *v), if stop_deadline.is_none() => {
                let longest = running.iter().map(|r| r.task.kill_timeout).max().unwrap_or_default();
                stop_deadline = Some(tokio::time::Instant::now() + longest + STOP_MARGIN);
                tracing::info!("stopping {} task(s)", outcomes.iter().filter(|o| o.is_none()).count());
                let stops = running.iter().zip(&outcomes).filter(|(_, o)| o.is_none()).map(|(r, _)| {
                    let mut driver = plugin.driver.clone();
                    let request = StopTaskRequest {
                        task_id: r.id.clone(),
                        timeout: Some(elide_proto::duration_to_proto(r.task.kill_timeout)),
                        signal: r.task.kill_signal.clone(),
                    };
                    let limit = r.task.kill_timeout + STOP_MARGIN;
                    let name = r.task.name.clone();
                    async move {
                        if let Err(e) = bounded(&format!("StopTask({name})"), limit, driver.stop_task(request)).await {
                            tracing::warn!("{e}");
                        }
                    }
                });
                // Nomad waits for WaitTask after StopTask; the stops run
                // concurrently while the waits below keep being polled.
                tokio::spawn(futures::future::join_all(stops.collect::<Vec<_>>()));
            }
            _ = sleep_until(stop_deadline) => {
                tracing::warn!("tasks did not report their exit in time after StopTask; destroying them");
                break;
            }
        }
    }
    let mut result = Vec::new();
    for (r, code) in running.into_iter().zip(outcomes) {
        // As Nomad: DestroyTask after the exit, then logmon waits for EOF.
        if let Err(e) = bounded(
            &format!("DestroyTask({})", r.task.name),
            RPC_LIMIT,
            plugin.driver.destroy_task(DestroyTaskRequest {
                task_id: r.id.clone(),
                force: true,
            }),
        )
        .await
        {
            tracing::warn!("{e}");
        }
        let (out, err) = (r.stdout, r.stderr);
        let drained = tokio::task::spawn_blocking(move || {
            let stdout_done = out.finish(OUTPUT_DRAIN_LIMIT);
            stdout_done & err.finish(OUTPUT_DRAIN_LIMIT)
        })
        .await
        .unwrap_or(false);
        if !drained {
            tracing::debug!(
                "task {}: output FIFO not closed by the driver in time",
                r.task.name
            );
        }
        result.push(TaskOutcome {
            task: r.task.name,
            exit_code: code.unwrap_or(1),
        });
    }
    result
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// The task's exit code as a process would report it (the shared
/// mapping), logging what Nomad would show next to it.
fn exit_code(task: &str, result: Result<WaitTaskResponse, tonic::Status>) -> i32 {
    match result {
        Err(status) => {
            tracing::error!("WaitTask({task}) failed: {}", status.message());
            1
        }
        Ok(response) => {
            if !response.err.is_empty() {
                tracing::error!("task {task}: {}", response.err);
            }
            if response.result.as_ref().is_some_and(|r| r.oom_killed) {
                tracing::error!("task {task} was killed for exceeding its memory limit");
            }
            elide_nomad_client::exit_code(&response)
        }
    }
}

/// Waits for the first HEALTHY fingerprint, keeping the stream open
/// afterwards (as Nomad's driver manager does).
pub(crate) async fn wait_healthy(
    plugin: &mut PluginHost,
    interrupt: &mut watch::Receiver<bool>,
) -> Result<(), RunError> {
    let mut stream = bounded(
        "Fingerprint",
        RPC_LIMIT,
        plugin.driver.fingerprint(FingerprintRequest {}),
    )
    .await?;
    let mut description = "no fingerprint received".to_owned();
    let deadline = tokio::time::Instant::now() + HEALTHY_LIMIT;
    loop {
        tokio::select! {
            message = stream.next() => match message {
                Some(Ok(f)) if f.health == HealthState::Healthy as i32 => {
                    tracing::debug!("driver healthy: {}", f.health_description);
                    tokio::spawn(async move { while stream.next().await.is_some() {} });
                    return Ok(());
                }
                Some(Ok(f)) => {
                    description = if f.err.is_empty() { f.health_description } else { f.err };
                    tracing::debug!("driver not healthy yet: {description}");
                }
                Some(Err(status)) => return Err(rpc("Fingerprint")(status)),
                None => return Err(RunError::Rpc { call: "Fingerprint".into(), message: "stream ended".into() }),
            },
            _ = tokio::time::sleep_until(deadline) => {
                return Err(RunError::Unhealthy { limit: HEALTHY_LIMIT, description });
            }
            _ = interrupt.wait_for(|v| *v) => return Err(RunError::Interrupted),
        }
    }
}

/// Logs the driver's task events (Nomad shows them as task events).
pub(crate) fn follow_task_events(plugin: &PluginHost) {
    let mut driver = plugin.driver.clone();
    tokio::spawn(async move {
        let Ok(response) = driver.task_events(TaskEventsRequest {}).await else {
            return;
        };
        let mut stream = response.into_inner();
        while let Some(Ok(event)) = stream.next().await {
            tracing::info!("task {}: driver event: {}", event.task_name, event.message);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_wait_is_exit_1_and_a_result_maps_as_a_process_exit() {
        use elide_proto::hashicorp::nomad::plugins::drivers::proto::ExitResult;
        let ok = |exit_code, signal, err: &str| {
            Ok(WaitTaskResponse {
                result: Some(ExitResult {
                    exit_code,
                    signal,
                    oom_killed: false,
                }),
                err: err.into(),
            })
        };
        assert_eq!(exit_code("t", ok(3, 0, "")), 3);
        assert_eq!(exit_code("t", ok(0, 15, "")), 143);
        assert_eq!(exit_code("t", ok(-1, 0, "execution lost")), 1);
        assert_eq!(exit_code("t", Err(tonic::Status::not_found("x"))), 1);
    }
}
