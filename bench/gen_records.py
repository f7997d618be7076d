"""Fill a SQLite store with N realistic request records, through the store's own write path.

    .venv/bin/python bench/gen_records.py /tmp/gw10m.db [--records 10000000] [--days 120]
        [--seed 1] [--batch 10000] [--cache-mb 256] [--synchronous OFF|NORMAL]

Creates the organizations, users and keys with ``store.create_key`` (so every name resolves),
then writes the records oldest first with ``store.prepare`` + ``store.insert_prepared`` in batches,
exactly as the gateway's record writer does (facets, rollups and whatever else the write path
maintains are built the production way). A second process makes and prepares the records while
this one stores the previous batch, so both cores are used; the rate is that of the store's
write path as long as it is the slower of the two (the progress lines say how busy it was).

What the data looks like (every choice is drawn from ``--seed``; only the random part of each
ULID and the ids of orgs/users/keys come from the clock and the OS):

* 20 organizations of Zipf-like sizes, ~3,000 users (a few service accounts and heavy users,
  then a long tail), 1-3 keys each; each user has a team, a source IP and a main client.
* 13 models across openai, anthropic and an openai-compatible provider ("together"), requested
  by alias and answered by a dated snapshot (``gpt-4o`` -> ``gpt-4o-2024-08-06``), chosen by the
  client (claude-code mostly Sonnet, codex mostly gpt-5, SDKs mostly the small models).
* ~40 % streams, ~3 % errors (429/500/502/504 with the family's error type and a message),
  ~1 % client_closed (499, the usage seen so far), ~10 % with tool calls, cache read/write tokens
  (Anthropic prompt caching, OpenAI automatic caching), reasoning tokens on o4-mini and gpt-5*.
* Costs from gatewatch.pricing (the maintained price table; overrides for the compatible models).
* Durations log-normal (median ~0.9 s, tail to 60 s), TTFT on streams.
* Clients, user agents, workflows, end users (for customer-facing workflows), sessions, 0-3 tags,
  ``meta`` (team, env), a short ``last_user_prompt``; ~5 % carry a short request/response body.
* Timestamps over the last ``--days`` days: a daily rhythm (EU + US working hours), quiet
  weekends, day-to-day noise, a few batch-job spikes, and traffic growing ~3x over the period.

Prints progress to stderr, then the rate (records/s) and the database's size.
"""

from __future__ import annotations

import argparse
import bisect
import math
import multiprocessing
import os
import random
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gatewatch.attribution import detect_client
from gatewatch.auth import hash_key
from gatewatch.pricing import PriceBook, Rates, Usage
from gatewatch.records import Attempt, Record, ToolCall, new_id
from gatewatch.settings import PriceOverride, ProviderSettings
from gatewatch.store import SQLiteStore

# --------------------------------------------------------------------------- the world

PROVIDERS = {
    "openai": ProviderSettings(name="openai", type="openai"),
    "anthropic": ProviderSettings(name="anthropic", type="anthropic"),
    "together": ProviderSettings(
        name="together", type="openai-compatible", base_url="https://api.together.xyz/v1"
    ),
}
# The compatible provider's models are not in the price table: priced as configured overrides.
PRICE_OVERRIDES = {
    "together/meta-llama/Llama-3.3-70B-Instruct-Turbo": PriceOverride(input=0.88, output=0.88),
    "together/deepseek-ai/DeepSeek-V3": PriceOverride(input=1.25, output=1.25),
}


@dataclass(frozen=True)
class Model:
    provider: str
    requested: str
    answered: str  # the dated snapshot the provider reports
    cache: str = ""  # "anthropic" (explicit cache writes) | "openai" (automatic reads) | ""
    reasoning: bool = False
    embedding: bool = False
    context: int = 128_000


MODELS = {
    m.requested: m
    for m in (
        Model("openai", "gpt-4o", "gpt-4o-2024-08-06", cache="openai"),
        Model("openai", "gpt-4o-mini", "gpt-4o-mini-2024-07-18", cache="openai"),
        Model("openai", "gpt-4.1", "gpt-4.1-2025-04-14", cache="openai", context=1_000_000),
        Model("openai", "o4-mini", "o4-mini-2025-04-16", cache="openai", reasoning=True),
        Model("openai", "gpt-5", "gpt-5-2025-08-07", cache="openai", reasoning=True),
        Model("openai", "gpt-5-mini", "gpt-5-mini-2025-08-07", cache="openai", reasoning=True),
        Model("openai", "text-embedding-3-small", "text-embedding-3-small", embedding=True),
        Model("anthropic", "claude-sonnet-4-5", "claude-sonnet-4-5-20250929", cache="anthropic"),
        Model("anthropic", "claude-opus-4-1", "claude-opus-4-1-20250805", cache="anthropic"),
        Model("anthropic", "claude-haiku-4-5", "claude-haiku-4-5-20251001", cache="anthropic"),
        Model(
            "anthropic", "claude-3-5-haiku-latest", "claude-3-5-haiku-20241022", cache="anthropic"
        ),
        Model(
            "together",
            "meta-llama/Llama-3.3-70B-Instruct-Turbo",
            "meta-llama/Llama-3.3-70B-Instruct-Turbo",
        ),
        Model("together", "deepseek-ai/DeepSeek-V3", "deepseek-ai/DeepSeek-V3"),
    )
}


@dataclass(frozen=True)
class Client:
    name: str  # a label here; the stored client is detect_client(user agent), as in production
    agents: tuple[str, ...]
    models: dict[str, float]
    stream: float  # share of requests streamed
    tool_share: float  # share of responses with tool calls
    tools: tuple[str, ...]
    input_median: float  # tokens
    output_median: float
    coding: bool  # an agent in someone's editor/terminal (sessions, no end users)


_SDK_TOOLS = ("get_weather", "search_kb", "lookup_order", "create_ticket", "get_customer")
CLIENTS = {
    c.name: c
    for c in (
        Client(
            "claude-code",
            ("claude-cli/2.0.14 (external, cli)", "claude-cli/2.0.27 (external, cli)"),
            {
                "claude-sonnet-4-5": 65,
                "claude-haiku-4-5": 20,
                "claude-opus-4-1": 10,
                "claude-3-5-haiku-latest": 5,
            },
            0.9, 0.25, ("Read", "Edit", "Bash", "Grep", "Glob", "Write", "TodoWrite"),
            18_000, 350, True,
        ),
        Client(
            "codex",
            ("codex_cli_rs/0.46.0 (Mac OS 15.1.0; arm64)", "codex_cli_rs/0.50.0 (Ubuntu 24.4.0)"),
            {"gpt-5": 55, "gpt-5-mini": 30, "o4-mini": 15},
            0.9, 0.25, ("shell", "apply_patch", "update_plan"),
            15_000, 400, True,
        ),
        Client(
            "cursor",
            ("Cursor/1.7.38", "Cursor/1.6.45"),
            {"claude-sonnet-4-5": 35, "gpt-5": 25, "gpt-4.1": 15, "gpt-4o": 10,
             "gpt-5-mini": 10, "claude-opus-4-1": 5},
            0.8, 0.15, ("read_file", "edit_file", "run_terminal_cmd", "codebase_search"),
            12_000, 300, True,
        ),
        Client(
            "cline",
            ("Cline/3.32.5",),
            {"claude-sonnet-4-5": 50, "deepseek-ai/DeepSeek-V3": 25, "gpt-4.1": 25},
            0.8, 0.15, ("read_file", "write_to_file", "execute_command"),
            14_000, 300, True,
        ),
        Client(
            "openai-python",
            ("OpenAI/Python 1.109.1", "OpenAI/Python 1.51.0"),
            {"gpt-4o-mini": 45, "gpt-4o": 20, "text-embedding-3-small": 20, "gpt-4.1": 8,
             "o4-mini": 7},
            0.12, 0.05, _SDK_TOOLS, 1_500, 250, False,
        ),
        Client(
            "openai-node",
            ("OpenAI/JS 5.23.0",),
            {"gpt-4o-mini": 55, "gpt-4o": 25, "text-embedding-3-small": 10, "gpt-5-mini": 10},
            0.3, 0.05, _SDK_TOOLS, 1_200, 250, False,
        ),
        Client(
            "anthropic-python",
            ("Anthropic/Python 0.69.0", "Anthropic/Python 0.40.0"),
            {"claude-haiku-4-5": 40, "claude-sonnet-4-5": 40, "claude-3-5-haiku-latest": 20},
            0.15, 0.05, _SDK_TOOLS, 2_500, 300, False,
        ),
        Client(
            "langchain",
            ("langchain/0.3.27",),
            {"gpt-4o-mini": 30, "meta-llama/Llama-3.3-70B-Instruct-Turbo": 25,
             "claude-sonnet-4-5": 20, "text-embedding-3-small": 25},
            0.25, 0.05, _SDK_TOOLS, 3_000, 300, False,
        ),
        Client(
            "curl",
            ("curl/8.5.0",),
            {"gpt-4o-mini": 60, "meta-llama/Llama-3.3-70B-Instruct-Turbo": 40},
            0.0, 0.0, (), 300, 150, False,
        ),
        Client(
            "internal",  # a service with its own user agent: client not detected (null)
            ("acme-etl/1.4", "ingest-worker/2.0.1"),
            {"meta-llama/Llama-3.3-70B-Instruct-Turbo": 40, "deepseek-ai/DeepSeek-V3": 30,
             "gpt-4o-mini": 30},
            0.05, 0.02, _SDK_TOOLS, 2_000, 200, False,
        ),
    )
}  # fmt: skip
# Main client of a (human) user, and of a service account.
HUMAN_CLIENTS = {"claude-code": 26, "cursor": 18, "codex": 12, "openai-python": 16,
                 "anthropic-python": 8, "openai-node": 7, "langchain": 6, "cline": 3,
                 "curl": 2}  # fmt: skip
SERVICE_CLIENTS = {"openai-python": 40, "anthropic-python": 20, "langchain": 15,
                   "openai-node": 10, "internal": 15}  # fmt: skip
WORKFLOWS = {  # workflow: serves end users?
    "support-bot": True,
    "rag-search": True,
    "ticket-triage": False,
    "doc-summarizer": False,
    "data-extraction": False,
    "eval-harness": False,
    "pr-review": False,
}
ORG_NAMES = (
    "acme", "globex", "initech", "umbrella", "hooli", "stark-industries", "wayne-enterprises",
    "cyberdyne", "soylent", "tyrell", "wonka", "aperture", "black-mesa", "oscorp",
    "massive-dynamic", "vandelay", "pied-piper", "dunder-mifflin", "monsters-inc", "gringotts",
)  # fmt: skip
TEAMS = ("platform", "search", "payments", "growth", "infra", "data", "ml", "support",
         "mobile", "security", "web", "research")  # fmt: skip
FIRST = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy",
         "mallory", "niaj", "olivia", "peggy", "rupert", "sybil", "trent", "victor", "walter",
         "xena", "yusuf", "zoe", "amir", "beatriz", "chen", "dmitri", "emeka", "fatima", "goran",
         "hana", "ines", "jonas", "keiko", "lars", "maria", "noah", "omar", "priya", "quinn",
         "rosa", "sven", "tariq", "uma", "vera", "wei", "ximena", "yara", "zaid")  # fmt: skip
LAST = ("nguyen", "smith", "garcia", "muller", "rossi", "kowalski", "tanaka", "silva", "khan",
        "okafor", "dubois", "jensen", "novak", "ivanova", "kim", "lopez", "schmidt", "haddad",
        "andersson", "moreau", "costa", "yilmaz", "wong", "patel", "cohen", "berg", "fischer",
        "romero", "sato", "brown")  # fmt: skip
KEY_NAMES = ("laptop", "ci", "dev-box", "notebook", "staging", "prod")
TAGS = {"prod": 30, "staging": 8, "beta": 8, "batch": 6, "experiment": 6, "ci": 5, "nightly": 4,
        "eval": 4, "customer-facing": 8, "internal": 8, "pii-checked": 3, "hotfix": 1}  # fmt: skip
TAG_COUNTS = (0.4, 0.75, 0.93, 1.0)  # cumulative shares of 0, 1, 2, 3 tags
ENVS = {"prod": 70, "staging": 20, "dev": 10}
PROMPTS = (
    "Fix the failing test in {f}", "Why does {f} raise a KeyError?", "Add type hints to {f}",
    "Refactor {f} into smaller functions", "Write a unit test for {f}", "Explain what {f} does",
    "Summarize ticket #{n}", "Classify this support email ({n})", "Translate the reply to German",
    "Extract the invoice total from document {n}", "Draft a polite answer to customer {n}",
    "Where is my order {n}?", "Search the docs for rate limits", "Review PR #{n}",
    "Rename the variable in {f}", "Make the CI pipeline faster", "What changed in release {n}?",
)  # fmt: skip
FILES = ("src/app.py", "api/handlers.go", "web/src/App.tsx", "lib/billing.rb", "cmd/main.rs",
         "tests/test_api.py", "infra/main.tf", "pkg/store/sql.go", "README.md",
         "setup.cfg")  # fmt: skip
ERRORS = {  # status: (share, OpenAI type, Anthropic type, attempt reason, messages)
    429: (0.45, "rate_limit_error", "rate_limit_error", "rate_limited",
          ("Rate limit reached for requests per min (RPM)",
           "Number of request tokens has exceeded your per-minute rate limit")),
    500: (0.20, "server_error", "api_error", "upstream_5xx",
          ("The server had an error while processing your request.", "Internal server error")),
    502: (0.20, "upstream_error", "api_error", "connect_error",
          ("{p}: connection reset by peer", "{p} answered with an invalid response")),
    504: (0.15, "timeout_error", "timeout_error", "timeout", ("{p} timed out",)),
}  # fmt: skip


def _cumulative(weights: Sequence[float]) -> list[float]:
    out, total = [], 0.0
    for w in weights:
        total += w
        out.append(total)
    return out


class Picker:
    """Weighted choice by bisection on precomputed cumulative weights (cheap per call)."""

    __slots__ = ("cum", "items", "rnd", "total")

    def __init__(
        self, rng: random.Random, weighted: dict[Any, float] | Sequence[tuple[Any, float]]
    ) -> None:
        pairs = list(weighted.items()) if isinstance(weighted, dict) else list(weighted)
        self.items = [p[0] for p in pairs]
        self.cum = _cumulative([p[1] for p in pairs])
        self.total = self.cum[-1]
        self.rnd = rng.random

    def __call__(self) -> Any:
        return self.items[bisect.bisect_right(self.cum, self.rnd() * self.total)]


@dataclass
class User:
    index: int
    name: str
    user_id: str
    org_id: str
    org: str
    keys: list[tuple[str, str]]  # (key id, key name)
    team: str
    ip: str
    client: str
    service: str | None = None  # the workflow a service account runs
    session: str | None = None
    session_left: int = 0


def build_population(
    store: SQLiteStore, rng: random.Random, users_total: int, seed: int
) -> list[tuple[User, float]]:
    """Orgs, users and keys created through the store; returns (user, activity weight)."""
    org_w = [1.0 / (i + 1) ** 1.1 for i in range(len(ORG_NAMES))]
    total_w = sum(org_w)
    sizes = [max(8, round(users_total * w / total_w)) for w in org_w]
    people: list[User] = []
    n_keys = 0
    for org_index, (org, size) in enumerate(zip(ORG_NAMES, sizes, strict=True)):
        teams = rng.sample(TEAMS, k=min(len(TEAMS), 3 + org_index % 6))
        taken: set[str] = set()
        services = [w for w in WORKFLOWS if rng.random() < (0.7 if org_index < 6 else 0.3)]
        for i in range(size + len(services)):
            service = services[i - size] if i >= size else None
            if service:
                name = f"svc-{service}"
            else:
                name = f"{rng.choice(FIRST)}.{rng.choice(LAST)}"
                while name in taken:
                    name = f"{rng.choice(FIRST)}.{rng.choice(LAST)}{rng.randrange(2, 99)}"
            taken.add(name)
            keys: list[tuple[str, str]] = []
            key_names = ["prod"] if service else rng.sample(KEY_NAMES, k=rng.choice((1, 1, 2, 3)))
            for key_name in key_names:
                n_keys += 1
                secret = f"gw-gen-{seed}-{n_keys}-{rng.getrandbits(64):016x}"
                row = store.create_key(
                    {"name": key_name, "user": name, "org": org, "role": "member"},
                    hash_key(secret),
                    secret[:10] + "…",
                )
                keys.append((row["id"], key_name))
            people.append(
                User(
                    index=len(people),
                    name=name,
                    user_id=row["user_id"],
                    org_id=row["org_id"],
                    org=org,
                    keys=keys,
                    team=rng.choice(teams),
                    ip=f"10.{org_index}.{rng.randrange(256)}.{rng.randrange(1, 255)}",
                    client=Picker(rng, SERVICE_CLIENTS if service else HUMAN_CLIENTS)(),
                    service=service,
                )
            )
    # Activity: Zipf over a random order of the humans; service accounts are heavy hitters.
    order = list(range(len(people)))
    rng.shuffle(order)
    weights = [0.0] * len(people)
    for rank, i in enumerate(order):
        weights[i] = 1.0 / (rank + 1) ** 0.9
    top = max(weights)
    for i, u in enumerate(people):
        if u.service:
            weights[i] = top * rng.uniform(0.05, 0.3)
    print(
        f"population: {len(ORG_NAMES)} orgs, {len(people):,} users "
        f"({sum(1 for u in people if u.service)} service accounts), {n_keys:,} keys",
        file=sys.stderr,
    )
    return list(zip(people, weights, strict=True))


# --------------------------------------------------------------------------- time


def hourly_counts(rng: random.Random, n: int, days: int, end: float) -> tuple[float, list[int]]:
    """How many records fall in each hour of the period: growth x weekly x daily rhythm."""
    start = end - days * 86400
    hours = days * 24
    day_noise = [rng.lognormvariate(0.0, 0.12) for _ in range(days + 1)]
    spikes = set(rng.sample(range(hours), k=max(1, days // 20)))  # nightly batch jobs
    weights = []
    for h in range(hours):
        mid = datetime.fromtimestamp(start + h * 3600 + 1800, UTC)
        hour = mid.hour + mid.minute / 60
        daily = (
            0.12
            + math.exp(-(((hour - 15.5) / 4.0) ** 2))  # EU afternoon + US morning
            + 0.45 * math.exp(-(((hour - 9.5) / 2.5) ** 2))  # EU morning
        )
        weekly = 0.3 if mid.weekday() >= 5 else 1.0
        growth = 1.0 + 2.0 * h / hours
        w = daily * weekly * growth * day_noise[h // 24] * (4.0 if h in spikes else 1.0)
        weights.append(w)
    total = sum(weights)
    exact = [n * w / total for w in weights]
    counts = [int(x) for x in exact]
    short = n - sum(counts)
    for h in sorted(range(hours), key=lambda i: exact[i] - counts[i], reverse=True)[:short]:
        counts[h] += 1
    return start, counts


# --------------------------------------------------------------------------- records


class RecordMaker:
    def __init__(self, rng: random.Random, population: list[tuple[User, float]]) -> None:
        self.rng = rng
        self.users = Picker(rng, population)
        book = PriceBook(PRICE_OVERRIDES)
        self.rates: dict[str, Rates | None] = {
            m.requested: book.rates(PROVIDERS[m.provider], m.answered, m.requested)
            for m in MODELS.values()
        }
        self.model_pick = {c.name: Picker(rng, c.models) for c in CLIENTS.values()}
        self.agents = {
            c.name: [(ua, detect_client(ua)) for ua in c.agents] for c in CLIENTS.values()
        }
        self.human_client = Picker(rng, HUMAN_CLIENTS)
        self.workflow = Picker(rng, {w: 1.0 for w in WORKFLOWS if w != "pr-review"})
        self.tag_pick = Picker(rng, TAGS)
        self.env = Picker(rng, ENVS)
        self.error_pick = Picker(rng, {code: spec[0] for code, spec in ERRORS.items()})
        self.prompts = [
            p.format(f=f, n=n)
            for p in PROMPTS
            for f, n in zip(FILES, range(1000, 10000, 900), strict=False)
        ]

    def _session(self, user: User) -> str | None:
        rng = self.rng
        if user.session_left <= 0:
            user.session = f"{rng.getrandbits(128):032x}"
            user.session = (
                f"{user.session[:8]}-{user.session[8:12]}-{user.session[12:16]}-"
                f"{user.session[16:20]}-{user.session[20:]}"
            )
            user.session_left = int(rng.lognormvariate(math.log(20), 1.0)) + 1
        user.session_left -= 1
        return user.session

    def make(self, ts: float) -> Record:
        rng = self.rng
        r = rng.random
        user: User = self.users()
        client_name = user.client if r() < 0.85 else self.human_client()
        client = CLIENTS[client_name]
        model = MODELS[self.model_pick[client_name]()]
        provider = model.provider
        ua, detected = rng.choice(self.agents[client_name])
        key_id, key_name = user.keys[0] if r() < 0.7 else rng.choice(user.keys)
        if model.embedding:
            endpoint = "/v1/embeddings"
        elif provider == "anthropic":
            endpoint = "/v1/messages"
        elif client_name == "codex" or (provider == "openai" and r() < 0.15):
            endpoint = "/v1/responses"
        else:
            endpoint = "/v1/chat/completions"
        stream = not model.embedding and r() < client.stream

        workflow = user.service
        end_user = None
        if workflow is None and not client.coding and r() < 0.5:
            workflow = self.workflow()
        elif workflow is None and client.coding and r() < 0.05:
            workflow = "pr-review"
        if workflow is not None and WORKFLOWS[workflow] and r() < 0.9:
            end_user = f"cus_{int(40000 ** r()):05d}"
        session = self._session(user) if client.coding or r() < 0.4 else None

        # usage
        if model.embedding:
            inp = int(rng.lognormvariate(math.log(400), 1.0)) + 1
            out = 0
        else:
            inp = int(rng.lognormvariate(math.log(client.input_median), 1.0)) + 20
            out = int(rng.lognormvariate(math.log(client.output_median), 1.0)) + 1
        inp = min(inp, model.context - 8000)
        out = min(out, 32_000)
        cache_read = cache_write = reasoning = 0
        if model.cache == "anthropic" and inp > 1024:
            roll = r()
            if roll < (0.85 if client.coding else 0.3):
                cache_read = int(inp * rng.uniform(0.6, 0.97))
            if roll > 0.7:
                cache_write = int((inp - cache_read) * rng.uniform(0.3, 0.9))
        elif model.cache == "openai" and inp > 1024 and r() < (0.7 if client.coding else 0.3):
            cache_read = int(inp * rng.uniform(0.3, 0.95)) // 1024 * 1024
        if model.reasoning:
            reasoning = int(out * rng.uniform(0.2, 0.8))

        # outcome
        duration = min(rng.lognormvariate(math.log(0.9), 1.0) * (out / 300 + 0.4) ** 0.3, 60.0)
        status, code, error_type, error_message = "ok", 200, None, None
        roll = r()
        tokens: tuple[int | None, ...] = (inp, out, cache_read, cache_write, reasoning)
        reason = "ok"
        if roll < 0.03:
            code = self.error_pick()
            _, oa_type, an_type, reason, messages = ERRORS[code]
            status = "error"
            error_type = an_type if provider == "anthropic" else oa_type
            error_message = rng.choice(messages).format(p=provider)
            tokens = (None, None, None, None, None)
            duration = {429: 0.08, 500: 1.5, 502: 0.3, 504: 60.0}[code] * rng.uniform(0.5, 1.0)
            stream = stream and code != 504 and r() < 0.5
        elif roll < 0.04:
            status, code, reason = "client_closed", 499, "client_closed"
            error_type, error_message = "client_closed", "the client closed the connection"
            stream = not model.embedding
            seen = int(out * r()) if stream else 0
            tokens = (inp, seen, cache_read, cache_write, min(reasoning, seen))
        ttft = round(duration * 1000 * rng.uniform(0.08, 0.6), 3) if stream else None
        duration = max(duration, 0.02)

        cost = None
        rates = self.rates[model.requested]
        if rates is not None and tokens[0] is not None:
            cost = rates.cost(Usage(*tokens))

        attempts = [
            Attempt(provider, model.requested, code if code != 504 else None, reason,
                    round(duration * 1000, 3))
        ]  # fmt: skip
        if status == "ok" and r() < 0.01:  # failover: a first attempt failed, the retry worked
            attempts.insert(0, Attempt(provider, model.requested, 503, "upstream_5xx", 41.0))

        tool_calls: list[ToolCall] = []
        if status == "ok" and client.tools and r() < client.tool_share:
            prefix = "toolu_" if provider == "anthropic" else "call_"
            for _ in range(1 + int(r() * r() * 3)):
                name = rng.choice(client.tools)
                tool_calls.append(
                    ToolCall(name, f"{prefix}{rng.getrandbits(64):016x}",
                             f'{{"path":"{rng.choice(FILES)}"}}')
                )  # fmt: skip

        tags: list[str] = []
        roll = r()
        if roll >= TAG_COUNTS[0]:
            n_tags = 1 if roll < TAG_COUNTS[1] else (2 if roll < TAG_COUNTS[2] else 3)
            for _ in range(n_tags):
                tag = self.tag_pick()
                if tag not in tags:
                    tags.append(tag)
        env = "prod" if user.service else self.env()
        prompt = None if model.embedding or r() < 0.15 else rng.choice(self.prompts)
        request_body = response_body = None
        if r() < 0.05:
            request_body = {
                "model": model.requested,
                "messages": [{"role": "user", "content": prompt or "hello"}],
                "max_tokens": 1024,
                "stream": stream,
            }
            response_body = (
                {"role": "assistant", "content": "Done: see the patch above."}
                if status == "ok"
                else {"error": {"type": error_type, "message": error_message}}
            )

        return Record(
            id=new_id(ts),
            started=ts,
            endpoint=endpoint,
            org_id=user.org_id,
            org=user.org,
            user_id=user.user_id,
            user=user.name,
            api_key_id=key_id,
            api_key_name=key_name,
            end_user=end_user,
            session=session,
            workflow=workflow,
            client=detected,
            user_agent=ua,
            source_ip=user.ip,
            correlation_id=f"req_{rng.getrandbits(64):016x}" if r() < 0.25 else None,
            provider=provider,
            model_requested=model.requested,
            model=model.answered if status != "error" else None,
            stream=stream,
            status_code=code,
            status=status,
            error_type=error_type,
            error_message=error_message,
            input_tokens=tokens[0],
            output_tokens=tokens[1],
            cache_read_tokens=tokens[2],
            cache_write_tokens=tokens[3],
            reasoning_tokens=tokens[4],
            cost_usd=cost,
            ended=ts + duration,
            ttft_ms=ttft,
            tags=tags,
            meta={"team": user.team, "env": env},
            last_user_prompt=prompt,
            tool_calls=tool_calls,
            attempts=attempts,
            request_body=request_body,
            response_body=response_body,
        )


def records(maker: RecordMaker, start: float, counts: list[int]) -> Iterator[Record]:
    """Oldest first: each hour's records spread evenly (with jitter) over the hour."""
    rnd = maker.rng.random
    for h, k in enumerate(counts):
        if not k:
            continue
        h0, step = start + h * 3600, 3600.0 / k
        for i in range(k):
            yield maker.make(h0 + (i + rnd()) * step)


# --------------------------------------------------------------------------- main


def _size(path: str) -> int:
    return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))


def _produce(
    out: Any, rng: random.Random, population: list[tuple[User, float]], args: argparse.Namespace
) -> None:
    """The generator process: makes and prepares the records, oldest first, in batches of
    ``--batch``; puts (batch, start time of its last record) on ``out``, then None."""
    try:
        maker = RecordMaker(rng, population)
        start, counts = hourly_counts(rng, args.records, args.days, args.end)
        # prepare() is the store's own, pure serialisation: an in-memory store of the same
        # class gives the exact bytes the file store would (this process never opens the file).
        prepare = SQLiteStore(":memory:").prepare
        batch: list[object] = []
        for rec in records(maker, start, counts):
            batch.append(prepare(rec))
            if len(batch) >= args.batch:
                out.put((batch, rec.started))
                batch = []
        if batch:
            out.put((batch, start + len(counts) * 3600))
    finally:
        out.put(None)


def generate(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    store = SQLiteStore(args.db)
    store.migrate()
    if store._reader().execute("SELECT 1 FROM requests LIMIT 1").fetchone():
        print(f"{args.db} already holds records; give a new path", file=sys.stderr)
        return 2
    # For this bulk load only (the data written is the same): a bigger page cache, and no
    # fsync at checkpoints unless asked (a crash of the machine could then corrupt the file).
    store._writer.execute(f"PRAGMA cache_size = -{args.cache_mb * 1024}")
    store._writer.execute(f"PRAGMA synchronous = {args.synchronous}")
    t_start = time.perf_counter()
    users_total = args.users or max(50, min(3000, args.records // 2000))
    population = build_population(store, rng, users_total, args.seed)
    args.end = time.time()

    # Records are made in a second process (one core) while this one stores them (the other):
    # the store's write path holds the GIL for part of each batch, so a thread would not do.
    ctx = multiprocessing.get_context("fork")
    batches = ctx.Queue(maxsize=4)
    producer = ctx.Process(
        target=_produce, args=(batches, rng, population, args), name="gen-records", daemon=True
    )
    producer.start()
    t0 = time.perf_counter()
    done = 0
    store_s = 0.0
    next_report = args.progress
    try:
        while (item := batches.get()) is not None:
            batch, last_started = item
            t1 = time.perf_counter()
            store.insert_prepared(batch)
            store_s += time.perf_counter() - t1
            done += len(batch)
            if done >= next_report:
                next_report += args.progress
                el = time.perf_counter() - t0
                at = datetime.fromtimestamp(last_started, UTC).strftime("%Y-%m-%d %H:%M")
                gib = _size(args.db) / 2**30
                print(
                    f"  {done:>11,} records  {el:7.0f} s  {done / el:8,.0f}/s  "
                    f"(at {at}; storing {store_s / el:.0%} of the time; {gib:.2f} GiB)",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        if producer.is_alive() and done < args.records:
            producer.terminate()
        producer.join(10)
    if producer.exitcode not in (0, None) or done != args.records:
        print(f"the generator process failed (exit {producer.exitcode})", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - t0
    store.close()  # the last connection checkpoints the WAL into the main file
    total = time.perf_counter() - t_start
    size = _size(args.db)
    print(
        f"{done:,} records in {elapsed:,.1f} s: {done / elapsed:,.0f} records/s "
        f"(with users/keys and close: {total:,.1f} s); insert_prepared busy {store_s:,.1f} s"
    )
    per = size / max(done, 1)
    print(f"{args.db}: {size:,} bytes ({size / 2**30:.2f} GiB, {per:,.0f} B/record)")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("db", help="SQLite file to create, e.g. /tmp/gw10m.db")
    p.add_argument("--records", type=int, default=10_000_000)
    p.add_argument("--days", type=int, default=120, help="records span the last D days")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--batch", type=int, default=10_000, help="records per insert_prepared call")
    p.add_argument("--users", type=int, default=0, help="default: records/2000, 50-3000")
    p.add_argument("--cache-mb", type=int, default=256, help="page cache of the write connection")
    p.add_argument(
        "--synchronous",
        choices=("OFF", "NORMAL"),
        default="OFF",
        help="SQLite synchronous of the write connection (the gateway uses NORMAL)",
    )
    p.add_argument("--progress", type=int, default=500_000, help="print every N records")
    args = p.parse_args(argv)
    if args.records < 1 or args.days < 1 or args.batch < 1:
        p.error("--records, --days and --batch must be ≥ 1")
    return generate(args)


if __name__ == "__main__":
    sys.exit(main())
