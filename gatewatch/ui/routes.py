"""The dashboard's pages under /ui: sign-in and sign-out, page shells, our static files.

Pages are server-rendered shells (header, navigation, filter bar); their data comes from the
management API (/api/v1/usage, /usage/top, /requests, …), which the page's JavaScript calls with
the session cookie. The only data route of the dashboard's own is ``/ui/data/budgets``: the
spend of each key, user and organization in its current budget period, as the budget counters
see it (the API shows that only for the calling key)."""

from __future__ import annotations

import asyncio
import hashlib
import importlib.resources
from typing import Any
from urllib.parse import parse_qs, quote

import jinja2
import orjson
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from gatewatch.auth import KeyCache, hash_key
from gatewatch.controls import Controls
from gatewatch.settings import Settings
from gatewatch.store.base import Identity, Store
from gatewatch.ui.session import (
    CSRF_HEADER,
    LOGIN_COOKIE,
    SESSION_COOKIE,
    DashboardAuth,
    Session,
)

__all__ = ["create_ui_router"]

_STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".svg": "image/svg+xml"}  # fmt: skip
_PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
_ADMIN_ROLES = ("admin", "owner")


def _static_files() -> dict[str, tuple[bytes, str, str]]:
    """name → (content, content type, short content hash for cache busting)."""
    out = {}
    root = importlib.resources.files("gatewatch.ui") / "static"
    for entry in root.iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if entry.is_file() and suffix in _STATIC_TYPES:
            data = entry.read_bytes()
            out[entry.name] = (data, _STATIC_TYPES[suffix], hashlib.sha256(data).hexdigest()[:12])
    return out


def _safe_next(value: str | None) -> str:
    """Only a path inside the dashboard: never another site (``//host``, ``/\\host``)."""
    if value and value.startswith("/ui") and not value.startswith(("//", "/\\")):
        return value
    return "/ui"


def _same_origin(request: Request) -> bool:
    """A form post carries Origin in every current browser: it must be this gateway (as the
    browser addressed it: Host, or X-Forwarded-Host behind a proxy that rewrites Host)."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    hosts = [request.headers.get("host", ""), request.headers.get("x-forwarded-host", "")]
    return any(origin in (f"http://{h}", f"https://{h}") for h in hosts if h)


def create_ui_router(
    store: Store,
    keys: KeyCache,
    controls: Controls,
    settings: Settings,
    auth: DashboardAuth,
) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("gatewatch.ui", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    static = _static_files()
    signer = auth.signer

    def asset(name: str) -> str:
        return f"/ui/static/{name}?v={static[name][2]}"

    env.globals["asset"] = asset

    def secure(request: Request) -> bool:
        return request.url.scheme == "https"

    def render(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        html = env.get_template(template).render(request_path=request.url.path, **context)
        return HTMLResponse(html, status_code=status, headers=_PAGE_HEADERS)

    def to_login(request: Request) -> RedirectResponse:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/ui/login?next={quote(target, safe='')}", status_code=303)

    def page_context(ident: Identity, session: Session, page: str) -> dict[str, Any]:
        return {
            "page": page,
            "me": {
                "user": ident.user_name,
                "user_id": ident.user_id,
                "org": ident.org_name,
                "org_id": ident.org_id,
                "role": ident.role,
                "key_name": ident.key_name,
            },
            "is_admin": ident.role in _ADMIN_ROLES,
            "csrf": signer.csrf_token(session),
            "csrf_header": CSRF_HEADER,
            "currency": settings.currency.code,
            "usd_rate": settings.currency.usd_rate,
        }

    async def signed_in(request: Request) -> tuple[Identity, Session] | None:
        return await auth.identify(request.cookies.get(SESSION_COOKIE))

    # ---- sign-in, sign-out -------------------------------------------------------------------

    def login_page(request: Request, next_path: str, error: str | None, status: int) -> Response:
        nonce = signer.login_nonce()
        resp = render(
            request, "login.html", status, next=next_path, error=error,
            token=signer.login_token(nonce),
        )  # fmt: skip
        resp.set_cookie(
            LOGIN_COOKIE, nonce, max_age=3600, path="/ui/login", httponly=True,
            samesite="strict", secure=secure(request),
        )  # fmt: skip
        return resp

    @router.get("/ui/login")
    async def login_form(request: Request) -> Response:
        next_path = _safe_next(request.query_params.get("next"))
        if await signed_in(request) is not None:
            return RedirectResponse(next_path, status_code=303)
        return login_page(request, next_path, None, 200)

    @router.post("/ui/login")
    async def login(request: Request) -> Response:
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        field = {k: v[0] for k, v in form.items() if v}
        next_path = _safe_next(field.get("next"))
        if not _same_origin(request) or not signer.check_login(
            request.cookies.get(LOGIN_COOKIE), field.get("csrf")
        ):
            return login_page(
                request, next_path, "The sign-in form expired. Please try again.", 400
            )
        secret = field.get("key", "").strip()
        ident = await keys.lookup(secret) if secret else None
        if ident is None:
            return login_page(request, next_path, "Unknown or revoked gateway key.", 401)
        cookie, _ = signer.issue(hash_key(secret))
        resp = RedirectResponse(next_path, status_code=303)
        resp.set_cookie(
            SESSION_COOKIE, cookie, max_age=signer.seconds, path="/", httponly=True,
            samesite="strict", secure=secure(request),
        )  # fmt: skip
        resp.delete_cookie(LOGIN_COOKIE, path="/ui/login")
        return resp

    @router.post("/ui/logout")
    async def logout(request: Request) -> Response:
        found = await signed_in(request)
        if found is not None:
            form = parse_qs((await request.body()).decode("utf-8", "replace"))
            token = form.get("csrf", [""])[0]
            if not _same_origin(request) or token != signer.csrf_token(found[1]):
                text = "The sign-out form did not carry this page's token."
                return render(request, "message.html", 400, title="Sign-out refused", text=text)
        resp = RedirectResponse("/ui/login", status_code=303)
        resp.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
        return resp

    # ---- pages -------------------------------------------------------------------------------

    def page(path: str, template: str, name: str, admin_only: bool = False) -> None:
        async def handler(request: Request) -> Response:
            found = await signed_in(request)
            if found is None:
                return to_login(request)
            ident, session = found
            context = page_context(ident, session, name)
            if admin_only and ident.role not in _ADMIN_ROLES:
                return render(request, "message.html", 403, title="Admins only",
                              text="This page needs an admin or owner key.", **context)  # fmt: skip
            return render(request, template, **context)

        router.get(path)(handler)

    page("/ui", "overview.html", "overview")
    page("/ui/requests", "requests.html", "requests")
    page("/ui/keys", "keys.html", "keys", admin_only=True)
    page("/ui/alerts", "alerts.html", "alerts", admin_only=True)

    @router.get("/ui/requests/{request_id}")
    async def request_page(request: Request, request_id: str) -> Response:
        found = await signed_in(request)
        if found is None:
            return to_login(request)
        ident, session = found
        context = page_context(ident, session, "requests")
        row = await asyncio.to_thread(store.get_request, ident.scope, request_id)
        if row is None:  # out of scope answers exactly like missing (§A)
            return render(request, "message.html", 404, title="Request not found",
                          text=f"There is no request {request_id} that this key may see.",
                          **context)  # fmt: skip
        return render(request, "request.html", request_id=request_id, **context)

    # ---- the dashboard's own data ------------------------------------------------------------

    @router.get("/ui/data/budgets")
    async def budgets(request: Request) -> Response:
        """Spend in the current budget period of every key, user and org in scope that has a
        budget: ``{"keys": {id: {...}}, "users": {...}, "orgs": {...}}``."""
        found = await signed_in(request)
        if found is None:
            return Response(status_code=401)
        ident = found[0]
        out: dict[str, dict[str, Any]] = {}
        for kind, scope_name in (("keys", "key"), ("users", "user"), ("orgs", "org")):
            out[kind] = {}
            after: str | None = None
            while True:
                page_ = await asyncio.to_thread(store.list_entities, kind, ident.scope, 1000, after)
                for row in page_.results:
                    if row.get("budget_usd") is None:
                        continue
                    period = row.get("budget_period") or "month"
                    spent = await controls.settled(scope_name, row["id"], row["name"], period)
                    w = controls.window(period)
                    out[kind][row["id"]] = {
                        "limit_usd": row["budget_usd"],
                        "spent_usd": round(spent, 10),
                        "period": period,
                        "period_end": None if period == "total" else w.end,
                    }
                after = page_.next_after_id
                if after is None:
                    break
        return Response(
            orjson.dumps(out),
            media_type="application/json",
            headers={"Cache-Control": "no-store"},
        )

    @router.get("/ui/static/{name}")
    async def static_file(name: str) -> Response:
        found = static.get(name)
        if found is None:
            return Response("not found", status_code=404, media_type="text/plain")
        data, kind, _ = found
        return Response(
            data,
            media_type=kind,
            headers={"Cache-Control": "public, max-age=31536000, immutable",
                     "X-Content-Type-Options": "nosniff"},
        )  # fmt: skip

    return router
