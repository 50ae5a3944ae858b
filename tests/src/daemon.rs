//! A real `elide-daemon` in a temporary directory.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use elide_proto::elide::daemon::v1 as pb;
use hyper_util::rt::TokioIo;
use pb::elide_daemon_client::ElideDaemonClient;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::binaries::{binary, DAEMON};

/// How long the daemon may take to listen.
const START_LIMIT: Duration = Duration::from_secs(20);

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
        let socket = self.socket.clone();
        Endpoint::from_static("http://daemon.invalid")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let socket = socket.clone();
                async move {
                    tokio::net::UnixStream::connect(socket)
                        .await
                        .map(TokioIo::new)
                }
            }))
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
        .args(["--sample-interval-secs", "0.2"])
        .args(extra_args(dir))
        .env("RUST_LOG", "elide_daemon=debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("starting elide-daemon")
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
