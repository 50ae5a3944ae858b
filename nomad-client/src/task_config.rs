//! The `TaskConfig` a Nomad task runner sends to `StartTask`
//! (`client/allocrunner/taskrunner/task_runner.go`, `buildTaskConfig`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use elide_proto::hashicorp::nomad::plugins::drivers::proto::{
    AllocatedCpuResources, AllocatedMemoryResources, AllocatedTaskResources, LinuxResources,
    Resources, TaskConfig,
};

/// A task's `resources` block, as the scheduler allocated it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskResources {
    /// `cpu` in MHz (Nomad also sends it as the CPU shares).
    pub cpu_mhz: i64,
    /// `memory` in MiB.
    pub memory_mb: i64,
    /// `memory_max` in MiB (0 when unset).
    pub memory_max_mb: i64,
}

impl Default for TaskResources {
    /// Nomad's defaults for a task without a `resources` block.
    fn default() -> TaskResources {
        TaskResources {
            cpu_mhz: 100,
            memory_mb: 300,
            memory_max_mb: 0,
        }
    }
}

/// Everything a task runner knows about one task when it starts it: the
/// job, group and allocation it belongs to, the directories and log FIFOs
/// its prestart hooks made, its environment and resources.
#[derive(Debug, Clone, Default)]
pub struct TaskSpec {
    /// The allocation id.
    pub alloc_id: String,
    /// The task's name.
    pub task: String,
    /// The task group's name.
    pub group: String,
    /// The job's name.
    pub job_name: String,
    /// The job's id.
    pub job_id: String,
    /// The job's namespace.
    pub namespace: String,
    /// `<alloc_dir>`.
    pub alloc_dir: PathBuf,
    /// The task's stdout FIFO.
    pub stdout_fifo: PathBuf,
    /// The task's stderr FIFO.
    pub stderr_fifo: PathBuf,
    /// The task's environment (`NOMAD_*` and its `env` block).
    pub env: BTreeMap<String, String>,
    /// The task's `user`, empty for the driver's default.
    pub user: String,
    /// Its allocated resources.
    pub resources: TaskResources,
    /// The node's name.
    pub node_name: String,
    /// The node's id.
    pub node_id: String,
}

impl TaskSpec {
    /// The `TaskConfig` for one start of this task: `id` is
    /// `<alloc_id>/<task>/<suffix>` (a task runner makes a fresh suffix per
    /// start), and `msgpack_driver_config` the task's `config` block
    /// encoded against the plugin's task schema.
    pub fn task_config(&self, suffix: &str, msgpack_driver_config: Vec<u8>) -> TaskConfig {
        let r = &self.resources;
        TaskConfig {
            id: format!("{}/{}/{suffix}", self.alloc_id, self.task),
            name: self.task.clone(),
            msgpack_driver_config,
            env: self.env.clone().into_iter().collect(),
            resources: Some(Resources {
                allocated_resources: Some(AllocatedTaskResources {
                    cpu: Some(AllocatedCpuResources {
                        cpu_shares: r.cpu_mhz,
                    }),
                    memory: Some(AllocatedMemoryResources {
                        memory_mb: r.memory_mb,
                        memory_max_mb: r.memory_max_mb,
                    }),
                    networks: Vec::new(),
                }),
                linux_resources: Some(LinuxResources {
                    cpu_shares: r.cpu_mhz,
                    memory_limit_bytes: r.memory_mb.max(r.memory_max_mb) * 1024 * 1024,
                    ..Default::default()
                }),
                ports: Vec::new(),
            }),
            user: self.user.clone(),
            alloc_dir: self.alloc_dir.display().to_string(),
            stdout_path: self.stdout_fifo.display().to_string(),
            stderr_path: self.stderr_fifo.display().to_string(),
            task_group_name: self.group.clone(),
            job_name: self.job_name.clone(),
            job_id: self.job_id.clone(),
            alloc_id: self.alloc_id.clone(),
            namespace: self.namespace.clone(),
            node_name: self.node_name.clone(),
            node_id: self.node_id.clone(),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_config_carries_the_spec() {
        let spec = TaskSpec {
            alloc_id: "a1".into(),
            task: "web".into(),
            group: "g".into(),
            job_name: "job".into(),
            job_id: "job-id".into(),
            namespace: "default".into(),
            alloc_dir: "/allocs/a1".into(),
            stdout_fifo: "/allocs/a1/alloc/logs/.web.stdout.fifo".into(),
            stderr_fifo: "/allocs/a1/alloc/logs/.web.stderr.fifo".into(),
            env: [("K".to_owned(), "v".to_owned())].into(),
            user: "nobody".into(),
            resources: TaskResources {
                cpu_mhz: 250,
                memory_mb: 64,
                memory_max_mb: 128,
            },
            node_name: "n".into(),
            node_id: "nid".into(),
        };
        let config = spec.task_config("abcd", vec![0x80]);
        assert_eq!(config.id, "a1/web/abcd");
        assert_eq!(config.name, "web");
        assert_eq!(config.msgpack_driver_config, vec![0x80]);
        assert_eq!(config.env.get("K").map(String::as_str), Some("v"));
        assert_eq!(config.user, "nobody");
        assert_eq!(config.stdout_path, "/allocs/a1/alloc/logs/.web.stdout.fifo");
        assert_eq!(
            (config.task_group_name.as_str(), config.job_name.as_str()),
            ("g", "job")
        );
        let resources = config.resources.unwrap();
        let allocated = resources.allocated_resources.unwrap();
        assert_eq!(allocated.cpu.unwrap().cpu_shares, 250);
        let memory = allocated.memory.unwrap();
        assert_eq!((memory.memory_mb, memory.memory_max_mb), (64, 128));
        assert_eq!(
            resources.linux_resources.unwrap().memory_limit_bytes,
            128 * 1024 * 1024
        );
    }
}
