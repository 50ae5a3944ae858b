//! `density`: memory (RSS) of the daemon and of the driver beyond the
//! interpreters themselves, per running task, with 10, 100 and 500 sleeping
//! snippets running at once through the real plugin and daemon. Then python
//! density: total PSS (`/proc/PID/smaps_rollup`) of the daemon and all its
//! descendants with 50 sleeping python snippets, warm (zygote forks) and
//! cold, against 50 directly spawned `python3` processes.
//!
//! Memory is counted, not timed, so this is a plain program rather than a
//! criterion timing loop. Under `cargo bench` (argument `--bench`) it runs
//! every size and writes `target/elide-bench/density.json`; under
//! `cargo test --benches` it runs one small size as a smoke test.

use std::time::Duration;

use elide_e2e::cty::{PluginConfig, TaskConfig};
use elide_e2e::daemon::Daemon;
use elide_e2e::nomad::{Alloc, NomadHost};

const LIMIT: Duration = Duration::from_secs(120);
const SNIPPET: &str = "import time\nprint('up', flush=True)\ntime.sleep(600)\n";

/// Resident memory of one process (not its children), in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    kib * 1024
}

struct Sample {
    tasks: usize,
    daemon_per_task: f64,
    driver_per_task: f64,
}

async fn measure(tasks: usize) -> Sample {
    let daemon = Daemon::start().await;
    let mut host = NomadHost::configured(&PluginConfig::for_socket(&daemon.socket)).await;
    // Warm both up with one task, so one-time allocations do not count.
    let warm = Alloc::new("warm");
    let warm_task = warm.task_config(&TaskConfig::code("python", "print('warm')"));
    host.start(warm_task.clone()).await.expect("StartTask");
    host.wait(&warm_task.id, LIMIT).await;
    host.destroy(&warm_task.id).await;
    let (daemon_before, driver_before) = (rss(daemon.pid()), rss(host.plugin.pid()));

    let mut running = Vec::new();
    for i in 0..tasks {
        let alloc = Alloc::new(&format!("sleeper{i}"));
        let task = alloc.task_config(&TaskConfig::code("python", SNIPPET));
        host.start(task.clone()).await.expect("StartTask");
        running.push((alloc, task));
    }
    for (alloc, _) in &running {
        alloc.stdout.wait_for("up\n", LIMIT);
    }
    // Let samplers and forwarders settle into their steady state.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (daemon_after, driver_after) = (rss(daemon.pid()), rss(host.plugin.pid()));
    for (_, task) in &running {
        host.destroy(&task.id).await;
    }
    let per_task = |after: u64, before: u64| after.saturating_sub(before) as f64 / tasks as f64;
    Sample {
        tasks,
        daemon_per_task: per_task(daemon_after, daemon_before),
        driver_per_task: per_task(driver_after, driver_before),
    }
}

/// Proportional set size of one process, in bytes (0 once it is gone).
fn pss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Pss:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

/// `root` and every process below it.
fn tree(root: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok())
            .unwrap_or(0);
        parent_of.push((pid, ppid));
    }
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parent_of
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    found
}

/// Where the PSS of a daemon's process tree goes.
#[derive(Default)]
struct TreePss {
    /// Daemon, zygote, forked children and node workers together.
    total: u64,
    /// The daemon process alone.
    daemon: u64,
    /// Pooled node workers (a fixed cost, however many python snippets run).
    node_pool: u64,
    /// Python processes started by the daemon itself: the zygote, or each
    /// cold `python3`.
    daemon_children_python: u64,
    /// Processes forked by a zygote: the running snippets and one spare.
    forked: u64,
    forked_count: usize,
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim().to_string())
        .unwrap_or_default()
}

fn parent(pid: u32) -> u32 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok())
        })
        .unwrap_or(0)
}

fn tree_pss(root: u32) -> TreePss {
    let mut t = TreePss::default();
    for pid in tree(root) {
        let p = pss(pid);
        t.total += p;
        let parent = parent(pid);
        if pid == root {
            t.daemon += p;
        } else if comm(pid) == "node" {
            t.node_pool += p;
        } else if parent == root {
            t.daemon_children_python += p;
        } else if comm(parent).starts_with("python") {
            t.forked += p;
            t.forked_count += 1;
        } else {
            // Anything a snippet started itself counts with the snippets.
            t.forked += p;
        }
    }
    t
}

/// PSS of a daemon's tree with `n` sleeping python snippets started
/// through it.
async fn daemon_python_pss(n: usize, flags: &[&str]) -> TreePss {
    use elide_proto::elide::daemon::v1 as pb;
    use tokio_stream::StreamExt;
    let daemon = Daemon::start_with(flags).await;
    let mut client = daemon.client().await;
    client
        .create_session(pb::CreateSessionRequest {
            session_id: "density".into(),
            ..Default::default()
        })
        .await
        .expect("CreateSession");
    for i in 0..n {
        client
            .execute_snippet(pb::ExecuteSnippetRequest {
                session_id: "density".into(),
                execution_id: format!("sleeper{i}"),
                language: "python".into(),
                code: SNIPPET.into(),
                ..Default::default()
            })
            .await
            .expect("ExecuteSnippet");
    }
    for i in 0..n {
        let mut out = client
            .stream_output(pb::StreamOutputRequest {
                session_id: "density".into(),
                execution_id: format!("sleeper{i}"),
                follow: true,
                ..Default::default()
            })
            .await
            .expect("StreamOutput")
            .into_inner();
        while let Some(ev) = tokio::time::timeout(LIMIT, out.next())
            .await
            .expect("no output")
        {
            if let Some(pb::output_event::Event::Chunk(_)) = ev.expect("output").event {
                break;
            }
        }
    }
    tree_pss(daemon.pid())
}

/// Total PSS of `n` sleeping `python3` processes spawned directly.
fn direct_python_pss(n: usize) -> u64 {
    use std::io::Read;
    let mut children: Vec<_> = (0..n)
        .map(|_| {
            std::process::Command::new("python3")
                .args(["-u", "-c", SNIPPET])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("python3")
        })
        .collect();
    for child in &mut children {
        let mut up = [0u8; 3];
        child
            .stdout
            .as_mut()
            .expect("stdout")
            .read_exact(&mut up)
            .expect("up");
    }
    let total = children.iter().map(|c| pss(c.id())).sum();
    for mut child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
    total
}

fn python_density(rt: &tokio::runtime::Runtime, n: usize, full: bool) {
    let warm_tree = rt.block_on(daemon_python_pss(n, &[]));
    let cold = rt
        .block_on(daemon_python_pss(n, &["--python-warm=false"]))
        .total;
    let direct = direct_python_pss(n);
    let warm = warm_tree.total;
    let mib = |b: u64| b as f64 / 1024.0 / 1024.0;
    println!("python density: total PSS with {n} sleeping snippets");
    println!(
        "  warm daemon {:.1} MiB, cold daemon {:.1} MiB, {n} direct python3 {:.1} MiB; warm/direct = {:.2}",
        mib(warm),
        mib(cold),
        mib(direct),
        warm as f64 / direct.max(1) as f64
    );
    // The fixed costs against the cost of one more snippet: a forked child
    // against one directly spawned python3.
    let per_child = warm_tree.forked as f64 / warm_tree.forked_count.max(1) as f64;
    let per_direct = direct as f64 / n.max(1) as f64;
    println!(
        "  warm: daemon {:.1} MiB, node pool {:.1} MiB, zygote {:.1} MiB, {} forked children {:.1} MiB ({:.2} MiB each against {:.2} MiB per direct python3: {:.2})",
        mib(warm_tree.daemon),
        mib(warm_tree.node_pool),
        mib(warm_tree.daemon_children_python),
        warm_tree.forked_count,
        mib(warm_tree.forked),
        per_child / 1024.0 / 1024.0,
        per_direct / 1024.0 / 1024.0,
        per_child / per_direct.max(1.0)
    );
    if full {
        elide_benches::write_counted(
            &elide_e2e::binaries::profile_dir(),
            "python_density",
            &[format!(
                "{{\"snippets\":{n},\"warm_daemon_pss_bytes\":{warm},\"cold_daemon_pss_bytes\":{cold},\"direct_pss_bytes\":{direct},\"warm_daemon_self_pss_bytes\":{},\"warm_node_pool_pss_bytes\":{},\"warm_zygote_pss_bytes\":{},\"warm_forked_pss_bytes\":{},\"warm_forked_count\":{}}}",
                warm_tree.daemon,
                warm_tree.node_pool,
                warm_tree.daemon_children_python,
                warm_tree.forked,
                warm_tree.forked_count
            )],
        );
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    // `cargo bench --bench density -- python`: only the python density.
    let python_only = std::env::args().skip(1).any(|a| a == "python");
    let sizes: &[usize] = match (full, python_only) {
        (_, true) => &[],
        (true, false) => &[10, 100, 500],
        (false, false) => &[5],
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut rows = Vec::new();
    println!("density: RSS beyond the interpreters, per running task");
    println!(
        "{:>6} {:>14} {:>14} {:>14}",
        "tasks", "daemon KiB", "driver KiB", "total KiB"
    );
    for &n in sizes {
        let s = rt.block_on(measure(n));
        let total = s.daemon_per_task + s.driver_per_task;
        println!(
            "{:>6} {:>14.1} {:>14.1} {:>14.1}",
            s.tasks,
            s.daemon_per_task / 1024.0,
            s.driver_per_task / 1024.0,
            total / 1024.0
        );
        rows.push(format!(
            "{{\"tasks\":{},\"daemon_bytes_per_task\":{:.0},\"driver_bytes_per_task\":{:.0}}}",
            s.tasks, s.daemon_per_task, s.driver_per_task
        ));
    }
    if full && !python_only {
        elide_benches::write_counted(&elide_e2e::binaries::profile_dir(), "density", &rows);
    }
    python_density(&rt, if full { 50 } else { 5 }, full);
}
