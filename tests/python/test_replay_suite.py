"""The project's own suite through `sluice proxy` in strict replay, with the official SDKs.

Two proxies run in `--mode replay` over the committed recordings, with an upstream where
nothing listens (port 9), so any request that is not recorded fails instead of reaching a
network:

- `tests/recordings/mock`: recorded from `sluice mock`; the `openai` SDK sends the same
  requests as the Rust suite (`crates/sluice-proxy/tests/ci_suite/mod.rs`);
- `tests/recordings/providers`: recorded from the hand-written OpenAI and Anthropic response
  shapes in `tests/fixtures/provider-shapes`; the `openai` and `anthropic` SDKs send each
  case's request from `cases.json` and must parse the documented shapes.

Every answer must carry `x-sluice-replay: hit`. `scripts/record-fixtures.sh` re-records.
"""

import copy
import json
from pathlib import Path

import anthropic
import openai
import pytest

from sluice_process import BIN, Process

ROOT = Path(__file__).resolve().parents[2]
MOCK_DIR = ROOT / "tests/recordings/mock"
PROVIDER_DIR = ROOT / "tests/recordings/providers"
CASES = {
    c["name"]: c["request"]
    for c in json.loads((ROOT / "tests/fixtures/provider-shapes/cases.json").read_text())["cases"]
}
# Nothing listens on the discard port: a request the proxy forwarded would fail.
DEAD_UPSTREAM = "http://127.0.0.1:9"

# The mock suite's inputs, as in crates/sluice-proxy/tests/ci_suite/mod.rs.
WEATHER_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
                "required": ["city"],
            },
        },
    }
]
WEATHER_QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER_RESULT = '{"city":"Paris","temperature":18,"unit":"celsius"}'
CONVERSATION = [
    "Where should I travel in spring?",
    "What should I pack for that trip?",
    "Summarise the plan in one line.",
]


def entries(directory):
    return sorted(p.name for p in directory.glob("*.json"))


def replay_proxy(directory):
    return Process(
        [
            "proxy",
            "--mode", "replay",
            "--dir", str(directory),
            "--upstream", DEAD_UPSTREAM,
            "--listen", "127.0.0.1:0",
        ]
    )


def serve_replay(directory):
    before = entries(directory)
    assert before, f"{directory} holds no recordings; run scripts/record-fixtures.sh"
    proxy = replay_proxy(directory)
    try:
        yield proxy.url
    finally:
        proxy.stop()
    assert entries(directory) == before, "strict replay must never write a recording"


@pytest.fixture(scope="module")
def mock_url():
    yield from serve_replay(MOCK_DIR)


@pytest.fixture(scope="module")
def provider_url():
    yield from serve_replay(PROVIDER_DIR)


def openai_client(url):
    # No provider key exists in CI; replay never needs one. No retries: a miss must show.
    return openai.OpenAI(base_url=url + "/v1", api_key="no-key-in-replay", max_retries=0)


def hit(headers):
    assert headers.get("x-sluice-replay") == "hit", dict(headers)
    assert headers.get("x-sluice-replay-file", "").endswith(".json")


def create(client, **body):
    """A non-streamed chat completion, checked to be a replay hit."""
    raw = client.chat.completions.with_raw_response.create(**body)
    hit(raw.headers)
    return raw.parse()


def stream_chunks(client, **body):
    stream = client.chat.completions.create(**body)
    hit(stream.response.headers)
    return list(stream)


# ---- the mock suite, through the openai SDK ----


def test_models_list(mock_url):
    raw = openai_client(mock_url).models.with_raw_response.list()
    hit(raw.headers)
    assert [m.id for m in raw.parse().data] == ["mock"]


def test_unary_chat(mock_url):
    reply = create(
        openai_client(mock_url),
        model="mock",
        messages=[
            {"role": "system", "content": "You are a terse assistant."},
            {"role": "user", "content": "Name three rivers in Europe."},
        ],
        max_tokens=200,
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str) and choice.message.content.endswith(".")
    u = reply.usage
    assert u.completion_tokens > 0 and u.prompt_tokens > 0
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens


def test_streaming_chat_with_usage(mock_url):
    chunks = stream_chunks(
        openai_client(mock_url),
        model="mock",
        messages=[{"role": "user", "content": "Write a haiku about the sea."}],
        stream=True,
        stream_options={"include_usage": True},
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    *body, usage_chunk = chunks
    assert usage_chunk.choices == [] and usage_chunk.usage is not None
    assert all(c.usage is None for c in body)
    assert body[-1].choices[0].finish_reason == "stop"
    tokens = [c.choices[0].delta.content for c in body if c.choices[0].delta.content]
    # The mock streams one token per chunk, and usage counts them.
    assert usage_chunk.usage.completion_tokens == len(tokens)
    assert "".join(tokens).strip()


def test_tool_call_and_its_follow_up(mock_url):
    client = openai_client(mock_url)
    reply = create(
        client, model="mock", messages=WEATHER_QUESTION, tools=WEATHER_TOOLS, tool_choice="auto"
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather"
    args = json.loads(call.function.arguments)
    assert isinstance(args["city"], str) and args["unit"] in ("celsius", "fahrenheit")

    follow_up = WEATHER_QUESTION + [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.function.name, "arguments": call.function.arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call.id, "content": WEATHER_RESULT},
    ]
    answer = create(
        client, model="mock", messages=follow_up, tools=WEATHER_TOOLS, tool_choice="auto"
    )
    assert answer.choices[0].finish_reason == "stop"
    assert answer.choices[0].message.tool_calls is None
    assert answer.choices[0].message.content
    # The follow-up resends the call and its result, so it is a longer prompt.
    assert answer.usage.prompt_tokens > reply.usage.prompt_tokens


def test_streamed_tool_call_assembles_to_the_unary_one(mock_url):
    client = openai_client(mock_url)
    unary = create(
        client, model="mock", messages=WEATHER_QUESTION, tools=WEATHER_TOOLS, tool_choice="auto"
    ).choices[0].message.tool_calls[0]
    chunks = stream_chunks(
        client,
        model="mock",
        messages=WEATHER_QUESTION,
        tools=WEATHER_TOOLS,
        tool_choice="auto",
        stream=True,
        stream_options={"include_usage": True},
    )
    deltas = [d for c in chunks if c.choices for d in (c.choices[0].delta.tool_calls or [])]
    assert deltas[0].id == unary.id and deltas[0].function.name == "get_weather"
    assert all(d.index == 0 for d in deltas)
    assert "".join(d.function.arguments or "" for d in deltas) == unary.function.arguments
    finish = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finish[-1] == "tool_calls"
    assert chunks[-1].usage.completion_tokens > 0


def test_multi_turn_conversation(mock_url):
    client = openai_client(mock_url)
    history, prompt_tokens = [], []
    for text in CONVERSATION:
        history.append({"role": "user", "content": text})
        reply = create(client, model="mock", messages=history, max_tokens=200)
        assert reply.choices[0].finish_reason == "stop"
        history.append({"role": "assistant", "content": reply.choices[0].message.content})
        prompt_tokens.append(reply.usage.prompt_tokens)
    assert prompt_tokens == sorted(set(prompt_tokens)), "each turn resends a longer history"


def test_unrecorded_request_is_a_502_replay_miss(mock_url):
    client = openai_client(mock_url)
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(
            model="mock",
            messages=[
                {"role": "system", "content": "You are a terse assistant."},
                {"role": "user", "content": "Name three rivers in Asia."},
            ],
            max_tokens=200,
        )
    e = err.value
    assert e.status_code == 502
    assert e.response.headers["x-sluice-replay"] == "miss"
    error = e.body if "type" in e.body else e.body["error"]
    assert error["type"] == "replay_miss"
    # The nearest recording is the unary chat, differing only in the question.
    assert [d["path"] for d in error["nearest"]["differences"]] == ["body.messages[1].content"]


def test_the_sdks_send_a_miss_once_despite_their_default_retries():
    """Both SDKs retry a 502 twice unless told not to; every answer the proxy makes up says
    `x-should-retry: false`, so one unrecorded call is one miss, at once."""
    import urllib.request

    proxy = replay_proxy(MOCK_DIR)
    try:
        # Default max_retries (2): a retried miss would count three times.
        with pytest.raises(openai.APIStatusError) as err:
            openai.OpenAI(base_url=proxy.url + "/v1", api_key="no-key-in-replay").chat.completions.create(
                model="mock", messages=[{"role": "user", "content": "not recorded"}], max_tokens=4
            )
        assert err.value.status_code == 502
        assert err.value.response.headers["x-should-retry"] == "false"
        with pytest.raises(anthropic.APIStatusError) as err:
            anthropic.Anthropic(base_url=proxy.url, api_key="no-key-in-replay").messages.create(
                model="claude", max_tokens=4, messages=[{"role": "user", "content": "not recorded"}]
            )
        assert err.value.status_code == 502
        metrics = urllib.request.urlopen(proxy.url + "/_sluice/metrics").read().decode()
        assert 'sluice_proxy_requests_total{outcome="miss"} 2' in metrics, metrics
    finally:
        proxy.stop()


# ---- hand-written OpenAI shapes, through the openai SDK ----


def test_openai_shape_unary_chat(provider_url):
    reply = create(openai_client(provider_url), **CASES["openai-chat"])
    assert reply.object == "chat.completion"
    assert reply.model == "gpt-4o-mini-2024-07-18"
    choice = reply.choices[0]
    assert choice.message.content == "The capital of France is Paris."
    assert choice.finish_reason == "stop"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.total_tokens) == (24, 8, 32)
    assert reply.usage.prompt_tokens_details.cached_tokens == 0
    assert reply.usage.completion_tokens_details.reasoning_tokens == 0


def test_openai_shape_stream_with_final_usage_chunk(provider_url):
    chunks = stream_chunks(openai_client(provider_url), **CASES["openai-chat-stream"])
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert len({c.id for c in chunks}) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Bonjour! Comment ça va ?"
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (12, 7)


def test_openai_shape_tool_call(provider_url):
    reply = create(openai_client(provider_url), **CASES["openai-tool-call"])
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.id == "call_Sl1ceWeatherParis0001" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris", "unit": "celsius"}


def test_openai_shape_streamed_tool_call_deltas(provider_url):
    chunks = stream_chunks(openai_client(provider_url), **CASES["openai-tool-call-stream"])
    deltas = [d for c in chunks if c.choices for d in (c.choices[0].delta.tool_calls or [])]
    assert deltas[0].id == "call_Sl1ceWeatherParis0002"
    assert deltas[0].function.name == "get_weather"
    assert all(d.id is None for d in deltas[1:])
    arguments = "".join(d.function.arguments for d in deltas)
    assert json.loads(arguments) == {"city": "Paris", "unit": "celsius"}
    assert chunks[-2].choices[0].finish_reason == "tool_calls"
    assert chunks[-1].usage.total_tokens == 99


# ---- hand-written Anthropic shapes, through the anthropic SDK ----


def anthropic_client(url):
    return anthropic.Anthropic(base_url=url, api_key="no-key-in-replay", max_retries=0)


def without_stream(name):
    body = copy.deepcopy(CASES[name])
    del body["stream"]
    return body


def test_anthropic_shape_unary_message(provider_url):
    raw = anthropic_client(provider_url).messages.with_raw_response.create(**CASES["anthropic-message"])
    hit(raw.headers)
    message = raw.parse()
    assert message.type == "message" and message.role == "assistant"
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text == "The capital of France is Paris."
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert (message.usage.input_tokens, message.usage.output_tokens) == (21, 10)


def test_anthropic_shape_stream_helper_accumulates_text_and_usage(provider_url):
    client = anthropic_client(provider_url)
    with client.messages.stream(**without_stream("anthropic-message-stream")) as stream:
        hit(stream.response.headers)
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Bonjour ! Comment allez-vous ?"
    assert final.content[0].text == text
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (13, 9)


def test_anthropic_shape_raw_stream_events(provider_url):
    stream = anthropic_client(provider_url).messages.create(**CASES["anthropic-message-stream"])
    hit(stream.response.headers)
    kinds = [e.type for e in stream]
    # The SDK drops `ping`; the recording keeps it (checked by the Rust tests).
    assert kinds == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]


def test_anthropic_shape_tool_use(provider_url):
    raw = anthropic_client(provider_url).messages.with_raw_response.create(**CASES["anthropic-tool-use"])
    hit(raw.headers)
    message = raw.parse()
    assert message.stop_reason == "tool_use"
    text, tool = message.content
    assert text.type == "text" and tool.type == "tool_use"
    assert tool.id == "toolu_01Sl1ceWeatherParis0001" and tool.name == "get_weather"
    assert tool.input == {"city": "Paris", "unit": "celsius"}


def test_anthropic_shape_streamed_tool_use_input_json_deltas(provider_url):
    client = anthropic_client(provider_url)
    with client.messages.stream(**without_stream("anthropic-tool-use-stream")) as stream:
        hit(stream.response.headers)
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    text, tool = final.content
    assert text.text == "I'll look up the current weather in Paris."
    assert tool.type == "tool_use" and tool.id == "toolu_01Sl1ceWeatherParis0002"
    assert tool.input == {"city": "Paris", "unit": "celsius"}
    assert final.usage.output_tokens == 71


def test_anthropic_unrecorded_request_is_a_502_replay_miss(provider_url):
    body = copy.deepcopy(CASES["anthropic-message"])
    body["max_tokens"] = 512
    with pytest.raises(anthropic.APIStatusError) as err:
        anthropic_client(provider_url).messages.create(**body)
    assert err.value.status_code == 502
    assert err.value.response.headers["x-sluice-replay"] == "miss"
    assert err.value.body["error"]["type"] == "replay_miss"


def test_report_json_has_what_the_ci_workflows_read(tmp_path):
    # examples/ci/*.yml read `last_run.counts.misses`, `drift.summary.drifted` and `unused`
    # from `sluice proxy report --since-start --json`: run a replay with one hit and one
    # miss on a copy of the recordings, stop the proxy, and read the report as they do.
    import shutil
    import subprocess

    directory = tmp_path / "recordings"
    shutil.copytree(MOCK_DIR, directory)
    proxy = replay_proxy(directory)
    try:
        client = openai_client(proxy.url)
        models = client.models.with_raw_response.list()
        hit(models.headers)
        with pytest.raises(openai.APIStatusError) as miss:
            create(client, model="not-recorded", messages=[{"role": "user", "content": "x"}])
        assert miss.value.status_code == 502
    finally:
        proxy.stop()
    out = subprocess.run(
        [BIN, "proxy", "report", "--dir", str(directory), "--since-start", "--json"],
        capture_output=True, text=True, check=True,
    )
    report = json.loads(out.stdout)
    counts = report["last_run"]["counts"]
    assert (counts["hits"], counts["misses"]) == (1, 1), counts
    assert report["last_run"]["finished_at_unix_ms"], "SIGTERM must leave a finished run record"
    assert len(report["unused"]) == len(entries(directory)) - 1
    drift = (report.get("drift") or {}).get("summary") or {}
    assert drift.get("drifted", 0) == 0
    # A run with a miss was incomplete: pruning after it must refuse.
    prune = subprocess.run(
        [BIN, "proxy", "prune", "--dir", str(directory), "--dry-run"],
        capture_output=True, text=True,
    )
    assert prune.returncode != 0, prune.stdout
