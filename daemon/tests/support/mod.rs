//! Test harness: the real `elide-daemon` binary on a real Unix socket.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use elide_daemon::client::{connect, Target};
use elide_proto::elide::daemon::v1 as pb;
use pb::elide_daemon_client::ElideDaemonClient;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

pub type Client = ElideDaemonClient<Channel>;

/// A running daemon process in its own temporary directory.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    child: Option<Child>,
    extra_args: Vec<String>,
}

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

impl Daemon {
    /// Starts a daemon whose programs start `start`, with extra flags. A
    /// warm one is returned once its node pool is full, so its first
    /// programs start warm.
    pub async fn start_as(start: Start, extra_args: &[&str]) -> Daemon {
        let size = match start {
            Start::Warm => TEST_POOL_SIZE.to_string(),
            Start::Cold => "0".to_string(),
        };
        let mut args = vec!["--context-pool-size", size.as_str()];
        if start == Start::Cold {
            args.push("--python-warm=false");
        }
        args.extend_from_slice(extra_args);
        let d = Daemon::start(&args).await;
        if start == Start::Warm {
            wait_pool_full(&mut d.client().await).await;
        }
        d
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

    /// Starts a daemon with extra command-line flags.
    pub async fn start(extra_args: &[&str]) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        // Programs run as `nobody` (the daemon's default under root) and
        // must pass through to their scratch directory.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        let socket = dir.path().join("daemon.sock");
        let mut d = Daemon {
            dir,
            socket,
            child: None,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
        };
        d.launch().await;
        d
    }

    /// A fresh working directory `work/` that programs of the daemon's
    /// default user may use (theirs, mode 0700), as Nomad hands a task its
    /// directory.
    pub fn work_dir(&self) -> PathBuf {
        let work = self.dir.path().join("work");
        std::fs::create_dir(&work).unwrap();
        if nix::unistd::Uid::effective().is_root() {
            let nobody = nix::unistd::User::from_name("nobody")
                .unwrap()
                .expect("user nobody exists");
            std::os::unix::fs::chown(&work, Some(nobody.uid.as_raw()), Some(nobody.gid.as_raw()))
                .unwrap();
        }
        std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o700)).unwrap();
        work
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub async fn launch(&mut self) {
        let child = Command::new(env!("CARGO_BIN_EXE_elide-daemon"))
            .arg("--socket")
            .arg(&self.socket)
            .arg("--state-dir")
            .arg(self.state_dir())
            .args(&self.extra_args)
            .env("RUST_LOG", "elide_daemon=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.path().join("daemon.log")).unwrap())
            .spawn()
            .expect("starting elide-daemon");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if tokio::net::UnixStream::connect(&self.socket).await.is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not listen on {:?}; log:\n{}",
                self.socket,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub async fn client(&self) -> Client {
        connect(&Target::Unix(self.socket.clone()))
            .await
            .expect("connecting to the daemon")
    }

    /// Sends `sig` to the daemon and waits for it to exit.
    pub fn stop_with(&mut self, sig: nix::sys::signal::Signal) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("daemon running");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).unwrap();
        child.wait().unwrap()
    }

    /// Kills the daemon hard and starts it again on the same state dir.
    pub async fn crash_and_restart(&mut self) {
        self.stop_with(nix::sys::signal::Signal::SIGKILL);
        self.launch().await;
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = child.wait();
        }
    }
}

pub async fn create_session(
    client: &mut Client,
    id: &str,
    config: pb::SessionConfig,
) -> pb::SessionInfo {
    client
        .create_session(pb::CreateSessionRequest {
            session_id: id.into(),
            config: Some(config),
            ..Default::default()
        })
        .await
        .expect("create session")
        .into_inner()
        .session
        .unwrap()
}

pub fn snippet(session: &str, id: &str, language: &str, code: &str) -> pb::ExecuteSnippetRequest {
    pb::ExecuteSnippetRequest {
        session_id: session.into(),
        execution_id: id.into(),
        language: language.into(),
        code: code.into(),
        ..Default::default()
    }
}

pub async fn execute(client: &mut Client, req: pb::ExecuteSnippetRequest) -> pb::ExecutionStatus {
    client
        .execute_snippet(req)
        .await
        .expect("execute")
        .into_inner()
        .status
        .unwrap()
}

/// The current status of an execution that must exist.
pub async fn status_of(client: &mut Client, session: &str, id: &str) -> pb::ExecutionStatus {
    client
        .get_execution_status(pb::GetExecutionStatusRequest {
            session_id: session.into(),
            execution_id: id.into(),
        })
        .await
        .expect("get execution status")
        .into_inner()
        .status
        .expect("status in the reply")
}

/// An execution's resource metrics (GetExecutionMetrics).
pub async fn metrics_of(client: &mut Client, session: &str, id: &str) -> pb::ExecutionMetrics {
    client
        .get_execution_metrics(pb::GetExecutionMetricsRequest {
            session_id: session.into(),
            execution_id: id.into(),
        })
        .await
        .expect("get execution metrics")
        .into_inner()
        .metrics
        .expect("metrics in the reply")
}

/// Waits (through WatchExecution) for the terminal status.
pub async fn wait_terminal(client: &mut Client, session: &str, id: &str) -> pb::ExecutionStatus {
    let mut stream = client
        .watch_execution(pb::WatchExecutionRequest {
            session_id: session.into(),
            execution_id: id.into(),
        })
        .await
        .expect("watch execution")
        .into_inner();
    let mut last = None;
    while let Some(status) = tokio::time::timeout(Duration::from_secs(60), stream.next())
        .await
        .expect("no terminal status within 60 s")
    {
        last = Some(status.expect("watch stream error"));
    }
    let last = last.expect("watch stream sent nothing");
    assert!(
        !matches!(
            last.state(),
            pb::ExecutionState::Queued | pb::ExecutionState::Running
        ),
        "watch ended before a terminal state: {last:?}"
    );
    last
}

/// Collected output of an execution.
#[derive(Debug, Default)]
pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub dropped: Vec<pb::OutputDropped>,
    pub end: Option<pb::OutputEnd>,
}

/// Reads output from the given offsets until the stream ends, checking that
/// chunk offsets are contiguous.
pub async fn read_output(
    client: &mut Client,
    session: &str,
    id: &str,
    from: (u64, u64),
    follow: bool,
) -> Output {
    let mut stream = client
        .stream_output(pb::StreamOutputRequest {
            session_id: session.into(),
            execution_id: id.into(),
            stdout_offset: from.0,
            stderr_offset: from.1,
            follow,
            heartbeat_interval: None,
        })
        .await
        .expect("stream output")
        .into_inner();
    let mut out = Output::default();
    let mut next = [from.0, from.1];
    while let Some(ev) = tokio::time::timeout(Duration::from_secs(60), stream.next())
        .await
        .expect("output stalled")
    {
        match ev.expect("output stream error").event.unwrap() {
            pb::output_event::Event::Chunk(c) => {
                let i = if c.stream() == pb::OutputStream::Stdout {
                    0
                } else {
                    1
                };
                assert_eq!(c.offset, next[i], "chunk offsets must be contiguous");
                next[i] += c.data.len() as u64;
                if i == 0 {
                    out.stdout.extend(&c.data)
                } else {
                    out.stderr.extend(&c.data)
                }
            }
            pb::output_event::Event::Heartbeat(_) => {}
            pb::output_event::Event::Dropped(d) => {
                let i = if d.stream() == pb::OutputStream::Stdout {
                    0
                } else {
                    1
                };
                next[i] = d.to_offset;
                out.dropped.push(d);
            }
            pb::output_event::Event::End(e) => out.end = Some(e),
        }
    }
    out
}

/// Pids of live processes whose command line contains `marker`.
pub fn processes_with(marker: &str) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if pid as u32 != std::process::id() && String::from_utf8_lossy(&cmdline).contains(marker) {
            // Zombies have an empty cmdline, so anything found here is alive.
            found.push(pid);
        }
    }
    found
}

pub fn secs(s: f64) -> Option<prost_types::Duration> {
    Some(elide_proto::duration_to_proto(Duration::from_secs_f64(s)))
}

pub fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn exists(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}

/// Waits (through WatchExecution) until the execution reaches `state`.
pub async fn wait_state(
    client: &mut Client,
    session: &str,
    id: &str,
    state: pb::ExecutionState,
) -> pb::ExecutionStatus {
    let mut stream = client
        .watch_execution(pb::WatchExecutionRequest {
            session_id: session.into(),
            execution_id: id.into(),
        })
        .await
        .expect("watch execution")
        .into_inner();
    while let Some(status) = tokio::time::timeout(Duration::from_secs(30), stream.next())
        .await
        .expect("state not reached within 30 s")
    {
        let status = status.expect("watch stream error");
        if status.state() == state {
            return status;
        }
    }
    panic!("execution {id} ended without reaching {state:?}");
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

/// The daemon's stats.
pub async fn daemon_stats(client: &mut Client) -> pb::GetDaemonStatsResponse {
    client
        .get_daemon_stats(pb::GetDaemonStatsRequest {})
        .await
        .expect("daemon stats")
        .into_inner()
}

/// Programs of `language` in a start count of the daemon's stats.
pub fn count(starts: &BTreeMap<String, u64>, language: &str) -> u64 {
    starts.get(language).copied().unwrap_or(0)
}

/// Asserts that `n` programs of `language` started, all `start`.
pub async fn assert_started_on(client: &mut Client, start: Start, language: &str, n: u64) {
    let stats = daemon_stats(client).await;
    let warm = count(&stats.warm_starts, language);
    let cold = count(&stats.cold_starts, language);
    let want = match start {
        Start::Warm => (n, 0),
        Start::Cold => (0, n),
    };
    assert_eq!(
        (warm, cold),
        want,
        "(warm, cold) starts of {language}: {stats:?}"
    );
}

/// Runs a snippet to its end: (status, stdout as raw bytes, stderr).
pub async fn run_raw(
    c: &mut Client,
    req: pb::ExecuteSnippetRequest,
) -> (pb::ExecutionStatus, Vec<u8>, String) {
    let (session, id) = (req.session_id.clone(), req.execution_id.clone());
    execute(c, req).await;
    let status = wait_terminal(c, &session, &id).await;
    let out = read_output(c, &session, &id, (0, 0), false).await;
    (
        status,
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs a snippet to its end: (status, stdout, stderr).
pub async fn run_to_end(
    c: &mut Client,
    req: pb::ExecuteSnippetRequest,
) -> (pb::ExecutionStatus, String, String) {
    let (status, stdout, stderr) = run_raw(c, req).await;
    (
        status,
        String::from_utf8_lossy(&stdout).into_owned(),
        stderr,
    )
}

/// Follows stdout until what it has seen satisfies `done` (within 30 s
/// per chunk); returns everything seen. `what` names the wait in panics.
pub async fn follow_stdout_until(
    client: &mut Client,
    session: &str,
    id: &str,
    what: &str,
    done: impl Fn(&[u8]) -> bool,
) -> Vec<u8> {
    let mut stream = client
        .stream_output(pb::StreamOutputRequest {
            session_id: session.into(),
            execution_id: id.into(),
            follow: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    while let Some(ev) = tokio::time::timeout(Duration::from_secs(30), stream.next())
        .await
        .unwrap_or_else(|_| panic!("no output within 30 s while waiting for {what}"))
    {
        if let Some(pb::output_event::Event::Chunk(c)) = ev.unwrap().event {
            if c.stream() == pb::OutputStream::Stdout {
                seen.extend(c.data);
                if done(&seen) {
                    return seen;
                }
            }
        }
    }
    panic!(
        "stdout ended without {what}: {:?}",
        String::from_utf8_lossy(&seen)
    );
}

/// Streams stdout (following) until it contains `needle`.
pub async fn wait_for_stdout(client: &mut Client, session: &str, id: &str, needle: &str) {
    follow_stdout_until(client, session, id, &format!("{needle:?}"), |seen| {
        String::from_utf8_lossy(seen).contains(needle)
    })
    .await;
}

/// A session config granting every intrinsic the kernel could deny. Tests
/// of other things use it where their snippets need files, children or the
/// network, or where they count warm javascript starts: the node pool
/// serves only programs without kernel rules (README, "Intrinsics are
/// permissions").
pub fn every_grant() -> pb::SessionConfig {
    pb::SessionConfig {
        enabled_intrinsics: ["console", "env", "fs.read", "fs.write", "net", "subprocess"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    }
}
