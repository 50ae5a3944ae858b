//! Per-execution cgroups on the real kernel, through a real daemon: each
//! start path (forked python, pooled node worker, cold interpreter) runs in
//! its cgroup from its first line; the kernel's OOM kill of a burst
//! allocation is reported; a fork bomb stops at the process limit; the
//! cgroup is gone after the execution, and one left by a crashed daemon is
//! removed when it restarts.
//!
//! These need a cgroup memory controller the daemon can write (v2 with the
//! memory controller delegated, or v1). Where the host has none, they fail
//! saying what is missing: they never pass without testing anything.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use elide_proto::elide::daemon::v1 as pb;
use pb::ExecutionState as S;
use rstest::rstest;
use support::*;

/// Fails, naming what is missing, unless the daemon enforces memory limits
/// with cgroups.
async fn require_cgroups(c: &mut Client) -> String {
    let caps = c
        .get_capabilities(pb::GetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        caps.memory_limits, "enforced",
        "this host gives the daemon no cgroups, so nothing here can be tested: {}",
        caps.memory_limits_detail
    );
    caps.memory_limits_detail
}

/// The memory cgroup directory of live process `pid`, read from
/// `/proc/PID/cgroup` and `/proc/self/mountinfo` here rather than with the
/// daemon's own parser, so a parser bug cannot hide itself: the v1 `memory`
/// line and the cgroup v1 mount whose options name `memory`, or else the v2
/// `0::` line and the cgroup2 mount.
fn memory_cgroup_of(pid: i32) -> PathBuf {
    let membership = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    // mountinfo: `id parent major:minor root mount-point options ... - fstype source super-options`
    let mount_of = |wanted_fstype: &str, needs_memory: bool| {
        mountinfo.lines().find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mut right = right.split_whitespace();
            let fstype = right.next()?;
            let super_options = right.nth(1).unwrap_or("");
            let memory = super_options.split(',').any(|o| o == "memory");
            (fstype == wanted_fstype && (!needs_memory || memory))
                .then(|| PathBuf::from(left.split_whitespace().nth(4).unwrap()))
        })
    };
    let line_for = |controller: &str| {
        membership.lines().find_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            (controllers.split(',').any(|c| c == controller)).then(|| path.to_string())
        })
    };
    let (mount, path) = match (mount_of("cgroup", true), line_for("memory")) {
        (Some(mount), Some(path)) => (mount, path),
        _ => (
            mount_of("cgroup2", false).expect("a cgroup2 mount"),
            line_for("").expect("a unified `0::` cgroup line"),
        ),
    };
    mount.join(path.trim_start_matches('/'))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_string()
}

/// The memory limit file of a cgroup directory, either version.
fn memory_limit(dir: &Path) -> String {
    if dir.join("memory.limit_in_bytes").exists() {
        read(&dir.join("memory.limit_in_bytes"))
    } else {
        read(&dir.join("memory.max"))
    }
}

/// Prints its pid, then sleeps until cancelled.
fn pid_then_sleep(language: &str) -> &'static str {
    match language {
        "python" => "import os, time\nprint('pid', os.getpid(), flush=True)\ntime.sleep(60)\n",
        _ => "console.log('pid', process.pid); setTimeout(() => {}, 60000);",
    }
}

async fn pid_from_stdout(c: &mut Client, session: &str, id: &str) -> i32 {
    let seen = follow_stdout_until(c, session, id, "its pid", |s| {
        String::from_utf8_lossy(s).contains('\n')
    })
    .await;
    let text = String::from_utf8_lossy(&seen);
    text.split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {text:?}"))
}

/// Waits until `dir` is gone (the daemon removes it once the execution
/// ended).
async fn wait_gone(dir: &Path) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while dir.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} still exists",
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[rstest]
#[case::forked_python(Start::Warm, "python")]
#[case::pooled_node(Start::Warm, "javascript")]
#[case::cold_python(Start::Cold, "python")]
#[case::cold_node(Start::Cold, "javascript")]
#[tokio::test]
async fn the_program_runs_in_its_own_cgroup_which_is_removed_after(
    #[case] start: Start,
    #[case] language: &str,
) {
    let d = Daemon::start_as(start, &[]).await;
    let mut c = d.client().await;
    require_cgroups(&mut c).await;
    create_session(&mut c, "s", every_grant()).await;
    let mut req = snippet("s", "placed", language, pid_then_sleep(language));
    req.overrides = Some(pb::ExecutionOverrides {
        memory_limit_mb: 96,
        ..Default::default()
    });
    execute(&mut c, req).await;
    let pid = pid_from_stdout(&mut c, "s", "placed").await;
    assert_started_on(&mut c, start, language, 1).await;

    let daemon_cgroup = memory_cgroup_of(d.pid() as i32);
    let cgroup = memory_cgroup_of(pid);
    assert_ne!(
        cgroup, daemon_cgroup,
        "the program is in the daemon's cgroup"
    );
    assert!(
        cgroup
            .file_name()
            .unwrap()
            .to_string_lossy()
            .ends_with("_placed"),
        "{}",
        cgroup.display()
    );
    assert!(
        cgroup
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("elide-"),
        "{}",
        cgroup.display()
    );
    assert_eq!(memory_limit(&cgroup), (96u64 << 20).to_string());
    assert!(
        read(&cgroup.join("cgroup.procs"))
            .split_whitespace()
            .any(|p| p == pid.to_string()),
        "pid {pid} not in {}",
        cgroup.display()
    );
    let adj = |pid: i32| read(Path::new(&format!("/proc/{pid}/oom_score_adj")));
    // The program, not the daemon, is the OOM killer's choice.
    assert_eq!(adj(pid), "500");
    assert!(adj(d.pid() as i32).parse::<i32>().unwrap() < 500);

    c.cancel_execution(pb::CancelExecutionRequest {
        session_id: "s".into(),
        execution_id: "placed".into(),
        signal: "SIGTERM".into(),
        grace: secs(5.0),
    })
    .await
    .unwrap();
    wait_terminal(&mut c, "s", "placed").await;
    wait_gone(&cgroup).await;
}

#[rstest]
#[case::forked_python(Start::Warm, "python")]
#[case::pooled_node(Start::Warm, "javascript")]
#[case::cold_python(Start::Cold, "python")]
#[tokio::test]
async fn a_burst_past_the_limit_is_oom_killed_by_the_kernel_and_reported(
    #[case] start: Start,
    #[case] language: &str,
) {
    // A sampler far too slow to see the burst: only the kernel can.
    let d = Daemon::start_as(start, &["--sample-interval-secs", "3600"]).await;
    let mut c = d.client().await;
    require_cgroups(&mut c).await;
    create_session(&mut c, "s", every_grant()).await;
    let code = match language {
        "python" => "blob = b'x' * (400 * 1024 * 1024)\nprint('survived', len(blob))\n",
        _ => "const b = Buffer.alloc(400 * 1024 * 1024, 1); console.log('survived', b.length);",
    };
    let mut req = snippet("s", "burst", language, code);
    req.overrides = Some(pb::ExecutionOverrides {
        memory_limit_mb: 64,
        ..Default::default()
    });
    execute(&mut c, req).await;
    let status = wait_terminal(&mut c, "s", "burst").await;
    assert_eq!(status.state(), S::Failed, "{status:?}");
    assert_eq!(status.failure(), pb::FailureReason::MemoryLimitExceeded);
    assert!(status.oom_killed, "{status:?}");
    assert_eq!(status.signal, "SIGKILL");
    assert!(
        status.message.contains("OOM killer") && status.message.contains("limit 64 MiB"),
        "{}",
        status.message
    );
}

#[rstest]
#[tokio::test]
async fn a_fork_bomb_stops_at_the_process_limit_and_is_reported(
    #[values(Start::Warm, Start::Cold)] start: Start,
) {
    let d = Daemon::start_as(start, &["--pids-limit", "24"]).await;
    let mut c = d.client().await;
    require_cgroups(&mut c).await;
    create_session(&mut c, "s", every_grant()).await;
    // Every process forks forever; the first refusal the original process
    // sees ends it (and with it, the execution and every fork).
    let code = "import os, sys, time\nmain = os.getpid()\nwhile True:\n    try:\n        os.fork()\n    except BlockingIOError:\n        if os.getpid() == main:\n            print('fork refused', flush=True)\n            sys.exit(3)\n        time.sleep(0.05)\n";
    execute(&mut c, snippet("s", "bomb", "python", code)).await;
    let status = wait_terminal(&mut c, "s", "bomb").await;
    assert_eq!(status.state(), S::Exited, "{status:?}");
    assert_eq!(status.exit_code, Some(3), "{status:?}");
    assert!(
        status.message.contains("process limit of 24"),
        "{}",
        status.message
    );
    let out = read_output(&mut c, "s", "bomb", (0, 0), false).await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "fork refused\n");
}

#[tokio::test]
async fn a_cgroup_left_by_a_crashed_daemon_is_removed_at_restart() {
    let mut d = Daemon::start_as(Start::Cold, &[]).await;
    let mut c = d.client().await;
    require_cgroups(&mut c).await;
    create_session(&mut c, "s", every_grant()).await;
    execute(
        &mut c,
        snippet("s", "orphan", "python", pid_then_sleep("python")),
    )
    .await;
    let pid = pid_from_stdout(&mut c, "s", "orphan").await;
    let cgroup = memory_cgroup_of(pid);
    drop(c);

    d.stop_with(nix::sys::signal::Signal::SIGKILL);
    assert!(
        cgroup.exists(),
        "nothing removed {} before the restart",
        cgroup.display()
    );
    d.restart().await;
    // Cleaned before the daemon listens again.
    assert!(
        !cgroup.exists(),
        "{} survived the restart",
        cgroup.display()
    );
    let log = d.log();
    assert!(
        log.contains("removed a cgroup left by an earlier daemon"),
        "{log}"
    );
}

#[rstest]
#[tokio::test]
async fn metrics_come_from_the_cgroup(#[values(Start::Warm, Start::Cold)] start: Start) {
    let d = Daemon::start_as(start, &[]).await;
    let mut c = d.client().await;
    require_cgroups(&mut c).await;
    create_session(&mut c, "s", every_grant()).await;
    let code = "import time\nblob = b'x' * (100 * 1024 * 1024)\nx = sum(range(3_000_000))\nprint('ready', flush=True)\ntime.sleep(30)\n";
    execute(&mut c, snippet("s", "m", "python", code)).await;
    wait_for_stdout(&mut c, "s", "m", "ready").await;
    let m = metrics_of(&mut c, "s", "m").await;
    let mib = |b: u64| b / (1024 * 1024);
    assert!(
        (95..=160).contains(&mib(m.memory_rss_bytes)),
        "rss {} MiB",
        mib(m.memory_rss_bytes)
    );
    assert!(m.memory_usage_bytes >= m.memory_rss_bytes, "{m:?}");
    assert!(m.memory_peak_bytes >= m.memory_usage_bytes, "{m:?}");
    for name in ["cpu_user", "memory_rss", "memory_cache", "memory_usage"] {
        assert!(
            m.measured.iter().any(|n| n == name),
            "{name} in {:?}",
            m.measured
        );
    }
    let cpu = m.cpu_user.unwrap();
    assert!(cpu.seconds > 0 || cpu.nanos > 0, "cpu {cpu:?}");
}

#[tokio::test]
async fn with_cgroups_off_memory_is_sampled_and_capabilities_say_so() {
    let d = Daemon::start_as(Start::Cold, &["--cgroups", "off"]).await;
    let mut c = d.client().await;
    let caps = c
        .get_capabilities(pb::GetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(caps.memory_limits, "sampled");
    assert!(
        caps.memory_limits_detail.contains("--cgroups off"),
        "{}",
        caps.memory_limits_detail
    );
    create_session(&mut c, "s", every_grant()).await;
    execute(
        &mut c,
        snippet("s", "p", "python", pid_then_sleep("python")),
    )
    .await;
    let pid = pid_from_stdout(&mut c, "s", "p").await;
    assert_eq!(memory_cgroup_of(pid), memory_cgroup_of(d.pid() as i32));
}
