"""``gatewatch demo``: the gateway in front of the built-in simulated provider, with a week of
recorded history (:mod:`gatewatch.demo_history`) and a few hundred live requests, so that a first
look shows real data."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import time
from datetime import datetime
from typing import Any

import httpx
import uvicorn

from gatewatch._demo_content import PERSONAS
from gatewatch.app import Gateway
from gatewatch.demo_history import DemoUser, History, make_history, store_history
from gatewatch.settings import Settings
from gatewatch.simulator import create_simulator_app
from gatewatch.store.base import Store
from gatewatch.store.query import RequestQuery, Scope

__all__ = ["create_keys", "demo_settings", "generate_traffic", "load_history", "run_demo"]

log = logging.getLogger("gatewatch.demo")
_PROMPTS = [
    "Summarise the attached incident report in three bullet points.",
    "What's the weather in Paris tomorrow?",
    "Write a SQL query that finds the ten biggest customers by revenue.",
    "Explain the difference between a mutex and a semaphore.",
    "Translate 'good morning, how are you?' into French and German.",
    "Review this diff and point out anything risky.",
]
_WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def demo_settings(sim_url: str, database: str, admin_key: str) -> Settings:
    return Settings.model_validate(
        {
            "admin_key": admin_key,
            "database": database,
            "providers": [
                {
                    "name": "openai",
                    "type": "openai",
                    "base_url": f"{sim_url}/v1",
                    "api_key": "sk-simulated",
                    "timeout": 10,
                },
                {
                    "name": "anthropic",
                    "type": "anthropic",
                    "base_url": sim_url,
                    "api_key": "sk-ant-simulated",
                    "timeout": 10,
                },
                {
                    "name": "openai-eu",
                    "type": "openai",
                    "base_url": f"{sim_url}/v1",
                    "api_key": "sk-simulated-eu",
                    "timeout": 10,
                },
            ],
            "models": {
                "gpt-4o-mini": ["openai/gpt-4o-mini"],
                "gpt-4o": ["openai/gpt-4o"],
                "o3-mini": ["openai/o3-mini"],
                "cached-gpt-4o-mini": ["openai/gpt-4o-mini-cached"],
                "claude-sonnet-4-5": ["anthropic/claude-sonnet-4-5"],
                "claude-haiku-4-5": ["anthropic/claude-haiku-4-5"],
                "smart": ["openai/gpt-4o-error-500", "openai-eu/gpt-4o"],
                "flaky": ["openai/gpt-4o-mini-error-429"],
                "text-embedding-3-small": ["openai/text-embedding-3-small"],
            },
            # the simulator answers "cached" models with cache hits; price them like gpt-4o-mini
            "prices": {
                "openai/gpt-4o-mini-cached": {"input": 0.15, "output": 0.6, "cache_read": 0.075}
            },
        }
    )


async def create_keys(base_url: str, admin_key: str) -> dict[str, dict[str, Any]]:
    """A key for each demo user (``POST /api/v1/keys``): user name → the created key, its secret
    in ``key``."""
    keys: dict[str, dict[str, Any]] = {}
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        for p in PERSONAS:
            resp = await client.post(
                "/api/v1/keys",
                json={"user": p.user, "org": p.org, "name": f"{p.user}-laptop", "role": p.role},
                headers={"Authorization": f"Bearer {admin_key}"},
            )
            resp.raise_for_status()
            keys[p.user] = resp.json()
    return keys


def load_history(store: Store, settings: Settings, keys: dict[str, dict[str, Any]]) -> History:
    """Build the week before now for the demo users and store it (blocking: run in a thread)."""
    users = {
        p.user: DemoUser(
            name=p.user,
            org=p.org,
            org_id=keys[p.user]["org_id"],
            user_id=keys[p.user]["user_id"],
            key_id=keys[p.user]["id"],
            key_name=keys[p.user]["name"],
            user_agent=p.user_agent,
        )
        for p in PERSONAS
    }
    history = make_history(users, settings, time.time())
    store_history(store, history.records)
    return history


async def generate_traffic(
    base_url: str, keys: dict[str, dict[str, Any]], n_requests: int, seed: int = 7
) -> int:
    """Send ``n_requests`` varied requests through the gateway with the demo users' ``keys``;
    returns how many were answered."""
    rng = random.Random(seed)
    agents = {p.user: p.user_agent for p in PERSONAS}
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        users = sorted(keys)
        sem = asyncio.Semaphore(8)
        answered = 0

        async def one(i: int) -> None:
            nonlocal answered
            user = rng.choice(users)
            headers = {
                "Authorization": f"Bearer {keys[user]['key']}",
                "User-Agent": agents[user],
                "x-gatewatch-session": f"s-{i // 10}",
                "x-gatewatch-workflow": rng.choice(["chat", "code-review", "triage"]),
                "x-gatewatch-tags": rng.choice(["prod", "prod,beta", "eval"]),
                "x-gatewatch-meta-team": rng.choice(["search", "payments", "infra"]),
            }
            prompt = rng.choice(_PROMPTS)
            stream = rng.random() < 0.4
            roll = rng.random()
            if roll < 0.45:
                model = rng.choice(
                    ["gpt-4o-mini", "gpt-4o", "o3-mini", "cached-gpt-4o-mini", "smart", "flaky"]
                )
                body: dict[str, Any] = {
                    "model": model,
                    "stream": stream,
                    "messages": [{"role": "user", "content": prompt}],
                }
                if "weather" in prompt:
                    body["tools"] = [_WEATHER_TOOL]
                path = "/v1/chat/completions"
            elif roll < 0.8:
                body = {
                    "model": rng.choice(["claude-sonnet-4-5", "claude-haiku-4-5"]),
                    "max_tokens": 512,
                    "stream": stream,
                    "messages": [{"role": "user", "content": prompt}],
                }
                if "weather" in prompt:
                    body["tools"] = [
                        {
                            "name": "get_weather",
                            "description": "Weather",
                            "input_schema": {"type": "object"},
                        }
                    ]
                path = "/v1/messages"
            elif roll < 0.92:
                body = {"model": "gpt-4o-mini", "input": prompt, "stream": stream}
                path = "/v1/responses"
            else:
                body = {"model": "text-embedding-3-small", "input": prompt}
                path = "/v1/embeddings"
            async with sem:
                try:
                    resp = await client.post(path, json=body, headers=headers)
                    answered += 1
                    if resp.status_code >= 500:
                        log.debug("demo request %d answered %d", i, resp.status_code)
                except httpx.HTTPError:
                    log.debug("demo request %d failed", i, exc_info=True)

        await asyncio.gather(*(one(i) for i in range(n_requests)))
        return answered


async def _serve(port: int, n_requests: int, database: str, history: bool) -> None:
    sim = uvicorn.Server(
        uvicorn.Config(
            create_simulator_app(latency=0.15, stream_delay=0.02, seed=1),
            host="127.0.0.1",
            port=0,
            log_level="warning",
            lifespan="off",
        )
    )
    sim_task = asyncio.create_task(sim.serve())
    while not sim.started:
        await asyncio.sleep(0.02)
    sim_port = sim.servers[0].sockets[0].getsockname()[1]
    admin_key = "gw-demo-" + secrets.token_urlsafe(24)
    settings = demo_settings(f"http://127.0.0.1:{sim_port}", database, admin_key)
    gateway = Gateway(settings)
    gw = uvicorn.Server(
        uvicorn.Config(
            gateway,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="on",
            access_log=False,
        )
    )
    gw_task = asyncio.create_task(gw.serve())
    while not gw.started:
        if gw_task.done():
            await gw_task
            return
        await asyncio.sleep(0.02)
    url = f"http://127.0.0.1:{port}"
    print(f"gatewatch demo: gateway on {url}, simulated provider on port {sim_port}")
    print(f"  admin key (owner): {admin_key}")
    keys = await create_keys(url, admin_key)
    loaded: History | None = None
    if history and await asyncio.to_thread(_holds_records, gateway.store):
        print(
            "  the database already holds records, so no history is added"
            " (delete gatewatch-demo.db* or pass another --database for a fresh week)"
        )
    elif history:
        print("  storing a week of history …", flush=True)
        t0 = time.perf_counter()
        # before the live traffic: its records then never wait for the history's transactions
        loaded = await asyncio.to_thread(load_history, gateway.store, settings, keys)
        took = time.perf_counter() - t0
        print(f"  {len(loaded.records):,} records of the last 7 days stored in {took:.1f} s.")
    print(f"  generating {n_requests} requests …", flush=True)
    answered = await generate_traffic(url, keys, n_requests)
    while gateway.writer.pending:  # "recorded" below means stored
        await asyncio.sleep(0.01)
    print(f"  {answered} requests answered and recorded. Look at them:")
    print(f"    in the dashboard: {url}/ui  (sign in with the admin key above)")
    if loaded:
        print(f"    {_spike_hint(loaded)}")
    print(f"    export GATEWATCH_URL={url} GATEWATCH_TOKEN={admin_key}")
    print("    gatewatch requests list")
    print(f"  or point an SDK at {url}/v1 (OpenAI) or {url} (Anthropic) with that key.")
    print("  Ctrl-C stops the demo.", flush=True)
    try:
        await gw_task
    finally:
        sim.should_exit = True
        await sim_task


def _holds_records(store: Store) -> bool:
    return bool(store.list_requests(Scope("owner", "", ""), RequestQuery(), 1, None).results)


def _spike_hint(history: History) -> str:
    """Where to look, in this machine's time zone (the browser's, most likely)."""
    start = datetime.fromtimestamp(history.spike_start).astimezone()
    end = datetime.fromtimestamp(history.spike_end).astimezone()
    return (
        f"a week of history is loaded: look for the error spike on {start:%a %Y-%m-%d}"
        f" {start:%H:%M}-{end:%H:%M} {end:%Z}"
    )


def run_demo(
    port: int = 4000, n_requests: int = 300, database: str = "", history: bool = True
) -> None:
    logging.getLogger("httpx").setLevel(logging.WARNING)
    database = database or "sqlite:///gatewatch-demo.db"
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(port, n_requests, database, history))
