//! Durable daemon state: sessions and execution records survive a restart.
//!
//! What is stored: each session (config, labels, a reserved block of event
//! sequence numbers) and each execution's status — written when it is
//! accepted and again, with its retained output, when it ends. After a
//! restart, executions without a terminal record are reported as failed
//! (the daemon restarted under them) and finished ones keep their true
//! result and output.
//!
//! Records are protobuf-encoded; files are replaced atomically (write to a
//! temporary file, fsync, rename).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use elide_proto::elide::daemon::v1 as pb;
use prost::Message;

/// A stored session.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SessionRecord {
    /// Id, config, labels and creation time.
    #[prost(message, optional, tag = "1")]
    pub info: Option<pb::SessionInfo>,
    /// Event sequence numbers below this value may have been used.
    #[prost(uint64, tag = "2")]
    pub seq_reserved: u64,
}

/// A stored execution.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ExecutionRecord {
    /// Last persisted status.
    #[prost(message, optional, tag = "1")]
    pub status: Option<pb::ExecutionStatus>,
    /// Fingerprint of the request, for idempotent re-submission.
    #[prost(bytes = "vec", tag = "2")]
    pub fingerprint: Vec<u8>,
    /// Retained stdout tail (ends at `status.stdout_bytes`).
    #[prost(bytes = "vec", tag = "3")]
    pub stdout_tail: Vec<u8>,
    /// Retained stderr tail (ends at `status.stderr_bytes`).
    #[prost(bytes = "vec", tag = "4")]
    pub stderr_tail: Vec<u8>,
}

/// Everything loaded at start-up.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct StoredState {
    /// Sessions by id, each with its executions by id.
    pub sessions: BTreeMap<String, (SessionRecord, BTreeMap<String, ExecutionRecord>)>,
}

/// Errors of a state store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A stored record is not readable.
    #[error("{path}: corrupt record: {source}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The decode error.
        source: prost::DecodeError,
    },
}

/// Where the daemon keeps its durable state.
pub trait StateStore: Send + Sync + 'static {
    /// Reads everything stored.
    fn load(&self) -> Result<StoredState, StoreError>;
    /// Creates or replaces a session record.
    fn put_session(&self, session_id: &str, record: &SessionRecord) -> Result<(), StoreError>;
    /// Removes a session and all its executions.
    fn remove_session(&self, session_id: &str) -> Result<(), StoreError>;
    /// Creates or replaces an execution record.
    fn put_execution(
        &self,
        session_id: &str,
        execution_id: &str,
        record: &ExecutionRecord,
    ) -> Result<(), StoreError>;
    /// Removes an execution record.
    fn remove_execution(&self, session_id: &str, execution_id: &str) -> Result<(), StoreError>;
}

/// A store in memory, for tests and simulations (where it stands for a disk
/// that survives a crash of the daemon host).
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<StoredState>,
}

impl MemoryStore {
    fn with<T>(&self, f: impl FnOnce(&mut StoredState) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl StateStore for MemoryStore {
    fn load(&self) -> Result<StoredState, StoreError> {
        Ok(self.with(|s| s.clone()))
    }

    fn put_session(&self, session_id: &str, record: &SessionRecord) -> Result<(), StoreError> {
        self.with(|s| {
            s.sessions.entry(session_id.to_string()).or_default().0 = record.clone();
        });
        Ok(())
    }

    fn remove_session(&self, session_id: &str) -> Result<(), StoreError> {
        self.with(|s| s.sessions.remove(session_id));
        Ok(())
    }

    fn put_execution(
        &self,
        session_id: &str,
        execution_id: &str,
        record: &ExecutionRecord,
    ) -> Result<(), StoreError> {
        self.with(|s| {
            if let Some((_, execs)) = s.sessions.get_mut(session_id) {
                execs.insert(execution_id.to_string(), record.clone());
            }
        });
        Ok(())
    }

    fn remove_execution(&self, session_id: &str, execution_id: &str) -> Result<(), StoreError> {
        self.with(|s| {
            if let Some((_, execs)) = s.sessions.get_mut(session_id) {
                execs.remove(execution_id);
            }
        });
        Ok(())
    }
}

/// A store in a directory:
/// `sessions/<session>/session.pb` and `sessions/<session>/executions/<execution>.pb`.
#[derive(Debug)]
pub struct FsStore {
    root: PathBuf,
}

impl FsStore {
    /// A store under `state_dir` (created if missing).
    pub fn open(state_dir: &Path) -> Result<Self, StoreError> {
        let root = state_dir.join("sessions");
        // Records hold every execution's code and environment: the daemon's
        // alone, whoever its programs run as.
        let private = <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o700);
        std::fs::create_dir_all(&root)
            .and_then(|()| std::fs::set_permissions(&root, private))
            .map_err(|source| StoreError::Io {
                path: root.clone(),
                source,
            })?;
        Ok(FsStore { root })
    }

    fn session_dir(&self, session_id: &str) -> PathBuf {
        self.root.join(session_id)
    }

    fn execution_path(&self, session_id: &str, execution_id: &str) -> PathBuf {
        self.session_dir(session_id)
            .join("executions")
            .join(format!("{execution_id}.pb"))
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `path` atomically.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let tmp = path.with_extension("pb.tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(bytes).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

fn read_record<M: Message + Default>(path: &Path) -> Result<M, StoreError> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    M::decode(bytes.as_slice()).map_err(|source| StoreError::Corrupt {
        path: path.to_path_buf(),
        source,
    })
}

fn remove_if_present(result: std::io::Result<()>, path: &Path) -> Result<(), StoreError> {
    match result {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(path)(e)),
        _ => Ok(()),
    }
}

impl StateStore for FsStore {
    fn load(&self) -> Result<StoredState, StoreError> {
        let mut state = StoredState::default();
        let entries = std::fs::read_dir(&self.root).map_err(io_err(&self.root))?;
        for entry in entries {
            let dir = entry.map_err(io_err(&self.root))?.path();
            let session_file = dir.join("session.pb");
            if !session_file.is_file() {
                continue;
            }
            let Some(id) = dir.file_name().and_then(|n| n.to_str()).map(str::to_string) else {
                continue;
            };
            let session: SessionRecord = read_record(&session_file)?;
            let mut execs = BTreeMap::new();
            let exec_dir = dir.join("executions");
            if let Ok(files) = std::fs::read_dir(&exec_dir) {
                for file in files {
                    let path = file.map_err(io_err(&exec_dir))?.path();
                    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                        continue;
                    };
                    let Some(exec_id) = name.strip_suffix(".pb") else {
                        continue;
                    };
                    match read_record::<ExecutionRecord>(&path) {
                        Ok(rec) => {
                            execs.insert(exec_id.to_string(), rec);
                        }
                        // One unreadable record must not stop the daemon.
                        Err(e) => tracing::error!(error = %e, "skipping execution record"),
                    }
                }
            }
            state.sessions.insert(id, (session, execs));
        }
        Ok(state)
    }

    fn put_session(&self, session_id: &str, record: &SessionRecord) -> Result<(), StoreError> {
        write_atomic(
            &self.session_dir(session_id).join("session.pb"),
            &record.encode_to_vec(),
        )
    }

    fn remove_session(&self, session_id: &str) -> Result<(), StoreError> {
        let dir = self.session_dir(session_id);
        remove_if_present(std::fs::remove_dir_all(&dir), &dir)
    }

    fn put_execution(
        &self,
        session_id: &str,
        execution_id: &str,
        record: &ExecutionRecord,
    ) -> Result<(), StoreError> {
        write_atomic(
            &self.execution_path(session_id, execution_id),
            &record.encode_to_vec(),
        )
    }

    fn remove_execution(&self, session_id: &str, execution_id: &str) -> Result<(), StoreError> {
        let path = self.execution_path(session_id, execution_id);
        remove_if_present(std::fs::remove_file(&path), &path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exercise(store: &dyn StateStore) {
        let session = SessionRecord {
            info: Some(pb::SessionInfo {
                session_id: "s1".into(),
                ..Default::default()
            }),
            seq_reserved: 1024,
        };
        store.put_session("s1", &session).unwrap();
        let rec = ExecutionRecord {
            status: Some(pb::ExecutionStatus {
                execution_id: "e1".into(),
                exit_code: Some(3),
                ..Default::default()
            }),
            fingerprint: vec![1, 2, 3],
            stdout_tail: b"out".to_vec(),
            stderr_tail: vec![0xff, 0x00],
        };
        store.put_execution("s1", "e1", &rec).unwrap();
        store.put_execution("s1", "e2", &rec).unwrap();
        store.remove_execution("s1", "e2").unwrap();
        store.remove_execution("s1", "missing").unwrap();
        let loaded = store.load().unwrap();
        let (s, execs) = &loaded.sessions["s1"];
        assert_eq!(s, &session);
        assert_eq!(execs.len(), 1);
        assert_eq!(execs["e1"], rec);
        store.remove_session("s1").unwrap();
        assert!(store.load().unwrap().sessions.is_empty());
    }

    #[test]
    fn memory_store_round_trips() {
        exercise(&MemoryStore::default());
    }

    #[test]
    fn fs_store_round_trips_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        exercise(&FsStore::open(dir.path()).unwrap());
        let store = FsStore::open(dir.path()).unwrap();
        store.put_session("s2", &SessionRecord::default()).unwrap();
        let again = FsStore::open(dir.path()).unwrap();
        assert!(again.load().unwrap().sessions.contains_key("s2"));
    }
}
