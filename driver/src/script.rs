//! Loading a task's `script` from its task directory without letting the
//! path (through `..`, an absolute path or a symlink) reach anything
//! outside that directory.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// The largest script the driver will load.
pub const MAX_SCRIPT_BYTES: u64 = 4 * 1024 * 1024;

/// Why a script could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    /// The task directory itself cannot be resolved.
    #[error("task directory {path} is not accessible: {source}")]
    TaskDir {
        /// The task directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The script does not exist or cannot be read.
    #[error("script {script:?} cannot be read: {source}")]
    Unreadable {
        /// The path as configured.
        script: String,
        /// The underlying error.
        source: io::Error,
    },
    /// The resolved path lies outside the task directory.
    #[error("script {script:?} resolves to {resolved}, outside the task directory {task_dir}")]
    OutsideTaskDir {
        /// The path as configured.
        script: String,
        /// Where it really points.
        resolved: PathBuf,
        /// The task directory.
        task_dir: PathBuf,
    },
    /// The path is not a regular file.
    #[error("script {script:?} is not a regular file")]
    NotAFile {
        /// The path as configured.
        script: String,
    },
    /// The file exceeds the size limit.
    #[error("script {script:?} is larger than the {limit}-byte limit")]
    TooLarge {
        /// The path as configured.
        script: String,
        /// The limit in bytes.
        limit: u64,
    },
    /// The file is not UTF-8 text.
    #[error("script {script:?} is not valid UTF-8 text")]
    NotUtf8 {
        /// The path as configured.
        script: String,
    },
}

/// A script loaded from the task directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedScript {
    /// The canonical path that was read.
    pub path: PathBuf,
    /// The file's text.
    pub source: String,
}

/// Resolves `script` (relative to `task_dir`, or absolute) with every
/// symlink followed, refuses it unless it lies inside `task_dir`, and reads
/// it as UTF-8 text of at most `max_bytes`.
pub fn load(task_dir: &Path, script: &str, max_bytes: u64) -> Result<LoadedScript, ScriptError> {
    let task_dir = task_dir
        .canonicalize()
        .map_err(|source| ScriptError::TaskDir {
            path: task_dir.to_owned(),
            source,
        })?;
    let unreadable = |source| ScriptError::Unreadable {
        script: script.to_owned(),
        source,
    };
    let resolved = task_dir.join(script).canonicalize().map_err(unreadable)?;
    if !resolved.starts_with(&task_dir) {
        return Err(ScriptError::OutsideTaskDir {
            script: script.to_owned(),
            resolved,
            task_dir,
        });
    }
    let file = File::open(&resolved).map_err(unreadable)?;
    // Checked on the open file, not the path, so a swap after the
    // containment check cannot change what is measured.
    let metadata = file.metadata().map_err(unreadable)?;
    if !metadata.is_file() {
        return Err(ScriptError::NotAFile {
            script: script.to_owned(),
        });
    }
    let too_large = || ScriptError::TooLarge {
        script: script.to_owned(),
        limit: max_bytes,
    };
    if metadata.len() > max_bytes {
        return Err(too_large());
    }
    let mut bytes = Vec::with_capacity(metadata.len() as usize);
    // Read one byte past the limit to catch a file that grew meanwhile.
    file.take(max_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    if bytes.len() as u64 > max_bytes {
        return Err(too_large());
    }
    let source = String::from_utf8(bytes).map_err(|_| ScriptError::NotUtf8 {
        script: script.to_owned(),
    })?;
    Ok(LoadedScript {
        path: resolved,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn task_dir_with_script() -> (tempfile::TempDir, PathBuf) {
        let root = tempfile::tempdir().unwrap();
        let task_dir = root.path().join("task");
        std::fs::create_dir_all(task_dir.join("local")).unwrap();
        std::fs::write(task_dir.join("local/main.py"), "print('hi')\n").unwrap();
        std::fs::write(root.path().join("secret.py"), "stolen = True\n").unwrap();
        (root, task_dir)
    }

    #[test]
    fn loads_a_relative_script_inside_the_task_dir() {
        let (_root, task_dir) = task_dir_with_script();
        let loaded = load(&task_dir, "local/main.py", MAX_SCRIPT_BYTES).unwrap();
        assert_eq!(loaded.source, "print('hi')\n");
        assert!(loaded.path.ends_with("task/local/main.py"));
    }

    #[test]
    fn accepts_an_absolute_path_inside_the_task_dir() {
        let (_root, task_dir) = task_dir_with_script();
        let absolute = task_dir.join("local/main.py");
        let loaded = load(&task_dir, absolute.to_str().unwrap(), MAX_SCRIPT_BYTES).unwrap();
        assert_eq!(loaded.source, "print('hi')\n");
    }

    #[test]
    fn refuses_dot_dot_escapes() {
        let (_root, task_dir) = task_dir_with_script();
        let err = load(&task_dir, "../secret.py", MAX_SCRIPT_BYTES).unwrap_err();
        assert!(matches!(err, ScriptError::OutsideTaskDir { .. }), "{err}");
        let err = load(&task_dir, "local/../../secret.py", MAX_SCRIPT_BYTES).unwrap_err();
        assert!(matches!(err, ScriptError::OutsideTaskDir { .. }), "{err}");
    }

    #[test]
    fn refuses_absolute_paths_outside() {
        let (root, task_dir) = task_dir_with_script();
        let outside = root.path().join("secret.py");
        let err = load(&task_dir, outside.to_str().unwrap(), MAX_SCRIPT_BYTES).unwrap_err();
        assert!(matches!(err, ScriptError::OutsideTaskDir { .. }), "{err}");
    }

    #[test]
    fn refuses_a_symlink_pointing_outside() {
        let (root, task_dir) = task_dir_with_script();
        symlink(
            root.path().join("secret.py"),
            task_dir.join("local/link.py"),
        )
        .unwrap();
        let err = load(&task_dir, "local/link.py", MAX_SCRIPT_BYTES).unwrap_err();
        assert!(matches!(err, ScriptError::OutsideTaskDir { .. }), "{err}");
    }

    #[test]
    fn follows_a_symlink_that_stays_inside() {
        let (_root, task_dir) = task_dir_with_script();
        symlink("main.py", task_dir.join("local/alias.py")).unwrap();
        let loaded = load(&task_dir, "local/alias.py", MAX_SCRIPT_BYTES).unwrap();
        assert!(loaded.path.ends_with("local/main.py"));
    }

    #[test]
    fn refuses_missing_directories_large_and_binary_files() {
        let (_root, task_dir) = task_dir_with_script();
        assert!(matches!(
            load(&task_dir, "local/absent.py", MAX_SCRIPT_BYTES),
            Err(ScriptError::Unreadable { .. })
        ));
        assert!(matches!(
            load(&task_dir, "local", MAX_SCRIPT_BYTES),
            Err(ScriptError::NotAFile { .. })
        ));
        assert!(matches!(
            load(&task_dir, "local/main.py", 4),
            Err(ScriptError::TooLarge { limit: 4, .. })
        ));
        std::fs::write(task_dir.join("local/bin.py"), [0xff, 0xfe, 0x00]).unwrap();
        assert!(matches!(
            load(&task_dir, "local/bin.py", MAX_SCRIPT_BYTES),
            Err(ScriptError::NotUtf8 { .. })
        ));
    }
}
