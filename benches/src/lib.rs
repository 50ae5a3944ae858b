//! Shared fixtures of the benchmarks: an in-process reference daemon on a
//! real Unix socket, with the real process runtime.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use elide_daemon::{
    connect, serve, DaemonService, FsStore, Limits, ListenOptions, ProcessRuntime,
    ProcessRuntimeConfig, RandomIds, RegistryDeps, SessionRegistry, Target, PYTHON_DEFAULT_PRELOAD,
};
use elide_proto::elide::daemon::v1 as pb;
use elide_proto::wall_clock::SystemClock;
use pb::elide_daemon_client::ElideDaemonClient;
use tonic::transport::Channel;

/// A daemon serving on a Unix socket in a temporary directory, until dropped.
pub struct BenchDaemon {
    /// Its directory (socket and state).
    pub dir: tempfile::TempDir,
    /// Its socket.
    pub socket: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl BenchDaemon {
    /// Starts the daemon on the current tokio runtime, every program on a
    /// fresh interpreter (python cold, no node pool).
    pub async fn start() -> BenchDaemon {
        Self::start_python(false).await
    }

    /// Starts the daemon on the current tokio runtime; `warm_python`: python
    /// executions fork from a zygote with the default preload set (no node
    /// pool).
    pub async fn start_python(warm_python: bool) -> BenchDaemon {
        Self::start_configured(ProcessRuntimeConfig::default(), warm_python).await
    }

    /// Starts the daemon with this runtime configuration (its `runtime_dir`
    /// is replaced by one inside the daemon's directory), python cold.
    pub async fn start_with(config: ProcessRuntimeConfig) -> BenchDaemon {
        Self::start_configured(config, false).await
    }

    async fn start_configured(config: ProcessRuntimeConfig, warm_python: bool) -> BenchDaemon {
        let dir = tempfile::tempdir().expect("temp dir");
        // Programs run as the daemon's default user (`nobody` under root)
        // and must reach their scratch directory in here.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o711),
        )
        .expect("temp dir mode");
        let socket = dir.path().join("daemon.sock");
        let state = dir.path().join("state");
        std::fs::create_dir_all(&state).expect("state dir");
        let config = ProcessRuntimeConfig {
            runtime_dir: state.join("runtime"),
            ..config
        };
        let mut runtime = ProcessRuntime::discover(&config);
        if warm_python {
            let preload = PYTHON_DEFAULT_PRELOAD
                .iter()
                .map(|m| m.to_string())
                .collect();
            runtime = runtime
                .with_python_zygote(preload)
                .expect("starting the python zygote");
        }
        let registry = SessionRegistry::open(RegistryDeps {
            runtime: Arc::new(runtime),
            store: Arc::new(FsStore::open(&state).expect("store")),
            clock: Arc::new(SystemClock),
            ids: Arc::new(RandomIds),
            limits: Limits::default(),
            scratch_dir: state.join("scratch"),
            version: "bench".into(),
        })
        .expect("registry");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let opts = ListenOptions {
            socket: socket.clone(),
            socket_mode: 0o600,
            tcp: None,
            peers: Default::default(),
        };
        tokio::spawn(async move {
            let _ = serve(DaemonService::new(registry), &opts, async {
                let _ = stopped.await;
            })
            .await;
        });
        for _ in 0..200 {
            if tokio::net::UnixStream::connect(&socket).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        BenchDaemon {
            dir,
            socket,
            stop: Some(stop),
        }
    }

    /// A client of this daemon.
    pub async fn client(&self) -> ElideDaemonClient<Channel> {
        connect(&Target::Unix(self.socket.clone()))
            .await
            .expect("connect")
    }
}

impl Drop for BenchDaemon {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Writes a counted benchmark's rows (JSON objects) as
/// `<target>/elide-bench/<name>.json`, where `bench-report` reads them;
/// `profile_dir` is the build profile's directory inside the target
/// directory (`elide_e2e::binaries::profile_dir()`).
pub fn write_counted(profile_dir: &Path, name: &str, rows: &[String]) {
    let dir = profile_dir
        .parent()
        .expect("the profile directory is inside the target directory")
        .join("elide-bench");
    std::fs::create_dir_all(&dir).expect("bench output dir");
    let file = dir.join(format!("{name}.json"));
    std::fs::write(&file, format!("[{}]\n", rows.join(",")))
        .unwrap_or_else(|e| panic!("writing {}: {e}", file.display()));
}
