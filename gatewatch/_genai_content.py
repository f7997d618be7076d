"""Prompt and completion content in the GenAI semantic conventions' message shapes (opt-in span
attributes ``gen_ai.system_instructions``, ``gen_ai.input.messages``, ``gen_ai.output.messages``:
a list of ``{"role", "parts": [{"type": "text", "content"} | {"type": "tool_call", …} |
{"type": "tool_call_response", …} | …]}``), from OpenAI chat, Responses and Anthropic bodies."""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ["content_attributes"]

Message = dict[str, Any]
_TEXT_TYPES = {"text", "input_text", "output_text"}


def _list(value: Any) -> list[Any]:
    """A field that should be a list, as sent by a client or provider: anything else is empty."""
    return value if isinstance(value, list) else []


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(text: str) -> dict[str, Any]:
    return {"type": "text", "content": text}


def _json_or_text(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
    return value


def _parts(content: Any) -> list[dict[str, Any]]:
    """OpenAI/Anthropic message content (a string or a list of typed parts) → parts."""
    if isinstance(content, str):
        return [_text(content)]
    out: list[dict[str, Any]] = []
    for part in content if isinstance(content, list) else []:
        if isinstance(part, str):
            out.append(_text(part))
            continue
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind in _TEXT_TYPES and isinstance(part.get("text"), str):
            out.append(_text(part["text"]))
        elif kind == "tool_use":
            out.append(
                {"type": "tool_call", "id": part.get("id"), "name": str(part.get("name", "")),
                 "arguments": part.get("input")}
            )  # fmt: skip
        elif kind == "tool_result":
            out.append(
                {"type": "tool_call_response", "id": part.get("tool_use_id"),
                 "response": _content_value(part.get("content"))}
            )  # fmt: skip
        elif kind == "thinking" and isinstance(part.get("thinking"), str):
            out.append({"type": "reasoning", "content": part["thinking"]})
        elif kind == "image_url":
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            if isinstance(url, str) and not url.startswith("data:"):
                out.append({"type": "uri", "modality": "image", "uri": url})
            else:
                out.append({"type": "blob", "modality": "image"})
        elif isinstance(kind, str):
            out.append({"type": kind})
    return out


def _content_value(content: Any) -> Any:
    """A tool result: its text when it is text, else the value as sent."""
    if isinstance(content, list):
        texts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        if texts and len(texts) == len(content) and all(isinstance(t, str) for t in texts):
            return "\n".join(str(t) for t in texts)
    return content


def _chat_tool_calls(calls: Any) -> list[dict[str, Any]]:
    out = []
    for call in calls if isinstance(calls, list) else []:
        if isinstance(call, dict):
            fn = _dict(call.get("function"))
            out.append(
                {"type": "tool_call", "id": call.get("id"), "name": str(fn.get("name", "")),
                 "arguments": _json_or_text(fn.get("arguments"))}
            )  # fmt: skip
    return out


def _chat_input(payload: dict[str, Any]) -> list[Message]:
    out: list[Message] = []
    for m in _list(payload.get("messages")):
        if not isinstance(m, dict):
            continue
        role = str(m.get("role", "user"))
        if role == "tool":
            out.append(
                {"role": "tool", "parts": [
                    {"type": "tool_call_response", "id": m.get("tool_call_id"),
                     "response": _content_value(m.get("content"))}]}
            )  # fmt: skip
            continue
        if role == "developer":
            role = "system"
        parts = _parts(m.get("content")) + _chat_tool_calls(m.get("tool_calls"))
        out.append({"role": role, "parts": parts})
    return out


def _chat_output(body: dict[str, Any]) -> list[Message]:
    out: list[Message] = []
    for choice in _list(body.get("choices")):
        if not isinstance(choice, dict):
            continue
        msg = _dict(choice.get("message"))
        parts = _parts(msg.get("content")) + _chat_tool_calls(msg.get("tool_calls"))
        out.append(
            {"role": "assistant", "parts": parts,
             "finish_reason": choice.get("finish_reason") or "error"}
        )  # fmt: skip
    return out


def _anthropic_system(payload: dict[str, Any]) -> list[dict[str, Any]] | None:
    system = payload.get("system")
    return _parts(system) or None if system else None


def _anthropic_input(payload: dict[str, Any]) -> list[Message]:
    return [
        {"role": str(m.get("role", "user")), "parts": _parts(m.get("content"))}
        for m in _list(payload.get("messages"))
        if isinstance(m, dict)
    ]


def _anthropic_output(body: dict[str, Any]) -> list[Message]:
    return [
        {"role": "assistant", "parts": _parts(body.get("content")),
         "finish_reason": body.get("stop_reason") or "error"}
    ]  # fmt: skip


def _responses_items(items: Any) -> list[Message]:
    out: list[Message] = []
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict):
            continue
        kind = item.get("type", "message")
        if kind == "message":
            role = str(item.get("role", "user"))
            out.append({"role": "system" if role == "developer" else role,
                        "parts": _parts(item.get("content"))})  # fmt: skip
        elif kind == "function_call":
            out.append(
                {"role": "assistant", "parts": [
                    {"type": "tool_call", "id": item.get("call_id"),
                     "name": str(item.get("name", "")),
                     "arguments": _json_or_text(item.get("arguments"))}]}
            )  # fmt: skip
        elif kind == "function_call_output":
            out.append(
                {"role": "tool", "parts": [
                    {"type": "tool_call_response", "id": item.get("call_id"),
                     "response": item.get("output")}]}
            )  # fmt: skip
        elif kind == "reasoning":
            texts = [s.get("text") for s in _list(item.get("summary")) if isinstance(s, dict)]
            text = "\n".join(t for t in texts if isinstance(t, str))
            out.append({"role": "assistant", "parts": [{"type": "reasoning", "content": text}]})
    return out


def _responses_input(payload: dict[str, Any]) -> list[Message]:
    inp = payload.get("input")
    if isinstance(inp, str):
        return [{"role": "user", "parts": [_text(inp)]}]
    return _responses_items(inp)


def _responses_output(body: dict[str, Any]) -> list[Message]:
    parts: list[dict[str, Any]] = []
    for msg in _responses_items(body.get("output")):
        parts.extend(msg["parts"])
    status = body.get("status")
    reason = "stop" if status == "completed" else str(status or "error")
    details = body.get("incomplete_details")
    if isinstance(details, dict) and details.get("reason"):
        reason = str(details["reason"])
    return [{"role": "assistant", "parts": parts, "finish_reason": reason}]


def _load(raw: Any) -> dict[str, Any] | None:
    if isinstance(raw, bytes | str):
        try:
            raw = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
    return raw if isinstance(raw, dict) else None


def content_attributes(kind: str, request_body: Any, response_body: Any) -> dict[str, Any]:
    """The opt-in content attributes of one request (bodies as stored: bytes, secrets
    redacted). Unknown shapes give no attribute rather than a wrong one."""
    out: dict[str, Any] = {}
    payload = _load(request_body)
    body = _load(response_body)
    if kind == "chat":
        if payload is not None:
            out["gen_ai.input.messages"] = _chat_input(payload)
        if body is not None and "choices" in body:
            out["gen_ai.output.messages"] = _chat_output(body)
    elif kind == "messages":
        if payload is not None:
            out["gen_ai.system_instructions"] = _anthropic_system(payload)
            out["gen_ai.input.messages"] = _anthropic_input(payload)
        if body is not None and "content" in body:
            out["gen_ai.output.messages"] = _anthropic_output(body)
    elif kind == "responses":
        if payload is not None:
            instructions = payload.get("instructions")
            if isinstance(instructions, str) and instructions:
                out["gen_ai.system_instructions"] = [_text(instructions)]
            out["gen_ai.input.messages"] = _responses_input(payload)
        if body is not None and "output" in body:
            out["gen_ai.output.messages"] = _responses_output(body)
    elif kind == "embeddings" and payload is not None:
        inp = payload.get("input")
        texts = [inp] if isinstance(inp, str) else inp if isinstance(inp, list) else []
        parts = [_text(t) for t in texts if isinstance(t, str)]
        if parts:
            out["gen_ai.input.messages"] = [{"role": "user", "parts": parts}]
    return {k: v for k, v in out.items() if v}
