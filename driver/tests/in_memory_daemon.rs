//! The driver core against the reference daemon's service over an
//! in-memory transport: no socket anywhere, only the [`Dialer`] seam a
//! simulation will use. (Programs still run as real interpreters.)

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::plugin_config;

use elide_daemon::{
    DaemonService, FsStore, Limits, ProcessRuntime, ProcessRuntimeConfig, RandomIds, RegistryDeps,
    SessionRegistry,
};
use elide_driver::{
    ApiProbe, AttributeValue, BoxedIo, DaemonEndpoint, DaemonHealth, Dialer, DialerFactory,
    ElideDriver, TaskError, DEFAULT_DAEMON_SOCKET,
};
use elide_proto::hashicorp::nomad::plugins::drivers::proto::{TaskConfig, TaskHandle};
use elide_proto::wall_clock::SystemClock;
use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// Hands the server half of a fresh in-memory pipe to the daemon's server.
struct InMemoryDialer(mpsc::Sender<Result<tokio::io::DuplexStream, std::io::Error>>);

impl Dialer for InMemoryDialer {
    fn dial(&self) -> BoxFuture<'static, std::io::Result<BoxedIo>> {
        let server = self.0.clone();
        Box::pin(async move {
            let (client, server_half) = tokio::io::duplex(64 * 1024);
            server
                .send(Ok(server_half))
                .await
                .map_err(|_| std::io::Error::other("in-memory daemon is gone"))?;
            Ok(Box::new(client) as BoxedIo)
        })
    }

    fn target(&self) -> String {
        "in-memory".to_owned()
    }
}

/// A dialer that refuses connections while `up` is false, like a daemon
/// that is down or restarting.
struct SwitchableDialer {
    inner: Arc<dyn Dialer>,
    up: Arc<AtomicBool>,
}

impl Dialer for SwitchableDialer {
    fn dial(&self) -> BoxFuture<'static, std::io::Result<BoxedIo>> {
        if self.up.load(Ordering::SeqCst) {
            self.inner.dial()
        } else {
            Box::pin(async { Err(std::io::ErrorKind::ConnectionRefused.into()) })
        }
    }

    fn target(&self) -> String {
        self.inner.target()
    }
}

/// `dialers` behind a switch that starts in the "down" position.
fn switchable(dialers: &DialerFactory, up: &Arc<AtomicBool>) -> DialerFactory {
    let dialers = dialers.clone();
    let up = up.clone();
    Arc::new(move |endpoint| {
        Arc::new(SwitchableDialer {
            inner: dialers(endpoint),
            up: up.clone(),
        }) as Arc<dyn Dialer>
    })
}

/// A task config `{code = code, language = "python"}` as Nomad sends it:
/// encoded with the driver's own task schema.
fn python_task(code: &str) -> Vec<u8> {
    elide_e2e::cty::encode(
        &elide_driver::task_config_schema(),
        &elide_e2e::cty::TaskConfig::code("python", code).body(),
    )
}

fn in_memory_daemon(state: &std::path::Path) -> DialerFactory {
    in_memory_daemon_with(state, Limits::default())
}

fn in_memory_daemon_with(state: &std::path::Path, limits: Limits) -> DialerFactory {
    let registry = SessionRegistry::open(RegistryDeps {
        runtime: Arc::new(ProcessRuntime::discover(&ProcessRuntimeConfig::default())),
        store: Arc::new(FsStore::open(&state.join("state")).unwrap()),
        clock: Arc::new(SystemClock),
        ids: Arc::new(RandomIds),
        limits,
        scratch_dir: state.join("scratch"),
        version: "in-memory".into(),
    })
    .unwrap();
    let (connections, incoming) = mpsc::channel(16);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(DaemonService::new(registry).into_server())
            .serve_with_incoming(ReceiverStream::new(incoming)),
    );
    let dialer: Arc<dyn Dialer> = Arc::new(InMemoryDialer(connections));
    Arc::new(move |_| dialer.clone())
}

/// A plugin whose daemon connections come from `dialers`, configured with
/// an empty (all-defaults) plugin config.
fn plugin_with(dialers: &DialerFactory) -> ElideDriver {
    let driver = ElideDriver::with_dialers(
        Arc::new(ApiProbe::with_dialers(dialers.clone())),
        dialers.clone(),
    );
    driver
        .set_config(&plugin_config(&hcl::Body::default()))
        .unwrap();
    driver
}

/// Task `id` running the python `code`, with its alloc dir under `dir`.
fn task_config(dir: &std::path::Path, id: &str, code: &str) -> TaskConfig {
    std::fs::create_dir_all(dir.join("alloc/t")).unwrap();
    TaskConfig {
        id: id.into(),
        name: "t".into(),
        msgpack_driver_config: python_task(code),
        alloc_dir: dir.join("alloc").display().to_string(),
        stdout_path: "/dev/null".into(),
        stderr_path: "/dev/null".into(),
        ..Default::default()
    }
}

/// A python program that waits for the file `go` to exist, then exits 4.
fn exits_4_once(go: &std::path::Path) -> String {
    format!(
        "import os, time\nwhile not os.path.exists({go:?}):\n    time.sleep(0.05)\nraise SystemExit(4)\n",
        go = go.display().to_string()
    )
}

/// Starts `task` through a plugin on `dialers`, then lets that plugin die
/// (the execution keeps running in the daemon); returns the task handle
/// Nomad persisted.
async fn start_then_lose_the_plugin(dialers: &DialerFactory, task: &TaskConfig) -> TaskHandle {
    let first = plugin_with(dialers);
    let started = first
        .tasks()
        .start(&first.config().unwrap(), task.clone())
        .await
        .expect("start");
    started.handle
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_runs_over_an_injected_transport() {
    let dir = tempfile::tempdir().unwrap();
    let dialers = in_memory_daemon(dir.path());
    // Default config: the unix socket it names is never dialled.
    let driver = plugin_with(&dialers);
    let DaemonHealth::Healthy { attributes } = driver.health().await else {
        panic!("the in-memory daemon is healthy");
    };
    assert_eq!(
        attributes["driver.elide.daemon_version"],
        AttributeValue::String("in-memory".into())
    );

    let task = task_config(dir.path(), "alloc/t/0001", "import sys; sys.exit(4)");
    let plugin = driver.config().unwrap();
    let started = driver
        .tasks()
        .start(&plugin, task.clone())
        .await
        .expect("start");
    assert_eq!(started.handle.config.unwrap().id, task.id);
    let outcome = tokio::time::timeout(Duration::from_secs(20), driver.tasks().wait(&task.id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((outcome.exit_code, outcome.err.as_str()), (4, ""));
    // A retried StartTask for a live id is refused; after destroy, unknown.
    assert!(matches!(
        driver.tasks().start(&plugin, task.clone()).await,
        Err(TaskError::AlreadyStarted(id)) if id == task.id
    ));
    driver.tasks().destroy(None, &task.id, true).await.unwrap();
    assert!(matches!(
        driver.tasks().wait(&task.id).await,
        Err(TaskError::NotFound(_))
    ));
}

/// After a plugin restart, Nomad recovers tasks before anything else; a
/// daemon that is down at that moment must not make `RecoverTask` fail
/// (Nomad would then start a second copy while the execution keeps
/// running). The task is recovered at once and followed once the daemon
/// answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_while_the_daemon_is_unreachable_reattaches_later() {
    let dir = tempfile::tempdir().unwrap();
    let dialers = in_memory_daemon(dir.path());
    let go = dir.path().join("go");
    let task = task_config(dir.path(), "alloc/t/0002", &exits_4_once(&go));
    let mut handle = start_then_lose_the_plugin(&dialers, &task).await;

    let up = Arc::new(AtomicBool::new(false));
    let second = plugin_with(&switchable(&dialers, &up));
    let plugin = second.config().unwrap();
    // As after an agent restart: no driver config in the handle.
    handle
        .config
        .as_mut()
        .unwrap()
        .msgpack_driver_config
        .clear();
    second
        .tasks()
        .recover(&plugin, handle)
        .await
        .expect("RecoverTask succeeds while the daemon is unreachable");
    assert!(second.tasks().inspect(&task.id).unwrap().outcome.is_none());

    up.store(true, Ordering::SeqCst);
    std::fs::write(&go, "").unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(30), second.tasks().wait(&task.id))
        .await
        .expect("the exit is seen once the daemon is back")
        .unwrap();
    assert_eq!((outcome.exit_code, outcome.err.as_str()), (4, ""));
}

/// Nomad's kill timeout may exceed the daemon's `max_cancel_grace`, and a
/// job's `kill_signal` may be a name the daemon does not know. Neither may
/// make `StopTask` fail: Nomad would retry it for minutes and then wait
/// forever for a task that keeps running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_fits_what_the_daemon_accepts_instead_of_failing() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        max_cancel_grace: Duration::from_secs(1),
        ..Limits::default()
    };
    let dialers = in_memory_daemon_with(dir.path(), limits);
    let driver = plugin_with(&dialers);
    let plugin = driver.config().unwrap();
    let code =
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(60)\n";
    for (id, timeout, signal) in [
        ("alloc/t/0003", Duration::from_secs(30), "SIGTERM"),
        ("alloc/t/0004", Duration::from_millis(500), "SIGBOGUS"),
    ] {
        let task = task_config(dir.path(), id, code);
        driver.tasks().start(&plugin, task).await.expect("start");
        driver
            .tasks()
            .stop(Some(&plugin), id, timeout, signal)
            .await
            .unwrap_or_else(|e| panic!("StopTask({signal}, {timeout:?}) failed: {e}"));
        let outcome = tokio::time::timeout(Duration::from_secs(30), driver.tasks().wait(id))
            .await
            .expect("the task ended")
            .unwrap();
        assert_ne!(outcome.signal, 0, "{signal}: {outcome:?}");
    }
}

/// `driver_state` alone finds the workload: a task recovered after the
/// plugin configuration moved to another daemon is still followed on the
/// daemon it was started on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_finds_the_daemon_the_task_was_started_on() {
    let dir = tempfile::tempdir().unwrap();
    let in_memory = in_memory_daemon(dir.path());
    let started_on = DaemonEndpoint::Unix(DEFAULT_DAEMON_SOCKET.into());
    // Only the default endpoint leads to the daemon; any other refuses.
    let dialers: DialerFactory = Arc::new(move |endpoint| {
        let up = Arc::new(AtomicBool::new(*endpoint == started_on));
        Arc::new(SwitchableDialer {
            inner: in_memory(endpoint),
            up,
        }) as Arc<dyn Dialer>
    });
    let go = dir.path().join("go");
    let task = task_config(dir.path(), "alloc/t/0005", &exits_4_once(&go));
    let handle = start_then_lose_the_plugin(&dialers, &task).await;

    let second = plugin_with(&dialers);
    let moved = plugin_config(&hcl::body!({ daemon_socket = "/run/elide/other.sock" }));
    second.set_config(&moved).unwrap();
    second
        .tasks()
        .recover(&second.config().unwrap(), handle)
        .await
        .expect("RecoverTask");
    std::fs::write(&go, "").unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(30), second.tasks().wait(&task.id))
        .await
        .expect("the task is followed on the daemon it was started on")
        .unwrap();
    assert_eq!((outcome.exit_code, outcome.err.as_str()), (4, ""));
}

/// After a plugin restart, Nomad's kill path may call `StopTask` before its
/// wait path has called `RecoverTask`. The new plugin does not know the
/// task yet, but the stop must still reach the running execution (found by
/// the simulation's random-faults scenario: the stop was lost and the task
/// ran forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_before_recovery_still_stops_the_execution() {
    let dir = tempfile::tempdir().unwrap();
    let dialers = in_memory_daemon(dir.path());
    let task = task_config(dir.path(), "alloc/t/0009", "import time\ntime.sleep(120)\n");
    let handle = start_then_lose_the_plugin(&dialers, &task).await;

    let second = plugin_with(&dialers);
    let plugin = second.config().unwrap();
    second
        .tasks()
        .stop(Some(&plugin), &task.id, Duration::from_secs(5), "SIGTERM")
        .await
        .expect("StopTask for a task not recovered yet");
    second
        .tasks()
        .recover(&plugin, handle)
        .await
        .expect("recover");
    let outcome = tokio::time::timeout(Duration::from_secs(30), second.tasks().wait(&task.id))
        .await
        .expect("the stopped task ended instead of sleeping for two minutes")
        .unwrap();
    // SIGTERM killed the program, or (on a loaded machine) the cancel
    // came before the daemon had spawned it: either way the stop landed.
    // The latter has no exit code to report: -1 and why.
    assert!(
        outcome.signal == 15
            || (outcome.exit_code == -1
                && outcome
                    .err
                    .starts_with("cancelled before it started: cancelled with SIGTERM")),
        "{outcome:?}"
    );
}

/// Nomad calls `DestroyTask` once; after a plugin restart it can name a
/// task the new plugin never recovered. The execution the task id maps to
/// must go all the same (found by the simulation: random-faults seed
/// 910022 left finished executions on the daemon for good).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_of_a_task_not_held_deletes_the_execution_its_id_maps_to() {
    let dir = tempfile::tempdir().unwrap();
    let dialers = in_memory_daemon(dir.path());
    let task = task_config(dir.path(), "alloc/t/0010", "import sys; sys.exit(4)");
    let handle = start_then_lose_the_plugin(&dialers, &task).await;

    let second = plugin_with(&dialers);
    let plugin = second.config().unwrap();
    second
        .tasks()
        .destroy(Some(&plugin), &task.id, true)
        .await
        .expect("DestroyTask of a task not held");
    let recovered = second.tasks().recover(&plugin, handle).await;
    assert!(
        matches!(&recovered, Err(e) if e.to_string().contains("not on the daemon any more")),
        "{recovered:?}"
    );
}

/// A plugin that dies while the daemon has not confirmed a delete leaves
/// it in its journal; the next plugin process resumes it when configured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_left_unconfirmed_by_a_dead_plugin_is_resumed_by_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let dialers = in_memory_daemon(dir.path());
    let task = task_config(dir.path(), "alloc/t/0011", "import sys; sys.exit(4)");
    let config = elide_driver::PluginConfig {
        driver_state_dir: dir.path().join("driver-state"),
        ..Default::default()
    };
    let handle = start_then_lose_the_plugin(&dialers, &task).await;

    // A restarted plugin that cannot reach the daemon gets the one
    // DestroyTask Nomad sends, then dies too.
    let down = Arc::new(AtomicBool::new(false));
    let second = plugin_with(&switchable(&dialers, &down));
    second.tasks().resume(&config);
    second
        .tasks()
        .destroy(Some(&config), &task.id, true)
        .await
        .expect("DestroyTask never fails for an unreachable daemon");
    let journal = || {
        std::fs::read_to_string(config.driver_state_dir.join("pending-deletes.json"))
            .expect("the journal exists")
    };
    assert!(journal().contains("alloc.t.0011"), "{}", journal());
    drop(second);

    let next = plugin_with(&dialers);
    next.tasks().resume(&config);
    // A plugin that recovers the handle finds the execution while it exists.
    let gone = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let probe = plugin_with(&dialers);
            if matches!(
                probe.tasks().recover(&config, handle.clone()).await,
                Err(TaskError::NotFound(_))
            ) && journal() == "{}"
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        gone.is_ok(),
        "the next plugin deleted the execution and forgot the delete: {}",
        journal()
    );
}
