//! `start_latency`: from asking for a snippet to its first output byte.
//! Through the daemon (ExecuteSnippet, then StreamOutput) against spawning the
//! interpreter directly, which is what one process per task (raw_exec) does,
//! and warm starts (a pre-started interpreter) against cold ones (a fresh
//! interpreter per program) in the same daemon code. `daemon_python` is a
//! cold start (a fresh `python3`); `daemon_python_warm` is a fork of the
//! python zygote, in a second daemon that differs only in having warm python
//! on. `daemon_warm_javascript` and `daemon_warm_typescript` start on a
//! pooled node worker, against `daemon_javascript` and `daemon_typescript`
//! on a fresh node.

use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{criterion_group, criterion_main, Criterion};
use elide_benches::BenchDaemon;
use elide_daemon::ProcessRuntimeConfig;
use elide_proto::elide::daemon::v1 as pb;
use pb::elide_daemon_client::ElideDaemonClient;
use tokio::io::AsyncReadExt;
use tokio_stream::StreamExt;

type Client = ElideDaemonClient<tonic::transport::Channel>;

const PYTHON: &str = "print('x')";
const JAVASCRIPT: &str = "console.log('x')";
const TYPESCRIPT: &str = "const x: string = 'x';\nconsole.log(x);";
/// Node workers the warm daemon keeps booted.
const NODE_POOL: usize = 2;

/// Submits `code` as execution `id` and waits for its first output chunk.
async fn first_output(client: &mut Client, language: &str, code: &str, id: String) {
    client
        .execute_snippet(pb::ExecuteSnippetRequest {
            session_id: "bench".into(),
            execution_id: id.clone(),
            language: language.into(),
            code: code.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut out = client
        .stream_output(pb::StreamOutputRequest {
            session_id: "bench".into(),
            execution_id: id,
            follow: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    while let Some(ev) = out.next().await {
        if let Some(pb::output_event::Event::Chunk(_)) = ev.unwrap().event {
            break;
        }
    }
}

/// Opens the session every benchmark execution runs in. It grants every
/// intrinsic the kernel could deny, so programs run without sandbox rules
/// and javascript can start on a pooled worker (which serves only such
/// programs); the sandbox's own cost is measured apart (README,
/// "Benchmarks").
async fn open_bench_session(client: &mut Client) {
    client
        .create_session(pb::CreateSessionRequest {
            session_id: "bench".into(),
            config: Some(pb::SessionConfig {
                idle_timeout: Some(Default::default()),
                enabled_intrinsics: ["console", "env", "fs.read", "fs.write", "net", "subprocess"]
                    .map(String::from)
                    .to_vec(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
}

/// The interpreter's own executable path, as the daemon resolves it.
fn real_executable(program: &str) -> String {
    let ask = match program {
        "python3" => ["-c", "import sys; print(sys.executable)"],
        _ => ["-p", "process.execPath"],
    };
    let out = std::process::Command::new(program)
        .args(ask)
        .output()
        .expect("interpreter");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let daemon = rt.block_on(BenchDaemon::start());
    let client = rt.block_on(daemon.client());
    rt.block_on(open_bench_session(&mut client.clone()));
    let counter = AtomicU64::new(0);

    let mut group = c.benchmark_group("start_latency");
    group.sample_size(20);
    for (language, code, program, flag) in [
        ("python", PYTHON, "python3", "-c"),
        ("javascript", JAVASCRIPT, "node", "-e"),
    ] {
        group.bench_function(format!("daemon_{language}"), |b| {
            b.to_async(&rt).iter(|| {
                let mut client = client.clone();
                let id = format!("e{}", counter.fetch_add(1, Ordering::Relaxed));
                async move { first_output(&mut client, language, code, id).await }
            })
        });
        // The same real executable the daemon runs (not a PATH wrapper such
        // as a pyenv shim), timed to the first byte like the daemon case,
        // with an environment like the daemon gives a program: the bench's
        // own may hold settings that slow an interpreter's start (node reads
        // every certificate in NODE_EXTRA_CA_CERTS at boot: +40 ms here).
        let real = real_executable(program);
        group.bench_function(format!("direct_spawn_{language}"), |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let real = real.clone();
                async move {
                    let mut total = std::time::Duration::ZERO;
                    for _ in 0..iters {
                        let started = std::time::Instant::now();
                        let mut child = tokio::process::Command::new(&real)
                            .env_clear()
                            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
                            .arg(flag)
                            .arg(code)
                            .stdout(Stdio::piped())
                            .stdin(Stdio::null())
                            .spawn()
                            .unwrap();
                        let mut first = [0u8; 1];
                        child
                            .stdout
                            .take()
                            .unwrap()
                            .read_exact(&mut first)
                            .await
                            .unwrap();
                        total += started.elapsed();
                        child.wait().await.unwrap();
                    }
                    total
                }
            })
        });
    }
    bench_python_warm(&rt, &mut group, &counter);
    group.finish();
    drop(daemon);
}

/// Warm python: the same measurement through a daemon whose python
/// executions fork from the zygote (and which differs from the first only
/// in that).
fn bench_python_warm(
    rt: &tokio::runtime::Runtime,
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    counter: &AtomicU64,
) {
    let daemon = rt.block_on(BenchDaemon::start_python(true));
    let client = rt.block_on(daemon.client());
    rt.block_on(open_bench_session(&mut client.clone()));
    group.bench_function("daemon_python_warm", |b| {
        b.to_async(rt).iter(|| {
            let mut client = client.clone();
            let id = format!("p{}", counter.fetch_add(1, Ordering::Relaxed));
            async move { first_output(&mut client, "python", PYTHON, id).await }
        })
    });
    drop(daemon);
}

/// Javascript and typescript: warm (a pooled node worker waiting) against
/// cold (a fresh node) in two daemons of the same code, one with the pool
/// and one without. Each warm sample starts with the pool full, as a
/// program arriving at a daemon that is not flooded finds it.
fn bench_node_warm_and_cold(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let warm = rt.block_on(BenchDaemon::start_with(ProcessRuntimeConfig {
        node_pool_size: NODE_POOL,
        ..ProcessRuntimeConfig::default()
    }));
    let cold = rt.block_on(BenchDaemon::start());
    let warm_client = rt.block_on(warm.client());
    let cold_client = rt.block_on(cold.client());
    rt.block_on(open_bench_session(&mut warm_client.clone()));
    rt.block_on(open_bench_session(&mut cold_client.clone()));
    let counter = AtomicU64::new(0);
    let next_id = || format!("n{}", counter.fetch_add(1, Ordering::Relaxed));

    let mut group = c.benchmark_group("start_latency");
    group.sample_size(20);
    for (language, code) in [("javascript", JAVASCRIPT), ("typescript", TYPESCRIPT)] {
        group.bench_function(format!("daemon_warm_{language}"), |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let mut client = warm_client.clone();
                let ids: Vec<String> = (0..iters).map(|_| next_id()).collect();
                async move {
                    let mut total = std::time::Duration::ZERO;
                    for id in ids {
                        wait_node_pool_full(&mut client).await;
                        let started = std::time::Instant::now();
                        first_output(&mut client, language, code, id).await;
                        total += started.elapsed();
                    }
                    total
                }
            })
        });
        if language == "typescript" {
            // The cold javascript row is `daemon_javascript` above.
            group.bench_function(format!("daemon_{language}"), |b| {
                b.to_async(&rt).iter(|| {
                    let mut client = cold_client.clone();
                    let id = next_id();
                    async move { first_output(&mut client, language, code, id).await }
                })
            });
        }
    }
    group.finish();
}

/// Waits until the daemon reports its whole node pool booted and waiting.
async fn wait_node_pool_full(client: &mut Client) {
    let full = format!("node pool of {NODE_POOL} per daemon, {NODE_POOL} ready");
    loop {
        let caps = client
            .get_capabilities(pb::GetCapabilitiesRequest {})
            .await
            .unwrap()
            .into_inner();
        if caps
            .languages
            .iter()
            .any(|l| l.language == "javascript" && l.start_detail.contains(&full))
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

criterion_group!(benches, bench, bench_node_warm_and_cold);
criterion_main!(benches);
