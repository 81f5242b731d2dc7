//! Prompt tokens as the engine computes them. Prefix-aware routing names a prompt's blocks
//! by their tokens, so the gateway must turn a chat request into exactly the engine's token
//! ids: the same chat template, the same tokenizer.
//!
//! - [`PromptTokenizer::Mock`]: the mock engine's (`sluice_api::mock_tokenizer`).
//! - [`PromptTokenizer::HuggingFace`]: a model's `tokenizer.json` and chat template, applied
//!   as vLLM applies them ([`HfChatTokenizer`]).

mod hf;
mod python_json;
mod segments;
mod strftime;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sluice_api::ChatCompletionRequest;

pub use hf::HfChatTokenizer;
pub use segments::SegmentCacheStats;

/// Memory a model's tokenizer keeps for the ids of prompt pieces it has tokenized, by
/// default: 64 MiB holds about 15 M tokens of conversations' earlier turns.
pub const DEFAULT_TOKENIZER_CACHE_BYTES: u64 = 64 << 20;

/// How a model's engines tokenize chat requests.
#[derive(Debug, Clone)]
pub enum PromptTokenizer {
    Mock,
    HuggingFace(Arc<HfChatTokenizer>),
}

impl PromptTokenizer {
    /// `"mock"`, or the path of a model's tokenizer files (see [`HfChatTokenizer::load`]),
    /// with `cache_bytes` for the pieces of prompts already tokenized (0: none kept).
    pub fn load(spec: &str, cache_bytes: u64) -> Result<Self, TokenizerLoadError> {
        if spec == "mock" {
            return Ok(PromptTokenizer::Mock);
        }
        HfChatTokenizer::load(Path::new(spec), cache_bytes)
            .map(|t| PromptTokenizer::HuggingFace(Arc::new(t)))
    }

    /// The request's prompt token ids.
    pub fn prompt_tokens(
        &self,
        request: &ChatCompletionRequest,
    ) -> Result<Vec<u32>, TokenizeError> {
        match self {
            PromptTokenizer::Mock => Ok(sluice_api::mock_tokenizer::encode_chat(request)),
            PromptTokenizer::HuggingFace(t) => t.prompt_tokens(request),
        }
    }

    /// Whether tokenizing takes long enough (microseconds a token) to move a long prompt
    /// off a thread that serves other requests. The mock's takes nanoseconds.
    pub fn is_costly(&self) -> bool {
        matches!(self, PromptTokenizer::HuggingFace(_))
    }

    /// The counts of the cache of prompt pieces (the mock's tokenizer keeps none).
    pub fn cache_stats(&self) -> Option<SegmentCacheStats> {
        match self {
            PromptTokenizer::Mock => None,
            PromptTokenizer::HuggingFace(t) => t.cache_stats(),
        }
    }

    /// The prompt text the chat template makes of the request (the mock has none: `None`).
    pub fn render(&self, request: &ChatCompletionRequest) -> Option<Result<String, TokenizeError>> {
        match self {
            PromptTokenizer::Mock => None,
            PromptTokenizer::HuggingFace(t) => Some(t.render(request)),
        }
    }
}

/// A tokenizer that could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("tokenizer {}: {message}", path.display())]
pub struct TokenizerLoadError {
    pub path: PathBuf,
    pub message: String,
}

/// A request the tokenizer could not turn into tokens. The engine would most likely refuse
/// it too; routing goes on without its prefix and lets the engine answer.
#[derive(Debug, thiserror::Error)]
pub enum TokenizeError {
    #[error("chat template: {0}")]
    Template(String),
    #[error("tokenizer: {0}")]
    Encode(String),
}
