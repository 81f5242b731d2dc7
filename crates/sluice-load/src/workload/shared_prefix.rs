//! N long system prompts, each shared by M users: the traffic shape of many applications
//! (one system prompt per product feature) that prefix caching and prefix-aware routing are
//! built for. Every request is one of the N system prompts plus a question from one of its
//! M users; the question is new on every request, so only the system prompt is shareable.

use super::{generated_body, LengthDist, Message, PreparedRequest, RequestShape};
use crate::prng::Rng;

const STREAM_SYSTEM: u64 = 0x5E17_0002;
const STREAM_REQUEST: u64 = 0x5E17_0003;

#[derive(Debug)]
pub struct SharedPrefix {
    shape: RequestShape,
    system_prompts: Vec<String>,
    /// Each system prompt's length (words, or tokens with a tokenizer), counted once.
    system_lengths: Vec<u32>,
    users_per_prompt: u32,
    input: LengthDist,
    output: LengthDist,
}

impl SharedPrefix {
    pub fn new(
        shape: RequestShape,
        system_prompts: u32,
        users_per_prompt: u32,
        system_prompt_tokens: u32,
        input: LengthDist,
        output: LengthDist,
    ) -> Self {
        let prompts: Vec<String> = (0..u64::from(system_prompts.max(1)))
            .map(|i| {
                let mut rng = Rng::derive(shape.seed, STREAM_SYSTEM, i);
                shape.prompt_text(&mut rng, system_prompt_tokens)
            })
            .collect();
        SharedPrefix {
            system_lengths: prompts.iter().map(|p| shape.text_length(p)).collect(),
            shape,
            system_prompts: prompts,
            users_per_prompt: users_per_prompt.max(1),
            input,
            output,
        }
    }

    pub fn prepare(&self, index: u64) -> PreparedRequest {
        let mut rng = Rng::derive(self.shape.seed, STREAM_REQUEST, index);
        let prompt = rng.below(self.system_prompts.len() as u64) as usize;
        let user = rng.below(u64::from(self.users_per_prompt));
        let input = self.input.sample(&mut rng);
        let output = self.output.sample(&mut rng);
        // "user N" marks whose question it is; the words after it are this request's own.
        let question = format!(
            "user {user} asks {}",
            self.shape.prompt_text(&mut rng, input)
        );
        let system = &self.system_prompts[prompt];
        let body = generated_body(
            &self.shape,
            &[
                Message {
                    role: "system",
                    content: system,
                },
                Message {
                    role: "user",
                    content: &question,
                },
            ],
            output,
        );
        PreparedRequest {
            body,
            session_id: Some(format!("prompt{prompt}-user{user}")),
            requested_output_tokens: Some(output),
            approx_input_tokens: Some(
                self.system_lengths[prompt].saturating_add(self.shape.text_length(&question)),
            ),
            turn: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn requests_share_exactly_n_system_prompts() {
        let w = SharedPrefix::new(
            RequestShape {
                model: "m".into(),
                stream: true,
                seed: 1,
                tokenizer: None,
            },
            3,
            4,
            200,
            LengthDist::Fixed(10),
            LengthDist::Fixed(8),
        );
        let mut systems = HashSet::new();
        let mut sessions = HashSet::new();
        for i in 0..300 {
            let r = w.prepare(i);
            let req = sluice_api::ChatCompletionRequest::from_slice(&r.body).unwrap();
            assert_eq!(req.messages[0].role, "system");
            let sys = req.messages[0].content.as_ref().unwrap().text();
            assert_eq!(sys.split(' ').count(), 200);
            systems.insert(sys);
            sessions.insert(r.session_id.unwrap());
            assert_eq!(r.approx_input_tokens, Some(213));
        }
        assert_eq!(systems.len(), 3);
        assert_eq!(sessions.len(), 12);
    }
}
