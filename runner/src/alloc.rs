//! Allocation and task directories laid out as Nomad's client does before
//! `StartTask` (for drivers with `fs_isolation = NONE`):
//!
//! ```text
//! <alloc_dir>/alloc/{data,logs,tmp}
//! <alloc_dir>/alloc/logs/.<task>.stdout.fifo   (mkfifo 0600, as logmon)
//! <alloc_dir>/alloc/logs/.<task>.stderr.fifo
//! <alloc_dir>/<task>/{local,secrets,tmp,private}
//! ```

use std::path::{Path, PathBuf};

/// A directory operation failed.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {action}: {source}")]
pub struct AllocError {
    /// The path.
    pub path: PathBuf,
    /// What was being done.
    pub action: &'static str,
    /// The underlying error.
    pub source: std::io::Error,
}

/// One allocation directory.
#[derive(Debug, Clone)]
pub struct AllocDir {
    /// `<alloc_dir>`.
    pub path: PathBuf,
}

/// The paths of one task in an allocation.
#[derive(Debug, Clone)]
pub struct TaskDir {
    /// `<alloc_dir>/<task>`.
    pub dir: PathBuf,
    /// `<alloc_dir>/<task>/local` (NOMAD_TASK_DIR).
    pub local: PathBuf,
    /// `<alloc_dir>/<task>/secrets` (NOMAD_SECRETS_DIR).
    pub secrets: PathBuf,
    /// stdout FIFO.
    pub stdout_fifo: PathBuf,
    /// stderr FIFO.
    pub stderr_fifo: PathBuf,
}

fn io<'a>(path: &'a Path, action: &'static str) -> impl FnOnce(std::io::Error) -> AllocError + 'a {
    move |source| AllocError {
        path: path.to_owned(),
        action,
        source,
    }
}

fn mkdir(path: &Path, mode: u32) -> Result<(), AllocError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(io(path, "create directory"))
}

impl AllocDir {
    /// Creates `<root>/<alloc_id>` with the shared `alloc/` directory.
    pub fn create(root: &Path, alloc_id: &str) -> Result<AllocDir, AllocError> {
        let path = root.join(alloc_id);
        for sub in ["data", "logs", "tmp"] {
            mkdir(&path.join("alloc").join(sub), 0o777)?;
        }
        Ok(AllocDir { path })
    }

    /// `<alloc_dir>/alloc` (NOMAD_ALLOC_DIR).
    pub fn shared(&self) -> PathBuf {
        self.path.join("alloc")
    }

    /// Creates a task's directories and its two log FIFOs.
    pub fn add_task(&self, task: &str) -> Result<TaskDir, AllocError> {
        if task.is_empty() || task.contains('/') || task == "alloc" || task.starts_with('.') {
            return Err(AllocError {
                path: self.path.join(task),
                action: "use as a task directory",
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "task names must not be empty, \"alloc\", start with '.' or contain '/'",
                ),
            });
        }
        let dir = self.path.join(task);
        mkdir(&dir.join("local"), 0o777)?;
        mkdir(&dir.join("secrets"), 0o700)?;
        mkdir(&dir.join("tmp"), 0o777)?;
        mkdir(&dir.join("private"), 0o700)?;
        let logs = self.shared().join("logs");
        let stdout_fifo = logs.join(format!(".{task}.stdout.fifo"));
        let stderr_fifo = logs.join(format!(".{task}.stderr.fifo"));
        for fifo in [&stdout_fifo, &stderr_fifo] {
            nix::unistd::mkfifo(
                fifo.as_path(),
                nix::sys::stat::Mode::from_bits_truncate(0o600),
            )
            .map_err(|e| AllocError {
                path: fifo.clone(),
                action: "mkfifo",
                source: e.into(),
            })?;
        }
        Ok(TaskDir {
            local: dir.join("local"),
            secrets: dir.join("secrets"),
            dir,
            stdout_fifo,
            stderr_fifo,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};

    #[test]
    fn lays_out_dirs_and_fifos_like_nomad() {
        let root = tempfile::tempdir().unwrap();
        let alloc = AllocDir::create(root.path(), "a1").unwrap();
        let task = alloc.add_task("web").unwrap();
        for sub in [
            "alloc/data",
            "alloc/logs",
            "alloc/tmp",
            "web/local",
            "web/secrets",
            "web/tmp",
            "web/private",
        ] {
            assert!(root.path().join("a1").join(sub).is_dir(), "{sub}");
        }
        let meta = std::fs::metadata(&task.stdout_fifo).unwrap();
        assert!(meta.file_type().is_fifo());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert!(task.stderr_fifo.ends_with("alloc/logs/.web.stderr.fifo"));
        assert!(alloc.add_task("../x").is_err());
    }
}
