//! Stops and deletes Nomad asked for that the daemon has not confirmed
//! yet, kept where a plugin crash does not lose them.
//!
//! * A stop is recorded in the task's `private/` dir
//!   (`elide-stop-<execution_id>.json`, [`StopFile`]) before the daemon is
//!   asked. While the daemon cannot be reached a background stopper keeps
//!   asking; a task recovered with a stop file is stopped again. Nomad's
//!   kill path waits for the exit with no time limit, so a stop that is
//!   lost leaves the allocation hanging and the program running.
//! * A delete (`DestroyTask`) is recorded in the plugin's journal,
//!   `<driver_state_dir>/pending-deletes.json` ([`DeleteJournal`]), before
//!   the daemon is asked, and removed once the daemon confirms the
//!   execution is gone. Nomad calls `DestroyTask` once and ignores its
//!   errors, and nothing tells a restarted plugin about a task destroyed
//!   before it started; the journal is how it learns, and every delete in
//!   it is resumed when the plugin is configured.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use elide_proto::elide::daemon::v1 as pb;
use tokio::sync::watch;

use super::cancel::{
    allowed_grace, cancel_execution, may_pass, next_stop_step, CancelOutcome, StopStep,
};
use super::log_lines;
use super::output::OFFSETS_DIR;
use super::{ExitOutcome, FORCE_DELETE_TIMEOUT, REAP_FIRST_DELAY, REAP_MAX_DELAY};
use crate::backoff::Backoff;
use crate::daemon_link::DaemonLink;
use crate::host::StateFiles;

/// Name of the delete journal inside `driver_state_dir`.
pub const DELETE_JOURNAL_FILE: &str = "pending-deletes.json";
/// Most unconfirmed deletes journaled at once; beyond it a delete is still
/// retried, but only for the life of this plugin process.
pub const MAX_JOURNALED_DELETES: usize = 4096;

/// A stop Nomad asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopRequest {
    /// Signal name sent first.
    pub signal: String,
    /// Grace before SIGKILL, in milliseconds.
    pub grace_ms: u64,
}

impl StopRequest {
    /// `signal` now, SIGKILL after `grace`.
    pub fn new(signal: &str, grace: Duration) -> Self {
        StopRequest {
            signal: signal.to_owned(),
            grace_ms: u64::try_from(grace.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// The grace before SIGKILL.
    pub fn grace(&self) -> Duration {
        Duration::from_millis(self.grace_ms)
    }
}

/// `<task_dir>/private/elide-stop-<execution_id>.json`: the stop requested
/// for a task, kept until the task is destroyed.
#[derive(Clone)]
pub struct StopFile {
    path: PathBuf,
    files: Arc<dyn StateFiles>,
}

impl StopFile {
    /// The stop file of `execution_id` in `task_dir`.
    pub fn of(task_dir: &Path, execution_id: &str, files: Arc<dyn StateFiles>) -> Self {
        StopFile {
            path: task_dir
                .join(OFFSETS_DIR)
                .join(format!("elide-stop-{execution_id}.json")),
            files,
        }
    }

    /// The recorded stop, if any.
    pub fn read(&self) -> Option<StopRequest> {
        serde_json::from_slice(&self.files.read(&self.path)?).ok()
    }

    /// Records `stop`; a failure is logged (the stop is still applied by
    /// this process, only not after a crash).
    pub fn write(&self, stop: &StopRequest) {
        let bytes = serde_json::to_vec(stop).unwrap_or_default();
        if let Err(e) = self.files.replace(&self.path, &bytes) {
            tracing::warn!(path = %self.path.display(), error = %e, "could not record the stop request");
        }
    }

    /// Forgets the stop (the task is destroyed).
    pub fn remove(&self) {
        self.files.remove(&self.path);
    }
}

/// A delete of an execution the daemon has not confirmed yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingDelete {
    /// Nomad's task id.
    pub task_id: String,
    /// The daemon (`unix:/path` or `tcp:host:port`); `None` when the
    /// plugin had no configuration yet: then the configured daemon.
    pub daemon: Option<String>,
    /// The session; `None` as for `daemon`: the configured session.
    pub session_id: Option<String>,
    /// The execution.
    pub execution_id: String,
    /// Whether it may still run (then it is killed first).
    pub running: bool,
}

/// The journal of [`PendingDelete`]s, keyed by execution id. Until the
/// plugin is configured it has no file and lives in memory only.
pub struct DeleteJournal {
    files: Arc<dyn StateFiles>,
    state: Mutex<JournalState>,
}

#[derive(Default)]
struct JournalState {
    path: Option<PathBuf>,
    entries: BTreeMap<String, PendingDelete>,
}

impl DeleteJournal {
    /// An empty journal with no file yet.
    pub fn new(files: Arc<dyn StateFiles>) -> Self {
        DeleteJournal {
            files,
            state: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, JournalState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Uses the journal in `dir`, adding what earlier plugin processes left
    /// there to what this one holds; returns every pending delete.
    pub fn open(&self, dir: &Path) -> Vec<PendingDelete> {
        let path = dir.join(DELETE_JOURNAL_FILE);
        let mut state = self.lock();
        if state.path.as_deref() != Some(path.as_path()) {
            let earlier: BTreeMap<String, PendingDelete> = self
                .files
                .read(&path)
                .and_then(|bytes| serde_json::from_slice(&bytes).ok())
                .unwrap_or_default();
            for (id, entry) in earlier {
                state.entries.entry(id).or_insert(entry);
            }
            state.path = Some(path);
            self.save(&state);
        }
        state.entries.values().cloned().collect()
    }

    /// Records a delete before it is attempted.
    pub fn add(&self, entry: PendingDelete) {
        let mut state = self.lock();
        if state.entries.len() >= MAX_JOURNALED_DELETES
            && !state.entries.contains_key(&entry.execution_id)
        {
            tracing::warn!(execution_id = %entry.execution_id, limit = MAX_JOURNALED_DELETES, "delete journal full; this delete is not recorded and is lost if the plugin restarts before the daemon confirms it");
            return;
        }
        state.entries.insert(entry.execution_id.clone(), entry);
        self.save(&state);
    }

    /// Whether `execution_id` is being deleted (its task was destroyed).
    pub fn holds(&self, execution_id: &str) -> bool {
        self.lock().entries.contains_key(execution_id)
    }

    /// Forgets a delete the daemon confirmed (or refused for good).
    pub fn remove(&self, execution_id: &str) {
        let mut state = self.lock();
        if state.entries.remove(execution_id).is_some() {
            self.save(&state);
        }
    }

    fn save(&self, state: &JournalState) {
        let Some(path) = &state.path else { return };
        let bytes = serde_json::to_vec(&state.entries).unwrap_or_default();
        if let Err(e) = self.files.replace(path, &bytes) {
            tracing::warn!(path = %path.display(), error = %e, "could not write the delete journal; pending deletes are lost if the plugin restarts");
        }
    }
}

/// An execution to delete from the daemon after `DestroyTask`.
pub(super) struct Reap {
    pub(super) task_id: String,
    pub(super) link: DaemonLink,
    pub(super) session_id: String,
    pub(super) execution_id: String,
    /// Whether it was still running when destroyed (then it is killed).
    pub(super) running: bool,
}

/// Deletes a destroyed task's execution, retrying with back-off (from
/// [`REAP_FIRST_DELAY`] doubling to [`REAP_MAX_DELAY`]) for as long as the
/// daemon cannot be reached, and returns once it confirms the execution is
/// gone (`NOT_FOUND` counts), also while the daemon fails the delete for
/// a reason that may pass (`INTERNAL`, ...: found by the simulation,
/// `failing-stops`). Only a refusal a retry cannot change ends it early,
/// with a warning.
pub(super) async fn reap(target: Reap) {
    let Reap {
        task_id,
        link,
        session_id,
        execution_id,
        running,
    } = target;
    let delete = |force: bool| pb::DeleteExecutionRequest {
        session_id: session_id.clone(),
        execution_id: execution_id.clone(),
        force,
    };
    let mut backoff = Backoff::between(REAP_FIRST_DELAY, REAP_MAX_DELAY);
    // A running execution is killed first; the daemon answers once the
    // program is gone. Forcing is harmless if it has ended meanwhile.
    let mut killed = !running;
    // Failed calls so far (a kill and then the delete are two calls but no
    // retry: only a retried delete is announced as gone, closing its
    // warnings).
    let mut failures: u64 = 0;
    loop {
        let result = if killed {
            // Forgets the (now terminal) execution; right after a forced
            // delete the daemon may still hold the record for a moment.
            link.unary(delete(false), |mut c, r| async move {
                c.delete_execution(r).await
            })
            .await
        } else {
            link.unary_within(FORCE_DELETE_TIMEOUT, delete(true), |mut c, r| async move {
                c.delete_execution(r).await
            })
            .await
        };
        match result {
            Ok(_) if !killed => killed = true,
            Ok(_) => break,
            Err(e) if e.is_not_found() => break,
            Err(e)
                if e.is_transport()
                    || e.code() == tonic::Code::FailedPrecondition
                    || may_pass(e.code()) =>
            {
                if e.code() == tonic::Code::FailedPrecondition {
                    // Still running after all (the driver had given up on
                    // following it): kill it on the next attempt.
                    killed = false;
                }
                failures += 1;
                let delay = backoff.next_delay();
                tracing::warn!(task_id, execution_id, failures, error = %e, retry_in = ?delay, "{}", log_lines::DELETE_RETRYING);
                tokio::time::sleep(delay).await;
            }
            Err(e) => {
                tracing::warn!(task_id, execution_id, error = %e, "the daemon refused to delete the destroyed task's execution; giving up");
                return;
            }
        }
    }
    if failures > 0 {
        tracing::info!(
            task_id,
            execution_id,
            failures,
            "{}",
            log_lines::DELETE_DONE
        );
    }
}

/// Asks the daemon to stop an execution until it confirms (or says the
/// execution is gone or finished), with back-off while it cannot be
/// reached; ends early once the task has exited. A stop the daemon refuses
/// takes `StopTask`'s fallbacks ([`next_stop_step`]): the longest grace the
/// daemon allows, then SIGKILL, so a stop applied at recovery ends the
/// program the way the same stop sent to a known task would.
pub(super) async fn keep_stopping(
    task_id: String,
    link: DaemonLink,
    session_id: String,
    execution_id: String,
    mut stop: StopRequest,
    mut exit: watch::Receiver<Option<ExitOutcome>>,
) {
    let mut backoff = Backoff::between(REAP_FIRST_DELAY, REAP_MAX_DELAY);
    let mut refusals = 0;
    loop {
        if exit.borrow().is_some() {
            return;
        }
        let result = cancel_execution(
            &link,
            &session_id,
            &execution_id,
            &stop.signal,
            stop.grace(),
        )
        .await;
        match next_stop_step(refusals, CancelOutcome::of(&result)) {
            StopStep::AwaitExit => {
                tracing::info!(task_id, execution_id, signal = %stop.signal, "the daemon accepted the stop");
                return;
            }
            StopStep::RetryWithAllowedGrace => {
                let allowed = allowed_grace(&link).await;
                tracing::warn!(task_id, execution_id, grace = ?stop.grace(), ?allowed, "daemon refused the stop request; retrying with the grace it allows");
                stop = StopRequest::new(&stop.signal, stop.grace().min(allowed));
                refusals += 1;
                continue;
            }
            StopStep::Kill => {
                tracing::warn!(task_id, execution_id, signal = %stop.signal, "daemon refused the stop signal; killing the task instead");
                stop = StopRequest::new("SIGKILL", Duration::ZERO);
                refusals += 1;
                continue;
            }
            StopStep::Fail {
                keep_stopping: true,
            } => {
                tracing::debug!(task_id, execution_id, error = ?result.err(), "stop not delivered yet; retrying");
            }
            // Gone or already finished: nothing left to stop.
            StopStep::MarkLost | StopStep::Fail { .. } => {
                tracing::debug!(task_id, execution_id, error = ?result.err(), "nothing left to stop");
                return;
            }
        }
        tokio::select! {
            biased;
            _ = exit.wait_for(Option::is_some) => return,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    #[derive(Default)]
    struct Files(Mutex<BTreeMap<PathBuf, Vec<u8>>>);

    impl StateFiles for Files {
        fn read(&self, path: &Path) -> Option<Vec<u8>> {
            self.0.lock().unwrap().get(path).cloned()
        }
        fn replace(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
            self.0
                .lock()
                .unwrap()
                .insert(path.to_owned(), bytes.to_vec());
            Ok(())
        }
        fn remove(&self, path: &Path) {
            self.0.lock().unwrap().remove(path);
        }
    }

    fn delete(execution_id: &str) -> PendingDelete {
        PendingDelete {
            task_id: format!("a/t/{execution_id}"),
            daemon: Some("tcp:daemon:1".into()),
            session_id: Some("s".into()),
            execution_id: execution_id.into(),
            running: false,
        }
    }

    #[test]
    fn a_new_plugin_process_finds_the_deletes_an_earlier_one_left() {
        let files: Arc<dyn StateFiles> = Arc::new(Files::default());
        let dir = Path::new("/state");
        let first = DeleteJournal::new(files.clone());
        first.open(dir);
        first.add(delete("e1"));
        first.add(delete("e2"));
        first.remove("e1");

        let second = DeleteJournal::new(files.clone());
        // Held before the configuration came: kept, and written out.
        second.add(delete("e3"));
        let ids: Vec<String> = second
            .open(dir)
            .into_iter()
            .map(|d| d.execution_id)
            .collect();
        assert_eq!(ids, ["e2", "e3"]);
        let third = DeleteJournal::new(files);
        assert_eq!(third.open(dir).len(), 2);
    }

    #[test]
    fn the_stop_file_round_trips_and_is_removed() {
        let files: Arc<dyn StateFiles> = Arc::new(Files::default());
        let file = StopFile::of(Path::new("/alloc/t"), "e", files.clone());
        assert_eq!(file.read(), None);
        let stop = StopRequest::new("SIGTERM", Duration::from_secs(3));
        file.write(&stop);
        assert_eq!(
            StopFile::of(Path::new("/alloc/t"), "e", files).read(),
            Some(stop)
        );
        file.remove();
        assert_eq!(file.read(), None);
    }
}
