//! Workspace rules checked on the source (ARCHITECTURE.md, "Invariants"),
//! so a change that breaks one fails here rather than in review.

use std::path::{Path, PathBuf};

/// Most production lines a source file may have.
const MAX_PRODUCTION_LINES: usize = 700;

/// Files still over the limit, each with the ceiling it may not grow past.
/// The list may only shrink: a file brought under the limit must leave it.
const OVER_THE_LIMIT: &[(&str, usize)] = &[("daemon/src/runtime/process.rs", 797)];

/// The only file modules a crate may make public: shared vocabularies that
/// read best by path (`go_duration::parse`, `handshake::…`), each of which
/// is the whole of its contract. Everything else is private behind the
/// crate root's `pub use` list, so the compiler reports what nothing uses.
const PUBLIC_MODULES: &[&str] = &[
    "proto/src/lib.rs: go_duration",
    "proto/src/lib.rs: handshake",
    "proto/src/lib.rs: intrinsics",
    "proto/src/lib.rs: recoverable",
    "proto/src/lib.rs: wall_clock",
    "cty/src/lib.rs: value",
    // The end-to-end harness, until its facade lands.
    "tests/src/lib.rs: binaries",
    "tests/src/lib.rs: cty",
    "tests/src/lib.rs: daemon",
    "tests/src/lib.rs: daemon_api",
    "tests/src/lib.rs: logmon",
    "tests/src/lib.rs: nomad",
    "tests/src/lib.rs: nomad_client",
    "tests/src/lib.rs: procs",
];

/// Where wall-clock time may be read: the one clock seam, whose
/// implementations the simulation replaces.
const WALL_CLOCK_SEAM: &str = "proto/src/wall_clock.rs";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is inside the workspace")
        .to_path_buf()
}

/// Every `.rs` file below `dir`, relative to the workspace, sorted.
fn sources(dir: &str) -> Vec<(String, String)> {
    let root = workspace();
    let mut found = Vec::new();
    let mut pending = vec![root.join(dir)];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("source dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("source file");
                let relative = path
                    .strip_prefix(&root)
                    .expect("inside the workspace")
                    .display()
                    .to_string();
                found.push((relative, text));
            }
        }
    }
    found.sort();
    found
}

/// Lines before the file's first `#[cfg(test)]`.
fn production_lines(text: &str) -> usize {
    text.lines()
        .take_while(|l| !l.trim_start().starts_with("#[cfg(test)]"))
        .count()
}

const CRATES: &[&str] = &[
    "proto/src",
    "cty/src",
    "nomad-client/src",
    "daemon/src",
    "driver/src",
    "runner/src",
    "sim/src",
    "tests/src",
    "benches/src",
];

#[test]
fn no_production_file_is_over_the_line_limit() {
    let mut over = Vec::new();
    for dir in CRATES {
        for (path, text) in sources(dir) {
            let lines = production_lines(&text);
            let ceiling = OVER_THE_LIMIT
                .iter()
                .find(|(p, _)| *p == path)
                .map_or(MAX_PRODUCTION_LINES, |(_, c)| *c);
            if lines > ceiling {
                over.push(format!("{path}: {lines} lines (at most {ceiling})"));
            }
        }
    }
    assert_eq!(over, Vec::<String>::new(), "files over their line limit");
}

#[test]
fn the_known_offenders_are_still_over_the_limit() {
    for (path, _) in OVER_THE_LIMIT {
        let text = std::fs::read_to_string(workspace().join(path)).expect(path);
        assert!(
            production_lines(&text) > MAX_PRODUCTION_LINES,
            "{path} is under {MAX_PRODUCTION_LINES} lines now: take it off OVER_THE_LIMIT"
        );
    }
}

/// Whether `code` names std's `Instant` (`std::time::Instant`, or
/// `Instant` inside a `use std::time::{…}` group).
fn uses_std_instant(code: &str) -> bool {
    code.contains("std::time::Instant")
        || code.match_indices("std::time::{").any(|(at, _)| {
            let group = &code[at..];
            let group = &group[..group.find('}').unwrap_or(group.len())];
            group
                .split(|c: char| !c.is_alphanumeric() && c != '_')
                .any(|word| word == "Instant")
        })
}

#[test]
fn driver_and_daemon_read_time_only_through_their_seams() {
    let mut found = Vec::new();
    for dir in ["proto/src", "driver/src", "daemon/src"] {
        for (path, text) in sources(dir) {
            let code = &text[..text.find("#[cfg(test)]").unwrap_or(text.len())];
            // The simulation runs this code on tokio's clock: std's
            // monotonic clock would not follow it.
            if uses_std_instant(code) {
                found.push(format!("{path}: std::time::Instant"));
            }
            if code.contains("SystemTime::now") && path != WALL_CLOCK_SEAM {
                found.push(format!("{path}: SystemTime::now outside the clock seam"));
            }
        }
    }
    assert_eq!(found, Vec::<String>::new());
}

#[test]
fn modules_are_private_behind_the_crate_roots() {
    let mut found = Vec::new();
    for dir in CRATES {
        for (path, text) in sources(dir) {
            for line in text.lines() {
                let Some(name) = line
                    .trim_start()
                    .strip_prefix("pub mod ")
                    .and_then(|rest| rest.strip_suffix(';'))
                else {
                    continue;
                };
                let entry = format!("{path}: {name}");
                if !PUBLIC_MODULES.contains(&entry.as_str()) {
                    found.push(entry);
                }
            }
        }
    }
    assert_eq!(
        found,
        Vec::<String>::new(),
        "public file modules: make them private and re-export what other crates use"
    );
}

#[test]
fn no_module_is_a_grab_bag() {
    let mut found = Vec::new();
    for dir in CRATES {
        for (path, _) in sources(dir) {
            let stem = Path::new(&path)
                .file_stem()
                .unwrap()
                .to_string_lossy()
                .to_string();
            if ["utils", "util", "helpers", "misc", "common"].contains(&stem.as_str()) {
                found.push(path);
            }
        }
    }
    assert_eq!(found, Vec::<String>::new(), "name a module for what it is");
}

#[test]
fn only_the_nomad_client_library_launches_plugins() {
    // The go-plugin client side (the plugin's environment, the handshake
    // read) is written once, in `nomad-client`; the plugin (`driver/`)
    // reads and scrubs the same variables.
    let mut found = Vec::new();
    for dir in CRATES {
        for (path, text) in sources(dir) {
            let code = &text[..text.find("#[cfg(test)]").unwrap_or(text.len())];
            let owner = path.starts_with("nomad-client/") || path.starts_with("driver/");
            if !owner && code.contains("\"PLUGIN_UNIX_SOCKET_DIR\"") {
                found.push(path);
            }
        }
    }
    assert_eq!(found, Vec::<String>::new());
}

/// A crate's top-level modules (`src/<name>.rs` or `src/<name>/…`), each
/// with the top-level modules its production code names as `crate::<m>`
/// (comments aside).
fn module_imports(
    dir: &str,
) -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    let mut graph = std::collections::BTreeMap::new();
    for (path, text) in sources(dir) {
        let relative = path
            .strip_prefix(&format!("{dir}/"))
            .expect("inside the crate");
        if relative.starts_with("bin/") || relative == "lib.rs" {
            continue;
        }
        let module = relative
            .split('/')
            .next()
            .unwrap()
            .trim_end_matches(".rs")
            .to_owned();
        let code = &text[..text.find("#[cfg(test)]").unwrap_or(text.len())];
        let names: &mut std::collections::BTreeSet<String> =
            graph.entry(module.clone()).or_default();
        for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for (at, _) in line.match_indices("crate::") {
                let name: String = line[at + "crate::".len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                if !name.is_empty() && name != module {
                    names.insert(name);
                }
            }
        }
    }
    graph
}

#[test]
fn no_crate_has_an_import_cycle_between_its_modules() {
    let mut cycles = Vec::new();
    for dir in CRATES {
        let graph = module_imports(dir);
        // A module is in a cycle when it can reach itself.
        for start in graph.keys() {
            let mut seen = std::collections::BTreeSet::new();
            let mut pending: Vec<&String> = graph[start].iter().collect();
            while let Some(next) = pending.pop() {
                if next == start {
                    cycles.push(format!("{dir}: {start}"));
                    break;
                }
                if seen.insert(next.clone()) {
                    pending.extend(graph.get(next).into_iter().flatten());
                }
            }
        }
    }
    assert_eq!(
        cycles,
        Vec::<String>::new(),
        "modules that import themselves through others: move the shared part down"
    );
}
