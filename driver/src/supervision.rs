//! Starting the execution daemon when the plugin configuration has a
//! `daemon {}` block and nothing answers on `daemon_socket`.
//!
//! Rules, in the order they matter:
//!
//! * **One supervisor per state dir.** Nomad runs several plugin processes
//!   (three at agent start, more across restarts); only the one holding
//!   `flock` on `<state_dir>/supervisor.lock` starts daemons. The others
//!   stand by and retry the lock, so one takes over when the holder dies.
//! * **Never touch a daemon that answers.** One started by systemd, by
//!   another plugin process or by a previous incarnation of this one is
//!   only watched; a daemon is started only when the socket is definitely
//!   dead (no file, or connection refused), never when it is merely slow.
//! * **The daemon outlives the plugin.** It runs in its own session
//!   (`setsid`), with no `PDEATHSIG`, and its stdio goes to
//!   `<state_dir>/daemon.log`, not to the plugin's pipes (go-plugin sees the
//!   plugin exit only once those pipes close). The plugin never kills it.
//! * **Restarts back off.** A daemon this process started that exits is
//!   started again after 1 s, doubling to 30 s; a run of
//!   [`STABLE_RUN`] resets the delay. Each restart is logged.
//!
//! Nothing here knows gRPC. Process spawning and the socket check sit
//! behind [`Launcher`] so the policy can be tested without processes.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::plugin_config::DaemonCommand;

/// The lock file, under the state dir, that elects the supervising process.
pub const LOCK_FILE: &str = "supervisor.lock";
/// The daemon's stdout and stderr, appended, under the state dir.
pub const LOG_FILE: &str = "daemon.log";
/// Delay before the first restart of a daemon that exited.
pub const FIRST_RESTART_DELAY: Duration = Duration::from_secs(1);
/// Longest delay between restarts.
pub const MAX_RESTART_DELAY: Duration = Duration::from_secs(30);
/// A daemon that ran at least this long resets the restart delay.
pub const STABLE_RUN: Duration = Duration::from_secs(60);
/// How often a process that does not hold the lock tries to take it.
pub const LOCK_RETRY_INTERVAL: Duration = Duration::from_secs(5);
/// How often a daemon this process did not start is checked.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(2);
/// Longest wait for one connection to the socket when checking it.
pub const SOCKET_CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a freshly started daemon's socket is checked until it listens.
pub const LISTEN_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// After this long without listening, a started daemon is reported (and
/// left alone: it may still be loading its state).
pub const LISTEN_LIMIT: Duration = Duration::from_secs(30);
/// Every delay and limit of the supervision loop; [`Timing::default`] is
/// the constants above (tests shrink them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// [`FIRST_RESTART_DELAY`].
    pub first_restart_delay: Duration,
    /// [`MAX_RESTART_DELAY`].
    pub max_restart_delay: Duration,
    /// [`STABLE_RUN`].
    pub stable_run: Duration,
    /// [`LOCK_RETRY_INTERVAL`].
    pub lock_retry_interval: Duration,
    /// [`WATCH_INTERVAL`].
    pub watch_interval: Duration,
    /// [`LISTEN_POLL_INTERVAL`].
    pub listen_poll_interval: Duration,
    /// [`LISTEN_LIMIT`].
    pub listen_limit: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            first_restart_delay: FIRST_RESTART_DELAY,
            max_restart_delay: MAX_RESTART_DELAY,
            stable_run: STABLE_RUN,
            lock_retry_interval: LOCK_RETRY_INTERVAL,
            watch_interval: WATCH_INTERVAL,
            listen_poll_interval: LISTEN_POLL_INTERVAL,
            listen_limit: LISTEN_LIMIT,
        }
    }
}

/// Environment variables of the go-plugin contract, which are the plugin's
/// business and must not leak into the daemon.
const PLUGIN_ENV: [&str; 6] = [
    crate::launch::MAGIC_COOKIE_KEY,
    "PLUGIN_PROTOCOL_VERSIONS",
    "PLUGIN_MIN_PORT",
    "PLUGIN_MAX_PORT",
    "PLUGIN_UNIX_SOCKET_DIR",
    "PLUGIN_UNIX_SOCKET_GROUP",
];

/// Everything needed to start the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchPlan {
    /// Executable: an absolute path or a name on `PATH`.
    pub program: String,
    /// Extra arguments after the socket and state dir.
    pub args: Vec<String>,
    /// The socket the daemon listens on (`daemon_socket`).
    pub socket: PathBuf,
    /// The daemon's state dir; also holds [`LOCK_FILE`] and [`LOG_FILE`].
    pub state_dir: PathBuf,
}

impl LaunchPlan {
    /// The plan for a configured `daemon {}` block and socket.
    pub fn new(command: &DaemonCommand, socket: &Path) -> Self {
        LaunchPlan {
            program: command.command.clone(),
            args: command.args.clone(),
            socket: socket.to_owned(),
            state_dir: command.state_dir.clone(),
        }
    }

    /// The daemon's arguments: `--socket S --state-dir D` then `args`.
    pub fn argv(&self) -> Vec<OsString> {
        let mut argv: Vec<OsString> = vec![
            "--socket".into(),
            self.socket.clone().into(),
            "--state-dir".into(),
            self.state_dir.clone().into(),
        ];
        argv.extend(self.args.iter().map(OsString::from));
        argv
    }

    /// `<state_dir>/supervisor.lock`.
    pub fn lock_file(&self) -> PathBuf {
        self.state_dir.join(LOCK_FILE)
    }

    /// `<state_dir>/daemon.log`.
    pub fn log_file(&self) -> PathBuf {
        self.state_dir.join(LOG_FILE)
    }
}

/// What a connection attempt to the daemon socket showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketState {
    /// Something accepted the connection.
    Answers,
    /// Definitely nobody: no socket file, or the connection was refused.
    Absent,
    /// Unclear (timeout, permission): someone may be there, so it is left
    /// alone.
    Unresponsive,
}

/// A daemon process that was started.
pub struct Spawned {
    /// Its process id.
    pub pid: u32,
    /// Completes when it exits, describing how.
    pub exited: BoxFuture<'static, String>,
}

/// The seam to the operating system: starting a daemon and checking its
/// socket. [`ProcessLauncher`] is the real one.
pub trait Launcher: Send + Sync + 'static {
    /// Starts the daemon described by `plan`, detached from the plugin.
    fn spawn(&self, plan: &LaunchPlan) -> io::Result<Spawned>;
    /// Checks whether anything listens on `socket`. Must finish in bounded
    /// time.
    fn check_socket(&self, socket: &Path) -> BoxFuture<'static, SocketState>;
}

/// What the supervisor is doing, published on a `watch` channel so the
/// fingerprint can report changes at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SupervisorState {
    /// Not decided yet (taking the lock, checking the socket).
    Starting,
    /// Another process holds the lock and supervises.
    Standby,
    /// A daemon this process did not start answers; it is only watched.
    External,
    /// A daemon this process started runs.
    Running {
        /// Its process id.
        pid: u32,
        /// Whether it accepts connections yet.
        listening: bool,
    },
    /// The daemon exited or could not be started; the next attempt is
    /// after a back-off delay.
    Restarting {
        /// What went wrong.
        reason: String,
        /// The delay before the next attempt.
        delay: Duration,
    },
}

/// Supervises one daemon in a background task; dropping it stops
/// supervising (the daemon keeps running, the lock is released).
pub struct Supervisor {
    plan: LaunchPlan,
    task: JoinHandle<()>,
}

impl Supervisor {
    /// Starts supervising `plan` (must be called inside a tokio runtime),
    /// publishing progress on `state`.
    pub fn start(
        plan: LaunchPlan,
        launcher: Arc<dyn Launcher>,
        state: watch::Sender<SupervisorState>,
    ) -> Self {
        Supervisor::with_timing(plan, launcher, state, Timing::default())
    }

    /// [`Supervisor::start`] with other delays and limits.
    pub fn with_timing(
        plan: LaunchPlan,
        launcher: Arc<dyn Launcher>,
        state: watch::Sender<SupervisorState>,
        timing: Timing,
    ) -> Self {
        tracing::info!(socket = %plan.socket.display(), state_dir = %plan.state_dir.display(), program = %plan.program, "daemon supervision enabled");
        let task = tokio::spawn(supervise(plan.clone(), launcher, state, timing));
        Supervisor { plan, task }
    }

    /// What it supervises.
    pub fn plan(&self) -> &LaunchPlan {
        &self.plan
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        // Only the supervising task stops; a child it started keeps running
        // (tokio does not kill children on drop unless asked to).
        self.task.abort();
    }
}

/// Why the lock could not be examined.
#[derive(Debug, thiserror::Error)]
#[error("cannot use the supervisor lock {path}: {source}")]
pub struct LockError {
    path: PathBuf,
    #[source]
    source: io::Error,
}

/// Holds the supervisor lock until dropped (or the process exits).
#[derive(Debug)]
pub struct SupervisorLock(#[allow(dead_code)] nix::fcntl::Flock<File>);

/// Takes `flock(LOCK_EX | LOCK_NB)` on the plan's lock file, creating the
/// state dir and the file as needed. `Ok(None)`: another process holds it.
pub fn try_lock(plan: &LaunchPlan) -> Result<Option<SupervisorLock>, LockError> {
    let path = plan.lock_file();
    let error = |source| LockError {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(&plan.state_dir).map_err(error)?;
    // std opens with O_CLOEXEC, so a daemon started later does not inherit
    // the lock (which would keep it held after this process died).
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(error)?;
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(SupervisorLock(lock))),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, errno)) => Err(error(io::Error::from(errno))),
    }
}

async fn supervise(
    plan: LaunchPlan,
    launcher: Arc<dyn Launcher>,
    state: watch::Sender<SupervisorState>,
    timing: Timing,
) {
    let publish = |new: SupervisorState| {
        state.send_if_modified(|current| {
            let changed = *current != new;
            *current = new;
            changed
        });
    };
    publish(SupervisorState::Starting);
    let mut said_standby = false;
    let _lock = loop {
        match try_lock(&plan) {
            Ok(Some(lock)) => break lock,
            Ok(None) => {
                if !said_standby {
                    tracing::info!(lock = %plan.lock_file().display(), "another plugin process supervises the daemon; standing by");
                    said_standby = true;
                }
                publish(SupervisorState::Standby);
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?timing.lock_retry_interval, "cannot take the supervisor lock");
                publish(SupervisorState::Standby);
            }
        }
        tokio::time::sleep(timing.lock_retry_interval).await;
    };
    tracing::info!(lock = %plan.lock_file().display(), "this plugin process supervises the daemon");

    let mut backoff = Backoff::between(timing.first_restart_delay, timing.max_restart_delay);
    let mut restarts: u64 = 0;
    let mut said_external = false;
    loop {
        match launcher.check_socket(&plan.socket).await {
            SocketState::Absent => said_external = false,
            found => {
                if !said_external {
                    tracing::info!(socket = %plan.socket.display(), state = ?found, "a daemon this process did not start is on the socket; leaving it alone");
                    said_external = true;
                }
                publish(SupervisorState::External);
                tokio::time::sleep(timing.watch_interval).await;
                continue;
            }
        }
        let started = Instant::now();
        let reason = match launcher.spawn(&plan) {
            Ok(spawned) => {
                tracing::info!(pid = spawned.pid, program = %plan.program, socket = %plan.socket.display(), log = %plan.log_file().display(), restarts, "started the execution daemon");
                let pid = spawned.pid;
                publish(SupervisorState::Running {
                    pid,
                    listening: false,
                });
                let exit =
                    run_until_exit(spawned, &plan, launcher.as_ref(), &publish, &timing).await;
                format!("daemon (pid {pid}) exited: {exit}")
            }
            Err(e) => format!("cannot start {}: {e}", plan.program),
        };
        if started.elapsed() >= timing.stable_run {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        restarts += 1;
        tracing::warn!(reason, restart_in = ?delay, restarts, "restarting the execution daemon");
        publish(SupervisorState::Restarting { reason, delay });
        tokio::time::sleep(delay).await;
    }
}

/// Waits for a started daemon to exit, publishing when it starts to listen.
async fn run_until_exit(
    spawned: Spawned,
    plan: &LaunchPlan,
    launcher: &dyn Launcher,
    publish: &impl Fn(SupervisorState),
    timing: &Timing,
) -> String {
    let pid = spawned.pid;
    let mut exited = spawned.exited;
    let listening = async {
        let deadline = Instant::now() + timing.listen_limit;
        loop {
            if launcher.check_socket(&plan.socket).await == SocketState::Answers {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(timing.listen_poll_interval).await;
        }
    };
    tokio::select! {
        exit = &mut exited => return exit,
        listens = listening => {
            if listens {
                tracing::info!(pid, socket = %plan.socket.display(), "the execution daemon is listening");
                publish(SupervisorState::Running { pid, listening: true });
            } else {
                tracing::warn!(pid, limit = ?timing.listen_limit, log = %plan.log_file().display(), "the execution daemon does not listen yet; leaving it running");
            }
        }
    }
    exited.await
}

/// Starts real daemon processes and checks real unix sockets.
#[derive(Debug, Clone, Default)]
pub struct ProcessLauncher;

impl Launcher for ProcessLauncher {
    fn spawn(&self, plan: &LaunchPlan) -> io::Result<Spawned> {
        std::fs::create_dir_all(&plan.state_dir)?;
        let mut log = open_log(&plan.log_file())?;
        // A marker, so an operator reading the log sees where each run begins.
        let _ = writeln!(
            log,
            "--- nomad-driver-elide (pid {}) starts {} ---",
            std::process::id(),
            plan.program
        );
        let mut command = tokio::process::Command::new(&plan.program);
        command
            .args(plan.argv())
            .current_dir(&plan.state_dir)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // The daemon must outlive the plugin (its executions are the
            // tasks Nomad recovers after a plugin restart).
            .kill_on_drop(false);
        for key in PLUGIN_ENV {
            command.env_remove(key);
        }
        // SAFETY: the closure runs in the child between fork and exec and
        // calls only setsid(2), which is async-signal-safe and touches no
        // memory shared with the parent.
        unsafe {
            command.pre_exec(|| {
                // Its own session: no terminal signals from the agent's
                // process group, and no tie to the plugin's lifetime.
                nix::unistd::setsid().map(drop).map_err(io::Error::from)
            });
        }
        let mut child = command.spawn()?;
        let pid = child.id().unwrap_or_default();
        Ok(Spawned {
            pid,
            exited: Box::pin(async move {
                match child.wait().await {
                    Ok(status) => status.to_string(),
                    Err(e) => format!("cannot wait for it: {e}"),
                }
            }),
        })
    }

    fn check_socket(&self, socket: &Path) -> BoxFuture<'static, SocketState> {
        let socket = socket.to_owned();
        Box::pin(async move {
            match tokio::time::timeout(
                SOCKET_CHECK_TIMEOUT,
                tokio::net::UnixStream::connect(&socket),
            )
            .await
            {
                Ok(Ok(_)) => SocketState::Answers,
                Ok(Err(e))
                    if matches!(
                        e.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                    ) =>
                {
                    SocketState::Absent
                }
                Ok(Err(_)) | Err(_) => SocketState::Unresponsive,
            }
        })
    }
}

fn open_log(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    File::options()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tokio::sync::oneshot;

    /// A launcher whose daemons are oneshot channels: sending on (or
    /// dropping) the sender is the daemon's exit.
    #[derive(Default)]
    struct FakeLauncher {
        socket: Mutex<Option<SocketState>>,
        spawned: Mutex<Vec<(LaunchPlan, Option<oneshot::Sender<()>>)>>,
        /// Whether a spawned daemon answers on the socket.
        listens: bool,
    }

    impl FakeLauncher {
        fn spawn_count(&self) -> usize {
            self.spawned.lock().unwrap().len()
        }

        fn kill_last(&self) {
            let mut spawned = self.spawned.lock().unwrap();
            spawned.last_mut().unwrap().1.take();
            *self.socket.lock().unwrap() = Some(SocketState::Absent);
        }
    }

    impl Launcher for FakeLauncher {
        fn spawn(&self, plan: &LaunchPlan) -> io::Result<Spawned> {
            let (exit_tx, exit_rx) = oneshot::channel();
            let mut spawned = self.spawned.lock().unwrap();
            spawned.push((plan.clone(), Some(exit_tx)));
            if self.listens {
                *self.socket.lock().unwrap() = Some(SocketState::Answers);
            }
            Ok(Spawned {
                pid: 1000 + spawned.len() as u32,
                exited: Box::pin(async move {
                    let _ = exit_rx.await;
                    "killed".to_owned()
                }),
            })
        }

        fn check_socket(&self, _socket: &Path) -> BoxFuture<'static, SocketState> {
            let state = self.socket.lock().unwrap().unwrap_or(SocketState::Absent);
            Box::pin(async move { state })
        }
    }

    fn plan(dir: &Path) -> LaunchPlan {
        LaunchPlan::new(
            &DaemonCommand {
                command: "elide-daemon".into(),
                args: vec!["--max-running".into(), "4".into()],
                state_dir: dir.join("state"),
            },
            &dir.join("daemon.sock"),
        )
    }

    /// The default timing with seconds read as milliseconds.
    fn fast() -> Timing {
        let ms = |d: Duration| Duration::from_millis(d.as_secs().max(1));
        Timing {
            first_restart_delay: ms(FIRST_RESTART_DELAY),
            max_restart_delay: ms(MAX_RESTART_DELAY),
            // Never reached by a test: a reset would make the delays depend on
            // how fast the test runs.
            stable_run: STABLE_RUN,
            lock_retry_interval: ms(LOCK_RETRY_INTERVAL),
            watch_interval: ms(WATCH_INTERVAL),
            listen_poll_interval: Duration::from_millis(1),
            listen_limit: ms(LISTEN_LIMIT),
        }
    }

    fn start(
        dir: &Path,
        launcher: &Arc<FakeLauncher>,
    ) -> (Supervisor, watch::Receiver<SupervisorState>) {
        let (tx, rx) = watch::channel(SupervisorState::Starting);
        let supervisor = Supervisor::with_timing(plan(dir), launcher.clone(), tx, fast());
        (supervisor, rx)
    }

    async fn wait_for(
        state: &mut watch::Receiver<SupervisorState>,
        want: impl Fn(&SupervisorState) -> bool,
    ) -> SupervisorState {
        // Only guards against a hang; every step takes milliseconds.
        tokio::time::timeout(Duration::from_secs(20), state.wait_for(want))
            .await
            .expect("state reached")
            .expect("supervisor alive")
            .clone()
    }

    #[test]
    fn the_daemon_gets_socket_and_state_dir_then_the_configured_args() {
        let plan = plan(Path::new("/s"));
        assert_eq!(
            plan.argv(),
            [
                "--socket",
                "/s/daemon.sock",
                "--state-dir",
                "/s/state",
                "--max-running",
                "4"
            ]
            .map(OsString::from)
        );
        assert_eq!(plan.lock_file(), Path::new("/s/state/supervisor.lock"));
        assert_eq!(plan.log_file(), Path::new("/s/state/daemon.log"));
    }

    #[tokio::test]
    async fn starts_a_daemon_when_none_answers_and_restarts_it_with_backoff() {
        let dir = tempfile::tempdir().unwrap();
        let launcher = Arc::new(FakeLauncher {
            listens: true,
            ..FakeLauncher::default()
        });
        let (_supervisor, mut state) = start(dir.path(), &launcher);
        let running = wait_for(&mut state, |s| {
            matches!(
                s,
                SupervisorState::Running {
                    listening: true,
                    ..
                }
            )
        })
        .await;
        assert_eq!(
            running,
            SupervisorState::Running {
                pid: 1001,
                listening: true
            }
        );
        assert_eq!(launcher.spawned.lock().unwrap()[0].0, plan(dir.path()));

        let mut delays = Vec::new();
        for round in 0..6 {
            launcher.kill_last();
            let restarting = wait_for(&mut state, |s| {
                matches!(s, SupervisorState::Restarting { .. })
            })
            .await;
            let SupervisorState::Restarting { delay, reason } = restarting else {
                unreachable!()
            };
            assert!(reason.contains("exited: killed"), "{reason}");
            delays.push(delay.as_millis());
            let pid = 1002 + round;
            wait_for(&mut state, |s| {
                *s == SupervisorState::Running {
                    pid,
                    listening: true,
                }
            })
            .await;
        }
        assert_eq!(delays, [1, 2, 4, 8, 16, 30]);
        assert_eq!(launcher.spawn_count(), 7);
    }

    /// Kills the running daemon; the delay the supervisor then waits.
    async fn kill_and_read_delay(
        launcher: &FakeLauncher,
        state: &mut watch::Receiver<SupervisorState>,
    ) -> Duration {
        launcher.kill_last();
        let restarting = wait_for(state, |s| matches!(s, SupervisorState::Restarting { .. })).await;
        let SupervisorState::Restarting { delay, .. } = restarting else {
            unreachable!()
        };
        delay
    }

    /// On a paused tokio clock, with the production delays: the back-off
    /// doubles while the daemon keeps dying young and starts over once a
    /// daemon has run for [`STABLE_RUN`].
    #[tokio::test(start_paused = true)]
    async fn the_backoff_starts_over_after_a_stable_run() {
        let dir = tempfile::tempdir().unwrap();
        let launcher = Arc::new(FakeLauncher {
            listens: true,
            ..FakeLauncher::default()
        });
        let (tx, mut state) = watch::channel(SupervisorState::Starting);
        let _supervisor =
            Supervisor::with_timing(plan(dir.path()), launcher.clone(), tx, Timing::default());
        let mut pid = 1001;
        let running = |pid: u32| SupervisorState::Running {
            pid,
            listening: true,
        };
        wait_for(&mut state, |s| *s == running(pid)).await;
        assert_eq!(
            kill_and_read_delay(&launcher, &mut state).await,
            FIRST_RESTART_DELAY
        );
        pid += 1;
        wait_for(&mut state, |s| *s == running(pid)).await;
        assert_eq!(
            kill_and_read_delay(&launcher, &mut state).await,
            FIRST_RESTART_DELAY * 2
        );
        pid += 1;
        wait_for(&mut state, |s| *s == running(pid)).await;
        tokio::time::sleep(STABLE_RUN).await;
        assert_eq!(
            kill_and_read_delay(&launcher, &mut state).await,
            FIRST_RESTART_DELAY,
            "a daemon that ran {STABLE_RUN:?} resets the back-off"
        );
    }

    #[tokio::test]
    async fn a_daemon_that_answers_is_never_touched() {
        let dir = tempfile::tempdir().unwrap();
        let launcher = Arc::new(FakeLauncher::default());
        *launcher.socket.lock().unwrap() = Some(SocketState::Unresponsive);
        let (_supervisor, mut state) = start(dir.path(), &launcher);
        wait_for(&mut state, |s| *s == SupervisorState::External).await;
        *launcher.socket.lock().unwrap() = Some(SocketState::Answers);
        tokio::time::sleep(fast().watch_interval * 10).await;
        assert_eq!(launcher.spawn_count(), 0, "a slow or foreign daemon stays");

        // Once it is definitely gone, this process starts one.
        *launcher.socket.lock().unwrap() = Some(SocketState::Absent);
        wait_for(&mut state, |s| matches!(s, SupervisorState::Running { .. })).await;
        assert_eq!(launcher.spawn_count(), 1);
    }

    #[tokio::test]
    async fn only_the_lock_holder_starts_a_daemon_and_another_takes_over() {
        let dir = tempfile::tempdir().unwrap();
        let launcher = Arc::new(FakeLauncher::default());
        let (first, mut state_a) = start(dir.path(), &launcher);
        wait_for(&mut state_a, |s| {
            matches!(s, SupervisorState::Running { .. })
        })
        .await;
        let (_second, mut state_b) = start(dir.path(), &launcher);
        wait_for(&mut state_b, |s| *s == SupervisorState::Standby).await;
        tokio::time::sleep(fast().lock_retry_interval * 4).await;
        assert_eq!(
            launcher.spawn_count(),
            1,
            "the standby process spawns nothing"
        );

        // The holder goes away (its daemon keeps running, so the socket
        // still answers): the standby takes the lock and only watches.
        *launcher.socket.lock().unwrap() = Some(SocketState::Answers);
        drop(first);
        wait_for(&mut state_b, |s| *s == SupervisorState::External).await;
        assert_eq!(launcher.spawn_count(), 1);
    }

    #[test]
    fn the_lock_is_exclusive_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let plan = plan(dir.path());
        let held = try_lock(&plan).unwrap().expect("first taker gets it");
        assert!(try_lock(&plan).unwrap().is_none(), "second one does not");
        drop(held);
        assert!(try_lock(&plan).unwrap().is_some());
    }
}
