//! Architecture rules, checked on the source so a change that breaks one
//! fails here rather than in review.

const REGISTRY_CORE: &str = include_str!("../src/registry/core.rs");
const EXECUTION_RUN: &str = include_str!("../src/execution_run.rs");

#[test]
fn the_registry_core_has_no_store_no_spawning_and_no_grpc() {
    let forbidden = [
        "tonic",
        "tokio::spawn",
        "spawn(",
        "StateStore",
        "std::fs",
        "std::thread",
        // Time is passed in: the core never reads a clock.
        "::now()",
    ];
    let production = REGISTRY_CORE
        .split("#[cfg(test)]")
        .next()
        .expect("a production part");
    let found: Vec<&str> = forbidden
        .into_iter()
        .filter(|word| production.contains(word))
        .collect();
    assert_eq!(
        found,
        Vec::<&str>::new(),
        "daemon/src/registry/core.rs uses these"
    );
}

#[test]
fn an_execution_run_reports_through_its_trait_not_the_registry() {
    let found: Vec<&str> = ["crate::registry", "SessionRegistry"]
        .into_iter()
        .filter(|word| EXECUTION_RUN.contains(word))
        .collect();
    assert_eq!(
        found,
        Vec::<&str>::new(),
        "daemon/src/execution_run.rs uses these"
    );
}

/// The runtime and the language list sit below the daemon's request
/// errors (`error.rs` wraps `RuntimeError`): they return leaf errors of
/// their own, so `error -> runtime -> language -> error` cannot come back.
#[test]
fn the_runtime_and_language_parsing_do_not_use_the_request_error() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = vec![src.join("language.rs")];
    for entry in std::fs::read_dir(src.join("runtime")).expect("daemon/src/runtime") {
        let path = entry.expect("runtime entry").path();
        if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    let offenders: Vec<String> = files
        .iter()
        .filter(|path| {
            let text = std::fs::read_to_string(path).expect("source file");
            text.contains("crate::error") || text.contains("DaemonError::")
        })
        .map(|path| path.display().to_string())
        .collect();
    assert_eq!(offenders, Vec::<String>::new(), "these use crate::error");
}
