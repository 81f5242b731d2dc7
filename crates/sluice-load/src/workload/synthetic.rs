//! Independent single-turn requests: a prompt of sampled length, an answer of sampled length.

use super::{generated_body, LengthDist, Message, PreparedRequest, RequestShape};
use crate::prng::Rng;

/// PRNG stream of synthetic prompts (distinct from other workloads' streams).
const STREAM: u64 = 0x5E17_0001;

#[derive(Debug)]
pub struct Synthetic {
    shape: RequestShape,
    input: LengthDist,
    output: LengthDist,
}

impl Synthetic {
    pub fn new(shape: RequestShape, input: LengthDist, output: LengthDist) -> Self {
        Synthetic {
            shape,
            input,
            output,
        }
    }

    pub fn prepare(&self, index: u64) -> PreparedRequest {
        let mut rng = Rng::derive(self.shape.seed, STREAM, index);
        let input = self.input.sample(&mut rng);
        let output = self.output.sample(&mut rng);
        let prompt = self.shape.prompt_text(&mut rng, input);
        let body = generated_body(
            &self.shape,
            &[Message {
                role: "user",
                content: &prompt,
            }],
            output,
        );
        PreparedRequest {
            body,
            session_id: None,
            requested_output_tokens: Some(output),
            approx_input_tokens: Some(self.shape.text_length(&prompt)),
            turn: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> RequestShape {
        RequestShape {
            model: "m".into(),
            stream: false,
            seed: 9,
            tokenizer: None,
        }
    }

    #[test]
    fn same_index_same_request_lengths_follow_the_distributions() {
        let w = Synthetic::new(
            shape(),
            LengthDist::Uniform { lo: 10, hi: 20 },
            LengthDist::Fixed(5),
        );
        assert_eq!(w.prepare(3).body, w.prepare(3).body);
        assert_ne!(w.prepare(3).body, w.prepare(4).body);
        for i in 0..50 {
            let r = w.prepare(i);
            let req = sluice_api::ChatCompletionRequest::from_slice(&r.body).unwrap();
            let words = req.messages[0].content.as_ref().unwrap().text();
            let n = words.split(' ').count() as u32;
            assert_eq!(Some(n), r.approx_input_tokens);
            assert!((10..=20).contains(&n));
            assert_eq!(req.output_cap(), Some(5));
            assert_eq!(r.requested_output_tokens, Some(5));
        }
    }
}
