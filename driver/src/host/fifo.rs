//! Nomad's log FIFOs, as the output forwarder sees them.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::io::AsyncWrite;
use tokio::net::unix::pipe;

use crate::backoff::Backoff;

/// How long a FIFO that cannot be opened (not created yet, e.g. right after
/// recovery, before Nomad's prestart re-creates logmon) is retried before
/// that stream's output is discarded.
pub const FIFO_OPEN_LIMIT: Duration = Duration::from_secs(120);

/// The write end of one log stream. Dropping it closes the stream (the
/// EOF that tells Nomad's logmon the task is done).
pub type LogWriter = Box<dyn AsyncWrite + Send + Unpin>;

/// Opens the write ends of Nomad's log streams.
pub trait LogSinks: Send + Sync + 'static {
    /// Opens `path` for writing. Must never block on a missing reader and
    /// may wait (bounded) for the path to appear.
    fn open(&self, path: &Path) -> BoxFuture<'static, io::Result<LogWriter>>;
}

/// Real FIFOs, opened `O_RDWR | O_NONBLOCK` (Linux): that never blocks,
/// never fails because logmon is not reading yet, and never gets `EPIPE`
/// (protocol notes §6.6). A FIFO that does not exist yet is retried for up
/// to [`FIFO_OPEN_LIMIT`].
#[derive(Debug, Clone, Copy, Default)]
pub struct FifoSinks;

impl LogSinks for FifoSinks {
    fn open(&self, path: &Path) -> BoxFuture<'static, io::Result<LogWriter>> {
        let path = path.to_owned();
        Box::pin(async move { Ok(Box::new(open_fifo(path).await?) as LogWriter) })
    }
}

async fn open_fifo(path: PathBuf) -> io::Result<pipe::Sender> {
    let deadline = tokio::time::Instant::now() + FIFO_OPEN_LIMIT;
    let mut backoff = Backoff::default();
    loop {
        match pipe::OpenOptions::new().read_write(true).open_sender(&path) {
            Ok(sender) => return Ok(sender),
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "log FIFO not openable yet; retrying");
                backoff.wait().await;
            }
        }
    }
}
