//! The original daemon contract, `elide.daemon.v1alpha1.ExecutionApi`, as a
//! thin translation onto the same [`SessionRegistry`] that serves
//! `elide.daemon.v1`: one registry, one set of rules. What this layer adds
//! is only what the old contract's shape forces: status enums, exit codes,
//! output as capped UTF-8 strings, and a cancel that answers once the
//! program is gone. Every difference from the original stub server is
//! listed in `proto/V1ALPHA1.md`.

use std::sync::Arc;
use std::time::Duration;

use elide_proto::elide::daemon::v1 as pb;
use elide_proto::elide::daemon::v1alpha1 as alpha;
use elide_proto::elide::daemon::v1alpha1::execution_api_server::ExecutionApi;
use nix::sys::signal::Signal;
use tonic::{Request, Response, Status};

use crate::error::DaemonError;
use crate::output::{OutputLog, Read, Stream};
use crate::registry::{is_terminal, SessionRegistry};

/// Largest `stdout` or `stderr` string returned, in bytes of UTF-8, marker
/// included. Two of them stay well below the 4 MiB that gRPC clients accept
/// by default (grpc-go, grpc-python), so a reply is never refused for size.
pub const MAX_STREAM_TEXT_BYTES: usize = 1024 * 1024;

/// Label put on sessions and executions made through this API, so an
/// operator listing them through v1 (`elide-ctl`) sees where they came from.
pub const API_LABEL: (&str, &str) = ("api", "elide.daemon.v1alpha1");

/// Extra time, beyond the cancel grace, that CancelExecution waits for the
/// program to be gone (SIGKILL, reaping, draining its pipes).
const CANCEL_WAIT_MARGIN: Duration = Duration::from_secs(10);

/// The `elide.daemon.v1alpha1.ExecutionApi` service.
#[derive(Clone)]
pub struct ExecutionApiService {
    registry: Arc<SessionRegistry>,
}

impl ExecutionApiService {
    /// A service over `registry` (the one the v1 service uses).
    pub fn new(registry: Arc<SessionRegistry>) -> Self {
        ExecutionApiService { registry }
    }

    /// The tonic server wrapper, with message sizes that fit the limits.
    pub fn into_server(self) -> alpha::execution_api_server::ExecutionApiServer<Self> {
        let max_in = self.registry.limits().max_code_bytes as usize + 4 * 1024 * 1024;
        alpha::execution_api_server::ExecutionApiServer::new(self)
            .max_decoding_message_size(max_in)
            .max_encoding_message_size(4 * MAX_STREAM_TEXT_BYTES)
    }
}

/// `value` must not be empty; the original contract has the client choose
/// every id.
fn required(value: &str, field: &str) -> Result<(), Status> {
    if value.is_empty() {
        return Err(DaemonError::InvalidArgument(format!(
            "{field} is required: the client chooses it"
        ))
        .into());
    }
    Ok(())
}

fn labels() -> std::collections::BTreeMap<String, String> {
    [(API_LABEL.0.to_string(), API_LABEL.1.to_string())].into()
}

/// The v1 session config for an original one. The original driver creates
/// its session once and has no way to notice that it expired, so these
/// sessions never expire (idle timeout zero); they end with DeleteSession.
pub fn session_config_to_v1(config: &alpha::SessionConfiguration) -> pb::SessionConfig {
    pb::SessionConfig {
        context_pool_size: config.context_pool_size,
        enabled_languages: config.enabled_languages.clone(),
        enabled_intrinsics: config.enabled_intrinsics.clone(),
        memory_limit_mb: config.memory_limit_mb,
        enable_ai: config.enable_ai,
        max_timeout: None,
        idle_timeout: Some(prost_types::Duration::default()),
    }
}

/// The original view of a v1 session config (its v1-only fields dropped).
pub fn session_config_from_v1(config: &pb::SessionConfig) -> alpha::SessionConfiguration {
    alpha::SessionConfiguration {
        context_pool_size: config.context_pool_size,
        enabled_languages: config.enabled_languages.clone(),
        enabled_intrinsics: config.enabled_intrinsics.clone(),
        memory_limit_mb: config.memory_limit_mb,
        enable_ai: config.enable_ai,
    }
}

fn unix_seconds(t: Option<&prost_types::Timestamp>) -> i64 {
    t.map_or(0, |t| t.seconds)
}

/// The exit code of an ended program as the original contract carries it:
/// its code, or 128 + N when signal N ended it (the shell's convention);
/// -1 when it never ran or was lost.
pub fn exit_code(status: &pb::ExecutionStatus) -> i32 {
    if let Some(code) = status.exit_code {
        return code;
    }
    match status.signal.parse::<Signal>() {
        Ok(sig) => 128 + sig as i32,
        Err(_) => -1,
    }
}

/// The original status, and the `error` text, for a v1 status. An exit
/// with code 0 is COMPLETED; any other exit, a timeout, a memory kill, a
/// failed start or a lost program is FAILED with `error` saying which;
/// a cancel is CANCELLED.
pub fn execution_state(status: &pb::ExecutionStatus) -> (alpha::ExecutionStatus, String) {
    use alpha::ExecutionStatus as A;
    use pb::ExecutionState as S;
    let ended_by = || match (status.exit_code, status.signal.as_str()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, "") => "never ran".to_string(),
        (None, sig) => format!("was killed by {sig} (exit_code is 128 + its number)"),
    };
    match status.state() {
        S::Unspecified => (A::Unspecified, String::new()),
        S::Queued => (A::Queued, String::new()),
        S::Running => (A::Running, String::new()),
        S::Exited if status.exit_code == Some(0) => (A::Completed, String::new()),
        S::Exited => (A::Failed, format!("the program {}", ended_by())),
        S::Cancelled => (
            A::Cancelled,
            format!("{}; the program {}", status.message, ended_by()),
        ),
        S::TimedOut => (
            A::Failed,
            format!("{}; the program {}", status.message, ended_by()),
        ),
        S::Failed => (
            A::Failed,
            format!(
                "{}: {}",
                status.failure().as_str_name().to_ascii_lowercase(),
                status.message
            ),
        ),
    }
}

/// The newest bytes of one output stream as a string of at most
/// `max_bytes` bytes: invalid UTF-8 becomes U+FFFD, and when anything
/// before is missing (cut here, or already dropped by the daemon's
/// retention) the text starts with a marker line saying how many bytes
/// are not shown.
pub fn stream_text(log: &OutputLog, stream: Stream, max_bytes: usize) -> String {
    let (stdout_total, stderr_total) = log.totals();
    let total = match stream {
        Stream::Stdout => stdout_total,
        Stream::Stderr => stderr_total,
    };
    let mut offset = total.saturating_sub(max_bytes as u64);
    let mut bytes = Vec::new();
    while offset < total {
        match log.read(stream, offset, max_bytes) {
            Read::Data { data, .. } => {
                offset += data.len() as u64;
                bytes.extend_from_slice(&data);
            }
            Read::Dropped { to, .. } => offset = to,
            Read::Pending => break,
        }
    }
    let text = String::from_utf8_lossy(&bytes);
    let shown_from = total - bytes.len() as u64;
    if shown_from == 0 && text.len() <= max_bytes {
        return text.into_owned();
    }
    // Replacement characters can make the text longer than the bytes: cut
    // again from the front, on a character boundary, to fit with the marker.
    let marker = |omitted: u64| {
        format!(
            "[elide-daemon: {omitted} earlier bytes of {} not shown; v1alpha1 returns at most the last {max_bytes} bytes]\n",
            stream.name()
        )
    };
    let budget = max_bytes.saturating_sub(marker(total).len());
    let mut cut = text.len().saturating_sub(budget);
    while !text.is_char_boundary(cut) {
        cut += 1;
    }
    let omitted = shown_from + text[..cut].len() as u64;
    let omitted = omitted.min(total);
    format!("{}{}", marker(omitted), &text[cut..])
}

#[tonic::async_trait]
impl ExecutionApi for ExecutionApiService {
    async fn create_session(
        &self,
        req: Request<alpha::CreateSessionRequest>,
    ) -> Result<Response<alpha::CreateSessionResponse>, Status> {
        let req = req.into_inner();
        required(&req.session_id, "session_id")?;
        let config = req.config.unwrap_or_default();
        // `enable_ai` without local AI is refused by the registry's session
        // rules (FAILED_PRECONDITION naming `config.enable_ai`), as on v1.
        let (info, _created) = self
            .registry
            .create_session(pb::CreateSessionRequest {
                session_id: req.session_id,
                config: Some(session_config_to_v1(&config)),
                labels: labels(),
            })
            .await?;
        Ok(Response::new(alpha::CreateSessionResponse {
            session_id: info.session_id,
            status: alpha::SessionStatus::Active as i32,
            created_at: unix_seconds(info.created_at.as_ref()),
        }))
    }

    async fn get_session(
        &self,
        req: Request<alpha::GetSessionRequest>,
    ) -> Result<Response<alpha::GetSessionResponse>, Status> {
        let req = req.into_inner();
        required(&req.session_id, "session_id")?;
        let info = self.registry.get_session(&req.session_id)?;
        Ok(Response::new(alpha::GetSessionResponse {
            session_id: info.session_id,
            status: alpha::SessionStatus::Active as i32,
            config: Some(session_config_from_v1(&info.config.unwrap_or_default())),
            created_at: unix_seconds(info.created_at.as_ref()),
        }))
    }

    async fn delete_session(
        &self,
        req: Request<alpha::DeleteSessionRequest>,
    ) -> Result<Response<alpha::DeleteSessionResponse>, Status> {
        let req = req.into_inner();
        required(&req.session_id, "session_id")?;
        self.registry
            .delete_session(&req.session_id, None, "session deleted")?;
        Ok(Response::new(alpha::DeleteSessionResponse {
            success: true,
        }))
    }

    async fn execute_snippet(
        &self,
        req: Request<alpha::ExecuteSnippetRequest>,
    ) -> Result<Response<alpha::ExecuteSnippetResponse>, Status> {
        let req = req.into_inner();
        required(&req.session_id, "session_id")?;
        required(&req.execution_id, "execution_id")?;
        let (status, _created) = self
            .registry
            .execute(pb::ExecuteSnippetRequest {
                session_id: req.session_id,
                execution_id: req.execution_id,
                language: req.language,
                code: req.code,
                args: req.args,
                env: req.env,
                labels: labels(),
                ..Default::default()
            })
            .await?;
        let (state, _) = execution_state(&status);
        Ok(Response::new(alpha::ExecuteSnippetResponse {
            execution_id: status.execution_id,
            session_id: status.session_id,
            status: state as i32,
        }))
    }

    async fn get_execution_status(
        &self,
        req: Request<alpha::GetExecutionStatusRequest>,
    ) -> Result<Response<alpha::GetExecutionStatusResponse>, Status> {
        let req = req.into_inner();
        required(&req.session_id, "session_id")?;
        required(&req.execution_id, "execution_id")?;
        // The status first: when it is terminal the output log is already
        // closed (the registry closes it with the final state), so the text
        // read after it is final.
        let status = self.registry.status(&req.session_id, &req.execution_id)?;
        let log = self.registry.output(&req.session_id, &req.execution_id)?;
        let complete = is_terminal(status.state());
        let (state, error) = execution_state(&status);
        Ok(Response::new(alpha::GetExecutionStatusResponse {
            exit_code: if complete { exit_code(&status) } else { 0 },
            execution_id: status.execution_id,
            session_id: status.session_id,
            status: state as i32,
            complete,
            stdout: stream_text(&log, Stream::Stdout, MAX_STREAM_TEXT_BYTES),
            stderr: stream_text(&log, Stream::Stderr, MAX_STREAM_TEXT_BYTES),
            error,
        }))
    }

    async fn cancel_execution(
        &self,
        req: Request<alpha::CancelExecutionRequest>,
    ) -> Result<Response<alpha::CancelExecutionResponse>, Status> {
        let req = req.into_inner();
        required(&req.session_id, "session_id")?;
        required(&req.execution_id, "execution_id")?;
        let (sid, eid) = (req.session_id, req.execution_id);
        let mut watch = self.registry.watch_session(&sid)?;
        let before = self.registry.cancel(&sid, &eid, Signal::SIGTERM, None)?;
        if is_terminal(before.state()) {
            // Already ended: nothing was cancelled, and its status stays.
            return Ok(Response::new(alpha::CancelExecutionResponse {
                success: false,
            }));
        }
        // Answer once the program is gone, so a status read after this
        // reply already shows CANCELLED.
        let limit = self.registry.limits().default_cancel_grace + CANCEL_WAIT_MARGIN;
        let ended = tokio::time::timeout(limit, async {
            loop {
                watch.changed.borrow_and_update();
                match self.registry.status(&sid, &eid) {
                    Ok(s) if !is_terminal(s.state()) => {}
                    _ => return,
                }
                if watch.changed.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        if ended.is_err() {
            tracing::warn!(session_id = %sid, execution_id = %eid, ?limit, "cancelled execution has not ended yet");
        }
        Ok(Response::new(alpha::CancelExecutionResponse {
            success: true,
        }))
    }

    async fn health(
        &self,
        _: Request<alpha::HealthRequest>,
    ) -> Result<Response<alpha::HealthResponse>, Status> {
        let health = self.registry.health();
        Ok(Response::new(alpha::HealthResponse {
            healthy: health.status() == pb::health_response::ServingStatus::Serving,
            version: health.version,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(state: pb::ExecutionState) -> pb::ExecutionStatus {
        let mut s = pb::ExecutionStatus::default();
        s.set_state(state);
        s
    }

    #[test]
    fn states_map_onto_the_original_enum_with_a_reason() {
        use alpha::ExecutionStatus as A;
        use pb::ExecutionState as S;
        let mut ok = status(S::Exited);
        ok.exit_code = Some(0);
        assert_eq!(execution_state(&ok), (A::Completed, String::new()));
        assert_eq!(exit_code(&ok), 0);

        let mut three = status(S::Exited);
        three.exit_code = Some(3);
        assert_eq!(
            execution_state(&three),
            (A::Failed, "the program exited with code 3".to_string())
        );
        assert_eq!(exit_code(&three), 3);

        let mut killed = status(S::Cancelled);
        killed.signal = "SIGKILL".into();
        killed.message = "cancelled with SIGTERM (grace 5s)".into();
        let (state, error) = execution_state(&killed);
        assert_eq!(state, A::Cancelled);
        assert!(error.contains("killed by SIGKILL"), "{error}");
        assert_eq!(exit_code(&killed), 137);

        let mut spawn = status(S::Failed);
        spawn.set_failure(pb::FailureReason::SpawnFailed);
        spawn.message = "python3: not found".into();
        assert_eq!(
            execution_state(&spawn),
            (A::Failed, "spawn_failed: python3: not found".to_string())
        );
        assert_eq!(exit_code(&spawn), -1);

        let mut timed = status(S::TimedOut);
        timed.message = "timed out after 1s".into();
        timed.signal = "SIGTERM".into();
        let (state, error) = execution_state(&timed);
        assert_eq!(state, A::Failed);
        assert!(error.starts_with("timed out after 1s"), "{error}");
        assert_eq!(exit_code(&timed), 143);
    }

    #[test]
    fn short_output_is_returned_whole_and_invalid_utf8_replaced() {
        let log = OutputLog::new(1024);
        log.append(Stream::Stdout, b"hello \xff world\n");
        assert_eq!(
            stream_text(&log, Stream::Stdout, 64),
            "hello \u{fffd} world\n"
        );
        assert_eq!(stream_text(&log, Stream::Stderr, 64), "");
    }

    #[test]
    fn long_output_keeps_the_tail_behind_a_marker_within_the_cap() {
        let log = OutputLog::new(4096);
        let line: Vec<u8> = (0..1000).map(|i| b'a' + (i % 26) as u8).collect();
        log.append(Stream::Stdout, &line);
        let text = stream_text(&log, Stream::Stdout, 300);
        assert!(text.len() <= 300, "{} bytes", text.len());
        let (marker, tail) = text.split_once('\n').expect("marker line");
        let omitted: u64 = marker
            .strip_prefix("[elide-daemon: ")
            .and_then(|m| m.split(' ').next())
            .and_then(|n| n.parse().ok())
            .expect("omitted count in marker");
        assert!(marker.contains("of stdout not shown"), "{marker}");
        assert_eq!(omitted as usize + tail.len(), 1000);
        assert_eq!(tail.as_bytes(), &line[omitted as usize..]);
    }

    #[test]
    fn bytes_dropped_by_retention_are_counted_in_the_marker() {
        // Retention of 256 bytes: the first 744 are gone before we read.
        let log = OutputLog::new(256);
        log.append(Stream::Stderr, &[b'x'; 1000]);
        let text = stream_text(&log, Stream::Stderr, 1024);
        let (marker, tail) = text.split_once('\n').expect("marker line");
        assert!(
            marker.starts_with("[elide-daemon: 744 earlier bytes of stderr"),
            "{marker}"
        );
        assert_eq!(tail.len(), 256);
    }

    #[test]
    fn replacement_characters_never_push_the_text_over_the_cap() {
        let log = OutputLog::new(4096);
        log.append(Stream::Stdout, &[0xff; 400]);
        let text = stream_text(&log, Stream::Stdout, 300);
        assert!(text.len() <= 300, "{} bytes", text.len());
        assert!(text.ends_with('\u{fffd}'));
    }

    #[test]
    fn session_configs_round_trip_and_never_expire() {
        let original = alpha::SessionConfiguration {
            context_pool_size: 10,
            enabled_languages: vec!["python".into(), "javascript".into()],
            enabled_intrinsics: vec!["io".into(), "env".into()],
            memory_limit_mb: 512,
            enable_ai: false,
        };
        let v1 = session_config_to_v1(&original);
        assert_eq!(v1.idle_timeout, Some(prost_types::Duration::default()));
        assert_eq!(session_config_from_v1(&v1), original);
    }
}
