"""The management API (§A) against a real gateway: keys, users, orgs, roles and the request log."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from conftest import RunningGateway

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def chat(gw: RunningGateway, key: str, text: str = "hello there", **body: Any) -> httpx.Response:
    """One chat completion through the proxy with ``key``."""
    payload = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], **body}
    return httpx.post(f"{gw.url}/v1/chat/completions", json=payload, timeout=30,
                      headers={"Authorization": f"Bearer {key}"})  # fmt: skip


def claude(gw: RunningGateway, key: str, text: str = "hi claude") -> httpx.Response:
    payload = {"model": "claude-haiku-4-5", "max_tokens": 100,
               "messages": [{"role": "user", "content": text}]}  # fmt: skip
    return httpx.post(f"{gw.url}/v1/messages", json=payload, timeout=30,
                      headers={"x-api-key": key, "anthropic-version": "2023-06-01"})  # fmt: skip


def request_id(resp: httpx.Response) -> str:
    assert resp.status_code == 200, resp.text
    return resp.headers["x-gatewatch-request-id"]


def error_param(resp: httpx.Response) -> tuple[str | None, str]:
    err = resp.json()["error"]
    return err.get("param"), err["message"]


# ---- keys ----------------------------------------------------------------------------------------


def test_create_key_shows_the_secret_once_and_it_works(gateway: RunningGateway) -> None:
    with gateway.api() as api:
        r = api.post("/api/v1/keys", json={"user": "alice", "org": "acme", "name": "laptop"})
        assert r.status_code == 201, r.text
        created = r.json()
        secret = created["key"]
        assert secret.startswith("gw-") and len(secret) > 20
        assert (created["user"], created["org"], created["name"], created["role"]) == (
            "alice", "acme", "laptop", "member")  # fmt: skip

        # the user and the organization were created by name
        users = api.get("/api/v1/users").json()["results"]
        assert [(u["name"], u["org"]) for u in users if u["name"] == "alice"] == [
            ("alice", "acme")]  # fmt: skip
        assert "acme" in [o["name"] for o in api.get("/api/v1/orgs").json()["results"]]

        # never shown again
        listed = api.get("/api/v1/keys")
        one = api.get(f"/api/v1/keys/{created['id']}")
        assert one.status_code == 200 and one.json()["name"] == "laptop"
        for resp in (listed, one):
            assert secret not in resp.text
            assert secret[7:] not in resp.text
        assert created["id"] in [k["id"] for k in listed.json()["results"]]

    rid = request_id(chat(gateway, secret))
    rec = gateway.record(rid)
    assert (rec["user"], rec["org"], rec["api_key_id"]) == ("alice", "acme", created["id"])


def test_patch_key_changes_limits_and_role(gateway: RunningGateway) -> None:
    key = gateway.create_key(user="bob", org="acme")
    with gateway.api() as api:
        r = api.patch(f"/api/v1/keys/{key['id']}",
                      json={"budget_usd": 12.5, "budget_period": "week", "rpm": 60, "tpm": 9000,
                            "role": "admin"})  # fmt: skip
        assert r.status_code == 200, r.text
        got = api.get(f"/api/v1/keys/{key['id']}").json()
    assert (got["budget_usd"], got["budget_period"], got["rpm"], got["tpm"], got["role"]) == (
        12.5, "week", 60, 9000, "admin")  # fmt: skip
    # the new role takes effect at once: bob now sees his org's keys
    other = gateway.create_key(user="dave", org="acme")
    with gateway.api(key["key"]) as api:
        ids = [k["id"] for k in api.get("/api/v1/keys").json()["results"]]
    assert other["id"] in ids


def test_patch_key_rejects_bad_values(gateway: RunningGateway) -> None:
    key = gateway.create_key(user="bob", org="acme")
    with gateway.api() as api:
        for body, param in (
            ({"rpm": 0}, "rpm"),
            ({"role": "king"}, "role"),
            ({"budget_usd": -1}, "budget_usd"),
            ({"colour": "red"}, "colour"),
        ):
            r = api.patch(f"/api/v1/keys/{key['id']}", json=body)
            assert r.status_code == 400, (body, r.text)
            assert error_param(r)[0] == param


def test_delete_key_revokes_at_once(gateway: RunningGateway) -> None:
    key = gateway.create_key(user="erin", org="acme", role="admin")
    request_id(chat(gateway, key["key"]))  # works, and is now cached by the gateway
    with gateway.api(key["key"]) as api:
        assert api.get("/api/v1/keys").status_code == 200
    with gateway.api() as api:
        r = api.delete(f"/api/v1/keys/{key['id']}")
        assert r.status_code == 200 and r.json()["revoked"] is True
    assert chat(gateway, key["key"]).status_code == 401
    assert claude(gateway, key["key"]).status_code == 401
    with gateway.api(key["key"]) as api:
        assert api.get("/api/v1/keys").status_code == 401
        assert api.get("/api/v1/requests").status_code == 401


def test_api_needs_a_valid_key(gateway: RunningGateway) -> None:
    assert httpx.get(f"{gateway.url}/api/v1/requests").status_code == 401
    with gateway.api("gw-not-a-real-key-000000000000") as api:
        r = api.get("/api/v1/requests")
    assert r.status_code == 401 and r.json()["error"]["message"]


# ---- roles and scope -----------------------------------------------------------------------------


def test_admin_sees_only_its_organization(gateway: RunningGateway) -> None:
    acme_admin = gateway.create_key(user="ann", org="acme", role="admin")
    acme_member = gateway.create_key(user="amy", org="acme")
    globex_member = gateway.create_key(user="gus", org="globex")
    acme_ids = {request_id(chat(gateway, acme_member["key"])) for _ in range(2)}
    globex_id = request_id(chat(gateway, globex_member["key"]))
    gateway.wait_records()

    with gateway.api(acme_admin["key"]) as api:
        page = api.get("/api/v1/requests").json()
        assert {r["id"] for r in page["results"]} == acme_ids
        assert page["count"] == 2
        assert api.get(f"/api/v1/requests/{globex_id}").status_code == 404
        # filtering by the other org never widens the scope
        assert api.get("/api/v1/requests", params={"org": "globex"}).json()["count"] == 0

        keys = api.get("/api/v1/keys").json()
        assert {k["org"] for k in keys["results"]} == {"acme"}
        assert keys["count"] == len(keys["results"]) == 2
        assert api.get(f"/api/v1/keys/{globex_member['id']}").status_code == 404
        assert api.patch(f"/api/v1/keys/{globex_member['id']}",
                         json={"rpm": 1}).status_code == 404  # fmt: skip
        assert api.delete(f"/api/v1/keys/{globex_member['id']}").status_code == 404
        users = api.get("/api/v1/users").json()["results"]
        assert {u["org"] for u in users} == {"acme"}
        assert [o["name"] for o in api.get("/api/v1/orgs").json()["results"]] == ["acme"]

        r = api.post("/api/v1/keys", json={"user": "mallory", "org": "globex"})
        assert r.status_code == 403, r.text
        r = api.post("/api/v1/keys", json={"user": "mallory", "role": "owner"})
        assert r.status_code == 403, r.text
        r = api.patch(f"/api/v1/keys/{acme_member['id']}", json={"role": "owner"})
        assert r.status_code == 403, r.text
        # in its own org an admin may create keys (org defaults to its own)
        r = api.post("/api/v1/keys", json={"user": "newbie"})
        assert r.status_code == 201 and r.json()["org"] == "acme"

    # the 403s above created nothing in globex
    with gateway.api() as api:
        names = [k["user"] for k in api.get("/api/v1/keys").json()["results"]]
    assert "mallory" not in names
    assert globex_member["key"]  # still valid
    assert chat(gateway, globex_member["key"]).status_code == 200


def test_member_sees_only_its_own_records(gateway: RunningGateway) -> None:
    amy = gateway.create_key(user="amy", org="acme")
    bob = gateway.create_key(user="bob", org="acme")
    amy_ids = {request_id(chat(gateway, amy["key"], f"amy {i}")) for i in range(3)}
    bob_ids = {request_id(chat(gateway, bob["key"], f"bob {i}")) for i in range(2)}

    for who, mine, theirs in ((amy, amy_ids, bob_ids), (bob, bob_ids, amy_ids)):
        assert {r["id"] for r in gateway.records(who["key"])} == mine
        with gateway.api(who["key"]) as api:
            assert api.get("/api/v1/requests").json()["count"] == len(mine)
            assert api.get("/api/v1/requests", params={"initiator": "me"}).json()["count"] == len(
                mine)  # fmt: skip
            for rid in theirs:
                assert api.get(f"/api/v1/requests/{rid}").status_code == 404
            for rid in mine:
                assert api.get(f"/api/v1/requests/{rid}").status_code == 200
            # a member cannot manage keys
            assert api.post("/api/v1/keys", json={"user": "x"}).status_code == 403
            assert api.delete(f"/api/v1/keys/{amy['id']}").status_code in (403, 404)
    # the owner sees both
    assert {r["id"] for r in gateway.records()} >= amy_ids | bob_ids


# ---- the request log -----------------------------------------------------------------------------


@pytest.mark.parametrize("limit", ["0", "1001", "abc", "-5"])
def test_bad_limit_is_400_naming_limit(gateway: RunningGateway, limit: str) -> None:
    with gateway.api() as api:
        r = api.get("/api/v1/requests", params={"limit": limit})
    assert r.status_code == 400
    param, message = error_param(r)
    assert param == "limit" and "limit" in message


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"colour": "red"}, "colour"),
        ({"status": "bogus"}, "status"),
        ({"status_code": "abc"}, "status_code"),
        ({"started_after": "notatime"}, "started_after"),
        ({"q": "colour:red"}, "q"),
    ],
)
def test_bad_filter_is_400_naming_it(
    gateway: RunningGateway, params: dict[str, str], param: str
) -> None:
    with gateway.api() as api:
        r = api.get("/api/v1/requests", params=params)
    assert r.status_code == 400
    got, message = error_param(r)
    assert got == param and param in message


def test_filters_and_q_through_the_api(gateway: RunningGateway) -> None:
    key = gateway.create_key(user="amy", org="acme")
    tagged = httpx.post(
        f"{gateway.url}/v1/chat/completions", timeout=30,
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "tagged"}]},
        headers={"Authorization": f"Bearer {key['key']}", "x-gatewatch-tags": "a b,nightly",
                 "x-gatewatch-workflow": "triage"},
    )  # fmt: skip
    tagged_id = request_id(tagged)
    plain_id = request_id(chat(gateway, key["key"]))
    claude_id = request_id(claude(gateway, key["key"]))
    gateway.wait_records()

    def ids(**params: str) -> set[str]:
        return {r["id"] for r in gateway.records(**params)}

    assert ids(q='provider:openai tag:"a b"') == {tagged_id}
    assert ids(q="provider:openai") == {tagged_id, plain_id}
    assert ids(provider="anthropic") == {claude_id}
    assert ids(model="gpt-4o-mini") == {tagged_id, plain_id}  # requested name
    assert ids(model="gpt-4o-mini-2024-07-18") == {tagged_id, plain_id}  # answered name
    assert ids(q="workflow:triage", initiator="amy") == {tagged_id}
    assert ids(tag="nightly", provider="anthropic") == set()


def test_keyset_pagination_gives_every_record_once(gateway: RunningGateway) -> None:
    made = [request_id(chat(gateway, gateway.admin_key, f"n{i}")) for i in range(7)]
    gateway.wait_records()
    seen: list[str] = []
    after: str | None = None
    with gateway.api() as api:
        while True:
            params: dict[str, Any] = {"limit": 3, **({"after_id": after} if after else {})}
            page = api.get("/api/v1/requests", params=params).json()
            assert page["count"] == 7
            assert len(page["results"]) <= 3
            seen += [r["id"] for r in page["results"]]
            after = page["next_after_id"]
            if after is None:
                break
    assert seen == list(reversed(made))  # newest first, each once


def test_get_request_has_bodies_tool_calls_and_attempts(gateway: RunningGateway) -> None:
    resp = chat(gateway, gateway.admin_key, "what's the weather in Paris?", tools=[WEATHER_TOOL])
    rid = request_id(resp)
    call = resp.json()["choices"][0]["message"]["tool_calls"][0]
    rec = gateway.record(rid)
    assert rec["id"] == rid
    assert rec["last_user_prompt"] == "what's the weather in Paris?"
    assert rec["request_body"]["messages"][0]["content"] == "what's the weather in Paris?"
    assert rec["request_body"]["tools"][0]["function"]["name"] == "get_weather"
    assert rec["response_body"]["choices"][0]["message"]["tool_calls"][0]["id"] == call["id"]
    assert rec["tool_calls"] == [{"name": "get_weather", "call_id": call["id"],
                                  "arguments": call["function"]["arguments"]}]  # fmt: skip
    assert len(rec["attempts"]) == 1
    attempt = rec["attempts"][0]
    assert (attempt["provider"], attempt["status_code"], attempt["reason"]) == ("openai", 200, "ok")
    assert rec["provider"] == "openai" and rec["status"] == "ok" and rec["status_code"] == 200
    # bodies are only on the single record, not in the list
    listed = gateway.records()
    assert "request_body" not in listed[0]

    with gateway.api() as api:
        assert api.get("/api/v1/requests/01J0000000000000000000000Z").status_code == 404


def test_openapi_document_lists_the_api(gateway: RunningGateway) -> None:
    r = httpx.get(f"{gateway.url}/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert doc["openapi"].startswith("3.")
    paths = set(doc["paths"])
    for path in ("/api/v1/requests", "/api/v1/requests/{request_id}", "/api/v1/keys",
                 "/api/v1/users", "/api/v1/orgs"):  # fmt: skip
        assert path in paths, path
    assert {"get", "post"} <= set(doc["paths"]["/api/v1/keys"])


# ---- users and orgs ------------------------------------------------------------------------------


def test_users_and_orgs_create_list_patch(gateway: RunningGateway) -> None:
    with gateway.api() as api:
        r = api.post("/api/v1/orgs", json={"name": "initech", "budget_usd": 100})
        assert r.status_code == 201, r.text
        org = r.json()
        assert (org["name"], org["budget_usd"], org["revoked"]) == ("initech", 100, False)
        assert api.post("/api/v1/orgs", json={"name": "initech"}).status_code == 409

        r = api.post("/api/v1/users", json={"name": "peter", "org": "initech", "rpm": 30})
        assert r.status_code == 201, r.text
        user = r.json()
        assert (user["name"], user["org"], user["rpm"]) == ("peter", "initech", 30)

        assert user["id"] in [u["id"] for u in api.get("/api/v1/users").json()["results"]]
        assert org["id"] in [o["id"] for o in api.get("/api/v1/orgs").json()["results"]]

        r = api.patch(f"/api/v1/users/{user['id']}", json={"budget_usd": 5, "tpm": 1000})
        assert r.status_code == 200, r.text
        got = api.get(f"/api/v1/users/{user['id']}").json()
        assert (got["budget_usd"], got["tpm"], got["rpm"]) == (5, 1000, 30)
        r = api.patch(f"/api/v1/orgs/{org['id']}", json={"budget_period": "day"})
        assert r.status_code == 200 and r.json()["budget_period"] == "day"


def test_revoking_a_user_or_org_disables_its_keys(gateway: RunningGateway) -> None:
    peter = gateway.create_key(user="peter", org="initech")
    peter2 = gateway.create_key(user="peter", org="initech", name="peter-ci")
    milton = gateway.create_key(user="milton", org="initech")
    other = gateway.create_key(user="amy", org="acme")
    for k in (peter, peter2, milton, other):
        request_id(chat(gateway, k["key"]))  # all work (and are cached)

    with gateway.api() as api:
        r = api.delete(f"/api/v1/users/{peter['user_id']}")
        assert r.status_code == 200 and r.json()["revoked"] is True
    assert chat(gateway, peter["key"]).status_code == 401
    assert chat(gateway, peter2["key"]).status_code == 401
    with gateway.api(peter["key"]) as api:
        assert api.get("/api/v1/requests").status_code == 401
    request_id(chat(gateway, milton["key"]))  # the user's colleague is unaffected

    with gateway.api() as api:
        r = api.delete(f"/api/v1/orgs/{milton['org_id']}")
        assert r.status_code == 200 and r.json()["revoked"] is True
    assert chat(gateway, milton["key"]).status_code == 401
    with gateway.api(milton["key"]) as api:
        assert api.get("/api/v1/keys").status_code == 401
    request_id(chat(gateway, other["key"]))  # other organizations are unaffected


def test_admin_cannot_manage_other_orgs_users(gateway: RunningGateway) -> None:
    admin = gateway.create_key(user="ann", org="acme", role="admin")
    outsider = gateway.create_key(user="gus", org="globex")
    with gateway.api(admin["key"]) as api:
        assert api.post("/api/v1/users", json={"name": "x", "org": "globex"}).status_code == 403
        assert api.post("/api/v1/orgs", json={"name": "newco"}).status_code == 403
        assert api.delete(f"/api/v1/users/{outsider['user_id']}").status_code == 404
        assert api.get(f"/api/v1/users/{outsider['user_id']}").status_code == 404
        assert api.delete(f"/api/v1/orgs/{outsider['org_id']}").status_code in (403, 404)
    request_id(chat(gateway, outsider["key"]))
