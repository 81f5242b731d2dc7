//! Token counts from the target model's own tokenizer, when the user gives one
//! (`--tokenizer tokenizer.json`: the Hugging Face format that open models ship).
//!
//! Without one, the generator promises word counts (its prompt words are one token each in
//! the common tokenizers) and counts output tokens from `usage` or from stream chunks. With
//! one, prompts are sized in real tokens, answers that come without `usage` are counted by
//! tokenizing their text, and `load import` asks for exactly as many tokens as each recorded
//! answer had. Counts exclude special tokens and the chat template: they are the tokens of the
//! text itself, which is what a prompt length or an answer length means to a user.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::prng::Rng;
use crate::workload::push_words;

#[derive(Debug, thiserror::Error)]
#[error("--tokenizer {}: {message}", path.display())]
pub struct TokenizerError {
    pub path: PathBuf,
    pub message: String,
}

/// A loaded tokenizer; cheap to clone and share between threads.
#[derive(Clone)]
pub struct TokenCounter {
    inner: Arc<tokenizers::Tokenizer>,
    path: PathBuf,
}

impl fmt::Debug for TokenCounter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCounter")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl TokenCounter {
    /// Reads a `tokenizer.json`. Refused when it cannot encode the generator's own prompt
    /// words, so that sizing a prompt can never fail in the middle of a run.
    pub fn load(path: &Path) -> Result<TokenCounter, TokenizerError> {
        let fail = |message: String| TokenizerError {
            path: path.to_owned(),
            message,
        };
        let bytes = std::fs::read(path).map_err(|e| fail(format!("cannot read it: {e}")))?;
        let inner = tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| {
            fail(format!(
                "not a Hugging Face tokenizer.json ({e}); give the file from the model's repository"
            ))
        })?;
        let counter = TokenCounter {
            inner: Arc::new(inner),
            path: path.to_owned(),
        };
        let probe = crate::workload::WORDS.join(" ");
        match counter.try_count(&probe) {
            Ok(n) if n > 0 => Ok(counter),
            Ok(_) => Err(fail("it encodes plain English text to no tokens".into())),
            Err(e) => Err(fail(format!("it cannot encode plain English text: {e}"))),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn try_count(&self, text: &str) -> Result<u32, String> {
        self.inner
            .encode_fast(text, false)
            .map(|e| u32::try_from(e.len()).unwrap_or(u32::MAX))
            .map_err(|e| e.to_string())
    }

    /// Tokens in `text`, special tokens excluded; `None` when the tokenizer cannot encode it
    /// (a vocabulary without an unknown token meeting a character it lacks).
    pub fn count(&self, text: &str) -> Option<u32> {
        self.try_count(text).ok()
    }

    /// A prompt of exactly `tokens` tokens when the tokenizer allows it, built from the
    /// generator's words: grown a word at a time until it is long enough, then cut after its
    /// `tokens`-th token. Cutting can change how the tail encodes, so the cut text is
    /// recounted and, if it came out long, cut one token earlier. Returns the text and its
    /// count.
    pub fn prompt(&self, rng: &mut Rng, tokens: u32) -> (String, u32) {
        let mut text = String::new();
        let mut count = 0;
        while count < tokens {
            if !text.is_empty() {
                text.push(' ');
            }
            // Each word is about one token: ask for the shortfall, and recount.
            push_words(&mut text, rng, tokens - count);
            match self.count(&text) {
                Some(n) if n > count => count = n,
                // No progress (or no encoding): words cannot size this prompt.
                _ => return (text, count),
            }
        }
        if count == tokens {
            return (text, count);
        }
        let Ok(encoding) = self.inner.encode(text.as_str(), false) else {
            return (text, count);
        };
        let offsets = encoding.get_offsets();
        for keep in (1..=tokens as usize).rev() {
            let end = offsets.get(keep - 1).map_or(0, |o| o.1);
            if end == 0 || !text.is_char_boundary(end) {
                continue;
            }
            let cut = &text[..end];
            if let Some(n) = self.count(cut) {
                if n <= tokens {
                    return (cut.to_owned(), n);
                }
            }
        }
        (text, count)
    }
}
