//! Turning Nomad's `TaskConfig` plus the task's `config {}` block into the
//! daemon's `ExecuteSnippetRequest`, with every check that needs the plugin
//! configuration (enabled languages and intrinsics, memory bounds).

use std::path::{Path, PathBuf};

use elide_proto::elide::daemon::v1 as pb;
use elide_proto::hashicorp::nomad::plugins::drivers::proto::TaskConfig;
use elide_proto::intrinsics;

use crate::plugin_config::PluginConfig;
use crate::script;
use crate::task_config::{ElideTaskConfig, TaskSource};
use elide_cty::ConfigError;

const MIB: i64 = 1024 * 1024;

/// The task directory: `<alloc_dir>/<task name>` (protocol notes §4.2).
pub fn task_dir(task: &TaskConfig) -> PathBuf {
    Path::new(&task.alloc_dir).join(&task.name)
}

/// The memory Nomad granted the task, in MiB: `memory_max` when set
/// (the hard limit with oversubscription), else `memory`; falls back to
/// `linux_resources.memory_limit_bytes` (= max of both × 1 MiB). `None`
/// when Nomad sent no memory resource at all.
pub fn nomad_memory_mb(task: &TaskConfig) -> Option<u64> {
    let resources = task.resources.as_ref()?;
    let allocated = resources
        .allocated_resources
        .as_ref()
        .and_then(|a| a.memory.as_ref())
        .map(|m| m.memory_mb.max(m.memory_max_mb))
        .filter(|mb| *mb > 0);
    let linux = resources
        .linux_resources
        .as_ref()
        .map(|l| l.memory_limit_bytes / MIB)
        .filter(|mb| *mb > 0);
    allocated.or(linux).and_then(|mb| u64::try_from(mb).ok())
}

/// Builds the request. Errors are the user's configuration mistakes and
/// name the field.
pub fn execute_request(
    task: &TaskConfig,
    config: &ElideTaskConfig,
    plugin: &PluginConfig,
    session_id: &str,
    execution_id: &str,
) -> Result<pb::ExecuteSnippetRequest, ConfigError> {
    if let Some(enabled) = &plugin.session.enabled_languages {
        if !enabled.contains(&config.language) {
            let names: Vec<&str> = enabled.iter().map(|l| l.name()).collect();
            return Err(ConfigError::invalid(
                "language",
                format!(
                    "{} is not enabled on this client (session_config.enabled_languages: {})",
                    config.language,
                    names.join(", ")
                ),
            ));
        }
    }
    if let Some(asked) = &config.opts.intrinsics {
        check_intrinsics(asked, &plugin.session.intrinsics())?;
    }
    if config.opts.enable_ai == Some(true) && plugin.session.enable_ai != Some(true) {
        return Err(ConfigError::invalid(
            "elide_opts.enable_ai",
            "AI is not enabled on this client (session_config.enable_ai)",
        ));
    }
    let memory_limit_mb = memory_limit(task, config, plugin)?;

    let dir = task_dir(task);
    let (code, source_name) = match &config.source {
        TaskSource::Code(code) => (code.clone(), "snippet".to_owned()),
        TaskSource::Script(path) => {
            let loaded = script::load(&dir, path, script::MAX_SCRIPT_BYTES)
                .map_err(|e| ConfigError::invalid("script", e.to_string()))?;
            (loaded.source, path.clone())
        }
    };

    let mut env = task.env.clone();
    env.extend(config.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    let labels = [
        ("alloc_id", task.alloc_id.as_str()),
        ("task_name", task.name.as_str()),
        ("job", task.job_name.as_str()),
        ("task_group", task.task_group_name.as_str()),
        ("namespace", task.namespace.as_str()),
    ]
    .into_iter()
    .filter(|(_, v)| !v.is_empty())
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    Ok(pb::ExecuteSnippetRequest {
        session_id: session_id.to_owned(),
        execution_id: execution_id.to_owned(),
        language: config.language.name().to_owned(),
        code,
        args: config.args.clone(),
        env,
        working_dir: dir.display().to_string(),
        // Set by StartTask once the user is resolved (`task_user`).
        run_as_user: String::new(),
        overrides: Some(pb::ExecutionOverrides {
            memory_limit_mb: memory_limit_mb.unwrap_or(0),
            timeout: config.opts.timeout.map(elide_proto::duration_to_proto),
            enabled_intrinsics: config.opts.intrinsics.clone().unwrap_or_default(),
            enable_ai: config.opts.enable_ai,
        }),
        source_name,
        labels,
        // Like a program writing to a slow pipe, a task whose logs are not
        // read fast enough is slowed down rather than losing output.
        output_backpressure: true,
        nomad_cgroup: nomad_cgroup(task),
    })
}

/// The cgroup Nomad prepared for the task (`linux_resources.cpuset_cgroup`)
/// with what Nomad's `raw_exec` executor writes into it: CPU shares,
/// reserved cores and, when `memory_max` is the hard limit, `memory` as the
/// soft one. `None` when Nomad manages no cgroups for the task.
pub fn nomad_cgroup(task: &TaskConfig) -> Option<pb::NomadCgroup> {
    let resources = task.resources.as_ref()?;
    let linux = resources.linux_resources.as_ref()?;
    if linux.cpuset_cgroup.is_empty() {
        return None;
    }
    let memory = resources
        .allocated_resources
        .as_ref()
        .and_then(|a| a.memory.as_ref());
    let soft = memory
        .filter(|m| m.memory_max_mb > m.memory_mb && m.memory_mb > 0)
        .map_or(0, |m| m.memory_mb as u64);
    Some(pb::NomadCgroup {
        path: linux.cpuset_cgroup.clone(),
        cpu_shares: u64::try_from(linux.cpu_shares).unwrap_or(0),
        cpuset_cpus: linux.cpuset_cpus.clone(),
        memory_soft_mb: soft,
    })
}

/// `elide_opts.intrinsics` may only ask for what the session grants,
/// compared by grants so either spelling works on either side (`fs.read`
/// under a session with `fs`, `io` under one with `console`). Both lists
/// were validated when decoded.
fn check_intrinsics(asked: &[String], session: &[String]) -> Result<(), ConfigError> {
    let field = "elide_opts.intrinsics";
    let grants = |names: &[String]| {
        intrinsics::grants_of(names.iter().map(String::as_str))
            .map_err(|e| ConfigError::invalid(field, e.to_string()))
    };
    let session_grants = grants(session)?;
    for name in asked {
        let wanted = grants(std::slice::from_ref(name))?;
        if let Some(missing) = wanted.iter().find(|g| !session_grants.contains(g)) {
            return Err(ConfigError::invalid(
                field,
                format!(
                    "{name:?} grants {missing}, which is not enabled on this client (session_config.enabled_intrinsics: {})",
                    if session.is_empty() { "none".to_owned() } else { session.join(", ") }
                ),
            ));
        }
    }
    Ok(())
}

/// The execution's memory limit: what Nomad granted, narrowed by
/// `elide_opts.memory_limit` (which may not be wider) and by the session's
/// bound (the operator's ceiling for every snippet on this client).
fn memory_limit(
    task: &TaskConfig,
    config: &ElideTaskConfig,
    plugin: &PluginConfig,
) -> Result<Option<u64>, ConfigError> {
    let nomad = nomad_memory_mb(task);
    let session = plugin.session.memory_limit_mb;
    let asked = config.opts.memory_limit_mb;
    if let (Some(asked), Some(nomad)) = (asked, nomad) {
        if asked > nomad {
            return Err(ConfigError::invalid(
                "elide_opts.memory_limit",
                format!("{asked} MiB is more than the task's memory resource ({nomad} MiB); it may only narrow it"),
            ));
        }
    }
    if let (Some(asked), Some(session)) = (asked, session) {
        if asked > session {
            return Err(ConfigError::invalid(
                "elide_opts.memory_limit",
                format!("{asked} MiB is more than this client allows per snippet (session_config.memory_limit_mb = {session})"),
            ));
        }
    }
    Ok([asked, nomad, session].into_iter().flatten().min())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin_config::SessionConfig;
    use crate::task_config::ElideOpts;
    use elide_proto::hashicorp::nomad::plugins::drivers::proto::{
        AllocatedMemoryResources, AllocatedTaskResources, Resources,
    };
    use elide_proto::Language;

    fn task(memory: i64, memory_max: i64) -> TaskConfig {
        TaskConfig {
            id: "a/t/r".into(),
            name: "t".into(),
            alloc_dir: "/nonexistent".into(),
            alloc_id: "a".into(),
            env: [
                ("A".to_owned(), "1".to_owned()),
                ("B".to_owned(), "1".to_owned()),
            ]
            .into(),
            resources: Some(Resources {
                allocated_resources: Some(AllocatedTaskResources {
                    memory: Some(AllocatedMemoryResources {
                        memory_mb: memory,
                        memory_max_mb: memory_max,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn code(opts: ElideOpts) -> ElideTaskConfig {
        ElideTaskConfig {
            source: TaskSource::Code("print(1)".into()),
            language: Language::Python,
            args: vec!["x".into()],
            env: [("B".to_owned(), "2".to_owned())].into(),
            opts,
        }
    }

    #[test]
    fn env_is_merged_and_memory_comes_from_nomad() {
        let req = execute_request(
            &task(128, 0),
            &code(ElideOpts::default()),
            &PluginConfig::default(),
            "s",
            "e",
        )
        .unwrap();
        assert_eq!(req.env["A"], "1");
        assert_eq!(req.env["B"], "2");
        assert_eq!(req.overrides.unwrap().memory_limit_mb, 128);
        assert_eq!(req.working_dir, "/nonexistent/t");
        assert_eq!(req.labels["alloc_id"], "a");
        let req = execute_request(
            &task(128, 512),
            &code(ElideOpts::default()),
            &PluginConfig::default(),
            "s",
            "e",
        )
        .unwrap();
        assert_eq!(req.overrides.unwrap().memory_limit_mb, 512);
    }

    #[test]
    fn memory_limit_may_only_narrow() {
        let narrow = ElideOpts {
            memory_limit_mb: Some(64),
            ..Default::default()
        };
        let req = execute_request(
            &task(128, 0),
            &code(narrow),
            &PluginConfig::default(),
            "s",
            "e",
        )
        .unwrap();
        assert_eq!(req.overrides.unwrap().memory_limit_mb, 64);
        let wide = ElideOpts {
            memory_limit_mb: Some(256),
            ..Default::default()
        };
        let err = execute_request(
            &task(128, 0),
            &code(wide),
            &PluginConfig::default(),
            "s",
            "e",
        )
        .unwrap_err();
        assert_eq!(err.field(), Some("elide_opts.memory_limit"));
    }

    #[test]
    fn languages_and_intrinsics_must_be_enabled() {
        let plugin = PluginConfig {
            session: SessionConfig {
                enabled_languages: Some(vec![Language::JavaScript]),
                enabled_intrinsics: Some(vec!["console".into()]),
                ..Default::default()
            },
            ..Default::default()
        };
        let err = execute_request(&task(0, 0), &code(ElideOpts::default()), &plugin, "s", "e")
            .unwrap_err();
        assert_eq!(err.field(), Some("language"));
        let mut js = code(ElideOpts {
            intrinsics: Some(vec!["net".into()]),
            ..Default::default()
        });
        js.language = Language::JavaScript;
        let err = execute_request(&task(0, 0), &js, &plugin, "s", "e").unwrap_err();
        assert_eq!(err.field(), Some("elide_opts.intrinsics"));
    }

    #[test]
    fn task_intrinsics_narrow_by_what_names_grant() {
        let session = |names: &[&str]| names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
        let asked = session;
        check_intrinsics(&asked(&["io", "env"]), &session(&["io", "env"])).unwrap();
        check_intrinsics(&asked(&["console"]), &session(&["io"])).unwrap();
        check_intrinsics(&asked(&["io"]), &session(&["console"])).unwrap();
        check_intrinsics(&asked(&["fs.read"]), &session(&["fs"])).unwrap();
        let err = check_intrinsics(&asked(&["fs"]), &session(&["fs.read", "io"])).unwrap_err();
        assert_eq!(err.field(), Some("elide_opts.intrinsics"));
        assert!(
            err.to_string().contains(
                "\"fs\" grants fs.write, which is not enabled on this client (session_config.enabled_intrinsics: fs.read, io)"
            ),
            "{err}"
        );
        let err = check_intrinsics(&asked(&["http"]), &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"http\" grants net") && err.contains("none"),
            "{err}"
        );
    }
}
