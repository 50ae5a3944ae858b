//! Commands beside a task's program (`nomad alloc exec`, script checks),
//! run by the daemon's `ExecInExecution`: it runs them the way the task's
//! program runs (its environment, working directory, user and cgroup).
//!
//! [`TaskManager::exec_stream`] opens one for `ExecTaskStreaming`;
//! [`TaskManager::exec_collect`] runs one to its end for `ExecTask`,
//! keeping at most [`EXEC_OUTPUT_LIMIT`] bytes of each stream.

use std::time::Duration;

use elide_proto::elide::daemon::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{TaskError, TaskManager};
use crate::daemon_link::CallError;

/// Bytes of stdout and of stderr `ExecTask` returns; the rest is read (so
/// the command is not blocked) and dropped, with a note at the end.
pub const EXEC_OUTPUT_LIMIT: usize = 64 * 1024;
/// How long `ExecTask` waits past its timeout for the daemon to report the
/// killed command's end before giving up on it.
pub const EXEC_TIMEOUT_MARGIN: Duration = Duration::from_secs(10);
/// Input messages buffered on the way to the daemon.
const INPUT_BUFFER: usize = 16;

/// Why a command could not be run beside a task.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ExecError {
    /// Unknown task, or one that has exited.
    #[error(transparent)]
    Task(#[from] TaskError),
    /// The daemon refused or failed the command; its status is kept (a
    /// missing program is INVALID_ARGUMENT, too many commands
    /// RESOURCE_EXHAUSTED, …).
    #[error("daemon at {target}: {error}")]
    Daemon {
        /// Where the daemon is.
        target: String,
        /// What it said.
        error: CallError,
    },
}

/// A command the daemon started: its output stream, and where its input goes.
pub struct ExecStream {
    /// Output, then its exit; ends after the exit.
    pub output: tonic::Streaming<pb::ExecOutput>,
    /// Input for it (stdin, its close, resizes). Dropping it does not end
    /// the command; dropping `output` kills it.
    pub input: mpsc::Sender<pb::ExecInput>,
}

/// What `ExecTask` returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecResult {
    /// Its stdout, up to [`EXEC_OUTPUT_LIMIT`] (and a note if cut).
    pub stdout: Vec<u8>,
    /// Its stderr, likewise, and a note if its timeout killed it.
    pub stderr: Vec<u8>,
    /// Its exit code (128 + the signal when a signal ended it).
    pub exit_code: i32,
    /// The signal that ended it, 0 if none.
    pub signal: i32,
}

impl TaskManager {
    /// Starts `command` beside the task's program, on a pty when `tty`.
    pub async fn exec_stream(
        &self,
        task_id: &str,
        command: Vec<String>,
        tty: bool,
        timeout: Option<Duration>,
    ) -> Result<ExecStream, ExecError> {
        let task = self.task(task_id)?;
        if let Some(outcome) = task.outcome() {
            return Err(TaskError::Precondition(format!(
                "task {task_id:?} has exited (exit code {}): there is nothing to exec into",
                outcome.exit_code
            ))
            .into());
        }
        let start = pb::ExecStart {
            session_id: task.state.session_id.clone(),
            execution_id: task.state.execution_id.clone(),
            command,
            tty,
            tty_size: None,
            timeout: timeout.map(elide_proto::duration_to_proto),
        };
        let (input, input_rx) = mpsc::channel(INPUT_BUFFER);
        let _ = input.try_send(pb::ExecInput {
            input: Some(pb::exec_input::Input::Start(start)),
        });
        let link = &task.session.link;
        let output = link
            .open_stream(ReceiverStream::new(input_rx), |mut c, r| async move {
                c.exec_in_execution(r).await
            })
            .await
            .map_err(|error| ExecError::Daemon {
                target: link.target().to_owned(),
                error,
            })?;
        Ok(ExecStream { output, input })
    }

    /// `ExecTask`: runs `command` to its end with no input, killed at
    /// `timeout` (none when zero), and returns its output and exit.
    pub async fn exec_collect(
        &self,
        task_id: &str,
        command: Vec<String>,
        timeout: Duration,
    ) -> Result<ExecResult, ExecError> {
        let timeout = (!timeout.is_zero()).then_some(timeout);
        let ExecStream { mut output, input } =
            self.exec_stream(task_id, command, false, timeout).await?;
        let _ = input
            .send(pb::ExecInput {
                input: Some(pb::exec_input::Input::StdinClose(pb::ExecStdinClose {})),
            })
            .await;
        let target = || {
            self.task(task_id)
                .map(|t| t.session.link.target().to_owned())
        };
        let mut stdout = Capped::default();
        let mut stderr = Capped::default();
        let collect = async {
            use pb::exec_output::Output;
            loop {
                match output.message().await {
                    Ok(Some(pb::ExecOutput { output: Some(o) })) => match o {
                        Output::Stdout(data) => stdout.push(&data),
                        Output::Stderr(data) => stderr.push(&data),
                        Output::Exited(exited) => return Ok(exited),
                    },
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        return Err(CallError::Status(tonic::Status::internal(
                            "the daemon ended the command's stream without its exit",
                        )))
                    }
                    Err(status) => return Err(CallError::Status(status)),
                }
            }
        };
        let exited = match timeout {
            Some(t) => match tokio::time::timeout(t + EXEC_TIMEOUT_MARGIN, collect).await {
                Ok(exited) => exited,
                Err(_) => Err(CallError::Timeout(t + EXEC_TIMEOUT_MARGIN)),
            },
            None => collect.await,
        }
        .map_err(|error| ExecError::Daemon {
            target: target().unwrap_or_default(),
            error,
        })?;
        let mut stderr = stderr.finish();
        if exited.timed_out {
            let after = timeout.unwrap_or_default();
            stderr.extend_from_slice(
                format!("elide: the command was killed after its timeout of {after:?}\n")
                    .as_bytes(),
            );
        }
        Ok(ExecResult {
            stdout: stdout.finish(),
            stderr,
            exit_code: exited.exit_code,
            signal: exited.signal,
        })
    }
}

/// Output kept up to [`EXEC_OUTPUT_LIMIT`], counting what was dropped.
#[derive(Default)]
struct Capped {
    kept: Vec<u8>,
    dropped: usize,
}

impl Capped {
    fn push(&mut self, data: &[u8]) {
        let room = EXEC_OUTPUT_LIMIT.saturating_sub(self.kept.len());
        let take = room.min(data.len());
        self.kept.extend_from_slice(&data[..take]);
        self.dropped += data.len() - take;
    }

    fn finish(mut self) -> Vec<u8> {
        if self.dropped > 0 {
            self.kept.extend_from_slice(
                format!(
                    "\nelide: {} more bytes dropped (ExecTask keeps {EXEC_OUTPUT_LIMIT} per stream)\n",
                    self.dropped
                )
                .as_bytes(),
            );
        }
        self.kept
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_over_the_limit_is_cut_with_a_note() {
        let mut capped = Capped::default();
        capped.push(&vec![b'a'; EXEC_OUTPUT_LIMIT - 1]);
        capped.push(b"bcd");
        let out = capped.finish();
        let note = "\nelide: 2 more bytes dropped (ExecTask keeps 65536 per stream)\n";
        assert_eq!(out.len(), EXEC_OUTPUT_LIMIT + note.len());
        assert_eq!(&out[EXEC_OUTPUT_LIMIT - 1..EXEC_OUTPUT_LIMIT], b"b");
        assert_eq!(String::from_utf8_lossy(&out[EXEC_OUTPUT_LIMIT..]), note);
    }

    #[test]
    fn output_under_the_limit_is_kept_whole() {
        let mut capped = Capped::default();
        capped.push(b"hello ");
        capped.push(b"world\n");
        assert_eq!(capped.finish(), b"hello world\n");
    }
}
