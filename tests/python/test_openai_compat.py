"""The official `openai` Python package against `sluice serve`.

Boots two `sluice mock` engines and a gateway in front of them (real processes, loopback
ports), then talks to the gateway only through the SDK: chat, streaming, tool calls, and the
SDK's error classes for every error the gateway produces.
"""

import json
import os
import tempfile
import urllib.request

import openai
import pytest

from sluice_process import Process


def admin(engine, method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        engine.url + path, data=data, method=method, headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read() or b"null")


@pytest.fixture(scope="module")
def stack():
    engines = [
        Process(["mock", "--listen", "127.0.0.1:0", "--ttft-base", "5ms", "--decode-interval", "1ms"])
        for _ in range(2)
    ]
    faulty = Process(["mock", "--listen", "127.0.0.1:0", "--zero-timing"])
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write('[server]\nlisten = "127.0.0.1:0"\n\n[models.m]\n')
        for e in engines:
            f.write(f'[[models.m.endpoints]]\nurl = "{e.url}/v1"\n')
        f.write(f'\n[models.faulty]\n[[models.faulty.endpoints]]\nurl = "{faulty.url}/v1"\n')
        config = f.name
    gateway = Process(["serve", "--config", config])
    yield {"gateway": gateway, "engines": engines, "faulty": faulty}
    for p in [gateway, faulty, *engines]:
        p.stop()
    os.unlink(config)


@pytest.fixture()
def client(stack):
    return openai.OpenAI(base_url=stack["gateway"].url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture()
def faulty(stack):
    engine = stack["faulty"]
    yield engine
    admin(engine, "PUT", "/admin/faults", {})


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer"},
            },
            "required": ["city", "unit"],
        },
    },
}


def test_chat(client):
    r = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "Say hello"}], max_tokens=10, seed=7
    )
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content
    assert r.choices[0].finish_reason in ("stop", "length")
    assert 0 < r.usage.completion_tokens <= 10
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    again = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "Say hello"}], max_tokens=10, seed=7
    )
    assert again.choices[0].message.content == r.choices[0].message.content


def test_models_and_request_id(client):
    assert "m" in [m.id for m in client.models.list()]
    raw = client.chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=2,
        extra_headers={"x-request-id": "py-sdk-1"},
    )
    assert raw.headers["x-request-id"] == "py-sdk-1"
    assert raw.parse().choices[0].message.content


def test_streaming_with_usage(client):
    stream = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "Tell me a story"}],
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish and finish[-1] in ("stop", "length")
    assert chunks[-1].choices == []
    token_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert chunks[-1].usage.completion_tokens == len(token_chunks)


def test_streaming_without_usage_has_no_usage_chunk(client):
    chunks = list(
        client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True
        )
    )
    assert chunks and all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)


def test_tool_call_round_trip(client):
    messages = [{"role": "user", "content": "What's the weather in Paris?"}]
    r = client.chat.completions.create(model="m", messages=messages, tools=[WEATHER_TOOL])
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather"
    args = json.loads(call.function.arguments)
    assert isinstance(args["city"], str)
    assert args["unit"] in ("celsius", "fahrenheit")

    messages.append(choice.message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": '{"temp": 21}'})
    follow = client.chat.completions.create(model="m", messages=messages, tools=[WEATHER_TOOL])
    assert follow.choices[0].finish_reason in ("stop", "length")
    assert follow.choices[0].message.content


def test_streamed_tool_call_assembles_to_valid_json(client):
    stream = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "Weather in Oslo?"}],
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        stream=True,
    )
    name, arguments = None, ""
    for chunk in stream:
        for tc in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            name = tc.function.name or name
            arguments += tc.function.arguments or ""
    assert name == "get_weather"
    assert "city" in json.loads(arguments)


def test_unknown_model_is_not_found(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 404
    assert "available models" in e.value.message


def test_bad_request_names_the_field(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="m", messages=[{"content": "no role"}])
    assert e.value.body["param"] == "messages[0].role"


def test_upstream_rate_limit_passes_through(client, faulty):
    admin(faulty, "PATCH", "/admin/faults", {"error_rate": 1.0, "error_status": 429, "retry_after_secs": 3})
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(model="faulty", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 429
    assert e.value.response.headers["retry-after"] == "3"


def test_upstream_failure_is_bad_gateway(client, faulty):
    admin(faulty, "PATCH", "/admin/faults", {"error_rate": 1.0, "error_status": 503})
    with pytest.raises(openai.InternalServerError) as e:
        client.chat.completions.create(model="faulty", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 502


def test_stream_broken_midway_raises(client, faulty):
    admin(faulty, "PATCH", "/admin/faults", {"disconnect_rate": 1.0, "disconnect_after_chunks": 3})
    stream = client.chat.completions.create(
        model="faulty", messages=[{"role": "user", "content": "x"}], max_tokens=30, stream=True
    )
    received = []
    with pytest.raises(openai.APIError) as e:
        for chunk in stream:
            received.append(chunk)
    assert received, "chunks before the break were delivered"
    assert "stream broken" in str(e.value)
