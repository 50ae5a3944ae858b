//! The task lifecycle end to end: the real plugin binary driven like a
//! Nomad client drives it, the real daemon, real python3/node, real FIFOs.

use std::time::Duration;

use elide_e2e::cty::{PluginConfig, TaskConfig};
use elide_e2e::daemon::Daemon;
use elide_e2e::nomad::{recoverable_flag, Alloc, NomadHost};
use elide_proto::hashicorp::nomad::plugins::drivers::proto::{
    fingerprint_response::HealthState, CapabilitiesRequest, InspectTaskRequest, SignalTaskRequest,
    TaskState, TaskStatsRequest,
};
use elide_proto::hashicorp::nomad::plugins::shared::structs::attribute::Value as Attr;
use futures::StreamExt;
use tonic::Code;

/// Upper bound for anything a test waits for.
const LIMIT: Duration = Duration::from_secs(20);

async fn setup() -> (Daemon, NomadHost) {
    let daemon = Daemon::start().await;
    let host = NomadHost::configured(&PluginConfig::for_socket(&daemon.socket)).await;
    (daemon, host)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fingerprint_is_healthy_with_daemon_attributes() {
    let (_daemon, mut host) = setup().await;
    let fingerprint = host.fingerprint().await;
    assert_eq!(
        fingerprint.health(),
        HealthState::Healthy,
        "{fingerprint:?}"
    );
    let attr = |key: &str| {
        fingerprint
            .attributes
            .get(key)
            .and_then(|a| a.value.clone())
            .unwrap_or_else(|| panic!("missing {key}: {:?}", fingerprint.attributes))
    };
    assert_eq!(attr("driver.elide"), Attr::BoolVal(true));
    assert!(matches!(attr("driver.elide.daemon_version"), Attr::StringVal(v) if !v.is_empty()));
    assert!(matches!(attr("driver.elide.daemon_instance_id"), Attr::StringVal(v) if !v.is_empty()));
    assert_eq!(attr("driver.elide.python.available"), Attr::BoolVal(true));
    assert!(
        matches!(attr("driver.elide.python.version"), Attr::StringVal(v) if v.starts_with('3'))
    );
    assert_eq!(
        attr("driver.elide.javascript.available"),
        Attr::BoolVal(true)
    );
    assert!(fingerprint
        .attributes
        .keys()
        .all(|k| k == "driver.elide" || k.starts_with("driver.elide.")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_in_python_and_javascript_reaches_the_fifos() {
    let (daemon, mut host) = setup().await;
    let cases = [
        (
            "python",
            "import sys\nprint('hello from python')\nprint('py err', file=sys.stderr)\n",
            "hello from python\n",
            "py err\n",
        ),
        (
            "javascript",
            "console.log('hello from javascript'); console.error('js err');",
            "hello from javascript\n",
            "js err\n",
        ),
    ];
    for (language, code, stdout, stderr) in cases {
        let alloc = Alloc::new("hello");
        let task = alloc.task_config(&TaskConfig::code(language, code));
        let handle = host.start(task.clone()).await.expect("StartTask");
        assert!(handle.version >= 1);
        assert_eq!(
            handle.config.as_ref().unwrap().id,
            task.id,
            "config is echoed"
        );
        assert_eq!(handle.state(), TaskState::Running);
        assert!(!handle.driver_state.is_empty());
        let exit = host.wait(&task.id, LIMIT).await;
        let result = exit.result.expect("result is always set");
        assert_eq!(
            (result.exit_code, result.signal, exit.err.as_str()),
            (0, 0, ""),
            "{language}"
        );
        // WaitTask returns only after the output is complete and the FIFOs closed.
        assert_eq!(alloc.stdout.text_after_eofs(1, LIMIT), stdout, "{language}");
        assert_eq!(alloc.stderr.text_after_eofs(1, LIMIT), stderr, "{language}");
        // Repeated WaitTask answers at once with the same result.
        let again = host.wait(&task.id, LIMIT).await;
        assert_eq!(again.result, Some(result));
        host.destroy(&task.id).await;
    }
    assert!(
        daemon.executions().await.is_empty(),
        "destroyed tasks leave nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_from_the_task_dir_with_args_and_env() {
    let (_daemon, mut host) = setup().await;
    let alloc = Alloc::new("script");
    alloc.write_file(
        "local/main.py",
        "import os, sys\nprint(sys.argv[1:], os.environ['GREETING'], os.environ['NOMAD_TASK_NAME'], os.getcwd())\n",
    );
    let mut config = TaskConfig::script("local/main.py");
    config.args = Some(vec!["a".into(), "b".into()]);
    config.env = Some(vec![("GREETING".into(), "hi".into())]);
    let task = alloc.task_config(&config);
    host.start(task.clone()).await.expect("StartTask");
    let exit = host.wait(&task.id, LIMIT).await;
    assert_eq!(exit.result.unwrap().exit_code, 0, "{}", alloc.stderr.text());
    let cwd = alloc.task_dir().canonicalize().unwrap();
    assert_eq!(
        alloc.stdout.text_after_eofs(1, LIMIT),
        format!("['a', 'b'] hi script {}\n", cwd.display())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_zero_exit_codes_are_reported() {
    let (_daemon, mut host) = setup().await;
    for (language, code) in [
        ("python", "import sys\nprint('failing')\nsys.exit(3)"),
        ("javascript", "console.log('failing'); process.exit(7)"),
    ] {
        let alloc = Alloc::new("fail");
        let task = alloc.task_config(&TaskConfig::code(language, code));
        host.start(task.clone()).await.expect("StartTask");
        let exit = host.wait(&task.id, LIMIT).await;
        let expected = if language == "python" { 3 } else { 7 };
        assert_eq!(exit.result.unwrap().exit_code, expected);
        assert_eq!(
            exit.err, "",
            "a program's own exit code is not a driver error"
        );
        assert_eq!(alloc.stdout.text_after_eofs(1, LIMIT), "failing\n");
    }
}

const LONG_PYTHON: &str =
    "import time\nprint('ready', flush=True)\nfor i in range(600):\n    time.sleep(0.1)\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_with_sigkill_ends_a_long_task() {
    let (_daemon, mut host) = setup().await;
    let alloc = Alloc::new("long");
    let task = alloc.task_config(&TaskConfig::code("python", LONG_PYTHON));
    host.start(task.clone()).await.expect("StartTask");
    alloc.stdout.wait_for("ready\n", LIMIT);
    host.stop(&task.id, Duration::from_secs(2), "SIGKILL").await;
    let exit = host.wait(&task.id, LIMIT).await;
    assert_eq!(exit.result.unwrap().signal, 9);
    assert_eq!(alloc.stdout.text_after_eofs(1, LIMIT), "ready\n");
    // Stopping again, or an unknown task, is fine.
    host.stop(&task.id, Duration::from_secs(1), "").await;
    host.stop("no/such/task", Duration::from_secs(1), "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_kill_signal_sends_sigint() {
    let (_daemon, mut host) = setup().await;
    let alloc = Alloc::new("sigint");
    // `ready` is printed inside the try: the signal may land before print returns.
    let code = "import time\ntry:\n    print('ready', flush=True)\n    time.sleep(60)\nexcept KeyboardInterrupt:\n    print('got SIGINT', flush=True)\n";
    let task = alloc.task_config(&TaskConfig::code("python", code));
    host.start(task.clone()).await.expect("StartTask");
    alloc.stdout.wait_for("ready\n", LIMIT);
    host.stop(&task.id, Duration::from_secs(5), "").await;
    let exit = host.wait(&task.id, LIMIT).await;
    let result = exit.result.unwrap();
    assert_eq!((result.exit_code, result.signal), (0, 0));
    assert_eq!(
        alloc.stdout.text_after_eofs(1, LIMIT),
        "ready\ngot SIGINT\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signal_task_delivers_sigusr1() {
    let (_daemon, mut host) = setup().await;
    let alloc = Alloc::new("usr1");
    let code = "import signal, sys, time\n\
def usr1(signum, frame):\n    print('got SIGUSR1', flush=True)\n    sys.exit(0)\n\
signal.signal(signal.SIGUSR1, usr1)\nprint('ready', flush=True)\ntime.sleep(60)\n";
    let task = alloc.task_config(&TaskConfig::code("python", code));
    host.start(task.clone()).await.expect("StartTask");
    alloc.stdout.wait_for("ready\n", LIMIT);
    host.driver
        .signal_task(SignalTaskRequest {
            task_id: task.id.clone(),
            signal: "SIGUSR1".into(),
        })
        .await
        .expect("SignalTask");
    let exit = host.wait(&task.id, LIMIT).await;
    assert_eq!(exit.result.unwrap().exit_code, 0);
    assert_eq!(
        alloc.stdout.text_after_eofs(1, LIMIT),
        "ready\ngot SIGUSR1\n"
    );
    let unknown = host
        .driver
        .signal_task(SignalTaskRequest {
            task_id: "a/b/c".into(),
            signal: "SIGUSR1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_inspect_destroy_and_concurrent_waits() {
    let (daemon, mut host) = setup().await;
    let alloc = Alloc::new("busy");
    let code = "import os, time\nblob = bytearray(32 * 1024 * 1024)\nprint(os.getpid(), flush=True)\ntime.sleep(60)\n";
    let task = alloc.task_config(&TaskConfig::code("python", code));
    let before_start = std::time::SystemTime::now();
    host.start(task.clone()).await.expect("StartTask");
    let after_start = std::time::SystemTime::now();
    let pid: i32 = alloc.stdout.wait_for("\n", LIMIT).trim().parse().unwrap();

    // Two concurrent WaitTask callers, both answered by the same exit.
    let mut waiters = Vec::new();
    for _ in 0..2 {
        let mut driver = host.driver.clone();
        let id = task.id.clone();
        waiters.push(tokio::spawn(async move {
            driver
                .wait_task(
                    elide_proto::hashicorp::nomad::plugins::drivers::proto::WaitTaskRequest {
                        task_id: id,
                    },
                )
                .await
                .map(|r| r.into_inner())
        }));
    }

    let mut stats = host
        .driver
        .task_stats(TaskStatsRequest {
            task_id: task.id.clone(),
            collection_interval: Some(prost_types::Duration {
                seconds: 0,
                nanos: 200_000_000,
            }),
        })
        .await
        .expect("TaskStats")
        .into_inner();
    let mut rss = 0;
    for _ in 0..10 {
        let sample = stats.next().await.expect("a sample").expect("stats");
        let stats = sample.stats.expect("stats set");
        assert!(stats.timestamp.is_some());
        let usage = stats.agg_resource_usage.expect("agg usage set");
        let memory = usage.memory.expect("memory set");
        assert!(usage.cpu.expect("cpu set").measured_fields.len() >= 2);
        assert!(!memory.measured_fields.is_empty());
        rss = memory.rss;
        if rss > 16 * 1024 * 1024 {
            break;
        }
    }
    assert!(rss > 16 * 1024 * 1024, "rss {rss}");

    let inspect = host
        .driver
        .inspect_task(InspectTaskRequest {
            task_id: task.id.clone(),
        })
        .await
        .expect("InspectTask")
        .into_inner();
    let status = inspect.task.expect("task status");
    assert_eq!(
        (status.id.as_str(), status.name.as_str(), status.state()),
        (task.id.as_str(), "busy", TaskState::Running)
    );
    let started_at = std::time::SystemTime::try_from(status.started_at.expect("started_at"))
        .expect("a valid started_at");
    assert!(
        before_start <= started_at && started_at <= after_start,
        "started_at {started_at:?} is not within the StartTask call ({before_start:?}..{after_start:?})"
    );
    // Go's zero time.Time: a running task has not completed.
    assert_eq!(
        status.completed_at,
        Some(prost_types::Timestamp {
            seconds: -62_135_596_800,
            nanos: 0
        })
    );
    assert_eq!(status.result, Some(Default::default()), "no result yet");

    host.destroy(&task.id).await;
    let mut answers = Vec::new();
    for waiter in waiters {
        let exit = waiter.await.unwrap().expect("WaitTask");
        let result = exit.result.expect("WaitTask always carries a result");
        answers.push((result.exit_code, result.signal, exit.err));
    }
    // Both callers get the same answer, and a destroyed task is no success.
    assert_eq!(answers[0], answers[1]);
    assert_eq!(
        answers[0],
        (
            -1,
            0,
            "execution lost: the driver stopped following it".to_owned()
        )
    );
    assert!(
        stats.next().await.is_none(),
        "the stats stream ends with the task"
    );
    assert!(
        daemon.executions().await.is_empty(),
        "no execution left on the daemon"
    );
    assert!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err(),
        "process {pid} is gone"
    );
    // Destroy is idempotent and unknown tasks are fine.
    host.destroy(&task.id).await;
    let gone = host
        .driver
        .inspect_task(InspectTaskRequest {
            task_id: task.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_task_configs_are_rejected_naming_the_field() {
    let (_daemon, mut host) = setup().await;
    let alloc = Alloc::new("bad");
    alloc.write_file("local/ok.py", "print(1)\n");
    std::fs::write(alloc.alloc_dir().join("secret.py"), "print('secret')\n").unwrap();
    let mut both = TaskConfig::script("local/ok.py");
    both.code = Some("print(2)".into());
    let mut wide = TaskConfig::code("python", "print(1)");
    wide.memory_limit = Some(1024);
    let cases = [
        (TaskConfig::code("ruby", "puts 1"), "language"),
        (both, "code"),
        (TaskConfig::script("../secret.py"), "script"),
        (wide, "elide_opts.memory_limit"),
    ];
    for (config, field) in cases {
        let err = host.start(alloc.task_config(&config)).await.unwrap_err();
        assert_eq!(
            err.code(),
            Code::InvalidArgument,
            "{field}: {}",
            err.message()
        );
        assert!(
            err.message().contains(&format!("`{field}`")),
            "{field}: {}",
            err.message()
        );
        assert_eq!(recoverable_flag(&err), Some(false), "{field}");
    }
    // The plugin keeps serving.
    host.driver
        .capabilities(CapabilitiesRequest {})
        .await
        .expect("still serving");
    let task = alloc.task_config(&TaskConfig::script("local/ok.py"));
    host.start(task.clone())
        .await
        .expect("a good task still starts");
    assert_eq!(
        host.wait(&task.id, LIMIT).await.result.unwrap().exit_code,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absent_daemon_is_unhealthy_and_start_is_recoverable() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("absent.sock");
    let mut host = NomadHost::configured(&PluginConfig::for_socket(&socket)).await;
    let fingerprint = host.fingerprint().await;
    assert_eq!(fingerprint.health(), HealthState::Unhealthy);
    assert!(
        fingerprint
            .health_description
            .starts_with(&format!("daemon not reachable at {}", socket.display())),
        "{}",
        fingerprint.health_description
    );
    let alloc = Alloc::new("orphan");
    let err = host
        .start(alloc.task_config(&TaskConfig::code("python", "print(1)")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    assert_eq!(recoverable_flag(&err), Some(true));
    assert!(
        err.message().contains("daemon not reachable"),
        "{}",
        err.message()
    );
    host.driver
        .capabilities(CapabilitiesRequest {})
        .await
        .expect("no crash");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_mode_follows_tasks_too() {
    let daemon = Daemon::start().await;
    let mut config = PluginConfig::for_socket(&daemon.socket);
    config.status_mode = Some("poll".into());
    config.poll_interval = Some("100ms".into());
    let mut host = NomadHost::configured(&config).await;
    let alloc = Alloc::new("polled");
    let task = alloc.task_config(&TaskConfig::code(
        "javascript",
        "console.log('polled'); process.exit(2)",
    ));
    host.start(task.clone()).await.expect("StartTask");
    let exit = host.wait(&task.id, LIMIT).await;
    assert_eq!(exit.result.unwrap().exit_code, 2);
    assert_eq!(alloc.stdout.text_after_eofs(1, LIMIT), "polled\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_after_a_plugin_crash_keeps_exit_code_and_output() {
    let (_daemon, mut host) = setup().await;
    let config = PluginConfig::for_socket(&_daemon.socket);
    let alloc = Alloc::new("survivor");
    // Output before and after the crash; the go-ahead file lets the test
    // decide when the second half is printed.
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

    host.plugin.kill_hard();
    let mut host = NomadHost::configured(&config).await;
    host.recover(&handle).await.expect("RecoverTask");
    host.recover(&handle)
        .await
        .expect("RecoverTask is idempotent");
    std::fs::write(&go, "").unwrap();
    let exit = host.wait(&task.id, LIMIT).await;
    assert_eq!(exit.result.unwrap().exit_code, 5);
    assert_eq!(
        alloc.stdout.text_after_eofs(2, LIMIT),
        "before 0\nbefore 1\nbefore 2\nafter 0\nafter 1\nafter 2\n",
        "every line exactly once"
    );

    // A handle whose execution is gone cannot be recovered.
    host.destroy(&task.id).await;
    // Nomad tells "gone" from "try again" by NotFound.
    let err = host.recover(&handle).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
}

/// Both FIFO write ends are held from the start of the task to its end, even
/// for a stream the program never writes: logmon's reader waits for a
/// writer, and only the writer's close tells it the task's output is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifos_are_held_for_the_task_lifetime_even_without_output() {
    let (_daemon, mut host) = setup().await;
    let alloc = Alloc::new("quiet");
    let go = alloc.task_dir().join("tmp/go");
    let code = format!(
        "import os, time\nwhile not os.path.exists({go:?}):\n    time.sleep(0.05)\nprint('done', flush=True)\n",
        go = go.display().to_string()
    );
    let task = alloc.task_config(&TaskConfig::code("python", &code));
    host.start(task.clone()).await.expect("StartTask");
    // Nothing was written yet, and both writers are already there.
    alloc.stdout.wait_for_opens(1, LIMIT);
    alloc.stderr.wait_for_opens(1, LIMIT);
    assert_eq!(alloc.stdout.text(), "");
    std::fs::write(&go, "").unwrap();
    let exit = host.wait(&task.id, LIMIT).await;
    assert_eq!(exit.result.unwrap().exit_code, 0);
    assert_eq!(alloc.stdout.text_after_eofs(1, LIMIT), "done\n");
    // The stream that got no output is closed too.
    assert_eq!(alloc.stderr.text_after_eofs(1, LIMIT), "");
    host.destroy(&task.id).await;
}
