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

use crate::hclspec::{attr, block, object};
use crate::plugin_config::{intrinsics, languages, positive_mib};
use elide_cty::{ConfigError, CtyObject};
use elide_proto::go_duration;
use elide_proto::Language;

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
    /// directory by [`crate::script::load`]).
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
        let value = elide_cty::decode(msgpack)?;
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
            let parsed = go_duration::parse(&text)
                .map_err(|e| ConfigError::invalid(&field, e.to_string()))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use elide_cty::value::{bytes, object, strings};
    use elide_proto::hashicorp::nomad::plugins::shared::hclspec::spec::Block as SpecKind;
    use rmpv::Value;

    /// A task config object as Nomad sends it: every key present.
    fn task(entries: &[(&str, Value)]) -> Vec<u8> {
        let mut all = vec![
            ("script", Value::Nil),
            ("code", Value::Nil),
            ("language", Value::Nil),
            ("args", Value::Nil),
            ("env", Value::Nil),
            ("elide_opts", Value::Nil),
        ];
        for (key, value) in entries {
            all.retain(|(k, _)| k != key);
            all.push((key, value.clone()));
        }
        bytes(&object(&all))
    }

    fn opts(entries: &[(&str, Value)]) -> Value {
        let mut all = vec![
            ("memory_limit", Value::Nil),
            ("enable_ai", Value::Nil),
            ("timeout", Value::Nil),
            ("intrinsics", Value::Nil),
        ];
        for (key, value) in entries {
            all.retain(|(k, _)| k != key);
            all.push((key, value.clone()));
        }
        object(&all)
    }

    #[test]
    fn script_task_infers_the_language_and_reads_everything() {
        let bytes = task(&[
            ("script", Value::from("local/main.mjs")),
            ("args", strings(&["--verbose"])),
            (
                "env",
                Value::Array(vec![object(&[("GREETING", Value::from("hi"))])]),
            ),
            (
                "elide_opts",
                Value::Array(vec![opts(&[
                    ("memory_limit", Value::F64(128.0)),
                    ("enable_ai", Value::Boolean(false)),
                    ("timeout", Value::from("1m30s")),
                    ("intrinsics", strings(&["console"])),
                ])]),
            ),
        ]);
        let config = ElideTaskConfig::decode(&bytes).unwrap();
        assert_eq!(config.source, TaskSource::Script("local/main.mjs".into()));
        assert_eq!(config.language, Language::JavaScript);
        assert_eq!(config.args, ["--verbose"]);
        assert_eq!(config.env["GREETING"], "hi");
        assert_eq!(
            config.opts,
            ElideOpts {
                memory_limit_mb: Some(128),
                enable_ai: Some(false),
                timeout: Some(Duration::from_secs(90)),
                intrinsics: Some(vec!["console".into()]),
            }
        );
    }

    #[test]
    fn code_task_needs_a_language() {
        let bytes = task(&[
            ("code", Value::from("print(1)")),
            ("language", Value::from("python")),
        ]);
        let config = ElideTaskConfig::decode(&bytes).unwrap();
        assert_eq!(config.source, TaskSource::Code("print(1)".into()));
        assert_eq!(config.language, Language::Python);
        assert!(config.args.is_empty() && config.env.is_empty());
        assert_eq!(config.opts, ElideOpts::default());

        let bytes = task(&[("code", Value::from("print(1)"))]);
        assert_eq!(
            ElideTaskConfig::decode(&bytes).unwrap_err().field(),
            Some("language")
        );
    }

    #[test]
    fn mistakes_name_the_field() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (task(&[]), "script"),
            (
                task(&[("script", Value::from("a.py")), ("code", Value::from("x"))]),
                "code",
            ),
            (task(&[("script", Value::from(""))]), "script"),
            (task(&[("script", Value::from("main.rb"))]), "language"),
            (
                task(&[
                    ("script", Value::from("a.py")),
                    ("language", Value::from("ruby")),
                ]),
                "language",
            ),
            (
                task(&[("script", Value::from("a.py")), ("args", Value::from("x"))]),
                "args",
            ),
            (
                task(&[
                    ("script", Value::from("a.py")),
                    ("args", Value::Array(vec![Value::from(1)])),
                ]),
                "args[0]",
            ),
            (
                task(&[
                    ("script", Value::from("a.py")),
                    ("env", Value::Array(vec![object(&[("N", Value::from(1))])])),
                ]),
                "env.N",
            ),
            (
                task(&[
                    ("script", Value::from("a.py")),
                    ("elide_opts", opts(&[("memory_limit", Value::from(0))])),
                ]),
                "elide_opts.memory_limit",
            ),
            (
                task(&[
                    ("script", Value::from("a.py")),
                    ("elide_opts", opts(&[("timeout", Value::from("soon"))])),
                ]),
                "elide_opts.timeout",
            ),
            (
                task(&[
                    ("script", Value::from("a.py")),
                    ("elide_opts", opts(&[("timeout", Value::from("0s"))])),
                ]),
                "elide_opts.timeout",
            ),
            (
                task(&[
                    ("script", Value::from("a.py")),
                    (
                        "elide_opts",
                        opts(&[("intrinsics", strings(&["net", "root"]))]),
                    ),
                ]),
                "elide_opts.intrinsics",
            ),
        ];
        for (bytes, field) in cases {
            let err = ElideTaskConfig::decode(&bytes).unwrap_err();
            assert_eq!(err.field(), Some(field), "{err}");
            assert!(err.to_string().contains(field), "{err}");
        }
    }

    #[test]
    fn schema_is_an_object_with_elide_opts_as_a_block_and_env_as_list_of_maps() {
        let Some(SpecKind::Object(root)) = schema().block else {
            panic!("root must be an Object");
        };
        assert_eq!(root.attributes.len(), 6);
        assert!(matches!(
            root.attributes["elide_opts"].block,
            Some(SpecKind::BlockValue(_))
        ));
        let Some(SpecKind::Attr(env)) = &root.attributes["env"].block else {
            panic!("env must be an Attr");
        };
        assert_eq!(env.r#type, "list(map(string))");
    }
}
