//! POSIX signal names as the API spells them.

use nix::sys::signal::Signal;

/// A signal name that names no POSIX signal; the request error maps it to
/// INVALID_ARGUMENT (a leaf error, so the runtime can parse names too).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SignalNameError(String);

/// Parses "SIGTERM", "TERM", "sigterm" or "term" into a signal.
pub fn parse_signal(name: &str) -> Result<Signal, SignalNameError> {
    let upper = name.trim().to_ascii_uppercase();
    if upper.is_empty() {
        return Err(SignalNameError("signal name is empty".into()));
    }
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    full.parse::<Signal>().map_err(|_| {
        SignalNameError(format!(
            "unknown signal {name:?}: expected a POSIX signal name such as SIGTERM, SIGINT, SIGUSR1 or SIGKILL"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[rstest::rstest]
    #[case("SIGTERM", Signal::SIGTERM)]
    #[case("term", Signal::SIGTERM)]
    #[case("  SigUsr1 ", Signal::SIGUSR1)]
    #[case("KILL", Signal::SIGKILL)]
    #[case("sighup", Signal::SIGHUP)]
    fn parses_names_in_any_spelling(#[case] name: &str, #[case] want: Signal) {
        assert_eq!(parse_signal(name).unwrap(), want);
    }

    #[rstest::rstest]
    #[case("")]
    #[case("SIGNOPE")]
    #[case("15")]
    fn rejects_unknown_names(#[case] name: &str) {
        let err = crate::error::DaemonError::from(parse_signal(name).unwrap_err());
        assert!(
            matches!(err, crate::error::DaemonError::InvalidArgument(_)),
            "{err}"
        );
    }
}
