//! The host's users, as the driver needs them for a task's `user`: looking
//! a name up, and handing the task directory to that user.

use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// A user found on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostUser {
    /// The name it was looked up by.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
}

/// Looks users up and prepares task directories for them.
pub trait TaskUsers: Send + Sync + 'static {
    /// The user called `name`; `Ok(None)` when there is none.
    fn lookup(&self, name: &str) -> io::Result<Option<HostUser>>;
    /// Makes the task directory usable by `user` and nobody else (see
    /// [`SystemUsers`]).
    fn prepare_task_dir(&self, task_dir: &Path, user: &HostUser) -> io::Result<()>;
}

/// The host's user database and file system.
///
/// The task directory stays root's, with the user's group and mode 01770:
/// the program creates and changes its own files there, but the sticky bit
/// keeps it from renaming or replacing what is not its own (the driver's
/// `private/`, which the driver writes as root), and other users cannot
/// enter. `local/`, `tmp/` and `secrets/` become the user's, mode 0700. A
/// driver that is not root cannot change owners and leaves the directories
/// as they are.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemUsers;

/// The task directory's mode: owner root, the user's group, sticky.
const TASK_DIR_MODE: u32 = 0o1770;
/// Subdirectories handed to the user outright.
const USER_SUBDIRS: [&str; 3] = ["local", "tmp", "secrets"];

impl TaskUsers for SystemUsers {
    fn lookup(&self, name: &str) -> io::Result<Option<HostUser>> {
        let user = nix::unistd::User::from_name(name).map_err(io::Error::from)?;
        Ok(user.map(|u| HostUser {
            name: name.to_owned(),
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
        }))
    }

    fn prepare_task_dir(&self, task_dir: &Path, user: &HostUser) -> io::Result<()> {
        if !nix::unistd::Uid::effective().is_root() {
            return Ok(());
        }
        let root_owned = std::fs::symlink_metadata(task_dir)
            .map(|m| m.is_dir() && m.uid() == 0)
            .unwrap_or(false);
        if !root_owned {
            // Not made by Nomad (as root): not ours to change.
            return Ok(());
        }
        std::os::unix::fs::lchown(task_dir, Some(0), Some(user.gid))?;
        std::fs::set_permissions(task_dir, std::fs::Permissions::from_mode(TASK_DIR_MODE))?;
        for sub in USER_SUBDIRS {
            let dir = task_dir.join(sub);
            match std::fs::symlink_metadata(&dir) {
                Ok(m) if m.is_dir() => {
                    std::os::unix::fs::lchown(&dir, Some(user.uid), Some(user.gid))?;
                    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
                }
                // Missing, or not a plain directory: left alone.
                _ => {}
            }
        }
        Ok(())
    }
}
