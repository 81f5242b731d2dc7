//! The recordings directory: one pretty JSON file per entry, named
//! `{method}-{path-slug}-{key[..12]}-{n}.json` (the slug starts with the host for forward
//! requests), written atomically.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::atomic_file::write_atomically;
use crate::entry::Entry;
use crate::key::{RequestKey, KEY_VERSION};

/// The proxy's own bookkeeping inside a recordings directory (`last-run.json`,
/// `drift.json`). A directory, and dot-named, so it is never taken for an entry.
pub const STATE_DIR: &str = ".sluice";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create recordings directory {path}: {source}")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("cannot read recording {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("recording {path} is not a valid entry (fix or delete the file): {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot write recording {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot serialize entry: {0}")]
    Serialize(serde_json::Error),
}

/// Recordings on disk plus, per key, how many identical requests this proxy run has seen.
#[derive(Debug)]
pub struct ReplayStore {
    dir: PathBuf,
    repeats: Mutex<RepeatCounts>,
    /// See [`crate::ProxyConfig::reset_repeats_when_idle`].
    reset_when_idle: Option<Duration>,
}

/// Identical requests seen per key since the counts last started.
#[derive(Debug, Default)]
struct RepeatCounts {
    seen: HashMap<RequestKey, usize>,
    last_request: Option<Instant>,
}

impl ReplayStore {
    /// Opens `dir`, creating it when missing.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
        Ok(ReplayStore {
            dir: dir.to_owned(),
            repeats: Mutex::new(RepeatCounts::default()),
            reset_when_idle: None,
        })
    }

    /// The same store, whose repeat counts restart after `idle` without a request.
    pub fn reset_repeats_when_idle(mut self, idle: Option<Duration>) -> Self {
        self.reset_when_idle = idle;
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The position of this request among identical ones since the counts started (the
    /// proxy's start, a reset, or an idle gap): 0 for the first.
    pub fn next_index(&self, key: &RequestKey) -> usize {
        let now = Instant::now();
        let mut repeats = self.repeats.lock().unwrap_or_else(|p| p.into_inner());
        let idle = repeats.last_request.map(|at| now.duration_since(at));
        if let (Some(idle), Some(limit)) = (idle, self.reset_when_idle) {
            if idle >= limit && !repeats.seen.is_empty() {
                tracing::info!(
                    "repeat counts restarted after {:.1} s without a request ({} keys)",
                    idle.as_secs_f64(),
                    repeats.seen.len()
                );
                repeats.seen.clear();
            }
        }
        repeats.last_request = Some(now);
        let n = repeats.seen.entry(key.clone()).or_insert(0);
        let index = *n;
        *n += 1;
        index
    }

    /// Restarts the repeat counts: the next of any identical requests is answered from
    /// index 0 again. Returns how many keys had counts.
    pub fn reset_repeats(&self) -> usize {
        let mut repeats = self.repeats.lock().unwrap_or_else(|p| p.into_inner());
        let keys = repeats.seen.len();
        repeats.seen.clear();
        keys
    }

    pub fn file_name(method: &str, path: &str, key: &RequestKey, index: usize) -> String {
        format!(
            "{}-{}-{}-{index}.json",
            method.to_ascii_lowercase(),
            path_slug(path),
            key.short()
        )
    }

    /// The entry at `index`, or `None` when the file is missing or records another key
    /// (a 12-digit prefix collision) or another key scheme version.
    pub fn load(
        &self,
        method: &str,
        path: &str,
        key: &RequestKey,
        index: usize,
    ) -> Result<Option<(PathBuf, Entry)>, StoreError> {
        let file = self.dir.join(Self::file_name(method, path, key, index));
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StoreError::Read { path: file, source }),
        };
        let entry: Entry = serde_json::from_str(&text).map_err(|source| StoreError::Parse {
            path: file.clone(),
            source,
        })?;
        if entry.key != key.as_str() || entry.key_version != KEY_VERSION {
            return Ok(None);
        }
        Ok(Some((file, entry)))
    }

    /// The entry to replay for the `index`-th identical request: the one at `index`, or
    /// when the recordings run out, the last one (so the final answer repeats).
    pub fn load_for_replay(
        &self,
        method: &str,
        path: &str,
        key: &RequestKey,
        index: usize,
    ) -> Result<Option<(PathBuf, Entry)>, StoreError> {
        if let Some(found) = self.load(method, path, key, index)? {
            return Ok(Some(found));
        }
        let mut last = None;
        for i in 0..index {
            match self.load(method, path, key, i)? {
                Some(found) => last = Some(found),
                None => break,
            }
        }
        Ok(last)
    }

    /// Writes `entry` as file `index` atomically: a uniquely named temporary file in the
    /// same directory, fsynced, then renamed over the target, so readers see the old file
    /// or the new one, and of concurrent writers of one name exactly one wins whole.
    pub fn write(&self, entry: &Entry, index: usize) -> Result<PathBuf, StoreError> {
        let key = RequestKey::from_hex(&entry.key);
        let name = Self::file_name(
            &entry.request.method,
            &entry.request.name_path(),
            &key,
            index,
        );
        let target = self.dir.join(&name);
        let mut text = serde_json::to_string_pretty(entry).map_err(StoreError::Serialize)?;
        text.push('\n');
        write_atomically(&target, text.as_bytes()).map_err(|source| StoreError::Write {
            path: target.clone(),
            source,
        })?;
        Ok(target)
    }

    /// The names of the entry files in the directory, sorted: regular `*.json` files not
    /// starting with a dot (temporary files and [`STATE_DIR`] are not entries).
    pub fn entry_file_names(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for item in std::fs::read_dir(&self.dir)? {
            let item = item?;
            if !item.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            if let Ok(name) = item.file_name().into_string() {
                if name.ends_with(".json") && !name.starts_with('.') {
                    names.push(name);
                }
            }
        }
        names.sort();
        Ok(names)
    }

    /// Reads and parses the entry file `name` (as listed by [`Self::entry_file_names`]).
    pub fn read_entry(&self, name: &str) -> Result<Entry, StoreError> {
        let path = self.dir.join(name);
        let text = std::fs::read_to_string(&path).map_err(|source| StoreError::Read {
            path: path.clone(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| StoreError::Parse { path, source })
    }
}

/// The repeat index `n` of an entry file named `…-{n}.json`.
pub fn index_of_file(name: &str) -> Option<usize> {
    name.strip_suffix(".json")?.rsplit('-').next()?.parse().ok()
}

/// `/v1/chat/completions` → `v1-chat-completions`: lowercase ASCII letters and digits,
/// everything else one `-`, at most 60 characters.
pub fn path_slug(path: &str) -> String {
    let mut slug = String::new();
    for c in path.chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.ends_with('-') {
            slug.push('-');
        }
        if slug.len() >= 60 {
            break;
        }
    }
    let slug = slug.trim_matches('-');
    if slug.is_empty() {
        "root".to_owned()
    } else {
        slug.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_file_name_safe() {
        assert_eq!(path_slug("/v1/chat/completions"), "v1-chat-completions");
        assert_eq!(path_slug("/"), "root");
        assert_eq!(path_slug("/../../etc"), "etc");
        assert!(path_slug(&"a/".repeat(100)).len() <= 60);
    }

    #[test]
    fn listing_skips_state_temporary_and_other_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = ReplayStore::open(dir.path()).unwrap();
        std::fs::create_dir(dir.path().join(STATE_DIR)).unwrap();
        std::fs::create_dir(dir.path().join("sub.json")).unwrap();
        for name in [
            "post-x-abc-1.json",
            ".post-x.json.1.0.tmp",
            "notes.txt",
            "get-y-0.json",
        ] {
            std::fs::write(dir.path().join(name), "{}").unwrap();
        }
        assert_eq!(
            store.entry_file_names().unwrap(),
            vec!["get-y-0.json", "post-x-abc-1.json"]
        );
        assert_eq!(index_of_file("post-x-abc-12.json"), Some(12));
        assert_eq!(index_of_file("post-x-abc.json"), None);
    }
}
