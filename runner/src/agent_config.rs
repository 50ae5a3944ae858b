//! The plugin's section of a Nomad agent configuration file:
//!
//! ```hcl
//! plugin "nomad-driver-elide" {
//!   config { daemon_socket = "/run/elide/daemon.sock" }
//! }
//! ```
//!
//! Nomad matches the label against a file name in `plugin_dir`, so the
//! block is `plugin "elide"` when the plugin is installed under that name,
//! as the original Elide driver's README does (a link named `elide`).
//! Both labels are accepted; the binary behind either is the same.

use std::path::{Path, PathBuf};

use hcl::Body;

/// The file name Nomad matches `plugin "<label>"` against: the binary's
/// own name.
pub const PLUGIN_LABEL: &str = "nomad-driver-elide";
/// The other name the plugin is installed under (the driver's name, as
/// the original Elide driver's README links it).
pub const SHORT_PLUGIN_LABEL: &str = "elide";
/// Every label accepted, in the order messages list them.
pub const PLUGIN_LABELS: [&str; 2] = [PLUGIN_LABEL, SHORT_PLUGIN_LABEL];

/// The plugin's block of an agent config.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginBlock {
    /// The label it was found under (one of [`PLUGIN_LABELS`]).
    pub label: &'static str,
    /// Its `config { … }` body (empty when absent).
    pub config: Body,
}

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

/// The plugin block (`plugin "nomad-driver-elide"` or `plugin "elide"`);
/// its config is empty when the block or its config is absent, as Nomad
/// then applies the schema's defaults.
pub fn plugin_config(file: &Path) -> Result<PluginBlock, AgentConfigError> {
    let text = std::fs::read_to_string(file).map_err(|source| AgentConfigError::Read {
        file: file.to_owned(),
        source,
    })?;
    parse(file, &text)
}

/// [`plugin_config`] on text; `file` names it in errors.
pub fn parse(file: &Path, text: &str) -> Result<PluginBlock, AgentConfigError> {
    let body = hcl::parse(text).map_err(|e| AgentConfigError::Syntax {
        file: file.to_owned(),
        message: e.to_string(),
    })?;
    let invalid = |problem: String| AgentConfigError::Invalid {
        file: file.to_owned(),
        problem,
    };
    let plugins: Vec<(&'static str, &hcl::Block)> = body
        .blocks()
        .filter(|b| b.identifier() == "plugin")
        .filter_map(|b| {
            let label = b.labels().first().map(|l| l.as_str())?;
            PLUGIN_LABELS
                .into_iter()
                .find(|known| *known == label)
                .map(|known| (known, b))
        })
        .collect();
    let (label, plugin) = match plugins.as_slice() {
        [] => {
            tracing::warn!(
                "{}: no plugin \"{PLUGIN_LABEL}\" (or \"{SHORT_PLUGIN_LABEL}\") block; a real Nomad agent (>= 1.10) would not load the plugin at all; using the defaults",
                file.display()
            );
            return Ok(PluginBlock {
                label: PLUGIN_LABEL,
                config: Body::default(),
            });
        }
        [one] => *one,
        _ => {
            let labels: Vec<String> = plugins.iter().map(|(l, _)| format!("{l:?}")).collect();
            return Err(invalid(format!(
                "more than one plugin block for the elide driver ({}); Nomad would load one binary per label, keep one",
                labels.join(", ")
            )));
        }
    };
    let configs: Vec<_> = plugin
        .body()
        .blocks()
        .filter(|b| b.identifier() == "config")
        .collect();
    let config = match configs.as_slice() {
        [] => Body::default(),
        [one] => one.body().clone(),
        _ => {
            return Err(invalid(format!(
                "plugin \"{label}\" has more than one config block"
            )))
        }
    };
    Ok(PluginBlock { label, config })
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
        assert_eq!(body.label, "nomad-driver-elide");
        let body = body.config;
        assert_eq!(body.attributes().next().unwrap().key(), "daemon_socket");
        assert_eq!(body.blocks().next().unwrap().identifier(), "session_config");
        assert!(parse(Path::new("a.hcl"), "client { enabled = true }")
            .unwrap()
            .config
            .into_inner()
            .is_empty());
        let e = parse(Path::new("a.hcl"), "plugin {").unwrap_err();
        assert!(e.to_string().starts_with("a.hcl: HCL syntax error"), "{e}");
    }

    /// The original Elide driver's `nomad-agent.hcl`, as its README has it.
    #[test]
    fn the_original_plugin_elide_block_is_found() {
        let block = parse(
            Path::new("nomad-agent.hcl"),
            r#"
            plugin_dir = "/path/to/elide-task-driver/build/plugins"
            plugin "elide" {
              config {
                daemon_socket = "/tmp/elide-daemon.sock"
                session_config {
                  context_pool_size  = 10
                  enabled_languages  = ["python", "javascript", "typescript"]
                  enabled_intrinsics = ["io", "env"]
                  memory_limit_mb    = 512
                  enable_ai          = false
                }
              }
            }"#,
        )
        .unwrap();
        assert_eq!(block.label, "elide");
        assert_eq!(
            block.config.attributes().next().unwrap().key(),
            "daemon_socket"
        );
        let both = "plugin \"elide\" {}\nplugin \"nomad-driver-elide\" {}";
        let e = parse(Path::new("a.hcl"), both).unwrap_err().to_string();
        assert_eq!(
            e,
            "a.hcl: more than one plugin block for the elide driver (\"elide\", \"nomad-driver-elide\"); Nomad would load one binary per label, keep one"
        );
    }
}
