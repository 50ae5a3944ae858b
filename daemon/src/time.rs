//! Conversions to protobuf time types. Wall-clock time itself comes from
//! the one seam, `elide_proto::wall_clock`.

use std::time::{Duration, SystemTime};

/// A protobuf timestamp for `t`.
pub fn proto_timestamp(t: SystemTime) -> prost_types::Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// A std duration from a protobuf one; negative or malformed values are an
/// error naming `field`.
pub fn std_duration(d: &prost_types::Duration, field: &str) -> Result<Duration, String> {
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return Err(format!(
            "{field} must be a non-negative duration, got {}s {}ns",
            d.seconds, d.nanos
        ));
    }
    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
}
