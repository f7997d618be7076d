"""Role scoping (§A), tested as an attacker would: every read endpoint, asked by an admin or a
member key of one organization, with filters, search strings and groupings that name another
organization (or, for a member, a colleague), must answer as if that data did not exist.

One gateway for the module: two organizations, ``acme`` and ``globex``, each with an admin and
two members sending distinguishable traffic (own models, tags, workflows, end users, clients,
sessions and ``meta.team``), plus the bootstrap owner key. Expected values are computed from
the owner's view of the request log (``GET /api/v1/requests``), independently of the analytics
code under test; each "nothing leaks" check has a positive control that the owner does see it.
"""

from __future__ import annotations

import contextlib
import csv
import io
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from conftest import RunningGateway, ServerThread, Upstream, gateway_settings
from ulid import ULID

from gatewatch.app import Gateway

# user → (org, role, model, API family, requests sent, user agent, detected client)
PEOPLE: dict[str, tuple[str, str, str, str, int, str, str]] = {
    "amy": ("acme", "member", "gpt-4o-mini", "openai", 3, "claude-cli/1.0.30 (external)",
            "claude-code"),
    "abe": ("acme", "member", "gpt-4o", "openai", 2, "codex_cli_rs/0.20.0", "codex"),
    "ann": ("acme", "admin", "gpt-4o-mini", "openai", 1, "Cline/3.20", "cline"),
    "gus": ("globex", "member", "gpt-4.1-nano", "openai", 4, "Cursor/1.4", "cursor"),
    "gil": ("globex", "member", "claude-haiku-4-5", "anthropic", 2, "aider/0.85", "aider"),
    "gina": ("globex", "admin", "gpt-4.1-nano", "openai", 1, "opencode/0.3", "opencode"),
}  # fmt: skip
ORGS = ("acme", "globex")
# a fixed range around the test run, so that two calls compare equal
START = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%dT%H:00:00Z")
END = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT%H:00:00Z")
CALLERS = ("ann", "amy")  # acme's admin and one of acme's members attack


def tags_for(user: str) -> list[str]:
    org = PEOPLE[user][0]
    return [f"{org}-all", f"{user}-tag", "common"]  # "common" is used by both organizations


@dataclass
class World:
    gw: RunningGateway
    keys: dict[str, dict[str, Any]]  # user name → the created key (with its secret)
    ids: dict[str, list[str]]  # user name → request ids it sent
    records: list[dict[str, Any]]  # every record, as the owner sees it
    org_ids: dict[str, str]
    clients: dict[str, httpx.Client] = field(default_factory=dict)

    def api(self, who: str) -> httpx.Client:
        """One kept-alive client per caller (a fresh connection per call triples the time)."""
        if who not in self.clients:
            self.clients[who] = self.gw.api(self.key(who))
        return self.clients[who]

    def key(self, who: str) -> str:
        return self.gw.admin_key if who == "owner" else str(self.keys[who]["key"])

    def role(self, who: str) -> str:
        return "owner" if who == "owner" else PEOPLE[who][1]

    def visible(self, who: str) -> list[dict[str, Any]]:
        """The records ``who`` may see, by §A: member its own, admin its org's, owner all."""
        if who == "owner":
            return list(self.records)
        if self.role(who) == "admin":
            return [r for r in self.records if r["org"] == PEOPLE[who][0]]
        return [r for r in self.records if r["user"] == who]

    def get(self, who: str, path: str, **params: Any) -> dict[str, Any]:
        r = self.api(who).get(path, params=params)
        assert r.status_code == 200, (who, path, params, r.text)
        return r.json()  # type: ignore[no-any-return]


def send(gw: RunningGateway, key: str, user: str, i: int) -> str:
    org, _role, model, family, _n, ua, _client = PEOPLE[user]
    headers = {
        "user-agent": ua,
        "x-gatewatch-tags": ",".join(tags_for(user)),
        "x-gatewatch-workflow": f"wf-{user}",
        "x-gatewatch-user": f"eu-{user}",
        "x-gatewatch-session": f"s-{user}",
        "x-gatewatch-meta-team": org,
    }
    text = f"{org} {user} request number {i} " + "word " * (i + len(user))
    if family == "anthropic":
        headers |= {"x-api-key": key, "anthropic-version": "2023-06-01"}
        payload: dict[str, Any] = {"model": model, "max_tokens": 100,
                                   "messages": [{"role": "user", "content": text}]}  # fmt: skip
        r = httpx.post(f"{gw.url}/v1/messages", json=payload, headers=headers, timeout=30)
    else:
        headers["authorization"] = f"Bearer {key}"
        payload = {"model": model, "messages": [{"role": "user", "content": text}]}
        r = httpx.post(f"{gw.url}/v1/chat/completions", json=payload, headers=headers, timeout=30)
    assert r.status_code == 200, (user, r.text)
    return r.headers["x-gatewatch-request-id"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream) -> Iterator[World]:
    tmp: Path = tmp_path_factory.mktemp("scoping")
    gateway = Gateway(gateway_settings(tmp, upstream.url))
    server = ServerThread(gateway).start()
    try:
        gw = RunningGateway(server, gateway)
        keys = {u: gw.create_key(name=f"{u}-key", user=u, org=spec[0], role=spec[1])
                for u, spec in PEOPLE.items()}  # fmt: skip
        ids = {u: [send(gw, keys[u]["key"], u, i) for i in range(spec[4])]
               for u, spec in PEOPLE.items()}  # fmt: skip
        gw.wait_records()
        records = gw.records()
        org_ids = {o: next(k["org_id"] for k in keys.values() if k["org"] == o) for o in ORGS}
        w = World(gw, keys, ids, records, org_ids)
        # the setup itself: every request stored, attributed, and priced in both orgs
        assert sorted(r["id"] for r in records) == sorted(i for v in ids.values() for i in v)
        for rec in records:
            assert rec["org"] == PEOPLE[rec["user"]][0]
            assert rec["client"] == PEOPLE[rec["user"]][6]
            assert rec["cost_usd"], rec
        yield w
        for client in w.clients.values():
            client.close()
    finally:
        with contextlib.suppress(Exception):
            server.stop()


# ---- expectations from the owner's records -------------------------------------------------------


def values(recs: list[dict[str, Any]], dim: str) -> Counter[str]:
    """Requests per value of a dimension, as the analytics endpoints name it (names for
    org and user, the key id for api_key)."""
    out: Counter[str] = Counter()
    for r in recs:
        if dim == "tag":
            out.update(r["tags"])
        elif dim == "api_key":
            out[r["api_key_id"]] += 1
        elif r[dim]:
            out[r[dim]] += 1
    return out


def cost(recs: list[dict[str, Any]]) -> float:
    return sum(r["cost_usd"] or 0.0 for r in recs)


def owner_list(w: World, **params: Any) -> list[dict[str, Any]]:
    page = w.get("owner", "/api/v1/requests", limit=1000, **params)
    return page["results"]  # type: ignore[no-any-return]


def other_org(who: str) -> str:
    return next(o for o in ORGS if o != PEOPLE[who][0])


def colleagues(who: str) -> list[str]:
    return [u for u, spec in PEOPLE.items() if spec[0] == PEOPLE[who][0] and u != who]


def outside(w: World, who: str) -> list[dict[str, Any]]:
    """Records ``who`` must never see or count."""
    mine = {r["id"] for r in w.visible(who)}
    return [r for r in w.records if r["id"] not in mine]


# ---- §A2 the detail endpoint ---------------------------------------------------------------------


def _detail(w: World, who: str, rid: str) -> httpx.Response:
    return w.api(who).get(f"/api/v1/requests/{rid}")


def _shape(resp: httpx.Response, rid: str) -> tuple[int, Any]:
    body = resp.json()
    if isinstance(body.get("error"), dict) and isinstance(body["error"].get("message"), str):
        body["error"]["message"] = body["error"]["message"].replace(rid, "<id>")
    return resp.status_code, body


@pytest.mark.parametrize("who", CALLERS)
def test_detail_of_another_orgs_request_is_404_like_a_missing_one(world: World, who: str) -> None:
    missing = str(ULID())
    expected = _shape(_detail(world, who, missing), missing)
    assert expected[0] == 404
    assert expected[1]["error"]["type"] == "not_found_error"
    for user in ("gus", "gil", "gina"):
        for rid in world.ids[user]:
            resp = _detail(world, who, rid)
            assert _shape(resp, rid) == expected, (who, user, resp.text)
            assert user not in resp.text and "globex" not in resp.text
            assert _detail(world, "owner", rid).status_code == 200  # positive control


@pytest.mark.parametrize("who", ["amy", "abe"])
def test_detail_of_a_colleagues_request_is_404_for_a_member(world: World, who: str) -> None:
    missing = str(ULID())
    expected = _shape(_detail(world, who, missing), missing)
    for user in colleagues(who):
        for rid in world.ids[user]:
            assert _shape(_detail(world, who, rid), rid) == expected, (who, user)
    for rid in world.ids[who]:
        assert _detail(world, who, rid).json()["user"] == who


def test_detail_of_its_own_orgs_requests_is_200_for_an_admin(world: World) -> None:
    for user in ("amy", "abe", "ann"):
        for rid in world.ids[user]:
            resp = _detail(world, "ann", rid)
            assert resp.status_code == 200, resp.text
            assert (resp.json()["id"], resp.json()["user"]) == (rid, user)


# ---- filters that name what is out of scope ------------------------------------------------------


def in_scope(who: str) -> list[str]:
    """The users whose records ``who`` (admin or member) may see."""
    if PEOPLE[who][1] == "admin":
        return [u for u, spec in PEOPLE.items() if spec[0] == PEOPLE[who][0]]
    return [who]


def _attacks(who: str) -> list[tuple[str, dict[str, str]]]:
    """(target user, filter params) pairs naming someone ``who`` must not see."""
    targets = ["gus", "gil"] if who == "ann" else ["gus", "abe", "ann"]
    out: list[tuple[str, dict[str, str]]] = []
    for t in targets:
        org = PEOPLE[t][0]
        if org != PEOPLE[who][0]:
            out += [(t, {"org": org}), (t, {"org": f"@{org}"}), (t, {"q": f"org:{org}"}),
                    (t, {"q": f"org:@{org}"})]  # fmt: skip
        out += [
            (t, {"initiator": t}),
            (t, {"initiator": f"@{t}"}),
            (t, {"q": f"initiator:{t}"}),
            (t, {"api_key": f"@{t}"}),
            (t, {"tag": f"{t}-tag"}),
            (t, {"q": f"tag:{t}-tag"}),
            (t, {"workflow": f"wf-{t}"}),
            (t, {"end_user": f"eu-{t}"}),
            (t, {"client": PEOPLE[t][6]}),
            (t, {"session": f"s-{t}"}),  # no rollup keeps sessions: the raw-record path
            (t, {"meta.team": org, "workflow": f"wf-{t}"}),  # meta: raw records too
        ]
        if org != PEOPLE[who][0]:
            out.append((t, {"meta.team": org}))
        if PEOPLE[t][2] not in {PEOPLE[u][2] for u in in_scope(who)}:
            out.append((t, {"model": PEOPLE[t][2]}))
    return out


ATTACKS = [
    pytest.param(who, target, params, id=f"{who}-{target}-" + "-".join(
        f"{k}={v}" for k, v in params.items()))
    for who in CALLERS
    for target, params in _attacks(who)
]  # fmt: skip


def _resolve(w: World, params: dict[str, str]) -> dict[str, str]:
    """``@name`` → the id of that org (org filter), user (initiator) or user's key (api_key)."""

    def ref_id(name: str, ref: str) -> str:
        if name == "org":
            return w.org_ids[ref]
        return str(w.keys[ref]["user_id" if name == "initiator" else "id"])

    out = {}
    for k, v in params.items():
        if k == "q" and ":@" in v:
            name, _, ref = v.partition(":@")
            v = f"{name}:{ref_id(name, ref)}"
        elif v.startswith("@"):
            v = ref_id(k, v[1:])
        out[k] = v
    return out


def _owner_sees(w: World, target: str, params: dict[str, str]) -> list[dict[str, Any]]:
    """Positive control: the filter does select the target's records for the owner."""
    got = owner_list(w, **params)
    target_ids = set(w.ids[target])
    assert got and target_ids & {r["id"] for r in got}, (params, "the filter selects nothing")
    return got


@pytest.mark.parametrize(("who", "target", "params"), ATTACKS)
def test_list_with_a_filter_naming_out_of_scope_data_is_empty(
    world: World, who: str, target: str, params: dict[str, str]
) -> None:
    params = _resolve(world, params)
    _owner_sees(world, target, params)
    page = world.get(who, "/api/v1/requests", limit=1000, **params)
    assert (page["count"], page["results"], page["next_after_id"]) == (0, [], None)


@pytest.mark.parametrize(("who", "target", "params"), ATTACKS)
@pytest.mark.parametrize("tz", ["UTC", "Asia/Kolkata"])  # rollups, and the raw-record path
def test_usage_with_a_filter_naming_out_of_scope_data_is_zero(
    world: World, who: str, target: str, params: dict[str, str], tz: str
) -> None:
    params = _resolve(world, params)
    seen = _owner_sees(world, target, params)
    owner = world.get("owner", "/api/v1/usage", tz=tz, **params)
    assert owner["totals"]["requests"] == len(seen)
    got = world.get(who, "/api/v1/usage", tz=tz, group_by="user", **params)
    assert got["series"] == []
    assert got["totals"]["requests"] == 0 and got["totals"]["cost_usd"] == 0
    assert got["totals"]["input_tokens"] == got["totals"]["output_tokens"] == 0


@pytest.mark.parametrize(("who", "target", "params"), ATTACKS)
def test_top_with_a_filter_naming_out_of_scope_data_is_empty(
    world: World, who: str, target: str, params: dict[str, str]
) -> None:
    params = _resolve(world, params)
    _owner_sees(world, target, params)
    assert world.get("owner", "/api/v1/usage/top", dimension="user", **params)["results"]
    for dimension in ("user", "org", "model"):
        got = world.get(who, "/api/v1/usage/top", dimension=dimension, **params)
        assert got["results"] == [], (dimension, got)


def test_q_naming_another_org_behaves_like_the_param(world: World) -> None:
    globex = [r for r in world.records if r["org"] == "globex"]
    for spelled in ("globex", world.org_ids["globex"]):
        as_param = owner_list(world, org=spelled)
        as_q = owner_list(world, q=f"org:{spelled}")
        assert {r["id"] for r in as_param} == {r["id"] for r in as_q} == {r["id"] for r in globex}
        for path, part in (("/api/v1/usage", "series"), ("/api/v1/usage/top", "results")):
            for who in ("owner", *CALLERS):
                a = world.get(who, path, org=spelled, start=START, end=END)
                b = world.get(who, path, q=f"org:{spelled}", start=START, end=END)
                assert a[part] == b[part], (who, path)
                if who == "owner":  # positive control
                    assert a[part]
        for who in CALLERS:
            assert world.get(who, "/api/v1/requests", q=f"org:{spelled}")["count"] == 0
            totals = world.get(who, "/api/v1/usage", q=f"org:{spelled}")["totals"]
            assert totals["requests"] == 0


def test_a_shared_value_counts_only_the_callers_part(world: World) -> None:
    """Both organizations use the tag ``common``: a filter or grouping on it counts only the
    caller's own records (rollups and raw records)."""
    for who in ("owner", *CALLERS):
        mine = world.visible(who)
        page = world.get(who, "/api/v1/requests", limit=1000, tag="common")
        assert {r["id"] for r in page["results"]} == {r["id"] for r in mine}
        for tz in ("UTC", "Asia/Kolkata"):
            got = world.get(who, "/api/v1/usage", tag="common", tz=tz)["totals"]
            assert got["requests"] == len(mine), (who, tz)
            assert got["cost_usd"] == pytest.approx(cost(mine), abs=1e-8)
            series = world.get(who, "/api/v1/usage", group_by="tag", tz=tz)["series"]
            common = [s for s in series if s["group"]["tag"] == "common"]
            assert [s["totals"]["requests"] for s in common] == [len(mine)], (who, tz)


# ---- groupings -----------------------------------------------------------------------------------


def _groups(w: World, who: str, dim: str, **params: Any) -> dict[str, int]:
    got = w.get(who, "/api/v1/usage", group_by=dim, **params)
    key = "api_key_id" if dim == "api_key" else dim
    return {s["group"][key]: s["totals"]["requests"] for s in got["series"]}


@pytest.mark.parametrize("tz", ["UTC", "Asia/Kolkata"])
def test_usage_by_org(world: World, tz: str) -> None:
    both = {o: sum(1 for r in world.records if r["org"] == o) for o in ORGS}
    assert _groups(world, "owner", "org", tz=tz) == both  # positive control
    assert _groups(world, "ann", "org", tz=tz) == {"acme": both["acme"]}
    assert _groups(world, "gina", "org", tz=tz) == {"globex": both["globex"]}
    for member in ("amy", "abe", "gus", "gil"):
        assert _groups(world, member, "org", tz=tz) == {PEOPLE[member][0]: len(world.ids[member])}


@pytest.mark.parametrize("tz", ["UTC", "Asia/Kolkata"])
def test_usage_by_user(world: World, tz: str) -> None:
    assert _groups(world, "owner", "user", tz=tz) == values(world.records, "user")
    assert _groups(world, "ann", "user", tz=tz) == {"amy": 3, "abe": 2, "ann": 1}
    assert _groups(world, "gina", "user", tz=tz) == {"gus": 4, "gil": 2, "gina": 1}
    for member in ("amy", "abe", "gus", "gil"):
        assert _groups(world, member, "user", tz=tz) == {member: len(world.ids[member])}


@pytest.mark.parametrize("who", CALLERS)
@pytest.mark.parametrize(
    "dim", ["model", "api_key", "client", "workflow", "end_user", "tag", "provider"]
)
def test_usage_by_any_dimension_shows_only_the_callers_scope(
    world: World, who: str, dim: str
) -> None:
    assert _groups(world, "owner", dim) == values(world.records, dim)
    assert _groups(world, who, dim) == values(world.visible(who), dim)


@pytest.mark.parametrize("who", CALLERS)
def test_usage_top_n_folds_only_the_callers_groups(world: World, who: str) -> None:
    got = world.get(who, "/api/v1/usage", group_by="workflow", top="1")
    assert sum(s["totals"]["requests"] for s in got["series"]) == len(world.visible(who))
    assert got["totals"]["requests"] == len(world.visible(who))


# ---- leaderboards and facets ---------------------------------------------------------------------

TOP_DIMS = ["user", "model", "api_key", "end_user", "workflow", "client", "org", "tag", "provider"]


def _top(w: World, who: str, dim: str) -> dict[str, int]:
    got = w.get(who, "/api/v1/usage/top", dimension=dim, metric="requests", limit=1000)
    key = "api_key_id" if dim == "api_key" else dim
    return {r[key]: r["requests"] for r in got["results"]}


@pytest.mark.parametrize("who", ["owner", *CALLERS, "abe", "gina"])
@pytest.mark.parametrize("dim", TOP_DIMS)
def test_top_shows_only_the_callers_scope(world: World, who: str, dim: str) -> None:
    expected = values(world.visible(who), dim)
    got = _top(world, who, dim)
    assert got == expected
    if who != "owner":
        leaked = set(got) & (set(values(outside(world, who), dim)) - set(expected))
        assert not leaked


FACETS = ["model", "user", "org", "tag", "end_user", "workflow", "api_key", "client", "provider"]


def _facets(w: World, who: str, field: str) -> dict[str, int]:
    got = w.get(who, "/api/v1/requests/facets", field=field, limit=1000)
    if field in ("org", "user"):
        return {v["name"]: v["count"] for v in got["values"]}
    return {v["value"]: v["count"] for v in got["values"]}


@pytest.mark.parametrize("who", ["owner", *CALLERS, "abe", "gina"])
@pytest.mark.parametrize("field", FACETS)
def test_facets_show_only_the_callers_scope(world: World, who: str, field: str) -> None:
    expected = values(world.visible(who), field)
    got = _facets(world, who, field)
    assert got == expected
    if who != "owner":
        assert not set(got) & (set(values(outside(world, who), field)) - set(expected))


def test_facets_ignore_filters_that_would_widen_the_scope(world: World) -> None:
    for who in CALLERS:
        for params in ({"org": "globex"}, {"q": "org:globex"}, {"initiator": "gus"}):
            got = world.get(who, "/api/v1/requests/facets", field="user", **params)
            names = {v["name"] for v in got["values"]}
            assert names <= {r["user"] for r in world.visible(who)}, (who, params)


# ---- totals --------------------------------------------------------------------------------------


def _totals(w: World, who: str, **params: Any) -> dict[str, Any]:
    return w.get(who, "/api/v1/usage", **params)["totals"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("tz", ["UTC", "Asia/Kolkata"])
def test_owner_totals_are_the_sum_of_both_orgs(world: World, tz: str) -> None:
    per_org = {o: owner_list(world, org=o) for o in ORGS}
    assert all(per_org.values())
    got = _totals(world, "owner", tz=tz)
    assert got["requests"] == sum(len(v) for v in per_org.values()) == len(world.records)
    assert got["cost_usd"] == pytest.approx(sum(cost(v) for v in per_org.values()), abs=1e-8)
    assert got["input_tokens"] == sum(r["input_tokens"] for r in world.records)


@pytest.mark.parametrize("tz", ["UTC", "Asia/Kolkata"])
@pytest.mark.parametrize("who", ["ann", "gina"])
def test_admin_totals_are_exactly_its_orgs(world: World, who: str, tz: str) -> None:
    org = PEOPLE[who][0]
    theirs = owner_list(world, org=other_org(who))
    mine = owner_list(world, org=org)
    got = _totals(world, who, tz=tz)
    assert got["requests"] == len(mine)
    assert got["cost_usd"] == pytest.approx(cost(mine), abs=1e-8)
    assert got["cost_usd"] != pytest.approx(cost(mine) + cost(theirs), abs=1e-8)
    assert got["output_tokens"] == sum(r["output_tokens"] for r in mine)
    # and per key: each of its org's keys as the owner's list has it
    for user in (u for u, spec in PEOPLE.items() if spec[0] == org):
        key_recs = owner_list(world, api_key=world.keys[user]["id"])
        per_key = _totals(world, who, tz=tz, api_key=world.keys[user]["id"])
        assert per_key["requests"] == len(key_recs) == len(world.ids[user])
        assert per_key["cost_usd"] == pytest.approx(cost(key_recs), abs=1e-8)


@pytest.mark.parametrize("tz", ["UTC", "Asia/Kolkata"])
@pytest.mark.parametrize("who", ["amy", "abe", "gus", "gil"])
def test_member_totals_are_exactly_its_own(world: World, who: str, tz: str) -> None:
    mine = owner_list(world, initiator=world.keys[who]["user_id"])
    assert {r["id"] for r in mine} == set(world.ids[who])
    got = _totals(world, who, tz=tz)
    assert got["requests"] == len(mine)
    assert got["cost_usd"] == pytest.approx(cost(mine), abs=1e-8)
    # asking for the whole org changes nothing
    assert _totals(world, who, tz=tz, org=PEOPLE[who][0]) == got


# ---- other reads ---------------------------------------------------------------------------------


@pytest.mark.parametrize("who", CALLERS)
def test_transactions_naming_another_org_show_nothing(world: World, who: str) -> None:
    for scope, scope_id in (
        ("org", world.org_ids["globex"]),
        ("user", world.keys["gus"]["user_id"]),
        ("key", world.keys["gus"]["id"]),
    ):
        owner = world.get("owner", "/api/v1/billing/transactions", scope=scope, scope_id=scope_id)
        assert owner["results"], scope  # positive control
        got = world.get(who, "/api/v1/billing/transactions", scope=scope, scope_id=scope_id)
        assert got["results"] == [], (who, scope)
    mine = {r["id"] for r in world.visible(who)}
    got = world.get(who, "/api/v1/billing/transactions", limit=1000)["results"]
    assert {t["request_id"] for t in got if t.get("request_id")} == mine


# ---- §A3 export ----------------------------------------------------------------------------------


def _export_route(w: World) -> bool:
    r = w.api("owner").get("/openapi.json")
    return r.status_code == 200 and "/api/v1/requests/export" in r.json().get("paths", {})


def _export(w: World, who: str, fmt: str, **params: Any) -> tuple[list[str], list[str]]:
    """(header or [] , exported ids)."""
    r = w.api(who).get("/api/v1/requests/export", params={"format": fmt, **params})
    assert r.status_code == 200, (who, fmt, params, r.text)
    total = r.headers.get("x-total-count")
    if fmt == "csv":
        rows = list(csv.reader(io.StringIO(r.text)))
        assert rows and "id" in rows[0], r.text[:200]
        at = rows[0].index("id")
        header, ids = rows[0], [row[at] for row in rows[1:] if row]
    else:
        header, ids = [], [orjson.loads(line)["id"] for line in r.text.splitlines() if line.strip()]
    if total is not None:  # the announced count may not tell more than the rows do
        assert int(total) == len(ids), (who, params, total)
    return header, ids


@pytest.fixture
def export(world: World) -> Callable[..., tuple[list[str], list[str]]]:
    if not _export_route(world):
        pytest.skip("GET /api/v1/requests/export does not exist yet (§A3)")
    return lambda who, fmt, **params: _export(world, who, fmt, **params)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_export_as_admin_naming_another_org_is_empty(
    world: World, export: Callable[..., tuple[list[str], list[str]]], fmt: str
) -> None:
    globex = {r["id"] for r in world.records if r["org"] == "globex"}
    assert set(export("owner", fmt, org="globex")[1]) == globex  # positive control
    for params in ({"org": "globex"}, {"org": world.org_ids["globex"]}, {"q": "org:globex"},
                   {"initiator": "gus"}, {"tag": "globex-all"}):  # fmt: skip
        header, ids = export("ann", fmt, **params)
        assert ids == [], params
        if fmt == "csv":
            assert header  # the header row alone
    assert sorted(export("ann", fmt)[1]) == sorted(r["id"] for r in world.visible("ann"))


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_export_as_member_has_only_its_own_ids(
    world: World, export: Callable[..., tuple[list[str], list[str]]], fmt: str
) -> None:
    assert sorted(export("owner", fmt, org="acme")[1]) == sorted(  # positive control
        r["id"] for r in world.records if r["org"] == "acme")  # fmt: skip
    for who in ("amy", "abe"):
        own = sorted(world.ids[who])
        assert sorted(export(who, fmt)[1]) == own
        assert sorted(export(who, fmt, org="acme")[1]) == own  # its org: still only its own
        attacks = [
            {"org": "globex"},
            {"q": "org:globex"},
            {"initiator": "ann"},
            {"initiator": colleagues(who)[0]},
            {"tag": "acme-all", "initiator": "ann"},
        ]
        for params in attacks:
            assert export(who, fmt, **params)[1] == [], (who, params)
