//! Rate-limit headers as providers send them and as the gateway sends them on: OpenAI's
//! `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`, whose resets are Go duration
//! strings ([`go_duration`]), Anthropic's `anthropic-ratelimit-*` and `retry-after`
//! ([`provider`]).

pub mod go_duration;
pub mod provider;

pub use go_duration::{go_duration, parse_go_duration};
pub use provider::{
    ProviderReport, ReportedLimit, ANTHROPIC_REQUESTS_HEADERS, ANTHROPIC_TOKENS_HEADERS,
};

/// `x-ratelimit-limit-requests` and its siblings, in the order limit, remaining, reset.
pub const REQUESTS_HEADERS: [&str; 3] = [
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
];

/// `x-ratelimit-limit-tokens` and its siblings, in the order limit, remaining, reset.
pub const TOKENS_HEADERS: [&str; 3] = [
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
];
