//! Conversions between [`std::time::Duration`] and protobuf's
//! `google.protobuf.Duration`, in one place so every crate clamps the same
//! way (prost's own `TryFrom` fails where a wire field should saturate).

use std::time::Duration;

/// The largest duration protobuf carries (in prost's representation).
const MAX: prost_types::Duration = prost_types::Duration {
    seconds: i64::MAX,
    nanos: 999_999_999,
};

/// `d` as a protobuf duration, saturating at the largest one representable.
pub fn duration_to_proto(d: Duration) -> prost_types::Duration {
    prost_types::Duration::try_from(d).unwrap_or(MAX)
}

/// `d` as a std duration, reading a negative one as zero: the fields this
/// is for (timeouts, intervals, graces) have no meaning below zero, and a
/// malformed value from a peer must not panic. Code that should reject
/// negative values checks `d.seconds`/`d.nanos` itself.
pub fn duration_from_proto(d: &prost_types::Duration) -> Duration {
    Duration::try_from(*d).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_clamps() {
        let d = Duration::new(3, 250_000_000);
        assert_eq!(duration_from_proto(&duration_to_proto(d)), d);
        assert_eq!(duration_to_proto(Duration::MAX), MAX);
        let negative = prost_types::Duration {
            seconds: -5,
            nanos: 0,
        };
        assert_eq!(duration_from_proto(&negative), Duration::ZERO);
        // Unnormalized nanos carry into seconds rather than panicking.
        let carry = prost_types::Duration {
            seconds: 1,
            nanos: 1_500_000_000,
        };
        assert_eq!(duration_from_proto(&carry), Duration::new(2, 500_000_000));
    }
}
