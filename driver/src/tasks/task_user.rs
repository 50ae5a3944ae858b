//! Who a task runs as: its `user`, or the operator's `default_user` when it
//! names none, checked against the operator's rules (`denied_users`, and
//! uid 0 only with `allow_root`), which a job cannot change. The daemon
//! then runs the snippet as that user (`run_as_user`).
//!
//! Nomad's dynamic workload users (`nomad-<uid>`, no passwd entry) are not
//! advertised, so Nomad never sends one; a job naming such a user gets the
//! unknown-user error.

use crate::host::{HostUser, TaskUsers};
use crate::plugin_config::UserPolicy;
use elide_cty::ConfigError;

/// The user a task with `user = task_user` ("" for none) runs as; the error
/// names the `user` field and the user.
pub fn resolve(
    task_user: &str,
    policy: &UserPolicy,
    users: &dyn TaskUsers,
) -> Result<HostUser, ConfigError> {
    let name = if task_user.is_empty() {
        policy.default_user.as_str()
    } else {
        task_user
    };
    let refuse = |problem: String| ConfigError::invalid("user", problem);
    if policy.denied_users.iter().any(|denied| denied == name) {
        return Err(refuse(format!(
            "{name:?} is denied on this client (plugin config denied_users)"
        )));
    }
    let user = users
        .lookup(name)
        .map_err(|e| refuse(format!("looking up {name:?} failed: {e}")))?
        .ok_or_else(|| refuse(format!("no user {name:?} on this client")))?;
    if user.uid == 0 && !policy.allow_root {
        return Err(refuse(format!(
            "{name:?} is uid 0, and this client runs no task as root (plugin config allow_root = false)"
        )));
    }
    Ok(user)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    struct Users;

    impl TaskUsers for Users {
        fn lookup(&self, name: &str) -> std::io::Result<Option<HostUser>> {
            let uid = match name {
                "nobody" => 65534,
                "root" | "toor" => 0,
                "alice" => 1000,
                _ => return Ok(None),
            };
            Ok(Some(HostUser {
                name: name.into(),
                uid,
                gid: uid,
            }))
        }

        fn prepare_task_dir(&self, _: &Path, _: &HostUser) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn problem(task_user: &str, policy: &UserPolicy) -> String {
        resolve(task_user, policy, &Users).unwrap_err().to_string()
    }

    #[test]
    fn a_task_without_user_runs_as_the_default() {
        let user = resolve("", &UserPolicy::default(), &Users).unwrap();
        assert_eq!((user.name.as_str(), user.uid), ("nobody", 65534));
        let alice = resolve("alice", &UserPolicy::default(), &Users).unwrap();
        assert_eq!(alice.uid, 1000);
    }

    #[test]
    fn root_needs_the_operators_opt_in_under_any_name() {
        let policy = UserPolicy::default();
        assert_eq!(
            problem("root", &policy),
            "invalid `user`: \"root\" is denied on this client (plugin config denied_users)"
        );
        assert_eq!(
            problem("toor", &policy),
            "invalid `user`: \"toor\" is uid 0, and this client runs no task as root (plugin config allow_root = false)"
        );
        let open = UserPolicy {
            allow_root: true,
            denied_users: vec![],
            ..UserPolicy::default()
        };
        assert_eq!(resolve("root", &open, &Users).unwrap().uid, 0);
    }

    #[test]
    fn unknown_and_denied_users_are_named() {
        assert_eq!(
            problem("mallory", &UserPolicy::default()),
            "invalid `user`: no user \"mallory\" on this client"
        );
        let policy = UserPolicy {
            denied_users: vec!["alice".into()],
            ..UserPolicy::default()
        };
        assert_eq!(
            problem("alice", &policy),
            "invalid `user`: \"alice\" is denied on this client (plugin config denied_users)"
        );
    }
}
