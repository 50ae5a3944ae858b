//! Reaching the execution daemon the plugin config names, or a private
//! `elide-daemon` started for this run on a temporary socket and state
//! directory (in its own process group, so a terminal Ctrl-C reaches
//! `elide-run` only; stopped with SIGTERM, SIGKILL after a grace period).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use std::os::unix::process::CommandExt;

/// How long a configured endpoint may take to accept a connection.
pub const PROBE_LIMIT: Duration = Duration::from_secs(2);
/// How long a private daemon may take to listen.
pub const START_LIMIT: Duration = Duration::from_secs(20);
/// How long a private daemon gets to exit after SIGTERM (its own shutdown
/// grace is 5 s by default; we pass 2 s) before SIGKILL.
pub const STOP_LIMIT: Duration = Duration::from_secs(8);

/// The private daemon could not be started.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Spawning failed.
    #[error("cannot start the private daemon {binary}: {source}")]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// It did not listen in time or exited.
    #[error("the private daemon did not listen on {socket} within {limit:?}: {problem}\n--- its log ---\n{log}")]
    NotListening {
        /// Its socket.
        socket: PathBuf,
        /// The limit.
        limit: Duration,
        /// Exit status or timeout.
        problem: String,
        /// Its log.
        log: String,
    },
}

/// Whether a unix socket accepts a connection within [`PROBE_LIMIT`].
pub async fn unix_reachable(socket: &Path) -> bool {
    matches!(
        tokio::time::timeout(PROBE_LIMIT, tokio::net::UnixStream::connect(socket)).await,
        Ok(Ok(_))
    )
}

/// Whether a TCP `host:port` accepts a connection within [`PROBE_LIMIT`].
pub async fn tcp_reachable(address: &str) -> bool {
    matches!(
        tokio::time::timeout(PROBE_LIMIT, tokio::net::TcpStream::connect(address)).await,
        Ok(Ok(_))
    )
}

/// A private daemon; stopped by [`PrivateDaemon::stop`] or when dropped.
pub struct PrivateDaemon {
    child: Option<Child>,
    /// Its socket.
    pub socket: PathBuf,
    log: PathBuf,
}

impl PrivateDaemon {
    /// Starts `binary` with its socket, state and log under `dir`.
    pub async fn start(binary: &Path, dir: &Path) -> Result<PrivateDaemon, DaemonError> {
        let socket = dir.join("daemon.sock");
        let log = dir.join("daemon.log");
        let log_file = std::fs::File::create(&log).map_err(|source| DaemonError::Spawn {
            binary: binary.to_owned(),
            source,
        })?;
        let child = Command::new(binary)
            .arg("--socket")
            .arg(&socket)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .args(["--shutdown-grace-secs", "2"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .process_group(0)
            .spawn()
            .map_err(|source| DaemonError::Spawn {
                binary: binary.to_owned(),
                source,
            })?;
        let mut daemon = PrivateDaemon {
            child: Some(child),
            socket,
            log,
        };
        let deadline = tokio::time::Instant::now() + START_LIMIT;
        loop {
            if tokio::net::UnixStream::connect(&daemon.socket)
                .await
                .is_ok()
            {
                tracing::debug!(socket = %daemon.socket.display(), "private daemon listening");
                return Ok(daemon);
            }
            let exited = daemon
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || tokio::time::Instant::now() >= deadline {
                let problem = match exited {
                    Some(status) => format!("it exited with {status}"),
                    None => "timed out".into(),
                };
                return Err(DaemonError::NotListening {
                    socket: daemon.socket.clone(),
                    limit: START_LIMIT,
                    problem,
                    log: daemon.log_text(),
                });
            }
            // The daemon offers no readiness signal other than its socket.
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The daemon's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, wait up to [`STOP_LIMIT`], then SIGKILL.
    pub async fn stop(mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = tokio::time::Instant::now() + STOP_LIMIT;
        while tokio::time::Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::warn!("the private daemon did not stop within {STOP_LIMIT:?}; killing it");
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for PrivateDaemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
