"""Who a request is for (§P4): attribution headers, body fields, and the calling client."""

from __future__ import annotations

import re
from typing import Any

from gatewatch.records import Record

__all__ = ["apply_attribution", "detect_client"]

# (pattern on the lower-cased user agent, client name); coding clients first, then SDKs.
_CLIENTS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(p), name)
    for p, name in (
        (r"claude-cli|claude-code|claude_code", "claude-code"),
        (r"codex", "codex"),
        (r"cursor", "cursor"),
        (r"\bcline\b", "cline"),
        (r"roo-?code|roo-cline", "roo-code"),
        (r"kilo-?code", "kilo-code"),
        (r"windsurf|codeium", "windsurf"),
        (r"copilot", "github-copilot"),
        (r"aider", "aider"),
        (r"opencode", "opencode"),
        (r"continue", "continue"),
        (r"\bzed\b", "zed"),
        (r"goose", "goose"),
        (r"gemini-cli", "gemini-cli"),
        (r"openai/python", "openai-python"),
        (r"openai/js", "openai-node"),
        (r"anthropic/python", "anthropic-python"),
        (r"anthropic/js", "anthropic-node"),
        (r"litellm", "litellm"),
        (r"langchain", "langchain"),
        (r"^curl/", "curl"),
        (r"python-requests", "python-requests"),
        (r"python-httpx", "python-httpx"),
    )
)
_MAX_VALUE = 512


def detect_client(user_agent: str | None) -> str | None:
    if not user_agent:
        return None
    ua = user_agent.lower()
    for pattern, name in _CLIENTS:
        if pattern.search(ua):
            return name
    return None


def _clip(v: str) -> str:
    return v[:_MAX_VALUE]


def apply_attribution(rec: Record, headers: dict[bytes, bytes], payload: dict[str, Any]) -> None:
    """Fill the record's attribution fields from ``x-gatewatch-*`` headers and body fields."""
    end_user = headers.get(b"x-gatewatch-user")
    if end_user:
        rec.end_user = _clip(end_user.decode("utf-8", "replace"))
    else:
        body_user = payload.get("user")
        if not isinstance(body_user, str):
            metadata = payload.get("metadata")
            body_user = metadata.get("user_id") if isinstance(metadata, dict) else None
        if isinstance(body_user, str) and body_user:
            rec.end_user = _clip(body_user)
    for name, value in headers.items():
        if not name.startswith(b"x-gatewatch-"):
            continue
        key = name[12:].decode("latin-1")
        text = _clip(value.decode("utf-8", "replace"))
        if key == "session":
            rec.session = text
        elif key == "workflow":
            rec.workflow = text
        elif key == "tags":
            tags = [t.strip() for t in text.split(",")]
            rec.tags = list(dict.fromkeys(t for t in tags if t))
        elif key.startswith("meta-") and len(key) > 5:
            rec.meta[key[5:]] = text
    ua = headers.get(b"user-agent")
    if ua:
        rec.user_agent = _clip(ua.decode("utf-8", "replace"))
        rec.client = detect_client(rec.user_agent)
    correlation = headers.get(b"x-request-id")
    if correlation:
        rec.correlation_id = _clip(correlation.decode("utf-8", "replace"))
