//! The Driver RPCs as a Nomad client calls them, plus the allocation
//! directory layout and log FIFOs Nomad prepares before `StartTask`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use elide_nomad_client::{TaskResources, TaskSpec};
use elide_proto::hashicorp::nomad::plugins::base::proto::{
    base_plugin_client::BasePluginClient, ClientTopology,
};
use elide_proto::hashicorp::nomad::plugins::drivers::proto::fingerprint_response::HealthState;
use elide_proto::hashicorp::nomad::plugins::drivers::proto::{
    driver_client::DriverClient, DestroyTaskRequest, FingerprintRequest, FingerprintResponse,
    RecoverTaskRequest, StartTaskRequest, StopTaskRequest, TaskConfig, TaskHandle, WaitTaskRequest,
    WaitTaskResponse,
};
use elide_proto::plugin::{grpc_controller_client::GrpcControllerClient, Empty};
use futures::StreamExt;
use tonic::transport::Channel;

use crate::binaries::{binary, PLUGIN};
use crate::logmon::FifoReader;
use crate::nomad_client::PluginProcess;

/// A launched plugin and the clients Nomad holds to it.
pub struct NomadHost {
    /// The plugin process.
    pub plugin: PluginProcess,
    /// Driver service client.
    pub driver: DriverClient<Channel>,
    /// Base plugin service client.
    pub base: BasePluginClient<Channel>,
    channel: Channel,
    _socket_dir: tempfile::TempDir,
}

impl NomadHost {
    /// Launches the plugin as Nomad does and dials it.
    pub async fn launch() -> NomadHost {
        let socket_dir = tempfile::tempdir().expect("tempdir");
        let plugin =
            PluginProcess::start(&binary(PLUGIN), socket_dir.path()).expect("the plugin starts");
        let channel = plugin.connect().await.expect("the plugin answers");
        NomadHost {
            driver: DriverClient::new(channel.clone()),
            base: BasePluginClient::new(channel.clone()),
            channel,
            plugin,
            _socket_dir: socket_dir,
        }
    }

    /// Launches and configures the plugin as the driver manager does for
    /// the long-lived process (`SetConfig` with `nomad_config` set).
    pub async fn configured(config: &crate::cty::PluginConfig) -> NomadHost {
        let mut host = NomadHost::launch().await;
        host.set_config(config).await;
        host
    }

    /// `SetConfig` as the long-lived driver process gets it (the agent's
    /// default client port range in `nomad_config`).
    pub async fn set_config(&mut self, config: &crate::cty::PluginConfig) {
        self.set_config_bytes(config.encode())
            .await
            .expect("SetConfig");
    }

    /// `SetConfig` with config bytes encoded elsewhere (for example from
    /// HCL with the plugin's own schema); the plugin's answer.
    pub async fn set_config_bytes(&mut self, msgpack: Vec<u8>) -> Result<(), tonic::Status> {
        self.set_config_on(msgpack, None).await
    }

    /// `SetConfig` carrying the node's CPU `topology`, as a client that
    /// fingerprinted it sends.
    pub async fn set_config_with_topology(
        &mut self,
        config: &crate::cty::PluginConfig,
        topology: ClientTopology,
    ) {
        self.set_config_on(config.encode(), Some(topology))
            .await
            .expect("SetConfig");
    }

    async fn set_config_on(
        &mut self,
        msgpack: Vec<u8>,
        topology: Option<ClientTopology>,
    ) -> Result<(), tonic::Status> {
        let request = elide_nomad_client::set_config_request(
            msgpack,
            elide_nomad_client::DEFAULT_PLUGIN_API_VERSION.into(),
            topology,
        );
        self.base.set_config(request).await.map(|_| ())
    }

    /// The first fingerprint message.
    pub async fn fingerprint(&mut self) -> FingerprintResponse {
        let mut stream = self
            .driver
            .fingerprint(FingerprintRequest {})
            .await
            .expect("Fingerprint")
            .into_inner();
        let first = stream
            .next()
            .await
            .expect("a first fingerprint")
            .expect("fingerprint message");
        // The client stringifies every attribute; one without a value would
        // silently delete the node attribute.
        for (key, attribute) in &first.attributes {
            assert!(attribute.value.is_some(), "attribute {key} has no value");
        }
        first
    }

    /// Opens a fingerprint stream, which the client keeps for the plugin's
    /// whole life.
    pub async fn fingerprint_stream(&mut self) -> tonic::Streaming<FingerprintResponse> {
        self.driver
            .fingerprint(FingerprintRequest {})
            .await
            .expect("Fingerprint")
            .into_inner()
    }

    /// Reads a new fingerprint stream until a message with `health`
    /// arrives, for at most `limit`; `None` if none did.
    pub async fn fingerprint_until(
        &mut self,
        health: HealthState,
        limit: Duration,
    ) -> Option<FingerprintResponse> {
        let mut stream = self.fingerprint_stream().await;
        next_with_health(&mut stream, health, limit).await
    }

    /// go-plugin's `Client.Kill` first step: `GRPCController/Shutdown`.
    pub async fn shutdown(&self) {
        GrpcControllerClient::new(self.channel.clone())
            .shutdown(Empty {})
            .await
            .expect("Shutdown is answered");
    }

    /// `StartTask`; returns the handle, checked the way the client relies
    /// on it (persisted, and its `config.id` is the task id after a restart).
    pub async fn start(&mut self, task: TaskConfig) -> Result<TaskHandle, tonic::Status> {
        let id = task.id.clone();
        let response = self
            .driver
            .start_task(StartTaskRequest { task: Some(task) })
            .await?
            .into_inner();
        let handle = response.handle.expect("StartTask must return a handle");
        assert!(handle.version >= 1, "handle version 0 is reserved");
        assert_eq!(
            handle.config.as_ref().map(|c| c.id.as_str()),
            Some(id.as_str()),
            "the handle must echo the task config"
        );
        Ok(handle)
    }

    /// `WaitTask` with a test deadline. Like Nomad 1.9.0-1.11.2, which
    /// dereferences `result` unchecked (an unset one crashes the agent),
    /// this fails on a response without `result`.
    pub async fn wait(&mut self, task_id: &str, limit: Duration) -> WaitTaskResponse {
        let call = self.driver.wait_task(WaitTaskRequest {
            task_id: task_id.into(),
        });
        let response = tokio::time::timeout(limit, call)
            .await
            .expect("WaitTask returned in time")
            .expect("WaitTask")
            .into_inner();
        assert!(
            response.result.is_some(),
            "WaitTaskResponse.result unset: crashes Nomad 1.9.0-1.11.2"
        );
        response
    }

    /// `StopTask`.
    pub async fn stop(&mut self, task_id: &str, timeout: Duration, signal: &str) {
        self.driver
            .stop_task(StopTaskRequest {
                task_id: task_id.into(),
                timeout: Some(elide_proto::duration_to_proto(timeout)),
                signal: signal.into(),
            })
            .await
            .expect("StopTask");
    }

    /// `DestroyTask` with `force = true`, as the client always sends.
    pub async fn destroy(&mut self, task_id: &str) {
        self.driver
            .destroy_task(DestroyTaskRequest {
                task_id: task_id.into(),
                force: true,
            })
            .await
            .expect("DestroyTask");
    }

    /// `RecoverTask` as after an agent restart: `task_id` empty and the
    /// handle's config without `msgpack_driver_config`.
    pub async fn recover(&mut self, handle: &TaskHandle) -> Result<(), tonic::Status> {
        let mut handle = handle.clone();
        if let Some(config) = handle.config.as_mut() {
            config.msgpack_driver_config.clear();
        }
        self.driver
            .recover_task(RecoverTaskRequest {
                task_id: String::new(),
                handle: Some(handle),
            })
            .await
            .map(drop)
    }
}

/// Reads `stream` until a message with `health` arrives, for at most
/// `limit`; `None` if none did (or the stream ended).
pub async fn next_with_health(
    stream: &mut tonic::Streaming<FingerprintResponse>,
    health: HealthState,
    limit: Duration,
) -> Option<FingerprintResponse> {
    let wanted = async {
        while let Some(message) = stream.next().await {
            let message = message.expect("fingerprint message");
            if message.health() == health {
                return Some(message);
            }
        }
        None
    };
    tokio::time::timeout(limit, wanted).await.ok().flatten()
}

/// An allocation directory with one task: task dir (`local/`,
/// `secrets/`, `tmp/`, `private/`), shared `alloc/logs/` and the task's
/// two log FIFOs with their readers.
pub struct Alloc {
    /// Holds everything.
    pub root: tempfile::TempDir,
    /// The allocation id.
    pub alloc_id: String,
    /// The task name.
    pub task: String,
    /// stdout FIFO reader.
    pub stdout: FifoReader,
    /// stderr FIFO reader.
    pub stderr: FifoReader,
}

impl Alloc {
    /// Lays out an allocation for `task` like Nomad's prestart hooks.
    pub fn new(task: &str) -> Alloc {
        let root = crate::passable_tempdir();
        let alloc_id = format!(
            "{:08x}-e2e0-4000-8000-{:012x}",
            std::process::id(),
            counter()
        );
        let alloc_dir = root.path().join(&alloc_id);
        for dir in ["local", "secrets", "tmp", "private"] {
            std::fs::create_dir_all(alloc_dir.join(task).join(dir)).expect("task dir");
        }
        let logs = alloc_dir.join("alloc").join("logs");
        std::fs::create_dir_all(&logs).expect("logs dir");
        let stdout = FifoReader::create(&logs.join(format!(".{task}.stdout.fifo")));
        let stderr = FifoReader::create(&logs.join(format!(".{task}.stderr.fifo")));
        Alloc {
            root,
            alloc_id,
            task: task.to_owned(),
            stdout,
            stderr,
        }
    }

    /// `<alloc_dir>`.
    pub fn alloc_dir(&self) -> PathBuf {
        self.root.path().join(&self.alloc_id)
    }

    /// `<alloc_dir>/<task>`.
    pub fn task_dir(&self) -> PathBuf {
        self.alloc_dir().join(&self.task)
    }

    /// Waits until the driver's offsets record
    /// (`<task_dir>/private/elide-output-<execution>.json`) says `stdout`
    /// bytes were written: a plugin killed after that repeats nothing (the
    /// forwarder records its offsets right after each write, so a crash in
    /// between would repeat one chunk).
    pub async fn wait_for_recorded_stdout(&self, stdout: usize, limit: Duration) {
        let wanted = format!("\"stdout\":{stdout}");
        let recorded = || {
            std::fs::read_dir(self.task_dir().join("private"))
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                .any(|e| std::fs::read_to_string(e.path()).is_ok_and(|t| t.contains(&wanted)))
        };
        let deadline = std::time::Instant::now() + limit;
        while !recorded() {
            assert!(
                std::time::Instant::now() < deadline,
                "offsets {wanted} never recorded"
            );
            // A file has no change notification short of inotify.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Writes a file into the task directory.
    pub fn write_file(&self, relative: &str, contents: &str) {
        let path = self.task_dir().join(relative);
        std::fs::create_dir_all(path.parent().unwrap_or(Path::new("/"))).expect("dir");
        std::fs::write(path, contents).expect("write file");
    }

    /// The `TaskConfig` Nomad would send for a start of this task (256 MiB
    /// of memory, Nomad's default 100 MHz of CPU).
    pub fn task_config(&self, driver_config: &crate::cty::TaskConfig) -> TaskConfig {
        let spec = TaskSpec {
            alloc_id: self.alloc_id.clone(),
            task: self.task.clone(),
            group: "group".into(),
            job_name: "e2e".into(),
            alloc_dir: self.alloc_dir(),
            stdout_fifo: self.stdout.path().to_owned(),
            stderr_fifo: self.stderr.path().to_owned(),
            env: [
                ("NOMAD_TASK_NAME".to_owned(), self.task.clone()),
                ("NOMAD_ALLOC_ID".to_owned(), self.alloc_id.clone()),
                (
                    "NOMAD_TASK_DIR".to_owned(),
                    self.task_dir().join("local").display().to_string(),
                ),
            ]
            .into(),
            resources: TaskResources {
                memory_mb: 256,
                ..TaskResources::default()
            },
            ..TaskSpec::default()
        };
        spec.task_config(&format!("{:08x}", counter()), driver_config.encode())
    }
}

fn counter() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Nomad's reading of a plugin error's `RecoverableError` detail.
pub use elide_nomad_client::recoverable as recoverable_flag;
