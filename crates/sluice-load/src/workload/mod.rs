//! What is sent: request bodies, built per request index so that any worker can build any
//! request and a seed always means the same traffic.
//!
//! - [`synthetic`]: prompts of sampled length from a word list, answers of sampled length
//!   forced with `max_tokens` + `ignore_eos`.
//! - [`shared_prefix`]: N long system prompts shared by M users each.
//! - [`multi_turn`]: conversations that resend their growing history every turn.
//! - [`dataset`]: chat request bodies from a JSONL file, optionally with trace timestamps.
//!
//! Generated single-turn workloads may also repeat a share of their requests
//! ([`repeats`]), for inference caches.

pub mod dataset;
pub mod multi_turn;
pub mod repeats;
pub mod shared_prefix;
pub mod sharegpt;
pub mod synthetic;
mod words;

pub(crate) use words::WORDS;

use std::path::PathBuf;

use bytes::Bytes;
use serde::Serialize;

use crate::dist::{LengthDist, PauseDist};
use crate::prng::Rng;
use crate::tokenizer::TokenCounter;

pub use dataset::{Dataset, DatasetError};
pub use multi_turn::{ConversationPool, TurnTicket};
pub use repeats::RepeatedPrompts;

/// The workload as configured (what the report prints).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum WorkloadSpec {
    Synthetic {
        input_tokens: LengthDist,
        output_tokens: LengthDist,
    },
    SharedPrefix {
        system_prompts: u32,
        users_per_prompt: u32,
        system_prompt_tokens: u32,
        input_tokens: LengthDist,
        output_tokens: LengthDist,
    },
    MultiTurn {
        turns: u32,
        system_prompt_tokens: u32,
        input_tokens: LengthDist,
        output_tokens: LengthDist,
        /// A user's pause between an answer and the next question.
        think_time: PauseDist,
    },
    File {
        path: PathBuf,
        keep_model: bool,
        trace_timestamps: bool,
    },
}

impl WorkloadSpec {
    /// Whether `--repeat-share` may apply: a conversation's turn or a dataset's line
    /// cannot be sent again as if it were new (the conversation's state moves on; the file
    /// is what it is).
    pub fn repeatable(&self) -> bool {
        matches!(
            self,
            WorkloadSpec::Synthetic { .. } | WorkloadSpec::SharedPrefix { .. }
        )
    }

    pub fn name(&self) -> &'static str {
        match self {
            WorkloadSpec::Synthetic { .. } => "synthetic",
            WorkloadSpec::SharedPrefix { .. } => "shared-prefix",
            WorkloadSpec::MultiTurn { .. } => "multi-turn",
            WorkloadSpec::File { .. } => "file",
        }
    }
}

/// One request ready to go on the wire.
#[derive(Debug)]
pub struct PreparedRequest {
    pub body: Bytes,
    /// Sent as `x-session-id`, so session-affine routers can keep a conversation together.
    pub session_id: Option<String>,
    /// `max_tokens` as sent, when known.
    pub requested_output_tokens: Option<u32>,
    /// Length of the prompt's message texts as the generator built them: in words (≈ tokens),
    /// or in tokens when `--tokenizer` is given. Generated workloads only.
    pub approx_input_tokens: Option<u32>,
    /// For multi-turn: the conversation, handed back with the answer via [`Workload::finish`].
    pub turn: Option<TurnTicket>,
}

/// Fields common to every request the generator builds itself.
#[derive(Debug, Clone)]
pub struct RequestShape {
    pub model: String,
    pub stream: bool,
    pub seed: u64,
    /// `--tokenizer`: prompt lengths are real tokens, not words.
    pub tokenizer: Option<TokenCounter>,
}

impl RequestShape {
    /// Prompt text of `tokens` tokens: that many words, or sized by the tokenizer.
    pub(crate) fn prompt_text(&self, rng: &mut Rng, tokens: u32) -> String {
        match &self.tokenizer {
            Some(t) => t.prompt(rng, tokens).0,
            None => words_text(rng, tokens),
        }
    }

    /// Length of a message text in the unit prompts are sized in (tokens with a tokenizer,
    /// else words).
    pub(crate) fn text_length(&self, text: &str) -> u32 {
        let words = || {
            if text.is_empty() {
                0
            } else {
                u32::try_from(text.split(' ').count()).unwrap_or(u32::MAX)
            }
        };
        match &self.tokenizer {
            Some(t) => t.count(text).unwrap_or_else(words),
            None => words(),
        }
    }
}

/// A built workload: cheap to share between workers.
#[derive(Debug)]
pub struct Workload {
    kind: WorkloadKind,
    repeats: Option<RepeatedPrompts>,
    seed: u64,
}

#[derive(Debug)]
enum WorkloadKind {
    Synthetic(synthetic::Synthetic),
    SharedPrefix(shared_prefix::SharedPrefix),
    MultiTurn(ConversationPool),
    File(Dataset),
}

impl Workload {
    /// Builds the workload (reads and checks a dataset file; makes system prompts).
    /// `repeats` is for the workloads whose [`WorkloadSpec::repeatable`] says so.
    pub fn build(
        spec: &WorkloadSpec,
        shape: RequestShape,
        repeats: Option<RepeatedPrompts>,
    ) -> Result<Workload, DatasetError> {
        let seed = shape.seed;
        let kind = match spec {
            WorkloadSpec::Synthetic {
                input_tokens,
                output_tokens,
            } => WorkloadKind::Synthetic(synthetic::Synthetic::new(
                shape,
                *input_tokens,
                *output_tokens,
            )),
            WorkloadSpec::SharedPrefix {
                system_prompts,
                users_per_prompt,
                system_prompt_tokens,
                input_tokens,
                output_tokens,
            } => WorkloadKind::SharedPrefix(shared_prefix::SharedPrefix::new(
                shape,
                *system_prompts,
                *users_per_prompt,
                *system_prompt_tokens,
                *input_tokens,
                *output_tokens,
            )),
            WorkloadSpec::MultiTurn {
                turns,
                system_prompt_tokens,
                input_tokens,
                output_tokens,
                think_time,
            } => WorkloadKind::MultiTurn(ConversationPool::new(
                shape,
                *turns,
                *system_prompt_tokens,
                *input_tokens,
                *output_tokens,
                *think_time,
            )),
            WorkloadSpec::File {
                path,
                keep_model,
                trace_timestamps,
            } => WorkloadKind::File(Dataset::load(path, &shape, *keep_model, *trace_timestamps)?),
        };
        Ok(Workload {
            kind,
            repeats,
            seed,
        })
    }

    /// The request with this index (with `--repeat-share`, perhaps a popular one instead).
    pub fn prepare(&self, index: u64) -> PreparedRequest {
        let index = self.repeats.map_or(index, |r| r.index(self.seed, index));
        match &self.kind {
            WorkloadKind::Synthetic(w) => w.prepare(index),
            WorkloadKind::SharedPrefix(w) => w.prepare(index),
            WorkloadKind::MultiTurn(w) => w.prepare(index),
            WorkloadKind::File(w) => w.prepare(index),
        }
    }

    /// Whether the client must keep the answer text (for the next turn's history).
    pub fn wants_reply_text(&self) -> bool {
        matches!(self.kind, WorkloadKind::MultiTurn(_))
    }

    /// Hands a finished turn back with the answer text, if there was one.
    pub fn finish(&self, ticket: TurnTicket, reply: Option<String>) {
        if let WorkloadKind::MultiTurn(pool) = &self.kind {
            pool.finish(ticket, reply);
        }
    }

    /// Trace replay offsets (seconds from the first line), when the dataset has them.
    pub fn trace_offsets(&self) -> Option<&[f64]> {
        match &self.kind {
            WorkloadKind::File(d) => d.trace_offsets(),
            _ => None,
        }
    }

    /// How many distinct requests the workload has before it repeats (files only).
    pub fn distinct_requests(&self) -> Option<usize> {
        match &self.kind {
            WorkloadKind::File(d) => Some(d.len()),
            _ => None,
        }
    }
}

/// `words` words of prompt text from the vocabulary, space separated.
pub(crate) fn push_words(out: &mut String, rng: &mut Rng, words: u32) {
    out.reserve(words as usize * 7);
    for i in 0..words {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(words::WORDS[rng.below(words::WORDS.len() as u64) as usize]);
    }
}

pub(crate) fn words_text(rng: &mut Rng, words: u32) -> String {
    let mut s = String::new();
    push_words(&mut s, rng, words);
    s
}

/// A chat message as the generator writes it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Message<'a> {
    pub role: &'a str,
    pub content: &'a str,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

/// The body of a generated request. `ignore_eos` (a vLLM extension, ignored by servers
/// that do not know it) makes the answer exactly `max_tokens` long, so output length is
/// controlled; usage is requested on streams so token counts come from the server.
#[derive(Serialize)]
struct GeneratedBody<'a> {
    model: &'a str,
    messages: &'a [Message<'a>],
    max_tokens: u32,
    ignore_eos: bool,
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
}

pub(crate) fn generated_body(
    shape: &RequestShape,
    messages: &[Message<'_>],
    max_tokens: u32,
) -> Bytes {
    let body = GeneratedBody {
        model: &shape.model,
        messages,
        max_tokens,
        ignore_eos: true,
        stream: shape.stream,
        stream_options: shape.stream.then_some(StreamOptions {
            include_usage: true,
        }),
    };
    // Strings and integers always serialise.
    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_body_is_a_valid_chat_request() {
        let shape = RequestShape {
            model: "m".into(),
            stream: true,
            seed: 1,
            tokenizer: None,
        };
        let body = generated_body(
            &shape,
            &[Message {
                role: "user",
                content: "hi \"there\"",
            }],
            17,
        );
        let req = sluice_api::ChatCompletionRequest::from_slice(&body).unwrap();
        assert_eq!(req.model, "m");
        assert_eq!(req.output_cap(), Some(17));
        assert!(req.is_stream() && req.wants_stream_usage());
        assert_eq!(
            req.extra.get("ignore_eos"),
            Some(&serde_json::Value::Bool(true))
        );
    }

    #[test]
    fn word_text_has_the_asked_length() {
        let mut r = Rng::new(1);
        assert_eq!(words_text(&mut r, 50).split(' ').count(), 50);
        assert_eq!(words_text(&mut r, 0), "");
    }
}
