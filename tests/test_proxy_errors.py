"""End-to-end: failover (§P6), errors in both API families' shapes (§P7), authentication on every
endpoint (§P3), and broken upstream streams — each failed request recorded with its reason."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest
from conftest import (
    UPSTREAM_ANTHROPIC_KEY,
    UPSTREAM_OPENAI_KEY,
    RunningGateway,
    ServerThread,
    free_port,
    gateway_settings,
)

from gatewatch.app import Gateway

MSG = [{"role": "user", "content": "hello"}]


def providers(upstream_url: str, dead_port: int) -> list[dict[str, Any]]:
    """The two normal providers, plus unreachable ones and quick-to-time-out ones."""
    dead = f"http://127.0.0.1:{dead_port}"
    return [
        {"name": "openai", "type": "openai", "base_url": f"{upstream_url}/v1",
         "api_key": UPSTREAM_OPENAI_KEY, "timeout": 2},
        {"name": "anthropic", "type": "anthropic", "base_url": upstream_url,
         "api_key": UPSTREAM_ANTHROPIC_KEY, "timeout": 2},
        {"name": "dead-oai", "type": "openai", "base_url": f"{dead}/v1",
         "api_key": UPSTREAM_OPENAI_KEY, "timeout": 2, "connect_timeout": 1},
        {"name": "dead-ant", "type": "anthropic", "base_url": dead,
         "api_key": UPSTREAM_ANTHROPIC_KEY, "timeout": 2, "connect_timeout": 1},
        {"name": "slow-oai", "type": "openai", "base_url": f"{upstream_url}/v1",
         "api_key": UPSTREAM_OPENAI_KEY, "timeout": 0.5},
        {"name": "slow-ant", "type": "anthropic", "base_url": upstream_url,
         "api_key": UPSTREAM_ANTHROPIC_KEY, "timeout": 0.5},
    ]  # fmt: skip


MODELS = {
    "smart": ["openai/error-500-a", "openai/gpt-4o-mini"],
    "smart-429": ["openai/error-429-a", "openai/gpt-4o-mini"],
    "smart-down": ["dead-oai/gpt-4o-mini", "openai/gpt-4o-mini"],
    "smart-timeout": ["slow-oai/timeout-a", "openai/gpt-4o-mini"],
    "all-down": ["dead-oai/gpt-4o-mini", "dead-oai/gpt-4o"],
    "all-timeout": ["slow-oai/timeout-a"],
    "all-5xx": ["openai/error-429-a", "openai/error-500-b"],
    "claude-smart": ["anthropic/error-529-a", "anthropic/claude-sonnet-4-5"],
    "claude-down": ["dead-ant/claude-sonnet-4-5"],
    "claude-timeout": ["slow-ant/timeout-a"],
    "claude-5xx": ["anthropic/error-500-a"],
}


@pytest.fixture(scope="module")
def fgw(upstream: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    """One gateway with failover aliases for this module (starting one per test is slower)."""
    settings = gateway_settings(
        tmp_path_factory.mktemp("failover"), upstream.url,
        providers=providers(upstream.url, free_port()), models=MODELS,
    )  # fmt: skip
    gw = Gateway(settings)
    server = ServerThread(gw).start()
    yield RunningGateway(server, gw)
    server.stop()


@pytest.fixture(scope="module")
def egw(upstream: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    """A gateway without aliases (models pass through) and a small body limit."""
    settings = gateway_settings(
        tmp_path_factory.mktemp("errors"), upstream.url,
        providers=providers(upstream.url, free_port()), limits={"max_body_bytes": 1000},
    )  # fmt: skip
    gw = Gateway(settings)
    server = ServerThread(gw).start()
    yield RunningGateway(server, gw)
    server.stop()


def oai(gw: RunningGateway, key: str | None = None, prefix: str = "") -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{gw.url}{prefix}/v1", api_key=key or gw.admin_key, max_retries=0
    )


def ant(gw: RunningGateway, key: str | None = None, prefix: str = "") -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=f"{gw.url}{prefix}", api_key=key or gw.admin_key, max_retries=0
    )


def rid(headers: Any) -> str:
    return headers["x-gatewatch-request-id"]  # type: ignore[no-any-return]


def assert_error_shape(family: str, body: Any) -> str:
    """The family's error JSON; returns the message."""
    if family == "openai":
        assert set(body) == {"error"}, body
        err = body["error"]
        assert {"message", "type", "code"} <= set(err), body
        assert isinstance(err["type"], str) and err["type"]
    else:
        assert body["type"] == "error", body
        err = body["error"]
        assert {"type", "message"} <= set(err), body
        assert isinstance(err["type"], str) and err["type"]
    assert isinstance(err["message"], str) and err["message"]
    return err["message"]  # type: ignore[no-any-return]


def assert_error_headers(headers: Any) -> None:
    for name in ("x-gatewatch-request-id", "x-gatewatch-provider", "x-gatewatch-model",
                 "x-gatewatch-attempts"):  # fmt: skip
        assert name in headers, f"{name} missing on an error response"
    assert "x-gatewatch-cost-usd" not in headers


def assert_error_record(gw: RunningGateway, request_id: str, status: int) -> dict[str, Any]:
    rec = gw.record(request_id)
    assert rec["status"] == "error"
    assert rec["status_code"] == status
    assert rec["error_type"]
    assert rec["error_message"]
    assert rec["cost_usd"] is None
    return rec


# ---- failover (§P6) ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("alias", "first_reason", "first_status"),
    [
        ("smart", "upstream_5xx", 500),
        ("smart-429", "rate_limited", 429),
        ("smart-down", "connect_error", None),
        ("smart-timeout", "timeout", None),
    ],
)
def test_failover_to_the_next_target(fgw, alias, first_reason, first_status):
    raw = oai(fgw).chat.completions.with_raw_response.create(model=alias, messages=MSG)
    got = raw.parse()
    assert got.choices[0].message.content.startswith("This is a simulated answer to: hello")
    assert raw.status_code == 200
    assert raw.headers["x-gatewatch-attempts"] == "2"
    assert raw.headers["x-gatewatch-provider"] == "openai"
    assert raw.headers["x-gatewatch-model"] == "gpt-4o-mini-2024-07-18"
    assert float(raw.headers["x-gatewatch-cost-usd"]) > 0

    rec = fgw.record(rid(raw.headers))
    assert rec["status"] == "ok" and rec["status_code"] == 200
    assert rec["model_requested"] == alias
    assert rec["provider"] == "openai"
    assert rec["model"] == "gpt-4o-mini-2024-07-18"
    first, second = rec["attempts"]
    assert first["reason"] == first_reason
    assert first["status_code"] == first_status
    assert first["provider"] == MODELS[alias][0].split("/")[0]
    assert first["model"] == MODELS[alias][0].split("/")[1]
    assert (second["provider"], second["model"]) == ("openai", "gpt-4o-mini")
    assert (second["reason"], second["status_code"]) == ("ok", 200)
    assert first["duration_ms"] >= 0 and second["duration_ms"] >= 0
    if first_reason == "timeout":
        assert first["duration_ms"] >= 400
    assert rec["input_tokens"] == got.usage.prompt_tokens
    assert rec["cost_usd"] > 0


@pytest.mark.parametrize("alias", ["smart", "smart-down", "smart-timeout"])
def test_stream_fails_over_before_the_first_byte(fgw, alias):
    raw = oai(fgw).chat.completions.with_raw_response.create(model=alias, messages=MSG, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    assert text.startswith("This is a simulated answer to: hello")
    assert raw.headers["x-gatewatch-attempts"] == "2"
    rec = fgw.record(rid(raw.headers))
    assert rec["stream"] is True
    assert rec["status"] == "ok" and rec["status_code"] == 200
    assert [a["reason"] for a in rec["attempts"]][1] == "ok"
    assert rec["attempts"][0]["reason"] != "ok"
    assert rec["output_tokens"] > 0
    assert rec["ttft_ms"] is not None


def test_anthropic_failover_blocking_and_stream(fgw):
    c = ant(fgw)
    raw = c.messages.with_raw_response.create(model="claude-smart", max_tokens=64, messages=MSG)
    assert raw.parse().content[0].text.startswith("This is a simulated answer to: hello")
    assert raw.headers["x-gatewatch-attempts"] == "2"
    rec = fgw.record(rid(raw.headers))
    assert [(a["reason"], a["status_code"]) for a in rec["attempts"]] == [
        ("upstream_5xx", 529), ("ok", 200)
    ]  # fmt: skip
    assert rec["model"] == "claude-sonnet-4-5"
    assert rec["cost_usd"] > 0

    with c.messages.stream(model="claude-smart", max_tokens=64, messages=MSG) as s:
        final = s.get_final_message()
        headers = s.response.headers
    assert final.content[0].text.startswith("This is a simulated answer to: hello")
    rec = fgw.record(rid(headers))
    assert [a["reason"] for a in rec["attempts"]] == ["upstream_5xx", "ok"]
    assert rec["status"] == "ok" and rec["stream"] is True


def test_all_targets_unreachable_is_502(fgw):
    with pytest.raises(openai.InternalServerError) as exc:
        oai(fgw).chat.completions.create(model="all-down", messages=MSG)
    resp = exc.value.response
    assert resp.status_code == 502
    assert_error_shape("openai", resp.json())
    assert_error_headers(resp.headers)
    assert resp.headers["x-gatewatch-attempts"] == "2"
    rec = assert_error_record(fgw, rid(resp.headers), 502)
    assert [a["reason"] for a in rec["attempts"]] == ["connect_error", "connect_error"]


def test_all_targets_timing_out_is_504(fgw):
    with pytest.raises(openai.InternalServerError) as exc:
        oai(fgw).chat.completions.create(model="all-timeout", messages=MSG)
    resp = exc.value.response
    assert resp.status_code == 504
    assert_error_shape("openai", resp.json())
    assert_error_headers(resp.headers)
    rec = assert_error_record(fgw, rid(resp.headers), 504)
    assert [a["reason"] for a in rec["attempts"]] == ["timeout"]


def test_all_targets_failing_relays_the_last_upstream_error(fgw):
    with pytest.raises(openai.InternalServerError) as exc:
        oai(fgw).chat.completions.create(model="all-5xx", messages=MSG)
    resp = exc.value.response
    assert resp.status_code == 500
    body = resp.json()
    assert_error_shape("openai", body)
    assert body["error"]["message"] == "Internal server error."  # the upstream's own error
    assert_error_headers(resp.headers)
    assert resp.headers["x-gatewatch-attempts"] == "2"
    rec = assert_error_record(fgw, rid(resp.headers), 500)
    assert [(a["reason"], a["status_code"]) for a in rec["attempts"]] == [
        ("rate_limited", 429), ("upstream_5xx", 500)
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("alias", "status", "exc_type"),
    [
        ("claude-down", 502, anthropic.InternalServerError),
        ("claude-timeout", 504, anthropic.GatewayTimeoutError),
        ("claude-5xx", 500, anthropic.InternalServerError),
    ],
)
def test_anthropic_all_targets_failing(fgw, alias, status, exc_type):
    with pytest.raises(exc_type) as exc:
        ant(fgw).messages.create(model=alias, max_tokens=64, messages=MSG)
    resp = exc.value.response
    assert resp.status_code == status
    assert_error_shape("anthropic", resp.json())
    assert_error_headers(resp.headers)
    assert_error_record(fgw, rid(resp.headers), status)


def test_unlisted_model_is_404_in_both_shapes_when_models_are_configured(fgw):
    with pytest.raises(openai.NotFoundError) as oexc:
        oai(fgw).chat.completions.create(model="gpt-4o-mini", messages=MSG)
    assert_error_shape("openai", oexc.value.response.json())
    assert "gpt-4o-mini" in oexc.value.message
    assert_error_record(fgw, rid(oexc.value.response.headers), 404)

    with pytest.raises(anthropic.NotFoundError) as aexc:
        ant(fgw).messages.create(model="claude-sonnet-4-5", max_tokens=64, messages=MSG)
    assert_error_shape("anthropic", aexc.value.response.json())
    rec = assert_error_record(fgw, rid(aexc.value.response.headers), 404)
    assert rec["model_requested"] == "claude-sonnet-4-5"


def test_models_endpoint_lists_the_configured_aliases(fgw):
    raw = oai(fgw).models.with_raw_response.list()
    ids = sorted(m.id for m in raw.parse())
    # the aliases an OpenAI client may use (at least the OpenAI-served ones), nothing else
    assert {
        k for k, v in MODELS.items() if v[0].split("/")[0] in ("openai", "dead-oai", "slow-oai")
    } <= set(ids)
    assert set(ids) <= set(MODELS)
    assert "gpt-4o-mini" not in ids
    assert fgw.record(rid(raw.headers))["status"] == "ok"


# ---- errors in the family's shape (§P7) --------------------------------------------------------

FAMILY = {
    "openai": ("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": MSG}),
    "anthropic": ("/v1/messages", {"model": "claude-sonnet-4-5", "max_tokens": 16,
                                   "messages": MSG}),
}  # fmt: skip


def _post(gw: RunningGateway, family: str, *, path: str | None = None, content: bytes | None = None,
          body: Any = None, headers: dict[str, str] | None = None,
          auth: bool = True) -> httpx.Response:  # fmt: skip
    default_path, default_body = FAMILY[family]
    hdrs = {"content-type": "application/json"}
    if auth:
        hdrs["authorization"] = f"Bearer {gw.admin_key}"
    if family == "anthropic":
        hdrs["anthropic-version"] = "2023-06-01"
    hdrs.update(headers or {})
    if content is None:
        content = json.dumps(default_body if body is None else body).encode()
    return httpx.post(gw.url + (path or default_path), content=content, headers=hdrs, timeout=10)


SHORT = {"openai": "oai", "anthropic": "ant"}


def _without(family: str, field: str) -> dict[str, Any]:
    return {k: v for k, v in FAMILY[family][1].items() if k != field}


ERROR_CASES: dict[str, tuple[Callable[[RunningGateway, str], httpx.Response], int, str | None]] = {
    "malformed_json": (lambda gw, f: _post(gw, f, content=b'{"model": "x", "messages": ['),
                       400, "json"),
    "not_an_object": (lambda gw, f: _post(gw, f, content=b"[1, 2]"), 400, None),
    "empty_body": (lambda gw, f: _post(gw, f, content=b""), 400, None),
    "missing_messages": (lambda gw, f: _post(gw, f, body=_without(f, "messages")), 400,
                         "messages"),
    "missing_model": (lambda gw, f: _post(gw, f, body=_without(f, "model")), 400, "model"),
    "missing_key": (lambda gw, f: _post(gw, f, auth=False), 401, None),
    "wrong_key": (lambda gw, f: _post(gw, f, auth=False, headers={
        "authorization": "Bearer gw-not-a-real-key-0000000000000000"}), 401, None),
    "wrong_x_api_key": (lambda gw, f: _post(gw, f, auth=False, headers={
        "x-api-key": "gw-not-a-real-key-0000000000000000"}), 401, None),
    "unknown_provider": (lambda gw, f: _post(gw, f, path="/nope" + FAMILY[f][0]), 404, "nope"),
    "too_large": (lambda gw, f: _post(gw, f, body={**FAMILY[f][1], "messages": [
        {"role": "user", "content": "word " * 400}]}), 413, None),
    "unreachable": (lambda gw, f: _post(gw, f, path=f"/dead-{SHORT[f]}" + FAMILY[f][0]), 502, None),
    "timeout": (lambda gw, f: _post(gw, f, path=f"/slow-{SHORT[f]}" + FAMILY[f][0],
                                    body={**FAMILY[f][1], "model": "timeout-x"}), 504, None),
}  # fmt: skip


@pytest.mark.parametrize("family", ["openai", "anthropic"])
@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_error_in_family_shape_and_recorded(egw, family, case):
    send, status, mentions = ERROR_CASES[case]
    resp = send(egw, family)
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    message = assert_error_shape(family, resp.json())
    if mentions:
        assert mentions in message.lower()
    assert_error_headers(resp.headers)
    rec = assert_error_record(egw, rid(resp.headers), status)
    assert rec["endpoint"] == FAMILY[family][0]
    assert rec["source_ip"] == "127.0.0.1"


def test_body_over_the_limit_without_content_length_is_413(egw):
    def chunks() -> Iterator[bytes]:
        yield b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "'
        for _ in range(20):
            yield b"x" * 100
        yield b'"}]}'

    resp = httpx.post(
        f"{egw.url}/v1/chat/completions", content=chunks(), timeout=10,
        headers={"authorization": f"Bearer {egw.admin_key}", "content-type": "application/json"},
    )  # fmt: skip
    assert resp.status_code == 413
    assert_error_shape("openai", resp.json())
    assert_error_record(egw, rid(resp.headers), 413)


def test_upstream_rate_limit_is_relayed_with_retry_after(egw):
    with pytest.raises(openai.RateLimitError) as exc:
        oai(egw).chat.completions.create(model="error-429", messages=MSG)
    resp = exc.value.response
    assert resp.headers["retry-after"] == "1"
    assert_error_shape("openai", resp.json())
    rec = assert_error_record(egw, rid(resp.headers), 429)
    assert [a["reason"] for a in rec["attempts"]] == ["rate_limited"]


def test_sdk_exception_classes_openai(egw):
    with pytest.raises(openai.AuthenticationError):
        oai(egw, key="gw-wrong-key-00000000000000000000").chat.completions.create(
            model="gpt-4o-mini", messages=MSG
        )
    with pytest.raises(openai.NotFoundError):
        oai(egw, prefix="/nope").chat.completions.create(model="gpt-4o-mini", messages=MSG)
    with pytest.raises(openai.APIStatusError) as exc:
        oai(egw).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x" * 2000}]
        )
    assert exc.value.status_code == 413
    with pytest.raises(openai.InternalServerError) as exc:
        oai(egw, prefix="/dead-oai").chat.completions.create(model="gpt-4o-mini", messages=MSG)
    assert exc.value.status_code == 502
    with pytest.raises(openai.InternalServerError) as exc:
        oai(egw, prefix="/slow-oai").chat.completions.create(model="timeout-x", messages=MSG)
    assert exc.value.status_code == 504
    # an upstream 4xx is relayed as is, with its status
    with pytest.raises(openai.BadRequestError) as exc:
        oai(egw).chat.completions.create(model="error-400", messages=MSG)
    assert exc.value.message.endswith("Bad request.")
    assert_error_record(egw, rid(exc.value.response.headers), 400)


def test_sdk_exception_classes_anthropic(egw):
    def create(
        c: anthropic.Anthropic, model: str = "claude-sonnet-4-5", content: str = "hi"
    ) -> Any:
        return c.messages.create(
            model=model, max_tokens=16, messages=[{"role": "user", "content": content}]
        )

    with pytest.raises(anthropic.AuthenticationError):
        create(ant(egw, key="gw-wrong-key-00000000000000000000"))
    with pytest.raises(anthropic.NotFoundError):
        create(ant(egw, prefix="/nope"))
    with pytest.raises(anthropic.ContentTooLargeError):
        create(ant(egw), content="x" * 2000)
    with pytest.raises(anthropic.InternalServerError) as exc:
        create(ant(egw, prefix="/dead-ant"))
    assert exc.value.status_code == 502
    with pytest.raises(anthropic.GatewayTimeoutError):
        create(ant(egw, prefix="/slow-ant"), model="timeout-x")
    with pytest.raises(anthropic.BadRequestError) as exc:
        create(ant(egw), model="error-400")
    assert_error_record(egw, rid(exc.value.response.headers), 400)
    with pytest.raises(anthropic.NotFoundError):
        ant(egw, prefix="/nope").messages.count_tokens(model="claude-sonnet-4-5", messages=MSG)


@pytest.mark.parametrize("family", ["openai", "anthropic"])
def test_revoked_key_is_refused_on_the_very_next_request(egw, family):
    key = egw.create_key(user="bob", name=f"bob-{family}")
    resp = _post(egw, family, auth=False, headers={"authorization": f"Bearer {key['key']}"})
    assert resp.status_code == 200, resp.text
    assert egw.record(rid(resp.headers))["user"] == "bob"

    with egw.api() as api:
        assert api.delete(f"/api/v1/keys/{key['id']}").status_code == 200

    resp = _post(egw, family, auth=False, headers={"authorization": f"Bearer {key['key']}"})
    assert resp.status_code == 401
    assert_error_shape(family, resp.json())
    assert_error_record(egw, rid(resp.headers), 401)
    # and not through the other header either
    resp = _post(egw, family, auth=False, headers={"x-api-key": key["key"]})
    assert resp.status_code == 401


ENDPOINT_CALLS = [
    ("GET", "/v1/models", None),
    ("POST", "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": MSG}),
    ("POST", "/v1/responses", {"model": "gpt-4o-mini", "input": "hi"}),
    ("POST", "/v1/embeddings", {"model": "text-embedding-3-small", "input": "hi"}),
    ("POST", "/v1/messages", {"model": "claude-sonnet-4-5", "max_tokens": 16, "messages": MSG}),
    ("POST", "/v1/messages/count_tokens", {"model": "claude-sonnet-4-5", "messages": MSG}),
]


@pytest.mark.parametrize("style", ["bearer", "x-api-key"])
def test_gateway_key_works_as_bearer_and_x_api_key_on_every_endpoint(egw, style):
    key = egw.create_key(user="dora", name=f"dora-{style}")["key"]
    auth = {"authorization": f"Bearer {key}"} if style == "bearer" else {"x-api-key": key}
    for method, path, body in ENDPOINT_CALLS:
        headers = {**auth, "anthropic-version": "2023-06-01"}
        resp = httpx.request(method, egw.url + path, json=body, headers=headers, timeout=10)
        assert resp.status_code == 200, (path, resp.text)
        rec = egw.record(rid(resp.headers))
        assert (rec["endpoint"], rec["status"], rec["user"]) == (path, "ok", "dora")


# ---- broken upstream streams ------------------------------------------------------------------


def test_broken_openai_stream_surfaces_an_error_and_is_recorded(gateway):
    raw = oai(gateway).chat.completions.with_raw_response.create(
        model="gpt-4o-mini-broken", messages=MSG, stream=True
    )
    text = ""
    with pytest.raises(openai.APIError):
        for chunk in raw.parse():
            text += (chunk.choices[0].delta.content or "") if chunk.choices else ""
    assert text  # some content came through before the break
    rec = gateway.record(rid(raw.headers))
    assert rec["status"] == "error"
    assert rec["error_type"] == "upstream_stream_broken"
    assert rec["error_message"]
    assert rec["response_body"]["choices"][0]["message"]["content"] == text


def test_broken_anthropic_stream_surfaces_an_error_and_is_recorded(gateway):
    texts: list[str] = []
    headers: Any = None
    with pytest.raises(anthropic.APIError), contextlib.ExitStack() as stack:
        s = stack.enter_context(
            ant(gateway).messages.stream(
                model="claude-sonnet-4-5-broken", max_tokens=64, messages=MSG
            )
        )
        headers = s.response.headers
        for t in s.text_stream:
            texts.append(t)
    assert texts
    rec = gateway.record(rid(headers))
    assert rec["status"] == "error"
    assert rec["error_type"] == "upstream_stream_broken"
    assert rec["response_body"]["content"][0]["text"] == "".join(texts)
