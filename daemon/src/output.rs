//! Retained output of one execution: two byte streams addressed by offset.
//!
//! Every byte a program writes gets a fixed offset in its stream. The log
//! keeps the newest `cap` bytes of each stream; a reader asking for older
//! bytes is told exactly which range was dropped, so loss is never silent.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::watch;

/// One of the two output streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl Stream {
    /// Both streams, stdout first.
    pub const ALL: [Stream; 2] = [Stream::Stdout, Stream::Stderr];

    fn index(self) -> usize {
        match self {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
        }
    }

    /// `"stdout"` or `"stderr"`.
    pub fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// What a read at some offset found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    /// Bytes starting at `offset`.
    Data {
        /// Offset of `data[0]`.
        offset: u64,
        /// The bytes.
        data: Vec<u8>,
    },
    /// `[from, to)` is no longer retained; continue reading at `to`.
    Dropped {
        /// First dropped offset asked for.
        from: u64,
        /// First retained offset.
        to: u64,
    },
    /// Nothing at this offset yet.
    Pending,
}

#[derive(Debug, Default)]
struct StreamBuf {
    /// Offset of `buf[0]`.
    start: u64,
    buf: VecDeque<u8>,
}

impl StreamBuf {
    fn end(&self) -> u64 {
        self.start + self.buf.len() as u64
    }
}

#[derive(Debug, Default)]
struct Inner {
    streams: [StreamBuf; 2],
    /// Per stream, the furthest offset any follower has been sent.
    sent: [u64; 2],
    closed: bool,
}

/// The output log of one execution, shared by its writer and its readers.
#[derive(Debug)]
pub struct OutputLog {
    cap: u64,
    inner: Mutex<Inner>,
    /// Bumped on every append and on close; readers wait on it.
    changed: watch::Sender<u64>,
    /// Bumped whenever a follower was sent more; a paused writer waits on it.
    progress: watch::Sender<u64>,
}

impl OutputLog {
    /// A log keeping at most `cap` bytes per stream.
    pub fn new(cap: u64) -> Self {
        OutputLog {
            cap: cap.max(1),
            inner: Mutex::default(),
            changed: watch::Sender::new(0),
            progress: watch::Sender::new(0),
        }
    }

    /// A closed log restored from persisted tails: `tail` holds the bytes
    /// ending at `total` for each stream.
    pub fn restored(cap: u64, tails: [(u64, Vec<u8>); 2]) -> Self {
        let log = OutputLog::new(cap);
        {
            let mut inner = log.lock();
            for (i, (total, bytes)) in tails.into_iter().enumerate() {
                let len = bytes.len() as u64;
                inner.streams[i] = StreamBuf {
                    start: total.saturating_sub(len),
                    buf: bytes.into(),
                };
            }
            inner.closed = true;
        }
        log
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A poisoned lock only means a reader panicked mid-copy; the buffer
        // itself is always consistent, so keep serving it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends program output. Ignored after [`close`](Self::close).
    /// Returns how many older bytes of `stream` this pushed out of the
    /// retained window.
    pub fn append(&self, stream: Stream, data: &[u8]) -> u64 {
        if data.is_empty() {
            return 0;
        }
        let excess = {
            let mut inner = self.lock();
            if inner.closed {
                return 0;
            }
            let s = &mut inner.streams[stream.index()];
            s.buf.extend(data);
            let excess = (s.buf.len() as u64).saturating_sub(self.cap);
            if excess > 0 {
                s.buf.drain(..excess as usize);
                s.start += excess;
            }
            excess
        };
        self.changed.send_modify(|v| *v += 1);
        excess
    }

    /// Marks the end of output: readers finish once they have read it all.
    pub fn close(&self) {
        self.lock().closed = true;
        self.changed.send_modify(|v| *v += 1);
    }

    /// Whether no more output will be appended.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Total bytes written so far on each stream (the next offsets).
    pub fn totals(&self) -> (u64, u64) {
        let inner = self.lock();
        (inner.streams[0].end(), inner.streams[1].end())
    }

    /// Reads up to `max` bytes of `stream` starting at `offset`.
    pub fn read(&self, stream: Stream, offset: u64, max: usize) -> Read {
        let inner = self.lock();
        let s = &inner.streams[stream.index()];
        if offset < s.start {
            return Read::Dropped {
                from: offset,
                to: s.start,
            };
        }
        if offset >= s.end() {
            return Read::Pending;
        }
        let skip = (offset - s.start) as usize;
        let take = max.min(s.buf.len() - skip);
        let data: Vec<u8> = s.buf.range(skip..skip + take).copied().collect();
        Read::Data { offset, data }
    }

    /// Records that a follower was sent `stream` up to `end` (exclusive).
    pub fn mark_sent(&self, stream: Stream, end: u64) {
        {
            let mut inner = self.lock();
            let sent = &mut inner.sent[stream.index()];
            if end <= *sent {
                return;
            }
            *sent = end;
        }
        self.progress.send_modify(|v| *v += 1);
    }

    /// Bytes written but not yet sent to any follower, on the stream where
    /// that backlog is largest.
    pub fn backlog(&self) -> u64 {
        let inner = self.lock();
        Stream::ALL
            .iter()
            .map(|s| {
                inner.streams[s.index()]
                    .end()
                    .saturating_sub(inner.sent[s.index()])
            })
            .max()
            .unwrap_or(0)
    }

    /// Whether a writer applying backpressure should pause: the backlog has
    /// reached half the retention cap, so more output would soon push bytes
    /// no follower has received out of retention.
    pub fn needs_pause(&self) -> bool {
        self.backlog() >= self.cap / 2
    }

    /// A receiver that changes whenever a follower makes progress.
    pub fn subscribe_progress(&self) -> watch::Receiver<u64> {
        self.progress.subscribe()
    }

    /// Retained bytes of each stream with the total written, for persistence.
    pub fn tails(&self) -> [(u64, Vec<u8>); 2] {
        let inner = self.lock();
        let tail = |s: &StreamBuf| (s.end(), s.buf.iter().copied().collect());
        [tail(&inner.streams[0]), tail(&inner.streams[1])]
    }

    /// A receiver that changes whenever output is appended or the log closes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_per_stream() {
        let log = OutputLog::new(1024);
        log.append(Stream::Stdout, b"hello ");
        log.append(Stream::Stderr, b"oops");
        log.append(Stream::Stdout, b"world");
        assert_eq!(log.totals(), (11, 4));
        assert_eq!(
            log.read(Stream::Stdout, 6, 100),
            Read::Data {
                offset: 6,
                data: b"world".to_vec()
            }
        );
        assert_eq!(
            log.read(Stream::Stderr, 0, 2),
            Read::Data {
                offset: 0,
                data: b"oo".to_vec()
            }
        );
        assert_eq!(log.read(Stream::Stderr, 4, 2), Read::Pending);
    }

    #[test]
    fn dropping_old_bytes_is_reported_with_the_exact_range() {
        let log = OutputLog::new(4);
        // Each append says how many older bytes it pushed out (metrics
        // count them as dropped).
        assert_eq!(log.append(Stream::Stdout, b"abcdef"), 2);
        assert_eq!(log.append(Stream::Stdout, b"gh"), 2);
        assert_eq!(log.append(Stream::Stderr, b"ok"), 0);
        assert_eq!(
            log.read(Stream::Stdout, 0, 10),
            Read::Dropped { from: 0, to: 4 }
        );
        assert_eq!(
            log.read(Stream::Stdout, 4, 10),
            Read::Data {
                offset: 4,
                data: b"efgh".to_vec()
            }
        );
        assert_eq!(log.totals(), (8, 2));
    }

    #[test]
    fn backlog_counts_what_no_follower_was_sent() {
        let log = OutputLog::new(100);
        log.append(Stream::Stdout, &[1; 60]);
        log.append(Stream::Stderr, &[2; 10]);
        assert_eq!(log.backlog(), 60);
        assert!(log.needs_pause());
        log.mark_sent(Stream::Stdout, 40);
        log.mark_sent(Stream::Stdout, 30); // never goes back
        assert_eq!(log.backlog(), 20);
        assert!(!log.needs_pause());
    }

    #[test]
    fn closed_log_ignores_appends_and_restores_offsets() {
        let log = OutputLog::new(4);
        log.append(Stream::Stderr, b"0123456789");
        log.close();
        log.append(Stream::Stderr, b"late");
        assert_eq!(log.totals(), (0, 10));
        let restored = OutputLog::restored(4, log.tails());
        assert!(restored.is_closed());
        assert_eq!(restored.totals(), (0, 10));
        assert_eq!(
            restored.read(Stream::Stderr, 2, 10),
            Read::Dropped { from: 2, to: 6 }
        );
        assert_eq!(
            restored.read(Stream::Stderr, 6, 10),
            Read::Data {
                offset: 6,
                data: b"6789".to_vec()
            }
        );
    }
}
