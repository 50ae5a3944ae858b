//! The driver on a bad day, with real processes: the daemon crashes and
//! comes back, the daemon hangs and resumes, the session vanishes. After
//! each, every task has exactly one correct terminal result, the FIFOs hold
//! the program's output exactly once, and nothing is left running.

use std::time::Duration;

use elide_e2e::cty::{PluginConfig, TaskConfig};
use elide_e2e::daemon::Daemon;
use elide_e2e::nomad::{next_with_health, recoverable_flag, Alloc, NomadHost};
use elide_proto::elide::daemon::v1 as pb;
use elide_proto::hashicorp::nomad::plugins::drivers::proto::fingerprint_response::HealthState;
use elide_proto::hashicorp::nomad::plugins::shared::structs::attribute::Value as Attr;
use nix::sys::signal::Signal;
use rstest::rstest;

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
    let result = lost.result.expect("WaitTask must always carry a result");
    // The program's real ending died with the daemon: -1, never a 0 that
    // reads as a clean exit.
    assert_eq!((result.exit_code, result.signal), (-1, 0), "{lost:?}");
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

/// The daemon comes back with its state directory wiped (a new disk, an
/// operator's `rm -rf`): every execution it held is gone with its exit
/// code. The running task ends with -1 and an error naming the loss, never
/// exit 0, and new tasks run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_restarted_with_wiped_state_reports_minus_one_and_why() {
    let (mut daemon, mut host) = setup().await;
    let long = Alloc::new("long");
    let long_task = long.task_config(&TaskConfig::code(
        "python",
        "import time\nprint('started', flush=True)\ntime.sleep(60)\n",
    ));
    host.start(long_task.clone()).await.expect("StartTask");
    long.stdout.wait_for("started\n", LIMIT);

    daemon.kill_hard();
    std::fs::remove_dir_all(daemon.state_dir()).expect("wipe the daemon's state");
    daemon.restart().await;

    let exit = host.wait(&long_task.id, LIMIT).await;
    let result = exit.result.expect("WaitTask must always carry a result");
    assert_eq!((result.exit_code, result.signal), (-1, 0), "{exit:?}");
    assert!(
        exit.err.starts_with("execution lost: "),
        "an explicit failure naming the loss, got {:?}",
        exit.err
    );
    assert_eq!(long.stdout.text_after_eofs(1, LIMIT), "started\n");
    run_hello(&mut host, "after-wipe").await;
    host.destroy(&long_task.id).await;
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
    // Ended under the driver, which Nomad did not ask for: a failure that
    // says so, never a success. Which words depends on what the driver
    // sees first: the session gone, or the execution's cancel by the
    // delete.
    // Lost: the code is unknown (-1); cancelled by the delete: the program's
    // real ending (SIGTERM).
    assert!(
        (exit.err.starts_with("execution lost: session ")
            && exit.err.ends_with("no longer exists on the daemon")
            && (result.exit_code, result.signal) == (-1, 0))
            || (exit.err == "stopped outside Nomad: session deleted"
                && (result.exit_code, result.signal) == (0, 15)),
        "{exit:?}"
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
    // The driver waits 5 s for a confirmation, then returns: a generous
    // deadline, long before the daemon resumes.
    let destroyed = tokio::time::timeout(LIMIT, host.destroy(&task.id)).await;
    assert!(
        destroyed.is_ok(),
        "DestroyTask must return OK while the daemon hangs"
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

/// The driver's fingerprint as Nomad keeps it: one stream for the plugin's
/// life. The daemon dies: the node's driver turns unhealthy (within the
/// fingerprint interval, 30 s, plus a probe); the daemon comes back: it
/// turns healthy again, on the same stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fingerprint_follows_the_daemon_down_and_up_on_one_stream() {
    let (mut daemon, mut host) = setup().await;
    let mut stream = host.fingerprint_stream().await;
    let first = next_with_health(&mut stream, HealthState::Healthy, LIMIT)
        .await
        .expect("healthy with the daemon up");
    assert_eq!(first.health_description, "Healthy");

    daemon.kill_hard();
    let down = next_with_health(&mut stream, HealthState::Unhealthy, Duration::from_secs(45))
        .await
        .expect("unhealthy once the daemon is gone");
    assert!(
        down.health_description.starts_with(&format!(
            "daemon not reachable at {}",
            daemon.socket.display()
        )),
        "{}",
        down.health_description
    );
    assert!(
        down.attributes.is_empty(),
        "no daemon attributes while it is gone: {:?}",
        down.attributes
    );

    daemon.restart().await;
    let up = next_with_health(&mut stream, HealthState::Healthy, LIMIT)
        .await
        .expect("healthy again once the daemon is back");
    assert_eq!(
        up.attributes
            .get("driver.elide")
            .and_then(|a| a.value.clone()),
        Some(Attr::BoolVal(true))
    );
    run_hello(&mut host, "after-fingerprint").await;
}

/// A daemon hung for longer than the driver's stream heartbeat (15 s) and
/// HTTP/2 keepalive (5 s + 5 s) limits, so the driver gives up on its
/// connections, then resumed. A task running throughout still gets its true
/// exit code and its output exactly once; a StartTask during the hang
/// fails (recoverable, so Nomad retries it) and leaves nothing running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_hung_past_the_detection_limits_then_resumed_loses_nothing() {
    let (daemon, mut host) = setup().await;
    let alloc = Alloc::new("ticker");
    let code = "import time\nfor i in range(30):\n    print(f'tick {i}', flush=True)\n    time.sleep(0.2)\nraise SystemExit(7)\n";
    let task = alloc.task_config(&TaskConfig::code("python", code));
    host.start(task.clone()).await.expect("StartTask");
    alloc.stdout.wait_for("tick 2\n", LIMIT);

    daemon.signal(Signal::SIGSTOP);
    let hung_since = std::time::Instant::now();
    let during = Alloc::new("during-hang");
    let refused = host
        .start(during.task_config(&TaskConfig::code(
            "python",
            "import time\nprint('ran', flush=True)\ntime.sleep(300)\n",
        )))
        .await
        .expect_err("StartTask cannot succeed while the daemon hangs");
    assert_eq!(recoverable_flag(&refused), Some(true), "{refused:?}");
    // Past both detection limits before resuming (the heartbeat's 15 s is
    // the longer one).
    let hang = Duration::from_secs(20);
    if let Some(left) = hang.checked_sub(hung_since.elapsed()) {
        tokio::time::sleep(left).await;
    }
    daemon.signal(Signal::SIGCONT);

    let exit = host.wait(&task.id, LIMIT).await;
    assert_eq!(
        (exit.result.expect("result").exit_code, exit.err.as_str()),
        (7, "")
    );
    let want: String = (0..30).map(|i| format!("tick {i}\n")).collect();
    assert_eq!(alloc.stdout.text_after_eofs(1, LIMIT), want);
    run_hello(&mut host, "after-long-hang").await;
    host.destroy(&task.id).await;
    // The refused start left no execution behind (one the daemon received
    // late would run with nobody waiting for it).
    let deadline = std::time::Instant::now() + LIMIT;
    loop {
        let left = daemon.executions().await;
        if left.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "executions left on the daemon: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        during.stdout.text(),
        "",
        "the refused task never ran for Nomad"
    );
}

/// The daemon stopped as systemd stops it (SIGTERM) while tasks run: it
/// gives them `--shutdown-grace-secs` after a SIGTERM, exits 0, and once it
/// is back Nomad is told how each task ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_stopped_with_sigterm_drains_its_tasks_and_reports_each() {
    let mut daemon = Daemon::start_with(&["--shutdown-grace-secs", "2"]).await;
    let mut host = NomadHost::configured(&PluginConfig::for_socket(&daemon.socket)).await;
    let programs = [
        (
            "plain",
            "import time\nprint('ready', flush=True)\ntime.sleep(60)\n",
        ),
        (
            "graceful",
            "import signal, sys, time\n\
def bye(*_):\n    print('draining', flush=True)\n    sys.exit(0)\n\
signal.signal(signal.SIGTERM, bye)\nprint('ready', flush=True)\ntime.sleep(60)\n",
        ),
        (
            "stubborn",
            "import signal, time\n\
signal.signal(signal.SIGTERM, lambda *_: print('ignoring', flush=True))\n\
print('ready', flush=True)\nwhile True:\n    time.sleep(0.1)\n",
        ),
    ];
    let mut tasks = Vec::new();
    for (name, code) in programs {
        let alloc = Alloc::new(name);
        let task = alloc.task_config(&TaskConfig::code("python", code));
        host.start(task.clone()).await.expect("StartTask");
        alloc.stdout.wait_for("ready\n", LIMIT);
        tasks.push((alloc, task));
    }

    let status = daemon
        .terminate(LIMIT)
        .expect("the daemon exits after its grace");
    assert!(status.success(), "{status:?}; log:\n{}", daemon.log());
    daemon.restart().await;

    let mut endings = Vec::new();
    for (alloc, task) in &tasks {
        let exit = host.wait(&task.id, LIMIT).await;
        let result = exit.result.expect("result");
        endings.push((
            alloc.task.clone(),
            result.exit_code,
            result.signal,
            exit.err.clone(),
            alloc.stdout.text_after_eofs(1, LIMIT),
        ));
    }
    let shutdown = |name: &str, code, signal, stdout: &str| {
        (
            name.to_owned(),
            code,
            signal,
            "stopped outside Nomad: the daemon is shutting down".to_owned(),
            stdout.to_owned(),
        )
    };
    assert_eq!(
        endings,
        vec![
            shutdown("plain", 0, 15, "ready\n"),
            shutdown("graceful", 0, 0, "ready\ndraining\n"),
            shutdown("stubborn", 0, 9, "ready\nignoring\n"),
        ]
    );
    run_hello(&mut host, "after-drain").await;
}

/// How a damaged state file is handled at daemon start. A damaged
/// execution record is skipped, loudly: the daemon starts, logs the file,
/// and the task it belonged to ends with an explicit error, never a
/// success and never a hang. A damaged session record stops the start with
/// an error naming the file, and the file is left for the operator.
#[rstest]
#[case::truncated(Damage::Truncate)]
#[case::garbage(Damage::Garbage)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_state_files_are_skipped_or_refused_loudly(#[case] damage: Damage) {
    let (mut daemon, mut host) = setup().await;
    let done = Alloc::new("done");
    let done_task = done.task_config(&TaskConfig::code("python", "print('finished')\n"));
    host.start(done_task.clone()).await.expect("StartTask");
    assert_eq!(
        host.wait(&done_task.id, LIMIT)
            .await
            .result
            .expect("result")
            .exit_code,
        0
    );
    let long = Alloc::new("long");
    let long_task = long.task_config(&TaskConfig::code(
        "python",
        "import time\nprint('started', flush=True)\ntime.sleep(60)\n",
    ));
    host.start(long_task.clone()).await.expect("StartTask");
    long.stdout.wait_for("started\n", LIMIT);
    let running = daemon
        .executions()
        .await
        .into_iter()
        .find(|e| e.state() == pb::ExecutionState::Running)
        .expect("the long task's execution");
    let session_dir = daemon
        .state_dir()
        .join("sessions")
        .join(&running.session_id);
    let record = session_dir
        .join("executions")
        .join(format!("{}.pb", running.execution_id));

    daemon.kill_hard();
    damage.apply(&record);
    daemon.restart().await;
    let exit = host.wait(&long_task.id, LIMIT).await;
    let result = exit.result.expect("result");
    assert_eq!((result.exit_code, result.signal), (-1, 0));
    assert!(
        exit.err.starts_with("execution lost"),
        "an explicit failure, got {:?}",
        exit.err
    );
    assert_eq!(long.stdout.text_after_eofs(1, LIMIT), "started\n");
    let log = daemon.log();
    assert!(
        log.contains("skipping execution record") && log.contains(&record.display().to_string()),
        "the skipped record is logged with its path; log:\n{log}"
    );
    run_hello(&mut host, "after-damage").await;

    // A damaged session record: the daemon refuses to start, naming it.
    daemon.kill_hard();
    let session_record = session_dir.join("session.pb");
    damage.apply(&session_record);
    let damaged = std::fs::read(&session_record).unwrap();
    let (status, log) = daemon
        .try_restart()
        .await
        .expect_err("a daemon over a damaged session record must not start");
    assert!(
        status.is_some_and(|s| !s.success()),
        "it exits with an error: {status:?}"
    );
    assert!(
        log.contains("corrupt record") && log.contains(&session_record.display().to_string()),
        "the error names the file; log:\n{log}"
    );
    assert_eq!(
        std::fs::read(&session_record).unwrap(),
        damaged,
        "the damaged file is left for the operator"
    );
}

/// Ways a state file can be damaged.
#[derive(Debug, Clone, Copy)]
enum Damage {
    /// Cut after its first byte: a field tag without its value.
    Truncate,
    /// Replaced by bytes that are no protobuf message.
    Garbage,
}

impl Damage {
    fn apply(self, path: &std::path::Path) {
        let bytes = std::fs::read(path).expect("the state file");
        assert!(!bytes.is_empty(), "{} is empty", path.display());
        let damaged = match self {
            Damage::Truncate => bytes[..1].to_vec(),
            Damage::Garbage => vec![0xff; 16],
        };
        std::fs::write(path, damaged).expect("damaging the state file");
    }
}
