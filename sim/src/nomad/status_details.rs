//! The fake agent's own reading of the plugin's error details, written
//! from Nomad's client (`plugins/drivers/client.go`: `status.Convert(err)`,
//! then `Details()[0].(*proto.RecoverableError)`), not with the project's
//! encoder or decoder: a bug shared by both ends would otherwise be
//! invisible. A tiny protobuf wire reader over `grpc-status-details-bin`.

/// `RecoverableError`'s type URL as grpc-go resolves it.
const RECOVERABLE_TYPE_URL: &str =
    "type.googleapis.com/hashicorp.nomad.plugins.shared.structs.RecoverableError";

/// What Nomad's task runner makes of a failed `StartTask`: `true` when
/// the first detail is a `RecoverableError` with `recoverable = true`.
/// Without that detail the error is not recoverable (Nomad's
/// `structs.IsRecoverable` is false for a plain error), and grpc-go drops
/// the details of a status whose detail code differs from its own.
pub(super) fn recoverable(status: &tonic::Status) -> bool {
    first_detail(status.details(), status.code() as i32)
        .filter(|(type_url, _)| type_url == RECOVERABLE_TYPE_URL)
        .and_then(|(_, value)| bool_field_1(&value))
        .unwrap_or(false)
}

/// `(type_url, value)` of the first `Any` in an encoded `google.rpc.Status`
/// whose `code` (field 1) is `code`.
fn first_detail(bytes: &[u8], code: i32) -> Option<(String, Vec<u8>)> {
    let mut status_code = 0i64;
    let mut first = None;
    for field in Fields(bytes) {
        match field? {
            (1, Value::Varint(v)) => status_code = v as i64,
            (3, Value::Bytes(any)) if first.is_none() => first = Some(any),
            _ => {}
        }
    }
    if status_code != i64::from(code) {
        return None;
    }
    let (mut type_url, mut value) = (String::new(), Vec::new());
    for field in Fields(first?) {
        match field? {
            (1, Value::Bytes(b)) => type_url = String::from_utf8(b.to_vec()).ok()?,
            (2, Value::Bytes(b)) => value = b.to_vec(),
            _ => {}
        }
    }
    Some((type_url, value))
}

/// Field 1 of a message as a bool (absent: false, proto3's default).
fn bool_field_1(bytes: &[u8]) -> Option<bool> {
    let mut flag = false;
    for field in Fields(bytes) {
        if let (1, Value::Varint(v)) = field? {
            flag = v != 0;
        }
    }
    Some(flag)
}

enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

/// The fields of an encoded message; `None` items on malformed input.
struct Fields<'a>(&'a [u8]);

impl<'a> Iterator for Fields<'a> {
    type Item = Option<(u64, Value<'a>)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        let field = self.read_field();
        if field.is_none() {
            self.0 = &[];
        }
        Some(field)
    }
}

impl<'a> Fields<'a> {
    fn varint(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self.0.split_first()?;
            self.0 = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn read_field(&mut self) -> Option<(u64, Value<'a>)> {
        let key = self.varint()?;
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => self.take(8).map(|_| Value::Fixed)?,
            2 => {
                let len = usize::try_from(self.varint()?).ok()?;
                Value::Bytes(self.take(len)?)
            }
            5 => self.take(4).map(|_| Value::Fixed)?,
            _ => return None,
        };
        Some((key >> 3, value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes written by hand from the protobuf encoding rules.
    fn status_bytes(code: u8, type_url: &str, recoverable: bool) -> Vec<u8> {
        let value: Vec<u8> = if recoverable {
            vec![0x08, 0x01]
        } else {
            vec![]
        };
        let mut any = vec![0x0a, type_url.len() as u8];
        any.extend_from_slice(type_url.as_bytes());
        any.extend_from_slice(&[0x12, value.len() as u8]);
        any.extend_from_slice(&value);
        let mut status = vec![0x08, code, 0x12, 0x02, b'n', b'o'];
        status.extend_from_slice(&[0x1a, any.len() as u8]);
        status.extend_from_slice(&any);
        status
    }

    fn with(code: tonic::Code, details: Vec<u8>) -> tonic::Status {
        tonic::Status::with_details(code, "no", details.into())
    }

    #[test]
    fn reads_the_flag_of_the_first_detail() {
        let code = tonic::Code::FailedPrecondition;
        let yes = status_bytes(code as u8, RECOVERABLE_TYPE_URL, true);
        assert!(recoverable(&with(code, yes)));
        let no = status_bytes(code as u8, RECOVERABLE_TYPE_URL, false);
        assert!(!recoverable(&with(code, no)));
    }

    #[test]
    fn without_the_detail_or_with_a_mismatched_code_nothing_is_recoverable() {
        let code = tonic::Code::Unavailable;
        assert!(!recoverable(&tonic::Status::new(code, "plain")));
        let other_type = status_bytes(code as u8, "type.googleapis.com/x.Y", true);
        assert!(!recoverable(&with(code, other_type)));
        let mismatched = status_bytes(tonic::Code::Internal as u8, RECOVERABLE_TYPE_URL, true);
        assert!(!recoverable(&with(code, mismatched)));
        assert!(!recoverable(&with(code, vec![0xff, 0xff])));
    }

    #[test]
    fn agrees_with_what_the_plugin_writes() {
        // The other end, as the plugin encodes it: a disagreement here is a
        // bug on one of the two sides.
        let status = elide_proto::recoverable::with_recoverable(
            tonic::Code::FailedPrecondition,
            "daemon busy",
            true,
        );
        assert!(recoverable(&status));
    }
}
