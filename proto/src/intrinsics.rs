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

/// Whether `name` is a known intrinsic (exact match).
pub fn is_known(name: &str) -> bool {
    INTRINSICS.iter().any(|i| i.name == name)
}

/// The known names, comma-separated, for error messages.
pub fn known_names() -> String {
    INTRINSICS
        .iter()
        .map(|i| i.name)
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
}
