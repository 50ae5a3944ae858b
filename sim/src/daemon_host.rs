//! A simulated daemon machine: the production `DaemonService` and
//! `SessionRegistry`, with the scripted runtime, a virtual clock and a state
//! store that survives crashes of the host (the "disk").

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use elide_daemon::ids::SequentialIds;
use elide_daemon::limits::Limits;
use elide_daemon::registry::{RegistryDeps, SessionRegistry};
use elide_daemon::runtime::scripted::ScriptedRuntime;
use elide_daemon::service::DaemonService;
use elide_daemon::store::MemoryStore;
use elide_daemon::time::TokioClock;

use crate::net::incoming;

/// One daemon host of a simulated cluster.
#[derive(Clone)]
pub struct DaemonHost {
    /// Host name (what clients dial).
    pub name: String,
    /// Port the daemon listens on.
    pub port: u16,
    /// Limits of the daemon.
    pub limits: Limits,
    /// Durable state: outlives crashes because the host factory only
    /// borrows it.
    pub disk: Arc<MemoryStore>,
    boots: Arc<AtomicU64>,
}

impl DaemonHost {
    /// A daemon host with default limits and an empty disk.
    pub fn new(name: &str, port: u16) -> Self {
        DaemonHost {
            name: name.to_string(),
            port,
            limits: Limits::default(),
            disk: Arc::default(),
            boots: Arc::default(),
        }
    }

    /// How many times the host has booted.
    pub fn boots(&self) -> u64 {
        self.boots.load(Ordering::SeqCst)
    }

    /// Registers the host; turmoil re-runs the factory on every restart.
    pub fn install(&self, sim: &mut turmoil::Sim<'_>) {
        let host = self.clone();
        sim.host(self.name.as_str(), move || {
            let host = host.clone();
            async move {
                let boot = host.boots.fetch_add(1, Ordering::SeqCst) + 1;
                let epoch = SystemTime::UNIX_EPOCH + turmoil::since_epoch().unwrap_or_default();
                let registry = SessionRegistry::open(RegistryDeps {
                    runtime: Arc::new(ScriptedRuntime),
                    store: host.disk.clone(),
                    clock: Arc::new(TokioClock::starting_at(epoch)),
                    // Instance ids differ per boot, deterministically.
                    ids: Arc::new(SequentialIds::new(&format!("{}-boot{boot}", host.name))),
                    limits: host.limits.clone(),
                    scratch_dir: "/nonexistent/elide-sim-scratch".into(),
                    version: "sim".into(),
                })?;
                registry.spawn_expiry(Duration::from_secs(1));
                let listener = turmoil::net::TcpListener::bind(("0.0.0.0", host.port)).await?;
                tonic::transport::Server::builder()
                    .add_service(DaemonService::new(registry).into_server())
                    .serve_with_incoming(incoming(listener))
                    .await?;
                Ok(())
            }
        });
    }
}
