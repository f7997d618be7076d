"""Bad input never hurts (issue 6): generated junk against a real gateway over real HTTP.

The proxy endpoints of both families (and their ``/{provider}/v1/…`` forms) get hypothesis-made
bodies (wrong types in every field the gateway reads, nested junk, deep nesting, huge strings,
non-JSON and invalid UTF-8 bytes, empty and over-limit bodies) and headers (odd, huge and
non-ASCII attribution, correlation, ``traceparent``, user-agent and content-type values). Every
answer must be a well-formed one: no 500, no hang, errors in the calling family's JSON shape with
a message, 2xx bodies that parse; afterwards the gateway still serves a normal request and every
request it answered is recorded.

The management API is fuzzed by schemathesis from the gateway's own ``/openapi.json`` (§A8) with
the owner's key, and by hypothesis on its time parameters (which the document only knows as
strings): no 5xx, no hang, every error JSON with a message.

What the fuzzers found is kept at the end as plain cases.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, timedelta, timezone
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import schemathesis
from conftest import RunningGateway, ServerThread, gateway_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from gatewatch.app import Gateway
from gatewatch.proxy.routing import ENDPOINTS

MAX_BODY = 64 * 1024
TIMEOUT = 15.0  # a request not answered by then is a hang
PROXY_EXAMPLES = 400  # per endpoint
API_EXAMPLES = 15  # per management API operation and generation mode (valid, invalid)
TIME_EXAMPLES = 100  # management API time parameters

# ---- gateways ----------------------------------------------------------------------------------


async def _otlp_sink(scope: Any, receive: Any, send: Any) -> None:
    """Takes whatever OTLP the gateway exports (tracing on, so ``traceparent`` is parsed)."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})


@pytest.fixture(scope="module")
def fuzz_gw(upstream: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    """A gateway with a small body limit, OpenTelemetry export on (with message content), and a
    circuit breaker that never opens (an open breaker would hide what the fuzz found)."""
    sink = ServerThread(_otlp_sink).start()
    s = gateway_settings(
        tmp_path_factory.mktemp("fuzz"), upstream.url,
        limits={"max_body_bytes": MAX_BODY},
        circuit_breaker={"failure_threshold": 1_000_000},
    )  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", sink.url)
        mp.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true")
        gw = Gateway(s)
    assert gw.tracing is not None
    server = ServerThread(gw).start()
    yield RunningGateway(server, gw)
    server.stop()
    sink.stop()


@pytest.fixture(scope="module")
def fuzz_key(fuzz_gw: RunningGateway) -> str:
    """A member key with a budget and token limit, so admission reads the junk too."""
    row = fuzz_gw.create_key(name="fuzz", user="fuzzer", org="fuzz", budget_usd=1e9, tpm=10**12)
    return str(row["key"])


# ---- strategies ---------------------------------------------------------------------------------

SAFE_MODELS = ["gpt-4o-mini", "o3-mini", "text-embedding-3-small", "claude-haiku-4-5", "sim-echo"]
# Model names the simulator answers with a failure or a wait on purpose (gatewatch/simulator.py).
_SIM_MARKERS = ("error-", "timeout", "slow", "broken", "garbled")

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def deep(draw: st.DrawFn) -> str:
    """A marker that ``_encode`` turns into arrays and objects nested deeper than JSON encoders
    like (orjson writes 254 levels and reads 1,024; the stdlib's recursion stops near 1,000)."""
    return f"\x00deep{draw(st.sampled_from([100, 254, 256, 300, 1000]))}\x00"


junk = json_values | deep() | st.builds(lambda n: "word " * n, st.integers(1000, 12_000))

model_names = st.sampled_from(SAFE_MODELS * 3) | st.text(min_size=1, max_size=40).filter(
    lambda m: not any(marker in m for marker in _SIM_MARKERS)
)
messages = st.sampled_from(
    [
        [{"role": "user", "content": "hello"}],
        [{"role": "user", "content": [{"type": "text", "text": "what is the weather"}]}],
        [{"role": "assistant", "content": "hi"}, {"role": "user", "content": None}],
    ]
)
# Every body field the gateway itself looks at, plus a few it only passes on.
FIELDS = [
    "stream", "stream_options", "max_tokens", "max_completion_tokens", "max_output_tokens",
    "tools", "tool_choice", "metadata", "user", "messages", "input", "system", "instructions",
    "temperature", "n", "response_format", "encoding_format", "previous_response_id",
]  # fmt: skip


@st.composite
def shaped_body(draw: st.DrawFn) -> Any:
    """A JSON object good enough to get past parsing, with junk in the other fields."""
    body: dict[str, Any] = {"model": draw(model_names)}
    body["messages"] = draw(messages | json_values.filter(lambda v: v is not None))
    body["input"] = draw(st.sampled_from(["hi", ["a", "b"], [[1, 2]]]) | st.just(body["messages"]))
    body["stream"] = draw(st.sampled_from([True, False]) | json_values)
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=6, unique=True)):
        body[name] = draw(junk)
    if draw(st.booleans()):
        body["max_tokens"] = draw(st.integers(min_value=-5, max_value=2**64 - 1))
    return body


@st.composite
def wrong_field(draw: st.DrawFn) -> Any:
    """A required field missing, null or of the wrong type."""
    body: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [], "input": "hi"}
    name = draw(st.sampled_from(["model", "messages", "input"]))
    if draw(st.booleans()):
        del body[name]
    else:
        body[name] = draw(json_values)
    return body


_DEEP = re.compile(r'"\\u0000deep(\d+)\\u0000"')


def _nested(levels: int) -> str:
    half = levels // 2
    return '[{"content": ' * half + '"x"' + "}]" * half


def _encode(value: Any) -> bytes:
    text = json.dumps(value, ensure_ascii=False)
    return _DEEP.sub(lambda m: _nested(int(m.group(1))), text).encode("utf-8", "surrogatepass")


@dataclass
class Body:
    content: bytes | list[bytes]  # a list: sent in chunks, without a content-length
    what: str


_shaped = st.builds(lambda v: Body(_encode(v), "shaped"), shaped_body())
bodies = st.one_of(
    _shaped,
    _shaped,
    _shaped,
    _shaped,
    st.builds(lambda v: Body(_encode(v), "wrong field"), wrong_field()),
    st.builds(lambda v: Body(_encode(v), "any json"), json_values),
    st.builds(lambda b: Body(b, "bytes"), st.binary(max_size=300)),
    st.builds(
        lambda head, bad: Body(head + bad + b'", "messages": []}', "invalid utf-8"),
        st.sampled_from([b'{"model": "', b'{"model": "gpt-4o-mini", "user": "']),
        st.sampled_from(
            [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\\ud800"]
        ),
    ),
    st.sampled_from([Body(b"", "empty"), Body(b"   \n", "blank")]),
    st.builds(
        lambda extra: Body(
            b'{"model": "gpt-4o-mini", "x": "' + b"a" * (MAX_BODY + extra) + b'"}', "over limit"
        ),
        st.integers(0, 5000),
    ),
    st.builds(
        lambda n: Body([b'{"model": "gpt-4o-mini", "x": "'] + [b"a" * 8192] * n, "chunked"),
        st.integers(MAX_BODY // 8192 + 1, MAX_BODY // 8192 + 4),
    ),
)

# Header values as bytes: anything RFC 9110 lets a client put in a field value (visible ASCII,
# space, tab and obs-text 0x80-0xFF). Control bytes are refused by the HTTP server (uvicorn's
# plain-text 400) before the gateway sees the request, so they are not generated.
_FIELD_BYTES = bytes([9, *range(0x20, 0x7F), *range(0x80, 0x100)])
_header_bytes = st.lists(st.sampled_from(_FIELD_BYTES), min_size=1, max_size=200).map(
    lambda b: bytes(b).strip(b" \t") or b"x"
)
header_values = st.one_of(
    st.text(st.characters(exclude_categories=["Cc", "Cs"]), min_size=1, max_size=100).map(
        lambda t: t.strip(" \t").encode() or b"x"
    ),
    st.text(st.characters(max_codepoint=255, exclude_categories=["Cc"]), min_size=1).map(
        lambda t: t.strip(" \t").encode("latin-1") or b"x"
    ),
    _header_bytes,
    st.builds(
        lambda c, n: c * n,
        st.sampled_from([b"a", b",", b"\xe9", b"a,b,"]),
        st.integers(1000, 7000),
    ),
    st.sampled_from([
        b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        b"00-00000000000000000000000000000000-0000000000000000-01",
        b"ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
        b"01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-zz-x",
        b"00-zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz-b7ad6b7169203331-01",
        b"application/json; charset=latin-1", b"text/plain", b"multipart/form-data; boundary=x",
    ]),
)  # fmt: skip
_prefix_text = st.text(min_size=1, max_size=20).map(lambda t: "/" + quote(t, safe=""))
_token = st.text("abcdefghijklmnopqrstuvwxyz0123456789-_.!#$%&'*+^`|~", min_size=1, max_size=20)
HEADER_NAMES = [
    "x-gatewatch-user", "x-gatewatch-session", "x-gatewatch-workflow", "x-gatewatch-tags",
    "x-gatewatch-meta-", "x-request-id", "traceparent", "tracestate", "user-agent",
    "content-type", "anthropic-version", "anthropic-beta", "openai-beta",
]  # fmt: skip
header_names = (
    st.sampled_from(HEADER_NAMES)
    | _token.map(lambda t: "x-gatewatch-meta-" + t)
    | _token.map(lambda t: "x-gatewatch-" + t)
)
headers = st.dictionaries(header_names, header_values, max_size=6)

KEY_STYLES = st.sampled_from(["bearer"] * 8 + ["x-api-key"] * 2 + ["none", "wrong", "odd"])
# Mostly the plain and provider forms; now and then an unknown provider, percent-encoded.
PREFIXES = st.sampled_from(["", "", "", "/openai", "/anthropic", "/nope", "?"]).flatmap(
    lambda p: st.just(p) if p != "?" else _prefix_text
)


@dataclass
class Case:
    method: str
    path: str
    body: Body
    headers: dict[str, bytes]
    key_style: str


@st.composite
def proxy_cases(draw: st.DrawFn, endpoint: str) -> Case:
    ep = ENDPOINTS[endpoint]
    method = draw(st.sampled_from([ep.method] * 9 + ["GET" if ep.method == "POST" else "POST"]))
    return Case(method, draw(PREFIXES) + endpoint, draw(bodies), draw(headers), draw(KEY_STYLES))


# ---- checks -------------------------------------------------------------------------------------


def assert_family_error(family: str, resp: httpx.Response) -> None:
    try:
        body = resp.json()
    except ValueError:
        raise AssertionError(f"{resp.status_code} error is not JSON: {resp.text[:300]!r}") from None
    if family == "openai":
        assert isinstance(body, dict) and set(body) == {"error"}, body
        err = body["error"]
        assert isinstance(err, dict) and {"message", "type", "code"} <= set(err), body
    else:
        assert isinstance(body, dict) and body.get("type") == "error", body
        err = body["error"]
        assert isinstance(err, dict) and {"type", "message"} <= set(err), body
    assert isinstance(err["type"], str) and err["type"], body
    assert isinstance(err["message"], str) and err["message"].strip(), body


def assert_valid_success(resp: httpx.Response) -> None:
    ctype = resp.headers.get("content-type", "")
    if ctype.startswith("text/event-stream"):
        text = resp.content.decode("utf-8")
        assert "data:" in text, text[:300]
        for line in text.splitlines():
            if line.startswith("data:") and line[5:].strip() not in ("", "[DONE]"):
                json.loads(line[5:])
    else:
        assert ctype.startswith("application/json"), ctype
        resp.json()


@dataclass
class Tally:
    cases: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    request_ids: set[str] = field(default_factory=set)


def send_case(client: httpx.Client, key: str, family: str, case: Case, tally: Tally) -> None:
    hdrs: dict[str, bytes] = dict(case.headers)
    style = case.key_style
    if style == "bearer":
        hdrs["authorization"] = f"Bearer {key}".encode()
    elif style == "x-api-key":
        hdrs["x-api-key"] = key.encode()
    elif style == "wrong":
        hdrs["authorization"] = b"Bearer gw-wrong"
    elif style == "odd":
        hdrs["authorization"] = b"Bearer \xe9\xff " + key.encode()
    started = time.monotonic()
    try:
        content = case.body.content
        resp = client.request(
            case.method, case.path, headers=hdrs,
            content=iter(content) if isinstance(content, list) else content,
        )  # fmt: skip
    except httpx.TimeoutException:
        raise AssertionError(
            f"no answer within {TIMEOUT}s: {case.method} {case.path} ({case.body.what})"
        ) from None
    tally.cases += 1
    tally.statuses[resp.status_code] = tally.statuses.get(resp.status_code, 0) + 1
    where = f"{case.method} {case.path} ({case.body.what}) → {resp.status_code}"
    rid = resp.headers.get("x-gatewatch-request-id")
    assert rid, f"{where}: no x-gatewatch-request-id: {resp.text[:300]!r}"
    tally.request_ids.add(rid)
    if resp.status_code >= 500:
        # Only a provider's failure may show as a 5xx (the simulated one is healthy here).
        assert resp.status_code in (502, 504), f"{where}: {resp.text[:500]}"
        assert int(resp.headers["x-gatewatch-attempts"]) >= 1, where
    if resp.status_code >= 400:
        assert_family_error(family, resp)
    else:
        assert 200 <= resp.status_code < 300, where
        assert_valid_success(resp)
    assert time.monotonic() - started < TIMEOUT, where


def records_count(gw: RunningGateway, expect: int | None = None) -> int:
    """The number of stored records; asked again for a few seconds until it reaches ``expect``
    (records are written off the request path)."""
    gw.wait_records()
    deadline = time.monotonic() + 10
    with gw.api() as c:
        while True:
            r = c.get("/api/v1/requests", params={"limit": 1})
            assert r.status_code == 200, r.text
            count = int(r.json()["count"])
            if expect is None or count >= expect or time.monotonic() > deadline:
                return count
            time.sleep(0.1)


_FORMAT = logging.Formatter()


def gateway_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What the gateway logged as an error (an unexpected exception, a span or record lost)."""
    return [
        f"{r.name}: {r.getMessage()}\n{_FORMAT.formatException(r.exc_info) if r.exc_info else ''}"
        for r in caplog.records
        if r.levelno >= logging.ERROR and r.name.startswith("gatewatch")
    ]


# ---- proxy fuzzing ------------------------------------------------------------------------------

API_SETTINGS = settings(
    max_examples=API_EXAMPLES,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
FUZZ_SETTINGS = settings(
    max_examples=PROXY_EXAMPLES,
    deadline=None,
    database=None,  # the same cases every run: a failure here is reproducible
    derandomize=True,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)  # fmt: skip


@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
def test_proxy_survives_junk(
    fuzz_gw: RunningGateway, fuzz_key: str, endpoint: str, caplog: pytest.LogCaptureFixture
) -> None:
    family = ENDPOINTS[endpoint].family
    before = records_count(fuzz_gw)
    tally = Tally()
    t0 = time.monotonic()
    with httpx.Client(base_url=fuzz_gw.url, timeout=TIMEOUT) as client:

        @FUZZ_SETTINGS
        @given(case=proxy_cases(endpoint))
        def fuzz(case: Case) -> None:
            send_case(client, fuzz_key, family, case, tally)

        fuzz()

        # still serving, and nothing lost: one record per answered request
        normal = (
            {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "input": "hi"}
            if family == "openai"
            else {"model": "claude-haiku-4-5", "max_tokens": 8,
                  "messages": [{"role": "user", "content": "hi"}]}
        )  # fmt: skip
        ok = client.request(
            ENDPOINTS[endpoint].method, endpoint,
            json=normal if ENDPOINTS[endpoint].method == "POST" else None,
            headers={"authorization": f"Bearer {fuzz_key}"},
        )  # fmt: skip
        assert ok.status_code == 200, ok.text
        tally.request_ids.add(ok.headers["x-gatewatch-request-id"])
    after = records_count(fuzz_gw, expect=before + tally.cases + 1)
    assert after - before == len(tally.request_ids) == tally.cases + 1
    assert not gateway_errors(caplog)
    print(
        f"\n{endpoint}: {tally.cases} fuzz cases in {time.monotonic() - t0:.1f}s,"
        f" statuses {dict(sorted(tally.statuses.items()))}"
    )


# ---- management API fuzzing ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def api_gw(upstream: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    s = gateway_settings(tmp_path_factory.mktemp("apifuzz"), upstream.url)
    gw = Gateway(s)
    server = ServerThread(gw).start()
    yield RunningGateway(server, gw)
    server.stop()


def test_management_api_survives_junk(api_gw: RunningGateway) -> None:
    """Every operation of /openapi.json, with valid and invalid parameters and bodies.

    Through schemathesis's Python API (its pytest ``from_fixture`` loader does not run under
    pytest 9): one hypothesis run per operation and generation mode."""
    schema = schemathesis.openapi.from_url(api_gw.url + "/openapi.json", timeout=TIMEOUT)
    auth = {"Authorization": f"Bearer {api_gw.admin_key}"}
    counts: dict[str, int] = {}
    t0 = time.monotonic()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 20, [op.label for op in operations]

    def check(case: Any) -> None:
        try:
            resp = case.call(base_url=api_gw.url, headers=auth, timeout=TIMEOUT)
        except Exception as exc:  # requests' timeouts and connection errors
            raise AssertionError(f"{case.method} {case.formatted_path}: {exc!r}") from None
        counts[case.operation.label] = counts.get(case.operation.label, 0) + 1
        # Only not_a_server_error: the other checks compare answers with the document's declared
        # statuses and schemas (FastAPI declares 422 for validation; §A answers 400), which is
        # about the document, not about surviving bad input.
        case.validate_response(resp, checks=[not_a_server_error])
        if resp.status_code >= 400:
            body = resp.json()
            assert isinstance(body, dict) and isinstance(body.get("error"), dict), resp.text
            message = body["error"].get("message")
            assert isinstance(message, str) and message.strip(), resp.text

    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            run = API_SETTINGS(given(case=operation.as_strategy(generation_mode=mode))(check))
            try:
                run()
            except Unsatisfiable:  # nothing to make invalid (no parameters, no body)
                assert mode == GenerationMode.NEGATIVE, operation.label
    total = sum(counts.values())
    print(f"\nmanagement API: {total} cases over {len(operations)} operations"
          f" in {time.monotonic() - t0:.1f}s")  # fmt: skip


# Schemathesis only knows the time parameters as strings and rarely makes a date of one.
_ZONES = [UTC, timezone(timedelta(hours=14)), timezone(-timedelta(hours=12, minutes=30))]
times = st.one_of(
    st.none(),
    st.datetimes(timezones=st.sampled_from(_ZONES)).map(lambda d: d.isoformat()),
    st.dates().map(str),
    st.sampled_from(["1969-12-31T23:59:59Z", "1970-01-01T00:00:00Z", "9998-12-31T23:59:59Z",
                     "9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00", "2024-02-30"]),
    st.text(max_size=25),
)  # fmt: skip
TIME_PARAMS = {
    "/api/v1/requests": ("started_after", "started_before", {}),
    "/api/v1/requests/export": ("started_after", "started_before", {"format": "jsonl"}),
    "/api/v1/usage": ("start", "end", {}),
    "/api/v1/usage/top": ("start", "end", {}),
    "/api/v1/requests/facets": ("start", "end", {"field": "model"}),
}


def test_management_api_time_parameters(api_gw: RunningGateway) -> None:
    cases = 0
    with api_gw.api() as client:

        @settings(API_SETTINGS, max_examples=TIME_EXAMPLES)
        @given(
            path=st.sampled_from(list(TIME_PARAMS)),
            lo=times,
            hi=times,
            bucket=st.sampled_from(["hour", "day", "week", "month"]),
            tz=st.sampled_from(["UTC", "Pacific/Kiritimati", "Asia/Kathmandu", "America/Adak"]),
        )
        def fuzz(path: str, lo: str | None, hi: str | None, bucket: str, tz: str) -> None:
            nonlocal cases
            lo_name, hi_name, extra = TIME_PARAMS[path]
            params = {lo_name: lo, hi_name: hi, **extra}
            if path == "/api/v1/usage":
                params |= {"bucket": bucket, "tz": tz}
            r = client.get(path, params={k: v for k, v in params.items() if v is not None})
            cases += 1
            assert r.status_code in (200, 400), f"{path} {params} → {r.status_code}: {r.text[:300]}"
            if r.status_code == 400:
                error = r.json()["error"]
                assert error["param"] in (lo_name, hi_name, "bucket"), r.text
                assert error["message"].startswith(error["param"]), r.text

        fuzz()
    print(f"\nmanagement API time parameters: {cases} cases")


# ---- what the fuzzers found, kept as plain cases ---------------------------------------------


def _deep(levels: int) -> Any:
    value: Any = "x"
    for _ in range(levels):
        value = [value]
    return value


def test_found_proxy_cases(fuzz_gw: RunningGateway, caplog: pytest.LogCaptureFixture) -> None:
    auth = {"authorization": f"Bearer {fuzz_gw.admin_key}"}
    hi = [{"role": "user", "content": "hi"}]
    with httpx.Client(base_url=fuzz_gw.url, headers=auth, timeout=TIMEOUT) as c:
        # A stream request is re-encoded (stream_options added): orjson writes only 254 levels.
        r = c.post("/v1/chat/completions", json={
            "model": "gpt-4o-mini", "stream": True,
            "messages": [{"role": "user", "content": _deep(300)}]})  # fmt: skip
        assert r.status_code == 400, r.text
        assert r.json()["error"]["message"].startswith("'messages' is nested too deeply"), r.text
        # Control bytes in a model name cannot go into x-gatewatch-model as they are.
        r = c.post("/v1/chat/completions", json={"model": "gpt-4o-mini\x01\n", "messages": hi})
        assert r.status_code == 200, r.text
        assert r.headers["x-gatewatch-model"].startswith("gpt-4o-mini??")
        # A (simulated) provider refuses what it cannot echo back, as a real one would.
        r = c.post("/v1/responses", json={
            "model": "gpt-4o-mini", "input": "hi", "metadata": {"a": _deep(300)}})  # fmt: skip
        assert r.status_code == 400, r.text
        assert_family_error("openai", r)
        # Junk where the span's content attributes are read: the span is still made.
        r = c.post("/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": True})
        assert r.status_code == 200, r.text
    fuzz_gw.wait_records()
    assert not gateway_errors(caplog)


@pytest.mark.parametrize(
    ("method", "path", "body", "param"),
    [
        ("POST", "/api/v1/keys", {"user": "u", "tpm": 2**64}, "tpm"),
        ("POST", "/api/v1/users", {"name": "u", "rpm": 2**63}, "rpm"),
        ("POST", "/api/v1/keys", {"user": "u", "budget_usd": "inf"}, "budget_usd"),
        ("PATCH", "/api/v1/orgs/none", {"budget_usd": "nan"}, "budget_usd"),
        ("POST", "/api/v1/billing/adjustments",
         {"scope": "key", "scope_id": "key_bootstrap_admin", "amount_usd": "nan", "reason": "r"},
         "amount_usd"),
        ("GET", "/api/v1/usage?start=1969-12-31T00:00:00Z&end=1970-01-02T00:00:00Z", None,
         "start"),
        ("GET", "/api/v1/usage?start=9999-12-30&end=9999-12-31", None, "end"),
        ("GET", "/api/v1/requests?started_after=0001-01-01T00:00:00Z", None, None),
        ("GET", "/api/v1/requests?started_before=0001-01-01T00:00:00Z", None, None),
    ],
)  # fmt: skip
def test_found_api_cases(
    api_gw: RunningGateway, method: str, path: str, body: Any, param: str | None
) -> None:
    with api_gw.api() as c:
        r = c.request(method, path, json=body)
    if param is None:
        assert r.status_code == 200, r.text
        return
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param, r.text
    assert error["message"].startswith(param), r.text
