//! The Nomad client's side of go-plugin: launch `nomad-driver-elide` with
//! the environment Nomad gives plugins, read and validate the handshake
//! line, dial the announced unix socket, check gRPC health `"plugin"`,
//! relay the plugin's hclog JSON stderr into our tracing, and stop it the
//! way go-plugin's `Client.Kill` does (GRPCController/Shutdown, ≤ 2 s,
//! then SIGKILL).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use elide_proto::hashicorp::nomad::plugins::base::proto::base_plugin_client::BasePluginClient;
use elide_proto::hashicorp::nomad::plugins::drivers::proto::driver_client::DriverClient;
use elide_proto::plugin::grpc_controller_client::GrpcControllerClient;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

use elide_proto::handshake::{parse_handshake, MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE};

/// How long the handshake line may take (go-plugin's `StartTimeout` is 1 min).
pub const HANDSHAKE_LIMIT: Duration = Duration::from_secs(30);
/// How long dialing the socket and the health check may take.
pub const CONNECT_LIMIT: Duration = Duration::from_secs(10);
/// How long the plugin gets to exit after Shutdown before SIGKILL (go-plugin: 2 s).
pub const EXIT_GRACE: Duration = Duration::from_secs(2);

/// Why the plugin could not be launched or reached.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
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

/// A running plugin and the gRPC clients a Nomad client holds to it.
pub struct PluginHost {
    child: Child,
    /// The socket path from the handshake.
    pub socket: PathBuf,
    /// Driver service client.
    pub driver: DriverClient<Channel>,
    /// Base plugin service client.
    pub base: BasePluginClient<Channel>,
    controller: GrpcControllerClient<Channel>,
}

impl PluginHost {
    /// Launches `binary` with its socket in `socket_dir` and connects.
    pub async fn launch(binary: &Path, socket_dir: &Path) -> Result<PluginHost, PluginError> {
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
            .map_err(|source| PluginError::Spawn {
                binary: binary.to_owned(),
                source,
            })?;
        let stderr_tail = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        relay_stderr(
            child.stderr.take().expect("piped stderr"),
            stderr_tail.clone(),
        );
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = tx.send(reader.read_line(&mut line).map(|_| line));
            // Like go-plugin: keep draining stdout after the handshake.
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        let mut host_child = KillOnDrop(Some(child));
        let line = tokio::task::spawn_blocking(move || rx.recv_timeout(HANDSHAKE_LIMIT))
            .await
            .expect("handshake waiter");
        let tail = |tail: &std::sync::Arc<std::sync::Mutex<Vec<String>>>| {
            std::thread::sleep(Duration::from_millis(100));
            tail.lock().map(|t| t.join("\n")).unwrap_or_default()
        };
        let line = match line {
            Ok(Ok(line)) if !line.is_empty() => line,
            Ok(Ok(_)) | Ok(Err(_)) => {
                return Err(PluginError::Handshake(format!(
                    "the plugin closed stdout without a handshake line; its stderr:\n{}",
                    tail(&stderr_tail)
                )))
            }
            Err(_) => {
                return Err(PluginError::Handshake(format!(
                    "no handshake line within {HANDSHAKE_LIMIT:?}"
                )))
            }
        };
        let socket = parse_handshake(&line).map_err(|e| PluginError::Handshake(e.to_string()))?;
        let connect = |problem: String| PluginError::Connect {
            socket: socket.clone(),
            problem,
        };
        let channel = tokio::time::timeout(CONNECT_LIMIT, dial(socket.clone()))
            .await
            .map_err(|_| connect(format!("no connection within {CONNECT_LIMIT:?}")))?
            .map_err(|e| connect(e.to_string()))?;
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
        let status = tokio::time::timeout(
            CONNECT_LIMIT,
            health.check(tonic_health::pb::HealthCheckRequest {
                service: "plugin".into(),
            }),
        )
        .await
        .map_err(|_| connect("health check timed out".into()))?
        .map_err(|e| connect(format!("health check failed: {}", e.message())))?
        .into_inner()
        .status;
        if status != tonic_health::pb::health_check_response::ServingStatus::Serving as i32 {
            return Err(connect(format!(
                "health of \"plugin\" is {status}, not SERVING"
            )));
        }
        Ok(PluginHost {
            child: host_child.0.take().expect("child"),
            socket,
            driver: DriverClient::new(channel.clone())
                .max_decoding_message_size(usize::MAX)
                .max_encoding_message_size(usize::MAX),
            base: BasePluginClient::new(channel.clone()),
            controller: GrpcControllerClient::new(channel),
        })
    }

    /// The plugin's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// go-plugin's `Client.Kill`: Shutdown, wait ≤ 2 s, then SIGKILL.
    pub async fn shutdown(mut self) {
        let _ = tokio::time::timeout(
            EXIT_GRACE,
            self.controller.shutdown(elide_proto::plugin::Empty {}),
        )
        .await;
        let deadline = tokio::time::Instant::now() + EXIT_GRACE;
        while tokio::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::warn!(
            pid = self.child.id(),
            "the plugin did not exit after Shutdown; killing it"
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PluginHost {
    fn drop(&mut self) {
        // Last resort on an error path: never leave the plugin behind.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

struct KillOnDrop(Option<Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn dial(socket: PathBuf) -> Result<Channel, tonic::transport::Error> {
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

/// Re-logs the plugin's hclog JSON lines through tracing (target
/// `plugin`), keeping the last 50 messages for error reports.
fn relay_stderr(
    stderr: std::process::ChildStderr,
    tail: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let parsed: Option<serde_json::Value> = serde_json::from_str(&line).ok();
            let (level, message) = match &parsed {
                Some(v) => (
                    v["@level"].as_str().unwrap_or("debug").to_owned(),
                    match v["@message"].as_str() {
                        Some(m) => {
                            let mut m = m.to_owned();
                            if let Some(fields) = v.as_object() {
                                for (k, val) in fields.iter().filter(|(k, _)| !k.starts_with('@')) {
                                    m.push_str(&format!(" {k}={val}"));
                                }
                            }
                            m
                        }
                        None => line.clone(),
                    },
                ),
                None => ("debug".to_owned(), line.clone()),
            };
            match level.as_str() {
                "error" => tracing::error!(target: "plugin", "{message}"),
                "warn" => tracing::warn!(target: "plugin", "{message}"),
                "info" => tracing::info!(target: "plugin", "{message}"),
                _ => tracing::debug!(target: "plugin", "{message}"),
            }
            if let Ok(mut t) = tail.lock() {
                t.push(format!("{level}: {message}"));
                if t.len() > 50 {
                    t.remove(0);
                }
            }
        }
    });
}
