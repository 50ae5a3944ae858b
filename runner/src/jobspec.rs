//! Nomad job files (HCL2 jobspec), parsed with `hcl-rs` into the subset
//! `elide-run` runs: the job, its groups, their tasks with `driver`,
//! `config`, `env`, `resources`, `template`, `kill_signal`, `kill_timeout`,
//! and a group's `network` ports.
//!
//! Everything else Nomad accepts is reported in [`Job::warnings`] (never
//! silently dropped), e.g. `variable`/`locals`, `service`,
//! `restart`, `lifecycle`, `count > 1`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hcl::eval::{Context, Evaluate};
use hcl::{Body, Expression, Value};

/// Memory Nomad gives a task without `resources { memory = N }`, in MB.
pub const DEFAULT_MEMORY_MB: i64 = 300;
/// CPU Nomad gives a task without `resources { cpu = N }`, in MHz.
pub const DEFAULT_CPU_MHZ: i64 = 100;
/// Nomad's default `kill_timeout`.
pub const DEFAULT_KILL_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest job file read.
pub const MAX_JOB_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// Why a job file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The file cannot be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The job file.
        file: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// HCL syntax error.
    #[error("{file}: HCL syntax error: {message}")]
    Syntax {
        /// The job file.
        file: PathBuf,
        /// hcl-rs's message (with line and column).
        message: String,
    },
    /// The structure or a value is not what Nomad accepts.
    #[error("{file}: {field}: {problem}")]
    Invalid {
        /// The job file.
        file: PathBuf,
        /// Dotted path of the offending block or attribute.
        field: String,
        /// What is wrong.
        problem: String,
    },
}

/// `type` of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobType {
    /// Runs to completion.
    Batch,
    /// Runs until stopped (also `system`, run like a service here).
    Service,
}

/// A parsed job.
#[derive(Debug, Clone)]
pub struct Job {
    /// The file it came from.
    pub file: PathBuf,
    /// `job "<id>"` label.
    pub id: String,
    /// `name` (defaults to the id).
    pub name: String,
    /// `type` (default `service`).
    pub job_type: JobType,
    /// `region` (default `global`).
    pub region: String,
    /// First of `datacenters` (default `dc1`).
    pub datacenter: String,
    /// `namespace` (default `default`).
    pub namespace: String,
    /// Task groups in file order.
    pub groups: Vec<Group>,
    /// Features present in the file that `elide-run` does not emulate.
    pub warnings: Vec<String>,
}

/// A `group` block (or the implicit group of a task placed directly in the job).
#[derive(Debug, Clone)]
pub struct Group {
    /// Group name.
    pub name: String,
    /// Tasks in file order.
    pub tasks: Vec<Task>,
    /// `network { port "<label>" {} }` ports, in file order.
    pub ports: Vec<crate::network::PortSpec>,
}

/// A `resources` block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resources {
    /// `cpu` in MHz.
    pub cpu_mhz: i64,
    /// `memory` in MB.
    pub memory_mb: i64,
    /// `memory_max` in MB (0 when not set).
    pub memory_max_mb: i64,
}

impl Default for Resources {
    fn default() -> Self {
        Resources {
            cpu_mhz: DEFAULT_CPU_MHZ,
            memory_mb: DEFAULT_MEMORY_MB,
            memory_max_mb: 0,
        }
    }
}

/// A `template` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateSpec {
    /// `data` (literal text).
    pub data: Option<String>,
    /// `source` (a file on the client; not supported).
    pub source: Option<String>,
    /// `destination`, relative to the task directory.
    pub destination: String,
    /// `perms` (octal, default `"644"`).
    pub perms: String,
    /// `env = true` (not supported).
    pub env: bool,
    /// `left_delimiter` (default `{{`).
    pub left_delimiter: String,
    /// `right_delimiter` (default `}}`).
    pub right_delimiter: String,
}

/// A `task` block.
#[derive(Debug, Clone)]
pub struct Task {
    /// Task name.
    pub name: String,
    /// `driver`.
    pub driver: String,
    /// The `config` block, unevaluated (interpolated at start with the task env).
    pub config: Body,
    /// The `env` block, unevaluated.
    pub env: Vec<(String, Expression)>,
    /// `resources`.
    pub resources: Resources,
    /// `kill_signal` (empty when not set: the driver picks its default).
    pub kill_signal: String,
    /// `kill_timeout` (default 5 s).
    pub kill_timeout: Duration,
    /// `template` blocks.
    pub templates: Vec<TemplateSpec>,
    /// `user` (empty when not set).
    pub user: String,
}

impl Job {
    /// Reads and parses a job file.
    pub fn from_file(file: &Path) -> Result<Job, JobError> {
        let read = |source| JobError::Read {
            file: file.to_owned(),
            source,
        };
        let meta = std::fs::metadata(file).map_err(read)?;
        if meta.len() > MAX_JOB_FILE_BYTES {
            return Err(JobError::Invalid {
                file: file.to_owned(),
                field: "(file)".into(),
                problem: format!("larger than {MAX_JOB_FILE_BYTES} bytes"),
            });
        }
        let text = std::fs::read_to_string(file).map_err(read)?;
        Job::parse(file, &text)
    }

    /// Parses job file text; `file` names it in errors.
    pub fn parse(file: &Path, text: &str) -> Result<Job, JobError> {
        let body = hcl::parse(text).map_err(|e| JobError::Syntax {
            file: file.to_owned(),
            message: e.to_string(),
        })?;
        Parser {
            file: file.to_owned(),
            warnings: Vec::new(),
        }
        .job(&body)
    }

    /// Every task whose `driver` is `driver`, with its group.
    pub fn tasks_with_driver<'a>(
        &'a self,
        driver: &'a str,
    ) -> impl Iterator<Item = (&'a Group, &'a Task)> + 'a {
        self.groups.iter().flat_map(move |g| {
            g.tasks
                .iter()
                .filter(move |t| t.driver == driver)
                .map(move |t| (g, t))
        })
    }
}

struct Parser {
    file: PathBuf,
    warnings: Vec<String>,
}

const JOB_UNSUPPORTED: &[&str] = &[
    "constraint",
    "affinity",
    "spread",
    "update",
    "periodic",
    "parameterized",
    "multiregion",
    "migrate",
    "reschedule",
    "vault",
    "ui",
];
const GROUP_UNSUPPORTED: &[&str] = &[
    "service",
    "volume",
    "restart",
    "reschedule",
    "constraint",
    "affinity",
    "spread",
    "ephemeral_disk",
    "scaling",
    "consul",
    "update",
    "migrate",
];
const TASK_UNSUPPORTED: &[&str] = &[
    "service",
    "lifecycle",
    "restart",
    "artifact",
    "vault",
    "consul",
    "volume_mount",
    "identity",
    "csi_plugin",
    "logs",
    "scaling",
    "constraint",
    "affinity",
    "dispatch_payload",
];

impl Parser {
    fn invalid(&self, field: impl Into<String>, problem: impl Into<String>) -> JobError {
        JobError::Invalid {
            file: self.file.clone(),
            field: field.into(),
            problem: problem.into(),
        }
    }

    fn job(mut self, body: &Body) -> Result<Job, JobError> {
        for block in body.blocks() {
            match block.identifier() {
                "job" => {}
                "variable" | "locals" => self.warnings.push(format!(
                    "{} blocks are not supported (no variable/local evaluation); references to var.* or local.* fail",
                    block.identifier()
                )),
                other => return Err(self.invalid(other, "unexpected top-level block (expected job)")),
            }
        }
        let jobs: Vec<_> = body.blocks().filter(|b| b.identifier() == "job").collect();
        let job = match jobs.as_slice() {
            [job] => *job,
            [] => return Err(self.invalid("job", "no job block in the file")),
            _ => return Err(self.invalid("job", "more than one job block in the file")),
        };
        let id = single_label(job)
            .ok_or_else(|| self.invalid("job", "needs one label: job \"<id>\""))?;
        let path = format!("job.{id}");
        let b = job.body();
        let name = self.string(b, &path, "name")?.unwrap_or_else(|| id.clone());
        let job_type = match self.string(b, &path, "type")?.as_deref() {
            None | Some("service") => JobType::Service,
            Some("batch") | Some("sysbatch") => JobType::Batch,
            Some("system") => {
                self.warnings
                    .push("type = \"system\" runs like a service job here".into());
                JobType::Service
            }
            Some(other) => {
                return Err(self.invalid(
                    format!("{path}.type"),
                    format!("{other:?} is not one of service, batch, system, sysbatch"),
                ))
            }
        };
        let region = self
            .string(b, &path, "region")?
            .unwrap_or_else(|| "global".into());
        let namespace = self
            .string(b, &path, "namespace")?
            .unwrap_or_else(|| "default".into());
        let datacenter = match self.value(b, &path, "datacenters")? {
            None => "dc1".to_owned(),
            Some(Value::Array(items)) => items
                .first()
                .and_then(|v| v.as_str())
                .unwrap_or("dc1")
                .to_owned(),
            Some(_) => {
                return Err(self.invalid(format!("{path}.datacenters"), "must be a list of strings"))
            }
        };
        self.warn_unsupported(b, &path, JOB_UNSUPPORTED);
        let mut groups = Vec::new();
        for block in b.blocks() {
            match block.identifier() {
                "group" => groups.push(self.group(block, &path)?),
                // HCL1 allowed a task directly in the job: an implicit group of the same name.
                "task" => {
                    let task = self.task(block, &path)?;
                    groups.push(Group {
                        name: task.name.clone(),
                        tasks: vec![task],
                        ports: Vec::new(),
                    });
                }
                "meta" => {}
                other if JOB_UNSUPPORTED.contains(&other) => {}
                other => {
                    return Err(self.invalid(format!("{path}.{other}"), "unknown block in job"))
                }
            }
        }
        Ok(Job {
            file: self.file.clone(),
            id,
            name,
            job_type,
            region,
            datacenter,
            namespace,
            groups,
            warnings: self.warnings,
        })
    }

    fn group(&mut self, block: &hcl::Block, parent: &str) -> Result<Group, JobError> {
        let name = single_label(block).ok_or_else(|| {
            self.invalid(
                format!("{parent}.group"),
                "needs one label: group \"<name>\"",
            )
        })?;
        let path = format!("{parent}.group.{name}");
        let b = block.body();
        if let Some(count) = self.value(b, &path, "count")? {
            if count.as_i64() != Some(1) {
                self.warnings.push(format!(
                    "{path}.count = {count}: elide-run runs one allocation (index 0) per group"
                ));
            }
        }
        self.warn_unsupported(b, &path, GROUP_UNSUPPORTED);
        let mut tasks = Vec::new();
        let mut ports = Vec::new();
        for block in b.blocks() {
            match block.identifier() {
                "task" => tasks.push(self.task(block, &path)?),
                "network" if !ports.is_empty() => {
                    return Err(self.invalid(
                        format!("{path}.network"),
                        "only one network block is allowed",
                    ))
                }
                "network" => {
                    let (found, warnings) =
                        crate::network::parse(block.body(), &format!("{path}.network"))
                            .map_err(|e| self.invalid(e.field, e.problem))?;
                    ports = found;
                    self.warnings.extend(warnings);
                }
                "meta" => {}
                other if GROUP_UNSUPPORTED.contains(&other) => {}
                other => {
                    return Err(self.invalid(format!("{path}.{other}"), "unknown block in group"))
                }
            }
        }
        if tasks.is_empty() {
            return Err(self.invalid(path, "a group needs at least one task"));
        }
        Ok(Group { name, tasks, ports })
    }

    fn task(&mut self, block: &hcl::Block, parent: &str) -> Result<Task, JobError> {
        let name = single_label(block).ok_or_else(|| {
            self.invalid(format!("{parent}.task"), "needs one label: task \"<name>\"")
        })?;
        let path = format!("{parent}.task.{name}");
        let b = block.body();
        let driver = self
            .string(b, &path, "driver")?
            .ok_or_else(|| self.invalid(format!("{path}.driver"), "is required"))?;
        let kill_timeout = match self.string(b, &path, "kill_timeout")? {
            None => DEFAULT_KILL_TIMEOUT,
            Some(text) => elide_proto::go_duration::parse(text.trim())
                .map_err(|e| self.invalid(format!("{path}.kill_timeout"), e.to_string()))?,
        };
        self.warn_unsupported(b, &path, TASK_UNSUPPORTED);
        let mut config = None;
        let mut env = Vec::new();
        let mut resources = Resources::default();
        let mut templates = Vec::new();
        for block in b.blocks() {
            let field = format!("{path}.{}", block.identifier());
            match block.identifier() {
                "config" if config.is_some() => {
                    return Err(self.invalid(field, "only one config block is allowed"))
                }
                "config" => config = Some(block.body().clone()),
                "env" => {
                    for attr in block.body().attributes() {
                        env.push((attr.key().to_owned(), attr.expr().clone()));
                    }
                }
                "resources" => resources = self.resources(block.body(), &field)?,
                "template" => templates.push(self.template(block.body(), &field)?),
                "meta" => {}
                other if TASK_UNSUPPORTED.contains(&other) => {}
                _ => return Err(self.invalid(field, "unknown block in task")),
            }
        }
        // `env = { … }` as an attribute is accepted by Nomad as well.
        if let Some(attr) = b.attributes().find(|a| a.key() == "env") {
            match attr.expr() {
                Expression::Object(object) => {
                    for (key, value) in object {
                        let key = match key {
                            hcl::ObjectKey::Identifier(id) => id.to_string(),
                            hcl::ObjectKey::Expression(e) => eval(e, &Context::new())
                                .ok()
                                .and_then(|v| v.as_str().map(str::to_owned))
                                .ok_or_else(|| {
                                    self.invalid(format!("{path}.env"), "keys must be strings")
                                })?,
                            _ => {
                                return Err(
                                    self.invalid(format!("{path}.env"), "keys must be strings")
                                )
                            }
                        };
                        env.push((key, value.clone()));
                    }
                }
                _ => return Err(self.invalid(format!("{path}.env"), "must be an object")),
            }
        }
        Ok(Task {
            kill_signal: self.string(b, &path, "kill_signal")?.unwrap_or_default(),
            user: self.string(b, &path, "user")?.unwrap_or_default(),
            name,
            driver,
            config: config.unwrap_or_default(),
            env,
            resources,
            kill_timeout,
            templates,
        })
    }

    fn resources(&mut self, b: &Body, path: &str) -> Result<Resources, JobError> {
        let mut out = Resources::default();
        for attr in b.attributes() {
            let field = format!("{path}.{}", attr.key());
            let number = |value: Value| {
                value
                    .as_i64()
                    .filter(|n| *n >= 0)
                    .ok_or_else(|| self.invalid(&field, "must be a non-negative integer"))
            };
            let value = eval(attr.expr(), &Context::new()).map_err(|e| self.invalid(&field, e))?;
            match attr.key() {
                "cpu" => out.cpu_mhz = number(value)?,
                "memory" => out.memory_mb = number(value)?,
                "memory_max" => out.memory_max_mb = number(value)?,
                "cores" | "disk" | "iops" | "secrets" => self.warnings.push(format!(
                    "{field} is ignored (no reservation is made by elide-run)"
                )),
                _ => return Err(self.invalid(field, "unknown resources attribute")),
            }
        }
        for block in b.blocks() {
            self.warnings.push(format!(
                "{path}.{} is ignored (devices and networks are not emulated)",
                block.identifier()
            ));
        }
        if out.memory_mb == 0 {
            return Err(self.invalid(format!("{path}.memory"), "must be greater than 0"));
        }
        Ok(out)
    }

    fn template(&mut self, b: &Body, path: &str) -> Result<TemplateSpec, JobError> {
        let destination = self
            .string(b, path, "destination")?
            .ok_or_else(|| self.invalid(format!("{path}.destination"), "is required"))?;
        let env = match self.value(b, path, "env")? {
            None => false,
            Some(Value::Bool(b)) => b,
            Some(_) => return Err(self.invalid(format!("{path}.env"), "must be a bool")),
        };
        for attr in b.attributes() {
            if !matches!(
                attr.key(),
                "data"
                    | "source"
                    | "destination"
                    | "perms"
                    | "env"
                    | "left_delimiter"
                    | "right_delimiter"
            ) {
                self.warnings.push(format!(
                    "{path}.{} is ignored (templates are rendered once, before the task starts)",
                    attr.key()
                ));
            }
        }
        Ok(TemplateSpec {
            data: self.string(b, path, "data")?,
            source: self.string(b, path, "source")?,
            perms: self
                .string(b, path, "perms")?
                .unwrap_or_else(|| "644".into()),
            left_delimiter: self
                .string(b, path, "left_delimiter")?
                .unwrap_or_else(|| "{{".into()),
            right_delimiter: self
                .string(b, path, "right_delimiter")?
                .unwrap_or_else(|| "}}".into()),
            destination,
            env,
        })
    }

    fn warn_unsupported(&mut self, b: &Body, path: &str, unsupported: &[&str]) {
        for block in b.blocks() {
            if unsupported.contains(&block.identifier()) {
                self.warnings.push(format!(
                    "{path}.{} is not supported by elide-run and is ignored",
                    block.identifier()
                ));
            }
        }
    }

    /// An attribute evaluated without variables.
    fn value(&self, b: &Body, path: &str, key: &str) -> Result<Option<Value>, JobError> {
        let Some(attr) = b.attributes().find(|a| a.key() == key) else {
            return Ok(None);
        };
        eval(attr.expr(), &Context::new())
            .map(Some)
            .map_err(|e| self.invalid(format!("{path}.{key}"), e))
    }

    fn string(&self, b: &Body, path: &str, key: &str) -> Result<Option<String>, JobError> {
        match self.value(b, path, key)? {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(Value::Bool(b)) => Ok(Some(b.to_string())),
            Some(_) => Err(self.invalid(format!("{path}.{key}"), "must be a string")),
        }
    }
}

fn single_label(block: &hcl::Block) -> Option<String> {
    match block.labels() {
        [label] if !label.as_str().is_empty() => Some(label.as_str().to_owned()),
        _ => None,
    }
}

/// Evaluates an expression; the error text names what failed (for
/// example an unknown variable).
pub fn eval(expr: &Expression, ctx: &Context<'_>) -> Result<Value, String> {
    expr.evaluate(ctx).map_err(|e| e.to_string())
}

/// The driver name the plugin reports and jobs use (`driver = "elide"`).
pub const DRIVER_NAME: &str = "elide";

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Job, JobError> {
        Job::parse(Path::new("test.nomad"), text)
    }

    #[test]
    fn reads_a_batch_job_with_defaults() {
        let job = parse(
            r#"
            job "hello" {
              type = "batch"
              datacenters = ["dc7"]
              group "g" {
                task "t" {
                  driver = "elide"
                  config {
                    code = "print(1)"
                    language = "python"
                  }
                  env { A = "1" }
                  template {
                    destination = "local/x.py"
                    data = <<EOF
print("hi")
EOF
                  }
                }
                task "other" {
                  driver = "docker"
                }
              }
            }"#,
        )
        .unwrap();
        assert_eq!(job.id, "hello");
        assert_eq!(job.name, "hello");
        assert_eq!(job.job_type, JobType::Batch);
        assert_eq!(job.datacenter, "dc7");
        assert_eq!(job.region, "global");
        assert_eq!(job.namespace, "default");
        let tasks: Vec<_> = job.tasks_with_driver("elide").collect();
        assert_eq!(tasks.len(), 1);
        let (group, task) = tasks[0];
        assert_eq!(group.name, "g");
        assert_eq!(task.resources, Resources::default());
        assert_eq!(task.resources.memory_mb, 300);
        assert_eq!(task.kill_timeout, Duration::from_secs(5));
        assert_eq!(task.kill_signal, "");
        assert_eq!(task.env.len(), 1);
        assert_eq!(task.templates[0].data.as_deref(), Some("print(\"hi\")\n"));
        assert_eq!(task.templates[0].perms, "644");
    }

    #[test]
    fn reads_service_settings_and_warns_about_unsupported_blocks() {
        let job = parse(
            r#"
            job "svc" {
              group "g" {
                count = 2
                network {
                  port "http" {}
                }
                task "t" {
                  driver = "elide"
                  kill_signal = "SIGTERM"
                  kill_timeout = "1m30s"
                  resources {
                    cpu = 200
                    memory = 64
                  }
                  service { name = "x" }
                  config { script = "local/a.py" }
                }
              }
            }"#,
        )
        .unwrap();
        assert_eq!(job.job_type, JobType::Service);
        let task = &job.groups[0].tasks[0];
        assert_eq!(task.kill_signal, "SIGTERM");
        assert_eq!(task.kill_timeout, Duration::from_secs(90));
        assert_eq!(task.resources.memory_mb, 64);
        assert_eq!(task.resources.cpu_mhz, 200);
        assert_eq!(job.groups[0].ports[0].label, "http");
        let warnings = job.warnings.join("\n");
        assert!(warnings.contains("count = 2"), "{warnings}");
        assert!(!warnings.contains("network"), "{warnings}");
        assert!(warnings.contains("task.t.service"), "{warnings}");
    }

    #[test]
    fn errors_name_the_file_and_field() {
        let err = parse("job \"x\" {").unwrap_err();
        assert!(matches!(err, JobError::Syntax { .. }), "{err}");
        assert!(
            err.to_string().starts_with("test.nomad: HCL syntax error"),
            "{err}"
        );

        let err = parse("job \"x\" {\n group \"g\" {\n task \"t\" {\n config {}\n }\n }\n }")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "test.nomad: job.x.group.g.task.t.driver: is required"
        );

        let err = parse(r#"job "x" { type = "cron" }"#).unwrap_err();
        assert!(err.to_string().contains("job.x.type"), "{err}");

        let err = parse(
            "job \"x\" {\n group \"g\" {\n task \"t\" {\n driver = \"elide\"\n kill_timeout = \"soon\"\n }\n }\n }",
        )
        .unwrap_err();
        assert!(err.to_string().contains("kill_timeout"), "{err}");

        let err = parse("").unwrap_err();
        assert!(err.to_string().contains("no job block"), "{err}");
    }

    #[test]
    fn a_task_directly_in_the_job_gets_an_implicit_group() {
        let job = parse("job \"x\" {\n task \"t\" {\n driver = \"elide\"\n }\n }").unwrap();
        assert_eq!(job.groups[0].name, "t");
    }
}
