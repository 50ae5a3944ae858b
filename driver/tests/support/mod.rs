//! Helpers shared by the integration tests: the fake Nomad plugin host
//! lives in the `elide-e2e` crate, shared with the end-to-end suite.

pub use elide_e2e::nomad_client;
