//! The task environment Nomad builds for a driver with `fs_isolation =
//! NONE`: the agent's own environment minus Nomad's default
//! `env.denylist`, the `NOMAD_*` variables with host paths, and the task's
//! `env` block (interpolated with the variables before it).

use std::collections::BTreeMap;

use hcl::eval::Context;
use hcl::Value;

use crate::alloc::{AllocDir, TaskDir};
use crate::jobspec::{eval, Group, Job, Task};

/// Nomad's default client `env.denylist`: never passed to tasks.
pub const DEFAULT_DENYLIST: &[&str] = &[
    "CONSUL_TOKEN",
    "CONSUL_HTTP_TOKEN",
    "VAULT_TOKEN",
    "NOMAD_LICENSE",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "GOOGLE_APPLICATION_CREDENTIALS",
];

/// A task's `env` entry could not be evaluated.
#[derive(Debug, thiserror::Error)]
#[error("task {task}: env.{key}: {problem}")]
pub struct EnvError {
    /// The task.
    pub task: String,
    /// The variable.
    pub key: String,
    /// What went wrong.
    pub problem: String,
}

/// Where a task runs: the facts the `NOMAD_*` variables describe.
#[derive(Debug, Clone)]
pub struct Placement<'a> {
    /// The job.
    pub job: &'a Job,
    /// The group.
    pub group: &'a Group,
    /// The task.
    pub task: &'a Task,
    /// The allocation id (a UUID).
    pub alloc_id: &'a str,
    /// The allocation directory.
    pub alloc: &'a AllocDir,
    /// The task's directories.
    pub task_dir: &'a TaskDir,
    /// The node's name.
    pub node_name: &'a str,
    /// The node's id.
    pub node_id: &'a str,
    /// The group's ports with their host ports.
    pub ports: &'a [crate::network::AssignedPort],
}

/// Builds the complete task environment from `host` (the agent's
/// environment) and the placement.
pub fn build(
    host: impl IntoIterator<Item = (String, String)>,
    p: &Placement<'_>,
) -> Result<BTreeMap<String, String>, EnvError> {
    let mut env: BTreeMap<String, String> = host
        .into_iter()
        .filter(|(k, _)| !DEFAULT_DENYLIST.contains(&k.as_str()) && !k.starts_with("NOMAD_"))
        .collect();
    let r = &p.task.resources;
    let path = |p: &std::path::Path| p.display().to_string();
    let nomad = [
        ("NOMAD_ALLOC_DIR", path(&p.alloc.shared())),
        ("NOMAD_TASK_DIR", path(&p.task_dir.local)),
        ("NOMAD_SECRETS_DIR", path(&p.task_dir.secrets)),
        ("NOMAD_ALLOC_ID", p.alloc_id.to_owned()),
        ("NOMAD_SHORT_ALLOC_ID", p.alloc_id.chars().take(8).collect()),
        (
            "NOMAD_ALLOC_NAME",
            format!("{}.{}[0]", p.job.id, p.group.name),
        ),
        ("NOMAD_ALLOC_INDEX", "0".to_owned()),
        ("NOMAD_TASK_NAME", p.task.name.clone()),
        ("NOMAD_GROUP_NAME", p.group.name.clone()),
        ("NOMAD_JOB_NAME", p.job.name.clone()),
        ("NOMAD_JOB_ID", p.job.id.clone()),
        ("NOMAD_NAMESPACE", p.job.namespace.clone()),
        ("NOMAD_REGION", p.job.region.clone()),
        ("NOMAD_DC", p.job.datacenter.clone()),
        ("NOMAD_MEMORY_LIMIT", r.memory_mb.to_string()),
        ("NOMAD_CPU_LIMIT", r.cpu_mhz.to_string()),
        ("NOMAD_NODE_NAME", p.node_name.to_owned()),
        ("NOMAD_NODE_ID", p.node_id.to_owned()),
    ];
    env.extend(nomad.into_iter().map(|(k, v)| (k.to_owned(), v)));
    env.extend(crate::network::env(p.ports));
    if r.memory_max_mb > 0 {
        env.insert("NOMAD_MEMORY_MAX_LIMIT".into(), r.memory_max_mb.to_string());
    }
    for (key, expr) in &p.task.env {
        let ctx = context(&env, p);
        let value = eval(expr, &ctx).map_err(|problem| EnvError {
            task: p.task.name.clone(),
            key: key.clone(),
            problem,
        })?;
        let text = match value {
            Value::String(s) => s,
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            other => {
                return Err(EnvError {
                    task: p.task.name.clone(),
                    key: key.clone(),
                    problem: format!("must be a string, number or bool, got {other}"),
                })
            }
        };
        env.insert(key.clone(), text);
    }
    Ok(env)
}

/// The interpolation context of task fields: every variable of `env`
/// that is an HCL identifier (`${NOMAD_TASK_DIR}`), `env["NAME"]`, and
/// `node.*` (`unique.id`, `unique.name`, `datacenter`, `region`).
pub fn context<'a>(env: &BTreeMap<String, String>, p: &Placement<'_>) -> Context<'a> {
    let mut ctx = Context::new();
    for (k, v) in env {
        let identifier = k
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if identifier && !matches!(k.as_str(), "env" | "node" | "attr" | "meta") {
            ctx.declare_var(k.as_str(), v.as_str());
        }
    }
    let env_object: hcl::Map<String, Value> = env
        .iter()
        .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
        .collect();
    ctx.declare_var("env", Value::Object(env_object));
    let mut unique = hcl::Map::new();
    unique.insert("id".to_owned(), Value::from(p.node_id));
    unique.insert("name".to_owned(), Value::from(p.node_name));
    let mut node = hcl::Map::new();
    node.insert("unique".to_owned(), Value::Object(unique));
    node.insert(
        "datacenter".to_owned(),
        Value::from(p.job.datacenter.as_str()),
    );
    node.insert("region".to_owned(), Value::from(p.job.region.as_str()));
    ctx.declare_var("node", Value::Object(node));
    ctx
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn builds_nomad_variables_and_interpolates_the_env_block() {
        let job = Job::parse(
            Path::new("t.nomad"),
            r#"job "j" {
              name = "the-job"
              region = "eu"
              datacenters = ["dc2"]
              group "g" {
                task "t" {
                  driver = "elide"
                  resources {
                    memory = 64
                    cpu = 250
                  }
                  env {
                    DATA = "${NOMAD_ALLOC_DIR}/data"
                    N = 3
                    FROM_HOST = "${env["HOME_X"]}"
                  }
                }
              }
            }"#,
        )
        .unwrap();
        let root = tempfile::tempdir().unwrap();
        let alloc = AllocDir::create(root.path(), "abcdef12-0000").unwrap();
        let task_dir = alloc.add_task("t").unwrap();
        let p = Placement {
            job: &job,
            group: &job.groups[0],
            task: &job.groups[0].tasks[0],
            alloc_id: "abcdef12-0000",
            alloc: &alloc,
            task_dir: &task_dir,
            node_name: "node1",
            node_id: "n-1",
            ports: &[crate::network::AssignedPort {
                label: "http".into(),
                host_port: 23000,
                to: None,
            }],
        };
        let host = [
            ("HOME_X".to_owned(), "/home/x".to_owned()),
            ("VAULT_TOKEN".to_owned(), "secret".to_owned()),
            ("NOMAD_TOKEN".to_owned(), "secret".to_owned()),
        ];
        let env = build(host, &p).unwrap();
        assert_eq!(env["NOMAD_TASK_NAME"], "t");
        assert_eq!(env["NOMAD_GROUP_NAME"], "g");
        assert_eq!(env["NOMAD_JOB_NAME"], "the-job");
        assert_eq!(env["NOMAD_JOB_ID"], "j");
        assert_eq!(env["NOMAD_ALLOC_NAME"], "j.g[0]");
        assert_eq!(env["NOMAD_ALLOC_INDEX"], "0");
        assert_eq!(env["NOMAD_SHORT_ALLOC_ID"], "abcdef12");
        assert_eq!(env["NOMAD_REGION"], "eu");
        assert_eq!(env["NOMAD_DC"], "dc2");
        assert_eq!(env["NOMAD_NAMESPACE"], "default");
        assert_eq!(env["NOMAD_MEMORY_LIMIT"], "64");
        assert_eq!(env["NOMAD_CPU_LIMIT"], "250");
        assert_eq!(env["NOMAD_TASK_DIR"], task_dir.local.display().to_string());
        assert_eq!(env["DATA"], format!("{}/data", alloc.shared().display()));
        assert_eq!(env["N"], "3");
        assert_eq!(env["NOMAD_PORT_http"], "23000");
        assert_eq!(env["NOMAD_ADDR_http"], "127.0.0.1:23000");
        assert_eq!(env["FROM_HOST"], "/home/x");
        assert!(!env.contains_key("VAULT_TOKEN"));
        assert!(!env.contains_key("NOMAD_TOKEN"));
    }
}
