//! `rpc_roundtrip`: one unary daemon call (Health) over the Unix socket,
//! against the physical floor: a raw Unix-socket ping-pong of the same
//! payload size, measured in the same run.

use criterion::{criterion_group, criterion_main, Criterion};
use elide_benches::BenchDaemon;
use elide_proto::elide::daemon::v1 as pb;
use prost_free_len::encoded_len;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod prost_free_len {
    /// Bytes of a Health response on the wire (protobuf body only).
    pub fn encoded_len(r: &elide_proto::elide::daemon::v1::HealthResponse) -> usize {
        use prost::Message;
        r.encoded_len()
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let daemon = rt.block_on(BenchDaemon::start());
    let mut client = rt.block_on(daemon.client());
    let sample = rt
        .block_on(client.health(pb::HealthRequest {}))
        .unwrap()
        .into_inner();
    let payload = encoded_len(&sample).max(1);

    let mut group = c.benchmark_group("rpc_roundtrip");
    group.bench_function("daemon_health_unary", |b| {
        b.to_async(&rt).iter(|| {
            let mut client = client.clone();
            async move { client.health(pb::HealthRequest {}).await.unwrap() }
        })
    });

    // The floor: a connected socket pair with an echo task on the other end.
    let (mut near, far) = rt.block_on(async { tokio::net::UnixStream::pair().unwrap() });
    rt.spawn(async move {
        let mut far = far;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match far.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if far.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    let message = vec![7u8; payload];
    group.bench_function(format!("raw_unix_pingpong_{payload}B"), |b| {
        b.iter(|| {
            rt.block_on(async {
                near.write_all(&message).await.unwrap();
                let mut got = 0;
                let mut buf = vec![0u8; payload];
                while got < payload {
                    got += near.read(&mut buf[got..]).await.unwrap();
                }
            })
        })
    });
    group.finish();
    drop(daemon);
}

criterion_group!(benches, bench);
criterion_main!(benches);
