//! [`Entry`]: one stored answer, and its bytes in a store.
//!
//! The encoding is the cache's own, versioned, and read defensively: an entry comes back
//! from a file or from Redis, where anything may have written, so every length is checked
//! against what is left and a bad entry is an error (a miss), never a panic.
//!
//! ```text
//! "SLCE" format:u8 key_scheme:u8 created_unix_ms:u64
//! tenant model content_type           (each u32 length + UTF-8)
//! usage: u8 present, then prompt_tokens:u64 completion_tokens:u64
//! shape: u8 (0 completion, 1 stream), then u32 count of parts, each u32 length + bytes
//! ```
//! Integers are little-endian. A completion has one part, its JSON body; a stream has one
//! part per event's data (the JSON of each chunk, without `data: ` and without `[DONE]`).

use bytes::Bytes;

use crate::key::KEY_SCHEME;

const MAGIC: &[u8; 4] = b"SLCE";
const FORMAT: u8 = 1;
/// Most parts (stream events) in an entry: far beyond any real answer, a bound on what a
/// corrupt length can make the reader allocate.
const MAX_PARTS: u32 = 1 << 20;

/// What an answer used, as the upstream reported it: what a hit saves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SavedUsage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// How the answer was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredAnswer {
    /// A whole `chat.completion` body.
    Completion(Bytes),
    /// The data of each event of a stream that ended with `[DONE]`, in order.
    Stream(Vec<Bytes>),
}

/// One stored answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The key scheme the entry was stored under.
    pub key_scheme: u8,
    pub created_unix_ms: u64,
    /// Whose answer it is, and for which model (as clients name it): the admin view and
    /// purges filter by them.
    pub tenant: String,
    pub model: String,
    pub content_type: String,
    pub usage: Option<SavedUsage>,
    pub answer: StoredAnswer,
}

/// Bytes that are not an entry of this format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a cache entry: {0}")]
pub struct EntryError(pub &'static str);

impl Entry {
    /// A new entry under the current key scheme, created now.
    pub fn new(
        tenant: &str,
        model: &str,
        content_type: &str,
        usage: Option<SavedUsage>,
        answer: StoredAnswer,
    ) -> Entry {
        let created_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Entry {
            key_scheme: KEY_SCHEME,
            created_unix_ms,
            tenant: tenant.to_owned(),
            model: model.to_owned(),
            content_type: content_type.to_owned(),
            usage,
            answer,
        }
    }

    /// Bytes held by the entry's answer and names: what the byte bounds count.
    pub fn size(&self) -> usize {
        let parts = match &self.answer {
            StoredAnswer::Completion(body) => body.len(),
            StoredAnswer::Stream(events) => events.iter().map(|e| e.len() + 4).sum(),
        };
        64 + self.tenant.len() + self.model.len() + self.content_type.len() + parts
    }

    /// Milliseconds since it was stored (0 if the clock went back).
    pub fn age_ms(&self, now_unix_ms: u64) -> u64 {
        now_unix_ms.saturating_sub(self.created_unix_ms)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.size() + 32);
        out.extend_from_slice(MAGIC);
        out.push(FORMAT);
        out.push(self.key_scheme);
        out.extend_from_slice(&self.created_unix_ms.to_le_bytes());
        for text in [&self.tenant, &self.model, &self.content_type] {
            put_bytes(&mut out, text.as_bytes());
        }
        match self.usage {
            Some(u) => {
                out.push(1);
                out.extend_from_slice(&u.prompt_tokens.to_le_bytes());
                out.extend_from_slice(&u.completion_tokens.to_le_bytes());
            }
            None => out.push(0),
        }
        let parts: &[Bytes] = match &self.answer {
            StoredAnswer::Completion(body) => {
                out.push(0);
                std::slice::from_ref(body)
            }
            StoredAnswer::Stream(events) => {
                out.push(1);
                events
            }
        };
        out.extend_from_slice(&(parts.len() as u32).to_le_bytes());
        for part in parts {
            put_bytes(&mut out, part);
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Entry, EntryError> {
        let mut r = Reader(bytes);
        if r.take(4)? != MAGIC {
            return Err(EntryError("wrong magic"));
        }
        if r.u8()? != FORMAT {
            return Err(EntryError("unknown format version"));
        }
        let key_scheme = r.u8()?;
        let created_unix_ms = r.u64()?;
        let tenant = r.text()?;
        let model = r.text()?;
        let content_type = r.text()?;
        let usage = match r.u8()? {
            0 => None,
            1 => Some(SavedUsage {
                prompt_tokens: r.u64()?,
                completion_tokens: r.u64()?,
            }),
            _ => return Err(EntryError("bad usage flag")),
        };
        let shape = r.u8()?;
        let count = r.u32()?;
        if count > MAX_PARTS {
            return Err(EntryError("too many parts"));
        }
        let mut parts = Vec::with_capacity((count as usize).min(r.0.len() / 4 + 1));
        for _ in 0..count {
            let len = r.u32()? as usize;
            parts.push(Bytes::copy_from_slice(r.take(len)?));
        }
        if !r.0.is_empty() {
            return Err(EntryError("trailing bytes"));
        }
        let answer = match (shape, parts.len()) {
            (0, 1) => StoredAnswer::Completion(parts.remove(0)),
            (0, _) => return Err(EntryError("a completion has exactly one part")),
            (1, _) => StoredAnswer::Stream(parts),
            _ => return Err(EntryError("unknown shape")),
        };
        Ok(Entry {
            key_scheme,
            created_unix_ms,
            tenant,
            model,
            content_type,
            usage,
            answer,
        })
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], EntryError> {
        if self.0.len() < n {
            return Err(EntryError("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, EntryError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, EntryError> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(b))
    }

    fn u64(&mut self) -> Result<u64, EntryError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }

    fn text(&mut self) -> Result<String, EntryError> {
        let len = self.u32()? as usize;
        String::from_utf8(self.take(len)?.to_vec()).map_err(|_| EntryError("a name is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn entry() -> impl Strategy<Value = Entry> {
        let answer = prop_oneof![
            prop::collection::vec(any::<u8>(), 0..64)
                .prop_map(|b| StoredAnswer::Completion(Bytes::from(b))),
            prop::collection::vec(prop::collection::vec(any::<u8>(), 0..16), 0..8)
                .prop_map(|e| StoredAnswer::Stream(e.into_iter().map(Bytes::from).collect())),
        ];
        let usage = prop::option::of((any::<u64>(), any::<u64>()).prop_map(|(p, c)| SavedUsage {
            prompt_tokens: p,
            completion_tokens: c,
        }));
        (any::<u64>(), "[a-z]{0,8}", "[a-z/]{0,8}", usage, answer).prop_map(
            |(created, tenant, model, usage, answer)| Entry {
                key_scheme: KEY_SCHEME,
                created_unix_ms: created,
                tenant: tenant.clone(),
                model,
                content_type: "application/json".into(),
                usage,
                answer,
            },
        )
    }

    proptest! {
        #[test]
        fn an_entry_reads_back_as_written(e in entry()) {
            prop_assert_eq!(Entry::decode(&e.encode()).unwrap(), e);
        }

        /// Cut or altered anywhere, an entry is refused or read as some entry: never a panic,
        /// never an allocation a corrupt length asked for.
        #[test]
        fn damaged_bytes_are_refused_without_panicking(
            e in entry(),
            cut in any::<prop::sample::Index>(),
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        ) {
            let whole = e.encode();
            let n = cut.index(whole.len());
            prop_assert!(Entry::decode(&whole[..n]).is_err(), "a prefix of {} bytes", n);
            let mut bytes = whole;
            for (at, b) in flips {
                let i = at.index(bytes.len());
                bytes[i] = b;
            }
            let _ = Entry::decode(&bytes);
        }

        #[test]
        fn random_bytes_are_refused_without_panicking(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = Entry::decode(&bytes);
        }
    }

    #[test]
    fn a_huge_declared_count_is_refused_before_allocating() {
        let e = Entry::new(
            "t",
            "m",
            "application/json",
            None,
            StoredAnswer::Stream(vec![]),
        );
        let mut bytes = e.encode();
        let at = bytes.len() - 4;
        bytes[at..].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Entry::decode(&bytes), Err(EntryError("too many parts")));
    }
}
