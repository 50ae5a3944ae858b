//! A minimal stand-in for a Nomad client's plugin host: launches the plugin
//! binary the way go-plugin does under Nomad, checks the handshake, dials
//! the announced unix socket, and keeps the plugin's stderr for inspection.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// Nomad's magic cookie.
pub use elide_proto::handshake::MAGIC_COOKIE_VALUE as COOKIE;

/// A running plugin process.
pub struct PluginProcess {
    child: Child,
    /// The socket path from the handshake.
    pub socket: PathBuf,
    /// The full handshake line (without newline).
    pub handshake: String,
    stderr_lines: Arc<Mutex<Vec<String>>>,
    stderr_reader: Option<JoinHandle<()>>,
    stdout_drain: JoinHandle<()>,
}

impl PluginProcess {
    /// Starts `binary` as Nomad would, with its socket in `socket_dir`, and
    /// waits for a valid handshake line.
    pub fn launch(binary: &Path, socket_dir: &Path) -> PluginProcess {
        let mut child = Command::new(binary)
            .env(elide_proto::handshake::MAGIC_COOKIE_KEY, COOKIE)
            .env("PLUGIN_PROTOCOL_VERSIONS", "2")
            .env("PLUGIN_MIN_PORT", "10000")
            .env("PLUGIN_MAX_PORT", "25000")
            .env("PLUGIN_UNIX_SOCKET_DIR", socket_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("plugin binary starts");
        let stderr_lines = Arc::new(Mutex::new(Vec::new()));
        let stderr_reader = Some(collect_lines(
            child.stderr.take().unwrap(),
            stderr_lines.clone(),
        ));

        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut handshake = String::new();
        stdout.read_line(&mut handshake).expect("handshake line");
        assert!(
            handshake.ends_with('\n'),
            "handshake must end with a newline: {handshake:?}"
        );
        let handshake = handshake.trim().to_owned();
        let socket = elide_proto::handshake::parse_handshake(&handshake)
            .unwrap_or_else(|e| panic!("handshake {handshake:?}: {e}"));
        // Like go-plugin: keep draining stdout (it should be at EOF now,
        // because the plugin pointed fd 1 at /dev/null).
        let stdout_drain = std::thread::spawn(move || {
            let _ = std::io::copy(&mut stdout, &mut std::io::sink());
        });
        PluginProcess {
            child,
            socket,
            handshake,
            stderr_lines,
            stderr_reader,
            stdout_drain,
        }
    }

    /// The plugin's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -9`s the plugin (a crash) and reaps it.
    pub fn kill_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A gRPC channel over the plugin's unix socket.
    pub async fn channel(&self) -> Channel {
        let socket = self.socket.clone();
        Endpoint::from_static("http://unused")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let socket = socket.clone();
                async move { UnixStream::connect(socket).await.map(TokioIo::new) }
            }))
            .await
            .expect("dial the plugin socket")
    }

    /// Waits up to `limit` for the process to exit.
    pub fn wait_for_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Waits up to `limit` until both the plugin's stdout and stderr pipes
    /// are at EOF, i.e. no process (the plugin or anything that inherited
    /// them) holds their write ends any more. go-plugin reports a plugin
    /// exited only then.
    pub fn pipes_closed_within(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let stderr_done = self
                .stderr_reader
                .as_ref()
                .is_none_or(|reader| reader.is_finished());
            if stderr_done && self.stdout_drain.is_finished() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every stderr line so far (all of them once the process has exited).
    pub fn stderr_lines(&mut self) -> Vec<String> {
        if self.child.try_wait().ok().flatten().is_some() {
            if let Some(reader) = self.stderr_reader.take() {
                reader.join().unwrap();
            }
        }
        self.stderr_lines.lock().unwrap().clone()
    }
}

impl Drop for PluginProcess {
    fn drop(&mut self) {
        // Like go-plugin's last resort: SIGKILL whatever is left.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collect_lines(stderr: ChildStderr, into: Arc<Mutex<Vec<String>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            match line {
                Ok(line) => into.lock().unwrap().push(line),
                Err(_) => break,
            }
        }
    })
}

/// Runs `binary` with `env` only (no cookie unless given) and returns its
/// exit status and combined output.
pub fn run_by_hand(binary: &Path, env: &[(&str, &str)]) -> (ExitStatus, String, String) {
    let mut command = Command::new(binary);
    command.env_clear();
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("plugin binary starts");
    let mut stdout = String::new();
    let mut stderr = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (child.wait().unwrap(), stdout, stderr)
}
