//! `SessionRegistry`: every session, every execution and every status event
//! of one daemon, and the operations of the API on them.
//!
//! All state sits behind one mutex that is never held across an `.await` or
//! a store write, so status changes and their event sequence numbers are
//! always in the same order. Every change follows the same three steps:
//! change the state in one lock section, persist what must be durable with
//! the lock released, and only then publish (wake watchers, wake waiters,
//! start its run). A watcher therefore never sees an execution, or a
//! final status, that a crash could take back. Programs are run by
//! [`crate::execution_run`]; the gRPC layer ([`crate::service`]) only translates.
//!
//! * `core`: the state and its transitions, without store, spawning or gRPC;
//! * this module: the lock and the API operations over it;
//! * `accept`: `execute` (reserve, persist, publish, spawn);
//! * `report`: what execution runs report, and sequence-number reservations;
//! * `restore`: start-up from the store.

use std::collections::BTreeMap;
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
use crate::execution_run::{self, Ending, ExecutionReport, StopRequest};
use crate::ids::{validate_id, IdSource};
use crate::limits::Limits;
use crate::output::OutputLog;
use crate::prometheus::{ExecutionMetrics, LiveFigures};
use crate::runtime::{Metrics, ProgramControl, Runtime, StartMode};
use crate::session::{check_ai_available, execution_policy, ExecutionPolicy, SessionPolicy};
use crate::store::{ExecutionRecord, SessionRecord, StateStore};
use crate::time::proto_timestamp;
use elide_proto::duration_to_proto;
use elide_proto::wall_clock::WallClock;

mod accept;
mod commands;
mod core;
mod report;
mod restore;

pub use self::core::is_terminal;
use self::core::*;

/// What [`SessionRegistry::reserve_session`] found or reserved.
enum SessionReservation {
    /// The same request was served before: the session's info.
    Existing(pb::SessionInfo),
    /// The same request is being served right now: settles when the
    /// session is published or undone.
    InFlight(watch::Receiver<()>),
    /// Reserved as pending: the record to write.
    New(SessionRecord),
}

/// What the registry is built from.
pub struct RegistryDeps {
    /// Runs programs.
    pub runtime: Arc<dyn Runtime>,
    /// Durable state.
    pub store: Arc<dyn StateStore>,
    /// Wall-clock timestamps.
    pub clock: Arc<dyn WallClock>,
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

/// Sessions, executions and events of one daemon.
pub struct SessionRegistry {
    limits: Limits,
    runtime: Arc<dyn Runtime>,
    store: Arc<dyn StateStore>,
    clock: Arc<dyn WallClock>,
    ids: Arc<dyn IdSource>,
    instance_id: String,
    version: String,
    started: Instant,
    scratch_dir: PathBuf,
    run_slots: Arc<Semaphore>,
    /// What execution runs record for Prometheus.
    execution_metrics: ExecutionMetrics,
    inner: Mutex<Inner>,
    /// Serializes sequence-reservation writes (never held with `inner`
    /// across a write), so a later reservation is never overwritten by an
    /// earlier one.
    reservations: Mutex<()>,
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
            execution_metrics: ExecutionMetrics::default(),
            inner: Mutex::default(),
            reservations: Mutex::default(),
        });
        reg.restore()?;
        Ok(reg)
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

    /// What execution runs record for Prometheus (the rest of the daemon's
    /// metrics are read at scrape time, see [`LiveFigures`]).
    pub fn execution_metrics(&self) -> &ExecutionMetrics {
        &self.execution_metrics
    }

    /// Load figures for `GetDaemonStats` (request counts are the service's):
    /// sessions, running executions, queued executions.
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
        let (memory_limits, memory_limits_detail) = match self.runtime.memory_enforcement() {
            crate::runtime::MemoryEnforcement::Enforced(detail) => ("enforced", detail),
            crate::runtime::MemoryEnforcement::Sampled(detail) => ("sampled", detail),
        };
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
            intrinsics: crate::intrinsics::describe(
                |name| self.runtime.intrinsic_enforcement(name),
                self.ai_available(),
            ),
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
            memory_limits: memory_limits.into(),
            memory_limits_detail,
        }
    }

    fn ai_available(&self) -> bool {
        // Local AI needs the real Elide runtime, which no runtime here offers.
        false
    }

    // ------------------------------------------------------------ sessions

    /// Creates a session (idempotently: the same id, config and labels
    /// again answer `created` false).
    ///
    /// Its record is written before it is published: until then the
    /// session is pending, invisible to every reader (so no execution can
    /// be accepted into a session a crash could take back), and a store
    /// failure undoes it without a trace. The same request made while it
    /// is pending waits for the outcome.
    pub async fn create_session(
        &self,
        req: pb::CreateSessionRequest,
    ) -> Result<(pb::SessionInfo, bool)> {
        let id = if req.session_id.is_empty() {
            self.ids.new_id()
        } else {
            validate_id(&req.session_id, "session_id")?;
            req.session_id.clone()
        };
        let config = req.config.unwrap_or_default();
        let policy = SessionPolicy::from_config(&config, &self.limits)?;
        check_ai_available(&config, self.ai_available())?;
        let record = loop {
            match self.reserve_session(&id, &config, &req.labels)? {
                SessionReservation::Existing(info) => return Ok((info, false)),
                SessionReservation::InFlight(mut settled) => {
                    // Err once the first attempt settles (its sender is dropped).
                    let _ = settled.changed().await;
                }
                SessionReservation::New(record) => break record,
            }
        };
        if let Err(e) = self.store.put_session(&id, &record) {
            // Not durable, so not created: undo what nobody has seen.
            self.lock().pending_sessions.remove(&id);
            return Err(e.into());
        }
        {
            let mut inner = self.lock();
            inner.pending_sessions.remove(&id);
            if inner.draining {
                drop(inner);
                let _ = self.store.remove_session(&id);
                return Err(shutting_down());
            }
            let events = EventLog::new(self.limits.max_events_retained_per_session as usize, 1);
            inner.sessions.insert(
                id.clone(),
                Session::new(record, policy, events, Instant::now()),
            );
        }
        tracing::info!(session_id = %id, "session created");
        Ok((self.get_session(&id)?, true))
    }

    /// The lock section of [`Self::create_session`]: the existing session
    /// the request repeats, one being created by the same request, or a
    /// new pending reservation with the record to write.
    fn reserve_session(
        &self,
        id: &str,
        config: &pb::SessionConfig,
        labels: &BTreeMap<String, String>,
    ) -> Result<SessionReservation> {
        let exists = || {
            DaemonError::AlreadyExists(format!(
                "session {id} already exists with a different config or labels; delete it first or pick another id"
            ))
        };
        let mut inner = self.lock();
        if inner.draining {
            return Err(shutting_down());
        }
        if let Some(existing) = inner.sessions.get_mut(id) {
            let info = existing.record.info.as_ref();
            if info.and_then(|i| i.config.as_ref()) == Some(config)
                && info.map(|i| &i.labels) == Some(labels)
            {
                existing.last_active = Instant::now();
                return Ok(SessionReservation::Existing(existing.info()));
            }
            return Err(exists());
        }
        if let Some(pending) = inner.pending_sessions.get(id) {
            if &pending.config == config && &pending.labels == labels {
                return Ok(SessionReservation::InFlight(pending.settled.subscribe()));
            }
            return Err(exists());
        }
        if inner.sessions.len() + inner.pending_sessions.len() >= self.limits.max_sessions as usize
        {
            return Err(DaemonError::ResourceExhausted(format!(
                "the daemon already has {} sessions, its limit",
                self.limits.max_sessions
            )));
        }
        inner.pending_sessions.insert(
            id.to_owned(),
            PendingSession {
                config: config.clone(),
                labels: labels.clone(),
                settled: watch::Sender::new(()),
            },
        );
        Ok(SessionReservation::New(SessionRecord {
            info: Some(pb::SessionInfo {
                session_id: id.to_owned(),
                config: Some(config.clone()),
                created_at: Some(proto_timestamp(self.clock.now())),
                labels: labels.clone(),
                ..Default::default()
            }),
            seq_reserved: 1 + SEQ_BLOCK,
        }))
    }

    /// One session's info.
    pub fn get_session(&self, session_id: &str) -> Result<pb::SessionInfo> {
        let mut inner = self.lock();
        let session = session_mut(&mut inner, session_id, Instant::now())?;
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

    /// Status of one execution.
    pub fn status(&self, session_id: &str, execution_id: &str) -> Result<pb::ExecutionStatus> {
        let mut inner = self.lock();
        let session = session_mut(&mut inner, session_id, Instant::now())?;
        Ok(entry(session, session_id, execution_id)?.snapshot())
    }

    /// Executions of a session (ordered by id) and the newest event's seq.
    pub fn list_executions(
        &self,
        session_id: &str,
        active_only: bool,
    ) -> Result<(Vec<pb::ExecutionStatus>, u64)> {
        let mut inner = self.lock();
        let session = session_mut(&mut inner, session_id, Instant::now())?;
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
            let session = session_mut(&mut inner, session_id, Instant::now())?;
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
        let session = session_mut(&mut inner, session_id, Instant::now())?;
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
            let session = session_mut(&mut inner, session_id, Instant::now())?;
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
            // Its run forgets it when it ends; wait so the caller
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
            let session = session_mut(&mut inner, session_id, Instant::now())?;
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
            memory_cache_bytes: m.cache_bytes,
            memory_usage_bytes: m.usage_bytes,
            measured: m.measured.iter().map(|n| n.to_string()).collect(),
        })
    }

    // ------------------------------------------------------------ streams

    /// Subscribes to a session's events; the guard keeps the session alive
    /// (it does not expire while watched).
    pub fn watch_session(self: &Arc<Self>, session_id: &str) -> Result<WatchGuard> {
        let mut inner = self.lock();
        let session = session_mut(&mut inner, session_id, Instant::now())?;
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
        Ok(session_mut(&mut inner, session_id, Instant::now())?
            .events
            .after(after))
    }

    /// Output log of an execution.
    pub fn output(&self, session_id: &str, execution_id: &str) -> Result<Arc<OutputLog>> {
        let mut inner = self.lock();
        let session = session_mut(&mut inner, session_id, Instant::now())?;
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

/// What Prometheus reads at each scrape: the same figures `GetDaemonStats`
/// reports.
impl LiveFigures for SessionRegistry {
    fn load(&self) -> (u32, u32, u32) {
        SessionRegistry::load(self)
    }

    fn start_stats(&self) -> crate::runtime::StartStats {
        self.runtime.start_stats()
    }
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
