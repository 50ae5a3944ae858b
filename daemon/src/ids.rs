//! Identifiers: validation of client-chosen ids and generation of new ones.

use crate::error::DaemonError;

/// Longest id accepted, in bytes.
pub const MAX_ID_BYTES: usize = 128;

/// Checks a client-chosen session or execution id. `what` names it in errors.
pub fn validate_id(id: &str, what: &str) -> Result<(), DaemonError> {
    if id.is_empty() {
        return Err(DaemonError::InvalidArgument(format!("{what} is empty")));
    }
    if id.len() > MAX_ID_BYTES {
        return Err(DaemonError::InvalidArgument(format!(
            "{what} is {} bytes long; the limit is {MAX_ID_BYTES}",
            id.len()
        )));
    }
    let ok = id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !ok || id == "." || id == ".." {
        return Err(DaemonError::InvalidArgument(format!(
            "{what} {id:?} may only contain letters, digits, '-', '_' and '.'"
        )));
    }
    Ok(())
}

/// Source of fresh identifiers (random in production, seeded in simulation).
pub trait IdSource: Send + Sync + 'static {
    /// A new identifier, unique with overwhelming probability.
    fn new_id(&self) -> String;
}

/// Random UUIDv4 identifiers.
#[derive(Debug, Default, Clone, Copy)]
pub struct RandomIds;

impl IdSource for RandomIds {
    fn new_id(&self) -> String {
        uuid::Uuid::new_v4().to_string()
    }
}

/// Predictable identifiers `<prefix>-1`, `<prefix>-2`, … (for tests and
/// simulations, where the same run must produce the same ids).
#[derive(Debug)]
pub struct SequentialIds {
    prefix: String,
    next: std::sync::atomic::AtomicU64,
}

impl SequentialIds {
    /// Ids starting at `<prefix>-1`.
    pub fn new(prefix: &str) -> Self {
        SequentialIds {
            prefix: prefix.to_string(),
            next: std::sync::atomic::AtomicU64::new(1),
        }
    }
}

impl IdSource for SequentialIds {
    fn new_id(&self) -> String {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{}-{n}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_nomad_style_ids() {
        validate_id("a1b2c3d4-e5f6-7890-abcd-ef0123456789", "execution_id").unwrap();
        validate_id("node-1.elide_sess", "session_id").unwrap();
    }

    #[test]
    fn rejects_path_like_and_oversized_ids() {
        for bad in ["", "..", "a/b", "a b", &"x".repeat(129)] {
            let err = validate_id(bad, "session_id").unwrap_err().to_string();
            assert!(err.contains("session_id"), "{err}");
        }
    }
}
