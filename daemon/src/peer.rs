//! Who may talk to the daemon over its Unix socket, checked with the
//! kernel's `SO_PEERCRED` on every connection (`--allow-uid`,
//! `--allow-gid`).
//!
//! The socket file's mode and group are the first gate (`--socket-mode`);
//! this is a second one, for hosts where the socket's group is wider than
//! the set of users that should run code. With no list given there is no
//! second gate: the file mode alone decides, as before.
//!
//! A connection from a refused peer is accepted (refusing at accept would
//! leave the client with a bare connection reset), logged once with its
//! uid, gid and pid, and every RPC on it is answered `PERMISSION_DENIED`
//! by [`PeerPolicy::interceptor`], before any service code runs.
//!
//! Root (uid 0) and the daemon's own uid are always allowed: both can
//! already read and change the daemon's memory, state directory and socket
//! file, so refusing them would protect nothing and only break operators'
//! tools (`elide-ctl` run as root).
//!
//! `SO_PEERCRED` carries the peer's uid, primary gid and pid as they were
//! when it connected; supplementary groups are not in it, so `--allow-gid`
//! matches the primary gid only.

use std::collections::BTreeSet;

use tokio::net::unix::UCred;
use tonic::transport::server::UdsConnectInfo;

/// Which peers may use the Unix socket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerPolicy {
    /// Allowed user ids; with `gids` empty too, every peer is allowed.
    pub uids: BTreeSet<u32>,
    /// Allowed primary group ids.
    pub gids: BTreeSet<u32>,
    /// The daemon's own effective uid (always allowed).
    pub own_uid: u32,
}

impl PeerPolicy {
    /// A policy allowing `uids` and `gids` (plus root and the daemon's own
    /// uid); empty lists allow everyone the socket's file mode lets in.
    pub fn new(uids: impl IntoIterator<Item = u32>, gids: impl IntoIterator<Item = u32>) -> Self {
        PeerPolicy {
            uids: uids.into_iter().collect(),
            gids: gids.into_iter().collect(),
            own_uid: nix::unistd::geteuid().as_raw(),
        }
    }

    /// Whether any list was given (otherwise nothing is checked).
    pub fn is_restrictive(&self) -> bool {
        !self.uids.is_empty() || !self.gids.is_empty()
    }

    /// Whether a peer with these credentials may make calls. A connection
    /// whose credentials the kernel did not give is refused when a list is
    /// set.
    pub fn admits(&self, cred: Option<&UCred>) -> bool {
        if !self.is_restrictive() {
            return true;
        }
        cred.is_some_and(|c| self.admits_ids(c.uid(), c.gid()))
    }

    /// Whether a peer running as `uid` with primary group `gid` is allowed
    /// (when a list is set).
    fn admits_ids(&self, uid: u32, gid: u32) -> bool {
        uid == 0 || uid == self.own_uid || self.uids.contains(&uid) || self.gids.contains(&gid)
    }

    /// Checks a just-accepted connection and logs a refused peer (once per
    /// connection; its calls are then refused without more lines).
    pub fn check_connection(&self, stream: &tokio::net::UnixStream) {
        if !self.is_restrictive() {
            return;
        }
        let cred = stream.peer_cred().ok();
        if !self.admits(cred.as_ref()) {
            match cred {
                Some(c) => tracing::warn!(
                    uid = c.uid(),
                    gid = c.gid(),
                    pid = c.pid().unwrap_or(0),
                    "refused a connection on the Unix socket: its uid and gid are not in --allow-uid/--allow-gid"
                ),
                None => tracing::warn!(
                    "refused a connection on the Unix socket: the kernel gave no peer credentials"
                ),
            }
        }
    }

    /// A tonic interceptor answering every call of a refused peer with
    /// `PERMISSION_DENIED`, naming its uid and gid.
    pub fn interceptor(
        self,
    ) -> impl FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Clone {
        move |request: tonic::Request<()>| {
            let cred = request
                .extensions()
                .get::<UdsConnectInfo>()
                .and_then(|info| info.peer_cred);
            if self.admits(cred.as_ref()) {
                return Ok(request);
            }
            let who = match cred {
                Some(c) => format!("uid {} (gid {})", c.uid(), c.gid()),
                None => "a peer without credentials".to_owned(),
            };
            Err(tonic::Status::permission_denied(format!(
                "{who} may not use this daemon: it is not in the daemon's --allow-uid or --allow-gid lists"
            )))
        }
    }
}

/// Parses a comma-separated list of numeric ids or names (`--allow-uid
/// 1000,nomad`), resolving names with `resolve`; the error names the entry.
pub fn parse_id_list(
    list: &str,
    what: &str,
    resolve: impl Fn(&str) -> Option<u32>,
) -> Result<Vec<u32>, String> {
    list.split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            entry
                .parse::<u32>()
                .ok()
                .or_else(|| resolve(entry))
                .ok_or_else(|| format!("{what} {entry:?} is neither a number nor a known name"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(uids: &[u32], gids: &[u32]) -> PeerPolicy {
        PeerPolicy {
            uids: uids.iter().copied().collect(),
            gids: gids.iter().copied().collect(),
            own_uid: 4242,
        }
    }

    #[test]
    fn no_list_checks_nothing() {
        assert!(policy(&[], &[]).admits(None));
    }

    #[test]
    fn id_lists_parse_numbers_and_names_and_name_a_bad_entry() {
        let resolve = |name: &str| (name == "nomad").then_some(77);
        assert_eq!(
            parse_id_list("1000, nomad,", "user", resolve),
            Ok(vec![1000, 77])
        );
        assert_eq!(
            parse_id_list("1000,ghost", "user", resolve),
            Err("user \"ghost\" is neither a number nor a known name".to_owned())
        );
    }

    #[test]
    fn listed_uids_and_gids_root_and_the_daemons_own_uid_are_allowed() {
        let p = policy(&[1000], &[50]);
        assert!(p.admits_ids(1000, 1000));
        assert!(p.admits_ids(2000, 50));
        assert!(p.admits_ids(0, 0));
        assert!(p.admits_ids(4242, 4242));
        assert!(!p.admits_ids(65534, 65534));
    }

    #[test]
    fn a_list_refuses_a_peer_without_credentials() {
        assert!(!policy(&[1000], &[]).admits(None));
    }
}
