//! Bad requests get the right gRPC code and a message a person understands,
//! and the daemon keeps serving afterwards.

mod support;

use elide_e2e::procs::processes_with;
use elide_proto::elide::daemon::v1 as pb;
use support::*;
use tonic::Code;

fn assert_status(err: tonic::Status, code: Code, words: &[&str]) {
    assert_eq!(err.code(), code, "{err:?}");
    for w in words {
        assert!(
            err.message().contains(w),
            "message {:?} should mention {w:?}",
            err.message()
        );
    }
}

#[tokio::test]
async fn each_bad_request_gets_its_own_code_and_the_daemon_keeps_serving() {
    let d = Daemon::start_with(&["--max-code-bytes", "1000"]).await;
    let mut c = d.client().await;
    create_session(
        &mut c,
        "py-only",
        pb::SessionConfig {
            enabled_languages: vec!["python".into()],
            ..Default::default()
        },
    )
    .await;

    let err = c
        .execute_snippet(snippet("nope", "e", "python", "print(1)"))
        .await
        .unwrap_err();
    assert_status(err, Code::NotFound, &["session", "nope"]);

    let err = c
        .execute_snippet(snippet("py-only", "e", "cobol", "DISPLAY 'HI'"))
        .await
        .unwrap_err();
    assert_status(err, Code::InvalidArgument, &["unknown language", "cobol"]);

    let err = c
        .execute_snippet(snippet("py-only", "e", "javascript", "console.log(1)"))
        .await
        .unwrap_err();
    assert_status(
        err,
        Code::InvalidArgument,
        &["javascript", "not enabled", "py-only"],
    );

    let err = c
        .execute_snippet(snippet("py-only", "e", "python", "  \n"))
        .await
        .unwrap_err();
    assert_status(err, Code::InvalidArgument, &["code is empty"]);

    let big = format!("print('{}')", "x".repeat(2000));
    let err = c
        .execute_snippet(snippet("py-only", "e", "python", &big))
        .await
        .unwrap_err();
    assert_status(err, Code::InvalidArgument, &["limit is 1000 bytes"]);

    let err = c
        .execute_snippet(snippet("py-only", "bad/id", "python", "print(1)"))
        .await
        .unwrap_err();
    assert_status(err, Code::InvalidArgument, &["execution_id"]);

    let mut wide = snippet("py-only", "e", "python", "print(1)");
    wide.overrides = Some(pb::ExecutionOverrides {
        enabled_intrinsics: vec!["net".into()],
        ..Default::default()
    });
    let err = c.execute_snippet(wide).await.unwrap_err();
    assert_status(err, Code::InvalidArgument, &["enabled_intrinsics", "net"]);

    let mut missing_dir = snippet("py-only", "e", "python", "print(1)");
    missing_dir.working_dir = "/definitely/not/here".into();
    let err = c.execute_snippet(missing_dir).await.unwrap_err();
    assert_status(err, Code::InvalidArgument, &["working_dir"]);

    let mut ghost = snippet("py-only", "e", "python", "print(1)");
    ghost.run_as_user = "no-such-user-here".into();
    let err = c.execute_snippet(ghost).await.unwrap_err();
    assert_status(
        err,
        Code::InvalidArgument,
        &["run_as_user: no user \"no-such-user-here\" on this host"],
    );

    // A directory only root may enter is no working directory for nobody
    // (the default user of a root daemon; a daemon that is not root runs
    // programs as itself).
    if nix::unistd::Uid::effective().is_root() {
        let locked = tempfile::tempdir().unwrap();
        std::fs::set_permissions(
            locked.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .unwrap();
        let mut shut_out = snippet("py-only", "e", "python", "print(1)");
        shut_out.working_dir = locked.path().display().to_string();
        let err = c.execute_snippet(shut_out).await.unwrap_err();
        assert_status(
            err,
            Code::InvalidArgument,
            &["working_dir: user \"nobody\"", "cannot enter"],
        );
    }

    let err = c
        .create_session(pb::CreateSessionRequest {
            session_id: "x".into(),
            config: Some(pb::SessionConfig {
                enabled_intrinsics: vec!["teleport".into()],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_status(
        err,
        Code::InvalidArgument,
        &["enabled_intrinsics", "teleport"],
    );

    let err = c
        .create_session(pb::CreateSessionRequest {
            session_id: "py-only".into(),
            config: Some(pb::SessionConfig::default()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_status(err, Code::AlreadyExists, &["py-only", "different config"]);

    // Signals: an unknown name, and an unknown execution.
    execute(
        &mut c,
        snippet("py-only", "run", "python", "import time\ntime.sleep(30)"),
    )
    .await;
    wait_state(&mut c, "py-only", "run", pb::ExecutionState::Running).await;
    let err = c
        .signal_execution(pb::SignalExecutionRequest {
            session_id: "py-only".into(),
            execution_id: "run".into(),
            signal: "SIGNOPE".into(),
        })
        .await
        .unwrap_err();
    assert_status(err, Code::InvalidArgument, &["unknown signal", "SIGNOPE"]);
    let err = c
        .cancel_execution(pb::CancelExecutionRequest {
            session_id: "py-only".into(),
            execution_id: "run".into(),
            signal: "BOGUS".into(),
            grace: None,
        })
        .await
        .unwrap_err();
    assert_status(err, Code::InvalidArgument, &["BOGUS"]);
    let err = c
        .cancel_execution(pb::CancelExecutionRequest {
            session_id: "py-only".into(),
            execution_id: "run".into(),
            signal: String::new(),
            grace: secs(100_000.0),
        })
        .await
        .unwrap_err();
    assert_status(err, Code::InvalidArgument, &["max_cancel_grace"]);
    let err = c
        .get_execution_status(pb::GetExecutionStatusRequest {
            session_id: "py-only".into(),
            execution_id: "ghost".into(),
        })
        .await
        .unwrap_err();
    assert_status(err, Code::NotFound, &["ghost"]);
    let err = c
        .delete_execution(pb::DeleteExecutionRequest {
            session_id: "py-only".into(),
            execution_id: "run".into(),
            force: false,
        })
        .await
        .unwrap_err();
    assert_status(err, Code::FailedPrecondition, &["still", "force"]);

    // Still serving, and the running execution was not harmed by any of it.
    let status = status_of(&mut c, "py-only", "run").await;
    assert_eq!(status.state(), pb::ExecutionState::Running);
    execute(
        &mut c,
        snippet("py-only", "ok", "python", "print('still here')"),
    )
    .await;
    assert_eq!(
        wait_terminal(&mut c, "py-only", "ok").await.exit_code,
        Some(0)
    );
    // Force delete kills it and forgets it.
    c.delete_execution(pb::DeleteExecutionRequest {
        session_id: "py-only".into(),
        execution_id: "run".into(),
        force: true,
    })
    .await
    .unwrap();
    let err = c
        .get_execution_status(pb::GetExecutionStatusRequest {
            session_id: "py-only".into(),
            execution_id: "run".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(
        processes_with("py-only/run/").is_empty(),
        "the force-deleted execution still runs"
    );
}

#[tokio::test]
async fn typescript_without_a_runtime_is_a_failed_precondition() {
    // Typescript served by the Elide CLI, which is missing.
    let d = Daemon::start_with(&["--typescript", "elide", "--elide", "/nonexistent/elide"]).await;
    let mut c = d.client().await;
    create_session(&mut c, "s", Default::default()).await;
    let err = c
        .execute_snippet(snippet("s", "e", "typescript", "console.log(1)"))
        .await
        .unwrap_err();
    assert_status(err, Code::FailedPrecondition, &["typescript", "runtime"]);
}

#[tokio::test]
async fn the_daemon_refuses_to_start_over_a_file_that_is_not_a_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("important.txt");
    std::fs::write(&path, "do not delete").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_elide-daemon"))
        .arg("--socket")
        .arg(&path)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not a socket"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "do not delete");
}

#[tokio::test]
async fn a_second_daemon_on_a_live_socket_is_refused_and_sigterm_removes_the_socket() {
    let mut d = Daemon::start_with(&[]).await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_elide-daemon"))
        .arg("--socket")
        .arg(&d.socket)
        .arg("--state-dir")
        .arg(d.dir.path().join("other-state"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already listening"));
    // The first daemon is unharmed.
    d.client().await.health(pb::HealthRequest {}).await.unwrap();
    let status = d.stop_with(nix::sys::signal::Signal::SIGTERM);
    assert!(status.success(), "{status:?}");
    assert!(!exists(&d.socket), "socket left behind");
}
