//! Intrinsics: named capabilities a session may grant to its snippets.

use crate::error::DaemonError;

/// One intrinsic the daemon knows.
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

/// Checks that every name is a known intrinsic; `field` names the list in errors.
pub fn validate_intrinsics(names: &[String], field: &str) -> Result<(), DaemonError> {
    for name in names {
        if !INTRINSICS.iter().any(|i| i.name == name) {
            let known: Vec<&str> = INTRINSICS.iter().map(|i| i.name).collect();
            return Err(DaemonError::InvalidArgument(format!(
                "{field}: unknown intrinsic {name:?}; known intrinsics: {}",
                known.join(", ")
            )));
        }
    }
    Ok(())
}
