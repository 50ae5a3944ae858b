//! Health of the execution daemon, as the fingerprint reports it.
//!
//! [`DaemonProbe`] is the seam: [`ConnectProbe`] only checks that the
//! endpoint accepts connections; a daemon-API-backed probe can replace it
//! without touching the fingerprint loop.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::net::{TcpStream, UnixStream};

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

/// A probe that only checks that the endpoint accepts a connection.
#[derive(Debug, Clone)]
pub struct ConnectProbe {
    /// Give up connecting after this long.
    pub timeout: Duration,
}

impl Default for ConnectProbe {
    fn default() -> Self {
        ConnectProbe {
            timeout: Duration::from_secs(2),
        }
    }
}

impl DaemonProbe for ConnectProbe {
    fn probe<'a>(&'a self, endpoint: &'a DaemonEndpoint) -> BoxFuture<'a, DaemonHealth> {
        Box::pin(async move {
            let connected = tokio::time::timeout(self.timeout, async {
                match endpoint {
                    DaemonEndpoint::Unix(path) => UnixStream::connect(path).await.map(drop),
                    DaemonEndpoint::Tcp(address) => TcpStream::connect(address).await.map(drop),
                }
            })
            .await;
            let problem = match connected {
                Ok(Ok(())) => {
                    let attributes = BTreeMap::from([(
                        "driver.elide.daemon_endpoint".to_owned(),
                        AttributeValue::String(endpoint.to_string()),
                    )]);
                    return DaemonHealth::Healthy { attributes };
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no connection after {:?}", self.timeout),
            };
            DaemonHealth::Unhealthy {
                description: format!(
                    "daemon not reachable at {}: {problem}",
                    endpoint_text(endpoint)
                ),
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
    async fn absent_socket_is_unhealthy_and_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("daemon.sock");
        let health = ConnectProbe::default()
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

    #[tokio::test]
    async fn listening_socket_is_healthy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("daemon.sock");
        let _listener = tokio::net::UnixListener::bind(&path).unwrap();
        let health = ConnectProbe::default()
            .probe(&DaemonEndpoint::Unix(path.clone()))
            .await;
        let DaemonHealth::Healthy { attributes } = health else {
            panic!("expected healthy, got {health:?}");
        };
        assert_eq!(
            attributes["driver.elide.daemon_endpoint"],
            AttributeValue::String(format!("unix:{}", path.display()))
        );
    }
}
