//! A simulated Nomad client's driver plugin: the production `ElideDriver`
//! behind its production Nomad-facing services (`BasePlugin`, `Driver`),
//! served over simulated TCP where Nomad uses the go-plugin unix socket.
//! Only the transport to the daemon ([`SimDialer`]) and the machine parts
//! ([`Host`]: clock, FIFOs, files, identity) are the simulation's.

use std::sync::Arc;
use std::time::SystemTime;

use elide_driver::{
    ApiProbe, BasePluginService, DaemonEndpoint, DialerFactory, DriverService, ElideDriver, Host,
    WallClock, FINGERPRINT_INTERVAL,
};
use elide_proto::hashicorp::nomad::plugins::base::proto::base_plugin_server::BasePluginServer;
use elide_proto::hashicorp::nomad::plugins::drivers::proto::driver_server::DriverServer;

use crate::files::MemoryFiles;
use crate::logs::LogBook;
use crate::net::{incoming, DialLog, SimDialer};
use crate::users::SimUsers;

/// Port the plugin serves Nomad on.
pub const PLUGIN_PORT: u16 = 4000;

/// Wall time in the simulation: the epoch plus simulated time.
#[derive(Debug, Clone, Copy, Default)]
pub struct SimClock;

impl WallClock for SimClock {
    fn now(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + turmoil::since_epoch().unwrap_or_default()
    }
}

/// Daemon endpoints reached over simulated TCP (a unix path is dialled as
/// a host name, and fails: there are no unix sockets in the simulation).
pub fn sim_dialers(log: DialLog) -> DialerFactory {
    Arc::new(move |endpoint: &DaemonEndpoint| {
        let target = match endpoint {
            DaemonEndpoint::Tcp(address) => address.clone(),
            DaemonEndpoint::Unix(path) => path.display().to_string(),
        };
        Arc::new(SimDialer::new(target, &log)) as Arc<dyn elide_driver::Dialer>
    })
}

/// The plugin of one simulated client.
#[derive(Clone)]
pub struct PluginHost {
    /// Host name (`plugin-<n>`).
    pub name: String,
    /// The client machine's name, part of its session id.
    pub machine: String,
    /// The client's disk (driver files), shared with nothing else.
    pub files: MemoryFiles,
    /// The client's log FIFOs (logmon's side).
    pub logs: LogBook,
    /// The connections its plugins dialled to the daemon.
    pub dials: DialLog,
    /// When each of its plugin processes started.
    pub boots: Arc<std::sync::Mutex<Vec<std::time::Duration>>>,
}

impl PluginHost {
    /// Registers the host; turmoil re-runs the factory when it restarts
    /// (a plugin restart: Nomad then calls `SetConfig` and `RecoverTask`).
    pub fn install(&self, sim: &mut turmoil::Sim<'_>) {
        let plugin = self.clone();
        sim.host(self.name.as_str(), move || {
            let plugin = plugin.clone();
            plugin
                .boots
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(turmoil::sim_elapsed().unwrap_or_default());
            async move {
                let host = Host {
                    identity: format!("{}\nmachine-{}", plugin.machine, plugin.machine),
                    clock: Arc::new(SimClock),
                    logs: Arc::new(plugin.logs.clone()),
                    files: Arc::new(plugin.files.clone()),
                    users: Arc::new(SimUsers),
                };
                let dialers = sim_dialers(plugin.dials.clone());
                let driver = Arc::new(ElideDriver::on_host(
                    Arc::new(ApiProbe::with_dialers(dialers.clone())),
                    dialers,
                    host,
                ));
                let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PLUGIN_PORT)).await?;
                tonic::transport::Server::builder()
                    .add_service(BasePluginServer::new(BasePluginService::new(
                        driver.clone(),
                    )))
                    .add_service(DriverServer::new(DriverService::new(
                        driver,
                        FINGERPRINT_INTERVAL,
                    )))
                    .serve_with_incoming(incoming(listener))
                    .await?;
                Ok(())
            }
        });
    }
}
