//! What an operator meets around the daemon, through the real binaries:
//! the plugin on a TCP daemon, the daemon's limits as Nomad sees them
//! (a full queue, a stop of a queued task, the session limit), `elide-ctl`'s
//! exit codes and live output, the socket's permissions and its peer
//! check, and a second daemon refused on a live socket.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::{Command, Stdio};
use std::time::Duration;

use elide_e2e::binaries::{binary, CTL, DAEMON};
use elide_e2e::cty::{PluginConfig, TaskConfig};
use elide_e2e::daemon::Daemon;
use elide_e2e::nomad::{recoverable_flag, Alloc, NomadHost};
use elide_proto::elide::daemon::v1 as pb;
use elide_proto::hashicorp::nomad::plugins::drivers::proto::fingerprint_response::HealthState;
use rstest::rstest;
use tonic::Code;

/// Upper bound for anything a test waits for.
const LIMIT: Duration = Duration::from_secs(30);

/// Waits until the daemon has no execution left (destroyed tasks leave none).
async fn wait_for_no_executions(daemon: &Daemon) {
    let deadline = std::time::Instant::now() + LIMIT;
    loop {
        let left = daemon.executions().await;
        if left.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "executions left on the daemon: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `daemon_address` against `elide-daemon --listen`: the whole lifecycle
/// over TCP (the plugin is given the address only; the daemon's unix
/// socket is in a directory the plugin is never told of).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plugin_runs_tasks_on_a_daemon_over_tcp() {
    let (daemon, address) = Daemon::start_with_tcp(&[]).await;
    let state = tempfile::tempdir().unwrap();
    let mut host = NomadHost::configured(&PluginConfig::for_address(&address, state.path())).await;
    let healthy = host
        .fingerprint_until(HealthState::Healthy, LIMIT)
        .await
        .expect("healthy over TCP");
    assert!(healthy
        .attributes
        .contains_key("driver.elide.daemon_version"));

    let alloc = Alloc::new("tcp");
    let task = alloc.task_config(&TaskConfig::code(
        "python",
        "import sys\nprint('over tcp')\nprint('err', file=sys.stderr)\nsys.exit(3)\n",
    ));
    host.start(task.clone()).await.expect("StartTask");
    let exit = host.wait(&task.id, LIMIT).await;
    assert_eq!(
        (exit.result.expect("result").exit_code, exit.err.as_str()),
        (3, "")
    );
    assert_eq!(alloc.stdout.text_after_eofs(1, LIMIT), "over tcp\n");
    assert_eq!(alloc.stderr.text_after_eofs(1, LIMIT), "err\n");
    host.destroy(&task.id).await;

    let alloc = Alloc::new("tcp-stop");
    let task = alloc.task_config(&TaskConfig::code(
        "javascript",
        "console.log('ready'); setInterval(() => {}, 1000);",
    ));
    host.start(task.clone()).await.expect("StartTask");
    alloc.stdout.wait_for("ready\n", LIMIT);
    host.stop(&task.id, Duration::from_secs(5), "SIGTERM").await;
    let exit = host.wait(&task.id, LIMIT).await;
    let result = exit.result.expect("result");
    assert_eq!(
        (result.exit_code, result.signal, exit.err.as_str()),
        (0, 15, "")
    );
    host.destroy(&task.id).await;
    wait_for_no_executions(&daemon).await;
}

/// With every run slot taken and the queue full, StartTask fails with a
/// recoverable error naming the limit (Nomad restarts the task, and the
/// retry runs once there is room); a task still queued can be stopped and
/// never runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_daemon_queue_refuses_recoverably_and_queued_tasks_can_be_stopped() {
    let daemon = Daemon::start_with(&["--max-running", "1", "--max-queued", "1"]).await;
    let mut host = NomadHost::configured(&PluginConfig::for_socket(&daemon.socket)).await;

    let running = Alloc::new("running");
    let go = running.task_dir().join("tmp/go");
    let running_task = running.task_config(&TaskConfig::code(
        "python",
        &format!(
            "import os, time\nprint('ready', flush=True)\n\
while not os.path.exists({go:?}):\n    time.sleep(0.05)\n",
            go = go.display().to_string()
        ),
    ));
    host.start(running_task.clone()).await.expect("StartTask");
    running.stdout.wait_for("ready\n", LIMIT);

    let queued = Alloc::new("queued");
    let queued_task = queued.task_config(&TaskConfig::code("python", "print('queued ran')\n"));
    host.start(queued_task.clone())
        .await
        .expect("a task may wait in the queue");

    let refused = Alloc::new("refused");
    let refused_task = refused.task_config(&TaskConfig::code("python", "print('retried')\n"));
    let err = host
        .start(refused_task.clone())
        .await
        .expect_err("no room in the queue");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert_eq!(recoverable_flag(&err), Some(true), "{err:?}");
    assert!(
        err.message().contains("waiting for a run slot"),
        "{}",
        err.message()
    );

    // Stopping the queued task ends it before it ever runs.
    host.stop(&queued_task.id, Duration::from_secs(5), "SIGTERM")
        .await;
    let exit = host.wait(&queued_task.id, LIMIT).await;
    let result = exit.result.expect("result");
    // It never ran, so it has no exit code: -1, as Nomad's drivers report.
    assert_eq!((result.exit_code, result.signal), (-1, 0));
    assert!(
        exit.err.starts_with("cancelled before it started"),
        "{:?}",
        exit.err
    );
    assert_eq!(queued.stdout.text_after_eofs(1, LIMIT), "");

    std::fs::write(&go, "").unwrap();
    let exit = host.wait(&running_task.id, LIMIT).await;
    assert_eq!(exit.result.expect("result").exit_code, 0);

    // Nomad's retry of the refused task, now that there is room.
    host.start(refused_task.clone())
        .await
        .expect("the retried StartTask");
    let exit = host.wait(&refused_task.id, LIMIT).await;
    assert_eq!(
        (exit.result.expect("result").exit_code, exit.err.as_str()),
        (0, "")
    );
    assert_eq!(refused.stdout.text_after_eofs(1, LIMIT), "retried\n");
    for task in [&running_task, &queued_task, &refused_task] {
        host.destroy(&task.id).await;
    }
    wait_for_no_executions(&daemon).await;
}

/// The daemon's `--max-sessions`: a client that would open one more
/// session gets a recoverable StartTask error naming the limit, and runs
/// once a session is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_limit_refuses_recoverably_naming_it() {
    let daemon = Daemon::start_with(&["--max-sessions", "1"]).await;
    let mut client = daemon.client().await;
    client
        .create_session(pb::CreateSessionRequest {
            session_id: "someone-else".into(),
            config: Some(pb::SessionConfig::default()),
            ..Default::default()
        })
        .await
        .expect("the one session");
    let mut host = NomadHost::configured(&PluginConfig::for_socket(&daemon.socket)).await;
    let alloc = Alloc::new("crowded");
    let task = alloc.task_config(&TaskConfig::code("python", "print('in')\n"));
    let err = host.start(task.clone()).await.expect_err("no session left");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert_eq!(recoverable_flag(&err), Some(true), "{err:?}");
    assert!(
        err.message().contains("sessions, its limit"),
        "{}",
        err.message()
    );

    client
        .delete_session(pb::DeleteSessionRequest {
            session_id: "someone-else".into(),
            grace: None,
        })
        .await
        .expect("freeing the session");
    host.start(task.clone())
        .await
        .expect("the retried StartTask");
    let exit = host.wait(&task.id, LIMIT).await;
    assert_eq!(exit.result.expect("result").exit_code, 0);
    assert_eq!(alloc.stdout.text_after_eofs(1, LIMIT), "in\n");
}

/// `elide-ctl run` against `daemon`: its exit status and output.
fn ctl_run(daemon: &Daemon, extra: &[&str]) -> std::process::Output {
    Command::new(binary(CTL))
        .arg("--socket")
        .arg(&daemon.socket)
        .args(["run", "--language", "python"])
        .args(extra)
        .output()
        .expect("running elide-ctl")
}

/// `elide-ctl run` exits with the snippet's exit code, 128+N for signal
/// N, and 124 for a timeout, as documented.
#[rstest]
#[case::exit_code("import sys\nsys.exit(3)\n", &[], 3)]
#[case::sigkill("import os\nos.kill(os.getpid(), 9)\n", &[], 137)]
#[case::sigterm("import os, signal\nos.kill(os.getpid(), signal.SIGTERM)\n", &[], 143)]
#[case::timeout("import time\ntime.sleep(60)\n", &["--timeout", "1s"], 124)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elide_ctl_run_exits_with_the_documented_codes(
    #[case] code: &str,
    #[case] extra: &[&str],
    #[case] exit_code: i32,
) {
    let daemon = Daemon::start().await;
    let mut args = vec!["--code", code];
    args.extend_from_slice(extra);
    let output = tokio::task::spawn_blocking({
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            ctl_run(&daemon, &args)
        }
    })
    .await
    .unwrap();
    assert_eq!(
        output.status.code(),
        Some(exit_code),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `elide-ctl run` streams: a line printed by the snippet is on its stdout
/// while the snippet still runs; stderr stays apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elide_ctl_run_streams_output_while_the_snippet_runs() {
    let daemon = Daemon::start().await;
    let go = daemon.dir.path().join("go");
    let code = format!(
        "import os, sys, time\nprint('first', flush=True)\n\
print('on stderr', file=sys.stderr, flush=True)\n\
while not os.path.exists({go:?}):\n    time.sleep(0.05)\nprint('second')\n",
        go = go.display().to_string()
    );
    let mut ctl = Command::new(binary(CTL))
        .arg("--socket")
        .arg(&daemon.socket)
        .args(["run", "--language", "python", "--code", &code])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("elide-ctl starts");
    let mut stdout = BufReader::new(ctl.stdout.take().unwrap());
    let first = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        stdout.read_line(&mut line).expect("reading elide-ctl");
        (line, stdout)
    });
    let (line, mut stdout) = tokio::time::timeout(LIMIT, first)
        .await
        .expect("the first line arrives while the snippet waits")
        .unwrap();
    assert_eq!(line, "first\n");
    assert!(
        ctl.try_wait().unwrap().is_none(),
        "elide-ctl is still following the snippet"
    );
    std::fs::write(&go, "").unwrap();
    let rest = tokio::task::spawn_blocking(move || {
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut ctl.stderr.take().unwrap(), &mut stderr).unwrap();
        (rest, stderr, ctl.wait().unwrap())
    })
    .await
    .unwrap();
    assert_eq!(rest.0, "second\n");
    // The snippet's stderr, then elide-ctl's own line saying how it ended.
    assert_eq!(rest.1, "on stderr\n[elide-ctl] exited exit_code=0\n");
    assert_eq!(rest.2.code(), Some(0));
}

/// Connects to `socket` as user `nobody` (no supplementary groups);
/// `Err` with python's error when refused.
fn connect_as_nobody(socket: &std::path::Path) -> Result<(), String> {
    let output = Command::new("python3")
        .args([
            "-c",
            "import os, socket, sys
os.setgroups([])
os.setgid(65534)
os.setuid(65534)
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
",
        ])
        .arg(socket)
        .output()
        .expect("python3");
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// `--socket-mode` sets the socket's permission bits (default 660), the
/// socket belongs to the daemon's user and group, and the mode decides
/// who may connect.
#[rstest]
#[case::default(&[], 0o660, false)]
#[case::owner_only(&["--socket-mode", "600"], 0o600, false)]
#[case::everyone(&["--socket-mode", "666"], 0o666, true)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_gets_its_mode_and_the_daemons_group(
    #[case] flags: &[&str],
    #[case] mode: u32,
    #[case] others_may_connect: bool,
) {
    let daemon = Daemon::start_with(flags).await;
    // Let other users reach the socket's directory; only its mode decides.
    std::fs::set_permissions(daemon.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let meta = std::fs::metadata(&daemon.socket).unwrap();
    assert_eq!(meta.mode() & 0o7777, mode, "mode {:o}", meta.mode());
    assert_eq!(meta.uid(), nix::unistd::geteuid().as_raw());
    assert_eq!(meta.gid(), nix::unistd::getegid().as_raw());
    let nobody = tokio::task::spawn_blocking({
        let socket = daemon.socket.clone();
        move || connect_as_nobody(&socket)
    })
    .await
    .unwrap();
    match nobody {
        Ok(()) => assert!(others_may_connect, "nobody connected to a {mode:o} socket"),
        Err(error) => {
            assert!(!others_may_connect, "nobody was refused: {error}");
            assert!(error.contains("PermissionError"), "{error}");
        }
    }
}

/// A second daemon on a socket another daemon answers on refuses to start,
/// naming the socket, and leaves the first one serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_a_live_socket_is_refused() {
    let daemon = Daemon::start().await;
    let state = tempfile::tempdir().unwrap();
    let mut second = Command::new(binary(DAEMON));
    second
        .arg("--socket")
        .arg(&daemon.socket)
        .arg("--state-dir")
        .arg(state.path())
        .args(["--python-warm", "false", "--context-pool-size", "0"]);
    second.stdout(Stdio::null()).stderr(Stdio::piped());
    let (status, stderr) = tokio::task::spawn_blocking(move || {
        let mut child = second.spawn().expect("second daemon");
        let exited =
            elide_e2e::procs::wait_until(LIMIT, || child.try_wait().expect("try_wait").is_some());
        if !exited {
            let _ = child.kill();
        }
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        (child.wait().unwrap(), stderr)
    })
    .await
    .unwrap();
    assert!(!status.success(), "{status:?}: {stderr}");
    assert!(
        stderr.contains(&format!(
            "another daemon is already listening on {}",
            daemon.socket.display()
        )),
        "{stderr}"
    );
    let health = daemon
        .client()
        .await
        .health(pb::HealthRequest {})
        .await
        .expect("the first daemon still answers")
        .into_inner();
    assert_eq!(health.status(), pb::health_response::ServingStatus::Serving);
}

/// Runs `elide-ctl health` against `socket` as `uid`/`gid` (no
/// supplementary groups): its exit status, stdout and stderr.
async fn ctl_health_as(socket: &std::path::Path, uid: u32, gid: u32) -> (bool, String, String) {
    let mut ctl = Command::new(binary(CTL));
    ctl.arg("--socket").arg(socket).arg("health");
    std::os::unix::process::CommandExt::uid(&mut ctl, uid);
    std::os::unix::process::CommandExt::gid(&mut ctl, gid);
    // std also clears root's supplementary groups when it drops to `uid`.
    let output = tokio::task::spawn_blocking(move || ctl.output().expect("elide-ctl"))
        .await
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `--allow-uid`/`--allow-gid`: the daemon checks every Unix-socket peer
/// with `SO_PEERCRED`. Even with a socket everyone may connect to (mode
/// 666), a listed uid, a listed primary gid and root are served; anyone
/// else gets PERMISSION_DENIED naming its uid and gid, and the daemon logs
/// the refused connection once, with uid, gid and pid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_serves_only_listed_peers() {
    let daemon = Daemon::start_with(&[
        "--socket-mode",
        "666",
        "--allow-uid",
        "4321",
        "--allow-gid",
        "4322",
    ])
    .await;
    std::fs::set_permissions(daemon.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();

    for (who, uid, gid) in [("listed uid", 4321, 4321), ("listed gid", 5555, 4322)] {
        let (ok, stdout, stderr) = ctl_health_as(&daemon.socket, uid, gid).await;
        assert!(ok, "{who} refused: {stderr}");
        assert!(stdout.contains(" instance="), "{who}: {stdout}");
    }
    // Root, the test's own user, is always served.
    let mut client = daemon.client().await;
    client
        .health(pb::HealthRequest {})
        .await
        .expect("root is served");

    let (ok, _, stderr) = ctl_health_as(&daemon.socket, 65534, 65534).await;
    assert!(!ok, "nobody was served");
    assert!(
        stderr.contains(Code::PermissionDenied.description())
            && stderr.contains(
                "uid 65534 (gid 65534) may not use this daemon: it is not in the daemon's --allow-uid or --allow-gid lists"
            ),
        "{stderr}"
    );
    let log = daemon.log();
    let refusals: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("refused a connection on the Unix socket"))
        .collect();
    assert_eq!(refusals.len(), 1, "one line per refused connection:\n{log}");
    assert!(
        refusals[0].contains("uid=65534")
            && refusals[0].contains("gid=65534")
            && refusals[0].contains("pid="),
        "{}",
        refusals[0]
    );
}
