//! `SessionRegistry`: every session, every execution and every status event
//! of one daemon, and the operations of the API on them.
//!
//! All state sits behind one mutex that is never held across an `.await` or
//! a slow write, so status changes and their event sequence numbers are
//! always in the same order. Programs are run by [`crate::supervisor`]; the
//! gRPC layer ([`crate::service`]) only translates.

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
use crate::supervisor::{self, StopRequest};
use crate::time::{proto_timestamp, Clock};
use elide_proto::duration_to_proto;

/// Sequence numbers reserved (and persisted) at a time, so a restarted
/// daemon never reuses one.
const SEQ_BLOCK: u64 = 1024;

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
    done: watch::Sender<bool>,
    delete_when_done: bool,
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
    /// Terminal executions, oldest first, for retention.
    finished: VecDeque<String>,
    events: EventLog,
    changed: watch::Sender<u64>,
    last_active: Instant,
    watchers: u32,
}

impl Session {
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
}

/// How an execution ended, as the supervisor saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The program ended by itself.
    Exited(crate::runtime::ExitInfo),
    /// Stopped by a cancel; with how the program finally ended, if it ran.
    Cancelled(String, Option<crate::runtime::ExitInfo>),
    /// Stopped after its timeout.
    TimedOut(Duration, crate::runtime::ExitInfo),
    /// Killed over its memory limit.
    MemoryExceeded(String, crate::runtime::ExitInfo),
    /// Could not start.
    SpawnFailed(String),
    /// The runtime stopped reporting without an exit.
    Lost(String),
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
        });
        reg.restore()?;
        Ok(reg)
    }

    fn restore(&self) -> Result<()> {
        let stored = self.store.load()?;
        let now = self.clock.now();
        let mut writes = Vec::new();
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
            record.seq_reserved = first_seq + SEQ_BLOCK;
            self.store.put_session(&id, &record)?;
            let history: Vec<pb::ExecutionStatus> = execs
                .values()
                .filter_map(|r| r.status.clone())
                .filter(|s| is_terminal(s.state()))
                .collect();
            let mut session = Session {
                record,
                policy,
                executions: BTreeMap::new(),
                finished: VecDeque::new(),
                events: EventLog::with_history(
                    self.limits.max_events_retained_per_session as usize,
                    first_seq,
                    history,
                ),
                changed: watch::Sender::new(0),
                last_active: Instant::now(),
                watchers: 0,
            };
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
                        done: watch::Sender::new(true),
                        delete_when_done: false,
                    },
                );
            }
            inner.sessions.insert(id, session);
        }
        drop(inner);
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
            inner.sessions.insert(
                id.clone(),
                Session {
                    record: record.clone(),
                    policy,
                    executions: BTreeMap::new(),
                    finished: VecDeque::new(),
                    events: EventLog::new(self.limits.max_events_retained_per_session as usize, 1),
                    changed: watch::Sender::new(0),
                    last_active: Instant::now(),
                    watchers: 0,
                },
            );
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
    pub fn execute(
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

        let (status, policy, output, stops) = {
            let mut inner = self.lock();
            let draining = inner.draining;
            let queued = inner.queued;
            let session = session_mut(&mut inner, &session_id)?;
            if let Some(existing) = session.executions.get(&execution_id) {
                if existing.fingerprint == fingerprint {
                    return Ok((existing.snapshot(), false));
                }
                return Err(DaemonError::AlreadyExists(format!(
                    "execution {execution_id} already exists in session {session_id} with a different request"
                )));
            }
            if draining {
                return Err(shutting_down());
            }
            let policy = execution_policy(
                &session_id,
                &session.policy,
                &req,
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
            let status = pb::ExecutionStatus {
                session_id: session_id.clone(),
                execution_id: execution_id.clone(),
                state: pb::ExecutionState::Queued as i32,
                created_at: Some(proto_timestamp(self.clock.now())),
                daemon_instance_id: self.instance_id.clone(),
                language: policy.language.name().into(),
                memory_limit_mb: policy.memory_limit_mb.unwrap_or(0),
                timeout: policy.timeout.map(duration_to_proto),
                labels: req.labels.clone(),
                ..Default::default()
            };
            let (stop_tx, stop_rx) = mpsc::unbounded_channel();
            let output = Arc::new(OutputLog::new(
                self.limits.output_retention_bytes_per_stream,
            ));
            session.events.push(status.clone());
            let mut status = status;
            status.seq = session.events.last_seq();
            session.executions.insert(
                execution_id.clone(),
                Entry {
                    status: status.clone(),
                    fingerprint: fingerprint.clone(),
                    output: output.clone(),
                    control: None,
                    stop: Some(stop_tx),
                    done: watch::Sender::new(false),
                    delete_when_done: false,
                },
            );
            session.last_active = Instant::now();
            self.bump_seq_reservation(&session_id, session);
            session.changed.send_replace(session.events.last_seq());
            inner.queued += 1;
            (status, policy, output, stop_rx)
        };
        let record = ExecutionRecord {
            status: Some(status.clone()),
            fingerprint,
            ..Default::default()
        };
        if let Err(e) = self
            .store
            .put_execution(&session_id, &execution_id, &record)
        {
            // Not durable, so not accepted: undo.
            let mut inner = self.lock();
            inner.queued -= 1;
            if let Some(s) = inner.sessions.get_mut(&session_id) {
                s.executions.remove(&execution_id);
            }
            return Err(e.into());
        }
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

    /// Persists a new block of sequence numbers when the current one runs out.
    fn bump_seq_reservation(&self, session_id: &str, session: &mut Session) {
        if session.events.last_seq() + 1 >= session.record.seq_reserved {
            session.record.seq_reserved = session.events.last_seq() + 1 + SEQ_BLOCK;
            if let Err(e) = self.store.put_session(session_id, &session.record) {
                tracing::error!(session_id, error = %e, "persisting the sequence reservation failed");
            }
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

    // ------------------------------------------------------------ supervisor callbacks

    /// The runtime that starts programs.
    pub(crate) fn runtime(&self) -> &Arc<dyn Runtime> {
        &self.runtime
    }

    /// A run slot for one execution (waits while all are taken).
    pub(crate) fn run_slots(&self) -> Arc<Semaphore> {
        self.run_slots.clone()
    }

    /// The execution left the queue (started or cancelled while queued).
    pub(crate) fn dequeued(&self) {
        let mut inner = self.lock();
        inner.queued = inner.queued.saturating_sub(1);
    }

    /// The program started.
    pub(crate) fn mark_running(
        &self,
        session_id: &str,
        execution_id: &str,
        control: Arc<dyn ProgramControl>,
    ) {
        let now = proto_timestamp(self.clock.now());
        self.transition(session_id, execution_id, |e| {
            e.control = Some(control);
            e.status.set_state(pb::ExecutionState::Running);
            e.status.started_at = Some(now);
        });
    }

    /// The execution ended: record the final status, persist it with its
    /// output, and apply retention.
    pub(crate) fn finish(&self, session_id: &str, execution_id: &str, ending: Ending) {
        use crate::runtime::ExitInfo;
        use pb::ExecutionState as S;
        let now = proto_timestamp(self.clock.now());
        let set_exit = |s: &mut pb::ExecutionStatus, info: &ExitInfo| match info {
            ExitInfo::Code(c) => s.exit_code = Some(*c),
            ExitInfo::Signal(sig) => s.signal = sig.as_str().to_string(),
        };
        let mut delete = false;
        let mut evict = Vec::new();
        let mut forgotten = None;
        let record = self.transition(session_id, execution_id, |e| {
            let s = &mut e.status;
            s.finished_at = Some(now);
            match &ending {
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
            e.stop = None;
            // Closed only now, with the terminal state already set, so a
            // reader that sees the end of output also sees the final state.
            e.output.close();
            delete = e.delete_when_done;
            let [(_, out), (_, err)] = e.output.tails();
            (e.fingerprint.clone(), out, err)
        });
        let record =
            record.map(
                |((fingerprint, stdout_tail, stderr_tail), status)| ExecutionRecord {
                    status: Some(status),
                    fingerprint,
                    stdout_tail,
                    stderr_tail,
                },
            );
        {
            let mut inner = self.lock();
            if let Some(session) = inner.sessions.get_mut(session_id) {
                if delete {
                    forgotten = session.executions.remove(execution_id);
                } else {
                    session.finished.push_back(execution_id.to_string());
                }
                while session.finished.len()
                    > self.limits.max_retained_executions_per_session as usize
                {
                    if let Some(old) = session.finished.pop_front() {
                        session.executions.remove(&old);
                        evict.push(old);
                    }
                }
            }
        }
        if let Some(record) = record {
            tracing::info!(
                session_id,
                execution_id,
                state = record.status.as_ref().map(|s| s.state().as_str_name()),
                "execution ended"
            );
            let stored = if delete {
                self.store.remove_execution(session_id, execution_id)
            } else {
                self.store.put_execution(session_id, execution_id, &record)
            };
            if let Err(e) = stored {
                tracing::error!(session_id, execution_id, error = %e, "persisting the final status failed");
            }
        }
        for old in evict {
            let _ = self.store.remove_execution(session_id, &old);
        }
        // Waiters wake only now, when the execution is persisted or
        // forgotten: a forced delete returns with the execution gone.
        match forgotten {
            Some(e) => {
                e.done.send_replace(true);
            }
            None => {
                let mut inner = self.lock();
                if let Some(e) = inner
                    .sessions
                    .get_mut(session_id)
                    .and_then(|s| s.executions.get(execution_id))
                {
                    e.done.send_replace(true);
                }
            }
        }
    }

    /// Applies `f` to an execution, records the resulting status as a
    /// session event and wakes watchers. Returns `f`'s result and the new
    /// status; `None` when the session or the execution is gone.
    fn transition<T>(
        &self,
        session_id: &str,
        execution_id: &str,
        f: impl FnOnce(&mut Entry) -> T,
    ) -> Option<(T, pb::ExecutionStatus)> {
        let mut inner = self.lock();
        let session = inner.sessions.get_mut(session_id)?;
        let e = session.executions.get_mut(execution_id)?;
        let out = f(e);
        let seq = session.events.push(e.snapshot());
        e.status.seq = seq;
        let status = e.snapshot();
        self.bump_seq_reservation(session_id, session);
        session.changed.send_replace(seq);
        Some((out, status))
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
