"""Prompt token ids as vLLM computes them for a chat request, with Hugging Face
`transformers` (the library vLLM renders chat templates with) and `tokenizers`.

vLLM's preparation of the messages, restated: each tool as its request model dumps it (the function's name, description and
parameters first, None when absent); each message's content becomes one string
(text parts joined by newlines, none: ""), an assistant's tool calls keep their order with
each call's `arguments` read from JSON into an object, `tool_call_id` and `name` are kept;
then `apply_chat_template(..., add_generation_prompt=...)` renders the text and the tokenizer
encodes it without adding special tokens.

Run as a script to (re)write the expected ids the Rust tests read:
    python tests/python/tokenizer_reference.py --write
"""

import gzip
import json
import os
import shutil
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "tokenizers")
QWEN = os.path.join(FIXTURES, "qwen2.5")


def unpack_qwen(into):
    """The vendored Qwen2.5 files as a model directory (tokenizer.json is kept gzipped)."""
    with gzip.open(os.path.join(QWEN, "tokenizer.json.gz"), "rb") as src, open(
        os.path.join(into, "tokenizer.json"), "wb"
    ) as dst:
        shutil.copyfileobj(src, dst)
    shutil.copy(os.path.join(QWEN, "tokenizer_config.json"), into)
    return into


def conversations():
    with open(os.path.join(FIXTURES, "conversations.json"), encoding="utf-8") as f:
        return json.load(f)


def vllm_messages(messages):
    out = []
    for m in messages:
        content = m.get("content")
        if content is None:
            text = ""
        elif isinstance(content, str):
            text = content
        else:
            text = "\n".join(p["text"] for p in content if p.get("type") == "text")
        msg = {"role": m["role"], "content": text}
        if m["role"] == "assistant" and isinstance(m.get("tool_calls"), list):
            calls = json.loads(json.dumps(m["tool_calls"]))
            for call in calls:
                call["function"]["arguments"] = json.loads(call["function"]["arguments"])
            msg["tool_calls"] = calls
        elif m["role"] == "tool" and "tool_call_id" in m:
            msg["tool_call_id"] = m["tool_call_id"]
        if isinstance(m.get("name"), str):
            msg["name"] = m["name"]
        out.append(msg)
    return out


def vllm_tools(tools):
    """Each tool as vLLM's request model dumps it: declared fields first, absent ones None."""
    if not tools:
        return None
    out = []
    for t in tools:
        f = t["function"]
        function = {"name": f["name"], "description": f.get("description"), "parameters": f.get("parameters")}
        function.update({k: v for k, v in f.items() if k not in function})
        tool = {"type": t.get("type", "function"), "function": function}
        tool.update({k: v for k, v in t.items() if k not in tool})
        out.append(tool)
    return out


def prompt(tokenizer, request):
    """(text, ids) for one chat request body."""
    text = tokenizer.apply_chat_template(
        vllm_messages(request["messages"]),
        tools=vllm_tools(request.get("tools")),
        add_generation_prompt=request.get("add_generation_prompt", True),
        tokenize=False,
        **request.get("chat_template_kwargs", {}),
    )
    ids = tokenizer.encode(text, add_special_tokens=False)
    return text, ids


def load(model_dir):
    # The files are local; never ask the Hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def main():
    if sys.argv[1:] != ["--write"]:
        sys.exit(__doc__)
    with tempfile.TemporaryDirectory() as d:
        tokenizer = load(unpack_qwen(d))
        expected = []
        for c in conversations():
            text, ids = prompt(tokenizer, c["request"])
            expected.append({"name": c["name"], "text": text, "ids": ids})
    with open(os.path.join(QWEN, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(expected, f, ensure_ascii=False, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
