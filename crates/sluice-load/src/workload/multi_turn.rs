//! K-turn conversations. Each turn resends the whole history (system prompt, every earlier
//! question and answer) plus a new question, which is how chat applications talk to an
//! engine and why their prompts share ever longer prefixes. The answers in the history are
//! the target's real answers; when a turn failed (or the answer text is unavailable) a
//! synthetic answer of the requested length stands in, so the conversation goes on.
//!
//! Turns of one conversation are strictly sequential: a conversation is handed to one
//! request at a time (inside its [`TurnTicket`]) and only becomes ready for its next turn
//! when that request finishes and its user's think time ([`PauseDist`]) has passed. A
//! request slot that finds no conversation ready starts a new one, so the arrival process
//! is never held up by conversations in flight or users thinking.
//!
//! The think time decides how conversations interleave. Without it, a conversation's next
//! turn goes out as soon as its answer is back, so only a handful are ever open at once;
//! with it (people read and type for seconds), many are open, their turns arrive mixed
//! together, and each engine's cache has to hold many histories — the traffic a router
//! placing requests by cached prefix is for.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use super::{generated_body, LengthDist, Message, PreparedRequest, RequestShape};
use crate::dist::PauseDist;
use crate::prng::Rng;

const STREAM_SYSTEM: u64 = 0x5E17_0004;
const STREAM_TURN: u64 = 0x5E17_0005;
const STREAM_STANDIN: u64 = 0x5E17_0006;
const STREAM_THINK: u64 = 0x5E17_0007;

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
    think: PauseDist,
    state: Mutex<PoolState>,
}

#[derive(Debug, Default)]
struct PoolState {
    /// Conversations between turns, the one ready soonest on top.
    waiting: BinaryHeap<Waiting>,
    next_id: u64,
}

/// A conversation whose user is reading the last answer until `ready_at`.
#[derive(Debug)]
struct Waiting {
    ready_at: Instant,
    conversation: Conversation,
}

impl Waiting {
    fn key(&self) -> (Instant, u64) {
        (self.ready_at, self.conversation.id)
    }
}

// Ordered so that the max-heap's top is the earliest `ready_at` (ties: the older
// conversation), which keeps the zero-think-time order first come, first served.
impl Ord for Waiting {
    fn cmp(&self, other: &Self) -> Ordering {
        other.key().cmp(&self.key())
    }
}

impl PartialOrd for Waiting {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Waiting {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Waiting {}

impl ConversationPool {
    pub fn new(
        shape: RequestShape,
        turns: u32,
        system_prompt_tokens: u32,
        input: LengthDist,
        output: LengthDist,
        think: PauseDist,
    ) -> Self {
        let mut rng = Rng::derive(shape.seed, STREAM_SYSTEM, 0);
        ConversationPool {
            system_prompt: shape.prompt_text(&mut rng, system_prompt_tokens),
            shape,
            turns: turns.max(1),
            input,
            output,
            think,
            state: Mutex::new(PoolState::default()),
        }
    }

    /// The next turn of a ready conversation, or the first turn of a new one. The request
    /// index is not used: which conversation goes next depends on which answers came back.
    pub fn prepare(&self, _index: u64) -> PreparedRequest {
        self.prepare_at(Instant::now())
    }

    fn prepare_at(&self, now: Instant) -> PreparedRequest {
        let mut conversation = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            let ready = state.waiting.peek().is_some_and(|w| w.ready_at <= now);
            match ready.then(|| state.waiting.pop()).flatten() {
                Some(w) => w.conversation,
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
    /// ready for its next turn once its user has thought.
    pub fn finish(&self, ticket: TurnTicket, reply: Option<String>) {
        self.finish_at(Instant::now(), ticket, reply);
    }

    fn finish_at(&self, now: Instant, ticket: TurnTicket, reply: Option<String>) {
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
            let mut rng = Rng::derive(
                self.shape.seed,
                STREAM_THINK,
                conversation.id.wrapping_mul(1024) ^ u64::from(conversation.turn),
            );
            let think = self.think.sample(&mut rng);
            // A think time past what the clock can hold: the user never comes back.
            let Some(ready_at) = now.checked_add(think) else {
                return;
            };
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.waiting.push(Waiting {
                ready_at,
                conversation,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_api::ChatCompletionRequest;
    use std::time::Duration;

    fn pool(turns: u32) -> ConversationPool {
        pool_thinking(turns, PauseDist::None)
    }

    fn pool_thinking(turns: u32, think: PauseDist) -> ConversationPool {
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
            think,
        )
    }

    #[test]
    fn a_conversation_waits_out_its_users_think_time() {
        let p = pool_thinking(3, PauseDist::Fixed(Duration::from_secs(5)));
        let t0 = Instant::now();
        let a = p.prepare_at(t0);
        p.finish_at(t0, a.turn.unwrap(), Some("answer".into()));
        // Still thinking: the next slot opens a new conversation instead.
        let b = p.prepare_at(t0 + Duration::from_millis(4_999));
        assert_eq!(b.session_id.as_deref(), Some("conversation-1"));
        p.finish_at(
            t0 + Duration::from_secs(1),
            b.turn.unwrap(),
            Some("answer".into()),
        );
        // Ready: the one that has waited longest goes first, then the other.
        let later = t0 + Duration::from_secs(10);
        let c = p.prepare_at(later);
        assert_eq!(c.session_id.as_deref(), Some("conversation-0"));
        let d = p.prepare_at(later);
        assert_eq!(d.session_id.as_deref(), Some("conversation-1"));
        assert_eq!(
            p.prepare_at(later).session_id.as_deref(),
            Some("conversation-2")
        );
    }

    #[test]
    fn think_times_are_the_seeds() {
        let think = PauseDist::Exponential {
            mean: Duration::from_secs(2),
        };
        // Two pools of one seed: each conversation becomes ready at the same offset.
        let ready_offsets = || {
            let p = pool_thinking(2, think);
            let t0 = Instant::now();
            let tickets: Vec<_> = (0..20).map(|_| p.prepare_at(t0).turn.unwrap()).collect();
            for t in tickets {
                p.finish_at(t0, t, Some("a".into()));
            }
            let state = p.state.lock().unwrap();
            let mut offsets: Vec<(u64, Duration)> = state
                .waiting
                .iter()
                .map(|w| (w.conversation.id, w.ready_at - t0))
                .collect();
            offsets.sort();
            offsets
        };
        let a = ready_offsets();
        assert_eq!(a.len(), 20);
        assert_eq!(a, ready_offsets());
        // Not all alike: an exponential spreads them out.
        assert!(a.iter().any(|(_, d)| *d < Duration::from_secs(1)));
        assert!(a.iter().any(|(_, d)| *d > Duration::from_secs(2)));
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
