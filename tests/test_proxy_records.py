"""End-to-end: what the gateway records and tells the client about each request (§P4, §P5, §R,
§T2): attribution, gatewatch response headers on every kind of response, client-closed and
reassembled streams, secrets kept out of responses and storage, and one record per request under
concurrency."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from conftest import UPSTREAM_ANTHROPIC_KEY, UPSTREAM_OPENAI_KEY, RunningGateway

MSG = [{"role": "user", "content": "hello there gateway"}]
FULL_ANSWER = (
    "This is a simulated answer to: hello there gateway. The gatewatch simulator wrote this "
    "reply deterministically, so that every stream arrives in several small pieces."
)


def oai(gw: RunningGateway, key: str | None = None, **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key or gw.admin_key, max_retries=0, **kw)


def ant(gw: RunningGateway, key: str | None = None, **kw: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key=key or gw.admin_key, max_retries=0, **kw)


def rid(headers: Any) -> str:
    return headers["x-gatewatch-request-id"]  # type: ignore[no-any-return]


def wait_for_record(gw: RunningGateway, request_id: str, timeout: float = 10) -> dict[str, Any]:
    """The record of a request whose handler may still be finishing (e.g. after a disconnect)."""
    deadline = time.monotonic() + timeout
    with gw.api() as api:
        while True:
            gw.wait_records()
            r = api.get(f"/api/v1/requests/{request_id}")
            if r.status_code == 200:
                return r.json()  # type: ignore[no-any-return]
            assert r.status_code == 404, r.text
            assert time.monotonic() < deadline, f"record {request_id} never appeared"
            time.sleep(0.05)


def count(gw: RunningGateway, **params: Any) -> int:
    with gw.api() as api:
        r = api.get("/api/v1/requests", params={"limit": 1, **params})
        assert r.status_code == 200, r.text
        return r.json()["count"]  # type: ignore[no-any-return]


# ---- attribution (§P4) ------------------------------------------------------------------------


def test_attribution_headers_and_stored_bodies(gateway):
    raw = oai(gateway).chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "first answer"},
            {"role": "user", "content": "the last question asked"},
        ],
        extra_headers={
            "x-gatewatch-user": "alice@example.com",
            "x-gatewatch-session": "sess-42",
            "x-gatewatch-workflow": "triage",
            "x-gatewatch-tags": "alpha, beta,gamma",
            "x-gatewatch-meta-team": "search",
            "x-gatewatch-meta-ticket": "T-9",
            "x-request-id": "corr-123",
        },
    )
    rec = gateway.record(rid(raw.headers))
    assert rec["end_user"] == "alice@example.com"
    assert rec["session"] == "sess-42"
    assert rec["workflow"] == "triage"
    assert rec["tags"] == ["alpha", "beta", "gamma"]
    assert rec["meta"] == {"team": "search", "ticket": "T-9"}
    assert rec["correlation_id"] == "corr-123"
    assert rec["source_ip"] == "127.0.0.1"
    assert rec["client"] == "openai-python"
    assert rec["user_agent"].startswith("OpenAI/Python")
    assert (rec["user"], rec["api_key_id"]) == ("admin", "key_bootstrap_admin")
    assert rec["last_user_prompt"] == "the last question asked"
    assert rec["request_body"] == json.loads(raw.http_request.content)
    assert rec["response_body"] == raw.http_response.json()

    # every attribution is a filter of the request list (§A1)
    for params in ({"tag": "beta"}, {"meta.team": "search"}, {"session": "sess-42"},
                   {"workflow": "triage"}, {"end_user": "alice@example.com"},
                   {"client": "openai-python"}):  # fmt: skip
        assert [r["id"] for r in gateway.records(**params)] == [rec["id"]], params
    assert gateway.records(**{"meta.team": "other"}) == []


def test_openai_body_user_is_the_end_user(gateway):
    raw = oai(gateway).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MSG, user="end-user-7"
    )
    assert gateway.record(rid(raw.headers))["end_user"] == "end-user-7"
    raw = oai(gateway).responses.with_raw_response.create(
        model="gpt-4o-mini", input="hi", user="end-user-8"
    )
    assert gateway.record(rid(raw.headers))["end_user"] == "end-user-8"


def test_anthropic_attribution(gateway):
    raw = ant(gateway).messages.with_raw_response.create(
        model="claude-sonnet-4-5", max_tokens=64, messages=MSG,
        metadata={"user_id": "customer-1"},
        extra_headers={"x-gatewatch-tags": "one", "x-gatewatch-meta-env": "prod",
                       "x-request-id": "corr-ant"},
    )  # fmt: skip
    rec = gateway.record(rid(raw.headers))
    assert rec["end_user"] == "customer-1"
    assert rec["tags"] == ["one"]
    assert rec["meta"] == {"env": "prod"}
    assert rec["correlation_id"] == "corr-ant"
    assert rec["client"] == "anthropic-python"
    assert rec["last_user_prompt"] == "hello there gateway"


@pytest.mark.parametrize(
    ("family", "user_agent", "client"),
    [
        ("anthropic", "claude-cli/1.0.0 (external, cli)", "claude-code"),
        ("openai", "codex_cli_rs/0.1", "codex"),
    ],
)
def test_coding_clients_are_detected_from_the_user_agent(gateway, family, user_agent, client):
    headers = {"User-Agent": user_agent}
    if family == "anthropic":
        raw: Any = ant(gateway, default_headers=headers).messages.with_raw_response.create(
            model="claude-sonnet-4-5", max_tokens=64, messages=MSG
        )
    else:
        raw = oai(gateway, default_headers=headers).responses.with_raw_response.create(
            model="gpt-4o-mini", input="hi"
        )
    assert raw.http_request.headers["user-agent"] == user_agent
    rec = gateway.record(rid(raw.headers))
    assert rec["client"] == client
    assert rec["user_agent"] == user_agent


def test_streamed_chat_is_stored_as_the_reassembled_message(gateway):
    raw = oai(gateway).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MSG, stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    assert text == FULL_ANSWER
    rec = gateway.record(rid(raw.headers))
    body = rec["response_body"]
    assert body["object"] == "chat.completion"
    assert body["model"] == "gpt-4o-mini-2024-07-18"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": FULL_ANSWER}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["prompt_tokens"] == rec["input_tokens"]
    assert body["usage"]["completion_tokens"] == rec["output_tokens"]
    assert rec["request_body"]["stream"] is True
    # what the client sent, not what the gateway added for its own accounting
    assert "stream_options" not in rec["request_body"]


# ---- gatewatch headers on every response (§P5) ------------------------------------------------


def _calls(gw: RunningGateway) -> list[tuple[str, Any, bool]]:
    """(label, httpx.Response-like headers, is a non-streaming success)."""
    o, a = oai(gw), ant(gw)
    out: list[tuple[str, Any, bool]] = []
    r: Any = o.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSG)
    out.append(("chat", r.headers, True))
    r = o.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSG,
                                                    stream=True)  # fmt: skip
    list(r.parse())
    out.append(("chat stream", r.headers, False))
    r = o.responses.with_raw_response.create(model="gpt-4o-mini", input="hi", stream=True)
    list(r.parse())
    out.append(("responses stream", r.headers, False))
    r = o.embeddings.with_raw_response.create(model="text-embedding-3-small", input="hi")
    out.append(("embeddings", r.headers, True))
    r = o.models.with_raw_response.list()
    out.append(("models", r.headers, None))
    r = a.messages.with_raw_response.create(model="claude-sonnet-4-5", max_tokens=9,
                                            messages=MSG)  # fmt: skip
    out.append(("messages", r.headers, True))
    with a.messages.stream(model="claude-sonnet-4-5", max_tokens=9, messages=MSG) as s:
        s.until_done()
        out.append(("messages stream", s.response.headers, False))
    r = a.messages.with_raw_response.count_tokens(model="claude-sonnet-4-5", messages=MSG)
    out.append(("count_tokens", r.headers, None))
    for label, exc_type, call in (
        ("401", openai.AuthenticationError,
         lambda: oai(gw, key="gw-bad-key-000000000000000000").models.list()),
        ("404", anthropic.NotFoundError,
         lambda: anthropic.Anthropic(base_url=f"{gw.url}/nope", api_key=gw.admin_key,
                                     max_retries=0).messages.create(
             model="claude-sonnet-4-5", max_tokens=9, messages=MSG)),
        ("upstream 400", openai.BadRequestError,
         lambda: o.chat.completions.create(model="error-400", messages=MSG)),
        ("upstream 400 stream", openai.BadRequestError,
         lambda: o.chat.completions.create(model="error-400", messages=MSG, stream=True)),
    ):  # fmt: skip
        with pytest.raises(exc_type) as exc:
            call()
        out.append((label, exc.value.response.headers, False))
    return out


def test_every_response_carries_the_gatewatch_headers(gateway):
    for label, headers, priced in _calls(gateway):
        for name in ("x-gatewatch-request-id", "x-gatewatch-provider", "x-gatewatch-model",
                     "x-gatewatch-attempts"):  # fmt: skip
            assert name in headers, f"{label}: no {name}"
        rec = gateway.record(rid(headers))  # the id finds the record
        assert headers["x-gatewatch-provider"] == (rec["provider"] or ""), label
        assert headers["x-gatewatch-attempts"] == str(len(rec["attempts"])), label
        if rec["model"]:
            assert headers["x-gatewatch-model"] == rec["model"], label
        if priced:
            assert float(headers["x-gatewatch-cost-usd"]) == pytest.approx(
                rec["cost_usd"], rel=1e-6
            ), label
        elif priced is False:
            assert "x-gatewatch-cost-usd" not in headers, label


# ---- streams the client abandons (§R) ---------------------------------------------------------


def test_client_closing_a_chat_stream_is_recorded_as_client_closed(gateway):
    body = {"model": "gpt-4o-mini-slow", "messages": MSG, "stream": True}
    headers = {"authorization": f"Bearer {gateway.admin_key}"}
    received = ""
    with (
        httpx.Client(timeout=10) as http,
        http.stream(
            "POST", f"{gateway.url}/v1/chat/completions", json=body, headers=headers
        ) as resp,
    ):
        assert resp.status_code == 200
        request_id = rid(resp.headers)
        events = 0
        for line in resp.iter_lines():
            if line.startswith("data: "):
                chunk = json.loads(line[6:])
                received += chunk["choices"][0]["delta"].get("content") or ""
                events += 1
                if events == 3:
                    break
    assert received  # two content pieces arrived, then the client hung up
    started = time.monotonic()
    rec = wait_for_record(gateway, request_id)
    assert time.monotonic() - started < 5  # noticed promptly, not at the end of the stream
    assert rec["status"] == "client_closed"
    assert rec["stream"] is True
    assert rec["ttft_ms"] is not None
    stored = rec["response_body"]["choices"][0]["message"]["content"]
    assert stored.startswith(received)  # the partial answer, as far as it got
    assert FULL_ANSWER.startswith(stored)
    assert len(stored) < len(FULL_ANSWER)


def test_client_closing_an_anthropic_stream_keeps_the_usage_seen_so_far(gateway):
    body = {"model": "claude-sonnet-4-5-slow", "max_tokens": 64, "messages": MSG,
            "stream": True}  # fmt: skip
    headers = {"x-api-key": gateway.admin_key, "anthropic-version": "2023-06-01"}
    input_tokens = None
    text = ""
    with (
        httpx.Client(timeout=10) as http,
        http.stream("POST", f"{gateway.url}/v1/messages", json=body, headers=headers) as resp,
    ):
        request_id = rid(resp.headers)
        for line in resp.iter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            if event["type"] == "message_start":
                input_tokens = event["message"]["usage"]["input_tokens"]
            if event["type"] == "content_block_delta":
                text += event["delta"]["text"]
                break
    rec = wait_for_record(gateway, request_id)
    assert rec["status"] == "client_closed"
    assert input_tokens is not None
    assert rec["input_tokens"] == input_tokens  # message_start's usage was seen
    assert rec["response_body"]["content"][0]["text"].startswith(text)


@pytest.mark.parametrize("stream", [False, True])
def test_client_giving_up_before_the_answer_is_client_closed(start_gateway, upstream, stream):
    # The client leaves while the provider is still thinking: that is the client's doing, not
    # an upstream timeout (which would blame the provider and feed alerts on it).
    gw = start_gateway(providers=[
        {"name": "openai", "type": "openai", "base_url": f"{upstream.url}/v1",
         "api_key": UPSTREAM_OPENAI_KEY, "timeout": 1},
    ])  # fmt: skip
    body = {"model": "gpt-4o-mini-timeout", "messages": MSG, "stream": stream}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{gw.url}/v1/chat/completions", json=body, timeout=0.3,
                   headers={"authorization": f"Bearer {gw.admin_key}"})  # fmt: skip
    deadline = time.monotonic() + 5
    while count(gw) < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    (rec,) = gw.records()
    assert rec["status"] == "client_closed", (rec["status"], rec["status_code"], rec["error_type"])
    assert rec["duration_ms"] < 900  # recorded when the client left, not at the upstream timeout


# ---- secrets (§P3, §T2) -----------------------------------------------------------------------


def _everything_stored(database: str) -> bytes:
    """Every byte the database holds: the SQLite files, or every row of every table."""
    if database.startswith("sqlite:///"):
        db = Path(database.removeprefix("sqlite:///"))
        return b"".join(p.read_bytes() for p in (db, db.with_name(db.name + "-wal")) if p.exists())
    import psycopg

    from gatewatch.store.postgres import split_url

    conninfo, schema = split_url(database)
    with psycopg.connect(conninfo, options=f"-c search_path={schema}") as conn:
        tables = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
        ).fetchall()
        return b"".join(
            str(row[0]).encode()
            for (table,) in tables
            for row in conn.execute(f"SELECT t::text FROM {table} t")
        )


def test_provider_keys_and_gateway_keys_never_leak(gateway, upstream, caplog):
    caplog.set_level(logging.DEBUG)
    user_key = gateway.create_key(user="erin", name="erin")["key"]
    secrets = [UPSTREAM_OPENAI_KEY, UPSTREAM_ANTHROPIC_KEY]
    seen = len(upstream.received)
    exposed: list[bytes] = []
    for key in (gateway.admin_key, user_key):
        o, a = oai(gateway, key=key), ant(gateway, key=key)
        r: Any = o.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSG)
        exposed.append(str(r.headers).encode() + r.http_response.content)
        r = o.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSG,
                                                        stream=True)  # fmt: skip
        exposed.append(str(r.headers).encode() + r.http_response.read())
        r = a.messages.with_raw_response.create(model="claude-sonnet-4-5", max_tokens=9,
                                                messages=MSG)  # fmt: skip
        exposed.append(str(r.headers).encode() + r.http_response.content)
        r = o.models.with_raw_response.list()
        exposed.append(str(r.headers).encode() + r.http_response.content)
        for model in ("error-401", "error-500"):  # upstream refusals are relayed
            with pytest.raises(openai.APIStatusError) as exc:
                o.chat.completions.create(model=model, messages=MSG)
            exposed.append(str(exc.value.response.headers).encode() + exc.value.response.content)
            with pytest.raises(anthropic.APIStatusError) as aexc:
                a.messages.create(model=model, max_tokens=9, messages=MSG)
            exposed.append(str(aexc.value.response.headers).encode() + aexc.value.response.content)
    for blob in exposed:
        for secret in secrets:
            assert secret.encode() not in blob

    # the provider gets its own credential, never the caller's gateway key
    for entry in upstream.received[seen:]:
        sent = json.dumps(entry["headers"])
        assert gateway.admin_key not in sent and user_key not in sent
        if entry["path"].startswith("/v1/messages"):
            assert entry["headers"].get("x-api-key") == UPSTREAM_ANTHROPIC_KEY
        else:
            assert entry["headers"].get("authorization") == f"Bearer {UPSTREAM_OPENAI_KEY}"

    # nor in anything stored
    gateway.wait_records()
    stored = _everything_stored(gateway.gateway.settings.database)
    assert b"hello there gateway" in stored  # (the search does look at the records)
    for secret in [*secrets, gateway.admin_key, user_key]:
        assert secret.encode() not in stored, "a secret was written to the database"
    for secret in [*secrets, user_key]:
        assert secret not in caplog.text


# ---- one record per request (§R) --------------------------------------------------------------

N = 60


def test_every_one_of_many_concurrent_requests_is_recorded(gateway):
    async def main() -> list[str]:
        o = openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key=gateway.admin_key,
                               max_retries=0)  # fmt: skip
        a = anthropic.AsyncAnthropic(base_url=gateway.url, api_key=gateway.admin_key,
                                     max_retries=0)  # fmt: skip
        nope = openai.AsyncOpenAI(base_url=f"{gateway.url}/nope/v1", api_key=gateway.admin_key,
                                  max_retries=0)  # fmt: skip

        async def blocking(i: int) -> str:
            await o.chat.completions.create(model="gpt-4o-mini", messages=MSG)
            return "ok"

        async def streaming(i: int) -> str:
            s = await o.chat.completions.create(model="gpt-4o-mini", messages=MSG, stream=True)
            assert "".join([c.choices[0].delta.content or "" async for c in s if c.choices])
            return "ok"

        async def claude(i: int) -> str:
            if i % 2:
                await a.messages.create(model="claude-sonnet-4-5", max_tokens=9, messages=MSG)
            else:
                async with a.messages.stream(model="claude-sonnet-4-5", max_tokens=9,
                                             messages=MSG) as s:  # fmt: skip
                    await s.get_final_message()
            return "ok"

        async def bad_request(i: int) -> str:
            try:
                if i % 2:
                    await o.chat.completions.create(model="error-400", messages=MSG)
                else:
                    await a.messages.create(model="error-400", max_tokens=9, messages=MSG)
            except (openai.BadRequestError, anthropic.BadRequestError):
                return "error"
            raise AssertionError("error-400 succeeded")

        async def unknown_provider(i: int) -> str:
            try:
                await nope.chat.completions.create(model="gpt-4o-mini", messages=MSG)
            except openai.NotFoundError:
                return "error"
            raise AssertionError("an unknown provider route succeeded")

        async def abandoned(i: int) -> str:
            s = await o.chat.completions.create(model="gpt-4o-mini-slow", messages=MSG, stream=True)
            async for _ in s:
                break
            await s.close()
            return "client_closed"

        plan = (
            [blocking] * 15 + [streaming] * 10 + [claude] * 10 + [bad_request] * 10
            + [unknown_provider] * 5 + [abandoned] * 10
        )  # fmt: skip
        assert len(plan) == N
        try:
            return list(await asyncio.gather(*(f(i) for i, f in enumerate(plan))))
        finally:
            await o.close()
            await a.close()
            await nope.close()

    outcomes = asyncio.run(main())
    expected = {s: outcomes.count(s) for s in ("ok", "error", "client_closed")}
    assert expected == {"ok": 35, "error": 15, "client_closed": 10}

    deadline = time.monotonic() + 10
    while count(gateway) < N and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    gateway.wait_records()
    assert count(gateway) == N
    for status, n in expected.items():
        assert count(gateway, status=status) == n, status
    assert count(gateway, status_code=404) == 5
    assert count(gateway, status_code=400) == 10
