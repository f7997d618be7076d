"""Gateway keys (§P3): secrets shown once and stored as hashes; look-ups cached in memory."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets

from gatewatch.store.base import Identity, Store

__all__ = ["KeyCache", "hash_key", "new_secret", "secret_from_headers"]

log = logging.getLogger("gatewatch.auth")
ADMIN_KEY_ID = "key_bootstrap_admin"


def new_secret() -> str:
    return "gw-" + secrets.token_urlsafe(32)


def hash_key(secret: str) -> str:
    """Keys are 256 random bits, so one SHA-256 is enough (no slow KDF on the request path)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_from_headers(headers: dict[bytes, bytes]) -> str | None:
    auth = headers.get(b"authorization")
    if auth:
        scheme, _, token = auth.decode("latin-1").partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    key = headers.get(b"x-api-key")
    if key:
        return key.decode("latin-1").strip() or None
    return None


class KeyCache:
    """Maps a presented secret to its Identity without a database read per request.

    The look-up is by the secret's SHA-256, never by the secret itself, so its timing says
    nothing about the secret (the constant-time comparison is the hash's preimage resistance).

    Writes through this process invalidate at once (``invalidate``); writes by other workers or
    nodes are seen within ``refresh_interval`` through the store's keys version."""

    def __init__(self, store: Store, refresh_interval: float = 0.5) -> None:
        self.store = store
        self.refresh_interval = refresh_interval
        self._known: dict[str, Identity] = {}
        self._unknown: set[str] = set()
        self._version = -1

    def invalidate(self) -> None:
        self._known.clear()
        self._unknown.clear()

    async def lookup(self, secret: str) -> Identity | None:
        digest = hash_key(secret)
        ident = self._known.get(digest)
        if ident is None:
            if digest in self._unknown:
                return None
            ident = await asyncio.to_thread(self.store.identity_for_hash, digest)
            if ident is None:
                if len(self._unknown) > 100_000:
                    self._unknown.clear()
                self._unknown.add(digest)
                return None
            self._known[digest] = ident
        return None if ident.revoked else ident

    async def watch(self) -> None:
        """Runs for the app's lifetime: drop the cache when keys change elsewhere."""
        while True:
            try:
                version = await asyncio.to_thread(self.store.keys_version)
                if version != self._version:
                    if self._version != -1:
                        self.invalidate()
                    self._version = version
            except Exception:
                log.exception("checking the keys version failed")
            await asyncio.sleep(self.refresh_interval)
