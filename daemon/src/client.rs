//! Connecting to a daemon over its Unix socket or TCP (for `elide-ctl` and
//! tests; the Nomad driver has its own resilient connector).

use std::path::PathBuf;

use elide_proto::elide::daemon::v1::elide_daemon_client::ElideDaemonClient;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

/// Where a daemon listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A Unix socket path.
    Unix(PathBuf),
    /// A TCP `host:port`.
    Tcp(String),
}

/// Connects to the daemon at `target`.
pub async fn connect(
    target: &Target,
) -> Result<ElideDaemonClient<Channel>, tonic::transport::Error> {
    let channel = match target {
        Target::Tcp(addr) => {
            Endpoint::from_shared(format!("http://{addr}"))?
                .connect()
                .await?
        }
        Target::Unix(path) => {
            let path = path.clone();
            // The URI is required by the API but unused: the connector dials the socket.
            Endpoint::from_static("http://daemon.invalid")
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        tokio::net::UnixStream::connect(path)
                            .await
                            .map(TokioIo::new)
                    }
                }))
                .await?
        }
    };
    Ok(ElideDaemonClient::new(channel).max_decoding_message_size(16 * 1024 * 1024))
}
