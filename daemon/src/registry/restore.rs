//! Restoring sessions and executions from the store at start-up.

use super::*;

impl SessionRegistry {
    pub(super) fn restore(&self) -> Result<()> {
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
            let mut session = Session::new(record, policy, events, Instant::now());
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
}
