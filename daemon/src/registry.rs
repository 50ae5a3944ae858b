//! `SessionRegistry`: every session, every execution and every status event
//! of one daemon, and the operations of the API on them.
//!
//! All state sits behind one mutex that is never held across an `.await` or
//! a store write, so status changes and their event sequence numbers are
//! always in the same order. Every change follows the same three steps:
//! change the state in one lock section, persist what must be durable with
//! the lock released, and only then publish (wake watchers, wake waiters,
//! start a supervisor). A watcher therefore never sees an execution, or a
//! final status, that a crash could take back. Programs are run by
//! [`crate::supervisor`]; the gRPC layer ([`crate::service`]) only translates.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use elide_proto::elide::daemon::v1 as pb;
use nix::sys::signal::Signal;
use prost::Message;
use sha2::Digest;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::Instant;

use crate::elide_apis;
use crate::error::{DaemonError, Result};
use crate::events::{EventBatch, EventLog};
use crate::ids::{validate_id, IdSource};
use crate::limits::Limits;
use crate::output::OutputLog;
use crate::runtime::{Metrics, ProgramControl, Runtime, StartMode};
use crate::session::{check_ai_available, execution_policy, ExecutionPolicy, SessionPolicy};
use crate::store::{ExecutionRecord, SessionRecord, StateStore};
use crate::supervisor::{self, Ending, ExecutionReport, StopRequest};
use crate::time::{proto_timestamp, Clock};
use elide_proto::duration_to_proto;

/// Sequence numbers reserved (and persisted) at a time, so a restarted
/// daemon never reuses one.
const SEQ_BLOCK: u64 = 1024;

/// A new block is reserved (outside the lock) once fewer than this many
/// durably reserved numbers are left, so an event normally never waits for
/// the write.
const SEQ_LOW_WATER: u64 = SEQ_BLOCK / 2;

/// What the registry is built from.
pub struct RegistryDeps {
    /// Runs programs.
    pub runtime: Arc<dyn Runtime>,
    /// Durable state.
    pub store: Arc<dyn StateStore>,
    /// Wall-clock timestamps.
    pub clock: Arc<dyn Clock>,
    /// Fresh ids.
    pub ids: Arc<dyn IdSource>,
    /// Limits in force.
    pub limits: Limits,
    /// Directory under which each execution gets a scratch directory
    /// (`<scratch_dir>/<session>/<execution>`); the runtime owns its contents.
    pub scratch_dir: PathBuf,
    /// Version reported to clients.
    pub version: String,
}

/// One execution as the registry holds it.
struct Entry {
    /// Status without byte counts (those come from `output`).
    status: pb::ExecutionStatus,
    fingerprint: Vec<u8>,
    output: Arc<OutputLog>,
    control: Option<Arc<dyn ProgramControl>>,
    stop: Option<mpsc::UnboundedSender<StopRequest>>,
    /// Set once the execution ended and its final record is persisted (or
    /// it was forgotten); shared so it can be set after the lock is released.
    done: Arc<watch::Sender<bool>>,
    delete_when_done: bool,
}

/// An execution accepted under the lock but not yet durable: invisible to
/// every reader until its QUEUED record is written.
struct Pending {
    fingerprint: Vec<u8>,
    /// Dropped when the acceptance settles (published or undone); a retry
    /// of the same request waits for that.
    settled: watch::Sender<()>,
}

impl Entry {
    fn snapshot(&self) -> pb::ExecutionStatus {
        let mut s = self.status.clone();
        (s.stdout_bytes, s.stderr_bytes) = self.output.totals();
        s
    }

    fn is_terminal(&self) -> bool {
        is_terminal(self.status.state())
    }
}

/// Whether no further transition can happen from `state`.
pub fn is_terminal(state: pb::ExecutionState) -> bool {
    use pb::ExecutionState as S;
    matches!(state, S::Exited | S::Failed | S::Cancelled | S::TimedOut)
}

struct Session {
    record: SessionRecord,
    policy: SessionPolicy,
    executions: BTreeMap<String, Entry>,
    /// Executions being persisted before they are published.
    pending: BTreeMap<String, Pending>,
    /// Terminal executions, oldest first, for retention.
    finished: VecDeque<String>,
    events: EventLog,
    /// `record.seq_reserved` as last written to the store: every sequence
    /// number handed out is below it (see [`SessionRegistry::lock_with_seq_room`]).
    durable_seq: u64,
    /// The newest published seq; shared so it can be sent after the lock is
    /// released.
    changed: Arc<watch::Sender<u64>>,
    last_active: Instant,
    watchers: u32,
}

impl Session {
    /// A session as created or restored, with `record` already written.
    fn new(record: SessionRecord, policy: SessionPolicy, events: EventLog) -> Self {
        Session {
            durable_seq: record.seq_reserved,
            record,
            policy,
            executions: BTreeMap::new(),
            pending: BTreeMap::new(),
            finished: VecDeque::new(),
            events,
            changed: Arc::new(watch::Sender::new(0)),
            last_active: Instant::now(),
            watchers: 0,
        }
    }

    /// Whether the next sequence number is not yet durably reserved.
    fn needs_seqs(&self) -> bool {
        self.events.last_seq() + 1 >= self.durable_seq
    }

    /// Whether a new block should be reserved soon.
    fn wants_seqs(&self) -> bool {
        self.events.last_seq() + 1 + SEQ_LOW_WATER >= self.record.seq_reserved
    }

    /// Appends `status` as the next event; the caller holds the lock taken
    /// by [`SessionRegistry::lock_with_seq_room`], so the seq is durable.
    fn push_event(&mut self, status: pb::ExecutionStatus) -> Published {
        debug_assert!(!self.needs_seqs());
        let seq = self.events.push(status);
        Published {
            seq,
            changed: self.changed.clone(),
            wants_seqs: self.wants_seqs(),
        }
    }

    fn info(&self) -> pb::SessionInfo {
        let mut info = self.record.info.clone().unwrap_or_default();
        info.running_executions = self
            .executions
            .values()
            .filter(|e| !e.is_terminal())
            .count() as u32;
        info.retained_executions = self.executions.len() as u32;
        info.last_seq = self.events.last_seq();
        info
    }
}

/// An event appended under the lock, to announce once the lock is released
/// (and what it changed is persisted).
struct Published {
    seq: u64,
    changed: Arc<watch::Sender<u64>>,
    /// The session should reserve a new block of sequence numbers.
    wants_seqs: bool,
}

#[derive(Default)]
struct Inner {
    sessions: BTreeMap<String, Session>,
    queued: u32,
    draining: bool,
}

/// Sessions, executions and events of one daemon.
pub struct SessionRegistry {
    limits: Limits,
    runtime: Arc<dyn Runtime>,
    store: Arc<dyn StateStore>,
    clock: Arc<dyn Clock>,
    ids: Arc<dyn IdSource>,
    instance_id: String,
    version: String,
    started: Instant,
    scratch_dir: PathBuf,
    run_slots: Arc<Semaphore>,
    inner: Mutex<Inner>,
    /// Serializes sequence-reservation writes (never held with `inner`
    /// across a write), so a later reservation is never overwritten by an
    /// earlier one.
    reservations: Mutex<()>,
}

/// What [`SessionRegistry::reserve_execution`] found or reserved.
enum Reservation {
    /// The same request was accepted before: its current status.
    Existing(pb::ExecutionStatus),
    /// The same request is being accepted right now: settles when it is
    /// published or undone.
    InFlight(watch::Receiver<()>),
    /// Reserved as pending: its QUEUED status (no seq yet) and its policy.
    New(pb::ExecutionStatus, ExecutionPolicy),
}

impl SessionRegistry {
    /// Builds the registry and restores what the store holds: sessions come
    /// back; executions that were not finished are marked failed because the
    /// daemon restarted under them.
    pub fn open(deps: RegistryDeps) -> Result<Arc<Self>> {
        let instance_id = deps.ids.new_id();
        let reg = Arc::new(SessionRegistry {
            run_slots: Arc::new(Semaphore::new(deps.limits.max_running_executions as usize)),
            limits: deps.limits,
            runtime: deps.runtime,
            store: deps.store,
            clock: deps.clock,
            ids: deps.ids,
            instance_id,
            version: deps.version,
            started: Instant::now(),
            scratch_dir: deps.scratch_dir,
            inner: Mutex::default(),
            reservations: Mutex::default(),
        });
        reg.restore()?;
        Ok(reg)
    }

    fn restore(&self) -> Result<()> {
        let stored = self.store.load()?;
        let now = self.clock.now();
        let mut writes = Vec::new();
        let mut reservations = Vec::new();
        let mut inner = self.lock();
        for (id, (mut record, execs)) in stored.sessions {
            let config = record
                .info
                .as_ref()
                .and_then(|i| i.config.clone())
                .unwrap_or_default();
            let policy = match SessionPolicy::from_config(&config, &self.limits) {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(session_id = %id, error = %e, "dropping stored session with an invalid config");
                    continue;
                }
            };
            let first_seq = record.seq_reserved.max(1);
            // Covers the events pushed below for executions the restart
            // ended, plus a fresh block; written before the registry is
            // handed out, so before any of these numbers is seen.
            let restarted = execs
                .values()
                .filter(|r| !r.status.as_ref().is_some_and(|s| is_terminal(s.state())))
                .count() as u64;
            record.seq_reserved = first_seq + restarted + SEQ_BLOCK;
            reservations.push((id.clone(), record.clone()));
            let history: Vec<pb::ExecutionStatus> = execs
                .values()
                .filter_map(|r| r.status.clone())
                .filter(|s| is_terminal(s.state()))
                .collect();
            let events = EventLog::with_history(
                self.limits.max_events_retained_per_session as usize,
                first_seq,
                history,
            );
            let mut session = Session::new(record, policy, events);
            let mut execs: Vec<(String, ExecutionRecord)> = execs.into_iter().collect();
            execs.sort_by_key(|(_, r)| r.status.as_ref().map_or(0, |s| s.seq));
            for (exec_id, rec) in execs {
                let mut status = rec.status.clone().unwrap_or_default();
                let tails = [
                    (status.stdout_bytes, rec.stdout_tail.clone()),
                    (status.stderr_bytes, rec.stderr_tail.clone()),
                ];
                let output = Arc::new(OutputLog::restored(
                    self.limits.output_retention_bytes_per_stream,
                    tails,
                ));
                if !is_terminal(status.state()) {
                    status.set_state(pb::ExecutionState::Failed);
                    status.set_failure(pb::FailureReason::DaemonRestarted);
                    // RUNNING is not persisted (one write per execution is
                    // enough), so say only what is known.
                    status.message = format!(
                        "the daemon restarted (instance {} is gone, now {}) before this execution finished; it did not run to completion",
                        status.daemon_instance_id, self.instance_id
                    );
                    status.finished_at = Some(proto_timestamp(now));
                    session.events.push(status.clone());
                    status.seq = session.events.last_seq();
                    writes.push((
                        id.clone(),
                        exec_id.clone(),
                        ExecutionRecord {
                            status: Some(status.clone()),
                            ..rec.clone()
                        },
                    ));
                }
                session.finished.push_back(exec_id.clone());
                session.executions.insert(
                    exec_id,
                    Entry {
                        status,
                        fingerprint: rec.fingerprint,
                        output,
                        control: None,
                        stop: None,
                        done: Arc::new(watch::Sender::new(true)),
                        delete_when_done: false,
                    },
                );
            }
            inner.sessions.insert(id, session);
        }
        drop(inner);
        for (sid, record) in reservations {
            self.store.put_session(&sid, &record)?;
        }
        for (sid, eid, rec) in writes {
            self.store.put_execution(&sid, &eid, &rec)?;
        }
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // State is updated in single steps under the lock, so it stays
        // consistent even if a holder panicked.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This daemon instance's id (new on every start).
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// Limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The runtime that starts programs.
    pub(crate) fn runtime(&self) -> &Arc<dyn Runtime> {
        &self.runtime
    }

    /// Health report.
    pub fn health(&self) -> pb::HealthResponse {
        let status = if self.lock().draining {
            pb::health_response::ServingStatus::Draining
        } else {
            pb::health_response::ServingStatus::Serving
        };
        pb::HealthResponse {
            status: status as i32,
            instance_id: self.instance_id.clone(),
            version: self.version.clone(),
            uptime: Some(duration_to_proto(self.started.elapsed())),
        }
    }

    /// Load figures for `GetDaemonStats` (request counts are the service's).
    pub fn load(&self) -> (u32, u32, u32) {
        let inner = self.lock();
        let running = inner
            .sessions
            .values()
            .flat_map(|s| s.executions.values())
            .filter(|e| e.status.state() == pb::ExecutionState::Running)
            .count() as u32;
        (inner.sessions.len() as u32, running, inner.queued)
    }

    /// What this daemon can run.
    pub fn capabilities(&self) -> pb::GetCapabilitiesResponse {
        let enforced = self.runtime.enforces_intrinsics();
        pb::GetCapabilitiesResponse {
            daemon_version: self.version.clone(),
            instance_id: self.instance_id.clone(),
            languages: self
                .runtime
                .languages()
                .into_iter()
                .map(|l| pb::LanguageSupport {
                    language: l.language.name().into(),
                    available: l.unavailable_reason.is_none(),
                    runtime: l.runtime,
                    runtime_version: l.version,
                    unavailable_reason: l.unavailable_reason.unwrap_or_default(),
                    start_mode: match l.start_mode {
                        StartMode::Cold => pb::StartMode::Cold,
                        StartMode::Zygote => pb::StartMode::Zygote,
                        StartMode::Pool => pb::StartMode::Pool,
                    } as i32,
                    start_detail: l.start_detail,
                })
                .collect(),
            intrinsics: crate::intrinsics::describe(enforced, self.ai_available()),
            limits: Some(self.limits.to_proto()),
            ai_available: self.ai_available(),
            features: [
                "WatchSession",
                "WatchExecution",
                "StreamOutput",
                "GetExecutionMetrics",
            ]
            .into_iter()
            .map(String::from)
            .collect(),
        }
    }

    fn ai_available(&self) -> bool {
        // Local AI needs the real Elide runtime, which no runtime here offers.
        false
    }

    // ------------------------------------------------------------ sessions

    /// Creates a session, or returns the existing one when id and config match.
    pub fn create_session(&self, req: pb::CreateSessionRequest) -> Result<(pb::SessionInfo, bool)> {
        let id = if req.session_id.is_empty() {
            self.ids.new_id()
        } else {
            validate_id(&req.session_id, "session_id")?;
            req.session_id.clone()
        };
        let config = req.config.unwrap_or_default();
        let policy = SessionPolicy::from_config(&config, &self.limits)?;
        check_ai_available(&config, self.ai_available())?;
        let record = {
            let mut inner = self.lock();
            if inner.draining {
                return Err(shutting_down());
            }
            if let Some(existing) = inner.sessions.get_mut(&id) {
                let info = existing.record.info.as_ref();
                if info.and_then(|i| i.config.as_ref()) == Some(&config)
                    && info.map(|i| &i.labels) == Some(&req.labels)
                {
                    existing.last_active = Instant::now();
                    return Ok((existing.info(), false));
                }
                return Err(DaemonError::AlreadyExists(format!(
                    "session {id} already exists with a different config or labels; delete it first or pick another id"
                )));
            }
            if inner.sessions.len() >= self.limits.max_sessions as usize {
                return Err(DaemonError::ResourceExhausted(format!(
                    "the daemon already has {} sessions, its limit",
                    self.limits.max_sessions
                )));
            }
            let record = SessionRecord {
                info: Some(pb::SessionInfo {
                    session_id: id.clone(),
                    config: Some(config),
                    created_at: Some(proto_timestamp(self.clock.now())),
                    labels: req.labels,
                    ..Default::default()
                }),
                seq_reserved: 1 + SEQ_BLOCK,
            };
            let events = EventLog::new(self.limits.max_events_retained_per_session as usize, 1);
            inner
                .sessions
                .insert(id.clone(), Session::new(record.clone(), policy, events));
            record
        };
        if let Err(e) = self.store.put_session(&id, &record) {
            self.lock().sessions.remove(&id);
            return Err(e.into());
        }
        tracing::info!(session_id = %id, "session created");
        Ok((self.get_session(&id)?, true))
    }

    /// One session's info.
    pub fn get_session(&self, session_id: &str) -> Result<pb::SessionInfo> {
        let mut inner = self.lock();
        let session = session_mut(&mut inner, session_id)?;
        Ok(session.info())
    }

    /// All sessions, ordered by id.
    pub fn list_sessions(&self) -> Vec<pb::SessionInfo> {
        self.lock().sessions.values().map(Session::info).collect()
    }

    /// Deletes a session; its running executions are cancelled (SIGTERM,
    /// then SIGKILL after `grace`). Returns how many were running.
    pub fn delete_session(
        &self,
        session_id: &str,
        grace: Option<Duration>,
        why: &str,
    ) -> Result<u32> {
        let grace = self.cancel_grace(grace)?;
        let session = {
            let mut inner = self.lock();
            inner
                .sessions
                .remove(session_id)
                .ok_or_else(|| no_session(session_id))?
        };
        let mut cancelled = 0;
        for entry in session.executions.values() {
            if let Some(stop) = entry.stop.as_ref().filter(|_| !entry.is_terminal()) {
                cancelled += 1;
                let _ = stop.send(StopRequest {
                    signal: Signal::SIGTERM,
                    grace,
                    reason: why.to_string(),
                });
            }
        }
        self.store.remove_session(session_id)?;
        tracing::info!(session_id, cancelled, why, "session deleted");
        Ok(cancelled)
    }

    /// Deletes every session idle for longer than its idle timeout.
    pub fn expire_idle_sessions(&self) -> Vec<String> {
        let now = Instant::now();
        let expired: Vec<String> = self
            .lock()
            .sessions
            .iter()
            .filter(|(_, s)| {
                s.watchers == 0
                    && s.policy
                        .idle_timeout
                        .is_some_and(|t| now.duration_since(s.last_active) >= t)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in &expired {
            if let Err(e) = self.delete_session(id, None, "session expired after its idle timeout")
            {
                tracing::warn!(session_id = %id, error = %e, "expiring session failed");
            }
        }
        expired
    }

    /// Runs [`expire_idle_sessions`](Self::expire_idle_sessions) every `every`
    /// until the registry is dropped.
    pub fn spawn_expiry(self: &Arc<Self>, every: Duration) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let Some(reg) = weak.upgrade() else { return };
                reg.expire_idle_sessions();
            }
        });
    }

    // ------------------------------------------------------------ executions

    /// Accepts an execution (idempotently) and starts supervising it.
    ///
    /// The QUEUED record is written before anything is published: until
    /// then the execution is pending, invisible to every reader, and a store
    /// failure undoes it without a trace. A retry of the same request while
    /// it is pending waits for the outcome and then answers as for any retry
    /// (the same execution, `created` false), or accepts it itself if the
    /// first attempt was undone.
    pub async fn execute(
        self: &Arc<Self>,
        req: pb::ExecuteSnippetRequest,
    ) -> Result<(pb::ExecutionStatus, bool)> {
        let generated = req.execution_id.is_empty();
        let execution_id = if generated {
            self.ids.new_id()
        } else {
            validate_id(&req.execution_id, "execution_id")?;
            req.execution_id.clone()
        };
        let fingerprint = sha2::Sha256::digest(req.encode_to_vec()).to_vec();
        let session_id = req.session_id.clone();

        let (status, policy) = loop {
            match self.reserve_execution(&req, &session_id, &execution_id, &fingerprint)? {
                Reservation::Existing(status) => return Ok((status, false)),
                Reservation::InFlight(mut settled) => {
                    // Err once the first attempt settles (its sender is dropped).
                    let _ = settled.changed().await;
                }
                Reservation::New(status, policy) => break (status, policy),
            }
        };
        let record = ExecutionRecord {
            status: Some(status.clone()),
            fingerprint: fingerprint.clone(),
            ..Default::default()
        };
        if let Err(e) = self
            .store
            .put_execution(&session_id, &execution_id, &record)
        {
            // Not durable, so not accepted: undo what nobody has seen.
            let mut inner = self.lock();
            inner.queued = inner.queued.saturating_sub(1);
            if let Some(s) = inner.sessions.get_mut(&session_id) {
                s.pending.remove(&execution_id);
            }
            return Err(e.into());
        }

        let (status, output, stops, published) = {
            let mut inner = self.lock_with_seq_room(&session_id);
            let draining = inner.draining;
            let session = inner
                .sessions
                .get_mut(&session_id)
                .filter(|s| s.pending.contains_key(&execution_id));
            match session {
                Some(session) if !draining => {
                    session.pending.remove(&execution_id);
                    let published = session.push_event(status.clone());
                    let mut status = status;
                    status.seq = published.seq;
                    let (stop_tx, stop_rx) = mpsc::unbounded_channel();
                    let output = Arc::new(OutputLog::new(
                        self.limits.output_retention_bytes_per_stream,
                    ));
                    session.executions.insert(
                        execution_id.clone(),
                        Entry {
                            status: status.clone(),
                            fingerprint,
                            output: output.clone(),
                            control: None,
                            stop: Some(stop_tx),
                            done: Arc::new(watch::Sender::new(false)),
                            delete_when_done: false,
                        },
                    );
                    session.last_active = Instant::now();
                    (status, output, stop_rx, published)
                }
                // Deleted, or the daemon began draining, while the record
                // was written: the execution was never published, so it is
                // simply not accepted.
                session => {
                    if let Some(session) = session {
                        session.pending.remove(&execution_id);
                    }
                    inner.queued = inner.queued.saturating_sub(1);
                    drop(inner);
                    let _ = self.store.remove_execution(&session_id, &execution_id);
                    return Err(if draining {
                        shutting_down()
                    } else {
                        no_session(&session_id)
                    });
                }
            }
        };
        self.announce(&session_id, published);
        let spec = self.program_spec(&req, &session_id, &execution_id, &policy);
        tracing::info!(%session_id, %execution_id, language = %policy.language, "execution accepted");
        tokio::spawn(supervisor::supervise(
            self.clone(),
            session_id,
            spec,
            policy.timeout,
            req.output_backpressure,
            output,
            stops,
        ));
        Ok((status, true))
    }

    /// The checks and the reservation of [`execute`](Self::execute), in one
    /// lock section.
    fn reserve_execution(
        &self,
        req: &pb::ExecuteSnippetRequest,
        session_id: &str,
        execution_id: &str,
        fingerprint: &[u8],
    ) -> Result<Reservation> {
        let mut inner = self.lock();
        let draining = inner.draining;
        let queued = inner.queued;
        let session = session_mut(&mut inner, session_id)?;
        let existing = session
            .executions
            .get(execution_id)
            .map(|e| (&e.fingerprint, Some(e)))
            .or_else(|| {
                session
                    .pending
                    .get(execution_id)
                    .map(|p| (&p.fingerprint, None))
            });
        if let Some((existing_fingerprint, entry)) = existing {
            if existing_fingerprint.as_slice() != fingerprint {
                return Err(DaemonError::AlreadyExists(format!(
                    "execution {execution_id} already exists in session {session_id} with a different request"
                )));
            }
            return Ok(match entry {
                Some(e) => Reservation::Existing(e.snapshot()),
                None => Reservation::InFlight(session.pending[execution_id].settled.subscribe()),
            });
        }
        if draining {
            return Err(shutting_down());
        }
        let policy = execution_policy(
            session_id,
            &session.policy,
            req,
            &self.limits,
            self.ai_available(),
        )?;
        let serving = self
            .runtime
            .languages()
            .into_iter()
            .find(|l| l.language == policy.language);
        if let Some(reason) = serving.as_ref().and_then(|l| l.unavailable_reason.clone()) {
            return Err(DaemonError::FailedPrecondition(format!(
                "no runtime for {} on this daemon: {reason}",
                policy.language
            )));
        }
        // Only the `elide` runtime has polyglot calls and `elide:` modules.
        let runtime = serving.map(|l| l.runtime).unwrap_or_default();
        if runtime != "elide" {
            if let Some(refusal) = elide_apis::refusal(policy.language, &req.code, &runtime) {
                return Err(DaemonError::FailedPrecondition(refusal));
            }
        }
        if let Err(reason) = self.runtime.check_working_dir(&req.working_dir) {
            return Err(DaemonError::InvalidArgument(format!(
                "working_dir: {reason}"
            )));
        }
        if queued >= self.limits.max_queued_executions {
            return Err(DaemonError::ResourceExhausted(format!(
                "{queued} executions are already waiting for a run slot, the daemon's limit"
            )));
        }
        // The seq is given when the execution is published; the QUEUED
        // record is written without one (a restart renumbers it anyway).
        let status = pb::ExecutionStatus {
            session_id: session_id.to_string(),
            execution_id: execution_id.to_string(),
            state: pb::ExecutionState::Queued as i32,
            created_at: Some(proto_timestamp(self.clock.now())),
            daemon_instance_id: self.instance_id.clone(),
            language: policy.language.name().into(),
            memory_limit_mb: policy.memory_limit_mb.unwrap_or(0),
            timeout: policy.timeout.map(duration_to_proto),
            labels: req.labels.clone(),
            ..Default::default()
        };
        session.pending.insert(
            execution_id.to_string(),
            Pending {
                fingerprint: fingerprint.to_vec(),
                settled: watch::Sender::new(()),
            },
        );
        session.last_active = Instant::now();
        inner.queued += 1;
        Ok(Reservation::New(status, policy))
    }

    fn program_spec(
        &self,
        req: &pb::ExecuteSnippetRequest,
        session_id: &str,
        execution_id: &str,
        policy: &ExecutionPolicy,
    ) -> crate::runtime::ProgramSpec {
        let scratch = self.scratch_dir.join(session_id).join(execution_id);
        let mut env = req.env.clone();
        env.entry("PATH".into())
            .or_insert_with(|| "/usr/local/bin:/usr/bin:/bin".into());
        crate::runtime::ProgramSpec {
            execution_id: execution_id.into(),
            language: policy.language,
            code: req.code.clone(),
            source_name: if req.source_name.is_empty() {
                "snippet".into()
            } else {
                req.source_name.clone()
            },
            args: req.args.clone(),
            env,
            working_dir: if req.working_dir.is_empty() {
                scratch.clone()
            } else {
                req.working_dir.clone().into()
            },
            scratch_dir: scratch,
            memory_limit_bytes: policy.memory_limit_mb.map(|mb| mb * 1024 * 1024),
            intrinsics: policy.intrinsics.clone(),
            enable_ai: policy.enable_ai,
        }
    }

    /// Takes the lock with the next sequence number of `session_id` durably
    /// reserved, writing a new reservation first (lock released) if needed.
    ///
    /// Why a restarted daemon never reuses a sequence number: a number is
    /// handed out only by [`Session::push_event`], under this lock, and only
    /// while it is below `durable_seq`; `durable_seq` only grows, and only
    /// after the store returned from writing `seq_reserved` at least that
    /// high; a restart starts numbering at the stored `seq_reserved`.
    fn lock_with_seq_room(&self, session_id: &str) -> MutexGuard<'_, Inner> {
        loop {
            let inner = self.lock();
            if !inner
                .sessions
                .get(session_id)
                .is_some_and(Session::needs_seqs)
            {
                return inner;
            }
            drop(inner);
            self.reserve_seqs(session_id);
        }
    }

    /// Writes a new block of sequence numbers for `session_id` when it is
    /// running low (or out), with the registry lock released.
    fn reserve_seqs(&self, session_id: &str) {
        let _serial = self.reservations.lock().unwrap_or_else(|p| p.into_inner());
        let record = {
            let mut inner = self.lock();
            let Some(session) = inner.sessions.get_mut(session_id) else {
                return;
            };
            if !session.wants_seqs() && !session.needs_seqs() {
                return;
            }
            session.record.seq_reserved = session.events.last_seq() + 1 + SEQ_BLOCK;
            session.record.clone()
        };
        if let Err(e) = self.store.put_session(session_id, &record) {
            // As before this reservation was taken outside the lock: a store
            // that cannot write loses the guarantee, not the daemon's
            // progress.
            tracing::error!(session_id, error = %e, "persisting the sequence reservation failed");
        }
        let mut inner = self.lock();
        if let Some(session) = inner.sessions.get_mut(session_id) {
            session.durable_seq = session.durable_seq.max(record.seq_reserved);
        }
    }

    /// Announces an event appended under the lock: wakes the session's
    /// watchers, and reserves more sequence numbers if they run low. Called
    /// with the lock released, after what the event reports is persisted.
    fn announce(&self, session_id: &str, published: Published) {
        // Announcements may arrive out of order; the newest seq wins.
        published
            .changed
            .send_modify(|seq| *seq = (*seq).max(published.seq));
        if published.wants_seqs {
            self.reserve_seqs(session_id);
        }
    }

    /// Status of one execution.
    pub fn status(&self, session_id: &str, execution_id: &str) -> Result<pb::ExecutionStatus> {
        let mut inner = self.lock();
        let session = session_mut(&mut inner, session_id)?;
        Ok(entry(session, session_id, execution_id)?.snapshot())
    }

    /// Executions of a session (ordered by id) and the newest event's seq.
    pub fn list_executions(
        &self,
        session_id: &str,
        active_only: bool,
    ) -> Result<(Vec<pb::ExecutionStatus>, u64)> {
        let mut inner = self.lock();
        let session = session_mut(&mut inner, session_id)?;
        let list = session
            .executions
            .values()
            .filter(|e| !active_only || !e.is_terminal())
            .map(Entry::snapshot)
            .collect();
        Ok((list, session.events.last_seq()))
    }

    /// Sends a signal to a running execution.
    pub fn signal(
        &self,
        session_id: &str,
        execution_id: &str,
        signal: Signal,
    ) -> Result<pb::ExecutionStatus> {
        let (control, status) = {
            let mut inner = self.lock();
            let session = session_mut(&mut inner, session_id)?;
            let e = entry(session, session_id, execution_id)?;
            if e.is_terminal() {
                return Err(DaemonError::FailedPrecondition(format!(
                    "execution {execution_id} has already ended ({})",
                    e.status.state().as_str_name()
                )));
            }
            let Some(control) = e.control.clone() else {
                return Err(DaemonError::FailedPrecondition(format!(
                    "execution {execution_id} is still queued and has no process to signal"
                )));
            };
            (control, e.snapshot())
        };
        control.signal(signal)?;
        Ok(status)
    }

    /// Cancels an execution: `signal` now, SIGKILL after `grace`. A finished
    /// execution is left as it is.
    pub fn cancel(
        &self,
        session_id: &str,
        execution_id: &str,
        signal: Signal,
        grace: Option<Duration>,
    ) -> Result<pb::ExecutionStatus> {
        let grace = self.cancel_grace(grace)?;
        let mut inner = self.lock();
        let session = session_mut(&mut inner, session_id)?;
        let e = entry(session, session_id, execution_id)?;
        if let Some(stop) = e.stop.as_ref().filter(|_| !e.is_terminal()) {
            let _ = stop.send(StopRequest {
                signal,
                grace,
                reason: format!("cancelled with {} (grace {grace:?})", signal.as_str()),
            });
        }
        Ok(e.snapshot())
    }

    fn cancel_grace(&self, grace: Option<Duration>) -> Result<Duration> {
        let grace = grace.unwrap_or(self.limits.default_cancel_grace);
        if grace > self.limits.max_cancel_grace {
            return Err(DaemonError::InvalidArgument(format!(
                "grace {grace:?} is above the daemon's max_cancel_grace {:?}",
                self.limits.max_cancel_grace
            )));
        }
        Ok(grace)
    }

    /// Forgets an execution. A running one is refused unless `force`, which
    /// kills it and waits (up to `wait`) until it is gone.
    pub async fn delete_execution(
        &self,
        session_id: &str,
        execution_id: &str,
        force: bool,
        wait: Duration,
    ) -> Result<()> {
        let mut done = {
            let mut inner = self.lock();
            let session = session_mut(&mut inner, session_id)?;
            let e = session
                .executions
                .get_mut(execution_id)
                .ok_or_else(|| no_execution(session_id, execution_id))?;
            if e.is_terminal() {
                None
            } else if !force {
                return Err(DaemonError::FailedPrecondition(format!(
                    "execution {execution_id} is still {}; cancel it first or delete with force",
                    e.status.state().as_str_name()
                )));
            } else {
                e.delete_when_done = true;
                if let Some(stop) = &e.stop {
                    let _ = stop.send(StopRequest {
                        signal: Signal::SIGKILL,
                        grace: Duration::ZERO,
                        reason: "deleted with force".into(),
                    });
                }
                Some(e.done.subscribe())
            }
        };
        if let Some(done) = done.as_mut() {
            // The supervisor forgets it when it ends; wait so the caller
            // knows nothing runs any more.
            let _ = tokio::time::timeout(wait, done.wait_for(|d| *d)).await;
            return Ok(());
        }
        self.forget(session_id, execution_id);
        Ok(())
    }

    fn forget(&self, session_id: &str, execution_id: &str) {
        let removed = {
            let mut inner = self.lock();
            inner.sessions.get_mut(session_id).and_then(|s| {
                s.finished.retain(|id| id != execution_id);
                s.executions.remove(execution_id)
            })
        };
        if removed.is_some() {
            if let Err(e) = self.store.remove_execution(session_id, execution_id) {
                tracing::warn!(session_id, execution_id, error = %e, "removing execution record failed");
            }
        }
    }

    /// Resource use of an execution.
    pub fn metrics(&self, session_id: &str, execution_id: &str) -> Result<pb::ExecutionMetrics> {
        let control = {
            let mut inner = self.lock();
            let session = session_mut(&mut inner, session_id)?;
            entry(session, session_id, execution_id)?.control.clone()
        };
        let m = control.map(|c| c.metrics()).unwrap_or(Metrics::default());
        Ok(pb::ExecutionMetrics {
            sampled_at: Some(proto_timestamp(self.clock.now())),
            cpu_user: Some(duration_to_proto(m.cpu_user)),
            cpu_system: Some(duration_to_proto(m.cpu_system)),
            memory_rss_bytes: m.rss_bytes,
            memory_peak_bytes: m.peak_rss_bytes,
            process_count: m.process_count,
            live: m.live,
        })
    }

    // ------------------------------------------------------------ streams

    /// Subscribes to a session's events; the guard keeps the session alive
    /// (it does not expire while watched).
    pub fn watch_session(self: &Arc<Self>, session_id: &str) -> Result<WatchGuard> {
        let mut inner = self.lock();
        let session = session_mut(&mut inner, session_id)?;
        session.watchers += 1;
        Ok(WatchGuard {
            registry: self.clone(),
            session_id: session_id.to_string(),
            changed: session.changed.subscribe(),
        })
    }

    /// Events of a session after `after`.
    pub fn events_after(&self, session_id: &str, after: u64) -> Result<EventBatch> {
        let mut inner = self.lock();
        Ok(session_mut(&mut inner, session_id)?.events.after(after))
    }

    /// Output log of an execution.
    pub fn output(&self, session_id: &str, execution_id: &str) -> Result<Arc<OutputLog>> {
        let mut inner = self.lock();
        let session = session_mut(&mut inner, session_id)?;
        Ok(entry(session, session_id, execution_id)?.output.clone())
    }

    // ------------------------------------------------------------ shutdown

    /// Refuses new work, cancels every running execution and waits (up to
    /// `grace` plus a second) for them to end.
    pub async fn drain(&self, grace: Duration) {
        let mut waits = Vec::new();
        {
            let mut inner = self.lock();
            inner.draining = true;
            for session in inner.sessions.values() {
                for e in session.executions.values().filter(|e| !e.is_terminal()) {
                    if let Some(stop) = &e.stop {
                        let _ = stop.send(StopRequest {
                            signal: Signal::SIGTERM,
                            grace,
                            reason: "the daemon is shutting down".into(),
                        });
                    }
                    waits.push(e.done.subscribe());
                }
            }
        }
        let all = futures::future::join_all(waits.iter_mut().map(|w| w.wait_for(|d| *d)));
        let _ = tokio::time::timeout(grace + Duration::from_secs(1), all).await;
    }
}

/// What the supervisors report; see [`crate::supervisor::ExecutionReport`].
impl ExecutionReport for SessionRegistry {
    fn runtime(&self) -> &Arc<dyn Runtime> {
        &self.runtime
    }

    fn run_slots(&self) -> Arc<Semaphore> {
        self.run_slots.clone()
    }

    fn timeout_grace(&self) -> Duration {
        self.limits.timeout_grace
    }

    fn dequeued(&self) {
        let mut inner = self.lock();
        inner.queued = inner.queued.saturating_sub(1);
    }

    fn mark_running(&self, session_id: &str, execution_id: &str, control: Arc<dyn ProgramControl>) {
        let now = proto_timestamp(self.clock.now());
        let published = {
            let mut inner = self.lock_with_seq_room(session_id);
            let Some(session) = inner.sessions.get_mut(session_id) else {
                return;
            };
            let Some(e) = session.executions.get_mut(execution_id) else {
                return;
            };
            e.control = Some(control);
            e.status.set_state(pb::ExecutionState::Running);
            e.status.started_at = Some(now);
            let snapshot = e.snapshot();
            let published = session.push_event(snapshot);
            if let Some(e) = session.executions.get_mut(execution_id) {
                e.status.seq = published.seq;
            }
            published
        };
        // RUNNING is not persisted (one write per execution is enough).
        self.announce(session_id, published);
    }

    /// One lock section records the final status, its event, retention and
    /// a forced delete; then, with the lock released, the final record is
    /// persisted (or removed); only then are watchers and waiters woken.
    fn finish(&self, session_id: &str, execution_id: &str, ending: Ending) {
        let now = proto_timestamp(self.clock.now());
        let ended = {
            let mut inner = self.lock_with_seq_room(session_id);
            let Some(session) = inner.sessions.get_mut(session_id) else {
                return;
            };
            let Some(e) = session.executions.get_mut(execution_id) else {
                return;
            };
            e.status.finished_at = Some(now);
            apply_ending(&mut e.status, &ending);
            e.stop = None;
            // Closed only now, with the terminal state already set, so a
            // reader that sees the end of output also sees the final state.
            e.output.close();
            let delete = e.delete_when_done;
            let [(_, stdout_tail), (_, stderr_tail)] = e.output.tails();
            let fingerprint = e.fingerprint.clone();
            let done = e.done.clone();
            let snapshot = e.snapshot();
            let published = session.push_event(snapshot);
            let mut status = None;
            if delete {
                session.executions.remove(execution_id);
            } else {
                session.finished.push_back(execution_id.to_string());
                if let Some(e) = session.executions.get_mut(execution_id) {
                    e.status.seq = published.seq;
                    status = Some(e.snapshot());
                }
            }
            let mut evicted = Vec::new();
            while session.finished.len() > self.limits.max_retained_executions_per_session as usize
            {
                if let Some(old) = session.finished.pop_front() {
                    session.executions.remove(&old);
                    evicted.push(old);
                }
            }
            let record = status.map(|status| ExecutionRecord {
                status: Some(status),
                fingerprint,
                stdout_tail,
                stderr_tail,
            });
            Ended {
                record,
                evicted,
                done,
                published,
            }
        };
        tracing::info!(
            session_id,
            execution_id,
            state = ended
                .record
                .as_ref()
                .and_then(|r| r.status.as_ref())
                .map(|s| s.state().as_str_name()),
            deleted = ended.record.is_none(),
            "execution ended"
        );
        let stored = match &ended.record {
            Some(record) => self.store.put_execution(session_id, execution_id, record),
            None => self.store.remove_execution(session_id, execution_id),
        };
        if let Err(e) = stored {
            tracing::error!(session_id, execution_id, error = %e, "persisting the final status failed");
        }
        for old in &ended.evicted {
            let _ = self.store.remove_execution(session_id, old);
        }
        // Waiters wake only now, when the execution is persisted or
        // forgotten: a forced delete returns with the execution gone.
        self.announce(session_id, ended.published);
        ended.done.send_replace(true);
    }
}

/// What [`SessionRegistry::finish`] decided under the lock, to carry out
/// after it.
struct Ended {
    /// The final record to persist; `None`: the execution was deleted.
    record: Option<ExecutionRecord>,
    /// Executions dropped by retention.
    evicted: Vec<String>,
    done: Arc<watch::Sender<bool>>,
    published: Published,
}

/// Sets the terminal state, failure, message and exit of `s` for `ending`.
fn apply_ending(s: &mut pb::ExecutionStatus, ending: &Ending) {
    use crate::runtime::ExitInfo;
    use pb::ExecutionState as S;
    let set_exit = |s: &mut pb::ExecutionStatus, info: &ExitInfo| match info {
        ExitInfo::Code(c) => s.exit_code = Some(*c),
        ExitInfo::Signal(sig) => s.signal = sig.as_str().to_string(),
    };
    match ending {
        Ending::Exited(info) => {
            s.set_state(S::Exited);
            set_exit(s, info);
        }
        Ending::Cancelled(msg, info) => {
            s.set_state(S::Cancelled);
            s.message = msg.clone();
            if let Some(info) = info {
                set_exit(s, info);
            }
        }
        Ending::TimedOut(after, info) => {
            s.set_state(S::TimedOut);
            s.message = format!("timed out after {after:?}");
            set_exit(s, info);
        }
        Ending::MemoryExceeded(msg, info) => {
            s.set_state(S::Failed);
            s.set_failure(pb::FailureReason::MemoryLimitExceeded);
            s.message = msg.clone();
            set_exit(s, info);
        }
        Ending::SpawnFailed(msg) => {
            s.set_state(S::Failed);
            s.set_failure(pb::FailureReason::SpawnFailed);
            s.message = msg.clone();
        }
        Ending::Lost(msg) => {
            s.set_state(S::Failed);
            s.set_failure(pb::FailureReason::InternalError);
            s.message = msg.clone();
        }
    }
}

fn shutting_down() -> DaemonError {
    DaemonError::FailedPrecondition("the daemon is shutting down and accepts no new work".into())
}

fn no_session(session_id: &str) -> DaemonError {
    DaemonError::NotFound(format!("session {session_id:?} not found"))
}

fn no_execution(session_id: &str, execution_id: &str) -> DaemonError {
    DaemonError::NotFound(format!(
        "execution {execution_id:?} not found in session {session_id:?}"
    ))
}

fn session_mut<'a>(inner: &'a mut Inner, session_id: &str) -> Result<&'a mut Session> {
    let session = inner
        .sessions
        .get_mut(session_id)
        .ok_or_else(|| no_session(session_id))?;
    session.last_active = Instant::now();
    Ok(session)
}

fn entry<'a>(session: &'a Session, session_id: &str, execution_id: &str) -> Result<&'a Entry> {
    session
        .executions
        .get(execution_id)
        .ok_or_else(|| no_execution(session_id, execution_id))
}

/// A subscription to one session's events; counts as activity for expiry.
pub struct WatchGuard {
    registry: Arc<SessionRegistry>,
    session_id: String,
    /// Changes whenever an event is appended; closed when the session is deleted.
    pub changed: watch::Receiver<u64>,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        let mut inner = self.registry.lock();
        if let Some(s) = inner.sessions.get_mut(&self.session_id) {
            s.watchers = s.watchers.saturating_sub(1);
            s.last_active = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests;
