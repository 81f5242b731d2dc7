//! `strftime_now(format)` for chat templates that print today's date into the system prompt
//! (Llama 3.1's does), in UTC as the engines' containers usually run. The directives such
//! templates use are supported; any other is an error naming it, never a silent guess.

use minijinja::{Error, ErrorKind};
use std::fmt::Write;
use std::time::{SystemTime, UNIX_EPOCH};

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

pub fn format_now(format: &str) -> Result<String, Error> {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    format_unix(format, secs)
}

/// `format` applied to the UTC time `secs` after the Unix epoch.
pub fn format_unix(format: &str, secs: i64) -> Result<String, Error> {
    let days = secs.div_euclid(86_400);
    let of_day = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    // 1970-01-01 was a Thursday (index 3 from Monday).
    let weekday = (days + 3).rem_euclid(7) as usize;
    let mut out = String::with_capacity(format.len() + 16);
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let _ = match chars.next() {
            Some('d') => write!(out, "{day:02}"),
            Some('m') => write!(out, "{month:02}"),
            Some('Y') => write!(out, "{year}"),
            Some('y') => write!(out, "{:02}", year.rem_euclid(100)),
            Some('B') => write!(out, "{}", MONTHS[month as usize - 1]),
            Some('b') => write!(out, "{}", &MONTHS[month as usize - 1][..3]),
            Some('A') => write!(out, "{}", WEEKDAYS[weekday]),
            Some('a') => write!(out, "{}", &WEEKDAYS[weekday][..3]),
            Some('H') => write!(out, "{:02}", of_day / 3600),
            Some('M') => write!(out, "{:02}", of_day % 3600 / 60),
            Some('S') => write!(out, "{:02}", of_day % 60),
            Some('j') => write!(out, "{:03}", day_of_year(year, month, day)),
            Some('%') => write!(out, "%"),
            other => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!(
                        "strftime_now: %{} is not supported (supported: %d %m %Y %y %B %b %A %a %H %M %S %j %%)",
                        other.map(String::from).unwrap_or_default()
                    ),
                ))
            }
        };
    }
    Ok(out)
}

/// Year, month (1–12), day (1–31) of a day count since 1970-01-01 (Howard Hinnant's
/// days-to-civil algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn day_of_year(year: i64, month: u32, day: u32) -> u32 {
    const BEFORE: [u32; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    BEFORE[month as usize - 1] + day + u32::from(leap && month > 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        // 2024-02-29T13:05:09Z, a Thursday; `date -u -d @1709211909`.
        let t = 1_709_211_909;
        assert_eq!(format_unix("%d %b %Y", t).unwrap(), "29 Feb 2024");
        assert_eq!(
            format_unix("%A %a %B %m/%d/%y %H:%M:%S %j %%", t).unwrap(),
            "Thursday Thu February 02/29/24 13:05:09 060 %"
        );
        assert_eq!(
            format_unix("%Y-%m-%d %A", 0).unwrap(),
            "1970-01-01 Thursday"
        );
        assert_eq!(format_unix("%Y-%m-%d", -86_400).unwrap(), "1969-12-31");
        assert_eq!(
            format_unix("%Y-%m-%d %j", 1_798_675_200).unwrap(),
            "2026-12-31 365"
        );
    }

    #[test]
    fn an_unknown_directive_is_an_error_naming_it() {
        let err = format_unix("%Q", 0).unwrap_err().to_string();
        assert!(err.contains("%Q"), "{err}");
    }
}
