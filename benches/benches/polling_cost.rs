//! `polling_cost`: daemon requests per task-hour and per client-hour, with
//! the driver's pushed watch and with polling at the original design's 1 s
//! interval, for 1, 100 and 1,000 running tasks. Counted, not timed: the
//! real plugin and the real daemon (scripted runtime, so a thousand tasks
//! cost no interpreters), requests read from `GetDaemonStats` over a
//! steady-state window and scaled to an hour.
//!
//! Under `cargo bench` (argument `--bench`) it runs every size and writes
//! `target/elide-bench/polling_cost.json`; under `cargo test --benches` it
//! runs one small size as a smoke test.

use std::collections::BTreeMap;
use std::time::Duration;

use elide_e2e::cty::{PluginConfig, TaskConfig as DriverConfig};
use elide_e2e::daemon::Daemon;
use elide_e2e::nomad::NomadHost;
use elide_proto::elide::daemon::v1 as pb;
use elide_proto::hashicorp::nomad::plugins::drivers::proto::TaskConfig;

/// Requests that exist only to learn about executions' status.
const STATUS_RPCS: [&str; 4] = [
    "GetExecutionStatus",
    "ListExecutions",
    "WatchSession",
    "WatchExecution",
];

async fn requests(daemon: &Daemon) -> BTreeMap<String, u64> {
    let mut client = daemon.client().await;
    let mut stats = client
        .get_daemon_stats(pb::GetDaemonStatsRequest {})
        .await
        .expect("stats")
        .into_inner();
    stats.requests.remove("GetDaemonStats");
    stats.requests
}

fn delta(
    after: &BTreeMap<String, u64>,
    before: &BTreeMap<String, u64>,
    only: Option<&[&str]>,
) -> u64 {
    after
        .iter()
        .filter(|(k, _)| only.is_none_or(|o| o.contains(&k.as_str())))
        .map(|(k, v)| v - before.get(k).copied().unwrap_or(0))
        .sum()
}

/// (all requests, status requests) per hour with `tasks` running in `mode`.
async fn measure(tasks: usize, mode: &str, window: Duration) -> (f64, f64) {
    let daemon = Daemon::start_with(&["--runtime", "scripted"]).await;
    let config = PluginConfig {
        status_mode: Some(mode.into()),
        poll_interval: Some("1s".into()),
        ..PluginConfig::for_socket(&daemon.socket)
    };
    let mut host = NomadHost::configured(&config).await;
    let root = tempfile::tempdir().expect("tempdir");
    // Tasks run as `nobody` and must reach their task directories.
    std::fs::set_permissions(
        root.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o711),
    )
    .expect("tempdir mode");
    let mut ids = Vec::new();
    for i in 0..tasks {
        let alloc_dir = root.path().join(format!("alloc{i}"));
        std::fs::create_dir_all(alloc_dir.join("sleeper").join("private")).expect("task dir");
        let task = TaskConfig {
            id: format!("alloc{i}/sleeper/{i:08x}"),
            name: "sleeper".into(),
            msgpack_driver_config: DriverConfig::code("python", "sleep 3600s").encode(),
            alloc_dir: alloc_dir.display().to_string(),
            stdout_path: "/dev/null".into(),
            stderr_path: "/dev/null".into(),
            alloc_id: format!("alloc{i}"),
            job_name: "polling".into(),
            task_group_name: "group".into(),
            ..Default::default()
        };
        host.start(task.clone()).await.expect("StartTask");
        ids.push(task.id);
    }
    // Steady state: every task started and followed.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = requests(&daemon).await;
    tokio::time::sleep(window).await;
    let after = requests(&daemon).await;
    for id in &ids {
        host.destroy(id).await;
    }
    let per_hour = 3600.0 / window.as_secs_f64();
    (
        delta(&after, &before, None) as f64 * per_hour,
        delta(&after, &before, Some(&STATUS_RPCS)) as f64 * per_hour,
    )
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (sizes, window): (&[usize], _) = if full {
        (&[1, 100, 1000], Duration::from_secs(20))
    } else {
        (&[2], Duration::from_secs(3))
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!("polling_cost: daemon requests per hour (steady state, {window:?} window)");
    println!(
        "{:>6} {:>22} {:>22} {:>22} {:>22}",
        "tasks",
        "poll all/client-h",
        "poll status/task-h",
        "watch all/client-h",
        "watch status/task-h"
    );
    let mut rows = Vec::new();
    for &n in sizes {
        let (poll_all, poll_status) = rt.block_on(measure(n, "poll", window));
        let (watch_all, watch_status) = rt.block_on(measure(n, "watch", window));
        println!(
            "{n:>6} {poll_all:>22.0} {:>22.1} {watch_all:>22.0} {:>22.1}",
            poll_status / n as f64,
            watch_status / n as f64
        );
        rows.push(format!(
            "{{\"tasks\":{n},\"poll_requests_per_client_hour\":{poll_all:.0},\"poll_status_requests_per_task_hour\":{:.1},\"watch_requests_per_client_hour\":{watch_all:.0},\"watch_status_requests_per_task_hour\":{:.1}}}",
            poll_status / n as f64,
            watch_status / n as f64
        ));
        if !full {
            // The smoke run checks what the benchmark exists to show.
            assert!(poll_status > 0.0, "polling must issue status requests");
            assert_eq!(
                watch_status, 0.0,
                "the watch must need no status requests in steady state"
            );
        }
    }
    if full {
        elide_benches::write_counted(&elide_e2e::binaries::profile_dir(), "polling_cost", &rows);
    }
}
