"""End-to-end: the Anthropic family through the gateway with the official ``anthropic`` SDK (§P1,
§P3, §P5, §R): messages (blocking, streamed, tool use), count_tokens, cache tokens and their
prices, explicit provider routes, and both ways of presenting the gateway key."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import pytest

SONNET_IN, SONNET_OUT = 3e-6, 15e-6  # USD per token (genai-prices, claude-sonnet-4-5)
SONNET_CACHE_READ, SONNET_CACHE_WRITE = 0.3e-6, 3.75e-6
MODEL = "claude-sonnet-4-5"
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather of a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


def client(gw: Any, base: str | None = None, **kw: Any) -> anthropic.Anthropic:
    kw.setdefault("api_key", gw.admin_key)
    return anthropic.Anthropic(base_url=base or gw.url, max_retries=0, **kw)


def direct(upstream: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=upstream.url, api_key="sk-ant-direct", max_retries=0)


def rid(headers: Any) -> str:
    return headers["x-gatewatch-request-id"]  # type: ignore[no-any-return]


def assert_ok(rec: dict[str, Any], *, endpoint: str = "/v1/messages", model: str = MODEL,
              stream: bool = False, provider: str = "anthropic") -> None:  # fmt: skip
    assert rec["endpoint"] == endpoint
    assert rec["provider"] == provider
    assert rec["model_requested"] == model
    assert rec["model"] == model
    assert rec["stream"] is stream
    assert rec["status"] == "ok"
    assert rec["status_code"] == 200
    assert rec["error_type"] is None
    assert [a["reason"] for a in rec["attempts"]] == ["ok"]
    if stream:
        assert rec["ttft_ms"] is not None and 0 <= rec["ttft_ms"] <= rec["duration_ms"]


def assert_headers(headers: Any, rec: dict[str, Any], *, cost: bool) -> None:
    assert headers["x-gatewatch-request-id"] == rec["id"]
    assert headers["x-gatewatch-provider"] == rec["provider"]
    assert headers["x-gatewatch-model"] == rec["model"]
    assert headers["x-gatewatch-attempts"] == str(len(rec["attempts"]))
    if cost:
        assert float(headers["x-gatewatch-cost-usd"]) == pytest.approx(rec["cost_usd"], rel=1e-6)
    else:
        assert "x-gatewatch-cost-usd" not in headers


def sonnet_cost(usage: Any) -> float:
    return (
        usage.input_tokens * SONNET_IN
        + (usage.cache_read_input_tokens or 0) * SONNET_CACHE_READ
        + (usage.cache_creation_input_tokens or 0) * SONNET_CACHE_WRITE
        + usage.output_tokens * SONNET_OUT
    )


def test_messages_blocking(gateway, upstream):
    messages = [{"role": "user", "content": "what does an anthropic gateway do"}]
    raw = client(gateway).messages.with_raw_response.create(
        model=MODEL, max_tokens=256, messages=messages, system="Be brief."
    )
    got = raw.parse()
    want = direct(upstream).messages.create(
        model=MODEL, max_tokens=256, messages=messages, system="Be brief."
    )
    assert got.content[0].text == want.content[0].text
    assert got.content[0].text.startswith("This is a simulated answer to: what does")
    assert got.usage.model_dump() == want.usage.model_dump()

    rec = gateway.record(rid(raw.headers))
    assert_ok(rec)
    assert rec["input_tokens"] == got.usage.input_tokens
    assert rec["output_tokens"] == got.usage.output_tokens
    assert rec["cache_read_tokens"] == 0 and rec["cache_write_tokens"] == 0
    assert rec["cost_usd"] == pytest.approx(sonnet_cost(got.usage), rel=1e-6)
    assert rec["last_user_prompt"] == "what does an anthropic gateway do"
    assert_headers(raw.headers, rec, cost=True)


def test_messages_stream_with_the_sdk_helper(gateway, upstream):
    messages = [{"role": "user", "content": "stream a claude answer"}]
    with client(gateway).messages.stream(model=MODEL, max_tokens=256, messages=messages) as s:
        texts = list(s.text_stream)
        final = s.get_final_message()
        headers = s.response.headers
    want = direct(upstream).messages.create(model=MODEL, max_tokens=256, messages=messages)
    assert len(texts) > 3
    assert "".join(texts) == final.content[0].text == want.content[0].text
    assert final.usage.input_tokens == want.usage.input_tokens
    assert final.usage.output_tokens == want.usage.output_tokens
    assert headers["content-type"].startswith("text/event-stream")

    rec = gateway.record(rid(headers))
    assert_ok(rec, stream=True)
    assert rec["input_tokens"] == final.usage.input_tokens
    assert rec["output_tokens"] == final.usage.output_tokens
    assert rec["cost_usd"] == pytest.approx(sonnet_cost(final.usage), rel=1e-6)
    # a streamed response is stored as the reassembled message
    body = rec["response_body"]
    assert body["content"][0]["text"] == final.content[0].text
    assert body["stop_reason"] == "end_turn"
    assert_headers(headers, rec, cost=False)


def test_tool_use_blocking(gateway):
    raw = client(gateway).messages.with_raw_response.create(
        model=MODEL, max_tokens=256, tools=[WEATHER_TOOL],
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
    )  # fmt: skip
    got = raw.parse()
    block = got.content[0]
    assert got.stop_reason == "tool_use"
    assert (block.type, block.name, block.input) == ("tool_use", "get_weather", {"city": "Paris"})
    rec = gateway.record(rid(raw.headers))
    assert len(rec["tool_calls"]) == 1
    call = rec["tool_calls"][0]
    assert call["name"] == "get_weather"
    assert call["call_id"] == block.id
    assert json.loads(call["arguments"]) == {"city": "Paris"}


def test_tool_use_streamed(gateway):
    with client(gateway).messages.stream(
        model=MODEL, max_tokens=256, tools=[WEATHER_TOOL],
        messages=[{"role": "user", "content": "weather check please"}],
    ) as s:  # fmt: skip
        final = s.get_final_message()
        headers = s.response.headers
    block = final.content[0]
    assert (block.type, block.input) == ("tool_use", {"city": "Paris"})
    rec = gateway.record(rid(headers))
    assert rec["stream"] is True and rec["status"] == "ok"
    assert [(c["name"], c["call_id"], json.loads(c["arguments"])) for c in rec["tool_calls"]] == [
        ("get_weather", block.id, {"city": "Paris"})
    ]
    assert rec["output_tokens"] == final.usage.output_tokens
    assert rec["response_body"]["content"][0]["input"] == {"city": "Paris"}


def test_count_tokens(gateway, upstream):
    messages = [{"role": "user", "content": "how many tokens is this"}]
    raw = client(gateway).messages.with_raw_response.count_tokens(
        model=MODEL, messages=messages, system="You count."
    )
    got = raw.parse()
    want = direct(upstream).messages.count_tokens(
        model=MODEL, messages=messages, system="You count."
    )
    assert got.input_tokens == want.input_tokens > 0
    rec = gateway.record(rid(raw.headers))
    assert_ok(rec, endpoint="/v1/messages/count_tokens")
    # counting tokens is free at the provider: never a charge
    assert not rec["cost_usd"]
    assert raw.headers["x-gatewatch-provider"] == "anthropic"


def test_cache_read_and_write_tokens_are_counted_and_priced(gateway):
    model = "claude-sonnet-4-5-cached"  # the simulator: cache read 100, creation 20
    raw = client(gateway).messages.with_raw_response.create(
        model=model, max_tokens=256, messages=[{"role": "user", "content": "a cached prompt"}]
    )
    usage = raw.parse().usage
    assert (usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (100, 20)
    rec = gateway.record(rid(raw.headers))
    assert rec["cache_read_tokens"] == 100
    assert rec["cache_write_tokens"] == 20
    # the gateway's input_tokens is all input the model processed
    assert rec["input_tokens"] == usage.input_tokens + 100 + 20
    assert rec["output_tokens"] == usage.output_tokens
    assert rec["cost_usd"] == pytest.approx(sonnet_cost(usage), rel=1e-6)
    # cheaper than the same input billed at the plain input rate
    assert (
        rec["cost_usd"] < (usage.input_tokens + 120) * SONNET_IN + usage.output_tokens * SONNET_OUT
    )


def test_cache_tokens_in_a_stream(gateway):
    with client(gateway).messages.stream(
        model="claude-sonnet-4-5-cached", max_tokens=256,
        messages=[{"role": "user", "content": "a cached stream"}],
    ) as s:  # fmt: skip
        final = s.get_final_message()
        headers = s.response.headers
    rec = gateway.record(rid(headers))
    assert rec["cache_read_tokens"] == final.usage.cache_read_input_tokens == 100
    assert rec["cache_write_tokens"] == final.usage.cache_creation_input_tokens == 20
    assert rec["input_tokens"] == final.usage.input_tokens + 120
    assert rec["output_tokens"] == final.usage.output_tokens
    assert rec["cost_usd"] == pytest.approx(sonnet_cost(final.usage), rel=1e-6)


def test_explicit_provider_route(gateway):
    c = client(gateway, base=f"{gateway.url}/anthropic")
    raw = c.messages.with_raw_response.create(
        model="claude-haiku-4-5", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.parse().content[0].text.startswith("This is a simulated answer to: hi")
    rec = gateway.record(rid(raw.headers))
    assert_ok(rec, model="claude-haiku-4-5")
    assert rec["cost_usd"] > 0
    counted = c.messages.with_raw_response.count_tokens(
        model="claude-haiku-4-5", messages=[{"role": "user", "content": "hi"}]
    )
    assert counted.parse().input_tokens > 0
    assert gateway.record(rid(counted.headers))["provider"] == "anthropic"


@pytest.mark.parametrize("how", ["x-api-key", "bearer"])
def test_gateway_key_as_x_api_key_or_bearer(gateway, how):
    # current SDKs send the key as Bearer; older ones (and many tools) as x-api-key
    key = gateway.create_key(user="carol", name=f"carol-{how}")
    if how == "x-api-key":
        c = client(gateway, api_key=None, default_headers={"x-api-key": key["key"]})
    else:
        c = client(gateway, api_key=None, auth_token=key["key"])
    raw = c.messages.with_raw_response.create(
        model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "who am i"}]
    )
    sent = raw.http_request.headers
    if how == "x-api-key":
        assert sent["x-api-key"] == key["key"] and "authorization" not in sent
    else:
        assert sent["authorization"] == f"Bearer {key['key']}" and "x-api-key" not in sent
    assert raw.parse().content[0].text
    rec = gateway.record(rid(raw.headers))
    assert rec["status"] == "ok"
    assert rec["api_key_id"] == key["id"]
    assert rec["user"] == "carol"


def test_metadata_user_id_is_the_end_user(gateway):
    raw = client(gateway).messages.with_raw_response.create(
        model=MODEL, max_tokens=64, metadata={"user_id": "customer-42"},
        messages=[{"role": "user", "content": "for a customer"}],
    )  # fmt: skip
    assert gateway.record(rid(raw.headers))["end_user"] == "customer-42"
