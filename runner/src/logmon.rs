//! Logmon's job for `elide-run`: read each task's stdout and stderr FIFO
//! (opened for reading in the background, as logmon does) and print every
//! line prefixed with the task name (`[hello] …`), bytes as written. Lines
//! of concurrent tasks never interleave; a last line without a newline is
//! printed at EOF with one added.
//!
//! Unlike Nomad's logmon, nothing is written to rotated files: the output
//! goes to the terminal only.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Where forwarded lines go.
#[derive(Clone)]
pub enum Sink {
    /// The process's stdout.
    Stdout,
    /// The process's stderr.
    Stderr,
    /// A buffer (tests).
    #[cfg(test)]
    Buffer(Arc<Mutex<Vec<u8>>>),
}

impl Sink {
    fn write_line(&self, prefix: &[u8], line: &[u8]) {
        let mut whole = Vec::with_capacity(prefix.len() + line.len() + 1);
        whole.extend_from_slice(prefix);
        whole.extend_from_slice(line);
        if !line.ends_with(b"\n") {
            whole.push(b'\n');
        }
        // A closed stdout (e.g. `| head`) must not stop the run: ignore errors.
        let _ = match self {
            Sink::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(&whole).and_then(|_| out.flush())
            }
            Sink::Stderr => {
                let mut out = std::io::stderr().lock();
                out.write_all(&whole).and_then(|_| out.flush())
            }
            #[cfg(test)]
            Sink::Buffer(buffer) => {
                buffer
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend_from_slice(&whole);
                Ok(())
            }
        };
    }
}

#[derive(Default)]
struct State {
    eofs: usize,
    stop: bool,
    exited: bool,
}

/// Reads one FIFO in a background thread.
pub struct FifoForwarder {
    path: PathBuf,
    shared: Arc<(Mutex<State>, Condvar)>,
}

impl FifoForwarder {
    /// Starts forwarding `path` to `sink`, each line prefixed by `[task] `.
    pub fn start(path: &Path, task: &str, sink: Sink) -> FifoForwarder {
        let shared: Arc<(Mutex<State>, Condvar)> = Arc::default();
        let prefix = format!("[{task}] ").into_bytes();
        let thread_shared = shared.clone();
        let thread_path = path.to_owned();
        std::thread::Builder::new()
            .name(format!("logmon-{task}"))
            .spawn(move || {
                forward(&thread_path, &prefix, &sink, &thread_shared);
                let (lock, changed) = &*thread_shared;
                lock.lock().unwrap_or_else(|e| e.into_inner()).exited = true;
                changed.notify_all();
            })
            .expect("spawning a logmon thread");
        FifoForwarder {
            path: path.to_owned(),
            shared,
        }
    }

    /// Stops reading once the writers are done: call it after the task's
    /// `WaitTask` result, which the driver publishes only after writing the
    /// last byte. Whatever is still in the FIFO is printed; a stream that
    /// never had a writer (the driver opens them lazily, on first output)
    /// ends at once. Waits up to `limit` for a writer still open to close.
    /// Returns whether the reader finished in time.
    pub fn finish(self, limit: Duration) -> bool {
        let (lock, changed) = &*self.shared;
        lock.lock().unwrap_or_else(|e| e.into_inner()).stop = true;
        // A writer that opens and closes at once releases a reader blocked
        // in open() and adds an EOF after any unread bytes. Retried: the
        // open fails (ENXIO) while the reader thread has not reached open().
        let deadline = Instant::now() + limit;
        let mut state = lock.lock().unwrap_or_else(|e| e.into_inner());
        while !state.exited && Instant::now() < deadline {
            drop(state);
            let _ = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(nix::libc::O_NONBLOCK)
                .open(&self.path);
            state = lock.lock().unwrap_or_else(|e| e.into_inner());
            let left = deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(20));
            state = changed
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        state.exited
    }
}

fn forward(path: &Path, prefix: &[u8], sink: &Sink, shared: &(Mutex<State>, Condvar)) {
    let (lock, changed) = shared;
    loop {
        // Blocks until a writer opens, like logmon's background open.
        let Ok(mut fifo) = std::fs::File::open(path) else {
            return;
        };
        let mut pending: Vec<u8> = Vec::new();
        let mut buffer = [0u8; 8192];
        loop {
            match fifo.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    pending.extend_from_slice(&buffer[..n]);
                    while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = pending.drain(..=end).collect();
                        sink.write_line(prefix, &line);
                    }
                }
            }
        }
        if !pending.is_empty() {
            sink.write_line(prefix, &pending);
        }
        let mut state = lock.lock().unwrap_or_else(|e| e.into_inner());
        state.eofs += 1;
        changed.notify_all();
        if state.stop {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_lines_and_keeps_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".t.stdout.fifo");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let forwarder = FifoForwarder::start(&path, "t", Sink::Buffer(buffer.clone()));
        let mut writer = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        writer.write_all(b"one\ntw").unwrap();
        writer.write_all(b"o \xff\nlast").unwrap();
        drop(writer);
        assert!(forwarder.finish(Duration::from_secs(5)));
        assert_eq!(
            &*buffer.lock().unwrap(),
            b"[t] one\n[t] two \xff\n[t] last\n"
        );
    }

    #[test]
    fn bytes_left_by_a_closed_writer_are_printed_before_finishing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".t.stdout.fifo");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let buffer = Arc::new(Mutex::new(Vec::new()));
        // Readers start before StartTask (as logmon's do); the driver then
        // opens O_RDWR, writes and closes, possibly before the reader thread
        // has read anything.
        let forwarder = FifoForwarder::start(&path, "t", Sink::Buffer(buffer.clone()));
        std::thread::sleep(Duration::from_millis(100));
        let mut writer = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        writer.write_all(b"early\n").unwrap();
        drop(writer);
        assert!(forwarder.finish(Duration::from_secs(5)));
        assert_eq!(&*buffer.lock().unwrap(), b"[t] early\n");
    }

    #[test]
    fn finish_without_a_writer_returns_in_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".t.stderr.fifo");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let forwarder = FifoForwarder::start(&path, "t", Sink::Buffer(Arc::default()));
        // Finished (not given up at the limit): no writer is waited for.
        assert!(forwarder.finish(Duration::from_secs(30)));
    }
}
