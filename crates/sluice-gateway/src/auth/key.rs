//! The API key secret: how it is made, how it is recognised, what is kept of it.
//!
//! A key is `sk-sluice-` followed by 43 base62 characters (256 bits from the OS's random
//! source). The prefix lets secret scanners and people recognise it; only its SHA-256 digest
//! is stored, so a leaked store holds nothing a caller can present.

use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

/// What every key starts with.
pub const PREFIX: &str = "sk-sluice-";

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Characters after the prefix: 43 base62 digits hold 256 bits (62^43 > 2^256).
const SECRET_CHARS: usize = 43;

/// The SHA-256 of a key, the only form a key is kept in.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyDigest(pub [u8; 32]);

impl std::fmt::Debug for KeyDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyDigest({})", self.to_hex())
    }
}

impl KeyDigest {
    pub fn of(token: &[u8]) -> KeyDigest {
        KeyDigest(Sha256::digest(token).into())
    }

    /// Compares in constant time: how long it takes says nothing about how much matched.
    pub fn matches(&self, other: &KeyDigest) -> bool {
        self.0.ct_eq(&other.0).into()
    }

    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    /// `sha256:` and 64 hex digits (the prefix is optional), as `sha256sum` prints them.
    pub fn parse(text: &str) -> Result<KeyDigest, String> {
        let hex = text.trim().strip_prefix("sha256:").unwrap_or(text.trim());
        let bytes = hex.as_bytes();
        if bytes.len() != 64 {
            return Err(format!(
                "a key digest is `sha256:` and 64 hex digits (printf %s \"$KEY\" | sha256sum); got {} characters",
                bytes.len()
            ));
        }
        let mut out = [0u8; 32];
        for (i, pair) in bytes.chunks(2).enumerate() {
            let digit = |c: u8| (c as char).to_digit(16);
            match (digit(pair[0]), digit(pair[1])) {
                (Some(h), Some(l)) => out[i] = (h * 16 + l) as u8,
                _ => return Err("a key digest holds only hex digits after `sha256:`".into()),
            }
        }
        Ok(KeyDigest(out))
    }
}

/// A newly made key: shown once, then only its digest exists.
pub struct NewSecret {
    pub secret: String,
    pub digest: KeyDigest,
}

impl NewSecret {
    pub fn generate() -> Result<NewSecret, getrandom::Error> {
        let mut secret = String::with_capacity(PREFIX.len() + SECRET_CHARS);
        secret.push_str(PREFIX);
        // Rejection sampling keeps every character uniform (256 is not a multiple of 62).
        let mut buf = [0u8; 64];
        let mut taken = 0;
        while taken < SECRET_CHARS {
            getrandom::fill(&mut buf)?;
            for &b in &buf {
                if taken == SECRET_CHARS {
                    break;
                }
                if b < 248 {
                    secret.push(BASE62[usize::from(b % 62)] as char);
                    taken += 1;
                }
            }
        }
        let digest = KeyDigest::of(secret.as_bytes());
        Ok(NewSecret { secret, digest })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_prefixed_long_distinct_and_digested() {
        let a = NewSecret::generate().unwrap();
        let b = NewSecret::generate().unwrap();
        assert!(a.secret.starts_with(PREFIX));
        assert_eq!(a.secret.len(), PREFIX.len() + SECRET_CHARS);
        assert!(a.secret[PREFIX.len()..]
            .bytes()
            .all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a.secret, b.secret);
        assert_eq!(a.digest, KeyDigest::of(a.secret.as_bytes()));
        assert!(a.digest.matches(&KeyDigest::of(a.secret.as_bytes())));
        assert!(!a.digest.matches(&b.digest));
    }

    #[test]
    fn digests_read_what_sha256sum_prints() {
        // printf %s abc | sha256sum
        let hex = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(KeyDigest::of(b"abc").to_hex(), hex);
        assert_eq!(KeyDigest::parse(hex), Ok(KeyDigest::of(b"abc")));
        assert_eq!(
            KeyDigest::parse(&format!("sha256:{hex}")),
            Ok(KeyDigest::of(b"abc"))
        );
        assert!(KeyDigest::parse("sha256:abc").is_err());
        assert!(KeyDigest::parse(&"g".repeat(64)).is_err());
    }
}
