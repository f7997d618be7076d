"""SSE relaying and stream reading: wherever the network cuts a stream, the gateway relays the
same bytes and records the same message, usage, tool calls and model."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatewatch.pricing import Usage
from gatewatch.proxy.sse import EventTooLarge, SSEParser
from gatewatch.proxy.usage import last_user_prompt, read_blocking, stream_reader
from gatewatch.records import ToolCall

# ---- building realistic streams -------------------------------------------------------------


def _event(payload: Any, event: str | None = None, eol: bytes = b"\n") -> bytes:
    data = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    lines = ([b"event: " + event.encode()] if event else []) + [b"data: " + data]
    return b"".join(line + eol for line in lines) + eol


def _split(text: str, cuts: list[int]) -> list[str]:
    """``text`` in pieces at the given character offsets (a stream's fragments)."""
    edges = [0, *sorted({c for c in cuts if 0 < c < len(text)}), len(text)]
    return [text[a:b] for a, b in itertools.pairwise(edges) if b > a]


@dataclass
class Stream:
    kind: str
    events: list[bytes]  # each event's bytes, blank-line terminator included
    usage_event: int | None  # index of the usage-only chunk a gateway may strip
    message: dict[str, Any]
    usage: Usage
    tool_calls: list[ToolCall]
    model: str

    @property
    def raw(self) -> bytes:
        return b"".join(self.events)


@dataclass
class Content:
    text_pieces: list[str]
    tool_input: dict[str, Any]
    arg_cuts: list[int]
    input_tokens: int
    output_tokens: int
    cached: int
    written: int
    reasoning: int
    keepalive: bool
    cumulative_delta_usage: bool
    eol: bytes


_text = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=10
)  # includes newlines, quotes, multi-byte characters
_contents = st.builds(
    Content,
    text_pieces=st.lists(_text, max_size=6),
    tool_input=st.fixed_dictionaries(
        {"city": st.text(max_size=12)}, optional={"days": st.integers(1, 14)}
    ),
    arg_cuts=st.lists(st.integers(1, 60), max_size=6),
    input_tokens=st.integers(0, 200_000),
    output_tokens=st.integers(1, 50_000),
    cached=st.integers(0, 100_000),
    written=st.integers(0, 100_000),
    reasoning=st.integers(0, 1_000),
    keepalive=st.booleans(),
    cumulative_delta_usage=st.booleans(),
    eol=st.sampled_from([b"\n", b"\r\n", b"\r"]),  # all three line ends the SSE spec allows
)


def chat_stream(c: Content) -> Stream:
    """A streamed chat completion requested with ``stream_options.include_usage``."""
    model = "gpt-4o-mini-2024-07-18"
    base = {"id": "chatcmpl-9xQ2", "object": "chat.completion.chunk", "created": 1715367049,
            "model": model, "system_fingerprint": "fp_9a1c5e0b7d"}  # fmt: skip
    arguments = json.dumps(c.tool_input, ensure_ascii=False)

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return _event({**base, "choices": [choice], "usage": None}, eol=c.eol)

    events = [chunk({"role": "assistant", "content": "", "refusal": None})]
    if c.keepalive:
        events.append(b": keep-alive" + c.eol + c.eol)
    events += [chunk({"content": p}) for p in c.text_pieces]
    call = {"index": 0, "id": "call_Wx81", "type": "function",
            "function": {"name": "get_weather", "arguments": ""}}  # fmt: skip
    events.append(chunk({"tool_calls": [call]}))
    events += [
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": frag}}]})
        for frag in _split(arguments, c.arg_cuts)
    ]
    events.append(chunk({}, "tool_calls"))
    usage = {
        "prompt_tokens": c.input_tokens,
        "completion_tokens": c.output_tokens + c.reasoning,
        "total_tokens": c.input_tokens + c.output_tokens + c.reasoning,
        "prompt_tokens_details": {"cached_tokens": min(c.cached, c.input_tokens)},
        "completion_tokens_details": {"reasoning_tokens": c.reasoning},
    }
    events.append(_event({**base, "choices": [], "usage": usage}, eol=c.eol))
    usage_event = len(events) - 1
    events.append(_event(b"[DONE]", eol=c.eol))
    text = "".join(c.text_pieces) or None
    message = {
        "id": "chatcmpl-9xQ2", "object": "chat.completion", "created": 1715367049,
        "model": model,
        "choices": [{
            "index": 0, "finish_reason": "tool_calls",
            "message": {"role": "assistant", "content": text, "tool_calls": [
                {"id": "call_Wx81", "type": "function",
                 "function": {"name": "get_weather", "arguments": arguments}},
            ]},
        }],
        "usage": {
            "prompt_tokens": c.input_tokens,
            "completion_tokens": c.output_tokens + c.reasoning,
            "prompt_tokens_details": {"cached_tokens": min(c.cached, c.input_tokens)},
            "completion_tokens_details": {"reasoning_tokens": c.reasoning},
        },
    }  # fmt: skip
    return Stream(
        "chat", events, usage_event, message,
        Usage(c.input_tokens, c.output_tokens + c.reasoning, min(c.cached, c.input_tokens), 0,
              c.reasoning),
        [ToolCall("get_weather", "call_Wx81", arguments)], model,
    )  # fmt: skip


def anthropic_stream(c: Content) -> Stream:
    model = "claude-sonnet-4-5-20250929"

    def ev(kind: str, payload: dict[str, Any]) -> bytes:
        return _event({"type": kind, **payload}, kind, c.eol)

    start_usage = {"input_tokens": c.input_tokens, "cache_creation_input_tokens": c.written,
                   "cache_read_input_tokens": c.cached, "output_tokens": 1,
                   "service_tier": "standard"}  # fmt: skip
    start = {"id": "msg_01XFDUDYJgAACzvnptvVoYEL", "type": "message", "role": "assistant",
             "model": model, "content": [], "stop_reason": None, "stop_sequence": None,
             "usage": start_usage}  # fmt: skip
    text = "".join(c.text_pieces)
    arguments = json.dumps(c.tool_input, ensure_ascii=False)
    events = [ev("message_start", {"message": start})]
    events.append(
        ev("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
    )
    events.append(ev("ping", {}))
    events += [
        ev("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": p}})
        for p in c.text_pieces
    ]
    events.append(ev("content_block_stop", {"index": 0}))
    tool = {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "get_weather",
            "input": {}}  # fmt: skip
    events.append(ev("content_block_start", {"index": 1, "content_block": tool}))
    events += [
        ev("content_block_delta",
           {"index": 1, "delta": {"type": "input_json_delta", "partial_json": frag}})
        for frag in ["", *_split(arguments, c.arg_cuts)]
    ]  # fmt: skip
    events.append(ev("content_block_stop", {"index": 1}))
    delta_usage: dict[str, Any] = {"output_tokens": c.output_tokens}
    if c.cumulative_delta_usage:  # newer API versions repeat the input counts here
        delta_usage = {"input_tokens": c.input_tokens, "cache_creation_input_tokens": c.written,
                       "cache_read_input_tokens": c.cached, **delta_usage}  # fmt: skip
    events.append(ev("message_delta", {
        "delta": {"stop_reason": "tool_use", "stop_sequence": None}, "usage": delta_usage
    }))  # fmt: skip
    events.append(ev("message_stop", {}))
    message = {
        **start,
        "content": [{"type": "text", "text": text}, {**tool, "input": c.tool_input}],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": c.input_tokens, "output_tokens": c.output_tokens,
                  "cache_read_input_tokens": c.cached, "cache_creation_input_tokens": c.written},
    }  # fmt: skip
    usage = Usage(c.input_tokens + c.cached + c.written, c.output_tokens, c.cached, c.written, 0)
    return Stream(
        "messages", events, None, message, usage,
        [ToolCall("get_weather", "toolu_01A09q90qw90lq917835lq9",
                  orjson.dumps(c.tool_input).decode())], model,
    )  # fmt: skip


def responses_stream(c: Content) -> Stream:
    model = "gpt-4o-mini-2024-07-18"
    seq = iter(range(1000))

    def ev(kind: str, payload: dict[str, Any]) -> bytes:
        return _event({"type": kind, "sequence_number": next(seq), **payload}, kind, c.eol)

    text = "".join(c.text_pieces)
    arguments = json.dumps(c.tool_input, ensure_ascii=False)
    start = {"id": "resp_67ccd2bed1ec", "object": "response", "created_at": 1741476542,
             "status": "in_progress", "model": model, "output": [], "usage": None}  # fmt: skip
    msg = {"id": "msg_67ccd2bf17f0", "type": "message", "status": "completed", "role": "assistant",
           "content": [{"type": "output_text", "text": text, "annotations": []}]}  # fmt: skip
    call = {"id": "fc_12345xyz", "type": "function_call", "status": "completed",
            "call_id": "call_12345xyz", "name": "get_weather", "arguments": arguments}  # fmt: skip
    usage = {"input_tokens": c.input_tokens,
             "input_tokens_details": {"cached_tokens": min(c.cached, c.input_tokens)},
             "output_tokens": c.output_tokens + c.reasoning,
             "output_tokens_details": {"reasoning_tokens": c.reasoning},
             "total_tokens": c.input_tokens + c.output_tokens + c.reasoning}  # fmt: skip
    final = {**start, "status": "completed", "output": [msg, call], "usage": usage}
    part = {"type": "output_text", "text": "", "annotations": []}
    pending_call = {**call, "status": "in_progress", "arguments": ""}
    at = {"item_id": msg["id"], "output_index": 0, "content_index": 0}
    events = [ev("response.created", {"response": start}),
              ev("response.in_progress", {"response": start}),
              ev("response.output_item.added",
                 {"output_index": 0, "item": {**msg, "status": "in_progress", "content": []}}),
              ev("response.content_part.added", {**at, "part": part})]  # fmt: skip
    events += [ev("response.output_text.delta", {**at, "delta": p}) for p in c.text_pieces]
    events += [ev("response.output_text.done", {**at, "text": text}),
               ev("response.content_part.done", {**at, "part": {**part, "text": text}}),
               ev("response.output_item.done", {"output_index": 0, "item": msg}),
               ev("response.output_item.added",
                  {"output_index": 1, "item": pending_call})]  # fmt: skip
    events += [
        ev("response.function_call_arguments.delta",
           {"item_id": call["id"], "output_index": 1, "delta": frag})
        for frag in _split(arguments, c.arg_cuts)
    ]  # fmt: skip
    events += [ev("response.function_call_arguments.done",
                  {"item_id": call["id"], "output_index": 1, "arguments": arguments}),
               ev("response.output_item.done", {"output_index": 1, "item": call}),
               ev("response.completed", {"response": final})]  # fmt: skip
    return Stream(
        "responses", events, None, final,
        Usage(c.input_tokens, c.output_tokens + c.reasoning, min(c.cached, c.input_tokens), 0,
              c.reasoning),
        [ToolCall("get_weather", "call_12345xyz", arguments)], model,
    )  # fmt: skip


BUILDERS = {"chat": chat_stream, "messages": anthropic_stream, "responses": responses_stream}


# ---- feeding a stream the way the proxy does ------------------------------------------------


@dataclass
class Read:
    raws: list[bytes]
    relayed: bytes
    pending: bytes
    message: dict[str, Any]
    usage: Usage
    tool_calls: list[ToolCall]
    model: str | None
    done: bool


def read(kind: str, pieces: list[bytes], strip_usage: bool) -> Read:
    parser = SSEParser()
    reader = stream_reader(kind, strip_usage)
    raws: list[bytes] = []
    relayed: list[bytes] = []
    events = [ev for piece in pieces for ev in parser.feed(piece)]
    pending = parser.pending
    for ev in events + parser.end():
        raws.append(ev.raw)
        if not reader.on_event(ev.event, ev.data):
            relayed.append(ev.raw)
    return Read(raws, b"".join(relayed), pending, reader.message(), reader.usage,
                reader.tool_calls(), reader.model, reader.done)  # fmt: skip


def cut(raw: bytes, positions: list[int]) -> list[bytes]:
    edges = [0, *sorted(set(positions)), len(raw)]
    return [raw[a:b] for a, b in itertools.pairwise(edges)]


def check_stream(stream: Stream, pieces: list[bytes], strip_usage: bool) -> None:
    whole = read(stream.kind, [stream.raw], strip_usage)
    parts = read(stream.kind, pieces, strip_usage)

    # the chunking never changes what is read ...
    assert parts.message == whole.message
    assert parts.usage == whole.usage
    assert parts.tool_calls == whole.tool_calls
    assert parts.model == whole.model
    assert parts.relayed == whole.relayed
    # ... and what is read is what the provider sent
    assert parts.message == stream.message
    assert parts.usage == stream.usage
    assert parts.tool_calls == stream.tool_calls
    assert parts.model == stream.model
    assert parts.done

    # every byte belongs to exactly one event, in order
    assert parts.raws == stream.events
    assert b"".join(parts.raws) == stream.raw
    assert parts.pending == b""

    # the client gets the stream unchanged, minus only the usage chunk it did not ask for
    dropped = stream.usage_event if strip_usage else None
    expected = b"".join(e for i, e in enumerate(stream.events) if i != dropped)
    assert parts.relayed == expected


@pytest.mark.parametrize("kind", ["chat", "messages", "responses"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(content=_contents, strip_usage=st.booleans(), data=st.data())
def test_stream_cut_anywhere_reads_the_same(
    kind: str, content: Content, strip_usage: bool, data: st.DataObject
) -> None:
    stream = BUILDERS[kind](content)
    n = len(stream.raw)
    positions = data.draw(st.lists(st.integers(1, n - 1), max_size=40), label="cuts")
    check_stream(stream, cut(stream.raw, positions), strip_usage)


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"], ids=["lf", "crlf", "cr"])
@pytest.mark.parametrize("kind", ["chat", "messages", "responses"])
def test_stream_fed_one_byte_at_a_time(kind: str, eol: bytes) -> None:
    content = Content(["Il fait ", "beau à ", "Paris ☀\n"], {"city": "Paris", "days": 3},
                      [3, 9], 1200, 85, 600, 40, 12, True, True, eol)  # fmt: skip
    stream = BUILDERS[kind](content)
    raw = stream.raw
    check_stream(stream, [raw[i : i + 1] for i in range(len(raw))], strip_usage=True)


def test_chunk_with_choices_and_usage_is_relayed_even_when_stripping() -> None:
    """Some OpenAI-compatible providers put usage in the last content chunk: stripping it would
    cut the answer short."""
    last = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "llama-3",
            "choices": [{"index": 0, "delta": {"content": "end."}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}}  # fmt: skip
    raw = _event(last) + _event(b"[DONE]")
    got = read("chat", [raw], strip_usage=True)
    assert got.relayed == raw
    assert got.message["choices"][0]["message"]["content"] == "end."
    assert (got.usage.input_tokens, got.usage.output_tokens) == (9, 2)


def events_of(
    pieces: list[bytes], parser: SSEParser | None = None
) -> list[tuple[str | None, bytes]]:
    parser = parser or SSEParser()
    return [(ev.event, ev.data) for piece in pieces for ev in parser.feed(piece)]


def test_bare_cr_line_ends_are_line_ends() -> None:
    # A stream whose lines all end in CR alone: each event is read as soon as its blank line is.
    parser = SSEParser()
    assert events_of([b"event: a\rdata: 1\r\r"], parser) == [("a", b"1")]
    assert events_of([b"data: 2\r", b"data: 3\r", b"\r"], parser) == [(None, b"2\n3")]
    assert parser.pending == b""


def test_a_crlf_cut_between_cr_and_lf_ends_its_line_once() -> None:
    # The LF after a CR that ended a chunk belongs to that line end: it is not a blank line,
    # which would cut "data: a" and "data: b" into two events.
    assert events_of([b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"]) == [(None, b"a\nb")]
    # A blank line cut there is read with its LF, so the event's bytes are whole ...
    parser = SSEParser()
    assert events_of([b"data: a\r\n\r"], parser) == []
    got = [(ev.raw, ev.data) for ev in parser.feed(b"\ndata: b\r\n\r\n")]
    assert got == [(b"data: a\r\n\r\n", b"a"), (b"data: b\r\n\r\n", b"b")]
    # ... or when the stream ends there
    parser = SSEParser()
    assert events_of([b"data: a\r\n\r"], parser) == []
    assert [(ev.raw, ev.data) for ev in parser.end()] == [(b"data: a\r\n\r", b"a")]
    parser = SSEParser()
    assert events_of([b"data: a\r\n"], parser) == []
    assert parser.end() == []  # an incomplete event is dropped at the end


def test_mixed_line_ends_and_stray_blank_lines() -> None:
    raw = b"\n\r\ndata: a\ndata: b\r\n\rdata: c\r\r\r\n\nevent: x\rdata: d\n\r\n"
    expected = [(None, b"a\nb"), (None, b"c"), ("x", b"d")]
    assert events_of([raw]) == expected
    assert events_of([raw[i : i + 1] for i in range(len(raw))]) == expected


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"], ids=["lf", "crlf", "cr"])
def test_a_long_event_is_read_whole_wherever_it_is_cut(eol: bytes) -> None:
    big = b"event: big" + eol + b"data: " + b"x" * 300_000 + eol + b"data: y" + eol + eol
    raw = big + b"data: next" + eol + eol
    expected = [("big", b"x" * 300_000 + b"\ny"), (None, b"next")]
    cuts = [[raw[i : i + step] for i in range(0, len(raw), step)] for step in (1_000, 4_093)]
    cuts += [[raw[:k], raw[k:]] for k in range(len(big) - 6, len(big) + 1)]
    for pieces in cuts:
        parser = SSEParser(max_pending=len(big))
        got = [ev for piece in pieces for ev in parser.feed(piece)]
        assert [(ev.event, ev.data) for ev in got] == expected
        assert [ev.raw for ev in got] == [big, raw[len(big) :]]
        assert parser.pending == b""


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"], ids=["lf", "crlf", "cr"])
def test_a_line_that_never_ends_is_refused_past_the_limit(eol: bytes) -> None:
    parser = SSEParser(max_pending=1_000)
    assert events_of([b"data: first" + eol + eol + b"data: ", b"y" * 900], parser) == [
        (None, b"first")
    ]
    assert parser.pending_size == 906
    with pytest.raises(EventTooLarge) as caught:
        parser.feed(b"y" * 100)  # 1,006 bytes without the end of an event
    assert caught.value.events == []
    assert parser.pending == b""  # let go of
    # a chunk that completes events and then goes over: the events come with the error
    with pytest.raises(EventTooLarge) as caught:
        SSEParser(max_pending=1_000).feed(b"data: ok" + eol + eol + b"data: " + b"z" * 1_000)
    assert [(ev.event, ev.data) for ev in caught.value.events] == [(None, b"ok")]
    assert str(caught.value) == "more than 1000 bytes without the end of an SSE event"


# ---- blocking bodies --------------------------------------------------------------------------


def test_read_blocking_chat_counts_cached_and_reasoning_tokens() -> None:
    body = {
        "id": "chatcmpl-1", "object": "chat.completion", "model": "o3-mini-2025-01-31",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": None,
            "tool_calls": [{"id": "call_1", "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}],
        }}],
        "usage": {"prompt_tokens": 1500, "completion_tokens": 300, "total_tokens": 1800,
                  "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
                  "completion_tokens_details": {"reasoning_tokens": 192}},
    }  # fmt: skip
    model, usage, calls = read_blocking("chat", body)
    assert model == "o3-mini-2025-01-31"
    assert usage == Usage(1500, 300, 1024, 0, 192)
    assert calls == [ToolCall("get_weather", "call_1", '{"city":"Oslo"}')]


def test_read_blocking_embeddings() -> None:
    body = {"object": "list", "model": "text-embedding-3-small",
            "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
            "usage": {"prompt_tokens": 8, "total_tokens": 8}}  # fmt: skip
    model, usage, calls = read_blocking("embeddings", body)
    assert model == "text-embedding-3-small"
    assert (usage.input_tokens, usage.output_tokens) == (8, 0)
    assert calls == []


def test_read_blocking_responses_counts_cached_and_reasoning_tokens() -> None:
    body = {
        "id": "resp_1", "object": "response", "status": "completed", "model": "o4-mini-2025-04-16",
        "output": [
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"type": "function_call", "id": "fc_1", "call_id": "call_9", "name": "lookup",
             "arguments": "{\"q\":\"x\"}", "status": "completed"},
        ],
        "usage": {"input_tokens": 2000, "input_tokens_details": {"cached_tokens": 1536},
                  "output_tokens": 420, "output_tokens_details": {"reasoning_tokens": 384},
                  "total_tokens": 2420},
    }  # fmt: skip
    model, usage, calls = read_blocking("responses", body)
    assert model == "o4-mini-2025-04-16"
    assert usage == Usage(2000, 420, 1536, 0, 384)
    assert calls == [ToolCall("lookup", "call_9", '{"q":"x"}')]


def test_read_blocking_anthropic_input_includes_cache_read_and_write() -> None:
    body = {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
        "content": [
            {"type": "text", "text": "Let me check."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
             "input": {"city": "Paris", "unit": "c"}},
        ],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 12, "cache_creation_input_tokens": 20,
                  "cache_read_input_tokens": 100, "output_tokens": 55},
    }  # fmt: skip
    model, usage, calls = read_blocking("messages", body)
    assert model == "claude-sonnet-4-5"
    assert usage.input_tokens == 12 + 100 + 20
    assert (usage.output_tokens, usage.cache_read_tokens, usage.cache_write_tokens) == (55, 100, 20)
    assert len(calls) == 1
    assert (calls[0].name, calls[0].call_id) == ("get_weather", "toolu_1")
    assert json.loads(calls[0].arguments) == {"city": "Paris", "unit": "c"}


def test_read_blocking_anthropic_without_cache_fields() -> None:
    body = {"model": "claude-haiku-4-5", "content": [{"type": "text", "text": "hi"}],
            "usage": {"input_tokens": 30, "output_tokens": 4}}  # fmt: skip
    _, usage, calls = read_blocking("messages", body)
    assert usage == Usage(30, 4, 0, 0, 0)
    assert calls == []


@pytest.mark.parametrize(
    ("kind", "usage", "expected"),
    [
        ("chat", {"prompt_tokens": 9}, (9, None)),
        ("chat", {"completion_tokens": 4}, (None, 4)),
        ("responses", {"input_tokens": 9}, (9, None)),
        ("messages", {"input_tokens": 9}, (9, None)),
        ("messages", {"output_tokens": 4}, (None, 4)),
        ("embeddings", {"prompt_tokens": 9}, (9, 0)),  # an embedding has no output
    ],
)
def test_a_count_the_provider_left_out_is_null_not_zero(
    kind: str, usage: dict[str, int], expected: tuple[int | None, int | None]
) -> None:
    _, got, _ = read_blocking(kind, {"model": "m", "usage": usage})
    assert (got.input_tokens, got.output_tokens) == expected
    if kind == "embeddings":
        return
    if kind == "chat":  # in a stream: the usage chunk
        events = [_event({"model": "m", "choices": [], "usage": usage}), _event(b"[DONE]")]
    elif kind == "responses":
        events = [_event({"type": "response.completed", "response": {"usage": usage}})]
    else:  # Anthropic: message_start, then message_delta, each may leave a count out
        start = {"type": "message_start", "message": {"model": "m", "usage": usage}}
        delta = {"type": "message_delta", "delta": {}, "usage": {}}
        events = [_event(start), _event(delta), _event({"type": "message_stop"})]
    got = read(kind, events, strip_usage=False).usage
    assert (got.input_tokens, got.output_tokens) == expected


# ---- the prompt shown first in the log ----------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "payload", "expected"),
    [
        ("chat", {"messages": [
            {"role": "system", "content": "be terse"},
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "an answer"},
            {"role": "user", "content": "second question"},
            {"role": "tool", "content": "tool output", "tool_call_id": "c1"},
        ]}, "second question"),
        ("chat", {"messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is in"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            {"type": "text", "text": "this picture?"},
        ]}]}, "what is in\nthis picture?"),
        ("messages", {"system": "sys", "messages": [
            {"role": "user", "content": [{"type": "text", "text": "weather in Paris?"}]},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "w",
                                               "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t",
                                          "content": "sunny"}]},
        ]}, "weather in Paris?"),
        ("responses", {"input": "just a string"}, "just a string"),
        ("responses", {"input": [
            {"role": "user", "content": [{"type": "input_text", "text": "hello responses"}]},
            {"type": "function_call_output", "call_id": "c", "output": "42"},
        ]}, "hello responses"),
        ("embeddings", {"input": ["one", "two"]}, "two"),
        ("chat", {"messages": [{"role": "system", "content": "only system"}]}, None),
    ],
    ids=["chat-last-user", "chat-parts", "anthropic-skips-tool-result", "responses-string",
         "responses-items", "embeddings", "no-user-turn"],
)  # fmt: skip
def test_last_user_prompt(kind: str, payload: dict[str, Any], expected: str | None) -> None:
    assert last_user_prompt(kind, payload) == expected
