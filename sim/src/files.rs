//! A simulated client's disk for the driver's small files (output
//! offsets): survives crashes of the plugin and of the whole client.
//! A replace is atomic, as the real rename is.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use elide_driver::StateFiles;

/// In-memory files.
#[derive(Debug, Clone, Default)]
pub struct MemoryFiles {
    files: Arc<Mutex<BTreeMap<PathBuf, Vec<u8>>>>,
}

impl MemoryFiles {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<PathBuf, Vec<u8>>> {
        self.files.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every file and its contents, by path.
    pub fn all(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        self.lock().clone()
    }
}

impl StateFiles for MemoryFiles {
    fn read(&self, path: &Path) -> Option<Vec<u8>> {
        self.lock().get(path).cloned()
    }

    fn replace(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        self.lock().insert(path.to_owned(), bytes.to_vec());
        Ok(())
    }

    fn remove(&self, path: &Path) {
        self.lock().remove(path);
    }
}
