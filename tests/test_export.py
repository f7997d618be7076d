"""Request export (§A3) against a real gateway: CSV and JSON Lines that carry every §R column,
narrowed by the list's filters and scoped by the caller's role, streamed page by page."""

from __future__ import annotations

import csv
import io
import json
import random
import re
import time
from typing import Any

import httpx
import openai
import pytest
from conftest import RunningGateway

from gatewatch.records import COLUMNS, Attempt, Record, ToolCall, new_id
from gatewatch.store import Scope, parse_filters

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
TRICKY = 'Summarise, please: "quoted, with commas"\nand a second line;\r\nthird, ok?'
NESTED = {"tags", "meta", "tool_calls", "attempts"}
BODIES = ("request_body", "response_body")


def expected_columns(bodies: bool = False) -> list[str]:
    cols = [c for c in COLUMNS if bodies or c not in BODIES]
    at = cols.index("cost_usd") + 1
    return [*cols[:at], "cost", "currency", *cols[at:]]


def oai(gw: RunningGateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0, timeout=20)


def export(gw: RunningGateway, key: str | None = None, **params: Any) -> httpx.Response:
    with gw.api(key) as api:
        return api.get("/api/v1/requests/export", params=params)


def csv_rows(resp: httpx.Response) -> tuple[list[str], list[dict[str, str]]]:
    assert resp.status_code == 200, resp.text
    reader = csv.reader(io.StringIO(resp.text, newline=""))
    header = next(reader)
    return header, [dict(zip(header, row, strict=True)) for row in reader]


def jsonl_rows(resp: httpx.Response) -> list[dict[str, Any]]:
    assert resp.status_code == 200, resp.text
    assert resp.text == "" or resp.text.endswith("\n")
    return [json.loads(line) for line in resp.text.splitlines()]


def export_ids(gw: RunningGateway, key: str | None = None, **params: Any) -> list[str]:
    return [r["id"] for r in jsonl_rows(export(gw, key, format="jsonl", **params))]


def cell_value(name: str, cell: str) -> Any:
    """A CSV cell back as the API's JSON value."""
    if cell == "":
        return None
    if name in NESTED or name in BODIES:
        return json.loads(cell)
    if name == "stream":
        assert cell in ("true", "false")
        return cell == "true"
    if name in ("status_code", "input_tokens", "output_tokens", "cache_read_tokens",
                "cache_write_tokens", "reasoning_tokens"):  # fmt: skip
        return int(cell)
    if name in ("duration_ms", "ttft_ms", "cost_usd", "cost"):
        return float(cell)
    return cell


def make_traffic(gw: RunningGateway, key: str) -> dict[str, str]:
    """A realistic slice of records through the proxy with the official SDK; ids by kind."""
    client = oai(gw, key)
    ids: dict[str, str] = {}
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "what's the weather in Paris?"}],
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        extra_headers={
            "x-gatewatch-tags": "nightly, a b",
            "x-gatewatch-meta-team": "search",
            "x-gatewatch-workflow": "triage",
        },
    )
    ids["tool"] = raw.headers["x-gatewatch-request-id"]
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": TRICKY}]
    )
    ids["tricky"] = raw.headers["x-gatewatch-request-id"]
    with client.chat.completions.with_streaming_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "stream me"}], stream=True
    ) as resp:
        ids["stream"] = resp.headers["x-gatewatch-request-id"]
        for _ in resp.iter_lines():
            pass
    try:
        client.chat.completions.create(
            model="gpt-4o-mini-error-500", messages=[{"role": "user", "content": "boom"}]
        )
    except openai.APIStatusError as exc:
        ids["error"] = exc.response.headers["x-gatewatch-request-id"]
    r = httpx.post(
        f"{gw.url}/v1/messages", timeout=30,
        json={"model": "claude-haiku-4-5", "max_tokens": 50,
              "messages": [{"role": "user", "content": "hi claude"}]},
        headers={"x-api-key": key, "anthropic-version": "2023-06-01"},
    )  # fmt: skip
    assert r.status_code == 200, r.text
    ids["claude"] = r.headers["x-gatewatch-request-id"]
    assert len(ids) == 5
    gw.wait_records()
    return ids


def store_record(gw: RunningGateway, key: dict[str, Any], i: int, **fields: Any) -> Record:
    started = time.time() - 86400 + i * 0.001
    base: dict[str, Any] = dict(
        id=new_id(started), started=started, ended=started + 0.25, endpoint="/v1/chat/completions",
        org_id=key["org_id"], org=key["org"], user_id=key["user_id"], user=key["user"],
        api_key_id=key["id"], api_key_name=key["name"], provider="openai",
        model_requested="gpt-4o-mini", model="gpt-4o-mini-2024-07-18", status_code=200,
        input_tokens=10 + i, output_tokens=5, cost_usd=round(0.0000123 * (i + 1), 10),
        tags=["bulk"], meta={"n": str(i % 3)}, last_user_prompt=f"prompt {i}",
        attempts=[Attempt("openai", "gpt-4o-mini", 200, "ok", 240.0)],
    )  # fmt: skip
    base.update(fields)
    return Record(**base)


# ---- CSV -----------------------------------------------------------------------------------


def test_csv_has_the_columns_and_values_round_trip(start_gateway: Any) -> None:
    gw = start_gateway(currency={"code": "INR", "usd_rate": 84})
    ids = make_traffic(gw, gw.admin_key)

    resp = export(gw, format="csv")
    assert resp.headers["content-type"] == "text/csv; charset=utf-8"
    disposition = resp.headers["content-disposition"]
    assert re.fullmatch(
        r'attachment; filename="gatewatch-requests-\d{8}T\d{6}Z\.csv"', disposition
    ), disposition
    assert resp.headers["x-total-count"] == "5"
    header, rows = csv_rows(resp)
    assert header == expected_columns()
    assert "request_body" not in header
    assert [r["id"] for r in rows] == sorted(ids.values(), reverse=True)  # newest first

    for row in rows:
        rec = gw.record(row["id"])
        for name in header:
            if name in ("cost", "currency"):
                continue
            assert cell_value(name, row[name]) == rec[name], (name, row[name], rec[name])
        assert row["currency"] == "INR"
        if rec["cost_usd"] is None:
            assert row["cost"] == ""
        else:
            assert float(row["cost"]) == pytest.approx(rec["cost_usd"] * 84, rel=1e-9)

    by_id = {r["id"]: r for r in rows}
    tool = by_id[ids["tool"]]
    assert json.loads(tool["tags"]) == ["nightly", "a b"]
    assert json.loads(tool["meta"]) == {"team": "search"}
    assert json.loads(tool["tool_calls"])[0]["name"] == "get_weather"
    assert json.loads(tool["attempts"])[0]["provider"] == "openai"
    assert by_id[ids["tricky"]]["last_user_prompt"] == TRICKY
    assert by_id[ids["stream"]]["stream"] == "true" and tool["stream"] == "false"
    assert float(tool["cost"]) > 0
    error = by_id[ids["error"]]
    assert (error["status"], error["status_code"]) == ("error", "500")
    assert error["cost_usd"] == "" and error["cost"] == ""  # null → empty cell
    assert by_id[ids["claude"]]["provider"] == "anthropic"


def test_csv_bodies_only_when_asked(gateway: RunningGateway) -> None:
    ids = make_traffic(gateway, gateway.admin_key)
    header, rows = csv_rows(export(gateway, format="csv", bodies="true"))
    assert header == expected_columns(bodies=True)
    assert header[-2:] == ["request_body", "response_body"]
    for row in rows:
        rec = gateway.record(row["id"])
        for name in BODIES:
            assert cell_value(name, row[name]) == rec[name], name
    tricky = next(r for r in rows if r["id"] == ids["tricky"])
    assert json.loads(tricky["request_body"])["messages"][0]["content"] == TRICKY

    header, _ = csv_rows(export(gateway, format="csv", bodies="false"))
    assert header == expected_columns()


def test_currency_parameter(start_gateway: Any) -> None:
    gw = start_gateway(currency={"code": "INR", "usd_rate": 84})
    make_traffic(gw, gw.admin_key)
    _, rows = csv_rows(export(gw, currency="usd"))
    priced = [r for r in rows if r["cost_usd"]]
    assert priced
    for row in priced:
        assert (row["currency"], float(row["cost"])) == ("USD", float(row["cost_usd"]))
    assert {r["currency"] for r in csv_rows(export(gw, currency="INR"))[1]} == {"INR"}

    resp = export(gw, currency="EUR")
    assert resp.status_code == 400
    assert resp.json()["error"]["param"] == "currency"


# ---- JSON Lines ----------------------------------------------------------------------------


def test_jsonl_lines_match_the_record_api(gateway: RunningGateway) -> None:
    ids = make_traffic(gateway, gateway.admin_key)
    resp = export(gateway, format="jsonl", bodies="true")
    assert resp.headers["content-type"] == "application/x-ndjson"
    assert re.search(r'filename="gatewatch-requests-\d{8}T\d{6}Z\.jsonl"',
                     resp.headers["content-disposition"])  # fmt: skip
    lines = jsonl_rows(resp)
    assert [line["id"] for line in lines] == sorted(ids.values(), reverse=True)
    for line in lines:
        assert list(line) == expected_columns(bodies=True)
        rec = gateway.record(line["id"])
        assert {k: v for k, v in line.items() if k not in ("cost", "currency")} == rec
        assert line["currency"] == "USD" and line["cost"] == rec["cost_usd"]
    tool = next(line for line in lines if line["id"] == ids["tool"])
    assert tool["tool_calls"][0]["name"] == "get_weather" and tool["stream"] is False

    plain = jsonl_rows(export(gateway, format="jsonl"))
    assert list(plain[0]) == expected_columns()


# ---- filters, pages, scope -------------------------------------------------------------------


def test_filters_narrow_the_export_like_the_list(gateway: RunningGateway) -> None:
    amy = gateway.create_key(user="amy", org="acme")
    bob = gateway.create_key(user="bob", org="acme")
    records = []
    for i in range(120):
        key = (amy, bob)[i % 2]
        openai_ = i % 3 != 0
        records.append(store_record(
            gateway, key, i,
            provider="openai" if openai_ else "anthropic",
            model_requested="gpt-4o-mini" if openai_ else "claude-haiku-4-5",
            model="gpt-4o-mini-2024-07-18" if openai_ else "claude-haiku-4-5",
            status="error" if i % 7 == 0 else "ok", status_code=500 if i % 7 == 0 else 200,
            tags=["a b", "nightly"] if i % 4 == 0 else ["bulk"],
            meta={"team": "search" if i % 5 == 0 else "ads"},
            workflow="triage" if i % 6 == 0 else None, client="codex" if i % 2 else None,
            session=f"s-{i % 4}", end_user=f"cust-{i % 3}",
        ))  # fmt: skip
    gateway.gateway.store.insert_records(records)
    middle = records[60].started

    cases: list[dict[str, Any]] = [
        {},
        {"provider": "anthropic"},
        {"model": "gpt-4o-mini"},
        {"status": "error"},
        {"status_code": "500"},
        {"tag": "nightly"},
        {"tag": ["nightly", "bulk"], "provider": "openai"},
        {"meta.team": "search"},
        {"initiator": "amy"},
        {"api_key": bob["id"]},
        {"workflow": "triage", "client": "codex"},
        {"session": "s-1", "end_user": "cust-2"},
        {"started_after": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(middle)) + "Z"},
        {"q": 'provider:openai tag:"a b"'},
        {"q": "meta.team:ads status:ok", "initiator": "bob"},
    ]
    for params in cases:
        listed = [r["id"] for r in gateway.records(**params)]
        assert export_ids(gateway, **params) == listed, params
        _, rows = csv_rows(export(gateway, format="csv", **params))
        assert [r["id"] for r in rows] == listed, params
    assert len(export_ids(gateway, tag="nightly")) == 30


def test_export_of_many_pages_is_complete_and_ordered(gateway: RunningGateway) -> None:
    key = gateway.create_key(user="amy", org="acme")
    store = gateway.gateway.store
    records = [store_record(gateway, key, i, tags=["bulk", "even" if i % 2 else "odd"])
               for i in range(12_000)]  # fmt: skip
    for start in range(0, len(records), 2000):
        store.insert_records(records[start : start + 2000])
    want = sorted((r.id for r in records), reverse=True)
    evens = sorted((r.id for r in records if "even" in r.tags), reverse=True)

    resp = export(gateway, format="csv")
    assert resp.headers["x-total-count"] == "12000"
    _, rows = csv_rows(resp)
    assert [r["id"] for r in rows] == want  # every record once, newest first
    assert export_ids(gateway) == want
    # a one-value tag filter pages through the tag's index instead
    assert export_ids(gateway, tag="even") == evens
    assert export_ids(gateway, tag="even", initiator="amy") == evens

    pages = list(store.export_pages(Scope("owner", "", ""), parse_filters([]), ["id"], "csv"))
    sizes = [p.count(b"\n") for p in pages]
    assert sum(sizes) == 12_000 and len(pages) >= 3 and max(sizes) == 5000
    assert b"".join(pages).decode().split() == want

    # a client that leaves half-way does not disturb the gateway
    with gateway.api() as api, api.stream("GET", "/api/v1/requests/export") as stream:
        next(stream.iter_bytes())
    assert export_ids(gateway, tag="even") == evens


def test_large_rows_make_smaller_pages(gateway: RunningGateway) -> None:
    key = gateway.create_key(user="amy", org="acme")
    blob = "x" * 400_000
    records = [store_record(gateway, key, i, request_body={"prompt": blob}) for i in range(40)]
    store = gateway.gateway.store
    store.insert_records(records)
    cols = ["id", "request_body"]
    pages = list(store.export_pages(Scope("owner", "", ""), parse_filters([]), cols, "jsonl"))
    assert sum(p.count(b"\n") for p in pages) == 40
    assert len(pages) > 1
    assert max(len(p) for p in pages) <= 9 << 20  # about 8 MB a page, never all 16 MB
    lines = jsonl_rows(export(gateway, format="jsonl", bodies="true"))
    assert [line["request_body"] for line in lines] == [{"prompt": blob}] * 40


def test_export_is_scoped_by_role(gateway: RunningGateway) -> None:
    admin = gateway.create_key(user="ann", org="acme", role="admin")
    amy = gateway.create_key(user="amy", org="acme")
    bob = gateway.create_key(user="bob", org="acme")
    gus = gateway.create_key(user="gus", org="globex")
    made: dict[str, list[str]] = {}
    records = []
    for i, key in enumerate([amy, bob, gus] * 4):
        rec = store_record(gateway, key, i)
        made.setdefault(key["user"], []).append(rec.id)
        records.append(rec)
    gateway.gateway.store.insert_records(records)

    def ids(key: dict[str, Any] | None, **params: Any) -> set[str]:
        got = export_ids(gateway, key["key"] if key else None, **params)
        assert len(got) == len(set(got))
        _, rows = csv_rows(export(gateway, key["key"] if key else None, format="csv", **params))
        assert {r["id"] for r in rows} == set(got)
        return set(got)

    assert ids(amy) == set(made["amy"])
    assert ids(bob) == set(made["bob"])
    assert ids(admin) == set(made["amy"] + made["bob"])
    assert ids(None) == set(made["amy"] + made["bob"] + made["gus"])
    # naming another org (or user) narrows; it never widens the caller's scope
    assert ids(admin, org="globex") == set()
    assert ids(admin, q="org:globex") == set()
    assert ids(amy, initiator="bob") == set()
    resp = export(gateway, admin["key"], org="globex")
    assert resp.headers["x-total-count"] == "0"
    assert resp.text.splitlines() == [",".join(expected_columns())]
    assert ids(None, org="globex") == set(made["gus"])


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"format": "xml"}, "format"),
        ({"format": ""}, "format"),
        ({"status": "bogus"}, "status"),
        ({"started_before": "yesterday"}, "started_before"),
        ({"colour": "red"}, "colour"),
        ({"q": "colour:red"}, "q"),
        ({"bodies": "maybe"}, "bodies"),
        ({"currency": "EUR"}, "currency"),
        ({"limit": "10"}, "limit"),
    ],
)
def test_bad_parameters_answer_400_naming_them(
    gateway: RunningGateway, params: dict[str, str], param: str
) -> None:
    resp = export(gateway, **params)
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert err["param"] == param and param in err["message"]


def test_export_needs_a_key_and_is_in_the_openapi_document(gateway: RunningGateway) -> None:
    assert httpx.get(f"{gateway.url}/api/v1/requests/export").status_code == 401
    doc = httpx.get(f"{gateway.url}/openapi.json").json()
    params = {p["name"] for p in doc["paths"]["/api/v1/requests/export"]["get"]["parameters"]}
    assert {"format", "bodies", "currency", "q"} <= params


def test_tool_calls_and_attempts_survive_in_both_formats(gateway: RunningGateway) -> None:
    key = gateway.create_key(user="amy", org="acme")
    rec = store_record(
        gateway, key, 0, stream=True, ttft_ms=81.125, end_user='cust "7", west',
        tool_calls=[ToolCall("lookup", "call_1", '{"q": "a,b\\n\\"c\\""}')],
        attempts=[Attempt("openai", "gpt-4o-mini", 500, "upstream_5xx", 12.5),
                  Attempt("openai-eu", "gpt-4o-mini", 200, "ok", 300.25)],
        meta={"ticket": "T-1, T-2", "note": 'say "hi"'}, tags=["x,y", 'z"'],
        request_body={"messages": [{"role": "user", "content": "é, ü\n\"ok\""}]},
        response_body=b"upstream said: not json, at all",
    )  # fmt: skip
    gateway.gateway.store.insert_records([rec])
    want = gateway.record(rec.id)
    assert want["response_body"] == "upstream said: not json, at all"

    _, rows = csv_rows(export(gateway, format="csv", bodies="true"))
    (row,) = rows
    for name in want:
        if name != "response_body":
            assert cell_value(name, row[name]) == want[name], name
    assert row["response_body"] == "upstream said: not json, at all"  # stored text, as is
    assert json.loads(row["tool_calls"]) == [
        {"name": "lookup", "call_id": "call_1", "arguments": '{"q": "a,b\\n\\"c\\""}'}]  # fmt: skip
    assert len(json.loads(row["attempts"])) == 2

    (line,) = jsonl_rows(export(gateway, format="jsonl", bodies="true"))
    assert {k: v for k, v in line.items() if k not in ("cost", "currency")} == want


def test_csv_null_cells_are_empty_and_text_survives(gateway: RunningGateway) -> None:
    key = gateway.create_key(user="amy", org="acme")
    odd = 'a,"\x01",b\r\n"\x01"'
    rec = store_record(gateway, key, 0, end_user=None, session="", workflow="(NULL)",
                       error_message=odd, client="\x01x", correlation_id=None)  # fmt: skip
    gateway.gateway.store.insert_records([rec])
    text = export(gateway, format="csv").text
    _, (row,) = csv_rows(export(gateway, format="csv"))
    assert (row["end_user"], row["session"], row["workflow"]) == ("", "", "(NULL)")
    assert (row["error_message"], row["client"], row["correlation_id"]) == (odd, "\x01x", "")
    # a null is an unquoted empty cell (databases load it as NULL), an empty text a quoted one
    cols = ["correlation_id", "id", "end_user", "session", "error_type"]
    (page,) = gateway.gateway.store.export_pages(
        Scope("owner", "", ""), parse_filters([]), cols, "csv"
    )
    assert page == f',{rec.id},,"",\r\n'.encode()
    assert ',"(NULL)",' in text  # text that reads like a null stays text


def test_csv_runs_of_null_cells_and_marker_like_text(gateway: RunningGateway) -> None:
    """Null cells side by side (each made empty though the previous one shares its comma), at
    the end of a line, and text that holds the marker or reads like it, in every position."""
    key = gateway.create_key(user="amy", org="acme")
    # (a text of exactly U+0001 exports empty on SQLite, see _sqlite_export, and as itself on
    # PostgreSQL, whose lines are built in Python: not among these)
    texts = [None, None, None, "", "\x01x", '"\x01"', ',"\x01",', '\x01"', "x"]
    cols = ["end_user", "session", "workflow", "client", "error_type", "error_message"]
    rnd = random.Random(5)
    recs = [store_record(gateway, key, i, **{c: rnd.choice(texts) for c in cols})
            for i in range(300)]  # fmt: skip
    gateway.gateway.store.insert_records(recs)
    pages = gateway.gateway.store.export_pages(
        Scope("owner", "", ""), parse_filters([]), ["id", *cols], "csv"
    )
    rows = list(csv.reader(io.StringIO(b"".join(pages).decode(), newline="")))
    want = sorted(recs, key=lambda r: r.id, reverse=True)
    assert [r[0] for r in rows] == [r.id for r in want]
    for row, rec in zip(rows, want, strict=True):
        assert row[1:] == [getattr(rec, c) or "" for c in cols], rec.id
    text = b"".join(gateway.gateway.store.export_pages(
        Scope("owner", "", ""), parse_filters([]), ["id", *cols], "csv")).decode()  # fmt: skip
    assert ",,,," in text and ',"",' in text  # nulls empty and unquoted, empty text quoted


def test_a_page_concatenated_out_of_order_is_read_row_by_row(
    gateway: RunningGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = gateway.create_key(user="amy", org="acme")
    records = [store_record(gateway, key, i) for i in range(1200)]
    store = gateway.gateway.store
    store.insert_records(records)
    args = (Scope("owner", "", ""), parse_filters([]), ["id", "user"], "csv")
    fast = b"".join(store.export_pages(*args))
    monkeypatch.setattr("gatewatch.store.sqlite._newest_first", lambda ids: False)
    slow = b"".join(store.export_pages(*args))
    assert slow == fast
    assert fast.decode().split() == [f'{r},"amy"' for r in sorted((r.id for r in records),
                                                                   reverse=True)]  # fmt: skip
