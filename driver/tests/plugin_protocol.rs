//! Drives the real `nomad-driver-elide` binary through the start-up and
//! shutdown sequence a Nomad client uses, over the real unix socket.

mod support;

use std::path::Path;
use std::time::Duration;

use elide_proto::hashicorp::nomad::plugins::base::proto::{
    base_plugin_client::BasePluginClient, ConfigSchemaRequest, PluginInfoRequest, PluginType,
    SetConfigRequest,
};
use elide_proto::hashicorp::nomad::plugins::drivers::proto::{
    driver_capabilities::{FsIsolation, MountConfigs},
    driver_client::DriverClient,
    fingerprint_response::HealthState,
    CapabilitiesRequest, FingerprintRequest, TaskConfigSchemaRequest,
};
use elide_proto::hashicorp::nomad::plugins::shared::hclspec::spec::Block as SpecKind;
use elide_proto::plugin::{grpc_controller_client::GrpcControllerClient, Empty};
use support::nomad_client::{run_by_hand, PluginProcess, COOKIE};
use support::plugin_config;
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

const BINARY: &str = env!("CARGO_BIN_EXE_nomad-driver-elide");

fn set_config(msgpack: Vec<u8>) -> SetConfigRequest {
    SetConfigRequest {
        msgpack_config: msgpack,
        nomad_config: None,
        plugin_api_version: "v0.1.0".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_speaks_the_nomad_plugin_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let mut plugin = PluginProcess::start(Path::new(BINARY), dir.path()).expect("plugin starts");
    assert!(
        plugin.socket.starts_with(dir.path()),
        "PLUGIN_UNIX_SOCKET_DIR honoured"
    );
    let name = plugin
        .socket
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        name.strip_prefix("plugin")
            .is_some_and(|n| n.chars().all(|c| c.is_ascii_digit())),
        "{name}"
    );
    assert!(plugin.handshake.ends_with("|grpc|"), "{}", plugin.handshake);
    let channel = plugin.connect().await.expect("plugin answers");

    // go-plugin's Ping.
    let health = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: "plugin".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status(), ServingStatus::Serving);

    // Fingerprint process: PluginInfo, ConfigSchema.
    let mut base = BasePluginClient::new(channel.clone());
    let info = base
        .plugin_info(PluginInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.r#type(), PluginType::Driver);
    assert_eq!(info.plugin_api_versions, ["v0.1.0"]);
    assert_eq!(info.name, "elide");
    let version: Vec<&str> = info.plugin_version.split('.').collect();
    assert_eq!(version.len(), 3, "semver: {}", info.plugin_version);
    assert!(
        version.iter().all(|p| p.parse::<u64>().is_ok()),
        "{}",
        info.plugin_version
    );
    let schema = base
        .config_schema(ConfigSchemaRequest {})
        .await
        .unwrap()
        .into_inner();
    let Some(SpecKind::Object(root)) = schema.spec.unwrap().block else {
        panic!("config schema root must be an Object");
    };
    assert!(matches!(
        root.attributes["session_config"].block,
        Some(SpecKind::BlockValue(_))
    ));

    // Validation process: bad configs are errors naming the field, and the
    // plugin keeps serving.
    let bad = [
        (
            hcl::body!({ session_config { memory_limit_mb = 0 } }),
            "session_config.memory_limit_mb",
        ),
        (
            hcl::body!({ session_config { context_pool_size = (-2) } }),
            "session_config.context_pool_size",
        ),
        (
            hcl::body!({ session_config { enabled_languages = ["cobol"] } }),
            "session_config.enabled_languages",
        ),
        (hcl::body!({ daemon_socket = "" }), "daemon_socket"),
    ];
    for (body, field) in bad {
        let err = base
            .set_config(set_config(plugin_config(&body)))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains(field), "{field}: {}", err.message());
    }

    // Good config, twice (as the validation process does), with the daemon
    // socket absent.
    let daemon_socket = dir.path().join("no-daemon.sock");
    let daemon_socket = daemon_socket.to_str().unwrap();
    let good = plugin_config(&hcl::body!({
        daemon_socket = (daemon_socket)
        session_config { memory_limit_mb = 512 }
    }));
    for _ in 0..2 {
        base.set_config(set_config(good.clone())).await.unwrap();
    }

    // Task runner calls.
    let mut driver = DriverClient::new(channel.clone());
    let task_schema = driver
        .task_config_schema(TaskConfigSchemaRequest {})
        .await
        .unwrap()
        .into_inner();
    let Some(SpecKind::Object(task_root)) = task_schema.spec.unwrap().block else {
        panic!("task schema root must be an Object");
    };
    assert!(matches!(
        task_root.attributes["elide_opts"].block,
        Some(SpecKind::BlockValue(_))
    ));
    let capabilities = driver
        .capabilities(CapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner()
        .capabilities
        .expect("capabilities must be set");
    assert!(capabilities.send_signals);
    assert!(capabilities.exec);
    assert_eq!(capabilities.fs_isolation(), FsIsolation::None);
    assert!(!capabilities.must_create_network);
    assert_eq!(capabilities.mount_configs(), MountConfigs::NoMounts);

    // Fingerprint: first message at once, unhealthy with a description.
    let mut fingerprints = driver
        .fingerprint(FingerprintRequest {})
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), fingerprints.message())
        .await
        .expect("first fingerprint is immediate")
        .expect("stream healthy")
        .expect("stream does not end");
    assert_eq!(first.health(), HealthState::Unhealthy);
    assert!(
        first
            .health_description
            .starts_with(&format!("daemon not reachable at {}", daemon_socket)),
        "{}",
        first.health_description
    );
    // The stream stays open (no end, no error) after the first message.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), fingerprints.message())
            .await
            .is_err(),
        "fingerprint stream must stay open"
    );

    // Exec into a task this plugin does not know is NOT_FOUND, naming it,
    // and the plugin is still serving afterwards.
    let exec = driver
        .exec_task(
            elide_proto::hashicorp::nomad::plugins::drivers::proto::ExecTaskRequest {
                task_id: "a/b/c".into(),
                command: vec!["sh".into()],
                timeout: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(exec.code(), tonic::Code::NotFound);
    assert!(exec.message().contains("\"a/b/c\""), "{exec:?}");
    base.plugin_info(PluginInfoRequest {}).await.unwrap();

    // Client.Kill: Shutdown is answered, the process exits within 2 s and
    // removes its socket.
    let socket = plugin.socket.clone();
    GrpcControllerClient::new(channel.clone())
        .shutdown(Empty {})
        .await
        .expect("Shutdown is answered");
    drop(fingerprints);
    drop(channel);
    let status = plugin
        .wait_for_exit(Duration::from_secs(2))
        .expect("plugin exits within 2 s of Shutdown");
    assert!(status.success(), "{status:?}");
    assert!(!socket.exists(), "socket {socket:?} removed");

    let lines = plugin.stderr_lines();
    assert!(!lines.is_empty(), "the plugin logs something");
    for line in &lines {
        assert_hclog_line(line);
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains("rejected plugin configuration")),
        "SetConfig errors are logged"
    );
}

/// Checks a stderr line the way go-plugin's host parses it.
fn assert_hclog_line(line: &str) {
    let json: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    for key in ["@level", "@message", "@timestamp", "@module"] {
        assert!(json[key].is_string(), "{key} must be a string: {line}");
    }
    let level = json["@level"].as_str().unwrap();
    assert!(
        ["trace", "debug", "info", "warn", "error"].contains(&level),
        "{line}"
    );
    let ts = json["@timestamp"].as_str().unwrap();
    let bytes = ts.as_bytes();
    let shape_ok = ts.len() == 27
        && bytes.iter().enumerate().all(|(i, b)| match i {
            4 | 7 => *b == b'-',
            10 => *b == b'T',
            13 | 16 => *b == b':',
            19 => *b == b'.',
            26 => *b == b'Z',
            _ => b.is_ascii_digit(),
        });
    assert!(
        shape_ok,
        "timestamp must be 2006-01-02T15:04:05.000000Z: {ts}"
    );
}

#[test]
fn running_by_hand_explains_and_exits_1() {
    let (status, stdout, stderr) = run_by_hand(Path::new(BINARY), &[]);
    assert_eq!(status.code(), Some(1));
    assert!(stdout.is_empty(), "nothing on stdout: {stdout:?}");
    assert!(stderr.contains("not meant to be run directly"), "{stderr}");
    assert!(stderr.contains("Nomad"), "{stderr}");

    // Cookie present but a host that does not speak protocol 2.
    let (status, stdout, stderr) = run_by_hand(
        Path::new(BINARY),
        &[
            ("NOMAD_PLUGIN_MAGIC_COOKIE", COOKIE),
            ("PLUGIN_PROTOCOL_VERSIONS", "1"),
        ],
    );
    assert_eq!(status.code(), Some(1));
    assert!(stdout.is_empty());
    assert!(stderr.contains("PLUGIN_PROTOCOL_VERSIONS"), "{stderr}");
}

#[test]
fn sigterm_stops_the_plugin_and_removes_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let mut plugin = PluginProcess::start(Path::new(BINARY), dir.path()).expect("plugin starts");
    let socket = plugin.socket.clone();
    assert!(socket.exists());
    let pid = nix::unistd::Pid::from_raw(plugin.pid() as i32);
    // SIGINT is ignored (Ctrl-C on the agent's terminal).
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    assert!(plugin.wait_for_exit(Duration::from_millis(300)).is_none());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = plugin
        .wait_for_exit(Duration::from_secs(2))
        .expect("exits on SIGTERM");
    assert!(status.success(), "{status:?}");
    assert!(!socket.exists());
}
