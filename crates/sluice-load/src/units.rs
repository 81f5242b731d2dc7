//! Parsing and printing of the human units the command line speaks: durations (`30s`,
//! `200ms`), fractions (`0.05`, `5%`).

use std::time::Duration;

/// A duration or fraction that could not be read; the message says what is accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UnitError(pub String);

/// Reads a duration: a non-negative number followed by `us`, `ms`, `s`, `m` or `h`
/// (`250ms`, `1.5s`, `2m`). A bare number is refused, so `--timeout 60` cannot silently mean
/// milliseconds to one reader and seconds to another.
pub fn parse_duration(text: &str) -> Result<Duration, UnitError> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| {
            UnitError(format!(
                "duration `{text}` has no unit: write e.g. `{t}s` or `{t}ms`"
            ))
        })?;
    let (number, unit) = t.split_at(split);
    let value: f64 = number.parse().map_err(|_| {
        UnitError(format!(
            "duration `{text}`: `{number}` is not a non-negative number"
        ))
    })?;
    let scale = match unit.trim() {
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(UnitError(format!(
                "duration `{text}`: unknown unit `{other}` (use us, ms, s, m or h)"
            )))
        }
    };
    Duration::try_from_secs_f64(value * scale)
        .map_err(|_| UnitError(format!("duration `{text}` is out of range")))
}

/// Reads a fraction: `0.05` or `5%`. Must lie in [0, 1].
pub fn parse_fraction(text: &str) -> Result<f64, UnitError> {
    let t = text.trim();
    let (number, scale) = match t.strip_suffix('%') {
        Some(n) => (n.trim(), 0.01),
        None => (t, 1.0),
    };
    let v: f64 = number
        .parse()
        .map_err(|_| UnitError(format!("`{text}` is not a number or a percentage")))?;
    let v = v * scale;
    if !(0.0..=1.0).contains(&v) {
        return Err(UnitError(format!(
            "`{text}` must be between 0 and 1 (or 0% and 100%)"
        )));
    }
    Ok(v)
}

/// Reads a threshold for `compare`: `10%` or `0.1` (both mean ten per cent). Unlike
/// [`parse_fraction`] it may exceed 100 %.
pub fn parse_threshold(text: &str) -> Result<f64, UnitError> {
    let t = text.trim();
    let (number, scale) = match t.strip_suffix('%') {
        Some(n) => (n.trim(), 0.01),
        None => (t, 1.0),
    };
    match number.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v * scale),
        _ => Err(UnitError(format!(
            "threshold `{text}` must be a non-negative percentage such as `10%`"
        ))),
    }
}

/// Microseconds as milliseconds, rounded to the microsecond, for reports.
pub fn us_to_ms(us: f64) -> f64 {
    us.round() / 1000.0
}

/// A duration for people: `850 ms`, `12.5 s`, `3 m 20 s`.
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 1.0 {
        format!("{:.0} ms", s * 1000.0)
    } else if s < 120.0 {
        format!("{s:.1} s")
    } else {
        format!("{} m {} s", d.as_secs() / 60, d.as_secs() % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("200ms"), Ok(Duration::from_millis(200)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert!(parse_duration("60").unwrap_err().0.contains("no unit"));
        assert!(parse_duration("5 parsecs")
            .unwrap_err()
            .0
            .contains("unknown unit `parsecs`"));
        assert!(parse_duration("1.2.3s").is_err());
    }

    #[test]
    fn fractions() {
        assert_eq!(parse_fraction("0.05"), Ok(0.05));
        assert!((parse_fraction("5%").unwrap() - 0.05).abs() < 1e-12);
        assert!(parse_fraction("120%").is_err());
        assert!(parse_fraction("x").is_err());
        assert!((parse_threshold("10%").unwrap() - 0.1).abs() < 1e-12);
        assert!((parse_threshold("250%").unwrap() - 2.5).abs() < 1e-12);
        assert!(parse_threshold("-1%").is_err());
    }
}
