//! The production daemon service on simulated hosts: pushed outcomes over a
//! simulated network, crash and reboot with a surviving disk, and
//! determinism (same seed, same trace).

use std::time::Duration;

use elide_proto::elide::daemon::v1 as pb;
use elide_sim::{channel, DaemonHost, Trace};
use pb::elide_daemon_client::ElideDaemonClient;
use pb::ExecutionState as S;
use tokio_stream::StreamExt;

type Client = ElideDaemonClient<tonic::transport::Channel>;

fn client() -> Client {
    ElideDaemonClient::new(channel("daemon", 7420))
}

/// Retries `f` until it succeeds (the daemon may be down or unreachable).
async fn retry<T, F, Fut>(mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    loop {
        match f().await {
            Ok(v) => return v,
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

fn request(id: &str, code: &str) -> pb::ExecuteSnippetRequest {
    pb::ExecuteSnippetRequest {
        session_id: "node-1".into(),
        execution_id: id.into(),
        language: "python".into(),
        code: code.into(),
        ..Default::default()
    }
}

async fn create_session(c: &mut Client) {
    retry(|| {
        let mut c = c.clone();
        async move {
            c.create_session(pb::CreateSessionRequest {
                session_id: "node-1".into(),
                ..Default::default()
            })
            .await
        }
    })
    .await;
}

/// Watches the session until `id` is terminal; returns its final status.
async fn wait_terminal(c: &mut Client, id: &str, trace: &Trace) -> pb::ExecutionStatus {
    let mut after = 0;
    loop {
        let Ok(resp) = c
            .watch_session(pb::WatchSessionRequest {
                session_id: "node-1".into(),
                after_seq: after,
                heartbeat_interval: None,
            })
            .await
        else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let mut stream = resp.into_inner();
        while let Some(Ok(ev)) = stream.next().await {
            match ev.event {
                Some(pb::session_event::Event::Opened(o)) => trace.record(
                    "client",
                    format!("watch opened on {}", o.daemon_instance_id),
                ),
                Some(pb::session_event::Event::Gap(g)) => {
                    trace.record(
                        "client",
                        format!("gap {}..{}", g.first_missing_seq, g.first_available_seq),
                    );
                    after = 0;
                }
                Some(pb::session_event::Event::Status(s)) => {
                    after = s.seq;
                    trace.record(
                        "client",
                        format!("seq {} {} {:?}", s.seq, s.execution_id, s.state()),
                    );
                    if s.execution_id == id && !matches!(s.state(), S::Queued | S::Running) {
                        return s;
                    }
                }
                Some(pb::session_event::Event::Heartbeat(_)) | None => {}
            }
        }
        trace.record("client", "watch stream broke; reconnecting");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[test]
fn a_snippet_runs_and_its_outcome_is_pushed_over_the_simulated_network() -> turmoil::Result {
    let mut sim = elide_sim::builder(1, Duration::from_secs(60)).build();
    DaemonHost::new("daemon", 7420).install(&mut sim);
    let trace = Trace::default();
    let t = trace.clone();
    sim.client("nomad", async move {
        let mut c = client();
        create_session(&mut c).await;
        let started = tokio::time::Instant::now();
        c.execute_snippet(request("hello", "print hello\nsleep 2s\nexit 3"))
            .await?;
        let status = wait_terminal(&mut c, "hello", &t).await;
        assert_eq!((status.state(), status.exit_code), (S::Exited, Some(3)));
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(2) && took < Duration::from_millis(2100),
            "{took:?}"
        );
        let mut out = c
            .stream_output(pb::StreamOutputRequest {
                session_id: "node-1".into(),
                execution_id: "hello".into(),
                ..Default::default()
            })
            .await?
            .into_inner();
        let mut stdout = Vec::new();
        while let Some(ev) = out.next().await {
            if let Some(pb::output_event::Event::Chunk(chunk)) = ev?.event {
                stdout.extend(chunk.data);
            }
        }
        assert_eq!(stdout, b"hello\n");
        Ok(())
    });
    sim.run()
}

/// A daemon crash while one execution runs and another has finished; the
/// daemon reboots on the same disk. Returns the run's trace.
fn crash_scenario(seed: u64) -> Trace {
    let mut sim = elide_sim::builder(seed, Duration::from_secs(120)).build();
    let daemon = DaemonHost::new("daemon", 7420);
    daemon.install(&mut sim);
    let trace = Trace::default();
    let t = trace.clone();
    sim.client("nomad", async move {
        let mut c = client();
        create_session(&mut c).await;
        c.execute_snippet(request("quick", "print done\nexit 5"))
            .await?;
        c.execute_snippet(request("long", "print started\nsleep 600s"))
            .await?;
        let quick = wait_terminal(&mut c, "quick", &t).await;
        assert_eq!(quick.exit_code, Some(5));
        let long = wait_terminal(&mut c, "long", &t).await;
        assert_eq!(
            (long.state(), long.failure()),
            (S::Failed, pb::FailureReason::DaemonRestarted)
        );
        // The finished one kept its true result across the crash.
        let quick = retry(|| {
            let mut c = c.clone();
            async move {
                c.get_execution_status(pb::GetExecutionStatusRequest {
                    session_id: "node-1".into(),
                    execution_id: "quick".into(),
                })
                .await
            }
        })
        .await
        .into_inner()
        .status
        .unwrap();
        assert_eq!((quick.state(), quick.exit_code), (S::Exited, Some(5)));
        t.record(
            "client",
            format!(
                "final: quick={:?} long={:?} ({})",
                quick.state(),
                long.state(),
                long.message
            ),
        );
        Ok(())
    });
    let (mut crashed, mut rebooted) = (false, false);
    loop {
        let done = sim.step().expect("simulation step");
        let now = sim.elapsed();
        if !crashed && now >= Duration::from_secs(5) {
            trace.record_at(now, "world", "crash daemon");
            sim.crash("daemon");
            crashed = true;
        }
        if crashed && !rebooted && now >= Duration::from_secs(8) {
            trace.record_at(now, "world", "boot daemon");
            sim.bounce("daemon");
            rebooted = true;
        }
        if done {
            break;
        }
    }
    assert_eq!(daemon.boots(), 2);
    trace
}

#[test]
fn a_daemon_crash_loses_nothing_silently_and_replays_identically() {
    let first = crash_scenario(7);
    let second = crash_scenario(7);
    assert_eq!(first.lines(), second.lines(), "same seed, same trace");
    assert_eq!(first.hash(), second.hash());
    let lines = first.lines();
    assert!(lines.iter().any(|l| l.contains("crash daemon")));
    assert!(
        lines.iter().any(|l| l.contains("long Failed")),
        "{lines:#?}"
    );
    let other = crash_scenario(8);
    assert_ne!(first.hash(), other.hash(), "the seed must matter");
}
