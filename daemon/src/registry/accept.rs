//! Accepting an execution: checks and reservation in one lock section, the
//! QUEUED write with the lock released, then publication and the
//! execution run.

use super::*;

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
    /// Accepts an execution (idempotently) and starts running it.
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
        tokio::spawn(execution_run::run_execution(
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
        let session = session_mut(&mut inner, session_id, Instant::now())?;
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
        if let Err(refusal) = self
            .runtime
            .check_run_as(&req.run_as_user, &req.working_dir)
        {
            return Err(run_as_refused(&refusal));
        }
        let warnings = self
            .runtime
            .check_intrinsics(&policy.intrinsics)
            .map_err(DaemonError::FailedPrecondition)?;
        if let Some(cgroup) = &req.nomad_cgroup {
            if !cgroup.path.starts_with('/') || cgroup.path.split('/').any(|c| c == "..") {
                return Err(DaemonError::InvalidArgument(format!(
                    "nomad_cgroup.path: {:?} is not an absolute path without \"..\"",
                    cgroup.path
                )));
            }
        }
        if queued >= self.limits.max_queued_executions {
            return Err(DaemonError::ResourceExhausted(format!(
                "the daemon's run queue is full (waiting for a run slot: {queued}; limit: {}, --max-queued)",
                self.limits.max_queued_executions
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
            warnings,
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
            run_as_user: req.run_as_user.clone(),
            scratch_dir: scratch,
            memory_limit_bytes: policy.memory_limit_mb.map(|mb| mb * 1024 * 1024),
            nomad_cgroup: req
                .nomad_cgroup
                .as_ref()
                .map(|c| crate::cgroup::NomadCgroup {
                    path: c.path.clone().into(),
                    cpu_shares: c.cpu_shares,
                    cpuset_cpus: c.cpuset_cpus.clone(),
                    memory_soft_bytes: (c.memory_soft_mb > 0)
                        .then(|| c.memory_soft_mb * 1024 * 1024),
                }),
            intrinsics: policy.intrinsics.clone(),
            enable_ai: policy.enable_ai,
        }
    }
}

/// A program that cannot run as its user, as the client sees it: the field
/// at fault and the user or directory.
fn run_as_refused(refusal: &crate::runtime::run_as::UserRefusal) -> DaemonError {
    use crate::runtime::run_as::UserRefusal;
    match refusal {
        UserRefusal::CannotSwitch { .. } => {
            DaemonError::FailedPrecondition(format!("run_as_user: {refusal}"))
        }
        UserRefusal::CannotEnter(_) => {
            DaemonError::InvalidArgument(format!("working_dir: {refusal}"))
        }
        UserRefusal::Unknown(_) | UserRefusal::Lookup { .. } => {
            DaemonError::InvalidArgument(format!("run_as_user: {refusal}"))
        }
    }
}
