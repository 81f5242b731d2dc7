//! `sluice tokenize`: a chat request's prompt tokens as the gateway computes them for
//! prefix-aware routing, to check a model's `tokenizer` setting against its engine (vLLM's
//! `/tokenize` endpoint answers the same question from the engine's side).

use std::io::Read;
use std::path::PathBuf;

use anyhow::Context;
use sluice_api::ChatCompletionRequest;
use sluice_routing::PromptTokenizer;

#[derive(clap::Args, Debug)]
pub struct TokenizeArgs {
    /// The model's tokenizer, as `[models.NAME.routing] tokenizer` names it: a directory
    /// holding tokenizer.json and tokenizer_config.json, or "mock".
    #[arg(long)]
    pub tokenizer: String,
    /// Print the prompt text the chat template renders instead of the token ids.
    #[arg(long)]
    pub text: bool,
    /// Files holding chat completion request bodies (JSON), one answer line each; standard
    /// input when none is given.
    pub requests: Vec<PathBuf>,
}

pub fn run(args: TokenizeArgs) -> anyhow::Result<()> {
    let tokenizer = PromptTokenizer::load(
        &args.tokenizer,
        sluice_routing::DEFAULT_TOKENIZER_CACHE_BYTES,
    )?;
    if args.requests.is_empty() {
        let mut body = Vec::new();
        std::io::stdin()
            .read_to_end(&mut body)
            .context("cannot read the request from standard input")?;
        return print_one(&tokenizer, &body, args.text);
    }
    for path in &args.requests {
        let body =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        print_one(&tokenizer, &body, args.text).with_context(|| path.display().to_string())?;
    }
    Ok(())
}

fn print_one(tokenizer: &PromptTokenizer, body: &[u8], text: bool) -> anyhow::Result<()> {
    let request = ChatCompletionRequest::from_slice(body)
        .map_err(|e| anyhow::anyhow!("not a chat completion request: {}", e.message))?;
    if text {
        match tokenizer.render(&request) {
            Some(text) => print!("{}", text?),
            None => anyhow::bail!("the mock tokenizer has no chat template to render"),
        }
        return Ok(());
    }
    let ids = tokenizer.prompt_tokens(&request)?;
    println!(
        "{}",
        serde_json::json!({"prompt_tokens": ids.len(), "ids": ids})
    );
    Ok(())
}
