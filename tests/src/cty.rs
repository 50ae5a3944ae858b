//! Configuration bytes as Nomad sends them: go-cty's msgpack encoding of an
//! HCL-decoded object (keys sorted, every attribute present, absent ones
//! as nil; a block is a map or nil).

use rmpv::Value;

/// An object with keys sorted the way go-cty writes them.
pub fn object(entries: Vec<(&str, Value)>) -> Value {
    let mut entries: Vec<(Value, Value)> = entries
        .into_iter()
        .map(|(k, v)| (Value::from(k), v))
        .collect();
    entries.sort_by(|a, b| a.0.as_str().cmp(&b.0.as_str()));
    Value::Map(entries)
}

/// A list of strings.
pub fn strings(items: &[&str]) -> Value {
    Value::Array(items.iter().map(|s| Value::from(*s)).collect())
}

/// Encodes a value.
pub fn encode(value: &Value) -> Vec<u8> {
    let mut bytes = Vec::new();
    rmpv::encode::write_value(&mut bytes, value).expect("encoding to memory");
    bytes
}

/// The plugin's `config {}` block.
#[derive(Debug, Clone, Default)]
pub struct PluginConfig {
    /// `daemon_socket`.
    pub daemon_socket: Option<String>,
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

    /// The msgpack bytes.
    pub fn encode(&self) -> Vec<u8> {
        let text = |v: &Option<String>| v.as_deref().map_or(Value::Nil, Value::from);
        let list = |v: &Option<Vec<String>>| {
            v.as_ref().map_or(Value::Nil, |l| {
                Value::Array(l.iter().map(|s| Value::from(s.as_str())).collect())
            })
        };
        let session = if self.enabled_languages.is_some() || self.enabled_intrinsics.is_some() {
            object(vec![
                ("context_pool_size", Value::Nil),
                ("enable_ai", Value::Nil),
                ("enabled_intrinsics", list(&self.enabled_intrinsics)),
                ("enabled_languages", list(&self.enabled_languages)),
                ("memory_limit_mb", Value::Nil),
            ])
        } else {
            Value::Nil
        };
        // As the agent's HCL2 decoding of a Block: a map, nil when absent.
        let daemon = self.daemon.as_ref().map_or(Value::Nil, |block| {
            object(vec![
                (
                    "args",
                    Value::Array(block.args.iter().map(|a| Value::from(a.as_str())).collect()),
                ),
                ("command", Value::from(block.command.as_str())),
                ("state_dir", Value::from(block.state_dir.as_str())),
            ])
        });
        encode(&object(vec![
            ("daemon", daemon),
            ("daemon_address", Value::Nil),
            ("daemon_socket", text(&self.daemon_socket)),
            ("driver_state_dir", text(&self.driver_state_dir)),
            ("poll_interval", text(&self.poll_interval)),
            ("session_config", session),
            ("status_mode", text(&self.status_mode)),
        ]))
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
    /// `env` (one map, sent as a one-element list as the jobspec does).
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

    /// The msgpack bytes.
    pub fn encode(&self) -> Vec<u8> {
        let text = |v: &Option<String>| v.as_deref().map_or(Value::Nil, Value::from);
        let opts = if self.memory_limit.is_some() || self.timeout.is_some() {
            object(vec![
                ("enable_ai", Value::Nil),
                ("intrinsics", Value::Nil),
                (
                    "memory_limit",
                    self.memory_limit.map_or(Value::Nil, Value::from),
                ),
                ("timeout", text(&self.timeout)),
            ])
        } else {
            Value::Nil
        };
        let env = self.env.as_ref().map_or(Value::Nil, |pairs| {
            Value::Array(vec![Value::Map(
                pairs
                    .iter()
                    .map(|(k, v)| (Value::from(k.as_str()), Value::from(v.as_str())))
                    .collect(),
            )])
        });
        let args = self.args.as_ref().map_or(Value::Nil, |a| {
            Value::Array(a.iter().map(|s| Value::from(s.as_str())).collect())
        });
        encode(&object(vec![
            ("args", args),
            ("code", text(&self.code)),
            ("elide_opts", opts),
            ("env", env),
            ("language", text(&self.language)),
            ("script", text(&self.script)),
        ]))
    }
}
