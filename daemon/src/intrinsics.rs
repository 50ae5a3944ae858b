//! Intrinsics: named capabilities a session may grant to its snippets.
//!
//! Names come in two spellings, both accepted everywhere: the canonical
//! ones (`console`, `fs.read`, …) and the original Elide driver's (`io`,
//! `fs`, `http`, …), which map onto canonical grants
//! ([`elide_proto::intrinsics::resolve`]). Sessions keep the names as
//! given; the rules compare what they grant.

pub use elide_proto::intrinsics::INTRINSICS;

use elide_proto::elide::daemon::v1 as pb;
use elide_proto::intrinsics::{NameError, ORIGINAL_NAMES};

use crate::error::DaemonError;
use crate::runtime::sandbox::Enforcement;

/// Why `ai` cannot be granted by a daemon without local AI.
pub const NO_LOCAL_AI: &str =
    "local AI needs the Elide runtime, which this daemon does not have (GetCapabilities.ai_available = false)";

/// The canonical intrinsics `names` grant together; `field` names the list
/// in errors. An unknown name is INVALID_ARGUMENT; a name this runtime
/// refuses (`sqlite`) is FAILED_PRECONDITION.
pub fn granted(names: &[String], field: &str) -> Result<Vec<&'static str>, DaemonError> {
    elide_proto::intrinsics::grants_of(names.iter().map(String::as_str)).map_err(|e| match e {
        NameError::Unknown(_) => DaemonError::InvalidArgument(format!("{field}: {e}")),
        NameError::Refused { .. } => DaemonError::FailedPrecondition(format!("{field}: {e}")),
    })
}

/// Refuses a grant of `ai` when the daemon has no local AI, naming the
/// name that asked for it (`ai` itself, whatever spelling).
pub fn check_ai_grant(
    names: &[String],
    field: &str,
    ai_available: bool,
) -> Result<(), DaemonError> {
    if ai_available {
        return Ok(());
    }
    for name in names {
        if granted(std::slice::from_ref(name), field)?.contains(&"ai") {
            return Err(DaemonError::FailedPrecondition(format!(
                "{field}: intrinsic {name:?} cannot be granted: {NO_LOCAL_AI}"
            )));
        }
    }
    Ok(())
}

/// `GetCapabilities.intrinsics`: every canonical intrinsic, then every
/// original name that is not also canonical, each with what it grants,
/// why it is refused when it is, and how `enforcement` (of a canonical
/// name) says denying it is enforced; an original name is enforced when
/// all it grants is.
pub fn describe(
    enforcement: impl Fn(&str) -> Enforcement,
    ai_available: bool,
) -> Vec<pb::IntrinsicInfo> {
    let enforced_all = |grants: &[&str]| {
        let each: Vec<Enforcement> = grants.iter().map(|g| enforcement(g)).collect();
        let mut details: Vec<String> = Vec::new();
        for e in &each {
            if !details.contains(&e.detail) {
                details.push(e.detail.clone());
            }
        }
        (
            !each.is_empty() && each.iter().all(|e| e.enforced),
            details.join("; "),
        )
    };
    let refusal = |grants: &[&str]| {
        if !ai_available && grants.contains(&"ai") {
            NO_LOCAL_AI.to_owned()
        } else {
            String::new()
        }
    };
    let canonical = INTRINSICS.iter().map(|i| {
        let (enforced, enforcement) = enforced_all(&[i.name]);
        pb::IntrinsicInfo {
            name: i.name.into(),
            description: i.description.into(),
            multi_tenant_safe: i.multi_tenant_safe,
            enforced,
            grants: vec![i.name.into()],
            unavailable_reason: refusal(&[i.name]),
            enforcement,
        }
    });
    let original = ORIGINAL_NAMES
        .iter()
        .filter(|o| !elide_proto::intrinsics::is_known(o.name))
        .map(|o| {
            let unavailable_reason = match o.refused {
                Some(reason) => reason.to_owned(),
                None => refusal(o.grants),
            };
            let (enforced, enforcement) = enforced_all(o.grants);
            pb::IntrinsicInfo {
                name: o.name.into(),
                description: if o.grants.is_empty() {
                    "original Elide name; not available here".to_owned()
                } else {
                    format!("original Elide name for {}", o.grants.join(" + "))
                },
                multi_tenant_safe: o.grants.iter().all(|g| {
                    INTRINSICS
                        .iter()
                        .any(|i| i.name == *g && i.multi_tenant_safe)
                }),
                enforced,
                grants: o.grants.iter().map(|g| (*g).to_owned()).collect(),
                unavailable_reason,
                enforcement,
            }
        });
    canonical.chain(original).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn both_spellings_are_listed_with_their_grants() {
        let infos = describe(
            |name| Enforcement {
                enforced: name == "fs.read" || name == "fs.write",
                detail: format!("{name} rule"),
            },
            false,
        );
        let find = |name: &str| infos.iter().find(|i| i.name == name).unwrap();
        assert_eq!(find("fs.read").grants, ["fs.read"]);
        assert_eq!(find("fs").grants, ["fs.read", "fs.write"]);
        assert_eq!(find("io").grants, ["console"]);
        assert_eq!(find("http").grants, ["net"]);
        assert!(!find("fs").multi_tenant_safe && find("io").multi_tenant_safe);
        assert!(find("sqlite").grants.is_empty());
        assert!(find("sqlite").unavailable_reason.contains("SQLite"));
        assert!(find("ai").unavailable_reason.contains("Elide runtime"));
        assert_eq!(find("console").unavailable_reason, "");
        // `env` and `ai` are both canonical and original: listed once.
        assert_eq!(infos.iter().filter(|i| i.name == "env").count(), 1);
        assert_eq!(infos.len(), INTRINSICS.len() + 4);
        assert!(find("fs").enforced && find("fs.read").enforced && !find("net").enforced);
        assert_eq!(find("fs").enforcement, "fs.read rule; fs.write rule");
        assert!(!find("sqlite").enforced && !find("io").enforced);
        let all = |_: &str| Enforcement {
            enforced: true,
            detail: String::new(),
        };
        assert_eq!(
            describe(all, true)
                .iter()
                .find(|i| i.name == "ai")
                .unwrap()
                .unavailable_reason,
            ""
        );
    }

    #[test]
    fn unknown_and_refused_names_get_their_codes_and_the_field() {
        let err = granted(&names(&["io", "teleport"]), "config.enabled_intrinsics").unwrap_err();
        assert!(matches!(err, DaemonError::InvalidArgument(_)), "{err:?}");
        assert!(
            err.to_string()
                .starts_with("config.enabled_intrinsics: unknown intrinsic \"teleport\""),
            "{err}"
        );
        let err = granted(&names(&["sqlite"]), "config.enabled_intrinsics").unwrap_err();
        assert!(matches!(err, DaemonError::FailedPrecondition(_)), "{err:?}");
        assert!(err.to_string().contains("\"sqlite\""), "{err}");
        let err =
            check_ai_grant(&names(&["io", "ai"]), "config.enabled_intrinsics", false).unwrap_err();
        assert!(matches!(err, DaemonError::FailedPrecondition(_)), "{err:?}");
        assert!(
            err.to_string()
                .starts_with("config.enabled_intrinsics: intrinsic \"ai\" cannot be granted"),
            "{err}"
        );
        check_ai_grant(&names(&["ai"]), "f", true).unwrap();
        check_ai_grant(&names(&["io", "fs"]), "f", false).unwrap();
    }
}
