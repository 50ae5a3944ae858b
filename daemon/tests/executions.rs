//! Executions through a real daemon process, a real Unix socket and real
//! python3 / node interpreters.

mod support;

use std::time::{Duration, Instant};

use elide_e2e::procs::processes_with;
use elide_proto::elide::daemon::v1 as pb;
use pb::ExecutionState as S;
use rstest::rstest;
use support::*;
use tokio_stream::StreamExt;

#[rstest]
#[tokio::test]
async fn python_and_javascript_say_hello(#[values(Start::Warm, Start::Cold)] start: Start) {
    let d = Daemon::start_as(start, &[]).await;
    let mut c = d.client().await;
    create_session(&mut c, "s", every_grant()).await;
    execute(
        &mut c,
        snippet("s", "py", "python", "print('hello from python')"),
    )
    .await;
    execute(
        &mut c,
        snippet(
            "s",
            "js",
            "javascript",
            "console.log('hello from javascript')",
        ),
    )
    .await;
    for (id, want) in [
        ("py", "hello from python\n"),
        ("js", "hello from javascript\n"),
    ] {
        let status = wait_terminal(&mut c, "s", id).await;
        assert_eq!(status.state(), S::Exited, "{status:?}");
        assert_eq!(status.exit_code, Some(0));
        let out = read_output(&mut c, "s", id, (0, 0), false).await;
        assert_eq!(String::from_utf8_lossy(&out.stdout), want);
        assert!(out.stderr.is_empty());
        assert_eq!(out.end.unwrap().state, S::Exited as i32);
    }
    assert_started_on(&mut c, start, "javascript", 1).await;
}

#[rstest]
#[tokio::test]
async fn exit_code_is_reported_and_stderr_is_kept_apart(
    #[values(Start::Warm, Start::Cold)] start: Start,
) {
    let d = Daemon::start_as(start, &[]).await;
    let mut c = d.client().await;
    create_session(&mut c, "s", every_grant()).await;
    let code = "import sys\nprint('to stdout')\nprint('to stderr', file=sys.stderr)\nsys.exit(7)\n";
    execute(&mut c, snippet("s", "e", "python", code)).await;
    let status = wait_terminal(&mut c, "s", "e").await;
    assert_eq!((status.state(), status.exit_code), (S::Exited, Some(7)));
    let out = read_output(&mut c, "s", "e", (0, 0), false).await;
    assert_eq!(out.stdout, b"to stdout\n");
    assert_eq!(out.stderr, b"to stderr\n");
    let js = "process.stderr.write('bad thing\\n'); process.exit(42)";
    execute(&mut c, snippet("s", "j", "javascript", js)).await;
    let status = wait_terminal(&mut c, "s", "j").await;
    assert_eq!(status.exit_code, Some(42));
    assert_eq!(
        read_output(&mut c, "s", "j", (0, 0), false).await.stderr,
        b"bad thing\n"
    );
    assert_started_on(&mut c, start, "javascript", 1).await;
}

/// The 5 MB the snippet below writes: every byte value, over and over.
fn expected_flood() -> Vec<u8> {
    (0..5_000_000u32).map(|i| (i % 251) as u8).collect()
}

#[rstest]
#[tokio::test]
async fn five_megabytes_arrive_intact_live_and_from_a_middle_offset(
    #[values(Start::Warm, Start::Cold)] start: Start,
) {
    let d = Daemon::start_as(start, &[]).await;
    let mut c = d.client().await;
    create_session(&mut c, "s", every_grant()).await;
    let code = "import sys\ndata = bytes(i % 251 for i in range(5_000_000))\n\
                for i in range(0, len(data), 100_000):\n    sys.stdout.buffer.write(data[i:i+100_000])\n";
    execute(&mut c, snippet("s", "flood", "python", code)).await;
    // Follow from the start while it runs.
    let live = read_output(&mut c, "s", "flood", (0, 0), true).await;
    let want = expected_flood();
    assert!(
        live.dropped.is_empty(),
        "nothing may be dropped within retention: {:?}",
        live.dropped
    );
    assert_eq!(live.stdout.len(), want.len());
    assert!(live.stdout == want, "bytes differ");
    let end = live.end.expect("end marker");
    assert_eq!(end.stdout_bytes, 5_000_000);
    // Resume from the middle after it ended.
    let tail = read_output(&mut c, "s", "flood", (2_500_001, 0), false).await;
    assert!(tail.stdout == want[2_500_001..], "resumed bytes differ");
    let status = wait_terminal(&mut c, "s", "flood").await;
    assert_eq!(status.stdout_bytes, 5_000_000);
}

#[rstest]
#[tokio::test]
async fn bytes_beyond_retention_are_reported_dropped_not_lost_silently(
    #[values(Start::Warm, Start::Cold)] start: Start,
) {
    let d = Daemon::start_as(start, &["--output-retention-bytes", "131072"]).await;
    let mut c = d.client().await;
    create_session(&mut c, "s", every_grant()).await;
    execute(
        &mut c,
        snippet(
            "s",
            "e",
            "python",
            "import sys\nsys.stdout.write('x' * 300000)\n",
        ),
    )
    .await;
    wait_terminal(&mut c, "s", "e").await;
    let out = read_output(&mut c, "s", "e", (0, 0), false).await;
    assert_eq!(out.dropped.len(), 1);
    assert_eq!(
        (out.dropped[0].from_offset, out.dropped[0].to_offset),
        (0, 300000 - 131072)
    );
    assert_eq!(out.stdout, vec![b'x'; 131072]);
    assert_eq!(out.end.unwrap().stdout_bytes, 300000);
}

#[rstest]
#[tokio::test]
async fn with_backpressure_a_program_waits_for_its_reader_instead_of_losing_output(
    #[values(Start::Warm, Start::Cold)] start: Start,
) {
    let d = Daemon::start_as(start, &["--output-retention-bytes", "131072"]).await;
    let mut c = d.client().await;
    create_session(&mut c, "s", every_grant()).await;
    let code = "import sys\nfor i in range(256):\n    sys.stdout.buffer.write(bytes([i]) * 8192)\nprint('done', file=sys.stderr)\n";
    let mut req = snippet("s", "bp", "python", code);
    req.output_backpressure = true;
    execute(&mut c, req).await;
    // Nobody reads yet: the program runs up to the hold point, half the
    // retention (64 KiB)...
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = status_of(&mut c, "s", "bp").await;
        if status.stdout_bytes >= 65536 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline
                && matches!(status.state(), S::Queued | S::Running),
            "the program did not reach the hold point: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ...and stays there: unheld, it would write its 2 MiB in far less
    // than this pause (which no assertion's truth depends on).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = status_of(&mut c, "s", "bp").await;
    assert_eq!(
        held.state(),
        S::Running,
        "the program must be waiting, not finished"
    );
    assert!(
        held.stdout_bytes <= 65536 + 65536,
        "read on without a reader: {}",
        held.stdout_bytes
    );
    // A reader arrives late and still gets every byte.
    let out = read_output(&mut c, "s", "bp", (0, 0), true).await;
    assert!(out.dropped.is_empty(), "{:?}", out.dropped);
    let want: Vec<u8> = (0..256u32)
        .flat_map(|i| std::iter::repeat_n(i as u8, 8192))
        .collect();
    assert!(out.stdout == want, "got {} bytes", out.stdout.len());
    assert_eq!(out.stderr, b"done\n");
    assert_eq!(wait_terminal(&mut c, "s", "bp").await.exit_code, Some(0));
}

#[tokio::test]
async fn a_retention_too_small_for_backpressure_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_elide-daemon"))
        .arg("--socket")
        .arg(dir.path().join("d.sock"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .args(["--output-retention-bytes", "1000"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("two output chunks"));
}

#[rstest]
#[tokio::test]
async fn cancel_ends_a_sleeping_snippet_and_its_children_within_the_grace(
    #[values(Start::Warm, Start::Cold)] start: Start,
) {
    let d = Daemon::start_as(start, &[]).await;
    let mut c = d.client().await;
    create_session(&mut c, "s", every_grant()).await;
    // The warm and cold cases run in parallel in this process: one marker each.
    let marker = format!("child-marker-{}-{start:?}", std::process::id());
    let code = format!(
        "import subprocess, time\nsubprocess.Popen(['python3', '-c', 'import time; time.sleep(60)', '{marker}'])\n\
         print('ready', flush=True)\ntime.sleep(60)\n"
    );
    execute(&mut c, snippet("s", "sleepy", "python", &code)).await;
    wait_for_stdout(&mut c, "s", "sleepy", "ready").await;
    for _ in 0..250 {
        if !processes_with(&marker).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        processes_with(&marker).len(),
        1,
        "the child should be running"
    );
    c.cancel_execution(pb::CancelExecutionRequest {
        session_id: "s".into(),
        execution_id: "sleepy".into(),
        signal: String::new(),
        grace: secs(2.0),
    })
    .await
    .unwrap();
    let status = wait_terminal(&mut c, "s", "sleepy").await;
    assert_eq!(status.state(), S::Cancelled, "{status:?}");
    assert_eq!(status.signal, "SIGTERM");
    assert!(
        processes_with(&marker).is_empty(),
        "a child outlived the execution"
    );
    assert!(
        processes_with(
            &d.state_dir()
                .join("scratch/s/sleepy/")
                .display()
                .to_string()
        )
        .is_empty(),
        "the interpreter outlived the execution"
    );
}

#[rstest]
#[tokio::test]
async fn a_trapped_sigterm_lets_the_snippet_clean_up(
    #[values(Start::Warm, Start::Cold)] start: Start,
) {
    let d = Daemon::start_as(start, &[]).await;
    let mut c = d.client().await;
    create_session(&mut c, "s", every_grant()).await;
    let code = "import signal, sys, time\n\
                def bye(*_):\n    print('cleaning up', flush=True)\n    sys.exit(0)\n\
                signal.signal(signal.SIGTERM, bye)\nprint('ready', flush=True)\ntime.sleep(60)\n";
    execute(&mut c, snippet("s", "trap", "python", code)).await;
    wait_for_stdout(&mut c, "s", "trap", "ready\n").await;
    c.cancel_execution(pb::CancelExecutionRequest {
        session_id: "s".into(),
        execution_id: "trap".into(),
        signal: "TERM".into(),
        grace: secs(10.0),
    })
    .await
    .unwrap();
    let status = wait_terminal(&mut c, "s", "trap").await;
    assert_eq!(
        (status.state(), status.exit_code),
        (S::Cancelled, Some(0)),
        "{status:?}"
    );
    let out = read_output(&mut c, "s", "trap", (0, 0), false).await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ready\ncleaning up\n");
}

#[rstest]
#[tokio::test]
async fn an_ignored_sigterm_escalates_to_sigkill_after_the_grace(
    #[values(Start::Warm, Start::Cold)] start: Start,
) {
    let d = Daemon::start_as(start, &[]).await;
    let mut c = d.client().await;
    create_session(&mut c, "s", every_grant()).await;
    let code = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n\
                print('ready', flush=True)\ntime.sleep(60)\n";
    execute(&mut c, snippet("s", "stubborn", "python", code)).await;
    wait_for_stdout(&mut c, "s", "stubborn", "ready").await;
    let started = Instant::now();
    c.cancel_execution(pb::CancelExecutionRequest {
        session_id: "s".into(),
        execution_id: "stubborn".into(),
        signal: "SIGTERM".into(),
        grace: secs(0.5),
    })
    .await
    .unwrap();
    let status = wait_terminal(&mut c, "s", "stubborn").await;
    assert_eq!(
        (status.state(), status.signal.as_str()),
        (S::Cancelled, "SIGKILL"),
        "{status:?}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "SIGKILL came before the grace"
    );
    let interpreter = d.state_dir().join("scratch/s/stubborn/");
    assert!(processes_with(&interpreter.display().to_string()).is_empty());
}

#[rstest]
#[tokio::test]
async fn signals_are_forwarded_to_the_program(#[values(Start::Warm, Start::Cold)] start: Start) {
    let d = Daemon::start_as(start, &[]).await;
    let mut c = d.client().await;
    create_session(&mut c, "s", every_grant()).await;
    let code = "process.on('SIGUSR1', () => { console.log('got usr1'); process.exit(3); });\n\
                console.log('ready'); setInterval(() => {}, 1000);";
    execute(&mut c, snippet("s", "usr", "javascript", code)).await;
    wait_for_stdout(&mut c, "s", "usr", "ready").await;
    c.signal_execution(pb::SignalExecutionRequest {
        session_id: "s".into(),
        execution_id: "usr".into(),
        signal: "usr1".into(),
    })
    .await
    .unwrap();
    let status = wait_terminal(&mut c, "s", "usr").await;
    assert_eq!(
        (status.state(), status.exit_code),
        (S::Exited, Some(3)),
        "{status:?}"
    );
    assert_eq!(
        read_output(&mut c, "s", "usr", (0, 0), false).await.stdout,
        b"ready\ngot usr1\n"
    );
    assert_started_on(&mut c, start, "javascript", 1).await;
}

#[rstest]
#[tokio::test]
async fn a_timeout_ends_the_execution_as_timed_out(
    #[values(Start::Warm, Start::Cold)] start: Start,
) {
    let d = Daemon::start_as(start, &["--timeout-grace-secs", "0.5"]).await;
    let mut c = d.client().await;
    create_session(
        &mut c,
        "s",
        pb::SessionConfig {
            max_timeout: secs(30.0),
            ..Default::default()
        },
    )
    .await;
    let mut req = snippet("s", "slow", "python", "import time\ntime.sleep(30)\n");
    req.overrides = Some(pb::ExecutionOverrides {
        timeout: secs(1.0),
        ..Default::default()
    });
    let accepted = execute(&mut c, req).await;
    assert_eq!(accepted.timeout.unwrap().seconds, 1);
    let status = wait_terminal(&mut c, "s", "slow").await;
    assert_eq!(status.state(), S::TimedOut, "{status:?}");
    assert!(status.message.contains("timed out"), "{}", status.message);
    // Cut short by the timeout's SIGTERM, not run to its end.
    assert_eq!(status.signal, "SIGTERM", "{status:?}");
}

#[rstest]
#[tokio::test]
async fn env_and_args_reach_the_program_and_the_daemon_env_does_not(
    #[values(Start::Warm, Start::Cold)] start: Start,
) {
    let d = Daemon::start_as(start, &[]).await;
    let mut c = d.client().await;
    create_session(&mut c, "s", every_grant()).await;
    let work = d.work_dir();
    let code = "import os, sys\nprint(sys.argv[1:])\nprint(os.environ.get('GREETING'))\n\
                print('RUST_LOG' in os.environ)\nprint(os.getcwd())\n";
    let mut req = snippet("s", "e", "python", code);
    req.args = vec!["one".into(), "two words".into()];
    req.env = env(&[("GREETING", "hi there")]);
    req.working_dir = work.display().to_string();
    execute(&mut c, req).await;
    wait_terminal(&mut c, "s", "e").await;
    let out = String::from_utf8(read_output(&mut c, "s", "e", (0, 0), false).await.stdout).unwrap();
    assert_eq!(
        out,
        format!(
            "['one', 'two words']\nhi there\nFalse\n{}\n",
            work.display()
        )
    );
}

#[rstest]
#[tokio::test]
async fn resubmitting_the_same_request_runs_it_once(
    #[values(Start::Warm, Start::Cold)] start: Start,
) {
    let d = Daemon::start_as(start, &[]).await;
    let mut c = d.client().await;
    create_session(&mut c, "s", every_grant()).await;
    let work = d.work_dir();
    let mut req = snippet(
        "s",
        "once",
        "python",
        "open('ran.txt', 'a').write('ran\\n')\n",
    );
    req.working_dir = work.display().to_string();
    let first = c.execute_snippet(req.clone()).await.unwrap().into_inner();
    let second = c.execute_snippet(req.clone()).await.unwrap().into_inner();
    assert!(first.created && !second.created);
    wait_terminal(&mut c, "s", "once").await;
    let third = c.execute_snippet(req.clone()).await.unwrap().into_inner();
    assert!(!third.created);
    assert_eq!(third.status.unwrap().state(), S::Exited);
    assert_eq!(
        std::fs::read_to_string(work.join("ran.txt")).unwrap(),
        "ran\n"
    );
    req.code = "print('something else')".into();
    let err = c.execute_snippet(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err}");
}

#[rstest]
#[tokio::test]
async fn sessions_cannot_see_or_touch_each_others_executions(
    #[values(Start::Warm, Start::Cold)] start: Start,
) {
    let d = Daemon::start_as(start, &[]).await;
    let mut c = d.client().await;
    create_session(&mut c, "a", every_grant()).await;
    create_session(&mut c, "b", every_grant()).await;
    execute(
        &mut c,
        snippet(
            "a",
            "secret",
            "python",
            "import time\nprint('ready', flush=True)\ntime.sleep(30)\n",
        ),
    )
    .await;
    let err = c
        .get_execution_status(pb::GetExecutionStatusRequest {
            session_id: "b".into(),
            execution_id: "secret".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let err = c
        .cancel_execution(pb::CancelExecutionRequest {
            session_id: "b".into(),
            execution_id: "secret".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let list = c
        .list_executions(pb::ListExecutionsRequest {
            session_id: "b".into(),
            active_only: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(list.executions.is_empty());
    // The same id in another session is a different execution.
    execute(&mut c, snippet("b", "secret", "python", "print('mine')")).await;
    assert_eq!(
        wait_terminal(&mut c, "b", "secret").await.state(),
        S::Exited
    );
    let a = status_of(&mut c, "a", "secret").await;
    assert_eq!(a.state(), S::Running);
}

#[rstest]
#[tokio::test]
async fn watch_session_pushes_every_state_change_and_resumes_from_a_seq(
    #[values(Start::Warm, Start::Cold)] start: Start,
) {
    let d = Daemon::start_as(start, &[]).await;
    let mut c = d.client().await;
    create_session(&mut c, "s", every_grant()).await;
    let mut watch = c
        .watch_session(pb::WatchSessionRequest {
            session_id: "s".into(),
            after_seq: 0,
            heartbeat_interval: None,
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.next().await.unwrap().unwrap();
    let Some(pb::session_event::Event::Opened(opened)) = first.event else {
        panic!("{first:?}")
    };
    let health = c.health(pb::HealthRequest {}).await.unwrap().into_inner();
    assert_eq!(opened.daemon_instance_id, health.instance_id);
    execute(
        &mut c,
        snippet("s", "e", "python", "import sys\nsys.exit(4)"),
    )
    .await;
    let mut states = Vec::new();
    let mut seqs = Vec::new();
    while states.last() != Some(&S::Exited) {
        let ev = tokio::time::timeout(Duration::from_secs(30), watch.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let Some(pb::session_event::Event::Status(s)) = ev.event else {
            panic!("{ev:?}")
        };
        states.push(s.state());
        seqs.push(s.seq);
    }
    assert_eq!(states, vec![S::Queued, S::Running, S::Exited]);
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    // Resume after the first event: exactly the two later ones come back.
    let mut resumed = c
        .watch_session(pb::WatchSessionRequest {
            session_id: "s".into(),
            after_seq: seqs[0],
            heartbeat_interval: None,
        })
        .await
        .unwrap()
        .into_inner();
    resumed.next().await.unwrap().unwrap(); // opened
    for want in &seqs[1..] {
        let ev = resumed.next().await.unwrap().unwrap();
        let Some(pb::session_event::Event::Status(s)) = ev.event else {
            panic!("{ev:?}")
        };
        assert_eq!(s.seq, *want);
    }
}

#[rstest]
#[tokio::test]
async fn metrics_report_cpu_and_memory_of_a_running_execution(
    #[values(Start::Warm, Start::Cold)] start: Start,
) {
    let d = Daemon::start_as(start, &["--sample-interval-secs", "0.2"]).await;
    let mut c = d.client().await;
    create_session(&mut c, "s", every_grant()).await;
    let code = "import time\nblob = bytearray(50 * 1024 * 1024)\nx = sum(range(3_000_000))\n\
                print('ready', flush=True)\ntime.sleep(30)\n";
    execute(&mut c, snippet("s", "m", "python", code)).await;
    wait_for_stdout(&mut c, "s", "m", "ready").await;
    let m = metrics_of(&mut c, "s", "m").await;
    assert!(m.live);
    assert!(
        m.memory_rss_bytes > 40 * 1024 * 1024,
        "rss {}",
        m.memory_rss_bytes
    );
    assert!(m.memory_peak_bytes >= m.memory_rss_bytes);
    assert!(m.process_count >= 1);
    let cpu = m.cpu_user.unwrap();
    assert!(cpu.seconds > 0 || cpu.nanos > 0, "cpu {cpu:?}");
}

#[rstest]
#[tokio::test]
async fn memory_limit_kills_a_hungry_snippet_with_a_clear_reason(
    #[values(Start::Warm, Start::Cold)] start: Start,
) {
    let d = Daemon::start_as(start, &["--sample-interval-secs", "0.1"]).await;
    let mut c = d.client().await;
    create_session(
        &mut c,
        "s",
        pb::SessionConfig {
            memory_limit_mb: 256,
            ..Default::default()
        },
    )
    .await;
    let code = "import time\nblob = bytearray(200 * 1024 * 1024)\nprint('allocated', flush=True)\ntime.sleep(30)\n";
    let mut req = snippet("s", "hog", "python", code);
    req.overrides = Some(pb::ExecutionOverrides {
        memory_limit_mb: 64,
        ..Default::default()
    });
    execute(&mut c, req).await;
    let status = wait_terminal(&mut c, "s", "hog").await;
    assert_eq!(status.state(), S::Failed, "{status:?}");
    assert_eq!(status.failure(), pb::FailureReason::MemoryLimitExceeded);
    assert!(
        status.message.contains("limit 64 MiB"),
        "{}",
        status.message
    );
}

#[rstest]
#[tokio::test]
async fn the_runtime_versions_reported_are_the_ones_that_run_snippets(
    #[values(Start::Warm, Start::Cold)] start: Start,
) {
    let d = Daemon::start_as(start, &[]).await;
    let mut c = d.client().await;
    let caps = c
        .get_capabilities(pb::GetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    let version_of = |lang: &str| {
        let l = caps.languages.iter().find(|l| l.language == lang).unwrap();
        assert!(l.available, "{l:?}");
        l.runtime_version.clone()
    };
    create_session(&mut c, "s", every_grant()).await;
    // A snippet environment with a PATH that points elsewhere must not change
    // which interpreter runs.
    let mut py = snippet(
        "s",
        "py",
        "python",
        "import platform\nprint(platform.python_version(), end='')",
    );
    py.env = env(&[("PATH", "/nonexistent")]);
    execute(&mut c, py).await;
    execute(
        &mut c,
        snippet(
            "s",
            "js",
            "javascript",
            "process.stdout.write(process.versions.node)",
        ),
    )
    .await;
    for (id, lang) in [("py", "python"), ("js", "javascript")] {
        wait_terminal(&mut c, "s", id).await;
        let out = read_output(&mut c, "s", id, (0, 0), false).await;
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            version_of(lang),
            "{lang}"
        );
    }
    assert_started_on(&mut c, start, "javascript", 1).await;
}

#[rstest]
#[tokio::test]
async fn daemon_stats_count_requests_by_method_and_report_load(
    #[values(Start::Warm, Start::Cold)] start: Start,
) {
    let d = Daemon::start_as(start, &[]).await;
    let mut c = d.client().await;
    create_session(&mut c, "s", every_grant()).await;
    execute(
        &mut c,
        snippet(
            "s",
            "a",
            "python",
            "import time\nprint('ready', flush=True)\ntime.sleep(30)",
        ),
    )
    .await;
    execute(&mut c, snippet("s", "b", "python", "print('quick')")).await;
    wait_state(&mut c, "s", "a", S::Running).await;
    wait_terminal(&mut c, "s", "b").await;
    let stats = c
        .get_daemon_stats(pb::GetDaemonStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.requests.get("ExecuteSnippet"), Some(&2));
    assert_eq!(stats.requests.get("CreateSession"), Some(&1));
    assert_eq!(stats.requests.get("WatchExecution"), Some(&2));
    assert_eq!(stats.requests.get("GetDaemonStats"), Some(&1));
    assert_eq!(
        (
            stats.sessions,
            stats.running_executions,
            stats.queued_executions
        ),
        (1, 1, 0)
    );
}
