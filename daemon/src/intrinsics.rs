//! Intrinsics: named capabilities a session may grant to its snippets.

pub use elide_proto::intrinsics::{Intrinsic, INTRINSICS};

use crate::error::DaemonError;

/// Checks that every name is a known intrinsic; `field` names the list in errors.
pub fn validate_intrinsics(names: &[String], field: &str) -> Result<(), DaemonError> {
    for name in names {
        if !elide_proto::intrinsics::is_known(name) {
            return Err(DaemonError::InvalidArgument(format!(
                "{field}: unknown intrinsic {name:?}; known intrinsics: {}",
                elide_proto::intrinsics::known_names()
            )));
        }
    }
    Ok(())
}
