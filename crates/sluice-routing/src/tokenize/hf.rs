//! A model's own tokenizer, as vLLM applies it to a chat request: the chat template from
//! `tokenizer_config.json` (or `chat_template.jinja`) rendered over the messages as vLLM
//! prepares them, then `tokenizer.json` over the text without adding special tokens (the
//! template writes them).
//!
//! What vLLM does to the request before the template sees it, done here the same way:
//! - each message's content becomes one string (text parts joined by `"\n"`; none: `""`);
//! - an assistant message's `tool_calls` keep their order, each call's `arguments` read
//!   from its JSON string into an object;
//! - `tool_call_id` (tool messages) and `name` are kept;
//! - each tool is written as vLLM's request model dumps it (`type`, then `function` with
//!   `name`, `description`, `parameters` in that order, `null` when absent, then the rest);
//!   `chat_template_kwargs` from the request are
//!   added to the template's variables, and `add_generation_prompt` (default true) is read
//!   from the request.
//!
//! The template runs with Hugging Face's settings: blocks trim their newline and strip their
//! indentation, `tojson` writes as Python's `json.dumps`, `raise_exception` and
//! `strftime_now` exist, and Python's string and dict methods work (`.strip()`, `.items()`).

use std::path::{Path, PathBuf};

use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, Error, ErrorKind};
use serde_json::{Map, Value as Json};
use sluice_api::chat::{ChatMessage, Tool};
use sluice_api::ChatCompletionRequest;

use super::python_json::{dumps, DumpOptions};
use super::segments::{Piece, SegmentCache, SegmentCacheStats, SegmentSplitter};
use super::{TokenizeError, TokenizerLoadError};

const TEMPLATE: &str = "chat";
const TOOL_TEMPLATE: &str = "tool_use";

/// The special tokens `tokenizer_config.json` names, which templates read by these names.
const SPECIAL_TOKEN_KEYS: [&str; 7] = [
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
];

/// A Hugging Face tokenizer with its chat template.
pub struct HfChatTokenizer {
    tokenizer: tokenizers::Tokenizer,
    env: Environment<'static>,
    /// A second template for requests that offer tools (some models ship two).
    has_tool_template: bool,
    /// `bos_token`, `eos_token`, ... and `additional_special_tokens`, for the template.
    special_tokens: Vec<(String, Value)>,
    /// The ids of prompt pieces seen before (`None`: off, or this tokenizer's pieces could
    /// tokenize differently apart; see `segments`).
    segments: Option<Segments>,
    source: PathBuf,
}

struct Segments {
    splitter: SegmentSplitter,
    cache: SegmentCache,
}

impl std::fmt::Debug for HfChatTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HfChatTokenizer")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl HfChatTokenizer {
    /// Loads a model's tokenizer from the directory that holds its `tokenizer.json` and
    /// `tokenizer_config.json` (a Hugging Face model repository, or a copy of those two
    /// files), or from the path of its `tokenizer.json` with the config beside it.
    ///
    /// `cache_bytes`: memory for the ids of prompt pieces already tokenized (a chat's
    /// earlier turns); 0 turns the cache off.
    pub fn load(path: &Path, cache_bytes: u64) -> Result<Self, TokenizerLoadError> {
        let fail = |message: String| TokenizerLoadError {
            path: path.to_owned(),
            message,
        };
        let (dir, tokenizer_file) = if path.is_dir() {
            (path.to_owned(), path.join("tokenizer.json"))
        } else {
            let dir = path.parent().map_or_else(PathBuf::new, Path::to_owned);
            (dir, path.to_owned())
        };
        let bytes = std::fs::read(&tokenizer_file)
            .map_err(|e| fail(format!("cannot read {}: {e}", tokenizer_file.display())))?;
        let mut tokenizer = tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| {
            fail(format!(
                "{} is not a Hugging Face tokenizer.json ({e}); give the file from the model's repository",
                tokenizer_file.display()
            ))
        })?;
        // Transformers turns a file's truncation and padding off unless asked; so does vLLM.
        tokenizer
            .with_truncation(None)
            .map_err(|e| fail(format!("cannot turn truncation off: {e}")))?;
        tokenizer.with_padding(None);

        let config_file = dir.join("tokenizer_config.json");
        let config: Map<String, Json> = match std::fs::read(&config_file) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| fail(format!("{} is not JSON: {e}", config_file.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Map::new(),
            Err(e) => return Err(fail(format!("cannot read {}: {e}", config_file.display()))),
        };

        // Newer repositories keep the template in its own file, which then wins.
        let template_file = dir.join("chat_template.jinja");
        let (template, tool_template) = match std::fs::read_to_string(&template_file) {
            Ok(text) => (text, None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => templates_from_config(&config)
                .map_err(|m| fail(format!("{}: {m}", config_file.display())))?,
            Err(e) => {
                return Err(fail(format!(
                    "cannot read {}: {e}",
                    template_file.display()
                )))
            }
        };

        let mut env = template_environment()
            .map_err(|e| fail(format!("cannot set up the template engine: {e}")))?;
        env.add_template_owned(TEMPLATE, template)
            .map_err(|e| fail(format!("its chat template does not parse: {e:#}")))?;
        let has_tool_template = tool_template.is_some();
        if let Some(t) = tool_template {
            env.add_template_owned(TOOL_TEMPLATE, t)
                .map_err(|e| fail(format!("its tool_use chat template does not parse: {e:#}")))?;
        }

        let mut special_tokens = Vec::new();
        for key in SPECIAL_TOKEN_KEYS {
            if let Some(token) = config.get(key).and_then(token_text) {
                special_tokens.push((key.to_owned(), Value::from(token)));
            }
        }
        if let Some(Json::Array(extra)) = config.get("additional_special_tokens") {
            let tokens: Vec<Value> = extra
                .iter()
                .filter_map(token_text)
                .map(Value::from)
                .collect();
            special_tokens.push(("additional_special_tokens".into(), Value::from(tokens)));
        }

        let segments = if cache_bytes == 0 {
            None
        } else {
            match SegmentSplitter::new(&tokenizer) {
                Ok(splitter) => Some(Segments {
                    splitter,
                    cache: SegmentCache::new(cache_bytes),
                }),
                Err(why) => {
                    tracing::info!(
                        tokenizer = %path.display(),
                        "every prompt is tokenized whole (no cache of earlier turns): {why}"
                    );
                    None
                }
            }
        };

        Ok(HfChatTokenizer {
            tokenizer,
            env,
            has_tool_template,
            special_tokens,
            segments,
            source: path.to_owned(),
        })
    }

    /// The prompt text the engine's template makes of `request`.
    pub fn render(&self, request: &ChatCompletionRequest) -> Result<String, TokenizeError> {
        let tools = request
            .tools
            .as_ref()
            .filter(|t| !t.is_empty())
            .map(|tools| Json::Array(tools.iter().map(template_tool).collect()));
        let name = if tools.is_some() && self.has_tool_template {
            TOOL_TEMPLATE
        } else {
            TEMPLATE
        };
        let template = self
            .env
            .get_template(name)
            .map_err(|e| TokenizeError::Template(format!("{e:#}")))?;

        let mut vars: Vec<(String, Value)> = self.special_tokens.clone();
        let messages: Vec<Json> = request.messages.iter().map(template_message).collect();
        vars.push((
            "messages".into(),
            Value::from(minijinja::value::Serde(&messages)),
        ));
        vars.push((
            "tools".into(),
            tools.map_or(Value::from(()), |t| Value::from(minijinja::value::Serde(t))),
        ));
        let add_generation_prompt = request
            .extra
            .get("add_generation_prompt")
            .and_then(Json::as_bool)
            .unwrap_or(true);
        vars.push((
            "add_generation_prompt".into(),
            Value::from(add_generation_prompt),
        ));
        if let Some(Json::Object(kwargs)) = request.extra.get("chat_template_kwargs") {
            for (k, v) in kwargs {
                vars.push((k.clone(), Value::from(minijinja::value::Serde(v))));
            }
        }
        let context = Value::from_pairs(vars);
        template
            .render(context)
            .map_err(|e| TokenizeError::Template(format!("{e:#}")))
    }

    /// The token ids of `text`, special tokens written in it read as such, none added.
    /// Pieces between added tokens seen before come from the cache.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizeError> {
        let Some(segments) = &self.segments else {
            return self.encode_whole(text);
        };
        // About four bytes of text a token.
        let mut ids = Vec::with_capacity(text.len() / 4 + 8);
        for piece in segments.splitter.pieces(text) {
            match piece {
                Piece::Added(id) => ids.push(id),
                Piece::Text(t) => {
                    segments
                        .cache
                        .get_or_tokenize(t, |t| self.encode_whole(t), &mut ids)?
                }
            }
        }
        Ok(ids)
    }

    /// `text` through the tokenizer, whole.
    fn encode_whole(&self, text: &str) -> Result<Vec<u32>, TokenizeError> {
        let encoding = self
            .tokenizer
            .encode_fast(text, false)
            .map_err(|e| TokenizeError::Encode(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The cache of prompt pieces' counts; `None` when it is off.
    pub fn cache_stats(&self) -> Option<SegmentCacheStats> {
        self.segments.as_ref().map(|s| s.cache.stats())
    }

    /// The prompt token ids the engine computes for `request`.
    pub fn prompt_tokens(
        &self,
        request: &ChatCompletionRequest,
    ) -> Result<Vec<u32>, TokenizeError> {
        self.encode(&self.render(request)?)
    }
}

/// The template (and the tool-use one, when the model has two) from the config's
/// `chat_template`: a string, or a list of `{name, template}`.
fn templates_from_config(config: &Map<String, Json>) -> Result<(String, Option<String>), String> {
    match config.get("chat_template") {
        Some(Json::String(t)) => Ok((t.clone(), None)),
        Some(Json::Array(named)) => {
            let find = |want: &str| {
                named.iter().find_map(|t| {
                    (t.get("name")?.as_str()? == want)
                        .then(|| t.get("template")?.as_str().map(str::to_owned))?
                })
            };
            let default = find("default")
                .ok_or("chat_template is a list without a template named \"default\"".to_owned())?;
            Ok((default, find("tool_use")))
        }
        Some(_) => Err("chat_template is neither a string nor a list of named templates".into()),
        None => Err(
            "has no chat_template, and there is no chat_template.jinja beside it: the engine \
             would refuse chat requests for this model too; give the model's own files"
                .into(),
        ),
    }
}

/// A special token as the config writes it: a string, or `{"content": ...}`.
fn token_text(v: &Json) -> Option<String> {
    match v {
        Json::String(s) => Some(s.clone()),
        Json::Object(o) => o.get("content")?.as_str().map(str::to_owned),
        _ => None,
    }
}

/// One message as vLLM hands it to the template (see the module docs).
fn template_message(m: &ChatMessage) -> Json {
    let mut out = Map::new();
    out.insert("role".into(), Json::String(m.role.clone()));
    let content = m.content.as_ref().map(|c| c.text()).unwrap_or_default();
    out.insert("content".into(), Json::String(content));
    if m.role == "assistant" {
        if let Some(Json::Array(calls)) = m.extra.get("tool_calls") {
            let calls = calls.iter().cloned().map(parsed_arguments).collect();
            out.insert("tool_calls".into(), Json::Array(calls));
        }
    } else if m.role == "tool" {
        if let Some(id) = m.extra.get("tool_call_id") {
            out.insert("tool_call_id".into(), id.clone());
        }
    }
    if let Some(name @ Json::String(_)) = m.extra.get("name") {
        out.insert("name".into(), name.clone());
    }
    Json::Object(out)
}

/// A tool as vLLM hands it to the template: its request model dumped, so the function's
/// `name`, `description` and `parameters` come first in that order, `null` when absent,
/// then whatever else the client sent.
fn template_tool(t: &Tool) -> Json {
    let mut out = Map::new();
    out.insert("type".into(), Json::String(t.kind.clone()));
    if let Some(f) = &t.function {
        let mut function = Map::new();
        function.insert("name".into(), Json::String(f.name.clone()));
        let description = f.extra.get("description").cloned().unwrap_or(Json::Null);
        function.insert("description".into(), description);
        let parameters = f.parameters.clone().unwrap_or(Json::Null);
        function.insert("parameters".into(), parameters);
        for (k, v) in &f.extra {
            if k != "description" {
                function.insert(k.clone(), v.clone());
            }
        }
        out.insert("function".into(), Json::Object(function));
    }
    for (k, v) in &t.extra {
        out.entry(k.clone()).or_insert_with(|| v.clone());
    }
    Json::Object(out)
}

/// A tool call with its `arguments` read from their JSON string (kept as the string when
/// it is not JSON: the engine would refuse the request, and routing must not).
fn parsed_arguments(mut call: Json) -> Json {
    if let Some(Json::Object(function)) = call.get_mut("function") {
        if let Some(Json::String(args)) = function.get("arguments") {
            if let Ok(parsed) = serde_json::from_str::<Json>(args) {
                function.insert("arguments".into(), parsed);
            }
        }
    }
    call
}

/// A template environment with Hugging Face's settings (see the module docs).
fn template_environment() -> Result<Environment<'static>, Error> {
    let mut env = Environment::new();
    let syntax = minijinja::syntax::SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .build()?;
    env.set_syntax(syntax);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_filter("tojson", |value: Value, kwargs: Kwargs| {
        dumps(&value, &DumpOptions::from_kwargs(&kwargs)?)
    });
    env.add_function(
        "raise_exception",
        |message: String| -> Result<Value, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, message))
        },
    );
    env.add_function("strftime_now", |format: String| {
        super::strftime::format_now(&format)
    });
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tokenizer_dir(template: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tokenizer.json"), word_level_tokenizer()).unwrap();
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            json!({"chat_template": template, "bos_token": {"content": "<s>"}, "eos_token": "</s>"})
                .to_string(),
        )
        .unwrap();
        dir
    }

    /// A word-level tokenizer.json small enough to write here.
    fn word_level_tokenizer() -> String {
        json!({
            "version": "1.0",
            "added_tokens": [
                {"id": 0, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
                {"id": 1, "content": "</s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
            ],
            "normalizer": null,
            "pre_tokenizer": {"type": "Whitespace"},
            "post_processor": null,
            "decoder": null,
            "model": {"type": "WordLevel", "vocab": {"<s>": 0, "</s>": 1, "[UNK]": 2, "hi": 3, "user": 4, "assistant": 5, ":": 6}, "unk_token": "[UNK]"}
        })
        .to_string()
    }

    fn request(v: Json) -> ChatCompletionRequest {
        ChatCompletionRequest::from_slice(v.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn renders_with_special_tokens_and_generation_prompt() {
        let dir = tokenizer_dir(
            "{{ bos_token }}{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}",
        );
        let t = HfChatTokenizer::load(dir.path(), 1 << 20).unwrap();
        let r = request(json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}));
        assert_eq!(t.render(&r).unwrap(), "<s>user: hi\nassistant:");
        assert_eq!(t.prompt_tokens(&r).unwrap(), vec![0, 4, 6, 3, 5, 6]);
        let r = request(json!({"model": "m", "add_generation_prompt": false,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}));
        assert_eq!(t.render(&r).unwrap(), "<s>user: a\nb\n");
    }

    #[test]
    fn tool_call_arguments_reach_the_template_as_objects() {
        let dir = tokenizer_dir(
            "{% for m in messages %}{% for c in m.tool_calls %}{{ c.function.arguments | tojson }}{{ c.function.arguments.city }}{% endfor %}{% endfor %}",
        );
        let t = HfChatTokenizer::load(dir.path(), 1 << 20).unwrap();
        let r = request(json!({"model": "m", "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
                "function": {"name": "weather", "arguments": "{\"city\":\"Paris\",\"days\":2.0}"}}]}]}));
        assert_eq!(
            t.render(&r).unwrap(),
            r#"{"city": "Paris", "days": 2.0}Paris"#
        );
    }

    #[test]
    fn template_kwargs_python_methods_and_raise_exception() {
        let dir = tokenizer_dir(
            "{% if messages[0].role != 'user' %}{{ raise_exception('first must be user') }}{% endif %}{{ messages[0].content.strip() }}{% if enable_thinking is defined and not enable_thinking %}/no_think{% endif %}",
        );
        let t = HfChatTokenizer::load(dir.path(), 1 << 20).unwrap();
        let r = request(
            json!({"model": "m", "chat_template_kwargs": {"enable_thinking": false},
            "messages": [{"role": "user", "content": "  hi  "}]}),
        );
        assert_eq!(t.render(&r).unwrap(), "hi/no_think");
        let r = request(json!({"model": "m", "messages": [{"role": "system", "content": "x"}]}));
        let err = t.render(&r).unwrap_err().to_string();
        assert!(err.contains("first must be user"), "{err}");
    }

    #[test]
    fn a_list_of_named_templates_picks_tool_use_when_tools_are_offered() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tokenizer.json"), word_level_tokenizer()).unwrap();
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            json!({"chat_template": [
                {"name": "default", "template": "plain"},
                {"name": "tool_use", "template": "{{ tools | length }} tools"}]})
            .to_string(),
        )
        .unwrap();
        let t = HfChatTokenizer::load(dir.path(), 1 << 20).unwrap();
        let plain = request(json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}));
        assert_eq!(t.render(&plain).unwrap(), "plain");
        let tools = request(
            json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"type": "function", "function": {"name": "f"}}]}),
        );
        assert_eq!(t.render(&tools).unwrap(), "1 tools");
    }

    #[test]
    fn a_template_file_beside_the_config_wins() {
        let dir = tokenizer_dir("from config");
        std::fs::write(dir.path().join("chat_template.jinja"), "from file\n").unwrap();
        let t = HfChatTokenizer::load(&dir.path().join("tokenizer.json"), 1 << 20).unwrap();
        let r = request(json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}));
        assert_eq!(t.render(&r).unwrap(), "from file");
    }

    #[test]
    fn load_errors_name_the_file_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let err = HfChatTokenizer::load(dir.path(), 1 << 20)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("tokenizer.json") && err.contains("cannot read"),
            "{err}"
        );
        std::fs::write(dir.path().join("tokenizer.json"), "{not json").unwrap();
        let err = HfChatTokenizer::load(dir.path(), 1 << 20)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a Hugging Face tokenizer.json"), "{err}");
        std::fs::write(dir.path().join("tokenizer.json"), word_level_tokenizer()).unwrap();
        let err = HfChatTokenizer::load(dir.path(), 1 << 20)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no chat_template"), "{err}");
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            json!({"chat_template": "{% for %}"}).to_string(),
        )
        .unwrap();
        let err = HfChatTokenizer::load(dir.path(), 1 << 20)
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not parse"), "{err}");
    }

    /// A tokenizer.json with a word-level model, given added tokens and pre-tokenizer.
    fn tokenizer_with(added: Json, pre_tokenizer: Json, vocab: Json) -> tempfile::TempDir {
        let dir = tokenizer_dir("{{ messages[0].content }}");
        let json = json!({
            "version": "1.0", "added_tokens": added, "normalizer": null,
            "pre_tokenizer": pre_tokenizer, "post_processor": null, "decoder": null,
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}
        });
        std::fs::write(dir.path().join("tokenizer.json"), json.to_string()).unwrap();
        dir
    }

    fn added(content: &str, lstrip: bool) -> Json {
        json!({"id": 0, "content": content, "single_word": false, "lstrip": lstrip,
            "rstrip": false, "normalized": false, "special": true})
    }

    #[test]
    fn pieces_that_tokenize_by_where_they_stand_are_tokenized_whole() {
        // Metaspace "first" prepends `▁` to the piece at the start of the text only: the
        // second "a" is "a", where tokenized alone it would be "▁a".
        let dir = tokenizer_with(
            json!([added("<s>", false)]),
            json!({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": true}),
            json!({"<s>": 0, "▁a": 1, "a": 2, "[UNK]": 3}),
        );
        let t = HfChatTokenizer::load(dir.path(), 1 << 20).unwrap();
        assert_eq!(t.cache_stats(), None);
        assert_eq!(t.encode("a<s>a").unwrap(), vec![1, 0, 2]);

        // An lstrip token takes the spaces before it: "a " is "a" then "<s>".
        let dir = tokenizer_with(
            json!([added("<s>", true)]),
            json!(null),
            json!({"<s>": 0, "a": 1, "a ": 2, "[UNK]": 3}),
        );
        let t = HfChatTokenizer::load(dir.path(), 1 << 20).unwrap();
        assert_eq!(t.cache_stats(), None);
        assert_eq!(t.encode("a <s>").unwrap(), vec![1, 0]);

        // The same without lstrip: cut into pieces, kept, and the same ids the second time.
        let dir = tokenizer_with(
            json!([added("<s>", false)]),
            json!(null),
            json!({"<s>": 0, "a": 1, "a ": 2, "[UNK]": 3}),
        );
        let t = HfChatTokenizer::load(dir.path(), 1 << 20).unwrap();
        assert_eq!(t.encode("a <s>a <s>").unwrap(), vec![2, 0, 2, 0]);
        assert_eq!(t.encode("a <s>a <s>").unwrap(), vec![2, 0, 2, 0]);
        let stats = t.cache_stats().unwrap();
        assert_eq!((stats.misses, stats.hits), (1, 3));
    }
}
