//! Every field of the plugin's and the task's `config {}` blocks, written as
//! HCL, encoded with the driver's own schema by the one cty encoder (the one
//! `elide-run`, the simulation and the end-to-end tests use), and decoded by
//! the driver: what an operator writes is what the driver gets. A schema
//! field missing from these bodies fails the test, so a new field cannot be
//! left out.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use elide_driver::{
    DaemonCommand, DaemonEndpoint, ElideTaskConfig, PluginConfig, StatusMode, TaskSource,
};
use elide_proto::hashicorp::nomad::plugins::shared::hclspec::{spec::Block as SpecKind, Spec};

/// Every key of an object schema, nested blocks as `block.key`.
fn schema_keys(spec: &Spec, prefix: &str, keys: &mut Vec<String>) {
    let Some(SpecKind::Object(object)) = &spec.block else {
        return;
    };
    for (key, member) in &object.attributes {
        let name = format!("{prefix}{key}");
        match &member.block {
            Some(SpecKind::BlockValue(block)) => {
                if let Some(nested) = &block.nested {
                    schema_keys(nested, &format!("{name}."), keys);
                }
            }
            _ => keys.push(name),
        }
    }
}

/// Every key `body` sets, nested blocks as `block.key`.
fn body_keys(body: &hcl::Body, prefix: &str, keys: &mut Vec<String>) {
    for attr in body.attributes() {
        keys.push(format!("{prefix}{}", attr.key()));
    }
    for block in body.blocks() {
        body_keys(
            block.body(),
            &format!("{prefix}{}.", block.identifier()),
            keys,
        );
    }
}

fn assert_covers(spec: &Spec, body: &hcl::Body, extra: &[&str]) {
    let mut want = Vec::new();
    schema_keys(spec, "", &mut want);
    let mut have: Vec<String> = extra.iter().map(|k| k.to_string()).collect();
    body_keys(body, "", &mut have);
    want.sort();
    have.sort();
    have.dedup();
    assert_eq!(have, want, "the test bodies must set every schema field");
}

fn encode(spec: &Spec, text: &str) -> (hcl::Body, Vec<u8>) {
    let body: hcl::Body = hcl::from_str(text).expect("HCL");
    let bytes = elide_e2e::cty::encode(spec, &body);
    (body, bytes)
}

const PLUGIN: &str = r#"
daemon_socket    = "/run/elide/test.sock"
status_mode      = "poll"
poll_interval    = "250ms"
driver_state_dir = "/var/lib/elide-driver-test"
default_user     = "daemon"
allow_root       = true
denied_users     = ["games"]
daemon {
  command   = "/usr/local/bin/elide-daemon"
  args      = ["--verbose", "--context-pool-size", "4"]
  state_dir = "/var/lib/elide-test"
}
session_config {
  context_pool_size  = 4
  enabled_languages  = ["python", "typescript"]
  enabled_intrinsics = ["io", "env"]
  memory_limit_mb    = 512
  enable_ai          = false
  idle_timeout       = "90m"
}
"#;

#[test]
fn every_plugin_config_field_reaches_the_driver_as_written() {
    let spec = elide_driver::plugin_config_schema();
    let (body, bytes) = encode(&spec, PLUGIN);
    // `daemon_socket` and `daemon_address` exclude each other: the address
    // is checked below.
    assert_covers(&spec, &body, &["daemon_address"]);
    let config = PluginConfig::decode(&bytes).expect("decodes");
    assert_eq!(
        config.daemon,
        DaemonEndpoint::Unix(PathBuf::from("/run/elide/test.sock"))
    );
    assert_eq!(config.status_mode, StatusMode::Poll);
    assert_eq!(
        config.users,
        elide_driver::UserPolicy {
            default_user: "daemon".into(),
            allow_root: true,
            denied_users: vec!["games".into()],
        }
    );
    assert_eq!(config.poll_interval, Duration::from_millis(250));
    assert_eq!(
        config.driver_state_dir,
        PathBuf::from("/var/lib/elide-driver-test")
    );
    assert_eq!(
        config.supervised_daemon,
        Some(DaemonCommand {
            command: "/usr/local/bin/elide-daemon".into(),
            args: vec!["--verbose".into(), "--context-pool-size".into(), "4".into()],
            state_dir: PathBuf::from("/var/lib/elide-test"),
        })
    );
    let session = &config.session;
    assert_eq!(session.context_pool_size, Some(4));
    assert_eq!(
        session
            .enabled_languages
            .as_ref()
            .map(|l| l.iter().map(|l| l.name()).collect::<Vec<_>>()),
        Some(vec!["python", "typescript"])
    );
    assert_eq!(
        session.enabled_intrinsics,
        Some(vec!["io".to_string(), "env".to_string()])
    );
    assert_eq!(session.memory_limit_mb, Some(512));
    assert_eq!(session.enable_ai, Some(false));
    assert_eq!(session.idle_timeout, Some(Duration::from_secs(90 * 60)));

    let (_, bytes) = encode(&spec, r#"daemon_address = "127.0.0.1:7070""#);
    assert_eq!(
        PluginConfig::decode(&bytes).expect("decodes").daemon,
        DaemonEndpoint::Tcp("127.0.0.1:7070".into())
    );
}

const TASK: &str = r#"
code     = "print('hi')"
language = "python"
args     = ["--port", "8080"]
env      = { LOG_LEVEL = "info", GREETING = "hello there" }
elide_opts {
  memory_limit = 256
  enable_ai    = false
  timeout      = "30s"
  intrinsics   = ["console", "fs.read"]
}
"#;

#[test]
fn every_task_config_field_reaches_the_driver_as_written() {
    let spec = elide_driver::task_config_schema();
    let (body, bytes) = encode(&spec, TASK);
    // `script` and `code` exclude each other: the script is checked below.
    assert_covers(&spec, &body, &["script"]);
    let task = ElideTaskConfig::decode(&bytes).expect("decodes");
    assert_eq!(task.source, TaskSource::Code("print('hi')".into()));
    assert_eq!(task.language.name(), "python");
    assert_eq!(task.args, ["--port", "8080"]);
    assert_eq!(
        task.env,
        BTreeMap::from([
            ("GREETING".to_string(), "hello there".to_string()),
            ("LOG_LEVEL".to_string(), "info".to_string()),
        ])
    );
    assert_eq!(task.opts.memory_limit_mb, Some(256));
    assert_eq!(task.opts.enable_ai, Some(false));
    assert_eq!(task.opts.timeout, Some(Duration::from_secs(30)));
    assert_eq!(
        task.opts.intrinsics,
        Some(vec!["console".to_string(), "fs.read".to_string()])
    );

    let (_, bytes) = encode(
        &spec,
        r#"
script   = "local/hello.py"
language = "python"
"#,
    );
    assert_eq!(
        ElideTaskConfig::decode(&bytes).expect("decodes").source,
        TaskSource::Script("local/hello.py".into())
    );
}
