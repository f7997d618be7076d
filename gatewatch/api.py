"""The management API (§A) under /api/v1, described at /openapi.json.

Every read goes through the caller's Scope (gatewatch.store.query.Scope): member → its own
records, admin → its organization's, owner → all. Out-of-scope rows answer 404 like missing ones."""

import asyncio
from typing import Annotated, Any, Literal

import orjson
from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from ulid import ULID

from gatewatch import export, ui, usage
from gatewatch.alerts.api import create_alerts_router
from gatewatch.auth import KeyCache, hash_key, new_secret, secret_from_headers
from gatewatch.controls import Controls
from gatewatch.controls.breaker import CircuitBreakers
from gatewatch.controls.periods import window
from gatewatch.records import format_ts
from gatewatch.settings import Settings
from gatewatch.store import (
    FilterError,
    Identity,
    Store,
    StoreError,
    StoreUnavailable,
    parse_filters,
)
from gatewatch.store.rollups import DIMENSIONS

__all__ = ["ApiError", "create_api"]

_PAGE_PARAMS = ("limit", "after_id", "q")


class _JSON(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


def _error(status: int, message: str, param: str | None = None) -> JSONResponse:
    kind = {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        409: "conflict_error",
    }.get(status, "api_error")
    return JSONResponse(
        {"error": {"message": message, "type": kind, "param": param}}, status_code=status
    )


_MAX_INT = 2**63 - 1  # the store's integers (SQLite INTEGER, PostgreSQL bigint)


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, max_length=200)
    user: str = Field(min_length=1, max_length=200, description="User name; created when new")
    org: str | None = Field(default=None, max_length=200, description="Org name; created when new")
    role: Literal["member", "admin", "owner"] = "member"
    budget_usd: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    budget_period: Literal["day", "week", "month", "total"] = "month"
    rpm: int | None = Field(default=None, ge=1, le=_MAX_INT)
    tpm: int | None = Field(default=None, ge=1, le=_MAX_INT)


class KeyUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, max_length=200)
    role: Literal["member", "admin", "owner"] | None = None
    budget_usd: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    budget_period: Literal["day", "week", "month", "total"] | None = None
    rpm: int | None = Field(default=None, ge=1, le=_MAX_INT)
    tpm: int | None = Field(default=None, ge=1, le=_MAX_INT)


class LimitsUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    budget_usd: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    budget_period: Literal["day", "week", "month", "total"] | None = None
    rpm: int | None = Field(default=None, ge=1, le=_MAX_INT)
    tpm: int | None = Field(default=None, ge=1, le=_MAX_INT)


class UserCreate(LimitsUpdate):
    name: str = Field(min_length=1, max_length=200)
    org: str | None = Field(default=None, max_length=200)


class OrgCreate(LimitsUpdate):
    name: str = Field(min_length=1, max_length=200)


_ROLE_RANK = {"member": 0, "admin": 1, "owner": 2}


def _iso(ts: float) -> str:
    return format_ts(ts)


class Adjustment(BaseModel):
    model_config = ConfigDict(extra="forbid")
    scope: Literal["key", "user", "org"]
    scope_id: str = Field(min_length=1, description="The key, user or org id")
    amount_usd: float | None = Field(
        default=None, allow_inf_nan=False, description="Positive charges, negative credits"
    )
    reset: bool = Field(default=False, description="Bring this period's spend back to zero")
    reason: str = Field(min_length=1, max_length=500)


def create_api(
    store: Store,
    keys: KeyCache,
    controls: Controls,
    breakers: CircuitBreakers,
    settings: Settings,
) -> FastAPI:
    app = FastAPI(
        title="gatewatch management API",
        version="1",
        docs_url=None,
        redoc_url=None,
        default_response_class=_JSON,
    )

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.message, exc.param)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
        param = ".".join(loc) or None
        return _error(400, f"{param or 'request'}: {first.get('msg')}", param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(StoreUnavailable)
    async def _unavailable(request: Request, exc: StoreUnavailable) -> JSONResponse:
        response = _error(503, f"{exc}; try again shortly")
        response.headers["Retry-After"] = "1"
        return response

    @app.exception_handler(Exception)  # a defect, still answered in JSON (and logged by uvicorn)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        return _error(500, f"internal error: {type(exc).__name__}")

    dashboard = ui.DashboardAuth(ui.SessionSigner.from_settings(settings), store)
    app.include_router(ui.create_ui_router(store, keys, controls, settings, dashboard))

    async def caller(request: Request) -> Identity:
        headers = {k.lower().encode(): v.encode("latin-1") for k, v in request.headers.items()}
        secret = secret_from_headers(headers)
        if secret is None:  # the dashboard's session cookie, if any (gatewatch.ui.session)
            try:
                ident = await dashboard.api_identity(
                    request.method,
                    request.cookies.get(ui.SESSION_COOKIE),
                    request.headers.get(ui.CSRF_HEADER),
                )
            except ui.CsrfError as exc:
                raise ApiError(403, str(exc)) from None
            if ident is not None:
                return ident
            raise ApiError(
                401, "missing gateway key: send 'Authorization: Bearer gw-…' or 'x-api-key'"
            )
        ident = await keys.lookup(secret)
        if ident is None:
            raise ApiError(401, "invalid or revoked gateway key")
        return ident

    Caller = Annotated[Identity, Depends(caller)]
    app.include_router(create_alerts_router(store, settings, caller, ApiError))

    def require_admin(ident: Identity) -> None:
        if ident.role not in ("admin", "owner"):
            raise ApiError(403, "this needs an admin or owner key")

    async def run(fn: Any, *args: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, *args)
        except StoreError as exc:
            raise ApiError(409, str(exc)) from None

    def page_limit(limit: int) -> int:
        if not 1 <= limit <= 1000:
            raise ApiError(400, "limit: must be between 1 and 1000", "limit")
        return limit

    # ---- identity ------------------------------------------------------------------------

    @app.get("/api/v1/me", summary="The calling key, its user and organization")
    async def me(ident: Caller) -> dict[str, Any]:
        return {
            "key_id": ident.key_id,
            "key_name": ident.key_name,
            "user_id": ident.user_id,
            "user": ident.user_name,
            "org_id": ident.org_id,
            "org": ident.org_name,
            "role": ident.role,
        }

    # ---- request records (§A1, §A2) --------------------------------------------------------

    @app.get("/api/v1/requests", summary="Request records, newest first (§A1)")
    async def list_requests(
        request: Request,
        ident: Caller,
        limit: Annotated[int, Query(description="1-1000")] = 100,
        after_id: Annotated[str | None, Query(description="Keyset cursor")] = None,
        q: Annotated[str | None, Query(description="key:value search string")] = None,
    ) -> dict[str, Any]:
        limit = page_limit(limit)
        try:
            query = parse_filters(request.query_params.multi_items(), _PAGE_PARAMS, q)
        except FilterError as exc:
            raise ApiError(400, str(exc), exc.param) from None
        page = await run(store.list_requests, ident.scope, query, limit, after_id)
        return {"count": page.count, "results": page.results, "next_after_id": page.next_after_id}

    @app.get("/api/v1/requests/facets", summary="Values a request filter can take")
    async def request_facets(
        request: Request,
        ident: Caller,
        field: Annotated[str, Query(description=", ".join(usage.FACET_FIELDS))],
        start: Annotated[str | None, Query(description="RFC 3339; default 30 days ago")] = None,
        end: Annotated[str | None, Query(description="RFC 3339; default now")] = None,
        limit: Annotated[int, Query(description="1-1000")] = 100,
    ) -> dict[str, Any]:
        return await analytics(usage.facets, ident, request)

    @app.get("/api/v1/usage", summary="Usage time series per bucket and group (§A4)")
    async def usage_series(
        request: Request,
        ident: Caller,
        start: Annotated[str | None, Query(description="RFC 3339; default 7 days ago")] = None,
        end: Annotated[str | None, Query(description="RFC 3339; default now")] = None,
        bucket: Annotated[str, Query(description="hour | day | week | month")] = "day",
        group_by: Annotated[
            str | None, Query(description="Up to two of " + ", ".join(DIMENSIONS))
        ] = None,
        tz: Annotated[str, Query(description="IANA time zone of the buckets")] = "UTC",
        top: Annotated[int | None, Query(description="Keep N groups; fold the rest")] = None,
        currency: Annotated[str | None, Query(description="Display currency")] = None,
        q: Annotated[str | None, Query(description="key:value filter string")] = None,
    ) -> dict[str, Any]:
        return await analytics(usage.usage, ident, request, settings.currency)

    @app.get("/api/v1/usage/top", summary="Leaderboard of one dimension over a range")
    async def usage_top(
        request: Request,
        ident: Caller,
        dimension: Annotated[str, Query(description=", ".join(usage.TOP_DIMENSIONS))] = "user",
        metric: Annotated[str, Query(description=", ".join(usage.TOP_METRICS))] = "cost_usd",
        start: Annotated[str | None, Query(description="RFC 3339; default 30 days ago")] = None,
        end: Annotated[str | None, Query(description="RFC 3339; default now")] = None,
        limit: Annotated[int, Query(description="1-1000")] = 10,
        currency: Annotated[str | None, Query(description="Display currency")] = None,
        q: Annotated[str | None, Query(description="key:value filter string")] = None,
    ) -> dict[str, Any]:
        return await analytics(usage.top, ident, request, settings.currency)

    async def analytics(fn: Any, ident: Identity, request: Request, *extra: Any) -> dict[str, Any]:
        try:
            out: dict[str, Any] = await asyncio.to_thread(
                fn, store, ident.scope, request.query_params.multi_items(), *extra
            )
            return out
        except usage.UsageError as exc:
            raise ApiError(400, str(exc), exc.param) from None

    # before /api/v1/requests/{request_id}, which would take "export" for an id
    @app.get(
        "/api/v1/requests/export",
        summary="Request records as CSV or JSON Lines, streamed (§A3)",
        response_class=StreamingResponse,
        responses={200: {"content": {t: {} for t in export.FORMATS.values()}}},
    )
    async def export_requests(
        request: Request,
        ident: Caller,
        fmt: Annotated[str, Query(alias="format", description="csv | jsonl")] = "csv",
        bodies: Annotated[bool, Query(description="Add request_body, response_body")] = False,
        currency: Annotated[str | None, Query(description="The configured code or USD")] = None,
        q: Annotated[str | None, Query(description="key:value search string")] = None,
    ) -> StreamingResponse:
        if fmt not in export.FORMATS:
            raise ApiError(400, f"format: {fmt!r} is not one of csv, jsonl", "format")
        try:
            money = usage.Currency.choose(settings.currency, currency)
            query = parse_filters(request.query_params.multi_items(), export.EXPORT_PARAMS, q)
        except (usage.UsageError, FilterError) as exc:
            raise ApiError(400, str(exc), exc.param) from None
        total = (await run(store.list_requests, ident.scope, query, 1, None)).count
        columns = export.export_columns(bodies)
        return StreamingResponse(
            export.stream(store, ident.scope, query, columns, fmt, money),
            media_type=export.FORMATS[fmt],
            headers={
                "Content-Disposition": f'attachment; filename="{export.filename(fmt)}"',
                "X-Total-Count": str(total),
            },
        )

    @app.get("/api/v1/requests/{request_id}", summary="One request record (§A2)")
    async def get_request(request_id: str, ident: Caller) -> dict[str, Any]:
        row = await run(store.get_request, ident.scope, request_id)
        if row is None:
            raise ApiError(404, f"no request {request_id}")
        return dict(row)

    @app.get("/api/v1/providers", summary="Health of each provider/model target (§C3)")
    async def providers(ident: Caller) -> dict[str, Any]:
        return {"targets": breakers.snapshot()}

    # ---- billing (§A5) ----------------------------------------------------------------------

    @app.get("/api/v1/billing/balance", summary="The calling key's budgets this period (§A5)")
    async def balance(ident: Caller) -> dict[str, Any]:
        budgets = []
        for check in controls.budget_checks(ident):
            spent = await controls.spent(check)
            budgets.append({
                "scope": check.scope, "scope_id": check.scope_id, "name": check.name,
                "period": check.period, "limit_usd": check.limit_usd,
                "spent_usd": round(spent, 10),
                "remaining_usd": round(max(check.limit_usd - spent, 0.0), 10),
                "period_start": _iso(check.start) if check.period != "total" else None,
                "period_end": _iso(check.end) if check.period != "total" else None,
            })  # fmt: skip
        return {"key_id": ident.key_id, "budgets": budgets}

    @app.get("/api/v1/billing/transactions", summary="Spend ledger, newest first (§A5)")
    async def transactions(
        ident: Caller,
        limit: Annotated[int, Query(description="1-1000")] = 100,
        after_id: Annotated[str | None, Query()] = None,
        scope: Annotated[Literal["key", "user", "org"] | None, Query()] = None,
        scope_id: Annotated[str | None, Query()] = None,
    ) -> dict[str, Any]:
        if (scope is None) != (scope_id is None):
            raise ApiError(400, "scope and scope_id go together", "scope")
        filters = {"scope": scope, "scope_id": scope_id} if scope and scope_id else {}
        page = await run(store.list_transactions, ident.scope, filters, page_limit(limit), after_id)
        if scope and scope_id:
            await running_totals(scope, scope_id, ident, page.results)
        return {"results": page.results, "next_after_id": page.next_after_id}

    async def running_totals(
        scope: str, scope_id: str, ident: Identity, rows: list[dict[str, Any]]
    ) -> None:
        """``period_total_usd``: what the scope had spent in the row's budget period once that
        row was charged. One sum per period on the page, then walked down the page."""
        kind = {"key": "keys", "user": "users", "org": "orgs"}[scope]
        entity = await run(store.get_entity, kind, ident.scope, scope_id)
        period = (entity or {}).get("budget_period") or "month"
        current: tuple[float, float] | None = None
        total = 0.0
        for row in rows:  # newest first
            ts = ULID.from_str(row["id"]).timestamp
            if current is None or not current[0] <= ts < current[1]:
                w = window(period, ts, controls.tz)
                current = (w.start, w.end)
                total = await run(store.spend, scope, scope_id, w.start, w.end, row["id"])
            row["period"] = period
            row["period_total_usd"] = round(total, 10)
            total -= row["amount_usd"] or 0.0

    @app.post("/api/v1/billing/adjustments", status_code=201, summary="Credit, charge or reset")
    async def adjust(body: Adjustment, ident: Caller) -> dict[str, Any]:
        require_admin(ident)
        if body.scope == "org" and ident.role != "owner":  # as for changing an org's budget
            raise ApiError(403, "only an owner key can adjust an organization's spend", "scope")
        kind = {"key": "keys", "user": "users", "org": "orgs"}[body.scope]
        target = await run(store.get_entity, kind, ident.scope, body.scope_id)
        if target is None:
            raise ApiError(404, f"no {body.scope} {body.scope_id}", "scope_id")
        if body.reset == (body.amount_usd is not None):
            raise ApiError(400, "give either amount_usd or reset: true", "amount_usd")
        org_id = target["id"] if body.scope == "org" else target["org_id"]
        amount = body.amount_usd or 0.0
        if body.reset:
            period = target.get("budget_period") or "month"
            amount = -await controls.settled(body.scope, body.scope_id, target["name"], period)
        row = await run(
            store.add_adjustment, body.scope, body.scope_id, org_id, amount, body.reason,
            ident.key_id,
        )  # fmt: skip
        await controls.adjust(body.scope, body.scope_id, amount)
        return dict(row)

    # ---- keys, users, orgs (§A6) -----------------------------------------------------------

    @app.post("/api/v1/keys", status_code=201, summary="Create a key; its secret is shown once")
    async def create_key(body: KeyCreate, ident: Caller) -> dict[str, Any]:
        require_admin(ident)
        fields = body.model_dump()
        if ident.role != "owner":
            if fields["org"] not in (None, ident.org_name):
                raise ApiError(403, "an admin key can create keys in its own organization only")
            if body.role == "owner":
                raise ApiError(403, "an admin key cannot create owner keys", "role")
        fields["org"] = fields["org"] or ident.org_name
        secret = new_secret()
        row = await run(store.create_key, fields, hash_key(secret), secret[:7] + "…")
        keys.invalidate()
        return {**row, "key": secret}

    def entity_routes(
        kind: str, create_model: type[BaseModel], update_model: type[BaseModel]
    ) -> None:
        singular = kind[:-1]

        async def guard_target(ident: Identity, entity_id: str) -> None:
            """An admin may not change or revoke a key that outranks it."""
            if kind != "keys" or ident.role == "owner":
                return
            row = await run(store.get_entity, kind, ident.scope, entity_id)
            if row is not None and _ROLE_RANK.get(row["role"], 0) > _ROLE_RANK[ident.role]:
                raise ApiError(403, f"a {ident.role} key cannot change a {row['role']} key")

        async def list_(
            ident: Caller,
            limit: Annotated[int, Query(description="1-1000")] = 100,
            after_id: Annotated[str | None, Query()] = None,
        ) -> dict[str, Any]:
            page = await run(store.list_entities, kind, ident.scope, page_limit(limit), after_id)
            return {
                "count": page.count,
                "results": page.results,
                "next_after_id": page.next_after_id,
            }

        async def get_(ident: Caller, entity_id: Annotated[str, Path()]) -> dict[str, Any]:
            row = await run(store.get_entity, kind, ident.scope, entity_id)
            if row is None:
                raise ApiError(404, f"no {singular} {entity_id}")
            return dict(row)

        async def patch_(
            body: update_model,  # type: ignore[valid-type]
            ident: Caller,
            entity_id: Annotated[str, Path()],
        ) -> dict[str, Any]:
            require_admin(ident)
            fields = body.model_dump(exclude_unset=True)  # type: ignore[attr-defined]
            for name in ("name", "role", "budget_period"):
                if name in fields and fields[name] is None:
                    raise ApiError(400, f"{name}: cannot be null", name)
            if kind == "orgs" and ident.role != "owner":
                raise ApiError(403, "only an owner key can change organizations")
            await guard_target(ident, entity_id)
            role = fields.get("role")
            if role and _ROLE_RANK[role] > _ROLE_RANK[ident.role]:
                raise ApiError(403, f"an {ident.role} key cannot grant the {role} role", "role")
            row = await run(store.update_entity, kind, ident.scope, entity_id, fields)
            if row is None:
                raise ApiError(404, f"no {singular} {entity_id}")
            keys.invalidate()
            return dict(row)

        async def delete_(ident: Caller, entity_id: Annotated[str, Path()]) -> dict[str, Any]:
            require_admin(ident)
            if kind == "orgs" and ident.role != "owner":
                raise ApiError(403, "only an owner key can revoke organizations")
            await guard_target(ident, entity_id)
            row = await run(store.revoke_entity, kind, ident.scope, entity_id)
            if row is None:
                raise ApiError(404, f"no {singular} {entity_id}")
            keys.invalidate()
            return dict(row)

        base = f"/api/v1/{kind}"
        app.get(base, summary=f"List {kind}")(list_)
        app.get(base + "/{entity_id}", summary=f"One {singular}")(get_)
        app.patch(base + "/{entity_id}", summary=f"Change a {singular}")(patch_)
        app.delete(base + "/{entity_id}", summary=f"Revoke a {singular} at once")(delete_)

        if kind != "keys":

            async def create_(body: create_model, ident: Caller) -> dict[str, Any]:  # type: ignore[valid-type]
                require_admin(ident)
                fields = body.model_dump()  # type: ignore[attr-defined]
                if kind == "orgs" and ident.role != "owner":
                    raise ApiError(403, "only an owner key can create organizations")
                if kind == "users":
                    if ident.role != "owner" and fields["org"] not in (None, ident.org_name):
                        raise ApiError(403, "an admin key can add users to its own org only")
                    fields["org"] = fields["org"] or ident.org_name
                row = await run(store.create_entity, kind, fields)
                keys.invalidate()
                return dict(row)

            app.post(base, status_code=201, summary=f"Create a {singular}")(create_)

    entity_routes("keys", KeyCreate, KeyUpdate)
    entity_routes("users", UserCreate, LimitsUpdate)
    entity_routes("orgs", OrgCreate, LimitsUpdate)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> Response:
        return Response(b"ok", media_type="text/plain")

    return app
