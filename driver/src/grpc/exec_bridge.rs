//! `ExecTask` and `ExecTaskStreaming` as Nomad's client drives them
//! (`plugins/drivers/{client,server,execstreaming}.go`,
//! `drivers/shared/executor/exec_utils.go`), onto the daemon's
//! `ExecInExecution`:
//!
//! * the first streaming message must carry `setup`; later ones carry
//!   stdin data, its close, a `tty_size`, or nothing (a heartbeat);
//! * output goes out as `stdout`/`stderr` data, then each stream's
//!   `close` (only stdout's on a tty, where stderr is the same terminal),
//!   then `exited` with the exit code (128 + the signal when a signal ended
//!   it), and the call completes OK;
//! * a client that goes away mid-command gets its command killed (the
//!   daemon kills its process group when the stream to it is dropped).

use std::time::Duration;

use elide_proto::elide::daemon::v1 as pb;
use elide_proto::hashicorp::nomad::plugins::drivers::proto::{
    ExecTaskRequest, ExecTaskResponse, ExecTaskStreamingIoOperation, ExecTaskStreamingRequest,
    ExecTaskStreamingResponse, ExitResult,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use super::driver_service::task_status;
use crate::tasks::{ExecError, TaskManager};

/// Responses buffered before the command's output waits for Nomad.
const RESPONSE_BUFFER: usize = 16;

/// The response stream of `ExecTaskStreaming`.
pub type ExecResponses = ReceiverStream<Result<ExecTaskStreamingResponse, Status>>;

/// The status Nomad gets for a command that could not run. Never
/// UNAVAILABLE or CANCELED (Nomad reads those as the plugin dying): a daemon
/// that cannot be reached is FAILED_PRECONDITION.
fn exec_status(error: ExecError) -> Status {
    match error {
        ExecError::Task(e) => task_status(e),
        ExecError::Daemon { target, error } => {
            let message = format!("daemon at {target}: {error}");
            match error.code() {
                tonic::Code::Unavailable
                | tonic::Code::Cancelled
                | tonic::Code::Unknown
                | tonic::Code::DeadlineExceeded => Status::failed_precondition(message),
                code => Status::new(code, message),
            }
        }
    }
}

/// `ExecTask`: the command's output and exit, `result` always set.
pub async fn exec_task(
    tasks: &TaskManager,
    request: ExecTaskRequest,
) -> Result<ExecTaskResponse, Status> {
    let timeout = match &request.timeout {
        None => Duration::ZERO,
        Some(t) if t.seconds < 0 || t.nanos < 0 => {
            return Err(Status::invalid_argument(format!(
                "timeout: {}s {}ns is negative",
                t.seconds, t.nanos
            )))
        }
        Some(t) => elide_proto::duration_from_proto(t),
    };
    let result = tasks
        .exec_collect(&request.task_id, request.command, timeout)
        .await
        .map_err(exec_status)?;
    Ok(ExecTaskResponse {
        stdout: result.stdout,
        stderr: result.stderr,
        result: Some(ExitResult {
            exit_code: result.exit_code,
            signal: result.signal,
            oom_killed: false,
        }),
    })
}

/// `ExecTaskStreaming`: reads `setup`, starts the command and bridges both
/// directions until it has exited.
pub async fn exec_task_streaming(
    tasks: &TaskManager,
    mut requests: Streaming<ExecTaskStreamingRequest>,
) -> Result<ExecResponses, Status> {
    let first = requests
        .message()
        .await?
        .ok_or_else(|| Status::invalid_argument("first message should always be setup"))?;
    let Some(setup) = first.setup else {
        return Err(Status::invalid_argument(
            "first message should always be setup",
        ));
    };
    let tty = setup.tty;
    let stream = tasks
        .exec_stream(&setup.task_id, setup.command, tty, None)
        .await
        .map_err(exec_status)?;
    let input = stream.input;
    let mut output = stream.output;

    tokio::spawn(async move {
        while let Ok(Some(message)) = requests.message().await {
            for forwarded in daemon_inputs(message) {
                if input.send(forwarded).await.is_err() {
                    return;
                }
            }
        }
    });

    let (tx, rx) = mpsc::channel(RESPONSE_BUFFER);
    tokio::spawn(async move {
        use pb::exec_output::Output;
        let data = |data| ExecTaskStreamingIoOperation { data, close: false };
        let close = || ExecTaskStreamingIoOperation {
            data: Vec::new(),
            close: true,
        };
        loop {
            let next = tokio::select! {
                next = output.message() => next,
                // Nomad went away: dropping the daemon stream kills the command.
                _ = tx.closed() => return,
            };
            let responses = match next {
                Ok(Some(pb::ExecOutput { output: Some(o) })) => match o {
                    Output::Stdout(d) => vec![ExecTaskStreamingResponse {
                        stdout: Some(data(d)),
                        ..Default::default()
                    }],
                    Output::Stderr(d) => vec![ExecTaskStreamingResponse {
                        stderr: Some(data(d)),
                        ..Default::default()
                    }],
                    Output::Exited(exited) => {
                        let mut end = vec![ExecTaskStreamingResponse {
                            stdout: Some(close()),
                            ..Default::default()
                        }];
                        if !tty {
                            end.push(ExecTaskStreamingResponse {
                                stderr: Some(close()),
                                ..Default::default()
                            });
                        }
                        end.push(ExecTaskStreamingResponse {
                            exited: true,
                            result: Some(ExitResult {
                                exit_code: exited.exit_code,
                                signal: 0,
                                oom_killed: false,
                            }),
                            ..Default::default()
                        });
                        for response in end {
                            if tx.send(Ok(response)).await.is_err() {
                                return;
                            }
                        }
                        return;
                    }
                },
                Ok(Some(_)) => continue,
                Ok(None) => {
                    let _ = tx
                        .send(Err(Status::internal(
                            "the daemon ended the command's stream without its exit",
                        )))
                        .await;
                    return;
                }
                Err(status) => {
                    let _ = tx
                        .send(Err(Status::failed_precondition(format!(
                            "the daemon's command stream failed: {}",
                            status.message()
                        ))))
                        .await;
                    return;
                }
            };
            for response in responses {
                if tx.send(Ok(response)).await.is_err() {
                    return;
                }
            }
        }
    });
    Ok(ReceiverStream::new(rx))
}

/// What one of Nomad's messages asks of the command: stdin data, then its
/// close; or a resize; nothing for a heartbeat (or a repeated setup).
fn daemon_inputs(message: ExecTaskStreamingRequest) -> Vec<pb::ExecInput> {
    use pb::exec_input::Input;
    let mut inputs = Vec::new();
    if let Some(stdin) = message.stdin {
        if !stdin.data.is_empty() {
            inputs.push(Input::Stdin(stdin.data));
        }
        if stdin.close {
            inputs.push(Input::StdinClose(pb::ExecStdinClose {}));
        }
    }
    if let Some(size) = message.tty_size {
        // Nomad's executor casts to uint16 the same way.
        let cells = |n: i32| n.clamp(0, i32::from(u16::MAX)) as u32;
        inputs.push(Input::Resize(pb::TerminalSize {
            rows: cells(size.height),
            cols: cells(size.width),
        }));
    }
    inputs
        .into_iter()
        .map(|input| pb::ExecInput { input: Some(input) })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use elide_proto::hashicorp::nomad::plugins::drivers::proto::exec_task_streaming_request::TerminalSize;

    #[test]
    fn nomad_messages_become_daemon_inputs_in_order() {
        use pb::exec_input::Input;
        let heartbeat = ExecTaskStreamingRequest::default();
        assert_eq!(daemon_inputs(heartbeat), vec![]);
        let last_chunk = ExecTaskStreamingRequest {
            stdin: Some(ExecTaskStreamingIoOperation {
                data: b"bye\n".to_vec(),
                close: true,
            }),
            ..Default::default()
        };
        let inputs: Vec<_> = daemon_inputs(last_chunk)
            .into_iter()
            .filter_map(|i| i.input)
            .collect();
        assert_eq!(
            inputs,
            vec![
                Input::Stdin(b"bye\n".to_vec()),
                Input::StdinClose(pb::ExecStdinClose {})
            ]
        );
        let resize = ExecTaskStreamingRequest {
            tty_size: Some(TerminalSize {
                height: 40,
                width: 100_000,
            }),
            ..Default::default()
        };
        let inputs: Vec<_> = daemon_inputs(resize)
            .into_iter()
            .filter_map(|i| i.input)
            .collect();
        assert_eq!(
            inputs,
            vec![Input::Resize(pb::TerminalSize {
                rows: 40,
                cols: 65_535
            })]
        );
    }
}
