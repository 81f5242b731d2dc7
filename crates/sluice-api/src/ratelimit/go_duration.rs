//! Durations as Go writes them: OpenAI's `x-ratelimit-reset-*` headers carry Go's
//! `time.Duration` strings (`6m0s`, `1s`, `12ms`, `1h2m3.5s`), so the gateway both reads
//! them (from providers) and writes them (to its own clients, whose SDKs expect the same).
//!
//! [`parse_go_duration`] follows Go's `time.ParseDuration` grammar: an optional sign, then
//! either `0` or one or more `number unit` pairs, a number being digits with an optional
//! fraction (`1.5`, `.5`, `1.`), a unit one of `ns`, `us`, `µs`, `μs`, `ms`, `s`, `m`, `h`. A
//! fraction is scaled the way Go scales it (through a float), so the same string gives the
//! same nanoseconds. Negative durations and values beyond Go's range (about 292 years) are
//! refused: a reset is never in the past.

use std::time::Duration;

const NANOS: [(&str, u64); 8] = [
    ("ns", 1),
    ("us", 1_000),
    ("\u{b5}s", 1_000),
    ("\u{3bc}s", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
];

/// Go's largest duration in nanoseconds (`1<<63 - 1`).
const MAX_NANOS: u64 = i64::MAX as u64;

/// A Go duration string as a [`Duration`]; `None` when it is not one, is negative, or
/// overflows.
pub fn parse_go_duration(text: &str) -> Option<Duration> {
    let (negative, mut rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total: u64 = 0;
    while !rest.is_empty() {
        let first = rest.as_bytes()[0];
        if !(first == b'.' || first.is_ascii_digit()) {
            return None;
        }
        let (whole, whole_digits, after) = leading_int(rest)?;
        rest = after;
        let (mut fraction, mut scale, mut fraction_digits) = (0u64, 1f64, 0usize);
        if let Some(after_dot) = rest.strip_prefix('.') {
            let (f, s, n, after) = leading_fraction(after_dot);
            (fraction, scale, fraction_digits) = (f, s, n);
            rest = after;
        }
        if whole_digits == 0 && fraction_digits == 0 {
            return None;
        }
        let unit_len = rest
            .find(|c: char| c == '.' || c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (unit, after) = rest.split_at(unit_len);
        rest = after;
        let nanos = NANOS.iter().find(|(name, _)| *name == unit)?.1;
        if whole > MAX_NANOS / nanos {
            return None;
        }
        let mut value = whole * nanos;
        if fraction > 0 {
            value = value.checked_add((fraction as f64 * (nanos as f64 / scale)) as u64)?;
            if value > MAX_NANOS {
                return None;
            }
        }
        total = total.checked_add(value).filter(|t| *t <= MAX_NANOS)?;
    }
    if negative && total > 0 {
        return None;
    }
    Some(Duration::from_nanos(total))
}

/// The leading digits as a number, how many there were, and the rest; `None` on overflow.
fn leading_int(s: &str) -> Option<(u64, usize, &str)> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let mut value: u64 = 0;
    for b in s[..digits].bytes() {
        value = value.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
        if value > MAX_NANOS {
            return None;
        }
    }
    Some((value, digits, &s[digits..]))
}

/// The leading fraction digits as a number and its scale (digits past what fits are read
/// and ignored, as Go does), how many digits there were, and the rest.
fn leading_fraction(s: &str) -> (u64, f64, usize, &str) {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (mut value, mut scale, mut overflowed) = (0u64, 1f64, false);
    for b in s[..digits].bytes() {
        if overflowed {
            continue;
        }
        match value
            .checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(b - b'0')))
            .filter(|v| *v <= MAX_NANOS)
        {
            Some(v) => {
                value = v;
                scale *= 10.0;
            }
            None => overflowed = true,
        }
    }
    (value, scale, digits, &s[digits..])
}

/// `d` as Go's `Duration.String` writes it: `0s`, `250ms`, `1.5s`, `1m0s`, `1h2m3s`.
pub fn go_duration(d: Duration) -> String {
    let nanos = d.as_nanos().min(u128::from(MAX_NANOS)) as u64;
    if nanos == 0 {
        return "0s".into();
    }
    if nanos < 1_000 {
        return format!("{nanos}ns");
    }
    if nanos < 1_000_000 {
        return format!("{}\u{b5}s", fraction(nanos, 1_000));
    }
    if nanos < 1_000_000_000 {
        return format!("{}ms", fraction(nanos, 1_000_000));
    }
    let seconds = nanos % 60_000_000_000;
    let minutes = nanos / 60_000_000_000;
    let mut out = String::new();
    if minutes >= 60 {
        out.push_str(&format!("{}h{}m", minutes / 60, minutes % 60));
    } else if minutes > 0 {
        out.push_str(&format!("{minutes}m"));
    }
    out.push_str(&format!("{}s", fraction(seconds, 1_000_000_000)));
    out
}

/// `value / unit` with the fraction's trailing zeros (and a bare point) left out.
fn fraction(value: u64, unit: u64) -> String {
    let whole = value / unit;
    let rest = value % unit;
    if rest == 0 {
        return whole.to_string();
    }
    let width = unit.ilog10() as usize;
    let digits = format!("{rest:0width$}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn providers_headers_parse() {
        let ms = Duration::from_millis;
        assert_eq!(parse_go_duration("6m0s"), Some(ms(360_000)));
        assert_eq!(parse_go_duration("1s"), Some(ms(1_000)));
        assert_eq!(parse_go_duration("12ms"), Some(ms(12)));
        assert_eq!(parse_go_duration("1h2m3.5s"), Some(ms(3_723_500)));
        assert_eq!(parse_go_duration(".5s"), Some(ms(500)));
        assert_eq!(parse_go_duration("1.s"), Some(ms(1_000)));
        assert_eq!(parse_go_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_go_duration("-0"), Some(Duration::ZERO));
        assert_eq!(
            parse_go_duration("3\u{3bc}s"),
            Some(Duration::from_micros(3))
        );
        for bad in [
            "",
            "1",
            "s",
            ".s",
            "-1s",
            "1x",
            "1.2.3s",
            " 1s",
            "1s ",
            "-1",
            "9999999999h",
        ] {
            assert_eq!(parse_go_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn written_as_go_writes_it() {
        let ms = Duration::from_millis;
        assert_eq!(go_duration(Duration::ZERO), "0s");
        assert_eq!(go_duration(ms(250)), "250ms");
        assert_eq!(go_duration(ms(1_500)), "1.5s");
        assert_eq!(go_duration(ms(60_000)), "1m0s");
        assert_eq!(go_duration(ms(3_723_500)), "1h2m3.5s");
        assert_eq!(go_duration(Duration::from_micros(1_500)), "1.5ms");
        assert_eq!(go_duration(Duration::from_nanos(1_500)), "1.5\u{b5}s");
        assert_eq!(go_duration(Duration::from_nanos(7)), "7ns");
    }

    proptest! {
        #[test]
        fn what_is_written_reads_back(nanos in 0u64..=i64::MAX as u64) {
            let d = Duration::from_nanos(nanos);
            prop_assert_eq!(parse_go_duration(&go_duration(d)), Some(d));
        }

        /// Against the grammar Go documents (a regex) and exact arithmetic: a string is
        /// accepted exactly when it matches and its value fits; the value is the exact
        /// sum of its pieces, within the nanosecond per piece that Go's float scaling of a
        /// fraction may round away.
        #[test]
        fn the_same_verdict_as_the_grammar_and_exact_arithmetic(text in duration_like()) {
            let ours = parse_go_duration(&text);
            match exact_nanos(&text) {
                None => prop_assert_eq!(ours, None, "{:?}", text),
                Some((exact, pieces, negative)) => {
                    let fits = exact <= i64::MAX as u128 - pieces as u128;
                    let beyond = exact > i64::MAX as u128 + pieces as u128;
                    if negative && exact > pieces as u128 {
                        prop_assert_eq!(ours, None, "negative {:?}", text);
                    } else if fits && !negative {
                        let got = ours.map(|d| d.as_nanos());
                        prop_assert!(got.is_some(), "{:?} refused", text);
                        let got = got.unwrap_or_default();
                        prop_assert!(got <= exact && exact - got <= pieces as u128,
                            "{:?}: {} against exact {}", text, got, exact);
                    } else if beyond {
                        prop_assert_eq!(ours, None, "{:?} overflows", text);
                    }
                }
            }
        }
    }

    /// `(exact nanoseconds, pieces, negative)` if `text` is in Go's duration grammar.
    fn exact_nanos(text: &str) -> Option<(u128, usize, bool)> {
        let grammar = regex::Regex::new(
            "^([-+]?)(0|(?:(?:[0-9]+(?:\\.[0-9]*)?|\\.[0-9]+)(?:ns|us|\u{b5}s|\u{3bc}s|ms|s|m|h))+)$",
        )
        .ok()?;
        let whole = grammar.captures(text)?;
        let negative = &whole[1] == "-";
        if &whole[2] == "0" {
            return Some((0, 1, negative));
        }
        let piece =
            regex::Regex::new("([0-9]*)(?:\\.([0-9]*))?(ns|us|\u{b5}s|\u{3bc}s|ms|s|m|h)").ok()?;
        let (mut total, mut pieces) = (0u128, 0usize);
        for p in piece.captures_iter(&whole[2]) {
            let unit = NANOS.iter().find(|(n, _)| *n == &p[3])?.1 as u128;
            let int: u128 = if p[1].is_empty() {
                0
            } else {
                p[1].parse().ok()?
            };
            let frac = p.get(2).map_or("", |m| m.as_str());
            // Digits beyond 30 cannot change the nanoseconds of an hour.
            let frac = &frac[..frac.len().min(30)];
            let scaled = if frac.is_empty() {
                0
            } else {
                frac.parse::<u128>().ok()? * unit / 10u128.pow(frac.len() as u32)
            };
            total = total
                .saturating_add(int.saturating_mul(unit))
                .saturating_add(scaled);
            pieces += 1;
        }
        Some((total, pieces, negative))
    }

    /// Strings near the grammar: pieces of numbers, units and junk.
    fn duration_like() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            "[0-9]{1,3}",
            "[0-9]{0,20}",
            Just(".".to_owned()),
            "\\.[0-9]{1,12}",
            prop::sample::select(vec!["ns", "us", "\u{b5}s", "\u{3bc}s", "ms", "s", "m", "h"])
                .prop_map(str::to_owned),
            prop::sample::select(vec!["-", "+", "x", " ", "0", "d", "S"]).prop_map(str::to_owned),
        ];
        prop::collection::vec(piece, 0..7).prop_map(|p| p.concat())
    }
}
