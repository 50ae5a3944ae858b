//! Snippet languages as the daemon reads them from requests: the shared
//! [`Language`] list, plus the aliases a hand-written request may use.

pub use elide_proto::Language;

use crate::error::DaemonError;

/// Parses a canonical name or a common alias ("py", "python3", "js",
/// "node", "ts"), case-insensitively.
pub fn parse(name: &str) -> Result<Language, DaemonError> {
    match name.trim().to_ascii_lowercase().as_str() {
        "python" | "py" | "python3" => Ok(Language::Python),
        "javascript" | "js" | "node" => Ok(Language::JavaScript),
        "typescript" | "ts" => Ok(Language::TypeScript),
        "" => Err(DaemonError::InvalidArgument("language is empty".into())),
        _ => Err(DaemonError::InvalidArgument(format!(
            "unknown language {name:?}: expected one of {}",
            Language::known_names()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_and_case_are_accepted_and_unknown_names_named() {
        assert_eq!(parse(" Python3 ").unwrap(), Language::Python);
        assert_eq!(parse("node").unwrap(), Language::JavaScript);
        assert_eq!(parse("ts").unwrap(), Language::TypeScript);
        let err = parse("cobol").unwrap_err().to_string();
        assert!(
            err.contains("cobol") && err.contains("python, javascript, typescript"),
            "{err}"
        );
        assert!(parse("").is_err());
    }
}
