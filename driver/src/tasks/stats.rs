//! Resource samples of a task, from the daemon's `GetExecutionMetrics`.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use elide_proto::elide::daemon::v1 as pb;

/// One resource sample, in the units Nomad's `TaskResourceUsage` uses.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceSample {
    /// When it was taken.
    pub timestamp: SystemTime,
    /// % of one CPU in user mode since the previous sample.
    pub user_percent: f64,
    /// % of one CPU in kernel mode since the previous sample.
    pub system_percent: f64,
    /// Resident memory, bytes.
    pub rss_bytes: u64,
    /// Highest resident memory seen, bytes.
    pub peak_rss_bytes: u64,
}

impl ResourceSample {
    /// Total CPU %, may exceed 100 with several cores busy.
    pub fn percent(&self) -> f64 {
        self.user_percent + self.system_percent
    }
}

/// Turns cumulative CPU times into rates between consecutive samples.
#[derive(Debug, Clone)]
pub struct CpuRate {
    last_at: Instant,
    last_user: Duration,
    last_system: Duration,
}

impl CpuRate {
    /// Starts measuring from `since` with no CPU used (the task's start:
    /// the first sample is then the average over the task's life so far).
    pub fn since(since: Instant) -> Self {
        CpuRate {
            last_at: since,
            last_user: Duration::ZERO,
            last_system: Duration::ZERO,
        }
    }

    /// A sample from daemon metrics taken now (`at` on the wall clock).
    pub fn sample(&mut self, metrics: &pb::ExecutionMetrics, at: SystemTime) -> ResourceSample {
        let now = Instant::now();
        let user = to_std(metrics.cpu_user.as_ref());
        let system = to_std(metrics.cpu_system.as_ref());
        let wall = now.saturating_duration_since(self.last_at).as_secs_f64();
        let rate = |current: Duration, last: Duration| {
            if wall <= 0.0 {
                0.0
            } else {
                current.saturating_sub(last).as_secs_f64() / wall * 100.0
            }
        };
        let sample = ResourceSample {
            timestamp: at,
            user_percent: rate(user, self.last_user),
            system_percent: rate(system, self.last_system),
            rss_bytes: metrics.memory_rss_bytes,
            peak_rss_bytes: metrics.memory_peak_bytes.max(metrics.memory_rss_bytes),
        };
        self.last_at = now;
        self.last_user = user;
        self.last_system = system;
        sample
    }
}

fn to_std(d: Option<&prost_types::Duration>) -> Duration {
    d.map(elide_proto::duration_from_proto).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_deltas_over_wall_time() {
        let mut rate = CpuRate::since(Instant::now() - Duration::from_secs(2));
        let metrics = pb::ExecutionMetrics {
            cpu_user: Some(prost_types::Duration {
                seconds: 1,
                nanos: 0,
            }),
            cpu_system: None,
            memory_rss_bytes: 10,
            memory_peak_bytes: 5,
            ..Default::default()
        };
        let sample = rate.sample(&metrics, SystemTime::UNIX_EPOCH);
        assert!(
            (40.0..=51.0).contains(&sample.user_percent),
            "{}",
            sample.user_percent
        );
        assert_eq!(sample.system_percent, 0.0);
        assert_eq!(sample.peak_rss_bytes, 10);
    }
}
