"""Dashboard sessions: a signed, HttpOnly, SameSite=Strict cookie instead of the key itself.

The cookie holds ``<payload>.<signature>``: the payload is base64url JSON with the SHA-256 of the
key that signed in (never the key), the session's expiry and a random nonce; the signature is
HMAC-SHA256 over the payload with the *signing key*. Every request looks the key hash up in the
store, so a revoked key's sessions end at once.

The signing key is derived with HMAC from ``session_secret`` in the configuration, or else from
``admin_key``: every worker and node of a deployment reads the same configuration, so they all
accept each other's cookies, and a restart keeps everyone signed in. Changing the secret signs
everyone out. With neither configured, a random key per process is used (sign-ins end at
restart and do not carry across ``--workers``), and a warning says so.

CSRF: each session has a token, HMAC(signing key, nonce), that pages carry in a ``<meta>`` tag
and send back in the ``x-gatewatch-csrf`` header on any state-changing API call made with the
cookie (or in a form field for sign-out). The sign-in form uses a pre-session cookie and token
of its own (double submit). SameSite=Strict already keeps other sites' requests cookie-less."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import secrets
import time
from dataclasses import dataclass

import orjson

from gatewatch.settings import Settings
from gatewatch.store.base import Identity, Store

__all__ = [
    "CSRF_HEADER",
    "LOGIN_COOKIE",
    "SESSION_COOKIE",
    "SESSION_SECONDS",
    "CsrfError",
    "DashboardAuth",
    "Session",
    "SessionSigner",
]

log = logging.getLogger("gatewatch.ui")

SESSION_COOKIE = "gatewatch_session"
LOGIN_COOKIE = "gatewatch_login"
CSRF_HEADER = "x-gatewatch-csrf"
SESSION_SECONDS = 12 * 3600
_CONTEXT = b"gatewatch dashboard session v1"


class CsrfError(Exception):
    """A state-changing request made with the session cookie but without its CSRF token."""


@dataclass(frozen=True, slots=True)
class Session:
    key_hash: str
    nonce: str
    expires: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SessionSigner:
    def __init__(self, signing_key: bytes, seconds: int = SESSION_SECONDS) -> None:
        self._key = signing_key
        self.seconds = seconds

    @classmethod
    def from_settings(cls, settings: Settings) -> SessionSigner:
        base = settings.session_secret or settings.admin_key
        if base is None:
            log.warning(
                "neither session_secret nor admin_key is configured: dashboard sign-ins end "
                "when this process stops and are not shared between workers"
            )
            return cls(secrets.token_bytes(32))
        key = hmac.new(base.get_secret_value().encode(), _CONTEXT, hashlib.sha256).digest()
        return cls(key)

    def _mac(self, purpose: str, text: str) -> str:
        return _b64(hmac.new(self._key, f"{purpose}:{text}".encode(), hashlib.sha256).digest())

    # ---- the session cookie ----------------------------------------------------------------

    def issue(self, key_hash: str, now: float | None = None) -> tuple[str, Session]:
        expires = int((now or time.time()) + self.seconds)
        session = Session(key_hash, secrets.token_urlsafe(16), expires)
        payload = _b64(orjson.dumps({"k": key_hash, "n": session.nonce, "e": expires}))
        return f"{payload}.{self._mac('session', payload)}", session

    def read(self, cookie: str | None, now: float | None = None) -> Session | None:
        if not cookie or cookie.count(".") != 1:
            return None
        payload, sig = cookie.split(".")
        if not hmac.compare_digest(sig, self._mac("session", payload)):
            return None
        try:
            data = orjson.loads(_unb64(payload))
            session = Session(str(data["k"]), str(data["n"]), int(data["e"]))
        except (ValueError, KeyError, TypeError):
            return None
        if session.expires <= (now or time.time()):
            return None
        return session

    def csrf_token(self, session: Session) -> str:
        return self._mac("csrf", session.nonce)

    def check_csrf(self, session: Session, token: str | None) -> None:
        if not token or not hmac.compare_digest(token, self.csrf_token(session)):
            raise CsrfError(
                f"missing or wrong {CSRF_HEADER} header: a change made with the dashboard's "
                "session cookie must carry the page's CSRF token"
            )

    # ---- the sign-in form (before there is a session) --------------------------------------

    def login_nonce(self) -> str:
        return secrets.token_urlsafe(16)

    def login_token(self, nonce: str) -> str:
        return self._mac("login", nonce)

    def check_login(self, nonce: str | None, token: str | None) -> bool:
        return bool(nonce and token and hmac.compare_digest(token, self.login_token(nonce)))


class DashboardAuth:
    """Who a browser request is, from its session cookie (for the pages and for the API)."""

    def __init__(self, signer: SessionSigner, store: Store) -> None:
        self.signer = signer
        self.store = store

    async def identify(self, cookie: str | None) -> tuple[Identity, Session] | None:
        session = self.signer.read(cookie)
        if session is None:
            return None
        ident = await asyncio.to_thread(self.store.identity_for_hash, session.key_hash)
        if ident is None or ident.revoked:
            return None
        return ident, session

    async def api_identity(
        self, method: str, cookie: str | None, csrf: str | None
    ) -> Identity | None:
        """The caller of an API request that came with the cookie and no key. Raises CsrfError
        for a state-changing method without the session's CSRF token."""
        found = await self.identify(cookie)
        if found is None:
            return None
        ident, session = found
        if method not in ("GET", "HEAD", "OPTIONS"):
            self.signer.check_csrf(session, csrf)
        return ident
