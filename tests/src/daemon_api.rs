//! The daemon API as its tests drive it: sessions, snippets, statuses,
//! output, waiting for states, the warm runtime's counters. One harness for
//! the daemon's own tests and the end-to-end suite.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use elide_proto::elide::daemon::v1 as pb;
use tokio_stream::StreamExt;

use crate::daemon::{Client, Start};

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
