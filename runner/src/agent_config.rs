//! The plugin's section of a Nomad agent configuration file:
//!
//! ```hcl
//! plugin "nomad-driver-elide" {
//!   config { daemon_socket = "/run/elide/daemon.sock" }
//! }
//! ```

use std::path::{Path, PathBuf};

use hcl::Body;

/// The file name Nomad matches `plugin "<label>"` against.
pub const PLUGIN_LABEL: &str = "nomad-driver-elide";

/// The agent file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AgentConfigError {
    /// Reading failed.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The file.
        file: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Not HCL.
    #[error("{file}: HCL syntax error: {message}")]
    Syntax {
        /// The file.
        file: PathBuf,
        /// hcl-rs's message.
        message: String,
    },
    /// Structure problem.
    #[error("{file}: {problem}")]
    Invalid {
        /// The file.
        file: PathBuf,
        /// What is wrong.
        problem: String,
    },
}

/// The `config { … }` body of `plugin "nomad-driver-elide"` (empty when
/// the block or its config is absent, as Nomad then applies the schema's
/// defaults).
pub fn plugin_config(file: &Path) -> Result<Body, AgentConfigError> {
    let text = std::fs::read_to_string(file).map_err(|source| AgentConfigError::Read {
        file: file.to_owned(),
        source,
    })?;
    parse(file, &text)
}

/// [`plugin_config`] on text; `file` names it in errors.
pub fn parse(file: &Path, text: &str) -> Result<Body, AgentConfigError> {
    let body = hcl::parse(text).map_err(|e| AgentConfigError::Syntax {
        file: file.to_owned(),
        message: e.to_string(),
    })?;
    let invalid = |problem: String| AgentConfigError::Invalid {
        file: file.to_owned(),
        problem,
    };
    let plugins: Vec<_> = body
        .blocks()
        .filter(|b| {
            b.identifier() == "plugin"
                && b.labels().first().map(|l| l.as_str()) == Some(PLUGIN_LABEL)
        })
        .collect();
    let plugin = match plugins.as_slice() {
        [] => {
            tracing::warn!(
                "{}: no plugin \"{PLUGIN_LABEL}\" block; a real Nomad agent (>= 1.10) would not load the plugin at all; using the defaults",
                file.display()
            );
            return Ok(Body::default());
        }
        [one] => *one,
        _ => {
            return Err(invalid(format!(
                "more than one plugin \"{PLUGIN_LABEL}\" block"
            )))
        }
    };
    let configs: Vec<_> = plugin
        .body()
        .blocks()
        .filter(|b| b.identifier() == "config")
        .collect();
    match configs.as_slice() {
        [] => Ok(Body::default()),
        [one] => Ok(one.body().clone()),
        _ => Err(invalid(format!(
            "plugin \"{PLUGIN_LABEL}\" has more than one config block"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_plugin_config_block() {
        let body = parse(
            Path::new("agent.hcl"),
            r#"
            data_dir = "/opt/nomad"
            plugin_dir = "/opt/nomad/plugins"
            client { enabled = true }
            plugin "docker" {
              config {
                x = 1
              }
            }
            plugin "nomad-driver-elide" {
              config {
                daemon_socket = "/run/elide/daemon.sock"
                session_config { memory_limit_mb = 256 }
              }
            }"#,
        )
        .unwrap();
        assert_eq!(body.attributes().next().unwrap().key(), "daemon_socket");
        assert_eq!(body.blocks().next().unwrap().identifier(), "session_config");
        assert!(parse(Path::new("a.hcl"), "client { enabled = true }")
            .unwrap()
            .into_inner()
            .is_empty());
        let e = parse(Path::new("a.hcl"), "plugin {").unwrap_err();
        assert!(e.to_string().starts_with("a.hcl: HCL syntax error"), "{e}");
    }
}
