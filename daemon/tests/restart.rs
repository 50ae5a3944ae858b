//! State that survives a daemon restart: sessions, finished results and
//! their output; executions lost in a crash are reported, never forgotten.

mod support;

use elide_e2e::procs::processes_with;
use elide_proto::elide::daemon::v1 as pb;
use pb::ExecutionState as S;
use support::*;

#[rstest::rstest]
#[tokio::test]
async fn after_a_crash_finished_results_survive_and_lost_ones_are_reported(
    #[values(Start::Warm, Start::Cold)] start: Start,
) {
    let mut d = Daemon::start_as(start, &[]).await;
    let mut c = d.client().await;
    create_session(&mut c, "s", Default::default()).await;
    execute(
        &mut c,
        snippet(
            "s",
            "done",
            "python",
            "import sys\nprint('finished output')\nsys.exit(5)",
        ),
    )
    .await;
    assert_eq!(wait_terminal(&mut c, "s", "done").await.exit_code, Some(5));
    execute(
        &mut c,
        snippet(
            "s",
            "longrun",
            "python",
            "import time\nprint('started', flush=True)\ntime.sleep(60)",
        ),
    )
    .await;
    let before = c
        .health(pb::HealthRequest {})
        .await
        .unwrap()
        .into_inner()
        .instance_id;
    let last_seq = c
        .get_session(pb::GetSessionRequest {
            session_id: "s".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap()
        .last_seq;
    // Make sure it is really running before the crash.
    wait_state(&mut c, "s", "longrun", S::Running).await;
    // The interpreter's command line names its snippet file (warm runs
    // show the same command line as cold ones).
    let longrun = d
        .state_dir()
        .join("scratch/s/longrun/")
        .display()
        .to_string();
    for _ in 0..200 {
        if !processes_with(&longrun).is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(
        !processes_with(&longrun).is_empty(),
        "the program should run before the crash"
    );

    d.crash_and_restart().await;
    let mut c = d.client().await;
    let after = c
        .health(pb::HealthRequest {})
        .await
        .unwrap()
        .into_inner()
        .instance_id;
    assert_ne!(before, after, "a restart must change the instance id");
    // The program died with the daemon (no unsupervised orphan).
    for _ in 0..100 {
        if processes_with(&longrun).is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        processes_with(&longrun).is_empty(),
        "the execution outlived its daemon"
    );

    let done = status_of(&mut c, "s", "done").await;
    assert_eq!((done.state(), done.exit_code), (S::Exited, Some(5)));
    let out = read_output(&mut c, "s", "done", (0, 0), false).await;
    assert_eq!(out.stdout, b"finished output\n");
    assert!(out.end.is_some());

    let lost = status_of(&mut c, "s", "longrun").await;
    assert_eq!(lost.state(), S::Failed);
    assert_eq!(lost.failure(), pb::FailureReason::DaemonRestarted);
    assert!(lost.message.contains("restarted"), "{}", lost.message);
    assert!(
        lost.seq > last_seq,
        "sequence numbers never go back: {} <= {last_seq}",
        lost.seq
    );

    // Resubmitting the lost execution does not run it again.
    let again = c
        .execute_snippet(snippet(
            "s",
            "longrun",
            "python",
            "import time\nprint('started', flush=True)\ntime.sleep(60)",
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!again.created);
    assert_eq!(again.status.unwrap().state(), S::Failed);

    // A watcher resuming from its old cursor learns about the loss.
    let mut watch = c
        .watch_session(pb::WatchSessionRequest {
            session_id: "s".into(),
            after_seq: last_seq,
            heartbeat_interval: None,
        })
        .await
        .unwrap()
        .into_inner();
    use tokio_stream::StreamExt;
    let opened = watch.next().await.unwrap().unwrap();
    let Some(pb::session_event::Event::Opened(o)) = opened.event else {
        panic!("{opened:?}")
    };
    assert_eq!(o.daemon_instance_id, after);
    let mut saw_loss = false;
    while let Ok(Some(ev)) =
        tokio::time::timeout(std::time::Duration::from_secs(2), watch.next()).await
    {
        match ev.unwrap().event.unwrap() {
            pb::session_event::Event::Status(s) if s.execution_id == "longrun" => {
                saw_loss = s.state() == S::Failed;
                break;
            }
            pb::session_event::Event::Gap(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(saw_loss);
}
