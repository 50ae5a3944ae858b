//! The log FIFOs as Nomad's logmon reads them: megabytes of binary output
//! arrive byte for byte, a logmon that goes away mid-task and comes back
//! loses nothing, and a FIFO missing when the plugin recovers a task (the
//! allocation's logmon not started again yet) is picked up once it exists.
//! A symbolic link or a regular file where a FIFO should be is refused
//! with a task event and never written through.

use std::time::Duration;

use elide_e2e::cty::{PluginConfig, TaskConfig};
use elide_e2e::daemon::Daemon;
use elide_e2e::logmon::FifoReader;
use elide_e2e::nomad::{Alloc, NomadHost};
use elide_proto::hashicorp::nomad::plugins::drivers::proto::TaskEventsRequest;
use futures::StreamExt;
use rstest::rstest;
use sha2::{Digest, Sha256};

/// Upper bound for anything a test waits for.
const LIMIT: Duration = Duration::from_secs(60);

async fn setup() -> (Daemon, NomadHost) {
    let daemon = Daemon::start().await;
    let host = NomadHost::configured(&PluginConfig {
        // The binary-output snippets keep a copy of what they print in
        // the task's `tmp/`, outside their scratch directory.
        enabled_intrinsics: Some(["console", "env", "fs.write"].map(String::from).to_vec()),
        ..PluginConfig::for_socket(&daemon.socket)
    })
    .await;
    (daemon, host)
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Asserts `got == want` without printing megabytes: sizes, digests and
/// the first differing offset.
fn assert_same_bytes(got: &[u8], want: &[u8], what: &str) {
    if got == want {
        return;
    }
    let first_difference = got.iter().zip(want).position(|(a, b)| a != b);
    panic!(
        "{what}: got {} bytes (sha256 {}), want {} bytes (sha256 {}); first difference at {:?}",
        got.len(),
        sha256(got),
        want.len(),
        sha256(want),
        first_difference
    );
}

/// Writes 3 MiB of random bytes to stdout and 2 MiB to stderr, interleaved
/// in chunks of random sizes, and the same bytes to `OUT` and `ERR`.
const PYTHON_BINARY: &str = r#"import random, sys
def put(stream, data):
    while data:
        data = data[stream.write(data):]
rng = random.Random()
out, err = rng.randbytes(3 << 20), rng.randbytes(2 << 20)
open(OUT, 'wb').write(out)
open(ERR, 'wb').write(err)
o = e = 0
while o < len(out) or e < len(err):
    n = rng.randrange(1, 70000)
    put(sys.stdout.buffer, out[o:o + n])
    o += n
    m = rng.randrange(1, 70000)
    put(sys.stderr.buffer, err[e:e + m])
    e += m
sys.stdout.buffer.flush()
sys.stderr.buffer.flush()
"#;

const JAVASCRIPT_BINARY: &str = "const fs = require('fs'), crypto = require('crypto');\n\
const out = crypto.randomBytes(3 << 20), err = crypto.randomBytes(2 << 20);\n\
fs.writeFileSync(OUT, out);\n\
fs.writeFileSync(ERR, err);\n\
const size = () => 1 + Math.floor(Math.random() * 70000);\n\
let o = 0, e = 0;\n\
while (o < out.length || e < err.length) {\n\
  const n = size(), m = size();\n\
  if (o < out.length) process.stdout.write(out.subarray(o, o + n));\n\
  o += n;\n\
  if (e < err.length) process.stderr.write(err.subarray(e, e + m));\n\
  e += m;\n\
}\n";

#[rstest]
#[case::python("python", PYTHON_BINARY)]
#[case::javascript("javascript", JAVASCRIPT_BINARY)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn megabytes_of_binary_output_reach_the_fifos_byte_for_byte(
    #[case] language: &str,
    #[case] code: &str,
) {
    let (_daemon, mut host) = setup().await;
    let alloc = Alloc::new("binary");
    let out_file = alloc.task_dir().join("tmp/stdout.bin");
    let err_file = alloc.task_dir().join("tmp/stderr.bin");
    let code = format!(
        "{} = {:?}\n{} = {:?}\n{code}",
        if language == "python" {
            "OUT"
        } else {
            "const OUT"
        },
        out_file.display().to_string(),
        if language == "python" {
            "ERR"
        } else {
            "const ERR"
        },
        err_file.display().to_string(),
    );
    let task = alloc.task_config(&TaskConfig::code(language, &code));
    host.start(task.clone()).await.expect("StartTask");
    let exit = host.wait(&task.id, LIMIT).await;
    assert_eq!(
        (exit.result.expect("result").exit_code, exit.err.as_str()),
        (0, "")
    );
    alloc.stdout.wait_for_eofs(1, LIMIT);
    alloc.stderr.wait_for_eofs(1, LIMIT);
    let want_out = std::fs::read(&out_file).expect("the program's copy of stdout");
    let want_err = std::fs::read(&err_file).expect("the program's copy of stderr");
    assert_eq!((want_out.len(), want_err.len()), (3 << 20, 2 << 20));
    assert!(
        std::str::from_utf8(&want_out).is_err() && std::str::from_utf8(&want_err).is_err(),
        "the output must not be valid UTF-8"
    );
    assert_same_bytes(&alloc.stdout.bytes(), &want_out, "stdout");
    assert_same_bytes(&alloc.stderr.bytes(), &want_err, "stderr");
}

/// Nomad's logmon can die and be restarted while the task runs. The FIFO
/// then has no reader for a while; the program keeps writing, the output
/// waits, and the restarted reader gets all of it, in order, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logmon_that_goes_away_and_comes_back_loses_nothing() {
    let (_daemon, mut host) = setup().await;
    let alloc = Alloc::new("logmon");
    let go = alloc.task_dir().join("tmp/go");
    // 100 lines, then (once told) 40,000 more: about 600 KB, far more
    // than a pipe holds while nobody reads it.
    let code = format!(
        "import os, time\n\
for i in range(100):\n    print(f'line {{i}}', flush=True)\n\
while not os.path.exists({go:?}):\n    time.sleep(0.05)\n\
for i in range(100, 40100):\n    print(f'line {{i}}')\n\
raise SystemExit(2)\n",
        go = go.display().to_string()
    );
    let task = alloc.task_config(&TaskConfig::code("python", &code));
    host.start(task.clone()).await.expect("StartTask");
    alloc.stdout.wait_for("line 99\n", LIMIT);

    // The reader leaves at the next byte, which the go-ahead produces.
    let away = {
        let stdout = alloc.stdout.clone();
        tokio::task::spawn_blocking(move || stdout.go_away(LIMIT))
    };
    std::fs::write(&go, "").unwrap();
    let read_before_leaving = away.await.unwrap();
    assert!(
        read_before_leaving < 100_000,
        "the reader left early in the output ({read_before_leaving} bytes read)"
    );
    // Let the program run into the missing reader (no assertion rests on
    // this pause; it only makes the absence overlap the output).
    tokio::time::sleep(Duration::from_secs(1)).await;
    alloc.stdout.come_back();

    let exit = host.wait(&task.id, LIMIT).await;
    assert_eq!(
        (exit.result.expect("result").exit_code, exit.err.as_str()),
        (2, "")
    );
    let want: String = (0..40100).map(|i| format!("line {i}\n")).collect();
    alloc.stdout.wait_for_eofs(1, LIMIT);
    assert_same_bytes(&alloc.stdout.bytes(), want.as_bytes(), "stdout");
    assert_eq!(alloc.stdout.opens(), 2, "the reader opened the FIFO twice");
}

/// After a plugin crash, Nomad recovers the task before the allocation's
/// logmon (which creates the FIFOs) runs again: `RecoverTask` must work
/// with the FIFOs missing, and output from then on reaches them once they
/// exist, exactly once, with the program's true exit code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_missing_after_recovery_is_used_once_it_exists() {
    let (daemon, mut host) = setup().await;
    let config = PluginConfig::for_socket(&daemon.socket);
    let mut alloc = Alloc::new("orphaned");
    let go = alloc.task_dir().join("tmp/go");
    let code = format!(
        "import os, sys, time\nprint('before', flush=True)\n\
while not os.path.exists({go:?}):\n    time.sleep(0.05)\n\
print('after', flush=True)\nprint('after on stderr', file=sys.stderr, flush=True)\n\
raise SystemExit(6)\n",
        go = go.display().to_string()
    );
    let task = alloc.task_config(&TaskConfig::code("python", &code));
    let handle = host.start(task.clone()).await.expect("StartTask");
    let before = alloc.stdout.wait_for("before\n", LIMIT);
    alloc.wait_for_recorded_stdout(before.len(), LIMIT).await;

    host.plugin.kill_hard();
    // The crashed plugin's write ends are closed; the FIFOs go away.
    alloc.stdout.retire(1, LIMIT);
    alloc.stderr.retire(1, LIMIT);
    assert_eq!(alloc.stdout.text(), "before\n");

    let mut host = NomadHost::configured(&config).await;
    host.recover(&handle)
        .await
        .expect("RecoverTask with the FIFOs missing");
    std::fs::write(&go, "").unwrap();
    // logmon's prestart creates the FIFOs again.
    alloc.stdout = FifoReader::create(alloc.stdout.path());
    alloc.stderr = FifoReader::create(alloc.stderr.path());

    let exit = host.wait(&task.id, LIMIT).await;
    assert_eq!(
        (exit.result.expect("result").exit_code, exit.err.as_str()),
        (6, "")
    );
    assert_eq!(alloc.stdout.text_after_eofs(1, LIMIT), "after\n");
    assert_eq!(alloc.stderr.text_after_eofs(1, LIMIT), "after on stderr\n");
    host.destroy(&task.id).await;
}

/// What sits where Nomad's stdout FIFO should be.
#[derive(Debug, Clone, Copy)]
enum NotAFifo {
    /// A symbolic link to a file outside the allocation.
    Symlink,
    /// A regular file.
    RegularFile,
}

/// The allocation directory is writable by the task, so its FIFO paths
/// cannot be trusted: a symbolic link (to a file outside the allocation)
/// or a regular file in place of the stdout FIFO is refused, with a task
/// event naming the path and what was found, and nothing is written
/// through it. The task itself runs, its stderr FIFO gets its output and
/// its exit code is the program's.
#[rstest]
#[case::symlink(NotAFifo::Symlink, "a symbolic link")]
#[case::regular_file(NotAFifo::RegularFile, "a regular file")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_path_that_is_not_a_fifo_is_refused_and_never_written(
    #[case] kind: NotAFifo,
    #[case] named: &str,
) {
    let (_daemon, mut host) = setup().await;
    let alloc = Alloc::new("planted");
    let stdout_path = alloc.stdout.path().to_owned();
    alloc.stdout.abandon(LIMIT);
    let outside = tempfile::tempdir().unwrap();
    let target = match kind {
        NotAFifo::Symlink => {
            let target = outside.path().join("victim");
            std::fs::write(&target, "precious\n").unwrap();
            std::os::unix::fs::symlink(&target, &stdout_path).unwrap();
            target
        }
        NotAFifo::RegularFile => {
            std::fs::write(&stdout_path, "precious\n").unwrap();
            stdout_path.clone()
        }
    };
    let mut events = host
        .driver
        .task_events(TaskEventsRequest {})
        .await
        .expect("TaskEvents")
        .into_inner();
    let task = alloc.task_config(&TaskConfig::code(
        "python",
        "import sys\nprint('to stdout')\nprint('to stderr', file=sys.stderr)\nraise SystemExit(3)\n",
    ));
    host.start(task.clone()).await.expect("StartTask");

    let event = tokio::time::timeout(LIMIT, events.next())
        .await
        .expect("a task event in time")
        .expect("the event stream stays open")
        .expect("an event");
    assert_eq!(
        (
            event.task_id.as_str(),
            event.alloc_id.as_str(),
            event.task_name.as_str()
        ),
        (task.id.as_str(), alloc.alloc_id.as_str(), "planted")
    );
    assert_eq!(
        event.message,
        format!(
            "refusing to write task output to {}: it is {named}, not a FIFO; output to it is discarded",
            stdout_path.display()
        )
    );
    assert_eq!(
        event.annotations.get("path"),
        Some(&stdout_path.display().to_string())
    );
    let exit = host.wait(&task.id, LIMIT).await;
    assert_eq!(
        (exit.result.expect("result").exit_code, exit.err.as_str()),
        (3, "")
    );
    assert_eq!(alloc.stderr.text_after_eofs(1, LIMIT), "to stderr\n");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious\n");
    if let NotAFifo::Symlink = kind {
        assert!(std::fs::symlink_metadata(&stdout_path)
            .unwrap()
            .file_type()
            .is_symlink());
    }
    host.destroy(&task.id).await;
}
