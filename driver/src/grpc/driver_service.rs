//! `hashicorp.nomad.plugins.drivers.proto.Driver`: translates Nomad's RPCs
//! to the driver state in [`crate::driver`] and back. No decision lives
//! here beyond the choice of status codes.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use elide_proto::hashicorp::nomad::plugins::drivers::proto::{
    cpu_usage,
    driver_capabilities::{FsIsolation, MountConfigs},
    driver_server::Driver,
    fingerprint_response::HealthState,
    memory_usage,
    network_isolation_spec::NetworkIsolationMode,
    start_task_response, CapabilitiesRequest, CapabilitiesResponse, CpuUsage, CreateNetworkRequest,
    CreateNetworkResponse, DestroyNetworkRequest, DestroyNetworkResponse, DestroyTaskRequest,
    DestroyTaskResponse, DriverCapabilities, DriverTaskEvent, ExecTaskRequest, ExecTaskResponse,
    ExecTaskStreamingRequest, ExecTaskStreamingResponse, ExitResult, FingerprintRequest,
    FingerprintResponse, InitRequest, InitResponse, InspectTaskRequest, InspectTaskResponse,
    MemoryUsage, RecoverTaskRequest, RecoverTaskResponse, ShutdownRequest, ShutdownResponse,
    SignalTaskRequest, SignalTaskResponse, StartTaskRequest, StartTaskResponse, StopTaskRequest,
    StopTaskResponse, TaskConfigSchemaRequest, TaskConfigSchemaResponse, TaskDriverStatus,
    TaskEventsRequest, TaskResourceUsage, TaskState, TaskStats, TaskStatsRequest,
    TaskStatsResponse, TaskStatus, WaitTaskRequest, WaitTaskResponse,
};
use elide_proto::hashicorp::nomad::plugins::shared::structs::{attribute, Attribute};
use futures::{Stream, StreamExt};
use prost_types::Timestamp;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{BroadcastStream, ReceiverStream};
use tonic::{Code, Request, Response, Status, Streaming};

use crate::driver::ElideDriver;
use crate::plugin_config::PluginConfig;
use crate::probe::{AttributeValue, DaemonHealth};
use crate::task_config;
use crate::tasks::TaskEvent;
use crate::tasks::{ExitOutcome, NodeCompute, ResourceSample, TaskError};
use elide_proto::recoverable;

/// How often the fingerprint is re-sent when nothing changed (Go drivers
/// use 30 s; duplicates are cheap for the client).
pub const FINGERPRINT_INTERVAL: Duration = Duration::from_secs(30);

/// How often daemon health is checked again while it is unhealthy (a
/// change is sent at once; an unchanged answer only every
/// [`FINGERPRINT_INTERVAL`]).
pub const UNHEALTHY_RECHECK_INTERVAL: Duration = Duration::from_secs(2);

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The Driver service over the shared driver state.
pub struct DriverService {
    driver: Arc<ElideDriver>,
    fingerprint_interval: Duration,
}

/// How long `Driver.Shutdown` waits for task forwarders to stop (Nomad
/// gives the call 2 s).
pub const SHUTDOWN_DETACH_LIMIT: Duration = Duration::from_millis(1500);

impl DriverService {
    /// A service for `driver`, re-fingerprinting every `fingerprint_interval`.
    pub fn new(driver: Arc<ElideDriver>, fingerprint_interval: Duration) -> Self {
        DriverService {
            driver,
            fingerprint_interval,
        }
    }
}

/// What the driver advertises. `fs_isolation = NONE`: the snippets run in
/// the shared daemon, so Nomad's task-dir paths in the environment are host
/// paths; `NO_MOUNTS`: the driver cannot bind volumes into a daemon session.
pub fn capabilities() -> DriverCapabilities {
    DriverCapabilities {
        send_signals: true,
        exec: true,
        fs_isolation: FsIsolation::None as i32,
        network_isolation_modes: vec![NetworkIsolationMode::Host as i32],
        must_create_network: false,
        mount_configs: MountConfigs::NoMounts as i32,
        disable_log_collection: false,
        dynamic_workload_users: false,
    }
}

/// The fingerprint message for a health observation.
pub fn fingerprint_response(health: DaemonHealth) -> FingerprintResponse {
    match health {
        DaemonHealth::Healthy { attributes } => FingerprintResponse {
            attributes: attributes
                .into_iter()
                .map(|(key, value)| (key, attribute_of(value)))
                .collect(),
            health: HealthState::Healthy as i32,
            health_description: "Healthy".to_owned(),
            err: String::new(),
        },
        DaemonHealth::Unhealthy { description } => FingerprintResponse {
            attributes: BTreeMap::new(),
            health: HealthState::Unhealthy as i32,
            health_description: description,
            err: String::new(),
        },
    }
}

fn attribute_of(value: AttributeValue) -> Attribute {
    let value = match value {
        AttributeValue::String(s) => attribute::Value::StringVal(s),
        AttributeValue::Int(i) => attribute::Value::IntVal(i),
        AttributeValue::Float(f) => attribute::Value::FloatVal(f),
        AttributeValue::Bool(b) => attribute::Value::BoolVal(b),
    };
    Attribute {
        value: Some(value),
        unit: String::new(),
    }
}

fn task_event_message(event: TaskEvent) -> DriverTaskEvent {
    DriverTaskEvent {
        task_id: event.task_id,
        alloc_id: event.alloc_id,
        task_name: event.task_name,
        timestamp: Some(event.timestamp.into()),
        message: event.message,
        annotations: event.annotations.into_iter().collect(),
    }
}

/// How long StartTask and RecoverTask wait for `SetConfig` on a plugin
/// that has none yet. Nomad configures a plugin right after launching it,
/// so a task call that races that (a restarted plugin, its task runners
/// already recovering) waits for it rather than failing the task.
pub const CONFIG_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl DriverService {
    async fn configured(&self) -> Result<Arc<PluginConfig>, Status> {
        let mut config = self.driver.watch_config();
        let arrived = tokio::time::timeout(CONFIG_WAIT, config.wait_for(Option::is_some)).await;
        match arrived {
            Ok(Ok(config)) => Ok(config.clone().expect("waited for a config")),
            _ => Err(task_status(crate::tasks::TaskError::NotConfigured)),
        }
    }
}

/// The status for a lifecycle error. Never UNAVAILABLE or CANCELED (Nomad
/// reads those as "the plugin is dying"); a `RecoverableError` detail on
/// everything StartTask can fail with.
pub(super) fn task_status(error: TaskError) -> Status {
    let message = error.to_string();
    match error {
        // Transient (a restarted plugin answers before Nomad configured it):
        // without the detail Nomad would fail the task instead of retrying.
        TaskError::NotConfigured => {
            recoverable::with_recoverable(Code::FailedPrecondition, message, true)
        }
        TaskError::InvalidConfig(_) => {
            recoverable::with_recoverable(Code::InvalidArgument, message, false)
        }
        TaskError::Daemon { recoverable, .. } => {
            recoverable::with_recoverable(Code::FailedPrecondition, message, recoverable)
        }
        TaskError::AlreadyStarted(_) => {
            recoverable::with_recoverable(Code::FailedPrecondition, message, false)
        }
        TaskError::NotFound(_) => Status::not_found(message),
        TaskError::Precondition(_) => Status::failed_precondition(message),
    }
}

fn exit_result(outcome: &ExitOutcome) -> ExitResult {
    ExitResult {
        exit_code: outcome.exit_code,
        signal: outcome.signal,
        oom_killed: outcome.oom_killed,
    }
}

/// Go's zero `time.Time` (0001-01-01T00:00:00Z), what Go drivers send for
/// "not completed"; the client rejects an unset timestamp.
fn go_zero_time() -> Timestamp {
    Timestamp {
        seconds: -62_135_596_800,
        nanos: 0,
    }
}

/// A fully populated `TaskStats`: timestamp, aggregate usage with CPU and
/// memory, `measured_fields` listing only what was really measured, and an
/// (empty, never null-valued) per-pid map. `total_ticks` needs the node's
/// compute from `SetConfig`; without it, it is 0 and not listed.
fn task_stats(task_id: &str, sample: &ResourceSample, compute: Option<NodeCompute>) -> TaskStats {
    use cpu_usage::Fields as Cpu;
    use memory_usage::Fields as Memory;
    let total_ticks = compute.map(|c| c.ticks(sample.percent()));
    let mut cpu_measured = vec![
        Cpu::SystemMode as i32,
        Cpu::UserMode as i32,
        Cpu::Percent as i32,
    ];
    if total_ticks.is_some() {
        cpu_measured.push(Cpu::TotalTicks as i32);
    }
    let memory_measured = [
        ("memory_rss", Memory::Rss),
        ("memory_cache", Memory::Cache),
        ("memory_peak", Memory::MaxUsage),
        ("memory_usage", Memory::Usage),
    ]
    .into_iter()
    .filter(|(name, _)| sample.measured.iter().any(|m| m == name))
    .map(|(_, field)| field as i32)
    .collect();
    let usage = TaskResourceUsage {
        cpu: Some(CpuUsage {
            system_mode: sample.system_percent,
            user_mode: sample.user_percent,
            total_ticks: total_ticks.unwrap_or(0.0),
            throttled_periods: 0,
            throttled_time: 0,
            percent: sample.percent(),
            measured_fields: cpu_measured,
        }),
        memory: Some(MemoryUsage {
            rss: sample.rss_bytes,
            cache: sample.cache_bytes,
            max_usage: sample.peak_rss_bytes,
            kernel_usage: 0,
            kernel_max_usage: 0,
            usage: sample.usage_bytes,
            swap: 0,
            measured_fields: memory_measured,
        }),
    };
    TaskStats {
        id: task_id.to_owned(),
        timestamp: Some(sample.timestamp.into()),
        agg_resource_usage: Some(usage),
        resource_usage_by_pid: BTreeMap::new(),
    }
}

#[tonic::async_trait]
impl Driver for DriverService {
    type FingerprintStream = BoxStream<FingerprintResponse>;
    type TaskStatsStream = BoxStream<TaskStatsResponse>;
    type TaskEventsStream = BoxStream<DriverTaskEvent>;
    type ExecTaskStreamingStream = BoxStream<ExecTaskStreamingResponse>;

    async fn init(&self, _request: Request<InitRequest>) -> Result<Response<InitResponse>, Status> {
        self.driver
            .init()
            .await
            .map_err(Status::failed_precondition)?;
        Ok(Response::new(InitResponse {}))
    }

    async fn task_config_schema(
        &self,
        _request: Request<TaskConfigSchemaRequest>,
    ) -> Result<Response<TaskConfigSchemaResponse>, Status> {
        Ok(Response::new(TaskConfigSchemaResponse {
            spec: Some(task_config::schema()),
        }))
    }

    async fn capabilities(
        &self,
        _request: Request<CapabilitiesRequest>,
    ) -> Result<Response<CapabilitiesResponse>, Status> {
        Ok(Response::new(CapabilitiesResponse {
            capabilities: Some(capabilities()),
        }))
    }

    async fn fingerprint(
        &self,
        _request: Request<FingerprintRequest>,
    ) -> Result<Response<Self::FingerprintStream>, Status> {
        // The stream never completes: Nomad re-dispenses the plugin in a
        // tight loop when it does. The loop ends when the client goes away.
        let (sender, receiver) = mpsc::channel(1);
        let driver = self.driver.clone();
        let interval = self.fingerprint_interval;
        tokio::spawn(async move {
            let mut config_changes = driver.watch_config();
            // A supervised daemon starting or dying changes health at once.
            let mut supervision = driver.watch_supervision();
            let mut last_sent: Option<(FingerprintResponse, tokio::time::Instant)> = None;
            loop {
                let response = fingerprint_response(driver.health().await);
                let healthy = response.health() == HealthState::Healthy;
                // Unchanged answers are re-sent only every `interval`.
                let due = match &last_sent {
                    Some((last, at)) => *last != response || at.elapsed() >= interval,
                    None => true,
                };
                if due {
                    if sender.send(Ok(response.clone())).await.is_err() {
                        return;
                    }
                    last_sent = Some((response, tokio::time::Instant::now()));
                }
                // While unhealthy, look again sooner: the daemon may be
                // starting (systemd, or another plugin process supervising
                // it), and the node should not wait a whole interval.
                let next = if healthy {
                    interval
                } else {
                    interval.min(UNHEALTHY_RECHECK_INTERVAL)
                };
                tokio::select! {
                    biased;
                    _ = sender.closed() => return,
                    _ = tokio::time::sleep(next) => {}
                    changed = config_changes.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                    changed = supervision.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn recover_task(
        &self,
        request: Request<RecoverTaskRequest>,
    ) -> Result<Response<RecoverTaskResponse>, Status> {
        let config = self.configured().await?;
        self.driver.ensure_supervised(&config);
        // task_id is never set by Nomad: the id is handle.config.id.
        let handle = request
            .into_inner()
            .handle
            .ok_or_else(|| Status::invalid_argument("RecoverTask without a handle"))?;
        self.driver
            .tasks()
            .recover(&config, handle)
            .await
            .map_err(task_status)?;
        Ok(Response::new(RecoverTaskResponse {}))
    }

    async fn start_task(
        &self,
        request: Request<StartTaskRequest>,
    ) -> Result<Response<StartTaskResponse>, Status> {
        let config = self.configured().await?;
        self.driver.ensure_supervised(&config);
        let task = request
            .into_inner()
            .task
            .ok_or_else(|| Status::invalid_argument("StartTask without a task"))?;
        let started = self
            .driver
            .tasks()
            .start(&config, task)
            .await
            .map_err(task_status)?;
        Ok(Response::new(StartTaskResponse {
            result: start_task_response::Result::Success as i32,
            driver_error_msg: String::new(),
            handle: Some(started.handle),
            network_override: None,
        }))
    }

    async fn wait_task(
        &self,
        request: Request<WaitTaskRequest>,
    ) -> Result<Response<WaitTaskResponse>, Status> {
        let task_id = request.into_inner().task_id;
        let outcome = self
            .driver
            .tasks()
            .wait(&task_id)
            .await
            .map_err(task_status)?;
        Ok(Response::new(WaitTaskResponse {
            err: outcome.err.clone(),
            // Always set: an unset result crashes Nomad 1.9.0-1.11.2.
            result: Some(exit_result(&outcome)),
        }))
    }

    async fn stop_task(
        &self,
        request: Request<StopTaskRequest>,
    ) -> Result<Response<StopTaskResponse>, Status> {
        let request = request.into_inner();
        let timeout = request
            .timeout
            .map(|d| elide_proto::duration_from_proto(&d))
            .unwrap_or_default();
        let config = self.driver.config();
        self.driver
            .tasks()
            .stop(
                config.as_deref(),
                &request.task_id,
                timeout,
                &request.signal,
            )
            .await
            .map_err(task_status)?;
        Ok(Response::new(StopTaskResponse {}))
    }

    async fn destroy_task(
        &self,
        request: Request<DestroyTaskRequest>,
    ) -> Result<Response<DestroyTaskResponse>, Status> {
        let request = request.into_inner();
        let config = self.driver.config();
        self.driver
            .tasks()
            .destroy(config.as_deref(), &request.task_id, request.force)
            .await
            .map_err(task_status)?;
        Ok(Response::new(DestroyTaskResponse {}))
    }

    async fn inspect_task(
        &self,
        request: Request<InspectTaskRequest>,
    ) -> Result<Response<InspectTaskResponse>, Status> {
        let snapshot = self
            .driver
            .tasks()
            .inspect(&request.into_inner().task_id)
            .map_err(task_status)?;
        let (state, completed_at, result) = match &snapshot.outcome {
            Some(outcome) => (
                TaskState::Exited,
                outcome
                    .completed_at
                    .map(Timestamp::from)
                    .unwrap_or_else(go_zero_time),
                exit_result(outcome),
            ),
            None => (TaskState::Running, go_zero_time(), ExitResult::default()),
        };
        Ok(Response::new(InspectTaskResponse {
            task: Some(TaskStatus {
                id: snapshot.id,
                name: snapshot.name,
                state: state as i32,
                started_at: Some(snapshot.started_at.into()),
                completed_at: Some(completed_at),
                result: Some(result),
            }),
            driver: Some(TaskDriverStatus {
                attributes: BTreeMap::new(),
            }),
            network_override: None,
        }))
    }

    async fn task_stats(
        &self,
        request: Request<TaskStatsRequest>,
    ) -> Result<Response<Self::TaskStatsStream>, Status> {
        let request = request.into_inner();
        let interval = request
            .collection_interval
            .map(|d| elide_proto::duration_from_proto(&d))
            .filter(|d| !d.is_zero())
            .unwrap_or(Duration::from_secs(1));
        let task_id = request.task_id;
        let samples = self
            .driver
            .tasks()
            .stats(&task_id, interval)
            .map_err(task_status)?;
        let driver = self.driver.clone();
        let stream = samples.map(move |sample| {
            Ok(TaskStatsResponse {
                stats: Some(task_stats(&task_id, &sample, driver.node_compute())),
            })
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn task_events(
        &self,
        _request: Request<TaskEventsRequest>,
    ) -> Result<Response<Self::TaskEventsStream>, Status> {
        // What was published while no stream was open comes first. Lagged
        // receivers skip what they missed rather than ending the stream;
        // chained with `pending` so it never completes.
        let (backlog, live) = self.driver.subscribe_events();
        let events =
            futures::stream::iter(backlog.into_iter().map(|e| Ok(task_event_message(e))))
                .chain(BroadcastStream::new(live).filter_map(|event| async move {
                    event.ok().map(|e| Ok(task_event_message(e)))
                }))
                .chain(futures::stream::pending());
        Ok(Response::new(Box::pin(events)))
    }

    async fn shutdown(
        &self,
        _request: Request<ShutdownRequest>,
    ) -> Result<Response<ShutdownResponse>, Status> {
        // Nomad's deadline is 2 s; finish well inside it. Tasks live in the
        // daemon and keep running.
        self.driver.shutdown(SHUTDOWN_DETACH_LIMIT).await;
        Ok(Response::new(ShutdownResponse {}))
    }

    async fn signal_task(
        &self,
        request: Request<SignalTaskRequest>,
    ) -> Result<Response<SignalTaskResponse>, Status> {
        let request = request.into_inner();
        self.driver
            .tasks()
            .signal(&request.task_id, &request.signal)
            .await
            .map_err(task_status)?;
        Ok(Response::new(SignalTaskResponse {}))
    }

    async fn exec_task(
        &self,
        request: Request<ExecTaskRequest>,
    ) -> Result<Response<ExecTaskResponse>, Status> {
        super::exec_bridge::exec_task(self.driver.tasks(), request.into_inner())
            .await
            .map(Response::new)
    }

    async fn exec_task_streaming(
        &self,
        request: Request<Streaming<ExecTaskStreamingRequest>>,
    ) -> Result<Response<Self::ExecTaskStreamingStream>, Status> {
        let responses =
            super::exec_bridge::exec_task_streaming(self.driver.tasks(), request.into_inner())
                .await?;
        Ok(Response::new(Box::pin(responses)))
    }

    async fn create_network(
        &self,
        _request: Request<CreateNetworkRequest>,
    ) -> Result<Response<CreateNetworkResponse>, Status> {
        Err(Status::unimplemented(
            "the elide driver does not create network namespaces",
        ))
    }

    async fn destroy_network(
        &self,
        _request: Request<DestroyNetworkRequest>,
    ) -> Result<Response<DestroyNetworkResponse>, Status> {
        Err(Status::unimplemented(
            "the elide driver does not create network namespaces",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::ApiProbe;
    use elide_proto::hashicorp::nomad::plugins::drivers::proto::TaskConfig;

    fn service() -> DriverService {
        let driver = Arc::new(ElideDriver::new(Arc::new(ApiProbe::default())));
        DriverService::new(driver, FINGERPRINT_INTERVAL)
    }

    fn start(msgpack: Vec<u8>) -> Request<StartTaskRequest> {
        Request::new(StartTaskRequest {
            task: Some(TaskConfig {
                id: "alloc/web/abcd1234".into(),
                name: "web".into(),
                msgpack_driver_config: msgpack,
                ..TaskConfig::default()
            }),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn start_without_set_config_waits_for_it_then_is_a_recoverable_failed_precondition() {
        let begun = tokio::time::Instant::now();
        let err = service().start_task(start(vec![0x80])).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
        assert_eq!(elide_nomad_client::recoverable(&err), Some(true));
        assert_eq!(
            begun.elapsed(),
            CONFIG_WAIT,
            "it waited for SetConfig first"
        );
    }

    #[tokio::test]
    async fn bad_task_config_is_unrecoverable_and_names_the_field() {
        let service = service();
        service.driver.set_config(&[]).unwrap();
        // {"code": "x"}: no language for inline code.
        let msgpack = vec![0x81, 0xa4, b'c', b'o', b'd', b'e', 0xa1, b'x'];
        let err = service.start_task(start(msgpack)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("`language`"), "{}", err.message());
        assert_eq!(elide_nomad_client::recoverable(&err), Some(false));
    }

    #[tokio::test]
    async fn stop_and_destroy_of_unknown_tasks_succeed() {
        let service = service();
        let stop = StopTaskRequest {
            task_id: "a/b/c".into(),
            timeout: None,
            signal: String::new(),
        };
        assert!(service.stop_task(Request::new(stop)).await.is_ok());
        let destroy = DestroyTaskRequest {
            task_id: "a/b/c".into(),
            force: true,
        };
        assert!(service.destroy_task(Request::new(destroy)).await.is_ok());
        let wait = WaitTaskRequest {
            task_id: "a/b/c".into(),
        };
        let err = service.wait_task(Request::new(wait)).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
    }

    #[test]
    fn healthy_fingerprint_carries_typed_attributes() {
        let attributes = [("driver.elide.pool".to_owned(), AttributeValue::Int(4))].into();
        let response = fingerprint_response(DaemonHealth::Healthy { attributes });
        assert_eq!(response.health(), HealthState::Healthy);
        assert_eq!(response.health_description, "Healthy");
        assert_eq!(
            response.attributes["driver.elide.pool"].value,
            Some(attribute::Value::IntVal(4))
        );
    }
}
