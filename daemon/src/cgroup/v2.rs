//! cgroup v2: one directory in the unified hierarchy holds every
//! controller's files. Controllers must be enabled in the parent's
//! `cgroup.subtree_control`, and only a cgroup without processes may
//! enable them for its children ("no internal processes").

use std::path::Path;
use std::time::Duration;

use super::{keyed, read_u64, write, CgroupError, CgroupUsage, LimitCounters};

/// Controllers the daemon enables for its executions, when available.
pub const WANTED_CONTROLLERS: &[&str] = &["memory", "pids", "cpu"];

/// Writes the memory limits: `memory.max` (hard), `memory.low` (soft, as
/// Nomad's executor writes `memory` when `memory_max` is the hard limit),
/// and no swap, so the limit cannot be stretched by swapping.
pub fn write_memory_limit(
    dir: &Path,
    hard: Option<u64>,
    soft: Option<u64>,
) -> Result<(), CgroupError> {
    if let Some(hard) = hard {
        write(dir, "memory.max", &hard.to_string())?;
        // Absent without swap accounting; then there is no swap to limit.
        if dir.join("memory.swap.max").exists() {
            write(dir, "memory.swap.max", "0")?;
        }
    }
    if let Some(soft) = soft {
        write(dir, "memory.low", &soft.to_string())?;
    }
    Ok(())
}

/// Writes the process limit.
pub fn write_pids_limit(dir: &Path, limit: u64) -> Result<(), CgroupError> {
    write(dir, "pids.max", &limit.to_string())
}

/// Nomad's CPU shares (the task's MHz) as a v2 `cpu.weight` (1–10000), the
/// linear mapping of the v1 range 2–262144 that runc and Nomad use.
pub fn cpu_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 100;
    }
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

/// Memory and CPU use.
pub fn usage(dir: &Path) -> CgroupUsage {
    let mut usage = CgroupUsage::default();
    if let Ok(stat) = std::fs::read_to_string(dir.join("memory.stat")) {
        usage.rss = keyed(&stat, "anon");
        usage.cache = keyed(&stat, "file");
    }
    usage.usage = read_u64(dir, "memory.current");
    // memory.peak exists from Linux 5.19.
    usage.peak = read_u64(dir, "memory.peak");
    if let Ok(stat) = std::fs::read_to_string(dir.join("cpu.stat")) {
        usage.cpu_user = keyed(&stat, "user_usec").map(Duration::from_micros);
        usage.cpu_system = keyed(&stat, "system_usec").map(Duration::from_micros);
    }
    usage.processes = read_u64(dir, "pids.current");
    usage
}

/// The kernel's OOM kills (`memory.events`) and refused forks
/// (`pids.events`) so far.
pub fn counters(dir: &Path) -> LimitCounters {
    let events = |name: &str, key: &str| {
        std::fs::read_to_string(dir.join(name))
            .ok()
            .and_then(|text| keyed(&text, key))
            .unwrap_or(0)
    };
    LimitCounters {
        oom_kills: events("memory.events", "oom_kill"),
        pids_refused: events("pids.events", "max"),
    }
}

/// Which of `wanted` a `cgroup.controllers` text lists.
pub fn available<'a>(controllers: &str, wanted: &[&'a str]) -> Vec<&'a str> {
    let listed: Vec<&str> = controllers.split_whitespace().collect();
    wanted
        .iter()
        .copied()
        .filter(|c| listed.contains(c))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_and_counters_read_the_v2_files() {
        let dir = tempfile::tempdir().unwrap();
        let put = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        put("memory.stat", "anon 104857600\nfile 8192\nkernel 4096\n");
        put("memory.current", "104869888\n");
        put("memory.peak", "120000000\n");
        put(
            "cpu.stat",
            "usage_usec 2000000\nuser_usec 1500000\nsystem_usec 500000\nnr_periods 0\n",
        );
        put("pids.current", "4\n");
        put(
            "memory.events",
            "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n",
        );
        put("pids.events", "max 9\n");
        let u = usage(dir.path());
        assert_eq!(u.rss, Some(104_857_600));
        assert_eq!(u.cache, Some(8192));
        assert_eq!(u.usage, Some(104_869_888));
        assert_eq!(u.peak, Some(120_000_000));
        assert_eq!(u.cpu_user, Some(Duration::from_millis(1500)));
        assert_eq!(u.cpu_system, Some(Duration::from_millis(500)));
        assert_eq!(u.processes, Some(4));
        let c = counters(dir.path());
        assert_eq!((c.oom_kills, c.pids_refused), (1, 9));
    }

    #[test]
    fn without_memory_peak_the_peak_is_unknown() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("memory.current"), "10\n").unwrap();
        assert_eq!(usage(dir.path()).peak, None);
    }

    #[test]
    fn limits_are_written_and_swap_is_closed_where_it_exists() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("memory.swap.max"), "max\n").unwrap();
        write_memory_limit(dir.path(), Some(64 << 20), Some(32 << 20)).unwrap();
        write_pids_limit(dir.path(), 64).unwrap();
        let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
        assert_eq!(read("memory.max"), "67108864");
        assert_eq!(read("memory.swap.max"), "0");
        assert_eq!(read("memory.low"), "33554432");
        assert_eq!(read("pids.max"), "64");
    }

    #[test]
    fn cpu_shares_map_onto_weights_like_nomad() {
        assert_eq!(cpu_weight(2), 1);
        assert_eq!(cpu_weight(262_144), 10_000);
        assert_eq!(cpu_weight(1024), 39);
        assert_eq!(cpu_weight(0), 100);
    }

    #[test]
    fn available_controllers_are_the_wanted_ones_listed() {
        assert_eq!(
            available("cpuset cpu io memory pids", WANTED_CONTROLLERS),
            vec!["memory", "pids", "cpu"]
        );
        assert!(available("cpu io", &["memory"]).is_empty());
    }
}
