//! Snippet languages as the daemon reads them from requests: the shared
//! [`Language`] list, plus the aliases a hand-written request may use.

pub use elide_proto::Language;

/// A language name the daemon does not know. A leaf error: the caller
/// says which field held it (`DaemonError` maps it to `InvalidArgument`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LanguageError {
    #[error("language is empty")]
    Empty,
    #[error("unknown language {0:?}: expected one of {known}", known = Language::known_names())]
    Unknown(String),
}

/// Parses a canonical name or a common alias ("py", "python3", "js",
/// "node", "ts"), case-insensitively.
pub fn parse(name: &str) -> Result<Language, LanguageError> {
    match name.trim().to_ascii_lowercase().as_str() {
        "python" | "py" | "python3" => Ok(Language::Python),
        "javascript" | "js" | "node" => Ok(Language::JavaScript),
        "typescript" | "ts" => Ok(Language::TypeScript),
        "" => Err(LanguageError::Empty),
        _ => Err(LanguageError::Unknown(name.to_owned())),
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
        assert_eq!(parse(""), Err(LanguageError::Empty));
    }
}
