//! The daemon's state machine driven directly, with the scripted runtime on
//! a paused tokio clock: no processes, no sockets, fully deterministic.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use elide_daemon::{
    is_terminal, DaemonError, Limits, MemoryStore, RegistryDeps, ScriptedRuntime, SequentialIds,
    SessionRegistry, StateStore,
};
use elide_proto::elide::daemon::v1 as pb;
use elide_proto::wall_clock::TokioClock;
use nix::sys::signal::Signal;
use pb::ExecutionState as S;

fn open(store: Arc<MemoryStore>, limits: Limits, ids: &str) -> Arc<SessionRegistry> {
    SessionRegistry::open(RegistryDeps {
        runtime: Arc::new(ScriptedRuntime::default()),
        store: store as Arc<dyn StateStore>,
        clock: Arc::new(TokioClock::starting_at(SystemTime::UNIX_EPOCH)),
        ids: Arc::new(SequentialIds::new(ids)),
        limits,
        scratch_dir: std::env::temp_dir()
            .join(format!("elide-registry-test-{}", std::process::id())),
        version: "test".into(),
    })
    .unwrap()
}

async fn session(reg: &SessionRegistry, id: &str, config: pb::SessionConfig) {
    reg.create_session(pb::CreateSessionRequest {
        session_id: id.into(),
        config: Some(config),
        ..Default::default()
    })
    .await
    .unwrap();
}

async fn run(
    reg: &Arc<SessionRegistry>,
    session: &str,
    id: &str,
    code: &str,
) -> pb::ExecutionStatus {
    reg.execute(pb::ExecuteSnippetRequest {
        session_id: session.into(),
        execution_id: id.into(),
        language: "python".into(),
        code: code.into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .0
}

/// Lets virtual time pass (tasks run meanwhile).
async fn advance(d: Duration) {
    tokio::time::sleep(d).await;
}

fn status(reg: &SessionRegistry, session: &str, id: &str) -> pb::ExecutionStatus {
    reg.status(session, id).unwrap()
}

#[tokio::test(start_paused = true)]
async fn executions_queue_for_run_slots_in_order() {
    let reg = open(
        Arc::default(),
        Limits {
            max_running_executions: 1,
            ..Limits::default()
        },
        "i",
    );
    session(&reg, "s", Default::default()).await;
    run(&reg, "s", "a", "sleep 5s\nexit 1").await;
    run(&reg, "s", "b", "print b").await;
    advance(Duration::from_secs(1)).await;
    assert_eq!(status(&reg, "s", "a").state(), S::Running);
    assert_eq!(status(&reg, "s", "b").state(), S::Queued);
    advance(Duration::from_secs(5)).await;
    let a = status(&reg, "s", "a");
    let b = status(&reg, "s", "b");
    assert_eq!((a.state(), a.exit_code), (S::Exited, Some(1)));
    assert_eq!((b.state(), b.exit_code), (S::Exited, Some(0)));
    assert!(b.started_at.unwrap().seconds >= a.finished_at.unwrap().seconds);
    // Every change is an event, in order.
    let events = reg.events_after("s", 0).unwrap().events;
    let seen: Vec<(String, S)> = events
        .iter()
        .map(|e| (e.execution_id.clone(), e.state()))
        .collect();
    let want = [
        ("a", S::Queued),
        ("b", S::Queued),
        ("a", S::Running),
        ("a", S::Exited),
        ("b", S::Running),
        ("b", S::Exited),
    ];
    assert_eq!(seen, want.map(|(id, s)| (id.to_string(), s)).to_vec());
}

#[tokio::test(start_paused = true)]
async fn a_queued_execution_can_be_cancelled_and_the_queue_is_bounded() {
    let limits = Limits {
        max_running_executions: 1,
        max_queued_executions: 1,
        ..Limits::default()
    };
    let reg = open(Arc::default(), limits, "i");
    session(&reg, "s", Default::default()).await;
    run(&reg, "s", "a", "sleep 60s").await;
    advance(Duration::from_millis(10)).await;
    run(&reg, "s", "b", "print never").await;
    let err = reg
        .execute(pb::ExecuteSnippetRequest {
            session_id: "s".into(),
            execution_id: "c".into(),
            language: "python".into(),
            code: "print c".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(matches!(err, DaemonError::ResourceExhausted(_)), "{err:?}");
    reg.cancel("s", "b", Signal::SIGTERM, None).unwrap();
    advance(Duration::from_millis(10)).await;
    let b = status(&reg, "s", "b");
    assert_eq!(
        (b.state(), b.exit_code, b.started_at),
        (S::Cancelled, None, None)
    );
    assert_eq!(reg.output("s", "b").unwrap().totals(), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn timeouts_send_sigterm_then_sigkill() {
    let limits = Limits {
        timeout_grace: Duration::from_secs(2),
        ..Limits::default()
    };
    let reg = open(Arc::default(), limits, "i");
    session(
        &reg,
        "s",
        pb::SessionConfig {
            max_timeout: Some(prost_types::Duration {
                seconds: 10,
                nanos: 0,
            }),
            ..Default::default()
        },
    )
    .await;
    run(&reg, "s", "polite", "trap TERM 1s 7\nsleep 60s").await;
    run(&reg, "s", "stubborn", "ignore TERM\nsleep 60s").await;
    advance(Duration::from_millis(11_500)).await;
    let polite = status(&reg, "s", "polite");
    assert_eq!((polite.state(), polite.exit_code), (S::TimedOut, Some(7)));
    assert_eq!(
        status(&reg, "s", "stubborn").state(),
        S::Running,
        "still within the grace"
    );
    advance(Duration::from_secs(1)).await;
    let stubborn = status(&reg, "s", "stubborn");
    assert_eq!(
        (stubborn.state(), stubborn.signal.as_str()),
        (S::TimedOut, "SIGKILL")
    );
}

#[tokio::test(start_paused = true)]
async fn going_over_the_memory_limit_fails_the_execution() {
    let reg = open(Arc::default(), Limits::default(), "i");
    session(
        &reg,
        "s",
        pb::SessionConfig {
            memory_limit_mb: 10,
            ..Default::default()
        },
    )
    .await;
    run(
        &reg,
        "s",
        "hog",
        "memory 5MiB\nsleep 1s\nmemory 50MiB\nsleep 60s",
    )
    .await;
    advance(Duration::from_secs(2)).await;
    let hog = status(&reg, "s", "hog");
    assert_eq!(
        (hog.state(), hog.failure()),
        (S::Failed, pb::FailureReason::MemoryLimitExceeded)
    );
    assert!(hog.message.contains("limit 10 MiB"), "{}", hog.message);
    // Killed as the kernel's OOM killer would at a cgroup limit.
    assert!(hog.message.contains("OOM killer"), "{}", hog.message);
    assert_eq!((hog.signal.as_str(), hog.oom_killed), ("SIGKILL", true));
}

#[tokio::test(start_paused = true)]
async fn idle_sessions_expire_unless_watched_and_their_executions_are_cancelled() {
    let reg = open(Arc::default(), Limits::default(), "i");
    let idle = Some(prost_types::Duration {
        seconds: 30,
        nanos: 0,
    });
    session(
        &reg,
        "gone",
        pb::SessionConfig {
            idle_timeout: idle,
            ..Default::default()
        },
    )
    .await;
    session(
        &reg,
        "watched",
        pb::SessionConfig {
            idle_timeout: idle,
            ..Default::default()
        },
    )
    .await;
    session(
        &reg,
        "forever",
        pb::SessionConfig {
            idle_timeout: Some(Default::default()),
            ..Default::default()
        },
    )
    .await;
    run(&reg, "gone", "e", "sleep 600s").await;
    let guard = reg.watch_session("watched").unwrap();
    advance(Duration::from_secs(20)).await;
    assert!(reg.expire_idle_sessions().is_empty());
    advance(Duration::from_secs(11)).await;
    assert_eq!(reg.expire_idle_sessions(), vec!["gone".to_string()]);
    assert!(matches!(
        reg.get_session("gone"),
        Err(DaemonError::NotFound(_))
    ));
    reg.get_session("watched").unwrap();
    reg.get_session("forever").unwrap();
    // Once the watcher leaves, the idle clock starts again from then.
    drop(guard);
    advance(Duration::from_secs(29)).await;
    assert!(reg.expire_idle_sessions().is_empty());
    advance(Duration::from_secs(2)).await;
    assert_eq!(reg.expire_idle_sessions(), vec!["watched".to_string()]);
}

#[tokio::test(start_paused = true)]
async fn finished_executions_beyond_retention_are_forgotten_oldest_first() {
    let store = Arc::new(MemoryStore::default());
    let limits = Limits {
        max_retained_executions_per_session: 2,
        ..Limits::default()
    };
    let reg = open(store.clone(), limits, "i");
    session(&reg, "s", Default::default()).await;
    for id in ["one", "two", "three"] {
        run(&reg, "s", id, "print x").await;
        advance(Duration::from_millis(10)).await;
    }
    assert!(matches!(
        reg.status("s", "one"),
        Err(DaemonError::NotFound(_))
    ));
    reg.status("s", "two").unwrap();
    reg.status("s", "three").unwrap();
    let stored = store.load().unwrap();
    let ids: Vec<&String> = stored.sessions["s"].1.keys().collect();
    assert_eq!(ids, vec!["three", "two"]);
}

#[tokio::test(start_paused = true)]
async fn a_restarted_registry_reports_lost_executions_and_keeps_finished_ones() {
    let store = Arc::new(MemoryStore::default());
    let first = open(store.clone(), Limits::default(), "first");
    session(&first, "s", Default::default()).await;
    run(&first, "s", "done", "print bye\nexit 3").await;
    run(&first, "s", "running", "sleep 600s").await;
    advance(Duration::from_secs(1)).await;
    let last_seq = first.get_session("s").unwrap().last_seq;
    let old_instance = first.instance_id().to_string();

    let second = open(store, Limits::default(), "second");
    assert_ne!(second.instance_id(), old_instance);
    let done = status(&second, "s", "done");
    assert_eq!((done.state(), done.exit_code), (S::Exited, Some(3)));
    assert_eq!(second.output("s", "done").unwrap().totals(), (4, 0));
    let lost = status(&second, "s", "running");
    assert_eq!(
        (lost.state(), lost.failure()),
        (S::Failed, pb::FailureReason::DaemonRestarted)
    );
    assert!(lost.message.contains(&old_instance), "{}", lost.message);
    assert!(lost.seq > last_seq);
    let events = second.events_after("s", last_seq).unwrap();
    assert_eq!(events.gap, None);
    assert!(events
        .events
        .iter()
        .any(|e| e.execution_id == "running" && is_terminal(e.state())));
}

#[tokio::test(start_paused = true)]
async fn a_forced_delete_returns_only_once_the_execution_is_gone() {
    let store = Arc::new(MemoryStore::default());
    let reg = open(store.clone(), Limits::default(), "i");
    session(&reg, "s", Default::default()).await;
    run(&reg, "s", "e", "ignore TERM\nsleep 600s").await;
    advance(Duration::from_millis(10)).await;
    reg.delete_execution("s", "e", true, Duration::from_secs(10))
        .await
        .unwrap();
    // No await in between: gone from the list and from the disk already.
    assert!(reg.list_executions("s", false).unwrap().0.is_empty());
    assert!(store.load().unwrap().sessions["s"].1.is_empty());
    assert!(matches!(
        reg.status("s", "e"),
        Err(DaemonError::NotFound(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn backpressure_holds_a_flood_without_a_reader_and_a_stop_lifts_it() {
    let limits = Limits {
        output_retention_bytes_per_stream: 256 * 1024,
        ..Limits::default()
    };
    let reg = open(Arc::default(), limits, "i");
    session(&reg, "s", Default::default()).await;
    reg.execute(pb::ExecuteSnippetRequest {
        session_id: "s".into(),
        execution_id: "flood".into(),
        language: "python".into(),
        code: "flood 10MiB".into(),
        output_backpressure: true,
        ..Default::default()
    })
    .await
    .unwrap();
    advance(Duration::from_secs(5)).await;
    let held = status(&reg, "s", "flood");
    assert_eq!(held.state(), S::Running);
    assert!(
        held.stdout_bytes <= 128 * 1024 + 64 * 1024,
        "{}",
        held.stdout_bytes
    );
    // A reader's progress lets more through.
    let log = reg.output("s", "flood").unwrap();
    log.mark_sent(elide_daemon::Stream::Stdout, held.stdout_bytes);
    advance(Duration::from_millis(10)).await;
    assert!(status(&reg, "s", "flood").stdout_bytes > held.stdout_bytes);
    // A stop is never held back by backpressure.
    reg.cancel("s", "flood", Signal::SIGKILL, Some(Duration::ZERO))
        .unwrap();
    advance(Duration::from_secs(1)).await;
    assert_eq!(status(&reg, "s", "flood").state(), S::Cancelled);
}
