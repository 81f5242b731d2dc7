//! The mock engine's tokenizer and chat template: what its `usage` counts and what its prefix
//! cache hashes, specified exactly in `docs/mock.md` (change both together). Here, not in the
//! mock, because a router in front of mock engines must tokenize prompts exactly as they do.
//!
//! Pieces: an optional single leading space (U+0020) followed by either a maximal run of
//! ASCII alphanumerics or one other non-whitespace character; every whitespace character not
//! absorbed that way (a newline, a tab, the extra spaces of a run) is a piece of its own.

use crate::chat::ChatCompletionRequest;
use serde_json::Value;
use xxhash_rust::xxh3::xxh3_64;

/// Special tokens live in the upper half of the id space, text tokens in the lower, so the
/// two can never collide.
const SPECIAL_BIT: u32 = 0x8000_0000;
const LOW_31: u64 = 0x7FFF_FFFF;

/// Splits text into tokenizer pieces. Concatenating the pieces gives back the text.
pub fn pieces(text: &str) -> Pieces<'_> {
    Pieces { text, pos: 0 }
}

pub struct Pieces<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Iterator for Pieces<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let start = self.pos;
        let rest = self.text.get(start..)?;
        let mut chars = rest.char_indices();
        let (_, first) = chars.next()?;
        let body_start = match chars.next() {
            Some((i, second)) if first == ' ' && !second.is_whitespace() => i,
            _ if first.is_whitespace() => {
                self.pos = start + first.len_utf8();
                return rest.get(..first.len_utf8());
            }
            _ => 0,
        };
        let body = rest.get(body_start..)?;
        let body_len = if body.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            body.find(|c: char| !c.is_ascii_alphanumeric())
                .unwrap_or(body.len())
        } else {
            body.chars().next().map_or(0, char::len_utf8)
        };
        let end = body_start + body_len;
        self.pos = start + end;
        rest.get(..end)
    }
}

pub fn token_id(piece: &str) -> u32 {
    (xxh3_64(piece.as_bytes()) & LOW_31) as u32
}

/// Id of a special token such as `<|user|>`: never produced by tokenizing text.
pub fn special_token_id(literal: &str) -> u32 {
    SPECIAL_BIT | token_id(literal)
}

pub fn encode_into(text: &str, out: &mut Vec<u32>) {
    out.extend(pieces(text).map(token_id));
}

pub fn count_tokens(text: &str) -> usize {
    pieces(text).count()
}

/// The prompt token ids of a chat request, following the chat template:
/// `<|role|>` content `<|end|>` per message, the tools' JSON, then `<|assistant|>`.
pub fn encode_chat(req: &ChatCompletionRequest) -> Vec<u32> {
    let end = special_token_id("<|end|>");
    let mut ids = Vec::new();
    for message in &req.messages {
        ids.push(special_token_id(&format!("<|{}|>", message.role)));
        if let Some(content) = &message.content {
            encode_into(&content.text(), &mut ids);
        }
        // Earlier tool calls are part of what the model reads back.
        if let Some(calls @ Value::Array(_)) = message.extra.get("tool_calls") {
            encode_into(&calls.to_string(), &mut ids);
        }
        ids.push(end);
    }
    if let Some(tools) = req.tools.as_ref().filter(|t| !t.is_empty()) {
        let json = Value::Array(tools.iter().cloned().map(Value::from).collect());
        encode_into(&json.to_string(), &mut ids);
    }
    ids.push(special_token_id("<|assistant|>"));
    ids
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn split(text: &str) -> Vec<&str> {
        pieces(text).collect()
    }

    #[test]
    fn words_take_one_leading_space() {
        assert_eq!(split("Hello world"), ["Hello", " world"]);
        assert_eq!(split("abc123 x9"), ["abc123", " x9"]);
    }

    #[test]
    fn punctuation_is_one_char_per_piece() {
        assert_eq!(split("Hi, there!"), ["Hi", ",", " there", "!"]);
        assert_eq!(split("a ..."), ["a", " .", ".", "."]);
        assert_eq!(split("x.y"), ["x", ".", "y"]);
    }

    #[test]
    fn non_ascii_chars_are_single_pieces() {
        assert_eq!(split("café"), ["caf", "é"]);
        assert_eq!(split("a 日本"), ["a", " 日", "本"]);
    }

    #[test]
    fn whitespace_beyond_one_leading_space_is_one_piece_per_char() {
        assert_eq!(split("a  b"), ["a", " ", " b"]);
        assert_eq!(split("a\nb"), ["a", "\n", "b"]);
        assert_eq!(split("a \nb"), ["a", " ", "\n", "b"]);
        assert_eq!(split("\t\tx "), ["\t", "\t", "x", " "]);
        assert_eq!(split(""), Vec::<&str>::new());
        assert_eq!(split(" "), [" "]);
    }

    #[test]
    fn pieces_reassemble_the_text() {
        let text = "  Mixed: ünïcode, tabs\tand\r\n  newlines!! 42x";
        assert_eq!(split(text).concat(), text);
    }

    proptest::proptest! {
        #[test]
        fn any_text_splits_into_nonempty_pieces_that_reassemble(text in ".{0,64}") {
            let split: Vec<&str> = pieces(&text).collect();
            proptest::prop_assert!(split.iter().all(|p| !p.is_empty()));
            proptest::prop_assert_eq!(split.concat(), text);
        }
    }

    #[test]
    fn ids_are_31_bit_and_specials_are_distinct() {
        let id = token_id(" world");
        assert_eq!(id & SPECIAL_BIT, 0);
        assert_eq!(id, (xxh3_64(b" world") & 0x7FFF_FFFF) as u32);
        assert_ne!(special_token_id("<|user|>") & SPECIAL_BIT, 0);
        assert_eq!(count_tokens("The quick brown fox."), 5);
    }

    #[test]
    fn chat_template_counts() {
        let req = ChatCompletionRequest::from_slice(
            json!({"model": "m", "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hello there"}
            ]})
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        // (1 + 3 + 1) + (1 + 2 + 1) + 1
        let ids = encode_chat(&req);
        assert_eq!(ids.len(), 10);
        assert_eq!(ids[0], special_token_id("<|system|>"));
        assert_eq!(ids[1], token_id("Be"));
        assert_eq!(ids[4], special_token_id("<|end|>"));
        assert_eq!(ids[9], special_token_id("<|assistant|>"));
    }

    #[test]
    fn tools_cost_prompt_tokens() {
        let base = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        let mut with_tools = base.clone();
        with_tools["tools"] = json!([{"type": "function", "function": {"name": "f"}}]);
        let parse =
            |v: &Value| ChatCompletionRequest::from_slice(v.to_string().as_bytes()).unwrap();
        let tools_json = r#"[{"type":"function","function":{"name":"f"}}]"#;
        assert_eq!(
            encode_chat(&parse(&with_tools)).len(),
            encode_chat(&parse(&base)).len() + count_tokens(tools_json)
        );
    }

    #[test]
    fn content_parts_and_null_content() {
        let req = ChatCompletionRequest::from_slice(
            json!({"model": "m", "messages": [
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                {"role": "assistant", "content": null}
            ]})
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        // <|user|> a \n b <|end|> <|assistant|> <|end|> <|assistant|>
        assert_eq!(encode_chat(&req).len(), 8);
    }
}
