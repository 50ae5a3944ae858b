//! `ExecInExecution`: a command beside a running execution, fed from the
//! client's stream and answered on the response stream. Everything that
//! can be refused is refused before the response starts, so the client
//! gets a plain status; once it runs, the command ends with an `exited`
//! message, and it is killed if the client goes away first.

use std::sync::Arc;
use std::time::Duration;

use elide_proto::elide::daemon::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use crate::output::Stream;
use crate::registry::SessionRegistry;
use crate::runtime::{
    CommandError, CommandInput, CommandOutput, CommandSpec, ExitInfo, WindowSize,
};
use crate::time::std_duration;

/// Input messages buffered between the client's stream and the command.
const INPUT_BUFFER: usize = 4;
/// Output messages buffered before the command waits for the client.
const OUTPUT_BUFFER: usize = 16;

/// The response stream of `ExecInExecution`.
pub type ExecOutputStream = ReceiverStream<Result<pb::ExecOutput, Status>>;

/// Reads the `start` message, starts the command and wires both streams.
pub async fn open(
    registry: &Arc<SessionRegistry>,
    mut input: Streaming<pb::ExecInput>,
) -> Result<ExecOutputStream, Status> {
    use pb::exec_input::Input;
    let first = input.message().await?.ok_or_else(|| {
        Status::invalid_argument("start: the stream ended before its first message")
    })?;
    let Some(Input::Start(start)) = first.input else {
        return Err(Status::invalid_argument(
            "start: the first message must carry start",
        ));
    };
    let spec = command_spec(&start)?;
    let commands = registry.commands(&start.session_id, &start.execution_id)?;
    let (input_tx, input_rx) = mpsc::channel(INPUT_BUFFER);
    let (output_tx, mut output_rx) = mpsc::channel(OUTPUT_BUFFER);
    commands
        .start(spec, input_rx, output_tx)
        .map_err(|e| command_status(&e))?;
    tracing::info!(session_id = %start.session_id, execution_id = %start.execution_id, tty = start.tty, "exec into execution");

    tokio::spawn(async move {
        while let Ok(Some(message)) = input.message().await {
            let forwarded = match message.input {
                Some(Input::Stdin(data)) => CommandInput::Stdin(data),
                Some(Input::StdinClose(_)) => CommandInput::CloseStdin,
                Some(Input::Resize(size)) => match window_size(&size, "resize") {
                    Ok(size) => CommandInput::Resize(size),
                    Err(e) => {
                        tracing::debug!(error = %e.message(), "ignoring a bad resize");
                        continue;
                    }
                },
                // A second start, or an empty message: nothing to do.
                Some(Input::Start(_)) | None => continue,
            };
            if input_tx.send(forwarded).await.is_err() {
                return;
            }
        }
    });

    let (tx, rx) = mpsc::channel(OUTPUT_BUFFER);
    tokio::spawn(async move {
        use pb::exec_output::Output;
        loop {
            let output = tokio::select! {
                output = output_rx.recv() => output,
                // The client went away: dropping the receiver kills the command.
                _ = tx.closed() => return,
            };
            let Some(output) = output else { return };
            let message = match output {
                CommandOutput::Output(Stream::Stdout, data) => Output::Stdout(data),
                CommandOutput::Output(Stream::Stderr, data) => Output::Stderr(data),
                CommandOutput::Exited { exit, timed_out } => {
                    let (exit_code, signal) = match exit {
                        ExitInfo::Code(code) => (code, 0),
                        ExitInfo::Signal(sig) => (128 + sig as i32, sig as i32),
                    };
                    Output::Exited(pb::ExecExited {
                        exit_code,
                        signal,
                        timed_out,
                    })
                }
            };
            let message = pb::ExecOutput {
                output: Some(message),
            };
            if tx.send(Ok(message)).await.is_err() {
                return;
            }
        }
    });
    Ok(ReceiverStream::new(rx))
}

/// The command asked for, with every field checked.
fn command_spec(start: &pb::ExecStart) -> Result<CommandSpec, Status> {
    if start.command.is_empty() {
        return Err(Status::invalid_argument(
            "command: is empty (argv, command[0] is the program)",
        ));
    }
    let tty = match (start.tty, &start.tty_size) {
        (false, _) => None,
        (true, None) => Some(WindowSize::default()),
        (true, Some(size)) => Some(window_size(size, "tty_size")?),
    };
    let timeout = start
        .timeout
        .as_ref()
        .map(|t| std_duration(t, "timeout"))
        .transpose()
        .map_err(Status::invalid_argument)?
        .filter(|t| *t > Duration::ZERO);
    Ok(CommandSpec {
        argv: start.command.clone(),
        tty,
        timeout,
    })
}

fn window_size(size: &pb::TerminalSize, field: &str) -> Result<WindowSize, Status> {
    let cells = |n: u32, what: &str| {
        u16::try_from(n).map_err(|_| {
            Status::invalid_argument(format!("{field}.{what}: {n} is more than {}", u16::MAX))
        })
    };
    Ok(WindowSize {
        rows: cells(size.rows, "rows")?,
        cols: cells(size.cols, "cols")?,
    })
}

/// The status for a command that could not start.
fn command_status(error: &CommandError) -> Status {
    let message = error.to_string();
    match error {
        CommandError::ProgramEnded => Status::failed_precondition(message),
        CommandError::TooMany => Status::resource_exhausted(message),
        CommandError::BadCommand(_) => Status::invalid_argument(message),
        CommandError::NotStarted { source, .. }
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            Status::invalid_argument(message)
        }
        CommandError::NotStarted { .. } => Status::failed_precondition(message),
        CommandError::Setup(_) => Status::internal(message),
    }
}
