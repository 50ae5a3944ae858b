//! `nomad alloc exec` and script checks end to end: the real plugin binary
//! driven through Nomad's `ExecTask` and `ExecTaskStreaming` exactly as
//! Nomad's client calls them, the real daemon running the command beside
//! the task's real python program, on pipes or a real pty.

use std::path::Path;
use std::time::Duration;

use elide_e2e::cty::{PluginConfig, TaskConfig};
use elide_e2e::daemon::Daemon;
use elide_e2e::nomad::{Alloc, NomadHost};
use elide_e2e::procs;
use elide_proto::hashicorp::nomad::plugins::drivers::proto::{
    exec_task_streaming_request::{Setup, TerminalSize},
    CapabilitiesRequest, ExecTaskRequest, ExecTaskResponse, ExecTaskStreamingIoOperation,
    ExecTaskStreamingRequest, ExecTaskStreamingResponse, TaskConfig as NomadTask,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Streaming};

/// Upper bound for anything a test waits for.
const LIMIT: Duration = Duration::from_secs(30);

/// Prints who, where and in which cgroup the task's program runs, and
/// what its job's environment says, then stays up.
const TASK: &str = "import os, time\n\
print(os.getuid(), os.getcwd(), os.environ['GREETING'], flush=True)\n\
print(open('/proc/self/cgroup').read(), end='', flush=True)\n\
print('ready', flush=True)\n\
time.sleep(120)\n";

struct Running {
    _daemon: Daemon,
    host: NomadHost,
    alloc: Alloc,
    task: NomadTask,
}

/// A daemon, the plugin, and the task of [`TASK`] up and ready.
async fn running(name: &str) -> Running {
    let daemon = Daemon::start().await;
    let mut host = NomadHost::configured(&PluginConfig::for_socket(&daemon.socket)).await;
    let alloc = Alloc::new(name);
    let config = TaskConfig {
        env: Some(vec![("GREETING".into(), "hello-from-the-job".into())]),
        ..TaskConfig::code("python", TASK)
    };
    let task = alloc.task_config(&config);
    host.start(task.clone()).await.expect("StartTask");
    alloc.stdout.wait_for("ready\n", LIMIT);
    Running {
        _daemon: daemon,
        host,
        alloc,
        task,
    }
}

/// `ExecTask` as a script check calls it.
async fn exec(
    host: &mut NomadHost,
    task_id: &str,
    command: &[&str],
    timeout: Duration,
) -> Result<ExecTaskResponse, tonic::Status> {
    host.driver
        .exec_task(ExecTaskRequest {
            task_id: task_id.to_owned(),
            command: command.iter().map(|s| s.to_string()).collect(),
            timeout: Some(timeout.try_into().unwrap()),
        })
        .await
        .map(|r| r.into_inner())
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_task_runs_the_command_as_the_task_runs() {
    let Running {
        mut host,
        alloc,
        task,
        _daemon,
    } = running("exec-env").await;
    let caps = host
        .driver
        .capabilities(CapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner()
        .capabilities
        .unwrap();
    assert!(caps.exec, "{caps:?}");

    let response = exec(
        &mut host,
        &task.id,
        &[
            "sh",
            "-c",
            "echo \"$(id -u) $(pwd -P) $GREETING\"; cat /proc/self/cgroup; echo to-stderr >&2",
        ],
        Duration::from_secs(10),
    )
    .await
    .expect("ExecTask");
    // The task printed the same facts about itself.
    let task_said = alloc.stdout.text();
    let task_said = task_said.strip_suffix("ready\n").unwrap();
    assert_eq!(text(&response.stdout), task_said);
    assert!(
        task_said.contains(" hello-from-the-job\n"),
        "the job's env reached the task: {task_said:?}"
    );
    assert_eq!(text(&response.stderr), "to-stderr\n");
    let result = response.result.expect("result is always set");
    assert_eq!((result.exit_code, result.signal), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_checks_pass_and_fail_by_exit_code() {
    let Running {
        mut host,
        task,
        _daemon,
        alloc: _alloc,
    } = running("exec-check").await;
    let passing = exec(
        &mut host,
        &task.id,
        &["sh", "-c", "echo healthy"],
        Duration::from_secs(5),
    )
    .await
    .expect("ExecTask");
    assert_eq!(text(&passing.stdout), "healthy\n");
    assert_eq!(passing.result.unwrap().exit_code, 0);

    let failing = exec(
        &mut host,
        &task.id,
        &["sh", "-c", "echo unhealthy >&2; exit 2"],
        Duration::from_secs(5),
    )
    .await
    .expect("ExecTask");
    assert_eq!(text(&failing.stderr), "unhealthy\n");
    assert_eq!(text(&failing.stdout), "");
    assert_eq!(failing.result.unwrap().exit_code, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_task_timeout_kills_the_whole_command() {
    let Running {
        mut host,
        task,
        _daemon,
        alloc: _alloc,
    } = running("exec-timeout").await;
    // A child in the background too: the whole group goes.
    let response = exec(
        &mut host,
        &task.id,
        &["sh", "-c", "sleep 3011 & echo started; sleep 3012"],
        Duration::from_secs(1),
    )
    .await
    .expect("ExecTask");
    assert_eq!(text(&response.stdout), "started\n");
    assert_eq!(
        text(&response.stderr),
        "elide: the command was killed after its timeout of 1s\n"
    );
    let result = response.result.unwrap();
    assert_eq!((result.exit_code, result.signal), (137, 9));
    for arg in ["3011", "3012"] {
        assert!(
            procs::wait_until(LIMIT, || procs::with_arg(Path::new(arg)).is_empty()),
            "sleep {arg} outlived its command"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_refusals_carry_the_codes_nomad_expects() {
    let Running {
        mut host,
        task,
        _daemon,
        alloc: _alloc,
    } = running("exec-refused").await;
    let unknown = exec(&mut host, "no/such/task", &["true"], Duration::ZERO)
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
    assert!(unknown.message().contains("no/such/task"), "{unknown:?}");

    let missing = exec(
        &mut host,
        &task.id,
        &["no-such-program-e2e", "arg"],
        Duration::ZERO,
    )
    .await
    .unwrap_err();
    assert_eq!(missing.code(), Code::InvalidArgument, "{missing:?}");
    assert!(
        missing
            .message()
            .contains("command[0]: \"no-such-program-e2e\" could not be started"),
        "{missing:?}"
    );
    let empty = exec(&mut host, &task.id, &[], Duration::ZERO)
        .await
        .unwrap_err();
    assert_eq!(empty.code(), Code::InvalidArgument, "{empty:?}");
    assert!(empty.message().contains("command: is empty"), "{empty:?}");

    // The same through the streaming call.
    let streaming = open_stream(&mut host, "no/such/task", &["true"], false)
        .await
        .map(drop)
        .expect_err("exec into an unknown task was refused");
    assert_eq!(streaming.code(), Code::NotFound, "{streaming:?}");

    // Once the task has exited there is nothing to exec into.
    host.stop(&task.id, Duration::from_secs(2), "SIGKILL").await;
    host.wait(&task.id, LIMIT).await;
    let ended = exec(&mut host, &task.id, &["true"], Duration::ZERO)
        .await
        .unwrap_err();
    assert_eq!(ended.code(), Code::FailedPrecondition, "{ended:?}");
    assert!(ended.message().contains("has exited"), "{ended:?}");
    let streaming = open_stream(&mut host, &task.id, &["true"], false)
        .await
        .map(drop)
        .expect_err("exec into an exited task was refused");
    assert_eq!(streaming.code(), Code::FailedPrecondition, "{streaming:?}");
}

type Input = mpsc::Sender<ExecTaskStreamingRequest>;

/// Opens `ExecTaskStreaming` with its `setup` message.
async fn open_stream(
    host: &mut NomadHost,
    task_id: &str,
    command: &[&str],
    tty: bool,
) -> Result<(Input, Streaming<ExecTaskStreamingResponse>), tonic::Status> {
    let (tx, rx) = mpsc::channel(16);
    tx.send(ExecTaskStreamingRequest {
        setup: Some(Setup {
            task_id: task_id.to_owned(),
            command: command.iter().map(|s| s.to_string()).collect(),
            tty,
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    let output = host
        .driver
        .exec_task_streaming(ReceiverStream::new(rx))
        .await?
        .into_inner();
    Ok((tx, output))
}

async fn stdin(input: &Input, data: &str) {
    input
        .send(ExecTaskStreamingRequest {
            stdin: Some(ExecTaskStreamingIoOperation {
                data: data.as_bytes().to_vec(),
                close: false,
            }),
            ..Default::default()
        })
        .await
        .unwrap();
}

async fn resize(input: &Input, height: i32, width: i32) {
    input
        .send(ExecTaskStreamingRequest {
            tty_size: Some(TerminalSize { height, width }),
            ..Default::default()
        })
        .await
        .unwrap();
}

/// Reads responses until stdout holds `needle`; returns stdout so far.
async fn read_until(
    output: &mut Streaming<ExecTaskStreamingResponse>,
    stdout: &mut String,
    needle: &str,
) {
    tokio::time::timeout(LIMIT, async {
        while !stdout.contains(needle) {
            let response = output.message().await.unwrap().expect("stream open");
            assert!(
                response.stderr.is_none(),
                "a tty has no stderr: {response:?}"
            );
            assert!(!response.exited, "exited early: {stdout:?}");
            if let Some(out) = response.stdout {
                stdout.push_str(&text(&out.data));
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("never saw {needle:?} in {stdout:?}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interactive_shell_over_a_pty_with_resize() {
    let Running {
        mut host,
        task,
        _daemon,
        alloc: _alloc,
    } = running("exec-tty").await;
    let (input, mut output) = open_stream(&mut host, &task.id, &["/bin/sh"], true)
        .await
        .expect("ExecTaskStreaming");
    let mut seen = String::new();
    resize(&input, 33, 101).await;
    stdin(&input, "tty; stty size\n").await;
    read_until(&mut output, &mut seen, "33 101").await;
    assert!(seen.contains("/dev/pts/"), "{seen:?}");
    // The terminal echoes what is typed, and the shell answers.
    stdin(&input, "echo answer-$((40+2))\n").await;
    read_until(&mut output, &mut seen, "answer-42\r\n").await;
    assert!(seen.contains("echo answer-$((40+2))"), "{seen:?}");
    resize(&input, 50, 132).await;
    stdin(&input, "stty size\n").await;
    read_until(&mut output, &mut seen, "50 132").await;

    stdin(&input, "exit 3\n").await;
    let mut rest = Vec::new();
    while let Some(response) = tokio::time::timeout(LIMIT, output.message())
        .await
        .expect("the stream ends")
        .expect("the stream ends OK")
    {
        rest.push(response);
    }
    let last = rest.pop().expect("an exit message");
    assert!(last.exited, "{last:?}");
    assert_eq!(last.result.unwrap().exit_code, 3);
    let close = rest.pop().expect("stdout's close");
    assert_eq!(
        close.stdout,
        Some(ExecTaskStreamingIoOperation {
            data: vec![],
            close: true
        })
    );
    assert!(rest
        .iter()
        .all(|r| r.stdout.as_ref().is_some_and(|o| !o.close) && r.stderr.is_none()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_without_a_tty_has_stdin_and_both_streams() {
    let Running {
        mut host,
        task,
        _daemon,
        alloc: _alloc,
    } = running("exec-pipes").await;
    let (input, mut output) = open_stream(
        &mut host,
        &task.id,
        &["sh", "-c", "cat; echo done >&2; exit 4"],
        false,
    )
    .await
    .expect("ExecTaskStreaming");
    stdin(&input, "line one\n").await;
    input
        .send(ExecTaskStreamingRequest::default()) // a heartbeat
        .await
        .unwrap();
    input
        .send(ExecTaskStreamingRequest {
            stdin: Some(ExecTaskStreamingIoOperation {
                data: b"line two\n".to_vec(),
                close: true,
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let (mut stdout, mut stderr) = (String::new(), String::new());
    let mut closes = Vec::new();
    let exit = tokio::time::timeout(LIMIT, async {
        loop {
            let response = output.message().await.unwrap().expect("an exit message");
            if response.exited {
                assert!(output.message().await.unwrap().is_none(), "exit is last");
                break response.result.unwrap().exit_code;
            }
            for (op, sink, name) in [
                (response.stdout, &mut stdout, "stdout"),
                (response.stderr, &mut stderr, "stderr"),
            ] {
                if let Some(op) = op {
                    assert!(!closes.contains(&name), "{name} data after its close");
                    if op.close {
                        closes.push(name);
                    }
                    sink.push_str(&text(&op.data));
                }
            }
        }
    })
    .await
    .expect("the command ends");
    assert_eq!(exit, 4);
    assert_eq!(stdout, "line one\nline two\n");
    assert_eq!(stderr, "done\n");
    closes.sort();
    assert_eq!(closes, ["stderr", "stdout"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_going_away_leaves_no_process_behind() {
    let Running {
        mut host,
        task,
        _daemon,
        alloc: _alloc,
    } = running("exec-gone").await;
    for (tty, marker) in [(false, "3013"), (true, "3014")] {
        let script = format!("sleep {marker} & echo started; sleep {marker}");
        let (input, mut output) = open_stream(&mut host, &task.id, &["sh", "-c", &script], tty)
            .await
            .expect("ExecTaskStreaming");
        let mut seen = String::new();
        read_until(&mut output, &mut seen, "started").await;
        // The background one may still be exec'ing.
        assert!(
            procs::wait_until(LIMIT, || procs::with_arg(Path::new(marker)).len() == 2),
            "tty {tty}: both sleeps run"
        );
        drop(input);
        drop(output);
        assert!(
            procs::wait_until(LIMIT, || procs::with_arg(Path::new(marker)).is_empty()),
            "tty {tty}: sleep {marker} outlived its client"
        );
    }
    // The task itself runs on.
    let still = exec(&mut host, &task.id, &["true"], Duration::from_secs(5))
        .await
        .expect("the task is still running");
    assert_eq!(still.result.unwrap().exit_code, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elide_ctl_exec_runs_beside_the_task_and_exits_with_its_code() {
    let Running {
        host: _host,
        task: _task,
        _daemon: daemon,
        alloc: _alloc,
    } = running("exec-ctl").await;
    let running: Vec<_> = daemon
        .executions()
        .await
        .into_iter()
        .filter(|e| e.state() == elide_proto::elide::daemon::v1::ExecutionState::Running)
        .collect();
    let [execution] = running.as_slice() else {
        panic!("one running execution: {running:?}");
    };
    let output = std::process::Command::new(elide_e2e::binaries::binary(elide_e2e::binaries::CTL))
        .arg("--socket")
        .arg(&daemon.socket)
        .args([
            "exec",
            "--session",
            &execution.session_id,
            &execution.execution_id,
        ])
        .args(["--", "sh", "-c", "echo \"$GREETING\"; echo err >&2; exit 5"])
        .output()
        .expect("running elide-ctl");
    assert_eq!(text(&output.stdout), "hello-from-the-job\n");
    assert_eq!(text(&output.stderr), "err\n");
    assert_eq!(output.status.code(), Some(5));
}
