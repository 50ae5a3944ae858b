//! Names the driver gives things on the daemon: its session and the
//! executions of its tasks. Both are *derived*, never stored, so a fresh
//! plugin process (or a retried RPC) arrives at the same names.

use elide_proto::elide::daemon::v1 as pb;
use prost::Message;
use sha2::{Digest, Sha256};

use crate::plugin_config::SessionConfig;

/// Longest id the daemon accepts (`session_id`, `execution_id`).
pub const MAX_DAEMON_ID_BYTES: usize = 128;

/// Where the host's stable identity is read from (systemd's machine id).
pub const MACHINE_ID_PATH: &str = "/etc/machine-id";

/// The daemon session config for the plugin's `session_config` block.
///
/// `idle_timeout` is zero (never expire): tasks outlive the plugin process,
/// and a session expiring while no plugin watches would cancel them.
pub fn daemon_session_config(config: &SessionConfig) -> pb::SessionConfig {
    pb::SessionConfig {
        context_pool_size: config.context_pool_size.unwrap_or(0),
        enabled_languages: config
            .enabled_languages
            .iter()
            .flatten()
            .map(|l| l.name().to_owned())
            .collect(),
        enabled_intrinsics: config.intrinsics(),
        memory_limit_mb: config.memory_limit_mb.unwrap_or(0),
        enable_ai: config.enable_ai.unwrap_or(false),
        max_timeout: None,
        idle_timeout: Some({
            let idle = config
                .idle_timeout
                .unwrap_or(crate::plugin_config::DEFAULT_SESSION_IDLE_TIMEOUT);
            elide_proto::duration_to_proto(idle)
        }),
    }
}

/// The host identity the session id is derived from: the hostname and the
/// machine id (either may be missing; both missing still gives a stable,
/// if less unique, value).
pub fn host_identity() -> String {
    let hostname = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default();
    let machine_id = std::fs::read_to_string(MACHINE_ID_PATH).unwrap_or_default();
    format!("{hostname}\n{}", machine_id.trim())
}

/// THE session id of a Nomad client's driver:
/// `nomad-<sha256(host identity)[..12 hex]>-<sha256(session config)[..8 hex]>`.
///
/// * One per host: every plugin process of the same client (Nomad starts
///   three, and restarts them) finds the same session.
/// * The config part is the SHA-256 of the protobuf encoding of the
///   [`pb::SessionConfig`] sent to the daemon (canonical: prost writes
///   fields in tag order). A config change therefore yields a *new*
///   session, and tasks running in the old one stay reachable through the
///   session id recorded in their `driver_state`.
pub fn session_id(host_identity: &str, config: &pb::SessionConfig) -> String {
    let host = hex(&Sha256::digest(host_identity.as_bytes()));
    let config = hex(&Sha256::digest(config.encode_to_vec()));
    format!("nomad-{}-{}", &host[..12], &config[..8])
}

/// The daemon execution id of a Nomad task start, derived from
/// `TaskConfig.id` (`<alloc_id>/<task>/<random>`, new for every start).
///
/// A retried `StartTask` therefore re-submits the same id and the daemon's
/// idempotency guarantees the snippet never runs twice. `/` becomes `.`;
/// any other character outside `[A-Za-z0-9._-]` becomes `_`. When that was
/// lossy (other characters replaced) or the result would be longer than
/// the daemon allows, a hash of the original id is appended (after
/// truncation), so distinct task ids never share an execution id.
pub fn execution_id(task_id: &str) -> String {
    let mut lossy = false;
    let mut id: String = task_id
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '_' | '-' => c,
            '/' => '.',
            _ => {
                lossy = true;
                '_'
            }
        })
        .collect();
    if id.is_empty() || id == "." || id == ".." {
        lossy = true;
    }
    if lossy || id.len() > MAX_DAEMON_ID_BYTES {
        let digest = hex(&Sha256::digest(task_id.as_bytes()));
        // 1 for '-' and 16 hex digits of hash.
        id.truncate(MAX_DAEMON_ID_BYTES - 17);
        id.push('-');
        id.push_str(&digest[..16]);
    }
    id
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use elide_proto::Language;

    fn valid(id: &str) -> bool {
        !id.is_empty()
            && id.len() <= MAX_DAEMON_ID_BYTES
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    }

    #[test]
    fn execution_id_is_readable_and_deterministic() {
        let task = "0b1c6c5e-2f0c-4a8e-9a63-3c1e9a0b7f11/hello/5a1b2c3d";
        assert_eq!(
            execution_id(task),
            "0b1c6c5e-2f0c-4a8e-9a63-3c1e9a0b7f11.hello.5a1b2c3d"
        );
        assert_eq!(execution_id(task), execution_id(task));
    }

    #[test]
    fn execution_id_hashes_lossy_and_long_ids() {
        let a = execution_id("alloc/h llo/x");
        let b = execution_id("alloc/h*llo/x");
        assert!(valid(&a) && valid(&b), "{a} {b}");
        assert_ne!(a, b);
        let long = format!("alloc/{}/x", "t".repeat(300));
        let id = execution_id(&long);
        assert!(valid(&id), "{id}");
        assert_ne!(id, execution_id(&format!("alloc/{}/y", "t".repeat(300))));
        assert!(valid(&execution_id("")));
        assert!(valid(&execution_id("..")));
    }

    #[test]
    fn sessions_expire_after_the_idle_timeout_one_hour_by_default() {
        let idle = |config: &SessionConfig| daemon_session_config(config).idle_timeout.unwrap();
        assert_eq!(idle(&SessionConfig::default()).seconds, 3600);
        let never = SessionConfig {
            idle_timeout: Some(std::time::Duration::ZERO),
            ..SessionConfig::default()
        };
        assert_eq!((idle(&never).seconds, idle(&never).nanos), (0, 0));
    }

    #[test]
    fn session_id_changes_with_the_config_only() {
        let base = daemon_session_config(&SessionConfig::default());
        let id = session_id("host\nmachine", &base);
        assert!(valid(&id), "{id}");
        assert!(id.starts_with("nomad-"));
        assert_eq!(id.len(), "nomad-".len() + 12 + 1 + 8);
        assert_eq!(id, session_id("host\nmachine", &base));
        assert_ne!(id, session_id("other\nmachine", &base));
        let narrower = daemon_session_config(&SessionConfig {
            enabled_languages: Some(vec![Language::Python]),
            ..SessionConfig::default()
        });
        let other = session_id("host\nmachine", &narrower);
        assert_eq!(id[..19], other[..19], "same host part");
        assert_ne!(id, other);
    }
}
