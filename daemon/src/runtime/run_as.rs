//! Who a program runs as.
//!
//! The daemon usually runs as root (the shipped systemd unit), and a
//! snippet must never inherit that by accident. Every execution runs as a
//! resolved [`Identity`]: the user its request names, or the daemon's
//! default user (`nobody`) when it names none. A daemon that is not root
//! cannot switch users: it runs programs as itself, and refuses a request
//! for anyone else.
//!
//! Privileges are dropped in the process that will run user code, before
//! any of it runs, in the order that leaves no way back: supplementary
//! groups, then the gid, then the uid (after `setuid` the process may no
//! longer change its groups). The three start paths each do it:
//! [`drop_privileges`] between fork and exec for a cold interpreter and for
//! a pooled node worker (which boots as the pool's user), and the python
//! zygote's forked child with the same calls in the same order.
//!
//! The files an execution gets are its own: the scratch directory is
//! created 0700 and the snippet file 0600, both owned by the identity; the
//! directories above them are 0711, so nobody can list which executions
//! exist.

use std::ffi::{CStr, CString};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;

use nix::unistd::{Gid, Uid, User};

/// Mode of the directories above an execution's scratch directory: others
/// may pass through (to reach their own) but not list.
const TRAVERSE_ONLY: u32 = 0o711;

/// A uid with its primary gid and supplementary groups (serialized as the
/// python zygote reads it: `name`, `uid`, `gid`, `groups`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Identity {
    /// The user name it was resolved from.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups (from the group database, primary included).
    pub groups: Vec<u32>,
}

/// Why a program cannot run as the user asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserRefusal {
    /// No such user in the host's user database.
    #[error("no user {0:?} on this host")]
    Unknown(String),
    /// The user database could not be read.
    #[error("looking up user {name:?} failed: {reason}")]
    Lookup {
        /// The user asked for.
        name: String,
        /// Why.
        reason: String,
    },
    /// The daemon is not root, so it can only run programs as itself.
    #[error(
        "the daemon runs as uid {daemon_uid}, not root, and cannot run programs as user {name:?}"
    )]
    CannotSwitch {
        /// The user asked for.
        name: String,
        /// The daemon's uid.
        daemon_uid: u32,
    },
    /// The program's user cannot enter the requested working directory.
    #[error("{0}")]
    CannotEnter(String),
}

/// Looks `name` up in the user and group databases.
pub fn lookup(name: &str) -> Result<Identity, UserRefusal> {
    let lookup_failed = |reason: String| UserRefusal::Lookup {
        name: name.to_owned(),
        reason,
    };
    let user = User::from_name(name)
        .map_err(|e| lookup_failed(e.to_string()))?
        .ok_or_else(|| UserRefusal::Unknown(name.to_owned()))?;
    let c_name = CString::new(name).map_err(|e| lookup_failed(e.to_string()))?;
    let groups = nix::unistd::getgrouplist(&c_name, user.gid)
        .map_err(|e| lookup_failed(format!("reading its groups: {e}")))?;
    Ok(Identity {
        name: name.to_owned(),
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
        groups: groups.into_iter().map(Gid::as_raw).collect(),
    })
}

/// The daemon's rule for whom programs run as.
#[derive(Debug, Clone)]
pub struct RunAsPolicy {
    /// Used when a request names no user (and the daemon is root).
    default_user: String,
    /// The daemon's own uid, read once at start.
    daemon_uid: u32,
}

impl RunAsPolicy {
    /// The policy of this process: `default_user` for requests naming none.
    pub fn new(default_user: &str) -> Self {
        RunAsPolicy {
            default_user: default_user.to_owned(),
            daemon_uid: Uid::effective().as_raw(),
        }
    }

    /// Whether programs get an identity of their own (the daemon is root).
    pub fn switches_users(&self) -> bool {
        self.daemon_uid == 0
    }

    /// The identity a program asked to run as `asked` ("" for the default)
    /// gets; `None` means the daemon's own (not root, and asked for itself
    /// or for nobody in particular).
    pub fn resolve(&self, asked: &str) -> Result<Option<Identity>, UserRefusal> {
        if !self.switches_users() {
            if asked.is_empty() {
                return Ok(None);
            }
            let identity = lookup(asked)?;
            return if identity.uid == self.daemon_uid {
                Ok(None)
            } else {
                Err(UserRefusal::CannotSwitch {
                    name: asked.to_owned(),
                    daemon_uid: self.daemon_uid,
                })
            };
        }
        let name = if asked.is_empty() {
            self.default_user.as_str()
        } else {
            asked
        };
        lookup(name).map(Some)
    }
}

/// Becomes `identity`: supplementary groups, gid, uid, in that order.
/// Async-signal-safe (only system calls on memory allocated before the
/// fork), so it may run between fork and exec.
pub fn drop_privileges(identity: &Identity) -> std::io::Result<()> {
    let check = |rc: i32| {
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    // SAFETY: plain system calls; `groups` outlives the call.
    unsafe {
        check(nix::libc::setgroups(
            identity.groups.len(),
            identity.groups.as_ptr(),
        ))?;
        check(nix::libc::setgid(identity.gid))?;
        check(nix::libc::setuid(identity.uid))?;
        // A process that could regain root must not run user code.
        // (Only an errno crosses back from between fork and exec.)
        if identity.uid != 0 && nix::libc::setuid(0) == 0 {
            return Err(std::io::Error::from_raw_os_error(nix::libc::EPERM));
        }
    }
    Ok(())
}

/// A path as the C string [`become_user_in`] takes (made before the fork:
/// allocating after it is not async-signal-safe).
pub fn c_path(path: &Path) -> std::io::Result<CString> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)
}

/// Between fork and exec: becomes `identity` (when given), then enters
/// `cwd` as that user, so a directory the user may not enter fails the
/// start instead of being entered with root's rights.
pub fn become_user_in(identity: Option<&Identity>, cwd: &CStr) -> std::io::Result<()> {
    if let Some(identity) = identity {
        drop_privileges(identity)?;
    }
    // SAFETY: a plain system call on a string made before the fork.
    if unsafe { nix::libc::chdir(cwd.as_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Creates the execution's scratch directory, owned by `identity` with mode
/// 0700, under parents others may pass through but not list.
pub fn create_scratch(dir: &Path, identity: Option<&Identity>) -> std::io::Result<()> {
    if let Some(parent) = dir.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(TRAVERSE_ONLY)
            .create(parent)?;
        // Made by an older daemon with its umask's mode, or by hand.
        let mode = std::fs::metadata(parent)?.permissions().mode() & 0o777;
        if identity.is_some() && mode != TRAVERSE_ONLY {
            std::fs::set_permissions(parent, std::fs::Permissions::from_mode(TRAVERSE_ONLY))?;
        }
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        Err(e) => return Err(e),
    }
    give(dir, identity)
}

/// Hands a file the daemon wrote for a program (its snippet) to the
/// program's user, readable by it alone.
pub fn give_file(file: &Path, identity: Option<&Identity>) -> std::io::Result<()> {
    std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600))?;
    give(file, identity)
}

fn give(path: &Path, identity: Option<&Identity>) -> std::io::Result<()> {
    match identity {
        Some(id) => std::os::unix::fs::lchown(path, Some(id.uid), Some(id.gid)),
        None => Ok(()),
    }
}

/// Checks that `identity` can enter `dir` (search permission on it and on
/// every directory above it); the error names the directory that stops it.
pub fn check_can_enter(dir: &Path, identity: &Identity) -> Result<(), String> {
    for step in dir.ancestors() {
        let meta = std::fs::metadata(step).map_err(|e| format!("{}: {e}", step.display()))?;
        let mode = meta.mode();
        let bit = if identity.uid == 0 {
            // Root may enter any directory with an execute bit set anywhere.
            mode & 0o111
        } else if meta.uid() == identity.uid {
            mode & 0o100
        } else if identity.gid == meta.gid() || identity.groups.contains(&meta.gid()) {
            mode & 0o010
        } else {
            mode & 0o001
        };
        if bit == 0 {
            return Err(format!(
                "user {:?} (uid {}) cannot enter {} (owner uid {}, gid {}, mode {:o})",
                identity.name,
                identity.uid,
                step.display(),
                meta.uid(),
                meta.gid(),
                mode & 0o7777
            ));
        }
    }
    Ok(())
}

/// Checks that any user can pass through every directory down to `dir`
/// (the daemon's scratch and runtime directories must be reachable by the
/// users its programs run as); the error names the first one that is not.
pub fn check_reachable_by_all(dir: &Path) -> Result<(), String> {
    for step in dir.ancestors() {
        let meta = std::fs::metadata(step).map_err(|e| format!("{}: {e}", step.display()))?;
        if meta.mode() & 0o001 == 0 {
            return Err(format!(
                "{} (mode {:o}) cannot be passed through by other users, so programs running as another user than the daemon's cannot reach {}: give it o+x (for example mode 711)",
                step.display(),
                meta.mode() & 0o7777,
                dir.display()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_resolves_with_its_groups() {
        let root = lookup("root").unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        assert!(root.groups.contains(&0), "{:?}", root.groups);
    }

    #[test]
    fn an_unknown_user_is_named() {
        let err = lookup("no-such-user-here").unwrap_err();
        assert_eq!(
            err.to_string(),
            "no user \"no-such-user-here\" on this host"
        );
    }

    #[test]
    fn a_daemon_that_is_not_root_runs_only_as_itself() {
        let policy = RunAsPolicy {
            default_user: "nobody".into(),
            daemon_uid: 4242,
        };
        assert_eq!(policy.resolve("").unwrap(), None);
        let err = policy.resolve("root").unwrap_err();
        assert_eq!(
            err.to_string(),
            "the daemon runs as uid 4242, not root, and cannot run programs as user \"root\""
        );
    }

    #[test]
    fn a_root_daemon_gives_the_default_user_when_none_is_asked_for() {
        let policy = RunAsPolicy {
            default_user: "root".into(),
            daemon_uid: 0,
        };
        assert_eq!(policy.resolve("").unwrap().map(|i| i.uid), Some(0));
    }

    #[test]
    fn entering_needs_the_search_bit_that_applies() {
        let dir = tempfile::tempdir().unwrap();
        let inner = dir.path().join("inner");
        std::fs::create_dir(&inner).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let stranger = Identity {
            name: "stranger".into(),
            uid: 54321,
            gid: 54321,
            groups: vec![54321],
        };
        let err = check_can_enter(&inner, &stranger).unwrap_err();
        assert!(
            err.contains(&format!("cannot enter {} ", dir.path().display())),
            "{err}"
        );
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        check_can_enter(&inner, &stranger).unwrap();
        assert!(check_reachable_by_all(&inner).is_ok());
    }
}
