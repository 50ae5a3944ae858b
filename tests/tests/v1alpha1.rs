//! The original daemon contract, `elide.daemon.v1alpha1.ExecutionApi`,
//! against the real `elide-daemon` binary: a tonic client generated from
//! `proto/elide/daemon/v1alpha1/execution_api.proto` drives the original
//! test client's flow, then failures, exit codes, cancel, per-session ids
//! and bad input. Then a client that is not ours: Python `grpcio` with its
//! default authority, on the same socket, for both APIs.

use std::time::{Duration, Instant};

use elide_e2e::daemon::Daemon;
use elide_proto::elide::daemon::v1alpha1 as pb;
use pb::execution_api_client::ExecutionApiClient;
use tonic::transport::Channel;
use tonic::Code;

/// Upper bound for anything a test waits for.
const LIMIT: Duration = Duration::from_secs(30);

type Client = ExecutionApiClient<Channel>;

async fn client(daemon: &Daemon) -> Client {
    ExecutionApiClient::new(daemon.channel().await)
}

/// The original test client's session config.
fn original_config() -> pb::SessionConfiguration {
    pb::SessionConfiguration {
        context_pool_size: 10,
        enabled_languages: vec!["python".into(), "javascript".into()],
        enabled_intrinsics: vec!["io".into(), "env".into()],
        memory_limit_mb: 512,
        enable_ai: false,
    }
}

async fn create(client: &mut Client, session_id: &str) -> pb::CreateSessionResponse {
    client
        .create_session(pb::CreateSessionRequest {
            session_id: session_id.into(),
            config: Some(original_config()),
        })
        .await
        .expect("CreateSession")
        .into_inner()
}

fn snippet(session_id: &str, execution_id: &str, code: &str) -> pb::ExecuteSnippetRequest {
    pb::ExecuteSnippetRequest {
        session_id: session_id.into(),
        execution_id: execution_id.into(),
        code: code.into(),
        language: "python".into(),
        ..Default::default()
    }
}

async fn status(
    client: &mut Client,
    session_id: &str,
    execution_id: &str,
) -> pb::GetExecutionStatusResponse {
    client
        .get_execution_status(pb::GetExecutionStatusRequest {
            session_id: session_id.into(),
            execution_id: execution_id.into(),
        })
        .await
        .expect("GetExecutionStatus")
        .into_inner()
}

/// Polls GetExecutionStatus, as the original driver does, until `done`.
async fn poll_until(
    client: &mut Client,
    session_id: &str,
    execution_id: &str,
    done: impl Fn(&pb::GetExecutionStatusResponse) -> bool,
) -> pb::GetExecutionStatusResponse {
    let deadline = Instant::now() + LIMIT;
    loop {
        let st = status(client, session_id, execution_id).await;
        if done(&st) {
            return st;
        }
        assert!(
            Instant::now() < deadline,
            "gave up waiting; last status {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn run(
    client: &mut Client,
    req: pb::ExecuteSnippetRequest,
) -> pb::GetExecutionStatusResponse {
    let (sid, eid) = (req.session_id.clone(), req.execution_id.clone());
    let started = client
        .execute_snippet(req)
        .await
        .expect("ExecuteSnippet")
        .into_inner();
    assert_eq!(
        (started.session_id.as_str(), started.execution_id.as_str()),
        (sid.as_str(), eid.as_str())
    );
    poll_until(client, &sid, &eid, |s| s.complete).await
}

fn process_exists(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

async fn wait_gone(pid: i32) {
    let deadline = Instant::now() + LIMIT;
    while process_exists(pid) {
        assert!(Instant::now() < deadline, "process {pid} still exists");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts a program that prints its pid and then sleeps; returns the pid.
async fn start_sleeper(client: &mut Client, session_id: &str, execution_id: &str) -> i32 {
    let code = "import os, time\nprint(os.getpid(), flush=True)\ntime.sleep(600)\n";
    client
        .execute_snippet(snippet(session_id, execution_id, code))
        .await
        .expect("ExecuteSnippet");
    let st = poll_until(client, session_id, execution_id, |s| !s.stdout.is_empty()).await;
    assert_eq!(st.status(), pb::ExecutionStatus::Running);
    assert!(!st.complete);
    st.stdout.trim().parse().expect("pid on stdout")
}

fn assert_status(err: tonic::Status, code: Code, needles: &[&str]) {
    assert_eq!(err.code(), code, "{err:?}");
    for needle in needles {
        assert!(
            err.message().contains(needle),
            "{needle:?} not in {:?}",
            err.message()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_original_test_clients_flow_runs_real_code() {
    let daemon = Daemon::start().await;
    let mut client = client(&daemon).await;

    let health = client
        .health(pb::HealthRequest {})
        .await
        .expect("Health")
        .into_inner();
    assert!(health.healthy);
    assert_eq!(health.version, env!("CARGO_PKG_VERSION"));

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let created = create(&mut client, "test-session").await;
    assert_eq!(created.session_id, "test-session");
    assert_eq!(created.status(), pb::SessionStatus::Active);
    assert!(
        (created.created_at - now).abs() <= 60,
        "created_at {} vs now {now}",
        created.created_at
    );

    let mut req = snippet(
        "test-session",
        "test-exec",
        "import os, sys\nprint('Hello from Elide!')\nprint(os.environ['TEST'], sys.argv[1:])\n",
    );
    req.env = [("TEST".to_string(), "value".to_string())].into();
    req.args = vec!["one".into(), "two words".into()];
    let started = client
        .execute_snippet(req.clone())
        .await
        .expect("ExecuteSnippet")
        .into_inner();
    assert_eq!(started.status(), pb::ExecutionStatus::Queued);
    let done = poll_until(&mut client, "test-session", "test-exec", |s| s.complete).await;
    assert_eq!(done.status(), pb::ExecutionStatus::Completed);
    assert_eq!(done.exit_code, 0);
    assert_eq!(
        done.stdout,
        "Hello from Elide!\nvalue ['one', 'two words']\n"
    );
    assert_eq!((done.stderr.as_str(), done.error.as_str()), ("", ""));

    // The same request again is the same execution: it does not run twice.
    let again = client
        .execute_snippet(req.clone())
        .await
        .expect("repeat")
        .into_inner();
    assert_eq!(again.status(), pb::ExecutionStatus::Completed);
    // Another request under that id is refused.
    let mut other = req.clone();
    other.code = "print('something else')".into();
    let err = client.execute_snippet(other).await.unwrap_err();
    assert_status(err, Code::AlreadyExists, &["test-exec"]);

    // Sessions: idempotent with the same config, refused with another.
    let same = create(&mut client, "test-session").await;
    assert_eq!(same.created_at, created.created_at);
    let mut different = original_config();
    different.memory_limit_mb = 256;
    let err = client
        .create_session(pb::CreateSessionRequest {
            session_id: "test-session".into(),
            config: Some(different),
        })
        .await
        .unwrap_err();
    assert_status(err, Code::AlreadyExists, &["test-session"]);
    let got = client
        .get_session(pb::GetSessionRequest {
            session_id: "test-session".into(),
        })
        .await
        .expect("GetSession")
        .into_inner();
    assert_eq!(got.config, Some(original_config()));
    assert_eq!(
        (got.status(), got.created_at),
        (pb::SessionStatus::Active, created.created_at)
    );

    let deleted = client
        .delete_session(pb::DeleteSessionRequest {
            session_id: "test-session".into(),
        })
        .await
        .expect("DeleteSession")
        .into_inner();
    assert!(deleted.success);
    let err = client
        .get_session(pb::GetSessionRequest {
            session_id: "test-session".into(),
        })
        .await
        .unwrap_err();
    assert_status(err, Code::NotFound, &["test-session"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_report_status_exit_code_and_why() {
    let daemon = Daemon::start().await;
    let mut client = client(&daemon).await;
    create(&mut client, "s").await;

    let st = run(
        &mut client,
        snippet(
            "s",
            "exit3",
            "import sys\nsys.stderr.write('nope\\n')\nsys.exit(3)\n",
        ),
    )
    .await;
    assert_eq!(st.status(), pb::ExecutionStatus::Failed);
    assert_eq!(st.exit_code, 3);
    assert_eq!(st.stderr, "nope\n");
    assert_eq!(st.error, "the program exited with code 3");

    let st = run(
        &mut client,
        snippet("s", "raise", "raise ValueError('bad value')\n"),
    )
    .await;
    assert_eq!(
        (st.status(), st.exit_code),
        (pb::ExecutionStatus::Failed, 1)
    );
    assert!(st.stderr.contains("ValueError: bad value"), "{}", st.stderr);

    let code =
        "import os, signal\nprint('before', flush=True)\nos.kill(os.getpid(), signal.SIGKILL)\n";
    let st = run(&mut client, snippet("s", "killed", code)).await;
    assert_eq!(st.status(), pb::ExecutionStatus::Failed);
    assert_eq!(st.exit_code, 128 + 9);
    assert_eq!(st.stdout, "before\n");
    assert!(st.error.contains("killed by SIGKILL"), "{}", st.error);

    // Program output need not be UTF-8; the string replaces what is not.
    let code = "import sys\nsys.stdout.buffer.write(b'ok \\xff\\xfe done\\n')\n";
    let st = run(&mut client, snippet("s", "bytes", code)).await;
    assert_eq!(st.status(), pb::ExecutionStatus::Completed);
    assert_eq!(st.stdout, "ok \u{fffd}\u{fffd} done\n");

    // Output over the cap: the newest bytes, behind a marker line.
    let code = "import sys\nfor i in range(30000):\n    sys.stdout.write('%099d\\n' % i)\n";
    let st = run(&mut client, snippet("s", "big", code)).await;
    assert_eq!(st.status(), pb::ExecutionStatus::Completed);
    assert!(st.stdout.len() <= 1024 * 1024, "{} bytes", st.stdout.len());
    let (marker, tail) = st.stdout.split_once('\n').unwrap();
    assert!(
        marker.starts_with("[elide-daemon: ")
            && marker.contains("earlier bytes of stdout not shown"),
        "{marker}"
    );
    let omitted: usize = marker["[elide-daemon: ".len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(omitted + tail.len(), 30000 * 100);
    assert!(tail.ends_with(&format!("{:099}\n", 29999)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_the_program_and_the_result_stays_cancelled() {
    let daemon = Daemon::start().await;
    let mut client = client(&daemon).await;
    create(&mut client, "s").await;
    let pid = start_sleeper(&mut client, "s", "sleeper").await;
    assert!(process_exists(pid));

    let cancel = pb::CancelExecutionRequest {
        session_id: "s".into(),
        execution_id: "sleeper".into(),
    };
    let reply = client
        .cancel_execution(cancel.clone())
        .await
        .expect("cancel")
        .into_inner();
    assert!(reply.success);
    // The reply comes once the program has ended.
    let st = status(&mut client, "s", "sleeper").await;
    assert!(st.complete);
    assert_eq!(st.status(), pb::ExecutionStatus::Cancelled);
    assert_eq!(st.exit_code, 128 + 15, "python dies of the SIGTERM");
    assert!(st.error.contains("cancelled"), "{}", st.error);
    wait_gone(pid).await;

    // Terminal: a second cancel changes nothing and says so; the status stays.
    let again = client
        .cancel_execution(cancel)
        .await
        .expect("cancel again")
        .into_inner();
    assert!(!again.success);
    let later = status(&mut client, "s", "sleeper").await;
    assert_eq!(later, st);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executions_are_per_session_and_deleting_a_session_stops_its_programs() {
    let daemon = Daemon::start().await;
    let mut client = client(&daemon).await;
    create(&mut client, "a").await;
    create(&mut client, "b").await;
    let a = run(&mut client, snippet("a", "job", "print('from a')")).await;
    let b = run(&mut client, snippet("b", "job", "print('from b')")).await;
    assert_eq!(
        (a.stdout.as_str(), b.stdout.as_str()),
        ("from a\n", "from b\n")
    );
    run(&mut client, snippet("a", "only-in-a", "pass")).await;
    let err = client
        .get_execution_status(pb::GetExecutionStatusRequest {
            session_id: "b".into(),
            execution_id: "only-in-a".into(),
        })
        .await
        .unwrap_err();
    assert_status(err, Code::NotFound, &["only-in-a", "\"b\""]);

    let pid = start_sleeper(&mut client, "b", "sleeper").await;
    let deleted = client
        .delete_session(pb::DeleteSessionRequest {
            session_id: "b".into(),
        })
        .await
        .expect("DeleteSession")
        .into_inner();
    assert!(deleted.success);
    wait_gone(pid).await;
    let err = client
        .delete_session(pb::DeleteSessionRequest {
            session_id: "b".into(),
        })
        .await
        .unwrap_err();
    assert_status(err, Code::NotFound, &["\"b\""]);
    // Session a is untouched.
    assert_eq!(status(&mut client, "a", "job").await.stdout, "from a\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_names_the_field_and_the_value() {
    let daemon = Daemon::start().await;
    let mut client = client(&daemon).await;
    let with_config = |config: pb::SessionConfiguration| pb::CreateSessionRequest {
        session_id: "bad".into(),
        config: Some(config),
    };

    let err = client
        .create_session(pb::CreateSessionRequest {
            session_id: String::new(),
            config: Some(original_config()),
        })
        .await
        .unwrap_err();
    assert_status(err, Code::InvalidArgument, &["session_id"]);

    let mut config = original_config();
    config.enabled_intrinsics.push("sqlite".into());
    let err = client
        .create_session(with_config(config))
        .await
        .unwrap_err();
    assert_status(
        err,
        Code::FailedPrecondition,
        &["config.enabled_intrinsics", "\"sqlite\"", "SQLite"],
    );

    let mut config = original_config();
    config.enabled_intrinsics = vec!["teleport".into()];
    let err = client
        .create_session(with_config(config))
        .await
        .unwrap_err();
    assert_status(
        err,
        Code::InvalidArgument,
        &["config.enabled_intrinsics", "\"teleport\""],
    );

    let mut config = original_config();
    config.enabled_languages.push("cobol".into());
    let err = client
        .create_session(with_config(config))
        .await
        .unwrap_err();
    assert_status(
        err,
        Code::InvalidArgument,
        &["config.enabled_languages", "\"cobol\""],
    );

    let mut config = original_config();
    config.enable_ai = true;
    let err = client
        .create_session(with_config(config))
        .await
        .unwrap_err();
    assert_status(err, Code::FailedPrecondition, &["config.enable_ai"]);

    let err = client
        .execute_snippet(snippet("nope", "x", "pass"))
        .await
        .unwrap_err();
    assert_status(err, Code::NotFound, &["\"nope\""]);

    create(&mut client, "s").await;
    let err = client
        .execute_snippet(snippet("s", "", "pass"))
        .await
        .unwrap_err();
    assert_status(err, Code::InvalidArgument, &["execution_id"]);
    let mut ts = snippet("s", "ts", "console.log(1)");
    ts.language = "typescript".into();
    let err = client.execute_snippet(ts).await.unwrap_err();
    assert_status(err, Code::InvalidArgument, &["typescript", "not enabled"]);
    let mut ruby = snippet("s", "rb", "puts 1");
    ruby.language = "ruby".into();
    let err = client.execute_snippet(ruby).await.unwrap_err();
    assert_status(err, Code::InvalidArgument, &["language", "\"ruby\""]);
    let err = client
        .execute_snippet(snippet("s", "../escape", "pass"))
        .await
        .unwrap_err();
    assert_status(err, Code::InvalidArgument, &["execution_id"]);

    let err = client
        .get_execution_status(pb::GetExecutionStatusRequest {
            session_id: "s".into(),
            execution_id: "ghost".into(),
        })
        .await
        .unwrap_err();
    assert_status(err, Code::NotFound, &["\"ghost\""]);
    let err = client
        .cancel_execution(pb::CancelExecutionRequest {
            session_id: "s".into(),
            execution_id: "ghost".into(),
        })
        .await
        .unwrap_err();
    assert_status(err, Code::NotFound, &["\"ghost\""]);
}

/// A free TCP port on 127.0.0.1 (released again for the daemon to bind).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_with_its_default_authority_uses_both_apis() {
    let tcp = format!("127.0.0.1:{}", free_port());
    let daemon = Daemon::start_with(&["--listen", &tcp]).await;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("python/original_client.py");
    let protos = root.join("../proto");
    let socket = daemon.socket.clone();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .arg(script)
            .arg(protos)
            .arg(socket)
            .arg(tcp)
            .output()
            .expect("running python3")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stdout.contains("MISSING_PYTHON_PACKAGE"),
        "Python packages for this test are missing: {stdout}"
    );
    assert!(
        output.status.success(),
        "python client failed ({}):\n{stdout}\n{stderr}\ndaemon log:\n{}",
        output.status,
        daemon.log()
    );
    let got: std::collections::BTreeMap<&str, &str> =
        stdout.lines().filter_map(|l| l.split_once('=')).collect();
    let expect = [
        ("v1.health.status", "SERVING"),
        ("v1.health.version", env!("CARGO_PKG_VERSION")),
        ("alpha.health.healthy", "True"),
        ("alpha.create.status", "SESSION_STATUS_ACTIVE"),
        ("alpha.hello.initial", "EXECUTION_STATUS_QUEUED"),
        ("alpha.hello.status", "EXECUTION_STATUS_COMPLETED"),
        ("alpha.hello.exit_code", "0"),
        ("alpha.hello.stdout", "'Hello from Elide!\\nTEST=value\\n'"),
        ("alpha.boom.status", "EXECUTION_STATUS_FAILED"),
        ("alpha.boom.exit_code", "4"),
        ("alpha.boom.stderr", "'bad thing\\n'"),
        ("alpha.boom.error", "'the program exited with code 4'"),
        ("alpha.ruby.code", "INVALID_ARGUMENT"),
        ("alpha.delete.success", "True"),
        // Without the rewrite (TCP has none), the socket path as authority
        // is refused by the HTTP/2 layer: the failure the socket avoids.
        ("tcp.socket_authority.code", "INTERNAL"),
    ];
    for (key, value) in expect {
        assert_eq!(
            got.get(key).copied(),
            Some(value),
            "{key}; full output:\n{stdout}"
        );
    }
    let age: i64 = got["alpha.create.created_at_age"].parse().unwrap();
    assert!((0..=60).contains(&age), "created_at {age} s ago");
    assert!(got["alpha.ruby.details"].contains("\"ruby\""), "{stdout}");
    assert!(
        got["tcp.socket_authority.details"].contains("RST_STREAM"),
        "{stdout}"
    );
    assert!(
        daemon.log().contains("serving it as localhost"),
        "the daemon logs the rewrite"
    );
}
