//! `log_throughput`: bytes per second from a snippet's stdout, through the
//! daemon and the driver, to the bytes read out of Nomad's FIFO.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use elide_e2e::cty::{PluginConfig, TaskConfig};
use elide_e2e::daemon::Daemon;
use elide_e2e::nomad::{Alloc, NomadHost};

const MIB: usize = 1024 * 1024;
const TOTAL_MIB: usize = 64;
const LIMIT: Duration = Duration::from_secs(60);

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let daemon = rt.block_on(Daemon::start());
    let mut host = rt.block_on(NomadHost::configured(&PluginConfig::for_socket(
        &daemon.socket,
    )));
    let code = format!(
        "import sys\nchunk = b'x' * {MIB}\nfor _ in range({TOTAL_MIB}):\n    sys.stdout.buffer.write(chunk)\nsys.stdout.flush()\n"
    );
    let mut group = c.benchmark_group("log_throughput");
    group.sample_size(10);
    group.throughput(Throughput::Bytes((TOTAL_MIB * MIB) as u64));
    group.bench_function(format!("stdout_to_fifo_{TOTAL_MIB}MiB"), |b| {
        b.iter(|| {
            rt.block_on(async {
                let alloc = Alloc::new("flood");
                let task = alloc.task_config(&TaskConfig::code("python", &code));
                host.start(task.clone()).await.expect("StartTask");
                let exit = host.wait(&task.id, LIMIT).await;
                assert_eq!(exit.result.expect("result").exit_code, 0);
                alloc.stdout.wait_for_eofs(1, LIMIT);
                assert_eq!(
                    alloc.stdout.len(),
                    TOTAL_MIB * MIB,
                    "every byte reaches the FIFO"
                );
                host.destroy(&task.id).await;
            })
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
