//! Listeners: the Unix socket (always) and an optional TCP address, each
//! serving `elide.daemon.v1` and the original `elide.daemon.v1alpha1`.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::UnixListener;

/// Errors while setting up a listener.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// Something that is not a socket is in the way.
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    /// Another process answers on the socket.
    #[error("another daemon is already listening on {0}")]
    InUse(PathBuf),
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A bound Unix socket that removes its own file (and only its own) when
/// dropped.
#[derive(Debug)]
pub struct OwnedSocket {
    path: PathBuf,
    identity: (u64, u64),
    /// The listener; take it with [`OwnedSocket::take_listener`].
    listener: Option<UnixListener>,
}

impl OwnedSocket {
    /// Binds `path`. A stale socket (nobody answering) is replaced; a live
    /// one or any other file is an error. The socket gets `mode`.
    pub async fn bind(path: &Path, mode: u32) -> Result<Self, ListenError> {
        let io = |source| ListenError::Io {
            path: path.to_path_buf(),
            source,
        };
        match std::fs::symlink_metadata(path) {
            Ok(meta) if !meta.file_type().is_socket() => {
                return Err(ListenError::NotASocket(path.to_path_buf()))
            }
            Ok(_) => {
                if tokio::time::timeout(
                    Duration::from_secs(1),
                    tokio::net::UnixStream::connect(path),
                )
                .await
                .is_ok_and(|r| r.is_ok())
                {
                    return Err(ListenError::InUse(path.to_path_buf()));
                }
                std::fs::remove_file(path).map_err(io)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let listener = UnixListener::bind(path).map_err(io)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io)?;
        let meta = std::fs::symlink_metadata(path).map_err(io)?;
        Ok(OwnedSocket {
            path: path.to_path_buf(),
            identity: (meta.dev(), meta.ino()),
            listener: Some(listener),
        })
    }

    /// The listener (once).
    pub fn take_listener(&mut self) -> Option<UnixListener> {
        self.listener.take()
    }
}

impl Drop for OwnedSocket {
    fn drop(&mut self) {
        // Someone may have replaced the file since (another daemon after a
        // stale-socket takeover): remove it only if it is still ours.
        if let Ok(meta) = std::fs::symlink_metadata(&self.path) {
            if (meta.dev(), meta.ino()) == self.identity {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// How long open connections may linger after shutdown was requested.
const CONNECTION_GRACE: Duration = Duration::from_millis(500);

/// Where the daemon listens.
#[derive(Debug, Clone)]
pub struct ListenOptions {
    /// Unix socket path.
    pub socket: PathBuf,
    /// Permission bits of the socket file.
    pub socket_mode: u32,
    /// Optional TCP address.
    pub tcp: Option<std::net::SocketAddr>,
    /// Who may call over the Unix socket (TCP has no peer credentials).
    pub peers: crate::peer::PeerPolicy,
}

/// Serves `service` on the configured listeners until `shutdown` resolves.
/// The socket file is removed on return.
pub async fn serve(
    service: crate::service::DaemonService,
    opts: &ListenOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServeError> {
    let mut socket = OwnedSocket::bind(&opts.socket, opts.socket_mode).await?;
    let unix = socket
        .take_listener()
        .expect("fresh socket has its listener");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let builder = || {
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
            .tcp_nodelay(true)
    };
    // The original contract, over the same registry, beside v1.
    let original = crate::v1alpha1::ExecutionApiService::new(service.registry().clone());
    tracing::info!(socket = %opts.socket.display(), "listening");
    // Clients that send the socket path as `:authority` (gRPC C-core,
    // grpc-java, grpc-go with a plain path) would be refused by h2; see
    // `crate::authority`.
    let peers = opts.peers.clone();
    if peers.is_restrictive() {
        tracing::info!(uids = ?peers.uids, gids = ?peers.gids, "Unix socket peers checked with SO_PEERCRED (root and the daemon's own uid always allowed)");
    }
    let unix_incoming = tokio_stream::StreamExt::map(
        tokio_stream::wrappers::UnixListenerStream::new(unix),
        move |conn| {
            conn.map(|stream| {
                peers.check_connection(&stream);
                crate::authority::AuthorityRewrite::new(stream)
            })
        },
    );
    let unix_server = builder()
        .layer(tonic::service::InterceptorLayer::new(
            opts.peers.clone().interceptor(),
        ))
        .add_service(service.clone().into_server())
        .add_service(original.clone().into_server())
        .serve_with_incoming_shutdown(unix_incoming, stopped(stop_rx.clone()));
    let tcp_server = match opts.tcp {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Tcp { addr, source })?;
            tracing::info!(%addr, "listening on TCP");
            Some(
                builder()
                    .add_service(service.into_server())
                    .add_service(original.into_server())
                    .serve_with_incoming_shutdown(
                        tokio_stream::wrappers::TcpListenerStream::new(listener),
                        stopped(stop_rx.clone()),
                    ),
            )
        }
        None => None,
    };
    let stop_flag = stop_rx.clone();
    let stopper = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    };
    let tcp = async move {
        match tcp_server {
            Some(s) => s.await,
            None => Ok(()),
        }
    };
    let servers = async { tokio::join!(unix_server, tcp) };
    // Open streams (watchers, followers) never end by themselves, so once
    // stopped, connections get a short grace and are then dropped.
    let bounded = async {
        stopped(stop_flag).await;
        tokio::time::sleep(CONNECTION_GRACE).await;
    };
    let (_, result) = tokio::join!(stopper, async {
        tokio::select! {
            biased;
            (unix, tcp) = servers => Some((unix, tcp)),
            _ = bounded => None,
        }
    });
    drop(socket);
    if let Some((unix, tcp)) = result {
        unix?;
        tcp?;
    }
    Ok(())
}

/// Errors of [`serve`].
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The Unix socket could not be set up.
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// The TCP address could not be bound.
    #[error("TCP {addr}: {source}")]
    Tcp {
        /// The address.
        addr: std::net::SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}
