//! Small driver files in the task directory (the output offsets), replaced
//! atomically.

use std::io;
use std::path::Path;

/// Reads and atomically replaces small files.
pub trait StateFiles: Send + Sync + 'static {
    /// The file's bytes; `None` if it does not exist or cannot be read.
    fn read(&self, path: &Path) -> Option<Vec<u8>>;
    /// Replaces the file with `bytes` so that a crash leaves either the old
    /// or the new content, creating parent directories as needed.
    fn replace(&self, path: &Path, bytes: &[u8]) -> io::Result<()>;
    /// Removes the file; a missing file is fine.
    fn remove(&self, path: &Path);
}

/// The local file system: write to a temporary file, then rename.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalFiles;

impl StateFiles for LocalFiles {
    fn read(&self, path: &Path) -> Option<Vec<u8>> {
        std::fs::read(path).ok()
    }

    fn replace(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut temporary = path.as_os_str().to_owned();
        temporary.push(".tmp");
        std::fs::write(&temporary, bytes)?;
        std::fs::rename(&temporary, path)
    }

    fn remove(&self, path: &Path) {
        let _ = std::fs::remove_file(path);
    }
}
