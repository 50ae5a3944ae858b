//! The agent-side plugin configuration:
//!
//! ```hcl
//! plugin "nomad-driver-elide" {
//!   config {
//!     daemon_socket  = "/run/elide/daemon.sock"   # or daemon_address = "10.0.0.5:7070"
//!     status_mode    = "auto"    # "watch" (WatchSession stream), "poll" or "auto"
//!     poll_interval  = "1s"      # GetExecutionStatus period in "poll" mode
//!     driver_state_dir = "/var/lib/nomad-driver-elide"  # the plugin's own state (delete journal)
//!     default_user   = "nobody"  # who a task without `user` runs as
//!     allow_root     = false     # whether any task may run as root (uid 0)
//!     denied_users   = ["root"]  # users no task may name (default: root, or none with allow_root)
//!     daemon {                   # optional: the plugin starts the daemon itself
//!       command   = "elide-daemon"   # absolute path or a name on PATH
//!       args      = ["--max-running", "64"]
//!       state_dir = "/var/lib/elide"
//!     }
//!     session_config {
//!       context_pool_size  = 4
//!       enabled_languages  = ["python", "javascript"]
//!       enabled_intrinsics = ["console", "fs.read"]
//!       memory_limit_mb    = 256
//!       enable_ai          = false
//!       idle_timeout       = "1h"   # ends the session of a client gone for good
//!     }
//!   }
//! }
//! ```
//!
//! Its schema ([`schema`]) and its decoding and validation ([`PluginConfig::decode`]).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use elide_proto::hashicorp::nomad::plugins::shared::hclspec::Spec;

use crate::hclspec::{attr, block, object};
use elide_cty::{ConfigError, CtyObject};
use elide_proto::go_duration;
use elide_proto::{intrinsics, Language};

/// Where the daemon listens when the configuration names no endpoint.
pub const DEFAULT_DAEMON_SOCKET: &str = "/run/elide/daemon.sock";

/// The longest unix socket path the kernel accepts (`sun_path` minus NUL).
const MAX_SOCKET_PATH_BYTES: usize = 107;

/// The schema of the agent's `config { … }` block.
///
/// `daemon_socket` has no HCL default on purpose: the default is applied by
/// [`PluginConfig::decode`] only when `daemon_address` is not set either, so
/// that setting both can be reported as a mistake.
pub fn schema() -> Spec {
    object([
        ("daemon_socket", attr("string")),
        ("daemon_address", attr("string")),
        ("status_mode", attr("string")),
        ("poll_interval", attr("string")),
        ("driver_state_dir", attr("string")),
        ("default_user", attr("string")),
        ("allow_root", attr("bool")),
        ("denied_users", attr("list(string)")),
        (
            "daemon",
            block(object([
                ("command", attr("string")),
                ("args", attr("list(string)")),
                ("state_dir", attr("string")),
            ])),
        ),
        (
            "session_config",
            block(object([
                ("context_pool_size", attr("number")),
                ("enabled_languages", attr("list(string)")),
                ("enabled_intrinsics", attr("list(string)")),
                ("memory_limit_mb", attr("number")),
                ("enable_ai", attr("bool")),
                ("idle_timeout", attr("string")),
            ])),
        ),
    ])
}

/// How to reach the execution daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DaemonEndpoint {
    /// A unix socket path.
    Unix(PathBuf),
    /// A TCP `host:port`.
    Tcp(String),
}

impl DaemonEndpoint {
    /// Reads back what [`fmt::Display`] writes (`unix:/path`,
    /// `tcp:host:port`); `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        if let Some(path) = text.strip_prefix("unix:") {
            return (!path.is_empty()).then(|| DaemonEndpoint::Unix(PathBuf::from(path)));
        }
        let address = text.strip_prefix("tcp:")?;
        (!address.is_empty()).then(|| DaemonEndpoint::Tcp(address.to_owned()))
    }
}

impl fmt::Display for DaemonEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DaemonEndpoint::Unix(path) => write!(f, "unix:{}", path.display()),
            DaemonEndpoint::Tcp(address) => write!(f, "tcp:{address}"),
        }
    }
}

/// Defaults for the daemon sessions this driver opens. `None` leaves the
/// daemon's own default in place.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionConfig {
    /// Warm execution contexts the daemon keeps per session.
    pub context_pool_size: Option<u32>,
    /// Languages tasks may use; `None` means every known language.
    pub enabled_languages: Option<Vec<Language>>,
    /// Intrinsics the client's session grants; `None` means
    /// [`DEFAULT_SESSION_INTRINSICS`].
    pub enabled_intrinsics: Option<Vec<String>>,
    /// Memory limit of a session, in MiB.
    pub memory_limit_mb: Option<u64>,
    /// Whether the AI intrinsics are available.
    pub enable_ai: Option<bool>,
    /// How long the daemon keeps the session once nobody uses it (no
    /// watch stream, no request): what cleans up after a client that is
    /// gone for good. `None` means [`DEFAULT_SESSION_IDLE_TIMEOUT`]; zero
    /// means never.
    pub idle_timeout: Option<Duration>,
}

/// Default `session_config.idle_timeout`. A live plugin keeps its session
/// busy (the watch stream, or polling while tasks run) and re-creates it
/// when it starts a task, so this only ends sessions of departed clients.
pub const DEFAULT_SESSION_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// What a session grants when `session_config` names no
/// `enabled_intrinsics`: the original driver's documented minimal set
/// (`io`, `env`), so tasks see their `NOMAD_*` environment and print, and
/// the daemon's kernel rules deny files outside the task's own, network
/// and other programs until the operator grants them.
pub const DEFAULT_SESSION_INTRINSICS: [&str; 2] = ["console", "env"];

impl SessionConfig {
    /// The intrinsics the session grants: as configured, or the default.
    pub fn intrinsics(&self) -> Vec<String> {
        match &self.enabled_intrinsics {
            Some(names) => names.clone(),
            None => DEFAULT_SESSION_INTRINSICS.map(String::from).to_vec(),
        }
    }
}

/// Default `driver_state_dir`: where the plugin keeps what must survive
/// its own restarts (the journal of deletes the daemon has not confirmed).
pub const DEFAULT_DRIVER_STATE_DIR: &str = "/var/lib/nomad-driver-elide";

/// Default `daemon.state_dir`.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/elide";

/// Flags the plugin passes to a daemon it starts itself; `daemon.args` may
/// not repeat them (the daemon would get two values).
const RESERVED_DAEMON_FLAGS: [&str; 2] = ["--socket", "--state-dir"];

/// The optional `daemon {}` block: when present, the plugin starts (and
/// restarts) the daemon itself if none answers on `daemon_socket`; see
/// [`crate::supervision`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonCommand {
    /// The daemon executable: an absolute path or a name looked up on `PATH`.
    pub command: String,
    /// Extra arguments, after `--socket` and `--state-dir`.
    pub args: Vec<String>,
    /// The daemon's `--state-dir`, also home of the supervisor lock file
    /// and the daemon's log.
    pub state_dir: PathBuf,
}

/// How the driver learns that executions changed state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StatusMode {
    /// `WatchSession` when the daemon lists it in its features, else polling.
    #[default]
    Auto,
    /// One `WatchSession` stream per driver process.
    Watch,
    /// `GetExecutionStatus` for every running task each `poll_interval`.
    Poll,
}

impl StatusMode {
    /// The configuration spelling.
    pub fn name(self) -> &'static str {
        match self {
            StatusMode::Auto => "auto",
            StatusMode::Watch => "watch",
            StatusMode::Poll => "poll",
        }
    }
}

/// Who tasks may run as: the operator's rules, which a job cannot change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserPolicy {
    /// Who a task without `user` runs as.
    pub default_user: String,
    /// Whether a task may run as uid 0, under any name.
    pub allow_root: bool,
    /// Names no task may run as.
    pub denied_users: Vec<String>,
}

/// Default `default_user`, as Nomad's `exec` driver.
pub const DEFAULT_TASK_USER: &str = "nobody";

impl Default for UserPolicy {
    fn default() -> Self {
        UserPolicy {
            default_user: DEFAULT_TASK_USER.to_owned(),
            allow_root: false,
            denied_users: vec!["root".to_owned()],
        }
    }
}

/// Default `poll_interval`.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Shortest `poll_interval` accepted (each poll is one call per task).
pub const MIN_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Longest `poll_interval` accepted (exits are noticed this late at worst).
pub const MAX_POLL_INTERVAL: Duration = Duration::from_secs(60);

/// The validated plugin configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginConfig {
    /// Where the daemon is.
    pub daemon: DaemonEndpoint,
    /// Session defaults.
    pub session: SessionConfig,
    /// How execution status changes are followed.
    pub status_mode: StatusMode,
    /// Polling period in [`StatusMode::Poll`] (and `Auto` falling back).
    pub poll_interval: Duration,
    /// The daemon to start when none answers (`daemon {}` block); `None`
    /// means the daemon is managed elsewhere (systemd) and only connected to.
    pub supervised_daemon: Option<DaemonCommand>,
    /// The plugin's own state directory (the delete journal).
    pub driver_state_dir: PathBuf,
    /// Who tasks run as.
    pub users: UserPolicy,
}

impl Default for PluginConfig {
    fn default() -> Self {
        PluginConfig {
            daemon: DaemonEndpoint::Unix(PathBuf::from(DEFAULT_DAEMON_SOCKET)),
            session: SessionConfig::default(),
            status_mode: StatusMode::Auto,
            poll_interval: DEFAULT_POLL_INTERVAL,
            supervised_daemon: None,
            driver_state_dir: PathBuf::from(DEFAULT_DRIVER_STATE_DIR),
            users: UserPolicy::default(),
        }
    }
}

impl PluginConfig {
    /// Decodes and validates `SetConfigRequest.msgpack_config`. Empty bytes
    /// (a plugin block without `config`) give the defaults.
    pub fn decode(msgpack: &[u8]) -> Result<Self, ConfigError> {
        let value = elide_cty::decode(msgpack)?;
        let root = CtyObject::root(&value)?;
        let daemon = daemon_endpoint(&root)?;
        let supervised_daemon = root
            .block("daemon")?
            .map(|block| daemon_command(&block, &daemon))
            .transpose()?;
        Ok(PluginConfig {
            daemon,
            supervised_daemon,
            session: match root.block("session_config")? {
                Some(session) => session_config(&session)?,
                None => SessionConfig::default(),
            },
            status_mode: status_mode(root.string("status_mode")?)?,
            poll_interval: poll_interval(root.string("poll_interval")?)?,
            driver_state_dir: driver_state_dir(root.string("driver_state_dir")?)?,
            users: user_policy(&root)?,
        })
    }
}

fn user_policy(root: &CtyObject<'_>) -> Result<UserPolicy, ConfigError> {
    let allow_root = root.bool("allow_root")?.unwrap_or(false);
    let default_user = root
        .string("default_user")?
        .unwrap_or_else(|| DEFAULT_TASK_USER.to_owned());
    let is_name = |name: &str| !name.is_empty() && !name.contains(|c: char| c.is_whitespace());
    if !is_name(&default_user) {
        return Err(ConfigError::invalid(
            "default_user",
            format!("{default_user:?} is not a user name"),
        ));
    }
    if default_user == "root" && !allow_root {
        return Err(ConfigError::invalid(
            "default_user",
            "\"root\" needs allow_root = true",
        ));
    }
    let denied_users = match root.string_list("denied_users")? {
        Some(names) => names,
        None if allow_root => Vec::new(),
        None => vec!["root".to_owned()],
    };
    if let Some(bad) = denied_users.iter().find(|n| !is_name(n)) {
        return Err(ConfigError::invalid(
            "denied_users",
            format!("{bad:?} is not a user name"),
        ));
    }
    if denied_users.contains(&default_user) {
        return Err(ConfigError::invalid(
            "default_user",
            format!("{default_user:?} is in denied_users"),
        ));
    }
    Ok(UserPolicy {
        default_user,
        allow_root,
        denied_users,
    })
}

fn driver_state_dir(text: Option<String>) -> Result<PathBuf, ConfigError> {
    let dir = text.unwrap_or_else(|| DEFAULT_DRIVER_STATE_DIR.to_owned());
    if !dir.starts_with('/') {
        return Err(ConfigError::invalid(
            "driver_state_dir",
            format!("{dir:?} must be an absolute path"),
        ));
    }
    Ok(PathBuf::from(dir))
}

fn daemon_command(
    block: &CtyObject<'_>,
    endpoint: &DaemonEndpoint,
) -> Result<DaemonCommand, ConfigError> {
    if let DaemonEndpoint::Tcp(_) = endpoint {
        return Err(ConfigError::invalid(
            "daemon",
            "the plugin starts a daemon only on a unix socket: use daemon_socket, not daemon_address",
        ));
    }
    let command_field = block.field_path("command");
    let command = block.string("command")?.unwrap_or_default();
    if command.trim().is_empty() {
        return Err(ConfigError::invalid(command_field, "must not be empty"));
    }
    // A relative path would depend on the agent's working directory.
    if command.contains('/') && !command.starts_with('/') {
        return Err(ConfigError::invalid(
            command_field,
            format!("{command:?} must be an absolute path or a command name found on PATH"),
        ));
    }
    let args = block.string_list("args")?.unwrap_or_default();
    let args_field = block.field_path("args");
    for arg in &args {
        let flag = arg.split('=').next().unwrap_or_default();
        if RESERVED_DAEMON_FLAGS.contains(&flag) {
            return Err(ConfigError::invalid(
                args_field,
                format!("{flag} is set by the plugin (from daemon_socket and daemon.state_dir)"),
            ));
        }
    }
    let state_dir_field = block.field_path("state_dir");
    let state_dir = block
        .string("state_dir")?
        .unwrap_or_else(|| DEFAULT_STATE_DIR.to_owned());
    if state_dir.is_empty() {
        return Err(ConfigError::invalid(state_dir_field, "must not be empty"));
    }
    if !state_dir.starts_with('/') {
        return Err(ConfigError::invalid(
            state_dir_field,
            format!("{state_dir:?} must be an absolute path"),
        ));
    }
    Ok(DaemonCommand {
        command,
        args,
        state_dir: PathBuf::from(state_dir),
    })
}

fn status_mode(configured: Option<String>) -> Result<StatusMode, ConfigError> {
    match configured.as_deref() {
        None | Some("auto") => Ok(StatusMode::Auto),
        Some("watch") => Ok(StatusMode::Watch),
        Some("poll") => Ok(StatusMode::Poll),
        Some(other) => Err(ConfigError::invalid(
            "status_mode",
            format!("{other:?} is not one of \"auto\", \"watch\", \"poll\""),
        )),
    }
}

fn poll_interval(configured: Option<String>) -> Result<Duration, ConfigError> {
    let Some(text) = configured else {
        return Ok(DEFAULT_POLL_INTERVAL);
    };
    let interval = go_duration::parse(&text)
        .map_err(|e| ConfigError::invalid("poll_interval", e.to_string()))?;
    if !(MIN_POLL_INTERVAL..=MAX_POLL_INTERVAL).contains(&interval) {
        return Err(ConfigError::invalid(
            "poll_interval",
            format!(
                "must be between {MIN_POLL_INTERVAL:?} and {MAX_POLL_INTERVAL:?}, got {interval:?}"
            ),
        ));
    }
    Ok(interval)
}

fn daemon_endpoint(root: &CtyObject<'_>) -> Result<DaemonEndpoint, ConfigError> {
    let socket = root.string("daemon_socket")?;
    let address = root.string("daemon_address")?;
    match (socket, address) {
        (Some(_), Some(_)) => Err(ConfigError::invalid(
            "daemon_address",
            "set either daemon_socket or daemon_address, not both",
        )),
        (None, None) => Ok(DaemonEndpoint::Unix(PathBuf::from(DEFAULT_DAEMON_SOCKET))),
        (Some(socket), None) => socket_path(&socket).map(DaemonEndpoint::Unix),
        (None, Some(address)) => tcp_address(&address).map(DaemonEndpoint::Tcp),
    }
}

fn socket_path(socket: &str) -> Result<PathBuf, ConfigError> {
    let invalid = |problem: &str| ConfigError::invalid("daemon_socket", problem);
    if socket.is_empty() {
        return Err(invalid("must not be empty"));
    }
    if !socket.starts_with('/') {
        return Err(invalid("must be an absolute path"));
    }
    if socket.len() > MAX_SOCKET_PATH_BYTES {
        return Err(invalid(
            "is longer than the 107 bytes a unix socket path may have",
        ));
    }
    Ok(PathBuf::from(socket))
}

/// Checks a `host:port` (IPv6 hosts in brackets) and returns it unchanged.
fn tcp_address(address: &str) -> Result<String, ConfigError> {
    let invalid = |problem: String| ConfigError::invalid("daemon_address", problem);
    let Some((host, port)) = address.rsplit_once(':') else {
        return Err(invalid(format!("{address:?} is not of the form host:port")));
    };
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(invalid(format!("{address:?} has no valid host")));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(address.to_owned()),
        _ => Err(invalid(format!("{address:?} has no valid port (1-65535)"))),
    }
}

fn session_config(session: &CtyObject<'_>) -> Result<SessionConfig, ConfigError> {
    let context_pool_size = session
        .integer("context_pool_size")?
        .map(|n| {
            u32::try_from(n).map_err(|_| {
                let problem = if n < 0 {
                    format!("must not be negative, got {n}")
                } else {
                    format!("{n} is too large")
                };
                ConfigError::invalid(session.field_path("context_pool_size"), problem)
            })
        })
        .transpose()?;
    let enabled_languages = session
        .string_list("enabled_languages")?
        .map(|names| languages(&names, &session.field_path("enabled_languages")))
        .transpose()?;
    let enabled_intrinsics = session
        .string_list("enabled_intrinsics")?
        .map(|names| intrinsics(names, &session.field_path("enabled_intrinsics")))
        .transpose()?;
    let memory_limit_mb = session
        .integer("memory_limit_mb")?
        .map(|mb| positive_mib(mb, &session.field_path("memory_limit_mb")))
        .transpose()?;
    Ok(SessionConfig {
        context_pool_size,
        enabled_languages,
        enabled_intrinsics,
        memory_limit_mb,
        enable_ai: session.bool("enable_ai")?,
        idle_timeout: session
            .string("idle_timeout")?
            .map(|text| {
                go_duration::parse(&text).map_err(|e| {
                    ConfigError::invalid(session.field_path("idle_timeout"), e.to_string())
                })
            })
            .transpose()?,
    })
}

/// Parses language names, rejecting unknown ones; duplicates are dropped.
pub(crate) fn languages(names: &[String], field: &str) -> Result<Vec<Language>, ConfigError> {
    let mut out = Vec::new();
    for name in names {
        let language = Language::from_name(name).ok_or_else(|| {
            ConfigError::invalid(
                field,
                format!(
                    "unknown language {name:?} (known: {})",
                    Language::known_names()
                ),
            )
        })?;
        if !out.contains(&language) {
            out.push(language);
        }
    }
    Ok(out)
}

/// Checks intrinsic names: canonical ones ([`intrinsics::INTRINSICS`]) and
/// the original Elide driver's (`io`, `env`, `fs`, `http`, `ai`), which
/// are kept as written (the daemon maps them onto its grants). Unknown
/// names and names this runtime refuses (`sqlite`) fail naming `field`
/// and the name; duplicates are dropped.
pub(crate) fn intrinsics(names: Vec<String>, field: &str) -> Result<Vec<String>, ConfigError> {
    let mut out: Vec<String> = Vec::new();
    for name in names {
        intrinsics::resolve(&name).map_err(|e| ConfigError::invalid(field, e.to_string()))?;
        if !out.contains(&name) {
            out.push(name);
        }
    }
    Ok(out)
}

impl SessionConfig {
    /// What this session config asks that only local AI can give, as the
    /// field to name: `enable_ai = true`, or an intrinsic granting `ai`.
    pub fn asks_for_ai(&self) -> Option<String> {
        if self.enable_ai == Some(true) {
            return Some("session_config.enable_ai = true".to_owned());
        }
        self.enabled_intrinsics.iter().flatten().find_map(|name| {
            intrinsics::resolve(name)
                .is_ok_and(|grants| grants.contains(&"ai"))
                .then(|| format!("session_config.enabled_intrinsics {name:?}"))
        })
    }
}

/// A memory limit in MiB, which must be at least 1.
pub(crate) fn positive_mib(mb: i64, field: &str) -> Result<u64, ConfigError> {
    u64::try_from(mb)
        .ok()
        .filter(|mb| *mb > 0)
        .ok_or_else(|| ConfigError::invalid(field, format!("must be greater than 0 MiB, got {mb}")))
}

#[cfg(test)]
mod tests {

    #[test]
    fn endpoints_read_back_what_they_display() {
        for endpoint in [
            DaemonEndpoint::Unix(PathBuf::from("/run/elide/daemon.sock")),
            DaemonEndpoint::Tcp("[::1]:7070".into()),
        ] {
            assert_eq!(DaemonEndpoint::parse(&endpoint.to_string()), Some(endpoint));
        }
        assert_eq!(DaemonEndpoint::parse("unix:"), None);
        assert_eq!(DaemonEndpoint::parse("/run/elide/daemon.sock"), None);
    }
    use super::*;
    use elide_cty::value::{bytes, object, strings};
    use elide_proto::hashicorp::nomad::plugins::shared::hclspec::spec::Block as SpecKind;
    use rmpv::Value;

    /// The whole config object as Nomad sends it: every key present, nil
    /// where the user wrote nothing.
    fn config(socket: Value, address: Value, session: Value) -> Vec<u8> {
        bytes(&object(&[
            ("daemon_socket", socket),
            ("daemon_address", address),
            ("session_config", session),
        ]))
    }

    fn session(entries: &[(&str, Value)]) -> Value {
        let mut all = vec![
            ("context_pool_size", Value::Nil),
            ("enabled_languages", Value::Nil),
            ("enabled_intrinsics", Value::Nil),
            ("memory_limit_mb", Value::Nil),
            ("enable_ai", Value::Nil),
            ("idle_timeout", Value::Nil),
        ];
        for (key, value) in entries {
            all.retain(|(k, _)| k != key);
            all.push((key, value.clone()));
        }
        object(&all)
    }

    fn field_of(result: Result<PluginConfig, ConfigError>) -> String {
        result.unwrap_err().field().unwrap().to_owned()
    }

    #[test]
    fn absent_everything_gives_the_default_socket() {
        assert_eq!(PluginConfig::decode(&[]), Ok(PluginConfig::default()));
        assert_eq!(PluginConfig::decode(&[0x80]), Ok(PluginConfig::default()));
        let all_nil = config(Value::Nil, Value::Nil, Value::Nil);
        assert_eq!(PluginConfig::decode(&all_nil), Ok(PluginConfig::default()));
        // A block given as an empty list (HCL1 rewriting) is an absent block.
        let empty_block = config(Value::Nil, Value::Nil, Value::Array(vec![]));
        assert_eq!(
            PluginConfig::decode(&empty_block),
            Ok(PluginConfig::default())
        );
    }

    #[test]
    fn full_config_decodes_with_numbers_in_any_shape() {
        let bytes = config(
            Value::from("/run/elide/other.sock"),
            Value::Nil,
            Value::Array(vec![session(&[
                ("context_pool_size", Value::F64(4.0)),
                (
                    "enabled_languages",
                    strings(&["python", "javascript", "python"]),
                ),
                ("enabled_intrinsics", strings(&["console", "fs.read"])),
                ("memory_limit_mb", Value::from("256")),
                ("enable_ai", Value::Boolean(true)),
            ])]),
        );
        let decoded = PluginConfig::decode(&bytes).unwrap();
        assert_eq!(
            decoded,
            PluginConfig {
                daemon: DaemonEndpoint::Unix(PathBuf::from("/run/elide/other.sock")),
                session: SessionConfig {
                    context_pool_size: Some(4),
                    enabled_languages: Some(vec![Language::Python, Language::JavaScript]),
                    enabled_intrinsics: Some(vec!["console".into(), "fs.read".into()]),
                    memory_limit_mb: Some(256),
                    enable_ai: Some(true),
                    idle_timeout: None,
                },
                ..PluginConfig::default()
            }
        );
    }

    #[test]
    fn status_mode_and_poll_interval_are_checked() {
        let with = |mode: Value, interval: Value| {
            bytes(&object(&[
                ("daemon_socket", Value::Nil),
                ("daemon_address", Value::Nil),
                ("session_config", Value::Nil),
                ("status_mode", mode),
                ("poll_interval", interval),
            ]))
        };
        let decoded =
            PluginConfig::decode(&with(Value::from("poll"), Value::from("250ms"))).unwrap();
        assert_eq!(decoded.status_mode, StatusMode::Poll);
        assert_eq!(decoded.poll_interval, Duration::from_millis(250));
        let bad_mode = with(Value::from("push"), Value::Nil);
        assert_eq!(field_of(PluginConfig::decode(&bad_mode)), "status_mode");
        for bad in ["0s", "1ms", "2h", "soon"] {
            let bytes = with(Value::Nil, Value::from(bad));
            assert_eq!(
                field_of(PluginConfig::decode(&bytes)),
                "poll_interval",
                "{bad}"
            );
        }
    }

    #[test]
    fn driver_state_dir_defaults_and_must_be_absolute() {
        let with = |dir: Value| bytes(&object(&[("driver_state_dir", dir)]));
        assert_eq!(
            PluginConfig::decode(&with(Value::Nil))
                .unwrap()
                .driver_state_dir,
            PathBuf::from(DEFAULT_DRIVER_STATE_DIR)
        );
        let chosen = PluginConfig::decode(&with(Value::from("/srv/elide-driver"))).unwrap();
        assert_eq!(chosen.driver_state_dir, PathBuf::from("/srv/elide-driver"));
        let relative = PluginConfig::decode(&with(Value::from("state")));
        let err = relative.unwrap_err();
        assert_eq!(err.field(), Some("driver_state_dir"));
        assert!(
            err.to_string()
                .contains("\"state\" must be an absolute path"),
            "{err}"
        );
    }

    #[test]
    fn tcp_address_replaces_the_socket() {
        let bytes = config(Value::Nil, Value::from("10.0.0.5:7070"), Value::Nil);
        assert_eq!(
            PluginConfig::decode(&bytes).unwrap().daemon,
            DaemonEndpoint::Tcp("10.0.0.5:7070".into())
        );
        let bytes = config(Value::Nil, Value::from("[::1]:7070"), Value::Nil);
        assert!(PluginConfig::decode(&bytes).is_ok());
    }

    #[test]
    fn endpoint_mistakes_name_the_field() {
        let both = config(Value::from("/a.sock"), Value::from("h:1"), Value::Nil);
        assert_eq!(field_of(PluginConfig::decode(&both)), "daemon_address");
        for bad in ["", "relative.sock"] {
            let bytes = config(Value::from(bad), Value::Nil, Value::Nil);
            assert_eq!(field_of(PluginConfig::decode(&bytes)), "daemon_socket");
        }
        let long = format!("/{}", "x".repeat(120));
        let bytes = config(Value::from(long.as_str()), Value::Nil, Value::Nil);
        assert_eq!(field_of(PluginConfig::decode(&bytes)), "daemon_socket");
        for bad in [
            "",
            "host",
            "host:",
            ":7070",
            "host:0",
            "host:70000",
            "host:http",
        ] {
            let bytes = config(Value::Nil, Value::from(bad), Value::Nil);
            assert_eq!(
                field_of(PluginConfig::decode(&bytes)),
                "daemon_address",
                "{bad:?}"
            );
        }
        let wrong_type = config(Value::from(5), Value::Nil, Value::Nil);
        assert_eq!(field_of(PluginConfig::decode(&wrong_type)), "daemon_socket");
    }

    #[test]
    fn session_mistakes_name_the_field() {
        let cases = [
            ("context_pool_size", Value::from(-1), "must not be negative"),
            ("context_pool_size", Value::from("2.5"), "whole number"),
            (
                "enabled_languages",
                strings(&["python", "ruby"]),
                "unknown language \"ruby\"",
            ),
            (
                "enabled_intrinsics",
                strings(&["console", "gpu"]),
                "unknown intrinsic \"gpu\"",
            ),
            ("memory_limit_mb", Value::from(0), "greater than 0"),
            ("memory_limit_mb", Value::from(-64), "greater than 0"),
            ("enable_ai", Value::from("yes"), "expected a bool"),
        ];
        for (key, value, expected) in cases {
            let bytes = config(Value::Nil, Value::Nil, session(&[(key, value)]));
            let err = PluginConfig::decode(&bytes).unwrap_err();
            assert_eq!(err.field(), Some(format!("session_config.{key}").as_str()));
            let text = err.to_string();
            assert!(
                text.contains(expected),
                "{text:?} should mention {expected:?}"
            );
            assert!(text.contains(&format!("session_config.{key}")), "{text}");
        }
    }

    /// The original Elide driver's README block, as Nomad sends it.
    #[test]
    fn the_original_session_config_is_accepted_as_written() {
        let bytes = config(
            Value::from("/tmp/elide-daemon.sock"),
            Value::Nil,
            Value::Array(vec![session(&[
                ("context_pool_size", Value::from(10)),
                (
                    "enabled_languages",
                    strings(&["python", "javascript", "typescript"]),
                ),
                ("enabled_intrinsics", strings(&["io", "env"])),
                ("memory_limit_mb", Value::from(512)),
                ("enable_ai", Value::Boolean(false)),
            ])]),
        );
        let decoded = PluginConfig::decode(&bytes).unwrap().session;
        assert_eq!(
            decoded,
            SessionConfig {
                context_pool_size: Some(10),
                enabled_languages: Some(Language::ALL.to_vec()),
                enabled_intrinsics: Some(vec!["io".into(), "env".into()]),
                memory_limit_mb: Some(512),
                enable_ai: Some(false),
                idle_timeout: None,
            }
        );
        assert_eq!(decoded.asks_for_ai(), None);
        for names in [&["fs", "http", "console", "fs.read"][..], &["ai"]] {
            let bytes = config(
                Value::Nil,
                Value::Nil,
                session(&[("enabled_intrinsics", strings(names))]),
            );
            let decoded = PluginConfig::decode(&bytes).unwrap().session;
            assert_eq!(decoded.enabled_intrinsics.unwrap(), names);
        }
        let ai = SessionConfig {
            enabled_intrinsics: Some(vec!["io".into(), "ai".into()]),
            ..SessionConfig::default()
        };
        assert_eq!(
            ai.asks_for_ai().unwrap(),
            "session_config.enabled_intrinsics \"ai\""
        );
        let enable_ai = SessionConfig {
            enable_ai: Some(true),
            ..SessionConfig::default()
        };
        assert_eq!(
            enable_ai.asks_for_ai().unwrap(),
            "session_config.enable_ai = true"
        );
    }

    #[test]
    fn original_names_that_cannot_be_honoured_name_the_field_and_value() {
        for (names, expected) in [
            (&["io", "sqlite"][..], "intrinsic \"sqlite\" cannot be granted: this runtime has no SQLite intrinsic"),
            (&["IO"], "unknown intrinsic \"IO\" (known: console, env, fs.read, fs.write, net, subprocess, ai; original names: io, env, fs, http, sqlite, ai)"),
        ] {
            let bytes = config(Value::Nil, Value::Nil, session(&[("enabled_intrinsics", strings(names))]));
            let err = PluginConfig::decode(&bytes).unwrap_err();
            assert_eq!(err.field(), Some("session_config.enabled_intrinsics"));
            assert!(err.to_string().contains(expected), "{err}");
        }
    }

    #[test]
    fn schema_is_an_object_with_session_config_as_a_block() {
        let Some(SpecKind::Object(root)) = schema().block else {
            panic!("root must be an Object");
        };
        let mut keys: Vec<_> = root.attributes.keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "allow_root",
                "daemon",
                "daemon_address",
                "daemon_socket",
                "default_user",
                "denied_users",
                "driver_state_dir",
                "poll_interval",
                "session_config",
                "status_mode"
            ]
        );
        let Some(SpecKind::BlockValue(session)) = &root.attributes["session_config"].block else {
            panic!("session_config must be a Block");
        };
        let Some(SpecKind::Object(nested)) = &session.nested.as_ref().unwrap().block else {
            panic!("session_config body must be an Object");
        };
        assert_eq!(nested.attributes.len(), 6);
        for spec in nested.attributes.values().chain(root.attributes.values()) {
            if let Some(SpecKind::Attr(attr)) = &spec.block {
                assert!(!attr.r#type.is_empty(), "every Attr needs a type");
            }
        }
    }
}

#[cfg(test)]
mod daemon_block_tests {
    use super::*;
    use elide_cty::value::{bytes, object, strings};
    use rmpv::Value;

    fn with_block(address: Value, block: Value) -> Vec<u8> {
        bytes(&object(&[
            ("daemon_socket", Value::Nil),
            ("daemon_address", address),
            ("daemon", block),
        ]))
    }

    fn block(command: Value, args: Value, state_dir: Value) -> Value {
        // As the HCL2 jobspec path sends a block: a one-element list.
        Value::Array(vec![object(&[
            ("command", command),
            ("args", args),
            ("state_dir", state_dir),
        ])])
    }

    #[test]
    fn absent_block_means_connect_only() {
        let decoded = PluginConfig::decode(&with_block(Value::Nil, Value::Nil)).unwrap();
        assert_eq!(decoded.supervised_daemon, None);
    }

    #[test]
    fn block_decodes_with_the_default_state_dir() {
        let bytes = with_block(
            Value::Nil,
            block(
                Value::from("elide-daemon"),
                strings(&["--max-running", "8"]),
                Value::Nil,
            ),
        );
        assert_eq!(
            PluginConfig::decode(&bytes).unwrap().supervised_daemon,
            Some(DaemonCommand {
                command: "elide-daemon".into(),
                args: vec!["--max-running".into(), "8".into()],
                state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            })
        );
    }

    #[test]
    fn block_mistakes_name_the_field() {
        let cases = [
            (block(Value::Nil, Value::Nil, Value::Nil), "daemon.command"),
            (
                block(Value::from(" "), Value::Nil, Value::Nil),
                "daemon.command",
            ),
            (
                block(Value::from("bin/elide-daemon"), Value::Nil, Value::Nil),
                "daemon.command",
            ),
            (
                block(
                    Value::from("elide-daemon"),
                    Value::Nil,
                    Value::from("var/x"),
                ),
                "daemon.state_dir",
            ),
            (
                block(Value::from("elide-daemon"), Value::Nil, Value::from("")),
                "daemon.state_dir",
            ),
            (
                block(
                    Value::from("elide-daemon"),
                    strings(&["--socket=/x.sock"]),
                    Value::Nil,
                ),
                "daemon.args",
            ),
        ];
        for (block, field) in cases {
            let err = PluginConfig::decode(&with_block(Value::Nil, block.clone())).unwrap_err();
            assert_eq!(err.field(), Some(field), "{block:?}: {err}");
            assert!(err.to_string().contains(field), "{err}");
        }
        let tcp = with_block(
            Value::from("10.0.0.5:7070"),
            block(Value::from("elide-daemon"), Value::Nil, Value::Nil),
        );
        assert_eq!(
            PluginConfig::decode(&tcp).unwrap_err().field(),
            Some("daemon")
        );
    }
}

#[cfg(test)]
mod wire_tests {
    use super::*;

    /// Bytes written by hand the way go-cty encodes a decoded agent block:
    /// keys sorted, absent attributes nil, 256 as uint16, 0.5-free numbers as
    /// compact ints, `session_config` as a map.
    #[test]
    fn decodes_hand_written_cty_bytes() {
        #[rustfmt::skip]
        let bytes: Vec<u8> = [
            &[0x83][..],
            &[0xae], b"daemon_address", &[0xc0],
            &[0xad], b"daemon_socket", &[0xa7], b"/d.sock",
            &[0xae], b"session_config", &[0x86],
                &[0xb1], b"context_pool_size", &[0x02],
                &[0xa9], b"enable_ai", &[0xc2],
                &[0xb2], b"enabled_intrinsics", &[0xc0],
                &[0xb1], b"enabled_languages", &[0x91, 0xa6], b"python",
                &[0xac], b"idle_timeout", &[0xa3], b"90s",
                &[0xaf], b"memory_limit_mb", &[0xcd, 0x01, 0x00],
        ]
        .concat();
        let config = PluginConfig::decode(&bytes).unwrap();
        assert_eq!(
            config.daemon,
            DaemonEndpoint::Unix(PathBuf::from("/d.sock"))
        );
        assert_eq!(
            config.session,
            SessionConfig {
                context_pool_size: Some(2),
                enabled_languages: Some(vec![Language::Python]),
                enabled_intrinsics: None,
                memory_limit_mb: Some(256),
                enable_ai: Some(false),
                idle_timeout: Some(Duration::from_secs(90)),
            }
        );
    }
}
