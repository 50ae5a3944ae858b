//! The plugin's gRPC server: every service go-plugin and Nomad expect, on
//! one tonic server over the plugin's unix socket.

mod base_plugin;
mod driver_service;
mod exec_bridge;
mod go_plugin;

use std::sync::Arc;
use std::time::Duration;

use elide_proto::hashicorp::nomad::plugins::base::proto::base_plugin_server::BasePluginServer;
use elide_proto::hashicorp::nomad::plugins::drivers::proto::driver_server::DriverServer;
use elide_proto::plugin::{
    grpc_broker_server::GrpcBrokerServer, grpc_controller_server::GrpcControllerServer,
    grpc_stdio_server::GrpcStdioServer,
};
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic_health::ServingStatus;

pub use base_plugin::BasePluginService;
pub use driver_service::{DriverService, FINGERPRINT_INTERVAL};
pub use go_plugin::{Broker, Controller, Stdio};

use crate::driver::ElideDriver;
use crate::shutdown::Shutdown;

/// The service name go-plugin's health check asks about.
pub const HEALTH_SERVICE: &str = "plugin";

/// Serves every plugin service on `listener` until `shutdown` is raised.
///
/// No request timeout and no stream limit: `WaitTask` and the streams last
/// as long as tasks do. Message sizes are unlimited, as on the Go side.
pub async fn serve(
    listener: UnixListener,
    driver: Arc<ElideDriver>,
    shutdown: Shutdown,
    fingerprint_interval: Duration,
) -> Result<(), tonic::transport::Error> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status(HEALTH_SERVICE, ServingStatus::Serving)
        .await;
    let base = BasePluginServer::new(BasePluginService::new(driver.clone()))
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX);
    let driver = DriverServer::new(DriverService::new(driver, fingerprint_interval))
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX);
    let stop = shutdown.clone();
    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(GrpcControllerServer::new(Controller::new(shutdown)))
        .add_service(GrpcStdioServer::new(Stdio))
        .add_service(GrpcBrokerServer::new(Broker))
        .add_service(base)
        .add_service(driver)
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async move {
            stop.requested().await
        })
        .await
}
