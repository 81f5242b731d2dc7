//! `POST /v1/chat/completions`.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use sluice_api::chat::{
    AssistantMessage, ChatCompletion, ChatCompletionRequest, Choice, PromptTokensDetails, Usage,
};
use tokio::time::Instant;

use super::errors::ApiError;
use super::stream::{sse_response, StreamFaults};
use super::{authorize, unix_now};
use crate::completion::{fragment_ranges, Completion, CompletionBody, ARGUMENT_FRAGMENT_BYTES};
use crate::engine::MockEngine;
use crate::faults::{FaultDraw, Faults};
use crate::kv_cache::PromptBlocks;
use crate::prng::mix64;
use crate::stats::RequestGuard;
use crate::timing::{pause, wait, Pacer};
use sluice_api::mock_tokenizer::encode_chat;

pub(super) const SYSTEM_FINGERPRINT: &str = "fp_sluice_mock";

/// A decided answer and the metadata every representation of it carries.
pub(super) struct Answer {
    pub completion: Completion,
    pub usage: Usage,
    pub id: String,
    pub created: u64,
    pub model: String,
}

pub(super) async fn chat_completions(
    State(engine): State<Arc<MockEngine>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    engine.counters().count_request();
    let body = match body {
        Ok(b) => b,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let request_id = headers
        .get(&super::X_REQUEST_ID)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let header = |name: &str| {
        headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    let trace = crate::request_log::TraceHeaders {
        traceparent: header("traceparent"),
        tracestate: header("tracestate"),
    };
    engine.request_log().record(request_id, trace, &body);
    if let Err(e) = authorize(&engine, &headers) {
        return e.into_response();
    }
    let request = match ChatCompletionRequest::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let options = engine.options();
    let completion = match Completion::for_request(&request, &options.output, options.seed) {
        Ok(c) => c,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let prompt = encode_chat(&request);
    let prompt_blocks = engine.prompt_blocks(&prompt);
    // The provider's own limits, as a hosted API enforces them: charged the prompt and the
    // answer about to be generated, refused with 429 beyond them.
    let mut rate = None;
    let mut place = None;
    if let Some(gate) = engine.provider_gate() {
        let tokens = prompt.len() as u64 + completion.completion_tokens;
        match gate.admit(tokens) {
            Ok((held, headers)) => {
                engine.counters().count_admitted(tokens);
                place = Some(held);
                rate = Some(headers);
            }
            Err(limited) => {
                engine.counters().count_rate_limited();
                return ApiError::rate_limited(&limited).into_response();
            }
        }
    }
    // From here on the request counts as in flight, and as cancelled if the client leaves.
    let mut guard = engine.begin_request();
    if let Some(place) = place {
        guard.hold(place);
    }
    let (faults, draw) = engine.draw_faults();
    pause(Duration::from_millis(faults.added_latency_ms)).await;
    let admitted = Admitted {
        engine,
        guard,
        request,
        completion,
        prompt_len: prompt.len(),
        prompt_blocks,
        faults,
        draw,
    };
    let mut response = admitted.answer().await;
    if let Some(rate) = rate {
        rate.apply(response.headers_mut());
    }
    response
}

/// A valid request that made it past authentication and validation.
struct Admitted {
    engine: Arc<MockEngine>,
    guard: RequestGuard,
    request: ChatCompletionRequest,
    completion: Completion,
    prompt_len: usize,
    prompt_blocks: PromptBlocks,
    faults: Faults,
    draw: FaultDraw,
}

impl Admitted {
    async fn answer(mut self) -> Response {
        let counters = self.engine.counters();
        if self.draw.error {
            counters.count_fault();
            self.guard.fail();
            return ApiError::injected(&self.faults).into_response();
        }
        if self.draw.invalid_tool_args && self.completion.break_tool_arguments() {
            counters.count_fault();
        }
        let cached = self
            .engine
            .lookup_prefix(&self.prompt_blocks.hashes, self.prompt_len)
            .cached_tokens;
        counters.count_prompt(self.prompt_len as u64, cached as u64);
        let pacer = Pacer::new(
            self.engine.options().timing,
            Instant::now(),
            self.prompt_len - cached.min(self.prompt_len),
        );
        let completion_tokens = self.completion.completion_tokens;
        let usage = Usage {
            prompt_tokens: self.prompt_len as u64,
            completion_tokens,
            total_tokens: self.prompt_len as u64 + completion_tokens,
            prompt_tokens_details: Some(PromptTokensDetails {
                cached_tokens: cached as u64,
            }),
        };
        let number = self.engine.next_completion_number();
        let answer = Answer {
            // Unique per request of this engine; the mix only makes ids look like ids.
            id: format!(
                "chatcmpl-{:016x}{:08x}",
                mix64(self.engine.options().seed ^ mix64(number.wrapping_add(1))),
                number as u32
            ),
            created: unix_now(),
            model: self.request.model.clone(),
            usage,
            completion: self.completion,
        };
        let stall = Duration::from_millis(self.faults.stall_ms);
        if self.request.is_stream() {
            let faults = StreamFaults {
                stall: self
                    .draw
                    .stall
                    .then_some((self.faults.stall_after_chunks, stall)),
                disconnect_after: self
                    .draw
                    .disconnect
                    .then_some(self.faults.disconnect_after_chunks),
            };
            let include_usage = self.request.wants_stream_usage();
            return sse_response(
                self.engine,
                self.guard,
                answer,
                pacer,
                self.prompt_blocks,
                faults,
                include_usage,
            );
        }
        let stall = self.draw.stall.then_some(stall);
        wait_for_generation(
            &self.engine,
            pacer,
            &answer.completion,
            &self.prompt_blocks,
            stall,
        )
        .await;
        if self.draw.disconnect {
            counters.count_fault();
            self.guard.fail();
            return aborted_response();
        }
        self.guard.complete(completion_tokens);
        completion_response(answer)
    }
}

/// Sleeps as long as streaming the answer would take, so both kinds of answer arrive
/// together. A stall, if any, comes right after prefill.
async fn wait_for_generation(
    engine: &MockEngine,
    mut pacer: Pacer,
    completion: &Completion,
    prompt_blocks: &PromptBlocks,
    stall: Option<Duration>,
) {
    let slots = match &completion.body {
        CompletionBody::Text(text) => text.len().max(1),
        CompletionBody::ToolCall(call) => {
            1 + fragment_ranges(&call.function.arguments, ARGUMENT_FRAGMENT_BYTES).len()
        }
    };
    for slot in 0..slots {
        wait(pacer.next_slot(engine.counters().in_flight())).await;
        if slot == 0 {
            engine.store_prefix(prompt_blocks);
            if let Some(d) = stall {
                engine.counters().count_fault();
                wait(pacer.push_back(d)).await;
            }
        }
    }
}

fn completion_response(answer: Answer) -> Response {
    let (content, tool_calls) = match answer.completion.body {
        CompletionBody::Text(text) => (Some(text.as_str().to_owned()), None),
        CompletionBody::ToolCall(call) => (None, Some(vec![call])),
    };
    let body = ChatCompletion {
        id: answer.id,
        object: "chat.completion".to_owned(),
        created: answer.created,
        model: answer.model,
        choices: vec![Choice {
            index: 0,
            message: AssistantMessage {
                role: "assistant".to_owned(),
                content,
                tool_calls,
                refusal: None,
            },
            finish_reason: Some(answer.completion.finish),
            logprobs: None,
        }],
        usage: Some(answer.usage),
        system_fingerprint: Some(SYSTEM_FINGERPRINT.to_owned()),
    };
    // Plain data with string keys: serialization cannot fail.
    let json = serde_json::to_vec(&body).unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        json,
    )
        .into_response()
}

/// A response whose body fails at once: hyper then drops the connection without a complete
/// answer, as when an engine dies mid-request.
fn aborted_response() -> Response {
    let failing = futures_util::stream::once(async {
        Err::<Bytes, io::Error>(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "injected disconnect",
        ))
    });
    let mut response = Response::new(Body::from_stream(failing));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
