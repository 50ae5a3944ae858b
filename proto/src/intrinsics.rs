//! Intrinsics: named host capabilities a session may grant its snippets.
//! The one list both the driver (validating configuration) and the daemon
//! (validating sessions, answering `ListIntrinsics`) use.

/// One intrinsic: a named host capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Intrinsic {
    /// Name used in configs.
    pub name: &'static str,
    /// What it grants.
    pub description: &'static str,
    /// Safe to grant when tenants share one daemon.
    pub multi_tenant_safe: bool,
}

/// Every intrinsic, in a stable order.
pub const INTRINSICS: &[Intrinsic] = &[
    Intrinsic {
        name: "console",
        description: "write to stdout and stderr",
        multi_tenant_safe: true,
    },
    Intrinsic {
        name: "env",
        description: "read the execution's environment variables",
        multi_tenant_safe: true,
    },
    Intrinsic {
        name: "fs.read",
        description: "read files visible to the daemon's user",
        multi_tenant_safe: false,
    },
    Intrinsic {
        name: "fs.write",
        description: "create and modify files visible to the daemon's user",
        multi_tenant_safe: false,
    },
    Intrinsic {
        name: "net",
        description: "open network connections",
        multi_tenant_safe: false,
    },
    Intrinsic {
        name: "subprocess",
        description: "start other programs",
        multi_tenant_safe: false,
    },
    Intrinsic {
        name: "ai",
        description: "local AI inference (needs the Elide runtime)",
        multi_tenant_safe: true,
    },
];

/// A name from the original Elide driver's vocabulary (`io, env, fs, http,
/// sqlite, ai`), kept so its configs work as written. Each maps onto the
/// canonical intrinsics it grants, or is refused with a reason where this
/// runtime has no such capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OriginalName {
    pub name: &'static str,
    /// Canonical intrinsics this name grants; empty when refused.
    pub grants: &'static [&'static str],
    /// Why the name cannot be honoured here, when it cannot.
    pub refused: Option<&'static str>,
}

/// The original project's intrinsic names, in its documented order. Names
/// that are also canonical (`env`, `ai`) resolve to themselves.
pub const ORIGINAL_NAMES: &[OriginalName] = &[
    OriginalName {
        name: "io",
        grants: &["console"],
        refused: None,
    },
    OriginalName {
        name: "env",
        grants: &["env"],
        refused: None,
    },
    OriginalName {
        name: "fs",
        grants: &["fs.read", "fs.write"],
        refused: None,
    },
    OriginalName {
        name: "http",
        grants: &["net"],
        refused: None,
    },
    OriginalName {
        name: "sqlite",
        grants: &[],
        refused: Some("this runtime has no SQLite intrinsic (it needs the Elide runtime)"),
    },
    OriginalName {
        name: "ai",
        grants: &["ai"],
        refused: None,
    },
];

/// Why an intrinsic name was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameError {
    /// Neither a canonical nor an original name.
    Unknown(String),
    /// An original name this runtime cannot honour.
    Refused { name: String, reason: &'static str },
}

impl std::fmt::Display for NameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NameError::Unknown(name) => write!(
                f,
                "unknown intrinsic {name:?} (known: {}; original names: {})",
                known_names(),
                original_names()
            ),
            NameError::Refused { name, reason } => {
                write!(f, "intrinsic {name:?} cannot be granted: {reason}")
            }
        }
    }
}

impl std::error::Error for NameError {}

/// The canonical intrinsics `name` grants: itself when canonical, its
/// mapping when it is an original name. Exact, case-sensitive match.
pub fn resolve(name: &str) -> Result<&'static [&'static str], NameError> {
    if let Some(i) = INTRINSICS.iter().find(|i| i.name == name) {
        return Ok(std::slice::from_ref(&i.name));
    }
    match ORIGINAL_NAMES.iter().find(|o| o.name == name) {
        Some(OriginalName {
            refused: Some(reason),
            ..
        }) => Err(NameError::Refused {
            name: name.to_string(),
            reason,
        }),
        Some(o) => Ok(o.grants),
        None => Err(NameError::Unknown(name.to_string())),
    }
}

/// The canonical intrinsics a list of names grants together: each name
/// [`resolve`]d, duplicates dropped, in [`INTRINSICS`] order. The first name
/// that is unknown or refused is the error.
pub fn grants_of<'a>(
    names: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<&'static str>, NameError> {
    let mut granted = Vec::new();
    for name in names {
        granted.extend_from_slice(resolve(name)?);
    }
    Ok(INTRINSICS
        .iter()
        .map(|i| i.name)
        .filter(|n| granted.contains(n))
        .collect())
}

/// Whether `name` is a canonical intrinsic (exact match).
pub fn is_known(name: &str) -> bool {
    INTRINSICS.iter().any(|i| i.name == name)
}

/// The canonical names, comma-separated, for error messages.
pub fn known_names() -> String {
    INTRINSICS
        .iter()
        .map(|i| i.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The original names, comma-separated, for error messages.
pub fn original_names() -> String {
    ORIGINAL_NAMES
        .iter()
        .map(|o| o.name)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_matched_exactly() {
        assert!(is_known("fs.read"));
        assert!(!is_known("fs"));
        assert!(!is_known("FS.READ"));
        assert!(known_names().starts_with("console, env, fs.read"));
    }

    #[test]
    fn original_names_map_onto_canonical_grants() {
        assert_eq!(resolve("io").unwrap(), ["console"]);
        assert_eq!(resolve("env").unwrap(), ["env"]);
        assert_eq!(resolve("fs").unwrap(), ["fs.read", "fs.write"]);
        assert_eq!(resolve("http").unwrap(), ["net"]);
        assert_eq!(resolve("ai").unwrap(), ["ai"]);
        assert_eq!(resolve("fs.write").unwrap(), ["fs.write"]);
        let refused = resolve("sqlite").unwrap_err().to_string();
        assert!(
            refused.contains("\"sqlite\"") && refused.contains("SQLite"),
            "{refused}"
        );
        let unknown = resolve("IO").unwrap_err().to_string();
        assert!(unknown.starts_with("unknown intrinsic \"IO\""), "{unknown}");
        assert!(
            unknown.contains("io, env, fs, http, sqlite, ai"),
            "{unknown}"
        );
    }

    #[test]
    fn grants_of_a_list_are_merged_in_canonical_order() {
        assert_eq!(
            grants_of(["http", "io", "fs.read", "fs"]).unwrap(),
            ["console", "fs.read", "fs.write", "net"]
        );
        assert_eq!(grants_of([]).unwrap(), Vec::<&str>::new());
        assert_eq!(
            grants_of(["io", "sqlite"]).unwrap_err(),
            NameError::Refused {
                name: "sqlite".into(),
                reason: ORIGINAL_NAMES[4].refused.unwrap()
            }
        );
    }

    #[test]
    fn every_grant_is_canonical() {
        for o in ORIGINAL_NAMES {
            for g in o.grants {
                assert!(is_known(g), "{} grants unknown {g}", o.name);
            }
            assert_eq!(o.grants.is_empty(), o.refused.is_some(), "{}", o.name);
        }
    }
}
