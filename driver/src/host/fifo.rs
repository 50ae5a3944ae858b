//! Nomad's log FIFOs, as the output forwarder sees them.

use std::io;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
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
///
/// The path is in the allocation directory, which the task can write to, so
/// it is opened with `O_NOFOLLOW` and checked with `fstat` on the opened
/// descriptor before a byte is written: a symbolic link in its place (say,
/// to a file outside the allocation) or anything that is not a FIFO (a
/// regular file) is refused at once with [`refused`] as its error kind, and
/// never written through. Opening a regular file `O_RDWR` without
/// `O_TRUNC` or `O_CREAT` changes nothing in it, and a missing path is not
/// created.
#[derive(Debug, Clone, Copy, Default)]
pub struct FifoSinks;

impl LogSinks for FifoSinks {
    fn open(&self, path: &Path) -> BoxFuture<'static, io::Result<LogWriter>> {
        let path = path.to_owned();
        Box::pin(async move { Ok(Box::new(open_fifo(path).await?) as LogWriter) })
    }
}

/// The error kind of a log path refused because it is not a FIFO (a
/// symbolic link, a regular file, a directory, a device); such an error is
/// final, never retried.
pub fn refused(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::InvalidInput
}

async fn open_fifo(path: PathBuf) -> io::Result<pipe::Sender> {
    let deadline = tokio::time::Instant::now() + FIFO_OPEN_LIMIT;
    let mut backoff = Backoff::default();
    loop {
        match open_fifo_once(&path) {
            Ok(sender) => return Ok(sender),
            Err(e) if refused(&e) || tokio::time::Instant::now() >= deadline => return Err(e),
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "log FIFO not openable yet; retrying");
                backoff.wait().await;
            }
        }
    }
}

fn open_fifo_once(path: &Path) -> io::Result<pipe::Sender> {
    let refuse = |what: &str| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "refusing to write task output to {}: it is {what}, not a FIFO",
                path.display()
            ),
        )
    };
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(path)
    {
        Ok(file) => file,
        // O_NOFOLLOW's answer for a symbolic link as the last component.
        Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => {
            return Err(refuse("a symbolic link"))
        }
        Err(e) => return Err(e),
    };
    // fstat of what was opened, not a second look at the path.
    let file_type = file.metadata()?.file_type();
    if !file_type.is_fifo() {
        let what = if file_type.is_file() {
            "a regular file"
        } else if file_type.is_dir() {
            "a directory"
        } else {
            "a special file"
        };
        return Err(refuse(what));
    }
    pipe::Sender::from_file(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[tokio::test]
    async fn a_symlink_or_a_regular_file_is_refused_and_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::write(&outside, "precious\n").unwrap();
        let link = dir.path().join("link.fifo");
        symlink(&outside, &link).unwrap();
        let err = FifoSinks.open(&link).await.err().expect("refused");
        assert!(refused(&err), "{err}");
        assert!(err.to_string().contains("a symbolic link"), "{err}");
        let err = FifoSinks.open(&outside).await.err().expect("refused");
        assert!(refused(&err), "{err}");
        assert!(err.to_string().contains("a regular file"), "{err}");
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "precious\n");
    }
}
