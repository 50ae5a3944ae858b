//! Who a task's snippet runs as, end to end: the real plugin resolves the
//! task's `user` under the operator's rules, the real daemon (root here)
//! drops to it on each start path, and the snippet reports what the kernel
//! says it is.

use std::time::Duration;

use elide_e2e::cty::{PluginConfig, TaskConfig};
use elide_e2e::daemon::Daemon;
use elide_e2e::nomad::{Alloc, NomadHost};
use elide_proto::elide::daemon::v1 as pb;
use rstest::rstest;

/// Upper bound for anything a test waits for.
const LIMIT: Duration = Duration::from_secs(30);

/// Node workers a warm daemon keeps.
const POOL: &str = "2";

/// How the daemon under test starts programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    /// Python forked from the zygote, javascript on a pooled node worker.
    Warm,
    /// A fresh interpreter per execution.
    Cold,
}

/// Prints `uid gid groups name`, groups sorted and comma-separated.
fn whoami(language: &str) -> &'static str {
    match language {
        "python" => {
            "import os, pwd\n\
             print(os.getuid(), os.getgid(), ','.join(map(str, sorted(set(os.getgroups())))), pwd.getpwuid(os.getuid()).pw_name)\n"
        }
        _ => {
            "const groups = [...new Set(process.getgroups())].sort((a, b) => a - b).join(',');\n\
             console.log(process.getuid(), process.getgid(), groups, require('os').userInfo().username);\n"
        }
    }
}

/// What `whoami` prints for `name`, from the host's own user database.
fn expected(name: &str) -> String {
    let user = nix::unistd::User::from_name(name)
        .unwrap()
        .unwrap_or_else(|| panic!("user {name} exists on this host"));
    let c_name = std::ffi::CString::new(name).unwrap();
    let mut groups: Vec<u32> = nix::unistd::getgrouplist(&c_name, user.gid)
        .unwrap()
        .into_iter()
        .map(|g| g.as_raw())
        .collect();
    groups.sort_unstable();
    groups.dedup();
    let groups: Vec<String> = groups.iter().map(u32::to_string).collect();
    format!("{} {} {} {name}\n", user.uid, user.gid, groups.join(","))
}

async fn daemon(start: Start) -> Daemon {
    let daemon = match start {
        Start::Warm => Daemon::start_with(&["--context-pool-size", POOL]).await,
        Start::Cold => {
            Daemon::start_with(&["--context-pool-size", "0", "--python-warm=false"]).await
        }
    };
    if start == Start::Warm {
        wait_pool_full(&daemon).await;
    }
    daemon
}

async fn wait_pool_full(daemon: &Daemon) {
    let want = format!("node pool of {POOL} per daemon, {POOL} ready");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let caps = daemon
            .client()
            .await
            .get_capabilities(pb::GetCapabilitiesRequest {})
            .await
            .unwrap()
            .into_inner();
        let js = caps.languages.iter().find(|l| l.language == "javascript");
        if js.is_some_and(|l| l.start_detail.contains(&want)) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the node pool did not fill within 60 s: {js:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// (warm, cold) starts of `language` so far.
async fn starts(daemon: &Daemon, language: &str) -> (u64, u64) {
    let stats = daemon
        .client()
        .await
        .get_daemon_stats(pb::GetDaemonStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    let count = |m: &std::collections::BTreeMap<String, u64>| m.get(language).copied().unwrap_or(0);
    (count(&stats.warm_starts), count(&stats.cold_starts))
}

/// Runs `code` as a task with `user` ("" for none) and returns its stdout
/// and stderr once it exited 0.
async fn run_task(host: &mut NomadHost, language: &str, code: &str, user: &str) -> String {
    let alloc = Alloc::new("who");
    let mut task = alloc.task_config(&TaskConfig::code(language, code));
    task.user = user.into();
    host.start(task.clone()).await.expect("StartTask");
    let exit = host.wait(&task.id, LIMIT).await;
    let stdout = alloc.stdout.text_after_eofs(1, LIMIT);
    let stderr = alloc.stderr.text_after_eofs(1, LIMIT);
    assert_eq!(
        exit.result.map(|r| r.exit_code),
        Some(0),
        "{language} as {user:?}: {}; stderr: {stderr}",
        exit.err
    );
    host.destroy(&task.id).await;
    stdout
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_runs_as_nobody_by_default_and_as_its_user_when_named(
    #[values(Start::Warm, Start::Cold)] start: Start,
    #[values("python", "javascript")] language: &str,
) {
    let daemon = daemon(start).await;
    // Every intrinsic the kernel could deny is granted: the node pool
    // serves only programs without sandbox rules, and this counts its use.
    let mut host = NomadHost::configured(&PluginConfig {
        enabled_intrinsics: Some(
            ["console", "env", "fs.read", "fs.write", "net", "subprocess"]
                .map(String::from)
                .to_vec(),
        ),
        ..PluginConfig::for_socket(&daemon.socket)
    })
    .await;
    let before = starts(&daemon, language).await;

    let default = run_task(&mut host, language, whoami(language), "").await;
    assert_eq!(default, expected("nobody"));
    let named = run_task(&mut host, language, whoami(language), "daemon").await;
    assert_eq!(named, expected("daemon"));

    let after = starts(&daemon, language).await;
    let (warm, cold) = (after.0 - before.0, after.1 - before.1);
    match (start, language) {
        (Start::Cold, _) => assert_eq!((warm, cold), (0, 2)),
        // Every python execution forks from the zygote, whoever it runs as.
        (Start::Warm, "python") => assert_eq!((warm, cold), (2, 0)),
        // Pooled workers boot as the default user: another user starts cold.
        (Start::Warm, _) => assert_eq!((warm, cold), (1, 1)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_needs_the_operators_opt_in() {
    let daemon = Daemon::start().await;
    let mut host = NomadHost::configured(&PluginConfig::for_socket(&daemon.socket)).await;
    let alloc = Alloc::new("root");
    let mut task = alloc.task_config(&TaskConfig::code("python", whoami("python")));
    task.user = "root".into();
    let err = host.start(task).await.unwrap_err();
    assert_eq!(
        err.message(),
        "task \"root\": invalid `user`: \"root\" is denied on this client (plugin config denied_users)"
    );

    let opted_in = PluginConfig {
        allow_root: Some(true),
        ..PluginConfig::for_socket(&daemon.socket)
    };
    let mut host = NomadHost::configured(&opted_in).await;
    let out = run_task(&mut host, "python", whoami("python"), "root").await;
    assert_eq!(out, expected("root"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_user_is_refused_naming_it() {
    let daemon = Daemon::start().await;
    let mut host = NomadHost::configured(&PluginConfig::for_socket(&daemon.socket)).await;
    let alloc = Alloc::new("ghost");
    let mut task = alloc.task_config(&TaskConfig::code("python", "print('ran')\n"));
    task.user = "no-such-user-e2e".into();
    let err = host.start(task).await.unwrap_err();
    assert_eq!(
        err.message(),
        "task \"ghost\": invalid `user`: no user \"no-such-user-e2e\" on this client"
    );
    assert!(
        daemon.executions().await.is_empty(),
        "nothing was submitted"
    );
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snippet_cannot_read_another_users_execution(
    #[values(Start::Warm, Start::Cold)] start: Start,
) {
    let daemon = daemon(start).await;
    let mut host = NomadHost::configured(&PluginConfig::for_socket(&daemon.socket)).await;
    // The victim, as `daemon`: says where its snippet and task dir are, then waits.
    let victim = Alloc::new("victim");
    let mut task = victim.task_config(&TaskConfig::code(
        "python",
        "import os, time\nprint(os.path.abspath(__file__), os.getcwd(), flush=True)\ntime.sleep(60)\n",
    ));
    task.user = "daemon".into();
    host.start(task.clone()).await.expect("StartTask");
    let line = victim.stdout.wait_for("\n", LIMIT);
    let mut paths = line.split_whitespace().map(str::to_owned);
    let (file, cwd) = (paths.next().unwrap(), paths.next().unwrap());
    assert!(std::path::Path::new(&file).is_file(), "{file}");

    // The intruder, as `nobody`: tries the victim's snippet, scratch and task dirs.
    let probe = "import os, sys\n\
                 for what, act in [('file', lambda p: open(p).read()), ('scratch', os.listdir), ('cwd', os.listdir)]:\n\
                 \x20   path = {'file': sys.argv[1], 'scratch': os.path.dirname(sys.argv[1]), 'cwd': sys.argv[2]}[what]\n\
                 \x20   try:\n\
                 \x20       act(path)\n\
                 \x20       print(what, 'read')\n\
                 \x20   except PermissionError as e:\n\
                 \x20       print(what, 'denied', e.errno)\n";
    let intruder = Alloc::new("intruder");
    let mut config = TaskConfig::code("python", probe);
    config.args = Some(vec![file.clone(), cwd.clone()]);
    let probe_task = intruder.task_config(&config);
    host.start(probe_task.clone()).await.expect("StartTask");
    let exit = host.wait(&probe_task.id, LIMIT).await;
    assert_eq!(exit.result.map(|r| r.exit_code), Some(0), "{}", exit.err);
    assert_eq!(
        intruder.stdout.text_after_eofs(1, LIMIT),
        "file denied 13\nscratch denied 13\ncwd denied 13\n"
    );
    host.stop(&task.id, Duration::from_secs(1), "SIGKILL").await;
    host.destroy(&task.id).await;
}
