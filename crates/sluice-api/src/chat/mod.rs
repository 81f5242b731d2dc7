//! OpenAI chat completions: request, response, stream chunk, usage.
//!
//! The request is parsed *leniently*: the fields sluice acts on are typed and validated with
//! errors that name the field (`messages[2].role`), and every other field — `tools`'
//! vendor extras, `response_format`, `logprobs`, anything a provider adds tomorrow — is kept in
//! [`ChatCompletionRequest::extra`] and written back unchanged when the request is forwarded.
//! Responses are typed strictly enough to produce them (the mock engine does) and to read
//! `usage` out of them (the gateway does); unknown response fields are ignored on read.
//!
//! The request and its parse are in `request.rs`, the completion and its usage in
//! `response.rs`, stream chunks in `chunk.rs`; every type is re-exported here, so
//! `sluice_api::chat::X` names it wherever it lives.

mod chunk;
mod request;
mod response;

pub use chunk::{
    ChatCompletionChunk, ChunkChoice, ChunkChoiceSummary, ChunkSummary, Delta, FunctionCallDelta,
    ToolCallDelta, UsageField,
};
pub use request::{
    json_type_name, ChatCompletionRequest, ChatMessage, FunctionDefinition, MessageContent,
    RequestError, StreamOptions, Tool,
};
pub use response::{
    AssistantMessage, ChatCompletion, Choice, FinishReason, FunctionCall, PromptTokensDetails,
    ToolCall, Usage, UsageSummary,
};
