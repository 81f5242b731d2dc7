//! Qwen2.5's tokenizer files (vendored under `tests/fixtures/tokenizers/qwen2.5`, the
//! tokenizer.json gzipped) unpacked as a model directory. Shared by the tests and benches of
//! this crate (`#[path]`), which do not depend on the testkit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::path::{Path, PathBuf};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tokenizers")
}

pub fn qwen_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let gz = std::fs::File::open(fixtures().join("qwen2.5/tokenizer.json.gz")).unwrap();
    let mut json = Vec::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_end(&mut json)
        .unwrap();
    std::fs::write(dir.path().join("tokenizer.json"), json).unwrap();
    std::fs::copy(
        fixtures().join("qwen2.5/tokenizer_config.json"),
        dir.path().join("tokenizer_config.json"),
    )
    .unwrap();
    dir
}
