//! A task's `config { … }` block:
//!
//! ```hcl
//! task "hello" {
//!   driver = "elide"
//!   config {
//!     script   = "local/main.py"      # or: code = "print('hi')"
//!     language = "python"             # inferred from .py/.js/.mjs/.ts when omitted
//!     args     = ["--verbose"]
//!     env      = { GREETING = "hi" }
//!     elide_opts {
//!       memory_limit = 128            # MiB
//!       enable_ai    = false
//!       timeout      = "30s"
//!       intrinsics   = ["console", "fs.read"]
//!     }
//!   }
//! }
//! ```
//!
//! Its schema ([`schema`]) and its decoding and validation
//! ([`ElideTaskConfig::decode`]).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use elide_proto::hashicorp::nomad::plugins::shared::hclspec::Spec;

use crate::catalog::Language;
use crate::cty::{self, ConfigError, CtyObject};
use crate::duration;
use crate::hclspec::{attr, block, object};
use crate::plugin_config::{intrinsics, languages, positive_mib};

/// The schema of a task's `config { … }` block.
///
/// `env` is declared `list(map(string))` because the jobspec parser rewrites
/// `env = { … }` into a one-element list of maps before Nomad decodes it.
pub fn schema() -> Spec {
    object([
        ("script", attr("string")),
        ("code", attr("string")),
        ("language", attr("string")),
        ("args", attr("list(string)")),
        ("env", attr("list(map(string))")),
        (
            "elide_opts",
            block(object([
                ("memory_limit", attr("number")),
                ("enable_ai", attr("bool")),
                ("timeout", attr("string")),
                ("intrinsics", attr("list(string)")),
            ])),
        ),
    ])
}

/// What the task runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskSource {
    /// A script file, as written in the config (resolved against the task
    /// directory by [`crate::script::resolve`]).
    Script(String),
    /// Inline source code.
    Code(String),
}

/// Per-task overrides of the session defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ElideOpts {
    /// Memory limit in MiB.
    pub memory_limit_mb: Option<u64>,
    /// Whether the AI intrinsics are available.
    pub enable_ai: Option<bool>,
    /// Wall-clock limit of the run.
    pub timeout: Option<Duration>,
    /// Intrinsics granted to this task.
    pub intrinsics: Option<Vec<String>>,
}

/// A validated task configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElideTaskConfig {
    /// What to run.
    pub source: TaskSource,
    /// Language of the source.
    pub language: Language,
    /// Arguments passed to the program.
    pub args: Vec<String>,
    /// Extra environment variables for the program.
    pub env: BTreeMap<String, String>,
    /// Overrides from `elide_opts`.
    pub opts: ElideOpts,
}

impl ElideTaskConfig {
    /// Decodes and validates `TaskConfig.msgpack_driver_config`.
    pub fn decode(msgpack: &[u8]) -> Result<Self, ConfigError> {
        let value = cty::decode(msgpack)?;
        let root = CtyObject::root(&value)?;
        let source = match (root.string("script")?, root.string("code")?) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::invalid(
                    "code",
                    "set either script or code, not both",
                ))
            }
            (None, None) => {
                return Err(ConfigError::invalid(
                    "script",
                    "one of script or code is required",
                ))
            }
            (Some(script), None) if script.trim().is_empty() => {
                return Err(ConfigError::invalid("script", "must not be empty"))
            }
            (Some(script), None) => TaskSource::Script(script),
            (None, Some(code)) => TaskSource::Code(code),
        };
        let language = language(root.string("language")?, &source)?;
        let opts = match root.block("elide_opts")? {
            Some(opts) => elide_opts(&opts)?,
            None => ElideOpts::default(),
        };
        Ok(ElideTaskConfig {
            source,
            language,
            args: root.string_list("args")?.unwrap_or_default(),
            env: root.string_map("env")?.unwrap_or_default(),
            opts,
        })
    }
}

fn language(configured: Option<String>, source: &TaskSource) -> Result<Language, ConfigError> {
    if let Some(name) = configured {
        return languages(&[name], "language").map(|l| l[0]);
    }
    let TaskSource::Script(script) = source else {
        return Err(ConfigError::invalid(
            "language",
            format!(
                "is required with code (one of: {})",
                Language::known_names()
            ),
        ));
    };
    Path::new(script)
        .extension()
        .and_then(|e| e.to_str())
        .and_then(Language::from_extension)
        .ok_or_else(|| {
            ConfigError::invalid(
                "language",
                format!(
                    "cannot be inferred from {script:?} (use a .py, .js, .mjs or .ts file, or set language to one of: {})",
                    Language::known_names()
                ),
            )
        })
}

fn elide_opts(opts: &CtyObject<'_>) -> Result<ElideOpts, ConfigError> {
    let timeout = match opts.string("timeout")? {
        None => None,
        Some(text) => {
            let field = opts.field_path("timeout");
            let parsed =
                duration::parse(&text).map_err(|e| ConfigError::invalid(&field, e.to_string()))?;
            if parsed.is_zero() {
                return Err(ConfigError::invalid(field, "must be greater than zero"));
            }
            Some(parsed)
        }
    };
    Ok(ElideOpts {
        memory_limit_mb: opts
            .integer("memory_limit")?
            .map(|mb| positive_mib(mb, &opts.field_path("memory_limit")))
            .transpose()?,
        enable_ai: opts.bool("enable_ai")?,
        timeout,
        intrinsics: opts
            .string_list("intrinsics")?
            .map(|names| intrinsics(names, &opts.field_path("intrinsics")))
            .transpose()?,
    })
}
