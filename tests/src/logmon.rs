//! Logmon stand-ins: readers that drain a task's log FIFO into a buffer.
//!
//! Nomad's logmon opens each FIFO for reading in the background and copies
//! everything into rotated files. This reader does the same into memory;
//! where logmon stops at EOF until the next prestart, this one reopens
//! right away and counts the EOFs, so a test sees every byte ever written,
//! across plugin restarts, and how often the writers closed.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Captured {
    bytes: Vec<u8>,
    opens: usize,
    eofs: usize,
    /// Asked to close its read end and stay away ([`FifoReader::go_away`]).
    away: bool,
    /// Its read end is closed because it was asked to go away.
    closed: bool,
    /// Reads no more after the next EOF ([`FifoReader::retire`]).
    retired: bool,
}

/// One FIFO and what was read from it.
#[derive(Clone)]
pub struct FifoReader {
    path: PathBuf,
    shared: Arc<(Mutex<Captured>, Condvar)>,
}

impl FifoReader {
    /// Creates the FIFO (mode 0600, like logmon) and starts reading it.
    pub fn create(path: &Path) -> FifoReader {
        nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
        let reader = FifoReader {
            path: path.to_owned(),
            shared: Arc::default(),
        };
        let shared = reader.shared.clone();
        let path = path.to_owned();
        std::thread::spawn(move || loop {
            // Blocks until a writer opens, like logmon's background open.
            let Ok(mut fifo) = std::fs::File::open(&path) else {
                return;
            };
            {
                let (lock, changed) = &*shared;
                lock.lock().unwrap().opens += 1;
                changed.notify_all();
            }
            let mut buffer = [0u8; 8192];
            let went_away = loop {
                match fifo.read(&mut buffer) {
                    Ok(0) | Err(_) => break false,
                    Ok(n) => {
                        let (lock, changed) = &*shared;
                        let mut captured = lock.lock().unwrap();
                        captured.bytes.extend_from_slice(&buffer[..n]);
                        changed.notify_all();
                        if captured.away {
                            break true;
                        }
                    }
                }
            };
            let (lock, changed) = &*shared;
            if went_away {
                // A logmon that died: the read end closes mid-stream, and
                // opens again only once it is asked back.
                drop(fifo);
                let mut captured = lock.lock().unwrap();
                captured.closed = true;
                changed.notify_all();
                while captured.away {
                    captured = changed.wait(captured).unwrap();
                }
                captured.closed = false;
                continue;
            }
            let mut captured = lock.lock().unwrap();
            captured.eofs += 1;
            changed.notify_all();
            if captured.retired {
                return;
            }
        });
        reader
    }

    /// The FIFO's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Everything read so far, as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.shared.0.lock().unwrap().bytes).into_owned()
    }

    /// Everything read so far, as bytes.
    pub fn bytes(&self) -> Vec<u8> {
        self.shared.0.lock().unwrap().bytes.clone()
    }

    /// Closes the read end at the next byte read (the task must be
    /// writing) and keeps it closed until [`FifoReader::come_back`], like
    /// a logmon that died mid-task; returns once it is closed, with how
    /// many bytes were read until then.
    pub fn go_away(&self, limit: Duration) -> usize {
        let deadline = Instant::now() + limit;
        let (lock, changed) = &*self.shared;
        let mut captured = lock.lock().unwrap();
        captured.away = true;
        while !captured.closed {
            let now = Instant::now();
            assert!(
                now < deadline,
                "{}: the reader did not get a byte to leave on within {limit:?}",
                self.path.display()
            );
            captured = changed.wait_timeout(captured, deadline - now).unwrap().0;
        }
        captured.bytes.len()
    }

    /// Opens the read end again after [`FifoReader::go_away`], like a
    /// restarted logmon.
    pub fn come_back(&self) {
        let (lock, changed) = &*self.shared;
        lock.lock().unwrap().away = false;
        changed.notify_all();
    }

    /// Waits for the writers' `eofs`-th close, then deletes the FIFO and
    /// stops reading, as when the allocation's log directory is cleaned up
    /// while no logmon runs (a new reader may then create the path again).
    pub fn retire(&self, eofs: usize, limit: Duration) {
        self.shared.0.lock().unwrap().retired = true;
        self.wait_for_eofs(eofs, limit);
        std::fs::remove_file(&self.path).expect("removing the FIFO");
    }

    /// Stops reading before any writer came and deletes the FIFO (its
    /// reader is blocked in `open`: a write end opened and closed here
    /// lets it see its EOF and end), so a test can put something else in
    /// its place.
    pub fn abandon(&self, limit: Duration) {
        self.shared.0.lock().unwrap().retired = true;
        let eofs = self.eofs();
        let deadline = Instant::now() + limit;
        // On a loaded machine the reader thread may not be in its `open`
        // yet, and a write end opened and closed before it gets there
        // releases nothing: repeat until its EOF is seen.
        loop {
            drop(
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&self.path)
                    .expect("opening the FIFO to release its reader"),
            );
            if self.saw_eofs(eofs + 1, Duration::from_millis(200)) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}: no EOF within {limit:?}",
                self.path.display()
            );
        }
        std::fs::remove_file(&self.path).expect("removing the FIFO");
    }

    /// Whether the writers closed the FIFO at least `count` times within
    /// `limit`.
    fn saw_eofs(&self, count: usize, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let (lock, changed) = &*self.shared;
        let mut captured = lock.lock().unwrap();
        while captured.eofs < count {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            captured = changed.wait_timeout(captured, deadline - now).unwrap().0;
        }
        true
    }

    /// How many bytes were read so far.
    pub fn len(&self) -> usize {
        self.shared.0.lock().unwrap().bytes.len()
    }

    /// Whether nothing was read yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many times a writer had opened the FIFO (the reader's blocking
    /// open returned).
    pub fn opens(&self) -> usize {
        self.shared.0.lock().unwrap().opens
    }

    /// Waits until a writer opened the FIFO at least `count` times.
    pub fn wait_for_opens(&self, count: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        let (lock, changed) = &*self.shared;
        let mut captured = lock.lock().unwrap();
        while captured.opens < count {
            let now = Instant::now();
            assert!(
                now < deadline,
                "{}: no writer opened it within {limit:?}",
                self.path.display()
            );
            captured = changed.wait_timeout(captured, deadline - now).unwrap().0;
        }
    }

    /// How many times every writer had closed the FIFO.
    pub fn eofs(&self) -> usize {
        self.shared.0.lock().unwrap().eofs
    }

    /// Waits (up to `limit`) until `done` holds for the text read so far;
    /// returns the text. Panics on timeout with what was read.
    pub fn wait_until(&self, limit: Duration, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + limit;
        let (lock, changed) = &*self.shared;
        let mut captured = lock.lock().unwrap();
        loop {
            let text = String::from_utf8_lossy(&captured.bytes).into_owned();
            if done(&text) {
                return text;
            }
            let now = Instant::now();
            assert!(
                now < deadline,
                "{}: condition not met within {limit:?}; read so far: {text:?}",
                self.path.display()
            );
            captured = changed.wait_timeout(captured, deadline - now).unwrap().0;
        }
    }

    /// Waits until the text contains `needle`.
    pub fn wait_for(&self, needle: &str, limit: Duration) -> String {
        self.wait_until(limit, |text| text.contains(needle))
    }

    /// The complete text once the writers closed the FIFO `eofs` times
    /// (the driver closes it after the last byte of a task's output).
    pub fn text_after_eofs(&self, eofs: usize, limit: Duration) -> String {
        self.wait_for_eofs(eofs, limit);
        self.text()
    }

    /// Waits until the writers closed the FIFO at least `count` times.
    pub fn wait_for_eofs(&self, count: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        let (lock, changed) = &*self.shared;
        let mut captured = lock.lock().unwrap();
        while captured.eofs < count {
            let now = Instant::now();
            assert!(
                now < deadline,
                "{}: no EOF within {limit:?}",
                self.path.display()
            );
            captured = changed.wait_timeout(captured, deadline - now).unwrap().0;
        }
    }
}
