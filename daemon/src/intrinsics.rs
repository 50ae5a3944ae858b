//! Intrinsics: named capabilities a session may grant to its snippets.

pub use elide_proto::intrinsics::{Intrinsic, INTRINSICS};

use crate::error::DaemonError;

/// Checks that every name is a known intrinsic, canonical or one of the
/// original project's names (`io`, `env`, …) this runtime can honour;
/// `field` names the list in errors.
pub fn validate_intrinsics(names: &[String], field: &str) -> Result<(), DaemonError> {
    for name in names {
        if let Err(e) = elide_proto::intrinsics::resolve(name) {
            return Err(DaemonError::InvalidArgument(format!("{field}: {e}")));
        }
    }
    Ok(())
}
