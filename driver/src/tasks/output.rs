//! Forwarding a task's output from the daemon to Nomad's log FIFOs.
//!
//! One [`OutputForwarder`] per task reads `StreamOutput(follow = true)`
//! from the offsets it has already written and writes each stream's bytes,
//! in order, to `TaskConfig.stdout_path` / `stderr_path`. The offsets are
//! persisted ([`OffsetsFile`]) after every write the FIFO took (one small
//! file write and rename per write of up to 64 KiB, cheap next to the
//! output itself), so a restarted plugin resumes exactly after the last
//! byte written. A FIFO whose reader (Nomad's logmon) stalls or went away
//! takes what fits in its pipe and then part of a chunk, or nothing, until
//! the reader reads again; every part is recorded as it is taken. The only
//! window for a duplicate is a crash between a FIFO write and the rename
//! that records it: at most what that one write handed over.
//!
//! A write into a full pipe waits (it is woken when the reader drains the
//! pipe; it never spins). After the task ended, the result waits for the
//! rest of the output at most `OUTPUT_FLUSH_LIMIT`; what the reader has
//! not taken by then is reported lost, byte-exact (see `tasks::start`).
//!
//! The FIFOs are reached through [`LogSinks`] (real ones are opened so that
//! the open never blocks: see [`crate::host::FifoSinks`]) and the offsets
//! through [`StateFiles`]. Both are opened as soon as the forwarder starts
//! (after `StartTask` and after every recovery), not at the first byte: a
//! stream the program never writes must still see its writer come and go,
//! or logmon's reader would wait for a writer until the allocation stops.
//! The write ends stay open for the task's life and are closed, after the
//! last byte, when the daemon reports the end of output; that EOF is what
//! tells logmon the task is done.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use elide_proto::elide::daemon::v1 as pb;
use serde::{Deserialize, Serialize};
use std::sync::Mutex;

use tokio::io::AsyncWriteExt;

use crate::backoff::Backoff;
use crate::daemon_link::heartbeat::{self, Next, Watchdog};
use crate::daemon_link::DaemonLink;
use crate::host::{LogSinks, LogWriter, StateFiles};

/// Directory, inside the task directory, holding the offsets files
/// (Nomad's per-task `private/` directory: not the program's concern).
pub const OFFSETS_DIR: &str = "private";

/// Bytes of each stream written to the FIFOs so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offsets {
    /// Next stdout byte to write.
    pub stdout: u64,
    /// Next stderr byte to write.
    pub stderr: u64,
}

impl Offsets {
    /// The offset of `stream` (zero for an unspecified one).
    pub fn of(&self, stream: pb::OutputStream) -> u64 {
        match stream {
            pb::OutputStream::Stdout => self.stdout,
            pb::OutputStream::Stderr => self.stderr,
            pb::OutputStream::Unspecified => 0,
        }
    }

    fn get_mut(&mut self, stream: pb::OutputStream) -> Option<&mut u64> {
        match stream {
            pb::OutputStream::Stdout => Some(&mut self.stdout),
            pb::OutputStream::Stderr => Some(&mut self.stderr),
            pb::OutputStream::Unspecified => None,
        }
    }
}

/// The small file recording [`Offsets`]: `<task_dir>/private/elide-output-<execution_id>.json`,
/// replaced atomically (write to a temporary file, then rename). Clones
/// share one state: once [`OffsetsFile::remove`]d (the task is
/// destroyed), no clone writes it again, so a forwarder still winding down
/// cannot leave the file behind.
#[derive(Clone)]
pub struct OffsetsFile {
    path: PathBuf,
    files: Arc<dyn StateFiles>,
    /// Set by `remove`; held while writing, so a store and a remove never
    /// interleave.
    removed: Arc<Mutex<bool>>,
}

impl std::fmt::Debug for OffsetsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OffsetsFile")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl OffsetsFile {
    /// Where the offsets of an execution in `task_dir` are recorded.
    pub fn path_for(task_dir: &Path, execution_id: &str) -> PathBuf {
        task_dir
            .join(OFFSETS_DIR)
            .join(format!("elide-output-{execution_id}.json"))
    }

    /// At `path` (as recorded in `driver_state`), in `files`.
    pub fn at(path: PathBuf, files: Arc<dyn StateFiles>) -> Self {
        OffsetsFile {
            path,
            files,
            removed: Arc::default(),
        }
    }

    /// Where it lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The recorded offsets; zero when there is no (readable) file.
    pub fn load(&self) -> Offsets {
        self.files
            .read(&self.path)
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    /// Records `offsets` atomically; nothing once removed.
    pub fn store(&self, offsets: Offsets) -> io::Result<()> {
        let bytes = serde_json::to_vec(&offsets).unwrap_or_default();
        let removed = self.removed.lock().unwrap_or_else(|p| p.into_inner());
        if *removed {
            return Ok(());
        }
        self.files.replace(&self.path, &bytes)
    }

    /// Removes the file (the task is destroyed), for good.
    pub fn remove(&self) {
        let mut removed = self.removed.lock().unwrap_or_else(|p| p.into_inner());
        *removed = true;
        self.files.remove(&self.path);
    }
}

/// One log stream's write end, opened once.
struct FifoSink {
    /// `None` when output of this stream is discarded (`/dev/null`, empty
    /// path, or the FIFO could not be opened).
    path: Option<PathBuf>,
    logs: Arc<dyn LogSinks>,
    sender: Option<LogWriter>,
    on_unwritable: UnwritableReporter,
}

impl FifoSink {
    fn new(path: &str, logs: Arc<dyn LogSinks>, on_unwritable: UnwritableReporter) -> Self {
        let path = (!path.is_empty() && path != "/dev/null").then(|| PathBuf::from(path));
        FifoSink {
            path,
            logs,
            sender: None,
            on_unwritable,
        }
    }

    /// Opens the write end unless it is open, discarded, or `/dev/null`.
    async fn open(&mut self) {
        let Some(path) = self.path.clone() else {
            return;
        };
        if self.sender.is_some() {
            return;
        }
        match self.logs.open(&path).await {
            Ok(sender) => self.sender = Some(sender),
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "cannot open the log FIFO; discarding this stream's output");
                (self.on_unwritable)(&path, &e);
                self.path = None;
            }
        }
    }

    /// Writes `data`, calling `accepted` with each part the FIFO took (a
    /// full pipe takes part of a write, or nothing until its reader reads
    /// again). A stream that is discarded, or fails, counts as taken.
    async fn write(&mut self, data: &[u8], mut accepted: impl FnMut(usize)) {
        let Some(path) = self.path.clone() else {
            accepted(data.len());
            return;
        };
        self.open().await;
        let Some(sender) = self.sender.as_mut() else {
            accepted(data.len());
            return;
        };
        let mut done = 0;
        while done < data.len() {
            let result = if crate::broken!(DropsOutputWhileStalled) {
                // The test-only breakage: a write that would wait for the
                // reader is skipped without a word.
                match futures::FutureExt::now_or_never(sender.write(&data[done..])) {
                    Some(result) => result,
                    None => Ok(data.len() - done),
                }
            } else {
                sender.write(&data[done..]).await
            };
            match result {
                Ok(0) => {
                    tracing::warn!(path = %path.display(), "the log FIFO takes no more bytes; discarding this stream's output");
                    break;
                }
                Ok(n) => {
                    done += n;
                    accepted(n);
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "writing the log FIFO failed; discarding this stream's output");
                    break;
                }
            }
        }
        if done < data.len() {
            accepted(data.len() - done);
            self.sender = None;
            self.path = None;
        }
    }

    fn close(&mut self) {
        self.sender = None;
    }
}

/// Reports output the daemon no longer had (it is skipped).
pub type DroppedReporter = Box<dyn Fn(pb::OutputStream, u64, u64) + Send + Sync>;

/// Reports a log FIFO that could not be opened (refused as no FIFO, or
/// still missing at [`crate::host::FIFO_OPEN_LIMIT`]); that stream's output
/// is discarded.
pub type UnwritableReporter = Arc<dyn Fn(&Path, &io::Error) + Send + Sync>;

/// Everything one task's forwarder needs.
pub struct OutputForwarder {
    /// The daemon.
    pub link: DaemonLink,
    /// The session of the execution.
    pub session_id: String,
    /// The execution.
    pub execution_id: String,
    /// Nomad's stdout path.
    pub stdout_path: String,
    /// Nomad's stderr path.
    pub stderr_path: String,
    /// Where written offsets are recorded.
    pub offsets_file: OffsetsFile,
    /// Opens the FIFOs.
    pub logs: Arc<dyn LogSinks>,
    /// Called for every `dropped` marker.
    pub on_dropped: DroppedReporter,
    /// Called for a log FIFO that cannot be opened.
    pub on_unwritable: UnwritableReporter,
    /// Raised by `Driver.Shutdown`: stop between two chunks.
    pub detach: tokio::sync::watch::Receiver<bool>,
    /// Bytes of each stream the FIFOs have taken so far, byte-exact (a
    /// partial write counts what the pipe took): what was really handed to
    /// Nomad's log reader if forwarding is cut short.
    pub delivered: Arc<Mutex<Offsets>>,
}

/// Sets the delivered offset of `stream`.
fn set_delivered(delivered: &Mutex<Offsets>, stream: pb::OutputStream, at: u64) {
    if let Some(offset) = delivered
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get_mut(stream)
    {
        *offset = at;
    }
}

/// How forwarding ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardEnd {
    /// The daemon sent `end`: every byte is written.
    Complete(Offsets),
    /// The execution is gone from the daemon.
    Gone(Offsets),
    /// The plugin detached (`Driver.Shutdown`); the rest is for the next
    /// plugin process.
    Detached(Offsets),
}

impl OutputForwarder {
    /// Forwards until the daemon reports the end of output (or forgets the
    /// execution), reconnecting with back-off when the stream breaks. The
    /// FIFOs are closed when this returns.
    pub async fn run(self) -> ForwardEnd {
        let mut sinks = [
            FifoSink::new(
                &self.stdout_path,
                self.logs.clone(),
                self.on_unwritable.clone(),
            ),
            FifoSink::new(
                &self.stderr_path,
                self.logs.clone(),
                self.on_unwritable.clone(),
            ),
        ];
        // Held from now until the end of output, whatever the program writes.
        let [stdout, stderr] = &mut sinks;
        let mut offsets = self.offsets_file.load();
        *self.delivered.lock().unwrap_or_else(|p| p.into_inner()) = offsets;
        let mut detach = self.detach.clone();
        let detached = |mut detach: tokio::sync::watch::Receiver<bool>| async move {
            let _ = detach.wait_for(|d| *d).await;
        };
        tokio::select! {
            biased;
            _ = detached(detach.clone()) => return ForwardEnd::Detached(offsets),
            _ = async { tokio::join!(stdout.open(), stderr.open()) } => {}
        }
        let mut backoff = Backoff::default();
        let end = loop {
            match self
                .forward_once(&mut sinks, &mut offsets, &mut backoff)
                .await
            {
                Some(end) => break end,
                None => tokio::select! {
                    biased;
                    _ = detach.wait_for(|d| *d) => break ForwardEnd::Detached(offsets),
                    _ = backoff.wait() => {}
                },
            }
        };
        self.persist(offsets);
        for sink in &mut sinks {
            sink.close();
        }
        end
    }

    /// One `StreamOutput` call; `None` when it broke and should be resumed.
    async fn forward_once(
        &self,
        sinks: &mut [FifoSink; 2],
        offsets: &mut Offsets,
        backoff: &mut Backoff,
    ) -> Option<ForwardEnd> {
        use pb::output_event::Event;
        let request = pb::StreamOutputRequest {
            session_id: self.session_id.clone(),
            execution_id: self.execution_id.clone(),
            stdout_offset: offsets.stdout,
            stderr_offset: offsets.stderr,
            follow: true,
            heartbeat_interval: heartbeat::requested_interval(),
        };
        let watchdog_on = Watchdog::on(&self.link);
        let mut stream = match self
            .link
            .open_stream(request, |mut c, r| async move { c.stream_output(r).await })
            .await
        {
            Ok(stream) => stream,
            Err(e) if e.is_not_found() => return Some(ForwardEnd::Gone(*offsets)),
            Err(e) => {
                tracing::debug!(execution_id = %self.execution_id, error = %e, "StreamOutput failed; retrying");
                return None;
            }
        };
        backoff.reset();
        let mut watchdog = watchdog_on;
        let mut detach = self.detach.clone();
        loop {
            // Only the wait for the next event is cut short by a detach,
            // never a write.
            let next = tokio::select! {
                biased;
                _ = detach.wait_for(|d| *d) => return Some(ForwardEnd::Detached(*offsets)),
                next = watchdog.next(&mut stream) => next,
            };
            let next = match next {
                Next::Item(next) => next,
                Next::Retired => {
                    tracing::info!(execution_id = %self.execution_id, "the connection under the output stream was retired; reconnecting");
                    self.persist(*offsets);
                    return None;
                }
                Next::Silent => {
                    tracing::info!(execution_id = %self.execution_id, silent_for = ?heartbeat::HEARTBEAT_TIMEOUT, "output stream went silent; reconnecting");
                    self.link.retire_connection();
                    self.persist(*offsets);
                    return None;
                }
            };
            let event = match next {
                Some(Ok(pb::OutputEvent { event: Some(event) })) => event,
                Some(Ok(_)) => continue,
                Some(Err(status)) if status.code() == tonic::Code::NotFound => {
                    return Some(ForwardEnd::Gone(*offsets))
                }
                Some(Err(status)) => {
                    tracing::debug!(execution_id = %self.execution_id, error = %status.message(), "output stream broke; resuming");
                    self.persist(*offsets);
                    return None;
                }
                None => {
                    self.persist(*offsets);
                    return None;
                }
            };
            match event {
                Event::Chunk(chunk) => {
                    let stream_kind = chunk.stream();
                    let index = stream_index(stream_kind);
                    let Some(written) = offsets.get_mut(stream_kind) else {
                        continue;
                    };
                    let (Some(index), chunk_end) = (index, chunk.offset + chunk.data.len() as u64)
                    else {
                        continue;
                    };
                    if chunk_end <= *written {
                        continue; // Already written before a reconnect.
                    }
                    if chunk.offset > *written {
                        // The daemon skipped bytes without a marker: report it.
                        (self.on_dropped)(stream_kind, *written, chunk.offset);
                    }
                    let skip = written.saturating_sub(chunk.offset) as usize;
                    let mut at = chunk.offset + skip as u64;
                    *written = at;
                    set_delivered(&self.delivered, stream_kind, at);
                    // Recorded right after each write the FIFO took, whole
                    // or in part (a full pipe takes part of a chunk, then
                    // nothing until its reader reads): a crash can then
                    // repeat at most what one write handed over.
                    sinks[index]
                        .write(&chunk.data[skip..], |n| {
                            at += n as u64;
                            set_delivered(&self.delivered, stream_kind, at);
                            if let Some(written) = offsets.get_mut(stream_kind) {
                                *written = at;
                            }
                            self.persist(*offsets);
                        })
                        .await;
                }
                Event::Dropped(dropped) => {
                    let stream_kind = dropped.stream();
                    let Some(written) = offsets.get_mut(stream_kind) else {
                        continue;
                    };
                    if dropped.to_offset > *written {
                        let to = dropped.to_offset + claimed_beyond_the_drop();
                        (self.on_dropped)(stream_kind, (*written).max(dropped.from_offset), to);
                        *written = to;
                        set_delivered(&self.delivered, stream_kind, to);
                        self.persist(*offsets);
                    }
                }
                Event::End(_) => return Some(ForwardEnd::Complete(*offsets)),
                Event::Heartbeat(_) => watchdog.heartbeat(),
            }
        }
    }

    fn persist(&self, offsets: Offsets) {
        if let Err(e) = self.offsets_file.store(offsets) {
            tracing::warn!(path = %self.offsets_file.path().display(), error = %e, "cannot record output offsets; a plugin restart may repeat output");
        }
    }
}

fn stream_index(stream: pb::OutputStream) -> Option<usize> {
    match stream {
        pb::OutputStream::Stdout => Some(0),
        pb::OutputStream::Stderr => Some(1),
        pb::OutputStream::Unspecified => None,
    }
}

/// Bytes reported lost beyond a `dropped` marker: none, except under the
/// test-only fault switch's over-claiming breakage.
fn claimed_beyond_the_drop() -> u64 {
    #[cfg(feature = "fault-switch")]
    if crate::broken!(OverClaimsDroppedOutput) {
        return crate::fault_switch::OVER_CLAIM_BYTES;
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_file_round_trips_and_defaults_to_zero() {
        let dir = tempfile::tempdir().unwrap();
        let file = OffsetsFile::at(
            OffsetsFile::path_for(dir.path(), "a.b.c"),
            Arc::new(crate::host::LocalFiles),
        );
        assert_eq!(file.load(), Offsets::default());
        let offsets = Offsets {
            stdout: 12,
            stderr: 3,
        };
        file.store(offsets).unwrap();
        assert_eq!(file.load(), offsets);
        assert!(file.path().starts_with(dir.path().join(OFFSETS_DIR)));
        file.remove();
        assert_eq!(file.load(), Offsets::default());
    }

    #[test]
    fn a_removed_offsets_file_is_not_written_again_by_any_clone() {
        let dir = tempfile::tempdir().unwrap();
        let file = OffsetsFile::at(
            OffsetsFile::path_for(dir.path(), "a.b.c"),
            Arc::new(crate::host::LocalFiles),
        );
        // The forwarder's clone, still winding down after the destroy.
        let forwarders = file.clone();
        forwarders
            .store(Offsets {
                stdout: 1,
                stderr: 0,
            })
            .unwrap();
        file.remove();
        forwarders
            .store(Offsets {
                stdout: 9,
                stderr: 9,
            })
            .unwrap();
        assert!(!file.path().exists(), "the destroyed task's file came back");
    }

    #[tokio::test]
    async fn fifo_is_written_without_a_reader_and_closed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.fifo");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let mut sink = FifoSink::new(
            path.to_str().unwrap(),
            Arc::new(crate::host::FifoSinks),
            Arc::new(|_: &Path, _: &io::Error| {}),
        );
        // No reader is open: a plain O_WRONLY open would block here.
        let mut taken = 0;
        sink.write(b"hello\n", |n| taken += n).await;
        assert_eq!(taken, 6);
        let mut reader = std::fs::File::open(&path).unwrap();
        sink.close();
        let mut text = String::new();
        // The write end was held from the write until the reader opened,
        // so the pipe kept the bytes; after the close the reader gets them
        // and then EOF (no hang).
        std::io::Read::read_to_string(&mut reader, &mut text).unwrap();
        assert_eq!(text, "hello\n");
        let mut null = FifoSink::new(
            "/dev/null",
            Arc::new(crate::host::FifoSinks),
            Arc::new(|_: &Path, _: &io::Error| {}),
        );
        null.write(b"x", |_| {}).await;
        assert!(null.sender.is_none());
    }
}
