//! cgroup v1: one directory per controller. The daemon uses `memory` (the
//! limit, usage, peak and the OOM kill counter), `pids` (the process limit)
//! and `cpuacct` (CPU time); Nomad's task cgroups add `cpu`, `cpuset` and
//! `freezer` when it passes one.

use std::path::Path;
use std::time::Duration;

use super::{keyed, read_u64, write, CgroupError, CgroupUsage, LimitCounters};

/// Controllers the daemon makes a per-execution cgroup in, when mounted.
pub const OWNED_CONTROLLERS: &[&str] = &["memory", "pids", "cpuacct"];

/// Writes the hard (and optional soft) memory limit.
pub fn write_memory_limit(
    dir: &Path,
    hard: Option<u64>,
    soft: Option<u64>,
) -> Result<(), CgroupError> {
    if let Some(hard) = hard {
        write(dir, "memory.limit_in_bytes", &hard.to_string())?;
    }
    if let Some(soft) = soft {
        write(dir, "memory.soft_limit_in_bytes", &soft.to_string())?;
    }
    Ok(())
}

/// Writes the process limit.
pub fn write_pids_limit(dir: &Path, limit: u64) -> Result<(), CgroupError> {
    write(dir, "pids.max", &limit.to_string())
}

/// Memory and CPU use of the cgroups, each from the controller that has it.
pub fn usage(memory: Option<&Path>, cpuacct: Option<&Path>, pids: Option<&Path>) -> CgroupUsage {
    let mut usage = CgroupUsage::default();
    if let Some(dir) = memory {
        if let Ok(stat) = std::fs::read_to_string(dir.join("memory.stat")) {
            // The `total_` figures include child cgroups (none here, but a
            // snippet could not make any either: it is not root over them).
            usage.rss = keyed(&stat, "total_rss").or_else(|| keyed(&stat, "rss"));
            usage.cache = keyed(&stat, "total_cache").or_else(|| keyed(&stat, "cache"));
        }
        usage.usage = read_u64(dir, "memory.usage_in_bytes");
        usage.peak = read_u64(dir, "memory.max_usage_in_bytes");
    }
    if let Some(dir) = cpuacct {
        // Nanoseconds, where the kernel has them; else USER_HZ ticks.
        match (
            read_u64(dir, "cpuacct.usage_user"),
            read_u64(dir, "cpuacct.usage_sys"),
        ) {
            (Some(user), Some(system)) => {
                usage.cpu_user = Some(Duration::from_nanos(user));
                usage.cpu_system = Some(Duration::from_nanos(system));
            }
            _ => {
                if let Ok(stat) = std::fs::read_to_string(dir.join("cpuacct.stat")) {
                    let hz = procfs::ticks_per_second().max(1);
                    let ticks =
                        |k| keyed(&stat, k).map(|t| Duration::from_secs_f64(t as f64 / hz as f64));
                    usage.cpu_user = ticks("user");
                    usage.cpu_system = ticks("system");
                }
            }
        }
    }
    if let Some(dir) = pids {
        usage.processes = read_u64(dir, "pids.current");
    }
    usage
}

/// The kernel's OOM kills and refused forks so far.
pub fn counters(memory: Option<&Path>, pids: Option<&Path>) -> LimitCounters {
    LimitCounters {
        oom_kills: memory
            .and_then(|dir| std::fs::read_to_string(dir.join("memory.oom_control")).ok())
            .and_then(|text| oom_kills(&text))
            .unwrap_or(0),
        pids_refused: pids
            .and_then(|dir| std::fs::read_to_string(dir.join("pids.events")).ok())
            .and_then(|text| keyed(&text, "max"))
            .unwrap_or(0),
    }
}

/// `oom_kill N` of `memory.oom_control` (kernel 4.13 and later).
pub fn oom_kills(oom_control: &str) -> Option<u64> {
    keyed(oom_control, "oom_kill")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oom_control_counts_kills() {
        let text = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        assert_eq!(oom_kills(text), Some(2));
        assert_eq!(oom_kills("oom_kill_disable 0\nunder_oom 0\n"), None);
    }

    #[test]
    fn usage_reads_the_v1_files() {
        let memory = tempfile::tempdir().unwrap();
        let cpuacct = tempfile::tempdir().unwrap();
        let pids = tempfile::tempdir().unwrap();
        let put = |dir: &tempfile::TempDir, name: &str, text: &str| {
            std::fs::write(dir.path().join(name), text).unwrap()
        };
        put(
            &memory,
            "memory.stat",
            "cache 4096\nrss 8192\ntotal_cache 12288\ntotal_rss 104857600\n",
        );
        put(&memory, "memory.usage_in_bytes", "104869888\n");
        put(&memory, "memory.max_usage_in_bytes", "110000000\n");
        put(&cpuacct, "cpuacct.usage_user", "1500000000\n");
        put(&cpuacct, "cpuacct.usage_sys", "250000000\n");
        put(&pids, "pids.current", "3\n");
        let u = usage(Some(memory.path()), Some(cpuacct.path()), Some(pids.path()));
        assert_eq!(u.rss, Some(104_857_600));
        assert_eq!(u.cache, Some(12_288));
        assert_eq!(u.usage, Some(104_869_888));
        assert_eq!(u.peak, Some(110_000_000));
        assert_eq!(u.cpu_user, Some(Duration::from_millis(1500)));
        assert_eq!(u.cpu_system, Some(Duration::from_millis(250)));
        assert_eq!(u.processes, Some(3));

        put(
            &memory,
            "memory.oom_control",
            "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
        );
        put(&pids, "pids.events", "max 17\n");
        let c = counters(Some(memory.path()), Some(pids.path()));
        assert_eq!((c.oom_kills, c.pids_refused), (1, 17));
    }

    #[test]
    fn limits_are_written_in_bytes() {
        let dir = tempfile::tempdir().unwrap();
        write_memory_limit(dir.path(), Some(64 << 20), Some(32 << 20)).unwrap();
        write_pids_limit(dir.path(), 128).unwrap();
        let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
        assert_eq!(read("memory.limit_in_bytes"), "67108864");
        assert_eq!(read("memory.soft_limit_in_bytes"), "33554432");
        assert_eq!(read("pids.max"), "128");
    }
}
