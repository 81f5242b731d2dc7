//! What a provider's answer says about its rate limits, read from its headers:
//!
//! - OpenAI: `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`, resets as Go durations
//!   (`6m0s`); a value may be missing, or `-1` for "not reported".
//! - Anthropic: `anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}`, resets as
//!   RFC 3339 instants.
//! - `retry-after`: whole seconds, or an HTTP date.
//!
//! Every value is network input: anything malformed reads as not reported, never as a
//! number it is not.

use std::time::{Duration, SystemTime};

/// Anthropic's `anthropic-ratelimit-requests-{limit,remaining,reset}`.
pub const ANTHROPIC_REQUESTS_HEADERS: [&str; 3] = [
    "anthropic-ratelimit-requests-limit",
    "anthropic-ratelimit-requests-remaining",
    "anthropic-ratelimit-requests-reset",
];
/// Anthropic's `anthropic-ratelimit-tokens-{limit,remaining,reset}`.
pub const ANTHROPIC_TOKENS_HEADERS: [&str; 3] = [
    "anthropic-ratelimit-tokens-limit",
    "anthropic-ratelimit-tokens-remaining",
    "anthropic-ratelimit-tokens-reset",
];

/// One limit as the provider reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReportedLimit {
    pub limit: Option<u64>,
    pub remaining: Option<u64>,
    /// Until the limit is back to whole.
    pub reset: Option<Duration>,
}

impl ReportedLimit {
    fn is_empty(&self) -> bool {
        *self == ReportedLimit::default()
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProviderReport {
    pub requests: Option<ReportedLimit>,
    pub tokens: Option<ReportedLimit>,
    /// `retry-after`, as a wait from `now`.
    pub retry_after: Option<Duration>,
}

impl ProviderReport {
    /// Reads the headers `header` finds (by lower-case name) in an answer received at `now`.
    pub fn read<'a>(header: impl Fn(&str) -> Option<&'a str>, now: SystemTime) -> ProviderReport {
        let openai = |[limit, remaining, reset]: [&str; 3]| ReportedLimit {
            limit: header(limit).and_then(count),
            remaining: header(remaining).and_then(count),
            reset: header(reset).and_then(|v| super::parse_go_duration(v.trim())),
        };
        let anthropic = |[limit, remaining, reset]: [&str; 3]| ReportedLimit {
            limit: header(limit).and_then(count),
            remaining: header(remaining).and_then(count),
            reset: header(reset).and_then(|v| until_rfc3339(v.trim(), now)),
        };
        let pick = |a: ReportedLimit, b: ReportedLimit| {
            if !a.is_empty() {
                Some(a)
            } else if !b.is_empty() {
                Some(b)
            } else {
                None
            }
        };
        ProviderReport {
            requests: pick(
                openai(super::REQUESTS_HEADERS),
                anthropic(ANTHROPIC_REQUESTS_HEADERS),
            ),
            tokens: pick(
                openai(super::TOKENS_HEADERS),
                anthropic(ANTHROPIC_TOKENS_HEADERS),
            ),
            retry_after: header("retry-after").and_then(|v| retry_after(v.trim(), now)),
        }
    }
}

/// A count: decimal digits only (`-1`, the "not reported" of some providers, and anything
/// else read as absent).
fn count(v: &str) -> Option<u64> {
    let v = v.trim();
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

/// `retry-after`: delay-seconds, or an HTTP date (a date in the past is no wait).
pub fn retry_after(v: &str, now: SystemTime) -> Option<Duration> {
    if let Some(seconds) = count(v) {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// An RFC 3339 instant as a wait from `now` (zero if past).
fn until_rfc3339(v: &str, now: SystemTime) -> Option<Duration> {
    let at = time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339).ok()?;
    let at = SystemTime::UNIX_EPOCH.checked_add(Duration::from_nanos(
        u64::try_from(at.unix_timestamp_nanos()).ok()?,
    ))?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn read(pairs: &[(&str, &str)], now: SystemTime) -> ProviderReport {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ProviderReport::read(|name| map.get(name).map(String::as_str), now)
    }

    #[test]
    fn openai_headers_with_go_durations_and_missing_values() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let r = read(
            &[
                ("x-ratelimit-limit-requests", "10000"),
                ("x-ratelimit-remaining-requests", "9999"),
                ("x-ratelimit-reset-requests", "6m0s"),
                ("x-ratelimit-limit-tokens", "-1"),
                ("x-ratelimit-remaining-tokens", "1200"),
                ("x-ratelimit-reset-tokens", "12ms"),
                ("retry-after", "7"),
            ],
            now,
        );
        assert_eq!(
            r.requests,
            Some(ReportedLimit {
                limit: Some(10_000),
                remaining: Some(9_999),
                reset: Some(Duration::from_secs(360)),
            })
        );
        let tokens = r.tokens.unwrap();
        assert_eq!(tokens.limit, None, "-1 is not reported");
        assert_eq!(tokens.remaining, Some(1_200));
        assert_eq!(tokens.reset, Some(Duration::from_millis(12)));
        assert_eq!(r.retry_after, Some(Duration::from_secs(7)));
        assert_eq!(read(&[], now), ProviderReport::default());
    }

    #[test]
    fn anthropic_headers_with_rfc3339_resets_and_http_date_retry_after() {
        // 2023-11-14T22:13:20Z
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let r = read(
            &[
                ("anthropic-ratelimit-tokens-limit", "80000"),
                ("anthropic-ratelimit-tokens-remaining", "500"),
                ("anthropic-ratelimit-tokens-reset", "2023-11-14T22:13:50Z"),
                (
                    "anthropic-ratelimit-requests-reset",
                    "2023-11-14T23:13:20+01:00",
                ),
                ("retry-after", "Tue, 14 Nov 2023 22:13:25 GMT"),
            ],
            now,
        );
        let tokens = r.tokens.unwrap();
        assert_eq!(tokens.limit, Some(80_000));
        assert_eq!(tokens.remaining, Some(500));
        assert_eq!(tokens.reset, Some(Duration::from_secs(30)));
        assert_eq!(
            r.requests.unwrap().reset,
            Some(Duration::ZERO),
            "now, in another zone"
        );
        assert_eq!(r.retry_after, Some(Duration::from_secs(5)));
    }

    proptest! {
        /// Any bytes in any header: no panic, and a count is only ever read from digits.
        #[test]
        fn hostile_values_never_panic_and_counts_need_digits(
            values in prop::collection::vec(".{0,40}", 8)
        ) {
            let names = [
                "x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens",
                "x-ratelimit-reset-tokens", "anthropic-ratelimit-requests-limit",
                "anthropic-ratelimit-requests-remaining", "anthropic-ratelimit-requests-reset",
                "retry-after", "x-ratelimit-remaining-requests",
            ];
            let pairs: Vec<(&str, &str)> =
                names.iter().copied().zip(values.iter().map(String::as_str)).collect();
            let r = read(&pairs, SystemTime::now());
            if let Some(t) = r.tokens {
                if let Some(n) = t.remaining {
                    prop_assert_eq!(Some(n), values[1].trim().parse::<u64>().ok());
                }
            }
        }
    }
}
