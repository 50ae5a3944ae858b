//! Snippet languages the API knows by name.

use std::fmt;

use crate::error::DaemonError;

/// A language a snippet can be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Language {
    /// Python 3.
    Python,
    /// JavaScript (CommonJS module semantics).
    JavaScript,
    /// TypeScript.
    TypeScript,
}

impl Language {
    /// Every language, in the order capabilities list them.
    pub const ALL: [Language; 3] = [Language::Python, Language::JavaScript, Language::TypeScript];

    /// Canonical API name.
    pub fn name(self) -> &'static str {
        match self {
            Language::Python => "python",
            Language::JavaScript => "javascript",
            Language::TypeScript => "typescript",
        }
    }

    /// Parses a canonical name or a common alias ("py", "js", "ts").
    pub fn parse(name: &str) -> Result<Language, DaemonError> {
        match name.trim().to_ascii_lowercase().as_str() {
            "python" | "py" | "python3" => Ok(Language::Python),
            "javascript" | "js" | "node" => Ok(Language::JavaScript),
            "typescript" | "ts" => Ok(Language::TypeScript),
            "" => Err(DaemonError::InvalidArgument("language is empty".into())),
            _ => Err(DaemonError::InvalidArgument(format!(
                "unknown language {name:?}: expected one of python, javascript, typescript"
            ))),
        }
    }

    /// File extension of a source file in this language.
    pub fn extension(self) -> &'static str {
        match self {
            Language::Python => "py",
            Language::JavaScript => "js",
            Language::TypeScript => "ts",
        }
    }
}

impl fmt::Display for Language {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
