//! The one duration grammar of the project: durations written the way
//! Nomad users write them (Go's `time.ParseDuration` syntax): `"30s"`,
//! `"5m"`, `"1h30m"`, `"1.5s"`, `"250ms"`. The plugin config, task configs,
//! job files, `elide-ctl` flags and simulation scenarios all read durations
//! with [`parse`], so a value one accepts the others accept too.

use std::time::Duration;

/// Why a duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a duration like \"30s\", \"5m\" or \"1h30m\"")]
pub struct InvalidDuration(pub String);

/// Parses a sequence of `<decimal><unit>` terms, units `ns`, `us`, `µs`,
/// `ms`, `s`, `m`, `h`. Signs are not accepted: a negative duration never
/// makes sense here.
pub fn parse(text: &str) -> Result<Duration, InvalidDuration> {
    let invalid = || InvalidDuration(text.to_owned());
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    if text.is_empty() {
        return Err(invalid());
    }
    let mut rest = text;
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(invalid)?;
        let (number, after) = rest.split_at(number_len);
        let value: f64 = number.parse().map_err(|_| invalid())?;
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let seconds_per_unit = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(invalid()),
        };
        total += value * seconds_per_unit;
        rest = after;
    }
    Duration::try_from_secs_f64(total).map_err(|_| invalid())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_single_and_compound_terms() {
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
    }

    #[test]
    fn rejects_malformed_text() {
        for bad in ["", "30", "s", "5 m", "-5s", "5x", "1h30", "1..5s", "m5"] {
            assert!(parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
