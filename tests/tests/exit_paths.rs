//! How a task ends, as Nomad sees it through the plugin: the stop ladder
//! (`kill_signal`, then SIGKILL after `kill_timeout`), programs that die by
//! a signal of their own or an operator's, `elide_opts.timeout`, and
//! TypeScript. Real plugin binary, real daemon, real python3/node, real
//! FIFOs; every test asserts the `ExitResult` and `err` Nomad gets.

use std::time::{Duration, Instant};

use elide_e2e::cty::{PluginConfig, TaskConfig};
use elide_e2e::daemon::Daemon;
use elide_e2e::nomad::{Alloc, NomadHost};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rstest::rstest;

/// Upper bound for anything a test waits for.
const LIMIT: Duration = Duration::from_secs(30);

async fn setup() -> (Daemon, NomadHost) {
    let daemon = Daemon::start().await;
    let host = NomadHost::configured(&PluginConfig::for_socket(&daemon.socket)).await;
    (daemon, host)
}

/// `(exit_code, signal, err)` of a finished task, as Nomad reads them.
async fn ending(host: &mut NomadHost, task_id: &str) -> (i32, i32, String) {
    let exit = host.wait(task_id, LIMIT).await;
    let result = exit.result.expect("result is always set");
    (result.exit_code, result.signal, exit.err)
}

const PYTHON_IGNORES_SIGTERM: &str = "import signal, time\n\
signal.signal(signal.SIGTERM, lambda *_: print('ignoring SIGTERM', flush=True))\n\
print('ready', flush=True)\n\
while True:\n    time.sleep(0.1)\n";

const JAVASCRIPT_IGNORES_SIGTERM: &str =
    "process.on('SIGTERM', () => console.log('ignoring SIGTERM'));\n\
console.log('ready');\n\
setInterval(() => {}, 100);\n";

/// The stop ladder Nomad relies on: `kill_signal` first, SIGKILL once
/// `kill_timeout` has passed and not before, and WaitTask says signal 9.
#[rstest]
#[case::python("python", PYTHON_IGNORES_SIGTERM)]
#[case::javascript("javascript", JAVASCRIPT_IGNORES_SIGTERM)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_ignores_its_kill_signal_is_sigkilled_after_kill_timeout(
    #[case] language: &str,
    #[case] code: &str,
) {
    let (_daemon, mut host) = setup().await;
    let alloc = Alloc::new("stubborn");
    let task = alloc.task_config(&TaskConfig::code(language, code));
    host.start(task.clone()).await.expect("StartTask");
    alloc.stdout.wait_for("ready\n", LIMIT);

    let kill_timeout = Duration::from_secs(3);
    let asked = Instant::now();
    // StopTask returns once the task has exited.
    host.stop(&task.id, kill_timeout, "SIGTERM").await;
    let stopped_after = asked.elapsed();
    assert_eq!(
        ending(&mut host, &task.id).await,
        (0, 9, String::new()),
        "killed by the escalation's SIGKILL"
    );
    // The SIGKILL came only after kill_timeout: a lower bound, which a
    // loaded machine can only lengthen.
    assert!(
        stopped_after >= kill_timeout,
        "the task was gone {stopped_after:?} after StopTask, before its kill_timeout of {kill_timeout:?}"
    );
    assert_eq!(
        alloc.stdout.text_after_eofs(1, LIMIT),
        "ready\nignoring SIGTERM\n",
        "the kill signal reached the program, which ignored it"
    );
}

/// A program that handles its kill signal and exits 0 ended well: exit 0,
/// no signal, no error, however long `kill_timeout` is.
#[rstest]
#[case::python(
    "python",
    "import signal, sys, time\n\
def bye(*_):\n    print('terminating cleanly', flush=True)\n    sys.exit(0)\n\
signal.signal(signal.SIGTERM, bye)\nprint('ready', flush=True)\ntime.sleep(60)\n"
)]
#[case::javascript(
    "javascript",
    "process.on('SIGTERM', () => { console.log('terminating cleanly'); process.exit(0); });\n\
console.log('ready');\nsetInterval(() => {}, 1000);\n"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_handles_its_kill_signal_exits_0_with_no_signal(
    #[case] language: &str,
    #[case] code: &str,
) {
    let (_daemon, mut host) = setup().await;
    let alloc = Alloc::new("graceful");
    let task = alloc.task_config(&TaskConfig::code(language, code));
    host.start(task.clone()).await.expect("StartTask");
    alloc.stdout.wait_for("ready\n", LIMIT);
    host.stop(&task.id, Duration::from_secs(20), "SIGTERM")
        .await;
    assert_eq!(ending(&mut host, &task.id).await, (0, 0, String::new()));
    assert_eq!(
        alloc.stdout.text_after_eofs(1, LIMIT),
        "ready\nterminating cleanly\n"
    );
}

/// A program killed by a signal it raised itself is reported with that
/// signal, not as a success and not as a lost task.
#[rstest]
#[case::python_sigkill(
    "python",
    "import os\nprint('bye', flush=True)\nos.kill(os.getpid(), 9)\n",
    9
)]
#[case::python_sigsegv(
    "python",
    "import ctypes\nprint('bye', flush=True)\nctypes.string_at(0)\n",
    11
)]
#[case::javascript_sigkill(
    "javascript",
    "console.log('bye'); process.kill(process.pid, 'SIGKILL');",
    9
)]
#[case::javascript_sigterm(
    "javascript",
    "console.log('bye'); process.kill(process.pid, 'SIGTERM'); setInterval(() => {}, 1000);",
    15
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_that_dies_by_its_own_signal_reports_that_signal(
    #[case] language: &str,
    #[case] code: &str,
    #[case] signal: i32,
) {
    let (_daemon, mut host) = setup().await;
    let alloc = Alloc::new("suicide");
    let task = alloc.task_config(&TaskConfig::code(language, code));
    host.start(task.clone()).await.expect("StartTask");
    assert_eq!(
        ending(&mut host, &task.id).await,
        (0, signal, String::new())
    );
    assert_eq!(alloc.stdout.text_after_eofs(1, LIMIT), "bye\n");
}

/// `kill -9` of the program by an operator on the client.
#[rstest]
#[case::python(
    "python",
    "import os, time\nprint(os.getpid(), flush=True)\ntime.sleep(120)\n"
)]
#[case::javascript("javascript", "console.log(process.pid); setInterval(() => {}, 1000);")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_killed_by_an_operator_reports_sigkill(
    #[case] language: &str,
    #[case] code: &str,
) {
    let (_daemon, mut host) = setup().await;
    let alloc = Alloc::new("victim");
    let task = alloc.task_config(&TaskConfig::code(language, code));
    host.start(task.clone()).await.expect("StartTask");
    let printed = alloc.stdout.wait_for("\n", LIMIT);
    let pid: i32 = printed.trim().parse().expect("the program's pid");
    kill(Pid::from_raw(pid), Signal::SIGKILL).expect("kill -9 the program");
    assert_eq!(ending(&mut host, &task.id).await, (0, 9, String::new()));
    assert_eq!(alloc.stdout.text_after_eofs(1, LIMIT), printed);
}

/// `elide_opts.timeout`: the program gets SIGTERM at the timeout and
/// SIGKILL after the daemon's `--timeout-grace-secs` (2 s); Nomad is told
/// how the program ended, and `err` marks the run failed however it ended
/// (a program may exit 0 on the SIGTERM it got).
#[rstest]
#[case::dies_by_sigterm("import time\nprint('ready', flush=True)\ntime.sleep(60)\n", "", 0, 15)]
#[case::exits_0_on_sigterm(
    "import signal, sys, time\n\
def bye(*_):\n    print('cut short', flush=True)\n    sys.exit(0)\n\
signal.signal(signal.SIGTERM, bye)\nprint('ready', flush=True)\ntime.sleep(60)\n",
    "cut short\n",
    0,
    0
)]
#[case::ignores_sigterm(PYTHON_IGNORES_SIGTERM, "ignoring SIGTERM\n", 0, 9)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elide_opts_timeout_ends_the_task_and_fails_the_run(
    #[case] code: &str,
    #[case] after_ready: &str,
    #[case] exit_code: i32,
    #[case] signal: i32,
) {
    let (_daemon, mut host) = setup().await;
    let alloc = Alloc::new("timeout");
    let mut config = TaskConfig::code("python", code);
    config.timeout = Some("3s".into());
    let task = alloc.task_config(&config);
    host.start(task.clone()).await.expect("StartTask");
    let (code, sig, err) = ending(&mut host, &task.id).await;
    assert_eq!((code, sig), (exit_code, signal), "err: {err:?}");
    assert!(
        err.contains("timed out") || err.contains("timeout"),
        "a timeout must fail the run, naming it: {err:?}"
    );
    assert_eq!(
        alloc.stdout.text_after_eofs(1, LIMIT),
        format!("ready\n{after_ready}")
    );
}

/// TypeScript runs through StartTask/WaitTask like the other languages:
/// inline with `language`, and as a `.ts` script whose language is
/// inferred; a syntax error is the program's failure, named on stderr.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typescript_runs_through_the_plugin() {
    let (_daemon, mut host) = setup().await;

    let alloc = Alloc::new("ts-inline");
    let code = "interface Point { x: number; y: number }\n\
enum Answer { Yes = 3 }\n\
const p: Point = { x: 1, y: 2 };\n\
console.log(`sum=${p.x + p.y}`);\n\
console.error('to stderr');\n\
process.exit(Answer.Yes as number);\n";
    let task = alloc.task_config(&TaskConfig::code("typescript", code));
    host.start(task.clone()).await.expect("StartTask");
    assert_eq!(ending(&mut host, &task.id).await, (3, 0, String::new()));
    assert_eq!(alloc.stdout.text_after_eofs(1, LIMIT), "sum=3\n");
    assert_eq!(alloc.stderr.text_after_eofs(1, LIMIT), "to stderr\n");

    let alloc = Alloc::new("ts-script");
    alloc.write_file(
        "local/main.ts",
        "const greet = (name: string): string => `hello ${name}`;\nconsole.log(greet(process.argv[2]));\n",
    );
    let mut config = TaskConfig::script("local/main.ts");
    config.args = Some(vec!["nomad".into()]);
    let task = alloc.task_config(&config);
    host.start(task.clone()).await.expect("StartTask");
    assert_eq!(ending(&mut host, &task.id).await, (0, 0, String::new()));
    assert_eq!(alloc.stdout.text_after_eofs(1, LIMIT), "hello nomad\n");

    let alloc = Alloc::new("ts-broken");
    alloc.write_file("local/main.ts", "const x: number = ;\n");
    let task = alloc.task_config(&TaskConfig::script("local/main.ts"));
    host.start(task.clone()).await.expect("StartTask");
    assert_eq!(ending(&mut host, &task.id).await, (1, 0, String::new()));
    let stderr = alloc.stderr.text_after_eofs(1, LIMIT);
    assert!(stderr.starts_with("main.ts:1:"), "{stderr:?}");
    assert_eq!(alloc.stdout.text_after_eofs(1, LIMIT), "");
}
