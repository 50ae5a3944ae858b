//! Exponential back-off between reconnection attempts.

use std::time::Duration;

/// First delay after a failure.
pub const FIRST_DELAY: Duration = Duration::from_millis(100);
/// Longest delay between attempts.
pub const MAX_DELAY: Duration = Duration::from_secs(5);

/// Doubles from [`FIRST_DELAY`] up to [`MAX_DELAY`]; reset after success.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: FIRST_DELAY }
    }
}

impl Backoff {
    /// Sleeps for the current delay and doubles it.
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next).await;
        self.next = (self.next * 2).min(MAX_DELAY);
    }

    /// Back to the first delay.
    pub fn reset(&mut self) {
        self.next = FIRST_DELAY;
    }
}
