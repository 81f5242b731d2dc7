"""`sluice tokenize` against Hugging Face's Python packages: for Qwen2.5's tokenizer and
chat template, the prompt token ids the gateway routes by must be the ids vLLM computes.
The reference is `transformers.apply_chat_template` over the messages prepared as vLLM
prepares them, then `tokenizers` without added special tokens (tokenizer_reference.py).

Checked on the fixed conversations (tests/fixtures/tokenizers/conversations.json) and on
generated ones: random multilingual text, whitespace runs, tool calls with numbers.
"""

import json
import random
import subprocess
import tempfile

import pytest

from sluice_process import BIN
import tokenizer_reference as ref


@pytest.fixture(scope="module")
def qwen():
    with tempfile.TemporaryDirectory() as d:
        ref.unpack_qwen(d)
        yield d, ref.load(d)


def sluice_ids(model_dir, requests):
    """The ids `sluice tokenize` prints for each request, in one run."""
    with tempfile.TemporaryDirectory() as d:
        files = []
        for i, request in enumerate(requests):
            files.append(f"{d}/{i}.json")
            with open(files[-1], "w", encoding="utf-8") as f:
                json.dump(request, f, ensure_ascii=False)
        out = subprocess.run(
            [BIN, "tokenize", "--tokenizer", model_dir, *files],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert out.returncode == 0, out.stderr
    answers = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(answers) == len(requests)
    for a in answers:
        assert a["prompt_tokens"] == len(a["ids"])
    return [a["ids"] for a in answers]


def test_fixed_conversations_match_transformers(qwen):
    model_dir, tokenizer = qwen
    conversations = ref.conversations()
    assert len(conversations) >= 5
    got = sluice_ids(model_dir, [c["request"] for c in conversations])
    for c, ids in zip(conversations, got):
        _, want = ref.prompt(tokenizer, c["request"])
        assert ids == want, c["name"]


PIECES = [
    "the", " quick", "brown", "fox", "日本語", "テキスト", "café", "naïve", "🎉", "👩‍👩‍👧",
    "Привет", "مرحبا", "12345", "3.14", "  ", "\n", "\n\n", "\t", " ", "<tag>", "{\"a\": 1}",
    "don't", "I'm", "—", "…", "\\", "\"", "'", "$", "x" * 40,
]


def random_text(rng):
    return "".join(rng.choice(PIECES) for _ in range(rng.randint(1, 60)))


def random_request(rng):
    messages = []
    if rng.random() < 0.5:
        messages.append({"role": "system", "content": random_text(rng)})
    for turn in range(rng.randint(1, 4)):
        messages.append({"role": "user", "content": random_text(rng)})
        if rng.random() < 0.3:
            args = {"city": random_text(rng), "n": rng.randint(-5, 10**6), "x": rng.choice([0.5, 2.0, 1e-7, 123.456])}
            messages.append({"role": "assistant", "content": None, "tool_calls": [
                {"id": f"c{turn}", "type": "function", "function": {"name": "lookup", "arguments": json.dumps(args)}}]})
            messages.append({"role": "tool", "tool_call_id": f"c{turn}", "content": random_text(rng)})
        messages.append({"role": "assistant", "content": random_text(rng)})
    messages.append({"role": "user", "content": random_text(rng)})
    request = {"model": "qwen", "messages": messages}
    if rng.random() < 0.3:
        request["tools"] = [{"type": "function", "function": {"name": "lookup", "description": random_text(rng),
                                                              "parameters": {"type": "object"}}}]
    return request


def test_generated_conversations_match_transformers(qwen):
    model_dir, tokenizer = qwen
    rng = random.Random(20261202)
    requests = [random_request(rng) for _ in range(40)]
    for request, ids in zip(requests, sluice_ids(model_dir, requests)):
        _, want = ref.prompt(tokenizer, request)
        assert ids == want, json.dumps(request, ensure_ascii=False)
