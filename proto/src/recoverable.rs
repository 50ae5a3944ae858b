//! gRPC error statuses carrying Nomad's `RecoverableError` detail, the only
//! structured error the Nomad client understands (StartTask, TaskStats),
//! written once for both ends: the plugin writes it with
//! [`with_recoverable`], and every client here (`elide-run`, the end-to-end
//! harness, the simulation's fake agent) reads it with [`recoverable_flag`]
//! as Nomad's client does (`plugins/drivers/utils.go`).
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

/// Reads the `RecoverableError` flag back out of a status, as Nomad's
/// client does; `None` when there is no such detail or its code does not
/// match the status code.
pub fn recoverable_flag(status: &tonic::Status) -> Option<bool> {
    let body = RpcStatus::decode(status.details()).ok()?;
    if body.code != status.code() as i32 {
        return None;
    }
    let detail = body.details.first()?;
    if detail.type_url != RECOVERABLE_ERROR_TYPE_URL {
        return None;
    }
    RecoverableError::decode(detail.value.as_slice())
        .ok()
        .map(|e| e.recoverable)
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

    #[test]
    fn flag_round_trips_both_ways() {
        let recoverable = with_recoverable(tonic::Code::Unknown, "x", true);
        let fatal = with_recoverable(tonic::Code::InvalidArgument, "x", false);
        assert_eq!(recoverable_flag(&recoverable), Some(true));
        assert_eq!(recoverable_flag(&fatal), Some(false));
        assert_eq!(recoverable_flag(&tonic::Status::internal("plain")), None);
    }

    #[test]
    fn mismatched_code_is_not_read() {
        let body = RpcStatus {
            code: tonic::Code::Internal as i32,
            message: "x".into(),
            details: vec![],
        };
        let status =
            tonic::Status::with_details(tonic::Code::NotFound, "x", body.encode_to_vec().into());
        assert_eq!(recoverable_flag(&status), None);
    }
}
