//! The go-plugin process contract as Nomad uses it: the environment the
//! host sets, the unix socket the plugin serves on, and the handshake line
//! it prints on stdout once serving.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Group};

pub use elide_proto::handshake::{
    handshake_line, APP_PROTOCOL_VERSION, MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE,
};

/// Why the process was not started the way a Nomad client starts plugins.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LaunchError {
    /// The magic cookie is absent or wrong: someone ran the binary by hand.
    #[error(
        "This binary is a Nomad task-driver plugin and is not meant to be run directly.\n\
         Place it in the Nomad client's plugin_dir and add a `plugin \"nomad-driver-elide\" {{ … }}`\n\
         block to the agent configuration; the Nomad agent starts it by itself."
    )]
    NotStartedByNomad,
    /// The host does not speak protocol version 2.
    #[error(
        "the plugin host offers protocol versions {offered:?} (PLUGIN_PROTOCOL_VERSIONS) but this plugin speaks only version 2"
    )]
    UnsupportedProtocol {
        /// What the host offered.
        offered: String,
    },
}

/// Checks the magic cookie and that the host speaks protocol 2. `env` looks
/// a variable up (normally `std::env::var`).
pub fn check_environment(env: impl Fn(&str) -> Option<String>) -> Result<(), LaunchError> {
    if env(MAGIC_COOKIE_KEY).as_deref() != Some(MAGIC_COOKIE_VALUE) {
        return Err(LaunchError::NotStartedByNomad);
    }
    let offered = env("PLUGIN_PROTOCOL_VERSIONS").unwrap_or_default();
    let speaks_ours = offered
        .split(',')
        .any(|v| v.trim().parse::<u32>() == Ok(APP_PROTOCOL_VERSION));
    if !speaks_ours {
        return Err(LaunchError::UnsupportedProtocol { offered });
    }
    Ok(())
}

/// The directory for the plugin socket: `PLUGIN_UNIX_SOCKET_DIR`, else
/// `$TMPDIR`, else `/tmp`.
pub fn socket_dir(env: impl Fn(&str) -> Option<String>) -> PathBuf {
    env("PLUGIN_UNIX_SOCKET_DIR")
        .filter(|d| !d.is_empty())
        .or_else(|| env("TMPDIR").filter(|d| !d.is_empty()))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"))
}

/// Problems setting up the plugin socket.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// The path would exceed the kernel's `sun_path` limit.
    #[error("socket path {0} is longer than the 107 bytes a unix socket path may have")]
    PathTooLong(PathBuf),
    /// Binding failed.
    #[error("cannot bind the plugin socket at {path}: {source}")]
    Bind {
        /// Where.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// `PLUGIN_UNIX_SOCKET_GROUP` names no group.
    #[error("PLUGIN_UNIX_SOCKET_GROUP {0:?} is neither a group name nor a numeric gid")]
    UnknownGroup(String),
    /// Changing the socket's group or mode failed.
    #[error("cannot give the plugin socket {path} to group {group}: {source}")]
    Permissions {
        /// Where.
        path: PathBuf,
        /// Which group.
        group: String,
        /// Why.
        source: io::Error,
    },
}

/// The bound plugin socket. Removes its file when dropped.
#[derive(Debug)]
pub struct PluginSocket {
    path: PathBuf,
    listener: Option<tokio::net::UnixListener>,
}

impl PluginSocket {
    /// Binds `<dir>/plugin<random digits>`; with `group` set, gives the
    /// socket to that group (name or gid) with mode `0660`, as go-plugin
    /// does for `PLUGIN_UNIX_SOCKET_GROUP`. Must run inside a tokio runtime.
    pub fn bind(dir: &Path, group: Option<&str>) -> Result<Self, SocketError> {
        const ATTEMPTS: usize = 8;
        let mut last_error = None;
        for _ in 0..ATTEMPTS {
            let path = dir.join(format!("plugin{}", fastrand::u32(..)));
            if path.as_os_str().len() > 107 {
                return Err(SocketError::PathTooLong(path));
            }
            match tokio::net::UnixListener::bind(&path) {
                Ok(listener) => {
                    let socket = PluginSocket {
                        path,
                        listener: Some(listener),
                    };
                    if let Some(group) = group.filter(|g| !g.is_empty()) {
                        socket.give_to_group(group)?;
                    }
                    return Ok(socket);
                }
                // A leftover from another process: pick another name.
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => last_error = Some((path, e)),
                Err(source) => return Err(SocketError::Bind { path, source }),
            }
        }
        let (path, source) = last_error.expect("at least one attempt was made");
        Err(SocketError::Bind { path, source })
    }

    fn give_to_group(&self, group: &str) -> Result<(), SocketError> {
        let gid = match group.parse::<u32>() {
            Ok(gid) => Gid::from_raw(gid),
            Err(_) => Group::from_name(group)
                .ok()
                .flatten()
                .map(|g| g.gid)
                .ok_or_else(|| SocketError::UnknownGroup(group.to_owned()))?,
        };
        let permissions = |source: io::Error| SocketError::Permissions {
            path: self.path.clone(),
            group: group.to_owned(),
            source,
        };
        nix::unistd::chown(&self.path, None, Some(gid)).map_err(|e| permissions(e.into()))?;
        std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(0o660))
            .map_err(permissions)
    }

    /// The socket path (what the handshake line announces).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Takes the listener out to serve on it; the file is still removed when
    /// this value is dropped.
    pub fn take_listener(&mut self) -> Option<tokio::net::UnixListener> {
        self.listener.take()
    }
}

impl Drop for PluginSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |key| map.get(key).cloned()
    }

    #[test]
    fn cookie_and_protocol_are_required() {
        assert_eq!(
            check_environment(env_of(&[])),
            Err(LaunchError::NotStartedByNomad)
        );
        assert_eq!(
            check_environment(env_of(&[(MAGIC_COOKIE_KEY, "nope")])),
            Err(LaunchError::NotStartedByNomad)
        );
        assert!(matches!(
            check_environment(env_of(&[
                (MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE),
                ("PLUGIN_PROTOCOL_VERSIONS", "1,3")
            ])),
            Err(LaunchError::UnsupportedProtocol { .. })
        ));
        assert_eq!(
            check_environment(env_of(&[
                (MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE),
                ("PLUGIN_PROTOCOL_VERSIONS", "1, 2")
            ])),
            Ok(())
        );
    }

    #[test]
    fn socket_dir_prefers_the_go_plugin_variable() {
        assert_eq!(
            socket_dir(env_of(&[
                ("PLUGIN_UNIX_SOCKET_DIR", "/a"),
                ("TMPDIR", "/b")
            ])),
            PathBuf::from("/a")
        );
        assert_eq!(socket_dir(env_of(&[("TMPDIR", "/b")])), PathBuf::from("/b"));
        assert_eq!(socket_dir(env_of(&[])), PathBuf::from("/tmp"));
    }

    #[tokio::test]
    async fn socket_is_bound_then_removed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let gid = nix::unistd::getegid().as_raw().to_string();
        let socket = PluginSocket::bind(dir.path(), Some(&gid)).unwrap();
        let path = socket.path().to_owned();
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(name
            .strip_prefix("plugin")
            .unwrap()
            .chars()
            .all(|c| c.is_ascii_digit()));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o660);
        drop(socket);
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn unknown_group_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let err = PluginSocket::bind(dir.path(), Some("no-such-group-elide")).unwrap_err();
        assert!(matches!(err, SocketError::UnknownGroup(_)), "{err}");
    }
}
