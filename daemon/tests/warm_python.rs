//! Warm python (forks of the zygote) against cold python (a fresh
//! interpreter), through a real daemon, socket and interpreter: a warm run
//! must look exactly like a cold one to the snippet and to the client.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use elide_e2e::procs::processes_with;
use elide_proto::elide::daemon::v1 as pb;
use pb::ExecutionState as S;
use rstest::rstest;
use support::*;

/// What a snippet can observe about how it was started.
const PROBE: &str = r#"
import os, sys, signal, threading
print("name", __name__)
print("argv", [os.path.basename(sys.argv[0])] + sys.argv[1:])
print("file is argv0", __file__ == sys.argv[0], os.path.basename(__file__))
print("path0 is script dir", sys.path[0] == os.path.dirname(__file__))
print("globals", sorted(globals()))
print("env", sorted(os.environ.items()))
print("cwd", os.path.basename(os.getcwd()))
print("stdin", repr(sys.stdin.read()), os.isatty(0))
print("own group", os.getpgid(0) == os.getpid())
print("stdio", sys.stdout.encoding, sys.stdout.errors, sys.stdout.write_through, sys.stderr.errors)
print("signals", signal.getsignal(signal.SIGINT).__name__, signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGCHLD), signal.getsignal(signal.SIGPIPE))
print("threads", threading.active_count())
import subprocess
print("child env", subprocess.run(["sh", "-c", "echo $GREETING"], capture_output=True).stdout)
sys.stdout.flush()
sys.stdout.buffer.write(b"raw \xff\x00 bytes\n")
sys.stderr.write("to stderr\n")
"#;

#[tokio::test]
async fn a_warm_run_sees_exactly_what_a_cold_run_sees() {
    let mut outputs = Vec::new();
    for start in [Start::Warm, Start::Cold] {
        let d = Daemon::start_as(start, &[]).await;
        let mut c = d.client().await;
        create_session(&mut c, "s", every_grant()).await;
        let work = d.work_dir();
        let mut req = snippet("s", "probe", "python", PROBE);
        req.args = vec!["one".into(), "two words".into()];
        req.env = env(&[("GREETING", "hi there"), ("LANG", "C.UTF-8")]);
        req.working_dir = work.display().to_string();
        let (status, stdout, stderr) = run_raw(&mut c, req).await;
        assert_eq!(
            (status.state(), status.exit_code),
            (S::Exited, Some(0)),
            "{start:?}: {status:?} {stderr}"
        );
        assert_eq!(stderr, "to stderr\n", "{start:?}");
        outputs.push(stdout);
    }
    let warm = String::from_utf8_lossy(&outputs[0]).into_owned();
    assert_eq!(
        warm,
        String::from_utf8_lossy(&outputs[1]),
        "warm (left) and cold (right) runs differ"
    );
    assert_eq!(outputs[0], outputs[1]);
    for line in [
        "name __main__\n",
        "argv ['snippet.py', 'one', 'two words']\n",
        "file is argv0 True snippet.py\n",
        "path0 is script dir True\n",
        "env [('GREETING', 'hi there'), ('LANG', 'C.UTF-8')",
        "cwd work\n",
        "stdin '' False\n",
        "own group True\n",
        "signals default_int_handler 0 0 1\n",
        "threads 1\n",
        "child env b'hi there\\n'\n",
    ] {
        assert!(warm.contains(line), "{line:?} not in:\n{warm}");
    }
    assert!(
        outputs[0].ends_with(b"raw \xff\x00 bytes\n"),
        "{:?}",
        outputs[0]
    );
}

#[rstest]
#[case::exit_code("import sys\nsys.exit(3)", S::Exited, Some(3), "", "")]
#[case::exit_message("import sys\nsys.exit('no way')", S::Exited, Some(1), "", "no way\n")]
#[case::exit_code_wraps("import sys\nsys.exit(257)", S::Exited, Some(1), "", "")]
#[case::exit_none("import sys\nsys.exit(None)", S::Exited, Some(0), "", "")]
#[case::uncaught(
    "def f():\n    raise ValueError('boom')\nf()\n",
    S::Exited,
    Some(1),
    "",
    "ValueError: boom"
)]
#[case::syntax("x = (", S::Exited, Some(1), "", "SyntaxError")]
#[case::killed_by_signal(
    "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)",
    S::Exited,
    None,
    "SIGKILL",
    ""
)]
#[case::sigint_is_keyboard_interrupt(
    "import os, signal\nos.kill(os.getpid(), signal.SIGINT)",
    S::Exited,
    None,
    "SIGINT",
    "KeyboardInterrupt"
)]
#[case::atexit_and_threads(
    "import atexit, threading, time\natexit.register(lambda: print('atexit ran'))\n\
     threading.Thread(target=lambda: (time.sleep(0.3), print('thread done'))).start()\nprint('main done')",
    S::Exited,
    Some(0),
    "",
    ""
)]
#[tokio::test]
async fn endings_are_reported_as_for_a_cold_run(
    #[values(Start::Warm, Start::Cold)] start: Start,
    #[case] code: &str,
    #[case] state: S,
    #[case] exit_code: Option<i32>,
    #[case] signal: &str,
    #[case] stderr_has: &str,
) {
    let d = Daemon::start_as(start, &[]).await;
    let mut c = d.client().await;
    create_session(&mut c, "s", every_grant()).await;
    let (status, stdout, stderr) = run_raw(&mut c, snippet("s", "e", "python", code)).await;
    assert_eq!(
        (status.state(), status.exit_code, status.signal.as_str()),
        (state, exit_code, signal),
        "{status:?} {stderr}"
    );
    assert!(stderr.contains(stderr_has), "{stderr}");
    // Tracebacks name the snippet only, never the zygote.
    assert!(
        !stderr.contains("<string>") && !stderr.contains("zygote"),
        "{stderr}"
    );
    if stderr.contains("Traceback") {
        assert!(stderr.contains("snippet.py\", line"), "{stderr}");
    }
    if code.contains("atexit") {
        assert_eq!(
            String::from_utf8_lossy(&stdout),
            "main done\nthread done\natexit ran\n"
        );
    }
}

#[rstest]
#[tokio::test]
async fn sigint_from_the_client_raises_keyboard_interrupt(
    #[values(Start::Warm, Start::Cold)] start: Start,
) {
    let d = Daemon::start_as(start, &[]).await;
    let mut c = d.client().await;
    create_session(&mut c, "s", every_grant()).await;
    let code = "import time\ntry:\n    print('ready', flush=True)\n    time.sleep(60)\n\
                except KeyboardInterrupt:\n    print('interrupted')\n    raise SystemExit(9)\n";
    execute(&mut c, snippet("s", "i", "python", code)).await;
    wait_for_stdout(&mut c, "s", "i", "ready\n").await;
    c.signal_execution(pb::SignalExecutionRequest {
        session_id: "s".into(),
        execution_id: "i".into(),
        signal: "SIGINT".into(),
    })
    .await
    .unwrap();
    let status = wait_terminal(&mut c, "s", "i").await;
    assert_eq!(status.exit_code, Some(9), "{status:?}");
    let out = read_output(&mut c, "s", "i", (0, 0), false).await;
    assert_eq!(out.stdout, b"ready\ninterrupted\n");
}

#[tokio::test]
async fn each_warm_run_starts_from_fresh_state() {
    let d = Daemon::start_as(Start::Warm, &[]).await;
    let mut c = d.client().await;
    create_session(&mut c, "s", every_grant()).await;
    let tamper = "import json, os, sys, random, secrets, uuid\n\
                  json.tampered = True\nsys.modules['planted'] = json\nos.environ['LEAKED'] = '1'\n\
                  open('leftover.txt', 'w').write('x')\nrandom.seed(1)\nCONSTANT = 1\n\
                  print(random.random(), secrets.token_hex(8), uuid.uuid4())\n";
    let look = "import json, os, sys, random, secrets, uuid\n\
                print(hasattr(json, 'tampered'), 'planted' in sys.modules, 'LEAKED' in os.environ,\n\
                      sorted(os.listdir('.')), 'CONSTANT' in globals())\n\
                print(random.random(), secrets.token_hex(8), uuid.uuid4())\n";
    let (_, first, err) = run_raw(&mut c, snippet("s", "a", "python", tamper)).await;
    assert!(err.is_empty(), "{err}");
    let (_, second, err) = run_raw(&mut c, snippet("s", "b", "python", look)).await;
    assert!(err.is_empty(), "{err}");
    let (_, third, _) = run_raw(&mut c, snippet("s", "c", "python", look)).await;
    let second = String::from_utf8(second).unwrap();
    let third = String::from_utf8(third).unwrap();
    let mut lines = second.lines();
    assert_eq!(
        lines.next().unwrap(),
        "False False False ['snippet.py'] False"
    );
    // random, secrets and uuid4 differ between executions (and from the
    // seeded first run).
    let randoms = [
        String::from_utf8(first).unwrap().trim().to_string(),
        lines.next().unwrap().to_string(),
        third.lines().nth(1).unwrap().to_string(),
    ];
    for (i, a) in randoms.iter().enumerate() {
        for b in &randoms[i + 1..] {
            for (x, y) in a.split(' ').zip(b.split(' ')) {
                assert_ne!(x, y, "{randoms:?}");
            }
        }
    }
    assert_eq!(count(&daemon_stats(&mut c).await.warm_starts, "python"), 3);
}

#[tokio::test]
async fn killing_the_zygote_mid_run_loses_no_result_and_a_new_one_takes_over() {
    let d = Daemon::start_as(Start::Warm, &[]).await;
    let mut c = d.client().await;
    create_session(&mut c, "s", every_grant()).await;
    let gate = d.dir.path().join("gate");
    let code = format!(
        "import os, sys, time\nsys.stdout.write('zygote %d\\n' % os.getppid())\n\
         while not os.path.exists({gate:?}):\n    time.sleep(0.05)\n\
         print('finished after the zygote died')\nsys.stderr.write('bye')\nsys.exit(5)\n"
    );
    execute(&mut c, snippet("s", "long", "python", &code)).await;
    wait_for_stdout(&mut c, "s", "long", "\n").await;
    let out = read_output(&mut c, "s", "long", (0, 0), false).await;
    let zygote: i32 = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert_ne!(
        zygote,
        d.pid() as i32,
        "the parent of a warm run is the zygote"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(zygote),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    std::fs::write(&gate, "").unwrap();

    let status = wait_terminal(&mut c, "s", "long").await;
    assert_eq!(
        (status.state(), status.exit_code),
        (S::Exited, Some(5)),
        "{status:?}"
    );
    let out = read_output(&mut c, "s", "long", (0, 0), false).await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("zygote {zygote}\nfinished after the zygote died\n")
    );
    assert_eq!(out.stderr, b"bye");

    // Executions go on (cold while the replacement boots), then warm again.
    let deadline = Instant::now() + Duration::from_secs(60);
    while daemon_stats(&mut c).await.zygote_restarts < 1 {
        assert!(
            Instant::now() < deadline,
            "no new zygote; log:\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = daemon_stats(&mut c).await;
    let (status, stdout, _) = run_raw(
        &mut c,
        snippet("s", "after", "python", "import os\nprint(os.getppid())"),
    )
    .await;
    assert_eq!(status.exit_code, Some(0), "{status:?}");
    let new_parent: i32 = String::from_utf8_lossy(&stdout).trim().parse().unwrap();
    assert_ne!(new_parent, zygote);
    let after = daemon_stats(&mut c).await;
    assert_eq!(
        count(&after.warm_starts, "python"),
        count(&before.warm_starts, "python") + 1
    );
    assert_eq!(after.zygote_restarts, 1);
    assert_eq!(zombies_under(d.pid() as i32), Vec::<i32>::new());
}

/// Every process: pid -> (parent pid, state letter).
fn process_table() -> BTreeMap<i32, (i32, String)> {
    let mut table = BTreeMap::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // "pid (comm) S ppid …": comm may hold spaces, so split after ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().unwrap_or("").to_string();
        let ppid: i32 = fields.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        table.insert(pid, (ppid, state));
    }
    table
}

/// Zombie processes among `root`'s descendants.
fn zombies_under(root: i32) -> Vec<i32> {
    let table = process_table();
    let under = |mut pid: i32| {
        while let Some(&(ppid, _)) = table.get(&pid) {
            if ppid == root {
                return true;
            }
            pid = ppid;
        }
        false
    };
    table
        .iter()
        .filter(|(pid, (_, state))| state.as_str() == "Z" && under(**pid))
        .map(|(pid, _)| *pid)
        .collect()
}

/// The live children of `parent`.
fn children_of(parent: i32) -> Vec<i32> {
    process_table()
        .into_iter()
        .filter(|(_, (ppid, state))| *ppid == parent && state.as_str() != "Z")
        .map(|(pid, _)| pid)
        .collect()
}

#[tokio::test]
async fn a_spare_child_killed_while_it_waits_is_replaced_and_the_next_run_is_warm() {
    let d = Daemon::start_as(Start::Warm, &[]).await;
    let mut c = d.client().await;
    create_session(&mut c, "s", every_grant()).await;
    let (status, stdout, _) = run_raw(
        &mut c,
        snippet("s", "first", "python", "import os\nprint(os.getppid())"),
    )
    .await;
    assert_eq!(status.exit_code, Some(0), "{status:?}");
    let zygote: i32 = String::from_utf8_lossy(&stdout).trim().parse().unwrap();
    // With nothing running, the zygote's children are spares, forked ahead
    // of the next request.
    let deadline = Instant::now() + Duration::from_secs(30);
    let spares = loop {
        let spares = children_of(zygote);
        if !spares.is_empty() {
            break spares;
        }
        assert!(Instant::now() < deadline, "the zygote forked no spare");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for pid in &spares {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
    }

    let before = daemon_stats(&mut c).await;
    let (status, stdout, stderr) = run_raw(
        &mut c,
        snippet(
            "s",
            "next",
            "python",
            "import os\nprint('parent', os.getppid())",
        ),
    )
    .await;
    assert_eq!(
        (status.state(), status.exit_code),
        (S::Exited, Some(0)),
        "{status:?} {stderr}"
    );
    assert_eq!(
        String::from_utf8_lossy(&stdout),
        format!("parent {zygote}\n")
    );
    let after = daemon_stats(&mut c).await;
    assert_eq!(
        count(&after.warm_starts, "python"),
        count(&before.warm_starts, "python") + 1,
        "the run after the spare died was not warm"
    );
    assert_eq!(after.zygote_restarts, 0, "the zygote itself was replaced");
    assert_eq!(zombies_under(d.pid() as i32), Vec::<i32>::new());
}

#[rstest]
#[tokio::test]
async fn a_scripts_own_objects_are_released_at_its_end(
    #[values(Start::Warm, Start::Cold)] start: Start,
) {
    let d = Daemon::start_as(start, &[]).await;
    let mut c = d.client().await;
    create_session(&mut c, "s", every_grant()).await;
    let kept = d.work_dir().join(format!("unclosed-{start:?}.txt"));
    // A file never closed, and an object whose __del__ writes: python
    // flushes the one and runs the other when the script's globals go.
    let code = format!(
        "class Noisy:\n    def __del__(self):\n        print('del ran')\n\
         noisy = Noisy()\nf = open({kept:?}, 'w')\nf.write('all of it ' * 1000)\n\
         print('main done')\n"
    );
    let (status, stdout, stderr) = run_raw(&mut c, snippet("s", "e", "python", &code)).await;
    assert_eq!(status.exit_code, Some(0), "{status:?} {stderr}");
    assert_eq!(String::from_utf8_lossy(&stdout), "main done\ndel ran\n");
    assert_eq!(
        std::fs::read_to_string(&kept).unwrap(),
        "all of it ".repeat(1000)
    );
}

#[rstest]
#[tokio::test]
async fn processes_a_snippet_forks_or_execs_die_with_it_and_are_reaped(
    #[values(Start::Warm, Start::Cold)] start: Start,
) {
    let d = Daemon::start_as(start, &[]).await;
    let mut c = d.client().await;
    create_session(&mut c, "s", every_grant()).await;
    // The warm and cold cases run in parallel in this process: one marker each.
    let marker = format!("elide-leftover-{}-{start:?}", std::process::id());
    // A plain child, and a grandchild whose parent exits at once (the
    // classic first half of daemonizing), both left running.
    let code = format!(
        "import os, subprocess\n\
         subprocess.Popen(['sh', '-c', 'exec -a {marker} sleep 300'])\n\
         if os.fork() == 0:\n    if os.fork() == 0:\n        os.execvp('sh', ['sh', '-c', 'exec -a {marker} sleep 300'])\n    os._exit(0)\n\
         os.wait()\nprint('left them')\n"
    );
    let (status, stdout, stderr) = run_raw(&mut c, snippet("s", "f", "python", &code)).await;
    assert_eq!(status.exit_code, Some(0), "{status:?} {stderr}");
    assert_eq!(stdout, b"left them\n");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let alive = processes_with(&marker);
        let zombies = zombies_under(d.pid() as i32);
        if alive.is_empty() && zombies.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left running: {alive:?}, zombies: {zombies:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn five_hundred_executions_at_once_all_run() {
    let d = Daemon::start_as(Start::Warm, &[]).await;
    let mut c = d.client().await;
    create_session(&mut c, "s", every_grant()).await;
    const N: usize = 500;
    let submits = (0..N).map(|i| {
        let mut c = c.clone();
        async move {
            let code = format!("print({i} * 2)");
            execute(&mut c, snippet("s", &format!("e{i}"), "python", &code)).await;
        }
    });
    futures::future::join_all(submits).await;
    for i in 0..N {
        let id = format!("e{i}");
        let status = wait_terminal(&mut c, "s", &id).await;
        assert_eq!(status.exit_code, Some(0), "{status:?}");
        let out = read_output(&mut c, "s", &id, (0, 0), false).await;
        assert_eq!(out.stdout, format!("{}\n", i * 2).as_bytes());
    }
    let s = daemon_stats(&mut c).await;
    assert_eq!(
        count(&s.warm_starts, "python") + count(&s.cold_starts, "python"),
        N as u64
    );
    assert!(count(&s.warm_starts, "python") > 0, "{s:?}");
}

#[test]
fn a_preload_module_that_does_not_exist_stops_the_daemon_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_elide-daemon"))
        .arg("--socket")
        .arg(dir.path().join("d.sock"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--python-preload")
        .arg("json,no_such_module_here")
        .env("RUST_BACKTRACE", "0")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("preload module 'no_such_module_here' could not be imported"),
        "{stderr}"
    );
    assert!(!dir.path().join("d.sock").exists());
}

#[rstest]
#[tokio::test]
async fn capabilities_and_stats_say_how_python_starts(
    #[values(Start::Warm, Start::Cold)] start: Start,
) {
    let d = Daemon::start_as(start, &["--python-preload", "json,re"]).await;
    let mut c = d.client().await;
    let caps = c
        .get_capabilities(pb::GetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    let mode = |lang: &str| {
        let l = caps.languages.iter().find(|l| l.language == lang).unwrap();
        (l.start_mode(), l.start_detail.clone())
    };
    let warm = start == Start::Warm;
    assert_eq!(
        mode("python"),
        if warm {
            (pb::StartMode::Zygote, "json,re".to_string())
        } else {
            (pb::StartMode::Cold, String::new())
        }
    );
    // Javascript is warm (a node pool) or cold with the rest of the daemon.
    assert_eq!(
        mode("javascript").0,
        if warm {
            pb::StartMode::Pool
        } else {
            pb::StartMode::Cold
        }
    );

    create_session(&mut c, "s", every_grant()).await;
    run_raw(&mut c, snippet("s", "p1", "python", "print(1)")).await;
    run_raw(&mut c, snippet("s", "j1", "javascript", "console.log(1)")).await;
    // PYTHONPATH is read at interpreter start: such an execution runs cold
    // even on a warm daemon, and sees it.
    let lib = d.dir.path().join("lib");
    std::fs::create_dir(&lib).unwrap();
    std::fs::write(lib.join("mylib.py"), "VALUE = 'from PYTHONPATH'\n").unwrap();
    let mut req = snippet("s", "p2", "python", "import mylib\nprint(mylib.VALUE)");
    req.env = env(&[("PYTHONPATH", &lib.display().to_string())]);
    let (_, out, err) = run_raw(&mut c, req).await;
    assert_eq!(out, b"from PYTHONPATH\n", "{err}");

    let s = daemon_stats(&mut c).await;
    let got = (
        count(&s.warm_starts, "python"),
        count(&s.cold_starts, "python"),
        count(&s.warm_starts, "javascript"),
        count(&s.cold_starts, "javascript"),
        s.zygote_restarts,
    );
    assert_eq!(
        got,
        if warm {
            (1, 1, 1, 0, 0)
        } else {
            (0, 2, 0, 1, 0)
        }
    );
}
