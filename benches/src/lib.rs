//! Shared fixtures of the benchmarks: an in-process reference daemon on a
//! real Unix socket, with the real process runtime.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use elide_daemon::client::{connect, Target};
use elide_daemon::ids::RandomIds;
use elide_daemon::limits::Limits;
use elide_daemon::registry::{RegistryDeps, SessionRegistry};
use elide_daemon::runtime::process::{ProcessRuntime, ProcessRuntimeConfig};
use elide_daemon::server::{serve, ListenOptions};
use elide_daemon::service::DaemonService;
use elide_daemon::store::FsStore;
use elide_daemon::time::SystemClock;
use elide_proto::elide::daemon::v1 as pb;
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
    /// Starts the daemon on the current tokio runtime.
    pub async fn start() -> BenchDaemon {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("daemon.sock");
        let state = dir.path().join("state");
        std::fs::create_dir_all(&state).expect("state dir");
        let registry = SessionRegistry::open(RegistryDeps {
            runtime: Arc::new(ProcessRuntime::discover(&ProcessRuntimeConfig::default())),
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
