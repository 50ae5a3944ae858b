//! The registry's ordering guarantees, checked from inside a store: what the
//! registry has published (and whether it holds its lock) at the moment each
//! write happens.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc as std_mpsc, OnceLock, Weak};
use std::time::SystemTime;

use super::*;
use crate::ids::SequentialIds;
use crate::runtime::scripted::ScriptedRuntime;
use crate::store::{MemoryStore, StoreError, StoredState};
use elide_proto::wall_clock::TokioClock;

/// Holds a QUEUED write until the test releases it.
struct Gate {
    entered: std_mpsc::Sender<()>,
    release: std_mpsc::Receiver<()>,
}

/// A [`MemoryStore`] that looks at the registry on every write.
#[derive(Default)]
struct ProbeStore {
    disk: MemoryStore,
    registry: OnceLock<Weak<SessionRegistry>>,
    gate: Mutex<Option<Gate>>,
    fail_queued: AtomicBool,
    fail_sessions: AtomicBool,
    /// Whether a write while the registry lock is held counts as a
    /// violation (only meaningful on one thread: elsewhere another thread
    /// may hold it for its own reasons).
    check_lock: AtomicBool,
    /// `seq_reserved` as written, per session.
    reserved: Mutex<BTreeMap<String, u64>>,
    violations: Mutex<Vec<String>>,
}

impl ProbeStore {
    fn registry(&self) -> Option<Arc<SessionRegistry>> {
        self.registry.get().and_then(Weak::upgrade)
    }

    fn violation(&self, what: String) {
        self.violations.lock().unwrap().push(what);
    }

    fn violations(&self) -> Vec<String> {
        self.violations.lock().unwrap().clone()
    }

    /// Records a write made while this thread holds the registry lock.
    fn check_unlocked(&self, write: &str) {
        let Some(reg) = self.registry() else { return };
        if self.check_lock.load(Ordering::SeqCst) && reg.inner.try_lock().is_err() {
            self.violation(format!("{write} while the registry lock is held"));
        }
    }
}

impl StateStore for ProbeStore {
    fn load(&self) -> Result<StoredState, StoreError> {
        self.disk.load()
    }

    fn put_session(&self, session_id: &str, record: &SessionRecord) -> Result<(), StoreError> {
        self.check_unlocked("put_session");
        let first = !self.reserved.lock().unwrap().contains_key(session_id);
        if let Some(reg) = self.registry() {
            if first && reg.get_session(session_id).is_ok() {
                self.violation(format!(
                    "session {session_id} visible before its record was written"
                ));
            }
        }
        if first && self.fail_sessions.load(Ordering::SeqCst) {
            return Err(StoreError::Io {
                path: "test-disk".into(),
                source: std::io::Error::other("disk full"),
            });
        }
        self.reserved
            .lock()
            .unwrap()
            .insert(session_id.into(), record.seq_reserved);
        self.disk.put_session(session_id, record)
    }

    fn remove_session(&self, session_id: &str) -> Result<(), StoreError> {
        self.check_unlocked("remove_session");
        self.disk.remove_session(session_id)
    }

    fn put_execution(
        &self,
        session_id: &str,
        execution_id: &str,
        record: &ExecutionRecord,
    ) -> Result<(), StoreError> {
        self.check_unlocked("put_execution");
        let status = record.status.clone().unwrap_or_default();
        let reserved = self.reserved.lock().unwrap().get(session_id).copied();
        if status.seq != 0 && reserved.is_none_or(|r| status.seq >= r) {
            self.violation(format!(
                "{execution_id} written with seq {} but only {reserved:?} is reserved",
                status.seq
            ));
        }
        if let Some(reg) = self.registry() {
            if status.state() == pb::ExecutionState::Queued {
                // Not yet durable, so nobody may have seen it.
                if reg.status(session_id, execution_id).is_ok() {
                    self.violation(format!("{execution_id} visible before its QUEUED write"));
                }
            } else if is_terminal(status.state()) {
                // One transition: the registry already shows the final
                // state, but nobody was told yet.
                let shown = reg.status(session_id, execution_id).map(|s| s.state());
                if shown.as_ref().ok() != Some(&status.state()) {
                    self.violation(format!(
                        "{execution_id} is {shown:?} while its final write is {:?}",
                        status.state()
                    ));
                }
                let announced = reg.inner.lock().unwrap().sessions[session_id]
                    .changed
                    .borrow()
                    .to_owned();
                if announced >= status.seq {
                    self.violation(format!(
                        "{execution_id}'s final event {} announced (up to {announced}) before it was written",
                        status.seq
                    ));
                }
            }
        }
        if status.state() == pb::ExecutionState::Queued {
            if self.fail_queued.load(Ordering::SeqCst) {
                return Err(StoreError::Io {
                    path: "test-disk".into(),
                    source: std::io::Error::other("disk full"),
                });
            }
            let gate = self.gate.lock().unwrap().take();
            if let Some(gate) = gate {
                gate.entered.send(()).unwrap();
                gate.release.recv().unwrap();
            }
        }
        self.disk.put_execution(session_id, execution_id, record)
    }

    fn remove_execution(&self, session_id: &str, execution_id: &str) -> Result<(), StoreError> {
        self.check_unlocked("remove_execution");
        self.disk.remove_execution(session_id, execution_id)
    }
}

fn open(store: &Arc<ProbeStore>) -> Arc<SessionRegistry> {
    let reg = SessionRegistry::open(RegistryDeps {
        runtime: Arc::new(ScriptedRuntime::default()),
        store: store.clone(),
        clock: Arc::new(TokioClock::starting_at(SystemTime::UNIX_EPOCH)),
        ids: Arc::new(SequentialIds::new("i")),
        limits: Limits::default(),
        scratch_dir: std::env::temp_dir().join("elide-registry-unit"),
        version: "test".into(),
    })
    .unwrap();
    let _ = store.registry.set(Arc::downgrade(&reg));
    reg
}

fn request(execution_id: &str, code: &str) -> pb::ExecuteSnippetRequest {
    pb::ExecuteSnippetRequest {
        session_id: "s".into(),
        execution_id: execution_id.into(),
        language: "python".into(),
        code: code.into(),
        ..Default::default()
    }
}

async fn with_session(reg: &SessionRegistry) {
    reg.create_session(pb::CreateSessionRequest {
        session_id: "s".into(),
        ..Default::default()
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_execution_is_invisible_until_durable_and_a_retry_gets_the_same_one() {
    let store = Arc::new(ProbeStore::default());
    let reg = open(&store);
    with_session(&reg).await;
    let guard = reg.watch_session("s").unwrap();
    let (entered_tx, entered) = std_mpsc::channel();
    let (release, release_rx) = std_mpsc::channel();
    *store.gate.lock().unwrap() = Some(Gate {
        entered: entered_tx,
        release: release_rx,
    });

    let first = tokio::spawn({
        let reg = reg.clone();
        async move { reg.execute(request("e", "sleep 1s")).await }
    });
    tokio::task::spawn_blocking(move || entered.recv_timeout(Duration::from_secs(60)))
        .await
        .unwrap()
        .expect("the QUEUED write never started");

    // Being written: nobody sees it.
    assert_eq!(reg.events_after("s", 0).unwrap().events, vec![]);
    assert!(!guard.changed.has_changed().unwrap());
    assert!(matches!(
        reg.status("s", "e"),
        Err(DaemonError::NotFound(_))
    ));
    assert_eq!(reg.list_executions("s", false).unwrap().0, vec![]);
    assert_eq!(reg.get_session("s").unwrap().retained_executions, 0);
    // A different request under the same id is refused at once.
    let clash = reg.execute(request("e", "print other")).await.unwrap_err();
    assert!(matches!(clash, DaemonError::AlreadyExists(_)), "{clash:?}");
    // The same request waits for the first attempt.
    let retry = tokio::spawn({
        let reg = reg.clone();
        async move { reg.execute(request("e", "sleep 1s")).await }
    });
    tokio::task::yield_now().await;
    assert!(!retry.is_finished());

    release.send(()).unwrap();
    let (accepted, created) = first.await.unwrap().unwrap();
    let (again, created_again) = retry.await.unwrap().unwrap();
    assert_eq!((created, created_again), (true, false));
    assert_eq!(accepted.state(), pb::ExecutionState::Queued);
    assert_eq!(accepted.seq, 1);
    assert_eq!(
        (&again.execution_id, &again.created_at),
        (&accepted.execution_id, &accepted.created_at)
    );
    let events = reg.events_after("s", 0).unwrap().events;
    assert_eq!(events[0], accepted);
    let queued: Vec<_> = events
        .iter()
        .filter(|e| e.state() == pb::ExecutionState::Queued)
        .collect();
    assert_eq!(queued.len(), 1, "{events:?}");
    assert_eq!(store.violations(), Vec::<String>::new());
}

#[tokio::test(start_paused = true)]
async fn a_failed_queued_write_publishes_nothing_and_leaves_the_id_free() {
    let store = Arc::new(ProbeStore::default());
    let reg = open(&store);
    with_session(&reg).await;
    let guard = reg.watch_session("s").unwrap();
    store.fail_queued.store(true, Ordering::SeqCst);

    let err = reg.execute(request("e", "print hi")).await.unwrap_err();
    assert_eq!(err.to_string(), "state store: test-disk: disk full");
    assert_eq!(tonic::Status::from(err).code(), tonic::Code::Internal);
    assert_eq!(reg.events_after("s", 0).unwrap().events, vec![]);
    assert!(!guard.changed.has_changed().unwrap());
    assert!(matches!(
        reg.status("s", "e"),
        Err(DaemonError::NotFound(_))
    ));
    assert_eq!(reg.load(), (1, 0, 0));

    store.fail_queued.store(false, Ordering::SeqCst);
    let (status, created) = reg.execute(request("e", "print hi")).await.unwrap();
    assert!(created);
    assert_eq!((status.execution_id.as_str(), status.seq), ("e", 1));
    assert!(guard.changed.has_changed().unwrap());
    assert_eq!(store.violations(), Vec::<String>::new());
}

#[tokio::test(start_paused = true)]
async fn writes_happen_unlocked_sequence_numbers_are_reserved_first_and_endings_persist_before_they_are_announced(
) {
    let store = Arc::new(ProbeStore::default());
    store.check_lock.store(true, Ordering::SeqCst);
    let reg = open(&store);
    with_session(&reg).await;
    // Three events each (QUEUED, RUNNING, EXITED): past the first block.
    let executions = SEQ_BLOCK / 3 + 50;
    for batch in 0..executions / 10 {
        for i in 0..10 {
            reg.execute(request(&format!("e{batch}-{i}"), "print x"))
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let last_seq = reg.get_session("s").unwrap().last_seq;
        let reserved = store.reserved.lock().unwrap()["s"];
        assert!(
            last_seq < reserved,
            "seq {last_seq} used, {reserved} reserved"
        );
    }
    let last_seq = reg.get_session("s").unwrap().last_seq;
    assert_eq!(last_seq, 3 * (executions / 10) * 10);
    assert!(last_seq > SEQ_BLOCK);
    let finished = reg.status("s", "e0-0").unwrap();
    assert_eq!(
        (finished.state(), finished.exit_code, finished.stdout_bytes),
        (pb::ExecutionState::Exited, Some(0), 2)
    );
    assert_eq!(store.violations(), Vec::<String>::new());

    // A restarted registry numbers on from above everything used before.
    drop(reg);
    let again = Arc::new(ProbeStore {
        disk: MemoryStore::default(),
        ..Default::default()
    });
    for (id, (session, execs)) in store.disk.load().unwrap().sessions {
        again.disk.put_session(&id, &session).unwrap();
        for (eid, rec) in execs {
            again.disk.put_execution(&id, &eid, &rec).unwrap();
        }
    }
    let reg = open(&again);
    let (status, _) = reg.execute(request("after", "print y")).await.unwrap();
    assert!(status.seq > last_seq, "{} after {last_seq}", status.seq);
}

#[tokio::test(start_paused = true)]
async fn a_session_is_published_only_once_durable_and_a_failed_write_leaves_nothing() {
    let store = Arc::new(ProbeStore::default());
    let reg = open(&store);
    store.fail_sessions.store(true, Ordering::SeqCst);
    let err = reg
        .create_session(pb::CreateSessionRequest {
            session_id: "s".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(matches!(err, DaemonError::Store(_)), "{err:?}");
    assert!(matches!(
        reg.get_session("s"),
        Err(DaemonError::NotFound(_))
    ));
    assert_eq!(reg.list_sessions().len(), 0);
    // The id and its place under max_sessions are free again.
    store.fail_sessions.store(false, Ordering::SeqCst);
    with_session(&reg).await;
    assert_eq!(reg.get_session("s").unwrap().session_id, "s");
    assert_eq!(store.violations(), Vec::<String>::new());
}

/// Operators follow executions in the daemon's log: each end is one line
/// naming the session, the execution and its final state.
#[tokio::test(start_paused = true)]
#[tracing_test::traced_test]
async fn each_end_is_logged_with_its_session_execution_and_state() {
    let store = Arc::new(ProbeStore::default());
    let reg = open(&store);
    with_session(&reg).await;
    reg.execute(request("logged", "print x")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        reg.status("s", "logged").unwrap().state(),
        pb::ExecutionState::Exited
    );
    assert!(logs_contain("execution ended"));
    assert!(logs_contain(
        "session_id=\"s\" execution_id=\"logged\" state=\"EXITED\" deleted=false"
    ));
}
