//! What the mock answers: deterministic text or a deterministic tool call, decided from the
//! request alone (plus the engine seed), so the same request always gets the same answer.

use std::ops::Range;

use serde_json::Value;
use sluice_api::chat::{
    ChatCompletionRequest, FinishReason, FunctionCall, FunctionDefinition, RequestError, ToolCall,
};
use xxhash_rust::xxh3::Xxh3;

use crate::options::OutputOptions;
use crate::prng::SplitMix64;
use crate::tool_args::arguments_for;
use crate::vocab::WORDS;
use sluice_api::mock_tokenizer::count_tokens;

/// Upper bound on a forced (`ignore_eos`) answer, standing in for a context window so that
/// one request cannot make the mock generate without end.
pub(crate) const MAX_FORCED_TOKENS: u32 = 1 << 17;

/// Bytes of tool-call arguments per streamed fragment; each fragment takes one decode step.
pub(crate) const ARGUMENT_FRAGMENT_BYTES: usize = 8;

/// Share of sentence-internal positions that get a comma.
const COMMA_CHANCE: f64 = 0.06;

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Completion {
    pub body: CompletionBody,
    pub finish: FinishReason,
    pub completion_tokens: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum CompletionBody {
    Text(GeneratedText),
    ToolCall(ToolCall),
}

/// Answer text with its token boundaries: token i is `text[ends[i-1]..ends[i]]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct GeneratedText {
    text: String,
    ends: Vec<usize>,
}

impl GeneratedText {
    pub(crate) fn as_str(&self) -> &str {
        &self.text
    }

    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    pub(crate) fn token(&self, i: usize) -> &str {
        let start = if i == 0 {
            0
        } else {
            self.ends.get(i - 1).copied().unwrap_or(0)
        };
        let end = self.ends.get(i).copied().unwrap_or(start);
        self.text.get(start..end).unwrap_or("")
    }

    fn push(&mut self, piece: &str) {
        self.text.push_str(piece);
        self.ends.push(self.text.len());
    }

    fn push_word(&mut self, word: &str, leading_space: bool, capitalized: bool) {
        if leading_space {
            self.text.push(' ');
        }
        let mut chars = word.chars();
        if let Some(first) = chars.next() {
            self.text.push(if capitalized {
                first.to_ascii_uppercase()
            } else {
                first
            });
            self.text.push_str(chars.as_str());
        }
        self.ends.push(self.text.len());
    }
}

impl Completion {
    /// Decides the answer to `req`. Fails on request fields that make no sense for it
    /// (`max_tokens: 0`, a `tool_choice` naming an unknown function, ...).
    pub(crate) fn for_request(
        req: &ChatCompletionRequest,
        output: &OutputOptions,
        engine_seed: u64,
    ) -> Result<Completion, RequestError> {
        let cap = output_cap(req)?;
        let ignore_eos = ignore_eos(req)?;
        check_n(req)?;
        let mut rng = SplitMix64::new(generation_seed(engine_seed, req));
        let (lo, hi) = output.natural_range();
        let natural = rng.in_range(u64::from(lo), u64::from(hi)) as u32;
        if let Some(function) = chosen_function(req, &mut rng)? {
            return Ok(tool_call(function, &mut rng));
        }
        let (count, finish) = match (ignore_eos, cap) {
            (true, Some(cap)) => (cap, FinishReason::Length),
            (true, None) => (hi, FinishReason::Length),
            (false, Some(cap)) if cap < natural => (cap, FinishReason::Length),
            (false, _) => (natural, FinishReason::Stop),
        };
        let stop_at = (!ignore_eos).then_some(natural);
        let text = generate_text(&mut rng, count, stop_at);
        Ok(Completion {
            completion_tokens: text.len() as u64,
            body: CompletionBody::Text(text),
            finish,
        })
    }

    /// Cuts a tool call's arguments in half, so they no longer parse as JSON. Returns whether
    /// there was a tool call to break.
    pub(crate) fn break_tool_arguments(&mut self) -> bool {
        let CompletionBody::ToolCall(call) = &mut self.body else {
            return false;
        };
        let args = &call.function.arguments;
        // Any strict prefix of a JSON object lacks its closing brace.
        let mut cut = (args.len() / 2).max(1);
        while !args.is_char_boundary(cut) {
            cut -= 1;
        }
        call.function.arguments.truncate(cut);
        self.completion_tokens = tool_call_tokens(&call.function.arguments);
        true
    }
}

/// The PRNG seed of an answer: xxh3 over the engine seed, the request's `seed`, the model
/// and the role and text of every message, each length-prefixed so no two inputs collide
/// by concatenation.
pub(crate) fn generation_seed(engine_seed: u64, req: &ChatCompletionRequest) -> u64 {
    fn put_str(h: &mut Xxh3, s: &str) {
        h.update(&(s.len() as u64).to_le_bytes());
        h.update(s.as_bytes());
    }
    let mut h = Xxh3::new();
    h.update(&engine_seed.to_le_bytes());
    match req.seed {
        Some(seed) => {
            h.update(&[1]);
            h.update(&seed.to_le_bytes());
        }
        None => h.update(&[0]),
    }
    put_str(&mut h, &req.model);
    for m in &req.messages {
        put_str(&mut h, &m.role);
        match &m.content {
            Some(c) => {
                h.update(&[1]);
                put_str(&mut h, &c.text());
            }
            None => h.update(&[0]),
        }
    }
    h.digest()
}

fn invalid(param: &str, message: String) -> RequestError {
    RequestError {
        param: Some(param.to_owned()),
        message,
    }
}

fn output_cap(req: &ChatCompletionRequest) -> Result<Option<u32>, RequestError> {
    let param = if req.max_completion_tokens.is_some() {
        "max_completion_tokens"
    } else {
        "max_tokens"
    };
    match req.output_cap() {
        Some(0) => Err(invalid(param, format!("`{param}` must be at least 1"))),
        cap => Ok(cap),
    }
}

/// vLLM's `ignore_eos`: generate exactly the cap, the way load generators fix output length.
fn ignore_eos(req: &ChatCompletionRequest) -> Result<bool, RequestError> {
    let flag = match req.extra.get("ignore_eos") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(invalid(
                "ignore_eos",
                "`ignore_eos` must be a boolean".to_owned(),
            ))
        }
    };
    if flag && req.output_cap().is_some_and(|c| c > MAX_FORCED_TOKENS) {
        return Err(invalid(
            if req.max_completion_tokens.is_some() {
                "max_completion_tokens"
            } else {
                "max_tokens"
            },
            format!("with `ignore_eos` the output cap must be at most {MAX_FORCED_TOKENS}"),
        ));
    }
    Ok(flag)
}

fn check_n(req: &ChatCompletionRequest) -> Result<(), RequestError> {
    match req.extra.get("n") {
        None | Some(Value::Null) => Ok(()),
        Some(v) if v.as_u64() == Some(1) => Ok(()),
        Some(_) => Err(invalid(
            "n",
            "the mock answers with one choice: `n` must be 1".to_owned(),
        )),
    }
}

/// The function to call, if the answer is a tool call: the one `tool_choice` names, or one
/// drawn from `tools` when the model may choose and the user spoke last.
fn chosen_function<'r>(
    req: &'r ChatCompletionRequest,
    rng: &mut SplitMix64,
) -> Result<Option<&'r FunctionDefinition>, RequestError> {
    let functions: Vec<&FunctionDefinition> = req
        .tools
        .iter()
        .flatten()
        .filter(|t| t.kind == "function")
        .filter_map(|t| t.function.as_ref())
        .collect();
    let pick = |rng: &mut SplitMix64| {
        let i = rng.below(functions.len() as u64) as usize;
        functions.get(i).copied()
    };
    let user_spoke_last = req.messages.last().is_some_and(|m| m.role == "user");
    match &req.tool_choice {
        None => Ok(if user_spoke_last { pick(rng) } else { None }),
        Some(Value::String(mode)) => match mode.as_str() {
            "none" => Ok(None),
            "auto" => Ok(if user_spoke_last { pick(rng) } else { None }),
            "required" => match pick(rng) {
                Some(f) => Ok(Some(f)),
                None => Err(invalid(
                    "tool_choice",
                    "`tool_choice` is \"required\" but `tools` has no function".to_owned(),
                )),
            },
            other => Err(invalid(
                "tool_choice",
                format!(
                    "`tool_choice` must be \"none\", \"auto\", \"required\" or a function, got \"{other}\""
                ),
            )),
        },
        Some(Value::Object(choice)) => {
            let Some(name) = choice
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
            else {
                return Err(invalid(
                    "tool_choice.function.name",
                    "`tool_choice.function.name` is required".to_owned(),
                ));
            };
            match functions.iter().find(|f| f.name == name) {
                Some(f) => Ok(Some(*f)),
                None => Err(invalid(
                    "tool_choice",
                    format!("`tool_choice` names function `{name}`, which is not in `tools`"),
                )),
            }
        }
        Some(_) => Err(invalid(
            "tool_choice",
            "`tool_choice` must be a string or an object".to_owned(),
        )),
    }
}

fn tool_call(function: &FunctionDefinition, rng: &mut SplitMix64) -> Completion {
    let id = format!("call_{:016x}{:08x}", rng.next_u64(), rng.next_u64() >> 32);
    let arguments = arguments_for(function.parameters.as_ref(), rng).to_string();
    Completion {
        completion_tokens: tool_call_tokens(&arguments),
        body: CompletionBody::ToolCall(ToolCall {
            id,
            kind: "function".to_owned(),
            function: FunctionCall {
                name: function.name.clone(),
                arguments,
            },
        }),
        finish: FinishReason::ToolCalls,
    }
}

/// The arguments' tokens plus one for the call itself.
fn tool_call_tokens(arguments: &str) -> u64 {
    count_tokens(arguments) as u64 + 1
}

/// `count` tokens of prose. With `stop_at = Some(n)` the n-th token ends a sentence (the
/// natural end of the answer); the text is the same prefix whatever `count` is.
fn generate_text(rng: &mut SplitMix64, count: u32, stop_at: Option<u32>) -> GeneratedText {
    let mut out = GeneratedText {
        text: String::with_capacity(count as usize * 7),
        ends: Vec::with_capacity(count as usize),
    };
    let mut words_left = sentence_length(rng);
    let mut sentence_start = true;
    let mut after_punctuation = true;
    for i in 0..count {
        let is_last = stop_at.is_some_and(|n| i + 1 == n);
        // Keep the token before a forced full stop a word, so no ", ." appears.
        let next_is_last = stop_at.is_some_and(|n| i + 2 == n);
        let punctuation_allowed = !after_punctuation && !next_is_last;
        if is_last && !after_punctuation {
            out.push(".");
            after_punctuation = true;
        } else if punctuation_allowed && words_left == 0 {
            out.push(".");
            words_left = sentence_length(rng);
            sentence_start = true;
            after_punctuation = true;
        } else if punctuation_allowed && !sentence_start && rng.chance(COMMA_CHANCE) {
            out.push(",");
            after_punctuation = true;
        } else {
            let w = WORDS
                .get(rng.below(WORDS.len() as u64) as usize)
                .copied()
                .unwrap_or("the");
            out.push_word(w, i > 0, sentence_start);
            words_left = words_left.saturating_sub(1);
            sentence_start = false;
            after_punctuation = false;
        }
    }
    out
}

fn sentence_length(rng: &mut SplitMix64) -> u32 {
    rng.in_range(5, 16) as u32
}

/// Splits tool-call arguments into the byte ranges a stream sends as fragments, about
/// `size` bytes each, never inside a UTF-8 sequence.
pub(crate) fn fragment_ranges(arguments: &str, size: usize) -> Vec<Range<usize>> {
    let size = size.max(1);
    let mut out = Vec::new();
    let mut start = 0;
    while start < arguments.len() {
        let mut end = (start + size).min(arguments.len());
        while !arguments.is_char_boundary(end) {
            end += 1;
        }
        out.push(start..end);
        start = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use sluice_api::mock_tokenizer::pieces;

    fn request(v: Value) -> ChatCompletionRequest {
        ChatCompletionRequest::from_slice(v.to_string().as_bytes()).unwrap()
    }

    fn answer(v: Value) -> Completion {
        Completion::for_request(&request(v), &OutputOptions::default(), 7).unwrap()
    }

    fn text_of(c: &Completion) -> &GeneratedText {
        match &c.body {
            CompletionBody::Text(t) => t,
            CompletionBody::ToolCall(_) => panic!("expected text, got {c:?}"),
        }
    }

    fn hello(extra: Value) -> Value {
        let mut v = json!({"model": "m", "messages": [{"role": "user", "content": "Hello"}]});
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        v
    }

    #[test]
    fn same_request_same_text_and_seeds_change_it() {
        let a = answer(hello(json!({})));
        assert_eq!(a, answer(hello(json!({}))));
        assert_ne!(a, answer(hello(json!({"seed": 1}))));
        assert_ne!(a, answer(hello(json!({"model": "other"}))));
        let other_engine =
            Completion::for_request(&request(hello(json!({}))), &OutputOptions::default(), 8)
                .unwrap();
        assert_ne!(a, other_engine);
        // Fields outside the seed do not matter.
        assert_eq!(
            a,
            answer(hello(json!({"temperature": 0.2, "stream": true})))
        );
    }

    #[test]
    fn each_output_token_is_one_tokenizer_piece() {
        for seed in 0..50 {
            let c = answer(hello(json!({"seed": seed})));
            let t = text_of(&c);
            let split: Vec<&str> = pieces(t.as_str()).collect();
            let tokens: Vec<&str> = (0..t.len()).map(|i| t.token(i)).collect();
            assert_eq!(split, tokens);
            assert_eq!(c.completion_tokens, t.len() as u64);
            assert!((16..=128).contains(&t.len()));
            assert_eq!(c.finish, FinishReason::Stop);
            assert!(t.as_str().ends_with('.'), "{}", t.as_str());
            assert!(!t.as_str().contains(",."));
            assert!(t.as_str().starts_with(|c: char| c.is_ascii_uppercase()));
        }
    }

    #[test]
    fn cap_truncates_the_same_text() {
        let full = answer(hello(json!({})));
        let capped = answer(hello(json!({"max_tokens": 5})));
        assert_eq!(capped.completion_tokens, 5);
        assert_eq!(capped.finish, FinishReason::Length);
        assert!(text_of(&full)
            .as_str()
            .starts_with(text_of(&capped).as_str()));
        let loose = answer(hello(json!({"max_completion_tokens": 10_000})));
        assert_eq!(loose, full);
    }

    #[test]
    fn ignore_eos_generates_exactly_the_cap() {
        let c = answer(hello(json!({"max_tokens": 500, "ignore_eos": true})));
        assert_eq!(c.completion_tokens, 500);
        assert_eq!(c.finish, FinishReason::Length);
        let c = answer(hello(json!({"ignore_eos": true})));
        assert_eq!(c.completion_tokens, 128);
    }

    #[test]
    fn bad_fields_are_reported_with_their_name() {
        let err = |v: Value| {
            Completion::for_request(&request(v), &OutputOptions::default(), 0).unwrap_err()
        };
        assert_eq!(
            err(hello(json!({"max_tokens": 0}))).param.as_deref(),
            Some("max_tokens")
        );
        assert_eq!(
            err(hello(json!({"max_completion_tokens": 0})))
                .param
                .as_deref(),
            Some("max_completion_tokens")
        );
        assert_eq!(
            err(hello(json!({"ignore_eos": "yes"}))).param.as_deref(),
            Some("ignore_eos")
        );
        assert_eq!(
            err(hello(
                json!({"ignore_eos": true, "max_tokens": 4_000_000_000u32})
            ))
            .param
            .as_deref(),
            Some("max_tokens")
        );
        assert_eq!(err(hello(json!({"n": 2}))).param.as_deref(), Some("n"));
        assert_eq!(
            err(hello(json!({"tool_choice": "sometimes"})))
                .param
                .as_deref(),
            Some("tool_choice")
        );
        assert_eq!(
            err(hello(json!({"tool_choice": "required"})))
                .param
                .as_deref(),
            Some("tool_choice")
        );
        let named = json!({"tools": [{"type": "function", "function": {"name": "f"}}],
            "tool_choice": {"type": "function", "function": {"name": "g"}}});
        assert!(err(hello(named)).message.contains("`g`"));
    }

    fn weather_tools() -> Value {
        json!([
            {"type": "function", "function": {"name": "get_weather", "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city"]}}},
            {"type": "function", "function": {"name": "get_time"}}
        ])
    }

    #[test]
    fn tools_give_a_tool_call_when_the_user_spoke_last() {
        let c = answer(hello(json!({"tools": weather_tools()})));
        let CompletionBody::ToolCall(call) = &c.body else {
            panic!("expected a tool call: {c:?}");
        };
        assert_eq!(c.finish, FinishReason::ToolCalls);
        assert!(
            call.id.starts_with("call_") && call.id.len() == 29,
            "{}",
            call.id
        );
        let args: Value = serde_json::from_str(&call.function.arguments).unwrap();
        assert!(args.is_object());
        if call.function.name == "get_weather" {
            assert!(args["city"].is_string());
        }
        assert_eq!(
            c.completion_tokens,
            count_tokens(&call.function.arguments) as u64 + 1
        );
        assert_eq!(c, answer(hello(json!({"tools": weather_tools()}))));
    }

    #[test]
    fn tool_choice_steers_the_call() {
        let forced = answer(hello(json!({"tools": weather_tools(),
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}}})));
        let CompletionBody::ToolCall(call) = &forced.body else {
            panic!("expected a tool call");
        };
        assert_eq!(call.function.name, "get_weather");
        let args: Value = serde_json::from_str(&call.function.arguments).unwrap();
        assert!(args.get("city").is_some_and(Value::is_string));

        let none = answer(hello(
            json!({"tools": weather_tools(), "tool_choice": "none"}),
        ));
        assert!(matches!(none.body, CompletionBody::Text(_)));

        let after_tool = json!({"model": "m", "tools": weather_tools(), "messages": [
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": null, "tool_calls": []},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]});
        assert!(matches!(
            answer(after_tool.clone()).body,
            CompletionBody::Text(_)
        ));
        let mut required = after_tool;
        required["tool_choice"] = json!("required");
        assert!(matches!(answer(required).body, CompletionBody::ToolCall(_)));
    }

    #[test]
    fn broken_arguments_do_not_parse() {
        for seed in 0..30 {
            let mut c = answer(hello(json!({"tools": weather_tools(), "seed": seed})));
            assert!(c.break_tool_arguments());
            let CompletionBody::ToolCall(call) = &c.body else {
                panic!("expected a tool call");
            };
            assert!(serde_json::from_str::<Value>(&call.function.arguments).is_err());
        }
        let mut text = answer(hello(json!({})));
        assert!(!text.break_tool_arguments());
    }

    #[test]
    fn fragments_cover_the_arguments() {
        let s = r#"{"city":"paris","note":"café au lait"}"#;
        let parts: Vec<&str> = fragment_ranges(s, 8).into_iter().map(|r| &s[r]).collect();
        assert_eq!(parts.concat(), s);
        assert!(parts.len() >= 4);
        assert!(fragment_ranges("", 8).is_empty());
    }
}
