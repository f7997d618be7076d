"""The ``gatewatch`` command (§L) against a running gateway, run as a user runs it: a subprocess,
pointed at the gateway with --url/--token or GATEWATCH_URL/GATEWATCH_TOKEN."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from conftest import RunningGateway

GATEWATCH = str(Path(sys.executable).with_name("gatewatch"))
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWATCH_")}
    env.update(COLUMNS="200", NO_COLOR="1", **extra)
    return env


def cli(
    gw: RunningGateway, *args: str, token: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``gatewatch <args> --url … --token …``."""
    opts = ["--url", gw.url, "--token", token or gw.admin_key]
    return subprocess.run([GATEWATCH, *args, *opts], capture_output=True, text=True, timeout=60,
                          env=_env())  # fmt: skip


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def chat(gw: RunningGateway, key: str, text: str = "hello there", **body: Any) -> str:
    payload = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], **body}
    r = httpx.post(f"{gw.url}/v1/chat/completions", json=payload, timeout=30,
                   headers={"Authorization": f"Bearer {key}"})  # fmt: skip
    assert r.status_code == 200, r.text
    return r.headers["x-gatewatch-request-id"]


def claude(gw: RunningGateway, key: str) -> str:
    payload = {"model": "claude-haiku-4-5", "max_tokens": 50,
               "messages": [{"role": "user", "content": "hi claude"}]}  # fmt: skip
    r = httpx.post(f"{gw.url}/v1/messages", json=payload, timeout=30,
                   headers={"x-api-key": key, "anthropic-version": "2023-06-01"})  # fmt: skip
    assert r.status_code == 200, r.text
    return r.headers["x-gatewatch-request-id"]


def test_keys_create_list_revoke(gateway: RunningGateway) -> None:
    out = ok(cli(gateway, "keys", "create", "--user", "alice", "--org", "acme", "--name", "laptop"))
    secrets = re.findall(r"gw-[A-Za-z0-9_\-]{20,}", out)
    assert len(secrets) == 1, out  # printed once
    secret = secrets[0]
    assert chat(gateway, secret)  # the new key works on the proxy

    created = json.loads(ok(cli(gateway, "keys", "list", "--format", "json")))
    mine = [k for k in created if k["name"] == "laptop"]
    assert len(mine) == 1
    key = mine[0]
    assert (key["user"], key["org"], key["role"], key["revoked"]) == ("alice", "acme", "member",
                                                                       False)  # fmt: skip

    table = ok(cli(gateway, "keys", "list"))
    assert key["id"] in table and "laptop" in table and "acme" in table
    assert secret not in table

    out = ok(cli(gateway, "keys", "revoke", key["id"]))
    assert key["id"] in out
    r = httpx.post(f"{gateway.url}/v1/chat/completions", timeout=30,
                   json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]},
                   headers={"Authorization": f"Bearer {secret}"})  # fmt: skip
    assert r.status_code == 401
    proc = cli(gateway, "requests", "list", token=secret)
    assert proc.returncode != 0


def test_keys_create_json_format(gateway: RunningGateway) -> None:
    row = json.loads(ok(cli(gateway, "keys", "create", "--user", "bob", "--org", "acme",
                            "--role", "admin", "--rpm", "60", "--format", "json")))  # fmt: skip
    assert row["key"].startswith("gw-")
    assert (row["user"], row["org"], row["role"], row["rpm"]) == ("bob", "acme", "admin", 60)


def test_requests_list_formats_and_filters(gateway: RunningGateway) -> None:
    member = gateway.create_key(user="amy", org="acme")
    mine = [chat(gateway, gateway.admin_key, f"question {i}") for i in range(2)]
    claude_id = claude(gateway, gateway.admin_key)
    amys = chat(gateway, member["key"], "amy asks")
    gateway.wait_records()
    everything = {*mine, claude_id, amys}

    rows = json.loads(ok(cli(gateway, "requests", "list", "--format", "json")))
    assert {r["id"] for r in rows} == everything
    assert [r["id"] for r in rows][:1] == [amys]  # newest first
    by_id = {r["id"]: r for r in rows}
    assert by_id[claude_id]["provider"] == "anthropic"
    assert by_id[amys]["user"] == "amy"

    text = ok(cli(gateway, "requests", "list", "--format", "csv"))
    table = list(csv.DictReader(io.StringIO(text)))
    assert {r["id"] for r in table} == everything
    assert {"id", "started_at", "provider", "model", "input_tokens", "cost_usd"} <= set(table[0])
    assert {r["provider"] for r in table if r["id"] == claude_id} == {"anthropic"}

    out = ok(cli(gateway, "requests", "list", "--format", "table"))
    for rid in everything:
        assert rid in out
    assert "claude-haiku-4-5" in out and "gpt-4o-mini" in out

    def ids(*args: str) -> set[str]:
        rows = json.loads(ok(cli(gateway, "requests", "list", "--format", "json", *args)))
        return {r["id"] for r in rows}

    assert ids("--provider", "anthropic") == {claude_id}
    assert ids("--model", "gpt-4o-mini") == {*mine, amys}
    assert ids("--initiator", "me") == {*mine, claude_id}
    assert ids("--initiator", "amy", "--provider", "openai") == {amys}
    assert len(ids("--limit", "2")) == 2


def test_requests_list_with_environment_variables(gateway: RunningGateway) -> None:
    rid = chat(gateway, gateway.admin_key)
    gateway.wait_records()
    env = _env(GATEWATCH_URL=gateway.url, GATEWATCH_TOKEN=gateway.admin_key)
    proc = subprocess.run([GATEWATCH, "requests", "list", "--format", "json"],
                          capture_output=True, text=True, timeout=60, env=env)  # fmt: skip
    assert [r["id"] for r in json.loads(ok(proc))] == [rid]


def test_requests_show_prints_prompt_and_tool_calls(gateway: RunningGateway) -> None:
    rid = chat(gateway, gateway.admin_key, "what's the weather in Paris?", tools=[WEATHER_TOOL])
    gateway.wait_records()
    rec = json.loads(ok(cli(gateway, "requests", "show", rid)))
    assert rec["id"] == rid
    assert rec["last_user_prompt"] == "what's the weather in Paris?"
    assert [(t["name"], json.loads(t["arguments"])) for t in rec["tool_calls"]] == [
        ("get_weather", {"city": "Paris"})]  # fmt: skip
    assert rec["attempts"][0]["provider"] == "openai"
    assert rec["request_body"]["tools"][0]["function"]["name"] == "get_weather"

    proc = cli(gateway, "requests", "show", "01J0000000000000000000000Z")
    assert proc.returncode != 0
    assert "404" in proc.stderr


def test_member_sees_only_its_own_records(gateway: RunningGateway) -> None:
    amy = gateway.create_key(user="amy", org="acme")
    bob = gateway.create_key(user="bob", org="acme")
    amys = {chat(gateway, amy["key"], f"amy {i}") for i in range(2)}
    bobs = chat(gateway, bob["key"], "bob")
    gateway.wait_records()

    rows = json.loads(ok(cli(gateway, "requests", "list", "--format", "json", token=amy["key"])))
    assert {r["id"] for r in rows} == amys
    proc = cli(gateway, "requests", "show", bobs, token=amy["key"])
    assert proc.returncode != 0 and "404" in proc.stderr
    assert bobs not in proc.stdout


def test_bad_token_fails_clearly(gateway: RunningGateway) -> None:
    proc = cli(gateway, "requests", "list", token="gw-wrong-token-000000000000000000")
    assert proc.returncode != 0
    assert "401" in proc.stderr and "key" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""

    proc = subprocess.run([GATEWATCH, "keys", "list", "--url", gateway.url],
                          capture_output=True, text=True, timeout=60, env=_env())  # fmt: skip
    assert proc.returncode != 0
    assert "token" in proc.stderr.lower() and "Traceback" not in proc.stderr


def test_unreachable_gateway_fails_clearly(tmp_path: Path) -> None:
    proc = subprocess.run(
        [GATEWATCH, "requests", "list", "--url", "http://127.0.0.1:9", "--token", "gw-x"],
        capture_output=True, text=True, timeout=60, env=_env(),
    )  # fmt: skip
    assert proc.returncode != 0
    assert "127.0.0.1:9" in proc.stderr and "Traceback" not in proc.stderr


# ---- export and the record filters ---------------------------------------------------------------

MULTILINE = 'line one, with a comma\nline "two"\r\nline three'


def _export_api(gw: RunningGateway, **params: str) -> httpx.Response:
    with gw.api() as api:
        r = api.get("/api/v1/requests/export", params=params)
    assert r.status_code == 200, r.text
    return r


def _traffic(gw: RunningGateway) -> dict[str, str]:
    ids = {
        "plain": chat(gw, gw.admin_key),
        "multiline": chat(gw, gw.admin_key, MULTILINE),
        "claude": claude(gw, gw.admin_key),
    }
    headers = {"Authorization": f"Bearer {gw.admin_key}", "x-gatewatch-tags": "nightly",
               "x-gatewatch-meta-team": "search"}  # fmt: skip
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "tagged"}]}
    r = httpx.post(f"{gw.url}/v1/chat/completions", timeout=30, headers=headers, json=body)
    assert r.status_code == 200, r.text
    ids["tagged"] = r.headers["x-gatewatch-request-id"]
    gw.wait_records()
    return ids


def test_export_to_a_file_writes_what_the_api_exports(gateway: RunningGateway,
                                                      tmp_path: Path) -> None:  # fmt: skip
    ids = _traffic(gateway)
    (tmp_path / "out").mkdir()
    out = tmp_path / "out" / "requests.csv"
    proc = cli(gateway, "export", "--format", "csv", "-o", str(out))
    assert ok(proc) == ""  # the file gets the data; stdout stays empty
    assert re.fullmatch(rf"wrote 4 records to {re.escape(str(out))} in \d+\.\d s\n", proc.stderr)
    assert list(out.parent.iterdir()) == [out]  # no partial file left behind

    def parse(text: str) -> list[dict[str, str]]:
        return list(csv.DictReader(io.StringIO(text, newline="")))

    rows = parse(out.read_bytes().decode())
    assert rows == parse(_export_api(gateway, format="csv").text)
    assert [r["id"] for r in rows] == sorted(ids.values(), reverse=True)
    assert next(r for r in rows if r["id"] == ids["multiline"])["last_user_prompt"] == MULTILINE

    proc = cli(gateway, "export", "--format", "jsonl", "--bodies")
    lines = [json.loads(line) for line in ok(proc).splitlines()]
    api = _export_api(gateway, format="jsonl", bodies="true").text
    assert lines == [json.loads(x) for x in api.splitlines()]
    assert lines[0]["request_body"]["messages"]
    assert "wrote 4 records to stdout" in proc.stderr


def test_export_filters_and_errors(gateway: RunningGateway, tmp_path: Path) -> None:
    ids = _traffic(gateway)

    def exported(*args: str) -> list[str]:
        text = ok(cli(gateway, "export", "--format", "jsonl", *args))
        return [json.loads(line)["id"] for line in text.splitlines()]

    assert exported("--provider", "anthropic") == [ids["claude"]]
    assert exported("--tag", "nightly", "--meta", "team=search") == [ids["tagged"]]
    assert exported("--meta", "team=ads") == []
    assert exported("--q", "provider:openai status:ok", "--since", "1h") == sorted(
        [ids["plain"], ids["multiline"], ids["tagged"]], reverse=True)  # fmt: skip
    assert exported("--started-before", "2001-01-01") == []

    out = tmp_path / "x.csv"
    for args, code, words in (
        (("--format", "xml"), 2, ("--format",)),
        (("--meta", "team"), 2, ("--meta", "NAME=VALUE")),
        (("--since", "lately"), 2, ("--since",)),
        (("--status", "bogus"), 1, ("400", "status")),
        (("--currency", "EUR"), 1, ("400", "currency")),
    ):
        proc = cli(gateway, "export", "-o", str(out), *args)
        assert proc.returncode == code, (args, proc.stderr)
        assert all(w in proc.stderr for w in words), (args, proc.stderr)
        assert "Traceback" not in proc.stderr
        assert not out.exists() and not (tmp_path / "x.csv.part").exists()
    proc = cli(gateway, "export", "-o", str(out), token="gw-wrong-token-000000000000000000")
    assert proc.returncode == 1 and "401" in proc.stderr and not out.exists()
    proc = subprocess.run([GATEWATCH, "export", "--url", "http://127.0.0.1:9", "--token", "gw-x"],
                          capture_output=True, text=True, timeout=60, env=_env())  # fmt: skip
    assert proc.returncode == 1 and "127.0.0.1:9" in proc.stderr


def test_requests_list_takes_every_filter(gateway: RunningGateway) -> None:
    ids = _traffic(gateway)

    def listed(*args: str) -> list[str]:
        text = ok(cli(gateway, "requests", "list", "--format", "csv", *args))
        return [r["id"] for r in csv.DictReader(io.StringIO(text, newline=""))]

    assert listed("--provider", "anthropic") == [ids["claude"]]
    assert listed("--provider", "openai", "--tag", "nightly") == [ids["tagged"]]
    assert listed("--meta", "team=search", "--org", "default") == [ids["tagged"]]
    assert listed("--status-code", "200", "--since", "24h", "--limit", "2") == sorted(
        ids.values(), reverse=True)[:2]  # fmt: skip
    assert listed("--api-key", "admin", "--end-user", "nobody") == []
    assert listed("--client", "nope") == []
    proc = cli(gateway, "requests", "list", "--since", "1h", "--started-after", "2020-01-01")
    assert proc.returncode == 2 and "--since" in proc.stderr


def test_rollups_rebuild_reads_every_record(tmp_path: Path) -> None:
    from gatewatch.records import Record, new_id
    from gatewatch.store import SQLiteStore

    db = tmp_path / "gw.db"
    store = SQLiteStore(str(db))
    store.migrate()
    now = time.time()
    store.insert_records([
        Record(id=new_id(now - i * 3600), started=now - i * 3600, ended=now - i * 3600 + 0.5,
               endpoint="/v1/chat/completions", provider="openai", model="gpt-4o-mini",
               status_code=200, input_tokens=10, output_tokens=5, cost_usd=0.001)
        for i in range(50)
    ])  # fmt: skip
    store.close()
    config = tmp_path / "gatewatch.yaml"
    config.write_text(f"database: sqlite:///{db}\n")
    proc = subprocess.run([GATEWATCH, "rollups", "rebuild", "--config", str(config)],
                          capture_output=True, text=True, timeout=120, env=_env())  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"rebuilt the usage rollups from 50 records in \d+\.\d s", proc.stderr)

    config.write_text("database: mysql://nowhere\n")
    proc = subprocess.run([GATEWATCH, "rollups", "rebuild", "--config", str(config)],
                          capture_output=True, text=True, timeout=60, env=_env())  # fmt: skip
    assert proc.returncode == 2 and "database" in proc.stderr and "Traceback" not in proc.stderr


def test_export_counts_csv_records_across_any_chunking() -> None:
    """The progress bar and the final line count records, not lines: a quoted cell may hold
    line breaks and quotes, and the stream may break anywhere."""
    from gatewatch.cli import _CsvRecords

    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["id", "prompt", "tags"])
    for i in range(40):
        writer.writerow([f"r{i}", MULTILINE if i % 3 else 'say "hi",\n"there"\n', '["a","b"]'])
    data = buf.getvalue().encode()
    for size in (1, 2, 3, 7, 64, len(data)):
        counter = _CsvRecords()
        advanced = sum(counter.feed(data[i : i + size]) for i in range(0, len(data), size))
        assert (counter.count, advanced) == (40, 40), size
