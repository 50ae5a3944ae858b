//! The original Elide driver's intrinsic names (`io`, `env`, `fs`, `http`,
//! `sqlite`, `ai`) against a real daemon: listed beside the canonical ones
//! with what they grant, kept as written in sessions, compared by grants
//! when an execution narrows them, refused with FAILED_PRECONDITION and the
//! field where this runtime cannot honour them; and through `elide-ctl`.

mod support;

use std::process::Command;

use elide_proto::elide::daemon::v1 as pb;
use support::*;
use tonic::Code;

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

fn with_intrinsics(req: &mut pb::ExecuteSnippetRequest, list: &[&str]) {
    req.overrides = Some(pb::ExecutionOverrides {
        enabled_intrinsics: names(list),
        ..Default::default()
    });
}

#[tokio::test]
async fn both_spellings_are_listed_kept_and_narrowed_by_grants() {
    let d = Daemon::start_with(&[]).await;
    let mut c = d.client().await;

    let caps = c
        .get_capabilities(pb::GetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    let listed: Vec<(String, Vec<String>, bool)> = caps
        .intrinsics
        .iter()
        .map(|i| {
            (
                i.name.clone(),
                i.grants.clone(),
                i.unavailable_reason.is_empty(),
            )
        })
        .collect();
    let entry =
        |name: &str, grants: &[&str], available: bool| (name.to_owned(), names(grants), available);
    assert_eq!(
        listed,
        [
            entry("console", &["console"], true),
            entry("env", &["env"], true),
            entry("fs.read", &["fs.read"], true),
            entry("fs.write", &["fs.write"], true),
            entry("net", &["net"], true),
            entry("subprocess", &["subprocess"], true),
            entry("ai", &["ai"], false),
            entry("io", &["console"], true),
            entry("fs", &["fs.read", "fs.write"], true),
            entry("http", &["net"], true),
            entry("sqlite", &[], false),
        ]
    );

    let created = create_session(
        &mut c,
        "orig",
        pb::SessionConfig {
            enabled_intrinsics: names(&["io", "env", "fs"]),
            ..Default::default()
        },
    )
    .await;
    // Names round-trip as written.
    assert_eq!(
        created.config.unwrap().enabled_intrinsics,
        ["io", "env", "fs"]
    );
    let got = c
        .get_session(pb::GetSessionRequest {
            session_id: "orig".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        got.session.unwrap().config.unwrap().enabled_intrinsics,
        ["io", "env", "fs"]
    );

    // Canonical names granted through original ones run.
    let mut req = snippet("orig", "narrow", "python", "print('narrowed')");
    with_intrinsics(&mut req, &["console", "fs.read"]);
    execute(&mut c, req).await;
    let done = wait_terminal(&mut c, "orig", "narrow").await;
    assert_eq!(done.exit_code, Some(0), "{done:?}");
    let out = read_output(&mut c, "orig", "narrow", (0, 0), false).await;
    assert_eq!(out.stdout, b"narrowed\n");

    // `http` grants net, which the session does not.
    let mut req = snippet("orig", "wide", "python", "print(1)");
    with_intrinsics(&mut req, &["http"]);
    let err = c.execute_snippet(req).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(
        err.message(),
        "overrides.enabled_intrinsics: \"http\" grants net, which session orig does not (enabled: io, env, fs, granting console, env, fs.read, fs.write); an override may only narrow them"
    );
}

#[tokio::test]
async fn names_this_runtime_cannot_honour_are_failed_preconditions_naming_the_field() {
    let d = Daemon::start_with(&[]).await;
    let mut c = d.client().await;
    let create = |config: pb::SessionConfig| pb::CreateSessionRequest {
        session_id: "refused".into(),
        config: Some(config),
        ..Default::default()
    };
    for (config, message) in [
        (
            pb::SessionConfig {
                enabled_intrinsics: names(&["io", "sqlite"]),
                ..Default::default()
            },
            "config.enabled_intrinsics: intrinsic \"sqlite\" cannot be granted: this runtime has no SQLite intrinsic (it needs the Elide runtime)",
        ),
        (
            pb::SessionConfig {
                enabled_intrinsics: names(&["ai"]),
                ..Default::default()
            },
            "config.enabled_intrinsics: intrinsic \"ai\" cannot be granted: local AI needs the Elide runtime, which this daemon does not have (GetCapabilities.ai_available = false)",
        ),
        (
            pb::SessionConfig {
                enable_ai: true,
                ..Default::default()
            },
            "config.enable_ai: local AI needs the Elide runtime, which this daemon does not have (GetCapabilities.ai_available = false)",
        ),
    ] {
        let err = c.create_session(create(config)).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
        assert_eq!(err.message(), message);
    }
    let sessions = c
        .list_sessions(pb::ListSessionsRequest {})
        .await
        .unwrap()
        .into_inner()
        .sessions;
    assert!(
        sessions.is_empty(),
        "a refused session was kept: {sessions:?}"
    );

    // A snippet written for Elide's polyglot API is refused before it runs.
    create_session(&mut c, "plain", pb::SessionConfig::default()).await;
    let err = c
        .execute_snippet(snippet(
            "plain",
            "poly",
            "python",
            "import polyglot\nprint(polyglot.eval(language='js', string='1+1'))",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message()
            .starts_with("code: uses the polyglot module (line 1), which only the Elide runtime provides; this daemon runs python with python3"),
        "{err:?}"
    );
}

#[tokio::test]
async fn elide_ctl_runs_with_original_names_and_lists_both_spellings() {
    let d = Daemon::start_with(&[]).await;
    let ctl = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_elide-ctl"))
            .arg("--socket")
            .arg(&d.socket)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stdout, stderr) = ctl(&["capabilities"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains("  intrinsic fs         grants fs.read + fs.write   original Elide name for fs.read + fs.write (not multi-tenant safe)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("  intrinsic sqlite     grants                      original Elide name; not available here (unavailable: this runtime has no SQLite intrinsic"),
        "{stdout}"
    );
    let (code, stdout, stderr) = ctl(&[
        "run",
        "--session",
        "ctl-orig",
        "--intrinsic",
        "io",
        "--intrinsic",
        "env",
        "--language",
        "python",
        "--code",
        "print('from elide-ctl')",
    ]);
    assert_eq!(
        (code, stdout.as_str()),
        (Some(0), "from elide-ctl\n"),
        "{stderr}"
    );
    let (code, _, stderr) = ctl(&[
        "run",
        "--session",
        "ctl-sqlite",
        "--intrinsic",
        "sqlite",
        "--language",
        "python",
        "--code",
        "print(1)",
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("creating the session")
            && stderr.contains("config.enabled_intrinsics: intrinsic")
            && stderr.contains("sqlite")
            && stderr.contains("cannot be granted: this runtime has no SQLite intrinsic"),
        "{stderr}"
    );
}
