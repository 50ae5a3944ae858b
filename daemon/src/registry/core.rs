//! The registry's state and its transitions, without I/O: no store, no
//! task spawning, no gRPC. The shell ([`super`]) takes the lock, applies
//! one of these, releases the lock, persists what they return and only
//! then publishes it.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use elide_proto::elide::daemon::v1 as pb;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::error::{DaemonError, Result};
use crate::events::EventLog;
use crate::execution_run::{Ending, StopRequest};
use crate::output::OutputLog;
use crate::runtime::ProgramControl;
use crate::session::SessionPolicy;
use crate::store::{ExecutionRecord, SessionRecord};

/// Sequence numbers reserved (and persisted) at a time, so a restarted
/// daemon never reuses one.
pub(super) const SEQ_BLOCK: u64 = 1024;

/// A new block is reserved (outside the lock) once fewer than this many
/// durably reserved numbers are left, so an event normally never waits for
/// the write.
pub(super) const SEQ_LOW_WATER: u64 = SEQ_BLOCK / 2;

/// One execution as the registry holds it.
pub(super) struct Entry {
    /// Status without byte counts (those come from `output`).
    pub(super) status: pb::ExecutionStatus,
    pub(super) fingerprint: Vec<u8>,
    pub(super) output: Arc<OutputLog>,
    pub(super) control: Option<Arc<dyn ProgramControl>>,
    pub(super) stop: Option<mpsc::UnboundedSender<StopRequest>>,
    /// Set once the execution ended and its final record is persisted (or
    /// it was forgotten); shared so it can be set after the lock is released.
    pub(super) done: Arc<watch::Sender<bool>>,
    pub(super) delete_when_done: bool,
}

/// An execution accepted under the lock but not yet durable: invisible to
/// every reader until its QUEUED record is written.
pub(super) struct Pending {
    pub(super) fingerprint: Vec<u8>,
    /// Dropped when the acceptance settles (published or undone); a retry
    /// of the same request waits for that.
    pub(super) settled: watch::Sender<()>,
}

impl Entry {
    pub(super) fn snapshot(&self) -> pb::ExecutionStatus {
        let mut s = self.status.clone();
        (s.stdout_bytes, s.stderr_bytes) = self.output.totals();
        s
    }

    pub(super) fn is_terminal(&self) -> bool {
        is_terminal(self.status.state())
    }
}

/// Whether no further transition can happen from `state`.
pub fn is_terminal(state: pb::ExecutionState) -> bool {
    use pb::ExecutionState as S;
    matches!(state, S::Exited | S::Failed | S::Cancelled | S::TimedOut)
}

pub(super) struct Session {
    pub(super) record: SessionRecord,
    pub(super) policy: SessionPolicy,
    pub(super) executions: BTreeMap<String, Entry>,
    /// Executions being persisted before they are published.
    pub(super) pending: BTreeMap<String, Pending>,
    /// Terminal executions, oldest first, for retention.
    pub(super) finished: VecDeque<String>,
    pub(super) events: EventLog,
    /// `record.seq_reserved` as last written to the store: every sequence
    /// number handed out is below it (see [`SessionRegistry::lock_with_seq_room`]).
    pub(super) durable_seq: u64,
    /// The newest published seq; shared so it can be sent after the lock is
    /// released.
    pub(super) changed: Arc<watch::Sender<u64>>,
    pub(super) last_active: Instant,
    pub(super) watchers: u32,
}

impl Session {
    /// A session as created or restored, with `record` already written.
    /// `now` is when it was last active: its creation or restore.
    pub(super) fn new(
        record: SessionRecord,
        policy: SessionPolicy,
        events: EventLog,
        now: Instant,
    ) -> Self {
        Session {
            durable_seq: record.seq_reserved,
            record,
            policy,
            executions: BTreeMap::new(),
            pending: BTreeMap::new(),
            finished: VecDeque::new(),
            events,
            changed: Arc::new(watch::Sender::new(0)),
            last_active: now,
            watchers: 0,
        }
    }

    /// Whether the next sequence number is not yet durably reserved.
    pub(super) fn needs_seqs(&self) -> bool {
        self.events.last_seq() + 1 >= self.durable_seq
    }

    /// Whether a new block should be reserved soon.
    pub(super) fn wants_seqs(&self) -> bool {
        self.events.last_seq() + 1 + SEQ_LOW_WATER >= self.record.seq_reserved
    }

    /// Appends `status` as the next event; the caller holds the lock taken
    /// by [`SessionRegistry::lock_with_seq_room`], so the seq is durable.
    pub(super) fn push_event(&mut self, status: pb::ExecutionStatus) -> Published {
        debug_assert!(!self.needs_seqs());
        let seq = self.events.push(status);
        Published {
            seq,
            changed: self.changed.clone(),
            wants_seqs: self.wants_seqs(),
        }
    }

    /// QUEUED → RUNNING for `execution_id` at `now`, with the handle that
    /// signals its program; the event to announce, `None` if the execution
    /// is gone. The caller holds the lock from `lock_with_seq_room`.
    pub(super) fn mark_running(
        &mut self,
        execution_id: &str,
        control: Arc<dyn ProgramControl>,
        now: prost_types::Timestamp,
    ) -> Option<Published> {
        let e = self.executions.get_mut(execution_id)?;
        e.control = Some(control);
        e.status.set_state(pb::ExecutionState::Running);
        e.status.started_at = Some(now);
        let snapshot = e.snapshot();
        let published = self.push_event(snapshot);
        if let Some(e) = self.executions.get_mut(execution_id) {
            e.status.seq = published.seq;
        }
        Some(published)
    }

    /// The end of `execution_id` at `now`, as one transition: the terminal
    /// status and its event, the output closed, retention (at most `retain`
    /// finished executions kept) or the removal a forced delete asked for.
    /// Returns what the shell persists and announces after releasing the
    /// lock; `None` if the execution is gone. The caller holds the lock from
    /// `lock_with_seq_room`.
    pub(super) fn finish(
        &mut self,
        execution_id: &str,
        ending: &Ending,
        now: prost_types::Timestamp,
        retain: usize,
    ) -> Option<Ended> {
        let e = self.executions.get_mut(execution_id)?;
        e.status.finished_at = Some(now);
        apply_ending(&mut e.status, ending);
        e.stop = None;
        // Closed only now, with the terminal state already set, so a reader
        // that sees the end of output also sees the final state.
        e.output.close();
        let delete = e.delete_when_done;
        let [(_, stdout_tail), (_, stderr_tail)] = e.output.tails();
        let fingerprint = e.fingerprint.clone();
        let done = e.done.clone();
        let snapshot = e.snapshot();
        let published = self.push_event(snapshot);
        let mut status = None;
        if delete {
            self.executions.remove(execution_id);
        } else {
            self.finished.push_back(execution_id.to_string());
            if let Some(e) = self.executions.get_mut(execution_id) {
                e.status.seq = published.seq;
                status = Some(e.snapshot());
            }
        }
        let mut evicted = Vec::new();
        while self.finished.len() > retain {
            if let Some(old) = self.finished.pop_front() {
                self.executions.remove(&old);
                evicted.push(old);
            }
        }
        let record = status.map(|status| ExecutionRecord {
            status: Some(status),
            fingerprint,
            stdout_tail,
            stderr_tail,
        });
        Some(Ended {
            record,
            evicted,
            done,
            published,
        })
    }

    pub(super) fn info(&self) -> pb::SessionInfo {
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
pub(super) struct Published {
    pub(super) seq: u64,
    pub(super) changed: Arc<watch::Sender<u64>>,
    /// The session should reserve a new block of sequence numbers.
    pub(super) wants_seqs: bool,
}

#[derive(Default)]
pub(super) struct Inner {
    pub(super) sessions: BTreeMap<String, Session>,
    /// Sessions being persisted before they are published: invisible to
    /// every reader, but holding their id and a place under `max_sessions`.
    pub(super) pending_sessions: BTreeMap<String, PendingSession>,
    pub(super) queued: u32,
    pub(super) draining: bool,
}

/// A session accepted under the lock but not yet durable.
pub(super) struct PendingSession {
    pub(super) config: pb::SessionConfig,
    pub(super) labels: BTreeMap<String, String>,
    /// Dropped when the creation settles (published or undone); the same
    /// request made meanwhile waits for that.
    pub(super) settled: watch::Sender<()>,
}

/// What [`SessionRegistry::finish`] decided under the lock, to carry out
/// after it.
pub(super) struct Ended {
    /// The final record to persist; `None`: the execution was deleted.
    pub(super) record: Option<ExecutionRecord>,
    /// Executions dropped by retention.
    pub(super) evicted: Vec<String>,
    pub(super) done: Arc<watch::Sender<bool>>,
    pub(super) published: Published,
}

/// Sets the terminal state, failure, message and exit of `s` for `ending`.
pub(super) fn apply_ending(s: &mut pb::ExecutionStatus, ending: &Ending) {
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
        Ending::OomKilled(msg, info) => {
            s.set_state(S::Failed);
            s.set_failure(pb::FailureReason::MemoryLimitExceeded);
            s.oom_killed = true;
            s.message = msg.clone();
            set_exit(s, info);
        }
        Ending::ExitedAtLimit(msg, info) => {
            s.set_state(S::Exited);
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

pub(super) fn shutting_down() -> DaemonError {
    DaemonError::FailedPrecondition("the daemon is shutting down and accepts no new work".into())
}

pub(super) fn no_session(session_id: &str) -> DaemonError {
    DaemonError::NotFound(format!("session {session_id:?} not found"))
}

pub(super) fn no_execution(session_id: &str, execution_id: &str) -> DaemonError {
    DaemonError::NotFound(format!(
        "execution {execution_id:?} not found in session {session_id:?}"
    ))
}

/// `session_id`, marked active at `now` (a request touched it).
pub(super) fn session_mut<'a>(
    inner: &'a mut Inner,
    session_id: &str,
    now: Instant,
) -> Result<&'a mut Session> {
    let session = inner
        .sessions
        .get_mut(session_id)
        .ok_or_else(|| no_session(session_id))?;
    session.last_active = now;
    Ok(session)
}

pub(super) fn entry<'a>(
    session: &'a Session,
    session_id: &str,
    execution_id: &str,
) -> Result<&'a Entry> {
    session
        .executions
        .get(execution_id)
        .ok_or_else(|| no_execution(session_id, execution_id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::Limits;
    use crate::runtime::ExitInfo;
    use nix::sys::signal::Signal;
    use pb::{ExecutionState as S, FailureReason as F};
    use std::time::Duration;

    fn session() -> Session {
        let policy = SessionPolicy::from_config(&Default::default(), &Limits::default()).unwrap();
        let record = SessionRecord {
            info: None,
            seq_reserved: 1 + SEQ_BLOCK,
        };
        Session::new(record, policy, EventLog::new(16, 1), Instant::now())
    }

    #[test]
    fn every_ending_sets_its_terminal_state_failure_message_and_exit() {
        let killed = ExitInfo::Signal(Signal::SIGKILL);
        let table = [
            (
                Ending::Exited(ExitInfo::Code(3)),
                S::Exited,
                F::Unspecified,
                "",
                Some(3),
                "",
            ),
            (
                Ending::Cancelled("cancelled with SIGTERM".into(), None),
                S::Cancelled,
                F::Unspecified,
                "cancelled with SIGTERM",
                None,
                "",
            ),
            (
                Ending::TimedOut(Duration::from_secs(2), killed),
                S::TimedOut,
                F::Unspecified,
                "timed out after 2s",
                None,
                "SIGKILL",
            ),
            (
                Ending::MemoryExceeded("over".into(), killed),
                S::Failed,
                F::MemoryLimitExceeded,
                "over",
                None,
                "SIGKILL",
            ),
            (
                Ending::SpawnFailed("no python".into()),
                S::Failed,
                F::SpawnFailed,
                "no python",
                None,
                "",
            ),
            (
                Ending::Lost("gone".into()),
                S::Failed,
                F::InternalError,
                "gone",
                None,
                "",
            ),
        ];
        for (ending, state, failure, message, exit_code, signal) in table {
            let mut s = pb::ExecutionStatus::default();
            apply_ending(&mut s, &ending);
            assert!(is_terminal(s.state()), "{ending:?}");
            assert_eq!(
                (
                    s.state(),
                    s.failure(),
                    s.message.as_str(),
                    s.exit_code,
                    s.signal.as_str()
                ),
                (state, failure, message, exit_code, signal),
                "{ending:?}"
            );
        }
    }

    mockall::mock! {
        Control {}
        impl ProgramControl for Control {
            fn signal(&self, sig: Signal) -> std::result::Result<(), crate::runtime::RuntimeError>;
            fn metrics(&self) -> crate::runtime::Metrics;
        }
    }

    fn queued(session: &mut Session, id: &str, delete_when_done: bool) {
        let mut status = pb::ExecutionStatus {
            execution_id: id.into(),
            ..Default::default()
        };
        status.set_state(S::Queued);
        session.executions.insert(
            id.into(),
            Entry {
                status,
                fingerprint: vec![7],
                output: Arc::new(OutputLog::new(1024)),
                control: None,
                stop: None,
                done: Arc::new(watch::Sender::new(false)),
                delete_when_done,
            },
        );
    }

    fn at(seconds: i64) -> prost_types::Timestamp {
        prost_types::Timestamp { seconds, nanos: 0 }
    }

    #[test]
    fn running_then_finishing_publishes_each_state_and_returns_the_record_to_persist() {
        let mut s = session();
        queued(&mut s, "e1", false);
        // The transitions never signal the program; the mock fails the test
        // if they do.
        let control = Arc::new(MockControl::new());
        let running = s.mark_running("e1", control, at(10)).expect("e1 exists");
        assert_eq!(s.executions["e1"].status.state(), S::Running);
        assert_eq!(s.executions["e1"].status.started_at, Some(at(10)));
        assert_eq!(s.executions["e1"].status.seq, running.seq);

        let ended = s
            .finish("e1", &Ending::Exited(ExitInfo::Code(3)), at(11), 8)
            .expect("e1 exists");
        assert_eq!(ended.published.seq, running.seq + 1);
        let record = ended.record.expect("a record to persist");
        let status = record.status.expect("its status");
        assert_eq!(
            (
                status.state(),
                status.exit_code,
                status.finished_at,
                status.seq
            ),
            (S::Exited, Some(3), Some(at(11)), ended.published.seq)
        );
        assert_eq!(record.fingerprint, vec![7]);
        assert!(ended.evicted.is_empty());
        assert!(
            s.executions["e1"].output.is_closed(),
            "output closed at the end"
        );
        assert_eq!(s.finished, ["e1"]);
        // Nothing is woken by the transition itself: the shell does that
        // after persisting.
        assert!(!*ended.done.borrow());
        assert_eq!(*ended.published.changed.borrow(), 0);
    }

    #[test]
    fn finishing_evicts_the_oldest_beyond_retention_and_a_forced_delete_leaves_no_record() {
        let mut s = session();
        for id in ["a", "b", "c"] {
            queued(&mut s, id, false);
        }
        queued(&mut s, "gone", true);
        let exit = Ending::Exited(ExitInfo::Code(0));
        for id in ["a", "b"] {
            assert!(s.finish(id, &exit, at(1), 2).unwrap().evicted.is_empty());
        }
        let ended = s.finish("c", &exit, at(2), 2).unwrap();
        assert_eq!(ended.evicted, ["a"]);
        assert!(!s.executions.contains_key("a"));
        assert_eq!(s.finished, ["b", "c"]);

        let deleted = s.finish("gone", &exit, at(3), 2).unwrap();
        assert!(deleted.record.is_none(), "deleted: nothing to persist");
        assert!(!s.executions.contains_key("gone"));
        assert_eq!(
            s.finished,
            ["b", "c"],
            "a deleted execution is not retained"
        );

        assert!(s.finish("never-was", &exit, at(4), 2).is_none());
        let control = Arc::new(MockControl::new());
        assert!(s.mark_running("never-was", control, at(4)).is_none());
    }

    #[test]
    fn a_session_asks_for_seqs_at_half_a_block_and_needs_them_at_the_end() {
        let mut s = session();
        assert!(!s.wants_seqs() && !s.needs_seqs());
        let mut last = None;
        while !s.wants_seqs() {
            last = Some(s.push_event(pb::ExecutionStatus::default()));
        }
        let published = last.unwrap();
        assert_eq!(published.seq, SEQ_BLOCK - SEQ_LOW_WATER);
        assert!(published.wants_seqs);
        assert!(!s.needs_seqs());
        while s.events.last_seq() + 1 < SEQ_BLOCK + 1 {
            s.push_event(pb::ExecutionStatus::default());
        }
        // Seq SEQ_BLOCK + 1 would not be durable: the shell must write a
        // reservation before the next event.
        assert_eq!(s.events.last_seq(), SEQ_BLOCK);
        assert!(s.needs_seqs());
        s.durable_seq = 1 + 2 * SEQ_BLOCK;
        assert!(!s.needs_seqs());
    }
}
