//! What Nomad sees of the daemon's cgroups, through the real plugin: an OOM
//! kill at the memory limit in `WaitTask`, CPU percent and `total_ticks`
//! computed from the node topology `SetConfig` carried, memory from the
//! cgroup in `TaskStats`, and a task placed in the cgroup Nomad prepared
//! for it (`linux_resources.cpuset_cgroup`).
//!
//! They need a cgroup memory controller the daemon can write; on a host
//! without one they fail saying so.

use std::path::{Path, PathBuf};
use std::time::Duration;

use elide_e2e::cty::{PluginConfig, TaskConfig};
use elide_e2e::daemon::Daemon;
use elide_e2e::nomad::{Alloc, NomadHost};
use elide_proto::elide::daemon::v1 as pb;
use elide_proto::hashicorp::nomad::plugins::base::proto::{ClientTopology, ClientTopologyCore};
use elide_proto::hashicorp::nomad::plugins::drivers::proto::{
    cpu_usage, memory_usage, LinuxResources, TaskResourceUsage, TaskStatsRequest,
};
use futures::StreamExt;

const LIMIT: Duration = Duration::from_secs(30);
/// The test node: two cores of 2000 MHz.
const CORE_MHZ: u64 = 2000;

async fn setup() -> (Daemon, NomadHost) {
    let daemon = Daemon::start().await;
    let caps = daemon
        .client()
        .await
        .get_capabilities(pb::GetCapabilitiesRequest {})
        .await
        .expect("GetCapabilities")
        .into_inner();
    assert_eq!(
        caps.memory_limits, "enforced",
        "this host gives the daemon no cgroups, so nothing here can be tested: {}",
        caps.memory_limits_detail
    );
    let host = plugin_for(&daemon).await;
    (daemon, host)
}

/// A plugin configured for `daemon` on the test node.
async fn plugin_for(daemon: &Daemon) -> NomadHost {
    let mut host = NomadHost::launch().await;
    let core = |id| ClientTopologyCore {
        core_id: id,
        base_speed: CORE_MHZ,
        ..Default::default()
    };
    host.set_config_with_topology(
        &PluginConfig::for_socket(&daemon.socket),
        ClientTopology {
            cores: vec![core(0), core(1)],
            ..Default::default()
        },
    )
    .await;
    host
}

fn with_memory_mb(
    mut task: elide_proto::hashicorp::nomad::plugins::drivers::proto::TaskConfig,
    mb: i64,
) -> elide_proto::hashicorp::nomad::plugins::drivers::proto::TaskConfig {
    let memory = task
        .resources
        .as_mut()
        .and_then(|r| r.allocated_resources.as_mut())
        .and_then(|a| a.memory.as_mut())
        .expect("the test alloc sets memory");
    memory.memory_mb = mb;
    task
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_past_the_memory_limit_is_oom_killed_in_wait_task() {
    let (_daemon, mut host) = setup().await;
    for (language, code) in [
        (
            "python",
            "blob = b'x' * (400 * 1024 * 1024)\nprint('survived')\n",
        ),
        (
            "javascript",
            "const b = Buffer.alloc(400 * 1024 * 1024, 1); console.log('survived', b.length);",
        ),
    ] {
        let alloc = Alloc::new("hog");
        let task = with_memory_mb(alloc.task_config(&TaskConfig::code(language, code)), 64);
        host.start(task.clone()).await.expect("StartTask");
        let exit = host.wait(&task.id, LIMIT).await;
        let result = exit.result.expect("result");
        assert!(result.oom_killed, "{language}: {exit:?}");
        assert_eq!(result.signal, 9, "{language}: {exit:?}");
        assert!(
            exit.err.contains("OOM killer") && exit.err.contains("limit 64 MiB"),
            "{language}: {}",
            exit.err
        );
        assert!(!alloc.stdout.text().contains("survived"));
        host.destroy(&task.id).await;
    }
}

/// Samples of a running task's stats, every 500 ms, until `enough` says so
/// (within the test limit); the last one.
async fn stats_until(
    host: &mut NomadHost,
    task_id: &str,
    enough: impl Fn(&TaskResourceUsage, usize) -> bool,
) -> TaskResourceUsage {
    let mut stream = host
        .driver
        .task_stats(TaskStatsRequest {
            task_id: task_id.into(),
            collection_interval: Some(prost_types::Duration {
                seconds: 0,
                nanos: 500_000_000,
            }),
        })
        .await
        .expect("TaskStats")
        .into_inner();
    let deadline = tokio::time::Instant::now() + LIMIT;
    let mut n = 0;
    loop {
        let sample = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("stats in time")
            .expect("a sample")
            .expect("stats");
        n += 1;
        let usage = sample.stats.unwrap().agg_resource_usage.unwrap();
        if enough(&usage, n) {
            return usage;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_percent_and_total_ticks_follow_the_work_done() {
    let (_daemon, mut host) = setup().await;
    let busy = Alloc::new("busy");
    let busy_task = busy.task_config(&TaskConfig::code("python", "while True:\n    pass\n"));
    host.start(busy_task.clone()).await.expect("StartTask");
    let idle = Alloc::new("idle");
    let idle_task = idle.task_config(&TaskConfig::code(
        "python",
        "import time\ntime.sleep(120)\n",
    ));
    host.start(idle_task.clone()).await.expect("StartTask");

    // Past the first samples (the interpreter's start-up).
    let busy_cpu = stats_until(&mut host, &busy_task.id, |_, n| n >= 5)
        .await
        .cpu
        .unwrap();
    let idle_cpu = stats_until(&mut host, &idle_task.id, |_, n| n >= 5)
        .await
        .cpu
        .unwrap();
    for cpu in [&busy_cpu, &idle_cpu] {
        assert!(
            cpu.measured_fields
                .contains(&(cpu_usage::Fields::TotalTicks as i32)),
            "{cpu:?}"
        );
        // Nomad's formula: share of one core times the node's MHz per core.
        let expected = cpu.percent / 100.0 * (2 * CORE_MHZ) as f64 / 2.0;
        assert!((cpu.total_ticks - expected).abs() < 1e-6, "{cpu:?}");
        assert!(
            (cpu.percent - (cpu.user_mode + cpu.system_mode)).abs() < 1e-6,
            "{cpu:?}"
        );
    }
    // One thread spinning on a two-core machine shared with other builds:
    // a good part of one core (measured 25-100 % here), never more than
    // both.
    assert!(
        busy_cpu.percent > 10.0 && busy_cpu.percent <= 210.0,
        "busy loop at {} %",
        busy_cpu.percent
    );
    assert!(busy_cpu.total_ticks > 200.0, "{busy_cpu:?}");
    assert!(idle_cpu.percent < 5.0, "sleeper at {} %", idle_cpu.percent);
    assert!(idle_cpu.total_ticks < 100.0, "{idle_cpu:?}");
    for task in [&busy_task, &idle_task] {
        host.stop(&task.id, Duration::from_secs(2), "SIGKILL").await;
        host.wait(&task.id, LIMIT).await;
        host.destroy(&task.id).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stats_are_the_cgroups() {
    let (_daemon, mut host) = setup().await;
    let alloc = Alloc::new("holder");
    let task = alloc.task_config(&TaskConfig::code(
        "python",
        "import time\nblob = b'x' * (100 * 1024 * 1024)\nprint('holding', flush=True)\ntime.sleep(120)\n",
    ));
    host.start(task.clone()).await.expect("StartTask");
    alloc.stdout.wait_for("holding", LIMIT);
    let memory = stats_until(&mut host, &task.id, |u, _| {
        u.memory.as_ref().is_some_and(|m| m.rss > 95 << 20)
    })
    .await
    .memory
    .unwrap();
    let mib = |b: u64| b >> 20;
    assert!(
        (95..=160).contains(&mib(memory.rss)),
        "rss {} MiB",
        mib(memory.rss)
    );
    assert!(memory.usage >= memory.rss, "{memory:?}");
    assert!(memory.max_usage >= memory.usage, "{memory:?}");
    use memory_usage::Fields as F;
    for field in [F::Rss, F::Cache, F::Usage, F::MaxUsage] {
        assert!(
            memory.measured_fields.contains(&(field as i32)),
            "{field:?} not measured: {memory:?}"
        );
    }
    assert!(!memory.measured_fields.contains(&(F::Swap as i32)));
    host.stop(&task.id, Duration::from_secs(2), "SIGKILL").await;
    host.wait(&task.id, LIMIT).await;
    host.destroy(&task.id).await;
}

/// The v1 mount point of `controller`, from `/proc/self/mountinfo`.
fn v1_mount(controller: &str) -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mut right = right.split(' ');
        let is_v1 = right.next() == Some("cgroup");
        let options = right.nth(1).unwrap_or_default();
        (is_v1 && options.split(',').any(|o| o == controller))
            .then(|| PathBuf::from(left.split(' ').nth(4).unwrap_or_default()))
    })
}

/// Cgroup directories a test made as Nomad would; removed (deepest first)
/// when dropped.
struct MadeDirs(Vec<PathBuf>);

impl MadeDirs {
    fn make(&mut self, dir: &Path, cpuset_from: Option<&Path>) {
        std::fs::create_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        self.0.push(dir.to_path_buf());
        // A v1 cpuset cgroup takes no process before it has cpus and mems
        // (Nomad copies them from its parent too).
        if let Some(root) = cpuset_from {
            for file in ["cpuset.cpus", "cpuset.mems"] {
                let value = std::fs::read_to_string(root.join(file)).unwrap();
                std::fs::write(dir.join(file), value.trim()).unwrap();
            }
        }
    }
}

impl Drop for MadeDirs {
    fn drop(&mut self) {
        for dir in self.0.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

fn cgroup_line(pid: i32, controller: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    text.lines()
        .find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            controllers
                .split(',')
                .any(|c| c == controller)
                .then(|| path.to_string())
        })
        .unwrap_or_else(|| panic!("no {controller} line in {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_runs_in_the_cgroup_nomad_prepared_with_its_limits() {
    let (_daemon, mut host) = setup().await;
    let (Some(cpuset), Some(memory), Some(cpu)) =
        (v1_mount("cpuset"), v1_mount("memory"), v1_mount("cpu"))
    else {
        panic!("this test lays out Nomad's cgroup v1 task cgroups (cpuset, memory, cpu mounts), which this host does not have");
    };
    let alloc = Alloc::new("placed");
    let parent = format!("nomad-e2e-{}", std::process::id());
    let scope = format!("{}.{}", alloc.alloc_id, alloc.task);
    let mut made = MadeDirs(Vec::new());
    made.make(&cpuset.join(&parent), Some(&cpuset));
    made.make(&cpuset.join(&parent).join("share"), Some(&cpuset));
    let task_cpuset = cpuset.join(&parent).join("share").join(&scope);
    made.make(&task_cpuset, Some(&cpuset));
    for mount in [&memory, &cpu] {
        made.make(&mount.join(&parent), None);
        made.make(&mount.join(&parent).join(&scope), None);
    }

    let mut task = alloc.task_config(&TaskConfig::code(
        "python",
        "import os, time\nprint('pid', os.getpid(), flush=True)\ntime.sleep(120)\n",
    ));
    task.resources.as_mut().unwrap().linux_resources = Some(LinuxResources {
        cpu_shares: 500,
        memory_limit_bytes: 256 << 20,
        cpuset_cgroup: task_cpuset.display().to_string(),
        ..Default::default()
    });
    host.start(task.clone()).await.expect("StartTask");
    let out = alloc.stdout.wait_for("\n", LIMIT);
    let pid: i32 = out.split_whitespace().nth(1).unwrap().parse().unwrap();

    assert_eq!(
        cgroup_line(pid, "cpuset"),
        format!("/{parent}/share/{scope}")
    );
    assert_eq!(cgroup_line(pid, "memory"), format!("/{parent}/{scope}"));
    assert_eq!(cgroup_line(pid, "cpu"), format!("/{parent}/{scope}"));
    let read = |p: PathBuf| std::fs::read_to_string(&p).unwrap().trim().to_string();
    let task_memory = memory.join(&parent).join(&scope);
    assert_eq!(
        read(task_memory.join("memory.limit_in_bytes")),
        (256u64 << 20).to_string()
    );
    assert_eq!(
        read(cpu.join(&parent).join(&scope).join("cpu.shares")),
        "500"
    );

    host.stop(&task.id, Duration::from_secs(2), "SIGKILL").await;
    host.wait(&task.id, LIMIT).await;
    host.destroy(&task.id).await;
    // Nomad's cgroups are Nomad's to remove: the daemon emptied them only.
    assert!(task_memory.exists());
    let deadline = tokio::time::Instant::now() + LIMIT;
    while !std::fs::read_to_string(task_memory.join("cgroup.procs"))
        .unwrap()
        .trim()
        .is_empty()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the task's processes stayed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_resume_after_recover_task() {
    let (daemon, mut host) = setup().await;
    let alloc = Alloc::new("busy");
    let task = alloc.task_config(&TaskConfig::code("python", "while True:\n    pass\n"));
    let handle = host.start(task.clone()).await.expect("StartTask");
    stats_until(&mut host, &task.id, |_, n| n >= 2).await;

    host.plugin.kill_hard();
    let mut host = plugin_for(&daemon).await;
    host.recover(&handle).await.expect("RecoverTask");
    let cpu = stats_until(&mut host, &task.id, |_, n| n >= 4)
        .await
        .cpu
        .unwrap();
    assert!(
        cpu.percent > 10.0,
        "busy loop at {} % after recovery",
        cpu.percent
    );
    let expected = cpu.percent / 100.0 * (2 * CORE_MHZ) as f64 / 2.0;
    assert!((cpu.total_ticks - expected).abs() < 1e-6, "{cpu:?}");
    host.stop(&task.id, Duration::from_secs(2), "SIGKILL").await;
    host.wait(&task.id, LIMIT).await;
    host.destroy(&task.id).await;
}
