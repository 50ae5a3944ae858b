//! go-plugin's own services, which the host uses around Nomad's:
//! GRPCController (stop the plugin), GRPCStdio and GRPCBroker (both opened
//! right after connecting and unused by Nomad's driver protocol).

use std::pin::Pin;
use std::time::Duration;

use elide_proto::plugin::{
    grpc_broker_server::GrpcBroker, grpc_controller_server::GrpcController,
    grpc_stdio_server::GrpcStdio, ConnInfo, Empty, StdioData,
};
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::shutdown::Shutdown;

/// Delay between answering `Shutdown` and raising the switch, so the reply
/// is on the wire before the server starts closing.
const REPLY_GRACE: Duration = Duration::from_millis(50);

/// `plugin.GRPCController`: answers `Shutdown`, then stops the process.
#[derive(Debug, Clone)]
pub struct Controller {
    shutdown: Shutdown,
}

impl Controller {
    /// A controller raising `shutdown`.
    pub fn new(shutdown: Shutdown) -> Self {
        Controller { shutdown }
    }
}

#[tonic::async_trait]
impl GrpcController for Controller {
    async fn shutdown(&self, _request: Request<Empty>) -> Result<Response<Empty>, Status> {
        tracing::info!("plugin host asked the plugin to shut down");
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(REPLY_GRACE).await;
            shutdown.trigger();
        });
        Ok(Response::new(Empty {}))
    }
}

/// `plugin.GRPCStdio`: the plugin never writes to stdout/stderr through
/// this stream (its logs go to stderr directly), so it stays open and silent
/// until the host cancels it.
#[derive(Debug, Clone, Default)]
pub struct Stdio;

#[tonic::async_trait]
impl GrpcStdio for Stdio {
    type StreamStdioStream = futures::stream::Pending<Result<StdioData, Status>>;

    async fn stream_stdio(
        &self,
        _request: Request<()>,
    ) -> Result<Response<Self::StreamStdioStream>, Status> {
        Ok(Response::new(futures::stream::pending()))
    }
}

/// `plugin.GRPCBroker`: nothing is ever brokered; the stream drains what
/// the host sends and completes when the host closes its side.
#[derive(Debug, Clone, Default)]
pub struct Broker;

#[tonic::async_trait]
impl GrpcBroker for Broker {
    type StartStreamStream = Pin<Box<dyn Stream<Item = Result<ConnInfo, Status>> + Send>>;

    async fn start_stream(
        &self,
        request: Request<Streaming<ConnInfo>>,
    ) -> Result<Response<Self::StartStreamStream>, Status> {
        let inbound = request.into_inner();
        let drained = futures::stream::once(async move {
            inbound.for_each(|_| async {}).await;
        })
        .filter_map(|()| async { None });
        Ok(Response::new(Box::pin(drained)))
    }
}
