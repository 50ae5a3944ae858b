//! Helpers shared by the integration tests: the fake Nomad plugin host
//! lives in the `elide-e2e` crate, shared with the end-to-end suite.

#[allow(unused_imports)] // not every test binary that includes this module uses it
pub use elide_e2e::nomad_client;

/// A plugin `config {}` block as the agent sends it: encoded with the
/// driver's own schema by the project's one cty encoder.
#[allow(dead_code)] // not every test binary that includes this module uses it
pub fn plugin_config(body: &hcl::Body) -> Vec<u8> {
    elide_e2e::cty::encode(&elide_driver::plugin_config_schema(), body)
}
