//! Resource samples of a task, from the daemon's `GetExecutionMetrics`.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use elide_proto::elide::daemon::v1 as pb;
use elide_proto::hashicorp::nomad::plugins::base::proto::ClientTopology;

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
    /// Highest memory use seen, bytes (the cgroup's peak usage, or the
    /// highest sampled RSS without a cgroup).
    pub peak_rss_bytes: u64,
    /// Page cache charged to the task, bytes.
    pub cache_bytes: u64,
    /// All memory charged to the task, bytes.
    pub usage_bytes: u64,
    /// Which figures the daemon really measured (`ExecutionMetrics.measured`).
    pub measured: Vec<String>,
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
            cache_bytes: metrics.memory_cache_bytes,
            usage_bytes: metrics.memory_usage_bytes,
            measured: if metrics.measured.is_empty() {
                // A daemon from before `measured`: sampled CPU and RSS.
                ["cpu_user", "cpu_system", "memory_rss", "memory_peak"]
                    .map(String::from)
                    .to_vec()
            } else {
                metrics.measured.clone()
            },
        };
        self.last_at = now;
        self.last_user = user;
        self.last_system = system;
        sample
    }
}

/// The node's CPU as Nomad counts it, from the topology it sends in
/// `SetConfig`: total compute in MHz and the number of cores, which turn a
/// CPU percentage into Nomad's "ticks" (MHz) exactly as its executor does
/// (`cpustats.Tracker.TicksConsumed`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NodeCompute {
    /// Total compute, MHz: the client's `cpu_total_compute` override, else
    /// the sum over all cores of each core's speed.
    pub total_mhz: u64,
    /// Cores detected (disabled ones included, as Nomad counts them).
    pub cores: u32,
}

impl NodeCompute {
    /// From Nomad's topology; `None` when it lists no cores or no speed.
    pub fn from_topology(topology: &ClientTopology) -> Option<NodeCompute> {
        let cores = u32::try_from(topology.cores.len())
            .ok()
            .filter(|c| *c > 0)?;
        // A core's speed: base, else max, else the guessed speed (Nomad's
        // numalib `Core.MHz`).
        let summed: u64 = topology
            .cores
            .iter()
            .map(|c| {
                [c.base_speed, c.max_speed, c.guess_speed]
                    .into_iter()
                    .find(|s| *s > 0)
                    .unwrap_or(0)
            })
            .sum();
        let total_mhz = if topology.override_total_compute > 0 {
            topology.override_total_compute
        } else {
            summed
        };
        (total_mhz > 0).then_some(NodeCompute { total_mhz, cores })
    }

    /// CPU "ticks" (MHz) used at `percent` % of one core.
    pub fn ticks(&self, percent: f64) -> f64 {
        (percent / 100.0) * self.total_mhz as f64 / f64::from(self.cores)
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

    fn core(
        base: u64,
        max: u64,
        guess: u64,
    ) -> elide_proto::hashicorp::nomad::plugins::base::proto::ClientTopologyCore {
        elide_proto::hashicorp::nomad::plugins::base::proto::ClientTopologyCore {
            base_speed: base,
            max_speed: max,
            guess_speed: guess,
            ..Default::default()
        }
    }

    #[test]
    fn node_compute_sums_core_speeds_like_nomad() {
        let topology = ClientTopology {
            cores: vec![core(2000, 3500, 0), core(0, 3000, 0), core(0, 0, 1500)],
            ..Default::default()
        };
        let compute = NodeCompute::from_topology(&topology).unwrap();
        assert_eq!(
            compute,
            NodeCompute {
                total_mhz: 6500,
                cores: 3
            }
        );
        // One core fully busy on a 3-core node of 6500 MHz.
        assert!((compute.ticks(100.0) - 6500.0 / 3.0).abs() < 1e-9);
        assert_eq!(compute.ticks(0.0), 0.0);
    }

    #[test]
    fn the_total_compute_override_wins_and_no_cores_means_unknown() {
        let topology = ClientTopology {
            cores: vec![core(2000, 0, 0), core(2000, 0, 0)],
            override_total_compute: 9000,
            ..Default::default()
        };
        let compute = NodeCompute::from_topology(&topology).unwrap();
        assert_eq!(compute.total_mhz, 9000);
        assert!((compute.ticks(50.0) - 2250.0).abs() < 1e-9);
        assert_eq!(NodeCompute::from_topology(&ClientTopology::default()), None);
    }
}
