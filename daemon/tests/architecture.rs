//! Architecture rules, checked on the source so a change that breaks one
//! fails here rather than in review.

const REGISTRY_CORE: &str = include_str!("../src/registry/core.rs");
const SUPERVISOR: &str = include_str!("../src/supervisor.rs");

#[test]
fn the_registry_core_has_no_store_no_spawning_and_no_grpc() {
    let forbidden = [
        "tonic",
        "tokio::spawn",
        "spawn(",
        "StateStore",
        "std::fs",
        "std::thread",
    ];
    let found: Vec<&str> = forbidden
        .into_iter()
        .filter(|word| REGISTRY_CORE.contains(word))
        .collect();
    assert_eq!(
        found,
        Vec::<&str>::new(),
        "daemon/src/registry/core.rs uses these"
    );
}

#[test]
fn the_supervisor_reports_through_its_trait_not_the_registry() {
    let found: Vec<&str> = ["crate::registry", "SessionRegistry"]
        .into_iter()
        .filter(|word| SUPERVISOR.contains(word))
        .collect();
    assert_eq!(
        found,
        Vec::<&str>::new(),
        "daemon/src/supervisor.rs uses these"
    );
}
