//! The SSE body of a streamed answer: events released on the timing model's schedule, with
//! stall and disconnect faults applied between events.

use std::io;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue};
use axum::response::Response;
use sluice_api::chat::{Delta, FunctionCallDelta, ToolCallDelta, UsageField};
use sluice_api::sse::DONE_EVENT;

use super::chat::Answer;
use super::chunks::ChunkEncoder;
use crate::completion::{fragment_ranges, CompletionBody, ARGUMENT_FRAGMENT_BYTES};
use crate::engine::MockEngine;
use crate::kv_cache::PromptBlocks;
use crate::stats::RequestGuard;
use crate::timing::{wait, Pacer};

/// Events due at the same instant are sent as one body frame, up to this size.
const MAX_FRAME_BYTES: usize = 64 * 1024;

/// Faults that act on a stream between events.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct StreamFaults {
    /// Pause this long after this many events.
    pub stall: Option<(u32, Duration)>,
    /// Abort the connection after this many events.
    pub disconnect_after: Option<u32>,
}

#[derive(Debug, Clone, Copy)]
enum Event {
    Role,
    Token(usize),
    ToolHeader,
    ToolArguments(usize),
    Finish,
    Usage,
    Done,
}

/// Everything the body needs between two frames.
struct ChatStream {
    engine: Arc<MockEngine>,
    guard: RequestGuard,
    answer: Answer,
    encoder: ChunkEncoder,
    fragments: Vec<Range<usize>>,
    /// Each event with its timing slot: events of one slot are due together.
    events: Vec<(u32, Event)>,
    next: usize,
    /// Slot of the last event sent.
    slot: Option<u32>,
    pacer: Pacer,
    /// Prompt blocks to cache once prefill (slot 0) is done.
    prompt_blocks: PromptBlocks,
    faults: StreamFaults,
    finished: bool,
}

pub(super) fn sse_response(
    engine: Arc<MockEngine>,
    guard: RequestGuard,
    answer: Answer,
    pacer: Pacer,
    prompt_blocks: PromptBlocks,
    faults: StreamFaults,
    include_usage: bool,
) -> Response {
    let fragments = match &answer.completion.body {
        CompletionBody::ToolCall(call) => {
            fragment_ranges(&call.function.arguments, ARGUMENT_FRAGMENT_BYTES)
        }
        CompletionBody::Text(_) => Vec::new(),
    };
    let events = plan_events(&answer.completion.body, fragments.len(), include_usage);
    let encoder = ChunkEncoder::new(
        answer.id.clone(),
        answer.created,
        answer.model.clone(),
        include_usage,
    );
    let stream = ChatStream {
        engine,
        guard,
        answer,
        encoder,
        fragments,
        events,
        next: 0,
        slot: None,
        pacer,
        prompt_blocks,
        faults,
        finished: false,
    };
    let body = Body::from_stream(futures_util::stream::unfold(stream, ChatStream::next_frame));
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// The events of an answer in order, with their slots: the role chunk goes out with the
/// first token; the finish, usage and `[DONE]` events with the last.
fn plan_events(body: &CompletionBody, fragments: usize, include_usage: bool) -> Vec<(u32, Event)> {
    let mut events = Vec::new();
    let last_slot = match body {
        CompletionBody::Text(text) => {
            events.reserve(text.len() + 4);
            events.push((0, Event::Role));
            events.extend((0..text.len()).map(|i| (i as u32, Event::Token(i))));
            text.len().saturating_sub(1) as u32
        }
        CompletionBody::ToolCall(_) => {
            events.reserve(fragments + 4);
            events.push((0, Event::ToolHeader));
            events.extend((0..fragments).map(|i| (i as u32 + 1, Event::ToolArguments(i))));
            fragments as u32
        }
    };
    events.push((last_slot, Event::Finish));
    if include_usage {
        events.push((last_slot, Event::Usage));
    }
    events.push((last_slot, Event::Done));
    events
}

impl ChatStream {
    /// The next body frame: every event due at the same instant, after waiting for it.
    /// Dropping the stream (the client left) drops the guard, which counts a cancellation.
    async fn next_frame(mut self) -> Option<(io::Result<Bytes>, Self)> {
        if self.finished {
            return None;
        }
        let mut frame = Vec::new();
        while let Some(&(slot, event)) = self.events.get(self.next) {
            let sent = self.next as u32;
            if self.faults.disconnect_after == Some(sent) {
                if !frame.is_empty() {
                    break;
                }
                // One pending poll lets hyper flush what it buffered (headers, earlier
                // events), so the client sees exactly `sent` events before the cut.
                tokio::task::yield_now().await;
                self.finished = true;
                self.guard.counters().count_fault();
                self.guard.fail();
                // An error from the body makes hyper drop the connection mid-body, which is
                // what a crashing engine looks like to its client.
                let cut = io::Error::new(io::ErrorKind::ConnectionAborted, "injected disconnect");
                return Some((Err(cut), self));
            }
            if let Some((after, pause)) = self.faults.stall {
                if after == sent {
                    if !frame.is_empty() {
                        break;
                    }
                    self.faults.stall = None;
                    self.guard.counters().count_fault();
                    wait(self.pacer.push_back(pause)).await;
                }
            }
            if self.slot != Some(slot) {
                if !frame.is_empty() && !self.pacer.next_slot_is_immediate() {
                    break;
                }
                let due = self.pacer.next_slot(self.engine.counters().in_flight());
                wait(due).await;
                self.slot = Some(slot);
                if slot == 0 {
                    self.engine
                        .store_prefix(&std::mem::take(&mut self.prompt_blocks));
                }
            }
            self.encode(event, &mut frame);
            self.next += 1;
            if frame.len() >= MAX_FRAME_BYTES {
                break;
            }
        }
        if self.next >= self.events.len() {
            self.finished = true;
            self.guard
                .complete(self.answer.completion.completion_tokens);
        }
        if frame.is_empty() {
            return None;
        }
        Some((Ok(Bytes::from(frame)), self))
    }

    fn encode(&self, event: Event, out: &mut Vec<u8>) {
        let enc = &self.encoder;
        match (event, &self.answer.completion.body) {
            (Event::Role, _) => {
                let delta = Delta {
                    role: Some("assistant".to_owned()),
                    content: Some(String::new()),
                    tool_calls: None,
                };
                enc.push_chunk(out, &enc.chunk(delta, None));
            }
            (Event::Token(i), CompletionBody::Text(text)) => enc.push_token(out, text.token(i)),
            (Event::ToolHeader, CompletionBody::ToolCall(call)) => {
                let delta = Delta {
                    role: Some("assistant".to_owned()),
                    content: None,
                    tool_calls: Some(vec![ToolCallDelta {
                        index: 0,
                        id: Some(call.id.clone()),
                        kind: Some("function".to_owned()),
                        function: FunctionCallDelta {
                            name: Some(call.function.name.clone()),
                            arguments: Some(String::new()),
                        },
                    }]),
                };
                enc.push_chunk(out, &enc.chunk(delta, None));
            }
            (Event::ToolArguments(i), CompletionBody::ToolCall(call)) => {
                let fragment = self
                    .fragments
                    .get(i)
                    .and_then(|r| call.function.arguments.get(r.clone()))
                    .unwrap_or("");
                let delta = Delta {
                    tool_calls: Some(vec![ToolCallDelta {
                        index: 0,
                        id: None,
                        kind: None,
                        function: FunctionCallDelta {
                            name: None,
                            arguments: Some(fragment.to_owned()),
                        },
                    }]),
                    ..Delta::default()
                };
                enc.push_chunk(out, &enc.chunk(delta, None));
            }
            (Event::Finish, _) => {
                let chunk = enc.chunk(Delta::default(), Some(self.answer.completion.finish));
                enc.push_chunk(out, &chunk);
            }
            (Event::Usage, _) => {
                let mut chunk = enc.chunk(Delta::default(), None);
                chunk.choices.clear();
                chunk.usage = UsageField::Present(self.answer.usage);
                enc.push_chunk(out, &chunk);
            }
            (Event::Done, _) => out.extend_from_slice(DONE_EVENT.as_bytes()),
            // Token events exist only for text and tool events only for tool calls.
            (Event::Token(_) | Event::ToolHeader | Event::ToolArguments(_), _) => {}
        }
    }
}
