"""Reading what a provider answered: usage, the answering model, tool calls, and the message a
stream reassembles to. One reader per API shape, for blocking bodies and for SSE streams."""

from __future__ import annotations

from typing import Any

import orjson

from gatewatch.pricing import Usage
from gatewatch.records import ToolCall

__all__ = [
    "AnthropicStream",
    "ChatStream",
    "ResponsesStream",
    "StreamReader",
    "anthropic_usage",
    "chat_usage",
    "embeddings_usage",
    "last_user_prompt",
    "read_blocking",
    "responses_usage",
    "stream_reader",
]

_PROMPT_LIMIT = 32_000


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _get(d: Any, *path: str) -> Any:
    for p in path:
        if not isinstance(d, dict):
            return None
        d = d.get(p)
    return d


def chat_usage(u: Any) -> Usage:
    """OpenAI chat usage: cached tokens are inside prompt_tokens, reasoning tokens inside
    completion_tokens. A count the provider left out stays None, never 0 (§R)."""
    if not isinstance(u, dict):
        return Usage()
    return Usage(
        input_tokens=_int(u.get("prompt_tokens")),
        output_tokens=_int(u.get("completion_tokens")),
        cache_read_tokens=_int(_get(u, "prompt_tokens_details", "cached_tokens")) or 0,
        cache_write_tokens=0,
        reasoning_tokens=_int(_get(u, "completion_tokens_details", "reasoning_tokens")) or 0,
    )


def embeddings_usage(u: Any) -> Usage:
    """OpenAI embeddings usage: prompt tokens only; an embedding has no output, so output is 0
    once the input is known."""
    usage = chat_usage(u)
    if usage.input_tokens is not None and usage.output_tokens is None:
        usage.output_tokens = 0
    return usage


def responses_usage(u: Any) -> Usage:
    if not isinstance(u, dict):
        return Usage()
    return Usage(
        input_tokens=_int(u.get("input_tokens")),
        output_tokens=_int(u.get("output_tokens")),
        cache_read_tokens=_int(_get(u, "input_tokens_details", "cached_tokens")) or 0,
        cache_write_tokens=0,
        reasoning_tokens=_int(_get(u, "output_tokens_details", "reasoning_tokens")) or 0,
    )


def anthropic_usage(u: Any, into: Usage | None = None) -> Usage:
    """Anthropic reports cache reads and writes beside ``input_tokens``; the gateway's
    ``input_tokens`` is their sum (all input the model processed)."""
    out = into or Usage()
    if not isinstance(u, dict):
        return out
    old_read, old_write = out.cache_read_tokens or 0, out.cache_write_tokens or 0
    old_fresh = None if out.input_tokens is None else out.input_tokens - old_read - old_write
    fresh = _int(u.get("input_tokens"))
    read = _int(u.get("cache_read_input_tokens"))
    write = _int(u.get("cache_creation_input_tokens"))
    out.cache_read_tokens = read if read is not None else old_read
    out.cache_write_tokens = write if write is not None else old_write
    fresh = fresh if fresh is not None else old_fresh
    if fresh is not None:
        out.input_tokens = fresh + out.cache_read_tokens + out.cache_write_tokens
    output = _int(u.get("output_tokens"))
    if output is not None:
        out.output_tokens = output
    out.reasoning_tokens = out.reasoning_tokens or 0
    return out


def _text_of(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict):
                text = part.get("text")
                if isinstance(text, str) and part.get("type") in (
                    "text",
                    "input_text",
                    None,
                ):
                    parts.append(text)
            elif isinstance(part, str):
                parts.append(part)
        return "\n".join(parts) if parts else None
    return None


def last_user_prompt(kind: str, payload: dict[str, Any]) -> str | None:
    """The text of the last user turn (what a person reading the log wants to see first)."""
    text: str | None = None
    if kind in ("chat", "messages", "count_tokens"):
        messages = payload.get("messages")
        if isinstance(messages, list):
            for m in reversed(messages):
                if isinstance(m, dict) and m.get("role") == "user":
                    text = _text_of(m.get("content"))
                    if text is not None:
                        break
    elif kind == "responses":
        inp = payload.get("input")
        if isinstance(inp, str):
            text = inp
        elif isinstance(inp, list):
            for item in reversed(inp):
                if isinstance(item, dict) and item.get("role") == "user":
                    text = _text_of(item.get("content"))
                    if text is not None:
                        break
    elif kind == "embeddings":
        inp = payload.get("input")
        if isinstance(inp, str):
            text = inp
        elif isinstance(inp, list) and inp and isinstance(inp[-1], str):
            text = inp[-1]
    if text is not None and len(text) > _PROMPT_LIMIT:
        text = text[:_PROMPT_LIMIT]
    return text


def _chat_tool_calls(message: Any) -> list[ToolCall]:
    calls = []
    for tc in _get(message, "tool_calls") or []:
        if isinstance(tc, dict):
            fn = tc.get("function") or {}
            calls.append(ToolCall(str(fn.get("name", "")), tc.get("id"), fn.get("arguments") or ""))
    return calls


def _anthropic_tool_calls(content: Any) -> list[ToolCall]:
    calls = []
    for block in content or []:
        if isinstance(block, dict) and block.get("type") in ("tool_use", "server_tool_use"):
            calls.append(
                ToolCall(
                    str(block.get("name", "")),
                    block.get("id"),
                    orjson.dumps(block.get("input", {})).decode(),
                )
            )
    return calls


def _responses_tool_calls(output: Any) -> list[ToolCall]:
    calls = []
    for item in output or []:
        if isinstance(item, dict) and item.get("type") == "function_call":
            calls.append(
                ToolCall(
                    str(item.get("name", "")), item.get("call_id"), item.get("arguments") or ""
                )
            )
    return calls


def read_blocking(kind: str, body: Any) -> tuple[str | None, Usage, list[ToolCall]]:
    """(model as reported, usage, tool calls) of a blocking response body."""
    if not isinstance(body, dict):
        return None, Usage(), []
    model = body.get("model") if isinstance(body.get("model"), str) else None
    if kind == "chat":
        choices = body.get("choices") or []
        calls = []
        for choice in choices:
            calls.extend(_chat_tool_calls(_get(choice, "message")))
        return model, chat_usage(body.get("usage")), calls
    if kind == "embeddings":
        return model, embeddings_usage(body.get("usage")), []
    if kind == "responses":
        return (
            model,
            responses_usage(body.get("usage")),
            _responses_tool_calls(body.get("output")),
        )
    if kind == "messages":
        return model, anthropic_usage(body.get("usage")), _anthropic_tool_calls(body.get("content"))
    return model, Usage(), []


class StreamReader:
    """Reads a stream's events; ``on_event`` returns True for an event not to relay."""

    model: str | None = None
    error: str | None = None
    done: bool = False

    def __init__(self) -> None:
        self.usage = Usage()

    def on_event(self, event: str | None, data: bytes) -> bool:
        raise NotImplementedError

    def tool_calls(self) -> list[ToolCall]:
        raise NotImplementedError

    def message(self) -> dict[str, Any]:
        raise NotImplementedError

    @staticmethod
    def _json(data: bytes) -> Any:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            return None


class ChatStream(StreamReader):
    """``chat.completion.chunk`` events. With ``strip_usage`` the usage-only chunk the gateway
    asked for (and the client did not) is read but not relayed."""

    def __init__(self, strip_usage: bool) -> None:
        super().__init__()
        self.strip_usage = strip_usage
        self.id: str | None = None
        self.created: int | None = None
        self.choices: dict[int, dict[str, Any]] = {}

    def on_event(self, event: str | None, data: bytes) -> bool:
        if data == b"[DONE]":
            self.done = True
            return False
        chunk = self._json(data)
        if not isinstance(chunk, dict):
            return False
        if "error" in chunk:
            self.error = str(_get(chunk, "error", "message") or chunk["error"])
            return False
        if self.model is None and isinstance(chunk.get("model"), str):
            self.model = chunk["model"]
            self.id = chunk.get("id")
            self.created = chunk.get("created")
        choices = chunk.get("choices") or []
        for c in choices:
            if isinstance(c, dict):
                self._add(c)
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage = chat_usage(usage)
            return self.strip_usage and not choices
        return False

    def _add(self, c: dict[str, Any]) -> None:
        idx = c.get("index", 0)
        acc = self.choices.setdefault(
            idx, {"content": [], "tool_calls": {}, "finish_reason": None, "role": "assistant"}
        )
        delta = c.get("delta") or {}
        text = delta.get("content")
        if isinstance(text, str):
            acc["content"].append(text)
        for tc in delta.get("tool_calls") or []:
            slot = acc["tool_calls"].setdefault(
                tc.get("index", 0), {"id": None, "name": "", "arguments": []}
            )
            if tc.get("id"):
                slot["id"] = tc["id"]
            fn = tc.get("function") or {}
            if fn.get("name"):
                slot["name"] += fn["name"]
            if fn.get("arguments"):
                slot["arguments"].append(fn["arguments"])
        if c.get("finish_reason"):
            acc["finish_reason"] = c["finish_reason"]

    def tool_calls(self) -> list[ToolCall]:
        return [
            ToolCall(tc["name"], tc["id"], "".join(tc["arguments"]))
            for acc in self.choices.values()
            for tc in acc["tool_calls"].values()
        ]

    def message(self) -> dict[str, Any]:
        choices = []
        for idx, acc in sorted(self.choices.items()):
            msg: dict[str, Any] = {"role": "assistant", "content": "".join(acc["content"]) or None}
            if acc["tool_calls"]:
                msg["tool_calls"] = [
                    {
                        "id": tc["id"],
                        "type": "function",
                        "function": {"name": tc["name"], "arguments": "".join(tc["arguments"])},
                    }
                    for tc in acc["tool_calls"].values()
                ]
            choices.append({"index": idx, "message": msg, "finish_reason": acc["finish_reason"]})
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": _usage_dict(self.usage),
        }


class AnthropicStream(StreamReader):
    """``message_start`` … ``message_stop``: input tokens from message_start, output from
    message_delta."""

    def __init__(self) -> None:
        super().__init__()
        self.msg: dict[str, Any] = {}
        self.blocks: dict[int, dict[str, Any]] = {}
        self.partial_json: dict[int, list[str]] = {}

    def on_event(self, event: str | None, data: bytes) -> bool:
        obj = self._json(data)
        if not isinstance(obj, dict):
            return False
        kind = obj.get("type") or event
        if kind == "message_start":
            self.msg = dict(obj.get("message") or {})
            if isinstance(self.msg.get("model"), str):
                self.model = self.msg["model"]
            anthropic_usage(self.msg.get("usage"), self.usage)
        elif kind == "content_block_start":
            self.blocks[obj.get("index", 0)] = dict(obj.get("content_block") or {})
        elif kind == "content_block_delta":
            idx = obj.get("index", 0)
            block = self.blocks.setdefault(idx, {"type": "text", "text": ""})
            delta = obj.get("delta") or {}
            dtype = delta.get("type")
            if dtype == "text_delta":
                block["text"] = block.get("text", "") + delta.get("text", "")
            elif dtype == "input_json_delta":
                self.partial_json.setdefault(idx, []).append(delta.get("partial_json", ""))
            elif dtype == "thinking_delta":
                block["thinking"] = block.get("thinking", "") + delta.get("thinking", "")
        elif kind == "content_block_stop":
            self._close_block(obj.get("index", 0))
        elif kind == "message_delta":
            delta = obj.get("delta") or {}
            for k in ("stop_reason", "stop_sequence"):
                if k in delta:
                    self.msg[k] = delta[k]
            anthropic_usage(obj.get("usage"), self.usage)
        elif kind == "message_stop":
            self.done = True
        elif kind == "error":
            self.error = str(_get(obj, "error", "message") or obj.get("error"))
        return False

    def _close_block(self, idx: int) -> None:
        parts = self.partial_json.pop(idx, None)
        block = self.blocks.get(idx)
        if block is not None and parts is not None:
            text = "".join(parts)
            try:
                block["input"] = orjson.loads(text) if text else {}
            except orjson.JSONDecodeError:
                block["input"] = text

    def tool_calls(self) -> list[ToolCall]:
        for idx in list(self.partial_json):
            self._close_block(idx)
        return _anthropic_tool_calls([self.blocks[i] for i in sorted(self.blocks)])

    def message(self) -> dict[str, Any]:
        for idx in list(self.partial_json):
            self._close_block(idx)
        msg = dict(self.msg)
        msg["content"] = [self.blocks[i] for i in sorted(self.blocks)]
        msg["usage"] = {
            "input_tokens": (self.usage.input_tokens or 0)
            - (self.usage.cache_read_tokens or 0)
            - (self.usage.cache_write_tokens or 0),
            "output_tokens": self.usage.output_tokens,
            "cache_read_input_tokens": self.usage.cache_read_tokens,
            "cache_creation_input_tokens": self.usage.cache_write_tokens,
        }
        return msg


class ResponsesStream(StreamReader):
    """Responses API events; ``response.completed`` carries the whole response and usage."""

    def __init__(self) -> None:
        super().__init__()
        self.response: dict[str, Any] | None = None
        self.items: dict[int, dict[str, Any]] = {}
        self.text: list[str] = []

    def on_event(self, event: str | None, data: bytes) -> bool:
        obj = self._json(data)
        if not isinstance(obj, dict):
            return False
        kind = obj.get("type") or event
        if kind in ("response.created", "response.in_progress"):
            resp = obj.get("response") or {}
            if self.model is None and isinstance(resp.get("model"), str):
                self.model = resp["model"]
        elif kind == "response.output_text.delta":
            self.text.append(str(obj.get("delta", "")))
        elif kind == "response.output_item.done":
            item = obj.get("item")
            if isinstance(item, dict):
                self.items[obj.get("output_index", len(self.items))] = item
        elif kind in ("response.completed", "response.incomplete", "response.failed"):
            resp = obj.get("response")
            if isinstance(resp, dict):
                self.response = resp
                if isinstance(resp.get("model"), str):
                    self.model = resp["model"]
                self.usage = responses_usage(resp.get("usage"))
                if kind == "response.failed":
                    self.error = str(_get(resp, "error", "message") or "response failed")
            self.done = True
        elif kind == "error":
            self.error = str(obj.get("message") or _get(obj, "error", "message") or "error")
        return False

    def tool_calls(self) -> list[ToolCall]:
        if self.response is not None:
            return _responses_tool_calls(self.response.get("output"))
        return _responses_tool_calls([self.items[i] for i in sorted(self.items)])

    def message(self) -> dict[str, Any]:
        if self.response is not None:
            return self.response
        return {
            "object": "response",
            "status": "incomplete",
            "model": self.model,
            "output": [self.items[i] for i in sorted(self.items)],
            "output_text": "".join(self.text),
        }


class PassthroughStream(StreamReader):
    """A stream of an unknown shape: relayed, not read."""

    def on_event(self, event: str | None, data: bytes) -> bool:
        return False

    def tool_calls(self) -> list[ToolCall]:
        return []

    def message(self) -> dict[str, Any]:
        return {}


def stream_reader(kind: str, strip_usage: bool) -> StreamReader:
    if kind == "chat":
        return ChatStream(strip_usage)
    if kind == "messages":
        return AnthropicStream()
    if kind == "responses":
        return ResponsesStream()
    return PassthroughStream()


def _usage_dict(u: Usage) -> dict[str, Any] | None:
    if u.input_tokens is None and u.output_tokens is None:
        return None
    return {
        "prompt_tokens": u.input_tokens,
        "completion_tokens": u.output_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cache_read_tokens},
        "completion_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
    }
