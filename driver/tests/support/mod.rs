//! Helpers shared by the integration tests.

pub mod nomad_client;
