//! The languages and intrinsics this driver knows by name. Configuration is
//! validated against these lists, so they are the one place to change when
//! the daemon learns something new.

use std::fmt;

/// Intrinsic (host capability) names a session may be granted.
pub const KNOWN_INTRINSICS: &[&str] = &[
    "console",
    "env",
    "fs.read",
    "fs.write",
    "net",
    "subprocess",
    "ai",
];

/// A guest language the daemon can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Language {
    /// Python.
    Python,
    /// JavaScript (also ES modules, `.mjs`).
    JavaScript,
    /// TypeScript.
    TypeScript,
}

impl Language {
    /// Every known language, in the order error messages list them.
    pub const ALL: [Language; 3] = [Language::Python, Language::JavaScript, Language::TypeScript];

    /// The name used in configuration (`language = "python"`).
    pub fn name(self) -> &'static str {
        match self {
            Language::Python => "python",
            Language::JavaScript => "javascript",
            Language::TypeScript => "typescript",
        }
    }

    /// Parses a configuration name; exact, lower-case match.
    pub fn from_name(name: &str) -> Option<Language> {
        Language::ALL.into_iter().find(|l| l.name() == name)
    }

    /// Infers the language from a script file extension (`.py`, `.js`,
    /// `.mjs`, `.ts`).
    pub fn from_extension(extension: &str) -> Option<Language> {
        match extension {
            "py" => Some(Language::Python),
            "js" | "mjs" => Some(Language::JavaScript),
            "ts" => Some(Language::TypeScript),
            _ => None,
        }
    }

    /// Comma-separated list of known names, for error messages.
    pub fn known_names() -> String {
        Language::ALL.map(Language::name).join(", ")
    }
}

impl fmt::Display for Language {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether `name` is a known intrinsic.
pub fn is_known_intrinsic(name: &str) -> bool {
    KNOWN_INTRINSICS.contains(&name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn language_names_round_trip() {
        for language in Language::ALL {
            assert_eq!(Language::from_name(language.name()), Some(language));
        }
        assert_eq!(Language::from_name("Python"), None);
        assert_eq!(Language::from_name("ruby"), None);
    }

    #[test]
    fn extensions_map_to_languages() {
        assert_eq!(Language::from_extension("py"), Some(Language::Python));
        assert_eq!(Language::from_extension("mjs"), Some(Language::JavaScript));
        assert_eq!(Language::from_extension("ts"), Some(Language::TypeScript));
        assert_eq!(Language::from_extension("rb"), None);
    }

    #[test]
    fn intrinsics_are_checked_by_exact_name() {
        assert!(is_known_intrinsic("fs.read"));
        assert!(!is_known_intrinsic("fs"));
        assert!(!is_known_intrinsic("FS.READ"));
    }
}
