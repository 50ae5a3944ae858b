//! Nomad's log side of a simulated client: what logmon would read out of
//! each task's FIFOs. It lives outside the hosts, so a plugin crash loses
//! nothing that was written (a FIFO's reader, logmon, outlives the plugin).

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use elide_driver::{LogSinks, LogWriter};
use futures::future::BoxFuture;
use tokio::io::AsyncWrite;

/// What one log stream received.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogStream {
    /// Every byte written, in order.
    pub bytes: Vec<u8>,
    /// Times a writer opened it.
    pub opens: u32,
    /// Times a writer closed it (the EOF logmon sees).
    pub closes: u32,
}

/// Every log stream of the simulation, by path. Paths must be registered
/// ([`LogBook::create`], what Nomad's prestart does with `mkfifo`) before
/// a writer can open them.
#[derive(Debug, Clone, Default)]
pub struct LogBook {
    streams: Arc<Mutex<BTreeMap<PathBuf, LogStream>>>,
}

impl LogBook {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<PathBuf, LogStream>> {
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates the FIFO at `path` (keeps it if it exists).
    pub fn create(&self, path: &str) {
        self.lock().entry(PathBuf::from(path)).or_default();
    }

    /// What the stream at `path` received.
    pub fn stream(&self, path: &str) -> LogStream {
        self.lock()
            .get(Path::new(path))
            .cloned()
            .unwrap_or_default()
    }
}

impl LogSinks for LogBook {
    fn open(&self, path: &Path) -> BoxFuture<'static, io::Result<LogWriter>> {
        let book = self.clone();
        let path = path.to_owned();
        Box::pin(async move {
            match book.lock().get_mut(&path) {
                Some(stream) => stream.opens += 1,
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("no FIFO at {}", path.display()),
                    ))
                }
            }
            Ok(Box::new(BookWriter { book, path }) as LogWriter)
        })
    }
}

/// One open write end.
struct BookWriter {
    book: LogBook,
    path: PathBuf,
}

impl AsyncWrite for BookWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(stream) = self.book.lock().get_mut(&self.path) {
            stream.bytes.extend_from_slice(buf);
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl Drop for BookWriter {
    fn drop(&mut self) {
        if let Some(stream) = self.book.lock().get_mut(&self.path) {
            stream.closes += 1;
        }
    }
}
