//! Session configuration and the rules for what an execution may ask for.
//!
//! Pure functions over API messages: no I/O, no locks, so every rule can be
//! tested directly.

use std::time::Duration;

use elide_proto::elide::daemon::v1 as pb;

use crate::error::DaemonError;
use crate::intrinsics::{check_ai_grant, granted};
use crate::language::Language;
use crate::limits::Limits;
use crate::time::std_duration;

/// A validated session configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionPolicy {
    /// Languages executions may use (never empty: empty config means all).
    pub languages: Vec<Language>,
    /// Intrinsics executions may request, as the config names them.
    pub intrinsics: Vec<String>,
    /// The canonical intrinsics those names grant.
    pub grants: Vec<&'static str>,
    /// Memory bound per execution in MiB, if any.
    pub memory_limit_mb: Option<u64>,
    /// Whether executions may enable local AI.
    pub enable_ai: bool,
    /// Upper bound (and default) of an execution's run time.
    pub max_timeout: Option<Duration>,
    /// Idle time before the session is deleted; `None`: never.
    pub idle_timeout: Option<Duration>,
}

impl SessionPolicy {
    /// Validates a session config from the API.
    pub fn from_config(config: &pb::SessionConfig, limits: &Limits) -> Result<Self, DaemonError> {
        let languages = if config.enabled_languages.is_empty() {
            Language::ALL.to_vec()
        } else {
            let mut langs = Vec::new();
            for name in &config.enabled_languages {
                let lang = crate::language::parse(name).map_err(|e| {
                    DaemonError::InvalidArgument(format!("config.enabled_languages: {e}"))
                })?;
                if !langs.contains(&lang) {
                    langs.push(lang);
                }
            }
            langs
        };
        let grants = granted(&config.enabled_intrinsics, "config.enabled_intrinsics")?;
        let invalid = |e: String| DaemonError::InvalidArgument(e);
        let max_timeout = config
            .max_timeout
            .as_ref()
            .map(|d| std_duration(d, "config.max_timeout"))
            .transpose()
            .map_err(invalid)?
            .filter(|d| !d.is_zero());
        let idle_timeout = match &config.idle_timeout {
            None => Some(limits.default_session_idle_timeout),
            Some(d) => Some(std_duration(d, "config.idle_timeout").map_err(invalid)?)
                .filter(|d| !d.is_zero()),
        };
        Ok(SessionPolicy {
            languages,
            intrinsics: config.enabled_intrinsics.clone(),
            grants,
            memory_limit_mb: (config.memory_limit_mb > 0).then_some(config.memory_limit_mb),
            enable_ai: config.enable_ai,
            max_timeout,
            idle_timeout,
        })
    }
}

/// What a new session may not ask of a daemon without local AI:
/// `enable_ai` or an intrinsic granting `ai`. Checked when a session is
/// created, not when a stored one is restored.
pub fn check_ai_available(
    config: &pb::SessionConfig,
    ai_available: bool,
) -> Result<(), DaemonError> {
    if config.enable_ai && !ai_available {
        return Err(DaemonError::FailedPrecondition(format!(
            "config.enable_ai: {}",
            crate::intrinsics::NO_LOCAL_AI
        )));
    }
    check_ai_grant(
        &config.enabled_intrinsics,
        "config.enabled_intrinsics",
        ai_available,
    )
}

/// Limits in force for one execution after its overrides were applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutionPolicy {
    /// The language.
    pub language: Language,
    /// Memory limit in MiB, if any.
    pub memory_limit_mb: Option<u64>,
    /// Run-time limit, if any.
    pub timeout: Option<Duration>,
    /// Intrinsics granted, as canonical names (what a sandbox enforces).
    pub intrinsics: Vec<String>,
    /// Whether local AI is enabled.
    pub enable_ai: bool,
}

/// Applies an execution request to its session's policy: checks the
/// language, the size limits and that every override only narrows.
pub fn execution_policy(
    session_id: &str,
    session: &SessionPolicy,
    req: &pb::ExecuteSnippetRequest,
    limits: &Limits,
    ai_available: bool,
) -> Result<ExecutionPolicy, DaemonError> {
    let invalid = DaemonError::InvalidArgument;
    let language = crate::language::parse(&req.language)
        .map_err(|e| DaemonError::InvalidArgument(format!("language: {e}")))?;
    if !session.languages.contains(&language) {
        let enabled: Vec<&str> = session.languages.iter().map(|l| l.name()).collect();
        return Err(invalid(format!(
            "language {language} is not enabled in session {session_id} (enabled: {})",
            enabled.join(", ")
        )));
    }
    check_sizes(req, limits)?;

    let ov = req.overrides.clone().unwrap_or_default();
    let memory_limit_mb = match (ov.memory_limit_mb, session.memory_limit_mb) {
        (0, session_limit) => session_limit,
        (asked, Some(max)) if asked > max => {
            return Err(invalid(format!(
                "overrides.memory_limit_mb {asked} is above the session's memory_limit_mb {max}; an override may only narrow it"
            )))
        }
        (asked, _) => Some(asked),
    };
    let timeout = match &ov.timeout {
        None => session.max_timeout,
        Some(d) => {
            let asked = std_duration(d, "overrides.timeout").map_err(invalid)?;
            match session.max_timeout {
                _ if asked.is_zero() => session.max_timeout,
                Some(max) if asked > max => {
                    return Err(invalid(format!(
                        "overrides.timeout {asked:?} is above the session's max_timeout {max:?}; an override may only narrow it"
                    )))
                }
                _ => Some(asked),
            }
        }
    };
    let field = "overrides.enabled_intrinsics";
    let grants = granted(&ov.enabled_intrinsics, field)?;
    let intrinsics = if ov.enabled_intrinsics.is_empty() {
        session.grants.clone()
    } else {
        // Compare grants, not names: a session with `fs` allows `fs.read`,
        // one with `io` allows `console`.
        for name in &ov.enabled_intrinsics {
            let asked = granted(std::slice::from_ref(name), field)?;
            if let Some(missing) = asked.iter().find(|g| !session.grants.contains(g)) {
                return Err(invalid(format!(
                    "{field}: {name:?} grants {missing}, which session {session_id} does not (enabled: {}); an override may only narrow them",
                    enabled_text(session)
                )));
            }
        }
        grants
    };
    let intrinsics = intrinsics.into_iter().map(str::to_owned).collect();
    let enable_ai = match ov.enable_ai {
        Some(true) if !session.enable_ai => {
            return Err(invalid(format!(
                "overrides.enable_ai is true but session {session_id} does not enable AI; an override may only narrow it"
            )))
        }
        Some(true) if !ai_available => {
            return Err(DaemonError::FailedPrecondition(
                "overrides.enable_ai: local AI needs the Elide runtime, which this daemon does not have".into(),
            ))
        }
        Some(asked) => asked,
        None => session.enable_ai && ai_available,
    };
    Ok(ExecutionPolicy {
        language,
        memory_limit_mb,
        timeout,
        intrinsics,
        enable_ai,
    })
}

/// A session's intrinsics for messages: the names as configured, and what
/// they grant when that differs.
fn enabled_text(session: &SessionPolicy) -> String {
    if session.intrinsics.is_empty() {
        return "none".to_owned();
    }
    let names = session.intrinsics.join(", ");
    let grants = session.grants.join(", ");
    if names == grants {
        names
    } else {
        format!("{names}, granting {grants}")
    }
}

/// Size and shape checks of code, args and env.
fn check_sizes(req: &pb::ExecuteSnippetRequest, limits: &Limits) -> Result<(), DaemonError> {
    let invalid = DaemonError::InvalidArgument;
    if req.code.trim().is_empty() {
        return Err(invalid("code is empty".into()));
    }
    if req.code.len() as u64 > limits.max_code_bytes {
        return Err(invalid(format!(
            "code is {} bytes; the limit is {} bytes",
            req.code.len(),
            limits.max_code_bytes
        )));
    }
    if req.args.len() > limits.max_args as usize {
        return Err(invalid(format!(
            "{} args given; the limit is {}",
            req.args.len(),
            limits.max_args
        )));
    }
    for (i, arg) in req.args.iter().enumerate() {
        if arg.len() as u64 > limits.max_arg_bytes {
            return Err(invalid(format!(
                "args[{i}] is {} bytes; the limit is {}",
                arg.len(),
                limits.max_arg_bytes
            )));
        }
        if arg.contains('\0') {
            return Err(invalid(format!("args[{i}] contains a NUL byte")));
        }
    }
    if req.env.len() > limits.max_env_vars as usize {
        return Err(invalid(format!(
            "{} env vars given; the limit is {}",
            req.env.len(),
            limits.max_env_vars
        )));
    }
    let mut env_bytes = 0u64;
    for (k, v) in &req.env {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            return Err(invalid(format!(
                "env key {k:?} is not a valid variable name"
            )));
        }
        if v.contains('\0') {
            return Err(invalid(format!("env {k} contains a NUL byte")));
        }
        env_bytes += (k.len() + v.len()) as u64;
    }
    if env_bytes > limits.max_env_bytes {
        return Err(invalid(format!(
            "env is {env_bytes} bytes; the limit is {}",
            limits.max_env_bytes
        )));
    }
    if !req.working_dir.is_empty() && !req.working_dir.starts_with('/') {
        return Err(invalid(format!(
            "working_dir {:?} must be an absolute path",
            req.working_dir
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(config: pb::SessionConfig) -> SessionPolicy {
        SessionPolicy::from_config(&config, &Limits::default()).unwrap()
    }

    fn request(lang: &str, overrides: pb::ExecutionOverrides) -> pb::ExecuteSnippetRequest {
        pb::ExecuteSnippetRequest {
            session_id: "s".into(),
            execution_id: "e".into(),
            language: lang.into(),
            code: "print(1)".into(),
            overrides: Some(overrides),
            ..Default::default()
        }
    }

    fn secs(s: i64) -> Option<prost_types::Duration> {
        Some(prost_types::Duration {
            seconds: s,
            nanos: 0,
        })
    }

    #[test]
    fn empty_language_list_enables_every_language() {
        let p = policy(pb::SessionConfig::default());
        assert_eq!(p.languages, Language::ALL.to_vec());
        assert_eq!(
            p.idle_timeout,
            Some(Limits::default().default_session_idle_timeout)
        );
    }

    #[test]
    fn session_config_rejects_unknown_names_naming_the_field() {
        let limits = Limits::default();
        let bad_lang = pb::SessionConfig {
            enabled_languages: vec!["cobol".into()],
            ..Default::default()
        };
        let err = SessionPolicy::from_config(&bad_lang, &limits)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("enabled_languages") && err.contains("cobol"),
            "{err}"
        );
        let bad_intr = pb::SessionConfig {
            enabled_intrinsics: vec!["teleport".into()],
            ..Default::default()
        };
        let err = SessionPolicy::from_config(&bad_intr, &limits)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("enabled_intrinsics") && err.contains("teleport"),
            "{err}"
        );
    }

    #[test]
    fn overrides_narrow_and_inherit() {
        let session = policy(pb::SessionConfig {
            memory_limit_mb: 512,
            max_timeout: secs(60),
            enabled_intrinsics: vec!["console".into(), "env".into()],
            ..Default::default()
        });
        let limits = Limits::default();
        let inherit = execution_policy(
            "s",
            &session,
            &request("python", Default::default()),
            &limits,
            false,
        )
        .unwrap();
        assert_eq!(inherit.memory_limit_mb, Some(512));
        assert_eq!(inherit.timeout, Some(Duration::from_secs(60)));
        assert_eq!(
            inherit.intrinsics,
            vec!["console".to_string(), "env".to_string()]
        );
        let narrow = pb::ExecutionOverrides {
            memory_limit_mb: 128,
            timeout: secs(5),
            enabled_intrinsics: vec!["console".into()],
            enable_ai: Some(false),
        };
        let p = execution_policy("s", &session, &request("js", narrow), &limits, false).unwrap();
        assert_eq!(p.language, Language::JavaScript);
        assert_eq!(p.memory_limit_mb, Some(128));
        assert_eq!(p.timeout, Some(Duration::from_secs(5)));
        assert_eq!(p.intrinsics, vec!["console".to_string()]);
    }

    #[rstest::rstest]
    #[case(pb::ExecutionOverrides { memory_limit_mb: 1024, ..Default::default() }, "memory_limit_mb")]
    #[case(pb::ExecutionOverrides { timeout: secs(61), ..Default::default() }, "timeout")]
    #[case(pb::ExecutionOverrides { enabled_intrinsics: vec!["net".into()], ..Default::default() }, "enabled_intrinsics")]
    #[case(pb::ExecutionOverrides { enable_ai: Some(true), ..Default::default() }, "enable_ai")]
    fn wider_overrides_are_invalid_and_name_the_limit(
        #[case] ov: pb::ExecutionOverrides,
        #[case] field: &str,
    ) {
        let session = policy(pb::SessionConfig {
            memory_limit_mb: 512,
            max_timeout: secs(60),
            enabled_intrinsics: vec!["console".into()],
            ..Default::default()
        });
        let err = execution_policy(
            "s",
            &session,
            &request("python", ov),
            &Limits::default(),
            true,
        )
        .unwrap_err();
        assert!(matches!(err, DaemonError::InvalidArgument(_)), "{err:?}");
        assert!(err.to_string().contains(field), "{err}");
    }

    #[test]
    fn original_names_narrow_by_what_they_grant() {
        let limits = Limits::default();
        let session = policy(pb::SessionConfig {
            enabled_intrinsics: vec!["io".into(), "env".into(), "fs".into()],
            ..Default::default()
        });
        assert_eq!(session.intrinsics, ["io", "env", "fs"]);
        assert_eq!(session.grants, ["console", "env", "fs.read", "fs.write"]);
        let asking = |names: &[&str]| {
            let ov = pb::ExecutionOverrides {
                enabled_intrinsics: names.iter().map(|n| (*n).to_owned()).collect(),
                ..Default::default()
            };
            execution_policy("s", &session, &request("python", ov), &limits, false)
        };
        // Inherited and narrowed grants reach the runtime as canonical names.
        assert_eq!(
            asking(&[]).unwrap().intrinsics,
            ["console", "env", "fs.read", "fs.write"]
        );
        assert_eq!(
            asking(&["console", "fs.read"]).unwrap().intrinsics,
            ["console", "fs.read"]
        );
        assert_eq!(asking(&["io"]).unwrap().intrinsics, ["console"]);
        let err = asking(&["http"]).unwrap_err();
        assert!(matches!(err, DaemonError::InvalidArgument(_)), "{err:?}");
        assert_eq!(
            err.to_string(),
            "overrides.enabled_intrinsics: \"http\" grants net, which session s does not (enabled: io, env, fs, granting console, env, fs.read, fs.write); an override may only narrow them"
        );
        let narrow = policy(pb::SessionConfig {
            enabled_intrinsics: vec!["fs.read".into()],
            ..Default::default()
        });
        let ov = pb::ExecutionOverrides {
            enabled_intrinsics: vec!["fs".into()],
            ..Default::default()
        };
        let err = execution_policy("s", &narrow, &request("python", ov), &limits, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"fs\" grants fs.write"), "{err}");
    }

    #[test]
    fn sqlite_and_ai_are_refused_naming_the_field() {
        let limits = Limits::default();
        let sqlite = pb::SessionConfig {
            enabled_intrinsics: vec!["io".into(), "sqlite".into()],
            ..Default::default()
        };
        let err = SessionPolicy::from_config(&sqlite, &limits).unwrap_err();
        assert!(matches!(err, DaemonError::FailedPrecondition(_)), "{err:?}");
        assert!(
            err.to_string()
                .starts_with("config.enabled_intrinsics: intrinsic \"sqlite\" cannot be granted"),
            "{err}"
        );
        let ai = pb::SessionConfig {
            enabled_intrinsics: vec!["ai".into()],
            ..Default::default()
        };
        let err = check_ai_available(&ai, false).unwrap_err().to_string();
        assert!(
            err.starts_with("config.enabled_intrinsics: intrinsic \"ai\""),
            "{err}"
        );
        assert!(err.contains("Elide runtime"), "{err}");
        let enable_ai = pb::SessionConfig {
            enable_ai: true,
            ..Default::default()
        };
        let err = check_ai_available(&enable_ai, false).unwrap_err();
        assert!(matches!(err, DaemonError::FailedPrecondition(_)), "{err:?}");
        assert!(
            err.to_string()
                .starts_with("config.enable_ai: local AI needs the Elide runtime"),
            "{err}"
        );
        check_ai_available(&enable_ai, true).unwrap();
        check_ai_available(&ai, true).unwrap();
    }

    #[test]
    fn language_not_enabled_in_session_is_refused() {
        let session = policy(pb::SessionConfig {
            enabled_languages: vec!["python".into()],
            ..Default::default()
        });
        let err = execution_policy(
            "s",
            &session,
            &request("javascript", Default::default()),
            &Limits::default(),
            false,
        )
        .unwrap_err();
        assert!(matches!(err, DaemonError::InvalidArgument(_)));
        assert!(err.to_string().contains("not enabled"), "{err}");
    }

    #[test]
    fn size_limits_are_enforced() {
        let session = policy(pb::SessionConfig::default());
        let limits = Limits {
            max_code_bytes: 10,
            ..Limits::default()
        };
        let mut req = request("python", Default::default());
        req.code = "print('this is too long')".into();
        let err = execution_policy("s", &session, &req, &limits, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("limit is 10 bytes"), "{err}");
        req.code = "   ".into();
        let err = execution_policy("s", &session, &req, &limits, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("code is empty"), "{err}");
    }
}
