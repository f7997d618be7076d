"""``/api/v1/alerts`` (§A7): alert history and the rules managed through the API.

Admins and owners only (a member gets 403: alerts describe an organization's or another user's
traffic, which a member may not see). An owner sees and manages everything; an admin its own
organization's rules and history, and the configured rules that apply to it. Nobody sees another
organization's alerts: out-of-scope ids answer 404 like missing ones."""

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, Query, Request
from pydantic import ValidationError

from gatewatch.settings import AlertRule, Settings
from gatewatch.store import Identity, Store, StoreError

__all__ = ["create_alerts_router"]

_CONFIG = "config:"


def _view(
    rule_id: str, source: str, spec: AlertRule, org_id: str | None, **extra: Any
) -> dict[str, Any]:
    fields = spec.model_dump(mode="json", exclude_none=True)
    return {"id": rule_id, "source": source, "org_id": org_id, **fields, **extra}


def _validation_error(exc: ValidationError) -> tuple[str, str]:
    """(parameter, message) of the first problem in a rule body."""
    err = exc.errors()[0]
    if err["type"] == "alert_rule":
        field = str(err.get("ctx", {}).get("field", ""))
        return field, err["msg"]
    param = ".".join(str(p) for p in err["loc"]) or "body"
    msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
    return param, f"{param}: {msg}"


def create_alerts_router(
    store: Store,
    settings: Settings,
    caller: Callable[..., Coroutine[Any, Any, Identity]],
    error: Callable[..., Exception],
) -> APIRouter:
    """``caller``: the API's dependency that authenticates the key; ``error(status, message,
    param)``: the API's error exception."""
    router = APIRouter()
    Caller = Annotated[Identity, Depends(caller)]
    config_rules = {f"{_CONFIG}{r.name}": r for r in settings.alerts.rules}
    webhooks = [w.name for w in settings.alerts.webhooks]

    def require_admin(ident: Identity) -> None:
        if ident.role not in ("admin", "owner"):
            raise error(403, "alerts need an admin or owner key")

    async def run(fn: Any, *args: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, *args)
        except StoreError as exc:
            raise error(409, str(exc)) from None

    def page_limit(limit: int) -> int:
        if not 1 <= limit <= 1000:
            raise error(400, "limit: must be between 1 and 1000", "limit")
        return limit

    def config_visible(ident: Identity, rule: AlertRule) -> bool:
        """An admin sees its organization's configured rules and the budget rules over every
        organization (their firings name its keys, users and org)."""
        if ident.role == "owner":
            return True
        return rule.org == ident.org_name or (rule.org is None and rule.type == "budget")

    async def visible_rules(ident: Identity) -> list[dict[str, Any]]:
        out = []
        config_orgs = await run(store.org_ids, sorted({r.org for r in config_rules.values()
                                                       if r.org}))  # fmt: skip
        for rule_id, rule in config_rules.items():
            if config_visible(ident, rule):
                out.append(_view(rule_id, "config", rule, config_orgs.get(rule.org or "")))
        for row in await run(store.alert_rules):
            if ident.role == "owner" or (row["org_id"] and row["org_id"] == ident.org_id):
                spec = AlertRule.model_validate(row["spec"])
                out.append(
                    _view(
                        row["id"],
                        "api",
                        spec,
                        row["org_id"],
                        created_at=row["created_at"],
                        created_by=row["created_by"],
                    )
                )
        return out

    # ---- rules --------------------------------------------------------------------------------

    @router.get("/api/v1/alerts/rules", summary="Alert rules: configured and API-made (§N)")
    async def list_rules(ident: Caller) -> dict[str, Any]:
        require_admin(ident)
        return {"results": await visible_rules(ident)}

    @router.post(
        "/api/v1/alerts/rules",
        status_code=201,
        summary="Add an alert rule (§N)",
        openapi_extra={"requestBody": {"required": True, "content": {
            "application/json": {"schema": AlertRule.model_json_schema()}}}},
    )  # fmt: skip
    async def create_rule(request: Request, ident: Caller) -> dict[str, Any]:
        """The body is one rule as in ``alerts.rules`` of the configuration (docs/alerts.md).
        An admin's rule covers its own organization; an owner's covers ``org`` when given,
        else every organization."""
        require_admin(ident)
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            raise error(400, "body: not valid JSON", "body") from None
        if not isinstance(body, dict):
            raise error(400, "body: must be a JSON object (one rule)", "body")
        try:
            spec = AlertRule.model_validate(body)
        except ValidationError as exc:
            param, message = _validation_error(exc)
            raise error(400, message, param) from None
        for hook in spec.notify:
            if hook not in webhooks:
                known = ", ".join(webhooks) or "none configured"
                raise error(400, f"notify: no webhook named {hook!r} (webhooks: {known})",
                            "notify")  # fmt: skip
        if any(r.name == spec.name for r in config_rules.values()):
            raise error(409, f"name: the configuration has a rule named {spec.name!r}", "name")
        org_id: str | None
        if ident.role == "owner":
            org_id = None
            if spec.org is not None:
                org_id = (await run(store.org_ids, [spec.org])).get(spec.org)
                if org_id is None:
                    raise error(400, f"org: no organization named {spec.org!r}", "org")
        else:
            if spec.org not in (None, ident.org_name):
                raise error(403, "an admin key can add rules for its own organization only",
                            "org")  # fmt: skip
            org_id, spec.org = ident.org_id, ident.org_name
        row = await run(store.add_alert_rule, org_id, spec.model_dump(mode="json"),
                        ident.key_id, time.time())  # fmt: skip
        return _view(row["id"], "api", spec, org_id, created_at=row["created_at"],
                     created_by=row["created_by"])  # fmt: skip

    async def find_rule(ident: Identity, rule_id: str) -> dict[str, Any]:
        for rule in await visible_rules(ident):
            if rule["id"] == rule_id:
                return rule
        raise error(404, f"no alert rule {rule_id}")

    @router.get("/api/v1/alerts/rules/{rule_id}", summary="One alert rule")
    async def get_rule(rule_id: str, ident: Caller) -> dict[str, Any]:
        require_admin(ident)
        return await find_rule(ident, rule_id)

    @router.delete("/api/v1/alerts/rules/{rule_id}", summary="Delete an API-made alert rule")
    async def delete_rule(rule_id: str, ident: Caller) -> dict[str, Any]:
        """Its open firings resolve at the next evaluation (a resolution is delivered)."""
        require_admin(ident)
        rule = await find_rule(ident, rule_id)
        if rule["source"] == "config":
            raise error(409, "this rule is in the configuration file; remove it there")
        if not await run(store.delete_alert_rule, rule_id):
            raise error(404, f"no alert rule {rule_id}")
        return rule

    # ---- history ------------------------------------------------------------------------------

    @router.get("/api/v1/alerts", summary="Alert history: firings and resolutions (§A7)")
    async def list_alerts(
        ident: Caller,
        limit: Annotated[int, Query(description="1-1000")] = 100,
        after_id: Annotated[str | None, Query(description="Keyset cursor")] = None,
        rule: Annotated[str | None, Query(description="A rule's name or id")] = None,
        state: Annotated[Literal["firing", "resolved"] | None, Query()] = None,
        active: Annotated[bool | None, Query(description="Only firings not resolved")] = None,
        org: Annotated[str | None, Query(description="An organization's id or name")] = None,
    ) -> dict[str, Any]:
        require_admin(ident)
        filters = {"rule": rule or "", "state": state or "", "org": org or "",
                   "active": "true" if active else ""}  # fmt: skip
        page = await run(store.list_alert_events, ident.scope, filters, page_limit(limit),
                         after_id)  # fmt: skip
        return {"count": page.count, "results": page.results, "next_after_id": page.next_after_id}

    @router.get("/api/v1/alerts/{alert_id}", summary="One firing or resolution")
    async def get_alert(alert_id: str, ident: Caller) -> dict[str, Any]:
        require_admin(ident)
        event = await run(store.get_alert_event, ident.scope, alert_id)
        if event is None:
            raise error(404, f"no alert {alert_id}")
        return dict(event)

    return router
