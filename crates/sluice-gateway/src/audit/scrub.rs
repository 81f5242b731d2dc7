//! Personal data and secrets taken out of text before the audit log keeps any of it.
//!
//! Each kind is found by a pattern and, where the kind has one, confirmed by its checksum, so
//! that ordinary numbers survive: card numbers must pass Luhn, IBANs mod 97, IPv4 addresses
//! must have octets of at most 255, SSNs must have a valid area. What is found is replaced by
//! a marker naming the kind (`[EMAIL]`, `[CARD]`, ...), so a reader still sees what was there.
//!
//! Order matters: secrets and structured identifiers first (a key can contain digits that
//! look like a phone number), phone numbers last.

use std::borrow::Cow;
use std::sync::LazyLock;

use regex::{Captures, Regex};

struct Rule {
    marker: &'static str,
    /// A cheap look at the text that must pass before the pattern runs (most text holds no
    /// digits run, no `@`, no key prefix: most rules never run).
    gate: fn(&Clues) -> bool,
    pattern: Regex,
    /// Confirms a match (a checksum); `None`: every match is replaced.
    check: Option<fn(&str) -> bool>,
}

/// What one pass over the text finds, for the gates.
struct Clues<'a> {
    text: &'a str,
    digits: usize,
}

impl Clues<'_> {
    fn has(&self, needle: &str) -> bool {
        self.text.contains(needle)
    }
}

/// Word boundaries are ASCII (`(?-u:\b)`) and classes spelled out, which keeps every pattern
/// on the regex crate's DFA: a Unicode `\b` falls back to a much slower engine.
fn rule(
    marker: &'static str,
    gate: fn(&Clues) -> bool,
    pattern: &str,
    check: Option<fn(&str) -> bool>,
) -> Rule {
    let pattern = pattern.replace(r"\b", r"(?-u:\b)");
    Rule {
        marker,
        gate,
        // The patterns are constants of this file, tested below.
        pattern: Regex::new(&pattern).unwrap_or_else(|e| panic!("scrub pattern {marker}: {e}")),
        check,
    }
}

static RULES: LazyLock<Vec<Rule>> = LazyLock::new(|| {
    vec![
        // Secrets: bearer tokens, provider and cloud keys, JWTs, `password=...` pairs.
        rule(
            "[SECRET]",
            |c| {
                c.text
                    .as_bytes()
                    .windows(6)
                    .any(|w| w.eq_ignore_ascii_case(b"bearer"))
            },
            r"(?i)\bbearer[ \t]+[A-Za-z0-9._~+/=-]{8,}",
            None,
        ),
        rule(
            "[SECRET]",
            |c| c.has("k-"),
            r"\b(?:sk|pk|rk)-[A-Za-z0-9_-]{16,}",
            None,
        ),
        rule(
            "[SECRET]",
            |c| c.has("_") || c.has("xox") || c.has("AKIA") || c.has("AIza"),
            r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|xox[abpr]-[A-Za-z0-9-]{10,}|AKIA[0-9A-Z]{16}|AIza[0-9A-Za-z_-]{35})",
            None,
        ),
        rule(
            "[SECRET]",
            |c| c.has("eyJ"),
            r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
            None,
        ),
        rule(
            "[SECRET]",
            |c| c.has(":") || c.has("="),
            r#"(?i)\b(?:api[_-]?key|access[_-]?token|auth[_-]?token|secret|password|passwd)\b[ \t]*[:=][ \t]*["']?[^ \t\r\n"',;]{4,}"#,
            None,
        ),
        rule(
            "[EMAIL]",
            |c| c.has("@"),
            r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b",
            None,
        ),
        rule(
            "[IBAN]",
            |c| c.digits >= 4,
            r"\b[A-Z]{2}[0-9]{2}(?:[ ]?[A-Z0-9]){11,30}\b",
            Some(iban_ok),
        ),
        rule(
            "[CARD]",
            |c| c.digits >= 13,
            r"\b[0-9](?:[ -]?[0-9]){12,18}\b",
            Some(luhn_ok),
        ),
        rule(
            "[SSN]",
            |c| c.digits >= 9,
            r"\b[0-9]{3}-[0-9]{2}-[0-9]{4}\b",
            Some(ssn_ok),
        ),
        rule(
            "[IP]",
            |c| c.digits >= 4 && c.has("."),
            r"\b[0-9]{1,3}(?:\.[0-9]{1,3}){3}\b",
            Some(ipv4_ok),
        ),
        rule(
            "[IP]",
            |c| c.text.matches(':').nth(1).is_some(),
            r"(?i)\b(?:[0-9a-f]{0,4}:){2,7}[0-9a-f]{0,4}\b",
            Some(ipv6_ok),
        ),
        rule(
            "[PHONE]",
            |c| c.digits >= 9,
            r"(?:\+[0-9]{1,3}[ .-]?)?(?:\([0-9]{1,4}\)[ .-]?)?[0-9]{2,4}(?:[ .-]?[0-9]{2,4}){2,4}\b",
            Some(phone_ok),
        ),
    ]
});

/// `text` with every finding replaced by its marker; borrowed when nothing was found.
pub fn scrub(text: &str) -> Cow<'_, str> {
    let mut out = Cow::Borrowed(text);
    let count_digits = |t: &str| t.bytes().filter(u8::is_ascii_digit).count();
    let mut digits = count_digits(text);
    for rule in RULES.iter() {
        let clues = Clues { text: &out, digits };
        if !(rule.gate)(&clues) {
            continue;
        }
        let replaced = rule.pattern.replace_all(&out, |c: &Captures<'_>| {
            let found = &c[0];
            match rule.check {
                Some(check) if !check(found) => found.to_owned(),
                _ => rule.marker.to_owned(),
            }
        });
        if let Cow::Owned(s) = replaced {
            digits = count_digits(&s);
            out = Cow::Owned(s);
        }
    }
    out
}

fn digits(s: &str) -> impl Iterator<Item = u32> + '_ {
    s.chars().filter_map(|c| c.to_digit(10))
}

/// Luhn's checksum, over 13 to 19 digits (the lengths of payment card numbers).
pub fn luhn_ok(s: &str) -> bool {
    let ds: Vec<u32> = digits(s).collect();
    if !(13..=19).contains(&ds.len()) {
        return false;
    }
    let sum: u32 = ds
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 {
                    x - 9
                } else {
                    x
                }
            } else {
                d
            }
        })
        .sum();
    sum % 10 == 0
}

/// ISO 13616: move the first four characters to the end, letters to numbers, mod 97 == 1.
pub fn iban_ok(s: &str) -> bool {
    let compact: Vec<char> = s.chars().filter(|c| !c.is_whitespace()).collect();
    if !(15..=34).contains(&compact.len()) {
        return false;
    }
    let rotated = compact[4..].iter().chain(&compact[..4]);
    let mut rem: u32 = 0;
    for c in rotated {
        let v = match c.to_digit(36) {
            Some(v) => v,
            None => return false,
        };
        for d in v.to_string().chars().filter_map(|d| d.to_digit(10)) {
            rem = (rem * 10 + d) % 97;
        }
    }
    rem == 1
}

/// An SSN's area is not 000, 666 or 900–999; group and serial are not zero.
fn ssn_ok(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    let [area, group, serial] = parts[..] else {
        return false;
    };
    let area: u32 = area.parse().unwrap_or(0);
    area != 0 && area != 666 && area < 900 && group != "00" && serial != "0000"
}

fn ipv4_ok(s: &str) -> bool {
    s.parse::<std::net::Ipv4Addr>().is_ok()
}

fn ipv6_ok(s: &str) -> bool {
    s.matches(':').count() >= 2 && s.parse::<std::net::Ipv6Addr>().is_ok()
}

/// Phone numbers: 9 to 15 digits (E.164's maximum), written with separators or a `+`, so
/// that a plain number (an amount, an id) is left alone.
fn phone_ok(s: &str) -> bool {
    let n = digits(s).count();
    let formatted = s.starts_with('+') || s.contains([' ', '-', '.', '(']);
    (9..=15).contains(&n) && formatted
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn each_kind_is_found_and_ordinary_text_is_left_alone() {
        let cases = [
            (
                "mail me at jane.doe+x@example.co.uk today",
                "mail me at [EMAIL] today",
            ),
            ("card 4111 1111 1111 1111 ok", "card [CARD] ok"),
            (
                "card 4111-1111-1111-1112 is not one",
                "card 4111-1111-1111-1112 is not one",
            ),
            ("iban DE89 3704 0044 0532 0130 00.", "iban [IBAN]."),
            ("iban GB82WEST12345698765432", "iban [IBAN]"),
            ("ssn 123-45-6789", "ssn [SSN]"),
            ("from 192.168.10.1 now", "from [IP] now"),
            ("version 1.2.3.999 stays", "version 1.2.3.999 stays"),
            ("v6 2001:db8::8a2e:370:7334 here", "v6 [IP] here"),
            (
                "call +1 (415) 555-2671 or 030 1234 5678",
                "call [PHONE] or [PHONE]",
            ),
            (
                "Authorization: Bearer abc.def-ghi_jkl",
                "Authorization: [SECRET]",
            ),
            ("key sk-proj-abcdefghijklmnop1234", "key [SECRET]"),
            ("key sk-sluice-0123456789abcdefABCDEF", "key [SECRET]"),
            (
                "api_key=\"hunter22\" and password: s3cr3t!!",
                "[SECRET]\" and [SECRET]",
            ),
            ("aws AKIAIOSFODNN7EXAMPLE", "aws [SECRET]"),
            (
                "total 1234567 items in 2024, 12:30",
                "total 1234567 items in 2024, 12:30",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(scrub(input), want, "{input}");
        }
        assert!(matches!(scrub("nothing to see"), Cow::Borrowed(_)));
        // Checksums and ranges keep look-alikes apart (what is left may still be taken for
        // a phone number: erring towards scrubbing is the safe side).
        assert!(!ssn_ok("666-45-6789") && !ssn_ok("123-00-6789") && ssn_ok("123-45-6789"));
        assert!(!ipv4_ok("1.2.3.999") && ipv4_ok("10.0.0.1"));
        assert!(luhn_ok("4111111111111111") && !luhn_ok("4111111111111112"));
        assert!(iban_ok("DE89370400440532013000") && !iban_ok("DE89370400440532013001"));
    }

    /// A valid card number of `len` digits starting with `prefix`, for generated inputs.
    fn card(mut body: Vec<u32>) -> String {
        // Choose the check digit that makes the Luhn sum divisible by 10.
        body.push(0);
        for check in 0..10 {
            *body.last_mut().unwrap() = check;
            let s: String = body
                .iter()
                .map(|d| char::from_digit(*d, 10).unwrap())
                .collect();
            if luhn_ok(&s) {
                return s;
            }
        }
        unreachable!("one check digit always fits")
    }

    proptest! {
        /// Never panics, whatever the text.
        #[test]
        fn any_text_is_scrubbed_without_panic(text in "\\PC{0,200}") {
            let _ = scrub(&text);
        }

        /// Generated PII inside generated prose never survives, and the prose does.
        #[test]
        fn generated_pii_never_survives(
            before in "[a-z ]{0,30}",
            after in "[a-z ]{0,30}",
            user in "[a-z]{1,10}",
            host in "[a-z]{1,10}",
            body in proptest::collection::vec(0u32..10, 15),
            octets in proptest::array::uniform4(0u8..=255),
            secret in "[A-Za-z0-9]{20,40}",
        ) {
            let pan = card(body);
            let email = format!("{user}@{host}.com");
            let ip = format!("{}.{}.{}.{}", octets[0], octets[1], octets[2], octets[3]);
            let key = format!("sk-{secret}");
            for pii in [&pan, &email, &ip, &key] {
                let text = format!("{before} {pii} {after}");
                let out = scrub(&text);
                prop_assert!(!out.contains(pii.as_str()), "{text:?} -> {out:?}");
                prop_assert!(out.contains(before.trim()), "{text:?} -> {out:?}");
            }
        }
    }
}
