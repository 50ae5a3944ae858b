//! What a task's end and a plugin's error mean on the client's side.

use elide_proto::hashicorp::nomad::plugins::drivers::proto::WaitTaskResponse;
use prost::Message;

/// The exit code of a process that ran the task, from `WaitTask`'s answer:
/// the task's own code; else 128 + the signal that ended it, as a shell
/// reports it; else 1 when the driver reported an error (a task whose real
/// code is unknown, reported as -1, also maps to 1: a process cannot exit
/// negative); else 0.
pub fn exit_code(response: &WaitTaskResponse) -> i32 {
    let result = response.result.unwrap_or_default();
    if result.exit_code > 0 {
        result.exit_code
    } else if result.signal != 0 {
        128 + result.signal
    } else if result.exit_code < 0 || !response.err.is_empty() {
        1
    } else {
        0
    }
}

/// `google.rpc.Status`, as Nomad's client decodes a plugin error's
/// `grpc-status-details-bin` trailer (`status.Convert(err).Details()`).
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<prost_types::Any>,
}

/// `hashicorp.nomad.plugins.shared.structs.RecoverableError`: one bool.
#[derive(Clone, PartialEq, prost::Message)]
struct RecoverableError {
    #[prost(bool, tag = "1")]
    recoverable: bool,
}

/// Nomad's reading of a plugin error (`plugins/drivers/client.go`,
/// `StartTask`): when the first detail is a `RecoverableError`, whether the
/// task may be retried under its restart policy; `None` when the error
/// carries no such detail, which Nomad treats as not recoverable. grpc-go
/// drops the details of a status whose encoded code differs from the
/// status code, so such a detail is not seen either.
pub fn recoverable(status: &tonic::Status) -> Option<bool> {
    const TYPE_URL: &str =
        "type.googleapis.com/hashicorp.nomad.plugins.shared.structs.RecoverableError";
    let body = RpcStatus::decode(status.details()).ok()?;
    if body.code != status.code() as i32 {
        return None;
    }
    let first = body.details.first()?;
    if first.type_url != TYPE_URL {
        return None;
    }
    RecoverableError::decode(first.value.as_slice())
        .ok()
        .map(|e| e.recoverable)
}

#[cfg(test)]
mod tests {
    use super::*;
    use elide_proto::hashicorp::nomad::plugins::drivers::proto::ExitResult;

    fn wait(exit_code: i32, signal: i32, err: &str) -> WaitTaskResponse {
        WaitTaskResponse {
            result: Some(ExitResult {
                exit_code,
                signal,
                oom_killed: false,
            }),
            err: err.into(),
        }
    }

    #[test]
    fn exit_codes_follow_the_wait_result() {
        assert_eq!(exit_code(&wait(3, 0, "")), 3);
        assert_eq!(exit_code(&wait(0, 15, "")), 143);
        assert_eq!(exit_code(&wait(0, 0, "boom")), 1);
        assert_eq!(exit_code(&wait(-1, 0, "execution lost")), 1);
        assert_eq!(exit_code(&wait(0, 0, "")), 0);
        assert_eq!(exit_code(&WaitTaskResponse::default()), 0);
    }

    #[test]
    fn the_plugins_recoverable_detail_is_read_as_nomad_reads_it() {
        for flag in [true, false] {
            let status = elide_proto::recoverable::with_recoverable(
                tonic::Code::FailedPrecondition,
                "daemon busy",
                flag,
            );
            assert_eq!(recoverable(&status), Some(flag));
        }
        assert_eq!(recoverable(&tonic::Status::unavailable("down")), None);
    }

    #[test]
    fn a_detail_under_another_code_or_type_is_not_seen() {
        let any = |type_url: &str| prost_types::Any {
            type_url: type_url.into(),
            value: RecoverableError { recoverable: true }.encode_to_vec(),
        };
        let status_with = |code: tonic::Code, encoded_code: tonic::Code, type_url: &str| {
            let body = RpcStatus {
                code: encoded_code as i32,
                message: "m".into(),
                details: vec![any(type_url)],
            };
            tonic::Status::with_details(code, "m", body.encode_to_vec().into())
        };
        let url = "type.googleapis.com/hashicorp.nomad.plugins.shared.structs.RecoverableError";
        use tonic::Code::{Internal, Unavailable};
        assert_eq!(
            recoverable(&status_with(Unavailable, Unavailable, url)),
            Some(true)
        );
        assert_eq!(recoverable(&status_with(Unavailable, Internal, url)), None);
        assert_eq!(
            recoverable(&status_with(
                Unavailable,
                Unavailable,
                "type.googleapis.com/x.Y"
            )),
            None
        );
    }
}
