//! `completion_latency`: from the moment a program exits to the moment the
//! driver delivers its WaitTask result, through the real plugin binary and a
//! real daemon over a Unix socket. The driver's pushed watch stream against
//! the polling mode at the original design's 1 s interval.
//!
//! The snippet prints its wall-clock time in nanoseconds and leaves with
//! `os._exit` (no interpreter shutdown), so the measured interval starts at
//! its exit; it ends when WaitTask returns.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use criterion::{criterion_group, criterion_main, Criterion};
use elide_e2e::cty::{PluginConfig, TaskConfig};
use elide_e2e::daemon::Daemon;
use elide_e2e::nomad::{Alloc, NomadHost};

const SNIPPET: &str = "import os, time\nprint(time.time_ns(), flush=True)\nos._exit(0)\n";
const LIMIT: Duration = Duration::from_secs(30);

/// One task: its exit-to-result latency.
async fn one(host: &mut NomadHost) -> Duration {
    let alloc = Alloc::new("latency");
    let task = alloc.task_config(&TaskConfig::code("python", SNIPPET));
    host.start(task.clone()).await.expect("StartTask");
    let exit = host.wait(&task.id, LIMIT).await;
    let delivered = SystemTime::now();
    assert_eq!(exit.result.expect("result").exit_code, 0);
    let printed: u64 = alloc
        .stdout
        .text_after_eofs(1, LIMIT)
        .trim()
        .parse()
        .expect("timestamp");
    host.destroy(&task.id).await;
    delivered
        .duration_since(UNIX_EPOCH + Duration::from_nanos(printed))
        .unwrap_or_default()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let daemon = rt.block_on(Daemon::start());
    let mut group = c.benchmark_group("completion_latency");
    group.sample_size(10);
    for (mode, interval) in [("watch", None), ("poll_1s", Some("1s"))] {
        let config = PluginConfig {
            status_mode: Some(if interval.is_some() { "poll" } else { "watch" }.into()),
            poll_interval: interval.map(String::from),
            ..PluginConfig::for_socket(&daemon.socket)
        };
        let mut host = rt.block_on(NomadHost::configured(&config));
        if interval.is_some() {
            group.measurement_time(Duration::from_secs(20));
        }
        group.bench_function(mode, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total += one(&mut host).await;
                    }
                    total
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
