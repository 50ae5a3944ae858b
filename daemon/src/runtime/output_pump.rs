//! A program's output pipes, copied into its events.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

use super::ProgramEvent;
use crate::output::Stream;

/// Bytes read from a pipe at a time.
const READ_CHUNK: usize = 64 * 1024;
/// How long to wait for output pipes to close after the group was killed
/// (a process that left the group with `setsid` may hold them open).
const PIPE_DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// Copies a pipe into output events until EOF. Once the program has exited
/// (and its group was killed), a read that takes longer than
/// `PIPE_DRAIN_LIMIT` means a process that left the group holds the pipe:
/// stop there. Sending to a slow consumer is never cut short.
pub(super) async fn pump(
    mut pipe: impl AsyncRead + Unpin,
    stream: Stream,
    tx: mpsc::Sender<ProgramEvent>,
    mut exited: tokio::sync::watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; READ_CHUNK];
    let mut after_exit = false;
    loop {
        let read = if after_exit {
            match tokio::time::timeout(PIPE_DRAIN_LIMIT, pipe.read(&mut buf)).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::warn!(
                        ?stream,
                        "output pipe still open after the process group ended"
                    );
                    return;
                }
            }
        } else {
            tokio::select! {
                biased;
                r = pipe.read(&mut buf) => r,
                // From the exit on (or if the waiter is gone), reads are
                // bounded by the drain limit.
                _ = exited.changed() => {
                    after_exit = true;
                    continue;
                }
            }
        };
        match read {
            Ok(0) => return,
            Ok(n) => {
                if tx
                    .send(ProgramEvent::Output(stream, buf[..n].to_vec()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(?stream, error = %e, "reading program output failed");
                return;
            }
        }
    }
}
