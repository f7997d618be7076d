"""The simulator, driven over real HTTP by the official openai and anthropic SDKs."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest
import uvicorn
from starlette.applications import Starlette

from gatewatch.simulator import create_simulator_app

WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
CLAUDE_TOOL: Any = {
    "name": "get_weather",
    "description": "Current weather",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}


class _Served:
    def __init__(self, app: Starlette, port: int) -> None:
        self.app = app
        self.port = port

    @property
    def received(self) -> list[dict[str, Any]]:
        return self.app.state.received  # type: ignore[no-any-return]

    def openai(self, **kwargs: Any) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=f"http://127.0.0.1:{self.port}/v1", api_key="sk-test", max_retries=0, **kwargs
        )

    def anthropic(self, **kwargs: Any) -> anthropic.Anthropic:
        return anthropic.Anthropic(
            base_url=f"http://127.0.0.1:{self.port}", api_key="sk-ant-test", max_retries=0, **kwargs
        )


@pytest.fixture(scope="module")
def sim() -> Iterator[_Served]:
    yield from _serve_in_thread(create_simulator_app())


def _serve_in_thread(app: Starlette) -> Iterator[_Served]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_config=None, lifespan="off", log_level="critical"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 5
    while not server.started:
        assert time.monotonic() < deadline, "simulator did not start"
        time.sleep(0.01)
    try:
        yield _Served(app, port)
    finally:
        server.should_exit = True
        thread.join(5)


def _last(sim: _Served, path: str) -> dict[str, Any]:
    return next(entry for entry in reversed(sim.received) if entry["path"] == path)


# --- OpenAI chat completions ---------------------------------------------------------------


def test_chat_blocking(sim: _Served) -> None:
    completion = sim.openai().chat.completions.create(
        model="gpt-4o-mini",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is the capital of France?"},
        ],
    )
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == "gpt-4o-mini-2024-07-18"
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.content is not None
    assert choice.message.content.startswith("This is a simulated answer to: What is the capital")
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 10 + 2 + 6
    assert completion.usage.completion_tokens == len(choice.message.content.split())
    assert completion.usage.total_tokens == 18 + completion.usage.completion_tokens
    entry = _last(sim, "/v1/chat/completions")
    assert entry["method"] == "POST"
    assert entry["headers"]["authorization"] == "Bearer sk-test"
    assert entry["body"]["model"] == "gpt-4o-mini"


def test_chat_stream_with_usage(sim: _Served) -> None:
    stream = sim.openai().chat.completions.create(
        model="sim-model",
        messages=[{"role": "user", "content": "Tell me a story"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(chunk.model == "sim-model" for chunk in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    pieces = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) >= 5
    assert text.startswith("This is a simulated answer to: Tell me a story.")
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and set(finishes[:-1]) == {None}
    assert chunks[-1].choices == []
    usage = chunks[-1].usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (14, len(text.split()))
    assert all(c.usage is None for c in chunks[:-1])
    assert _last(sim, "/v1/chat/completions")["body"]["stream_options"] == {"include_usage": True}


def test_chat_stream_without_usage_has_no_usage_chunk(sim: _Served) -> None:
    with httpx.stream(
        "POST",
        f"http://127.0.0.1:{sim.port}/v1/chat/completions",
        headers={"authorization": "Bearer k"},
        json={"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True},
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert all("usage" not in chunk and chunk["choices"] for chunk in chunks)


def test_chat_tool_call_blocking_and_streamed(sim: _Served) -> None:
    client = sim.openai()
    messages: Any = [{"role": "user", "content": "What's the weather in Paris?"}]
    completion = client.chat.completions.create(
        model="gpt-4o", messages=messages, tools=[WEATHER_TOOL]
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls
    assert calls is not None and calls[0].id.startswith("call_")
    assert calls[0].function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(calls[0].function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]

    chunks = list(
        client.chat.completions.create(
            model="gpt-4o", messages=messages, tools=[WEATHER_TOOL], stream=True
        )
    )
    deltas = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    assert deltas[0].id and deltas[0].id.startswith("call_")
    assert deltas[0].function and deltas[0].function.name == "get_weather"
    assert len(deltas) >= 3
    arguments = "".join((d.function.arguments or "") for d in deltas if d.function)
    assert json.loads(arguments) == {"city": "Paris"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"

    # After the tool result comes back, the model answers in text.
    messages += [
        {"role": "assistant", "content": None, "tool_calls": [calls[0].model_dump()]},
        {"role": "tool", "tool_call_id": calls[0].id, "content": "sunny"},
    ]
    follow_up = client.chat.completions.create(
        model="gpt-4o", messages=messages, tools=[WEATHER_TOOL]
    )
    assert follow_up.choices[0].finish_reason == "stop"


def test_cached_and_reasoning_usage(sim: _Served) -> None:
    client = sim.openai()
    messages: Any = [{"role": "user", "content": "one two three four"}]
    cached = client.chat.completions.create(model="gpt-4o-cached", messages=messages).usage
    assert cached is not None and cached.prompt_tokens_details is not None
    assert cached.prompt_tokens == 14 and cached.prompt_tokens_details.cached_tokens == 7
    reasoning = client.chat.completions.create(model="o3-mini", messages=messages)
    usage = reasoning.usage
    assert usage is not None and usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 7
    text = reasoning.choices[0].message.content or ""
    assert usage.completion_tokens == len(text.split()) + 7


# --- OpenAI Responses API --------------------------------------------------------------------


def test_responses_blocking(sim: _Served) -> None:
    response = sim.openai().responses.create(
        model="gpt-4o-mini", input="Write a haiku about gateways", instructions="Be poetic"
    )
    assert response.object == "response" and response.status == "completed"
    assert response.model == "gpt-4o-mini-2024-07-18"
    assert response.output_text.startswith("This is a simulated answer to: Write a haiku")
    assert response.usage is not None
    assert response.usage.input_tokens == 10 + 5 + 2
    assert response.usage.output_tokens == len(response.output_text.split())
    assert response.usage.input_tokens_details.cached_tokens == 0


def test_responses_stream(sim: _Served) -> None:
    events = list(
        sim.openai().responses.create(
            model="o4-mini",
            input=[{"role": "user", "content": [{"type": "input_text", "text": "hello there"}]}],
            stream=True,
        )
    )
    types = [event.type for event in events]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) >= 5
    completed = events[-1]
    assert completed.type == "response.completed"
    assert completed.response.output_text == "".join(deltas)
    usage = completed.response.usage
    assert usage is not None
    assert usage.input_tokens == 12
    assert usage.output_tokens_details.reasoning_tokens == 7
    assert usage.output_tokens == len("".join(deltas).split()) + 7
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens


def test_responses_function_call(sim: _Served) -> None:
    client = sim.openai()
    tools: Any = [{"type": "function", "name": "lookup_weather", "parameters": {}}]
    response = client.responses.create(model="gpt-4o", input="weather in Paris?", tools=tools)
    item = response.output[0]
    assert item.type == "function_call"
    assert item.name == "lookup_weather" and item.call_id.startswith("call_")
    assert json.loads(item.arguments) == {"city": "Paris"}

    events = list(
        client.responses.create(model="gpt-4o", input="weather?", tools=tools, stream=True)
    )
    deltas = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    assert len(deltas) >= 3
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert done.arguments == "".join(deltas)
    assert events[-1].type == "response.completed"


# --- OpenAI embeddings and models ------------------------------------------------------------


def test_embeddings(sim: _Served) -> None:
    client = sim.openai()
    default = client.embeddings.create(model="text-embedding-3-small", input=["a b", "c"])
    assert _last(sim, "/v1/embeddings")["body"]["encoding_format"] == "base64"
    assert [d.index for d in default.data] == [0, 1]
    assert all(len(d.embedding) == 8 for d in default.data)
    assert default.usage.prompt_tokens == 13
    floats = client.embeddings.create(
        model="text-embedding-3-small", input=["a b", "c"], encoding_format="float"
    )
    assert [d.embedding for d in floats.data] == [d.embedding for d in default.data]
    assert floats.model == "text-embedding-3-small"


def test_models(sim: _Served) -> None:
    ids = [model.id for model in sim.openai().models.list()]
    assert "gpt-4o-mini" in ids and len(ids) >= 4


# --- Anthropic -------------------------------------------------------------------------------


def test_anthropic_blocking(sim: _Served) -> None:
    message = sim.anthropic().messages.create(
        model="claude-sonnet-4-5",
        max_tokens=100,
        system="You are terse.",
        messages=[{"role": "user", "content": "Name three colors"}],
    )
    assert message.type == "message" and message.role == "assistant"
    assert message.model == "claude-sonnet-4-5"
    assert message.id.startswith("msg_")
    assert message.stop_reason == "end_turn"
    block = message.content[0]
    assert block.type == "text"
    assert block.text.startswith("This is a simulated answer to: Name three colors")
    assert message.usage.input_tokens == 10 + 3 + 3
    assert message.usage.output_tokens == len(block.text.split())
    assert message.usage.cache_read_input_tokens == 0
    # anthropic>=2 sends the api key as a bearer token, not as x-api-key.
    headers = _last(sim, "/v1/messages")["headers"]
    assert headers["authorization"] == "Bearer sk-ant-test"
    assert "anthropic-version" in headers


def test_anthropic_stream_text_cached(sim: _Served) -> None:
    client = sim.anthropic()
    with client.messages.stream(
        model="claude-cached", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        texts = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(texts) >= 5
    block = final.content[0]
    assert block.type == "text" and block.text == "".join(texts)
    assert final.usage.input_tokens == 11
    assert final.usage.cache_read_input_tokens == 100
    assert final.usage.cache_creation_input_tokens == 20
    assert final.usage.output_tokens == len(block.text.split())
    assert final.stop_reason == "end_turn"


def test_anthropic_tool_use(sim: _Served) -> None:
    client = sim.anthropic()
    messages: Any = [{"role": "user", "content": "How is the weather today?"}]
    message = client.messages.create(
        model="claude-haiku-4-5", max_tokens=50, messages=messages, tools=[CLAUDE_TOOL]
    )
    assert message.stop_reason == "tool_use"
    block = message.content[0]
    assert block.type == "tool_use" and block.id.startswith("toolu_")
    assert block.name == "get_weather" and block.input == {"city": "Paris"}

    with client.messages.stream(
        model="claude-haiku-4-5", max_tokens=50, messages=messages, tools=[CLAUDE_TOOL]
    ) as stream:
        final = stream.get_final_message()
    streamed = final.content[0]
    assert streamed.type == "tool_use" and streamed.input == {"city": "Paris"}
    assert final.stop_reason == "tool_use"

    messages += [
        {"role": "assistant", "content": [block.model_dump()]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": block.id, "content": "sunny"}],
        },
    ]
    follow_up = client.messages.create(
        model="claude-haiku-4-5", max_tokens=50, messages=messages, tools=[CLAUDE_TOOL]
    )
    assert follow_up.stop_reason == "end_turn"


def test_anthropic_count_tokens(sim: _Served) -> None:
    count = sim.anthropic().messages.count_tokens(
        model="claude-sonnet-4-5", messages=[{"role": "user", "content": "one two three"}]
    )
    assert count.input_tokens == 13


# --- failures --------------------------------------------------------------------------------


def test_error_models(sim: _Served) -> None:
    client = sim.openai()
    messages: Any = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.InternalServerError) as server_error:
        client.chat.completions.create(model="gpt-error-500", messages=messages)
    assert server_error.value.status_code == 500
    with pytest.raises(openai.RateLimitError) as rate_limited:
        client.chat.completions.create(model="error-429", messages=messages)
    assert rate_limited.value.response.headers["retry-after"] == "1"
    assert isinstance(rate_limited.value.body, dict) and "message" in rate_limited.value.body

    claude = sim.anthropic()
    with pytest.raises(anthropic.RateLimitError) as anthropic_limited:
        claude.messages.create(model="claude-error-429", max_tokens=5, messages=messages)
    assert anthropic_limited.value.body == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "Rate limited."},
    }
    with pytest.raises(anthropic.OverloadedError):
        claude.messages.create(model="claude-error-529", max_tokens=5, messages=messages)
    with pytest.raises(anthropic.BadRequestError):
        claude.messages.create(model="x-error-400", max_tokens=5, messages=messages)
    with pytest.raises(anthropic.AuthenticationError):
        claude.messages.create(model="x-error-401", max_tokens=5, messages=messages)


def test_auth_and_validation(sim: _Served) -> None:
    base = f"http://127.0.0.1:{sim.port}"
    chat = {"model": "m", "messages": []}
    missing_key = httpx.post(f"{base}/v1/chat/completions", json=chat)
    assert missing_key.status_code == 401 and missing_key.json()["error"]["type"]
    claude_missing = httpx.post(f"{base}/v1/messages", json=chat)
    assert claude_missing.status_code == 401
    assert claude_missing.json()["error"]["type"] == "authentication_error"
    x_api_key = httpx.post(f"{base}/v1/messages", json=chat, headers={"x-api-key": "sk-ant"})
    assert x_api_key.status_code == 200 and x_api_key.json()["type"] == "message"
    assert "request-id" in x_api_key.headers
    malformed = httpx.post(f"{base}/v1/messages", content=b"{nope", headers={"x-api-key": "k"})
    assert malformed.status_code == 400 and malformed.json()["type"] == "error"
    assert sim.received[-1]["body"] is None
    no_model = httpx.post(
        f"{base}/v1/chat/completions", json={"messages": []}, headers={"authorization": "Bearer k"}
    )
    assert no_model.status_code == 400 and no_model.json()["error"]["param"] == "model"


def test_broken_stream_drops_connection(sim: _Served) -> None:
    pieces: list[str] = []
    with pytest.raises(openai.APIConnectionError):
        for chunk in sim.openai().chat.completions.create(
            model="gpt-broken", messages=[{"role": "user", "content": "hi"}], stream=True
        ):
            pieces.append(chunk.choices[0].delta.content or "")
    assert len([p for p in pieces if p]) == 3

    # anthropic does not wrap mid-stream transport errors: the raw httpx2 error surfaces.
    texts: list[str] = []
    with (
        pytest.raises(Exception, match="peer closed connection"),
        sim.anthropic().messages.stream(
            model="claude-broken", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
        ) as stream,
    ):
        texts.extend(stream.text_stream)
    assert len(texts) == 3


def test_timeout_model_and_slow_stream(sim: _Served) -> None:
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        sim.openai(timeout=0.3).chat.completions.create(
            model="gpt-timeout", messages=[{"role": "user", "content": "hi"}]
        )
    assert time.monotonic() - started < 2
    started = time.monotonic()
    sim.anthropic().messages.create(
        model="claude-slow", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
    )
    assert time.monotonic() - started >= 0.3
    stream = sim.openai().chat.completions.create(
        model="gpt-slow", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    next(stream)
    started = time.monotonic()
    next(stream)
    assert time.monotonic() - started >= 0.25
    stream.close()
