//! The plugin as `elide-run` holds it: the process started and stopped by
//! `elide_nomad_client` (go-plugin's client side), and the gRPC clients a
//! Nomad client keeps to it.

use std::path::Path;

use elide_nomad_client::{LaunchError, PluginProcess};
use elide_proto::hashicorp::nomad::plugins::base::proto::base_plugin_client::BasePluginClient;
use elide_proto::hashicorp::nomad::plugins::drivers::proto::driver_client::DriverClient;
use tonic::transport::Channel;

/// A running plugin and the clients to it.
pub struct PluginHost {
    process: PluginProcess,
    channel: Channel,
    /// Driver service client.
    pub driver: DriverClient<Channel>,
    /// Base plugin service client.
    pub base: BasePluginClient<Channel>,
}

impl PluginHost {
    /// Launches `binary` with its socket in `socket_dir` and connects.
    pub async fn launch(binary: &Path, socket_dir: &Path) -> Result<PluginHost, LaunchError> {
        let (binary, socket_dir) = (binary.to_owned(), socket_dir.to_owned());
        let process =
            tokio::task::spawn_blocking(move || PluginProcess::start(&binary, &socket_dir))
                .await
                .expect("the plugin launcher does not panic")?;
        let channel = process.connect().await?;
        tracing::debug!(pid = process.pid(), socket = %process.socket.display(), "plugin handshake done");
        Ok(PluginHost {
            driver: DriverClient::new(channel.clone())
                .max_decoding_message_size(usize::MAX)
                .max_encoding_message_size(usize::MAX),
            base: BasePluginClient::new(channel.clone()),
            channel,
            process,
        })
    }

    /// go-plugin's `Client.Kill`.
    pub async fn shutdown(self) {
        self.process.kill(self.channel).await;
    }
}
