//! Configuring a driver plugin as Nomad's driver manager does for the
//! long-lived plugin process (`client/pluginmanager/drivermanager`).

use elide_proto::hashicorp::nomad::plugins::base::proto::{
    ClientTopology, NomadConfig, NomadDriverConfig, PluginInfoResponse, SetConfigRequest,
};
use elide_proto::hashicorp::nomad::plugins::drivers::proto::{
    driver_client::DriverClient, InitRequest,
};
use tonic::transport::Channel;

/// Lowest port of the range a Nomad client gives plugins for their own
/// listeners (`client_min_port` in the client config, 14000 by default).
pub const CLIENT_MIN_PORT: u32 = 14000;
/// Highest port of that range (`client_max_port`, 14512 by default).
pub const CLIENT_MAX_PORT: u32 = 14512;
/// The API version asked for when the plugin lists none.
pub const DEFAULT_PLUGIN_API_VERSION: &str = "v0.1.0";

/// The plugin API version the client speaks with this plugin: the first one
/// the plugin lists (the driver manager negotiates from the plugin's list).
pub fn api_version(info: &PluginInfoResponse) -> String {
    info.plugin_api_versions
        .first()
        .cloned()
        .unwrap_or_else(|| DEFAULT_PLUGIN_API_VERSION.to_owned())
}

/// `SetConfig` as the long-lived driver process gets it: the plugin config
/// encoded against the plugin's own schema, and `nomad_config` with the
/// client's port range and, when the client fingerprinted it, the node's
/// CPU topology.
pub fn set_config_request(
    msgpack_config: Vec<u8>,
    plugin_api_version: String,
    topology: Option<ClientTopology>,
) -> SetConfigRequest {
    SetConfigRequest {
        msgpack_config,
        nomad_config: Some(NomadConfig {
            driver: Some(NomadDriverConfig {
                client_max_port: CLIENT_MAX_PORT,
                client_min_port: CLIENT_MIN_PORT,
                topology,
            }),
        }),
        plugin_api_version,
    }
}

/// The optional `Driver.Init` Nomad ≥ 2.0.4 calls once after `SetConfig`:
/// `UNIMPLEMENTED` means an older plugin and is fine; any other error is
/// the plugin refusing to run.
pub async fn init(driver: &mut DriverClient<Channel>) -> Result<(), tonic::Status> {
    match driver.init(InitRequest {}).await {
        Ok(_) => Ok(()),
        Err(status) if status.code() == tonic::Code::Unimplemented => Ok(()),
        Err(status) => Err(status),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_config_carries_the_client_port_range_and_topology() {
        let topology = ClientTopology::default();
        let request = set_config_request(vec![1, 2], "v0.1.0".into(), Some(topology.clone()));
        let driver = request.nomad_config.unwrap().driver.unwrap();
        assert_eq!(
            (driver.client_min_port, driver.client_max_port),
            (14000, 14512)
        );
        assert_eq!(driver.topology, Some(topology));
        assert_eq!(request.msgpack_config, vec![1, 2]);
        assert_eq!(request.plugin_api_version, "v0.1.0");
    }

    #[test]
    fn the_first_listed_api_version_is_used() {
        let mut info = PluginInfoResponse::default();
        assert_eq!(api_version(&info), "v0.1.0");
        info.plugin_api_versions = vec!["v0.2.0".into(), "v0.1.0".into()];
        assert_eq!(api_version(&info), "v0.2.0");
    }
}
