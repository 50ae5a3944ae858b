//! Javascript on pooled (warm) and fresh (cold) node processes, through a
//! real daemon, a real socket and real node: a warm program must behave as
//! `node FILE ARGS` would, one worker serves one program, an empty pool
//! means a cold start, and dead workers are reported and replaced.

mod support;

use std::time::{Duration, Instant};

use elide_e2e::procs::processes_with;
use elide_proto::elide::daemon::v1 as pb;
use pb::ExecutionState as S;
use rstest::rstest;
use support::*;

/// Follows stdout until it holds a full line; returns that line.
async fn first_line(c: &mut Client, session: &str, id: &str) -> String {
    let seen =
        follow_stdout_until(c, session, id, "a full line", |seen| seen.contains(&b'\n')).await;
    let end = seen.iter().position(|&b| b == b'\n').unwrap();
    String::from_utf8_lossy(&seen[..end]).into_owned()
}

/// Waits until `check` holds, for at most 30 s.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[rstest]
#[tokio::test]
async fn argv_require_and_the_main_module_are_as_under_node_file(
    #[values(Start::Warm, Start::Cold)] path: Start,
) {
    let d = Daemon::start_as(path, &[]).await;
    let mut c = d.client().await;
    create_session(&mut c, "s", every_grant()).await;
    let work = d.work_dir();
    let code = "const path = require('node:path');\n\
                console.log(JSON.stringify([process.argv.slice(2), path.basename(process.argv[1]),\n\
                  process.argv[0] === process.execPath, require.main === module,\n\
                  path.basename(__filename), __filename === process.argv[1], process.cwd()]));\n";
    let mut req = snippet("s", "argv", "javascript", code);
    req.source_name = "local/main.js".into();
    req.args = vec!["one".into(), "two words".into()];
    req.working_dir = work.display().to_string();
    let (status, stdout, stderr) = run_to_end(&mut c, req).await;
    assert_eq!(status.exit_code, Some(0), "{status:?} {stderr}");
    assert_eq!(
        stdout,
        format!(
            "[[\"one\",\"two words\"],\"main.js\",true,true,\"main.js\",true,{:?}]\n",
            work.display().to_string()
        )
    );
    assert_started_on(&mut c, path, "javascript", 1).await;
}

#[rstest]
#[tokio::test]
async fn an_mjs_program_runs_as_an_es_module(#[values(Start::Warm, Start::Cold)] path: Start) {
    let d = Daemon::start_as(path, &[]).await;
    let mut c = d.client().await;
    create_session(&mut c, "s", every_grant()).await;
    let code = "import { basename } from 'node:path';\n\
                const top = await Promise.resolve('top-level await');\n\
                console.log(basename(new URL(import.meta.url).pathname), typeof require, top);\n";
    let mut req = snippet("s", "esm", "javascript", code);
    req.source_name = "local/main.mjs".into();
    let (status, stdout, stderr) = run_to_end(&mut c, req).await;
    assert_eq!(status.exit_code, Some(0), "{status:?} {stderr}");
    assert_eq!(stdout, "main.mjs undefined top-level await\n");
    assert_started_on(&mut c, path, "javascript", 1).await;
}

#[rstest]
#[tokio::test]
async fn exit_code_and_an_unhandled_rejection_end_the_program_as_under_node(
    #[values(Start::Warm, Start::Cold)] path: Start,
) {
    let d = Daemon::start_as(path, &[]).await;
    let mut c = d.client().await;
    create_session(&mut c, "s", every_grant()).await;
    let (status, stdout, _) = run_to_end(
        &mut c,
        snippet(
            "s",
            "code",
            "javascript",
            "process.exitCode = 5;\nsetTimeout(() => console.log('later'), 10);\n",
        ),
    )
    .await;
    assert_eq!((status.state(), status.exit_code), (S::Exited, Some(5)));
    assert_eq!(stdout, "later\n");
    let (status, stdout, stderr) = run_to_end(
        &mut c,
        snippet(
            "s",
            "reject",
            "javascript",
            "console.log('before');\nPromise.reject(new Error('boom'));\n",
        ),
    )
    .await;
    assert_eq!((status.state(), status.exit_code), (S::Exited, Some(1)));
    assert_eq!(stdout, "before\n");
    assert!(stderr.contains("\nError: boom\n"), "{stderr}");
    assert!(
        stderr.contains("snippet.js:2"),
        "the error names the program's line: {stderr}"
    );
    assert!(
        stderr
            .trim_end()
            .ends_with(&format!("Node.js {}", node_version())),
        "{stderr}"
    );
    assert_started_on(&mut c, path, "javascript", 2).await;
}

fn node_version() -> String {
    let out = std::process::Command::new("node")
        .arg("--version")
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[rstest]
#[tokio::test]
async fn the_environment_is_exactly_the_requests_and_children_inherit_it(
    #[values(Start::Warm, Start::Cold)] path: Start,
) {
    let d = Daemon::start_as(path, &[]).await;
    let mut c = d.client().await;
    create_session(&mut c, "s", every_grant()).await;
    let code = "const { execFileSync } = require('node:child_process');\n\
                const own = Object.keys(process.env).sort();\n\
                const child = execFileSync('env', { encoding: 'utf8' }).trim().split('\\n').map(l => l.split('=')[0]).sort();\n\
                console.log(JSON.stringify(own));\nconsole.log(JSON.stringify(child));\n\
                console.log(process.env.GREETING, require('node:os').homedir());\n";
    let mut req = snippet("s", "env", "javascript", code);
    req.env = env(&[("GREETING", "hi there"), ("HOME", "/nonexistent-home")]);
    let (status, stdout, stderr) = run_to_end(&mut c, req).await;
    assert_eq!(status.exit_code, Some(0), "{stderr}");
    let keys = "[\"GREETING\",\"HOME\",\"PATH\"]";
    assert_eq!(
        stdout,
        format!("{keys}\n{keys}\nhi there /nonexistent-home\n")
    );
    assert_started_on(&mut c, path, "javascript", 1).await;
}

#[tokio::test]
async fn a_worker_runs_one_program_and_nothing_of_it_reaches_the_next() {
    let d = Daemon::start_as(Start::Warm, &[]).await;
    let mut c = d.client().await;
    create_session(&mut c, "s", every_grant()).await;
    let first = "globalThis.leak = 'first'; process.env.LEAK = 'first';\n\
                 require.cache['/leak'] = { exports: 1 };\nconsole.log(process.pid);\n";
    let (_, pid_a, _) = run_to_end(&mut c, snippet("s", "a", "javascript", first)).await;
    let second = "console.log(process.pid);\n\
                  console.log(typeof globalThis.leak, process.env.LEAK, '/leak' in require.cache);\n";
    let (status, out_b, stderr) = run_to_end(&mut c, snippet("s", "b", "javascript", second)).await;
    assert_eq!(status.exit_code, Some(0), "{stderr}");
    let (pid_b, rest) = out_b.split_once('\n').unwrap();
    assert_ne!(pid_a.trim(), pid_b, "two programs ran in one process");
    assert_eq!(rest, "undefined undefined false\n");
    assert_started_on(&mut c, Start::Warm, "javascript", 2).await;
    // Both workers were used and are gone: only fresh ones wait.
    for pid in [pid_a.trim(), pid_b] {
        assert!(
            !d.waiting_workers().contains(&pid.parse().unwrap()),
            "worker {pid} waits again after its program"
        );
    }
}

#[tokio::test]
async fn five_hundred_programs_at_once_all_run_and_an_empty_pool_starts_them_cold() {
    let d = Daemon::start_as(Start::Warm, &["--max-running", "16"]).await;
    let c = d.client().await;
    create_session(&mut c.clone(), "s", every_grant()).await;
    let submitted = futures::future::join_all((0..500).map(|i| {
        let mut c = c.clone();
        async move {
            c.execute_snippet(snippet(
                "s",
                &format!("e{i}"),
                "javascript",
                &format!("console.log({i})"),
            ))
            .await
        }
    }))
    .await;
    for (i, reply) in submitted.into_iter().enumerate() {
        assert!(reply.is_ok(), "execution {i} was refused: {reply:?}");
    }
    let mut c = c.clone();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let active = c
            .list_executions(pb::ListExecutionsRequest {
                session_id: "s".into(),
                active_only: true,
            })
            .await
            .unwrap()
            .into_inner()
            .executions;
        if active.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} executions still active after 600 s",
            active.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for i in 0..500 {
        let id = format!("e{i}");
        let status = status_of(&mut c, "s", &id).await;
        assert_eq!(
            (status.state(), status.exit_code),
            (S::Exited, Some(0)),
            "{id}: {status:?}"
        );
        let out = read_output(&mut c, "s", &id, (0, 0), false).await;
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("{i}\n"),
            "{id}"
        );
    }
    let stats = daemon_stats(&mut c).await;
    let warm = count(&stats.warm_starts, "javascript");
    let cold = count(&stats.cold_starts, "javascript");
    assert_eq!(warm + cold, 500, "{stats:?}");
    assert!(
        warm >= 1 && cold >= 1,
        "a pool of {TEST_POOL_SIZE} serves some, fresh node the rest: {stats:?}"
    );
}

#[tokio::test]
async fn a_pooled_worker_killed_mid_run_is_reported_as_killed_and_the_pool_refills() {
    let d = Daemon::start_as(Start::Warm, &[]).await;
    let mut c = d.client().await;
    create_session(&mut c, "s", every_grant()).await;
    execute(
        &mut c,
        snippet(
            "s",
            "victim",
            "javascript",
            "console.log(process.pid);\nsetInterval(() => {}, 1000);\n",
        ),
    )
    .await;
    let pid: i32 = first_line(&mut c, "s", "victim").await.parse().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let status = wait_terminal(&mut c, "s", "victim").await;
    assert_eq!(
        (status.state(), status.signal.as_str(), status.exit_code),
        (S::Exited, "SIGKILL", None),
        "{status:?}"
    );
    wait_pool_full(&mut c).await;
    let (status, stdout, _) = run_to_end(
        &mut c,
        snippet("s", "next", "javascript", "console.log('after')"),
    )
    .await;
    assert_eq!((status.exit_code, stdout.as_str()), (Some(0), "after\n"));
    assert_started_on(&mut c, Start::Warm, "javascript", 2).await;
    assert_eq!(
        daemon_stats(&mut c).await.zygote_restarts,
        0,
        "a program's death is not a worker replacement"
    );
}

#[tokio::test]
async fn a_waiting_worker_that_dies_is_replaced_and_counted() {
    let d = Daemon::start_as(Start::Warm, &[]).await;
    let mut c = d.client().await;
    let workers = d.waiting_workers();
    assert_eq!(workers.len(), TEST_POOL_SIZE, "{workers:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(workers[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while daemon_stats(&mut c).await.zygote_restarts != 1 {
        assert!(
            Instant::now() < deadline,
            "the dead worker was not noticed within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_pool_full(&mut c).await;
    let now = d.waiting_workers();
    assert!(
        !now.contains(&workers[0]) && now.len() == TEST_POOL_SIZE,
        "{now:?}"
    );
    create_session(&mut c, "s", every_grant()).await;
    let (status, stdout, _) = run_to_end(
        &mut c,
        snippet("s", "e", "javascript", "console.log('fine')"),
    )
    .await;
    assert_eq!((status.exit_code, stdout.as_str()), (Some(0), "fine\n"));
    assert_started_on(&mut c, Start::Warm, "javascript", 1).await;
}

#[rstest]
#[tokio::test]
async fn children_and_daemonized_grandchildren_die_with_the_program(
    #[values(Start::Warm, Start::Cold)] path: Start,
) {
    let d = Daemon::start_as(path, &[]).await;
    let mut c = d.client().await;
    create_session(&mut c, "s", every_grant()).await;
    let child = format!("node-child-{}-{path:?}", std::process::id());
    let grandchild = format!("node-grandchild-{}-{path:?}", std::process::id());
    let flag = d.dir.path().join("finish");
    let code = format!(
        "const {{ spawn, execSync }} = require('node:child_process');\n\
         const fs = require('node:fs');\n\
         spawn(process.execPath, ['-e', 'setInterval(() => {{}}, 1000)', '{child}'], {{ stdio: 'ignore' }});\n\
         execSync(`sh -c '${{process.execPath}} -e \"setInterval(() => {{}}, 1000)\" {grandchild} >/dev/null 2>&1 &'`);\n\
         console.log('ready');\n\
         setInterval(() => {{ if (fs.existsSync({flag:?})) process.exit(0); }}, 20);\n"
    );
    execute(&mut c, snippet("s", "parent", "javascript", &code)).await;
    assert_eq!(first_line(&mut c, "s", "parent").await, "ready");
    eventually("both descendants running", || {
        processes_with(&child).len() == 1 && processes_with(&grandchild).len() == 1
    })
    .await;
    std::fs::write(&flag, "").unwrap();
    let status = wait_terminal(&mut c, "s", "parent").await;
    assert_eq!(status.exit_code, Some(0), "{status:?}");
    eventually("descendants killed with the program's group", || {
        processes_with(&child).is_empty() && processes_with(&grandchild).is_empty()
    })
    .await;
    assert_started_on(&mut c, path, "javascript", 1).await;
}
