//! The one wall-clock seam: timestamps users see (execution start and end,
//! task events, stats samples) come from a [`WallClock`], so the simulation
//! can make them deterministic. Durations and deadlines use `tokio::time`
//! instead, which the simulation already controls.

use std::time::SystemTime;

/// Source of wall-clock timestamps.
pub trait WallClock: Send + Sync + 'static {
    /// The current wall-clock time.
    fn now(&self) -> SystemTime;
}

/// The operating system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl WallClock for SystemClock {
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

impl WallClock for TokioClock {
    fn now(&self) -> SystemTime {
        self.epoch + self.origin.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_tokio_clock_follows_tokio_time_from_its_epoch() {
        let epoch = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let clock = TokioClock::starting_at(epoch);
        assert_eq!(clock.now(), epoch);
        tokio::time::sleep(Duration::from_secs(90)).await;
        assert_eq!(clock.now(), epoch + Duration::from_secs(90));
    }
}
