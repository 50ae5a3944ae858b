//! What a Nomad client's prestart hooks do before `StartTask`: alloc and
//! task directories with their log FIFOs, host ports, the task environment,
//! templates, and the task's `config` encoded against the plugin's schema,
//! ending in the `TaskConfig` the task runner sends.

use std::collections::BTreeMap;
use std::path::Path;

use elide_nomad_client::{TaskResources, TaskSpec};
use elide_proto::hashicorp::nomad::plugins::drivers::proto::TaskConfig;
use elide_proto::hashicorp::nomad::plugins::shared::hclspec::Spec;

use crate::alloc::{AllocDir, TaskDir};
use crate::env::{self, Placement};
use crate::jobspec::{Group, Job, Task};
use crate::network::{self, AssignedPort};
use crate::run_error::RunError;
use crate::template;

/// What prestart works from: the job, the tasks chosen from it, where
/// allocations go, and the plugin's task schema.
pub(crate) struct Prestart<'a> {
    pub(crate) job: &'a Job,
    pub(crate) selected: &'a [(&'a Group, &'a Task)],
    pub(crate) allocs_root: &'a Path,
    pub(crate) task_schema: &'a Spec,
}

/// A task ready to start.
pub(crate) struct PreparedTask<'a> {
    pub(crate) task: &'a Task,
    pub(crate) dir: TaskDir,
    pub(crate) config: TaskConfig,
}

/// Runs prestart for every selected task: one allocation per group.
pub(crate) fn prepare<'a>(prestart: &Prestart<'a>) -> Result<Vec<PreparedTask<'a>>, RunError> {
    let job = prestart.job;
    let node_name = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into());
    let node_id = uuid::Uuid::new_v4().to_string();
    let mut allocs: BTreeMap<String, (String, AllocDir, Vec<AssignedPort>)> = BTreeMap::new();
    let mut prepared = Vec::new();
    for &(group, task) in prestart.selected {
        if !allocs.contains_key(&group.name) {
            let alloc_id = uuid::Uuid::new_v4().to_string();
            let dir = AllocDir::create(prestart.allocs_root, &alloc_id)?;
            let ports = network::assign(&group.ports, |lo, hi| fastrand::u16(lo..=hi)).map_err(
                |problem| RunError::Ports {
                    group: group.name.clone(),
                    problem,
                },
            )?;
            for port in &ports {
                tracing::info!(
                    "group {}: port {:?} is {}:{}",
                    group.name,
                    port.label,
                    network::HOST_IP,
                    port.host_port
                );
            }
            allocs.insert(group.name.clone(), (alloc_id, dir, ports));
        }
        let (alloc_id, alloc, ports) = &allocs[&group.name];
        let task_dir = alloc.add_task(&task.name)?;
        let placement = Placement {
            job,
            group,
            task,
            alloc_id,
            alloc,
            task_dir: &task_dir,
            node_name: &node_name,
            node_id: &node_id,
            ports,
        };
        let task_env = env::build(std::env::vars(), &placement)?;
        for t in &task.templates {
            let path =
                template::write(t, &task_env, &task_dir.dir, &alloc.path).map_err(|error| {
                    RunError::Template {
                        task: task.name.clone(),
                        error,
                    }
                })?;
            tracing::debug!(task = %task.name, "rendered template {}", path.display());
        }
        let ctx = env::context(&task_env, &placement);
        let task_config_error = |error| RunError::TaskConfig {
            file: job.file.clone(),
            task: task.name.clone(),
            error,
        };
        let value =
            elide_cty::body_to_value(&task.config, &ctx, "config").map_err(task_config_error)?;
        let msgpack =
            elide_cty::encode(prestart.task_schema, &value, "config").map_err(task_config_error)?;
        let spec = TaskSpec {
            alloc_id: alloc_id.clone(),
            task: task.name.clone(),
            group: group.name.clone(),
            job_name: job.name.clone(),
            job_id: job.id.clone(),
            namespace: job.namespace.clone(),
            alloc_dir: alloc.path.clone(),
            stdout_fifo: task_dir.stdout_fifo.clone(),
            stderr_fifo: task_dir.stderr_fifo.clone(),
            env: task_env,
            user: task.user.clone(),
            resources: TaskResources {
                cpu_mhz: task.resources.cpu_mhz,
                memory_mb: task.resources.memory_mb,
                memory_max_mb: task.resources.memory_max_mb,
            },
            node_name: node_name.clone(),
            node_id: node_id.clone(),
        };
        // A task runner makes a fresh id suffix for each start.
        let suffix: String = std::iter::repeat_with(fastrand::alphanumeric)
            .take(8)
            .collect();
        prepared.push(PreparedTask {
            task,
            config: spec.task_config(&suffix, msgpack),
            dir: task_dir,
        });
    }
    Ok(prepared)
}
