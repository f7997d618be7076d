"""A simulated upstream LLM provider speaking the OpenAI and Anthropic HTTP wire formats.

Blocking JSON and SSE streams match the real APIs, so the official ``openai`` and ``anthropic``
SDKs work against it unchanged. Used as the fake upstream in tests and by ``gatewatch demo``.

Deterministic: input tokens = 10 + words of all message/input text (system/instructions
included); output tokens = words of the reply, ``"This is a simulated answer to: <first 8 words
of the last user message>. …"``. When tools are declared and the conversation ends with a user
turn (not a tool result) mentioning "weather", the answer calls the first tool with
``{"city": "Paris"}`` (output tokens = words of ``"<name> <arguments JSON>"``).

Model-name substrings (both families): ``error-500|529|429|400|401`` → that status with the
family's error body (429 adds ``retry-after: 1``); ``timeout`` → 30 s wait before answering (cut
short if the client leaves); ``slow`` → 0.3 s between stream events / before blocking answers;
``broken`` → the stream drops after 3 content events; ``nousage`` → no usage anywhere (blocking
bodies, stream chunks and events), whatever the request asked for; ``garbled`` → stream events
end lines in CRLF and come with a comment line, ``id:``/``retry:`` fields, an event of an unknown
type and a data line that is not JSON (what a lenient provider may send; the ``openai`` SDK
cannot parse the last one); ``error-html-502`` / ``error-empty-500`` / ``error-text-429`` → that
status with an HTML page, an empty body, or plain text with ``retry-after: 7``; ``cached`` →
OpenAI ``cached_tokens`` = input // 2 (inside prompt tokens), Anthropic cache read 100 /
creation 20 (outside ``input_tokens``); ``o<digit>…`` → OpenAI ``reasoning_tokens`` = 7
(inside output tokens). OpenAI chat/responses report a dated model (``gpt-4o-mini`` →
``gpt-4o-mini-2024-07-18``) unless it already ends in a date or contains ``sim-``; Anthropic
echoes the requested model.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import random
import re
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

import anyio
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

__all__ = ["SimulatedStreamBreak", "create_simulator_app"]

Json = dict[str, Any]
Family = Literal["openai", "anthropic"]
# One encoded SSE event and whether it carries answer content (counted for "broken" models).
_Event = tuple[bytes, bool]

_FILLER = (
    "The gatewatch simulator wrote this reply deterministically, "
    "so that every stream arrives in several small pieces."
)
_WORDS_PER_PIECE = 3
_FRAGMENT_CHARS = 4
_SLOW_DELAY = 0.3
_TIMEOUT_SLEEP = 30.0
_BROKEN_AFTER = 3
_REASONING_TOKENS = 7
_FINGERPRINT = "fp_9a1c5e0b7d"
_WEATHER = re.compile(r"\bweather\b", re.IGNORECASE)
_REASONING_MODEL = re.compile(r"o\d")
_DATED = re.compile(r"(\d{4}-\d{2}-\d{2}|\d{8})$")
_DATE_SUFFIX = "-2024-07-18"

# Error kinds: (OpenAI error type, OpenAI error code, Anthropic error type).
_ErrorKind = tuple[str, str | None, str]
_INVALID: _ErrorKind = ("invalid_request_error", None, "invalid_request_error")
_UNAUTHENTICATED: _ErrorKind = ("invalid_request_error", "invalid_api_key", "authentication_error")
_NOT_FOUND: _ErrorKind = ("invalid_request_error", None, "not_found_error")
# Model-name marker, HTTP status, error kind, message.
_FAILURES: tuple[tuple[str, int, _ErrorKind, str], ...] = (
    ("error-500", 500, ("server_error", None, "api_error"), "Internal server error."),
    ("error-529", 529, ("server_error", "overloaded", "overloaded_error"), "Overloaded."),
    ("error-429", 429, ("requests", "rate_limit_exceeded", "rate_limit_error"), "Rate limited."),
    ("error-400", 400, _INVALID, "Bad request."),
    ("error-401", 401, _UNAUTHENTICATED, "Incorrect API key provided."),
)
# Failures whose body is not the provider's JSON (a proxy or load balancer answering instead):
# model-name marker, HTTP status, content type, body, extra headers.
_RAW_FAILURES: tuple[tuple[str, int, str, bytes, dict[str, str]], ...] = (
    ("error-html-502", 502, "text/html",
     b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
     b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
     b"</body>\r\n</html>\r\n", {}),
    ("error-empty-500", 500, "text/plain", b"", {}),
    ("error-text-429", 429, "text/plain", b"Too Many Requests", {"retry-after": "7"}),
)  # fmt: skip
# What ``garbled`` streams add after their first event (CRLF line ends, like every event).
_GARBLE = (
    b": a comment line, which clients ignore\r\n\r\n",
    b'event: simulator.unknown\r\ndata: {"type": "simulator.unknown"}\r\n\r\n',
    b"data: this data line is not JSON\r\n\r\n",
)

_MODELS: tuple[tuple[str, str], ...] = (
    ("gpt-4o-mini", "openai"),
    ("gpt-4o", "openai"),
    ("o3-mini", "openai"),
    ("text-embedding-3-small", "openai"),
    ("claude-sonnet-4-5", "anthropic"),
    ("claude-haiku-4-5", "anthropic"),
    ("sim-echo", "gatewatch"),
)
_MODELS_CREATED = 1_715_367_049


class SimulatedStreamBreak(RuntimeError):
    """Raised inside a ``broken`` model's stream body so the server aborts the response."""


@dataclass(frozen=True)
class _Answer:
    text: str
    tool_name: str | None
    arguments: str
    input_tokens: int
    output_tokens: int


# Request interpretation


def _texts(value: object) -> list[str]:
    """All text found in message content, content parts, tool results and input items."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [text for item in value for text in _texts(item)]
    if isinstance(value, dict):
        return [text for key in ("text", "content", "output") for text in _texts(value.get(key))]
    return []


def _words(texts: list[str]) -> int:
    return sum(len(text.split()) for text in texts)


def _as_list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _tool_names(tools: object) -> list[str]:
    names: list[str] = []
    for tool in _as_list(tools):
        if not isinstance(tool, dict):
            continue
        function = tool.get("function")
        name = function.get("name") if isinstance(function, dict) else tool.get("name")
        if isinstance(name, str) and name:
            names.append(name)
    return names


def _is_tool_result(content: object) -> bool:
    return any(
        isinstance(part, dict) and part.get("type") == "tool_result" for part in _as_list(content)
    )


def _answer_for(items: list[Any], preamble: object, tools: object) -> _Answer:
    """Decide the reply for a conversation (chat messages, Anthropic messages, Responses input)."""
    turns = [item for item in items if isinstance(item, dict)]
    users = [turn for turn in turns if turn.get("role") == "user"]
    prompt = " ".join(_texts(users[-1].get("content"))) if users else ""
    last = items[-1] if items else None
    final_is_user = (
        isinstance(last, dict)
        and last.get("role") == "user"
        and not _is_tool_result(last.get("content"))
    )
    input_tokens = 10 + _words(_texts(preamble)) + _words(_texts(turns))
    names = _tool_names(tools)
    if names and final_is_user and _WEATHER.search(prompt):
        arguments = json.dumps({"city": "Paris"})
        output = _words([names[0], arguments])
        return _Answer("", names[0], arguments, input_tokens, output)
    head = " ".join(prompt.split()[:8]) or "an empty prompt"
    text = f"This is a simulated answer to: {head}. {_FILLER}"
    return _Answer(text, None, "", input_tokens, _words([text]))


def _responses_items(value: object) -> list[Any]:
    return [{"role": "user", "content": value}] if isinstance(value, str) else _as_list(value)


def _dated(model: str) -> str:
    if "sim-" in model or _DATED.search(model):
        return model
    return model + _DATE_SUFFIX


def _reports_usage(model: str) -> bool:
    return "nousage" not in model


def _cached(model: str) -> bool:
    return "cached" in model


def _reasoning(model: str) -> int:
    return _REASONING_TOKENS if _REASONING_MODEL.match(model) else 0


def _pieces(text: str) -> list[str]:
    """Split the reply into stream pieces of a few words that concatenate back to ``text``."""
    words = text.split(" ")
    groups = [words[i : i + _WORDS_PER_PIECE] for i in range(0, len(words), _WORDS_PER_PIECE)]
    return [(" " if i else "") + " ".join(group) for i, group in enumerate(groups)]


def _fragments(text: str) -> list[str]:
    return [text[i : i + _FRAGMENT_CHARS] for i in range(0, len(text), _FRAGMENT_CHARS)]


def _token_text(value: object) -> str | None:
    """An embedding input: a string, or a token array (counted as one word per token)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(token, int) for token in value):
        return " ".join(map(str, value))
    return None


def _embedding_inputs(value: object) -> list[str] | None:
    single = _token_text(value)
    texts = [single] if single is not None else [_token_text(item) for item in _as_list(value)]
    inputs = [text for text in texts if text is not None]
    return inputs if inputs and len(inputs) == len(texts) else None


def _vector(text: str) -> list[float]:
    """A deterministic unit vector of 8 float32-exact values."""
    digest = hashlib.sha256(text.encode()).digest()
    raw = [(byte - 127.5) / 127.5 for byte in digest[:8]]
    norm = sum(value * value for value in raw) ** 0.5 or 1.0
    packed = struct.pack("<8f", *(value / norm for value in raw))
    return list(struct.unpack("<8f", packed))


# Wire encoding


def _sse(payload: Json, event: str | None = None) -> bytes:
    data = b"data: " + orjson.dumps(payload) + b"\n\n"
    return f"event: {event}\n".encode() + data if event else data


def _garbled(events: list[_Event]) -> list[_Event]:
    """The same events with CRLF line ends, ``id:``/``retry:`` fields, and the ``_GARBLE``
    extras after the first event."""
    out: list[_Event] = []
    for index, (data, is_content) in enumerate(events):
        fields = f"id: {index}\r\nretry: 3000\r\n".encode()
        out.append((fields + data.replace(b"\n", b"\r\n"), is_content))
        if index == 0:
            out.extend((extra, False) for extra in _GARBLE)
    return out


async def _pump(events: list[_Event], delay: float, broken: bool) -> AsyncIterator[bytes]:
    content = 0
    for index, (data, is_content) in enumerate(events):
        if index and delay > 0:
            await anyio.sleep(delay)
        yield data
        if is_content:
            content += 1
        if broken and content >= _BROKEN_AFTER:
            raise SimulatedStreamBreak("simulated upstream dropped the connection mid-stream")


async def _sleep(request: Request, seconds: float) -> None:
    """Sleep, but stop early when the client goes away (so servers can shut down promptly)."""
    if seconds <= 0:
        return

    async def watch(scope: anyio.CancelScope) -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        scope.cancel()

    async with anyio.create_task_group() as group:
        group.start_soon(watch, group.cancel_scope)
        await anyio.sleep(seconds)
        group.cancel_scope.cancel()


def _chat_usage(model: str, answer: _Answer) -> Json:
    reasoning = _reasoning(model)
    completion = answer.output_tokens + reasoning
    return {
        "prompt_tokens": answer.input_tokens,
        "completion_tokens": completion,
        "total_tokens": answer.input_tokens + completion,
        "prompt_tokens_details": {
            "cached_tokens": answer.input_tokens // 2 if _cached(model) else 0,
            "audio_tokens": 0,
        },
        "completion_tokens_details": {
            "reasoning_tokens": reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _responses_usage(model: str, answer: _Answer) -> Json:
    reasoning = _reasoning(model)
    output = answer.output_tokens + reasoning
    return {
        "input_tokens": answer.input_tokens,
        "input_tokens_details": {
            "cached_tokens": answer.input_tokens // 2 if _cached(model) else 0
        },
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": answer.input_tokens + output,
    }


def _chat_events(base: Json, answer: _Answer, call_id: str, usage: Json | None) -> list[_Event]:
    """The chunk sequence of a streamed chat completion (``usage`` set iff include_usage)."""

    def chunk(delta: Json, finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        payload: Json = {**base, "choices": [choice]}
        if usage is not None:
            payload["usage"] = None
        return _sse(payload)

    events: list[_Event]
    if answer.tool_name is None:
        events = [(chunk({"role": "assistant", "content": "", "refusal": None}), False)]
        events += [(chunk({"content": piece}), True) for piece in _pieces(answer.text)]
        finish = "stop"
    else:
        call = {
            "index": 0,
            "id": call_id,
            "type": "function",
            "function": {"name": answer.tool_name, "arguments": ""},
        }
        first = {"role": "assistant", "content": None, "tool_calls": [call], "refusal": None}
        events = [(chunk(first), True)]
        events += [
            (chunk({"tool_calls": [{"index": 0, "function": {"arguments": fragment}}]}), True)
            for fragment in _fragments(answer.arguments)
        ]
        finish = "tool_calls"
    events.append((chunk({}, finish), False))
    if usage is not None:
        events.append((_sse({**base, "choices": [], "usage": usage}), False))
    events.append((b"data: [DONE]\n\n", False))
    return events


def _responses_events(start: Json, final: Json, item: Json) -> list[_Event]:
    """The typed event sequence of a streamed Responses API call."""
    sequence = itertools.count()
    events: list[_Event] = []

    def add(kind: str, payload: Json, content: bool = False) -> None:
        data = {"type": kind, "sequence_number": next(sequence), **payload}
        events.append((_sse(data, kind), content))

    add("response.created", {"response": start})
    add("response.in_progress", {"response": start})
    where = {"item_id": item["id"], "output_index": 0}
    if item["type"] == "message":
        text = item["content"][0]["text"]
        pending = {**item, "status": "in_progress", "content": []}
        add("response.output_item.added", {"output_index": 0, "item": pending})
        part = {"type": "output_text", "annotations": [], "logprobs": [], "text": ""}
        where["content_index"] = 0
        add("response.content_part.added", {**where, "part": part})
        for piece in _pieces(text):
            add("response.output_text.delta", {**where, "delta": piece, "logprobs": []}, True)
        add("response.output_text.done", {**where, "text": text, "logprobs": []})
        add("response.content_part.done", {**where, "part": {**part, "text": text}})
    else:
        pending = {**item, "status": "in_progress", "arguments": ""}
        add("response.output_item.added", {"output_index": 0, "item": pending})
        for fragment in _fragments(item["arguments"]):
            add("response.function_call_arguments.delta", {**where, "delta": fragment}, True)
        add("response.function_call_arguments.done", {**where, "arguments": item["arguments"]})
    add("response.output_item.done", {"output_index": 0, "item": item})
    add("response.completed", {"response": final})
    return events


def _anthropic_events(message: Json) -> list[_Event]:
    """The event sequence of a streamed Anthropic message."""

    def event(kind: str, payload: Json, content: bool = False) -> _Event:
        return _sse({"type": kind, **payload}, kind), content

    block = message["content"][0]
    start = {**message, "content": [], "stop_reason": None}
    if "usage" in message:
        start["usage"] = {**message["usage"], "output_tokens": 1}
    if block["type"] == "text":
        empty = {**block, "text": ""}
        deltas = [{"type": "text_delta", "text": piece} for piece in _pieces(block["text"])]
    else:  # tool_use: the API opens the input with an empty fragment
        empty = {**block, "input": {}}
        fragments = ["", *_fragments(json.dumps(block["input"]))]
        deltas = [{"type": "input_json_delta", "partial_json": f} for f in fragments]
    events = [
        event("message_start", {"message": start}),
        event("content_block_start", {"index": 0, "content_block": empty}),
        event("ping", {}),
    ]
    for delta in deltas:
        content = bool(delta.get("text") or delta.get("partial_json"))
        events.append(event("content_block_delta", {"index": 0, "delta": delta}, content))
    events.append(event("content_block_stop", {"index": 0}))
    stop: Json = {"delta": {"stop_reason": message["stop_reason"], "stop_sequence": None}}
    if "usage" in message:
        stop["usage"] = {"output_tokens": message["usage"]["output_tokens"]}
    events.append(event("message_delta", stop))
    events.append(event("message_stop", {}))
    return events


# The application


class _Simulator:
    def __init__(self, latency: float, stream_delay: float, seed: int | None) -> None:
        self.latency = latency
        self.stream_delay = stream_delay
        self.seed = seed
        self.rng = random.Random(seed)
        self.received: list[Json] = []

    # -- plumbing ---------------------------------------------------------------------------

    def _id(self, prefix: str, length: int = 24) -> str:
        return f"{prefix}{self.rng.getrandbits(length * 4):0{length}x}"

    def _headers(self, family: Family) -> dict[str, str]:
        name = "x-request-id" if family == "openai" else "request-id"
        return {name: self._id("req_")}

    def _json(self, family: Family, payload: Json, status: int = 200) -> Response:
        headers = self._headers(family)
        if status == 429:
            headers["retry-after"] = "1"
        return Response(
            orjson.dumps(payload), status, headers=headers, media_type="application/json"
        )

    def _error(
        self,
        family: Family,
        status: int,
        message: str,
        kind: _ErrorKind = _INVALID,
        param: str | None = None,
    ) -> Response:
        openai_type, code, anthropic_type = kind
        if family == "openai":
            error = {"message": message, "type": openai_type, "param": param, "code": code}
            return self._json(family, {"error": error}, status)
        body = {"type": "error", "error": {"type": anthropic_type, "message": message}}
        return self._json(family, body, status)

    def _stream(self, family: Family, events: list[_Event], model: str) -> StreamingResponse:
        delay = max(self.stream_delay, _SLOW_DELAY if "slow" in model else 0.0)
        if "garbled" in model:
            events = _garbled(events)
        return StreamingResponse(
            _pump(events, delay, "broken" in model),
            headers={**self._headers(family), "cache-control": "no-cache"},
            media_type="text/event-stream",
        )

    async def _record(self, request: Request) -> object:
        raw = await request.body()
        try:
            body: object = json.loads(raw) if raw else None
            orjson.dumps(body)  # echoed fields must encode again, as a provider would refuse
        except (ValueError, RecursionError, orjson.JSONEncodeError):  # too deep, ints over 64 bits
            body = None
        self.received.append(
            {
                "method": request.method,
                "path": request.url.path,
                "headers": {key.lower(): value for key, value in request.headers.items()},
                "body": body,
            }
        )
        return body

    @staticmethod
    def _authorized(request: Request, family: Family) -> bool:
        auth = request.headers.get("authorization", "")
        bearer = auth[:7].lower() == "bearer " and bool(auth[7:].strip())
        if family == "openai":
            return bearer
        return bearer or bool(request.headers.get("x-api-key", "").strip())

    async def _intake(self, request: Request, family: Family) -> Json | Response:
        """Record the request, then apply auth, body validation and error models."""
        body = await self._record(request)
        if not self._authorized(request, family):
            return self._error(family, 401, "Missing API key.", _UNAUTHENTICATED)
        if not isinstance(body, dict):
            return self._error(family, 400, "The request body is not valid JSON.")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return self._error(family, 400, "model: Field required", param="model")
        for marker, status, kind, message in _FAILURES:
            if marker in model:
                return self._error(family, status, message, kind)
        for marker, status, media_type, content, extra in _RAW_FAILURES:
            if marker in model:
                headers = {**self._headers(family), **extra}
                return Response(content, status, headers=headers, media_type=media_type)
        return body

    async def _before_answer(self, request: Request, model: str, stream: bool) -> None:
        delay = self.latency
        if self.seed is not None:
            delay *= 0.5 + self.rng.random()
        if "timeout" in model:
            delay += _TIMEOUT_SLEEP
        if "slow" in model and not stream:
            delay += _SLOW_DELAY
        await _sleep(request, delay)

    # -- OpenAI -----------------------------------------------------------------------------

    async def chat(self, request: Request) -> Response:
        body = await self._intake(request, "openai")
        if isinstance(body, Response):
            return body
        model: str = body["model"]
        stream = body.get("stream") is True
        answer = _answer_for(_as_list(body.get("messages")), None, body.get("tools"))
        await self._before_answer(request, model, stream)
        usage = _chat_usage(model, answer)
        call_id = self._id("call_")
        base: Json = {
            "id": self._id("chatcmpl-"),
            "object": "chat.completion.chunk" if stream else "chat.completion",
            "created": int(time.time()),
            "model": _dated(model),
            "service_tier": "default",
            "system_fingerprint": _FINGERPRINT,
        }
        if stream:
            options = body.get("stream_options")
            include = isinstance(options, dict) and options.get("include_usage") is True
            include = include and _reports_usage(model)
            events = _chat_events(base, answer, call_id, usage if include else None)
            return self._stream("openai", events, model)
        message: Json = {
            "role": "assistant",
            "content": answer.text,
            "refusal": None,
            "annotations": [],
        }
        finish = "stop"
        if answer.tool_name is not None:
            function = {"name": answer.tool_name, "arguments": answer.arguments}
            message["content"] = None
            message["tool_calls"] = [{"id": call_id, "type": "function", "function": function}]
            finish = "tool_calls"
        choice = {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}
        completion: Json = {**base, "choices": [choice]}
        if _reports_usage(model):
            completion["usage"] = usage
        return self._json("openai", completion)

    async def responses(self, request: Request) -> Response:
        body = await self._intake(request, "openai")
        if isinstance(body, Response):
            return body
        model: str = body["model"]
        stream = body.get("stream") is True
        items = _responses_items(body.get("input"))
        answer = _answer_for(items, body.get("instructions"), body.get("tools"))
        await self._before_answer(request, model, stream)
        created = int(time.time())
        item: Json
        if answer.tool_name is None:
            text = {"type": "output_text", "annotations": [], "logprobs": [], "text": answer.text}
            item = {
                "id": self._id("msg_", 32),
                "type": "message",
                "status": "completed",
                "content": [text],
                "role": "assistant",
            }
        else:
            item = {
                "id": self._id("fc_", 32),
                "type": "function_call",
                "status": "completed",
                "arguments": answer.arguments,
                "call_id": self._id("call_"),
                "name": answer.tool_name,
            }
        start: Json = {
            "id": self._id("resp_", 32),
            "object": "response",
            "created_at": created,
            "status": "in_progress",
            "background": False,
            "error": None,
            "incomplete_details": None,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "model": _dated(model),
            "output": [],
            "parallel_tool_calls": True,
            "previous_response_id": body.get("previous_response_id"),
            "reasoning": {"effort": None, "summary": None},
            "service_tier": "default",
            "store": body.get("store", True),
            "temperature": 1.0,
            "text": {"format": {"type": "text"}, "verbosity": "medium"},
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": _as_list(body.get("tools")),
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": None,
            "user": None,
            "metadata": body.get("metadata") or {},
        }
        final: Json = {
            **start,
            "status": "completed",
            "completed_at": created,
            "output": [item],
            "usage": _responses_usage(model, answer) if _reports_usage(model) else None,
        }
        if stream:
            return self._stream("openai", _responses_events(start, final, item), model)
        return self._json("openai", final)

    async def embeddings(self, request: Request) -> Response:
        body = await self._intake(request, "openai")
        if isinstance(body, Response):
            return body
        model: str = body["model"]
        inputs = _embedding_inputs(body.get("input"))
        if inputs is None:
            message = "'input' must be a string, a list of strings or a list of token lists."
            return self._error("openai", 400, message, param="input")
        await self._before_answer(request, model, False)
        as_base64 = body.get("encoding_format") == "base64"
        data = []
        for index, text in enumerate(inputs):
            vector = _vector(text)
            encoded: list[float] | str = vector
            if as_base64:
                encoded = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        tokens = 10 + _words(inputs)
        result: Json = {"object": "list", "data": data, "model": model}
        if _reports_usage(model):
            result["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
        return self._json("openai", result)

    async def models(self, request: Request) -> Response:
        await self._record(request)
        if not self._authorized(request, "openai"):
            return self._error("openai", 401, "Missing API key.", _UNAUTHENTICATED)
        data = [
            {"id": name, "object": "model", "created": _MODELS_CREATED + i, "owned_by": owner}
            for i, (name, owner) in enumerate(_MODELS)
        ]
        return self._json("openai", {"object": "list", "data": data})

    # -- Anthropic --------------------------------------------------------------------------

    async def messages(self, request: Request) -> Response:
        body = await self._intake(request, "anthropic")
        if isinstance(body, Response):
            return body
        model: str = body["model"]
        stream = body.get("stream") is True
        answer = _answer_for(_as_list(body.get("messages")), body.get("system"), body.get("tools"))
        await self._before_answer(request, model, stream)
        cached = _cached(model)
        block: Json
        if answer.tool_name is None:
            block = {"type": "text", "text": answer.text}
        else:
            block = {
                "type": "tool_use",
                "id": self._id("toolu_"),
                "name": answer.tool_name,
                "input": json.loads(answer.arguments),
            }
        message: Json = {
            "id": self._id("msg_"),
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [block],
            "stop_reason": "end_turn" if answer.tool_name is None else "tool_use",
            "stop_sequence": None,
        }
        if _reports_usage(model):
            message["usage"] = {
                "input_tokens": answer.input_tokens,
                "cache_creation_input_tokens": 20 if cached else 0,
                "cache_read_input_tokens": 100 if cached else 0,
                "output_tokens": answer.output_tokens,
                "service_tier": "standard",
            }
        if stream:
            return self._stream("anthropic", _anthropic_events(message), model)
        return self._json("anthropic", message)

    async def count_tokens(self, request: Request) -> Response:
        body = await self._intake(request, "anthropic")
        if isinstance(body, Response):
            return body
        answer = _answer_for(_as_list(body.get("messages")), body.get("system"), None)
        await self._before_answer(request, body["model"], False)
        return self._json("anthropic", {"input_tokens": answer.input_tokens})

    # -- anything else ----------------------------------------------------------------------

    async def not_found(self, request: Request) -> Response:
        await self._record(request)
        path = request.url.path
        family: Family = "openai"
        if path.startswith("/v1/messages") or "anthropic-version" in request.headers:
            family = "anthropic"
        message = f"Invalid URL ({request.method} {path})"
        return self._error(family, 404, message, _NOT_FOUND)


def create_simulator_app(
    *, latency: float = 0.0, stream_delay: float = 0.0, seed: int | None = None
) -> Starlette:
    """Build the simulator ASGI app.

    ``latency``: seconds to wait before answering; with a ``seed`` each wait is jittered to
    ``latency * (0.5 + rng.random())`` (reproducibly), without one it is exactly ``latency``.
    ``stream_delay``: seconds between stream events. ``seed`` also makes generated ids
    reproducible. ``app.state.received`` lists every request as
    ``{"method", "path", "headers" (lower-case names), "body" (parsed JSON or None)}``.
    """
    sim = _Simulator(latency, stream_delay, seed)
    methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
    app = Starlette(
        routes=[
            Route("/v1/chat/completions", sim.chat, methods=["POST"]),
            Route("/v1/responses", sim.responses, methods=["POST"]),
            Route("/v1/embeddings", sim.embeddings, methods=["POST"]),
            Route("/v1/models", sim.models, methods=["GET"]),
            Route("/v1/messages", sim.messages, methods=["POST"]),
            Route("/v1/messages/count_tokens", sim.count_tokens, methods=["POST"]),
            Route("/{path:path}", sim.not_found, methods=methods),
        ]
    )
    app.state.received = sim.received
    return app
