//! The driver on a bad day, with real processes: the daemon crashes and
//! comes back, the daemon hangs and resumes, the session vanishes. After
//! each, every task has exactly one correct terminal result, the FIFOs hold
//! the program's output exactly once, and nothing is left running.

use std::time::Duration;

use elide_e2e::cty::{PluginConfig, TaskConfig};
use elide_e2e::daemon::Daemon;
use elide_e2e::nomad::{Alloc, NomadHost};
use elide_proto::elide::daemon::v1 as pb;
use nix::sys::signal::Signal;

/// Upper bound for anything a test waits for.
const LIMIT: Duration = Duration::from_secs(30);

async fn setup() -> (Daemon, NomadHost) {
    let daemon = Daemon::start().await;
    let host = NomadHost::configured(&PluginConfig::for_socket(&daemon.socket)).await;
    (daemon, host)
}

/// Nothing may still run on the daemon.
async fn assert_nothing_running(daemon: &Daemon) {
    let running: Vec<_> = daemon
        .executions()
        .await
        .into_iter()
        .filter(|e| {
            matches!(
                e.state(),
                pb::ExecutionState::Queued | pb::ExecutionState::Running
            )
        })
        .collect();
    assert!(
        running.is_empty(),
        "still running on the daemon: {running:?}"
    );
}

/// A task that is known to work, to show the driver recovered.
async fn run_hello(host: &mut NomadHost, name: &str) {
    let alloc = Alloc::new(name);
    let task = alloc.task_config(&TaskConfig::code("python", "print('hello again')\n"));
    host.start(task.clone())
        .await
        .expect("StartTask after the fault");
    let exit = host.wait(&task.id, LIMIT).await;
    assert_eq!(exit.result.expect("result").exit_code, 0, "{:?}", exit.err);
    assert_eq!(alloc.stdout.text_after_eofs(1, LIMIT), "hello again\n");
    host.destroy(&task.id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_crash_fails_running_tasks_explicitly_and_keeps_finished_results() {
    let (mut daemon, mut host) = setup().await;
    let done = Alloc::new("done");
    let done_task = done.task_config(&TaskConfig::code(
        "python",
        "print('finished')\nraise SystemExit(4)\n",
    ));
    host.start(done_task.clone()).await.expect("StartTask");
    let long = Alloc::new("long");
    let long_task = long.task_config(&TaskConfig::code(
        "python",
        "import time\nprint('started', flush=True)\ntime.sleep(60)\n",
    ));
    host.start(long_task.clone()).await.expect("StartTask");
    long.stdout.wait_for("started\n", LIMIT);
    let finished = host.wait(&done_task.id, LIMIT).await;
    assert_eq!(finished.result.expect("result").exit_code, 4);

    daemon.kill_hard();
    daemon.restart().await;

    let lost = host.wait(&long_task.id, LIMIT).await;
    assert!(lost.result.is_some(), "WaitTask must always carry a result");
    assert!(
        lost.err.contains("restart"),
        "an explicit failure naming the restart, got {:?}",
        lost.err
    );
    // Still the true result for the one that finished before the crash.
    let again = host.wait(&done_task.id, LIMIT).await;
    assert_eq!(
        (again.result.expect("result").exit_code, again.err.as_str()),
        (4, "")
    );
    assert_eq!(
        long.stdout.text_after_eofs(1, LIMIT),
        "started\n",
        "output exactly once"
    );
    assert_eq!(done.stdout.text_after_eofs(1, LIMIT), "finished\n");

    run_hello(&mut host, "after-crash").await;
    host.destroy(&long_task.id).await;
    host.destroy(&done_task.id).await;
    assert_nothing_running(&daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_daemon_that_resumes_loses_and_duplicates_nothing() {
    let (daemon, mut host) = setup().await;
    let alloc = Alloc::new("ticker");
    let code = "import time\nfor i in range(15):\n    print(f'tick {i}', flush=True)\n    time.sleep(0.2)\nraise SystemExit(7)\n";
    let task = alloc.task_config(&TaskConfig::code("python", code));
    host.start(task.clone()).await.expect("StartTask");
    alloc.stdout.wait_for("tick 2\n", LIMIT);

    daemon.signal(Signal::SIGSTOP);
    tokio::time::sleep(Duration::from_secs(2)).await;
    daemon.signal(Signal::SIGCONT);

    let exit = host.wait(&task.id, LIMIT).await;
    assert_eq!(
        (exit.result.expect("result").exit_code, exit.err.as_str()),
        (7, "")
    );
    let want: String = (0..15).map(|i| format!("tick {i}\n")).collect();
    assert_eq!(alloc.stdout.text_after_eofs(1, LIMIT), want);
    run_hello(&mut host, "after-hang").await;
    host.destroy(&task.id).await;
    assert_nothing_running(&daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_deleted_behind_the_drivers_back_ends_its_tasks_and_is_recreated() {
    let (daemon, mut host) = setup().await;
    let alloc = Alloc::new("victim");
    let task = alloc.task_config(&TaskConfig::code(
        "python",
        "import time\nprint('started', flush=True)\ntime.sleep(60)\n",
    ));
    host.start(task.clone()).await.expect("StartTask");
    alloc.stdout.wait_for("started\n", LIMIT);

    let mut client = daemon.client().await;
    let sessions = client
        .list_sessions(pb::ListSessionsRequest {})
        .await
        .unwrap()
        .into_inner()
        .sessions;
    assert_eq!(sessions.len(), 1, "one session per client");
    for s in sessions {
        client
            .delete_session(pb::DeleteSessionRequest {
                session_id: s.session_id,
                grace: Some(prost_types::Duration {
                    seconds: 1,
                    nanos: 0,
                }),
            })
            .await
            .unwrap();
    }

    let exit = host.wait(&task.id, LIMIT).await;
    let result = exit.result.expect("WaitTask must always carry a result");
    assert!(
        result.exit_code != 0 || result.signal != 0 || !exit.err.is_empty(),
        "a task killed under the driver must not look like a success: {exit:?}"
    );
    assert_eq!(alloc.stdout.text_after_eofs(1, LIMIT), "started\n");
    run_hello(&mut host, "after-delete").await;
    host.destroy(&task.id).await;
    assert_nothing_running(&daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_while_the_daemon_hangs_returns_and_the_execution_dies_once_it_resumes() {
    let (daemon, mut host) = setup().await;
    let alloc = Alloc::new("orphan");
    let task = alloc.task_config(&TaskConfig::code(
        "python",
        "import os, time\nprint(os.getpid(), flush=True)\ntime.sleep(120)\n",
    ));
    host.start(task.clone()).await.expect("StartTask");
    let pid: i32 = alloc
        .stdout
        .wait_for("\n", LIMIT)
        .trim()
        .parse()
        .expect("the program's pid");

    // The daemon stops answering, but its executions live on.
    daemon.signal(Signal::SIGSTOP);
    // The driver waits 5 s for a confirmation; twice that is the bound.
    let destroyed = tokio::time::timeout(Duration::from_secs(10), host.destroy(&task.id)).await;
    assert!(
        destroyed.is_ok(),
        "DestroyTask must return OK within seconds while the daemon hangs"
    );
    // The task is forgotten: a repeated DestroyTask is fine too.
    tokio::time::timeout(LIMIT, host.destroy(&task.id))
        .await
        .expect("a repeated DestroyTask returns");
    assert!(
        elide_e2e::procs::is_alive(pid),
        "the program still runs while the daemon is stopped"
    );
    daemon.signal(Signal::SIGCONT);

    // Once the daemon answers again, the retried delete kills the program
    // and removes the execution.
    assert!(
        elide_e2e::procs::wait_until(LIMIT, || !elide_e2e::procs::is_alive(pid)),
        "program {pid} still runs after the daemon resumed; log:\n{}",
        daemon.log()
    );
    let deadline = std::time::Instant::now() + LIMIT;
    loop {
        let left = daemon.executions().await;
        if left.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "execution not deleted: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    run_hello(&mut host, "after-destroy").await;
    assert_nothing_running(&daemon).await;
}
