//! Who calls: API keys, the tenants and scopes they carry, and where they are kept.
//!
//! - [`key`]: the secret's format (`sk-sluice-…`, 256 random bits) and its digest, the only
//!   form a key is stored in.
//! - [`scope`]: what a key may do; every route needs one scope.
//! - [`table`]: the keys in the embedded store (`KeyTable`), used by `sluice keys` and the
//!   admin API.
//! - [`ring`]: `KeyRing`, the in-memory set the authenticate phase checks, reloaded when the
//!   store changes.

pub mod key;
mod redis_keys;
pub mod ring;
pub mod scope;
pub mod table;

use std::time::Duration;

pub use key::{KeyDigest, NewSecret, PREFIX};
pub use ring::KeyRing;
pub use scope::{Scope, ScopeSet, GLOBAL_TENANT};
pub use table::{check_label, now_unix, KeyError, KeyRecord, KeyTable, NewKey};

/// The token of an `Authorization: Bearer TOKEN` value (scheme case-insensitive, surrounding
/// blanks dropped); `None` for any other scheme or an empty token.
pub fn bearer_token(authorization: &[u8]) -> Option<&[u8]> {
    let scheme = authorization.get(..7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| authorization[7..].trim_ascii())
        .filter(|t| !t.is_empty())
}

/// The longest life a key can be given: keys are meant to be rotated.
pub const MAX_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// A key's lifetime, written as every duration of the config is (`30d`, `12h`, `90m`),
/// between a second and [`MAX_LIFETIME`].
pub fn parse_lifetime(text: &str) -> Result<Duration, String> {
    let life = crate::config::ConfigDuration::parse(text)?.0;
    if life < Duration::from_secs(1) || life > MAX_LIFETIME {
        return Err(format!(
            "`{text}`: a key lives between 1 second and 10 years"
        ));
    }
    Ok(life)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_and_bearer_tokens() {
        assert_eq!(parse_lifetime("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_lifetime("90m"), Ok(Duration::from_secs(5_400)));
        assert!(parse_lifetime("30").unwrap_err().contains("no unit"));
        assert!(parse_lifetime("1y").unwrap_err().contains("`y`"));
        assert!(parse_lifetime("0d").is_err());
        assert!(parse_lifetime("4000d").is_err());
        assert_eq!(bearer_token(b"Bearer sk-1"), Some(&b"sk-1"[..]));
        assert_eq!(bearer_token(b"bearer  sk-2 "), Some(&b"sk-2"[..]));
        assert_eq!(bearer_token(b"Basic abc"), None);
        assert_eq!(bearer_token(b"Bearer "), None);
    }
}
