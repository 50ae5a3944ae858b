//! The one "please stop" signal of the plugin process, raised by
//! `GRPCController/Shutdown` or SIGTERM and awaited by `main`.

use tokio::sync::watch;

/// A cloneable shutdown switch. Raising it is idempotent.
#[derive(Debug, Clone)]
pub struct Shutdown {
    requested: watch::Sender<bool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown {
            requested: watch::Sender::new(false),
        }
    }
}

impl Shutdown {
    /// A switch that is not raised.
    pub fn new() -> Self {
        Self::default()
    }

    /// Raises the switch.
    pub fn trigger(&self) {
        self.requested.send_replace(true);
    }

    /// Completes once the switch is raised (at once if it already is).
    pub async fn requested(&self) {
        let mut receiver = self.requested.subscribe();
        // Err means the sender is gone, which cannot happen while `self` lives.
        let _ = receiver.wait_for(|raised| *raised).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn waiters_wake_when_triggered_even_if_late() {
        let shutdown = Shutdown::new();
        let waiter = tokio::spawn({
            let shutdown = shutdown.clone();
            async move { shutdown.requested().await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiter.is_finished());
        shutdown.trigger();
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("waiter woke")
            .unwrap();
        tokio::time::timeout(Duration::from_secs(1), shutdown.requested())
            .await
            .expect("late waiter returns at once");
    }
}
