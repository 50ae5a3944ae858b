//! Nomad's go-cty msgpack encoding of configuration, in one place for both
//! directions:
//!
//! * [`decode`], [`CtyObject`], [`ConfigError`]: reading a plugin or task
//!   config the way the plugin receives it (`SetConfig`, `TaskConfig`);
//! * [`body_to_value`], [`encode`], [`CtyError`]: writing an HCL body the
//!   way Nomad does, against the plugin's own schema (the runner, the
//!   end-to-end harness and the simulation's fake agent all encode with
//!   this);
//! * [`value`]: builders of cty-shaped values for tests.

mod decode;
mod encode;
pub mod value;

pub use decode::{decode, ConfigError, CtyObject};
pub use encode::{body_to_value, encode, number, parse_type, CtyError, CtyType};
