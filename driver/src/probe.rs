//! Health of the execution daemon, as the fingerprint reports it.
//!
//! [`DaemonProbe`] is the seam; [`ApiProbe`] (what the plugin uses) asks
//! the daemon itself (`Health`, `GetCapabilities`).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use elide_proto::elide::daemon::v1 as pb;

use futures::future::BoxFuture;

use crate::daemon_link::{DaemonLink, DialerFactory};
use crate::plugin_config::DaemonEndpoint;

/// A node attribute value (`driver.elide.*`).
#[derive(Debug, Clone, PartialEq)]
pub enum AttributeValue {
    /// Text.
    String(String),
    /// Whole number.
    Int(i64),
    /// Floating-point number.
    Float(f64),
    /// Flag.
    Bool(bool),
}

/// What a probe found.
#[derive(Debug, Clone, PartialEq)]
pub enum DaemonHealth {
    /// The daemon is usable; `attributes` are merged into the node's
    /// attributes (keys already prefixed `driver.elide.`).
    Healthy {
        /// Node attributes to publish.
        attributes: BTreeMap<String, AttributeValue>,
    },
    /// The daemon cannot be used right now.
    Unhealthy {
        /// Shown in `nomad node status`.
        description: String,
    },
}

/// Checks the daemon behind an endpoint.
pub trait DaemonProbe: Send + Sync + 'static {
    /// Probes `endpoint`. Must finish in bounded time: the first fingerprint
    /// waits for it.
    fn probe<'a>(&'a self, endpoint: &'a DaemonEndpoint) -> BoxFuture<'a, DaemonHealth>;
}

/// A probe asking the daemon's API: `Health` then `GetCapabilities`, each
/// with its own deadline. Keeps one link per endpoint between probes.
pub struct ApiProbe {
    /// Deadline of each of the two calls.
    pub timeout: Duration,
    dialers: DialerFactory,
    link: Mutex<Option<(DaemonEndpoint, DaemonLink)>>,
}

impl Default for ApiProbe {
    fn default() -> Self {
        ApiProbe::with_dialers(crate::daemon_link::real_dialers())
    }
}

impl ApiProbe {
    /// A probe reaching daemons through `dialers`.
    pub fn with_dialers(dialers: DialerFactory) -> Self {
        ApiProbe {
            timeout: Duration::from_secs(3),
            dialers,
            link: Mutex::new(None),
        }
    }

    fn link(&self, endpoint: &DaemonEndpoint) -> DaemonLink {
        let mut cached = self.link.lock().unwrap_or_else(|p| p.into_inner());
        match &*cached {
            Some((known, link)) if known == endpoint => link.clone(),
            _ => {
                let link = DaemonLink::new((self.dialers)(endpoint), self.timeout);
                *cached = Some((endpoint.clone(), link.clone()));
                link
            }
        }
    }

    async fn ask(&self, endpoint: &DaemonEndpoint) -> Result<DaemonHealth, String> {
        let link = self.link(endpoint);
        let health = link
            .unary(
                pb::HealthRequest {},
                |mut c, r| async move { c.health(r).await },
            )
            .await
            .map_err(|e| e.to_string())?;
        if health.status() != pb::health_response::ServingStatus::Serving {
            return Ok(DaemonHealth::Unhealthy {
                description: format!(
                    "daemon at {} is {}",
                    endpoint_text(endpoint),
                    health.status().as_str_name().to_ascii_lowercase()
                ),
            });
        }
        let capabilities = link
            .unary(pb::GetCapabilitiesRequest {}, |mut c, r| async move {
                c.get_capabilities(r).await
            })
            .await
            .map_err(|e| e.to_string())?;
        Ok(DaemonHealth::Healthy {
            attributes: capability_attributes(endpoint, &health, &capabilities),
        })
    }
}

/// A healthy daemon that reports no local AI is unhealthy for a config
/// that asks for AI (`asks` names the field): every task would fail at
/// session creation, so the node says why instead of claiming the driver.
/// A probe that does not report `ai_available` is taken at its word.
pub fn require_ai(
    health: DaemonHealth,
    asks: Option<String>,
    endpoint: &DaemonEndpoint,
) -> DaemonHealth {
    let DaemonHealth::Healthy { attributes } = &health else {
        return health;
    };
    let without_ai =
        attributes.get("driver.elide.ai_available") == Some(&AttributeValue::Bool(false));
    match asks {
        Some(field) if without_ai => DaemonHealth::Unhealthy {
            description: format!(
                "{field}, but the daemon at {} has no local AI (it needs the Elide runtime): set enable_ai = false and leave ai out of enabled_intrinsics",
                endpoint_text(endpoint)
            ),
        },
        _ => health,
    }
}

/// Node attributes describing a healthy daemon: `driver.elide` = true and
/// `driver.elide.*` (daemon version and instance, and per language whether
/// it is available, which runtime serves it and that runtime's version).
pub fn capability_attributes(
    endpoint: &DaemonEndpoint,
    health: &pb::HealthResponse,
    capabilities: &pb::GetCapabilitiesResponse,
) -> BTreeMap<String, AttributeValue> {
    let mut attributes = BTreeMap::from([
        ("driver.elide".to_owned(), AttributeValue::Bool(true)),
        (
            "driver.elide.daemon_endpoint".to_owned(),
            AttributeValue::String(endpoint.to_string()),
        ),
        (
            "driver.elide.daemon_version".to_owned(),
            AttributeValue::String(if capabilities.daemon_version.is_empty() {
                health.version.clone()
            } else {
                capabilities.daemon_version.clone()
            }),
        ),
        (
            "driver.elide.daemon_instance_id".to_owned(),
            AttributeValue::String(health.instance_id.clone()),
        ),
        (
            "driver.elide.ai_available".to_owned(),
            AttributeValue::Bool(capabilities.ai_available),
        ),
    ]);
    for language in &capabilities.languages {
        let prefix = format!("driver.elide.{}", language.language);
        attributes.insert(
            format!("{prefix}.available"),
            AttributeValue::Bool(language.available),
        );
        if !language.runtime.is_empty() {
            attributes.insert(
                format!("{prefix}.runtime"),
                AttributeValue::String(language.runtime.clone()),
            );
        }
        if !language.runtime_version.is_empty() {
            attributes.insert(
                format!("{prefix}.version"),
                AttributeValue::String(language.runtime_version.clone()),
            );
        }
    }
    attributes
}

impl DaemonProbe for ApiProbe {
    fn probe<'a>(&'a self, endpoint: &'a DaemonEndpoint) -> BoxFuture<'a, DaemonHealth> {
        Box::pin(async move {
            match self.ask(endpoint).await {
                Ok(health) => health,
                Err(problem) => DaemonHealth::Unhealthy {
                    description: format!(
                        "daemon not reachable at {}: {problem}",
                        endpoint_text(endpoint)
                    ),
                },
            }
        })
    }
}

fn endpoint_text(endpoint: &DaemonEndpoint) -> String {
    match endpoint {
        DaemonEndpoint::Unix(path) => path.display().to_string(),
        DaemonEndpoint::Tcp(address) => address.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn api_probe_of_an_absent_daemon_is_unhealthy_and_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("daemon.sock");
        let health = ApiProbe::default()
            .probe(&DaemonEndpoint::Unix(path.clone()))
            .await;
        let DaemonHealth::Unhealthy { description } = health else {
            panic!("expected unhealthy, got {health:?}");
        };
        assert!(
            description.starts_with(&format!("daemon not reachable at {}: ", path.display())),
            "{description}"
        );
    }
}
