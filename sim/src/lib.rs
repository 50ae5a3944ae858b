//! Deterministic simulation of the project under `turmoil`.
//!
//! The production daemon (and, next, the production driver) run on
//! simulated hosts; only the transport ([`net`]), the clock, the runtime
//! (the daemon's scripted runtime) and the disk are swapped. Same seed, same
//! trace.

pub mod daemon_host;
pub mod net;
pub mod trace;

/// A turmoil builder with everything that makes a run replayable fixed:
/// the seed, the epoch, and a generous duration backstop.
pub fn builder(seed: u64, duration: std::time::Duration) -> turmoil::Builder {
    let mut b = turmoil::Builder::new();
    b.rng_seed(seed)
        .epoch(std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000))
        .simulation_duration(duration)
        .tick_duration(std::time::Duration::from_millis(1))
        .min_message_latency(std::time::Duration::from_millis(1))
        .max_message_latency(std::time::Duration::from_millis(5))
        .tcp_capacity(10_000);
    b
}
