//! The agent's connection to the plugin: configuring it as Nomad does
//! (`PluginInfo`, `ConfigSchema`, `SetConfig` with the body encoded against
//! the plugin's own schema), reconfiguring after it restarts, and following
//! its task events.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base::base_plugin_client::BasePluginClient;
use drivers::driver_client::DriverClient;
use elide_proto::hashicorp::nomad::plugins::base::proto as base;
use elide_proto::hashicorp::nomad::plugins::drivers::proto as drivers;
use elide_proto::hashicorp::nomad::plugins::shared::hclspec::Spec;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::Code;

use crate::observe::Observations;
use crate::trace::Trace;

/// The connection to the plugin and what `SetConfig` established.
pub(super) struct Plugin {
    pub(super) channel: Channel,
    pub(super) plugin_config: String,
    /// Bumped each time the plugin is (re)configured.
    pub(super) generation: tokio::sync::Mutex<u64>,
    /// The generation of the last configuration, readable without waiting.
    pub(super) configured: std::sync::atomic::AtomicU64,
    pub(super) task_schema: Mutex<Option<Spec>>,
    pub(super) trace: Trace,
    pub(super) who: String,
}

/// Whether a failed plugin call means the plugin is gone (it crashed or
/// restarts), rather than an answer from it.
pub(super) fn plugin_gone(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded
    )
}

impl Plugin {
    pub(super) fn driver(&self) -> DriverClient<Channel> {
        DriverClient::new(self.channel.clone())
    }

    /// The generation calls made now are made under.
    pub(super) fn current(&self) -> u64 {
        self.configured.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub(super) fn base(&self) -> BasePluginClient<Channel> {
        BasePluginClient::new(self.channel.clone())
    }

    /// After the plugin was seen gone at `seen`: waits for it to answer
    /// and configures it, once per restart however many tasks noticed.
    /// Returns the new generation.
    pub(super) async fn reconnect(&self, seen: u64) -> Result<u64, String> {
        let mut generation = self.generation.lock().await;
        if *generation != seen {
            return Ok(*generation);
        }
        loop {
            match self.configure().await {
                Ok(()) => break,
                Err(Fatal(problem)) => return Err(problem),
                Err(Retry) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
        *generation += 1;
        self.configured
            .store(*generation, std::sync::atomic::Ordering::SeqCst);
        self.trace.record(
            &self.who,
            format!("plugin configured (generation {})", *generation),
        );
        Ok(*generation)
    }

    pub(super) async fn configure(&self) -> Result<(), ConfigureError> {
        let info = self
            .base()
            .plugin_info(base::PluginInfoRequest {})
            .await
            .map_err(|_| Retry)?
            .into_inner();
        if info.r#type != base::PluginType::Driver as i32 {
            return Err(Fatal(format!(
                "plugin type {} is not a driver",
                info.r#type
            )));
        }
        let schema = self
            .base()
            .config_schema(base::ConfigSchemaRequest {})
            .await
            .map_err(|_| Retry)?
            .into_inner()
            .spec
            .unwrap_or_default();
        let msgpack = encode(&schema, &self.plugin_config).map_err(Fatal)?;
        let set = self
            .base()
            .set_config(elide_nomad_client::set_config_request(
                msgpack,
                elide_nomad_client::api_version(&info),
                None,
            ))
            .await;
        match set {
            Ok(_) => {}
            Err(status) if plugin_gone(&status) => return Err(Retry),
            Err(status) => return Err(Fatal(format!("SetConfig refused: {}", status.message()))),
        }
        let task_schema = self
            .driver()
            .task_config_schema(drivers::TaskConfigSchemaRequest {})
            .await
            .map_err(|_| Retry)?
            .into_inner()
            .spec
            .unwrap_or_default();
        *self.task_schema.lock().unwrap_or_else(|p| p.into_inner()) = Some(task_schema);
        Ok(())
    }

    pub(super) fn task_schema(&self) -> Spec {
        self.task_schema
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_default()
    }
}

pub(super) enum ConfigureError {
    Retry,
    Fatal(String),
}
use ConfigureError::{Fatal, Retry};

/// Encodes an HCL body against a plugin schema, as Nomad does.
pub(super) fn encode(schema: &Spec, hcl_text: &str) -> Result<Vec<u8>, String> {
    let body: hcl::Body = hcl::parse(hcl_text).map_err(|e| format!("bad HCL: {e}"))?;
    let value = elide_cty::body_to_value(&body, &hcl::eval::Context::new(), "config")
        .map_err(|e| e.to_string())?;
    elide_cty::encode(schema, &value, "config").map_err(|e| e.to_string())
}

/// Records the driver's task events (re-subscribing after plugin restarts).
pub(super) async fn follow_events(plugin: Arc<Plugin>, seen: Observations) {
    loop {
        if let Ok(response) = plugin
            .driver()
            .task_events(drivers::TaskEventsRequest {})
            .await
        {
            let mut events = response.into_inner();
            while let Some(Ok(event)) = events.next().await {
                let dropped = dropped_range(&event.annotations);
                let unread = event
                    .annotations
                    .get("reason")
                    .is_some_and(|r| r == "log_reader_stalled");
                // A report repeated (the plugin hands loss reports to every
                // new agent process while the task lives) is one claim.
                seen.task(&event.task_id, |t| {
                    t.events.push(event.message.clone());
                    let claims = if unread {
                        &mut t.unread
                    } else {
                        &mut t.dropped
                    };
                    if let Some(range) = dropped.filter(|r| !claims.contains(r)) {
                        claims.push(range);
                    }
                });
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Records every fingerprint the plugin sends, as Nomad's driver manager
/// reads them. When the stream breaks because the plugin is gone, the
/// driver manager dispenses the plugin again, and Nomad's plugin loader
/// relaunches an exited plugin and calls `SetConfig` before anything else
/// reaches it: here, [`Plugin::reconnect`] waits for the restarted plugin
/// and configures it, whether or not a task call noticed the restart.
pub(super) async fn follow_fingerprints(plugin: Arc<Plugin>, seen: Observations, client: u32) {
    loop {
        let generation = plugin.current();
        let response = plugin
            .driver()
            .fingerprint(drivers::FingerprintRequest {})
            .await;
        let gone = match response {
            Err(status) => plugin_gone(&status),
            Ok(response) => {
                let mut fingerprints = response.into_inner();
                let mut last = None;
                let mut ended = None;
                while let Some(item) = fingerprints.next().await {
                    let fingerprint = match item {
                        Ok(fingerprint) => fingerprint,
                        Err(status) => {
                            ended = Some(status);
                            break;
                        }
                    };
                    let healthy =
                        fingerprint.health() == drivers::fingerprint_response::HealthState::Healthy;
                    let now = turmoil::sim_elapsed().unwrap_or_default();
                    seen.fingerprint(client, now, healthy);
                    if last != Some(healthy) {
                        plugin.trace.record(
                            &plugin.who,
                            format!(
                                "fingerprint: {}",
                                if healthy { "healthy" } else { "unhealthy" }
                            ),
                        );
                        last = Some(healthy);
                    }
                }
                // A stream that ends without an error is a plugin that
                // went away as cleanly as a crash looks from here.
                ended.is_none_or(|status| plugin_gone(&status))
            }
        };
        if gone && plugin.reconnect(generation).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The byte range a "lost output" event reports, from its annotations.
pub(super) fn dropped_range(annotations: &BTreeMap<String, String>) -> Option<(String, u64, u64)> {
    let stream = annotations.get("stream")?.clone();
    let from = annotations.get("from_offset")?.parse().ok()?;
    let to = annotations.get("to_offset")?.parse().ok()?;
    Some((stream, from, to))
}
