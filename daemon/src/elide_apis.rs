//! Snippets written for the Elide runtime: Python's `polyglot` module
//! (calling other languages in one context) and the `elide:` modules
//! (`elide:llm` for local AI, …). The original Elide driver's polyglot and
//! AI examples use both. A plain interpreter (python3, node) has neither,
//! so the daemon refuses such a snippet up front, naming what it uses,
//! instead of letting it die on an import error.
//!
//! The scan is line-based and deliberately narrow: an import statement of
//! `polyglot` in Python, and an import, `require` or `import()` of an
//! `elide:` specifier in any language (the original embeds JavaScript in
//! Python strings). Comments are skipped; a string that merely contains
//! such a line is the one case it gets wrong.

use crate::language::Language;

/// One use of an Elide-only API in a snippet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElideApiUse {
    /// 1-based line number.
    pub line: usize,
    /// What is used, for people: `the polyglot module` or `"elide:llm"`.
    pub what: String,
}

/// The Elide-only APIs `code` uses, in line order.
pub fn scan(language: Language, code: &str) -> Vec<ElideApiUse> {
    let mut found = Vec::new();
    for (index, raw) in code.lines().enumerate() {
        let line = raw.trim();
        if line.starts_with('#') || line.starts_with("//") {
            continue;
        }
        if language == Language::Python && imports_polyglot(line) {
            found.push(ElideApiUse {
                line: index + 1,
                what: "the polyglot module".to_owned(),
            });
        }
        if let Some(specifier) = elide_specifier(line) {
            found.push(ElideApiUse {
                line: index + 1,
                what: format!("{specifier:?}"),
            });
        }
    }
    found
}

/// The refusal for a snippet that uses Elide-only APIs under `runtime`, or
/// `None` when it uses none.
pub fn refusal(language: Language, code: &str, runtime: &str) -> Option<String> {
    let uses = scan(language, code);
    if uses.is_empty() {
        return None;
    }
    let listed: Vec<String> = uses
        .iter()
        .map(|u| format!("{} (line {})", u.what, u.line))
        .collect();
    Some(format!(
        "code: uses {}, which only the Elide runtime provides; this daemon runs {language} with {runtime}, so polyglot calls and Elide modules (local AI included) are not available",
        listed.join(", ")
    ))
}

fn imports_polyglot(line: &str) -> bool {
    let names_polyglot = |rest: &str| {
        rest == "polyglot"
            || rest.starts_with("polyglot ")
            || rest.starts_with("polyglot.")
            || rest.starts_with("polyglot,")
    };
    if let Some(rest) = line.strip_prefix("import ") {
        return rest.split(',').any(|m| names_polyglot(m.trim()));
    }
    line.strip_prefix("from ")
        .is_some_and(|rest| names_polyglot(rest.trim_start()))
}

/// The `elide:…` specifier a line imports, if any.
fn elide_specifier(line: &str) -> Option<&str> {
    const INTRODUCERS: [&str; 4] = ["from ", "import ", "require(", "import("];
    for introducer in INTRODUCERS {
        let mut rest = line;
        while let Some(at) = rest.find(introducer) {
            let after = rest[at + introducer.len()..].trim_start();
            for quote in ['"', '\''] {
                if let Some(spec) = after.strip_prefix(quote) {
                    if spec.starts_with("elide:") {
                        let end = spec.find(quote).unwrap_or(spec.len());
                        return Some(&spec[..end]);
                    }
                }
            }
            rest = &rest[at + introducer.len()..];
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The original driver's AI example, as its README writes it.
    const AI_EXAMPLE: &str = r#"# AI inference script using Elide's local AI
import polyglot

# Load Elide's AI module via JavaScript
helper = polyglot.eval(language='js', string='''
  import llm from "elide:llm";
  export function infer(prompt) {
'''
"#;

    #[test]
    fn finds_polyglot_and_elide_modules_with_their_lines() {
        assert_eq!(
            scan(Language::Python, AI_EXAMPLE),
            [
                ElideApiUse {
                    line: 2,
                    what: "the polyglot module".into()
                },
                ElideApiUse {
                    line: 6,
                    what: "\"elide:llm\"".into()
                },
            ]
        );
        for js in [
            "const llm = require('elide:llm')",
            "import { x } from \"elide:sqlite\";",
            "const m = await import('elide:llm')",
        ] {
            assert_eq!(scan(Language::JavaScript, js).len(), 1, "{js}");
        }
        for python in [
            "from polyglot import eval",
            "import os, polyglot",
            "import polyglot as pg",
        ] {
            assert_eq!(scan(Language::Python, python).len(), 1, "{python}");
        }
    }

    #[test]
    fn ordinary_code_and_comments_pass() {
        for (language, code) in [
            (
                Language::Python,
                "import polyglotx\nimport os\n# import polyglot\nprint('elide:llm')",
            ),
            (
                Language::JavaScript,
                "// import llm from 'elide:llm'\nconst polyglot = 1;\nimport fs from 'node:fs';",
            ),
            (Language::Python, "from polyglots import x"),
        ] {
            assert_eq!(scan(language, code), [], "{code}");
        }
    }

    #[test]
    fn the_refusal_names_each_use_and_the_runtime() {
        let text = refusal(Language::Python, AI_EXAMPLE, "python3").unwrap();
        assert_eq!(
            text,
            "code: uses the polyglot module (line 2), \"elide:llm\" (line 6), which only the Elide runtime provides; this daemon runs python with python3, so polyglot calls and Elide modules (local AI included) are not available"
        );
        assert_eq!(refusal(Language::Python, "print(1)", "python3"), None);
    }
}
