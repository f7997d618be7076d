"""Errors in the calling API family's own JSON shape (§P7)."""

from __future__ import annotations

import re
from typing import Literal

import orjson

__all__ = [
    "Family",
    "GatewayError",
    "error_body",
    "non_json_error",
    "sse_error_event",
    "upstream_error_message",
]

Family = Literal["openai", "anthropic"]

# status → (OpenAI error type, Anthropic error type)
_TITLE = re.compile(rb"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)
_TAG = re.compile(rb"<[^>]*>")
_SNIPPET = 200

_TYPES = {
    400: ("invalid_request_error", "invalid_request_error"),
    401: ("authentication_error", "authentication_error"),
    402: ("insufficient_quota", "billing_error"),
    403: ("permission_error", "permission_error"),
    404: ("not_found_error", "not_found_error"),
    405: ("invalid_request_error", "invalid_request_error"),
    413: ("invalid_request_error", "request_too_large"),
    429: ("rate_limit_error", "rate_limit_error"),
    500: ("server_error", "api_error"),
    502: ("upstream_error", "api_error"),
    503: ("service_unavailable", "overloaded_error"),
    504: ("timeout_error", "timeout_error"),
}


class GatewayError(Exception):
    """An answer the gateway gives itself, with a clear message and a machine-readable code."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or []

    def error_type(self, family: Family) -> str:
        openai_type, anthropic_type = _TYPES.get(self.status, ("api_error", "api_error"))
        return anthropic_type if family == "anthropic" else openai_type


def error_body(family: Family, err: GatewayError) -> bytes:
    if family == "anthropic":
        return orjson.dumps(
            {"type": "error", "error": {"type": err.error_type(family), "message": err.message}}
        )
    return orjson.dumps(
        {
            "error": {
                "message": err.message,
                "type": err.error_type(family),
                "param": None,
                "code": err.code,
            }
        }
    )


def sse_error_event(family: Family, err: GatewayError) -> bytes:
    """How a provider reports an error after a stream has started."""
    if family == "anthropic":
        return b"event: error\ndata: " + error_body(family, err) + b"\n\n"
    return b"data: " + error_body(family, err) + b"\n\n"


def non_json_error(
    provider: str, status: int, content: bytes, headers: list[tuple[bytes, bytes]]
) -> GatewayError | None:
    """A provider's error answer whose body is not a JSON object (an HTML page from a proxy in
    front of it, an empty body, plain text), as an error in the caller's shape with the same
    status and relayed headers (``retry-after``). None for a JSON body: that is relayed as is."""
    try:
        if isinstance(orjson.loads(content), dict):
            return None
    except orjson.JSONDecodeError:
        pass
    text = content.strip()
    if not text:
        what = "an empty body"
    elif text.startswith(b"<") or _TITLE.search(text):
        title = _TITLE.search(text)
        words = (title.group(1) if title else _TAG.sub(b" ", text)).split()
        what = "an HTML page: " + b" ".join(words).decode("utf-8", "replace")[:_SNIPPET]
    else:
        what = "a non-JSON body: " + b" ".join(text.split()).decode("utf-8", "replace")[:_SNIPPET]
    code = "rate_limited" if status == 429 else "upstream_error"
    return GatewayError(status, f"{provider} answered {status} with {what}", code, headers)


def upstream_error_message(data: bytes) -> tuple[str | None, str | None]:
    """(error type, message) of a provider's error body, as far as it says."""
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None, data[:500].decode("utf-8", "replace") or None
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        return err.get("type") or err.get("code"), err.get("message")
    if isinstance(err, str):
        return None, err
    return None, None
