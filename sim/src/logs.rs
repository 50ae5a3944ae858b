//! Nomad's log side of a simulated client: what logmon would read out of
//! each task's FIFOs. It lives outside the hosts, so a plugin crash loses
//! nothing that was written (a FIFO's reader, logmon, outlives the plugin).
//!
//! Each FIFO is modelled as the kernel's pipe behind it, opened as the
//! driver really opens it (`O_RDWR | O_NONBLOCK`, `crate::host::FifoSinks`
//! in the driver): a 64 KiB buffer ([`PIPE_CAPACITY`]) between the writer
//! and logmon's reader. While the reader reads, it takes every byte at
//! once. While it is away (a `stall_logs` or `drop_log_reader` fault), a
//! write fills the buffer and takes only what fits (a short write); once
//! the buffer is full, or a write of at most [`PIPE_BUF`] bytes does not
//! fit whole (those are atomic), the writer waits until the reader is back.
//! A writer holding the pipe `O_RDWR` never gets `EPIPE` or `ENXIO`, so a
//! reader that went away looks to it like one that stalled; the difference
//! is the kernel's: when the last writer closes while no reader has the
//! FIFO open, the pipe is freed with whatever its buffer held
//! ([`LogStream::freed`]), and a reader that comes back finds an empty one.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use elide_driver::{LogSinks, LogWriter};
use futures::future::BoxFuture;
use tokio::io::AsyncWrite;

/// A Linux pipe's buffer (16 pages).
pub const PIPE_CAPACITY: usize = 64 * 1024;

/// Writes up to this size are atomic: all or nothing (POSIX `PIPE_BUF`).
pub const PIPE_BUF: usize = 4096;

/// How logmon's reader of a FIFO is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ReaderAway {
    /// It has the FIFO open but reads nothing (a busy or stopped logmon).
    Stalled,
    /// It closed the FIFO (logmon exited); it opens it again later.
    Gone,
}

/// What one log stream received.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogStream {
    /// Every byte logmon read, in order.
    pub bytes: Vec<u8>,
    /// Bytes in the pipe's buffer, not read yet.
    pub buffered: Vec<u8>,
    /// Times a writer opened it.
    pub opens: u32,
    /// Times a writer closed it (the EOF logmon sees).
    pub closes: u32,
    /// Bytes the kernel threw away with a freed pipe: `(stream offset,
    /// length)` of each loss.
    pub freed: Vec<(u64, u64)>,
    /// Write attempts by simulated second: the evidence against a writer
    /// that spins on a full pipe.
    pub attempts: BTreeMap<u64, u32>,
    /// Writers waiting for room.
    waiting: Vec<WakerSlot>,
}

/// A parked writer's waker (compared by nothing: a plain holder).
#[derive(Debug, Clone)]
struct WakerSlot(Waker);

impl PartialEq for WakerSlot {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for WakerSlot {}

impl LogStream {
    /// Bytes that went into the pipe: read and still buffered.
    fn written(&self) -> u64 {
        (self.bytes.len() + self.buffered.len()) as u64
            + self.freed.iter().map(|(_, n)| n).sum::<u64>()
    }

    /// The reader takes what the buffer holds, and waiting writers wake.
    fn drain(&mut self) {
        let buffered = std::mem::take(&mut self.buffered);
        self.bytes.extend_from_slice(&buffered);
        for slot in self.waiting.drain(..) {
            slot.0.wake();
        }
    }
}

/// A reader fault in force: which group's streams it hits (all of the
/// client's when `None`) and how.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AwayFault {
    group: Option<String>,
    away: ReaderAway,
}

#[derive(Debug, Default)]
struct Book {
    streams: BTreeMap<PathBuf, LogStream>,
    away: Vec<AwayFault>,
}

impl Book {
    /// How the reader of `path` is doing: the worst fault hitting it.
    fn reader(&self, path: &Path) -> Option<ReaderAway> {
        self.away
            .iter()
            .filter(|f| f.group.as_deref().is_none_or(|g| group_of(path) == Some(g)))
            .map(|f| f.away)
            .max()
    }
}

/// The task (group) name in a FIFO path `.../.<task>.stdout.fifo`.
fn group_of(path: &Path) -> Option<&str> {
    let name = path.file_name()?.to_str()?;
    let name = name.strip_prefix('.')?;
    name.strip_suffix(".stdout.fifo")
        .or_else(|| name.strip_suffix(".stderr.fifo"))
}

/// Every log stream of the simulation, by path. Paths must be registered
/// ([`LogBook::create`], what Nomad's prestart does with `mkfifo`) before
/// a writer can open them.
#[derive(Debug, Clone, Default)]
pub struct LogBook {
    book: Arc<Mutex<Book>>,
}

impl LogBook {
    fn lock(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates the FIFO at `path` (keeps it if it exists).
    pub fn create(&self, path: &str) {
        self.lock().streams.entry(PathBuf::from(path)).or_default();
    }

    /// What the stream at `path` received.
    pub fn stream(&self, path: &str) -> LogStream {
        self.lock()
            .streams
            .get(Path::new(path))
            .cloned()
            .unwrap_or_default()
    }

    /// The readers of `group`'s streams (every stream when `None`) stop
    /// reading, or go away, until [`LogBook::reader_back`].
    pub fn reader_away(&self, group: Option<&str>, away: ReaderAway) {
        self.lock().away.push(AwayFault {
            group: group.map(str::to_owned),
            away,
        });
    }

    /// Ends one [`LogBook::reader_away`]: the readers it hit read again
    /// (a gone one reopens the FIFO), unless another fault still holds them.
    pub fn reader_back(&self, group: Option<&str>, away: ReaderAway) {
        let mut book = self.lock();
        let fault = AwayFault {
            group: group.map(str::to_owned),
            away,
        };
        if let Some(at) = book.away.iter().position(|f| *f == fault) {
            book.away.remove(at);
        }
        let back: Vec<PathBuf> = book
            .streams
            .keys()
            .filter(|path| book.reader(path).is_none())
            .cloned()
            .collect();
        for path in back {
            if let Some(stream) = book.streams.get_mut(&path) {
                stream.drain();
            }
        }
    }
}

impl LogSinks for LogBook {
    fn open(&self, path: &Path) -> BoxFuture<'static, io::Result<LogWriter>> {
        let book = self.clone();
        let path = path.to_owned();
        Box::pin(async move {
            match book.lock().streams.get_mut(&path) {
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
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let second = turmoil::sim_elapsed().unwrap_or_default().as_secs();
        let mut book = self.book.lock();
        let reader = book.reader(&self.path);
        let Some(stream) = book.streams.get_mut(&self.path) else {
            return Poll::Ready(Ok(buf.len()));
        };
        *stream.attempts.entry(second).or_default() += 1;
        if reader.is_none() {
            stream.bytes.extend_from_slice(buf);
            return Poll::Ready(Ok(buf.len()));
        }
        let room = PIPE_CAPACITY.saturating_sub(stream.buffered.len());
        if room == 0 || (buf.len() <= PIPE_BUF && room < buf.len()) {
            stream.waiting.push(WakerSlot(cx.waker().clone()));
            return Poll::Pending;
        }
        let n = room.min(buf.len());
        stream.buffered.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
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
        let mut book = self.book.lock();
        let gone = book.reader(&self.path) == Some(ReaderAway::Gone);
        if let Some(stream) = book.streams.get_mut(&self.path) {
            stream.closes += 1;
            // The last file descriptor of the pipe closed: the kernel frees
            // it, and its buffer with it.
            if gone && stream.opens == stream.closes && !stream.buffered.is_empty() {
                let at = stream.written() - stream.buffered.len() as u64;
                let lost = std::mem::take(&mut stream.buffered);
                stream.freed.push((at, lost.len() as u64));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use tokio::io::AsyncWriteExt;

    const PATH: &str = "/alloc/logs/.web.stdout.fifo";

    async fn writer(book: &LogBook) -> LogWriter {
        book.open(Path::new(PATH)).await.expect("the FIFO exists")
    }

    #[test]
    fn a_stalled_reader_fills_the_pipe_then_the_writer_waits_until_it_reads() {
        let book = LogBook::default();
        book.create(PATH);
        let mut w = writer(&book).now_or_never().unwrap();
        book.reader_away(Some("web"), ReaderAway::Stalled);
        let big = vec![7u8; PIPE_CAPACITY + 100];
        // A short write: what fits.
        let took = w.write(&big).now_or_never().unwrap().unwrap();
        assert_eq!(took, PIPE_CAPACITY);
        // Full: the next write waits.
        assert!(w.write(b"x").now_or_never().is_none());
        assert!(book.stream(PATH).bytes.is_empty());
        // Another group's reader coming back changes nothing here.
        book.reader_back(Some("db"), ReaderAway::Stalled);
        assert!(w.write(b"x").now_or_never().is_none());
        book.reader_back(Some("web"), ReaderAway::Stalled);
        assert_eq!(w.write(b"x").now_or_never().unwrap().unwrap(), 1);
        let stream = book.stream(PATH);
        assert_eq!(stream.bytes.len(), PIPE_CAPACITY + 1);
        assert!(stream.buffered.is_empty() && stream.freed.is_empty());
    }

    #[test]
    fn small_writes_are_all_or_nothing_and_a_gone_reader_loses_the_pipe_on_the_last_close() {
        let book = LogBook::default();
        book.create(PATH);
        let mut w = writer(&book).now_or_never().unwrap();
        w.write(b"seen\n").now_or_never().unwrap().unwrap();
        book.reader_away(None, ReaderAway::Gone);
        let fill = vec![1u8; PIPE_CAPACITY - 10];
        assert_eq!(
            w.write(&fill).now_or_never().unwrap().unwrap(),
            PIPE_CAPACITY - 10
        );
        // 20 bytes (under PIPE_BUF) do not fit in 10: nothing is taken.
        assert!(w.write(&[2u8; 20]).now_or_never().is_none());
        drop(w);
        let stream = book.stream(PATH);
        assert_eq!(stream.bytes, b"seen\n");
        assert_eq!(stream.freed, vec![(5, (PIPE_CAPACITY - 10) as u64)]);
        assert_eq!((stream.opens, stream.closes), (1, 1));
    }
}
