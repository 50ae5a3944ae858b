//! Wall-clock time behind a seam, and conversions to protobuf time types.
//!
//! Durations and deadlines use `tokio::time` (virtual under simulation); only
//! timestamps shown to users come from a [`Clock`], so a simulation can make
//! them deterministic.

use std::time::{Duration, SystemTime};

/// Source of wall-clock timestamps.
pub trait Clock: Send + Sync + 'static {
    /// The current wall-clock time.
    fn now(&self) -> SystemTime;
}

/// The operating system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// Wall-clock time derived from `tokio::time`: `epoch` plus the time elapsed
/// since the clock was made. Deterministic under a paused or simulated
/// clock, so traces with timestamps replay byte for byte.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    epoch: SystemTime,
    origin: tokio::time::Instant,
}

impl TokioClock {
    /// A clock that reads `epoch` now.
    pub fn starting_at(epoch: SystemTime) -> Self {
        TokioClock {
            epoch,
            origin: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> SystemTime {
        self.epoch + self.origin.elapsed()
    }
}

/// A protobuf timestamp for `t`.
pub fn proto_timestamp(t: SystemTime) -> prost_types::Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// A std duration from a protobuf one; negative or malformed values are an
/// error naming `field`.
pub fn std_duration(d: &prost_types::Duration, field: &str) -> Result<Duration, String> {
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return Err(format!(
            "{field} must be a non-negative duration, got {}s {}ns",
            d.seconds, d.nanos
        ));
    }
    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
}
