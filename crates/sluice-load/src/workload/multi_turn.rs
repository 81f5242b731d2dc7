//! K-turn conversations. Each turn resends the whole history (system prompt, every earlier
//! question and answer) plus a new question, which is how chat applications talk to an
//! engine and why their prompts share ever longer prefixes. The answers in the history are
//! the target's real answers; when a turn failed (or the answer text is unavailable) a
//! synthetic answer of the requested length stands in, so the conversation goes on.
//!
//! Turns of one conversation are strictly sequential: a conversation is handed to one
//! request at a time (inside its [`TurnTicket`]) and only becomes ready for its next turn
//! when that request finishes. A request slot that finds no conversation ready starts a
//! new one, so the arrival process is never held up by conversations in flight.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};

use super::{generated_body, LengthDist, Message, PreparedRequest, RequestShape};
use crate::prng::Rng;

const STREAM_SYSTEM: u64 = 0x5E17_0004;
const STREAM_TURN: u64 = 0x5E17_0005;
const STREAM_STANDIN: u64 = 0x5E17_0006;

#[derive(Debug)]
pub struct Conversation {
    id: u64,
    /// Index of the turn to be sent next (0-based).
    turn: u32,
    /// (role, text) in order, without the system prompt.
    history: Vec<(&'static str, String)>,
}

/// A conversation lent to one request; give it back with [`ConversationPool::finish`].
#[derive(Debug)]
pub struct TurnTicket {
    conversation: Conversation,
    requested_output: u32,
}

#[derive(Debug)]
pub struct ConversationPool {
    shape: RequestShape,
    turns: u32,
    system_prompt: String,
    input: LengthDist,
    output: LengthDist,
    state: Mutex<PoolState>,
}

#[derive(Debug, Default)]
struct PoolState {
    ready: VecDeque<Conversation>,
    next_id: u64,
}

impl ConversationPool {
    pub fn new(
        shape: RequestShape,
        turns: u32,
        system_prompt_tokens: u32,
        input: LengthDist,
        output: LengthDist,
    ) -> Self {
        let mut rng = Rng::derive(shape.seed, STREAM_SYSTEM, 0);
        ConversationPool {
            system_prompt: shape.prompt_text(&mut rng, system_prompt_tokens),
            shape,
            turns: turns.max(1),
            input,
            output,
            state: Mutex::new(PoolState::default()),
        }
    }

    /// The next turn of a ready conversation, or the first turn of a new one. The request
    /// index is not used: which conversation goes next depends on which answers came back.
    pub fn prepare(&self, _index: u64) -> PreparedRequest {
        let mut conversation = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            match state.ready.pop_front() {
                Some(c) => c,
                None => {
                    let id = state.next_id;
                    state.next_id += 1;
                    Conversation {
                        id,
                        turn: 0,
                        history: Vec::new(),
                    }
                }
            }
        };
        let mut rng = Rng::derive(
            self.shape.seed,
            STREAM_TURN,
            conversation.id.wrapping_mul(1024) ^ u64::from(conversation.turn),
        );
        let input = self.input.sample(&mut rng);
        let output = self.output.sample(&mut rng);
        let question = self.shape.prompt_text(&mut rng, input);
        conversation.history.push(("user", question));
        let mut messages = Vec::with_capacity(conversation.history.len() + 1);
        if !self.system_prompt.is_empty() {
            messages.push(Message {
                role: "system",
                content: &self.system_prompt,
            });
        }
        messages.extend(conversation.history.iter().map(|(role, text)| Message {
            role,
            content: text,
        }));
        let body = generated_body(&self.shape, &messages, output);
        let approx = messages
            .iter()
            .map(|m| self.shape.text_length(m.content))
            .fold(0u32, u32::saturating_add);
        let session_id = format!("conversation-{}", conversation.id);
        PreparedRequest {
            body,
            session_id: Some(session_id),
            requested_output_tokens: Some(output),
            approx_input_tokens: Some(approx),
            turn: Some(TurnTicket {
                conversation,
                requested_output: output,
            }),
        }
    }

    /// Records the answer of a turn and, unless it was the last, makes the conversation
    /// ready for its next turn.
    pub fn finish(&self, ticket: TurnTicket, reply: Option<String>) {
        let TurnTicket {
            mut conversation,
            requested_output,
        } = ticket;
        let reply = match reply {
            Some(text) if !text.is_empty() => text,
            _ => {
                let mut rng = Rng::derive(
                    self.shape.seed,
                    STREAM_STANDIN,
                    conversation.id.wrapping_mul(1024) ^ u64::from(conversation.turn),
                );
                self.shape.prompt_text(&mut rng, requested_output)
            }
        };
        conversation.history.push(("assistant", reply));
        conversation.turn += 1;
        if conversation.turn < self.turns {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.ready.push_back(conversation);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_api::ChatCompletionRequest;

    fn pool(turns: u32) -> ConversationPool {
        ConversationPool::new(
            RequestShape {
                model: "m".into(),
                stream: true,
                seed: 5,
                tokenizer: None,
            },
            turns,
            20,
            LengthDist::Fixed(4),
            LengthDist::Fixed(6),
        )
    }

    #[test]
    fn turns_resend_the_growing_history_with_real_answers() {
        let p = pool(3);
        let r0 = p.prepare(0);
        assert_eq!(r0.session_id.as_deref(), Some("conversation-0"));
        p.finish(r0.turn.unwrap(), Some("first answer".into()));
        let r1 = p.prepare(1);
        assert_eq!(r1.session_id.as_deref(), Some("conversation-0"));
        let req = ChatCompletionRequest::from_slice(&r1.body).unwrap();
        let roles: Vec<&str> = req.messages.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["system", "user", "assistant", "user"]);
        assert_eq!(
            req.messages[2].content.as_ref().unwrap().text(),
            "first answer"
        );
        // A failed turn gets a stand-in answer of the requested length.
        p.finish(r1.turn.unwrap(), None);
        let r2 = p.prepare(2);
        let req = ChatCompletionRequest::from_slice(&r2.body).unwrap();
        assert_eq!(req.messages.len(), 6);
        assert_eq!(
            req.messages[4]
                .content
                .as_ref()
                .unwrap()
                .text()
                .split(' ')
                .count(),
            6
        );
        // After the last turn the conversation ends; the next request starts a new one.
        p.finish(r2.turn.unwrap(), Some("x".into()));
        let r3 = p.prepare(3);
        assert_eq!(r3.session_id.as_deref(), Some("conversation-1"));
    }

    #[test]
    fn busy_conversations_are_not_reused() {
        let p = pool(5);
        let a = p.prepare(0);
        let b = p.prepare(1);
        assert_ne!(a.session_id, b.session_id);
    }
}
