//! Exponential back-off between attempts (reconnections, retried deletes,
//! daemon restarts).

use std::time::Duration;

/// First delay after a failure, by default.
pub const FIRST_DELAY: Duration = Duration::from_millis(100);
/// Longest delay between attempts, by default.
pub const MAX_DELAY: Duration = Duration::from_secs(5);

/// Doubles from a first delay up to a cap ([`FIRST_DELAY`] and
/// [`MAX_DELAY`] by default); reset after success.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::between(FIRST_DELAY, MAX_DELAY)
    }
}

impl Backoff {
    /// Starts at `first` and never exceeds `max` (`first` if `max` is smaller).
    pub fn between(first: Duration, max: Duration) -> Self {
        let max = max.max(first);
        Backoff {
            first,
            max,
            next: first,
        }
    }

    /// The delay to wait now; the one after it is doubled (up to the cap).
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    /// Sleeps for the current delay and doubles it.
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    /// Back to the first delay.
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let secs = Duration::from_secs;
        let mut backoff = Backoff::between(secs(1), secs(30));
        let delays: Vec<_> = (0..7).map(|_| backoff.next_delay()).collect();
        assert_eq!(
            delays,
            [1, 2, 4, 8, 16, 30, 30].map(secs),
            "1 s doubling, capped at 30 s"
        );
        backoff.reset();
        assert_eq!(backoff.next_delay(), secs(1));
    }
}
