//! The audit file: append-only, rotated by size, synced by policy.
//!
//! Rotation renames `audit.jsonl` to `audit.jsonl.1` (shifting older ones up, the oldest
//! beyond `keep` removed) and opens a new file; a line is never split across two files.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// When written lines are forced to the disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fsync {
    /// After every line: nothing acknowledged is lost in a crash, at a disk flush per request.
    Always,
    /// At most once a second (the default), and a second after the last line: at most the
    /// last second's records are lost in a power failure. Syncing after every drained batch
    /// instead cost the request path's tail at low rates (a disk flush per request, when
    /// every batch is one record).
    #[default]
    Second,
    /// Left to the operating system.
    Never,
}

pub struct FileSink {
    path: PathBuf,
    out: BufWriter<File>,
    size: u64,
    max_bytes: u64,
    keep: usize,
    fsync: Fsync,
    /// Lines written since the last sync, and when that was.
    unsynced: bool,
    last_sync: std::time::Instant,
}

impl FileSink {
    /// Opens `path` for appending (creating its directory), rotating beyond `max_bytes` and
    /// keeping `keep` rotated files.
    pub fn open(
        path: &Path,
        max_bytes: u64,
        keep: usize,
        fsync: Fsync,
    ) -> std::io::Result<FileSink> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = open_append(path)?;
        let size = file.metadata()?.len();
        Ok(FileSink {
            path: path.to_owned(),
            out: BufWriter::new(file),
            size,
            max_bytes: max_bytes.max(1024),
            keep,
            fsync,
            unsynced: false,
            last_sync: std::time::Instant::now(),
        })
    }

    /// Appends one whole line, rotating first if it would not fit.
    pub fn append(&mut self, line: &[u8]) -> std::io::Result<()> {
        if self.size > 0 && self.size + line.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        self.out.write_all(line)?;
        self.size += line.len() as u64;
        self.unsynced = true;
        if self.fsync == Fsync::Always {
            self.out.flush()?;
            self.out.get_ref().sync_data()?;
        }
        Ok(())
    }

    /// The end of a batch: written out, and synced if the policy says it is time.
    pub fn end_batch(&mut self) -> std::io::Result<()> {
        self.out.flush()?;
        self.sync_if_due()
    }

    /// Writes out and syncs now, whatever the policy (at shutdown).
    pub fn sync_now(&mut self) -> std::io::Result<()> {
        self.out.flush()?;
        if self.fsync != Fsync::Never {
            self.out.get_ref().sync_data()?;
            self.unsynced = false;
        }
        Ok(())
    }

    /// Syncs what is written when the once-a-second policy says so (the writer calls it when
    /// idle, too, so the last lines do not wait for the next request).
    pub fn sync_if_due(&mut self) -> std::io::Result<()> {
        if self.fsync == Fsync::Second
            && self.unsynced
            && self.last_sync.elapsed() >= std::time::Duration::from_secs(1)
        {
            self.out.flush()?;
            self.out.get_ref().sync_data()?;
            self.unsynced = false;
            self.last_sync = std::time::Instant::now();
        }
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.out.flush()?;
        self.out.get_ref().sync_data()?;
        let numbered = |n: usize| {
            let mut p = self.path.clone().into_os_string();
            p.push(format!(".{n}"));
            PathBuf::from(p)
        };
        if self.keep == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            let _ = std::fs::remove_file(numbered(self.keep));
            for n in (1..self.keep).rev() {
                let from = numbered(n);
                if from.exists() {
                    std::fs::rename(&from, numbered(n + 1))?;
                }
            }
            std::fs::rename(&self.path, numbered(1))?;
        }
        self.out = BufWriter::new(open_append(&self.path)?);
        self.size = 0;
        Ok(())
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // Who asked what is nobody else's business.
        options.mode(0o600);
    }
    options.open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_keeps_whole_lines_and_the_newest_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut sink = FileSink::open(&path, 1024, 2, Fsync::Second).unwrap();
        let line = |i: usize| format!("{{\"n\":{i},\"pad\":\"{}\"}}\n", "x".repeat(200));
        for i in 0..20 {
            sink.append(line(i).as_bytes()).unwrap();
        }
        sink.end_batch().unwrap();
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        let current = read(&path);
        let one = read(&dir.path().join("audit.jsonl.1"));
        let two = read(&dir.path().join("audit.jsonl.2"));
        assert!(!dir.path().join("audit.jsonl.3").exists());
        for text in [&current, &one, &two] {
            assert!(text.len() <= 1024, "{}", text.len());
            for l in text.lines() {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                assert!(v["n"].is_u64());
            }
        }
        // The newest lines are in the current file, the ones before in .1, then .2.
        let last = |t: &str| -> u64 {
            serde_json::from_str::<serde_json::Value>(t.lines().last().unwrap()).unwrap()["n"]
                .as_u64()
                .unwrap()
        };
        assert_eq!(last(&current), 19);
        assert!(last(&one) < 19 && last(&two) < last(&one));
        // Reopening appends.
        drop(sink);
        let mut again = FileSink::open(&path, 1024, 2, Fsync::Never).unwrap();
        again.append(b"{\"n\":20}\n").unwrap();
        again.end_batch().unwrap();
        assert!(read(&path).ends_with("{\"n\":20}\n"));
    }
}
