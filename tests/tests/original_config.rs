//! The original Elide driver's agent configuration through the real plugin
//! binary: its `session_config` block exactly as its README writes it
//! (`examples/original/nomad-agent.hcl`), encoded the way Nomad does (the
//! plugin's own `ConfigSchema`, cty msgpack), and tasks naming intrinsics
//! in the original vocabulary.

use std::time::Duration;

use elide_e2e::cty::TaskConfig as DriverConfig;
use elide_e2e::daemon::Daemon;
use elide_e2e::nomad::{Alloc, NomadHost};
use elide_proto::elide::daemon::v1 as pb;
use elide_proto::hashicorp::nomad::plugins::base::proto::ConfigSchemaRequest;
use elide_proto::hashicorp::nomad::plugins::drivers::proto::{
    fingerprint_response::HealthState, TaskConfigSchemaRequest,
};
use tonic::Code;

/// Upper bound for anything a test waits for.
const LIMIT: Duration = Duration::from_secs(20);

fn original_agent_config() -> String {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/original/nomad-agent.hcl"
    );
    std::fs::read_to_string(path).expect("examples/original/nomad-agent.hcl")
}

/// The original agent file with its daemon socket pointed at `daemon` and
/// `replace` applied, encoded with the plugin's `ConfigSchema`.
async fn plugin_config(host: &mut NomadHost, daemon: &Daemon, replace: (&str, &str)) -> Vec<u8> {
    let text = original_agent_config()
        .replace(
            "\"/tmp/elide-daemon.sock\"",
            &format!("{:?}", daemon.socket.display().to_string()),
        )
        .replace(replace.0, replace.1);
    let block = elide_runner::parse_agent_config(std::path::Path::new("nomad-agent.hcl"), &text)
        .expect("agent config");
    assert_eq!(block.label, "elide");
    let schema = host
        .base
        .config_schema(ConfigSchemaRequest {})
        .await
        .expect("ConfigSchema")
        .into_inner()
        .spec
        .expect("a schema");
    elide_e2e::cty::encode(&schema, &block.config)
}

/// A task `config { … }` in HCL, encoded with the plugin's `TaskConfigSchema`.
async fn task_config(host: &mut NomadHost, hcl_text: &str) -> Vec<u8> {
    let schema = host
        .driver
        .task_config_schema(TaskConfigSchemaRequest {})
        .await
        .expect("TaskConfigSchema")
        .into_inner()
        .spec
        .expect("a schema");
    let body: hcl::Body = hcl::parse(hcl_text).expect("task config");
    elide_e2e::cty::encode(&schema, &body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_original_session_config_is_healthy_and_tasks_name_original_intrinsics() {
    let daemon = Daemon::start().await;
    let mut host = NomadHost::launch().await;
    let config = plugin_config(&mut host, &daemon, ("", "")).await;
    host.set_config_bytes(config)
        .await
        .expect("the original session_config is accepted");
    let fingerprint = host
        .fingerprint_until(HealthState::Healthy, LIMIT)
        .await
        .expect("the fingerprint becomes HEALTHY");
    assert_eq!(fingerprint.health_description, "Healthy");

    // elide_opts { intrinsics = ["io", "env"] }: exactly the session's.
    let alloc = Alloc::new("hello");
    let mut task = alloc.task_config(&DriverConfig::default());
    task.msgpack_driver_config = task_config(
        &mut host,
        r#"
        code     = "import os\nprint('hello', os.environ['NOMAD_TASK_NAME'])"
        language = "python"
        elide_opts {
          intrinsics = ["io", "env"]
        }
        "#,
    )
    .await;
    host.start(task.clone()).await.expect("StartTask");
    let exit = host.wait(&task.id, LIMIT).await;
    assert_eq!(
        (exit.result.unwrap().exit_code, exit.err.as_str()),
        (0, ""),
        "{}",
        alloc.stderr.text()
    );
    assert_eq!(alloc.stdout.text_after_eofs(1, LIMIT), "hello hello\n");

    // The daemon keeps the session's names as written.
    let mut client = daemon.client().await;
    let sessions = client
        .list_sessions(pb::ListSessionsRequest {})
        .await
        .unwrap()
        .into_inner()
        .sessions;
    let config = sessions[0].config.clone().unwrap();
    assert_eq!(config.enabled_intrinsics, ["io", "env"]);
    assert_eq!(
        config.enabled_languages,
        ["python", "javascript", "typescript"]
    );
    assert_eq!(
        (config.context_pool_size, config.memory_limit_mb),
        (10, 512)
    );

    // A canonical name the session grants through `io` is accepted too …
    let alloc = Alloc::new("console");
    let mut task = alloc.task_config(&DriverConfig::default());
    task.msgpack_driver_config = task_config(
        &mut host,
        "code = \"print('console')\"\nlanguage = \"python\"\nelide_opts {\n  intrinsics = [\"console\"]\n}\n",
    )
    .await;
    host.start(task.clone()).await.expect("StartTask");
    assert_eq!(
        host.wait(&task.id, LIMIT).await.result.unwrap().exit_code,
        0
    );
    assert_eq!(alloc.stdout.text_after_eofs(1, LIMIT), "console\n");

    // … and one it does not grant is refused, naming the field and value.
    let alloc = Alloc::new("wider");
    let mut task = alloc.task_config(&DriverConfig::default());
    task.msgpack_driver_config = task_config(
        &mut host,
        "code = \"print(1)\"\nlanguage = \"python\"\nelide_opts {\n  intrinsics = [\"http\"]\n}\n",
    )
    .await;
    let err = host.start(task).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains(
            "task \"wider\": invalid `elide_opts.intrinsics`: \"http\" grants net, which is not enabled on this client (session_config.enabled_intrinsics: io, env)"
        ),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn original_names_that_cannot_be_honoured_are_refused_with_the_field() {
    let daemon = Daemon::start().await;
    let mut host = NomadHost::launch().await;

    // sqlite: refused at SetConfig.
    let sqlite = plugin_config(
        &mut host,
        &daemon,
        ("[\"io\", \"env\"]", "[\"io\", \"env\", \"sqlite\"]"),
    )
    .await;
    let err = host.set_config_bytes(sqlite).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("session_config.enabled_intrinsics")
            && err.message().contains(
                "intrinsic \"sqlite\" cannot be granted: this runtime has no SQLite intrinsic"
            ),
        "{err:?}"
    );

    // enable_ai = true: accepted by SetConfig (the daemon decides), then the
    // fingerprint says why the driver cannot run tasks.
    let ai = plugin_config(
        &mut host,
        &daemon,
        ("enable_ai          = false", "enable_ai          = true"),
    )
    .await;
    host.set_config_bytes(ai).await.expect("SetConfig");
    let fingerprint = host
        .fingerprint_until(HealthState::Unhealthy, LIMIT)
        .await
        .expect("the fingerprint becomes UNHEALTHY");
    assert_eq!(
        fingerprint.health_description,
        format!(
            "session_config.enable_ai = true, but the daemon at {} has no local AI (it needs the Elide runtime): set enable_ai = false and leave ai out of enabled_intrinsics",
            daemon.socket.display()
        )
    );
}

/// The original `enabled_intrinsics = ["io", "env"]`, through the real
/// plugin: the task sees its environment and prints, and the daemon's
/// kernel rules deny it everything else (each probe is one that the file
/// permissions would allow: world-readable, world-writable, a closed port,
/// a world-executable program).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_original_minimal_intrinsics_are_enforced_by_the_kernel() {
    let daemon = Daemon::start().await;
    let mut host = NomadHost::launch().await;
    let config = plugin_config(&mut host, &daemon, ("", "")).await;
    host.set_config_bytes(config).await.expect("SetConfig");
    host.fingerprint_until(HealthState::Healthy, LIMIT)
        .await
        .expect("the fingerprint becomes HEALTHY");
    let alloc = Alloc::new("confined");
    let scratch = format!("/tmp/elide-e2e-{}", std::process::id());
    let mut task = alloc.task_config(&DriverConfig::default());
    let code = format!(
        "import os, socket\\nprint('env', os.environ['NOMAD_TASK_NAME'])\\nprobes = [('read', lambda: open('/etc/hostname').read()), ('write', lambda: open('{scratch}', 'w')), ('net', lambda: socket.create_connection(('127.0.0.1', 9))), ('exec', lambda: os.execv('/bin/sh', ['sh', '-c', 'true']))]\\nfor what, probe in probes:\\n    try:\\n        probe()\\n        print(what, 'allowed')\\n    except PermissionError as e:\\n        print(what, 'denied', e.errno)\\n"
    );
    task.msgpack_driver_config = task_config(
        &mut host,
        &format!("code = \"{code}\"\nlanguage = \"python\"\n"),
    )
    .await;
    host.start(task.clone()).await.expect("StartTask");
    let exit = host.wait(&task.id, LIMIT).await;
    assert_eq!(
        (exit.result.unwrap().exit_code, exit.err.as_str()),
        (0, ""),
        "{}",
        alloc.stderr.text()
    );
    assert_eq!(
        alloc.stdout.text_after_eofs(1, LIMIT),
        "env confined\nread denied 13\nwrite denied 13\nnet denied 13\nexec denied 13\n",
        "stderr: {}",
        alloc.stderr.text()
    );
    assert!(!std::path::Path::new(&scratch).exists());
}
