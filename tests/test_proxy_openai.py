"""End-to-end: the OpenAI family through the gateway with the official ``openai`` SDK (§P1, §P2,
§P5, §R): chat completions (content, tool calls, blocking and streamed), the Responses API,
embeddings, models, explicit provider routes, stream usage injection, cached and reasoning
tokens, and pricing (table, unknown models, configured overrides)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import openai
import pytest

GPT4O_MINI_IN = 0.15e-6  # USD per token (genai-prices)
GPT4O_MINI_OUT = 0.60e-6
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def client(gw: Any, base: str | None = None, **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=base or f"{gw.url}/v1", api_key=gw.admin_key, max_retries=0, **kw)


def direct(upstream: Any) -> openai.OpenAI:
    """The simulator itself, to compare what the gateway relayed with what it answers."""
    return openai.OpenAI(base_url=f"{upstream.url}/v1", api_key="sk-direct", max_retries=0)


def prompt(text: str = "tell me about gateways") -> str:
    """A prompt with a unique marker, to find the request the simulator received."""
    return f"{text} {uuid.uuid4().hex[:12]}"


def received(upstream: Any, marker: str) -> dict[str, Any]:
    for entry in reversed(upstream.received):
        if marker in json.dumps(entry["body"]):
            return entry  # type: ignore[no-any-return]
    raise AssertionError(f"the simulator never received {marker!r}")


def rid(raw: Any) -> str:
    return raw.headers["x-gatewatch-request-id"]  # type: ignore[no-any-return]


def assert_gatewatch_headers(raw: Any, rec: dict[str, Any], *, cost: bool) -> None:
    h = raw.headers
    assert h["x-gatewatch-request-id"] == rec["id"]
    assert h["x-gatewatch-provider"] == rec["provider"]
    assert h["x-gatewatch-model"] == rec["model"]
    assert int(h["x-gatewatch-attempts"]) == len(rec["attempts"]) >= 1
    if cost:
        assert float(h["x-gatewatch-cost-usd"]) == pytest.approx(rec["cost_usd"], rel=1e-6)
    else:
        assert "x-gatewatch-cost-usd" not in h


def assert_ok(rec: dict[str, Any], *, endpoint: str, model_requested: str, model: str,
              stream: bool, provider: str = "openai") -> None:  # fmt: skip
    assert rec["endpoint"] == endpoint
    assert rec["provider"] == provider
    assert rec["model_requested"] == model_requested
    assert rec["model"] == model
    assert rec["stream"] is stream
    assert rec["status"] == "ok"
    assert rec["status_code"] == 200
    assert rec["error_type"] is None
    assert rec["attempts"][-1]["reason"] == "ok"
    assert rec["attempts"][-1]["status_code"] == 200
    if stream:
        assert rec["ttft_ms"] is not None and 0 <= rec["ttft_ms"] <= rec["duration_ms"]


# ---- chat completions -------------------------------------------------------------------------


def test_chat_blocking_relays_answer_and_records_usage_and_cost(gateway, upstream):
    text = prompt("what is an llm gateway")
    messages = [{"role": "user", "content": text}]
    raw = client(gateway).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=messages
    )
    got = raw.parse()
    want = direct(upstream).chat.completions.create(model="gpt-4o-mini", messages=messages)
    assert got.choices[0].message.content == want.choices[0].message.content
    assert got.choices[0].message.content.startswith("This is a simulated answer to: what is")
    assert got.usage.model_dump() == want.usage.model_dump()
    assert got.model == "gpt-4o-mini-2024-07-18"

    rec = gateway.record(rid(raw))
    assert_ok(rec, endpoint="/v1/chat/completions", model_requested="gpt-4o-mini",
              model="gpt-4o-mini-2024-07-18", stream=False)  # fmt: skip
    assert rec["input_tokens"] == got.usage.prompt_tokens
    assert rec["output_tokens"] == got.usage.completion_tokens
    assert rec["cache_read_tokens"] == 0
    assert rec["reasoning_tokens"] == 0
    expected = (
        got.usage.prompt_tokens * GPT4O_MINI_IN + got.usage.completion_tokens * GPT4O_MINI_OUT
    )
    assert rec["cost_usd"] == pytest.approx(expected, rel=1e-6)
    assert rec["tool_calls"] == []
    assert_gatewatch_headers(raw, rec, cost=True)


def test_chat_stream_relays_every_chunk_and_records_usage(gateway, upstream):
    text = prompt("stream me an answer")
    messages = [{"role": "user", "content": text}]
    raw = client(gateway).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=messages, stream=True
    )
    assert raw.headers["content-type"].startswith("text/event-stream")
    chunks = list(raw.parse())
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    want = direct(upstream).chat.completions.create(model="gpt-4o-mini", messages=messages)
    assert content == want.choices[0].message.content
    assert len(chunks) > 3  # relayed as chunks, not collapsed into one
    assert {c.model for c in chunks} == {"gpt-4o-mini-2024-07-18"}

    rec = gateway.record(rid(raw))
    assert_ok(rec, endpoint="/v1/chat/completions", model_requested="gpt-4o-mini",
              model="gpt-4o-mini-2024-07-18", stream=True)  # fmt: skip
    assert rec["input_tokens"] == want.usage.prompt_tokens
    assert rec["output_tokens"] == want.usage.completion_tokens
    assert rec["cost_usd"] == pytest.approx(
        want.usage.prompt_tokens * GPT4O_MINI_IN + want.usage.completion_tokens * GPT4O_MINI_OUT,
        rel=1e-6,
    )
    assert_gatewatch_headers(raw, rec, cost=False)


def test_chat_tool_call_blocking_is_recorded(gateway):
    raw = client(gateway).chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER_TOOL],
    )
    got = raw.parse()
    call = got.choices[0].message.tool_calls[0]
    assert got.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}

    rec = gateway.record(rid(raw))
    assert rec["status"] == "ok"
    assert rec["tool_calls"] == [
        {"name": "get_weather", "call_id": call.id, "arguments": call.function.arguments}
    ]
    assert rec["output_tokens"] == got.usage.completion_tokens


def test_chat_tool_call_streamed_is_reassembled_in_the_record(gateway):
    raw = client(gateway).chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "How is the weather today?"}],
        tools=[WEATHER_TOOL],
        stream=True,
    )
    call_id, name, args = None, "", ""
    for chunk in raw.parse():
        for tc in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            call_id = tc.id or call_id
            name += (tc.function.name or "") if tc.function else ""
            args += (tc.function.arguments or "") if tc.function else ""
    assert name == "get_weather"
    assert json.loads(args) == {"city": "Paris"}

    rec = gateway.record(rid(raw))
    assert rec["stream"] is True and rec["status"] == "ok"
    assert rec["tool_calls"] == [{"name": "get_weather", "call_id": call_id, "arguments": args}]
    body = rec["response_body"]
    assert body["choices"][0]["message"]["tool_calls"][0]["function"] == {
        "name": "get_weather", "arguments": args,
    }  # fmt: skip


# ---- stream usage injection (§R) ---------------------------------------------------------------


def test_stream_without_stream_options_gets_no_usage_chunk_but_record_has_tokens(gateway, upstream):
    text = prompt("count my tokens please")
    messages = [{"role": "user", "content": text}]
    raw = client(gateway).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=messages, stream=True
    )
    chunks = list(raw.parse())
    # the gateway asked the provider for usage …
    sent = received(upstream, text)["body"]
    assert sent["stream_options"]["include_usage"] is True
    # … but the client, who did not ask, sees a plain stream: no usage chunk, no usage field
    assert chunks
    for chunk in chunks:
        assert chunk.choices, "a usage-only chunk reached a client that did not ask for it"
        assert chunk.usage is None
    want = direct(upstream).chat.completions.create(model="gpt-4o-mini", messages=messages)
    rec = gateway.record(rid(raw))
    assert rec["input_tokens"] == want.usage.prompt_tokens > 0
    assert rec["output_tokens"] == want.usage.completion_tokens > 0
    assert rec["cost_usd"] > 0


def test_stream_with_include_usage_keeps_the_usage_chunk(gateway, upstream):
    text = prompt("usage for me too")
    raw = client(gateway).chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": text}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(raw.parse())
    assert received(upstream, text)["body"]["stream_options"] == {"include_usage": True}
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert [c for c in chunks if c.usage is not None] == [last]
    rec = gateway.record(rid(raw))
    assert rec["input_tokens"] == last.usage.prompt_tokens
    assert rec["output_tokens"] == last.usage.completion_tokens


def test_stream_with_include_usage_false_gets_no_usage_chunk(gateway, upstream):
    text = prompt("explicitly no usage")
    raw = client(gateway).chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": text}],
        stream=True,
        stream_options={"include_usage": False},
    )
    chunks = list(raw.parse())
    assert received(upstream, text)["body"]["stream_options"]["include_usage"] is True
    assert all(c.choices and c.usage is None for c in chunks)
    assert gateway.record(rid(raw))["output_tokens"] > 0


# ---- Responses API ----------------------------------------------------------------------------


def test_responses_blocking(gateway, upstream):
    text = prompt("summarise the responses api")
    raw = client(gateway).responses.with_raw_response.create(model="gpt-4o-mini", input=text)
    got = raw.parse()
    want = direct(upstream).responses.create(model="gpt-4o-mini", input=text)
    assert got.output_text == want.output_text
    assert got.output_text.startswith("This is a simulated answer to: summarise")
    assert got.usage.model_dump() == want.usage.model_dump()

    rec = gateway.record(rid(raw))
    assert_ok(rec, endpoint="/v1/responses", model_requested="gpt-4o-mini",
              model="gpt-4o-mini-2024-07-18", stream=False)  # fmt: skip
    assert rec["input_tokens"] == got.usage.input_tokens
    assert rec["output_tokens"] == got.usage.output_tokens
    assert rec["cost_usd"] == pytest.approx(
        got.usage.input_tokens * GPT4O_MINI_IN + got.usage.output_tokens * GPT4O_MINI_OUT,
        rel=1e-6,
    )
    assert rec["last_user_prompt"] == text
    assert_gatewatch_headers(raw, rec, cost=True)


def test_responses_stream_usage_comes_from_response_completed(gateway, upstream):
    text = prompt("stream the responses api")
    raw = client(gateway).responses.with_raw_response.create(
        model="gpt-4o-mini", input=text, stream=True
    )
    events = list(raw.parse())
    completed = [e for e in events if e.type == "response.completed"]
    assert len(completed) == 1
    final = completed[0].response
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    want = direct(upstream).responses.create(model="gpt-4o-mini", input=text)
    assert deltas == final.output_text == want.output_text

    rec = gateway.record(rid(raw))
    assert_ok(rec, endpoint="/v1/responses", model_requested="gpt-4o-mini",
              model="gpt-4o-mini-2024-07-18", stream=True)  # fmt: skip
    assert rec["input_tokens"] == final.usage.input_tokens
    assert rec["output_tokens"] == final.usage.output_tokens
    assert rec["cost_usd"] > 0
    assert rec["response_body"]["output"][0]["content"][0]["text"] == want.output_text
    assert_gatewatch_headers(raw, rec, cost=False)


def test_responses_function_call_is_recorded(gateway):
    tool = {
        "type": "function",
        "name": "get_weather",
        "parameters": WEATHER_TOOL["function"]["parameters"],
    }
    raw = client(gateway).responses.with_raw_response.create(
        model="gpt-4o-mini", input="What's the weather like?", tools=[tool]
    )
    call = next(item for item in raw.parse().output if item.type == "function_call")
    rec = gateway.record(rid(raw))
    assert rec["tool_calls"] == [
        {"name": "get_weather", "call_id": call.call_id, "arguments": call.arguments}
    ]


# ---- embeddings and models --------------------------------------------------------------------


def test_embeddings(gateway, upstream):
    raw = client(gateway).embeddings.with_raw_response.create(
        model="text-embedding-3-small", input=["first text", "second text here"]
    )
    got = raw.parse()
    want = direct(upstream).embeddings.create(
        model="text-embedding-3-small", input=["first text", "second text here"]
    )
    assert [d.embedding for d in got.data] == [d.embedding for d in want.data]
    assert got.usage.prompt_tokens == want.usage.prompt_tokens

    rec = gateway.record(rid(raw))
    assert_ok(rec, endpoint="/v1/embeddings", model_requested="text-embedding-3-small",
              model="text-embedding-3-small", stream=False)  # fmt: skip
    assert rec["input_tokens"] == got.usage.prompt_tokens
    assert rec["output_tokens"] in (0, None)
    assert rec["cost_usd"] == pytest.approx(got.usage.prompt_tokens * 0.02e-6, rel=1e-6)
    assert_gatewatch_headers(raw, rec, cost=True)


def test_models_list(gateway, upstream):
    raw = client(gateway).models.with_raw_response.list()
    ids = [m.id for m in raw.parse()]
    assert ids == [m.id for m in direct(upstream).models.list()]
    assert "gpt-4o-mini" in ids
    rec = gateway.record(rid(raw))
    assert rec["endpoint"] == "/v1/models"
    assert rec["provider"] == "openai"
    assert rec["status"] == "ok" and rec["status_code"] == 200
    assert raw.headers["x-gatewatch-provider"] == "openai"
    assert raw.headers["x-gatewatch-attempts"] == "1"


# ---- explicit provider routes (§P1) -----------------------------------------------------------


def test_explicit_provider_route(start_gateway, upstream):
    from conftest import UPSTREAM_OPENAI_KEY

    # a second OpenAI-compatible provider: /openai-eu/v1/... must go there, unchanged model
    gw = start_gateway(providers=[
        {"name": "openai", "type": "openai", "base_url": "http://127.0.0.1:9/v1",
         "api_key": UPSTREAM_OPENAI_KEY, "timeout": 2},
        {"name": "openai-eu", "type": "openai", "base_url": f"{upstream.url}/v1",
         "api_key": UPSTREAM_OPENAI_KEY, "timeout": 2},
    ])  # fmt: skip
    c = client(gw, base=f"{gw.url}/openai-eu/v1")
    raw = c.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "routed explicitly"}]
    )
    assert raw.parse().choices[0].message.content.startswith("This is a simulated answer to")
    assert raw.headers["x-gatewatch-provider"] == "openai-eu"
    rec = gw.record(rid(raw))
    assert rec["provider"] == "openai-eu"
    assert rec["endpoint"] == "/v1/chat/completions"
    assert rec["model"] == "gpt-4o-mini-2024-07-18"
    assert rec["status"] == "ok"
    assert rec["cost_usd"] > 0

    raw = c.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "streamed"}], stream=True
    )
    assert "".join(ch.choices[0].delta.content or "" for ch in raw.parse() if ch.choices)
    assert gw.record(rid(raw))["provider"] == "openai-eu"

    models = c.models.with_raw_response.list()
    assert "gpt-4o-mini" in [m.id for m in models.parse()]
    assert models.headers["x-gatewatch-provider"] == "openai-eu"


def test_default_provider_path_prefix_works_too(gateway):
    raw = client(gateway, base=f"{gateway.url}/openai/v1").embeddings.with_raw_response.create(
        model="text-embedding-3-small", input="hello"
    )
    assert len(raw.parse().data) == 1
    assert gateway.record(rid(raw))["provider"] == "openai"


# ---- cached and reasoning tokens (§R) ---------------------------------------------------------

SIM_RATES = {"input": 0.15, "output": 0.6, "cache_read": 0.075}


def test_cached_tokens_are_counted_and_priced_at_the_cache_read_rate(start_gateway, upstream):
    gw = start_gateway(prices={"openai/sim-cached": SIM_RATES, "openai/sim-plain": SIM_RATES})
    c = client(gw)
    messages = [{"role": "user", "content": "the same prompt for both of these calls"}]
    cached = c.chat.completions.with_raw_response.create(model="sim-cached", messages=messages)
    plain = c.chat.completions.with_raw_response.create(model="sim-plain", messages=messages)
    cu, pu = cached.parse().usage, plain.parse().usage
    assert cu.prompt_tokens_details.cached_tokens == cu.prompt_tokens // 2 > 0
    assert (cu.prompt_tokens, cu.completion_tokens) == (pu.prompt_tokens, pu.completion_tokens)

    rc, rp = gw.record(rid(cached)), gw.record(rid(plain))
    assert rc["input_tokens"] == cu.prompt_tokens  # cached tokens are inside prompt_tokens
    assert rc["cache_read_tokens"] == cu.prompt_tokens_details.cached_tokens
    assert rc["cache_write_tokens"] in (0, None)
    assert rp["cache_read_tokens"] == 0
    read = cu.prompt_tokens_details.cached_tokens
    expected = (cu.prompt_tokens - read) * 0.15e-6 + read * 0.075e-6 + cu.completion_tokens * 0.6e-6
    assert rc["cost_usd"] == pytest.approx(expected, rel=1e-6)
    assert rc["cost_usd"] < rp["cost_usd"]
    assert rp["cost_usd"] - rc["cost_usd"] == pytest.approx(read * 0.075e-6, rel=1e-6)


def test_cached_tokens_in_a_stream(start_gateway):
    gw = start_gateway(prices={"openai/sim-cached": SIM_RATES})
    raw = client(gw).chat.completions.with_raw_response.create(
        model="sim-cached", messages=[{"role": "user", "content": "a cached stream"}],
        stream=True, stream_options={"include_usage": True},
    )  # fmt: skip
    usage = [ch.usage for ch in raw.parse() if ch.usage][-1]
    rec = gw.record(rid(raw))
    assert rec["input_tokens"] == usage.prompt_tokens
    assert rec["cache_read_tokens"] == usage.prompt_tokens_details.cached_tokens > 0


def test_reasoning_tokens_are_counted(gateway):
    raw = client(gateway).chat.completions.with_raw_response.create(
        model="o3-mini", messages=[{"role": "user", "content": "think hard"}]
    )
    usage = raw.parse().usage
    assert usage.completion_tokens_details.reasoning_tokens == 7
    rec = gateway.record(rid(raw))
    assert rec["model_requested"] == "o3-mini"
    assert rec["reasoning_tokens"] == 7
    assert rec["output_tokens"] == usage.completion_tokens  # reasoning is inside output


def test_reasoning_tokens_priced_at_their_own_rate(start_gateway):
    # a model starting with o<digit> reports reasoning tokens; "sim-" keeps the name undated
    gw = start_gateway(prices={"openai/o3-sim-reasoner": {"input": 1.0, "output": 4.0,
                                                          "reasoning": 10.0}})  # fmt: skip
    raw = client(gw).responses.with_raw_response.create(model="o3-sim-reasoner", input="think")
    usage = raw.parse().usage
    reasoning = usage.output_tokens_details.reasoning_tokens
    assert reasoning == 7
    rec = gw.record(rid(raw))
    assert rec["reasoning_tokens"] == 7
    assert rec["output_tokens"] == usage.output_tokens
    expected = (
        usage.input_tokens * 1e-6 + (usage.output_tokens - reasoning) * 4e-6 + reasoning * 10e-6
    )
    assert rec["cost_usd"] == pytest.approx(expected, rel=1e-6)


# ---- prices: unknown models and overrides (§R) ------------------------------------------------


def test_unknown_model_has_null_cost_and_no_cost_header(gateway):
    raw = client(gateway).chat.completions.with_raw_response.create(
        model="sim-unknown-model", messages=[{"role": "user", "content": "who prices me"}]
    )
    assert raw.parse().usage.prompt_tokens > 0
    assert "x-gatewatch-cost-usd" not in raw.headers
    rec = gateway.record(rid(raw))
    assert rec["status"] == "ok"
    assert rec["model"] == "sim-unknown-model"
    assert rec["input_tokens"] > 0
    assert rec["cost_usd"] is None


def test_price_override_gives_the_exact_cost(start_gateway):
    gw = start_gateway(prices={"openai/sim-custom": {"input": 1.0, "output": 2.0}})
    raw = client(gw).chat.completions.with_raw_response.create(
        model="sim-custom", messages=[{"role": "user", "content": "price me exactly"}]
    )
    usage = raw.parse().usage
    expected = usage.prompt_tokens * 1e-6 + usage.completion_tokens * 2e-6
    rec = gw.record(rid(raw))
    assert rec["cost_usd"] == pytest.approx(expected, rel=1e-9)
    assert float(raw.headers["x-gatewatch-cost-usd"]) == pytest.approx(expected, rel=1e-9)


def test_price_override_applies_to_the_model_name_the_client_sends(start_gateway):
    # Providers answer with a dated snapshot name (gpt-4o-mini → gpt-4o-mini-2024-07-18); an
    # override configured for the name users send must still be the price charged.
    gw = start_gateway(prices={"openai/gpt-4o-mini": {"input": 1.0, "output": 2.0}})
    raw = client(gw).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "my negotiated price"}]
    )
    usage = raw.parse().usage
    rec = gw.record(rid(raw))
    assert rec["model"] == "gpt-4o-mini-2024-07-18"
    assert rec["cost_usd"] == pytest.approx(
        usage.prompt_tokens * 1e-6 + usage.completion_tokens * 2e-6, rel=1e-9
    )
