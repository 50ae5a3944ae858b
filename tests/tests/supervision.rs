//! Daemon supervision with real processes: the plugin, configured with a
//! `daemon {}` block and a socket nobody listens on, starts the real
//! `elide-daemon` detached from itself, restarts it when it dies, leaves it
//! running when the plugin stops, and starts only one when two plugin
//! processes share the configuration.

use std::path::PathBuf;
use std::time::Duration;

use elide_e2e::binaries::{binary, DAEMON};
use elide_e2e::cty::{DaemonBlock, PluginConfig, TaskConfig};
use elide_e2e::nomad::{Alloc, NomadHost};
use elide_e2e::procs::{self, KillOnDrop};
use elide_proto::hashicorp::nomad::plugins::drivers::proto::fingerprint_response::HealthState;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Upper bound for anything a test waits for.
const LIMIT: Duration = Duration::from_secs(30);

/// A socket nobody listens on and a state dir, in a fresh temp dir.
struct Layout {
    dir: tempfile::TempDir,
}

impl Layout {
    fn new() -> Layout {
        Layout {
            dir: elide_e2e::passable_tempdir(),
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("daemon.sock")
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn config(&self) -> PluginConfig {
        PluginConfig {
            daemon: Some(DaemonBlock {
                command: binary(DAEMON).display().to_string(),
                args: vec!["--sample-interval-secs".into(), "0.2".into()],
                state_dir: self.state_dir().display().to_string(),
            }),
            ..PluginConfig::for_socket(&self.socket())
        }
    }

    fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.state_dir().join("daemon.log")).unwrap_or_default()
    }

    /// The one daemon on the socket; fails if there are none or several.
    fn the_daemon(&self) -> i32 {
        let pids = procs::with_arg(&self.socket());
        assert_eq!(
            pids.len(),
            1,
            "exactly one daemon on the socket: {pids:?}; log:\n{}",
            self.daemon_log()
        );
        pids[0]
    }
}

/// A task that is known to work, to show the daemon is usable.
async fn run_hello(host: &mut NomadHost, name: &str) {
    let alloc = Alloc::new(name);
    let task = alloc.task_config(&TaskConfig::code("python", "print('hello')\n"));
    host.start(task.clone()).await.expect("StartTask");
    let exit = host.wait(&task.id, LIMIT).await;
    assert_eq!(exit.result.expect("result").exit_code, 0, "{:?}", exit.err);
    assert_eq!(alloc.stdout.text_after_eofs(1, LIMIT), "hello\n");
    host.destroy(&task.id).await;
}

async fn healthy(host: &mut NomadHost, layout: &Layout) {
    let fingerprint = host.fingerprint_until(HealthState::Healthy, LIMIT).await;
    assert!(
        fingerprint.is_some(),
        "fingerprint never became healthy; daemon log:\n{}\nplugin log:\n{}",
        layout.daemon_log(),
        host.plugin.stderr_lines().join("\n")
    );
}

fn started_lines(host: &mut NomadHost) -> usize {
    host.plugin
        .stderr_lines()
        .iter()
        .filter(|l| l.contains("started the execution daemon"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plugin_starts_a_detached_daemon_restarts_it_and_leaves_it_running() {
    let layout = Layout::new();
    let _cleanup = KillOnDrop::new(&layout.socket());
    let mut host = NomadHost::configured(&layout.config()).await;
    healthy(&mut host, &layout).await;
    run_hello(&mut host, "first").await;

    // Detached: its own session, and its stdio in the log file rather than
    // the plugin's pipes.
    let daemon = layout.the_daemon();
    let plugin = host.plugin.pid() as i32;
    assert_ne!(procs::session_id(daemon), procs::session_id(plugin));
    assert_eq!(procs::session_id(daemon), Some(daemon), "a session leader");
    let log = layout.state_dir().join("daemon.log");
    let plugin_stderr = procs::fd_target(plugin, 2).expect("plugin stderr");
    for fd in [1, 2] {
        let target = procs::fd_target(daemon, fd).expect("daemon fd");
        assert_eq!(target, log, "daemon fd {fd}");
        assert_ne!(target, plugin_stderr);
    }
    assert!(
        layout.state_dir().join("supervisor.lock").exists(),
        "the lock file is in the state dir"
    );

    // A crash of the daemon: the plugin starts a new one.
    kill(Pid::from_raw(daemon), Signal::SIGKILL).expect("kill -9 the daemon");
    assert!(
        procs::wait_until(LIMIT, || {
            procs::with_arg(&layout.socket())
                .iter()
                .any(|pid| *pid != daemon)
        }),
        "no new daemon was started; plugin log:\n{}",
        host.plugin.stderr_lines().join("\n")
    );
    healthy(&mut host, &layout).await;
    run_hello(&mut host, "after-restart").await;
    let restarted = layout.the_daemon();
    assert!(
        host.plugin
            .stderr_lines()
            .iter()
            .any(|l| l.contains("restarting the execution daemon")),
        "the restart is logged"
    );

    // Nomad stops the plugin: it exits and its pipes close within go-plugin's
    // 2 s, and the daemon (with the tasks it runs) stays.
    host.shutdown().await;
    let status = host.plugin.wait_for_exit(Duration::from_secs(2));
    assert!(status.is_some(), "plugin exits within 2 s of Shutdown");
    assert!(
        host.plugin.pipes_closed_within(Duration::from_secs(2)),
        "something still holds the plugin's stdout or stderr"
    );
    assert!(procs::is_alive(restarted), "the daemon outlives the plugin");
    assert!(
        tokio::net::UnixStream::connect(layout.socket())
            .await
            .is_ok(),
        "and still answers"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_plugin_processes_start_exactly_one_daemon() {
    let layout = Layout::new();
    let _cleanup = KillOnDrop::new(&layout.socket());

    // SetConfig alone (the agent's validation process) starts nothing.
    let mut first = NomadHost::configured(&layout.config()).await;
    let mut second = NomadHost::configured(&layout.config()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(procs::with_arg(&layout.socket()), Vec::<i32>::new());

    // Both long-lived: both fingerprint, both become healthy, one daemon.
    let (a, b) = tokio::join!(
        first.fingerprint_until(HealthState::Healthy, LIMIT),
        second.fingerprint_until(HealthState::Healthy, LIMIT)
    );
    assert!(
        a.is_some() && b.is_some(),
        "both healthy; log:\n{}",
        layout.daemon_log()
    );
    layout.the_daemon();
    assert_eq!(
        started_lines(&mut first) + started_lines(&mut second),
        1,
        "exactly one plugin process started a daemon"
    );
    run_hello(&mut first, "via-first").await;
    run_hello(&mut second, "via-second").await;
    layout.the_daemon();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_already_answering_is_left_alone() {
    let layout = Layout::new();
    let _cleanup = KillOnDrop::new(&layout.socket());
    let mut host = NomadHost::configured(&layout.config()).await;
    healthy(&mut host, &layout).await;
    let daemon = layout.the_daemon();

    // A plugin crash and a new plugin process: it finds the daemon
    // answering and neither kills nor duplicates it.
    host.plugin.kill_hard();
    drop(host);
    let mut host = NomadHost::configured(&layout.config()).await;
    healthy(&mut host, &layout).await;
    run_hello(&mut host, "after-plugin-crash").await;
    assert_eq!(layout.the_daemon(), daemon, "the same daemon serves");
    assert_eq!(started_lines(&mut host), 0);
}
