//! A real `elide-daemon` in a temporary directory.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use elide_proto::elide::daemon::v1 as pb;
use pb::elide_daemon_client::ElideDaemonClient;
use tonic::transport::Channel;

use crate::binaries::{binary, DAEMON};
use crate::procs::processes_with;

/// A client of the daemon API.
pub type Client = ElideDaemonClient<Channel>;

/// How long the daemon may take to listen.
const START_LIMIT: Duration = Duration::from_secs(20);

/// How the daemon under test starts programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Python as forks of the zygote (the default) and javascript and
    /// typescript on pooled, pre-started node workers
    /// (`--context-pool-size` [`TEST_POOL_SIZE`]).
    Warm,
    /// A fresh interpreter per execution (`--python-warm=false
    /// --context-pool-size 0`).
    Cold,
}

/// Node pool size of a warm test daemon.
pub const TEST_POOL_SIZE: usize = 2;

/// A daemon process; killed when dropped.
pub struct Daemon {
    /// Holds the socket, the state dir and the log.
    pub dir: tempfile::TempDir,
    /// Its unix socket.
    pub socket: PathBuf,
    child: Child,
}

impl Daemon {
    /// Starts a daemon and waits until it accepts connections.
    pub async fn start() -> Daemon {
        Daemon::start_with(&[]).await
    }

    /// Starts a daemon with extra command-line flags (for example
    /// `--runtime scripted`).
    pub async fn start_with(extra: &[&str]) -> Daemon {
        let dir = crate::passable_tempdir();
        let socket = dir.path().join("daemon.sock");
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        std::fs::write(dir.path().join("extra-args"), extra.join("\n")).expect("daemon args");
        let child = spawn(dir.path(), &socket);
        let mut daemon = Daemon { dir, socket, child };
        daemon.wait_listening().await;
        daemon
    }

    /// Starts a daemon whose programs start `start`, with extra flags. A
    /// warm one is returned once its node pool is full, so its first
    /// programs start warm.
    pub async fn start_as(start: Start, extra: &[&str]) -> Daemon {
        let size = match start {
            Start::Warm => TEST_POOL_SIZE.to_string(),
            Start::Cold => "0".to_string(),
        };
        let mut args = vec!["--context-pool-size", size.as_str()];
        if start == Start::Cold {
            args.push("--python-warm=false");
        }
        args.extend_from_slice(extra);
        let daemon = Daemon::start_with(&args).await;
        if start == Start::Warm {
            wait_pool_full(&mut daemon.client().await).await;
        }
        daemon
    }

    /// Pids of this daemon's pooled node workers that still wait for a job
    /// (a worker that took a job runs its program's file instead).
    pub fn waiting_workers(&self) -> Vec<i32> {
        let script = self
            .state_dir()
            .join("runtime")
            .join("elide-node-worker.js");
        processes_with(&script.display().to_string())
    }

    /// A fresh working directory `work/` that programs of the daemon's
    /// default user may use (theirs, mode 0700), as Nomad hands a task its
    /// directory.
    pub fn work_dir(&self) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let work = self.dir.path().join("work");
        std::fs::create_dir(&work).expect("work dir");
        if nix::unistd::Uid::effective().is_root() {
            let nobody = nix::unistd::User::from_name("nobody")
                .expect("user database")
                .expect("user nobody exists");
            std::os::unix::fs::chown(&work, Some(nobody.uid.as_raw()), Some(nobody.gid.as_raw()))
                .expect("chown work dir");
        }
        std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o700))
            .expect("work dir mode");
        work
    }

    /// Sends `sig` to the daemon and waits for it to exit.
    pub fn stop_with(&mut self, sig: nix::sys::signal::Signal) -> ExitStatus {
        self.signal(sig);
        self.child.wait().expect("wait for the daemon")
    }

    /// Kills the daemon hard and starts it again on the same state dir.
    pub async fn crash_and_restart(&mut self) {
        self.kill_hard();
        self.restart().await;
    }

    /// Starts a daemon that also listens on TCP (`--listen`) at a free
    /// loopback port; waits until both listeners accept connections and
    /// returns the daemon and its `host:port`.
    pub async fn start_with_tcp(extra: &[&str]) -> (Daemon, String) {
        let address = free_loopback_address();
        let mut args = vec!["--listen", address.as_str()];
        args.extend_from_slice(extra);
        let daemon = Daemon::start_with(&args).await;
        let deadline = Instant::now() + START_LIMIT;
        while tokio::net::TcpStream::connect(&address).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "daemon did not listen on {address}; log:\n{}",
                daemon.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (daemon, address)
    }

    async fn wait_listening(&mut self) {
        if let Err((status, log)) = self.try_wait_listening().await {
            panic!("daemon did not listen ({status:?}); log:\n{log}");
        }
    }

    /// Waits until the daemon accepts connections; `Err` with its exit
    /// status (`None`: still running) and log if it exited or did not
    /// listen within the start limit.
    async fn try_wait_listening(&mut self) -> Result<(), (Option<ExitStatus>, String)> {
        let deadline = Instant::now() + START_LIMIT;
        while tokio::net::UnixStream::connect(&self.socket).await.is_err() {
            let exited = self.child.try_wait().expect("try_wait");
            if exited.is_some() || Instant::now() >= deadline {
                return Err((exited, self.log()));
            }
            // The daemon offers no readiness signal other than its socket.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Starts the daemon again on the same socket and state directory and
    /// reports whether it came up: `Err` with its exit status and log when
    /// it refused to start (for example over a corrupted state file).
    pub async fn try_restart(&mut self) -> Result<(), (Option<ExitStatus>, String)> {
        self.child = spawn(self.dir.path(), &self.socket);
        self.try_wait_listening().await
    }

    /// Sends SIGTERM (an orderly stop, as systemd does) and waits up to
    /// `limit` for the daemon to exit; its exit status, `None` if it was
    /// still running at the limit.
    pub fn terminate(&mut self, limit: Duration) -> Option<ExitStatus> {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The daemon's `--state-dir`.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Kills the daemon with SIGKILL (a crash) and waits for it to be gone.
    pub fn kill_hard(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }

    /// Starts the daemon again on the same socket and state directory.
    pub async fn restart(&mut self) {
        self.child = spawn(self.dir.path(), &self.socket);
        self.wait_listening().await;
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` to the daemon process (SIGSTOP/SIGCONT simulate a hang).
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal);
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// A client of the daemon API.
    pub async fn client(&self) -> ElideDaemonClient<Channel> {
        ElideDaemonClient::new(self.channel().await)
    }

    /// A gRPC channel to the daemon's socket, for any of the APIs it serves.
    pub async fn channel(&self) -> Channel {
        elide_nomad_client::dial_unix(self.socket.clone())
            .await
            .expect("dial the daemon")
    }

    /// Every execution of every session.
    pub async fn executions(&self) -> Vec<pb::ExecutionStatus> {
        let mut client = self.client().await;
        let sessions = client
            .list_sessions(pb::ListSessionsRequest {})
            .await
            .expect("list sessions")
            .into_inner()
            .sessions;
        let mut all = Vec::new();
        for session in sessions {
            let list = client
                .list_executions(pb::ListExecutionsRequest {
                    session_id: session.session_id,
                    active_only: false,
                })
                .await
                .expect("list executions")
                .into_inner();
            all.extend(list.executions);
        }
        all
    }
}

/// The javascript entry of the daemon's capabilities.
pub async fn javascript_support(client: &mut Client) -> pb::LanguageSupport {
    client
        .get_capabilities(pb::GetCapabilitiesRequest {})
        .await
        .expect("capabilities")
        .into_inner()
        .languages
        .into_iter()
        .find(|l| l.language == "javascript")
        .expect("javascript in the capabilities")
}

/// Waits until the node pool reports every worker booted and waiting.
pub async fn wait_pool_full(client: &mut Client) {
    let want = format!("node pool of {TEST_POOL_SIZE} per daemon, {TEST_POOL_SIZE} ready");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let js = javascript_support(client).await;
        if js.start_detail.contains(&want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the node pool did not fill within 60 s: {js:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A loopback `host:port` that nothing listened on a moment ago (the port
/// the kernel handed out for an ephemeral bind, released again).
pub fn free_loopback_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address").to_string()
}

/// Launches `elide-daemon` with its socket and state under `dir`; its log
/// is appended to `dir/daemon.log`.
fn spawn(dir: &std::path::Path, socket: &std::path::Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("daemon.log"))
        .expect("daemon log");
    Command::new(binary(DAEMON))
        .arg("--socket")
        .arg(socket)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(with_default_sampling(extra_args(dir)))
        .env("RUST_LOG", "elide_daemon=debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("starting elide-daemon")
}

/// `extra`, sampling every 0.2 s unless it sets an interval itself (tests
/// want metrics soon; the flag may be given only once).
fn with_default_sampling(mut extra: Vec<String>) -> Vec<String> {
    if !extra
        .iter()
        .any(|a| a.starts_with("--sample-interval-secs"))
    {
        extra.extend(["--sample-interval-secs".to_owned(), "0.2".to_owned()]);
    }
    extra
}

/// The extra flags the daemon in `dir` was first started with (kept in a
/// file so a restart uses the same ones).
fn extra_args(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("extra-args"))
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // A paused daemon cannot act on SIGTERM.
        self.signal(nix::sys::signal::Signal::SIGCONT);
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}
