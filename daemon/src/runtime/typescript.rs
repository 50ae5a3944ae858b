//! TypeScript to JavaScript, in the daemon's own process, with oxc.
//!
//! The transform removes what only the type checker needs (annotations,
//! interfaces, type aliases, `as`, `satisfies`, type-only imports) and
//! lowers what TypeScript adds at run time (enums, namespaces, parameter
//! properties). It does not type-check: like `tsc --noCheck`, `tsx` or
//! node's own type stripping, a program with type errors still runs. Nothing
//! else is lowered: node runs the modern JavaScript that remains.
//!
//! A program with `import` or `export` statements left after the transform
//! is an ES module (node runs it as `.mjs`); any other is CommonJS (`.js`,
//! so `require` works), as node decides for `.mts` and `.cts` files.

use std::path::Path;
use std::sync::Arc;

use tokio::sync::mpsc;

use oxc_allocator::Allocator;
use oxc_ast::ast::Statement;
use oxc_codegen::Codegen;
use oxc_parser::Parser;
use oxc_semantic::SemanticBuilder;
use oxc_span::SourceType;
use oxc_transformer::{TransformOptions, Transformer};

use super::{ExitInfo, Metrics, Program, ProgramControl, ProgramEvent, RuntimeError};
use crate::output::Stream;

/// JavaScript made from a TypeScript program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transpiled {
    /// The JavaScript source.
    pub code: String,
    /// Whether it is an ES module (else CommonJS).
    pub is_module: bool,
}

/// Why a TypeScript program could not be turned into JavaScript: the
/// program's own error, reported as a compiler would.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct SyntaxError {
    /// The file name shown to the user.
    pub file: String,
    /// 1-based line of the first error.
    pub line: usize,
    /// 1-based column (in characters) of the first error.
    pub column: usize,
    /// The compiler's message.
    pub message: String,
}

/// Version of the transform, for capabilities.
pub const TRANSPILER: &str = "oxc 0.146";

/// Turns `source` (named `file` in messages) into JavaScript.
pub fn transpile(file: &str, source: &str) -> Result<Transpiled, SyntaxError> {
    let allocator = Allocator::default();
    let source_type = SourceType::ts();
    let parsed = Parser::new(&allocator, source, source_type).parse();
    if let Some(error) = parsed.diagnostics.errors().next() {
        return Err(syntax_error(file, source, error));
    }
    let mut program = parsed.program;
    // Enum member values are evaluated at compile time, as tsc does.
    let semantic = SemanticBuilder::new().with_enum_eval(true).build(&program);
    if let Some(error) = semantic.diagnostics.errors().next() {
        return Err(syntax_error(file, source, error));
    }
    let scoping = semantic.semantic.into_scoping();
    let options = TransformOptions::from_target("esnext").unwrap_or_default();
    let transformed = Transformer::new(&allocator, Path::new(file), &options)
        .build_with_scoping(scoping, &mut program);
    if let Some(error) = transformed.diagnostics.errors().next() {
        return Err(syntax_error(file, source, error));
    }
    let is_module = program.body.iter().any(is_runtime_module_statement);
    if !is_module {
        // Node would still take an empty `export {}` for module syntax.
        program
            .body
            .retain(|statement| !statement.is_module_declaration());
    }
    let code = Codegen::new().build(&program).code;
    Ok(Transpiled { code, is_module })
}

/// An `import` or `export` that remains in the JavaScript. An empty
/// `export {}` (what remains of a file whose imports were all type-only)
/// does not make a module.
fn is_runtime_module_statement(statement: &Statement<'_>) -> bool {
    match statement {
        Statement::ExportNamedDeclaration(export) => !export.specifiers.is_empty(),
        other => other.is_module_declaration(),
    }
}

fn syntax_error(file: &str, source: &str, error: &oxc_diagnostics::OxcDiagnostic) -> SyntaxError {
    let offset = error
        .labels
        .iter()
        .map(|label| label.offset() as usize)
        .min()
        .unwrap_or(0)
        .min(source.len());
    let before = source.get(..offset).unwrap_or(source);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    SyntaxError {
        file: file.to_string(),
        line,
        column,
        message: error.message.to_string(),
    }
}

/// The program that a TypeScript syntax error leaves: it prints the error
/// on stderr and exits with 1, as a compiler run would, without starting a
/// process. The scratch directory is removed as after any program.
pub fn failed_program(error: &SyntaxError, scratch_dir: &Path) -> Program {
    if let Err(e) = std::fs::remove_dir_all(scratch_dir) {
        tracing::debug!(error = %e, "removing the scratch directory failed");
    }
    let (tx, events) = mpsc::channel(2);
    // The channel has room for both events.
    let _ = tx.try_send(ProgramEvent::Output(
        Stream::Stderr,
        format!("{error}\n").into_bytes(),
    ));
    let _ = tx.try_send(ProgramEvent::Exited(ExitInfo::Code(1)));
    Program {
        events,
        control: Arc::new(NoProcess),
        warm: false,
    }
}

/// Control of a program that never had a process.
struct NoProcess;

impl ProgramControl for NoProcess {
    fn signal(&self, _: nix::sys::signal::Signal) -> Result<(), RuntimeError> {
        Ok(())
    }

    fn metrics(&self) -> Metrics {
        Metrics::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_go_and_enums_and_namespaces_become_javascript() {
        let out = transpile(
            "a.ts",
            "interface P { x: number }\ntype Id = string;\nenum Color { Red, Green = 5 }\n\
             namespace NS { export const v: number = 1 }\n\
             const p: P = { x: 1 } satisfies P;\nconsole.log(p.x as number, Color.Green, NS.v);\n",
        )
        .unwrap();
        assert!(!out.is_module, "{}", out.code);
        assert!(!out.code.contains("interface"), "{}", out.code);
        assert!(!out.code.contains("satisfies"), "{}", out.code);
        assert!(out.code.contains("Green"), "{}", out.code);
    }

    #[test]
    fn only_runtime_imports_make_a_module() {
        assert!(
            !transpile("a.ts", "import type { X } from './x';\nlet y: X;\n")
                .unwrap()
                .is_module
        );
        assert!(
            transpile("a.ts", "import fs from 'node:fs';\nconsole.log(fs);\n")
                .unwrap()
                .is_module
        );
        assert!(
            transpile("a.ts", "export const a = 1;\n")
                .unwrap()
                .is_module
        );
    }

    #[test]
    fn a_syntax_error_names_file_line_and_column() {
        let err = transpile("main.ts", "const a = 1;\nlet b: number = (;\n").unwrap_err();
        assert_eq!(
            (err.file.as_str(), err.line, err.column),
            ("main.ts", 2, 18),
            "{err}"
        );
        assert!(err.to_string().starts_with("main.ts:2:18: "), "{err}");
    }
}
