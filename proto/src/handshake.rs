//! go-plugin's process contract as Nomad uses it, written once for both
//! ends: the magic cookie and protocol versions a Nomad client sets in the
//! plugin's environment, and the handshake line the plugin prints on
//! stdout once it serves (`CORE|APP|unix|SOCKET|grpc|`), with the parser a
//! client checks it with. The plugin writes the line with
//! [`handshake_line`]; `elide-run`, the end-to-end harness and the
//! simulation read it with [`parse_handshake`]; a test below holds the two
//! to each other.

use std::path::{Path, PathBuf};

/// Environment variable holding Nomad's magic cookie.
pub const MAGIC_COOKIE_KEY: &str = "NOMAD_PLUGIN_MAGIC_COOKIE";
/// Nomad's magic cookie value (`plugins/base/plugin.go`).
pub const MAGIC_COOKIE_VALUE: &str =
    "e4327c2e01eabfd75a8a67adb114fb34a757d57eee7728d857a8cec6e91a7255";
/// go-plugin's core protocol version.
pub const CORE_PROTOCOL_VERSION: u32 = 1;
/// Nomad's plugin (application) protocol version.
pub const APP_PROTOCOL_VERSION: u32 = 2;

/// Why a handshake line is not one a Nomad client accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// Fewer than five `|`-separated fields, or more than six.
    #[error("expected 5 or 6 |-separated fields, got {0:?}")]
    Shape(String),
    /// A protocol version other than the one Nomad speaks.
    #[error("incompatible {what} version {got:?} (want {want})")]
    Version {
        /// Which version field.
        what: &'static str,
        /// What the line says.
        got: String,
        /// What Nomad speaks.
        want: u32,
    },
    /// A network other than a unix socket.
    #[error("unsupported network {0:?} (want unix)")]
    Network(String),
    /// A protocol other than gRPC.
    #[error("unsupported plugin protocol {0:?} (want grpc)")]
    Protocol(String),
    /// An AutoMTLS certificate, which Nomad never asks for.
    #[error("the plugin sent an AutoMTLS certificate, which Nomad never requests")]
    Certificate,
    /// The socket path is relative.
    #[error("socket path {0:?} is not absolute")]
    RelativeSocket(String),
}

/// The handshake line for a unix socket, newline included. The empty sixth
/// field is the (absent) AutoMTLS certificate, as Go plugins print it.
pub fn handshake_line(socket: &Path) -> String {
    format!(
        "{CORE_PROTOCOL_VERSION}|{APP_PROTOCOL_VERSION}|unix|{}|grpc|\n",
        socket.display()
    )
}

/// Checks a handshake line as go-plugin's client does (plus the checks that
/// keep a Nomad client safe) and returns the socket path.
pub fn parse_handshake(line: &str) -> Result<PathBuf, HandshakeError> {
    let line = line.trim_end_matches(['\n', '\r']);
    let parts: Vec<&str> = line.split('|').collect();
    if !(5..=6).contains(&parts.len()) {
        return Err(HandshakeError::Shape(line.to_owned()));
    }
    for (what, got, want) in [
        ("core API", parts[0], CORE_PROTOCOL_VERSION),
        ("API", parts[1], APP_PROTOCOL_VERSION),
    ] {
        if got != want.to_string() {
            return Err(HandshakeError::Version {
                what,
                got: got.to_owned(),
                want,
            });
        }
    }
    if parts[2] != "unix" {
        return Err(HandshakeError::Network(parts[2].to_owned()));
    }
    if parts[4] != "grpc" {
        return Err(HandshakeError::Protocol(parts[4].to_owned()));
    }
    if parts.get(5).is_some_and(|cert| !cert.is_empty()) {
        return Err(HandshakeError::Certificate);
    }
    let socket = PathBuf::from(parts[3]);
    if !socket.is_absolute() {
        return Err(HandshakeError::RelativeSocket(parts[3].to_owned()));
    }
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_the_plugin_writes_is_the_line_a_client_accepts() {
        let line = handshake_line(Path::new("/tmp/plugin42"));
        assert_eq!(line, "1|2|unix|/tmp/plugin42|grpc|\n");
        assert_eq!(parse_handshake(&line), Ok(PathBuf::from("/tmp/plugin42")));
    }

    #[test]
    fn lines_a_nomad_client_would_refuse_are_refused_naming_why() {
        for (line, want) in [
            (
                "1|2|unix|/tmp/p",
                HandshakeError::Shape("1|2|unix|/tmp/p".into()),
            ),
            (
                "1|2|unix|/tmp/p|grpc||mux",
                HandshakeError::Shape("1|2|unix|/tmp/p|grpc||mux".into()),
            ),
            (
                "2|2|unix|/tmp/p|grpc|",
                HandshakeError::Version {
                    what: "core API",
                    got: "2".into(),
                    want: 1,
                },
            ),
            (
                "1|1|unix|/tmp/p|grpc|",
                HandshakeError::Version {
                    what: "API",
                    got: "1".into(),
                    want: 2,
                },
            ),
            (
                "1|2|tcp|127.0.0.1:1|grpc|",
                HandshakeError::Network("tcp".into()),
            ),
            (
                "1|2|unix|/tmp/p|netrpc|",
                HandshakeError::Protocol("netrpc".into()),
            ),
            ("1|2|unix|/tmp/p|grpc|CERT", HandshakeError::Certificate),
            (
                "1|2|unix|plugin42|grpc|",
                HandshakeError::RelativeSocket("plugin42".into()),
            ),
        ] {
            assert_eq!(parse_handshake(line), Err(want), "{line}");
        }
        // A line without the empty certificate field is fine.
        assert_eq!(
            parse_handshake("1|2|unix|/tmp/p|grpc"),
            Ok(PathBuf::from("/tmp/p"))
        );
    }
}
