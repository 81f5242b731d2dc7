//! A real Hugging Face `tokenizer.json` for tests of `--tokenizer`, trained here so that no
//! model file has to be downloaded or checked in.
//!
//! It is a byte-level BPE (the family of GPT-2, Llama 3, Qwen and Mistral's newer models)
//! with a deliberately small vocabulary: most English words take several tokens, so a count
//! made with it differs clearly from a word count or a chunk count, and a test can tell
//! which one the code under test used.

use std::collections::HashSet;
use std::path::Path;

use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::Tokenizer;

/// Text the vocabulary is learnt from: ordinary English, so common short words become
/// single tokens and longer ones stay split.
const CORPUS: &str = "\
the time of the year when people go to work and the day is long
a man and a woman in the world of school and family and state
the group of the country has a problem with the hand of the case
we think that the company will make a system for the program
you see the question about the number of the night at home
it is the water in the room where the mother and the father sit
";

/// Writes the tokenizer to `path`, and returns it for counting the expected answers.
pub fn write_small_bpe_tokenizer(path: &Path) -> anyhow::Result<Tokenizer> {
    let mut tokenizer = Tokenizer::new(BPE::default());
    tokenizer.with_pre_tokenizer(Some(ByteLevel::default()));
    tokenizer.with_decoder(Some(ByteLevel::default()));
    let alphabet: HashSet<char> = ByteLevel::alphabet().into_iter().collect();
    let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
        .show_progress(false)
        .vocab_size(alphabet.len() + 40)
        .initial_alphabet(alphabet)
        .build()
        .into();
    tokenizer
        .train(&mut trainer, CORPUS.lines())
        .map_err(|e| anyhow::anyhow!("training the test tokenizer: {e}"))?;
    tokenizer
        .save(path, false)
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    Ok(tokenizer)
}

/// Tokens in `text` as `tokenizer` counts them (no special tokens).
pub fn count(tokenizer: &Tokenizer, text: &str) -> usize {
    tokenizer
        .encode(text, false)
        .map(|e| e.len())
        .unwrap_or_else(|e| panic!("encoding {text:?}: {e}"))
}

/// Qwen2.5's `tokenizer.json` and `tokenizer_config.json` (vendored under
/// `tests/fixtures/tokenizers/qwen2.5`, the first kept gzipped) unpacked as a model directory,
/// for tests that need a real model's tokenizer and chat template.
pub fn qwen_model_dir() -> anyhow::Result<tempfile::TempDir> {
    use std::io::Read;
    let fixtures =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tokenizers/qwen2.5");
    let dir = tempfile::tempdir()?;
    let mut json = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(fixtures.join("tokenizer.json.gz"))?)
        .read_to_end(&mut json)?;
    std::fs::write(dir.path().join("tokenizer.json"), json)?;
    std::fs::copy(
        fixtures.join("tokenizer_config.json"),
        dir.path().join("tokenizer_config.json"),
    )?;
    Ok(dir)
}
