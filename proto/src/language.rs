//! The snippet languages of the daemon API, by the names the API and the
//! task configuration use. Driver and daemon share this one list, so a
//! language the driver accepts is one the daemon knows.

use std::fmt;

/// A language a snippet can be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Language {
    /// Python 3.
    Python,
    /// JavaScript (CommonJS, and ES modules in `.mjs` files).
    JavaScript,
    /// TypeScript.
    TypeScript,
}

impl Language {
    /// Every language, in the order capabilities and error messages list them.
    pub const ALL: [Language; 3] = [Language::Python, Language::JavaScript, Language::TypeScript];

    /// The canonical name (`language = "python"`, `ExecuteRequest.language`).
    pub fn name(self) -> &'static str {
        match self {
            Language::Python => "python",
            Language::JavaScript => "javascript",
            Language::TypeScript => "typescript",
        }
    }

    /// The language with this canonical name; exact, lower-case match.
    pub fn from_name(name: &str) -> Option<Language> {
        Language::ALL.into_iter().find(|l| l.name() == name)
    }

    /// The extension of a source file in this language.
    pub fn extension(self) -> &'static str {
        match self {
            Language::Python => "py",
            Language::JavaScript => "js",
            Language::TypeScript => "ts",
        }
    }

    /// The language of a script file extension (`py`, `js`, `mjs`, `ts`).
    pub fn from_extension(extension: &str) -> Option<Language> {
        match extension {
            "py" => Some(Language::Python),
            "js" | "mjs" => Some(Language::JavaScript),
            "ts" => Some(Language::TypeScript),
            _ => None,
        }
    }

    /// The canonical names, comma-separated, for error messages.
    pub fn known_names() -> String {
        Language::ALL.map(Language::name).join(", ")
    }
}

impl fmt::Display for Language {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_exactly() {
        for language in Language::ALL {
            assert_eq!(Language::from_name(language.name()), Some(language));
            assert_eq!(
                Language::from_extension(language.extension()),
                Some(language)
            );
        }
        assert_eq!(Language::from_name("Python"), None);
        assert_eq!(Language::from_name("ruby"), None);
    }

    #[test]
    fn extensions_map_to_languages() {
        assert_eq!(Language::from_extension("mjs"), Some(Language::JavaScript));
        assert_eq!(Language::from_extension("rb"), None);
        assert_eq!(Language::known_names(), "python, javascript, typescript");
    }
}
