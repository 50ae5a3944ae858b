//! The driver's state, independent of gRPC: the current plugin
//! configuration, the daemon health source and the task-event feed. The
//! Nomad-facing services in [`crate::grpc`] only translate to and from it.

use std::sync::{Arc, Mutex};

use tokio::sync::{broadcast, watch};

use crate::daemon_link::DialerFactory;
use crate::host::Host;
use crate::plugin_config::{DaemonEndpoint, PluginConfig};
use crate::probe::{DaemonHealth, DaemonProbe};
use crate::supervision::{LaunchPlan, Launcher, ProcessLauncher, Supervisor, SupervisorState};
use crate::tasks::TaskManager;
use crate::tasks::{NodeCompute, TaskEvent, TaskEventHub, NOT_CONFIGURED};
use elide_cty::ConfigError;

/// The name jobs use (`driver = "elide"`) and the node attribute prefix.
pub const DRIVER_NAME: &str = "elide";

/// Shared driver state. Cheap to share behind an `Arc`; every method may be
/// called concurrently.
pub struct ElideDriver {
    config: watch::Sender<Option<Arc<PluginConfig>>>,
    probe: Arc<dyn DaemonProbe>,
    events: TaskEventHub,
    tasks: TaskManager,
    launcher: Arc<dyn Launcher>,
    supervisor: Mutex<Option<Supervisor>>,
    supervision: watch::Sender<SupervisorState>,
    /// The node's CPU, from the topology in Nomad's `SetConfig`.
    node_compute: Mutex<Option<NodeCompute>>,
}

impl ElideDriver {
    /// A driver with no configuration yet, checking daemon health with `probe`.
    pub fn new(probe: Arc<dyn DaemonProbe>) -> Self {
        ElideDriver::with_dialers(probe, crate::daemon_link::real_dialers())
    }

    /// Like [`ElideDriver::new`], reaching daemons through `dialers` (tests
    /// and simulations supply in-memory transports).
    pub fn with_dialers(probe: Arc<dyn DaemonProbe>, dialers: DialerFactory) -> Self {
        ElideDriver::on_host(probe, dialers, Host::real())
    }

    /// Like [`ElideDriver::with_dialers`], on `host` (a simulation supplies
    /// its clock, log sinks, files and identity).
    pub fn on_host(probe: Arc<dyn DaemonProbe>, dialers: DialerFactory, host: Host) -> Self {
        let (config, _) = watch::channel(None);
        let events = TaskEventHub::default();
        ElideDriver {
            config,
            probe,
            tasks: TaskManager::new(events.clone(), dialers, host),
            events,
            launcher: Arc::new(ProcessLauncher),
            supervisor: Mutex::new(None),
            supervision: watch::Sender::new(SupervisorState::Starting),
            node_compute: Mutex::new(None),
        }
    }

    /// The task table and lifecycle operations.
    pub fn tasks(&self) -> &TaskManager {
        &self.tasks
    }

    /// Decodes, validates and stores a plugin configuration. Idempotent: the
    /// same bytes again change nothing and wake nobody. A rejected
    /// configuration leaves the previous one in place.
    pub fn set_config(&self, msgpack: &[u8]) -> Result<Arc<PluginConfig>, ConfigError> {
        let new = Arc::new(PluginConfig::decode(msgpack)?);
        self.config.send_if_modified(|current| {
            if current.as_deref() == Some(&*new) {
                false
            } else {
                *current = Some(new.clone());
                true
            }
        });
        Ok(new)
    }

    /// Records the node's CPU as Nomad detected it (`SetConfig`'s
    /// `nomad_config.driver.Topology`), for `total_ticks` in task stats.
    pub fn set_node_compute(&self, compute: Option<NodeCompute>) {
        *self.node_compute.lock().unwrap_or_else(|p| p.into_inner()) = compute;
    }

    /// The node's CPU, if Nomad sent its topology.
    pub fn node_compute(&self) -> Option<NodeCompute> {
        *self.node_compute.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current configuration, if `SetConfig` succeeded at least once.
    pub fn config(&self) -> Option<Arc<PluginConfig>> {
        self.config.borrow().clone()
    }

    /// Notified whenever the configuration changes.
    pub fn watch_config(&self) -> watch::Receiver<Option<Arc<PluginConfig>>> {
        self.config.subscribe()
    }

    /// Current daemon health, probed now. Also starts daemon supervision
    /// if the configuration asks for it ([`ElideDriver::ensure_supervised`]).
    pub async fn health(&self) -> DaemonHealth {
        match self.config() {
            None => DaemonHealth::Unhealthy {
                description: NOT_CONFIGURED.to_owned(),
            },
            Some(config) => {
                self.ensure_supervised(&config);
                let health = self.probe.probe(&config.daemon).await;
                crate::probe::require_ai(health, config.session.asks_for_ai(), &config.daemon)
            }
        }
    }

    /// `Driver.Init` (Nomad ≥ 2.0.4, once per long-lived plugin process
    /// after `SetConfig`, and after the agent reattaches). Only a plugin
    /// with no configuration fails it: an error makes Nomad kill this
    /// instance and launch a new one, which gets `SetConfig` first. A
    /// daemon that does not answer is *not* fatal: it may be starting
    /// (systemd, or the supervision started here), and a new plugin
    /// instance would find it no better; tasks it runs must stay
    /// recoverable. So Init starts supervision (this is the long-lived
    /// process), probes the daemon once, logs what it found, and returns
    /// that health, which the fingerprint reports too.
    pub async fn init(&self) -> Result<DaemonHealth, &'static str> {
        if self.config().is_none() {
            return Err(NOT_CONFIGURED);
        }
        let health = self.health().await;
        match &health {
            DaemonHealth::Healthy { .. } => tracing::info!("Init: the daemon answers"),
            DaemonHealth::Unhealthy { description } => tracing::warn!(
                why = %description,
                "Init: the daemon does not answer yet; the fingerprint reports the driver unhealthy until it does"
            ),
        }
        Ok(health)
    }

    /// `Driver.Shutdown` (Nomad ≥ 2.0.4, agent shutdown, 2 s deadline):
    /// stops supervising the daemon (it keeps running, and another plugin
    /// process may take supervision over) and detaches from every task
    /// within `limit`, never stopping one ([`TaskManager::detach`]).
    pub async fn shutdown(&self, limit: std::time::Duration) -> crate::tasks::Detached {
        let detached = self.tasks.detach(limit).await;
        // Dropping the supervisor releases its lock; its daemon runs on.
        self.supervisor
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        detached
    }

    /// Starts, replaces or stops daemon supervision to match `config`'s
    /// `daemon {}` block. Called from the fingerprint loop and the task
    /// RPCs, never from `SetConfig`: the agent's short-lived fingerprint
    /// and validation plugin processes get `SetConfig` too, and must not
    /// start daemons. Must be called inside a tokio runtime.
    pub fn ensure_supervised(&self, config: &PluginConfig) {
        let wanted = match (&config.supervised_daemon, &config.daemon) {
            (Some(command), DaemonEndpoint::Unix(socket)) => Some(LaunchPlan::new(command, socket)),
            // Decoding rejects a daemon block with a TCP endpoint.
            _ => None,
        };
        let mut current = self.supervisor.lock().unwrap_or_else(|p| p.into_inner());
        if self.tasks.is_detached() {
            return; // After Driver.Shutdown nothing is started any more.
        }
        if current.as_ref().map(Supervisor::plan) == wanted.as_ref() {
            return;
        }
        // Dropping the old supervisor releases its lock and leaves its
        // daemon running.
        *current = wanted
            .map(|plan| Supervisor::start(plan, self.launcher.clone(), self.supervision.clone()));
    }

    /// Notified whenever daemon supervision changes state (a daemon was
    /// started, starts listening, exited).
    pub fn watch_supervision(&self) -> watch::Receiver<SupervisorState> {
        self.supervision.subscribe()
    }

    /// The task events kept while no one was subscribed, and a receiver
    /// of every one published from now on.
    pub fn subscribe_events(&self) -> (Vec<TaskEvent>, broadcast::Receiver<TaskEvent>) {
        self.events.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin_config::DaemonEndpoint;
    use futures::future::BoxFuture;
    use std::collections::BTreeMap;

    struct AlwaysHealthy;

    impl DaemonProbe for AlwaysHealthy {
        fn probe<'a>(&'a self, endpoint: &'a DaemonEndpoint) -> BoxFuture<'a, DaemonHealth> {
            let attributes = BTreeMap::from([(
                "driver.elide.endpoint".to_owned(),
                crate::probe::AttributeValue::String(endpoint.to_string()),
            )]);
            Box::pin(async move { DaemonHealth::Healthy { attributes } })
        }
    }

    #[tokio::test]
    async fn unconfigured_driver_is_unhealthy() {
        let driver = ElideDriver::new(Arc::new(AlwaysHealthy));
        assert_eq!(
            driver.health().await,
            DaemonHealth::Unhealthy {
                description: NOT_CONFIGURED.into()
            }
        );
    }

    struct NoAi;

    impl DaemonProbe for NoAi {
        fn probe<'a>(&'a self, _: &'a DaemonEndpoint) -> BoxFuture<'a, DaemonHealth> {
            let attributes = BTreeMap::from([(
                "driver.elide.ai_available".to_owned(),
                crate::probe::AttributeValue::Bool(false),
            )]);
            Box::pin(async move { DaemonHealth::Healthy { attributes } })
        }
    }

    #[tokio::test]
    async fn a_config_asking_for_ai_is_unhealthy_on_a_daemon_without_it() {
        let driver = ElideDriver::new(Arc::new(NoAi));
        // {"session_config": {"enable_ai": true}}
        let mut config = vec![0x81, 0xae];
        config.extend_from_slice(b"session_config");
        config.extend_from_slice(&[0x81, 0xa9]);
        config.extend_from_slice(b"enable_ai");
        config.push(0xc3);
        driver.set_config(&config).unwrap();
        assert_eq!(
            driver.health().await,
            DaemonHealth::Unhealthy {
                description: "session_config.enable_ai = true, but the daemon at /run/elide/daemon.sock has no local AI (it needs the Elide runtime): set enable_ai = false and leave ai out of enabled_intrinsics".into()
            }
        );
        driver.set_config(&[0x80]).unwrap();
        assert!(matches!(
            driver.health().await,
            DaemonHealth::Healthy { .. }
        ));
    }

    #[tokio::test]
    async fn set_config_is_idempotent_and_keeps_the_last_good_config() {
        let driver = ElideDriver::new(Arc::new(AlwaysHealthy));
        let mut changes = driver.watch_config();
        let empty_object = [0x80];
        driver.set_config(&empty_object).unwrap();
        assert!(changes.has_changed().unwrap());
        changes.borrow_and_update();
        driver.set_config(&empty_object).unwrap();
        assert!(
            !changes.has_changed().unwrap(),
            "same config must not notify"
        );

        // {"daemon_socket": ""} is rejected and the default stays.
        let bad = [
            0x81, 0xad, b'd', b'a', b'e', b'm', b'o', b'n', b'_', b's', b'o', b'c', b'k', b'e',
            b't', 0xa0,
        ];
        assert!(driver.set_config(&bad).is_err());
        assert_eq!(*driver.config().unwrap(), PluginConfig::default());
        assert!(matches!(
            driver.health().await,
            DaemonHealth::Healthy { .. }
        ));
    }
}
