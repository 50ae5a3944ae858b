//! Nomad ≥ 2.0.4's optional `Driver.Init` and `Driver.Shutdown`, through
//! the real plugin: Init after `SetConfig` (fatal only without a
//! configuration, never for a daemon that does not answer yet), and
//! Shutdown on agent shutdown, which detaches from running tasks without
//! stopping them so a new plugin process recovers them with their output
//! exactly once. Agents that never call either are covered by every other
//! test.

use std::time::Duration;

use elide_e2e::cty::{PluginConfig, TaskConfig};
use elide_e2e::daemon::Daemon;
use elide_e2e::nomad::{Alloc, NomadHost};
use elide_proto::elide::daemon::v1 as pb;
use elide_proto::hashicorp::nomad::plugins::drivers::proto::fingerprint_response::HealthState;
use elide_proto::hashicorp::nomad::plugins::drivers::proto::{InitRequest, ShutdownRequest};
use tonic::Code;

/// Upper bound for anything a test waits for.
const LIMIT: Duration = Duration::from_secs(30);

/// `Driver.Init` with no configuration is refused (Nomad then kills this
/// instance and launches one that gets `SetConfig` first); after
/// `SetConfig` it succeeds and tasks run as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_needs_set_config_and_then_tasks_run() {
    let daemon = Daemon::start().await;
    let mut host = NomadHost::launch().await;
    let err = host
        .driver
        .init(InitRequest {})
        .await
        .expect_err("Init before SetConfig");
    assert_eq!(
        (err.code(), err.message()),
        (
            Code::FailedPrecondition,
            "plugin not configured yet (SetConfig has not been called)"
        )
    );
    host.set_config(&PluginConfig::for_socket(&daemon.socket))
        .await;
    host.driver.init(InitRequest {}).await.expect("Init");

    let alloc = Alloc::new("after-init");
    let task = alloc.task_config(&TaskConfig::code("python", "print('ran')\n"));
    host.start(task.clone()).await.expect("StartTask");
    let exit = host.wait(&task.id, LIMIT).await;
    assert_eq!(
        (exit.result.expect("result").exit_code, exit.err.as_str()),
        (0, "")
    );
    assert_eq!(alloc.stdout.text_after_eofs(1, LIMIT), "ran\n");
}

/// A daemon that does not answer at Init is no reason to kill the plugin:
/// Init succeeds and the fingerprint says why the driver is unhealthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_with_no_daemon_succeeds_and_the_fingerprint_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("absent.sock");
    let mut host = NomadHost::configured(&PluginConfig::for_socket(&socket)).await;
    host.driver
        .init(InitRequest {})
        .await
        .expect("Init is not fatal for an absent daemon");
    let fingerprint = host
        .fingerprint_until(HealthState::Unhealthy, LIMIT)
        .await
        .expect("an unhealthy fingerprint");
    assert!(
        fingerprint
            .health_description
            .contains(&socket.display().to_string()),
        "{fingerprint:?}"
    );
}

/// `Driver.Shutdown` answers within Nomad's 2 s deadline and leaves the
/// running task alone: the daemon still runs it, the plugin closes its
/// FIFO write ends and takes no new task; a new plugin process recovers
/// the task, and Nomad's logs get every line exactly once and the true
/// exit code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_detaches_and_a_new_plugin_recovers_the_running_task() {
    let daemon = Daemon::start().await;
    let config = PluginConfig::for_socket(&daemon.socket);
    let mut host = NomadHost::configured(&config).await;
    host.driver.init(InitRequest {}).await.expect("Init");
    let alloc = Alloc::new("survivor");
    let go = alloc.task_dir().join("tmp/go");
    let code = format!(
        "import os, time\nfor i in range(3):\n    print('before', i, flush=True)\n\
while not os.path.exists({go:?}):\n    time.sleep(0.05)\n\
for i in range(3):\n    print('after', i, flush=True)\nraise SystemExit(5)\n",
        go = go.display().to_string()
    );
    let task = alloc.task_config(&TaskConfig::code("python", &code));
    let handle = host.start(task.clone()).await.expect("StartTask");
    let first_half = alloc.stdout.wait_for("before 2\n", LIMIT);
    alloc
        .wait_for_recorded_stdout(first_half.len(), LIMIT)
        .await;

    let mut shutdown = tonic::Request::new(ShutdownRequest {});
    shutdown.set_timeout(Duration::from_secs(2));
    host.driver
        .shutdown(shutdown)
        .await
        .expect("Shutdown answers within Nomad's deadline");
    // The forwarder let go of the FIFO: logmon sees the writer's close.
    alloc.stdout.wait_for_eofs(1, LIMIT);
    let running: Vec<_> = daemon
        .executions()
        .await
        .into_iter()
        .filter(|e| e.state() == pb::ExecutionState::Running)
        .collect();
    assert_eq!(running.len(), 1, "the task still runs: {running:?}");
    let other = Alloc::new("too-late");
    let err = host
        .start(other.task_config(&TaskConfig::code("python", "print(1)\n")))
        .await
        .expect_err("no new task after Shutdown");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("Driver.Shutdown"), "{err:?}");

    // go-plugin's Kill: the controller's Shutdown, then the process exits.
    host.shutdown().await;
    assert!(
        host.plugin.wait_for_exit(LIMIT).is_some(),
        "the plugin exits after GRPCController/Shutdown"
    );
    drop(host);

    let mut host = NomadHost::configured(&config).await;
    host.driver.init(InitRequest {}).await.expect("Init");
    host.recover(&handle).await.expect("RecoverTask");
    std::fs::write(&go, "").unwrap();
    let exit = host.wait(&task.id, LIMIT).await;
    assert_eq!(
        (exit.result.expect("result").exit_code, exit.err.as_str()),
        (5, "")
    );
    assert_eq!(
        alloc.stdout.text_after_eofs(2, LIMIT),
        "before 0\nbefore 1\nbefore 2\nafter 0\nafter 1\nafter 2\n",
        "every line exactly once"
    );
    host.destroy(&task.id).await;
}
