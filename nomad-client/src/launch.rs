//! Starting a driver plugin the way go-plugin's client does under Nomad,
//! and stopping it the way `Client.Kill` does.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use elide_proto::handshake::{parse_handshake, MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE};
use elide_proto::plugin::{grpc_controller_client::GrpcControllerClient, Empty};
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

/// How long the handshake line may take (go-plugin's `StartTimeout` is 1 min).
pub const HANDSHAKE_LIMIT: Duration = Duration::from_secs(30);
/// How long dialing the socket and the health check may take.
pub const CONNECT_LIMIT: Duration = Duration::from_secs(10);
/// How long the plugin gets to exit after Shutdown before SIGKILL (go-plugin: 2 s).
pub const EXIT_GRACE: Duration = Duration::from_secs(2);
/// Stderr lines kept for inspection and error reports (the oldest go first).
const STDERR_LINES_KEPT: usize = 10_000;

/// Why the plugin could not be launched or reached.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The binary could not be started.
    #[error("cannot start the plugin {binary}: {source}")]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// No (or a bad) handshake line.
    #[error("plugin handshake failed: {0}")]
    Handshake(String),
    /// Dialing or the health check failed.
    #[error("cannot reach the plugin at {socket}: {problem}")]
    Connect {
        /// The announced socket.
        socket: PathBuf,
        /// What failed.
        problem: String,
    },
}

/// A running plugin process.
pub struct PluginProcess {
    child: Child,
    /// The socket path from the handshake.
    pub socket: PathBuf,
    /// The handshake line, without its newline.
    pub handshake: String,
    stderr_lines: Arc<Mutex<VecDeque<String>>>,
    stderr_reader: Option<JoinHandle<()>>,
    stdout_drain: JoinHandle<()>,
}

impl PluginProcess {
    /// Starts `binary` with the environment Nomad gives plugins (the magic
    /// cookie, protocol version 2, its port range, `socket_dir` for the unix
    /// socket) and waits for a valid handshake line. Blocks for at most
    /// [`HANDSHAKE_LIMIT`].
    pub fn start(binary: &Path, socket_dir: &Path) -> Result<PluginProcess, LaunchError> {
        let mut child = Command::new(binary)
            .env(MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE)
            .env("PLUGIN_PROTOCOL_VERSIONS", "2")
            .env("PLUGIN_MIN_PORT", "10000")
            .env("PLUGIN_MAX_PORT", "25000")
            .env("PLUGIN_UNIX_SOCKET_DIR", socket_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| LaunchError::Spawn {
                binary: binary.to_owned(),
                source,
            })?;
        let stderr_lines = Arc::new(Mutex::new(VecDeque::new()));
        let stderr_reader = Some(relay_stderr(
            child.stderr.take().expect("piped stderr"),
            stderr_lines.clone(),
        ));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        let stdout_drain = std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = tx.send(reader.read_line(&mut line).map(|_| line));
            // Like go-plugin: keep draining stdout after the handshake.
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        let mut process = PluginProcess {
            child,
            socket: PathBuf::new(),
            handshake: String::new(),
            stderr_lines,
            stderr_reader,
            stdout_drain,
        };
        let line = match rx.recv_timeout(HANDSHAKE_LIMIT) {
            Ok(Ok(line)) if line.ends_with('\n') => line,
            Ok(Ok(line)) if !line.is_empty() => {
                return Err(LaunchError::Handshake(format!(
                    "the handshake line {line:?} does not end with a newline"
                )))
            }
            Ok(_) => {
                // Give the stderr relay a moment to catch the last words.
                std::thread::sleep(Duration::from_millis(100));
                return Err(LaunchError::Handshake(format!(
                    "the plugin closed stdout without a handshake line; its stderr:\n{}",
                    process.stderr_lines().join("\n")
                )));
            }
            Err(_) => {
                return Err(LaunchError::Handshake(format!(
                    "no handshake line within {HANDSHAKE_LIMIT:?}"
                )))
            }
        };
        process.handshake = line.trim_end().to_owned();
        process.socket = parse_handshake(&process.handshake)
            .map_err(|e| LaunchError::Handshake(e.to_string()))?;
        Ok(process)
    }

    /// Dials the announced socket and checks go-plugin's health service
    /// (`"plugin"` must be SERVING), within [`CONNECT_LIMIT`].
    pub async fn connect(&self) -> Result<Channel, LaunchError> {
        let connect = |problem: String| LaunchError::Connect {
            socket: self.socket.clone(),
            problem,
        };
        let channel = tokio::time::timeout(CONNECT_LIMIT, dial_unix(self.socket.clone()))
            .await
            .map_err(|_| connect(format!("no connection within {CONNECT_LIMIT:?}")))?
            .map_err(|e| connect(e.to_string()))?;
        let mut health = HealthClient::new(channel.clone());
        let check = health.check(HealthCheckRequest {
            service: "plugin".into(),
        });
        let status = tokio::time::timeout(CONNECT_LIMIT, check)
            .await
            .map_err(|_| connect("health check timed out".into()))?
            .map_err(|e| connect(format!("health check failed: {}", e.message())))?
            .into_inner()
            .status();
        if status != ServingStatus::Serving {
            return Err(connect(format!(
                "health of \"plugin\" is {status:?}, not SERVING"
            )));
        }
        Ok(channel)
    }

    /// The plugin's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -9`s the plugin (a crash) and reaps it.
    pub fn kill_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// go-plugin's `Client.Kill`: `GRPCController/Shutdown` (its error
    /// ignored), up to [`EXIT_GRACE`] for the process to exit, then SIGKILL.
    pub async fn kill(mut self, channel: Channel) {
        let mut controller = GrpcControllerClient::new(channel);
        let shutdown = controller.shutdown(Empty {});
        let _ = tokio::time::timeout(EXIT_GRACE, shutdown).await;
        let deadline = tokio::time::Instant::now() + EXIT_GRACE;
        while tokio::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            // A child's exit has no async notification in std.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::warn!(
            pid = self.child.id(),
            "the plugin did not exit after Shutdown; killing it"
        );
        self.kill_hard();
    }

    /// Waits up to `limit` for the process to exit.
    pub fn wait_for_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits up to `limit` until both the plugin's stdout and stderr pipes
    /// are at EOF, i.e. no process (the plugin or anything that inherited
    /// them) holds their write ends any more. go-plugin reports a plugin
    /// exited only then.
    pub fn pipes_closed_within(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let stderr_done = self
                .stderr_reader
                .as_ref()
                .is_none_or(|reader| reader.is_finished());
            if stderr_done && self.stdout_drain.is_finished() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The plugin's stderr lines so far, as written (hclog JSON), the last
    /// 10,000 at most; all of them once the process has exited.
    pub fn stderr_lines(&mut self) -> Vec<String> {
        if let Ok(Some(_)) = self.child.try_wait() {
            if let Some(reader) = self.stderr_reader.take() {
                let _ = reader.join();
            }
        }
        let lines = self.stderr_lines.lock().unwrap_or_else(|p| p.into_inner());
        lines.iter().cloned().collect()
    }
}

impl Drop for PluginProcess {
    fn drop(&mut self) {
        // Like go-plugin's last resort: never leave the plugin behind.
        if let Ok(None) = self.child.try_wait() {
            self.kill_hard();
        }
    }
}

/// A gRPC channel over the Unix socket at `socket` (a plugin's, or any
/// other gRPC server's on a Unix socket).
pub async fn dial_unix(socket: PathBuf) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_static("http://unused")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                tokio::net::UnixStream::connect(socket)
                    .await
                    .map(TokioIo::new)
            }
        }))
        .await
}

/// Keeps the plugin's stderr lines and re-logs its hclog JSON through
/// tracing (target `plugin`), as a Nomad client logs its plugins.
fn relay_stderr(stderr: ChildStderr, kept: Arc<Mutex<VecDeque<String>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            relog(&line);
            let mut kept = kept.lock().unwrap_or_else(|p| p.into_inner());
            if kept.len() == STDERR_LINES_KEPT {
                kept.pop_front();
            }
            kept.push_back(line);
        }
    })
}

fn relog(line: &str) {
    let parsed: Option<serde_json::Value> = serde_json::from_str(line).ok();
    let Some(value) = parsed.as_ref().filter(|v| v["@message"].is_string()) else {
        tracing::debug!(target: "plugin", "{line}");
        return;
    };
    let mut message = value["@message"].as_str().unwrap_or_default().to_owned();
    if let Some(fields) = value.as_object() {
        for (key, field) in fields.iter().filter(|(k, _)| !k.starts_with('@')) {
            message.push_str(&format!(" {key}={field}"));
        }
    }
    match value["@level"].as_str().unwrap_or("debug") {
        "error" => tracing::error!(target: "plugin", "{message}"),
        "warn" => tracing::warn!(target: "plugin", "{message}"),
        "info" => tracing::info!(target: "plugin", "{message}"),
        _ => tracing::debug!(target: "plugin", "{message}"),
    }
}
