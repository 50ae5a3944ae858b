//! `start_latency`: from asking for a snippet to its first output byte.
//! Through the daemon (ExecuteSnippet, then StreamOutput) against spawning the
//! interpreter directly, which is what one process per task (raw_exec) does.
//! `daemon_python` is a cold start (a fresh `python3`); `daemon_python_warm`
//! is a fork of the python zygote, in a second daemon that differs only in
//! having warm python on.

use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{criterion_group, criterion_main, Criterion};
use elide_benches::BenchDaemon;
use elide_proto::elide::daemon::v1 as pb;
use pb::elide_daemon_client::ElideDaemonClient;
use tokio::io::AsyncReadExt;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

const PYTHON: &str = "print('x')";
const JAVASCRIPT: &str = "console.log('x')";

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
    rt.block_on(create_bench_session(client.clone()));
    let counter = AtomicU64::new(0);

    let mut group = c.benchmark_group("start_latency");
    group.sample_size(20);
    for (language, code, program, flag) in [
        ("python", PYTHON, "python3", "-c"),
        ("javascript", JAVASCRIPT, "node", "-e"),
    ] {
        group.bench_function(format!("daemon_{language}"), |b| {
            b.to_async(&rt)
                .iter(|| first_output_byte(client.clone(), &counter, language, code))
        });
        // The same real executable the daemon runs (not a PATH wrapper such
        // as a pyenv shim), timed to the first byte like the daemon case.
        let real = real_executable(program);
        group.bench_function(format!("direct_spawn_{language}"), |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let real = real.clone();
                async move {
                    let mut total = std::time::Duration::ZERO;
                    for _ in 0..iters {
                        let started = std::time::Instant::now();
                        let mut child = tokio::process::Command::new(&real)
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
/// executions fork from the zygote.
fn bench_python_warm(
    rt: &tokio::runtime::Runtime,
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    counter: &AtomicU64,
) {
    let daemon = rt.block_on(BenchDaemon::start_python(true));
    let client = rt.block_on(daemon.client());
    rt.block_on(create_bench_session(client.clone()));
    group.bench_function("daemon_python_warm", |b| {
        b.to_async(rt)
            .iter(|| first_output_byte(client.clone(), counter, "python", PYTHON))
    });
    drop(daemon);
}

async fn create_bench_session(mut client: ElideDaemonClient<Channel>) {
    client
        .create_session(pb::CreateSessionRequest {
            session_id: "bench".into(),
            config: Some(pb::SessionConfig {
                idle_timeout: Some(Default::default()),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
}

/// Submits one snippet and waits for its first output chunk.
async fn first_output_byte(
    mut client: ElideDaemonClient<Channel>,
    counter: &AtomicU64,
    language: &str,
    code: &str,
) {
    let id = format!("e{}", counter.fetch_add(1, Ordering::Relaxed));
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

criterion_group!(benches, bench);
criterion_main!(benches);
