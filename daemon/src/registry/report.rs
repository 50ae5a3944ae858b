//! What execution runs report (started, ended), and the sequence-number
//! reservation every event depends on.

use super::*;

impl SessionRegistry {
    /// Takes the lock with the next sequence number of `session_id` durably
    /// reserved, writing a new reservation first (lock released) if needed.
    ///
    /// Why a restarted daemon never reuses a sequence number: a number is
    /// handed out only by [`Session::push_event`], under this lock, and only
    /// while it is below `durable_seq`; `durable_seq` only grows, and only
    /// after the store returned from writing `seq_reserved` at least that
    /// high; a restart starts numbering at the stored `seq_reserved`.
    pub(super) fn lock_with_seq_room(&self, session_id: &str) -> MutexGuard<'_, Inner> {
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
    pub(super) fn reserve_seqs(&self, session_id: &str) {
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
    pub(super) fn announce(&self, session_id: &str, published: Published) {
        // Announcements may arrive out of order; the newest seq wins.
        published
            .changed
            .send_modify(|seq| *seq = (*seq).max(published.seq));
        if published.wants_seqs {
            self.reserve_seqs(session_id);
        }
    }
}

/// What execution runs report; see [`crate::execution_run::ExecutionReport`].
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

    fn execution_metrics(&self) -> &ExecutionMetrics {
        &self.execution_metrics
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
            session.mark_running(execution_id, control, now)
        };
        // RUNNING is not persisted (one write per execution is enough).
        if let Some(published) = published {
            self.announce(session_id, published);
        }
    }

    /// One lock section records the final status, its event, retention and
    /// a forced delete (`Session::finish`); then, with the lock released,
    /// the final record is persisted (or removed); only then are watchers
    /// and waiters woken.
    fn finish(&self, session_id: &str, execution_id: &str, ending: Ending) {
        let now = proto_timestamp(self.clock.now());
        let retain = self.limits.max_retained_executions_per_session as usize;
        let ended = {
            let mut inner = self.lock_with_seq_room(session_id);
            let Some(session) = inner.sessions.get_mut(session_id) else {
                return;
            };
            match session.finish(execution_id, &ending, now, retain) {
                Some(ended) => ended,
                None => return,
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
