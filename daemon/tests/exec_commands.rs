//! `ExecInExecution` on the real daemon: what is refused and with which
//! code, the limit on commands beside one program, and commands ending
//! with the program they run beside.

mod support;

use std::time::Duration;

use elide_e2e::procs::processes_with;
use elide_proto::elide::daemon::v1 as pb;
use support::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

const LIMIT: Duration = Duration::from_secs(30);

fn start(session: &str, execution: &str, command: &[&str]) -> pb::ExecStart {
    pb::ExecStart {
        session_id: session.into(),
        execution_id: execution.into(),
        command: command.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

type Opened = (
    mpsc::Sender<pb::ExecInput>,
    tonic::Streaming<pb::ExecOutput>,
);

/// Opens the stream with `first` as its first message.
async fn open(client: &mut Client, first: pb::exec_input::Input) -> Result<Opened, tonic::Status> {
    let (tx, rx) = mpsc::channel(4);
    tx.send(pb::ExecInput { input: Some(first) }).await.unwrap();
    let output = client
        .exec_in_execution(ReceiverStream::new(rx))
        .await?
        .into_inner();
    Ok((tx, output))
}

async fn refused(client: &mut Client, first: pb::exec_input::Input) -> tonic::Status {
    open(client, first)
        .await
        .map(drop)
        .expect_err("the command was refused")
}

fn assert_status(err: &tonic::Status, code: Code, words: &[&str]) {
    assert_eq!(err.code(), code, "{err:?}");
    for w in words {
        assert!(err.message().contains(w), "{err:?} should mention {w:?}");
    }
}

/// A session with one python program that stays up.
async fn running_program(d: &Daemon, marker: &str) -> Client {
    let mut c = d.client().await;
    create_session(&mut c, "s", pb::SessionConfig::default()).await;
    let code = format!("import time\nprint('up', flush=True)\ntime.sleep(120)  # {marker}\n");
    execute(&mut c, snippet("s", "e", "python", &code)).await;
    wait_for_stdout(&mut c, "s", "e", "up").await;
    c
}

#[tokio::test]
async fn bad_requests_get_their_own_code_naming_the_field() {
    use pb::exec_input::Input;
    let d = Daemon::start().await;
    let mut c = running_program(&d, "exec-bad-input").await;

    let err = refused(&mut c, Input::Stdin(b"hi".to_vec())).await;
    assert_status(&err, Code::InvalidArgument, &["start", "first message"]);
    let err = refused(&mut c, Input::Start(start("s", "e", &[]))).await;
    assert_status(&err, Code::InvalidArgument, &["command", "empty"]);
    let err = refused(
        &mut c,
        Input::Start(pb::ExecStart {
            tty: true,
            tty_size: Some(pb::TerminalSize {
                rows: 70_000,
                cols: 80,
            }),
            ..start("s", "e", &["sh"])
        }),
    )
    .await;
    assert_status(&err, Code::InvalidArgument, &["tty_size.rows", "70000"]);
    let err = refused(
        &mut c,
        Input::Start(pb::ExecStart {
            timeout: Some(prost_types::Duration {
                seconds: -1,
                nanos: 0,
            }),
            ..start("s", "e", &["true"])
        }),
    )
    .await;
    assert_status(&err, Code::InvalidArgument, &["timeout", "-1s"]);
    let err = refused(&mut c, Input::Start(start("nope", "e", &["true"]))).await;
    assert_status(&err, Code::NotFound, &["nope"]);
    let err = refused(&mut c, Input::Start(start("s", "nope", &["true"]))).await;
    assert_status(&err, Code::NotFound, &["nope"]);
    let err = refused(
        &mut c,
        Input::Start(start("s", "e", &["/no/such/program", "x"])),
    )
    .await;
    assert_status(
        &err,
        Code::InvalidArgument,
        &["command[0]", "/no/such/program", "could not be started"],
    );

    // An execution that has ended has nothing to run a command beside.
    execute(&mut c, snippet("s", "short", "python", "print(1)")).await;
    wait_terminal(&mut c, "s", "short").await;
    let err = refused(&mut c, Input::Start(start("s", "short", &["true"]))).await;
    assert_status(
        &err,
        Code::FailedPrecondition,
        &["short", "has already ended", "EXITED"],
    );
}

/// Reads until the command's exit.
async fn exit_of(output: &mut tonic::Streaming<pb::ExecOutput>) -> pb::ExecExited {
    tokio::time::timeout(LIMIT, async {
        loop {
            match output.message().await.unwrap().expect("an exit").output {
                Some(pb::exec_output::Output::Exited(exited)) => return exited,
                _ => continue,
            }
        }
    })
    .await
    .expect("the command ends")
}

#[tokio::test]
async fn at_most_the_limit_runs_beside_one_program_and_all_end_with_it() {
    use pb::exec_input::Input;
    let d = Daemon::start().await;
    let mut c = running_program(&d, "exec-limit").await;
    let limit = elide_daemon::MAX_COMMANDS_PER_EXECUTION;
    let mut running = Vec::new();
    for _ in 0..limit {
        let opened = open(&mut c, Input::Start(start("s", "e", &["sleep", "3031"])))
            .await
            .expect("under the limit");
        running.push(opened);
    }
    let err = refused(&mut c, Input::Start(start("s", "e", &["true"]))).await;
    assert_status(
        &err,
        Code::ResourceExhausted,
        &[&limit.to_string(), "already running"],
    );

    // One ends (its client went away): there is room again.
    drop(running.pop());
    let deadline = tokio::time::Instant::now() + LIMIT;
    let (_input, mut output) = loop {
        match open(&mut c, Input::Start(start("s", "e", &["echo", "room"]))).await {
            Ok(opened) => break opened,
            Err(e) if e.code() == Code::ResourceExhausted => {
                assert!(tokio::time::Instant::now() < deadline, "no room: {e:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{e:?}"),
        }
    };
    let first = output.message().await.unwrap().unwrap().output;
    assert_eq!(
        first,
        Some(pb::exec_output::Output::Stdout(b"room\n".to_vec()))
    );
    assert_eq!(exit_of(&mut output).await.exit_code, 0);

    // The program ends: every command beside it is killed.
    c.cancel_execution(pb::CancelExecutionRequest {
        session_id: "s".into(),
        execution_id: "e".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    for (_input, output) in &mut running {
        let exited = exit_of(output).await;
        assert_eq!((exited.exit_code, exited.signal), (137, 9));
        assert!(!exited.timed_out);
    }
    assert!(
        wait_until_gone("3031").await,
        "{:?}",
        processes_with("sleep 3031")
    );
}

async fn wait_until_gone(marker: &str) -> bool {
    let deadline = tokio::time::Instant::now() + LIMIT;
    while !processes_with(&format!("sleep\0{marker}")).is_empty() {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}
