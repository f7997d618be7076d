"""A week of recorded traffic for ``gatewatch demo``, so that its dashboard has a story to read.

Eight people in two organizations use the gateway the way teams do: coding agents (Claude Code,
Codex, Cursor) in working hours, a customer-support bot that never sleeps, an issue-triage
service, a CI bot that reviews pull requests and runs a nightly eval, and a search indexer that
embeds documents at night. One of them is clearly the biggest spender, one model clearly costs
the most, and on a weekday two to four days ago the ``openai`` provider answers 500/503 to most
requests for 40 minutes (:func:`spike_window`): clients retry, the circuit breaker opens, and the
CI bot's ``smart`` alias fails over to ``openai-eu``.

The records are built here (seeded, so the same ``now`` gives the same week) and stored through
:meth:`Store.insert_records`, so the usage rollups count them like any other record. Costs come
from the gateway's own price book; answered model names follow the simulator's (OpenAI models
carry ``-2024-07-18``), so the history and the demo's live traffic fall into the same groups."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from ulid import ULID

from gatewatch._demo_content import (
    EVERYDAY,
    OUTAGE,
    PERSONAS,
    TASKS,
    TOOL_SPECS,
    Persona,
    Task,
    Turn,
)
from gatewatch.attribution import detect_client
from gatewatch.pricing import PriceBook, Usage
from gatewatch.records import Attempt, Record, ToolCall
from gatewatch.settings import Settings
from gatewatch.store.base import Store

__all__ = ["DemoUser", "History", "make_history", "spike_window", "store_history"]

WEEK = 7 * 86400
SPIKE_PROVIDER = "openai"
_DATED = "-2024-07-18"  # what the simulator appends to OpenAI models, so live and history agree


@dataclass(frozen=True, slots=True)
class DemoUser:
    """A demo user's key, as ``POST /api/v1/keys`` made it, and how its traffic looks."""

    name: str
    org: str
    org_id: str
    user_id: str
    key_id: str
    key_name: str
    user_agent: str


@dataclass(frozen=True, slots=True)
class History:
    records: list[Record]
    spike_start: float  # Unix seconds
    spike_end: float


def spike_window(now: float) -> tuple[float, float]:
    """The outage: 14:10-14:50 UTC on the latest weekday at least two days before ``now``'s
    UTC day (so it is a busy afternoon, two to four days ago, inside one UTC hour)."""
    day = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    day -= timedelta(days=2)
    while day.weekday() >= 5:
        day -= timedelta(days=1)
    start = (day + timedelta(hours=14, minutes=10)).timestamp()
    return start, start + 40 * 60


def store_history(store: Store, records: Sequence[Record], batch: int = 2000) -> None:
    """Store records through the store's insert path (rollups included), oldest first."""
    ordered = sorted(records, key=lambda r: r.id)
    for i in range(0, len(ordered), batch):
        store.insert_records(ordered[i : i + batch])


def _outage_chance(t: float, start: float, end: float) -> float:
    """How likely an openai request fails at ``t``: ramps up over 5 minutes, holds, recovers."""
    if not start <= t < end:
        return 0.0
    ramp = min(t - start, end - t) / 300.0
    return 0.85 * min(1.0, 0.3 + ramp)


# ---- building records -----------------------------------------------------------------------


class _Builder:
    def __init__(
        self, users: Mapping[str, DemoUser], settings: Settings, now: float, seed: int
    ) -> None:
        self.rng = random.Random(seed)
        self.users = users
        self.providers = {p.name: p for p in settings.providers}
        self.prices = PriceBook(settings.prices)
        self.now = now
        self.spike = spike_window(now)
        self.records: list[Record] = []
        self.clients = {name: detect_client(u.user_agent) for name, u in users.items()}
        self.vectors: dict[str, list[float]] = {}  # the same text embeds to the same vector
        self.breaker_open_until: dict[tuple[str, str], float] = {}
        self.failures_in_row: dict[tuple[str, str], int] = {}

    # -- ids and sizes
    def ulid(self, ts: float) -> str:
        return str(ULID.from_bytes(int(ts * 1000).to_bytes(6, "big") + self.rng.randbytes(10)))

    def around(self, typical: float, spread: float = 0.6) -> int:
        return max(1, round(typical * self.rng.lognormvariate(-spread * spread / 2, spread)))

    def poisson(self, lam: float) -> int:
        if lam <= 0:
            return 0
        if lam > 30:
            return max(0, round(self.rng.gauss(lam, math.sqrt(lam))))
        limit, k, p = math.exp(-lam), 0, 1.0
        while True:
            p *= self.rng.random()
            if p <= limit:
                return k
            k += 1

    # -- the week
    def build(self) -> History:
        # From the second whole hour inside "the last 7 days": the usage API rounds ranges out
        # to whole hours, and the dashboard's "previous period" ends where the range starts.
        first = (int(self.now - WEEK) // 3600 + 2) * 3600.0
        last = self.now - 180  # the demo's live traffic fills the last minutes
        arrivals: list[tuple[float, int, str]] = []
        hour = int(first) // 3600 * 3600
        while hour < last:
            at = datetime.fromtimestamp(hour, UTC)
            for i, persona in enumerate(PERSONAS):
                for task_name, busy, when in persona.habits:
                    for _ in range(self.poisson(busy * when(at.hour, at.weekday()))):
                        t = hour + self.rng.random() * 3600
                        if first <= t < last:
                            arrivals.append((t, i, task_name))
            hour += 3600
        arrivals.sort()  # in time order, so the circuit breaker opens and closes as it would
        for t, i, task_name in arrivals:
            self.request(PERSONAS[i], TASKS[task_name], t)
        return History(self.records, *self.spike)

    def request(self, persona: Persona, task: Task, t: float) -> None:
        rng = self.rng
        turn = rng.choice(task.turns)
        stream = rng.random() < task.stream
        session = self.session(persona, task, t)
        end_user = f"cust-{rng.randrange(1, 4000):04d}" if task.workflow == "support-bot" else None
        correlation = f"req_{rng.getrandbits(64):016x}" if task.workflow == "support-bot" else None
        for attempt_no in range(task.retries + 1):
            rec = self.one(persona, task, turn, t, stream, session, end_user, correlation)
            if rec.status != "error" or rec.status_code in (400, 401) or attempt_no == task.retries:
                return
            # the SDK waits and asks again: 0.5 s, 1 s, 2 s … with jitter
            t = rec.ended + 0.5 * 2**attempt_no * (0.75 + rng.random() / 2)

    def session(self, persona: Persona, task: Task, t: float) -> str:
        if task.workflow == "support-bot":
            return f"chat-{self.rng.randrange(100_000):05d}"
        if task.workflow in ("coding", "code-review"):
            return f"{persona.user}-{int(t) // 2700:x}"  # a working session of ~45 minutes
        return f"{task.workflow}-{int(t) // 86400:x}"  # one a day

    def one(
        self,
        persona: Persona,
        task: Task,
        turn: Turn,
        t: float,
        stream: bool,
        session: str,
        end_user: str | None,
        correlation: str | None,
    ) -> Record:
        rng = self.rng
        user = self.users[persona.user]
        rec = Record(
            id=self.ulid(t),
            started=t,
            endpoint=task.endpoint,
            org_id=user.org_id,
            org=user.org,
            user_id=user.user_id,
            user=user.name,
            api_key_id=user.key_id,
            api_key_name=user.key_name,
            end_user=end_user,
            session=session,
            workflow=task.workflow,
            client=self.clients[persona.user],
            user_agent=user.user_agent,
            source_ip=persona.ip,
            correlation_id=correlation,
            model_requested=task.model,
            stream=stream,
            tags=list(task.tags),
            meta={"team": persona.team},
            last_user_prompt=turn.prompt,
            request_body=_request_body(task, turn, stream),
        )
        elapsed = 0.0
        for provider, model in task.targets:
            key = (provider, model)
            if self.breaker_open_until.get(key, 0.0) > t + elapsed:
                rec.attempts.append(Attempt(provider, model, None, "circuit_open", 0.0))
                continue
            rec.provider = provider
            failure = self.failure(task, provider, t + elapsed)
            if failure is None:
                self.failures_in_row[key] = 0
                self.answer(rec, task, turn, provider, model, elapsed)
                return self.keep(rec)
            status, error_type, message = failure
            took = float(self.around(350 if status >= 500 else 180, 0.5))
            reason = (
                "rate_limited"
                if status == 429
                else "upstream_5xx"
                if status >= 500
                else "upstream_4xx"
            )
            rec.attempts.append(Attempt(provider, model, status, reason, took))
            elapsed += took
            if status == 429 or status >= 500:
                n = self.failures_in_row.get(key, 0) + 1
                self.failures_in_row[key] = n
                if n >= 5:  # the gateway's breaker: 5 failures in a row, 30 s cooldown
                    self.breaker_open_until[key] = t + elapsed / 1000 + 30
                    self.failures_in_row[key] = 0
            if reason == "upstream_4xx" or (provider, model) == task.targets[-1]:
                self.fail(rec, provider, status, error_type, message, elapsed)
                return self.keep(rec)
        # every target was skipped or failed over to a skipped one
        skipped = ", ".join(f"{a.provider}/{a.model}" for a in rec.attempts)
        rec.provider = None
        rec.status_code, rec.status, rec.error_type = 503, "error", "circuit_open"
        rec.error_message = (
            f"every target for {task.model!r} is failing and paused ({skipped}); retry in "
            f"{rng.randint(3, 30)}s"
        )
        rec.ended = t + (elapsed + rng.uniform(0.1, 0.6)) / 1000
        return self.keep(rec)

    def keep(self, rec: Record) -> Record:
        self.records.append(rec)
        return rec

    def failure(self, task: Task, provider: str, t: float) -> tuple[int, str, str] | None:
        rng = self.rng
        if provider == SPIKE_PROVIDER and rng.random() < _outage_chance(t, *self.spike):
            return rng.choices(OUTAGE, weights=(0.6, 0.4))[0]
        for name, chance, status, error_type, message in EVERYDAY:
            if TASKS[name] is task and rng.random() < chance:
                return status, error_type, message
        return None

    def fail(
        self, rec: Record, provider: str, status: int, error_type: str, message: str, ms: float
    ) -> None:
        rec.status_code, rec.status = status, "error"
        rec.error_type, rec.error_message = error_type, message
        if self.providers[provider].type == "anthropic":
            rec.response_body = {"type": "error", "error": {"type": error_type, "message": message}}
        else:
            rec.response_body = {
                "error": {"message": message, "type": error_type, "param": None, "code": None}
            }
        rec.ended = rec.started + ms / 1000

    def answer(
        self, rec: Record, task: Task, turn: Turn, provider: str, model: str, before_ms: float
    ) -> None:
        rng = self.rng
        family = self.providers[provider].type
        answered = model if family == "anthropic" or "embedding" in model else model + _DATED
        total_in = self.around(task.input_tokens)
        cached = int(total_in * task.cached * rng.uniform(0.85, 1.0))
        written = int(total_in * 0.04) if family == "anthropic" and task.cached else 0
        out = self.around(task.output_tokens) if task.output_tokens else 0
        if turn.tool and not turn.answer:
            out = min(out, 40 + len(orjson.dumps(turn.tool[1])) // 3)
        reasoning = int(out * task.reasoning)
        usage = Usage(total_in, out, cached, written, reasoning)
        rec.model = answered
        rec.input_tokens, rec.output_tokens = total_in, out
        rec.cache_read_tokens, rec.cache_write_tokens = cached, written
        rec.reasoning_tokens = reasoning
        rec.cost_usd = self.prices.cost(self.providers[provider], answered, usage, model)
        ttft = float(self.around(task.ttft_ms, 0.4))
        took = ttft + 1000.0 * out / task.tokens_per_s * rng.uniform(0.8, 1.25)
        if rec.stream:
            rec.ttft_ms = round(before_ms + ttft, 3)
        rec.attempts.append(Attempt(provider, model, 200, "ok", round(took, 3)))
        rec.status_code, rec.status = 200, "ok"
        call_id = None
        if turn.tool:
            prefix = "toolu_" if family == "anthropic" else "call_"
            call_id = f"{prefix}{rng.getrandbits(96):024x}"
            rec.tool_calls = [ToolCall(turn.tool[0], call_id, orjson.dumps(turn.tool[1]).decode())]
        vector = None
        if task.endpoint == "/v1/embeddings":
            vector = self.vectors.get(turn.prompt)
            if vector is None:
                vector = [round(rng.gauss(0.0, 0.0625), 4) for _ in range(256)]
                self.vectors[turn.prompt] = vector
        rec.response_body = _response_body(
            task, turn, answered, usage, call_id, f"{rng.getrandbits(96):024x}", vector
        )
        rec.ended = rec.started + (before_ms + took) / 1000
        if rec.stream and family == "anthropic" and rng.random() < 0.01:
            # the user pressed Esc: the stream was cut short
            rec.status_code, rec.status = 499, "client_closed"
            rec.error_type, rec.error_message = "client_closed", "the client closed the connection"


def _tools(task: Task, family: str) -> list[dict[str, Any]]:
    out = []
    for name in task.tools:
        description, props = TOOL_SPECS[name]
        schema = {"type": "object", "properties": props, "required": list(props)}
        if family == "anthropic":
            out.append({"name": name, "description": description, "input_schema": schema})
        else:
            out.append(
                {
                    "type": "function",
                    "function": {"name": name, "description": description, "parameters": schema},
                }
            )
    return out


def _request_body(task: Task, turn: Turn, stream: bool) -> dict[str, Any]:
    if task.endpoint == "/v1/embeddings":
        return {"model": task.model, "input": turn.prompt, "dimensions": 256}
    if task.endpoint == "/v1/responses":
        body: dict[str, Any] = {"model": task.model, "input": turn.prompt, "stream": stream}
        if task.system:
            body["instructions"] = task.system
        if task.reasoning:
            body["reasoning"] = {"effort": "medium"}
        return body
    messages = [{"role": "user", "content": turn.prompt}]
    if task.endpoint == "/v1/messages":
        body = {"model": task.model, "max_tokens": 8192, "messages": messages, "stream": stream}
        if task.system:
            body["system"] = task.system
        family = "anthropic"
    else:
        if task.system:
            messages.insert(0, {"role": "system", "content": task.system})
        body = {"model": task.model, "messages": messages, "stream": stream}
        if stream:
            body["stream_options"] = {"include_usage": True}
        family = "openai"
    if task.tools:
        body["tools"] = _tools(task, family)
    return body


def _response_body(
    task: Task,
    turn: Turn,
    model: str,
    u: Usage,
    call_id: str | None,
    suffix: str,
    vector: list[float] | None,
) -> dict[str, Any]:
    tin, out = u.input_tokens or 0, u.output_tokens or 0
    cached, written, reasoning = (
        u.cache_read_tokens or 0,
        u.cache_write_tokens or 0,
        u.reasoning_tokens or 0,
    )
    if task.endpoint == "/v1/embeddings":
        return {
            "object": "list",
            "data": [{"object": "embedding", "index": 0, "embedding": vector}],
            "model": model,
            "usage": {"prompt_tokens": tin, "total_tokens": tin},
        }
    if task.endpoint == "/v1/messages":
        content: list[dict[str, Any]] = []
        if turn.answer:
            content.append({"type": "text", "text": turn.answer})
        if turn.tool:
            content.append({"type": "tool_use", "id": call_id, "name": turn.tool[0],
                            "input": turn.tool[1]})  # fmt: skip
        return {
            "id": f"msg_{suffix}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": "tool_use" if turn.tool else "end_turn",
            "stop_sequence": None,
            "usage": {
                "input_tokens": tin - cached - written,
                "cache_creation_input_tokens": written,
                "cache_read_input_tokens": cached,
                "output_tokens": out,
            },
        }
    if task.endpoint == "/v1/responses":
        return {
            "id": f"resp_{suffix}",
            "object": "response",
            "status": "completed",
            "model": model,
            "output": [
                {"type": "reasoning", "id": f"rs_{suffix}", "summary": []},
                {
                    "type": "message",
                    "id": f"msg_{suffix}",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": turn.answer}],
                },
            ][0 if reasoning else 1 :],
            "usage": {
                "input_tokens": tin,
                "input_tokens_details": {"cached_tokens": cached},
                "output_tokens": out,
                "output_tokens_details": {"reasoning_tokens": reasoning},
                "total_tokens": tin + out,
            },
        }
    message: dict[str, Any] = {"role": "assistant", "content": turn.answer or None}
    if turn.tool:
        message["tool_calls"] = [
            {
                "id": call_id,
                "type": "function",
                "function": {
                    "name": turn.tool[0],
                    "arguments": orjson.dumps(turn.tool[1]).decode(),
                },
            }
        ]
    return {
        "id": f"chatcmpl-{suffix}",
        "object": "chat.completion",
        "model": model,
        "choices": [
            {"index": 0, "message": message, "finish_reason": "tool_calls" if turn.tool else "stop"}
        ],
        "usage": {
            "prompt_tokens": tin,
            "completion_tokens": out,
            "total_tokens": tin + out,
            "prompt_tokens_details": {"cached_tokens": cached},
            "completion_tokens_details": {"reasoning_tokens": reasoning},
        },
    }


def make_history(
    users: Mapping[str, DemoUser], settings: Settings, now: float, seed: int = 7
) -> History:
    """The week before ``now`` for the :data:`PERSONAS` (``users`` maps their names to keys)."""
    return _Builder(users, settings, now, seed).build()
