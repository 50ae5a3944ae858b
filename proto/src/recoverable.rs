//! gRPC error statuses carrying Nomad's `RecoverableError` detail, the only
//! structured error the Nomad client understands (StartTask, TaskStats),
//! as the plugin writes it ([`with_recoverable`]). Clients read it with
//! `elide_nomad_client::recoverable`, written from Nomad's client rather
//! than from this writer, so a mistake here cannot hide itself.
//!
//! The detail travels as an encoded `google.rpc.Status` in the
//! `grpc-status-details-bin` trailer. Its `code` must equal the gRPC status
//! code: grpc-go replaces a mismatch with INTERNAL and drops the detail.

use crate::hashicorp::nomad::plugins::shared::structs::RecoverableError;
use prost::Message;

/// Type URL of the `RecoverableError` detail, as Nomad's client expects it.
pub const RECOVERABLE_ERROR_TYPE_URL: &str =
    "type.googleapis.com/hashicorp.nomad.plugins.shared.structs.RecoverableError";

/// `google.rpc.Status`, written by hand: it is three fields and the only
/// message of its package we need.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RpcStatus {
    /// The gRPC status code.
    #[prost(int32, tag = "1")]
    pub code: i32,
    /// The developer-facing message.
    #[prost(string, tag = "2")]
    pub message: String,
    /// Typed details.
    #[prost(message, repeated, tag = "3")]
    pub details: Vec<prost_types::Any>,
}

/// A status whose details say whether Nomad may retry (`recoverable =
/// true`: restart per the task's restart policy) or not.
pub fn with_recoverable(
    code: tonic::Code,
    message: impl Into<String>,
    recoverable: bool,
) -> tonic::Status {
    let message = message.into();
    let detail = prost_types::Any {
        type_url: RECOVERABLE_ERROR_TYPE_URL.to_owned(),
        value: RecoverableError { recoverable }.encode_to_vec(),
    };
    let body = RpcStatus {
        code: code as i32,
        message: message.clone(),
        details: vec![detail],
    };
    tonic::Status::with_details(code, message, body.encode_to_vec().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detail_code_matches_the_status_code() {
        let status = with_recoverable(tonic::Code::FailedPrecondition, "daemon busy", true);
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert_eq!(status.message(), "daemon busy");
        let body = RpcStatus::decode(status.details()).unwrap();
        assert_eq!(body.code, 9);
        assert_eq!(body.message, "daemon busy");
        assert_eq!(body.details.len(), 1);
        assert_eq!(body.details[0].type_url, RECOVERABLE_ERROR_TYPE_URL);
        // RecoverableError{recoverable: true} is field 1, varint 1.
        assert_eq!(body.details[0].value, vec![0x08, 0x01]);
    }
}
