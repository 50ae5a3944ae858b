//! `hashicorp.nomad.plugins.base.proto.BasePlugin`: identity, config schema
//! and config of the plugin.

use std::sync::Arc;

use elide_proto::hashicorp::nomad::plugins::base::proto::{
    base_plugin_server::BasePlugin, ConfigSchemaRequest, ConfigSchemaResponse, PluginInfoRequest,
    PluginInfoResponse, PluginType, SetConfigRequest, SetConfigResponse,
};
use tonic::{Request, Response, Status};

use crate::driver::{ElideDriver, DRIVER_NAME};
use crate::plugin_config;

/// The only driver plugin API version Nomad supports.
pub const DRIVER_API_VERSION: &str = "v0.1.0";

/// The BasePlugin service over the shared driver state.
pub struct BasePluginService {
    driver: Arc<ElideDriver>,
}

impl BasePluginService {
    /// A service configuring `driver`.
    pub fn new(driver: Arc<ElideDriver>) -> Self {
        BasePluginService { driver }
    }
}

#[tonic::async_trait]
impl BasePlugin for BasePluginService {
    async fn plugin_info(
        &self,
        _request: Request<PluginInfoRequest>,
    ) -> Result<Response<PluginInfoResponse>, Status> {
        Ok(Response::new(PluginInfoResponse {
            r#type: PluginType::Driver as i32,
            plugin_api_versions: vec![DRIVER_API_VERSION.to_owned()],
            plugin_version: env!("CARGO_PKG_VERSION").to_owned(),
            name: DRIVER_NAME.to_owned(),
        }))
    }

    async fn config_schema(
        &self,
        _request: Request<ConfigSchemaRequest>,
    ) -> Result<Response<ConfigSchemaResponse>, Status> {
        Ok(Response::new(ConfigSchemaResponse {
            spec: Some(plugin_config::schema()),
        }))
    }

    async fn set_config(
        &self,
        request: Request<SetConfigRequest>,
    ) -> Result<Response<SetConfigResponse>, Status> {
        let request = request.into_inner();
        // nomad_config is unset in the agent's validation process; in the
        // long-lived one it carries the node topology (for total_ticks).
        match self.driver.set_config(&request.msgpack_config) {
            Ok(config) => {
                // Only the long-lived plugin process (the agent's validation
                // process gets no nomad_config) resumes unconfirmed deletes.
                if request.nomad_config.is_some() {
                    self.driver.tasks().resume(&config);
                }
                let topology = request
                    .nomad_config
                    .as_ref()
                    .and_then(|n| n.driver.as_ref())
                    .and_then(|d| d.topology.as_ref());
                if let Some(topology) = topology {
                    let compute = crate::tasks::NodeCompute::from_topology(topology);
                    if compute.is_none() {
                        tracing::warn!("Nomad's topology lists no core speeds: task stats carry no total_ticks");
                    }
                    self.driver.set_node_compute(compute);
                }
                tracing::info!(
                    daemon = %config.daemon,
                    api_version = %request.plugin_api_version,
                    validation_only = request.nomad_config.is_none(),
                    "plugin configured"
                );
                Ok(Response::new(SetConfigResponse {}))
            }
            Err(e) => {
                tracing::error!(error = %e, "rejected plugin configuration");
                Err(Status::invalid_argument(format!(
                    "nomad-driver-elide plugin config: {e}"
                )))
            }
        }
    }
}
