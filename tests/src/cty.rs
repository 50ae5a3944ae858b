//! Configuration bytes as Nomad sends them: the plugin's and the task's
//! `config {}` blocks, written as HCL and encoded with the plugin's own
//! `ConfigSchema` / `TaskConfigSchema` (asked of the plugin binary, as the
//! agent does when it loads a plugin) by the one cty encoder
//! (`elide_cty`). Nothing here knows the schema's keys or order:
//! a field the plugin adds (or a default it sets) reaches the plugin as
//! Nomad would send it.

use std::sync::OnceLock;

use elide_proto::hashicorp::nomad::plugins::base::proto::base_plugin_client::BasePluginClient;
use elide_proto::hashicorp::nomad::plugins::base::proto::ConfigSchemaRequest;
use elide_proto::hashicorp::nomad::plugins::drivers::proto::driver_client::DriverClient;
use elide_proto::hashicorp::nomad::plugins::drivers::proto::TaskConfigSchemaRequest;
use elide_proto::hashicorp::nomad::plugins::shared::hclspec::Spec;
use hcl::{Block, Body, Expression};

use crate::binaries::{binary, PLUGIN};
use crate::nomad_client::PluginProcess;

/// The plugin binary's own schemas.
struct PluginSchemas {
    config: Spec,
    task: Spec,
}

/// Asks the plugin binary for its schemas once per test process: a plugin
/// launched through the real handshake, on a runtime of its own (callers
/// may be inside another runtime or none).
fn plugin_schemas() -> &'static PluginSchemas {
    static SCHEMAS: OnceLock<PluginSchemas> = OnceLock::new();
    SCHEMAS.get_or_init(|| {
        std::thread::spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the schema requests");
            rt.block_on(async {
                let dir = tempfile::tempdir().expect("tempdir");
                let plugin =
                    PluginProcess::start(&binary(PLUGIN), dir.path()).expect("the plugin starts");
                let channel = plugin.connect().await.expect("the plugin answers");
                let config = BasePluginClient::new(channel.clone())
                    .config_schema(ConfigSchemaRequest {})
                    .await
                    .expect("ConfigSchema")
                    .into_inner()
                    .spec
                    .expect("the plugin has a config schema");
                let task = DriverClient::new(channel)
                    .task_config_schema(TaskConfigSchemaRequest {})
                    .await
                    .expect("TaskConfigSchema")
                    .into_inner()
                    .spec
                    .expect("the plugin has a task config schema");
                PluginSchemas { config, task }
            })
        })
        .join()
        .expect("asking the plugin for its schemas")
    })
}

/// Encodes `body` with `spec`, as the agent encodes a `config {}` block
/// (for tests that hold the schema themselves, e.g. the driver's own).
pub fn encode(spec: &Spec, body: &Body) -> Vec<u8> {
    let ctx = hcl::eval::Context::new();
    let value = elide_cty::body_to_value(body, &ctx, "config").expect("config body");
    elide_cty::encode(spec, &value, "config").expect("encoding with the plugin's schema")
}

fn strings(items: &[String]) -> Expression {
    Expression::from(items.to_vec())
}

/// The plugin's `config {}` block.
#[derive(Debug, Clone, Default)]
pub struct PluginConfig {
    /// `daemon_socket`.
    pub daemon_socket: Option<String>,
    /// `daemon_address` (a daemon on TCP).
    pub daemon_address: Option<String>,
    /// `status_mode`.
    pub status_mode: Option<String>,
    /// `poll_interval`.
    pub poll_interval: Option<String>,
    /// `session_config.enabled_languages`.
    pub enabled_languages: Option<Vec<String>>,
    /// `session_config.enabled_intrinsics`.
    pub enabled_intrinsics: Option<Vec<String>>,
    /// The `daemon {}` block (the plugin starts the daemon itself).
    pub daemon: Option<DaemonBlock>,
    /// `driver_state_dir` (the plugin's delete journal).
    pub driver_state_dir: Option<String>,
    /// `default_user`.
    pub default_user: Option<String>,
    /// `allow_root`.
    pub allow_root: Option<bool>,
    /// `denied_users`.
    pub denied_users: Option<Vec<String>>,
}

/// The plugin's `daemon {}` block.
#[derive(Debug, Clone, Default)]
pub struct DaemonBlock {
    /// `command`.
    pub command: String,
    /// `args`.
    pub args: Vec<String>,
    /// `state_dir`.
    pub state_dir: String,
}

impl PluginConfig {
    /// A config pointing at `socket`, keeping the plugin's own state next
    /// to it (never in the machine's default directory).
    pub fn for_socket(socket: &std::path::Path) -> Self {
        let state = socket
            .parent()
            .unwrap_or(std::path::Path::new("/tmp"))
            .join("driver-state");
        PluginConfig {
            daemon_socket: Some(socket.display().to_string()),
            driver_state_dir: Some(state.display().to_string()),
            ..PluginConfig::default()
        }
    }

    /// A config pointing at a daemon on TCP `address` (`host:port`),
    /// keeping the plugin's own state in `state_dir`.
    pub fn for_address(address: &str, state_dir: &std::path::Path) -> Self {
        PluginConfig {
            daemon_address: Some(address.to_owned()),
            driver_state_dir: Some(state_dir.display().to_string()),
            ..PluginConfig::default()
        }
    }

    /// The block as HCL.
    pub fn body(&self) -> Body {
        let mut body = Body::builder();
        for (key, value) in [
            ("daemon_socket", &self.daemon_socket),
            ("daemon_address", &self.daemon_address),
            ("status_mode", &self.status_mode),
            ("poll_interval", &self.poll_interval),
            ("driver_state_dir", &self.driver_state_dir),
            ("default_user", &self.default_user),
        ] {
            if let Some(value) = value {
                body = body.add_attribute((key, value.as_str()));
            }
        }
        if let Some(allow) = self.allow_root {
            body = body.add_attribute(("allow_root", allow));
        }
        if let Some(denied) = &self.denied_users {
            body = body.add_attribute(("denied_users", strings(denied)));
        }
        if self.enabled_languages.is_some() || self.enabled_intrinsics.is_some() {
            let mut session = Block::builder("session_config");
            if let Some(languages) = &self.enabled_languages {
                session = session.add_attribute(("enabled_languages", strings(languages)));
            }
            if let Some(intrinsics) = &self.enabled_intrinsics {
                session = session.add_attribute(("enabled_intrinsics", strings(intrinsics)));
            }
            body = body.add_block(session.build());
        }
        if let Some(daemon) = &self.daemon {
            body = body.add_block(
                Block::builder("daemon")
                    .add_attribute(("command", daemon.command.as_str()))
                    .add_attribute(("args", strings(&daemon.args)))
                    .add_attribute(("state_dir", daemon.state_dir.as_str()))
                    .build(),
            );
        }
        body.build()
    }

    /// The msgpack bytes Nomad sends in `SetConfig`.
    pub fn encode(&self) -> Vec<u8> {
        encode(&plugin_schemas().config, &self.body())
    }
}

/// A task's `config {}` block.
#[derive(Debug, Clone, Default)]
pub struct TaskConfig {
    /// `script`.
    pub script: Option<String>,
    /// `code`.
    pub code: Option<String>,
    /// `language`.
    pub language: Option<String>,
    /// `args`.
    pub args: Option<Vec<String>>,
    /// `env`.
    pub env: Option<Vec<(String, String)>>,
    /// `elide_opts.memory_limit` (MiB).
    pub memory_limit: Option<i64>,
    /// `elide_opts.timeout`.
    pub timeout: Option<String>,
}

impl TaskConfig {
    /// Inline code in `language`.
    pub fn code(language: &str, code: &str) -> Self {
        TaskConfig {
            code: Some(code.to_owned()),
            language: Some(language.to_owned()),
            ..TaskConfig::default()
        }
    }

    /// A script path.
    pub fn script(path: &str) -> Self {
        TaskConfig {
            script: Some(path.to_owned()),
            ..TaskConfig::default()
        }
    }

    /// The block as HCL. Values are literal strings, never templates: a
    /// snippet's `${...}` reaches the plugin as written.
    pub fn body(&self) -> Body {
        let mut body = Body::builder();
        for (key, value) in [
            ("script", &self.script),
            ("code", &self.code),
            ("language", &self.language),
        ] {
            if let Some(value) = value {
                body = body.add_attribute((key, value.as_str()));
            }
        }
        if let Some(args) = &self.args {
            body = body.add_attribute(("args", strings(args)));
        }
        if let Some(env) = &self.env {
            let map: hcl::Map<String, hcl::Value> = env
                .iter()
                .map(|(k, v)| (k.clone(), hcl::Value::from(v.as_str())))
                .collect();
            body = body.add_attribute(("env", Expression::from(hcl::Value::Object(map))));
        }
        if self.memory_limit.is_some() || self.timeout.is_some() {
            let mut opts = Block::builder("elide_opts");
            if let Some(limit) = self.memory_limit {
                opts = opts.add_attribute(("memory_limit", hcl::Number::from(limit)));
            }
            if let Some(timeout) = &self.timeout {
                opts = opts.add_attribute(("timeout", timeout.as_str()));
            }
            body = body.add_block(opts.build());
        }
        body.build()
    }

    /// The msgpack bytes Nomad sends as the task's driver config.
    pub fn encode(&self) -> Vec<u8> {
        encode(&plugin_schemas().task, &self.body())
    }
}
